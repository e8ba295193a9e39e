#!/usr/bin/env bash
# Optimizer step on a Qwen2.5-0.5B-shaped parameter set (494M f32): distill's fused AdamW vs
# torch.optim.AdamW, same shapes, same machine, same run. Needs ~8 GB of RAM for each side.
# Usage: bash benches/optim_bench.sh [LAYERS] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
layers="${1:-24}"; steps="${2:-3}"
venv="${DISTILL_VENV_DIR:-$HOME/.cache/distill}/venv-train"
cargo build --release --quiet --example bench_optim
"${CARGO_TARGET_DIR:-target}/release/examples/bench_optim" --layers "$layers" --steps "$steps" | tee /tmp/distill-optim-bench.txt
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" && "$venv/bin/pip" install -q torch numpy
fi
"$venv/bin/python" benches/optim_torch.py "$layers" "$steps" | tee -a /tmp/distill-optim-bench.txt
ours=$(grep -o 'clip: [0-9.]*' /tmp/distill-optim-bench.txt | head -1 | cut -d' ' -f2)
theirs=$(grep -o 'clip: [0-9.]*' /tmp/distill-optim-bench.txt | tail -1 | cut -d' ' -f2)
python3 -c "print(f'optimizer step: distill {float(\"$ours\"):.3f} s vs torch {float(\"$theirs\"):.3f} s -> {float(\"$theirs\")/float(\"$ours\"):.2f}x')"
