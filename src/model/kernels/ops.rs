//! Differentiable operations with hand-written backward passes.
//!
//! They exist for memory, not for speed: candle's autograd stores a gradient for every operand
//! of every op, including constants (a frozen weight, the causal mask, the rotary tables), and
//! its matmul backward computes the weight gradient even for a frozen weight. Each op here
//! keeps its constants inside the op, so backward returns only the gradient of the tracked
//! input and nothing else is computed or stored.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;

use super::bf16mm::View;
use super::{attn_cpu, ce_cpu};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, D, DType, Device, Layout, Result, Shape, Tensor};

/// Copies a contiguous CPU storage view into a fresh tensor.
fn to_tensor(s: &CpuStorage, l: &Layout) -> Result<Tensor> {
    let Some((start, end)) = l.contiguous_offsets() else { candle_core::bail!("custom op input must be contiguous") };
    let shape = l.shape().clone();
    let dev = Device::Cpu;
    match s {
        CpuStorage::F32(v) => Tensor::from_slice(&v[start..end], shape, &dev),
        CpuStorage::F64(v) => Tensor::from_slice(&v[start..end], shape, &dev),
        CpuStorage::BF16(v) => Tensor::from_slice(&v[start..end], shape, &dev),
        CpuStorage::F16(v) => Tensor::from_slice(&v[start..end], shape, &dev),
        _ => candle_core::bail!("custom op input must be a float tensor"),
    }
}

/// The storage of a result tensor, as a custom op must return it.
fn to_storage(t: &Tensor) -> Result<(CpuStorage, Shape)> {
    let t = t.contiguous()?;
    let shape = t.shape().clone();
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cs) = &*storage else { candle_core::bail!("custom op result is not on the CPU") };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("custom op result must be contiguous")
    };
    let out = match cs {
        CpuStorage::F32(v) => CpuStorage::F32(v[start..end].to_vec()),
        CpuStorage::F64(v) => CpuStorage::F64(v[start..end].to_vec()),
        CpuStorage::BF16(v) => CpuStorage::BF16(v[start..end].to_vec()),
        CpuStorage::F16(v) => CpuStorage::F16(v[start..end].to_vec()),
        _ => candle_core::bail!("custom op result must be a float tensor"),
    };
    Ok((out, shape))
}

/// The CUDA side of the ops: each op's forward is the same tensor code, run on the GPU. A
/// storage view is copied into a fresh tensor and the result's storage handed back, as on CPU.
#[cfg(feature = "cuda")]
mod gpu {
    use candle_core::backend::{BackendDevice, BackendStorage};
    use candle_core::op::BackpropOp;
    use candle_core::{CudaStorage, Layout, Result, Shape, Storage, Tensor};

    pub fn to_tensor(s: &CudaStorage, l: &Layout) -> Result<Tensor> {
        // SAFETY: every element of the fresh buffer is written by the strided copy below.
        let mut dst = unsafe { s.device().alloc_uninit(l.shape(), s.dtype())? };
        s.copy_strided_src(&mut dst, 0, l)?;
        Ok(Tensor::from_storage(Storage::Cuda(dst), l.shape().clone(), BackpropOp::none(), false))
    }

    pub fn to_storage(t: &Tensor) -> Result<(CudaStorage, Shape)> {
        let shape = t.shape().clone();
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cuda(cs) = &*storage else { candle_core::bail!("custom op result is not on the GPU") };
        // SAFETY: as above, the copy writes every element.
        let mut dst = unsafe { cs.device().alloc_uninit(&shape, cs.dtype())? };
        cs.copy_strided_src(&mut dst, 0, layout)?;
        Ok((dst, shape))
    }
}

/// `x @ w^T (+ b)` with a frozen `w`/`b`: backward returns only `dx = dy @ w`.
pub struct FrozenLinear {
    pub w: Tensor,
    pub b: Option<Tensor>,
}

pub fn frozen_linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let op = FrozenLinear { w: w.clone(), b: b.cloned() };
    if !x.track_op() {
        return op.fwd(x); // nothing to differentiate: no copies
    }
    x.contiguous()?.apply_op1(op)
}

impl FrozenLinear {
    fn fwd(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.w.t()?)?;
        match &self.b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Adds `b` to every row of `out` (rows of `b.len()` values).
fn add_rows(out: &mut [f32], b: &[f32]) {
    for row in out.chunks_exact_mut(b.len().max(1)) {
        row.iter_mut().zip(b).for_each(|(o, v)| *o += v);
    }
}

/// Runs `f` on the elements of a contiguous f32 CPU tensor (None: another dtype, device or layout).
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(CpuStorage::F32(v)) = &*storage else { return None };
    let (a, b) = layout.contiguous_offsets()?;
    Some(f(&v[a..b]))
}

impl FrozenLinear {
    /// The f32 forward straight from the input's storage into the result's (the general path
    /// copies the input into a tensor and the result out of one): the same `gemm` call as
    /// candle's matmul, so the same numbers. None when a tensor is not contiguous f32.
    fn cpu_fwd_f32(&self, s: &CpuStorage, l: &Layout) -> Option<Result<(CpuStorage, Shape)>> {
        let CpuStorage::F32(x) = s else { return None };
        let (x0, x1) = l.contiguous_offsets()?;
        let x = &x[x0..x1];
        let (n, k) = self.w.dims2().ok()?;
        let dims = l.shape().dims();
        if dims.last() != Some(&k) || k == 0 {
            return None;
        }
        let m = x.len() / k;
        let mut out = with_f32(&self.w, |w| {
            // x is m × k and w is n × k, read as the k × n matrix wᵀ; nothing is read from out
            let mut out = vec![0f32; m * n];
            sgemm((m, n, k), &mut out, n, false, (x, k, 1), (w, 1, k), 0.0, 1.0);
            out
        })?;
        if let Some(b) = &self.b {
            let added = with_f32(b, |b| {
                if b.len() != n {
                    return false;
                }
                add_rows(&mut out, b);
                true
            });
            if added != Some(true) {
                return None;
            }
        }
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = n;
        }
        Some(Ok((CpuStorage::F32(out), Shape::from(shape))))
    }
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        gpu::to_storage(&self.fwd(&gpu::to_tensor(s, l)?)?)
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        if let Some(out) = self.cpu_fwd_f32(s, l) {
            return out;
        }
        to_storage(&self.fwd(&to_tensor(s, l)?)?)
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.w)?))
    }
}

/// `x @ w^T (+ b)` for the few rows of one decoding step, without autograd: the `decode`
/// kernel where `x` and `w` are f32 on a CPU with AVX2/FMA, the frozen matmul elsewhere.
pub fn decode_linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let fits = x.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && x.rank() == 2
        && w.rank() == 2
        && super::decode::available();
    if !fits {
        return frozen_linear(x, w, b);
    }
    let y = x.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &DecodeMatmul)?;
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

struct DecodeMatmul;

impl CustomOp2 for DecodeMatmul {
    fn name(&self) -> &'static str {
        "decode-matmul"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(w)) = (s1, s2) else { candle_core::bail!("decode matmul: f32 only") };
        let (Some((x0, x1)), Some((w0, w1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("decode matmul: inputs must be contiguous")
        };
        let (rows, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("decode matmul: x has {k} columns, w has {k2}")
        }
        let mut out = vec![0f32; rows * n];
        if !super::decode::matmul_t(&x[x0..x1], &w[w0..w1], &mut out, rows, k, n) {
            candle_core::bail!("decode matmul: no AVX2/FMA on this CPU")
        }
        Ok((CpuStorage::F32(out), Shape::from((rows, n))))
    }
}

/// `x * c` (broadcast) with a constant `c`: backward returns only `dx = dy * c`.
pub struct ConstMul {
    pub c: Tensor,
}

pub fn const_mul(x: &Tensor, c: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return x.broadcast_mul(c);
    }
    x.contiguous()?.apply_op1(ConstMul { c: c.clone() })
}

impl CustomOp1 for ConstMul {
    fn name(&self) -> &'static str {
        "const-mul"
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        gpu::to_storage(&gpu::to_tensor(s, l)?.broadcast_mul(&self.c)?)
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        // f32 with `c` of the same shape or of the last dimension's size: straight from the
        // input's storage (the general path copies it in and the result out).
        if let (CpuStorage::F32(x), Some((x0, x1))) = (s, l.contiguous_offsets()) {
            let x = &x[x0..x1];
            let last = l.shape().dims().last().copied().unwrap_or(1);
            let c_dims = self.c.dims();
            let same = c_dims == l.shape().dims();
            let row = c_dims.len() == 1 && c_dims[0] == last && last > 0;
            if same || row {
                let out = with_f32(&self.c, |c| {
                    if same {
                        x.iter().zip(c).map(|(a, b)| a * b).collect::<Vec<f32>>()
                    } else {
                        let mut out = Vec::with_capacity(x.len());
                        for r in x.chunks_exact(last) {
                            out.extend(r.iter().zip(c).map(|(a, b)| a * b));
                        }
                        out
                    }
                });
                if let Some(out) = out {
                    return Ok((CpuStorage::F32(out), l.shape().clone()));
                }
            }
        }
        to_storage(&to_tensor(s, l)?.broadcast_mul(&self.c)?)
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.broadcast_mul(&self.c)?))
    }
}

/// Rotate-half rotary embedding `x*cos + rotate_half(x)*sin` on `(B, H, T, D)` with tables
/// `(B, 1, T, D)`; backward applies the transposed rotation.
pub struct Rope {
    pub cos: Tensor,
    pub sin: Tensor,
}

fn rotate_half(x: &Tensor, sign_first: f64) -> Result<Tensor> {
    // sign_first = -1: forward rotation cat(-x2, x1); +1 with swapped roles: cat(x2, -x1).
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    if sign_first < 0.0 {
        Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
    } else {
        Tensor::cat(&[&x2, &x1.neg()?], D::Minus1)
    }
}

impl Rope {
    fn fwd(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_mul(&self.cos)?.add(&rotate_half(x, -1.0)?.broadcast_mul(&self.sin)?)
    }
}

impl Rope {
    /// The rotation of `x` `(B, H, T, D)` row by row on the CPU, with the same operations in the
    /// same order as [`Rope::fwd`] (and, `transposed`, as the backward's tensor ops), so the
    /// same numbers without the intermediate tensors. None when the tables are not contiguous
    /// `(B, 1, T, D)` tensors of `T`'s dtype.
    fn rows<T: candle_core::WithDType + std::ops::Neg<Output = T>>(
        &self,
        x: &[T],
        dims: &[usize],
        transposed: bool,
    ) -> Option<Vec<T>> {
        use rayon::prelude::*;
        let &[b, h, t, d] = dims else { return None };
        if self.cos.dims() != [b, 1, t, d] || self.sin.dims() != [b, 1, t, d] || d % 2 != 0 || x.len() != b * h * t * d
        {
            return None;
        }
        let (cv, sv) = (self.cos.storage_and_layout(), self.sin.storage_and_layout());
        let (cos, sin) = (cpu_slice::<T>(&cv).ok()?, cpu_slice::<T>(&sv).ok()?);
        let half = d / 2;
        let mut out = vec![T::zero(); x.len()];
        // One task per (batch, head): T rows of D.
        out.par_chunks_mut(t * d).zip(x.par_chunks(t * d)).enumerate().for_each(|(bh, (o, x))| {
            let table = (bh / h) * t * d;
            for (r, (o, x)) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)).enumerate() {
                let c = &cos[table + r * d..table + (r + 1) * d];
                let s = &sin[table + r * d..table + (r + 1) * d];
                for i in 0..d {
                    let rot = if transposed {
                        if i < half { x[i + half] * s[i + half] } else { -(x[i - half] * s[i - half]) }
                    } else if i < half {
                        -x[i + half] * s[i]
                    } else {
                        x[i - half] * s[i]
                    };
                    o[i] = x[i] * c[i] + rot;
                }
            }
        });
        Some(out)
    }
}

pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Rope { cos: cos.clone(), sin: sin.clone() })
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope-rotate-half"
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        gpu::to_storage(&self.fwd(&gpu::to_tensor(s, l)?)?)
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        if let Some((start, end)) = l.contiguous_offsets() {
            let dims = l.shape().dims();
            let out = match s {
                CpuStorage::F32(x) => self.rows(&x[start..end], dims, false).map(CpuStorage::F32),
                CpuStorage::F64(x) => self.rows(&x[start..end], dims, false).map(CpuStorage::F64),
                _ => None,
            };
            if let Some(out) = out {
                return Ok((out, l.shape().clone()));
            }
        }
        to_storage(&self.fwd(&to_tensor(s, l)?)?)
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        if g.device().is_cpu() && matches!(g.dtype(), DType::F32 | DType::F64) {
            let g = g.contiguous()?;
            let dims = g.dims().to_vec();
            let dx = {
                let view = g.storage_and_layout();
                match g.dtype() {
                    DType::F32 => self
                        .rows(cpu_slice::<f32>(&view)?, &dims, true)
                        .map(|v| Tensor::from_vec(v, dims.as_slice(), &Device::Cpu)),
                    _ => self
                        .rows(cpu_slice::<f64>(&view)?, &dims, true)
                        .map(|v| Tensor::from_vec(v, dims.as_slice(), &Device::Cpu)),
                }
            };
            if let Some(dx) = dx {
                return Ok(Some(dx?));
            }
        }
        let gs = g.broadcast_mul(&self.sin)?;
        Ok(Some(g.broadcast_mul(&self.cos)?.add(&rotate_half(&gs, 1.0)?)?))
    }
}

/// Summed, weighted cross-entropy of `h @ w^T` against `targets`, computed in row chunks so
/// that the `rows × vocab` logits never exist whole (also not in backward, which recomputes
/// them chunk by chunk). Returns a scalar `Σ_i weight_i · CE_i`.
pub struct ChunkedCe {
    pub targets: Arc<Vec<u32>>,
    pub weights: Arc<Vec<f64>>,
    pub chunk_rows: usize,
    /// Whether `w` is trainable (otherwise its gradient is neither computed nor stored).
    pub need_dw: bool,
    /// Every row's log-sum-exp, saved by the CPU forward for the backward.
    pub saved: CeSaved,
}

/// What the CPU forward of [`ChunkedCe`] leaves for its backward: the rows' log-sum-exp.
#[derive(Default)]
pub struct CeSaved(Mutex<Option<Lse>>);

/// Each row's log-sum-exp and, when they fit in [`KEEP_LOGITS_BYTES`], every row's logits.
enum Lse {
    F32(Vec<f32>, Option<Vec<f32>>),
    F64(Vec<f64>, Option<Vec<f64>>),
}

/// The forward keeps the head's logits for the backward (which then needs one product less:
/// a third of the head's work) when all rows' logits take at most this much with a frozen
/// head (LoRA); above it (long sequences, big vocabularies) backward computes them again, one
/// chunk of rows at a time. 1 GiB holds 1,700 rows of a 152k vocabulary in f32: less than
/// PyTorch keeps at the same size (the logits and the float copy of them for the loss).
const KEEP_LOGITS_BYTES: usize = 1 << 30;
/// The same with a trained head (full fine-tuning), whose backward also holds the head's
/// gradient (the size of the embedding matrix, added to the embedding's own): that moment is
/// the step's peak, so only small logits are kept (512 tokens of a 152k vocabulary).
const KEEP_LOGITS_BYTES_TRAINED_HEAD: usize = 256 << 20;

impl ChunkedCe {
    /// Whether the forward keeps logits of this many bytes (see [`KEEP_LOGITS_BYTES`]).
    fn keeps(&self, bytes: usize) -> bool {
        bytes <= if self.need_dw { KEEP_LOGITS_BYTES_TRAINED_HEAD } else { KEEP_LOGITS_BYTES }
    }
}

fn contiguous_slice<'a, T>(v: &'a [T], l: &Layout) -> Result<&'a [T]> {
    let Some((start, end)) = l.contiguous_offsets() else { candle_core::bail!("custom op input must be contiguous") };
    Ok(&v[start..end])
}

impl ChunkedCe {
    fn chunks(&self, n: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..n).step_by(self.chunk_rows.max(1)).map(move |s| (s, (n - s).min(self.chunk_rows.max(1))))
    }
    fn fwd(&self, h: &Tensor, w: &Tensor) -> Result<Tensor> {
        let n = h.dim(0)?;
        let mut total = 0f64;
        for (s, len) in self.chunks(n) {
            let logits = h.narrow(0, s, len)?.matmul(&w.t()?)?.to_dtype(DType::F64.max_float(h.dtype()))?;
            let max = logits.max_keepdim(D::Minus1)?;
            let lse = logits.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()?.add(&max)?;
            let idx = Tensor::from_slice(&self.targets[s..s + len], (len, 1), h.device())?;
            let tgt = logits.gather(&idx, D::Minus1)?;
            let ce: Vec<f64> = lse.sub(&tgt)?.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
            total += ce.iter().zip(&self.weights[s..s + len]).map(|(c, w)| c * w).sum::<f64>();
        }
        Tensor::new(total, h.device())?.to_dtype(h.dtype())
    }
}

trait MaxFloat {
    fn max_float(self, other: DType) -> DType;
}
impl MaxFloat for DType {
    /// f64 when either is f64, otherwise f32 (the softmax is never done in half precision).
    fn max_float(self, other: DType) -> DType {
        if other == DType::F64 { DType::F64 } else { DType::F32 }
    }
}

pub fn chunked_ce(h: &Tensor, w: &Tensor, op: ChunkedCe) -> Result<Tensor> {
    h.contiguous()?.apply_op2(&w.contiguous()?, op)
}

impl CustomOp2 for ChunkedCe {
    fn name(&self) -> &'static str {
        "chunked-cross-entropy"
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        gpu::to_storage(&self.fwd(&gpu::to_tensor(s1, l1)?, &gpu::to_tensor(s2, l2)?)?)
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, dim) = l1.shape().dims2()?;
        let vocab = l2.shape().dims2()?.0;
        if n != self.targets.len() || n != self.weights.len() || self.targets.iter().any(|&t| t as usize >= vocab) {
            candle_core::bail!(
                "chunked cross-entropy: {n} rows for {} targets (vocabulary {vocab})",
                self.targets.len()
            )
        }
        let save = |l: Lse| {
            if let Ok(mut g) = self.saved.0.lock() {
                *g = Some(l);
            }
        };
        match (s1, s2) {
            (CpuStorage::F32(h), CpuStorage::F32(w)) => {
                let (h, w) = (contiguous_slice(h, l1)?, contiguous_slice(w, l2)?);
                let keep = self.keeps(n * vocab * 4);
                let (total, lse, kept) =
                    ce_cpu::forward(h, w, dim, vocab, &self.targets, &self.weights, self.chunk_rows, keep);
                save(Lse::F32(lse, kept));
                Ok((CpuStorage::F32(vec![total as f32]), Shape::from(())))
            }
            (CpuStorage::F64(h), CpuStorage::F64(w)) => {
                let (h, w) = (contiguous_slice(h, l1)?, contiguous_slice(w, l2)?);
                let keep = self.keeps(n * vocab * 8);
                let (total, lse, kept) =
                    ce_cpu::forward(h, w, dim, vocab, &self.targets, &self.weights, self.chunk_rows, keep);
                save(Lse::F64(lse, kept));
                Ok((CpuStorage::F64(vec![total]), Shape::from(())))
            }
            _ => to_storage(&self.fwd(&to_tensor(s1, l1)?, &to_tensor(s2, l2)?)?),
        }
    }
    fn bwd(&self, h: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?[0];
        let saved = self.saved.0.lock().ok().and_then(|mut s| s.take());
        if h.device().is_cpu() {
            let (n, dim) = h.dims2()?;
            let vocab = w.dim(0)?;
            macro_rules! fast {
                ($t:ty, $saved:expr) => {{
                    let (h, w) = (h.contiguous()?, w.contiguous()?);
                    // read in place: the head is the embedding matrix, far too big to copy
                    let (dh, dw) = with_cpu_slices::<$t, _>([&h, &w, &h], |[hv, wv, _]| {
                        let (lse, kept) = match $saved {
                            Some(saved) => saved,
                            None => {
                                let f = ce_cpu::forward(
                                    hv,
                                    wv,
                                    dim,
                                    vocab,
                                    &self.targets,
                                    &self.weights,
                                    self.chunk_rows,
                                    false,
                                );
                                (f.1, None)
                            }
                        };
                        ce_cpu::backward(
                            hv,
                            wv,
                            dim,
                            vocab,
                            &self.targets,
                            &self.weights,
                            &lse,
                            g,
                            self.chunk_rows,
                            self.need_dw,
                            kept,
                        )
                    })?;
                    let dw = match dw {
                        Some(d) => Some(Tensor::from_vec(d, (vocab, dim), w.device())?),
                        None => None,
                    };
                    return Ok((Some(Tensor::from_vec(dh, (n, dim), h.device())?), dw));
                }};
            }
            match (h.dtype(), w.dtype(), saved) {
                (DType::F32, DType::F32, Some(Lse::F32(l, k))) => fast!(f32, Some((l, k))),
                (DType::F32, DType::F32, _) => fast!(f32, None::<(Vec<f32>, Option<Vec<f32>>)>),
                (DType::F64, DType::F64, Some(Lse::F64(l, k))) => fast!(f64, Some((l, k))),
                (DType::F64, DType::F64, _) => fast!(f64, None::<(Vec<f64>, Option<Vec<f64>>)>),
                _ => {}
            }
        }
        let n = h.dim(0)?;
        let work = DType::F64.max_float(h.dtype());
        let wf = w.to_dtype(work)?;
        let mut dh = Vec::new();
        let mut dw: Option<Tensor> = None;
        for (s, len) in self.chunks(n) {
            let hc = h.narrow(0, s, len)?.to_dtype(work)?;
            let logits = hc.matmul(&wf.t()?)?;
            let p = candle_nn::ops::softmax_last_dim(&logits)?;
            let scale: Vec<f64> = self.weights[s..s + len].iter().map(|w| w * g).collect();
            let scale = Tensor::from_vec(scale, (len, 1), h.device())?.to_dtype(work)?;
            let idx = Tensor::from_slice(&self.targets[s..s + len], (len, 1), h.device())?;
            let coef = p.broadcast_mul(&scale)?.scatter_add(&idx, &scale.neg()?, D::Minus1)?;
            dh.push(coef.matmul(&wf)?.to_dtype(h.dtype())?);
            if self.need_dw {
                let part = coef.t()?.matmul(&hc)?;
                dw = Some(match dw {
                    Some(acc) => acc.add(&part)?,
                    None => part,
                });
            }
        }
        let dh = if dh.is_empty() { h.zeros_like()? } else { Tensor::cat(&dh, 0)? };
        let dw = match (self.need_dw, dw) {
            (true, Some(d)) => Some(d.to_dtype(w.dtype())?),
            (true, None) => Some(w.zeros_like()?),
            (false, _) => None,
        };
        Ok((Some(dh), dw))
    }
}

/// Scaled dot-product attention `softmax(q k^T * scale + mask) v` on `(B, H, T, D)` inputs,
/// with the mask (`allowed`, `(B, T, T)`: causal, padding, packed segments) inside the op.
/// Memory-lean: the `H x T x T` probabilities are computed one batch row at a time and never
/// kept; backward recomputes them from q, k, v (as flash attention does) and returns dq, dk, dv.
pub struct Attention {
    pub allowed: Arc<Vec<u8>>,
    pub scale: f64,
}

pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, allowed: &Arc<Vec<u8>>, scale: f64) -> Result<Tensor> {
    let (b, h, t, _d) = q.dims4()?;
    let kv = k.dim(1)?;
    if allowed.len() != b * t * t {
        candle_core::bail!("attention mask has {} entries for batch {b} x {t} x {t}", allowed.len())
    }
    if kv == 0 || h % kv != 0 || k.dims() != v.dims() {
        candle_core::bail!(
            "attention: {h} query heads need k and v of one shape with a divisor of them as heads, got {:?} and {:?}",
            k.dims(),
            v.dims()
        )
    }
    // The CPU kernel reads grouped heads in place; the other paths get them repeated.
    let native = q.device().is_cpu() && matches!(q.dtype(), DType::F32 | DType::F64);
    let (k, v) = if native { (k.clone(), v.clone()) } else { (repeat_kv(k, h / kv)?, repeat_kv(v, h / kv)?) };
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, Attention { allowed: allowed.clone(), scale })
}

/// `(B, KV, T, D)` → `(B, KV·n, T, D)`, each key/value head repeated for its `n` query heads.
fn repeat_kv(x: &Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, d) = x.dims4()?;
    let x = x.unsqueeze(2)?;
    let copies: Vec<&Tensor> = std::iter::repeat_n(&x, n).collect();
    Tensor::cat(&copies, 2)?.reshape((b, kv * n, t, d))
}

const MASKED: f64 = -1e30;

/// `(B, H, T, D)` of q and `(B, KV, T, D)` of k and v.
fn dims(q: &Shape, k: &Shape) -> Result<attn_cpu::Dims> {
    let (batch, heads, seq, head_dim) = q.dims4()?;
    let kv_heads = k.dims4()?.1;
    if k.dims() != [batch, kv_heads, seq, head_dim] || kv_heads == 0 || heads % kv_heads != 0 {
        candle_core::bail!("attention: q {:?} and k {:?} do not fit grouped heads", q.dims(), k.dims())
    }
    Ok(attn_cpu::Dims { batch, heads, kv_heads, seq, head_dim })
}

fn q_shape(d: attn_cpu::Dims) -> (usize, usize, usize, usize) {
    (d.batch, d.heads, d.seq, d.head_dim)
}

impl Attention {
    /// Additive mask of batch row `b`: `(1, T, T)`, 0 where allowed.
    fn bias(&self, b: usize, t: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        let m = &self.allowed[b * t * t..(b + 1) * t * t];
        let v: Vec<f32> = m.iter().map(|&a| if a == 1 { 0.0 } else { MASKED as f32 }).collect();
        Tensor::from_vec(v, (1, t, t), device)?.to_dtype(dtype)
    }
    /// Probabilities of batch row `b`: `(H, T, T)`.
    fn probs(&self, q: &Tensor, k: &Tensor, b: usize) -> Result<Tensor> {
        let t = q.dim(2)?;
        let s = q.get(b)?.matmul(&k.get(b)?.t()?)?.affine(self.scale, 0.0)?;
        let s = s.broadcast_add(&self.bias(b, t, s.dtype(), s.device())?)?;
        candle_nn::ops::softmax_last_dim(&s)
    }
    fn fwd(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let b = q.dim(0)?;
        let mut outs = Vec::with_capacity(b);
        for i in 0..b {
            outs.push(self.probs(q, k, i)?.matmul(&v.get(i)?)?);
        }
        Tensor::stack(&outs, 0)
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = dims(l1.shape(), l2.shape())?;
        let view = |s: &CpuStorage, l: &Layout| -> Result<(usize, usize)> {
            l.contiguous_offsets().filter(|_| l.shape() == l2.shape() && s.dtype() == s1.dtype()).ok_or_else(|| {
                candle_core::Error::Msg(
                    "attention: q, k and v must be contiguous, k and v of one shape, one dtype".into(),
                )
            })
        };
        let ((a1, e1), (a2, e2), (a3, e3)) = (
            l1.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("attention: q must be contiguous".into()))?,
            view(s2, l2)?,
            view(s3, l3)?,
        );
        let out = match s1.dtype() {
            DType::F32 => CpuStorage::F32(attn_cpu::forward(
                &s1.as_slice::<f32>()?[a1..e1],
                &s2.as_slice::<f32>()?[a2..e2],
                &s3.as_slice::<f32>()?[a3..e3],
                &self.allowed,
                d,
                self.scale as f32,
            )),
            DType::F64 => CpuStorage::F64(attn_cpu::forward(
                &s1.as_slice::<f64>()?[a1..e1],
                &s2.as_slice::<f64>()?[a2..e2],
                &s3.as_slice::<f64>()?[a3..e3],
                &self.allowed,
                d,
                self.scale,
            )),
            _ => return to_storage(&self.fwd(&to_tensor(s1, l1)?, &to_tensor(s2, l2)?, &to_tensor(s3, l3)?)?),
        };
        Ok((out, l1.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        gpu::to_storage(&self.fwd(&gpu::to_tensor(s1, l1)?, &gpu::to_tensor(s2, l2)?, &gpu::to_tensor(s3, l3)?)?)
    }
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if q.device().is_cpu() && matches!(q.dtype(), DType::F32 | DType::F64) {
            let d = dims(q.shape(), k.shape())?;
            let grad = grad.contiguous()?;
            let o = _res.contiguous()?;
            let kv_shape = k.shape().clone();
            // The operands are read in place (no copies of q, k, v, the output and its gradient).
            fn grads<T: attn_cpu::Real + candle_core::WithDType>(
                [q, k, v, o, g]: [&Tensor; 5],
                allowed: &[u8],
                d: attn_cpu::Dims,
                scale: T,
                kv_shape: &Shape,
            ) -> Result<(Tensor, Tensor, Tensor)> {
                let (dq, dk, dv) = with_cpu_slices::<T, _>([q, k, v], |[q, k, v]| {
                    with_cpu_slices::<T, _>([o, g, g], |[o, g, _]| attn_cpu::backward(q, k, v, o, g, allowed, d, scale))
                })??;
                let t = |x: Vec<T>, s: &Shape| Tensor::from_vec(x, s, &Device::Cpu);
                Ok((t(dq, &Shape::from(q_shape(d)))?, t(dk, kv_shape)?, t(dv, kv_shape)?))
            }
            let ops = [q, k, v, &o, &grad];
            let (dq, dk, dv) = match q.dtype() {
                DType::F32 => grads::<f32>(ops, &self.allowed, d, self.scale as f32, &kv_shape)?,
                _ => grads::<f64>(ops, &self.allowed, d, self.scale, &kv_shape)?,
            };
            return Ok((Some(dq), Some(dk), Some(dv)));
        }
        let b = q.dim(0)?;
        let (mut dq, mut dk, mut dv) = (Vec::with_capacity(b), Vec::with_capacity(b), Vec::with_capacity(b));
        for i in 0..b {
            let p = self.probs(q, k, i)?;
            let g = grad.get(i)?;
            dv.push(p.t()?.matmul(&g)?);
            let dp = g.matmul(&v.get(i)?.t()?)?;
            let dot = dp.mul(&p)?.sum_keepdim(D::Minus1)?;
            let ds = p.mul(&dp.broadcast_sub(&dot)?)?.affine(self.scale, 0.0)?;
            dq.push(ds.matmul(&k.get(i)?)?);
            dk.push(ds.t()?.matmul(&q.get(i)?)?);
        }
        Ok((Some(Tensor::stack(&dq, 0)?), Some(Tensor::stack(&dk, 0)?), Some(Tensor::stack(&dv, 0)?)))
    }
}

/// SwiGLU `silu(gate) · up` as one op: it keeps only its two inputs for backward (candle's
/// composition keeps `silu(gate)` and the product as well, two more `T × intermediate`
/// activations per layer) and runs each pass in one multithreaded sweep on the CPU.
pub struct SwiGlu;

pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !gate.track_op() && !up.track_op() {
        return gate.silu()?.mul(up);
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

/// Elements per parallel task.
const SWIGLU_CHUNK: usize = 1 << 14;

/// The elements of a contiguous CPU tensor's storage view.
fn cpu_slice<'a, T: candle_core::WithDType>(view: &'a (candle_core::StorageRef<'_>, &Layout)) -> Result<&'a [T]> {
    let candle_core::Storage::Cpu(cs) = &*view.0 else { candle_core::bail!("expected a CPU tensor") };
    let Some((s, e)) = view.1.contiguous_offsets() else { candle_core::bail!("expected a contiguous tensor") };
    Ok(&cs.as_slice::<T>()?[s..e])
}

/// Runs `f` on the elements of three contiguous CPU tensors of element type `T`, in place.
fn with_cpu_slices<T: candle_core::WithDType, R>(ts: [&Tensor; 3], f: impl FnOnce([&[T]; 3]) -> R) -> Result<R> {
    let [a, b, c] = ts.map(|t| t.storage_and_layout());
    Ok(f([cpu_slice(&a)?, cpu_slice(&b)?, cpu_slice(&c)?]))
}

fn swiglu_fwd<T: num_traits::Float + Send + Sync>(g: &[T], u: &[T]) -> Vec<T> {
    use rayon::prelude::*;
    let mut out = vec![T::zero(); g.len()];
    out.par_chunks_mut(SWIGLU_CHUNK).zip(g.par_chunks(SWIGLU_CHUNK)).zip(u.par_chunks(SWIGLU_CHUNK)).for_each(
        |((o, g), u)| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g / (T::one() + (-g).exp()) * u;
            }
        },
    );
    out
}

/// `(d gate, d up)` from the output gradient `dy`.
fn swiglu_bwd<T: num_traits::Float + Send + Sync>(g: &[T], u: &[T], dy: &[T]) -> (Vec<T>, Vec<T>) {
    use rayon::prelude::*;
    let (mut dg, mut du) = (vec![T::zero(); g.len()], vec![T::zero(); g.len()]);
    dg.par_chunks_mut(SWIGLU_CHUNK)
        .zip(du.par_chunks_mut(SWIGLU_CHUNK))
        .zip(g.par_chunks(SWIGLU_CHUNK).zip(u.par_chunks(SWIGLU_CHUNK)).zip(dy.par_chunks(SWIGLU_CHUNK)))
        .for_each(|((dg, du), ((g, u), dy))| {
            for i in 0..g.len() {
                let s = T::one() / (T::one() + (-g[i]).exp());
                let silu = g[i] * s;
                du[i] = dy[i] * silu;
                // d silu / dx = s · (1 + x · (1 − s))
                dg[i] = dy[i] * u[i] * s * (T::one() + g[i] * (T::one() - s));
            }
        });
    (dg, du)
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (Some((a1, e1)), Some((a2, e2))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("swiglu inputs must be contiguous")
        };
        if l1.shape() != l2.shape() {
            candle_core::bail!("swiglu: gate {:?} and up {:?} differ in shape", l1.shape(), l2.shape())
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(g), CpuStorage::F32(u)) => CpuStorage::F32(swiglu_fwd(&g[a1..e1], &u[a2..e2])),
            (CpuStorage::F64(g), CpuStorage::F64(u)) => CpuStorage::F64(swiglu_fwd(&g[a1..e1], &u[a2..e2])),
            _ => return to_storage(&to_tensor(s1, l1)?.silu()?.mul(&to_tensor(s2, l2)?)?),
        };
        Ok((out, l1.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        gpu::to_storage(&gpu::to_tensor(s1, l1)?.silu()?.mul(&gpu::to_tensor(s2, l2)?)?)
    }
    fn bwd(&self, gate: &Tensor, up: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let shape = gate.shape().clone();
        if gate.device().is_cpu() && matches!(gate.dtype(), DType::F32 | DType::F64) && up.dtype() == gate.dtype() {
            let (gate, up, dy) = (gate.contiguous()?, up.contiguous()?, dy.to_dtype(gate.dtype())?.contiguous()?);
            let (dg, du) = match gate.dtype() {
                DType::F32 => {
                    let (dg, du) = with_cpu_slices::<f32, _>([&gate, &up, &dy], |[g, u, d]| swiglu_bwd(g, u, d))?;
                    (Tensor::from_vec(dg, &shape, &Device::Cpu)?, Tensor::from_vec(du, &shape, &Device::Cpu)?)
                }
                _ => {
                    let (dg, du) = with_cpu_slices::<f64, _>([&gate, &up, &dy], |[g, u, d]| swiglu_bwd(g, u, d))?;
                    (Tensor::from_vec(dg, &shape, &Device::Cpu)?, Tensor::from_vec(du, &shape, &Device::Cpu)?)
                }
            };
            return Ok((Some(dg), Some(du)));
        }
        // Any other device or dtype: the same formulas as tensor operations.
        let s = candle_nn::ops::sigmoid(gate)?;
        let silu = gate.mul(&s)?;
        let du = dy.mul(&silu)?;
        let dsilu = s.mul(&gate.mul(&s.affine(-1.0, 1.0)?)?.affine(1.0, 1.0)?)?;
        let dg = dy.mul(up)?.mul(&dsilu)?;
        Ok((Some(dg), Some(du)))
    }
}

/// RMSNorm `y = x · r · w`, `r = 1 / sqrt(mean(x²) + eps)` per row, with its backward in one
/// pass each way (the plain composition is about ten tensor passes forward and more backward).
/// `dw` is computed only when `w` is tracked (full fine-tuning). CPU f32/f64 only: callers
/// use [`rms_norm`], which falls back to tensor operations elsewhere.
pub struct RmsNormOp {
    pub eps: f64,
}

/// Whether [`rms_norm`] runs the fused op: on CPU, f32 or f64 (its forward gives the tensor
/// composition's numbers bit for bit).
pub fn rms_norm_fused(x: &Tensor, w: &Tensor) -> bool {
    x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && w.dtype() == x.dtype()
        && w.rank() == 1
        && x.dims().last() == Some(&w.dims()[0])
}

pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNormOp { eps })
}

/// Rows per parallel task of the RMSNorm kernels.
const RMS_ROWS: usize = 16;

/// Elements a fused-RMSNorm kernel works on: candle's float types.
trait RmsElem: candle_core::WithDType + candle_core::cpu::kernels::VecOps + num_traits::Float {}
impl RmsElem for f32 {}
impl RmsElem for f64 {}

/// `1 / sqrt(mean(x²) + eps)` of a row, computed exactly as the tensor composition in
/// [`super::super::RmsNorm`] computes it (squares, candle's row sum, `· (1/d) + 0`,
/// `· 1 + eps`, sqrt, recip), so that training and inference see the same numbers.
fn rms_inv<T: RmsElem>(row: &[T], sq: &mut Vec<T>, eps: f64) -> T {
    sq.clear();
    sq.extend(row.iter().map(|&v| v * v));
    let mut ss = T::zero();
    // SAFETY: `sq` holds `sq.len()` elements and `ss` is one valid element.
    unsafe { T::vec_reduce_sum(sq.as_ptr(), &mut ss, sq.len()) };
    let mean = ss * T::from_f64(1.0 / row.len() as f64) + T::from_f64(0.0);
    (mean * T::from_f64(1.0) + T::from_f64(eps)).sqrt().recip()
}

fn rms_fwd<T: RmsElem>(x: &[T], w: &[T], eps: f64) -> Vec<T> {
    use rayon::prelude::*;
    let d = w.len();
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(d * RMS_ROWS).zip(x.par_chunks(d * RMS_ROWS)).for_each(|(o, x)| {
        let mut sq = Vec::with_capacity(d);
        for (o, x) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            let r = rms_inv(x, &mut sq, eps);
            for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
                *o = x * r * w;
            }
        }
    });
    out
}

/// `(dx, dw)`: `dx = r·g − x·r³·mean(g·x)` with `g = dy·w`; `dw = Σ_rows dy·x·r` when asked.
fn rms_bwd<T: RmsElem>(x: &[T], w: &[T], dy: &[T], eps: f64, need_dw: bool) -> (Vec<T>, Option<Vec<T>>) {
    use rayon::prelude::*;
    let d = w.len();
    let mut dx = vec![T::zero(); x.len()];
    let dw = dx
        .par_chunks_mut(d * RMS_ROWS)
        .zip(x.par_chunks(d * RMS_ROWS).zip(dy.par_chunks(d * RMS_ROWS)))
        .map(|(dx, (x, dy))| {
            let mut dw = if need_dw { vec![0f64; d] } else { Vec::new() };
            let mut sq = Vec::with_capacity(d);
            for ((dx, x), dy) in dx.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(dy.chunks_exact(d)) {
                let f = |v: T| <T as candle_core::WithDType>::to_f64(v);
                let r = f(rms_inv(x, &mut sq, eps));
                let dot: f64 = x.iter().zip(dy).zip(w).map(|((&x, &g), &w)| f(g) * f(w) * f(x)).sum();
                let c = r * r * r * dot / d as f64;
                for (((dx, &x), &g), &w) in dx.iter_mut().zip(x).zip(dy).zip(w) {
                    *dx = T::from_f64(r * f(g) * f(w) - f(x) * c);
                }
                if need_dw {
                    for ((a, &x), &g) in dw.iter_mut().zip(x).zip(dy) {
                        *a += f(g) * f(x) * r;
                    }
                }
            }
            dw
        })
        .reduce(Vec::new, |a, b| {
            if a.is_empty() {
                return b;
            }
            if b.is_empty() {
                return a;
            }
            a.iter().zip(&b).map(|(a, b)| a + b).collect()
        });
    let dw = need_dw.then(|| {
        let mut dw: Vec<T> = dw.iter().map(|&v| T::from_f64(v)).collect();
        dw.resize(d, T::zero());
        dw
    });
    (dx, dw)
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "rms-norm"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (Some((a1, e1)), Some((a2, e2))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("rms-norm inputs must be contiguous")
        };
        if l1.shape().dims().last() != Some(&(e2 - a2)) || e2 == a2 {
            candle_core::bail!("rms-norm: input {:?} and weight {:?} do not match", l1.shape(), l2.shape())
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => CpuStorage::F32(rms_fwd(&x[a1..e1], &w[a2..e2], self.eps)),
            (CpuStorage::F64(x), CpuStorage::F64(w)) => CpuStorage::F64(rms_fwd(&x[a1..e1], &w[a2..e2], self.eps)),
            _ => candle_core::bail!("rms-norm: f32 or f64 only"),
        };
        Ok((out, l1.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let need_dw = w.track_op();
        let (xs, ws) = (x.shape().clone(), w.shape().clone());
        let (x, w, dy) = (x.contiguous()?, w.contiguous()?, dy.to_dtype(x.dtype())?.contiguous()?);
        let (dx, dw) = match x.dtype() {
            DType::F32 => {
                let (dx, dw) =
                    with_cpu_slices::<f32, _>([&x, &w, &dy], |[x, w, d]| rms_bwd(x, w, d, self.eps, need_dw))?;
                (
                    Tensor::from_vec(dx, &xs, &Device::Cpu)?,
                    dw.map(|v| Tensor::from_vec(v, &ws, &Device::Cpu)).transpose()?,
                )
            }
            _ => {
                let (dx, dw) =
                    with_cpu_slices::<f64, _>([&x, &w, &dy], |[x, w, d]| rms_bwd(x, w, d, self.eps, need_dw))?;
                (
                    Tensor::from_vec(dx, &xs, &Device::Cpu)?,
                    dw.map(|v| Tensor::from_vec(v, &ws, &Device::Cpu)).transpose()?,
                )
            }
        };
        Ok((Some(dx), dw))
    }
}

/// Mixed-precision `x @ w^T` on AMX tiles or AVX512-BF16 ([`bf16mm`](super::bf16mm)): `x` and `w` rounded to bf16,
/// products summed in f32, an f32 result; backward the same way, `dx = dy @ w` and, when `w` is
/// trained, `dw = dy^T @ x`. `None` where neither unit is present or the operands don't fit (CPU f32 only): the
/// caller multiplies in bf16 through candle instead.
pub fn bf16_linear(x: &Tensor, w: &Tensor, trainable: bool) -> Result<Option<Tensor>> {
    let fits = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if !super::bf16mm::available() || !fits(x) || !fits(w) || w.rank() != 2 || x.dims().last() != Some(&w.dims()[1]) {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let w = w.contiguous()?;
    let y = if trainable { x.apply_op2(&w, Bf16Linear { w: None })? } else { x.apply_op1(Bf16Linear { w: Some(w) })? };
    Ok(Some(y))
}

/// The op behind [`bf16_linear`]: `w` inside it when frozen (an op of `x` alone), else the
/// second operand.
pub struct Bf16Linear {
    w: Option<Tensor>,
}

/// `a (m × k) · b (k × n)` through the bf16 kernel into a fresh `m × n` vector.
fn bf16_mm(m: usize, n: usize, k: usize, a: View, b: View) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    super::bf16mm::matmul(m, n, k, a, b, &mut out, n);
    out
}

impl Bf16Linear {
    fn forward(x: &[f32], x_shape: &Shape, w: &[f32], w_dims: (usize, usize)) -> Result<(CpuStorage, Shape)> {
        let (n, k) = w_dims;
        let m = x.len().checked_div(k).unwrap_or(0);
        let y = bf16_mm(m, n, k, View { data: x, rs: k, cs: 1 }, View { data: w, rs: 1, cs: k });
        let mut dims = x_shape.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = n;
        }
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    /// `dx = dy @ w` (shape of `x`) and, with `want_dw`, `dw = dy^T @ x`.
    fn backward(x: &Tensor, w: &Tensor, dy: &Tensor, want_dw: bool) -> Result<(Tensor, Option<Tensor>)> {
        let (n, k) = w.dims2()?;
        let (x, w, dy) = (x.contiguous()?, w.contiguous()?, dy.contiguous()?);
        let m = x.elem_count() / k.max(1);
        let (dx, dw) = with_cpu_slices::<f32, _>([&x, &w, &dy], |[xs, ws, ds]| {
            let dx = bf16_mm(m, k, n, View { data: ds, rs: n, cs: 1 }, View { data: ws, rs: k, cs: 1 });
            let dw =
                want_dw.then(|| bf16_mm(n, k, m, View { data: ds, rs: 1, cs: n }, View { data: xs, rs: k, cs: 1 }));
            (dx, dw)
        })?;
        let dx = Tensor::from_vec(dx, x.shape(), x.device())?;
        let dw = dw.map(|d| Tensor::from_vec(d, (n, k), x.device())).transpose()?;
        Ok((dx, dw))
    }
}

impl CustomOp1 for Bf16Linear {
    fn name(&self) -> &'static str {
        "bf16-linear"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some(w) = &self.w else { candle_core::bail!("bf16-linear: frozen form without its weight") };
        let (CpuStorage::F32(x), Some((x0, x1))) = (s, l.contiguous_offsets()) else {
            candle_core::bail!("bf16-linear: input must be contiguous f32")
        };
        let dims = w.dims2()?;
        match with_f32(w, |ws| Self::forward(&x[x0..x1], l.shape(), ws, dims)) {
            Some(out) => out,
            None => candle_core::bail!("bf16-linear: weight must be contiguous f32 on the CPU"),
        }
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let Some(w) = &self.w else { candle_core::bail!("bf16-linear: frozen form without its weight") };
        Ok(Some(Self::backward(arg, w, grad, false)?.0))
    }
}

impl CustomOp2 for Bf16Linear {
    fn name(&self) -> &'static str {
        "bf16-linear"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), Some((x0, x1)), CpuStorage::F32(w), Some((w0, w1))) =
            (s1, l1.contiguous_offsets(), s2, l2.contiguous_offsets())
        else {
            candle_core::bail!("bf16-linear: operands must be contiguous f32")
        };
        let dims = l2.shape().dims2()?;
        Self::forward(&x[x0..x1], l1.shape(), &w[w0..w1], dims)
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = Self::backward(x, w, grad, true)?;
        Ok((Some(dx), dw))
    }
}

/// `dst (m × n, row stride ldd) = alpha·dst + beta·(lhs · rhs)` for f32 slices read through
/// (row, column) strides; `read_dst: false` overwrites `dst` instead (alpha unused).
#[allow(clippy::too_many_arguments)]
fn sgemm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    ldd: usize,
    read_dst: bool,
    (lhs, l_rs, l_cs): (&[f32], usize, usize),
    (rhs, r_rs, r_cs): (&[f32], usize, usize),
    alpha: f32,
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rs: usize, cs: usize, r: usize, c: usize| (r - 1) * rs + (c - 1) * cs;
    assert!(dst.len() > last(ldd, 1, m, n), "sgemm: output too small");
    if k > 0 {
        assert!(lhs.len() > last(l_rs, l_cs, m, k) && rhs.len() > last(r_rs, r_cs, k, n), "sgemm: operand too small");
    }
    let threads = rayon::current_num_threads().max(1);
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the asserts above keep every index the strides reach inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ldd as isize,
            read_dst,
            lhs.as_ptr(),
            l_cs as isize,
            l_rs as isize,
            rhs.as_ptr(),
            r_cs as isize,
            r_rs as isize,
            alpha,
            beta,
            false,
            false,
            false,
            par,
        )
    }
}

/// A frozen projection with its LoRA adapter in one op: `y = x wᵀ (+ b) + s·((x ⊙ mask) aᵀ) bᵀ`,
/// the adapter's product added into the base product's buffer (candle's composition makes a
/// separate `N × out` tensor and adds it, and adds the two input gradients the same way).
/// Backward returns `dx`, `da`, `db`; the frozen `w` gets nothing. CPU f32 only (see
/// [`lora_linear`]).
pub struct LoraLinear {
    pub w: Tensor,
    pub bias: Option<Tensor>,
    pub scale: f64,
    /// The adapter's dropout over `x` (its mask made element by element where it is applied,
    /// forward and backward), when training with one.
    pub mask: Option<crate::model::lora::Dropout>,
    /// Mixed precision: the base products (`x wᵀ`, `dy w`) in bf16 (AMX tiles or AVX512-BF16), the
    /// adapter's in f32 (only when [`bf16mm::available`](super::bf16mm::available)).
    pub bf16: bool,
}

/// `x wᵀ (+ bias)` plus `lora`'s product as one [`LoraLinear`] when everything is f32 on the CPU,
/// else `None` (nothing drawn from the adapter's generator then). With `train` and dropout,
/// the mask is drawn as [`LoraAdapter::forward`](crate::model::lora::LoraAdapter::forward) draws it.
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    lora: &crate::model::lora::LoraAdapter,
    train: bool,
    bf16: bool,
) -> Result<Option<Tensor>> {
    let f32_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if ![x, w, &lora.a, &lora.b].into_iter().all(f32_cpu)
        || !bias.is_none_or(f32_cpu)
        || w.rank() != 2
        || (bf16 && !super::bf16mm::available())
    {
        return Ok(None);
    }
    let mask = (train && lora.dropout > 0.0)
        .then(|| crate::model::lora::Dropout::new(lora.rng.next_u64(), 1.0 - lora.dropout as f64));
    let op = LoraLinear {
        w: w.contiguous()?,
        bias: bias.map(|t| t.contiguous()).transpose()?,
        scale: lora.scale,
        mask,
        bf16,
    };
    Ok(Some(x.contiguous()?.apply_op3(&lora.a.contiguous()?, &lora.b.contiguous()?, op)?))
}

impl LoraLinear {
    /// `x ⊙ mask`, or `x` itself without a mask.
    fn dropped<'a>(&self, x: &'a [f32]) -> std::borrow::Cow<'a, [f32]> {
        use crate::model::lora::Dropout;
        use rayon::prelude::*;
        match &self.mask {
            Some(d) => {
                let mut out = vec![0f32; x.len()];
                out.par_chunks_mut(Dropout::CHUNK)
                    .zip(x.par_chunks(Dropout::CHUNK))
                    .enumerate()
                    .for_each(|(c, (o, x))| d.each(c * Dropout::CHUNK, x.len(), |j, m| o[j] = x[j] * m));
                std::borrow::Cow::Owned(out)
            }
            None => std::borrow::Cow::Borrowed(x),
        }
    }

    /// `s·(xd aᵀ)` (`m × r`).
    fn down(&self, xd: &[f32], a: &[f32], (m, r, k): (usize, usize, usize)) -> Vec<f32> {
        let mut u = vec![0f32; m * r];
        sgemm((m, r, k), &mut u, r, false, (xd, k, 1), (a, 1, k), 0.0, 1.0);
        let s = self.scale as f32;
        u.iter_mut().for_each(|v| *v *= s);
        u
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(a), CpuStorage::F32(b)) = (s1, s2, s3) else {
            candle_core::bail!("lora-linear: operands must be f32")
        };
        let (x, a, b) = (contiguous_slice(x, l1)?, contiguous_slice(a, l2)?, contiguous_slice(b, l3)?);
        let (n, k) = self.w.dims2()?;
        let r = l2.shape().dims2()?.0;
        if l2.shape().dims2()? != (r, k) || l3.shape().dims2()? != (n, r) || l1.shape().dims().last() != Some(&k) {
            candle_core::bail!(
                "lora-linear: shapes {:?} {:?} {:?} for a {n} x {k} weight",
                l1.shape(),
                l2.shape(),
                l3.shape()
            )
        }
        let m = x.len().checked_div(k).unwrap_or(0);
        let mut y = vec![0f32; m * n];
        let done = with_f32(&self.w, |w| match self.bf16 {
            true => super::bf16mm::matmul(
                m,
                n,
                k,
                View { data: x, rs: k, cs: 1 },
                View { data: w, rs: 1, cs: k },
                &mut y,
                n,
            ),
            false => sgemm((m, n, k), &mut y, n, false, (x, k, 1), (w, 1, k), 0.0, 1.0),
        });
        if done.is_none() {
            candle_core::bail!("lora-linear: weight must be contiguous f32")
        }
        if let Some(bias) = &self.bias {
            let added = with_f32(bias, |bias| {
                let fits = bias.len() == n;
                if fits {
                    add_rows(&mut y, bias);
                }
                fits
            });
            if added != Some(true) {
                candle_core::bail!("lora-linear: bias must be contiguous f32 of {n} values")
            }
        }
        let u = self.down(&self.dropped(x), a, (m, r, k));
        sgemm((m, n, r), &mut y, n, true, (&u, r, 1), (b, 1, r), 1.0, 1.0);
        let mut dims = l1.shape().dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = n;
        }
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }
    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, k) = self.w.dims2()?;
        let r = a.dim(0)?;
        let m = x.elem_count() / k.max(1);
        let (dy, w) = (grad.contiguous()?, self.w.contiguous()?);
        let s = self.scale as f32;
        let (dx, da, db) = with_cpu_slices::<f32, _>([x, a, b], |[xs, as_, bs]| {
            with_cpu_slices::<f32, _>([&dy, &w, &w], |[dys, ws, _]| {
                let xd = self.dropped(xs);
                let u = self.down(&xd, as_, (m, r, k));
                // g = s·(dy b)  (m × r): the gradient at the adapter's down product
                let mut g = vec![0f32; m * r];
                sgemm((m, r, n), &mut g, r, false, (dys, n, 1), (bs, r, 1), 0.0, s);
                // db = dyᵀ u  (n × r), u already scaled
                let mut db = vec![0f32; n * r];
                sgemm((n, r, m), &mut db, r, false, (dys, 1, n), (&u, r, 1), 0.0, 1.0);
                // da = gᵀ xd  (r × k)
                let mut da = vec![0f32; r * k];
                sgemm((r, k, m), &mut da, k, false, (&g, 1, r), (&xd, k, 1), 0.0, 1.0);
                // dx = dy w + (g a) ⊙ mask
                let mut dx = vec![0f32; m * k];
                match self.bf16 {
                    true => super::bf16mm::matmul(
                        m,
                        k,
                        n,
                        View { data: dys, rs: n, cs: 1 },
                        View { data: ws, rs: k, cs: 1 },
                        &mut dx,
                        k,
                    ),
                    false => sgemm((m, k, n), &mut dx, k, false, (dys, n, 1), (ws, k, 1), 0.0, 1.0),
                }
                match &self.mask {
                    None => sgemm((m, k, r), &mut dx, k, true, (&g, r, 1), (as_, k, 1), 1.0, 1.0),
                    Some(dropout) => {
                        use crate::model::lora::Dropout;
                        use rayon::prelude::*;
                        let mut t = vec![0f32; m * k];
                        sgemm((m, k, r), &mut t, k, false, (&g, r, 1), (as_, k, 1), 0.0, 1.0);
                        dx.par_chunks_mut(Dropout::CHUNK).zip(t.par_chunks(Dropout::CHUNK)).enumerate().for_each(
                            |(c, (d, t))| dropout.each(c * Dropout::CHUNK, t.len(), |j, mk| d[j] += t[j] * mk),
                        );
                    }
                }
                (dx, da, db)
            })
        })??;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(da, (r, k), dev)?),
            Some(Tensor::from_vec(db, (n, r), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row kernels of the rotary op give the tensor composition's numbers bit for bit,
    /// forward and backward.
    #[test]
    fn rope_rows_match_the_tensor_ops() {
        let (b, h, t, d) = (2usize, 3usize, 5usize, 8usize);
        for dtype in [DType::F64, DType::F32] {
            let x = rand(&[b, h, t, d], 21).to_dtype(dtype).unwrap();
            let cos = rand(&[b, 1, t, d], 22).to_dtype(dtype).unwrap();
            let sin = rand(&[b, 1, t, d], 23).to_dtype(dtype).unwrap();
            let op = Rope { cos: cos.clone(), sin: sin.clone() };
            let want = op.fwd(&x).unwrap();
            let xv = candle_core::Var::from_tensor(&x).unwrap();
            let got = rope(xv.as_tensor(), &cos, &sin).unwrap();
            assert_eq!(max_diff(&got.to_dtype(DType::F64).unwrap(), &want.to_dtype(DType::F64).unwrap()), 0.0);
            let g = rand(&[b, h, t, d], 24).to_dtype(dtype).unwrap();
            let gs = g.broadcast_mul(&sin).unwrap();
            let want_dx = g.broadcast_mul(&cos).unwrap().add(&rotate_half(&gs, 1.0).unwrap()).unwrap();
            let grads = got.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
            let dx = grads.get(xv.as_tensor()).unwrap();
            assert_eq!(max_diff(&dx.to_dtype(DType::F64).unwrap(), &want_dx.to_dtype(DType::F64).unwrap()), 0.0);
        }
    }

    /// The fused RMSNorm (forward, dx, dw) against candle autograd of the tensor composition.
    #[test]
    fn rms_norm_matches_autograd() {
        let eps = 1e-5;
        for rows in [1usize, 3, 40] {
            let d = 7;
            let x = candle_core::Var::from_tensor(&rand(&[rows, d], 11 + rows as u64)).unwrap();
            let w = candle_core::Var::from_tensor(&rand(&[d], 12).affine(0.5, 1.0).unwrap()).unwrap();
            let xt = x.as_tensor();
            let var = xt.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            let want = xt
                .broadcast_mul(&var.affine(1.0, eps).unwrap().sqrt().unwrap().recip().unwrap())
                .unwrap()
                .broadcast_mul(w.as_tensor())
                .unwrap();
            let probe = rand(&[rows, d], 13);
            let wg = want.mul(&probe).unwrap().sum_all().unwrap().backward().unwrap();
            let got = rms_norm(xt, w.as_tensor(), eps).unwrap();
            assert_eq!(max_diff(&got, &want), 0.0, "forward: the composition's numbers");
            let gg = got.mul(&probe).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, v) in [("dx", x.as_tensor()), ("dw", w.as_tensor())] {
                let (a, b) = (gg.get(v).unwrap(), wg.get(v).unwrap());
                assert!(max_diff(a, b) < 1e-12, "{name} rows {rows}: {}", max_diff(a, b));
            }
            // A frozen weight gets no gradient, and dx is the same.
            let wf = w.as_tensor().detach();
            let gf = rms_norm(xt, &wf, eps).unwrap().mul(&probe).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(max_diff(gf.get(xt).unwrap(), wg.get(xt).unwrap()) < 1e-12);
            assert!(gf.get(&wf).is_none());
        }
        // f32, rows longer than a SIMD step: the composition's numbers bit for bit.
        let x = rand(&[5, 200], 3).to_dtype(DType::F32).unwrap();
        let w = rand(&[200], 4).to_dtype(DType::F32).unwrap();
        let var = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let want = x
            .broadcast_mul(&var.affine(1.0, eps).unwrap().sqrt().unwrap().recip().unwrap())
            .unwrap()
            .broadcast_mul(&w)
            .unwrap();
        let x32 = candle_core::Var::from_tensor(&x).unwrap();
        let got = rms_norm(x32.as_tensor(), &w, eps).unwrap();
        let diff =
            got.sub(&want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0, "f32 forward differs from the composition");
    }

    /// The fused LoRA projection against candle's composition (`x wᵀ + b + s·((x⊙mask) aᵀ) bᵀ`):
    /// the forward's numbers bit for bit, gradients of x, a and b within f32 rounding, none
    /// for the frozen weight; with and without bias and dropout.
    #[test]
    fn lora_linear_matches_the_composition() {
        use crate::model::lora::{LoraAdapter, Rng, dropout_mask};
        let (m, k, n, r) = (37usize, 24usize, 19usize, 4usize);
        let f = |shape: &[usize], seed| rand(shape, seed).to_dtype(DType::F32).unwrap();
        for (with_bias, dropout) in [(false, 0.0f32), (true, 0.0), (true, 0.25)] {
            let w = f(&[n, k], 1);
            let bias = with_bias.then(|| f(&[n], 2));
            let x = candle_core::Var::from_tensor(&f(&[m, k], 3)).unwrap();
            let a = candle_core::Var::from_tensor(&f(&[r, k], 4)).unwrap();
            let b = candle_core::Var::from_tensor(&f(&[n, r], 5)).unwrap();
            let lora = LoraAdapter {
                a: a.as_tensor().clone(),
                b: b.as_tensor().clone(),
                scale: 2.5,
                dropout,
                rng: std::sync::Arc::new(Rng::new(9)),
            };
            let seed = Rng::new(9).next_u64();
            let xt = x.as_tensor();
            let xd = if dropout > 0.0 {
                let mask = dropout_mask(seed, m * k, 1.0 - dropout as f64);
                xt.mul(&Tensor::from_vec(mask, (m, k), &Device::Cpu).unwrap()).unwrap()
            } else {
                xt.clone()
            };
            let mut want = xt.matmul(&w.t().unwrap()).unwrap();
            if let Some(bb) = &bias {
                want = want.broadcast_add(bb).unwrap();
            }
            let low = xd.matmul(&a.as_tensor().t().unwrap()).unwrap().affine(2.5, 0.0).unwrap();
            want = want.add(&low.matmul(&b.as_tensor().t().unwrap()).unwrap()).unwrap();
            let got = lora_linear(xt, &w, bias.as_ref(), &lora, true, false).unwrap().expect("f32 on the CPU fits");
            let diff = got.sub(&want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "forward: the composition's numbers");
            let probe = f(&[m, n], 6);
            let gw = want.mul(&probe).unwrap().sum_all().unwrap().backward().unwrap();
            let gg = got.mul(&probe).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, v) in [("dx", xt), ("da", a.as_tensor()), ("db", b.as_tensor())] {
                let (g, e) = (gg.get(v).unwrap(), gw.get(v).unwrap());
                let d =
                    g.sub(e).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
                assert!(d < 1e-4, "{name} (bias {with_bias}, dropout {dropout}): {d}");
            }
            assert!(gg.get(&w).is_none(), "the frozen weight gets no gradient");
        }
    }

    /// The bf16 op where the CPU has AMX or AVX512-BF16: forward and both gradients equal f32 products of the
    /// bf16-rounded operands (to f32 summation order); elsewhere it declines.
    #[test]
    fn bf16_linear_is_the_product_of_rounded_operands() {
        let (m, k, n) = (45usize, 70usize, 33usize);
        let f = |shape: &[usize], seed| rand(shape, seed).to_dtype(DType::F32).unwrap();
        let x = candle_core::Var::from_tensor(&f(&[m, k], 1)).unwrap();
        let w = candle_core::Var::from_tensor(&f(&[n, k], 2)).unwrap();
        let Some(y) = bf16_linear(x.as_tensor(), w.as_tensor(), true).unwrap() else {
            assert!(!super::super::bf16mm::available());
            eprintln!("no AMX or AVX512-BF16 here: the op declines and the caller multiplies through candle");
            return;
        };
        let round = |t: &Tensor| t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap();
        let close = |a: &Tensor, b: &Tensor, what: &str| {
            let d = a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-4, "{what}: {d}");
        };
        let (xr, wr) = (round(x.as_tensor()), round(w.as_tensor()));
        close(&y, &xr.matmul(&wr.t().unwrap()).unwrap(), "y");
        let probe = f(&[m, n], 3);
        let g = y.mul(&probe).unwrap().sum_all().unwrap().backward().unwrap();
        let pr = round(&probe);
        close(g.get(x.as_tensor()).unwrap(), &pr.matmul(&wr).unwrap(), "dx");
        close(g.get(w.as_tensor()).unwrap(), &pr.t().unwrap().matmul(&xr).unwrap(), "dw");
        // frozen weight: an op of x alone, no weight gradient
        let wf = w.as_tensor().detach();
        let yf = bf16_linear(x.as_tensor(), &wf, false).unwrap().expect("bf16 unit");
        let gf = yf.mul(&probe).unwrap().sum_all().unwrap().backward().unwrap();
        close(gf.get(x.as_tensor()).unwrap(), &pr.matmul(&wr).unwrap(), "dx frozen");
        assert!(gf.get(&wf).is_none());
    }

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let mut s = seed;
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
    }

    /// The CPU cross-entropy kernels against candle autograd of the plain composition.
    #[test]
    fn cpu_chunked_ce_matches_autograd() {
        let (n, dim, vocab) = (11usize, 6usize, 37usize);
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 7 + 3) % vocab as u32).collect();
        let weights: Vec<f64> = (0..n).map(|i| 0.5 + i as f64 * 0.25).collect();
        let h = candle_core::Var::from_tensor(&rand(&[n, dim], 5)).unwrap();
        let w = candle_core::Var::from_tensor(&rand(&[vocab, dim], 6)).unwrap();
        let logits = h.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
        let lse = logits.exp().unwrap().sum_keepdim(1).unwrap().log().unwrap();
        let idx = Tensor::from_slice(&targets, (n, 1), &Device::Cpu).unwrap();
        let ce = lse.sub(&logits.gather(&idx, 1).unwrap()).unwrap();
        let wt = Tensor::from_slice(&weights, (n, 1), &Device::Cpu).unwrap();
        let want = ce.mul(&wt).unwrap().sum_all().unwrap().affine(1.5, 0.0).unwrap();
        let wg = want.backward().unwrap();
        for chunk in [1usize, 4, 11, 50] {
            for need_dw in [true, false] {
                let op = ChunkedCe {
                    targets: Arc::new(targets.clone()),
                    weights: Arc::new(weights.clone()),
                    chunk_rows: chunk,
                    need_dw,
                    saved: Default::default(),
                };
                let got = chunked_ce(h.as_tensor(), w.as_tensor(), op).unwrap().affine(1.5, 0.0).unwrap();
                let diff = (got.to_scalar::<f64>().unwrap() - want.to_scalar::<f64>().unwrap()).abs();
                assert!(diff < 1e-12, "loss, chunk {chunk}: {diff}");
                let g = got.backward().unwrap();
                let dh = max_diff(g.get(h.as_tensor()).unwrap(), wg.get(h.as_tensor()).unwrap());
                assert!(dh < 1e-12, "dh, chunk {chunk}: {dh}");
                match (need_dw, g.get(w.as_tensor())) {
                    (true, Some(dw)) => assert!(max_diff(dw, wg.get(w.as_tensor()).unwrap()) < 1e-12),
                    (false, None) => {}
                    (nd, got) => panic!("need_dw {nd} but dw present: {}", got.is_some()),
                }
            }
        }
    }
}
