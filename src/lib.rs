//! distill: R1-style reasoning distillation in one binary.
//!
//! The pipeline and the record schema are described in DESIGN.md; each stage is one module
//! whose documentation says which records go in and which come out.

pub mod alloc;
pub mod cli;
pub mod client;
pub mod collect;
pub mod config;
pub mod dedup;
pub mod eval;
pub mod filter;
pub mod inspect;
pub mod model;
pub mod problems;
pub mod record;
pub mod rng;
pub mod run;
pub mod store;
pub mod teacher_sim;
pub mod train;
pub mod verify;
