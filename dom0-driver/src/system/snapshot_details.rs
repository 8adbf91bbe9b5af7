//! What `prune` reads of every snapshot: its details (`zfs list`) and the mark `snapshot` set
//! on it (`zfs get -s local`), two `zfs` calls whatever the number of snapshots.

use crate::system::inventory::bad_output;
use crate::system::runner::{command_line, Runner, ToolError};
use qzb_protocol::names::SnapshotName;
use std::collections::HashMap;

/// The user property `snapshot` sets on every snapshot it creates, naming the backup that made
/// it: what `prune` goes by (it destroys only snapshots whose own value names its backup).
pub const CREATED_PROPERTY: &str = "qubes-zfs-backup:created";

/// One snapshot as `prune` sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotDetails {
    pub name: SnapshotName,
    pub createtxg: u64,
    /// Seconds since the epoch (`creation`, `-p`).
    pub creation: u64,
    pub guid: u64,
    /// Bytes only this snapshot holds: what destroying it alone frees.
    pub used: u64,
    /// The backup named by its own (locally set) [`CREATED_PROPERTY`], if any.
    pub made_by: Option<String>,
}

/// The `zfs list` call that reads every snapshot's details.
pub const SNAPSHOT_DETAILS_ARGS: [&str; 7] = [
    "list",
    "-H",
    "-p",
    "-t",
    "snapshot",
    "-o",
    "name,createtxg,creation,guid,used",
];

/// The `zfs get` call that reads [`CREATED_PROPERTY`] where it is set on a snapshot itself. A
/// value inherited from a dataset (someone set it there by hand) is not the mark of a snapshot
/// `snapshot` made, so only `-s local` counts (`zfs list -o` would show inherited values too).
/// No operand: every snapshot of every pool.
pub const CREATED_BY_ARGS: [&str; 10] = [
    "get",
    "-H",
    "-p",
    "-t",
    "snapshot",
    "-s",
    "local",
    "-o",
    "name,value",
    CREATED_PROPERTY,
];

/// Parses `zfs list -H -p -t snapshot -o name,createtxg,creation,guid,used` (with no maker yet).
pub fn parse_snapshot_details(text: &str) -> Result<Vec<SnapshotDetails>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
        let at = |what: &str| format!("line {}: {what}: {}", i + 1, crate::output::outside(line));
        let fields: Vec<&str> = line.split('\t').collect();
        let [name, createtxg, creation, guid, used] = fields[..] else {
            return Err(at("expected 5 tab-separated fields"));
        };
        let number = |what: &str, v: &str| {
            v.parse::<u64>()
                .map_err(|_| at(&format!("{what} is not a number")))
        };
        out.push(SnapshotDetails {
            name: SnapshotName::parse(name).map_err(|e| at(&format!("bad snapshot name ({e})")))?,
            createtxg: number("createtxg", createtxg)?,
            creation: number("creation", creation)?,
            guid: number("guid", guid)?,
            used: number("used", used)?,
            made_by: None,
        });
    }
    Ok(out)
}

/// Parses `zfs get -H -p -t snapshot -s local -o name,value <CREATED_PROPERTY>`: snapshot name →
/// the backup named. A value that is empty or `-` names none.
pub fn parse_created_by(text: &str) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
        let Some((name, value)) = line.split_once('\t') else {
            return Err(format!(
                "line {}: expected the name and the value, tab-separated: {}",
                i + 1,
                crate::output::outside(line)
            ));
        };
        if !value.is_empty() && value != "-" {
            out.insert(name.to_owned(), value.to_owned());
        }
    }
    Ok(out)
}

/// Every snapshot with its details and its maker (two `zfs` calls, whatever the number of
/// snapshots), ordered by dataset name, then oldest first.
pub fn collect_snapshot_details(runner: &dyn Runner) -> Result<Vec<SnapshotDetails>, ToolError> {
    let read = |args: &[&str]| -> Result<String, ToolError> {
        let raw = runner.run("zfs", args)?;
        String::from_utf8(raw)
            .map_err(|_| bad_output(&command_line("zfs", args), "printed non-UTF-8 output"))
    };
    let unreadable = |args: &[&str], p: String| {
        bad_output(
            &command_line("zfs", args),
            format!("printed output we cannot read: {p}"),
        )
    };
    let list = read(&SNAPSHOT_DETAILS_ARGS)?;
    let mut snapshots =
        parse_snapshot_details(&list).map_err(|p| unreadable(&SNAPSHOT_DETAILS_ARGS, p))?;
    let made_by =
        parse_created_by(&read(&CREATED_BY_ARGS)?).map_err(|p| unreadable(&CREATED_BY_ARGS, p))?;
    for s in &mut snapshots {
        s.made_by = made_by.get(s.name.as_str()).cloned();
    }
    snapshots.sort_by(|a, b| {
        a.name
            .dataset()
            .as_str()
            .cmp(b.name.dataset().as_str())
            .then(a.createtxg.cmp(&b.createtxg))
            .then_with(|| a.name.label().cmp(b.name.label()))
    });
    Ok(snapshots)
}

#[cfg(test)]
mod snapshot_details_tests {
    use super::*;

    #[test]
    fn snapshot_details_are_parsed_and_bad_lines_named() {
        let text =
            "pool/a@r1\t300\t1764748800\t77\t1024\npool/a@qubes:stop:1\t301\t1764748900\t78\t0\n";
        let s = parse_snapshot_details(text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name.as_str(), "pool/a@r1");
        assert_eq!(
            (s[0].createtxg, s[0].creation, s[0].guid, s[0].used),
            (300, 1_764_748_800, 77, 1024)
        );
        assert_eq!(s[0].made_by, None);
        assert!(parse_snapshot_details("pool/a@r1\t300\t1\t2\n")
            .unwrap_err()
            .contains("line 1: expected 5"));
        assert!(parse_snapshot_details("pool/a@r1\t300\tnow\t2\t3\n")
            .unwrap_err()
            .contains("creation is not a number"));
        assert!(parse_snapshot_details("pool/a\t300\t1\t2\t3\n")
            .unwrap_err()
            .contains("bad snapshot name"));
    }

    #[test]
    fn only_a_value_set_on_the_snapshot_itself_names_its_maker() {
        // `-s local` leaves inherited values out; `-` and empty values name nobody.
        let m = parse_created_by("pool/a@r1\tdaily\npool/a@r2\t-\npool/a@r3\t\n").unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m["pool/a@r1"], "daily");
        assert!(parse_created_by("pool/a@r1 daily\n").is_err());
        assert!(CREATED_BY_ARGS.contains(&CREATED_PROPERTY));
        assert!(CREATED_BY_ARGS.contains(&"local"));
    }
}
