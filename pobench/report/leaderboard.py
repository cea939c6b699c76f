"""The leaderboard of one suite: each algorithm at its best grid point (chosen on held-out pairs), mean and 95%
t-interval over seeds of every result; the grid itself, with the spread of the validation metric."""
from __future__ import annotations

from pobench.report.grid import SELECT, choose_best
from pobench.report.stats import mean_ci

# runs column -> column label; the order of the leaderboard's columns
METRICS = (
    ("win_rate", "win rate"), ("lc_win_rate", "LC win rate"), ("reward_mean", "RM score"), ("kl", "KL"),
    ("avg_length", "length"), ("gold_win_rate", "gold/win_rate"), ("gold_reward", "gold/reward"),
    ("gold_kl", "gold/kl"), ("gold_length", "gold/length"), ("held_out_acc", "held-out acc"),
    ("train_time_s", "train s"), ("pool_s", "pool s"), ("pairs_per_s", "pairs/s"),
)  # gold_*: suites with a known reward: gold_eval.json, the trainer's own gold evaluation of the final policy


def _values(frame, column: str) -> list:
    return frame[column].tolist() if column in frame else []


def _unique(frame, column: str) -> list:
    if column not in frame:
        return []
    return sorted({str(v) for v in frame[column].tolist() if v is not None and v == v})


def grid_table(runs, auc_by_run: dict, select: str) -> tuple[dict, list[dict]]:
    """({algo: chosen point}, one row per algorithm x grid point with the validation metric over seeds)."""
    column = SELECT[select][0]
    chosen, rows = {}, []
    for algo, frame in runs.groupby("algo", sort=True):
        per_point = []
        for point, pf in frame.groupby("grid_point", sort=False):
            aucs = [auc_by_run.get((algo, point, s)) for s in pf["seed"].tolist()]
            per_point.append({"algo": algo, "grid_point": point, "seeds": len(pf),
                              "validation": mean_ci(_values(pf, column)), "acc_auc": mean_ci(aucs),
                              "win_rate": mean_ci(_values(pf, "win_rate"))})
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


def leaderboard(runs, chosen: dict, spreads: dict) -> list[dict]:
    rows = []
    for algo, point in chosen.items():
        frame = runs[(runs["algo"] == algo) & (runs["grid_point"] == point)]
        rows.append({"algo": algo, "grid_point": point, "grid_points": spreads[algo]["points"],
                     "seeds": sorted(int(s) for s in frame["seed"].tolist()), "judge": _unique(frame, "judge"),
                     **{col: mean_ci(_values(frame, col)) for col, _ in METRICS}})
    return rows


def evaluated_as(frame) -> str:
    """How a row's runs were evaluated, named: eval set, judge and reference (each seed's auto judge is one kind)."""
    judges = sorted({"auto" if str(j).startswith("auto:") else str(j) for j in _unique(frame, "judge")})
    return (f"eval set {', '.join(_unique(frame, 'eval_set')) or '-'}, judge {', '.join(judges) or '-'}, "
            f"reference {', '.join(_unique(frame, 'reference_kind')) or '-'}")


def mixed_evaluations(runs, chosen: dict) -> dict:
    """{algo: how its row was evaluated} where the leaderboard's rows were not all evaluated alike (a run evaluated
    again with another judge or eval set): their win rates share a column but not a scale. Empty otherwise."""
    named = {}
    for algo, point in chosen.items():
        frame = runs[(runs["algo"] == algo) & (runs["grid_point"] == point)]
        if _unique(frame, "eval_set") or _unique(frame, "judge"):   # a row not evaluated has no win rate to mix
            named[algo] = evaluated_as(frame)
    return named if len(set(named.values())) > 1 else {}


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


def about(runs) -> dict:
    """Who judged and what scored: named with every table."""
    kinds = _unique(runs, "judge_kind")
    return {"judge": _unique(runs, "judge"), "judge_kind": kinds,
            "judge_held_out_accuracy": judge_accuracies(runs),
            "eval_set": _unique(runs, "eval_set"), "reference": _unique(runs, "reference_kind"),
            "lc_method": _unique(runs, "lc_method"), "length_unit": _unique(runs, "length_unit"),
            "pool_reward_model": _unique(runs, "reward_model"),
            "score_label": "gold score" if kinds == ["gold"] else "RM score"}
