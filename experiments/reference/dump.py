#!/usr/bin/env python3
"""Reference dump for `memsinks-train/tests/reference_dump.rs` (llm.c's habit: test against a
dump of an independent implementation, without needing it at test time).

The model is the PyTorch Llama of `experiments/bench/torch_reference.py` (RMSNorm, RoPE "rotate
half", causal SDPA with grouped KV heads, SwiGLU MLP whose hidden units are multiplied by the
MemSinks training mask of each row's sequence ID, untied head, no biases), tiny preset, fp32.
It writes one safetensors file holding:

  weights      every parameter under its Llama name ([out, in] layout, norms 1-D)
  tokens       [2, 17] int64: inputs are [:, :16], targets [:, 1:]
  seq_ids      [2] int64: each row's sequence ID (selects its sinks)
  logits       [2, 16, 64]: the forward pass in training mode
  loss         [1]: mean next-token cross-entropy
  grad.NAME    the gradient of that loss for every parameter
  adamw_losses [10]: the loss before each of 10 AdamW steps on the same batch (lr 1e-3,
               betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices only, global clip 1.0)

    python experiments/reference/dump.py [--out experiments/reference/tiny.safetensors]

Needs torch and safetensors (experiments/bench/compare.sh --install makes such a virtualenv).
"""
import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from torch_reference import BASE, M, PRESETS, Model, reference_powers  # noqa: E402

P_GEN, P_MEM, LR, STEPS = 0.7, 0.3, 1e-3, 10


def llama_names(model):
    """Our parameter name -> Llama (Hugging Face) name."""
    names = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
             "head.weight": "lm_head.weight"}
    for i in range(len(model.blocks)):
        p, q = f"blocks.{i}", f"model.layers.{i}"
        for ours, theirs in [("attn_norm", "input_layernorm"), ("mlp_norm", "post_attention_layernorm"),
                             ("q", "self_attn.q_proj"), ("k", "self_attn.k_proj"), ("v", "self_attn.v_proj"),
                             ("o", "self_attn.o_proj"), ("gate_proj", "mlp.gate_proj"), ("up_proj", "mlp.up_proj"),
                             ("down_proj", "mlp.down_proj")]:
            names[f"{p}.{ours}.weight"] = f"{q}.{theirs}.weight"
    return names


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny.safetensors"))
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    vocab, d, layers, heads, kv, hidden, context, theta, tied = PRESETS["tiny"]
    model = Model(vocab, d, layers, heads, kv, hidden, context, theta, tied)
    # Norm gains away from 1 so that a wrong gain path shows.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    names = llama_names(model)
    weights = {names[n]: p.detach().clone() for n, p in model.named_parameters()}

    tokens = torch.randint(0, vocab, (2, 17), dtype=torch.int64)
    seq_ids = torch.tensor([12345, 987654321], dtype=torch.int64)
    num_general = math.floor(hidden * P_GEN)
    pows = torch.tensor(reference_powers(hidden - num_general), dtype=torch.int64)
    m = ((seq_ids[:, None] * BASE) * pows[None, :]) % M
    sinks = ((m.float() / float(M)) < P_MEM).float()
    mask = torch.cat((torch.ones(2, num_general), sinks), dim=1)[:, None, :]

    def loss_of(model):
        logits = model(tokens[:, :-1], mask)
        return logits, F.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))

    logits, loss = loss_of(model)
    loss.backward()
    grads = {f"grad.{names[n]}": p.grad.detach().clone() for n, p in model.named_parameters()}

    decay = [p for p in model.parameters() if p.dim() == 2]
    rest = [p for p in model.parameters() if p.dim() != 2]
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                              lr=LR, betas=(0.9, 0.95), eps=1e-8)
    losses = []
    for _ in range(STEPS):
        optim.zero_grad(set_to_none=True)
        _, step_loss = loss_of(model)
        losses.append(step_loss.item())
        step_loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()

    out = {**weights, **grads, "tokens": tokens, "seq_ids": seq_ids, "logits": logits.detach(),
           "loss": loss.detach().reshape(1), "adamw_losses": torch.tensor(losses, dtype=torch.float32)}
    save_file({k: v.contiguous() for k, v in out.items()}, args.out,
              metadata={"generator": "experiments/reference/dump.py", "torch": torch.__version__})
    print(f"wrote {args.out}: loss {loss.item():.6f}, AdamW losses {losses[0]:.4f} -> {losses[-1]:.4f}")


if __name__ == "__main__":
    main()
