//! The decoder of [`crate::model`] as a [`Trainable`] for the trainer: packed sequences become a
//! [`SeqLayout`] (positions restart per sample, attention inside each sample), checkpoints are
//! the Hugging Face model (full fine-tuning) or the PEFT adapter (LoRA), and the final export
//! is always a complete model directory (LoRA merged).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use super::data::Sequence;
use super::trainer::Trainable;
use crate::model::{Model, SeqLayout, lora};

/// A student being fine-tuned.
pub struct Student {
    pub model: Model,
    /// Where the base model came from (written into the adapter's `base_model_name_or_path`).
    pub base: PathBuf,
    /// Seed of the LoRA dropout masks (re-derived every step).
    pub seed: u64,
    /// The dtype of saved weights.
    pub save_dtype: DType,
}

impl Student {
    /// The model's layout and flattened targets/weights for one packed sequence.
    pub fn inputs(seq: &Sequence) -> (Vec<usize>, Vec<u32>, Vec<f32>) {
        let t = seq.len();
        let lengths: Vec<usize> =
            seq.starts.iter().enumerate().map(|(k, &s)| seq.starts.get(k + 1).copied().unwrap_or(t) - s).collect();
        let (next, counts) = seq.shifted();
        let mut targets = next;
        targets.push(0);
        let mut weights: Vec<f32> = counts.iter().map(|&c| if c { 1.0 } else { 0.0 }).collect();
        weights.push(0.0);
        (lengths, targets, weights)
    }
}

impl Trainable for Student {
    fn trainable(&self) -> Vec<(String, Var)> {
        self.model.trainable_vars()
    }

    fn begin_step(&mut self, step: u64) {
        let rng = Arc::new(lora::Rng::new(self.seed ^ step.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        for layer in &mut self.model.layers {
            for (_, lin) in layer.linears_mut() {
                if let Some(ad) = &mut lin.lora {
                    ad.rng = rng.clone();
                }
            }
        }
    }

    fn loss_sum(&self, seq: &Sequence, train: bool) -> Result<Tensor, String> {
        let (lengths, targets, weights) = Self::inputs(seq);
        let t = seq.len();
        let layout = SeqLayout::packed(&[lengths], t).map_err(|e| e.to_string())?;
        let ids = Tensor::from_slice(&seq.ids, (1, t), &self.model.device).map_err(|e| e.to_string())?;
        let out = self.model.loss(&ids, &layout, &targets, &weights, train).map_err(|e| e.to_string())?;
        out.loss.affine(out.weight_sum, 0.0).map_err(|e| e.to_string())
    }

    fn backward(&self, loss: &Tensor) -> Result<GradStore, String> {
        self.model.backward(loss).map_err(|e| e.to_string())
    }

    fn loss_and_grads_batch(&self, seqs: &[&Sequence]) -> Result<(f64, GradStore), String> {
        if let [one] = seqs {
            return self.loss_and_grads(one);
        }
        let t = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        let (mut ids, mut targets, mut weights, mut rows) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for seq in seqs {
            let (lengths, tg, w) = Self::inputs(seq);
            let pad = t - seq.len();
            ids.extend_from_slice(&seq.ids);
            ids.extend(std::iter::repeat_n(0u32, pad));
            targets.extend(tg);
            targets.extend(std::iter::repeat_n(0u32, pad));
            weights.extend(w);
            weights.extend(std::iter::repeat_n(0f32, pad));
            rows.push(lengths);
        }
        let layout = SeqLayout::packed(&rows, t).map_err(|e| e.to_string())?;
        let ids = Tensor::from_vec(ids, (seqs.len(), t), &self.model.device).map_err(|e| e.to_string())?;
        self.model.loss_and_grads(&ids, &layout, &targets, &weights, true).map_err(|e| e.to_string())
    }

    fn loss_and_grads(&self, seq: &Sequence) -> Result<(f64, GradStore), String> {
        let (lengths, targets, weights) = Self::inputs(seq);
        let t = seq.len();
        let layout = SeqLayout::packed(&[lengths], t).map_err(|e| e.to_string())?;
        let ids = Tensor::from_slice(&seq.ids, (1, t), &self.model.device).map_err(|e| e.to_string())?;
        self.model.loss_and_grads(&ids, &layout, &targets, &weights, true).map_err(|e| e.to_string())
    }

    fn save_checkpoint(&self, dir: &Path) -> Result<(), String> {
        if self.model.lora_config().is_some() {
            self.model.save_adapter(dir, &self.base.to_string_lossy()).map_err(|e| e.to_string())
        } else {
            self.model.save(dir, self.save_dtype).map_err(|e| e.to_string())
        }
    }

    fn export(&self, dir: &Path) -> Result<(), String> {
        // `save` folds LoRA deltas into the base weights: a complete model either way.
        self.model.save(dir, self.save_dtype).map_err(|e| e.to_string())
    }
}
