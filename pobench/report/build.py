"""results/ -> one JSON-able report: per suite, the leaderboard, the tuning grid and the convergence tables."""
from __future__ import annotations

from pathlib import Path

from pobench.errors import PobenchError
from pobench.report.collect import collect
from pobench.report.convergence import AXES, DEFAULT_TARGET, convergence, matched_kl
from pobench.report.leaderboard import (about, grid_table, held_out_loss_not_finite, leaderboard, mixed_evaluations,
                                        spread)
from pobench.report.versus import DEFAULT_BASELINE, NO_BASELINE, unlike_across_seeds, unlike_rows, versus


def build_report(root: Path, select: str = "acc", points: list[float] | None = None,
                 target: float = DEFAULT_TARGET, suites: list[str] | None = None,
                 baseline: str = DEFAULT_BASELINE, axis: str = "records") -> tuple[dict, object, object]:
    """(report, runs, curves): the report dict is what --format json prints; runs and curves (pandas) feed
    the plots. `baseline`: the algorithm every other one is compared with, seed by seed ("none": no comparison;
    the default, DPO, only in suites that have it). `axis`: what the convergence tables and plots run on, records
    (the shared budget) or pairs."""
    from pobench.report.grid import SELECT
    if select not in SELECT:
        raise PobenchError(f"--select {select}: choose one of {', '.join(SELECT)}")
    if axis not in AXES:
        raise PobenchError(f"--axis {axis}: choose one of {', '.join(AXES)}")
    x = AXES[axis]
    runs, curves = collect(Path(root))
    if runs.empty:
        raise PobenchError(f"{root}: no finished runs (no */train_summary.json); run `pobench run` first")
    if suites:
        unknown = sorted(set(suites) - set(runs["suite"]))
        if unknown:
            raise PobenchError(f"{root}: no runs of suite '{unknown[0]}' (found: {', '.join(sorted(set(runs['suite'])))})")
        runs = runs[runs["suite"].isin(suites)]
        curves = curves[curves["suite"].isin(suites)]
    if baseline not in (DEFAULT_BASELINE, NO_BASELINE) and baseline not in set(runs["algo"]):
        raise PobenchError(f"--baseline {baseline}: no runs of that algorithm under {root} "
                           f"(found: {', '.join(sorted(set(runs['algo'])))}; 'none' turns the comparison off)")
    report = {"results": str(root), "selection": {"metric": select, "target": target},
              "baseline": None if baseline == NO_BASELINE else baseline, "axis": x, "suites": []}
    for suite, suite_runs in runs.groupby("suite", sort=True):
        suite_curves = curves[curves["suite"] == suite]
        chosen, grid_rows = grid_table(suite_runs, suite_curves, select, x)
        spreads = spread(grid_rows)
        report["suites"].append({
            "suite": suite, **about(suite_runs),
            "leaderboard": leaderboard(suite_runs, chosen, spreads),
            "unlike_across_seeds": unlike_across_seeds(suite_runs, chosen),
            "mixed_evaluations": mixed_evaluations(suite_runs, chosen),
            "held_out_loss_not_finite": held_out_loss_not_finite(suite_runs),
            "unlike_rows": unlike_rows(suite_runs, chosen, None if baseline == NO_BASELINE else baseline),
            "grid": grid_rows if any(s["points"] > 1 for s in spreads.values()) else [],
            "spread": spreads,
            "versus": versus(suite_runs, chosen, baseline, suite_curves, x) if baseline != NO_BASELINE else None,
            "convergence": convergence(suite_curves, chosen, points, target, x),
            "matched_kl": matched_kl(suite_curves, chosen),
        })
    return report, runs, curves
