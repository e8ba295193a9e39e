//! The training loop: steps of packed sequences, gradient accumulation, clipping, AdamW, the
//! schedule, validation, metrics, checkpoints and resume.
//!
//! In: a [`Trainable`] model, an [`Encode`]r for the corpus records and a [`FinetuneConfig`].
//! Out: under `cfg.out`: `checkpoint-STEP/` (see [`super::checkpoint`]), `metrics.jsonl` (one
//! line per step: step, epoch, loss, eval_loss on evaluation steps, lr, grad_norm, tokens,
//! tokens_per_s, wall_s), `loss.png` (redrawn at each evaluation) and `final/`.
//!
//! A step's loss is the token-weighted mean cross-entropy over all loss targets of its
//! sequences: each sequence's summed loss is back-propagated as is, and the accumulated
//! gradient is divided by the step's target count inside the optimizer update (one pass).

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use serde_json::{Value, json};

use super::checkpoint::{self, CheckpointError, TrainerState};
use super::data::{self, DataError, DataStats, Encode, Loader, Position, Sequence, Skipped};
use super::finetune::FinetuneConfig;
use super::optim::{self, AdamW, OptimError};
use super::plot;
use super::schedule::{self, Schedule};
use crate::store::{self, Durability, JsonlWriter, RecordSink as _, StoreError};

/// A model the trainer can train.
pub trait Trainable {
    /// The weights to train, named as in the checkpoint (`model.layers.0.mlp.up_proj.weight`…).
    fn trainable(&self) -> Vec<(String, Var)>;
    /// Called before each optimizer step (0-based): anything random in a step (dropout) must
    /// be derived from the step number, so a resumed run draws the same.
    fn begin_step(&mut self, _step: u64) {}
    /// The summed cross-entropy of the sequence's counted next-token predictions
    /// ([`Sequence::shifted`]), attention kept inside each sample, as an f32 scalar.
    /// `train` enables dropout.
    fn loss_sum(&self, seq: &Sequence, train: bool) -> Result<Tensor, String>;
    /// Back-propagates a loss (the model may drop gradients it does not train at once).
    fn backward(&self, loss: &Tensor) -> Result<GradStore, String> {
        loss.backward().map_err(|e| e.to_string())
    }
    /// The summed loss of a training sequence (as [`Trainable::loss_sum`], dropout on) and its
    /// gradients, in one call so that a model may recompute activations instead of keeping
    /// them (per-layer checkpointing).
    fn loss_and_grads(&self, seq: &Sequence) -> Result<(f64, GradStore), String> {
        let loss = self.loss_sum(seq, true)?;
        let l = loss.to_dtype(candle_core::DType::F64).and_then(|t| t.to_scalar::<f64>()).map_err(|e| e.to_string())?;
        Ok((l, self.backward(&loss)?))
    }
    /// As [`Trainable::loss_and_grads`] for several sequences in one forward pass, right-padded
    /// to the longest (length-grouped batching). Models that cannot batch take one at a time.
    fn loss_and_grads_batch(&self, seqs: &[&Sequence]) -> Result<(f64, GradStore), String> {
        match seqs {
            [one] => self.loss_and_grads(one),
            _ => Err(format!("this model takes one sequence per forward pass, not {}", seqs.len())),
        }
    }
    /// Writes what a checkpoint needs to be loaded by other tools: the model in Hugging Face
    /// layout, or the PEFT adapter.
    fn save_checkpoint(&self, dir: &Path) -> Result<(), String>;
    /// Writes the final model as a complete Hugging Face model directory.
    fn export(&self, dir: &Path) -> Result<(), String>;
}

/// Errors that stop training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Optim(#[from] OptimError),
    #[error("step {step}: {msg}")]
    Model { step: u64, msg: String },
    #[error("{path}: {msg}")]
    Save { path: PathBuf, msg: String },
    #[error(
        "step {step}: the {what} is {value} (samples {samples}); stopped without saving: {last}. Lower --lr, check those samples, or resume from the checkpoint"
    )]
    NonFinite { step: u64, what: &'static str, value: f64, samples: String, last: String },
    #[error("{out} already holds checkpoints; pass --resume to continue that run, or choose another --out")]
    Exists { out: PathBuf },
    #[error("{dir}: this checkpoint trains other parameters ({msg}); resume with the same model and LoRA settings")]
    Mismatch { dir: PathBuf, msg: String },
}

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct Report {
    pub steps: u64,
    pub resumed_from: Option<u64>,
    /// Train loss of every step run in this process, by step.
    pub losses: Vec<(u64, f64)>,
    pub eval_losses: Vec<(u64, f64)>,
    pub tokens_seen: u64,
    pub train_stats: DataStats,
    pub eval_stats: DataStats,
    pub skipped: Vec<Skipped>,
    pub final_dir: PathBuf,
    pub wall_s: f64,
}

impl Report {
    /// A few lines for the terminal.
    pub fn summary(&self) -> String {
        let last = |v: &[(u64, f64)]| v.last().map(|x| format!("{:.4}", x.1)).unwrap_or_else(|| "-".into());
        let mut s = format!(
            "finetune: {} steps{}, {} tokens in {:.1} s; train loss {} (first {}), eval loss {}\nfinetune: data: {}\nfinetune: final model: {}",
            self.steps,
            self.resumed_from.map(|r| format!(" (resumed at {r})")).unwrap_or_default(),
            self.tokens_seen,
            self.wall_s,
            last(&self.losses),
            self.losses.first().map(|x| format!("{:.4}", x.1)).unwrap_or_else(|| "-".into()),
            last(&self.eval_losses),
            self.train_stats.summary(),
            self.final_dir.display()
        );
        for k in self.skipped.iter().take(10) {
            s.push_str(&format!("\nfinetune: skipped {}: {}", k.location, k.reason));
        }
        s
    }
}

/// The total number of steps the schedule spans, and the train split's counts from a
/// dry pass over one epoch (what `--max-seq-len` drops or truncates is reported up front).
pub fn plan(cfg: &FinetuneConfig, files: &[PathBuf], enc: &dyn Encode) -> (u64, DataStats, Vec<Skipped>) {
    let mut l = Loader::new(files.to_vec(), cfg.loader.clone(), enc, Position::default());
    let mut per_epoch = 0u64;
    while l.next_step().is_some() {
        per_epoch += 1;
        if cfg.max_steps.is_some_and(|m| per_epoch >= m) {
            break;
        }
    }
    let total = cfg.max_steps.unwrap_or(per_epoch * cfg.epochs.max(1));
    (total, l.stats, l.skipped)
}

/// Mean loss over the target tokens of these sequences, and their number.
pub fn evaluate(model: &dyn Trainable, seqs: &[Sequence], step: u64) -> Result<(f64, usize), TrainError> {
    let mut sum = 0f64;
    let mut n = 0usize;
    for s in seqs {
        let l = model
            .loss_sum(s, false)
            .and_then(|t| t.to_scalar::<f32>().map_err(|e| e.to_string()))
            .map_err(|msg| TrainError::Model { step, msg })?;
        sum += l as f64;
        n += s.shifted().1.iter().filter(|&&c| c).count();
    }
    Ok((if n > 0 { sum / n as f64 } else { f64::NAN }, n))
}

/// Trains `model` as `cfg` says, writing checkpoints, metrics and the final model under `cfg.out`.
pub fn train(cfg: &FinetuneConfig, model: &mut dyn Trainable, enc: &dyn Encode) -> Result<Report, TrainError> {
    let started = Instant::now();
    let splits = data::splits(&cfg.data)?;
    let eval_files = match &cfg.eval_data {
        Some(p) => store::list_inputs(p)?.into_iter().map(|(f, _)| f).collect(),
        None => splits.validation.clone(),
    };
    let (total_steps, planned, plan_skipped) = plan(cfg, &splits.train, enc);
    if planned.samples == 0 {
        let mut report = planned.summary();
        if let Some(first) = plan_skipped.first() {
            report.push_str(&format!("; first problem: {} {}", first.location, first.reason));
        }
        return Err(DataError::NothingToTrain { path: cfg.data.clone(), report }.into());
    }
    let sched = Schedule {
        kind: cfg.schedule,
        peak_lr: cfg.lr,
        warmup_steps: schedule::warmup_steps(total_steps, cfg.warmup_ratio),
        total_steps,
        min_lr_ratio: cfg.min_lr_ratio,
    };
    let (mut eval_seqs, eval_stats, _) = data::load_all(&eval_files, &cfg.loader, enc);
    if cfg.eval_max_samples > 0 {
        let mut kept = 0usize;
        eval_seqs.retain(|s| {
            kept += s.starts.len();
            kept <= cfg.eval_max_samples
        });
    }

    let vars = model.trainable();
    let names: Vec<String> = vars.iter().map(|(n, _)| n.clone()).collect();
    let mut opt = AdamW::new(vars.clone(), cfg.optim)?;

    // Resume, or refuse to mix with an earlier run's checkpoints.
    let mut state = TrainerState {
        step: 0,
        position: Position::default(),
        tokens_seen: 0,
        target_tokens_seen: 0,
        wall_s: 0.0,
        data: DataStats::default(),
        seed: cfg.loader.seed,
        last_loss: None,
        last_eval_loss: None,
        params: names.clone(),
    };
    let latest = checkpoint::latest(&cfg.out)?;
    let mut resumed_from = None;
    if let Some(dir) = &latest {
        if !cfg.resume {
            return Err(TrainError::Exists { out: cfg.out.clone() });
        }
        let st = checkpoint::load_state(dir)?;
        if st.params != names {
            let msg = format!("{} trainable tensors there, {} here", st.params.len(), names.len());
            return Err(TrainError::Mismatch { dir: dir.clone(), msg });
        }
        checkpoint::load_trainable(dir, &vars)?;
        opt.load_state(&dir.join("optimizer.safetensors"), st.step)?;
        resumed_from = Some(st.step);
        state = st;
    }
    std::fs::create_dir_all(&cfg.out).map_err(|e| StoreError::Io { path: cfg.out.clone(), source: e })?;
    let metrics_path = cfg.out.join("metrics.jsonl");
    let (mut history, mut eval_history) = (Vec::new(), Vec::new());
    let mut metrics = if resumed_from.is_some() {
        let kept = keep_metrics_until(&metrics_path, state.step, &mut history, &mut eval_history)?;
        store::write_atomic(&metrics_path, kept.as_bytes())?;
        JsonlWriter::append(&metrics_path, Durability::EveryRecord)?
    } else {
        JsonlWriter::create(&metrics_path, Durability::EveryRecord)?
    };

    let mut loader = Loader::new(splits.train.clone(), cfg.loader.clone(), enc, state.position);
    loader.stats = state.data.clone();
    let bar = progress_bar(cfg.progress, total_steps, state.step);
    let note = |bar: &indicatif::ProgressBar, line: String| {
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };
    note(
        &bar,
        format!(
            "finetune: {} trainable parameters, {} steps planned; {}: {}",
            opt.num_params(),
            total_steps,
            if cfg.max_steps.is_some() { "train data read for those steps" } else { "train data, one epoch" },
            planned.summary()
        ),
    );
    for s in plan_skipped.iter().take(5) {
        note(&bar, format!("finetune: skipped {}: {}", s.location, s.reason));
    }
    if let Some(s) = resumed_from {
        note(
            &bar,
            format!(
                "finetune: resumed from step {s} ({})",
                latest.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
            ),
        );
    }
    let last_ckpt = |out: &Path| match checkpoint::latest(out) {
        Ok(Some(p)) => format!("the last good checkpoint is {}", p.display()),
        _ => "there is no checkpoint yet".to_string(),
    };

    let mut losses = Vec::new();
    let mut evals = Vec::new();
    let wall_before = state.wall_s;
    let run_start = Instant::now();
    let mut saved_at = resumed_from;
    while state.step < total_steps && state.position.epoch < cfg.epochs.max(1) {
        let Some(step) = loader.next_step() else {
            state.position = loader.position();
            continue;
        };
        let t0 = Instant::now();
        let lr = sched.lr(state.step);
        let n_targets = step.num_targets();
        let mut grads = opt.new_grads();
        let mut loss_sum = 0f64;
        let samples = || step.sequences.iter().flat_map(|s| s.sample_ids.clone()).collect::<Vec<_>>().join(", ");
        model.begin_step(state.step);
        let model_err = |msg: String| TrainError::Model { step: state.step + 1, msg };
        for group in data::length_groups(&step.sequences, cfg.loader.batch) {
            let (l, g) = model.loss_and_grads_batch(&group).map_err(model_err)?;
            if !l.is_finite() {
                return Err(TrainError::NonFinite {
                    step: state.step + 1,
                    what: "loss",
                    value: l,
                    samples: samples(),
                    last: last_ckpt(&cfg.out),
                });
            }
            loss_sum += l;
            opt.accumulate(&mut grads, g)?;
        }
        let n = n_targets.max(1) as f64;
        let loss = loss_sum / n;
        let norm = opt.grad_norm(&grads, 1.0 / n)?;
        if !norm.is_finite() {
            return Err(TrainError::NonFinite {
                step: state.step + 1,
                what: "gradient norm",
                value: norm,
                samples: samples(),
                last: last_ckpt(&cfg.out),
            });
        }
        let max_norm = (cfg.max_grad_norm > 0.0).then_some(cfg.max_grad_norm);
        opt.step(&grads, lr, optim::clip_factor(norm, max_norm) / n)?;
        drop(grads);

        let dt = t0.elapsed().as_secs_f64();
        let tokens = step.tokens() as u64;
        state.step += 1;
        state.position = step.end;
        if step.epoch_end {
            state.position = Position { epoch: step.end.epoch + 1, index: 0 };
        }
        state.tokens_seen += tokens;
        state.target_tokens_seen += n_targets as u64;
        state.data = loader.stats.clone();
        state.last_loss = Some(loss);
        state.wall_s = wall_before + run_start.elapsed().as_secs_f64();
        losses.push((state.step, loss));
        history.push((state.step, loss));

        let last = state.step >= total_steps || state.position.epoch >= cfg.epochs.max(1);
        let mut eval_loss = None;
        if !eval_seqs.is_empty() && (last || (cfg.eval_every > 0 && state.step.is_multiple_of(cfg.eval_every))) {
            let (l, _) = evaluate(&*model, &eval_seqs, state.step)?;
            eval_loss = Some(l);
            state.last_eval_loss = Some(l);
            evals.push((state.step, l));
            eval_history.push((state.step, l));
        }
        let mut rec = json!({
            "step": state.step,
            "epoch": step.end.epoch,
            "loss": loss,
            "lr": lr,
            "grad_norm": norm,
            "tokens": state.tokens_seen,
            "target_tokens": state.target_tokens_seen,
            "tokens_per_s": tokens as f64 / dt.max(1e-9),
            "wall_s": state.wall_s,
        });
        if let (Some(l), Value::Object(m)) = (eval_loss, &mut rec) {
            m.insert("eval_loss".into(), json!(l));
        }
        metrics.write_value(&rec)?;
        if eval_loss.is_some() {
            let png = cfg.out.join("loss.png");
            if let Err(e) = plot::loss_curve(&png, &history, &eval_history) {
                note(&bar, format!("finetune: could not draw {}: {e}", png.display()));
            }
        }
        bar.set_position(state.step);
        bar.set_message(format!(
            "loss {loss:.4} lr {lr:.2e} gnorm {norm:.3} {:.0} tok/s",
            tokens as f64 / dt.max(1e-9)
        ));
        if bar.is_hidden() && (eval_loss.is_some() || last) {
            eprintln!(
                "finetune: step {}/{}: loss {loss:.4}{} lr {lr:.3e} grad-norm {norm:.3} {:.0} tok/s",
                state.step,
                total_steps,
                eval_loss.map(|l| format!(" eval-loss {l:.4}")).unwrap_or_default(),
                tokens as f64 / dt.max(1e-9)
            );
        }
        if last || (cfg.save_every > 0 && state.step.is_multiple_of(cfg.save_every)) {
            save(cfg, &*model, &vars, &opt, &state)?;
            saved_at = Some(state.step);
        }
        if last {
            break;
        }
    }
    if saved_at != Some(state.step) {
        save(cfg, &*model, &vars, &opt, &state)?;
    }
    metrics.close()?;
    bar.finish_and_clear();

    let final_dir = cfg.out.join("final");
    export_final(&*model, &cfg.out, &final_dir)?;
    Ok(Report {
        steps: state.step,
        resumed_from,
        losses,
        eval_losses: evals,
        tokens_seen: state.tokens_seen,
        train_stats: state.data.clone(),
        eval_stats,
        skipped: loader.skipped,
        final_dir,
        wall_s: started.elapsed().as_secs_f64(),
    })
}

fn progress_bar(show: bool, total: u64, at: u64) -> indicatif::ProgressBar {
    let bar = if show { indicatif::ProgressBar::new(total) } else { indicatif::ProgressBar::hidden() };
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} [{elapsed} < ETA {eta}]")
    {
        bar.set_style(style);
    }
    bar.set_position(at);
    bar
}

fn save(
    cfg: &FinetuneConfig,
    model: &dyn Trainable,
    vars: &[(String, Var)],
    opt: &AdamW,
    state: &TrainerState,
) -> Result<PathBuf, TrainError> {
    let dir = checkpoint::write(&cfg.out, state.step, cfg.keep_last, |tmp| {
        let model_dir = tmp.join("model");
        std::fs::create_dir_all(&model_dir)
            .map_err(|source| CheckpointError::Io { path: model_dir.clone(), source })?;
        model.save_checkpoint(&model_dir).map_err(|msg| CheckpointError::Invalid { path: model_dir.clone(), msg })?;
        checkpoint::save_trainable(tmp, vars)?;
        let opt_path = tmp.join("optimizer.safetensors");
        opt.save_state(&opt_path)
            .map_err(|e| CheckpointError::Invalid { path: opt_path.clone(), msg: e.to_string() })?;
        checkpoint::save_state(tmp, state)
    })?;
    Ok(dir)
}

/// Writes the final model to `final/` atomically (temp dir, then rename).
fn export_final(model: &dyn Trainable, out: &Path, final_dir: &Path) -> Result<(), TrainError> {
    let tmp = out.join(".tmp-final");
    let err = |path: &Path, msg: String| TrainError::Save { path: path.to_path_buf(), msg };
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| err(&tmp, e.to_string()))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| err(&tmp, e.to_string()))?;
    model.export(&tmp).map_err(|m| err(&tmp, m))?;
    if final_dir.exists() {
        std::fs::remove_dir_all(final_dir).map_err(|e| err(final_dir, e.to_string()))?;
    }
    std::fs::rename(&tmp, final_dir).map_err(|e| err(final_dir, e.to_string()))?;
    Ok(())
}

/// The lines of `metrics.jsonl` up to `step` (a resumed run rewrites what came after), and
/// the loss history they hold.
fn keep_metrics_until(
    path: &Path,
    step: u64,
    hist: &mut Vec<(u64, f64)>,
    evals: &mut Vec<(u64, f64)>,
) -> Result<String, TrainError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(StoreError::Io { path: path.to_path_buf(), source: e }.into()),
    };
    let mut kept = String::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        let Some(s) = v.get("step").and_then(Value::as_u64) else { continue };
        if s > step {
            continue;
        }
        if let Some(l) = v.get("loss").and_then(Value::as_f64) {
            hist.push((s, l));
        }
        if let Some(l) = v.get("eval_loss").and_then(Value::as_f64) {
            evals.push((s, l));
        }
        kept.push_str(line);
        kept.push('\n');
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::data::tests::{WordEncoder, write_corpus};
    use candle_core::{D, Device};
    use std::io::Write as _;

    /// A bigram language model: logits of the next token = E[token] · W. Small, differentiable,
    /// and with no attention (packing cannot change its losses).
    struct Bigram {
        e: Var,
        w: Var,
        /// Token ids whose presence makes the loss NaN (a poisoned record).
        poison: Option<u32>,
    }

    impl Bigram {
        fn new(vocab: usize, dim: usize, seed: u64) -> Self {
            let mut rng = data::Rng::derive(seed, 0);
            let mut init = |n: usize| (0..n).map(|_| (rng.below(2001) as f32 - 1000.0) / 5000.0).collect::<Vec<f32>>();
            let e = Var::from_vec(init(vocab * dim), (vocab, dim), &Device::Cpu).unwrap();
            let w = Var::from_vec(init(dim * vocab), (dim, vocab), &Device::Cpu).unwrap();
            Bigram { e, w, poison: None }
        }
    }

    impl Trainable for Bigram {
        fn trainable(&self) -> Vec<(String, Var)> {
            vec![("embed.weight".into(), self.e.clone()), ("head.weight".into(), self.w.clone())]
        }

        fn loss_sum(&self, seq: &Sequence, _train: bool) -> Result<Tensor, String> {
            self.loss(seq).map_err(|e| e.to_string())
        }

        fn save_checkpoint(&self, dir: &Path) -> Result<(), String> {
            let map: std::collections::HashMap<String, Tensor> =
                self.trainable().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
            candle_core::safetensors::save(&map, dir.join("model.safetensors")).map_err(|e| e.to_string())
        }

        fn export(&self, dir: &Path) -> Result<(), String> {
            self.save_checkpoint(dir)
        }
    }

    impl Bigram {
        fn loss(&self, seq: &Sequence) -> candle_core::Result<Tensor> {
            let (next, counts) = seq.shifted();
            let dev = Device::Cpu;
            let ids = Tensor::new(&seq.ids[..seq.len() - 1], &dev)?;
            let logits = self.e.as_tensor().index_select(&ids, 0)?.matmul(self.w.as_tensor())?;
            let max = logits.max_keepdim(D::Minus1)?.detach();
            let shifted = logits.broadcast_sub(&max)?;
            let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
            let logp = shifted.broadcast_sub(&lse)?;
            let tgt = Tensor::new(next.as_slice(), &dev)?.unsqueeze(1)?;
            let picked = logp.gather(&tgt, 1)?.squeeze(1)?;
            let w: Vec<f32> = counts.iter().map(|&c| if c { 1.0 } else { 0.0 }).collect();
            let mut loss = (picked * Tensor::new(w.as_slice(), &dev)?)?.sum_all()?.neg()?;
            if self.poison.is_some_and(|p| seq.ids.contains(&p)) {
                loss = (loss * f64::NAN)?;
            }
            Ok(loss)
        }
    }

    fn corpus(dir: &Path) -> PathBuf {
        let data = dir.join("corpus");
        std::fs::create_dir_all(&data).unwrap();
        write_corpus(&data, "train-00000.jsonl", 40, |i| 3 + i % 5);
        write_corpus(&data, "validation-00000.jsonl", 6, |i| 3 + i % 4);
        data
    }

    fn config(dir: &Path, data: PathBuf, out: &str) -> FinetuneConfig {
        let mut c = FinetuneConfig {
            data,
            out: dir.join(out),
            epochs: 100,
            max_steps: Some(30),
            lr: 0.05,
            warmup_ratio: 0.1,
            eval_every: 10,
            save_every: 10,
            keep_last: 2,
            progress: false,
            ..FinetuneConfig::default()
        };
        c.loader.max_seq_len = 24;
        c.loader.tokens_per_step = 48;
        c.loader.shuffle_buffer = 16;
        c.optim.weight_decay = 0.01;
        c
    }

    #[test]
    fn loss_falls_and_outputs_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), corpus(dir.path()), "run");
        let r = train(&cfg, &mut Bigram::new(24, 8, 1), &WordEncoder).unwrap();
        assert_eq!(r.steps, 30);
        let first: f64 = r.losses[..3].iter().map(|l| l.1).sum::<f64>() / 3.0;
        let last: f64 = r.losses[27..].iter().map(|l| l.1).sum::<f64>() / 3.0;
        assert!(last < first * 0.7, "loss {first} -> {last}");
        assert_eq!(r.eval_losses.len(), 3);
        assert!(r.eval_losses[2].1 < r.eval_losses[0].1);
        let lines = std::fs::read_to_string(cfg.out.join("metrics.jsonl")).unwrap();
        let recs: Vec<Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(recs.len(), 30);
        for k in ["step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "wall_s"] {
            assert!(recs[5].get(k).is_some(), "metrics lack {k}");
        }
        assert!(recs[9].get("eval_loss").is_some() && recs[8].get("eval_loss").is_none());
        assert_eq!(recs[0]["lr"], json!(0.0), "warmup starts at 0");
        let names: Vec<u64> = checkpoint::list(&cfg.out).unwrap().iter().map(|c| c.0).collect();
        assert_eq!(names, vec![20, 30]);
        assert!(cfg.out.join("final/model.safetensors").is_file());
        assert!(cfg.out.join("loss.png").is_file());
        // A second run into the same directory must not mix with this one.
        let e = train(&cfg, &mut Bigram::new(24, 8, 1), &WordEncoder).unwrap_err().to_string();
        assert!(e.contains("--resume"), "{e}");
    }

    #[test]
    fn stop_and_resume_reproduces_the_uninterrupted_losses_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let data = corpus(dir.path());
        let full_cfg = config(dir.path(), data.clone(), "full");
        let full = train(&full_cfg, &mut Bigram::new(24, 8, 1), &WordEncoder).unwrap();
        // "Stop" after step 10: run to 30 but keep only the checkpoint at 10, as a killed run would.
        let cut = config(dir.path(), data, "cut");
        let first =
            train(&FinetuneConfig { keep_last: 0, ..cut.clone() }, &mut Bigram::new(24, 8, 1), &WordEncoder).unwrap();
        assert_eq!(first.losses, full.losses);
        for s in [20, 30] {
            std::fs::remove_dir_all(cut.out.join(format!("checkpoint-{s}"))).unwrap();
        }
        let resumed =
            train(&FinetuneConfig { resume: true, ..cut.clone() }, &mut Bigram::new(24, 8, 99), &WordEncoder).unwrap();
        assert_eq!(resumed.resumed_from, Some(10));
        assert_eq!(resumed.losses, full.losses[10..].to_vec(), "bit-identical losses after resume");
        assert_eq!(resumed.eval_losses, full.eval_losses[1..].to_vec());
        let lines = std::fs::read_to_string(cut.out.join("metrics.jsonl")).unwrap();
        let steps: Vec<u64> =
            lines.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["step"].as_u64().unwrap()).collect();
        assert_eq!(steps, (1..=30).collect::<Vec<_>>(), "metrics rewritten after the checkpoint, not duplicated");
    }

    #[test]
    fn a_nan_loss_stops_with_a_clear_message_and_the_last_checkpoint_stays() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("corpus");
        std::fs::create_dir_all(&data).unwrap();
        write_corpus(&data, "train-00000.jsonl", 40, |i| 3 + i % 5);
        // One record late in the file (shuffle off) holds a 6-letter assistant word: id 19.
        let mut f = std::fs::OpenOptions::new().append(true).open(data.join("train-00000.jsonl")).unwrap();
        let rec = json!({"id": "poisoned", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "xxxxxx y"}]});
        writeln!(f, "{rec}").unwrap();
        let mut cfg = config(dir.path(), data, "nan");
        cfg.loader.shuffle_buffer = 1;
        let mut model = Bigram::new(24, 8, 1);
        model.poison = Some(19);
        let e = train(&FinetuneConfig { save_every: 1, ..cfg.clone() }, &mut model, &WordEncoder).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("loss is NaN") && msg.contains("poisoned"), "{msg}");
        let TrainError::NonFinite { step, .. } = e else { panic!("{msg}") };
        assert!(step > 3, "the poisoned record comes late: {msg}");
        let ckpts = checkpoint::list(&cfg.out).unwrap();
        assert_eq!(ckpts.last().unwrap().0, step - 1, "{msg}");
        assert!(msg.contains(&format!("checkpoint-{}", step - 1)), "{msg}");
        let st = checkpoint::load_state(&ckpts.last().unwrap().1).unwrap();
        assert!(st.last_loss.unwrap().is_finite());
        // The run resumes from it once the record is gone.
        model.poison = None;
        let r = train(&FinetuneConfig { resume: true, ..cfg }, &mut model, &WordEncoder).unwrap();
        assert_eq!(r.resumed_from, Some(step - 1));
    }
}
