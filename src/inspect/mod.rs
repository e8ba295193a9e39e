//! `distill inspect`: statistics and pretty-printed samples of any record file or shard
//! directory.
//!
//! In: prompts, samples or SFT examples (`.jsonl`, `.jsonl.zst`, `.parquet`, or a directory of
//! shards). Out: a report on stdout (text or `--json`); nothing is written except, with
//! `--skip-invalid`, the rejects file.
//!
//! One streaming pass: lengths go into exact value-count distributions, so memory does not grow
//! with the number of records.

pub mod stats;
pub mod view;

use std::path::PathBuf;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::record::{Prompt, Sample, SftExample};
use crate::store::{self, Lenient, RawRecord, Rejects, StoreError};
use stats::{Counter, Dist, texts, verdict_key};

/// Settings of `distill inspect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InspectConfig {
    /// Record file, shard directory, or `-` for standard input.
    pub path: PathBuf,
    /// Print machine-readable statistics.
    pub json: bool,
    /// Pretty-print this many records, chosen evenly at random with `seed`.
    pub sample: usize,
    /// Pretty-print the record with this id.
    pub id: Option<String>,
    /// Also count tokens with this `tokenizer.json`.
    pub tokenizer: Option<PathBuf>,
    /// Continue past invalid records, writing them to `rejects`.
    pub skip_invalid: bool,
    pub rejects: PathBuf,
    /// Print whole texts instead of eliding long ones.
    pub full: bool,
    pub seed: u64,
    /// Column renames applied before the public layouts are recognised: `field = "column"`
    /// reads `column` as distill's `field` (`--map field=column`).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub map: std::collections::BTreeMap<String, String>,
}

impl Default for InspectConfig {
    fn default() -> Self {
        InspectConfig {
            path: PathBuf::new(),
            json: false,
            sample: 0,
            id: None,
            tokenizer: None,
            skip_invalid: false,
            rejects: PathBuf::from("distill-rejects.jsonl"),
            full: false,
            seed: 0,
            map: Default::default(),
        }
    }
}

impl crate::config::Settings for InspectConfig {
    const TABLE: &'static str = "inspect";

    fn validate(&self) -> Result<(), String> {
        if self.path.as_os_str().is_empty() {
            return Err("inspect needs `path` (a record file, a directory of shards, or - for stdin)".into());
        }
        Ok(())
    }
}

/// Errors of `inspect`.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}: cannot load tokenizer: {1}; pass a Hugging Face tokenizer.json")]
    Tokenizer(PathBuf, String),
    #[error("no record with id {id:?} in {path}")]
    IdNotFound { id: String, path: PathBuf },
}

/// What `inspect` found.
#[derive(Debug, Default)]
pub struct Report {
    pub records: u64,
    pub invalid: u64,
    pub torn_tails: Vec<String>,
    pub chars: [Dist; 3],
    pub tokens: Option<[Dist; 3]>,
    pub by_task: Counter,
    pub by_source: Counter,
    pub by_finish_reason: Counter,
    pub by_verdict: Counter,
    /// Failed checks of `filter`'s verdicts (`verdict.checks.NAME.pass == false`), by name.
    pub by_failed_check: Counter,
    /// `funnel.json` of a `filter` output directory, when the path is one.
    pub funnel: Option<Value>,
    /// Rows read per layout recognised (`distill` for distill's own records).
    pub by_layout: Counter,
    pub shown: Vec<Map<String, Value>>,
    pub rejects_path: Option<PathBuf>,
}

const FIELDS: [&str; 3] = ["prompt", "reasoning", "answer"];

/// Checks a record against the schema of its kind, guessed from its fields.
fn validate(rec: &RawRecord) -> Result<(), StoreError> {
    let m = &rec.value;
    if m.contains_key("messages") && !m.contains_key("prompt") {
        rec.parse::<SftExample>().map(drop)
    } else if m.contains_key("prompt_id") {
        rec.parse::<Sample>().map(drop)
    } else if m.contains_key("prompt") {
        rec.parse::<Prompt>().map(drop)
    } else if rec.id().is_none() {
        Err(StoreError::Schema {
            loc: rec.loc.clone(),
            id: store::IdSuffix(None),
            msg: "missing field `id`: every record needs an id (and a prompt, or messages)".into(),
        })
    } else {
        Ok(())
    }
}

type TokBatch = Vec<[Option<String>; 3]>;

fn count_tokens(tok: &tokenizers::Tokenizer, batch: &mut TokBatch, dists: &mut [Dist; 3]) {
    let counts: Vec<[Option<u64>; 3]> = batch
        .par_iter()
        .map(|texts| {
            let mut c = [None; 3];
            for (i, t) in texts.iter().enumerate() {
                if let Some(t) = t {
                    c[i] = tok.encode(t.as_str(), false).ok().map(|e| e.len() as u64);
                }
            }
            c
        })
        .collect();
    for c in counts {
        for (i, v) in c.into_iter().enumerate() {
            if let Some(v) = v {
                dists[i].add(v);
            }
        }
    }
    batch.clear();
}

/// Runs `inspect` over the configured path.
pub fn inspect(cfg: &InspectConfig) -> Result<Report, InspectError> {
    let tokenizer = match &cfg.tokenizer {
        Some(p) => {
            Some(tokenizers::Tokenizer::from_file(p).map_err(|e| InspectError::Tokenizer(p.clone(), e.to_string()))?)
        }
        None => None,
    };
    let mut report = Report { tokens: tokenizer.as_ref().map(|_| Default::default()), ..Report::default() };
    // inspect stops at the first bad record unless asked to skip them.
    let limit = (!cfg.skip_invalid).then_some(0);
    let mut input = Lenient::open(&cfg.path, Rejects::new("inspect", cfg.rejects.clone()).with_limit(limit))?
        .with_layouts(store::Layouts::with_map(cfg.map.clone()));
    let mut rng = crate::rng::SplitMix(cfg.seed ^ 0x5EED);
    let mut tok_batch: TokBatch = Vec::new();
    while let Some(item) = input.next_record() {
        let rec = item?;
        let m = &rec.value;
        let t = texts(m);
        for (i, s) in [t.prompt, t.reasoning, t.answer].iter().enumerate() {
            if let Some(s) = s {
                report.chars[i].add(s.chars().count() as u64);
            }
        }
        if tokenizer.is_some() {
            tok_batch.push([t.prompt, t.reasoning, t.answer].map(|s| s.map(str::to_string)));
        }
        let label = |k: &str| m.get(k).and_then(Value::as_str);
        report.by_task.add(label("task").unwrap_or("(none)"));
        report.by_source.add(label("source").unwrap_or("(none)"));
        if let Some(f) = label("finish_reason") {
            report.by_finish_reason.add(f);
        }
        if let Some(v) = verdict_key(m) {
            report.by_verdict.add(&v);
        }
        count_failed_checks(m, &mut report.by_failed_check);
        // Which records to show: the one with --id, or a reservoir sample of --sample.
        let keep = match &cfg.id {
            Some(id) => rec.id().as_deref() == Some(id.as_str()),
            None if cfg.sample > 0 => {
                let seen = report.records + input.rejects.count() + 1;
                if report.shown.len() < cfg.sample {
                    true
                } else {
                    let j = rng.below(seen);
                    if (j as usize) < cfg.sample {
                        report.shown.swap_remove(j as usize);
                        true
                    } else {
                        false
                    }
                }
            }
            None => false,
        };
        let copy = keep.then(|| rec.value.clone());
        match validate(&rec) {
            Ok(()) => {
                report.records += 1;
                if let Some(c) = copy {
                    report.shown.push(c);
                }
            }
            Err(e) => input.rejects.reject(e, Some(&rec.value))?,
        }
        if let (Some(tok), Some(d)) = (tokenizer.as_ref(), report.tokens.as_mut())
            && tok_batch.len() >= 512
        {
            count_tokens(tok, &mut tok_batch, d);
        }
    }
    if let (Some(tok), Some(d)) = (tokenizer.as_ref(), report.tokens.as_mut()) {
        count_tokens(tok, &mut tok_batch, d);
    }
    for (layout, n) in input.layouts_seen() {
        report.by_layout.add_n(layout.name(), *n);
    }
    report.torn_tails = std::mem::take(&mut input.torn_tails);
    // A filter output directory carries its funnel.
    let funnel = cfg.path.join("funnel.json");
    if cfg.path.is_dir()
        && let Ok(text) = std::fs::read_to_string(&funnel)
    {
        report.funnel = serde_json::from_str(&text).ok();
        // Its rejected samples (not records of the set) broken down by the checks they failed.
        let rejects = cfg.path.join("rejects");
        if rejects.is_dir() {
            for rec in store::open(&rejects)?.flatten() {
                count_failed_checks(&rec.value, &mut report.by_failed_check);
            }
        }
    }
    report.invalid = input.rejects.count();
    if report.invalid > 0 {
        report.rejects_path = Some(input.rejects.path().to_path_buf());
    }
    input.rejects.finish()?;
    if let Some(id) = &cfg.id
        && report.shown.is_empty()
    {
        return Err(InspectError::IdNotFound { id: id.clone(), path: cfg.path.clone() });
    }
    Ok(report)
}

/// Counts the checks a `filter` verdict failed (`verdict.checks.NAME.pass == false`).
fn count_failed_checks(m: &Map<String, Value>, into: &mut Counter) {
    if let Some(Value::Object(checks)) = m.get("verdict").and_then(|v| v.get("checks")) {
        for (name, c) in checks {
            if c.get("pass") == Some(&Value::Bool(false)) {
                into.add(name);
            }
        }
    }
}

fn counter_json(c: &Counter) -> Value {
    Value::Object(c.sorted().into_iter().map(|(k, v)| (k, json!(v))).collect())
}

impl Report {
    /// The `--json` form: a top-level `records` count and the statistics.
    pub fn to_json(&self) -> Value {
        let dist_json = |d: &[Dist; 3]| {
            Value::Object(FIELDS.iter().zip(d).map(|(f, d)| (f.to_string(), json!(d.summary()))).collect())
        };
        json!({
            "records": self.records,
            "invalid": self.invalid,
            "torn_tails": self.torn_tails,
            "rejects": self.rejects_path,
            "chars": dist_json(&self.chars),
            "tokens": self.tokens.as_ref().map(dist_json),
            "by_task": counter_json(&self.by_task),
            "by_source": counter_json(&self.by_source),
            "by_finish_reason": counter_json(&self.by_finish_reason),
            "by_verdict": counter_json(&self.by_verdict),
            "by_failed_check": counter_json(&self.by_failed_check),
            "funnel": self.funnel,
            "by_layout": counter_json(&self.by_layout),
        })
    }

    /// The human-readable form.
    pub fn to_text(&self, path: &std::path::Path) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(s, "{}: {} records", path.display(), self.records);
        if self.invalid > 0 {
            let _ = writeln!(
                s,
                "  {} invalid records skipped (see {})",
                self.invalid,
                self.rejects_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
            );
        }
        for t in &self.torn_tails {
            let _ = writeln!(s, "  torn tail: {t}");
        }
        let foreign: Vec<String> = self
            .by_layout
            .sorted()
            .into_iter()
            .filter(|(k, _)| k != "distill")
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        if !foreign.is_empty() {
            let _ = writeln!(s, "  read from rows of public layouts: {}", foreign.join(", "));
        }
        let _ =
            writeln!(s, "\n{:<18}{:>9}{:>9}{:>9}{:>9}{:>9}{:>11}", "length", "min", "p50", "p90", "p99", "max", "mean");
        let mut rows = |unit: &str, d: &[Dist; 3]| {
            for (f, d) in FIELDS.iter().zip(d) {
                if let Some(x) = d.summary() {
                    let _ = writeln!(
                        s,
                        "{:<18}{:>9}{:>9}{:>9}{:>9}{:>9}{:>11.1}",
                        format!("{f} {unit}"),
                        x.min,
                        x.p50,
                        x.p90,
                        x.p99,
                        x.max,
                        x.mean
                    );
                }
            }
        };
        rows("chars", &self.chars);
        if let Some(t) = &self.tokens {
            rows("tokens", t);
        }
        let total = self.records.max(1) as f64;
        for (name, c) in [
            ("task", &self.by_task),
            ("source", &self.by_source),
            ("finish_reason", &self.by_finish_reason),
            ("verdict", &self.by_verdict),
            ("failed checks", &self.by_failed_check),
        ] {
            if c.is_empty() {
                continue;
            }
            let parts: Vec<String> = c
                .sorted()
                .into_iter()
                .take(12)
                .map(|(k, v)| format!("{k} {v} ({:.1}%)", 100.0 * v as f64 / total))
                .collect();
            let _ = writeln!(s, "\n{name}: {}", parts.join(", "));
        }
        if let Some(f) = &self.funnel {
            let _ = writeln!(s, "\nfunnel (funnel.json):");
            match serde_json::to_string_pretty(f) {
                Ok(text) => s.push_str(&text),
                Err(e) => s.push_str(&e.to_string()),
            }
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_missing_field() {
        let loc = store::Loc { file: std::sync::Arc::new(PathBuf::from("f.jsonl")), line: 3 };
        let cases = [
            (json!({"id": "a", "task": "math"}), None),
            (json!({"id": "a", "task": "math", "prompt": "q"}), None),
            (json!({"task": "math", "prompt": "q"}), Some("missing field `id`")),
            (json!({"id": "a/0", "prompt_id": "a", "prompt": "q", "task": "math"}), Some("missing field `sample`")),
            (json!({"id": "a", "messages": []}), Some("missing field `task`")),
        ];
        for (v, want) in cases {
            let rec = RawRecord { value: v.as_object().cloned().expect("object"), loc: loc.clone(), span: None };
            let got = validate(&rec).err().map(|e| e.to_string());
            match want {
                None => assert!(got.is_none(), "{v}: {got:?}"),
                Some(w) => {
                    let g = got.expect("should fail");
                    assert!(g.contains(w) && g.starts_with("f.jsonl:3"), "{v}: {g}");
                }
            }
        }
    }
}
