"""PyTorch anchor for benches/smollm2_lora_bench.sh: LoRA fine-tuning of the same converted
SmolLM2-135M-Instruct directory (f32, CPU) with transformers + PEFT at the same settings (rank,
alpha, targets, AdamW, clipping), one packed sequence of TOKENS chat-templated samples per step.
Prints tokens/s (median of the steps after the first) and peak RSS. PRECISION bf16: the forward
under torch.autocast(bfloat16), f32 weights and optimizer state (beside `--precision bf16`).
Usage: python smollm2_lora_torch.py MODEL_DIR CORPUS.jsonl TOKENS STEPS RANK [PRECISION]"""
import json, resource, statistics, sys, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import LoraConfig, get_peft_model

model_dir, corpus, tokens, steps, rank = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
precision = sys.argv[6] if len(sys.argv) > 6 else "f32"
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
rates = []
for s in range(steps):
    chunk = torch.tensor(ids[s * tokens:(s + 1) * tokens])[None]
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = model(input_ids=chunk, labels=chunk).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    rates.append(chunk.shape[1] / (time.perf_counter() - t))
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"torch SmolLM2-135M LoRA r={rank} {'bf16-autocast' if precision == 'bf16' else 'f32'}, {tokens} tokens/step: {statistics.median(rates[1:] or rates):.1f} tok/s, "
      f"peak RSS {rss:.0f} MB, torch {torch.__version__}")
