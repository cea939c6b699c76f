"""Cost of drawing one token per row from a decode step's logits: pobench's sampler against the one it replaced.

    python benchmarks/sampling_step.py                        # CPU: 64 rows x 151,936 (Qwen2's vocabulary)
    python benchmarks/sampling_step.py --rows 16 --vocab 49152  # CPU, the default pool batch of SmolLM2
    python benchmarks/sampling_step.py --device cuda --rows 64,256 --methods sort,bisect --json sampling.json
    python benchmarks/sampling_step.py --compile --methods sort,kary   # the sampler as a compiled step runs it

Both draw temperature-then-top-p samples, each row from its own key per step (so a prompt's samples do not depend
on its batch):

- `old` (pobench until this script was written; kept below for the comparison): Gumbel-max, with a uniform number
  per row *and vocabulary entry* hashed from the key (lowbias32 on int64 tensors, 13 passes over rows x
  vocabulary), the nucleus found by a full sort and applied as a -inf mask.
- `new` (`pobench.generation.static.sample_tokens`): one uniform number per row from its key; the nucleus's
  probabilities summed in token-id order, and the token whose interval holds it. The nucleus is found by each
  of `--methods` (top_p_threshold): "select" (the eager default: partial selection, full sort only for rows whose
  nucleus is wider than 1024 tokens), "sort" (inside CUDA graphs), "bisect", "kary" and "radix" (searches for
  compiled steps), or not found at all: "reject" draws from the whole row until a draw lands in the nucleus
  (other tokens than the rest for the same key, the same distribution); "none" draws without a nucleus (top_p 1):
  what the nucleus costs is the difference.

Same logits, same keys, one process, alternating old and new so that machine noise hits both; median of
--repeats calls after one warm-up call. The ratio is the number to read (these machines are noisy). With random
logits of --scale 3 (a flat distribution, as a random model's) every nucleus is wider than 1024 tokens, so
"select" pays the selection and the sort; --scale 8 is peaked as a trained model's (nucleus of tens of tokens).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pobench.generation.static import mix32 as _mix32, sample_tokens  # noqa: E402

def old_top_p_keep(probs, top_p):
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p
    return ~torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)


def old_sample_tokens(logits, temperature, top_p, keys):
    """The sampler pobench used before inverse CDF (commit f69c5ec), with its default nucleus by sort."""
    logits = logits.float() / temperature
    if top_p < 1:
        logits = logits.masked_fill(~old_top_p_keep(logits.softmax(-1), top_p), float("-inf"))
    tokens = _mix32(torch.arange(logits.shape[-1], device=keys.device, dtype=torch.long) ^ 0x9E3779B9)
    bits = _mix32(keys.to(torch.long)[:, None] ^ tokens) >> 8
    noise = (bits.float() + 0.5) * (1.0 / (1 << 24))
    return (logits - torch.log(-torch.log(noise))).argmax(-1)


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rows", default="64", help="comma-separated batch sizes")
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--methods", default="select,sort,bisect")
    ap.add_argument("--scale", type=float, default=3.0, help="logits ~ N(0, scale^2): 3 is flat as a random "
                    "model's output (a 0.95 nucleus of tens of thousands of tokens), 8 peaked")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="torch.compile the new sampler (one compilation per "
                    "method and batch, outside the timing), as a compiled decode step holds it")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    new_sampler = torch.compile(sample_tokens, dynamic=False) if args.compile else sample_tokens
    device = torch.device(args.device)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "threads": torch.get_num_threads(), "vocab": args.vocab,
              "temperature": 0.8, "top_p": 0.95, "compiled": args.compile, "results": []}
    print(f"{report['device']}, torch {torch.__version__}, vocabulary {args.vocab}")
    for rows in map(int, args.rows.split(",")):
        g = torch.Generator().manual_seed(rows)
        logits = (torch.randn(rows, args.vocab, generator=g) * args.scale).to(device)
        keys = torch.randint(0, 1 << 32, (rows,), generator=g).to(device)
        for method in args.methods.split(","):
            top_p = 1.0 if method == "none" else 0.95               # "none": the sampler without a nucleus
            samplers = {"old": lambda: old_sample_tokens(logits, 0.8, 0.95, keys),
                        "new": lambda: new_sampler(logits, 0.8, top_p, "sort" if method == "none" else method, keys)}
            times = {name: [] for name in samplers}
            for fn in samplers.values():
                fn()                                                      # warm-up
            for _ in range(args.repeats):
                for name, fn in samplers.items():
                    times[name].append(timed(fn, device))
            ms = {name: statistics.median(t) * 1000 for name, t in times.items()}
            entry = {"rows": rows, "scale": args.scale, "new_nucleus": method, "old_ms": round(ms["old"], 3),
                     "new_ms": round(ms["new"], 3), "old_over_new": round(ms["old"] / ms["new"], 2)}
            report["results"].append(entry)
            label = f"{method:6s}, compiled" if args.compile else f"{method:6s}"
            print(f"rows {rows:4d}, scale {args.scale}: old (hashed Gumbel, sort) {ms['old']:9.3f} ms; "
                  f"new (inverse CDF, {label}) {ms['new']:9.3f} ms; old/new {entry['old_over_new']:.2f}x")
            if args.json:
                args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
