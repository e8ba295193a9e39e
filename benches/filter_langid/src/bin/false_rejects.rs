//! False-reject rates of every pure filter check on clean R1-style traces (the teacher-sim
//! phrase bank, plain and heavy "Wait/Alternatively" + LaTeX habits, 300–4,000 words), and the
//! distribution of the repetition measures (to set thresholds above clean traces).
//!   cargo run --release --bin false_rejects [N]

#[path = "../../../../src/filter/complete.rs"]
#[allow(dead_code)]
mod complete;
#[path = "../../../../src/filter/format.rs"]
#[allow(dead_code)]
mod format;
#[path = "../../../../src/filter/language.rs"]
#[allow(dead_code)]
mod language;
#[path = "../../../../src/teacher_sim/phrases.rs"]
#[allow(dead_code)]
mod phrases;
#[path = "../../../../src/filter/readability.rs"]
#[allow(dead_code)]
mod readability;
#[path = "../../../../src/filter/repetition.rs"]
#[allow(dead_code)]
mod repetition;
#[path = "../../../../src/filter/scan.rs"]
mod scan;

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let mut rng = fastrand::Rng::with_seed(7);
    let rp = repetition::RepParams::default();
    let read = readability::ReadParams { max_paragraph_words: 800, max_symbol_share: 0.45, allow_code_in_math: false };
    let lp = language::LangParams::default();
    for heavy in [false, true] {
        let mut fails = [0usize; 4];
        let mut examples: Vec<String> = Vec::new();
        let mut stats: Vec<repetition::RepReport> = Vec::new();
        let mut sym = Vec::new();
        let (mut ls, mut rs) = (language::LangScratch::default(), repetition::RepScratch::default());
        for _ in 0..n {
            let words = 300 + rng.usize(..3700);
            let mut t = String::from("Okay, let me think about this problem step by step.");
            phrases::deliberate(&mut rng, if heavy { phrases::Style::HEAVY } else { phrases::Style::PLAIN }, words, &mut t);
            t.push_str("\n\nSo the final answer is 42.");
            let answer = "**Solution.** Adding gives 42.\n\nTherefore, the final answer is $\\boxed{42}$.";
            if format::check(&t, answer, true, Some("42")).is_err() {
                fails[0] += 1;
            }
            if complete::check(Some("stop"), &t, answer).is_err() {
                fails[1] += 1;
            }
            let r = readability::check(&t, answer, false, &read);
            sym.push(r.symbol_share);
            if let Some(p) = r.problem {
                fails[2] += 1;
                examples.push(format!("readability: {p}"));
            }
            let rep = repetition::check_exact(&t, &rp, &mut rs);
            if let Some(p) = &rep.problem {
                fails[3] += 1;
                examples.push(format!("repetition: {p}"));
            }
            stats.push(rep);
            let l = language::analyse(&t, &["en"], &mut ls);
            if !l.pass(&lp) {
                examples.push(format!("language: {}", l.detail(&t)));
            }
        }
        let pct = |f: &dyn Fn(&repetition::RepReport) -> f64| {
            let mut v: Vec<f64> = stats.iter().map(f).collect();
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            format!("p50 {:.3} p99 {:.3} max {:.3}", v[v.len() / 2], v[v.len() * 99 / 100], v[v.len() - 1])
        };
        println!("{} traces ({}):", n, if heavy { "heavy Wait/Alternatively + LaTeX" } else { "plain" });
        println!("  false rejects: format {} complete {} readability {} repetition {} language {}", fails[0], fails[1], fails[2], fails[3], examples.iter().filter(|e| e.starts_with("language")).count());
        println!("  dup_line {}", pct(&|r| r.dup_line_chars));
        println!("  dup_para {}", pct(&|r| r.dup_para_chars));
        println!("  top2 {}", pct(&|r| r.top_ngram[0]));
        println!("  top3 {}", pct(&|r| r.top_ngram[1]));
        println!("  top4 {}", pct(&|r| r.top_ngram[2]));
        println!("  dup5 {}", pct(&|r| r.dup_5gram));
        println!("  dup10 {}", pct(&|r| r.dup_10gram));
        println!("  consecutive {}", pct(&|r| r.consecutive as f64));
        sym.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("  symbol share p99 {:.3} max {:.3}", sym[sym.len() * 99 / 100], sym[sym.len() - 1]);
        for e in examples.iter().take(5) {
            println!("  e.g. {e}");
        }
    }
}
