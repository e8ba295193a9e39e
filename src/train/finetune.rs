//! The settings of `distill finetune` (the recipe's `[finetune]` table).

use std::path::PathBuf;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::data::{DataConfig, Encode, Encoded};
use super::model::{LoraConfig, Model, ModelError};
use super::optim::AdamWConfig;
use super::schedule::ScheduleKind;
use super::student::Student;
use super::tokenize::{ChatTokenizer, TokenizeError};
use super::trainer::{self, Report, TrainError};

/// Errors of `distill finetune`.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    #[error("model {path}: {source}")]
    Model { path: PathBuf, source: ModelError },
    #[error("tokenizer of {path}: {source}")]
    Tokenize { path: PathBuf, source: TokenizeError },
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error("--device {0}")]
    Device(String),
}

/// The device a `--device` value names: `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(name: &str) -> Result<Device, FinetuneError> {
    let bad = |why: &str| FinetuneError::Device(format!("{name}: {why}"));
    match name {
        "cpu" => Ok(Device::Cpu),
        _ if name == "cuda" || name.starts_with("cuda:") => {
            let ordinal = match name.strip_prefix("cuda:") {
                Some(n) => n.parse::<usize>().map_err(|_| bad("the GPU number after `cuda:` is not a number"))?,
                None => 0,
            };
            if !cfg!(feature = "cuda") {
                return Err(bad(
                    "this binary was built without CUDA; rebuild with `cargo build --release --features cuda` \
                     (needs the CUDA toolkit) or use --device cpu",
                ));
            }
            Device::new_cuda(ordinal)
                .map_err(|e| bad(&format!("cannot open the GPU ({e}); check the driver and CUDA libraries")))
        }
        _ => Err(bad("expected cpu, cuda or cuda:N")),
    }
}

/// The chat template and assistant-only mask of the student's tokenizer, as the trainer's
/// [`Encode`] seam.
pub struct ChatEncoder(pub ChatTokenizer);

impl Encode for ChatEncoder {
    fn encode(&self, record: &Map<String, Value>) -> Result<Encoded, String> {
        let msgs = record
            .get("messages")
            .and_then(Value::as_array)
            .ok_or("the record has no `messages` list (SFT examples carry one)")?;
        let e = self.0.encode_chat(msgs, record.get("tools")).map_err(|e| e.to_string())?;
        let targets = e.assistant_mask.iter().map(|&m| m == 1).collect();
        Ok(Encoded { ids: e.ids, targets })
    }
}

/// Loads the student and its tokenizer and trains it as `cfg` says.
pub fn run(cfg: &FinetuneConfig) -> Result<Report, FinetuneError> {
    super::keep_freed_memory();
    // f32 weights on either device: the CPU path uses the fused optimiser, a GPU the
    // optimiser's tensor path.
    let (device, dtype) = (parse_device(&cfg.device)?, DType::F32);
    let tok_err = |source| FinetuneError::Tokenize { path: cfg.model.clone(), source };
    let tokenizer = ChatTokenizer::from_dir(&cfg.model).map_err(tok_err)?;
    tokenizer.check_eos().map_err(tok_err)?;
    let model_err = |source| FinetuneError::Model { path: cfg.model.clone(), source };
    let mut model = Model::load(&cfg.model, &device, dtype).map_err(model_err)?;
    if let Some(l) = &cfg.lora {
        model.add_lora(l).map_err(model_err)?;
    }
    model.checkpoint_layers = cfg.checkpoint_layers;
    let mut student = Student { model, base: cfg.model.clone(), seed: cfg.loader.seed, save_dtype: dtype };
    let report = trainer::train(cfg, &mut student, &ChatEncoder(tokenizer))?;
    if cfg.lora.is_some() {
        let dir = cfg.out.join("adapter");
        student
            .model
            .save_adapter(&dir, &cfg.model.to_string_lossy())
            .map_err(|source| FinetuneError::Model { path: dir, source })?;
    }
    Ok(report)
}

/// A number of layers in TOML: an integer, or `"all"` (`usize::MAX`).
pub mod layer_count {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(n: &usize, s: S) -> Result<S::Ok, S::Error> {
        match i64::try_from(*n) {
            Ok(v) if *n != usize::MAX => s.serialize_i64(v),
            _ => s.serialize_str("all"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Count(u64),
            Word(String),
        }
        match Repr::deserialize(d)? {
            Repr::Count(n) => usize::try_from(n).map_err(serde::de::Error::custom),
            Repr::Word(w) if w == "all" => Ok(usize::MAX),
            Repr::Word(w) => {
                Err(serde::de::Error::custom(format!("expected a number of layers or \"all\", not \"{w}\"")))
            }
        }
    }

    /// The command line's form: a number or `all`.
    pub fn parse(s: &str) -> Result<usize, String> {
        if s == "all" {
            return Ok(usize::MAX);
        }
        s.parse().map_err(|_| format!("expected a number of layers or `all`, not `{s}`"))
    }
}

/// The default peak learning rate of full fine-tuning (open-r1's distillation recipes).
pub const FULL_LR: f64 = 4e-5;
/// The default peak learning rate with LoRA adapters.
pub const LORA_LR: f64 = 2e-4;

/// Everything `distill finetune` needs, resolved from flags (and a recipe's `[finetune]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneConfig {
    /// The student: a Hugging Face model directory.
    pub model: PathBuf,
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
    pub loader: DataConfig,
    /// LoRA adapters (rank, alpha, dropout, targets, seed); absent: full fine-tuning. The final
    /// model (`final/`) has them merged; `adapter/` holds them in PEFT's layout.
    pub lora: Option<LoraConfig>,
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
    /// `cpu`, or `cuda` / `cuda:N` in a build with the `cuda` feature.
    pub device: String,
    /// Per-layer activation checkpointing: this many layers (the first ones; `"all"`) keep
    /// only their input in the forward pass and are recomputed during backward (less memory
    /// for long sequences, more compute); 0 = off.
    #[serde(with = "layer_count")]
    pub checkpoint_layers: usize,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            model: PathBuf::new(),
            data: PathBuf::new(),
            out: PathBuf::new(),
            eval_data: None,
            epochs: 3,
            max_steps: None,
            lr: FULL_LR,
            schedule: ScheduleKind::Cosine,
            warmup_ratio: 0.03,
            min_lr_ratio: 0.1,
            max_grad_norm: 1.0,
            optim: AdamWConfig::default(),
            loader: DataConfig::default(),
            lora: None,
            eval_every: 50,
            eval_max_samples: 0,
            save_every: 100,
            keep_last: 2,
            resume: false,
            progress: true,
            device: "cpu".into(),
            checkpoint_layers: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_toml_and_accepts_a_partial_table() {
        let cfg = FinetuneConfig { lora: Some(LoraConfig::default()), max_steps: Some(7), ..Default::default() };
        let text = toml::to_string(&cfg).unwrap();
        let back: FinetuneConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, cfg);
        let partial: FinetuneConfig =
            toml::from_str("lr = 1e-4\n[loader]\nmax_seq_len = 512\n[lora]\nrank = 8\n").unwrap();
        assert_eq!(partial.lr, 1e-4);
        assert_eq!(partial.loader.max_seq_len, 512);
        assert_eq!(partial.loader.tokens_per_step, DataConfig::default().tokens_per_step);
        assert_eq!(partial.lora.as_ref().map(|l| (l.rank, l.alpha)), Some((8, 32.0)));
        assert!(toml::from_str::<FinetuneConfig>("learning_rate = 1.0").is_err(), "unknown keys are refused");
    }

    #[test]
    fn device_names() {
        assert!(matches!(parse_device("cpu"), Ok(Device::Cpu)));
        for bad in ["gpu", "cuda:x", "cuda:-1", "CPU"] {
            let e = parse_device(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.starts_with(&format!("--device {bad}: ")), "{bad}: {e}");
        }
        if !cfg!(feature = "cuda") {
            let e = parse_device("cuda").err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }
}
