"""The synthetic suite's reference policy, trained by pobench itself and cached.

A tiny Llama (2 layers, 128 wide, vocabulary of 68) is fine-tuned by maximum likelihood on fresh samples of the
task's behaviour process (a hidden Markov chain tilted by exp(TILT * s(x, t)), see task.py): every step draws
new prompts and completions, so there is no data set to overfit. The loss covers the completion and <eos>.
The result is a normal model folder (safetensors, config, the WordLevel tokenizer with its chat template),
saved under `<cache>/synthetic/` (POBENCH_CACHE moves the cache) and keyed by the task seed and the recipe, so
it is trained once per machine. `model.name_or_path: synthetic-ref` (task seed 0) or `synthetic-ref:<seed>`
(or `synthetic-ref:<seed>:<SFT steps>`, the reference of `data.synthetic.ref_steps`)
resolves to it, building it on first use.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pobench.engine.checkpoint import rng_state_kept
from pobench.errors import PobenchError
from pobench.synthetic.task import (MAX_COMPLETION, PROMPT_MAX, SPECIALS, SyntheticTask, build_tokenizer,
                                    content_token_id)

ALIAS = "synthetic-ref"
RECIPE_VERSION = 1   # bump when the training code changes what a recipe produces (invalidates the cache)


@dataclass(frozen=True)
class ReferenceRecipe:
    """How the reference is trained. Defaults: about 2 minutes on 2 CPU cores (measured in the README)."""
    steps: int = 2000          # optimizer steps, each on a fresh batch from the behaviour process
    batch_size: int = 64       # sequences per step
    lr: float = 2e-3           # AdamW peak learning rate; linear warmup over 5% of steps, then cosine to 0
    layers: int = 2
    hidden: int = 128          # model width; the MLP is 2x wider
    heads: int = 4


def cache_root() -> Path:
    from pobench.models import cache_root as root
    return root()


def reference_dir(task_seed: int, recipe: ReferenceRecipe) -> Path:
    key = json.dumps({"task_seed": task_seed, "recipe": dataclasses.asdict(recipe), "version": RECIPE_VERSION},
                     sort_keys=True)
    return cache_root() / "synthetic" / f"ref-task{task_seed}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def encode_batch(prompts: list[list[int]], completions: list[list[int]]) -> dict:
    """Right-padded "<bos> x <sep> y <eos>" rows; labels cover y and <eos> only (-100 elsewhere)."""
    bos, sep, eos, pad = (SPECIALS.index(t) for t in ("<bos>", "<sep>", "<eos>", "<pad>"))
    rows, starts = [], []
    for p, y in zip(prompts, completions):
        prompt = [bos] + [content_token_id(t) for t in p] + [sep]
        rows.append(prompt + [content_token_id(t) for t in y] + [eos])
        starts.append(len(prompt))
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for i, (row, start) in enumerate(zip(rows, starts)):
        input_ids[i, :len(row)] = torch.tensor(row)
        attention_mask[i, :len(row)] = 1
        labels[i, start:len(row)] = input_ids[i, start:len(row)]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def new_model(recipe: ReferenceRecipe, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(SPECIALS) + 64, hidden_size=recipe.hidden, intermediate_size=2 * recipe.hidden,
                         num_hidden_layers=recipe.layers, num_attention_heads=recipe.heads,
                         num_key_value_heads=recipe.heads, max_position_embeddings=4 * (PROMPT_MAX + MAX_COMPLETION),
                         tie_word_embeddings=True, bos_token_id=SPECIALS.index("<bos>"),
                         eos_token_id=SPECIALS.index("<eos>"), pad_token_id=SPECIALS.index("<pad>"))
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def _lr_factor(step: int, total: int) -> float:
    warmup = max(1, total // 20)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def heldout_nll(model, task: SyntheticTask, n: int = 512, seed: int = 12345) -> tuple[float, float]:
    """(model NLL per completion token, the behaviour process's own NLL per token) on fresh behaviour samples:
    the gap says how much of the process the model has learned (0 = all of it)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    prompts = task.sample_prompts(n, rng)
    completions = task.sample_behaviour(prompts, rng)
    batch = encode_batch(prompts, completions)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                ignore_index=-100, reduction="sum")
    tokens = int((labels != -100).sum())
    # the process's NLL of the same tokens: content tokens from the chain, <eos> from the uniform length draw
    truth = -sum(task.behaviour_logprob(p, y) for p, y in zip(prompts, completions))
    return float(nll) / tokens, truth / tokens


@rng_state_kept()  # it seeds torch: the run that first needs the reference keeps its own stream
def train_reference(task_seed: int, recipe: ReferenceRecipe, out: Path, progress=None) -> dict:
    """SFT on the behaviour process; saves a model folder at `out` (atomically) and returns training info."""
    task = SyntheticTask(task_seed)
    model = new_model(recipe, seed=task_seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.0)
    rng = np.random.Generator(np.random.PCG64([task_seed, 1]))   # its own stream: the task's draws stay fixed
    started = time.perf_counter()
    model.train()
    losses = []
    for step in range(recipe.steps):
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr * _lr_factor(step, recipe.steps)
        prompts = task.sample_prompts(recipe.batch_size, rng)
        loss = model(**encode_batch(prompts, task.sample_behaviour(prompts, rng))).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, recipe.steps, losses[-1])
    train_s = time.perf_counter() - started
    model_nll, process_nll = heldout_nll(model, task)
    info = {"task_seed": task_seed, "recipe": dataclasses.asdict(recipe), "recipe_version": RECIPE_VERSION,
            "train_s": round(train_s, 1), "loss_first": round(float(np.mean(losses[:20])), 4),
            "loss_last": round(float(np.mean(losses[-50:])), 4), "heldout_nll_per_token": round(model_nll, 4),
            "behaviour_nll_per_token": round(process_nll, 4), "torch_threads": torch.get_num_threads()}
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.generation_config.pad_token_id = SPECIALS.index("<pad>")
    model.save_pretrained(tmp)
    build_tokenizer().save_pretrained(tmp)
    (tmp / "pobench_synthetic.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return info


def ensure_reference(task_seed: int = 0, recipe: ReferenceRecipe | None = None, console=None) -> Path:
    """The cached reference folder for (task seed, recipe), trained first where missing."""
    recipe = recipe or ReferenceRecipe()
    out = reference_dir(task_seed, recipe)
    if (out / "model.safetensors").is_file():
        return out
    from pobench.engine.lock import waiting_lock
    # parallel runs take turns: one trains, the others find its folder (side by side, a later finisher replaced the
    # folder another run was reading, and its time moved the model's fingerprint, which keys the run's caches)
    with waiting_lock(out.with_name(out.name + ".lock")):
        if not (out / "model.safetensors").is_file():
            _train_and_report(task_seed, recipe, out, console)
    return out


def _train_and_report(task_seed: int, recipe, out: Path, console) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if console is None:
        from rich.console import Console
        console = Console(stderr=True)
    console.print(f"synthetic suite: training the reference policy of task {task_seed} once ({recipe.steps} SFT "
                  f"steps, about 2 minutes on 2 CPU cores), cached in {out}", highlight=False, markup=False)
    info = train_reference(task_seed, recipe, out)
    console.print(f"synthetic suite: reference trained in {info['train_s']:.0f} s; held-out NLL/token "
                  f"{info['heldout_nll_per_token']:.3f} (the behaviour process itself: "
                  f"{info['behaviour_nll_per_token']:.3f})", highlight=False, markup=False)


def parse_alias(name: str) -> tuple[int, int] | None:
    """(task seed, reference SFT steps) of an alias: 'synthetic-ref' -> (0, 2000), 'synthetic-ref:3' -> (3, 2000),
    'synthetic-ref:3:40' -> (3, 40) (the reference `data.synthetic.ref_steps=40` makes its data with); anything
    else -> None."""
    if name == ALIAS:
        return 0, ReferenceRecipe().steps
    if name.startswith(ALIAS + ":"):
        parts = name[len(ALIAS) + 1:].split(":")
        if len(parts) > 2 or not all(p.isdigit() for p in parts) or (len(parts) == 2 and int(parts[1]) < 1):
            raise PobenchError(f"model.name_or_path {name}: expected {ALIAS}, {ALIAS}:<task seed> or "
                               f"{ALIAS}:<task seed>:<SFT steps>")
        return int(parts[0]), int(parts[1]) if len(parts) == 2 else ReferenceRecipe().steps
    return None


def resolve_alias(name: str) -> str | None:
    """The model folder an alias names (built on first use), or None when `name` is not the alias."""
    alias = parse_alias(name)
    if alias is None:
        return None
    seed, steps = alias
    return str(ensure_reference(seed, ReferenceRecipe(steps=steps)))
