"""PyTorch side of benches/train_profile.sh: the SmolLM2 LoRA step of smollm2_lora_torch.py under
torch.profiler (steps after the first), ops grouped as the distill side groups its samples.
Prints a table of the share of self CPU time per group, and the top ops.
Usage: python train_profile_torch.py MODEL_DIR CORPUS.jsonl TOKENS STEPS RANK"""
import collections, json, sys, time
import torch
from torch.profiler import profile, ProfilerActivity
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import LoraConfig, get_peft_model

model_dir, corpus, tokens, steps, rank = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.05, target_modules=[
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
model.train()
ids = []
for line in open(corpus):
    ids += tok.apply_chat_template(json.loads(line)["messages"], tokenize=True, return_dict=False)
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)
phase = collections.Counter()


def step(s):
    chunk = torch.tensor(ids[s * tokens:(s + 1) * tokens])[None]
    t0 = time.perf_counter()
    loss = model(input_ids=chunk, labels=chunk).loss
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


step(0)
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for s in range(1, steps):
        f, b, o = step(s)
        phase["forward"] += f
        phase["backward"] += b
        phase["optimizer"] += o
total = sum(phase.values())
print(f"torch phases over {steps - 1} steps: " + ", ".join(f"{k} {v / total:.0%}" for k, v in phase.items())
      + f"; {tokens * (steps - 1) / total:.1f} tok/s")


def group(name):
    n = name.lower()
    if any(k in n for k in ("mm", "matmul", "linear", "addmm", "bmm", "gemm")):
        return "matmul"
    if any(k in n for k in ("cross_entropy", "nll", "log_softmax")):
        return "loss (LM head softmax, CE)"
    if any(k in n for k in ("attention", "softmax", "sdpa", "flash")):
        return "attention"
    if "bernoulli" in n or "dropout" in n:
        return "dropout masks"
    if any(k in n for k in ("copy", "contiguous", "clone", "cat", "empty", "zero", "fill", "to", "view", "reshape", "transpose", "expand")):
        return "copies, allocation, views"
    if any(k in n for k in ("adam", "foreach", "_fused", "norm_", "clip")):
        return "optimizer"
    return "elementwise and other"


events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
all_self = sum(e.self_cpu_time_total for e in events)
groups = collections.Counter()
for e in events:
    groups[group(e.key)] += e.self_cpu_time_total
print("torch self CPU time by group:")
for g, t in groups.most_common():
    print(f"  {g:28s} {t / all_self:6.1%}")
print("torch top ops (self CPU):")
for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]:
    print(f"  {e.key[:40]:40s} {e.self_cpu_time_total / all_self:6.1%}  calls {e.count}")
