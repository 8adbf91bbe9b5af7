//! The driver's rooms (the directories and top-level files of `src/`) depend on each other
//! without cycles: a newcomer can read them bottom-up, and no change can quietly tie two
//! together. Test code is left out (it may reach anywhere).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn is_test_code(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name == "tests.rs"
        || name.ends_with("_tests.rs")
        || name == "names_agree.rs"
        || p.components().any(|c| c.as_os_str() == "tests")
}

/// room -> the rooms its non-test code names as `crate::<room>`.
fn room_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files.iter().filter(|f| !is_test_code(f)) {
        let rel = f.strip_prefix(&src).expect("under src");
        let room = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("a room")
            .trim_end_matches(".rs")
            .to_owned();
        if room == "lib" || room == "main" {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("read");
        // Only the code before an inline test module counts.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let deps = graph.entry(room.clone()).or_default();
        for part in code.split("crate::").skip(1) {
            let dep: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::out!`/`outln!` are macros exported at the root by `output`.
            let dep = match dep.as_str() {
                "out" | "outln" => "output".to_owned(),
                _ => dep,
            };
            if !dep.is_empty() && dep != room {
                deps.insert(dep);
            }
        }
    }
    graph
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|room| visit(room, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_rooms_of_the_driver_depend_on_each_other_without_cycles() {
    let graph = room_graph();
    assert!(
        graph.contains_key("stream") && graph.contains_key("system"),
        "{graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("module cycle: {}\n{graph:#?}", cycle.join(" -> "));
    }
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
}

#[test]
fn only_the_runner_starts_processes() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let spawning: Vec<_> = files
        .iter()
        .filter(|f| !is_test_code(f))
        .filter(|f| {
            let text = std::fs::read_to_string(f).expect("read");
            text.split("#[cfg(test)]")
                .next()
                .unwrap_or("")
                .contains("Command::new")
        })
        .map(|f| {
            f.strip_prefix(&src)
                .expect("under src")
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(spawning, ["system/runner.rs"]);
}
