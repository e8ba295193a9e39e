//! The corpus: the output pass of `dedup`.
//!
//! Re-reads the input in order and writes each kept example, unchanged, to
//! `DIR/data/{train,validation}-XXXXX-of-YYYYY.parquet` (a new shard once `shard_size` bytes of
//! record JSON have gone into one), then `DIR/manifest.json` (shards with sha256, counts, the
//! funnel of this and every earlier stage found beside the input, decontamination) and
//! `DIR/README.md`, a Hugging Face dataset card whose YAML header (`configs`, `dataset_info`)
//! `datasets.load_dataset(DIR)` reads. Removed examples go to `DIR/rejects/removed.jsonl.zst`
//! (id, prompt id, reason) and unreadable input to `DIR/rejects/invalid.jsonl`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use arrow_schema::{DataType, Field};
use serde_json::{Value, json};

use super::{Decision, DedupConfig, DedupError, Plan, Report, io_err, parse_example};
use crate::store::{self, IdSuffix, ParquetWriter, RecordSink, RejectsWriter, ShardInfo, StoreError};

/// Parquet shards of one split, bounded in bytes of record JSON.
struct SplitWriter {
    dir: PathBuf,
    name: &'static str,
    limit: u64,
    current: Option<ParquetWriter>,
    bytes: u64,
    records: u64,
    finished: Vec<(PathBuf, u64)>,
}

/// Bytes a value takes as JSON, roughly (strings, keys and a few per scalar).
fn json_size(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.len() as u64 + 2,
        Value::Array(a) => 2 + a.iter().map(|x| json_size(x) + 1).sum::<u64>(),
        Value::Object(m) => 2 + m.iter().map(|(k, x)| k.len() as u64 + 4 + json_size(x)).sum::<u64>(),
        _ => 8,
    }
}

impl SplitWriter {
    fn new(dir: &Path, name: &'static str, limit: u64) -> Self {
        SplitWriter {
            dir: dir.to_path_buf(),
            name,
            limit: limit.max(1),
            current: None,
            bytes: 0,
            records: 0,
            finished: Vec::new(),
        }
    }

    fn partial(&self, i: usize) -> PathBuf {
        self.dir.join(format!(".{}-{i:05}.partial.parquet", self.name))
    }

    fn write(&mut self, v: &Value) -> Result<(), StoreError> {
        let size = json_size(v);
        if self.current.is_some() && self.bytes + size > self.limit {
            self.close()?;
        }
        if self.current.is_none() {
            self.current = Some(ParquetWriter::create(&self.partial(self.finished.len()))?);
        }
        if let Some(w) = self.current.as_mut() {
            w.write_value(v)?;
        }
        self.bytes += size;
        self.records += 1;
        Ok(())
    }

    fn close(&mut self) -> Result<(), StoreError> {
        if let Some(w) = self.current.take() {
            w.close()?;
            self.finished.push((self.partial(self.finished.len()), self.records));
        }
        self.bytes = 0;
        self.records = 0;
        Ok(())
    }

    /// Renames the shards to their `-of-N` names; a split with no record writes none.
    fn finish(mut self) -> Result<Vec<ShardInfo>, StoreError> {
        self.close()?;
        let n = self.finished.len();
        let mut out = Vec::new();
        for (i, (partial, records)) in self.finished.iter().enumerate() {
            let path = self.dir.join(format!("{}-{i:05}-of-{n:05}.parquet", self.name));
            std::fs::rename(partial, &path).map_err(|e| StoreError::io(&path, e))?;
            let bytes = std::fs::metadata(&path).map_err(|e| StoreError::io(&path, e))?.len();
            out.push(ShardInfo {
                path: path.display().to_string(),
                records: *records,
                bytes,
                sha256: store::sha256_file(&path)?,
            });
        }
        Ok(out)
    }
}

/// Summary statistics of a list of lengths.
fn stats(v: &mut [u64]) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_unstable();
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    let mean = v.iter().sum::<u64>() as f64 / v.len() as f64;
    json!({"count": v.len(), "min": v[0], "mean": (mean * 10.0).round() / 10.0, "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": v[v.len() - 1]})
}

/// Removes the shards of an earlier run, so no stale shard joins this one's splits.
fn clear_data_dir(dir: &Path) -> Result<(), DedupError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    for e in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with("train-")
            || name.starts_with("validation-")
            || name.starts_with(".train-")
            || name.starts_with(".validation-");
        if ours && (name.ends_with(".parquet") || name.contains(".spool.")) {
            std::fs::remove_file(e.path()).map_err(io_err(&e.path()))?;
        }
    }
    Ok(())
}

/// Runs the output pass for a plan and writes the manifest and card.
pub fn write(cfg: &DedupConfig, plan: &Plan) -> Result<Report, DedupError> {
    let data = cfg.out.join("data");
    clear_data_dir(&data)?;
    let rejects_dir = cfg.out.join("rejects");
    std::fs::create_dir_all(&rejects_dir).map_err(io_err(&rejects_dir))?;
    let invalid_path = rejects_dir.join("invalid.jsonl");
    let _ = std::fs::remove_file(&invalid_path);
    let mut invalid = RejectsWriter::new(invalid_path);
    let removed_path = rejects_dir.join("removed.jsonl.zst");
    let mut removed = store::JsonlWriter::create(&removed_path, store::Durability::Batched)?;
    let mut train = SplitWriter::new(&data, "train", cfg.shard_size);
    let mut validation = SplitWriter::new(&data, "validation", cfg.shard_size);
    let mut tokens: Vec<u64> = Vec::new();
    let mut chars: Vec<u64> = Vec::new();
    let mut sources: BTreeMap<String, u64> = BTreeMap::new();
    let mut tasks: BTreeMap<String, u64> = BTreeMap::new();
    let mut cursor = 0usize;
    let mut torn = Vec::new();
    // A reader thread parses the input (JSON) while this one decides and writes.
    type Chunk = Result<Vec<(u32, Result<store::RawRecord, StoreError>)>, StoreError>;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(8);
    let files = &plan.files;
    std::thread::scope(|scope| -> Result<(), DedupError> {
        scope.spawn(move || {
            for f in files {
                let it = match store::open(Path::new(&f.path)) {
                    Ok(it) => it,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let mut chunk = Vec::with_capacity(1024);
                for item in it {
                    chunk.push((f.index, item));
                    if chunk.len() == 1024
                        && tx.send(Ok(std::mem::replace(&mut chunk, Vec::with_capacity(1024)))).is_err()
                    {
                        return;
                    }
                }
                if !chunk.is_empty() && tx.send(Ok(chunk)).is_err() {
                    return;
                }
            }
        });
        for chunk in rx {
            for (findex, item) in chunk? {
                let raw = match item {
                    Ok(raw) => raw,
                    Err(e) => {
                        if e.is_torn_tail() {
                            torn.push(e.to_string());
                        }
                        invalid.reject(&e, None)?;
                        continue;
                    }
                };
                let matches = plan.examples.get(cursor).is_some_and(|e| e.file == findex && e.line == raw.loc.line);
                if !matches {
                    let msg = match parse_example(&raw) {
                        Err(DedupError::Store(e)) => e.to_string(),
                        Err(e) => e.to_string(),
                        Ok(_) => "changed since the scan".to_string(),
                    };
                    let e = StoreError::Schema { loc: raw.loc.clone(), id: IdSuffix(raw.id()), msg };
                    invalid.reject(&e, Some(&raw.value))?;
                    continue;
                }
                let d = plan.decisions[cursor];
                let node = plan.ex_node[cursor] as usize;
                cursor += 1;
                match d {
                    Decision::Train | Decision::Validation => {
                        let v = Value::Object(raw.value);
                        if let Some(t) = v.pointer("/meta/num_tokens").and_then(Value::as_u64) {
                            tokens.push(t);
                        }
                        if let Some(msgs) = v.get("messages").and_then(Value::as_array) {
                            let a: u64 = msgs
                                .iter()
                                .filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
                                .filter_map(|m| m.get("content").and_then(Value::as_str))
                                .map(|s| s.chars().count() as u64)
                                .sum();
                            chars.push(a);
                        }
                        let src = v.get("source").and_then(Value::as_str).unwrap_or("(none)").to_string();
                        *sources.entry(src).or_insert(0) += 1;
                        let task = v.get("task").and_then(Value::as_str).unwrap_or("(none)").to_string();
                        *tasks.entry(task).or_insert(0) += 1;
                        if d == Decision::Train { train.write(&v)? } else { validation.write(&v)? }
                    }
                    other => {
                        let mut r = json!({"id": raw.id(), "prompt_id": plan.node_ids[node], "file": raw.loc.file.display().to_string(), "line": raw.loc.line});
                        let (stage, reason) = match other {
                            Decision::Exact(first) => {
                                let e = &plan.examples[first as usize];
                                r["duplicate_of"] = plan.node_ids[plan.ex_node[first as usize] as usize].clone().into();
                                (
                                    "exact",
                                    format!(
                                        "prompt and response repeat {}:{}",
                                        plan.files[e.file as usize].path, e.line
                                    ),
                                )
                            }
                            Decision::Contaminated(u) => {
                                let hit = plan.prompts[u as usize].hit.as_ref();
                                let b =
                                    hit.map(|h| plan.decontam[h.bench as usize].benchmark.clone()).unwrap_or_default();
                                r["benchmark"] = b.clone().into();
                                if let Some(h) = hit {
                                    r["method"] = h.method.as_str().into();
                                    r["shared_text"] = h.evidence.clone().into();
                                }
                                ("decontam", format!("overlaps benchmark {b}"))
                            }
                            Decision::NearDup(n, keep) => {
                                r["duplicate_of"] = plan.node_ids[keep as usize].clone().into();
                                r["similarity"] = json!((plan.node_sim[n as usize] as f64 * 1000.0).round() / 1000.0);
                                ("near_dup", format!("near-duplicate prompt of {}", plan.node_ids[keep as usize]))
                            }
                            _ => ("max_per_prompt", format!("more than {} examples of its prompt", cfg.max_per_prompt)),
                        };
                        if let Some(&keep) = plan.node_keep.get(node).filter(|&&k| k != u32::MAX) {
                            r["cluster"] = plan.node_ids[keep as usize].clone().into();
                        }
                        r["stage"] = stage.into();
                        r["reason"] = reason.into();
                        removed.write_value(&r)?;
                    }
                }
            }
        }
        Ok(())
    })?;
    if cursor != plan.examples.len() {
        return Err(DedupError::InputChanged {
            path: cfg.input.clone(),
            what: format!("{} examples scanned, {} found on re-reading", plan.examples.len(), cursor),
        });
    }
    removed.close()?;
    invalid.finish()?;
    let mut shards = train.finish()?;
    shards.extend(validation.finish()?);
    let manifest =
        store::Manifest::new(&cfg.out, "distill dedup", serde_json::to_value(cfg).unwrap_or(Value::Null), shards);
    let features = features_of(&cfg.out, &manifest.shards)?;
    let upstream = upstream(&cfg.input);
    let mut m = serde_json::to_value(&manifest).unwrap_or(Value::Null);
    let split_counts = |name: &str| {
        let s: Vec<&ShardInfo> =
            manifest.shards.iter().filter(|s| s.path.starts_with(&format!("data/{name}-"))).collect();
        json!({"examples": s.iter().map(|x| x.records).sum::<u64>(), "bytes": s.iter().map(|x| x.bytes).sum::<u64>(), "shards": s.len()})
    };
    m["splits"] = json!({"train": split_counts("train"), "validation": split_counts("validation")});
    m["funnel"] = serde_json::to_value(&plan.funnel).unwrap_or(Value::Null);
    m["decontamination"] = serde_json::to_value(&plan.decontam).unwrap_or(Value::Null);
    m["lsh"] = json!({"bands": plan.bands, "rows": plan.rows, "num_perm": cfg.num_perm, "threshold": cfg.threshold});
    m["lengths"] = json!({"num_tokens": stats(&mut tokens), "response_chars": stats(&mut chars)});
    m["sources"] = json!(sources);
    m["tasks"] = json!(tasks);
    m["upstream"] = upstream;
    let mut text =
        serde_json::to_vec_pretty(&m).map_err(|e| DedupError::Output { path: cfg.out.clone(), msg: e.to_string() })?;
    text.push(b'\n');
    store::write_atomic(&cfg.out.join("manifest.json"), &text)?;
    let card = card(cfg, &m, &features);
    store::write_atomic(&cfg.out.join("README.md"), card.as_bytes())?;
    let mut funnel = plan.funnel.clone();
    funnel.invalid = invalid_count(&cfg.out.join("rejects/invalid.jsonl")).max(funnel.invalid);
    let _ = torn;
    Ok(Report {
        funnel,
        decontam: plan.decontam.clone(),
        signatures: None,
        bands: plan.bands,
        rows: plan.rows,
        out: cfg.out.clone(),
        seconds: Vec::new(),
    })
}

fn invalid_count(p: &Path) -> u64 {
    std::fs::read(p).map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64).unwrap_or(0)
}

/// The manifests, funnels and summaries that earlier stages left beside the input.
fn upstream(input: &Path) -> Value {
    let mut out = serde_json::Map::new();
    let mut dirs = Vec::new();
    if input.is_dir() {
        dirs.push(input.to_path_buf());
    }
    let mut p = input.parent();
    for _ in 0..2 {
        match p {
            Some(d) if !d.as_os_str().is_empty() => {
                dirs.push(d.to_path_buf());
                p = d.parent();
            }
            _ => break,
        }
    }
    for d in dirs {
        for name in ["funnel.json", "summary.json", "manifest.json"] {
            let f = d.join(name);
            if let Ok(text) = std::fs::read_to_string(&f)
                && let Ok(v) = serde_json::from_str::<Value>(&text)
            {
                out.insert(f.display().to_string(), v);
            }
        }
    }
    Value::Object(out)
}

/// The Hugging Face feature of an Arrow type, as card YAML lines at `indent`.
fn feature_yaml(name: &str, dt: &DataType, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    let _ = writeln!(out, "{pad}- name: {name}");
    type_yaml(dt, indent + 2, out);
}

fn dtype_name(dt: &DataType) -> Option<&'static str> {
    Some(match dt {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string",
        DataType::Int64 => "int64",
        DataType::Int32 => "int32",
        DataType::UInt64 => "uint64",
        DataType::Float64 => "float64",
        DataType::Float32 => "float32",
        DataType::Boolean => "bool",
        DataType::Null => "null",
        _ => return None,
    })
}

fn type_yaml(dt: &DataType, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match dt {
        DataType::List(f) | DataType::LargeList(f) => match f.data_type() {
            DataType::Struct(fields) => {
                let _ = writeln!(out, "{pad}list:");
                for c in fields.iter() {
                    feature_yaml(c.name(), c.data_type(), indent, out);
                }
            }
            inner => match dtype_name(inner) {
                Some(n) => {
                    let _ = writeln!(out, "{pad}sequence: {n}");
                }
                None => {
                    let _ = writeln!(out, "{pad}sequence:");
                    type_yaml(inner, indent + 2, out);
                }
            },
        },
        DataType::Struct(fields) => {
            let _ = writeln!(out, "{pad}struct:");
            for c in fields.iter() {
                feature_yaml(c.name(), c.data_type(), indent, out);
            }
        }
        other => {
            let _ = writeln!(out, "{pad}dtype: {}", dtype_name(other).unwrap_or("string"));
        }
    }
}

/// The union of the shards' columns (the first shard's order, then new ones).
fn features_of(root: &Path, shards: &[ShardInfo]) -> Result<Vec<Field>, DedupError> {
    let mut fields: Vec<Field> = Vec::new();
    for s in shards {
        let p = root.join(&s.path);
        let f = std::fs::File::open(&p).map_err(io_err(&p))?;
        let b = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .map_err(|e| DedupError::Output { path: p.clone(), msg: e.to_string() })?;
        for field in b.schema().fields() {
            if !fields.iter().any(|x| x.name() == field.name()) {
                fields.push(field.as_ref().clone());
            }
        }
    }
    Ok(fields)
}

fn card(cfg: &DedupConfig, m: &Value, features: &[Field]) -> String {
    let mut s = String::new();
    let splits: Vec<&str> =
        ["train", "validation"].into_iter().filter(|n| m["splits"][n]["shards"].as_u64().unwrap_or(0) > 0).collect();
    s.push_str("---\nlicense: other\ntask_categories:\n- text-generation\ntags:\n- reasoning\n- distillation\n- sft\nconfigs:\n- config_name: default\n  data_files:\n");
    for n in &splits {
        let _ = writeln!(s, "  - split: {n}\n    path: data/{n}-*");
    }
    s.push_str("dataset_info:\n  features:\n");
    for f in features {
        feature_yaml(f.name(), f.data_type(), 2, &mut s);
    }
    s.push_str("  splits:\n");
    for n in &splits {
        let _ = writeln!(
            s,
            "  - name: {n}\n    num_bytes: {}\n    num_examples: {}",
            m["splits"][n]["bytes"], m["splits"][n]["examples"]
        );
    }
    let total_bytes: u64 = splits.iter().map(|n| m["splits"][n]["bytes"].as_u64().unwrap_or(0)).sum();
    let _ = writeln!(s, "  download_size: {total_bytes}\n  dataset_size: {total_bytes}\n---\n");
    let f = &m["funnel"];
    let _ = writeln!(s, "# Reasoning SFT corpus\n");
    let _ = writeln!(
        s,
        "Supervised fine-tuning examples in the `messages` layout (`[{{role, content}}]`, the assistant turn \
         `<think>\\n…\\n</think>\\n\\n…`) that TRL, LLaMA-Factory and `datasets` read directly. Made by \
         `distill dedup` from `{}`.\n",
        cfg.input.display()
    );
    s.push_str("```python\nfrom datasets import load_dataset\nds = load_dataset(\"path/to/this/dir\")\n```\n\n## Splits\n\n| split | examples | shards | bytes |\n|---|---|---|---|\n");
    for n in &splits {
        let _ = writeln!(
            s,
            "| {n} | {} | {} | {} |",
            m["splits"][n]["examples"], m["splits"][n]["shards"], m["splits"][n]["bytes"]
        );
    }
    let _ = writeln!(
        s,
        "\nThe split is by prompt cluster (a prompt and all its near-duplicates sit in one split); {:.1}% of clusters go to validation.\n",
        cfg.validation_fraction * 100.0
    );
    s.push_str("## Provenance\n\n");
    let up = m["upstream"].as_object();
    match up {
        Some(u) if !u.is_empty() => {
            s.push_str("Records and settings of the stages that produced the input (found beside it; full text in `manifest.json` under `upstream`):\n\n");
            for (path, v) in u {
                let _ = writeln!(s, "- `{path}`");
                for key in ["command", "teacher", "model", "endpoint", "prompts", "params", "config"] {
                    if let Some(x) = v.get(key) {
                        let mut t = x.to_string();
                        if t.len() > 300 {
                            t = t.chars().take(300).collect::<String>() + "…";
                        }
                        let _ = writeln!(s, "  - {key}: `{t}`");
                    }
                }
            }
        }
        _ => s.push_str("No manifest, funnel or summary of earlier stages was found beside the input.\n"),
    }
    let _ = writeln!(s, "\nSources: `{}`; tasks: `{}`.\n", m["sources"], m["tasks"]);
    s.push_str("## Funnel\n\n");
    if let Some(u) = up {
        for (path, v) in u {
            if path.ends_with("funnel.json") {
                let _ = writeln!(
                    s,
                    "Earlier (`{path}`):\n\n```json\n{}\n```\n",
                    serde_json::to_string_pretty(v).unwrap_or_default()
                );
            }
        }
    }
    s.push_str("`distill dedup`:\n\n| step | examples |\n|---|---|\n");
    for (k, label) in [
        ("input", "input"),
        ("invalid", "unreadable (rejects/invalid.jsonl)"),
        ("exact_duplicates", "exact duplicates (prompt and response)"),
        ("contaminated", "benchmark overlap"),
        ("near_duplicates", "near-duplicate prompts"),
        ("over_max_per_prompt", "over max per prompt"),
        ("kept", "kept"),
    ] {
        let _ = writeln!(s, "| {label} | {} |", f[k]);
    }
    let _ = writeln!(
        s,
        "\nNear-duplicates: MinHash over word {}-grams ({} permutations, {} bands x {} rows), candidates verified at Jaccard >= {}{}; {} distinct prompts in {} clusters. Every removed example is listed with its reason in `rejects/removed.jsonl.zst`.\n",
        cfg.ngram,
        cfg.num_perm,
        m["lsh"]["bands"],
        m["lsh"]["rows"],
        cfg.threshold,
        if cfg.ignore_numbers { "" } else { " and equal number sequences" },
        f["distinct_prompts"],
        f["clusters"]
    );
    s.push_str("## Decontamination\n\n");
    match m["decontamination"].as_array() {
        Some(b) if !b.is_empty() => {
            let _ = writeln!(
                s,
                "Word {}-gram overlap (lower-cased, punctuation-insensitive), exact match for texts shorter than that{}.\n\n| benchmark | items | prompts removed | examples removed | example match |\n|---|---|---|---|---|",
                cfg.decontam_ngram,
                if cfg.decontam_strip_numbers { ", and exact match with digits and non-letters stripped" } else { "" }
            );
            for r in b {
                let ex = match r.get("example") {
                    Some(e) => format!(
                        "{} ~ {} ({}: \"{}\")",
                        e["prompt_id"].as_str().unwrap_or(""),
                        e["item"].as_str().unwrap_or(""),
                        e["method"].as_str().unwrap_or(""),
                        e["shared_text"].as_str().unwrap_or("").replace('|', "\\|")
                    ),
                    None => "-".into(),
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    r["benchmark"].as_str().unwrap_or(""),
                    r["items"],
                    r["prompts_removed"],
                    r["examples_removed"],
                    ex
                );
            }
            s.push('\n');
        }
        _ => s.push_str("No benchmark was checked (`--decontam FILE:FIELD`): this corpus is not decontaminated.\n\n"),
    }
    s.push_str("## Lengths\n\n");
    let _ = writeln!(s, "- tokens (`meta.num_tokens`, where present): `{}`", m["lengths"]["num_tokens"]);
    let _ = writeln!(s, "- assistant characters: `{}`\n", m["lengths"]["response_chars"]);
    s.push_str("## Licence\n\nTODO: state the licence of the prompts' sources and the teacher model's terms of use before publishing.\n");
    s
}
