//! Writes generated SFT examples with planted duplicates (`distill::dedup::synth`) for dedup's
//! tests and benchmark: `--out FILE.jsonl` (examples), `--truth FILE.json` (planted pairs with
//! their true word-5-gram Jaccard, leaks), optional `--prompts FILE.jsonl` (distinct prompts,
//! `{"id", "text"}`, for other tools).
//!
//! cargo run --release --example dedup_synth -- --examples 200000 --seed 1 --out x.jsonl --truth t.json \
//!     [--bench datasets/benchmarks/gsm8k.jsonl:prompt --leaks 40]

use std::io::Write;

use distill::dedup::synth::{SynthConfig, generate};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned();
    let examples: usize = get("--examples").unwrap_or_else(|| "10000".into()).parse()?;
    let seed: u64 = get("--seed").unwrap_or_else(|| "1".into()).parse()?;
    let leaks: usize = get("--leaks").unwrap_or_else(|| "0".into()).parse()?;
    let out = get("--out").ok_or_else(|| anyhow::anyhow!("--out FILE.jsonl is required"))?;
    let mut benchmarks = Vec::new();
    if let Some(spec) = get("--bench") {
        let (file, field) = spec.rsplit_once(':').ok_or_else(|| anyhow::anyhow!("--bench FILE:FIELD"))?;
        for r in distill::store::open(std::path::Path::new(file))? {
            if let Some(serde_json::Value::String(s)) = r?.value.get(field) {
                benchmarks.push(s.clone());
            }
        }
    }
    let s = generate(&SynthConfig { examples, seed, benchmarks, leaks });
    let mut w = std::io::BufWriter::new(std::fs::File::create(&out)?);
    for l in &s.lines {
        w.write_all(l.as_bytes())?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    if let Some(p) = get("--prompts") {
        let mut w = std::io::BufWriter::new(std::fs::File::create(p)?);
        for (id, text) in &s.prompts {
            writeln!(w, "{}", serde_json::json!({"id": id, "text": text}))?;
        }
        w.flush()?;
    }
    if let Some(t) = get("--truth") {
        let pairs: Vec<_> = s
            .pairs
            .iter()
            .map(|p| serde_json::json!({"a": p.a, "b": p.b, "jaccard": p.jaccard, "kind": p.kind}))
            .collect();
        let leaks: Vec<_> = s
            .leaks
            .iter()
            .map(|l| serde_json::json!({"prompt_id": l.prompt_id, "kind": l.kind, "item": l.item}))
            .collect();
        std::fs::write(
            t,
            serde_json::to_vec(
                &serde_json::json!({"pairs": pairs, "leaks": leaks, "exact_copies": s.exact_copies, "examples": s.lines.len(), "prompts": s.prompts.len()}),
            )?,
        )?;
    }
    eprintln!(
        "dedup_synth: {} examples, {} prompts, {} planted pairs, {} leaks -> {out}",
        s.lines.len(),
        s.prompts.len(),
        s.pairs.len(),
        s.leaks.len()
    );
    Ok(())
}
