//! The training loop: steps of packed sequences, gradient accumulation, clipping, AdamW, the
//! schedule, validation, metrics, checkpoints and resume.
//!
//! In: a [`Trainable`] model, an [`Encode`]r for the corpus records and a [`TrainConfig`].
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
use super::data::{self, DataError, DataStats, Encode, Loader, Position, Sequence, Skipped, Step};
use super::optim::{self, AdamW, AdamWConfig, OptimError};
use super::plot;
use super::schedule::{self, Schedule, ScheduleKind};
use crate::store::{self, Durability, JsonlWriter, RecordSink as _, StoreError};

/// The default peak learning rate (full fine-tuning, as open-r1's distillation recipes).
pub const DEFAULT_LR: f64 = 4e-5;

/// The training loop's settings: data, schedule, optimiser, evaluation and checkpoints.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// The corpus: a file or directory of SFT example shards (`train-*`, `validation-*`).
    pub data: PathBuf,
    /// Checkpoints, `metrics.jsonl`, `loss.png` and the final model (`final/`) go here.
    pub out: PathBuf,
    /// Validation records, when not the corpus's `validation-*` files.
    pub eval_data: Option<PathBuf>,
    pub epochs: u64,
    /// Stop after this many optimizer steps (also the schedule's length when set).
    pub max_steps: Option<u64>,
    /// Peak learning rate.
    pub lr: f64,
    pub schedule: ScheduleKind,
    /// Warmup as a share of all steps (rounded up).
    pub warmup_ratio: f64,
    /// The learning rate the decay ends at, as a share of the peak.
    pub min_lr_ratio: f64,
    /// Global gradient-norm clipping (0: off).
    pub max_grad_norm: f64,
    pub optim: AdamWConfig,
    pub loader: data::DataConfig,
    /// Validation loss every this many steps (and at the end; 0: only at the end).
    pub eval_every: u64,
    /// At most this many validation samples (0: all).
    pub eval_max_samples: usize,
    /// A checkpoint every this many steps (and at the end; 0: only at the end).
    pub save_every: u64,
    /// Checkpoints kept (the newest; 0: all).
    pub keep_last: usize,
    /// Continue from the newest checkpoint in `out`.
    pub resume: bool,
    /// Show the progress bar (when stderr is a terminal).
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: PathBuf::new(),
            out: PathBuf::new(),
            eval_data: None,
            epochs: 3,
            max_steps: None,
            lr: DEFAULT_LR,
            schedule: ScheduleKind::Cosine,
            warmup_ratio: 0.03,
            min_lr_ratio: 0.1,
            max_grad_norm: 1.0,
            optim: AdamWConfig::default(),
            loader: data::DataConfig::default(),
            eval_every: 50,
            eval_max_samples: 0,
            save_every: 100,
            keep_last: 2,
            resume: false,
            progress: true,
        }
    }
}

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
    /// Records rejected (invalid or untokenizable), written to `OUT/rejects.jsonl`.
    pub rejected: u64,
    /// Why the run ended.
    pub stop: Stop,
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
pub fn plan(cfg: &TrainConfig, files: &[PathBuf], enc: &dyn Encode) -> (u64, DataStats, Vec<Skipped>, u64) {
    let mut l = Loader::new(files.to_vec(), cfg.loader.clone(), enc, Position::default());
    l.rejects = Some(store::Rejects::new("finetune", cfg.out.join("rejects.jsonl")));
    let mut per_epoch = 0u64;
    while l.next_step().is_some() {
        per_epoch += 1;
        if cfg.max_steps.is_some_and(|m| per_epoch >= m) {
            break;
        }
    }
    let total = cfg.max_steps.unwrap_or(per_epoch * cfg.epochs.max(1));
    let rejected = match l.rejects.take().map(store::Rejects::finish) {
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("warning: {e}");
            l.stats.invalid + l.stats.untokenizable
        }
        None => 0,
    };
    (total, l.stats, l.skipped, rejected)
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

/// The corpus as the run sees it: train files, the planned number of steps, validation.
struct Prepared {
    train_files: Vec<PathBuf>,
    total_steps: u64,
    planned: DataStats,
    skipped: Vec<Skipped>,
    rejected: u64,
    eval_seqs: Vec<Sequence>,
    eval_stats: DataStats,
}

/// What one optimizer step measured.
struct StepResult {
    loss: f64,
    lr: f64,
    norm: f64,
    tokens: u64,
    seconds: f64,
}

/// Why a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// `max_steps` optimizer steps ran (the corpus cycled as often as needed).
    MaxSteps,
    /// `epochs` passes over the corpus ran.
    Epochs,
}

/// A training run in progress: the model's variables, the optimiser, the state a checkpoint
/// holds, and the outputs being written.
struct Run<'a> {
    cfg: &'a TrainConfig,
    model: &'a mut dyn Trainable,
    vars: Vec<(String, Var)>,
    opt: AdamW,
    sched: Schedule,
    state: TrainerState,
    resumed_from: Option<u64>,
    resumed_dir: Option<PathBuf>,
    saved_at: Option<u64>,
    metrics: JsonlWriter,
    /// Loss history of the whole run (earlier processes' too), for the plot.
    history: Vec<(u64, f64)>,
    eval_history: Vec<(u64, f64)>,
    /// Losses of the steps run in this process.
    losses: Vec<(u64, f64)>,
    evals: Vec<(u64, f64)>,
    bar: indicatif::ProgressBar,
    wall_before: f64,
    started: Instant,
}

/// Trains `model` as `cfg` says, writing checkpoints, metrics and the final model under `cfg.out`.
pub fn train(cfg: &TrainConfig, model: &mut dyn Trainable, enc: &dyn Encode) -> Result<Report, TrainError> {
    let started = Instant::now();
    let data = prepare(cfg, enc)?;
    let mut run = Run::start_or_resume(cfg, model, &data)?;
    run.announce(&data);
    let mut loader = Loader::new(data.train_files.clone(), cfg.loader.clone(), enc, run.state.position);
    loader.stats = run.state.data.clone();
    let stop = loop {
        if let Some(stop) = run.finished(data.total_steps) {
            break stop;
        }
        let Some(step) = loader.next_step() else {
            run.state.position = loader.position();
            continue;
        };
        let result = run.step(&step)?;
        run.advance(&step, &result, &loader);
        let last = run.finished(data.total_steps).is_some();
        let eval_loss = run.evaluate_if_due(&data.eval_seqs, last)?;
        run.log(&step, &result, eval_loss, last, data.total_steps)?;
        run.save_if_due(last)?;
    };
    let (steps, final_dir) = run.finish(stop)?;
    Ok(Report {
        steps,
        resumed_from: run.resumed_from,
        losses: run.losses,
        eval_losses: run.evals,
        tokens_seen: run.state.tokens_seen,
        train_stats: run.state.data.clone(),
        eval_stats: data.eval_stats,
        skipped: loader.skipped,
        rejected: data.rejected,
        stop,
        final_dir,
        wall_s: started.elapsed().as_secs_f64(),
    })
}

/// Finds the splits, plans the steps (rejecting invalid records once) and loads validation.
fn prepare(cfg: &TrainConfig, enc: &dyn Encode) -> Result<Prepared, TrainError> {
    let splits = data::splits(&cfg.data)?;
    let eval_files = match &cfg.eval_data {
        Some(p) => store::list_inputs(p)?.into_iter().map(|(f, _)| f).collect(),
        None => splits.validation.clone(),
    };
    let (total_steps, planned, skipped, rejected) = plan(cfg, &splits.train, enc);
    if planned.samples == 0 {
        let mut report = planned.summary();
        if let Some(first) = skipped.first() {
            report.push_str(&format!("; first problem: {} {}", first.location, first.reason));
        }
        return Err(DataError::NothingToTrain { path: cfg.data.clone(), report }.into());
    }
    let (mut eval_seqs, eval_stats, _) = data::load_all(&eval_files, &cfg.loader, enc);
    if cfg.eval_max_samples > 0 {
        let mut kept = 0usize;
        eval_seqs.retain(|s| {
            kept += s.starts.len();
            kept <= cfg.eval_max_samples
        });
    }
    Ok(Prepared { train_files: splits.train, total_steps, planned, skipped, rejected, eval_seqs, eval_stats })
}

impl<'a> Run<'a> {
    /// A fresh run, or the newest checkpoint's when resuming; refuses to mix with an earlier
    /// run's checkpoints otherwise.
    fn start_or_resume(
        cfg: &'a TrainConfig,
        model: &'a mut dyn Trainable,
        data: &Prepared,
    ) -> Result<Self, TrainError> {
        let vars = model.trainable();
        let names: Vec<String> = vars.iter().map(|(n, _)| n.clone()).collect();
        let mut opt = AdamW::new(vars.clone(), cfg.optim)?;
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
        let metrics = if resumed_from.is_some() {
            let kept = keep_metrics_until(&metrics_path, state.step, &mut history, &mut eval_history)?;
            store::write_atomic(&metrics_path, kept.as_bytes())?;
            JsonlWriter::append(&metrics_path, Durability::EveryRecord)?
        } else {
            JsonlWriter::create(&metrics_path, Durability::EveryRecord)?
        };
        let sched = Schedule {
            kind: cfg.schedule,
            peak_lr: cfg.lr,
            warmup_steps: schedule::warmup_steps(data.total_steps, cfg.warmup_ratio),
            total_steps: data.total_steps,
            min_lr_ratio: cfg.min_lr_ratio,
        };
        Ok(Run {
            cfg,
            model,
            vars,
            opt,
            sched,
            bar: progress_bar(cfg.progress, data.total_steps, state.step),
            wall_before: state.wall_s,
            state,
            resumed_from,
            resumed_dir: latest,
            saved_at: resumed_from,
            metrics,
            history,
            eval_history,
            losses: Vec::new(),
            evals: Vec::new(),
            started: Instant::now(),
        })
    }

    /// A line above the progress bar (or on stderr without one).
    fn note(&self, line: String) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// What is about to be trained, and where it resumes.
    fn announce(&self, data: &Prepared) {
        self.note(format!(
            "finetune: {} trainable parameters, {} steps planned; {}: {}",
            self.opt.num_params(),
            data.total_steps,
            if self.cfg.max_steps.is_some() { "train data read for those steps" } else { "train data, one epoch" },
            data.planned.summary()
        ));
        // Invalid records were reported as rejects; torn tails are worth a line too.
        for s in data.skipped.iter().filter(|s| s.location.is_empty()).take(5) {
            self.note(format!("finetune: warning: {}", s.reason));
        }
        if let (Some(s), Some(dir)) = (self.resumed_from, &self.resumed_dir) {
            self.note(format!("finetune: resumed from step {s} ({})", dir.display()));
        }
    }

    /// Why the run is over, if it is: `max_steps` wins over `epochs` (the corpus cycles).
    fn finished(&self, total_steps: u64) -> Option<Stop> {
        match self.cfg.max_steps {
            Some(_) => (self.state.step >= total_steps).then_some(Stop::MaxSteps),
            None if self.state.step >= total_steps || self.state.position.epoch >= self.cfg.epochs.max(1) => {
                Some(Stop::Epochs)
            }
            None => None,
        }
    }

    fn last_checkpoint(&self) -> String {
        match checkpoint::latest(&self.cfg.out) {
            Ok(Some(p)) => format!("the last good checkpoint is {}", p.display()),
            _ => "there is no checkpoint yet".to_string(),
        }
    }

    /// One optimizer step: gradients of every length group, clipping, the update.
    fn step(&mut self, step: &Step) -> Result<StepResult, TrainError> {
        let t0 = Instant::now();
        let lr = self.sched.lr(self.state.step);
        let n_targets = step.num_targets();
        let mut grads = self.opt.new_grads();
        let mut loss_sum = 0f64;
        let samples = || step.sequences.iter().flat_map(|s| s.sample_ids.clone()).collect::<Vec<_>>().join(", ");
        let at = self.state.step + 1;
        self.model.begin_step(self.state.step);
        for group in data::length_groups(&step.sequences, self.cfg.loader.batch) {
            let (l, g) = self.model.loss_and_grads_batch(&group).map_err(|msg| TrainError::Model { step: at, msg })?;
            if !l.is_finite() {
                let last = self.last_checkpoint();
                return Err(TrainError::NonFinite { step: at, what: "loss", value: l, samples: samples(), last });
            }
            loss_sum += l;
            self.opt.accumulate(&mut grads, g)?;
        }
        let n = n_targets.max(1) as f64;
        let norm = self.opt.grad_norm(&grads, 1.0 / n)?;
        if !norm.is_finite() {
            let last = self.last_checkpoint();
            return Err(TrainError::NonFinite {
                step: at,
                what: "gradient norm",
                value: norm,
                samples: samples(),
                last,
            });
        }
        let max_norm = (self.cfg.max_grad_norm > 0.0).then_some(self.cfg.max_grad_norm);
        self.opt.step(&grads, lr, optim::clip_factor(norm, max_norm) / n)?;
        Ok(StepResult {
            loss: loss_sum / n,
            lr,
            norm,
            tokens: step.tokens() as u64,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// Moves the state past a step.
    fn advance(&mut self, step: &Step, r: &StepResult, loader: &Loader) {
        let s = &mut self.state;
        s.step += 1;
        s.position = if step.epoch_end { Position { epoch: step.end.epoch + 1, index: 0 } } else { step.end };
        s.tokens_seen += r.tokens;
        s.target_tokens_seen += step.num_targets() as u64;
        s.data = loader.stats.clone();
        s.last_loss = Some(r.loss);
        s.wall_s = self.wall_before + self.started.elapsed().as_secs_f64();
        self.losses.push((s.step, r.loss));
        self.history.push((s.step, r.loss));
    }

    /// The validation loss, every `eval_every` steps and at the end.
    fn evaluate_if_due(&mut self, eval_seqs: &[Sequence], last: bool) -> Result<Option<f64>, TrainError> {
        let every = self.cfg.eval_every;
        if eval_seqs.is_empty() || !(last || (every > 0 && self.state.step.is_multiple_of(every))) {
            return Ok(None);
        }
        let (l, _) = evaluate(&*self.model, eval_seqs, self.state.step)?;
        self.state.last_eval_loss = Some(l);
        self.evals.push((self.state.step, l));
        self.eval_history.push((self.state.step, l));
        Ok(Some(l))
    }

    /// `metrics.jsonl`, the loss plot, the progress bar.
    fn log(
        &mut self,
        step: &Step,
        r: &StepResult,
        eval_loss: Option<f64>,
        last: bool,
        total_steps: u64,
    ) -> Result<(), TrainError> {
        let tok_s = r.tokens as f64 / r.seconds.max(1e-9);
        let mut rec = json!({
            "step": self.state.step,
            "epoch": step.end.epoch,
            "loss": r.loss,
            "lr": r.lr,
            "grad_norm": r.norm,
            "tokens": self.state.tokens_seen,
            "target_tokens": self.state.target_tokens_seen,
            "tokens_per_s": tok_s,
            "wall_s": self.state.wall_s,
        });
        if let (Some(l), Value::Object(m)) = (eval_loss, &mut rec) {
            m.insert("eval_loss".into(), json!(l));
        }
        self.metrics.write_value(&rec)?;
        if eval_loss.is_some() {
            let png = self.cfg.out.join("loss.png");
            if let Err(e) = plot::loss_curve(&png, &self.history, &self.eval_history) {
                self.note(format!("finetune: could not draw {}: {e}", png.display()));
            }
        }
        let (loss, lr, norm) = (r.loss, r.lr, r.norm);
        self.bar.set_position(self.state.step);
        self.bar.set_message(format!("loss {loss:.4} lr {lr:.2e} gnorm {norm:.3} {tok_s:.0} tok/s"));
        if self.bar.is_hidden() && (eval_loss.is_some() || last) {
            eprintln!(
                "finetune: step {}/{total_steps}: loss {loss:.4}{} lr {lr:.3e} grad-norm {norm:.3} {tok_s:.0} tok/s",
                self.state.step,
                eval_loss.map(|l| format!(" eval-loss {l:.4}")).unwrap_or_default(),
            );
        }
        Ok(())
    }

    /// A checkpoint every `save_every` steps and at the end.
    fn save_if_due(&mut self, last: bool) -> Result<(), TrainError> {
        let every = self.cfg.save_every;
        if last || (every > 0 && self.state.step.is_multiple_of(every)) {
            save(self.cfg, &*self.model, &self.vars, &self.opt, &self.state)?;
            self.saved_at = Some(self.state.step);
        }
        Ok(())
    }

    /// The last checkpoint (if the loop did not just write it), `final/`, and why it stopped.
    fn finish(&mut self, stop: Stop) -> Result<(u64, PathBuf), TrainError> {
        if self.saved_at != Some(self.state.step) {
            save(self.cfg, &*self.model, &self.vars, &self.opt, &self.state)?;
        }
        self.metrics.flush()?;
        self.bar.finish_and_clear();
        let final_dir = self.cfg.out.join("final");
        export_final(&*self.model, &self.cfg.out, &final_dir)?;
        let why = match stop {
            Stop::MaxSteps => format!("max_steps = {} reached", self.state.step),
            Stop::Epochs => format!("{} epoch(s) done", self.cfg.epochs.max(1)),
        };
        eprintln!("finetune: stopped after step {}: {why}", self.state.step);
        Ok((self.state.step, final_dir))
    }
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
    cfg: &TrainConfig,
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

    fn config(dir: &Path, data: PathBuf, out: &str) -> TrainConfig {
        let mut c = TrainConfig {
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
            ..TrainConfig::default()
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
            train(&TrainConfig { keep_last: 0, ..cut.clone() }, &mut Bigram::new(24, 8, 1), &WordEncoder).unwrap();
        assert_eq!(first.losses, full.losses);
        for s in [20, 30] {
            std::fs::remove_dir_all(cut.out.join(format!("checkpoint-{s}"))).unwrap();
        }
        let resumed =
            train(&TrainConfig { resume: true, ..cut.clone() }, &mut Bigram::new(24, 8, 99), &WordEncoder).unwrap();
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
        let e = train(&TrainConfig { save_every: 1, ..cfg.clone() }, &mut model, &WordEncoder).unwrap_err();
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
        let r = train(&TrainConfig { resume: true, ..cfg }, &mut model, &WordEncoder).unwrap();
        assert_eq!(r.resumed_from, Some(step - 1));
    }
}
