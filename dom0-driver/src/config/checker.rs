//! The strict reader's primitives: the `Checker` that collects every error and warning with its
//! key path and position, and its typed reads of mappings (duplicate and unknown keys), text,
//! booleans and snapshot labels, with a suggestion for a likely typo.

use crate::config::diag::Diagnostic;
use crate::config::yaml::{quote, Node, Pos, Value};
use qzb_protocol::names::SnapLabel;
use std::collections::BTreeMap;

#[derive(Default)]
pub(super) struct Checker {
    pub(super) errors: Vec<Diagnostic>,
    pub(super) warnings: Vec<Diagnostic>,
}

/// A mapping's entries by key, after duplicate and key-type checks.
pub(super) struct Entries<'n> {
    pub(super) map: BTreeMap<String, (&'n Node, &'n Node)>,
    pub(super) order: Vec<String>,
    pub(super) pos: Pos,
}

impl<'n> Entries<'n> {
    pub(super) fn get(&self, key: &str) -> Option<&'n Node> {
        self.map.get(key).map(|(_, v)| *v)
    }
}

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl Checker {
    pub(super) fn error(&mut self, path: &str, pos: Pos, message: impl Into<String>) {
        self.errors
            .push(Diagnostic::error(path, Some(pos), message));
    }

    pub(super) fn warn(&mut self, path: &str, pos: Pos, message: impl Into<String>) {
        self.warnings
            .push(Diagnostic::warning(path, Some(pos), message));
    }

    /// Reads a mapping, reporting non-text keys and duplicates (the first occurrence is kept).
    pub(super) fn entries<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        what: &str,
    ) -> Option<Entries<'n>> {
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
    pub(super) fn expect_keys(&mut self, entries: &Entries<'_>, path: &str, keys: &[&str]) {
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

    pub(super) fn text<'n>(&mut self, node: &'n Node, path: &str, what: &str) -> Option<&'n str> {
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

    pub(super) fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
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

    pub(super) fn label(&mut self, node: &Node, path: &str) -> Option<SnapLabel> {
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
}

/// The closest allowed word to a typo, if it is close enough to be a likely misspelling.
pub(super) fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
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
