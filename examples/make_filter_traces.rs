//! Generates teacher-sim-like Sample records (the simulator's own trace generator, no HTTP) for
//! the filter benchmark: math problems, `--per-prompt` samples each, `--words` words of
//! R1-style reasoning, content faults as in `teacher-sim --faults`. Deterministic by seed;
//! samples are written in parallel chunks, in order.
//!
//! cargo run --release --example make_filter_traces -- --count 100000 --words 3000 --out FILE.jsonl
//!     [--per-prompt 4] [--seed 0] [--faults wrong=0.2,langmix=0.05,repeat=0.02,truncate=0.02]

use std::io::Write;
use std::path::PathBuf;

use distill::problems::{self, ProblemKind};
use distill::record::{Message, Params, Sample, Teacher, Usage, split_thinking};
use distill::teacher_sim::{Faults, Shape, trace};
use rayon::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut count, mut words, mut per_prompt, mut seed) = (1000u64, 3000usize, 4u64, 0u64);
    let mut faults = String::from("wrong=0.2,langmix=0.05,repeat=0.02,truncate=0.02");
    let mut out: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--count" => count = val()?.parse()?,
            "--words" => words = val()?.parse()?,
            "--per-prompt" => per_prompt = val()?.parse()?,
            "--seed" => seed = val()?.parse()?,
            "--faults" => faults = val()?,
            "--out" => out = Some(PathBuf::from(val()?)),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let out = out.ok_or("--out FILE.jsonl is required")?;
    let cf = Faults::parse(&faults)?.content();
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&out)?);
    let chunk = 4096u64;
    let mut start = 0;
    while start < count {
        let end = (start + chunk).min(count);
        let lines: Vec<Vec<u8>> = (start..end)
            .into_par_iter()
            .map(|i| {
                let pi = i / per_prompt.max(1);
                let k = (i % per_prompt.max(1)) as u32;
                let p = problems::problem(ProblemKind::Math, seed, pi);
                let question = format!(
                    "{}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
                    p.prompt
                );
                let mut rng = fastrand::Rng::with_seed(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let g = trace::generate_words(&question, &mut rng, &cf, Some(words));
                let r = trace::render(&g, Shape::Inline, None);
                let (reasoning, content) = if r.content.contains("</think>") {
                    let (a, b) = split_thinking(&r.content);
                    (a.to_string(), b.to_string())
                } else {
                    (r.content.trim_start().trim_start_matches("<think>").trim().to_string(), String::new())
                };
                let s = Sample {
                    id: Sample::make_id(&p.id, k),
                    prompt_id: p.id.clone(),
                    sample: k,
                    task: p.task,
                    prompt: p.prompt.clone(),
                    answer: p.answer.clone(),
                    tests: None,
                    source: p.source.clone(),
                    meta: p.meta.clone(),
                    messages: vec![Message::new("user", question)],
                    reasoning,
                    content,
                    finish_reason: Some(r.finish_reason.to_string()),
                    usage: Some(Usage { prompt_tokens: 60, completion_tokens: r.completion_tokens }),
                    teacher: Some(Teacher { model: "teacher-sim".into(), endpoint: "in-process".into() }),
                    params: Some(Params { temperature: 0.6, top_p: 0.95, max_tokens: None, seed: Some(seed) }),
                    latency_ms: Some(0),
                    request_sha256: Some(String::new()),
                    verdict: None,
                    extra: Default::default(),
                };
                let mut line = serde_json::to_vec(&s).unwrap_or_default();
                line.push(b'\n');
                line
            })
            .collect();
        for l in lines {
            w.write_all(&l)?;
        }
        start = end;
    }
    w.flush()?;
    eprintln!("wrote {count} samples to {}", out.display());
    Ok(())
}
