//! The decoder's configuration, read from a Hugging Face `config.json` as transformers 4 and 5
//! write it (`rope_theta` + `rope_scaling` or `rope_parameters`, `dtype` or `torch_dtype`,
//! missing optional keys taking transformers' defaults).

use serde_json::{Map, Value};

use super::ModelError;

/// Which family of checkpoint the configuration describes (they differ in biases and defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Qwen2 / Qwen2.5: q/k/v projections carry a bias.
    Qwen2,
    /// Llama 2/3/3.1/3.2 and SmolLM-style Llama: biases only when `attention_bias`/`mlp_bias`.
    Llama,
}

impl Arch {
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Qwen2 => "qwen2",
            Arch::Llama => "llama",
        }
    }
}

/// How rotary frequencies are scaled.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    Default,
    Linear { factor: f64 },
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Bias on gate/up/down projections.
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    /// `eos_token_id` as an int or a list.
    pub eos_token_ids: Vec<u32>,
    /// `dtype` (transformers 5) or `torch_dtype` (transformers 4), when given.
    pub dtype: Option<String>,
    /// The whole `config.json` as read (written back on save, with `dtype` updated).
    pub raw: Map<String, Value>,
}

fn get_usize(m: &Map<String, Value>, key: &str, default: Option<usize>) -> Result<usize, ModelError> {
    match m.get(key) {
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| ModelError::Config(format!("`{key}` must be a non-negative integer, got {n}"))),
        Some(Value::Null) | None => {
            default.ok_or_else(|| ModelError::Config(format!("`{key}` is missing and has no default")))
        }
        Some(other) => Err(ModelError::Config(format!("`{key}` must be an integer, got {other}"))),
    }
}

fn get_f64(m: &Map<String, Value>, key: &str) -> Result<Option<f64>, ModelError> {
    match m.get(key) {
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(Value::Null) | None => Ok(None),
        Some(other) => Err(ModelError::Config(format!("`{key}` must be a number, got {other}"))),
    }
}

fn get_bool(m: &Map<String, Value>, key: &str, default: bool) -> Result<bool, ModelError> {
    match m.get(key) {
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::Null) | None => Ok(default),
        Some(other) => Err(ModelError::Config(format!("`{key}` must be true or false, got {other}"))),
    }
}

fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect(),
        _ => vec![],
    }
}

fn parse_rope(m: &Map<String, Value>) -> Result<(f64, RopeScaling), ModelError> {
    // transformers 5: rope_parameters {rope_type, rope_theta, factor, ...};
    // transformers 4: rope_theta at top level, rope_scaling {rope_type|type, factor, ...} or null.
    let params = match (m.get("rope_parameters"), m.get("rope_scaling")) {
        (Some(Value::Object(p)), _) => Some(p),
        (_, Some(Value::Object(p))) => Some(p),
        _ => None,
    };
    let theta = params
        .and_then(|p| p.get("rope_theta"))
        .and_then(Value::as_f64)
        .or(get_f64(m, "rope_theta")?)
        .unwrap_or(10000.0);
    let Some(p) = params else {
        return Ok((theta, RopeScaling::Default));
    };
    let kind = p.get("rope_type").or_else(|| p.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |key: &str| -> Result<f64, ModelError> {
        p.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| ModelError::Config(format!("rope scaling `{kind}` needs a numeric `{key}`")))
    };
    let scaling = match kind {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear { factor: num("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        },
        other => {
            return Err(ModelError::Config(format!(
                "rope scaling type `{other}` is not supported (supported: default, linear, llama3)"
            )));
        }
    };
    Ok((theta, scaling))
}

impl Config {
    /// Parses a `config.json` value.
    pub fn from_json(v: &Value) -> Result<Self, ModelError> {
        let m = v.as_object().ok_or_else(|| ModelError::Config("config.json is not a JSON object".into()))?;
        let model_type = m.get("model_type").and_then(Value::as_str).unwrap_or("");
        let arch = match model_type {
            "qwen2" => Arch::Qwen2,
            "llama" => Arch::Llama,
            other => {
                return Err(ModelError::Config(format!(
                    "model_type `{other}` is not supported (supported: qwen2, llama)"
                )));
            }
        };
        if let Some(act) = m.get("hidden_act").and_then(Value::as_str)
            && act != "silu"
        {
            return Err(ModelError::Config(format!("hidden_act `{act}` is not supported (only silu)")));
        }
        if get_bool(m, "use_sliding_window", false)? {
            return Err(ModelError::Config(
                "use_sliding_window: true is not supported; set it to false (Qwen2.5 checkpoints ship it false)".into(),
            ));
        }
        let (d_vocab, d_hidden, d_inter, d_maxpos) = match arch {
            Arch::Qwen2 => (151936, 4096, 22016, 32768),
            Arch::Llama => (32000, 4096, 11008, 2048),
        };
        let hidden_size = get_usize(m, "hidden_size", Some(d_hidden))?;
        let num_attention_heads = get_usize(m, "num_attention_heads", Some(32))?;
        let num_key_value_heads = get_usize(m, "num_key_value_heads", Some(num_attention_heads))?;
        if num_attention_heads == 0 || num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(ModelError::Config(format!(
                "num_attention_heads ({num_attention_heads}) must be a positive multiple of num_key_value_heads ({num_key_value_heads})"
            )));
        }
        let head_dim = get_usize(m, "head_dim", Some(hidden_size / num_attention_heads))?;
        let (rope_theta, rope_scaling) = parse_rope(m)?;
        let attention_bias = get_bool(m, "attention_bias", false)?;
        let (qkv_bias, o_bias) = match arch {
            Arch::Qwen2 => (true, false),
            Arch::Llama => (attention_bias, attention_bias),
        };
        let dtype = m.get("dtype").or_else(|| m.get("torch_dtype")).and_then(Value::as_str).map(str::to_string);
        Ok(Config {
            arch,
            vocab_size: get_usize(m, "vocab_size", Some(d_vocab))?,
            hidden_size,
            intermediate_size: get_usize(m, "intermediate_size", Some(d_inter))?,
            num_hidden_layers: get_usize(m, "num_hidden_layers", Some(32))?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: get_usize(m, "max_position_embeddings", Some(d_maxpos))?,
            rms_norm_eps: get_f64(m, "rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: get_bool(m, "tie_word_embeddings", false)?,
            qkv_bias,
            o_bias,
            mlp_bias: arch == Arch::Llama && get_bool(m, "mlp_bias", false)?,
            bos_token_id: token_ids(m.get("bos_token_id")).first().copied(),
            eos_token_ids: token_ids(m.get("eos_token_id")),
            dtype,
            raw: m.clone(),
        })
    }

    /// Reads `DIR/config.json`.
    pub fn from_dir(dir: &std::path::Path) -> Result<Self, ModelError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Config(format!("{}: not valid JSON: {e}", path.display())))?;
        Self::from_json(&v).map_err(|e| match e {
            ModelError::Config(msg) => ModelError::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// The configuration as `config.json`, with `dtype` set to what the weights are saved in.
    pub fn to_json(&self, dtype: &str) -> Value {
        let mut m = self.raw.clone();
        if m.is_empty() {
            m = self.synthesize();
        }
        m.remove("torch_dtype");
        m.insert("dtype".into(), Value::from(dtype));
        Value::Object(m)
    }

    /// A transformers-5 style `config.json` for a config that did not come from one (GGUF).
    fn synthesize(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let arch_name = match self.arch {
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Llama => "LlamaForCausalLM",
        };
        m.insert("architectures".into(), serde_json::json!([arch_name]));
        m.insert("model_type".into(), self.arch.model_type().into());
        m.insert("vocab_size".into(), self.vocab_size.into());
        m.insert("hidden_size".into(), self.hidden_size.into());
        m.insert("intermediate_size".into(), self.intermediate_size.into());
        m.insert("num_hidden_layers".into(), self.num_hidden_layers.into());
        m.insert("num_attention_heads".into(), self.num_attention_heads.into());
        m.insert("num_key_value_heads".into(), self.num_key_value_heads.into());
        m.insert("head_dim".into(), self.head_dim.into());
        m.insert("max_position_embeddings".into(), self.max_position_embeddings.into());
        m.insert("rms_norm_eps".into(), self.rms_norm_eps.into());
        m.insert("hidden_act".into(), "silu".into());
        m.insert("tie_word_embeddings".into(), self.tie_word_embeddings.into());
        if self.arch == Arch::Llama {
            m.insert("attention_bias".into(), self.qkv_bias.into());
            m.insert("mlp_bias".into(), self.mlp_bias.into());
        }
        // Both spellings, so transformers 4 and 5 read the same rope.
        m.insert("rope_theta".into(), self.rope_theta.into());
        let scaling = match &self.rope_scaling {
            RopeScaling::Default => Value::Null,
            RopeScaling::Linear { factor } => serde_json::json!({"rope_type": "linear", "factor": factor}),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                serde_json::json!({
                    "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor,
                    "original_max_position_embeddings": *original_max_position_embeddings as u64,
                })
            }
        };
        m.insert("rope_scaling".into(), scaling);
        if let Some(b) = self.bos_token_id {
            m.insert("bos_token_id".into(), b.into());
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => {
                m.insert("eos_token_id".into(), (*one).into());
            }
            many => {
                m.insert("eos_token_id".into(), serde_json::json!(many));
            }
        }
        m
    }

    /// Rotary inverse frequencies (length `head_dim / 2`), with the configured scaling.
    pub fn inv_freq(&self) -> Vec<f64> {
        let half = self.head_dim / 2;
        (0..half)
            .map(|i| {
                let f = 1.0 / self.rope_theta.powf((2 * i) as f64 / self.head_dim as f64);
                match &self.rope_scaling {
                    RopeScaling::Default => f,
                    RopeScaling::Linear { factor } => f / factor,
                    RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position_embeddings: old,
                    } => {
                        let low_wavelen = old / low_freq_factor;
                        let high_wavelen = old / high_freq_factor;
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen > low_wavelen {
                            f / factor
                        } else if wavelen < high_wavelen {
                            f
                        } else {
                            let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn variants_parse() {
        // (config.json, expected theta, expected scaling, qkv bias, tie, dtype)
        let cases = vec![
            // transformers 4 Qwen2.5: top-level rope_theta, torch_dtype, sliding_window null
            (
                json!({"model_type": "qwen2", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
                       "rope_theta": 1000000.0, "sliding_window": null, "use_sliding_window": false,
                       "torch_dtype": "bfloat16", "tie_word_embeddings": true, "eos_token_id": 151645}),
                1e6,
                RopeScaling::Default,
                true,
                true,
                Some("bfloat16"),
            ),
            // transformers 5 Qwen2: rope_parameters, dtype
            (
                json!({"model_type": "qwen2", "hidden_size": 64, "num_attention_heads": 4,
                       "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}, "dtype": "float32"}),
                1e4,
                RopeScaling::Default,
                true,
                false,
                Some("float32"),
            ),
            // transformers 4 Llama 3.2: rope_scaling with rope_type llama3
            (
                json!({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 1,
                       "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 32.0,
                       "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                       "eos_token_id": [128001, 128008, 128009]}),
                5e5,
                RopeScaling::Llama3 {
                    factor: 32.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 8192.0,
                },
                false,
                false,
                None,
            ),
            // old Llama 2 style: `type` instead of `rope_type`, missing rope_theta
            (
                json!({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4,
                       "rope_scaling": {"type": "linear", "factor": 2.0}, "attention_bias": true}),
                1e4,
                RopeScaling::Linear { factor: 2.0 },
                true,
                false,
                None,
            ),
        ];
        for (v, theta, scaling, bias, tie, dtype) in cases {
            let c = Config::from_json(&v).unwrap();
            assert_eq!(c.rope_theta, theta, "{v}");
            assert_eq!(c.rope_scaling, scaling, "{v}");
            assert_eq!(c.qkv_bias, bias, "{v}");
            assert_eq!(c.tie_word_embeddings, tie, "{v}");
            assert_eq!(c.dtype.as_deref(), dtype, "{v}");
            assert_eq!(c.head_dim, 16);
        }
        let c = Config::from_json(&json!({"model_type": "llama", "eos_token_id": [1, 2]})).unwrap();
        assert_eq!(c.eos_token_ids, vec![1, 2]);
        assert_eq!(c.num_key_value_heads, 32);
    }

    #[test]
    fn refusals_name_the_key() {
        let cases = vec![
            (json!({"model_type": "gpt2"}), "model_type"),
            (json!({"model_type": "llama", "hidden_act": "gelu"}), "hidden_act"),
            (json!({"model_type": "qwen2", "use_sliding_window": true}), "use_sliding_window"),
            (json!({"model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}), "yarn"),
            (json!({"model_type": "llama", "num_attention_heads": 6, "num_key_value_heads": 4}), "multiple"),
            (json!({"model_type": "llama", "hidden_size": "big"}), "hidden_size"),
        ];
        for (v, needle) in cases {
            let e = Config::from_json(&v).unwrap_err().to_string();
            assert!(e.contains(needle), "{e} should mention {needle}");
        }
    }

    #[test]
    fn llama3_scaling_matches_transformers_rule() {
        let c = Config::from_json(&json!({"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4,
            "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}}))
        .unwrap();
        let f = c.inv_freq();
        let base: Vec<f64> = (0..4).map(|i| 1.0 / 500000f64.powf(2.0 * i as f64 / 8.0)).collect();
        // wavelength 2π (< 16/4=4? no: 6.28 is between 4 and 16) -> smoothed
        let smooth = (16.0 / (2.0 * std::f64::consts::PI / base[0]) - 1.0) / 3.0;
        assert!((f[0] - ((1.0 - smooth) * base[0] / 8.0 + smooth * base[0])).abs() < 1e-12);
        for i in 1..4 {
            assert!((f[i] - base[i] / 8.0).abs() < 1e-15);
        }
    }
}
