#!/usr/bin/env bash
# One training step of a Qwen2.5-0.5B-shaped model, distill vs PyTorch/transformers, same shapes,
# same machine, same run: full fine-tuning and LoRA r16 at 512 and 1024 tokens. Prints the split
# (forward / backward / optimizer), tokens/s and peak RSS of each side. Needs ~14 GB of RAM.
# Usage: bash benches/train_bench.sh [LAYERS] [STEPS]   (LAYERS=24 is the 0.5B shape)
set -euo pipefail
cd "$(dirname "$0")/.."
layers="${1:-24}"; steps="${2:-2}"
venv="${DISTILL_VENV_DIR:-$HOME/.cache/distill}/venv-train"
cargo build --release --quiet --example bench_train
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
"$venv/bin/python" -c "import torch, transformers, peft" 2>/dev/null || "$venv/bin/pip" install -q torch transformers peft
bin="${CARGO_TARGET_DIR:-target}/release/examples/bench_train"
for tokens in 512 1024; do
  for rank in 0 16; do
    "$bin" --tokens "$tokens" --layers "$layers" --lora "$rank" --steps "$steps"
    "$venv/bin/python" benches/train_torch.py "$tokens" "$layers" "$rank" "$steps"
  done
done
