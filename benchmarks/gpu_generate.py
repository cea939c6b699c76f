"""GPU generation speed: plain `model.generate` against pobench's static-cache + CUDA-graph decoder (issue 6, item 5).

    python benchmarks/gpu_generate.py [--batches 64,256] [--new-tokens 256] [--prompt-len 128] [--hf-static] [--json PATH]

Model: a randomly initialised model of Qwen2-0.5B's shape in bf16 with SDPA (see gpu_step.py), on the GPU.
Prompts: random tokens, 128 each; 256 new tokens per row; sampling with temperature 0.8 and top_p 0.95 (SimPO's
pool recipe, pobench's default) on both sides, no top_k; no EOS is set, so every row makes all 256 tokens.

  plain      `model.generate(do_sample=True, ...)`, dynamic cache (transformers' default)
  hf-static  `model.generate(..., cache_implementation="static")` (transformers compiles the forward itself;
             optional: its compilation takes minutes)
  pobench    pobench.generation.static.StaticDecoder (what the transformers backend uses on CUDA with fast=auto):
             prefill, then each decode step replayed as one CUDA graph, top-p sampling on the device (nucleus by
             sorting each row)
  pobench-bisect  the nucleus found by bisection on the probability threshold instead of a sort
  pobench-greedy  greedy decoding: the forward pass alone, the ceiling for sampling
  w-sort, w-bisect, w-kary, w-greedy  the same with the whole decode step compiled once (all layers unrolled,
             sampling and bookkeeping included: StaticDecoder(compile_step=True), GenerationConfig(compile=True));
             w-kary finds the nucleus by a 16-way search (10 rounds of 15 masked sums), w-radix by a radix select
             (three histogram passes; pobench-radix: the same in the graph of eager kernels), w-reject without
             finding it: draws from the whole row until one lands in the nucleus (top_p_method="reject": the same
             distribution, other tokens; pobench-reject: the same in the graph of eager kernels)
  c-sort, c-bisect, c-greedy  the same after torch.compile of every decoder layer (c-bisect also compiles the
             sampling function), still replayed as one CUDA graph per step
  name@64    a decoder at that batch only (a compiled step costs one compilation per batch)

Plain generate is measured first, then `backend`, then the decoders in the order --decoders names them (a c-*
decoder compiles the model's layers in place, so every decoder listed after one runs on compiled layers).
  backend    the path a pool generation takes: the transformers backend's `generate` with the defaults
             (GenerationConfig batch_size 0 = auto, fast=auto), n=8 samples of --backend-prompts prompts, each
             row seeded by its prompt; reports the batch it chose and new tokens/s (a warm-up call first)

New tokens/s = rows x new tokens / wall time of one call, after a warm-up call of the same shape (graph capture
and compilation happen there and are reported separately). Median of --reps calls.
Also checked: greedy decoding with the decoder gives the tokens `generate` gives (bf16: the fraction of rows whose
first 32 tokens agree is reported; bf16 ties can flip a token).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_step import build_model  # noqa: E402

from pobench.generation.static import StaticDecoder  # noqa: E402


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# name, temperature, top-p method, compiled sampling, compiled step. "w-" names compile the whole decode step once
# (StaticDecoder(compile_step=True): every layer, the sampling and the bookkeeping in one graph), "c-" names run
# after every decoder layer is compiled (pobench.models.compile_decoder_layers); all replay one CUDA graph per step.
DECODERS = [("pobench", 0.8, "sort", False, False), ("pobench-bisect", 0.8, "bisect", False, False),
            ("pobench-greedy", 0.0, "sort", False, False),
            ("w-sort", 0.8, "sort", False, True), ("w-bisect", 0.8, "bisect", False, True),
            ("w-kary", 0.8, "kary", False, True), ("w-radix", 0.8, "radix", False, True),
            ("w-greedy", 0.0, "sort", False, True), ("pobench-radix", 0.8, "radix", False, False),
            ("w-reject", 0.8, "reject", False, True), ("pobench-reject", 0.8, "reject", False, False),
            ("c-sort", 0.8, "sort", False, False), ("c-bisect", 0.8, "bisect", True, False),
            ("c-greedy", 0.0, "sort", False, False)]


def timed(fn, reps):
    times, out = [], None
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def measure_backend(model, args) -> dict:
    """Pool generation as pobench runs it on a GPU: TransformersBackend.generate with every default."""
    from types import SimpleNamespace

    from pobench.generation import GenerationConfig
    from pobench.generation.hf import TransformersBackend
    try:
        tokenizer = SimpleNamespace(eos_token_id=None, pad_token_id=0, decode=lambda ids, **kw: "")  # no text needed
        backend = TransformersBackend(model, tokenizer)
        g = torch.Generator().manual_seed(1)
        prompts = torch.randint(10, model.config.vocab_size, (args.backend_prompts, args.prompt_len), generator=g)
        prompts = [p.tolist() for p in prompts]
        cfg = GenerationConfig(n=8, temperature=0.8, top_p=0.95, max_new_tokens=args.new_tokens)
        batch = backend.auto_batch_rows(prompts, cfg)
        t0 = time.perf_counter()
        backend.generate(prompts, cfg)
        warm = time.perf_counter() - t0
        t, outs = timed(lambda: backend.generate(prompts, cfg), 1)
        made = sum(len(c.token_ids) for row in outs for c in row)
        return {"rows": len(prompts) * 8, "auto_batch_rows": batch, "fast_path": backend.uses_fast_path(cfg),
                "s": round(t, 3), "warmup_s": round(warm, 2), "new_tokens_per_s": round(made / t)}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}


def greedy_agreement(model, device, args, compiled_too: bool, out: dict) -> dict:
    """Greedy decoding on a small batch, half of it left padded: the graph decoder (and the compiled step where
    compiled_too) against `generate`. Written into out["greedy_agreement"] as it goes, so a timeout keeps it."""
    try:
        rows, n = 16, 32
        g = torch.Generator().manual_seed(7)
        ids = torch.randint(10, model.config.vocab_size, (rows, args.prompt_len), generator=g).to(device)
        mask = torch.ones_like(ids)
        mask[: rows // 2, : args.prompt_len // 4] = 0       # left padding on half the rows
        with torch.no_grad():
            ref = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n,
                                 pad_token_id=0)[:, ids.shape[1]:]
        agreement = out["greedy_agreement"] = {}
        for compile_step in (False, True) if compiled_too else (False,):
            dec = StaticDecoder(model, rows, args.prompt_len, n, eos_ids=[], pad_id=0, temperature=0.0, top_p=1.0,
                                compile_step=compile_step)
            got = dec.generate(ids, mask)
            agreement["compiled step" if compile_step else "graph"] = {
                "rows_identical": (ref == got).all(1).float().mean().item(),
                "first8_tokens_equal": (ref[:, :8] == got[:, :8]).float().mean().item()}
            if args.json:                                  # before the next compilation: a timeout keeps it
                Path(args.json).write_text(json.dumps(out, indent=1))
    except Exception as e:
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    return agreement


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--plain-reps", type=int, default=1)
    ap.add_argument("--hf-static", action="store_true")
    ap.add_argument("--decoders", default=",".join(d[0] for d in DECODERS))
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--backend-prompts", type=int, default=96, help="prompts of the `backend` measurement (x 8)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-agreement", action="store_true", help="skip the greedy agreement check (it compiles the "
                    "step once more where a w- decoder is measured)")
    ap.add_argument("--device", default="cuda", help="cpu only for a smoke test of the script (numbers meaningless)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_generate.py needs a CUDA device")
    import transformers
    device = torch.device(args.device)
    model = build_model(device, dtype=torch.bfloat16, layers=args.layers).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    sampling = dict(do_sample=True, temperature=0.8, top_p=0.95, top_k=0, max_new_tokens=args.new_tokens,
                    min_new_tokens=0, pad_token_id=0)
    out = {"gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__, "transformers": transformers.__version__,
           "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "results": {}}
    batches = [int(b) for b in args.batches.split(",")]
    # "name" measures a decoder at every batch; "name@64" at that batch only (each compiled shape costs a compilation)
    wanted: dict[str, list[int]] = {}
    for entry in args.decoders.split(","):
        name, _, only = entry.partition("@")
        wanted.setdefault(name, []).extend([int(only)] if only else batches)
    unknown = sorted(set(wanted) - {d[0] for d in DECODERS} - {"backend"})
    if unknown:
        sys.exit(f"unknown decoder(s): {', '.join(unknown)}")
    inputs = {}
    for rows in batches:
        g = torch.Generator().manual_seed(rows)
        ids = torch.randint(10, model.config.vocab_size, (rows, args.prompt_len), generator=g).to(device)
        inputs[rows] = (ids, torch.ones_like(ids))
        out["results"][rows] = {}
    for rows in batches:                                   # plain generate first: before any layer is compiled
        ids, mask = inputs[rows]
        res = out["results"][rows]

        def plain():
            return model.generate(input_ids=ids, attention_mask=mask, **sampling)
        with torch.no_grad():
            plain()                                        # warm-up
            t, seq = timed(plain, args.plain_reps)
        res["plain"] = {"s": round(t, 3), "new_tokens_per_s": round(rows * (seq.shape[1] - ids.shape[1]) / t)}
        print(rows, "plain", res["plain"], flush=True)
        if args.hf_static:
            def hf_static():
                return model.generate(input_ids=ids, attention_mask=mask, cache_implementation="static", **sampling)
            try:
                with torch.no_grad():
                    t0 = time.perf_counter()
                    hf_static()
                    warm = time.perf_counter() - t0
                    t, seq = timed(hf_static, args.plain_reps)
                res["hf-static"] = {"s": round(t, 3), "warmup_s": round(warm, 1),
                                    "new_tokens_per_s": round(rows * (seq.shape[1] - ids.shape[1]) / t)}
            except Exception as e:
                res["hf-static"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            print(rows, "hf-static", res["hf-static"], flush=True)
    if "backend" in wanted:
        out["backend"] = measure_backend(model, args)
        print("backend", out["backend"], flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
    compiled = False
    specs = {d[0]: d[1:] for d in DECODERS}
    for name in [n for n in wanted if n != "backend"]:     # in the order asked: a timeout cuts the last ones
        temperature, method, compile_sampling, compile_step = specs[name]
        if name.startswith("c-") and not compiled:
            from pobench.models import compile_decoder_layers
            compile_decoder_layers(model)
            compiled = True
        for rows in [b for b in batches if b in wanted[name]]:
            ids, mask = inputs[rows]
            res = out["results"][rows]
            new = rows * args.new_tokens
            try:
                dec = StaticDecoder(model, rows, args.prompt_len, args.new_tokens, eos_ids=[], pad_id=0,
                                    temperature=temperature, top_p=0.95, top_p_method=method,
                                    compile_sampling=compile_sampling, compile_step=compile_step)
                t0 = time.perf_counter()
                dec.generate(ids, mask)
                sync()
                warm = time.perf_counter() - t0
                t, toks = timed(lambda: dec.generate(ids, mask), args.reps)
                res[name] = {"s": round(t, 3), "warmup_s": round(warm, 2), "graph": dec.graph is not None,
                             "new_tokens_per_s": round(new / t), "distinct_tokens_row0": len(set(toks[0].tolist()))}
                res[name]["speedup_vs_plain"] = round(res[name]["new_tokens_per_s"] / res["plain"]["new_tokens_per_s"], 2)
                del dec
            except Exception as e:
                res[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            print(rows, name, res[name], flush=True)
            if args.json:                                  # as it goes: a timeout keeps what was measured
                Path(args.json).write_text(json.dumps(out, indent=1))
            if device.type == "cuda":
                torch.cuda.empty_cache()

    if not args.no_agreement:
        out["greedy_agreement"] = greedy_agreement(model, device, args, any(n.startswith("w-") for n in wanted), out)
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
