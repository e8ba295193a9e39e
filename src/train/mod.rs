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

/// Makes the C allocator keep freed memory for reuse instead of handing it back to the kernel.
///
/// A training step allocates and frees the same large activation buffers over and over. By
/// default glibc serves blocks above a threshold with fresh `mmap`s and returns them on free,
/// so every step pays a page fault and a kernel zeroing of each page again: measured here, a
/// quarter to a third of a LoRA step of a 0.5B model at 1,024-2,048 tokens. From the heap, the
/// freed blocks are reused and peak memory stays the same. Process-wide; call before training.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; both values are valid for these options.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
