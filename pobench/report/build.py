"""results/ -> one JSON-able report: per suite, the leaderboard, the tuning grid and the convergence tables."""
from __future__ import annotations

from pathlib import Path

from pobench.errors import PobenchError
from pobench.report.collect import collect
from pobench.report.convergence import DEFAULT_TARGET, accuracy_auc_by_run, convergence, matched_kl
from pobench.report.leaderboard import about, grid_table, leaderboard, spread


def build_report(root: Path, select: str = "acc", points: list[float] | None = None,
                 target: float = DEFAULT_TARGET, suites: list[str] | None = None) -> tuple[dict, object, object]:
    """(report, runs, curves): the report dict is what --format json prints; runs and curves (pandas) feed
    the plots."""
    from pobench.report.grid import SELECT
    if select not in SELECT:
        raise PobenchError(f"--select {select}: choose one of {', '.join(SELECT)}")
    runs, curves = collect(Path(root))
    if runs.empty:
        raise PobenchError(f"{root}: no finished runs (no */train_summary.json); run `pobench run` first")
    if suites:
        unknown = sorted(set(suites) - set(runs["suite"]))
        if unknown:
            raise PobenchError(f"{root}: no runs of suite '{unknown[0]}' (found: {', '.join(sorted(set(runs['suite'])))})")
        runs = runs[runs["suite"].isin(suites)]
        curves = curves[curves["suite"].isin(suites)]
    report = {"results": str(root), "selection": {"metric": select, "target": target}, "suites": []}
    for suite, suite_runs in runs.groupby("suite", sort=True):
        suite_curves = curves[curves["suite"] == suite]
        auc = accuracy_auc_by_run(suite_curves)
        chosen, grid_rows = grid_table(suite_runs, auc, select)
        spreads = spread(grid_rows)
        report["suites"].append({
            "suite": suite, **about(suite_runs),
            "leaderboard": leaderboard(suite_runs, chosen, spreads),
            "grid": grid_rows if any(s["points"] > 1 for s in spreads.values()) else [],
            "spread": spreads,
            "convergence": convergence(suite_curves, chosen, points, target),
            "matched_kl": matched_kl(suite_curves, chosen),
        })
    return report, runs, curves
