"""PNG plots per suite: training curves and held-out convergence curves against records (or pairs) seen and time,
one line per algorithm (at its chosen grid point) with a band over seeds; reward against KL where measured; the
paired differences from the baseline with their intervals."""
from __future__ import annotations

import os
from pathlib import Path

from pobench.report.convergence import ACCURACY, BUDGET

TRAIN_PANELS = (("loss", "training loss"), ("rewards/accuracies", "training reward accuracy"),
                ("rewards/margins", "training reward margin"))
EVAL_PANELS = ((ACCURACY, "held-out reward accuracy"), ("eval/rewards/margins", "held-out reward margin"),
               ("eval/loss", "held-out loss"))


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt
    return plt


def seed_band(frames: list, metric: str, x: str = BUDGET, window: int = 1):
    """(xs, mean, low, high) over seeds on the union of their x values (each seed interpolated, never
    extrapolated: a point counts the seeds that cover it); low/high are the min and max over seeds. `window`
    > 1 smooths each seed first with a trailing rolling mean (per-step training metrics are noisy)."""
    import numpy as np

    series = []
    for f in frames:
        rows = f[f[metric].notna()] if metric in f else f.iloc[0:0]
        if rows.empty:
            continue
        xs = rows[x].to_numpy(dtype=float)
        ys = rows[metric].rolling(window, min_periods=1).mean().to_numpy(dtype=float)
        series.append((xs, ys))
    if not series:
        return None
    grid = np.unique(np.concatenate([s[0] for s in series]))
    stack = np.full((len(series), len(grid)), np.nan)
    for i, (xs, ys) in enumerate(series):
        inside = (grid >= xs.min()) & (grid <= xs.max())
        stack[i, inside] = np.interp(grid[inside], xs, ys)
    keep = ~np.isnan(stack).all(axis=0)
    stack, grid = stack[:, keep], grid[keep]
    return grid, np.nanmean(stack, axis=0), np.nanmin(stack, axis=0), np.nanmax(stack, axis=0)


def _panel(ax, frames_by_algo: dict, metric: str, title: str, x: str = BUDGET, window: int = 1,
           marker: str | None = None) -> bool:
    drawn = False
    for i, (algo, frames) in enumerate(frames_by_algo.items()):
        band = seed_band(frames, metric, x, window)
        if band is None:
            continue
        xs, mean, lo, hi = band
        color = f"C{i}"
        ax.plot(xs, mean, color=color, marker=marker, label=f"{algo} ({len(frames)} seed{'s' if len(frames) > 1 else ''})")
        if len(frames) > 1:
            ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)
        drawn = True
    ax.set_title(title, fontsize=10)
    ax.set_xlabel({"time_s": "training time (s)", "pairs_seen": "pairs seen"}.get(x, "training records seen"))
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    return drawn


def frames_by_algo(curves, chosen: dict) -> dict:
    out = {}
    for algo, point in chosen.items():
        sel = curves[(curves["algo"] == algo) & (curves["grid_point"] == point)]
        out[algo] = [f.sort_values("step", kind="stable") for _, f in sel.groupby("seed", sort=True)]
    return out


def plot_suite(suite: str, curves, runs, chosen: dict, out_dir: Path, x: str = BUDGET) -> list[tuple[str, Path]]:
    """Write this suite's PNGs into out_dir, curves against `x` (records_seen or pairs_seen) and training time;
    returns [(caption, path)]."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    by_algo = frames_by_algo(curves[curves["suite"] == suite], chosen)
    written = []
    train_only = {a: [f[f["step"] > 0] for f in fs] for a, fs in by_algo.items()}  # step 0 has no training loss
    steps = max((len(f) for fs in train_only.values() for f in fs), default=1)
    window = max(1, steps // 10)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (metric, title) in zip(axes, TRAIN_PANELS):
        _panel(ax, train_only, metric, title + (f" (rolling mean of {window} steps)" if window > 1 else ""), x=x,
               window=window)
    fig.suptitle(f"{suite}: training curves (band = min-max over seeds)")
    fig.tight_layout()
    written.append((f"{suite}: training curves", _save(fig, out_dir / f"{suite}-training.png", plt)))

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for ax, (metric, title) in zip(axes.flat, EVAL_PANELS):
        _panel(ax, by_algo, metric, title, x=x, marker="o")
    _panel(axes.flat[3], by_algo, ACCURACY, "held-out reward accuracy against training time", x="time_s", marker="o")
    fig.suptitle(f"{suite}: held-out convergence (band = min-max over seeds)")
    fig.tight_layout()
    written.append((f"{suite}: held-out convergence", _save(fig, out_dir / f"{suite}-convergence.png", plt)))

    if any(c.startswith("gold/") for c in curves.columns) and any(
            "gold/reward" in f and f["gold/reward"].notna().any() for fs in by_algo.values() for f in fs):
        written.append((f"{suite}: gold metrics", _gold_figure(suite, by_algo, out_dir, plt, x)))

    frontier = runs[(runs["suite"] == suite)]
    if {"kl", "reward_mean"} <= set(frontier.columns) and frontier[["kl", "reward_mean"]].notna().all(axis=1).any():
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for i, (algo, point) in enumerate(chosen.items()):
            f = frontier[(frontier["algo"] == algo) & (frontier["grid_point"] == point)].dropna(subset=["kl", "reward_mean"])
            if len(f):
                ax.scatter(f["kl"], f["reward_mean"], color=f"C{i}", label=algo)
        ax.set_xlabel("KL(policy || reference)")
        ax.set_ylabel("reward-model score")
        ax.set_title(f"{suite}: reward against KL (one point per seed)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append((f"{suite}: reward against KL", _save(fig, out_dir / f"{suite}-reward-kl.png", plt)))
    return written


def _gold_figure(suite: str, by_algo: dict, out_dir: Path, plt, x: str = BUDGET) -> Path:
    """A suite with a known reward: gold win rate and reward against records (or pairs) seen, and the reward-KL frontier
    (gold reward against gold KL at each evaluation; one line per seed, since KL need not grow monotonically)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    _panel(axes[0], by_algo, "gold/win_rate", "gold win rate against the reference", x=x, marker="o")
    _panel(axes[1], by_algo, "gold/reward", "gold reward", x=x, marker="o")
    ax = axes[2]
    for i, (algo, frames) in enumerate(by_algo.items()):
        for j, f in enumerate(frames):
            rows = f.dropna(subset=["gold/kl", "gold/reward"]) if {"gold/kl", "gold/reward"} <= set(f.columns) else f.iloc[0:0]
            if len(rows):
                ax.plot(rows["gold/kl"], rows["gold/reward"], color=f"C{i}", marker="o", alpha=0.8,
                        label=algo if j == 0 else None)
    ax.set_xlabel("gold KL(policy || reference)")
    ax.set_title("gold reward against KL (each evaluation; one line per seed)", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.suptitle(f"{suite}: gold metrics of the policy's samples (band = min-max over seeds)")
    fig.tight_layout()
    return _save(fig, out_dir / f"{suite}-gold.png", plt)


# the comparison with the baseline: (title, how to read the row's interval), drawn where measured
VERSUS_PANELS = (
    ("held-out reward accuracy", lambda r: r["delta"].get("held_out_acc")),
    ("held-out accuracy AUC (speed)", lambda r: r["delta"].get("held_out_acc_auc")),
    ("win rate (seeds)", lambda r: r["delta"].get("win_rate")),
    ("win rate (per prompt, no seed spread)", lambda r: (r["prompt_paired"] or {}).get("difference")),
    ("gold reward", lambda r: r["delta"].get("gold_reward")),
    ("gold win rate", lambda r: r["delta"].get("gold_win_rate")),
)


def versus_figure(s: dict, out_dir: Path, plt) -> Path | None:
    """Each algorithm minus the baseline, a dot with its 95% interval per panel, and the zero line: where an
    seed-level interval clears zero, the difference is more than the seeds' noise (the per-prompt panel's interval
    leaves the seeds' training luck out: it describes the trained models, versus.over_units)."""
    v = s.get("versus")
    if not v or not v["rows"]:
        return None
    panels = [(t, get) for t, get in VERSUS_PANELS if any((get(r) or {}).get("mean") is not None for r in v["rows"])]
    if not panels:
        return None
    from matplotlib.ticker import FuncFormatter, MaxNLocator
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 1, 0.5 * len(v["rows"]) + 2.2),
                             squeeze=False)
    labels = [r["algo"] for r in v["rows"]]
    for ax, (title, get) in zip(axes[0], panels):
        for y, row in enumerate(v["rows"]):
            ci = get(row) or {}
            if ci.get("mean") is None:
                continue
            lo, hi = ci.get("lo"), ci.get("hi")
            xerr = [[ci["mean"] - lo], [hi - ci["mean"]]] if lo is not None else None
            ax.errorbar(ci["mean"], y, xerr=xerr, fmt="o", color=f"C{y}", capsize=4)
        ax.axvline(0, color="0.3", linewidth=1, linestyle="--")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))   # differences can be 1e-4 wide: few, short labels
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:+.2g}" if x else "0"))
        ax.set_yticks(range(len(labels)), labels if ax is axes[0][0] else [""] * len(labels))
        ax.set_ylim(-0.7, len(labels) - 0.3)
        ax.invert_yaxis()
        ax.set_title(f"Δ {title}", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{s['suite']}: each algorithm minus {v['baseline']}, paired by seed (95% intervals; "
                 f"no bar: one seed)", fontsize=11)
    fig.tight_layout()
    return _save(fig, out_dir / f"{s['suite']}-vs-{v['baseline']}.png", plt)


def _save(fig, path: Path, plt) -> Path:
    """The PNG whole or not at all, as the rest of the report is written: a plot stopped half-way (a full disk,
    Ctrl-C) leaves the earlier file at `path`, not a truncated image."""
    from pobench.engine.io import fsync_dir
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            fig.savefig(f, dpi=100, format="png")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def plot_report(report: dict, runs, curves, out_dir: Path) -> list[tuple[str, Path]]:
    written = []
    for s in report["suites"]:
        chosen = {r["algo"]: r["grid_point"] for r in s["leaderboard"]}
        written += plot_suite(s["suite"], curves, runs, chosen, Path(out_dir), report.get("axis") or BUDGET)
        against = versus_figure(s, Path(out_dir), _pyplot())
        if against:
            written.append((f"{s['suite']}: against {s['versus']['baseline']}", against))
    return written
