//! Training students: the decoder (`model`), chat templates and assistant-only loss masks
//! (`tokenize`), corpus scoring (`score`), and fine-tuning on the distilled corpus
//! (`distill finetune`: `data`, `optim`, `schedule`, `trainer`, `checkpoint`, `plot`).
//!
//! In: SFT example records (the corpus) and a model directory. Out: checkpoints in Hugging Face
//! layout, `metrics.jsonl` and a loss curve under the output directory.

pub mod checkpoint;
pub mod data;
pub mod finetune;
pub mod model;
pub mod optim;
pub mod plot;
pub mod schedule;
pub mod score;
pub mod student;
pub mod tokenize;
pub mod trainer;
