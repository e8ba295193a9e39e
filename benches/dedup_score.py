"""Scores a deduplication against dedup_synth's truth: recall on planted pairs with true word
5-gram Jaccard >= 0.85, merges among pairs with Jaccard <= 0.6 and among number-only variants.

python benches/dedup_score.py TRUTH.json distill OUT_DIR      (reads OUT/rejects/removed.jsonl.zst)
python benches/dedup_score.py TRUTH.json datatrove RESULT.json (the line dedup_datatrove.py printed)
"""
import json
import subprocess
import sys

truth = json.load(open(sys.argv[1]))
kind, path = sys.argv[2], sys.argv[3]
if kind == "distill":
    rep = {}
    text = subprocess.run(["zstd", "-dcq", f"{path}/rejects/removed.jsonl.zst"], capture_output=True, text=True, check=True).stdout
    for line in text.splitlines():
        r = json.loads(line)
        # Every removed example names its cluster's kept prompt (none when contaminated).
        if "cluster" in r:
            rep[r["prompt_id"]] = r["cluster"]

    def merged(a, b):
        return rep.get(a, a) == rep.get(b, b)
else:
    cl = json.load(open(path))["clusters"]

    def merged(a, b):
        x, y = cl.get(a, -1), cl.get(b, -1)
        return x != -1 and x == y

hi = [p for p in truth["pairs"] if p["kind"] != "numbers" and p["jaccard"] >= 0.85]
lo = [p for p in truth["pairs"] if p["kind"] != "numbers" and p["jaccard"] <= 0.6]
num = [p for p in truth["pairs"] if p["kind"] == "numbers"]
res = {
    "recall": sum(merged(p["a"], p["b"]) for p in hi) / max(1, len(hi)),
    "false_merges": sum(merged(p["a"], p["b"]) for p in lo) / max(1, len(lo)),
    "number_variants_merged": sum(merged(p["a"], p["b"]) for p in num) / max(1, len(num)),
    "pairs": [len(hi), len(lo), len(num)],
}
print(json.dumps(res))
