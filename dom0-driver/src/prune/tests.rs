use super::protect::{protected, BackupRecord};
use super::*;
use crate::plan::{Reason, Target};
use crate::state::{SendState, SnapshotState, TargetState};
use crate::system::inventory::DatasetKind;

const HOUR: u64 = 3600;
const DAY: u64 = 86_400;
/// 2026-12-03T00:00:00Z, a Thursday.
const T0: u64 = 1_796_256_000;

fn name(s: &str) -> SnapshotName {
    SnapshotName::parse(s).unwrap()
}

/// A snapshot `full` made by `by`, at createtxg `txg` and time `creation`, holding `used` bytes.
fn snap(full: &str, txg: u64, creation: u64, by: Option<&str>) -> SnapshotDetails {
    SnapshotDetails {
        name: name(full),
        createtxg: txg,
        creation,
        guid: txg * 7,
        used: txg * 1000,
        made_by: by.map(str::to_owned),
    }
}

fn grid(last: u32, hourly: u32, daily: u32, weekly: u32, monthly: u32) -> Grid {
    Grid {
        last,
        hourly,
        daily,
        weekly,
        monthly,
    }
}

fn destroyed(plan: &Plan) -> Vec<&str> {
    plan.to_destroy()
        .map(|d| d.snapshot.name.as_str())
        .collect()
}

fn reasons<'p>(plan: &'p Plan, full: &str) -> &'p [KeepReason] {
    let d = plan
        .decisions
        .iter()
        .find(|d| d.snapshot.name.as_str() == full)
        .unwrap_or_else(|| panic!("{full} is not in the plan"));
    match &d.verdict {
        Verdict::Keep(r) => r,
        Verdict::Destroy => panic!("{full} is destroyed"),
    }
}

#[test]
fn only_snapshots_this_backup_made_are_destroyed() {
    let snaps = vec![
        snap("p/a@b1", 1, T0, None),
        snap("p/a@r1", 2, T0 + DAY, Some("daily")),
        snap(
            "p/a@qubes:stop:1700000000.000000",
            3,
            T0 + DAY,
            Some("daily"),
        ),
        snap("p/a@r2", 4, T0 + 2 * DAY, Some("daily")),
        snap("p/a@w1", 5, T0 + 2 * DAY, Some("weekly")),
        snap("p/a@qubes-clean-aaaa", 6, T0 + 3 * DAY, None),
        snap("p/a@r3", 7, T0 + 3 * DAY, Some("daily")),
    ];
    let plan = plan(&grid(1, 0, 0, 0, 0), "daily", &snaps, &Protected::new());
    assert_eq!(destroyed(&plan), ["p/a@r1", "p/a@r2"]);
    assert_eq!(reasons(&plan, "p/a@b1"), [KeepReason::NotMadeByTool]);
    // A Qubes revision stays even if someone marked it.
    assert_eq!(
        reasons(&plan, "p/a@qubes:stop:1700000000.000000"),
        [KeepReason::QubesRevision]
    );
    assert_eq!(
        reasons(&plan, "p/a@qubes-clean-aaaa"),
        [KeepReason::QubesRevision]
    );
    assert_eq!(
        reasons(&plan, "p/a@w1"),
        [KeepReason::MadeByOtherBackup("weekly".into())]
    );
    assert_eq!(
        reasons(&plan, "p/a@r3"),
        [
            KeepReason::NewestOfDataset,
            KeepReason::Grid(Slot::Last { rank: 1, of: 1 })
        ]
    );
    assert!(plan.decisions.iter().filter(|d| d.is_own()).count() == 3);
}

#[test]
fn a_foreign_snapshot_newer_than_the_own_ones_takes_no_slot_of_the_grid() {
    // A grid of one month whose newest snapshot is a foreign one: the month's slot goes to the
    // newest own snapshot anyway, and it is the dataset's newest own one too.
    let snaps = vec![
        snap("p/a@r1", 1, T0, Some("b")),
        snap("p/a@r2", 2, T0 + HOUR, Some("b")),
        snap("p/a@manual", 3, T0 + 2 * HOUR, None),
    ];
    let plan = plan(&grid(0, 0, 0, 0, 1), "b", &snaps, &Protected::new());
    assert_eq!(destroyed(&plan), ["p/a@r1"]);
    assert_eq!(reasons(&plan, "p/a@r2")[0], KeepReason::NewestOfDataset);
    assert_eq!(reasons(&plan, "p/a@manual"), [KeepReason::NotMadeByTool]);
}

#[test]
fn the_daily_grid_keeps_the_newest_snapshot_of_each_of_the_newest_days() {
    // Three snapshots a day for four days; daily 2 keeps the newest of the last two days.
    let mut snaps = Vec::new();
    let mut txg = 0;
    for day in 0..4 {
        for h in [6, 12, 18] {
            txg += 1;
            snaps.push(snap(
                &format!("p/a@d{day}h{h}"),
                txg,
                T0 + day * DAY + h * HOUR,
                Some("b"),
            ));
        }
    }
    let plan = plan(&grid(0, 0, 2, 0, 0), "b", &snaps, &Protected::new());
    let kept: Vec<&str> = plan
        .decisions
        .iter()
        .filter(|d| !d.destroys())
        .map(|d| d.snapshot.name.as_str())
        .collect();
    assert_eq!(kept, ["p/a@d2h18", "p/a@d3h18"]);
    assert_eq!(
        reasons(&plan, "p/a@d2h18"),
        [KeepReason::Grid(Slot::Newest {
            rule: Period::Day,
            period: "2026-12-05".into(),
            rank: 2,
            of: 2
        })]
    );
    assert_eq!(
        reasons(&plan, "p/a@d2h18")[0].describe(),
        "daily 2026-12-05 (2/2)"
    );
    // Hourly 4 keeps the four newest (each in an hour of its own), last 2 the two newest.
    let plan2 = super::plan(&grid(2, 4, 0, 0, 0), "b", &snaps, &Protected::new());
    assert_eq!(plan2.decisions.iter().filter(|d| !d.destroys()).count(), 4);
    assert_eq!(
        reasons(&plan2, "p/a@d3h18"),
        [
            KeepReason::NewestOfDataset,
            KeepReason::Grid(Slot::Last { rank: 1, of: 2 }),
            KeepReason::Grid(Slot::Newest {
                rule: Period::Hour,
                period: "2026-12-06T18h".into(),
                rank: 1,
                of: 4
            })
        ]
    );
}

#[test]
fn weekly_and_monthly_slots_count_periods_that_hold_a_snapshot() {
    // One snapshot on the 1st and the 20th of each of five months: monthly 3 keeps the 20th
    // of the three newest months; weekly 2 the two newest weeks' (both in the newest month).
    let mut snaps = Vec::new();
    let month_starts = [
        1_785_542_400, // 2026-08-01
        1_788_220_800, // 2026-09-01
        1_790_812_800, // 2026-10-01
        1_793_491_200, // 2026-11-01
        1_796_083_200, // 2026-12-01
    ];
    for (i, start) in month_starts.iter().enumerate() {
        let i = i as u64;
        snaps.push(snap(&format!("p/a@m{i}d1"), 2 * i + 1, *start, Some("b")));
        snaps.push(snap(
            &format!("p/a@m{i}d20"),
            2 * i + 2,
            start + 19 * DAY,
            Some("b"),
        ));
    }
    let plan = plan(&grid(0, 0, 0, 2, 3), "b", &snaps, &Protected::new());
    assert_eq!(
        destroyed(&plan),
        [
            "p/a@m0d1",
            "p/a@m0d20",
            "p/a@m1d1",
            "p/a@m1d20",
            "p/a@m2d1",
            "p/a@m3d1"
        ]
    );
    assert_eq!(
        reasons(&plan, "p/a@m4d1"),
        [KeepReason::Grid(Slot::Newest {
            rule: Period::Week,
            period: "week of 2026-11-30".into(),
            rank: 2,
            of: 2
        })]
    );
    assert_eq!(
        reasons(&plan, "p/a@m2d20")[0].describe(),
        "monthly 2026-10 (3/3)"
    );
}

#[test]
fn protected_snapshots_stay_outside_the_grid_with_every_protection_named() {
    let snaps = vec![
        snap("p/a@r1", 1, T0, Some("b")),
        snap("p/a@r2", 2, T0 + DAY, Some("b")),
        snap("p/a@r3", 3, T0 + 2 * DAY, Some("b")),
    ];
    let mut protected = Protected::new();
    let p1 = Protection::NewestOnMedium {
        medium: "backups:pool/b".into(),
        backup: "offsite".into(),
    };
    let p2 = Protection::CloneOrigin {
        clone: "p/clone".into(),
    };
    protected.insert(name("p/a@r1"), vec![p1.clone(), p2.clone()]);
    let plan = plan(&grid(1, 0, 0, 0, 0), "b", &snaps, &protected);
    assert_eq!(destroyed(&plan), ["p/a@r2"]);
    assert_eq!(
        reasons(&plan, "p/a@r1"),
        [KeepReason::Protected(p1), KeepReason::Protected(p2)]
    );
    assert!(reasons(&plan, "p/a@r1")[0].describe().contains(
        "the newest snapshot of its dataset on the medium backups:pool/b (backup offsite)"
    ));
}

#[test]
fn datasets_the_backup_never_snapshotted_are_left_out_and_the_rest_ordered() {
    let snaps = vec![
        snap("p/z@r2", 4, T0 + DAY, Some("b")),
        snap("p/other@x", 1, T0, None),
        snap("p/z@r1", 3, T0, Some("b")),
        snap("p/a@r1", 2, T0, Some("b")),
    ];
    let plan = plan(&grid(1, 0, 0, 0, 0), "b", &snaps, &Protected::new());
    let names: Vec<&str> = plan
        .decisions
        .iter()
        .map(|d| d.snapshot.name.as_str())
        .collect();
    assert_eq!(names, ["p/a@r1", "p/z@r1", "p/z@r2"]);
    assert_eq!(destroyed(&plan), ["p/z@r1"]);
    assert_eq!(plan.frees_at_least(), 3000);
}

// ---------------------------------------------------------------- protections from states

fn target(snap: &str, from: Option<&str>, progressive: bool, send: SendState) -> TargetState {
    TargetState {
        target: Target {
            snapshot: name(snap),
            kind: DatasetKind::Volume,
            incremental_source: from.map(name),
            progressive,
            clone_origin: false,
            reason: Reason::Target,
            guid: None,
            object: None,
            depends_on: vec![],
        },
        snapshot_state: SnapshotState::Exists,
        size_estimate: None,
        send_state: send,
        received_guid: None,
        last_error: None,
        sent_stream: None,
        manifest: None,
    }
}

fn chain(n: u64) -> Vec<SnapshotDetails> {
    (1..=n)
        .map(|i| snap(&format!("p/a@r{i}"), i, T0 + i * DAY, Some("b")))
        .collect()
}

#[test]
fn the_newest_sent_snapshot_of_each_medium_is_protected_and_older_ones_are_not() {
    let snaps = chain(5);
    let a = [
        target("p/a@r1", None, false, SendState::Done),
        target("p/a@r3", Some("p/a@r1"), false, SendState::Done),
    ];
    let b = [target("p/a@r2", None, false, SendState::Done)];
    // r4 was sent to medium 1 by another backup; r5 is gone from dom0.
    let c = [
        target("p/a@r4", Some("p/a@r3"), false, SendState::Done),
        target("p/gone@r9", None, false, SendState::Done),
    ];
    let records = [
        BackupRecord {
            name: "a",
            medium: "q:pool/one".into(),
            targets: &a,
        },
        BackupRecord {
            name: "b",
            medium: "q:pool/two".into(),
            targets: &b,
        },
        BackupRecord {
            name: "c",
            medium: "q:pool/one".into(),
            targets: &c,
        },
    ];
    let p = protected(&records, &snaps, &[]);
    let keys: Vec<&str> = p.keys().map(|k| k.as_str()).collect();
    assert_eq!(keys, ["p/a@r2", "p/a@r4"]);
    assert_eq!(
        p[&name("p/a@r4")],
        [Protection::NewestOnMedium {
            medium: "q:pool/one".into(),
            backup: "c".into()
        }]
    );
    assert_eq!(
        p[&name("p/a@r2")],
        [Protection::NewestOnMedium {
            medium: "q:pool/two".into(),
            backup: "b".into()
        }]
    );
}

#[test]
fn a_sent_snapshot_that_is_gone_leaves_the_newest_remaining_one_protected() {
    let snaps: Vec<SnapshotDetails> = chain(3).into_iter().filter(|s| s.createtxg != 3).collect();
    let a = [
        target("p/a@r2", None, false, SendState::Done),
        target("p/a@r3", Some("p/a@r2"), false, SendState::Done),
    ];
    let records = [BackupRecord {
        name: "a",
        medium: "q:pool/one".into(),
        targets: &a,
    }];
    let p = protected(&records, &snaps, &[]);
    assert_eq!(p.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["p/a@r2"]);
}

#[test]
fn unsent_and_interrupted_targets_protect_themselves_and_their_sources() {
    let snaps = chain(6);
    let a = [
        target("p/a@r2", Some("p/a@r1"), false, SendState::Pending),
        target("p/a@r6", Some("p/a@r3"), true, SendState::Partial),
    ];
    let records = [BackupRecord {
        name: "a",
        medium: "q:pool/one".into(),
        targets: &a,
    }];
    let p = protected(&records, &snaps, &[("p/clone".into(), name("p/a@r1"))]);
    assert_eq!(
        p[&name("p/a@r1")],
        [
            Protection::SourceOf {
                target: name("p/a@r2"),
                backup: "a".into(),
                interrupted: false
            },
            Protection::CloneOrigin {
                clone: "p/clone".into()
            }
        ]
    );
    assert_eq!(
        p[&name("p/a@r2")],
        [Protection::Unsent { backup: "a".into() }]
    );
    assert_eq!(
        p[&name("p/a@r6")],
        [Protection::Interrupted { backup: "a".into() }]
    );
    assert!(matches!(
        p[&name("p/a@r3")][..],
        [Protection::SourceOf {
            interrupted: true,
            ..
        }]
    ));
    // The -I transfer r3 → r6 was cut: its token may name r4 or r5.
    for inside in ["p/a@r4", "p/a@r5"] {
        assert_eq!(
            p[&name(inside)],
            [Protection::InsideInterrupted {
                target: name("p/a@r6"),
                backup: "a".into()
            }]
        );
    }
}

// ---------------------------------------------------------------- the property test

/// splitmix64: a fixed-seed generator, so every run checks the same cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random system: up to 3 datasets of up to 40 snapshots, minutes to weeks apart, made by
/// this backup, another one, nobody or Qubes; random protections; a random grid.
fn random_case(rng: &mut Rng) -> (Grid, Vec<SnapshotDetails>, Protected) {
    let g = grid(
        rng.below(4) as u32,
        rng.below(5) as u32,
        rng.below(8) as u32,
        rng.below(5) as u32,
        rng.below(4) as u32,
    );
    let mut snaps = Vec::new();
    let mut txg = 0;
    let mut time = T0;
    for d in 0..=rng.below(3) {
        for i in 0..rng.below(41) {
            txg += 1 + rng.below(3);
            time += match rng.below(4) {
                0 => rng.below(HOUR),
                1 => rng.below(DAY),
                2 => rng.below(8 * DAY),
                _ => rng.below(40 * DAY),
            };
            let (label, by) = match rng.below(10) {
                0 => (format!("qubes:stop:{i}"), None),
                1 => (format!("qubes-clean-{i}"), Some("mine")),
                2 => (format!("hand{i}"), None),
                3 => (format!("other{i}"), Some("other")),
                _ => (format!("r{i}"), Some("mine")),
            };
            snaps.push(snap(&format!("p/d{d}@{label}"), txg, time, by));
        }
    }
    let mut protected = Protected::new();
    for s in &snaps {
        if rng.below(8) == 0 {
            protected.insert(
                s.name.clone(),
                vec![Protection::Unsent { backup: "x".into() }],
            );
        }
    }
    // Shuffle: the plan must not depend on the input order.
    for i in (1..snaps.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        snaps.swap(i, j);
    }
    (g, snaps, protected)
}

#[test]
fn pruning_never_destroys_what_is_protected_foreign_or_newest_and_always_fills_the_grid() {
    let mut rng = Rng(0x5eed_0f91_2100);
    let (mut destroyed_total, mut kept_by_grid_alone) = (0, 0);
    for case in 0..600 {
        let (g, snaps, protected) = random_case(&mut rng);
        let plan = plan(&g, "mine", &snaps, &protected);
        let own = |s: &SnapshotDetails| {
            s.made_by.as_deref() == Some("mine") && !is_qubes_revision(&s.name)
        };
        let mut datasets: Vec<&str> = snaps.iter().map(|s| s.name.dataset().as_str()).collect();
        datasets.sort();
        datasets.dedup();
        for ds in datasets {
            let mut all: Vec<&SnapshotDetails> = snaps
                .iter()
                .filter(|s| s.name.dataset().as_str() == ds)
                .collect();
            all.sort_by_key(|s| std::cmp::Reverse(s.createtxg));
            let candidates: Vec<&SnapshotDetails> =
                all.iter().copied().filter(|s| own(s)).collect();
            let decided: Vec<&Decision> = plan
                .decisions
                .iter()
                .filter(|d| d.snapshot.name.dataset().as_str() == ds)
                .collect();
            if candidates.is_empty() {
                assert!(decided.is_empty(), "case {case}: {ds} has no own snapshot");
                continue;
            }
            // Every snapshot of the dataset is decided, exactly once.
            assert_eq!(decided.len(), all.len(), "case {case}: {ds}");
            let destroys = |name: &SnapshotName| {
                decided
                    .iter()
                    .find(|d| &d.snapshot.name == name)
                    .expect("decided")
                    .destroys()
            };
            // Never a snapshot this backup did not make, nor a protected one, nor the newest
            // own one.
            for s in &all {
                if !own(s) || protected.contains_key(&s.name) {
                    assert!(!destroys(&s.name), "case {case}: destroys {}", s.name);
                }
            }
            assert!(!destroys(&candidates[0].name), "case {case}: newest");
            // The grid: the `last` newest ...
            for s in candidates.iter().take(g.last as usize) {
                assert!(!destroys(&s.name), "case {case}: last {}", s.name);
            }
            // ... and the newest of each of the newest periods, as many as the counts say
            // (or every period there is, when there are fewer).
            for (rule, count) in [
                (Period::Hour, g.hourly),
                (Period::Day, g.daily),
                (Period::Week, g.weekly),
                (Period::Month, g.monthly),
            ] {
                let mut periods: Vec<String> = Vec::new();
                for s in &candidates {
                    let p = rule.of(s.creation);
                    if !periods.contains(&p) {
                        periods.push(p);
                        if periods.len() <= count as usize {
                            assert!(
                                !destroys(&s.name),
                                "case {case}: {} of {} is the newest of a kept period",
                                s.name,
                                rule.key()
                            );
                        }
                    }
                }
                let kept_in_rule = decided
                    .iter()
                    .filter(|d| match &d.verdict {
                        Verdict::Keep(r) => r.iter().any(|r| {
                            matches!(r, KeepReason::Grid(Slot::Newest { rule: x, .. }) if *x == rule)
                        }),
                        Verdict::Destroy => false,
                    })
                    .count();
                assert_eq!(
                    kept_in_rule,
                    periods.len().min(count as usize),
                    "case {case}: {} slots",
                    rule.key()
                );
            }
            // And nothing more: a snapshot is kept only with reasons, each of which holds.
            for d in &decided {
                let name = &d.snapshot.name;
                let Verdict::Keep(reasons) = &d.verdict else {
                    destroyed_total += 1;
                    continue;
                };
                assert!(
                    !reasons.is_empty(),
                    "case {case}: {name} kept without a reason"
                );
                for r in reasons {
                    let holds = match r {
                        KeepReason::QubesRevision => is_qubes_revision(name),
                        KeepReason::NotMadeByTool => d.snapshot.made_by.is_none(),
                        KeepReason::MadeByOtherBackup(b) => {
                            d.snapshot.made_by.as_deref() == Some(b.as_str()) && b != "mine"
                        }
                        KeepReason::Protected(p) => {
                            protected.get(name).is_some_and(|list| list.contains(p))
                        }
                        KeepReason::NewestOfDataset => &candidates[0].name == name,
                        KeepReason::Grid(Slot::Last { rank, of }) => {
                            *of == g.last
                                && *rank <= g.last
                                && &candidates[*rank as usize - 1].name == name
                        }
                        // Checked by count above.
                        KeepReason::Grid(Slot::Newest { .. }) => true,
                    };
                    assert!(holds, "case {case}: {name} kept for {r:?}");
                    if matches!(r, KeepReason::Grid(_)) && reasons.len() == 1 {
                        kept_by_grid_alone += 1;
                    }
                }
            }
        }
    }
    // The cases are not vacuous: many snapshots went, many stayed for the grid alone.
    assert!(destroyed_total > 1000, "{destroyed_total} destroyed");
    assert!(
        kept_by_grid_alone > 500,
        "{kept_by_grid_alone} kept by the grid alone"
    );
}
