//! fake `qubesd-query`, `xl`, `qrexec-client`, `qrexec-policy-exec`.

use crate::opts::getopt;
use crate::state::{self, HostFile, Qube, Qubes};
use crate::zfs::{fatal, unsupported};
use std::io::{Read, Write};
use std::path::Path;

fn with_dom0(st: HostFile) -> Result<Qubes, String> {
    let mut q = st.qubes.ok_or("dom0.json has no \"qubes\" section")?;
    q.domains.entry("dom0".into()).or_insert_with(|| Qube {
        class: "AdminVM".into(),
        state: "Running".into(),
        domid: Some(0),
        ..Default::default()
    });
    Ok(q)
}

pub fn qubes_of(root: &Path) -> Result<Qubes, String> {
    with_dom0(state::read(root, "dom0")?)
}

/// `qubesd_query.py`'s limit on the payload it reads from stdin.
const MAX_PAYLOAD_SIZE: u64 = 65536;
const USAGE: &str = "usage: qubesd-query [-h] [--connect PATH] [--empty] [--fail] [--max-bytes MAX_BYTES] [--single-line] [--null] SRC METHOD DEST [ARGUMENT]";

/// Where `qvm-volume import` keeps the data of `<qube>`'s volumes.
pub fn imported_dir(root: &Path, qube: &str) -> std::path::PathBuf {
    root.join("imported").join(qube)
}

/// A mutating Admin API call (src/qadmin.rs) under the state lock: dom0.json is written only
/// when the call succeeds. `admin.vm.Remove` also drops the qube's imported volume data.
fn admin_write(
    root: &Path,
    method: &str,
    dest: &str,
    arg: &str,
    payload: &[u8],
) -> Result<Option<Reply>, String> {
    let _lock = state::Lock::acquire(root)?;
    let mut st = state::load(root, "dom0")?;
    let mut q = with_dom0(st.clone())?;
    let Some(reply) = crate::qadmin::apply(&mut q, method, dest, arg, payload) else {
        return Ok(None);
    };
    if let Reply::Ok(_) = reply {
        st.qubes = Some(q);
        state::save(root, "dom0", &st)?;
        if method == "admin.vm.Remove" {
            let dir = imported_dir(root, dest);
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
            }
        }
    }
    Ok(Some(reply))
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}

pub enum Reply {
    Ok(String),
    Exc(&'static str, String),
}

fn admin_call(q: &Qubes, method: &str, dest: &str, arg: &str) -> Option<Reply> {
    let Some(vm) = q.domains.get(dest) else {
        return Some(Reply::Exc(
            "QubesVMNotFoundError",
            format!("No such domain: '{dest}'"),
        ));
    };
    let denied = || Reply::Exc("PermissionDenied", String::new());
    Some(match method {
        "admin.vm.List" => {
            if !arg.is_empty() {
                return Some(denied());
            }
            let mut s = String::new();
            let list: Vec<(&String, &Qube)> = if dest == "dom0" {
                q.domains.iter().collect()
            } else {
                vec![(q.domains.get_key_value(dest)?)]
            };
            for (name, v) in list {
                s.push_str(&format!("{name} class={} state={}", v.class, v.state));
                if q.release != "4.2" {
                    let uuid = v.uuid.clone().unwrap_or_else(|| {
                        let x = state::stable_id(&["uuid", name]);
                        let y = state::stable_id(&["uuid2", name]);
                        format!(
                            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                            x >> 32,
                            (x >> 16) & 0xffff,
                            x & 0xfff,
                            y >> 52,
                            y & 0xffff_ffff_ffff
                        )
                    });
                    s.push_str(&format!(" uuid={uuid}"));
                }
                s.push('\n');
            }
            Reply::Ok(s)
        }
        "admin.vm.volume.List" => {
            if !arg.is_empty() {
                return Some(denied());
            }
            Reply::Ok(vm.volumes.iter().map(|v| format!("{}\n", v.name)).collect())
        }
        "admin.vm.volume.Info" => {
            let Some(v) = vm.volumes.iter().find(|v| v.name == arg) else {
                return Some(denied());
            };
            let zfs_pool = q
                .pools
                .get(&v.pool)
                .and_then(|p| p.config.get("driver"))
                .is_some_and(|d| d == "zfs");
            let path = v.path.clone().unwrap_or_else(|| {
                if zfs_pool {
                    format!("/dev/zvol/{}", v.vid)
                } else {
                    String::new()
                }
            });
            let mut s = String::new();
            s.push_str(&format!(
                "pool={}\nvid={}\nsize={}\nusage={}\nrw={}\n",
                v.pool,
                v.vid,
                v.size,
                v.usage,
                py_bool(v.rw)
            ));
            s.push_str(&format!(
                "source={}\npath={path}\n",
                v.source.clone().unwrap_or_default()
            ));
            s.push_str(&format!(
                "save_on_stop={}\nsnap_on_start={}\nrevisions_to_keep={}\nephemeral={}\n",
                py_bool(v.save_on_stop),
                py_bool(v.snap_on_start),
                v.revisions_to_keep,
                py_bool(v.ephemeral)
            ));
            s.push_str(&format!(
                "is_outdated={}\n",
                py_bool(v.is_outdated.unwrap_or(false))
            ));
            Reply::Ok(s)
        }
        "admin.pool.List" => {
            if dest != "dom0" || !arg.is_empty() {
                return Some(denied());
            }
            Reply::Ok(q.pools.keys().map(|k| format!("{k}\n")).collect())
        }
        "admin.pool.Info" => {
            if dest != "dom0" {
                return Some(denied());
            }
            let Some(p) = q.pools.get(arg) else {
                return Some(denied());
            };
            let mut cfg = p.config.clone();
            cfg.entry("name".into()).or_insert_with(|| arg.to_string());
            let mut s: String = cfg.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            if let Some(x) = p.size {
                s.push_str(&format!("size={x}\n"));
            }
            if let Some(x) = p.usage {
                s.push_str(&format!("usage={x}\n"));
            }
            Reply::Ok(s)
        }
        "admin.vm.property.Get" => {
            if arg == "klass" {
                return Some(Reply::Ok(format!("default=True type=str {}", vm.class)));
            }
            match vm.properties.get(arg) {
                Some(v) => {
                    let (default, ty) = property_shape(arg);
                    Reply::Ok(format!("default={default} type={ty} {v}"))
                }
                None => Reply::Exc(
                    "QubesNoSuchPropertyError",
                    format!("Invalid property '{arg}' of {dest}"),
                ),
            }
        }
        "admin.vm.property.GetAll" => {
            if !arg.is_empty() {
                return Some(denied());
            }
            let mut all = vm.properties.clone();
            all.insert("klass".into(), vm.class.clone());
            Reply::Ok(
                all.iter()
                    .map(|(name, value)| {
                        let (default, ty) = property_shape(name);
                        let line = format!("default={default} type={ty} {value}")
                            .replace('\\', "\\\\")
                            .replace('\n', "\\n");
                        format!("{name} {line}\n")
                    })
                    .collect(),
            )
        }
        "admin.vm.feature.List" => {
            if !arg.is_empty() {
                return Some(denied());
            }
            Reply::Ok(vm.features.keys().map(|k| format!("{k}\n")).collect())
        }
        "admin.vm.feature.Get" => match vm.features.get(arg) {
            Some(v) => Reply::Ok(v.clone()),
            None => Reply::Exc("QubesFeatureNotFoundError", arg.to_string()),
        },
        "admin.vm.tag.List" => {
            let mut tags = vm.tags.clone();
            tags.sort();
            Reply::Ok(tags.iter().map(|t| format!("{t}\n")).collect())
        }
        "admin.vm.firewall.Get" => {
            if vm.class == "AdminVM" {
                return Some(denied());
            }
            let rules = vm
                .firewall
                .clone()
                .unwrap_or_else(|| vec!["action=accept".into()]);
            Reply::Ok(rules.iter().map(|r| format!("{r}\n")).collect())
        }
        m if m.starts_with("admin.vm.device.") && m.ends_with(".Assigned") => {
            let class = &m["admin.vm.device.".len()..m.len() - ".Assigned".len()];
            if !["block", "mic", "pci", "usb"].contains(&class) {
                return None;
            }
            let lines = vm.devices.get(class).cloned().unwrap_or_default();
            Reply::Ok(lines.iter().map(|l| format!("{l}\n")).collect())
        }
        _ => return None,
    })
}

/// `default=` and `type=` of a property as the fake reports it: what dom0.json sets is not a
/// default, except `klass`.
fn property_shape(name: &str) -> (&'static str, &'static str) {
    let default = if name == "klass" { "True" } else { "False" };
    let ty = match name {
        "template" | "netvm" | "default_dispvm" | "management_dispvm" | "audiovm" | "guivm" => "vm",
        "label" => "label",
        "memory" | "maxmem" | "vcpus" | "qrexec_timeout" => "int",
        _ => "str",
    };
    (default, ty)
}

pub fn qubesd_query(root: &Path, args: &[String]) -> i32 {
    let all: Vec<String> = std::iter::once("qubesd-query".to_string())
        .chain(args.iter().cloned())
        .collect();
    let mut empty = false;
    let mut fail = false;
    let mut null = false;
    let mut pos: Vec<String> = Vec::new();
    for a in args {
        match a.as_str() {
            "-e" | "--empty" => empty = true,
            "--fail" => fail = true,
            "--null" => null = true,
            s if s.starts_with('-') => return unsupported("qubesd-query", &all),
            _ => pos.push(a.clone()),
        }
    }
    if pos.len() < 3 || pos.len() > 4 {
        return unsupported("qubesd-query", &all);
    }
    let mut payload = Vec::new();
    if !empty {
        // qubesd_query.py reads one byte more than it allows, to refuse a longer payload
        let _ = std::io::stdin()
            .take(MAX_PAYLOAD_SIZE + 1)
            .read_to_end(&mut payload);
        if payload.len() as u64 > MAX_PAYLOAD_SIZE {
            eprintln!("{USAGE}\nqubesd-query: error: Payload too long (max {MAX_PAYLOAD_SIZE})");
            return 2;
        }
    }
    let arg = pos.get(3).cloned().unwrap_or_default();
    if pos[0] != "dom0" {
        return unsupported("qubesd-query", &all);
    }
    let (method, dest) = (pos[1].as_str(), pos[2].as_str());
    let reply = if crate::qadmin::is_write(method) {
        match admin_write(root, method, dest, &arg, &payload) {
            Ok(Some(r)) => r,
            Ok(None) => return unsupported("qubesd-query", &all),
            Err(e) => return fatal(e),
        }
    } else {
        let q = match qubes_of(root) {
            Ok(q) => q,
            Err(e) => return fatal(e),
        };
        match admin_call(&q, method, dest, &arg) {
            None => return unsupported("qubesd-query", &all),
            // the read methods take no payload (ProtocolError: the connection is closed)
            Some(_) if !payload.is_empty() && q.domains.contains_key(dest) => {
                Reply::Exc("PermissionDenied", String::new())
            }
            Some(r) => r,
        }
    };
    let mut out = Vec::new();
    let code = match reply {
        Reply::Ok(s) => {
            out.extend_from_slice(b"0\0");
            out.extend_from_slice(s.as_bytes());
            0
        }
        Reply::Exc(ty, msg) => {
            out.extend_from_slice(b"2\0");
            out.extend_from_slice(ty.as_bytes());
            out.extend_from_slice(b"\0\0");
            out.extend_from_slice(msg.as_bytes());
            out.push(0);
            2
        }
    };
    if null && !fail {
        out.push(0);
    }
    let mut so = std::io::stdout().lock();
    let _ = so.write_all(&out);
    let _ = so.flush();
    if fail {
        code
    } else {
        0
    }
}

pub fn xl(root: &Path, args: &[String]) -> i32 {
    let all: Vec<String> = std::iter::once("xl".to_string())
        .chain(args.iter().cloned())
        .collect();
    if args != ["list", "-l"] && args != ["list", "--long"] {
        return unsupported("xl", &all);
    }
    let q = match qubes_of(root) {
        Ok(q) => q,
        Err(e) => return fatal(e),
    };
    let mut doms: Vec<XlDomain> = Vec::new();
    for (name, vm) in &q.domains {
        if vm.state != "Running" && vm.state != "Paused" {
            continue;
        }
        let dom0 = name == "dom0";
        let domid = if dom0 {
            0
        } else {
            vm.domid
                .unwrap_or_else(|| (state::stable_id(&["domid", name]) % 200 + 1) as u32)
        };
        let disks = vm
            .disks
            .iter()
            .map(|d| XlDiskOut {
                pdev_path: d.pdev_path.clone(),
                vdev: d.vdev.clone(),
                backend: "phy",
                format: "raw",
                script: "/etc/xen/scripts/block",
                removable: 1,
                readwrite: if d.readwrite { Some(1) } else { None },
            })
            .collect();
        doms.push(XlDomain {
            domid,
            config: XlConfig {
                c_info: CInfo {
                    kind: if dom0 { "pv" } else { "pvh" },
                    name: if dom0 {
                        "Domain-0".into()
                    } else {
                        name.clone()
                    },
                    run_hotplug_scripts: if dom0 { None } else { Some("True") },
                },
                b_info: BInfo {
                    max_vcpus: 2,
                    max_memkb: 4_096_000,
                },
                disks,
            },
        });
    }
    doms.sort_by_key(|d| d.domid);
    let arr = doms;
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    if serde::Serialize::serialize(&arr, &mut ser).is_err() {
        return fatal("json");
    }
    buf.push(b'\n');
    let _ = std::io::stdout().write_all(&buf);
    0
}

pub fn qrexec_policy_exec(root: &Path, args: &[String]) -> i32 {
    let all: Vec<String> = std::iter::once("qrexec-policy-exec".to_string())
        .chain(args.iter().cloned())
        .collect();
    let mut just = false;
    let mut assume_yes = false;
    let mut pos = Vec::new();
    for a in args {
        match a.as_str() {
            "--just-evaluate" => just = true,
            "--assume-yes-for-ask" => assume_yes = true,
            s if s.starts_with('-') => return unsupported("qrexec-policy-exec", &all),
            _ => pos.push(a.clone()),
        }
    }
    if !just || pos.len() != 3 {
        return unsupported("qrexec-policy-exec", &all);
    }
    let q = match qubes_of(root) {
        Ok(q) => q,
        Err(e) => return fatal(e),
    };
    let service = pos[2].split('+').next().unwrap_or("");
    let rule = q.policy.iter().find(|r| {
        (r.service == "*" || r.service == service || r.service == pos[2])
            && (r.source == "@anyvm" || r.source == pos[0])
            && (r.target == "@anyvm" || r.target == pos[1])
    });
    match rule.map(|r| r.action.as_str()) {
        Some("allow") => 0,
        Some("ask") if assume_yes => 0,
        _ => 1,
    }
}

pub fn qrexec_client(root: &Path, args: &[String]) -> i32 {
    use std::os::unix::process::CommandExt;
    let all: Vec<String> = std::iter::once("qrexec-client".to_string())
        .chain(args.iter().cloned())
        .collect();
    let Ok(p) = getopt(args, "d", "") else {
        return unsupported("qrexec-client", &all);
    };
    let (Some(target), [cmd]) = (p.last('d'), p.operands.as_slice()) else {
        return unsupported("qrexec-client", &all);
    };
    let Some((user, rest)) = cmd.split_once(':') else {
        return unsupported("qrexec-client", &all);
    };
    let Some(rpc) = rest.strip_prefix("QUBESRPC ") else {
        return unsupported("qrexec-client", &all);
    };
    let mut words = rpc.split(' ');
    let (Some(svc), Some(source), None) = (words.next(), words.next(), words.next()) else {
        return unsupported("qrexec-client", &all);
    };
    if user.is_empty() || user.contains(' ') {
        return unsupported("qrexec-client", &all);
    }
    let (service, svc_arg) = match svc.split_once('+') {
        Some((s, a)) => (s, Some(a)),
        None => (svc, None),
    };
    let q = match qubes_of(root) {
        Ok(q) => q,
        Err(e) => return fatal(e),
    };
    if std::env::var("QZB_FAKE_QREXEC_REFUSE").is_ok_and(|v| !v.is_empty()) {
        eprintln!("Request refused");
        return 126;
    }
    let vm = match q.domains.get(&target) {
        Some(vm) if vm.state == "Running" => vm,
        _ => {
            eprintln!("connect: No such file or directory");
            return 125;
        }
    };
    if vm.missing_services.iter().any(|s| s == service || s == svc) {
        eprintln!("{svc}: command not found");
        return 127;
    }
    let agent = match std::env::var_os("QZB_FAKE_AGENT") {
        Some(a) if !a.is_empty() => std::path::PathBuf::from(a),
        _ => match std::env::current_exe() {
            Ok(e) => e.with_file_name("qubes-zfs-backup-receiver"),
            Err(e) => return fatal(e),
        },
    };
    let mut cmd = std::process::Command::new(&agent);
    cmd.env("QREXEC_REMOTE_DOMAIN", source)
        .env("QREXEC_SERVICE_FULL_NAME", service)
        .env("QZB_FAKE_HOST", &target)
        .env_remove("QREXEC_SERVICE_ARGUMENT");
    if let Some(a) = svc_arg {
        cmd.env("QREXEC_SERVICE_ARGUMENT", a);
    }
    let cut_to = std::env::var("QZB_FAKE_QREXEC_CUT_TO_SERVICE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    let cut_from = std::env::var("QZB_FAKE_QREXEC_CUT_FROM_SERVICE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    let flip_to = std::env::var("QZB_FAKE_QREXEC_FLIP_TO_SERVICE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    if cut_to.is_none() && cut_from.is_none() && flip_to.is_none() {
        let e = cmd.exec();
        eprintln!(
            "qzb-fake qrexec-client: cannot exec {}: {e}",
            agent.display()
        );
        return 127;
    }
    relay(cmd, &agent, cut_to, cut_from, flip_to)
}

/// Relay through threads so the pipe can be cut after N bytes, or one byte flipped in transit
/// (fault injection). When either direction is cut the connection is severed both ways, like a
/// dead vchan.
fn relay(
    mut cmd: std::process::Command,
    agent: &Path,
    cut_to: Option<u64>,
    cut_from: Option<u64>,
    flip_to: Option<u64>,
) -> i32 {
    use std::process::Stdio;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let mut child = match cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "qzb-fake qrexec-client: cannot run {}: {e}",
                agent.display()
            );
            return 127;
        }
    };
    let cut = Arc::new(AtomicBool::new(false));
    let mut cin = child.stdin.take().expect("piped");
    let mut cout = child.stdout.take().expect("piped");
    let cut_in = cut.clone();
    let t = std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 65536];
        let mut left = cut_to;
        let mut offset = 0u64;
        loop {
            if cut_in.load(Ordering::SeqCst) {
                break;
            }
            let mut want = buf.len();
            if let Some(l) = left {
                if l == 0 {
                    cut_in.store(true, Ordering::SeqCst);
                    break;
                }
                want = want.min(l as usize);
            }
            let n = match stdin.read(&mut buf[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(f) = flip_to {
                if f >= offset && f < offset + n as u64 {
                    buf[(f - offset) as usize] ^= 0x01;
                }
            }
            offset += n as u64;
            if cin.write_all(&buf[..n]).is_err() {
                break;
            }
            if let Some(l) = &mut left {
                *l -= n as u64;
            }
        }
        drop(cin);
    });
    let mut stdout = std::io::stdout().lock();
    let mut buf = vec![0u8; 65536];
    let mut left = cut_from;
    loop {
        if cut.load(Ordering::SeqCst) {
            break;
        }
        let mut want = buf.len();
        if let Some(l) = left {
            if l == 0 {
                cut.store(true, Ordering::SeqCst);
                break;
            }
            want = want.min(l as usize);
        }
        let n = match cout.read(&mut buf[..want]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if stdout.write_all(&buf[..n]).is_err() || stdout.flush().is_err() {
            break;
        }
        if let Some(l) = &mut left {
            *l -= n as u64;
        }
    }
    if cut.load(Ordering::SeqCst) {
        drop(cout);
        let _ = child.kill();
        let _ = child.wait();
        eprintln!("qzb-fake qrexec-client: connection cut (fault injection)");
        // the stdin thread may be blocked reading our stdin; do not wait for it
        return 1;
    }
    let status = child.wait();
    let _ = t.join();
    status.ok().and_then(|s| s.code()).unwrap_or(1)
}

// `xl list -l` JSON, fields in libxl's order; libxl omits fields at their default value.
#[derive(serde::Serialize)]
struct XlDomain {
    domid: u32,
    config: XlConfig,
}

#[derive(serde::Serialize)]
struct XlConfig {
    c_info: CInfo,
    b_info: BInfo,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    disks: Vec<XlDiskOut>,
}

#[derive(serde::Serialize)]
struct CInfo {
    #[serde(rename = "type")]
    kind: &'static str,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_hotplug_scripts: Option<&'static str>,
}

#[derive(serde::Serialize)]
struct BInfo {
    max_vcpus: u32,
    max_memkb: u64,
}

#[derive(serde::Serialize)]
struct XlDiskOut {
    pdev_path: String,
    vdev: String,
    backend: &'static str,
    format: &'static str,
    script: &'static str,
    removable: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    readwrite: Option<u32>,
}
