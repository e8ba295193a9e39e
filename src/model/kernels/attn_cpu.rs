//! Attention on the CPU without the `H × T × T` tensors: one task per (batch row, head), rows
//! taken in blocks, each block multiplying only the key columns its mask allows (about half of
//! them under a causal mask), the scores of one block living in a small scratch buffer. The
//! backward pass recomputes a block's probabilities from q and k (as flash attention does) and
//! accumulates dq, dk and dv with matrix products; nothing of size `T × T` is kept between the
//! passes or between blocks.
//!
//! Grouped-query attention is native: k and v have `kv_heads` heads, each read by
//! `heads / kv_heads` query heads in place (no repeated copies); their gradients are summed
//! over the group.
//!
//! Inputs are contiguous `(B, H, T, D)` (q) and `(B, KV, T, D)` (k, v) slices; `allowed` is the `(B, T, T)` mask of
//! [`super::ops::Attention`] (1 = may attend). A query row with no allowed key (padding) gets a
//! zero output and passes no gradient.

use num_traits::Float;
use rayon::prelude::*;

/// Rows of queries handled together.
const BLOCK: usize = 64;

/// `f32` or `f64`, the element types the kernel runs on.
pub trait Real: Float + Send + Sync + 'static + std::iter::Sum {}
impl Real for f32 {}
impl Real for f64 {}

/// Shapes of one call.
#[derive(Clone, Copy)]
pub struct Dims {
    pub batch: usize,
    pub heads: usize,
    /// Heads of k and v (a divisor of `heads`; `heads` without grouping).
    pub kv_heads: usize,
    pub seq: usize,
    pub head_dim: usize,
}

/// `dst (m × n, row stride ldd) = [dst +] scale · A · B`; A is `m × k` given by its row and
/// column strides, B `k × n` likewise.
#[allow(clippy::too_many_arguments)]
fn mm<T: Real>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    ldd: usize,
    accumulate: bool,
    a: &[T],
    (a_rs, a_cs): (usize, usize),
    b: &[T],
    (b_rs, b_cs): (usize, usize),
    scale: T,
) {
    if m == 0 || n == 0 {
        return;
    }
    // The extents every index below may reach, checked once so that the raw product is sound.
    let last = |rs: usize, cs: usize, r: usize, c: usize| (r - 1) * rs + (c - 1) * cs;
    assert!(dst.len() > last(ldd, 1, m, n), "attention: output block out of range");
    if k > 0 {
        assert!(a.len() > last(a_rs, a_cs, m, k), "attention: left operand out of range");
        assert!(b.len() > last(b_rs, b_cs, k, n), "attention: right operand out of range");
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * ldd..r * ldd + n].fill(T::zero());
            }
        }
        return;
    }
    // SAFETY: the asserts above bound every element the product reads or writes; the three
    // slices are distinct borrows, so the output does not alias the operands.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ldd as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            T::one(),
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// The allowed key columns of each query row: `[lo, hi)`, empty for a row with none.
pub fn row_ranges(allowed: &[u8], batch: usize, seq: usize) -> Vec<(u32, u32)> {
    let mut out = Vec::with_capacity(batch * seq);
    for row in allowed.chunks_exact(seq.max(1)).take(batch * seq) {
        let lo = row.iter().position(|&a| a == 1);
        let hi = row.iter().rposition(|&a| a == 1);
        out.push(match (lo, hi) {
            (Some(lo), Some(hi)) => (lo as u32, hi as u32 + 1),
            _ => (0, 0),
        });
    }
    out
}

/// The key columns a block of rows needs: the union of its rows' ranges.
fn block_range(ranges: &[(u32, u32)]) -> (usize, usize) {
    let mut lo = usize::MAX;
    let mut hi = 0;
    for &(l, h) in ranges {
        if h > l {
            lo = lo.min(l as usize);
            hi = hi.max(h as usize);
        }
    }
    if hi == 0 { (0, 0) } else { (lo, hi) }
}

/// Turns the raw scores of one block (`rows × w`, starting at key column `lo`) into
/// probabilities in place: scaled, masked, softmax per row. Masked entries become 0.
fn softmax_block<T: Real>(
    s: &mut [T],
    w: usize,
    rows: std::ops::Range<usize>,
    lo: usize,
    allowed: &[u8],
    seq: usize,
    scale: T,
) {
    for (r, i) in rows.enumerate() {
        let srow = &mut s[r * w..(r + 1) * w];
        let mask = &allowed[i * seq + lo..i * seq + lo + w];
        let mut max = T::neg_infinity();
        for (x, &a) in srow.iter_mut().zip(mask) {
            if a == 1 {
                *x = *x * scale;
                if *x > max {
                    max = *x;
                }
            }
        }
        if max == T::neg_infinity() {
            srow.fill(T::zero());
            continue;
        }
        let mut sum = T::zero();
        for (x, &a) in srow.iter_mut().zip(mask) {
            *x = if a == 1 { (*x - max).exp() } else { T::zero() };
            sum = sum + *x;
        }
        let inv = sum.recip();
        for x in srow.iter_mut() {
            *x = *x * inv;
        }
    }
}

impl Dims {
    /// Where query head `bh` (batch row × heads + head) reads its keys and values.
    fn kv_base(&self, bh: usize) -> usize {
        let (b, h) = (bh / self.heads, bh % self.heads);
        let group = self.heads / self.kv_heads.max(1);
        (b * self.kv_heads + h / group.max(1)) * self.seq * self.head_dim
    }
}

/// `out = softmax(q kᵀ · scale + mask) v`: q and out `(B, H, T, D)`, k and v `(B, KV, T, D)`.
pub fn forward<T: Real>(q: &[T], k: &[T], v: &[T], allowed: &[u8], d: Dims, scale: T) -> Vec<T> {
    let (t, hd) = (d.seq, d.head_dim);
    let ranges = row_ranges(allowed, d.batch, t);
    let mut out = vec![T::zero(); q.len()];
    out.par_chunks_mut(t * hd).enumerate().for_each(|(bh, o)| {
        let b = bh / d.heads;
        let (base, kb) = (bh * t * hd, d.kv_base(bh));
        let (q, k, v) = (&q[base..base + t * hd], &k[kb..kb + t * hd], &v[kb..kb + t * hd]);
        let mask = &allowed[b * t * t..(b + 1) * t * t];
        let mut s = vec![T::zero(); BLOCK * t];
        for r0 in (0..t).step_by(BLOCK) {
            let r1 = (r0 + BLOCK).min(t);
            let (lo, hi) = block_range(&ranges[b * t + r0..b * t + r1]);
            let (rows, w) = (r1 - r0, hi - lo);
            if w == 0 {
                o[r0 * hd..r1 * hd].fill(T::zero());
                continue;
            }
            // S = Q[r0..r1] · K[lo..hi]ᵀ
            mm((rows, w, hd), &mut s, w, false, &q[r0 * hd..], (hd, 1), &k[lo * hd..], (1, hd), T::one());
            softmax_block(&mut s, w, r0..r1, lo, mask, t, scale);
            // O[r0..r1] = P · V[lo..hi]
            mm((rows, hd, w), &mut o[r0 * hd..], hd, false, &s, (w, 1), &v[lo * hd..], (hd, 1), T::one());
        }
    });
    out
}

/// Gradients `(dq, dk, dv)` of [`forward`] given its output `o` and the output gradient `g`
/// (dk and dv shaped as k and v: each query head's share computed apart, then summed over
/// the group in head order).
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Real>(
    q: &[T],
    k: &[T],
    v: &[T],
    o: &[T],
    g: &[T],
    allowed: &[u8],
    d: Dims,
    scale: T,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (t, hd) = (d.seq, d.head_dim);
    let ranges = row_ranges(allowed, d.batch, t);
    let n = q.len();
    let (mut dq, mut dk, mut dv) = (vec![T::zero(); n], vec![T::zero(); n], vec![T::zero(); n]);
    dq.par_chunks_mut(t * hd).zip(dk.par_chunks_mut(t * hd)).zip(dv.par_chunks_mut(t * hd)).enumerate().for_each(
        |(bh, ((dq, dk), dv))| {
            let b = bh / d.heads;
            let (base, kb) = (bh * t * hd, d.kv_base(bh));
            let (span, kspan) = (base..base + t * hd, kb..kb + t * hd);
            let (q, k, v, o, g) = (&q[span.clone()], &k[kspan.clone()], &v[kspan], &o[span.clone()], &g[span]);
            let mask = &allowed[b * t * t..(b + 1) * t * t];
            let mut p = vec![T::zero(); BLOCK * t];
            let mut dp = vec![T::zero(); BLOCK * t];
            for r0 in (0..t).step_by(BLOCK) {
                let r1 = (r0 + BLOCK).min(t);
                let (lo, hi) = block_range(&ranges[b * t + r0..b * t + r1]);
                let (rows, w) = (r1 - r0, hi - lo);
                if w == 0 {
                    continue;
                }
                mm((rows, w, hd), &mut p, w, false, &q[r0 * hd..], (hd, 1), &k[lo * hd..], (1, hd), T::one());
                softmax_block(&mut p, w, r0..r1, lo, mask, t, scale);
                // dV[lo..hi] += Pᵀ · G[r0..r1]
                mm((w, hd, rows), &mut dv[lo * hd..], hd, true, &p, (1, w), &g[r0 * hd..], (hd, 1), T::one());
                // dP = G[r0..r1] · V[lo..hi]ᵀ
                mm((rows, w, hd), &mut dp, w, false, &g[r0 * hd..], (hd, 1), &v[lo * hd..], (1, hd), T::one());
                // dS = P ∘ (dP − rowsum(G ∘ O)) (the scale is applied in the products below)
                for (r, i) in (r0..r1).enumerate() {
                    let delta: T =
                        g[i * hd..(i + 1) * hd].iter().zip(&o[i * hd..(i + 1) * hd]).map(|(&a, &b)| a * b).sum();
                    let (prow, dprow) = (&p[r * w..(r + 1) * w], &mut dp[r * w..(r + 1) * w]);
                    for (x, &pv) in dprow.iter_mut().zip(prow) {
                        *x = pv * (*x - delta);
                    }
                }
                // dQ[r0..r1] = scale · dS · K[lo..hi]
                mm((rows, hd, w), &mut dq[r0 * hd..], hd, false, &dp, (w, 1), &k[lo * hd..], (hd, 1), scale);
                // dK[lo..hi] += scale · dSᵀ · Q[r0..r1]
                mm((w, hd, rows), &mut dk[lo * hd..], hd, true, &dp, (1, w), &q[r0 * hd..], (hd, 1), scale);
            }
        },
    );
    (dq, sum_groups(dk, d), sum_groups(dv, d))
}

/// Per-query-head gradients `(B, H, T, D)` summed over each key/value head's group: `(B, KV,
/// T, D)`.
fn sum_groups<T: Real>(full: Vec<T>, d: Dims) -> Vec<T> {
    let group = d.heads / d.kv_heads.max(1);
    if group <= 1 {
        return full;
    }
    let span = d.seq * d.head_dim;
    let mut out = vec![T::zero(); d.batch * d.kv_heads * span];
    out.par_chunks_mut(span).enumerate().for_each(|(bk, o)| {
        let first = (bk / d.kv_heads * d.heads + bk % d.kv_heads * group) * span;
        for src in full[first..first + group * span].chunks_exact(span) {
            o.iter_mut().zip(src).for_each(|(a, &s)| *a = *a + s);
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mask with causal rows, two packed segments in row 0 and padding at the end of row 1.
    fn mask(batch: usize, t: usize) -> Vec<u8> {
        let mut m = vec![0u8; batch * t * t];
        for b in 0..batch {
            for i in 0..t {
                let (seg_start, valid) = match b {
                    0 => (if i < t / 3 { 0 } else { t / 3 }, true),
                    _ => (0, i < t - 7),
                };
                for j in seg_start..=i {
                    if valid && (b == 0 || j < t - 7) {
                        m[b * t * t + i * t + j] = 1;
                    }
                }
            }
        }
        m
    }

    fn data(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n).map(|_| (crate::rng::splitmix64(&mut s) >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0).collect()
    }

    /// Plain loops: softmax over the allowed keys, zero for a row with none.
    fn naive(q: &[f64], k: &[f64], v: &[f64], m: &[u8], d: Dims, scale: f64) -> Vec<f64> {
        let (t, hd) = (d.seq, d.head_dim);
        let mut out = vec![0.0; q.len()];
        for bh in 0..d.batch * d.heads {
            let b = bh / d.heads;
            for i in 0..t {
                let qi = &q[(bh * t + i) * hd..][..hd];
                let s: Vec<Option<f64>> = (0..t)
                    .map(|j| {
                        (m[b * t * t + i * t + j] == 1).then(|| {
                            qi.iter().zip(&k[(bh * t + j) * hd..][..hd]).map(|(a, b)| a * b).sum::<f64>() * scale
                        })
                    })
                    .collect();
                let max = s.iter().flatten().cloned().fold(f64::NEG_INFINITY, f64::max);
                if max == f64::NEG_INFINITY {
                    continue;
                }
                let e: Vec<f64> = s.iter().map(|x| x.map_or(0.0, |x| (x - max).exp())).collect();
                let z: f64 = e.iter().sum();
                for j in 0..t {
                    for c in 0..hd {
                        out[(bh * t + i) * hd + c] += e[j] / z * v[(bh * t + j) * hd + c];
                    }
                }
            }
        }
        out
    }

    #[test]
    fn forward_matches_plain_loops_and_backward_matches_finite_differences() {
        // 150 rows: three blocks, the last one partial.
        let d = Dims { batch: 2, heads: 3, kv_heads: 3, seq: 150, head_dim: 8 };
        let n = d.batch * d.heads * d.seq * d.head_dim;
        let (q, k, v, g) = (data(n, 1), data(n, 2), data(n, 3), data(n, 4));
        let m = mask(d.batch, d.seq);
        let scale = 0.35;
        let out = forward(&q, &k, &v, &m, d, scale);
        let want = naive(&q, &k, &v, &m, d, scale);
        let worst = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-12, "forward differs from plain loops by {worst}");

        // f32 agrees with f64 to single precision.
        let f = |x: &[f64]| x.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let out32 = forward(&f(&q), &f(&k), &f(&v), &m, d, scale as f32);
        let worst = out32.iter().zip(&out).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-5, "f32 forward differs by {worst}");

        // L = Σ out ∘ g; central differences on entries of q, k and v, masked rows included.
        let (dq, dk, dv) = backward(&q, &k, &v, &out, &g, &m, d, scale);
        let loss = |q: &[f64], k: &[f64], v: &[f64]| -> f64 {
            forward(q, k, v, &m, d, scale).iter().zip(&g).map(|(a, b)| a * b).sum()
        };
        let h = 1e-6;
        for idx in [0, 7, 77, 150 * 8 - 1, 150 * 8 * 2 + 333, 150 * 8 * 3 + 5, n - 1, n - 50] {
            for (which, grad) in [(0, &dq), (1, &dk), (2, &dv)] {
                let mut plus = [q.clone(), k.clone(), v.clone()];
                let mut minus = [q.clone(), k.clone(), v.clone()];
                plus[which][idx] += h;
                minus[which][idx] -= h;
                let fd = (loss(&plus[0], &plus[1], &plus[2]) - loss(&minus[0], &minus[1], &minus[2])) / (2.0 * h);
                assert!(
                    (fd - grad[idx]).abs() <= 1e-6 * (1.0 + fd.abs()),
                    "input {which} element {idx}: finite difference {fd} vs backward {}",
                    grad[idx]
                );
            }
        }
    }

    /// Grouped heads read k and v in place: the same output as k and v repeated per query
    /// head, and dk, dv the repeated version's gradients summed over each group.
    #[test]
    fn grouped_heads_equal_repeated_keys_and_values() {
        let (batch, heads, kv_heads, seq, head_dim) = (2, 6, 2, 70, 8);
        let d = Dims { batch, heads, kv_heads, seq, head_dim };
        let full = Dims { kv_heads: heads, ..d };
        let span = seq * head_dim;
        let nq = batch * heads * span;
        let nk = batch * kv_heads * span;
        let (q, k, v, g) = (data(nq, 11), data(nk, 12), data(nk, 13), data(nq, 14));
        let group = heads / kv_heads;
        let repeat = |x: &[f64]| -> Vec<f64> {
            let mut out = Vec::with_capacity(nq);
            for b in 0..batch {
                for h in 0..heads {
                    let at = (b * kv_heads + h / group) * span;
                    out.extend_from_slice(&x[at..at + span]);
                }
            }
            out
        };
        let (kr, vr) = (repeat(&k), repeat(&v));
        let m = mask(batch, seq);
        let out = forward(&q, &k, &v, &m, d, 0.3);
        assert_eq!(out, forward(&q, &kr, &vr, &m, full, 0.3));
        let (dq, dk, dv) = backward(&q, &k, &v, &out, &g, &m, d, 0.3);
        let (dq_r, dk_r, dv_r) = backward(&q, &kr, &vr, &out, &g, &m, full, 0.3);
        assert_eq!(dq, dq_r);
        assert_eq!(dk.len(), nk);
        for (grouped, repeated) in [(&dk, &dk_r), (&dv, &dv_r)] {
            for b in 0..batch {
                for kh in 0..kv_heads {
                    for i in 0..span {
                        let want: f64 = (0..group).map(|j| repeated[(b * heads + kh * group + j) * span + i]).sum();
                        assert_eq!(grouped[(b * kv_heads + kh) * span + i], want);
                    }
                }
            }
        }
    }

    #[test]
    fn ranges_cover_exactly_the_allowed_columns() {
        let m = mask(2, 20);
        let r = row_ranges(&m, 2, 20);
        assert_eq!(r[0], (0, 1));
        assert_eq!(r[19], (6, 20));
        assert_eq!(r[20 + 19], (0, 0), "a padding row has no columns");
        assert_eq!(block_range(&r[0..10]), (0, 10));
        assert_eq!(block_range(&r[20 + 5..20 + 13]), (0, 13));
        assert_eq!(block_range(&r[20 + 13..20 + 20]), (0, 0), "a block of padding rows needs no columns");
    }
}
