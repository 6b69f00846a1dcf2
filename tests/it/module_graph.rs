//! The shape of the code: data flows one way, so the library's top-level modules form no cycle,
//! and no file grows past what a reader can hold.
//! An edge `a -> b` is a `crate::b` path in the non-test code of module `a` (its file or folder,
//! less `#[cfg(test)] mod tests` blocks at the end of a file, the test-only files `tests.rs`,
//! `testing.rs`, `fuzzing.rs`, and files in a `tests/` folder). `main.rs` and `lib.rs` are the roots and are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::support::backstop::repo;

/// Module -> (module it names -> the first place it does).
type Graph = BTreeMap<String, BTreeMap<String, String>>;

const TEST_ONLY_FILES: &[&str] = &["tests.rs", "testing.rs", "fuzzing.rs"];

fn graph(src: &Path) -> Graph {
    let modules: BTreeSet<String> = std::fs::read_dir(src)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            if e.path().is_dir() {
                Some(name)
            } else {
                name.strip_suffix(".rs").filter(|n| *n != "main" && *n != "lib").map(str::to_owned)
            }
        })
        .collect();
    let mut graph = Graph::new();
    let mut files = Vec::new();
    collect_files(src, &mut files);
    for file in files {
        let rel = file.strip_prefix(src).unwrap().to_string_lossy().replace('\\', "/");
        let top = rel.split('/').next().unwrap().trim_end_matches(".rs").to_string();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let in_test_folder = rel.split('/').rev().skip(1).any(|dir| dir == "tests");
        if !modules.contains(&top) || TEST_ONLY_FILES.contains(&name.as_str()) || in_test_folder {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let code = match text.find("\n#[cfg(test)]\nmod tests {") {
            Some(i) => &text[..i],
            None => &text[..],
        };
        for (n, line) in code.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
                let to = &rest[..end];
                if to != top && modules.contains(to) {
                    graph
                        .entry(top.clone())
                        .or_default()
                        .entry(to.to_string())
                        .or_insert_with(|| format!("src/{rel}:{}", n + 1));
                }
            }
        }
    }
    graph
}

fn collect_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()) {
        let p = e.path();
        if p.is_dir() {
            collect_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A cycle through `from`, as the list of modules on it, if there is one.
fn cycle(graph: &Graph, from: &str) -> Option<Vec<String>> {
    fn walk(graph: &Graph, at: &str, from: &str, path: &mut Vec<String>, seen: &mut BTreeSet<String>) -> bool {
        for next in graph.get(at).into_iter().flat_map(|m| m.keys()) {
            if next == from {
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(graph, next, from, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![from.to_string()];
    walk(graph, from, from, &mut path, &mut BTreeSet::new()).then_some(path)
}

fn cycles(graph: &Graph) -> Vec<String> {
    graph
        .keys()
        .filter_map(|m| cycle(graph, m))
        .map(|path| {
            let mut hops = Vec::new();
            for (i, a) in path.iter().enumerate() {
                let b = &path[(i + 1) % path.len()];
                hops.push(format!("{a} -> {b} ({})", graph[a][b]));
            }
            hops.join(", ")
        })
        .collect()
}

#[test]
fn the_library_modules_form_no_cycle() {
    let graph = graph(&repo("src"));
    assert!(graph.len() > 10, "the graph was read: {graph:?}");
    let found = cycles(&graph);
    assert!(found.is_empty(), "module cycles (data must flow one way):\n{}", found.join("\n"));
}

#[test]
fn a_cycle_is_found_and_named_with_where_each_edge_comes_from() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("pipeline")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod pipeline;\npub mod rules;\npub mod event;\n").unwrap();
    std::fs::write(src.join("pipeline/mod.rs"), "use crate::rules::Rule;\nuse crate::event::Alert;\n").unwrap();
    std::fs::write(
        src.join("rules.rs"),
        "// crate::pipeline in a comment is no edge\nuse crate::pipeline::Report;\n\
         #[cfg(test)]\nmod tests {\n    use crate::event::Alert;\n}\n",
    )
    .unwrap();
    std::fs::write(src.join("event.rs"), "pub struct Alert;\n").unwrap();
    std::fs::create_dir(src.join("event_tests_host")).unwrap();
    std::fs::create_dir_all(src.join("pipeline/tests")).unwrap();
    std::fs::write(src.join("pipeline/tests/steps.rs"), "use crate::event_tests_host::X;\n").unwrap();
    let graph = graph(src);
    assert_eq!(graph["rules"].keys().collect::<Vec<_>>(), ["pipeline"], "test code adds no edge");
    assert_eq!(graph["pipeline"].keys().collect::<Vec<_>>(), ["event", "rules"], "nor does a tests/ folder");
    let found = cycles(&graph);
    assert_eq!(
        found,
        [
            "pipeline -> rules (src/pipeline/mod.rs:1), rules -> pipeline (src/rules.rs:2)",
            "rules -> pipeline (src/rules.rs:2), pipeline -> rules (src/pipeline/mod.rs:1)",
        ]
    );
}

/// The shape's other half: a source file that passes about 800 lines is two files (tests in a
/// file of their own count apart).
#[test]
fn no_library_file_passes_800_lines() {
    let mut files = Vec::new();
    collect_files(&repo("src"), &mut files);
    assert!(files.len() > 50, "the tree was read: {} files", files.len());
    let mut long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).unwrap().lines().count();
            (lines > 800).then(|| format!("{} ({lines} lines)", f.strip_prefix(repo("")).unwrap().display()))
        })
        .collect();
    long.sort();
    assert!(long.is_empty(), "split these along their seams: {}", long.join(", "));
}
