//! `distill run RECIPE`: the demo recipe end to end with small counts, skipping what is done,
//! `--set` reaching a stage, every shipped recipe parsing, and broken recipes named by file and key.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use common::{distill_in, stderr};
use distill::model::Model;
use distill::model::chat::ChatTokenizer;
use distill::store::Manifest;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[&str]) -> std::process::Output {
    distill_in(args, &root())
}

fn recipe(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().expect("temp file");
    std::io::Write::write_all(&mut f, text.as_bytes()).expect("write");
    f
}

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_shipped_recipe_parses_and_shows_its_config() {
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("recipes")).expect("recipes/") {
        let p = entry.expect("entry").path();
        if p.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        n += 1;
        let o = run(&["run", p.to_str().expect("utf-8"), "--show-config"]);
        assert!(o.status.success(), "{}: {}", p.display(), stderr(&o));
        let shown = String::from_utf8_lossy(&o.stdout);
        for table in ["[run]", "[collect]", "[filter]", "[finetune]"] {
            assert!(shown.contains(table), "{}: no {table} in\n{shown}", p.display());
        }
    }
    assert!(n >= 4, "the demo and the practitioners' recipes are shipped ({n} found)");
}

#[test]
fn set_reaches_the_stage_and_aliases_read_as_keys() {
    let o = run(&[
        "run",
        "recipes/demo.toml",
        "--show-config",
        "--set",
        "collect.n=5",
        "--set",
        "finetune.learning_rate=0.5",
        "--set",
        "finetune.max_seq_length=96",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(shown.contains("n = 5  # --set"), "{shown}");
    assert!(shown.contains("lr = 0.5  # --set"), "{shown}");
    assert!(shown.contains("max_seq_len = 96  # --set"), "{shown}");
    // A recipe spelling keys the transformers way reads the same.
    let r = recipe(
        "[run]\nname = \"x\"\n[finetune]\nlearning_rate = 1e-3\nnum_train_epochs = 2\nlora_r = 4\n[collect]\nnum_generations = 3\n",
    );
    let o = run(&["run", r.path().to_str().expect("utf-8"), "--show-config"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let shown = String::from_utf8_lossy(&o.stdout);
    for want in ["lr = 0.001  # recipe", "epochs = 2  # recipe", "rank = 4  # recipe", "n = 3  # recipe"] {
        assert!(shown.contains(want), "{want} in\n{shown}");
    }
}

#[test]
fn broken_recipes_name_the_file_and_the_key() {
    let cases = [
        ("[collect]\nn = 2\ntemperatur = 0.6\n", "temperatur"),
        ("[finetune]\nlr = \"fast\"\n", "lr"),
        ("[colect]\nn = 2\n", "[colect]"),
        ("[run]\nstages = [\"colect\"]\n", "colect"),
    ];
    for (text, key) in cases {
        let r = recipe(text);
        let path = r.path().to_str().expect("utf-8");
        let o = run(&["run", path, "--show-config"]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{text}: {e}");
        assert!(e.contains(path) && e.contains(key), "{text}: error names file and key: {e}");
        assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    }
    let o = run(&["run", "recipes/demo.toml", "--show-config", "--set", "n=4"]);
    assert!(stderr(&o).contains("collect.n=4"), "{}", stderr(&o));
    // A missing file names its key when the stage that needs it starts.
    let dir = tempfile::tempdir().expect("tempdir");
    let r = recipe("[run]\nteacher = \"sim\"\nstages = [\"collect\"]\n[collect]\nprompts = \"no/such.jsonl\"\n");
    let out = format!("run.out_dir={}", dir.path().display());
    let o = run(&["run", r.path().to_str().expect("utf-8"), "--set", &out]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("[collect] prompts") && e.contains("no/such.jsonl"), "{e}");
}

#[test]
fn demo_recipe_end_to_end_small_then_skips_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("demo");
    let out_set = format!("run.out_dir={}", out.display());
    let args = [
        "run",
        "recipes/demo.toml",
        "--set",
        &out_set,
        "--set",
        "run.progress=false",
        "--set",
        "problems.count=40",
        "--set",
        "run.heldout.count=10",
        "--set",
        "run.validation_share=0.2",
        "--set",
        "finetune.max_steps=4",
        "--set",
        "finetune.save_every=2",
        "--set",
        "eval.n=2",
        "--set",
        "eval.max_new_tokens=24",
    ];
    let o = run(&args);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    for stage in ["problems", "collect", "filter", "dedup", "student", "eval-before", "finetune", "eval-after"] {
        let rec = json(&out.join(stage).join("stage.json"));
        assert_eq!(rec["stage"], stage);
        assert!(rec["outputs"].as_object().is_some_and(|m| !m.is_empty()), "{stage} wrote outputs");
    }
    let report = json(&out.join("report.json"));
    let st = &report["stages"];
    // The funnel's counts agree from stage to stage.
    assert_eq!(st["problems"]["train"], 40);
    assert_eq!(st["problems"]["heldout"], 10);
    let collected = st["collect"]["samples_written"].as_u64().expect("collected");
    assert_eq!(collected + st["collect"]["failures"].as_u64().unwrap_or(0), 80, "40 prompts x 2 samples");
    assert_eq!(st["filter"]["samples_in"].as_u64(), Some(collected));
    let kept = st["filter"]["samples_out"].as_u64().expect("kept");
    assert!(kept > 0 && kept < collected, "the faults leave something to filter: {kept}/{collected}");
    let d = &st["dedup"];
    let n = |k: &str| d[k].as_u64().unwrap_or_else(|| panic!("dedup {k}: {d}"));
    let (train, val) = (n("train"), n("validation"));
    assert_eq!(n("input"), kept);
    let removed =
        n("invalid") + n("exact_duplicates") + n("near_duplicates") + n("contaminated") + n("over_max_per_prompt");
    assert_eq!(train + val + removed, kept, "{d}");
    assert!(val > 0 && train > 0);
    // Held-out prompts are disjoint from the training prompts.
    let prompts = |p: &Path| -> Vec<String> {
        std::fs::read_to_string(p)
            .expect("prompts")
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("json")["prompt"].as_str().expect("prompt").to_string())
            .collect()
    };
    let tr = prompts(&out.join("problems/train.jsonl"));
    let ho = prompts(&out.join("problems/heldout.jsonl"));
    assert!(ho.iter().all(|p| !tr.contains(p)), "held-out problems overlap the training prompts");
    // Manifests' checksums hold.
    for d in ["filter", "dedup"] {
        let m = Manifest::read(&out.join(d)).expect("manifest");
        assert!(m.verify(&out.join(d)).expect("verifies").is_empty(), "{d} manifest");
    }
    // The checkpoint loads with its tokenizer; training ran the steps asked for.
    let fin = out.join("finetune/final");
    Model::load(&fin, &Device::Cpu, DType::F32).expect("final model loads");
    let tok = ChatTokenizer::from_dir(&fin).expect("tokenizer loads");
    assert!(tok.token_to_id("<|im_end|>").is_some() && tok.token_to_id("<think>").is_some());
    assert_eq!(st["finetune"]["steps"], 4);
    let before = report["eval"]["before"]["heldout_loss"].as_f64().expect("before");
    let after = report["eval"]["after"]["heldout_loss"].as_f64().expect("after");
    assert!(after.is_finite() && before.is_finite() && after < before, "loss {before} -> {after}");
    // pass@1 and format rate from distill eval's generations on the 10 held-out problems.
    for when in ["before", "after"] {
        let ev = json(&out.join(format!("eval-{when}/eval.json")));
        assert_eq!(ev["eval"]["problems"], 10, "{ev}");
        assert_eq!(ev["eval"]["n"], 2, "{ev}");
        for k in ["pass_at_1", "format_rate", "truncated_rate", "eos_rate"] {
            let x = report["eval"][when][k].as_f64().unwrap_or_else(|| panic!("{when} {k}: {report}"));
            assert!((0.0..=1.0).contains(&x), "{when} {k} = {x}");
        }
        let samples = std::fs::read_to_string(out.join(format!("eval-{when}/samples.jsonl"))).expect("samples");
        assert_eq!(samples.lines().count(), 20, "10 problems x 2 samples recorded");
    }
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    assert!(md.contains("## Funnel") && md.contains("loss.png"), "{md}");
    assert!(out.join("finetune/loss.png").is_file());
    // A second run finds every stage up to date.
    let o = run(&args);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    for stage in ["problems", "collect", "filter", "dedup", "student", "eval-before", "finetune", "eval-after"] {
        assert!(e.contains(&format!("[{stage}] up to date")), "{stage} skipped: {e}");
    }
    // A changed setting re-runs that stage and what follows it, nothing before.
    let mut more = args.to_vec();
    more.extend(["--set", "finetune.max_steps=5", "--stages", "finetune,eval-after,report"]);
    let o = run(&more);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(e.contains("[finetune] running") && e.contains("[eval-after] running"), "{e}");
}

/// File names with the sha256 of their bytes.
fn sorted_files(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .map(|p| {
            let name = p.file_name().expect("name").to_string_lossy().to_string();
            (name, distill::store::sha256_file(&p).expect("sha256"))
        })
        .collect();
    v.sort();
    v
}

/// Spawns `distill run ARGS` and SIGKILLs it as soon as `ready(out)` holds; returns whether
/// the kill came before the run ended by itself.
fn kill_when(args: &[&str], out: &Path, ready: impl Fn(&Path) -> bool) -> bool {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(args)
        .current_dir(root())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn distill run");
    let t0 = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("the run ended ({status}) before the moment to kill it came");
        }
        if ready(out) {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
            return true;
        }
        assert!(t0.elapsed().as_secs() < 300, "the moment to kill never came");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_run_killed_mid_collect_and_mid_finetune_completes_with_the_same_corpus_and_losses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args_for = |out: &Path| -> Vec<String> {
        let mut v: Vec<String> = vec!["run".into(), "recipes/demo.toml".into()];
        for s in [
            format!("run.out_dir={}", out.display()),
            "run.progress=false".into(),
            "problems.count=60".into(),
            "run.heldout.count=6".into(),
            "run.validation_share=0.2".into(),
            // Slow enough to be caught in the middle: 120 requests of 40 ms, 4 in flight (samples
            // arrive out of order; filter's kept/ and so the corpus do not depend on it).
            "teacher_sim.latency_ms=40".into(),
            "collect.concurrency=4".into(),
            "finetune.max_steps=12".into(),
            "finetune.save_every=2".into(),
            "finetune.keep_last=10".into(),
            "finetune.loader.tokens_per_step=8192".into(),
            "eval.n=1".into(),
            "eval.max_new_tokens=8".into(),
        ] {
            v.push("--set".into());
            v.push(s);
        }
        v
    };
    // The reference: one uninterrupted run.
    let a = dir.path().join("a");
    let args_a = args_for(&a);
    let args_a: Vec<&str> = args_a.iter().map(String::as_str).collect();
    let o = run(&args_a);
    assert!(o.status.success(), "{}", stderr(&o));

    let b = dir.path().join("b");
    let args_b = args_for(&b);
    let args_b: Vec<&str> = args_b.iter().map(String::as_str).collect();
    // Killed while collecting: some samples written, collect not finished.
    let lines_in = |d: &Path| -> usize {
        std::fs::read_dir(d).map_or(0, |rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("part"))
                .map(|e| std::fs::metadata(e.path()).map_or(0, |m| m.len() as usize))
                .sum()
        })
    };
    assert!(kill_when(&args_b, &b, |out| lines_in(&out.join("collect")) > 0));
    assert!(!b.join("collect/stage.json").exists(), "killed before collect finished");
    // Killed while fine-tuning: a checkpoint written, the stage not finished.
    assert!(kill_when(&args_b, &b, |out| out.join("finetune/checkpoint-4").is_dir()));
    assert!(b.join("collect/stage.json").exists() && !b.join("finetune/stage.json").exists());
    // Run again: it completes.
    let o = run(&args_b);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(e.contains("[collect] up to date"), "{e}");
    assert!(e.contains("resuming from the newest checkpoint"), "{e}");
    // The same corpus, byte for byte, and the same losses.
    assert_eq!(sorted_files(&a.join("dedup/data")), sorted_files(&b.join("dedup/data")), "corpus shards differ");
    let fa = json(&a.join("finetune/stage.json"));
    let fb = json(&b.join("finetune/stage.json"));
    assert_eq!(fa["counts"]["steps"], 12);
    assert_eq!(fa["counts"]["last_loss"], fb["counts"]["last_loss"], "final loss");
    assert_eq!(fa["counts"]["eval_losses"], fb["counts"]["eval_losses"], "held-out losses");
    let losses = |p: &Path| -> Vec<Value> {
        std::fs::read_to_string(p.join("finetune/metrics.jsonl"))
            .expect("metrics")
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v.get("loss").cloned().map(|l| serde_json::json!([v["step"], l])))
            .collect()
    };
    let (la, lb) = (losses(&a), losses(&b));
    assert!(!la.is_empty());
    for x in &la {
        assert!(lb.contains(x), "step loss {x} of the uninterrupted run missing from the resumed run's log");
    }
}
