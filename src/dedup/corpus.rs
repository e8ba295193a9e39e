//! The corpus: the output pass of `dedup`.
//!
//! Re-reads the input in order and writes each kept example, unchanged, to
//! `DIR/data/{train,validation}-XXXXX-of-YYYYY.parquet` (a new shard once `shard_size` bytes of
//! record JSON have gone into one), then `DIR/manifest.json` (shards with sha256, counts, the
//! funnel of this and every earlier stage found beside the input, decontamination) and
//! `DIR/README.md`, a Hugging Face dataset card whose YAML header (`configs`, `dataset_info`)
//! `datasets.load_dataset(DIR)` reads. Removed examples go to `DIR/rejects/removed.jsonl.zst`
//! (id, prompt id, reason) and unreadable input to `DIR/rejects/invalid.jsonl`.
//!
//! The input is parsed in parallel blocks ([`super::read`]); a kept example's JSON line goes
//! to its shard's spool as it is (distill's own records are not re-serialised), with its
//! structure ([`shape`]). Closing a shard infers the schema from one record per structure and
//! decodes and encodes its row groups in parallel, written in order: the bytes do not depend on
//! the number of threads.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_schema::{ArrowError, DataType, Field};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{ArrowColumnChunk, compute_leaves};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use rayon::prelude::*;
use serde_json::{Map, Value, json};

use super::{Decision, DedupConfig, DedupError, Plan, Report, io_err, parse_example, read};
use crate::store::{self, IdSuffix, RecordSink, RejectsWriter, ShardInfo, StoreError};

/// Rows per row group: the unit the shard encoder decodes and encodes in parallel.
const ROWS: usize = 16 * 1024;

/// The codec of the shards: zstd at its fastest level, which `datasets`/pyarrow read.
fn codec() -> Compression {
    Compression::ZSTD(ZstdLevel::default())
}

/// One shard being written: the kept records' JSON lines spooled to disk, with one record of
/// every distinct structure for the schema.
struct Spool {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    bytes: u64,
    records: u64,
    shapes: HashSet<Vec<u8>>,
    samples: Vec<Vec<u8>>,
}

/// Parquet shards of one split, bounded in bytes of record JSON.
struct SplitWriter {
    dir: PathBuf,
    name: &'static str,
    limit: u64,
    current: Option<Spool>,
    finished: Vec<(PathBuf, u64)>,
}

impl SplitWriter {
    fn new(dir: &Path, name: &'static str, limit: u64) -> Self {
        SplitWriter { dir: dir.to_path_buf(), name, limit: limit.max(1), current: None, finished: Vec::new() }
    }

    fn partial(&self, i: usize) -> PathBuf {
        self.dir.join(format!(".{}-{i:05}.partial.parquet", self.name))
    }

    /// Adds one record: its JSON (one line, no newline) and its structure ([`shape`]).
    fn write(&mut self, json: &[u8], shape: &[u8]) -> Result<(), StoreError> {
        use std::io::Write as _;
        let size = json.len() as u64 + 1;
        if self.current.as_ref().is_some_and(|c| c.bytes + size > self.limit) {
            self.close()?;
        }
        if self.current.is_none() {
            let partial = self.partial(self.finished.len());
            let name = partial.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let path = self.dir.join(format!("{name}.spool.jsonl"));
            let f = std::fs::File::create(&path).map_err(|e| StoreError::io(&path, e))?;
            let file = std::io::BufWriter::with_capacity(1 << 20, f);
            self.current =
                Some(Spool { path, file, bytes: 0, records: 0, shapes: HashSet::new(), samples: Vec::new() });
        }
        if let Some(c) = self.current.as_mut() {
            c.file.write_all(json).and_then(|()| c.file.write_all(b"\n")).map_err(|e| StoreError::io(&c.path, e))?;
            if !c.shapes.contains(shape) {
                c.shapes.insert(shape.to_vec());
                c.samples.push(json.to_vec());
            }
            c.bytes += size;
            c.records += 1;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), StoreError> {
        if let Some(c) = self.current.take() {
            let Spool { path, file, records, samples, .. } = c;
            let out = self.partial(self.finished.len());
            let r = file
                .into_inner()
                .map_err(|e| StoreError::io(&path, e.into_error()))
                .and_then(|_| encode_shard(&path, &out, &samples));
            let _ = std::fs::remove_file(&path);
            r?;
            self.finished.push((out, records));
        }
        Ok(())
    }

    /// Renames the shards to their `-of-N` names; a split with no record writes none.
    fn finish(mut self) -> Result<Vec<ShardInfo>, StoreError> {
        self.close()?;
        let n = self.finished.len();
        let mut out = Vec::new();
        for (i, (partial, records)) in self.finished.iter().enumerate() {
            let path = self.dir.join(format!("{}-{i:05}-of-{n:05}.parquet", self.name));
            out.push(store::publish_shard(partial, &path, *records)?);
        }
        Ok(out)
    }
}

/// Writes the JSON lines of `spool` as the Parquet file `out` (atomically). The schema is
/// inferred (as `arrow-json` infers it) from `samples`, one record of each structure in the
/// spool; row groups of [`ROWS`] records are decoded and encoded in parallel and written in
/// order, so the bytes do not depend on the number of threads.
fn encode_shard(spool: &Path, out: &Path, samples: &[Vec<u8>]) -> Result<(), StoreError> {
    use std::io::BufRead as _;
    let pe = |e: &dyn std::fmt::Display| StoreError::Parquet { path: out.to_path_buf(), msg: e.to_string() };
    let values =
        samples.iter().map(|b| serde_json::from_slice::<Value>(b).map_err(|e| ArrowError::JsonError(e.to_string())));
    let schema = Arc::new(
        arrow_json::reader::infer_json_schema_from_iterator(values)
            .map_err(|e| pe(&format!("records do not share one column layout: {e}; write .jsonl.zst instead")))?,
    );
    let props = WriterProperties::builder().set_compression(codec()).set_max_row_group_row_count(Some(ROWS)).build();
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| StoreError::io(dir, e))?;
    let file = tmp.reopen().map_err(|e| StoreError::io(out, e))?;
    let writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| pe(&e))?;
    let (mut fw, factory) = writer.into_serialized_writer().map_err(|e| pe(&e))?;
    let mut reader =
        std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(spool).map_err(|e| StoreError::io(spool, e))?);
    let par = rayon::current_num_threads().max(1) * 2;
    let mut row_group = 0usize;
    let mut eof = false;
    while !eof {
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        while chunks.len() < par && !eof {
            let mut c = Vec::new();
            let mut n = 0;
            while n < ROWS {
                if reader.read_until(b'\n', &mut c).map_err(|e| StoreError::io(spool, e))? == 0 {
                    eof = true;
                    break;
                }
                n += 1;
            }
            if n > 0 {
                chunks.push(c);
            }
        }
        let writers = (0..chunks.len())
            .map(|i| factory.create_column_writers(row_group + i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pe(&e))?;
        let encoded: Vec<Result<Vec<ArrowColumnChunk>, String>> = chunks
            .into_par_iter()
            .zip(writers)
            .map(|(bytes, mut cols)| {
                let mut dec = arrow_json::ReaderBuilder::new(schema.clone())
                    .with_batch_size(ROWS + 1)
                    .with_coerce_primitive(true)
                    .build_decoder()
                    .map_err(|e| e.to_string())?;
                let mut off = 0;
                while off < bytes.len() {
                    let n = dec.decode(&bytes[off..]).map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Err("the JSON decoder made no progress".to_string());
                    }
                    off += n;
                }
                let batch = dec.flush().map_err(|e| e.to_string())?.ok_or("no rows decoded")?;
                let mut it = cols.iter_mut();
                for (field, column) in schema.fields().iter().zip(batch.columns()) {
                    for leaf in compute_leaves(field, column).map_err(|e| e.to_string())? {
                        it.next().ok_or("more leaves than columns")?.write(&leaf).map_err(|e| e.to_string())?;
                    }
                }
                cols.into_iter().map(|c| c.close().map_err(|e| e.to_string())).collect()
            })
            .collect();
        for cols in encoded {
            let cols = cols.map_err(|e| pe(&e))?;
            let mut rg = fw.next_row_group().map_err(|e| pe(&e))?;
            for c in cols {
                c.append_to_row_group(&mut rg).map_err(|e| pe(&e))?;
            }
            rg.close().map_err(|e| pe(&e))?;
            row_group += 1;
        }
    }
    let file = fw.into_inner().map_err(|e| pe(&e))?;
    file.sync_all().map_err(|e| StoreError::io(out, e))?;
    tmp.persist(out).map_err(|e| StoreError::io(out, e.error))?;
    Ok(())
}

/// The structure of a JSON value, written to `out`: keys and the kinds of values, an array's
/// consecutive equal elements once. Records of one structure get one type from schema
/// inference, so inferring from one record of each gives the schema of all. Sets `empty` when
/// the value holds an empty object (which has no Parquet type).
pub(crate) fn shape(json: &[u8], out: &mut Vec<u8>, empty: &mut bool) -> Result<(), serde_json::Error> {
    use serde::de::DeserializeSeed as _;
    out.clear();
    *empty = false;
    let mut de = serde_json::Deserializer::from_slice(json);
    ShapeSeed { out, empty }.deserialize(&mut de)?;
    de.end()
}

struct ShapeSeed<'b> {
    out: &'b mut Vec<u8>,
    empty: &'b mut bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for ShapeSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ShapeSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.out.push(b'b');
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        self.out.push(b'i');
        Ok(())
    }
    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        // As serde_json's `Value::is_i64`: larger integers are inferred as floats.
        self.out.push(if i64::try_from(v).is_ok() { b'i' } else { b'f' });
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        self.out.push(b'f');
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        self.out.push(b's');
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.out.push(b'n');
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        self.out.push(b'n');
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.out.push(b'[');
        let mut prev: Option<usize> = None;
        loop {
            let start = self.out.len();
            if seq.next_element_seed(ShapeSeed { out: &mut *self.out, empty: &mut *self.empty })?.is_none() {
                break;
            }
            match prev {
                Some(p) if self.out[p..start] == self.out[start..] => self.out.truncate(start),
                _ => prev = Some(start),
            }
        }
        self.out.push(b']');
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.out.push(b'{');
        let mut n = 0usize;
        while map.next_key_seed(KeySeed(&mut *self.out))?.is_some() {
            map.next_value_seed(ShapeSeed { out: &mut *self.out, empty: &mut *self.empty })?;
            n += 1;
        }
        if n == 0 {
            *self.empty = true;
        }
        self.out.push(b'}');
        Ok(())
    }
}

struct KeySeed<'b>(&'b mut Vec<u8>);

impl<'de> serde::de::DeserializeSeed<'de> for KeySeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeySeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E>(self, k: &str) -> Result<(), E> {
        self.0.extend_from_slice(&(k.len() as u32).to_le_bytes());
        self.0.extend_from_slice(k.as_bytes());
        Ok(())
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

/// A valid example of a block, ready to write: its JSON is `bytes[json]` (the input line
/// itself for distill's own records), its structure `bytes[shape]`.
struct ValidRec {
    line: u64,
    id: Option<String>,
    json: Range<usize>,
    shape: Range<usize>,
    num_tokens: Option<u64>,
    chars: u64,
    source: Option<String>,
    task: &'static str,
}

enum Prepared {
    Valid(ValidRec),
    /// Readable, but not an SFT example dedup takes.
    Invalid(StoreError, Map<String, Value>),
    Unreadable(StoreError),
}

struct PreparedBlock {
    file: u32,
    path: Arc<PathBuf>,
    bytes: Vec<u8>,
    items: Vec<Prepared>,
}

fn assistant_chars<'a>(turns: impl Iterator<Item = (&'a str, &'a str)>) -> u64 {
    turns.filter(|(role, _)| *role == "assistant").map(|(_, c)| c.chars().count() as u64).sum()
}

/// Appends a record's JSON and its shape to `bytes`; a record holding an empty object is
/// rewritten without it. `None` when it is not JSON after all.
fn add_json(
    json: &[u8],
    value: Option<Value>,
    buf: &mut Vec<u8>,
    bytes: &mut Vec<u8>,
) -> Option<(Range<usize>, Range<usize>)> {
    let mut empty = false;
    shape(json, buf, &mut empty).ok()?;
    let rewritten;
    let json = if empty {
        let mut v = match value {
            Some(v) => v,
            None => serde_json::from_slice(json).ok()?,
        };
        crate::store::drop_empty_objects(&mut v);
        rewritten = serde_json::to_vec(&v).ok()?;
        shape(&rewritten, buf, &mut empty).ok()?;
        &rewritten[..]
    } else {
        json
    };
    let a = bytes.len();
    bytes.extend_from_slice(json);
    let b = bytes.len();
    bytes.extend_from_slice(buf);
    Some((a..b, b..bytes.len()))
}

/// Parses a block in a worker: what the output pass needs of each record.
fn prepare_block(mut block: read::Block) -> PreparedBlock {
    let (file, path) = (block.file, block.path.clone());
    let mut bytes = Vec::new();
    let mut items = Vec::new();
    let mut buf = Vec::new();
    read::for_each_item(&mut block, |item| match item {
        read::Item::Lite { line, lite, bytes: json } => {
            if lite.prompt_and_response().is_none() {
                let loc = store::Loc { file: path.clone(), line };
                let e = StoreError::Schema {
                    loc,
                    id: IdSuffix(Some(lite.id.to_string())),
                    msg: "no user message: dedup takes the prompt from the first user turn".into(),
                };
                items.push(Prepared::Invalid(e, serde_json::from_slice(json).unwrap_or_default()));
                return;
            }
            let Some((json_r, shape_r)) = add_json(json, None, &mut buf, &mut bytes) else { return };
            items.push(Prepared::Valid(ValidRec {
                line,
                id: Some(lite.id.into_owned()),
                json: json_r,
                shape: shape_r,
                num_tokens: lite.meta.num_tokens,
                chars: assistant_chars(lite.messages.iter().map(|m| (&*m.role, &*m.content))),
                source: lite.source.map(Cow::into_owned),
                task: lite.task.as_str(),
            }));
        }
        read::Item::Raw(Err(e)) => items.push(Prepared::Unreadable(e)),
        read::Item::Raw(Ok(raw)) => {
            let ex = match parse_example(&raw) {
                Ok(ex) => ex,
                Err(e) => {
                    let msg = match e {
                        DedupError::Store(e) => e.to_string(),
                        e => e.to_string(),
                    };
                    let e = StoreError::Schema { loc: raw.loc.clone(), id: IdSuffix(raw.id()), msg };
                    items.push(Prepared::Invalid(e, raw.value));
                    return;
                }
            };
            let id = raw.id();
            let line = raw.loc.line;
            let v = Value::Object(raw.value);
            let num_tokens = v.pointer("/meta/num_tokens").and_then(Value::as_u64);
            let chars = v.get("messages").and_then(Value::as_array).map_or(0, |msgs| {
                assistant_chars(msgs.iter().filter_map(|m| {
                    Some((m.get("role").and_then(Value::as_str)?, m.get("content").and_then(Value::as_str)?))
                }))
            });
            let source = v.get("source").and_then(Value::as_str).map(str::to_string);
            let task = ex.task.as_str();
            let Ok(json) = serde_json::to_vec(&v) else { return };
            let Some((json_r, shape_r)) = add_json(&json, Some(v), &mut buf, &mut bytes) else { return };
            items.push(Prepared::Valid(ValidRec {
                line,
                id,
                json: json_r,
                shape: shape_r,
                num_tokens,
                chars,
                source,
                task,
            }));
        }
    });
    PreparedBlock { file, path, bytes, items }
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
    read::process(&plan.files, prepare_block, |b| {
        for item in b.items {
            let rec = match item {
                Prepared::Unreadable(e) => {
                    if e.is_torn_tail() {
                        torn.push(e.to_string());
                    }
                    invalid.reject(&e, None)?;
                    continue;
                }
                Prepared::Invalid(e, record) => {
                    invalid.reject(&e, Some(&record))?;
                    continue;
                }
                Prepared::Valid(rec) => rec,
            };
            let json = &b.bytes[rec.json.clone()];
            let matches = plan.examples.get(cursor).is_some_and(|e| e.file == b.file && e.line == rec.line);
            if !matches {
                let loc = store::Loc { file: b.path.clone(), line: rec.line };
                let e = StoreError::Schema { loc, id: IdSuffix(rec.id.clone()), msg: "changed since the scan".into() };
                let record: Map<String, Value> = serde_json::from_slice(json).unwrap_or_default();
                invalid.reject(&e, Some(&record))?;
                continue;
            }
            let d = plan.decisions[cursor];
            let node = plan.ex_node[cursor] as usize;
            cursor += 1;
            match d {
                Decision::Train | Decision::Validation => {
                    if let Some(t) = rec.num_tokens {
                        tokens.push(t);
                    }
                    chars.push(rec.chars);
                    let src = rec.source.as_deref().unwrap_or("(none)");
                    match sources.get_mut(src) {
                        Some(c) => *c += 1,
                        None => {
                            sources.insert(src.to_string(), 1);
                        }
                    }
                    match tasks.get_mut(rec.task) {
                        Some(c) => *c += 1,
                        None => {
                            tasks.insert(rec.task.to_string(), 1);
                        }
                    }
                    let shape = &b.bytes[rec.shape.clone()];
                    if d == Decision::Train { train.write(json, shape)? } else { validation.write(json, shape)? }
                }
                other => {
                    let mut r = json!({"id": rec.id, "prompt_id": plan.node_ids[node], "file": b.path.display().to_string(), "line": rec.line});
                    let (stage, reason) = match other {
                        Decision::Exact(first) => {
                            let e = &plan.examples[first as usize];
                            r["duplicate_of"] = plan.node_ids[plan.ex_node[first as usize] as usize].clone().into();
                            (
                                "exact",
                                format!("prompt and response repeat {}:{}", plan.files[e.file as usize].path, e.line),
                            )
                        }
                        Decision::Contaminated(u) => {
                            let hit = plan.prompts[u as usize].hit.as_ref();
                            let b = hit.map(|h| plan.decontam[h.bench as usize].benchmark.clone()).unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::state::FileEntry;

    /// What the output pass sees of each record: kind, line, id, the record.
    fn via_blocks(path: &Path) -> Vec<(String, u64, Option<String>, Value)> {
        let files = [FileEntry { index: 0, path: path.display().to_string(), bytes: 0 }];
        let mut got = Vec::new();
        read::process(&files, prepare_block, |b| {
            for item in b.items {
                got.push(match item {
                    Prepared::Valid(r) => {
                        let v: Value = serde_json::from_slice(&b.bytes[r.json]).expect("json");
                        ("valid".to_string(), r.line, r.id, v)
                    }
                    Prepared::Invalid(e, rec) => {
                        ("invalid".to_string(), e.loc().map_or(0, |l| l.line), None, Value::Object(rec))
                    }
                    Prepared::Unreadable(e) => (format!("unreadable torn={}", e.is_torn_tail()), 0, None, Value::Null),
                });
            }
            Ok(())
        })
        .expect("process");
        got
    }

    /// The same through the store's reader, as the output pass read it before the fast path.
    fn via_store(path: &Path) -> Vec<(String, u64, Option<String>, Value)> {
        store::open(path)
            .expect("open")
            .map(|item| match item {
                Err(e) => (format!("unreadable torn={}", e.is_torn_tail()), 0, None, Value::Null),
                Ok(raw) => match parse_example(&raw) {
                    Err(_) => ("invalid".to_string(), raw.loc.line, None, Value::Object(raw.value)),
                    Ok(_) => {
                        let mut v = Value::Object(raw.value.clone());
                        crate::store::drop_empty_objects(&mut v);
                        ("valid".to_string(), raw.loc.line, raw.id(), v)
                    }
                },
            })
            .collect()
    }

    #[test]
    fn fast_path_reads_what_the_store_reads() {
        let native = |id: &str, extra: &str| {
            format!(
                r#"{{"id":"{id}","messages":[{{"role":"user","content":"q {id}"}},{{"role":"assistant","content":"<think>\nr\n</think>\n\na"}}],"task":"math","prompt_id":"{id}"{extra}}}"#
            )
        };
        let lines = [
            native("a", r#","meta":{"pass_rate":1.0,"n_samples":2,"num_tokens":7},"source":"s""#),
            native("b", r#","meta":{},"x":{"y":{},"z":[{},1]}"#),
            String::new(),
            "   ".to_string(),
            native("c", r#","note":"caf\u00e9 \"q\"\\""#) + "\r",
            r#"{"conversations":[{"from":"human","value":"hi"},{"from":"gpt","value":"yo"}]}"#.to_string(),
            r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]}"#.to_string(),
            r#"{"id":"d","messages":[{"role":"assistant","content":"no user"}],"task":"math","prompt_id":"d"}"#
                .to_string(),
            "{not json".to_string(),
            r#"{"id":5,"messages":[{"role":"user","content":"q"}],"task":"math","prompt_id":"e"}"#.to_string(),
            r#"{"id":"f","messages":[{"role":"user","content":"q"}],"task":"math","prompt_id":"f","id":"g"}"#
                .to_string(),
            r#"{"problem":"p","answer":"1","generations":["<think>a</think>1","<think>b</think>2"]}"#.to_string(),
            native("h", r#","generations":null"#),
            r#"{"id":"torn","messages":[{"role":"user""#.to_string(),
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = dir.path().join("in.jsonl");
        std::fs::write(&plain, lines.join("\n")).expect("write");
        let zst = dir.path().join("in.jsonl.zst");
        std::fs::write(&zst, zstd::encode_all(lines.join("\n").as_bytes(), 3).expect("zstd")).expect("write");
        for p in [&plain, &zst] {
            let (a, b) = (via_blocks(p), via_store(p));
            assert_eq!(a, b, "{}", p.display());
            let kinds: Vec<&str> = a.iter().map(|x| x.0.as_str()).collect();
            assert!(kinds.contains(&"valid") && kinds.contains(&"invalid"), "{kinds:?}");
            assert_eq!(kinds.last(), Some(&"unreadable torn=true"));
        }
    }

    #[test]
    fn one_record_per_shape_infers_the_schema_of_all() {
        let recs = [
            r#"{"a":1,"b":"x","c":[1,2,3]}"#,
            r#"{"a":2,"b":"y","c":[4]}"#,
            r#"{"a":2.5,"d":{"e":true},"c":[]}"#,
            r#"{"a":3,"d":{"f":null},"m":[{"r":"u","c":"x"},{"r":"a","c":"y"}]}"#,
            r#"{"a":4,"m":[{"r":"u","c":"x"},{"r":"a","c":"y","w":1}]}"#,
            r#"{"a":5,"m":[{"r":"u","c":"x"}],"b":7}"#,
            r#"{"a":18446744073709551615,"c":[1.5],"n":[[1],[2,3]]}"#,
            r#"{"a":6,"n":[[],[4]],"g":"s"}"#,
            r#"{"a":7,"g":[1,"s"]}"#,
        ];
        let all = arrow_json::reader::infer_json_schema_from_iterator(
            recs.iter().map(|r| Ok::<Value, ArrowError>(serde_json::from_str(r).expect("json"))),
        )
        .expect("infer");
        let (mut seen, mut samples, mut buf, mut empty) = (HashSet::new(), Vec::new(), Vec::new(), false);
        for r in recs.iter().chain(recs.iter()) {
            shape(r.as_bytes(), &mut buf, &mut empty).expect("shape");
            assert!(!empty);
            if seen.insert(buf.clone()) {
                samples.push(serde_json::from_str::<Value>(r).expect("json"));
            }
        }
        // The first two differ in values only.
        assert_eq!(samples.len(), recs.len() - 1);
        let some =
            arrow_json::reader::infer_json_schema_from_iterator(samples.into_iter().map(Ok::<Value, ArrowError>))
                .expect("infer");
        assert_eq!(all, some);
        // Equal elements of an array count once; an empty object is reported.
        let mut other = Vec::new();
        shape(br#"{"c":[1,2,3,4]}"#, &mut buf, &mut empty).expect("shape");
        shape(br#"{"c":[5]}"#, &mut other, &mut empty).expect("shape");
        assert_eq!(buf, other);
        shape(br#"{"c":[{"x":{}}]}"#, &mut buf, &mut empty).expect("shape");
        assert!(empty);
    }
}
