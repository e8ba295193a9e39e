//! `distill finetune`'s trainer on the tiny fixture decoders (tests/fixtures/model): loss falls
//! over 50 steps (full and LoRA), masked positions contribute nothing, packing gives the
//! unpacked per-sample losses, stop-and-resume is exact, a NaN stops the run with the last
//! checkpoint intact, and the exported model scores the loss the trainer reported.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use distill::model::{LoraConfig, Model, SeqLayout};
use distill::train::data::{self, DataConfig, Encode, Encoded, Sample};
use distill::train::student::Student;
use distill::train::trainer::TrainConfig;
use distill::train::trainer::{self, Trainable};
use serde_json::{Map, Value, json};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model").join(name)
}

/// Ids for the fixtures' 96-token vocabularies: BOS 1, one id per word (prompt words 3..40,
/// assistant words 40..90 by a hash of the word), and end-of-turn 2 after each assistant turn.
struct Words;

impl Encode for Words {
    fn encode(&self, rec: &Map<String, Value>) -> Result<Encoded, String> {
        let msgs = rec.get("messages").and_then(Value::as_array).ok_or("no messages")?;
        let mut e = Encoded { ids: vec![1], targets: vec![false] };
        for m in msgs {
            let asst = m["role"] == "assistant";
            for w in m["content"].as_str().ok_or("no content")?.split_whitespace() {
                let h = w.bytes().fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
                e.ids.push(if asst { 40 + h % 50 } else { 3 + h % 37 });
                e.targets.push(asst);
            }
            if asst {
                e.ids.push(2);
                e.targets.push(true);
            }
        }
        Ok(e)
    }
}

/// A learnable corpus: "add A B" → the digits of A+B spelled as words.
fn corpus(dir: &Path, train: usize, valid: usize) -> PathBuf {
    let words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"];
    let spell = |n: u32| n.to_string().chars().map(|c| words[c as usize - '0' as usize]).collect::<Vec<_>>().join(" ");
    let data = dir.join("corpus");
    std::fs::create_dir_all(&data).unwrap();
    for (name, n, off) in [("train-00000.jsonl", train, 0u32), ("validation-00000.jsonl", valid, 1000)] {
        let mut f = std::fs::File::create(data.join(name)).unwrap();
        for i in 0..n as u32 {
            let (a, b) = ((i * 7 + off) % 10, (i * 3 + off / 7) % 10);
            let rec = json!({"id": format!("{name}-{i}"), "messages": [
                {"role": "user", "content": format!("add {} {}", spell(a), spell(b))},
                {"role": "assistant", "content": format!("sum {} done", spell(a + b))}]});
            writeln!(f, "{rec}").unwrap();
        }
    }
    data
}

fn student(name: &str, lora: Option<LoraConfig>) -> Student {
    let mut model = Model::load(&fixture(name), &Device::Cpu, DType::F32).unwrap();
    if let Some(l) = lora {
        model.add_lora(&l).unwrap();
    }
    Student { model, base: fixture(name), seed: 5, save_dtype: DType::F32 }
}

fn lora(dropout: f32) -> Option<LoraConfig> {
    Some(LoraConfig { rank: 4, alpha: 8.0, dropout, ..LoraConfig::default() })
}

fn config(dir: &Path, data: PathBuf, out: &str, steps: u64, lr: f64) -> TrainConfig {
    TrainConfig {
        data,
        out: dir.join(out),
        epochs: 1000,
        max_steps: Some(steps),
        lr,
        warmup_ratio: 0.1,
        eval_every: 10,
        save_every: 10,
        keep_last: 0,
        progress: false,
        loader: DataConfig {
            max_seq_len: 32,
            tokens_per_step: 64,
            shuffle_buffer: 16,
            seed: 3,
            ..DataConfig::default()
        },
        ..TrainConfig::default()
    }
}

fn mean(xs: &[(u64, f64)]) -> f64 {
    xs.iter().map(|x| x.1).sum::<f64>() / xs.len() as f64
}

#[test]
fn loss_falls_over_50_steps_full_and_lora() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path(), 64, 8);
    for (name, lora, lr, out) in [
        ("qwen2-tiny", None, 3e-3, "full-qwen"),
        ("llama-tiny", None, 3e-3, "full-llama"),
        ("qwen2-tiny", lora(0.0), 1e-2, "lora-qwen"),
    ] {
        let mut s = student(name, lora);
        let r = trainer::train(&config(dir.path(), data.clone(), out, 50, lr), &mut s, &Words).unwrap();
        let (first, last) = (mean(&r.losses[..5]), mean(&r.losses[45..]));
        assert!(last < first * 0.6, "{out}: train loss {first:.3} -> {last:.3}");
        let (e0, e1) = (r.eval_losses[0].1, r.eval_losses.last().unwrap().1);
        assert!(e1 < e0, "{out}: eval loss {e0:.3} -> {e1:.3}");
        eprintln!("{out}: train loss {first:.3} -> {last:.3}, eval {e0:.3} -> {e1:.3}");
    }
}

fn sample(id: &str, ids: &[u32], prompt: usize) -> Sample {
    Sample { id: id.into(), ids: ids.to_vec(), targets: (0..ids.len()).map(|i| i >= prompt).collect() }
}

#[test]
fn masked_positions_contribute_nothing() {
    let s = student("qwen2-tiny", None);
    let seq = data::pack(&[sample("a", &[1, 5, 9, 11, 44, 45, 46, 2], 4)], &DataConfig::default()).remove(0);
    let (lengths, targets, weights) = Student::inputs(&seq);
    let layout = SeqLayout::packed(&[lengths], seq.len()).unwrap();
    let ids = Tensor::from_slice(&seq.ids, (1, seq.len()), &Device::Cpu).unwrap();
    let base = s.model.loss(&ids, &layout, &targets, &weights, false).unwrap();
    // Change the labels of every prompt position: the loss is the same.
    let mut other = targets.clone();
    for (t, w) in other.iter_mut().zip(&weights) {
        if *w == 0.0 {
            *t = (*t + 17) % 96;
        }
    }
    let changed = s.model.loss(&ids, &layout, &other, &weights, false).unwrap();
    let (a, b) = (base.loss.to_scalar::<f32>().unwrap(), changed.loss.to_scalar::<f32>().unwrap());
    assert_eq!(a, b);
    assert_eq!(base.weight_sum, 4.0, "targets: the 3 assistant tokens and the end token");
}

#[test]
fn packing_gives_the_unpacked_per_sample_losses() {
    for name in ["qwen2-tiny", "llama-tiny"] {
        let s = student(name, None);
        let samples = [
            sample("a", &[1, 5, 9, 44, 45, 2], 3),
            sample("b", &[1, 7, 50, 51, 52, 53, 2], 2),
            sample("c", &[1, 3, 4, 60, 2], 3),
        ];
        let cfg = DataConfig { max_seq_len: 32, ..DataConfig::default() };
        let packed = data::pack(&samples, &cfg);
        assert_eq!(packed.len(), 1);
        let alone: Vec<f32> = samples
            .iter()
            .map(|x| {
                let seq = data::pack(std::slice::from_ref(x), &cfg).remove(0);
                s.loss_sum(&seq, false).unwrap().to_scalar::<f32>().unwrap()
            })
            .collect();
        // Per sample inside the pack: keep only that sample's targets.
        for (k, want) in alone.iter().enumerate() {
            let mut only = packed[0].clone();
            let seg = only.segment_ids();
            for (t, s) in only.targets.iter_mut().zip(&seg) {
                *t &= *s == k as u32;
            }
            let got = s.loss_sum(&only, false).unwrap().to_scalar::<f32>().unwrap();
            assert!((got - want).abs() < 1e-4, "{name} sample {k}: packed {got} vs alone {want}");
        }
        let total = s.loss_sum(&packed[0], false).unwrap().to_scalar::<f32>().unwrap();
        assert!((total - alone.iter().sum::<f32>()).abs() < 1e-4);
    }
}

#[test]
fn stop_and_resume_reproduces_the_uninterrupted_losses_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path(), 40, 4);
    for (lora, tag) in [(None, "full"), (lora(0.1), "lora-dropout")] {
        let full_cfg = config(dir.path(), data.clone(), &format!("{tag}-whole"), 20, 5e-3);
        let whole = trainer::train(&full_cfg, &mut student("qwen2-tiny", lora.clone()), &Words).unwrap();
        let cut = config(dir.path(), data.clone(), &format!("{tag}-cut"), 20, 5e-3);
        let first = trainer::train(&cut, &mut student("qwen2-tiny", lora.clone()), &Words).unwrap();
        assert_eq!(first.losses, whole.losses, "{tag}: same seed, same losses");
        std::fs::remove_dir_all(cut.out.join("checkpoint-20")).unwrap();
        let resumed = trainer::train(
            &TrainConfig { resume: true, ..cut.clone() },
            &mut student("qwen2-tiny", lora.clone()),
            &Words,
        )
        .unwrap();
        assert_eq!(resumed.resumed_from, Some(10));
        assert_eq!(resumed.losses, whole.losses[10..].to_vec(), "{tag}: bit-identical after resume");
    }
}

#[test]
fn a_nan_stops_the_run_and_the_last_checkpoint_stays_intact() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path(), 40, 0);
    // An absurd learning rate drives the weights to inf within a few steps.
    let mut cfg = config(dir.path(), data, "nan", 30, 1e30);
    cfg.save_every = 1;
    cfg.max_grad_norm = 0.0;
    cfg.warmup_ratio = 0.0;
    let err = trainer::train(&cfg, &mut student("qwen2-tiny", None), &Words).unwrap_err();
    let msg = err.to_string();
    let trainer::TrainError::NonFinite { step, .. } = err else { panic!("{msg}") };
    assert!(msg.contains("is NaN") || msg.contains("is inf"), "{msg}");
    assert!(msg.contains("Lower --lr"), "{msg}");
    let ckpts = distill::train::checkpoint::list(&cfg.out).unwrap();
    if step > 1 {
        let (last, dir) = ckpts.last().unwrap();
        assert_eq!(*last, step - 1);
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
        // The checkpoint's model loads and its weights are as saved.
        Model::load(&dir.join("model"), &Device::Cpu, DType::F32).unwrap();
    } else {
        assert!(ckpts.is_empty());
    }
}

#[test]
fn the_exported_model_scores_the_loss_the_trainer_reported() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path(), 48, 6);
    for (lora, tag) in [(None, "full"), (lora(0.0), "lora")] {
        let cfg = config(dir.path(), data.clone(), tag, 12, 5e-3);
        let r = trainer::train(&cfg, &mut student("qwen2-tiny", lora), &Words).unwrap();
        let reported = r.eval_losses.last().unwrap().1;
        // Score the validation split, one sample at a time, with the exported model.
        let reloaded = Student {
            model: Model::load(&r.final_dir, &Device::Cpu, DType::F32).unwrap(),
            base: r.final_dir.clone(),
            seed: 0,
            save_dtype: DType::F32,
        };
        assert!(reloaded.model.lora_config().is_none(), "final/ is a complete (merged) model");
        let files = data::splits(&data).unwrap().validation;
        let (seqs, _, _) = data::load_all(&files, &DataConfig { packing: false, ..cfg.loader.clone() }, &Words);
        let (loss, n) = trainer::evaluate(&reloaded, &seqs, 0).unwrap();
        assert!(n > 0);
        assert!((loss - reported).abs() < 1e-5, "{tag}: exported model scores {loss}, trainer reported {reported}");
    }
}

/// Length-grouped padding: several sequences right-padded into one forward pass give the same
/// summed loss and gradients as one at a time, and a run with `packing = false, batch = 3`
/// trains.
#[test]
fn padded_batches_match_one_at_a_time_and_train() {
    use std::collections::HashMap;
    for name in ["qwen2-tiny", "llama-tiny"] {
        let s = student(name, None);
        let samples = [
            sample("a", &[1, 5, 9, 44, 45, 2], 3),
            sample("b", &[1, 7, 50, 51, 52, 53, 54, 55, 2], 2),
            sample("c", &[1, 3, 4, 60, 2], 3),
        ];
        let cfg = DataConfig { max_seq_len: 32, packing: false, ..DataConfig::default() };
        let seqs: Vec<data::Sequence> =
            samples.iter().map(|x| data::pack(std::slice::from_ref(x), &cfg).remove(0)).collect();
        let mut want_loss = 0.0;
        let mut want: HashMap<String, Tensor> = HashMap::new();
        let vars = s.trainable();
        for seq in &seqs {
            let (l, g) = s.loss_and_grads(seq).unwrap();
            want_loss += l;
            for (n, v) in &vars {
                let t = g.get(v.as_tensor()).unwrap().clone();
                let sum = match want.remove(n) {
                    Some(acc) => (acc + t).unwrap(),
                    None => t,
                };
                want.insert(n.clone(), sum);
            }
        }
        let refs: Vec<&data::Sequence> = seqs.iter().collect();
        let (got_loss, got) = s.loss_and_grads_batch(&refs).unwrap();
        assert!(
            (got_loss - want_loss).abs() < 1e-4 * want_loss,
            "{name}: padded {got_loss} vs one at a time {want_loss}"
        );
        for (n, v) in &vars {
            let (a, b) = (got.get(v.as_tensor()).unwrap(), &want[n]);
            let diff =
                (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1e-12);
            assert!(diff / scale < 1e-4, "{name}: gradient of {n} differs by {} (relative)", diff / scale);
        }
        let groups = data::length_groups(&seqs, 2);
        assert_eq!(groups.iter().map(|g| g.len()).collect::<Vec<_>>(), [2, 1]);
        assert!(groups[0].iter().all(|s| s.len() <= groups[1][0].len()), "grouped by length");
    }
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path(), 64, 8);
    let mut cfg = config(dir.path(), data, "padded", 30, 3e-3);
    cfg.loader.packing = false;
    cfg.loader.batch = 3;
    let r = trainer::train(&cfg, &mut student("qwen2-tiny", None), &Words).unwrap();
    let (first, last) = (mean(&r.losses[..5]), mean(&r.losses[25..]));
    assert!(last < first * 0.8, "padded batches: train loss {first:.3} -> {last:.3}");
}

/// Mixed precision (`precision = "bf16"`: the projections multiply in bf16, master weights,
/// gradients and optimiser state stay f32) follows the f32 loss curve: over 200 steps on the
/// arithmetic corpus the final loss is within 2% of f32's, full and LoRA.
#[test]
fn bf16_mixed_precision_ends_within_two_percent_of_f32() {
    let dir = tempfile::tempdir().unwrap();
    let data = corpus(dir.path(), 64, 8);
    for (name, lr, lora) in [("full", 3e-3, None), ("lora", 1e-2, lora(0.0))] {
        let mut finals = Vec::new();
        for (precision, dtype) in [("f32", None), ("bf16", Some(DType::BF16))] {
            let mut s = student("qwen2-tiny", lora.clone());
            s.model.set_matmul_dtype(dtype);
            let mut cfg = config(dir.path(), data.clone(), &format!("{name}-{precision}"), 200, lr);
            (cfg.eval_every, cfg.save_every) = (0, 0);
            let r = trainer::train(&cfg, &mut s, &Words).unwrap();
            assert!(s.model.trainable_vars().iter().all(|(_, v)| v.dtype() == DType::F32), "master weights stay f32");
            let last = mean(&r.losses[190..]);
            eprintln!("{name} {precision}: train loss {:.4} -> {last:.4}", mean(&r.losses[..10]));
            finals.push(last);
        }
        let rel = (finals[1] - finals[0]).abs() / finals[0];
        assert!(
            rel < 0.02,
            "{name}: bf16 final loss {:.4} vs f32 {:.4} ({:.1}% apart)",
            finals[1],
            finals[0],
            100.0 * rel
        );
    }
}
