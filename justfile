# Recipes wrap commands that also work without just (see README.md).

# Run the main job on the embedded demo data.
demo:
    cargo run --release -- inspect datasets/demo-samples.jsonl.zst --sample 1

# Run the tests, as CI does.
test:
    cargo test --release

# Benchmarks: figures side by side with the anchors, never timed assertions.
bench: bench-inspect

bench-inspect:
    bash benches/inspect_bench.sh

# Formatting and lints.
lint:
    cargo fmt --check
    cargo clippy --release --all-targets -- -D warnings
