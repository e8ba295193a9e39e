//! End-to-end tests of `distill verify`.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_distill")
}

fn records() -> Vec<Value> {
    vec![
        json!({"id": "m1", "task": "math", "answer": "3/4", "content": "so $\\boxed{\\frac{3}{4}}$", "extra": [1]}),
        json!({"id": "m2", "task": "math", "answer": "y=2x+1", "response": "<think>\\boxed{0}</think>\\boxed{2x+1}"}),
        json!({"id": "m3", "task": "math", "answer": 42, "content": "The final answer is 42."}),
        json!({"id": "m4", "task": "math", "answer": "5", "content": "\\boxed{10^{10^{10}}}"}),
        json!({"id": "c1", "task": "code", "content": "print(1)", "verdict": {"kept": true}}),
        json!({"id": "m5", "task": "math", "answer": "7", "content": "I am not sure"}),
    ]
}

fn write_input(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("in.jsonl");
    let mut f = std::fs::File::create(&p).unwrap();
    for (i, r) in records().iter().enumerate() {
        writeln!(f, "{r}").unwrap();
        if i == 2 {
            writeln!(f, "{{not json").unwrap();
        }
    }
    p
}

fn check(out: &[Value]) {
    let ids: Vec<&str> = out.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["m1", "m2", "m3", "m4", "c1", "m5"], "order preserved, nothing dropped");
    let v = |i: usize| &out[i]["verdict"];
    assert_eq!(v(0)["pass"], true);
    assert_eq!(v(0)["reason"], "equal");
    assert_eq!(v(0)["extracted"], "\\frac{3}{4}");
    assert_eq!(out[0]["extra"], json!([1]), "unknown fields kept");
    assert_eq!(v(1)["pass"], false, "an equation is never judged by its right side alone");
    assert_eq!(v(2)["pass"], true);
    assert_eq!(v(3)["pass"], false);
    assert!(v(3)["reason"].as_str().unwrap().starts_with("undecided"), "{}", v(3));
    assert_eq!(v(4)["reason"], "missing_tests", "a code record without tests cannot be judged");
    assert_eq!(v(4)["kept"], true, "other verdict fields kept");
    assert_eq!(v(5)["reason"], "no_answer");
    assert_eq!(v(5)["extracted"], Value::Null);
}

#[test]
fn verify_file_to_file_with_summary() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path());
    let out = dir.path().join("out.jsonl");
    let o = Command::new(bin())
        .args(["verify", input.to_str().unwrap(), "--out", out.to_str().unwrap(), "--summary", "--chunk", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "invalid line reported with exit 1: {stderr}");
    assert!(stderr.contains("in.jsonl:4"), "names file:line: {stderr}");
    for line in ["records   6", "pass      2", "fail      2", "undecided 2", "unsupported_task 0", "invalid   1"] {
        assert!(stdout.contains(line), "{line} in {stdout}");
    }
    let text = std::fs::read_to_string(&out).unwrap();
    let recs: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    check(&recs);
}

#[test]
fn verify_stdin_to_stdout() {
    let mut input = String::new();
    for r in records() {
        input.push_str(&format!("{r}\n"));
    }
    let mut child = Command::new(bin())
        .args(["verify", "-", "--summary"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recs: Vec<Value> =
        String::from_utf8(o.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    check(&recs);
    assert!(String::from_utf8_lossy(&o.stderr).contains("pass      2"));
}

#[test]
fn verify_show_config() {
    let o = Command::new(bin()).args(["verify", "x.jsonl", "--show-config"]).output().unwrap();
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("[verify]") && s.contains("input = \"x.jsonl\""), "{s}");
}
