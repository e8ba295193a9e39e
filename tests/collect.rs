//! `distill collect` end to end against `distill teacher-sim` on loopback (a child process on a
//! free port, zero latency): faults, SIGKILL + resume, `--regenerate truncated`, response
//! shapes and streaming, secrets, bad input.

mod common;
use common::{Sim, stderr};

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Map, Value};

const BIN: &str = env!("CARGO_BIN_EXE_distill");
const KEY: &str = "sk-planted-test-key-5f3a9c1e77";

fn distill(args: &[&str], cwd: &Path) -> Output {
    Command::new(BIN).args(args).current_dir(cwd).env("OPENAI_API_KEY", KEY).output().expect("runs distill")
}

fn problems(dir: &Path, kind: &str, count: usize, name: &str) -> PathBuf {
    let o = distill(&["problems", "--kind", kind, "--count", &count.to_string(), "--out", name], dir);
    assert!(o.status.success(), "{}", stderr(&o));
    dir.join(name)
}

fn collect(dir: &Path, sim: &Sim, prompts: &Path, out: &str, extra: &[&str]) -> Output {
    let p = prompts.to_str().expect("utf-8 path");
    let mut args = vec!["collect", "--prompts", p, "--endpoint", &sim.url, "--model", "r1-sim", "--out", out];
    // Fast retries unless the test says otherwise.
    for (flag, value) in [("--backoff-base-ms", "2"), ("--backoff-max-ms", "20"), ("--max-retries", "30")] {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend_from_slice(extra);
    distill(&args, dir)
}

/// Every record of the parts of `out`, by id (asserting each id appears once).
fn records(out: &Path) -> BTreeMap<String, Map<String, Value>> {
    let mut by_id = BTreeMap::new();
    for item in distill::store::open(out).expect("opens out dir") {
        let rec = match item {
            Ok(r) => r,
            Err(e) if e.is_torn_tail() => continue,
            Err(e) => panic!("bad record: {e}"),
        };
        let id = rec.id().expect("id");
        assert!(by_id.insert(id.clone(), rec.value).is_none(), "duplicate id {id}");
    }
    by_id
}

/// A record without the fields that legitimately differ between runs (`latency_ms`,
/// `teacher.endpoint`).
fn stable(mut r: Map<String, Value>) -> Map<String, Value> {
    r.remove("latency_ms");
    if let Some(Value::Object(t)) = r.get_mut("teacher") {
        t.remove("endpoint");
    }
    r
}

fn stable_set(out: &Path) -> BTreeMap<String, Map<String, Value>> {
    records(out).into_iter().map(|(k, v)| (k, stable(v))).collect()
}

fn summary(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("summary.json")).expect("summary.json")).expect("json")
}

fn prompts_of(path: &Path) -> BTreeMap<String, distill::record::Prompt> {
    distill::store::open(path)
        .expect("prompts")
        .map(|r| r.expect("valid").into_parsed::<distill::record::Prompt>().expect("prompt"))
        .map(|p| (p.id.clone(), p))
        .collect()
}

#[test]
fn faults_end_with_every_sample_exactly_once_and_no_key_leaks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prompts = problems(dir.path(), "math", 2000, "p.jsonl");
    let sim = Sim::start(&["--faults", "http429=0.1,http500=0.1,drop=0.05", "--retry-after", "0"]);
    let o = collect(dir.path(), &sim, &prompts, "out", &["-n", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = dir.path().join("out");
    let recs = records(&out);
    assert_eq!(recs.len(), 4000);
    let gold = prompts_of(&prompts);
    for (id, r) in &recs {
        let s: distill::record::Sample = serde_json::from_value(Value::Object(r.clone())).expect("a Sample");
        let p = &gold[&s.prompt_id];
        assert_eq!(id, &format!("{}/{}", s.prompt_id, s.sample));
        assert!(s.sample < 2);
        assert_eq!((s.task, &s.prompt, &s.answer), (p.task, &p.prompt, &p.answer));
        assert_eq!(s.messages.len(), 1);
        assert!(s.messages[0].content.starts_with(&p.prompt) && s.messages[0].content.contains("\\boxed{}"));
        assert!(!s.reasoning.is_empty() && !s.reasoning.contains("<think>"), "{id}");
        let want = format!("\\boxed{{{}}}", p.answer.as_deref().expect("gold"));
        assert!(s.content.contains(&want), "{id}: {}", s.content);
        assert_eq!(s.finish_reason.as_deref(), Some("stop"));
        // collect writes every provenance field (they are optional only when read).
        let (usage, teacher, params) =
            (s.usage.expect("usage"), s.teacher.as_ref().expect("teacher"), s.params.as_ref().expect("params"));
        assert!(usage.prompt_tokens > 0 && usage.completion_tokens > 0);
        assert_eq!((teacher.model.as_str(), teacher.endpoint.as_str()), ("r1-sim", sim.url.as_str()));
        assert_eq!((params.temperature, params.top_p, params.seed), (0.6, 0.95, Some(u64::from(s.sample))));
        assert_eq!(s.request_sha256.as_deref().map(str::len), Some(64));
        assert!(s.latency_ms.is_some());
    }
    let sum = summary(&out);
    assert_eq!((sum["samples_written"].as_u64(), sum["failures"].as_u64()), (Some(4000), Some(0)));
    let retries = &sum["retries_by_reason"];
    for reason in ["http_429", "http_500", "dropped"] {
        assert!(retries[reason].as_u64().unwrap_or(0) > 0, "{reason} retried: {sum}");
    }
    assert!(sum["latency_ms"]["p99"].is_u64() && sum["completion_tokens"].as_u64() > Some(0));

    // The planted key is nowhere: not in any output file (decompressed), not in stderr, not
    // in --show-config.
    assert!(!stderr(&o).contains(KEY));
    for entry in std::fs::read_dir(&out).expect("out dir") {
        let path = entry.expect("entry").path();
        let mut bytes = Vec::new();
        std::fs::File::open(&path).expect("open").read_to_end(&mut bytes).expect("read");
        if path.to_string_lossy().ends_with(".zst") {
            bytes = zstd::decode_all(&bytes[..]).expect("zstd");
        }
        assert!(!String::from_utf8_lossy(&bytes).contains(KEY), "{} leaks the key", path.display());
    }
    let show = collect(dir.path(), &sim, &prompts, "out", &["--show-config"]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains("api_key_env = \"OPENAI_API_KEY\"") && !text.contains(KEY), "{text}");

    // A re-run finds nothing to do.
    let again = collect(dir.path(), &sim, &prompts, "out", &["-n", "2"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let sum = summary(&out);
    assert_eq!((sum["samples_requested"].as_u64(), sum["samples_already_done"].as_u64()), (Some(0), Some(4000)));
    assert_eq!(records(&out).len(), 4000);
}

#[test]
fn sigkill_twice_then_rerun_gives_the_uninterrupted_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prompts = problems(dir.path(), "math", 2000, "p.jsonl");
    // A little latency so that the kills land mid-run.
    let sim = Sim::start(&[
        "--faults",
        "http429=0.1,http500=0.1,drop=0.05,truncate=0.05",
        "--retry-after",
        "0",
        "--latency-ms",
        "3",
    ]);
    let reference = collect(dir.path(), &sim, &prompts, "ref", &["-n", "2", "--concurrency", "64"]);
    assert!(reference.status.success(), "{}", stderr(&reference));
    let want = stable_set(&dir.path().join("ref"));
    assert_eq!(want.len(), 4000);

    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    let mut rng = fastrand::Rng::with_seed(seed);
    let p = prompts.to_str().expect("utf-8");
    for round in 0..2 {
        let mut child = Command::new(BIN)
            .args([
                "collect",
                "--prompts",
                p,
                "--endpoint",
                &sim.url,
                "--model",
                "r1-sim",
                "--out",
                "killed",
                "-n",
                "2",
                "--backoff-base-ms",
                "2",
                "--backoff-max-ms",
                "20",
                "--max-retries",
                "30",
                "--concurrency",
                "16",
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawns collect");
        let ms = rng.u64(80..400);
        std::thread::sleep(Duration::from_millis(ms));
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        // Under heavy load the kill may land before the first part exists.
        let killed = dir.path().join("killed");
        let have = if distill::store::list_inputs(&killed).is_ok() { records(&killed).len() } else { 0 };
        eprintln!("seed {seed}: kill {round} after {ms} ms, {have} samples on disk");
    }
    let rerun = collect(dir.path(), &sim, &prompts, "killed", &["-n", "2"]);
    assert!(rerun.status.success(), "{}", stderr(&rerun));
    let got = stable_set(&dir.path().join("killed"));
    assert_eq!(got.len(), 4000, "seed {seed}");
    assert!(got == want, "seed {seed}: the resumed set differs from the uninterrupted one");
    assert_parts_are_closed(&dir.path().join("killed"), 4000);
}

/// Every part is a closed zstd file that standard tools read completely: the `zstd` CLI's
/// test (where installed) and an independent decoder (the zstd crate, which fails on an
/// unfinished frame) read all of it, and the parts hold `records` lines in all.
fn assert_parts_are_closed(out: &Path, records: usize) {
    let mut lines = 0;
    for entry in std::fs::read_dir(out).expect("out dir") {
        let path = entry.expect("entry").path();
        if !path.to_string_lossy().ends_with(".jsonl.zst") {
            continue;
        }
        let file = std::fs::File::open(&path).expect("opens part");
        let bytes = zstd::stream::decode_all(file)
            .unwrap_or_else(|e| panic!("{}: not a closed zstd file: {e}", path.display()));
        lines += bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()).count();
        match Command::new("zstd").arg("-tq").arg(&path).output() {
            Ok(o) => assert!(o.status.success(), "zstd -t {}: {}", path.display(), stderr(&o)),
            Err(_) => eprintln!("zstd CLI not installed: only the crate's decoder checked {}", path.display()),
        }
    }
    assert_eq!(lines, records, "lines across the parts");
}

/// Two collects into one directory: the second refuses at once naming the directory and the
/// running process; the first finishes; every (prompt, sample) pair is there exactly once.
#[test]
fn a_second_collect_into_the_same_directory_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prompts = problems(dir.path(), "math", 200, "p.jsonl");
    let sim = Sim::start(&["--latency-ms", "20"]);
    let p = prompts.to_str().expect("utf-8");
    let args = ["collect", "--prompts", p, "--endpoint", &sim.url, "--model", "r1-sim", "--out", "out", "-n", "2"];
    let mut first = Command::new(BIN)
        .args(args)
        .args(["--concurrency", "4", "--no-progress"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawns collect");
    // Wait until the first one holds the lock (its part file appears).
    let t0 = std::time::Instant::now();
    while !dir.path().join("out/part-00000.jsonl.zst").exists() {
        assert!(t0.elapsed() < Duration::from_secs(30), "the first collect never started writing");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = distill(&args, dir.path());
    assert_eq!(second.status.code(), Some(2), "{}", stderr(&second));
    let e = stderr(&second);
    assert!(
        e.contains("another distill collect is writing here") && e.contains(&format!("process {}", first.id())),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    let status = first.wait().expect("waits");
    assert!(status.success());
    assert_eq!(records(&dir.path().join("out")).len(), 400, "each pair exactly once");
    // The lock dies with its process: a later run goes ahead (and finds nothing to do).
    let again = distill(&args, dir.path());
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(summary(&dir.path().join("out"))["samples_requested"].as_u64(), Some(0));
}

#[test]
fn regenerate_truncated_replaces_exactly_the_truncated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prompts = problems(dir.path(), "math", 300, "p.jsonl");
    let sim = Sim::start(&[]);
    let o = collect(dir.path(), &sim, &prompts, "out", &["--max-tokens", "200"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = dir.path().join("out");
    let before = records(&out);
    let truncated: BTreeSet<String> =
        before.iter().filter(|(_, r)| r["finish_reason"] == "length").map(|(id, _)| id.clone()).collect();
    assert!(truncated.len() > 20 && truncated.len() < 280, "{} truncated", truncated.len());

    let o = collect(dir.path(), &sim, &prompts, "out", &["--max-tokens", "100000", "--regenerate", "truncated"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sum = summary(&out);
    assert_eq!(sum["samples_requested"].as_u64(), Some(truncated.len() as u64), "{sum}");
    assert_eq!(sum["samples_superseded"].as_u64(), Some(truncated.len() as u64), "{sum}");
    let after = records(&out);
    assert_eq!(after.len(), 300);
    for (id, r) in &after {
        if truncated.contains(id) {
            assert_eq!(r["finish_reason"], "stop", "{id}");
            assert_eq!(r["params"]["max_tokens"], 100000, "{id}");
        } else {
            assert_eq!(r, &before[id], "{id} must be untouched");
        }
    }
    // Any reader of the directory sees one record per id.
    let o = distill(&["inspect", "out", "--json"], dir.path());
    let v: Value = serde_json::from_slice(&o.stdout).expect("inspect json");
    assert_eq!(v["records"], 300);
    // Nothing is left to regenerate.
    let o = collect(dir.path(), &sim, &prompts, "out", &["--max-tokens", "100000", "--regenerate", "truncated"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(summary(&out)["samples_requested"].as_u64(), Some(0));
}

#[test]
fn shapes_and_streaming_give_identical_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let math = problems(dir.path(), "math", 150, "m.jsonl");
    let code = problems(dir.path(), "code", 50, "c.jsonl");
    let all = dir.path().join("all.jsonl");
    let mut bytes = std::fs::read(&math).expect("m");
    bytes.extend(std::fs::read(&code).expect("c"));
    std::fs::write(&all, bytes).expect("write");
    let faults = "wrong=0.2,langmix=0.2,repeat=0.1,truncate=0.1,no_close=0.1,http429=0.05,drop=0.05";
    let inline = Sim::start(&["--faults", faults, "--retry-after", "0", "--shape", "inline"]);
    let rc = Sim::start(&["--faults", faults, "--retry-after", "0", "--shape", "reasoning_content"]);
    let mut sets = Vec::new();
    for (sim, name) in [(&inline, "inline"), (&rc, "rc")] {
        for stream in [false, true] {
            let out = format!("{name}-{stream}");
            let mut extra = vec!["-n", "2", "--max-tokens", "400"];
            if stream {
                extra.push("--stream");
            }
            let o = collect(dir.path(), sim, &all, &out, &extra);
            assert!(o.status.success(), "{out}: {}", stderr(&o));
            sets.push((out.clone(), stable_set(&dir.path().join(&out))));
        }
    }
    let (first_name, first) = &sets[0];
    assert_eq!(first.len(), 400);
    // The faults show up, so the comparison covers them.
    let count = |f: &dyn Fn(&Map<String, Value>) -> bool| first.values().filter(|r| f(r)).count();
    assert!(count(&|r| r["finish_reason"] == "length") > 0);
    assert!(count(&|r| r["content"] == "" && r["finish_reason"] == "stop") > 0, "no_close makes all reasoning");
    assert!(count(&|r| r["reasoning"].as_str().is_some_and(|t| t.contains('。'))) > 0);
    assert!(count(&|r| r["task"] == "code" && r["content"].as_str().is_some_and(|t| t.contains("```python"))) > 0);
    for (name, set) in &sets[1..] {
        assert!(set == first, "{name} differs from {first_name}");
    }
}

#[test]
fn bad_input_is_reported_never_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let good = r#"{"id": "ok1", "task": "math", "prompt": "Compute $12 \\times 3 - 6$."}"#;
    let lines = [
        good,
        "{not json",
        r#"{"id": "poem", "task": "poetry", "prompt": "Write a poem."}"#,
        r#"{"id": "noprompt", "task": "math"}"#,
        r#"{"id": "ok2", "task": "open", "prompt": "Say 7."}"#,
        good,
    ];
    std::fs::write(d.join("p.jsonl"), lines.join("\n") + "\n").expect("write");
    let sim = Sim::start(&[]);
    let o = collect(d, &sim, &d.join("p.jsonl"), "out", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"));
    assert_eq!(records(&d.join("out")).len(), 2);
    let rejects = std::fs::read_to_string(d.join("out/rejects-prompts.jsonl")).expect("rejects");
    let rejects: Vec<Value> = rejects.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(rejects.len(), 4, "{rejects:?}");
    let reasons: Vec<&str> = rejects.iter().map(|r| r["reason"].as_str().unwrap_or("")).collect();
    assert!(reasons[0].contains("p.jsonl:2") && reasons[0].contains("invalid JSON"), "{reasons:?}");
    assert!(reasons[1].contains("p.jsonl:3") && reasons[1].contains("poetry"), "{reasons:?}");
    assert!(reasons[2].contains("p.jsonl:4") && reasons[2].contains("prompt"), "{reasons:?}");
    assert!(reasons[3].contains("duplicate prompt id"), "{reasons:?}");

    // An endpoint that does not resolve: one clear line, exit 2.
    let o = distill(
        &[
            "collect",
            "--prompts",
            "p.jsonl",
            "--endpoint",
            "http://no-such-host.invalid/v1",
            "--model",
            "m",
            "--out",
            "o2",
        ],
        d,
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(e.contains("cannot resolve host") && e.contains("no-such-host.invalid"), "{e}");

    // A missing prompt file: one clear line, exit 2.
    let o = collect(d, &sim, &d.join("missing.jsonl"), "o3", &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("missing.jsonl") && stderr(&o).trim().lines().count() == 1, "{}", stderr(&o));

    // A server answering HTML: recorded per-request failures, the run finishes.
    let html = Sim::start(&["--faults", "nonjson=1"]);
    let o = collect(d, &html, &d.join("p.jsonl"), "o4", &["--max-retries", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let fails = std::fs::read_to_string(d.join("o4/rejects-requests.jsonl")).expect("failures");
    let fails: Vec<Value> = fails.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(fails.len(), 2);
    for f in &fails {
        assert_eq!(f["reason"], "invalid_response");
        assert!(f["detail"].as_str().is_some_and(|t| t.contains("not JSON")), "{f}");
        assert_eq!(f["attempts"], 2);
    }
    assert_eq!(summary(&d.join("o4"))["failures_by_reason"]["invalid_response"], 2);

    // A non-retryable 4xx (the server rejects n=0) fails at once with its reason.
    let o = collect(d, &sim, &d.join("p.jsonl"), "o5", &["--extra-body", r#"{"n": 0}"#]);
    assert_eq!(o.status.code(), Some(1));
    let fails = std::fs::read_to_string(d.join("o5/rejects-requests.jsonl")).expect("failures");
    assert!(fails.lines().all(|l| l.contains("\"http_400\"") && l.contains("\"attempts\":1")), "{fails}");

    // Nobody listening: connection failures are retried, then recorded.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{port}/v1");
    let o = distill(
        &[
            "collect",
            "--prompts",
            "p.jsonl",
            "--endpoint",
            &url,
            "--model",
            "m",
            "--out",
            "o6",
            "--max-retries",
            "2",
            "--backoff-base-ms",
            "1",
        ],
        d,
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(summary(&d.join("o6"))["failures_by_reason"]["connect"], 2);
    assert!(!stderr(&o).contains("panicked") && !stderr(&o).contains(KEY));
}

#[test]
fn several_endpoints_share_the_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    problems(dir.path(), "math", 400, "p.jsonl");
    let a = Sim::start(&["--latency-ms", "2"]);
    let b = Sim::start(&["--latency-ms", "2"]);
    let both = format!("{},{}", a.url, b.url);
    let o = distill(
        &[
            "collect",
            "--prompts",
            "p.jsonl",
            "--endpoint",
            &both,
            "--model",
            "m",
            "--out",
            "out",
            "--concurrency",
            "16",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = records(&dir.path().join("out"));
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for r in recs.values() {
        *per.entry(r["teacher"]["endpoint"].as_str().unwrap_or("").to_string()).or_default() += 1;
    }
    assert_eq!(per.len(), 2, "{per:?}");
    assert!(per.values().all(|&n| n > 100), "{per:?}");
}

#[test]
fn timeouts_and_retry_after_are_honoured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prompts = problems(dir.path(), "math", 20, "p.jsonl");
    // Every answer is late: each attempt times out, then the failure is recorded.
    let slow = Sim::start(&["--faults", "slow=1", "--slow-ms", "3000"]);
    let o = collect(dir.path(), &slow, &prompts, "slow", &["--timeout-s", "0.2", "--max-retries", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let sum = summary(&dir.path().join("slow"));
    assert_eq!(sum["failures_by_reason"]["timeout"], 20, "{sum}");
    assert!(sum["wall_s"].as_f64().is_some_and(|w| w < 2.5), "{sum}");
    // Half the answers are 429 with Retry-After: 1; the tiny backoff must not win over it.
    let limited = Sim::start(&["--faults", "http429=0.5", "--retry-after", "1"]);
    let o = collect(dir.path(), &limited, &prompts, "limited", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sum = summary(&dir.path().join("limited"));
    assert!(sum["retries_by_reason"]["http_429"].as_u64() > Some(0), "{sum}");
    assert!(sum["wall_s"].as_f64().is_some_and(|w| w >= 1.0), "{sum}");
    assert_eq!(records(&dir.path().join("limited")).len(), 20);
}

#[test]
fn server_side_n_streamed_or_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prompts = problems(dir.path(), "math", 100, "p.jsonl");
    let sim = Sim::start(&["--faults", "http500=0.1,drop=0.05", "--retry-after", "0"]);
    let mut sets = Vec::new();
    for stream in [false, true] {
        let out = format!("n-{stream}");
        let mut extra = vec!["-n", "3", "--server-n"];
        if stream {
            extra.push("--stream");
        }
        let o = collect(dir.path(), &sim, &prompts, &out, &extra);
        assert!(o.status.success(), "{}", stderr(&o));
        let recs = stable_set(&dir.path().join(&out));
        assert_eq!(recs.len(), 300);
        let sum = summary(&dir.path().join(&out));
        let tokens: u64 = recs.values().map(|r| r["usage"]["completion_tokens"].as_u64().unwrap_or(0)).sum();
        assert_eq!(Some(tokens), sum["completion_tokens"].as_u64(), "per-sample tokens add up");
        for i in 0..100 {
            let id = |k: u32| format!("gen-math-s0-{i:06}/{k}");
            let (a, b) = (&recs[&id(0)], &recs[&id(1)]);
            assert_eq!(a["request_sha256"], b["request_sha256"], "one request");
            assert_ne!(a["reasoning"], b["reasoning"], "different choices");
        }
        sets.push(recs);
    }
    assert!(sets[0] == sets[1], "streamed and not give the same records");
}

#[test]
fn a_dead_endpoint_is_backed_off_and_the_others_carry_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    problems(dir.path(), "math", 300, "p.jsonl");
    let good = Sim::start(&[]);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let dead = format!("http://127.0.0.1:{port}/v1");
    let both = format!("{dead},{}", good.url);
    let o = distill(
        &[
            "collect",
            "--prompts",
            "p.jsonl",
            "--endpoint",
            &both,
            "--model",
            "m",
            "--out",
            "out",
            "--backoff-base-ms",
            "1",
            "--backoff-max-ms",
            "10",
            "--max-retries",
            "20",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = records(&dir.path().join("out"));
    assert_eq!(recs.len(), 300);
    assert!(recs.values().all(|r| r["teacher"]["endpoint"] == good.url.as_str()));
    let sum = summary(&dir.path().join("out"));
    let connect = sum["retries_by_reason"]["connect"].as_u64().unwrap_or(0);
    assert!(connect > 0 && connect < 100, "the dead endpoint was tried, then backed off: {sum}");
}
