//! The command line: clap types only. Each subcommand's arguments are resolved once into
//! the stage's own config type; clap types never leave this module.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::collect::{self, CollectConfig, Regenerate};
use crate::config;
use crate::inspect::{self, InspectConfig};
use crate::problems::{self, ProblemKind, ProblemsConfig};
use crate::teacher_sim::{self, Faults, Shape, SimConfig};
use crate::train::data::Overlong;
use crate::train::finetune::{self, FinetuneConfig};
use crate::train::model::LoraConfig;
use crate::train::model::gguf;
use crate::train::schedule::ScheduleKind;
use crate::train::score::{self, ScoreConfig};
use crate::verify::{self, VerifyConfig};

/// R1-style reasoning distillation: collect long chain-of-thought from a teacher, verify and
/// filter it, build a sharded SFT corpus, fine-tune small students.
#[derive(Debug, Parser)]
#[command(name = "distill", version, propagate_version = true)]
#[command(after_help = "Exit codes: 0 ok, 1 finished but rejected some input, 2 error.")]
pub struct Cli {
    /// Print the command's resolved configuration (TOML) and exit.
    #[arg(long, global = true)]
    pub show_config: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Statistics and pretty-printed records of any record file or shard directory.
    Inspect(InspectArgs),
    /// Judge each record's response (math: answer equivalence; code: tests run in a sandbox)
    /// and write it back with a verdict.
    Verify(VerifyArgs),
    /// Generate math or code problems with exact answers / tests, as Prompt records.
    Problems(ProblemsArgs),
    /// Run a simulated R1-style teacher: an OpenAI-compatible server on loopback.
    TeacherSim(TeacherSimArgs),
    /// Collect teacher samples for prompts from OpenAI-compatible endpoints, resumably.
    Collect(Box<CollectArgs>),
    /// Mean per-token loss and perplexity of a corpus's assistant tokens under a model.
    Score(ScoreArgs),
    /// Fine-tune a student (full or LoRA) on an SFT corpus: checkpoints, metrics.jsonl, loss.png, final/.
    Finetune(Box<FinetuneArgs>),
    /// Convert a llama/qwen2 GGUF file into a Hugging Face model directory.
    Convert(ConvertArgs),
    /// Rejection sampling and chain-of-thought checks: samples in, kept SFT examples,
    /// rejects with reasons and a funnel out.
    Filter(Box<FilterArgs>),
}

/// Arguments of `distill score`.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Model directory (Hugging Face layout) or a .gguf file.
    #[arg(long)]
    pub model: PathBuf,
    /// SFT examples (records with `messages`): a file, a directory of them, or - for stdin.
    pub path: PathBuf,
    /// Print {"loss", "tokens", "perplexity", ...} as JSON.
    #[arg(long)]
    pub json: bool,
    /// Compute in float32 or bfloat16.
    #[arg(long, default_value = "float32")]
    pub dtype: String,
    /// Score at most N records (0: all).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub limit: usize,
}

impl ScoreArgs {
    fn resolve(self) -> ScoreConfig {
        ScoreConfig { model: self.model, path: self.path, json: self.json, dtype: self.dtype, limit: self.limit }
    }
}

/// Arguments of `distill convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// A llama- or qwen2-architecture .gguf file.
    pub gguf: PathBuf,
    /// Output model directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Weights dtype written: float32, bfloat16 or float16.
    #[arg(long, default_value = "float32")]
    pub dtype: String,
}

/// Resolved settings of `distill convert`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConvertConfig {
    pub gguf: PathBuf,
    pub out: PathBuf,
    pub dtype: String,
}

/// Arguments of `distill problems`.
#[derive(Debug, Args)]
pub struct ProblemsArgs {
    #[arg(long, value_enum)]
    pub kind: KindArg,
    #[arg(long)]
    pub count: u64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output file: .jsonl, .jsonl.zst or .parquet.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KindArg {
    Math,
    Code,
}

impl ProblemsArgs {
    fn resolve(self) -> ProblemsConfig {
        let kind = match self.kind {
            KindArg::Math => ProblemKind::Math,
            KindArg::Code => ProblemKind::Code,
        };
        ProblemsConfig { kind, count: self.count, seed: self.seed, out: self.out }
    }
}

/// Arguments of `distill teacher-sim`.
#[derive(Debug, Args)]
pub struct TeacherSimArgs {
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 picks a free one (the address is printed on stdout's first line).
    #[arg(long)]
    pub port: u16,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fault probabilities: wrong, langmix, repeat, truncate, no_close, http429, http500, drop,
    /// slow, nonjson (e.g. wrong=0.3,http429=0.1,drop=0.05).
    #[arg(long, default_value = "")]
    pub faults: String,
    /// Where the reasoning goes: inline <think> in content, or reasoning_content.
    #[arg(long, value_enum, default_value = "inline")]
    pub shape: ShapeArg,
    /// Delay every response by this many milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Delay of the `slow` fault, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    pub slow_ms: u64,
    /// Retry-After seconds sent with 429 answers.
    #[arg(long, default_value_t = 1)]
    pub retry_after: u64,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Reasoning length in words (R1-style moves from a phrase bank; up to ~4000).
    #[arg(long)]
    pub words: Option<usize>,
    /// Append, per generated choice, the content faults injected (JSON lines).
    #[arg(long)]
    pub faults_log: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ShapeArg {
    Inline,
    #[value(name = "reasoning_content")]
    ReasoningContent,
}

impl TeacherSimArgs {
    fn resolve(self) -> anyhow::Result<SimConfig> {
        Ok(SimConfig {
            host: self.host,
            port: self.port,
            seed: self.seed,
            faults: Faults::parse(&self.faults)?,
            shape: match self.shape {
                ShapeArg::Inline => Shape::Inline,
                ShapeArg::ReasoningContent => Shape::ReasoningContent,
            },
            latency_ms: self.latency_ms,
            slow_ms: self.slow_ms,
            retry_after_s: self.retry_after,
            threads: self.threads,
            words: self.words,
            faults_log: self.faults_log,
        })
    }
}

/// Arguments of `distill collect`.
#[derive(Debug, Args)]
pub struct CollectArgs {
    /// Prompt records: a file, a directory of them, or - for stdin.
    #[arg(long)]
    pub prompts: PathBuf,
    /// Teacher base URL (requests go to URL/chat/completions); repeat or comma-separate for several.
    #[arg(long, required = true, value_delimiter = ',')]
    pub endpoint: Vec<String>,
    #[arg(long)]
    pub model: String,
    /// Output directory (resumable: a re-run requests only what is missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Samples per prompt.
    #[arg(short = 'n', long = "samples", default_value_t = 1)]
    pub n: u32,
    /// Ask for a prompt's samples in one request with `n` (for servers that support it).
    #[arg(long)]
    pub server_n: bool,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Environment variable holding the API key.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    pub api_key_env: String,
    /// Stream answers (SSE).
    #[arg(long)]
    pub stream: bool,
    #[arg(long, default_value_t = 0.6)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f64,
    #[arg(long)]
    pub max_tokens: Option<u64>,
    /// Sample k is requested with seed SEED+k.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Send no seed.
    #[arg(long)]
    pub no_seed: bool,
    /// Stop sequence (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// System message.
    #[arg(long)]
    pub system: Option<String>,
    /// Appended to math prompts after a blank line ("" for none).
    #[arg(long, default_value = collect::DEFAULT_MATH_INSTRUCTION)]
    pub math_instruction: String,
    /// Appended to code prompts after a blank line.
    #[arg(long, default_value = "")]
    pub code_instruction: String,
    /// Extra request body fields, as a JSON object.
    #[arg(long, value_name = "JSON")]
    pub extra_body: Option<String>,
    /// Requests per minute (0: unlimited).
    #[arg(long, default_value_t = 0)]
    pub rpm: u64,
    /// Tokens per minute (0: unlimited).
    #[arg(long, default_value_t = 0)]
    pub tpm: u64,
    #[arg(long, default_value_t = 8)]
    pub max_retries: u32,
    /// Per-attempt timeout in seconds (streams: longest gap between events).
    #[arg(long, default_value_t = 600.0)]
    pub timeout_s: f64,
    /// First retry's backoff in milliseconds (doubles each retry, with jitter).
    #[arg(long, default_value_t = 1000)]
    pub backoff_base_ms: u64,
    #[arg(long, default_value_t = 60_000)]
    pub backoff_max_ms: u64,
    /// Request existing samples again: `truncated` (finish_reason=length); the new record replaces the old.
    #[arg(long, value_enum)]
    pub regenerate: Option<RegenerateArg>,
    /// USD per million prompt tokens (for the cost in summary.json).
    #[arg(long, default_value_t = 0.0)]
    pub price_in: f64,
    /// USD per million completion tokens.
    #[arg(long, default_value_t = 0.0)]
    pub price_out: f64,
    /// Async runtime worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RegenerateArg {
    Truncated,
}

impl CollectArgs {
    fn resolve(self) -> anyhow::Result<CollectConfig> {
        let extra_body = match &self.extra_body {
            None => Default::default(),
            Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(m)) => m.into_iter().collect(),
                _ => anyhow::bail!("--extra-body must be a JSON object, e.g. '{{\"top_k\": 20}}'"),
            },
        };
        Ok(CollectConfig {
            prompts: self.prompts,
            endpoints: self.endpoint,
            model: self.model,
            out: self.out,
            n: self.n,
            server_n: self.server_n,
            concurrency: self.concurrency,
            api_key_env: self.api_key_env,
            stream: self.stream,
            temperature: self.temperature,
            top_p: self.top_p,
            max_tokens: self.max_tokens,
            seed: (!self.no_seed).then_some(self.seed),
            stop: self.stop,
            system: self.system,
            math_instruction: self.math_instruction,
            code_instruction: self.code_instruction,
            extra_body,
            rpm: self.rpm,
            tpm: self.tpm,
            max_retries: self.max_retries,
            timeout_s: self.timeout_s,
            backoff_base_ms: self.backoff_base_ms,
            backoff_max_ms: self.backoff_max_ms,
            regenerate: self.regenerate.map(|RegenerateArg::Truncated| Regenerate::Truncated),
            price_in_per_m: self.price_in,
            price_out_per_m: self.price_out,
            threads: self.threads,
            progress: !self.no_progress,
        })
    }
}

/// Arguments of `distill verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A .jsonl, .jsonl.zst or .parquet file, a directory of them, or - for stdin.
    #[arg(default_value = "-")]
    pub path: PathBuf,
    /// Write the records with their verdicts here (.jsonl, .jsonl.zst, .parquet) instead of
    /// stdout (JSONL).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print pass/fail/undecided counts at the end (to stderr when records go to stdout).
    #[arg(long)]
    pub summary: bool,
    /// Records judged per parallel chunk.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub chunk: usize,
    /// Code: programs run at once (default: number of cores).
    #[arg(long, value_name = "N")]
    pub code_workers: Option<usize>,
    /// Code: wall-clock seconds per run when a record's tests set no timeout_s.
    #[arg(long, value_name = "SECONDS")]
    pub code_timeout: Option<f64>,
    /// Code: sandbox isolation (auto = strongest available, with a warning when weak).
    #[arg(long, value_name = "LEVEL", value_parser = ["auto", "namespaces", "uid", "rlimits"])]
    pub code_isolation: Option<String>,
    /// Code: run every test instead of stopping at the first failure.
    #[arg(long)]
    pub all_tests: bool,
}

impl VerifyArgs {
    fn resolve(self) -> VerifyConfig {
        let mut code = verify::code::CodeConfig::default();
        if let Some(n) = self.code_workers {
            code.workers = n;
        }
        if let Some(t) = self.code_timeout {
            code.timeout_s = t;
        }
        code.isolation = match self.code_isolation.as_deref() {
            Some("namespaces") => verify::code::IsolationChoice::Namespaces,
            Some("uid") => verify::code::IsolationChoice::Uid,
            Some("rlimits") => verify::code::IsolationChoice::Rlimits,
            _ => verify::code::IsolationChoice::Auto,
        };
        code.early_exit = !self.all_tests;
        VerifyConfig { input: self.path, out: self.out, summary: self.summary, chunk: self.chunk, code }
    }
}

/// Arguments of `distill inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A .jsonl, .jsonl.zst or .parquet file, a directory of them, or - for stdin.
    pub path: PathBuf,
    /// Print statistics as JSON (top-level "records" count).
    #[arg(long)]
    pub json: bool,
    /// Pretty-print N records chosen at random (deterministic with --seed).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub sample: usize,
    /// Pretty-print the record with this id.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Also report lengths in tokens of this Hugging Face tokenizer.json.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Continue past invalid records; write them with the reason to --rejects (exit code 1).
    #[arg(long)]
    pub skip_invalid: bool,
    /// Where --skip-invalid writes rejected records.
    #[arg(long, value_name = "FILE", default_value = "distill-rejects.jsonl")]
    pub rejects: PathBuf,
    /// Print whole texts when pretty-printing (long ones are elided by default).
    #[arg(long)]
    pub full: bool,
    /// Seed for --sample.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl InspectArgs {
    fn resolve(self) -> InspectConfig {
        InspectConfig {
            path: self.path,
            json: self.json,
            sample: self.sample,
            id: self.id,
            tokenizer: self.tokenizer,
            skip_invalid: self.skip_invalid,
            rejects: self.rejects,
            full: self.full,
            seed: self.seed,
        }
    }
}

/// Arguments of `distill finetune`.
#[derive(Debug, Args)]
pub struct FinetuneArgs {
    /// Settings from a recipe's [finetune] table (other tables are ignored); flags given on the
    /// command line override its keys. `--show-config` prints such a table.
    #[arg(long, value_name = "FILE.toml")]
    pub recipe: Option<PathBuf>,
    /// The student: a Hugging Face model directory (tokenizer and chat template included).
    #[arg(long, required_unless_present = "recipe")]
    pub model: Option<PathBuf>,
    /// The corpus: SFT examples (a file, or a directory of train-*/validation-* shards).
    #[arg(long, required_unless_present = "recipe")]
    pub data: Option<PathBuf>,
    /// Output directory: checkpoint-N/, metrics.jsonl, loss.png, final/ (and adapter/ with LoRA).
    #[arg(long, required_unless_present = "recipe")]
    pub out: Option<PathBuf>,
    /// Validation records, when not the corpus's validation-* files.
    #[arg(long, value_name = "PATH")]
    pub eval_data: Option<PathBuf>,
    /// Train LoRA adapters of this rank instead of all weights.
    #[arg(long, value_name = "R")]
    pub lora_rank: Option<usize>,
    /// LoRA alpha (default: 2 × rank).
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// LoRA dropout.
    #[arg(long, default_value_t = 0.05)]
    pub lora_dropout: f32,
    /// Projections given adapters (comma-separated; default all seven).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub lora_targets: Vec<String>,
    /// Stop after N optimizer steps (the schedule spans them).
    #[arg(long, value_name = "N")]
    pub max_steps: Option<u64>,
    /// Passes over the corpus.
    #[arg(long, default_value_t = 3)]
    pub epochs: u64,
    /// Peak learning rate (default 4e-5, or 2e-4 with LoRA).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Decay after warmup: cosine, linear or constant.
    #[arg(long, value_parser = parse_schedule, default_value = "cosine")]
    pub schedule: ScheduleKind,
    #[arg(long, default_value_t = 0.03)]
    pub warmup_ratio: f64,
    /// Where the decay ends, as a share of the peak learning rate.
    #[arg(long, default_value_t = 0.1)]
    pub min_lr_ratio: f64,
    /// Global gradient-norm clipping (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    pub beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    pub eps: f64,
    /// Longest sample in tokens; longer ones are dropped (or cut with --truncate), and counted.
    #[arg(long, default_value_t = 2048)]
    pub max_seq_len: usize,
    /// Cut over-long samples to --max-seq-len instead of dropping them.
    #[arg(long)]
    pub truncate: bool,
    /// One sample per sequence instead of packing several (attention stays inside each either way).
    #[arg(long)]
    pub no_packing: bool,
    /// Tokens per optimizer step (gradient accumulation over sequences).
    #[arg(long, default_value_t = 4096)]
    pub tokens_per_step: usize,
    /// At most this many samples per optimizer step (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub samples_per_step: usize,
    /// Records held for shuffling.
    #[arg(long, default_value_t = 4096)]
    pub shuffle_buffer: usize,
    /// Sequences per forward pass; above 1 a step's sequences are grouped by length and
    /// right-padded to the longest (length-grouped padding, mostly with --no-packing).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Validation loss every N steps (and at the end; 0: only at the end).
    #[arg(long, default_value_t = 50)]
    pub eval_every: u64,
    /// At most N validation samples (0: all).
    #[arg(long, default_value_t = 0)]
    pub eval_max_samples: usize,
    /// A checkpoint every N steps (and at the end; 0: only at the end).
    #[arg(long, default_value_t = 100)]
    pub save_every: u64,
    /// Checkpoints kept (newest; 0: all).
    #[arg(long, default_value_t = 2)]
    pub keep_last: usize,
    /// Continue from the newest checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Where to train: cpu, or cuda / cuda:N (a build with `--features cuda`).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: String,
    /// Per-layer activation checkpointing: N layers (or all, the flag alone) keep only their
    /// input and are recomputed in backward — much less memory for long traces, more compute.
    #[arg(long, value_name = "N|all", num_args = 0..=1, default_missing_value = "all",
          value_parser = finetune::layer_count::parse)]
    pub checkpoint_layers: Option<usize>,
    /// The ids of the flags given on the command line (filled in after parsing).
    #[arg(skip)]
    pub given: Vec<String>,
}

fn parse_schedule(s: &str) -> Result<ScheduleKind, String> {
    match s {
        "cosine" => Ok(ScheduleKind::Cosine),
        "linear" => Ok(ScheduleKind::Linear),
        "constant" => Ok(ScheduleKind::Constant),
        _ => Err(format!("unknown schedule `{s}`: use cosine, linear or constant")),
    }
}

impl FinetuneArgs {
    /// The settings: the recipe's [finetune] table (when `--recipe`) with the flags given on the
    /// command line laid over it, or the flags alone.
    fn resolve_all(self) -> anyhow::Result<FinetuneConfig> {
        let given = self.given.clone();
        let given = |id: &str| given.iter().any(|g| g == id);
        let Some(path) = self.recipe.clone() else { return Ok(self.resolve()) };
        let lora_flags = ["lora_alpha", "lora_dropout", "lora_targets"];
        let flags = self.resolve();
        let (mut r, keys) = config::load_table::<FinetuneConfig>(&path, "finetune")?;
        macro_rules! take {
            ($($id:literal => $($f:ident).+;)*) => {
                $(if given($id) { r.$($f).+ = flags.$($f).+.clone(); })*
            };
        }
        take! {
            "model" => model; "data" => data; "out" => out; "eval_data" => eval_data; "epochs" => epochs;
            "max_steps" => max_steps; "schedule" => schedule; "warmup_ratio" => warmup_ratio;
            "min_lr_ratio" => min_lr_ratio; "max_grad_norm" => max_grad_norm; "weight_decay" => optim.weight_decay;
            "beta1" => optim.beta1; "beta2" => optim.beta2; "eps" => optim.eps; "max_seq_len" => loader.max_seq_len;
            "truncate" => loader.overlong; "no_packing" => loader.packing; "tokens_per_step" => loader.tokens_per_step;
            "samples_per_step" => loader.samples_per_step; "shuffle_buffer" => loader.shuffle_buffer; "batch" => loader.batch;
            "eval_every" => eval_every; "eval_max_samples" => eval_max_samples; "save_every" => save_every;
            "keep_last" => keep_last; "resume" => resume; "no_progress" => progress; "device" => device;
            "checkpoint_layers" => checkpoint_layers; "lr" => lr;
        }
        if given("seed") {
            r.loader.seed = flags.loader.seed;
        }
        if let (true, Some(fl)) = (given("lora_rank"), &flags.lora) {
            let recipe_had_lora = r.lora.is_some();
            let l = r.lora.get_or_insert_with(|| LoraConfig { seed: r.loader.seed, ..LoraConfig::default() });
            l.rank = fl.rank;
            if !recipe_had_lora {
                l.alpha = fl.alpha;
            }
        }
        if let Some(flag) = lora_flags.iter().find(|f| given(f)) {
            let (Some(l), Some(fl)) = (r.lora.as_mut(), flags.lora.as_ref()) else {
                anyhow::bail!(
                    "--{} needs LoRA: give --lora-rank or a [finetune.lora] table in {}",
                    flag.replace('_', "-"),
                    path.display()
                );
            };
            if given("lora_alpha") {
                l.alpha = fl.alpha;
            }
            if given("lora_dropout") {
                l.dropout = fl.dropout;
            }
            if given("lora_targets") {
                l.targets = fl.targets.clone();
            }
        }
        if given("seed")
            && let Some(l) = r.lora.as_mut()
        {
            l.seed = flags.loader.seed;
        }
        if !given("lr") && !keys.contains_key("lr") {
            r.lr = if r.lora.is_some() { finetune::LORA_LR } else { finetune::FULL_LR };
        }
        for (what, p, flag) in
            [("the student", &r.model, "model"), ("the corpus", &r.data, "data"), ("the output", &r.out, "out")]
        {
            if p.as_os_str().is_empty() {
                anyhow::bail!(
                    "finetune needs {what}: give --{flag} or `{flag} = ...` in the [finetune] table of {}",
                    path.display()
                );
            }
        }
        Ok(r)
    }

    fn resolve(self) -> FinetuneConfig {
        let lora = self.lora_rank.map(|rank| LoraConfig {
            rank,
            alpha: self.lora_alpha.unwrap_or(2.0 * rank as f64),
            dropout: self.lora_dropout,
            targets: if self.lora_targets.is_empty() { LoraConfig::default().targets } else { self.lora_targets },
            seed: self.seed,
        });
        let lr = self.lr.unwrap_or(if lora.is_some() { finetune::LORA_LR } else { finetune::FULL_LR });
        FinetuneConfig {
            model: self.model.unwrap_or_default(),
            data: self.data.unwrap_or_default(),
            out: self.out.unwrap_or_default(),
            eval_data: self.eval_data,
            epochs: self.epochs,
            max_steps: self.max_steps,
            lr,
            schedule: self.schedule,
            warmup_ratio: self.warmup_ratio,
            min_lr_ratio: self.min_lr_ratio,
            max_grad_norm: self.max_grad_norm,
            optim: crate::train::optim::AdamWConfig {
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
                weight_decay: self.weight_decay,
            },
            loader: crate::train::data::DataConfig {
                max_seq_len: self.max_seq_len,
                overlong: if self.truncate { Overlong::Truncate } else { Overlong::Drop },
                packing: !self.no_packing,
                tokens_per_step: self.tokens_per_step,
                samples_per_step: self.samples_per_step,
                shuffle_buffer: self.shuffle_buffer,
                seed: self.seed,
                batch: self.batch,
            },
            lora,
            eval_every: self.eval_every,
            eval_max_samples: self.eval_max_samples,
            save_every: self.save_every,
            keep_last: self.keep_last,
            resume: self.resume,
            progress: !self.no_progress,
            device: self.device,
            checkpoint_layers: self.checkpoint_layers.unwrap_or(0),
        }
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
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let mut cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Which flags were typed (a recipe's values give way only to those).
    if let (Command::Finetune(args), Some(sub)) = (&mut cli.command, matches.subcommand_matches("finetune")) {
        args.given = sub
            .ids()
            .filter(|id| sub.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine))
            .map(|id| id.to_string())
            .collect();
    }
    match run(cli) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Rejected) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn show<T: serde::Serialize>(table: &str, cfg: &T) -> anyhow::Result<Outcome> {
    emit(&config::to_toml(table, cfg)?)?;
    Ok(Outcome::Ok)
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Inspect(args) => {
            let cfg = args.resolve();
            if cli.show_config {
                return show("inspect", &cfg);
            }
            run_inspect(&cfg)
        }
        Command::Verify(args) => {
            let cfg = args.resolve();
            if cli.show_config {
                return show("verify", &cfg);
            }
            run_verify(&cfg)
        }
        Command::Problems(args) => {
            let cfg = args.resolve();
            if cli.show_config {
                return show("problems", &cfg);
            }
            let n = problems::generate(&cfg).with_context(|| format!("problems --out {}", cfg.out.display()))?;
            eprintln!("problems: wrote {n} {:?} problems to {}", cfg.kind, cfg.out.display());
            Ok(Outcome::Ok)
        }
        Command::TeacherSim(args) => {
            let cfg = args.resolve()?;
            if cli.show_config {
                return show("teacher_sim", &cfg);
            }
            teacher_sim::serve(cfg)?;
            Ok(Outcome::Ok)
        }
        Command::Collect(args) => {
            let cfg = args.resolve()?;
            if cli.show_config {
                return show("collect", &cfg);
            }
            let report = collect::run(cfg.clone()).with_context(|| format!("collect --out {}", cfg.out.display()))?;
            eprint!("{}", report.summary.to_text());
            Ok(if report.had_failures() { Outcome::Rejected } else { Outcome::Ok })
        }
        Command::Finetune(args) => {
            let cfg = args.resolve_all()?;
            if cli.show_config {
                return show("finetune", &cfg);
            }
            let report = finetune::run(&cfg).with_context(|| format!("finetune --out {}", cfg.out.display()))?;
            eprintln!("{}", report.summary());
            Ok(Outcome::Ok)
        }
        Command::Score(args) => {
            let cfg = args.resolve();
            if cli.show_config {
                return show("score", &cfg);
            }
            let report = score::run(&cfg).with_context(|| format!("score --model {}", cfg.model.display()))?;
            if cfg.json {
                emit(&format!("{}\n", report.to_json()))?;
            } else {
                emit(&report.to_text())?;
            }
            Ok(if report.rejected > 0 { Outcome::Rejected } else { Outcome::Ok })
        }
        Command::Filter(args) => run_filter(*args, cli.show_config),
        Command::Convert(args) => {
            let cfg = ConvertConfig { gguf: args.gguf, out: args.out, dtype: args.dtype };
            if cli.show_config {
                return show("convert", &cfg);
            }
            let dtype = crate::train::model::io::parse_dtype(&cfg.dtype)
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

/// Arguments of `distill filter`. Every flag is optional: unset flags keep the value of
/// `filter::FilterConfig::default()` (or of the recipe's `[filter]` table with `--recipe`).
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Sample records: a collect directory, a file, shards, or - for stdin.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Output directory: kept/, rejects/, funnel.json, manifest.json.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A recipe whose [filter] table gives the settings (flags override it).
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Checks not to run (comma-separated): correct, format, complete, language, readability,
    /// repetition, length.
    #[arg(long, value_delimiter = ',')]
    pub skip: Option<Vec<String>>,
    /// Target languages (comma-separated ISO codes); default: each prompt's language.
    #[arg(long, value_delimiter = ',')]
    pub languages: Option<Vec<String>>,
    /// Minimum share of words in a target language.
    #[arg(long)]
    pub min_language_share: Option<f64>,
    /// A foreign span of this many words fails the language check.
    #[arg(long)]
    pub max_foreign_words: Option<usize>,
    /// A foreign span of this many CJK characters fails the language check.
    #[arg(long)]
    pub max_foreign_cjk: Option<usize>,
    /// Longest paragraph allowed, in words.
    #[arg(long)]
    pub max_paragraph_words: Option<usize>,
    /// Largest share of symbol characters in the chain-of-thought.
    #[arg(long)]
    pub max_symbol_share: Option<f64>,
    /// Allow fenced code blocks in the chain-of-thought of non-code tasks.
    #[arg(long)]
    pub allow_code_in_math: Option<bool>,
    /// Largest share of characters in duplicated 10-grams.
    #[arg(long)]
    pub max_dup_10gram: Option<f64>,
    /// A unit of 1-4 sentences repeated this many times back to back is a loop.
    #[arg(long)]
    pub max_consecutive_repeats: Option<usize>,
    /// Count lengths in chars or tokens (tokens needs --tokenizer).
    #[arg(long, value_enum)]
    pub length_unit: Option<LengthUnitArg>,
    /// tokenizer.json for token lengths (implies --length-unit tokens unless given).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long)]
    pub min_reasoning: Option<usize>,
    #[arg(long)]
    pub max_reasoning: Option<usize>,
    #[arg(long)]
    pub min_answer: Option<usize>,
    #[arg(long)]
    pub max_answer: Option<usize>,
    /// Per-prompt selection: all, first, shortest, longest, k-best.
    #[arg(long, value_enum)]
    pub policy: Option<PolicyArg>,
    /// How many samples k-best keeps.
    #[arg(short = 'k', long)]
    pub k: Option<usize>,
    /// The check whose score ranks k-best (e.g. language, repetition, length).
    #[arg(long)]
    pub score: Option<String>,
    /// Drop prompts whose pass rate is under this.
    #[arg(long)]
    pub min_pass_rate: Option<f64>,
    /// Drop prompts whose pass rate is over this (e.g. 0.99: drop prompts every sample solves).
    #[arg(long)]
    pub max_pass_rate: Option<f64>,
    /// Memory for held samples before spilling to disk, in MB.
    #[arg(long)]
    pub memory_mb: Option<usize>,
    /// Samples judged per parallel chunk.
    #[arg(long)]
    pub chunk: Option<usize>,
    /// Records per output shard.
    #[arg(long)]
    pub records_per_shard: Option<u64>,
    /// Hide the progress bar.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LengthUnitArg {
    Chars,
    Tokens,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PolicyArg {
    All,
    First,
    Shortest,
    Longest,
    KBest,
}

impl FilterArgs {
    /// The resolved config: the recipe's table (or the defaults), then every flag given.
    pub fn resolve(self) -> anyhow::Result<crate::filter::FilterConfig> {
        use crate::filter::{FilterConfig, LengthUnit, Policy};
        let mut c: FilterConfig = match &self.recipe {
            Some(p) => config::load_table::<FilterConfig>(p, "filter")?.0,
            None => FilterConfig::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        macro_rules! set_opt {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = Some(v); } )* };
        }
        set!(input, out, skip, languages, min_language_share, max_foreign_words, max_foreign_cjk);
        set!(max_paragraph_words, max_symbol_share, allow_code_in_math, max_dup_10gram, max_consecutive_repeats);
        set!(k, score, memory_mb, chunk, records_per_shard);
        set_opt!(min_reasoning, max_reasoning, min_answer, max_answer, min_pass_rate, max_pass_rate);
        if let Some(t) = self.tokenizer {
            c.tokenizer = Some(t);
            if self.length_unit.is_none() {
                c.length_unit = LengthUnit::Tokens;
            }
        }
        if let Some(u) = self.length_unit {
            c.length_unit = match u {
                LengthUnitArg::Chars => LengthUnit::Chars,
                LengthUnitArg::Tokens => LengthUnit::Tokens,
            };
        }
        if let Some(p) = self.policy {
            c.policy = match p {
                PolicyArg::All => Policy::All,
                PolicyArg::First => Policy::First,
                PolicyArg::Shortest => Policy::Shortest,
                PolicyArg::Longest => Policy::Longest,
                PolicyArg::KBest => Policy::KBest,
            };
        }
        if self.no_progress {
            c.progress = false;
        }
        if c.input.as_os_str().is_empty() || c.out.as_os_str().is_empty() {
            anyhow::bail!("filter needs --input PATH and --out DIR (or `input`/`out` in the recipe's [filter] table)");
        }
        c.validate()?;
        Ok(c)
    }
}

fn run_filter(args: FilterArgs, show_config: bool) -> anyhow::Result<Outcome> {
    let cfg = args.resolve()?;
    if show_config {
        return show("filter", &cfg);
    }
    let report = crate::filter::run(&cfg, &verify::Verifiers::standard())
        .with_context(|| format!("filter --input {} --out {}", cfg.input.display(), cfg.out.display()))?;
    eprint!("{}", report.funnel.to_text());
    Ok(if report.funnel.invalid > 0 { Outcome::Rejected } else { Outcome::Ok })
}
