"""Gold evaluation of a policy on the synthetic suite: the truth, not a judge's opinion.

On the held-out prompts, `samples_per_prompt` completions are drawn from the policy and from the reference at
temperature 1 (top_p 1: the policies themselves, which the KL estimate needs), with the same generation seed:
common random numbers, so every algorithm at a run seed, and every evaluation step of a run, is measured on
the same random draws, and at step 0 (policy = reference) the two sets of samples are identical. Reported:

    gold/reward       mean r*(x, y) of policy samples            gold/ref_reward  the same for the reference
    gold/win_rate     P(r*(policy sample) > r*(reference sample drawn with the same random numbers)), ties 1/2
    gold/kl           KL(policy || reference) ~ mean over policy samples of log pi(y|x) - log pi_ref(y|x)
                      (unbiased; near 0 it can read slightly negative, see gold/kl_stderr)
    gold/length       mean answer length in content tokens        gold/repeats  mean repeated tokens per answer
    gold/finished     share of answers that ended with <eos> within 16 tokens

`gold_evaluate` is a plain function of (policy, reference, tokenizer, prompts); `GoldEvaluator` is the hook the
trainer calls at every evaluation step (`gold/*` keys in metrics.jsonl) and that writes `gold_eval.json`.
"""
from __future__ import annotations

import math
import re
import time
from pathlib import Path

import numpy as np
import torch

from pobench.errors import PobenchError
from pobench.synthetic.task import MAX_COMPLETION, SyntheticTask, parse_tokens, repeated


def eval_seed(run_seed: int) -> int:
    """The generation seed of every gold evaluation at a run seed: the same for all algorithms and steps."""
    return 10_007 * int(run_seed) + 17


def prompt_ids(tokenizer, prompts: list[list[dict]]) -> list[list[int]]:
    from pobench.data.tokenize import ChatFormatter
    formatter = ChatFormatter(tokenizer)
    return [formatter.encode(formatter.prompt_text(p)) for p in prompts]


def sample(model, tokenizer, ids: list[list[int]], n: int, seed: int, batch_size: int = 512):
    """n completions per prompt at temperature 1, top_p 1 (the policy's own distribution)."""
    from pobench.generation import GenerationConfig, get_backend
    gen = GenerationConfig(n=n, temperature=1.0, top_p=1.0, max_new_tokens=MAX_COMPLETION, seed=seed,
                           batch_size=batch_size)
    return get_backend("transformers", model, tokenizer).generate(ids, gen)


def sequence_logps(model, ids: list[list[int]], completions, batch_size: int = 256) -> torch.Tensor:
    """Summed log-probs of each sampled completion (its tokens up to and including <eos>), prompt-major."""
    from pobench.engine.logps import SequenceLogps
    from pobench.engine.trainer import score_sequences

    device = next(model.parameters()).device
    pad = 0
    seqs = [(p, c.token_ids) for p, outs in zip(ids, completions) for c in outs]
    sums, _ = score_sequences(SequenceLogps(model), seqs, pad, device, batch_size)
    return sums


def gold_scores(task: SyntheticTask, prompts: list[list[dict]], completions) -> np.ndarray:
    """[prompts, n] gold rewards of the completions' texts."""
    return np.array([[task.gold_text(p, c.text) for c in outs] for p, outs in zip(prompts, completions)])


def win_rate(policy: np.ndarray, reference: np.ndarray) -> float:
    """Share of paired draws where the policy's answer scores higher; ties count one half."""
    return float(np.mean((policy > reference) + 0.5 * (policy == reference)))


def answer_stats(completions) -> dict:
    flat = [c for outs in completions for c in outs]
    lengths = [len(parse_tokens(c.text, "a completion")) for c in flat]
    return {"gold/length": float(np.mean(lengths)),
            "gold/repeats": float(np.mean([repeated(parse_tokens(c.text, "a completion")) for c in flat])),
            "gold/finished": float(np.mean([c.finished for c in flat]))}


def gold_evaluate(policy, reference, tokenizer, prompts: list[list[dict]], task: SyntheticTask, seed: int,
                  samples_per_prompt: int = 2, reference_draws: dict | None = None, with_draws: bool = False) -> dict:
    """The gold metrics of `policy` against `reference` (both loaded causal LMs of the suite's tokenizer) on the
    held-out `prompts` (chat messages). `reference_draws` (from `reference_samples`) saves resampling the
    reference when the same draws are reused (every evaluation step of a run). `with_draws` adds "draws": the
    gold of every policy sample, [prompts][samples], for paired tests between runs of the same seed."""
    ids = prompt_ids(tokenizer, prompts)
    ref = reference_draws or reference_samples(reference, tokenizer, prompts, task, seed, samples_per_prompt)
    started = time.perf_counter()
    completions = sample(policy, tokenizer, ids, samples_per_prompt, seed)
    gold = gold_scores(task, prompts, completions)
    log_ratio = (sequence_logps(policy, ids, completions) - sequence_logps(reference, ids, completions)).numpy()
    n = gold.size
    return {"gold/reward": float(gold.mean()), "gold/reward_stderr": float(gold.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
            "gold/ref_reward": float(ref["gold"].mean()), "gold/win_rate": win_rate(gold, ref["gold"]),
            "gold/kl": float(log_ratio.mean()),
            "gold/kl_stderr": float(log_ratio.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
            **answer_stats(completions), "gold/eval_s": round(time.perf_counter() - started, 3),
            **({"draws": gold.tolist()} if with_draws else {})}


def reference_samples(reference, tokenizer, prompts: list[list[dict]], task: SyntheticTask, seed: int,
                      samples_per_prompt: int = 2) -> dict:
    completions = sample(reference, tokenizer, prompt_ids(tokenizer, prompts), samples_per_prompt, seed)
    return {"completions": completions, "gold": gold_scores(task, prompts, completions)}


def check_gold_task(cfg, settings) -> None:
    """The labeller of samples and the end-of-run judge must be this task's gold reward when they name one: another
    task's would score every answer against a reward the policy was never trained towards."""
    from pobench.synthetic.data import gold_name

    expected = f"gold:{gold_name(settings.task_seed)}"
    for key, spec in (("pool.reward_model", cfg.pool.reward_model), ("eval.judge", cfg.eval.judge)):
        if re.fullmatch(r"gold:synthetic(-\d+)?", spec) and spec != expected:
            raise PobenchError(f"config key '{key}': {spec} is not this task's gold reward; "
                               f"data.synthetic.task_seed={settings.task_seed} needs {expected}")
    # the policy starts from the reference that made the data: the alias names its SFT steps, which must be the data's
    from pobench.synthetic.reference import ALIAS, parse_alias
    alias = parse_alias(cfg.model.name_or_path)
    if alias is not None and alias[0] == settings.task_seed and alias[1] != settings.ref_steps:
        raise PobenchError(f"config key 'model.name_or_path': {cfg.model.name_or_path} is the {alias[1]}-step reference, "
                           f"but data.synthetic.ref_steps={settings.ref_steps} makes the data with another; use "
                           f"--model {ALIAS}:{settings.task_seed}:{settings.ref_steps}")


class GoldEvaluator:
    """The trainer's evaluation hook for the synthetic suite: `hook(step)` -> gold/* metrics of the policy being
    trained; `hook.finish(run_dir, metric_rows)` writes gold_eval.json. The reference is the run's initial
    weights (a separate copy, loaded once), which is what the policy's KL is measured against."""

    def __init__(self, task: SyntheticTask, prompts: list[list[dict]], policy, reference, tokenizer, seed: int,
                 samples_per_prompt: int, info: dict):
        self.task, self.prompts, self.policy, self.reference, self.tokenizer = task, prompts, policy, reference, tokenizer
        self.seed, self.samples_per_prompt, self.info = seed, samples_per_prompt, info
        self.reference_draws = reference_samples(reference, tokenizer, prompts, task, seed, samples_per_prompt)

    @classmethod
    def for_run(cls, cfg, data, model, tokenizer, model_path: str, device, settings) -> "GoldEvaluator":
        """Built by the trainer (SuiteData.evaluator) once the policy is loaded."""
        from pobench.models import load_causal_lm, pick_dtype
        from pobench.synthetic.data import gold_name

        check_gold_task(cfg, settings)
        expected = f"gold:{gold_name(settings.task_seed)}"
        dtype, _ = pick_dtype(cfg.model.dtype, device)
        reference = load_causal_lm(model_path, dtype).to(device).eval().requires_grad_(False)
        data_reference = data.report.get("synthetic", {}).get("reference_model")
        info = {"task_seed": settings.task_seed, "gold": expected, "eval_prompts": len(data.eval),
                "samples_per_prompt": settings.eval_samples, "generation_seed": eval_seed(cfg.seed),
                "reference_model": model_path, "data_reference_model": data_reference,
                "on_policy_data": data_reference is None or Path(data_reference).resolve() == Path(model_path).resolve()}
        if not info["on_policy_data"]:
            from rich.console import Console
            Console(stderr=True).print(f"warning: the policy starts from {model_path}, but the synthetic data were "
                                       f"sampled from {data_reference} (off-policy pairs; KL and win rate are "
                                       f"measured against the policy's own start)", highlight=False, markup=False)
        return cls(SyntheticTask(settings.task_seed), [r.prompt for r in data.eval], model, reference, tokenizer,
                   eval_seed(cfg.seed), settings.eval_samples, info)

    def __call__(self, step: int) -> dict:
        return gold_evaluate(self.policy, self.reference, self.tokenizer, self.prompts, self.task, self.seed,
                             self.samples_per_prompt, self.reference_draws)

    def initial(self) -> dict:
        """Step 0, where the policy is the reference: with common random numbers its draws are the reference's
        own, so the row is exact without sampling (win rate 1/2, KL 0)."""
        ref = self.reference_draws
        return {"step": 0, "pairs_seen": 0, "records_seen": 0, "time_s": 0.0, "gold/reward": float(ref["gold"].mean()),
                "gold/reward_stderr": float(ref["gold"].std(ddof=1) / math.sqrt(ref["gold"].size)) if ref["gold"].size > 1 else 0.0,
                "gold/ref_reward": float(ref["gold"].mean()), "gold/win_rate": 0.5, "gold/kl": 0.0, "gold/kl_stderr": 0.0,
                **answer_stats(ref["completions"])}

    def finish(self, run_dir: Path, rows: list[dict]) -> dict:
        """gold_eval.json: the final gold metrics, the curve over evaluation steps, and what they were measured on."""
        from pobench.engine.io import atomic_write_json

        keep = ("step", "pairs_seen", "records_seen", "time_s")
        curve = [self.initial()] + [{k: v for k, v in row.items() if k in keep or k.startswith("gold/")}
                                    for row in rows if "gold/reward" in row]
        ref = self.reference_draws["gold"]
        result = {**self.info, "reference": {"gold/reward": float(ref.mean()),
                                             "gold/reward_std": float(ref.std()),
                                             "gold/best_possible": float(np.mean([
                                                 self.task.best_gold(parse_tokens(p[-1]["content"], "the prompt"))
                                                 for p in self.prompts]))},
                  "final": curve[-1] if curve else None, "curve": curve}
        atomic_write_json(Path(run_dir) / "gold_eval.json", result)
        return result


def evaluate_run_dir(run_dir: Path, samples_per_prompt: int | None = None, seed: int | None = None,
                     with_draws: bool = False) -> dict:
    """Gold metrics of a finished synthetic run's final weights (for `pobench eval` or a notebook), against the
    run's own reference, on its held-out prompts, with the run's evaluation seed unless `seed` is given."""

    from pobench import config as C
    from pobench.data import load_suite_data
    from pobench.models import load_causal_lm, pick_device, pick_dtype
    from pobench.synthetic.data import SyntheticSettings

    from pobench.eval.runner import load_trained_policy

    run_dir = Path(run_dir)
    raw = C.read_yaml(run_dir / "config.yaml")
    cfg = C._build(C.RunConfig, raw, "")
    if cfg.data.path != "synthetic":
        raise PobenchError(f"{run_dir}: not a synthetic-suite run (data.path is {cfg.data.path!r})")
    settings = SyntheticSettings.from_mapping(cfg.data.synthetic)
    data = load_suite_data(cfg.data, cfg.seed)
    device = pick_device(cfg.model.device)
    policy, tokenizer, model_path = load_trained_policy(cfg, run_dir, device)   # names a missing or damaged checkpoint
    reference = load_causal_lm(model_path, pick_dtype(cfg.model.dtype, device)[0]).to(device)
    return gold_evaluate(policy.eval(), reference.eval(), tokenizer, [r.prompt for r in data.eval],
                         SyntheticTask(settings.task_seed), eval_seed(cfg.seed) if seed is None else seed,
                         samples_per_prompt or settings.eval_samples, with_draws=with_draws)
