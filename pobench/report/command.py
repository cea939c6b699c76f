"""The `report` command and the leaderboard `pobench run` prints at its end (registered in pobench/cli.py)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import typer

from pobench.errors import PobenchError

FORMATS = ("table", "markdown", "csv", "json", "html")


def _points(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        points = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise PobenchError(f"--points {text}: expected comma-separated values of the --axis, e.g. 48,96") from None
    if not points or any(p < 0 for p in points) or points != sorted(points):
        raise PobenchError(f"--points {text}: expected increasing non-negative values of the --axis")
    return points


def report(
    results: Path = typer.Argument(Path("results"), help="Results root (holds <suite>/<algo>/[<grid point>/]seed<k>/)."),
    format_: str = typer.Option("table", "--format", help="table | markdown | csv | json | html."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Write PNG plots (training, convergence) here."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the report to this file instead of stdout."),
    suite: Optional[str] = typer.Option(None, "--suite", help="Comma-separated suites to report (default: all)."),
    select: str = typer.Option("acc", "--select", help="Validation metric that picks each algorithm's best grid "
                               "point: acc (held-out pair accuracy, max) or loss (held-out loss, min)."),
    points: Optional[str] = typer.Option(None, "--points", help="Points of the convergence tables, in --axis units "
                                         "(default: 4 evenly spaced up to the range every run of the table covers)."),
    target: float = typer.Option(0.6, "--target", help="Held-out reward accuracy for 'records (or pairs) to target'."),
    axis: str = typer.Option("records", "--axis", help="What convergence tables and plots run on: records (training "
                             "records seen, the budget all algorithms share) or pairs (pairs seen, each algorithm's "
                             "own count per record)."),
    baseline: str = typer.Option("dpo", "--baseline", help="Compare every other algorithm with this one, seed by "
                                 "seed and prompt by prompt (suites without it are skipped); 'none': no comparison."),
):
    """Leaderboards with 95% CIs over seeds, paired differences from a baseline, grids, convergence, plots, HTML."""
    from pobench.report import render
    from pobench.report.build import build_report

    if format_ not in FORMATS:
        raise PobenchError(f"--format {format_}: choose one of {', '.join(FORMATS)}")
    suites = [s.strip() for s in suite.split(",") if s.strip()] if suite else None
    if not 0 < target <= 1:   # nan fails this too
        raise PobenchError(f"--target {target}: a held-out reward accuracy in (0, 1]")
    rep, runs, curves = build_report(results, select, _points(points), target, suites, baseline, axis)
    from pobench.data import older_rules_warning
    older = older_rules_warning(runs["records_rule"])
    if older:
        typer.echo(f"warning: {older}", err=True)
    for warning in render.not_finite_warnings(rep):
        typer.echo(warning, err=True)
    secs = render.sections(rep)
    written = []
    with tempfile.TemporaryDirectory() as tmp:  # html without --plots: the PNGs live only until embedded
        if plots or format_ == "html":
            from pobench.report.plots import plot_report
            try:
                written = plot_report(rep, runs, curves, plots or Path(tmp))
            except OSError as e:
                raise PobenchError(f"--plots {plots}: cannot write the plots ({e.strerror})") from None
        text = _render(format_, rep, secs, written)
    if text is None and out:  # the rich table, into the file
        import io
        from rich.console import Console
        buffer = io.StringIO()
        render.print_tables(secs, Console(file=buffer, width=200))
        text = buffer.getvalue()
    if text is None:
        render.print_tables(secs)
    elif out:
        from pobench.engine.io import atomic_write_text
        try:   # whole or not at all: an earlier report at `out` survives a failed write
            atomic_write_text(Path(out), text)
        except OSError as e:
            raise PobenchError(f"--out {out}: cannot write ({e.strerror})") from None
    else:
        typer.echo(text, nl=False)
    if plots:
        typer.echo(f"plots: {', '.join(str(p) for _, p in written)}", err=True)
    if out:
        typer.echo(f"report: {out}", err=True)


def _render(format_: str, rep: dict, secs: list, plots: list) -> str | None:
    """The report as text in `format_`; None for the rich table, which is printed rather than returned."""
    from pobench.report import render
    if format_ == "markdown":
        return render.to_markdown(secs)
    if format_ == "csv":
        return render.to_csv(rep)
    if format_ == "json":
        return render.to_json(rep) + "\n"
    if format_ == "html":
        from pobench.report.html import to_html
        return to_html(rep, secs, plots)
    return None


def print_leaderboard(results: Path, suites) -> None:
    """The end of `pobench run`: the leaderboard (and tuning grid) of the suites just run, read back from the
    results folder, so that `pobench report --format markdown` shows the same numbers."""
    from pobench.report.build import build_report
    from pobench.report import render

    try:
        rep, _, _ = build_report(results, suites=sorted(suites))
    except PobenchError as e:  # the runs succeeded; a file the report cannot read must not fail them
        typer.echo(f"leaderboard not shown: {e} (see `pobench report`)", err=True)
        return
    render.print_tables(render.sections(rep, convergence=False))
