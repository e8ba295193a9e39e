//! `distill collect`: long chain-of-thought from any OpenAI-compatible teacher, resumably.
//!
//! In: Prompt records (a .jsonl/.jsonl.zst/.parquet file, a directory of them, or `-`),
//! streamed, never loaded whole. Out, under the output directory:
//! - `part-NNNNN.jsonl.zst`: Sample records (id `{prompt_id}/{k}`), one new append-only part per
//!   run, each record SIGKILL-safe once written; see [`resume`] for exactly-once and for how
//!   `--regenerate truncated` supersedes records (the later part wins; older parts are
//!   compacted so each id appears once).
//! - `rejects-requests.jsonl`: requests that failed for good (reason, detail, attempts), appended
//!   across runs; their samples are simply missing, so a re-run asks for them again.
//! - `rejects-prompts.jsonl`: prompt lines that could not be used, with file:line and reason.
//! - `summary.json`: this run's accounting (tokens, cost, failures by reason, latency
//!   percentiles, throughput).
//!
//! Records do not depend on transport: the request body is the same apart from `stream` and
//! `stream_options`, and `request_sha256` is the sha256 of the body without those two fields,
//! so streaming or not, inline `<think>` or `reasoning_content`, the records are identical
//! except for `latency_ms` and `teacher.endpoint`.
//!
//! The API key is read from the environment variable named by `api_key_env`; it goes into the
//! `Authorization` header only and is scrubbed from any error text. Proxies come from the
//! environment (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`) and `ca_cert` adds a
//! private CA to the trusted roots (see [`crate::client::tls`]); `summary.json` names the proxy
//! each endpoint went through.

pub mod resume;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::client::limiter::{Balancer, TokenBucket};
use crate::client::retry::{self, Backoff};
use crate::client::{Client, ClientError, Url, extract};
use crate::record::{Message, Params, Prompt, Sample, Teacher, Usage};
use crate::store::{self, Durability, JsonlWriter, Lenient, Rejects, StoreError};
use resume::{Done, id_key};

pub use crate::record::DEFAULT_MATH_INSTRUCTION;

/// Which existing samples to request again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Regenerate {
    /// Samples whose `finish_reason` was `length`.
    Truncated,
}

/// Settings of `distill collect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectConfig {
    /// Prompt file, directory, or `-`.
    pub prompts: PathBuf,
    /// Base URLs (`http(s)://host:port/v1`); requests go to `{endpoint}/chat/completions`.
    pub endpoints: Vec<String>,
    pub model: String,
    /// Output directory.
    pub out: PathBuf,
    /// Samples per prompt.
    pub n: u32,
    /// Ask for a prompt's missing samples in one request with `n` (servers that support it);
    /// otherwise one request per sample. With `n`, per-sample `completion_tokens` are the
    /// response's total split in proportion to text length.
    pub server_n: bool,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// Name of the environment variable holding the API key (never the key itself).
    pub api_key_env: String,
    /// A PEM file of extra root certificates (a private CA) trusted besides the bundled and the
    /// system's roots.
    pub ca_cert: Option<PathBuf>,
    pub stream: bool,
    pub temperature: f64,
    pub top_p: f64,
    pub max_tokens: Option<u64>,
    /// Sample k is requested with seed `seed + k`; `None` sends no seed.
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    /// Optional system message.
    pub system: Option<String>,
    /// Appended (after a blank line) to math prompts; empty for none.
    pub math_instruction: String,
    /// Appended (after a blank line) to code prompts; empty for none.
    pub code_instruction: String,
    /// Extra request body fields, passed through as they are.
    pub extra_body: BTreeMap<String, Value>,
    /// Requests per minute (0: unlimited).
    pub rpm: u64,
    /// Tokens per minute, prompt + completion (0: unlimited).
    pub tpm: u64,
    pub max_retries: u32,
    /// Per-attempt timeout (for streams: the longest gap between events).
    pub timeout_s: f64,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub regenerate: Option<Regenerate>,
    /// USD per million prompt tokens.
    pub price_in_per_m: f64,
    /// USD per million completion tokens.
    pub price_out_per_m: f64,
    /// Runtime worker threads (0: one per core).
    pub threads: usize,
    /// Show the progress bar (on a terminal).
    pub progress: bool,
}

impl Default for CollectConfig {
    fn default() -> Self {
        CollectConfig {
            prompts: PathBuf::new(),
            endpoints: Vec::new(),
            model: String::new(),
            out: PathBuf::new(),
            n: 1,
            server_n: false,
            concurrency: 64,
            api_key_env: "OPENAI_API_KEY".into(),
            ca_cert: None,
            stream: false,
            temperature: 0.6,
            top_p: 0.95,
            max_tokens: None,
            seed: Some(0),
            stop: Vec::new(),
            system: None,
            math_instruction: DEFAULT_MATH_INSTRUCTION.into(),
            code_instruction: String::new(),
            extra_body: BTreeMap::new(),
            rpm: 0,
            tpm: 0,
            max_retries: 8,
            timeout_s: 600.0,
            backoff_base_ms: 1000,
            backoff_max_ms: 60_000,
            regenerate: None,
            price_in_per_m: 0.0,
            price_out_per_m: 0.0,
            threads: 0,
            progress: true,
        }
    }
}

impl crate::config::Settings for CollectConfig {
    const TABLE: &'static str = "collect";
    /// The names open-r1 / TRL / OpenAI clients use.
    const ALIASES: &'static [(&'static str, &'static str)] =
        &[("num_generations", "n"), ("max_new_tokens", "max_tokens"), ("max_concurrent", "concurrency")];

    fn validate(&self) -> Result<(), String> {
        for (key, missing) in [
            ("prompts", self.prompts.as_os_str().is_empty()),
            ("endpoints", self.endpoints.is_empty()),
            ("model", self.model.is_empty()),
            ("out", self.out.as_os_str().is_empty()),
        ] {
            if missing {
                return Err(format!("collect needs `{key}`"));
            }
        }
        Ok(())
    }
}

/// Errors that stop `collect` before or outside the request loop. Per-request failures are
/// never errors: they are recorded and counted.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("no --endpoint given; pass the teacher's base URL, e.g. http://127.0.0.1:8000/v1")]
    NoEndpoint,
    #[error("endpoint {endpoint:?}: {msg}")]
    Endpoint { endpoint: String, msg: String },
    #[error("invalid setting: {0}")]
    Config(String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the output writer stopped: {0}")]
    Writer(String),
    #[error("{dir}: another distill collect is writing here ({holder}); wait for it to finish, or give another --out")]
    Locked { dir: PathBuf, holder: String },
}

/// A resolved endpoint.
struct Endpoint {
    /// As recorded in samples (without credentials).
    label: String,
    url: Url,
    /// The proxy requests go through (from the environment), if any.
    proxy: Option<String>,
}

fn resolve_endpoint(raw: &str) -> Result<Endpoint, CollectError> {
    let err = |msg: String| CollectError::Endpoint { endpoint: raw.to_string(), msg };
    let base = raw.trim().trim_end_matches('/');
    let url = Url::parse(&format!("{base}/chat/completions")).map_err(|e| err(format!("not a URL: {e}")))?;
    match url.scheme() {
        "http" | "https" => {}
        _ => return Err(err("the URL must start with http:// or https://".into())),
    }
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| err("the URL has no host".into()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(err(
            "credentials in the URL are not supported; put the key in the environment variable named by --api-key-env"
                .into(),
        ));
    }
    let proxy = crate::client::proxy_for(&url);
    // Through a proxy the proxy resolves the name (a host behind it may not resolve here).
    if proxy.is_none() {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = url.port_or_known_default().unwrap_or(80);
        use std::net::ToSocketAddrs;
        match (host, port).to_socket_addrs() {
            Ok(it) if it.len() > 0 => {}
            Ok(_) => return Err(err(format!("host {host:?} has no address"))),
            Err(e) => return Err(err(format!("cannot resolve host {host:?}: {e}; check the URL"))),
        }
    }
    Ok(Endpoint { label: base.to_string(), url, proxy })
}

/// This run's accounting, written to `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub model: String,
    pub endpoints: Vec<String>,
    pub part: Option<String>,
    /// Distinct valid prompts.
    pub prompts_read: u64,
    pub prompts_rejected: u64,
    pub samples_wanted: u64,
    pub samples_already_done: u64,
    pub samples_requested: u64,
    pub samples_written: u64,
    pub samples_superseded: u64,
    pub failures: u64,
    pub failures_by_reason: BTreeMap<String, u64>,
    pub retries: u64,
    pub retries_by_reason: BTreeMap<String, u64>,
    pub http_attempts: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    pub latency_ms: Latency,
    pub wall_s: f64,
    pub requests_per_s: f64,
    pub completion_tokens_per_s: f64,
    pub warnings: Vec<String>,
    /// Endpoint → the proxy its requests went through (from `HTTPS_PROXY`/`HTTP_PROXY`/...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub proxies: BTreeMap<String, String>,
    /// Failure reason → the first such failure's detail.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub failure_examples: BTreeMap<String, String>,
}

/// Latency percentiles of successful requests, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    fn of(mut v: Vec<u64>) -> Latency {
        if v.is_empty() {
            return Latency::default();
        }
        v.sort_unstable();
        let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
        Latency {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: v[v.len() - 1],
            mean: v.iter().sum::<u64>() as f64 / v.len() as f64,
        }
    }
}

impl Summary {
    /// A few human-readable lines.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "collect: {} samples written ({} already done, {} wanted), {} failed, {} retries, {} prompts rejected\n",
            self.samples_written,
            self.samples_already_done,
            self.samples_wanted,
            self.failures,
            self.retries,
            self.prompts_rejected
        );
        s.push_str(&format!(
            "  tokens in/out {}/{}, cost ${:.4}; {:.1} req/s, {:.0} completion tok/s over {:.1} s\n",
            self.prompt_tokens,
            self.completion_tokens,
            self.cost_usd,
            self.requests_per_s,
            self.completion_tokens_per_s,
            self.wall_s
        ));
        s.push_str(&format!(
            "  latency ms p50 {} p90 {} p99 {} max {}\n",
            self.latency_ms.p50, self.latency_ms.p90, self.latency_ms.p99, self.latency_ms.max
        ));
        if !self.failures_by_reason.is_empty() {
            let parts: Vec<String> = self.failures_by_reason.iter().map(|(k, v)| format!("{k} {v}")).collect();
            s.push_str(&format!("  failures by reason: {}\n", parts.join(", ")));
        }
        for (reason, detail) in &self.failure_examples {
            s.push_str(&format!("  first {reason} failure: {detail}\n"));
        }
        for (endpoint, proxy) in &self.proxies {
            s.push_str(&format!("  {endpoint} via proxy {proxy}\n"));
        }
        if self.samples_superseded > 0 {
            s.push_str(&format!("  {} earlier records superseded and compacted away\n", self.samples_superseded));
        }
        s
    }
}

/// What `collect` did.
#[derive(Debug)]
pub struct Report {
    pub summary: Summary,
}

impl Report {
    /// True when some prompt or request failed.
    pub fn had_failures(&self) -> bool {
        self.summary.failures > 0 || self.summary.prompts_rejected > 0
    }
}

#[derive(Default)]
struct Stats {
    failures: AtomicU64,
    retries: AtomicU64,
    attempts: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    latencies: Mutex<Vec<u64>>,
    failures_by_reason: Mutex<BTreeMap<String, u64>>,
    retries_by_reason: Mutex<BTreeMap<String, u64>>,
    failure_examples: Mutex<BTreeMap<String, String>>,
}

fn bump(m: &Mutex<BTreeMap<String, u64>>, key: String) {
    *m.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default() += 1;
}

/// One (prompt, sample) pair to request.
/// One request: sample numbers k (with whether each supersedes an existing record). More than
/// one only with `server_n`, sent as the request's `n`.
struct Job {
    prompt: Arc<PromptCtx>,
    ks: Vec<(u32, bool)>,
}

/// A prompt with the messages sent for it.
struct PromptCtx {
    prompt: Prompt,
    messages: Vec<Message>,
}

enum Out {
    Sample { line: Vec<u8>, key: u64, supersedes: bool },
    Failure(Value),
}

/// Fields a Sample defines; a prompt's unknown fields with these names are not copied.
const SAMPLE_FIELDS: [&str; 20] = [
    "id",
    "prompt_id",
    "sample",
    "task",
    "prompt",
    "answer",
    "tests",
    "source",
    "meta",
    "messages",
    "reasoning",
    "content",
    "finish_reason",
    "usage",
    "teacher",
    "params",
    "latency_ms",
    "request_sha256",
    "verdict",
    "endpoint",
];

fn build_messages(cfg: &CollectConfig, p: &Prompt) -> Vec<Message> {
    crate::record::prompt_messages(p, cfg.system.as_deref(), &cfg.math_instruction, &cfg.code_instruction)
}

/// The request body without transport fields, and its sha256.
fn request_body(cfg: &CollectConfig, messages: &[Message], seed: Option<u64>) -> (Map<String, Value>, String) {
    let mut b = Map::new();
    b.insert("model".into(), Value::String(cfg.model.clone()));
    b.insert("messages".into(), serde_json::to_value(messages).unwrap_or(Value::Null));
    b.insert("temperature".into(), json!(cfg.temperature));
    b.insert("top_p".into(), json!(cfg.top_p));
    if let Some(m) = cfg.max_tokens {
        b.insert("max_tokens".into(), json!(m));
    }
    if let Some(s) = seed {
        b.insert("seed".into(), json!(s));
    }
    if !cfg.stop.is_empty() {
        b.insert("stop".into(), json!(cfg.stop));
    }
    for (k, v) in &cfg.extra_body {
        b.insert(k.clone(), v.clone());
    }
    let bytes = serde_json::to_vec(&b).unwrap_or_default();
    (b, store::hex(&Sha256::digest(&bytes)))
}

struct Ctx {
    cfg: CollectConfig,
    endpoints: Vec<Endpoint>,
    client: Client,
    balancer: Balancer,
    rpm: Option<TokenBucket>,
    tpm: Option<TokenBucket>,
    backoff: Backoff,
    stats: Stats,
    out: std::sync::mpsc::Sender<Out>,
    pb: indicatif::ProgressBar,
}

/// Splits `total` completion tokens over choices in proportion to their text lengths (a server
/// answering `n > 1` reports only the total).
fn split_tokens(total: u64, lens: &[usize]) -> Vec<u64> {
    let sum: usize = lens.iter().sum();
    if lens.len() == 1 {
        return vec![total];
    }
    if sum == 0 {
        return lens.iter().map(|_| total / lens.len() as u64).collect();
    }
    let mut out: Vec<u64> = lens.iter().map(|&l| (total as u128 * l as u128 / sum as u128) as u64).collect();
    let rest = total - out.iter().sum::<u64>();
    if let Some(last) = out.last_mut() {
        *last += rest;
    }
    out
}

async fn process(ctx: Arc<Ctx>, job: Job) {
    let cfg = &ctx.cfg;
    let p = &job.prompt.prompt;
    let first_k = job.ks.first().map_or(0, |&(k, _)| k);
    let first_id = Sample::make_id(&p.id, first_k);
    let seed = cfg.seed.map(|s| s.wrapping_add(u64::from(first_k)));
    let (mut body, sha) = request_body(cfg, &job.prompt.messages, seed);
    if job.ks.len() > 1 {
        body.insert("n".into(), json!(job.ks.len()));
    }
    let sha = if job.ks.len() > 1 {
        // The hash covers `n` too.
        store::hex(&Sha256::digest(serde_json::to_vec(&body).unwrap_or_default()))
    } else {
        sha
    };
    if cfg.stream {
        body.insert("stream".into(), Value::Bool(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    let prompt_chars: usize = job.prompt.messages.iter().map(|m| m.content.len()).sum();
    let estimate = (prompt_chars / 4) as f64 + (cfg.max_tokens.unwrap_or(2048) * job.ks.len() as u64) as f64;
    let mut rng = fastrand::Rng::with_seed(id_key(&first_id));
    let mut retry = 0u32;
    loop {
        if let Some(b) = &ctx.rpm {
            b.acquire(1.0).await;
        }
        if let Some(b) = &ctx.tpm {
            b.acquire(estimate).await;
        }
        let ep = ctx.balancer.pick().await;
        let started = Instant::now();
        ctx.stats.attempts.fetch_add(1, Ordering::Relaxed);
        let result = ctx.client.complete(&ctx.endpoints[ep].url, bytes.clone(), cfg.stream).await.and_then(|c| {
            if c.choices.len() < job.ks.len() {
                Err(retry::AttemptError::InvalidResponse(format!(
                    "asked for n={} choices, got {}",
                    job.ks.len(),
                    c.choices.len()
                )))
            } else {
                Ok(c)
            }
        });
        let latency_ms = started.elapsed().as_millis() as u64;
        let healthy = result.as_ref().err().is_none_or(|e| !e.endpoint_failure());
        ctx.balancer.release(ep, healthy);
        match result {
            Ok(c) => {
                let prompt_tokens = c.prompt_tokens.unwrap_or(0);
                let total_out = c.completion_tokens.unwrap_or(0);
                if let Some(b) = &ctx.tpm {
                    b.adjust((prompt_tokens + total_out) as f64 - estimate);
                }
                ctx.stats.prompt_tokens.fetch_add(prompt_tokens, Ordering::Relaxed);
                ctx.stats.completion_tokens.fetch_add(total_out, Ordering::Relaxed);
                ctx.stats.latencies.lock().unwrap_or_else(|e| e.into_inner()).push(latency_ms);
                let parts: Vec<(String, String)> = c.choices.iter().take(job.ks.len()).map(extract).collect();
                let lens: Vec<usize> = parts.iter().map(|(r, a)| r.len() + a.len()).collect();
                let outs = split_tokens(total_out, &lens);
                let mut extra = p.extra.clone();
                for f in SAMPLE_FIELDS {
                    extra.remove(f);
                }
                for (i, ((reasoning, content), &(k, supersedes))) in parts.into_iter().zip(&job.ks).enumerate() {
                    let id = Sample::make_id(&p.id, k);
                    let s = Sample {
                        id: id.clone(),
                        prompt_id: p.id.clone(),
                        sample: k,
                        task: p.task,
                        prompt: p.prompt.clone(),
                        answer: p.answer.clone(),
                        tests: p.tests.clone(),
                        source: p.source.clone(),
                        meta: p.meta.clone(),
                        messages: job.prompt.messages.clone(),
                        reasoning,
                        content,
                        finish_reason: c.choices[i].finish_reason.clone(),
                        usage: Some(Usage { prompt_tokens, completion_tokens: outs[i] }),
                        teacher: Some(Teacher { model: cfg.model.clone(), endpoint: ctx.endpoints[ep].label.clone() }),
                        params: Some(Params {
                            temperature: cfg.temperature,
                            top_p: cfg.top_p,
                            max_tokens: cfg.max_tokens,
                            seed,
                        }),
                        latency_ms: Some(latency_ms),
                        request_sha256: Some(sha.clone()),
                        verdict: None,
                        extra: extra.clone(),
                    };
                    let line = serde_json::to_vec(&s).unwrap_or_default();
                    let _ = ctx.out.send(Out::Sample { line, key: id_key(&id), supersedes });
                }
                return;
            }
            Err(e) => {
                if e.retryable() && retry < cfg.max_retries {
                    ctx.stats.retries.fetch_add(1, Ordering::Relaxed);
                    bump(&ctx.stats.retries_by_reason, e.reason());
                    let wait = ctx.backoff.delay(retry, e.retry_after(), &mut rng);
                    retry += 1;
                    tokio::time::sleep(wait).await;
                    continue;
                }
                let detail = ctx.client.scrub(&e.detail());
                ctx.stats
                    .failure_examples
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(e.reason())
                    .or_insert_with(|| detail.clone());
                for &(k, _) in &job.ks {
                    ctx.stats.failures.fetch_add(1, Ordering::Relaxed);
                    bump(&ctx.stats.failures_by_reason, e.reason());
                    let rec = json!({
                        "id": Sample::make_id(&p.id, k), "prompt_id": p.id, "sample": k, "reason": e.reason(),
                        "detail": detail, "retryable": e.retryable(),
                        "attempts": retry + 1, "endpoint": ctx.endpoints[ep].label, "request_sha256": sha,
                    });
                    let _ = ctx.out.send(Out::Failure(rec));
                    ctx.pb.inc(1);
                }
                return;
            }
        }
    }
}

/// The writer thread: samples into the new part, failures into `rejects-requests.jsonl`.
struct WriterResult {
    written: u64,
    superseded: HashSet<u64>,
}

fn writer_thread(
    part_path: PathBuf,
    failures_path: PathBuf,
    rx: std::sync::mpsc::Receiver<Out>,
    pb: indicatif::ProgressBar,
) -> Result<WriterResult, StoreError> {
    let mut part: Option<JsonlWriter> = None;
    let mut failures: Option<JsonlWriter> = None;
    let mut res = WriterResult { written: 0, superseded: HashSet::new() };
    for msg in rx {
        match msg {
            Out::Sample { line, key, supersedes } => {
                if part.is_none() {
                    part = Some(JsonlWriter::create(&part_path, Durability::EveryRecord)?);
                }
                if let Some(w) = part.as_mut() {
                    w.write_line(&line)?;
                }
                res.written += 1;
                if supersedes {
                    res.superseded.insert(key);
                }
                pb.inc(1);
            }
            Out::Failure(v) => {
                if failures.is_none() {
                    failures = Some(JsonlWriter::append(&failures_path, Durability::EveryRecord)?);
                }
                if let Some(w) = failures.as_mut() {
                    let line = serde_json::to_vec(&v).unwrap_or_default();
                    w.write_line(&line)?;
                }
            }
        }
    }
    if let Some(w) = part {
        w.close()?;
    }
    if let Some(w) = failures {
        w.close()?;
    }
    Ok(res)
}

/// Whether sample `k` of a prompt must be requested.
fn wanted(done: &HashMap<u64, Done>, regen: Option<Regenerate>, id: &str) -> Option<bool> {
    match done.get(&id_key(id)) {
        None => Some(false),
        Some(d) if regen == Some(Regenerate::Truncated) && d.truncated => Some(true),
        Some(_) => None,
    }
}

/// What the prompt reader saw.
struct ReadCounts {
    read: u64,
    rejected: u64,
    /// Samples of the prompts read that earlier runs already hold.
    already: u64,
}

/// The request counters at the end of the run.
struct StatsSnapshot {
    failures: u64,
    retries: u64,
    attempts: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    latencies: Vec<u64>,
    failures_by_reason: BTreeMap<String, u64>,
    retries_by_reason: BTreeMap<String, u64>,
    failure_examples: BTreeMap<String, String>,
}

impl Stats {
    fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            failures: self.failures.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            attempts: self.attempts.load(Ordering::Relaxed),
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed),
            latencies: std::mem::take(&mut *self.latencies.lock().unwrap_or_else(|e| e.into_inner())),
            failures_by_reason: self.failures_by_reason.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            retries_by_reason: self.retries_by_reason.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            failure_examples: self.failure_examples.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

/// Where this run writes, and what earlier runs already hold.
struct Resumed {
    /// The directory's lock, held until the run ends (the OS drops it with the process).
    _lock: std::fs::File,
    part_no: u32,
    part_path: PathBuf,
    done: HashMap<u64, Done>,
    warnings: Vec<String>,
}

/// Runs a collection: read the prompts, request what is missing, write it, summarise.
pub fn run(cfg: CollectConfig) -> Result<Report, CollectError> {
    let endpoints = check(&cfg)?;
    let started = Instant::now();
    let resumed = resume_dir(&cfg)?;
    let done = Arc::new(resumed.done);
    let pb = progress_bar(cfg.progress, count_wanted(&cfg, &done)?);
    let (out_tx, out_rx) = std::sync::mpsc::channel::<Out>();
    let writer = {
        let (pp, fp, pb) = (resumed.part_path.clone(), cfg.out.join("rejects-requests.jsonl"), pb.clone());
        std::thread::spawn(move || writer_thread(pp, fp, out_rx, pb))
    };
    let (job_tx, job_rx) = tokio::sync::mpsc::channel::<Job>(cfg.concurrency * 2 + 64);
    let reader = {
        let (cfg, done) = (cfg.clone(), done.clone());
        std::thread::spawn(move || read_prompts(&cfg, &done, job_tx))
    };
    let api_key = std::env::var(&cfg.api_key_env).ok().filter(|k| !k.is_empty());
    let client = Client::new(api_key, Duration::from_secs_f64(cfg.timeout_s), cfg.concurrency, cfg.ca_cert.as_deref())?;
    let proxies: BTreeMap<String, String> =
        endpoints.iter().filter_map(|e| Some((e.label.clone(), e.proxy.clone()?))).collect();
    let ctx = Arc::new(Ctx {
        endpoints,
        client,
        balancer: Balancer::new(cfg.endpoints.len()),
        rpm: TokenBucket::new(cfg.rpm),
        tpm: TokenBucket::new(cfg.tpm),
        backoff: Backoff {
            base: Duration::from_millis(cfg.backoff_base_ms),
            max: Duration::from_millis(cfg.backoff_max_ms.max(cfg.backoff_base_ms)),
        },
        stats: Stats::default(),
        out: out_tx,
        pb: pb.clone(),
        cfg: cfg.clone(),
    });
    let requested = request_all(&cfg, ctx.clone(), job_rx)?;
    let counts = reader.join().map_err(|_| CollectError::Writer("the prompt reader panicked".into()))??;
    let stats = ctx.stats.snapshot();
    drop(ctx); // closes the writer's channel
    let written = writer.join().map_err(|_| CollectError::Writer("the writer panicked".into()))??;
    pb.finish_and_clear();
    let superseded = supersede(&cfg, done, resumed.part_no, &written)?;
    let part = (written.written > 0).then(|| resume::part_name(resumed.part_no));
    let mut summary = summarise(&cfg, part, counts, requested, &written, superseded, stats, resumed.warnings, started);
    summary.proxies = proxies;
    let text = serde_json::to_vec_pretty(&summary).unwrap_or_default();
    store::write_atomic(&cfg.out.join("summary.json"), &text)?;
    Ok(Report { summary })
}

/// Refuses settings the run cannot work with; resolves the endpoints.
fn check(cfg: &CollectConfig) -> Result<Vec<Endpoint>, CollectError> {
    if cfg.endpoints.is_empty() {
        return Err(CollectError::NoEndpoint);
    }
    if cfg.n == 0 || cfg.concurrency == 0 {
        return Err(CollectError::Config("-n and --concurrency must be at least 1".into()));
    }
    if !(cfg.timeout_s > 0.0 && cfg.timeout_s.is_finite()) {
        return Err(CollectError::Config("--timeout-s must be a positive number of seconds".into()));
    }
    cfg.endpoints.iter().map(|e| resolve_endpoint(e)).collect()
}

/// Scans the output directory's parts (compacting duplicates a killed run left) and names
/// this run's part.
fn resume_dir(cfg: &CollectConfig) -> Result<Resumed, CollectError> {
    std::fs::create_dir_all(&cfg.out).map_err(|e| StoreError::Io { path: cfg.out.clone(), source: e })?;
    let lock = lock_dir(&cfg.out)?;
    let mut scan = resume::scan(&cfg.out)?;
    let warnings = std::mem::take(&mut scan.warnings);
    if !scan.stale_parts.is_empty() {
        resume::compact(&cfg.out, &scan.stale_parts, &scan.done)?;
    }
    let part_no = scan.next_part();
    Ok(Resumed {
        _lock: lock,
        part_no,
        part_path: cfg.out.join(resume::part_name(part_no)),
        done: std::mem::take(&mut scan.done),
        warnings,
    })
}

/// Takes the exclusive lock of an output directory (`DIR/.lock`, an OS file lock that dies with
/// the process, so a killed run never leaves a stale lock); a second collect there is refused.
fn lock_dir(dir: &Path) -> Result<std::fs::File, CollectError> {
    use std::io::{Read as _, Seek as _, Write as _};
    use std::os::fd::AsRawFd as _;
    let path = dir.join(".lock");
    let io = |e| CollectError::Store(StoreError::Io { path: path.clone(), source: e });
    let mut f =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
    // SAFETY: flock on a descriptor this function owns; no memory is shared with the kernel.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut holder = String::new();
        let _ = f.read_to_string(&mut holder);
        let holder = match holder.trim() {
            "" => "a running process".to_string(),
            pid => format!("process {pid}"),
        };
        return Err(CollectError::Locked { dir: dir.to_path_buf(), holder });
    }
    f.set_len(0).map_err(io)?;
    f.rewind().map_err(io)?;
    write!(f, "{}", std::process::id()).map_err(io)?;
    Ok(f)
}

/// How many samples are wanted, for the progress bar (not for stdin, which can be read once).
fn count_wanted(cfg: &CollectConfig, done: &HashMap<u64, Done>) -> Result<Option<u64>, CollectError> {
    if cfg.prompts == Path::new("-") {
        return Ok(None);
    }
    let mut n = 0u64;
    let mut seen = HashSet::new();
    for rec in store::open(&cfg.prompts)?.flatten() {
        let Ok(p) = rec.into_parsed::<Prompt>() else { continue };
        if !seen.insert(id_key(&p.id)) {
            continue;
        }
        for k in 0..cfg.n {
            if wanted(done, cfg.regenerate, &Sample::make_id(&p.id, k)).is_some() {
                n += 1;
            }
        }
    }
    Ok(Some(n))
}

fn progress_bar(show: bool, total: Option<u64>) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::with_draw_target(total, indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} {per_sec} ETA {eta} {msg}")
    {
        pb.set_style(style);
    }
    pb
}

/// Streams the prompts, rejects bad ones (`rejects-prompts.jsonl`), and sends a job per
/// missing sample (or per prompt, with `server_n`).
fn read_prompts(
    cfg: &CollectConfig,
    done: &HashMap<u64, Done>,
    job_tx: tokio::sync::mpsc::Sender<Job>,
) -> Result<ReadCounts, StoreError> {
    let rejects = Rejects::new("collect", cfg.out.join("rejects-prompts.jsonl"));
    let mut input = Lenient::open(&cfg.prompts, rejects)?;
    let (mut read, mut already) = (0u64, 0u64);
    let mut seen = HashSet::new();
    while let Some(item) = input.next_record() {
        let rec = item?;
        let p = match rec.parse::<Prompt>() {
            Ok(p) => p,
            Err(e) => {
                input.rejects.reject(e, Some(&rec.value))?;
                continue;
            }
        };
        if !seen.insert(id_key(&p.id)) {
            input.rejects.reject_record(&rec, "duplicate prompt id; only its first occurrence is collected")?;
            continue;
        }
        read += 1;
        let messages = build_messages(cfg, &p);
        let ctx = Arc::new(PromptCtx { prompt: p, messages });
        let mut ks = Vec::new();
        for k in 0..cfg.n {
            match wanted(done, cfg.regenerate, &Sample::make_id(&ctx.prompt.id, k)) {
                None => already += 1,
                Some(supersedes) => ks.push((k, supersedes)),
            }
        }
        let jobs: Vec<Vec<(u32, bool)>> =
            if cfg.server_n && !ks.is_empty() { vec![ks] } else { ks.into_iter().map(|k| vec![k]).collect() };
        for ks in jobs {
            if job_tx.blocking_send(Job { prompt: ctx.clone(), ks }).is_err() {
                let rejected = input.rejects.count();
                return Ok(ReadCounts { read, rejected, already });
            }
        }
    }
    let rejected = input.rejects.finish()?;
    Ok(ReadCounts { read, rejected, already })
}

/// Runs every job with at most `concurrency` in flight; returns how many samples were requested.
fn request_all(
    cfg: &CollectConfig,
    ctx: Arc<Ctx>,
    mut job_rx: tokio::sync::mpsc::Receiver<Job>,
) -> Result<u64, CollectError> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if cfg.threads > 0 {
        rt.worker_threads(cfg.threads);
    }
    let rt = rt.enable_all().build().map_err(CollectError::Runtime)?;
    let requested = rt.block_on(async {
        let sem = Arc::new(tokio::sync::Semaphore::new(cfg.concurrency));
        let ticker = {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let t0 = Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let s = &ctx.stats;
                    let toks = s.completion_tokens.load(Ordering::Relaxed) as f64;
                    ctx.pb.set_message(format!(
                        "{:.0} tok/s, {} retries, {} failures",
                        toks / t0.elapsed().as_secs_f64().max(1e-3),
                        s.retries.load(Ordering::Relaxed),
                        s.failures.load(Ordering::Relaxed)
                    ));
                }
            })
        };
        let mut requested = 0u64;
        while let Some(job) = job_rx.recv().await {
            let Ok(permit) = sem.clone().acquire_owned().await else { break };
            requested += job.ks.len() as u64;
            let ctx = ctx.clone();
            tokio::spawn(async move {
                process(ctx, job).await;
                drop(permit);
            });
        }
        let _ = sem.acquire_many(cfg.concurrency as u32).await;
        ticker.abort();
        requested
    });
    drop(rt);
    Ok(requested)
}

/// The later part wins: rewrites the older parts that held records this run replaced.
fn supersede(
    cfg: &CollectConfig,
    done: Arc<HashMap<u64, Done>>,
    part_no: u32,
    written: &WriterResult,
) -> Result<u64, CollectError> {
    if written.superseded.is_empty() {
        return Ok(0);
    }
    let mut done = Arc::try_unwrap(done).unwrap_or_else(|a| (*a).clone());
    let mut stale = BTreeSet::new();
    for key in &written.superseded {
        if let Some(d) = done.get_mut(key) {
            stale.insert(d.part);
            *d = Done { part: part_no, truncated: false };
        }
    }
    Ok(resume::compact(&cfg.out, &stale, &done)?)
}

/// The run's `summary.json`.
#[allow(clippy::too_many_arguments)]
fn summarise(
    cfg: &CollectConfig,
    part: Option<String>,
    counts: ReadCounts,
    requested: u64,
    written: &WriterResult,
    superseded: u64,
    stats: StatsSnapshot,
    mut warnings: Vec<String>,
    started: Instant,
) -> Summary {
    let wall = started.elapsed().as_secs_f64();
    warnings.truncate(20);
    let (tin, tout) = (stats.prompt_tokens, stats.completion_tokens);
    Summary {
        model: cfg.model.clone(),
        endpoints: cfg.endpoints.clone(),
        part,
        prompts_read: counts.read,
        prompts_rejected: counts.rejected,
        samples_wanted: counts.read * u64::from(cfg.n),
        samples_already_done: counts.already,
        samples_requested: requested,
        samples_written: written.written,
        samples_superseded: superseded,
        failures: stats.failures,
        failures_by_reason: stats.failures_by_reason,
        retries: stats.retries,
        retries_by_reason: stats.retries_by_reason,
        http_attempts: stats.attempts,
        prompt_tokens: tin,
        completion_tokens: tout,
        cost_usd: tin as f64 * cfg.price_in_per_m / 1e6 + tout as f64 * cfg.price_out_per_m / 1e6,
        latency_ms: Latency::of(stats.latencies),
        wall_s: wall,
        requests_per_s: written.written as f64 / wall.max(1e-9),
        completion_tokens_per_s: tout as f64 / wall.max(1e-9),
        warnings,
        proxies: BTreeMap::new(),
        failure_examples: stats.failure_examples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CollectConfig {
        toml::from_str(
            r#"prompts = "p.jsonl"
endpoints = ["http://127.0.0.1:9/v1"]
model = "m"
out = "o""#,
        )
        .expect("minimal config")
    }

    #[test]
    fn defaults_and_messages() {
        let c = cfg();
        assert_eq!(
            (c.n, c.temperature, c.top_p, c.seed, c.api_key_env.as_str()),
            (1, 0.6, 0.95, Some(0), "OPENAI_API_KEY")
        );
        let p: Prompt = serde_json::from_value(json!({"id": "a", "task": "math", "prompt": "1+1?"})).expect("prompt");
        let m = build_messages(&c, &p);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].content, format!("1+1?\n\n{DEFAULT_MATH_INSTRUCTION}"));
        let mut c2 = c.clone();
        c2.system = Some("be brief".into());
        assert_eq!(build_messages(&c2, &p)[0].role, "system");
    }

    #[test]
    fn request_hash_ignores_nothing_semantic() {
        let c = cfg();
        let m = vec![Message::new("user", "q")];
        let (b0, h0) = request_body(&c, &m, Some(0));
        let (_, h1) = request_body(&c, &m, Some(1));
        assert_ne!(h0, h1);
        assert!(!b0.contains_key("stream"));
        assert_eq!(h0.len(), 64);
    }

    #[test]
    fn endpoint_validation() {
        let cases = [
            ("ftp://127.0.0.1/v1", "http:// or https://"),
            ("not a url", "not a URL"),
            ("http://user:pw@127.0.0.1/v1", "credentials"),
            ("http://distill-no-such-host.invalid/v1", "cannot resolve"),
        ];
        for (u, want) in cases {
            let e = resolve_endpoint(u).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(want), "{u}: {e}");
        }
        let ok = resolve_endpoint("http://127.0.0.1:8000/v1/").expect("valid");
        assert_eq!((ok.label.as_str(), ok.url.path()), ("http://127.0.0.1:8000/v1", "/v1/chat/completions"));
    }

    #[test]
    fn token_split() {
        let cases: [(u64, &[usize], &[u64]); 4] =
            [(10, &[5], &[10]), (10, &[1, 1], &[5, 5]), (10, &[1, 2], &[3, 7]), (9, &[0, 0, 0], &[3, 3, 3])];
        for (total, lens, want) in cases {
            assert_eq!(split_tokens(total, lens), want, "{total} {lens:?}");
        }
    }

    #[test]
    fn percentiles() {
        let l = Latency::of((1..=100).collect());
        assert_eq!((l.p50, l.p90, l.p99, l.max), (50, 90, 99, 100));
        assert_eq!(Latency::of(vec![]).p50, 0);
    }
}
