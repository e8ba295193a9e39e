//! Benchmark (not a test): one training step of a Qwen2.5-0.5B-shaped random model (or fewer
//! layers) through the trainer's pieces — forward+backward, gradient norm + fused AdamW — with
//! the time of each, tokens/s and peak RSS. `benches/train_bench.sh` runs PyTorch beside it.
//!
//! Usage: cargo run --release --example bench_train -- [--tokens 512] [--layers 24] [--lora 16] [--steps 2]
//!        [--device cpu|cuda]   (cuda: a build with `--features cuda`) [--checkpoint [N]] (per-layer
//!        activation checkpointing of N layers, default all; forward and backward are then reported
//!        together) [--bf16] (mixed precision, as `distill finetune --precision bf16`)

use std::time::Instant;

// The allocator of the `distill` binary, so the step is measured as `distill finetune` runs it.
#[global_allocator]
static ALLOC: distill::alloc::Hybrid = distill::alloc::Hybrid;

use candle_core::{DType, Tensor};
use distill::model::{Checkpointing, Config, LoraConfig, Model};
use distill::train::data::{self, DataConfig, Sample};
use distill::train::optim::{self, AdamW, AdamWConfig};
use distill::train::student::Student;
use distill::train::trainer::Trainable;

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Minor page faults of this process so far (each one a fresh page touched: zeroed by the kernel,
/// and on a VM perhaps first backed by the host).
fn minor_faults() -> i64 {
    // SAFETY: getrusage only writes the struct it is given.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u.ru_minflt as i64
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    distill::model::pin_thread_count();
    let args: Vec<String> = std::env::args().collect();
    // As `distill finetune` does (DISTILL_BENCH_DEFAULT_MALLOC=1 measures without it).
    if std::env::var_os("DISTILL_BENCH_DEFAULT_MALLOC").is_none() {
        distill::model::keep_freed_memory();
    }
    let arg = |k: &str, d: usize| {
        args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(d)
    };
    let (tokens, layers, rank, steps) =
        (arg("--tokens", 512), arg("--layers", 24), arg("--lora", 0), arg("--steps", 2));
    let cfg = Config::from_json(&serde_json::json!({
        "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": layers,
        "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": true, "hidden_act": "silu",
        "use_sliding_window": false
    }))?;
    let device_name = args.iter().position(|a| a == "--device").and_then(|i| args.get(i + 1)).map_or("cpu", |s| s);
    let dev = distill::train::finetune::parse_device(device_name)?;
    let mut seed = 1u64;
    let t_build = Instant::now();
    let mut model = Model::from_tensors(
        cfg,
        |name| {
            seed += 1;
            let shape: Vec<usize> = shape_of(name, layers);
            let n: usize = shape.iter().product();
            let std = if name.contains("norm") { 0.0 } else { 0.02 };
            let t =
                if std == 0.0 { Tensor::ones(n, DType::F32, &dev)? } else { Tensor::randn(0f32, std as f32, n, &dev)? };
            Ok(t.reshape(shape)?)
        },
        &dev,
        DType::F32,
    )?;
    if rank > 0 {
        model.add_lora(&LoraConfig { rank, alpha: 2.0 * rank as f64, dropout: 0.0, ..LoraConfig::default() })?;
    }
    // --checkpoint [N]: N layers (default all) recomputed in backward.
    let checkpoint = args.iter().any(|a| a == "--checkpoint");
    model.checkpoint_layers = match (checkpoint, arg("--checkpoint", 0)) {
        (false, _) => Checkpointing::Off,
        (true, 0) => Checkpointing::All,
        (true, n) => Checkpointing::layers(n),
    };
    // --bf16: mixed precision (`distill finetune --precision bf16`).
    let bf16 = args.iter().any(|a| a == "--bf16");
    if bf16 {
        model.set_matmul_dtype(Some(DType::BF16));
    }
    let model_ckpt = model.checkpoint_layers;
    let student = Student { model, base: "random".into(), seed: 0, save_dtype: DType::F32 };
    eprintln!("built in {:.1} s", t_build.elapsed().as_secs_f64());
    let ids: Vec<u32> = (0..tokens as u32).map(|i| (i * 7919) % 151_000 + 10).collect();
    let sample = Sample { id: "x".into(), ids, targets: (0..tokens).map(|i| i >= tokens / 4).collect() };
    let seq = data::pack(&[sample], &DataConfig { max_seq_len: tokens, ..DataConfig::default() }).remove(0);
    let mut opt = AdamW::new(student.trainable(), AdamWConfig { weight_decay: 0.01, ..AdamWConfig::default() })?;
    let n_targets = seq.num_targets() as f64;
    let mut rows = Vec::new();
    for step in 1..=steps {
        let faults = minor_faults();
        let t0 = Instant::now();
        let (t_fwd, g) = if checkpoint {
            // Forward and backward interleave: all of it is counted as backward.
            (0.0, student.loss_and_grads(&seq)?.1)
        } else {
            let loss = student.loss_sum(&seq, true)?;
            let _ = loss.to_scalar::<f32>()?;
            let t_fwd = t0.elapsed().as_secs_f64();
            (t_fwd, student.backward(&loss)?)
        };
        let mut grads = opt.new_grads();
        opt.accumulate(&mut grads, g)?;
        dev.synchronize()?;
        let t_bwd = t0.elapsed().as_secs_f64() - t_fwd;
        let t1 = Instant::now();
        let norm = opt.grad_norm(&grads, 1.0 / n_targets)?;
        opt.step(&grads, 1e-5, optim::clip_factor(norm, Some(1.0)) / n_targets)?;
        dev.synchronize()?;
        let t_opt = t1.elapsed().as_secs_f64();
        // Every step on stderr (the figure line reports the last): a step that touches fresh
        // pages where the one before did not shows here.
        eprintln!(
            "step {step}: forward {t_fwd:.2} s, backward {t_bwd:.2} s, optimizer {t_opt:.3} s, {} minor page faults",
            minor_faults() - faults
        );
        rows.push((t_fwd, t_bwd, t_opt));
    }
    let (f, b, o) = *rows.last().unwrap_or(&(0.0, 0.0, 0.0));
    let total = f + b + o;
    println!(
        "distill {}{}{} r={rank} {tokens} tokens, {layers} layers, {device_name}, {:.1}M trainable: {total:.2} s/step (forward {f:.2}, backward {b:.2}, optimizer {o:.3} = {:.1}%), {:.1} tok/s, peak RSS {:.0} MB",
        if rank > 0 { "LoRA" } else { "full" },
        match model_ckpt {
            Checkpointing::Off => String::new(),
            Checkpointing::All => " (all layers checkpointed)".to_string(),
            Checkpointing::First(n) => format!(" ({n} layers checkpointed)"),
        },
        if bf16 { " bf16-mixed" } else { "" },
        opt.num_params() as f64 / 1e6,
        100.0 * o / total,
        tokens as f64 / total,
        peak_rss_mb()
    );
    Ok(())
}

fn shape_of(name: &str, _layers: usize) -> Vec<usize> {
    let (h, i, kv, v) = (896usize, 4864usize, 128usize, 151_936usize);
    let tail = name.rsplit_once("layers.").map(|(_, t)| t.split_once('.').map(|x| x.1).unwrap_or(t)).unwrap_or(name);
    match tail {
        "model.embed_tokens.weight" | "lm_head.weight" => vec![v, h],
        "model.norm.weight" | "input_layernorm.weight" | "post_attention_layernorm.weight" => vec![h],
        "self_attn.q_proj.weight" | "self_attn.o_proj.weight" => vec![h, h],
        "self_attn.q_proj.bias" => vec![h],
        "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => vec![kv, h],
        "self_attn.k_proj.bias" | "self_attn.v_proj.bias" => vec![kv],
        "mlp.gate_proj.weight" | "mlp.up_proj.weight" => vec![i, h],
        "mlp.down_proj.weight" => vec![h, i],
        other => panic!("unknown weight {other}"),
    }
}
