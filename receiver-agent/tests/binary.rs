//! The built agent binary: caller check, and a full receive through a fake `zfs` on PATH.

use std::io::{Cursor, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use qzb_protocol::*;

const AGENT: &str = env!("CARGO_BIN_EXE_qubes-zfs-backup-receiver");

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qzb-bin-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn agent(dir: &Path) -> Command {
    let mut cmd = Command::new(AGENT);
    cmd.env_clear()
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", dir.join("bin").display()),
        )
        .env("QUBES_ZFS_BACKUP_RECEIVE_LOCK", dir.join("receive.lock"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn refuses_callers_other_than_dom0() {
    let dir = scratch("caller");
    for caller in [Some("work-vm"), Some(""), None] {
        let mut cmd = agent(&dir);
        if let Some(c) = caller {
            cmd.env("QREXEC_REMOTE_DOMAIN", c);
        }
        let mut hello = Vec::new();
        send_hello(&mut hello, Role::Driver).unwrap();
        let mut child = cmd.spawn().unwrap();
        let _ = child.stdin.take().unwrap().write_all(&hello);
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(3), "{caller:?}");
        assert!(out.stdout.is_empty(), "nothing on the protocol channel");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("only dom0 may call"), "{stderr}");
        if let Some(c) = caller.filter(|c| !c.is_empty()) {
            assert!(stderr.contains(c), "{stderr}");
        }
    }
}

/// A stand-in `zfs` printing real-format output; it records its argv and keeps the received
/// stream in files.
const FAKE_ZFS: &str = r#"#!/bin/sh
state="$FAKE_ZFS_STATE"
printf '%s\n' "$*" >> "$state/log"
key() { printf '%s' "$1" | tr '/@' '__'; }
last() { for a; do :; done; printf '%s' "$a"; }
case "$1" in
list)
  name=$(last "$@")
  if [ -e "$state/ds_$(key "$name")" ]; then printf '%s\n' "$name"; exit 0; fi
  printf "cannot open '%s': dataset does not exist\n" "$name" >&2; exit 1 ;;
get)
  name=$(last "$@")
  if [ -e "$state/snap_$(key "$name")" ]; then cat "$state/snap_$(key "$name")"; exit 0; fi
  printf "cannot open '%s': dataset does not exist\n" "$name" >&2; exit 1 ;;
create)
  touch "$state/ds_$(key "$(last "$@")")" ;;
receive)
  target=$(last "$@")
  cat > "$state/stream"
  # a real stream names its snapshot; this test's stream is for @s1
  printf '4242\n' > "$state/snap_$(key "$target@s1")"
  echo "noise on stderr" >&2 ;;
*) echo "unexpected zfs $*" >&2; exit 2 ;;
esac
"#;

#[test]
fn full_receive_through_the_binary_with_a_fake_zfs() {
    let dir = scratch("fake-zfs");
    let bin = dir.join("bin");
    let state = dir.join("state");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let zfs = bin.join("zfs");
    std::fs::write(&zfs, FAKE_ZFS).unwrap();
    std::fs::set_permissions(&zfs, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(state.join("ds_tank_qzb"), "").unwrap();

    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut wire = Vec::new();
    send_hello(&mut wire, Role::Driver).unwrap();
    let request = Request::Receive(ReceiveRequest {
        root: DatasetName::parse("tank/qzb").unwrap(),
        destination: DatasetName::parse("tank/qzb/host/vm").unwrap(),
        snapshot: SnapshotName::parse("tank/qzb/host/vm@s1").unwrap(),
        guid: 4242,
        kind: DatasetKind::Volume,
        mode: ReceiveMode::Full,
        origin: None,
    });
    write_request(&mut wire, &request).unwrap();
    let mut framer = StreamFramer::new();
    framer.write_data(&mut wire, &data).unwrap();
    framer.finish(&mut wire).unwrap();

    let mut child = agent(&dir)
        .env("QREXEC_REMOTE_DOMAIN", "dom0")
        .env("FAKE_ZFS_STATE", &state)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&wire));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    let mut reader = Cursor::new(out.stdout);
    let mut buf = Vec::new();
    expect_hello(&mut reader, Role::Receiver).unwrap();
    assert_eq!(
        read_reply(&mut reader, &mut buf).unwrap(),
        Reply::ReceiveReady
    );
    assert_eq!(
        read_reply(&mut reader, &mut buf).unwrap(),
        Reply::Receive(ReceiveResult::Ok {
            snapshot: SnapshotName::parse("tank/qzb/host/vm@s1").unwrap(),
            guid: 4242,
            bytes: data.len() as u64,
        })
    );
    assert_eq!(read_frame(&mut reader, &mut buf).unwrap(), None);
    assert_eq!(std::fs::read(state.join("stream")).unwrap(), data);
    let log = std::fs::read_to_string(state.join("log")).unwrap();
    assert!(
        log.contains("create -u -o canmount=off tank/qzb/host\n"),
        "{log}"
    );
    assert!(
        log.contains("receive -s -u -o volmode=none tank/qzb/host/vm\n"),
        "{log}"
    );
    assert!(
        log.contains("get -H -p -o value guid tank/qzb/host/vm@s1\n"),
        "{log}"
    );
}
