# Sourced by the training benchmarks (through venv_train.sh, and by smollm2_lora_bench.sh): prints
# the CPU line; sets $bf16_units (AMX or AVX512-BF16: the mixed-precision runs are added beside the
# f32 ones, distill's `--precision bf16` and PyTorch's autocast) and $torch_bf16 (TORCH_BF16=0
# leaves PyTorch's out). `record CMD...` runs a command and keeps its figure lines; `ratios` ends
# the script with distill / PyTorch per setting (benches/train_ratios.py) under the CPU line.
cpu_line="cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1) ($(nproc) cores; flags: $(grep -o -w -E 'avx2|avx512f|avx512_bf16|amx_tile|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' '))"
echo "$cpu_line"
bf16_units=$(grep -q -w -E "amx_bf16|avx512_bf16" /proc/cpuinfo && echo 1 || echo 0)
torch_bf16=$([ "$bf16_units" = 1 ] && [ "${TORCH_BF16:-1}" != 0 ] && echo 1 || echo 0)
ratios_log=$(mktemp)
record() { "$@" | tee -a "$ratios_log"; }
ratios() {
  echo "-- distill / PyTorch, this run ($cpu_line)"
  python3 benches/train_ratios.py "$ratios_log"
  rm -f "$ratios_log"
}
