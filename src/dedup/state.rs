//! The compact per-example state of a scan, and its signature file (`--shard I/N` writes one,
//! `--merge` reads them all). Little-endian binary, written atomically:
//! `DDSIG001`, settings fingerprint, shard I and N, files, examples, prompts, signatures.

use std::path::Path;

use super::DedupError;
use super::decontam::{Hit, Method};
use super::exact::Key;

const MAGIC: &[u8; 8] = b"DDSIG001";

/// One input file of a scan: its index in the whole input's file list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub index: u32,
    pub path: String,
    pub bytes: u64,
}

/// One valid input example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExampleRec {
    pub file: u32,
    pub line: u64,
    pub prompt: Key,
    pub pair: Key,
    pub prompt_id: String,
}

/// One distinct normalised prompt (its signature is in [`ShardState::sigs`] at the same index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptRec {
    pub key: Key,
    pub numbers: u64,
    pub shingled: bool,
    pub hit: Option<Hit>,
}

/// What a scan of some input files found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardState {
    pub fingerprint: u64,
    pub shard: u32,
    pub of: u32,
    pub files: Vec<FileEntry>,
    pub examples: Vec<ExampleRec>,
    pub prompts: Vec<PromptRec>,
    pub sigs: Vec<u32>,
    pub invalid: u64,
}

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
}

struct R<'a> {
    b: &'a [u8],
    at: usize,
    path: &'a Path,
}

impl R<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DedupError> {
        if self.at + n > self.b.len() {
            return Err(bad(self.path, "truncated"));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DedupError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DedupError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| bad(self.path, "truncated"))?))
    }
    fn u64(&mut self) -> Result<u64, DedupError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| bad(self.path, "truncated"))?))
    }
    fn key(&mut self) -> Result<Key, DedupError> {
        self.take(16)?.try_into().map_err(|_| bad(self.path, "truncated"))
    }
    fn str(&mut self) -> Result<String, DedupError> {
        let n = self.u32()? as usize;
        let p = self.path;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| bad(p, "invalid UTF-8"))
    }
}

fn bad(path: &Path, msg: &str) -> DedupError {
    DedupError::BadSignatures { path: path.to_path_buf(), msg: msg.to_string() }
}

impl ShardState {
    /// The file name of shard `i` of `n`.
    pub fn file_name(i: u32, n: u32) -> String {
        format!("shard-{i:05}-of-{n:05}.sig")
    }

    pub fn to_bytes(&self, num_perm: usize) -> Vec<u8> {
        let mut w = W(Vec::with_capacity(64 + self.examples.len() * 80 + self.sigs.len() * 4));
        w.0.extend_from_slice(MAGIC);
        w.u64(self.fingerprint);
        w.u32(self.shard);
        w.u32(self.of);
        w.u64(self.invalid);
        w.u32(num_perm as u32);
        w.u32(self.files.len() as u32);
        for f in &self.files {
            w.u32(f.index);
            w.str(&f.path);
            w.u64(f.bytes);
        }
        w.u64(self.examples.len() as u64);
        for e in &self.examples {
            w.u32(e.file);
            w.u64(e.line);
            w.0.extend_from_slice(&e.prompt);
            w.0.extend_from_slice(&e.pair);
            w.str(&e.prompt_id);
        }
        w.u64(self.prompts.len() as u64);
        for p in &self.prompts {
            w.0.extend_from_slice(&p.key);
            w.u64(p.numbers);
            w.u8(p.shingled as u8);
            match &p.hit {
                None => w.u8(0),
                Some(h) => {
                    w.u8(1);
                    w.u32(h.bench);
                    w.u32(h.item);
                    w.u8(h.method.to_u8());
                    w.str(&h.evidence);
                }
            }
        }
        for &s in &self.sigs {
            w.u32(s);
        }
        w.0
    }

    pub fn from_bytes(b: &[u8], path: &Path, num_perm: usize) -> Result<Self, DedupError> {
        let mut r = R { b, at: 0, path };
        if r.take(8)? != MAGIC {
            return Err(bad(path, "wrong magic"));
        }
        let fingerprint = r.u64()?;
        let shard = r.u32()?;
        let of = r.u32()?;
        let invalid = r.u64()?;
        let np = r.u32()? as usize;
        if np != num_perm {
            return Err(DedupError::Mismatch {
                path: path.to_path_buf(),
                what: format!("num_perm {np} vs {num_perm}"),
            });
        }
        let nf = r.u32()? as usize;
        let mut files = Vec::with_capacity(nf);
        for _ in 0..nf {
            files.push(FileEntry { index: r.u32()?, path: r.str()?, bytes: r.u64()? });
        }
        let ne = r.u64()? as usize;
        let mut examples = Vec::with_capacity(ne.min(1 << 26));
        for _ in 0..ne {
            examples.push(ExampleRec {
                file: r.u32()?,
                line: r.u64()?,
                prompt: r.key()?,
                pair: r.key()?,
                prompt_id: r.str()?,
            });
        }
        let np_ = r.u64()? as usize;
        let mut prompts = Vec::with_capacity(np_.min(1 << 26));
        for _ in 0..np_ {
            let key = r.key()?;
            let numbers = r.u64()?;
            let shingled = r.u8()? != 0;
            let hit = match r.u8()? {
                0 => None,
                _ => {
                    Some(Hit { bench: r.u32()?, item: r.u32()?, method: Method::from_u8(r.u8()?), evidence: r.str()? })
                }
            };
            prompts.push(PromptRec { key, numbers, shingled, hit });
        }
        let mut sigs = Vec::with_capacity(np_ * num_perm);
        let raw = r.take(np_ * num_perm * 4)?;
        sigs.extend(raw.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])));
        if r.at != b.len() {
            return Err(bad(path, "trailing bytes"));
        }
        Ok(ShardState { fingerprint, shard, of, files, examples, prompts, sigs, invalid })
    }

    pub fn read(path: &Path, num_perm: usize) -> Result<Self, DedupError> {
        let b = std::fs::read(path).map_err(|e| DedupError::Io { path: path.to_path_buf(), source: e })?;
        Self::from_bytes(&b, path, num_perm)
    }

    pub fn write(&self, path: &Path, num_perm: usize) -> Result<(), DedupError> {
        crate::store::write_atomic(path, &self.to_bytes(num_perm))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s = ShardState {
            fingerprint: 7,
            shard: 1,
            of: 3,
            files: vec![FileEntry { index: 4, path: "a/b.jsonl".into(), bytes: 10 }],
            examples: vec![ExampleRec { file: 4, line: 2, prompt: [1; 16], pair: [2; 16], prompt_id: "p".into() }],
            prompts: vec![
                PromptRec { key: [1; 16], numbers: 9, shingled: true, hit: None },
                PromptRec {
                    key: [3; 16],
                    numbers: 0,
                    shingled: false,
                    hit: Some(Hit { bench: 1, item: 2, method: Method::Stripped, evidence: "x y".into() }),
                },
            ],
            sigs: vec![1, 2, 3, 4],
            invalid: 5,
        };
        let b = s.to_bytes(2);
        assert_eq!(ShardState::from_bytes(&b, Path::new("x"), 2).expect("reads"), s);
        assert!(ShardState::from_bytes(&b[..b.len() - 1], Path::new("x"), 2).is_err());
        assert!(ShardState::from_bytes(&b, Path::new("x"), 3).is_err());
    }
}
