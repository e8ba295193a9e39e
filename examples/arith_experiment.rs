//! Experiment (not a test): a tiny random Qwen2-shaped student fine-tuned for a few hundred
//! steps on generated arithmetic traces (column addition, R1-style `<think>` then the answer),
//! full and LoRA; prints the held-out loss before and after, and the held-out loss of the
//! exported (LoRA merged) `final/` model loaded back.
//!
//! Usage: cargo run --release --example arith_experiment -- [--steps 300] [--out DIR]

use std::io::Write as _;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use distill::model::{Config, LoraConfig, Model};
use distill::train::data::{self, DataConfig, Encode, Encoded};
use distill::train::student::Student;
use distill::train::trainer;
use distill::train::trainer::TrainConfig;
use serde_json::{Map, Value, json};

const ALPHABET: &str = "\u{0}\u{1}\u{2}0123456789+=:, <>/abcdefghijklmnopqrstuvwxyz";

/// Characters as ids (BOS 1; each assistant turn ends with id 2).
struct Chars;

impl Encode for Chars {
    fn encode(&self, rec: &Map<String, Value>) -> Result<Encoded, String> {
        let mut e = Encoded { ids: vec![1], targets: vec![false] };
        for m in rec.get("messages").and_then(Value::as_array).ok_or("no messages")? {
            let asst = m["role"] == "assistant";
            for c in m["content"].as_str().ok_or("no content")?.chars() {
                let id = ALPHABET.chars().position(|a| a == c).ok_or(format!("character {c:?} not in the alphabet"))?;
                e.ids.push(id as u32);
                e.targets.push(asst);
            }
            if asst {
                e.ids.push(2);
                e.targets.push(true);
            }
        }
        Ok(e)
    }
}

fn trace(a: u32, b: u32) -> String {
    let (da, db): (Vec<u32>, Vec<u32>) = (digits(a), digits(b));
    let mut carry = 0;
    let mut steps = Vec::new();
    for i in 0..da.len().max(db.len()) {
        let (x, y) = (*da.get(i).unwrap_or(&0), *db.get(i).unwrap_or(&0));
        let s = x + y + carry;
        steps.push(format!("{x}+{y}+{carry}={s}"));
        carry = s / 10;
    }
    format!("<think>{}</think> answer: {}", steps.join(", "), a + b)
}

fn digits(mut n: u32) -> Vec<u32> {
    let mut d = vec![n % 10];
    n /= 10;
    while n > 0 {
        d.push(n % 10);
        n /= 10;
    }
    d
}

fn write(path: &Path, range: std::ops::Range<u32>) {
    let mut f = std::fs::File::create(path).unwrap();
    for i in range {
        let (a, b) = ((i * 7_919) % 1000, (i * 104_729 + 17) % 1000);
        let rec = json!({"id": format!("arith-{i}"), "messages": [
            {"role": "user", "content": format!("{a}+{b}=")},
            {"role": "assistant", "content": trace(a, b)}]});
        writeln!(f, "{rec}").unwrap();
    }
}

fn random_student(lora: Option<LoraConfig>) -> Result<Student, Box<dyn std::error::Error>> {
    let cfg = Config::from_json(&json!({
        "model_type": "qwen2", "hidden_size": 96, "intermediate_size": 256, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 48, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": true, "hidden_act": "silu",
        "use_sliding_window": false, "bos_token_id": 1, "eos_token_id": 2
    }))?;
    let dev = Device::Cpu;
    let mut model = Model::from_tensors(
        cfg,
        |name| {
            let (h, i, kv, v) = (96usize, 256usize, 48usize, 48usize);
            let tail = name.rsplit('.').nth(1).unwrap_or("");
            let shape: Vec<usize> = match (tail, name.ends_with("bias")) {
                ("embed_tokens", _) => vec![v, h],
                ("q_proj", false) | ("o_proj", false) => vec![h, h],
                ("k_proj", false) | ("v_proj", false) => vec![kv, h],
                ("q_proj", true) => vec![h],
                ("k_proj", true) | ("v_proj", true) => vec![kv],
                ("gate_proj", _) | ("up_proj", _) => vec![i, h],
                ("down_proj", _) => vec![h, i],
                _ => vec![h],
            };
            let n: usize = shape.iter().product();
            let t = if name.contains("norm") {
                Tensor::ones(n, DType::F32, &dev)?
            } else {
                // A fixed seed per run: candle's CPU randn is not seedable, so derive from the name.
                let mut s =
                    name.bytes().fold(1469598103934665603u64, |h, b| (h ^ b as u64).wrapping_mul(1099511628211));
                let vals: Vec<f32> = (0..n)
                    .map(|_| {
                        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.07
                    })
                    .collect();
                Tensor::from_vec(vals, n, &dev)?
            };
            Ok(t.reshape(shape)?)
        },
        &dev,
        DType::F32,
    )?;
    if let Some(l) = lora {
        model.add_lora(&l)?;
    }
    Ok(Student { model, base: "random".into(), seed: 1, save_dtype: DType::F32 })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned();
    let steps: u64 = get("--steps").and_then(|s| s.parse().ok()).unwrap_or(300);
    let tmp = tempfile::tempdir()?;
    let root = get("--out").map(std::path::PathBuf::from).unwrap_or_else(|| tmp.path().to_path_buf());
    let data_dir = root.join("corpus");
    std::fs::create_dir_all(&data_dir)?;
    write(&data_dir.join("train-00000.jsonl"), 0..4000);
    write(&data_dir.join("validation-00000.jsonl"), 100_000..100_200);
    let loader =
        DataConfig { max_seq_len: 160, tokens_per_step: 2048, shuffle_buffer: 512, seed: 7, ..DataConfig::default() };
    let valid = data::splits(&data_dir)?.validation;
    let (held_out, _, _) = data::load_all(&valid, &loader, &Chars);
    for (tag, lora, lr) in [
        ("full", None, 3e-3),
        ("lora-r16", Some(LoraConfig { rank: 16, alpha: 32.0, dropout: 0.0, ..LoraConfig::default() }), 1e-2),
    ] {
        let mut s = random_student(lora)?;
        let (before, n) = trainer::evaluate(&s, &held_out, 0)?;
        let cfg = TrainConfig {
            data: data_dir.clone(),
            out: root.join(tag),
            epochs: 100,
            max_steps: Some(steps),
            lr,
            warmup_ratio: 0.05,
            eval_every: steps / 4,
            save_every: 0,
            progress: false,
            loader: loader.clone(),
            ..TrainConfig::default()
        };
        let t = std::time::Instant::now();
        let r = trainer::train(&cfg, &mut s, &Chars)?;
        let secs = t.elapsed().as_secs_f64();
        let after = r.eval_losses.last().map(|x| x.1).unwrap_or(f64::NAN);
        let reloaded = Student {
            model: Model::load(&r.final_dir, &Device::Cpu, DType::F32)?,
            base: r.final_dir.clone(),
            seed: 0,
            save_dtype: DType::F32,
        };
        let (exported, _) = trainer::evaluate(&reloaded, &held_out, 0)?;
        println!(
            "{tag}: held-out loss {before:.4} -> {after:.4} ({:.1}x lower) over {} steps ({} tokens, {secs:.0} s, {:.0} tok/s); {n} held-out target tokens; exported final/ scores {exported:.6} (trainer {after:.6})",
            before / after,
            r.steps,
            r.tokens_seen,
            r.tokens_seen as f64 / secs
        );
    }
    Ok(())
}
