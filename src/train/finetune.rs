//! The settings of `distill finetune` (the recipe's `[finetune]` table).

use std::path::PathBuf;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::data::{Encode, Encoded};
use super::student::Student;
use super::trainer::{self, Report, TrainConfig, TrainError};
use crate::model::chat::{ChatTokenizer, TokenizeError};
use crate::model::{Checkpointing, LoraConfig, Model, ModelError};

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
        let msgs = crate::record::training_messages(record)
            .ok_or("the record has no `messages` list (SFT examples and samples carry one)")?;
        let e = self.0.encode_chat(&msgs, record.get("tools")).map_err(|e| e.to_string())?;
        let targets = e.assistant_mask.iter().map(|&m| m == 1).collect();
        Ok(Encoded { ids: e.ids, targets })
    }
}

/// Loads the student and its tokenizer and trains it as `cfg` says.
pub fn run(cfg: &FinetuneConfig) -> Result<Report, FinetuneError> {
    crate::model::keep_freed_memory();
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
    model.set_matmul_dtype(cfg.precision.matmul_dtype());
    if cfg.precision == Precision::Bf16 && device.is_cpu() && !crate::model::kernels::bf16mm::available() {
        // Measured on a Zen 4 through candle (before the AVX512-BF16 kernel), 0.5B LoRA r16 at 512 tokens: 22 vs 62 tok/s, 8.2 vs 3.4 GB.
        eprintln!(
            "warning: --precision bf16 on a CPU without AMX or AVX512-BF16 multiplies through candle's generic bf16 path, \
             about 3x slower than f32 and with more memory; use --precision f32 here"
        );
    }
    let mut student = Student { model, base: cfg.model.clone(), seed: cfg.train.loader.seed, save_dtype: dtype };
    let report = trainer::train(&cfg.train, &mut student, &ChatEncoder(tokenizer))?;
    if cfg.lora.is_some() {
        let dir = cfg.train.out.join("adapter");
        student
            .model
            .save_adapter(&dir, &cfg.model.to_string_lossy())
            .map_err(|source| FinetuneError::Model { path: dir, source })?;
    }
    Ok(report)
}

/// The default peak learning rate of full fine-tuning (open-r1's distillation recipes).
pub const FULL_LR: f64 = trainer::DEFAULT_LR;
/// The default peak learning rate with LoRA adapters.
pub const LORA_LR: f64 = 2e-4;

/// Everything `distill finetune` needs: the student and how it is trained (the recipe's
/// `[finetune]` table). The training loop's own settings are [`TrainConfig`], kept flat in the
/// table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FinetuneConfig {
    /// The student: a Hugging Face model directory.
    pub model: PathBuf,
    #[serde(flatten)]
    pub train: TrainConfig,
    /// LoRA adapters (rank, alpha, dropout, targets, seed); absent: full fine-tuning. The final
    /// model (`final/`) has them merged; `adapter/` holds them in PEFT's layout. Alpha defaults
    /// to 2 × rank and the seed to `seed`.
    pub lora: Option<LoraConfig>,
    /// `cpu`, or `cuda` / `cuda:N` in a build with the `cuda` feature.
    pub device: String,
    /// Per-layer activation checkpointing: this many layers (the first ones; `"all"`) keep
    /// only their input in the forward pass and are recomputed during backward (less memory
    /// for long sequences, more compute); 0 = off.
    pub checkpoint_layers: Checkpointing,
    /// `f32`, or `bf16`: mixed precision, the projections' matrix multiplies in bf16 with f32
    /// master weights, gradients and optimiser state (for GPUs, and CPUs with AMX or AVX512-BF16,
    /// where the products run on those units; candle's CPU backend has no bf16 matmul kernel and
    /// widens the products to f32, so on other CPUs it is slower).
    pub precision: Precision,
}

/// Precision of training (see [`FinetuneConfig::precision`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    /// The dtype the projections multiply in (`None`: the model's).
    pub fn matmul_dtype(self) -> Option<DType> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(DType::BF16),
        }
    }
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            model: PathBuf::new(),
            train: TrainConfig::default(),
            lora: None,
            device: "cpu".into(),
            checkpoint_layers: Checkpointing::Off,
            precision: Precision::F32,
        }
    }
}

impl crate::config::Settings for FinetuneConfig {
    const TABLE: &'static str = "finetune";
    /// The names transformers' `TrainingArguments`, TRL's `SFTConfig`, PEFT and axolotl use.
    const ALIASES: &'static [(&'static str, &'static str)] = &[
        ("model_name_or_path", "model"),
        ("base_model", "model"),
        ("output_dir", "out"),
        ("learning_rate", "lr"),
        ("num_train_epochs", "epochs"),
        ("num_epochs", "epochs"),
        ("lr_scheduler_type", "schedule"),
        ("lr_scheduler", "schedule"),
        ("weight_decay", "optim.weight_decay"),
        ("adam_beta1", "optim.beta1"),
        ("adam_beta2", "optim.beta2"),
        ("adam_epsilon", "optim.eps"),
        ("max_seq_length", "loader.max_seq_len"),
        ("sequence_len", "loader.max_seq_len"),
        ("packing", "loader.packing"),
        ("sample_packing", "loader.packing"),
        ("per_device_train_batch_size", "loader.batch"),
        ("micro_batch_size", "loader.batch"),
        ("seed", "loader.seed"),
        ("eval_steps", "eval_every"),
        ("save_steps", "save_every"),
        ("save_total_limit", "keep_last"),
        ("lora_r", "lora.rank"),
        ("lora_alpha", "lora.alpha"),
        ("lora_dropout", "lora.dropout"),
        ("lora_target_modules", "lora.targets"),
    ];

    fn derive(&mut self, origins: &mut crate::config::Origins) {
        let seed = self.train.loader.seed;
        if let Some(l) = self.lora.as_mut() {
            if !origins.is_set("lora.alpha") {
                l.alpha = 2.0 * l.rank as f64;
                origins.derived("lora.alpha", "2 x lora.rank");
            }
            if !origins.is_set("lora.seed") {
                l.seed = seed;
                origins.derived("lora.seed", "loader.seed");
            }
        }
        if !origins.is_set("lr") {
            self.train.lr = if self.lora.is_some() { LORA_LR } else { FULL_LR };
            if self.lora.is_some() {
                origins.derived("lr", "the LoRA default");
            }
        }
    }

    fn validate(&self) -> Result<(), String> {
        for (what, p, key) in [
            ("the student", &self.model, "model"),
            ("the corpus", &self.train.data, "data"),
            ("the output", &self.train.out, "out"),
        ] {
            if p.as_os_str().is_empty() {
                return Err(format!("finetune needs {what}: set `{key}`"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_toml_and_accepts_a_partial_table() {
        let mut cfg = FinetuneConfig { lora: Some(LoraConfig::default()), ..Default::default() };
        cfg.train.max_steps = Some(7);
        let text = toml::to_string(&cfg).unwrap();
        let back: FinetuneConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, cfg);
        let partial: FinetuneConfig =
            toml::from_str("lr = 1e-4\n[loader]\nmax_seq_len = 512\n[lora]\nrank = 8\n").unwrap();
        assert_eq!(partial.train.lr, 1e-4);
        assert_eq!(partial.train.loader.max_seq_len, 512);
        assert_eq!(partial.train.loader.tokens_per_step, super::super::data::DataConfig::default().tokens_per_step);
        assert_eq!(partial.lora.as_ref().map(|l| (l.rank, l.alpha)), Some((8, 32.0)));
        let layers = crate::config::Layers { sets: vec!["learning_rat=1.0".into()], ..Default::default() };
        let e = crate::config::resolve::<FinetuneConfig>(&layers).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("unknown field `learning_rat`"), "unknown keys are refused: {e}");
        let layers = crate::config::Layers {
            sets: vec!["learning_rate=1.0".into(), "max_seq_length=64".into(), "lora_r=4".into()],
            ..Default::default()
        };
        let r = crate::config::resolve_unchecked::<FinetuneConfig>(&layers).expect("aliases resolve");
        assert_eq!(r.value.train.lr, 1.0);
        assert_eq!(r.value.train.loader.max_seq_len, 64);
        assert_eq!(r.value.lora.as_ref().map(|l| (l.rank, l.alpha)), Some((4, 8.0)));
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
