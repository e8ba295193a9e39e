#!/usr/bin/env bash
# Runs every benchmark and writes benches/RESULTS.md: each bench's own output (distill beside
# its anchor, measured in the same run, with ratios) under a heading, with the machine and the
# load average at its start. Each section is kept in benches/results/NAME.md, so running some
# benches replaces their sections and keeps the others. Benchmarks are never timed assertions; machines differ, so the
# file says which machine it describes.
# Usage: bash benches/run_all.sh [BENCH ...]   (default: all; names as in the justfile, e.g. filter dedup)
# A bench's own arguments: BENCH_ARGS_<name> (dashes as underscores), shell-quoted, e.g.
#   BENCH_ARGS_dedup='"200000 400000 800000" 40000' bash benches/run_all.sh dedup
set -uo pipefail
cd "$(dirname "$0")/.."
all=(inspect math collect optim train lora-long code filter dedup generate smollm2)
want=("$@"); [ ${#want[@]} -eq 0 ] && want=("${all[@]}")
script_of() {
  case "$1" in
    inspect) echo benches/inspect_bench.sh ;; math) echo benches/math_verify_bench.sh ;;
    collect) echo benches/collect_bench.sh ;; optim) echo benches/optim_bench.sh ;;
    train) echo benches/train_bench.sh ;; lora-long) echo benches/lora_long_bench.sh ;;
    code) echo benches/code_verify_bench.sh ;; filter) echo benches/filter_bench.sh ;;
    dedup) echo benches/dedup_bench.sh ;; generate) echo benches/generate_bench.sh ;;
    smollm2) echo benches/smollm2_lora_bench.sh ;; *) return 1 ;;
  esac
}
out=benches/RESULTS.md
mkdir -p benches/results
machine="$(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs, flags: $(grep -o -w -E 'avx512f|avx512_bf16|avx2|amx_tile|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' '), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM"
for b in "${want[@]}"; do
  s=$(script_of "$b") || { echo "unknown bench '$b'; known: ${all[*]}" >&2; exit 2; }
  echo "== $b ($s)" >&2
  var="BENCH_ARGS_${b//-/_}"
  eval "args=(${!var:-})"
  tmp=benches/results/.$b.md.tmp
  {
    echo "## $b"
    echo
    echo "\`bash $s ${!var:-}\` on $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown),"
    echo "$machine, load average at start $(cut -d' ' -f1-3 /proc/loadavg):"
    echo
    echo '```'
  } > "$tmp"
  start=$(date +%s)
  bash "$s" "${args[@]}" 2>&1 | tee -a "$tmp" >&2
  rc=${PIPESTATUS[0]}
  {
    echo '```'
    echo
    echo "Exit status $rc, $(( $(date +%s) - start )) s."
    echo
  } >> "$tmp"
  mv "$tmp" "benches/results/$b.md"
done
{
  echo "# Benchmark results"
  echo
  echo "Assembled by \`bash benches/run_all.sh\` (\`just bench\`) from benches/results/*.md; each section"
  echo "says when, on which commit and machine it ran. Figures are medians only where a bench says so."
  echo
  for b in "${all[@]}"; do
    [ -f "benches/results/$b.md" ] && cat "benches/results/$b.md"
  done
} > "$out"
echo "wrote $out" >&2
