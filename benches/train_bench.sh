#!/usr/bin/env bash
# One training step of a Qwen2.5-0.5B-shaped model, distill vs PyTorch/transformers, same shapes,
# same machine, same run: full fine-tuning and LoRA r16 at 512 and 1024 tokens. Prints the split
# (forward / backward / optimizer), tokens/s and peak RSS of each side (distill's full fine-tuning
# also with every layer checkpointed), then distill / PyTorch per setting. Where the CPU has bf16
# units (AMX, AVX512-BF16), distill's `--bf16` and PyTorch's bf16 autocast run beside f32.
# Needs ~16 GB of RAM.
# Usage: bash benches/train_bench.sh [LAYERS] [STEPS]   (LAYERS=24 is the 0.5B shape)
#   TOKENS="512 1024 2048" adds other sequence lengths (full fine-tuning at 2,048 tokens peaked
#   at 13.3 GB for distill and 16.2 GB for PyTorch, run one after the other).
set -euo pipefail
cd "$(dirname "$0")/.."
layers="${1:-24}"; steps="${2:-2}"
. benches/venv_train.sh
for tokens in ${TOKENS:-512 1024}; do
  for rank in 0 16; do
    record "$bin" --tokens "$tokens" --layers "$layers" --lora "$rank" --steps "$steps"
    if [ "$bf16_units" = 1 ]; then record "$bin" --tokens "$tokens" --layers "$layers" --lora "$rank" --steps "$steps" --bf16; fi
    if [ "$rank" = 0 ]; then  # full fine-tuning with every layer recomputed: the memory floor
      record "$bin" --tokens "$tokens" --layers "$layers" --lora 0 --steps "$steps" --checkpoint
    fi
    record "$venv/bin/python" benches/train_torch.py "$tokens" "$layers" "$rank" "$steps"
    if [ "$torch_bf16" = 1 ]; then record "$venv/bin/python" benches/train_torch.py "$tokens" "$layers" "$rank" "$steps" cpu bf16; fi
  done
done
ratios
