//! Sharded output: `NAME-00000-of-000NN.{parquet,jsonl.zst}` and `manifest.json`.
//!
//! Records fill shards in input order, `records_per_shard` each, so the same input always gives
//! the same shards byte for byte. Shards are written under hidden names and renamed to their
//! final `-of-N` names only when the writer finishes, so readers never see a partial set.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Durability, Format, JsonlWriter, ParquetWriter, RecordSink, StoreError, sha256_file, write_atomic};
use crate::record::SCHEMA_VERSION;

/// One finished shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// Relative to the manifest's directory once in a manifest.
    pub path: String,
    pub records: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// Writes records into numbered shards.
pub struct ShardedWriter {
    dir: PathBuf,
    name: String,
    format: Format,
    per_shard: u64,
    current: Option<Box<dyn RecordSink + Send>>,
    in_current: u64,
    finished: Vec<(PathBuf, u64)>,
    /// `.jsonl.zst` shards compress on zstd's worker threads.
    parallel: bool,
    /// zstd level of `.jsonl.zst` shards.
    level: i32,
}

impl ShardedWriter {
    /// Shards named `NAME-…` in `dir` (created), `records_per_shard` records each (at least 1).
    pub fn new(dir: &Path, name: &str, format: Format, records_per_shard: u64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        Ok(ShardedWriter {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            format,
            per_shard: records_per_shard.max(1),
            current: None,
            in_current: 0,
            finished: Vec::new(),
            parallel: false,
            level: super::jsonl::DEFAULT_LEVEL,
        })
    }

    /// Compresses `.jsonl.zst` shards on zstd's worker threads (see
    /// [`JsonlWriter::create_parallel`]).
    pub fn parallel(mut self) -> Self {
        self.parallel = true;
        self
    }

    /// Compresses `.jsonl.zst` shards at zstd level `level` (see [`JsonlWriter::create_level`]).
    pub fn level(mut self, level: i32) -> Self {
        self.level = level;
        self
    }

    fn partial_path(&self, index: usize) -> PathBuf {
        self.dir.join(format!(".{}-{index:05}.partial.{}", self.name, self.format.extension()))
    }

    fn open_shard(&self, index: usize) -> Result<Box<dyn RecordSink + Send>, StoreError> {
        let p = self.partial_path(index);
        Ok(match self.format {
            Format::Parquet => Box::new(ParquetWriter::create(&p)?),
            Format::JsonlZst if self.parallel => {
                Box::new(JsonlWriter::create_parallel(&p, Durability::Batched, self.level)?)
            }
            Format::Jsonl | Format::JsonlZst => {
                Box::new(JsonlWriter::create_level(&p, Durability::Batched, self.level)?)
            }
        })
    }

    fn close_current(&mut self) -> Result<(), StoreError> {
        if let Some(w) = self.current.take() {
            w.finish()?;
            let index = self.finished.len();
            self.finished.push((self.partial_path(index), self.in_current));
            self.in_current = 0;
        }
        Ok(())
    }

    /// Writes one record.
    pub fn write_value(&mut self, value: &Value) -> Result<(), StoreError> {
        self.write_with(|w| w.write_value(value))
    }

    /// Writes one record already serialised as compact JSON (`serde_json::to_vec` of the
    /// value; no newline): the same bytes as [`ShardedWriter::write_value`] for JSONL shards.
    pub fn write_line(&mut self, line: &[u8]) -> Result<(), StoreError> {
        self.write_with(|w| w.write_json_line(line))
    }

    fn write_with(
        &mut self,
        write: impl FnOnce(&mut Box<dyn RecordSink + Send>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        if self.current.is_none() {
            self.current = Some(self.open_shard(self.finished.len())?);
        }
        if let Some(w) = self.current.as_mut() {
            write(w)?;
        }
        self.in_current += 1;
        if self.in_current >= self.per_shard {
            self.close_current()?;
        }
        Ok(())
    }

    /// Closes the last shard, renames all to their final names and checksums them.
    /// A writer that received no record produces one empty shard.
    pub fn finish(mut self) -> Result<Vec<ShardInfo>, StoreError> {
        if self.finished.is_empty() && self.current.is_none() {
            self.current = Some(self.open_shard(0)?);
        }
        self.close_current()?;
        let n = self.finished.len();
        let mut out = Vec::with_capacity(n);
        for (i, (partial, records)) in self.finished.iter().enumerate() {
            let name = format!("{}-{i:05}-of-{n:05}.{}", self.name, self.format.extension());
            out.push(publish_shard(partial, &self.dir.join(&name), *records)?);
        }
        Ok(out)
    }
}

/// `manifest.json`: what a sharded output holds and how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema_version: u32,
    /// The producing command line, e.g. `distill dedup`.
    pub command: String,
    /// Its resolved configuration.
    pub config: Value,
    pub total_records: u64,
    pub shards: Vec<ShardInfo>,
}

impl Manifest {
    /// A manifest for shards under `root`; shard paths become relative to it.
    pub fn new(root: &Path, command: &str, config: Value, shards: Vec<ShardInfo>) -> Self {
        let shards: Vec<ShardInfo> = shards
            .into_iter()
            .map(|mut s| {
                if let Ok(rel) = Path::new(&s.path).strip_prefix(root) {
                    s.path = rel.display().to_string();
                }
                s
            })
            .collect();
        Manifest {
            schema_version: SCHEMA_VERSION,
            command: command.to_string(),
            config,
            total_records: shards.iter().map(|s| s.records).sum(),
            shards,
        }
    }

    /// Writes `root/manifest.json` atomically.
    pub fn write(&self, root: &Path) -> Result<(), StoreError> {
        let mut text = serde_json::to_vec_pretty(self).map_err(|e| StoreError::io(root, std::io::Error::other(e)))?;
        text.push(b'\n');
        write_atomic(&root.join("manifest.json"), &text)
    }

    pub fn read(root: &Path) -> Result<Self, StoreError> {
        let p = root.join("manifest.json");
        let text = std::fs::read(&p).map_err(|e| StoreError::io(&p, e))?;
        serde_json::from_slice(&text).map_err(|e| StoreError::Json {
            loc: super::Loc { file: std::sync::Arc::new(p), line: e.line() as u64 },
            msg: e.to_string(),
        })
    }

    /// Checks that every shard exists with its recorded checksum; lists the ones that differ.
    pub fn verify(&self, root: &Path) -> Result<Vec<String>, StoreError> {
        let mut bad = Vec::new();
        for s in &self.shards {
            let p = root.join(&s.path);
            if !p.exists() {
                bad.push(format!("{}: missing", p.display()));
            } else if sha256_file(&p)? != s.sha256 {
                bad.push(format!("{}: sha256 differs from manifest", p.display()));
            }
        }
        Ok(bad)
    }
}

/// Moves a finished partial shard to its final name and describes it (size, sha256).
pub fn publish_shard(partial: &Path, path: &Path, records: u64) -> Result<ShardInfo, StoreError> {
    std::fs::rename(partial, path).map_err(|e| StoreError::io(path, e))?;
    let bytes = std::fs::metadata(path).map_err(|e| StoreError::io(path, e))?.len();
    Ok(ShardInfo { path: path.display().to_string(), records, bytes, sha256: sha256_file(path)? })
}
