//! Generates realistic math verification pairs for the benchmark: records with `task: math`,
//! a gold `answer` and a long R1-style `content` (thinking, then a summary ending in a boxed
//! answer). About two thirds of the answers are equivalent to the gold in another form, the
//! rest are wrong. Deterministic for a seed.
//!
//! Usage: make_math_pairs --count N [--seed S] --out FILE.jsonl

use std::io::Write;

struct Rng(distill::rng::SplitMix);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn int(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a.abs() } else { gcd(b, a % b) }
}

/// (gold, equivalent prediction, wrong prediction).
fn family(r: &mut Rng) -> (String, String, String) {
    let a = r.int(2, 60);
    let b = r.int(2, 40);
    match r.next() % 12 {
        0 => {
            let n = r.int(1, 3_000_000);
            let eq = if n >= 1000 && r.next().is_multiple_of(2) {
                let s = n.to_string();
                let mut out = String::new();
                for (i, c) in s.chars().enumerate() {
                    if i > 0 && (s.len() - i).is_multiple_of(3) {
                        out.push(',');
                    }
                    out.push(c);
                }
                out
            } else {
                n.to_string()
            };
            (n.to_string(), eq, (n + r.int(1, 9)).to_string())
        }
        1 => {
            let g = gcd(a, b);
            let (p, q) = (a / g, b / g);
            let k = r.int(2, 5);
            (
                format!("\\frac{{{p}}}{{{q}}}"),
                format!("\\dfrac{{{}}}{{{}}}", p * k, q * k),
                format!("\\frac{{{}}}{{{q}}}", p + 1),
            )
        }
        2 => (format!("{a}\\sqrt{{{b}}}"), format!("\\sqrt{{{}}}", a * a * b), format!("{a}\\sqrt{{{}}}", b + 1)),
        3 => (
            format!("\\frac{{{a}\\pi}}{{{b}}}"),
            format!("\\frac{{{a}}}{{{b}}}\\pi"),
            format!("\\frac{{{a}\\pi}}{{{}}}", b + 1),
        ),
        4 => (format!("({a}, {b})"), format!("\\left( {a},{b} \\right)"), format!("({b}, {a})")),
        5 => (format!("[{a}, {})", a + b), format!("x \\in [{a},{})", a + b), format!("({a}, {})", a + b)),
        6 => (format!("x^2 + {a}x + {b}"), format!("{b} + {a}x + x^{{2}}"), format!("x^2 + {b}x + {a}")),
        7 => (format!("y = {a}x + {b}"), format!("y={b}+{a}x"), format!("y = {a}x - {b}")),
        8 => {
            let c = r.pick(&["A", "B", "C", "D", "E"]);
            let w = if c == "A" { "B" } else { "A" };
            (format!("({c})"), format!("\\text{{({c})}}"), format!("\\text{{{w}}}"))
        }
        9 => {
            let q = [2, 4, 5, 8][(r.next() % 4) as usize];
            let p = a * q + 1;
            let dec = p as f64 / q as f64;
            (format!("{dec}"), format!("\\frac{{{p}}}{{{q}}}"), format!("{}", dec + 0.5))
        }
        10 => (format!("\\{{{a}, {b}, {}\\}}", a + b), format!("{}, {b}, {a}", a + b), format!("\\{{{a}, {b}\\}}")),
        _ => (format!("{a}\\%"), format!("{a}"), format!("{}\\%", a + 1)),
    }
}

const SENTENCES: &[&str] = &[
    "Let me think about this carefully.",
    "First, I need to understand what the problem is asking.",
    "Hmm, wait, let me re-check that computation.",
    "So we have $x + y = 10$ and $xy = 21$, which gives $x = 3$ or $x = 7$.",
    "Alternatively, we could substitute $t = x^2$ and solve $t^2 - 5t + 6 = 0$.",
    "That means the discriminant is $b^2 - 4ac = 25 - 24 = 1$.",
    "Let me verify with a small case: if $n = 2$, then $2^n = 4$.",
    "The sum of the first $n$ integers is $\\frac{n(n+1)}{2}$.",
    "Wait, that doesn't look right. Let me try again.",
    "By the Pythagorean theorem, $a^2 + b^2 = c^2$, so $c = \\sqrt{a^2 + b^2}$.",
    "Okay, so the area is $\\frac{1}{2} \\cdot 6 \\cdot 8 = 24$.",
    "Now I can plug this back into the original equation.",
];

fn response(r: &mut Rng, pred: &str) -> String {
    let mut s = String::from("<think>\n");
    let target = 2000 + (r.next() % 3000) as usize;
    while s.len() < target {
        s.push_str(r.pick(SENTENCES));
        s.push(' ');
        if r.next().is_multiple_of(7) {
            s.push_str("\n\n");
        }
    }
    s.push_str("\n</think>\n\n");
    s.push_str("We combine the steps above. ");
    s.push_str(r.pick(SENTENCES));
    s.push_str(&format!("\n\nTherefore, the final answer is $\\boxed{{{pred}}}$."));
    s
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned();
    let count: usize = get("--count").and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let seed: u64 = get("--seed").and_then(|v| v.parse().ok()).unwrap_or(7);
    let Some(out) = get("--out") else {
        eprintln!("usage: make_math_pairs --count N [--seed S] --out FILE.jsonl");
        std::process::exit(2);
    };
    let mut r = Rng(distill::rng::SplitMix(seed));
    let file = std::fs::File::create(&out).unwrap_or_else(|e| {
        eprintln!("{out}: {e}");
        std::process::exit(2)
    });
    let mut w = std::io::BufWriter::new(file);
    for i in 0..count {
        let (gold, good, bad) = family(&mut r);
        let pred = if r.next().is_multiple_of(3) { bad } else { good };
        let content = response(&mut r, &pred);
        let rec = serde_json::json!({"id": format!("bench-{i}"), "task": "math", "answer": gold, "content": content});
        if writeln!(w, "{rec}").is_err() {
            eprintln!("{out}: write failed");
            std::process::exit(2);
        }
    }
    if w.flush().is_err() {
        std::process::exit(2);
    }
}
