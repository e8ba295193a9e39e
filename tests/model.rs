//! The decoder against transformers/torch reference numbers (tests/fixtures/model, made by
//! make_model_fixtures.py): logits, loss, gradients; finite differences in f64; every
//! trainable variable gets a gradient; save/load round trips; LoRA.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use distill::model::{Checkpointing, LoraConfig, Model, SeqLayout};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model")
}

struct Reference {
    t: HashMap<String, Tensor>,
}

impl Reference {
    fn load(name: &str) -> Self {
        let t = candle_core::safetensors::load(fixtures().join(format!("{name}-reference.safetensors")), &Device::Cpu)
            .unwrap();
        Reference { t }
    }
    fn get(&self, k: &str) -> &Tensor {
        self.t.get(k).unwrap_or_else(|| panic!("reference has no {k}"))
    }
    fn ids(&self) -> Tensor {
        self.get("input_ids").to_dtype(DType::U32).unwrap()
    }
    fn mask(&self) -> Vec<Vec<i64>> {
        self.get("attention_mask").to_vec2::<i64>().unwrap()
    }
    fn layout(&self) -> SeqLayout {
        let m = self.mask();
        let lens: Vec<usize> = m.iter().map(|r| r.iter().filter(|&&x| x == 1).count()).collect();
        SeqLayout::padded(&lens, m[0].len()).unwrap()
    }
    /// HF's shifted labels: target at position t is labels[t+1], weight 0 where -100.
    fn targets(&self) -> (Vec<u32>, Vec<f32>) {
        let labels = self.get("labels").to_vec2::<i64>().unwrap();
        let mut targets = vec![];
        let mut weights = vec![];
        for row in &labels {
            for t in 0..row.len() {
                let next = row.get(t + 1).copied().unwrap_or(-100);
                targets.push(if next < 0 { 0 } else { next as u32 });
                weights.push(if next < 0 { 0.0 } else { 1.0 });
            }
        }
        (targets, weights)
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    a.to_dtype(DType::F64)
        .unwrap()
        .sub(&b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn max_abs(a: &Tensor) -> f64 {
    a.to_dtype(DType::F64).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

fn load(name: &str, dtype: DType) -> Model {
    Model::load(&fixtures().join(name), &Device::Cpu, dtype).unwrap()
}

/// Logits on the non-padded positions only (padding rows are unspecified).
fn compare_logits(model: &Model, r: &Reference) -> f64 {
    let logits = model.forward(&r.ids(), &r.layout()).unwrap();
    let reference = r.get("logits");
    let mut worst = 0f64;
    for (b, row) in r.mask().iter().enumerate() {
        let n = row.iter().filter(|&&x| x == 1).count();
        let d = max_abs_diff(&logits.i((b, 0..n)).unwrap(), &reference.i((b, 0..n)).unwrap());
        worst = worst.max(d);
    }
    worst
}

fn loss_of(model: &Model, r: &Reference) -> candle_core::Tensor {
    let (targets, weights) = r.targets();
    model.loss(&r.ids(), &r.layout(), &targets, &weights, false).unwrap().loss
}

#[test]
fn logits_loss_and_gradients_match_transformers() {
    for name in ["qwen2-tiny", "llama-tiny"] {
        let model = load(name, DType::F32);
        let r = Reference::load(name);
        let d = compare_logits(&model, &r);
        assert!(d <= 1e-4, "{name}: logits differ by {d}");

        let loss = loss_of(&model, &r);
        let want = r.get("loss").to_vec1::<f32>().unwrap()[0] as f64;
        let got = loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
        assert!((got - want).abs() <= 1e-5, "{name}: loss {got} vs {want}");

        let grads = model.backward(&loss).unwrap();
        let vars: HashMap<String, Var> = model.trainable_vars().into_iter().collect();
        let mut checked = 0;
        for (k, reference) in &r.t {
            let Some(pname) = k.strip_prefix("grad.") else { continue };
            let var = vars.get(pname).unwrap_or_else(|| panic!("{name}: no trainable var {pname}"));
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient for {pname}"));
            let rel = max_abs_diff(g, reference) / max_abs(reference).max(1e-12);
            assert!(rel <= 1e-3, "{name}: gradient of {pname} off by {rel} (relative)");
            checked += 1;
        }
        assert!(checked >= 7, "{name}: only {checked} reference gradients");
        println!("{name}: logits max diff {d:.2e}, loss {got} vs {want}, {checked} gradients checked");
    }
}

#[test]
fn packed_sequences_match_separate_runs() {
    for name in ["qwen2-tiny", "llama-tiny"] {
        let model = load(name, DType::F32);
        let r = Reference::load(name);
        let ids = r.get("packed_input_ids").to_dtype(DType::U32).unwrap();
        let lens: Vec<usize> =
            r.get("packed_segment_lengths").to_vec1::<i64>().unwrap().iter().map(|&x| x as usize).collect();
        let layout = SeqLayout::packed(&[lens], ids.dim(1).unwrap()).unwrap();
        let logits = model.forward(&ids, &layout).unwrap();
        let d = max_abs_diff(&logits, r.get("packed_logits"));
        assert!(d <= 1e-4, "{name}: packed logits differ by {d}");
    }
}

#[test]
fn every_trainable_var_gets_a_nonzero_gradient() {
    for name in ["qwen2-tiny", "llama-tiny"] {
        let model = load(name, DType::F32);
        let r = Reference::load(name);
        let grads = model.backward(&loss_of(&model, &r)).unwrap();
        let vars = model.trainable_vars();
        assert_eq!(vars.len(), model.base_weights().len());
        for (n, v) in vars {
            let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{name}: {n} has no gradient"));
            assert!(max_abs(g) > 0.0, "{name}: {n} has an all-zero gradient");
        }
    }
}

/// Central finite differences in f64 on a few elements of parameters of every kind.
fn finite_difference_check(model: &Model, r: &Reference, params: &[&str]) {
    let (targets, weights) = r.targets();
    let loss_val = |m: &Model| -> f64 {
        m.loss(&r.ids(), &r.layout(), &targets, &weights, false).unwrap().loss.to_scalar::<f64>().unwrap()
    };
    let loss = model.loss(&r.ids(), &r.layout(), &targets, &weights, false).unwrap().loss;
    let grads = model.backward(&loss).unwrap();
    let vars: HashMap<String, Var> = model.trainable_vars().into_iter().collect();
    let eps = 1e-6;
    for p in params {
        let var = vars.get(*p).unwrap_or_else(|| panic!("no var {p}"));
        let g = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let orig = var.as_tensor().copy().unwrap();
        let flat = orig.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let n = flat.len();
        for &k in &[0, n / 3, n / 2 + 1, n - 1] {
            let mut plus = flat.clone();
            plus[k] += eps;
            var.set(&Tensor::from_vec(plus, orig.shape(), &Device::Cpu).unwrap()).unwrap();
            let lp = loss_val(model);
            let mut minus = flat.clone();
            minus[k] -= eps;
            var.set(&Tensor::from_vec(minus, orig.shape(), &Device::Cpu).unwrap()).unwrap();
            let lm = loss_val(model);
            var.set(&orig).unwrap();
            let fd = (lp - lm) / (2.0 * eps);
            let err = (fd - g[k]).abs() / (fd.abs().max(g[k].abs()).max(1e-4));
            assert!(err < 1e-5, "{p}[{k}]: finite difference {fd} vs gradient {}", g[k]);
        }
    }
}

#[test]
fn gradients_match_finite_differences_in_f64() {
    let model = load("qwen2-tiny", DType::F64);
    let r = Reference::load("qwen2-tiny");
    finite_difference_check(
        &model,
        &r,
        &[
            "model.embed_tokens.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.self_attn.q_proj.bias",
            "model.layers.0.self_attn.k_proj.weight",
            "model.layers.0.self_attn.k_proj.bias",
            "model.layers.1.self_attn.v_proj.weight",
            "model.layers.1.self_attn.v_proj.bias",
            "model.layers.0.self_attn.o_proj.weight",
            "model.layers.1.mlp.gate_proj.weight",
            "model.layers.0.mlp.up_proj.weight",
            "model.layers.1.mlp.down_proj.weight",
            "model.layers.0.input_layernorm.weight",
            "model.layers.1.post_attention_layernorm.weight",
            "model.norm.weight",
        ],
    );
    let model = load("llama-tiny", DType::F64);
    let r = Reference::load("llama-tiny");
    finite_difference_check(
        &model,
        &r,
        &["lm_head.weight", "model.embed_tokens.weight", "model.layers.1.self_attn.q_proj.weight", "model.norm.weight"],
    );
}

#[test]
fn save_then_load_gives_the_same_logits() {
    for name in ["qwen2-tiny", "llama-tiny"] {
        let model = load(name, DType::F32);
        let r = Reference::load(name);
        let dir = tempfile::tempdir().unwrap();
        model.save(dir.path(), DType::F32).unwrap();
        for f in ["config.json", "generation_config.json", "model.safetensors"] {
            assert!(dir.path().join(f).is_file(), "{name}: {f} not written");
        }
        let back = Model::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
        let a = model.forward(&r.ids(), &r.layout()).unwrap();
        let b = back.forward(&r.ids(), &r.layout()).unwrap();
        assert_eq!(max_abs_diff(&a, &b), 0.0, "{name}: reloaded model differs");
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["dtype"], "float32");
        assert_eq!(cfg["model_type"], model.cfg.arch.model_type());
    }
}

#[test]
fn sharded_save_and_half_precision_load() {
    let model = load("qwen2-tiny", DType::F32);
    let r = Reference::load("qwen2-tiny");
    let dir = tempfile::tempdir().unwrap();
    let tensors: Vec<(String, Tensor)> =
        model.base_weights().into_iter().map(|(n, t)| (n, t.to_dtype(DType::F16).unwrap())).collect();
    distill::model::weights::write_sharded(dir.path(), &tensors, 20_000).unwrap();
    std::fs::copy(fixtures().join("qwen2-tiny/config.json"), dir.path().join("config.json")).unwrap();
    assert!(dir.path().join("model.safetensors.index.json").is_file());
    let back = Model::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let d = max_abs_diff(&model.forward(&r.ids(), &r.layout()).unwrap(), &back.forward(&r.ids(), &r.layout()).unwrap());
    assert!(d > 0.0 && d < 0.05, "f16 round trip changed logits by {d}");
}

fn randomise_lora_b(model: &Model) {
    for (i, (n, v)) in model.trainable_vars().into_iter().enumerate() {
        if n.ends_with("lora_B.weight") {
            let (o, r) = v.dims2().unwrap();
            let vals: Vec<f32> = (0..o * r).map(|k| (((k * 37 + i * 11) % 17) as f32 - 8.0) * 0.01).collect();
            v.set(&Tensor::from_vec(vals, (o, r), &Device::Cpu).unwrap().to_dtype(v.dtype()).unwrap()).unwrap();
        }
    }
}

#[test]
fn lora_trains_only_adapters_and_merges_exactly() {
    let r = Reference::load("qwen2-tiny");
    let mut model = load("qwen2-tiny", DType::F32);
    let base_logits = model.forward(&r.ids(), &r.layout()).unwrap();
    let cfg = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.1, ..LoraConfig::default() };
    model.add_lora(&cfg).unwrap();
    // B starts at zero: the adapted model is the base model.
    assert_eq!(max_abs_diff(&model.forward(&r.ids(), &r.layout()).unwrap(), &base_logits), 0.0);
    randomise_lora_b(&model);
    let vars = model.trainable_vars();
    assert_eq!(vars.len(), 2 * 7 * 2, "A and B for 7 projections x 2 layers");
    assert!(vars.iter().all(|(n, _)| n.contains(".lora_")));

    let (targets, weights) = r.targets();
    let loss = model.loss(&r.ids(), &r.layout(), &targets, &weights, true).unwrap().loss;
    let grads = model.backward(&loss).unwrap();
    for (n, v) in &vars {
        let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{n} has no gradient"));
        assert!(max_abs(g) > 0.0, "{n}: zero gradient");
    }
    for (n, t) in model.base_weights() {
        assert!(grads.get(&t).is_none(), "a gradient was computed for frozen {n}");
    }
    let ids: Vec<_> = grads.get_ids().collect();
    assert!(ids.len() <= vars.len() + 1, "grad store keeps {} tensors for {} vars", ids.len(), vars.len());

    // Merged checkpoint = base + adapter.
    let adapted = model.forward(&r.ids(), &r.layout()).unwrap();
    assert!(max_abs_diff(&adapted, &base_logits) > 1e-3, "adapter had no effect");
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path(), DType::F32).unwrap();
    let merged = Model::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let d = max_abs_diff(&merged.forward(&r.ids(), &r.layout()).unwrap(), &adapted);
    assert!(d <= 1e-5, "merged checkpoint differs from base+adapter by {d}");

    // PEFT layout round trip.
    let adir = tempfile::tempdir().unwrap();
    model.save_adapter(adir.path(), "qwen2-tiny").unwrap();
    let conf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(adir.path().join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(conf["r"], 4);
    assert_eq!(conf["peft_type"], "LORA");
    let mut again = load("qwen2-tiny", DType::F32);
    again.load_adapter(adir.path()).unwrap();
    assert_eq!(max_abs_diff(&again.forward(&r.ids(), &r.layout()).unwrap(), &adapted), 0.0);

    model.merge_lora().unwrap();
    let d = max_abs_diff(&model.forward(&r.ids(), &r.layout()).unwrap(), &adapted);
    assert!(d <= 1e-5, "in-memory merge differs by {d}");
}

#[test]
fn lora_gradients_match_finite_differences() {
    let r = Reference::load("llama-tiny");
    let mut model = load("llama-tiny", DType::F64);
    model.add_lora(&LoraConfig { rank: 2, alpha: 4.0, dropout: 0.0, ..LoraConfig::default() }).unwrap();
    randomise_lora_b(&model);
    finite_difference_check(
        &model,
        &r,
        &[
            "model.layers.0.self_attn.q_proj.lora_A.weight",
            "model.layers.0.self_attn.v_proj.lora_B.weight",
            "model.layers.1.mlp.down_proj.lora_A.weight",
            "model.layers.1.mlp.gate_proj.lora_B.weight",
        ],
    );
}

#[test]
fn chunked_loss_equals_unchunked() {
    let r = Reference::load("llama-tiny");
    let mut model = load("llama-tiny", DType::F32);
    let whole = loss_of(&model, &r).to_scalar::<f32>().unwrap();
    let g_whole = model.backward(&loss_of(&model, &r)).unwrap();
    model.ce_chunk_rows = Some(3);
    let chunked = loss_of(&model, &r);
    assert!((chunked.to_scalar::<f32>().unwrap() - whole).abs() < 1e-6);
    let g = model.backward(&chunked).unwrap();
    for (n, v) in model.trainable_vars() {
        let d = max_abs_diff(g.get(v.as_tensor()).unwrap(), g_whole.get(v.as_tensor()).unwrap());
        assert!(d < 1e-5, "{n}: chunked gradient differs by {d}");
    }
}

/// Optional: the saved directory loads in transformers with the same logits. Needs a Python
/// with torch+transformers named by DISTILL_PYTHON; skips (with the reason) otherwise.
#[test]
fn saved_checkpoint_loads_in_transformers() {
    let Ok(python) = std::env::var("DISTILL_PYTHON") else {
        println!("skipped: set DISTILL_PYTHON to a python with torch and transformers to run this check");
        return;
    };
    let r = Reference::load("llama-tiny");
    let model = load("llama-tiny", DType::F32);
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path(), DType::F32).unwrap();
    let ids = r.get("packed_input_ids").to_dtype(DType::U32).unwrap();
    let layout = SeqLayout::padded(&[ids.dim(1).unwrap()], ids.dim(1).unwrap()).unwrap();
    let ours = model.forward(&ids, &layout).unwrap();
    let ids_list: Vec<u32> = ids.flatten_all().unwrap().to_vec1().unwrap();
    let script = format!(
        "import torch, json, transformers\nm = transformers.AutoModelForCausalLM.from_pretrained('{}', dtype=torch.float32)\nprint(json.dumps(m(torch.tensor([{:?}])).logits.flatten().tolist()))",
        dir.path().display(),
        ids_list
    );
    let out = std::process::Command::new(&python).arg("-c").arg(&script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs: Vec<f32> =
        serde_json::from_slice(out.stdout.rsplit(|&b| b == b'\n').find(|l| !l.is_empty()).unwrap()).unwrap();
    let theirs = Tensor::from_vec(theirs, ours.shape(), &Device::Cpu).unwrap();
    let d = max_abs_diff(&ours, &theirs);
    assert!(d <= 1e-4, "transformers' logits differ by {d}");
    println!("transformers loads the saved checkpoint: logits max diff {d:.2e}");
}

/// Optional: the adapter directory loads in PEFT (`PeftModel.from_pretrained`) with the same
/// logits as ours. Needs DISTILL_PYTHON with torch, transformers and peft; skips otherwise.
#[test]
fn saved_adapter_loads_in_peft() {
    let Ok(python) = std::env::var("DISTILL_PYTHON") else {
        println!("skipped: set DISTILL_PYTHON to a python with torch, transformers and peft to run this check");
        return;
    };
    let probe = std::process::Command::new(&python).args(["-c", "import peft"]).status().unwrap();
    if !probe.success() {
        println!("skipped: {python} has no peft");
        return;
    }
    let r = Reference::load("qwen2-tiny");
    let mut model = load("qwen2-tiny", DType::F32);
    model.add_lora(&LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, ..LoraConfig::default() }).unwrap();
    randomise_lora_b(&model);
    let dir = tempfile::tempdir().unwrap();
    model.save_adapter(dir.path(), "qwen2-tiny").unwrap();
    let ids = r.get("packed_input_ids").to_dtype(DType::U32).unwrap();
    let n = ids.dim(1).unwrap();
    let ours = model.forward(&ids, &SeqLayout::padded(&[n], n).unwrap()).unwrap();
    let ids_list: Vec<u32> = ids.flatten_all().unwrap().to_vec1().unwrap();
    let script = format!(
        "import torch, json, transformers, peft\nb = transformers.AutoModelForCausalLM.from_pretrained('{}', dtype=torch.float32)\nm = peft.PeftModel.from_pretrained(b, '{}')\nm.eval()\nprint(json.dumps(m(torch.tensor([{:?}])).logits.flatten().tolist()))",
        fixtures().join("qwen2-tiny").display(),
        dir.path().display(),
        ids_list
    );
    let out = std::process::Command::new(&python).arg("-c").arg(&script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let theirs: Vec<f32> =
        serde_json::from_slice(out.stdout.rsplit(|&b| b == b'\n').find(|l| !l.is_empty()).unwrap()).unwrap();
    let d = max_abs_diff(&ours, &Tensor::from_vec(theirs, ours.shape(), &Device::Cpu).unwrap());
    assert!(d <= 1e-4, "PEFT's logits differ by {d}");
    println!("PEFT loads the saved adapter: logits max diff {d:.2e}");
}

/// The same checks on the GPU (a build with `--features cuda`, on a machine with one): logits,
/// loss and gradients against transformers, every Var gets a gradient, LoRA keeps base weights
/// gradient-free, and one AdamW step (the optimiser's tensor path) equals the CPU's fused one.
#[cfg(feature = "cuda")]
#[test]
fn gpu_matches_transformers_and_the_cpu() {
    use distill::train::optim::{AdamW, AdamWConfig};
    let Ok(gpu) = Device::new_cuda(0) else {
        println!("skipped: no CUDA device could be opened");
        return;
    };
    for name in ["qwen2-tiny", "llama-tiny"] {
        let r = Reference::load(name);
        let (targets, weights) = r.targets();
        let ids = r.ids().to_device(&gpu).unwrap();
        let cpu = load(name, DType::F32);
        let model = Model::load(&fixtures().join(name), &gpu, DType::F32).unwrap();
        let logits = model.forward(&ids, &r.layout()).unwrap().to_device(&Device::Cpu).unwrap();
        let reference = r.get("logits");
        let mut d = 0f64;
        for (b, row) in r.mask().iter().enumerate() {
            let n = row.iter().filter(|&&x| x == 1).count();
            d = d.max(max_abs_diff(&logits.i((b, 0..n)).unwrap(), &reference.i((b, 0..n)).unwrap()));
        }
        assert!(d <= 1e-4, "{name} on the GPU: logits differ by {d}");
        let loss = model.loss(&ids, &r.layout(), &targets, &weights, false).unwrap().loss;
        let want = r.get("loss").to_vec1::<f32>().unwrap()[0] as f64;
        let got = loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
        assert!((got - want).abs() <= 1e-5, "{name} on the GPU: loss {got} vs {want}");
        let grads = model.backward(&loss).unwrap();
        let vars: HashMap<String, Var> = model.trainable_vars().into_iter().collect();
        for (n, v) in &vars {
            let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{name}: {n} has no gradient on the GPU"));
            assert!(max_abs(g) > 0.0, "{name}: {n} has an all-zero gradient on the GPU");
        }
        let mut checked = 0;
        for (k, reference) in &r.t {
            let Some(pname) = k.strip_prefix("grad.") else { continue };
            let g = grads.get(vars[pname].as_tensor()).unwrap().to_device(&Device::Cpu).unwrap();
            let rel = max_abs_diff(&g, reference) / max_abs(reference).max(1e-12);
            assert!(rel <= 1e-3, "{name} on the GPU: gradient of {pname} off by {rel} (relative)");
            checked += 1;
        }

        // One AdamW step on each device from the same gradients.
        let cpu_loss = loss_of(&cpu, &r);
        let cpu_grads = cpu.backward(&cpu_loss).unwrap();
        let cfg = AdamWConfig { weight_decay: 0.1, ..AdamWConfig::default() };
        let step_on = |m: &Model, store| {
            let mut opt = AdamW::new(m.trainable_vars(), cfg).unwrap();
            let mut g = opt.new_grads();
            opt.accumulate(&mut g, store).unwrap();
            opt.step(&g, 1e-3, 1.0).unwrap();
        };
        step_on(&cpu, cpu_grads);
        step_on(&model, grads);
        let cpu_vars: HashMap<String, Var> = cpu.trainable_vars().into_iter().collect();
        let mut worst = 0f64;
        for (n, v) in &vars {
            worst = worst.max(max_abs_diff(&v.as_tensor().to_device(&Device::Cpu).unwrap(), cpu_vars[n].as_tensor()));
        }
        assert!(worst <= 1e-5, "{name}: weights after one AdamW step differ by {worst} between GPU and CPU");
        println!(
            "{name} on the GPU: logits {d:.2e}, loss {got} vs {want}, {checked} gradients, AdamW step {worst:.2e}"
        );
    }

    // LoRA on the GPU: only adapters get gradients, and the result equals the CPU's.
    let r = Reference::load("qwen2-tiny");
    let (targets, weights) = r.targets();
    let lcfg = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, ..LoraConfig::default() };
    let mut cpu = load("qwen2-tiny", DType::F32);
    cpu.add_lora(&lcfg).unwrap();
    randomise_lora_b(&cpu);
    let mut model = Model::load(&fixtures().join("qwen2-tiny"), &gpu, DType::F32).unwrap();
    model.add_lora(&lcfg).unwrap();
    let cpu_vars: HashMap<String, Var> = cpu.trainable_vars().into_iter().collect();
    for (n, v) in model.trainable_vars() {
        v.set(&cpu_vars[&n].as_tensor().to_device(&gpu).unwrap()).unwrap();
    }
    let ids = r.ids().to_device(&gpu).unwrap();
    let loss = model.loss(&ids, &r.layout(), &targets, &weights, true).unwrap().loss;
    let cpu_loss = cpu.loss(&r.ids(), &r.layout(), &targets, &weights, true).unwrap().loss;
    let (a, b) = (loss.to_scalar::<f32>().unwrap(), cpu_loss.to_scalar::<f32>().unwrap());
    assert!((a - b).abs() <= 1e-5, "LoRA loss on the GPU {a} vs CPU {b}");
    let grads = model.backward(&loss).unwrap();
    let cpu_grads = cpu.backward(&cpu_loss).unwrap();
    for (n, t) in model.base_weights() {
        assert!(grads.get(&t).is_none(), "a gradient was computed for frozen {n} on the GPU");
    }
    for (n, v) in model.trainable_vars() {
        let g = grads.get(v.as_tensor()).unwrap().to_device(&Device::Cpu).unwrap();
        let c = cpu_grads.get(cpu_vars[&n].as_tensor()).unwrap();
        let rel = max_abs_diff(&g, c) / max_abs(c).max(1e-12);
        assert!(rel <= 1e-3, "LoRA gradient of {n}: GPU vs CPU off by {rel}");
    }
    println!("LoRA on the GPU: loss {a} vs CPU {b}, adapter gradients within 1e-3");
}

/// Per-layer checkpointing recomputes each layer in backward: the same summed loss and the same
/// gradient for every trainable Var as a plain forward and backward, full fine-tuning (tied and
/// untied heads) and LoRA with dropout (the recomputation replays the same masks).
#[test]
fn checkpointed_layers_give_the_plain_gradients() {
    let run = |model: &mut Model, r: &Reference, checkpoint: Checkpointing| {
        let (targets, weights) = r.targets();
        model.checkpoint_layers = checkpoint;
        let state = model.layers[0].linears()[0].lora.as_ref().map(|a| a.rng.state());
        let out = model.loss_and_grads(&r.ids(), &r.layout(), &targets, &weights, true).unwrap();
        let after = model.layers[0].linears()[0].lora.as_ref().map(|a| a.rng.state());
        if let (Some(s), Some(a)) = (state, after) {
            assert_ne!(s, a, "dropout drew no numbers");
            model.layers[0].linears()[0].lora.as_ref().unwrap().rng.set_state(s);
        }
        (out, after)
    };
    for (name, lora) in [("qwen2-tiny", false), ("llama-tiny", false), ("qwen2-tiny", true), ("llama-tiny", true)] {
        let r = Reference::load(name);
        let mut model = load(name, DType::F64);
        if lora {
            model.add_lora(&LoraConfig { rank: 4, alpha: 8.0, dropout: 0.2, ..LoraConfig::default() }).unwrap();
            randomise_lora_b(&model);
        }
        let ((plain, plain_g), plain_end) = run(&mut model, &r, Checkpointing::Off);
        let vars = model.trainable_vars();
        // All layers recomputed, and only the first (the second keeps its graph).
        for n_ckpt in [Checkpointing::All, Checkpointing::First(1)] {
            let ((ckpt, ckpt_g), ckpt_end) = run(&mut model, &r, n_ckpt);
            assert_eq!(plain_end, ckpt_end, "{name}: the generator must end where a plain step leaves it");
            assert!((plain - ckpt).abs() <= 1e-9 * plain.abs(), "{name} lora={lora}: loss {plain} vs {ckpt}");
            for (n, v) in &vars {
                let a = plain_g.get(v.as_tensor()).unwrap_or_else(|| panic!("{n}: no plain gradient"));
                let b = ckpt_g.get(v.as_tensor()).unwrap_or_else(|| panic!("{name}: {n} has no checkpointed gradient"));
                let rel = max_abs_diff(a, b) / max_abs(a).max(1e-12);
                assert!(rel <= 1e-9, "{name} lora={lora} ({n_ckpt} layers): gradient of {n} differs by {rel}");
            }
        }
        println!("{name} lora={lora}: {} gradients identical with checkpointing", vars.len());
    }
}
