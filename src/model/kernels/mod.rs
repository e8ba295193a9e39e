//! CPU kernels of the decoder: the few-row projections of a decoding step (`decode`), and, with
//! their own backward passes, blocked attention without `H x T x T` tensors (`attn_cpu`), the
//! chunked cross-entropy (`ce_cpu`), and the candle custom ops that wrap them and the
//! frozen-weight matmul / fused SwiGLU (`ops`), and bf16 products on AMX tiles or AVX512-BF16
//! vectors for mixed precision (`bf16mm`).

pub mod attn_cpu;
pub mod bf16mm;
pub mod ce_cpu;
pub mod decode;
pub mod ops;
