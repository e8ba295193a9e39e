#!/usr/bin/env bash
# Code verifier throughput and sandbox overhead, beside Python anchors run in the same session.
#
#  1. Programs verified per second for N short HumanEval-like problems (assert tests,
#     check(candidate) with 4 asserts, correct solutions), `distill verify --code-workers W`,
#     vs. the human-eval style anchor: one forked process per problem running
#     program + test + check(entry_point) in-process (no sandbox), W at a time.
#  2. Per-run sandbox overhead: N stdio runs of an empty program, one at a time, vs. N bare
#     `python3 -I -B -c pass` with the same interpreter.
#
# Usage: bash benches/code_verify_bench.sh [N] [WORKERS]   (default 200 problems, 2 workers)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-200}"
workers="${2:-2}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cargo build --release --quiet --bin distill
bin="${CARGO_TARGET_DIR:-target}/release/distill"

# The interpreter the verifier picks (the first python3 every uid can run).
py="$(python3 - <<'EOF'
import os, shutil, subprocess, sys
cands = []
for d in os.environ.get("PATH", "").split(os.pathsep):
    p = os.path.join(d, "python3")
    if os.path.isfile(p):
        with open(p, "rb") as f:
            script = f.read(2) == b"#!"
        if script:
            p = subprocess.run([p, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True).stdout.strip()
        cands.append(os.path.realpath(p))
cands.append(os.path.realpath("/usr/bin/python3"))
def world(p):
    try:
        if os.stat(p).st_mode & 0o005 != 0o005:
            return False
        q = os.path.dirname(p)
        while q != "/":
            if not os.stat(q).st_mode & 0o001:
                return False
            q = os.path.dirname(q)
        return True
    except OSError:
        return False
cands.sort(key=lambda p: not world(p))
print(cands[0])
EOF
)"

python3 - "$work" "$n" <<'EOF'
import json, random, sys
work, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(0)
ops = [
    ("add_{i}", "def add_{i}(a, b):\n    return a + b + {k}\n", lambda a, b, k: a + b + k),
    ("mul_{i}", "def mul_{i}(a, b):\n    return a * b - {k}\n", lambda a, b, k: a * b - k),
    ("mx_{i}", "def mx_{i}(a, b):\n    return max(a, b) + {k}\n", lambda a, b, k: max(a, b) + k),
]
with open(f"{work}/humaneval_like.jsonl", "w") as f, open(f"{work}/anchor.jsonl", "w") as g:
    for i in range(n):
        name, src, fn = ops[i % len(ops)]
        k = rng.randint(0, 9)
        name, src = name.format(i=i), src.format(i=i, k=k)
        asserts = []
        for _ in range(4):
            a, b = rng.randint(-50, 50), rng.randint(-50, 50)
            asserts.append(f"    assert candidate({a}, {b}) == {fn(a, b, k)}\n")
        test = "def check(candidate):\n" + "".join(asserts)
        tests = {"kind": "assert", "language": "python", "entry_point": name, "test": test}
        content = f"Here is the function.\n```python\n{src}```\n"
        f.write(json.dumps({"id": f"p{i}/0", "task": "code", "tests": tests, "reasoning": "...", "content": content}) + "\n")
        g.write(json.dumps({"program": src, "test": test, "entry_point": name}) + "\n")
with open(f"{work}/empty.jsonl", "w") as f:
    for i in range(n):
        tests = {"kind": "stdio", "language": "python", "cases": [{"input": "", "output": ""}]}
        f.write(json.dumps({"id": f"e{i}/0", "task": "code", "tests": tests, "content": "```python\npass\n```"}) + "\n")
EOF

cat > "$work/anchor.py" <<'EOF'
# human-eval's execution model: per problem, a forked process exec()s program + test +
# check(entry_point) in-process with a timeout; a thread pool keeps WORKERS of them running.
import json, multiprocessing, sys, time
from concurrent.futures import ThreadPoolExecutor

def unsafe_execute(src, result):
    try:
        exec(src, {})
        result.append("passed")
    except BaseException as e:
        result.append("failed: %r" % e)

def check(p):
    src = p["program"] + "\n" + p["test"] + "\n" + "check(%s)\n" % p["entry_point"]
    q = multiprocessing.Queue()
    def target(src=src, q=q):
        out = []
        unsafe_execute(src, out)
        q.put(out[0])
    proc = multiprocessing.Process(target=target)
    proc.start()
    proc.join(timeout=5)
    if proc.is_alive():
        proc.kill()
        return "timed out"
    return q.get() if not q.empty() else "failed"

if __name__ == "__main__":
    multiprocessing.set_start_method("fork")
    problems = [json.loads(l) for l in open(sys.argv[1])]
    t = time.perf_counter()
    with ThreadPoolExecutor(int(sys.argv[2])) as ex:
        res = list(ex.map(check, problems))
    dt = time.perf_counter() - t
    print("%d %d %.3f" % (len(res), sum(r == "passed" for r in res), dt))
EOF

now() { date +%s.%N; }
echo "code verifier benchmark: $n problems, $workers workers, $(nproc) cores, interpreter $py"

# Wall time depends on what else runs on the machine; CPU time (user + sys of the whole
# process tree) does not, so both are printed.
/usr/bin/time -f "%e %U %S" -o "$work/t-ours" \
  "$bin" verify "$work/humaneval_like.jsonl" --out "$work/out.jsonl" --summary --code-workers "$workers" \
  > "$work/summary.txt" 2> "$work/stderr.txt"
read -r ours ou os < "$work/t-ours"
passed=$(grep -c '"pass":true' "$work/out.jsonl" || true)
iso=$(grep -o '"isolation":"[a-z]*"' "$work/out.jsonl" | sort | uniq -c | tr -s ' ' | tr '\n' ' ')
/usr/bin/time -f "%e %U %S" -o "$work/t-anchor" "$py" "$work/anchor.py" "$work/anchor.jsonl" "$workers" > "$work/anchor.out"
read -r an ap adt < "$work/anchor.out"
read -r _ au as < "$work/t-anchor"
cpu_ours=$(echo "($ou + $os) * 1000 / $n" | bc -l)
cpu_anchor=$(echo "($au + $as) * 1000 / $an" | bc -l)
printf "assert problems: distill verify   %6.1f programs/s wall (%d/%d passed, %.2f s), %.1f ms CPU/program; isolation:%s\n" \
  "$(echo "$n / $ours" | bc -l)" "$passed" "$n" "$ours" "$cpu_ours" "$iso"
printf "assert problems: human-eval style %6.1f programs/s wall (%d/%d passed, %.2f s), %.1f ms CPU/program; no sandbox\n" \
  "$(echo "$an / $adt" | bc -l)" "$ap" "$an" "$adt" "$cpu_anchor"
printf "ratio ours/anchor: wall throughput %.2f, CPU per program %.2f; CPU-bound estimate on %d idle cores: %.0f programs/s\n" \
  "$(echo "($n / $ours) / ($an / $adt)" | bc -l)" "$(echo "$cpu_ours / $cpu_anchor" | bc -l)" "$(nproc)" \
  "$(echo "$(nproc) * 1000 / $cpu_ours" | bc -l)"

t0=$(now)
"$bin" verify "$work/empty.jsonl" --out "$work/out-empty.jsonl" --code-workers 1 2> /dev/null
t1=$(now)
epass=$(grep -c '"pass":true' "$work/out-empty.jsonl" || true)
t2=$(now)
for _ in $(seq "$n"); do "$py" -I -B -c pass; done
t3=$(now)
sb=$(echo "($t1 - $t0) * 1000 / $n" | bc -l)
bare=$(echo "($t3 - $t2) * 1000 / $n" | bc -l)
printf "one run, sequential: sandboxed %.1f ms (%d/%d passed), bare python3 -c pass %.1f ms: overhead %.1f ms per run\n" \
  "$sb" "$epass" "$n" "$bare" "$(echo "$sb - $bare" | bc -l)"
