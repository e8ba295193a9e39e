//! The command line: clap types only. Every flag is an `Option` with no default of its own:
//! defaults live in the stage config types (`Default`), and [`crate::config::resolve`] lays a
//! recipe's table, `--set key=value` and the flags actually given over them. clap types never
//! leave this module.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::collect::{self, CollectConfig};
use crate::config::{self, ConfigError, Flags, Layers, Resolved, Settings};
use crate::eval::score::{self, ScoreConfig};
use crate::eval::{self as evaluate, EvalConfig};
use crate::inspect::{self, InspectConfig};
use crate::model::Checkpointing;
use crate::model::gguf::{self, ConvertConfig};
use crate::problems::{self, ProblemsConfig};
use crate::teacher_sim::{self, Faults, SimConfig};
use crate::train::finetune::{self, FinetuneConfig};
use crate::verify::{self, VerifyConfig};

/// R1-style reasoning distillation: collect long chain-of-thought from a teacher, verify and
/// filter it, build a sharded SFT corpus, fine-tune small students.
#[derive(Debug, Parser)]
#[command(name = "distill", version, propagate_version = true)]
#[command(after_help = "Settings: each command's defaults < the command's table of --recipe FILE < --set KEY=VALUE < \
    the flags given. --show-config prints the result as a recipe table, with where each value came from.\n\n\
    Exit codes: 0 ok, 1 finished but rejected some input, 2 error.")]
pub struct Cli {
    /// Print the command's resolved configuration (TOML, a recipe table) and exit.
    #[arg(long, global = true)]
    show_config: bool,
    /// Read the command's settings from this recipe's table ([finetune], [collect], …); other
    /// tables are ignored. Flags given on the command line override its keys.
    #[arg(long, global = true, value_name = "FILE.toml")]
    recipe: Option<PathBuf>,
    /// Override one setting, as `--show-config` names it (`lr=1e-4`, `loader.batch=4`;
    /// repeatable). Above the recipe, below the typed flags.
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    sets: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Statistics and pretty-printed records of any record file or shard directory.
    #[command(after_help = LAYOUTS_HELP)]
    Inspect(InspectArgs),
    /// Judge each record's response (math: answer equivalence; code: tests run in a sandbox)
    /// and write it back with a verdict.
    #[command(after_help = LAYOUTS_HELP)]
    Verify(VerifyArgs),
    /// Generate math or code problems with exact answers / tests, as Prompt records.
    Problems(ProblemsArgs),
    /// Run a simulated R1-style teacher: an OpenAI-compatible server on loopback.
    TeacherSim(TeacherSimArgs),
    /// Collect teacher samples for prompts from OpenAI-compatible endpoints, resumably.
    Collect(Box<CollectArgs>),
    /// Mean per-token loss and perplexity of a corpus's assistant tokens under a model.
    #[command(after_help = LAYOUTS_HELP)]
    Score(ScoreArgs),
    /// Fine-tune a student (full or LoRA) on an SFT corpus: checkpoints, metrics.jsonl, loss.png, final/.
    #[command(after_help = LAYOUTS_HELP)]
    Finetune(Box<FinetuneArgs>),
    /// Convert a llama/qwen2 GGUF file into a Hugging Face model directory.
    Convert(ConvertArgs),
    /// Rejection sampling and chain-of-thought checks: samples in, kept SFT examples,
    /// rejects with reasons and a funnel out.
    #[command(after_help = LAYOUTS_HELP)]
    Filter(Box<FilterArgs>),
    /// Deduplicate SFT examples (exact, MinHash near-duplicate prompts), decontaminate against
    /// benchmarks, and write a sharded Parquet corpus with a manifest and a dataset card.
    Dedup(Box<DedupArgs>),
    /// Generate answers to problems with a model (or an endpoint) and score them: pass@1,
    /// pass@k, format, truncation and EOS rates, lengths, tokens/s.
    Eval(Box<EvalArgs>),
    /// Run a recipe's stages in order (problems, collect, filter, dedup, student, eval-before,
    /// finetune, eval-after, report), skipping those already done with the same settings and
    /// inputs; report.json and report.md under the recipe's out_dir.
    Run(RunArgs),
}

/// Arguments of `distill run`.
#[derive(Debug, Args)]
struct RunArgs {
    /// The recipe (TOML; see recipes/). `--set TABLE.KEY=VALUE` overrides one of its keys.
    recipe_file: PathBuf,
    /// Run only these stages (comma-separated), in pipeline order.
    #[arg(long, value_delimiter = ',')]
    stages: Vec<String>,
}

/// What the reading commands say in `--help` about the layouts they read.
const LAYOUTS_HELP: &str = crate::store::layouts::HELP;

/// `--map field=column` flags as the `map` table (`field = "column"`).
fn map_flag(f: &mut Flags, key: &'static str, values: Vec<String>) -> anyhow::Result<()> {
    let mut map = std::collections::BTreeMap::new();
    for v in values {
        match v.split_once('=') {
            Some((field, column)) if !field.trim().is_empty() && !column.trim().is_empty() => {
                map.insert(field.trim().to_string(), column.trim().to_string());
            }
            _ => anyhow::bail!(
                "--map {v:?}: expected FIELD=COLUMN, e.g. --map prompt=question (distill's field = the file's column)"
            ),
        }
    }
    if !map.is_empty() {
        f.opt(key, "--map", Some(map));
    }
    Ok(())
}

/// A command's flags as the settings keys they set.
trait StageArgs {
    type Config: Settings;
    fn flags(self) -> anyhow::Result<Flags>;
}

/// Arguments of `distill score`.
#[derive(Debug, Args)]
struct ScoreArgs {
    /// Model directory (Hugging Face layout) or a .gguf file.
    #[arg(long)]
    model: Option<PathBuf>,
    /// SFT examples (records with `messages`): a file, a directory of them, or - for stdin.
    path: Option<PathBuf>,
    /// Print {"loss", "tokens", "perplexity", ...} as JSON.
    #[arg(long)]
    json: bool,
    /// Compute in float32 (default) or bfloat16.
    #[arg(long)]
    dtype: Option<String>,
    /// Score at most N records (default 0: all).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Where records that cannot be scored go, with file, line and reason (default distill-rejects.jsonl).
    #[arg(long, value_name = "FILE")]
    rejects: Option<PathBuf>,
    /// Read the file's COLUMN as distill's FIELD (repeatable), for layouts not recognised
    /// by themselves: `--map prompt=question_text --map answer=gold`.
    #[arg(long = "map", value_name = "FIELD=COLUMN")]
    map: Vec<String>,
}

impl StageArgs for ScoreArgs {
    type Config = ScoreConfig;
    fn flags(self) -> anyhow::Result<Flags> {
        let mut f = Flags::default();
        f.opt("model", "--model", self.model);
        f.opt("path", "PATH", self.path);
        f.switch("json", "--json", self.json, true);
        f.opt("dtype", "--dtype", self.dtype);
        f.opt("limit", "--limit", self.limit);
        f.opt("rejects", "--rejects", self.rejects);
        map_flag(&mut f, "map", self.map)?;
        Ok(f)
    }
}

/// Arguments of `distill eval`.
#[derive(Debug, Args)]
struct EvalArgs {
    /// A model directory (HF layout, e.g. finetune's DIR/final) or a .gguf file; with
    /// --endpoint, the served model's name.
    #[arg(long)]
    model: Option<String>,
    /// Evaluate an OpenAI-compatible server instead (requests go to URL/chat/completions).
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// Prompt records (math, code, open): a file, a directory of them, or - for stdin.
    #[arg(long, value_name = "FILE")]
    problems: Option<PathBuf>,
    /// Write the JSON summary here.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Write the generations as Sample records with verdicts (.jsonl, .jsonl.zst, .parquet).
    #[arg(long, value_name = "FILE")]
    samples: Option<PathBuf>,
    /// Samples per problem (default 4).
    #[arg(short = 'n')]
    n: Option<u32>,
    /// Sampling temperature (default 0.6; 0: greedy).
    #[arg(long)]
    temperature: Option<f64>,
    /// Nucleus sampling (default 0.95).
    #[arg(long)]
    top_p: Option<f64>,
    /// Top-k sampling (default 0: off).
    #[arg(long)]
    top_k: Option<usize>,
    /// Longest answer in tokens (default 4096).
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Sequences generated at once with a local model (default 16).
    #[arg(long)]
    batch: Option<usize>,
    /// Seed of the samples (default 0): sample k of a problem always gets the same seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop sequence (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Start every answer with `<think>\n` (DeepSeek's recommendation for R1-style models).
    #[arg(long)]
    think_prefill: bool,
    /// System message (as given to collect).
    #[arg(long)]
    system: Option<String>,
    /// Appended to math prompts after a blank line, as collect does ("" for none).
    #[arg(long)]
    math_instruction: Option<String>,
    /// Appended to code prompts after a blank line.
    #[arg(long)]
    code_instruction: Option<String>,
    /// Local model weights in float32 (default) or bfloat16.
    #[arg(long)]
    dtype: Option<String>,
    /// Evaluate at most N problems (default 0: all).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Endpoint: requests in flight at most (default 32).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Endpoint: environment variable holding the API key (default OPENAI_API_KEY).
    #[arg(long)]
    api_key_env: Option<String>,
    /// Endpoint: also trust this CA (PEM; a self-hosted server's private CA or a TLS-inspecting
    /// proxy's). SSL_CERT_FILE is read too; proxies come from HTTPS_PROXY/HTTP_PROXY/NO_PROXY.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Endpoint: per-attempt timeout in seconds (default 600).
    #[arg(long)]
    timeout_s: Option<f64>,
    /// Endpoint: retries of a failed request (default 8).
    #[arg(long)]
    max_retries: Option<u32>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Where unreadable problems go, with file, line and reason (default distill-rejects.jsonl).
    #[arg(long, value_name = "FILE")]
    rejects: Option<PathBuf>,
}

impl StageArgs for EvalArgs {
    type Config = EvalConfig;
    fn flags(self) -> anyhow::Result<Flags> {
        let mut f = Flags::default();
        f.opt("model", "--model", self.model);
        f.opt("endpoint", "--endpoint", self.endpoint);
        f.opt("problems", "--problems", self.problems);
        f.opt("out", "--out", self.out);
        f.opt("samples", "--samples", self.samples);
        f.opt("n", "-n", self.n);
        f.opt("temperature", "--temperature", self.temperature);
        f.opt("top_p", "--top-p", self.top_p);
        f.opt("top_k", "--top-k", self.top_k);
        f.opt("max_new_tokens", "--max-new-tokens", self.max_new_tokens);
        f.opt("batch", "--batch", self.batch);
        f.opt("seed", "--seed", self.seed);
        f.list("stop", "--stop", self.stop);
        f.switch("think_prefill", "--think-prefill", self.think_prefill, true);
        f.opt("system", "--system", self.system);
        f.opt("math_instruction", "--math-instruction", self.math_instruction);
        f.opt("code_instruction", "--code-instruction", self.code_instruction);
        f.opt("dtype", "--dtype", self.dtype);
        f.opt("limit", "--limit", self.limit);
        f.opt("concurrency", "--concurrency", self.concurrency);
        f.opt("api_key_env", "--api-key-env", self.api_key_env);
        f.opt("ca_cert", "--ca-cert", self.ca_cert);
        f.opt("timeout_s", "--timeout-s", self.timeout_s);
        f.opt("max_retries", "--max-retries", self.max_retries);
        f.switch("progress", "--no-progress", self.no_progress, false);
        f.opt("rejects", "--rejects", self.rejects);
        Ok(f)
    }
}

/// Arguments of `distill convert`.
#[derive(Debug, Args)]
struct ConvertArgs {
    /// A llama- or qwen2-architecture .gguf file.
    gguf: Option<PathBuf>,
    /// Output model directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Weights dtype written: float32 (default), bfloat16 or float16.
    #[arg(long)]
    dtype: Option<String>,
}

impl StageArgs for ConvertArgs {
    type Config = ConvertConfig;
    fn flags(self) -> anyhow::Result<Flags> {
        let mut f = Flags::default();
        f.opt("gguf", "GGUF", self.gguf);
        f.opt("out", "--out", self.out);
        f.opt("dtype", "--dtype", self.dtype);
        Ok(f)
    }
}

/// Arguments of `distill problems`.
#[derive(Debug, Args)]
struct ProblemsArgs {
    /// Which problem set: math or code.
    #[arg(long, value_parser = ["math", "code"])]
    kind: Option<String>,
    /// How many problems.
    #[arg(long)]
    count: Option<u64>,
    /// Seed (default 0): the same seed gives the same problems.
    #[arg(long)]
    seed: Option<u64>,
    /// Output file: .jsonl, .jsonl.zst or .parquet.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl StageArgs for ProblemsArgs {
    type Config = ProblemsConfig;
    fn flags(self) -> anyhow::Result<Flags> {
        let mut f = Flags::default();
        f.opt("kind", "--kind", self.kind);
        f.opt("count", "--count", self.count);
        f.opt("seed", "--seed", self.seed);
        f.opt("out", "--out", self.out);
        Ok(f)
    }
}

/// Arguments of `distill teacher-sim`.
#[derive(Debug, Args)]
struct TeacherSimArgs {
    /// Address to listen on (default 127.0.0.1).
    #[arg(long)]
    host: Option<String>,
    /// Port to listen on; 0 (the default) picks a free one (the address is printed on stdout's first line).
    #[arg(long)]
    port: Option<u16>,
    #[arg(long)]
    seed: Option<u64>,
    /// Fault probabilities: wrong, langmix, repeat, truncate, no_close, http429, http500, drop,
    /// slow, nonjson (e.g. wrong=0.3,http429=0.1,drop=0.05).
    #[arg(long)]
    faults: Option<String>,
    /// Where the reasoning goes: inline <think> in content (default), or reasoning_content.
    #[arg(long, value_parser = ["inline", "reasoning_content"])]
    shape: Option<String>,
    /// Delay every response by this many milliseconds.
    #[arg(long)]
    latency_ms: Option<u64>,
    /// Delay of the `slow` fault, in milliseconds (default 3000).
    #[arg(long)]
    slow_ms: Option<u64>,
    /// Retry-After seconds sent with 429 answers (default 1).
    #[arg(long)]
    retry_after: Option<u64>,
    /// Worker threads (0: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Reasoning length in words (R1-style moves from a phrase bank; up to ~4000).
    #[arg(long)]
    words: Option<usize>,
    /// Append, per generated choice, the content faults injected (JSON lines).
    #[arg(long)]
    faults_log: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-key.
    #[arg(long, value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PEM")]
    tls_key: Option<PathBuf>,
}

impl StageArgs for TeacherSimArgs {
    type Config = SimConfig;
    fn flags(self) -> anyhow::Result<Flags> {
        let mut f = Flags::default();
        f.opt("host", "--host", self.host);
        f.opt("port", "--port", self.port);
        f.opt("seed", "--seed", self.seed);
        f.opt("faults", "--faults", self.faults.as_deref().map(Faults::parse).transpose()?);
        f.opt("shape", "--shape", self.shape);
        f.opt("latency_ms", "--latency-ms", self.latency_ms);
        f.opt("slow_ms", "--slow-ms", self.slow_ms);
        f.opt("retry_after_s", "--retry-after", self.retry_after);
        f.opt("threads", "--threads", self.threads);
        f.opt("words", "--words", self.words);
        f.opt("faults_log", "--faults-log", self.faults_log);
        f.opt("tls_cert", "--tls-cert", self.tls_cert);
        f.opt("tls_key", "--tls-key", self.tls_key);
        Ok(f)
    }
}

/// Arguments of `distill collect`.
#[derive(Debug, Args)]
struct CollectArgs {
    /// Prompt records: a file, a directory of them, or - for stdin.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Teacher base URL (requests go to URL/chat/completions); repeat or comma-separate for several.
    #[arg(long, value_delimiter = ',')]
    endpoint: Vec<String>,
    /// The teacher's model name.
    #[arg(long)]
    model: Option<String>,
    /// Output directory (resumable: a re-run requests only what is missing).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Samples per prompt (default 1).
    #[arg(short = 'n', long = "samples")]
    n: Option<u32>,
    /// Ask for a prompt's samples in one request with `n` (for servers that support it).
    #[arg(long)]
    server_n: bool,
    /// Requests in flight at most (default 64).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Environment variable holding the API key (default OPENAI_API_KEY).
    #[arg(long)]
    api_key_env: Option<String>,
    /// Also trust this CA (PEM; a self-hosted server's private CA or a TLS-inspecting proxy's),
    /// besides the bundled and the system's roots. SSL_CERT_FILE is read too; proxies come from
    /// HTTPS_PROXY/HTTP_PROXY/ALL_PROXY, except hosts in NO_PROXY.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Stream answers (SSE).
    #[arg(long)]
    stream: bool,
    /// Sampling temperature (default 0.6, DeepSeek's recommendation for R1).
    #[arg(long)]
    temperature: Option<f64>,
    /// Nucleus sampling (default 0.95).
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long)]
    max_tokens: Option<u64>,
    /// Sample k is requested with seed SEED+k (default 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Send no seed.
    #[arg(long)]
    no_seed: bool,
    /// Stop sequence (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// System message.
    #[arg(long)]
    system: Option<String>,
    /// Appended to math prompts after a blank line ("" for none; default: reason step by step, \boxed{}).
    #[arg(long)]
    math_instruction: Option<String>,
    /// Appended to code prompts after a blank line.
    #[arg(long)]
    code_instruction: Option<String>,
    /// Extra request body fields, as a JSON object.
    #[arg(long, value_name = "JSON")]
    extra_body: Option<String>,
    /// Requests per minute (0, the default: unlimited).
    #[arg(long)]
    rpm: Option<u64>,
    /// Tokens per minute (0, the default: unlimited).
    #[arg(long)]
    tpm: Option<u64>,
    /// Retries of a failed request (default 8).
    #[arg(long)]
    max_retries: Option<u32>,
    /// Per-attempt timeout in seconds (streams: longest gap between events; default 600).
    #[arg(long)]
    timeout_s: Option<f64>,
    /// First retry's backoff in milliseconds (doubles each retry, with jitter; default 1000).
    #[arg(long)]
    backoff_base_ms: Option<u64>,
    /// Longest backoff in milliseconds (default 60000).
    #[arg(long)]
    backoff_max_ms: Option<u64>,
    /// Request existing samples again: `truncated` (finish_reason=length); the new record replaces the old.
    #[arg(long, value_parser = ["truncated"])]
    regenerate: Option<String>,
    /// USD per million prompt tokens (for the cost in summary.json).
    #[arg(long)]
    price_in: Option<f64>,
    /// USD per million completion tokens.
    #[arg(long)]
    price_out: Option<f64>,
    /// Async runtime worker threads (0: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

impl StageArgs for CollectArgs {
    type Config = CollectConfig;
    fn flags(self) -> anyhow::Result<Flags> {
        let extra_body = match &self.extra_body {
            None => None,
            Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(m)) => Some(m),
                _ => anyhow::bail!("--extra-body must be a JSON object, e.g. '{{\"top_k\": 20}}'"),
            },
        };
        let mut f = Flags::default();
        f.opt("prompts", "--prompts", self.prompts);
        f.list("endpoints", "--endpoint", self.endpoint);
        f.opt("model", "--model", self.model);
        f.opt("out", "--out", self.out);
        f.opt("n", "-n", self.n);
        f.switch("server_n", "--server-n", self.server_n, true);
        f.opt("concurrency", "--concurrency", self.concurrency);
        f.opt("api_key_env", "--api-key-env", self.api_key_env);
        f.opt("ca_cert", "--ca-cert", self.ca_cert);
        f.switch("stream", "--stream", self.stream, true);
        f.opt("temperature", "--temperature", self.temperature);
        f.opt("top_p", "--top-p", self.top_p);
        f.opt("max_tokens", "--max-tokens", self.max_tokens);
        f.opt("seed", "--seed", self.seed);
        f.list("stop", "--stop", self.stop);
        f.opt("system", "--system", self.system);
        f.opt("math_instruction", "--math-instruction", self.math_instruction);
        f.opt("code_instruction", "--code-instruction", self.code_instruction);
        f.opt("extra_body", "--extra-body", extra_body);
        f.opt("rpm", "--rpm", self.rpm);
        f.opt("tpm", "--tpm", self.tpm);
        f.opt("max_retries", "--max-retries", self.max_retries);
        f.opt("timeout_s", "--timeout-s", self.timeout_s);
        f.opt("backoff_base_ms", "--backoff-base-ms", self.backoff_base_ms);
        f.opt("backoff_max_ms", "--backoff-max-ms", self.backoff_max_ms);
        f.opt("regenerate", "--regenerate", self.regenerate);
        f.opt("price_in_per_m", "--price-in", self.price_in);
        f.opt("price_out_per_m", "--price-out", self.price_out);
        f.opt("threads", "--threads", self.threads);
        f.switch("progress", "--no-progress", self.no_progress, false);
        Ok(f)
    }
}

/// Arguments of `distill verify`.
#[derive(Debug, Args)]
struct VerifyArgs {
    /// A .jsonl, .jsonl.zst or .parquet file, a directory of them, or - for stdin (the default).
    path: Option<PathBuf>,
    /// Write the records with their verdicts here (.jsonl, .jsonl.zst, .parquet) instead of
    /// stdout (JSONL).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Print pass/fail/undecided counts at the end (to stderr when records go to stdout).
    #[arg(long)]
    summary: bool,
    /// Records judged per parallel chunk (default 4096).
    #[arg(long, value_name = "N")]
    chunk: Option<usize>,
    /// Code: programs run at once (default: number of cores).
    #[arg(long, value_name = "N")]
    code_workers: Option<usize>,
    /// Code: wall-clock seconds per run when a record's tests set no timeout_s (default 5).
    #[arg(long, value_name = "SECONDS")]
    code_timeout: Option<f64>,
    /// Code: sandbox isolation (auto = strongest available, with a warning when weak).
    #[arg(long, value_name = "LEVEL", value_parser = ["auto", "namespaces", "uid", "rlimits"])]
    code_isolation: Option<String>,
    /// Code: run every test instead of stopping at the first failure.
    #[arg(long)]
    all_tests: bool,
    /// Where unreadable records go, with file, line and reason (default: OUT.rejects.jsonl
    /// beside --out, else distill-rejects.jsonl).
    #[arg(long, value_name = "FILE")]
    rejects: Option<PathBuf>,
    /// Read the file's COLUMN as distill's FIELD (repeatable), for layouts not recognised
    /// by themselves: `--map prompt=question_text --map answer=gold`.
    #[arg(long = "map", value_name = "FIELD=COLUMN")]
    map: Vec<String>,
}

impl StageArgs for VerifyArgs {
    type Config = VerifyConfig;
    fn flags(self) -> anyhow::Result<Flags> {
        let mut f = Flags::default();
        f.opt("input", "PATH", self.path);
        f.opt("out", "--out", self.out);
        f.switch("summary", "--summary", self.summary, true);
        f.opt("chunk", "--chunk", self.chunk);
        f.opt("code.workers", "--code-workers", self.code_workers);
        f.opt("code.timeout_s", "--code-timeout", self.code_timeout);
        f.opt("code.isolation", "--code-isolation", self.code_isolation);
        f.switch("code.early_exit", "--all-tests", self.all_tests, false);
        f.opt("rejects", "--rejects", self.rejects);
        map_flag(&mut f, "map", self.map)?;
        Ok(f)
    }
}

/// Arguments of `distill inspect`.
#[derive(Debug, Args)]
struct InspectArgs {
    /// A .jsonl, .jsonl.zst or .parquet file, a directory of them, or - for stdin.
    path: Option<PathBuf>,
    /// Print statistics as JSON (top-level "records" count).
    #[arg(long)]
    json: bool,
    /// Pretty-print N records chosen at random (deterministic with --seed).
    #[arg(long, value_name = "N")]
    sample: Option<usize>,
    /// Pretty-print the record with this id.
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// Also report lengths in tokens of this Hugging Face tokenizer.json.
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
    /// Continue past invalid records; write them with the reason to --rejects (exit code 1).
    #[arg(long)]
    skip_invalid: bool,
    /// Where --skip-invalid writes rejected records (default distill-rejects.jsonl).
    #[arg(long, value_name = "FILE")]
    rejects: Option<PathBuf>,
    /// Print whole texts when pretty-printing (long ones are elided by default).
    #[arg(long)]
    full: bool,
    /// Seed for --sample (default 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Read the file's COLUMN as distill's FIELD (repeatable), for layouts not recognised
    /// by themselves: `--map prompt=question_text --map answer=gold`.
    #[arg(long = "map", value_name = "FIELD=COLUMN")]
    map: Vec<String>,
}

impl StageArgs for InspectArgs {
    type Config = InspectConfig;
    fn flags(self) -> anyhow::Result<Flags> {
        let mut f = Flags::default();
        f.opt("path", "PATH", self.path);
        f.switch("json", "--json", self.json, true);
        f.opt("sample", "--sample", self.sample);
        f.opt("id", "--id", self.id);
        f.opt("tokenizer", "--tokenizer", self.tokenizer);
        f.switch("skip_invalid", "--skip-invalid", self.skip_invalid, true);
        f.opt("rejects", "--rejects", self.rejects);
        f.switch("full", "--full", self.full, true);
        f.opt("seed", "--seed", self.seed);
        map_flag(&mut f, "map", self.map)?;
        Ok(f)
    }
}

/// Arguments of `distill finetune`.
#[derive(Debug, Args)]
struct FinetuneArgs {
    /// The student: a Hugging Face model directory (tokenizer and chat template included).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The corpus: SFT examples (a file, or a directory of train-*/validation-* shards).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output directory: checkpoint-N/, metrics.jsonl, loss.png, final/ (and adapter/ with LoRA).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Validation records, when not the corpus's validation-* files.
    #[arg(long, value_name = "PATH")]
    eval_data: Option<PathBuf>,
    /// Train LoRA adapters of this rank instead of all weights.
    #[arg(long, value_name = "R")]
    lora_rank: Option<usize>,
    /// LoRA alpha (default: 2 × rank).
    #[arg(long)]
    lora_alpha: Option<f64>,
    /// LoRA dropout (default 0.05).
    #[arg(long)]
    lora_dropout: Option<f32>,
    /// Projections given adapters (comma-separated; default all seven).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    lora_targets: Vec<String>,
    /// Run exactly N optimizer steps (the schedule spans them; wins over --epochs).
    #[arg(long, value_name = "N")]
    max_steps: Option<u64>,
    /// Passes over the corpus (default 3).
    #[arg(long)]
    epochs: Option<u64>,
    /// Peak learning rate (default 4e-5, or 2e-4 with LoRA).
    #[arg(long)]
    lr: Option<f64>,
    /// Decay after warmup: cosine (default), linear or constant.
    #[arg(long, value_parser = ["cosine", "linear", "constant"])]
    schedule: Option<String>,
    /// Warmup as a share of all steps (default 0.03).
    #[arg(long)]
    warmup_ratio: Option<f64>,
    /// Where the decay ends, as a share of the peak learning rate (default 0.1).
    #[arg(long)]
    min_lr_ratio: Option<f64>,
    /// Global gradient-norm clipping (0: off; default 1.0).
    #[arg(long)]
    max_grad_norm: Option<f64>,
    /// AdamW weight decay (default 0).
    #[arg(long)]
    weight_decay: Option<f64>,
    /// AdamW beta1 (default 0.9).
    #[arg(long)]
    beta1: Option<f64>,
    /// AdamW beta2 (default 0.999).
    #[arg(long)]
    beta2: Option<f64>,
    /// AdamW epsilon (default 1e-8).
    #[arg(long)]
    eps: Option<f64>,
    /// Longest sample in tokens (default 2048); longer ones are dropped (or cut with --truncate), and counted.
    #[arg(long)]
    max_seq_len: Option<usize>,
    /// Cut over-long samples to --max-seq-len instead of dropping them.
    #[arg(long)]
    truncate: bool,
    /// One sample per sequence instead of packing several (attention stays inside each either way).
    #[arg(long)]
    no_packing: bool,
    /// Tokens per optimizer step (gradient accumulation over sequences; default 4096).
    #[arg(long)]
    tokens_per_step: Option<usize>,
    /// At most this many samples per optimizer step (0, the default: no limit).
    #[arg(long)]
    samples_per_step: Option<usize>,
    /// Records held for shuffling (default 4096).
    #[arg(long)]
    shuffle_buffer: Option<usize>,
    /// Sequences per forward pass; above 1 a step's sequences are grouped by length and
    /// right-padded to the longest (length-grouped padding, mostly with --no-packing).
    #[arg(long)]
    batch: Option<usize>,
    /// Seed of shuffling, LoRA initialisation and dropout (default 42).
    #[arg(long)]
    seed: Option<u64>,
    /// Validation loss every N steps (and at the end; 0: only at the end; default 50).
    #[arg(long)]
    eval_every: Option<u64>,
    /// At most N validation samples (0, the default: all).
    #[arg(long)]
    eval_max_samples: Option<usize>,
    /// A checkpoint every N steps (and at the end; 0: only at the end; default 100).
    #[arg(long)]
    save_every: Option<u64>,
    /// Checkpoints kept (newest; 0: all; default 2).
    #[arg(long)]
    keep_last: Option<usize>,
    /// Continue from the newest checkpoint in --out.
    #[arg(long)]
    resume: bool,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Where to train: cpu (default), or cuda / cuda:N (a build with `--features cuda`).
    #[arg(long, value_name = "DEVICE")]
    device: Option<String>,
    /// Per-layer activation checkpointing: N layers (or all, the flag alone) keep only their
    /// input and are recomputed in backward — much less memory for long traces, more compute.
    #[arg(long, value_name = "N|all", num_args = 0..=1, default_missing_value = "all")]
    checkpoint_layers: Option<Checkpointing>,
    /// f32 (default), or bf16: mixed precision, the projections' matmuls in bf16 with f32
    /// master weights and optimiser state (GPUs, and CPUs with AMX or AVX512-BF16, which run
    /// them; on other CPUs bf16 products are widened to f32, so it is slower there).
    #[arg(long, value_parser = ["f32", "bf16"])]
    precision: Option<String>,
    /// Read the file's COLUMN as distill's FIELD (repeatable), for layouts not recognised
    /// by themselves: `--map prompt=question_text --map answer=gold`.
    #[arg(long = "map", value_name = "FIELD=COLUMN")]
    map: Vec<String>,
}

impl StageArgs for FinetuneArgs {
    type Config = FinetuneConfig;
    fn flags(self) -> anyhow::Result<Flags> {
        let mut f = Flags::default();
        f.opt("model", "--model", self.model);
        f.opt("data", "--data", self.data);
        f.opt("out", "--out", self.out);
        f.opt("eval_data", "--eval-data", self.eval_data);
        f.opt("lora.rank", "--lora-rank", self.lora_rank);
        f.opt("lora.alpha", "--lora-alpha", self.lora_alpha);
        f.opt("lora.dropout", "--lora-dropout", self.lora_dropout);
        f.list("lora.targets", "--lora-targets", self.lora_targets);
        f.opt("max_steps", "--max-steps", self.max_steps);
        f.opt("epochs", "--epochs", self.epochs);
        f.opt("lr", "--lr", self.lr);
        f.opt("schedule", "--schedule", self.schedule);
        f.opt("warmup_ratio", "--warmup-ratio", self.warmup_ratio);
        f.opt("min_lr_ratio", "--min-lr-ratio", self.min_lr_ratio);
        f.opt("max_grad_norm", "--max-grad-norm", self.max_grad_norm);
        f.opt("optim.weight_decay", "--weight-decay", self.weight_decay);
        f.opt("optim.beta1", "--beta1", self.beta1);
        f.opt("optim.beta2", "--beta2", self.beta2);
        f.opt("optim.eps", "--eps", self.eps);
        f.opt("loader.max_seq_len", "--max-seq-len", self.max_seq_len);
        f.opt("loader.overlong", "--truncate", self.truncate.then_some("truncate"));
        f.switch("loader.packing", "--no-packing", self.no_packing, false);
        f.opt("loader.tokens_per_step", "--tokens-per-step", self.tokens_per_step);
        f.opt("loader.samples_per_step", "--samples-per-step", self.samples_per_step);
        f.opt("loader.shuffle_buffer", "--shuffle-buffer", self.shuffle_buffer);
        f.opt("loader.batch", "--batch", self.batch);
        f.opt("loader.seed", "--seed", self.seed);
        f.opt("eval_every", "--eval-every", self.eval_every);
        f.opt("eval_max_samples", "--eval-max-samples", self.eval_max_samples);
        f.opt("save_every", "--save-every", self.save_every);
        f.opt("keep_last", "--keep-last", self.keep_last);
        f.switch("resume", "--resume", self.resume, true);
        f.switch("progress", "--no-progress", self.no_progress, false);
        f.opt("device", "--device", self.device);
        f.opt("checkpoint_layers", "--checkpoint-layers", self.checkpoint_layers);
        f.opt("precision", "--precision", self.precision);
        map_flag(&mut f, "loader.map", self.map)?;
        Ok(f)
    }
}

/// How a command that ran to its end went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Finished, but rejected some input.
    Rejected,
}

/// Parses the command line, runs the command and maps the result to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Rejected) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The command's settings from its layers; errors about a missing setting name its flag too.
fn resolve<A: StageArgs>(args: A, recipe: &Option<PathBuf>, sets: &[String]) -> anyhow::Result<Resolved<A::Config>> {
    resolve_then(args, recipe, sets, |_| Ok(()))
}

/// [`resolve`], running `first` on the settings before they are checked.
fn resolve_then<A: StageArgs>(
    args: A,
    recipe: &Option<PathBuf>,
    sets: &[String],
    first: impl FnOnce(&Resolved<A::Config>) -> anyhow::Result<()>,
) -> anyhow::Result<Resolved<A::Config>> {
    let layers = Layers { recipe: recipe.clone(), sets: sets.to_vec(), flags: args.flags()?.0 };
    let r = config::resolve_unchecked::<A::Config>(&layers)?;
    first(&r)?;
    let invalid = r.value.validate().map_err(|msg| ConfigError::Invalid { table: A::Config::TABLE.into(), msg });
    invalid.map(|()| r).map_err(|e| match e {
        ConfigError::Invalid { table, msg } => {
            let key = msg.split('`').nth(1).unwrap_or("");
            let flag = flag_spelling(key);
            let recipe = match recipe {
                Some(p) => format!(" in the [{table}] table of {}", p.display()),
                None => format!(" in a recipe's [{table}] table (--recipe FILE)"),
            };
            anyhow::anyhow!("{msg} — give {flag} or `{key} = ...`{recipe}")
        }
        e => e.into(),
    })
}

/// The flag that sets a settings key (`loader.max_seq_len` → `--max-seq-len`).
fn flag_spelling(key: &str) -> String {
    match key {
        "path" | "input" => "PATH".into(),
        "gguf" => "GGUF".into(),
        "endpoints" => "--endpoint".into(),
        "n" => "-n".into(),
        k => format!("--{}", k.rsplit('.').next().unwrap_or(k).replace('_', "-")),
    }
}

fn show<T: Settings>(r: &Resolved<T>) -> anyhow::Result<Outcome> {
    emit(&r.show()?)?;
    Ok(Outcome::Ok)
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let (recipe, sets) = (&cli.recipe, &cli.sets[..]);
    match cli.command {
        Command::Inspect(args) => {
            let r = resolve(args, recipe, sets)?;
            if cli.show_config {
                return show(&r);
            }
            run_inspect(&r.value)
        }
        Command::Verify(args) => {
            let r = resolve(args, recipe, sets)?;
            if cli.show_config {
                return show(&r);
            }
            run_verify(&r.value)
        }
        Command::Problems(args) => {
            let r = resolve(args, recipe, sets)?;
            if cli.show_config {
                return show(&r);
            }
            let cfg = r.value;
            let n = problems::generate(&cfg).with_context(|| format!("problems --out {}", cfg.out.display()))?;
            eprintln!(
                "problems: wrote {n} {:?} problems to {}",
                cfg.kind.unwrap_or(problems::ProblemKind::Math),
                cfg.out.display()
            );
            Ok(Outcome::Ok)
        }
        Command::TeacherSim(args) => {
            let r = resolve(args, recipe, sets)?;
            if cli.show_config {
                return show(&r);
            }
            teacher_sim::serve(r.value)?;
            Ok(Outcome::Ok)
        }
        Command::Collect(args) => {
            let no_seed = args.no_seed;
            let mut r = resolve(*args, recipe, sets)?;
            if no_seed {
                r.value.seed = None;
            }
            if cli.show_config {
                return show(&r);
            }
            let cfg = r.value;
            let report = collect::run(cfg.clone()).with_context(|| format!("collect --out {}", cfg.out.display()))?;
            eprint!("{}", report.summary.to_text());
            Ok(if report.had_failures() { Outcome::Rejected } else { Outcome::Ok })
        }
        Command::Finetune(args) => {
            let lora_flag = [
                ("--lora-alpha", args.lora_alpha.is_some()),
                ("--lora-dropout", args.lora_dropout.is_some()),
                ("--lora-targets", !args.lora_targets.is_empty()),
            ]
            .into_iter()
            .find_map(|(f, given)| given.then_some(f));
            let rank_flag = args.lora_rank.is_some();
            let r = resolve_then(*args, recipe, sets, |r| {
                if let Some(flag) = lora_flag
                    && !rank_flag
                    && !r.origins.set_by_file_or_set("lora")
                {
                    let where_ = recipe.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default();
                    anyhow::bail!("{flag} needs LoRA: give --lora-rank or a [finetune.lora] table{where_}");
                }
                Ok(())
            })?;
            if cli.show_config {
                return show(&r);
            }
            let cfg = r.value;
            let report = finetune::run(&cfg).with_context(|| format!("finetune --out {}", cfg.train.out.display()))?;
            eprintln!("{}", report.summary());
            Ok(if report.rejected > 0 { Outcome::Rejected } else { Outcome::Ok })
        }
        Command::Score(args) => {
            let r = resolve(args, recipe, sets)?;
            if cli.show_config {
                return show(&r);
            }
            let cfg = r.value;
            let report = score::run(&cfg).with_context(|| format!("score --model {}", cfg.model.display()))?;
            if cfg.json {
                emit(&format!("{}\n", report.to_json()))?;
            } else {
                emit(&report.to_text())?;
            }
            Ok(if report.rejected > 0 { Outcome::Rejected } else { Outcome::Ok })
        }
        Command::Filter(args) => {
            let r = resolve(*args, recipe, sets)?;
            if cli.show_config {
                return show(&r);
            }
            run_filter(&r.value)
        }
        Command::Dedup(args) => {
            let r = resolve(*args, recipe, sets)?;
            if cli.show_config {
                return show(&r);
            }
            let cfg = r.value;
            let report = crate::dedup::run(&cfg).with_context(|| format!("dedup --input {}", cfg.input.display()))?;
            eprint!("{}", report.to_text());
            Ok(if report.funnel.invalid > 0 { Outcome::Rejected } else { Outcome::Ok })
        }
        Command::Eval(args) => {
            let r = resolve(*args, recipe, sets)?;
            if cli.show_config {
                return show(&r);
            }
            let cfg = r.value;
            let report = evaluate::run(&cfg).with_context(|| format!("eval --problems {}", cfg.problems.display()))?;
            emit(&report.summary.to_text())?;
            if let Some(out) = &cfg.out {
                eprintln!("eval: summary written to {}", out.display());
            }
            Ok(if report.rejected > 0 { Outcome::Rejected } else { Outcome::Ok })
        }
        Command::Run(args) => {
            if recipe.is_some() {
                anyhow::bail!("distill run takes the recipe as its argument: distill run RECIPE (drop --recipe)");
            }
            if cli.show_config {
                emit(&crate::run::show_config(&args.recipe_file, sets)?)?;
                return Ok(Outcome::Ok);
            }
            crate::run::run(&args.recipe_file, &args.stages, sets)
                .with_context(|| format!("run {}", args.recipe_file.display()))?;
            Ok(Outcome::Ok)
        }
        Command::Convert(args) => {
            let r = resolve(args, recipe, sets)?;
            if cli.show_config {
                return show(&r);
            }
            let cfg = r.value;
            let dtype = crate::model::weights::parse_dtype(&cfg.dtype)
                .with_context(|| format!("--dtype {}: use float32, bfloat16 or float16", cfg.dtype))?;
            let r = gguf::convert(&cfg.gguf, &cfg.out, dtype)
                .with_context(|| format!("convert {} --out {}", cfg.gguf.display(), cfg.out.display()))?;
            eprintln!(
                "convert: {} model, {} layers, {} parameters, vocab {} -> {}",
                r.arch,
                r.layers,
                r.params,
                r.vocab,
                cfg.out.display()
            );
            Ok(Outcome::Ok)
        }
    }
}

/// Writes to stdout; a closed pipe (`distill inspect … | head`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn run_verify(cfg: &VerifyConfig) -> anyhow::Result<Outcome> {
    let summary = verify::run(cfg, &verify::Verifiers::with_code(cfg.code.clone()))
        .with_context(|| format!("verify {}", cfg.input.display()))?;
    if cfg.summary {
        if cfg.out.is_some() {
            print!("{}", summary.to_text());
        } else {
            eprint!("{}", summary.to_text());
        }
    }
    Ok(if summary.invalid > 0 { Outcome::Rejected } else { Outcome::Ok })
}

fn run_inspect(cfg: &InspectConfig) -> anyhow::Result<Outcome> {
    let report = inspect::inspect(cfg).with_context(|| format!("inspect {}", cfg.path.display()))?;
    if cfg.json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&report.to_json())?))?;
    } else {
        let max = if cfg.full { 0 } else { 1200 };
        for rec in &report.shown {
            emit(&format!("{}\n", inspect::view::render(rec, max)))?;
        }
        if cfg.id.is_none() {
            emit(&report.to_text(&cfg.path))?;
        }
    }
    Ok(if report.invalid > 0 { Outcome::Rejected } else { Outcome::Ok })
}

/// Arguments of `distill filter`.
#[derive(Debug, Args)]
struct FilterArgs {
    /// Sample records: a collect directory, a file, shards, or - for stdin.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Output directory: kept/, rejects/, funnel.json, manifest.json.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Checks not to run (comma-separated): correct, format, complete, language, readability,
    /// repetition, length.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Target languages (comma-separated ISO codes); default: each prompt's language.
    #[arg(long, value_delimiter = ',')]
    languages: Vec<String>,
    /// Minimum share of words in a target language (default 0.97).
    #[arg(long)]
    min_language_share: Option<f64>,
    /// A foreign span of this many words fails the language check (default 8).
    #[arg(long)]
    max_foreign_words: Option<usize>,
    /// A foreign span of this many CJK characters fails the language check (default 10).
    #[arg(long)]
    max_foreign_cjk: Option<usize>,
    /// Longest paragraph allowed, in words.
    #[arg(long)]
    max_paragraph_words: Option<usize>,
    /// Largest share of symbol characters in the chain-of-thought.
    #[arg(long)]
    max_symbol_share: Option<f64>,
    /// Allow fenced code blocks in the chain-of-thought of non-code tasks.
    #[arg(long)]
    allow_code_in_math: bool,
    /// Largest share of characters in duplicated 10-grams.
    #[arg(long)]
    max_dup_10gram: Option<f64>,
    /// A unit of 1-4 sentences repeated this many times back to back is a loop.
    #[arg(long)]
    max_consecutive_repeats: Option<usize>,
    /// Count lengths in chars or tokens (tokens needs --tokenizer; --tokenizer alone implies tokens).
    #[arg(long, value_parser = ["chars", "tokens"])]
    length_unit: Option<String>,
    /// tokenizer.json for token lengths.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Shortest chain-of-thought kept (in --length-unit).
    #[arg(long)]
    min_reasoning: Option<usize>,
    /// Longest chain-of-thought kept.
    #[arg(long)]
    max_reasoning: Option<usize>,
    /// Shortest answer kept.
    #[arg(long)]
    min_answer: Option<usize>,
    /// Longest answer kept.
    #[arg(long)]
    max_answer: Option<usize>,
    /// Per-prompt selection: all (default), first, shortest, longest, k-best.
    #[arg(long, value_parser = ["all", "first", "shortest", "longest", "k-best"])]
    policy: Option<String>,
    /// How many samples k-best keeps.
    #[arg(short = 'k', long)]
    k: Option<usize>,
    /// The check whose score ranks k-best (e.g. language, repetition, length).
    #[arg(long)]
    score: Option<String>,
    /// Drop prompts whose pass rate is under this.
    #[arg(long)]
    min_pass_rate: Option<f64>,
    /// Drop prompts whose pass rate is over this (e.g. 0.99: drop prompts every sample solves).
    #[arg(long)]
    max_pass_rate: Option<f64>,
    /// Memory for held samples before spilling to disk, in MB.
    #[arg(long)]
    memory_mb: Option<usize>,
    /// Samples judged per parallel chunk.
    #[arg(long)]
    chunk: Option<usize>,
    /// Records per output shard.
    #[arg(long)]
    records_per_shard: Option<u64>,
    /// Hide the progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Read the file's COLUMN as distill's FIELD (repeatable), for layouts not recognised
    /// by themselves: `--map prompt=question_text --map answer=gold`.
    #[arg(long = "map", value_name = "FIELD=COLUMN")]
    map: Vec<String>,
}

impl StageArgs for FilterArgs {
    type Config = crate::filter::FilterConfig;
    fn flags(self) -> anyhow::Result<Flags> {
        let mut f = Flags::default();
        f.opt("input", "--input", self.input);
        f.opt("out", "--out", self.out);
        f.list("skip", "--skip", self.skip);
        f.list("languages", "--languages", self.languages);
        f.opt("min_language_share", "--min-language-share", self.min_language_share);
        f.opt("max_foreign_words", "--max-foreign-words", self.max_foreign_words);
        f.opt("max_foreign_cjk", "--max-foreign-cjk", self.max_foreign_cjk);
        f.opt("max_paragraph_words", "--max-paragraph-words", self.max_paragraph_words);
        f.opt("max_symbol_share", "--max-symbol-share", self.max_symbol_share);
        f.switch("allow_code_in_math", "--allow-code-in-math", self.allow_code_in_math, true);
        f.opt("max_dup_10gram", "--max-dup-10gram", self.max_dup_10gram);
        f.opt("max_consecutive_repeats", "--max-consecutive-repeats", self.max_consecutive_repeats);
        f.opt("length_unit", "--length-unit", self.length_unit);
        f.opt("tokenizer", "--tokenizer", self.tokenizer);
        f.opt("min_reasoning", "--min-reasoning", self.min_reasoning);
        f.opt("max_reasoning", "--max-reasoning", self.max_reasoning);
        f.opt("min_answer", "--min-answer", self.min_answer);
        f.opt("max_answer", "--max-answer", self.max_answer);
        f.opt("policy", "--policy", self.policy);
        f.opt("k", "-k", self.k);
        f.opt("score", "--score", self.score);
        f.opt("min_pass_rate", "--min-pass-rate", self.min_pass_rate);
        f.opt("max_pass_rate", "--max-pass-rate", self.max_pass_rate);
        f.opt("memory_mb", "--memory-mb", self.memory_mb);
        f.opt("chunk", "--chunk", self.chunk);
        f.opt("records_per_shard", "--records-per-shard", self.records_per_shard);
        f.switch("progress", "--no-progress", self.no_progress, false);
        map_flag(&mut f, "map", self.map)?;
        Ok(f)
    }
}

fn run_filter(cfg: &crate::filter::FilterConfig) -> anyhow::Result<Outcome> {
    let report = crate::filter::run(cfg, &verify::Verifiers::standard())
        .with_context(|| format!("filter --input {} --out {}", cfg.input.display(), cfg.out.display()))?;
    eprint!("{}", report.funnel.to_text());
    Ok(if report.funnel.invalid > 0 { Outcome::Rejected } else { Outcome::Ok })
}

/// Arguments of `distill dedup`. Every flag is optional and sets only its own key of the
/// `[dedup]` settings (`DedupConfig::default()` < recipe table < `--set` < flags).
///
/// Near-duplicates: MinHash over word 5-grams (character 5-grams for prompts under 10 words),
/// LSH bands × rows derived from --threshold (256 permutations at 0.8: 28 × 9), every candidate
/// verified by signature agreement >= threshold and, unless --ignore-numbers, equal number
/// sequences. Chance that a pair with word-5-gram Jaccard s is merged at the defaults:
/// s=0.6 <1e-11, 0.7 0.0001, 0.75 0.03, 0.8 0.52, 0.85 0.986, 0.9 >0.99999.
///
/// Many machines: `--shard I/N` (one per task, same --input/--out, shared filesystem) writes
/// OUT/signatures/shard-I-of-N.sig for input files f with f % N == I; then one
/// `--merge` clusters them and writes the corpus, byte-identical to a one-process run.
#[derive(Debug, Args)]
struct DedupArgs {
    /// SFT examples: a file or a directory of shards (e.g. filter's DIR/kept/).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Output directory: data/{train,validation}-*.parquet, manifest.json, README.md, rejects/.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Benchmark to decontaminate against, FILE:FIELD (JSONL or Parquet); repeat for more.
    #[arg(long, value_name = "FILE:FIELD")]
    decontam: Vec<String>,
    /// Words per decontamination n-gram [default 8].
    #[arg(long, value_name = "N")]
    decontam_ngram: Option<usize>,
    /// Also remove prompts equal to a benchmark item once digits and non-letters are stripped.
    #[arg(long)]
    decontam_strip_numbers: bool,
    /// Jaccard similarity at which prompts are near-duplicates [default 0.8].
    #[arg(long)]
    threshold: Option<f64>,
    /// Words per shingle [default 5].
    #[arg(long, value_name = "N")]
    ngram: Option<usize>,
    /// MinHash permutations [default 256].
    #[arg(long, value_name = "N")]
    num_perm: Option<usize>,
    /// LSH bands (with --rows; default: derived from --threshold).
    #[arg(long)]
    bands: Option<usize>,
    /// LSH rows per band (with --bands).
    #[arg(long)]
    rows: Option<usize>,
    /// Merge near-duplicate prompts even when their numbers differ (web-style data).
    #[arg(long)]
    ignore_numbers: bool,
    /// Keep at most K examples per kept prompt [default: all].
    #[arg(long, value_name = "K")]
    max_per_prompt: Option<usize>,
    /// Fraction of prompt clusters in the validation split [default 0.01].
    #[arg(long)]
    validation_fraction: Option<f64>,
    /// Bytes of record JSON per Parquet shard at most [default 500000000].
    #[arg(long, value_name = "BYTES")]
    shard_size: Option<u64>,
    /// Seed of the MinHash functions [default 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Scan only slice I of N of the input files and write OUT/signatures/shard-I-of-N.sig.
    #[arg(long, value_name = "I/N", conflicts_with = "merge")]
    shard: Option<String>,
    /// Cluster the signature files in OUT/signatures/ and write the corpus.
    #[arg(long)]
    merge: bool,
}

impl StageArgs for DedupArgs {
    type Config = crate::dedup::DedupConfig;
    fn flags(self) -> anyhow::Result<Flags> {
        let mut f = Flags::default();
        f.opt("input", "--input", self.input);
        f.opt("out", "--out", self.out);
        f.list("decontam", "--decontam", self.decontam);
        f.opt("decontam_ngram", "--decontam-ngram", self.decontam_ngram);
        f.switch("decontam_strip_numbers", "--decontam-strip-numbers", self.decontam_strip_numbers, true);
        f.opt("threshold", "--threshold", self.threshold);
        f.opt("ngram", "--ngram", self.ngram);
        f.opt("num_perm", "--num-perm", self.num_perm);
        f.opt("bands", "--bands", self.bands);
        f.opt("rows", "--rows", self.rows);
        f.switch("ignore_numbers", "--ignore-numbers", self.ignore_numbers, true);
        f.opt("max_per_prompt", "--max-per-prompt", self.max_per_prompt);
        f.opt("validation_fraction", "--validation-fraction", self.validation_fraction);
        f.opt("shard_size", "--shard-size", self.shard_size);
        f.opt("seed", "--seed", self.seed);
        f.opt("shard", "--shard", self.shard);
        f.switch("merge", "--merge", self.merge, true);
        Ok(f)
    }
}
