//! AdamW with decoupled weight decay, fused and in place over the parameter buffers, plus global
//! gradient-norm clipping and gradient accumulation.
//!
//! In: the trainable [`Var`]s (named as in the checkpoint) and, each micro-batch, the
//! [`GradStore`] of a backward pass. Out: the parameters updated in place.
//!
//! The math is PyTorch's `torch.optim.AdamW` (single-tensor path, `amsgrad=False`), operation
//! for operation in f32 with the scalars computed in f64 as Python does:
//! `p *= 1 - lr*wd; m.lerp_(g, 1-β1); v = v*β2 + (1-β2)*g*g; p += -(lr/bc1) * m / (sqrt(v)/sqrt(bc2) + ε)`.
//! Clipping is `torch.nn.utils.clip_grad_norm_`: `g *= min(1, max_norm / (‖g‖ + 1e-6))`.
//!
//! On the CPU with f32 parameters the moments live in plain `Vec<f32>`s and one pass over each
//! parameter (split into chunks run by rayon) reads p, g, m, v and writes p, m, v: no temporary
//! tensors, no allocation. Other devices and dtypes (the `cuda` feature's bf16 weights) take a
//! tensor-op path with f32 moments and f32 master weights.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Storage, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Elements per parallel work item (256 KiB of f32 per buffer).
const CHUNK: usize = 64 * 1024;

/// Errors of the optimiser.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error("optimizer: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("optimizer state {path}: {msg}; delete the checkpoint or resume with the settings that wrote it")]
    State { path: PathBuf, msg: String },
    #[error("optimizer: parameter {name}: {msg}")]
    Param { name: String, msg: String },
}

/// AdamW hyper-parameters (the learning rate comes from the schedule at each step).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay; never applied to norms and biases (parameters of rank < 2 or
    /// whose name contains "norm").
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// Whether weight decay applies to a parameter: not to norms and biases.
pub fn decays(name: &str, rank: usize) -> bool {
    rank >= 2 && !name.contains("norm") && !name.ends_with("bias")
}

/// The factor `clip_grad_norm_` multiplies the gradients by.
pub fn clip_factor(norm: f64, max_norm: Option<f64>) -> f64 {
    match max_norm {
        Some(max) if max > 0.0 => (max / (norm + 1e-6)).min(1.0),
        _ => 1.0,
    }
}

enum State {
    /// CPU, f32 parameters: the fused path.
    Host { m: Vec<f32>, v: Vec<f32> },
    /// Anything else: f32 tensors on the parameter's device.
    Device { m: Tensor, v: Tensor, master: Option<Tensor> },
}

struct Param {
    name: String,
    var: Var,
    decay: bool,
    state: State,
}

/// Summed gradients of the trainable parameters over the micro-batches of one step.
pub struct Grads {
    acc: Vec<Option<Tensor>>,
}

impl Grads {
    /// Whether no micro-batch gave a gradient yet.
    pub fn is_empty(&self) -> bool {
        self.acc.iter().all(Option::is_none)
    }
}

/// The AdamW optimiser over a fixed list of named parameters.
pub struct AdamW {
    cfg: AdamWConfig,
    params: Vec<Param>,
    steps: u64,
}

impl AdamW {
    /// An optimiser with zero moments over these parameters (names must be unique).
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self, OptimError> {
        let mut params = Vec::with_capacity(vars.len());
        for (name, var) in vars {
            let n = var.elem_count();
            let state = if is_host_f32(var.as_tensor()) {
                State::Host { m: vec![0.0; n], v: vec![0.0; n] }
            } else {
                let t = var.as_tensor();
                let zeros = Tensor::zeros(t.shape(), DType::F32, t.device())?;
                let master = if t.dtype() == DType::F32 { None } else { Some(t.to_dtype(DType::F32)?) };
                State::Device { m: zeros.clone(), v: zeros, master }
            };
            let decay = decays(&name, var.rank());
            params.push(Param { name, var, decay, state });
        }
        Ok(AdamW { cfg, params, steps: 0 })
    }

    /// Optimizer steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.params.iter().map(|p| p.var.elem_count()).sum()
    }

    /// The parameters' names with whether weight decay applies to each.
    pub fn decay_table(&self) -> Vec<(String, bool)> {
        self.params.iter().map(|p| (p.name.clone(), p.decay)).collect()
    }

    /// An empty gradient accumulator for one step.
    pub fn new_grads(&self) -> Grads {
        Grads { acc: vec![None; self.params.len()] }
    }

    /// Gradients given directly, one per parameter in order (benchmarks, custom backward passes).
    pub fn grads_from(&self, tensors: Vec<Option<Tensor>>) -> Result<Grads, OptimError> {
        if tensors.len() != self.params.len() {
            return Err(OptimError::Param {
                name: "gradients".into(),
                msg: format!("{} given for {} parameters", tensors.len(), self.params.len()),
            });
        }
        Ok(Grads { acc: tensors })
    }

    /// Adds the gradients of one backward pass to `grads` (and drops the rest of the store, such
    /// as the gradients of activations and masks, at once).
    pub fn accumulate(&self, grads: &mut Grads, mut store: GradStore) -> Result<(), OptimError> {
        for (p, slot) in self.params.iter().zip(grads.acc.iter_mut()) {
            let Some(g) = store.remove(p.var.as_tensor()) else { continue };
            *slot = Some(match slot.take() {
                None => g,
                Some(prev) => add(&prev, &g)?,
            });
        }
        Ok(())
    }

    /// The global L2 norm of `scale * grads` (NaN or infinite when any gradient is).
    pub fn grad_norm(&self, grads: &Grads, scale: f64) -> Result<f64, OptimError> {
        let mut sum = 0.0f64;
        for g in grads.acc.iter().flatten() {
            sum += if is_host_f32(g) {
                // Per-chunk sums collected in order and added sequentially: the same bits on
                // every run (rayon's own `sum` adds in an order that depends on scheduling).
                with_host_f32(g, |s| {
                    let parts: Vec<f64> = s.par_chunks(CHUNK).map(sum_squares).collect();
                    parts.iter().sum::<f64>()
                })?
            } else {
                g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?
            };
        }
        Ok(sum.sqrt() * scale.abs())
    }

    /// One AdamW update with learning rate `lr`, each gradient multiplied by `grad_scale` first
    /// (the clip factor times any loss normalisation). Parameters without a gradient are left
    /// as they are, as PyTorch does.
    pub fn step(&mut self, grads: &Grads, lr: f64, grad_scale: f64) -> Result<(), OptimError> {
        self.steps += 1;
        let c = self.cfg;
        let t = self.steps as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        for (p, g) in self.params.iter_mut().zip(grads.acc.iter()) {
            let Some(g) = g else { continue };
            let wd = if p.decay { c.weight_decay } else { 0.0 };
            let k = Scalars {
                gs: grad_scale as f32,
                decay: (1.0 - lr * wd) as f32,
                one_minus_b1: (1.0 - c.beta1) as f32,
                b2: c.beta2 as f32,
                one_minus_b2: (1.0 - c.beta2) as f32,
                bc2_sqrt: bc2.sqrt() as f32,
                eps: c.eps as f32,
                neg_step_size: (-(lr / bc1)) as f32,
            };
            match &mut p.state {
                State::Host { m, v } => {
                    let g = if is_host_f32(g) { g.clone() } else { g.to_dtype(DType::F32)?.to_device(&Device::Cpu)? };
                    let g = g.contiguous()?;
                    let op = Fused { m: RefCell::new(m.as_mut_slice()), v: RefCell::new(v.as_mut_slice()), k };
                    p.var.as_tensor().inplace_op2(&g, &op)?;
                }
                State::Device { m, v, master } => {
                    let g = (g.to_dtype(DType::F32)? * grad_scale)?;
                    let w = match master {
                        Some(w) => w.clone(),
                        None => p.var.as_tensor().detach(),
                    };
                    let w = (w * (1.0 - lr * wd))?;
                    *m = ((&*m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
                    *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                    let denom = ((v.sqrt()? / bc2.sqrt())? + c.eps)?;
                    let w = (w - ((&*m / denom)? * (lr / bc1))?)?;
                    if master.is_some() {
                        p.var.set(&w.to_dtype(p.var.dtype())?)?;
                        *master = Some(w);
                    } else {
                        p.var.set(&w)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes the moments (and f32 master weights) to a safetensors file.
    pub fn save_state(&self, path: &Path) -> Result<(), OptimError> {
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for p in &self.params {
            let shape = p.var.shape().clone();
            match &p.state {
                State::Host { m, v } => {
                    map.insert(format!("m.{}", p.name), Tensor::from_slice(m, &shape, &Device::Cpu)?);
                    map.insert(format!("v.{}", p.name), Tensor::from_slice(v, &shape, &Device::Cpu)?);
                }
                State::Device { m, v, master } => {
                    map.insert(format!("m.{}", p.name), m.to_device(&Device::Cpu)?);
                    map.insert(format!("v.{}", p.name), v.to_device(&Device::Cpu)?);
                    if let Some(w) = master {
                        map.insert(format!("master.{}", p.name), w.to_device(&Device::Cpu)?);
                    }
                }
            }
        }
        candle_core::safetensors::save(&map, path)?;
        Ok(())
    }

    /// Restores the moments written by [`AdamW::save_state`] and the step count.
    pub fn load_state(&mut self, path: &Path, steps: u64) -> Result<(), OptimError> {
        let err = |msg: String| OptimError::State { path: path.to_path_buf(), msg };
        let mut map = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| err(e.to_string()))?;
        for p in &mut self.params {
            let mut take = |kind: &str| -> Result<Tensor, OptimError> {
                let t = map
                    .remove(&format!("{kind}.{}", p.name))
                    .ok_or_else(|| err(format!("no {kind} for {}", p.name)))?;
                if t.shape() != p.var.shape() {
                    return Err(err(format!(
                        "{} has shape {:?}, the model has {:?}",
                        p.name,
                        t.shape(),
                        p.var.shape()
                    )));
                }
                Ok(t.to_dtype(DType::F32)?)
            };
            match &mut p.state {
                State::Host { m, v } => {
                    *m = take("m")?.flatten_all()?.to_vec1::<f32>()?;
                    *v = take("v")?.flatten_all()?.to_vec1::<f32>()?;
                }
                State::Device { m, v, master } => {
                    let dev = p.var.device().clone();
                    *m = take("m")?.to_device(&dev)?;
                    *v = take("v")?.to_device(&dev)?;
                    if master.is_some() {
                        *master = Some(take("master")?.to_device(&dev)?);
                    }
                }
            }
        }
        if let Some(extra) = map.keys().next() {
            return Err(err(format!("holds state for {extra}, which is not a trainable parameter of this model")));
        }
        self.steps = steps;
        Ok(())
    }
}

fn is_host_f32(t: &Tensor) -> bool {
    matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32
}

/// Runs `f` on the f32 elements of a CPU tensor (made contiguous first when needed).
fn with_host_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R, OptimError> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| OptimError::Param { name: "gradient".into(), msg: "not contiguous".into() })?;
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => Ok(f(&v[start..end])),
        _ => Err(OptimError::Param { name: "gradient".into(), msg: "not an f32 CPU tensor".into() }),
    }
}

/// Σx² of a chunk: 16 f32 lanes (vectorised; at most 4K terms each) added up in f64.
fn sum_squares(c: &[f32]) -> f64 {
    let mut lanes = [0f32; 16];
    let mut it = c.chunks_exact(16);
    for x in &mut it {
        for (l, v) in lanes.iter_mut().zip(x) {
            *l += v * v;
        }
    }
    let tail: f64 = it.remainder().iter().map(|&x| (x as f64) * (x as f64)).sum();
    lanes.iter().map(|&l| l as f64).sum::<f64>() + tail
}

/// `a + b`, in parallel on the CPU (candle's own CPU binary ops run on one thread).
fn add(a: &Tensor, b: &Tensor) -> Result<Tensor, OptimError> {
    if !(is_host_f32(a) && is_host_f32(b)) {
        return Ok((a + b)?);
    }
    let out = with_host_f32(a, |a| {
        with_host_f32(b, |b| {
            let mut out = vec![0f32; a.len()];
            out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK)).zip(b.par_chunks(CHUNK)).for_each(|((o, a), b)| {
                for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                    *o = a + b;
                }
            });
            out
        })
    })??;
    Ok(Tensor::from_vec(out, a.shape(), &Device::Cpu)?)
}

#[derive(Clone, Copy)]
struct Scalars {
    gs: f32,
    decay: f32,
    one_minus_b1: f32,
    b2: f32,
    one_minus_b2: f32,
    bc2_sqrt: f32,
    eps: f32,
    neg_step_size: f32,
}

/// The fused update of one parameter; `m` and `v` are the optimiser's own buffers.
struct Fused<'a> {
    m: RefCell<&'a mut [f32]>,
    v: RefCell<&'a mut [f32]>,
    k: Scalars,
}

impl InplaceOp2 for Fused<'_> {
    fn name(&self) -> &'static str {
        "fused-adamw"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        let (Some((p0, p1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("fused-adamw: parameter or gradient is not contiguous")
        };
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (s1, s2) else {
            candle_core::bail!("fused-adamw: parameter and gradient must be f32")
        };
        let (p, g) = (&mut p[p0..p1], &g[g0..g1]);
        let mut m = self.m.borrow_mut();
        let mut v = self.v.borrow_mut();
        if p.len() != g.len() || p.len() != m.len() || p.len() != v.len() {
            candle_core::bail!("fused-adamw: parameter, gradient and moments differ in size")
        }
        let k = self.k;
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| update(p, m, v, g, &k));
        Ok(())
    }
}

/// The per-element AdamW update, in PyTorch's order of f32 operations.
#[inline]
fn update(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], k: &Scalars) {
    for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
        let g = g * k.gs;
        let w = *p * k.decay;
        // lerp with weight 1-β1 < 0.5: self + weight * (end - self)
        let mm = *m + k.one_minus_b1 * (g - *m);
        let vv = *v * k.b2 + k.one_minus_b2 * g * g;
        let denom = vv.sqrt() / k.bc2_sqrt + k.eps;
        *p = w + k.neg_step_size * mm / denom;
        *m = mm;
        *v = vv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(name: &str, data: &[f32], shape: &[usize]) -> (String, Var) {
        (name.to_string(), Var::from_tensor(&Tensor::from_slice(data, shape, &Device::Cpu).unwrap()).unwrap())
    }

    /// Gradients as a backward pass would give them: loss = sum(p * c) has gradient c.
    fn grads_for(opt: &AdamW, coeffs: &[Vec<f32>]) -> Grads {
        let mut grads = opt.new_grads();
        let mut loss = Tensor::new(0f32, &Device::Cpu).unwrap();
        for (p, c) in opt.params.iter().zip(coeffs) {
            let c = Tensor::from_slice(c, p.var.shape(), &Device::Cpu).unwrap();
            loss = (loss + (p.var.as_tensor() * c).unwrap().sum_all().unwrap()).unwrap();
        }
        opt.accumulate(&mut grads, loss.backward().unwrap()).unwrap();
        grads
    }

    fn values(v: &Var) -> Vec<f32> {
        v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// AdamW in f64 straight from the paper/PyTorch docs, as the reference.
    fn reference(p0: &[f64], grads: &[Vec<f64>], lrs: &[f64], cfg: AdamWConfig, wd: bool) -> Vec<f64> {
        let (mut p, mut m, mut v) = (p0.to_vec(), vec![0.0; p0.len()], vec![0.0; p0.len()]);
        for (t, (g, &lr)) in grads.iter().zip(lrs).enumerate() {
            let t = t as i32 + 1;
            for i in 0..p.len() {
                if wd {
                    p[i] *= 1.0 - lr * cfg.weight_decay;
                }
                m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * g[i];
                v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * g[i] * g[i];
                let mhat = m[i] / (1.0 - cfg.beta1.powi(t));
                let vhat = v[i] / (1.0 - cfg.beta2.powi(t));
                p[i] -= lr * mhat / (vhat.sqrt() + cfg.eps);
            }
        }
        p
    }

    #[test]
    fn first_step_moves_each_weight_by_lr_times_the_sign_of_its_gradient() {
        let cfg = AdamWConfig::default();
        let mut opt = AdamW::new(vec![var("w", &[1.0, -2.0, 0.5, 3.0], &[2, 2])], cfg).unwrap();
        let grads = grads_for(&opt, &[vec![0.3, -4.0, 1e-3, 0.0]]);
        opt.step(&grads, 0.1, 1.0).unwrap();
        // m̂ = g, v̂ = g², so the update is lr * g / (|g| + ε).
        let want = [1.0 - 0.1, -2.0 + 0.1, 0.5 - 0.1 * 1e-3 / (1e-3 + 1e-8), 3.0];
        for (g, w) in values(&opt.params[0].var).iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{g} != {w}");
        }
    }

    #[test]
    fn several_steps_match_the_f64_reference_with_decay_off_for_norms_and_biases() {
        let cfg = AdamWConfig { beta1: 0.8, beta2: 0.95, eps: 1e-6, weight_decay: 0.1 };
        let w0 = [0.5f32, -1.5, 2.0, 0.25, -0.75, 1.0];
        let b0 = [0.1f32, -0.2, 0.3];
        let n0 = [1.0f32, 1.0, 1.0];
        let mut opt = AdamW::new(
            vec![
                var("model.layers.0.mlp.up_proj.weight", &w0, &[3, 2]),
                var("model.layers.0.self_attn.q_proj.bias", &b0, &[3]),
                var("model.layers.0.input_layernorm.weight", &n0, &[3]),
            ],
            cfg,
        )
        .unwrap();
        assert_eq!(
            opt.decay_table().iter().map(|(_, d)| *d).collect::<Vec<_>>(),
            vec![true, false, false],
            "decay off for norms and biases"
        );
        let lrs = [0.0, 0.05, 0.1, 0.07, 0.02];
        let mut gw = Vec::new();
        let mut gb = Vec::new();
        let mut gn = Vec::new();
        for (s, &lr) in lrs.iter().enumerate() {
            let f = s as f32 + 1.0;
            let cw: Vec<f32> = (0..6).map(|i| ((i as f32 * 1.7 + f).sin()) * f).collect();
            let cb: Vec<f32> = (0..3).map(|i| (i as f32 - f * 0.3).cos()).collect();
            let cn: Vec<f32> = (0..3).map(|i| 0.01 * (i as f32 + f)).collect();
            let grads = grads_for(&opt, &[cw.clone(), cb.clone(), cn.clone()]);
            opt.step(&grads, lr, 1.0).unwrap();
            gw.push(cw.iter().map(|&x| x as f64).collect::<Vec<_>>());
            gb.push(cb.iter().map(|&x| x as f64).collect::<Vec<_>>());
            gn.push(cn.iter().map(|&x| x as f64).collect::<Vec<_>>());
        }
        let f64s = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<_>>();
        let cases = [
            (reference(&f64s(&w0), &gw, &lrs, cfg, true), 0),
            (reference(&f64s(&b0), &gb, &lrs, cfg, false), 1),
            (reference(&f64s(&n0), &gn, &lrs, cfg, false), 2),
        ];
        for (want, i) in cases {
            let got = values(&opt.params[i].var);
            for (g, w) in got.iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 2e-6, "param {i}: {got:?} vs {want:?}");
            }
        }
        assert_eq!(opt.steps(), 5);
    }

    /// Numbers produced once by `torch.optim.AdamW` (see `optim_reference.py` beside this file).
    #[test]
    fn matches_torch_adamw() {
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
        let mut opt = AdamW::new(vec![var("w", &[0.1, -0.2, 0.3, -0.4], &[2, 2])], cfg).unwrap();
        let gs = [[0.5f32, -0.25, 0.125, 2.0], [-0.3, 0.1, 0.2, 1.5], [0.05, -0.6, 0.4, -1.0]];
        let lrs = [1e-2, 5e-3, 2e-2];
        for (g, lr) in gs.iter().zip(lrs) {
            let grads = grads_for(&opt, &[g.to_vec()]);
            opt.step(&grads, lr, 1.0).unwrap();
        }
        let torch = TORCH_ADAMW_3_STEPS;
        for (g, w) in values(&opt.params[0].var).iter().zip(torch) {
            assert!((g - w).abs() <= 1e-7, "{g} != {w} (torch)");
        }
    }

    // Printed by `python3 src/train/optim_reference.py` (torch 2.15.0, CPU, float32).
    // (The printed f64 values of the f32 results, rounded to f32 precision.)
    const TORCH_ADAMW_3_STEPS: [f32; 4] = [0.084_967_99, -0.174_360_75, 0.266_220_87, -0.424_123_65];

    #[test]
    fn fused_and_tensor_paths_agree() {
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.05 };
        let data: Vec<f32> = (0..200_000).map(|i| ((i as f32) * 0.001).sin()).collect();
        let coeff: Vec<f32> = (0..200_000).map(|i| ((i as f32) * 0.0007).cos() * 0.1).collect();
        let mut fused = AdamW::new(vec![var("w", &data, &[400, 500])], cfg).unwrap();
        let mut slow = AdamW::new(vec![var("w", &data, &[400, 500])], cfg).unwrap();
        let s = &mut slow.params[0].state;
        *s = State::Device {
            m: Tensor::zeros((400, 500), DType::F32, &Device::Cpu).unwrap(),
            v: Tensor::zeros((400, 500), DType::F32, &Device::Cpu).unwrap(),
            master: None,
        };
        for lr in [1e-3, 2e-3, 5e-4] {
            let g1 = grads_for(&fused, std::slice::from_ref(&coeff));
            fused.step(&g1, lr, 0.5).unwrap();
            let g2 = grads_for(&slow, std::slice::from_ref(&coeff));
            slow.step(&g2, lr, 0.5).unwrap();
        }
        let (a, b) = (values(&fused.params[0].var), values(&slow.params[0].var));
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-6, "max difference {worst}");
    }

    #[test]
    fn accumulation_sums_micro_batches_and_clipping_scales_the_norm() {
        let opt =
            AdamW::new(vec![var("a", &[1.0, 2.0], &[2]), var("b", &[3.0], &[1])], AdamWConfig::default()).unwrap();
        let mut grads = opt.new_grads();
        for c in [[3.0f32, 0.0, 0.0], [0.0, 4.0, 12.0]] {
            let a = (opt.params[0].var.as_tensor() * Tensor::new(&c[..2], &Device::Cpu).unwrap()).unwrap();
            let b = (opt.params[1].var.as_tensor() * Tensor::new(&c[2..], &Device::Cpu).unwrap()).unwrap();
            let loss = (a.sum_all().unwrap() + b.sum_all().unwrap()).unwrap();
            opt.accumulate(&mut grads, loss.backward().unwrap()).unwrap();
        }
        let norm = opt.grad_norm(&grads, 1.0).unwrap();
        assert!((norm - 13.0).abs() < 1e-9, "{norm}");
        assert!((opt.grad_norm(&grads, 0.5).unwrap() - 6.5).abs() < 1e-9);
        let table = [
            (13.0, Some(1.0), 1.0 / (13.0 + 1e-6)),
            (0.5, Some(1.0), 1.0),
            (13.0, None, 1.0),
            (2.0, Some(2.0), 2.0 / (2.0 + 1e-6)),
        ];
        for (n, max, want) in table {
            assert_eq!(clip_factor(n, max), want, "clip_factor({n}, {max:?})");
        }
    }

    #[test]
    fn a_nan_gradient_gives_a_nan_norm() {
        let opt = AdamW::new(vec![var("a", &[1.0, 2.0], &[2])], AdamWConfig::default()).unwrap();
        let grads = grads_for(&opt, &[vec![f32::NAN, 1.0]]);
        assert!(!opt.grad_norm(&grads, 1.0).unwrap().is_finite());
    }

    #[test]
    fn state_round_trips_and_refuses_another_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.safetensors");
        let mk = || AdamW::new(vec![var("w", &[1.0, 2.0, 3.0, 4.0], &[2, 2])], AdamWConfig::default()).unwrap();
        let mut a = mk();
        let g = grads_for(&a, &[vec![0.1, 0.2, -0.3, 0.4]]);
        a.step(&g, 0.01, 1.0).unwrap();
        a.save_state(&path).unwrap();
        let mut b = mk();
        b.params[0].var.set(a.params[0].var.as_tensor()).unwrap();
        b.load_state(&path, a.steps()).unwrap();
        for o in [&mut a, &mut b] {
            let g = grads_for(o, &[vec![0.5, -0.2, 0.3, 0.1]]);
            o.step(&g, 0.01, 1.0).unwrap();
        }
        assert_eq!(values(&a.params[0].var), values(&b.params[0].var));
        let mut other = AdamW::new(vec![var("w", &[1.0, 2.0], &[2])], AdamWConfig::default()).unwrap();
        let e = other.load_state(&path, 1).unwrap_err().to_string();
        assert!(e.contains("shape") && e.contains("optimizer.safetensors"), "{e}");
    }
}
