"""PyTorch anchor for examples/bench_optim.rs: torch.optim.AdamW (+ clip_grad_norm_) over the
same Qwen2.5-0.5B parameter shapes, CPU, float32. Prints seconds per step (median)."""
import sys, time
import torch

layers = int(sys.argv[1]) if len(sys.argv) > 1 else 24
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
h, i, kv, v = 896, 4864, 128, 151936
shapes = [(v, h)]
for _ in range(layers):
    shapes += [(h, h), (h,), (kv, h), (kv,), (kv, h), (kv,), (h, h), (i, h), (i, h), (h, i), (h,), (h,)]
shapes.append((h,))
params = [torch.nn.Parameter(torch.full(s, 0.02)) for s in shapes]
for p in params:
    p.grad = torch.full(p.shape, 1e-3)
decay = [p for p in params if p.dim() >= 2]
no_decay = [p for p in params if p.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-5)
print(f"params: {sum(p.numel() for p in params) / 1e6:.1f}M, threads: {torch.get_num_threads()}, torch {torch.__version__}")
times = []
for _ in range(steps):
    t = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    times.append(time.perf_counter() - t)
times.sort()
print(f"torch AdamW + clip: {times[len(times) // 2]:.3f} s/step")
