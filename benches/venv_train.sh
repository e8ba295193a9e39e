# Sourced by the training benchmarks: builds examples/bench_train and makes the PyTorch venv
# (torch, transformers, peft) at $venv; sets $bin (DISTILL_BENCH_BIN: a binary to use instead).
venv="${DISTILL_VENV_DIR:-$HOME/.cache/distill}/venv-train"
cargo build --release --quiet --example bench_train
if [ ! -x "$venv/bin/python" ]; then python3 -m venv "$venv"; fi
"$venv/bin/python" -c "import torch, transformers, peft" 2>/dev/null || "$venv/bin/pip" install -q torch transformers peft
bin="${DISTILL_BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release/examples/bench_train}"
. benches/train_common.sh
