//! Parallel reading of `dedup`'s input, for both passes.
//!
//! In: the input files ([`FileEntry`]). One thread reads JSONL (`.jsonl`, `.jsonl.zst`) in
//! blocks of whole lines; Parquet (and anything else the store reads) arrives as blocks of
//! records. Each block is handed to a worker of the rayon pool, and the workers' results come
//! back to the calling thread in input order, so the output does not depend on the number of
//! threads.
//!
//! Lines are read as [`crate::store`] reads them (blank lines skipped but counted, a last line
//! without newline that does not parse reported as a torn tail, public layouts normalised),
//! with a fast path for distill's own SFT examples: [`Lite`] borrows the fields dedup needs
//! straight from the line, with no JSON tree built.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::DedupError;
use super::state::FileEntry;
use crate::record::{SftMeta, Task};
use crate::store::{self, Format, RawRecord, StoreError, layouts};

/// Bytes of JSONL per block.
const BLOCK: usize = 4 << 20;
/// Records per block of a non-JSONL input.
const RECORDS: usize = 2048;
/// Blocks read ahead or in work at once.
const IN_FLIGHT: usize = 8;

/// A run of input: whole lines of one JSONL file, or records of another format.
pub struct Block {
    pub file: u32,
    pub path: Arc<PathBuf>,
    pub body: Body,
}

pub enum Body {
    /// Whole lines; `first_line` is the 1-based number of the first.
    Lines {
        data: Vec<u8>,
        first_line: u64,
    },
    Records(Vec<Result<RawRecord, StoreError>>),
}

/// One record of a block, as a pass sees it.
pub enum Item<'a> {
    /// distill's own SFT example, read without a JSON tree; `bytes` is its line.
    Lite { line: u64, lite: Lite<'a>, bytes: &'a [u8] },
    /// Anything else, read as the store reads it.
    Raw(Result<RawRecord, StoreError>),
}

/// The fields of an SFT example that dedup needs, borrowed from its line. A line that parses as
/// this (no `generations` column) is one of distill's own records, which the store passes
/// through unchanged, and parses as [`crate::record::SftExample`] as well: every field here has
/// that type's type.
#[derive(Deserialize)]
pub struct Lite<'a> {
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(borrow)]
    pub messages: Vec<LiteMessage<'a>>,
    #[serde(default, borrow)]
    pub source: Option<Cow<'a, str>>,
    pub task: Task,
    #[serde(borrow)]
    pub prompt_id: Cow<'a, str>,
    #[serde(default)]
    pub meta: SftMeta,
    #[serde(default)]
    generations: Option<IgnoredAny>,
}

#[derive(Deserialize)]
pub struct LiteMessage<'a> {
    #[serde(borrow)]
    pub role: Cow<'a, str>,
    #[serde(borrow)]
    pub content: Cow<'a, str>,
}

impl<'a> Lite<'a> {
    fn parse(line: &'a [u8]) -> Option<Self> {
        let lite: Lite = serde_json::from_slice(line).ok()?;
        lite.generations.is_none().then_some(lite)
    }

    /// The prompt (first user turn) and response (first assistant turn after it).
    pub fn prompt_and_response(&self) -> Option<(&str, &str)> {
        let u = self.messages.iter().position(|m| m.role == "user")?;
        let r = self.messages[u + 1..].iter().find(|m| m.role == "assistant").map_or("", |m| &m.content);
        Some((&self.messages[u].content, r))
    }
}

/// Calls `f` with every record of a block, in order.
pub fn for_each_item<'a>(block: &'a mut Block, mut f: impl FnMut(Item<'a>)) {
    match &mut block.body {
        Body::Records(recs) => {
            for r in recs.drain(..) {
                f(Item::Raw(r));
            }
        }
        Body::Lines { data, first_line } => {
            let path = &block.path;
            let mut line = *first_line;
            let mut rest: &'a [u8] = data;
            let mut pending = VecDeque::new();
            let lay = layouts::Layouts::default();
            while !rest.is_empty() {
                let (raw, complete, next) = match memchr::memchr(b'\n', rest) {
                    Some(i) => (&rest[..i], true, &rest[i + 1..]),
                    None => (rest, false, &rest[rest.len()..]),
                };
                let mut end = raw.len();
                while end > 0 && raw[end - 1] == b'\r' {
                    end -= 1;
                }
                let bytes = &raw[..end];
                if !bytes.iter().all(u8::is_ascii_whitespace) {
                    if let Some(lite) = Lite::parse(bytes) {
                        f(Item::Lite { line, lite, bytes });
                    } else {
                        let loc = store::Loc { file: path.clone(), line };
                        match store::parse_line(bytes, loc) {
                            Err(_) if !complete => {
                                let detail = format!("{} bytes of an unfinished record", raw.len());
                                let after_line = line.saturating_sub(1);
                                f(Item::Raw(Err(StoreError::TornTail { path: (**path).clone(), after_line, detail })));
                            }
                            Err(e) => f(Item::Raw(Err(e))),
                            Ok(rec) => match layouts::normalize(rec, &lay, &mut pending) {
                                Ok(_) => {
                                    for r in pending.drain(..) {
                                        f(Item::Raw(Ok(r)));
                                    }
                                }
                                Err(e) => f(Item::Raw(Err(e))),
                            },
                        }
                    }
                }
                line += 1;
                rest = next;
            }
        }
    }
}

fn newlines(b: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', b).count() as u64
}

/// Reads the files into blocks, in order, until the receiver hangs up.
fn read_blocks(files: &[FileEntry], tx: &mpsc::SyncSender<Result<Block, DedupError>>) {
    for f in files {
        let path = Path::new(&f.path);
        let shared = Arc::new(path.to_path_buf());
        let send = |body| tx.send(Ok(Block { file: f.index, path: shared.clone(), body })).is_ok();
        match Format::from_path(path) {
            Some(fmt @ (Format::Jsonl | Format::JsonlZst)) => {
                let file = match std::fs::File::open(path) {
                    Ok(file) => file,
                    Err(e) => {
                        let _ = tx.send(Err(StoreError::io(path, e).into()));
                        return;
                    }
                };
                let mut reader: Box<dyn Read> = if fmt == Format::JsonlZst {
                    match zstd::stream::read::Decoder::new(file) {
                        Ok(d) => Box::new(d),
                        Err(e) => {
                            let _ = tx.send(Err(StoreError::io(path, e).into()));
                            return;
                        }
                    }
                } else {
                    Box::new(file)
                };
                let mut carry: Vec<u8> = Vec::new();
                let mut line = 1u64;
                loop {
                    let mut buf = Vec::with_capacity(BLOCK + carry.len() + 4096);
                    buf.append(&mut carry);
                    let mut newline = memchr::memchr(b'\n', &buf).is_some();
                    let eof = loop {
                        let want = (BLOCK.saturating_sub(buf.len())).max(1 << 16) as u64;
                        let at = buf.len();
                        match (&mut reader).take(want).read_to_end(&mut buf) {
                            Ok(0) => break true,
                            Ok(_) => {
                                newline = newline || memchr::memchr(b'\n', &buf[at..]).is_some();
                                if buf.len() >= BLOCK && newline {
                                    break false;
                                }
                            }
                            Err(e) => {
                                // Like the store's reader: what was read so far, then a torn tail.
                                let n = newlines(&buf);
                                let detail = format!("{e} (after {} bytes)", buf.len());
                                if !send(Body::Lines { data: std::mem::take(&mut buf), first_line: line }) {
                                    return;
                                }
                                let torn =
                                    StoreError::TornTail { path: path.to_path_buf(), after_line: line + n - 1, detail };
                                let _ = send(Body::Records(vec![Err(torn)]));
                                return;
                            }
                        }
                    };
                    if eof {
                        if !buf.is_empty() {
                            let _ = send(Body::Lines { data: buf, first_line: line });
                        }
                        break;
                    }
                    let cut = memchr::memrchr(b'\n', &buf).map_or(buf.len(), |i| i + 1);
                    carry.extend_from_slice(&buf[cut..]);
                    buf.truncate(cut);
                    let n = newlines(&buf);
                    if !send(Body::Lines { data: buf, first_line: line }) {
                        return;
                    }
                    line += n;
                }
            }
            _ => {
                let it = match store::open(path) {
                    Ok(it) => it,
                    Err(e) => {
                        let _ = tx.send(Err(e.into()));
                        return;
                    }
                };
                let mut chunk = Vec::with_capacity(RECORDS);
                for item in it {
                    chunk.push(item);
                    if chunk.len() == RECORDS
                        && !send(Body::Records(std::mem::replace(&mut chunk, Vec::with_capacity(RECORDS))))
                    {
                        return;
                    }
                }
                if !chunk.is_empty() && !send(Body::Records(chunk)) {
                    return;
                }
            }
        }
    }
}

/// Reads `files`, runs `work` on every block in the rayon pool and hands the results to
/// `consume` on this thread, in input order.
pub fn process<T, W, C>(files: &[FileEntry], work: W, mut consume: C) -> Result<(), DedupError>
where
    T: Send,
    W: Fn(Block) -> T + Sync,
    C: FnMut(T) -> Result<(), DedupError>,
{
    let (btx, brx) = mpsc::sync_channel::<Result<Block, DedupError>>(IN_FLIGHT);
    std::thread::scope(|s| {
        s.spawn(move || read_blocks(files, &btx));
        let work = &work;
        rayon::in_place_scope(|scope| {
            let brx = brx;
            let (rtx, rrx) = mpsc::channel::<(usize, T)>();
            let mut sent = 0usize;
            let mut next = 0usize;
            let mut done = false;
            let mut ready: BTreeMap<usize, T> = BTreeMap::new();
            loop {
                while !done && sent - next < IN_FLIGHT {
                    match brx.recv() {
                        Ok(Ok(block)) => {
                            let rtx = rtx.clone();
                            let seq = sent;
                            scope.spawn(move |_| {
                                let _ = rtx.send((seq, work(block)));
                            });
                            sent += 1;
                        }
                        Ok(Err(e)) => return Err(e),
                        Err(_) => done = true,
                    }
                }
                if done && next == sent {
                    return Ok(());
                }
                let Ok((seq, r)) = rrx.recv() else { return Ok(()) };
                ready.insert(seq, r);
                while let Some(r) = ready.remove(&next) {
                    consume(r)?;
                    next += 1;
                }
            }
        })
    })
}
