//! The command line: clap types only. Each subcommand's arguments are resolved once into
//! the stage's own config type; clap types never leave this module.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::config;
use crate::inspect::{self, InspectConfig};
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
    /// Judge each record's response (math: answer equivalence) and write it back with a verdict.
    Verify(VerifyArgs),
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
}

impl VerifyArgs {
    fn resolve(self) -> VerifyConfig {
        VerifyConfig { input: self.path, out: self.out, summary: self.summary, chunk: self.chunk }
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
    let summary = verify::run(cfg, &verify::Verifiers::standard())
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
