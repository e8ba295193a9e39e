//! The one way a stage turns input away, and the lenient reader every reading stage uses.
//!
//! A bad record never stops a run and never vanishes: [`Rejects`] counts it, prints the first
//! few as `STAGE: rejected FILE:LINE (id ID): REASON` on stderr, and appends it to the stage's
//! rejects file as `{"file", "line", "id", "reason", "record"}` (the record when it was
//! readable). A stage may set a limit: the first reject beyond it is returned as the error
//! itself, so the command stops with that one line (exit 2). At the end, any reject makes the
//! command's outcome "finished with rejected input" (exit 1).
//!
//! [`Lenient`] wraps a [`RecordReader`]: unreadable lines go to the rejects, a torn tail (a
//! writer killed mid-record) is a warning, and only readable records come out.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{IdSuffix, Layouts, RawRecord, RecordReader, RejectsWriter, StoreError};

/// How many rejects are printed on stderr before only counting.
const SHOWN: u64 = 5;

/// Rejected input of one stage: counted, reported with its location and written with its reason.
pub struct Rejects {
    stage: &'static str,
    file: RejectsWriter,
    limit: Option<u64>,
}

impl Rejects {
    /// Rejects of `stage` written to `path` (created at the first reject), with no limit.
    pub fn new(stage: &'static str, path: PathBuf) -> Self {
        Rejects { stage, file: RejectsWriter::new(path), limit: None }
    }

    /// At most `limit` rejects; the next one is returned as the error (0: the first bad record
    /// stops the command).
    pub fn with_limit(mut self, limit: Option<u64>) -> Self {
        self.limit = limit;
        self
    }

    pub fn count(&self) -> u64 {
        self.file.count
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Rejects one record: `err` names its file, line and id; `record` is the record when it
    /// could be read. Beyond the limit, returns `err` itself.
    pub fn reject(&mut self, err: StoreError, record: Option<&Map<String, Value>>) -> Result<(), StoreError> {
        if self.limit.is_some_and(|l| self.file.count >= l) {
            return Err(err);
        }
        if self.file.count < SHOWN {
            eprintln!("{}: rejected {err}", self.stage);
        } else if self.file.count == SHOWN {
            eprintln!("{}: more rejects are only counted; all are in {}", self.stage, self.file.path().display());
        }
        self.file.reject(&err, record)
    }

    /// Rejects a readable record for a reason of the stage's own (not a sample, no messages, …).
    pub fn reject_record(&mut self, rec: &RawRecord, reason: impl Into<String>) -> Result<(), StoreError> {
        let err = StoreError::Schema { loc: rec.loc.clone(), id: IdSuffix(rec.id()), msg: reason.into() };
        self.reject(err, Some(&rec.value))
    }

    /// Closes the rejects file and says how many there were; returns the count.
    pub fn finish(self) -> Result<u64, StoreError> {
        let (n, path, stage) = (self.file.count, self.file.path().to_path_buf(), self.stage);
        self.file.finish()?;
        if n > 0 {
            eprintln!("{stage}: {n} rejected record(s), each with its reason in {}", path.display());
        }
        Ok(n)
    }
}

/// Reads records leniently: bad lines go to the rejects, torn tails are warnings.
pub struct Lenient {
    reader: RecordReader,
    pub rejects: Rejects,
    /// Torn tails met (already printed as warnings).
    pub torn_tails: Vec<String>,
}

impl Lenient {
    /// Reads `path` (a file, a shard directory or `-`) for `rejects`' stage.
    pub fn open(path: &Path, rejects: Rejects) -> Result<Lenient, StoreError> {
        Ok(Lenient { reader: super::open(path)?, rejects, torn_tails: Vec::new() })
    }

    /// Reads with these column renames (`--map field=column`); the public layouts are
    /// recognised either way.
    pub fn with_layouts(mut self, layouts: Layouts) -> Self {
        self.reader = self.reader.with_layouts(layouts);
        self
    }

    /// How many rows of each layout were read so far.
    pub fn layouts_seen(&self) -> &std::collections::BTreeMap<super::Layout, u64> {
        self.reader.layouts_seen()
    }

    /// The next readable record; `Err` only when the rejects file cannot be written or the
    /// stage's limit is passed.
    pub fn next_record(&mut self) -> Option<Result<RawRecord, StoreError>> {
        loop {
            match self.reader.next()? {
                Ok(rec) => return Some(Ok(rec)),
                Err(e) if e.is_torn_tail() => {
                    eprintln!("warning: {e}");
                    self.torn_tails.push(e.to_string());
                }
                Err(e) if e.loc().is_some() => {
                    let record = e.record().cloned();
                    if let Err(e) = self.rejects.reject(e, record.as_ref()) {
                        return Some(Err(e));
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Parses a record into a typed one; a record that does not parse is rejected (`None`).
    pub fn parse<T: serde::de::DeserializeOwned>(&mut self, rec: RawRecord) -> Result<Option<T>, StoreError> {
        match rec.parse::<T>() {
            Ok(t) => Ok(Some(t)),
            Err(e) => {
                self.rejects.reject(e, Some(&rec.value))?;
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_are_counted_written_and_limited() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, "{\"id\": \"a\"}\nnot json\n[1]\n{\"id\": \"b\"}\n").expect("write");
        let mut r = Lenient::open(&input, Rejects::new("test", dir.path().join("rej.jsonl"))).expect("open");
        let mut ids = Vec::new();
        while let Some(rec) = r.next_record() {
            let rec = rec.expect("unlimited");
            if rec.id().as_deref() == Some("b") {
                r.rejects.reject_record(&rec, "not wanted").expect("writes");
            } else {
                ids.push(rec.id());
            }
        }
        assert_eq!(ids, vec![Some("a".to_string())]);
        assert_eq!(r.rejects.finish().expect("finish"), 3);
        let rows: Vec<Value> = std::fs::read_to_string(dir.path().join("rej.jsonl"))
            .expect("rejects file")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(rows.iter().map(|r| r["line"].as_u64().unwrap_or(0)).collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!(rows[2]["id"], "b");
        assert!(rows[2]["reason"].as_str().is_some_and(|s| s.ends_with("in.jsonl:4 (id b): not wanted")), "{rows:?}");

        let mut strict =
            Lenient::open(&input, Rejects::new("test", dir.path().join("r2.jsonl")).with_limit(Some(0))).expect("open");
        assert!(strict.next_record().is_some_and(|r| r.is_ok()));
        let e = strict.next_record().and_then(Result::err).map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("in.jsonl:2: invalid JSON"), "{e}");
        assert!(!dir.path().join("r2.jsonl").exists(), "nothing written past the limit");
    }
}
