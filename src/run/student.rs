//! The `student` step of a recipe: a Hugging Face model directory to fine-tune, either given
//! (`model = DIR`, or a `.gguf` converted on the spot) or made here: a Qwen2-architecture
//! config from `datasets/`, a byte-level BPE tokenizer trained on the corpus (Qwen2's
//! pre-tokenizer: digits one by one), a ChatML chat template, `<|im_end|>` as end of turn,
//! and seeded random weights.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::ModelWrapper;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::model::{Config, Model};

/// Qwen2's pre-tokenizer pattern (digits split one by one).
const QWEN2_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2.5's ChatML layout, without tools: `<|im_start|>role\ncontent<|im_end|>\n`, a default
/// system turn, and `<|im_start|>assistant\n` as the generation prompt.
pub const CHAT_TEMPLATE: &str = "{%- if messages[0]['role'] == 'system' %}\
{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\
{%- else %}\
{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}\
{%- endif %}\
{%- for message in messages %}\
{%- if message['role'] != 'system' %}\
{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}\
{%- endif %}\
{%- endfor %}\
{%- if add_generation_prompt %}\
{{- '<|im_start|>assistant\\n' }}\
{%- endif %}";

const SPECIAL: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const ADDED: [&str; 2] = ["<think>", "</think>"];

/// Settings of the recipe's `[student]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StudentConfig {
    /// An existing Hugging Face model directory (or a `.gguf` file, converted into
    /// `out_dir/student/`). Unset: a tiny model is made from `config`.
    pub model: Option<PathBuf>,
    /// A `config.json` of the tiny student (its `vocab_size` is the trained tokenizer's).
    pub config: PathBuf,
    /// Vocabulary of the tokenizer trained on the corpus (specials included).
    pub vocab_size: usize,
    /// Seed of the random weights.
    pub seed: u64,
    /// Standard deviation of the random weights (transformers' `initializer_range`).
    pub init_std: f64,
}

impl Default for StudentConfig {
    fn default() -> Self {
        StudentConfig {
            model: None,
            config: PathBuf::from("datasets/tiny-qwen2.json"),
            vocab_size: 512,
            seed: 0,
            init_std: 0.02,
        }
    }
}

impl crate::config::Settings for StudentConfig {
    const TABLE: &'static str = "student";

    fn validate(&self) -> Result<(), String> {
        if self.model.is_none() && self.vocab_size < 300 {
            return Err(format!(
                "student `vocab_size` {} is too small: the 256 bytes and the special tokens need 300 at least",
                self.vocab_size
            ));
        }
        Ok(())
    }
}

/// Trains a byte-level BPE tokenizer on `texts`.
pub fn train_tokenizer(texts: &[String], vocab_size: usize) -> Result<Tokenizer, String> {
    let split = Split::new(SplitPattern::Regex(QWEN2_PATTERN.into()), SplitDelimiterBehavior::Isolated, false)
        .map_err(|e| format!("pre-tokenizer: {e}"))?;
    let pre = PreSequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
    ]);
    let mut tok = Tokenizer::new(ModelWrapper::BPE(BPE::default()));
    tok.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(pre)));
    tok.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
    let specials: Vec<AddedToken> = SPECIAL.iter().map(|s| AddedToken::from(*s, true)).collect();
    let mut trainer = TrainerWrapper::BpeTrainer(
        BpeTrainerBuilder::new()
            .vocab_size(vocab_size.saturating_sub(ADDED.len()))
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(specials)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build(),
    );
    tok.train(&mut trainer, texts.iter()).map_err(|e| format!("tokenizer training: {e}"))?;
    let added: Vec<AddedToken> = ADDED.iter().map(|s| AddedToken::from(*s, false)).collect();
    tok.add_tokens(added).map_err(|e| format!("tokenizer: {e}"))?;
    Ok(tok)
}

/// A standard normal draw from two uniforms (Box–Muller).
fn normal(rng: &mut fastrand::Rng) -> f32 {
    let u1 = rng.f64().max(1e-12);
    let u2 = rng.f64();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// The shape of a decoder weight by name, as `cfg` implies it.
fn shape_of(cfg: &Config, name: &str) -> Vec<usize> {
    let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
    let (q, kv) = (cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim);
    let last = name.rsplit('.').nth(1).unwrap_or("");
    let bias = name.ends_with(".bias");
    match (last, bias) {
        ("embed_tokens", _) | ("lm_head", _) => vec![cfg.vocab_size, d],
        ("q_proj", false) => vec![q, d],
        ("q_proj", true) => vec![q],
        ("k_proj" | "v_proj", false) => vec![kv, d],
        ("k_proj" | "v_proj", true) => vec![kv],
        ("o_proj", false) => vec![d, q],
        ("gate_proj" | "up_proj", false) => vec![i, d],
        ("down_proj", false) => vec![d, i],
        (_, true) if last.ends_with("proj") => vec![if last == "o_proj" { d } else { i }],
        _ => vec![d],
    }
}

/// What [`make_tiny`] made.
#[derive(Debug, Clone, Serialize)]
pub struct TinyStudent {
    pub vocab_size: usize,
    pub params: usize,
    pub hidden_size: usize,
    pub layers: usize,
}

/// Makes the tiny student in `out`: tokenizer trained on `texts`, random weights.
pub fn make_tiny(cfg: &StudentConfig, texts: &[String], out: &Path) -> Result<TinyStudent, String> {
    let shown = cfg.config.display();
    let text = std::fs::read_to_string(&cfg.config)
        .map_err(|e| format!("[student] config = {shown:?}: {e}; point `config` at a Qwen2 config.json"))?;
    let mut json: Value =
        serde_json::from_str(&text).map_err(|e| format!("[student] config = {shown:?}: not JSON: {e}"))?;
    let tok = train_tokenizer(texts, cfg.vocab_size)?;
    let vocab = tok.get_vocab_size(true);
    let id = |t: &str| tok.token_to_id(t).ok_or_else(|| format!("trained tokenizer lacks {t}"));
    let (eos, bos) = (id("<|im_end|>")?, id("<|endoftext|>")?);
    json["vocab_size"] = json!(vocab);
    json["eos_token_id"] = json!(eos);
    json["bos_token_id"] = json!(bos);
    json["pad_token_id"] = json!(bos);
    let mcfg = Config::from_json(&json).map_err(|e| format!("[student] config = {shown:?}: {e}"))?;
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let std = cfg.init_std as f32;
    let dev = Device::Cpu;
    let get = |name: &str| -> crate::model::Result<Tensor> {
        let shape = shape_of(&mcfg, name);
        let n: usize = shape.iter().product();
        let t = if name.ends_with("norm.weight") {
            Tensor::ones(shape, DType::F32, &dev)?
        } else if name.ends_with(".bias") {
            Tensor::zeros(shape, DType::F32, &dev)?
        } else {
            let v: Vec<f32> = (0..n).map(|_| std * normal(&mut rng)).collect();
            Tensor::from_vec(v, shape, &dev)?
        };
        Ok(t)
    };
    let model = Model::from_tensors(mcfg.clone(), get, &dev, DType::F32).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    model.save(out, DType::F32).map_err(|e| format!("{}: {e}", out.display()))?;
    tok.save(out.join("tokenizer.json"), true).map_err(|e| format!("{}: {e}", out.join("tokenizer.json").display()))?;
    let tcfg = json!({
        "tokenizer_class": "Qwen2Tokenizer",
        "bos_token": null,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": null,
        "model_max_length": mcfg.max_position_embeddings,
        "chat_template": CHAT_TEMPLATE,
    });
    let bytes = serde_json::to_vec_pretty(&tcfg).map_err(|e| e.to_string())?;
    crate::store::write_atomic(&out.join("tokenizer_config.json"), &bytes).map_err(|e| e.to_string())?;
    Ok(TinyStudent {
        vocab_size: vocab,
        params: model.num_params(),
        hidden_size: mcfg.hidden_size,
        layers: mcfg.num_hidden_layers,
    })
}
