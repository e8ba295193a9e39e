//! One way to reject a record: the same bad line given to `inspect`, `verify`, `score` and
//! `finetune` gives the same one-line report on stderr, the same line in the rejects file, and
//! the same exit code (1: finished, with rejected input); the good records are still used.

mod common;
use common::{chat_model_dir, distill_in, stderr};

use serde_json::{Value, json};

fn good(i: usize) -> String {
    json!({"id": format!("ex{i}"), "prompt_id": format!("p{i}"), "task": "math",
           "messages": [{"role": "user", "content": format!("What is {i} + 1?")},
                        {"role": "assistant", "content": format!("<think>\n{i} plus one.\n</think>\n\n\\boxed{{{}}}", i + 1)}]})
    .to_string()
}

#[test]
fn the_same_bad_record_is_rejected_the_same_way_by_every_stage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    let mut lines: Vec<String> = (0..6).map(good).collect();
    lines.insert(1, "{\"id\": \"broken\", \"messages\": [".to_string());
    std::fs::write(data.join("train-00000.jsonl"), lines.join("\n") + "\n").expect("writes");
    let model = chat_model_dir();
    let m = model.path().to_str().expect("utf-8");
    let file = "data/train-00000.jsonl";

    let runs: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "inspect",
            vec!["inspect", file, "--skip-invalid", "--rejects", "inspect-rejects.jsonl"],
            "inspect-rejects.jsonl",
        ),
        ("verify", vec!["verify", file, "--out", "verified.jsonl"], "verified.jsonl.rejects.jsonl"),
        ("score", vec!["score", "--model", m, file, "--rejects", "score-rejects.jsonl"], "score-rejects.jsonl"),
        (
            "finetune",
            vec![
                "finetune",
                "--model",
                m,
                "--data",
                "data",
                "--out",
                "ft",
                "--max-steps",
                "1",
                "--no-progress",
                "--max-seq-len",
                "128",
                "--tokens-per-step",
                "128",
            ],
            "ft/rejects.jsonl",
        ),
    ];
    let mut rows = Vec::new();
    for (stage, args, rejects) in runs {
        let o = distill_in(&args, dir.path());
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{stage}: exit 1 for finished with rejects: {err}");
        let line = format!("{stage}: rejected {file}:2: invalid JSON");
        assert_eq!(err.lines().filter(|l| l.starts_with(&line)).count(), 1, "{stage}: one line `{line}`: {err}");
        let text = std::fs::read_to_string(dir.path().join(rejects)).unwrap_or_else(|e| panic!("{stage}: {e}"));
        let got: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
        assert_eq!(got.len(), 1, "{stage}: {text}");
        rows.push((stage, got.into_iter().next().expect("one row")));
    }
    let (_, first) = &rows[0];
    assert_eq!(first["line"], 2);
    assert!(first["reason"].as_str().is_some_and(|r| r.starts_with(&format!("{file}:2: invalid JSON"))), "{first}");
    for (stage, row) in &rows {
        assert_eq!(row, first, "{stage}: the same rejects line as inspect");
    }
}
