//! Adversarial tests across the trust boundary, through the real binaries.
//!
//! Driver side: the real driver talks, through the stand-in `qrexec-client`, to
//! `qzb-hostile-agent` (tests/fake-system/src/bin), a receiver agent in a compromised backup qube
//! that misbehaves as `QZB_HOSTILE=<mode>` says. Every hostile behaviour must be refused with a
//! clear error and the right exit code, leave the state file consistent (nothing marked done
//! that was not received), run no `zfs send` that was not planned, and print no control
//! character from the backup qube to the dom0 terminal.
//!
//! Agent side: a hostile caller feeds the real `qubes-zfs-backup-receiver` binary bad names,
//! names outside the receiver root, frames out of order, oversized lengths and wrong hellos.
//! Each is refused, the agent never panics, and the receiver's pool is left as it was.

use qzb_blackbox_tests::{bin, output_guarded, FakeSystem, Run};
use qzb_protocol as proto;
use serde_json::Value;
use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Driver side: setup and checks
// ---------------------------------------------------------------------------------------------

/// 8 MiB streams: bigger than the pipes and the driver's buffers, so a receiver that stops
/// reading or goes away is noticed mid-stream.
const SIZE: u64 = 8 << 20;
const ROOT: &str = "backuppool/backups/mydesktop";
const DEST: &str = "backuppool/backups/mydesktop/mainpool/shared";
const TARGETS: [&str; 3] = [
    "mainpool/shared@b1",
    "mainpool/shared/apps@b1",
    "mainpool/shared/junk@b1",
];

fn json_file(path: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The reference system with mainpool/shared's snapshots made SIZE bytes, and `shared`
/// (full sends of shared@b1, apps@b1, junk@b1; the children depend on shared@b1) imported.
fn setup() -> FakeSystem {
    FakeSystem::with_shared_backup(SIZE, false)
}

/// Runs the driver against the hostile agent in `mode`.
fn hostile(sys: &FakeSystem, mode: &str, env: &[(&str, &str)], args: &[&str]) -> Run {
    sys.reset_fake_env();
    sys.set_fake_env(
        "QZB_FAKE_AGENT",
        bin("qzb-hostile-agent").display().to_string(),
    );
    sys.set_fake_env("QZB_HOSTILE", mode);
    let c = sys.driver_command(args);
    for (k, v) in env {
        sys.set_fake_env(k, *v);
    }
    let run = output_guarded(c);
    assert_clean(mode, &run);
    run
}

fn send(sys: &FakeSystem, mode: &str, env: &[(&str, &str)]) -> Run {
    hostile(sys, mode, env, &["send", "shared"])
}

/// Nothing from the backup qube may reach the terminal raw: no control character but newline
/// and tab in anything the driver printed.
fn assert_clean(what: &str, run: &Run) {
    for (stream, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
        if let Some(c) = text
            .chars()
            .find(|c| c.is_control() && *c != '\n' && *c != '\t')
        {
            panic!("{what}: {stream} contains the control character {c:?}:\n{text}");
        }
    }
}

/// The error line(s) the driver printed, for messages.
fn expect_error(run: &Run, code: i32, text: &str) {
    run.expect(code);
    assert!(
        run.stderr.contains(text),
        "expected {text:?} in stderr:\n{}",
        run.stderr
    );
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

/// `status` (the human one) shows the recorded errors sanitised too.
fn assert_status_clean(sys: &FakeSystem) {
    let run = sys.driver(&["status", "shared"]);
    run.expect(0);
    assert_clean("status", &run);
}

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

/// Every `zfs send` that ran is a planned full stream of a target, never `-t`, never anything
/// else; and at most `max` of them ran.
fn assert_only_planned_sends(sys: &FakeSystem, max: usize) {
    let sends = send_calls(sys);
    // `calc` and `check` run dry runs (-n); only real streams count.
    let real: Vec<&Vec<String>> = sends.iter().filter(|a| !a.contains(&"-n".into())).collect();
    for a in &real {
        let planned = TARGETS
            .iter()
            .any(|t| a[..] == ["zfs", "send", "-L", "-e", "-c", "-p", t]);
        assert!(planned, "unplanned zfs send: {a:?}");
    }
    assert!(real.len() <= max, "{} sends ran: {real:?}", real.len());
}

/// The source guid of a dom0 snapshot.
fn guid(sys: &FakeSystem, snapshot: &str) -> u64 {
    let run = sys.zfs("dom0", &["list", "-H", "-p", "-o", "guid", snapshot]);
    run.expect(0);
    run.stdout.trim().parse().unwrap()
}

fn token(toname: &str, toguid: u64, fromguid: Option<u64>) -> String {
    proto::encode_resume_token(&proto::ResumeToken {
        object: 1,
        offset: 4096,
        bytes: 3 << 20,
        toguid,
        toname: proto::SnapshotName::parse(toname).unwrap(),
        fromguid,
        largeblockok: true,
        embedok: true,
        compressok: true,
        rawok: false,
        redact_snaps: None,
        book_redact_snaps: None,
    })
}

/// The receiver lists `token` on `dataset`.
fn send_with_token(sys: &FakeSystem, dataset: &str, token: &str) -> Run {
    send(
        sys,
        "token",
        &[("QZB_HOSTILE_ARG", token), ("QZB_HOSTILE_DATASET", dataset)],
    )
}

/// The first target was refused before anything was sent: it stays pending, its children
/// wait for it, nothing is sent.
fn assert_refused_before_sending(sys: &FakeSystem) {
    assert_eq!(states(sys), ["pending", "pending", "pending"]);
    assert_only_planned_sends(sys, 0);
    assert_status_clean(sys);
}

// ---------------------------------------------------------------------------------------------
// 1. Resume tokens
// ---------------------------------------------------------------------------------------------

#[test]
fn a_resume_token_for_an_unplanned_snapshot_is_a_security_refusal() {
    let sys = setup();
    let dom0 = guid(&sys, "mainpool/dom0@b2");
    let run = send_with_token(&sys, DEST, &token("mainpool/dom0@b2", dom0, None));
    expect_error(&run, 9, "security: the receiver's resume token for mainpool/shared@b1 does not match the plan (it names mainpool/dom0@b2); it is refused");
    assert!(
        run.stdout
            .contains("skipping mainpool/shared/apps@b1: it needs mainpool/shared@b1 first"),
        "{}",
        run.stdout
    );
    assert_refused_before_sending(&sys);
}

#[test]
fn a_resume_token_naming_another_targets_snapshot_is_a_security_refusal() {
    let sys = setup();
    let apps = guid(&sys, "mainpool/shared/apps@b1");
    let run = send_with_token(&sys, DEST, &token("mainpool/shared/apps@b1", apps, None));
    expect_error(
        &run,
        9,
        "does not match the plan (it names mainpool/shared/apps@b1)",
    );
    assert_refused_before_sending(&sys);
}

#[test]
fn a_resume_token_parked_on_an_unplanned_dataset_is_ignored() {
    let sys = setup();
    let dom0 = guid(&sys, "mainpool/dom0@b2");
    let run = send_with_token(
        &sys,
        &format!("{ROOT}/mainpool/dom0"),
        &token("mainpool/dom0@b2", dom0, None),
    );
    run.expect(0);
    assert_eq!(states(&sys), ["done", "done", "done"]);
    assert_only_planned_sends(&sys, 3);
}

#[test]
fn a_resume_token_with_a_wrong_toguid_is_a_security_refusal() {
    let sys = setup();
    let g = guid(&sys, "mainpool/shared@b1");
    let run = send_with_token(&sys, DEST, &token("mainpool/shared@b1", g ^ 1, None));
    expect_error(
        &run,
        9,
        &format!(
            "does not match the plan (its guid is {}, the snapshot's is {g})",
            g ^ 1
        ),
    );
    assert_refused_before_sending(&sys);
}

#[test]
fn a_resume_token_with_a_wrong_fromguid_is_a_security_refusal() {
    let sys = setup();
    let g = guid(&sys, "mainpool/shared@b1");
    let other = guid(&sys, "mainpool/dom0@b1");
    let run = send_with_token(&sys, DEST, &token("mainpool/shared@b1", g, Some(other)));
    expect_error(
        &run,
        9,
        &format!("does not match the plan (it continues from the snapshot with guid {other}, the plan from nothing (a full stream))"),
    );
    assert_refused_before_sending(&sys);
}

#[test]
fn garbage_resume_tokens_are_refused() {
    let g = guid(&FakeSystem::new("reference-system"), "mainpool/shared@b1");
    let good = token("mainpool/shared@b1", g, None);
    let parts: Vec<&str> = good.splitn(4, '-').collect();
    let bad_checksum = format!(
        "{}-{:x}-{}-{}",
        parts[0],
        u64::from_str_radix(parts[1], 16).unwrap() ^ 1,
        parts[2],
        parts[3]
    );
    let truncated = good[..good.len() / 2].to_owned();
    let cases: [(&str, String, i32, &str); 5] = [
        (
            "not hex",
            "1-zz-12-not-hex".into(),
            7,
            "bad reply from the receiver: invalid message: resume token must be non-empty hex digits and '-'",
        ),
        (
            "bad checksum",
            bad_checksum,
            9,
            "security: the receiver's resume token for mainpool/shared@b1 cannot be decoded",
        ),
        (
            "truncated",
            truncated,
            9,
            "security: the receiver's resume token for mainpool/shared@b1 cannot be decoded",
        ),
        (
            "over 16 KiB",
            format!("1-0-10-{}", "0".repeat(16 << 10)),
            7,
            "bad reply from the receiver: invalid message: resume token is 16391 bytes, limit 16384",
        ),
        (
            "just a dash",
            "-".into(),
            9,
            "security: the receiver's resume token for mainpool/shared@b1 cannot be decoded",
        ),
    ];
    for (what, tok, code, text) in cases {
        let sys = setup();
        let run = send_with_token(&sys, DEST, &tok);
        assert_eq!(run.code, code, "{what}: {}", run.stderr);
        assert!(run.stderr.contains(text), "{what}: {}", run.stderr);
        assert_refused_before_sending(&sys);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Frames, messages and hellos
// ---------------------------------------------------------------------------------------------

#[test]
fn an_oversized_reply_frame_is_refused_before_it_is_read() {
    for (len, text) in [
        (
            None,
            "bad reply from the receiver: Reply frame of 16777217 bytes is outside the allowed 1..=16777216 bytes",
        ),
        (
            Some(u32::MAX.to_string()),
            "Reply frame of 4294967295 bytes is outside the allowed 1..=16777216 bytes",
        ),
    ] {
        let sys = setup();
        let env: Vec<(&str, &str)> = len
            .as_deref()
            .map(|l| ("QZB_HOSTILE_ARG", l))
            .into_iter()
            .collect();
        let run = send(&sys, "oversized-frame", &env);
        expect_error(&run, 7, text);
        assert_refused_before_sending(&sys);
    }
}

#[test]
fn an_oversized_message_is_refused() {
    let sys = setup();
    let run = send(&sys, "oversized-message", &[]);
    expect_error(
        &run,
        7,
        "bad reply from the receiver: invalid message: message is 9192 bytes, limit 8192",
    );
    assert_refused_before_sending(&sys);
}

#[test]
fn an_unknown_frame_kind_is_refused() {
    let sys = setup();
    let run = send(&sys, "unknown-kind", &[]);
    expect_error(&run, 7, "bad reply from the receiver: unknown frame kind 9");
    assert_refused_before_sending(&sys);
}

#[test]
fn a_wrong_protocol_version_in_the_hello_is_named() {
    let sys = setup();
    let run = send(&sys, "hello-version", &[]);
    expect_error(
        &run,
        7,
        &format!(
            "handshake with the receiver agent failed: protocol version mismatch: we speak version {}, the peer speaks version {}",
            proto::PROTOCOL_VERSION,
            proto::PROTOCOL_VERSION + 1
        ),
    );
    assert_refused_before_sending(&sys);
}

#[test]
fn a_hello_with_the_drivers_role_is_refused() {
    let sys = setup();
    let run = send(&sys, "hello-role", &[]);
    expect_error(
        &run,
        7,
        "handshake with the receiver agent failed: peer hello does not come from a Receiver",
    );
    assert_refused_before_sending(&sys);
}

#[test]
fn a_shell_error_instead_of_a_hello_is_not_our_protocol() {
    let sys = setup();
    // The agent prints and exits at once; whether the driver's hello still fits in the pipe or
    // meets a broken pipe is a race, so try a few times: both must name the real problem.
    for _ in 0..6 {
        let run = send(&sys, "banner", &[]);
        expect_error(
            &run,
            7,
            "the handshake with the receiver agent failed: peer does not speak the qubes-zfs-backup protocol (bad hello magic)",
        );
        // What the qube printed on stderr is shown, sanitised.
        assert!(
            run.stderr
                .contains("it said: bash: qubes-zfs-backup-receiver: command not found\\u{1b}[2J"),
            "{}",
            run.stderr
        );
    }
    assert_refused_before_sending(&sys);
}

// ---------------------------------------------------------------------------------------------
// 3. Endless output and hangs
// ---------------------------------------------------------------------------------------------

#[test]
fn endless_output_is_bounded_and_refused() {
    for (mode, text) in [
        (
            "endless-data",
            "bad reply from the receiver: expected a reply frame, got a Data frame",
        ),
        ("endless-garbage", "bad reply from the receiver: "),
    ] {
        let sys = setup();
        let run = hostile(&sys, mode, &[], &["--timeout", "2", "send", "shared"]);
        expect_error(&run, 7, text);
        assert_refused_before_sending(&sys);
    }
}

#[test]
fn a_receiver_that_never_says_hello_times_out() {
    let sys = setup();
    let run = hostile(
        &sys,
        "hang-hello",
        &[],
        &["--timeout", "2", "send", "shared"],
    );
    expect_error(
        &run,
        7,
        "handshake with the receiver agent failed: stream ended in the middle of a hello: the receiver stopped responding within the timeout (--timeout); the call was ended",
    );
    assert_refused_before_sending(&sys);
}

#[test]
fn a_receiver_that_stops_answering_times_out() {
    let sys = setup();
    let run = hostile(
        &sys,
        "hang-inventory",
        &[],
        &["--timeout", "2", "send", "shared"],
    );
    expect_error(&run, 7, "the receiver did not answer in time");
    assert_refused_before_sending(&sys);
}

#[test]
fn a_receiver_that_trickles_its_reply_times_out() {
    let sys = setup();
    let run = hostile(&sys, "trickle", &[], &["--timeout", "2", "send", "shared"]);
    expect_error(&run, 7, "the receiver did not answer in time");
    assert_refused_before_sending(&sys);
}

#[test]
fn a_receiver_that_stops_reading_mid_stream_times_out_and_nothing_is_done() {
    let sys = setup();
    let run = hostile(
        &sys,
        "hang-stream",
        &[],
        &["--timeout", "2", "send", "shared"],
    );
    expect_error(
        &run,
        7,
        "failed mainpool/shared@b1: the receiver stopped taking the stream, so the call was ended after the timeout (--timeout)",
    );
    assert!(
        run.stderr.contains("stopped responding within the timeout"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("not attempted, because the receiver stopped responding: mainpool/shared/apps@b1, mainpool/shared/junk@b1"),
        "{}",
        run.stderr
    );
    // Started, not done; the children wait.
    assert_eq!(states(&sys), ["partial", "pending", "pending"]);
    assert_only_planned_sends(&sys, 1);
    assert_status_clean(&sys);
}

#[test]
fn one_silent_receiver_costs_one_timeout_not_one_per_target() {
    // Two independent targets (no parent among them): before, each opened a new call and
    // waited out the timeout again.
    let sys = setup();
    let config = qzb_blackbox_tests::shared_config(false)
        .replace("name: shared", "name: pair")
        .replace(
            "members: [mainpool/shared]",
            "members: [mainpool/shared/apps, mainpool/shared/junk]",
        );
    let file = sys.write("pair.yaml", &config);
    sys.driver(&["import", &file]).expect(0);
    let run = hostile(
        &sys,
        "hang-stream",
        &[],
        &["--timeout", "2", "send", "pair"],
    );
    expect_error(
        &run,
        7,
        "the run ended after one timeout; 1 target(s) were not attempted",
    );
    let calls = sys
        .calls()
        .into_iter()
        .filter(|c| c["argv"][0] == "qrexec-client")
        .count();
    assert_eq!(calls, 1, "{}", run.stderr);
}

#[test]
fn a_receiver_whose_child_keeps_the_pipes_open_still_times_out() {
    let sys = setup();
    let run = hostile(
        &sys,
        "hang-with-child",
        &[],
        &["--timeout", "2", "send", "shared"],
    );
    expect_error(&run, 7, "the receiver did not answer in time");
    assert_refused_before_sending(&sys);
}

// ---------------------------------------------------------------------------------------------
// 4. Forged success
// ---------------------------------------------------------------------------------------------

#[test]
fn a_success_with_a_wrong_guid_is_not_done() {
    let sys = setup();
    let g = guid(&sys, "mainpool/shared@b1");
    let run = send(&sys, "ok-wrong-guid", &[]);
    expect_error(
        &run,
        9,
        &format!(
            "the receiver reports {DEST}@b1 with guid {}, but the source's is {g}; the target is not done",
            g ^ 0x5a5a
        ),
    );
    assert_eq!(states(&sys), ["partial", "pending", "pending"]);
    assert_only_planned_sends(&sys, 1);
}

#[test]
fn a_success_for_another_snapshot_is_not_done() {
    let sys = setup();
    let run = send(
        &sys,
        "ok-other-snapshot",
        &[("QZB_HOSTILE_ARG", &format!("{ROOT}/mainpool/dom0@b2"))],
    );
    expect_error(
        &run,
        9,
        &format!("the receiver reported receiving {ROOT}/mainpool/dom0@b2 instead of {DEST}@b1"),
    );
    assert_eq!(states(&sys), ["partial", "pending", "pending"]);
    assert_only_planned_sends(&sys, 1);
}

#[test]
fn a_success_for_a_snapshot_name_with_escapes_is_refused() {
    let sys = setup();
    let run = send(
        &sys,
        "ok-other-snapshot",
        &[("QZB_HOSTILE_ARG", "backuppool/\\e[2J\\e]0;x\\a@b1")],
    );
    expect_error(
        &run,
        8,
        "bad reply from the receiver: cannot decode message",
    );
    assert_eq!(states(&sys), ["partial", "pending", "pending"]);
    assert_only_planned_sends(&sys, 1);
    assert_status_clean(&sys);
}

#[test]
fn a_success_although_the_stream_was_cut_is_not_done() {
    let sys = setup();
    let run = send(
        &sys,
        "ok-despite-cut",
        &[
            ("QZB_FAKE_SEND_DIE_AFTER", &(3u64 << 20).to_string()),
            (
                "QZB_FAKE_FAULT_ONCE",
                &sys.dir.join("once").display().to_string(),
            ),
        ],
    );
    expect_error(
        &run,
        9,
        &format!("security: the receiver reported success for {DEST}@b1 although `zfs send -L -e -c -p mainpool/shared@b1` failed"),
    );
    assert_eq!(states(&sys), ["partial", "pending", "pending"]);
    assert_only_planned_sends(&sys, 1);
}

#[test]
fn a_success_before_the_stream_was_sent_is_not_done() {
    let sys = setup();
    let run = send(&sys, "early-ok", &[]);
    expect_error(
        &run,
        9,
        &format!("security: the receiver reported success for {DEST}@b1 although"),
    );
    assert_eq!(states(&sys), ["partial", "pending", "pending"]);
    assert_only_planned_sends(&sys, 1);
}

// ---------------------------------------------------------------------------------------------
// 5. Names and text from the backup qube
// ---------------------------------------------------------------------------------------------

#[test]
fn an_inventory_outside_the_root_is_refused() {
    let sys = setup();
    let run = send(
        &sys,
        "inventory-outside",
        &[("QZB_HOSTILE_ARG", "otherpool/secret")],
    );
    expect_error(
        &run,
        7,
        &format!("bad reply from the receiver: invalid message: inventory dataset otherpool/secret is outside the root {ROOT}"),
    );
    assert_refused_before_sending(&sys);

    let sys = setup();
    let run = send(
        &sys,
        "inventory-root",
        &[("QZB_HOSTILE_ARG", "otherpool/backups")],
    );
    expect_error(
        &run,
        9,
        &format!("security: the receiver answered an inventory of otherpool/backups when asked for {ROOT}"),
    );
    assert_refused_before_sending(&sys);
}

#[test]
fn inventory_names_with_dotdot_nul_newlines_or_escapes_are_refused() {
    for (name, text) in [
        (
            format!("{ROOT}/../../etc"),
            "invalid dataset name: a component or label cannot be '.' or '..'",
        ),
        (
            format!("{ROOT}/a\\0b"),
            "invalid dataset name: the character U+0000 is not allowed",
        ),
        (
            format!("{ROOT}/a\\nb"),
            "invalid dataset name: the character U+000A is not allowed",
        ),
        (
            format!("{ROOT}/\\e[2J\\e]0;owned\\a"),
            "invalid dataset name: the character U+001B is not allowed",
        ),
    ] {
        let sys = setup();
        let run = send(&sys, "inventory-bad-name", &[("QZB_HOSTILE_ARG", &name)]);
        expect_error(
            &run,
            7,
            "bad reply from the receiver: cannot decode message: ",
        );
        assert!(run.stderr.contains(text), "{name}: {}", run.stderr);
        assert_refused_before_sending(&sys);
    }
}

const ESCAPES: &str = "\\e[2J\\e[H\\e]0;owned\\a\\rfake prompt$ \\0line\\nnext\\e[31m";

#[test]
fn escapes_in_an_error_reply_are_not_printed() {
    for verbose in [false, true] {
        let sys = setup();
        let mut args = vec!["send", "shared"];
        if verbose {
            args.insert(0, "-v");
        }
        let run = hostile(
            &sys,
            "error-escapes",
            &[("QZB_HOSTILE_ARG", ESCAPES)],
            &args,
        );
        expect_error(
            &run,
            7,
            &format!("the receiver cannot list {ROOT}: \\u{{1b}}[2J\\u{{1b}}[H\\u{{1b}}]0;owned\\u{{7}}\\rfake prompt$ \\u{{0}}line\\nnext\\u{{1b}}[31m (zfs failed)"),
        );
        assert_refused_before_sending(&sys);
    }
}

#[test]
fn escapes_in_a_receive_refusal_are_not_printed() {
    let sys = setup();
    let run = send(&sys, "refuse-escapes", &[("QZB_HOSTILE_ARG", ESCAPES)]);
    expect_error(&run, 8, "failed mainpool/shared@b1: zfs failed: \\u{1b}[2J\\u{1b}[H\\u{1b}]0;owned\\u{7}\\rfake prompt$ \\u{0}line\\nnext\\u{1b}[31m\n");
    // Refused before ReceiveReady: nothing was streamed, the target is failed but not started.
    assert_eq!(states(&sys)[1..], ["pending", "pending"]);
    assert_ne!(states(&sys)[0], "done");
    assert_only_planned_sends(&sys, 0);
    assert_status_clean(&sys);
}

#[test]
fn escapes_in_a_receive_failure_are_not_printed() {
    for verbose in [false, true] {
        let sys = setup();
        let mut args = vec!["send", "shared"];
        if verbose {
            args.insert(0, "-v");
        }
        let run = hostile(&sys, "fail-escapes", &[("QZB_HOSTILE_ARG", ESCAPES)], &args);
        expect_error(&run, 8, "failed mainpool/shared@b1: zfs failed: \\u{1b}[2J\\u{1b}[H\\u{1b}]0;owned\\u{7}\\rfake prompt$ \\u{0}line\\nnext\\u{1b}[31m\n");
        assert_eq!(states(&sys), ["partial", "pending", "pending"]);
        assert_only_planned_sends(&sys, 1);
        assert_status_clean(&sys);
    }
}

#[test]
fn verify_calc_and_abort_refuse_a_hostile_inventory_too() {
    let sys = setup();
    for cmd in [
        vec!["calc", "shared"],
        vec!["abort", "shared", "--yes"],
        vec!["verify", "shared", "--quick"],
    ] {
        if cmd[0] == "verify" {
            // verify has nothing to ask before a target is done: mark one done (as a send
            // would), so the hostile inventory is what it meets.
            let path = sys.meta.join("shared.json");
            let mut v = json_file(&path);
            v["targets"][0]["send_state"] = "done".into();
            std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
        }
        let run = hostile(&sys, "error-escapes", &[("QZB_HOSTILE_ARG", ESCAPES)], &cmd);
        expect_error(&run, 7, "the receiver cannot list");
        let run = hostile(
            &sys,
            "inventory-bad-name",
            &[("QZB_HOSTILE_ARG", &format!("{ROOT}/\\e[2J"))],
            &cmd,
        );
        expect_error(
            &run,
            7,
            "bad reply from the receiver: cannot decode message",
        );
        let run = hostile(&sys, "unknown-kind", &[], &cmd);
        expect_error(&run, 7, "unknown frame kind 9");
    }
    assert_only_planned_sends(&sys, 0);
    assert_status_clean(&sys);
}

// ---------------------------------------------------------------------------------------------
// 6. A hostile caller against the real agent binary
// ---------------------------------------------------------------------------------------------

const LOCK: &str = "receive.lock";

fn receiver_state(sys: &FakeSystem) -> Value {
    json_file(&sys.state.join("qubes/backups-disp.json"))
}

/// What came back from one agent session.
struct AgentRun {
    code: i32,
    replies: Vec<Result<proto::Reply, String>>,
    stderr: String,
}

/// Runs the real agent as qrexec would for dom0, feeds it `input`, and collects its replies.
fn agent(sys: &FakeSystem, input: Vec<u8>) -> AgentRun {
    agent_as(sys, "dom0", input)
}

fn agent_as(sys: &FakeSystem, caller: &str, input: Vec<u8>) -> AgentRun {
    let mut child = sys
        .command(bin("qubes-zfs-backup-receiver"))
        .env("QREXEC_REMOTE_DOMAIN", caller)
        .env("QUBES_ZFS_BACKUP_RECEIVE_LOCK", sys.dir.join(LOCK))
        .env("QZB_FAKE_HOST", "backups-disp")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the agent");
    let mut stdin = child.stdin.take().unwrap();
    // The agent may stop reading early (that is what a refusal does): ignore EPIPE.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + qzb_blackbox_tests::HANG_GUARD;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    writer.join().unwrap();
    let stdout = out.join().unwrap();
    let stderr = err.join().unwrap();
    assert!(
        !stderr.contains("panicked"),
        "the agent panicked:\n{stderr}"
    );
    assert_ne!(status.code(), Some(101), "{stderr}");
    let mut r = &stdout[..];
    let mut replies = Vec::new();
    if !stdout.is_empty() {
        proto::expect_hello(&mut r, proto::Role::Receiver).expect("the agent's hello");
        let mut buf = Vec::new();
        while !r.is_empty() {
            let reply = proto::read_reply(&mut r, &mut buf).map_err(|e| e.to_string());
            let bad = reply.is_err();
            replies.push(reply);
            if bad {
                break;
            }
        }
    }
    AgentRun {
        code: status.code().unwrap_or(-1),
        replies,
        stderr,
    }
}

fn hello() -> Vec<u8> {
    let mut v = Vec::new();
    proto::send_hello(&mut v, proto::Role::Driver).unwrap();
    v
}

fn frame(kind: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&kind.to_le_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// A request frame; `encode_request` does not validate, so rule-breaking requests go out as
/// they are.
fn request(req: &proto::Request) -> Vec<u8> {
    frame(
        proto::FrameKind::Request as u32,
        &proto::encode_request(req).unwrap(),
    )
}

/// A request whose `stand_in` name (valid, same length) is replaced by `raw` bytes on the wire.
fn request_with(req: &proto::Request, stand_in: &str, raw: &[u8]) -> Vec<u8> {
    assert_eq!(stand_in.len(), raw.len());
    let mut payload = proto::encode_request(req).unwrap();
    let at = payload
        .windows(stand_in.len())
        .position(|w| w == stand_in.as_bytes())
        .expect("stand-in in the payload");
    payload[at..at + raw.len()].copy_from_slice(raw);
    frame(proto::FrameKind::Request as u32, &payload)
}

fn ds(name: &str) -> proto::DatasetName {
    proto::DatasetName::parse(name).unwrap()
}

fn snap(name: &str) -> proto::SnapshotName {
    proto::SnapshotName::parse(name).unwrap()
}

fn receive(destination: &str, label: &str, guid: u64) -> proto::ReceiveRequest {
    proto::ReceiveRequest {
        root: ds(ROOT),
        destination: ds(destination),
        snapshot: snap(&format!("{destination}@{label}")),
        guid,
        kind: proto::DatasetKind::Filesystem,
        mode: proto::ReceiveMode::Full,
        origin: None,
    }
}

fn error_class(reply: &Result<proto::Reply, String>) -> Option<(proto::ErrorClass, String)> {
    match reply {
        Ok(proto::Reply::Error(e)) => Some((e.class, e.message.clone())),
        Ok(proto::Reply::Receive(proto::ReceiveResult::Err(f))) => {
            Some((f.class, f.message.clone()))
        }
        _ => None,
    }
}

/// Runs `input` and checks: the last reply is a refusal of `class` mentioning `text`, the
/// exit code, and the receiver's pool unchanged.
fn assert_agent_refuses(
    what: &str,
    input: Vec<u8>,
    code: i32,
    class: proto::ErrorClass,
    text: &str,
) {
    let sys = FakeSystem::new("reference-system");
    let before = receiver_state(&sys);
    let run = agent(&sys, input);
    assert_eq!(run.code, code, "{what}: exit code; stderr: {}", run.stderr);
    let last = run
        .replies
        .last()
        .unwrap_or_else(|| panic!("{what}: no reply"));
    let (got, message) = error_class(last).unwrap_or_else(|| panic!("{what}: {last:?}"));
    assert_eq!(got, class, "{what}: {message}");
    assert!(message.contains(text), "{what}: {message}");
    assert_eq!(
        receiver_state(&sys),
        before,
        "{what}: the receiver's pool changed"
    );
}

#[test]
fn the_agent_refuses_requests_outside_the_receiver_root() {
    let outside = receive("backuppool/other", "b1", 1);
    let mut the_root = receive(ROOT, "b1", 1);
    the_root.snapshot = snap(&format!("{ROOT}@b1"));
    let mut sibling = receive(&format!("{ROOT}x/a"), "b1", 1);
    sibling.snapshot = snap(&format!("{ROOT}x/a@b1"));
    let mut origin = receive(&format!("{ROOT}/clone"), "b1", 1);
    origin.mode = proto::ReceiveMode::Incremental {
        from: snap("backuppool/secret@s"),
        from_guid: 2,
    };
    origin.origin = Some(snap("backuppool/secret@s"));
    let mut other_dest_snapshot = receive(&format!("{ROOT}/a"), "b1", 1);
    other_dest_snapshot.snapshot = snap("backuppool/backups@b1");
    let cases = [
        (
            "destination outside",
            proto::Request::Receive(outside),
            "is not strictly under the receiver root",
        ),
        (
            "destination is the root",
            proto::Request::Receive(the_root),
            "is not strictly under the receiver root",
        ),
        (
            "prefix sibling of the root",
            proto::Request::Receive(sibling),
            "is not strictly under the receiver root",
        ),
        (
            "clone origin outside",
            proto::Request::Receive(origin),
            "clone origin backuppool/secret@s is not strictly under the receiver root",
        ),
        (
            "snapshot on another dataset",
            proto::Request::Receive(other_dest_snapshot),
            "is not on the destination",
        ),
        (
            "abort outside",
            proto::Request::Abort(proto::AbortRequest {
                root: ds(ROOT),
                dataset: ds("backuppool/backups"),
            }),
            "is not strictly under the receiver root",
        ),
    ];
    for (what, req, text) in cases {
        // Refused, and the session goes on: the driver may still ask something valid.
        let mut input = hello();
        input.extend(request(&req));
        input.extend(request(&proto::Request::Inventory(
            proto::InventoryRequest { root: ds(ROOT) },
        )));
        let sys = FakeSystem::new("reference-system");
        let before = receiver_state(&sys);
        let run = agent(&sys, input);
        assert_eq!(run.code, 0, "{what}: {}", run.stderr);
        assert_eq!(run.replies.len(), 2, "{what}: {:?}", run.replies);
        let (class, message) = error_class(&run.replies[0]).expect(what);
        assert_eq!(class, proto::ErrorClass::InvalidRequest, "{what}");
        assert!(message.contains(text), "{what}: {message}");
        assert!(
            matches!(run.replies[1], Ok(proto::Reply::Inventory(_))),
            "{what}"
        );
        assert_eq!(receiver_state(&sys), before, "{what}: the pool changed");
        assert!(
            !sys.calls()
                .iter()
                .any(|c| c["argv"][1] == "receive" || c["argv"][1] == "create"),
            "{what}: zfs receive/create ran"
        );
    }
}

#[test]
fn the_agent_refuses_names_with_dotdot_nul_newlines_or_escapes() {
    let stand_in = format!("{ROOT}/xxxxxxxxxxxxxxx");
    for (what, raw, text) in [
        ("dotdot", "../../../../etc", "cannot be '.' or '..'"),
        (
            "nul",
            "aaaaaaa\0bbbbbbb",
            "the character U+0000 is not allowed",
        ),
        (
            "newline",
            "aaaaaaa\nbbbbbbb",
            "the character U+000A is not allowed",
        ),
        (
            "escape",
            "\x1b[2J\x1b]0;owned\x07\r",
            "the character U+001B is not allowed",
        ),
        ("option", "-o\x20mountpoint=x", "cannot start with '-'"),
    ] {
        let raw = format!("{ROOT}/{raw}");
        for req in [
            proto::Request::Receive(receive(&stand_in, "b1", 1)),
            proto::Request::Abort(proto::AbortRequest {
                root: ds(ROOT),
                dataset: ds(&stand_in),
            }),
            proto::Request::Inventory(proto::InventoryRequest {
                root: ds(&stand_in),
            }),
        ] {
            let mut input = hello();
            input.extend(request_with(&req, &stand_in, raw.as_bytes()));
            assert_agent_refuses(what, input, 0, proto::ErrorClass::InvalidRequest, text);
        }
    }
}

#[test]
fn the_agent_refuses_frames_out_of_order() {
    let data = {
        let mut v = Vec::new();
        proto::StreamFramer::new()
            .write_data(&mut v, b"data")
            .unwrap();
        v
    };
    let end = {
        let mut v = Vec::new();
        proto::StreamFramer::new().finish(&mut v).unwrap();
        v
    };
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "data before a request",
            data.clone(),
            "expected a request frame, got a Data frame",
        ),
        (
            "end before a request",
            end.clone(),
            "expected a request frame, got a End frame",
        ),
        (
            "a second hello",
            hello(),
            "expected a request frame, got a Hello frame",
        ),
        (
            "a reply from the caller",
            frame(
                proto::FrameKind::Reply as u32,
                &proto::encode_reply(&proto::Reply::ReceiveReady).unwrap(),
            ),
            "expected a request frame, got a Reply frame",
        ),
    ];
    for (what, frames, text) in cases {
        let mut input = hello();
        input.extend(frames);
        assert_agent_refuses(what, input, 1, proto::ErrorClass::ProtocolViolation, text);
    }

    // Inside a receive: a request frame, a frame out of sequence, an end frame that does not
    // match; none of it reaches zfs receive, which sees an empty stream.
    let dest = format!("{ROOT}/x");
    let mut late = Vec::new();
    let mut framer = proto::StreamFramer::new();
    framer.write_data(&mut late, b"first").unwrap();
    let mut skipped = Vec::new();
    framer.write_data(&mut skipped, b"second").unwrap();
    let cases: [(&str, Vec<u8>, proto::ErrorClass, &str); 4] = [
        (
            "a request inside a stream",
            [
                data.clone(),
                request(&proto::Request::Inventory(proto::InventoryRequest {
                    root: ds(ROOT),
                })),
            ]
            .concat(),
            proto::ErrorClass::ProtocolViolation,
            "unexpected request frame inside a data stream",
        ),
        (
            "a frame out of sequence",
            skipped,
            proto::ErrorClass::StreamCorrupt,
            "data frame out of sequence: expected frame 0, got frame 1",
        ),
        (
            "an end frame that does not match",
            [data.clone(), end.clone()].concat(),
            proto::ErrorClass::StreamCorrupt,
            "end frame says the stream has 0 frames, but 1 frames arrived",
        ),
        (
            "a hello inside a stream",
            [data.clone(), hello()].concat(),
            proto::ErrorClass::ProtocolViolation,
            "unexpected hello frame inside a data stream",
        ),
    ];
    for (what, frames, class, text) in cases {
        let mut input = hello();
        input.extend(request(&proto::Request::Receive(receive(&dest, "b1", 1))));
        input.extend(frames);
        assert_agent_refuses(what, input, 1, class, text);
    }
}

/// The raw `zfs send` stream of a dom0 snapshot, from the fake zfs.
fn stream_of(sys: &FakeSystem, snapshot: &str) -> Vec<u8> {
    let out = sys
        .command(sys.bin.join("zfs"))
        .env("QZB_FAKE_HOST", "dom0")
        .args(["send", snapshot])
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

#[test]
fn the_agent_refuses_frames_after_the_end_of_a_stream() {
    let dest = format!("{ROOT}/junk");
    // An honest session, for the state it leaves.
    let honest = |extra: &[u8]| -> (FakeSystem, AgentRun) {
        let sys = FakeSystem::new("reference-system");
        let g = guid(&sys, "mainpool/shared/junk@b1");
        let stream = stream_of(&sys, "mainpool/shared/junk@b1");
        let mut input = hello();
        input.extend(request(&proto::Request::Receive(receive(&dest, "b1", g))));
        let mut framer = proto::StreamFramer::new();
        for chunk in stream.chunks(100_000) {
            framer.write_data(&mut input, chunk).unwrap();
        }
        framer.finish(&mut input).unwrap();
        input.extend_from_slice(extra);
        let run = agent(&sys, input);
        (sys, run)
    };
    let (base, run) = honest(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        matches!(
            run.replies[..],
            [
                Ok(proto::Reply::ReceiveReady),
                Ok(proto::Reply::Receive(proto::ReceiveResult::Ok { .. }))
            ]
        ),
        "{:?}",
        run.replies
    );
    let expected = receiver_state(&base);

    let end = {
        let mut v = Vec::new();
        proto::StreamFramer::new().finish(&mut v).unwrap();
        v
    };
    let data = {
        let mut v = Vec::new();
        proto::StreamFramer::new()
            .write_data(&mut v, b"more")
            .unwrap();
        v
    };
    for (what, extra, text) in [
        ("end frame twice", end, "got a End frame"),
        ("data after the end", data, "got a Data frame"),
    ] {
        let (sys, run) = honest(&extra);
        assert_eq!(run.code, 1, "{what}: {}", run.stderr);
        assert_eq!(run.replies.len(), 3, "{what}: {:?}", run.replies);
        assert!(
            matches!(
                run.replies[1],
                Ok(proto::Reply::Receive(proto::ReceiveResult::Ok { .. }))
            ),
            "{what}"
        );
        let (class, message) = error_class(&run.replies[2]).expect(what);
        assert_eq!(class, proto::ErrorClass::ProtocolViolation, "{what}");
        assert!(message.contains(text), "{what}: {message}");
        assert_eq!(
            receiver_state(&sys),
            expected,
            "{what}: the pool differs from the honest session's"
        );
    }
}

#[test]
fn the_agent_refuses_oversized_length_fields() {
    // A request header claiming more than 64 KiB: refused before anything is read.
    let mut input = hello();
    input.extend_from_slice(&(proto::FrameKind::Request as u32).to_le_bytes());
    input.extend_from_slice(&(proto::MAX_REQUEST_PAYLOAD as u32 + 1).to_le_bytes());
    assert_agent_refuses(
        "request header",
        input,
        1,
        proto::ErrorClass::ProtocolViolation,
        "Request frame of 65537 bytes is outside the allowed 1..=65536 bytes",
    );
    let mut input = hello();
    input.extend_from_slice(&(proto::FrameKind::Request as u32).to_le_bytes());
    input.extend_from_slice(&u32::MAX.to_le_bytes());
    assert_agent_refuses(
        "request header u32::MAX",
        input,
        1,
        proto::ErrorClass::ProtocolViolation,
        "Request frame of 4294967295 bytes",
    );
    // A name whose length prefix (bincode varint) claims 2^40 bytes.
    let mut payload = vec![0u8, 253];
    payload.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let mut input = hello();
    input.extend(frame(proto::FrameKind::Request as u32, &payload));
    assert_agent_refuses(
        "string length",
        input,
        0,
        proto::ErrorClass::InvalidRequest,
        "cannot decode message",
    );
    // A data frame header claiming 4 GiB inside a stream.
    let mut input = hello();
    input.extend(request(&proto::Request::Receive(receive(
        &format!("{ROOT}/x"),
        "b1",
        1,
    ))));
    input.extend_from_slice(&(proto::FrameKind::Data as u32).to_le_bytes());
    input.extend_from_slice(&u32::MAX.to_le_bytes());
    assert_agent_refuses(
        "data header",
        input,
        1,
        proto::ErrorClass::StreamCorrupt,
        "Data frame of 4294967295 bytes is outside the allowed",
    );
}

#[test]
fn the_agent_refuses_a_wrong_hello() {
    let hello_with = |version: u32, role: proto::Role| {
        frame(
            proto::FrameKind::Hello as u32,
            &proto::Hello { version, role }.to_payload(),
        )
    };
    // Each followed by a request the agent must not answer.
    let request = request(&proto::Request::Inventory(proto::InventoryRequest {
        root: ds(ROOT),
    }));
    let then = |hello: Vec<u8>| [hello, request.clone()].concat();
    for (what, input, text) in [
        (
            "a newer version",
            then(hello_with(proto::PROTOCOL_VERSION + 1, proto::Role::Driver)),
            &*format!(
                "protocol version mismatch: we speak version {}, the peer speaks version {}",
                proto::PROTOCOL_VERSION,
                proto::PROTOCOL_VERSION + 1
            ),
        ),
        (
            "the receiver's role",
            then(hello_with(proto::PROTOCOL_VERSION, proto::Role::Receiver)),
            "peer hello does not come from a Driver",
        ),
        (
            "a shell banner",
            then(b"bash: line 1: something: command not found\n".to_vec()),
            "peer does not speak the qubes-zfs-backup protocol",
        ),
        (
            "nothing",
            Vec::new(),
            "stream ended in the middle of a hello",
        ),
        (
            "half a hello",
            hello()[..10].to_vec(),
            "stream ended in the middle of a hello",
        ),
    ] {
        let sys = FakeSystem::new("reference-system");
        let before = receiver_state(&sys);
        let run = agent(&sys, input);
        assert_eq!(run.code, 1, "{what}: {}", run.stderr);
        assert!(run.stderr.contains(text), "{what}: {}", run.stderr);
        assert!(run.replies.is_empty(), "{what}: answered {:?}", run.replies);
        assert_eq!(receiver_state(&sys), before, "{what}");
        assert!(
            !sys.calls().iter().any(|c| c["host"] == "backups-disp"),
            "{what}: zfs ran before the hello checked out"
        );
    }
}

#[test]
fn the_agent_refuses_every_caller_but_dom0() {
    let sys = FakeSystem::new("reference-system");
    let before = receiver_state(&sys);
    let mut input = hello();
    input.extend(request(&proto::Request::Inventory(
        proto::InventoryRequest { root: ds(ROOT) },
    )));
    let run = agent_as(&sys, "work", input);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("refusing call from 'work'"),
        "{}",
        run.stderr
    );
    assert!(run.replies.is_empty());
    assert_eq!(receiver_state(&sys), before);
}

#[test]
fn the_agent_refuses_a_resume_it_does_not_hold() {
    let resume = |token: &str| {
        let mut r = receive(&format!("{ROOT}/x"), "b1", 1);
        r.mode = proto::ReceiveMode::Resume {
            token: token.into(),
        };
        let mut input = hello();
        input.extend(request(&proto::Request::Receive(r)));
        input
    };
    assert_agent_refuses(
        "a token that is not hex",
        resume("1-zz; zfs destroy -r backuppool"),
        0,
        proto::ErrorClass::InvalidRequest,
        "resume token must be non-empty hex digits and '-'",
    );
    assert_agent_refuses(
        "a token over 16 KiB",
        resume(&"0".repeat(17 << 10)),
        0,
        proto::ErrorClass::InvalidRequest,
        "resume token is 17408 bytes, limit 16384",
    );
    assert_agent_refuses(
        "no partial state to resume",
        resume(&token("mainpool/shared@b1", 1, None)),
        0,
        proto::ErrorClass::ResumeTokenMismatch,
        "has no partial receive state to resume",
    );
}
