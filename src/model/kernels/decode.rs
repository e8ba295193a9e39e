//! The projections of one decoding step: `y = x W^T` for a few rows of `x` (the batch's newest
//! tokens) against a frozen f32 weight `W` of `(N, K)`, on the CPU.
//!
//! At these shapes (1 to a few dozen rows) a general GEMM spends its time packing `W^T` and, at one
//! row, runs on a single thread; the work is really streaming `W` once. This kernel walks `W`'s
//! rows in place (they are contiguous, K long), four at a time, against two rows of `x` held in
//! eight AVX2 accumulators, and splits `N` over candle's CPU worker pool.
//!
//! Every output element is computed the same way whatever the number of rows and whatever block
//! it falls in: lane-wise fused multiply-adds over `K` in order, one fixed horizontal sum, then
//! the `K % 8` tail in order. So a row decoded alone gives bit-identical logits to the same row
//! decoded in a batch.

/// Output columns per work unit of the pool (a multiple of the 4-row block).
const UNIT: usize = 32;

/// Whether this CPU runs the vector kernel (AVX2 and FMA); elsewhere callers use the generic
/// matmul.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[m * n + j] = sum_k x[m * k + kk] * w[j * k + kk]` for `m < rows`, `j < n`. `x` is
/// `(rows, k)`, `w` is `(n, k)`, `out` is `(rows, n)`, all row-major. Returns `false` (and
/// writes nothing) where [`available`] is false.
pub fn matmul_t(x: &[f32], w: &[f32], out: &mut [f32], rows: usize, k: usize, n: usize) -> bool {
    assert!(x.len() >= rows * k && w.len() >= n * k && out.len() >= rows * n, "decode matmul: slices too short");
    if !available() {
        return false;
    }
    if rows == 0 || n == 0 {
        return true;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let out_addr = out.as_mut_ptr() as usize;
        let units = n.div_ceil(UNIT);
        let run = |range: std::ops::Range<usize>| {
            let j0 = range.start * UNIT;
            let j1 = (range.end * UNIT).min(n);
            // SAFETY: AVX2 and FMA were detected above; the units own disjoint column ranges of
            // `out`, and every index stays inside the lengths asserted above.
            unsafe { avx2::block(x.as_ptr(), rows, k, w.as_ptr(), j0, j1, out_addr as *mut f32, n) };
        };
        if units == 1 || rows * k * n < 1 << 16 {
            run(0..units);
        } else {
            candle_core::utils::barrier_pool().execute_chunked(units, run);
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, w, out, rows, k, n);
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// One horizontal sum, the same for every element.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0b01));
        _mm_cvtss_f32(s)
    }

    /// `NW` rows of `w` (from `wp`) against `MX` rows of `x` (from `xp`), `k` long; writes
    /// `out[m * ldo + j]`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::needless_range_loop)] // a register tile reads clearest by index
    unsafe fn tile<const NW: usize, const MX: usize>(
        xp: *const f32,
        wp: *const f32,
        k: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); MX]; NW];
            let full = k / 8 * 8;
            let mut kk = 0;
            while kk < full {
                let mut wv = [_mm256_setzero_ps(); NW];
                for (j, v) in wv.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(wp.add(j * k + kk));
                }
                for m in 0..MX {
                    let xv = _mm256_loadu_ps(xp.add(m * k + kk));
                    for j in 0..NW {
                        acc[j][m] = _mm256_fmadd_ps(wv[j], xv, acc[j][m]);
                    }
                }
                kk += 8;
            }
            for j in 0..NW {
                for m in 0..MX {
                    let mut s = hsum(acc[j][m]);
                    for t in full..k {
                        s = (*xp.add(m * k + t)).mul_add(*wp.add(j * k + t), s);
                    }
                    *out.add(m * ldo + j) = s;
                }
            }
        }
    }

    /// Columns `j0..j1` of `out` (`rows x ldo`).
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block(
        x: *const f32,
        rows: usize,
        k: usize,
        w: *const f32,
        j0: usize,
        j1: usize,
        out: *mut f32,
        ldo: usize,
    ) {
        unsafe {
            let mut j = j0;
            while j < j1 {
                let nw = (j1 - j).min(4);
                let wp = w.add(j * k);
                let mut m = 0;
                while m < rows {
                    let mx = (rows - m).min(2);
                    let xp = x.add(m * k);
                    let op = out.add(m * ldo + j);
                    match (nw, mx) {
                        (4, 2) => tile::<4, 2>(xp, wp, k, op, ldo),
                        (4, _) => tile::<4, 1>(xp, wp, k, op, ldo),
                        (_, 2) => {
                            for r in 0..nw {
                                tile::<1, 2>(xp, wp.add(r * k), k, op.add(r), ldo);
                            }
                        }
                        _ => {
                            for r in 0..nw {
                                tile::<1, 1>(xp, wp.add(r * k), k, op.add(r), ldo);
                            }
                        }
                    }
                    m += mx;
                }
                j += nw;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], w: &[f32], rows: usize, k: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0.0; rows * n];
        for m in 0..rows {
            for j in 0..n {
                out[m * n + j] = (0..k).map(|t| x[m * k + t] as f64 * w[j * k + t] as f64).sum();
            }
        }
        out
    }

    fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                let r = crate::rng::splitmix64(&mut s);
                (r >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn matches_reference_and_is_row_independent() {
        if !available() {
            eprintln!("skipped: no AVX2/FMA on this CPU");
            return;
        }
        // Shapes with tails in every dimension: K not a multiple of 8, N not of 4 or of the
        // pool unit, odd row counts; and one large enough to go through the pool.
        for &(rows, k, n) in
            &[(1, 8, 4), (1, 13, 7), (2, 64, 33), (3, 100, 70), (5, 576, 193), (8, 576, 1536), (1, 576, 4099)]
        {
            let x = data(rows * k, 1 + rows as u64);
            let w = data(n * k, 7 + k as u64);
            let mut out = vec![0.0f32; rows * n];
            assert!(matmul_t(&x, &w, &mut out, rows, k, n));
            let want = reference(&x, &w, rows, k, n);
            for (i, (&a, &b)) in out.iter().zip(&want).enumerate() {
                assert!((a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs()), "({rows},{k},{n}) element {i}: {a} vs {b}");
            }
            // Each row alone gives bit-identical results.
            for m in 0..rows {
                let mut one = vec![0.0f32; n];
                assert!(matmul_t(&x[m * k..(m + 1) * k], &w, &mut one, 1, k, n));
                assert_eq!(one[..], out[m * n..(m + 1) * n], "({rows},{k},{n}) row {m}");
            }
        }
    }
}
