//! The module layering of `src/`, checked from the source: a module may use only modules of a lower
//! layer, and the sub-folders of one module (e.g. `dispatch/backend/` and `dispatch/dispatcher/`)
//! may not use each other in a circle. The table below is the architecture the README describes; a
//! new module gets a row here, and an import that breaks it fails this test with the file and line.
//!
//! It reads `crate::name` paths (including `crate::{a, b}` groups) and `super::name` paths outside
//! comments. That is a text scan, not name resolution: enough for a codebase that imports by path.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Each top-level module of the library and its layer; a module may use modules of lower layers only.
const LAYERS: &[(&str, u8)] = &[
    // Leaves: plain data, protocols and helpers that know nothing of the rest.
    ("entity", 0),
    ("dotenv", 0),
    ("budget", 0),
    ("stored_text", 0),
    ("pg_nodelay", 0),
    ("telemetry", 0),
    ("db_health", 0),
    ("comfy", 0),
    ("workflow", 0),
    ("metrics", 0),
    // The domain types and the settings.
    ("paths", 1),
    ("task", 1),
    ("config", 1),
    ("outbound", 1),
    ("release", 1),
    // Storage: SQL and files.
    ("db", 2),
    ("blob", 2),
    // Actors: post-processing, then the dispatcher and backends that send to them; beside the
    // post-processing actors, the API keys (read from the database, used by routes and cli).
    ("postprocess", 3),
    ("access", 3),
    // Release readiness: `release::check` over the configured backends, recorded by `db` (release
    // may use neither config nor db); used by routes and cli.
    ("readiness", 3),
    ("dispatch", 4),
    // Deployments: the deployer runs readiness checks for a deployment and records them in `db`;
    // above dispatch (it will tell the dispatcher which releases a backend passed). Used by
    // routes and startup.
    ("deploy", 5),
    // The submit service, the HTTP API over it, the wiring, the operator commands.
    ("intake", 5),
    ("routes", 6),
    ("startup", 7),
    ("cli", 8),
];

fn layer_of(module: &str) -> Option<u8> {
    LAYERS
        .iter()
        .find(|(name, _)| *name == module)
        .map(|(_, layer)| *layer)
}

/// A `crate::` or `super::` reference found in a file.
struct Use {
    file: PathBuf,
    line: usize,
    target: String,
}

/// The `src/` files of the library, as (path relative to src, module path).
fn library_files(src: &Path) -> Vec<(PathBuf, Vec<String>)> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read src dir") {
            let path = entry.expect("dir entry").path();
            let rel = path.strip_prefix(src).expect("under src").to_path_buf();
            let first = rel
                .components()
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned());
            // The binaries and the integration tests are not part of the library's layering.
            if matches!(first.as_deref(), Some("bin" | "tests")) {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let mut module: Vec<String> = rel
                    .with_extension("")
                    .iter()
                    .map(|c| c.to_string_lossy().into_owned())
                    .collect();
                if module.last().is_some_and(|m| m == "mod") {
                    module.pop();
                }
                if matches!(module.as_slice(), [only] if only == "lib" || only == "main") {
                    continue;
                }
                out.push((rel, module));
            }
        }
    }
    out.sort();
    out
}

/// The module names right after `prefix` in `line` (`crate::a::b` gives `a`; `crate::{a, b::c}`
/// gives `a` and `b`). Text after `//` is a comment and is skipped.
fn names_after(line: &str, prefix: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        // `foo_crate::x` is not `crate::x`.
        let before = rest[..at].chars().next_back();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or("");
            for item in inner.split(',') {
                let name = item.trim().split("::").next().unwrap_or("").trim();
                if !name.is_empty() {
                    names.push(name.to_string());
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.push(name);
            }
        }
    }
    names
}

fn uses_in(src: &Path, rel: &Path, prefix: &str) -> Vec<Use> {
    let text = fs::read_to_string(src.join(rel)).expect("read source file");
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            continue;
        }
        for target in names_after(line, prefix) {
            out.push(Use {
                file: rel.to_path_buf(),
                line: n + 1,
                target,
            });
        }
    }
    out
}

#[test]
fn every_module_uses_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut broken = Vec::new();
    let mut unknown = BTreeSet::new();
    for (rel, module) in library_files(&src) {
        let own = &module[0];
        let Some(own_layer) = layer_of(own) else {
            unknown.insert(own.clone());
            continue;
        };
        for u in uses_in(&src, &rel, "crate::") {
            if u.target == *own || u.target == "self" {
                continue;
            }
            match layer_of(&u.target) {
                Some(layer) if layer < own_layer => {}
                Some(layer) => broken.push(format!(
                    "{}:{}: `{own}` (layer {own_layer}) uses `{}` (layer {layer})",
                    u.file.display(),
                    u.line,
                    u.target
                )),
                // Not a module (e.g. a macro exported at the crate root): nothing to check.
                None => {}
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "modules missing from LAYERS in src/tests/layers.rs: {unknown:?}"
    );
    assert!(
        broken.is_empty(),
        "imports against the layering:\n{}",
        broken.join("\n")
    );
}

#[test]
fn sub_folders_of_a_module_do_not_use_each_other_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = library_files(&src);
    // A child module counts when it is a folder of its own (`dispatch/backend/`).
    let folders: BTreeSet<(String, String)> = files
        .iter()
        .filter(|(rel, _)| rel.components().count() >= 3)
        .map(|(_, m)| (m[0].clone(), m[1].clone()))
        .collect();
    let mut edges: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for (rel, module) in &files {
        if module.len() < 2 || !folders.contains(&(module[0].clone(), module[1].clone())) {
            continue;
        }
        let (top, child) = (&module[0], &module[1]);
        // `crate::top::other` from anywhere in the folder, and `super::other` from its mod.rs.
        let mut targets: Vec<String> = uses_in(&src, rel, &format!("crate::{top}::"))
            .into_iter()
            .map(|u| u.target)
            .collect();
        if module.len() == 2 {
            targets.extend(uses_in(&src, rel, "super::").into_iter().map(|u| u.target));
        }
        for t in targets {
            if t != *child && folders.contains(&(top.clone(), t.clone())) {
                edges
                    .entry((top.clone(), child.clone()))
                    .or_default()
                    .insert(t);
            }
        }
    }
    // A circle among at most a handful of folders: look for a path back to the start.
    let mut circles = Vec::new();
    for (top, start) in edges.keys() {
        let mut seen = BTreeSet::new();
        let mut stack = vec![vec![start.clone()]];
        while let Some(path) = stack.pop() {
            let last = path.last().expect("non-empty path");
            for next in edges
                .get(&(top.clone(), last.clone()))
                .into_iter()
                .flatten()
            {
                if next == start {
                    circles.push(format!("{top}: {} -> {start}", path.join(" -> ")));
                } else if seen.insert(next.clone()) {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    stack.push(longer);
                }
            }
        }
    }
    assert!(
        circles.is_empty(),
        "sub-folders in a circle:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_scan_reads_paths_groups_and_skips_comments() {
    assert_eq!(names_after("use crate::db::tasks;", "crate::"), ["db"]);
    assert_eq!(
        names_after("use crate::{task::TaskId, workflow};", "crate::"),
        ["task", "workflow"]
    );
    assert_eq!(
        names_after("let x = 1; // crate::routes", "crate::"),
        Vec::<String>::new()
    );
    assert_eq!(
        names_after("use other_crate::x;", "crate::"),
        Vec::<String>::new()
    );
    assert_eq!(
        names_after("super::messages::Enqueue", "super::"),
        ["messages"]
    );
}
