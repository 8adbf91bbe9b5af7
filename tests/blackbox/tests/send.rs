//! `send`, `verify`, `abort` end to end: the real driver, the real agent reached through a
//! stand-in `qrexec-client` that execs it as qrexec would, and the fake `zfs` on both sides.
//! Faults are injected into `zfs send`, `zfs receive`, the qrexec connection and the driver.

use qzb_blackbox_tests::{run_with_reader_gone, FakeSystem, ReaderGone, Run};
use serde_json::Value;
use std::time::{Duration, Instant};

/// 8 MiB streams: bigger than the driver's 1 MiB frames, so a cut lands mid-stream.
const SIZE: u64 = 8 << 20;

fn json_file(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn write_json(path: &std::path::Path, v: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

/// The reference system with `shared` imported (snapshots of SIZE bytes) and a key: sends are
/// authenticated, `verify` reads back.
fn setup(patching: bool) -> FakeSystem {
    let sys = FakeSystem::with_shared_backup(SIZE, patching);
    sys.init_key();
    sys
}

fn receiver_state(sys: &FakeSystem) -> Value {
    json_file(&sys.state.join("qubes/backups-disp.json"))
}

const DEST: &str = "backuppool/backups/mydesktop/mainpool/shared";

fn send_calls(sys: &FakeSystem) -> Vec<Vec<String>> {
    sys.calls()
        .into_iter()
        .filter(|c| c["host"] == "dom0" && c["argv"][0] == "zfs" && c["argv"][1] == "send")
        .map(|c| {
            c["argv"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect()
        })
        .collect()
}

fn resumed(sys: &FakeSystem) -> bool {
    send_calls(sys)
        .iter()
        .any(|a| a.get(2).map(String::as_str) == Some("-t"))
}

fn states(sys: &FakeSystem) -> Vec<String> {
    let run = sys.driver(&["status", "--json", "shared"]);
    run.expect(0);
    run.json()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["send_state"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn full_backup_is_sent_verified_and_uses_the_exact_qrexec_call() {
    let sys = setup(false);
    let run = sys.driver(&["send", "shared"]);
    run.expect(0);
    assert!(
        run.stdout.contains("send completed successfully!"),
        "{}",
        run.stdout
    );
    assert_eq!(states(&sys), ["done", "done", "done"]);
    sys.driver(&["verify", "shared"]).expect(0);

    let qrexec: Vec<Value> = sys
        .calls()
        .into_iter()
        .filter(|c| c["argv"][0] == "qrexec-client")
        .collect();
    assert!(!qrexec.is_empty());
    for c in &qrexec {
        assert_eq!(
            c["argv"],
            serde_json::json!([
                "qrexec-client",
                "-d",
                "backups-disp",
                "root:QUBESRPC zfsbackup.Receive dom0"
            ])
        );
    }
    // The agent received into datasets under the root, never mounted, volumes tamed.
    let receives: Vec<Value> = sys
        .calls()
        .into_iter()
        .filter(|c| c["host"] == "backups-disp" && c["argv"][1] == "receive")
        .collect();
    assert_eq!(receives.len(), 3);
    assert_eq!(
        receives[0]["argv"],
        serde_json::json!(["zfs", "receive", "-s", "-u", "-o", "canmount=noauto", DEST])
    );
    let rx = receiver_state(&sys);
    let guid_rx = rx["zfs"]["datasets"][DEST]["snapshots"][0]["guid"].clone();
    assert!(!guid_rx.is_null());
    // A second send has nothing to do.
    let again = sys.driver(&["send", "shared"]);
    again.expect(0);
    assert!(
        again.stdout.contains("3/3 targets done"),
        "{}",
        again.stdout
    );
}

#[test]
fn a_failed_zfs_send_leaves_partial_state_and_the_next_send_resumes_it() {
    let sys = setup(false);
    let once = sys.dir.join("fault-once");
    sys.set_fake_env("QZB_FAKE_SEND_DIE_AFTER", (3u64 << 20).to_string());
    sys.set_fake_env("QZB_FAKE_FAULT_ONCE", once.display().to_string());
    let mut c = sys.driver_command(&["send", "shared"]);
    let run = qzb_blackbox_tests::Run::from(c.output().unwrap());
    run.expect(8);
    assert!(
        run.stderr
            .contains("the partial receive is kept and the next `send` resumes it"),
        "{}",
        run.stderr
    );
    // This tool's instruction, never zfs's own ("run zfs send -t <token>"), on readable lines.
    assert!(!run.stderr.contains("zfs send -t"), "{}", run.stderr);
    let status = sys.driver(&["status", "shared"]);
    assert!(!status.stdout.contains("zfs send -t"), "{}", status.stdout);
    assert!(status.stdout.contains("last error:"), "{}", status.stdout);
    assert!(
        run.stderr.lines().all(|l| l.chars().count() < 700),
        "{}",
        run.stderr
    );
    assert_eq!(states(&sys)[0], "partial");
    assert!(!receiver_state(&sys)["zfs"]["datasets"][DEST]["partial"].is_null());

    let run = sys.driver(&["send", "shared"]);
    run.expect(0);
    assert!(
        run.stdout.contains("resuming the interrupted receive"),
        "{}",
        run.stdout
    );
    assert!(resumed(&sys));
    sys.driver(&["verify", "shared"]).expect(0);
}

#[test]
fn a_driver_killed_mid_stream_loses_nothing() {
    let sys = setup(false);
    let progress = sys.dir.join("send-progress");
    sys.set_fake_env("QZB_FAKE_SEND_DELAY_MS", "40");
    sys.set_fake_env("QZB_FAKE_SEND_PROGRESS", progress.display().to_string());
    let mut c = sys.driver_command(&["send", "shared"]);
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    // Wait until the first target's stream is well under way (several frames, so the agent
    // has verified data to keep), then SIGKILL the driver.
    let deadline = Instant::now() + qzb_blackbox_tests::HANG_GUARD;
    while std::fs::read_to_string(&progress)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0)
        < 3 << 20
    {
        assert!(Instant::now() < deadline, "send never got under way");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The agent sees EOF without an end frame and keeps what it verified.
    let deadline = Instant::now() + qzb_blackbox_tests::HANG_GUARD;
    while receiver_state(&sys)["zfs"]["datasets"][DEST]["partial"].is_null() {
        assert!(Instant::now() < deadline, "no partial state after the kill");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(states(&sys)[0], "partial");

    let run = sys.driver(&["send", "shared"]);
    run.expect(0);
    assert!(resumed(&sys), "the next send resumed instead of restarting");
    sys.driver(&["verify", "shared"]).expect(0);
}

#[test]
fn a_cut_qrexec_connection_and_a_killed_receive_both_resume() {
    for (var, value) in [
        ("QZB_FAKE_QREXEC_CUT_TO_SERVICE", (3u64 << 20).to_string()),
        ("QZB_FAKE_RECV_DIE_AFTER", (3u64 << 20).to_string()),
    ] {
        let sys = setup(false);
        sys.set_fake_env(var, value.clone());
        sys.set_fake_env(
            "QZB_FAKE_FAULT_ONCE",
            sys.dir.join("once").display().to_string(),
        );
        let mut c = sys.driver_command(&["send", "shared"]);
        let run = qzb_blackbox_tests::Run::from(c.output().unwrap());
        assert_ne!(run.code, 0, "{var}: {}", run.stdout);
        sys.reset_fake_env();
        let run = sys.driver(&["send", "shared"]);
        run.expect(0);
        assert!(resumed(&sys), "{var}: resumed");
        sys.driver(&["verify", "shared"]).expect(0);
    }
}

#[test]
fn a_forged_resume_token_is_refused_and_nothing_unplanned_is_sent() {
    let sys = setup(false);
    sys.set_fake_env("QZB_FAKE_SEND_DIE_AFTER", (3u64 << 20).to_string());
    sys.set_fake_env(
        "QZB_FAKE_FAULT_ONCE",
        sys.dir.join("once").display().to_string(),
    );
    let mut c = sys.driver_command(&["send", "shared"]);
    qzb_blackbox_tests::Run::from(c.output().unwrap()).expect(8);
    // A compromised backup qube rewrites its partial state to ask for dom0's other data.
    let path = sys.state.join("qubes/backups-disp.json");
    let mut rx = json_file(&path);
    rx["zfs"]["datasets"][DEST]["partial"]["toname"] = "mainpool/dom0@b2".into();
    write_json(&path, &rx);
    let sends_before = send_calls(&sys).len();

    let run = sys.driver(&["send", "shared"]);
    run.expect(9);
    assert!(
        run.stderr
            .contains("does not match the plan (it names mainpool/dom0@b2)"),
        "{}",
        run.stderr
    );
    let new_sends: Vec<Vec<String>> = send_calls(&sys).into_iter().skip(sends_before).collect();
    assert!(
        new_sends
            .iter()
            .all(|a| !a.contains(&"mainpool/dom0@b2".to_owned())
                && a.get(2).map(String::as_str) != Some("-t")),
        "{new_sends:?}"
    );
    assert_eq!(states(&sys)[0], "partial", "the target is not marked done");
    // Its children depend on it (parents first), so they wait too, and say why.
    assert_eq!(&states(&sys)[1..], ["pending", "pending"]);
    assert!(
        run.stdout
            .contains("skipping mainpool/shared/apps@b1: it needs mainpool/shared@b1 first"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_refused_qrexec_call_is_explained() {
    let sys = setup(false);
    sys.set_fake_env("QZB_FAKE_QREXEC_REFUSE", "1");
    let mut c = sys.driver_command(&["send", "shared"]);
    let run = qzb_blackbox_tests::Run::from(c.output().unwrap());
    run.expect(7);
    assert!(
        run.stderr.contains("refused by qrexec policy"),
        "{}",
        run.stderr
    );
}

#[test]
fn targets_already_on_the_receiver_need_patching() {
    let sys = setup(false);
    sys.driver(&["send", "shared"]).expect(0);
    // A second backup of the same snapshots to the same receiver.
    let text = qzb_blackbox_tests::shared_config(false).replace("name: shared", "name: again");
    let file = sys.write("again.yaml", &text);
    sys.driver(&["import", &file]).expect(0);
    let run = sys.driver(&["send", "again"]);
    run.expect(8);
    assert!(
        run.stderr.contains("enable allowed-behaviours.patching"),
        "{}",
        run.stderr
    );

    let text = qzb_blackbox_tests::shared_config(true).replace("name: shared", "name: again");
    let file = sys.write("again.yaml", &text);
    sys.driver(&["import", "--replace", &file]).expect(0);
    let run = sys.driver(&["send", "again"]);
    run.expect(0);
    assert!(
        run.stdout
            .contains("already on the receiver with the same guid; marking it done"),
        "{}",
        run.stdout
    );
}

#[test]
fn verify_reports_a_snapshot_whose_guid_changed_on_the_receiver() {
    let sys = setup(false);
    sys.driver(&["send", "shared"]).expect(0);
    let path = sys.state.join("qubes/backups-disp.json");
    let mut rx = json_file(&path);
    rx["zfs"]["datasets"][DEST]["snapshots"][0]["guid"] = 12345.into();
    write_json(&path, &rx);
    let run = sys.driver(&["verify", "shared"]);
    run.expect(8);
    assert!(
        run.stdout
            .contains(&format!("MISMATCH  {DEST}@b1: receiver guid 12345")),
        "{}",
        run.stdout
    );
}

#[test]
fn abort_discards_partial_state_after_confirmation() {
    let sys = setup(false);
    sys.set_fake_env("QZB_FAKE_SEND_DIE_AFTER", (3u64 << 20).to_string());
    sys.set_fake_env(
        "QZB_FAKE_FAULT_ONCE",
        sys.dir.join("once").display().to_string(),
    );
    let mut c = sys.driver_command(&["send", "shared"]);
    qzb_blackbox_tests::Run::from(c.output().unwrap()).expect(8);
    // No terminal and no --yes: refused.
    let run = sys.driver(&["abort", "shared"]);
    run.expect(6);
    assert!(run.stderr.contains("confirmation needed"), "{}", run.stderr);
    assert!(!receiver_state(&sys)["zfs"]["datasets"][DEST]["partial"].is_null());

    let run = sys.driver(&["abort", "shared", "--yes"]);
    run.expect(0);
    assert!(
        run.stdout
            .contains(&format!("discarded partial state of {DEST}")),
        "{}",
        run.stdout
    );
    assert!(receiver_state(&sys)["zfs"]["datasets"][DEST]["partial"].is_null());
    assert_eq!(states(&sys)[0], "pending");
    sys.driver(&["send", "shared"]).expect(0);
    assert!(!resumed(&sys), "started over after the abort");
}

#[test]
fn calc_reports_receiver_space_and_missing_incremental_bases() {
    let sys = FakeSystem::new("reference-system");
    let text = qzb_blackbox_tests::shared_config(false)
        .replace("target-snapshot: \"@b1\"", "target-snapshot: \"@b2\"")
        .replace("since: beginning", "since: \"@b1\"")
        .replace("members: [mainpool/shared]", "members: [mainpool/dom0]");
    let file = sys.write("c.yaml", &text);
    sys.driver(&["import", &file]).expect(0);
    let run = sys.driver(&["calc", "shared"]);
    run.expect(0);
    assert!(
        run.stdout.contains("Available space on receiver: 4.5 TiB"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains(
            "incremental base backuppool/backups/mydesktop/mainpool/dom0@b1 is not on the receiver"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn a_halted_receiver_or_a_qube_the_policy_does_not_name_is_refused_before_any_call() {
    let sys = setup(false);
    let path = sys.state.join("dom0.json");
    let original = json_file(&path);

    let mut v = original.clone();
    v["qubes"]["domains"]["backups-disp"]["state"] = "Halted".into();
    write_json(&path, &v);
    let run = sys.driver(&["send", "shared"]);
    run.expect(7);
    assert!(
        run.stderr
            .contains("is not running (state Halted); start it (qvm-start backups-disp)"),
        "{}",
        run.stderr
    );

    let mut v = original.clone();
    v["qubes"]["policy"] = serde_json::json!([{"service": "zfsbackup.Receive", "source": "@adminvm", "target": "@anyvm", "action": "deny"}]);
    write_json(&path, &v);
    let run = sys.driver(&["send", "shared"]);
    // A policy refusal is a receiver problem (7), as the exit-code table says.
    run.expect(7);
    assert!(
        run.stderr
            .contains("qvm-tags backups-disp add zfs-backup-receiver"),
        "{}",
        run.stderr
    );
    let evaluations: Vec<Value> = sys
        .calls()
        .into_iter()
        .filter(|c| c["argv"][0] == "qrexec-policy-exec")
        .collect();
    assert_eq!(
        evaluations.last().unwrap()["argv"],
        serde_json::json!([
            "qrexec-policy-exec",
            "--just-evaluate",
            "@adminvm",
            "backups-disp",
            "zfsbackup.Receive"
        ])
    );
    assert!(
        !sys.calls().iter().any(|c| c["argv"][0] == "qrexec-client"),
        "no call was made"
    );
}

#[test]
fn a_byte_flipped_in_transit_is_caught_and_the_next_send_resumes_from_verified_data() {
    let sys = setup(false);
    // Deep inside the first stream's data (the session's first bytes are hello and requests).
    sys.set_fake_env("QZB_FAKE_QREXEC_FLIP_TO_SERVICE", (5u64 << 20).to_string());
    let mut c = sys.driver_command(&["send", "shared"]);
    let run = qzb_blackbox_tests::Run::from(c.output().unwrap());
    run.expect(8);
    assert!(
        run.stderr.contains("stream corrupted in transit"),
        "{}",
        run.stderr
    );
    assert_eq!(states(&sys)[0], "partial");
    sys.reset_fake_env();
    let run = sys.driver(&["send", "shared"]);
    run.expect(0);
    assert!(resumed(&sys), "resumed from the verified part");
    sys.driver(&["verify", "shared"]).expect(0);
}

#[test]
fn a_second_send_of_the_same_backup_is_refused_while_the_first_runs() {
    let sys = setup(false);
    sys.set_fake_env("QZB_FAKE_SEND_DELAY_MS", "15");
    let mut c = sys.driver_command(&["send", "shared"]);
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut first = c.spawn().unwrap();
    let deadline = Instant::now() + qzb_blackbox_tests::HANG_GUARD;
    while send_calls(&sys).is_empty() {
        assert!(Instant::now() < deadline, "send never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = sys.driver(&["send", "shared"]);
    second.expect(6);
    assert!(
        second
            .stderr
            .contains("in use by another qubes-zfs-backup process"),
        "{}",
        second.stderr
    );
    assert_eq!(first.wait().unwrap().code(), Some(0));
    sys.driver(&["verify", "shared"]).expect(0);
}

/// Runs `send shared` with its stderr's reader gone (`send shared 2>&1 | head -1` style),
/// `faults` added to its environment.
fn send_with_stderr_closed(sys: &FakeSystem, faults: &[(&str, String)]) -> Run {
    for (k, v) in faults {
        sys.set_fake_env(k, v.clone());
    }
    let c = sys.driver_command(&["send", "shared"]);
    run_with_reader_gone(c, ReaderGone::Stderr)
}

#[test]
fn a_closed_stderr_neither_stops_a_send_nor_changes_its_exit_status() {
    // Progress lines hit the closed pipe.
    let sys = setup(false);
    let run = send_with_stderr_closed(&sys, &[]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(
        run.stdout.contains("send completed successfully!"),
        "{}",
        run.stdout
    );
    assert_eq!(states(&sys), ["done", "done", "done"]);

    // A failure's messages too: the exit status stays the send error's.
    let sys = setup(false);
    let once = sys.dir.join("fault-once").display().to_string();
    let run = send_with_stderr_closed(
        &sys,
        &[
            ("QZB_FAKE_SEND_DIE_AFTER", (3u64 << 20).to_string()),
            ("QZB_FAKE_FAULT_ONCE", once),
        ],
    );
    assert_eq!(run.code, 8, "{}", run.stdout);
    assert_eq!(states(&sys)[0], "partial");
}

#[test]
fn a_send_whose_stdout_reader_went_away_still_finishes_the_backup() {
    // `send shared | head -1`: every line after the first hits a closed pipe.
    let sys = setup(false);
    let run = run_with_reader_gone(sys.driver_command(&["send", "shared"]), ReaderGone::Stdout);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(states(&sys), ["done", "done", "done"]);
}

#[test]
fn calc_says_the_policy_refuses_before_estimating_anything() {
    let sys = setup(false);
    let path = sys.state.join("dom0.json");
    let mut v = json_file(&path);
    v["qubes"]["policy"] = serde_json::json!([{"service": "zfsbackup.Receive", "source": "@adminvm", "target": "@anyvm", "action": "deny"}]);
    write_json(&path, &v);
    let run = sys.driver(&["calc", "shared"]);
    run.expect(7);
    assert!(
        run.stderr.contains("the qrexec policy does not allow dom0"),
        "{}",
        run.stderr
    );
    // No size table, and no estimate was even asked for.
    assert_eq!(run.stdout, "", "{}", run.stdout);
    assert!(send_calls(&sys).is_empty(), "{:?}", send_calls(&sys));
}

#[test]
fn send_sends_every_ready_target_and_lists_the_ones_not_ready_with_exit_10() {
    // junk@b1 was never taken (as when its qube was running at `snapshot`).
    let sys = FakeSystem::new("reference-system");
    let path = sys.state.join("dom0.json");
    let mut v = json_file(&path);
    v["zfs"]["datasets"]["mainpool/shared/junk"]["snapshots"] = serde_json::json!([]);
    write_json(&path, &v);
    let file = sys.write("shared.yaml", &qzb_blackbox_tests::shared_config(false));
    sys.driver(&["import", &file]).expect(0);
    let run = sys.driver(&["send", "shared"]);
    run.expect(10);
    assert_eq!(states(&sys), ["done", "done", "pending"]);
    assert!(
        run.stdout
            .contains("deferred mainpool/shared/junk@b1: its snapshot does not exist yet"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains("not finished: every ready target was sent, but 1 were not ready"),
        "{}",
        run.stderr
    );
}

#[test]
fn commands_that_did_nothing_say_so_with_exit_11() {
    let sys = setup(false);
    let run = sys.driver(&["verify", "shared"]);
    run.expect(11);
    assert!(
        run.stderr
            .contains("nothing done: no target of shared has been sent yet"),
        "{}",
        run.stderr
    );
    // The config has snapshot-creation: no.
    let run = sys.driver(&["snapshot", "shared"]);
    run.expect(11);
    assert!(
        run.stderr
            .contains("snapshot creation is disabled for shared"),
        "{}",
        run.stderr
    );
}

#[test]
fn progress_names_dom0s_snapshots_has_totals_without_calc_and_never_exceeds_them() {
    let sys = setup(false);
    let run = sys.driver(&["send", "shared"]);
    run.expect(0);
    let lines: Vec<Vec<&str>> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("progress "))
        .map(|l| l.split(' ').collect())
        .collect();
    for i in 1..=3 {
        assert!(
            lines.iter().any(|f| f[4] == format!("{i}/3")),
            "target {i} of 3 has no progress line:\n{}",
            run.stderr
        );
    }
    for f in &lines {
        // progress <dom0 snapshot> <bytes> <total> <i>/<n> <run bytes> <run total>
        assert!(f[1].starts_with("mainpool/shared"), "{f:?}");
        let bytes: u64 = f[2].parse().unwrap();
        let total: u64 = f[3].parse().expect("a total, without calc first");
        assert!(bytes <= total, "{f:?}");
        let run_bytes: u64 = f[5].parse().unwrap();
        let run_total: u64 = f[6].parse().unwrap();
        assert!(run_bytes <= run_total, "{f:?}");
    }
}

#[test]
fn send_json_prints_one_event_per_line_for_scripts() {
    let sys = setup(false);
    let run = sys.driver(&["send", "--json", "shared"]);
    run.expect(0);
    let events: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "start").count(),
        3,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "done").count(),
        3,
        "{kinds:?}"
    );
    assert_eq!(kinds[kinds.len() - 2..], ["summary", "completed"]);
    for e in events.iter().filter(|e| e["event"] == "streamed") {
        assert!(
            e["bytes"].as_u64().unwrap() <= e["total"].as_u64().unwrap(),
            "{e}"
        );
        assert_eq!(e["count"], 3);
    }
    assert_eq!(events[events.len() - 2]["done"], 3);
}

#[test]
fn import_replace_keeps_what_was_sent_and_the_next_send_just_works() {
    let sys = setup(false);
    sys.driver(&["send", "shared"]).expect(0);
    let run = sys.driver(&[
        "import",
        "--replace",
        &sys.dir.join("shared.yaml").display().to_string(),
    ]);
    run.expect(0);
    assert!(
        run.stdout
            .contains("3 target(s) it sent stay done (same snapshot, same guid), 0 interrupted one(s) resume; nothing on the receiver was changed"),
        "{}",
        run.stdout
    );
    assert_eq!(states(&sys), ["done", "done", "done"]);
    // Before, every target failed "already exists ... enable patching".
    let run = sys.driver(&["send", "shared"]);
    run.expect(0);
    sys.driver(&["verify", "shared"]).expect(0);
}

#[test]
fn a_busy_backup_qube_says_at_once_who_holds_it_and_the_send_goes_on_after() {
    use std::io::{BufRead, Write};
    let sys = setup(false);
    // Another session holds the agent's receive lock, as a running backup would.
    let mut lock = std::fs::File::create(sys.receive_lock()).unwrap();
    lock.lock().unwrap();
    lock.write_all(b"a receive of backuppool/other@x (agent pid 1)")
        .unwrap();
    let mut child = sys
        .driver_command(&["send", "shared"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert_ne!(
            stderr.read_line(&mut line).unwrap(),
            0,
            "no notice:\n{seen}"
        );
        seen.push_str(&line);
        if line.starts_with("the backup qube is busy with ") {
            assert!(
                line.contains("a receive of backuppool/other@x (agent pid 1); waiting up to"),
                "{line}"
            );
            break;
        }
    }
    // The other session ends; this one takes the lock and finishes.
    lock.unlock().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0), "{seen}{rest}");
    assert_eq!(states(&sys), ["done", "done", "done"]);
}

#[test]
fn a_hung_local_zfs_is_stopped_at_the_tool_timeout_and_named() {
    let sys = setup(false);
    // A `zfs` that never answers, first on PATH (the fakes' own directory).
    let zfs = sys.bin.join("zfs");
    std::fs::remove_file(&zfs).unwrap();
    std::fs::write(&zfs, "#!/bin/sh\nexec sleep 600\n").unwrap();
    let mut perms = std::fs::metadata(&zfs).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&zfs, perms).unwrap();
    let run = sys.driver(&["--tool-timeout", "1", "status", "shared"]);
    run.expect(0); // status reads only dom0's state files
    let run = sys.driver(&["--tool-timeout", "1", "send", "shared"]);
    run.expect(5);
    assert!(
        run.stderr.contains("`zfs list -H -p -t all -o name,type,origin,createtxg,guid` did not finish within 1 s and was stopped (a hung system tool; the bound is --tool-timeout)"),
        "{}",
        run.stderr
    );
}
