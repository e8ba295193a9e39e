//! The module rules of DESIGN.md, checked on the sources: stages never import one another or
//! the command line; the model and client rooms import no stage. A `use crate::X` (or a
//! `crate::X::` path) inside module M is an import of X by M.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules that are stages (each one stage of the pipeline). `problems` and `teacher_sim` are the
/// demo's generators, not stages (the simulated teacher solves generated problems).
const STAGES: &[&str] = &["collect", "verify", "filter", "dedup", "train", "eval", "inspect"];
/// The seam that stages may use across: filter and eval judge through verify's `Verifier`.
const SEAMS: &[(&str, &str)] = &[("filter", "verify"), ("eval", "verify")];
/// Shared rooms any stage may use.
const SHARED: &[&str] = &["record", "store", "config", "rng", "model", "client"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reads src") {
        let p = entry.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Top-level module of a source file (`src/model/kernels/ops.rs` → `model`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("component").as_os_str().to_string_lossy().to_string();
    first.trim_end_matches(".rs").to_string()
}

/// The top-level modules a file refers to with `crate::NAME`.
fn imports(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.insert(name);
            }
            rest = after;
        }
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let m = module_of(&src, &f);
        let text = std::fs::read_to_string(&f).expect("reads");
        let deps = g.entry(m.clone()).or_default();
        for i in imports(&text) {
            if i != m {
                deps.insert(i);
            }
        }
    }
    g
}

#[test]
fn stages_import_no_stage_and_not_the_command_line() {
    let g = graph();
    let mut bad = Vec::new();
    for (m, deps) in &g {
        for d in deps {
            let stage_to_stage = STAGES.contains(&m.as_str())
                && STAGES.contains(&d.as_str())
                && !SEAMS.contains(&(m.as_str(), d.as_str()));
            let cli = (d == "cli" || d == "run") && !matches!(m.as_str(), "main" | "lib" | "cli");
            let shared_to_stage = SHARED.contains(&m.as_str()) && STAGES.contains(&d.as_str());
            let shared_to_top = SHARED.contains(&m.as_str()) && matches!(d.as_str(), "cli" | "run");
            if stage_to_stage || cli || shared_to_stage || shared_to_top {
                bad.push(format!("{m} imports {d}"));
            }
        }
    }
    assert!(bad.is_empty(), "module rule broken: {bad:?}\n(graph: {g:?})");
}

#[test]
fn no_import_circle() {
    let g = graph();
    // Depth-first search for a back edge.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n).copied() {
            Some(1) => {
                let start = path.iter().position(|p| p == n).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            Some(2) => return None,
            _ => {}
        }
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, g, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        // `cli` and `lib` sit on top and import everything; they are in no circle by construction.
        let cycle = visit(n, &g, &mut state, &mut Vec::new());
        assert!(cycle.is_none(), "import circle between modules: {cycle:?}");
    }
}

#[test]
fn the_checker_sees_imports() {
    let got = imports("use crate::store::{self, X};\nlet a = crate::model::weights::f(); // crate::cli\n");
    assert_eq!(got, ["model", "store"].iter().map(|s| s.to_string()).collect());
}
