//! The `readability` check: what R1 dropped as unreadable chains-of-thought. Longest paragraph
//! (in words), fenced code blocks inside a non-code chain-of-thought, the share of characters
//! that are neither letters, digits nor whitespace (texts of 200+ such characters), and unbalanced markup (an unclosed
//! `\boxed{`, an odd number of code fences, `<think>` inside the answer).
//!
//! In: reasoning, answer, whether the task is code, and [`ReadParams`]. Self-contained (std,
//! `scan.rs` and `format.rs`).

/// Thresholds of the readability check.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadParams {
    pub max_paragraph_words: usize,
    pub max_symbol_share: f64,
    pub allow_code_in_math: bool,
}

/// Measurements of one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadReport {
    pub longest_paragraph: usize,
    pub code_blocks: usize,
    pub symbol_share: f64,
    pub problem: Option<String>,
}

/// Words of the longest blank-line-separated paragraph.
pub fn longest_paragraph(text: &str) -> usize {
    measure(text).longest
}

/// What one pass over the chain-of-thought counts.
struct Counts {
    /// Words of the longest paragraph (paragraphs split at `"\n\n"` as `str::split` does;
    /// words separated by Unicode whitespace).
    longest: usize,
    /// Non-whitespace characters, and those of them neither letters nor digits.
    all: usize,
    sym: usize,
}

/// Per ASCII byte: 1 whitespace (as `char::is_whitespace`), 2 letter or digit, 0 neither.
static ASCII_CLASS: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut c = 0;
    while c < 128 {
        let b = c as u8;
        if b == b' ' || (b >= 0x09 && b <= 0x0d) {
            t[c] = 1;
        } else if b.is_ascii_alphanumeric() {
            t[c] = 2;
        }
        c += 1;
    }
    t
};

/// SWAR constants: 1 in each byte, and each byte's high bit.
const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The bytes of `x` (each below 0x80) in `lo..=hi`, as their high bits.
#[inline]
fn in_range(x: u64, lo: u8, hi: u8) -> u64 {
    // Per byte, no carry out: b + (0x80 - lo) reaches 0x80 when b >= lo, b + (0x7f - hi) when b > hi.
    let ge = x + ONES * u64::from(0x80 - lo);
    let gt = x + ONES * u64::from(0x7f - hi);
    ge & !gt & HIGH
}

/// One pass over `text`: 8 ASCII bytes with no line end at a time (whitespace, letters and
/// digits found by SWAR masks and counted), other bytes one by one (ASCII by table, other
/// characters decoded).
fn measure(text: &str) -> Counts {
    #[cfg(target_arch = "x86_64")]
    if super::scan::has_bit_ops() {
        #[target_feature(enable = "popcnt,lzcnt,bmi1,bmi2")]
        fn fast(text: &str) -> Counts {
            measure_body(text)
        }
        // SAFETY: the CPU has every feature `fast` is compiled for (checked just above).
        return unsafe { fast(text) };
    }
    measure_body(text)
}

#[inline(always)]
fn measure_body(text: &str) -> Counts {
    let b = text.as_bytes();
    let (mut longest, mut cur, mut all, mut sym) = (0usize, 0usize, 0usize, 0usize);
    let mut prev_ws = true;
    let mut i = 0;
    while i < b.len() {
        if let Some(w) = b.get(i..i + 8) {
            let x = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            if x & HIGH == 0 && in_range(x, b'\n', b'\n') == 0 {
                let ws = in_range(x, 0x09, 0x0d) | in_range(x, b' ', b' ');
                let alnum = in_range(x, b'0', b'9') | in_range(x, b'A', b'Z') | in_range(x, b'a', b'z');
                let text = !ws & HIGH;
                // Per byte: the byte before it is whitespace.
                let after_ws = (ws << 8) | if prev_ws { 0x80 } else { 0 };
                cur += (text & after_ws).count_ones() as usize;
                all += text.count_ones() as usize;
                sym += (text & !alnum).count_ones() as usize;
                prev_ws = ws >> 63 == 1;
                i += 8;
                continue;
            }
        }
        let c = b[i];
        let (ws, alnum) = if c < 0x80 {
            if c == b'\n' && b.get(i + 1) == Some(&b'\n') {
                longest = longest.max(cur);
                cur = 0;
                prev_ws = true;
                i += 2;
                continue;
            }
            i += 1;
            let class = ASCII_CLASS[c as usize];
            (class == 1, class == 2)
        } else {
            let ch = text[i..].chars().next().unwrap_or(' ');
            i += ch.len_utf8();
            (ch.is_whitespace(), ch.is_alphanumeric())
        };
        cur += usize::from(prev_ws && !ws);
        all += usize::from(!ws);
        sym += usize::from(!ws && !alnum);
        prev_ws = ws;
    }
    Counts { longest: longest.max(cur), all, sym }
}

/// Non-overlapping occurrences of "```", left to right (as `str::matches` counts them).
fn count_fences(text: &str) -> usize {
    let b = text.as_bytes();
    let (mut n, mut i) = (0, 0);
    while let Some(j) = super::scan::find_any(b, i, [b'`']) {
        if b.get(j + 1) == Some(&b'`') && b.get(j + 2) == Some(&b'`') {
            n += 1;
            i = j + 3;
        } else {
            i = j + 1;
        }
    }
    n
}

/// Measures and judges.
pub fn check(reasoning: &str, answer: &str, code_task: bool, p: &ReadParams) -> ReadReport {
    let Counts { longest, all, sym } = measure(reasoning);
    let fences = count_fences(reasoning);
    let share = if all == 0 { 0.0 } else { sym as f64 / all as f64 };
    let mut problem = None;
    if longest > p.max_paragraph_words {
        problem = Some(format!("a paragraph of {longest} words (max {})", p.max_paragraph_words));
    } else if fences >= 2 && !code_task && !p.allow_code_in_math {
        problem = Some(format!("{} fenced code block(s) inside a non-code chain-of-thought", fences / 2));
    } else if all >= 200 && share > p.max_symbol_share {
        problem = Some(format!(
            "{:.0}% of the characters are symbols (max {:.0}%)",
            share * 100.0,
            p.max_symbol_share * 100.0
        ));
    } else if fences % 2 == 1 || count_fences(answer) % 2 == 1 {
        problem = Some("unclosed ``` code fence".into());
    } else if super::format::boxed_values(answer).is_err() {
        problem = Some("unclosed \\boxed{ in the answer".into());
    } else if answer.contains("<think>") || answer.contains("</think>") {
        problem = Some("<think> markup inside the answer".into());
    }
    ReadReport { longest_paragraph: longest, code_blocks: fences / 2, symbol_share: share, problem }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pass_counts_match_the_definition() {
        let pieces = [
            "Wait, let me check: 3 + 4 = 7. ",
            "\n\n",
            "\n",
            "\n\n\n",
            "x\ty\r\n",
            "$\\frac{a}{b}$ ",
            "让我再检查一下。",
            "café au lait\u{a0}ok ",
            "{}[]()!!??;;",
            "word",
            "  ",
        ];
        let mut rng = 5u64;
        for round in 0..300 {
            let mut t = String::new();
            for _ in 0..(round % 40) {
                rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                t.push_str(pieces[(rng >> 33) as usize % pieces.len()]);
            }
            let c = measure(&t);
            // The copy for the CPU's bit instructions and the baseline build agree.
            let base = measure_body(&t);
            assert_eq!((c.longest, c.all, c.sym), (base.longest, base.all, base.sym));
            let longest = t.split("\n\n").map(|p| p.split_whitespace().count()).max().unwrap_or(0);
            let all = t.chars().filter(|c| !c.is_whitespace()).count();
            let sym = t.chars().filter(|c| !c.is_whitespace() && !c.is_alphanumeric()).count();
            assert_eq!((c.longest, c.all, c.sym), (longest, all, sym), "{t:?}");
        }
    }

    fn p() -> ReadParams {
        ReadParams { max_paragraph_words: 800, max_symbol_share: 0.45, allow_code_in_math: false }
    }

    #[test]
    fn table() {
        let long = "word ".repeat(3000);
        let py = "Let me check with code.\n\n```python\nprint(sum(range(10)))\n```\n\nSo it is 45.";
        let cases: &[(&str, &str, bool, Option<&str>)] = &[
            ("Short paragraph.\n\nAnother one.", "\\boxed{1}", false, None),
            (&long, "\\boxed{1}", false, Some("paragraph of 3000 words")),
            (py, "\\boxed{45}", false, Some("fenced code block")),
            (py, "```python\nx\n```", true, None),
            (&"$$\\{\\}[]()^_{}{}{}{}{}{}{}$$ x ".repeat(20), "1", false, Some("symbols")),
            ("ok", "\\boxed{1", false, Some("unclosed \\boxed")),
            ("ok", "a <think> b", false, Some("<think> markup")),
            ("ok ```", "b", false, Some("unclosed ```")),
        ];
        for (r, a, code, want) in cases {
            let got = check(r, a, *code, &p());
            match want {
                None => assert!(got.problem.is_none(), "{got:?}"),
                Some(w) => assert!(got.problem.as_deref().is_some_and(|x| x.contains(w)), "{got:?}"),
            }
        }
    }
}
