//! Judging students. `eval`: generate answers to problems with a model (the project's own
//! decoder with a KV cache, or any OpenAI-compatible endpoint) and score them with the
//! verifiers; `score`: mean per-token loss and perplexity of a corpus's assistant tokens.
//!
//! `eval` in: Prompt records (math, code, open) and a model directory / `.gguf` (or an endpoint
//! and a model name). Out: a table on stdout, the JSON summary (`--out`: `pass_at_1`,
//! `pass_at_k`, `format_rate`, `truncated_rate`, `eos_rate`, `mean_tokens`, `n`, `problems`, …)
//! and the generations as Sample records with verdicts (`--samples`). Prompts are rendered as
//! collect rendered them for the teacher ([`crate::record::prompt_messages`]), then with the
//! student's chat template. `open` prompts are generated and recorded but not scored.

pub mod endpoint;
pub mod local;
pub mod score;
pub mod scores;

use std::path::PathBuf;
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::client::{self, http::Choice};
use crate::record::{Message, Params, Prompt, Sample, Task, Teacher, Usage};
use crate::store::{self, StoreError};
use crate::verify::{Outcome, Verifiers};
use scores::{ProblemScore, Scored, Summary};

/// Settings of `distill eval`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// A model directory (HF layout, e.g. a finetune's `final/`) or a `.gguf` file; with
    /// `endpoint`, the served model's name.
    pub model: String,
    /// An OpenAI-compatible base URL (requests go to `{endpoint}/chat/completions`).
    pub endpoint: Option<String>,
    /// Prompt records.
    pub problems: PathBuf,
    /// The JSON summary.
    pub out: Option<PathBuf>,
    /// The generations, as Sample records with verdicts (.jsonl, .jsonl.zst or .parquet).
    pub samples: Option<PathBuf>,
    /// Samples per problem.
    pub n: u32,
    /// 0: greedy.
    pub temperature: f64,
    pub top_p: f64,
    /// 0: off.
    pub top_k: usize,
    pub max_new_tokens: usize,
    /// Sequences generated at once (local model): problems per batch = max(1, batch / n).
    pub batch: usize,
    /// Sample k of a problem is drawn with a seed derived from this, the problem id and k.
    pub seed: u64,
    /// Texts that end a generation.
    pub stop: Vec<String>,
    /// Start the answer with `<think>\n` (DeepSeek's recommendation for R1-style models).
    pub think_prefill: bool,
    /// Rendering, as collect's: optional system message and task instructions.
    pub system: Option<String>,
    pub math_instruction: String,
    pub code_instruction: String,
    /// Weights dtype of a local model: float32 or bfloat16.
    pub dtype: String,
    /// Evaluate at most this many problems (0: all).
    pub limit: usize,
    /// Endpoint: requests in flight at most.
    pub concurrency: usize,
    /// Endpoint: environment variable holding the API key.
    pub api_key_env: String,
    /// Endpoint: a PEM file of extra root certificates (a private CA) trusted besides the
    /// bundled and the system's roots.
    pub ca_cert: Option<PathBuf>,
    /// Endpoint: per-attempt timeout in seconds.
    pub timeout_s: f64,
    /// Endpoint: retries of a failed request.
    pub max_retries: u32,
    pub progress: bool,
    /// Where unreadable problems go, with file, line and reason.
    pub rejects: PathBuf,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            model: String::new(),
            endpoint: None,
            problems: PathBuf::new(),
            out: None,
            samples: None,
            n: 4,
            temperature: 0.6,
            top_p: 0.95,
            top_k: 0,
            max_new_tokens: 4096,
            batch: 16,
            seed: 0,
            stop: Vec::new(),
            think_prefill: false,
            system: None,
            math_instruction: crate::record::DEFAULT_MATH_INSTRUCTION.into(),
            code_instruction: String::new(),
            dtype: "float32".into(),
            limit: 0,
            concurrency: 32,
            api_key_env: "OPENAI_API_KEY".into(),
            ca_cert: None,
            timeout_s: 600.0,
            max_retries: 8,
            progress: true,
            rejects: PathBuf::from(store::DEFAULT_REJECTS),
        }
    }
}

impl crate::config::Settings for EvalConfig {
    const TABLE: &'static str = "eval";

    fn validate(&self) -> Result<(), String> {
        if self.model.is_empty() {
            return Err("eval needs `model` (a model directory or .gguf file; with an endpoint, its model name)".into());
        }
        if self.problems.as_os_str().is_empty() {
            return Err("eval needs `problems` (Prompt records)".into());
        }
        if self.n == 0 {
            return Err("`n` must be at least 1 (samples per problem)".into());
        }
        if self.max_new_tokens == 0 {
            return Err("`max_new_tokens` must be at least 1".into());
        }
        if self.temperature.is_nan() || self.temperature < 0.0 {
            return Err("`temperature` must be 0 (greedy) or more".into());
        }
        if self.top_p.is_nan() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return Err("`top_p` must be in (0, 1]".into());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Tokenize(#[from] crate::model::chat::TokenizeError),
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
    #[error("{0}")]
    Config(String),
    #[error("{path}: no problem to evaluate (every record was rejected or the file is empty)")]
    Empty { path: PathBuf },
}

/// One problem as asked.
pub struct Problem {
    pub prompt: Prompt,
    pub messages: Vec<Message>,
}

/// One generation, however it was made (local model or endpoint).
#[derive(Debug, Clone, Default)]
pub struct Gen {
    pub problem: usize,
    pub sample: u32,
    /// The whole response text (reasoning included, as generated), or the content of a reply.
    pub text: String,
    /// A separate `reasoning_content` (endpoints that split it).
    pub reasoning_content: Option<String>,
    /// `stop` or `length`.
    pub finish_reason: Option<String>,
    /// Ended with an end-of-sequence token (for an endpoint: finish_reason `stop`).
    pub eos: bool,
    pub tokens: u64,
    pub prompt_tokens: u64,
    pub latency_ms: u64,
    pub seed: Option<u64>,
    /// Where it came from (`local` or the endpoint URL).
    pub endpoint: String,
}

/// The seed of sample `k` of a problem: independent of batching and order.
pub fn sample_seed(seed: u64, problem_id: &str, k: u32) -> u64 {
    // FNV-1a over the id, mixed with the seed and k (splitmix64 finaliser).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in problem_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(k).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A generation judged: its Sample record (with verdict) and what it scores.
fn judge(cfg: &EvalConfig, problems: &[Problem], verifiers: &Verifiers, g: &Gen) -> (Map<String, Value>, Scored) {
    let p = &problems[g.problem].prompt;
    let choice = Choice {
        content: g.text.clone(),
        reasoning_content: g.reasoning_content.clone(),
        finish_reason: g.finish_reason.clone(),
    };
    let (reasoning, content) = client::extract(&choice);
    let closed = g.reasoning_content.as_deref().is_some_and(|r| !r.trim().is_empty()) || g.text.contains("</think>");
    let sample = Sample {
        id: Sample::make_id(&p.id, g.sample),
        prompt_id: p.id.clone(),
        sample: g.sample,
        task: p.task,
        prompt: p.prompt.clone(),
        answer: p.answer.clone(),
        tests: p.tests.clone(),
        source: p.source.clone(),
        meta: p.meta.clone(),
        messages: problems[g.problem].messages.clone(),
        reasoning,
        content: content.clone(),
        finish_reason: g.finish_reason.clone(),
        usage: Some(Usage { prompt_tokens: g.prompt_tokens, completion_tokens: g.tokens }),
        teacher: Some(Teacher { model: cfg.model.clone(), endpoint: g.endpoint.clone() }),
        params: Some(Params {
            temperature: cfg.temperature,
            top_p: cfg.top_p,
            max_tokens: Some(cfg.max_new_tokens as u64),
            seed: g.seed,
        }),
        latency_ms: Some(g.latency_ms),
        request_sha256: None,
        verdict: None,
        extra: Default::default(),
    };
    let mut rec = match serde_json::to_value(&sample) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let has_gold = match p.task {
        Task::Math => p.answer.is_some(),
        Task::Code => p.tests.is_some(),
        Task::Open => false,
    };
    let judged = has_gold.then(|| verifiers.judge(&rec));
    let scored = judged.as_ref().is_some_and(|j| !matches!(j.outcome, Outcome::Unsupported));
    let pass = judged.as_ref().is_some_and(|j| j.outcome == Outcome::Pass);
    let undecided = judged.as_ref().is_some_and(|j| j.outcome == Outcome::Undecided);
    // Format: closed thinking and, where the task has an answer to find, one found after it.
    let answer_found = match (&judged, p.task) {
        (Some(j), Task::Math | Task::Code) if scored => j.verdict.extracted.is_some(),
        _ => !content.trim().is_empty(),
    };
    let format = closed && answer_found;
    let truncated = g.finish_reason.as_deref() == Some("length");
    if let Some(j) = &judged {
        rec.insert("verdict".into(), serde_json::to_value(&j.verdict).unwrap_or(Value::Null));
    }
    rec.insert(
        "eval".into(),
        json!({"scored": scored, "pass": pass, "format": format, "closed_thinking": closed,
               "truncated": truncated, "eos": g.eos, "tokens": g.tokens}),
    );
    (rec, Scored { pass, undecided, format, truncated, eos: g.eos, tokens: g.tokens })
}

/// What a run produced.
pub struct EvalReport {
    pub summary: Summary,
    pub json: Value,
    pub rejected: u64,
}

/// Reads the problems; bad records go to the rejects.
fn read_problems(cfg: &EvalConfig) -> Result<(Vec<Problem>, store::Rejects), EvalError> {
    let rejects = store::Rejects::new("eval", cfg.rejects.clone());
    let mut input = store::Lenient::open(&cfg.problems, rejects)?;
    let mut problems = Vec::new();
    while let Some(item) = input.next_record() {
        let rec = item?;
        let Some(p) = input.parse::<Prompt>(rec)? else { continue };
        let messages =
            crate::record::prompt_messages(&p, cfg.system.as_deref(), &cfg.math_instruction, &cfg.code_instruction);
        problems.push(Problem { prompt: p, messages });
        if cfg.limit > 0 && problems.len() >= cfg.limit {
            break;
        }
    }
    Ok((problems, input.rejects))
}

pub(crate) fn progress_bar(show: bool, total: u64) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} problems ETA {eta} {msg}")
    {
        pb.set_style(style);
    }
    pb
}

/// Runs the evaluation: generates, judges, writes `--samples` and `--out`.
pub fn run(cfg: &EvalConfig) -> Result<EvalReport, EvalError> {
    let (problems, rejects) = read_problems(cfg)?;
    if problems.is_empty() {
        rejects.finish()?;
        return Err(EvalError::Empty { path: cfg.problems.clone() });
    }
    let verifiers = Verifiers::standard();
    let mut sink = match &cfg.samples {
        Some(path) => Some(store::create(path)?),
        None => None,
    };
    let mut scores: Vec<ProblemScore> = problems
        .iter()
        .map(|p| ProblemScore {
            id: p.prompt.id.clone(),
            task: p.prompt.task.as_str().to_string(),
            scored: false,
            samples: Vec::new(),
            failed: 0,
        })
        .collect();
    let started = Instant::now();
    let mut gen_seconds = 0.0;
    let mut on_gens = |gens: Vec<Gen>, seconds: f64| -> Result<(), EvalError> {
        gen_seconds += seconds;
        let judged: Vec<(Map<String, Value>, Scored)> =
            gens.par_iter().map(|g| judge(cfg, &problems, &verifiers, g)).collect();
        for (g, (rec, scored)) in gens.iter().zip(judged) {
            let ps = &mut scores[g.problem];
            ps.scored |= rec.get("eval").and_then(|e| e.get("scored")).and_then(Value::as_bool).unwrap_or(false);
            ps.samples.push(scored);
            if let Some(s) = sink.as_mut() {
                s.write_value(&Value::Object(rec))?;
            }
        }
        Ok(())
    };
    let extra = match &cfg.endpoint {
        Some(url) => {
            let failed = endpoint::generate(cfg, url, &problems, &mut on_gens)?;
            for (i, f) in failed {
                scores[i].failed += f;
            }
            json!({"endpoint": url})
        }
        None => local::generate(cfg, &problems, &mut on_gens)?,
    };
    if let Some(s) = sink.take() {
        s.finish()?;
    }
    let rejected = rejects.finish()?;
    for s in &mut scores {
        s.samples.shrink_to_fit();
    }
    let seconds = if gen_seconds > 0.0 { gen_seconds } else { started.elapsed().as_secs_f64() };
    let summary = Summary { problems: scores, n: u64::from(cfg.n), seconds };
    let mut extra_map = match extra {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    extra_map.insert("model".into(), json!(cfg.model));
    extra_map.insert(
        "params".into(),
        json!({"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k,
               "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed, "think_prefill": cfg.think_prefill,
               "stop": cfg.stop}),
    );
    extra_map.insert("rejected".into(), json!(rejected));
    let json = summary.to_json(extra_map);
    if let Some(out) = &cfg.out {
        let text = serde_json::to_string_pretty(&json).unwrap_or_default();
        store::write_atomic(out, format!("{text}\n").as_bytes())?;
    }
    Ok(EvalReport { summary, json, rejected })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_depend_on_problem_and_sample_only() {
        assert_eq!(sample_seed(0, "p1", 0), sample_seed(0, "p1", 0));
        assert_ne!(sample_seed(0, "p1", 0), sample_seed(0, "p1", 1));
        assert_ne!(sample_seed(0, "p1", 0), sample_seed(0, "p2", 0));
        assert_ne!(sample_seed(0, "p1", 0), sample_seed(1, "p1", 0));
    }

    fn problem(task: Task, answer: Option<&str>) -> Problem {
        let prompt = Prompt {
            id: "p".into(),
            task,
            prompt: "What is 2+2?".into(),
            answer: answer.map(str::to_string),
            tests: None,
            source: None,
            meta: None,
            extra: Default::default(),
        };
        let messages = crate::record::prompt_messages(&prompt, None, crate::record::DEFAULT_MATH_INSTRUCTION, "");
        Problem { prompt, messages }
    }

    fn gen_of(text: &str, finish: &str, eos: bool) -> Gen {
        Gen {
            text: text.into(),
            finish_reason: Some(finish.into()),
            eos,
            tokens: 7,
            endpoint: "local".into(),
            ..Gen::default()
        }
    }

    #[test]
    fn format_needs_closed_thinking_and_an_answer_after_it() {
        let cfg = EvalConfig::default();
        let v = Verifiers::standard();
        let probs = vec![problem(Task::Math, Some("4"))];
        let cases = [
            // (text, pass, format)
            ("<think>\n2+2=4\n</think>\n\nThe answer is \\boxed{4}.", true, true),
            ("<think>\n2+2=5\n</think>\n\n\\boxed{5}", false, true),
            // The answer only inside the thinking counts as none.
            ("<think>\nso \\boxed{4}\n</think>\n\nI am done.", false, false),
            // Never closed: all reasoning, no answer.
            ("<think>\nso \\boxed{4} and on and on", false, false),
            // No thinking at all: scored on the text, but the format is not R1's.
            ("\\boxed{4}", true, false),
        ];
        for (text, pass, format) in cases {
            let (rec, s) = judge(&cfg, &probs, &v, &gen_of(text, "stop", true));
            assert_eq!((s.pass, s.format), (pass, format), "{text}");
            assert_eq!(rec["eval"]["pass"], pass);
            assert!(rec.get("verdict").is_some());
            assert_eq!(rec["id"], "p/0");
        }
        // A separate reasoning_content closes the thinking.
        let mut g = gen_of("The answer is \\boxed{4}.", "stop", true);
        g.reasoning_content = Some("2+2=4".into());
        let (_, s) = judge(&cfg, &probs, &v, &g);
        assert!(s.pass && s.format);
        let (_, s) = judge(&cfg, &probs, &v, &gen_of("<think>\nabc", "length", false));
        assert!(s.truncated && !s.eos);
        // Open prompts are recorded, not scored.
        let open = vec![problem(Task::Open, None)];
        let (rec, s) = judge(&cfg, &open, &v, &gen_of("<think>\nx\n</think>\n\nHi", "stop", true));
        assert_eq!(rec["eval"]["scored"], false);
        assert!(!s.pass && s.format);
        assert!(rec.get("verdict").is_none());
    }
}
