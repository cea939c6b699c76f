"""MC-PO's optimizer step against DPO's on the same batch, in one run (issue: the cost of CD sampling).

A DPO step = policy forward/backward on B pairs + AdamW. An MC-PO step adds the kernel: a no-gradient forward
over the pool (B prompts x L candidates) under the current policy, reference log-probs of the pool from the
cache, a softmax draw. Steps are interleaved (DPO, MC-PO, DPO, ...) and medians reported with their ratio.

    .venv/bin/python benchmarks/mcpo_step.py [--pairs 8] [--candidates 8] [--steps 10] [--warmup 2]
        [--settings exact,prefix16,persistent] [--json PATH]

Settings: `exact` (the default MC-PO) and the opt-in approximations of algorithms/mcpo.py, each reported as its
own ratio to DPO. Both sides collate prompt | chosen | rejected into one row and score a prompt's pool in one
row (train.shared_prompt, exact).

Model: a random Llama of SmolLM2's vocabulary, 2 layers, 128 wide (the speed does not depend on the weights);
prompts 64 tokens, completions 64 tokens. Only the policy step is timed (data order, logging and checkpoints
are identical for both algorithms and excluded).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import types
from pathlib import Path

import torch

from pobench.algorithm import SeqLogps
from pobench.data.tokenize import TokenizedPair
from pobench.engine.logps import SequenceLogps, collate_pairs_shared
from pobench.engine.refcache import ReferenceCache
from pobench.engine.trainer import SamplerContext, score_sequences
from pobench.losses import dpo_loss
from pobench.models import resolve_model_path
from pobench.sampling.mc_kernel import MCKernel


def tiny_model(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--completion-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--settings", default="exact,prefix16,persistent")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from transformers import AutoTokenizer
    vocab = len(AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m-instruct")))
    model = tiny_model(vocab)
    scorer = SequenceLogps(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(10, vocab, (n,), generator=g).tolist()

    batch = [TokenizedPair(ids(args.prompt_len), ids(args.completion_len), ids(args.completion_len),
                           candidates=[ids(args.completion_len) for _ in range(args.candidates - 1)],
                           scores=[float(i) for i in range(args.candidates - 1)]) for _ in range(args.pairs)]
    settings = {name: SETTINGS[name] for name in args.settings.split(",")}
    samplers = {name: MCKernel(types.SimpleNamespace(num_candidates=args.candidates, kernel="sample", tau=1.0,
                                                     include_chosen_in_pool=False, kernel_score="reward", beta=0.1,
                                                     **knobs), types.SimpleNamespace(seed=1))
                for name, knobs in settings.items()}
    cache = ReferenceCache(Path(tempfile.mkdtemp()) / "ref.pt")
    seqs = sorted({s for sm in samplers.values() for s in map(tuple, map(lambda x: (tuple(x[0]), tuple(x[1])),
                                                                          sm.reference_sequences(batch)))})
    seqs = [(list(p), list(c)) for p, c in seqs]
    cache.add(seqs, *score_sequences(scorer, seqs, 0, "cpu", 16))   # computed once before training, as in a run
    cfg = types.SimpleNamespace(train=types.SimpleNamespace(batch_size=args.pairs))
    ctx = SamplerContext(cfg, scorer, model, None, None, cache, torch.device("cpu"), 0, None, 10**6, None, None)

    def step(pairs) -> None:
        sums, counts = scorer(**collate_pairs_shared(pairs, 0))   # as the trainer collates (train.shared_prompt)
        b = len(pairs)
        policy = SeqLogps(sums[:b], sums[b:], counts[:b], counts[b:])
        reference = cache.lookup(pairs)
        losses, _, _ = dpo_loss(policy.chosen, policy.rejected, reference.chosen, reference.rejected, 0.1)
        losses.mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def runner(name):
        if name == "dpo":
            return lambda i: step(batch)

        def mcpo_step(i):
            ctx.step = i
            pairs, _ = samplers[name](batch, ctx)
            step(pairs)
        return mcpo_step

    names = ["dpo", *settings]
    times = {n: [] for n in names}
    for i in range(args.warmup + args.steps):
        for name in (names if i % 2 == 0 else names[::-1]):       # interleaved, order alternating each round
            t0 = time.perf_counter()
            runner(name)(i)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    dpo = statistics.median(times["dpo"])
    result = {"pairs": args.pairs, "candidates": args.candidates, "prompt_len": args.prompt_len,
              "completion_len": args.completion_len, "dpo_ms": round(dpo * 1e3, 1),
              "torch_threads": torch.get_num_threads(), "settings": {}}
    print(f"MC-PO step vs DPO step (tiny Llama, {args.pairs} pairs x ({args.prompt_len}+{args.completion_len}), "
          f"L={args.candidates}, median of {args.steps} interleaved steps; DPO {dpo * 1e3:.1f} ms)")
    for name in settings:
        t = statistics.median(times[name])
        result["settings"][name] = {"ms": round(t * 1e3, 1), "ratio": round(t / dpo, 3), "knobs": settings[name]}
        print(f"  {name:<12} {t * 1e3:8.1f} ms  ratio {t / dpo:.3f}  {DESCRIPTIONS[name]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


# name -> MC-PO knobs (algorithms/mcpo.py); "exact" is the default
SETTINGS = {"exact": {}, "prefix16": {"score_prefix_tokens": 16}, "persistent": {"persistent_scores": True}}
DESCRIPTIONS = {"exact": "exact (default): the whole pool scored under the current policy every step",
                "prefix16": "approximation: candidates scored by their first 16 tokens",
                "persistent": "approximation: scores kept from the prompt's last visit (here: every step after "
                              "the first revisits the same batch, i.e. a later epoch)"}


if __name__ == "__main__":
    main()
