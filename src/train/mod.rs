//! Training students: the decoder (`model`), chat templates and assistant-only loss masks
//! (`tokenize`), and corpus scoring (`score`).

pub mod model;
