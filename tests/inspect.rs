//! `distill inspect` as a user runs it: statistics, pretty-printing, and a one-line error
//! naming the file and line for each kind of bad input.

mod common;
use common::{distill_in as distill, stderr};

use std::path::Path;

use serde_json::{Value, json};

fn prompt(i: usize) -> String {
    json!({"id": format!("p{i}"), "task": "math", "prompt": format!("What is {i}+1?"), "answer": (i + 1).to_string(), "source": "t"}).to_string()
}

fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    let mut bytes = Vec::new();
    for l in lines {
        bytes.extend_from_slice(l);
        bytes.push(b'\n');
    }
    std::fs::write(path, bytes).expect("writes");
}

#[test]
fn stats_as_json_and_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("p.jsonl");
    write_lines(&f, &(0..10).map(|i| prompt(i).into_bytes()).collect::<Vec<_>>());
    let o = distill(&["inspect", "p.jsonl", "--json"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["records"], 10);
    assert_eq!(v["by_task"]["math"], 10);
    assert_eq!(v["chars"]["prompt"]["max"], 12);
    assert_eq!(v["chars"]["answer"]["min"], 1);
    let o = distill(&["inspect", "p.jsonl"], dir.path());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("p.jsonl: 10 records") && text.contains("task: math 10 (100.0%)"), "{text}");
}

#[test]
fn id_and_sample_pretty_print_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = json!({"id": "q/0", "prompt_id": "q", "sample": 0, "task": "math", "prompt": "2+2?",
        "messages": [{"role": "user", "content": "2+2?"}], "reasoning": "two and two",
        "content": "\\boxed{4}", "finish_reason": "stop",
        "teacher": {"model": "m", "endpoint": "e"}, "params": {"temperature": 0.6, "top_p": 0.95}});
    write_lines(&dir.path().join("s.jsonl"), &[rec.to_string().into_bytes(), prompt(1).into_bytes()]);
    let o = distill(&["inspect", "s.jsonl", "--id", "q/0"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let think = text.find("THINKING").expect("thinking");
    let answer = text.find("ANSWER (").expect("answer");
    assert!(think < answer && text.contains("two and two") && text.contains("\\boxed{4}"), "{text}");
    let o = distill(&["inspect", "s.jsonl", "--id", "nope"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no record with id \"nope\""), "{}", stderr(&o));
    let o = distill(&["inspect", "s.jsonl", "--sample", "5"], dir.path());
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(text.lines().filter(|l| l.starts_with("━━━ ")).count(), 2, "{text}");
}

#[test]
fn each_bad_input_gives_a_one_line_error_with_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = || prompt(0).into_bytes();
    let cases: Vec<(&str, Vec<Vec<u8>>, &str)> = vec![
        (
            "malformed.jsonl",
            vec![good(), b"{\"id\": \"p1\", \"task\": ".to_vec(), good()],
            "malformed.jsonl:2: invalid JSON",
        ),
        (
            "missing.jsonl",
            vec![good(), good(), br#"{"id": "p9", "prompt": "q"}"#.to_vec()],
            "missing.jsonl:3 (id p9): missing field `task`",
        ),
        (
            "utf8.jsonl",
            vec![b"{\"id\": \"p\xff\", \"task\": \"math\", \"prompt\": \"q\"}".to_vec()],
            "utf8.jsonl:1: invalid UTF-8",
        ),
        ("array.jsonl", vec![good(), b"[1, 2]".to_vec()], "array.jsonl:2: expected a JSON object"),
        (
            "task.jsonl",
            vec![br#"{"id": "p", "task": "poetry", "prompt": "q"}"#.to_vec()],
            "task.jsonl:1 (id p): unknown variant `poetry`",
        ),
    ];
    for (name, lines, want) in &cases {
        write_lines(&dir.path().join(name), lines);
        let o = distill(&["inspect", name], dir.path());
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(want), "{name}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{name}: not one line: {err}");
    }
    std::fs::write(dir.path().join("data.csv"), "a,b\n").expect("writes");
    let o = distill(&["inspect", "data.csv"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("data.csv: unsupported file type: expected .jsonl, .jsonl.zst or .parquet"),
        "{}",
        stderr(&o)
    );
    let o = distill(&["inspect", "absent.jsonl"], dir.path());
    assert!(stderr(&o).contains("absent.jsonl: No such file"), "{}", stderr(&o));

    // --skip-invalid: every bad line counted and written with its reason; exit code 1.
    let mut all = Vec::new();
    for (_, lines, _) in &cases {
        all.extend(lines.iter().cloned());
    }
    write_lines(&dir.path().join("all.jsonl"), &all);
    let o = distill(&["inspect", "all.jsonl", "--skip-invalid", "--rejects", "rej.jsonl", "--json"], dir.path());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!((v["records"].as_u64(), v["invalid"].as_u64()), (Some(5), Some(5)), "{v}");
    let rejects = std::fs::read_to_string(dir.path().join("rej.jsonl")).expect("rejects file");
    let rows: Vec<Value> = rejects.lines().map(|l| serde_json::from_str(l).expect("reject row")).collect();
    assert_eq!(rows.len(), 5);
    assert!(
        rows.iter().all(|r| r["reason"].as_str().is_some_and(|s| s.contains("all.jsonl:")) && r["line"].is_u64()),
        "{rejects}"
    );
    assert_eq!(rows[1]["id"], "p9");
    assert_eq!(rows[1]["record"]["prompt"], "q");
}

#[test]
fn truncated_compressed_file_is_reported_not_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.jsonl.zst");
    let mut w = distill::store::JsonlWriter::create(&path, distill::store::Durability::EveryRecord).expect("creates");
    for i in 0..20 {
        w.write_line(prompt(i).as_bytes()).expect("writes");
    }
    w.close().expect("closes");
    let bytes = std::fs::read(&path).expect("reads");
    std::fs::write(&path, &bytes[..bytes.len() - 3]).expect("truncates");
    let o = distill(&["inspect", "t.jsonl.zst", "--json"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("torn tail"), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["records"], 20);
    assert_eq!(v["torn_tails"].as_array().map(Vec::len), Some(1));
}

#[test]
fn show_config_prints_the_resolved_settings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = distill(&["inspect", "x.jsonl", "--sample", "3", "--show-config"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("[inspect]") && text.contains("sample = 3") && text.contains("path = \"x.jsonl\""), "{text}");
}

#[test]
fn token_lengths_with_a_tokenizer_json() {
    use tokenizers::models::wordlevel::WordLevel;
    let dir = tempfile::tempdir().expect("tempdir");
    let vocab = [("[UNK]".to_string(), 0u32), ("What".to_string(), 1), ("is".to_string(), 2)].into_iter().collect();
    let model = WordLevel::builder().vocab(vocab).unk_token("[UNK]".into()).build().expect("model");
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
    tok.save(dir.path().join("tokenizer.json"), false).expect("saves");
    // "What is 3+1?" → What, is, 3, +, 1, ? = 6 tokens; "What is 10+1?" too.
    write_lines(&dir.path().join("p.jsonl"), &[prompt(3).into_bytes(), prompt(10).into_bytes()]);
    let o = distill(&["inspect", "p.jsonl", "--json", "--tokenizer", "tokenizer.json"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["tokens"]["prompt"]["min"], 6, "{v}");
    assert_eq!(v["tokens"]["prompt"]["max"], 6, "{v}");
    assert_eq!(v["tokens"]["answer"]["count"], 2, "{v}");
    let o = distill(&["inspect", "p.jsonl", "--tokenizer", "p.jsonl"], dir.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot load tokenizer"), "{}", stderr(&o));
}

/// A `filter` output directory: the funnel is shown, and rejects are broken down by the checks
/// they failed.
#[test]
fn filter_output_shows_its_funnel_and_failed_checks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("filtered");
    std::fs::create_dir_all(out.join("rejects")).expect("mkdir");
    std::fs::create_dir_all(out.join("kept")).expect("mkdir");
    let kept = json!({"id": "p/2", "prompt_id": "p", "task": "math", "messages": [{"role": "user", "content": "q"}]});
    write_lines(&out.join("kept/train-00000.jsonl"), &[kept.to_string().into_bytes()]);
    std::fs::write(out.join("funnel.json"), r#"{"samples_in": 3, "kept": 1}"#).expect("funnel");
    let sample = |id: &str, checks: Value| {
        json!({"id": id, "prompt_id": "p", "sample": 0, "task": "math", "prompt": "q",
               "messages": [{"role": "user", "content": "q"}], "content": "a",
               "teacher": {"model": "m", "endpoint": "e"}, "params": {"temperature": 0.6, "top_p": 0.95},
               "verdict": {"pass": false, "checks": checks, "kept": false}})
        .to_string()
        .into_bytes()
    };
    write_lines(
        &out.join("rejects/samples-00000.jsonl"),
        &[
            sample(
                "p/0",
                json!({"language": {"pass": false}, "repetition": {"pass": false}, "format": {"pass": true}}),
            ),
            sample("p/1", json!({"language": {"pass": false}})),
        ],
    );
    let o = distill(&["inspect", "filtered", "--json"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["funnel"]["kept"], 1, "{v}");
    assert_eq!(v["by_failed_check"]["language"], 2, "{v}");
    assert_eq!(v["by_failed_check"]["repetition"], 1, "{v}");
    assert!(v["by_failed_check"].get("format").is_none(), "{v}");
    let o = distill(&["inspect", "filtered"], dir.path());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("failed checks: language 2") && text.contains("funnel (funnel.json)"), "{text}");
}
