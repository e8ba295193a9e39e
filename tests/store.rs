//! The store end to end: round trips in every format, a writer killed with SIGKILL, torn
//! tails, deterministic shards and their manifest, and Parquet as pandas reads it.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use distill::store::{self, Durability, Format, JsonlWriter, Manifest, RecordSink, ShardedWriter};

fn sample(i: usize) -> Value {
    json!({
        "id": format!("p{i:04}/0"),
        "prompt_id": format!("p{i:04}"),
        "sample": 0,
        "task": if i.is_multiple_of(3) { "code" } else { "math" },
        "prompt": format!("What is {i} + {i}?"),
        "answer": (2 * i).to_string(),
        "messages": [{"role": "user", "content": format!("What is {i} + {i}?")}],
        "reasoning": "step ".repeat(i % 17 + 1),
        "content": format!("\\boxed{{{}}}", 2 * i),
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 10, "completion_tokens": i as u64},
        "teacher": {"model": "r1", "endpoint": "http://127.0.0.1:1/v1"},
        "params": {"temperature": 0.6, "top_p": 0.95, "max_tokens": 1024},
        "latency_ms": 5,
        "request_sha256": format!("{i:064x}"),
        "unknown_field": {"nested": [1, 2, 3], "flag": i.is_multiple_of(2)},
        "ünïcode": "日本語 ✓",
    })
}

fn read_all(path: &Path) -> (Vec<Value>, Vec<String>) {
    let mut records = Vec::new();
    let mut errors = Vec::new();
    for item in store::open(path).expect("opens") {
        match item {
            Ok(r) => records.push(Value::Object(r.value)),
            Err(e) => errors.push(e.to_string()),
        }
    }
    (records, errors)
}

#[test]
fn round_trip_every_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let want: Vec<Value> = (0..300).map(sample).collect();
    for ext in ["jsonl", "jsonl.zst", "parquet"] {
        let path = dir.path().join(format!("records.{ext}"));
        let mut w = store::create(&path).expect("creates");
        for v in &want {
            w.write_value(v).expect("writes");
        }
        w.finish().expect("finishes");
        let (got, errors) = read_all(&path);
        assert!(errors.is_empty(), "{ext}: {errors:?}");
        assert_eq!(got, want, "{ext}: records differ after a round trip");
    }
}

#[test]
fn parquet_messages_are_a_list_of_structs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.parquet");
    let mut w = store::create(&path).expect("creates");
    w.write_value(&sample(1)).expect("writes");
    w.finish().expect("finishes");
    let arrow = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&path).expect("open"),
    )
    .expect("builder");
    let field = arrow.schema().field_with_name("messages").expect("messages column").clone();
    let text = format!("{:?}", field.data_type());
    assert!(
        text.starts_with("List(")
            && text.contains("Struct(")
            && text.contains("\"role\"")
            && text.contains("\"content\""),
        "{text}"
    );
}

/// The child side of the SIGKILL test: writes records forever, acknowledging each on stdout
/// once `write_value` has returned.
#[test]
fn child_writer() {
    let Ok(path) = std::env::var("DISTILL_TEST_CHILD_WRITER") else { return };
    let mut w = JsonlWriter::create(Path::new(&path), Durability::EveryRecord).expect("creates");
    let stdout = std::io::stdout();
    for i in 0.. {
        w.write_value(&sample(i)).expect("writes");
        let mut out = stdout.lock();
        writeln!(out, "ack {i}").expect("ack");
        out.flush().expect("flush");
    }
}

#[test]
fn sigkill_mid_stream_loses_no_completed_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (round, kill_after) in [(0, 1usize), (1, 137), (2, 1500)] {
        let path = dir.path().join(format!("killed-{round}.jsonl.zst"));
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "child_writer", "--nocapture", "--test-threads", "1"])
            .env("DISTILL_TEST_CHILD_WRITER", &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawns child");
        let stdout = child.stdout.take().expect("stdout");
        let mut acked = 0usize;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("line");
            if line.starts_with("ack ") {
                acked += 1;
                if acked >= kill_after {
                    break;
                }
            }
        }
        // SIGKILL: no destructor, no flush, no zstd frame end.
        child.kill().expect("kills");
        child.wait().expect("waits");
        let (got, errors) = read_all(&path);
        assert!(got.len() >= acked, "round {round}: {} records read, {acked} acknowledged", got.len());
        for (i, v) in got.iter().enumerate() {
            assert_eq!(v, &sample(i), "round {round}: record {i} differs");
        }
        // The only error allowed is the report of the torn tail.
        assert!(errors.len() <= 1, "{errors:?}");
        for e in &errors {
            assert!(e.contains("torn tail"), "{e}");
        }
    }
}

#[test]
fn truncated_zst_file_reports_a_torn_tail_and_keeps_complete_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.jsonl.zst");
    let mut w = JsonlWriter::create(&path, Durability::EveryRecord).expect("creates");
    for i in 0..50 {
        w.write_value(&sample(i)).expect("writes");
    }
    w.close().expect("closes");
    let bytes = std::fs::read(&path).expect("reads");
    for cut in [bytes.len() - 1, bytes.len() / 2, 10] {
        let p = dir.path().join(format!("cut{cut}.jsonl.zst"));
        std::fs::write(&p, &bytes[..cut]).expect("writes");
        let (got, errors) = read_all(&p);
        for (i, v) in got.iter().enumerate() {
            assert_eq!(v, &sample(i));
        }
        assert_eq!(errors.len(), 1, "cut {cut}: {errors:?}");
        assert!(errors[0].contains("torn tail") && errors[0].contains("cut"), "{}", errors[0]);
    }
    // A whole file still reads to the end without a report.
    let (got, errors) = read_all(&path);
    assert_eq!((got.len(), errors.len()), (50, 0));
}

fn write_shards(dir: &Path, format: Format) -> Vec<store::ShardInfo> {
    let mut w = ShardedWriter::new(&dir.join("data"), "train", format, 40).expect("creates");
    for i in 0..100 {
        w.write_value(&sample(i)).expect("writes");
    }
    let shards = w.finish().expect("finishes");
    let m = Manifest::new(dir, "distill test", json!({"records_per_shard": 40}), shards.clone());
    m.write(dir).expect("manifest");
    shards
}

#[test]
fn shards_are_byte_identical_across_runs_and_match_the_manifest() {
    for format in [Format::Parquet, Format::JsonlZst] {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        let sa = write_shards(a.path(), format);
        let sb = write_shards(b.path(), format);
        assert_eq!(sa.len(), 3);
        let names: Vec<String> =
            sa.iter().map(|s| Path::new(&s.path).file_name().expect("name").to_string_lossy().into_owned()).collect();
        let ext = format.extension();
        assert_eq!(names, [0, 1, 2].map(|i| format!("train-0000{i}-of-00003.{ext}")));
        assert_eq!(sa.iter().map(|s| s.records).collect::<Vec<_>>(), [40, 40, 20]);
        for (x, y) in sa.iter().zip(&sb) {
            let bx = std::fs::read(&x.path).expect("read");
            let by = std::fs::read(&y.path).expect("read");
            assert!(bx == by, "{} and {} differ", x.path, y.path);
        }
        let m = Manifest::read(a.path()).expect("reads manifest");
        assert_eq!(m.total_records, 100);
        assert_eq!(m.schema_version, distill::record::SCHEMA_VERSION);
        assert!(m.shards.iter().all(|s| s.path.starts_with("data/")), "{:?}", m.shards);
        assert!(m.verify(a.path()).expect("verifies").is_empty());
        for s in &m.shards {
            assert_eq!(s.sha256, store::sha256_file(&a.path().join(&s.path)).expect("hash"));
        }
        // Tampering is detected.
        std::fs::write(a.path().join(&m.shards[1].path), b"x").expect("tamper");
        assert_eq!(m.verify(a.path()).expect("verifies").len(), 1);
        // The directory reads back in order, without the manifest.
        let (got, errors) = read_all(b.path());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(got, (0..100).map(sample).collect::<Vec<_>>());
    }
}

#[test]
fn pandas_reads_messages_as_a_list_of_dicts() {
    let probe = Command::new("python3").args(["-c", "import pandas, pyarrow"]).output();
    if !matches!(&probe, Ok(o) if o.status.success()) {
        println!("SKIPPED: python3 with pandas and pyarrow is not available");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let shards = write_shards(dir.path(), Format::Parquet);
    let script = r#"
import sys, pandas as pd
df = pd.concat([pd.read_parquet(p) for p in sys.argv[1:]])
m = list(df.iloc[1]["messages"])
assert len(df) == 100, len(df)
assert isinstance(m[0], dict), type(m[0])
assert m[0]["role"] == "user" and m[0]["content"] == "What is 1 + 1?", m
print("ok", len(df))
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script);
    for s in &shards {
        cmd.arg(&s.path);
    }
    let out = cmd.output().expect("runs python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok 100");
}

#[test]
fn serialised_lines_give_the_same_shards_as_values() {
    // `write_line` takes `serde_json::to_vec` bytes made elsewhere (filter serialises on its
    // workers): every format must come out byte for byte as with `write_value`.
    for format in [Format::Parquet, Format::JsonlZst, Format::Jsonl] {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        let sa = write_shards(a.path(), format);
        let mut w = ShardedWriter::new(&b.path().join("data"), "train", format, 40).expect("creates");
        for i in 0..100 {
            w.write_line(&serde_json::to_vec(&sample(i)).expect("serialises")).expect("writes");
        }
        let sb = w.finish().expect("finishes");
        assert_eq!(sa.len(), sb.len());
        for (x, y) in sa.iter().zip(&sb) {
            assert_eq!(x.records, y.records);
            assert!(std::fs::read(&x.path).expect("read") == std::fs::read(&y.path).expect("read"), "{format:?}");
        }
    }
}

#[test]
fn parallel_zst_writer_round_trips_as_one_frame_with_the_same_bytes_every_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Enough text for several of zstd's 1 MiB jobs (the records repeat, so vary them).
    let want: Vec<Value> =
        (0..3000).map(|i| json!({"id": i, "text": format!("{i} {}", "abc ".repeat(i % 700))})).collect();
    let mut bytes = Vec::new();
    for run in 0..2 {
        let path = dir.path().join(format!("p{run}.jsonl.zst"));
        let mut w = JsonlWriter::create_parallel(&path, Durability::Batched, 1).expect("creates");
        for v in &want {
            w.write_value(v).expect("writes");
        }
        w.close().expect("closes");
        let (got, errors) = read_all(&path);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(got, want);
        bytes.push(std::fs::read(&path).expect("reads"));
    }
    assert!(bytes[0] == bytes[1], "two runs wrote different bytes");
    // One frame: a reader that stops after the first frame (as some Python readers do) still
    // gets every record.
    let mut d = zstd::stream::read::Decoder::new(&bytes[0][..]).expect("decoder").single_frame();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut d, &mut text).expect("decodes");
    assert_eq!(text.lines().count(), want.len());
}
