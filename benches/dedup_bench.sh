#!/usr/bin/env bash
# distill dedup at 200k/400k/800k generated examples (wall, examples/s, peak RSS) and, in the
# same run, datatrove's MinHash pipeline (4 stages, local executor, one task each, in a venv
# this script makes) on the same prompts, both scored on the planted clusters.
#   bash benches/dedup_bench.sh [SIZES] [DATATROVE_SIZE]
# SIZES default "200000 400000 800000"; DATATROVE_SIZE (examples whose prompts datatrove gets)
# default 200000. WORK (default target/dedup-bench) holds inputs, outputs and the venv.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
sizes="${1:-200000 400000 800000}"
dt_size="${2:-200000}"
work="${WORK:-$root/target/dedup-bench}"
mkdir -p "$work"
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores; flags:$(grep -o -w 'avx2\|avx512f\|amx_tile\|sha_ni' /proc/cpuinfo | sort -u | tr '\n' ' '))"
cargo build --release --bin distill --example dedup_synth >/dev/null
tdir="${CARGO_TARGET_DIR:-$root/target}/release"
bin="${DISTILL_BENCH_BIN:-$tdir/distill}"
synth="$tdir/examples/dedup_synth"
venv="$work/venv-datatrove"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "datatrove[processing]" orjson spacy
fi
py="$venv/bin/python"

measure() { # LOG -> "wall_s cpu_s rss_mb"
  local wall cpu rss
  wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$1" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
  cpu=$(awk '/User time|System time/ { s += $NF } END { print s }' "$1")
  rss=$(awk '/Maximum resident set size/ { print int($NF/1024) }' "$1")
  echo "$wall $cpu $rss"
}

printf '\n%-9s %-9s %-8s %-8s %-11s %-11s %-8s %-7s %-7s %-7s\n' examples prompts wall_s cpu_s examples/s prompts/cpu-s rss_MB recall false numbers
for n in $sizes; do
  [ -f "$work/s$n.jsonl" ] || "$synth" --examples "$n" --seed 1 --out "$work/s$n.jsonl" --truth "$work/t$n.json" --prompts "$work/p$n.jsonl" 2>/dev/null
  /usr/bin/time -v "$bin" dedup --input "$work/s$n.jsonl" --out "$work/c$n" > "$work/log$n" 2>&1
  read -r wall cpu rss < <(measure "$work/log$n")
  ex=$(python3 -c "import json; print(json.load(open('$work/t$n.json'))['examples'])")
  pr=$(python3 -c "import json; print(json.load(open('$work/t$n.json'))['prompts'])")
  score=$("$py" benches/dedup_score.py "$work/t$n.json" distill "$work/c$n")
  read -r rec fal num < <(python3 -c "import json; s=json.loads('$score'); print(f\"{s['recall']:.4f} {s['false_merges']:.4f} {s['number_variants_merged']:.4f}\")")
  printf '%-9s %-9s %-8s %-8s %-11s %-11s %-8s %-7s %-7s %-7s\n' "$ex" "$pr" "$wall" "$cpu" "$(python3 -c "print(int($ex/$wall))")" "$(python3 -c "print(int($pr/$cpu))")" "$rss" "$rec" "$fal" "$num"
  grep '^dedup: corpus' "$work/log$n" | sed 's/^/    /'
done

# The same prompts, one example each, through both tools.
n="$dt_size"
[ -f "$work/s$n.jsonl" ] || "$synth" --examples "$n" --seed 1 --out "$work/s$n.jsonl" --truth "$work/t$n.json" --prompts "$work/p$n.jsonl" 2>/dev/null
python3 - "$work/p$n.jsonl" "$work/q$n.jsonl" <<'PY'
import json, sys
with open(sys.argv[1]) as f, open(sys.argv[2], "w") as g:
    for line in f:
        r = json.loads(line)
        g.write(json.dumps({"id": r["id"], "prompt_id": r["id"], "task": "math", "messages": [{"role": "user", "content": r["text"]}]}) + "\n")
PY
prompts=$(wc -l < "$work/p$n.jsonl")
/usr/bin/time -v "$bin" dedup --input "$work/q$n.jsonl" --out "$work/cq$n" > "$work/logq$n" 2>&1
read -r d_wall d_cpu d_rss < <(measure "$work/logq$n")
d_score=$("$py" benches/dedup_score.py "$work/t$n.json" distill "$work/cq$n")
rm -rf "$work/dt$n"
/usr/bin/time -v "$py" benches/dedup_datatrove.py "$work/p$n.jsonl" "$work/dt$n" > "$work/dt$n.json" 2> "$work/logdt$n"
read -r t_wall t_cpu t_rss < <(measure "$work/logdt$n")
t_score=$("$py" benches/dedup_score.py "$work/t$n.json" datatrove "$work/dt$n.json")
python3 - "$prompts" "$d_wall" "$d_cpu" "$d_rss" "$d_score" "$t_wall" "$t_cpu" "$t_rss" "$t_score" "$work/dt$n.json" <<'PY'
import json, sys
p = int(sys.argv[1])
d = dict(wall=float(sys.argv[2]), cpu=float(sys.argv[3]), rss=int(sys.argv[4]), **json.loads(sys.argv[5]))
t = dict(wall=float(sys.argv[6]), cpu=float(sys.argv[7]), rss=int(sys.argv[8]), **json.loads(sys.argv[9]))
stages = json.load(open(sys.argv[10]))["stages"]
print(f"\nsame {p} prompts (one example each):")
for name, r in (("distill dedup", d), ("datatrove minhash", t)):
    print(f"  {name:18} wall {r['wall']:7.1f} s  cpu {r['cpu']:7.1f} s  {p / r['cpu']:9.0f} prompts/cpu-s  rss {r['rss']:5d} MB  "
          f"recall {r['recall']:.4f}  false merges {r['false_merges']:.4f}  number variants merged {r['number_variants_merged']:.4f}")
print("  datatrove stages: " + ", ".join(f"{k} {v['wall_s']} s" for k, v in stages.items()))
print(f"  ratio per core (prompts per CPU-second): {t['cpu'] / d['cpu']:.1f}x; wall: {t['wall'] / d['wall']:.1f}x")
PY
