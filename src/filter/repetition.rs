//! The `repetition` check: Gopher-style repetition shares, with thresholds set for reasoning
//! traces (which repeat their verbal habits far more than web pages), plus two runaway-loop
//! detectors: the same sentence (or group of up to 4 sentences) repeated back to back, and a
//! periodic tail (the same span repeated until the generation stopped).
//!
//! In: a text and [`RepParams`]. Out: a [`RepReport`]. Self-contained (std and `scan.rs`).

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

fn fmix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 33)
}

/// A 64-bit hash of a byte string (words, lines, paragraphs, sentences), 8 bytes a step. Only
/// equality of hashes is used, so any well-mixed 64-bit hash does.
fn hash_long(s: &[u8]) -> u64 {
    hash_mapped(s, |w| w)
}

/// [`hash_long`] of the bytes that `map` makes of each 8 (zero-padded at the end; `map` must
/// keep zero bytes zero).
#[inline]
fn hash_mapped(s: &[u8], map: impl Fn(u64) -> u64) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = (s.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h.rotate_left(5) ^ map(w)).wrapping_mul(K);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut buf = [0u8; 8];
        buf[..rest.len()].copy_from_slice(rest);
        h = (h.rotate_left(5) ^ map(u64::from_le_bytes(buf))).wrapping_mul(K);
    }
    fmix(h)
}

/// An open-addressing table (linear probing, load at most 1/2) that gives each distinct
/// 64-bit key a dense id (0, 1, 2, ... in order of first occurrence), reused from sample to
/// sample. A slot holds its key's id + 1 (0: empty), 4 bytes, and the keys sit in `keys` by
/// id: the table of a few thousand keys stays in the L1 cache.
#[derive(Default)]
struct Intern {
    slots: Vec<u32>,
    keys: Vec<u64>,
    shift: u32,
}

impl Intern {
    /// Empties the table and makes room for about `n` keys (it grows past that).
    fn reset(&mut self, n: usize) {
        self.keys.clear();
        self.start((2 * n).next_power_of_two().max(16));
    }

    /// Empty slots, `cap` of them (a power of two).
    fn start(&mut self, cap: usize) {
        self.slots.clear();
        self.slots.resize(cap, 0);
        self.shift = 64 - cap.trailing_zeros();
    }

    /// The id of `key`, and whether this is its first occurrence.
    #[inline]
    fn id(&mut self, key: u64) -> (u32, bool) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let e = self.slots[i];
            if e == 0 {
                break;
            }
            if self.keys[e as usize - 1] == key {
                return (e - 1, false);
            }
            i = (i + 1) & mask;
        }
        let id = self.keys.len() as u32;
        self.slots[i] = id + 1;
        self.keys.push(key);
        if self.keys.len() * 2 > self.slots.len() {
            self.grow();
        }
        (id, true)
    }

    /// Keys seen since the last reset.
    fn len(&self) -> usize {
        self.keys.len()
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        ((key ^ (key >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// Doubles the slots, keeping every key's id.
    #[cold]
    fn grow(&mut self) {
        self.start(self.slots.len() * 2);
        let mask = self.slots.len() - 1;
        for (id, &key) in self.keys.iter().enumerate() {
            let mut i = self.home(key);
            while self.slots[i] != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = id as u32 + 1;
        }
    }
}

/// Reusable buffers.
#[derive(Default)]
pub struct RepScratch {
    /// (hash, trimmed length) of the non-empty lines and paragraphs; hashes of the sentences.
    lines: Vec<(u64, u32)>,
    paras: Vec<(u64, u32)>,
    sents: Vec<u64>,
    /// Per 64 bytes of the text: which are whitespace, which are kept in words; then each word's id
    /// (words equal after lower-casing and stripping punctuation share one).
    ws_bits: Vec<u64>,
    keep_bits: Vec<u64>,
    words: Vec<u32>,
    /// Prefix sums of word lengths (bytes kept).
    cum: Vec<u32>,
    /// Per position: the id of the n-gram starting there (`UNIQUE`: it occurs only once), for
    /// the previous and the current n.
    prev: Vec<u32>,
    cur: Vec<u32>,
    /// Per position: the (n-1)-gram there occurs twice or more; the positions looked up;
    /// occurrences of the word there.
    twice: Vec<bool>,
    live: Vec<u32>,
    occ: Vec<u32>,
    /// Occurrences of each word (`distinct` of them); per id of the current n: occurrences,
    /// and the first one's length.
    word_count: Vec<u32>,
    distinct: usize,
    count: Vec<u32>,
    first_len: Vec<u32>,
    table: Intern,
}

/// The id of an n-gram that occurs only once in the text.
const UNIQUE: u32 = u32::MAX;

/// Share of characters in items whose text occurs more than once, counting every occurrence
/// after the first (as Gopher does). `items`: (hash, trimmed length) of the non-empty items.
#[inline(always)]
fn dup_share(items: &[(u64, u32)], t: &mut Intern) -> f64 {
    let total: usize = items.iter().map(|x| x.1 as usize).sum();
    if total == 0 {
        return 0.0;
    }
    t.reset(items.len());
    let mut dup = 0usize;
    for &(h, len) in items {
        if !t.id(h).1 {
            dup += len as usize;
        }
    }
    dup as f64 / total as f64
}

/// `s.trim()`, with a shortcut for the common case of no whitespace at either end.
#[inline]
fn trim(s: &str) -> &str {
    match (s.as_bytes().first(), s.as_bytes().last()) {
        (Some(&f), Some(&l)) if f > b' ' && f < 0x80 && l > b' ' && l < 0x80 => s,
        _ => s.trim(),
    }
}

/// Lines (split at `"\n"`), paragraphs (split at `"\n\n"` left to right, as `str::split`
/// does) and sentences (ended by `. ! ? \n` and `。`) of `text`, trimmed, the empty ones
/// dropped: one scan for the bytes that can end any of them.
#[inline(always)]
fn split_all(text: &str, s: &mut RepScratch) {
    s.lines.clear();
    s.paras.clear();
    s.sents.clear();
    let b = text.as_bytes();
    let item = |a: usize, e: usize, out: &mut Vec<(u64, u32)>| {
        let t = trim(&text[a..e]);
        if !t.is_empty() {
            out.push((hash_long(t.as_bytes()), t.len() as u32));
        }
    };
    let sent = |a: usize, e: usize, out: &mut Vec<u64>| {
        let t = trim(&text[a..e]);
        if !t.is_empty() {
            out.push(hash_long(t.as_bytes()));
        }
    };
    let (mut line, mut para, mut sentence) = (0usize, 0usize, 0usize);
    // A "\n\n" may start at or after this (the second '\n' of a split pair starts none).
    let mut pair_from = 0usize;
    let mut from = 0usize;
    while let Some(i) = super::scan::find_any(b, from, [b'\n', b'.', b'!', b'?', 0xE3]) {
        from = i + 1;
        match b[i] {
            b'\n' => {
                item(line, i, &mut s.lines);
                line = i + 1;
                if i >= pair_from && b.get(i + 1) == Some(&b'\n') {
                    item(para, i, &mut s.paras);
                    para = i + 2;
                    pair_from = i + 2;
                }
                sent(sentence, i, &mut s.sents);
                sentence = i + 1;
            }
            0xE3 => {
                if b.get(i + 1) == Some(&0x80) && b.get(i + 2) == Some(&0x82) {
                    sent(sentence, i, &mut s.sents);
                    sentence = i + 3;
                    from = i + 3;
                }
            }
            _ => {
                sent(sentence, i, &mut s.sents);
                sentence = i + 1;
            }
        }
    }
    item(line, b.len(), &mut s.lines);
    item(para, b.len(), &mut s.paras);
    sent(sentence, b.len(), &mut s.sents);
}

/// The byte classes of the word split, 64 bytes at a time: bit `i` of `ws` is set where byte
/// `i` is ASCII whitespace (which separates words), of `keep` where it is an ASCII letter or
/// digit or any non-ASCII byte (kept in a word; the rest is dropped).
#[inline]
fn block_masks(c: &[u8; 64]) -> (u64, u64) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    // SAFETY: SSE2 is enabled (cfg above; every x86_64 CPU has it); the four unaligned 16-byte
    // loads read `c[16 q..16 q + 16]`, inside the 64-byte array.
    unsafe {
        use std::arch::x86_64::*;
        let set = |x: u8| _mm_set1_epi8(x as i8);
        // `x - lo < n` unsigned, as a signed compare of both sides with the top bit flipped.
        let below = |t: __m128i, n: u8| _mm_cmplt_epi8(_mm_xor_si128(t, set(0x80)), set(n ^ 0x80));
        let (mut ws, mut keep) = (0u64, 0u64);
        for q in 0..4 {
            let v = _mm_loadu_si128(c.as_ptr().add(16 * q).cast::<__m128i>());
            let w = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(v, set(b' ')), _mm_cmpeq_epi8(v, set(b'\n'))),
                _mm_or_si128(
                    _mm_or_si128(_mm_cmpeq_epi8(v, set(b'\t')), _mm_cmpeq_epi8(v, set(b'\r'))),
                    _mm_cmpeq_epi8(v, set(0x0C)),
                ),
            );
            let letter = below(_mm_sub_epi8(_mm_or_si128(v, set(0x20)), set(b'a')), 26);
            let digit = below(_mm_sub_epi8(v, set(b'0')), 10);
            // Non-ASCII bytes: their top bit, which movemask reads straight from `v`.
            let k = _mm_movemask_epi8(_mm_or_si128(letter, digit)) | _mm_movemask_epi8(v);
            ws |= u64::from(_mm_movemask_epi8(w) as u16) << (16 * q);
            keep |= u64::from(k as u16) << (16 * q);
        }
        (ws, keep)
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    block_masks_plain(c)
}

/// [`block_masks`] a byte at a time (the reference, and the build for other targets).
#[cfg_attr(all(target_arch = "x86_64", target_feature = "sse2", not(test)), allow(dead_code))]
fn block_masks_plain(c: &[u8; 64]) -> (u64, u64) {
    let (mut ws, mut keep) = (0u64, 0u64);
    for (i, &b) in c.iter().enumerate() {
        ws |= u64::from(b.is_ascii_whitespace()) << i;
        keep |= u64::from(b.is_ascii_alphanumeric() || b >= 0x80) << i;
    }
    (ws, keep)
}

/// The first position at or after `from` whose bit in `m` is `set` (`m.len() * 64` if none).
#[inline]
fn next_bit(m: &[u64], from: usize, set: bool) -> usize {
    let flip = if set { 0 } else { u64::MAX };
    let mut blk = from / 64;
    if blk >= m.len() {
        return m.len() * 64;
    }
    let mut w = (m[blk] ^ flip) & (u64::MAX << (from % 64));
    loop {
        if w != 0 {
            return blk * 64 + w.trailing_zeros() as usize;
        }
        blk += 1;
        if blk == m.len() {
            return m.len() * 64;
        }
        w = m[blk] ^ flip;
    }
}

/// Bits of `m` set in positions `a..e`.
#[inline]
fn count_bits(m: &[u64], a: usize, e: usize) -> usize {
    let (ba, be) = (a / 64, (e - 1) / 64);
    let lo = u64::MAX << (a % 64);
    let hi = u64::MAX >> (63 - (e - 1) % 64);
    if ba == be {
        return (m[ba] & lo & hi).count_ones() as usize;
    }
    let mut n = (m[ba] & lo).count_ones() + (m[be] & hi).count_ones();
    for w in &m[ba + 1..be] {
        n += w.count_ones();
    }
    n as usize
}

/// ASCII `A-Z` in the eight bytes of `x` lower-cased, every other byte as it is (SWAR).
#[inline]
fn lower8(x: u64) -> u64 {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let low7 = x & !HIGH;
    // Per byte: top bit set when the low seven bits are >= 'A', and when they are > 'Z'.
    let ge_a = low7 + 0x3F3F_3F3F_3F3F_3F3F;
    let gt_z = low7 + 0x2525_2525_2525_2525;
    let upper = (ge_a ^ gt_z) & !x & HIGH;
    x | (upper >> 2)
}

/// The key of a word from its kept bytes `w` (at most 64), lower-cased: the bytes themselves
/// when there are at most 8 (`head`: the 8 bytes from `w`'s start, whatever follows `w` among
/// them; no kept byte is 0, so the zero padding is unambiguous), else a 64-bit hash of them.
#[inline]
fn word_key(head: u64, w: &[u8]) -> u64 {
    let len = w.len();
    if len <= 8 {
        return lower8(head) & (u64::MAX >> (64 - 8 * len));
    }
    hash_mapped(w, lower8)
}

/// Words of `text` (split at ASCII whitespace; ASCII letters and digits lower-cased and
/// non-ASCII bytes kept, at most 64 bytes of each; words with none dropped) as dense ids in
/// `s.words` with prefix sums of their lengths in `s.cum`; the distinct words' occurrence
/// counts go to `s.word_count`. The byte classes come 64 at a time as bit masks
/// ([`block_masks`]); a word is then a run of non-whitespace bits, and when every byte of it is
/// kept (most words) its key is read straight from the text, else from its kept bytes copied.
#[inline(always)]
fn words(text: &str, s: &mut RepScratch) {
    let b = text.as_bytes();
    s.ws_bits.clear();
    s.keep_bits.clear();
    let (blocks, rest) = b.as_chunks::<64>();
    for c in blocks {
        let (w, k) = block_masks(c);
        s.ws_bits.push(w);
        s.keep_bits.push(k);
    }
    // The last partial block padded with spaces, then a block of spaces: every word ends
    // inside the masks.
    let mut pad = [b' '; 64];
    pad[..rest.len()].copy_from_slice(rest);
    for c in [pad, [b' '; 64]] {
        let (w, k) = block_masks(&c);
        s.ws_bits.push(w);
        s.keep_bits.push(k);
    }
    s.words.clear();
    s.cum.clear();
    s.cum.push(0);
    s.word_count.clear();
    s.table.reset(b.len() / 12 + 16);
    let (ws, keep) = (&s.ws_bits[..], &s.keep_bits[..]);
    let mut acc = 0u32;
    let mut buf = [0u8; 72];
    let mut pos = 0usize;
    loop {
        let a = next_bit(ws, pos, false);
        if a >= b.len() {
            break;
        }
        let e = next_bit(ws, a, true).min(b.len());
        pos = e;
        let kept = count_bits(keep, a, e);
        if kept == 0 {
            continue;
        }
        let len = kept.min(64);
        // Where the kept bytes start when they are one run (all of the word, or the word
        // inside punctuation such as `(3,` or `check.`): its key is then read from the text.
        let run_at = if kept == e - a {
            Some(a)
        } else if a / 64 == (e - 1) / 64 {
            let bits = (keep[a / 64] >> (a % 64)) & (u64::MAX >> (64 - (e - a)));
            let tz = bits.trailing_zeros() as usize;
            let run = bits >> tz;
            (run & (run + 1) == 0).then_some(a + tz)
        } else {
            None
        };
        let key = if let Some(a) = run_at {
            let w = &b[a..a + len];
            let head = if a + 8 <= b.len() {
                let h = &b[a..a + 8];
                u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])
            } else {
                let mut h = [0u8; 8];
                h[..b.len() - a].copy_from_slice(&b[a..]);
                u64::from_le_bytes(h)
            };
            word_key(head, w)
        } else {
            let mut n = 0;
            for (i, &c) in b[a..e].iter().enumerate() {
                if n == len {
                    break;
                }
                if keep[(a + i) / 64] >> ((a + i) % 64) & 1 == 1 {
                    buf[n] = c;
                    n += 1;
                }
            }
            buf[n..n + 8].fill(0);
            let head = u64::from_le_bytes([buf[0], buf[1], buf[2], buf[3], buf[4], buf[5], buf[6], buf[7]]);
            word_key(head, &buf[..n])
        };
        let (id, new) = s.table.id(key);
        if new {
            s.word_count.push(0);
        }
        s.word_count[id as usize] += 1;
        s.words.push(id);
        acc += len as u32;
        s.cum.push(acc);
    }
    s.distinct = s.table.len();
}

/// Measures `text` and judges it. The top n-gram shares are measured exactly only where it
/// could matter: when an upper bound from the word counts ([`top_bounds`]) is at or below
/// every threshold, `top_ngram` holds those bounds (and the verdict is the same as with the
/// exact shares); [`check_exact`] always measures them.
pub fn check(text: &str, p: &RepParams, s: &mut RepScratch) -> RepReport {
    judge(text, p, s, false)
}

/// [`check`] with the top n-gram shares always measured exactly (for threshold studies).
pub fn check_exact(text: &str, p: &RepParams, s: &mut RepScratch) -> RepReport {
    judge(text, p, s, true)
}

fn judge(text: &str, p: &RepParams, s: &mut RepScratch, exact: bool) -> RepReport {
    #[cfg(target_arch = "x86_64")]
    if super::scan::has_bit_ops() {
        #[target_feature(enable = "popcnt,lzcnt,bmi1,bmi2")]
        fn fast(text: &str, p: &RepParams, s: &mut RepScratch, exact: bool) -> RepReport {
            judge_body(text, p, s, exact)
        }
        // SAFETY: the CPU has every feature `fast` is compiled for (checked just above).
        return unsafe { fast(text, p, s, exact) };
    }
    judge_body(text, p, s, exact)
}

#[inline(always)]
fn judge_body(text: &str, p: &RepParams, s: &mut RepScratch, exact: bool) -> RepReport {
    let mut r = RepReport::default();
    split_all(text, s);
    r.dup_line_chars = dup_share(&s.lines, &mut s.table);
    r.dup_para_chars = dup_share(&s.paras, &mut s.table);
    words(text, s);
    let m = s.words.len();
    let total_chars = s.cum[m] as usize;
    if total_chars > 0 && m >= MIN_WORDS {
        let bound = top_bounds(s, total_chars);
        // Bits per word id in a packed 5-gram key.
        let bits = (usize::BITS - s.distinct.saturating_sub(1).leading_zeros()).max(1);
        if exact || 5 * bits > 64 || (0..3).any(|k| bound[k] > p.top_ngram[k]) {
            ngrams(s, &mut r, total_chars);
        } else {
            r.top_ngram = bound;
            dup_ngrams(s, &mut r, total_chars, bits);
        }
    }
    // Back-to-back repeats of units of 1..=4 sentences (sentences end at . ! ? \n and 。).
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

/// Upper bounds of the top 2-, 3- and 4-gram shares, from the word counts alone: an n-gram
/// occurs at most as often as the rarest of its words, so `min(count of its words) x its
/// characters`, maximised over positions, bounds what [`ngrams`] measures. Leaves the
/// occurrences of the word at each position in `s.occ`.
#[inline(always)]
fn top_bounds(s: &mut RepScratch, total_chars: usize) -> [f64; 3] {
    s.occ.clear();
    s.occ.extend(s.words.iter().map(|&w| s.word_count[w as usize]));
    let (occ, cum) = (&s.occ, &s.cum);
    // Every position with a whole 4-gram after it, in registers; then the last three.
    let (mut b2, mut b3, mut b4) = (0u64, 0u64, 0u64);
    for (o, c) in occ.windows(4).zip(cum.windows(5)) {
        let m2 = o[0].min(o[1]);
        let m3 = m2.min(o[2]);
        let m4 = m3.min(o[3]);
        b2 = b2.max(u64::from(m2) * u64::from(c[2] - c[0]));
        b3 = b3.max(u64::from(m3) * u64::from(c[3] - c[0]));
        b4 = b4.max(u64::from(m4) * u64::from(c[4] - c[0]));
    }
    let mut best = [b2, b3, b4];
    for i in occ.len().saturating_sub(3)..occ.len() {
        let mut least = occ[i];
        for n in 2..=4usize.min(occ.len() - i) {
            least = least.min(occ[i + n - 1]);
            let b = u64::from(least) * u64::from(cum[i + n] - cum[i]);
            best[n - 2] = best[n - 2].max(b);
        }
    }
    best.map(|b| b as f64 / total_chars as f64)
}

/// The duplicated 5- and 10-gram shares without the 2- to 4-gram levels of [`ngrams`] (same
/// values): a 5-gram can occur twice only where its five words all do, and there its key is
/// its five word ids packed `bits` bits each (exact; `5 * bits <= 64`). The 10-grams pair the
/// 5-grams at i and i+5, as in [`ngrams`]. Needs `s.occ` from [`top_bounds`].
#[inline(always)]
fn dup_ngrams(s: &mut RepScratch, r: &mut RepReport, total_chars: usize, bits: u32) {
    let m = s.words.len();
    let cum = &s.cum;
    let chars = |a: usize, b: usize| (cum[b] - cum[a]) as usize;
    // 5-grams whose words all occur twice or more start at the end of a run of 5 such words.
    s.live.clear();
    let mut run = 0usize;
    for (j, &c) in s.occ.iter().enumerate() {
        run = if c > 1 { run + 1 } else { 0 };
        if run >= 5 {
            s.live.push((j - 4) as u32);
        }
    }
    s.cur.clear();
    s.cur.resize(m - 4, UNIQUE);
    s.count.clear();
    s.count.resize(s.live.len() + 1, 0);
    s.table.reset(s.live.len());
    let (mut covered, mut dups) = (0usize, 0usize);
    for &i in &s.live {
        let i = i as usize;
        let key = s.words[i..i + 5].iter().fold(0u64, |k, &w| (k << bits) | u64::from(w));
        let (id, new) = s.table.id(key);
        s.count[id as usize] += 1;
        s.cur[i] = id;
        // Words of this 5-gram not yet covered by an earlier repeat.
        dups += if new { 0 } else { chars(i.max(covered), i + 5) };
        covered = if new { covered } else { i + 5 };
    }
    r.dup_5gram = dups as f64 / total_chars as f64;
    // 10-grams: where both 5-grams occur twice or more.
    // (Only a live position holds a 5-gram id: the 10-gram positions are a subset of them.)
    let (count, cur) = (&s.count, &s.cur);
    let twice = |id: u32| id != UNIQUE && count[id as usize] > 1;
    s.live.retain(|&i| {
        let i = i as usize;
        i + 9 < m && twice(cur[i]) && twice(cur[i + 5])
    });
    s.table.reset(s.live.len());
    let (mut covered, mut dups) = (0usize, 0usize);
    for &i in &s.live {
        let i = i as usize;
        let new = s.table.id((u64::from(s.cur[i]) << 32) | u64::from(s.cur[i + 5])).1;
        dups += if new { 0 } else { chars(i.max(covered), i + 10) };
        covered = if new { covered } else { i + 10 };
    }
    r.dup_10gram = dups as f64 / total_chars as f64;
}

/// The n-gram shares. Top n-gram (n = 2, 3, 4): characters of the most frequent n-gram's
/// occurrences (its first occurrence's length times its count). Duplicated n-grams (n = 5,
/// 10): characters of words covered by an n-gram seen earlier in the text.
///
/// N-grams get exact ids level by level: the n-gram at i is the pair (the (n-1)-gram at i, the
/// word at i+n-1), and the 10-gram the pair of the 5-grams at i and i+5. An n-gram can occur
/// twice only where both (n-1)-grams inside it do, so only those positions are looked up; the
/// others hold an n-gram that occurs once (`UNIQUE`), counted without a table.
#[inline(always)]
fn ngrams(s: &mut RepScratch, r: &mut RepReport, total_chars: usize) {
    let m = s.words.len();
    let cum = &s.cum;
    let chars = |a: usize, b: usize| cum[b] - cum[a];
    // Level 1: the words; `twice[i]`: the (n-1)-gram at i occurs more than once.
    s.twice.clear();
    s.twice.extend(s.words.iter().map(|&w| s.word_count[w as usize] > 1));
    s.prev.clear();
    s.prev.extend_from_slice(&s.words);
    let mut best = [0u64; 3];
    let mut dup = [0usize; 2];
    for n in [2usize, 3, 4, 5, 10] {
        // The 10-grams pair the 5-grams at i and i+5.
        let (step, positions) = if n == 10 { (5, m - 9) } else { (1, m + 1 - n) };
        // Positions where both halves occur twice; the others hold an n-gram seen once.
        s.live.clear();
        s.live.resize(positions + 1, 0);
        let (mut k, mut lone) = (0usize, 0u32);
        for i in 0..positions {
            let live = s.twice[i] & s.twice[i + step];
            s.live[k] = i as u32;
            k += usize::from(live);
            lone = lone.max(if live { 0 } else { chars(i, i + n) });
        }
        s.cur.clear();
        s.cur.resize(positions, UNIQUE);
        s.count.clear();
        s.count.resize(k + 1, 0);
        s.first_len.clear();
        s.first_len.resize(k + 1, 0);
        s.table.reset(k);
        let mut covered = 0usize;
        let mut dups = 0usize;
        for &i in &s.live[..k] {
            let i = i as usize;
            let second = if n == 10 { s.prev[i + 5] } else { s.words[i + n - 1] };
            let (id, new) = s.table.id((u64::from(s.prev[i]) << 32) | u64::from(second));
            let len = chars(i, i + n);
            s.count[id as usize] += 1;
            let first = &mut s.first_len[id as usize];
            *first = if new { len } else { *first };
            s.cur[i] = id;
            // Words of this n-gram not yet covered by an earlier repeat.
            let from = i.max(covered);
            dups += if new { 0 } else { chars(from, i + n) as usize };
            covered = if new { covered } else { i + n };
        }
        match n {
            2..=4 => {
                let most = s.count.iter().zip(&s.first_len).map(|(&c, &l)| u64::from(c) * u64::from(l)).max();
                best[n - 2] = most.unwrap_or(0).max(u64::from(lone));
            }
            5 => dup[0] = dups,
            _ => dup[1] = dups,
        }
        if n < 10 {
            // This level's ids and repeats feed the next; the 10-grams keep the 5-grams'.
            let count = &s.count;
            s.twice.clear();
            s.twice.extend(s.cur.iter().map(|&id| count[(id as usize).min(k)] > 1));
            std::mem::swap(&mut s.prev, &mut s.cur);
        }
    }
    for (top, b) in r.top_ngram.iter_mut().zip(best) {
        *top = b as f64 / total_chars as f64;
    }
    r.dup_5gram = dup[0] as f64 / total_chars as f64;
    r.dup_10gram = dup[1] as f64 / total_chars as f64;
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

    /// The shares by the definition: n-grams of the words as strings, counted in a map.
    fn plain(text: &str) -> ([f64; 3], f64, f64, f64, f64) {
        let words: Vec<String> = text
            .split(|c: char| c.is_ascii_whitespace())
            .map(|w| {
                let kept: Vec<u8> = w.bytes().filter(|b| b.is_ascii_alphanumeric() || *b >= 0x80).take(64).collect();
                String::from_utf8_lossy(&kept).to_ascii_lowercase()
            })
            .filter(|w| !w.is_empty())
            .collect();
        let total: usize = words.iter().map(String::len).sum();
        let mut top = [0.0; 3];
        let mut dup = [0.0; 2];
        for (k, n) in [2usize, 3, 4, 5, 10].into_iter().enumerate() {
            let mut seen: std::collections::HashMap<&[String], (usize, usize)> = Default::default();
            let (mut best, mut covered, mut d) = (0usize, 0usize, 0usize);
            for i in 0..=words.len() - n {
                let g = &words[i..i + n];
                let len: usize = g.iter().map(String::len).sum();
                let e = seen.entry(g).or_insert((0, len));
                e.0 += 1;
                best = best.max(e.0 * e.1);
                if e.0 > 1 {
                    d += words[i.max(covered)..i + n].iter().map(String::len).sum::<usize>();
                    covered = i + n;
                }
            }
            if k < 3 {
                top[k] = best as f64 / total as f64;
            } else {
                dup[k - 3] = d as f64 / total as f64;
            }
        }
        let lines = |sep: &str| {
            let items: Vec<&str> = text.split(sep).map(str::trim).filter(|t| !t.is_empty()).collect();
            let all: usize = items.iter().map(|t| t.len()).sum();
            let mut seen = std::collections::HashSet::new();
            let d: usize = items.iter().filter(|t| !seen.insert(**t)).map(|t| t.len()).sum();
            d as f64 / all as f64
        };
        (top, dup[0], dup[1], lines("\n"), lines("\n\n"))
    }

    /// The test texts' random draws (xorshift64), from `seed`.
    fn xorshift(mut rng: u64) -> impl FnMut() -> u64 {
        move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        }
    }

    #[test]
    fn byte_classes_and_lower_case_match_plain_loops() {
        let mut next = xorshift(11);
        let mut blocks: Vec<[u8; 64]> = (0..4).map(|k| std::array::from_fn(|i| (64 * k + i) as u8)).collect();
        blocks.extend((0..2000).map(|_| std::array::from_fn(|_| next() as u8)));
        for c in &blocks {
            assert_eq!(block_masks(c), block_masks_plain(c), "{c:?}");
        }
        for x in 0..=255u8 {
            let w = u64::from_le_bytes([x, b'Q', x, 0, 0x80 | x, b'@', b'[', x]);
            let want = u64::from_le_bytes(w.to_le_bytes().map(|b| b.to_ascii_lowercase()));
            assert_eq!(lower8(w), want, "byte {x:#x}");
        }
    }

    #[test]
    fn shares_match_the_definition() {
        let mut next = xorshift(7);
        // The last two: words of more than 64 kept bytes, the same in their first 64.
        let (long1, long2) = (format!("{}x", "ab".repeat(33)), format!("{}-yz.", "AB".repeat(32)));
        let vocab = [
            "wait", "Let", "me", "check.", "the", "sum", "is", "7", "so", "x", "(3,", "4)", "$y$", "café", "\n",
            "\n\n", &long1, &long2,
        ];
        for round in 0..40 {
            let n = 120 + (next() % 900) as usize;
            let mut t = String::new();
            for _ in 0..n {
                let w = vocab[(next() % (4 + round % 14) as u64) as usize];
                t.push_str(w);
                t.push(if next().is_multiple_of(9) { '\n' } else { ' ' });
            }
            let got = check_exact(&t, &RepParams::default(), &mut RepScratch::default());
            let (top, d5, d10, dl, dp) = plain(&t);
            assert_eq!((got.top_ngram, got.dup_5gram, got.dup_10gram), (top, d5, d10), "round {round}");
            assert_eq!((got.dup_line_chars, got.dup_para_chars), (dl, dp), "round {round}");
            same_verdict(&t, &got);
        }
    }

    /// `check` (bounds in place of exact top n-gram shares when they are under the thresholds,
    /// 5-grams from packed word ids) says what `check_exact` says.
    fn same_verdict(t: &str, exact: &RepReport) -> bool {
        let fast = run(t);
        assert_eq!(
            (fast.dup_5gram, fast.dup_10gram, &fast.problem),
            (exact.dup_5gram, exact.dup_10gram, &exact.problem)
        );
        for k in 0..3 {
            assert!(fast.top_ngram[k] >= exact.top_ngram[k], "{fast:?} {exact:?}");
        }
        fast.top_ngram != exact.top_ngram
    }

    #[test]
    fn bounds_and_packed_5grams_keep_the_verdict() {
        // Texts of many distinct words with phrases that recur (as reasoning habits do), some
        // with a loop: the bounds path and the exact path both run.
        let mut next = xorshift(11);
        let vocab: Vec<String> = (0..600)
            .map(|i| {
                let len = 1 + (next() % 9) as usize;
                let w: String = (0..len).map(|_| (b'a' + (next() % 26) as u8) as char).collect();
                if i % 7 == 0 {
                    format!("{w}.")
                } else if i % 11 == 0 {
                    w.to_uppercase()
                } else {
                    w
                }
            })
            .collect();
        let phrases: Vec<Vec<usize>> =
            (0..40).map(|_| (0..3 + next() % 12).map(|_| (next() % 600) as usize).collect()).collect();
        let (mut fast, mut slow) = (0, 0);
        for round in 0..60 {
            let mut t = String::new();
            for _ in 0..200 + next() % 600 {
                if next().is_multiple_of(3) {
                    for &w in &phrases[(next() % 40) as usize] {
                        t.push_str(&vocab[w]);
                        t.push(' ');
                    }
                } else {
                    t.push_str(&vocab[(next() % 600) as usize]);
                    t.push(if next().is_multiple_of(15) { '\n' } else { ' ' });
                }
            }
            if round % 5 == 0 {
                t.push_str(&"the same words again and again ".repeat(3 + round / 5));
            }
            let exact = check_exact(&t, &RepParams::default(), &mut RepScratch::default());
            // The copy built for the CPU's bit instructions (where it has them) and the
            // baseline build of the same code agree.
            for exact_mode in [false, true] {
                let base = judge_body(&t, &RepParams::default(), &mut RepScratch::default(), exact_mode);
                assert_eq!(base, judge(&t, &RepParams::default(), &mut RepScratch::default(), exact_mode));
            }
            let (top, d5, d10, _, _) = plain(&t);
            assert_eq!((exact.top_ngram, exact.dup_5gram, exact.dup_10gram), (top, d5, d10), "round {round}");
            if same_verdict(&t, &exact) {
                fast += 1;
            } else {
                slow += 1;
            }
        }
        assert!(fast > 10 && slow > 3, "bounds path {fast}, exact path {slow}");
    }
}
