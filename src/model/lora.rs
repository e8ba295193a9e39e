//! LoRA adapters (`y += scale · B A dropout(x)`, scale = alpha / r) on any of the seven
//! projections, saved in PEFT's layout and mergeable into the base weights.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use super::kernels::ops;

/// The projections LoRA can adapt, as PEFT names them in `target_modules`.
pub const TARGETS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f32,
    /// Any of `TARGETS`.
    pub targets: Vec<String>,
    /// Seed for A's initialisation and for dropout masks.
    pub seed: u64,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 16,
            alpha: 32.0,
            dropout: 0.05,
            targets: TARGETS.iter().map(|s| s.to_string()).collect(),
            seed: 0,
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// A small, seedable generator (splitmix64), so initialisation and dropout are deterministic.
#[derive(Debug)]
pub struct Rng(AtomicU64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(AtomicU64::new(seed))
    }
    pub fn next_u64(&self) -> u64 {
        let g = crate::rng::GAMMA;
        crate::rng::mix(self.0.fetch_add(g, Ordering::Relaxed).wrapping_add(g))
    }
    /// The generator's position, to replay its draws with [`Rng::set_state`].
    pub fn state(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    pub fn set_state(&self, state: u64) {
        self.0.store(state, Ordering::Relaxed)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A dropout mask of `n` elements, each `1 / keep` with probability `keep`, else 0. One draw
/// of the adapter's generator (`seed`) makes the whole mask: element `i` compares a 32-bit half
/// of the SplitMix64 output at counter `i / 2` with `keep · 2³²`. Counter-based, so the mask is
/// filled in parallel and comes out the same on any number of threads (and a resumed or
/// recomputed step replays it from the generator's position alone).
pub fn dropout_mask(seed: u64, n: usize, keep: f64) -> Vec<f32> {
    use rayon::prelude::*;
    let d = Dropout::new(seed, keep);
    let mut mask = vec![0f32; n];
    mask.par_chunks_mut(Dropout::CHUNK).enumerate().for_each(|(c, chunk)| {
        d.each(c * Dropout::CHUNK, chunk.len(), |j, m| chunk[j] = m);
    });
    mask
}

/// The mask of [`dropout_mask`] element by element, for kernels that apply it as they go
/// instead of storing it.
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    seed: u64,
    threshold: u64,
    scale: f32,
}

impl Dropout {
    /// Even, so that a chunk starts at the first half of a draw.
    pub const CHUNK: usize = 1 << 14;

    pub fn new(seed: u64, keep: f64) -> Dropout {
        let threshold = (keep.clamp(0.0, 1.0) * 4_294_967_296.0) as u64;
        Dropout { seed, threshold, scale: (1.0 / keep) as f32 }
    }

    /// Calls `f(j, mask[start + j])` for `j` in `0..len`; `start` must be even.
    #[inline(always)]
    pub fn each(&self, start: usize, len: usize, mut f: impl FnMut(usize, f32)) {
        debug_assert!(start.is_multiple_of(2), "a run of the mask starts at an even element");
        let value = |draw: u64| if draw < self.threshold { self.scale } else { 0.0 };
        let mut j = 0;
        while j < len {
            let counter = ((start + j) / 2) as u64 + 1;
            let h = crate::rng::mix(self.seed.wrapping_add(counter.wrapping_mul(crate::rng::GAMMA)));
            f(j, value(h & 0xFFFF_FFFF));
            if j + 1 < len {
                f(j + 1, value(h >> 32));
            }
            j += 2;
        }
    }
}

/// One adapter: `a` is `(r, in)`, `b` is `(out, r)`; both are tensors of trainable `Var`s.
#[derive(Clone)]
pub struct LoraAdapter {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    pub dropout: f32,
    pub rng: Arc<Rng>,
}

impl LoraAdapter {
    /// `x`: `(N, in)` → `(N, out)`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = if train && self.dropout > 0.0 {
            let mask = dropout_mask(self.rng.next_u64(), x.elem_count(), 1.0 - self.dropout as f64);
            let mut mask = Tensor::from_vec(mask, x.shape(), x.device())?;
            if x.dtype() != mask.dtype() {
                mask = mask.to_dtype(x.dtype())?;
            }
            ops::const_mul(x, &mask)?
        } else {
            x.clone()
        };
        // Scale the small (N, r) intermediate, not the (N, out) result: one activation less.
        x.matmul(&self.a.t()?)?.affine(self.scale, 0.0)?.matmul(&self.b.t()?)
    }

    /// `scale · B A`, the update merged into the base weight.
    pub fn delta(&self) -> Result<Tensor> {
        self.b.matmul(&self.a)?.affine(self.scale, 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::dropout_mask;

    #[test]
    fn dropout_mask_keeps_its_share_and_is_reproducible() {
        let n = 200_001;
        for keep in [0.95, 0.8, 0.5] {
            let m = dropout_mask(7, n, keep);
            assert_eq!(m, dropout_mask(7, n, keep), "same seed, same mask");
            assert_ne!(m, dropout_mask(8, n, keep), "another seed, another mask");
            let kept = m.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
            // 5 standard deviations of a binomial share.
            let sd = (keep * (1.0 - keep) / n as f64).sqrt();
            assert!((kept - keep).abs() < 5.0 * sd, "keep {keep}: kept {kept}");
            assert!(m.iter().all(|&v| v == 0.0 || v == (1.0 / keep) as f32));
            // Halves of one draw are not the same decision.
            let same = m.chunks(2).filter(|p| p.len() == 2 && (p[0] == 0.0) == (p[1] == 0.0)).count() as f64;
            let expect = keep * keep + (1.0 - keep) * (1.0 - keep);
            assert!((same / (n / 2) as f64 - expect).abs() < 0.01, "keep {keep}: pairs agree {same}");
        }
        assert!(dropout_mask(1, 1000, 1.0).iter().all(|&v| v == 1.0));
    }
}
