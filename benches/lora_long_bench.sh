#!/usr/bin/env bash
# Long chain-of-thought sequences: one LoRA r16 (all seven projections) training step of a
# Qwen2.5-0.5B-shaped random model at 1,024 and 2,048 tokens, batch 1 — distill
# (examples/bench_train.rs) beside PyTorch + transformers + PEFT (benches/train_torch.py), same
# shapes, same machine, same run: seconds/step, tokens/s, peak RSS of each; distill also with
# per-layer activation checkpointing of all layers and of half of them (--checkpoint-layers [N]);
# then distill / PyTorch per setting.
# Needs ~15 GB of RAM.
# Usage: bash benches/lora_long_bench.sh [LAYERS] [STEPS]   (LAYERS=24 is the 0.5B shape)
set -euo pipefail
cd "$(dirname "$0")/.."
layers="${1:-24}"; steps="${2:-2}"
. benches/venv_train.sh
for tokens in 1024 2048; do
  record "$bin" --tokens "$tokens" --layers "$layers" --lora 16 --steps "$steps"
  record "$bin" --tokens "$tokens" --layers "$layers" --lora 16 --steps "$steps" --checkpoint
  record "$bin" --tokens "$tokens" --layers "$layers" --lora 16 --steps "$steps" --checkpoint $((layers / 2))
  record "$venv/bin/python" benches/train_torch.py "$tokens" "$layers" 16 "$steps"
done
ratios
