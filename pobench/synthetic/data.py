"""The synthetic suite's data: prompts, K reference samples per prompt scored by the gold reward, gold-labelled
pairs, and the pools MC-PO and RSO draw from (records carry candidates + scores, so `pool.source: auto` uses them).

Settings come from `data.synthetic` (a mapping in the suite YAML or `--set data.synthetic.<key>=...`); every key
and its default is documented in `SyntheticSettings`. The records depend on the settings, `data.eval_size` and the
reference policy, never on the run seed: every algorithm and seed trains on the same data. They are generated
once and cached beside the reference under `<cache>/synthetic/`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from pobench.data.records import PreferenceRecord
from pobench.errors import PobenchError
from pobench.synthetic.task import MAX_COMPLETION, SyntheticTask, tokens_text

DATA_VERSION = 3   # bump when the record-making code changes (invalidates cached records); 3: per-prompt sampling seeds
PAIRINGS = ("best_worst", "random")


@dataclass(frozen=True)
class SyntheticSettings:
    task_seed: int = 0             # the task: hidden vectors, behaviour chain, prompts; also seeds the labels
    train_prompts: int = 1024      # training records (prompts); held-out records are data.eval_size more
    num_candidates: int = 8        # K completions per prompt sampled from the reference and scored by gold
    temperature: float = 1.0       # candidate sampling temperature (1.0 with top_p 1: the reference policy itself)
    pairs: str = "best_worst"      # best_worst: the best and worst of the K by gold | random: two distinct ones
    label_noise: float = 0.0       # Bradley-Terry temperature T of the training labels: the better candidate is
                                   # chosen with prob sigmoid((r*_a - r*_b) / T); 0 = always (held-out: always)
    ref_steps: int = 2000          # SFT steps of the reference policy (its other settings: reference.py)
    eval_samples: int = 2          # gold evaluation: samples per held-out prompt (the same draws for every algorithm)

    @classmethod
    def from_mapping(cls, values: dict | None) -> "SyntheticSettings":
        """Checked like the rest of the config: unknown keys and wrong types name the key."""
        from pobench.config import _coerce

        values = dict(values or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise PobenchError(f"unknown config key 'data.synthetic.{unknown[0]}' (known: {', '.join(sorted(fields))})")
        kwargs = {k: _coerce(v, fields[k].type, f"data.synthetic.{k}") for k, v in values.items()}
        settings = cls(**kwargs)
        settings.check()
        return settings

    def check(self) -> None:
        def bad(key, why):
            raise PobenchError(f"config key 'data.synthetic.{key}': {why}")
        if self.task_seed < 0:
            bad("task_seed", "must be >= 0")
        if self.train_prompts < 1:
            bad("train_prompts", "must be at least 1")
        if self.num_candidates < 2:
            bad("num_candidates", "must be at least 2 (a pair needs two candidates)")
        if self.temperature <= 0:
            bad("temperature", "must be > 0")
        if self.pairs not in PAIRINGS:
            bad("pairs", f"{self.pairs!r} is not one of {', '.join(PAIRINGS)}")
        if self.label_noise < 0:
            bad("label_noise", "must be >= 0 (0 = noiseless labels)")
        if self.ref_steps < 1:
            bad("ref_steps", "must be at least 1")
        if self.eval_samples < 1:
            bad("eval_samples", "must be at least 1")

    def recipe(self):
        from pobench.synthetic.reference import ReferenceRecipe
        return ReferenceRecipe(steps=self.ref_steps)


def prompt_message(tokens) -> list[dict]:
    return [{"role": "user", "content": tokens_text(tokens)}]


def draw_prompts(task: SyntheticTask, n_train: int, n_eval: int) -> tuple[list[list[int]], list[list[int]]]:
    """Training and held-out prompts from their own seeded streams; a held-out prompt never equals a training one."""
    train = task.sample_prompts(n_train, np.random.Generator(np.random.PCG64([task.seed, 2])))
    seen = {tuple(p) for p in train}
    rng = np.random.Generator(np.random.PCG64([task.seed, 3]))
    held: list[list[int]] = []
    while len(held) < n_eval:
        held.extend(p for p in task.sample_prompts(n_eval, rng) if tuple(p) not in seen)
    return train, held[:n_eval]


def pick_pair(scores: list[float], pairs: str, label_noise: float, rng: np.random.Generator) -> tuple[int, int] | None:
    """(chosen, rejected) candidate indices, or None when the two candidates tie in gold (no preference)."""
    if pairs == "best_worst":
        a, b = int(np.argmax(scores)), int(np.argmin(scores))
    else:
        a, b = (int(i) for i in rng.choice(len(scores), size=2, replace=False))
    if scores[a] == scores[b]:
        return None
    if scores[b] > scores[a]:
        a, b = b, a
    if label_noise > 0:
        # Bradley-Terry: the better one wins with prob sigmoid(gap / T); otherwise the label is flipped
        if rng.random() >= 1.0 / (1.0 + math.exp(-(scores[a] - scores[b]) / label_noise)):
            a, b = b, a
    return a, b


def sample_candidates(model_dir: str, prompts: list[list[int]], k: int, temperature: float, seed: int) -> list[list[str]]:
    """K completions per prompt from the reference policy through pobench's own generation backend."""
    import torch

    from pobench.data.tokenize import ChatFormatter
    from pobench.generation import GenerationConfig, get_backend
    from pobench.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir, torch.float32)
    formatter = ChatFormatter(tokenizer)
    prompt_ids = [formatter.encode(formatter.prompt_text(prompt_message(p))) for p in prompts]
    gen = GenerationConfig(n=k, temperature=temperature, top_p=1.0, max_new_tokens=MAX_COMPLETION, seed=seed,
                           batch_size=512)
    return [[c.text for c in outs] for outs in get_backend("transformers", model, tokenizer).generate(prompt_ids, gen)]


def make_records(task: SyntheticTask, split: str, prompts: list[list[int]], candidates: list[list[str]],
                 settings: SyntheticSettings, noisy: bool) -> tuple[list[PreferenceRecord], Counter, list[list[float]]]:
    rng = np.random.Generator(np.random.PCG64([task.seed, 4 if split == "train" else 5]))
    records, skipped, all_scores = [], Counter(), []
    for i, (prompt, texts) in enumerate(zip(prompts, candidates)):
        message = prompt_message(prompt)
        scores = [task.gold_text(message, t) for t in texts]
        all_scores.append(scores)
        pair = pick_pair(scores, settings.pairs, settings.label_noise if noisy else 0.0, rng)
        if pair is None:
            skipped["all_scores_tied"] += 1
            continue
        records.append(PreferenceRecord(prompt=message, chosen=texts[pair[0]], rejected=texts[pair[1]],
                                        candidates=list(texts), scores=scores,
                                        id=f"synthetic-task{task.seed}-{split}-{i}"))
    return records, skipped, all_scores


def gold_spread(scores: list[list[float]], records: list[PreferenceRecord]) -> dict:
    """How widely the reference's samples spread in gold: overall and within a prompt (what pairs are made of)."""
    flat = np.array([s for row in scores for s in row])
    within = np.array([max(row) - min(row) for row in scores])
    gold_of = {r.id: dict(zip(r.candidates, r.scores)) for r in records}
    chosen = [gold_of[r.id][r.chosen] for r in records]
    rejected = [gold_of[r.id][r.rejected] for r in records]
    return {"mean": round(float(flat.mean()), 4), "std": round(float(flat.std()), 4),
            "min": round(float(flat.min()), 4), "max": round(float(flat.max()), 4),
            "p10": round(float(np.percentile(flat, 10)), 4), "p90": round(float(np.percentile(flat, 90)), 4),
            "within_prompt_range_mean": round(float(within.mean()), 4),
            "chosen_mean": round(float(np.mean(chosen)), 4), "rejected_mean": round(float(np.mean(rejected)), 4),
            "chosen_below_rejected": int(sum(c < r for c, r in zip(chosen, rejected)))}


def _cache_path(settings: SyntheticSettings, eval_size: int, reference: str) -> Path:
    from pobench.generation import SAMPLING_SCHEME
    from pobench.models import model_fingerprint
    from pobench.synthetic.reference import cache_root

    # the records hold the reference's samples: drawn another way (SAMPLING_SCHEME), they are other records
    key = json.dumps({"settings": dataclasses.asdict(settings), "eval_size": eval_size, "version": DATA_VERSION,
                      "reference": model_fingerprint(reference), "seeding": SAMPLING_SCHEME}, sort_keys=True)
    return cache_root() / "synthetic" / f"data-task{settings.task_seed}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"


def best_possible_gold(task: SyntheticTask, prompts) -> float:
    """The mean over prompts of the best gold any answer reaches (SyntheticTask.best_gold), to 4 digits."""
    return round(float(np.mean([task.best_gold(p) for p in prompts])), 4)


def build_data(settings: SyntheticSettings, eval_size: int, reference: str) -> dict:
    """Train and held-out records (as JSON) plus the report, made from scratch."""
    import time

    task = SyntheticTask(settings.task_seed)
    train_prompts, eval_prompts = draw_prompts(task, settings.train_prompts, eval_size)
    started = time.perf_counter()
    seed = 1_000_003 * settings.task_seed + 11
    candidates = sample_candidates(reference, train_prompts + eval_prompts, settings.num_candidates,
                                   settings.temperature, seed)
    sample_s = time.perf_counter() - started
    train, train_skipped, train_scores = make_records(task, "train", train_prompts, candidates[:len(train_prompts)],
                                                      settings, noisy=True)
    held, eval_skipped, _ = make_records(task, "eval", eval_prompts, candidates[len(train_prompts):], settings,
                                         noisy=False)
    best = best_possible_gold(task, train_prompts)
    source = f"synthetic task {settings.task_seed} ({settings.num_candidates} reference samples per prompt, gold-labelled)"
    report = {
        "source": "synthetic", "train_source": source, "train_rows": len(train_prompts), "train_records": len(train),
        "train_skipped": dict(train_skipped), "eval_source": f"synthetic task {settings.task_seed} held-out prompts",
        "eval_records": len(held), "eval_skipped": dict(eval_skipped),
        "synthetic": {"settings": dataclasses.asdict(settings), "reference_model": reference,
                      "gold_name": gold_name(settings.task_seed), "candidate_sampling_s": round(sample_s, 2),
                      "reference_gold": gold_spread(train_scores, train), "best_possible_gold_mean": best},
    }
    return {"train": [r.to_json() for r in train], "eval": [r.to_json() for r in held], "report": report}


def gold_name(task_seed: int) -> str:
    return "synthetic" if task_seed == 0 else f"synthetic-{task_seed}"


def load_synthetic(data_cfg):
    """`data.path: synthetic` -> SuiteData, with the gold evaluator attached for the trainer."""
    from pobench.data import SuiteData
    from pobench.synthetic import register_task_gold
    from pobench.synthetic.evaluate import GoldEvaluator, check_gold_task
    from pobench.synthetic.reference import ensure_reference

    settings = SyntheticSettings.from_mapping(getattr(data_cfg, "synthetic", None))
    if data_cfg.eval_size < 1:
        raise PobenchError("config key 'data.eval_size': the synthetic suite needs at least 1 held-out prompt")
    register_task_gold(settings.task_seed)
    reference = str(ensure_reference(settings.task_seed, settings.recipe()))
    path = _cache_path(settings, data_cfg.eval_size, reference)
    if path.is_file():
        made = json.loads(path.read_text(encoding="utf-8"))
    else:
        made = build_data(settings, data_cfg.eval_size, reference)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(made), encoding="utf-8")
        os.replace(tmp, path)
    train = [PreferenceRecord(**r) for r in made["train"]]
    held = [PreferenceRecord(**r) for r in made["eval"]]
    if data_cfg.max_train_records:
        train = train[:data_cfg.max_train_records]
    report = dict(made["report"], train_records=len(train), cache=str(path))
    # computed afresh: data cached before best_gold was corrected (2026-11-27) holds the mean of the 16 best tokens
    task = SyntheticTask(settings.task_seed)
    report["synthetic"] = {**report["synthetic"], "best_possible_gold_mean": best_possible_gold(
        task, draw_prompts(task, settings.train_prompts, data_cfg.eval_size)[0])}
    return SuiteData(train, held, report, evaluator=partial(GoldEvaluator.for_run, settings=settings),
                     check_config=partial(check_gold_task, settings=settings))
