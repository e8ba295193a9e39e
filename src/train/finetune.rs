//! The settings of `distill finetune` (the recipe's `[finetune]` table).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::data::DataConfig;
use super::model::LoraConfig;
use super::optim::AdamWConfig;
use super::schedule::ScheduleKind;

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
    /// `cpu` (f32), or `cuda` (GPU 0, bf16 weights with f32 optimizer state; needs a build with
    /// the `cuda` feature).
    pub device: String,
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
            device: "cpu".into(),
            eval_every: 50,
            eval_max_samples: 0,
            save_every: 100,
            keep_last: 2,
            resume: false,
            progress: true,
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
}
