//! MinHash signatures, LSH banding and union-find: the near-duplicate part of `dedup`.
//!
//! **Shingles.** A prompt's normalised text ([`super::norm`]) is split into words (alphanumeric
//! runs, punctuation dropped); its shingles are the word n-grams (default 5). A prompt with fewer
//! than `short_words` words (default 10) is shingled by character n-grams (default 5) of its
//! words joined by single spaces instead, so short prompts get a usable signature too (datatrove
//! gives texts under 5 words none). Each shingle is one 64-bit hash.
//!
//! **Signature.** `num_perm` (default 256) hash functions `h_i(x) = a_i·lo(x) + b_i·hi(x) + c_i
//! (mod 2^32)` with odd random `a_i`, `b_i` drawn from the seed; the signature keeps each
//! function's minimum over the shingles. Two signatures agree in slot `i` with probability equal
//! to the Jaccard similarity `s` of the shingle sets, so the fraction of agreeing slots estimates
//! `s` (standard deviation `sqrt(s(1-s)/num_perm)`: 0.022 at s = 0.85 with 256, 0.032 with 128).
//!
//! **LSH.** The signature is cut into `b` bands of `r` rows; two prompts become a candidate pair
//! when any band is identical, which happens with probability `P(s) = 1 - (1 - s^r)^b`, an S-curve
//! around `(1/b)^(1/r)`. [`lsh_params`] picks `b·r <= num_perm` minimising
//! `w·FP + (1-w)·FN`, where FP is the area under `P` below the threshold and FN the area above
//! it under `1-P` (w = `fp_weight`, default 0.02: a missed duplicate is lost for good while a
//! spurious candidate only costs one signature comparison, since every candidate is verified).
//! With threshold 0.8 and 256 permutations this gives 28 bands × 9 rows: P(0.5) = 0.05,
//! P(0.6) = 0.25, P(0.7) = 0.68, P(0.8) = 0.982, P(0.85) = 0.9994, P(0.9) = 0.999999
//! (datatrove's fixed 14 × 8: P(0.6) = 0.21, P(0.85) = 0.988, merged unverified; the earlier
//! default here, 128 permutations at w = 0.1, gave 14 × 9 with P(0.85) = 0.975).
//!
//! **Verification.** Each candidate pair is kept only when its signature agreement is at least
//! the threshold (and, unless numbers are ignored, when both prompts carry the same sequence of
//! numbers). Verified pairs are joined by union-find whose root is always the smaller index, so
//! clusters do not depend on thread timing. [`merge_probability`] is the resulting end-to-end
//! curve (LSH × verification); at the defaults the chance that a pair is merged is
//! s = 0.6: < 1e-11, 0.7: 0.0001, 0.75: 0.03, 0.8: 0.52, 0.85: 0.986, 0.9: > 0.99999, 0.95: 1.0
//! (128 permutations, 14 × 9: 0.7: 0.002, 0.75: 0.06, 0.8: 0.43, 0.85: 0.91, 0.9: 0.999). On the
//! planted clusters of `benches/dedup_bench.sh` (200k examples) recall on pairs with Jaccard
//! >= 0.85 went from 0.9957 to 0.9996, with no false merge either way.
//!
//! Pure code with no crate imports beyond `super::norm`: it also compiles in a scratch crate.

use super::norm::{FNV_OFFSET, FNV_PRIME, fnv1a, mix64};

/// What a signature is made of. Two signatures can be compared only if made with equal params.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShingleParams {
    pub ngram: usize,
    pub char_ngram: usize,
    pub short_words: usize,
    pub num_perm: usize,
    pub seed: u64,
}

/// The hash functions of one signature layout.
#[derive(Debug, Clone)]
pub struct MinHasher {
    pub params: ShingleParams,
    a: Vec<u32>,
    b: Vec<u32>,
    c: Vec<u32>,
}

const WORD_SEED: u64 = 0x243F_6A88_85A3_08D3;
const CHAR_SEED: u64 = 0x1319_8A2E_0370_7344;
const POLY: u64 = 0x100_0000_01B3;

impl MinHasher {
    pub fn new(params: ShingleParams) -> Self {
        let mut state = params.seed ^ 0x6a09_e667_f3bc_c908;
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            mix64(state)
        };
        let n = params.num_perm.max(1);
        let (mut a, mut b, mut c) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            let x = next();
            a.push((x as u32) | 1);
            b.push(((x >> 32) as u32) | 1);
            c.push(next() as u32);
        }
        MinHasher { params: ShingleParams { num_perm: n, ..params }, a, b, c }
    }

    /// The shingle hashes of a normalised text, into `out` (cleared). `words` is scratch space.
    pub fn shingles(&self, norm: &str, words: &mut Vec<u64>, out: &mut Vec<u64>) {
        out.clear();
        words.clear();
        let n = self.params.ngram.max(1);
        if norm.is_ascii() {
            // The same words and hashes as `norm::words` + `fnv1a`, without building slices.
            let mut h = FNV_OFFSET;
            let mut in_word = false;
            for &b in norm.as_bytes() {
                if b.is_ascii_alphanumeric() || b == b'_' {
                    h = (h ^ b as u64).wrapping_mul(FNV_PRIME);
                    in_word = true;
                } else if in_word {
                    words.push(mix64(h));
                    h = FNV_OFFSET;
                    in_word = false;
                }
            }
            if in_word {
                words.push(mix64(h));
            }
        } else {
            words.extend(super::norm::words(norm).map(|w| mix64(fnv1a(w.as_bytes()))));
        }
        if words.len() >= self.params.short_words.max(n) {
            for win in words.windows(n) {
                let mut h = WORD_SEED;
                for &w in win {
                    h = h.wrapping_mul(POLY).wrapping_add(w);
                }
                out.push(mix64(h));
            }
            return;
        }
        // Short: character n-grams of the words joined by single spaces.
        let mut chars: Vec<u32> = Vec::with_capacity(norm.len());
        for (i, w) in super::norm::words(norm).enumerate() {
            if i > 0 {
                chars.push(' ' as u32);
            }
            chars.extend(w.chars().map(|c| c as u32));
        }
        if chars.is_empty() {
            return;
        }
        let k = self.params.char_ngram.max(1).min(chars.len());
        for win in chars.windows(k) {
            let mut h = CHAR_SEED;
            for &c in win {
                h = h.wrapping_mul(POLY).wrapping_add(c as u64);
            }
            out.push(mix64(h));
        }
    }

    /// The MinHash signature of a set of shingle hashes (all `u32::MAX` for an empty set).
    pub fn signature(&self, shingles: &[u64], out: &mut [u32]) {
        assert_eq!(out.len(), self.a.len(), "signature length");
        out.fill(u32::MAX);
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2, checked just above.
                unsafe { sig_avx2(&self.a, &self.b, &self.c, shingles, out) };
                return;
            }
        }
        sig_generic(&self.a, &self.b, &self.c, shingles, out);
    }
}

#[inline(always)]
fn sig_generic(a: &[u32], b: &[u32], c: &[u32], shingles: &[u64], out: &mut [u32]) {
    // Lanes of 8 so the compiler keeps a block of minima in vector registers.
    const L: usize = 8;
    let n = out.len();
    let whole = n / L * L;
    for base in (0..whole).step_by(L) {
        let a: &[u32; L] = a[base..base + L].try_into().expect("lane");
        let b: &[u32; L] = b[base..base + L].try_into().expect("lane");
        let c: &[u32; L] = c[base..base + L].try_into().expect("lane");
        let mut m = [u32::MAX; L];
        for &h in shingles {
            let x = h as u32;
            let y = (h >> 32) as u32;
            for j in 0..L {
                let v = a[j].wrapping_mul(x).wrapping_add(b[j].wrapping_mul(y)).wrapping_add(c[j]);
                m[j] = m[j].min(v);
            }
        }
        out[base..base + L].copy_from_slice(&m);
    }
    for i in whole..n {
        let mut m = u32::MAX;
        for &h in shingles {
            let v = a[i].wrapping_mul(h as u32).wrapping_add(b[i].wrapping_mul((h >> 32) as u32)).wrapping_add(c[i]);
            m = m.min(v);
        }
        out[i] = m;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sig_avx2(a: &[u32], b: &[u32], c: &[u32], shingles: &[u64], out: &mut [u32]) {
    sig_generic(a, b, c, shingles, out)
}

/// Fraction of equal slots: the Jaccard estimate of two signatures.
pub fn agreement(a: &[u32], b: &[u32]) -> f64 {
    if a.is_empty() {
        return 0.0;
    }
    equal_slots(a, b) as f64 / a.len() as f64
}

/// Number of equal slots.
#[inline]
pub fn equal_slots(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).map(|(x, y)| (x == y) as usize).sum()
}

/// The least number of equal slots (out of `num_perm`) that counts as a match at `threshold`.
pub fn min_equal_slots(threshold: f64, num_perm: usize) -> usize {
    let t = (threshold * num_perm as f64 - 1e-9).ceil();
    (t.max(0.0) as usize).min(num_perm)
}

/// The key of band `band` (rows `band*rows .. (band+1)*rows`) of a signature.
#[inline]
pub fn band_key(sig: &[u32], band: usize, rows: usize) -> u64 {
    let mut h = 0x9E37_79B9_7F4A_7C15u64 ^ (band as u64);
    for &v in &sig[band * rows..(band + 1) * rows] {
        h = mix64(h ^ v as u64).wrapping_add(v as u64);
    }
    h
}

/// Probability that a pair with Jaccard `s` shares at least one of `b` bands of `r` rows.
pub fn candidate_probability(s: f64, b: usize, r: usize) -> f64 {
    1.0 - (1.0 - s.powi(r as i32)).powi(b as i32)
}

/// Probability that `Binomial(n, s) >= k`: a pair with Jaccard `s` passes verification.
pub fn verify_probability(s: f64, n: usize, k: usize) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if s <= 0.0 {
        return 0.0;
    }
    if s >= 1.0 {
        return 1.0;
    }
    // Sum of the upper tail in log space.
    let (ls, lq) = (s.ln(), (1.0 - s).ln());
    let mut lchoose = 0.0f64; // ln C(n, 0)
    let mut total = 0.0;
    for i in 0..=n {
        if i > 0 {
            lchoose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        if i >= k {
            total += (lchoose + i as f64 * ls + (n - i) as f64 * lq).exp();
        }
    }
    total.min(1.0)
}

/// End-to-end probability that a pair with Jaccard `s` is merged: candidate, then verified.
pub fn merge_probability(s: f64, b: usize, r: usize, threshold: f64, num_perm: usize) -> f64 {
    candidate_probability(s, b, r) * verify_probability(s, num_perm, min_equal_slots(threshold, num_perm))
}

fn integrate(f: impl Fn(f64) -> f64, lo: f64, hi: f64) -> f64 {
    let steps = 200;
    let h = (hi - lo) / steps as f64;
    (0..steps).map(|i| f(lo + (i as f64 + 0.5) * h) * h).sum()
}

/// Bands and rows (`b·r <= num_perm`) minimising `fp_weight·FP + (1-fp_weight)·FN` at `threshold`.
pub fn lsh_params(threshold: f64, num_perm: usize, fp_weight: f64) -> (usize, usize) {
    let mut best = (1, num_perm.max(1));
    let mut best_err = f64::INFINITY;
    for b in 1..=num_perm.max(1) {
        for r in 1..=num_perm / b {
            let fp = integrate(|s| candidate_probability(s, b, r), 0.0, threshold);
            let fnr = integrate(|s| 1.0 - candidate_probability(s, b, r), threshold, 1.0);
            let err = fp_weight * fp + (1.0 - fp_weight) * fnr;
            if err < best_err - 1e-12 {
                best_err = err;
                best = (b, r);
            }
        }
    }
    best
}

/// Disjoint sets over `0..n`; a set's root is always its smallest member.
#[derive(Debug, Clone)]
pub struct UnionFind {
    parent: Vec<u32>,
}

impl UnionFind {
    pub fn new(n: usize) -> Self {
        UnionFind { parent: (0..n as u32).collect() }
    }

    pub fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let p = self.parent[x as usize];
            self.parent[x as usize] = self.parent[p as usize];
            x = p;
        }
        x
    }

    /// Joins the sets of `a` and `b`; returns false when they were already one.
    pub fn union(&mut self, a: u32, b: u32) -> bool {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return false;
        }
        let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
        self.parent[hi as usize] = lo;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::norm::normalized;
    use super::*;

    fn hasher(num_perm: usize) -> MinHasher {
        MinHasher::new(ShingleParams { ngram: 5, char_ngram: 5, short_words: 10, num_perm, seed: 1 })
    }

    fn sig(h: &MinHasher, text: &str) -> Vec<u32> {
        let (mut w, mut s) = (Vec::new(), Vec::new());
        h.shingles(&normalized(text), &mut w, &mut s);
        let mut out = vec![0; h.params.num_perm];
        h.signature(&s, &mut out);
        out
    }

    #[test]
    fn shingle_kinds() {
        let h = hasher(16);
        let (mut w, mut s) = (Vec::new(), Vec::new());
        h.shingles("one two three four five six seven eight nine ten eleven", &mut w, &mut s);
        assert_eq!(s.len(), 7, "11 words give 7 word 5-grams");
        h.shingles("what is 2+2?", &mut w, &mut s);
        assert_eq!(s.len(), "what is 2 2".len() - 4, "short: char 5-grams");
        h.shingles("hi", &mut w, &mut s);
        assert_eq!(s.len(), 1);
        h.shingles("", &mut w, &mut s);
        assert!(s.is_empty());
        // The ASCII fast path hashes words as the general path does.
        let (mut w2, mut s2) = (Vec::new(), Vec::new());
        h.shingles("a1 b2, c3 d4 e5 f6 g7 h8 i9 j10 k11 é", &mut w, &mut s);
        h.shingles("a1 b2, c3 d4 e5 f6 g7 h8 i9 j10 k11", &mut w2, &mut s2);
        assert_eq!(&w[..11], &w2[..]);
    }

    #[test]
    fn estimates_track_true_jaccard() {
        // Sets of random shingles with a known overlap: the estimate's mean and spread.
        let h = hasher(128);
        let mut state = 7u64;
        let mut rnd = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            mix64(state)
        };
        for &(common, only) in &[(80usize, 10usize), (60, 20), (50, 50), (17, 1)] {
            let want = common as f64 / (common + 2 * only) as f64;
            let trials = 300;
            let mut sum = 0.0;
            let mut sq = 0.0;
            for _ in 0..trials {
                let base: Vec<u64> = (0..common).map(|_| rnd()).collect();
                let mut x = base.clone();
                let mut y = base;
                x.extend((0..only).map(|_| rnd()));
                y.extend((0..only).map(|_| rnd()));
                let (mut sx, mut sy) = (vec![0; 128], vec![0; 128]);
                h.signature(&x, &mut sx);
                h.signature(&y, &mut sy);
                let e = agreement(&sx, &sy);
                sum += e;
                sq += (e - want) * (e - want);
            }
            let mean = sum / trials as f64;
            let sd = (sq / trials as f64).sqrt();
            let theory = (want * (1.0 - want) / 128.0).sqrt();
            assert!((mean - want).abs() < 0.01, "J={want}: mean {mean}");
            assert!(sd < theory * 1.2, "J={want}: sd {sd} vs {theory}");
        }
    }

    #[test]
    fn normalisation_makes_respacing_and_recasing_identical() {
        let h = hasher(64);
        let a = sig(&h, "Let x be the number of apples that Mary has after she gives three to Tom.");
        let b = sig(&h, "let X  be the number of apples,\nthat MARY has after she gives three to tom");
        assert_eq!(a, b);
    }

    #[test]
    fn lsh_curve_for_the_default() {
        let (b, r) = lsh_params(0.8, 256, 0.02);
        assert_eq!((b, r), (28, 9));
        assert!(candidate_probability(0.5, b, r) < 0.06, "{b}x{r}");
        assert!(candidate_probability(0.85, b, r) > 0.999, "{b}x{r}");
        let t = min_equal_slots(0.8, 256);
        assert_eq!(t, 205);
        assert!(merge_probability(0.85, b, r, 0.8, 256) > 0.98);
        assert!(merge_probability(0.9, b, r, 0.8, 256) > 0.99999);
        assert!(merge_probability(0.7, b, r, 0.8, 256) < 2e-4);
        assert!(merge_probability(0.6, b, r, 0.8, 256) < 1e-11);
        // The earlier default, for the record.
        assert_eq!(lsh_params(0.8, 128, 0.1), (14, 9));
        assert_eq!(min_equal_slots(0.8, 128), 103);
        assert!(merge_probability(0.95, 14, 9, 0.8, 128) > 0.99);
        assert!(merge_probability(0.6, 14, 9, 0.8, 128) < 1e-6);
    }

    #[test]
    fn band_keys_and_union_find() {
        let s = [1u32, 2, 3, 4, 5, 6];
        let t = [1u32, 2, 3, 9, 5, 6];
        assert_eq!(band_key(&s, 0, 3), band_key(&t, 0, 3));
        assert_ne!(band_key(&s, 1, 3), band_key(&t, 1, 3));
        assert_ne!(band_key(&s, 0, 3), band_key(&s, 1, 3), "bands are keyed apart");
        let mut uf = UnionFind::new(5);
        assert!(uf.union(3, 1));
        assert!(uf.union(4, 3));
        assert!(!uf.union(1, 4));
        assert_eq!((uf.find(4), uf.find(3), uf.find(0)), (1, 1, 0));
    }
}
