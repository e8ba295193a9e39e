//! Generates synthetic teacher samples (record::Sample, R1-style traces) for the demo dataset,
//! tests and the `inspect` benchmark. Deterministic by seed.
//!
//! cargo run --release --example make_samples -- --count 100000 --reasoning-chars 4000 --out FILE
//! (FILE: .jsonl, .jsonl.zst or .parquet)

use std::path::PathBuf;

use distill::record::{Message, Params, Sample, Task, Teacher, Usage, Verdict};
use distill::rng::SplitMix as Rng;
use distill::store;

const STEPS: [&str; 8] = [
    "Let me start by writing down what is given.",
    "Adding the two numbers digit by digit, carrying where needed.",
    "Wait, let me double-check that carry.",
    "Hmm, that seems right, but I should verify it another way.",
    "Alternatively, I can round one number and correct afterwards.",
    "So the partial sum so far is consistent.",
    "Let me re-read the question to make sure I answer what is asked.",
    "Yes, the computation checks out.",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut count = 200u64;
    let mut samples_per_prompt = 2u64;
    let mut reasoning_chars = 1000usize;
    let mut seed = 0u64;
    let mut out: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--count" => count = val()?.parse()?,
            "--samples-per-prompt" => samples_per_prompt = val()?.parse()?,
            "--reasoning-chars" => reasoning_chars = val()?.parse()?,
            "--seed" => seed = val()?.parse()?,
            "--out" => out = Some(PathBuf::from(val()?)),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let out = out.ok_or("--out FILE is required")?;
    let mut rng = Rng(seed);
    let mut w = store::create(&out)?;
    let spp = samples_per_prompt.max(1);
    for i in 0..count {
        let p = i / spp;
        let k = (i % spp) as u32;
        let (a, b) = (100 + (p * 7919) % 900, 100 + (p * 104_729) % 900);
        let prompt =
            format!("What is {a} + {b}? Please reason step by step, and put your final answer within \\boxed{{}}.");
        let mut reasoning = format!("I need to add {a} and {b}.");
        let target = reasoning_chars / 2 + rng.below(reasoning_chars as u64) as usize;
        while reasoning.len() < target {
            reasoning.push(' ');
            reasoning.push_str(STEPS[rng.below(STEPS.len() as u64) as usize]);
        }
        let truncated = rng.below(20) == 0;
        let wrong = rng.below(5) == 0;
        let answer = if wrong { a + b + 1 } else { a + b };
        let content = if truncated {
            String::new()
        } else {
            format!("Adding {a} and {b} gives {answer}.\n\nThe answer is $\\boxed{{{answer}}}$.")
        };
        let pass = !truncated && !wrong;
        let sample = Sample {
            id: Sample::make_id(&format!("add-{p:06}"), k),
            prompt_id: format!("add-{p:06}"),
            sample: k,
            task: Task::Math,
            prompt: prompt.clone(),
            answer: Some((a + b).to_string()),
            tests: None,
            source: Some(if p.is_multiple_of(3) { "gen-hard".into() } else { "gen-add".into() }),
            meta: None,
            messages: vec![Message::new("user", prompt)],
            reasoning,
            content,
            finish_reason: Some(if truncated { "length".into() } else { "stop".into() }),
            usage: Some(Usage { prompt_tokens: 30, completion_tokens: (reasoning_chars / 4) as u64 }),
            teacher: Some(Teacher { model: "synthetic-r1".into(), endpoint: "http://127.0.0.1:0/v1".into() }),
            params: Some(Params { temperature: 0.6, top_p: 0.95, max_tokens: Some(4096), seed: Some(seed) }),
            latency_ms: Some(100 + rng.below(900)),
            request_sha256: Some(format!("{:016x}", rng.next_u64())),
            verdict: Some(Verdict {
                pass: Some(pass),
                extracted: (!truncated).then(|| answer.to_string()),
                reason: Some(
                    if truncated {
                        "no_answer"
                    } else if wrong {
                        "wrong_answer"
                    } else {
                        "match"
                    }
                    .into(),
                ),
                ..Verdict::default()
            }),
            extra: Default::default(),
        };
        w.write_value(&serde_json::to_value(&sample)?)?;
    }
    w.finish()?;
    Ok(())
}
