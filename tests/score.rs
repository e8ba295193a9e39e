//! `distill score` end to end: a small random Qwen2 with the fixture Qwen tokenizer and
//! Qwen2.5 template; the loss is checked against a direct log-softmax over the model's logits
//! on exactly the assistant tokens (each turn's content and its <|im_end|>).

mod common;
use common::fixtures;

use std::process::Command;

use candle_core::{D, DType, Device, IndexOp, Tensor};
use distill::model::chat::ChatTokenizer;
use distill::model::{Model, SeqLayout};
use serde_json::{Value, json};

fn conversations() -> Vec<Value> {
    let e: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("chat/expected.json")).unwrap()).unwrap();
    e["conversations"].as_array().unwrap().clone()
}

/// Σ -log p(token) over assistant tokens, from full logits (independent of the chunked loss).
fn direct_loss(model: &Model, tok: &ChatTokenizer, messages: &[Value]) -> (f64, u64) {
    let enc = tok.encode_chat(messages, None).unwrap();
    let n = enc.ids.len();
    let logits = model
        .forward(&Tensor::from_slice(&enc.ids, (1, n), &Device::Cpu).unwrap(), &SeqLayout::padded(&[n], n).unwrap())
        .unwrap()
        .i(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let max = logits.max_keepdim(D::Minus1).unwrap();
    let lse = logits
        .broadcast_sub(&max)
        .unwrap()
        .exp()
        .unwrap()
        .sum_keepdim(D::Minus1)
        .unwrap()
        .log()
        .unwrap()
        .add(&max)
        .unwrap();
    let lp = logits.broadcast_sub(&lse).unwrap().to_vec2::<f64>().unwrap();
    let (mut sum, mut count) = (0.0, 0);
    for t in 1..n {
        if enc.assistant_mask[t] == 1 {
            sum -= lp[t - 1][enc.ids[t] as usize];
            count += 1;
        }
    }
    (sum, count)
}

#[test]
fn score_reports_token_weighted_assistant_loss() {
    let dir = common::chat_model_dir();
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("sft.jsonl");
    let convs = conversations();
    let mut lines = String::new();
    for (i, c) in convs.iter().enumerate() {
        lines.push_str(
            &json!({"id": format!("ex{i}"), "messages": c, "task": "math", "prompt_id": format!("p{i}")}).to_string(),
        );
        lines.push('\n');
    }
    std::fs::write(&file, &lines).unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["score", "--model", dir.path().to_str().unwrap(), file.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();

    let model = Model::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let tok = ChatTokenizer::from_dir(dir.path()).unwrap();
    let (mut sum, mut count) = (0.0, 0);
    for c in &convs {
        let (s, n) = direct_loss(&model, &tok, c.as_array().unwrap());
        sum += s;
        count += n;
    }
    let want = sum / count as f64;
    assert_eq!(v["tokens"].as_u64().unwrap(), count);
    let loss = v["loss"].as_f64().unwrap();
    assert!((loss - want).abs() < 1e-5, "score loss {loss} vs direct {want}");
    assert!((v["perplexity"].as_f64().unwrap() - want.exp()).abs() < 1e-3 * want.exp());
    assert_eq!(v["examples"], 2);
    assert_eq!(v["rejected"], 0);

    // A record without messages is reported with its location and skipped; exit code 1.
    std::fs::write(&file, format!("{lines}{{\"id\": \"bad\", \"prompt\": \"x\"}}\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["score", "--model", dir.path().to_str().unwrap(), file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sft.jsonl:3") && err.contains("bad") && err.contains("messages"), "{err}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("perplexity") && text.contains(&format!("{count} assistant tokens")), "{text}");
}

#[test]
fn score_refuses_a_missing_model_clearly() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("sft.jsonl");
    std::fs::write(&file, "{\"id\": \"a\", \"messages\": []}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["score", "--model", data.path().to_str().unwrap(), file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config.json"), "{err}");
}
