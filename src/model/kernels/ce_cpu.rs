//! CPU kernels of the chunked, weighted cross-entropy of `h @ w^T` (forward and backward):
//! logits of a chunk of rows come from one `gemm` (w read transposed through strides), the
//! softmax work is done row by row in place (rayon over rows), and backward turns the logits
//! buffer into `weight · (softmax − onehot)` in place before the two products `dh = P w` and
//! (when the head is trained) `dw += Pᵀ h`. Only one `rows × vocab` chunk ever exists.

use rayon::prelude::*;

use super::attn_cpu::Real as Elem;

fn threads() -> gemm::Parallelism {
    gemm::Parallelism::Rayon(rayon::current_num_threads().max(1))
}

/// `logits (len × vocab) = h[s..s+len] (len × dim) · wᵀ (dim × vocab)`.
fn logits<E: Elem>(h: &[E], w: &[E], dim: usize, vocab: usize, s: usize, len: usize, out: &mut [E]) {
    // SAFETY: h holds rows s..s+len of dim values, w vocab rows of dim, out len × vocab.
    unsafe {
        gemm::gemm(
            len,
            vocab,
            dim,
            out.as_mut_ptr(),
            1,
            vocab as isize,
            false,
            h[s * dim..].as_ptr(),
            1,
            dim as isize,
            w.as_ptr(),
            dim as isize,
            1,
            E::one(),
            E::one(),
            false,
            false,
            false,
            threads(),
        )
    }
}

fn row_lse<E: Elem>(row: &[E]) -> E {
    let m = row.iter().fold(E::neg_infinity(), |a, &x| if x > a { x } else { a });
    let sum = row.iter().fold(E::zero(), |a, &x| a + (x - m).exp());
    m + sum.ln()
}

/// Forward: `Σ_i weight_i · (lse_i − logit_i[target_i])` (in f64), every row's log-sum-exp,
/// and with `keep` every row's logits (`n × vocab`, for [`backward`] to reuse instead of
/// computing them again; without it only one chunk of rows exists at a time).
#[allow(clippy::too_many_arguments)]
pub fn forward<E: Elem>(
    h: &[E],
    w: &[E],
    dim: usize,
    vocab: usize,
    targets: &[u32],
    weights: &[f64],
    chunk_rows: usize,
    keep: bool,
) -> (f64, Vec<E>, Option<Vec<E>>) {
    let n = targets.len();
    let chunk = chunk_rows.clamp(1, n.max(1));
    let mut all = vec![E::zero(); if keep { n * vocab } else { chunk * vocab }];
    let mut lse = vec![E::zero(); n];
    let mut total = 0f64;
    for s in (0..n).step_by(chunk) {
        let len = chunk.min(n - s);
        let at = if keep { s * vocab } else { 0 };
        let buf = &mut all[at..at + len * vocab];
        logits(h, w, dim, vocab, s, len, buf);
        let ls = &mut lse[s..s + len];
        total += buf
            .par_chunks(vocab)
            .zip(ls.par_iter_mut())
            .enumerate()
            .map(|(r, (row, l))| {
                *l = row_lse(row);
                let t = targets[s + r] as usize;
                weights[s + r] * (*l - row[t]).to_f64().unwrap_or(f64::NAN)
            })
            .sum::<f64>();
    }
    (total, lse, keep.then_some(all))
}

/// Backward for an upstream gradient `g` of the summed loss: `dh` (`n × dim`) and, when
/// `need_dw`, `dw` (`vocab × dim`). `kept`: the forward's logits of every row (then none is
/// computed again), else `None`.
#[allow(clippy::too_many_arguments)]
pub fn backward<E: Elem>(
    h: &[E],
    w: &[E],
    dim: usize,
    vocab: usize,
    targets: &[u32],
    weights: &[f64],
    lse: &[E],
    g: f64,
    chunk_rows: usize,
    need_dw: bool,
    kept: Option<Vec<E>>,
) -> (Vec<E>, Option<Vec<E>>) {
    let n = targets.len();
    let chunk = chunk_rows.clamp(1, n.max(1));
    let kept = kept.filter(|k| k.len() == n * vocab);
    let reuse = kept.is_some();
    let mut all = kept.unwrap_or_else(|| vec![E::zero(); chunk * vocab]);
    let mut dh = vec![E::zero(); n * dim];
    let mut dw = need_dw.then(|| vec![E::zero(); vocab * dim]);
    for s in (0..n).step_by(chunk) {
        let len = chunk.min(n - s);
        let at = if reuse { s * vocab } else { 0 };
        let buf = &mut all[at..at + len * vocab];
        if !reuse {
            logits(h, w, dim, vocab, s, len, buf);
        }
        buf.par_chunks_mut(vocab).enumerate().for_each(|(r, row)| {
            let c = E::from(weights[s + r] * g).unwrap_or_else(E::zero);
            let l = lse[s + r];
            row.iter_mut().for_each(|x| *x = (*x - l).exp() * c);
            row[targets[s + r] as usize] = row[targets[s + r] as usize] - c;
        });
        // SAFETY: buf is len × vocab, w vocab × dim, dh/h rows s..s+len of dim, dw vocab × dim.
        unsafe {
            gemm::gemm(
                len,
                dim,
                vocab,
                dh[s * dim..].as_mut_ptr(),
                1,
                dim as isize,
                false,
                buf.as_ptr(),
                1,
                vocab as isize,
                w.as_ptr(),
                1,
                dim as isize,
                E::one(),
                E::one(),
                false,
                false,
                false,
                threads(),
            );
            if let Some(dw) = dw.as_mut() {
                gemm::gemm(
                    vocab,
                    dim,
                    len,
                    dw.as_mut_ptr(),
                    1,
                    dim as isize,
                    true,
                    buf.as_ptr(),
                    vocab as isize,
                    1,
                    h[s * dim..].as_ptr(),
                    1,
                    dim as isize,
                    E::one(),
                    E::one(),
                    false,
                    false,
                    false,
                    threads(),
                );
            }
        }
    }
    (dh, dw)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backward from the forward's kept logits and backward that computes them again, chunk by
    /// chunk, give the same gradients bit for bit (the same products of the same rows), with
    /// chunks that do not divide the rows, with and without the head's gradient.
    #[test]
    fn kept_logits_give_the_recomputed_gradients() {
        let (n, dim, vocab, chunk) = (11usize, 6usize, 37usize, 4usize);
        let mut s = 5u64;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let h: Vec<f32> = (0..n * dim).map(|_| next()).collect();
        let w: Vec<f32> = (0..vocab * dim).map(|_| next()).collect();
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 7) % vocab as u32).collect();
        let weights: Vec<f64> = (0..n).map(|i| 1.0 + i as f64 / 10.0).collect();
        let (t0, lse0, none) = forward(&h, &w, dim, vocab, &targets, &weights, chunk, false);
        let (t1, lse1, kept) = forward(&h, &w, dim, vocab, &targets, &weights, chunk, true);
        assert!(none.is_none());
        assert_eq!(kept.as_ref().map(Vec::len), Some(n * vocab));
        assert_eq!((t0, &lse0), (t1, &lse1), "keeping changes nothing in the forward");
        for need_dw in [false, true] {
            let again = backward(&h, &w, dim, vocab, &targets, &weights, &lse0, 0.5, chunk, need_dw, None);
            let reused = backward(&h, &w, dim, vocab, &targets, &weights, &lse1, 0.5, chunk, need_dw, kept.clone());
            assert_eq!(again, reused, "need_dw {need_dw}");
            assert!(again.0.iter().any(|v| *v != 0.0));
            assert_eq!(again.1.is_some(), need_dw);
        }
    }
}
