//! Generation on the tiny fixture models: the KV cache against a full recompute, batches of
//! prompts of different lengths against each prompt alone, seeded sampling, per-row stopping.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use distill::model::generate::{self, Finish, GenParams, GenRequest, Generation, Session};
use distill::model::{Model, SeqLayout};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model")
}

fn load(name: &str) -> Model {
    let mut m = Model::load(&fixtures().join(name), &Device::Cpu, DType::F32).expect("loads the fixture");
    m.freeze_base();
    m
}

/// Deterministic token ids in 3..vocab.
fn prompt(len: usize, salt: u32, vocab: usize) -> Vec<u32> {
    (0..len as u32).map(|i| 3 + (i * 37 + salt * 11 + 5) % (vocab as u32 - 3)).collect()
}

fn greedy(max_new_tokens: usize) -> GenParams {
    GenParams { max_new_tokens, temperature: 0.0, top_p: 1.0, top_k: 0, stop_ids: vec![], stop_strings: vec![] }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap() as f64
}

/// Logits after the last token of `ids`, by the training path's full forward pass.
fn full_last_logits(model: &Model, ids: &[u32]) -> Tensor {
    let n = ids.len();
    let t = Tensor::from_vec(ids.to_vec(), (1, n), &Device::Cpu).unwrap();
    let layout = SeqLayout::padded(&[n], n).unwrap();
    model.forward(&t, &layout).unwrap().i((0, n - 1)).unwrap()
}

fn argmax(l: &Tensor) -> u32 {
    l.argmax(0).unwrap().to_scalar::<u32>().unwrap()
}

#[test]
fn kv_cache_logits_equal_a_full_recompute_at_every_step() {
    for name in ["qwen2-tiny", "llama-tiny"] {
        let model = load(name);
        let vocab = model.cfg.vocab_size;
        // Two rows of different lengths in one batch (the shorter one padded).
        let mut seqs = vec![prompt(5, 1, vocab), prompt(11, 2, vocab)];
        let mut session = Session::new(&model);
        let mut logits = session.feed(&seqs).unwrap();
        let mut worst = 0f64;
        for step in 0..20 {
            let mut next = Vec::new();
            for (r, seq) in seqs.iter_mut().enumerate() {
                let cached = logits.i(r).unwrap();
                let full = full_last_logits(&model, seq);
                let d = max_abs_diff(&cached, &full);
                worst = worst.max(d);
                assert!(d < 1e-5, "{name} row {r} step {step}: cached logits differ by {d}");
                let id = argmax(&full);
                seq.push(id);
                next.push(vec![id]);
            }
            logits = session.feed(&next).unwrap();
        }
        eprintln!("{name}: worst |cached - full| over 20 steps x 2 rows = {worst:.2e}");
    }
}

#[test]
fn a_batch_of_different_lengths_generates_what_each_prompt_generates_alone() {
    for name in ["qwen2-tiny", "llama-tiny"] {
        let model = load(name);
        let vocab = model.cfg.vocab_size;
        let reqs: Vec<GenRequest> = [3usize, 9, 1, 17]
            .iter()
            .enumerate()
            .map(|(i, &l)| GenRequest { ids: prompt(l, i as u32 + 7, vocab), seeds: vec![0, 1] })
            .collect();
        let params = greedy(24);
        let together = generate::generate(&model, &reqs, &params, None, &mut |_| {}).unwrap();
        for (i, r) in reqs.iter().enumerate() {
            let alone = generate::generate(&model, std::slice::from_ref(r), &params, None, &mut |_| {}).unwrap();
            assert_eq!(together[i], alone[0], "{name} prompt {i}");
            assert_eq!(together[i][0], together[i][1], "greedy samples of one prompt agree");
            assert_eq!(together[i][0].tokens.len(), 24);
            assert_eq!(together[i][0].finish, Finish::Length);
            // And what the full recompute generates greedily.
            let mut seq = r.ids.clone();
            for _ in 0..24 {
                let id = argmax(&full_last_logits(&model, &seq));
                seq.push(id);
            }
            assert_eq!(&seq[r.ids.len()..], &together[i][0].tokens[..], "{name} prompt {i} vs full recompute");
        }
    }
}

#[test]
fn sampling_is_deterministic_by_seed() {
    let model = load("qwen2-tiny");
    let vocab = model.cfg.vocab_size;
    let params = GenParams {
        max_new_tokens: 32,
        temperature: 1.0,
        top_p: 0.95,
        top_k: 0,
        stop_ids: vec![],
        stop_strings: vec![],
    };
    let reqs = vec![
        GenRequest { ids: prompt(4, 1, vocab), seeds: vec![11, 12, 11] },
        GenRequest { ids: prompt(8, 2, vocab), seeds: vec![11] },
    ];
    let a = generate::generate(&model, &reqs, &params, None, &mut |_| {}).unwrap();
    let b = generate::generate(&model, &reqs, &params, None, &mut |_| {}).unwrap();
    assert_eq!(a, b, "same seeds, same samples");
    assert_eq!(a[0][0], a[0][2], "a sample depends on its seed, not on its row");
    assert_ne!(a[0][0], a[0][1], "different seeds sample differently");
    // A sample does not depend on what it was batched with.
    let alone = generate::generate(&model, &reqs[1..], &params, None, &mut |_| {}).unwrap();
    assert_eq!(alone[0], a[1]);
    let other = GenParams { top_k: 5, ..params.clone() };
    let c = generate::generate(&model, &reqs, &other, None, &mut |_| {}).unwrap();
    assert_eq!(c, generate::generate(&model, &reqs, &other, None, &mut |_| {}).unwrap());
}

#[test]
fn stop_tokens_and_stop_strings_end_each_row_on_its_own() {
    let model = load("llama-tiny");
    let vocab = model.cfg.vocab_size;
    let reqs: Vec<GenRequest> =
        (0..3).map(|i| GenRequest { ids: prompt(3 + 4 * i, i as u32 + 3, vocab), seeds: vec![0] }).collect();
    let free = generate::generate(&model, &reqs, &greedy(30), None, &mut |_| {}).unwrap();
    let seq = |g: &[Vec<Generation>], i: usize| g[i][0].tokens.clone();
    // A stop id: the 4th token of row 0, chosen so it appears nowhere earlier in row 0.
    let r0 = seq(&free, 0);
    let k = (3..r0.len()).find(|&k| !r0[..k].contains(&r0[k])).expect("a fresh token in row 0");
    let stop = r0[k];
    let mut params = greedy(30);
    params.stop_ids = vec![stop];
    let got = generate::generate(&model, &reqs, &params, None, &mut |_| {}).unwrap();
    for (i, row) in got.iter().enumerate() {
        let full = seq(&free, i);
        match full.iter().position(|&t| t == stop) {
            Some(p) => {
                assert_eq!(row[0].tokens, full[..=p].to_vec(), "row {i} stops at the stop token");
                assert_eq!(row[0].finish, Finish::Eos(stop));
            }
            None => {
                assert_eq!(row[0].tokens, full, "row {i} runs on");
                assert_eq!(row[0].finish, Finish::Length);
            }
        }
    }
    assert_eq!(got[0][0].tokens.len(), k + 1);
    // A stop string over a fake decoding (each id as `<id>`): row 1's 6th token.
    let r1 = seq(&free, 1);
    let j = (5..r1.len()).find(|&j| !r1[..j].contains(&r1[j])).expect("a fresh token in row 1");
    let text = format!("<{}>", r1[j]);
    let decode = |ids: &[u32]| Some(ids.iter().map(|i| format!("<{i}>")).collect::<String>());
    let mut params = greedy(30);
    params.stop_strings = vec![text.clone()];
    let got = generate::generate(&model, &reqs, &params, Some(&decode), &mut |_| {}).unwrap();
    assert_eq!(got[1][0].tokens, r1[..=j].to_vec());
    assert_eq!(got[1][0].finish, Finish::Stop(text.clone()));
    for i in [0, 2] {
        let full = seq(&free, i);
        let expect = match full.iter().position(|&t| t == r1[j]) {
            Some(p) => full[..=p].to_vec(),
            None => full,
        };
        assert_eq!(got[i][0].tokens, expect, "row {i}");
    }
    // max_new_tokens ends every row at its length.
    let short = generate::generate(&model, &reqs, &greedy(3), None, &mut |_| {}).unwrap();
    assert!(short.iter().all(|g| g[0].tokens.len() == 3 && g[0].finish == Finish::Length));
}
