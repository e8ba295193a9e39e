#!/usr/bin/env bash
# Long chain-of-thought sequences: one LoRA r16 (all seven projections) training step of a
# Qwen2.5-0.5B-shaped random model at 1,024 and 2,048 tokens, batch 1 — distill
# (examples/bench_train.rs) beside PyTorch + transformers + PEFT (benches/train_torch.py), same
# shapes, same machine, same run: seconds/step, tokens/s, peak RSS of each. Needs ~12 GB of RAM.
# Usage: bash benches/lora_long_bench.sh [LAYERS] [STEPS]   (LAYERS=24 is the 0.5B shape)
set -euo pipefail
cd "$(dirname "$0")/.."
layers="${1:-24}"; steps="${2:-2}"
venv="${DISTILL_VENV_DIR:-$HOME/.cache/distill}/venv-train"
cargo build --release --quiet --example bench_train
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
"$venv/bin/python" -c "import torch, transformers, peft" 2>/dev/null || "$venv/bin/pip" install -q torch transformers peft
bin="${CARGO_TARGET_DIR:-target}/release/examples/bench_train"
for tokens in 1024 2048; do
  "$bin" --tokens "$tokens" --layers "$layers" --lora 16 --steps "$steps"
  "$venv/bin/python" benches/train_torch.py "$tokens" "$layers" 16 "$steps"
done
