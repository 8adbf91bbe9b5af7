//! The mutating Admin API methods of the fake `qubesd-query` (what `restore run` calls):
//! `admin.vm.Create.<Class>`, `admin.vm.property.Set`/`Reset`, `admin.vm.feature.Set`,
//! `admin.vm.tag.Set`, `admin.vm.firewall.Set`, `admin.vm.device.<class>.Assign`,
//! `admin.vm.Remove`. Checks, their order and messages follow qubes-core-admin
//! (qubes/api/admin.py, release 4.2, and the 4.3 device API); a request that real qubesd
//! answers by closing the connection (PermissionDenied, ProtocolError, an unhandled
//! exception) gets the fake's usual stand-in `2\0PermissionDenied\0\0\0`.

use crate::qubes::Reply;
use crate::state::{Qube, Qubes};

/// Whether `method` is one of the mutating methods handled here.
pub fn is_write(method: &str) -> bool {
    method.starts_with("admin.vm.Create.")
        || device_assign_class(method).is_some()
        || matches!(
            method,
            "admin.vm.property.Set"
                | "admin.vm.property.Reset"
                | "admin.vm.feature.Set"
                | "admin.vm.tag.Set"
                | "admin.vm.firewall.Set"
                | "admin.vm.Remove"
        )
}

fn device_assign_class(method: &str) -> Option<&str> {
    method
        .strip_prefix("admin.vm.device.")?
        .strip_suffix(".Assign")
        .filter(|c| !c.is_empty() && !c.contains('.'))
}

/// qubesd's answer to PermissionDenied / ProtocolError / unhandled exceptions is a closed
/// connection; the fake answers with this framing instead (as for its read methods).
fn refused() -> Reply {
    Reply::Exc("PermissionDenied", String::new())
}

/// Qubes' default labels (`qubes.Qubes.labels`).
pub const LABELS: [&str; 8] = [
    "red", "orange", "yellow", "green", "gray", "blue", "purple", "black",
];

/// Properties that refer to a qube (`qubes.vm.VMProperty`): checked on Set, and what makes a
/// qube "in use" for Remove.
const VM_PROPS: [&str; 6] = [
    "template",
    "netvm",
    "default_dispvm",
    "management_dispvm",
    "audiovm",
    "guivm",
];
const INT_PROPS: [&str; 5] = [
    "memory",
    "maxmem",
    "vcpus",
    "qrexec_timeout",
    "shutdown_timeout",
];

/// `qubes.vm.validate_name(None, None, name)` (4.2).
fn validate_name(name: &str) -> Result<(), Reply> {
    let bad = |m: &str| Err(Reply::Exc("QubesValueError", m.to_string()));
    if name.chars().count() > 31 {
        return bad("VM name must be shorter than 32 characters");
    }
    let mut cs = name.chars();
    let ok = cs.next().is_some_and(|c| c.is_ascii_alphabetic())
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok {
        return bad("VM name contains illegal characters");
    }
    if name == "Domain-0" {
        return bad("VM name cannot be 'Domain-0'");
    }
    if name == "none" || name == "default" {
        return bad("VM name cannot be 'none' nor 'default'");
    }
    if name.ends_with("-dm") {
        return bad("VM name cannot end with -dm");
    }
    Ok(())
}

/// Applies one mutating call to `q` (dom0 present). `None`: not a modelled method
/// (`unsupported`). The caller saves the state only on `Reply::Ok`.
pub fn apply(q: &mut Qubes, method: &str, dest: &str, arg: &str, payload: &[u8]) -> Option<Reply> {
    if !q.domains.contains_key(dest) {
        return Some(Reply::Exc(
            "QubesVMNotFoundError",
            format!("No such domain: '{dest}'"),
        ));
    }
    if let Some(class) = method.strip_prefix("admin.vm.Create.") {
        return create(q, class, dest, arg, payload);
    }
    if let Some(class) = device_assign_class(method) {
        return device_assign(q, class, dest, arg, payload);
    }
    Some(match method {
        "admin.vm.property.Set" => property_set(q, dest, arg, payload),
        "admin.vm.property.Reset" => property_reset(q, dest, arg, payload),
        "admin.vm.feature.Set" => feature_set(q, dest, arg, payload),
        "admin.vm.tag.Set" => tag_set(q, dest, arg, payload),
        "admin.vm.firewall.Set" => firewall_set(q, dest, arg, payload),
        "admin.vm.Remove" => remove(q, dest, arg, payload),
        _ => return None,
    })
}

fn create(q: &mut Qubes, class: &str, dest: &str, arg: &str, payload: &[u8]) -> Option<Reply> {
    // the classes of the `qubes.vm` entry points that can be created, and whether they have a
    // `template` property (and of which class it must be)
    let template_class = match class {
        "AppVM" => Some("TemplateVM"),
        "DispVM" => Some("AppVM"),
        "TemplateVM" | "StandaloneVM" => None,
        _ => return None,
    };
    Some(create_checked(q, class, template_class, dest, arg, payload).unwrap_or_else(|e| e))
}

fn create_checked(
    q: &mut Qubes,
    class: &str,
    template_class: Option<&str>,
    dest: &str,
    arg: &str,
    payload: &[u8],
) -> Result<Reply, Reply> {
    if dest != "dom0" {
        return Err(refused());
    }
    // the template is checked first, before the payload (admin.py `_vm_create`)
    if !arg.is_empty() {
        let Some(want) = template_class else {
            return Err(Reply::Exc(
                "QubesValueError",
                format!("{class} cannot be based on template"),
            ));
        };
        let Some(t) = q.domains.get(arg) else {
            return Err(Reply::Exc(
                "QubesVMNotFoundError",
                format!("No such domain: '{arg}'"),
            ));
        };
        if t.class != want {
            return Err(Reply::Exc(
                "QubesPropertyValueError",
                format!(
                    "wrong VM class: domains['{arg}'] is of type {} and not {want}",
                    t.class
                ),
            ));
        }
    }
    let text = std::str::from_utf8(payload)
        .ok()
        .filter(|t| t.is_ascii())
        .ok_or_else(refused)?;
    let (mut name, mut label) = (None, None);
    for param in text.split(' ') {
        let (key, value) = param.split_once('=').ok_or_else(refused)?;
        match key {
            "name" if name.is_none() => {
                validate_name(value)?;
                name = Some(value);
            }
            "label" if label.is_none() => {
                let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
                if value.chars().all(|c| c.is_ascii_digit()) || !value.chars().all(allowed) {
                    return Err(refused());
                }
                if !LABELS.contains(&value) {
                    return Err(Reply::Exc(
                        "QubesLabelNotFoundError",
                        format!("Label does not exist: {value}"),
                    ));
                }
                label = Some(value);
            }
            // duplicated or unknown parameter (pool= only with CreateInPool): ProtocolError
            _ => return Err(refused()),
        }
    }
    let (Some(name), Some(label)) = (name, label) else {
        return Err(refused());
    };
    if q.domains.contains_key(name) {
        return Err(Reply::Exc(
            "QubesValueError",
            format!("VM {name} already exists"),
        ));
    }
    let mut vm = Qube {
        class: class.to_string(),
        state: "Halted".into(),
        // admin.py: vm.tags.add('created-by-' + str(self.src))
        tags: vec!["created-by-dom0".into()],
        ..Default::default()
    };
    vm.properties.insert("label".into(), label.into());
    if !arg.is_empty() {
        vm.properties.insert("template".into(), arg.into());
    }
    q.domains.insert(name.to_string(), vm);
    Ok(Reply::Ok(String::new()))
}

/// Checks for Set/Reset of `prop`: `klass` is no property, `name`/`qid`/`uuid` are write-once
/// (an AttributeError in qubesd: the connection is closed).
fn settable(dest: &str, prop: &str) -> Result<(), Reply> {
    match prop {
        "klass" | "" => Err(Reply::Exc(
            "QubesNoSuchPropertyError",
            format!("Invalid property '{prop}' of {dest}"),
        )),
        "name" | "qid" | "uuid" => Err(refused()),
        _ => Ok(()),
    }
}

fn property_set(q: &mut Qubes, dest: &str, prop: &str, payload: &[u8]) -> Reply {
    let r = (|| -> Result<String, Reply> {
        settable(dest, prop)?;
        // property.sanitize: decode('ascii', errors='strict')
        let value = std::str::from_utf8(payload)
            .ok()
            .filter(|v| v.is_ascii())
            .ok_or_else(|| {
                Reply::Exc(
                    "QubesValueError",
                    "Non-ASCII bytes in property value".into(),
                )
            })?
            .to_string();
        if VM_PROPS.contains(&prop) {
            if value.is_empty() {
                // '' is None: allowed except for template
                if prop == "template" {
                    return Err(Reply::Exc(
                        "QubesPropertyValueError",
                        format!("Invalid value '' for property '{prop}' of '{dest}'"),
                    ));
                }
            } else {
                validate_name(&value)?;
                if !q.domains.contains_key(&value) {
                    return Err(Reply::Exc(
                        "QubesPropertyValueError",
                        format!("Can't set {prop} to non-existing qube {value}"),
                    ));
                }
            }
        } else if INT_PROPS.contains(&prop) {
            if value.trim().parse::<i64>().is_err() {
                return Err(Reply::Exc(
                    "QubesValueError",
                    "Failed to parse property value as int".into(),
                ));
            }
        } else if prop == "label" {
            if !LABELS.contains(&value.as_str()) {
                return Err(Reply::Exc(
                    "QubesLabelNotFoundError",
                    format!("Label does not exist: {value}"),
                ));
            }
        } else if !value
            .chars()
            .all(|c| c.is_ascii_graphic() || " \t\n\r\x0b\x0c".contains(c))
        {
            // type str: string.printable only
            return Err(Reply::Exc(
                "QubesValueError",
                "Invalid characters in property value".into(),
            ));
        }
        Ok(value)
    })();
    match r {
        Ok(value) => {
            let vm = q.domains.get_mut(dest).expect("checked");
            vm.properties.insert(prop.to_string(), value);
            Reply::Ok(String::new())
        }
        Err(e) => e,
    }
}

fn property_reset(q: &mut Qubes, dest: &str, prop: &str, payload: &[u8]) -> Reply {
    if !payload.is_empty() {
        return refused();
    }
    if let Err(e) = settable(dest, prop) {
        return e;
    }
    let vm = q.domains.get_mut(dest).expect("checked");
    vm.properties.remove(prop);
    Reply::Ok(String::new())
}

fn feature_set(q: &mut Qubes, dest: &str, name: &str, payload: &[u8]) -> Reply {
    let name_ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    // 4.2: decode('ascii', errors='strict') (an unhandled UnicodeDecodeError); 4.3 also
    // refuses control characters (ProtocolError)
    let Some(value) = std::str::from_utf8(payload).ok().filter(|v| v.is_ascii()) else {
        return refused();
    };
    let printable = value.chars().all(|c| (' '..='~').contains(&c));
    if !name_ok || (q.release != "4.2" && !printable) {
        return refused();
    }
    let vm = q.domains.get_mut(dest).expect("checked");
    vm.features.insert(name.to_string(), value.to_string());
    Reply::Ok(String::new())
}

fn tag_set(q: &mut Qubes, dest: &str, tag: &str, payload: &[u8]) -> Reply {
    if !payload.is_empty() {
        return refused();
    }
    if tag.is_empty()
        || !tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        // 4.2: a bare ValueError (connection closed); 4.3: QubesInvalidTagError
        if q.release == "4.2" {
            return refused();
        }
        let msg = if tag.is_empty() {
            "tag cannot be empty"
        } else {
            "disallowed characters"
        };
        return Reply::Exc("QubesInvalidTagError", msg.into());
    }
    let vm = q.domains.get_mut(dest).expect("checked");
    if !vm.tags.iter().any(|t| t == tag) {
        vm.tags.push(tag.to_string());
    }
    Reply::Ok(String::new())
}

/// `qubes.firewall.Rule.from_api_string`, as a check: options `key=value` separated by single
/// spaces, `comment=` last (it may hold spaces), each key once, an `action` of accept/drop.
fn firewall_rule_ok(line: &str) -> bool {
    let options = match line.find("comment=") {
        Some(i) => &line[..i],
        None => line,
    };
    let mut seen: Vec<&str> = Vec::new();
    let mut action = false;
    for opt in options.trim().split(' ') {
        let Some((k, v)) = opt.split_once('=') else {
            return false;
        };
        let k = if ["dst4", "dst6", "dstname"].contains(&k) {
            "dsthost"
        } else {
            k
        };
        let known = [
            "action",
            "dsthost",
            "proto",
            "dstports",
            "icmptype",
            "specialtarget",
            "expire",
        ];
        if !known.contains(&k) || seen.contains(&k) || v.is_empty() {
            return false;
        }
        if k == "action" {
            if v != "accept" && v != "drop" {
                return false;
            }
            action = true;
        }
        seen.push(k);
    }
    action
}

fn firewall_set(q: &mut Qubes, dest: &str, arg: &str, payload: &[u8]) -> Reply {
    let vm = q.domains.get_mut(dest).expect("checked");
    // an AdminVM has no firewall (AttributeError in qubesd)
    if !arg.is_empty() || vm.class == "AdminVM" {
        return refused();
    }
    let Some(text) = std::str::from_utf8(payload).ok().filter(|t| t.is_ascii()) else {
        return refused();
    };
    let rules: Vec<String> = text.lines().map(str::to_string).collect();
    if !rules.iter().all(|r| firewall_rule_ok(r)) {
        return refused();
    }
    vm.firewall = Some(rules);
    Reply::Ok(String::new())
}

fn device_assign(
    q: &mut Qubes,
    class: &str,
    dest: &str,
    arg: &str,
    payload: &[u8],
) -> Option<Reply> {
    if !["block", "mic", "pci", "usb"].contains(&class) {
        return None;
    }
    // arg `<backend>+<port>[:<devid>]`: an unknown backend is a KeyError in qubesd
    let Some((backend, port)) = arg.split_once('+') else {
        return Some(refused());
    };
    if port.is_empty() || !q.domains.contains_key(backend) {
        return Some(refused());
    }
    let Some(options) = std::str::from_utf8(payload)
        .ok()
        .filter(|p| !p.is_empty() && p.is_ascii() && !p.contains('\n'))
    else {
        return Some(refused());
    };
    // only auto-attachable devices can be assigned (a ValueError in qubesd)
    if options.contains("mode='manual'") {
        return Some(refused());
    }
    let vm = q.domains.get_mut(dest).expect("checked");
    let lines = vm.devices.entry(class.to_string()).or_default();
    let key = |l: &String| l.split(' ').next().unwrap_or("").to_string();
    if lines.iter().any(|l| key(l) == arg) {
        return Some(Reply::Exc(
            "DeviceAlreadyAssigned",
            format!("{class} device {arg} already assigned to {dest}"),
        ));
    }
    lines.push(format!("{arg} {options}"));
    // admin.vm.device.<class>.Assigned lists them sorted by `<backend>+<port>:<devid>`
    lines.sort_by_key(key);
    Some(Reply::Ok(String::new()))
}

fn remove(q: &mut Qubes, dest: &str, arg: &str, payload: &[u8]) -> Reply {
    if !arg.is_empty() || !payload.is_empty() {
        return refused();
    }
    if dest == "dom0" {
        return Reply::Exc("QubesVMInUseError", "'dom0' cannot be removed".into());
    }
    let vm = &q.domains[dest];
    if vm.properties.get("installed_by_rpm").map(String::as_str) == Some("True") {
        return Reply::Exc(
            "QubesVMInUseError",
            format!("VM installed by package manager: {dest}"),
        );
    }
    if vm.state != "Halted" {
        return Reply::Exc(
            "QubesVMNotHaltedError",
            format!("Domain is not powered off: '{dest}'"),
        );
    }
    // app.py on_domain_pre_deleted: another qube's VM property refers to it
    let used = q.domains.iter().any(|(n, other)| {
        n != dest
            && VM_PROPS
                .iter()
                .any(|p| other.properties.get(*p).map(String::as_str) == Some(dest))
    });
    if used {
        return Reply::Exc(
            "QubesVMInUseError",
            format!("Domain is in use: '{dest}';see 'journalctl -u qubesd -e' in dom0 for details"),
        );
    }
    let provided: Vec<String> = q
        .domains
        .iter()
        .filter(|(n, _)| n.as_str() != dest)
        .flat_map(|(_, other)| other.devices.values().flatten())
        .filter_map(|l| l.split(' ').next()?.strip_prefix(&format!("{dest}+")))
        .map(|id| id.split(':').next().unwrap_or(id).to_string())
        .collect();
    if !provided.is_empty() {
        return Reply::Exc(
            "QubesVMInUseError",
            format!(
                "VM has devices attached persistently to other VMs: {}",
                provided.join(", ")
            ),
        );
    }
    q.domains.remove(dest);
    Reply::Ok(String::new())
}
