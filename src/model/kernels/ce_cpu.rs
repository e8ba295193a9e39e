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
