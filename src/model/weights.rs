//! Checkpoint I/O in the Hugging Face layout: `model.safetensors` or a sharded
//! `model.safetensors.index.json` in, the same (plus `config.json`, tokenizer files and
//! `generation_config.json`) out; LoRA adapters in PEFT's layout.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde_json::{Value, json};

use super::{Config, Model, ModelError, Result};

/// Files copied verbatim from the source directory when a model is saved.
pub const TOKENIZER_FILES: [&str; 7] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
];

fn ckpt_err(path: &Path, msg: impl Into<String>) -> ModelError {
    ModelError::Checkpoint { path: path.to_path_buf(), msg: msg.into() }
}

/// The safetensors files of a model directory.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| ckpt_err(&index, format!("not valid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| ckpt_err(&index, "has no `weight_map` object"))?;
        let files: BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
        let mut out = Vec::new();
        for f in files {
            let p = dir.join(f);
            if !p.is_file() {
                return Err(ckpt_err(&index, format!("lists shard {f}, which is missing")));
            }
            out.push(p);
        }
        return Ok(out);
    }
    Err(ckpt_err(
        dir,
        "no model.safetensors or model.safetensors.index.json (a .bin checkpoint? convert it to safetensors)",
    ))
}

/// Loads a model directory straight into trainable `Var`s of `dtype` (upcast on load).
pub fn load_dir(dir: &Path, device: &Device, dtype: DType) -> Result<Model> {
    let cfg = Config::from_dir(dir)?;
    let files = weight_files(dir)?;
    // SAFETY: the files are memory-mapped read-only; like every safetensors reader, this
    // assumes nobody truncates them while the model loads.
    let st = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| ckpt_err(dir, e.to_string()))?;
    let get = |name: &str| -> Result<Tensor> {
        let t = st.load(name, &Device::Cpu).map_err(|_| {
            ckpt_err(dir, format!("tensor `{name}` is missing (is this a {} checkpoint?)", cfg.arch.model_type()))
        })?;
        Ok(t.to_dtype(dtype)?)
    };
    let mut model = Model::from_tensors(cfg.clone(), get, device, dtype)?;
    model.source_dir = Some(dir.to_path_buf());
    Ok(model)
}

/// The dtype name transformers writes in `config.json`.
pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F64 => "float64",
        _ => "float32",
    }
}

/// Parses `float32`/`bfloat16`/`float16` (also `f32`, `bf16`, `f16`).
pub fn parse_dtype(s: &str) -> Option<DType> {
    match s {
        "float32" | "f32" => Some(DType::F32),
        "bfloat16" | "bf16" => Some(DType::BF16),
        "float16" | "f16" => Some(DType::F16),
        _ => None,
    }
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(v).map_err(|e| ModelError::Input(e.to_string()))?;
    text.push('\n');
    crate::store::write_atomic(path, text.as_bytes()).map_err(|e| ckpt_err(path, e.to_string()))?;
    readable(path)
}

/// Model files are read by other programs and users (vLLM, llama.cpp): make them 0644.
pub(crate) fn readable(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).map_err(|e| ModelError::io(path, e))?;
    }
    Ok(())
}

/// Writes tensors as safetensors (with transformers' `format: pt` metadata), atomically.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let data: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.as_str(), t.contiguous()?)))
        .collect::<std::result::Result<_, candle_core::Error>>()?;
    safetensors::serialize_to_file(data, Some(meta), &tmp).map_err(|e| ckpt_err(&tmp, e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
}

/// Largest shard written by `save` (transformers' default is 5 GB).
pub const MAX_SHARD_BYTES: usize = 5_000_000_000;

impl Model {
    /// Saves the model (base weights; with LoRA adapters merged if any) as a complete HF model
    /// directory in `dtype`: weights, `config.json`, `generation_config.json`, tokenizer files.
    pub fn save(&self, dir: &Path, dtype: DType) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let mut tensors = Vec::new();
        let deltas = self.lora_deltas()?;
        for (name, t) in self.base_weights() {
            let t = match deltas.get(&name) {
                Some(d) => t.add(&d.to_dtype(t.dtype())?)?,
                None => t,
            };
            tensors.push((name, t.detach().to_dtype(dtype)?.to_device(&Device::Cpu)?));
        }
        write_sharded(dir, &tensors, MAX_SHARD_BYTES)?;
        write_json(&dir.join("config.json"), &self.cfg.to_json(dtype_name(dtype)))?;
        self.write_side_files(dir)
    }

    fn lora_deltas(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for l in &self.layers {
            for lin in l.linears() {
                if let Some(ad) = &lin.lora {
                    out.insert(lin.weight.name.clone(), ad.delta()?.detach());
                }
            }
        }
        Ok(out)
    }

    /// Copies tokenizer files from the source directory and writes `generation_config.json`.
    fn write_side_files(&self, dir: &Path) -> Result<()> {
        let mut have_gen = false;
        if let Some(src) = &self.source_dir
            && src.is_dir()
            && src != dir
        {
            for f in TOKENIZER_FILES.iter().chain(std::iter::once(&"generation_config.json")) {
                let p = src.join(f);
                if p.is_file() {
                    let bytes = std::fs::read(&p).map_err(|e| ModelError::io(&p, e))?;
                    crate::store::write_atomic(&dir.join(f), &bytes)
                        .map_err(|e| ckpt_err(&dir.join(f), e.to_string()))?;
                    have_gen |= *f == "generation_config.json";
                }
            }
        }
        if !have_gen && !dir.join("generation_config.json").is_file() {
            let mut g = serde_json::Map::new();
            if let Some(b) = self.cfg.bos_token_id {
                g.insert("bos_token_id".into(), b.into());
            }
            match self.cfg.eos_token_ids.as_slice() {
                [] => {}
                [one] => {
                    g.insert("eos_token_id".into(), (*one).into());
                }
                many => {
                    g.insert("eos_token_id".into(), json!(many));
                }
            }
            write_json(&dir.join("generation_config.json"), &Value::Object(g))?;
        }
        Ok(())
    }

    /// Saves only the LoRA adapters in PEFT's layout (`adapter_model.safetensors` +
    /// `adapter_config.json`), loadable with `PeftModel.from_pretrained(base, dir)`.
    pub fn save_adapter(&self, dir: &Path, base_model: &str) -> Result<()> {
        let Some(cfg) = self.lora_config() else {
            return Err(ModelError::Input("the model has no LoRA adapters to save".into()));
        };
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let mut tensors = Vec::new();
        for l in &self.layers {
            for lin in l.linears() {
                if let Some(ad) = &lin.lora {
                    let base = lin.weight.name.trim_end_matches(".weight");
                    tensors.push((
                        format!("base_model.model.{base}.lora_A.weight"),
                        ad.a.detach().to_device(&Device::Cpu)?,
                    ));
                    tensors.push((
                        format!("base_model.model.{base}.lora_B.weight"),
                        ad.b.detach().to_device(&Device::Cpu)?,
                    ));
                }
            }
        }
        write_safetensors(&dir.join("adapter_model.safetensors"), &tensors)?;
        let conf = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": cfg.rank,
            "lora_alpha": cfg.alpha,
            "lora_dropout": cfg.dropout,
            "target_modules": cfg.targets,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
            "use_rslora": false,
            "use_dora": false,
        });
        write_json(&dir.join("adapter_config.json"), &conf)
    }

    /// Loads PEFT adapters saved by `save_adapter` (or PEFT) into this model (base frozen).
    pub fn load_adapter(&mut self, dir: &Path) -> Result<()> {
        let conf_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&conf_path).map_err(|e| ModelError::io(&conf_path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| ckpt_err(&conf_path, format!("not valid JSON: {e}")))?;
        let rank = v.get("r").and_then(Value::as_u64).ok_or_else(|| ckpt_err(&conf_path, "missing `r`"))? as usize;
        let alpha = v.get("lora_alpha").and_then(Value::as_f64).unwrap_or(rank as f64);
        let targets: Vec<String> = match v.get("target_modules") {
            Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
            _ => return Err(ckpt_err(&conf_path, "`target_modules` must be a list of projection names")),
        };
        let cfg = super::LoraConfig {
            rank,
            alpha,
            dropout: v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0) as f32,
            targets,
            seed: 0,
        };
        self.add_lora(&cfg)?;
        let file = dir.join("adapter_model.safetensors");
        let st = candle_core::safetensors::load(&file, &Device::Cpu).map_err(|e| ckpt_err(&file, e.to_string()))?;
        for (name, var) in self.trainable_vars() {
            let key = format!("base_model.model.{name}");
            let t = st.get(&key).ok_or_else(|| ckpt_err(&file, format!("adapter tensor `{key}` is missing")))?;
            if t.dims() != var.dims() {
                return Err(ckpt_err(&file, format!("`{key}` has shape {:?}, expected {:?}", t.dims(), var.dims())));
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
    }
}

/// Writes `model.safetensors`, or shards plus `model.safetensors.index.json` when the
/// weights exceed `max_shard` bytes.
pub fn write_sharded(dir: &Path, tensors: &[(String, Tensor)], max_shard: usize) -> Result<()> {
    let size = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
    let total: usize = tensors.iter().map(|(_, t)| size(t)).sum();
    if total <= max_shard {
        return write_safetensors(&dir.join("model.safetensors"), tensors);
    }
    let mut shards: Vec<Vec<(String, Tensor)>> = vec![vec![]];
    let mut cur = 0;
    for (n, t) in tensors {
        if cur > 0 && cur + size(t) > max_shard {
            shards.push(vec![]);
            cur = 0;
        }
        cur += size(t);
        if let Some(last) = shards.last_mut() {
            last.push((n.clone(), t.clone()));
        }
    }
    let count = shards.len();
    let mut map = BTreeMap::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
        write_safetensors(&dir.join(&file), shard)?;
        for (n, _) in shard {
            map.insert(n.clone(), Value::from(file.clone()));
        }
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": map});
    write_json(&dir.join("model.safetensors.index.json"), &index)
}
