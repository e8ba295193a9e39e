//! Fuzz test of the math verifier: random token soups and random bytes must never panic or
//! hang. Deterministic (seeded xorshift), so a failure reproduces; the failing input is printed.

use std::time::{Duration, Instant};

use distill::verify::math::{compare_answer_strings, verify_response};

const PIECES: &[&str] = &[
    "\\frac",
    "\\dfrac",
    "\\sqrt",
    "\\sqrt[3]",
    "{",
    "}",
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    "\\{",
    "\\}",
    "\\left(",
    "\\right)",
    "^",
    "_",
    "!",
    "\\%",
    "%",
    "$",
    "$$",
    "\\boxed{",
    "\\fbox",
    "\\text{",
    "\\mathrm{",
    "\\pi",
    "\\infty",
    "e",
    "i",
    "x",
    "y",
    "n",
    "f(",
    "\\sin",
    "\\cos",
    "\\log_",
    "\\ln",
    "\\exp",
    "\\binom",
    "\\cdot",
    "\\times",
    "\\div",
    "+",
    "-",
    "*",
    "/",
    ":",
    "=",
    "<",
    "\\le",
    "\\ge",
    "\\neq",
    "\\approx",
    "\\pm",
    "\\cup",
    "\\in",
    ",",
    ";",
    "and",
    "or",
    "|",
    "&",
    "\\\\",
    "\\begin{pmatrix}",
    "\\end{pmatrix}",
    "\\begin{array}{cc}",
    "\\end{array}",
    "0",
    "1",
    "2",
    "7",
    "10",
    "1,000",
    "3.14",
    ".5",
    "1e5",
    "2,5",
    "999999999999999999999",
    "^{10^{10}}",
    "2006!",
    "\\lfloor",
    "\\rfloor",
    "^\\circ",
    "</think>",
    "final answer is ",
    "answer: ",
    " ",
    "\n",
    "\\",
    "\\zzz",
    "é",
    "²",
    "√",
    "π",
    "∞",
    "\\!",
    "{,}",
    "\\quad",
    "(B)",
    "\\text{ and }",
];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn soup(rng: &mut Rng) -> String {
    let n = 1 + rng.below(24);
    let mut s = String::new();
    for _ in 0..n {
        if rng.below(10) == 0 {
            // A random char, any code point.
            s.push(char::from_u32((rng.next() % 0x2FFF) as u32).unwrap_or('?'));
        } else {
            s.push_str(PIECES[rng.below(PIECES.len())]);
        }
    }
    s
}

#[test]
fn random_inputs_never_panic_or_hang() {
    let mut rng = Rng(0x5eed_1234_abcd_9876);
    let mut slowest = Duration::ZERO;
    for _ in 0..6000 {
        let gold = soup(&mut rng);
        let pred = soup(&mut rng);
        let t = Instant::now();
        let r = std::panic::catch_unwind(|| {
            let _ = compare_answer_strings(&gold, &pred);
            let _ = verify_response(&gold, &pred);
            let _ = compare_answer_strings(&pred, &pred);
        });
        assert!(r.is_ok(), "panic on gold={gold:?} pred={pred:?}");
        let dt = t.elapsed();
        assert!(dt < Duration::from_secs(2), "took {dt:?} on gold={gold:?} pred={pred:?}");
        slowest = slowest.max(dt);
    }
    eprintln!("slowest case: {slowest:?}");
}

const SEEDS: &[&str] = &[
    "\\frac{3}{4}",
    "2\\sqrt{2}",
    "\\left( 3, \\frac{\\pi}{2} \\right)",
    "[-1, -\\tfrac12) \\cup (0, 1)",
    "y = 2x + 1",
    "-2 \\le x \\le 7",
    "\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}",
    "\\{1 \\pm \\sqrt{5}, -2\\}",
    "x^2/4 + y^2/3 = 1",
    "\\text{(C)}",
    "28\\%",
    "1,000.99",
    "\\sin^2(x) + \\log_2 8 - 5!",
    "p=5,q=2;p=7,q=2",
    "1 \\leq |z| \\leq \\frac{3}{2}",
];

/// Valid answers with random edits (insert, delete, replace a piece): reaches deep into the
/// parser and the comparison, where random soups mostly stop early.
#[test]
fn mutated_answers_never_panic_or_hang() {
    let mut rng = Rng(0xfeed_0042_1337_beef);
    for _ in 0..20_000 {
        let mut s: Vec<char> = SEEDS[rng.below(SEEDS.len())].chars().collect();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(s.len() + 1);
            match rng.below(3) {
                0 => {
                    let piece: Vec<char> = PIECES[rng.below(PIECES.len())].chars().collect();
                    s.splice(at..at, piece);
                }
                1 if at < s.len() => {
                    s.remove(at);
                }
                _ if at < s.len() => s[at] = PIECES[rng.below(PIECES.len())].chars().next().unwrap_or('x'),
                _ => {}
            }
        }
        let m: String = s.into_iter().collect();
        let other = SEEDS[rng.below(SEEDS.len())];
        let t = Instant::now();
        let r = std::panic::catch_unwind(|| {
            let _ = compare_answer_strings(other, &m);
            let _ = compare_answer_strings(&m, &m);
            let _ = verify_response(&m, &format!("\\boxed{{{m}}}"));
        });
        assert!(r.is_ok(), "panic on {m:?} vs {other:?}");
        assert!(t.elapsed() < Duration::from_secs(2), "slow on {m:?}");
    }
}

#[test]
fn adversarial_inputs_are_bounded() {
    let cases = [
        "10^{10^{10}}".to_string(),
        "2^{2^{2^{2^{2^{2}}}}}".to_string(),
        "(".repeat(100_000),
        "{".repeat(100_000) + &"}".repeat(100_000),
        "\\frac{".repeat(50_000),
        "\\boxed{".repeat(50_000),
        "x".repeat(1_000_000) + "\\boxed{1}",
        "1+".repeat(300_000) + "1",
        "\\sqrt{".repeat(10_000) + "2" + &"}".repeat(10_000),
        "99999999!".to_string(),
        "\\binom{10^{9}}{10^{8}}".to_string(),
        "1,".repeat(5000) + "1",
        "(1,".repeat(3000) + "1" + &")".repeat(3000),
    ];
    for c in &cases {
        let t = Instant::now();
        let _ = verify_response("1", &format!("\\boxed{{{c}}}"));
        let _ = verify_response(c, "\\boxed{2}");
        let _ = compare_answer_strings(c, c);
        let dt = t.elapsed();
        assert!(dt < Duration::from_secs(5), "{dt:?} on {:?}", &c[..c.len().min(60)]);
    }
}
