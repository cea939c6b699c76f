"""Head to head: one run's answers judged directly against another run's, prompt by prompt (`pobench compare`).

`pobench eval` judges every run against a shared reference; to ask "is X better than DPO?" of a judge directly,
this puts X's answer and DPO's answer on the same prompt before the same judge, in an order drawn per prompt as
the evaluation draws it. Nothing is generated: both runs' generations.jsonl are judged again, pairwise. The two
runs must have answered the same prompts with the same decoding at the same seed (then the auto judge is the one
both were evaluated by: trained on none of the records either run trained on).

The result is stored in the first run's folder, `head_to_head.json`, keyed by the other run's folder relative to
the suite's (e.g. "dpo/seed1"), where `pobench report` finds it for its comparison with the baseline:

    {"dpo/seed1": {"against", "n_prompts", "win_rate", "win_rate_se", "win_rate_ci95", "better", "tied", "worse",
                   "identical_outputs", "answers_digest", "judge", "decoding",
                   "rows": [{"id", "preference", "policy_first", "scores"}], ...}}

win_rate = mean P(this run's answer beats the other's), ties half; better/tied/worse count prompts by preference
above, at or below one half; identical_outputs counts prompts where both answered the same text (a tie by
construction); answers_digest fingerprints the answers judged, so that a comparison whose runs were evaluated
again since is recognised as stale.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from pobench.errors import PobenchError

FILE = "head_to_head.json"
# what `pobench compare --set` may change: the judge, not what the stored answers were generated with
JUDGE_KEYS = ("judge", "judge_model", "judge_decoder", "judge_rm_steps", "judge_both_orders", "bootstrap")
# eval.* keys that must agree: the two runs answered the same prompts, drawn the same way
SAME_EVAL = ("eval_set", "eval_file", "num_prompts", "temperature", "top_p", "max_new_tokens", "seed")


def suite_relative(run_dir: Path, suite: str) -> str:
    """A run folder relative to its suite's folder ("dpo/seed1", "dpo/beta=0.1/seed2"): the key other runs file
    their comparisons with it under, the same wherever the results folder lies."""
    from pobench.eval.runner import results_root
    try:
        return Path(run_dir).resolve().relative_to((results_root(run_dir, suite) / suite).resolve()).as_posix()
    except ValueError:   # a run folder moved out of a results tree: its path is all there is to name it by
        return Path(run_dir).resolve().as_posix()


def answers_digest(mine: dict, theirs: dict) -> str:
    """What a comparison judged: both runs' answers, prompt by prompt. A run evaluated again since has other answers,
    so its stored comparison no longer applies (pobench report leaves it out)."""
    both = [[str(k), mine[k]["output"], theirs[k]["output"]] for k in sorted(set(mine) & set(theirs), key=str)]
    return hashlib.sha1(json.dumps(both, ensure_ascii=False).encode()).hexdigest()[:16]


def check_comparable(cfg, other_cfg, run_dir: Path, other_dir: Path) -> None:
    problems = []
    if cfg.suite != other_cfg.suite:
        problems.append(f"suite {cfg.suite} vs {other_cfg.suite}")
    if cfg.seed != other_cfg.seed:
        problems.append(f"seed {cfg.seed} vs {other_cfg.seed}")
    for key in SAME_EVAL:
        a, b = getattr(cfg.eval, key), getattr(other_cfg.eval, key)
        if a != b:
            problems.append(f"eval.{key} {a!r} vs {b!r}")
    # the rest of how the answers were made: the prompt's rendering and cut, compiled steps, rejection draws
    from pobench.eval.runner import decoding_record
    mine, theirs = decoding_record(cfg), decoding_record(other_cfg)
    for key in sorted(set(mine) | set(theirs)):
        if key not in ("batch_size",) + SAME_EVAL and mine.get(key) != theirs.get(key):
            problems.append(f"decoding {key} {mine.get(key)!r} vs {theirs.get(key)!r}")
    if problems:
        raise PobenchError(f"{run_dir} against {other_dir}: not comparable head to head ({'; '.join(problems)})")


def check_pair(run_dir: Path, other_dir: Path) -> tuple:
    """(config, other config, answers, other answers) of two runs that can be judged head to head, else a PobenchError
    naming what differs: the settings their stored answers were made with (the last evaluation's, which `pobench
    eval --set` may have changed), and the prompts answered."""
    from pobench.eval.generations import read_generations
    from pobench.eval.runner import load_run_config

    # read first: an unfinished evaluation has no eval.json, whose settings are compared next
    mine, theirs = read_generations(run_dir), read_generations(other_dir)
    generated, other_cfg = load_run_config(run_dir, as_evaluated=True), load_run_config(other_dir, as_evaluated=True)
    check_comparable(generated, other_cfg, run_dir, other_dir)
    for folder, rows in ((run_dir, mine), (other_dir, theirs)):
        if rows is None:
            raise PobenchError(f"{folder}: no generations.jsonl; evaluate the run first (pobench eval {folder})")
    if set(mine) != set(theirs):
        raise PobenchError(f"{run_dir} against {other_dir}: the two generations.jsonl hold different prompts "
                           f"({len(set(mine) ^ set(theirs))} in only one); evaluate both with the same settings")
    other_prompt = [k for k in mine if mine[k].get("prompt") != theirs[k].get("prompt")]   # same ids, other data
    if other_prompt:
        raise PobenchError(f"{run_dir} against {other_dir}: {len(other_prompt)} of the {len(mine)} eval prompts "
                           f"differ under the same id (first: {other_prompt[0]!r}); the runs answered other data")
    return generated, other_cfg, mine, theirs


def check_overrides(overrides: dict | None) -> None:
    for section, keys in (overrides or {}).items():
        if not isinstance(keys, dict):
            bad = [section]
        elif section != "eval":
            bad = [f"{section}.{k}" for k in keys]
        else:
            bad = [f"eval.{k}" for k in keys if k not in JUDGE_KEYS]
        if bad:
            raise PobenchError(f"--set {bad[0]}: compare judges answers already generated; it can change only "
                               f"{', '.join('eval.' + k for k in JUDGE_KEYS)}")


def head_to_head(run_dir: Path, other_dir: Path, cache_dir: Path | None = None, overrides: dict | None = None,
                 progress=None, device: str | None = None) -> dict:
    """Judge `run_dir`'s answers against `other_dir`'s; write the result into run_dir/head_to_head.json and
    return it."""
    from pobench.engine.io import atomic_write_json
    from pobench.eval import metrics as M
    from pobench.eval.runner import (build_run_judge, decoding_record, eval_items, judge_rows, load_run_config,
                                     results_root, versions)
    from pobench.models import pick_device

    started = time.time()
    run_dir, other_dir = Path(run_dir), Path(other_dir)
    check_overrides(overrides)
    generated, other_cfg, mine, theirs = check_pair(run_dir, other_dir)
    cfg = load_run_config(run_dir, overrides, as_evaluated=True)   # with the judge asked for, else the evaluation's
    keys = list(mine)
    suite_data = eval_items(cfg, [run_dir, other_dir], "pobench compare")[2] if cfg.eval.judge == "auto" else None
    cache_dir = Path(cache_dir) if cache_dir else results_root(run_dir, cfg.suite) / ".cache"
    judge = build_run_judge(cfg, suite_data, [run_dir, other_dir], cache_dir, str(pick_device(device or cfg.model.device)),
                            progress)
    task = progress.add_task(f"{cfg.algorithm_name} vs {other_cfg.algorithm_name} seed{cfg.seed}", total=None) \
        if progress else None
    verdicts = judge_rows(judge, [mine[k]["prompt"] for k in keys], [mine[k]["output"] for k in keys],
                          [theirs[k]["output"] for k in keys], cfg.eval.seed, both_orders=cfg.eval.judge_both_orders)
    if progress and task is not None:
        progress.remove_task(task)
    judged = [(k, v) for k, v in zip(keys, verdicts) if v["preference"] is not None]
    if not judged:
        raise PobenchError(f"{run_dir} against {other_dir}: the judge gave no verdict on any prompt")
    prefs = [v["preference"] for _, v in judged]
    result = {
        "run": suite_relative(run_dir, cfg.suite), "against": suite_relative(other_dir, cfg.suite),
        "suite": cfg.suite, "seed": cfg.seed, "algorithm": cfg.algorithm_name, "against_algorithm": other_cfg.algorithm_name,
        "n_prompts": len(keys), "n_unjudged": len(keys) - len(judged),
        **M.win_rate(prefs, cfg.eval.bootstrap, cfg.eval.seed),
        "better": sum(p > 0.5 for p in prefs), "tied": sum(p == 0.5 for p in prefs), "worse": sum(p < 0.5 for p in prefs),
        "identical_outputs": sum(mine[k]["output"] == theirs[k]["output"] for k in keys),
        "answers_digest": answers_digest(mine, theirs),
        "judge": judge.describe(), "judge_both_orders": cfg.eval.judge_both_orders,
        "decoding": decoding_record(generated),
        # scores (scoring judges): "policy" is this run's answer, "reference" the other run's
        "rows": [{"id": k, "preference": v["preference"], "policy_first": v["policy_first"], "scores": v["scores"],
                  **({"preference_orders": v["preference_orders"]} if "preference_orders" in v else {})}
                 for k, v in zip(keys, verdicts)],
        "time_s": round(time.time() - started, 3), "versions": versions(),
    }
    path = run_dir / FILE
    atomic_write_json(path, {**read_comparisons(path), result["against"]: result})
    return result


def read_comparisons(path: Path) -> dict:
    """{other run: comparison} of a head_to_head.json ({} when there is none)."""
    if not path.is_file():
        return {}
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PobenchError(f"{path}: not valid JSON ({e}); move it away to start anew") from None
    if not isinstance(stored, dict) or not all(isinstance(v, dict) for v in stored.values()):
        raise PobenchError(f"{path}: expected a JSON object of comparisons keyed by the other run")
    for other, comparison in stored.items():
        problem = _malformed(comparison)
        if problem:
            raise PobenchError(f"{path}: comparison '{other}': {problem}; move the file away to compare anew")
    return stored


def _malformed(c: dict) -> str | None:
    """What is wrong with a stored comparison's fields that `pobench report` reads (None when nothing is). A
    comparison without `answers_digest` (written before it was recorded) is read as stale, not as damaged."""
    from pobench.report.collect import is_number
    if not is_number(c.get("win_rate")):
        return f"'win_rate' must be a number, got {c.get('win_rate')!r}"
    # json reads NaN and Infinity: the report's mean printed them and --format json (strict JSON) crashed on them
    if not 0 <= c["win_rate"] <= 1:
        return f"'win_rate' must be a fraction in [0, 1], got {c['win_rate']!r}"
    ci = c.get("win_rate_ci95")
    if not (isinstance(ci, list) and len(ci) == 2 and all(is_number(v) and 0 <= v <= 1 for v in ci)):
        return f"'win_rate_ci95' must be [low, high], got {ci!r}"
    for key in ("seed", "better", "tied", "worse"):
        if not isinstance(c.get(key), int) or isinstance(c.get(key), bool):
            return f"'{key}' must be an integer, got {c.get(key)!r}"
    if not (isinstance(c.get("judge"), dict) and isinstance(c["judge"].get("name"), str)):
        return f"'judge' must be an object with a 'name', got {c.get('judge')!r}"
    if c.get("answers_digest") is not None and not isinstance(c["answers_digest"], str):
        return f"'answers_digest' must be text, got {c['answers_digest']!r}"
    return None
