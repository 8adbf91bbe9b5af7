//! Groups: the include/forgo/void group lists and the group definitions they reference, each
//! member checked as a qube or dataset name; unknown top-level keys are reported here.

use super::checker::{join, suggest, Checker, Entries};
use super::{Group, GroupKind, Member, MemberName, Role};
use crate::config::yaml::{quote, Node, Pos, Value};
use qzb_protocol::names::{DatasetName, QubeName};
use std::collections::HashMap;

/// The required top-level keys; none of them is a group definition.
pub(super) const RESERVED: [&str; 7] = [
    "name",
    "scope",
    "allowed-behaviours",
    "receiver",
    "include-groups",
    "forgo-groups",
    "void-groups",
];

/// The optional top-level keys; not group definitions either.
pub(super) const OPTIONAL: [&str; 1] = ["retention"];

/// A top-level key that is not a group definition.
fn is_reserved(key: &str) -> bool {
    RESERVED.contains(&key) || OPTIONAL.contains(&key)
}

/// Every top-level key that is not a group, for suggestions.
const ALL_KEYS: [&str; 8] = [
    "name",
    "scope",
    "allowed-behaviours",
    "receiver",
    "include-groups",
    "forgo-groups",
    "void-groups",
    "retention",
];

impl Checker {
    /// The three group lists and the group definitions they reference.
    pub(super) fn groups(&mut self, top: &Entries<'_>) -> Option<Vec<Group>> {
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
                if is_reserved(name) {
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
            if is_reserved(key) {
                continue;
            }
            let (k, v) = top.map[key];
            if !referenced.contains_key(key) {
                // Not a group anything refers to: a misspelt reserved key, or something that is
                // no group at all (not a mapping with 'type' or 'members').
                let close = suggest(key, &ALL_KEYS);
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
                        .filter(|k| !is_reserved(k))
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
        " The top-level keys are {}, and optionally {}; any other top-level key defines a group (a mapping with 'type' and 'members') and must be listed in include-groups, forgo-groups or void-groups",
        RESERVED.join(", "),
        OPTIONAL.join(", ")
    ));
    msg
}
