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
    assert!(report["eval"]["before"]["pass_at_1"].is_null(), "never a made-up pass@1");
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
