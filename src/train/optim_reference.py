"""Prints the reference numbers of optim.rs's `matches_torch_adamw` test.

Run once with torch installed (python3 src/train/optim_reference.py); the printed array is
pasted into the test. torch.optim.AdamW, CPU, float32, three steps with changing lr.
"""
import torch

w = torch.nn.Parameter(torch.tensor([[0.1, -0.2], [0.3, -0.4]], dtype=torch.float32))
opt = torch.optim.AdamW([w], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, foreach=False)
grads = [[0.5, -0.25, 0.125, 2.0], [-0.3, 0.1, 0.2, 1.5], [0.05, -0.6, 0.4, -1.0]]
for g, lr in zip(grads, [1e-2, 5e-3, 2e-2]):
    for group in opt.param_groups:
        group["lr"] = lr
    w.grad = torch.tensor(g, dtype=torch.float32).reshape(2, 2)
    opt.step()
print("[" + ", ".join(repr(float(x)) for x in w.detach().flatten().tolist()) + "]")
