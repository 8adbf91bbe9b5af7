//! `cargo xtask audit-deps`: the dependency rules of the project, checked from `cargo metadata`
//! (offline; the RustSec advisory database cannot be fetched from these machines).
//!
//! - every package comes from crates.io or this workspace (no git or other registries);
//! - every license is on the allow-list;
//! - the dom0 binary's tree (normal dependencies of `qubes-zfs-backup`) holds no async runtime,
//!   network or TLS crate, and every crate in it is listed, with its reason, in
//!   docs/dependencies.md, so nothing enters dom0 without a written decision.

use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;

/// Licenses we accept (SPDX ids); an expression passes if every AND-term has an allowed choice.
const ALLOWED_LICENSES: [&str; 11] = [
    "MIT",
    "Apache-2.0",
    "Apache-2.0 WITH LLVM-exception",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "ISC",
    "Zlib",
    "CC0-1.0",
    "Unicode-3.0",
    "Unlicense",
    "GPL-2.0-or-later",
];

/// Crates that must never be in dom0: async runtimes, networking, TLS.
const BANNED_IN_DOM0: [&str; 14] = [
    "tokio",
    "async-std",
    "smol",
    "futures",
    "mio",
    "hyper",
    "reqwest",
    "ureq",
    "socket2",
    "openssl",
    "native-tls",
    "rustls",
    "curl",
    "h2",
];

const DOM0_PACKAGE: &str = "qubes-zfs-backup";

pub fn run() -> Result<(), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace root")?;
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(root)
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let meta: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let packages: HashMap<&str, &Value> = meta["packages"]
        .as_array()
        .ok_or("no packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let mut problems = Vec::new();

    // Sources and licenses of everything that gets built.
    for p in packages.values() {
        let name = p["name"].as_str().unwrap_or("?");
        match p["source"].as_str() {
            None => {} // a workspace member
            Some(s) if s.starts_with("registry+https://github.com/rust-lang/crates.io-index") => {}
            Some(s) => problems.push(format!("{name}: comes from {s}, not crates.io")),
        }
        let license = p["license"].as_str().unwrap_or("");
        if !license_allowed(license) {
            problems.push(format!(
                "{name}: license {license:?} is not on the allow-list"
            ));
        }
    }

    // The dom0 binary's normal-dependency closure.
    let nodes: HashMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .ok_or("no resolve graph")?
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let start = packages
        .iter()
        .find(|(_, p)| p["name"] == DOM0_PACKAGE && p["source"].is_null())
        .map(|(id, _)| *id)
        .ok_or("the dom0 package is not in the workspace")?;
    let mut seen = BTreeSet::new();
    let mut stack = vec![start];
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().into_iter().flatten() {
            let normal = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].is_null());
            if normal {
                if let Some(d) = dep["pkg"].as_str() {
                    stack.push(d);
                }
            }
        }
    }
    let dom0: BTreeSet<&str> = seen
        .iter()
        .filter(|id| **id != start)
        .filter_map(|id| packages[id]["name"].as_str())
        .collect();
    for banned in BANNED_IN_DOM0 {
        if dom0.contains(banned) {
            problems.push(format!("{banned} is in the dom0 binary's dependency tree"));
        }
    }
    let doc = std::fs::read_to_string(root.join("docs/dependencies.md"))
        .map_err(|e| format!("docs/dependencies.md: {e}"))?;
    let listed: BTreeSet<&str> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .collect();
    for name in &dom0 {
        if !listed.contains(name) {
            problems.push(format!(
                "{name} is in the dom0 binary but not listed in docs/dependencies.md"
            ));
        }
    }
    println!(
        "dom0 binary: {} crates besides itself ({} of them this workspace's); {} packages checked for source and license",
        dom0.len(),
        dom0.iter().filter(|n| n.starts_with("qzb-")).count(),
        packages.len()
    );
    if problems.is_empty() {
        println!("audit-deps: ok");
        Ok(())
    } else {
        for p in &problems {
            eprintln!("audit-deps: {p}");
        }
        Err(format!("{} dependency problem(s)", problems.len()))
    }
}

/// `A OR B`, `A AND B`, `A/B` (old cargo syntax for OR), with optional parentheses.
fn license_allowed(expr: &str) -> bool {
    let expr = expr.replace(['(', ')'], "");
    if expr.trim().is_empty() {
        return false;
    }
    expr.split(" AND ").all(|term| {
        term.split(" OR ")
            .flat_map(|t| t.split('/'))
            .any(|choice| ALLOWED_LICENSES.contains(&choice.trim()))
    })
}

#[cfg(test)]
mod tests {
    use super::license_allowed;

    #[test]
    fn license_expressions() {
        assert!(license_allowed("MIT OR Apache-2.0"));
        assert!(license_allowed("MIT/Apache-2.0"));
        assert!(license_allowed("(MIT OR Apache-2.0) AND Unicode-3.0"));
        assert!(!license_allowed("GPL-3.0-only"));
        assert!(!license_allowed("MIT AND GPL-3.0-only"));
        assert!(!license_allowed(""));
    }
}
