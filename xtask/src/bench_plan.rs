//! `cargo xtask bench-plan`: check + planning on a synthetic system of 1,000 qubes, 5,000
//! datasets and 100,000 snapshots. Measures the pure core: parsing the recorded-format
//! `zfs list` text, checking the config and planning, plus the process's peak RSS.

use dom0_driver::system::inventory::{
    parse_zfs_list, Inventory, Pool, Qube, QubesInventory, Volume,
};
use dom0_driver::{config, plan};
use qzb_protocol::names::DatasetName;
use std::fmt::Write as _;
use std::time::Instant;

const QUBES: usize = 1000;
const SNAPSHOTS: usize = 100_000;

pub fn run() -> Result<(), String> {
    // 1000 qubes × (parent + root + private + volatile) = 4000, plus 1000 dom0-side datasets.
    let mut list = String::new();
    let mut qubes = QubesInventory {
        pools: vec![Pool {
            name: "zfs-main".into(),
            driver: "zfs".into(),
            container: Some(DatasetName::parse("mainpool/qubes").unwrap()),
        }],
        ..Default::default()
    };
    let mut txg = 10u64;
    let mut guid = 1u64;
    let mut line = |list: &mut String, name: &str, kind: &str, origin: &str, txg: &mut u64| {
        *txg += 1;
        guid += 1;
        let _ = writeln!(list, "{name}\t{kind}\t{origin}\t{txg}\t{guid}");
    };
    line(&mut list, "mainpool", "filesystem", "-", &mut txg);
    line(&mut list, "mainpool/qubes", "filesystem", "-", &mut txg);
    line(&mut list, "mainpool/data", "filesystem", "-", &mut txg);
    let mut volumes = Vec::new();
    for q in 0..QUBES {
        let name = format!("q{q:04}");
        let base = format!("mainpool/qubes/{name}");
        line(&mut list, &base, "filesystem", "-", &mut txg);
        let template = q % 10 == 0;
        for v in ["root", "private", "volatile"] {
            let origin = if v == "root" && !template {
                format!("mainpool/qubes/q{:04}/root@qubes-clean-0000", q / 10 * 10)
            } else {
                "-".into()
            };
            line(
                &mut list,
                &format!("{base}/{v}"),
                "volume",
                &origin,
                &mut txg,
            );
            volumes.push(format!("{base}/{v}"));
        }
        let vol = |n: &str, save: bool| Volume {
            name: n.into(),
            pool: "zfs-main".into(),
            vid: format!("{base}/{n}"),
            save_on_stop: save,
            snap_on_start: !save && n == "root",
            rw: true,
            ephemeral: false,
        };
        qubes.qubes.insert(
            name.clone(),
            Qube {
                name: name.clone(),
                class: if template { "TemplateVM" } else { "AppVM" }.into(),
                state: "Halted".into(),
                volumes: vec![
                    vol("root", template),
                    vol("private", true),
                    vol("volatile", false),
                ],
            },
        );
    }
    for d in 0..(5000 - 3 - QUBES * 4) {
        line(
            &mut list,
            &format!("mainpool/data/d{d:04}"),
            "filesystem",
            "-",
            &mut txg,
        );
        volumes.push(format!("mainpool/data/d{d:04}"));
    }
    qubes.qubes.insert(
        "backups".into(),
        Qube {
            name: "backups".into(),
            class: "AppVM".into(),
            state: "Running".into(),
            volumes: vec![],
        },
    );
    // 100,000 snapshots spread over the volumes: clean snapshots on template roots, revisions
    // and earlier backups everywhere else.
    for t in (0..QUBES).step_by(10) {
        line(
            &mut list,
            &format!("mainpool/qubes/q{t:04}/root@qubes-clean-0000"),
            "snapshot",
            "-",
            &mut txg,
        );
    }
    let mut n = QUBES / 10;
    let mut round = 0;
    while n < SNAPSHOTS {
        for v in &volumes {
            if n >= SNAPSHOTS {
                break;
            }
            let label = if round == 5 {
                "b1".to_owned()
            } else {
                format!("qubes:before-start:{}", 1_700_000_000 + round)
            };
            line(
                &mut list,
                &format!("{v}@{label}"),
                "snapshot",
                "-",
                &mut txg,
            );
            n += 1;
        }
        round += 1;
    }
    let members: String = (0..QUBES).map(|q| format!("    - q{q:04}\n")).collect();
    let cfg = format!(
        "name: bench\nscope:\n  target-snapshot: \"@b2\"\n  since: \"@b1\"\n  progressive: yes\n  honour-origins: yes\n\
         allowed-behaviours:\n  snapshot-creation: yes\n  patching: no\n\
         receiver:\n  qube: backups\n  dataset: backuppool/b\n\
         include-groups: [all, data]\nforgo-groups: []\nvoid-groups: []\n\
         all:\n  type: qubes\n  members:\n{members}data:\n  type: datasets\n  members:\n    - mainpool/data\n"
    );

    let rss_before = peak_rss_kib();
    let start = Instant::now();
    let zfs = parse_zfs_list(&list)?;
    let parsed = start.elapsed();
    let (config, _) = config::parse(&cfg).map_err(|e| format!("{e:?}"))?;
    let inv = Inventory { zfs, qubes };
    let p = plan::plan(&config, &inv);
    let total = start.elapsed();
    if !p.errors.is_empty() {
        return Err(format!(
            "plan has errors: {:?}",
            &p.errors[..p.errors.len().min(3)]
        ));
    }
    let rss_after = peak_rss_kib();
    println!(
        "synthetic system: {} qubes, {} datasets, {} snapshots",
        QUBES,
        inv.zfs.datasets.len(),
        inv.zfs.snapshot_count()
    );
    println!(
        "targets planned: {}, designations: {}, warnings: {}",
        p.targets.len(),
        p.designations.len(),
        p.warnings.len()
    );
    println!("parse zfs list: {:.3} s", parsed.as_secs_f64());
    println!(
        "check + plan (parse, config, plan): {:.3} s (limit 1 s)",
        total.as_secs_f64()
    );
    println!(
        "peak RSS: {} MiB before, {} MiB after (limit 200 MiB)",
        rss_before / 1024,
        rss_after / 1024
    );
    if total.as_secs_f64() > 1.0 || rss_after > 200 * 1024 {
        return Err("over the limit".into());
    }
    Ok(())
}

/// VmHWM from /proc/self/status: the process's peak resident set, in KiB.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}
