#!/usr/bin/env python3
"""PyTorch reference of `memsinks bench train`: the same model and training step, the same JSON.

Model: Llama-style decoder (RMSNorm, RoPE "rotate half", causal SDPA, SwiGLU MLP whose hidden units
are multiplied by the MemSinks mask, untied head, no biases), fp32. Step: forward, mean token
cross-entropy, backward, clip_grad_norm_(1.0), AdamW(beta 0.9/0.95, weight decay 0.1). Data: uniform
random tokens, one random sequence ID per row, masks from the reference hash computed on the device.

    python torch_reference.py --preset ts-cpu --method memsinks --steps 10 [--threads 2] [--device cpu] [--compile]

--compile runs the model's forward through torch.compile (inductor: generated C++ for the CPU,
built with the system compiler); backward, AdamW and clipping stay as in eager mode. Compilation
happens in the warm-up steps, which are not timed; their time, compilation included, is reported
as `warmup_s`.
"""
import argparse
import json
import math
import resource
import time

import torch
import torch.nn.functional as F

PRESETS = {
    # name: (vocab, d_model, layers, heads, kv_heads, hidden, context, rope_theta, tied)
    "tiny": (64, 32, 2, 4, 2, 64, 64, 1e4, False),
    "ts-cpu": (4096, 256, 4, 4, 4, 1024, 256, 1e4, False),
    # The model ts-quick trains (`memsinks bench train --config experiments/ts-quick.ron`): ts-cpu
    # at d 128, I 512, with its tokenizer's 1,024 tokens, at its context of 128.
    "ts-quick": (1024, 128, 4, 4, 4, 512, 128, 1e4, False),
    "ts-paper": (50257, 1024, 24, 16, 16, 1904, 512, 1e4, False),
    "smollm2-360m": (49152, 960, 32, 15, 5, 2560, 2048, 1e5, True),
    "smollm2-1.7b": (49152, 2048, 24, 32, 32, 8192, 2048, 1.3e5, True),
}
A, M, BASE = 1588635695, 4294967291, 65536


def reference_powers(n):
    """pow_j = rem_euclid(wrapping_pow(A, j), M) with int64 wrapping, as memsinks-model computes it."""
    out, acc = [], 1
    for _ in range(n):
        signed = acc - (1 << 64) if acc >= (1 << 63) else acc
        out.append(signed % M)
        acc = (acc * A) % (1 << 64)
    return out


class RMSNorm(torch.nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Block(torch.nn.Module):
    def __init__(self, d, heads, kv_heads, hidden):
        super().__init__()
        hd = d // heads
        self.heads, self.kv_heads, self.hd = heads, kv_heads, hd
        self.attn_norm, self.mlp_norm = RMSNorm(d), RMSNorm(d)
        self.q = torch.nn.Linear(d, heads * hd, bias=False)
        self.k = torch.nn.Linear(d, kv_heads * hd, bias=False)
        self.v = torch.nn.Linear(d, kv_heads * hd, bias=False)
        self.o = torch.nn.Linear(heads * hd, d, bias=False)
        self.gate_proj = torch.nn.Linear(d, hidden, bias=False)
        self.up_proj = torch.nn.Linear(d, hidden, bias=False)
        self.down_proj = torch.nn.Linear(hidden, d, bias=False)

    def forward(self, x, cos, sin, mask):
        b, t, d = x.shape
        h = self.attn_norm(x)
        q = self.q(h).view(b, t, self.heads, self.hd).transpose(1, 2)
        k = self.k(h).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
        v = self.v(h).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        groups = self.heads // self.kv_heads
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(att.transpose(1, 2).reshape(b, t, d))
        h = self.mlp_norm(x)
        hidden = F.silu(self.gate_proj(h)) * self.up_proj(h)
        if mask is not None:
            hidden = hidden * mask
        return x + self.down_proj(hidden)


class Model(torch.nn.Module):
    def __init__(self, vocab, d, layers, heads, kv_heads, hidden, context, theta, tied):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, d)
        self.blocks = torch.nn.ModuleList(Block(d, heads, kv_heads, hidden) for _ in range(layers))
        self.norm = RMSNorm(d)
        self.head = None if tied else torch.nn.Linear(d, vocab, bias=False)
        hd = d // heads
        inv = theta ** (-torch.arange(0, hd // 2, dtype=torch.float64) * 2 / hd)
        ang = torch.arange(context, dtype=torch.float64)[:, None] * inv[None, :]
        ang = torch.cat((ang, ang), dim=-1)
        self.register_buffer("cos", ang.cos().float(), persistent=False)
        self.register_buffer("sin", ang.sin().float(), persistent=False)
        for p in self.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=0.02)

    def forward(self, tokens, mask):
        t = tokens.shape[1]
        cos, sin = self.cos[:t], self.sin[:t]
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, cos, sin, mask)
        x = self.norm(x)
        return self.head(x) if self.head is not None else x @ self.embed.weight.t()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="ts-cpu", choices=sorted(PRESETS))
    ap.add_argument("--method", default="memsinks", choices=["memsinks", "standard"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model's forward")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    vocab, d, layers, heads, kv, hidden, context, theta, tied = PRESETS[args.preset]
    seq = args.seq or context
    dev = torch.device(args.device)
    model = Model(vocab, d, layers, heads, kv, hidden, context, theta, tied).to(dev)
    params = sum(p.numel() for p in model.parameters())
    forward = torch.compile(model) if args.compile else model
    decay = [p for p in model.parameters() if p.dim() == 2]
    rest = [p for p in model.parameters() if p.dim() != 2]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=1e-4, betas=(0.9, 0.95), eps=1e-8,
    )
    autocast = args.dtype != "float32"
    amp_dtype = getattr(torch, args.dtype)

    num_general = math.floor(hidden * (1.0 if args.method == "standard" else 0.7))
    num_sink = hidden - num_general
    pows = torch.tensor(reference_powers(num_sink), dtype=torch.int64, device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    step_ms, losses, mask_s, warmup_s = [], [], 0.0, 0.0
    for i in range(args.warmup + args.steps):
        tokens = torch.randint(0, vocab, (args.batch, seq + 1), device=dev)
        ids = torch.randint(1, 2**62, (args.batch,), dtype=torch.int64, device=dev)
        sync()
        start = time.perf_counter()
        mask = None
        if num_sink > 0:
            m = ((ids[:, None] * BASE) * pows[None, :]) % M
            sinks = ((m.float() / float(M)) < 0.3).float()
            mask = torch.cat((torch.ones(args.batch, num_general, device=dev), sinks), dim=1)[:, None, :]
        sync()
        mask_time = time.perf_counter() - start
        with torch.autocast(device_type=dev.type, dtype=amp_dtype, enabled=autocast):
            logits = forward(tokens[:, :-1], mask)
            loss = F.cross_entropy(logits.float().reshape(-1, vocab), tokens[:, 1:].reshape(-1))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        value = loss.item()
        sync()
        if i < args.warmup:
            warmup_s += time.perf_counter() - start
        else:
            step_ms.append((time.perf_counter() - start) * 1e3)
            losses.append(value)
            mask_s += mask_time
    total_s = sum(step_ms) / 1e3
    print(json.dumps({
        "backend": f"torch-{dev.type}" + ("" if args.dtype == "float32" else f"-{args.dtype}")
        + ("-compile" if args.compile else ""),
        "preset": args.preset,
        "method": args.method,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "seq": seq,
        "params": params,
        "steps": args.steps,
        "tokens_per_s": args.steps * args.batch * seq / total_s,
        "step_ms_median": sorted(step_ms)[len(step_ms) // 2],
        "mask_share": mask_s / total_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "loss": sum(losses) / len(losses),
        "warmup_s": warmup_s,
    }))


if __name__ == "__main__":
    main()
