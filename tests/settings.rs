//! Settings resolution of every command, as a user meets it: defaults < the command's table of
//! `--recipe FILE` < `--set key=value` < the flags typed; a flag not typed never overrides the
//! recipe; `--show-config` names where each value came from; and every command's resolved
//! defaults equal what they were before resolution was unified (snapshot), except the defaults
//! that were wrong.

mod common;
use common::{distill_in, stderr};

use std::path::Path;

/// One command: its name, table, the arguments it needs anyway, and a setting to move through
/// the layers with the flag that sets it.
struct Case {
    args: &'static [&'static str],
    table: &'static str,
    key: &'static str,
    flag: &'static str,
    /// The values of the recipe, of `--set` and of the flag.
    values: [&'static str; 3],
    /// Another flag, typed, which must not disturb `key`.
    other: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        args: &["inspect", "x.jsonl"],
        table: "inspect",
        key: "sample",
        flag: "--sample",
        values: ["2", "3", "4"],
        other: &["--json"],
    },
    Case {
        args: &["verify", "x.jsonl"],
        table: "verify",
        key: "chunk",
        flag: "--chunk",
        values: ["2", "3", "4"],
        other: &["--summary"],
    },
    Case {
        args: &["problems", "--kind", "math", "--count", "3", "--out", "p.jsonl"],
        table: "problems",
        key: "seed",
        flag: "--seed",
        values: ["2", "3", "4"],
        other: &[],
    },
    Case {
        args: &["teacher-sim"],
        table: "teacher_sim",
        key: "slow_ms",
        flag: "--slow-ms",
        values: ["2", "3", "4"],
        other: &["--port", "0"],
    },
    Case {
        args: &["collect", "--prompts", "p.jsonl", "--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--out", "o"],
        table: "collect",
        key: "concurrency",
        flag: "--concurrency",
        values: ["2", "3", "4"],
        other: &["--stream"],
    },
    Case {
        args: &["score", "--model", "m", "s.jsonl"],
        table: "score",
        key: "limit",
        flag: "--limit",
        values: ["2", "3", "4"],
        other: &["--json"],
    },
    Case {
        args: &["finetune", "--model", "m", "--data", "d", "--out", "o"],
        table: "finetune",
        key: "loader.batch",
        flag: "--batch",
        values: ["2", "3", "4"],
        other: &["--resume"],
    },
    Case {
        args: &["filter", "--input", "s.jsonl", "--out", "o"],
        table: "filter",
        key: "max_foreign_words",
        flag: "--max-foreign-words",
        values: ["2", "3", "4"],
        other: &["--no-progress"],
    },
    Case {
        args: &["convert", "m.gguf", "--out", "o"],
        table: "convert",
        key: "dtype",
        flag: "--dtype",
        values: ["\"bfloat16\"", "float16", "float32"],
        other: &[],
    },
];

fn shown(dir: &Path, args: &[&str]) -> (toml::Table, String) {
    let o = distill_in(&[args, &["--show-config"]].concat(), dir);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    (text.parse().unwrap_or_else(|e| panic!("{args:?}: not TOML: {e}\n{text}")), text)
}

fn value_at(t: &toml::Table, table: &str, key: &str) -> String {
    let mut v = t.get(table).unwrap_or_else(|| panic!("no [{table}] in {t:?}"));
    for part in key.split('.') {
        v = v.get(part).unwrap_or_else(|| panic!("no {key} in [{table}]"));
    }
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[test]
fn default_recipe_set_flag_for_every_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut recipe = String::new();
    for c in CASES {
        let (path, leaf) = match c.key.rsplit_once('.') {
            Some((p, l)) => (format!("{}.{p}", c.table), l),
            None => (c.table.to_string(), c.key),
        };
        recipe.push_str(&format!("[{path}]\n{leaf} = {}\n\n", c.values[0]));
    }
    std::fs::write(dir.path().join("r.toml"), &recipe).expect("writes");
    let unquote = |v: &str| v.trim_matches('"').to_string();
    for c in CASES {
        let (defaults, _) = shown(dir.path(), c.args);
        let default = value_at(&defaults, c.table, c.key);
        assert_ne!(default, unquote(c.values[0]), "{}: pick a recipe value other than the default", c.table);

        let with_recipe = [c.args, &["--recipe", "r.toml"]].concat();
        let (t, text) = shown(dir.path(), &with_recipe);
        assert_eq!(value_at(&t, c.table, c.key), unquote(c.values[0]), "{}: recipe over default", c.table);
        assert!(text.contains("# recipe r.toml:"), "{}: origin shown: {text}", c.table);

        let set = format!("{}={}", c.key, c.values[1]);
        let with_set = [&with_recipe[..], &["--set", &set]].concat();
        let (t, text) = shown(dir.path(), &with_set);
        assert_eq!(value_at(&t, c.table, c.key), unquote(c.values[1]), "{}: --set over recipe", c.table);
        assert!(text.contains("# --set"), "{}: {text}", c.table);

        let flag_value = unquote(c.values[2]);
        let with_flag = [&with_set[..], &[c.flag, &flag_value]].concat();
        let (t, text) = shown(dir.path(), &with_flag);
        assert_eq!(value_at(&t, c.table, c.key), unquote(c.values[2]), "{}: flag over --set", c.table);
        assert!(text.contains(&format!("# {}", c.flag)), "{}: {text}", c.table);

        // Other flags typed (and every flag not typed) leave the recipe's value alone.
        let others = [&with_recipe[..], c.other].concat();
        let (t, _) = shown(dir.path(), &others);
        assert_eq!(value_at(&t, c.table, c.key), unquote(c.values[0]), "{}: untyped flags do not override", c.table);

        // The table prefix is accepted by --set too.
        let set = format!("{}.{}={}", c.table, c.key, c.values[1]);
        let (t, _) = shown(dir.path(), &[c.args, &["--set", &set]].concat());
        assert_eq!(value_at(&t, c.table, c.key), unquote(c.values[1]), "{}: --set TABLE.KEY", c.table);
    }
}

#[test]
fn mistakes_in_set_are_one_line_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (args, want) in [
        (&["inspect", "x.jsonl", "--set", "nope=1", "--show-config"][..], "unknown field `nope`"),
        (&["inspect", "x.jsonl", "--set", "sample=lots", "--show-config"][..], "[inspect] sample (from --set)"),
        (&["inspect", "x.jsonl", "--set", "sample", "--show-config"][..], "expected KEY=VALUE"),
        (&["collect", "--show-config"][..], "give --prompts or `prompts = ...`"),
    ] {
        let o = distill_in(args, dir.path());
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let e = stderr(&o);
        assert_eq!(e.trim().lines().count(), 1, "{e}");
        assert!(e.contains(want), "{args:?}: {e}");
    }
}

/// The resolved defaults of every command before settings were unified (made by the binary of
/// commit 9cc62a4 with the arguments below; `tests/fixtures/show-config/README.md`) equal
/// today's, except the defaults that were wrong and are listed here.
#[test]
fn show_config_matches_the_snapshot_before_unification() {
    let snap = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/show-config");
    let dir = tempfile::tempdir().expect("tempdir");
    let runs: &[(&str, &[&str])] = &[
        ("inspect", &["inspect", "x.jsonl"]),
        ("verify", &["verify", "x.jsonl"]),
        ("problems", &["problems", "--kind", "math", "--count", "3", "--out", "p.jsonl"]),
        ("teacher-sim", &["teacher-sim", "--port", "0"]),
        (
            "collect",
            &["collect", "--prompts", "p.jsonl", "--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--out", "o"],
        ),
        ("score", &["score", "--model", "m", "s.jsonl"]),
        ("finetune", &["finetune", "--model", "m", "--data", "d", "--out", "o"]),
        ("finetune-lora", &["finetune", "--model", "m", "--data", "d", "--out", "o", "--lora-rank", "8"]),
        ("convert", &["convert", "m.gguf", "--out", "o"]),
    ];
    // Keys new since the snapshot (settings that did not exist), and values that changed on purpose.
    let new_keys: &[&str] = &[
        "verify.rejects",
        "score.rejects",
        "verify.code.compile_timeout_s",
        "verify.code.compile_memory_mb",
        "finetune.precision",
    ];
    for (name, args) in runs {
        let before: toml::Table = std::fs::read_to_string(snap.join(format!("{name}.toml")))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .parse()
            .expect("snapshot is TOML");
        let (mut now, _) = shown(dir.path(), args);
        for k in new_keys {
            let (parents, leaf) = k.rsplit_once('.').expect("dotted");
            let mut t = Some(&mut now);
            for p in parents.split('.') {
                t = t.and_then(|t| t.get_mut(p)).and_then(toml::Value::as_table_mut);
            }
            if let Some(t) = t {
                t.remove(leaf);
            }
        }
        assert_eq!(now, before, "{name}: --show-config changed");
    }
}
