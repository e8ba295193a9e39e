//! Times the filter's text checks on their own, one thread, best of R passes over N traces:
//! ns per byte of each (repetition, language, readability). For comparing builds of the checks
//! (`DISTILL_NO_BIT_OPS=1` runs the baseline x86_64 copies).
//! Usage: check_speed TRACES.jsonl [N] [R]   (lines with `reasoning` and `content`)
use std::io::BufRead;
use std::time::Instant;

use distill::filter::{language, readability, repetition};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).ok_or_else(|| anyhow::anyhow!("usage: check_speed TRACES.jsonl [N] [R]"))?;
    let n: usize = args.get(2).map_or(Ok(2000), |s| s.parse())?;
    let r: usize = args.get(3).map_or(Ok(5), |s| s.parse())?;
    let mut texts = Vec::new();
    for line in std::io::BufReader::new(std::fs::File::open(path)?).lines().take(n) {
        let v: serde_json::Value = serde_json::from_str(&line?)?;
        let get = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
        texts.push((get("reasoning"), get("content")));
    }
    let bytes: usize = texts.iter().map(|t| t.0.len()).sum();
    let time = |f: &mut dyn FnMut(&str, &str) -> usize| {
        let mut best = f64::MAX;
        let mut sink = 0usize;
        for _ in 0..r {
            let t = Instant::now();
            for (a, b) in &texts {
                sink = sink.wrapping_add(f(a, b));
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        (best * 1e9 / bytes as f64, sink)
    };
    let (p, mut s) = (repetition::RepParams::default(), repetition::RepScratch::default());
    let rep = time(&mut |a, _| repetition::check(a, &p, &mut s).consecutive);
    let mut ls = language::LangScratch::default();
    let lang = time(&mut |a, _| language::analyse(a, &["en"], &mut ls).target_units);
    let rp = readability::ReadParams { max_paragraph_words: 1000, max_symbol_share: 0.3, allow_code_in_math: false };
    let read = time(&mut |a, b| readability::check(a, b, false, &rp).longest_paragraph);
    println!(
        "{} traces, {:.1} MB: repetition {:.2} ns/B, language {:.2} ns/B, readability {:.2} ns/B (bit ops: {}; {})",
        texts.len(),
        bytes as f64 / 1e6,
        rep.0,
        lang.0,
        read.0,
        distill::filter::scan::has_bit_ops(),
        rep.1 ^ lang.1 ^ read.1
    );
    Ok(())
}
