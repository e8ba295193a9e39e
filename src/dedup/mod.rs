//! `distill dedup`: SFT examples in, a deduplicated, decontaminated, sharded corpus out.
//!
//! In: SFT examples (`distill filter`'s `DIR/kept/`, or any file or directory `store` reads);
//! the prompt is the first user turn, the response the first assistant turn after it.
//! Out: `DIR/data/{train,validation}-XXXXX-of-YYYYY.parquet`, `DIR/manifest.json`,
//! `DIR/README.md` (a Hugging Face dataset card), `DIR/rejects/` (unreadable input; every
//! removed example with the reason).
//!
//! Steps, in one streaming scan that keeps only compact state per example (two 16-byte hashes,
//! the prompt id, the location) and per distinct prompt (a MinHash signature):
//! 1. exact: an example whose normalised prompt and response both repeat an earlier one is
//!    dropped ([`exact`]);
//! 2. decontamination against `--decontam FILE:FIELD` benchmarks ([`decontam`]);
//! 3. near-duplicate prompts by MinHash-LSH, verified, clustered by union-find ([`minhash`]);
//!    identical normalised prompts are one cluster too. Each cluster keeps one prompt: the one
//!    with the most examples, then the smallest prompt id. A prompt keeps all its samples
//!    unless `max_per_prompt` says otherwise;
//! 4. a second pass re-reads the input and writes the kept examples, in input order, to the
//!    train or validation split of their cluster ([`corpus`]).
//!
//! `--shard I/N` runs step 1-3's scan on the input files `f` with `f % N == I` and writes
//! `DIR/signatures/shard-I-of-N.sig`; `--merge` reads all N, clusters and writes the corpus.
//! One process runs the same code on one slice holding every file, so both give the same
//! bytes.

pub mod corpus;
pub mod decontam;
pub mod exact;
pub mod minhash;
pub mod norm;
pub mod read;
pub mod state;
pub mod synth;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::record::SftExample;
use crate::store::{self, RawRecord, StoreError};
use decontam::DecontamIndex;
use exact::Key;
use minhash::{MinHasher, ShingleParams, UnionFind};
use state::{ExampleRec, FileEntry, PromptRec, ShardState};

/// Settings of `distill dedup` (a recipe's `[dedup]` table). `Default` is the one place the
/// defaults live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    /// SFT examples: a file or a directory of shards.
    pub input: PathBuf,
    /// Output directory.
    pub out: PathBuf,
    /// Jaccard similarity at or above which two prompts are near-duplicates.
    pub threshold: f64,
    /// Words per shingle.
    pub ngram: usize,
    /// Characters per shingle of short prompts.
    pub char_ngram: usize,
    /// Prompts with fewer words than this are shingled by characters.
    pub short_words: usize,
    /// MinHash permutations.
    pub num_perm: usize,
    /// LSH bands and rows; 0 derives them from the threshold and `fp_weight`.
    pub bands: usize,
    pub rows: usize,
    /// Weight of false positives against false negatives when deriving bands and rows.
    pub fp_weight: f64,
    /// Seed of the hash functions.
    pub seed: u64,
    /// Merge near-duplicates even when their numbers differ (web-style data).
    pub ignore_numbers: bool,
    /// Keep at most this many examples per kept prompt (0: all).
    pub max_per_prompt: usize,
    /// Benchmarks to decontaminate against, as `FILE:FIELD`.
    pub decontam: Vec<String>,
    /// Words per n-gram of decontamination.
    pub decontam_ngram: usize,
    /// Also remove prompts equal to a benchmark item once digits and non-letters are stripped.
    pub decontam_strip_numbers: bool,
    /// Fraction of prompt clusters that go to the validation split.
    pub validation_fraction: f64,
    /// Upper bound of one Parquet shard, in bytes of record JSON (the file is smaller).
    pub shard_size: u64,
    /// Only scan slice `I/N` of the input files and write its signature file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// Cluster the signature files of `--shard` runs in `out/signatures/` and write the corpus.
    pub merge: bool,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            input: PathBuf::new(),
            out: PathBuf::new(),
            threshold: 0.8,
            ngram: 5,
            char_ngram: 5,
            short_words: 10,
            num_perm: 256,
            bands: 0,
            rows: 0,
            fp_weight: 0.02,
            seed: 0,
            ignore_numbers: false,
            max_per_prompt: 0,
            decontam: Vec::new(),
            decontam_ngram: 8,
            decontam_strip_numbers: false,
            validation_fraction: 0.01,
            shard_size: 500_000_000,
            shard: None,
            merge: false,
        }
    }
}

impl crate::config::Settings for DedupConfig {
    const TABLE: &'static str = "dedup";

    fn validate(&self) -> Result<(), String> {
        if self.input.as_os_str().is_empty() {
            return Err("`input` is required: the SFT examples to deduplicate".into());
        }
        if self.out.as_os_str().is_empty() {
            return Err("`out` is required: the corpus directory".into());
        }
        self.check().map_err(|e| e.to_string())?;
        self.shard_spec().map(|_| ()).map_err(|e| e.to_string())
    }
}

/// Errors of `dedup`: each names the file (and line or record id) and the fix.
#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("--decontam {spec}: expected FILE:FIELD, e.g. datasets/benchmarks/humaneval.jsonl:prompt")]
    DecontamSpec { spec: String },
    #[error(
        "{path}: no record has a string field `{field}` (fields of the first record: {fields}); name the text field after the colon"
    )]
    NoField { path: PathBuf, field: String, fields: String },
    #[error("--shard {spec}: expected I/N with 0 <= I < N, e.g. --shard 3/16")]
    ShardSpec { spec: String },
    #[error("{path}: not a dedup signature file ({msg}); rerun `distill dedup --shard I/N` to recreate it")]
    BadSignatures { path: PathBuf, msg: String },
    #[error("{path}: made with other settings than this run ({what}); rerun the shards with the same flags as --merge")]
    Mismatch { path: PathBuf, what: String },
    #[error(
        "{dir}: --merge needs all {of} signature files; missing shards {missing:?}: run `distill dedup --input … --out … --shard I/{of}` for each"
    )]
    MissingShards { dir: PathBuf, of: u32, missing: Vec<u32> },
    #[error("{dir}: no signature files (shard-*.sig); run `distill dedup --shard I/N` for every I first")]
    NoSignatures { dir: PathBuf },
    #[error("{path}: the input changed since its signatures were computed ({what}); rerun the shards")]
    InputChanged { path: PathBuf, what: String },
    #[error("{loc}{id}: {msg}")]
    Record { loc: store::Loc, id: store::IdSuffix, msg: String },
    #[error("--input -: dedup reads its input twice (scan, then write); save standard input to a file first")]
    Stdin,
    #[error("invalid setting: {0}")]
    Setting(String),
    #[error("{path}: {msg}")]
    Output { path: PathBuf, msg: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DedupError + '_ {
    move |source| DedupError::Io { path: path.to_path_buf(), source }
}

/// The counts of one run, stage by stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Funnel {
    pub input: u64,
    pub invalid: u64,
    pub exact_duplicates: u64,
    pub contaminated: u64,
    pub near_duplicates: u64,
    pub over_max_per_prompt: u64,
    pub kept: u64,
    pub train: u64,
    pub validation: u64,
    /// Distinct normalised prompts, prompt ids, and prompt clusters kept.
    pub distinct_prompts: u64,
    pub prompt_ids: u64,
    pub clusters: u64,
    pub candidate_pairs: u64,
    pub verified_pairs: u64,
}

/// One benchmark's decontamination result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub benchmark: String,
    pub items: u64,
    pub prompts_removed: u64,
    pub examples_removed: u64,
    pub by_method: BTreeMap<String, u64>,
    /// The first match: prompt id, item label, method, shared text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub example: Option<serde_json::Value>,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub funnel: Funnel,
    pub decontam: Vec<BenchReport>,
    /// `--shard`: the signature file written (no corpus).
    pub signatures: Option<PathBuf>,
    pub bands: usize,
    pub rows: usize,
    pub out: PathBuf,
    /// Seconds per step (scan, cluster, write): wall, and CPU of the whole process.
    pub seconds: Vec<(&'static str, f64, f64)>,
}

impl Report {
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let f = &self.funnel;
        let mut s = String::new();
        if let Some(p) = &self.signatures {
            let _ = writeln!(s, "dedup: {} examples scanned ({} invalid) -> {}", f.input, f.invalid, p.display());
            return s;
        }
        let _ = writeln!(
            s,
            "dedup: {} examples in, {} invalid, {} exact duplicates, {} contaminated, {} near-duplicates, {} over max-per-prompt",
            f.input, f.invalid, f.exact_duplicates, f.contaminated, f.near_duplicates, f.over_max_per_prompt
        );
        let _ = writeln!(
            s,
            "dedup: {} kept ({} train, {} validation) from {} prompt clusters of {} distinct prompts; LSH {}x{}, {} candidate pairs, {} verified",
            f.kept,
            f.train,
            f.validation,
            f.clusters,
            f.distinct_prompts,
            self.bands,
            self.rows,
            f.candidate_pairs,
            f.verified_pairs
        );
        for b in &self.decontam {
            let _ = writeln!(
                s,
                "decontam {}: {} of {} items matched; {} prompts / {} examples removed",
                b.benchmark,
                b.by_method.values().sum::<u64>(),
                b.items,
                b.prompts_removed,
                b.examples_removed
            );
        }
        let secs: Vec<String> = self.seconds.iter().map(|(k, w, c)| format!("{k} {w:.1}s wall {c:.1}s cpu")).collect();
        let _ = writeln!(s, "dedup: corpus in {} ({})", self.out.display(), secs.join(", "));
        s
    }
}

impl DedupConfig {
    fn check(&self) -> Result<(), DedupError> {
        let bad = |m: String| Err(DedupError::Setting(m));
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return bad(format!("threshold {}: must be in (0, 1]", self.threshold));
        }
        if self.num_perm == 0 || self.ngram == 0 || self.char_ngram == 0 || self.decontam_ngram == 0 {
            return bad("num_perm, ngram, char_ngram and decontam_ngram must be at least 1".into());
        }
        if self.bands * self.rows > self.num_perm {
            return bad(format!("bands {} x rows {} exceeds num_perm {}", self.bands, self.rows, self.num_perm));
        }
        if !(0.0..1.0).contains(&self.validation_fraction) {
            return bad(format!("validation_fraction {}: must be in [0, 1)", self.validation_fraction));
        }
        if !(0.0..=1.0).contains(&self.fp_weight) {
            return bad(format!("fp_weight {}: must be in [0, 1]", self.fp_weight));
        }
        if self.input.as_os_str().is_empty() || self.out.as_os_str().is_empty() {
            return bad("--input PATH and --out DIR are required (or `input`/`out` in the [dedup] table)".into());
        }
        if self.input == Path::new("-") {
            return Err(DedupError::Stdin);
        }
        Ok(())
    }

    /// Bands and rows: given, or derived from the threshold.
    pub fn lsh(&self) -> (usize, usize) {
        if self.bands > 0 && self.rows > 0 {
            (self.bands, self.rows)
        } else {
            minhash::lsh_params(self.threshold, self.num_perm, self.fp_weight)
        }
    }

    fn shingle_params(&self) -> ShingleParams {
        ShingleParams {
            ngram: self.ngram,
            char_ngram: self.char_ngram,
            short_words: self.short_words,
            num_perm: self.num_perm,
            seed: self.seed,
        }
    }

    /// What the signature files depend on.
    fn fingerprint(&self) -> u64 {
        let s = format!(
            "{}|{}|{}|{}|{}|{:?}|{}|{}",
            self.ngram,
            self.char_ngram,
            self.short_words,
            self.num_perm,
            self.seed,
            self.decontam,
            self.decontam_ngram,
            self.decontam_strip_numbers
        );
        let mut k = [0u8; 8];
        k.copy_from_slice(&exact::prompt_key(&s)[..8]);
        u64::from_le_bytes(k)
    }

    fn shard_spec(&self) -> Result<Option<(u32, u32)>, DedupError> {
        let Some(spec) = &self.shard else { return Ok(None) };
        let err = || DedupError::ShardSpec { spec: spec.clone() };
        let (i, n) = spec.split_once('/').ok_or_else(err)?;
        let (i, n): (u32, u32) = (i.trim().parse().map_err(|_| err())?, n.trim().parse().map_err(|_| err())?);
        if n == 0 || i >= n {
            return Err(err());
        }
        Ok(Some((i, n)))
    }
}

/// The prompt (first user turn) and response (first assistant turn after it) of an example.
pub fn prompt_and_response(ex: &SftExample) -> Result<(&str, &str), &'static str> {
    let u = ex
        .messages
        .iter()
        .position(|m| m.role == "user")
        .ok_or("no user message: dedup takes the prompt from the first user turn")?;
    let response = ex.messages[u + 1..].iter().find(|m| m.role == "assistant").map_or("", |m| m.content.as_str());
    Ok((ex.messages[u].content.as_str(), response))
}

fn record_error(raw: &RawRecord, msg: impl Into<String>) -> DedupError {
    DedupError::Record { loc: raw.loc.clone(), id: store::IdSuffix(raw.id()), msg: msg.into() }
}

/// Parses a record as an SFT example and checks it has a prompt.
pub fn parse_example(raw: &RawRecord) -> Result<SftExample, DedupError> {
    let ex: SftExample = raw.parse()?;
    prompt_and_response(&ex).map_err(|m| record_error(raw, m))?;
    Ok(ex)
}

/// Reads the `--decontam FILE:FIELD` benchmarks into an index.
pub fn load_benchmarks(cfg: &DedupConfig) -> Result<DecontamIndex, DedupError> {
    let mut ix = DecontamIndex::new(cfg.decontam_ngram, cfg.decontam_strip_numbers);
    for spec in &cfg.decontam {
        let (file, field) = match spec.rsplit_once(':') {
            Some((f, fld)) if !f.is_empty() && !fld.is_empty() => (PathBuf::from(f), fld.to_string()),
            _ => return Err(DedupError::DecontamSpec { spec: spec.clone() }),
        };
        let mut items = Vec::new();
        let mut first_fields = None;
        for rec in store::open(&file)? {
            let rec = rec?;
            if first_fields.is_none() {
                first_fields = Some(rec.value.keys().cloned().collect::<Vec<_>>().join(", "));
            }
            if let Some(serde_json::Value::String(text)) = rec.value.get(&field) {
                let label = rec
                    .value
                    .get("id")
                    .or_else(|| rec.value.get("task_id"))
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                    .unwrap_or_else(|| format!("row {}", rec.loc.line));
                items.push((label, norm::normalized(text)));
            }
        }
        if items.is_empty() {
            return Err(DedupError::NoField { path: file, field, fields: first_fields.unwrap_or_default() });
        }
        let name = format!(
            "{}:{}",
            file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| file.display().to_string()),
            field
        );
        ix.add(&name, &items);
    }
    Ok(ix)
}

/// One valid example of a scanned block; `fresh` holds its prompt's record and signature when
/// it is the first of its prompt in the block.
struct Scanned {
    line: u64,
    prompt_id: String,
    key: Key,
    pair: Key,
    fresh: Option<(PromptRec, Vec<u32>)>,
}

struct ScannedBlock {
    file: u32,
    examples: Vec<Scanned>,
    invalid: u64,
}

/// Scans one block: keys of every valid example, signatures of the prompts new to the block.
fn scan_block(mut block: read::Block, hasher: &MinHasher, index: &DecontamIndex) -> ScannedBlock {
    let np = hasher.params.num_perm;
    let mut out = ScannedBlock { file: block.file, examples: Vec::new(), invalid: 0 };
    let mut local: HashSet<Key> = HashSet::new();
    let (mut norm, mut nr, mut w, mut sh) = (String::new(), String::new(), Vec::new(), Vec::new());
    read::for_each_item(&mut block, |item| {
        let (line, prompt_id) = match item {
            read::Item::Lite { line, lite, .. } => match lite.prompt_and_response() {
                Some((p, r)) => {
                    norm::normalize(p, &mut norm);
                    norm::normalize(r, &mut nr);
                    (line, lite.prompt_id.into_owned())
                }
                None => {
                    out.invalid += 1;
                    return;
                }
            },
            read::Item::Raw(Ok(raw)) => {
                let line = raw.loc.line;
                let Ok(ex) = raw.into_parsed::<SftExample>() else {
                    out.invalid += 1;
                    return;
                };
                let Ok((p, r)) = prompt_and_response(&ex) else {
                    out.invalid += 1;
                    return;
                };
                norm::normalize(p, &mut norm);
                norm::normalize(r, &mut nr);
                (line, ex.prompt_id)
            }
            read::Item::Raw(Err(_)) => {
                out.invalid += 1;
                return;
            }
        };
        let key = exact::prompt_key(&norm);
        let pair = exact::pair_key(&norm, &nr);
        let fresh = local.insert(key).then(|| {
            hasher.shingles(&norm, &mut w, &mut sh);
            let mut sig = vec![u32::MAX; np];
            hasher.signature(&sh, &mut sig);
            let rec = PromptRec {
                key,
                numbers: norm::numbers_hash(&norm),
                shingled: !sh.is_empty(),
                hit: index.check(&norm),
            };
            (rec, sig)
        });
        out.examples.push(Scanned { line, prompt_id, key, pair, fresh });
    });
    out
}

/// Scans input files: the compact state of every valid example and distinct prompt.
pub fn scan(
    cfg: &DedupConfig,
    files: &[FileEntry],
    hasher: &MinHasher,
    index: &DecontamIndex,
) -> Result<ShardState, DedupError> {
    let mut st = ShardState { fingerprint: cfg.fingerprint(), files: files.to_vec(), ..Default::default() };
    let mut seen: HashSet<Key> = HashSet::new();
    read::process(
        files,
        |block| scan_block(block, hasher, index),
        |b| {
            st.invalid += b.invalid;
            for sc in b.examples {
                // Distinct prompts, in first-occurrence order.
                if let Some((rec, sig)) = sc.fresh
                    && seen.insert(sc.key)
                {
                    st.prompts.push(rec);
                    st.sigs.extend_from_slice(&sig);
                }
                st.examples.push(ExampleRec {
                    file: b.file,
                    line: sc.line,
                    prompt: sc.key,
                    pair: sc.pair,
                    prompt_id: sc.prompt_id,
                });
            }
            Ok(())
        },
    )?;
    Ok(st)
}

/// What happens to one example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Train,
    Validation,
    /// Exact duplicate of the example at this global index.
    Exact(u32),
    /// Contaminated: its prompt's index.
    Contaminated(u32),
    /// Near-duplicate: its node and the kept node of its cluster.
    NearDup(u32, u32),
    OverMax,
}

/// Everything the output pass needs: examples in input order with their decisions.
pub struct Plan {
    pub files: Vec<FileEntry>,
    pub examples: Vec<ExampleRec>,
    pub decisions: Vec<Decision>,
    pub node_ids: Vec<String>,
    pub ex_node: Vec<u32>,
    pub prompts: Vec<PromptRec>,
    pub funnel: Funnel,
    pub decontam: Vec<BenchReport>,
    pub bands: usize,
    pub rows: usize,
    /// Per near-duplicate node, the signature agreement with its cluster's kept prompt.
    pub node_sim: Vec<f32>,
    /// Per node, the kept node of its cluster (`u32::MAX` when contaminated).
    pub node_keep: Vec<u32>,
}

/// Merges scan states (in input order) and decides every example's fate.
pub fn plan(cfg: &DedupConfig, mut states: Vec<ShardState>, index: &DecontamIndex) -> Result<Plan, DedupError> {
    let np = cfg.num_perm;
    states.sort_by_key(|s| s.files.first().map_or(u32::MAX, |f| f.index));
    // Examples in global (file, line) order; files are disjoint between states.
    let mut order: Vec<(u32, usize, usize)> = Vec::new();
    for (si, s) in states.iter().enumerate() {
        for (ei, e) in s.examples.iter().enumerate() {
            order.push((e.file, si, ei));
        }
    }
    order.sort_by_key(|&(f, si, ei)| (f, states[si].examples[ei].line));
    let mut files: Vec<FileEntry> = states.iter().flat_map(|s| s.files.iter().cloned()).collect();
    files.sort_by_key(|f| f.index);
    let prompt_maps: Vec<HashMap<Key, u32>> =
        states.iter().map(|s| s.prompts.iter().enumerate().map(|(i, p)| (p.key, i as u32)).collect()).collect();

    let mut funnel = Funnel { invalid: states.iter().map(|s| s.invalid).sum(), ..Default::default() };
    let mut u_of: HashMap<Key, u32> = HashMap::new();
    let mut prompts: Vec<PromptRec> = Vec::new();
    let mut sigs: Vec<u32> = Vec::new();
    let mut node_of: HashMap<(u32, String), u32> = HashMap::new();
    let mut node_u: Vec<u32> = Vec::new();
    let mut node_ids: Vec<String> = Vec::new();
    let mut node_count: Vec<u32> = Vec::new();
    let mut pairs: HashMap<Key, u32> = HashMap::new();
    let mut examples = Vec::with_capacity(order.len());
    let mut ex_node = Vec::with_capacity(order.len());
    let mut exact_of: Vec<Option<u32>> = Vec::with_capacity(order.len());
    for &(_, si, ei) in &order {
        let e = std::mem::replace(
            &mut states[si].examples[ei],
            ExampleRec { file: 0, line: 0, prompt: [0; 16], pair: [0; 16], prompt_id: String::new() },
        );
        let gi = examples.len() as u32;
        let u = match u_of.get(&e.prompt) {
            Some(&u) => u,
            None => {
                let u = prompts.len() as u32;
                let li = prompt_maps[si][&e.prompt] as usize;
                prompts.push(states[si].prompts[li].clone());
                sigs.extend_from_slice(&states[si].sigs[li * np..(li + 1) * np]);
                u_of.insert(e.prompt, u);
                u
            }
        };
        let node = match node_of.get(&(u, e.prompt_id.clone())) {
            Some(&n) => n,
            None => {
                let n = node_ids.len() as u32;
                node_of.insert((u, e.prompt_id.clone()), n);
                node_u.push(u);
                node_ids.push(e.prompt_id.clone());
                node_count.push(0);
                n
            }
        };
        let dup = *pairs.entry(e.pair).or_insert(gi);
        if dup != gi {
            exact_of.push(Some(dup));
        } else {
            exact_of.push(None);
            node_count[node as usize] += 1;
        }
        ex_node.push(node);
        examples.push(e);
    }
    drop(states);
    drop(pairs);
    funnel.input = examples.len() as u64 + funnel.invalid;
    funnel.distinct_prompts = prompts.len() as u64;
    funnel.prompt_ids = node_ids.len() as u64;

    // Near-duplicates among clean, shingled prompts.
    let (bands, rows) = cfg.lsh();
    let min_eq = minhash::min_equal_slots(cfg.threshold, np);
    let sig = |u: u32| &sigs[u as usize * np..(u as usize + 1) * np];
    let eligible: Vec<u32> = (0..prompts.len() as u32)
        .filter(|&u| prompts[u as usize].shingled && prompts[u as usize].hit.is_none())
        .collect();
    let mut uf = UnionFind::new(prompts.len());
    for band in 0..bands {
        let roots: Vec<u32> = (0..prompts.len() as u32).map(|u| uf.find(u)).collect();
        let mut keys: Vec<(u64, u32)> =
            eligible.par_iter().map(|&u| (minhash::band_key(sig(u), band, rows), u)).collect();
        keys.par_sort_unstable();
        let mut buckets: Vec<&[(u64, u32)]> = Vec::new();
        let mut start = 0;
        for i in 1..=keys.len() {
            if i == keys.len() || keys[i].0 != keys[start].0 {
                if i - start > 1 {
                    buckets.push(&keys[start..i]);
                }
                start = i;
            }
        }
        let results: Vec<(u64, Vec<(u32, u32)>)> = buckets
            .par_iter()
            .map(|b| {
                let mut local = UnionFind::new(b.len());
                let mut edges = Vec::new();
                let mut candidates = 0u64;
                for i in 1..b.len() {
                    let ui = b[i].1;
                    for j in 0..i {
                        let uj = b[j].1;
                        if roots[ui as usize] == roots[uj as usize] || local.find(i as u32) == local.find(j as u32) {
                            continue;
                        }
                        candidates += 1;
                        let same_numbers =
                            cfg.ignore_numbers || prompts[ui as usize].numbers == prompts[uj as usize].numbers;
                        if same_numbers && minhash::equal_slots(sig(ui), sig(uj)) >= min_eq {
                            local.union(i as u32, j as u32);
                            edges.push((uj, ui));
                        }
                    }
                }
                (candidates, edges)
            })
            .collect();
        for (c, edges) in results {
            funnel.candidate_pairs += c;
            for (a, b) in edges {
                if uf.union(a, b) {
                    funnel.verified_pairs += 1;
                }
            }
        }
    }

    // One kept node per cluster: most examples, then smallest prompt id, then first seen.
    let mut best: HashMap<u32, u32> = HashMap::new();
    for n in 0..node_ids.len() as u32 {
        let u = node_u[n as usize];
        if prompts[u as usize].hit.is_some() {
            continue;
        }
        let root = uf.find(u);
        let e = best.entry(root).or_insert(n);
        let cur = *e as usize;
        let (cn, nn) = (node_count[cur], node_count[n as usize]);
        if nn > cn || (nn == cn && node_ids[n as usize] < node_ids[cur]) {
            *e = n;
        }
    }
    funnel.clusters = best.len() as u64;
    let node_keep: Vec<u32> = (0..node_ids.len())
        .map(|n| {
            let u = node_u[n];
            if prompts[u as usize].hit.is_some() { u32::MAX } else { best[&uf.find(u)] }
        })
        .collect();
    let mut node_sim = vec![1.0f32; node_ids.len()];
    let mut kept_per_node = vec![0usize; node_ids.len()];
    let mut decisions = Vec::with_capacity(examples.len());
    let mut bench: Vec<BenchReport> = index
        .benchmarks
        .iter()
        .map(|b| BenchReport { benchmark: b.name.clone(), items: b.labels.len() as u64, ..Default::default() })
        .collect();
    let mut counted_prompt: HashSet<u32> = HashSet::new();
    let mut matched_items: Vec<HashSet<u32>> = vec![HashSet::new(); bench.len()];
    for (gi, &n) in ex_node.iter().enumerate() {
        let u = node_u[n as usize];
        let d = if let Some(first) = exact_of[gi] {
            funnel.exact_duplicates += 1;
            Decision::Exact(first)
        } else if let Some(hit) = &prompts[u as usize].hit {
            funnel.contaminated += 1;
            let b = &mut bench[hit.bench as usize];
            b.examples_removed += 1;
            if counted_prompt.insert(u) {
                b.prompts_removed += 1;
                if matched_items[hit.bench as usize].insert(hit.item) {
                    *b.by_method.entry(hit.method.as_str().to_string()).or_insert(0) += 1;
                }
                if b.example.is_none() {
                    b.example = Some(serde_json::json!({
                        "prompt_id": node_ids[n as usize],
                        "item": index.benchmarks[hit.bench as usize].labels[hit.item as usize],
                        "method": hit.method.as_str(),
                        "shared_text": hit.evidence,
                    }));
                }
            }
            Decision::Contaminated(u)
        } else {
            let keep = best[&uf.find(u)];
            if keep != n {
                funnel.near_duplicates += 1;
                let ku = node_u[keep as usize];
                node_sim[n as usize] = minhash::agreement(sig(u), sig(ku)) as f32;
                Decision::NearDup(n, keep)
            } else if cfg.max_per_prompt > 0 && kept_per_node[n as usize] >= cfg.max_per_prompt {
                funnel.over_max_per_prompt += 1;
                Decision::OverMax
            } else {
                kept_per_node[n as usize] += 1;
                funnel.kept += 1;
                if exact::unit_interval(&prompts[node_u[keep as usize] as usize].key) < cfg.validation_fraction {
                    funnel.validation += 1;
                    Decision::Validation
                } else {
                    funnel.train += 1;
                    Decision::Train
                }
            }
        };
        decisions.push(d);
    }
    Ok(Plan {
        files,
        examples,
        decisions,
        node_ids,
        ex_node,
        prompts,
        funnel,
        decontam: bench,
        bands,
        rows,
        node_sim,
        node_keep,
    })
}

/// The input's files, numbered.
fn input_files(cfg: &DedupConfig) -> Result<Vec<FileEntry>, DedupError> {
    let listed = store::list_inputs(&cfg.input)?;
    listed
        .into_iter()
        .enumerate()
        .map(|(i, (p, _))| {
            let bytes = std::fs::metadata(&p).map_err(io_err(&p))?.len();
            Ok(FileEntry { index: i as u32, path: p.display().to_string(), bytes })
        })
        .collect()
}

/// Runs `distill dedup` as configured: one process, one `--shard`, or the `--merge`.
pub fn run(cfg: &DedupConfig) -> Result<Report, DedupError> {
    cfg.check()?;
    let index = load_benchmarks(cfg)?;
    let hasher = MinHasher::new(cfg.shingle_params());
    let files = input_files(cfg)?;
    let sig_dir = cfg.out.join("signatures");
    if let Some((i, n)) = cfg.shard_spec()? {
        let mine: Vec<FileEntry> = files.iter().filter(|f| f.index % n == i).cloned().collect();
        let mut st = scan(cfg, &mine, &hasher, &index)?;
        st.shard = i;
        st.of = n;
        let path = sig_dir.join(ShardState::file_name(i, n));
        st.write(&path, cfg.num_perm)?;
        let funnel = Funnel { input: st.examples.len() as u64 + st.invalid, invalid: st.invalid, ..Default::default() };
        return Ok(Report { funnel, signatures: Some(path), out: cfg.out.clone(), ..Default::default() });
    }
    let (t, c) = (std::time::Instant::now(), cpu_seconds());
    let states =
        if cfg.merge { read_signatures(cfg, &sig_dir, &files)? } else { vec![scan(cfg, &files, &hasher, &index)?] };
    let scan_s = (t.elapsed().as_secs_f64(), cpu_seconds() - c);
    let (t, c) = (std::time::Instant::now(), cpu_seconds());
    let plan = plan(cfg, states, &index)?;
    let plan_s = (t.elapsed().as_secs_f64(), cpu_seconds() - c);
    let (t, c) = (std::time::Instant::now(), cpu_seconds());
    let mut report = corpus::write(cfg, &plan)?;
    drop(plan);
    report.seconds = vec![
        (if cfg.merge { "read signatures" } else { "scan" }, scan_s.0, scan_s.1),
        ("cluster", plan_s.0, plan_s.1),
        ("write", t.elapsed().as_secs_f64(), cpu_seconds() - c),
    ];
    Ok(report)
}

/// CPU seconds (user + system) this process has used so far, all threads.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given and reads nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn read_signatures(cfg: &DedupConfig, dir: &Path, files: &[FileEntry]) -> Result<Vec<ShardState>, DedupError> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sig"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(DedupError::NoSignatures { dir: dir.to_path_buf() });
    }
    let mut states = Vec::new();
    for p in &paths {
        let st = ShardState::read(p, cfg.num_perm)?;
        if st.fingerprint != cfg.fingerprint() {
            return Err(DedupError::Mismatch {
                path: p.clone(),
                what: "ngram, char_ngram, short_words, num_perm, seed or decontamination flags differ".into(),
            });
        }
        states.push(st);
    }
    let of = states[0].of;
    if let Some(s) = states.iter().find(|s| s.of != of) {
        return Err(DedupError::Mismatch {
            path: dir.join(ShardState::file_name(s.shard, s.of)),
            what: format!("shards of {} and of {of} in one directory", s.of),
        });
    }
    let have: HashSet<u32> = states.iter().map(|s| s.shard).collect();
    let missing: Vec<u32> = (0..of).filter(|i| !have.contains(i)).collect();
    if !missing.is_empty() {
        return Err(DedupError::MissingShards { dir: dir.to_path_buf(), of, missing });
    }
    let mut covered: Vec<&FileEntry> = states.iter().flat_map(|s| s.files.iter()).collect();
    covered.sort_by_key(|f| f.index);
    if covered.len() != files.len() || covered.iter().zip(files).any(|(a, b)| *a != b) {
        let what = match covered.iter().zip(files).find(|(a, b)| **a != *b) {
            Some((a, b)) => {
                format!("file {}: {} ({} bytes) then, {} ({} bytes) now", a.index, a.path, a.bytes, b.path, b.bytes)
            }
            None => format!("{} files then, {} now", covered.len(), files.len()),
        };
        return Err(DedupError::InputChanged { path: cfg.input.clone(), what });
    }
    Ok(states)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml() {
        let d = DedupConfig::default();
        let s = toml::to_string(&d).expect("toml");
        let back: DedupConfig = toml::from_str(&s).expect("parses");
        assert_eq!(back, d);
        let partial: DedupConfig = toml::from_str("threshold = 0.7\n").expect("parses");
        assert_eq!(partial.threshold, 0.7);
        assert_eq!(partial.num_perm, 256);
        assert!(toml::from_str::<DedupConfig>("thresold = 0.7\n").is_err());
    }

    #[test]
    fn shard_specs() {
        let c = |s: &str| DedupConfig { shard: Some(s.into()), ..Default::default() }.shard_spec();
        assert_eq!(c("3/16").expect("ok"), Some((3, 16)));
        assert!(c("16/16").is_err());
        assert!(c("x").is_err());
        assert!(c("1/0").is_err());
    }
}
