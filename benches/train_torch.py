"""PyTorch anchor for examples/bench_train.rs: one training step of a random Qwen2.5-0.5B-shaped
Qwen2ForCausalLM (transformers, float32, CPU) on one sequence of N tokens, loss on the last 3/4:
forward, backward and AdamW (+ clip_grad_norm_) timed separately; peak RSS.
PRECISION bf16: the forward under torch.autocast(bfloat16) with f32 weights and optimizer state,
PyTorch's own mixed precision beside distill's `--precision bf16`.
Usage: python benches/train_torch.py TOKENS LAYERS LORA_RANK STEPS [DEVICE] [PRECISION]
       (DEVICE: cpu or cuda; PRECISION: f32 or bf16)"""
import resource, sys, time
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

tokens, layers, rank, steps = (int(a) for a in (sys.argv[1:5] + ["512", "24", "0", "2"][len(sys.argv[1:5]):]))
device = sys.argv[5] if len(sys.argv) > 5 else "cpu"
bf16 = len(sys.argv) > 6 and sys.argv[6] == "bf16"
sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
torch.manual_seed(0)
cfg = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=layers, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6,
                  rope_theta=1e6, tie_word_embeddings=True, use_sliding_window=False)
model = Qwen2ForCausalLM(cfg).float().to(device)
if rank > 0:
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
model.train()
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01)
ids = (torch.arange(tokens) * 7919) % 151000 + 10
labels = ids.clone()
labels[: tokens // 4] = -100
ids, labels = ids[None].to(device), labels[None].to(device)
for _ in range(steps):
    sync()
    t0 = time.perf_counter()
    with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=ids, labels=labels).loss
    loss.item()
    t1 = time.perf_counter()
    loss.backward()
    sync()
    t2 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync()
    t3 = time.perf_counter()
f, b, o = t1 - t0, t2 - t1, t3 - t2
total = f + b + o
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
kind = ("LoRA" if rank else "full") + (" bf16-autocast" if bf16 else "")
if device.startswith("cuda"):
    kind += f" {device} (peak allocated {torch.cuda.max_memory_allocated() / 2**20:.0f} MB)"
print(f"torch {kind} r={rank} {tokens} tokens, {layers} layers, {sum(p.numel() for p in params) / 1e6:.1f}M trainable: "
      f"{total:.2f} s/step (forward {f:.2f}, backward {b:.2f}, optimizer {o:.3f} = {100 * o / total:.1f}%), "
      f"{tokens / total:.1f} tok/s, peak RSS {rss:.0f} MB, torch {torch.__version__}")
