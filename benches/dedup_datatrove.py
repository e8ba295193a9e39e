"""datatrove's MinHash deduplication (all four stages, local executor, one task each) on the
prompts of `dedup_synth --prompts FILE` ({"id", "text"} lines); prints one JSON line:
wall and CPU seconds per stage and in all, and each prompt id's cluster (-1: none) for scoring.

python benches/dedup_datatrove.py PROMPTS.jsonl WORKDIR
"""
import json
import os
import resource
import sys
import time

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

prompts, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
src_dir = os.path.join(work, "in")
os.makedirs(src_dir, exist_ok=True)
link = os.path.join(src_dir, "prompts.jsonl")
if not os.path.exists(link):
    os.symlink(os.path.abspath(prompts), link)
cfg = MinhashConfig()  # 5-grams, 14 buckets x 8 hashes, the library defaults


def reader():
    return JsonlReader(src_dir, text_key="text", id_key="id", compression=None)


stages = [
    ("signatures", [reader(), MinhashDedupSignature(output_folder=f"{work}/sigs", config=cfg)]),
    ("buckets", [MinhashDedupBuckets(input_folder=f"{work}/sigs", output_folder=f"{work}/buckets", config=cfg)]),
    ("cluster", [MinhashDedupCluster(input_folder=f"{work}/buckets", output_folder=f"{work}/remove", config=cfg, save_cluster_id=True)]),
    (
        "filter",
        [
            reader(),
            MinhashDedupFilter(input_folder=f"{work}/remove", exclusion_writer=JsonlWriter(f"{work}/removed", compression=None), load_cluster_ids=True),
            JsonlWriter(f"{work}/kept", compression=None),
        ],
    ),
]
out = {"stages": {}}
t_all = time.perf_counter()
for name, pipe in stages:
    kw = {"tasks": 1, "workers": 1, "logging_dir": f"{work}/logs/{name}", "skip_completed": False}
    if name == "buckets":
        kw["tasks"] = cfg.num_buckets
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    LocalPipelineExecutor(pipeline=pipe, **kw).run()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) + (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime)
    out["stages"][name] = {"wall_s": round(time.perf_counter() - t, 2), "cpu_s": round(cpu, 2)}
out["wall_s"] = round(time.perf_counter() - t_all, 2)
out["cpu_s"] = round(sum(s["cpu_s"] for s in out["stages"].values()), 2)
clusters = {}
for sub in ("kept", "removed"):
    d = os.path.join(work, sub)
    for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        with open(os.path.join(d, f)) as fh:
            for line in fh:
                r = json.loads(line)
                clusters[r["id"]] = r.get("metadata", {}).get("minhash_cluster_id", -1)
out["clusters"] = clusters
print(json.dumps(out))
