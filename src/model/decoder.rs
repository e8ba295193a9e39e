//! The decoder, built only from differentiable candle-core/candle-nn primitives and the
//! hand-differentiated ops in `ops` (no fused op without a backward).
//!
//! Module names mirror the checkpoint keys: `model.embed_tokens`, `model.layers.N.self_attn.
//! {q,k,v,o}_proj`, `model.layers.N.mlp.{gate,up,down}_proj`, `model.layers.N.{input,
//! post_attention}_layernorm`, `model.norm`, `lm_head`.

use std::sync::Arc;

use candle_core::{D, DType, Result, Tensor};

use super::config::Config;
use super::kernels::ops;
use super::lora::LoraAdapter;

/// A weight as the model uses it: trainable (the tensor of a `Var`) or frozen (a plain tensor
/// whose gradient is never computed).
#[derive(Clone)]
pub struct Weight {
    pub name: String,
    pub tensor: Tensor,
    pub trainable: bool,
}

/// Where layers get their weights, by checkpoint key: a prefix and a shared source, as
/// candle's `VarBuilder` (`vb.pp("self_attn").pp("q_proj")` names `….self_attn.q_proj`).
#[derive(Clone)]
pub struct Vb<'a> {
    prefix: String,
    get: &'a dyn Fn(&str, &[usize]) -> super::Result<Weight>,
}

impl<'a> Vb<'a> {
    /// The root builder over `get(name, shape)`, which checks the shape and records the weight.
    pub fn root(get: &'a dyn Fn(&str, &[usize]) -> super::Result<Weight>) -> Self {
        Vb { prefix: String::new(), get }
    }

    /// The builder one level down.
    pub fn pp(&self, name: impl AsRef<str>) -> Vb<'a> {
        let name = name.as_ref();
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Vb { prefix, get: self.get }
    }

    /// The weight `{prefix}.{name}` of this shape.
    pub fn get(&self, shape: &[usize], name: &str) -> super::Result<Weight> {
        (self.get)(&self.pp(name).prefix, shape)
    }
}

/// A projection `y = x W^T + b`, optionally with a LoRA adapter.
#[derive(Clone)]
pub struct Linear {
    pub weight: Weight,
    pub bias: Option<Weight>,
    pub lora: Option<LoraAdapter>,
    /// Mixed precision: multiply in this dtype (bf16), the input and the weight rounded to it
    /// and the product widened back to the input's dtype, so that the weight, its gradient and
    /// the optimiser state stay in the model's dtype; `None`: multiply in the weight's dtype.
    /// bf16 of f32 on a CPU with AMX or AVX512-BF16 runs on those units with f32 sums and an f32 result
    /// ([`ops::bf16_linear`]); elsewhere candle multiplies in bf16.
    pub matmul_dtype: Option<DType>,
}

impl Linear {
    /// `weight` of `(out, in)` and, with `bias`, `bias` of `(out)`.
    pub fn new(inp: usize, out: usize, bias: bool, vb: Vb) -> super::Result<Linear> {
        let weight = vb.get(&[out, inp], "weight")?;
        let bias = if bias { Some(vb.get(&[out], "bias")?) } else { None };
        Ok(Linear { weight, bias, lora: None, matmul_dtype: None })
    }

    /// `x`: `(N, in)` → `(N, out)`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let frozen = !self.weight.trainable && self.bias.as_ref().is_none_or(|b| !b.trainable);
        let mixed = self.matmul_dtype.filter(|d| *d != x.dtype());
        // a frozen projection with its adapter: one op (its base products in bf16 on AMX or AVX512-BF16)
        if let (true, Some(lora), None | Some(DType::BF16)) = (frozen, &self.lora, mixed) {
            let bias = self.bias.as_ref().map(|b| &b.tensor);
            if let Some(y) = ops::lora_linear(x, &self.weight.tensor, bias, lora, train, mixed.is_some())? {
                return Ok(y);
            }
        }
        if let Some(dt) = mixed {
            let fast = match dt {
                DType::BF16 => ops::bf16_linear(x, &self.weight.tensor, self.weight.trainable)?,
                _ => None,
            };
            let mut y = match fast {
                Some(y) => y,
                None => {
                    let w = self.weight.tensor.to_dtype(dt)?;
                    x.to_dtype(dt)?.matmul(&w.t()?)?.to_dtype(x.dtype())?
                }
            };
            if let Some(b) = &self.bias {
                y = y.broadcast_add(&b.tensor)?;
            }
            if let Some(lora) = &self.lora {
                y = y.add(&lora.forward(x, train)?)?;
            }
            return Ok(y);
        }
        let mut y = if frozen {
            ops::frozen_linear(x, &self.weight.tensor, self.bias.as_ref().map(|b| &b.tensor))?
        } else {
            let y = if self.weight.trainable {
                x.matmul(&self.weight.tensor.t()?)?
            } else {
                ops::frozen_linear(x, &self.weight.tensor, None)?
            };
            match &self.bias {
                Some(b) => y.broadcast_add(&b.tensor)?,
                None => y,
            }
        };
        if let Some(lora) = &self.lora {
            y = y.add(&lora.forward(x, train)?)?;
        }
        Ok(y)
    }
}

/// RMSNorm computed in (at least) f32, as transformers does.
#[derive(Clone)]
pub struct RmsNorm {
    pub weight: Weight,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(size: usize, eps: f64, vb: Vb) -> super::Result<RmsNorm> {
        Ok(RmsNorm { weight: vb.get(&[size], "weight")?, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if ops::rms_norm_fused(x, &self.weight.tensor) {
            return ops::rms_norm(x, &self.weight.tensor, self.eps);
        }
        let dtype = x.dtype();
        let work = if dtype == DType::F64 { DType::F64 } else { DType::F32 };
        let xf = x.to_dtype(work)?;
        let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = xf.broadcast_mul(&var.affine(1.0, self.eps)?.sqrt()?.recip()?)?.to_dtype(dtype)?;
        if self.weight.trainable {
            normed.broadcast_mul(&self.weight.tensor)
        } else {
            ops::const_mul(&normed, &self.weight.tensor)
        }
    }
}

#[derive(Clone)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
}

impl Attention {
    pub fn new(cfg: &Config, vb: Vb) -> super::Result<Attention> {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        let (q_out, kv_out) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
        Ok(Attention {
            q_proj: Linear::new(d, q_out, cfg.qkv_bias, vb.pp("q_proj"))?,
            k_proj: Linear::new(d, kv_out, cfg.qkv_bias, vb.pp("k_proj"))?,
            v_proj: Linear::new(d, kv_out, cfg.qkv_bias, vb.pp("v_proj"))?,
            o_proj: Linear::new(q_out, d, cfg.o_bias, vb.pp("o_proj"))?,
        })
    }
}

#[derive(Clone)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    pub fn new(cfg: &Config, vb: Vb) -> super::Result<Mlp> {
        let (d, inter) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Mlp {
            gate_proj: Linear::new(d, inter, cfg.mlp_bias, vb.pp("gate_proj"))?,
            up_proj: Linear::new(d, inter, cfg.mlp_bias, vb.pp("up_proj"))?,
            down_proj: Linear::new(inter, d, cfg.mlp_bias, vb.pp("down_proj"))?,
        })
    }
}

#[derive(Clone)]
pub struct Layer {
    pub self_attn: Attention,
    pub mlp: Mlp,
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
}

impl Layer {
    /// Layer `model.layers.N` (`vb` at that prefix).
    pub fn new(cfg: &Config, vb: Vb) -> super::Result<Layer> {
        Ok(Layer {
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
            input_layernorm: RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            post_attention_layernorm: RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
        })
    }
}

/// Per-batch constants shared by every layer: rotary tables and the attention mask.
pub struct Ctx {
    pub batch: usize,
    pub seq: usize,
    pub cos: Tensor,
    pub sin: Tensor,
    pub allowed: Arc<Vec<u8>>,
    pub train: bool,
}

impl Layer {
    /// `x`: `(B*T, hidden)` → `(B*T, hidden)`.
    pub fn forward(&self, x: &Tensor, cfg: &Config, ctx: &Ctx) -> Result<Tensor> {
        let (b, t) = (ctx.batch, ctx.seq);
        let (h, kv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let residual = x;
        let xs = self.input_layernorm.forward(x)?;
        let a = &self.self_attn;
        let q = a.q_proj.forward(&xs, ctx.train)?.reshape((b, t, h, hd))?.transpose(1, 2)?;
        let k = a.k_proj.forward(&xs, ctx.train)?.reshape((b, t, kv, hd))?.transpose(1, 2)?;
        let v = a.v_proj.forward(&xs, ctx.train)?.reshape((b, t, kv, hd))?.transpose(1, 2)?;
        let q = ops::rope(&q, &ctx.cos, &ctx.sin)?;
        let k = ops::rope(&k, &ctx.cos, &ctx.sin)?;
        // grouped key/value heads go in as they are (the kernel shares them across the group)
        let o = ops::attention(&q, &k, &v, &ctx.allowed, 1.0 / (hd as f64).sqrt())?;
        let o = o.transpose(1, 2)?.reshape((b * t, h * hd))?;
        let x = residual.add(&a.o_proj.forward(&o, ctx.train)?)?;
        let residual = &x;
        let xs = self.post_attention_layernorm.forward(&x)?;
        let m = &self.mlp;
        let gate = m.gate_proj.forward(&xs, ctx.train)?;
        let up = m.up_proj.forward(&xs, ctx.train)?;
        residual.add(&m.down_proj.forward(&ops::swiglu(&gate, &up)?, ctx.train)?)
    }

    pub fn linears(&self) -> [&Linear; 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj, &m.gate_proj, &m.up_proj, &m.down_proj]
    }

    pub fn linears_mut(&mut self) -> [(&'static str, &mut Linear); 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            ("q_proj", &mut a.q_proj),
            ("k_proj", &mut a.k_proj),
            ("v_proj", &mut a.v_proj),
            ("o_proj", &mut a.o_proj),
            ("gate_proj", &mut m.gate_proj),
            ("up_proj", &mut m.up_proj),
            ("down_proj", &mut m.down_proj),
        ]
    }
}
