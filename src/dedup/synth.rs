//! A seeded generator of SFT examples with planted duplicates, for `dedup`'s tests and benchmark.
//!
//! Prompts of 20–150 pseudo-words in sentences with punctuation and a few numbers. Families:
//! singletons; near-duplicate clusters (variants re-spaced, re-punctuated, re-cased, a word or
//! two changed, a sentence appended); number-only variants (every number changed); far pairs
//! (a third to a half of the words replaced); benchmark leaks (an item embedded in a prompt, or
//! an item with its numbers changed). Each prompt has 1–4 examples with short responses; a few
//! examples are exact copies. The truth lists every planted pair with its true word-5-gram
//! Jaccard, computed independently of `dedup` on word strings. Pure: no crate imports.

use std::collections::HashSet;

use super::norm::mix64;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// Generator settings.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    /// About this many examples (families are added until it is reached).
    pub examples: usize,
    pub seed: u64,
    /// Benchmark item texts to plant leaks of.
    pub benchmarks: Vec<String>,
    /// Leaks of each kind (embedded item; item with numbers changed).
    pub leaks: usize,
}

/// A planted pair of prompts (by prompt id).
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub a: String,
    pub b: String,
    /// True Jaccard of the word 5-gram sets (lower-cased alphanumeric words).
    pub jaccard: f64,
    /// `near`, `numbers` or `far`.
    pub kind: &'static str,
}

/// A planted benchmark leak.
#[derive(Debug, Clone, PartialEq)]
pub struct Leak {
    pub prompt_id: String,
    /// `embedded` or `numbers_changed`.
    pub kind: &'static str,
    pub item: usize,
}

/// Generated examples (JSON lines) and the truth about them.
#[derive(Debug, Default)]
pub struct Synth {
    /// One JSON object per example, serialised.
    pub lines: Vec<String>,
    /// Each distinct prompt: (prompt id, text).
    pub prompts: Vec<(String, String)>,
    pub pairs: Vec<Pair>,
    pub leaks: Vec<Leak>,
    pub exact_copies: usize,
}

#[derive(Clone)]
struct Tok {
    word: String,
    number: bool,
    punct: &'static str,
}

fn vocab(rng: &mut Rng, n: usize) -> Vec<String> {
    const SYL: [&str; 24] = [
        "ka", "to", "ri", "ne", "mo", "sa", "lu", "pe", "di", "va", "go", "shi", "tra", "bel", "con", "mar", "pil",
        "zu", "wen", "dor", "fi", "qua", "ren", "ost",
    ];
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let k = 1 + rng.below(4);
        let w: String = (0..k).map(|_| SYL[rng.below(SYL.len())]).collect();
        if seen.insert(w.clone()) {
            out.push(w);
        }
    }
    out
}

fn pick<'a>(rng: &mut Rng, v: &'a [String]) -> &'a str {
    // Skewed: frequent words are frequent.
    let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
    &v[((u * u) * v.len() as f64) as usize % v.len()]
}

fn number(rng: &mut Rng) -> String {
    (2 + rng.below(998)).to_string()
}

fn sentence(rng: &mut Rng, v: &[String], len: usize, toks: &mut Vec<Tok>) {
    for i in 0..len {
        let is_num = rng.chance(0.04);
        let word = if is_num { number(rng) } else { pick(rng, v).to_string() };
        let punct = if i + 1 == len {
            if rng.chance(0.2) { "?" } else { "." }
        } else if rng.chance(0.08) {
            ","
        } else {
            ""
        };
        toks.push(Tok { word, number: is_num, punct });
    }
}

fn base(rng: &mut Rng, v: &[String]) -> Vec<Tok> {
    let words = 20 + rng.below(131);
    let mut toks = Vec::with_capacity(words);
    while toks.len() < words {
        let len = (6 + rng.below(10)).min(words - toks.len()).max(1);
        sentence(rng, v, len, &mut toks);
    }
    if !toks.iter().any(|t| t.number) {
        let i = rng.below(toks.len());
        toks[i].word = number(rng);
        toks[i].number = true;
    }
    toks
}

/// Renders tokens: sentence case, punctuation attached, spacing and casing perturbed if asked.
fn render(rng: &mut Rng, toks: &[Tok], respace: bool, recase: bool) -> String {
    let mut s = String::new();
    let mut start = true;
    for (i, t) in toks.iter().enumerate() {
        if i > 0 {
            s.push_str(if respace && rng.chance(0.15) { ["  ", "\n", " \t "][rng.below(3)] } else { " " });
        }
        let mut w = t.word.clone();
        if start {
            let mut c = w.chars();
            if let Some(f) = c.next() {
                w = f.to_uppercase().collect::<String>() + c.as_str();
            }
        }
        if recase && rng.chance(0.2) {
            w = if rng.chance(0.5) { w.to_uppercase() } else { w.to_lowercase() };
        }
        s.push_str(&w);
        s.push_str(t.punct);
        start = matches!(t.punct, "." | "?" | "!");
    }
    s
}

/// Lower-cased alphanumeric words and their 5-gram set: the truth, independent of `dedup`.
fn five_grams(text: &str) -> HashSet<String> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    words.windows(5).map(|w| w.join(" ")).collect()
}

/// Jaccard similarity of two texts' word 5-gram sets.
pub fn true_jaccard(a: &str, b: &str) -> f64 {
    let (x, y) = (five_grams(a), five_grams(b));
    let inter = x.intersection(&y).count();
    let union = x.len() + y.len() - inter;
    if union == 0 { 1.0 } else { inter as f64 / union as f64 }
}

fn near_variant(rng: &mut Rng, v: &[String], toks: &[Tok]) -> (Vec<Tok>, bool, bool) {
    let mut t = toks.to_vec();
    let (mut respace, mut recase) = (rng.chance(0.5), rng.chance(0.5));
    let mut changed = false;
    if rng.chance(0.5) {
        // Re-punctuate: drop or add commas, swap sentence ends.
        for x in t.iter_mut() {
            if rng.chance(0.15) {
                x.punct = match x.punct {
                    "," => "",
                    "" => ",",
                    "." => ";",
                    other => other,
                };
                changed = true;
            }
        }
    }
    if rng.chance(0.45) {
        for _ in 0..1 + rng.below(2) {
            let i = rng.below(t.len());
            if !t[i].number {
                t[i].word = pick(rng, v).to_string();
                changed = true;
            }
        }
    }
    if rng.chance(0.3) {
        let len = 5 + rng.below(6);
        sentence(rng, v, len, &mut t);
        // Appended text keeps the numbers of the original (only the base's numbers count).
        for x in t[toks.len()..].iter_mut() {
            if x.number {
                x.word = pick(rng, v).to_string();
                x.number = false;
            }
        }
        changed = true;
    }
    if !changed && !respace && !recase {
        respace = true;
        recase = true;
    }
    (t, respace, recase)
}

/// Generates a corpus.
pub fn generate(cfg: &SynthConfig) -> Synth {
    let mut rng = Rng(cfg.seed ^ 0xD1B5_4A32_D192_ED03);
    let v = vocab(&mut rng, 20_000);
    let mut out = Synth::default();
    let mut next_id = 0usize;
    let mut new_id = |out: &mut Synth, text: String| {
        let id = format!("p{next_id:07}");
        next_id += 1;
        out.prompts.push((id.clone(), text));
        id
    };
    // Leaks first, so tests at any size have them.
    for (k, item) in cfg.benchmarks.iter().enumerate().take(cfg.leaks) {
        let text = format!("Here is a problem for you. {item} Explain every step.");
        let id = new_id(&mut out, text);
        out.leaks.push(Leak { prompt_id: id, kind: "embedded", item: k });
    }
    let mut planted = 0;
    for (k, item) in cfg.benchmarks.iter().enumerate() {
        if planted >= cfg.leaks {
            break;
        }
        if !item.chars().any(|c| c.is_ascii_digit()) {
            continue;
        }
        let mut changed = String::new();
        let mut in_num = false;
        for c in item.chars() {
            if c.is_ascii_digit() {
                if !in_num {
                    changed.push_str(&(1 + rng.below(97)).to_string());
                }
                in_num = true;
            } else {
                in_num = false;
                changed.push(c);
            }
        }
        let id = new_id(&mut out, changed);
        out.leaks.push(Leak { prompt_id: id, kind: "numbers_changed", item: k });
        planted += 1;
    }
    let mut examples_planned: usize = 0;
    let start = out.prompts.len();
    let _ = start;
    while examples_planned < cfg.examples || out.prompts.is_empty() {
        let toks = base(&mut rng, &v);
        let text = render(&mut rng, &toks, false, false);
        let a = new_id(&mut out, text.clone());
        let roll = rng.below(100);
        if roll < 20 {
            for _ in 0..1 + rng.below(3) {
                let (t, rs, rc) = near_variant(&mut rng, &v, &toks);
                let vt = render(&mut rng, &t, rs, rc);
                let j = true_jaccard(&text, &vt);
                let b = new_id(&mut out, vt);
                out.pairs.push(Pair { a: a.clone(), b, jaccard: j, kind: "near" });
            }
        } else if roll < 30 {
            let mut t = toks.clone();
            for x in t.iter_mut().filter(|x| x.number) {
                let old = x.word.clone();
                while x.word == old {
                    x.word = number(&mut rng);
                }
            }
            let vt = render(&mut rng, &t, false, false);
            let j = true_jaccard(&text, &vt);
            let b = new_id(&mut out, vt);
            out.pairs.push(Pair { a: a.clone(), b, jaccard: j, kind: "numbers" });
        } else if roll < 40 {
            let mut t = toks.clone();
            let frac = 0.3 + (rng.below(20) as f64) / 100.0;
            for x in t.iter_mut() {
                if !x.number && rng.chance(frac) {
                    x.word = pick(&mut rng, &v).to_string();
                }
            }
            let vt = render(&mut rng, &t, false, false);
            let j = true_jaccard(&text, &vt);
            let b = new_id(&mut out, vt);
            out.pairs.push(Pair { a: a.clone(), b, jaccard: j, kind: "far" });
        }
        examples_planned = (out.prompts.len() as f64 * 2.5) as usize;
    }
    // Examples: 1-4 samples per prompt with short responses, a few exact copies.
    let prompts = std::mem::take(&mut out.prompts);
    for (id, text) in &prompts {
        let n = 1 + rng.below(4);
        for k in 0..n {
            let answer = rng.below(1000);
            let response = format!(
                "<think>\nLet me work through it step {k}. The result is {answer}.\n</think>\n\nThe answer is {answer}."
            );
            let line = example_json(&format!("{id}/{k}"), id, text, &response, n);
            if rng.chance(0.01) {
                let copy = example_json(&format!("{id}/{k}c"), id, text, &response, n);
                out.lines.push(line);
                out.lines.push(copy);
                out.exact_copies += 1;
            } else {
                out.lines.push(line);
            }
        }
    }
    out.prompts = prompts;
    out
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            '\r' => o.push_str("\\r"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn example_json(id: &str, prompt_id: &str, prompt: &str, response: &str, n: usize) -> String {
    format!(
        "{{\"id\":{},\"messages\":[{{\"role\":\"user\",\"content\":{}}},{{\"role\":\"assistant\",\"content\":{}}}],\"source\":\"synth\",\"task\":\"math\",\"prompt_id\":{},\"meta\":{{\"pass_rate\":1.0,\"n_samples\":{n}}}}}",
        json_str(id),
        json_str(prompt),
        json_str(response),
        json_str(prompt_id)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_with_planted_families() {
        let cfg = SynthConfig {
            examples: 2000,
            seed: 3,
            benchmarks: vec!["Tom has 3 apples and 4 pears. How many fruits?".into()],
            leaks: 1,
        };
        let a = generate(&cfg);
        let b = generate(&cfg);
        assert_eq!(a.lines, b.lines);
        assert!(a.lines.len() >= 1800, "{}", a.lines.len());
        for kind in ["near", "numbers", "far"] {
            assert!(a.pairs.iter().any(|p| p.kind == kind), "{kind}");
        }
        assert!(a.pairs.iter().filter(|p| p.kind == "far").all(|p| p.jaccard < 0.75));
        assert!(a.pairs.iter().filter(|p| p.kind == "near").filter(|p| p.jaccard >= 0.85).count() > 50);
        assert_eq!(a.leaks.len(), 2);
        assert_eq!(true_jaccard("a b c d e f", "A, b c d e f"), 1.0);
    }
}
