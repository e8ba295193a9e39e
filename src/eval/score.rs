//! `distill score`: the mean per-token cross-entropy and perplexity of the assistant tokens of a
//! corpus under a model (held-out loss of a student; the hook by which numbers are checked).
//!
//! In: SFT examples (any record with `messages`: `.jsonl`, `.jsonl.zst`, `.parquet` or a shard
//! directory) and a model directory (or `.gguf`). Out: a report on stdout —
//! `{"loss", "tokens", "perplexity", ...}` with `--json`. Nothing is written.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::chat::{ChatTokenizer, TokenizeError};
use crate::model::{Model, ModelError, SeqLayout};
use crate::store::{self, StoreError};

/// Settings of `distill score`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreConfig {
    /// Model directory (HF layout) or a `.gguf` file.
    pub model: PathBuf,
    /// Records with `messages`.
    pub path: PathBuf,
    pub json: bool,
    /// Weights dtype for the computation: `float32` (default) or `bfloat16`.
    pub dtype: String,
    /// Score at most this many records (0: all).
    pub limit: usize,
    /// Where records that cannot be scored go, with file, line and reason.
    pub rejects: PathBuf,
    /// Column renames applied before the public layouts are recognised: `field = "column"`
    /// reads `column` as distill's `field` (`--map field=column`).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub map: std::collections::BTreeMap<String, String>,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        ScoreConfig {
            model: PathBuf::new(),
            path: PathBuf::new(),
            json: false,
            dtype: "float32".into(),
            limit: 0,
            rejects: PathBuf::from(store::DEFAULT_REJECTS),
            map: Default::default(),
        }
    }
}

impl crate::config::Settings for ScoreConfig {
    const TABLE: &'static str = "score";

    fn validate(&self) -> Result<(), String> {
        if self.model.as_os_str().is_empty() {
            return Err("score needs `model` (a model directory or .gguf file)".into());
        }
        if self.path.as_os_str().is_empty() {
            return Err("score needs `path` (SFT example records)".into());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Config(String),
    #[error("no record of {0} had an assistant token to score")]
    Empty(PathBuf),
}

/// What `score` measured.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScoreReport {
    /// Token-weighted mean cross-entropy (nats) over all assistant-target tokens.
    pub loss: f64,
    pub tokens: u64,
    pub perplexity: f64,
    pub examples: u64,
    pub rejected: u64,
}

impl ScoreReport {
    pub fn to_json(&self) -> Value {
        json!({"loss": self.loss, "tokens": self.tokens, "perplexity": self.perplexity,
               "examples": self.examples, "rejected": self.rejected})
    }
    pub fn to_text(&self) -> String {
        format!(
            "loss {:.6} nats/token  perplexity {:.4}  over {} assistant tokens in {} examples ({} rejected)\n",
            self.loss, self.perplexity, self.tokens, self.examples, self.rejected
        )
    }
}

/// Loads the tokenizer that belongs to a model path (the directory, or beside a `.gguf`).
pub fn load_tokenizer(model: &Path) -> Result<ChatTokenizer, ScoreError> {
    if model.extension().is_some_and(|e| e == "gguf") {
        return Ok(crate::model::gguf::chat_tokenizer(model)?);
    }
    Ok(ChatTokenizer::from_dir(model)?)
}

/// Sum of weighted cross-entropy and the number of target tokens of one example.
pub fn score_example(model: &Model, tok: &ChatTokenizer, messages: &[Value]) -> Result<(f64, u64), ScoreError> {
    let enc = tok.encode_chat(messages, None)?;
    let (targets, weights) = enc.targets();
    let n = enc.ids.len();
    let tokens = weights.iter().filter(|&&w| w > 0.0).count() as u64;
    if tokens == 0 {
        return Ok((0.0, 0));
    }
    let ids = Tensor::from_vec(enc.ids, (1, n), &model.device).map_err(ModelError::from)?;
    let layout = SeqLayout::padded(&[n], n)?;
    let out = model.loss(&ids, &layout, &targets, &weights, false)?;
    let mean = out.loss.to_dtype(DType::F64).and_then(|t| t.to_scalar::<f64>()).map_err(ModelError::from)?;
    Ok((mean * out.weight_sum, tokens))
}

/// Scores every record; one bad record is reported (stderr, with its location) and skipped.
pub fn run(cfg: &ScoreConfig) -> Result<ScoreReport, ScoreError> {
    crate::model::keep_freed_memory();
    let dtype = crate::model::weights::parse_dtype(&cfg.dtype)
        .ok_or_else(|| ScoreError::Config(format!("dtype `{}`: use float32 or bfloat16", cfg.dtype)))?;
    let mut model = Model::load(&cfg.model, &Device::Cpu, dtype)?;
    model.freeze_base();
    let tok = load_tokenizer(&cfg.model)?;
    let rejects = store::Rejects::new("score", cfg.rejects.clone());
    let mut input = store::Lenient::open(&cfg.path, rejects)?.with_layouts(store::Layouts::with_map(cfg.map.clone()));
    let (mut sum, mut tokens, mut examples) = (0f64, 0u64, 0u64);
    while let Some(item) = input.next_record() {
        let rec = item?;
        let Some(messages) = crate::record::training_messages(&rec.value) else {
            input.rejects.reject_record(&rec, "no `messages` list; score reads SFT examples and samples")?;
            continue;
        };
        match score_example(&model, &tok, &messages) {
            Ok((s, t)) => {
                sum += s;
                tokens += t;
                examples += 1;
            }
            Err(e) => input.rejects.reject_record(&rec, e.to_string())?,
        }
        if cfg.limit > 0 && examples + input.rejects.count() >= cfg.limit as u64 {
            break;
        }
    }
    let rejected = input.rejects.finish()?;
    if tokens == 0 {
        return Err(ScoreError::Empty(cfg.path.clone()));
    }
    let loss = sum / tokens as f64;
    Ok(ScoreReport { loss, tokens, perplexity: loss.exp(), examples, rejected })
}
