//! The settings of the qubes a backup covers, read from the Admin API at the end of each
//! `send`: what qvm-backup keeps, so a restore can recreate the qubes (issue 14).
//!
//! Calls, per qube: `admin.vm.property.GetAll`, `admin.vm.feature.List` then
//! `admin.vm.feature.Get` per feature, `admin.vm.tag.List`, `admin.vm.firewall.Get` (not for
//! dom0, which has no firewall), and `admin.vm.device.<class>.Assigned` for each class in
//! [`DEVICE_CLASSES`]. A device class the Admin API refuses (a Qubes release without it) is
//! recorded as unavailable, not as "no devices"; any other refusal fails the capture.

use std::collections::BTreeSet;

use qzb_protocol::sets::{DeviceList, Property, QubeSettings, SettingsDoc, VolumeSettings};

use super::inventory::{parse_qubesd_reply, Inventory, Volume};
use super::runner::{command_line, Runner, ToolError};

/// The device classes whose assignments are kept.
pub const DEVICE_CLASSES: [&str; 4] = ["block", "mic", "pci", "usb"];

/// The qubes that own a volume in `datasets`, or below one of them (a qube's filesystem
/// dataset holds its zvols), sorted.
pub fn qubes_of_datasets<'a>(
    inv: &Inventory,
    datasets: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let datasets: Vec<&str> = datasets.into_iter().collect();
    let covers = |vid: &str| {
        datasets.iter().any(|d| {
            vid == *d
                || vid
                    .strip_prefix(*d)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    };
    let names: BTreeSet<String> = inv
        .qubes
        .qubes
        .values()
        .filter(|q| q.volumes.iter().any(|v| covers(&v.vid)))
        .map(|q| q.name.clone())
        .collect();
    names.into_iter().collect()
}

/// Reads the settings of `qubes` (with their classes from the inventory).
pub fn capture(
    runner: &dyn Runner,
    inv: &Inventory,
    qubes: &[String],
    now: u64,
) -> Result<SettingsDoc, ToolError> {
    let mut out = Vec::with_capacity(qubes.len());
    for name in qubes {
        let qube = inv.qubes.qubes.get(name);
        let class = qube.map(|q| q.class.clone()).unwrap_or_default();
        let volumes = qube.map(|q| q.volumes.as_slice()).unwrap_or_default();
        out.push(capture_qube(runner, name, class, volumes)?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(SettingsDoc {
        captured: now,
        qubes: out,
    })
}

/// One Admin API call: the reply's text, or the refusal (`Err(Ok(..))`), or a failure to run
/// the call at all (`Err(Err(..))`).
fn call(
    runner: &dyn Runner,
    method: &str,
    qube: &str,
    arg: Option<&str>,
) -> Result<String, Result<ToolError, ToolError>> {
    let mut args = vec!["-e", "dom0", method, qube];
    args.extend(arg);
    let raw = runner.run("qubesd-query", &args).map_err(Err)?;
    parse_qubesd_reply(&raw).map_err(|p| Ok(ToolError::new(command_line("qubesd-query", &args), p)))
}

fn required(
    runner: &dyn Runner,
    method: &str,
    qube: &str,
    arg: Option<&str>,
) -> Result<String, ToolError> {
    call(runner, method, qube, arg).map_err(|e| match e {
        Ok(e) | Err(e) => e,
    })
}

fn capture_qube(
    runner: &dyn Runner,
    name: &str,
    class: String,
    known: &[Volume],
) -> Result<QubeSettings, ToolError> {
    let bad = |method: &str, problem: String| {
        ToolError::new(
            command_line("qubesd-query", &["-e", "dom0", method, name]),
            problem,
        )
    };
    let properties = parse_property_all(&required(runner, "admin.vm.property.GetAll", name, None)?)
        .map_err(|p| bad("admin.vm.property.GetAll", p))?;
    let feature_names = names_list(&required(runner, "admin.vm.feature.List", name, None)?);
    let mut features = Vec::with_capacity(feature_names.len());
    for feature in feature_names {
        let value = required(runner, "admin.vm.feature.Get", name, Some(&feature))?;
        features.push((feature, value));
    }
    let tags = names_list(&required(runner, "admin.vm.tag.List", name, None)?);
    let firewall = if name == "dom0" || class == "AdminVM" {
        None
    } else {
        Some(
            required(runner, "admin.vm.firewall.Get", name, None)?
                .lines()
                .map(str::to_owned)
                .collect(),
        )
    };
    let mut devices = Vec::new();
    for devclass in DEVICE_CLASSES {
        let method = format!("admin.vm.device.{devclass}.Assigned");
        devices.push(match call(runner, &method, name, None) {
            Ok(text) => DeviceList::Assigned {
                class: devclass.into(),
                lines: text.lines().map(str::to_owned).collect(),
            },
            Err(Ok(refused)) => DeviceList::Unavailable {
                class: devclass.into(),
                why: refused.problem,
            },
            Err(Err(failed)) => return Err(failed),
        });
    }
    let class = if class.is_empty() {
        properties
            .iter()
            .find(|p| p.name == "klass")
            .map(|p| p.value.clone())
            .unwrap_or_default()
    } else {
        class
    };
    let mut volumes: Vec<VolumeSettings> = known
        .iter()
        .map(|v| VolumeSettings {
            name: v.name.clone(),
            pool: v.pool.clone(),
            dataset: v.vid.clone(),
            save_on_stop: v.save_on_stop,
            snap_on_start: v.snap_on_start,
            rw: v.rw,
        })
        .collect();
    volumes.sort_by(|a, b| a.name.cmp(&b.name));
    let settings = QubeSettings {
        name: name.to_owned(),
        class,
        properties,
        features,
        tags,
        firewall,
        devices,
        volumes,
    };
    Ok(settings)
}

/// One name per line, sorted and without repeats (features, tags).
fn names_list(text: &str) -> Vec<String> {
    let set: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    set.into_iter().collect()
}

/// Parses `admin.vm.property.GetAll`: one `NAME default=True|False type=TYPE VALUE` per line
/// (the value may be empty, and has `\` and newlines escaped as `\\` and `\n`). Sorted by
/// name.
pub fn parse_property_all(text: &str) -> Result<Vec<Property>, String> {
    let mut out: Vec<Property> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let bad = |what: &str| format!("line {}: {what}: {}", n + 1, crate::output::outside(line));
        let (name, rest) = line.split_once(' ').ok_or_else(|| bad("no fields"))?;
        let (is_default, rest) = if let Some(r) = rest.strip_prefix("default=True") {
            (true, r)
        } else if let Some(r) = rest.strip_prefix("default=False") {
            (false, r)
        } else {
            return Err(bad("no default=True|False"));
        };
        let rest = rest.strip_prefix(" type=").ok_or_else(|| bad("no type="))?;
        let (kind, value) = rest.split_once(' ').unwrap_or((rest, ""));
        if name.is_empty() || kind.is_empty() {
            return Err(bad("empty name or type"));
        }
        out.push(Property {
            name: name.to_owned(),
            is_default,
            kind: kind.to_owned(),
            value: unescape(value).ok_or_else(|| bad("bad escape in the value"))?,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    if out.windows(2).any(|w| w[0].name == w[1].name) {
        return Err("a property is listed twice".into());
    }
    Ok(out)
}

/// Undoes GetAll's escaping (`\\` → `\`, `\n` → newline); `None` for any other escape.
fn unescape(value: &str) -> Option<String> {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '\\' => out.push('\\'),
            'n' => out.push('\n'),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn property_lines_are_parsed_with_defaults_types_empty_values_and_escapes() {
        let text = "netvm default=True type=vm sys-firewall\n\
                    label default=False type=label red\n\
                    kernel default=True type=str \n\
                    description default=False type=str two\\nlines and a \\\\ slash\n";
        let props = parse_property_all(text).unwrap();
        let names: Vec<&str> = props.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["description", "kernel", "label", "netvm"]);
        assert_eq!(props[0].value, "two\nlines and a \\ slash");
        assert_eq!(props[1].value, "");
        assert!(props[1].is_default);
        assert_eq!(props[2].kind, "label");
        assert!(!props[2].is_default);
        assert_eq!(props[3].value, "sys-firewall");
    }

    #[test]
    fn malformed_property_lines_are_refused_with_their_line() {
        for bad in [
            "netvm\n",
            "netvm default=maybe type=vm x\n",
            "netvm default=True vm x\n",
            "netvm default=True type=vm a\\x\n",
            "a default=True type=str 1\na default=True type=str 2\n",
        ] {
            assert!(parse_property_all(bad).is_err(), "{bad:?}");
        }
    }
}
