//! `distill filter`: rejection sampling and chain-of-thought quality checks, from raw teacher
//! samples to kept SFT examples, with a funnel.
//!
//! In: Sample records (a `distill collect` directory, a file, shards, or `-`), with or without
//! a verdict from `distill verify` (a verdict whose `pass` is set is reused, otherwise the
//! task's verifier runs through the [`crate::verify::Verifiers`] seam). Out, under `--out DIR`:
//! - `DIR/kept/kept-*.jsonl.zst`: SFT examples (`messages` ending with the assistant turn
//!   `<think>\n…\n</think>\n\n…`, `prompt_id`, `source`, `task`, `meta {pass_rate, n_samples}`,
//!   unknown prompt fields carried);
//! - `DIR/rejects/samples-*.jsonl.zst`: every sample not kept, as it came in plus
//!   `verdict.checks` (every check, no short-circuit), `verdict.kept = false` and
//!   `verdict.reject_reason` (the first failed check, or the selection step);
//! - `DIR/rejects/invalid.jsonl`: input lines that are not samples, with file:line and reason;
//! - `DIR/funnel.json` (also printed as a table on stderr) and `DIR/manifest.json`.
//!
//! Checks, in funnel order: `correct`, `format`, `complete`, `language`, `readability`,
//! `repetition`, `length` (one file each), then per-prompt selection (`select.rs`).
//! Samples are judged in parallel chunks and written in input order; passing samples are held
//! per prompt until the input ends (spilled to hash buckets on disk past `memory_mb`) and
//! selected in prompt-id order, samples by sample index, so the same samples and config give
//! byte-identical `kept/` whatever order they arrived in (rejects keep input order). Records
//! are serialised on the rayon workers as they are judged: rejects whole, and a passing sample
//! as its SFT example but for the prompt's pass rate (spliced in at selection) when every
//! passing sample is kept (policy `all`, no pass-rate window), else as its record, parsed again
//! at selection. Held samples are bytes, and spill as length-prefixed frames, so nothing held is
//! parsed twice; the two writer threads only compress, `kept/` (written after the input ends,
//! when nothing else is left to run) on zstd's two worker threads. Where that SFT example would
//! be held and the sample is a line of a plain `.jsonl` input in distill's own layout, only
//! where the line is is held: the line is read again and made into its example at selection
//! (so memory stays flat however many samples are kept; checked to be the same sample).

pub mod complete;
pub mod correct;
pub mod format;
pub mod language;
pub mod length;
pub mod readability;
pub mod repetition;
pub mod scan;
pub mod select;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::record::{self, Message};
use crate::store::{self, Format, Manifest, RejectsWriter, ShardedWriter, StoreError, json_out};
use crate::verify::Verifiers;
pub use select::Policy;

/// The checks, in funnel order.
pub const CHECKS: [&str; 7] = ["correct", "format", "complete", "language", "readability", "repetition", "length"];

/// How lengths are counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LengthUnit {
    #[default]
    Chars,
    /// Tokens of `tokenizer` (a `tokenizer.json`).
    Tokens,
}

/// Settings of `distill filter` (a recipe's `[filter]` table). [`Default`] is the one place
/// the defaults live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    /// Sample records: a file, a directory of shards (a collect directory), or `-`.
    pub input: PathBuf,
    /// Output directory (`kept/`, `rejects/`, `funnel.json`, `manifest.json`).
    pub out: PathBuf,
    /// Checks not to run at all (names from `correct, format, complete, language,
    /// readability, repetition, length`).
    pub skip: Vec<String>,
    /// Target languages (ISO 639-1: en, zh, es, ...); empty: each prompt's own language.
    pub languages: Vec<String>,
    /// Minimum share of the chain-of-thought's (and the answer's) words in a target language.
    pub min_language_share: f64,
    /// A foreign span of this many words (or CJK characters) fails the language check.
    pub max_foreign_words: usize,
    pub max_foreign_cjk: usize,
    /// Longest paragraph allowed, in words.
    pub max_paragraph_words: usize,
    /// Largest share of non-alphanumeric, non-space characters in the chain-of-thought.
    pub max_symbol_share: f64,
    /// Allow fenced code blocks inside the chain-of-thought of non-code tasks.
    pub allow_code_in_math: bool,
    /// Repetition thresholds (shares of characters; see `filter::repetition`).
    pub max_dup_line_chars: f64,
    pub max_dup_para_chars: f64,
    pub max_top_ngram: [f64; 3],
    pub max_dup_5gram: f64,
    pub max_dup_10gram: f64,
    /// A unit of 1–4 sentences repeated this many times back to back is a loop.
    pub max_consecutive_repeats: usize,
    /// A periodic tail this long (bytes) is a runaway loop.
    pub min_tail_loop_bytes: usize,
    /// Length unit and bounds (`None`: unbounded).
    pub length_unit: LengthUnit,
    pub tokenizer: Option<PathBuf>,
    pub min_reasoning: Option<usize>,
    pub max_reasoning: Option<usize>,
    pub min_answer: Option<usize>,
    pub max_answer: Option<usize>,
    /// Per-prompt selection.
    pub policy: Policy,
    /// How many samples `k-best` keeps.
    pub k: usize,
    /// The check whose score ranks samples for `k-best` (higher is better).
    pub score: String,
    /// Drop prompts whose pass rate (share of samples judged correct) is outside the window.
    pub min_pass_rate: Option<f64>,
    pub max_pass_rate: Option<f64>,
    /// Memory for held samples before they spill to disk, in MB.
    pub memory_mb: usize,
    /// Samples judged per parallel chunk.
    pub chunk: usize,
    /// Records per output shard.
    pub records_per_shard: u64,
    /// Output format of `kept/` and `rejects/`.
    pub format: Format,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
    /// Column renames applied before the public layouts are recognised: `field = "column"`
    /// reads `column` as distill's `field` (`--map field=column`).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub map: std::collections::BTreeMap<String, String>,
}

impl crate::config::Settings for FilterConfig {
    const TABLE: &'static str = "filter";

    fn derive(&mut self, origins: &mut crate::config::Origins) {
        if self.tokenizer.is_some() && !origins.is_set("length_unit") {
            self.length_unit = LengthUnit::Tokens;
            origins.derived("length_unit", "a tokenizer was given");
        }
    }

    fn validate(&self) -> Result<(), String> {
        if self.input.as_os_str().is_empty() {
            return Err("filter needs `input` (a collect directory, a file of samples, or -)".into());
        }
        if self.out.as_os_str().is_empty() {
            return Err("filter needs `out` (the output directory)".into());
        }
        FilterConfig::validate(self).map_err(|e| e.to_string())
    }
}

impl Default for FilterConfig {
    fn default() -> Self {
        let lang = language::LangParams::default();
        let rep = repetition::RepParams::default();
        FilterConfig {
            input: PathBuf::new(),
            out: PathBuf::new(),
            skip: Vec::new(),
            languages: Vec::new(),
            min_language_share: lang.min_share,
            max_foreign_words: lang.max_span_words,
            max_foreign_cjk: lang.max_span_cjk,
            max_paragraph_words: 800,
            max_symbol_share: 0.45,
            allow_code_in_math: false,
            max_dup_line_chars: rep.dup_line_chars,
            max_dup_para_chars: rep.dup_para_chars,
            max_top_ngram: rep.top_ngram,
            max_dup_5gram: rep.dup_5gram,
            max_dup_10gram: rep.dup_10gram,
            max_consecutive_repeats: rep.max_consecutive,
            min_tail_loop_bytes: rep.tail_bytes,
            length_unit: LengthUnit::Chars,
            tokenizer: None,
            min_reasoning: Some(20),
            max_reasoning: Some(131_072),
            min_answer: Some(1),
            max_answer: Some(32_768),
            policy: Policy::All,
            k: 1,
            score: "length".into(),
            min_pass_rate: None,
            max_pass_rate: None,
            memory_mb: 512,
            chunk: 512,
            records_per_shard: 100_000,
            format: Format::JsonlZst,
            progress: true,
            map: Default::default(),
        }
    }
}

impl FilterConfig {
    /// Checks the settings; the message names the key and the fix.
    pub fn validate(&self) -> Result<(), FilterError> {
        let bad = |m: String| Err(FilterError::Config(m));
        for s in &self.skip {
            if !CHECKS.contains(&s.as_str()) {
                return bad(format!("skip: unknown check `{s}`; known: {}", CHECKS.join(", ")));
            }
        }
        if self.length_unit == LengthUnit::Tokens && self.tokenizer.is_none() {
            return bad("length_unit = \"tokens\" needs --tokenizer tokenizer.json".into());
        }
        if self.policy == Policy::KBest && !CHECKS.contains(&self.score.as_str()) {
            return bad(format!("score: unknown check `{}`; known: {}", self.score, CHECKS.join(", ")));
        }
        for (name, v) in [("min_pass_rate", self.min_pass_rate), ("max_pass_rate", self.max_pass_rate)] {
            if v.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
                return bad(format!("{name} must be in [0, 1]"));
            }
        }
        Ok(())
    }

    fn runs(&self, check: &str) -> bool {
        !self.skip.iter().any(|s| s == check)
    }
}

/// Errors of `filter`.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("filter settings: {0}")]
    Config(String),
    #[error("--tokenizer {path}: {msg}; pass a Hugging Face tokenizer.json")]
    Tokenizer { path: PathBuf, msg: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{id}: cannot serialise the record: {msg}")]
    Serialise { id: String, msg: String },
    #[error(
        "{loc}: the input changed while filter ran (sample {id} is no longer on this line); filter a file that nothing writes to"
    )]
    InputChanged { loc: String, id: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FilterError + '_ {
    move |source| FilterError::Io { path: path.to_path_buf(), source }
}

/// One check's counts in the funnel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CheckCount {
    pub name: String,
    /// Samples whose first failure this check was.
    pub removed_samples: u64,
    /// Prompts that lost their last surviving sample at this check.
    pub removed_prompts: u64,
    /// Samples that failed this check at all.
    pub failed_samples: u64,
    /// Share of the checking time spent in this check.
    pub time_share: f64,
}

/// `funnel.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Funnel {
    pub records_in: u64,
    pub bytes_in: u64,
    pub invalid: u64,
    pub samples_in: u64,
    pub prompts_in: u64,
    /// Samples of tasks with no verifier (`open`), passed by `correct` and counted apart.
    pub unverified: u64,
    pub checks: Vec<CheckCount>,
    pub selection_policy: String,
    pub selection_removed_samples: u64,
    pub selection_removed_prompts: u64,
    pub samples_out: u64,
    pub prompts_out: u64,
    pub seconds: f64,
}

impl Funnel {
    /// The table printed on stderr.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let pct = |n: u64| if self.samples_in == 0 { 0.0 } else { 100.0 * n as f64 / self.samples_in as f64 };
        s.push_str(&format!("{:<14} {:>10} {:>9} {:>10} {:>8}\n", "stage", "samples", "prompts", "failed", "time"));
        s.push_str(&format!("{:<14} {:>10} {:>9}\n", "in", self.samples_in, self.prompts_in));
        if self.invalid > 0 {
            s.push_str(&format!("{:<14} {:>10}   (not samples: see rejects/invalid.jsonl)\n", "invalid", self.invalid));
        }
        for c in &self.checks {
            s.push_str(&format!(
                "{:<14} {:>10} {:>9} {:>10} {:>7.1}%\n",
                c.name,
                format!("-{}", c.removed_samples),
                format!("-{}", c.removed_prompts),
                c.failed_samples,
                100.0 * c.time_share
            ));
        }
        s.push_str(&format!(
            "{:<14} {:>10} {:>9}\n",
            format!("select:{}", self.selection_policy),
            format!("-{}", self.selection_removed_samples),
            format!("-{}", self.selection_removed_prompts)
        ));
        s.push_str(&format!(
            "{:<14} {:>10} {:>9}   ({:.1}% of samples kept; {} unverified open-task samples)\n",
            "out",
            self.samples_out,
            self.prompts_out,
            pct(self.samples_out),
            self.unverified
        ));
        let mbs = self.bytes_in as f64 / 1e6 / self.seconds.max(1e-9);
        s.push_str(&format!(
            "{:.1} s, {:.1} MB/s, {:.0} samples/s\n",
            self.seconds,
            mbs,
            self.samples_in as f64 / self.seconds.max(1e-9)
        ));
        s
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub funnel: Funnel,
}

/// The reasoning and answer of a sample, however it was stored (borrowed from the record
/// where they are stored as they are).
fn split_response(rec: &Map<String, Value>) -> Option<(Cow<'_, str>, Cow<'_, str>)> {
    let s = |k: &str| rec.get(k).and_then(Value::as_str);
    let reasoning = s("reasoning").or_else(|| s("reasoning_content")).unwrap_or("");
    let content = s("content").or_else(|| s("response"));
    if content.is_none() && reasoning.is_empty() {
        return None;
    }
    let content = content.unwrap_or("");
    if !reasoning.trim().is_empty() {
        return Some((reasoning.into(), content.into()));
    }
    if let Some(end) = content.find("<|end_of_thought|>") {
        let head = &content[..end];
        let r = head.find("<|begin_of_thought|>").map_or(head, |b| &head[b + "<|begin_of_thought|>".len()..]);
        let mut a = &content[end + "<|end_of_thought|>".len()..];
        if let Some(x) = a.find("<|begin_of_solution|>") {
            a = &a[x + "<|begin_of_solution|>".len()..];
        }
        let a = a.replace("<|end_of_solution|>", "");
        return Some((r.trim().into(), a.trim().to_string().into()));
    }
    if content.contains("</think>") {
        let (r, a) = record::split_thinking(content);
        return Some((r.into(), a.into()));
    }
    let t = content.trim_start();
    for open in ["<think>", "<|begin_of_thought|>"] {
        if let Some(rest) = t.strip_prefix(open) {
            return Some((rest.trim().into(), Cow::Borrowed("")));
        }
    }
    Some((Cow::Borrowed(""), content.into()))
}

/// Per-thread buffers.
#[derive(Default)]
struct Scratch {
    lang: language::LangScratch,
    rep: repetition::RepScratch,
}

/// A judged sample.
struct Judged {
    loc: String,
    /// Where the sample's line can be read again (see [`Body::Span`]).
    span: Option<(Arc<PathBuf>, u64, store::Span)>,
    id: String,
    prompt_id: String,
    sample: u32,
    record: Map<String, Value>,
    /// Index of the first failed check (`CHECKS.len()`: none).
    first_fail: usize,
    failed: [bool; 7],
    correct: bool,
    unverified: bool,
    len: usize,
    score: f64,
    bytes: usize,
    nanos: [u64; 7],
    /// A rejected sample's record, ready for the rejects writer (`record` is then empty).
    out: Option<Out>,
    /// A passing sample, ready to be held (`record` is then empty).
    body: Option<Body>,
}

enum Item {
    Judged(Box<Judged>),
    Invalid(StoreError, Option<Map<String, Value>>),
}

struct Ctx<'a> {
    cfg: &'a FilterConfig,
    verifiers: &'a Verifiers,
    tokenizer: Option<tokenizers::Tokenizer>,
    lang: language::LangParams,
    rep: repetition::RepParams,
    read: readability::ReadParams,
    len: length::LenParams,
}

fn count_len(ctx: &Ctx, text: &str) -> usize {
    match (&ctx.tokenizer, ctx.cfg.length_unit) {
        (Some(t), LengthUnit::Tokens) => t.encode(text, false).map(|e| e.len()).unwrap_or(text.len() / 4),
        _ => text.chars().count(),
    }
}

fn prompt_id_of(rec: &Map<String, Value>) -> Option<String> {
    match rec.get("prompt_id") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// A sample's prompt id (its own, else a hash of its prompt), index among the prompt's
/// samples, and id (its own `id`, else `prompt_id/sample`).
fn sample_ids(rec: &Map<String, Value>, id: Option<String>) -> (String, u32, String) {
    let prompt_id = prompt_id_of(rec).unwrap_or_else(|| prompt_hash(rec));
    let sample = rec.get("sample").and_then(Value::as_u64).unwrap_or(0) as u32;
    let id = id.unwrap_or_else(|| format!("{prompt_id}/{sample}"));
    (prompt_id, sample, id)
}

/// A prompt id from a hash of the normalised prompt, for samples without one.
fn prompt_hash(rec: &Map<String, Value>) -> String {
    use sha2::{Digest, Sha256};
    let text = rec.get("prompt").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| {
        rec.get("messages")
            .and_then(Value::as_array)
            .and_then(|m| m.iter().rev().find(|x| x.get("role").and_then(Value::as_str) == Some("user")))
            .and_then(|m| m.get("content"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    });
    let norm: String = text.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    format!("prompt-{}", &store::hex(&Sha256::digest(norm.as_bytes()))[..16])
}

fn judge(ctx: &Ctx, raw: store::RawRecord, scratch: &mut Scratch) -> Item {
    let cfg = ctx.cfg;
    let loc = raw.loc.to_string();
    let span = raw.span.map(|s| (raw.loc.file.clone(), raw.loc.line, s));
    let id = raw.id();
    let mut rec = raw.value;
    let Some((reasoning, answer)) = split_response(&rec).map(|(r, a)| (r.into_owned(), a.into_owned())) else {
        let err = StoreError::Schema {
            loc: raw.loc,
            id: store::IdSuffix(id),
            msg: "not a sample: no `content`, `response` or `reasoning`; filter reads collect's Sample records".into(),
        };
        return Item::Invalid(err, Some(rec));
    };
    let bytes = reasoning.len() + answer.len() + rec.get("prompt").and_then(Value::as_str).map_or(0, str::len);
    let task = rec.get("task").and_then(Value::as_str).unwrap_or("open").to_string();
    let (prompt_id, sample, id) = sample_ids(&rec, id);
    let mut checks: BTreeMap<String, record::Check> = BTreeMap::new();
    let mut nanos = [0u64; 7];
    let mut failed = [false; 7];
    let mut reason: Option<String> = None;
    let mut add = |i: usize, c: record::Check, started: Instant, checks: &mut BTreeMap<String, record::Check>| {
        nanos[i] = started.elapsed().as_nanos() as u64;
        if !c.pass {
            failed[i] = true;
            if reason.is_none() {
                reason = Some(format!("{}: {}", CHECKS[i], c.detail.as_deref().unwrap_or("failed")));
            }
        }
        checks.insert(CHECKS[i].to_string(), c);
    };
    let ok = |score: Option<f64>, detail: Option<String>| record::Check { pass: true, score, detail };
    let fail = |score: Option<f64>, detail: String| record::Check { pass: false, score, detail: Some(detail) };

    // correct: reuse a verify verdict, else run the verifier (through the seam).
    let t = Instant::now();
    let old = rec.get("verdict").and_then(Value::as_object);
    let reused = old.and_then(|v| v.get("pass")).and_then(Value::as_bool).is_some();
    let (pass, vreason, extracted) = if let Some(v) = old.filter(|_| reused) {
        let mut extracted = v.get("extracted").and_then(Value::as_str).map(str::to_string);
        if extracted.is_none() && task == "math" && cfg.runs("format") && !answer.is_empty() {
            // Verdicts from elsewhere (OpenR1-Math's `correctness_math_verify`) carry no
            // extraction: ask the verifier for it, keeping their judgement.
            let mut r2 = rec.clone();
            r2.insert("content".into(), Value::String(answer.clone()));
            extracted = ctx.verifiers.verify(&r2).extracted;
        }
        (v.get("pass").and_then(Value::as_bool), v.get("reason").and_then(Value::as_str).map(str::to_string), extracted)
    } else if cfg.runs("correct") || (task == "math" && cfg.runs("format")) {
        let v = if rec.get("content").and_then(Value::as_str).is_some() || answer.is_empty() {
            ctx.verifiers.verify(&rec)
        } else {
            let mut r2 = rec.clone();
            r2.insert("content".into(), Value::String(answer.clone()));
            ctx.verifiers.verify(&r2)
        };
        crate::verify::apply_verdict(&mut rec, &v);
        (v.pass, v.reason, v.extracted)
    } else {
        (None, None, None)
    };
    let verdict_correct = correct::check(pass, vreason.as_deref(), &task);
    let unverified = verdict_correct == correct::Correct::Unverified;
    let is_correct = verdict_correct != correct::Correct::Pass && !unverified;
    let correct_ok = !is_correct;
    if cfg.runs("correct") {
        let c = match &verdict_correct {
            correct::Correct::Pass => ok(Some(1.0), None),
            correct::Correct::Unverified => ok(None, Some("no verifier for this task (counted apart)".into())),
            correct::Correct::Fail(r) => fail(Some(0.0), r.clone()),
        };
        add(0, c, t, &mut checks);
    }
    // format
    if cfg.runs("format") {
        let t = Instant::now();
        let c = match format::check(&reasoning, &answer, task == "math", extracted.as_deref()) {
            Ok(()) => ok(None, None),
            Err(e) => fail(None, e),
        };
        add(1, c, t, &mut checks);
    }
    if cfg.runs("complete") {
        let t = Instant::now();
        let fr = rec.get("finish_reason").and_then(Value::as_str);
        let c = match complete::check(fr, &reasoning, &answer) {
            Ok(()) => ok(None, None),
            Err(e) => fail(None, e),
        };
        add(2, c, t, &mut checks);
    }
    let mut lang_share = 1.0;
    if cfg.runs("language") {
        let t = Instant::now();
        let detected;
        let targets: Vec<&str> = if cfg.languages.is_empty() {
            detected = language::detect(rec.get("prompt").and_then(Value::as_str).unwrap_or(""));
            vec![detected]
        } else {
            cfg.languages.iter().map(String::as_str).collect()
        };
        let r = language::analyse(&reasoning, &targets, &mut scratch.lang);
        let a = language::analyse(&answer, &targets, &mut scratch.lang);
        lang_share = r.share().min(a.share());
        let c = if !r.pass(&ctx.lang) {
            fail(Some(lang_share), format!("chain-of-thought: {}", r.detail(&reasoning)))
        } else if !a.pass(&ctx.lang) {
            fail(Some(lang_share), format!("answer: {}", a.detail(&answer)))
        } else {
            ok(Some(lang_share), None)
        };
        add(3, c, t, &mut checks);
    }
    let mut sym_score = 1.0;
    if cfg.runs("readability") {
        let t = Instant::now();
        let r = readability::check(&reasoning, &answer, task == "code", &ctx.read);
        sym_score = 1.0 - r.symbol_share;
        let c = match r.problem {
            None => ok(Some(sym_score), None),
            Some(p) => fail(Some(sym_score), p),
        };
        add(4, c, t, &mut checks);
    }
    let mut rep_score = 1.0;
    if cfg.runs("repetition") {
        let t = Instant::now();
        let r = repetition::check(&reasoning, &ctx.rep, &mut scratch.rep);
        rep_score = 1.0 - r.dup_10gram;
        let c = match r.problem {
            None => ok(Some(rep_score), None),
            Some(p) => fail(Some(rep_score), p),
        };
        add(5, c, t, &mut checks);
    }
    let t = Instant::now();
    let (rl, al) = (count_len(ctx, &reasoning), count_len(ctx, &answer));
    if cfg.runs("length") {
        let unit = if cfg.length_unit == LengthUnit::Tokens { "tokens" } else { "chars" };
        let c = match length::check(rl, al, &ctx.len, unit) {
            Ok(()) => ok(Some((rl + al) as f64), None),
            Err(e) => fail(Some((rl + al) as f64), e),
        };
        add(6, c, t, &mut checks);
    }
    let first_fail = failed.iter().position(|f| *f).unwrap_or(CHECKS.len());
    let score = match cfg.score.as_str() {
        "language" => lang_share,
        "readability" => sym_score,
        "repetition" => rep_score,
        "correct" => f64::from(u8::from(correct_ok)),
        _ => (rl + al) as f64,
    };
    // The verdict: verify's fields stay at the top; filter adds checks, kept, reject_reason.
    let mut v = match rec.shift_remove("verdict") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    if !v.contains_key("pass") {
        v.insert("pass".into(), Value::Bool(pass.unwrap_or(false)));
        v.insert("extracted".into(), extracted.map_or(Value::Null, Value::String));
        v.insert("reason".into(), vreason.map_or(Value::Null, Value::String));
    }
    v.insert("checks".into(), serde_json::to_value(&checks).unwrap_or(Value::Null));
    v.insert("kept".into(), Value::Bool(false));
    v.insert("reject_reason".into(), reason.map_or(Value::Null, Value::String));
    rec.insert("verdict".into(), Value::Object(v));
    Item::Judged(Box::new(Judged {
        loc,
        span,
        id,
        prompt_id,
        sample,
        record: rec,
        first_fail,
        failed,
        correct: correct_ok && !unverified,
        unverified,
        len: rl + al,
        score,
        bytes,
        nanos,
        out: None,
        body: None,
    }))
}

/// Fields of a Sample that an SFT example does not carry.
const SAMPLE_FIELDS: [&str; 21] = [
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
    "reasoning_content",
    "content",
    "response",
    "finish_reason",
    "usage",
    "teacher",
    "params",
    "latency_ms",
    "request_sha256",
    "verdict",
];

/// The parts of a kept sample's SFT example: its leading fields (`id`, `messages`, `source`,
/// `task`, `prompt_id`), the sample's own `meta` (without `pass_rate` and `n_samples`, which
/// selection adds), and the fields carried from the sample that an example has no slot for.
fn sft_parts(
    rec: &Map<String, Value>,
    id: &str,
    prompt_id: &str,
) -> (Map<String, Value>, Map<String, Value>, Map<String, Value>) {
    let (reasoning, answer) = split_response(rec).unwrap_or_default();
    let mut messages: Vec<Value> = rec
        .get("messages")
        .and_then(Value::as_array)
        .map(|m| m.iter().filter(|x| x.get("role").and_then(Value::as_str) != Some("assistant")).cloned().collect())
        .unwrap_or_default();
    if messages.is_empty() {
        let p = rec.get("prompt").and_then(Value::as_str).unwrap_or("");
        messages.push(serde_json::to_value(Message::new("user", p)).unwrap_or(Value::Null));
    }
    messages.push(json!({"role": "assistant", "content": record::assistant_turn(&reasoning, &answer)}));
    let mut head = Map::new();
    head.insert("id".into(), Value::String(id.to_string()));
    head.insert("messages".into(), Value::Array(messages));
    if let Some(s) = rec.get("source").filter(|s| !s.is_null()) {
        head.insert("source".into(), s.clone());
    }
    head.insert("task".into(), rec.get("task").cloned().unwrap_or_else(|| Value::String("open".into())));
    head.insert("prompt_id".into(), Value::String(prompt_id.to_string()));
    let mut meta = match rec.get("meta") {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    meta.shift_remove("pass_rate");
    meta.shift_remove("n_samples");
    let extra =
        rec.iter().filter(|(k, _)| !SAMPLE_FIELDS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
    (head, meta, extra)
}

/// The SFT example of a kept sample.
fn sft_example(rec: &Map<String, Value>, id: &str, prompt_id: &str, pass_rate: f64, n: u32) -> Value {
    let (mut out, mut meta, extra) = sft_parts(rec, id, prompt_id);
    meta.insert("pass_rate".into(), json!(pass_rate));
    meta.insert("n_samples".into(), json!(n));
    out.insert("meta".into(), Value::Object(meta));
    out.extend(extra);
    Value::Object(out)
}

/// [`sft_example`] serialised before the prompt's pass rate is known: the line, and where
/// `pass_rate` and `n_samples` go in it ([`Body::finish`]); the bytes then equal
/// `serde_json::to_vec(&sft_example(..))`.
fn sft_line(rec: &Map<String, Value>, id: &str, prompt_id: &str, text: usize) -> SftLine {
    let (head, meta, extra) = sft_parts(rec, id, prompt_id);
    let mut line = Vec::with_capacity(text + text / 16 + 1024);
    json_out::write_map(&mut line, &head);
    line.pop(); // the head's `}`
    line.extend_from_slice(b",\"meta\":");
    json_out::write_map(&mut line, &meta);
    line.pop(); // the meta's `}`
    let at = line.len();
    line.push(b'}');
    for (k, v) in &extra {
        line.push(b',');
        json_out::write_str(&mut line, k);
        line.push(b':');
        json_out::write_value(&mut line, v);
    }
    line.push(b'}');
    (line, at, meta.is_empty())
}

/// An SFT example's line but for the meta's `pass_rate` and `n_samples`, where they go in it,
/// and whether the meta is otherwise empty ([`Body::finish`]).
type SftLine = (Vec<u8>, usize, bool);

/// What a held sample becomes at selection.
enum Body {
    /// Its SFT example, serialised but for the meta's `pass_rate` and `n_samples`, which go
    /// in at byte `at`: used when every held sample is kept (policy `all`, no pass-rate
    /// window) and the output is JSONL, so that nothing is parsed again at the end.
    Example { line: Vec<u8>, at: usize, empty_meta: bool },
    /// Where the sample's line is in a plain `.jsonl` input (line `line` of `file`), for an
    /// [`Body::Example`] made at selection from the line read again: a sample of distill's own
    /// layout, kept as [`Body::Example`] is, whose input can be read twice. Nothing of it is
    /// held meanwhile, so filter's memory and disk do not grow with the samples it keeps (the
    /// text of a kept sample is ~20 KB: held, 100k samples were ~1.6 GB or a spill to disk).
    Span { file: Arc<PathBuf>, line: u64, span: store::Span },
    /// The sample record as JSON (selection may reject it, or the output is Parquet).
    Record(Vec<u8>),
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Body::Example { line, .. } => line.len(),
            Body::Span { file, .. } => file.as_os_str().len(),
            Body::Record(r) => r.len(),
        }
    }

    /// The kept example's line, with the prompt's pass rate and sample count.
    fn finish(line: &[u8], at: usize, empty_meta: bool, pass_rate: f64, n: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(line.len() + 48);
        out.extend_from_slice(&line[..at]);
        if !empty_meta {
            out.push(b',');
        }
        out.extend_from_slice(b"\"pass_rate\":");
        // serde_json writes an f64 as `json!(f64)` would (finite: ryu; else null).
        let _ = serde_json::to_writer(&mut out, &json!(pass_rate));
        out.extend_from_slice(format!(",\"n_samples\":{n}").as_bytes());
        out.extend_from_slice(&line[at..]);
        out
    }
}

/// What is known of a prompt while streaming.
#[derive(Default)]
struct PromptState {
    n: u32,
    correct: u32,
    /// Largest first-failure index over its samples (CHECKS.len(): some sample passed all).
    max_ff: usize,
    /// Index into `held` when its candidates are in memory.
    held: Option<usize>,
}

/// A passing sample waiting for its prompt's selection.
struct Held {
    prompt_id: String,
    id: String,
    sample: u32,
    seq: u64,
    len: usize,
    score: f64,
    body: Body,
}

impl Held {
    /// Appends the spill frame of this sample: little-endian lengths and numbers, then the
    /// bytes (no JSON to parse when it is read back).
    fn frame(&self, out: &mut Vec<u8>) {
        let span_bytes;
        let (tag, at, bytes) = match &self.body {
            Body::Example { line, at, empty_meta } => (1 + u8::from(*empty_meta), *at as u64, line),
            Body::Record(r) => (0u8, 0, r),
            Body::Span { file, line, span } => {
                // The offset in `at`; the line number, the length and the path in the bytes.
                let mut b = line.to_le_bytes().to_vec();
                b.extend_from_slice(&span.len.to_le_bytes());
                b.extend_from_slice(file.as_os_str().as_encoded_bytes());
                span_bytes = b;
                (3u8, span.offset, &span_bytes)
            }
        };
        for s in [self.prompt_id.as_bytes(), self.id.as_bytes()] {
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s);
        }
        out.extend_from_slice(&self.sample.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&(self.len as u64).to_le_bytes());
        out.extend_from_slice(&self.score.to_le_bytes());
        out.push(tag);
        out.extend_from_slice(&at.to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(bytes);
    }

    /// Reads one frame from the front of `b` (advancing it); `None` at a torn frame.
    fn unframe(b: &mut &[u8]) -> Option<Held> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (h, t) = (b.get(..n)?, b.get(n..)?);
            *b = t;
            Some(h)
        }
        fn u64_(b: &mut &[u8]) -> Option<u64> {
            take(b, 8)?.try_into().ok().map(u64::from_le_bytes)
        }
        fn text(b: &mut &[u8]) -> Option<String> {
            let n = usize::try_from(u64_(b)?).ok()?;
            String::from_utf8(take(b, n)?.to_vec()).ok()
        }
        let prompt_id = text(b)?;
        let id = text(b)?;
        let sample = u32::from_le_bytes(take(b, 4)?.try_into().ok()?);
        let seq = u64_(b)?;
        let len = usize::try_from(u64_(b)?).ok()?;
        let score = f64::from_bits(u64_(b)?);
        let tag = take(b, 1)?[0];
        let at = usize::try_from(u64_(b)?).ok()?;
        let n = usize::try_from(u64_(b)?).ok()?;
        let bytes = take(b, n)?.to_vec();
        let body = match tag {
            0 => Body::Record(bytes),
            3 => {
                let line = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
                let len = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?);
                #[cfg(unix)]
                let path = {
                    use std::os::unix::ffi::OsStrExt;
                    PathBuf::from(std::ffi::OsStr::from_bytes(bytes.get(12..)?))
                };
                #[cfg(not(unix))]
                let path = PathBuf::from(String::from_utf8(bytes.get(12..)?.to_vec()).ok()?);
                let span = store::Span { offset: at as u64, len };
                Body::Span { file: Arc::new(path), line, span }
            }
            t => Body::Example { line: bytes, at, empty_meta: t == 2 },
        };
        Some(Held { prompt_id, id, sample, seq, len, score, body })
    }
}

const BUCKETS: usize = 64;

/// Held samples past the memory budget, in hash buckets of their prompt ids on disk (one
/// bucket is read back at a time), as [`Held::frame`]s.
struct Spill {
    dir: tempfile::TempDir,
    files: Vec<BufWriter<std::fs::File>>,
    buf: Vec<u8>,
}

impl Spill {
    fn new(out: &Path) -> Result<Spill, FilterError> {
        let dir = tempfile::Builder::new().prefix(".filter-spill").tempdir_in(out).map_err(io_err(out))?;
        let mut files = Vec::with_capacity(BUCKETS);
        for b in 0..BUCKETS {
            let p = dir.path().join(format!("{b:02}.bin"));
            files.push(BufWriter::new(std::fs::File::create(&p).map_err(io_err(&p))?));
        }
        Ok(Spill { dir, files, buf: Vec::new() })
    }

    fn bucket(prompt_id: &str) -> usize {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in prompt_id.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        (h % BUCKETS as u64) as usize
    }

    /// Writes held samples to their buckets, in order.
    fn write(&mut self, held: Vec<Held>) -> Result<(), FilterError> {
        for h in held {
            self.buf.clear();
            h.frame(&mut self.buf);
            let f = &mut self.files[Spill::bucket(&h.prompt_id)];
            f.write_all(&self.buf).map_err(io_err(self.dir.path()))?;
        }
        Ok(())
    }

    /// Reads bucket `b` back: its held samples grouped by prompt, in file order.
    fn read(&self, b: usize) -> Result<HashMap<String, Vec<Held>>, FilterError> {
        let p = self.dir.path().join(format!("{b:02}.bin"));
        let bytes = std::fs::read(&p).map_err(io_err(&p))?;
        let mut rest = &bytes[..];
        let mut groups: HashMap<String, Vec<Held>> = HashMap::new();
        while !rest.is_empty() {
            let h = Held::unframe(&mut rest).ok_or_else(|| FilterError::Serialise {
                id: p.display().to_string(),
                msg: "torn spill frame (was the spill directory changed while filter ran?)".into(),
            })?;
            groups.entry(h.prompt_id.clone()).or_default().push(h);
        }
        drop(bytes);
        let _ = std::fs::remove_file(&p);
        Ok(groups)
    }
}

/// A record on its way to a writer: serialised already where the output is JSONL (by
/// whichever thread made it, so the writer thread only compresses), else as a value.
enum Out {
    Line(Vec<u8>),
    Value(Value),
}

impl Out {
    /// `lines`: the output is JSONL, whose writer takes `serde_json::to_vec` bytes as they are.
    /// `text`: about how many bytes of text the record holds (the buffer starts that big,
    /// rather than doubling its way up from nothing).
    fn new(v: Value, lines: bool, text: usize) -> Out {
        if !lines {
            return Out::Value(v);
        }
        let mut buf = Vec::with_capacity(text + text / 16 + 1024);
        json_out::write_value(&mut buf, &v);
        Out::Line(buf)
    }
}

/// A [`ShardedWriter`] on its own thread (compressing overlaps the checks); records are
/// written in the order they are sent, in batches.
struct WriterThread {
    tx: Option<std::sync::mpsc::SyncSender<Vec<Out>>>,
    handle: Option<std::thread::JoinHandle<Result<Vec<store::ShardInfo>, StoreError>>>,
}

impl WriterThread {
    fn spawn(mut w: ShardedWriter) -> WriterThread {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Out>>(4);
        let handle = std::thread::spawn(move || {
            for batch in rx {
                for out in batch {
                    match out {
                        Out::Line(l) => w.write_line(&l)?,
                        Out::Value(v) => w.write_value(&v)?,
                    }
                }
            }
            w.finish()
        });
        WriterThread { tx: Some(tx), handle: Some(handle) }
    }

    fn send(&mut self, batch: Vec<Out>) -> Result<(), FilterError> {
        if batch.is_empty() || self.tx.as_ref().is_some_and(|tx| tx.send(batch).is_ok()) {
            return Ok(());
        }
        // The thread stopped early: it holds the error.
        self.join().map(|_| ())
    }

    fn join(&mut self) -> Result<Vec<store::ShardInfo>, FilterError> {
        self.tx = None;
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => Ok(r?),
            Some(Err(p)) => std::panic::resume_unwind(p),
            None => Err(FilterError::Config("output writer already stopped".into())),
        }
    }

    fn finish(mut self) -> Result<Vec<store::ShardInfo>, FilterError> {
        self.join()
    }
}

struct Outputs {
    kept: WriterThread,
    rejects: WriterThread,
    invalid: RejectsWriter,
    /// JSONL outputs: records are serialised before they reach the writers.
    lines: bool,
}

/// What the selection of one prompt writes and counts.
#[derive(Default)]
struct Selected {
    kept: Vec<Out>,
    rejects: Vec<Out>,
    /// Whether any sample was kept.
    prompt_kept: bool,
    removed: u64,
}

/// The input files that [`Body::Span`]s point into, each opened once.
#[derive(Default)]
struct SpanFiles(Mutex<HashMap<Arc<PathBuf>, Arc<std::fs::File>>>);

impl SpanFiles {
    fn get(&self, path: &Arc<PathBuf>) -> Result<Arc<std::fs::File>, FilterError> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = open.get(path) {
            return Ok(f.clone());
        }
        let f = Arc::new(std::fs::File::open(&**path).map_err(io_err(path))?);
        open.insert(path.clone(), f.clone());
        Ok(f)
    }

    /// The example line of a [`Body::Span`] ([`sft_line`]): its line read again, checked to
    /// be the same sample, made into the example as it would have been at first.
    fn example(&self, file: &Arc<PathBuf>, line: u64, span: store::Span, h: &Held) -> Result<SftLine, FilterError> {
        let f = self.get(file)?;
        let loc = store::Loc { file: file.clone(), line };
        let raw = store::reread(&f, loc.clone(), span)
            .map_err(|_| FilterError::InputChanged { loc: loc.to_string(), id: h.id.clone() })?;
        let (prompt_id, sample, id) = sample_ids(&raw.value, raw.id());
        if id != h.id || prompt_id != h.prompt_id || sample != h.sample {
            return Err(FilterError::InputChanged { loc: loc.to_string(), id: h.id.clone() });
        }
        Ok(sft_line(&raw.value, &h.id, &h.prompt_id, span.len as usize))
    }
}

/// Runs the selection of one prompt's held samples (on any thread).
fn select_prompt(
    cfg: &FilterConfig,
    st: &PromptState,
    mut held: Vec<Held>,
    lines: bool,
    files: &SpanFiles,
) -> Result<Selected, FilterError> {
    let mut out = Selected::default();
    if held.is_empty() {
        return Ok(out);
    }
    // Sample order, not arrival order: the same samples in any input order select alike.
    held.sort_by(|a, b| (a.sample, &a.id, a.seq).cmp(&(b.sample, &b.id, b.seq)));
    let pass_rate = if st.n == 0 { 0.0 } else { f64::from(st.correct) / f64::from(st.n) };
    let window = select::outside_window(pass_rate, cfg.min_pass_rate, cfg.max_pass_rate);
    let keep: Vec<usize> = if window.is_some() {
        Vec::new()
    } else {
        let cands: Vec<select::Candidate> = held
            .iter()
            .map(|h| select::Candidate { sample: h.sample, seq: h.seq, len: h.len, score: h.score })
            .collect();
        select::select(cfg.policy, cfg.k, &cands)
    };
    out.prompt_kept = !keep.is_empty();
    for (i, h) in held.into_iter().enumerate() {
        let record = match &h.body {
            // Every held sample is kept here (see `Body::Example` and `Body::Span`).
            Body::Example { line, at, empty_meta } => {
                out.kept.push(Out::Line(Body::finish(line, *at, *empty_meta, pass_rate, st.n)));
                continue;
            }
            Body::Span { file, line, span } => {
                let (line, at, empty_meta) = files.example(file, *line, *span, &h)?;
                out.kept.push(Out::Line(Body::finish(&line, at, empty_meta, pass_rate, st.n)));
                continue;
            }
            Body::Record(r) => serde_json::from_slice::<Map<String, Value>>(r)
                .map_err(|e| FilterError::Serialise { id: h.id.clone(), msg: e.to_string() })?,
        };
        if keep.binary_search(&i).is_ok() {
            let ex = sft_example(&record, &h.id, &h.prompt_id, pass_rate, st.n);
            out.kept.push(Out::new(ex, lines, h.len));
        } else {
            out.removed += 1;
            let why = match &window {
                Some(w) => format!("selection: {w}"),
                None => format!("selection: not chosen by policy {}", policy_name(cfg.policy)),
            };
            let mut rec = record;
            if let Some(Value::Object(v)) = rec.get_mut("verdict") {
                v.insert("reject_reason".into(), Value::String(why));
                v.insert("kept".into(), Value::Bool(false));
            }
            out.rejects.push(Out::new(Value::Object(rec), lines, h.len));
        }
    }
    Ok(out)
}

/// Runs the selection of prompts (in the order given) in parallel, a chunk of about
/// `cfg.chunk` samples at a time, and writes the results in that order.
fn finish_prompts(
    cfg: &FilterConfig,
    mut groups: Vec<(&PromptState, Vec<Held>)>,
    outs: &mut Outputs,
    funnel: &mut Funnel,
) -> Result<(), FilterError> {
    let lines = outs.lines;
    let files = SpanFiles::default();
    groups.reverse();
    while !groups.is_empty() {
        let (mut at, mut n) = (groups.len(), 0usize);
        while at > 0 && n < cfg.chunk.max(1) {
            at -= 1;
            n += groups[at].1.len();
        }
        let mut chunk = groups.split_off(at);
        chunk.reverse();
        let done: Vec<Result<Selected, FilterError>> =
            chunk.into_par_iter().map(|(st, held)| select_prompt(cfg, st, held, lines, &files)).collect();
        let (mut kept, mut rejects) = (Vec::new(), Vec::new());
        for d in done {
            let d = d?;
            if d.kept.is_empty() && d.rejects.is_empty() {
                continue;
            }
            if d.prompt_kept {
                funnel.prompts_out += 1;
            } else {
                funnel.selection_removed_prompts += 1;
            }
            funnel.samples_out += d.kept.len() as u64;
            funnel.selection_removed_samples += d.removed;
            kept.extend(d.kept);
            rejects.extend(d.rejects);
        }
        outs.kept.send(kept)?;
        outs.rejects.send(rejects)?;
    }
    Ok(())
}

fn policy_name(p: Policy) -> String {
    serde_json::to_value(p).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// Runs `filter` with the verifiers given (the caller picks them; tests plant their own).
/// zstd level of `kept/` and `rejects/` (`.jsonl.zst`): level 3 spent ~11% of the run's CPU
/// compressing; level 1 about half that, for files ~8% larger (dedup reads them once).
const OUT_LEVEL: i32 = 1;

pub fn run(cfg: &FilterConfig, verifiers: &Verifiers) -> Result<Report, FilterError> {
    let _small_pages = crate::alloc::NoHugePages::new();
    cfg.validate()?;
    let started = Instant::now();
    let tokenizer = match &cfg.tokenizer {
        Some(p) => Some(
            tokenizers::Tokenizer::from_file(p)
                .map_err(|e| FilterError::Tokenizer { path: p.clone(), msg: e.to_string() })?,
        ),
        None => None,
    };
    let ctx = Ctx {
        cfg,
        verifiers,
        tokenizer,
        lang: language::LangParams {
            min_share: cfg.min_language_share,
            max_span_words: cfg.max_foreign_words,
            max_span_cjk: cfg.max_foreign_cjk,
        },
        rep: repetition::RepParams {
            dup_line_chars: cfg.max_dup_line_chars,
            dup_para_chars: cfg.max_dup_para_chars,
            top_ngram: cfg.max_top_ngram,
            dup_5gram: cfg.max_dup_5gram,
            dup_10gram: cfg.max_dup_10gram,
            max_consecutive: cfg.max_consecutive_repeats,
            tail_bytes: cfg.min_tail_loop_bytes,
        },
        read: readability::ReadParams {
            max_paragraph_words: cfg.max_paragraph_words,
            max_symbol_share: cfg.max_symbol_share,
            allow_code_in_math: cfg.allow_code_in_math,
        },
        len: length::LenParams {
            min_reasoning: cfg.min_reasoning,
            max_reasoning: cfg.max_reasoning,
            min_answer: cfg.min_answer,
            max_answer: cfg.max_answer,
        },
    };
    let out = &cfg.out;
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    for sub in ["kept", "rejects"] {
        // A previous run's shards would mix with this run's.
        let d = out.join(sub);
        if d.exists() {
            std::fs::remove_dir_all(&d).map_err(io_err(&d))?;
        }
    }
    let mut outs = Outputs {
        // kept/ is written after the input ends, when nothing else is left to run beside it.
        kept: WriterThread::spawn(
            ShardedWriter::new(&out.join("kept"), "kept", cfg.format, cfg.records_per_shard)?
                .parallel()
                .level(OUT_LEVEL),
        ),
        rejects: WriterThread::spawn(
            ShardedWriter::new(&out.join("rejects"), "samples", cfg.format, cfg.records_per_shard)?.level(OUT_LEVEL),
        ),
        invalid: RejectsWriter::new(out.join("rejects").join("invalid.jsonl")),
        lines: cfg.format != Format::Parquet,
    };
    let lines = outs.lines;
    // Every sample that passes the checks is kept: its example can be serialised right away.
    let all_kept = lines && cfg.policy == Policy::All && cfg.min_pass_rate.is_none() && cfg.max_pass_rate.is_none();
    let mut funnel = Funnel { selection_policy: policy_name(cfg.policy), ..Funnel::default() };
    let mut counts: Vec<CheckCount> =
        CHECKS.iter().map(|c| CheckCount { name: c.to_string(), ..CheckCount::default() }).collect();
    let mut nanos = [0u64; 7];
    let mut prompts: HashMap<String, PromptState> = HashMap::new();
    let mut held: Vec<Vec<Held>> = Vec::new();
    let mut held_bytes = 0usize;
    let mut spill: Option<Spill> = None;
    let mut spilling = false;
    let limit = cfg.memory_mb << 20;
    let mut seq = 0u64;

    let pb = if cfg.progress {
        let pb = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        pb.set_style(
            indicatif::ProgressStyle::with_template("filter {spinner} {pos} samples, {per_sec} ({elapsed})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };

    let chunk = cfg.chunk.max(1);
    let mut batch: Vec<store::RawRecord> = Vec::with_capacity(chunk);
    // Reading and parsing run on their own thread, a few batches ahead: each batch holds
    // `chunk` records (or the rest), with the read errors met on the way, in order.
    let reader = store::open_with(&cfg.input, &store::Layouts::with_map(cfg.map.clone()))?;
    let (batch_tx, batch_rx) = std::sync::mpsc::sync_channel::<Vec<Result<store::RawRecord, StoreError>>>(2);
    let reader_thread = std::thread::spawn(move || {
        let mut reader = reader;
        loop {
            let mut b = Vec::with_capacity(chunk);
            let (mut oks, mut done) = (0usize, false);
            while oks < chunk {
                match reader.next() {
                    None => {
                        done = true;
                        break;
                    }
                    Some(r) => {
                        let fatal = matches!(&r, Err(e) if !e.is_torn_tail() && e.loc().is_none());
                        oks += usize::from(r.is_ok());
                        b.push(r);
                        if fatal {
                            done = true;
                            break;
                        }
                    }
                }
            }
            if batch_tx.send(b).is_err() || done {
                break;
            }
        }
    });
    for got in batch_rx.iter() {
        batch.clear();
        for r in got {
            match r {
                Ok(r) => batch.push(r),
                Err(e) if e.is_torn_tail() => eprintln!("warning: {e}"),
                Err(e) if e.loc().is_some() => {
                    funnel.records_in += 1;
                    funnel.invalid += 1;
                    outs.invalid.reject(&e, None)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        // The checks, in parallel; a rejected sample is serialised there too.
        let items: Vec<Item> = batch
            .par_drain(..)
            .map_init(Scratch::default, |s, raw| {
                let mut item = judge(&ctx, raw, s);
                if let Item::Judged(j) = &mut item {
                    let rec = std::mem::take(&mut j.record);
                    if j.first_fail < CHECKS.len() {
                        j.out = Some(Out::new(Value::Object(rec), lines, j.bytes));
                    } else if all_kept {
                        j.body = Some(match j.span.take() {
                            // Read again at selection: nothing of it held meanwhile.
                            Some((file, line, span)) if cfg!(unix) => Body::Span { file, line, span },
                            _ => {
                                let (line, at, empty_meta) = sft_line(&rec, &j.id, &j.prompt_id, j.bytes);
                                Body::Example { line, at, empty_meta }
                            }
                        });
                    } else {
                        let mut line = Vec::with_capacity(j.bytes + j.bytes / 16 + 1024);
                        json_out::write_map(&mut line, &rec);
                        j.body = Some(Body::Record(line));
                    }
                }
                item
            })
            .collect();
        // Then in input order: counts, rejects, and the held samples.
        let mut rejects: Vec<Out> = Vec::new();
        let mut to_spill: Vec<Held> = Vec::new();
        for item in items {
            funnel.records_in += 1;
            let j = match item {
                Item::Invalid(e, rec) => {
                    funnel.invalid += 1;
                    outs.invalid.reject(&e, rec.as_ref())?;
                    continue;
                }
                Item::Judged(j) => *j,
            };
            pb.inc(1);
            funnel.samples_in += 1;
            funnel.bytes_in += j.bytes as u64;
            funnel.unverified += u64::from(j.unverified);
            for i in 0..CHECKS.len() {
                nanos[i] += j.nanos[i];
                counts[i].failed_samples += u64::from(j.failed[i]);
            }
            if j.first_fail < CHECKS.len() {
                counts[j.first_fail].removed_samples += 1;
            }
            let st = prompts
                .entry(j.prompt_id.clone())
                .or_insert_with(|| PromptState { max_ff: 0, ..PromptState::default() });
            st.n += 1;
            st.correct += u32::from(j.correct);
            st.max_ff = st.max_ff.max(j.first_fail);
            let _ = &j.loc;
            if let Some(out) = j.out {
                rejects.push(out);
                continue;
            }
            let Some(body) = j.body else { continue };
            let h = Held { prompt_id: j.prompt_id, id: j.id, sample: j.sample, seq, len: j.len, score: j.score, body };
            seq += 1;
            if spilling {
                to_spill.push(h);
                continue;
            }
            held_bytes += h.body.len() + 512;
            match st.held {
                Some(i) => held[i].push(h),
                None => {
                    st.held = Some(held.len());
                    held.push(vec![h]);
                }
            }
            if held_bytes > limit {
                // Past the memory budget: everything held, and everything after, goes to disk.
                to_spill.extend(held.drain(..).flatten());
                for st in prompts.values_mut() {
                    st.held = None;
                }
                held_bytes = 0;
                spilling = true;
            }
        }
        outs.rejects.send(rejects)?;
        if !to_spill.is_empty() {
            if spill.is_none() {
                spill = Some(Spill::new(out)?);
            }
            if let Some(sp) = spill.as_mut() {
                sp.write(to_spill)?;
            }
        }
    }
    let _ = reader_thread.join();
    pb.finish_and_clear();
    funnel.prompts_in = prompts.len() as u64;
    for st in prompts.values() {
        if st.max_ff < CHECKS.len() {
            counts[st.max_ff].removed_prompts += 1;
        }
    }
    // Selection, prompt by prompt, in prompt-id order: kept/ does not depend on the order the
    // samples arrived in (a collect with many requests in flight writes them as they finish).
    match spill {
        None => {
            let mut order: Vec<(&String, &PromptState)> = prompts.iter().filter(|(_, s)| s.held.is_some()).collect();
            order.sort_by(|a, b| a.0.cmp(b.0));
            let mut groups: Vec<Option<Vec<Held>>> = held.into_iter().map(Some).collect();
            let todo: Vec<(&PromptState, Vec<Held>)> = order
                .into_iter()
                .map(|(_, st)| (st, st.held.and_then(|i| groups[i].take()).unwrap_or_default()))
                .collect();
            finish_prompts(cfg, todo, &mut outs, &mut funnel)?;
        }
        Some(mut sp) => {
            for f in &mut sp.files {
                f.flush().map_err(io_err(sp.dir.path()))?;
            }
            for b in 0..BUCKETS {
                let groups = sp.read(b)?;
                let mut groups: Vec<(String, Vec<Held>)> = groups.into_iter().collect();
                groups.sort_by(|a, b| a.0.cmp(&b.0));
                let mut todo: Vec<(&PromptState, Vec<Held>)> = Vec::with_capacity(groups.len());
                for (pid, g) in groups {
                    let st = prompts.get(&pid).expect("every held prompt was counted");
                    todo.push((st, g));
                }
                finish_prompts(cfg, todo, &mut outs, &mut funnel)?;
            }
        }
    }
    let total: u64 = nanos.iter().sum::<u64>().max(1);
    for (c, n) in counts.iter_mut().zip(nanos) {
        c.time_share = n as f64 / total as f64;
    }
    funnel.checks = counts.into_iter().filter(|c| cfg.runs(&c.name)).collect();
    let kept_shards = outs.kept.finish()?;
    outs.rejects.finish()?;
    outs.invalid.finish()?;
    funnel.seconds = started.elapsed().as_secs_f64();
    let mut text = serde_json::to_vec_pretty(&funnel)
        .map_err(|e| FilterError::Serialise { id: "funnel.json".into(), msg: e.to_string() })?;
    text.push(b'\n');
    store::write_atomic(&out.join("funnel.json"), &text)?;
    // The manifest: this run's config, and collect's summary when the input is a collect dir.
    let mut config = json!({"filter": cfg});
    if cfg.input.is_dir()
        && let Ok(s) = std::fs::read(cfg.input.join("summary.json"))
        && let Ok(v) = serde_json::from_slice::<Value>(&s)
    {
        config["collect_summary"] = v;
    }
    Manifest::new(out, "distill filter", config, kept_shards).write(out)?;
    Ok(Report { funnel })
}

/// Reads `DIR/funnel.json` (for `inspect`).
pub fn read_funnel(dir: &Path) -> Option<Funnel> {
    serde_json::from_slice(&std::fs::read(dir.join("funnel.json")).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_as_toml() {
        let d = FilterConfig::default();
        let t = toml::to_string(&d).expect("renders");
        let back: FilterConfig = toml::from_str(&t).expect("parses");
        assert_eq!(back, d);
        let partial: FilterConfig = toml::from_str("policy = \"k-best\"\nk = 2").expect("partial table");
        assert_eq!((partial.policy, partial.k, partial.max_paragraph_words), (Policy::KBest, 2, 800));
        assert!(toml::from_str::<FilterConfig>("typo = 1").is_err());
    }

    #[test]
    fn example_lines_equal_the_examples() {
        let m = |v: Value| v.as_object().cloned().expect("object");
        let recs = [
            json!({"id": "p/0", "prompt": "2+2?", "reasoning": "r", "content": "4", "task": "math"}),
            json!({"id": "p/1", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                   "content": "<think>r</think>a", "source": "gsm8k", "meta": {"level": 3, "pass_rate": 0.1},
                   "extra": {"k": [1, 2]}, "more": "x\"y"}),
        ];
        for (v, (rate, n)) in recs.iter().zip([(1.0, 4), (2.0 / 3.0, 3)]) {
            let rec = m(v.clone());
            let want = serde_json::to_vec(&sft_example(&rec, "i", "p", rate, n)).expect("serialises");
            let (line, at, empty_meta) = sft_line(&rec, "i", "p", 10);
            assert_eq!(
                String::from_utf8_lossy(&Body::finish(&line, at, empty_meta, rate, n)),
                String::from_utf8_lossy(&want)
            );
        }
    }

    #[test]
    fn spill_frames_round_trip() {
        let span = store::Span { offset: 1 << 33, len: 20_000 };
        let bodies = [
            Body::Record(b"{}".to_vec()),
            Body::Example { line: b"{\"meta\":{}}".to_vec(), at: 9, empty_meta: true },
            Body::Span { file: Arc::new(PathBuf::from("data/s\u{e9}.jsonl")), line: 7, span },
        ];
        let mut buf = Vec::new();
        for (i, body) in bodies.into_iter().enumerate() {
            let h = Held {
                prompt_id: format!("p{i}"),
                id: "x/\u{e9}".into(),
                sample: 3,
                seq: 9,
                len: 12,
                score: 0.5,
                body,
            };
            h.frame(&mut buf);
        }
        let mut rest = &buf[..];
        let a = Held::unframe(&mut rest).expect("first");
        let b = Held::unframe(&mut rest).expect("second");
        let c = Held::unframe(&mut rest).expect("third");
        assert!(rest.is_empty());
        assert!(
            matches!(c.body, Body::Span { file, line: 7, span: s } if s == span && *file == Path::new("data/s\u{e9}.jsonl"))
        );
        assert_eq!(
            (a.prompt_id.as_str(), a.id.as_str(), a.sample, a.seq, a.len, a.score),
            ("p0", "x/\u{e9}", 3, 9, 12, 0.5)
        );
        assert!(matches!(a.body, Body::Record(r) if r == b"{}"));
        assert!(matches!(b.body, Body::Example { at: 9, empty_meta: true, .. }));
        assert!(Held::unframe(&mut &buf[..buf.len() - 1]).is_some(), "first frame whole");
        let mut torn = &buf[..buf.len() - 1];
        let _ = Held::unframe(&mut torn);
        let _ = Held::unframe(&mut torn);
        assert!(Held::unframe(&mut torn).is_none(), "a torn frame is none");
    }

    #[cfg(unix)]
    #[test]
    fn spans_are_read_again_or_say_the_input_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.jsonl");
        let rec =
            json!({"id": "a/0", "prompt_id": "a", "sample": 0, "prompt": "q", "content": "<think>r</think>x", "z": 1});
        let line = rec.to_string();
        std::fs::write(&path, format!("{line}\n{line}\n")).expect("write");
        let span = store::Span { offset: line.len() as u64 + 1, len: line.len() as u32 };
        let held = |id: &str| Held {
            prompt_id: "a".into(),
            id: id.into(),
            sample: 0,
            seq: 0,
            len: 1,
            score: 0.0,
            body: Body::Record(Vec::new()),
        };
        let file = Arc::new(path.clone());
        let files = SpanFiles::default();
        let got = files.example(&file, 2, span, &held("a/0")).expect("the same sample");
        let want = sft_line(rec.as_object().expect("object"), "a/0", "a", 1);
        assert_eq!(got, want);
        // Another sample on that line now: an error naming file:line and the sample.
        let err = files.example(&file, 2, span, &held("a/1")).expect_err("changed").to_string();
        assert!(err.contains("s.jsonl:2") && err.contains("a/1") && err.contains("changed"), "{err}");
        std::fs::write(&path, "{}\n").expect("truncate");
        assert!(matches!(files.example(&file, 2, span, &held("a/0")), Err(FilterError::InputChanged { .. })));
    }

    #[test]
    fn responses_split_every_way() {
        let m = |v: Value| v.as_object().cloned().expect("object");
        let cases = [
            (json!({"reasoning": "r", "content": "a"}), ("r", "a")),
            (json!({"content": "<think>\nr\n</think>\n\na"}), ("r", "a")),
            (json!({"content": "<think>\nr unclosed"}), ("r unclosed", "")),
            (
                json!({"content": "<|begin_of_thought|>r<|end_of_thought|><|begin_of_solution|>a<|end_of_solution|>"}),
                ("r", "a"),
            ),
            (json!({"response": "just an answer"}), ("", "just an answer")),
        ];
        for (v, (r, a)) in cases {
            let rec = m(v.clone());
            let got = split_response(&rec).expect("a response");
            assert_eq!((&*got.0, &*got.1), (r, a), "{v}");
        }
        assert!(split_response(&m(json!({"id": "x", "prompt": "p"}))).is_none());
    }
}
