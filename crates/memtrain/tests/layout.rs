//! The layout rules of the workspace, checked on the sources (issue 19): no module imports a
//! module that imports it back (at every level of every crate's module tree, siblings form no
//! cycle), rematerialization does not import the training step, and the CLI stays an edge
//! (no source file over 300 lines, no subcommand importing another).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The workspace's `crates/` directory.
fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crates/memtrain has a parent")
        .to_path_buf()
}

/// Modules and, for each, the modules it refers to.
type Graph = (
    BTreeSet<Vec<String>>,
    BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
);

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("a readable source directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The module path of a source file under `src` (`memory/meter.rs` is `["memory", "meter"]`;
/// `lib.rs`, `main.rs` and `mod.rs` name their directory's module).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("a file under src");
    let mut parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The source without line comments (doc links are not imports).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Parses the path tree at the start of `s` (identifiers joined by `::`, possibly ending in a
/// `{...}` group of trees) into the full paths it names, each prefixed by `prefix`.
fn parse_tree(s: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut path = prefix;
    loop {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i < chars.len() && chars[i] == '{' {
            i += 1;
            loop {
                while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
                    i += 1;
                }
                if i >= chars.len() || chars[i] == '}' {
                    i += 1;
                    return i;
                }
                let rest: String = chars[i..].iter().collect();
                i += parse_tree(&rest, path.clone(), out);
            }
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        if start == i {
            out.push(path);
            return i;
        }
        path.push(chars[start..i].iter().collect());
        if i + 1 < chars.len() && chars[i] == ':' && chars[i + 1] == ':' {
            i += 2;
        } else {
            out.push(path);
            return i;
        }
    }
}

/// The module paths (absolute, from the crate root) a file refers to through `crate::`,
/// `super::` and `self::` paths.
fn references(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for anchor in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(pos) = code[from..].find(anchor) {
            let at = from + pos;
            from = at + anchor.len();
            if code[..at].chars().next_back().is_some_and(is_ident) {
                continue;
            }
            // The directory a relative path starts from.
            let mut base: Vec<String> = match anchor {
                "crate::" => Vec::new(),
                _ => module.to_vec(),
            };
            let mut rest = &code[from..];
            if anchor == "super::" {
                base.pop();
                while let Some(r) = rest.strip_prefix("super::") {
                    base.pop();
                    rest = r;
                }
            }
            let mut paths = Vec::new();
            parse_tree(rest, base, &mut paths);
            out.extend(paths);
        }
    }
    out
}

/// The items each module re-exports with `pub use`, by name: where they really live.
fn re_exports(
    src: &Path,
    files: &[PathBuf],
) -> BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for file in files {
        let module = module_of(src, file);
        let code = code_of(&std::fs::read_to_string(file).expect("a readable source file"));
        let mut from = 0;
        while let Some(pos) = code[from..].find("pub use ") {
            let at = from + pos + "pub use ".len();
            from = at;
            let rest = &code[at..];
            // `pub use child::Item`, `pub use crate::a::Item`, `pub use super::Item`.
            let (base, rest) = if let Some(r) = rest.strip_prefix("crate::") {
                (Vec::new(), r)
            } else if let Some(r) = rest.strip_prefix("super::") {
                (module[..module.len().saturating_sub(1)].to_vec(), r)
            } else if let Some(r) = rest.strip_prefix("self::") {
                (module.clone(), r)
            } else {
                (module.clone(), rest)
            };
            let mut paths = Vec::new();
            parse_tree(rest, base, &mut paths);
            for path in paths {
                if let Some(name) = path.last() {
                    out.entry(module.clone())
                        .or_default()
                        .insert(name.clone(), path[..path.len() - 1].to_vec());
                }
            }
        }
    }
    out
}

/// The module a path refers to: its longest prefix that is a module, followed through the
/// re-exports of that module when the next segment is an item it re-exports.
fn resolve(
    path: &[String],
    modules: &BTreeSet<Vec<String>>,
    exports: &BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>>,
) -> Option<Vec<String>> {
    let mut target = (1..=path.len())
        .rev()
        .map(|k| path[..k].to_vec())
        .find(|p| modules.contains(p))?;
    let mut hops = 0;
    while let Some(next) = path.get(target.len())
        && let Some(source) = exports.get(&target).and_then(|e| e.get(next))
        && hops < 8
    {
        let Some(real) = (1..=source.len())
            .rev()
            .map(|k| source[..k].to_vec())
            .find(|p| modules.contains(p))
        else {
            break;
        };
        if real == target {
            break;
        }
        target = real;
        hops += 1;
    }
    Some(target)
}

/// The module graph of one crate: for every module, the modules it refers to.
fn module_graph(src: &Path) -> Graph {
    let files = rust_files(src);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(src, f)).collect();
    let exports = re_exports(src, &files);
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for file in &files {
        let module = module_of(src, file);
        let code = code_of(&std::fs::read_to_string(file).expect("a readable source file"));
        for path in references(&module, &code) {
            if let Some(target) = resolve(&path, &modules, &exports)
                && target != module
                && !module.starts_with(&target)
            {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    (modules, edges)
}

/// The cycles among the children of every module: a module (with everything below it) that
/// refers to a sibling which refers back, directly or through other siblings.
fn sibling_cycles(src: &Path) -> Vec<String> {
    let (modules, edges) = module_graph(src);
    let mut parents: BTreeSet<Vec<String>> = modules
        .iter()
        .filter(|m| !m.is_empty())
        .map(|m| m[..m.len() - 1].to_vec())
        .collect();
    parents.insert(Vec::new());
    let mut problems = Vec::new();
    for parent in parents {
        let depth = parent.len();
        let child_of = |m: &Vec<String>| -> Option<String> {
            (m.len() > depth && m[..depth] == parent[..]).then(|| m[depth].clone())
        };
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, tos) in &edges {
            let Some(a) = child_of(from) else { continue };
            for to in tos {
                if let Some(b) = child_of(to)
                    && a != b
                {
                    graph.entry(a.clone()).or_default().insert(b);
                }
            }
        }
        // A cycle exists where a child reaches itself.
        for start in graph.keys() {
            let mut seen = BTreeSet::new();
            let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
            while let Some((node, path)) = stack.pop() {
                for next in graph.get(&node).into_iter().flatten() {
                    if next == start {
                        let mut cycle = path.clone();
                        cycle.push(start.clone());
                        let at = if parent.is_empty() {
                            "the crate root".to_string()
                        } else {
                            parent.join("::")
                        };
                        problems.push(format!("under {at}: {}", cycle.join(" -> ")));
                    } else if seen.insert(next.clone()) {
                        let mut p = path.clone();
                        p.push(next.clone());
                        stack.push((next.clone(), p));
                    }
                }
            }
        }
    }
    problems.sort();
    problems.dedup();
    problems
}

#[test]
fn should_have_no_module_that_imports_a_module_that_imports_it_back() {
    let mut problems = Vec::new();
    for krate in ["memtrain", "memtrain-tt", "memtrain-index", "memtrain-cli"] {
        let src = crates_dir().join(krate).join("src");
        for p in sibling_cycles(&src) {
            problems.push(format!("{krate}: {p}"));
        }
    }
    assert!(
        problems.is_empty(),
        "module cycles:\n{}",
        problems.join("\n")
    );
}

#[test]
fn should_find_a_cycle_when_there_is_one() {
    // The checker itself, on a tree made for it: a -> b -> a, and c -> a (no cycle).
    let dir = std::env::temp_dir().join(format!("memtrain-layout-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("b")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\nmod c;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::{inner::X, Y};\n").unwrap();
    std::fs::write(src.join("b/mod.rs"), "mod inner;\npub use inner::X;\n").unwrap();
    std::fs::write(
        src.join("b/inner.rs"),
        "use crate::a; // a comment: crate::c\n",
    )
    .unwrap();
    std::fs::write(src.join("c.rs"), "fn f() { crate::a::g(); }\n").unwrap();
    let problems = sibling_cycles(&src);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        problems,
        vec![
            "under the crate root: a -> b -> a".to_string(),
            "under the crate root: b -> a -> b".to_string()
        ]
    );
}

#[test]
fn should_keep_the_training_step_out_of_remat() {
    let remat = crates_dir().join("memtrain/src/remat");
    for file in rust_files(&remat) {
        let code = code_of(&std::fs::read_to_string(&file).unwrap());
        assert!(
            !code.contains("crate::train"),
            "{} imports crate::train",
            file.display()
        );
    }
}

#[test]
fn should_keep_the_cli_an_edge() {
    let src = crates_dir().join("memtrain-cli/src");
    let files = rust_files(&src);
    let subcommands: Vec<String> = files
        .iter()
        .map(|f| module_of(&src, f))
        .filter(|m| m.len() == 1 && !matches!(m[0].as_str(), "output" | "plot"))
        .map(|m| m[0].clone())
        .collect();
    assert!(subcommands.len() >= 9, "{subcommands:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let lines = text.lines().count();
        assert!(
            lines <= 300,
            "{} has {lines} lines; the CLI parses, calls the library and prints",
            file.display()
        );
        let module = module_of(&src, file);
        let code = code_of(&text);
        for other in &subcommands {
            if module.first() != Some(other) {
                assert!(
                    !code.contains(&format!("crate::{other}::")),
                    "{} imports the subcommand {other}",
                    file.display()
                );
            }
        }
    }
}
