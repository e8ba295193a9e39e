//! Differentiable operations with hand-written backward passes.
//!
//! They exist for memory, not for speed: candle's autograd stores a gradient for every operand
//! of every op, including constants (a frozen weight, the causal mask, the rotary tables), and
//! its matmul backward computes the weight gradient even for a frozen weight. Each op here
//! keeps its constants inside the op, so backward returns only the gradient of the tracked
//! input and nothing else is computed or stored.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;

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

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        gpu::to_storage(&self.fwd(&gpu::to_tensor(s, l)?)?)
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
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
        to_storage(&self.fwd(&to_tensor(s, l)?)?)
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
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

enum Lse {
    F32(Vec<f32>),
    F64(Vec<f64>),
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
                let (total, lse) = ce_cpu::forward(h, w, dim, vocab, &self.targets, &self.weights, self.chunk_rows);
                save(Lse::F32(lse));
                Ok((CpuStorage::F32(vec![total as f32]), Shape::from(())))
            }
            (CpuStorage::F64(h), CpuStorage::F64(w)) => {
                let (h, w) = (contiguous_slice(h, l1)?, contiguous_slice(w, l2)?);
                let (total, lse) = ce_cpu::forward(h, w, dim, vocab, &self.targets, &self.weights, self.chunk_rows);
                save(Lse::F64(lse));
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
                ($t:ty, $lse:expr) => {{
                    let (hv, wv) = (h.flatten_all()?.to_vec1::<$t>()?, w.flatten_all()?.to_vec1::<$t>()?);
                    let lse = match $lse {
                        Some(l) => l,
                        None => ce_cpu::forward(&hv, &wv, dim, vocab, &self.targets, &self.weights, self.chunk_rows).1,
                    };
                    let (dh, dw) = ce_cpu::backward(
                        &hv,
                        &wv,
                        dim,
                        vocab,
                        &self.targets,
                        &self.weights,
                        &lse,
                        g,
                        self.chunk_rows,
                        self.need_dw,
                    );
                    let dw = match dw {
                        Some(d) => Some(Tensor::from_vec(d, (vocab, dim), w.device())?),
                        None => None,
                    };
                    return Ok((Some(Tensor::from_vec(dh, (n, dim), h.device())?), dw));
                }};
            }
            match (h.dtype(), w.dtype(), saved) {
                (DType::F32, DType::F32, Some(Lse::F32(l))) => fast!(f32, Some(l)),
                (DType::F32, DType::F32, _) => fast!(f32, None::<Vec<f32>>),
                (DType::F64, DType::F64, Some(Lse::F64(l))) => fast!(f64, Some(l)),
                (DType::F64, DType::F64, _) => fast!(f64, None::<Vec<f64>>),
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
    let (b, _h, t, _d) = q.dims4()?;
    if allowed.len() != b * t * t {
        candle_core::bail!("attention mask has {} entries for batch {b} x {t} x {t}", allowed.len())
    }
    q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, Attention { allowed: allowed.clone(), scale })
}

const MASKED: f64 = -1e30;

/// `(B, H, T, D)` of an attention input.
fn dims(shape: &Shape) -> Result<attn_cpu::Dims> {
    let (batch, heads, seq, head_dim) = shape.dims4()?;
    Ok(attn_cpu::Dims { batch, heads, seq, head_dim })
}

fn q_shape(d: attn_cpu::Dims) -> (usize, usize, usize, usize) {
    (d.batch, d.heads, d.seq, d.head_dim)
}

/// The elements of a tensor, in order.
fn flat<T: candle_core::WithDType>(t: &Tensor) -> Result<Vec<T>> {
    t.flatten_all()?.to_vec1::<T>()
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
        let d = dims(l1.shape())?;
        let view = |s: &CpuStorage, l: &Layout| -> Result<(usize, usize)> {
            l.contiguous_offsets().filter(|_| l.shape() == l1.shape() && s.dtype() == s1.dtype()).ok_or_else(|| {
                candle_core::Error::Msg("attention: q, k and v must be contiguous with one shape and dtype".into())
            })
        };
        let ((a1, e1), (a2, e2), (a3, e3)) = (view(s1, l1)?, view(s2, l2)?, view(s3, l3)?);
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
            let d = dims(q.shape())?;
            let (dq, dk, dv) = match q.dtype() {
                DType::F32 => {
                    let [q, k, v, o, g] = [q, k, v, _res, grad].map(flat::<f32>);
                    let (dq, dk, dv) = attn_cpu::backward(&q?, &k?, &v?, &o?, &g?, &self.allowed, d, self.scale as f32);
                    let t = |x: Vec<f32>| Tensor::from_vec(x, q_shape(d), &Device::Cpu);
                    (t(dq)?, t(dk)?, t(dv)?)
                }
                _ => {
                    let [q, k, v, o, g] = [q, k, v, _res, grad].map(flat::<f64>);
                    let (dq, dk, dv) = attn_cpu::backward(&q?, &k?, &v?, &o?, &g?, &self.allowed, d, self.scale);
                    let t = |x: Vec<f64>| Tensor::from_vec(x, q_shape(d), &Device::Cpu);
                    (t(dq)?, t(dk)?, t(dv)?)
                }
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

#[cfg(test)]
mod tests {
    use super::*;

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
