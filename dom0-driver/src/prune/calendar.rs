//! The calendar periods of the retention grid, in UTC: hours, days, ISO weeks (Monday to
//! Sunday) and months. A period is named by text that is also its identity (two snapshots are
//! in the same period exactly when their names for it are equal).

use crate::state::format_utc;

/// A grid rule that keeps the newest snapshot of each period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Period {
    Hour,
    Day,
    Week,
    Month,
}

impl Period {
    /// In the order the grid applies them.
    pub const ALL: [Period; 4] = [Period::Hour, Period::Day, Period::Week, Period::Month];

    /// The grid's key for this rule (`hourly`, ...).
    pub fn key(self) -> &'static str {
        match self {
            Period::Hour => "hourly",
            Period::Day => "daily",
            Period::Week => "weekly",
            Period::Month => "monthly",
        }
    }

    /// The period holding `secs` (seconds since the epoch): `2026-12-03T14h`, `2026-12-03`,
    /// `week of 2026-11-30`, `2026-12`.
    pub fn of(self, secs: u64) -> String {
        match self {
            Period::Hour => format!("{}h", &format_utc(secs)[..13]),
            Period::Day => format_utc(secs)[..10].to_owned(),
            Period::Week => {
                // 1970-01-01 was a Thursday: its week began 3 days earlier.
                let days = secs / 86_400;
                let monday = (days + 3) / 7 * 7;
                let start = monday.saturating_sub(3) * 86_400;
                format!("week of {}", &format_utc(start)[..10])
            }
            Period::Month => format_utc(secs)[..7].to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-03T14:05:00Z, a Thursday.
    const THU: u64 = 1_796_306_700;

    #[test]
    fn periods_are_named_by_their_utc_calendar_start() {
        assert_eq!(format_utc(THU), "2026-12-03T14:05:00Z");
        assert_eq!(Period::Hour.of(THU), "2026-12-03T14h");
        assert_eq!(Period::Day.of(THU), "2026-12-03");
        assert_eq!(Period::Week.of(THU), "week of 2026-11-30");
        assert_eq!(Period::Month.of(THU), "2026-12");
    }

    #[test]
    fn weeks_run_from_monday_to_sunday() {
        let day = 86_400;
        // Sunday 2026-12-06 23:59:59 is still the week of Monday 2026-11-30 ...
        let sunday_end = THU - 14 * 3600 - 5 * 60 + 4 * day - 1;
        assert_eq!(format_utc(sunday_end), "2026-12-06T23:59:59Z");
        assert_eq!(Period::Week.of(sunday_end), "week of 2026-11-30");
        // ... and Monday 00:00 starts the next.
        assert_eq!(Period::Week.of(sunday_end + 1), "week of 2026-12-07");
        // The epoch's own week (it began on Monday 1969-12-29) is named by the epoch.
        assert_eq!(Period::Week.of(0), "week of 1970-01-01");
        assert_eq!(Period::Week.of(4 * day), "week of 1970-01-05");
    }

    #[test]
    fn months_and_days_change_at_midnight_utc() {
        // 2024-02-29T23:59:59Z, a leap day, then 2024-03-01.
        let leap_end = 1_709_251_199;
        assert_eq!(Period::Day.of(leap_end), "2024-02-29");
        assert_eq!(Period::Month.of(leap_end), "2024-02");
        assert_eq!(Period::Day.of(leap_end + 1), "2024-03-01");
        assert_eq!(Period::Month.of(leap_end + 1), "2024-03");
        assert_eq!(Period::Hour.of(leap_end + 1), "2024-03-01T00h");
    }
}
