"""Math-Verify side of benches/math_verify_bench.sh: verify(parse(gold), parse(content)) for
every record of a JSONL file, single process; prints timings and writes the verdicts as JSON
lines (id, pass) to the file named by the second argument, for agreement with distill.

Bare gold answers are wrapped in `$…$` first: Math-Verify only reads LaTeX inside math
delimiters (a bare `\frac{3}{4}` gold parses to nothing), and this is how it is fed gold
answers in practice."""
import json
import sys
import time

from math_verify import parse, verify

path, out = sys.argv[1], sys.argv[2]
records = [json.loads(line) for line in open(path)]
t0 = time.perf_counter()
c0 = time.process_time()
results = []
for rec in records:
    try:
        ok = bool(verify(parse("$" + rec["answer"] + "$"), parse(rec["content"])))
    except Exception:
        ok = False
    results.append((rec["id"], ok))
wall = time.perf_counter() - t0
cpu = time.process_time() - c0
with open(out, "w") as f:
    for i, ok in results:
        f.write(json.dumps({"id": i, "pass": ok}) + "\n")
print(json.dumps({"pairs": len(records), "wall_s": wall, "cpu_s": cpu, "pass": sum(ok for _, ok in results)}))
