"""Each algorithm against a baseline (DPO unless told otherwise), paired.

Two runs of one suite at the same seed train on the same records in the same order and are evaluated on the same
held-out pairs and prompts, against the same reference outputs, by the same judge. So the differences are taken
seed by seed (and, for the win rate, prompt by prompt) before they are averaged: what is common to both runs of a
seed cancels, and the interval is the one the question "is X better than DPO?" needs.

A pair of runs that differs in something that must be equal for a fair comparison (model, data, lengths, budget,
evaluation, judge) is reported with the keys that differ, never silently compared.
"""
from __future__ import annotations

import math
from pathlib import Path

from pobench.config import flatten
from pobench.errors import PobenchError
from pobench.eval.generations import read_generations, unfinished_evaluation
from pobench.eval.head_to_head import FILE as HEAD_TO_HEAD, answers_digest, read_comparisons
from pobench.report.collect import judge_label, read_json, same_judge
from pobench.report.convergence import BUDGET, accuracy_auc, run_curves
from pobench.report.leaderboard import METRICS
from pobench.report.stats import holm, mean_ci, t_test_p

DEFAULT_BASELINE = "dpo"
NO_BASELINE = "none"
ACC_AUC = "held_out_acc_auc"   # how fast: held-out accuracy's mean over the range (records or pairs) every run covers
# the differences measured on the held-out pairs that choose a grid point (grid.SELECT): no test where a grid chose
ON_VALIDATION = ("held_out_acc", ACC_AUC)
# the leaderboard's results and the speed of learning, as differences; training time as a ratio instead (a cost)
COSTS = ("train_time_s", "reference_s", "pool_s", "pairs_per_s")
DELTA_METRICS = (tuple((c, label) for c, label in METRICS if c not in COSTS)
                 + ((ACC_AUC, "held-out acc AUC"),))
# config.yaml keys (dotted prefixes) that may differ between an algorithm's run and the baseline's of one seed; every
# other key must be equal. Learning rate and the algorithms' own parameters are what a tuning grid varies; the rest
# change how a run is computed or logged, not what it computes (up to float rounding), or are compared as results
# (steps and global batch below; device and hardware with the software). The pool's keys follow SAMPLE_KEYS.
HOW_COMPUTED = ("seed", "description", "train.batch_size", "train.grad_accum", "train.max_steps", "train.log_every",
                "train.save_every", "train.logps_chunk", "train.shared_prompt", "train.deterministic",
                "train.tensorboard", "train.wandb", "model.device", "model.attn_implementation",
                "model.gradient_checkpointing", "model.compile", "model.compile_decoding", "eval.batch_size",
                "eval.bootstrap", "eval.judge_decoder", "eval.judge_check_pairs")
FREE_CONFIG = HOW_COMPUTED + ("algorithm.", "algorithm_name", "suite", "train.lr", "pool.")


def top_p_draws(method, config: dict) -> str:
    """What model.top_p_method draws in a run of this (flattened) config: "reject" only where it draws by rejection
    (pool or evaluation sampling with a nucleus, on the transformers backend: pobench.generation.rejects); the
    nucleus searches, and "reject" anywhere else, make the same tokens."""
    from pobench.generation import rejects
    if method == "reject":
        pool = config.get("pool.backend", "transformers") == "transformers" and \
            rejects(config.get("pool.temperature", 0.8), config.get("pool.top_p", 0.95))
        if pool or rejects(config.get("eval.temperature", 0.0), config.get("eval.top_p", 1.0)):
            return "reject"
    return "a nucleus search"


# keys whose values name several ways to the same draws: compared by what they draw
DRAWS_ALIKE = {"model.top_p_method": top_p_draws}

# the pool keys that must be equal, by what both runs' samplers use: a stored pool (source), a generated one (how it
# was drawn and labelled), samples drawn during training (OnMC-PO, online DPO: how they are drawn and labelled)
SAMPLE_KEYS = {
    "pool": (),                                     # where it came from: the resolved `pool_source` below
    "generated": ("pool.num_samples", "pool.seed"),
    "drawn": ("pool.temperature", "pool.top_p", "pool.max_new_tokens", "pool.backend", "pool.reward_model",
              "pool.rm_steps"),
}
# run-table columns (train_summary.json, eval.json) that must be equal: the training budget and the judge
SAME_RESULT = (("steps", "optimizer steps"), ("global_batch_size", "global batch"), ("judge", "judge"),
               ("eval_set", "eval set"), ("n_prompts", "eval prompts"), ("data_digest", "records"),
               ("reward_model", "reward model"), ("pool_source", "candidate pool"),
               ("data_order_digest", "records trained on, in order"),
               # AlpacaEval 1's reference outputs (text-davinci-003's) or 2's (GPT-4-turbo's): other win-rate scales
               ("reference_generator", "reference outputs by"))
# the default judge's name prefix: a reward model trained for each seed on training records that seed's runs did not
# see, so it differs between seeds (and is the same for every algorithm of one seed)
AUTO_JUDGE = "auto:"
# env.json's code, package and hardware differences are named with this prefix: they can move numbers by themselves
SOFTWARE = "software: "


def _kept(key: str, prefixes) -> bool:
    return any(key == p or (p.endswith(".") and (key.startswith(p) or key == p[:-1])) for p in prefixes)


def grid_keys(runs) -> dict:
    """{algorithm: the config keys its grid points set differently}: what its tuning varied is free against the
    baseline, like the learning rate (`--grid 'lr=...;warmup_ratio=0,0.1'` picks a warmup per algorithm)."""
    out = {}
    for algo, frame in runs.groupby("algo", sort=False):
        points = [flatten(f["config"].iloc[0]) for _, f in frame.groupby("grid_point", sort=True)]
        keys = set().union(*points) if len(points) > 1 else set()
        out[algo] = tuple(sorted(k for k in keys if len({repr(p.get(k)) for p in points}) > 1 and k != "seed"))
    return out


def _shown(v):
    """A count as the integer it is (a table column with a missing value holds counts as floats)."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def differences(run: dict, base: dict, tuned: tuple = (), free_config: tuple = FREE_CONFIG) -> list[str]:
    """'key: run's value vs the baseline's' for every key that must be equal and is not. `tuned`: keys the two
    algorithms' grids varied (free). A key only one config has (written by another pobench version) is not
    compared; nor are `data.*` settings when both runs name the same records (data.json's digest)."""
    out = []
    mine, theirs = flatten(run.get("config")), flatten(base.get("config"))
    shared = set(run.get("samples") or ()) & set(base.get("samples") or ())
    pool_keys = tuple(k for kind in sorted(shared) for k in SAMPLE_KEYS[kind])
    if "pool.rm_steps" in pool_keys and "auto" not in (mine.get("pool.reward_model"), theirs.get("pool.reward_model")):
        pool_keys = tuple(k for k in pool_keys if k != "pool.rm_steps")   # trains only the auto reward model
    free = free_config + tuple(tuned)
    if _present(run.get("data_digest")) and run.get("data_digest") == base.get("data_digest"):
        free += ("data.",)
    for key in sorted(set(mine) & set(theirs)):
        alike = DRAWS_ALIKE.get(key, lambda v, _: v)
        if (not _kept(key, free) or _kept(key, pool_keys)) and alike(mine[key], mine) != alike(theirs[key], theirs):
            out.append(f"{key} {mine[key]!r} vs {theirs[key]!r}")
    for column, label in SAME_RESULT:
        a, b = run.get(column), base.get(column)
        if column == "judge":   # by name and identity, an identity not recorded (an older eval.json) read as unknown
            if _present(a) and _present(b) and not same_judge(run, base):
                out.append(f"{label} {a} vs {b}")
            continue
        if _present(a) and _present(b) and a != b:
            out.append(f"{label} {_shown(a)} vs {_shown(b)}")
    mine, theirs = run.get("software") or {}, base.get("software") or {}
    for key in sorted(set(mine) & set(theirs)):
        if mine[key] != theirs[key]:
            out.append(f"{SOFTWARE}{key} {mine[key]} vs {theirs[key]}")
    return out


def code_differences(run: dict, other: dict) -> list[str]:
    """'algorithm code <file> <sha1> vs <sha1>' (and the sampler's) where two runs of one algorithm were trained by
    other versions of its file (a plugin edited between seeds). Not part of differences(): between two algorithms
    the code differs by design; a run made before the record (no `code`) is not compared."""
    out, named = [], set()
    mine, theirs = (r.get("code") if isinstance(r.get("code"), dict) else {} for r in (run, other))
    for part in ("algorithm", "sampler"):
        a, b = mine.get(part), theirs.get(part)
        if a and b and a["sha1"] != b["sha1"] and (a["file"], a["sha1"]) not in named:
            named.add((a["file"], a["sha1"]))   # a plugin holding both the algorithm and its sampler: named once
            out.append(f"{part} code {a['file'] or b['file']} {a['sha1']} vs {b['sha1']}")
    return out


def unlike_across_seeds(runs, chosen: dict) -> dict:
    """{algorithm: what differs between its runs of other seeds at its chosen grid point}, each seed's run against
    its lowest seed's: a leaderboard row averages them as one setting (e.g. seed 1 run for 10 steps, seeds 2-3
    later for 100 into the same folder), so only the seed and how the runs were computed may differ."""
    out = {}
    for algo, point in chosen.items():
        by_seed = _seed_runs(runs[(runs["algo"] == algo) & (runs["grid_point"] == point)])
        if len(by_seed) < 2:
            continue
        first, *others = sorted(by_seed)
        unlike = []
        # pool keys are compared by what the sampler uses (differences' SAMPLE_KEYS), as between algorithms
        free = HOW_COMPUTED + ("pool.",)
        for seed in others:
            found = differences(by_seed[seed], by_seed[first], (), free) + \
                code_differences(by_seed[seed], by_seed[first])
            unlike += [f"seed {seed}: {d}" for d in by_design_across_seeds(found, (by_seed[seed], by_seed[first]))]
        if unlike:
            out[algo] = {"against_seed": first, "differences": unlike}
    return out


def by_design_across_seeds(found: list[str], pair: tuple) -> list[str]:
    """differences() between two runs of other seeds, less what differs between seeds by design."""
    if all(flatten(r.get("config")).get("data.raw_rejected") == "random" for r in pair):
        found = [d for d in found if not d.startswith("records ")]   # drawn per seed, by design
    found = [d for d in found if not d.startswith("records trained on")]   # each seed's order, by design
    if all(str(r.get("judge") or "").startswith(AUTO_JUDGE) for r in pair):
        found = [d for d in found if not d.startswith("judge ")]     # each seed's own, by design
    return found


def unlike_rows(runs, chosen: dict, reference: str | None = None) -> dict:
    """{algorithm: what differs between its leaderboard row and the reference row} for the rows that differ in what a
    fair comparison needs equal (differences(), as against the baseline: learning rate, the algorithms' own
    parameters and what either grid tuned are free). The reference is `reference` (the baseline) where the suite has
    it, else the first row: the leaderboard sets every row beside every other whether or not a baseline table checks
    them, so 20 steps beside 300 must be named there too. Runs are compared at the seeds both rows have (`seeds`),
    where the data order is the same by design; rows that share no seed, at their lowest seeds (`across_seeds`: this
    row's, the reference's), less what differs between seeds by design."""
    if not chosen:
        return {}
    ref = reference if reference in chosen else next(iter(chosen))

    def at_point(algo):
        return _seed_runs(runs[(runs["algo"] == algo) & (runs["grid_point"] == chosen[algo])])

    base, tuned_keys, out = at_point(ref), grid_keys(runs), {}
    for algo in chosen:
        if algo == ref:
            continue
        mine = at_point(algo)
        tuned = tuned_keys.get(algo, ()) + tuned_keys.get(ref, ())
        seeds, across, found = sorted(set(mine) & set(base)), None, []
        for s in seeds:
            found += [d for d in differences(mine[s], base[s], tuned) if d not in found]
        if not seeds and mine and base:
            across = [min(mine), min(base)]
            pair = (mine[across[0]], base[across[1]])
            found = by_design_across_seeds(differences(*pair, tuned), pair)
        if found:
            out[algo] = {"against": ref, "seeds": seeds, "across_seeds": across, "differences": found}
    return out


def tested(differences: list[float]) -> dict:
    """mean_ci of paired differences, with `p`: the two-sided t-test of no difference (p < 0.05 exactly when the
    interval excludes 0); `p_holm` is added once the whole table is known (adjust_for_many)."""
    return {**mean_ci(differences), "p": t_test_p(differences)}


def adjust_for_many(rows: list[dict]) -> None:
    """Holm's correction per column over the algorithms compared with the baseline: each difference's `p_holm`.
    One baseline and k algorithms make k tests of one question per column; `p_holm < 0.05` keeps the chance that
    any of the k is called different by luck alone at 5%. A row not `alike` (its p withdrawn) is no test and is left
    out of the family."""
    # the per-prompt and per-pair rows are not tests (over_units): only the seed-level differences are corrected
    table = [r["delta"] for r in rows]
    for column in {c for t in table for c in t}:
        cis = [t.get(column) for t in table]
        for ci, p in zip(cis, holm([(ci or {}).get("p") for ci in cis])):
            if ci is not None:
                ci["p_holm"] = p


def over_units(differences: dict) -> dict:
    """{unit (prompt or pair): its differences at each seed} -> each unit's mean over seeds, then their mean and
    t-interval over units, and how many units came out above, at and below zero. The interval describes these
    trained models (how consistently they differ across prompts or pairs), not the algorithms: the units of one
    seed share that seed's training luck, which the spread over units never sees (one seed gives an interval as
    narrow as three), so it carries no p and no mark; the seed-level differences (`delta`) answer "is X better"."""
    means = [sum(d) / len(d) for d in differences.values()]
    return {"difference": mean_ci(means), "better": sum(m > 0 for m in means), "tied": sum(m == 0 for m in means),
            "worse": sum(m < 0 for m in means)}


def prompt_paired(pairs: list[tuple[dict, dict]]) -> tuple[dict | None, list[str]]:
    """The win rate's paired difference: on every prompt both runs of a seed had judged, the algorithm's preference
    over the (shared) reference output minus the baseline's, averaged over seeds per prompt; mean and t-interval
    over prompts, and how many prompts came out better, tied or worse. (None, notes) when nothing pairs up."""
    per_prompt: dict = {}
    unmatched, other_reference = 0, 0
    for gen, base in pairs:
        unmatched += len(set(gen) ^ set(base))
        for key in sorted(set(gen) & set(base), key=str):   # a fixed order: the same sums every time
            a, b = gen[key], base[key]
            if a["preference"] is None or b["preference"] is None:
                continue
            if a.get("reference_output") != b.get("reference_output"):
                other_reference += 1
            per_prompt.setdefault(key, []).append(a["preference"] - b["preference"])
    notes = []
    if unmatched:
        notes.append(f"{unmatched} eval prompts in only one of the two runs")
    if other_reference:
        notes.append(f"reference outputs differ on {other_reference} prompts")
    if not per_prompt:
        return None, notes
    return {**over_units(per_prompt), "prompts": len(per_prompt)}, notes


def evaluated_generations(run_dir, notes: list[str]) -> dict | None:
    """A run's generations.jsonl rows; those of an evaluation that did not finish are left out (their eval.json,
    which says what they were judged by, is missing), with a note naming the folder."""
    problem = unfinished_evaluation(run_dir)
    if problem:
        notes.append(problem)
        return None
    return read_generations(run_dir)


def read_held_out_pairs(run_dir) -> dict | None:
    """{pair id: final held-out reward margin} of a run's held_out_pairs.json (None for runs made before it)."""
    path = Path(run_dir) / "held_out_pairs.json"
    data = read_json(path, required=False)
    if data is None:
        return None
    ids, margins = (data.get("ids"), data.get("margins")) if isinstance(data, dict) else (None, None)
    # a margin that was NaN (a diverged policy) is written as null (pobench.engine.io.json_text)
    if not isinstance(ids, list) or not isinstance(margins, list) or len(ids) != len(margins) or not all(
            m is None or (isinstance(m, (int, float)) and not isinstance(m, bool)) for m in margins):
        raise PobenchError(f"{path}: expected 'ids' and 'margins', two lists of one entry per held-out pair")
    if len(set(map(str, ids))) != len(ids):
        ids = list(range(len(ids)))   # no usable ids: the held-out pairs come in the same order for every run
    return dict(zip(map(str, ids), margins))


def pair_credit(margin: float | None) -> float:
    """1 for a pair ranked right, 0 wrong, 0.5 tied: the trainer's rewards/accuracies, pair by pair. A NaN margin
    (null in the file) ranks nothing right, as the trainer's accuracy counts it."""
    return 0.0 if margin is None else 1.0 if margin > 0 else 0.5 if margin == 0 else 0.0


def pair_paired(pairs: list[tuple[dict, dict]]) -> dict | None:
    """Held-out reward accuracy paired pair by pair: on every held-out pair, 1 where the algorithm's final implicit
    reward ranks the chosen answer above the rejected one, minus the same for the baseline's; averaged over seeds
    per pair; mean and t-interval over pairs, and the pairs won (only the algorithm right), tied and lost."""
    per_pair: dict = {}
    for mine, base in pairs:
        for key in sorted(set(mine) & set(base)):
            per_pair.setdefault(key, []).append(pair_credit(mine[key]) - pair_credit(base[key]))
    if not per_pair:
        return None
    return {**over_units(per_pair), "pairs": len(per_pair)}


def head_to_head(pairs: list[tuple[dict, dict, tuple]]) -> tuple[dict | None, list[str]]:
    """The algorithm's answers judged directly against the baseline's (`pobench compare`, head_to_head.json in the
    algorithm's run folders): win rate, mean and t-interval over the seeds compared, or with one seed its bootstrap
    interval over prompts; prompts better, tied and worse summed over seeds. `pairs`: (run, baseline run, their
    generations). A comparison of answers either run has since replaced is left out and noted."""
    found, stale, judges = [], 0, set()
    for mine, base, (gen, base_gen) in pairs:
        path = Path(mine["run_dir"]) / HEAD_TO_HEAD
        stored = read_comparisons(path).get(base.get("in_suite") or "")
        if not stored:
            continue
        if gen is None or base_gen is None or stored.get("answers_digest") != answers_digest(gen, base_gen):
            stale += 1
            continue
        found.append(stored)
        judges.add(judge_label(stored["judge"], path))   # named as the leaderboard names judges
    notes = [f"head to head of {stale} seed(s) left out: answers changed since (pobench compare again)"] if stale else []
    if not found:
        return None, notes
    win = mean_ci([c["win_rate"] for c in found])
    if len(found) == 1:
        win["lo"], win["hi"] = found[0]["win_rate_ci95"]
    return {"win_rate": win, "seeds": [c["seed"] for c in found],
            **{k: sum(c[k] for c in found) for k in ("better", "tied", "worse")},
            "judge": sorted(judges)}, notes


def _seed_runs(frame) -> dict:
    return {int(r["seed"]): r for r in frame.to_dict("records")}


def versus(runs, chosen: dict, baseline: str, curves=None, x: str = BUDGET) -> dict | None:
    """One suite: every other algorithm at its chosen grid point against `baseline` at its own, seed by seed.
    `curves`: the suite's curve table, for the held-out accuracy's AUC (ACC_AUC), taken over the range that the
    compared runs (both algorithms' at the seeds both have) cover: the runs of neither, such as unchosen grid points,
    other algorithms or a seed only one has, must not move it. None when the suite has no run of the baseline."""
    if baseline not in chosen:
        return None
    by_run = run_curves(curves, x) if curves is not None and len(curves) else {}

    def at_point(algo):
        return _seed_runs(runs[(runs["algo"] == algo) & (runs["grid_point"] == chosen[algo])])

    base = at_point(baseline)
    tuned_keys = grid_keys(runs)
    points = runs.groupby("algo")["grid_point"].nunique().to_dict()
    rows = []
    for algo in chosen:
        if algo == baseline:
            continue
        mine = at_point(algo)
        seeds = sorted(set(mine) & set(base))
        row = {"algo": algo, "grid_point": chosen[algo], "seeds": seeds,
               "chosen_on_held_out": points.get(algo, 1) > 1 or points.get(baseline, 1) > 1, "acc_auc_range": None,
               "unpaired_seeds": sorted(set(mine) ^ set(base)), "delta": {}, "time_ratio": None,
               "prompt_paired": None, "pair_paired": None, "head_to_head": None, "unlike_baseline": [],
               "alike": True}
        if seeds:
            keys = {(a, s): (a, chosen[a], s) for a in (algo, baseline) for s in seeds}
            auc, row["acc_auc_range"] = accuracy_auc(by_run, list(keys.values()), x)
            for s in seeds:
                mine[s][ACC_AUC], base[s][ACC_AUC] = auc.get(keys[algo, s]), auc.get(keys[baseline, s])
            for column, _ in DELTA_METRICS:
                diffs = [mine[s].get(column) - base[s].get(column) for s in seeds
                         if _present(mine[s].get(column)) and _present(base[s].get(column))]
                row["delta"][column] = tested(diffs)
                if row["chosen_on_held_out"] and column in ON_VALIDATION:
                    # the pairs that picked the best of several points: the difference leans towards the gridded
                    # side by selection alone, so a t-test of it would count that lean as evidence
                    row["delta"][column]["p"] = None
            ratios = [mine[s]["train_time_s"] / base[s]["train_time_s"] for s in seeds
                      if _present(mine[s].get("train_time_s")) and _present(base[s].get("train_time_s"))
                      and base[s]["train_time_s"] > 0]
            row["time_ratio"] = mean_ci(ratios)
            unlike = []
            tuned = tuned_keys.get(algo, ()) + tuned_keys.get(baseline, ())
            for s in seeds:
                unlike += [d for d in differences(mine[s], base[s], tuned) if d not in unlike]
            unfinished: list[str] = []
            generations = [(evaluated_generations(mine[s]["run_dir"], unfinished),
                            evaluated_generations(base[s]["run_dir"], unfinished)) for s in seeds]
            judged = [(a, b) for a, b in generations if a is not None and b is not None]
            paired, notes = prompt_paired(judged)
            # other eval prompts or reference outputs make the win rates unlike too; the notes added below only say
            # which files the per-prompt and head-to-head rows (never tested) could not use
            row["alike"] = not (unlike or notes)
            if not row["alike"]:
                # a difference between runs that differ in budget, data or evaluation measures that difference as
                # much as the algorithm: no test of it, and no place in the Holm family of those that are tests
                for ci in row["delta"].values():
                    ci["p"] = None
            if paired is not None and len(judged) < len(seeds):
                notes.append(f"per prompt: {len(judged)} of the {len(seeds)} seeds (the others have no "
                             f"generations.jsonl on one side)")
            notes += unfinished
            row["prompt_paired"] = paired
            row["head_to_head"], stale = head_to_head([(mine[s], base[s], g) for s, g in zip(seeds, generations)])
            notes += stale
            margins = [(read_held_out_pairs(mine[s]["run_dir"]), read_held_out_pairs(base[s]["run_dir"])) for s in seeds]
            row["pair_paired"] = pair_paired([(a, b) for a, b in margins if a is not None and b is not None])
            row["unlike_baseline"] = unlike + [n for n in notes if n not in unlike]
        rows.append(row)
    adjust_for_many(rows)
    return {"baseline": baseline, "grid_point": chosen[baseline], "seeds": sorted(base), "rows": rows}
