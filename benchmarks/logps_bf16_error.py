"""Error of sequence log-probs under bf16 autocast (the GPU training path's default), on the CPU.

Compares pobench's token_logps with the computation it replaced (the target's logit computed apart in fp32, the
normaliser from the bf16 logits) against an fp64 log-softmax, for confident tokens (logits ~20), and the spurious
log-ratio each gives between two nearly equal output layers. Qwen2-0.5B's hidden size, a 32k vocabulary.

    .venv/bin/python benchmarks/logps_bf16_error.py
"""
import torch
import torch.nn.functional as F
from torch import nn

from pobench.engine.logps import token_logps


def target_apart(hidden, targets, head):
    """The replaced computation (before e8dbb01): target logit as an fp32 dot product, normaliser in bf16."""
    logits = head(hidden).float()
    target = (hidden * F.embedding(targets, head.weight)).sum(-1).float()
    return target - torch.logsumexp(logits, dim=-1)


def main() -> None:
    torch.manual_seed(0)
    d, vocab, n = 896, 32000, 512
    head = nn.Linear(d, vocab, bias=False)
    nn.init.normal_(head.weight, std=0.02)
    targets = torch.randint(0, vocab, (n,))
    hidden = torch.randn(n, d) * 0.5 + head.weight[targets].detach() * 60   # confident targets
    moved = nn.Linear(d, vocab, bias=False)
    with torch.no_grad():
        moved.weight.copy_(head.weight + torch.randn_like(head.weight) * 2e-5)   # a tiny update
        exact = torch.log_softmax(head(hidden).double(), -1)[torch.arange(n), targets]
        exact_moved = torch.log_softmax(moved(hidden).double(), -1)[torch.arange(n), targets]
        print(f"mean target logit {head(hidden)[torch.arange(n), targets].mean():.1f}; exact log-ratio summed over "
              f"{n} tokens {(exact_moved - exact).sum():.2e}")
        for name, fn in (("target apart (old)", target_apart), ("token_logps (now)", token_logps)):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                before = fn(hidden, targets, head) if fn is target_apart else fn(hidden, targets, head, 1024)
                after = fn(hidden, targets, moved) if fn is target_apart else fn(hidden, targets, moved, 1024)
            err = before.double() - exact
            print(f"{name}: max |error| {err.abs().max():.4f} nats/token, {int((before > 0).sum())} of {n} "
                  f"log-probs > 0, spurious summed log-ratio {(after - before).double().sum() - (exact_moved - exact).sum():+.4f}")


if __name__ == "__main__":
    main()
