//! Generation throughput of the project's decoder (KV cache, greedy, no stop tokens) on a model
//! directory or `.gguf`: `cargo run --release --example generate_bench -- MODEL BATCH PROMPT_TOKENS NEW_TOKENS`.
//! Prints one JSON line: batch, tokens generated, seconds (prefill included) and tokens/s.
//! Used by benches/generate_bench.sh beside transformers' `generate` on the same model.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device};
use distill::model::Model;
use distill::model::generate::{self, GenParams, GenRequest};

fn main() -> anyhow::Result<()> {
    distill::model::pin_thread_count();
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        anyhow::bail!("usage: generate_bench MODEL BATCH PROMPT_TOKENS NEW_TOKENS");
    }
    let path = PathBuf::from(&args[1]);
    let batch: usize = args[2].parse()?;
    let prompt_tokens: usize = args[3].parse()?;
    let new_tokens: usize = args[4].parse()?;
    distill::model::keep_freed_memory();
    let mut model = Model::load(&path, &Device::Cpu, DType::F32)?;
    model.freeze_base();
    let vocab = model.cfg.vocab_size as u32;
    // Deterministic prompts, the same ids the Python side uses: (row*7919 + i*104729) % (vocab-100) + 100.
    let reqs: Vec<GenRequest> = (0..batch)
        .map(|r| GenRequest {
            ids: (0..prompt_tokens).map(|i| ((r * 7919 + i * 104_729) as u32) % (vocab - 100) + 100).collect(),
            seeds: vec![0],
        })
        .collect();
    let params = GenParams {
        max_new_tokens: new_tokens,
        temperature: 0.0,
        top_p: 1.0,
        top_k: 0,
        stop_ids: vec![],
        stop_strings: vec![],
    };
    let t0 = Instant::now();
    let out = generate::generate(&model, &reqs, &params, None, &mut |_| {})?;
    let secs = t0.elapsed().as_secs_f64();
    let tokens: usize = out.iter().flatten().map(|g| g.tokens.len()).sum();
    println!(
        "{{\"impl\": \"distill\", \"batch\": {batch}, \"tokens\": {tokens}, \"seconds\": {secs:.3}, \"tokens_per_s\": {:.1}}}",
        tokens as f64 / secs
    );
    Ok(())
}
