//! The optional `retention` section: which of its own snapshots `prune` keeps.
//!
//! ```yaml
//! retention:
//!   source:            # dom0's snapshots (the only side built so far)
//!     last: 3          # the 3 newest
//!     hourly: 0
//!     daily: 7         # the newest of each of the 7 newest days that have a snapshot
//!     weekly: 4
//!     monthly: 6
//! ```
//!
//! Every count is a whole number, 0 or more; a count left out is 0. A grid that keeps nothing
//! (every count 0, or `source: {}`) is an error: it is a typo more often than a wish, and the way
//! to keep everything is to leave `retention` out. `medium` (retention on the backup medium) is
//! named in its error: it is not built yet.

use super::checker::{join, Checker};
use crate::config::yaml::{quote, Node, Pos, Value};
use serde::Serialize;

/// The largest count accepted: far beyond any real history, small enough that no arithmetic on
/// it can overflow.
pub const MAX_COUNT: u32 = 1_000_000;

/// How many snapshots of each dataset to keep, as restic and borg count them: the `last` newest,
/// then the newest snapshot of each of the `hourly` newest hours that hold one, of the `daily`
/// newest days, and so on (calendar periods in UTC). A snapshot may fill several slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Grid {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

impl Grid {
    /// The grid's keys, in the order they apply (the config's spelling).
    pub const KEYS: [&'static str; 5] = ["last", "hourly", "daily", "weekly", "monthly"];

    pub fn keeps_nothing(&self) -> bool {
        self.counts().iter().all(|(_, n)| *n == 0)
    }

    /// `(key, count)` in the order the rules apply.
    pub fn counts(&self) -> [(&'static str, u32); 5] {
        [
            ("last", self.last),
            ("hourly", self.hourly),
            ("daily", self.daily),
            ("weekly", self.weekly),
            ("monthly", self.monthly),
        ]
    }

    /// `last 3, daily 7` (the counts that are not 0).
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .counts()
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        parts.join(", ")
    }

    fn set(&mut self, key: &str, n: u32) {
        match key {
            "last" => self.last = n,
            "hourly" => self.hourly = n,
            "daily" => self.daily = n,
            "weekly" => self.weekly = n,
            _ => self.monthly = n,
        }
    }
}

/// The `retention` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// dom0's snapshots of the backed-up datasets.
    pub source: Grid,
    /// Where `retention.source` is.
    pub source_pos: Pos,
}

impl Checker {
    pub(super) fn retention(&mut self, node: &Node) -> Option<Retention> {
        let e = self.entries(
            node,
            "retention",
            "'retention' to hold 'source' (the grid of dom0's snapshots)",
        )?;
        let mut ok = true;
        for key in &e.order {
            if key == "source" {
                continue;
            }
            let (k, _) = e.map[key];
            let msg = if key == "medium" {
                "retention on the backup medium ('medium') is not built yet: `prune` only prunes dom0's snapshots; remove the key".to_owned()
            } else {
                format!("unknown key {}; allowed keys here: source", quote(key))
            };
            self.error(&join("retention", key), k.pos, msg);
            ok = false;
        }
        let Some(source) = e.get("source") else {
            self.error(
                "retention.source",
                e.pos,
                "missing required key 'source' under 'retention' (the grid of dom0's snapshots, e.g. `source: {last: 3, daily: 7}`)",
            );
            return None;
        };
        let grid = self.grid(source, "retention.source")?;
        ok.then_some(Retention {
            source: grid,
            source_pos: source.pos,
        })
    }

    fn grid(&mut self, node: &Node, path: &str) -> Option<Grid> {
        let e = self.entries(
            node,
            path,
            "a grid of counts (last, hourly, daily, weekly, monthly)",
        )?;
        let mut ok = true;
        for key in &e.order {
            if !Grid::KEYS.contains(&key.as_str()) {
                let (k, _) = e.map[key];
                let mut msg = format!("unknown key {}", quote(key));
                match super::checker::suggest(key, &Grid::KEYS) {
                    Some(s) => msg.push_str(&format!("; did you mean '{s}'?")),
                    None => msg.push_str(&format!(
                        "; allowed keys here: {} (yearly and finer grids are not supported)",
                        Grid::KEYS.join(", ")
                    )),
                }
                self.error(&join(path, key), k.pos, msg);
                ok = false;
            }
        }
        let mut grid = Grid::default();
        for key in Grid::KEYS {
            if let Some(n) = e.get(key) {
                match self.count(n, &join(path, key)) {
                    Some(count) => grid.set(key, count),
                    None => ok = false,
                }
            }
        }
        if ok && grid.keeps_nothing() {
            self.error(
                path,
                e.pos,
                "this grid keeps nothing (every count is 0): give at least one count above 0, e.g. `last: 1`; to keep every snapshot, leave out the 'retention' section",
            );
            ok = false;
        }
        ok.then_some(grid)
    }

    /// A count: a plain whole number from 0 to [`MAX_COUNT`].
    fn count(&mut self, node: &Node, path: &str) -> Option<u32> {
        let problem = match &node.value {
            Value::Int(s) => match parse_count(s) {
                Ok(n) => return Some(n),
                Err(p) => p,
            },
            Value::Float(s) => format!("expected a whole number of snapshots, found {s}"),
            Value::Null => {
                "expected a number of snapshots, found nothing; write 0 or leave the key out"
                    .to_owned()
            }
            _ => format!("expected a number of snapshots, found {}", node.describe()),
        };
        self.error(path, node.pos, problem);
        None
    }
}

/// Reads a count as written in YAML: decimal digits only (YAML 1.1 reads `010` as octal 8 and
/// `1_000` as 1000; neither is what anyone means by a number of snapshots).
fn parse_count(s: &str) -> Result<u32, String> {
    if s.starts_with('-') {
        return Err(format!(
            "{s} is negative; a count is 0 or more (0 keeps none by this rule)"
        ));
    }
    let plain = s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if !plain {
        return Err(format!(
            "{s} is not a plain decimal number; write the count in digits, without sign, leading zeros or '_'"
        ));
    }
    match s.parse::<u32>() {
        Ok(n) if n <= MAX_COUNT => Ok(n),
        _ => Err(format!(
            "{s} is more than {MAX_COUNT}, the largest count accepted"
        )),
    }
}
