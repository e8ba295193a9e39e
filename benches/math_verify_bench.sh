#!/usr/bin/env bash
# Throughput of `distill verify` (math) against Python Math-Verify on the same pairs:
# N (default 10,000) generated records, each a long R1-style response (2-5 KB of thinking,
# then a summary ending in a boxed answer) against a gold answer of one of 12 families
# (integers, fractions, radicals, pi, tuples, intervals, polynomials, equations, choices,
# decimals, sets, percents); two thirds equivalent in another form, one third wrong.
# The Python side runs verify(parse(gold), parse(content)) in one process, in a venv this
# script creates (${DISTILL_VENV_DIR:-~/.cache/distill}/venv-mathverify, pip install math-verify).
# Prints pairs/s, pairs per CPU-second (per core) for both, the ratios, and how often the two
# verifiers agree.
# Usage: bash benches/math_verify_bench.sh [WORKDIR]   (PAIRS=N to change the count)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${PAIRS:-10000}"
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
cargo build --release --quiet --example make_math_pairs --bin distill
bin="${CARGO_TARGET_DIR:-target}/release"
"$bin/examples/make_math_pairs" --count "$n" --seed 7 --out "$work/pairs.jsonl"
venv="${DISTILL_VENV_DIR:-$HOME/.cache/distill}/venv-mathverify"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import math_verify" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet math-verify
fi
echo "pairs: $n ($(du -m "$work/pairs.jsonl" | cut -f1) MB of JSONL), cores: $(nproc)"
# distill: 5 runs (one run of 10k pairs is too short for the timer's resolution).
: >"$work/time-distill"
for _ in 1 2 3 4 5; do
  /usr/bin/time -f "%e %U %S" -a -o "$work/time-distill" \
    "$bin/distill" verify "$work/pairs.jsonl" --out "$work/distill.jsonl" --summary >"$work/summary-distill.txt"
done
"$venv/bin/python" benches/math_verify_bench.py "$work/pairs.jsonl" "$work/mathverify.jsonl" >"$work/mathverify.json"
python3 - "$n" "$work" <<'PY'
import json, sys
n, work = int(sys.argv[1]), sys.argv[2]
runs = [list(map(float, l.split())) for l in open(f"{work}/time-distill") if l.strip()]
wall = sum(r[0] for r in runs) / len(runs)
cpu = sum(r[1] + r[2] for r in runs) / len(runs)
mv = json.load(open(f"{work}/mathverify.json"))
ours = {}
for line in open(f"{work}/distill.jsonl"):
    r = json.loads(line)
    ours[r["id"]] = r["verdict"]["pass"]
theirs = {json.loads(l)["id"]: json.loads(l)["pass"] for l in open(f"{work}/mathverify.jsonl")}
agree = sum(ours[i] == theirs.get(i) for i in ours)
r_wall, r_cpu = n / wall, n / max(cpu, 1e-9)
p_wall, p_cpu = n / mv["wall_s"], n / max(mv["cpu_s"], 1e-9)
print(f"distill verify : {wall:8.3f} s wall, {cpu:8.3f} s CPU -> {r_wall:10.0f} pairs/s, {r_cpu:10.0f} pairs/s per core; pass {sum(ours.values())}")
print(f"Math-Verify    : {mv['wall_s']:8.2f} s wall, {mv['cpu_s']:8.2f} s CPU -> {p_wall:10.0f} pairs/s, {p_cpu:10.0f} pairs/s per core; pass {mv['pass']}")
print(f"ratio          : {r_wall / p_wall:.0f}x pairs/s, {r_cpu / p_cpu:.0f}x per core (goal >= 100x per core)")
print(f"agreement      : {agree}/{len(ours)} verdicts equal ({100 * agree / len(ours):.1f}%)")
PY
cat "$work/summary-distill.txt"
