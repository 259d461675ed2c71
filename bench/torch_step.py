"""The benchmark model of train_step_bench in PyTorch: one training step (forward, backward, AdamW)
timed in four configurations, eager and torch.compile, fp32 and bf16 autocast, on the CPU.

Same shapes as meshtrain's benchmark model: 4 blocks, 4 heads, 256 channels, context 256, 4 sequences,
GPT-2's vocabulary padded to 50304 with the LM head tied to the token embedding, learned positions,
GELU (tanh), pre-LayerNorm. Run by bench/torch_compare.sh inside its own virtual environment.
Prints one line per configuration: `torch <config>: <ms> ms/step`.
"""
import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, c, h):
        super().__init__()
        self.h = h
        self.ln1, self.ln2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.fc, self.fc_proj = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.h, c // self.h).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.fc_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self, layers=4, heads=4, c=256, t=256, vocab=50304):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, c), nn.Embedding(t, c)
        self.blocks = nn.ModuleList(Block(c, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(c)

    def forward(self, idx, targets):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for blk in self.blocks:
            x = blk(x)
        logits = self.ln_f(x) @ self.wte.weight.t()  # tied LM head
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))


def time_config(compiled, bf16, steps, warmup):
    torch.manual_seed(0)
    model = Gpt()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=False)
    idx = torch.randint(0, 50257, (4, 256))
    tgt = torch.randint(0, 50257, (4, 256))

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(idx, tgt)
        loss.backward()
        opt.step()
        return loss

    fn = torch.compile(step) if compiled else step
    for _ in range(warmup):  # compilation happens here
        fn()
    times = []
    for _ in range(steps):
        a = time.perf_counter()
        fn()
        times.append(time.perf_counter() - a)
    times.sort()
    return times[len(times) // 2] * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--configs", default="eager-fp32,eager-bf16,compile-fp32,compile-bf16")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads")
    for name in a.configs.split(","):
        mode, prec = name.split("-")
        ms = time_config(mode == "compile", prec == "bf16", a.steps, 3)
        print(f"torch {name}: {ms:.1f} ms/step", flush=True)


if __name__ == "__main__":
    main()
