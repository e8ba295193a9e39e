#!/usr/bin/env bash
# Client-side throughput of `distill collect` vs the Python `openai` AsyncOpenAI client, both
# driving the same zero-latency `distill teacher-sim` at the same concurrency, in one run.
# Reports requests/s and CPU seconds per request of the client process (the simulator's CPU
# is not counted), and the per-core ratio (requests per client CPU-second).
# Usage: bash benches/collect_bench.sh [REQUESTS] [CONCURRENCY]
# Env: DISTILL_VENV_DIR (default ~/.cache/distill) holds the venv with `openai`.
set -euo pipefail
cd "$(dirname "$0")/.."
requests="${1:-4000}"
conc="${2:-64}"
work="$(mktemp -d)"
venv="${DISTILL_VENV_DIR:-$HOME/.cache/distill}/venv-collect-bench"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet openai
fi
cargo build --release --quiet --bin distill
bin="${CARGO_TARGET_DIR:-target}/release/distill"
"$bin" problems --kind math --count "$requests" --out "$work/p.jsonl" 2>/dev/null
"$bin" teacher-sim --port 0 --threads 1 >"$work/sim.out" 2>/dev/null &
sim=$!
trap 'kill $sim 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do [ -s "$work/sim.out" ] && break; sleep 0.1; done
url=$(head -1 "$work/sim.out" | awk '{print $4}')
"$venv/bin/python" benches/collect_bench.py --bin "$bin" --url "$url" --prompts "$work/p.jsonl" \
  --concurrency "$conc" --work "$work"
