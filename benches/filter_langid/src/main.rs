//! Language-check candidates on mixed traces built from the labelled set
//! (`tests/fixtures/filter/foreign.tsv`) and the teacher-sim phrase bank.
//!
//! Each trial is an English R1-style trace (plain or heavy "Wait/Alternatively" + LaTeX habits,
//! 300–3,000 words); half of them get one labelled foreign item planted at a random paragraph
//! boundary or mid-paragraph. A candidate flags a trace or not; precision and recall are over
//! traces, throughput is over the clean traces.

#[path = "../../../src/filter/language.rs"]
#[allow(dead_code)]
mod language;
#[path = "../../../src/filter/scan.rs"]
#[allow(dead_code)]
mod scan;
#[path = "../../../src/teacher_sim/phrases.rs"]
#[allow(dead_code)]
mod phrases;

use std::time::Instant;

fn foreign_set() -> Vec<(&'static str, &'static str)> {
    include_str!("../../../tests/fixtures/filter/foreign.tsv")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once('\t'))
        .collect()
}

fn trace(rng: &mut fastrand::Rng, heavy: bool) -> String {
    let mut s = String::from("Okay, let me think about this problem step by step.");
    let words = 300 + rng.usize(..2700);
    let style = if heavy { phrases::Style::HEAVY } else { phrases::Style::PLAIN };
    phrases::deliberate(rng, style, words, &mut s);
    s.push_str("\n\nSo the final answer is $\\boxed{42}$.");
    s
}

fn plant(rng: &mut fastrand::Rng, t: &str, item: &str) -> String {
    // At a paragraph boundary or after a sentence inside a paragraph.
    let cuts: Vec<usize> = t.match_indices(". ").map(|(i, _)| i + 2).chain(t.match_indices("\n\n").map(|(i, _)| i + 2)).collect();
    let at = cuts[rng.usize(..cuts.len())];
    format!("{}{} {}", &t[..at], item, &t[at..])
}

type Cand = (&'static str, Box<dyn Fn(&str) -> bool>);

fn sentences(t: &str) -> impl Iterator<Item = &str> {
    t.split(['.', '!', '?', '\n', '。', '！', '？']).filter(|s| !s.trim().is_empty())
}

fn main() {
    let set = foreign_set();
    let mut rng = fastrand::Rng::with_seed(12);
    let mut trials: Vec<(String, bool)> = Vec::new();
    for round in 0..2 {
        for (_, item) in &set {
            let heavy = rng.bool();
            let t = trace(&mut rng, heavy);
            trials.push((plant(&mut rng, &t, item), true));
            let _ = round;
        }
    }
    let n_pos = trials.len();
    for _ in 0..n_pos {
        let heavy = rng.bool();
        trials.push((trace(&mut rng, heavy), false));
    }
    let params = language::LangParams::default();
    let cands: Vec<Cand> = vec![
        (
            "script-shares (non-Latin scripts only)",
            Box::new(move |t: &str| {
                let mut sc = language::LangScratch::default();
                !language::analyse(t, &["en", "es", "de", "fr"], &mut sc).pass(&language::LangParams::default())
            }),
        ),
        (
            "script + lexicons, sentence spans (distill)",
            Box::new(move |t: &str| {
                let mut sc = language::LangScratch::default();
                !language::analyse(t, &["en"], &mut sc).pass(&params)
            }),
        ),
        (
            "whatlang per paragraph (reliable, != eng)",
            Box::new(|t: &str| {
                t.split("\n\n").any(|p| {
                    whatlang::detect(p).is_some_and(|i| i.is_reliable() && i.lang() != whatlang::Lang::Eng)
                })
            }),
        ),
        (
            "whatlang per sentence (>= 8 words or 10 chars, reliable, != eng)",
            Box::new(|t: &str| {
                sentences(t).any(|s| {
                    let long = s.split_whitespace().count() >= 8 || s.chars().filter(|c| !c.is_ascii()).count() >= 10;
                    long && whatlang::detect(s).is_some_and(|i| i.is_reliable() && i.lang() != whatlang::Lang::Eng)
                })
            }),
        ),
    ];
    let clean_bytes: usize = trials.iter().filter(|t| !t.1).map(|t| t.0.len()).sum();
    println!("labelled items: {}, traces: {} mixed + {} clean ({:.1} MB clean)", set.len(), n_pos, trials.len() - n_pos, clean_bytes as f64 / 1e6);
    println!("{:<66} {:>9} {:>7} {:>5} {:>5} {:>9}", "candidate", "precision", "recall", "FP", "FN", "MB/s");
    for (name, f) in &cands {
        let (mut tp, mut fp, mut fneg) = (0, 0, 0);
        for (t, pos) in &trials {
            match (f(t), *pos) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, true) => fneg += 1,
                _ => {}
            }
        }
        if name.contains("distill") && std::env::var("SHOW").is_ok() {
            for (t, pos) in &trials {
                if *pos && !f(t) {
                    let mut sc = language::LangScratch::default();
                    let r = language::analyse(t, &["en"], &mut sc);
                    let item = set.iter().find(|(_, i)| t.contains(i)).unwrap();
                    let at = t.find(item.1).unwrap();
                    println!("MISS {:?} {:?}\n  ctx: {:?}", item, r, &t[at.saturating_sub(80)..at]);
                }
            }
        }
        let t0 = Instant::now();
        let mut flagged = 0;
        for (t, _) in trials.iter().filter(|t| !t.1) {
            flagged += f(t) as usize;
        }
        let secs = t0.elapsed().as_secs_f64();
        let prec = tp as f64 / (tp + fp).max(1) as f64;
        let rec = tp as f64 / (tp + fneg).max(1) as f64;
        println!("{name:<66} {prec:>9.4} {rec:>7.4} {fp:>5} {fneg:>5} {:>9.1}", clean_bytes as f64 / 1e6 / secs);
        let _ = flagged;
    }
}
