//! Resume, exactly once.
//!
//! The output directory holds append-only parts `part-00000.jsonl.zst`, `part-00001.jsonl.zst`,
//! … Each run writes one NEW part (never appending into an older compressed part), one record
//! at a time, SIGKILL-safe. Before a run, every part is read (a torn tail left by a killed
//! writer is tolerated: the complete records before it count) and the ids present are the
//! (prompt, sample) pairs already done.
//!
//! Superseding (`--regenerate truncated`): when an id is in more than one part, the record in
//! the part with the higher number wins. At the end of a run that wrote superseding records
//! (and at the start of any run that finds duplicates left by a killed one), each older part
//! holding a losing record is rewritten without it (temp file + rename), so readers of the
//! directory, `inspect` included, see exactly one record per id.

use std::collections::{BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use crate::store::{self, Durability, JsonlWriter, RecordSink, StoreError};

/// A 64-bit key of a record id (the done set holds keys, not strings, so it stays small).
pub fn id_key(id: &str) -> u64 {
    let mut h = DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

/// The file name of part `n`.
pub fn part_name(n: u32) -> String {
    format!("part-{n:05}.jsonl.zst")
}

fn part_number(name: &str) -> Option<u32> {
    name.strip_prefix("part-")?.strip_suffix(".jsonl.zst")?.parse().ok()
}

/// What a done sample looks like to the resume logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    /// The part holding the winning record.
    pub part: u32,
    /// Its `finish_reason` was `length`.
    pub truncated: bool,
}

/// The state of an output directory.
#[derive(Debug, Default)]
pub struct Scan {
    pub done: HashMap<u64, Done>,
    /// The parts found, in order.
    pub parts: Vec<u32>,
    /// Parts to rewrite: holding records that a later part superseded, or torn by a kill.
    pub stale_parts: BTreeSet<u32>,
    /// Warnings (torn tails, unreadable lines) to show the user.
    pub warnings: Vec<String>,
    pub records: u64,
}

impl Scan {
    /// The number of the part a new run writes.
    pub fn next_part(&self) -> u32 {
        self.parts.last().map_or(0, |p| p + 1)
    }
}

/// Lists the parts of `dir` (which may not exist yet) and removes temp files of an interrupted
/// compaction.
pub fn list_parts(dir: &Path) -> Result<Vec<u32>, StoreError> {
    let mut parts = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(parts),
        Err(e) => return Err(StoreError::Io { path: dir.to_path_buf(), source: e }),
    };
    for entry in rd {
        let entry = entry.map_err(|e| StoreError::Io { path: dir.to_path_buf(), source: e })?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = part_number(&name) {
            parts.push(n);
        } else if name.starts_with(".part-") && name.ends_with(".tmp.jsonl.zst") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    parts.sort_unstable();
    Ok(parts)
}

/// Reads every part of `dir`.
pub fn scan(dir: &Path) -> Result<Scan, StoreError> {
    let mut s = Scan { parts: list_parts(dir)?, ..Scan::default() };
    for &p in &s.parts.clone() {
        let path = dir.join(part_name(p));
        for item in store::open(&path)? {
            let rec = match item {
                Ok(r) => r,
                Err(e) => {
                    // A part whose writer was killed ends in an unfinished zstd frame: distill
                    // reads past it, standard tools do not. Rewrite it as a closed file.
                    if e.is_torn_tail() {
                        s.stale_parts.insert(p);
                    }
                    s.warnings.push(e.to_string());
                    continue;
                }
            };
            let Some(id) = rec.id() else {
                s.warnings.push(format!("{}: record without an id, ignored", rec.loc));
                continue;
            };
            let truncated = rec.value.get("finish_reason").and_then(|v| v.as_str()) == Some("length");
            s.records += 1;
            if let Some(old) = s.done.insert(id_key(&id), Done { part: p, truncated })
                && old.part != p
            {
                s.stale_parts.insert(old.part);
            }
        }
    }
    Ok(s)
}

/// Rewrites each of `parts` in `dir` keeping only the records whose winning part (per `done`)
/// is that part. Returns the number of records dropped.
pub fn compact(dir: &Path, parts: &BTreeSet<u32>, done: &HashMap<u64, Done>) -> Result<u64, StoreError> {
    let mut dropped = 0;
    for &p in parts {
        let path = dir.join(part_name(p));
        let tmp: PathBuf = dir.join(format!(".part-{p:05}.tmp.jsonl.zst"));
        let mut w = JsonlWriter::create(&tmp, Durability::Batched)?;
        for item in store::open(&path)? {
            // Torn tails and bad lines are dropped by the rewrite (they were never records).
            let Ok(rec) = item else { continue };
            let keep = rec.id().is_some_and(|id| done.get(&id_key(&id)).is_none_or(|d| d.part == p));
            if keep {
                w.write_value(&serde_json::Value::Object(rec.value))?;
            } else {
                dropped += 1;
            }
        }
        w.close()?;
        std::fs::rename(&tmp, &path).map_err(|e| StoreError::Io { path: path.clone(), source: e })?;
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write_part(dir: &Path, n: u32, recs: &[(&str, &str)]) {
        let mut w = JsonlWriter::create(&dir.join(part_name(n)), Durability::EveryRecord).expect("create");
        for (id, fr) in recs {
            w.write_value(&json!({"id": id, "finish_reason": fr})).expect("write");
        }
        w.close().expect("close");
    }

    #[test]
    fn part_names() {
        assert_eq!(part_name(3), "part-00003.jsonl.zst");
        let cases = [("part-00003.jsonl.zst", Some(3)), ("part-x.jsonl.zst", None), ("summary.json", None)];
        for (n, want) in cases {
            assert_eq!(part_number(n), want, "{n}");
        }
    }

    #[test]
    fn later_part_wins_and_compaction_leaves_one_per_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_part(dir.path(), 0, &[("a/0", "stop"), ("a/1", "length"), ("b/0", "length")]);
        write_part(dir.path(), 1, &[("a/1", "stop")]);
        let s = scan(dir.path()).expect("scan");
        assert_eq!(s.next_part(), 2);
        assert_eq!(s.done[&id_key("a/1")], Done { part: 1, truncated: false });
        assert_eq!(s.done[&id_key("b/0")], Done { part: 0, truncated: true });
        assert_eq!(s.stale_parts, BTreeSet::from([0]));
        assert_eq!(compact(dir.path(), &s.stale_parts, &s.done).expect("compact"), 1);
        let s2 = scan(dir.path()).expect("rescan");
        assert_eq!((s2.records, s2.stale_parts.len()), (3, 0));
    }

    #[test]
    fn missing_dir_is_empty() {
        let s = scan(Path::new("/nonexistent/distill-out")).expect("scan");
        assert_eq!((s.parts.len(), s.next_part()), (0, 0));
    }
}
