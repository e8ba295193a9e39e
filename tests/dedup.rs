//! `distill dedup` as a user runs it, on generated examples with planted duplicates
//! (`distill::dedup::synth`): recall and false merges against the true Jaccard, number-only
//! variants, benchmark leaks, splits by cluster, byte-identical outputs (two runs; --shard/--merge
//! against one process), and the corpus read back by pandas and `datasets` when Python has them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use distill::dedup::synth::{Synth, SynthConfig, generate};
use serde_json::Value;

fn distill(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distill")).args(args).current_dir(cwd).output().expect("runs distill")
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "distill failed ({:?}): {err}", o.status.code());
    err
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn benchmark_texts(file: &str) -> Vec<String> {
    distill::store::open(&repo().join(file))
        .expect("benchmark")
        .map(|r| r.expect("record").value["prompt"].as_str().expect("prompt").to_string())
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut s = lines.join("\n");
    s.push('\n');
    std::fs::write(path, s).expect("writes");
}

fn synth(examples: usize, seed: u64, leaks: usize) -> Synth {
    generate(&SynthConfig { examples, seed, benchmarks: benchmark_texts("datasets/benchmarks/gsm8k.jsonl"), leaks })
}

/// prompt id -> (stage, duplicate_of) of removed examples.
fn removed(out: &Path) -> HashMap<String, (String, Option<String>)> {
    let mut m = HashMap::new();
    for r in distill::store::open(&out.join("rejects/removed.jsonl.zst")).expect("removed") {
        let v = r.expect("record").value;
        let pid = v["prompt_id"].as_str().expect("prompt_id").to_string();
        let stage = v["stage"].as_str().expect("stage").to_string();
        let of = v.get("cluster").and_then(Value::as_str).map(str::to_string);
        m.insert(pid, (stage, of));
    }
    m
}

/// Every record of a split, in order.
fn split_ids(out: &Path, split: &str) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(out.join("data"))
        .expect("data dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{split}-"))))
        .collect();
    files.sort();
    let mut ids = Vec::new();
    for f in files {
        for r in distill::store::open(&f).expect("shard") {
            ids.push(r.expect("row").value["prompt_id"].as_str().expect("prompt_id").to_string());
        }
    }
    ids
}

fn all_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                if !p.ends_with("signatures") {
                    stack.push(p);
                }
            } else {
                m.insert(p.strip_prefix(dir).expect("prefix").display().to_string(), std::fs::read(&p).expect("read"));
            }
        }
    }
    m
}

#[test]
fn recall_false_merges_numbers_and_leaks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = synth(30_000, 11, 30);
    write_lines(&dir.path().join("in.jsonl"), &s.lines);
    let gsm = repo().join("datasets/benchmarks/gsm8k.jsonl");
    let he = repo().join("datasets/benchmarks/humaneval.jsonl");
    let err = ok(&distill(
        &[
            "dedup",
            "--input",
            "in.jsonl",
            "--out",
            "out",
            "--decontam",
            &format!("{}:prompt", gsm.display()),
            "--decontam",
            &format!("{}:prompt", he.display()),
        ],
        dir.path(),
    ));
    let out = dir.path().join("out");
    let rm = removed(&out);
    let rep = |p: &str| -> String {
        match rm.get(p) {
            Some((_, Some(of))) => of.clone(),
            _ => p.to_string(),
        }
    };
    let merged = |a: &str, b: &str| rep(a) == rep(b);
    let (mut hi, mut hi_found, mut lo, mut lo_merged, mut num, mut num_merged) = (0, 0, 0, 0, 0, 0);
    for p in &s.pairs {
        if p.kind == "numbers" {
            num += 1;
            num_merged += merged(&p.a, &p.b) as usize;
        } else if p.jaccard >= 0.85 {
            hi += 1;
            hi_found += merged(&p.a, &p.b) as usize;
        } else if p.jaccard <= 0.6 {
            lo += 1;
            lo_merged += merged(&p.a, &p.b) as usize;
        }
    }
    let recall = hi_found as f64 / hi as f64;
    let false_rate = lo_merged as f64 / lo as f64;
    eprintln!(
        "recall {recall:.4} ({hi_found}/{hi}), false merges {false_rate:.4} ({lo_merged}/{lo}), number variants merged {num_merged}/{num}\n{err}"
    );
    assert!(hi > 500 && lo > 300 && num > 300, "enough planted pairs: {hi} {lo} {num}");
    assert!(recall >= 0.95, "recall {recall}");
    assert!(false_rate <= 0.01, "false merges {false_rate}");
    assert_eq!(num_merged, 0, "number-only variants are different problems");
    // Every leak removed, and nothing else by decontamination.
    for l in &s.leaks {
        assert_eq!(rm.get(&l.prompt_id).map(|r| r.0.as_str()), Some("decontam"), "leak {l:?}");
    }
    let leaked: HashSet<&str> = s.leaks.iter().map(|l| l.prompt_id.as_str()).collect();
    for (p, (stage, _)) in &rm {
        if stage == "decontam" {
            assert!(leaked.contains(p.as_str()), "{p} removed as contaminated but not planted");
        }
    }
    // The exact copies are gone, counted as such.
    let m: Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest")).expect("json");
    let mut seen = HashSet::new();
    let mut copies = 0u64;
    for l in &s.lines {
        let v: Value = serde_json::from_str(l).expect("json");
        let norm =
            |x: &Value| x.as_str().expect("text").split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
        copies += !seen.insert((norm(&v["messages"][0]["content"]), norm(&v["messages"][1]["content"]))) as u64;
    }
    assert!(copies >= s.exact_copies as u64);
    assert_eq!(m["funnel"]["exact_duplicates"].as_u64(), Some(copies));
    assert_eq!(m["decontamination"][0]["prompts_removed"].as_u64(), Some(s.leaks.len() as u64));
    assert!(m["decontamination"][0]["example"]["shared_text"].as_str().is_some_and(|t| t.split(' ').count() == 8));
    // No prompt cluster in both splits; the funnel adds up.
    let train: HashSet<String> = split_ids(&out, "train").iter().map(|p| rep(p)).collect();
    let val: Vec<String> = split_ids(&out, "validation");
    assert!(!val.is_empty());
    for p in &val {
        assert!(!train.contains(&rep(p)), "cluster of {p} in both splits");
    }
    let f = &m["funnel"];
    let sum: u64 = ["invalid", "exact_duplicates", "contaminated", "near_duplicates", "over_max_per_prompt", "kept"]
        .iter()
        .map(|k| f[k].as_u64().expect("count"))
        .sum();
    assert_eq!(Some(sum), f["input"].as_u64());
    assert_eq!(m["total_records"], f["kept"]);
    assert_eq!(
        distill::store::Manifest::read(&out).expect("manifest").verify(&out).expect("verify"),
        Vec::<String>::new()
    );
}

#[test]
fn strip_numbers_catches_templated_leaks() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A benchmark whose every 8-gram holds a number; the training prompt changes them all.
    std::fs::write(
        dir.path().join("bench.jsonl"),
        "{\"id\": \"b1\", \"question\": \"What is 17 times 23 plus 5 minus 2 divided by 4 times 9?\"}\n",
    )
    .expect("writes");
    let rec = |id: &str, q: &str| {
        format!(
            "{{\"id\": \"{id}/0\", \"prompt_id\": \"{id}\", \"task\": \"math\", \"messages\": [{{\"role\": \"user\", \"content\": \"{q}\"}}, {{\"role\": \"assistant\", \"content\": \"x\"}}]}}"
        )
    };
    write_lines(
        &dir.path().join("in.jsonl"),
        &[rec("a", "What is 18 times 24 plus 6 minus 3 divided by 5 times 8?"), rec("b", "Name three primes.")],
    );
    ok(&distill(&["dedup", "--input", "in.jsonl", "--out", "o1", "--decontam", "bench.jsonl:question"], dir.path()));
    assert!(removed(&dir.path().join("o1")).is_empty(), "no n-gram without a number is shared");
    ok(&distill(
        &[
            "dedup",
            "--input",
            "in.jsonl",
            "--out",
            "o2",
            "--decontam",
            "bench.jsonl:question",
            "--decontam-strip-numbers",
        ],
        dir.path(),
    ));
    let rm = removed(&dir.path().join("o2"));
    assert_eq!(rm.get("a").map(|r| r.0.as_str()), Some("decontam"));
    assert!(!rm.contains_key("b"));
    // A wrong field names the file and the fix.
    let o = distill(&["dedup", "--input", "in.jsonl", "--out", "o3", "--decontam", "bench.jsonl:prompt"], dir.path());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2));
    assert!(err.contains("bench.jsonl") && err.contains("`prompt`") && err.contains("question"), "{err}");
}

#[test]
fn byte_identical_runs_and_shard_merge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = synth(8_000, 5, 5);
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).expect("mkdir");
    // Three input files; one bad line.
    let third = s.lines.len() / 3;
    write_lines(&input.join("part-0.jsonl"), &s.lines[..third]);
    let mut second = s.lines[third..2 * third].to_vec();
    second.insert(7, "{not json".to_string());
    write_lines(&input.join("part-1.jsonl"), &second);
    write_lines(&input.join("part-2.jsonl"), &s.lines[2 * third..]);
    let gsm = format!("{}:prompt", repo().join("datasets/benchmarks/gsm8k.jsonl").display());
    let common =
        ["--input", "in", "--decontam", gsm.as_str(), "--shard-size", "300000", "--validation-fraction", "0.05"];
    let run = |extra: &[&str]| {
        let mut a = vec!["dedup"];
        a.extend_from_slice(&common);
        a.extend_from_slice(extra);
        distill(&a, dir.path())
    };
    let o = run(&["--out", "a"]);
    assert_eq!(o.status.code(), Some(1), "a bad line: finished with rejects: {}", String::from_utf8_lossy(&o.stderr));
    run(&["--out", "b"]);
    // Shard 0 of 2 (files 0 and 2), then a merge that names the missing shard 1.
    ok(&run(&["--out", "c", "--shard", "0/2"]));
    let o = run(&["--out", "c", "--merge"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.code() == Some(2) && err.contains("missing shards [1]") && err.contains("--shard I/2"), "{err}");
    let o = run(&["--out", "c", "--shard", "1/2"]);
    assert_eq!(o.status.code(), Some(1), "shard 1 holds the bad line: {}", String::from_utf8_lossy(&o.stderr));
    assert!(dir.path().join("c/signatures/shard-00001-of-00002.sig").exists());
    let o = run(&["--out", "c", "--merge"]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    let (a, b, c) =
        (all_bytes(&dir.path().join("a")), all_bytes(&dir.path().join("b")), all_bytes(&dir.path().join("c")));
    assert!(a.keys().filter(|k| k.starts_with("data/train-")).count() >= 2, "several shards: {:?}", a.keys());
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let no_config = |bytes: &[u8]| {
        // The resolved config differs (--out, --shard/--merge); everything else must not.
        let mut x: Value = serde_json::from_slice(bytes).expect("json");
        x["config"] = Value::Null;
        x
    };
    for (k, v) in &a {
        if k == "manifest.json" {
            assert_eq!(no_config(v), no_config(&b[k]), "manifest differs between two runs");
            assert_eq!(no_config(v), no_config(&c[k]), "manifest differs between --shard/--merge and one process");
        } else {
            assert!(b[k] == *v, "{k} differs between two runs");
            assert!(c[k] == *v, "{k} differs between --shard/--merge and one process");
        }
    }
    let invalid = String::from_utf8_lossy(&a["rejects/invalid.jsonl"]).into_owned();
    assert!(invalid.contains("part-1.jsonl") && invalid.contains("\"line\":8"), "{invalid}");
    // Shards respect the bound (record JSON bytes; Parquet is smaller).
    let m: Value = serde_json::from_slice(&a["manifest.json"]).expect("json");
    for sh in m["shards"].as_array().expect("shards") {
        assert!(sh["bytes"].as_u64().expect("bytes") <= 300_000, "{sh}");
    }
}

#[test]
fn max_per_prompt_and_representative() {
    let dir = tempfile::tempdir().expect("tempdir");
    let long = "Find the number of ordered pairs of positive integers such that their sum is a perfect square and their product is as large as possible under the given constraint";
    let rec = |id: &str, k: usize, q: &str, r: &str| {
        format!(
            "{{\"id\": \"{id}/{k}\", \"prompt_id\": \"{id}\", \"task\": \"math\", \"messages\": [{{\"role\": \"user\", \"content\": \"{q}\"}}, {{\"role\": \"assistant\", \"content\": \"{r}\"}}]}}"
        )
    };
    let lines = vec![
        rec("z", 0, long, "a"),
        rec("y", 0, &format!("{long}."), "b"),
        rec("y", 1, &format!("{long}."), "c"),
        rec("x", 0, &long.to_uppercase(), "d"),
        rec("x", 1, &long.to_uppercase(), "e"),
        rec("x", 2, &long.to_uppercase(), "e"),
    ];
    write_lines(&dir.path().join("in.jsonl"), &lines);
    ok(&distill(
        &["dedup", "--input", "in.jsonl", "--out", "o", "--max-per-prompt", "1", "--validation-fraction", "0"],
        dir.path(),
    ));
    let rm = removed(&dir.path().join("o"));
    // y and x tie on kept examples (x/2 is an exact copy of x/1): the smaller id, x, wins.
    assert_eq!(rm["z"], ("near_dup".to_string(), Some("x".to_string())));
    assert_eq!(rm["y"], ("near_dup".to_string(), Some("x".to_string())));
    assert_eq!(split_ids(&dir.path().join("o"), "train"), vec!["x".to_string()]);
    let o = distill(&["dedup", "--input", "in.jsonl", "--out", "o", "--show-config"], dir.path());
    let cfg = String::from_utf8_lossy(&o.stdout);
    assert!(cfg.contains("[dedup]") && cfg.contains("threshold = 0.8") && cfg.contains("num_perm = 256"), "{cfg}");
}

#[test]
fn python_reads_the_corpus() {
    let python = std::env::var("DISTILL_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python).args(["-c", "import pandas, pyarrow, datasets"]).output();
    match probe {
        Ok(o) if o.status.success() => {}
        _ => {
            eprintln!(
                "skipped: {python} with pandas, pyarrow and datasets not found (set DISTILL_PYTHON to a venv's python)"
            );
            return;
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let s = synth(3_000, 2, 0);
    write_lines(&dir.path().join("in.jsonl"), &s.lines);
    ok(&distill(&["dedup", "--input", "in.jsonl", "--out", "corpus", "--validation-fraction", "0.1"], dir.path()));
    let m: Value = serde_json::from_slice(&std::fs::read(dir.path().join("corpus/manifest.json")).expect("manifest"))
        .expect("json");
    let script = format!(
        r#"
import glob, pandas, datasets
df = pandas.read_parquet(sorted(glob.glob("corpus/data/train-*.parquet"))[0])
assert list(df.columns)[:2] == ["id", "messages"], df.columns
assert df.iloc[0]["messages"][0]["role"] == "user"
ds = datasets.load_dataset("corpus")
assert set(ds.keys()) == {{"train", "validation"}}, ds
assert ds["train"].num_rows == {train} and ds["validation"].num_rows == {val}, ds
f = ds["train"].features["messages"]
inner = f.feature if hasattr(f, "feature") else f[0]
assert set(inner.keys()) == {{"role", "content"}}, f
print("python ok", ds["train"].num_rows, ds["validation"].num_rows)
"#,
        train = m["funnel"]["train"],
        val = m["funnel"]["validation"]
    );
    let o = Command::new(&python)
        .args(["-c", &script])
        .current_dir(dir.path())
        .env("HF_DATASETS_CACHE", dir.path().join("hf-cache"))
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("python");
    assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    eprintln!("{}", String::from_utf8_lossy(&o.stdout));
}
