"""transformers' generate on the same model and settings as examples/generate_bench.rs:
greedy, no EOS stop (min_new_tokens = max_new_tokens), float32, CPU, the same prompt ids.
Usage: python generate_bench_torch.py MODEL_DIR BATCH PROMPT_TOKENS NEW_TOKENS"""
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM

path, batch, plen, new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
model.eval()
vocab = model.config.vocab_size
ids = torch.tensor([[((r * 7919 + i * 104729) % (vocab - 100)) + 100 for i in range(plen)] for r in range(batch)])
mask = torch.ones_like(ids)
with torch.no_grad():
    t0 = time.perf_counter()
    out = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=new, min_new_tokens=new,
                         pad_token_id=0)
    secs = time.perf_counter() - t0
tokens = (out.shape[1] - plen) * batch
print(json.dumps({"impl": "transformers", "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "batch": batch, "tokens": tokens, "seconds": round(secs, 3),
                  "tokens_per_s": round(tokens / secs, 1)}))
