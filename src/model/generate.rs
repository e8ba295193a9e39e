//! Generation on the project's own decoder, so that what is trained is exactly what is
//! evaluated: a KV cache, batches of prompts of different lengths (per-row positions and a
//! padding mask), n samples of one prompt sharing its prefill, and per-sample sampling.
//!
//! In: a loaded [`Model`] (its base frozen: [`Model::freeze_base`]), prompts as token ids with
//! one seed per wanted sample, and [`GenParams`]. Out: per prompt and sample the generated
//! token ids and why generation stopped ([`Finish`]).
//!
//! The cached forward path is inference only: no autograd, the training path is untouched.
//! Sampling is candle-transformers' `LogitsProcessor` (temperature, top-k, top-p, seeded), one
//! per sample, so a sample's tokens depend only on its seed and its prompt, never on the rows it
//! was batched with.

use candle_core::{D, DType, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};

use super::decoder::{Layer, Linear};
use super::kernels::ops;
use super::{Model, ModelError, Result};

/// Slots the cache grows by when it is full.
const CACHE_CHUNK: usize = 256;

/// One layer's keys and values, `(rows, kv_heads, capacity, head_dim)`, filled up to `len`.
struct LayerKv {
    k: Tensor,
    v: Tensor,
}

/// A KV cache over a batch of rows. Every row has the same number of slots; `valid` marks the
/// slots that hold a real token of that row (prompts of different lengths leave padding).
pub struct Session<'m> {
    model: &'m Model,
    layers: Vec<LayerKv>,
    cap: usize,
    len: usize,
    valid: Vec<Vec<bool>>,
    /// The rotary position of each row's next token.
    pos: Vec<u32>,
}

/// `x * cos + rotate_half(x) * sin` on `(B, H, T, D)` with tables `(B, 1, T, D)`.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)?.add(&rot.broadcast_mul(sin)?)
}

impl<'m> Session<'m> {
    /// An empty cache (no rows until the first [`Session::feed`]).
    pub fn new(model: &'m Model) -> Self {
        Session { model, layers: Vec::new(), cap: 0, len: 0, valid: Vec::new(), pos: Vec::new() }
    }

    /// Rows in the batch.
    pub fn rows(&self) -> usize {
        self.valid.len()
    }

    /// Slots used (the longest row, padding included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of real tokens each row holds.
    pub fn positions(&self) -> &[u32] {
        &self.pos
    }

    /// Keeps the rows `idx`, in that order (a row may repeat: n samples of one prefilled prompt).
    pub fn select_rows(&mut self, idx: &[usize]) -> Result<()> {
        if let Some(&bad) = idx.iter().find(|&&i| i >= self.rows()) {
            return Err(ModelError::Input(format!("row {bad} selected from a batch of {}", self.rows())));
        }
        if !self.layers.is_empty() {
            let dev = &self.model.device;
            let ix = Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), idx.len(), dev)?;
            for l in &mut self.layers {
                l.k = l.k.index_select(&ix, 0)?;
                l.v = l.v.index_select(&ix, 0)?;
            }
        }
        self.valid = idx.iter().map(|&i| self.valid[i].clone()).collect();
        self.pos = idx.iter().map(|&i| self.pos[i]).collect();
        Ok(())
    }

    /// Makes room for `extra` more slots.
    fn reserve(&mut self, rows: usize, extra: usize) -> Result<()> {
        let need = self.len + extra;
        if need <= self.cap && !self.layers.is_empty() {
            return Ok(());
        }
        let cfg = &self.model.cfg;
        let cap = need.div_ceil(CACHE_CHUNK) * CACHE_CHUNK;
        let shape = (rows, cfg.num_key_value_heads, cap, cfg.head_dim);
        let (dev, dtype) = (&self.model.device, self.model.dtype);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let k = Tensor::zeros(shape, dtype, dev)?;
            let v = Tensor::zeros(shape, dtype, dev)?;
            if let Some(old) = self.layers.get(i)
                && self.len > 0
            {
                k.slice_set(&old.k.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                v.slice_set(&old.v.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
            }
            layers.push(LayerKv { k, v });
        }
        self.layers = layers;
        self.cap = cap;
        Ok(())
    }

    /// Feeds `tokens[b]` to row `b` (any lengths, at least one token per row; the first call
    /// sets the number of rows) and returns the logits after each row's last token, `(B, vocab)`
    /// in f32.
    pub fn feed(&mut self, tokens: &[Vec<u32>]) -> Result<Tensor> {
        let model = self.model;
        let cfg = &model.cfg;
        let b = tokens.len();
        if b == 0 {
            return Err(ModelError::Input("no rows to feed".into()));
        }
        if self.rows() == 0 && self.len == 0 {
            self.valid = vec![Vec::new(); b];
            self.pos = vec![0; b];
        }
        if b != self.rows() {
            return Err(ModelError::Input(format!("{b} rows fed to a cache of {} rows", self.rows())));
        }
        if let Some(r) = tokens.iter().position(Vec::is_empty) {
            return Err(ModelError::Input(format!("row {r}: no token to feed")));
        }
        if let Some(&bad) = tokens.iter().flatten().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the vocabulary of {} (wrong tokenizer for this model?)",
                cfg.vocab_size
            )));
        }
        let t = tokens.iter().map(Vec::len).max().unwrap_or(1);
        self.reserve(b, t)?;
        let (dev, dtype) = (&model.device, model.dtype);
        let old = self.len;
        let total = old + t;
        let mut ids = Vec::with_capacity(b * t);
        let mut positions = Vec::with_capacity(b * t);
        for (r, row) in tokens.iter().enumerate() {
            for i in 0..t {
                ids.push(row.get(i).copied().unwrap_or(0));
                positions.push(if i < row.len() { self.pos[r] + i as u32 } else { 0 });
            }
        }
        // The mask: query i of row r sees the row's earlier valid slots and its own new tokens
        // up to itself. A padding query sees only its own slot (finite, never used).
        let mut bias = vec![f32::NEG_INFINITY; b * t * total];
        for (r, row) in tokens.iter().enumerate() {
            for i in 0..t {
                let base = (r * t + i) * total;
                if i >= row.len() {
                    bias[base + old + i] = 0.0;
                    continue;
                }
                for (j, &ok) in self.valid[r].iter().enumerate() {
                    if ok {
                        bias[base + j] = 0.0;
                    }
                }
                for j in 0..=i {
                    bias[base + old + j] = 0.0;
                }
            }
        }
        let bias = Tensor::from_vec(bias, (b, 1, 1, t, total), dev)?.to_dtype(dtype)?;
        let (cos, sin) = self.rotary(&positions, b, t)?;
        let ids_t = Tensor::from_vec(ids, b * t, dev)?;
        let mut x = model.embed_tokens.tensor.index_select(&ids_t, 0)?;
        for (li, layer) in model.layers.iter().enumerate() {
            x = self.layer_forward(li, layer, &x, &cos, &sin, &bias, b, t)?;
        }
        // Only each row's last real token needs logits.
        let last: Vec<u32> = tokens.iter().enumerate().map(|(r, row)| (r * t + row.len() - 1) as u32).collect();
        let h = x.index_select(&Tensor::from_vec(last, b, dev)?, 0)?;
        let h = model.norm.forward(&h)?;
        let head = model.lm_head.as_ref().unwrap_or(&model.embed_tokens);
        let logits = if t == 1 { ops::decode_linear(&h, &head.tensor, None)? } else { h.matmul(&head.tensor.t()?)? };
        let logits = logits.to_dtype(DType::F32)?;
        for (r, row) in tokens.iter().enumerate() {
            self.valid[r].extend((0..t).map(|i| i < row.len()));
            self.pos[r] += row.len() as u32;
        }
        self.len = total;
        Ok(logits)
    }

    fn rotary(&self, positions: &[u32], b: usize, t: usize) -> Result<(Tensor, Tensor)> {
        // As the training path (and transformers): angles in f32.
        let inv: Vec<f32> = self.model.cfg.inv_freq().iter().map(|&f| f as f32).collect();
        let hd = self.model.cfg.head_dim;
        let mut cos = Vec::with_capacity(positions.len() * hd);
        let mut sin = Vec::with_capacity(positions.len() * hd);
        for &p in positions {
            for _ in 0..2 {
                for &f in &inv {
                    let angle = p as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let (dev, dtype) = (&self.model.device, self.model.dtype);
        Ok((
            Tensor::from_vec(cos, (b, 1, t, hd), dev)?.to_dtype(dtype)?,
            Tensor::from_vec(sin, (b, 1, t, hd), dev)?.to_dtype(dtype)?,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        li: usize,
        layer: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        bias: &Tensor,
        b: usize,
        t: usize,
    ) -> Result<Tensor> {
        let cfg = &self.model.cfg;
        let (h, kv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let g = h / kv;
        let total = self.len + t;
        let xs = layer.input_layernorm.forward(x)?;
        let a = &layer.self_attn;
        let q = proj(&a.q_proj, &xs, t)?.reshape((b, t, h, hd))?.transpose(1, 2)?.contiguous()?;
        let k = proj(&a.k_proj, &xs, t)?.reshape((b, t, kv, hd))?.transpose(1, 2)?.contiguous()?;
        let v = proj(&a.v_proj, &xs, t)?.reshape((b, t, kv, hd))?.transpose(1, 2)?.contiguous()?;
        let q = rope(&q, cos, sin)?;
        let k = rope(&k, cos, sin)?;
        let cache = &self.layers[li];
        cache.k.slice_set(&k, 2, self.len)?;
        cache.v.slice_set(&v.contiguous()?, 2, self.len)?;
        let keys = cache.k.narrow(2, 0, total)?;
        let values = cache.v.narrow(2, 0, total)?;
        // Grouped heads: query heads kv*g .. kv*g+g share key/value head kv.
        let q = q.reshape((b, kv, g * t, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = (q.matmul(&keys.t()?)? * scale)?.reshape((b, kv, g, t, total))?.broadcast_add(bias)?;
        let probs = softmax_last(&scores)?.reshape((b, kv, g * t, total))?;
        let o = probs.matmul(&values)?.reshape((b, h, t, hd))?.transpose(1, 2)?.reshape((b * t, h * hd))?;
        let x = x.add(&proj(&a.o_proj, &o, t)?)?;
        let xs = layer.post_attention_layernorm.forward(&x)?;
        let m = &layer.mlp;
        let gate = proj(&m.gate_proj, &xs, t)?;
        let up = proj(&m.up_proj, &xs, t)?;
        Ok(x.add(&proj(&m.down_proj, &gate.silu()?.mul(&up)?, t)?)?)
    }
}

/// A projection in the cached forward: at one new token per row (a decoding step) the base
/// weight goes through the few-row `decode` kernel, whose result for a row does not depend on
/// the other rows; prefill (several tokens per row) keeps the general matmul.
fn proj(l: &Linear, x: &Tensor, t: usize) -> Result<Tensor> {
    if t != 1 || l.lora.is_some() {
        return Ok(l.forward(x, false)?);
    }
    Ok(ops::decode_linear(x, &l.weight.tensor, l.bias.as_ref().map(|b| &b.tensor))?)
}

/// Softmax over the last dimension, computed in f32.
fn softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let max = xf.max_keepdim(D::Minus1)?;
    let e = xf.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?.to_dtype(dtype)
}

/// How a generation is sampled and when it stops.
#[derive(Debug, Clone, PartialEq)]
pub struct GenParams {
    pub max_new_tokens: usize,
    /// 0: greedy (argmax).
    pub temperature: f64,
    /// Nucleus sampling (1.0: off).
    pub top_p: f64,
    /// Top-k sampling (0: off).
    pub top_k: usize,
    /// Tokens that end a generation (EOS, the chat template's end-of-turn token).
    pub stop_ids: Vec<u32>,
    /// Texts that end a generation (the text is cut before them).
    pub stop_strings: Vec<String>,
}

impl GenParams {
    /// The sampling step these settings describe.
    pub fn sampling(&self) -> Sampling {
        if self.temperature <= 0.0 {
            return Sampling::ArgMax;
        }
        let temperature = self.temperature;
        let nucleus = self.top_p > 0.0 && self.top_p < 1.0;
        match (self.top_k, nucleus) {
            (0, false) => Sampling::All { temperature },
            (0, true) => Sampling::TopP { p: self.top_p, temperature },
            (k, false) => Sampling::TopK { k, temperature },
            (k, true) => Sampling::TopKThenTopP { k, p: self.top_p, temperature },
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// A stop token (kept as the last of the tokens).
    Eos(u32),
    /// A stop string appeared in the text.
    Stop(String),
    /// `max_new_tokens` reached.
    Length,
}

impl Finish {
    /// As OpenAI's `finish_reason`: `stop` or `length`.
    pub fn reason(&self) -> &'static str {
        match self {
            Finish::Length => "length",
            _ => "stop",
        }
    }
}

/// One sample's output.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The generated ids (a stop token included as the last).
    pub tokens: Vec<u32>,
    pub finish: Finish,
}

/// A prompt and the seeds of its samples (one generation per seed, sharing the prompt's prefill).
#[derive(Debug, Clone)]
pub struct GenRequest {
    pub ids: Vec<u32>,
    pub seeds: Vec<u64>,
}

/// Decodes a window of ids to text (for stop strings), `None` when they do not decode.
pub type Decode<'a> = &'a dyn Fn(&[u32]) -> Option<String>;

/// Generates every sample of every request in one batch: the prompts are prefilled together
/// (padded), each prompt's cache row is copied for its samples, and the batch shrinks as rows
/// finish. `on_step(new_tokens)` is called after each decoding step. Returns, per request, its
/// generations in seed order.
pub fn generate(
    model: &Model,
    requests: &[GenRequest],
    params: &GenParams,
    decode: Option<Decode>,
    on_step: &mut dyn FnMut(usize),
) -> Result<Vec<Vec<Generation>>> {
    let mut out: Vec<Vec<Option<Generation>>> = requests.iter().map(|r| vec![None; r.seeds.len()]).collect();
    let live: Vec<usize> = (0..requests.len()).filter(|&i| !requests[i].seeds.is_empty()).collect();
    if live.is_empty() {
        return Ok(requests.iter().map(|_| Vec::new()).collect());
    }
    if params.max_new_tokens == 0 {
        return Ok(requests
            .iter()
            .map(|r| r.seeds.iter().map(|_| Generation { tokens: vec![], finish: Finish::Length }).collect())
            .collect());
    }
    let mut session = Session::new(model);
    let prompts: Vec<Vec<u32>> = live.iter().map(|&i| requests[i].ids.clone()).collect();
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(ModelError::Input(format!("prompt {} has no tokens", live[i])));
    }
    let logits = session.feed(&prompts)?;
    // Rows: (request, sample); the prefilled row of each request copied per sample.
    let mut rows: Vec<(usize, usize)> = Vec::new();
    let mut src: Vec<usize> = Vec::new();
    for (p, &i) in live.iter().enumerate() {
        for s in 0..requests[i].seeds.len() {
            rows.push((i, s));
            src.push(p);
        }
    }
    session.select_rows(&src)?;
    let ix = Tensor::from_vec(src.iter().map(|&i| i as u32).collect::<Vec<_>>(), src.len(), &model.device)?;
    let mut logits = logits.index_select(&ix, 0)?;
    let sampling = params.sampling();
    let mut procs: Vec<LogitsProcessor> =
        rows.iter().map(|&(i, s)| LogitsProcessor::from_sampling(requests[i].seeds[s], sampling.clone())).collect();
    let mut toks: Vec<Vec<u32>> = vec![Vec::new(); rows.len()];
    let window = params.stop_strings.iter().map(|s| s.len()).max().unwrap_or(0) + 8;
    loop {
        let mut keep = Vec::with_capacity(rows.len());
        let mut next = Vec::with_capacity(rows.len());
        for r in 0..rows.len() {
            let id = procs[r].sample(&logits.get(r)?)?;
            toks[r].push(id);
            let finish = if params.stop_ids.contains(&id) {
                Some(Finish::Eos(id))
            } else if let (Some(dec), false) = (decode, params.stop_strings.is_empty()) {
                let from = toks[r].len().saturating_sub(window);
                dec(&toks[r][from..])
                    .and_then(|text| params.stop_strings.iter().find(|s| text.contains(s.as_str())).cloned())
                    .map(Finish::Stop)
            } else {
                None
            };
            let finish = finish.or_else(|| (toks[r].len() >= params.max_new_tokens).then_some(Finish::Length));
            match finish {
                Some(f) => {
                    let (i, s) = rows[r];
                    out[i][s] = Some(Generation { tokens: std::mem::take(&mut toks[r]), finish: f });
                }
                None => {
                    keep.push(r);
                    next.push(vec![id]);
                }
            }
        }
        on_step(rows.len());
        if keep.is_empty() {
            break;
        }
        if keep.len() < rows.len() {
            session.select_rows(&keep)?;
            rows = keep.iter().map(|&r| rows[r]).collect();
            let mut kept_procs = Vec::with_capacity(keep.len());
            let mut kept_toks = Vec::with_capacity(keep.len());
            let mut procs_opt: Vec<Option<LogitsProcessor>> = procs.into_iter().map(Some).collect();
            for &r in &keep {
                kept_procs.push(procs_opt[r].take().ok_or_else(|| ModelError::Input("row kept twice".into()))?);
                kept_toks.push(std::mem::take(&mut toks[r]));
            }
            procs = kept_procs;
            toks = kept_toks;
        }
        logits = session.feed(&next)?;
    }
    Ok(out.into_iter().map(|v| v.into_iter().flatten().collect()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_choice() {
        let mut p = GenParams {
            max_new_tokens: 1,
            temperature: 0.0,
            top_p: 0.95,
            top_k: 0,
            stop_ids: vec![],
            stop_strings: vec![],
        };
        assert_eq!(p.sampling(), Sampling::ArgMax);
        p.temperature = 0.6;
        assert_eq!(p.sampling(), Sampling::TopP { p: 0.95, temperature: 0.6 });
        p.top_k = 20;
        assert_eq!(p.sampling(), Sampling::TopKThenTopP { k: 20, p: 0.95, temperature: 0.6 });
        p.top_p = 1.0;
        assert_eq!(p.sampling(), Sampling::TopK { k: 20, temperature: 0.6 });
        p.top_k = 0;
        assert_eq!(p.sampling(), Sampling::All { temperature: 0.6 });
    }
}
