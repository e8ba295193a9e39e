//! The public reasoning-dataset layouts (tests/fixtures/layouts: TRL/Mixture-of-Thoughts
//! `messages`, OpenThoughts ShareGPT `conversations`, OpenR1-Math rows with `generations`,
//! NuminaMath problems, samples without provenance, prompt/response pairs) read by every
//! reading stage through the store's one reader: inspected with no rejects, judged by `verify`,
//! trained on by `finetune` and scored by `score`.

mod common;
use common::{chat_model_dir, distill_in, fixtures, stderr};

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

fn fixture(name: &str) -> PathBuf {
    fixtures().join("layouts").join(name)
}

fn ok(o: &std::process::Output) -> String {
    let err = stderr(o);
    assert!(o.status.success(), "exit {:?}: {err}", o.status.code());
    err
}

fn inspect_json(dir: &Path, args: &[&str]) -> Value {
    let o = distill_in(&[&["inspect"], args, &["--json"]].concat(), dir);
    ok(&o);
    serde_json::from_slice(&o.stdout).expect("inspect --json")
}

/// (fixture, records inspect counts, by_task, by_layout)
fn cases() -> Vec<(&'static str, u64, Value, Value)> {
    vec![
        ("trl_messages.jsonl", 3, json!({"math": 2, "open": 1}), json!({"messages": 3})),
        ("openthoughts_sharegpt.jsonl", 3, json!({"open": 3}), json!({"sharegpt": 3})),
        ("openr1_math.jsonl", 5, json!({"math": 5}), json!({"generations": 2})),
        ("numina_problems.jsonl", 2, json!({"math": 2}), json!({"problem": 2})),
        ("samples_no_provenance.jsonl", 2, json!({"math": 2}), json!({"distill": 2})),
        ("pairs.jsonl", 3, json!({"math": 1, "open": 2}), json!({"pair": 3})),
    ]
}

#[test]
fn inspect_counts_every_layout_without_rejects() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, n, by_task, by_layout) in cases() {
        let f = fixture(name);
        let v = inspect_json(dir.path(), &[f.to_str().expect("utf-8 path")]);
        assert_eq!(v["records"], n, "{name}: {v}");
        assert_eq!(v["invalid"], 0, "{name}: {v}");
        assert_eq!(v["by_task"], by_task, "{name}: {v}");
        assert_eq!(v["by_layout"], by_layout, "{name}: {v}");
        assert!(
            v["chars"]["prompt"]["count"].as_u64().is_some_and(|c| c == n),
            "{name}: every record has a prompt: {v}"
        );
    }
    assert!(!dir.path().join("distill-rejects.jsonl").exists());

    // OpenR1-Math: the dataset's labels become verdicts and finish reasons.
    let v = inspect_json(dir.path(), &[fixture("openr1_math.jsonl").to_str().expect("path")]);
    assert_eq!(v["by_verdict"], json!({"correctness_math_verify": 5}), "{v}");
    assert_eq!(v["by_finish_reason"], json!({"stop": 1, "length": 1}), "{v}");

    // Shown as distill's records: OpenThoughts' markers read as thinking and answer.
    let o = distill_in(
        &["inspect", fixture("openthoughts_sharegpt.jsonl").to_str().expect("path"), "--id", "openthoughts_sharegpt-1"],
        dir.path(),
    );
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    ok(&o);
    let (think, answer) = (text.find("THINKING").expect("thinking"), text.find("ANSWER (").expect("answer"));
    assert!(think < answer && text.contains("12 + 30 = 42") && text.contains("The sum is \\boxed{42}."), "{text}");
    assert!(!text.contains("<|begin_of_thought|>"), "{text}");
    let o = distill_in(
        &["inspect", fixture("openr1_math.jsonl").to_str().expect("path"), "--id", "5c7a1e2b-0002/1"],
        dir.path(),
    );
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    ok(&o);
    assert!(text.contains("1/2 + 1/3 = 2/5"), "{text}");
}

#[test]
fn verify_judges_every_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    // (fixture, reasons of the verdicts in order)
    let want: &[(&str, &[&str])] = &[
        ("trl_messages.jsonl", &["equal", "not_equal", "unsupported_task"]),
        ("openthoughts_sharegpt.jsonl", &["unsupported_task"; 3]),
        ("openr1_math.jsonl", &["equal", "not_equal", "equal", "equal", "not_equal"]),
        ("samples_no_provenance.jsonl", &["equal", "not_equal"]),
        ("pairs.jsonl", &["equal", "unsupported_task", "unsupported_task"]),
    ];
    for (name, reasons) in want {
        let out = dir.path().join(format!("{name}.verified.jsonl"));
        let o = distill_in(
            &["verify", fixture(name).to_str().expect("path"), "--out", out.to_str().expect("path"), "--summary"],
            dir.path(),
        );
        ok(&o);
        let rows: Vec<Value> = std::fs::read_to_string(&out)
            .expect("verified file")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        let got: Vec<&str> = rows.iter().map(|r| r["verdict"]["reason"].as_str().unwrap_or("?")).collect();
        assert_eq!(&got, reasons, "{name}");
        // What verify writes is distill's schema: every later stage and inspect read it as is.
        let v = inspect_json(dir.path(), &[out.to_str().expect("path")]);
        assert_eq!((v["records"].as_u64(), v["invalid"].as_u64()), (Some(rows.len() as u64), Some(0)), "{name}: {v}");
        assert!(v["by_layout"].get("distill").is_some(), "{name}: {v}");
        assert!(
            rows.iter().all(|r| r.get("teacher").is_none() && r.get("usage").is_none()),
            "{name}: no made-up provenance"
        );
    }
}

#[test]
fn finetune_and_score_train_on_every_layout() {
    let model = chat_model_dir();
    let dir = tempfile::tempdir().expect("tempdir");
    let m = model.path().to_str().expect("path");
    for name in [
        "trl_messages.jsonl",
        "openthoughts_sharegpt.jsonl",
        "openr1_math.jsonl",
        "samples_no_provenance.jsonl",
        "pairs.jsonl",
    ] {
        let out = dir.path().join(name.replace('.', "_"));
        let data = fixture(name);
        let o = distill_in(
            &[
                "finetune",
                "--model",
                m,
                "--data",
                data.to_str().expect("path"),
                "--out",
                out.to_str().expect("path"),
                "--max-steps",
                "1",
                "--max-seq-len",
                "512",
                "--tokens-per-step",
                "4096",
                "--no-progress",
            ],
            dir.path(),
        );
        let err = ok(&o);
        assert!(err.contains("final model"), "{name}: {err}");
        assert!(!err.contains(" 0 samples used"), "{name}: {err}");
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
        let steps: Vec<Value> = metrics
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &Value| v.get("loss").is_some())
            .collect();
        assert_eq!(steps.len(), 1, "{name}: {metrics}");
        assert!(steps[0]["loss"].as_f64().is_some_and(f64::is_finite), "{name}: {metrics}");

        let o = distill_in(&["score", "--model", m, data.to_str().expect("path"), "--json"], dir.path());
        ok(&o);
        let v: Value = serde_json::from_slice(&o.stdout).expect("score json");
        assert_eq!(v["rejected"], 0, "{name}: {v}");
        assert!(v["tokens"].as_u64().is_some_and(|t| t > 0), "{name}: {v}");
    }
}

#[test]
fn map_names_other_columns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("custom.jsonl");
    let rows = [
        json!({"qid": "a", "question_text": "What is 2+2?", "gold": "4", "trace": "<think>\n2+2=4\n</think>\n\n\\boxed{4}"}),
        json!({"qid": "b", "question_text": "What is 3+3?", "gold": "6", "trace": "<think>\n3+3=7\n</think>\n\n\\boxed{7}"}),
    ];
    std::fs::write(&f, rows.iter().map(|r| format!("{r}\n")).collect::<String>()).expect("writes");
    let maps = ["--map", "id=qid", "--map", "prompt=question_text", "--map", "answer=gold", "--map", "response=trace"];
    let v = inspect_json(dir.path(), &[&["custom.jsonl"][..], &maps].concat());
    assert_eq!((v["records"].as_u64(), v["invalid"].as_u64()), (Some(2), Some(0)), "{v}");
    assert_eq!(v["by_task"], json!({"math": 2}), "{v}");
    let o = distill_in(&[&["verify", "custom.jsonl"][..], &maps].concat(), dir.path());
    ok(&o);
    let got: Vec<Value> =
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    let verdicts: Vec<(&str, bool)> = got
        .iter()
        .map(|r| (r["id"].as_str().unwrap_or("?"), r["verdict"]["pass"].as_bool().unwrap_or(false)))
        .collect();
    assert_eq!(verdicts, vec![("a", true), ("b", false)]);

    // Without --map the file is not a layout: inspect names what is missing.
    let o = distill_in(&["inspect", "custom.jsonl"], dir.path());
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("custom.jsonl:1: missing field `id`"), "{}", stderr(&o));
    // A malformed --map is refused with the form it wants.
    let o = distill_in(&["inspect", "custom.jsonl", "--map", "prompt"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("expected FIELD=COLUMN"), "{}", stderr(&o));
    // --map is a setting like any other: shown by --show-config, taken from a recipe.
    let o = distill_in(&["inspect", "custom.jsonl", "--map", "prompt=question_text", "--show-config"], dir.path());
    let shown = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(shown.contains("question_text"), "{shown}");
}

#[test]
fn broken_layout_rows_are_rejected_with_their_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("mixed.jsonl");
    let rows = [
        json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}),
        json!({"problem": "q", "uuid": "u-9", "generations": ["<think>x</think>1", 2]}),
        json!({"conversations": [{"speaker": "human", "text": "q"}]}),
    ];
    std::fs::write(&f, rows.iter().map(|r| format!("{r}\n")).collect::<String>()).expect("writes");
    let o = distill_in(&["inspect", "mixed.jsonl", "--skip-invalid", "--rejects", "rej.jsonl", "--json"], dir.path());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("mixed.jsonl:2 (id u-9): generations[1] is a number"), "{err}");
    assert!(err.contains("mixed.jsonl:3: conversations[0] has no `from`"), "{err}");
    let rej: Vec<Value> = std::fs::read_to_string(dir.path().join("rej.jsonl"))
        .expect("rejects")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(rej.len(), 2);
    assert_eq!(rej[0]["record"]["uuid"], "u-9", "the row as read is kept: {:?}", rej[0]);
}

/// The public datasets ship as Parquet (`data/train-*.parquet`): the same rows read from Parquet
/// are the same records.
#[test]
fn parquet_rows_read_like_jsonl_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, n, by_task, by_layout) in cases() {
        let text = std::fs::read_to_string(fixture(name)).expect("fixture");
        let pq = dir.path().join(name.replace(".jsonl", ".parquet"));
        let mut w = distill::store::create(&pq).expect("parquet writer");
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).expect("json");
            w.write_value(&v).expect("writes");
        }
        w.finish().expect("finishes");
        let v = inspect_json(dir.path(), &[pq.to_str().expect("path")]);
        assert_eq!((v["records"].as_u64(), v["invalid"].as_u64()), (Some(n), Some(0)), "{name}: {v}");
        assert_eq!((&v["by_task"], &v["by_layout"]), (&by_task, &by_layout), "{name}: {v}");
    }
}

/// `filter` reads every layout of samples through the same reader: nothing is invalid, and
/// what it keeps is distill's schema.
#[test]
fn filter_reads_every_sample_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, n, _, _) in cases() {
        if name == "numina_problems.jsonl" {
            continue; // prompts, not samples
        }
        let out = dir.path().join(name.replace('.', "_"));
        let o = distill_in(
            &[
                "filter",
                "--input",
                fixture(name).to_str().expect("path"),
                "--out",
                out.to_str().expect("path"),
                "--no-progress",
                "--skip",
                "language,readability,repetition,length",
            ],
            dir.path(),
        );
        let err = stderr(&o);
        assert!(o.status.success(), "{name}: {err}");
        let funnel: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("funnel.json")).expect("funnel.json"))
                .expect("json");
        assert_eq!((funnel["invalid"].as_u64(), funnel["samples_in"].as_u64()), (Some(0), Some(n)), "{name}: {funnel}");
        let v = inspect_json(dir.path(), &[out.join("kept").to_str().expect("path")]);
        assert_eq!(v["invalid"], 0, "{name}: {v}");
        if name == "openr1_math.jsonl" {
            // Its verdicts carry no `extracted`: filter asks the verifier for the extraction
            // the format check needs and keeps the dataset's judgement.
            assert_eq!(funnel["samples_out"].as_u64(), Some(3), "{name}: the 3 correct generations kept: {funnel}");
        }
        let layouts: Vec<String> = v["by_layout"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
        assert!(layouts.iter().all(|l| l == "distill"), "{name}: {v}");
    }
}
