//! Generation with a local model on the project's own decoder (`model::generate`): the student
//! is asked through its own chat template and stops at its EOS tokens, the template's
//! end-of-turn token (with a warning when that is not an EOS) or a stop string.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use candle_core::Device;
use serde_json::{Value, json};

use super::{EvalConfig, EvalError, Gen, Problem, sample_seed};
use crate::model::Model;
use crate::model::chat::ChatTokenizer;
use crate::model::generate::{self, Finish, GenParams, GenRequest};

/// The chat tokenizer of a model path (the directory, or the one a `.gguf` carries).
fn tokenizer(path: &Path) -> Result<ChatTokenizer, EvalError> {
    if path.extension().is_some_and(|e| e == "gguf") {
        return Ok(crate::model::gguf::chat_tokenizer(path)?);
    }
    Ok(ChatTokenizer::from_dir(path)?)
}

/// The tokens a generation stops at, and the warning when the template's end-of-turn token is
/// not one of the model's EOS tokens (generation stops at it anyway).
pub fn stop_ids(tok: &ChatTokenizer, model_eos: &[u32]) -> (Vec<u32>, Option<String>) {
    let mut ids: BTreeSet<u32> = model_eos.iter().copied().collect();
    ids.extend(tok.generation_eos_ids.iter().copied());
    if let Some(e) = tok.eos_token.as_deref().and_then(|t| tok.token_to_id(t)) {
        ids.insert(e);
    }
    let warning = match tok.check_eos() {
        Ok(end) => {
            ids.insert(end);
            None
        }
        Err(e) => match tok.end_of_turn_token() {
            Ok(end) => {
                let known = ids.contains(&end);
                ids.insert(end);
                (!known).then(|| {
                    format!(
                        "{e} (eval stops generation at the end-of-turn token {:?} anyway)",
                        tok.tokenizer.id_to_token(end).unwrap_or_default()
                    )
                })
            }
            Err(e2) => Some(format!("{e2}; generation stops only at the EOS tokens {ids:?} and --max-new-tokens")),
        },
    };
    (ids.into_iter().collect(), warning)
}

/// The prompt text for the student, and whether its answer starts inside `<think>`.
pub fn render_prompt(tok: &ChatTokenizer, problem: &Problem, think_prefill: bool) -> Result<(String, bool), EvalError> {
    let messages: Vec<Value> = problem.messages.iter().map(|m| json!({"role": m.role, "content": m.content})).collect();
    let mut text = tok.render(&messages, None, true)?;
    let opened = |t: &str| t.trim_end().ends_with("<think>");
    if think_prefill && !opened(&text) {
        text.push_str("<think>\n");
    }
    let inside = opened(&text);
    Ok((text, inside))
}

/// Generates every sample of every problem in batches; `on_gens` gets each batch's generations
/// and its generation seconds. Returns the run's facts for the summary.
pub fn generate(
    cfg: &EvalConfig,
    problems: &[Problem],
    on_gens: &mut dyn FnMut(Vec<Gen>, f64) -> Result<(), EvalError>,
) -> Result<Value, EvalError> {
    let path = Path::new(&cfg.model);
    if !path.exists() {
        return Err(EvalError::Config(format!(
            "model {}: no such model directory or .gguf file (to evaluate a served model, give --endpoint URL and \
             its name as --model)",
            path.display()
        )));
    }
    let dtype = crate::model::weights::parse_dtype(&cfg.dtype)
        .ok_or_else(|| EvalError::Config(format!("dtype `{}`: use float32 or bfloat16", cfg.dtype)))?;
    crate::model::keep_freed_memory();
    let mut model = Model::load(path, &Device::Cpu, dtype)?;
    model.freeze_base();
    let tok = tokenizer(path)?;
    let (stop_ids, warning) = stop_ids(&tok, &model.cfg.eos_token_ids);
    if let Some(w) = &warning {
        eprintln!("warning: {w}");
    }
    let params = GenParams {
        max_new_tokens: cfg.max_new_tokens,
        temperature: cfg.temperature,
        top_p: cfg.top_p,
        top_k: cfg.top_k,
        stop_ids: stop_ids.clone(),
        stop_strings: cfg.stop.clone(),
    };
    let decode = |ids: &[u32]| tok.tokenizer.decode(ids, false).ok();
    let pb = super::progress_bar(cfg.progress, problems.len() as u64);
    let per_batch = (cfg.batch / cfg.n as usize).max(1);
    let started = Instant::now();
    let mut total_tokens = 0u64;
    for (b, chunk) in problems.chunks(per_batch).enumerate() {
        let first = b * per_batch;
        let mut reqs = Vec::with_capacity(chunk.len());
        let mut inside = Vec::with_capacity(chunk.len());
        for p in chunk {
            let (text, ins) = render_prompt(&tok, p, cfg.think_prefill)?;
            let ids = tok.encode(&text)?.get_ids().to_vec();
            let seeds = (0..cfg.n).map(|k| sample_seed(cfg.seed, &p.prompt.id, k)).collect();
            reqs.push(GenRequest { ids, seeds });
            inside.push(ins);
        }
        let t0 = Instant::now();
        let mut on_step = |rows: usize| {
            total_tokens += rows as u64;
            let secs = started.elapsed().as_secs_f64();
            if secs > 0.0 {
                pb.set_message(format!("{:.1} tokens/s, {rows} rows", total_tokens as f64 / secs));
            }
        };
        let gens = generate::generate(&model, &reqs, &params, Some(&decode), &mut on_step)?;
        let seconds = t0.elapsed().as_secs_f64();
        let mut out = Vec::new();
        for (i, per) in gens.into_iter().enumerate() {
            for (k, g) in per.into_iter().enumerate() {
                let body = match g.finish {
                    Finish::Eos(_) => &g.tokens[..g.tokens.len().saturating_sub(1)],
                    _ => &g.tokens[..],
                };
                let mut text = decode(body).unwrap_or_default();
                if let Finish::Stop(s) = &g.finish
                    && let Some(at) = text.find(s.as_str())
                {
                    text.truncate(at);
                }
                if inside[i] {
                    text.insert_str(0, "<think>\n");
                }
                out.push(Gen {
                    problem: first + i,
                    sample: k as u32,
                    text,
                    reasoning_content: None,
                    finish_reason: Some(g.finish.reason().to_string()),
                    eos: matches!(g.finish, Finish::Eos(_)),
                    tokens: g.tokens.len() as u64,
                    prompt_tokens: reqs[i].ids.len() as u64,
                    latency_ms: (seconds * 1000.0) as u64,
                    seed: Some(reqs[i].seeds[k]),
                    endpoint: "local".into(),
                });
            }
        }
        on_gens(out, seconds)?;
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    Ok(json!({
        "device": "cpu",
        "dtype": cfg.dtype,
        "stop_ids": stop_ids,
        "eos_warning": warning,
    }))
}
