//! The settings of the qubes a run backed up, as the Admin API reported them: what
//! qvm-backup keeps (properties, including label, template and netvm; features; tags;
//! firewall rules; device assignments), so a restore can recreate each qube.

use bincode::{Decode, Encode};

use super::{check_count, check_text, Purpose, Sealed};
use crate::names::QubeName;

/// Most qubes in one document.
pub const MAX_SETTINGS_QUBES: usize = 4096;
/// Most properties of one qube (Qubes 4.2 has about 60).
pub const MAX_PROPERTIES: usize = 512;
/// Most features of one qube.
pub const MAX_FEATURES: usize = 4096;
/// Most tags of one qube.
pub const MAX_TAGS: usize = 1024;
/// Most firewall rules of one qube.
pub const MAX_FIREWALL_RULES: usize = 4096;
/// Most device classes, and most assignments per class.
pub const MAX_DEVICE_CLASSES: usize = 16;
pub const MAX_ASSIGNMENTS: usize = 1024;
/// Most volumes of one qube (Qubes has four).
pub const MAX_VOLUMES: usize = 16;
/// Longest name or value (a property value, a feature value, a firewall rule...).
pub const MAX_SETTING_TEXT: usize = 64 << 10;

/// Every backed-up qube's settings at the time of the run.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SettingsDoc {
    /// Seconds since the Unix epoch.
    pub captured: u64,
    /// Sorted by name, no name twice.
    pub qubes: Vec<QubeSettings>,
}

/// One qube's settings.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct QubeSettings {
    pub name: String,
    /// `AppVM`, `TemplateVM`, `StandaloneVM`, `DispVM`, `AdminVM`...
    pub class: String,
    /// From `admin.vm.property.GetAll` (values unescaped), sorted by name.
    pub properties: Vec<Property>,
    /// `admin.vm.feature.List` + `admin.vm.feature.Get`: (name, value), sorted by name.
    pub features: Vec<(String, String)>,
    /// `admin.vm.tag.List`, sorted.
    pub tags: Vec<String>,
    /// `admin.vm.firewall.Get`, one rule per line, in order; `None` where a qube has no
    /// firewall (dom0).
    pub firewall: Option<Vec<String>>,
    /// `admin.vm.device.<class>.Assigned`, per device class.
    pub devices: Vec<DeviceList>,
    /// `admin.vm.volume.List` + `Info`: the qube's volumes, sorted by name; a restore finds
    /// each one's snapshot in the set index by `dataset`.
    pub volumes: Vec<VolumeSettings>,
}

/// One volume of a qube, as `admin.vm.volume.Info` reported it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct VolumeSettings {
    /// `root`, `private`, `volatile`, `kernel`.
    pub name: String,
    pub pool: String,
    /// The `vid`: for a ZFS pool, the zvol's dataset (the source of the backup).
    pub dataset: String,
    pub save_on_stop: bool,
    pub snap_on_start: bool,
    pub rw: bool,
}

/// One property as `admin.vm.property.GetAll` states it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Property {
    pub name: String,
    /// `default=True`: the value is the default, not set on the qube.
    pub is_default: bool,
    /// `type=`: `str`, `int`, `bool`, `vm`, `label`.
    pub kind: String,
    pub value: String,
}

/// The assigned devices of one class, or why they could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum DeviceList {
    /// One line per assignment, as the Admin API printed it.
    Assigned { class: String, lines: Vec<String> },
    /// The call failed (a class this Qubes release does not have, a denied call): restore
    /// says the qube's assignments of this class are unknown.
    Unavailable { class: String, why: String },
}

impl DeviceList {
    pub fn class(&self) -> &str {
        match self {
            DeviceList::Assigned { class, .. } | DeviceList::Unavailable { class, .. } => class,
        }
    }
}

fn strictly_sorted<T: Ord>(items: impl Iterator<Item = T>) -> bool {
    let mut last: Option<T> = None;
    for item in items {
        if last.as_ref().is_some_and(|l| *l >= item) {
            return false;
        }
        last = Some(item);
    }
    true
}

impl QubeSettings {
    fn validate(&self) -> Result<(), String> {
        if self.name != "dom0" {
            QubeName::parse(&self.name).map_err(|e| format!("qube name: {e}"))?;
        }
        let q = &self.name;
        check_text(&format!("{q}: class"), &self.class, 64)?;
        check_count(
            &format!("properties of {q}"),
            self.properties.len(),
            MAX_PROPERTIES,
        )?;
        for p in &self.properties {
            check_text(&format!("{q}: a property name"), &p.name, 256)?;
            check_text(&format!("{q}: the type of {}", p.name), &p.kind, 16)?;
            check_text(
                &format!("{q}: the value of {}", p.name),
                &p.value,
                MAX_SETTING_TEXT,
            )?;
        }
        if !strictly_sorted(self.properties.iter().map(|p| &p.name)) {
            return Err(format!("{q}: properties not sorted or repeated"));
        }
        check_count(
            &format!("features of {q}"),
            self.features.len(),
            MAX_FEATURES,
        )?;
        for (name, value) in &self.features {
            check_text(&format!("{q}: a feature name"), name, 256)?;
            check_text(&format!("{q}: feature {name}"), value, MAX_SETTING_TEXT)?;
        }
        if !strictly_sorted(self.features.iter().map(|(n, _)| n)) {
            return Err(format!("{q}: features not sorted or repeated"));
        }
        check_count(&format!("tags of {q}"), self.tags.len(), MAX_TAGS)?;
        for tag in &self.tags {
            check_text(&format!("{q}: a tag"), tag, 256)?;
        }
        if !strictly_sorted(self.tags.iter()) {
            return Err(format!("{q}: tags not sorted or repeated"));
        }
        if let Some(rules) = &self.firewall {
            check_count(
                &format!("firewall rules of {q}"),
                rules.len(),
                MAX_FIREWALL_RULES,
            )?;
            for rule in rules {
                check_text(&format!("{q}: a firewall rule"), rule, 4096)?;
            }
        }
        check_count(
            &format!("device classes of {q}"),
            self.devices.len(),
            MAX_DEVICE_CLASSES,
        )?;
        for d in &self.devices {
            check_text(&format!("{q}: a device class"), d.class(), 32)?;
            match d {
                DeviceList::Assigned { lines, class } => {
                    check_count(
                        &format!("{class} assignments of {q}"),
                        lines.len(),
                        MAX_ASSIGNMENTS,
                    )?;
                    for line in lines {
                        check_text(&format!("{q}: a {class} assignment"), line, 4096)?;
                    }
                }
                DeviceList::Unavailable { why, .. } => {
                    check_text(&format!("{q}: why devices are unknown"), why, 4096)?;
                }
            }
        }
        if !strictly_sorted(self.devices.iter().map(DeviceList::class)) {
            return Err(format!("{q}: device classes not sorted or repeated"));
        }
        check_count(&format!("volumes of {q}"), self.volumes.len(), MAX_VOLUMES)?;
        for v in &self.volumes {
            crate::manifest::check_volume_name(&v.name)
                .map_err(|e| format!("{q}: volume {:?}: {e}", v.name))?;
            check_text(&format!("{q}: the pool of {}", v.name), &v.pool, 256)?;
            check_text(&format!("{q}: the vid of {}", v.name), &v.dataset, 1024)?;
        }
        if !strictly_sorted(self.volumes.iter().map(|v| &v.name)) {
            return Err(format!("{q}: volumes not sorted or repeated"));
        }
        Ok(())
    }

    /// A property's value, if the Admin API reported it.
    pub fn property(&self, name: &str) -> Option<&Property> {
        self.properties.iter().find(|p| p.name == name)
    }
}

impl SettingsDoc {
    /// Checks every rule of the format (limits, valid qube names, sorted unique lists).
    pub fn validate(&self) -> Result<(), String> {
        check_count("qubes", self.qubes.len(), MAX_SETTINGS_QUBES)?;
        for q in &self.qubes {
            q.validate()?;
        }
        if !strictly_sorted(self.qubes.iter().map(|q| &q.name)) {
            return Err("qubes not sorted by name, or one repeated".into());
        }
        Ok(())
    }

    pub fn qube(&self, name: &str) -> Option<&QubeSettings> {
        self.qubes.iter().find(|q| q.name == name)
    }
}

impl Sealed for SettingsDoc {
    const PURPOSE: Purpose = Purpose::Settings;
    fn check_rules(&self) -> Result<(), String> {
        self.validate()
    }
}
