"""The leaderboard of one suite: each algorithm at its best grid point (chosen on held-out pairs), mean and 95%
t-interval over seeds of every result; the grid itself, with the spread of the validation metric."""
from __future__ import annotations

from pobench.report.collect import same_judge
from pobench.report.convergence import BUDGET, accuracy_auc, run_curves
from pobench.report.grid import SELECT, choose_best
from pobench.report.stats import mean_ci

# runs column -> column label; the order of the leaderboard's columns
METRICS = (
    ("win_rate", "win rate"), ("lc_win_rate", "LC win rate"), ("reward_mean", "RM score"), ("kl", "KL"),
    ("avg_length", "length"), ("gold_win_rate", "gold/win_rate"), ("gold_reward", "gold/reward"),
    ("gold_kl", "gold/kl"), ("gold_length", "gold/length"), ("held_out_acc", "held-out acc"),
    ("train_time_s", "train s"), ("reference_s", "ref s"), ("pool_s", "pool s"), ("pairs_per_s", "pairs/s"),
)  # gold_*: suites with a known reward: gold_eval.json, the trainer's own gold evaluation of the final policy


def _values(frame, column: str) -> list:
    return frame[column].tolist() if column in frame else []


def _unique(frame, column: str) -> list:
    if column not in frame:
        return []
    return sorted({str(v) for v in frame[column].tolist() if v is not None and v == v})


def scoring_seeds(seeds_by_point: dict) -> tuple[dict, str]:
    """({point: the seeds it is scored on}, how) for one algorithm's grid points, from {point: the seeds whose runs
    hold the validation metric}. A mean over fewer seeds swings further, so a point run on one seed could win on
    that seed's luck against points run on three: every point is scored on the seeds all of them share ("shared";
    "alike" when they all have the same seeds). Where they share none, each is scored on as many of its own seeds as
    the point with the fewest has, taking the seeds most points have first ("equal count"): equally noisy means,
    though not of the same seeds. A point with no value at all bounds nothing (it cannot win either way)."""
    measured = {p: set(s) for p, s in seeds_by_point.items() if s}
    out = {p: [] for p in seeds_by_point}
    if len({frozenset(s) for s in measured.values()}) <= 1:
        return {**out, **{p: sorted(s) for p, s in measured.items()}}, "alike"
    shared = set.intersection(*measured.values())
    if shared:
        return {**out, **{p: sorted(shared) for p in measured}}, "shared"
    k = min(len(s) for s in measured.values())
    have = {seed: sum(seed in s for s in measured.values()) for s in measured.values() for seed in s}
    return {**out, **{p: sorted(sorted(s, key=lambda seed: (-have[seed], seed))[:k]) for p, s in measured.items()}}, \
        "equal count"


def grid_table(runs, curves, select: str, x: str = BUDGET) -> tuple[dict, list[dict]]:
    """({algo: chosen point}, one row per algorithm x grid point with the validation metric over the seeds the
    algorithm's points are scored on (scoring_seeds: `scored_on`, `scoring`), and the tie-break, the held-out
    accuracy's AUC (`acc_auc`) of the same runs over the range they all cover (`acc_auc_range`)."""
    column = SELECT[select][0]
    by_run = run_curves(curves, x) if curves is not None and len(curves) else {}
    chosen, rows = {}, []
    for algo, frame in runs.groupby("algo", sort=True):
        frames = dict(list(frame.groupby("grid_point", sort=False)))
        measured = {point: [int(s) for s, v in zip(pf["seed"].tolist(), _values(pf, column)) if v is not None and v == v]
                    for point, pf in frames.items()}
        scored, how = scoring_seeds(measured)
        # the range of the runs the points are scored on: a seed a point is not scored on (one the other points
        # lack) cut it short and so moved the tie-break, though its own value was left out
        auc_by_run, auc_range = accuracy_auc(by_run, [(algo, p, s) for p, seeds in scored.items() for s in seeds], x)
        per_point = []
        for point, pf in frames.items():
            on = pf[pf["seed"].isin(scored[point])]
            aucs = [auc_by_run.get((algo, point, s)) for s in on["seed"].tolist()]
            per_point.append({"algo": algo, "grid_point": point, "seeds": len(pf),
                              "scored_on": scored[point], "scoring": how,
                              "validation": mean_ci(_values(on, column)), "acc_auc": mean_ci(aucs),
                              "acc_auc_range": auc_range, "win_rate": mean_ci(_values(pf, "win_rate"))})
        best = choose_best([{"point": p["grid_point"], "value": p["validation"]["mean"],
                             "tiebreak": p["acc_auc"]["mean"]} for p in per_point], select)
        chosen[algo] = best
        for p in per_point:
            rows.append({**p, "chosen": p["grid_point"] == best})
    return chosen, rows


def spread(grid_rows: list[dict]) -> dict:
    """{algo: {points, min, max, range}} of the seed-mean validation metric over the algorithm's grid."""
    out = {}
    for row in grid_rows:
        v = row["validation"]["mean"]
        s = out.setdefault(row["algo"], {"points": 0, "min": None, "max": None})
        s["points"] += 1
        if v is not None:
            s["min"] = v if s["min"] is None else min(s["min"], v)
            s["max"] = v if s["max"] is None else max(s["max"], v)
    for s in out.values():
        s["range"] = None if s["min"] is None else s["max"] - s["min"]
    return out


def _counts(frame, column: str) -> list[int]:
    """The distinct counts a column holds (a column with a missing value holds them as floats)."""
    return sorted({int(v) for v in _values(frame, column) if v is not None and v == v})


# the training budget of a row (its seeds' distinct values): without it a reader of the CSV or JSON, who sees no
# caption, could not tell rows of 20 and 300 steps apart
BUDGET_COLUMNS = ("steps", "global_batch_size")


def leaderboard(runs, chosen: dict, spreads: dict) -> list[dict]:
    rows = []
    for algo, point in chosen.items():
        frame = runs[(runs["algo"] == algo) & (runs["grid_point"] == point)]
        rows.append({"algo": algo, "grid_point": point, "grid_points": spreads[algo]["points"],
                     "seeds": sorted(int(s) for s in frame["seed"].tolist()), "judge": _unique(frame, "judge"),
                     **{col: _counts(frame, col) for col in BUDGET_COLUMNS},
                     **{col: mean_ci(_values(frame, col)) for col, _ in METRICS}})
    return rows


def evaluated_as(frame) -> str:
    """How a row's runs were evaluated, named: eval set, judge and reference (each seed's auto judge is one kind)."""
    judges = sorted({"auto" if str(j).startswith("auto:") else str(j) for j in _unique(frame, "judge")})
    return (f"eval set {', '.join(_unique(frame, 'eval_set')) or '-'}, judge {', '.join(judges) or '-'}, "
            f"reference {', '.join(_unique(frame, 'reference')) or '-'}")


def _judges(frame) -> list[dict]:
    """The distinct judges of a row's runs, as same_judge reads them (each seed's auto judge is one: "auto")."""
    out = []
    for _, r in frame.iterrows():
        j = r.get("judge")
        if j is None or j != j:
            continue
        if str(j).startswith("auto:"):
            judge = {"judge": "auto", "judge_name": "auto", "judge_identity": None}
        else:
            judge = {k: r.get(k) for k in ("judge", "judge_name", "judge_identity")}
        if judge not in out:
            out.append(judge)
    return out


def evaluated_alike(a, b) -> bool:
    """Whether two leaderboard rows' runs were evaluated alike: the same eval sets and references, and judges that
    are one (same_judge: an older eval.json, which recorded no identity, is compared by its judge's name)."""
    if _unique(a, "eval_set") != _unique(b, "eval_set") or _unique(a, "reference") != _unique(b, "reference"):
        return False
    ja, jb = _judges(a), _judges(b)
    return all(any(same_judge(x, y) for y in jb) for x in ja) and all(any(same_judge(y, x) for x in ja) for y in jb)


def mixed_evaluations(runs, chosen: dict) -> dict:
    """{algo: how its row was evaluated} where the leaderboard's rows were not all evaluated alike (a run evaluated
    again with another judge or eval set): their win rates share a column but not a scale. Empty otherwise."""
    frames = {}
    for algo, point in chosen.items():
        frame = runs[(runs["algo"] == algo) & (runs["grid_point"] == point)]
        if _unique(frame, "eval_set") or _unique(frame, "judge"):   # a row not evaluated has no win rate to mix
            frames[algo] = frame
    frames_list = list(frames.values())
    # pair by pair: an unknown identity agrees with two known ones that do not agree with each other
    if all(evaluated_alike(a, b) for i, a in enumerate(frames_list) for b in frames_list[i + 1:]):
        return {}
    return {algo: evaluated_as(frame) for algo, frame in frames.items()}


def judge_accuracies(runs) -> dict:
    """{judge: its held-out pair accuracies (one, unless a judge of that name was retrained)} for the judges that
    recorded one: each judge's own, not sorted apart from the names."""
    if "judge" not in runs or "judge_held_out_accuracy" not in runs:
        return {}
    out: dict = {}
    for j, a in zip(runs["judge"], runs["judge_held_out_accuracy"]):
        if j is not None and j == j and a is not None and a == a:
            out.setdefault(str(j), set()).add(float(a))
    return {j: sorted(out[j]) for j in sorted(out)}


def judge_accuracy_sources(runs) -> dict:
    """{judge: where its held-out pair accuracy was measured} for the judges whose figure is not from the evaluated
    runs' own held-out pairs (collect.held_out_elsewhere)."""
    if "judge" not in runs or "judge_held_out_on" not in runs:
        return {}
    out: dict = {}
    for j, on in zip(runs["judge"], runs["judge_held_out_on"]):
        if j is not None and j == j and isinstance(on, str):
            out.setdefault(str(j), set()).add(on)
    return {j: sorted(out[j]) for j in sorted(out)}


def held_out_loss_not_finite(runs) -> list[dict]:
    """[{algo, grid_point, seed, steps}] of the runs whose held-out loss was not finite at some evaluation
    (collect.held_out_loss_not_finite's steps): the tables read it as not measured, and name these runs."""
    return [{"algo": r["algo"], "grid_point": r["grid_point"], "seed": int(r["seed"]),
             "steps": list(r["held_out_loss_not_finite"])}
            for _, r in runs.iterrows() if len(r["held_out_loss_not_finite"])]


def about(runs) -> dict:
    """Who judged and what scored: named with every table."""
    kinds = _unique(runs, "judge_kind")
    return {"judge": _unique(runs, "judge"), "judge_kind": kinds,
            "judge_held_out_accuracy": judge_accuracies(runs), "judge_held_out_on": judge_accuracy_sources(runs),
            "eval_set": _unique(runs, "eval_set"), "reference": _unique(runs, "reference"),
            "lc_method": _unique(runs, "lc_method"), "length_unit": _unique(runs, "length_unit"),
            "pool_reward_model": _unique(runs, "reward_model"),
            "score_label": "gold score" if kinds == ["gold"] else "RM score"}
