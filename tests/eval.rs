//! `distill eval` end to end: against `distill teacher-sim` over loopback HTTP (pass@1 and
//! format rate follow the injected faults), and with the tiny chat model on the project's own
//! decoder (summary keys, Sample records readable by inspect, the EOS warning).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{chat_model_dir, distill, stderr};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_distill");

/// A running teacher-sim, killed on drop.
struct Sim {
    child: Child,
    url: String,
}

impl Sim {
    fn start(args: &[&str]) -> Sim {
        let mut child = Command::new(BIN)
            .args(["teacher-sim", "--port", "0", "--threads", "2"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starts teacher-sim");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("reads address");
        let url = line.trim().rsplit(' ').next().expect("url").to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "{line}");
        Sim { child, url }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn math_problems(dir: &Path, count: u32) -> String {
    let path = dir.join("problems.jsonl");
    let p = path.to_str().expect("utf-8 path").to_string();
    let o = distill(&["problems", "--kind", "math", "--count", &count.to_string(), "--out", &p]);
    assert!(o.status.success(), "{}", stderr(&o));
    p
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("reads")).expect("json")
}

fn eval_endpoint(faults: &str, dir: &Path, problems: &str) -> Value {
    let sim = Sim::start(&["--faults", faults]);
    let out = dir.join(format!("summary-{}.json", faults.replace([',', '='], "_")));
    let samples = dir.join(format!("samples-{}.jsonl", faults.replace([',', '='], "_")));
    let o = distill(&[
        "eval",
        "--endpoint",
        &sim.url,
        "--model",
        "sim",
        "--problems",
        problems,
        "--out",
        out.to_str().expect("utf-8"),
        "--samples",
        samples.to_str().expect("utf-8"),
        "--no-progress",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("pass@1") && table.contains("format"), "{table}");
    let s = read_json(&out);
    eprintln!(
        "faults {faults}: pass@1 {} ± {}, format {}, generations {}",
        s["pass_at_1"], s["pass_at_1_stderr"], s["format_rate"], s["generations"]
    );
    // The samples are Sample records with verdicts that inspect reads.
    let o = distill(&["inspect", samples.to_str().expect("utf-8"), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("inspect json");
    assert_eq!(v["records"], s["generations"]);
    s
}

#[test]
fn endpoint_eval_against_teacher_sim_follows_the_faults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let problems = math_problems(dir.path(), 200);
    let s = eval_endpoint("wrong=0.3", dir.path(), &problems);
    for key in ["pass_at_1", "pass_at_k", "format_rate", "truncated_rate", "eos_rate", "mean_tokens", "n", "problems"] {
        assert!(s.get(key).is_some(), "summary lacks {key}: {s}");
    }
    assert_eq!(s["problems"], 200);
    assert_eq!(s["n"], 4);
    assert_eq!(s["generations"], 800);
    let p1 = s["pass_at_1"].as_f64().expect("pass@1");
    assert!((p1 - 0.7).abs() <= 0.05, "pass@1 {p1} with wrong=0.3");
    assert_eq!(s["format_rate"], 1.0);
    assert_eq!(s["truncated_rate"], 0.0);
    let pk = &s["pass_at_k"];
    assert!(pk["1"].as_f64().is_some() && pk["2"].as_f64().is_some() && pk["4"].as_f64().is_some(), "{pk}");
    assert!(pk["4"].as_f64() >= pk["2"].as_f64() && pk["2"].as_f64() >= pk["1"].as_f64());
    assert_eq!(s["per_problem"].as_array().map(Vec::len), Some(200));

    let s = eval_endpoint("no_close=0.2", dir.path(), &problems);
    let f = s["format_rate"].as_f64().expect("format rate");
    assert!((f - 0.8).abs() <= 0.05, "format rate {f} with no_close=0.2");
}

/// The tiny chat model directory, optionally with the EOS of its tokenizer and config set to
/// `<|endoftext|>` (so the template's `<|im_end|>` is no EOS).
fn tiny_chat(eos_mismatch: bool) -> tempfile::TempDir {
    let dir = chat_model_dir();
    if eos_mismatch {
        let tc = dir.path().join("tokenizer_config.json");
        let mut v = read_json(&tc);
        v["eos_token"] = json!("<|endoftext|>");
        std::fs::write(&tc, v.to_string()).expect("writes");
        let tok = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).expect("tokenizer");
        let eot = tok.token_to_id("<|endoftext|>").expect("<|endoftext|>");
        let cc = dir.path().join("config.json");
        let mut v = read_json(&cc);
        v["eos_token_id"] = json!(eot);
        std::fs::write(&cc, v.to_string()).expect("writes");
        let _ = std::fs::remove_file(dir.path().join("generation_config.json"));
    }
    dir
}

#[test]
fn local_eval_on_the_tiny_chat_model() {
    let model = tiny_chat(false);
    let dir = tempfile::tempdir().expect("tempdir");
    let problems = math_problems(dir.path(), 3);
    let out = dir.path().join("summary.json");
    let samples = dir.path().join("samples.jsonl");
    let o = distill(&[
        "eval",
        "--model",
        model.path().to_str().expect("utf-8"),
        "--problems",
        &problems,
        "--out",
        out.to_str().expect("utf-8"),
        "--samples",
        samples.to_str().expect("utf-8"),
        "-n",
        "2",
        "--max-new-tokens",
        "6",
        "--think-prefill",
        "--no-progress",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
    let s = read_json(&out);
    assert_eq!(s["problems"], 3);
    assert_eq!(s["n"], 2);
    assert_eq!(s["generations"], 6);
    // An untrained model: nothing passes, everything hits the limit (or stops early).
    assert_eq!(s["pass_at_1"], 0.0);
    let trunc = s["truncated_rate"].as_f64().expect("rate");
    let eos = s["eos_rate"].as_f64().expect("rate");
    assert!((trunc + eos - 1.0).abs() < 1e-9, "{s}");
    assert!(s["mean_tokens"].as_f64().expect("mean") <= 6.0);
    assert!(s["tokens_per_s"].as_f64().expect("speed") > 0.0);
    let text = std::fs::read_to_string(&samples).expect("samples");
    let recs: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(recs.len(), 6);
    for r in &recs {
        assert!(r["verdict"]["pass"].is_boolean(), "{r}");
        assert_eq!(r["teacher"]["endpoint"], "local");
        assert!(r["messages"][0]["content"].as_str().expect("prompt").ends_with("\\boxed{}."), "{r}");
        assert!(r["usage"]["completion_tokens"].as_u64().expect("tokens") <= 6);
    }
    let o = distill(&["inspect", samples.to_str().expect("utf-8"), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The same seed gives the same generations.
    let again = dir.path().join("again.jsonl");
    let o = distill(&[
        "eval",
        "--model",
        model.path().to_str().expect("utf-8"),
        "--problems",
        &problems,
        "--samples",
        again.to_str().expect("utf-8"),
        "-n",
        "2",
        "--max-new-tokens",
        "6",
        "--think-prefill",
        "--batch",
        "1",
        "--no-progress",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let strip = |t: &str| -> Vec<(Value, Value)> {
        t.lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("json"))
            .map(|v| (v["id"].clone(), v["content"].clone()))
            .collect()
    };
    let (mut a, mut b) = (strip(&text), strip(&std::fs::read_to_string(&again).expect("again")));
    a.sort_by_key(|x| x.0.to_string());
    b.sort_by_key(|x| x.0.to_string());
    assert_eq!(a, b, "batch size does not change what a seeded sample generates");
}

#[test]
fn eval_warns_when_the_end_of_turn_token_is_no_eos_and_stops_at_it_anyway() {
    let model = tiny_chat(true);
    let tok = distill::model::chat::ChatTokenizer::from_dir(model.path()).expect("tokenizer");
    let eot = tok.token_to_id("<|endoftext|>").expect("id");
    let im_end = tok.token_to_id("<|im_end|>").expect("id");
    let (ids, warning) = distill::eval::local::stop_ids(&tok, &[eot]);
    assert!(ids.contains(&im_end) && ids.contains(&eot), "{ids:?}");
    let w = warning.expect("a warning");
    assert!(w.contains("anyway"), "{w}");
    // And on the command line.
    let dir = tempfile::tempdir().expect("tempdir");
    let problems = math_problems(dir.path(), 1);
    let o = distill(&[
        "eval",
        "--model",
        model.path().to_str().expect("utf-8"),
        "--problems",
        &problems,
        "-n",
        "1",
        "--max-new-tokens",
        "2",
        "--no-progress",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("warning:") && stderr(&o).contains("<|im_end|>"), "{}", stderr(&o));
    // A problem file with a bad line: counted, reported, exit code 1.
    let bad = dir.path().join("bad.jsonl");
    let good = std::fs::read_to_string(&problems).expect("problems");
    std::fs::write(&bad, format!("{good}{{\"id\": 7}}\nnot json\n")).expect("writes");
    let rejects = dir.path().join("rejects.jsonl");
    let o = distill(&[
        "eval",
        "--model",
        model.path().to_str().expect("utf-8"),
        "--problems",
        bad.to_str().expect("utf-8"),
        "-n",
        "1",
        "--max-new-tokens",
        "2",
        "--rejects",
        rejects.to_str().expect("utf-8"),
        "--no-progress",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&rejects).expect("rejects").lines().count(), 2);
}
