//! GGUF in: a llama/qwen2-architecture GGUF file as a model source. Tensors are dequantised
//! to f32 with candle-core's reader (llama's q/k rows un-permuted back to the HF rotate-half
//! order), the config comes from the metadata, the tokenizer is rebuilt from
//! `tokenizer.ggml.tokens`/`merges`, and the chat template from `tokenizer.chat_template`.
//! `convert` exports all of it as a Hugging Face model directory.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value as GValue};
use candle_core::{DType, Device, Tensor};
use serde_json::{Map, Value, json};

use super::config::{Arch, Config, RopeScaling};
use super::{Model, ModelError, Result};
use crate::model::chat::ChatTokenizer;

fn gerr(path: &Path, msg: impl Into<String>) -> ModelError {
    ModelError::Gguf { path: path.to_path_buf(), msg: msg.into() }
}

/// An opened GGUF file: its metadata and tensor directory.
pub struct GgufFile {
    path: std::path::PathBuf,
    content: Content,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        let content = Content::read(&mut f).map_err(|e| gerr(path, format!("not a readable GGUF file: {e}")))?;
        Ok(GgufFile { path: path.to_path_buf(), content })
    }

    fn meta(&self, key: &str) -> Option<&GValue> {
        self.content.metadata.get(key)
    }

    fn arch_name(&self) -> Result<String> {
        self.meta("general.architecture")
            .and_then(|v| v.to_string().ok().cloned())
            .ok_or_else(|| gerr(&self.path, "no general.architecture"))
    }

    fn num(&self, key: &str) -> Option<f64> {
        match self.meta(key)? {
            GValue::U8(v) => Some(*v as f64),
            GValue::I8(v) => Some(*v as f64),
            GValue::U16(v) => Some(*v as f64),
            GValue::I16(v) => Some(*v as f64),
            GValue::U32(v) => Some(*v as f64),
            GValue::I32(v) => Some(*v as f64),
            GValue::U64(v) => Some(*v as f64),
            GValue::I64(v) => Some(*v as f64),
            GValue::F32(v) => Some(*v as f64),
            GValue::F64(v) => Some(*v),
            _ => None,
        }
    }

    fn req(&self, key: &str) -> Result<usize> {
        self.num(key).map(|v| v as usize).ok_or_else(|| gerr(&self.path, format!("metadata `{key}` is missing")))
    }

    fn strings(&self, key: &str) -> Option<Vec<String>> {
        match self.meta(key)? {
            GValue::Array(a) => a.iter().map(|v| v.to_string().ok().cloned()).collect(),
            _ => None,
        }
    }

    fn ints(&self, key: &str) -> Option<Vec<i64>> {
        match self.meta(key)? {
            GValue::Array(a) => a
                .iter()
                .map(|v| match v {
                    GValue::I32(x) => Some(*x as i64),
                    GValue::U32(x) => Some(*x as i64),
                    GValue::I64(x) => Some(*x),
                    GValue::U8(x) => Some(*x as i64),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// The decoder config from `{arch}.*` metadata.
    pub fn config(&self) -> Result<Config> {
        let name = self.arch_name()?;
        let arch = match name.as_str() {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => return Err(gerr(&self.path, format!("architecture `{other}` is not supported (llama, qwen2)"))),
        };
        let k = |s: &str| format!("{name}.{s}");
        let hidden = self.req(&k("embedding_length"))?;
        let heads = self.req(&k("attention.head_count"))?;
        let kv = self.num(&k("attention.head_count_kv")).map(|v| v as usize).unwrap_or(heads);
        let vocab = match self.num(&k("vocab_size")) {
            Some(v) => v as usize,
            None => self
                .strings("tokenizer.ggml.tokens")
                .map(|t| t.len())
                .ok_or_else(|| gerr(&self.path, "no vocab size"))?,
        };
        let head_dim = self
            .num(&k("attention.key_length"))
            .or(self.num(&k("rope.dimension_count")))
            .map(|v| v as usize)
            .unwrap_or(hidden / heads);
        let tied = !self.content.tensor_infos.contains_key("output.weight");
        let id = |key: &str| self.num(key).map(|v| v as u32);
        let rope_scaling = match self.meta(&k("rope.scaling.type")).and_then(|v| v.to_string().ok()) {
            Some(t) if t == "linear" => {
                RopeScaling::Linear { factor: self.num(&k("rope.scaling.factor")).unwrap_or(1.0) }
            }
            _ => RopeScaling::Default,
        };
        let qkv_bias = self.content.tensor_infos.contains_key("blk.0.attn_q.bias");
        let mut cfg = Config {
            arch,
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: self.req(&k("feed_forward_length"))?,
            num_hidden_layers: self.req(&k("block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim,
            max_position_embeddings: self.num(&k("context_length")).map(|v| v as usize).unwrap_or(2048),
            rms_norm_eps: self.num(&k("attention.layer_norm_rms_epsilon")).unwrap_or(1e-6),
            rope_theta: self.num(&k("rope.freq_base")).unwrap_or(10000.0),
            rope_scaling,
            tie_word_embeddings: tied,
            qkv_bias: arch == Arch::Qwen2 || qkv_bias,
            o_bias: self.content.tensor_infos.contains_key("blk.0.attn_output.bias"),
            mlp_bias: self.content.tensor_infos.contains_key("blk.0.ffn_up.bias"),
            bos_token_id: id("tokenizer.ggml.bos_token_id"),
            eos_token_ids: id("tokenizer.ggml.eos_token_id").into_iter().collect(),
            dtype: Some("float32".into()),
            raw: Map::new(),
        };
        cfg.raw = match cfg.to_json("float32") {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        // llama3 rope scaling is not stored as metadata (llama.cpp bakes it into rope_freqs).
        if self.content.tensor_infos.contains_key("rope_freqs.weight") {
            return Err(gerr(
                &self.path,
                "the file carries rope_freqs (llama3 rope scaling), whose parameters GGUF does not record; \
                 use the original Hugging Face checkpoint",
            ));
        }
        Ok(cfg)
    }

    fn tensor(&self, name: &str) -> Result<Tensor> {
        let mut f = std::fs::File::open(&self.path).map_err(|e| ModelError::io(&self.path, e))?;
        let q = self
            .content
            .tensor(&mut f, name, &Device::Cpu)
            .map_err(|e| gerr(&self.path, format!("tensor `{name}`: {e}")))?;
        Ok(q.dequantize(&Device::Cpu)?)
    }

    /// Tokenizer files (`tokenizer.json`, `tokenizer_config.json`, `generation_config.json`)
    /// rebuilt from the metadata.
    pub fn tokenizer_files(&self) -> Result<(Value, Value, Value)> {
        let model = self.meta("tokenizer.ggml.model").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
        if model != "gpt2" {
            return Err(gerr(
                &self.path,
                format!("tokenizer.ggml.model `{model}`: only byte-level BPE (gpt2) tokenizers are rebuilt"),
            ));
        }
        let tokens =
            self.strings("tokenizer.ggml.tokens").ok_or_else(|| gerr(&self.path, "no tokenizer.ggml.tokens"))?;
        let merges =
            self.strings("tokenizer.ggml.merges").ok_or_else(|| gerr(&self.path, "no tokenizer.ggml.merges"))?;
        let types = self.ints("tokenizer.ggml.token_type").unwrap_or_default();
        let pre = self.meta("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
        let mut vocab = Map::new();
        for (i, t) in tokens.iter().enumerate() {
            vocab.insert(t.clone(), json!(i));
        }
        // Control (3) tokens are special added tokens; user-defined (4) are plain added tokens.
        let added: Vec<Value> = tokens
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let ty = types.get(i).copied().unwrap_or(1);
                (ty == 3 || ty == 4).then(|| {
                    json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                           "normalized": false, "special": ty == 3})
                })
            })
            .collect();
        let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
        let split = |re: &str| {
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
                byte_level(false)]})
        };
        const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        let pre_tokenizer = match pre.as_str() {
            "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "dbrx" | "falcon3" => split(LLAMA3),
            "qwen2" | "deepseek-r1-qwen" | "megrez" => split(QWEN2),
            // SmolLM: digits one by one, then GPT-2's byte-level split (as llama.cpp's `smollm`).
            "smollm" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            _ => byte_level(true),
        };
        let tokenizer = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": merges},
        });
        let tok_of = |key: &str| -> Value {
            self.num(key).and_then(|i| tokens.get(i as usize)).map(|t| Value::from(t.clone())).unwrap_or(Value::Null)
        };
        let mut tcfg = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": tok_of("tokenizer.ggml.bos_token_id"),
            "eos_token": tok_of("tokenizer.ggml.eos_token_id"),
            "pad_token": tok_of("tokenizer.ggml.padding_token_id"),
            "unk_token": tok_of("tokenizer.ggml.unknown_token_id"),
            "add_bos_token": matches!(self.meta("tokenizer.ggml.add_bos_token"), Some(GValue::Bool(true))),
            "clean_up_tokenization_spaces": false,
            "model_max_length": self.num(&format!("{}.context_length", self.arch_name()?)).unwrap_or(2048.0) as u64,
        });
        if let Some(t) = self.meta("tokenizer.chat_template").and_then(|v| v.to_string().ok()) {
            tcfg["chat_template"] = Value::from(t.clone());
        }
        let mut gen_cfg = Map::new();
        for (k, src) in
            [("bos_token_id", "tokenizer.ggml.bos_token_id"), ("eos_token_id", "tokenizer.ggml.eos_token_id")]
        {
            if let Some(v) = self.num(src) {
                gen_cfg.insert(k.into(), json!(v as u64));
            }
        }
        if let Some(v) = self.num("tokenizer.ggml.padding_token_id") {
            gen_cfg.insert("pad_token_id".into(), json!(v as u64));
        }
        Ok((tokenizer, tcfg, Value::Object(gen_cfg)))
    }
}

/// Undoes llama.cpp's q/k row permutation (its interleaved-rope layout) back to HF's
/// rotate-half order: rows `(heads, head_dim/2, 2)` → `(heads, 2, head_dim/2)`.
fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / heads;
    Ok(w.reshape((heads, hd / 2, 2, inp))?.transpose(1, 2)?.reshape((out, inp))?)
}

/// HF name → GGUF name.
fn gguf_name(hf: &str) -> Option<String> {
    let map = |s: &str| -> Option<&'static str> {
        Some(match s {
            "self_attn.q_proj" => "attn_q",
            "self_attn.k_proj" => "attn_k",
            "self_attn.v_proj" => "attn_v",
            "self_attn.o_proj" => "attn_output",
            "mlp.gate_proj" => "ffn_gate",
            "mlp.up_proj" => "ffn_up",
            "mlp.down_proj" => "ffn_down",
            "input_layernorm" => "attn_norm",
            "post_attention_layernorm" => "ffn_norm",
            _ => return None,
        })
    };
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    Some(format!("blk.{layer}.{}.{kind}", map(module)?))
}

/// Loads a GGUF file as a model (weights dequantised to f32, then cast to `dtype`).
pub fn load_model(path: &Path, device: &Device, dtype: DType) -> Result<Model> {
    let g = GgufFile::open(path)?;
    let cfg = g.config()?;
    let permuted = cfg.arch == Arch::Llama;
    let (heads, kv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let get = |name: &str| -> Result<Tensor> {
        let gname = gguf_name(name).ok_or_else(|| gerr(path, format!("no GGUF name for {name}")))?;
        if !g.content.tensor_infos.contains_key(&gname) {
            return Err(gerr(path, format!("tensor `{gname}` ({name}) is missing")));
        }
        let t = g.tensor(&gname)?;
        let t = if permuted && name.ends_with("q_proj.weight") {
            unpermute(&t, heads)?
        } else if permuted && name.ends_with("k_proj.weight") {
            unpermute(&t, kv)?
        } else {
            t
        };
        Ok(t.to_dtype(dtype)?)
    };
    Model::from_tensors(cfg, get, device, dtype)
}

/// Writes the tokenizer files rebuilt from a GGUF file into `dir`.
pub fn write_tokenizer_files(path: &Path, dir: &Path) -> Result<()> {
    let g = GgufFile::open(path)?;
    let (tok, tcfg, gen_cfg) = g.tokenizer_files()?;
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    for (name, v) in [("tokenizer.json", tok), ("tokenizer_config.json", tcfg), ("generation_config.json", gen_cfg)] {
        let p = dir.join(name);
        let text = serde_json::to_string_pretty(&v).map_err(|e| gerr(path, e.to_string()))?;
        crate::store::write_atomic(&p, text.as_bytes()).map_err(|e| gerr(&p, e.to_string()))?;
        super::weights::readable(&p)?;
    }
    Ok(())
}

/// The chat tokenizer a GGUF file describes.
pub fn chat_tokenizer(path: &Path) -> std::result::Result<ChatTokenizer, crate::model::chat::TokenizeError> {
    let dir = tempfile::tempdir()
        .map_err(|e| crate::model::chat::TokenizeError::Io { path: path.to_path_buf(), source: e })?;
    write_tokenizer_files(path, dir.path()).map_err(|e| crate::model::chat::TokenizeError::Tokenizer(e.to_string()))?;
    ChatTokenizer::from_dir(dir.path())
}

/// Settings of `distill convert`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConvertConfig {
    /// A llama- or qwen2-architecture `.gguf` file.
    pub gguf: PathBuf,
    /// Output model directory.
    pub out: PathBuf,
    /// Weights dtype written: float32, bfloat16 or float16.
    pub dtype: String,
}

impl Default for ConvertConfig {
    fn default() -> Self {
        ConvertConfig { gguf: PathBuf::new(), out: PathBuf::new(), dtype: "float32".into() }
    }
}

impl crate::config::Settings for ConvertConfig {
    const TABLE: &'static str = "convert";

    fn validate(&self) -> std::result::Result<(), String> {
        if self.gguf.as_os_str().is_empty() || self.out.as_os_str().is_empty() {
            return Err("convert needs `gguf` (the .gguf file) and `out` (the model directory)".into());
        }
        Ok(())
    }
}

/// `distill convert MODEL.gguf --out DIR`: a complete HF model directory.
pub fn convert(path: &Path, out: &Path, dtype: DType) -> Result<ConvertReport> {
    let model = load_model(path, &Device::Cpu, DType::F32)?;
    write_tokenizer_files(path, out)?;
    model.save(out, dtype)?;
    Ok(ConvertReport {
        arch: model.cfg.arch.model_type().to_string(),
        layers: model.cfg.num_hidden_layers,
        params: model.num_params(),
        vocab: model.cfg.vocab_size,
    })
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ConvertReport {
    pub arch: String,
    pub layers: usize,
    pub params: usize,
    pub vocab: usize,
}
