//! Conformance of the math verifier against Math-Verify's own test cases.
//!
//! Reads a JSONL file of `{gold, pred, expected}` rows (`expected` 1/0, or `result`), as
//! exported from Math-Verify's parametrised tests; rows carrying `raw` instead are skipped and
//! counted. Both sides are answer strings in Math-Verify's sense (each is extracted, then
//! parsed, then compared). Prints the agreement and every disagreement.
//!
//! Usage: cargo run --release --example math_conformance -- PATH [--all]

use std::io::BufRead;

use distill::verify::math::compare_answer_strings;
use serde_json::Value;

fn short(s: &str, n: usize) -> String {
    let s = s.replace('\n', "\\n");
    if s.chars().count() <= n {
        s
    } else {
        let head: String = s.chars().take(n / 2).collect();
        let tail: String = s.chars().rev().take(n / 2).collect::<Vec<_>>().into_iter().rev().collect();
        format!("{head} … {tail}")
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.iter().find(|a| !a.starts_with("--")) else {
        eprintln!("usage: math_conformance PATH [--all]   (PATH: math_verify_cases.jsonl)");
        std::process::exit(2);
    };
    let show_all = args.iter().any(|a| a == "--all");
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(2);
        }
    };
    let (mut total, mut agree, mut skipped) = (0u32, 0u32, 0u32);
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let Ok(line) = line else { continue };
        let Ok(row) = serde_json::from_str::<Value>(&line) else {
            eprintln!("{path}:{}: not JSON, skipped", i + 1);
            skipped += 1;
            continue;
        };
        if row.get("raw").is_some() {
            skipped += 1;
            continue;
        }
        let (Some(gold), Some(pred)) = (row["gold"].as_str(), row["pred"].as_str()) else {
            skipped += 1;
            continue;
        };
        let expected = row.get("expected").or_else(|| row.get("result")).and_then(Value::as_i64).unwrap_or(-1) == 1;
        let j = compare_answer_strings(gold, pred);
        total += 1;
        let ok = j.pass == expected;
        if ok {
            agree += 1;
        }
        if !ok || show_all {
            println!(
                "{} line {} [{}] expected {} got {} ({}): gold {:?} | pred {:?} | extracted {:?}",
                if ok { "ok  " } else { "DIFF" },
                i + 1,
                row["test"].as_str().unwrap_or(""),
                expected as u8,
                j.pass as u8,
                j.reason,
                short(gold, 90),
                short(pred, 90),
                j.extracted.as_deref().map(|s| short(s, 60)).unwrap_or_default(),
            );
        }
    }
    println!(
        "agreement: {agree}/{total} = {:.1}% ({} disagreements; {skipped} rows skipped: raw Python expressions)",
        100.0 * agree as f64 / total.max(1) as f64,
        total - agree
    );
}
