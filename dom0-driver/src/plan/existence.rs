//! Pass 2 of validation: the receiver qube and every qube and dataset the config names exist on
//! the system, and the receiver qube is of a class a backup may be written into.

use super::Planner;
use crate::config::diag::Diagnostic;
use crate::config::MemberName;

/// Qube classes a backup may be written into.
const RECEIVER_CLASSES: [&str; 3] = ["AppVM", "DispVM", "StandaloneVM"];

impl Planner<'_> {
    /// Pass 2 of validation: everything named in the config exists on the system.
    pub(super) fn check_existence(&mut self) {
        let qube = &self.config.receiver_qube;
        match self.inv.qubes.qubes.get(qube.as_str()) {
            None => self.plan.errors.push(Diagnostic::error(
                "receiver.qube",
                Some(self.config.receiver_qube_pos),
                format!("qube '{qube}' does not exist"),
            )),
            Some(q) if !RECEIVER_CLASSES.contains(&q.class.as_str()) => {
                self.plan.errors.push(Diagnostic::error(
                    "receiver.qube",
                    Some(self.config.receiver_qube_pos),
                    format!(
                    "qube '{qube}' is a {}; the backup must go to an AppVM, DispVM or StandaloneVM",
                    q.class
                ),
                ))
            }
            Some(_) => {}
        }
        let members: Vec<_> = self.members().collect();
        for (_, _, m) in members {
            let missing = match &m.name {
                MemberName::Qube(q) => (!self.inv.qubes.qubes.contains_key(q.as_str()))
                    .then(|| format!("qube '{q}' does not exist")),
                MemberName::Dataset(d) => self
                    .inv
                    .zfs
                    .dataset(d.as_str())
                    .is_none()
                    .then(|| format!("dataset '{d}' does not exist")),
            };
            if let Some(msg) = missing {
                self.error(Some(m), msg);
            }
        }
    }
}
