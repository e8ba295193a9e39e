//! Benchmark (not a test): one fused AdamW step over a Qwen2.5-0.5B-shaped parameter set (494M
//! f32 weights: 24 layers, hidden 896, MLP 4864, 14/2 heads, vocab 151,936, tied head), plus the
//! global gradient norm. Prints seconds per step; `benches/optim_bench.sh` runs PyTorch's AdamW
//! on the same shapes beside it.
//!
//! Usage: cargo run --release --example bench_optim [-- --layers N --steps K]

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use distill::train::optim::{AdamW, AdamWConfig};

fn shapes(layers: usize) -> Vec<(String, Vec<usize>)> {
    let (h, i, kv, v) = (896usize, 4864usize, 128usize, 151_936usize);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for (n, s) in [
            ("self_attn.q_proj.weight", vec![h, h]),
            ("self_attn.q_proj.bias", vec![h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.k_proj.bias", vec![kv]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.bias", vec![kv]),
            ("self_attn.o_proj.weight", vec![h, h]),
            ("mlp.gate_proj.weight", vec![i, h]),
            ("mlp.up_proj.weight", vec![i, h]),
            ("mlp.down_proj.weight", vec![h, i]),
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
        ] {
            out.push((format!("{p}.{n}"), s));
        }
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    out
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |k: &str, d: usize| {
        args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(d)
    };
    let (layers, steps) = (arg("--layers", 24), arg("--steps", 3));
    let dev = Device::Cpu;
    let mut vars = Vec::new();
    let mut grads = Vec::new();
    for (name, shape) in shapes(layers) {
        let n: usize = shape.iter().product();
        let w = Tensor::ones(n, DType::F32, &dev)?.affine(0.02, 0.0)?.reshape(shape.as_slice())?;
        vars.push((name, Var::from_tensor(&w)?));
        grads.push(Some(Tensor::ones(n, DType::F32, &dev)?.affine(1e-3, 0.0)?.reshape(shape.as_slice())?));
    }
    let cfg = AdamWConfig { weight_decay: 0.01, ..AdamWConfig::default() };
    let mut opt = AdamW::new(vars, cfg)?;
    let grads = opt.grads_from(grads)?;
    println!("params: {:.1}M, threads: {}", opt.num_params() as f64 / 1e6, rayon::current_num_threads());
    let mut times = Vec::new();
    for _ in 0..steps {
        let t = Instant::now();
        let norm = opt.grad_norm(&grads, 1.0)?;
        let clip = distill::train::optim::clip_factor(norm, Some(1.0));
        let t_norm = t.elapsed().as_secs_f64();
        opt.step(&grads, 1e-5, clip)?;
        times.push((t.elapsed().as_secs_f64(), t_norm));
    }
    times.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (total, norm) = times[times.len() / 2];
    println!("distill fused AdamW + clip: {total:.3} s/step (grad-norm {norm:.3} s, update {:.3} s)", total - norm);
    Ok(())
}
