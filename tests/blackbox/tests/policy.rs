//! Checks the qrexec files shipped in `qrexec-policy/`: the dom0 policy, the service file and
//! the rpc-config file of the backup qube.
//!
//! The policy is read with a small evaluator of the Qubes R4.2+ policy format
//! (`/etc/qubes/policy.d/*.policy`, qubes-core-qrexec `qrexec/policy/parser.py`): one rule per
//! line, `SERVICE ARGUMENT SOURCE TARGET ACTION [PARAM=VALUE ...]`, the first matching rule
//! decides, no matching rule means deny. It understands only the forms this project uses
//! (`@adminvm`/`dom0`, `@anyvm`, `@tag:NAME`, qube names, `*` or `+ARG` arguments,
//! allow/deny/ask); anything else in the file is an error, so a new construct cannot slip past
//! these checks unexamined.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const SERVICE: &str = "zfsbackup.Receive";
const TAG: &str = "zfs-backup-receiver";
const RECEIVER_BINARY: &str = "/usr/libexec/qubes-zfs-backup/qubes-zfs-backup-receiver";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

fn read(relative: &str) -> String {
    let path = repo_path(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The one policy file the dom0 package installs.
fn shipped_policy() -> String {
    read("qrexec-policy/policy.d/50-qubes-zfs-backup.policy")
}

// ---------------------------------------------------------------------------------------------
// The evaluator
// ---------------------------------------------------------------------------------------------

/// A source or target column of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Spec {
    /// `@adminvm` or its alias `dom0`.
    AdminVm,
    /// `@anyvm`: every domain except dom0 (it also matches `@dispvm`/`@default` as a target).
    AnyVm,
    /// `@tag:NAME`: a qube carrying the tag.
    Tag(String),
    /// A literal qube name.
    Name(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Allow,
    Deny,
    Ask,
}

#[derive(Debug, Clone)]
struct Rule {
    lineno: usize,
    /// `None` for `*`.
    service: Option<String>,
    /// `None` for `*`, otherwise starts with `+`.
    argument: Option<String>,
    source: Spec,
    target: Spec,
    action: Action,
    params: BTreeMap<String, String>,
}

fn is_rpc_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+')
}

fn is_qube_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 31
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn parse_spec(token: &str, column: &str) -> Result<Spec, String> {
    match token {
        "@adminvm" | "dom0" => Ok(Spec::AdminVm),
        "@anyvm" => Ok(Spec::AnyVm),
        _ => {
            if let Some(tag) = token.strip_prefix("@tag:") {
                if !tag.is_empty()
                    && tag
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
                {
                    return Ok(Spec::Tag(tag.to_owned()));
                }
                return Err(format!("invalid tag in {column} {token:?}"));
            }
            if is_qube_name(token) {
                return Ok(Spec::Name(token.to_owned()));
            }
            Err(format!(
                "{column} {token:?} is not a form this evaluator understands"
            ))
        }
    }
}

fn parse_rule(line: &str, lineno: usize) -> Result<Rule, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [service, argument, source, target, action, params @ ..] = fields.as_slice() else {
        return Err("wrong number of fields".to_owned());
    };
    let service = match *service {
        "*" => None,
        s if !s.is_empty() && s.chars().all(|c| is_rpc_name_char(c) && c != '+') => {
            Some(s.to_owned())
        }
        s => return Err(format!("invalid service {s:?}")),
    };
    let argument = match *argument {
        "*" => None,
        a if a.starts_with('+') && a.chars().all(is_rpc_name_char) => Some(a.to_owned()),
        a => return Err(format!("invalid argument {a:?}")),
    };
    if service.is_none() && argument.is_some() {
        return Err("only * argument allowed for * service".to_owned());
    }
    let source = parse_spec(source, "source")?;
    let target = parse_spec(target, "target")?;
    let action = match *action {
        "allow" => Action::Allow,
        "deny" => Action::Deny,
        "ask" => Action::Ask,
        a => return Err(format!("invalid action {a:?}")),
    };
    let allowed_keys: &[&str] = match action {
        Action::Deny => &["notify"],
        Action::Allow => &["target", "user", "notify", "autostart"],
        Action::Ask => &["target", "default_target", "user", "notify", "autostart"],
    };
    let mut parsed = BTreeMap::new();
    for param in params {
        let (key, value) = param
            .split_once('=')
            .ok_or_else(|| format!("invalid action parameter {param:?}"))?;
        if !allowed_keys.contains(&key) {
            return Err(format!("parameter {key:?} not valid for {action:?}"));
        }
        if matches!(key, "notify" | "autostart") && !matches!(value, "yes" | "no") {
            return Err(format!("{key} must be yes or no"));
        }
        if parsed.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(format!("parameter given twice: {key:?}"));
        }
    }
    Ok(Rule {
        lineno,
        service,
        argument,
        source,
        target,
        action,
        params: parsed,
    })
}

/// Parses a whole policy file; any line that is not a comment, blank or a rule of a known form
/// (directives such as `!include` included) is an error.
fn parse_policy(text: &str) -> Result<Vec<Rule>, String> {
    let mut rules = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let lineno = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let rule = parse_rule(line, lineno).map_err(|e| format!("line {lineno}: {e}: {raw:?}"))?;
        rules.push(rule);
    }
    Ok(rules)
}

/// Who makes the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller<'a> {
    Dom0,
    Qube(&'a str),
}

/// What the caller asked for as the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intended<'a> {
    Dom0,
    Qube(&'a str),
    /// `@dispvm`: a new disposable.
    DispVm,
    /// `@default`: no target given, policy should pick.
    Default,
}

/// The qubes of the imagined system and their tags.
struct System {
    tags: BTreeMap<&'static str, BTreeSet<&'static str>>,
}

impl System {
    fn has_tag(&self, qube: &str, tag: &str) -> bool {
        self.tags.get(qube).is_some_and(|tags| tags.contains(tag))
    }
}

fn source_matches(spec: &Spec, caller: Caller<'_>, system: &System) -> bool {
    match (spec, caller) {
        (Spec::AdminVm, Caller::Dom0) => true,
        (Spec::AnyVm, Caller::Qube(_)) => true,
        (Spec::Tag(tag), Caller::Qube(q)) => system.has_tag(q, tag),
        (Spec::Name(name), Caller::Qube(q)) => name == q,
        _ => false,
    }
}

fn target_matches(spec: &Spec, target: Intended<'_>, system: &System) -> bool {
    match (spec, target) {
        (Spec::AdminVm, Intended::Dom0) => true,
        (Spec::AnyVm, Intended::Dom0) => false,
        (Spec::AnyVm, _) => true,
        (Spec::Tag(tag), Intended::Qube(q)) => system.has_tag(q, tag),
        (Spec::Name(name), Intended::Qube(q)) => name == q,
        _ => false,
    }
}

/// The first rule matching the call, or `None` (which qrexec treats as deny, but then a later
/// policy file could still decide).
fn first_match<'r>(
    rules: &'r [Rule],
    service: &str,
    argument: &str,
    caller: Caller<'_>,
    target: Intended<'_>,
    system: &System,
) -> Option<&'r Rule> {
    rules.iter().find(|rule| {
        rule.service.as_deref().is_none_or(|s| s == service)
            && rule.argument.as_deref().is_none_or(|a| a == argument)
            && source_matches(&rule.source, caller, system)
            && target_matches(&rule.target, target, system)
    })
}

// ---------------------------------------------------------------------------------------------
// The checks (functions returning Err, so that the mutation test can prove they bite)
// ---------------------------------------------------------------------------------------------

const BACKUP_QUBE: &str = "backups";
const QUBES: &[&str] = &[BACKUP_QUBE, "backups-old", "work", "sys-usb", "disp1234"];
const ARGUMENTS: &[&str] = &["+", "+backuppool", "+x"];

fn system() -> System {
    let mut tags = BTreeMap::new();
    tags.insert(BACKUP_QUBE, BTreeSet::from([TAG, "created-by-dom0"]));
    tags.insert(
        "backups-old",
        BTreeSet::from(["zfs-backup", "created-by-dom0"]),
    );
    tags.insert("work", BTreeSet::new());
    tags.insert("sys-usb", BTreeSet::from(["audiovm"]));
    tags.insert("disp1234", BTreeSet::from(["disp-created-by-dom0"]));
    System { tags }
}

fn all_targets() -> Vec<Intended<'static>> {
    let mut targets: Vec<Intended<'static>> = QUBES.iter().map(|q| Intended::Qube(q)).collect();
    targets.extend([
        Intended::Dom0,
        Intended::DispVm,
        Intended::Default,
        Intended::Qube("no-such-qube"),
    ]);
    targets
}

/// Every call of the service from a qube, to any target, is denied by an explicit line.
fn check_qubes_cannot_call(rules: &[Rule]) -> Result<(), String> {
    let system = system();
    for caller in QUBES {
        for target in all_targets() {
            for argument in ARGUMENTS {
                match first_match(
                    rules,
                    SERVICE,
                    argument,
                    Caller::Qube(caller),
                    target,
                    &system,
                ) {
                    Some(rule) if rule.action == Action::Deny => {}
                    Some(rule) => {
                        return Err(format!(
                            "{caller} -> {target:?} ({SERVICE}{argument}) is {:?} by line {}",
                            rule.action, rule.lineno
                        ))
                    }
                    None => {
                        return Err(format!(
                            "{caller} -> {target:?} ({SERVICE}{argument}) matches no line \
                             and would fall through to later policy files"
                        ))
                    }
                }
            }
        }
    }
    Ok(())
}

/// dom0 may call the tagged qube, and nothing else.
fn check_dom0_reaches_only_tagged_qube(rules: &[Rule]) -> Result<(), String> {
    let system = system();
    for target in all_targets() {
        for argument in ARGUMENTS {
            let rule = first_match(rules, SERVICE, argument, Caller::Dom0, target, &system)
                .ok_or_else(|| format!("dom0 -> {target:?} matches no line"))?;
            let expect_allow = target == Intended::Qube(BACKUP_QUBE);
            match (expect_allow, rule.action) {
                (true, Action::Allow) => {
                    if rule.params.contains_key("target") {
                        return Err(format!(
                            "line {} redirects the call elsewhere (target=)",
                            rule.lineno
                        ));
                    }
                }
                (false, Action::Deny) => {}
                (_, action) => {
                    return Err(format!(
                        "dom0 -> {target:?} ({SERVICE}{argument}) is {action:?} by line {}",
                        rule.lineno
                    ))
                }
            }
        }
    }
    Ok(())
}

/// Reading the file alone: every allow/ask line has dom0 as its source and the tag as its
/// target, without redirect; and the file governs only our service.
fn check_lines_statically(rules: &[Rule]) -> Result<(), String> {
    if rules.is_empty() {
        return Err("the policy file has no rules".to_owned());
    }
    for rule in rules {
        if rule.service.as_deref() != Some(SERVICE) {
            return Err(format!(
                "line {}: a vendor file for {SERVICE} must not govern service {:?}",
                rule.lineno,
                rule.service.as_deref().unwrap_or("*")
            ));
        }
        if rule.action == Action::Deny {
            continue;
        }
        if rule.source != Spec::AdminVm {
            return Err(format!(
                "line {}: {:?} for source {:?}, only dom0 may be allowed",
                rule.lineno, rule.action, rule.source
            ));
        }
        if rule.target != Spec::Tag(TAG.to_owned()) || rule.params.contains_key("target") {
            return Err(format!(
                "line {}: {:?} to {:?}, only @tag:{TAG} may be allowed",
                rule.lineno, rule.action, rule.target
            ));
        }
    }
    Ok(())
}

fn check_all(text: &str) -> Result<(), String> {
    let rules = parse_policy(text)?;
    check_lines_statically(&rules)?;
    check_qubes_cannot_call(&rules)?;
    check_dom0_reaches_only_tagged_qube(&rules)
}

fn parsed_shipped_policy() -> Vec<Rule> {
    parse_policy(&shipped_policy()).unwrap_or_else(|e| panic!("shipped policy: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn policy_dir_holds_one_vendor_file_named_so_qrexec_reads_it() {
    // qrexec reads only `*.policy` files, and refuses the WHOLE policy directory (every call
    // on the machine) if a file name has characters outside [0-9a-z_.-].
    let dir = repo_path("qrexec-policy/policy.d");
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["50-qubes-zfs-backup.policy"]);
    let name = &names[0];
    assert!(name
        .chars()
        .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase() || matches!(c, '_' | '.' | '-')));
    let number: u32 = name[..2].parse().unwrap();
    assert!((50..=80).contains(&number), "vendor files use 50-80");
}

#[test]
fn policy_has_only_lines_the_evaluator_understands() {
    let rules = parsed_shipped_policy();
    assert!(!rules.is_empty());
}

#[test]
fn policy_governs_only_our_service_and_allows_nothing_but_dom0_to_the_tag() {
    check_lines_statically(&parsed_shipped_policy()).unwrap();
}

#[test]
fn qubes_calling_the_service_are_denied_for_every_target() {
    check_qubes_cannot_call(&parsed_shipped_policy()).unwrap();
}

#[test]
fn dom0_may_call_a_qube_tagged_zfs_backup_receiver() {
    let rules = parsed_shipped_policy();
    let rule = first_match(
        &rules,
        SERVICE,
        "+",
        Caller::Dom0,
        Intended::Qube(BACKUP_QUBE),
        &system(),
    )
    .expect("a line for dom0 -> tagged qube");
    assert_eq!(rule.action, Action::Allow);
    assert!(rule.params.is_empty(), "no redirect/user/autostart params");
}

#[test]
fn dom0_is_denied_every_qube_without_the_tag() {
    check_dom0_reaches_only_tagged_qube(&parsed_shipped_policy()).unwrap();
}

#[test]
fn checks_reject_a_policy_that_lets_qubes_call_the_service() {
    let shipped = shipped_policy();
    check_all(&shipped).unwrap();

    let bad_lines = [
        "zfsbackup.Receive * @anyvm @anyvm allow",
        "zfsbackup.Receive * @anyvm @tag:zfs-backup-receiver ask",
        "zfsbackup.Receive +x work backups allow",
        "zfsbackup.Receive * @tag:zfs-backup-receiver @adminvm allow",
        "zfsbackup.Receive * @adminvm work allow",
        "zfsbackup.Receive * @adminvm @tag:zfs-backup-receiver allow target=work",
        "* * @anyvm @anyvm deny",
    ];
    for bad in bad_lines {
        let first = format!("{bad}\n{shipped}");
        assert!(check_all(&first).is_err(), "not caught at the top: {bad}");
        let last = format!("{shipped}\n{bad}\n");
        assert!(check_all(&last).is_err(), "not caught at the bottom: {bad}");
    }

    // Removing the explicit denies lets calls fall through to later files: caught too.
    let only_allow: String = shipped
        .lines()
        .filter(|l| !l.trim_end().ends_with("deny"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(check_all(&only_allow).is_err());

    // Syntax outside the evaluator's forms fails instead of being skipped.
    for unknown in [
        "!include-dir /etc/qubes/policy.d/include",
        "zfsbackup.Receive * * @anyvm deny",
        "zfsbackup.Receive * @anyvm @dispvm:backups deny",
        "zfsbackup.Receive * @anyvm @anyvm deny bogus=1",
        "zfsbackup.Receive * @anyvm @anyvm",
    ] {
        let text = format!("{shipped}\n{unknown}\n");
        assert!(parse_policy(&text).is_err(), "accepted: {unknown}");
    }
}

#[test]
fn rpc_config_forces_root_and_does_not_wait_for_a_session() {
    let text = read("qrexec-policy/rpc-config/zfsbackup.Receive");
    let mut settings = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line:?}"));
        let key = key.trim();
        assert!(
            ["force-user", "wait-for-session", "skip-service-descriptor"].contains(&key),
            "unknown rpc-config key {key:?}"
        );
        assert!(settings.insert(key, value.trim()).is_none(), "{key} twice");
    }
    assert_eq!(settings.get("force-user"), Some(&"'root'"));
    assert!(matches!(
        settings.get("wait-for-session"),
        None | Some(&"false")
    ));
    // skip-service-descriptor only applies to socket services; this one is an executable.
    assert!(!settings.contains_key("skip-service-descriptor"));
}

#[test]
fn service_file_execs_the_receiver_the_template_package_installs() {
    use std::os::unix::fs::PermissionsExt;
    let path = repo_path("qrexec-policy/qubes-rpc/zfsbackup.Receive");
    let mode = fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "service file must be executable");
    let text = read("qrexec-policy/qubes-rpc/zfsbackup.Receive");
    assert!(text.starts_with("#!/bin/sh\n"));
    let commands: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(commands, [format!("exec {RECEIVER_BINARY} \"$@\"")]);

    let spec = read("rpm/qubes-zfs-backup-receiver.spec");
    let in_spec = RECEIVER_BINARY.replace("/usr/libexec", "%{_libexecdir}");
    assert!(
        spec.contains(&in_spec),
        "rpm/qubes-zfs-backup-receiver.spec must install {in_spec}"
    );
}
