//! `distill filter` end to end: problems → teacher-sim (long traces, content faults, faults log)
//! → collect -n 4 → filter. Every injected fault must show up as a failed check of its sample,
//! and no sample without a fault may be rejected. Plus bad input, determinism, scattered prompts.

mod common;
use common::{Sim, stderr};

use std::collections::{BTreeMap, BTreeSet};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Map, Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_distill");

fn distill(args: &[&str], cwd: &Path) -> Output {
    Command::new(BIN).args(args).current_dir(cwd).env("OPENAI_API_KEY", "sk-test").output().expect("runs distill")
}

fn records(path: &Path) -> Vec<Map<String, Value>> {
    if !path.exists() {
        return Vec::new();
    }
    distill::store::open(path).map(|r| r.filter_map(|x| x.ok()).map(|r| r.value).collect()).unwrap_or_default()
}

fn id(r: &Map<String, Value>) -> String {
    r.get("id").and_then(Value::as_str).expect("id").to_string()
}

/// Which check each content fault must fail.
fn check_of(fault: &str) -> &'static str {
    match fault {
        "wrong" => "correct",
        "langmix" => "language",
        "repeat" => "repetition",
        "truncate" => "complete",
        "no_close" => "format",
        other => panic!("unknown fault {other}"),
    }
}

#[test]
fn every_injected_fault_is_caught_and_no_clean_sample_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let o = distill(&["problems", "--kind", "math", "--count", "40", "--out", "p.jsonl"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = d.join("faults.jsonl");
    let sim = Sim::start(&[
        "--words",
        "3000",
        "--faults",
        "wrong=0.2,langmix=0.1,repeat=0.05,truncate=0.05,no_close=0.02",
        "--faults-log",
        log.to_str().expect("utf-8"),
    ]);
    let o = distill(
        &["collect", "--prompts", "p.jsonl", "--endpoint", &sim.url, "--model", "r1-sim", "--out", "c", "-n", "4"],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = distill(&["filter", "--input", "c", "--out", "f", "--no-progress"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stderr(&o);
    assert!(table.contains("language") && table.contains("select:all"), "{table}");

    // The faults log: (request_sha256, choice) -> faults.
    let mut injected: BTreeMap<(String, u64), Vec<String>> = BTreeMap::new();
    for line in std::fs::read_to_string(&log).expect("faults log").lines() {
        let v: Value = serde_json::from_str(line).expect("json line");
        let key = (v["request_sha256"].as_str().expect("sha").to_string(), v["choice"].as_u64().expect("choice"));
        let f: Vec<String> =
            v["faults"].as_array().expect("faults").iter().map(|x| x.as_str().unwrap().into()).collect();
        injected.insert(key, f);
    }
    let samples = records(&d.join("c"));
    assert_eq!(samples.len(), 160);
    let kept: BTreeSet<String> = records(&d.join("f/kept")).iter().map(id).collect();
    let rejects: BTreeMap<String, Map<String, Value>> =
        records(&d.join("f/rejects")).into_iter().map(|r| (id(&r), r)).collect();
    let (mut faulty, mut clean) = (0, 0);
    let mut by_fault: BTreeMap<String, usize> = BTreeMap::new();
    for s in &samples {
        let sid = id(s);
        // collect asks one request per sample (choice 0); a batched request (`n` > 1) has its
        // samples at choices 0..n in sample order.
        let sha = s["request_sha256"].as_str().expect("sha").to_string();
        let k = s["sample"].as_u64().expect("k");
        let faults = injected
            .get(&(sha.clone(), k))
            .or_else(|| injected.get(&(sha, 0)))
            .unwrap_or_else(|| panic!("{sid}: not in the faults log"));
        assert!(kept.contains(&sid) ^ rejects.contains_key(&sid), "{sid}: exactly one of kept/rejects");
        if faults.is_empty() {
            clean += 1;
            let why = rejects.get(&sid).map(|r| r["verdict"]["reject_reason"].clone());
            assert!(kept.contains(&sid), "{sid}: fault-free sample rejected: {why:?}");
            continue;
        }
        faulty += 1;
        let r = rejects.get(&sid).unwrap_or_else(|| panic!("{sid}: faults {faults:?} but kept"));
        for f in faults {
            *by_fault.entry(f.clone()).or_default() += 1;
            let c = &r["verdict"]["checks"][check_of(f)];
            assert_eq!(c["pass"], json!(false), "{sid}: fault {f} not caught by {}: {c}", check_of(f));
        }
        // Every check ran on every sample.
        let checks = r["verdict"]["checks"].as_object().expect("checks");
        assert_eq!(checks.len(), 7, "{sid}: {checks:?}");
    }
    assert!(faulty > 10 && clean > 60, "faulty {faulty}, clean {clean}, {by_fault:?}");
    for f in ["wrong", "langmix"] {
        assert!(by_fault.get(f).copied().unwrap_or(0) > 0, "{f} never injected: {by_fault:?}");
    }
    // Kept examples: the assistant turn and the prompt's stats.
    let ex = &records(&d.join("f/kept"))[0];
    let msgs = ex["messages"].as_array().expect("messages");
    let last = msgs.last().expect("a message");
    assert_eq!(last["role"], "assistant");
    assert!(last["content"].as_str().unwrap().starts_with("<think>\n"));
    assert!(ex["meta"]["pass_rate"].is_number() && ex["meta"]["n_samples"] == json!(4));
    let funnel: Value = serde_json::from_slice(&std::fs::read(d.join("f/funnel.json")).expect("funnel")).expect("json");
    assert_eq!(funnel["samples_in"], json!(160));
    assert_eq!(funnel["samples_out"].as_u64().unwrap() as usize, kept.len());
    let manifest: Value = serde_json::from_slice(&std::fs::read(d.join("f/manifest.json")).expect("m")).expect("json");
    assert!(manifest["config"]["collect_summary"].is_object(), "{manifest}");

    // Deterministic: a second run gives byte-identical outputs.
    let o = distill(&["filter", "--input", "c", "--out", "g", "--no-progress"], d);
    assert!(o.status.success(), "{}", stderr(&o));
    for sub in ["kept", "rejects"] {
        let files = |root: &str| -> Vec<(PathBuf, Vec<u8>)> {
            let mut v: Vec<_> = std::fs::read_dir(d.join(root).join(sub))
                .expect("dir")
                .map(|e| e.expect("entry").path())
                .map(|p| (PathBuf::from(p.file_name().unwrap()), std::fs::read(&p).expect("read")))
                .collect();
            v.sort();
            v
        };
        assert_eq!(files("f"), files("g"), "{sub} differs between runs");
    }
}

fn sample(pid: &str, k: u32, reasoning: &str, content: &str) -> Value {
    json!({"id": format!("{pid}/{k}"), "prompt_id": pid, "sample": k, "task": "math", "prompt": "Compute 3 + 4.",
           "answer": "7", "messages": [{"role": "user", "content": "Compute 3 + 4."}],
           "reasoning": reasoning, "content": content, "finish_reason": "stop",
           "teacher": {"model": "m", "endpoint": "e"}, "params": {"temperature": 0.6, "top_p": 0.95}})
}

#[test]
fn bad_input_scattered_prompts_and_policies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let good =
        "Okay, so I need to add 3 and 4. Three plus four is seven. Wait, let me double-check that. Yes, it is seven.";
    let long = format!("{good} {}", "Let me verify the sum once more by counting up from three to seven. ".repeat(2));
    let mut lines = vec![
        sample("a", 0, good, "So the answer is $\\boxed{7}$."),
        sample("b", 0, good, "So the answer is $\\boxed{8}$."),
        sample("a", 1, &long, "So the answer is $\\boxed{7}$."),
        sample("b", 1, good, "So the answer is $\\boxed{7}$."),
        sample("a", 2, good, "So the answer is $\\boxed{6}$."),
    ]
    .into_iter()
    .map(|v| v.to_string())
    .collect::<Vec<_>>();
    lines.insert(2, "{not json".into());
    lines.push(json!({"id": "x", "prompt": "no response here"}).to_string());
    std::fs::write(d.join("s.jsonl"), lines.join("\n") + "\n").expect("write");
    let run = |out: &str, extra: &[&str]| {
        let mut args = vec!["filter", "--input", "s.jsonl", "--out", out, "--no-progress"];
        args.extend_from_slice(extra);
        let o = distill(&args, d);
        assert_eq!(o.status.code(), Some(1), "bad input gives exit code 1: {}", stderr(&o));
        let kept: Vec<String> = records(&d.join(out).join("kept")).iter().map(id).collect();
        kept
    };
    // Scattered samples of `a` are grouped: pass rate 2/3 for a, 1/2 for b.
    assert_eq!(run("all", &[]), vec!["a/0", "a/1", "b/1"]);
    let ex = records(&d.join("all/kept"));
    assert_eq!(ex[0]["meta"], json!({"pass_rate": 2.0 / 3.0, "n_samples": 3}));
    assert_eq!(run("first", &["--policy", "first"]), vec!["a/0", "b/1"]);
    assert_eq!(run("longest", &["--policy", "longest"]), vec!["a/1", "b/1"]);
    assert_eq!(run("shortest", &["--policy", "shortest"]), vec!["a/0", "b/1"]);
    assert_eq!(run("window", &["--max-pass-rate", "0.6"]), vec!["b/1"]);
    // Spilling to disk (a tiny memory budget) groups the same way.
    assert_eq!(run("spill", &["--memory-mb", "0", "--policy", "first"]), vec!["a/0", "b/1"]);
    assert_eq!(run("spill-all", &["--memory-mb", "0"]), vec!["a/0", "a/1", "b/1"]);
    assert_eq!(records(&d.join("spill-all/kept")), ex, "spilled examples equal the ones held in memory");
    let invalid = std::fs::read_to_string(d.join("all/rejects/invalid.jsonl")).expect("invalid rejects");
    assert!(invalid.contains("s.jsonl:3") && invalid.contains("not a sample"), "{invalid}");
}
