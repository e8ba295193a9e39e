//! `distill finetune` end to end: a small random Qwen2 with the fixture Qwen tokenizer and chat
//! template, trained full and LoRA for a few steps; outputs, `--show-config`, refusing to mix runs,
//! `--resume`, and `distill score` of the exported model equal to the trainer's eval loss.

mod common;
use common::{distill, fixtures};

use std::path::{Path, PathBuf};
use std::process::Output;

use candle_core::{DType, Device};
use distill::model::Model;
use serde_json::{Value, json};

fn corpus(dir: &Path) -> PathBuf {
    let data = dir.join("corpus/data");
    std::fs::create_dir_all(&data).unwrap();
    for (name, n, off) in [("train-00000.jsonl", 24u32, 0u32), ("validation-00000.jsonl", 4, 50)] {
        let mut lines = String::new();
        for i in off..off + n {
            let (a, b) = (i % 10, (i * 3) % 10);
            let rec = json!({"id": format!("ex{i}"), "prompt_id": format!("p{i}"), "task": "math", "messages": [
                {"role": "user", "content": format!("What is {a} + {b}?")},
                {"role": "assistant", "content": format!("<think>\n{a} plus {b} is {}.\n</think>\n\nThe answer is {}.", a + b, a + b)}]});
            lines.push_str(&format!("{rec}\n"));
        }
        std::fs::write(data.join(name), lines).unwrap();
    }
    dir.join("corpus")
}

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "exit {:?}: {err}", out.status.code());
    err
}

fn metrics(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn full_fine_tuning_writes_everything_and_the_export_scores_the_reported_loss() {
    let model = common::chat_model_dir();
    let work = tempfile::tempdir().unwrap();
    let data = corpus(work.path());
    let out = work.path().join("run");
    let (m, d, o) = (model.path().to_str().unwrap(), data.to_str().unwrap(), out.to_str().unwrap());
    let common = [
        "--max-seq-len",
        "256",
        "--tokens-per-step",
        "256",
        "--eval-every",
        "3",
        "--save-every",
        "3",
        "--no-progress",
        "--lr",
        "1e-2",
    ];
    let mut args = vec!["finetune", "--model", m, "--data", d, "--out", o, "--max-steps", "6"];
    args.extend(common);
    let err = ok(&distill(&args));
    assert!(err.contains("samples used") && err.contains("final model"), "{err}");
    for f in [
        "final/config.json",
        "final/model.safetensors",
        "final/tokenizer.json",
        "final/generation_config.json",
        "loss.png",
        "checkpoint-3/trainer_state.json",
        "checkpoint-6/model/model.safetensors",
        "checkpoint-6/optimizer.safetensors",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let recs = metrics(&out);
    assert_eq!(recs.len(), 6);
    let first = recs[0]["loss"].as_f64().unwrap();
    let last = recs[5]["loss"].as_f64().unwrap();
    assert!(last < first, "loss {first} -> {last}");
    let eval = recs[5]["eval_loss"].as_f64().unwrap();

    // The exported model scores the validation split at the loss the trainer reported.
    let valid = data.join("data/validation-00000.jsonl");
    let s = distill(&["score", "--model", out.join("final").to_str().unwrap(), valid.to_str().unwrap(), "--json"]);
    ok(&s);
    let v: Value = serde_json::from_slice(&s.stdout).unwrap();
    let scored = v["loss"].as_f64().unwrap();
    assert!((scored - eval).abs() < 1e-4, "score {scored} vs trainer eval loss {eval}");

    // The same --out again is refused; --resume continues from step 6.
    let again = distill(&args);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    let mut more = vec!["finetune", "--model", m, "--data", d, "--out", o, "--max-steps", "8", "--resume"];
    more.extend(common);
    let err = ok(&distill(&more));
    assert!(err.contains("resumed from step 6"), "{err}");
    assert_eq!(metrics(&out).len(), 8);
}

#[test]
fn lora_writes_a_peft_adapter_and_a_merged_final_model() {
    let model = common::chat_model_dir();
    let work = tempfile::tempdir().unwrap();
    let data = corpus(work.path());
    let out = work.path().join("lora");
    let args = [
        "finetune",
        "--model",
        model.path().to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--lora-rank",
        "4",
        "--max-steps",
        "4",
        "--max-seq-len",
        "256",
        "--tokens-per-step",
        "256",
        "--no-progress",
    ];
    let show = distill(&[&args[..], &["--show-config"]].concat());
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains("[finetune]") && text.contains("lr = 0.0002") && text.contains("rank = 4"), "{text}");
    ok(&distill(&args));
    assert!(out.join("adapter/adapter_config.json").is_file());
    assert!(out.join("checkpoint-4/model/adapter_model.safetensors").is_file());
    let merged = Model::load(&out.join("final"), &Device::Cpu, DType::F32).unwrap();
    assert!(merged.lora_config().is_none());
}

/// `--max-steps` wins over `--epochs` (as in transformers' Trainer): 60 steps on a corpus of 24
/// examples that 3 epochs would cover in far fewer, the corpus cycling; the closing line says
/// why the run stopped.
#[test]
fn max_steps_wins_over_epochs_and_cycles_the_corpus() {
    let model = common::chat_model_dir();
    let work = tempfile::tempdir().unwrap();
    let data = corpus(work.path());
    let out = work.path().join("run");
    let m = model.path().to_str().unwrap();
    let o = distill(&[
        "finetune",
        "--model",
        m,
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-steps",
        "60",
        "--max-seq-len",
        "256",
        "--tokens-per-step",
        "256",
        "--save-every",
        "0",
        "--eval-every",
        "0",
        "--no-progress",
    ]);
    let err = ok(&o);
    let steps: Vec<u64> = metrics(&out).iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, (1..=60).collect::<Vec<_>>(), "{err}");
    let epochs: Vec<u64> = metrics(&out).iter().map(|r| r["epoch"].as_u64().unwrap()).collect();
    assert!(epochs.last().copied().unwrap_or(0) >= 3, "the corpus cycled past --epochs: {epochs:?}");
    assert!(err.contains("stopped after step 60: max_steps = 60 reached"), "{err}");
}

#[test]
fn a_model_without_tokenizer_is_refused_clearly() {
    let work = tempfile::tempdir().unwrap();
    let data = corpus(work.path());
    let out = distill(&[
        "finetune",
        "--model",
        fixtures().join("model/qwen2-tiny").to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        work.path().join("x").to_str().unwrap(),
        "--no-progress",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tokenizer.json"), "{err}");
}

/// `--device cuda` (a build with `--features cuda`, on a machine with a GPU): the same run as on
/// the CPU gives the same losses step by step, full and LoRA, and the exported model scores the
/// loss the trainer reported; a resumed GPU run continues where it stopped.
#[cfg(feature = "cuda")]
#[test]
fn gpu_training_follows_the_cpu_run() {
    if Device::new_cuda(0).is_err() {
        println!("skipped: no CUDA device could be opened");
        return;
    }
    let model = common::chat_model_dir();
    let work = tempfile::tempdir().unwrap();
    let data = corpus(work.path());
    let (m, d) = (model.path().to_str().unwrap(), data.to_str().unwrap());
    for lora in [false, true] {
        let mut losses = Vec::new();
        for device in ["cpu", "cuda"] {
            let out = work.path().join(format!("run-{device}-{lora}"));
            let o = out.to_str().unwrap();
            let mut args = vec!["finetune", "--model", m, "--data", d, "--out", o, "--max-steps", "8"];
            args.extend(["--max-seq-len", "256", "--tokens-per-step", "256", "--eval-every", "4", "--save-every", "4"]);
            args.extend(["--no-progress", "--lr", "1e-2", "--device", device]);
            if lora {
                args.extend(["--lora-rank", "4", "--lora-dropout", "0"]);
            }
            ok(&distill(&args));
            let recs = metrics(&out);
            assert_eq!(recs.len(), 8);
            let eval = recs[7]["eval_loss"].as_f64().unwrap();
            let valid = data.join("data/validation-00000.jsonl");
            let s =
                distill(&["score", "--model", out.join("final").to_str().unwrap(), valid.to_str().unwrap(), "--json"]);
            ok(&s);
            let scored: Value = serde_json::from_slice(&s.stdout).unwrap();
            let scored = scored["loss"].as_f64().unwrap();
            assert!((scored - eval).abs() < 1e-4, "{device}: score {scored} vs trainer eval loss {eval}");
            losses.push(recs.iter().map(|r| r["loss"].as_f64().unwrap()).collect::<Vec<_>>());
        }
        let worst = losses[0].iter().zip(&losses[1]).map(|(a, b)| ((a - b) / a).abs()).fold(0.0, f64::max);
        println!(
            "lora={lora}: cpu {:?}\n          gpu {:?}\n          worst relative difference {worst:.2e}",
            losses[0], losses[1]
        );
        assert!(worst < 1e-3, "lora={lora}: GPU losses differ from the CPU's by {worst} (relative)");
    }
}

/// `--recipe FILE`: the [finetune] table is used, flags typed on the command line override its
/// keys, `--show-config` prints a table that reads back as the same settings, and mistakes in
/// the file are one line naming the file, line and key.
#[test]
fn recipe_table_with_flag_overrides() {
    let model = common::chat_model_dir();
    let work = tempfile::tempdir().unwrap();
    let data = corpus(work.path());
    let out = work.path().join("run");
    let recipe = work.path().join("recipe.toml");
    let esc = |p: &Path| p.to_str().unwrap().replace('\\', "\\\\");
    std::fs::write(
        &recipe,
        format!(
            "[collect]\nmodel = \"teacher\"\n\n[finetune]\nmodel = \"{}\"\ndata = \"{}\"\nout = \"{}\"\nmax_steps = 2\nlr = 0.01\n\
             eval_every = 1\nsave_every = 0\nprogress = false\n\n[finetune.loader]\nmax_seq_len = 256\ntokens_per_step = 256\n",
            esc(model.path()),
            esc(&data),
            esc(&out)
        ),
    )
    .unwrap();
    let r = recipe.to_str().unwrap();
    let shown = |args: &[&str]| -> toml::Table {
        let o = distill(&[&["finetune", "--recipe", r], args, &["--show-config"]].concat());
        ok(&o);
        let t: toml::Table = String::from_utf8_lossy(&o.stdout).parse().unwrap();
        t["finetune"].as_table().unwrap().clone()
    };
    let base = shown(&[]);
    assert_eq!(base["lr"].as_float(), Some(0.01));
    assert_eq!(base["max_steps"].as_integer(), Some(2));
    assert_eq!(base["loader"]["max_seq_len"].as_integer(), Some(256));
    assert_eq!(base["epochs"].as_integer(), Some(3), "keys the table leaves out take the defaults");
    let over = shown(&["--max-steps", "5", "--seed", "7"]);
    assert_eq!(over["max_steps"].as_integer(), Some(5), "a typed flag overrides the recipe");
    assert_eq!(over["lr"].as_float(), Some(0.01), "defaults of untyped flags do not");
    assert_eq!(over["loader"]["seed"].as_integer(), Some(7));

    // What --show-config prints is itself a recipe for the same settings.
    let printed = work.path().join("printed.toml");
    let o = distill(&["finetune", "--recipe", r, "--lora-rank", "4", "--show-config"]);
    ok(&o);
    std::fs::write(&printed, &o.stdout).unwrap();
    let again = distill(&["finetune", "--recipe", printed.to_str().unwrap(), "--show-config"]);
    ok(&again);
    // The same settings (the comments naming each value's origin differ: now the printed file).
    let table = |o: &Output| String::from_utf8_lossy(&o.stdout).parse::<toml::Table>().unwrap();
    assert_eq!(table(&again), table(&o));
    let lora: toml::Table = String::from_utf8_lossy(&o.stdout).parse().unwrap();
    assert_eq!(lora["finetune"]["lora"]["rank"].as_integer(), Some(4));
    assert_eq!(lora["finetune"]["lr"].as_float(), Some(0.01), "the recipe's lr stays with LoRA");

    // A LoRA table without lr gets LoRA's default learning rate.
    let lora_recipe = work.path().join("lora.toml");
    std::fs::write(&lora_recipe, "[finetune]\nmodel = \"m\"\ndata = \"d\"\nout = \"o\"\n[finetune.lora]\nrank = 8\n")
        .unwrap();
    let o = distill(&["finetune", "--recipe", lora_recipe.to_str().unwrap(), "--show-config"]);
    ok(&o);
    let t: toml::Table = String::from_utf8_lossy(&o.stdout).parse().unwrap();
    assert_eq!(t["finetune"]["lr"].as_float(), Some(2e-4));
    // Alpha is 2 x rank whichever way LoRA was asked for (it was 32, LoraConfig's default, here
    // but 16 with --lora-rank 8: the defaults disagreed).
    assert_eq!(t["finetune"]["lora"]["alpha"].as_float(), Some(16.0));

    // It trains from the recipe alone.
    ok(&distill(&["finetune", "--recipe", r]));
    assert_eq!(metrics(&out).len(), 2);

    // Mistakes: one line naming the file, the line and what to fix.
    let bad = work.path().join("bad.toml");
    for (text, want) in [
        ("[finetune]\nmodel = \"m\"\nlearnin_rate = 0.1\n", ":3: [finetune]: unknown field `learnin_rate`"),
        ("[finetune]\nmodel = \"m\"\nepochs = \"many\"\n", "[finetune]: `epochs`: invalid type"),
        ("[finetune\nmodel = 1\n", "not TOML at line 1"),
        ("[collect]\nmodel = \"m\"\n", "has no [finetune] table"),
        ("[finetune]\ndata = \"d\"\nout = \"o\"\n", "give --model or `model = ...`"),
    ] {
        std::fs::write(&bad, text).unwrap();
        let o = distill(&["finetune", "--recipe", bad.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(want) && err.contains("bad.toml"), "{text:?}: {err}");
    }
    let o = distill(&["finetune", "--recipe", bad.to_str().unwrap(), "--lora-alpha", "3"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--lora-alpha needs LoRA"));
}
