//! A trainable Qwen2/Llama decoder: Hugging Face checkpoints in (safetensors, single or
//! sharded, f32/bf16/f16; or a GGUF file) and out (HF layout), full or LoRA training, a
//! chunked assistant-only cross-entropy.
//!
//! In: a model directory (or `.gguf`), token ids with their layout (padding/packing), loss
//! targets and weights. Out: logits, a loss, gradients of exactly the trainable `Var`s, and
//! checkpoints/adapters on disk.

pub mod chat;
pub mod config;
pub mod decoder;
pub mod generate;
pub mod gguf;
pub mod kernels;
pub mod lora;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

use kernels::ops;

pub use config::{Arch, Config, RopeScaling};
pub use decoder::{Layer, Linear, RmsNorm, Weight};
pub use lora::{LoraAdapter, LoraConfig};

/// Makes the C allocator keep freed memory for reuse instead of handing it back to the kernel.
///
/// A training step allocates and frees the same large activation buffers over and over. By
/// default glibc serves blocks above a threshold with fresh `mmap`s and returns them on free,
/// so every step pays a page fault and a kernel zeroing of each page again: measured here, a
/// quarter to a third of a LoRA step of a 0.5B model at 1,024-2,048 tokens. From the heap, the
/// freed blocks are reused and peak memory stays the same. Process-wide; call before training.
///
/// The heap is never trimmed either: a threshold of `i32::MAX` (the most an `int` can say) still
/// let glibc hand back the top of the heap whenever more than 2 GiB of it was free, and a full
/// fine-tuning step of a 0.5B model frees more than that each time (its gradients alone are
/// 2 GB), so every step then touched ~800k fresh pages again: 18.5-20.5 s of backward at 1,024
/// tokens against 14.4-14.7 s without them. The process keeps its peak once reached, which is
/// what a training run has to be able to hold anyway.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; both values are valid for these options
    // (glibc stores the threshold as a `size_t`, so -1 is the largest one: never trim).
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
    }
}

/// candle asks how many threads to use on every CPU matmul, and unless `RAYON_NUM_THREADS` is
/// set that question reads and parses `/proc/cpuinfo` (`num_cpus::get_physical`): measured
/// ~270 reads per generated token of SmolLM2-135M at batch 1, a large share of a decode step.
/// This asks once and pins the answer in `RAYON_NUM_THREADS`; rayon's global pool is built
/// here with its own default (every logical CPU), so only candle reads the variable. Call
/// first thing in `main`, before any other thread exists; a no-op when the variable is set.
pub fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    let n = candle_core::utils::get_num_threads();
    // SAFETY: called at the start of `main`, while the process has a single thread, so no
    // other thread can read the environment concurrently.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    let logical = std::thread::available_parallelism().map_or(n, |p| p.get());
    let _ = rayon::ThreadPoolBuilder::new().num_threads(logical).build_global();
}

/// Which layers per-layer activation checkpointing recomputes in backward. In TOML and on the
/// command line: a number of layers (the first ones; 0 = off) or `"all"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Checkpointing {
    #[default]
    Off,
    /// The first N layers (N ≥ 1).
    First(usize),
    All,
}

impl Checkpointing {
    /// N layers: 0 is off.
    pub fn layers(n: usize) -> Checkpointing {
        if n == 0 { Checkpointing::Off } else { Checkpointing::First(n) }
    }

    /// Whether layer `i` (0-based) is recomputed.
    pub fn covers(self, i: usize) -> bool {
        match self {
            Checkpointing::Off => false,
            Checkpointing::First(n) => i < n,
            Checkpointing::All => true,
        }
    }
}

impl std::fmt::Display for Checkpointing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Checkpointing::Off => write!(f, "0"),
            Checkpointing::First(n) => write!(f, "{n}"),
            Checkpointing::All => write!(f, "all"),
        }
    }
}

impl std::str::FromStr for Checkpointing {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "all" {
            return Ok(Checkpointing::All);
        }
        s.parse().map(Checkpointing::layers).map_err(|_| format!("expected a number of layers or `all`, not `{s}`"))
    }
}

impl serde::Serialize for Checkpointing {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Checkpointing::Off => s.serialize_i64(0),
            Checkpointing::First(n) => s.serialize_i64(i64::try_from(*n).unwrap_or(i64::MAX)),
            Checkpointing::All => s.serialize_str("all"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Checkpointing {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Count(u64),
            Word(String),
        }
        match Repr::deserialize(d)? {
            Repr::Count(n) => usize::try_from(n).map(Checkpointing::layers).map_err(serde::de::Error::custom),
            Repr::Word(w) => w
                .parse()
                .map_err(|_| serde::de::Error::custom(format!("expected a number of layers or \"all\", not \"{w}\""))),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model config: {0}")]
    Config(String),
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    #[error("GGUF {path}: {msg}")]
    Gguf { path: PathBuf, msg: String },
    #[error("{0}")]
    Input(String),
    #[error("tensor op failed: {0}")]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ModelError::Io { path: path.to_path_buf(), source }
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;

/// Where each token of a `(B, T)` batch sits: its rotary position and its sequence.
/// `segments[i] == 0` marks padding; tokens attend causally to earlier tokens of the same
/// nonzero segment only (so several packed sequences can share a row).
#[derive(Debug, Clone, PartialEq)]
pub struct SeqLayout {
    pub batch: usize,
    pub seq: usize,
    pub positions: Vec<u32>,
    pub segments: Vec<u32>,
}

impl SeqLayout {
    /// One sequence per row, right-padded to `seq`.
    pub fn padded(lengths: &[usize], seq: usize) -> Result<Self> {
        Self::packed(&lengths.iter().map(|&l| vec![l]).collect::<Vec<_>>(), seq)
    }

    /// Several sequences per row (lengths per row), positions restarting at 0 for each.
    pub fn packed(rows: &[Vec<usize>], seq: usize) -> Result<Self> {
        let mut positions = Vec::with_capacity(rows.len() * seq);
        let mut segments = Vec::with_capacity(rows.len() * seq);
        for (r, lens) in rows.iter().enumerate() {
            let total: usize = lens.iter().sum();
            if total > seq {
                return Err(ModelError::Input(format!(
                    "row {r}: sequences of {total} tokens exceed the row length {seq}"
                )));
            }
            for (s, &l) in lens.iter().enumerate() {
                positions.extend(0..l as u32);
                segments.extend(std::iter::repeat_n(s as u32 + 1, l));
            }
            positions.extend(std::iter::repeat_n(0, seq - total));
            segments.extend(std::iter::repeat_n(0, seq - total));
        }
        Ok(SeqLayout { batch: rows.len(), seq, positions, segments })
    }

    /// `allowed[b, i, j]`: query `i` may attend to key `j`.
    pub fn allowed(&self) -> Vec<u8> {
        let t = self.seq;
        let mut out = vec![0u8; self.batch * t * t];
        for b in 0..self.batch {
            let seg = &self.segments[b * t..(b + 1) * t];
            for i in 0..t {
                for j in 0..=i {
                    if seg[j] != 0 && seg[j] == seg[i] {
                        out[b * t * t + i * t + j] = 1;
                    }
                }
            }
        }
        out
    }
}

/// The loss of a batch: `loss` = Σ w·CE / Σ w (a scalar tensor, differentiable), with the
/// weight sum (the number of target tokens when weights are 0/1).
pub struct LossOutput {
    pub loss: Tensor,
    pub weight_sum: f64,
}

/// A loaded decoder. Base weights are trainable `Var`s after `load`; `freeze_base` or
/// `add_lora` make them constants whose gradients are never computed.
pub struct Model {
    pub cfg: Config,
    pub device: Device,
    pub dtype: DType,
    pub embed_tokens: Weight,
    pub layers: Vec<Layer>,
    pub norm: RmsNorm,
    /// `None` when tied to `embed_tokens`.
    pub lm_head: Option<Weight>,
    vars: Vec<(String, Var)>,
    lora: Option<LoraConfig>,
    /// Rows of the cross-entropy computed at once (default: about 32M logits per chunk).
    pub ce_chunk_rows: Option<usize>,
    /// Per-layer activation checkpointing in [`Model::loss_and_grads`]: the layers it covers
    /// keep only their input during the forward pass and are recomputed in backward; the
    /// others keep their activations.
    pub checkpoint_layers: Checkpointing,
    /// Directory the model came from (tokenizer files are copied from it on save).
    pub source_dir: Option<PathBuf>,
}

/// What the cross-entropy of a batch needs: the rows carrying loss and the op over them.
struct LossSetup {
    idx: Tensor,
    op: ops::ChunkedCe,
    weight_sum: f64,
}

/// The dropout generators' positions of a layer's adapters (to replay its masks).
fn dropout_states(layer: &Layer) -> Vec<u64> {
    layer.linears().iter().filter_map(|l| l.lora.as_ref().map(|a| a.rng.state())).collect()
}

fn restore_dropout(layer: &Layer, states: &[u64]) {
    for (a, &s) in layer.linears().iter().filter_map(|l| l.lora.as_ref()).zip(states) {
        a.rng.set_state(s);
    }
}

/// Makes an empty-ish `GradStore` (candle offers no public constructor): it holds only the
/// one-element gradient of a throwaway variable.
fn fresh_grad_store(device: &Device) -> Result<GradStore> {
    let v = Var::zeros(1, DType::F32, device)?;
    Ok(v.as_tensor().backward()?)
}

impl Model {
    /// Builds a model from named tensors (already in `dtype` on `device`); every weight
    /// becomes a trainable `Var`.
    pub fn from_tensors(
        cfg: Config,
        get: impl FnMut(&str) -> Result<Tensor>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        // Every weight is read once, shape-checked and made a Var, in checkpoint-key order.
        let source = std::cell::RefCell::new((get, Vec::new()));
        let weight = |name: &str, shape: &[usize]| -> Result<Weight> {
            let mut src = source.borrow_mut();
            let t = (src.0)(name)?;
            if t.dims() != shape {
                return Err(ModelError::Config(format!(
                    "tensor {name} has shape {:?}, the config implies {shape:?}",
                    t.dims()
                )));
            }
            let var = Var::from_tensor(&t.to_dtype(dtype)?.to_device(device)?)?;
            let w = Weight { name: name.to_string(), tensor: var.as_tensor().clone(), trainable: true };
            src.1.push((name.to_string(), var));
            Ok(w)
        };
        let vb = decoder::Vb::root(&weight);
        let d = cfg.hidden_size;
        let embed_tokens = vb.pp("model.embed_tokens").get(&[cfg.vocab_size, d], "weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(&cfg, vb.pp(format!("model.layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(d, cfg.rms_norm_eps, vb.pp("model.norm"))?;
        let lm_head =
            if cfg.tie_word_embeddings { None } else { Some(vb.pp("lm_head").get(&[cfg.vocab_size, d], "weight")?) };
        let vars = source.into_inner().1;
        Ok(Model {
            cfg,
            device: device.clone(),
            dtype,
            embed_tokens,
            layers,
            norm,
            lm_head,
            vars,
            lora: None,
            ce_chunk_rows: None,
            checkpoint_layers: Checkpointing::Off,
            source_dir: None,
        })
    }

    /// Loads a Hugging Face model directory (or a `.gguf` file) with weights in `dtype`.
    pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        if path.extension().is_some_and(|e| e == "gguf") {
            let mut m = gguf::load_model(path, device, dtype)?;
            m.source_dir = None;
            return Ok(m);
        }
        weights::load_dir(path, device, dtype)
    }

    /// The trainable variables, named as in the checkpoint (LoRA: `...q_proj.lora_A.weight`).
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        self.vars.clone()
    }

    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora.as_ref()
    }

    fn all_weights_mut(&mut self) -> Vec<&mut Weight> {
        let mut out = vec![&mut self.embed_tokens];
        for l in &mut self.layers {
            let Layer { self_attn, mlp, input_layernorm, post_attention_layernorm } = l;
            out.push(&mut input_layernorm.weight);
            out.push(&mut post_attention_layernorm.weight);
            for lin in [
                &mut self_attn.q_proj,
                &mut self_attn.k_proj,
                &mut self_attn.v_proj,
                &mut self_attn.o_proj,
                &mut mlp.gate_proj,
                &mut mlp.up_proj,
                &mut mlp.down_proj,
            ] {
                out.push(&mut lin.weight);
                if let Some(b) = &mut lin.bias {
                    out.push(b);
                }
            }
        }
        out.push(&mut self.norm.weight);
        if let Some(h) = &mut self.lm_head {
            out.push(h);
        }
        out
    }

    /// Every base weight (name, tensor), in checkpoint order.
    pub fn base_weights(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(self.embed_tokens.name.clone(), self.embed_tokens.tensor.clone())];
        for l in &self.layers {
            out.push((l.input_layernorm.weight.name.clone(), l.input_layernorm.weight.tensor.clone()));
            out.push((
                l.post_attention_layernorm.weight.name.clone(),
                l.post_attention_layernorm.weight.tensor.clone(),
            ));
            for lin in l.linears() {
                out.push((lin.weight.name.clone(), lin.weight.tensor.clone()));
                if let Some(b) = &lin.bias {
                    out.push((b.name.clone(), b.tensor.clone()));
                }
            }
        }
        out.push((self.norm.weight.name.clone(), self.norm.weight.tensor.clone()));
        if let Some(h) = &self.lm_head {
            out.push((h.name.clone(), h.tensor.clone()));
        }
        out
    }

    /// Makes every base weight a constant: no gradient is computed or stored for it.
    pub fn freeze_base(&mut self) {
        for w in self.all_weights_mut() {
            w.tensor = w.tensor.detach();
            w.trainable = false;
        }
        self.vars.retain(|(n, _)| n.contains(".lora_"));
    }

    /// Mixed precision: the seven projections of every layer multiply in `dtype` (bf16; see
    /// [`decoder::Linear::matmul_dtype`]), with master weights, gradients and optimiser state
    /// in the model's dtype; the embeddings, LM head and loss, attention, norms and LoRA
    /// adapters stay in it. `None`: everything in the model's dtype.
    pub fn set_matmul_dtype(&mut self, dtype: Option<DType>) {
        for layer in &mut self.layers {
            for (_, lin) in layer.linears_mut() {
                lin.matmul_dtype = dtype;
            }
        }
    }

    /// Freezes the base and adds LoRA adapters (A random, B zero, as PEFT initialises them).
    pub fn add_lora(&mut self, cfg: &LoraConfig) -> Result<()> {
        if cfg.rank == 0 {
            return Err(ModelError::Input("LoRA rank must be at least 1".into()));
        }
        for t in &cfg.targets {
            if !lora::TARGETS.contains(&t.as_str()) {
                return Err(ModelError::Input(format!("LoRA target `{t}` is not one of {}", lora::TARGETS.join(", "))));
            }
        }
        self.freeze_base();
        let rng = Arc::new(lora::Rng::new(cfg.seed));
        let init_rng = lora::Rng::new(cfg.seed ^ 0x5EED);
        let (device, dtype) = (self.device.clone(), self.dtype);
        let mut new_vars = Vec::new();
        for layer in &mut self.layers {
            for (short, lin) in layer.linears_mut() {
                if !cfg.targets.iter().any(|t| t == short) {
                    continue;
                }
                let (out, inp) = lin.weight.tensor.dims2()?;
                // kaiming_uniform(a=sqrt(5)) as PEFT/torch Linear: bound = 1/sqrt(in).
                let bound = 1.0 / (inp as f64).sqrt();
                let a: Vec<f32> =
                    (0..cfg.rank * inp).map(|_| ((init_rng.uniform() * 2.0 - 1.0) * bound) as f32).collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (cfg.rank, inp), &device)?.to_dtype(dtype)?)?;
                let b = Var::zeros((out, cfg.rank), dtype, &device)?;
                let base = lin.weight.name.trim_end_matches(".weight").to_string();
                new_vars.push((format!("{base}.lora_A.weight"), a.clone()));
                new_vars.push((format!("{base}.lora_B.weight"), b.clone()));
                lin.lora = Some(LoraAdapter {
                    a: a.as_tensor().clone(),
                    b: b.as_tensor().clone(),
                    scale: cfg.scale(),
                    dropout: cfg.dropout,
                    rng: rng.clone(),
                });
            }
        }
        self.vars.extend(new_vars);
        self.lora = Some(cfg.clone());
        Ok(())
    }

    /// Folds every adapter into its base weight (`W += scale · B A`) and removes the adapters.
    /// The merged base stays frozen; reload the saved checkpoint to train it fully.
    pub fn merge_lora(&mut self) -> Result<()> {
        for layer in &mut self.layers {
            for (_, lin) in layer.linears_mut() {
                if let Some(ad) = lin.lora.take() {
                    lin.weight.tensor =
                        lin.weight.tensor.add(&ad.delta()?.to_dtype(lin.weight.tensor.dtype())?)?.detach();
                }
            }
        }
        self.vars.retain(|(n, _)| !n.contains(".lora_"));
        self.lora = None;
        Ok(())
    }

    fn rotary(&self, layout: &SeqLayout) -> Result<(Tensor, Tensor)> {
        // As transformers: inverse frequencies and angles in f32.
        let inv: Vec<f32> = self.cfg.inv_freq().iter().map(|&f| f as f32).collect();
        let hd = self.cfg.head_dim;
        let n = layout.positions.len();
        let mut cos = Vec::with_capacity(n * hd);
        let mut sin = Vec::with_capacity(n * hd);
        for &p in &layout.positions {
            for _ in 0..2 {
                for &f in &inv {
                    let angle = p as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let shape = (layout.batch, 1, layout.seq, hd);
        Ok((
            Tensor::from_vec(cos, shape, &self.device)?.to_dtype(self.dtype)?,
            Tensor::from_vec(sin, shape, &self.device)?.to_dtype(self.dtype)?,
        ))
    }

    fn check_ids(&self, ids: &Tensor, layout: &SeqLayout) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if b != layout.batch || t != layout.seq || layout.positions.len() != b * t || layout.segments.len() != b * t {
            return Err(ModelError::Input(format!(
                "input ids are {b}x{t} but the layout describes {}x{}",
                layout.batch, layout.seq
            )));
        }
        let ids = ids.to_dtype(DType::U32)?;
        let max = ids.flatten_all()?.max(0)?.to_scalar::<u32>()?;
        if max as usize >= self.cfg.vocab_size {
            return Err(ModelError::Input(format!(
                "token id {max} is outside the vocabulary of {} (wrong tokenizer for this model?)",
                self.cfg.vocab_size
            )));
        }
        Ok(ids)
    }

    fn ctx(&self, layout: &SeqLayout, train: bool) -> Result<decoder::Ctx> {
        let (cos, sin) = self.rotary(layout)?;
        Ok(decoder::Ctx { batch: layout.batch, seq: layout.seq, cos, sin, allowed: Arc::new(layout.allowed()), train })
    }

    /// The output of the last layer `(B*T, hidden)`, before the final norm.
    fn layer_stack(&self, ids: &Tensor, layout: &SeqLayout, train: bool) -> Result<Tensor> {
        let ids = self.check_ids(ids, layout)?;
        let ctx = self.ctx(layout, train)?;
        let mut x = self.embed_tokens.tensor.index_select(&ids.flatten_all()?, 0)?;
        for layer in &self.layers {
            x = layer.forward(&x, &self.cfg, &ctx)?;
        }
        Ok(x)
    }

    /// Final hidden states `(B*T, hidden)` (after the last norm). `train` enables LoRA dropout.
    pub fn hidden_states(&self, ids: &Tensor, layout: &SeqLayout, train: bool) -> Result<Tensor> {
        Ok(self.norm.forward(&self.layer_stack(ids, layout, train)?)?)
    }

    fn head(&self) -> &Weight {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// Logits `(B, T, vocab)`.
    pub fn forward(&self, ids: &Tensor, layout: &SeqLayout) -> Result<Tensor> {
        let h = self.hidden_states(ids, layout, false)?;
        let head = self.head();
        let logits =
            if head.trainable { h.matmul(&head.tensor.t()?)? } else { ops::frozen_linear(&h, &head.tensor, None)? };
        Ok(logits.reshape((layout.batch, layout.seq, self.cfg.vocab_size))?)
    }

    /// The rows that carry loss, their targets and weights, checked against the vocabulary.
    fn loss_setup(&self, layout: &SeqLayout, targets: &[u32], weights: &[f32]) -> Result<LossSetup> {
        let n = layout.batch * layout.seq;
        if targets.len() != n || weights.len() != n {
            return Err(ModelError::Input(format!(
                "{} targets and {} weights for {n} positions",
                targets.len(),
                weights.len()
            )));
        }
        let rows: Vec<u32> = (0..n as u32).filter(|&i| weights[i as usize] != 0.0).collect();
        let weight_sum: f64 = rows.iter().map(|&i| weights[i as usize] as f64).sum();
        if rows.is_empty() {
            return Err(ModelError::Input("no position carries loss weight (no assistant tokens?)".into()));
        }
        let sel_targets: Vec<u32> = rows.iter().map(|&i| targets[i as usize]).collect();
        if let Some(&bad) = sel_targets.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(ModelError::Input(format!(
                "target id {bad} is outside the vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        let sel_weights: Vec<f64> = rows.iter().map(|&i| weights[i as usize] as f64).collect();
        let n_sel = rows.len();
        let idx = Tensor::from_vec(rows, n_sel, &self.device)?;
        let head = self.head();
        let chunk_rows = self.ce_chunk_rows.unwrap_or_else(|| (32 << 20) / self.cfg.vocab_size.max(1)).max(1);
        let op = ops::ChunkedCe {
            targets: Arc::new(sel_targets),
            weights: Arc::new(sel_weights),
            chunk_rows,
            need_dw: head.trainable,
            saved: Default::default(),
        };
        Ok(LossSetup { idx, op, weight_sum })
    }

    /// `Σ w·CE` of the final hidden states `h` (before the last norm), `(B*T, hidden)`.
    fn summed_ce(&self, h: &Tensor, setup: LossSetup) -> Result<Tensor> {
        let h = self.norm.forward(h)?.index_select(&setup.idx, 0)?;
        Ok(ops::chunked_ce(&h, &self.head().tensor, setup.op)?)
    }

    /// Weighted mean cross-entropy of predicting `targets[i]` at position `i` (flattened
    /// `B*T`; the caller shifts), weight `weights[i]` (0 = no loss). Logits are computed in
    /// chunks and never held whole.
    pub fn loss(
        &self,
        ids: &Tensor,
        layout: &SeqLayout,
        targets: &[u32],
        weights: &[f32],
        train: bool,
    ) -> Result<LossOutput> {
        let setup = self.loss_setup(layout, targets, weights)?;
        let weight_sum = setup.weight_sum;
        let sum = self.summed_ce(&self.layer_stack(ids, layout, train)?, setup)?;
        Ok(LossOutput { loss: sum.affine(1.0 / weight_sum, 0.0)?, weight_sum })
    }

    /// The summed loss `Σ w·CE` (as [`Model::loss`] times its weight sum) and the gradients of
    /// the trainable Vars, in one pass: with [`Model::checkpoint_layers`] only the layer inputs
    /// are kept during the forward pass and each layer is recomputed (with the same dropout
    /// masks) when its gradient is needed; otherwise a plain forward and backward.
    pub fn loss_and_grads(
        &self,
        ids: &Tensor,
        layout: &SeqLayout,
        targets: &[u32],
        weights: &[f32],
        train: bool,
    ) -> Result<(f64, GradStore)> {
        let setup = self.loss_setup(layout, targets, weights)?;
        if self.checkpoint_layers == Checkpointing::Off {
            let sum = self.summed_ce(&self.layer_stack(ids, layout, train)?, setup)?;
            let value = sum.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            return Ok((value, self.backward(&sum)?));
        }
        let ids = self.check_ids(ids, layout)?;
        let ctx = self.ctx(layout, train)?;
        let x0 = self.embed_tokens.tensor.index_select(&ids.flatten_all()?, 0)?;
        // Per layer: its input (recomputed layers) or its input Var and output with their graph.
        let mut saved: Vec<(Tensor, Option<Tensor>)> = Vec::with_capacity(self.layers.len());
        let mut rng_states = Vec::with_capacity(self.layers.len());
        let mut x = x0.detach();
        for (i, layer) in self.layers.iter().enumerate() {
            rng_states.push(dropout_states(layer));
            if self.checkpoint_layers.covers(i) {
                saved.push((x.clone(), None));
                x = layer.forward(&x, &self.cfg, &ctx)?.detach();
            } else {
                let xv = Var::from_tensor(&x)?.as_tensor().clone();
                let y = layer.forward(&xv, &self.cfg, &ctx)?;
                x = y.detach();
                saved.push((xv, Some(y)));
            }
        }
        let end_states: Vec<_> = self.layers.iter().map(dropout_states).collect();
        let mut keep = fresh_grad_store(&self.device)?;
        let hv = Var::from_tensor(&x)?;
        drop(x);
        let sum = self.summed_ce(hv.as_tensor(), setup)?;
        let value = sum.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let mut g = self.take_grads(sum.backward()?, &mut keep, hv.as_tensor())?;
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let Some((input, kept)) = saved.pop() else { break };
            let (xv, y) = match kept {
                Some(y) => (input, y),
                None => {
                    restore_dropout(layer, &rng_states[i]);
                    let xv = Var::from_tensor(&input)?.as_tensor().clone();
                    let y = layer.forward(&xv, &self.cfg, &ctx)?;
                    (xv, y)
                }
            };
            let root = y.mul(&g)?.sum_all()?;
            drop(y);
            g = self.take_grads(root.backward()?, &mut keep, &xv)?;
        }
        for (layer, states) in self.layers.iter().zip(&end_states) {
            restore_dropout(layer, states);
        }
        if self.embed_tokens.trainable {
            let root = x0.mul(&g)?.sum_all()?;
            let all = root.backward()?;
            self.take_grads(all, &mut keep, &root)?;
        }
        Ok((value, keep))
    }

    /// Moves the trainable Vars' gradients from `all` into `keep` (adding to what is there)
    /// and returns the (detached) gradient of `input`, or zeros when nothing reached it.
    fn take_grads(&self, mut all: GradStore, keep: &mut GradStore, input: &Tensor) -> Result<Tensor> {
        for (_, v) in &self.vars {
            if let Some(g) = all.remove(v.as_tensor()) {
                let g = g.detach();
                let sum = match keep.remove(v.as_tensor()) {
                    Some(acc) => acc.add(&g)?,
                    None => g,
                };
                keep.insert(v.as_tensor(), sum);
            }
        }
        Ok(match all.remove(input) {
            Some(g) => g.detach(),
            None => input.zeros_like()?,
        })
    }

    /// Backpropagates `loss` and keeps only the gradients of the trainable `Var`s.
    pub fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        let mut all = loss.backward()?;
        let mut keep = fresh_grad_store(&self.device)?;
        for (_, v) in &self.vars {
            if let Some(g) = all.remove(v.as_tensor()) {
                keep.insert(v.as_tensor(), g);
            }
        }
        Ok(keep)
    }

    /// Number of parameters (base weights, plus adapters).
    pub fn num_params(&self) -> usize {
        self.base_weights().iter().map(|(_, t)| t.elem_count()).sum::<usize>()
            + self.vars.iter().filter(|(n, _)| n.contains(".lora_")).map(|(_, v)| v.elem_count()).sum::<usize>()
    }
}
