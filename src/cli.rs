//! The command line: clap types only. Each subcommand's arguments are resolved once into
//! the stage's own config type; clap types never leave this module.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::config;
use crate::inspect::{self, InspectConfig};

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
