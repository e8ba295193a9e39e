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
            let keep = 1.0 - self.dropout as f64;
            let n = x.elem_count();
            let mask: Vec<f32> =
                (0..n).map(|_| if self.rng.uniform() < keep { (1.0 / keep) as f32 } else { 0.0 }).collect();
            let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
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
