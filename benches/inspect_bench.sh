#!/usr/bin/env bash
# Speed and memory of `distill inspect` on generated .jsonl.zst files of ~4 KB records:
# 100k and 200k records, to show that memory does not grow with the file.
# Usage: bash benches/inspect_bench.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
cargo build --release --quiet --example make_samples --bin distill
bin="${CARGO_TARGET_DIR:-target}/release"
for n in 100000 200000; do
  f="$work/samples-$n.jsonl.zst"
  [ -f "$f" ] || "$bin/examples/make_samples" --count "$n" --reasoning-chars 4000 --out "$f"
  /usr/bin/time -f "%e %M %U" -o "$work/time-$n" "$bin/distill" inspect "$f" --json >"$work/stats-$n.json"
  read -r secs kb user < "$work/time-$n"
  records=$(grep -m1 '"records"' "$work/stats-$n.json" | tr -dc 0-9)
  size=$(du -m "$f" | cut -f1)
  raw=$(zstd -dc "$f" 2>/dev/null | wc -c || echo 0)
  echo "inspect: $records records ($((raw / 1048576)) MB of JSON, ${size} MB compressed): ${secs} s wall, ${user} s user, peak RSS $((kb / 1024)) MB"
done
