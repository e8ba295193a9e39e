//! The `repetition` check: Gopher-style repetition shares, with thresholds set for reasoning
//! traces (which repeat their verbal habits far more than web pages), plus two runaway-loop
//! detectors: the same sentence (or group of up to 4 sentences) repeated back to back, and a
//! periodic tail (the same span repeated until the generation stopped).
//!
//! In: a text and [`RepParams`]. Out: a [`RepReport`]. Self-contained (std only).

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

/// FNV-1a 64-bit over bytes with a final mix (words: short, so byte by byte is fine).
fn hash(s: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in s {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    fmix(h)
}

fn fmix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 33)
}

/// A 64-bit hash of a longer byte string (lines, paragraphs, sentences), 8 bytes a step. Only
/// equality of hashes is used, so any well-mixed 64-bit hash does.
fn hash_long(s: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = (s.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut buf = [0u8; 8];
        buf[..rest.len()].copy_from_slice(rest);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(buf)).wrapping_mul(K);
    }
    fmix(h)
}

/// The base of the n-grams' rolling hash (odd).
const ROLL: u64 = 0x9E37_79B9_7F4A_7C15;

/// An open-addressing table (linear probing) of 64-bit hashes to a count and a length,
/// reused from sample to sample: a slot is live when its stamp is the current generation.
/// Slots are 16 bytes and the load stays under 3/4, so a 3,000-word trace's table is 64 KiB.
#[derive(Default)]
struct Table {
    slots: Vec<Slot>,
    shift: u32,
    generation: u16,
}

#[derive(Default, Clone, Copy)]
struct Slot {
    key: u64,
    count: u32,
    /// The first occurrence's length (saturating).
    len: u16,
    stamp: u16,
}

impl Table {
    /// Empties the table and makes room for `n` keys.
    fn reset(&mut self, n: usize) {
        let mut cap = n.next_power_of_two().max(16);
        if n * 4 > cap * 3 {
            cap *= 2;
        }
        if self.slots.len() != cap || self.generation == u16::MAX {
            self.slots.clear();
            self.slots.resize(cap, Slot::default());
            self.shift = 64 - cap.trailing_zeros();
            self.generation = 0;
        }
        self.generation += 1;
    }

    /// Counts one occurrence of `key` (whose item is `len` long); returns the slot (its count
    /// includes this occurrence; its `len` is the first occurrence's).
    #[inline]
    fn add(&mut self, key: u64, len: usize) -> Slot {
        let mask = self.slots.len() - 1;
        let mut i = (fmix(key) >> self.shift) as usize;
        loop {
            let s = &mut self.slots[i];
            if s.stamp != self.generation {
                *s = Slot { key, count: 1, len: len.min(u16::MAX as usize) as u16, stamp: self.generation };
                return *s;
            }
            if s.key == key {
                s.count += 1;
                return *s;
            }
            i = (i + 1) & mask;
        }
    }
}

/// Reusable buffers.
#[derive(Default)]
pub struct RepScratch {
    /// Hash and length (bytes kept) of each word.
    words: Vec<(u64, u32)>,
    /// Prefix sums of word lengths.
    cum: Vec<u32>,
    sents: Vec<u64>,
    items: Vec<(u64, u32)>,
    table: Table,
}

/// Share of characters in items whose text occurs more than once, counting every occurrence
/// after the first (as Gopher does). `items`: (hash, trimmed length) of the non-empty items.
fn dup_share(items: &[(u64, u32)], t: &mut Table) -> f64 {
    let total: usize = items.iter().map(|x| x.1 as usize).sum();
    if total == 0 {
        return 0.0;
    }
    t.reset(items.len());
    let mut dup = 0usize;
    for &(h, len) in items {
        if t.add(h, len as usize).count > 1 {
            dup += len as usize;
        }
    }
    dup as f64 / total as f64
}

/// (hash, trimmed length) of the non-empty trimmed items of `text` split at `sep`
/// (`"\n"` or `"\n\n"`, split left to right as `str::split` does).
fn split_items(text: &str, para: bool, out: &mut Vec<(u64, u32)>) {
    out.clear();
    let b = text.as_bytes();
    let mut push = |item: &str| {
        let t = item.trim();
        if !t.is_empty() {
            out.push((hash_long(t.as_bytes()), t.len() as u32));
        }
    };
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\n' {
            if !para {
                push(&text[start..i]);
                start = i + 1;
            } else if i + 1 < b.len() && b[i + 1] == b'\n' {
                push(&text[start..i]);
                i += 2;
                start = i;
                continue;
            }
        }
        i += 1;
    }
    push(&text[start..]);
}

/// Measures `text` and judges it.
pub fn check(text: &str, p: &RepParams, s: &mut RepScratch) -> RepReport {
    let mut r = RepReport::default();
    split_items(text, false, &mut s.items);
    r.dup_line_chars = dup_share(&s.items, &mut s.table);
    split_items(text, true, &mut s.items);
    r.dup_para_chars = dup_share(&s.items, &mut s.table);
    // Words: hash and length of each (lower-cased ASCII, punctuation stripped).
    s.words.clear();
    let mut buf = [0u8; 64];
    let mut total_chars = 0usize;
    for w in text.as_bytes().split(|b| b.is_ascii_whitespace()) {
        let mut n = 0;
        for &b in w {
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
        s.cum.clear();
        s.cum.push(0);
        let mut acc = 0u32;
        for w in words {
            acc += w.1;
            s.cum.push(acc);
        }
        let cum = &s.cum;
        let chars = |a: usize, b: usize| (cum[b] - cum[a]) as usize;
        // Top n-gram (n = 2, 3, 4): characters of the most frequent n-gram's occurrences.
        // Duplicated n-grams (n = 5, 10): characters of words covered by an n-gram seen
        // earlier in the text. One pass (and one cache-sized table) per n.
        let m = words.len();
        let mut best = [0usize; 3];
        let mut dup = [0usize; 2];
        for (k, n) in [2usize, 3, 4, 5, 10].into_iter().enumerate() {
            let t = &mut s.table;
            t.reset(m + 1 - n);
            let mut covered = 0usize;
            // A rolling polynomial hash of the window's word hashes (only equality matters).
            let top = (1..n).fold(1u64, |a, _| a.wrapping_mul(ROLL));
            let mut h = words[..n].iter().fold(0u64, |a, w| a.wrapping_mul(ROLL).wrapping_add(w.0));
            for i in 0..=m - n {
                if i > 0 {
                    h = h
                        .wrapping_sub(words[i - 1].0.wrapping_mul(top))
                        .wrapping_mul(ROLL)
                        .wrapping_add(words[i + n - 1].0);
                }
                let slot = t.add(h, chars(i, i + n));
                if k < 3 {
                    best[k] = best[k].max(slot.len as usize * slot.count as usize);
                } else if slot.count > 1 {
                    let from = i.max(covered);
                    dup[k - 3] += chars(from, i + n);
                    covered = i + n;
                }
            }
        }
        for (top, b) in r.top_ngram.iter_mut().zip(best) {
            *top = b as f64 / total_chars as f64;
        }
        r.dup_5gram = dup[0] as f64 / total_chars as f64;
        r.dup_10gram = dup[1] as f64 / total_chars as f64;
    }
    // Back-to-back repeats of units of 1..=4 sentences (sentences end at . ! ? \n and 。).
    s.sents.clear();
    {
        let b = text.as_bytes();
        let mut push = |a: usize, e: usize| {
            let t = text[a..e].trim();
            if !t.is_empty() {
                s.sents.push(hash_long(t.as_bytes()));
            }
        };
        let (mut start, mut i) = (0usize, 0usize);
        while i < b.len() {
            match b[i] {
                b'.' | b'!' | b'?' | b'\n' => {
                    push(start, i);
                    start = i + 1;
                }
                0xE3 if b.get(i + 1) == Some(&0x80) && b.get(i + 2) == Some(&0x82) => {
                    push(start, i);
                    start = i + 3;
                    i += 3;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
        push(start, b.len());
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
