//! The layering rule, enforced: `src/plan` and `src/api` are pure. No file there may import or call
//! tokio, a Kubernetes client (`kube::Client`, `kube::Api`, `kube::runtime`), reqwest, the protocol
//! client, the controller, the agent, a clock or randomness; the shell passes `now` in and does
//! every call. Test-only code may: files named `tests.rs` or `fixtures.rs`, anything under a
//! `tests/` directory, and any item marked `#[cfg(test)]`.
//!
//! Files are read as Rust tokens, so comments and string literals are not code (a module doc may
//! say what the module must not use), and a grouped import (`use kube::{Api, Client}`) is read as
//! the paths it names. Needs no control plane; `make lint` runs it.
//!
//! And no two modules of `src/` import each other in a circle (a module naming its ancestors, where
//! the shared types live, does not count), so each can be read and changed from the bottom up.

use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use proc_macro2::{Delimiter, Spacing, TokenStream, TokenTree};

/// The directories that must stay pure, relative to the crate root.
const PURE_DIRS: [&str; 2] = ["src/plan", "src/api"];

/// What pure code must not name, as path segments, and what it is. A lower-case one-segment entry
/// names a crate, so it must start the path; the others match anywhere in a path
/// (`jiff::Timestamp::now` matches `Timestamp::now`, `std::time::SystemTime` matches `SystemTime`).
const FORBIDDEN: &[(&str, &str)] = &[
    ("tokio", "the async runtime"),
    ("kube::Client", "a Kubernetes client"),
    ("kube::client", "a Kubernetes client"),
    ("kube::Api", "a Kubernetes client"),
    ("kube::api::Api", "a Kubernetes client"),
    ("kube::runtime", "the Kubernetes runtime"),
    ("reqwest", "an HTTP client"),
    ("protocol::Client", "the protocol client"),
    ("protocol::client", "the protocol client"),
    ("crate::controller", "the controller"),
    ("crate::agent", "the agent"),
    ("Timestamp::now", "a clock"),
    ("SystemTime", "a clock"),
    ("Instant::now", "a clock"),
    ("Utc::now", "a clock"),
    ("Zoned::now", "a clock"),
    ("rand", "randomness"),
    ("Uuid::new_v4", "randomness"),
];

#[test]
fn plan_and_api_import_no_runtime_client_clock_or_randomness() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in PURE_DIRS {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(
        files.iter().any(|f| f.ends_with("src/plan/mod.rs")),
        "the scan found no planner source under {}",
        root.display()
    );
    let mut found = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(root).unwrap_or(file);
        if is_test_only(relative) {
            continue;
        }
        let source = fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        found.extend(violations(&relative.display().to_string(), &source));
    }
    assert!(
        found.is_empty(),
        "src/plan and src/api must stay pure (no runtime, client, clock or randomness):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_scan_finds_imports_and_calls_but_not_comments_or_test_items() {
    let source = r#"//! No tokio here: a comment is not code.
use kube::{CustomResource, api::Api, Client as KubeClient};
use std::time::{Duration, SystemTime};
fn f() -> std::string::String {
    let _ = jiff::Timestamp::now();
    "tokio::spawn in a string".to_owned()
}
#[cfg(test)]
mod tests {
    fn t() { let _ = std::time::Instant::now(); }
}
fn g() { tokio::spawn(async {}); let _ = rand::random::<u8>(); }
use crate::protocol::*;
"#;
    assert_eq!(
        violations("x.rs", source),
        [
            "x.rs:2: `kube::api::Api` (a Kubernetes client)",
            "x.rs:2: `kube::Client` (a Kubernetes client)",
            "x.rs:3: `std::time::SystemTime` (a clock)",
            "x.rs:5: `jiff::Timestamp::now` (a clock)",
            "x.rs:12: `tokio::spawn` (the async runtime)",
            "x.rs:12: `rand::random` (randomness)",
            "x.rs:13: `crate::protocol::*` (the protocol client)",
        ]
    );
}

#[test]
fn no_two_modules_of_src_import_each_other_in_a_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let modules: Vec<(Vec<String>, PathBuf)> = files
        .iter()
        .map(|f| {
            (
                module_path(f.strip_prefix(root.join("src")).unwrap_or(f)),
                f.clone(),
            )
        })
        .collect();
    let known: std::collections::BTreeSet<Vec<String>> =
        modules.iter().map(|(m, _)| m.clone()).collect();
    let mut edges: std::collections::BTreeMap<
        Vec<String>,
        std::collections::BTreeSet<Vec<String>>,
    > = Default::default();
    for (module, file) in &modules {
        let source = fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let deps = edges.entry(module.clone()).or_default();
        visit_paths(&file.display().to_string(), &source, &mut |path, _| {
            if let Some(target) = resolve(module, path, &known)
                // A module may name its ancestors (their shared types); that is not a circle.
                && !module.starts_with(&target)
            {
                deps.insert(target);
            }
        });
    }
    let circles = circles(&edges);
    assert!(
        circles.is_empty(),
        "modules of src/ that import each other in a circle:\n{}",
        circles.join("\n")
    );
}

/// `a/b.rs` and `a/b/mod.rs` are module `a::b`; `lib.rs` is the crate root.
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts
        .last()
        .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
    {
        parts.pop();
    }
    parts
}

/// The module of the crate a `crate::`/`super::`/`self::` path names (its longest module prefix).
fn resolve(
    module: &[String],
    path: &[Segment],
    known: &std::collections::BTreeSet<Vec<String>>,
) -> Option<Vec<String>> {
    let names: Vec<&str> = path.iter().map(|s| s.name.as_str()).collect();
    let (mut base, mut rest) = match *names.first()? {
        "crate" => (Vec::new(), &names[1..]),
        "self" => (module.to_vec(), &names[1..]),
        // In `a/b.rs` (module a::b) `super` is `a`; in `a/mod.rs` (module a) it is the root.
        "super" => (
            module[..module.len().saturating_sub(1)].to_vec(),
            &names[1..],
        ),
        _ => return None,
    };
    while rest.first() == Some(&"super") {
        base.pop();
        rest = &rest[1..];
    }
    (0..=rest.len())
        .rev()
        .map(|n| {
            let mut m = base.clone();
            m.extend(rest[..n].iter().map(|s| (*s).to_owned()));
            m
        })
        .find(|m| known.contains(m))
}

/// Each circle in `edges`, as `a -> b -> a`.
fn circles(
    edges: &std::collections::BTreeMap<Vec<String>, std::collections::BTreeSet<Vec<String>>>,
) -> Vec<String> {
    fn visit(
        node: &Vec<String>,
        edges: &std::collections::BTreeMap<Vec<String>, std::collections::BTreeSet<Vec<String>>>,
        stack: &mut Vec<Vec<String>>,
        done: &mut std::collections::BTreeSet<Vec<String>>,
        found: &mut Vec<String>,
    ) {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut circle: Vec<String> = stack[at..].iter().map(|m| m.join("::")).collect();
            circle.push(node.join("::"));
            found.push(circle.join(" -> "));
            return;
        }
        if !done.insert(node.clone()) {
            return;
        }
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            visit(next, edges, stack, done, found);
        }
        stack.pop();
    }
    let mut found = Vec::new();
    let mut done = std::collections::BTreeSet::new();
    for node in edges.keys() {
        visit(node, edges, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display())))
        .map(|e| e.path())
        .collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// Files compiled only for tests (and benches): they may use a clock.
fn is_test_only(path: &Path) -> bool {
    path.components().any(|c| c.as_os_str() == "tests")
        || path
            .file_name()
            .is_some_and(|n| n == "tests.rs" || n == "fixtures.rs")
}

/// One path segment and the line it is written on.
#[derive(Clone)]
struct Segment {
    name: String,
    line: usize,
}

/// The forbidden paths `source` names, as `file:line: what`.
fn violations(file: &str, source: &str) -> Vec<String> {
    let mut found = Vec::new();
    visit_paths(file, source, &mut |path, glob| {
        if glob {
            check_glob(path, file, &mut found);
        } else {
            check(path, file, &mut found);
        }
    });
    found
}

/// Calls `visit` with every path `source` names outside test-only items (`glob`: it ends in `::*`).
fn visit_paths(file: &str, source: &str, visit: &mut dyn FnMut(&[Segment], bool)) {
    let tokens = TokenStream::from_str(source)
        .unwrap_or_else(|e| panic!("{file} does not parse as Rust tokens: {e}"));
    scan(tokens, &[], visit);
}

/// Scans `tokens`; `prefix` is the path of the enclosing use-tree group (`kube::{...}`), if any.
fn scan(tokens: TokenStream, prefix: &[Segment], visit: &mut dyn FnMut(&[Segment], bool)) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let mut i = 0;
    while let Some(token) = tokens.get(i) {
        match token {
            TokenTree::Punct(p) if p.as_char() == '#' => {
                if is_cfg_test(tokens.get(i + 1)) {
                    i = end_of_item(&tokens, i + 2);
                    continue;
                }
                if matches!(tokens.get(i + 1), Some(TokenTree::Punct(b)) if b.as_char() == '!')
                    && is_cfg_test(tokens.get(i + 2))
                {
                    // `#![cfg(test)]`: the whole module is test-only.
                    return;
                }
                i += 1;
            }
            TokenTree::Ident(ident) if ident == "as" => {
                // The new name of an import is not a path.
                i += 2;
            }
            TokenTree::Ident(_) => {
                let mut path = prefix.to_vec();
                let open;
                (i, open) = read_path(&tokens, i, &mut path);
                match tokens.get(i) {
                    Some(TokenTree::Group(g)) if open && g.delimiter() == Delimiter::Brace => {
                        // `path::{...}`: a use-tree group; every path in it starts with `path`.
                        scan(g.stream(), &path, visit);
                        i += 1;
                    }
                    Some(TokenTree::Punct(p)) if open && p.as_char() == '*' => {
                        visit(&path, true);
                        i += 1;
                    }
                    _ => visit(&path, false),
                }
            }
            TokenTree::Group(g) => {
                scan(g.stream(), &[], visit);
                i += 1;
            }
            _ => i += 1,
        }
    }
}

/// Reads `a::b::c` starting at the identifier at `start` into `path`. Returns the index after it
/// and whether it ends in `::` (then the index is that of what follows: `{`, `*` or `<`).
fn read_path(tokens: &[TokenTree], start: usize, path: &mut Vec<Segment>) -> (usize, bool) {
    let mut i = start;
    while let Some(TokenTree::Ident(ident)) = tokens.get(i) {
        let name = ident.to_string();
        if name != "self" || path.is_empty() {
            path.push(Segment {
                name,
                line: ident.span().start().line,
            });
        }
        i += 1;
        if !is_path_separator(tokens, i) {
            return (i, false);
        }
        i += 2;
    }
    (i, true)
}

fn is_path_separator(tokens: &[TokenTree], i: usize) -> bool {
    matches!(
        (tokens.get(i), tokens.get(i + 1)),
        (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
            if a.as_char() == ':' && a.spacing() == Spacing::Joint && b.as_char() == ':'
    )
}

/// Whether `token` is the `[cfg(test)]` of an attribute.
fn is_cfg_test(token: Option<&TokenTree>) -> bool {
    matches!(token, Some(TokenTree::Group(g))
        if g.delimiter() == Delimiter::Bracket
            && g.stream().to_string().replace(' ', "") == "cfg(test)")
}

/// The index after the item starting at `start`: after its `;` or its `{...}` body.
fn end_of_item(tokens: &[TokenTree], start: usize) -> usize {
    let mut i = start;
    while let Some(token) = tokens.get(i) {
        i += 1;
        match token {
            TokenTree::Punct(p) if p.as_char() == ';' => break,
            TokenTree::Group(g) if g.delimiter() == Delimiter::Brace => break,
            _ => {}
        }
    }
    i
}

fn check(path: &[Segment], file: &str, found: &mut Vec<String>) {
    for (pattern, what) in FORBIDDEN {
        let want: Vec<&str> = pattern.split("::").collect();
        let names_a_crate =
            want.len() == 1 && pattern.starts_with(|c: char| c.is_ascii_lowercase());
        let starts: Vec<usize> = if names_a_crate {
            vec![0]
        } else {
            (0..path.len()).collect()
        };
        for start in starts {
            let Some(window) = path.get(start..start + want.len()) else {
                continue;
            };
            if window.iter().zip(&want).all(|(s, w)| s.name == *w) {
                let line = window.last().map_or(0, |s| s.line);
                found.push(format!("{file}:{line}: `{}` ({what})", joined(path)));
                return;
            }
        }
    }
}

/// A glob import is forbidden when it may bring in a forbidden name (`use kube::*`).
fn check_glob(path: &[Segment], file: &str, found: &mut Vec<String>) {
    for (pattern, what) in FORBIDDEN {
        let want: Vec<&str> = pattern.split("::").collect();
        let brings_in = (1..want.len()).any(|k| {
            path.len() >= k
                && path[path.len() - k..]
                    .iter()
                    .zip(&want[..k])
                    .all(|(s, w)| s.name == *w)
        });
        if brings_in || (want.len() == 1 && path.first().is_some_and(|s| s.name == want[0])) {
            let line = path.last().map_or(0, |s| s.line);
            found.push(format!("{file}:{line}: `{}::*` ({what})", joined(path)));
            return;
        }
    }
}

fn joined(path: &[Segment]) -> String {
    path.iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join("::")
}
