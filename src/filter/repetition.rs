//! The `repetition` check: Gopher-style repetition shares, with thresholds set for reasoning
//! traces (which repeat their verbal habits far more than web pages), plus two runaway-loop
//! detectors: the same sentence (or group of up to 4 sentences) repeated back to back, and a
//! periodic tail (the same span repeated until the generation stopped).
//!
//! In: a text and [`RepParams`]. Out: a [`RepReport`]. Self-contained (std only).

use std::hash::Hasher;

/// Thresholds; a share above its threshold fails.
#[derive(Debug, Clone, PartialEq)]
pub struct RepParams {
    /// Characters in lines that occur more than once (Gopher: 0.2).
    pub dup_line_chars: f64,
    /// Characters in paragraphs that occur more than once (Gopher: 0.2).
    pub dup_para_chars: f64,
    /// Characters covered by the most frequent 2-, 3-, 4-gram (Gopher: 0.20, 0.18, 0.16).
    pub top_ngram: [f64; 3],
    /// Characters in 5-grams / 10-grams seen before (Gopher: 0.15 / 0.10).
    pub dup_5gram: f64,
    pub dup_10gram: f64,
    /// A unit (1–4 sentences) repeated back to back this many times is a loop.
    pub max_consecutive: usize,
    /// A periodic tail of at least this many bytes (and 3 periods) is a loop.
    pub tail_bytes: usize,
}

impl Default for RepParams {
    fn default() -> Self {
        RepParams {
            dup_line_chars: 0.5,
            dup_para_chars: 0.3,
            top_ngram: [0.2, 0.18, 0.16],
            dup_5gram: 0.6,
            dup_10gram: 0.45,
            max_consecutive: 5,
            tail_bytes: 200,
        }
    }
}

/// The n-gram shares are measured only on texts of at least this many words (on a few
/// sentences they say nothing).
pub const MIN_WORDS: usize = 100;

/// Measurements.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepReport {
    pub dup_line_chars: f64,
    pub dup_para_chars: f64,
    pub top_ngram: [f64; 3],
    pub dup_5gram: f64,
    pub dup_10gram: f64,
    /// Most back-to-back repeats of one unit, and the unit's size in sentences.
    pub consecutive: usize,
    pub period_sentences: usize,
    /// Length in bytes of the periodic tail (0: none) and its period.
    pub tail_loop: usize,
    pub tail_period: usize,
    pub problem: Option<String>,
}

/// FNV-1a-style 64-bit hasher with a final mix (fast, deterministic).
#[derive(Default)]
struct Fx(u64);

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^ (x >> 33)
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 { 0xcbf2_9ce4_8422_2325 } else { self.0 };
        for &b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

fn hash(s: &[u8]) -> u64 {
    let mut h = Fx::default();
    h.write(s);
    h.finish()
}

fn mix(a: u64, b: u64) -> u64 {
    (a.rotate_left(5) ^ b).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Reusable buffers.
#[derive(Default)]
pub struct RepScratch {
    words: Vec<(u64, u32)>,
    keys: Vec<(u64, u32)>,
    marks: Vec<bool>,
    sents: Vec<u64>,
}

/// Share of characters in items (split by `sep`) whose text occurs more than once, counting
/// every occurrence after the first (as Gopher does).
fn dup_share(text: &str, sep: &str, keys: &mut Vec<(u64, u32)>) -> f64 {
    keys.clear();
    let mut total = 0usize;
    for (i, item) in text.split(sep).enumerate() {
        let t = item.trim();
        if t.is_empty() {
            continue;
        }
        total += t.len();
        keys.push((hash(t.as_bytes()), i as u32));
        let _ = i;
    }
    if total == 0 {
        return 0.0;
    }
    // Lengths by hash: sort by (hash, index); every item after the first of its hash is a dup.
    let lens: Vec<usize> = text.split(sep).map(|x| x.trim().len()).collect();
    keys.sort_unstable();
    let mut dup = 0usize;
    for w in keys.windows(2) {
        if w[0].0 == w[1].0 {
            dup += lens[w[1].1 as usize];
        }
    }
    dup as f64 / total as f64
}

/// Measures `text` and judges it.
pub fn check(text: &str, p: &RepParams, s: &mut RepScratch) -> RepReport {
    let mut r = RepReport {
        dup_line_chars: dup_share(text, "\n", &mut s.keys),
        dup_para_chars: dup_share(text, "\n\n", &mut s.keys),
        ..RepReport::default()
    };
    // Words: hash and length of each (lower-cased ASCII, punctuation stripped).
    s.words.clear();
    let mut buf = [0u8; 64];
    let mut total_chars = 0usize;
    for w in text.split_ascii_whitespace() {
        let mut n = 0;
        for &b in w.as_bytes() {
            if (b.is_ascii_alphanumeric() || b >= 0x80) && n < buf.len() {
                buf[n] = b.to_ascii_lowercase();
                n += 1;
            }
        }
        if n == 0 {
            continue;
        }
        s.words.push((hash(&buf[..n]), n as u32));
        total_chars += n;
    }
    let words = &s.words;
    if total_chars > 0 && words.len() >= MIN_WORDS {
        // Top n-gram share for n = 2, 3, 4: characters of the most frequent n-gram's
        // occurrences over all characters.
        for (k, n) in [2usize, 3, 4].into_iter().enumerate() {
            s.keys.clear();
            for (i, win) in words.windows(n).enumerate() {
                let h = win.iter().fold(0u64, |a, w| mix(a, w.0));
                s.keys.push((h, i as u32));
            }
            s.keys.sort_unstable();
            let (mut best, mut i) = (0usize, 0usize);
            while i < s.keys.len() {
                let mut j = i;
                while j < s.keys.len() && s.keys[j].0 == s.keys[i].0 {
                    j += 1;
                }
                let start = s.keys[i].1 as usize;
                let chars: usize = words[start..start + n].iter().map(|w| w.1 as usize).sum();
                best = best.max(chars * (j - i));
                i = j;
            }
            r.top_ngram[k] = best as f64 / total_chars as f64;
        }
        // Duplicated n-grams, n = 5 and 10: characters of words covered by an n-gram seen
        // earlier in the text.
        for (n, slot) in [(5usize, &mut r.dup_5gram), (10usize, &mut r.dup_10gram)] {
            if words.len() < n {
                continue;
            }
            s.keys.clear();
            for (i, win) in words.windows(n).enumerate() {
                s.keys.push((win.iter().fold(0u64, |a, w| mix(a, w.0)), i as u32));
            }
            s.keys.sort_unstable();
            s.marks.clear();
            s.marks.resize(words.len(), false);
            for w in s.keys.windows(2) {
                if w[0].0 == w[1].0 {
                    let st = w[1].1 as usize;
                    for m in &mut s.marks[st..st + n] {
                        *m = true;
                    }
                }
            }
            let dup: usize = words.iter().zip(&s.marks).filter(|(_, m)| **m).map(|(w, _)| w.1 as usize).sum();
            *slot = dup as f64 / total_chars as f64;
        }
    }
    // Back-to-back repeats of units of 1..=4 sentences.
    s.sents.clear();
    for sent in text.split(['.', '!', '?', '\n', '。']) {
        let t = sent.trim();
        if !t.is_empty() {
            s.sents.push(hash(t.as_bytes()));
        }
    }
    for period in 1..=4usize {
        let mut run = 0usize;
        for i in period..s.sents.len() {
            if s.sents[i] == s.sents[i - period] {
                run += 1;
                let reps = run / period + 1;
                if reps > r.consecutive {
                    r.consecutive = reps;
                    r.period_sentences = period;
                }
            } else {
                run = 0;
            }
        }
    }
    // Periodic tail: the last bytes equal the bytes one period earlier.
    let b = text.trim_end().as_bytes();
    let max_p = (b.len() / 3).min(2048);
    for period in 1..=max_p {
        let mut k = 0;
        while k + period < b.len() && b[b.len() - 1 - k] == b[b.len() - 1 - k - period] {
            k += 1;
        }
        if k >= 2 * period && k + period >= p.tail_bytes && k + period > r.tail_loop {
            r.tail_loop = k + period;
            r.tail_period = period;
        }
    }
    r.problem = if r.consecutive >= p.max_consecutive {
        Some(format!("a unit of {} sentence(s) repeated {} times in a row", r.period_sentences, r.consecutive))
    } else if r.tail_loop > 0 {
        Some(format!("the last {} bytes repeat a {}-byte span (runaway loop)", r.tail_loop, r.tail_period))
    } else if r.dup_line_chars > p.dup_line_chars {
        Some(format!("duplicate lines hold {:.2} of the characters (max {})", r.dup_line_chars, p.dup_line_chars))
    } else if r.dup_para_chars > p.dup_para_chars {
        Some(format!("duplicate paragraphs hold {:.2} of the characters (max {})", r.dup_para_chars, p.dup_para_chars))
    } else if let Some(k) = (0..3).find(|&k| r.top_ngram[k] > p.top_ngram[k]) {
        Some(format!("the top {}-gram covers {:.2} of the characters (max {})", k + 2, r.top_ngram[k], p.top_ngram[k]))
    } else if r.dup_5gram > p.dup_5gram {
        Some(format!("duplicated 5-grams cover {:.2} of the characters (max {})", r.dup_5gram, p.dup_5gram))
    } else if r.dup_10gram > p.dup_10gram {
        Some(format!("duplicated 10-grams cover {:.2} of the characters (max {})", r.dup_10gram, p.dup_10gram))
    } else {
        None
    };
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(t: &str) -> RepReport {
        check(t, &RepParams::default(), &mut RepScratch::default())
    }

    #[test]
    fn table() {
        let clean = "Okay, so I need to add 3 and 4. Wait, let me double-check that. 3 + 4 = 7. \
                     Alternatively, count up from 4: 5, 6, 7. Yes, it is 7.\n\nSo the answer is 7.";
        assert!(run(clean).problem.is_none(), "{:?}", run(clean));
        let looped = format!("{clean}\n\n{}", "Let me check the sum again. ".repeat(40));
        assert!(run(&looped).problem.is_some_and(|p| p.contains("in a row")), "{:?}", run(&looped));
        // A loop with no sentence ends, repeated to the end of the generation.
        let tail = format!("{clean}\n\n{}", "1, 2, 3, 4, 1, 2, 3, 4, carry the one and ".repeat(20));
        assert!(run(&tail).problem.is_some_and(|p| p.contains("runaway")), "{:?}", run(&tail));
        // Two-sentence loop.
        let two = format!("{clean} {}", "Wait, is it 7? Yes, it is 7. ".repeat(10));
        assert!(run(&two).problem.is_some(), "{:?}", run(&two));
        // The same habits spread out are not a loop.
        let habits = "Okay, so we need the number of pairs. Wait, let me double-check the setup first. \
            There are 12 items and we choose 2, so that is 66 pairs. Hmm, wait, is order important here? \
            No, the problem says unordered pairs. Alternatively, I could count ordered pairs and halve: \
            12 times 11 is 132, and half of that is 66. Wait, let me double-check that multiplication. \
            12 times 11: 12 times 10 is 120, plus 12 is 132. Yes. Let me double-check the halving too: \
            132 over 2 is 66. Alternatively, list small cases: with 3 items there are 3 pairs, with 4 \
            items 6 pairs, matching n(n-1)/2. Wait, but do we exclude pairs of identical colour? The \
            statement says the items are distinct, so no exclusion is needed. Hmm, let me reread the \
            question once more. It asks for pairs whose sum is even, which I skipped. Wait, that changes \
            everything. Even sums come from two evens or two odds: 6 evens give 15 pairs, 6 odds give 15 \
            pairs, so 30 in total. Let me double-check with the complement: odd sums are 6 times 6, which \
            is 36, and 66 minus 36 is 30. Alternatively, by symmetry the answer is close to half of 66, \
            and 30 is close. So the answer is 30.";
        assert!(run(habits).problem.is_none(), "{:?}", run(habits));
    }
}
