"""GPU training-step throughput and memory: pobench's engine against a plain transformers forward (issue 6, item 4).

    python benchmarks/gpu_step.py [--variants anchor,pobench,shared,shared-ckpt,mcpo] [--steps 5] [--json PATH]

Model: a randomly initialised model of Qwen2-0.5B's shape (24 layers, hidden 896, 14 heads / 2 KV heads, MLP 4864,
vocabulary 151936, tied embeddings; speed does not depend on the weights), built on the GPU, fp32 master weights
with bf16 autocast and SDPA attention, fused AdamW. Batch: 8 pairs, each sequence 1024 tokens (512 prompt + 512
completion), DPO's sigmoid loss against cached reference log-probs (as pobench trains: the reference forward is
done once before training, not per step).

Variants (each timed on the same model, after its own warm-up, median of --steps):
  anchor       plain `model(...).logits`, an fp32 log_softmax over every position, gather (the issue's anchor)
  pobench      pobench.engine.logps.SequenceLogps: output layer only at completion positions, chunked, fp32
               logsumexp; one row per sequence
  shared       + shared-prompt rows (prompt | chosen | rejected under a block mask: the prompt computed once)
  shared-ckpt  + gradient checkpointing
  compile      shared + torch.compile of each decoder layer (train.compile; compile time excluded, reported)
  compile-ckpt compile + gradient checkpointing (the least memory)
  mcpo         MC-PO's extra work per step, L = 8: a no-grad forward over the pool (8 prompts x 8 candidates of
               512 tokens, shared-prompt rows) before the `shared` step; reported as a ratio to `shared`

Reported per variant: step time, tokens/s (batch tokens: pairs x 2 x 1024, whatever the variant computes),
model TFLOP/s = 6 x parameters x batch tokens / step time (the usual MFU convention; it ignores that pobench
computes less), its fraction of the card's bf16 matmul peak measured in the same process (8192^3 products), and
peak memory (torch.cuda.max_memory_allocated over the timed steps).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pobench.data.tokenize import TokenizedPair  # noqa: E402
from pobench.engine.logps import SequenceLogps, collate_pairs, collate_pairs_shared, collate_sequences_shared  # noqa: E402
from pobench.losses import dpo_loss  # noqa: E402
from pobench.models import compile_decoder_layers  # noqa: E402

QWEN2_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
                 tie_word_embeddings=True)


def build_model(device, dtype=torch.float32, layers: int | None = None):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(**{**QWEN2_05B, **({"num_hidden_layers": layers} if layers else {})}, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(dtype)
    return model


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak_tflops(device, n: int = 8192, reps: int = 10) -> float:
    if device.type != "cuda":
        n, reps = 512, 2
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


def random_pairs(vocab: int, pairs: int, prompt_len: int, completion_len: int, candidates: int = 0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(10, vocab, (n,), generator=g).tolist()
    return [TokenizedPair(ids(prompt_len), ids(completion_len), ids(completion_len),
                          candidates=[ids(completion_len) for _ in range(candidates)]) for _ in range(pairs)]


def naive_logps(model, batch):
    """The anchor: full logits, fp32 log_softmax at every position, gather."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    mask = batch["completion_mask"][:, 1:]
    return (logp * mask).sum(1)


def time_variant(name, model, pairs, device, steps, warmup, compile_layers=False, mcpo=False, log=print):
    scorer = SequenceLogps(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=device.type == "cuda")
    b = len(pairs)
    if name == "anchor":
        batch = {k: v.to(device) for k, v in collate_pairs(pairs, 0).items()}
    elif name == "pobench":
        batch = {k: v.to(device) for k, v in collate_pairs(pairs, 0).items()}
    else:
        batch = {k: v.to(device) for k, v in collate_pairs_shared(pairs, 0).items()}
    pool = None
    if mcpo:
        seqs = [(p.prompt, c) for p in pairs for c in p.candidates]
        pool = {k: v.to(device) for k, v in collate_sequences_shared(seqs, 0).items()}
    ref_c = torch.zeros(b, device=device) - 400.0
    ref_r = torch.zeros(b, device=device) - 400.0

    def step():
        if pool is not None:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
                scorer.eval()
                pool_logps, _ = scorer(**pool)           # the kernel's scores come from these
                scorer.train()
            del pool_logps
        with torch.autocast(device.type, dtype=torch.bfloat16):
            sums = naive_logps(model, batch) if name == "anchor" else scorer(**batch)[0]
        losses, _, _ = dpo_loss(sums[:b], sums[b:], ref_c, ref_r, 0.1)
        losses.mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    t_compile = None
    if compile_layers:
        t0 = time.perf_counter()
        compile_decoder_layers(model)
        step()
        sync(device)
        t_compile = time.perf_counter() - t0
    for _ in range(warmup):
        step()
    sync(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan")
    del opt
    if cuda:
        torch.cuda.empty_cache()
    return {"step_s": statistics.median(times), "times": [round(t, 4) for t in times], "peak_gib": round(peak, 2),
            "compile_s": round(t_compile, 1) if t_compile else None}


def check_logps(model, pairs, device) -> dict:
    """On the GPU, in bf16 autocast: pobench's log-probs (separate and shared rows) against the anchor's."""
    scorer = SequenceLogps(model)
    small = pairs[:2]
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        naive = naive_logps(model, {k: v.to(device) for k, v in collate_pairs(small, 0).items()})
        sep = scorer(**{k: v.to(device) for k, v in collate_pairs(small, 0).items()})[0]
        shared = scorer(**{k: v.to(device) for k, v in collate_pairs_shared(small, 0).items()})[0]
    return {"max_abs_naive_vs_pobench": (naive - sep).abs().max().item(),
            "max_abs_separate_vs_shared": (sep - shared).abs().max().item(),
            "magnitude": naive.abs().max().item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # mcpo before compile*: compiling changes the model in place, and mcpo_over_dpo divides by `shared`
    ap.add_argument("--variants", default="anchor,pobench,shared,shared-ckpt,mcpo,compile,compile-ckpt")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--completion-len", type=int, default=512)
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--layers", type=int, default=None, help="fewer layers for a smoke test")
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cuda", help="cpu only for a smoke test of the script (numbers meaningless)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_step.py needs a CUDA device")
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    import transformers
    info = {"gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "pairs": args.pairs, "seq_len": args.prompt_len + args.completion_len,
            "prompt_len": args.prompt_len, "completion_len": args.completion_len}
    info["bf16_matmul_peak_tflops"] = round(matmul_peak_tflops(device), 1)
    print(json.dumps(info), flush=True)
    model = build_model(device, layers=args.layers)
    n_params = sum(p.numel() for p in model.parameters())
    info["parameters"] = n_params
    pairs = random_pairs(model.config.vocab_size, args.pairs, args.prompt_len, args.completion_len, args.candidates)
    info["logps_check"] = check_logps(model, pairs, device)
    print(json.dumps(info["logps_check"]), flush=True)
    batch_tokens = args.pairs * 2 * (args.prompt_len + args.completion_len)
    results = {}
    for name in args.variants.split(","):
        ckpt = name in ("shared-ckpt", "compile-ckpt")
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        try:
            r = time_variant(name, model, pairs, device, args.steps, args.warmup,
                             compile_layers=name.startswith("compile"), mcpo=name == "mcpo")
        except Exception as e:  # one failing variant (OOM, compile) must not lose the others' numbers
            r = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        finally:
            if ckpt:
                model.gradient_checkpointing_disable()
        if "step_s" in r:
            r["tokens_per_s"] = round(batch_tokens / r["step_s"])
            r["model_tflops"] = round(6 * n_params * batch_tokens / r["step_s"] / 1e12, 1)
            r["fraction_of_peak"] = round(r["model_tflops"] / info["bf16_matmul_peak_tflops"], 3)
        results[name] = r
        print(name, json.dumps(r), flush=True)
    if "mcpo" in results and "shared" in results and "step_s" in results["mcpo"] and "step_s" in results["shared"]:
        info["mcpo_over_dpo"] = round(results["mcpo"]["step_s"] / results["shared"]["step_s"], 3)
    if "anchor" in results and "step_s" in results["anchor"]:
        for name, r in results.items():
            if "step_s" in r:
                r["speedup_vs_anchor"] = round(results["anchor"]["step_s"] / r["step_s"], 3)
                r["memory_vs_anchor"] = round(r["peak_gib"] / results["anchor"]["peak_gib"], 3)
    out = {**info, "variants": results}
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
