//! `distill verify`: judge each record's response and write it back with a `verdict`.
//!
//! In: records (`.jsonl`, `.jsonl.zst`, `.parquet`, a directory of them, or `-` for stdin)
//! with a `task`. Out: every input record, in input order, with `"verdict": {"pass",
//! "extracted", "reason"}` set (other verdict fields and unknown record fields are kept), to
//! `--out FILE` or to stdout as JSONL.
//!
//! Each task has a [`Verifier`] (`math`: [`math`]; `code`: [`code`], which runs programs in a
//! sandbox and adds `passed_tests`, `total_tests`, `isolation` and `detail` to the verdict);
//! records of a task with no verifier pass through with
//! reason `unsupported_task` (never dropped). Records are read in chunks and judged in
//! parallel (rayon), so memory stays bounded and order is preserved.

pub mod code;
pub mod math;

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::record::{Task, Verdict};
use crate::store::{self, Durability, Format, JsonlWriter, RecordSink, StoreError};

/// What a verdict means, decided by the verifier that gave it (counts and filters use this,
/// never the reason's text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail,
    /// The verifier could not decide (work budget, no gold answer or tests, sandbox trouble).
    Undecided,
    /// No verifier for the record's task.
    Unsupported,
}

/// A verdict and what it means.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    pub verdict: Verdict,
    pub outcome: Outcome,
}

/// Judges the records of one task.
pub trait Verifier: Send + Sync {
    /// The task this verifier judges.
    fn task(&self) -> Task;
    /// Judges one record; never fails: problems become the verdict's reason.
    fn verify(&self, record: &Map<String, Value>) -> Judged;
}

/// The verifiers of a run, chosen by each record's `task`.
pub struct Verifiers {
    list: Vec<Box<dyn Verifier>>,
}

impl Default for Verifiers {
    fn default() -> Self {
        Verifiers::standard()
    }
}

impl Verifiers {
    /// Every verifier the crate has.
    pub fn standard() -> Verifiers {
        Verifiers::with_code(code::CodeConfig::default())
    }

    /// Every verifier, the code verifier with these settings (its sandbox starts on first use).
    pub fn with_code(cfg: code::CodeConfig) -> Verifiers {
        Verifiers { list: vec![Box::new(math::MathVerifier), Box::new(code::CodeVerifier::new(cfg))] }
    }

    /// Adds (or replaces) the verifier of a task.
    pub fn with(mut self, v: Box<dyn Verifier>) -> Verifiers {
        self.list.retain(|x| x.task() != v.task());
        self.list.push(v);
        self
    }

    /// The verdict of one record and what it means.
    pub fn judge(&self, record: &Map<String, Value>) -> Judged {
        let task = record.get("task").and_then(Value::as_str);
        match task.and_then(|t| self.list.iter().find(|v| v.task().as_str() == t)) {
            Some(v) => v.verify(record),
            None => Judged {
                verdict: Verdict { pass: Some(false), reason: Some(UNSUPPORTED.to_string()), ..Verdict::default() },
                outcome: Outcome::Unsupported,
            },
        }
    }

    /// The verdict of one record.
    pub fn verify(&self, record: &Map<String, Value>) -> Verdict {
        self.judge(record).verdict
    }
}

/// The reason given to records whose task has no verifier.
pub const UNSUPPORTED: &str = "unsupported_task";

/// Settings of `distill verify`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifyConfig {
    /// Record file, shard directory, or `-` for standard input.
    pub input: PathBuf,
    /// Where to write the judged records (`.jsonl`, `.jsonl.zst`, `.parquet`); stdout if unset.
    pub out: Option<PathBuf>,
    /// Print pass/fail/undecided counts at the end.
    pub summary: bool,
    /// Records judged per parallel chunk.
    pub chunk: usize,
    /// The code verifier's sandbox and limits.
    pub code: code::CodeConfig,
    /// Where unreadable records go, with file, line and reason (default: `OUT.rejects.jsonl`
    /// beside `out`, else `distill-rejects.jsonl`).
    pub rejects: Option<PathBuf>,
    /// Column renames applied before the public layouts are recognised: `field = "column"`
    /// reads `column` as distill's `field` (`--map field=column`).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub map: std::collections::BTreeMap<String, String>,
}

impl VerifyConfig {
    /// The rejects file this run writes to (created at the first reject).
    pub fn rejects_path(&self) -> PathBuf {
        match (&self.rejects, &self.out) {
            (Some(p), _) => p.clone(),
            (None, Some(out)) => {
                let mut name = out.file_name().unwrap_or_default().to_os_string();
                name.push(".rejects.jsonl");
                out.with_file_name(name)
            }
            (None, None) => PathBuf::from(crate::store::DEFAULT_REJECTS),
        }
    }
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            input: PathBuf::from("-"),
            out: None,
            summary: false,
            chunk: 4096,
            code: code::CodeConfig::default(),
            rejects: None,
            map: Default::default(),
        }
    }
}

impl crate::config::Settings for VerifyConfig {
    const TABLE: &'static str = "verify";

    fn validate(&self) -> Result<(), String> {
        if self.chunk == 0 {
            return Err("`chunk` must be at least 1".into());
        }
        Ok(())
    }
}

/// Errors of `verify`.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the verified records to stdout: {0}")]
    Stdout(io::Error),
    #[error("{0}: cannot serialise record: {1}")]
    Serialise(String, serde_json::Error),
}

/// Counts of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub records: u64,
    pub pass: u64,
    pub fail: u64,
    pub undecided: u64,
    pub unsupported: u64,
    /// Input lines that were not valid records (reported on stderr, not written).
    pub invalid: u64,
}

impl Summary {
    fn add(&mut self, outcome: Outcome) {
        self.records += 1;
        match outcome {
            Outcome::Pass => self.pass += 1,
            Outcome::Fail => self.fail += 1,
            Outcome::Undecided => self.undecided += 1,
            Outcome::Unsupported => self.unsupported += 1,
        }
    }

    /// One line per count.
    pub fn to_text(&self) -> String {
        format!(
            "records   {}\npass      {}\nfail      {}\nundecided {}\nunsupported_task {}\ninvalid   {}\n",
            self.records, self.pass, self.fail, self.undecided, self.unsupported, self.invalid
        )
    }
}

enum Sink {
    Stdout(BufWriter<io::Stdout>),
    Jsonl(JsonlWriter),
    Other(Box<dyn RecordSink + Send>),
}

impl Sink {
    fn open(out: Option<&Path>) -> Result<Sink, VerifyError> {
        Ok(match out {
            None => Sink::Stdout(BufWriter::with_capacity(1 << 16, io::stdout())),
            Some(p) if matches!(Format::from_path(p), Some(Format::Jsonl | Format::JsonlZst)) => {
                Sink::Jsonl(JsonlWriter::create(p, Durability::Batched)?)
            }
            Some(p) => Sink::Other(store::create(p)?),
        })
    }

    fn write(&mut self, line: &[u8], value: &Value) -> Result<(), VerifyError> {
        match self {
            Sink::Stdout(w) => w.write_all(line).and_then(|_| w.write_all(b"\n")).map_err(VerifyError::Stdout),
            Sink::Jsonl(w) => Ok(w.write_line(line)?),
            Sink::Other(w) => Ok(w.write_value(value)?),
        }
    }

    fn finish(self) -> Result<(), VerifyError> {
        match self {
            Sink::Stdout(mut w) => w.flush().map_err(VerifyError::Stdout),
            Sink::Jsonl(w) => Ok(w.close()?),
            Sink::Other(w) => Ok(w.finish()?),
        }
    }

    fn needs_value(&self) -> bool {
        matches!(self, Sink::Other(_))
    }
}

/// Sets `pass`, `extracted` and `reason` of the record's verdict, keeping its other fields.
pub fn apply_verdict(record: &mut Map<String, Value>, v: &Verdict) {
    let mut obj = match record.shift_remove("verdict") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    obj.insert("pass".into(), Value::Bool(v.pass.unwrap_or(false)));
    obj.insert("extracted".into(), v.extracted.clone().map_or(Value::Null, Value::String));
    obj.insert("reason".into(), v.reason.clone().map_or(Value::Null, Value::String));
    for (k, x) in &v.extra {
        obj.insert(k.clone(), x.clone());
    }
    record.insert("verdict".into(), Value::Object(obj));
}

/// One judged record: what its verdict means, its serialised line, and the value when the
/// sink needs it.
type Written = (Outcome, Vec<u8>, Option<Value>);

/// Runs `verify`: reads, judges in parallel chunks, writes in input order.
pub fn run(cfg: &VerifyConfig, verifiers: &Verifiers) -> Result<Summary, VerifyError> {
    let mut summary = Summary::default();
    let mut sink = Sink::open(cfg.out.as_deref())?;
    let want_value = sink.needs_value();
    let chunk = cfg.chunk.max(1);
    let mut batch: Vec<store::RawRecord> = Vec::with_capacity(chunk);
    let flush = |batch: &mut Vec<store::RawRecord>, sink: &mut Sink, summary: &mut Summary| {
        let results: Vec<Result<Written, VerifyError>> = batch
            .par_drain(..)
            .map(|rec| {
                let loc = rec.loc.to_string();
                let mut m = rec.value;
                let v = verifiers.judge(&m);
                apply_verdict(&mut m, &v.verdict);
                let value = Value::Object(m);
                let line = serde_json::to_vec(&value).map_err(|e| VerifyError::Serialise(loc, e))?;
                Ok((v.outcome, line, want_value.then_some(value)))
            })
            .collect();
        for r in results {
            let (outcome, line, value) = r?;
            summary.add(outcome);
            sink.write(&line, value.as_ref().unwrap_or(&Value::Null))?;
        }
        Ok::<(), VerifyError>(())
    };
    let mut input = store::Lenient::open(&cfg.input, store::Rejects::new("verify", cfg.rejects_path()))?
        .with_layouts(store::Layouts::with_map(cfg.map.clone()));
    while let Some(item) = input.next_record() {
        batch.push(item?);
        if batch.len() >= chunk {
            flush(&mut batch, &mut sink, &mut summary)?;
        }
    }
    flush(&mut batch, &mut sink, &mut summary)?;
    sink.finish()?;
    summary.invalid = input.rejects.finish()?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Always;
    impl Verifier for Always {
        fn task(&self) -> Task {
            Task::Code
        }
        fn verify(&self, _: &Map<String, Value>) -> Judged {
            Judged {
                verdict: Verdict { pass: Some(true), reason: Some("ok".into()), ..Verdict::default() },
                outcome: Outcome::Pass,
            }
        }
    }

    #[test]
    fn dispatch_by_task() {
        let vs = Verifiers::standard();
        let rec = |v: Value| v.as_object().cloned().unwrap();
        let m = vs.verify(&rec(json!({"task": "math", "answer": "2", "content": "\\boxed{2}"})));
        assert_eq!((m.pass, m.reason.as_deref()), (Some(true), Some("equal")));
        let c = vs.verify(&rec(json!({"task": "code", "content": "x"})));
        assert_eq!(c.reason.as_deref(), Some("missing_tests"));
        let vs = vs.with(Box::new(Always));
        assert_eq!(vs.verify(&rec(json!({"task": "code"}))).reason.as_deref(), Some("ok"));
        assert_eq!(vs.verify(&rec(json!({"id": 1}))).reason.as_deref(), Some(UNSUPPORTED));
    }

    #[test]
    fn verdict_keeps_other_fields() {
        let mut m = json!({"id": "a", "verdict": {"checks": {"x": {"pass": true}}, "kept": true}})
            .as_object()
            .cloned()
            .unwrap();
        apply_verdict(&mut m, &Verdict { pass: Some(false), reason: Some("not_equal".into()), ..Verdict::default() });
        assert_eq!(
            Value::Object(m),
            json!({"id": "a", "verdict": {"checks": {"x": {"pass": true}}, "kept": true, "pass": false,
                   "extracted": null, "reason": "not_equal"}})
        );
    }
}
