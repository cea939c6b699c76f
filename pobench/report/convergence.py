"""Convergence: held-out pair metrics at fixed points of the training budget (interpolated), the budget needed to
reach a target accuracy, and the area under each curve, per run and then over seeds."""
from __future__ import annotations

from pobench.report.stats import area_under_curve, interpolate_at, mean_ci, value_at_first_crossing, x_at_target

ACCURACY = "eval/rewards/accuracies"
HEADLINE = (ACCURACY, "eval/rewards/margins", "eval/loss", "gold/win_rate", "gold/reward", "gold/kl")  # on screen;
# the JSON report has every eval/* and gold/* metric
# The x axis: training records consumed (steps x global batch), the budget every algorithm of a comparison
# shares. Not pairs: pairs per record are the algorithm's own (RSO trains up to k/2 per record, a ranking objective
# one per candidate), and on a pairs axis RSO's first quarter of training was compared with DPO's whole run.
BUDGET = "records_seen"
AXES = {"records": BUDGET, "pairs": "pairs_seen"}   # `pobench report --axis`: pairs for pairs' sake (DESIGN's view)
UNITS = {v: k for k, v in AXES.items()}
DEFAULT_TARGET = 0.6   # held-out reward accuracy a run must reach for "records (or pairs) to target"; chance is 0.5
DEFAULT_POINTS = 4     # evenly spaced budget points up to the range every run of the table covers


def run_curves(curves, x: str = BUDGET) -> dict:
    """{(algo, grid_point, seed): curve rows sorted by x} of one suite's curve table."""
    out = {}
    for key, frame in curves.groupby(["algo", "grid_point", "seed"], sort=True):
        out[key] = frame.sort_values(x if x in frame else "step", kind="stable")
    return out


def common_range(by_run: dict, metric: str = ACCURACY, x: str = BUDGET) -> float | None:
    """The largest x every run has evaluated `metric` at: curves compare only over a shared range."""
    ends = []
    for frame in by_run.values():
        xs = frame.loc[frame[metric].notna(), x].dropna() if metric in frame and x in frame else []
        if len(xs) and xs.max() > 0:   # a run without its budget logged, or not trained, bounds nothing
            ends.append(float(xs.max()))
    return min(ends) if ends else None


def at_chosen_points(by_run: dict, chosen: dict) -> dict:
    """run_curves' {(algo, grid_point, seed): curve} of the runs at each algorithm's chosen grid point: the runs a
    table of the chosen rows shows."""
    return {k: f for k, f in by_run.items() if k[0] in chosen and chosen[k[0]] == k[1]}


def default_points(x_max: float | None, n: int = DEFAULT_POINTS) -> list[float]:
    if not x_max:
        return []
    return [round(x_max * i / n, 2) for i in range(1, n + 1)]


def curve(frame, metric: str, x: str = BUDGET) -> tuple[list, list]:
    if metric not in frame or x not in frame:
        return [], []
    rows = frame[frame[metric].notna() & frame[x].notna()]
    return rows[x].tolist(), rows[metric].tolist()


def run_summary(frame, metric: str, points: list[float], x_max: float | None, target: float | None,
                x: str = BUDGET) -> dict:
    xs, ys = curve(frame, metric, x)
    return {"at": interpolate_at(xs, ys, points),
            "auc": area_under_curve(xs, ys, x_max) if x_max else None,
            "to_target": x_at_target(xs, ys, target) if target is not None else None}


def eval_metrics(curves) -> list[str]:
    """Every metric measured at evaluation steps: held-out pairs (eval/*) and, on a suite with a known
    reward, the gold metrics of the policy's samples (gold/*)."""
    keys = [c for c in curves.columns if c.startswith("eval/") or c.startswith("gold/")]
    return [k for k in HEADLINE if k in keys] + sorted(k for k in keys if k not in HEADLINE)


def convergence(curves, chosen: dict, points: list[float] | None = None, target: float = DEFAULT_TARGET,
                x: str = BUDGET) -> dict:
    """One suite: for every algorithm at its chosen grid point, each eval/* metric at `points` (mean and CI over
    seeds), its area under the curve over [0, x_max] (the mean value over training), and, for held-out
    accuracy, the records (or pairs: x) needed to reach `target` (mean over the seeds that reached it, and how many
    did)."""
    # the range (and the default points) of the runs the table shows: an unchosen grid point's run that stopped
    # short cut every row's AUC and points, as it moved the matched-KL levels
    shown = at_chosen_points(run_curves(curves, x), chosen)
    x_max = common_range(shown, x=x)
    points = list(points) if points else default_points(x_max)
    out = {"axis": x, "points": points, "x_max": x_max, "target": target, "metrics": {}}
    for metric in eval_metrics(curves):
        rows = []
        for algo, point in chosen.items():
            seeds = [run_summary(f, metric, points, x_max, target if metric == ACCURACY else None, x)
                     for (a, g, _), f in shown.items() if a == algo and g == point]
            if not seeds:
                continue
            reached = [s["to_target"] for s in seeds if s["to_target"] is not None]
            rows.append({
                "algo": algo, "grid_point": point, "seeds": len(seeds),
                "at": [mean_ci([s["at"][i] for s in seeds]) for i in range(len(points))],
                "auc": mean_ci([s["auc"] for s in seeds]),
                **({"to_target": mean_ci(reached), "reached": f"{len(reached)}/{len(seeds)}"}
                   if metric == ACCURACY else {}),
            })
        out["metrics"][metric] = rows
    return out


def accuracy_auc(by_run: dict, keys, x: str = BUDGET) -> tuple[dict, float | None]:
    """({key: held-out accuracy AUC}, the range) for the runs `keys` of run_curves' {key: curve}, over the range all
    of them cover: runs compared with each other are compared over one range, which no other run bounds."""
    runs = {k: by_run[k] for k in keys if k in by_run}
    x_max = common_range(runs, x=x)
    return {k: (area_under_curve(*curve(f, ACCURACY, x), x_max) if x_max else None) for k, f in runs.items()}, x_max


FRONTIER = ("gold/kl", "gold/reward")  # (KL, reward) logged at evaluation steps by suites with a known reward


def matched_kl(curves, chosen: dict, n: int = DEFAULT_POINTS, kl: str = FRONTIER[0], value: str = FRONTIER[1]) -> dict:
    """Reward at matched KL: for every algorithm at its chosen grid point, `value` at the moment its `kl` first
    reached each of n evenly spaced KL levels (up to the largest KL every run of the table reached), mean and CI over
    seeds. An algorithm that gains less per record can still sit on a better reward-KL frontier; this table shows
    it."""
    if kl not in curves or value not in curves:
        return {}
    by_run = run_curves(curves)
    reach = []
    # the levels are those of the runs the table compares: an unchosen grid point's run that stopped at a low KL
    # moved every row's levels, as the AUC's range was moved (accuracy_auc)
    for frame in at_chosen_points(by_run, chosen).values():
        ks = frame[kl].dropna()
        if len(ks):
            reach.append(float(ks.max()))
    top = min(reach) if reach else 0.0
    if top <= 0:
        return {}
    levels = [top * i / n for i in range(1, n + 1)]  # unrounded: the last level is exactly reached
    rows = []
    for algo, point in chosen.items():
        seeds = []
        for (a, g, _), frame in by_run.items():
            if a == algo and g == point:
                both = frame.dropna(subset=[kl, value])
                seeds.append([value_at_first_crossing(both[kl].tolist(), both[value].tolist(), k) for k in levels])
        if seeds:
            rows.append({"algo": algo, "grid_point": point, "seeds": len(seeds),
                         "at": [mean_ci([s[i] for s in seeds]) for i in range(len(levels))]})
    return {"kl": kl, "value": value, "levels": levels, "rows": rows}
