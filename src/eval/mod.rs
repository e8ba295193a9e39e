//! Judging students: `score` (mean per-token loss and perplexity of a corpus's assistant
//! tokens under a model). In: SFT example records and a model. Out: a report.

pub mod score;
