//! Record files: streaming readers and writers for `.jsonl`, `.jsonl.zst` and `.parquet`, over a
//! single file or a directory of shards, plus the sharded corpus writer and its manifest.
//!
//! In: paths. Out: [`RawRecord`]s (a JSON object and where it came from), which stages parse
//! into the typed records of [`crate::record`] with [`RawRecord::parse`].
//!
//! Readers never fail a whole file for one bad line: every malformed line is an `Err` item
//! naming the file and line, and reading goes on with the next one. A `.jsonl.zst` file whose
//! writer was killed mid-record yields every complete record and then one
//! [`StoreError::TornTail`] item, which callers report rather than fail on.

pub mod json_out;
mod jsonl;
pub mod layouts;
mod parquet;
pub(crate) use parquet::drop_empty_objects;
mod rejects;
mod shard;

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

pub(crate) use jsonl::parse_line;
pub use jsonl::{Durability, JsonlWriter};
pub use layouts::{Layout, Layouts};
pub use parquet::ParquetWriter;
pub use rejects::{Lenient, Rejects};

/// The rejects file of commands that write no output directory, in the working directory.
pub const DEFAULT_REJECTS: &str = "distill-rejects.jsonl";
pub use shard::{Manifest, ShardInfo, ShardedWriter, publish_shard};

/// A record file's format, chosen by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    Jsonl,
    JsonlZst,
    Parquet,
}

impl Format {
    /// The format a path's extension names, if any.
    pub fn from_path(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_str()?;
        if name.ends_with(".jsonl.zst") || name.ends_with(".json.zst") {
            Some(Format::JsonlZst)
        } else if name.ends_with(".jsonl") || name.ends_with(".ndjson") {
            Some(Format::Jsonl)
        } else if name.ends_with(".parquet") {
            Some(Format::Parquet)
        } else {
            None
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::JsonlZst => "jsonl.zst",
            Format::Parquet => "parquet",
        }
    }
}

/// Errors of the store. Each names the file, and the line when there is one.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: unsupported file type: expected .jsonl, .jsonl.zst or .parquet (or a directory of them)")]
    UnsupportedExtension { path: PathBuf },
    #[error("{path}: no .jsonl, .jsonl.zst or .parquet files in this directory")]
    EmptyDirectory { path: PathBuf },
    #[error("{loc}: invalid JSON: {msg}; each line must be one JSON object")]
    Json { loc: Loc, msg: String },
    #[error("{loc}: expected a JSON object, found {found}")]
    NotAnObject { loc: Loc, found: &'static str },
    #[error("{loc}: invalid UTF-8 at byte {offset} of the line; re-encode the file as UTF-8")]
    Utf8 { loc: Loc, offset: usize },
    #[error("{loc}{id}: {msg}")]
    Schema { loc: Loc, id: IdSuffix, msg: String },
    /// A row of a recognised public layout that cannot be converted (the row is kept for the
    /// rejects file).
    #[error("{loc}{id}: {msg}")]
    Layout { loc: Loc, id: IdSuffix, msg: String, record: Box<Map<String, Value>> },
    #[error(
        "{path}: torn tail after line {after_line}: {detail} (the writer was probably killed; every complete record before it was read)"
    )]
    TornTail { path: PathBuf, after_line: u64, detail: String },
    #[error("{path}: parquet: {msg}")]
    Parquet { path: PathBuf, msg: String },
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        StoreError::Io { path: path.to_path_buf(), source }
    }

    /// A torn tail is reported, not failed on: the records before it were read.
    pub fn is_torn_tail(&self) -> bool {
        matches!(self, StoreError::TornTail { .. })
    }

    /// Where the error happened, when it concerns one record.
    pub fn loc(&self) -> Option<&Loc> {
        match self {
            StoreError::Json { loc, .. }
            | StoreError::NotAnObject { loc, .. }
            | StoreError::Utf8 { loc, .. }
            | StoreError::Schema { loc, .. }
            | StoreError::Layout { loc, .. } => Some(loc),
            _ => None,
        }
    }

    /// The record the error concerns, when it was readable.
    pub fn record(&self) -> Option<&Map<String, Value>> {
        match self {
            StoreError::Layout { record, .. } => Some(record),
            _ => None,
        }
    }
}

/// ` (id X)` when a record id is known, for error messages.
#[derive(Debug, Clone, Default)]
pub struct IdSuffix(pub Option<String>);

impl fmt::Display for IdSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(id) => write!(f, " (id {id})"),
            None => Ok(()),
        }
    }
}

/// Where a record came from: file and 1-based line (row, for Parquet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    pub file: Arc<PathBuf>,
    pub line: u64,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One record as read: a JSON object and its location.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub value: Map<String, Value>,
    pub loc: Loc,
    /// Where the record's line lies in `loc.file` when that is a plain `.jsonl` file and the
    /// record is the line as written (distill's own records, no `--map`): a stage can then
    /// read it again later ([`reread`]) rather than hold it.
    pub span: Option<Span>,
}

/// The bytes of one line of a plain `.jsonl` file (without its line end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub offset: u64,
    pub len: u32,
}

/// Reads the record at `span` of the open file `file` (`loc` names it) again, as the reader
/// gave it the first time.
#[cfg(unix)]
pub fn reread(file: &std::fs::File, loc: Loc, span: Span) -> Result<RawRecord, StoreError> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; span.len as usize];
    file.read_exact_at(&mut buf, span.offset).map_err(|e| StoreError::io(&loc.file, e))?;
    jsonl::parse_line(&buf, loc).map(|mut r| {
        r.span = Some(span);
        r
    })
}

impl RawRecord {
    /// The record's `id`, when it has a string or numeric one.
    pub fn id(&self) -> Option<String> {
        match self.value.get("id")? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// Parses the record into a typed record; a missing or mistyped field becomes an error
    /// naming the file, line and record id.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, StoreError> {
        T::deserialize(Value::Object(self.value.clone())).map_err(|e| StoreError::Schema {
            loc: self.loc.clone(),
            id: IdSuffix(self.id()),
            msg: e.to_string(),
        })
    }

    /// Like [`RawRecord::parse`], consuming the record (no copy).
    pub fn into_parsed<T: DeserializeOwned>(self) -> Result<T, StoreError> {
        let id = IdSuffix(self.id());
        T::deserialize(Value::Object(self.value)).map_err(|e| StoreError::Schema {
            loc: self.loc,
            id,
            msg: e.to_string(),
        })
    }
}

/// The record files a path names: itself, or the record files of a directory in name order
/// (recursively, so `DIR/data/*.parquet` is found from `DIR`). `-` is standard input (JSONL).
pub fn list_inputs(path: &Path) -> Result<Vec<(PathBuf, Format)>, StoreError> {
    if path == Path::new("-") {
        return Ok(vec![(path.to_path_buf(), Format::Jsonl)]);
    }
    let meta = fs::metadata(path).map_err(|e| StoreError::io(path, e))?;
    if meta.is_dir() {
        let mut found = Vec::new();
        collect_dir(path, &mut found)?;
        found.sort();
        if found.is_empty() {
            return Err(StoreError::EmptyDirectory { path: path.to_path_buf() });
        }
        return Ok(found.into_iter().filter_map(|p| Format::from_path(&p).map(|f| (p, f))).collect());
    }
    match Format::from_path(path) {
        Some(f) => Ok(vec![(path.to_path_buf(), f)]),
        None => Err(StoreError::UnsupportedExtension { path: path.to_path_buf() }),
    }
}

fn collect_dir(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), StoreError> {
    for entry in fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))? {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let p = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Temp files of writers in progress and rejects files are not records of this set.
        if name.starts_with('.') || name.contains("rejects") {
            continue;
        }
        let ft = entry.file_type().map_err(|e| StoreError::io(&p, e))?;
        if ft.is_dir() {
            collect_dir(&p, out)?;
        } else if Format::from_path(&p).is_some() {
            out.push(p);
        }
    }
    Ok(())
}

/// Streams the records of a file or directory (see [`list_inputs`]), each public-layout row
/// converted into distill's records ([`layouts`]).
pub struct RecordReader {
    files: std::vec::IntoIter<(PathBuf, Format)>,
    current: Option<Box<dyn Iterator<Item = Result<RawRecord, StoreError>> + Send>>,
    layouts: Layouts,
    /// Records converted but not yet given out (the samples of a `generations` row).
    pending: std::collections::VecDeque<RawRecord>,
    /// Rows read per layout recognised.
    seen: std::collections::BTreeMap<Layout, u64>,
}

/// Opens a file, a directory of shards, or `-` for standard input. Rows of the public layouts
/// come out as distill's records ([`layouts`]); [`RecordReader::with_layouts`] adds `--map`.
pub fn open(path: &Path) -> Result<RecordReader, StoreError> {
    let files = list_inputs(path)?;
    Ok(RecordReader {
        files: files.into_iter(),
        current: None,
        layouts: Layouts::default(),
        pending: Default::default(),
        seen: Default::default(),
    })
}

/// [`open`] with column renames (`--map field=column`).
pub fn open_with(path: &Path, layouts: &Layouts) -> Result<RecordReader, StoreError> {
    Ok(open(path)?.with_layouts(layouts.clone()))
}

impl RecordReader {
    /// Reads with these column renames.
    pub fn with_layouts(mut self, layouts: Layouts) -> Self {
        self.layouts = layouts;
        self
    }

    /// How many rows of each layout were read so far (distill's own records included).
    pub fn layouts_seen(&self) -> &std::collections::BTreeMap<Layout, u64> {
        &self.seen
    }

    /// The next record as stored.
    fn next_raw(&mut self) -> Option<Result<RawRecord, StoreError>> {
        loop {
            if let Some(cur) = self.current.as_mut() {
                match cur.next() {
                    Some(item) => return Some(item),
                    None => self.current = None,
                }
            }
            match self.open_next()? {
                Ok(()) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }

    fn open_next(&mut self) -> Option<Result<(), StoreError>> {
        let (path, format) = self.files.next()?;
        let it: Result<Box<dyn Iterator<Item = _> + Send>, StoreError> = match format {
            Format::Jsonl | Format::JsonlZst => jsonl::LineReader::open(&path, format).map(|r| Box::new(r) as Box<_>),
            Format::Parquet => parquet::ParquetReader::open(&path).map(|r| Box::new(r) as Box<_>),
        };
        Some(it.map(|it| self.current = Some(it)))
    }
}

impl Iterator for RecordReader {
    type Item = Result<RawRecord, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(rec) = self.pending.pop_front() {
                return Some(Ok(rec));
            }
            match self.next_raw()? {
                Ok(rec) => match layouts::normalize(rec, &self.layouts, &mut self.pending) {
                    Ok(layout) => *self.seen.entry(layout).or_insert(0) += 1,
                    Err(e) => return Some(Err(e)),
                },
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Something records can be written to.
pub trait RecordSink {
    /// Writes one record (a JSON object).
    fn write_value(&mut self, value: &Value) -> Result<(), StoreError>;
    /// Flushes and closes; the output is complete only after this returns.
    fn finish(self: Box<Self>) -> Result<(), StoreError>;

    /// Writes one record already serialised as a compact JSON object (without its newline),
    /// as [`RecordSink::write_value`] would have written it: JSONL sinks take the bytes as they
    /// are, so the serialising can happen elsewhere (another thread).
    fn write_json_line(&mut self, line: &[u8]) -> Result<(), StoreError> {
        let v: Value = serde_json::from_slice(line).map_err(|e| StoreError::Json {
            loc: Loc { file: Arc::new(PathBuf::from("<record>")), line: 0 },
            msg: e.to_string(),
        })?;
        self.write_value(&v)
    }

    /// Writes any serialisable record.
    fn write<T: Serialize>(&mut self, record: &T) -> Result<(), StoreError>
    where
        Self: Sized,
    {
        let v = serde_json::to_value(record).map_err(|e| StoreError::Json {
            loc: Loc { file: Arc::new(PathBuf::from("<record>")), line: 0 },
            msg: e.to_string(),
        })?;
        self.write_value(&v)
    }
}

/// Creates a writer for a single output file, by its extension. JSONL outputs are written
/// append-only and durable record by record; Parquet atomically on `finish`.
pub fn create(path: &Path) -> Result<Box<dyn RecordSink + Send>, StoreError> {
    match Format::from_path(path) {
        Some(Format::Jsonl) | Some(Format::JsonlZst) => Ok(Box::new(JsonlWriter::create(path, Durability::Batched)?)),
        Some(Format::Parquet) => Ok(Box::new(ParquetWriter::create(path)?)),
        None => Err(StoreError::UnsupportedExtension { path: path.to_path_buf() }),
    }
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, then a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| StoreError::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| StoreError::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| StoreError::io(path, e))?;
    tmp.persist(path).map_err(|e| StoreError::io(path, e.error))?;
    Ok(())
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, StoreError> {
    use sha2::{Digest, Sha256};
    let mut f = fs::File::open(path).map_err(|e| StoreError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = io::Read::read(&mut f, &mut buf).map_err(|e| StoreError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Appends rejected input, with the reason, to a JSONL file: one
/// `{"file", "line", "id", "reason", "record"}` object per line.
pub struct RejectsWriter {
    path: PathBuf,
    inner: Option<JsonlWriter>,
    pub count: u64,
}

impl RejectsWriter {
    /// Nothing is created until the first reject.
    pub fn new(path: PathBuf) -> Self {
        RejectsWriter { path, inner: None, count: 0 }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records one reject: the error and, when it was readable, the record itself.
    pub fn reject(&mut self, err: &StoreError, record: Option<&Map<String, Value>>) -> Result<(), StoreError> {
        if self.inner.is_none() {
            self.inner = Some(JsonlWriter::create(&self.path, Durability::Batched)?);
        }
        let loc = err.loc();
        let mut obj = Map::new();
        obj.insert("file".into(), loc.map(|l| l.file.display().to_string()).into());
        obj.insert("line".into(), loc.map(|l| l.line).into());
        if let Some(r) = record {
            if let Some(id) = r.get("id") {
                obj.insert("id".into(), id.clone());
            }
            obj.insert("record".into(), Value::Object(r.clone()));
        }
        obj.insert("reason".into(), err.to_string().into());
        if let Some(w) = self.inner.as_mut() {
            w.write_value(&Value::Object(obj))?;
        }
        self.count += 1;
        Ok(())
    }

    pub fn finish(self) -> Result<(), StoreError> {
        match self.inner {
            Some(w) => Box::new(w).finish(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_extension() {
        let cases = [
            ("a.jsonl", Some(Format::Jsonl)),
            ("dir/a.jsonl.zst", Some(Format::JsonlZst)),
            ("train-00000-of-00002.parquet", Some(Format::Parquet)),
            ("a.csv", None),
            ("a.zst", None),
        ];
        for (p, f) in cases {
            assert_eq!(Format::from_path(Path::new(p)), f, "{p}");
        }
    }
}
