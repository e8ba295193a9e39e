# Sourced by the training benchmarks: builds examples/bench_train and makes the PyTorch venv
# (torch, transformers, peft) at $venv; sets $bin (DISTILL_BENCH_BIN: a binary to use instead).
venv="${DISTILL_VENV_DIR:-$HOME/.cache/distill}/venv-train"
cargo build --release --quiet --example bench_train
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
"$venv/bin/python" -c "import torch, transformers, peft" 2>/dev/null || "$venv/bin/pip" install -q torch transformers peft
bin="${DISTILL_BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release/examples/bench_train}"
cpu_line="cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1) ($(nproc) cores; flags: $(grep -o -w -E 'avx2|avx512f|avx512_bf16|amx_tile|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' '))"
echo "$cpu_line"
# bf16 units (AMX or AVX512-BF16): the mixed-precision runs are added beside the f32 ones, distill's
# `--precision bf16` and PyTorch's autocast (TORCH_BF16=0 leaves PyTorch's out)
bf16_units=$(grep -q -w -E "amx_bf16|avx512_bf16" /proc/cpuinfo && echo 1 || echo 0)
torch_bf16=$([ "$bf16_units" = 1 ] && [ "${TORCH_BF16:-1}" != 0 ] && echo 1 || echo 0)
# Each figure line is kept, and the script ends with distill / PyTorch per setting
# (benches/train_ratios.py) under the CPU line.
ratios_log=$(mktemp)
record() { "$@" | tee -a "$ratios_log"; }
ratios() {
  echo "-- distill / PyTorch, this run ($cpu_line)"
  python3 benches/train_ratios.py "$ratios_log"
  rm -f "$ratios_log"
}
