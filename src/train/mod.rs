//! Fine-tuning students on the distilled corpus (`distill finetune`: `data`, `optim`,
//! `schedule`, `trainer`, `checkpoint`, `plot`, `student`). The decoder, LoRA, weights I/O and
//! chat templates live in [`crate::model`], shared with evaluation.
//!
//! In: SFT example records (the corpus) and a model directory. Out: checkpoints in Hugging Face
//! layout, `metrics.jsonl` and a loss curve under the output directory.

pub mod checkpoint;
pub mod data;
pub mod finetune;
pub mod optim;
pub mod plot;
pub mod schedule;
pub mod student;
pub mod trainer;
