//! Parquet files of records, through Arrow's JSON reader and writer so that any record shape
//! (unknown fields included) maps to columns of the same names: `messages` becomes a list of
//! `{role, content}` structs, which pandas and `datasets` read as a list of dicts.
//!
//! Writing streams records to a hidden JSONL spool beside the output, infers one schema over
//! all of them on `finish`, converts in batches and renames the finished file into place, so
//! memory stays bounded and a killed writer leaves no half-written Parquet file.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde_json::Value;

use super::jsonl::parse_line;
use super::{Durability, JsonlWriter, Loc, RawRecord, RecordSink, StoreError};

const BATCH: usize = 1024;

fn perr(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Parquet { path: path.to_path_buf(), msg: e.to_string() }
}

/// Streams the rows of a Parquet file as JSON records.
pub(crate) struct ParquetReader {
    path: Arc<PathBuf>,
    batches: ParquetRecordBatchReader,
    pending: std::vec::IntoIter<Result<RawRecord, StoreError>>,
    row: u64,
    failed: bool,
}

impl ParquetReader {
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        let f = File::open(path).map_err(|e| StoreError::io(path, e))?;
        let batches = ParquetRecordBatchReaderBuilder::try_new(f)
            .map_err(|e| perr(path, format!("{e} (is this a Parquet file?)")))?
            .with_batch_size(BATCH)
            .build()
            .map_err(|e| perr(path, e))?;
        Ok(ParquetReader {
            path: Arc::new(path.to_path_buf()),
            batches,
            pending: Vec::new().into_iter(),
            row: 0,
            failed: false,
        })
    }

    fn convert(&mut self, batch: &RecordBatch) -> Result<(), StoreError> {
        let mut out = Vec::with_capacity(batch.num_rows() * 256);
        {
            let mut w = arrow_json::WriterBuilder::new()
                .with_explicit_nulls(false)
                .build::<_, arrow_json::writer::LineDelimited>(&mut out);
            w.write(batch).map_err(|e| perr(&self.path, e))?;
            w.finish().map_err(|e| perr(&self.path, e))?;
        }
        let mut items = Vec::with_capacity(batch.num_rows());
        for line in out.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            self.row += 1;
            items.push(parse_line(line, Loc { file: self.path.clone(), line: self.row }));
        }
        self.pending = items.into_iter();
        Ok(())
    }
}

impl Iterator for ParquetReader {
    type Item = Result<RawRecord, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.pending.next() {
                return Some(item);
            }
            if self.failed {
                return None;
            }
            match self.batches.next()? {
                Ok(batch) => {
                    if let Err(e) = self.convert(&batch) {
                        self.failed = true;
                        return Some(Err(e));
                    }
                }
                Err(e) => {
                    self.failed = true;
                    return Some(Err(perr(&self.path, e)));
                }
            }
        }
    }
}

/// Writes one Parquet file; the file appears (atomically) only when `finish` returns.
pub struct ParquetWriter {
    path: PathBuf,
    spool_path: PathBuf,
    spool: JsonlWriter,
    records: u64,
    buf: Value,
}

impl ParquetWriter {
    pub fn create(path: &Path) -> Result<Self, StoreError> {
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let spool_path = dir.join(format!(".{name}.spool.jsonl"));
        let spool = JsonlWriter::create(&spool_path, Durability::Batched)?;
        Ok(ParquetWriter { path: path.to_path_buf(), spool_path, spool, records: 0, buf: Value::Null })
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    /// Converts the spool into the Parquet file and removes the spool.
    pub fn close(self) -> Result<(), StoreError> {
        let ParquetWriter { path, spool_path, spool, records, .. } = self;
        spool.close()?;
        let result = convert_spool(&spool_path, &path, records);
        let _ = std::fs::remove_file(&spool_path);
        result
    }
}

/// Empty objects have no Parquet type; they are written as absent (in arrays: null).
pub(crate) fn drop_empty_objects(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for x in m.values_mut() {
                drop_empty_objects(x);
            }
            m.retain(|_, x| !matches!(x, Value::Object(o) if o.is_empty()));
        }
        Value::Array(a) => {
            for x in a.iter_mut() {
                drop_empty_objects(x);
                if matches!(x, Value::Object(o) if o.is_empty()) {
                    *x = Value::Null;
                }
            }
        }
        _ => {}
    }
}

fn convert_spool(spool: &Path, out: &Path, records: u64) -> Result<(), StoreError> {
    let mut f = BufReader::with_capacity(1 << 16, File::open(spool).map_err(|e| StoreError::io(spool, e))?);
    let schema = if records == 0 {
        arrow_schema::Schema::empty()
    } else {
        arrow_json::reader::infer_json_schema(&mut f, None)
            .map_err(|e| perr(out, format!("records do not share one column layout: {e}; write .jsonl.zst instead")))?
            .0
    };
    let schema = Arc::new(schema);
    f.seek(SeekFrom::Start(0)).map_err(|e| StoreError::io(spool, e))?;
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| StoreError::io(dir, e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).map_err(|e| perr(out, e))?))
        .set_max_row_group_row_count(Some(16 * BATCH))
        .build();
    let file = tmp.reopen().map_err(|e| StoreError::io(out, e))?;
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| perr(out, e))?;
    if records > 0 {
        let reader = arrow_json::ReaderBuilder::new(schema)
            .with_batch_size(BATCH)
            .with_coerce_primitive(true)
            .build(f)
            .map_err(|e| perr(out, e))?;
        for batch in reader {
            let batch = batch.map_err(|e| perr(out, e))?;
            writer.write(&batch).map_err(|e| perr(out, e))?;
        }
    }
    let file = writer.into_inner().map_err(|e| perr(out, e))?;
    file.sync_all().map_err(|e| StoreError::io(out, e))?;
    tmp.persist(out).map_err(|e| StoreError::io(out, e.error))?;
    Ok(())
}

impl RecordSink for ParquetWriter {
    fn write_value(&mut self, value: &Value) -> Result<(), StoreError> {
        if !value.is_object() {
            return Err(perr(&self.path, "records must be JSON objects"));
        }
        self.buf.clone_from(value);
        drop_empty_objects(&mut self.buf);
        let v = std::mem::take(&mut self.buf);
        let r = self.spool.write_value(&v);
        self.buf = v;
        self.records += 1;
        r
    }

    fn finish(self: Box<Self>) -> Result<(), StoreError> {
        (*self).close()
    }
}
