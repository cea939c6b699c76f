#!/usr/bin/env python
"""Time one DPO optimizer step of pobench against TRL's DPOTrainer, same model, same batch, same process.

For each configuration both sides start from identical weights and train on identical token ids:

  pobench: collate_pairs_shared (prompt | chosen | rejected in one row, the trainer's default) -> SequenceLogps forward -> reference log-probs looked up in a ReferenceCache
           (pobench computes them once, before training, and caches them on disk: that is its real design)
           -> dpo_loss(beta=0.1).mean().backward() -> clip grad norm 1.0 -> AdamW step -> zero_grad
  TRL:     DPOTrainer(precompute_ref_log_probs=True) data collator on the same rows (the reference log-probs
           are a column of its dataset, precomputed by TRL at construction) -> trainer.training_step
           (forward + loss + backward) -> accelerator.clip_grad_norm_ 1.0 -> AdamW step -> zero_grad

Steps are interleaved (pobench, TRL, TRL, pobench, ... the order alternates each round), `--warmup` rounds are
dropped, and the ratio is median(pobench) / median(TRL) over `--steps` rounds. Before timing, the script checks
that the two sides see the same input ids / masks and compute the same policy and reference log-probs; it also
reports the first step's loss and gradient norm on both sides.

    .venv/bin/python benchmarks/trl_step.py --configs tiny,lora,full --steps 10 --warmup 2 --json bench.json
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")          # never reach the hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DATASETS_VERBOSITY", "error")

import argparse
import contextlib
import copy
import functools
import gc
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pobench.algorithm import SeqLogps  # noqa: E402
from pobench.data.tokenize import TokenizedPair  # noqa: E402
from pobench.engine.logps import SequenceLogps, collate_pairs, collate_pairs_shared  # noqa: E402
from pobench.engine.refcache import ReferenceCache  # noqa: E402
from pobench.engine.trainer import score_sequences  # noqa: E402
from pobench.losses import dpo_loss  # noqa: E402
from pobench.models import load_causal_lm, load_tokenizer, resolve_model_path  # noqa: E402

BETA = 0.1
LR = 1e-6
MAX_GRAD_NORM = 1.0
SEED = 0

CONFIGS = {
    # name: model, pairs, prompt tokens, completion tokens, LoRA, goal for pobench_time / trl_time
    "tiny": dict(model="tiny-llama (2 layers, hidden 128, vocab 49152)", pairs=8, prompt=64, completion=64,
                 lora=False, goal=0.25),
    "lora": dict(model="SmolLM2-135M-Instruct + LoRA r16", pairs=4, prompt=64, completion=64, lora=True, goal=0.6),
    "full": dict(model="SmolLM2-135M-Instruct", pairs=2, prompt=128, completion=128, lora=False, goal=0.8),
}


# -- models --------------------------------------------------------------------------------------------------
def build_tiny_model(tokenizer, layers: int = 2, hidden: int = 128, seed: int = SEED):
    """A random Llama with SmolLM2's vocabulary (same pattern as the tests' tiny model, built in memory)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    config._attn_implementation = "sdpa"   # pobench's default (ModelConfig.attn_implementation)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float()


def lora_config():
    from peft import LoraConfig
    # pobench.models.add_lora with its defaults (lora_alpha 16, dropout 0, all-linear) and r=16
    return LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def two_models(name: str, tokenizer, model_path: str):
    """Two independent copies with identical weights: one for pobench, one for TRL (which patches its forward)."""
    if name == "tiny":
        model = build_tiny_model(tokenizer)
        return model, copy.deepcopy(model)
    return (load_causal_lm(model_path, torch.float32, "sdpa"), load_causal_lm(model_path, torch.float32, "sdpa"))


# -- data ----------------------------------------------------------------------------------------------------
def word_token_ids(tokenizer) -> list[int]:
    """Token ids that are ' <ascii letters>' and round-trip through decode/encode on their own: a sequence of them,
    decoded to text, tokenizes back to the same ids (the pre-tokenizer splits at every ' word')."""
    out = []
    for tid in range(len(tokenizer)):
        piece = tokenizer.convert_ids_to_tokens(tid)
        if not piece or not piece.startswith("Ġ") or not piece[1:].isascii() or not piece[1:].isalpha():
            continue
        if len(piece) < 3:
            continue
        if tokenizer(tokenizer.decode([tid]), add_special_tokens=False)["input_ids"] == [tid]:
            out.append(tid)
    return out


def make_pairs(tokenizer, words: list[int], n: int, prompt_len: int, completion_len: int, seed: int):
    """Random pairs of exact lengths: prompt of `prompt_len` words; completions of `completion_len - 1` words + EOS
    (TRL appends the EOS to text completions itself). Returns pobench TokenizedPairs and the text rows for TRL."""
    g = torch.Generator().manual_seed(seed)
    vocab = torch.tensor(words)

    def draw(k):
        return vocab[torch.randint(len(words), (k,), generator=g)].tolist()

    eos = tokenizer.eos_token_id
    pairs, rows = [], []
    for _ in range(n):
        prompt, chosen, rejected = draw(prompt_len), draw(completion_len - 1), draw(completion_len - 1)
        pairs.append(TokenizedPair(prompt, chosen + [eos], rejected + [eos]))
        rows.append({"prompt": tokenizer.decode(prompt),
                     "chosen": tokenizer.decode(chosen) + tokenizer.eos_token,
                     "rejected": tokenizer.decode(rejected) + tokenizer.eos_token})
    return pairs, rows


# -- TRL -----------------------------------------------------------------------------------------------------
def build_trl(model, tokenizer, rows, n_pairs: int, peft_config, out_dir: str):
    import datasets
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    datasets.disable_progress_bars()

    args = DPOConfig(
        output_dir=out_dir, report_to="none", use_cpu=True, bf16=False, fp16=False,
        per_device_train_batch_size=n_pairs, gradient_accumulation_steps=1, max_grad_norm=MAX_GRAD_NORM,
        learning_rate=LR, weight_decay=0.0, beta=BETA, loss_type=["sigmoid"],
        precompute_ref_log_probs=True, precompute_ref_batch_size=n_pairs,
        max_length=None,                    # no truncation: the sequences are exactly what pobench sees
        gradient_checkpointing=False,       # TRL defaults to True; pobench's default is False
        disable_dropout=True, dataloader_num_workers=0, save_strategy="no", logging_strategy="no",
        disable_tqdm=True, seed=SEED,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=peft_config)
    trainer.current_gradient_accumulation_steps = 1   # set by Trainer's own loop, which we do not run
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    trainer.optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    return trainer


def trl_policy_logps(trainer, inputs):
    """Policy log-probs exactly as DPOTrainer._compute_loss computes them (its concatenated fused-head forward)."""
    labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
    out = trainer.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False,
                        labels=labels, fused_lm_head=True)
    seq_len = inputs["completion_mask"].shape[1] - 1
    return out.log_probs[:, -seq_len:].sum(1)


# -- other processes -----------------------------------------------------------------------------------------
def _busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy so far (Linux /proc/stat), or None where unavailable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]            # idle + iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """Cores' worth of CPU that other processes used while a block ran: machine busy time minus our own."""

    def __enter__(self):
        self.busy, self.own, self.wall = _busy_cpu_seconds(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        busy, own, wall = _busy_cpu_seconds(), time.process_time(), time.perf_counter()
        self.cores = (None if self.busy is None or busy is None
                      else max(0.0, (busy - self.busy) - (own - self.own)) / max(wall - self.wall, 1e-9))
        return False


# -- one configuration ---------------------------------------------------------------------------------------
def run_config(name: str, tokenizer, model_path: str, words: list[int], steps: int, warmup: int, log) -> dict:
    spec = CONFIGS[name]
    n = spec["pairs"]
    pad_id = tokenizer.pad_token_id
    pairs, rows = make_pairs(tokenizer, words, n, spec["prompt"], spec["completion"], seed=SEED + 1)
    t_setup = time.perf_counter()

    model_p, model_t = two_models(name, tokenizer, model_path)
    peft_cfg = lora_config() if spec["lora"] else None

    # TRL first: it wraps its model in LoRA (seeded) and precomputes its reference log-probs at construction.
    tmp = tempfile.mkdtemp(prefix="pobench-trl-bench-")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = build_trl(model_t, tokenizer, rows, n, copy.deepcopy(peft_cfg), tmp)

    # pobench: the same LoRA config, then the adapter weights copied from TRL's so both start identical.
    if spec["lora"]:
        from peft import get_peft_model
        model_p = get_peft_model(model_p, copy.deepcopy(peft_cfg))
    src = dict(trainer.model.named_parameters())
    with torch.no_grad():
        for pname, p in model_p.named_parameters():
            p.copy_(src[pname])
            assert p.requires_grad == src[pname].requires_grad, pname
    model_p.train()
    scorer = SequenceLogps(model_p)
    trainable = [p for p in model_p.parameters() if p.requires_grad]
    opt_p = torch.optim.AdamW(trainable, lr=LR, weight_decay=0.0)

    # pobench's reference log-probs: computed before training and cached per sequence (as build_reference_cache
    # does: LoRA -> adapter disabled; full fine-tuning -> the untouched policy before step 1).
    refcache = ReferenceCache(Path(tmp) / "reflogps.pt")
    seqs = refcache.missing([(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs])
    with torch.no_grad(), (model_p.disable_adapter() if spec["lora"] else contextlib.nullcontext()):
        refcache.add(seqs, *score_sequences(scorer, seqs, pad_id, torch.device("cpu"), 2 * n))
    refcache.save()
    refcache = ReferenceCache(Path(tmp) / "reflogps.pt")   # reloaded from disk, as a training run would

    # TRL's rows: its tokenized dataset with its precomputed reference columns, in our order.
    trl_rows = [trainer.train_dataset[i] for i in range(n)]
    for pair, row in zip(pairs, trl_rows):
        if (row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]) != (pair.prompt, pair.chosen, pair.rejected):
            raise SystemExit(f"{name}: TRL tokenized the text rows into different ids than pobench's pairs")
    collate_t = trainer.data_collator

    # -- apples to apples: same inputs, same log-probs ------------------------------------------------------
    batch_p = collate_pairs(pairs, pad_id)
    inputs_t = collate_t(trl_rows)
    same_inputs = (torch.equal(batch_p["input_ids"], inputs_t["input_ids"])
                   and torch.equal(batch_p["attention_mask"], inputs_t["attention_mask"])
                   and torch.equal(batch_p["completion_mask"], inputs_t["completion_mask"].bool()))
    if not same_inputs:
        raise SystemExit(f"{name}: the collated batches differ between pobench and TRL")
    with torch.no_grad():
        sums_p, _ = scorer(**collate_pairs_shared(pairs, pad_id))    # the rows pobench trains on (shared prompt)
        sums_t = trl_policy_logps(trainer, inputs_t)
    ref_p = refcache.lookup(pairs)
    ref_t = torch.cat([inputs_t["ref_chosen_logps"], inputs_t["ref_rejected_logps"]]).float()
    policy_diff = (sums_p - sums_t).abs().max().item()
    ref_diff = (torch.cat([ref_p.chosen, ref_p.rejected]) - ref_t).abs().max().item()
    logp_scale = sums_p.abs().max().item()

    # -- the two steps ------------------------------------------------------------------------------------------
    sec_p: dict[str, list[float]] = {k: [] for k in ("collate+lookup", "forward+loss", "backward", "clip", "adamw")}
    sec_t: dict[str, list[float]] = {k: [] for k in ("collate", "forward+loss", "backward+rest", "clip", "adamw")}

    def pobench_step():
        t0 = time.perf_counter()
        batch = collate_pairs_shared(pairs, pad_id)    # as the trainer collates (train.shared_prompt: true)
        reference = refcache.lookup(pairs)
        t1 = time.perf_counter()
        sums, counts = scorer(**batch)
        policy = SeqLogps(sums[:n], sums[n:], counts[:n], counts[n:])
        losses, _, _ = dpo_loss(policy.chosen, policy.rejected, reference.chosen, reference.rejected, beta=BETA)
        loss = losses.mean()
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
        t4 = time.perf_counter()
        opt_p.step()
        opt_p.zero_grad(set_to_none=True)
        t5 = time.perf_counter()
        for k, v in zip(sec_p, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            sec_p[k].append(v)
        return t5 - t0, loss.item(), float(grad_norm)

    loss_clock = []
    original_compute_loss = trainer.compute_loss

    @functools.wraps(original_compute_loss)
    def timed_compute_loss(*a, **kw):
        t = time.perf_counter()
        out = original_compute_loss(*a, **kw)
        loss_clock.append(time.perf_counter() - t)
        return out

    trainer.compute_loss = timed_compute_loss
    opt_t = trainer.optimizer
    model_t = trainer.model

    def trl_step():
        t0 = time.perf_counter()
        inputs = collate_t(trl_rows)
        t1 = time.perf_counter()
        loss = trainer.training_step(model_t, inputs)
        t2 = time.perf_counter()
        grad_norm = trainer.accelerator.clip_grad_norm_(model_t.parameters(), MAX_GRAD_NORM)
        t3 = time.perf_counter()
        opt_t.step()
        opt_t.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        fwd = loss_clock.pop()
        for k, v in zip(sec_t, (t1 - t0, fwd, t2 - t1 - fwd, t3 - t2, t4 - t3)):
            sec_t[k].append(v)
        return t4 - t0, loss.item(), float(grad_norm)

    setup_s = time.perf_counter() - t_setup
    times_p, times_t, others, first, last = [], [], [], None, None
    for i in range(warmup + steps):
        with OtherLoad() as other:
            if i % 2 == 0:
                rp, rt = pobench_step(), trl_step()
            else:
                rt, rp = trl_step(), pobench_step()
        if i == 0:
            first = (rp, rt)
        last = (rp, rt)
        if i >= warmup:
            times_p.append(rp[0])
            times_t.append(rt[0])
            others.append(other.cores)
        busy = "" if other.cores is None else f" (other processes: {other.cores:.2f} cores)"
        log(f"  [{name}] round {i + 1}/{warmup + steps}{' (warm-up)' if i < warmup else ''}: "
            f"pobench {rp[0] * 1e3:.1f} ms, TRL {rt[0] * 1e3:.1f} ms{busy}")
    trainer.compute_loss = original_compute_loss
    shutil.rmtree(tmp, ignore_errors=True)

    def med_sections(sec):
        return {k: round(statistics.median(v[warmup:]) * 1e3, 2) for k, v in sec.items()}

    med_p, med_t = statistics.median(times_p), statistics.median(times_t)
    ratio = med_p / med_t
    load = os.getloadavg()[0]
    others = [o for o in others if o is not None]
    return {
        "config": name, "model": spec["model"], "pairs": n, "prompt_tokens": spec["prompt"],
        "completion_tokens": spec["completion"], "lora": spec["lora"],
        "trainable_params": sum(p.numel() for p in trainable),
        "pobench_ms": round(med_p * 1e3, 2), "trl_ms": round(med_t * 1e3, 2), "ratio": round(ratio, 4),
        "ratio_of_minimums": round(min(times_p) / min(times_t), 4), "load_avg_1min_after": round(load, 2),
        "other_processes_cores_median": round(statistics.median(others), 3) if others else None,
        "other_processes_cores_per_round": [round(o, 3) for o in others],
        "goal": spec["goal"], "goal_met": ratio <= spec["goal"],
        "pobench_ms_all": [round(t * 1e3, 2) for t in times_p], "trl_ms_all": [round(t * 1e3, 2) for t in times_t],
        "pobench_sections_ms": med_sections(sec_p), "trl_sections_ms": med_sections(sec_t),
        "check": {
            "same_input_ids_and_masks": same_inputs,
            "policy_logps_max_abs_diff": policy_diff, "reference_logps_max_abs_diff": ref_diff,
            "logps_max_abs_value": logp_scale,
            "step1_loss": {"pobench": first[0][1], "trl": first[1][1]},
            "step1_grad_norm": {"pobench": first[0][2], "trl": first[1][2]},
            "last_step_loss": {"pobench": last[0][1], "trl": last[1][1]},
        },
        "setup_s": round(setup_s, 1),
    }


# -- report --------------------------------------------------------------------------------------------------
def table(results: list[dict]) -> str:
    head = (f"{'config':<6} {'model':<46} {'batch':<12} {'pobench ms':>10} {'TRL ms':>9} "
            f"{'ratio':>6} {'goal':>6}  met  {'min ratio':>9} {'others':>6}")
    lines = [head, "-" * len(head)]
    for r in results:
        batch = f"{r['pairs']}x({r['prompt_tokens']}+{r['completion_tokens']})"
        o = r["other_processes_cores_median"]
        others = "n/a" if o is None else f"{o:.2f}"
        lines.append(f"{r['config']:<6} {r['model']:<46} {batch:<12} {r['pobench_ms']:>10.1f} {r['trl_ms']:>9.1f} "
                     f"{r['ratio']:>6.3f} {'<=' + str(r['goal']):>6}  {'yes' if r['goal_met'] else 'NO ':<3}  "
                     f"{r['ratio_of_minimums']:>9.3f} {others:>6}")
    return "\n".join(lines)


def checks(results: list[dict]) -> str:
    lines = []
    for r in results:
        c = r["check"]
        lines.append(
            f"{r['config']:<6} same ids/masks: {c['same_input_ids_and_masks']}; "
            f"policy logps max|diff| {c['policy_logps_max_abs_diff']:.2e}, "
            f"reference logps max|diff| {c['reference_logps_max_abs_diff']:.2e} "
            f"(|logps| up to {c['logps_max_abs_value']:.0f}); "
            f"step-1 loss {c['step1_loss']['pobench']:.6f} vs {c['step1_loss']['trl']:.6f}, "
            f"grad norm {c['step1_grad_norm']['pobench']:.4f} vs {c['step1_grad_norm']['trl']:.4f}; "
            f"last loss {c['last_step_loss']['pobench']:.6f} vs {c['last_step_loss']['trl']:.6f}")
    return "\n".join(lines)


def sections(results: list[dict]) -> str:
    lines = []
    for r in results:
        p = ", ".join(f"{k} {v:.1f}" for k, v in r["pobench_sections_ms"].items())
        t = ", ".join(f"{k} {v:.1f}" for k, v in r["trl_sections_ms"].items())
        lines.append(f"{r['config']:<6} pobench: {p}\n{'':<6} TRL:     {t}")
    return "\n".join(lines)


NOTES = """\
Notes:
- Both sides: fp32 weights on CPU, sdpa attention, no gradient checkpointing, dropout off, torch.optim.AdamW
  (lr 1e-6, weight decay 0), clip grad norm 1.0, sigmoid DPO loss with beta 0.1, mean over pairs; identical
  initial weights (LoRA adapters copied from TRL's) and identical token ids (checked above).
- Reference log-probs are precomputed on both sides: pobench caches them on disk before training (its design)
  and its step is a ReferenceCache lookup; TRL runs with precompute_ref_log_probs=True, so its step reads them
  from the batch. Neither timed step runs a reference forward.
- Each timed step includes its own collation (pobench collate_pairs_shared, its default: prompt | chosen |
  rejected in one row under a block mask, the prompt computed once; TRL DataCollatorForPreference on the same
  rows) but not data loading. TRL's step also logs its usual metrics (entropy, token accuracy, rewards).
- On CPU, TRL's fused LM head scores every position (prompt and padding included; only Triton devices compact to
  the completion positions) and recomputes the logits tiles in backward; pobench projects only the positions that
  predict a completion token. On a GPU the ratio will differ."""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="tiny,lora,full", help="comma-separated subset of: " + ",".join(CONFIGS))
    ap.add_argument("--steps", type=int, default=10, help="timed steps per side (after warm-up)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps per side")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    ap.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    args = ap.parse_args(argv)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown or not names:
        ap.error(f"--configs: unknown {unknown}; choose from {list(CONFIGS)}")
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")

    def log(msg):
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    import transformers
    import trl
    import peft

    transformers.logging.set_verbosity_error()
    t0 = time.perf_counter()
    model_path = resolve_model_path("smollm2-135m-instruct")
    tokenizer = load_tokenizer(model_path)
    words = word_token_ids(tokenizer)
    log(f"model {model_path}; {len(words)} round-trip word tokens; torch threads {torch.get_num_threads()}")
    busy = os.getloadavg()[0]
    if busy > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {busy:.1f} on {os.cpu_count()} CPUs before starting: other processes are "
              f"running, so the timings will be noisy (the steps are interleaved, but rerun on a quiet machine)",
              file=sys.stderr, flush=True)

    results = []
    for name in names:
        log(f"== {name}: {CONFIGS[name]['model']}")
        results.append(run_config(name, tokenizer, model_path, words, args.steps, args.warmup, log))
        gc.collect()

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "trl": trl.__version__, "peft": peft.__version__, "threads": torch.get_num_threads(),
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "device": "cpu",
           "load_avg_1min_at_start": round(busy, 2), "steps": args.steps, "warmup": args.warmup,
           "total_s": round(time.perf_counter() - t0, 1)}
    print(f"DPO optimizer step, pobench vs TRL {trl.__version__} DPOTrainer (CPU, {env['threads']} threads, "
          f"torch {torch.__version__}); median of {args.steps} interleaved steps after {args.warmup} warm-up")
    print(table(results))
    print("ratio = median pobench / median TRL (the figure the goals apply to); min ratio = fastest pobench step /\n"
          "fastest TRL step, less sensitive to other processes; others = median CPU cores that other processes used\n"
          "during the timed rounds (from /proc/stat): above ~0.2 on this 2-core machine the timings are disturbed")
    print("\nSame computation? (before the first step, and the first step's loss / grad norm)")
    print(checks(results))
    print("\nWhere the time goes (median ms per section)")
    print(sections(results))
    print()
    print(NOTES)
    print(f"\ntotal {env['total_s']} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"environment": env, "results": results, "notes": NOTES}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
