//! Black-box tests: the built `qzb-fake` run through symlinks named like the real tools.
//! Expected strings quote the real tools' sources (OpenZFS libzfs_sendrecv.c / zfs_main.c,
//! qubes-core-admin qubes/api/admin.py + qubesd_query.py, qubes-core-qrexec).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

static N: AtomicUsize = AtomicUsize::new(0);

struct Sys {
    dir: PathBuf,
}

impl Sys {
    fn new(fixture: &str) -> Sys {
        let dir = std::env::temp_dir().join(format!(
            "qzb-fake-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let exe = env!("CARGO_BIN_EXE_qzb-fake");
        let fx = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures")
            .join(fixture);
        assert!(Command::new(exe)
            .arg("install-links")
            .arg(dir.join("bin"))
            .status()
            .unwrap()
            .success());
        assert!(Command::new(exe)
            .arg("init")
            .arg(&fx)
            .arg(dir.join("state"))
            .status()
            .unwrap()
            .success());
        Sys { dir }
    }
    fn cmd(&self, host: &str, tool: &str, args: &[&str]) -> Command {
        let mut c = Command::new(self.dir.join("bin").join(tool));
        c.args(args)
            .env("QZB_FAKE_ROOT", self.dir.join("state"))
            .env("QZB_FAKE_HOST", host)
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    self.dir.join("bin").display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            );
        for k in [
            "QZB_FAKE_SEND_DIE_AFTER",
            "QZB_FAKE_SEND_FAIL",
            "QZB_FAKE_RECV_DIE_AFTER",
            "QZB_FAKE_FAULT_ONCE",
        ] {
            c.env_remove(k);
        }
        c
    }
    fn run(&self, tool: &str, args: &[&str]) -> Output {
        self.cmd("dom0", tool, args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
    fn zfs(&self, host: &str, args: &[&str]) -> Output {
        self.cmd(host, "zfs", args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
    /// `zfs send <send> | QZB_FAKE_HOST=backups-disp zfs receive <recv>`
    fn pipe(&self, send: &[&str], send_env: &[(&str, &str)], recv: &[&str]) -> (Output, Output) {
        let mut s = self.cmd("dom0", "zfs", send);
        s.envs(send_env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut sc = s.spawn().unwrap();
        let out = sc.stdout.take().unwrap();
        let r = self
            .cmd("backups-disp", "zfs", recv)
            .stdin(out)
            .output()
            .unwrap();
        (sc.wait_with_output().unwrap(), r)
    }
}

impl Drop for Sys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
const R: &str = "backuppool/backups/mydesktop";

#[test]
fn list_scripted_parsable_tab_separated_with_dash_for_none() {
    let s = Sys::new("reference-system");
    let argv: Vec<&str> = "list -H -p -t all -o name,type,origin,createtxg -r mainpool/qubes/work"
        .split(' ')
        .collect();
    let o = s.zfs("dom0", &argv);
    assert!(o.status.success());
    assert_eq!(
        out(&o),
        "mainpool/qubes/work\tfilesystem\t-\t10\n\
         mainpool/qubes/work@b1\tsnapshot\t-\t201\n\
         mainpool/qubes/work/private\tvolume\t-\t11\n\
         mainpool/qubes/work/private@s1\tsnapshot\t-\t100\n\
         mainpool/qubes/work/private@b1\tsnapshot\t-\t202\n\
         mainpool/qubes/work/private@qubes:stop:1700000000.000000\tsnapshot\t-\t260\n\
         mainpool/qubes/work/root\tvolume\tmainpool/qubes/fedora-41/root@qubes-clean-aaaa\t291\n\
         mainpool/qubes/work/volatile\tvolume\t-\t290\n"
    );
    // real: "cannot open '%s': dataset does not exist", exit 1
    let o = s.zfs("dom0", &["list", "-H", "-o", "name", "mainpool/nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        err(&o),
        "cannot open 'mainpool/nope': dataset does not exist\n"
    );
    // backup.py's existence probe: `zfs list <ds@label>` (human table, status only)
    let o = s.zfs("dom0", &["list", "mainpool/dom0@b1"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(out(&o), "NAME              USED  AVAIL  REFER  MOUNTPOINT\nmainpool/dom0@b1    0B      -   300K  -\n");
    assert_eq!(
        s.zfs("dom0", &["list", "mainpool/dom0@zz"]).status.code(),
        Some(1)
    );
}

#[test]
fn backup_py_queries_match_reference_inventory() {
    let s = Sys::new("reference-system");
    let o = s.zfs(
        "dom0",
        &[
            "list",
            "-H",
            "-t",
            "snapshot",
            "-o",
            "createtxg,name",
            "-s",
            "createtxg",
            "-s",
            "name",
        ],
    );
    let expected = "50\tmainpool/qubes/fedora-41/root@qubes-clean-aaaa\n100\tmainpool/qubes/work/private@s1\n150\tauxpool/qubes/games/private@g0\n201\tmainpool/qubes/work@b1\n202\tmainpool/qubes/work/private@b1\n203\tmainpool/dom0@b1\n204\tmainpool/dom0/var@b1\n205\tmainpool/qubes/vault/private@b1\n206\tmainpool/qubes/vault@b1\n207\tmainpool/shared@b1\n208\tmainpool/shared/apps@b1\n209\tmainpool/shared/junk@b1\n250\tmainpool/qubes/work-clone/private@c1\n260\tmainpool/qubes/work/private@qubes:stop:1700000000.000000\n300\tmainpool/dom0@b2\n";
    assert_eq!(out(&o), expected);
    let o = s.zfs("dom0", &["list", "-H", "-o", "name,origin"]);
    assert!(out(&o).contains("mainpool/qubes/dev/private\tmainpool/qubes/work-clone/private@c1\n"));
    assert_eq!(out(&o).lines().count(), 38);
    let o = s.zfs(
        "dom0",
        &[
            "list",
            "-H",
            "-t",
            "filesystem,volume",
            "-o",
            "name",
            "-r",
            "mainpool/shared",
        ],
    );
    assert_eq!(
        out(&o),
        "mainpool/shared\nmainpool/shared/apps\nmainpool/shared/junk\n"
    );
    let o = s.zfs("backups-disp", &["list", "-H", "-p", "-o", "name,avail", R]);
    assert_eq!(out(&o), format!("{R}\t5000000000000\n"));
}

#[test]
fn get_scripted_with_sources() {
    let s = Sys::new("reference-system");
    let o = s.zfs(
        "dom0",
        &[
            "get",
            "-H",
            "-p",
            "-o",
            "name,property,value,source",
            "receive_resume_token,volmode,guid",
            "mainpool/qubes/work/private",
        ],
    );
    let t = out(&o);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(
        lines[0],
        "mainpool/qubes/work/private\treceive_resume_token\t-\t-"
    );
    assert_eq!(
        lines[1],
        "mainpool/qubes/work/private\tvolmode\tdev\tinherited from mainpool/qubes"
    );
    assert!(
        lines[2].starts_with("mainpool/qubes/work/private\tguid\t") && lines[2].ends_with("\t-")
    );
    let o = s.zfs(
        "dom0",
        &[
            "get",
            "-H",
            "-o",
            "value",
            "mountpoint",
            "mainpool/dom0/var",
        ],
    );
    assert_eq!(out(&o), "/var\n");
}

#[test]
fn snapshot_is_atomic_and_assigns_one_new_txg() {
    let s = Sys::new("reference-system");
    // one name already exists: nothing is created (lzc_snapshot is all-or-nothing)
    let o = s.zfs(
        "dom0",
        &["snapshot", "mainpool/shared@new", "mainpool/dom0@b2"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        err(&o),
        "cannot create snapshot 'mainpool/dom0@b2': dataset already exists\n"
    );
    assert_eq!(
        s.zfs("dom0", &["list", "-H", "-o", "name", "mainpool/shared@new"])
            .status
            .code(),
        Some(1)
    );
    let o = s.zfs(
        "dom0",
        &["snapshot", "mainpool/shared@new", "mainpool/dom0@new"],
    );
    assert!(o.status.success(), "{}", err(&o));
    let o = s.zfs(
        "dom0",
        &[
            "list",
            "-H",
            "-p",
            "-o",
            "createtxg",
            "mainpool/shared@new",
            "mainpool/dom0@new",
        ],
    );
    assert_eq!(out(&o), "301\n301\n");
    let o = s.zfs("dom0", &["snapshot", "nopool/x@y"]);
    assert_eq!(
        err(&o),
        "cannot create snapshot 'nopool/x@y': dataset does not exist\n"
    );
}

#[test]
fn snapshot_user_properties_set_at_creation_are_local_and_get_filters_by_source() {
    let s = Sys::new("reference-system");
    let o = s.zfs(
        "dom0",
        &[
            "snapshot",
            "-o",
            "qubes-zfs-backup:created=daily",
            "mainpool/shared@r1",
            "mainpool/dom0@r1",
        ],
    );
    assert!(o.status.success(), "{}", err(&o));
    let o = s.zfs(
        "dom0",
        &[
            "get",
            "-H",
            "-o",
            "name,value,source",
            "qubes-zfs-backup:created",
            "mainpool/shared@r1",
            "mainpool/shared@b1",
        ],
    );
    // In zfs' order (dataset, then createtxg), not the operands'.
    assert_eq!(
        out(&o),
        "mainpool/shared@b1\t-\t-\nmainpool/shared@r1\tdaily\tlocal\n"
    );
    // `-s local` with no operand: every snapshot whose own value is set, nothing else.
    let o = s.zfs(
        "dom0",
        &[
            "get",
            "-H",
            "-p",
            "-t",
            "snapshot",
            "-s",
            "local",
            "-o",
            "name,value",
            "qubes-zfs-backup:created",
        ],
    );
    assert_eq!(
        out(&o),
        "mainpool/dom0@r1\tdaily\nmainpool/shared@r1\tdaily\n"
    );
    let o = s.zfs(
        "dom0",
        &[
            "list",
            "-H",
            "-o",
            "name,qubes-zfs-backup:created",
            "-t",
            "snapshot",
            "mainpool/shared",
        ],
    );
    assert_eq!(
        out(&o),
        "mainpool/shared@b1\t-\nmainpool/shared@r1\tdaily\n"
    );
}

#[test]
fn send_dry_run_parsable_formats() {
    let s = Sys::new("reference-system");
    // send_print_verbose: "full\t%s" / "incremental\t%s\t%s" then "\t%llu", then "size\t%llu"
    let o = s.zfs("dom0", &["send", "-n", "-v", "-P", "mainpool/dom0@b1"]);
    assert_eq!(out(&o), "full\tmainpool/dom0@b1\t307200\nsize\t307200\n");
    let o = s.zfs("dom0", &["send", "-nvP", "-i", "@b1", "mainpool/dom0@b2"]);
    assert_eq!(
        out(&o),
        "incremental\tmainpool/dom0@b1\tmainpool/dom0@b2\t76800\nsize\t76800\n"
    );
    // -I: dump_snapshot prints the short previous snapshot name. Volumes send real records:
    // each line is its sub-stream's bytes, `size` the exact bytes of the whole stream (here
    // with the compound wrapper of -I: BEGIN, END, final END).
    let stop = "mainpool/qubes/work/private@qubes:stop:1700000000.000000";
    let o = s.zfs("dom0", &["send", "-nvP", "-I", "@s1", stop]);
    let lines: Vec<Vec<String>> = out(&o)
        .lines()
        .map(|l| l.split('\t').map(String::from).collect())
        .collect();
    assert_eq!(lines.len(), 3, "{}", out(&o));
    assert_eq!(
        lines[0][..3],
        ["incremental", "s1", "mainpool/qubes/work/private@b1"]
    );
    assert_eq!(lines[1][..3], ["incremental", "b1", stop]);
    assert_eq!(lines[2][0], "size");
    let n = |l: &[String]| l.last().unwrap().parse::<u64>().unwrap();
    assert_eq!(n(&lines[0]) + n(&lines[1]) + 3 * 312, n(&lines[2]));
    assert_eq!(
        send_bytes(&s, &["-I", "@s1", stop]).len() as u64,
        n(&lines[2])
    );
    // clone from its origin
    let (from, clone) = (
        "mainpool/qubes/work/private@s1",
        "mainpool/qubes/work-clone/private@c1",
    );
    let o = s.zfs("dom0", &["send", "-nvP", "-i", from, clone]);
    let size = send_bytes(&s, &["-i", from, clone]).len();
    assert_eq!(
        out(&o),
        format!("incremental\t{from}\t{clone}\t{size}\nsize\t{size}\n")
    );
}

/// The bytes of `zfs send <args>` on dom0.
fn send_bytes(s: &Sys, args: &[&str]) -> Vec<u8> {
    let mut a = vec!["send"];
    a.extend_from_slice(args);
    let o = s.zfs("dom0", &a);
    assert!(o.status.success(), "{}", err(&o));
    o.stdout
}

#[test]
fn full_send_receive_keeps_source_guid() {
    let s = Sys::new("reference-system");
    let (so, ro) = s.pipe(
        &["send", "-L", "-e", "-c", "mainpool/dom0@b1"],
        &[],
        &[
            "receive",
            "-s",
            "-u",
            "-o",
            "mountpoint=none",
            &format!("{R}/dom0"),
        ],
    );
    assert!(
        so.status.success() && ro.status.success(),
        "{} {}",
        err(&so),
        err(&ro)
    );
    let src = out(&s.zfs(
        "dom0",
        &["list", "-H", "-p", "-o", "guid", "mainpool/dom0@b1"],
    ));
    let dst = out(&s.zfs(
        "backups-disp",
        &["list", "-H", "-p", "-o", "guid", &format!("{R}/dom0@b1")],
    ));
    assert_eq!(src, dst);
    let mp = out(&s.zfs(
        "backups-disp",
        &[
            "get",
            "-H",
            "-o",
            "value,source",
            "mountpoint",
            &format!("{R}/dom0"),
        ],
    ));
    assert_eq!(mp, "none\tlocal\n");
    // full stream into an existing dataset
    let (_, ro) = s.pipe(
        &["send", "mainpool/dom0@b2"],
        &[],
        &["receive", "-s", &format!("{R}/dom0")],
    );
    assert_eq!(ro.status.code(), Some(1));
    assert_eq!(
        err(&ro),
        format!("cannot receive new filesystem stream: destination '{R}/dom0' exists\nmust specify -F to overwrite it\n")
    );
    let (_, ro) = s.pipe(
        &["send", "mainpool/dom0@b2"],
        &[],
        &["receive", "-s", "-F", &format!("{R}/dom0")],
    );
    assert_eq!(
        err(&ro),
        format!("cannot receive new filesystem stream: destination has snapshots (eg. {R}/dom0@b1)\nmust destroy them to overwrite it\n")
    );
    // incremental onto it works; -I package too
    let (_, ro) = s.pipe(
        &["send", "-i", "@b1", "mainpool/dom0@b2"],
        &[],
        &["receive", "-s", &format!("{R}/dom0")],
    );
    assert!(ro.status.success(), "{}", err(&ro));
}

#[test]
fn incremental_with_missing_base_and_clone_origin_rules() {
    let s = Sys::new("reference-system");
    let (_, ro) = s.pipe(
        &["send", "mainpool/qubes/work/private@s1"],
        &[],
        &["receive", "-s", &format!("{R}/wp")],
    );
    assert!(ro.status.success());
    // base of this incremental (b1) is not on the destination
    let (_, ro) = s.pipe(
        &[
            "send",
            "-i",
            "@b1",
            "mainpool/qubes/work/private@qubes:stop:1700000000.000000",
        ],
        &[],
        &["receive", "-s", &format!("{R}/wp")],
    );
    assert_eq!(
        err(&ro),
        format!("cannot receive incremental stream: most recent snapshot of {R}/wp does not\nmatch incremental source\n")
    );
    // -I brings the intermediates
    let (_, ro) = s.pipe(
        &[
            "send",
            "-I",
            "@s1",
            "mainpool/qubes/work/private@qubes:stop:1700000000.000000",
        ],
        &[],
        &["receive", "-s", &format!("{R}/wp")],
    );
    assert!(ro.status.success(), "{}", err(&ro));
    let o = s.zfs(
        "backups-disp",
        &[
            "list",
            "-H",
            "-o",
            "name",
            "-t",
            "snapshot",
            &format!("{R}/wp"),
        ],
    );
    assert_eq!(out(&o).lines().count(), 3);
    // a clone stream finds its origin by guid, or takes -o origin=
    let (_, ro) = s.pipe(
        &[
            "send",
            "-i",
            "mainpool/qubes/work/private@s1",
            "mainpool/qubes/work-clone/private@c1",
        ],
        &[],
        &["receive", "-s", &format!("{R}/wc")],
    );
    assert!(ro.status.success(), "{}", err(&ro));
    let o = s.zfs(
        "backups-disp",
        &["list", "-H", "-o", "origin", &format!("{R}/wc")],
    );
    assert_eq!(out(&o), format!("{R}/wp@s1\n"));
}

#[test]
fn truncated_stream_leaves_token_then_resume_completes() {
    let s = Sys::new("reference-system");
    let d = format!("{R}/dom0");
    let (so, ro) = s.pipe(
        &["send", "mainpool/dom0@b1"],
        &[("QZB_FAKE_SEND_DIE_AFTER", "100000")],
        &["receive", "-s", &d],
    );
    assert_eq!(so.status.code(), Some(1));
    assert_eq!(
        err(&so),
        "warning: cannot send 'mainpool/dom0@b1': Input/output error\n"
    );
    assert_eq!(ro.status.code(), Some(1));
    let tok = out(&s.zfs(
        "backups-disp",
        &["get", "-H", "-o", "value", "receive_resume_token", &d],
    ))
    .trim()
    .to_string();
    assert!(
        tok.starts_with("1-") && tok.split('-').nth(3).unwrap().starts_with("789c"),
        "{tok}"
    );
    assert_eq!(
        err(&ro),
        format!("cannot receive new filesystem stream: checksum mismatch or incomplete stream.\nPartially received snapshot is saved.\nA resuming stream can be generated on the sending system by running:\n    zfs send -t {tok}\n")
    );
    // a second plain receive into partial state
    let (_, ro) = s.pipe(
        &["send", "mainpool/dom0@b1"],
        &[],
        &["receive", "-s", "-F", &d],
    );
    assert_eq!(
        err(&ro),
        format!("cannot receive new filesystem stream: destination {d} contains partially-complete state from \"zfs receive -s\".\n")
    );
    // resume dry run: nvlist then the remaining size
    let o = s.zfs("dom0", &["send", "-nvP", "-t", &tok]);
    let t = out(&o);
    assert!(
        t.starts_with("resume token contents:\nnvlist version: 0\n\tobject = 0x1\n\toffset = 0x"),
        "{t}"
    );
    assert!(t.contains("\ttoname = mainpool/dom0@b1\n"));
    let rest = t
        .lines()
        .next_back()
        .unwrap()
        .strip_prefix("size\t")
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert!(rest > 200_000 && rest < 307_200, "{rest}");
    assert!(t.contains(&format!("full\tmainpool/dom0@b1\t{rest}\n")));
    // resume stream that does not match the partial state (ZFS 2.1's misleading message)
    let (_, ro) = s.pipe(&["send", "-t", &tok], &[], &["receive", "-s", R]);
    assert_eq!(ro.status.code(), Some(1));
    let (_, ro) = s.pipe(&["send", "-t", &tok], &[], &["receive", "-s", &d]);
    assert!(ro.status.success(), "{}", err(&ro));
    let o = s.zfs(
        "backups-disp",
        &[
            "list",
            "-H",
            "-o",
            "name,receive_resume_token",
            "-t",
            "all",
            "-r",
            &d,
        ],
    );
    assert_eq!(out(&o), format!("{d}\t-\n{d}@b1\t-\n"));
    let src = out(&s.zfs(
        "dom0",
        &["get", "-H", "-p", "-o", "value", "guid", "mainpool/dom0@b1"],
    ));
    let dst = out(&s.zfs(
        "backups-disp",
        &["get", "-H", "-p", "-o", "value", "guid", &format!("{d}@b1")],
    ));
    assert_eq!(src, dst);
}

#[test]
fn stale_resume_token_and_abort() {
    let s = Sys::new("reference-system");
    let d = format!("{R}/dom0");
    assert!(s
        .pipe(&["send", "mainpool/dom0@b1"], &[], &["receive", "-s", &d])
        .1
        .status
        .success());
    let (_, ro) = s.pipe(
        &["send", "-i", "@b1", "mainpool/dom0@b2"],
        &[("QZB_FAKE_SEND_DIE_AFTER", "5000")],
        &["receive", "-s", &d],
    );
    assert!(err(&ro).starts_with(
        "cannot receive incremental stream: checksum mismatch or incomplete stream.\n"
    ));
    let tok1 = out(&s.zfs(
        "backups-disp",
        &["get", "-H", "-o", "value", "receive_resume_token", &d],
    ))
    .trim()
    .to_string();
    // discard and make a different partial; the old token no longer matches
    assert!(s
        .zfs("backups-disp", &["receive", "-A", &d])
        .status
        .success());
    let o = s.zfs("backups-disp", &["receive", "-A", &d]);
    assert_eq!(
        err(&o),
        format!("'{d}' does not have any resumable receive state to abort\n")
    );
    let (_, ro) = s.pipe(
        &["send", "-i", "@b1", "mainpool/dom0@b2"],
        &[("QZB_FAKE_SEND_DIE_AFTER", "9000")],
        &["receive", "-s", &d],
    );
    assert_eq!(ro.status.code(), Some(1));
    let (_, ro) = s.pipe(&["send", "-t", &tok1], &[], &["receive", "-s", &d]);
    assert_eq!(
        err(&ro),
        "cannot receive resume stream: kernel modules must be upgraded to receive this stream.\n"
    );
    // an aborted partial full receive removes the dataset
    let n = format!("{R}/shared");
    let _ = s.pipe(
        &["send", "mainpool/shared@b1"],
        &[("QZB_FAKE_SEND_DIE_AFTER", "3000")],
        &["receive", "-s", &n],
    );
    assert_eq!(
        s.zfs("backups-disp", &["list", "-H", "-o", "name", &n])
            .status
            .code(),
        Some(0)
    );
    assert!(s
        .zfs("backups-disp", &["receive", "-A", &n])
        .status
        .success());
    assert_eq!(
        s.zfs("backups-disp", &["list", "-H", "-o", "name", &n])
            .status
            .code(),
        Some(1)
    );
}

#[test]
fn corrupted_stream_is_detected() {
    let s = Sys::new("reference-system");
    let mut send = s
        .cmd("dom0", "zfs", &["send", "mainpool/dom0@b1"])
        .output()
        .unwrap()
        .stdout;
    let n = send.len();
    send[n / 2] ^= 0xff;
    let mut r = s
        .cmd("backups-disp", "zfs", &["receive", &format!("{R}/x")])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = r.stdin.take().unwrap().write_all(&send); // the receiver may stop reading early
    let o = r.wait_with_output().unwrap();
    assert_eq!(
        err(&o),
        "cannot receive new filesystem stream: checksum mismatch or incomplete stream\n"
    );
    let o = s
        .cmd("backups-disp", "zfs", &["receive", &format!("{R}/x")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(err(&o), "cannot receive: failed to read from stream\n");
}

#[test]
fn qubesd_query_replies() {
    let s = Sys::new("reference-system");
    let o = s.run("qubesd-query", &["-e", "dom0", "admin.vm.List", "dom0"]);
    let t = out(&o);
    assert!(t.starts_with("0\0backups-disp class=DispVM state=Running\ndev class=AppVM state=Halted\ndisp1234 class=DispVM state=Running\ndom0 class=AdminVM state=Running\n"), "{t:?}");
    let o = s.run("qubesd-query", &["-e", "dom0", "admin.pool.List", "dom0"]);
    assert_eq!(out(&o), "0\0linux-kernel\nvarlibqubes\nzfs-aux\nzfs-main\n");
    let o = s.run(
        "qubesd-query",
        &["-e", "dom0", "admin.pool.Info", "dom0", "zfs-aux"],
    );
    assert_eq!(out(&o), "0\0container=auxpool/qubes\ndriver=zfs\nephemeral_volatile=False\nname=zfs-aux\nrevisions_to_keep=1\nsnap_on_start_forensics=False\nsize=1000204886016\nusage=214748364800\n");
    let o = s.run(
        "qubesd-query",
        &["-e", "dom0", "admin.vm.volume.List", "games"],
    );
    assert_eq!(out(&o), "0\0root\nprivate\nvolatile\nkernel\n");
    let o = s.run(
        "qubesd-query",
        &["-e", "dom0", "admin.vm.volume.Info", "games", "private"],
    );
    assert_eq!(out(&o), "0\0pool=zfs-aux\nvid=auxpool/qubes/games/private\nsize=53687091200\nusage=7669584457\nrw=True\nsource=\npath=/dev/zvol/auxpool/qubes/games/private\nsave_on_stop=True\nsnap_on_start=False\nrevisions_to_keep=1\nephemeral=False\nis_outdated=False\n");
    // send_exception: b'2\x00' + type + b'\x00' + traceback(empty) + b'\x00' + message + b'\x00'
    let o = s.run(
        "qubesd-query",
        &["-e", "dom0", "admin.vm.volume.List", "nope"],
    );
    assert_eq!(
        out(&o),
        "2\0QubesVMNotFoundError\0\0No such domain: 'nope'\0"
    );
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        s.run(
            "qubesd-query",
            &["--fail", "-e", "dom0", "admin.vm.volume.List", "nope"]
        )
        .status
        .code(),
        Some(2)
    );
    assert_eq!(
        s.run("qubesd-query", &["-e", "dom0", "admin.vm.Kill", "work"])
            .status
            .code(),
        Some(2)
    );
}

impl Sys {
    /// `qubesd-query dom0 <method> <dest> [<arg>]` with `payload` on stdin (no `-e`).
    fn qq(&self, method: &str, dest: &str, arg: &str, payload: &[u8]) -> String {
        let mut a = vec!["dom0", method, dest];
        if !arg.is_empty() {
            a.push(arg);
        }
        let mut c = self
            .cmd("dom0", "qubesd-query", &a)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = c.stdin.take().unwrap().write_all(payload);
        let o = c.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{method}: {}", err(&o));
        out(&o)
    }
}

const OK: &str = "0\0";
const REFUSED: &str = "2\0PermissionDenied\0\0\0";

#[test]
fn qubesd_query_create_and_remove() {
    let s = Sys::new("reference-system");
    let create = |class: &str, tmpl: &str, payload: &str| {
        s.qq(
            &format!("admin.vm.Create.{class}"),
            "dom0",
            tmpl,
            payload.as_bytes(),
        )
    };
    assert_eq!(create("AppVM", "fedora-41", "name=restored label=red"), OK);
    assert_eq!(create("TemplateVM", "", "name=tpl2 label=black"), OK);
    assert_eq!(
        create("StandaloneVM", "", "name=standalone1 label=blue"),
        OK
    );
    let list = s.qq("admin.vm.List", "dom0", "", b"");
    assert!(
        list.contains("\nrestored class=AppVM state=Halted\n"),
        "{list:?}"
    );
    assert!(list.contains("\ntpl2 class=TemplateVM state=Halted\n"));
    assert!(list.contains("\nstandalone1 class=StandaloneVM state=Halted\n"));
    assert_eq!(
        s.qq("admin.vm.property.GetAll", "restored", "", b""),
        "0\0klass default=True type=str AppVM\nlabel default=False type=label red\n\
         template default=False type=vm fedora-41\n"
    );
    assert_eq!(
        s.qq("admin.vm.property.GetAll", "tpl2", "", b""),
        "0\0klass default=True type=str TemplateVM\nlabel default=False type=label black\n"
    );
    // qubesd tags what it creates with its caller
    assert_eq!(
        s.qq("admin.vm.tag.List", "restored", "", b""),
        "0\0created-by-dom0\n"
    );
    // errors, in admin.py's order: template, then payload, then the name
    assert_eq!(
        create("AppVM", "fedora-41", "name=restored label=red"),
        "2\0QubesValueError\0\0VM restored already exists\0"
    );
    assert_eq!(
        create("AppVM", "nope", "name=x label=red"),
        "2\0QubesVMNotFoundError\0\0No such domain: 'nope'\0"
    );
    assert_eq!(
        create("TemplateVM", "fedora-41", "name=x label=red"),
        "2\0QubesValueError\0\0TemplateVM cannot be based on template\0"
    );
    assert_eq!(
        create("AppVM", "work", "name=x label=red"),
        "2\0QubesPropertyValueError\0\0wrong VM class: domains['work'] is of type AppVM and not TemplateVM\0"
    );
    assert_eq!(
        create("AppVM", "", "name=9lives label=red"),
        "2\0QubesValueError\0\0VM name contains illegal characters\0"
    );
    assert_eq!(
        create("AppVM", "", "name=x label=mauve"),
        "2\0QubesLabelNotFoundError\0\0Label does not exist: mauve\0"
    );
    for bad in [
        "name=x",
        "label=red",
        "name=x label=red pool=zfs-main",
        "name=x name=y label=red",
        "name=x  label=red",
        "",
    ] {
        assert_eq!(create("AppVM", "", bad), REFUSED, "{bad:?}");
    }
    assert_eq!(
        s.qq("admin.vm.Create.AppVM", "work", "", b"name=x label=red"),
        REFUSED
    );
    // an unknown class is no method of qubesd
    let o = s.run(
        "qubesd-query",
        &["-e", "dom0", "admin.vm.Create.FooVM", "dom0"],
    );
    assert_eq!(o.status.code(), Some(2));
    // nothing failed was written
    assert!(!s.qq("admin.vm.List", "dom0", "", b"").contains("\nx class"));

    // Remove: dom0, running, in use (template), then removed
    let remove = |vm: &str| s.qq("admin.vm.Remove", vm, "", b"");
    assert_eq!(
        remove("dom0"),
        "2\0QubesVMInUseError\0\0'dom0' cannot be removed\0"
    );
    assert_eq!(
        remove("work"),
        "2\0QubesVMNotHaltedError\0\0Domain is not powered off: 'work'\0"
    );
    assert_eq!(
        remove("fedora-41"),
        "2\0QubesVMInUseError\0\0Domain is in use: 'fedora-41';see 'journalctl -u qubesd -e' in dom0 for details\0"
    );
    assert_eq!(
        remove("nope"),
        "2\0QubesVMNotFoundError\0\0No such domain: 'nope'\0"
    );
    assert_eq!(s.qq("admin.vm.Remove", "restored", "x", b""), REFUSED);
    assert_eq!(remove("restored"), OK);
    assert!(!s.qq("admin.vm.List", "dom0", "", b"").contains("restored"));
    assert_eq!(
        s.qq("admin.vm.property.GetAll", "restored", "", b""),
        "2\0QubesVMNotFoundError\0\0No such domain: 'restored'\0"
    );
    // the name can be used again
    assert_eq!(
        create("AppVM", "fedora-41", "name=restored label=green"),
        OK
    );
}

#[test]
fn qubesd_query_properties_features_tags_firewall_devices_round_trip() {
    let s = Sys::new("reference-system");
    let set = |prop: &str, v: &str| s.qq("admin.vm.property.Set", "vault", prop, v.as_bytes());
    assert_eq!(set("label", "purple"), OK);
    assert_eq!(set("memory", "800"), OK);
    assert_eq!(set("netvm", ""), OK);
    assert_eq!(set("default_dispvm", "disp1234"), OK);
    assert_eq!(set("description", "two\nlines"), OK);
    assert_eq!(
        s.qq("admin.vm.property.GetAll", "vault", "", b""),
        "0\0default_dispvm default=False type=vm disp1234\n\
         description default=False type=str two\\nlines\n\
         klass default=True type=str AppVM\n\
         label default=False type=label purple\n\
         memory default=False type=int 800\n\
         netvm default=False type=vm \n\
         template default=False type=vm fedora-41\n"
    );
    assert_eq!(
        s.qq("admin.vm.property.Get", "vault", "memory", b""),
        "0\0default=False type=int 800"
    );
    assert_eq!(s.qq("admin.vm.property.Reset", "vault", "memory", b""), OK);
    assert_eq!(s.qq("admin.vm.property.Reset", "vault", "netvm", b""), OK);
    assert_eq!(
        s.qq("admin.vm.property.Reset", "vault", "nothing-set", b""),
        OK
    );
    let all = s.qq("admin.vm.property.GetAll", "vault", "", b"");
    assert!(!all.contains("memory") && !all.contains("netvm"), "{all:?}");
    // refusals
    assert_eq!(
        set("klass", "TemplateVM"),
        "2\0QubesNoSuchPropertyError\0\0Invalid property 'klass' of vault\0"
    );
    for ro in ["name", "qid", "uuid"] {
        assert_eq!(set(ro, "x"), REFUSED, "{ro}");
        assert_eq!(s.qq("admin.vm.property.Reset", "vault", ro, b""), REFUSED);
    }
    assert_eq!(
        set("template", "nope"),
        "2\0QubesPropertyValueError\0\0Can't set template to non-existing qube nope\0"
    );
    assert_eq!(
        set("vcpus", "many"),
        "2\0QubesValueError\0\0Failed to parse property value as int\0"
    );
    assert_eq!(
        set("label", "mauve"),
        "2\0QubesLabelNotFoundError\0\0Label does not exist: mauve\0"
    );
    assert_eq!(
        set("description", "caf\u{e9}"),
        "2\0QubesValueError\0\0Non-ASCII bytes in property value\0"
    );
    assert_eq!(
        s.qq("admin.vm.property.Set", "nope", "label", b"red"),
        "2\0QubesVMNotFoundError\0\0No such domain: 'nope'\0"
    );
    assert_eq!(
        s.qq("admin.vm.property.Reset", "vault", "label", b"x"),
        REFUSED
    );
    assert!(s
        .qq("admin.vm.property.GetAll", "vault", "", b"")
        .contains("label default=False type=label purple\n"));

    // features
    assert_eq!(
        s.qq("admin.vm.feature.Set", "vault", "service.crond", b"1"),
        OK
    );
    assert_eq!(s.qq("admin.vm.feature.Set", "vault", "os", b"Linux"), OK);
    assert_eq!(s.qq("admin.vm.feature.Set", "vault", "empty", b""), OK);
    assert_eq!(
        s.qq("admin.vm.feature.List", "vault", "", b""),
        "0\0empty\nos\nservice.crond\n"
    );
    assert_eq!(s.qq("admin.vm.feature.Get", "vault", "os", b""), "0\0Linux");
    assert_eq!(s.qq("admin.vm.feature.Set", "vault", "os", b"Linux2"), OK);
    assert_eq!(
        s.qq("admin.vm.feature.Get", "vault", "os", b""),
        "0\0Linux2"
    );
    assert_eq!(
        s.qq("admin.vm.feature.Set", "vault", "x", "\u{e9}".as_bytes()),
        REFUSED
    );

    // tags: a set, listed sorted
    for t in ["zz-last", "audit", "audit"] {
        assert_eq!(s.qq("admin.vm.tag.Set", "vault", t, b""), OK);
    }
    assert_eq!(
        s.qq("admin.vm.tag.List", "vault", "", b""),
        "0\0audit\nzz-last\n"
    );
    assert_eq!(s.qq("admin.vm.tag.Set", "vault", "bad.tag", b""), REFUSED);
    assert_eq!(s.qq("admin.vm.tag.Set", "vault", "t", b"payload"), REFUSED);

    // firewall: the rules as sent, one per line
    let rules = "action=accept dsthost=example.com proto=tcp dstports=443-443\n\
                 action=accept specialtarget=dns\n\
                 action=drop comment=the rest, with spaces\n";
    assert_eq!(
        s.qq("admin.vm.firewall.Set", "vault", "", rules.as_bytes()),
        OK
    );
    assert_eq!(
        s.qq("admin.vm.firewall.Get", "vault", "", b""),
        format!("0\0{rules}")
    );
    for bad in [
        "proto=tcp\n",
        "action=maybe\n",
        "action=accept action=drop\n",
        "action=accept frob=1\n",
        "\n",
    ] {
        assert_eq!(
            s.qq("admin.vm.firewall.Set", "vault", "", bad.as_bytes()),
            REFUSED,
            "{bad:?}"
        );
    }
    assert_eq!(
        s.qq("admin.vm.firewall.Set", "dom0", "", b"action=accept\n"),
        REFUSED
    );
    assert_eq!(
        s.qq("admin.vm.firewall.Get", "vault", "", b""),
        format!("0\0{rules}")
    );
    assert_eq!(s.qq("admin.vm.firewall.Set", "vault", "", b""), OK);
    assert_eq!(s.qq("admin.vm.firewall.Get", "vault", "", b""), OK);

    // devices: `<backend>+<port>:<devid> <options>`, sorted, once each
    let pci = "sys-usb+00_14.0:8086_a36d";
    let opts = "device_id='8086_a36d' port_id='00_14.0' devclass='pci' backend_domain='sys-usb' mode='required' frontend_domain='vault' _no-strict-reset='True'";
    let blk = "disp1234+xvdi:*";
    let bopts = "device_id='*' port_id='xvdi' devclass='block' backend_domain='disp1234' mode='auto-attach' frontend_domain='vault' read-only='True'";
    assert_eq!(
        s.qq("admin.vm.device.pci.Assign", "vault", pci, opts.as_bytes()),
        OK
    );
    assert_eq!(
        s.qq(
            "admin.vm.device.block.Assign",
            "vault",
            blk,
            bopts.as_bytes()
        ),
        OK
    );
    assert_eq!(
        s.qq("admin.vm.device.pci.Assigned", "vault", "", b""),
        format!("0\0{pci} {opts}\n")
    );
    assert_eq!(
        s.qq("admin.vm.device.block.Assigned", "vault", "", b""),
        format!("0\0{blk} {bopts}\n")
    );
    assert_eq!(
        s.qq("admin.vm.device.pci.Assign", "vault", pci, opts.as_bytes()),
        format!("2\0DeviceAlreadyAssigned\0\0pci device {pci} already assigned to vault\0")
    );
    assert_eq!(
        s.qq(
            "admin.vm.device.pci.Assign",
            "vault",
            "nope+00_1.0:x",
            opts.as_bytes()
        ),
        REFUSED
    );
    assert_eq!(
        s.qq("admin.vm.device.pci.Assign", "vault", pci, b""),
        REFUSED
    );
    let o = s.run(
        "qubesd-query",
        &["-e", "dom0", "admin.vm.device.gpu.Assign", "vault", pci],
    );
    assert_eq!(o.status.code(), Some(2));
    // a qube that provides a device assigned to another cannot be removed
    assert_eq!(
        s.qq(
            "admin.vm.Create.StandaloneVM",
            "dom0",
            "",
            b"name=usbprov label=red"
        ),
        OK
    );
    let usb = "usbprov+2-1:0781_5581";
    assert_eq!(
        s.qq(
            "admin.vm.device.usb.Assign",
            "vault",
            usb,
            b"mode='auto-attach'"
        ),
        OK
    );
    assert_eq!(
        s.qq("admin.vm.Remove", "usbprov", "", b""),
        "2\0QubesVMInUseError\0\0VM has devices attached persistently to other VMs: 2-1\0"
    );
}

#[test]
fn qubesd_query_reads_its_payload_like_qubesd_query_py() {
    let s = Sys::new("reference-system");
    // the read methods take no payload
    assert_eq!(s.qq("admin.vm.tag.List", "work", "", b"x"), REFUSED);
    // at most 64 KiB: argparse's error, exit 2, nothing sent
    let big = vec![b'a'; 65537];
    let mut c = s
        .cmd(
            "dom0",
            "qubesd-query",
            &["dom0", "admin.vm.feature.Set", "work", "big"],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = c.stdin.take().unwrap().write_all(&big);
    let o = c.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err(&o).ends_with("qubesd-query: error: Payload too long (max 65536)\n"),
        "{}",
        err(&o)
    );
    assert_eq!(s.qq("admin.vm.feature.List", "work", "", b""), "0\0");
    assert_eq!(
        s.qq("admin.vm.feature.Set", "work", "big", &big[..65536]),
        OK
    );
    // --fail: exit 2 on an exception, as for the read methods
    let o = s.run(
        "qubesd-query",
        &["--fail", "-e", "dom0", "admin.vm.Remove", "work"],
    );
    assert_eq!(o.status.code(), Some(2));
}

impl Sys {
    /// `qvm-volume <args>` with `input` on stdin.
    fn qvm_volume(&self, args: &[&str], input: &[u8]) -> Output {
        let mut c = self
            .cmd("dom0", "qvm-volume", args)
            .env_remove("QZB_FAKE_IMPORT_FAIL")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = c.stdin.take().unwrap();
        // the tool may stop reading early (a refused import, a byte too many)
        let _ = stdin.write_all(input);
        drop(stdin);
        c.wait_with_output().unwrap()
    }
    fn imported(&self, qube: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.join("state/imported").join(qube))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

#[test]
fn qvm_volume_import_stores_exactly_size_bytes() {
    let s = Sys::new("reference-system");
    assert_eq!(
        s.qq(
            "admin.vm.Create.AppVM",
            "dom0",
            "fedora-41",
            b"name=restored label=red"
        ),
        OK
    );
    // data with a hole in the middle (stored sparse, read back the same)
    let mut data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8 + 1).collect();
    data[70_000..200_000].fill(0);
    let n = data.len().to_string();
    let size = format!("--size={n}");
    let o = s.qvm_volume(&["import", &size, "restored:private", "-"], &data);
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(err(&o), "");
    let img = s.dir.join("state/imported/restored/private.img");
    assert_eq!(std::fs::read(&img).unwrap(), data);
    assert_eq!(
        s.qq("admin.vm.volume.List", "restored", "", b""),
        "0\0private\n"
    );
    let info = s.qq("admin.vm.volume.Info", "restored", "private", b"");
    assert!(info.contains(&format!("\nsize={n}\n")), "{info:?}");
    // `--size N` too; an existing volume of a halted qube gets the new size
    let o = s.qvm_volume(&["import", "--size", "5", "vault:private", "-"], b"hello");
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert_eq!(
        std::fs::read(s.dir.join("state/imported/vault/private.img")).unwrap(),
        b"hello"
    );
    let info = s.qq("admin.vm.volume.Info", "vault", "private", b"");
    assert!(info.contains("\nsize=5\n"), "{info:?}");
    assert_eq!(
        s.qq("admin.vm.volume.List", "vault", "", b""),
        "0\0root\nprivate\nvolatile\nkernel\n"
    );
    let before = std::fs::read_to_string(s.dir.join("state/dom0.json")).unwrap();

    // short and long input: the volume, its file and dom0.json unchanged, no temporary file left
    let o = s.qvm_volume(
        &["import", "--size=20", "vault:private", "-"],
        b"0123456789",
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        err(&o),
        "Data import failed: not enough data (copied 10 bytes, expected 20 bytes)\n"
    );
    let o = s.qvm_volume(&["import", "--size=4", "vault:private", "-"], b"0123456789");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        err(&o),
        "Data import failed: too much data (expected 4 bytes)\n"
    );
    // the fault knob, through fake.env as the driver's cleared environment needs
    std::fs::write(s.dir.join("bin/fake.env"), "QZB_FAKE_IMPORT_FAIL=1\n").unwrap();
    let o = s.qvm_volume(&["import", "--size=5", "vault:private", "-"], b"world");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(err(&o), "Data import failed: error copying data\n");
    std::fs::write(
        s.dir.join("bin/fake.env"),
        "QZB_FAKE_IMPORT_FAIL=1\nQZB_FAKE_IMPORT_MATCH=:root\n",
    )
    .unwrap();
    let o = s.qvm_volume(&["import", "--size=5", "vault:root", "-"], b"world");
    assert_eq!(err(&o), "Data import failed: error copying data\n");
    std::fs::remove_file(s.dir.join("bin/fake.env")).unwrap();
    assert_eq!(s.imported("vault"), ["private.img"]);
    assert_eq!(
        std::fs::read(s.dir.join("state/imported/vault/private.img")).unwrap(),
        b"hello"
    );
    assert_eq!(
        std::fs::read_to_string(s.dir.join("state/dom0.json")).unwrap(),
        before
    );

    // refused before any data: unknown qube, dom0, a running qube
    let o = s.qvm_volume(&["import", "--size=5", "nope:private", "-"], b"hello");
    assert_eq!(
        (o.status.code(), err(&o).as_str()),
        (Some(1), "qvm-volume: error: no vm 'nope'\n")
    );
    let o = s.qvm_volume(&["import", "--size=5", "dom0:root", "-"], b"hello");
    assert_eq!(
        (o.status.code(), err(&o).as_str()),
        (
            Some(1),
            "qvm-volume: error: vm 'dom0' has no volume 'root'\n"
        )
    );
    let o = s.qvm_volume(&["import", "--size=5", "work:private", "-"], b"hello");
    assert_eq!(
        (o.status.code(), err(&o).as_str()),
        (Some(1), "Domain is not powered off: 'work'\n")
    );
    assert!(s.imported("work").is_empty());

    // anything else is not modelled
    for args in [
        vec!["import", "vault:private", "-"],
        vec!["import", "--size=5", "vault:private", "/tmp/file"],
        vec!["import", "--no-resize", "vault:private", "-"],
        vec!["import", "--size=x", "vault:private", "-"],
        vec!["import", "--size=5", "vault", "-"],
        vec!["list"],
        vec![],
    ] {
        let o = s.qvm_volume(&args, b"hello");
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(
            err(&o).starts_with("qzb-fake qvm-volume: unsupported: "),
            "{args:?}"
        );
    }
    // removing the qube drops its volumes' data
    assert_eq!(s.qq("admin.vm.Remove", "restored", "", b""), OK);
    assert!(!s.dir.join("state/imported/restored").exists());
}

#[test]
fn xl_list_long_is_json_with_disks() {
    let s = Sys::new("reference-system");
    let o = s.run("xl", &["list", "-l"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let doms = v.as_array().unwrap();
    assert_eq!(doms[0]["domid"], 0);
    assert_eq!(doms[0]["config"]["c_info"]["name"], "Domain-0");
    let d = doms
        .iter()
        .find(|d| d["config"]["c_info"]["name"] == "disp1234")
        .unwrap();
    let disks = d["config"]["disks"].as_array().unwrap();
    assert_eq!(
        disks[0]["pdev_path"],
        "/dev/zvol/mainpool/qubes/disp1234/private"
    );
    assert_eq!(disks[0]["readwrite"], 1);
    assert_eq!(
        disks[1]["pdev_path"],
        "/dev/zvol/mainpool/qubes/fedora-41/root"
    );
    assert!(
        disks[1].get("readwrite").is_none(),
        "libxl omits readwrite=0"
    );
    assert!(
        doms.iter()
            .all(|d| d["config"]["c_info"]["name"] != "vault"),
        "halted qubes are not listed"
    );
    assert_eq!(s.run("xl", &["list"]).status.code(), Some(2));
}

#[test]
fn qrexec_client_execs_agent_with_env_and_binary_stdio() {
    let s = Sys::new("reference-system");
    let agent = s.dir.join("agent.sh");
    std::fs::write(
        &agent,
        "#!/bin/sh\necho \"$QREXEC_REMOTE_DOMAIN $QREXEC_SERVICE_FULL_NAME ${QREXEC_SERVICE_ARGUMENT-unset} $QZB_FAKE_HOST\" >&2\nexec cat\n",
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&agent)
        .status()
        .unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut c = s.cmd(
        "dom0",
        "qrexec-client",
        &[
            "-d",
            "backups-disp",
            "root:QUBESRPC zfsbackup.Receive+x dom0",
        ],
    );
    c.env("QZB_FAKE_AGENT", &agent)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut ch = c.spawn().unwrap();
    let mut sin = ch.stdin.take().unwrap();
    let d2 = data.clone();
    let w = std::thread::spawn(move || sin.write_all(&d2).unwrap());
    let o = ch.wait_with_output().unwrap();
    w.join().unwrap();
    assert!(o.status.success());
    assert_eq!(o.stdout, data);
    assert_eq!(err(&o), "dom0 zfsbackup.Receive x backups-disp\n");
    // cut after N bytes towards the service
    let mut c = s.cmd(
        "dom0",
        "qrexec-client",
        &[
            "-d",
            "backups-disp",
            "DEFAULT:QUBESRPC zfsbackup.Receive dom0",
        ],
    );
    c.env("QZB_FAKE_AGENT", &agent)
        .env("QZB_FAKE_QREXEC_CUT_TO_SERVICE", "1000");
    let o = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut o = o;
    let mut sin = o.stdin.take().unwrap();
    let d2 = data.clone();
    let w = std::thread::spawn(move || {
        let _ = sin.write_all(&d2);
    });
    let o = o.wait_with_output().unwrap();
    drop(w);
    assert!(o.stdout.len() <= 1000);
    assert_ne!(o.status.code(), Some(0));
    // not running / refused
    let o = s.run(
        "qrexec-client",
        &["-d", "vault", "root:QUBESRPC zfsbackup.Receive dom0"],
    );
    assert_eq!(o.status.code(), Some(125));
    let o = s
        .cmd(
            "dom0",
            "qrexec-client",
            &["-d", "backups-disp", "root:QUBESRPC zfsbackup.Receive dom0"],
        )
        .env("QZB_FAKE_QREXEC_REFUSE", "1")
        .output()
        .unwrap();
    assert_eq!(
        (o.status.code(), err(&o).as_str()),
        (Some(126), "Request refused\n")
    );
}

#[test]
fn policy_exec_just_evaluate() {
    let s = Sys::new("reference-system");
    assert_eq!(
        s.run(
            "qrexec-policy-exec",
            &[
                "--just-evaluate",
                "@adminvm",
                "backups-disp",
                "zfsbackup.Receive"
            ]
        )
        .status
        .code(),
        Some(0)
    );
    // The policy names dom0 as @adminvm; the bare name does not match it (as in qrexec).
    assert_eq!(
        s.run(
            "qrexec-policy-exec",
            &[
                "--just-evaluate",
                "dom0",
                "backups-disp",
                "zfsbackup.Receive"
            ]
        )
        .status
        .code(),
        Some(1)
    );
    assert_eq!(
        s.run(
            "qrexec-policy-exec",
            &[
                "--just-evaluate",
                "work",
                "backups-disp",
                "zfsbackup.Receive"
            ]
        )
        .status
        .code(),
        Some(1)
    );
    assert_eq!(
        s.run(
            "qrexec-policy-exec",
            &["dom0", "backups-disp", "zfsbackup.Receive"]
        )
        .status
        .code(),
        Some(2)
    );
}

#[test]
fn call_log_and_unsupported() {
    let s = Sys::new("demo-system");
    let o = s.zfs("dom0", &["list", "-H", "-o", "name", "mainpool/dom0"]);
    assert_eq!(out(&o), "mainpool/dom0\n");
    let o = s.zfs("backups-disp", &["frobnicate", "-x"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(err(&o), "qzb-fake zfs: unsupported: zfs frobnicate -x\n");
    assert_eq!(
        s.zfs("dom0", &["list", "-H", "-o", "compressratio"])
            .status
            .code(),
        Some(2)
    );
    let log = std::fs::read_to_string(s.dir.join("state/calls.log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["host"], "dom0");
    assert_eq!(
        lines[0]["argv"],
        serde_json::json!(["zfs", "list", "-H", "-o", "name", "mainpool/dom0"])
    );
    assert_eq!(lines[1]["host"], "backups-disp");
    assert!(lines[0]["cwd"].is_string());
}

#[test]
fn demo_system_matches_the_example_config() {
    let s = Sys::new("demo-system");
    let o = s.run("qubesd-query", &["-e", "dom0", "admin.vm.List", "dom0"]);
    let t = out(&o);
    for q in [
        "social",
        "personal-email",
        "financial-accts",
        "vault",
        "work",
        "work-email",
        "video-editing",
        "fedora-41-xfce",
        "fedora-41-minimal",
        "debian-12-xfce",
        "default-dvm",
        "default-mgmt-dvm",
        "sys-firewall",
        "sys-net",
        "sys-usb",
        "disp1234",
        "backups-disp",
    ] {
        assert!(
            t.contains(&format!("\n{q} class=")) || t.starts_with(&format!("0\0{q} class=")),
            "{q}"
        );
    }
    let o = s.zfs(
        "dom0",
        &[
            "list",
            "-H",
            "-o",
            "name,origin",
            "mainpool/qubes/work/root",
        ],
    );
    assert!(out(&o)
        .starts_with("mainpool/qubes/work/root\tmainpool/qubes/fedora-41-xfce/root@qubes-clean-"));
    // concurrent writers do not lose updates
    let hs: Vec<_> = (0..8)
        .map(|i| {
            let mut c = s.cmd("dom0", "zfs", &["snapshot", &format!("mainpool/dom0@c{i}")]);
            std::thread::spawn(move || c.status().unwrap().success())
        })
        .collect();
    assert!(hs.into_iter().all(|h| h.join().unwrap()));
    let o = s.zfs(
        "dom0",
        &[
            "list",
            "-H",
            "-o",
            "name",
            "-t",
            "snapshot",
            "mainpool/dom0",
        ],
    );
    assert_eq!(out(&o).lines().count(), 9);
}

/// What a stream writes to object 1 of a volume, as the stream tap reads it (checksums
/// verified): (offset, block) of each WRITE and (offset, length) of each FREE, in order.
#[derive(Default)]
struct Blocks {
    writes: Vec<(u64, Vec<u8>)>,
    frees: Vec<(u64, u64)>,
    begins: Vec<(u64, u64, u64)>,
}

impl qzb_protocol::zstream::Sink for Blocks {
    fn on_begin(&mut self, b: &qzb_protocol::zstream::Begin<'_>) {
        self.begins.push((b.featureflags, b.toguid, b.fromguid));
    }
    fn on_write(&mut self, w: &qzb_protocol::zstream::Write<'_>) {
        if w.object == 1 {
            self.writes.push((w.offset, w.payload.to_vec()));
        }
    }
    fn on_free(&mut self, f: &qzb_protocol::zstream::Free) {
        if f.object == 1 {
            self.frees.push((f.offset, f.length));
        }
    }
}

fn tap(stream: &[u8]) -> Blocks {
    let mut t = qzb_protocol::zstream::Tap::new(Blocks::default());
    t.feed(stream).expect("a valid stream");
    t.finish().expect("a complete stream");
    t.into_sink()
}

fn send_on(s: &Sys, host: &str, args: &[&str], env: &[(&str, &str)]) -> Vec<u8> {
    let mut a = vec!["send"];
    a.extend_from_slice(args);
    let o = s
        .cmd(host, "zfs", &a)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    o.stdout
}

fn receive_bytes(s: &Sys, stream: &[u8], args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut a = vec!["receive"];
    a.extend_from_slice(args);
    let mut c = s
        .cmd("backups-disp", "zfs", &a)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = c.stdin.take().unwrap().write_all(stream);
    c.wait_with_output().unwrap()
}

const WP: &str = "mainpool/qubes/work/private";

#[test]
fn volume_streams_are_real_records_and_the_dry_run_size_is_exact() {
    let s = Sys::new("reference-system");
    for args in [
        vec!["-L", "-e", "-c", "-p", "mainpool/qubes/work/private@s1"],
        vec![
            "-L",
            "-e",
            "-c",
            "-p",
            "-i",
            "@s1",
            "mainpool/qubes/work/private@b1",
        ],
        vec!["-I", "@s1", "mainpool/qubes/work/private@b1"],
        vec!["mainpool/qubes/work/private@b1"],
    ] {
        let stream = send_on(&s, "dom0", &args, &[]);
        let mut dry = vec!["send", "-nvP"];
        dry.extend_from_slice(&args);
        let o = s.zfs("dom0", &dry);
        assert!(
            out(&o).ends_with(&format!("size\t{}\n", stream.len())),
            "{args:?}: {}",
            out(&o)
        );
        let b = tap(&stream);
        assert!(!b.writes.is_empty(), "{args:?}");
        // whole 16 KiB blocks in offset order, each one the model's (no zeros: holes are FREE)
        for w in b.writes.windows(2) {
            assert!(w[0].0 < w[1].0, "{args:?}");
        }
        for (off, block) in &b.writes {
            assert_eq!(off % 16384, 0);
            assert_eq!(block.len(), 16384);
            assert!(block.iter().any(|&x| x != 0));
        }
        // the tail FREE comes first, right after the OBJECT record
        assert_eq!(b.frees[0].1, u64::MAX, "{args:?}");
    }
    // -c and -e are announced (LZ4 with them) but blocks stay plain; no LARGE_BLOCKS for 16 KiB
    let b = tap(&send_on(
        &s,
        "dom0",
        &["-L", "-e", "-c", "mainpool/qubes/work/private@s1"],
        &[],
    ));
    let (embed, lz4, large, compressed) = (1 << 16, 1 << 17, 1 << 19, 1 << 22);
    assert_eq!(b.begins[0].0, embed | lz4 | compressed);
    assert_eq!(b.begins[0].0 & large, 0);
}

#[test]
fn a_received_volume_sends_back_the_same_blocks() {
    let s = Sys::new("reference-system");
    let d = format!("{R}/wp");
    let full = send_on(
        &s,
        "dom0",
        &["-L", "-e", "-c", "-p", &format!("{WP}@s1")],
        &[],
    );
    let o = receive_bytes(&s, &full, &["-s", "-u", &d], &[]);
    assert!(o.status.success(), "{}", err(&o));
    let incr = send_on(
        &s,
        "dom0",
        &["-L", "-p", "-i", "@s1", &format!("{WP}@b1")],
        &[],
    );
    let o = receive_bytes(&s, &incr, &["-s", "-u", &d], &[]);
    assert!(o.status.success(), "{}", err(&o));
    for snap in ["s1", "b1"] {
        let mine = tap(&send_on(&s, "dom0", &["-L", &format!("{WP}@{snap}")], &[]));
        let theirs = tap(&send_on(
            &s,
            "backups-disp",
            &["-L", &format!("{d}@{snap}")],
            &[],
        ));
        assert_eq!(mine.writes, theirs.writes, "{snap}");
        assert_eq!(mine.frees, theirs.frees, "{snap}");
    }
    let o = s.zfs(
        "backups-disp",
        &["get", "-Hp", "-o", "value", "volsize,volblocksize", &d],
    );
    assert_eq!(out(&o), "2147483648\n16384\n");
}

#[test]
fn a_cut_volume_receive_resumes_at_the_first_block_not_committed() {
    let s = Sys::new("reference-system");
    let d = format!("{R}/wp");
    let full = send_on(&s, "dom0", &["-L", "-p", &format!("{WP}@s1")], &[]);
    let o = receive_bytes(&s, &full[..150_000], &["-s", "-u", &d], &[]);
    assert!(
        err(&o).contains("Partially received snapshot is saved."),
        "{}",
        err(&o)
    );
    let tok = out(&s.zfs(
        "backups-disp",
        &["get", "-H", "-o", "value", "receive_resume_token", &d],
    ));
    let o = s.zfs("dom0", &["send", "-nvP", "-t", tok.trim()]);
    let text = out(&o);
    assert!(text.contains("\tobject = 0x1\n"), "{text}");
    let offset = text
        .lines()
        .find_map(|l| l.strip_prefix("\toffset = 0x"))
        .map(|h| u64::from_str_radix(h, 16).unwrap())
        .unwrap();
    assert!(offset > 0 && offset % 16384 == 0, "{offset}");
    let resumed = send_on(&s, "dom0", &["-t", tok.trim()], &[]);
    assert!(
        text.ends_with(&format!("size\t{}\n", resumed.len())),
        "{text}"
    );
    let b = tap(&resumed);
    assert_eq!(b.begins[0].0 & (1 << 20), 1 << 20, "RESUMING");
    assert!(b.writes.iter().all(|w| w.0 >= offset));
    let o = receive_bytes(&s, &resumed, &["-s", "-u", &d], &[]);
    assert!(o.status.success(), "{}", err(&o));
    let mine = tap(&send_on(&s, "dom0", &[&format!("{WP}@s1")], &[]));
    let theirs = tap(&send_on(&s, "backups-disp", &[&format!("{d}@s1")], &[]));
    assert_eq!(mine.writes, theirs.writes);
}

#[test]
fn send_flip_and_drop_block_alter_one_block_in_a_valid_stream() {
    let s = Sys::new("reference-system");
    let snap = format!("{WP}@s1");
    let good = tap(&send_on(&s, "dom0", &[&snap], &[]));
    let flipped = tap(&send_on(
        &s,
        "dom0",
        &[&snap],
        &[("QZB_FAKE_SEND_FLIP_BLOCK", "2")],
    ));
    assert_eq!(good.writes.len(), flipped.writes.len());
    let differ: Vec<usize> = (0..good.writes.len())
        .filter(|&i| good.writes[i] != flipped.writes[i])
        .collect();
    assert_eq!(differ, [2]);
    let diff_bytes = (good.writes[2].1.iter())
        .zip(&flipped.writes[2].1)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(diff_bytes, 1);
    let dropped = tap(&send_on(
        &s,
        "dom0",
        &[&snap],
        &[("QZB_FAKE_SEND_DROP_BLOCK", "0")],
    ));
    assert_eq!(dropped.writes[..], good.writes[1..]);
    // QZB_FAKE_SEND_MATCH limits them to matching snapshots
    let other = tap(&send_on(
        &s,
        "dom0",
        &[&snap],
        &[
            ("QZB_FAKE_SEND_FLIP_BLOCK", "2"),
            ("QZB_FAKE_SEND_MATCH", "@b1"),
        ],
    ));
    assert_eq!(other.writes, good.writes);
    // a receiver checks every block against the model: the altered block is refused
    let stream = send_on(&s, "dom0", &[&snap], &[("QZB_FAKE_SEND_FLIP_BLOCK", "2")]);
    let o = receive_bytes(&s, &stream, &[&format!("{R}/x")], &[]);
    assert_eq!(
        err(&o),
        "cannot receive new filesystem stream: checksum mismatch or incomplete stream\n"
    );
}

#[test]
fn a_corrupted_volume_stream_fails_its_checksum() {
    let s = Sys::new("reference-system");
    let mut stream = send_on(&s, "dom0", &[&format!("{WP}@s1")], &[]);
    let n = stream.len();
    stream[n / 2] ^= 0x10;
    let o = receive_bytes(&s, &stream, &[&format!("{R}/x")], &[]);
    assert_eq!(
        err(&o),
        "cannot receive new filesystem stream: checksum mismatch or incomplete stream\n"
    );
    let o = s.zfs(
        "backups-disp",
        &["list", "-H", "-o", "name", &format!("{R}/x")],
    );
    assert!(!o.status.success());
}

/// `qzb-fake volume-image <state> <host> <snap>`
fn volume_image(s: &Sys, host: &str, snap: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qzb-fake"))
        .arg("volume-image")
        .arg(s.dir.join("state"))
        .args([host, snap])
        .output()
        .unwrap()
}

/// The image a full stream's object 1 makes: zeros, then each WRITE at its offset.
fn image_of(stream: &[u8], volsize: usize) -> Vec<u8> {
    let b = tap(stream);
    let mut img = vec![0u8; volsize];
    for (off, block) in &b.writes {
        let off = *off as usize;
        let n = block.len().min(volsize - off);
        img[off..off + n].copy_from_slice(&block[..n]);
    }
    img
}

#[test]
fn volume_image_is_what_a_full_send_carries() {
    let s = Sys::new("reference-system");
    let tiny = "mainpool/qubes/tiny";
    for args in [
        vec!["create", "-V", "1M", tiny],
        vec!["snapshot", &format!("{tiny}@a")],
        vec!["snapshot", &format!("{tiny}@b")],
    ] {
        let o = s.zfs("dom0", &args);
        assert!(o.status.success(), "{args:?}: {}", err(&o));
    }
    let mut images = Vec::new();
    for snap in ["a", "b"] {
        let full = format!("{tiny}@{snap}");
        let o = volume_image(&s, "dom0", &full);
        assert_eq!(o.status.code(), Some(0), "{}", err(&o));
        assert_eq!(o.stdout.len(), 1 << 20);
        let stream = send_on(&s, "dom0", &["-L", "-c", &full], &[]);
        assert!(o.stdout == image_of(&stream, 1 << 20), "@{snap}");
        // written blocks and holes both there
        let data = o
            .stdout
            .chunks(16384)
            .filter(|b| b.iter().any(|&x| x != 0))
            .count();
        assert!((10..64).contains(&data), "@{snap}: {data} blocks with data");
        images.push(o.stdout);
    }
    assert_ne!(images[0], images[1], "@b's delta changed blocks");
    // a received copy has the same image; one with a dropped block differs in that block only
    let stream = send_on(&s, "dom0", &[&format!("{tiny}@b")], &[]);
    let o = receive_bytes(&s, &stream, &[&format!("{R}/tiny")], &[]);
    assert!(o.status.success(), "{}", err(&o));
    let o = volume_image(&s, "backups-disp", &format!("{R}/tiny@b"));
    assert!(o.stdout == images[1]);
    let dropped = send_on(
        &s,
        "dom0",
        &[&format!("{tiny}@b")],
        &[("QZB_FAKE_SEND_DROP_BLOCK", "1")],
    );
    let o = receive_bytes(&s, &dropped, &[&format!("{R}/tiny2")], &[]);
    assert!(o.status.success(), "{}", err(&o));
    let got = volume_image(&s, "backups-disp", &format!("{R}/tiny2@b")).stdout;
    let off = tap(&stream).writes[1].0 as usize;
    assert!(got[off..off + 16384].iter().all(|&x| x == 0));
    assert!(images[1][off..off + 16384].iter().any(|&x| x != 0));
    assert!(got[..off] == images[1][..off] && got[off + 16384..] == images[1][off + 16384..]);
    // not a volume snapshot
    for (host, snap, msg) in [
        (
            "dom0",
            "mainpool/qubes/tiny@zz",
            "cannot open 'mainpool/qubes/tiny@zz': dataset does not exist\n",
        ),
        (
            "dom0",
            "mainpool/qubes/tiny",
            "cannot open 'mainpool/qubes/tiny': dataset does not exist\n",
        ),
        (
            "dom0",
            "mainpool/dom0@b1",
            "'mainpool/dom0' is not a volume\n",
        ),
    ] {
        let o = volume_image(&s, host, snap);
        assert_eq!((o.status.code(), err(&o).as_str()), (Some(1), msg));
        assert!(o.stdout.is_empty());
    }
    assert_eq!(volume_image(&s, "nohost", "a@b").status.code(), Some(1));
    // what a restore test does: import the image into a new qube and compare byte for byte
    assert_eq!(
        s.qq(
            "admin.vm.Create.AppVM",
            "dom0",
            "fedora-41",
            b"name=tiny label=red"
        ),
        OK
    );
    let o = s.qvm_volume(
        &["import", "--size=1048576", "tiny:private", "-"],
        &images[1],
    );
    assert_eq!(o.status.code(), Some(0), "{}", err(&o));
    assert!(std::fs::read(s.dir.join("state/imported/tiny/private.img")).unwrap() == images[1]);
}
