//! Training data: the corpus streamed in a seeded order, tokenised, length-checked and packed
//! into the sequences of each optimizer step.
//!
//! In: SFT example records (`messages`, …) from `store::open` over Parquet/JSONL shards, split by
//! file name (`validation-*` is the validation split, everything else trains). Out: [`Step`]s,
//! each a list of [`Sequence`]s holding one or more samples (`packing`), with position ids that
//! restart at every sample and the sample boundaries from which the model builds a
//! block-diagonal causal mask, so no token attends across samples.
//!
//! Order: each epoch shuffles the file order and streams records through a shuffle buffer,
//! both driven by a generator seeded from (seed, epoch). The position in the stream is one
//! number per epoch, so a checkpoint restores the loader exactly by replaying the epoch's stream
//! up to it (records before it are read but not tokenised).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::store::{self, RawRecord, RecordReader, Rejects, StoreError};

/// Errors of the data pipeline that stop a run (bad records are counted, not errors).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{path}: no training records (files named validation-* are the validation split); point --data at the corpus directory or a train-*.parquet/.jsonl file"
    )]
    NoTrainFiles { path: PathBuf },
    #[error(
        "{path}: no sample survived tokenisation and the length limit ({report}); check the records' `messages` and --max-seq-len"
    )]
    NothingToTrain { path: PathBuf, report: String },
}

/// A tokenised sample: ids and, for each, whether it is a loss target (an assistant token,
/// including the turn's end token).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub targets: Vec<bool>,
}

/// The seam to the tokenizer and chat template: turns one corpus record into ids and the
/// assistant-only mask. Errors are messages about the record (its location is added here).
pub trait Encode: Send + Sync {
    fn encode(&self, record: &Map<String, Value>) -> Result<Encoded, String>;
}

/// What to do with a sample longer than `max_seq_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overlong {
    /// Leave it out (the default: a cut trace teaches the student to stop mid-thought).
    Drop,
    /// Keep its first `max_seq_len` tokens.
    Truncate,
}

/// Data settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub max_seq_len: usize,
    pub overlong: Overlong,
    /// Several samples per sequence (attention kept inside each); off: one sample per sequence.
    pub packing: bool,
    /// Tokens per optimizer step (gradient accumulation over sequences up to this many).
    pub tokens_per_step: usize,
    /// At most this many samples per optimizer step (0: no limit).
    pub samples_per_step: usize,
    /// Records held for shuffling; 0 or 1 keeps the files' order (files are still shuffled).
    pub shuffle_buffer: usize,
    pub seed: u64,
    /// Sequences per forward pass: above 1, a step's sequences are grouped by length into
    /// batches of this many and right-padded to the longest of each (pad positions are
    /// masked from attention and loss). With packing the sequences are already full, so this
    /// matters mostly with `packing = false`.
    pub batch: usize,
    /// Column renames applied before the public layouts are recognised: `field = "column"`
    /// reads `column` as distill's `field` (`--map field=column`).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub map: std::collections::BTreeMap<String, String>,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            max_seq_len: 2048,
            overlong: Overlong::Drop,
            packing: true,
            tokens_per_step: 4096,
            samples_per_step: 0,
            shuffle_buffer: 4096,
            seed: 42,
            batch: 1,
            map: Default::default(),
        }
    }
}

/// The training and validation files of a corpus path.
#[derive(Debug, Clone, PartialEq)]
pub struct Splits {
    pub train: Vec<PathBuf>,
    pub validation: Vec<PathBuf>,
}

/// Splits a file or directory's record files by name: `validation*`, `valid-*` and `val-*`
/// files validate, all others (`train-*`, …) train.
pub fn splits(path: &Path) -> Result<Splits, DataError> {
    let mut train = Vec::new();
    let mut validation = Vec::new();
    for (file, _) in store::list_inputs(path)? {
        let name = file.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        if name.starts_with("validation") || name.starts_with("valid-") || name.starts_with("val-") {
            validation.push(file);
        } else {
            train.push(file);
        }
    }
    if train.is_empty() {
        return Err(DataError::NoTrainFiles { path: path.to_path_buf() });
    }
    Ok(Splits { train, validation })
}

/// A small, fast, seedable generator (SplitMix64) whose state is one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng(pub u64);

impl Rng {
    /// A generator for a purpose (`stream`) under a seed.
    pub fn derive(seed: u64, stream: u64) -> Rng {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        crate::rng::splitmix64(&mut self.0)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// One epoch's records in the seeded order.
struct EpochStream {
    files: std::vec::IntoIter<PathBuf>,
    reader: Option<RecordReader>,
    buffer: Vec<RawRecord>,
    capacity: usize,
    rng: Rng,
    /// Items (records or record errors) given out so far.
    emitted: u64,
    layouts: store::Layouts,
}

impl EpochStream {
    fn new(files: &[PathBuf], cfg: &DataConfig, epoch: u64) -> Self {
        let (seed, capacity) = (cfg.seed, cfg.shuffle_buffer);
        let mut rng = Rng::derive(seed, epoch.wrapping_add(1));
        let mut files = files.to_vec();
        rng.shuffle(&mut files);
        EpochStream {
            files: files.into_iter(),
            reader: None,
            buffer: Vec::new(),
            capacity: capacity.max(1),
            rng,
            emitted: 0,
            layouts: store::Layouts::with_map(cfg.map.clone()),
        }
    }

    /// The next record straight from the files.
    fn pull(&mut self) -> Option<Result<RawRecord, StoreError>> {
        loop {
            if let Some(r) = self.reader.as_mut() {
                if let Some(item) = r.next() {
                    return Some(item);
                }
                self.reader = None;
            }
            let file = self.files.next()?;
            match store::open_with(&file, &self.layouts) {
                Ok(r) => self.reader = Some(r),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

impl Iterator for EpochStream {
    type Item = Result<RawRecord, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.buffer.len() < self.capacity {
            match self.pull() {
                Some(Ok(rec)) => self.buffer.push(rec),
                Some(Err(e)) => {
                    self.emitted += 1;
                    return Some(Err(e));
                }
                None => break,
            }
        }
        if self.buffer.is_empty() {
            return None;
        }
        let i = self.rng.below(self.buffer.len());
        self.emitted += 1;
        Some(Ok(self.buffer.swap_remove(i)))
    }
}

/// Counts of what the loader did with the records, reported at the end and in checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataStats {
    pub records: u64,
    pub samples: u64,
    pub invalid: u64,
    pub untokenizable: u64,
    pub dropped_overlong: u64,
    pub truncated: u64,
    pub no_targets: u64,
    pub tokens: u64,
    pub target_tokens: u64,
}

impl DataStats {
    pub fn summary(&self) -> String {
        format!(
            "{} records: {} samples used, {} over-long dropped, {} truncated, {} without assistant tokens, {} invalid, {} failed to tokenise",
            self.records,
            self.samples,
            self.dropped_overlong,
            self.truncated,
            self.no_targets,
            self.invalid,
            self.untokenizable
        )
    }
}

/// A sample ready to pack.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub id: String,
    pub ids: Vec<u32>,
    pub targets: Vec<bool>,
}

/// Applies the length policy and the mask checks to an encoded record.
pub fn prepare(id: String, enc: Encoded, cfg: &DataConfig, stats: &mut DataStats) -> Option<Sample> {
    let Encoded { mut ids, mut targets } = enc;
    if ids.len() > cfg.max_seq_len {
        match cfg.overlong {
            Overlong::Drop => {
                stats.dropped_overlong += 1;
                return None;
            }
            Overlong::Truncate => {
                ids.truncate(cfg.max_seq_len);
                targets.truncate(cfg.max_seq_len);
                stats.truncated += 1;
            }
        }
    }
    // The first token of a sample is never predicted (nothing of the sample precedes it).
    if let Some(t) = targets.first_mut() {
        *t = false;
    }
    let n_targets = targets.iter().filter(|&&t| t).count();
    if n_targets == 0 {
        stats.no_targets += 1;
        return None;
    }
    stats.samples += 1;
    stats.tokens += ids.len() as u64;
    stats.target_tokens += n_targets as u64;
    Some(Sample { id, ids, targets })
}

/// Where the loader is: which epoch and how many stream items of it are used by finished steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub index: u64,
}

/// One packed sequence: concatenated samples, position ids restarting per sample, targets.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sequence {
    pub ids: Vec<u32>,
    pub positions: Vec<u32>,
    /// Whether token `i` is a loss target (predicted from tokens `starts[k]..i` of its sample).
    pub targets: Vec<bool>,
    /// Offsets at which samples start (the first is 0).
    pub starts: Vec<usize>,
    pub sample_ids: Vec<String>,
}

impl Sequence {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn push(&mut self, s: &Sample) {
        self.starts.push(self.ids.len());
        self.ids.extend_from_slice(&s.ids);
        self.positions.extend(0..s.ids.len() as u32);
        self.targets.extend_from_slice(&s.targets);
        self.sample_ids.push(s.id.clone());
    }

    /// Number of loss targets.
    pub fn num_targets(&self) -> usize {
        self.targets.iter().filter(|&&t| t).count()
    }

    /// For next-token prediction: for each position `i < len-1`, the next id and whether that
    /// prediction counts (the next token is a target of the same sample).
    pub fn shifted(&self) -> (Vec<u32>, Vec<bool>) {
        let n = self.len().saturating_sub(1);
        let next = self.ids[1..].to_vec();
        let mut counts = self.targets[1..].to_vec();
        for &s in &self.starts {
            if s >= 1 && s - 1 < n {
                counts[s - 1] = false;
            }
        }
        (next, counts)
    }

    /// The sample each position belongs to (0, 0, …, 1, 1, …).
    pub fn segment_ids(&self) -> Vec<u32> {
        let mut seg = vec![0u32; self.len()];
        for (k, w) in self.starts.iter().enumerate() {
            let end = self.starts.get(k + 1).copied().unwrap_or(self.len());
            seg[*w..end].iter_mut().for_each(|s| *s = k as u32);
        }
        seg
    }

    /// The additive attention mask (row = query, column = key), `T×T` row-major: 0 where a
    /// token may attend (same sample, not in the future), −∞ elsewhere.
    pub fn attention_mask(&self) -> Vec<f32> {
        let seg = self.segment_ids();
        let t = self.len();
        let mut m = vec![f32::NEG_INFINITY; t * t];
        for q in 0..t {
            for k in 0..=q {
                if seg[k] == seg[q] {
                    m[q * t + k] = 0.0;
                }
            }
        }
        m
    }
}

/// The sequences of one optimizer step.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Step {
    pub sequences: Vec<Sequence>,
    /// The loader position after this step.
    pub end: Position,
    /// Whether this is the last step of an epoch.
    pub epoch_end: bool,
}

impl Step {
    pub fn tokens(&self) -> usize {
        self.sequences.iter().map(Sequence::len).sum()
    }

    pub fn num_targets(&self) -> usize {
        self.sequences.iter().map(Sequence::num_targets).sum()
    }

    pub fn num_samples(&self) -> usize {
        self.sequences.iter().map(|s| s.starts.len()).sum()
    }
}

/// Packs samples, in order, into sequences of at most `max_seq_len` tokens (or one sample per
/// sequence without packing).
pub fn pack(samples: &[Sample], cfg: &DataConfig) -> Vec<Sequence> {
    let mut out: Vec<Sequence> = Vec::new();
    for s in samples {
        let fits = out.last().is_some_and(|cur| cfg.packing && cur.len() + s.ids.len() <= cfg.max_seq_len);
        if !fits {
            out.push(Sequence::default());
        }
        if let Some(cur) = out.last_mut() {
            cur.push(s);
        }
    }
    out
}

/// Problems with single records, for the report (location and reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub location: String,
    pub reason: String,
}

/// The training loader: steps in the seeded order, epoch after epoch.
pub struct Loader<'a> {
    files: Vec<PathBuf>,
    cfg: DataConfig,
    encoder: &'a dyn Encode,
    stream: EpochStream,
    pos: Position,
    /// A sample read but not yet placed in a step (it did not fit in the previous one), with
    /// the stream index just past it.
    pending: Option<(Sample, u64)>,
    pub stats: DataStats,
    /// Up to 100 skipped records with their reasons (the stats count all of them).
    pub skipped: Vec<Skipped>,
    /// Where invalid records are rejected (the planning pass sets it: each record once).
    pub rejects: Option<Rejects>,
}

impl<'a> Loader<'a> {
    /// A loader positioned at `pos` (replaying that epoch's stream to it).
    pub fn new(files: Vec<PathBuf>, cfg: DataConfig, encoder: &'a dyn Encode, pos: Position) -> Self {
        let mut stream = EpochStream::new(&files, &cfg, pos.epoch);
        while stream.emitted < pos.index {
            if stream.next().is_none() {
                break;
            }
        }
        Loader {
            files,
            cfg,
            encoder,
            stream,
            pos,
            pending: None,
            stats: DataStats::default(),
            skipped: Vec::new(),
            rejects: None,
        }
    }

    pub fn position(&self) -> Position {
        self.pos
    }

    fn skip(&mut self, location: String, reason: String) {
        if self.skipped.len() < 100 {
            self.skipped.push(Skipped { location, reason });
        }
    }

    /// The next usable sample of this epoch, with the stream index just past it.
    fn next_sample(&mut self) -> Option<(Sample, u64)> {
        if let Some(p) = self.pending.take() {
            return Some(p);
        }
        loop {
            let item = self.stream.next()?;
            let end = self.stream.emitted;
            match item {
                Err(e) if e.is_torn_tail() => {
                    self.skip(String::new(), e.to_string());
                }
                Err(e) => {
                    self.stats.invalid += 1;
                    self.skip(e.loc().map(|l| l.to_string()).unwrap_or_default(), e.to_string());
                    if let Some(r) = self.rejects.as_mut()
                        && let Err(w) = r.reject(e, None)
                    {
                        eprintln!("warning: {w}");
                    }
                }
                Ok(rec) => {
                    self.stats.records += 1;
                    let id = rec.id().unwrap_or_else(|| rec.loc.to_string());
                    match self.encoder.encode(&rec.value) {
                        Err(msg) => {
                            self.stats.untokenizable += 1;
                            self.skip(rec.loc.to_string(), format!("(id {id}) {msg}"));
                            if let Some(r) = self.rejects.as_mut()
                                && let Err(w) = r.reject_record(&rec, msg)
                            {
                                eprintln!("warning: {w}");
                            }
                        }
                        Ok(enc) => {
                            if let Some(s) = prepare(id, enc, &self.cfg, &mut self.stats) {
                                return Some((s, end));
                            }
                        }
                    }
                }
            }
        }
    }

    /// The next step; `None` after the last step of the current epoch, after which the loader
    /// has moved on to the next epoch.
    pub fn next_step(&mut self) -> Option<Step> {
        let mut samples: Vec<Sample> = Vec::new();
        let mut tokens = 0usize;
        let mut end = self.pos.index;
        while let Some((s, after)) = self.next_sample() {
            let full_tokens = !samples.is_empty() && tokens + s.ids.len() > self.cfg.tokens_per_step.max(1);
            let full_samples = self.cfg.samples_per_step > 0 && samples.len() >= self.cfg.samples_per_step;
            if full_tokens || full_samples {
                self.pending = Some((s, after));
                break;
            }
            tokens += s.ids.len();
            end = after;
            samples.push(s);
        }
        if samples.is_empty() {
            self.pos = Position { epoch: self.pos.epoch + 1, index: 0 };
            self.stream = EpochStream::new(&self.files, &self.cfg, self.pos.epoch);
            self.pending = None;
            return None;
        }
        let epoch_end = self.pending.is_none();
        self.pos.index = end;
        Some(Step { sequences: pack(&samples, &self.cfg), end: self.pos, epoch_end })
    }
}

/// Reads a whole (small) split into packed sequences: the validation set.
pub fn load_all(files: &[PathBuf], cfg: &DataConfig, encoder: &dyn Encode) -> (Vec<Sequence>, DataStats, Vec<Skipped>) {
    let cfg = DataConfig { shuffle_buffer: 1, tokens_per_step: usize::MAX, samples_per_step: 0, ..cfg.clone() };
    let mut loader = Loader::new(files.to_vec(), cfg, encoder, Position::default());
    let seqs = loader.next_step().map(|s| s.sequences).unwrap_or_default();
    (seqs, loader.stats, loader.skipped)
}

/// A step's sequences grouped for forward passes: one at a time when `batch <= 1`, else sorted
/// by length (ties in order) and cut into groups of `batch`, so that padding stays small.
pub fn length_groups(seqs: &[Sequence], batch: usize) -> Vec<Vec<&Sequence>> {
    if batch <= 1 {
        return seqs.iter().map(|s| vec![s]).collect();
    }
    let mut order: Vec<&Sequence> = seqs.iter().collect();
    order.sort_by_key(|s| s.len());
    order.chunks(batch).map(|c| c.to_vec()).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write as _;

    /// One id per whitespace-separated word of each message (word length + 10 × role), with
    /// the assistant's words and a closing end id (2) as targets.
    pub(crate) struct WordEncoder;

    impl Encode for WordEncoder {
        fn encode(&self, rec: &Map<String, Value>) -> Result<Encoded, String> {
            let msgs = rec.get("messages").and_then(Value::as_array).ok_or("no messages")?;
            let mut e = Encoded { ids: vec![1], targets: vec![false] };
            for m in msgs {
                let role = m.get("role").and_then(Value::as_str).ok_or("message without role")?;
                let text = m.get("content").and_then(Value::as_str).ok_or("message without content")?;
                let asst = role == "assistant";
                for w in text.split_whitespace() {
                    e.ids.push(3 + (w.len() as u32 % 7) + if asst { 10 } else { 0 });
                    e.targets.push(asst);
                }
                if asst {
                    e.ids.push(2);
                    e.targets.push(true);
                }
            }
            Ok(e)
        }
    }

    pub(crate) fn write_corpus(dir: &Path, name: &str, n: usize, words: impl Fn(usize) -> usize) -> PathBuf {
        let path = dir.join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        for i in 0..n {
            let answer = (0..words(i)).map(|k| "x".repeat(1 + (i + k) % 5)).collect::<Vec<_>>().join(" ");
            let rec = serde_json::json!({"id": format!("{name}-{i}"), "messages": [
                {"role": "user", "content": format!("q{i} please")},
                {"role": "assistant", "content": answer}]});
            writeln!(f, "{rec}").unwrap();
        }
        path
    }

    fn cfg() -> DataConfig {
        DataConfig { max_seq_len: 16, tokens_per_step: 32, shuffle_buffer: 8, seed: 7, ..DataConfig::default() }
    }

    fn all_steps(l: &mut Loader) -> Vec<Step> {
        std::iter::from_fn(|| l.next_step()).collect()
    }

    #[test]
    fn splits_by_file_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        for n in ["data/train-00000.jsonl", "data/train-00001.jsonl", "data/validation-00000.jsonl"] {
            write_corpus(dir.path(), n, 1, |_| 1);
        }
        let s = splits(dir.path()).unwrap();
        assert_eq!(s.train.len(), 2);
        assert_eq!(s.validation.len(), 1);
        let only_val = tempfile::tempdir().unwrap();
        write_corpus(only_val.path(), "validation-0.jsonl", 1, |_| 1);
        assert!(splits(only_val.path()).unwrap_err().to_string().contains("no training records"));
    }

    #[test]
    fn overlong_samples_are_dropped_or_truncated_and_counted() {
        let table = [(Overlong::Drop, 10, 1, 0), (Overlong::Truncate, 10, 0, 1), (Overlong::Drop, 30, 0, 0)];
        for (overlong, max, dropped, truncated) in table {
            let c = DataConfig { max_seq_len: max, overlong, ..cfg() };
            let mut st = DataStats::default();
            let enc = Encoded { ids: (0..20).collect(), targets: (0..20).map(|i| i > 5).collect() };
            let out = prepare("a".into(), enc, &c, &mut st);
            assert_eq!((st.dropped_overlong, st.truncated), (dropped, truncated), "{overlong:?} {max}");
            if let Some(s) = out {
                assert_eq!(s.ids.len(), 20.min(max));
                assert_eq!(s.ids.len(), s.targets.len());
            }
        }
        // A truncation that cuts every target away leaves nothing to learn.
        let c = DataConfig { max_seq_len: 4, overlong: Overlong::Truncate, ..cfg() };
        let mut st = DataStats::default();
        let enc = Encoded { ids: (0..20).collect(), targets: (0..20).map(|i| i > 5).collect() };
        assert!(prepare("a".into(), enc, &c, &mut st).is_none());
        assert_eq!(st.no_targets, 1);
    }

    #[test]
    fn packing_restarts_positions_and_keeps_attention_inside_samples() {
        let s = |id: &str, n: usize| Sample {
            id: id.into(),
            ids: (0..n as u32).map(|i| i + 100).collect(),
            targets: (0..n).map(|i| i > 0).collect(),
        };
        let samples = [s("a", 3), s("b", 2), s("c", 4)];
        let packed = pack(&samples, &DataConfig { max_seq_len: 6, ..cfg() });
        assert_eq!(packed.len(), 2);
        assert_eq!(packed[0].positions, vec![0, 1, 2, 0, 1]);
        assert_eq!(packed[0].starts, vec![0, 3]);
        assert_eq!(packed[0].segment_ids(), vec![0, 0, 0, 1, 1]);
        let m = packed[0].attention_mask();
        let ok = |q: usize, k: usize| m[q * 5 + k] == 0.0;
        assert!(ok(2, 0) && ok(4, 3) && ok(3, 3));
        assert!(!ok(3, 2) && !ok(4, 0) && !ok(0, 1), "no attention across samples or to the future");
        // The first token of "b" is not predicted from the last token of "a".
        let (next, counts) = packed[0].shifted();
        assert_eq!(next, vec![101, 102, 100, 101]);
        assert_eq!(counts, vec![true, true, false, true]);
        let unpacked = pack(&samples, &DataConfig { packing: false, ..cfg() });
        assert_eq!(unpacked.len(), 3);
    }

    fn ids_of(steps: &[Step]) -> Vec<Vec<String>> {
        steps.iter().map(|s| s.sequences.iter().flat_map(|q| q.sample_ids.clone()).collect()).collect()
    }

    #[test]
    fn order_is_deterministic_from_the_seed_and_changes_with_epoch_and_seed() {
        let dir = tempfile::tempdir().unwrap();
        write_corpus(dir.path(), "train-0.jsonl", 20, |i| 1 + i % 4);
        write_corpus(dir.path(), "train-1.jsonl", 20, |i| 2 + i % 3);
        let files = splits(dir.path()).unwrap().train;
        let run = |seed: u64, epoch: u64| {
            let mut l =
                Loader::new(files.clone(), DataConfig { seed, ..cfg() }, &WordEncoder, Position { epoch, index: 0 });
            ids_of(&all_steps(&mut l))
        };
        assert_eq!(run(1, 0), run(1, 0));
        assert_ne!(run(1, 0), run(2, 0));
        assert_ne!(run(1, 0), run(1, 1));
        let mut seen: Vec<String> = run(1, 0).concat();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 40, "every sample once per epoch");
    }

    #[test]
    fn steps_respect_the_token_budget_and_the_epoch_ends() {
        let dir = tempfile::tempdir().unwrap();
        write_corpus(dir.path(), "train-0.jsonl", 30, |i| 1 + i % 6);
        let files = splits(dir.path()).unwrap().train;
        let mut l = Loader::new(files, cfg(), &WordEncoder, Position::default());
        let steps = all_steps(&mut l);
        assert!(steps.len() > 3);
        for s in &steps {
            assert!(s.tokens() <= 32, "{}", s.tokens());
            assert!(s.sequences.iter().all(|q| q.len() <= 16));
        }
        assert!(steps.last().unwrap().epoch_end);
        assert!(steps[..steps.len() - 1].iter().all(|s| !s.epoch_end));
        assert_eq!(l.position(), Position { epoch: 1, index: 0 });
        assert_eq!(l.stats.samples, 30);
        // The next epoch starts at once.
        assert!(l.next_step().is_some());
    }

    #[test]
    fn resuming_at_a_step_boundary_gives_the_same_remaining_steps() {
        let dir = tempfile::tempdir().unwrap();
        write_corpus(dir.path(), "train-0.jsonl", 25, |i| 1 + i % 7);
        let mut bad = std::fs::OpenOptions::new().append(true).open(dir.path().join("train-0.jsonl")).unwrap();
        writeln!(bad, "{{not json").unwrap();
        writeln!(bad, "{{\"id\": \"nomsg\"}}").unwrap();
        let files = splits(dir.path()).unwrap().train;
        let c = DataConfig { samples_per_step: 3, ..cfg() };
        let mut full = Loader::new(files.clone(), c.clone(), &WordEncoder, Position::default());
        let all = all_steps(&mut full);
        assert_eq!(full.stats.invalid, 1);
        assert_eq!(full.stats.untokenizable, 1);
        assert!(full.skipped.iter().any(|s| s.location.contains("train-0.jsonl:26")), "{:?}", full.skipped);
        for k in 0..all.len() {
            let mut resumed = Loader::new(files.clone(), c.clone(), &WordEncoder, all[k].end);
            let rest = all_steps(&mut resumed);
            assert_eq!(ids_of(&rest), ids_of(&all[k + 1..]), "resumed after step {k}");
        }
    }
}
