//! The top level of the config and its fixed sections: name, scope, allowed-behaviours and
//! receiver, each read into its part of `Config`; required keys that are missing are named.

use super::checker::{suggest, Checker};
use super::{Config, Since};
use crate::config::yaml::{quote, Node, Pos};
use crate::config::BackupName;
use qzb_protocol::names::{DatasetName, QubeName, SnapLabel, MAX_NAME_LEN};

/// `scope`: the target label and its position, since, progressive, honour-origins.
type Scope = ((SnapLabel, Pos), Since, bool, bool);

impl Checker {
    pub(super) fn config(&mut self, root: &Node) -> Option<Config> {
        let top = self.entries(root, "", "the config to be a mapping")?;

        let name = top.get("name").and_then(|n| self.config_name(n));
        let scope = top.get("scope").and_then(|n| self.scope(n));
        let behaviours = top
            .get("allowed-behaviours")
            .and_then(|n| self.behaviours(n));
        let receiver = top.get("receiver").and_then(|n| self.receiver(n));
        // Optional: without it, `prune` keeps everything. Its errors make the config invalid.
        let retention = top.get("retention").map(|n| self.retention(n));
        let groups = self.groups(&top);

        for key in super::groups::RESERVED {
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
            retention: match retention {
                Some(r) => Some(r?),
                None => None,
            },
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
        let progressive = self.flag(&e, "scope", "progressive");
        let honour = self.flag(&e, "scope", "honour-origins");
        if let (Some(t), Some(Since::Label(s)), Some(n)) = (&target, &since, e.get("since")) {
            if t == s {
                self.error("scope.since", n.pos, format!("'since' is the same snapshot as 'target-snapshot' ({t}); a backup must end after it starts (use the previous backup's target snapshot, or 'beginning')"));
            }
        }
        let target_pos = e.get("target-snapshot").map_or(e.pos, |n| n.pos);
        Some(((target?, target_pos), since?, progressive?, honour?))
    }

    /// The boolean `key` of a section, if it is there and a boolean (else the error is noted).
    fn flag(
        &mut self,
        e: &crate::config::checker::Entries,
        section: &str,
        key: &str,
    ) -> Option<bool> {
        e.get(key)
            .and_then(|n| self.boolean(n, &format!("{section}.{key}")))
    }

    fn behaviours(&mut self, node: &Node) -> Option<(bool, bool)> {
        let keys = ["snapshot-creation", "patching"];
        let e = self.entries(
            node,
            "allowed-behaviours",
            "'allowed-behaviours' to hold its settings",
        )?;
        self.expect_keys(&e, "allowed-behaviours", &keys);
        let creation = self.flag(&e, "allowed-behaviours", "snapshot-creation");
        let patching = self.flag(&e, "allowed-behaviours", "patching");
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
}
