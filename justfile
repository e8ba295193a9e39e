# Recipes wrap commands that also work without just (see README.md).

# The whole loop offline: generated problems, in-process teacher-sim, collect, filter, corpus,
# a tiny student with its own tokenizer, held-out scores before/after, report (runs/demo/).
demo:
    cargo run --release -- run recipes/demo.toml

# Any recipe (e.g. just run recipes/smollm2-arith.toml); a second run skips finished stages.
run RECIPE *ARGS:
    cargo run --release -- run {{RECIPE}} {{ARGS}}

# Inspect the embedded canned teacher traces.
inspect-demo:
    cargo run --release -- inspect datasets/demo-samples.jsonl.zst --sample 1

# Run the tests, as CI does.
test:
    cargo test --release

# Benchmarks: figures side by side with the anchors, never timed assertions. Runs every bench
# (hours on 2 cores; `just bench filter dedup` for some) and writes benches/RESULTS.md.
bench *BENCHES:
    bash benches/run_all.sh {{BENCHES}}

bench-inspect:
    bash benches/inspect_bench.sh

# Filter: MB/s, samples/s, per-check time, peak RSS at 25k/50k/100k ~20 KB traces, vs datatrove Gopher + fastText LID.
bench-filter:
    bash benches/filter_bench.sh

# Formatting and lints.
lint:
    cargo fmt --check
    cargo clippy --release --all-targets -- -D warnings

# Math verifier: throughput against Python Math-Verify (creates a venv; PAIRS=N to resize).
bench-math:
    bash benches/math_verify_bench.sh

# Math verifier: agreement with Math-Verify's own test cases (file exported beside the repo).
conformance-math FILE="../shared/conformance/math_verify_cases.jsonl":
    cargo run --release --example math_conformance -- {{FILE}}

# Collect client: requests/s and CPU per request against Python AsyncOpenAI (creates a venv).
bench-collect:
    bash benches/collect_bench.sh

# Optimizer step on a 0.5B shape: distill's fused AdamW vs torch.optim.AdamW.
bench-optim:
    bash benches/optim_bench.sh

# Training step on a 0.5B shape (full and LoRA, 512/1024 tokens): distill vs PyTorch/transformers.
bench-train:
    bash benches/train_bench.sh

# LoRA r16 step at 1,024 and 2,048 tokens (long chain-of-thought), distill vs PyTorch+PEFT.
bench-lora-long:
    bash benches/lora_long_bench.sh

# Generation tokens/s of SmolLM2-135M (batch 1 and 8, 128-token prompts, 256 new tokens): distill vs transformers' generate.
bench-generate:
    bash benches/generate_bench.sh

# LoRA fine-tuning of SmolLM2-135M-Instruct (from its GGUF): distill vs transformers + PEFT.
bench-smollm2:
    bash benches/smollm2_lora_bench.sh

# Where a SmolLM2 LoRA step spends its time: distill under perf beside PyTorch's profiler (needs perf).
profile-train TOKENS="512" STEPS="4":
    bash benches/train_profile.sh {{TOKENS}} {{STEPS}}

# Code verifier: programs/s and per-run sandbox overhead vs human-eval-style execution and bare python3.
bench-code N="200" WORKERS="2":
    bash benches/code_verify_bench.sh {{N}} {{WORKERS}}

# A build with the CUDA backend (toolkit assembled from PyPI wheels when no system one; CAP = compute capability).
build-cuda DIR="$HOME/.cache/distill/cuda13" CAP="90":
    test -x {{DIR}}/bin/nvcc || bash scripts/cuda-toolkit.sh {{DIR}} {{CAP}}
    . {{DIR}}/env.sh && cargo build --release --features cuda

# Dedup: 200k/400k/800k generated examples (wall, examples/s, RSS) and datatrove's MinHash on the same prompts (creates a venv).
bench-dedup SIZES="200000 400000 800000" DATATROVE="200000":
    bash benches/dedup_bench.sh "{{SIZES}}" {{DATATROVE}}
