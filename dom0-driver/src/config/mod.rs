//! The backup config file (seed README, "Backup Config File Format"), checked strictly.
//!
//! Every problem is collected and reported in one run, each with its line, column and key path.
//! Unknown keys are errors (a typo must never be silently ignored); booleans accept the YAML 1.1
//! words the seed's own example uses (`yes`/`no`).

pub mod diag;
pub mod file;
pub mod yaml;

use crate::config::diag::Diagnostic;
use crate::config::yaml::{quote, Node, Pos, Value};
use crate::state::BackupName;
use qzb_protocol::names::{DatasetName, QubeName, SnapLabel, MAX_NAME_LEN};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Include,
    Forgo,
    Void,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Include => "include",
            Role::Forgo => "forgo",
            Role::Void => "void",
        }
    }

    fn list_key(self) -> &'static str {
        match self {
            Role::Include => "include-groups",
            Role::Forgo => "forgo-groups",
            Role::Void => "void-groups",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupKind {
    Qubes,
    Datasets,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Since {
    Beginning,
    Label(SnapLabel),
}

impl Since {
    pub fn label(&self) -> Option<&SnapLabel> {
        match self {
            Since::Beginning => None,
            Since::Label(l) => Some(l),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberName {
    Qube(QubeName),
    Dataset(DatasetName),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: MemberName,
    /// Key path of this member, e.g. `core-qubes.members[2]`.
    pub path: String,
    pub pos: Pos,
}

impl Member {
    /// `qube:<name>` or `dataset:<name>`, the object name the reports use.
    pub fn object_name(&self) -> String {
        match &self.name {
            MemberName::Qube(q) => format!("qube:{q}"),
            MemberName::Dataset(d) => format!("dataset:{d}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub role: Role,
    pub kind: GroupKind,
    pub members: Vec<Member>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub name: BackupName,
    pub target: SnapLabel,
    /// Where `scope.target-snapshot` is, for problems found when planning.
    pub target_pos: Pos,
    pub since: Since,
    pub progressive: bool,
    pub honour_origins: bool,
    pub snapshot_creation: bool,
    pub patching: bool,
    pub receiver_qube: QubeName,
    pub receiver_qube_pos: Pos,
    pub receiver_dataset: DatasetName,
    /// Where `receiver.dataset` is, for problems found when planning.
    pub receiver_dataset_pos: Pos,
    /// Referenced groups, include then forgo then void, each in list order.
    pub groups: Vec<Group>,
}

/// The top-level keys that are not group definitions.
const RESERVED: [&str; 7] = [
    "name",
    "scope",
    "allowed-behaviours",
    "receiver",
    "include-groups",
    "forgo-groups",
    "void-groups",
];

/// Parses and checks a config. On success returns it with any warnings; otherwise every error.
pub fn parse(text: &str) -> Result<(Config, Vec<Diagnostic>), Vec<Diagnostic>> {
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let pos = (e.pos.line > 0).then_some(e.pos);
            return Err(vec![Diagnostic::error(
                "",
                pos,
                format!("YAML syntax error: {}", e.message),
            )]);
        }
    };
    let mut ck = Checker::default();
    let config = ck.config(&root);
    if ck.errors.is_empty() {
        let config = config.expect("a config is built whenever no error was recorded");
        Ok((config, ck.warnings))
    } else {
        ck.errors.sort_by_key(|d| (d.line, d.column));
        Err(ck.errors)
    }
}

#[derive(Default)]
struct Checker {
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

/// `scope`: the target label and its position, since, progressive, honour-origins.
type Scope = ((SnapLabel, Pos), Since, bool, bool);

/// A mapping's entries by key, after duplicate and key-type checks.
struct Entries<'n> {
    map: BTreeMap<String, (&'n Node, &'n Node)>,
    order: Vec<String>,
    pos: Pos,
}

impl<'n> Entries<'n> {
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.map.get(key).map(|(_, v)| *v)
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl Checker {
    fn error(&mut self, path: &str, pos: Pos, message: impl Into<String>) {
        self.errors
            .push(Diagnostic::error(path, Some(pos), message));
    }

    fn warn(&mut self, path: &str, pos: Pos, message: impl Into<String>) {
        self.warnings
            .push(Diagnostic::warning(path, Some(pos), message));
    }

    /// Reads a mapping, reporting non-text keys and duplicates (the first occurrence is kept).
    fn entries<'n>(&mut self, node: &'n Node, path: &str, what: &str) -> Option<Entries<'n>> {
        let Value::Map(pairs) = &node.value else {
            self.error(
                path,
                node.pos,
                format!(
                    "expected {what} (a mapping of keys), found {}",
                    node.describe()
                ),
            );
            return None;
        };
        let mut entries = Entries {
            map: BTreeMap::new(),
            order: Vec::new(),
            pos: node.pos,
        };
        for (k, v) in pairs {
            let key = match &k.value {
                Value::Str(s) => s.clone(),
                _ => {
                    self.error(
                        path,
                        k.pos,
                        format!("a key must be text, found {}", k.describe()),
                    );
                    continue;
                }
            };
            if let Some((first, _)) = entries.map.get(&key) {
                let first = first.pos;
                self.error(
                    &join(path, &key),
                    k.pos,
                    format!(
                        "the key {} appears twice (first at line {}); remove one",
                        quote(&key),
                        first.line
                    ),
                );
                continue;
            }
            entries.order.push(key.clone());
            entries.map.insert(key, (k, v));
        }
        Some(entries)
    }

    /// Reports unknown keys (with a suggestion) and missing required ones.
    fn expect_keys(&mut self, entries: &Entries<'_>, path: &str, keys: &[&str]) {
        for key in &entries.order {
            if !keys.contains(&key.as_str()) {
                let (k, _) = entries.map[key];
                let mut msg = format!("unknown key {}", quote(key));
                if let Some(s) = suggest(key, keys) {
                    msg.push_str(&format!("; did you mean '{s}'?"));
                } else {
                    msg.push_str(&format!("; allowed keys here: {}", keys.join(", ")));
                }
                self.error(&join(path, key), k.pos, msg);
            }
        }
        for key in keys {
            if entries.get(key).is_none() {
                let where_ = if path.is_empty() {
                    "in the config".to_owned()
                } else {
                    format!("under '{path}'")
                };
                self.error(
                    &join(path, key),
                    entries.pos,
                    format!("missing required key '{key}' {where_}"),
                );
            }
        }
    }

    fn text<'n>(&mut self, node: &'n Node, path: &str, what: &str) -> Option<&'n str> {
        match &node.value {
            Value::Str(s) => Some(s),
            _ => {
                self.error(
                    path,
                    node.pos,
                    format!("expected {what}, found {}", node.describe()),
                );
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match &node.value {
            Value::Bool(b) => Some(*b),
            _ => {
                let hint = match &node.value {
                    Value::Str(s)
                        if matches!(
                            s.as_str(),
                            "yes" | "no" | "true" | "false" | "on" | "off" | "y" | "n" | "Y" | "N"
                        ) =>
                    {
                        " (write it unquoted: yes or no)"
                    }
                    _ => "",
                };
                self.error(
                    path,
                    node.pos,
                    format!("expected yes or no, found {}{hint}", node.describe()),
                );
                None
            }
        }
    }

    fn label(&mut self, node: &Node, path: &str) -> Option<SnapLabel> {
        let s = self.text(node, path, "a snapshot label in quotes, like \"@backup-1\"")?;
        match SnapLabel::parse_with_at(s) {
            Ok(l) => Some(l),
            Err(e) => {
                self.error(
                    path,
                    node.pos,
                    format!("{} is not a snapshot label: {e}", quote(s)),
                );
                None
            }
        }
    }

    fn config(&mut self, root: &Node) -> Option<Config> {
        let top = self.entries(root, "", "the config to be a mapping")?;

        let name = top.get("name").and_then(|n| self.config_name(n));
        let scope = top.get("scope").and_then(|n| self.scope(n));
        let behaviours = top
            .get("allowed-behaviours")
            .and_then(|n| self.behaviours(n));
        let receiver = top.get("receiver").and_then(|n| self.receiver(n));
        let groups = self.groups(&top);

        for key in [
            "name",
            "scope",
            "allowed-behaviours",
            "receiver",
            "include-groups",
            "forgo-groups",
            "void-groups",
        ] {
            if top.get(key).is_none() {
                let mut msg = format!("missing required key '{key}'");
                if let Some(typo) = top.order.iter().find(|k| suggest(k, &[key]).is_some()) {
                    msg.push_str(&format!(" (is '{typo}' a misspelling of it?)"));
                }
                self.error(key, top.pos, msg);
            }
        }

        let ((target, target_pos), since, progressive, honour_origins) = scope?;
        let (snapshot_creation, patching) = behaviours?;
        let (receiver_qube, receiver_qube_pos, (receiver_dataset, receiver_dataset_pos)) =
            receiver?;
        self.receivable(&target, target_pos, &receiver_dataset, receiver_dataset_pos);
        Some(Config {
            name: name?,
            target,
            target_pos,
            since,
            progressive,
            honour_origins,
            snapshot_creation,
            patching,
            receiver_qube,
            receiver_qube_pos,
            receiver_dataset,
            receiver_dataset_pos,
            groups: groups?,
        })
    }

    fn config_name(&mut self, node: &Node) -> Option<BackupName> {
        let s = self.text(node, "name", "the backup's name as text")?;
        match BackupName::parse(s) {
            Ok(name) => Some(name),
            Err(e) => {
                self.error(
                    "name",
                    node.pos,
                    format!("{} is not a valid backup name: {e}", quote(s)),
                );
                None
            }
        }
    }

    /// Refuses a target label that no snapshot could carry on the receiver, where it is stored as
    /// `<receiver dataset>/<pool>[/…]@label` (at least one character of source pool). Which
    /// datasets are too long with it is only known with the inventory: the planner checks that.
    fn receivable(&mut self, label: &SnapLabel, label_pos: Pos, root: &DatasetName, root_pos: Pos) {
        let shortest = root.as_str().len() + "/p@".len() + label.as_str().len();
        if shortest > MAX_NAME_LEN {
            self.error(
                "scope.target-snapshot",
                label_pos,
                format!(
                    "the label {label} is {} bytes long: with the receiver dataset {root} (line {}), even a one-letter pool's snapshot would be received as a name of {shortest} bytes, and ZFS allows at most {MAX_NAME_LEN}; use a shorter label",
                    label.as_str().len(),
                    root_pos.line
                ),
            );
        }
    }

    fn scope(&mut self, node: &Node) -> Option<Scope> {
        let keys = ["target-snapshot", "since", "progressive", "honour-origins"];
        let e = self.entries(node, "scope", "'scope' to hold its settings")?;
        self.expect_keys(&e, "scope", &keys);
        let target = e
            .get("target-snapshot")
            .and_then(|n| {
                if n.as_str() == Some("beginning") {
                    self.error("scope.target-snapshot", n.pos, "'beginning' is only valid for 'since'; the target must be a snapshot label like \"@backup-1\"");
                    return None;
                }
                self.label(n, "scope.target-snapshot")
            });
        let since = e.get("since").and_then(|n| {
            if n.as_str() == Some("beginning") {
                Some(Since::Beginning)
            } else {
                self.text(
                    n,
                    "scope.since",
                    "'beginning' or a snapshot label in quotes",
                )?;
                self.label(n, "scope.since").map(Since::Label)
            }
        });
        let progressive = e
            .get("progressive")
            .and_then(|n| self.boolean(n, "scope.progressive"));
        let honour = e
            .get("honour-origins")
            .and_then(|n| self.boolean(n, "scope.honour-origins"));
        if let (Some(t), Some(Since::Label(s)), Some(n)) = (&target, &since, e.get("since")) {
            if t == s {
                self.error("scope.since", n.pos, format!("'since' is the same snapshot as 'target-snapshot' ({t}); a backup must end after it starts (use the previous backup's target snapshot, or 'beginning')"));
            }
        }
        let target_pos = e.get("target-snapshot").map_or(e.pos, |n| n.pos);
        Some(((target?, target_pos), since?, progressive?, honour?))
    }

    fn behaviours(&mut self, node: &Node) -> Option<(bool, bool)> {
        let keys = ["snapshot-creation", "patching"];
        let e = self.entries(
            node,
            "allowed-behaviours",
            "'allowed-behaviours' to hold its settings",
        )?;
        self.expect_keys(&e, "allowed-behaviours", &keys);
        let creation = e
            .get("snapshot-creation")
            .and_then(|n| self.boolean(n, "allowed-behaviours.snapshot-creation"));
        let patching = e
            .get("patching")
            .and_then(|n| self.boolean(n, "allowed-behaviours.patching"));
        Some((creation?, patching?))
    }

    fn receiver(&mut self, node: &Node) -> Option<(QubeName, Pos, (DatasetName, Pos))> {
        let keys = ["qube", "dataset"];
        let e = self.entries(node, "receiver", "'receiver' to hold 'qube' and 'dataset'")?;
        self.expect_keys(&e, "receiver", &keys);
        let qube = e.get("qube").and_then(|n| {
            let s = self.text(n, "receiver.qube", "the backup qube's name")?;
            if s == "dom0" {
                self.error("receiver.qube", n.pos, "the receiver cannot be dom0: backups are written inside a backup qube (an AppVM, DisposableVM or StandaloneVM)");
                return None;
            }
            match QubeName::parse(s) {
                Ok(q) => Some((q, n.pos)),
                Err(e) => {
                    self.error("receiver.qube", n.pos, format!("{} is not a valid qube name: {e}", quote(s)));
                    None
                }
            }
        });
        let dataset = e.get("dataset").and_then(|n| {
            let s = self.text(n, "receiver.dataset", "a ZFS dataset name")?;
            match DatasetName::parse(s) {
                Ok(d) => Some((d, n.pos)),
                Err(e) => {
                    self.error(
                        "receiver.dataset",
                        n.pos,
                        format!("{} is not a valid ZFS dataset name: {e}", quote(s)),
                    );
                    None
                }
            }
        });
        let (q, pos) = qube?;
        Some((q, pos, dataset?))
    }

    /// The three group lists and the group definitions they reference.
    fn groups(&mut self, top: &Entries<'_>) -> Option<Vec<Group>> {
        let mut ok = true;
        // name → (role, list path, position) of its first reference
        let mut referenced: HashMap<String, (Role, String, Pos)> = HashMap::new();
        let mut refs: Vec<(Role, String, String, Pos)> = Vec::new();
        let mut any_include = false;
        for role in [Role::Include, Role::Forgo, Role::Void] {
            let key = role.list_key();
            let Some(list) = top.get(key) else {
                ok = false;
                continue;
            };
            let items = match &list.value {
                Value::Seq(items) => items,
                Value::Null => {
                    self.error(
                        key,
                        list.pos,
                        format!("'{key}' is empty; write [] for an empty list"),
                    );
                    ok = false;
                    continue;
                }
                _ => {
                    self.error(
                        key,
                        list.pos,
                        format!("expected a list of group names, found {}", list.describe()),
                    );
                    ok = false;
                    continue;
                }
            };
            if role == Role::Include && !items.is_empty() {
                any_include = true;
            }
            for (i, item) in items.iter().enumerate() {
                let path = format!("{key}[{i}]");
                let Some(name) = self.text(item, &path, "a group name") else {
                    ok = false;
                    continue;
                };
                if RESERVED.contains(&name) {
                    self.error(
                        &path,
                        item.pos,
                        format!("'{name}' is a reserved key of the config, not a group"),
                    );
                    ok = false;
                    continue;
                }
                if let Some((first_role, first_path, first_pos)) = referenced.get(name) {
                    let same = if *first_role == role {
                        "twice in the same list".to_owned()
                    } else {
                        format!("in both '{}' and '{key}'", first_role.list_key())
                    };
                    self.error(&path, item.pos, format!("group '{name}' is listed {same} (first at {first_path}, line {}); each group gets exactly one designation", first_pos.line));
                    ok = false;
                    continue;
                }
                referenced.insert(name.to_owned(), (role, path.clone(), item.pos));
                refs.push((role, name.to_owned(), path, item.pos));
            }
        }
        if top.get("include-groups").is_some() && !any_include {
            let pos = top.get("include-groups").map(|n| n.pos).unwrap_or(top.pos);
            self.error(
                "include-groups",
                pos,
                "no group is included, so nothing would be backed up",
            );
            ok = false;
        }

        // Every non-reserved top-level key is a group definition; check them all, referenced or
        // not, so a misspelt reserved key or a broken spare group is caught too.
        let mut defined: HashMap<String, (GroupKind, Vec<Member>)> = HashMap::new();
        for key in &top.order {
            if RESERVED.contains(&key.as_str()) {
                continue;
            }
            let (k, v) = top.map[key];
            if !referenced.contains_key(key) {
                // Not a group anything refers to: a misspelt reserved key, or something that is
                // no group at all (not a mapping with 'type' or 'members').
                let close = suggest(key, &RESERVED);
                let group_like = match &v.value {
                    Value::Map(pairs) => pairs
                        .iter()
                        .any(|(k, _)| matches!(k.as_str(), Some("type" | "members"))),
                    _ => false,
                };
                if close.is_some() || !group_like {
                    self.error(key, k.pos, unknown_top_level_key(key, close));
                    ok = false;
                    continue;
                }
            }
            match self.group_definition(key, v) {
                Some(def) => {
                    defined.insert(key.clone(), def);
                }
                None => ok = false,
            }
            if !referenced.contains_key(key) {
                self.warn(key, k.pos, format!("group '{key}' is defined but not listed in include-groups, forgo-groups or void-groups, so it has no effect"));
            }
        }

        let mut groups = Vec::new();
        for (role, name, path, pos) in refs {
            match defined.get(&name) {
                Some((kind, members)) => groups.push(Group {
                    name,
                    role,
                    kind: *kind,
                    members: members.clone(),
                }),
                None if top.get(&name).is_some() => {} // defined but broken: already reported
                None => {
                    let mut msg = format!("group '{name}' is not defined; add a top-level '{name}:' with 'type' and 'members'");
                    let names: Vec<&str> = top
                        .order
                        .iter()
                        .map(String::as_str)
                        .filter(|k| !RESERVED.contains(k))
                        .collect();
                    if let Some(s) = suggest(&name, &names) {
                        msg.push_str(&format!(" (or did you mean '{s}'?)"));
                    }
                    self.error(&path, pos, msg);
                    ok = false;
                }
            }
        }
        ok.then_some(groups)
    }

    fn group_definition(&mut self, name: &str, node: &Node) -> Option<(GroupKind, Vec<Member>)> {
        let e = self.entries(node, name, "a group definition with 'type' and 'members'")?;
        self.expect_keys(&e, name, &["type", "members"]);
        let kind_path = join(name, "type");
        let kind = e.get("type").and_then(|n| match n.as_str() {
            Some("qubes") => Some(GroupKind::Qubes),
            Some("datasets") => Some(GroupKind::Datasets),
            _ => {
                let mut msg = format!("expected 'qubes' or 'datasets', found {}", n.describe());
                if let Some(s) = n.as_str().and_then(|s| suggest(s, &["qubes", "datasets"])) {
                    msg.push_str(&format!("; did you mean '{s}'?"));
                }
                self.error(&kind_path, n.pos, msg);
                None
            }
        });
        let members_path = join(name, "members");
        let members_node = e.get("members");
        let items = members_node.and_then(|n| match &n.value {
            Value::Seq(items) if !items.is_empty() => Some(items),
            Value::Seq(_) | Value::Null => {
                self.error(
                    &members_path,
                    n.pos,
                    format!(
                        "group '{name}' has no members; list at least one, or remove the group"
                    ),
                );
                None
            }
            _ => {
                self.error(
                    &members_path,
                    n.pos,
                    format!("expected a list of members, found {}", n.describe()),
                );
                None
            }
        });
        let kind = kind?;
        let items = items?;
        let mut members = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let path = format!("{members_path}[{i}]");
            let what = match kind {
                GroupKind::Qubes => "a qube name",
                GroupKind::Datasets => "a ZFS dataset name",
            };
            let Some(s) = self.text(item, &path, what) else {
                ok = false;
                continue;
            };
            if let Some(first) = seen.get(s) {
                self.error(
                    &path,
                    item.pos,
                    format!(
                        "{} is listed twice in group '{name}' (first at line {first})",
                        quote(s)
                    ),
                );
                ok = false;
                continue;
            }
            seen.insert(s.to_owned(), item.pos.line);
            let parsed = match kind {
                GroupKind::Qubes => QubeName::parse(s).map(MemberName::Qube).map_err(|e| {
                    let hint = if s.contains('/') {
                        " (it looks like a dataset: put it in a group of type 'datasets')"
                    } else {
                        ""
                    };
                    format!("{} is not a valid qube name: {e}{hint}", quote(s))
                }),
                GroupKind::Datasets => DatasetName::parse(s)
                    .map(MemberName::Dataset)
                    .map_err(|e| format!("{} is not a valid ZFS dataset name: {e}", quote(s))),
            };
            match parsed {
                Ok(m) => members.push(Member {
                    name: m,
                    path,
                    pos: item.pos,
                }),
                Err(msg) => {
                    self.error(&path, item.pos, msg);
                    ok = false;
                }
            }
        }
        ok.then_some((kind, members))
    }
}

/// The message for a top-level key that is neither reserved nor a group.
fn unknown_top_level_key(key: &str, close: Option<&str>) -> String {
    let mut msg = format!("unknown top-level key {}", quote(key));
    if let Some(s) = close {
        msg.push_str(&format!("; did you mean '{s}'?"));
    }
    msg.push_str(&format!(
        " The top-level keys are {}; any other top-level key defines a group (a mapping with 'type' and 'members') and must be listed in include-groups, forgo-groups or void-groups",
        RESERVED.join(", ")
    ));
    msg
}

/// The closest allowed word to a typo, if it is close enough to be a likely misspelling.
fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d > 0 && *d <= (c.len() / 4).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests;

/// Fixtures other modules' tests share.
#[cfg(test)]
pub mod tests_support {
    pub use super::tests::SEED_EXAMPLE;
}
