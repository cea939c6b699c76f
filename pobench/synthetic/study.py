"""The synthetic study's numbers, from the run folders alone (gold_eval.json, train_summary.json):

    python -m pobench.synthetic.study RESULTS [--extra NAME=ROOT ...] [--base dpo] [--plot frontier.png]

* final gold, win rate and KL per algorithm (mean and 95% t-interval over seeds);
* paired differences against the base algorithm (DPO): per seed (the two runs share the seed's data order and
  evaluation draws), with a t-test over seeds; and per evaluation draw, re-measured from the final weights with
  the runs' common random numbers (`--draws`), which removes the evaluation noise but not the training seed's;
  the p over seeds also Holm-adjusted over all the algorithms compared with the base;
* records seen (the budget every algorithm shares: steps x batch) and training seconds to reach 90% of the base's
  final gold gain (linear between evaluation steps), and gold after 400, 800 and 1600 records;
* gold at matched KL (0.5, 1, 2, 4: the first crossing of each level, interpolated along the run), and a plot of
  the reward-KL frontier;
* for kernels that log it, the kernel's lowest entropy and the drawn negative's gold rank in its pool.
`--extra mcpo-uniform=results-uniform[:mcpo]` adds one algorithm's runs of another results root under a new name
(ablations).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from pobench.errors import PobenchError
from pobench.report import stats

KL_LEVELS = (0.5, 1.0, 2.0, 4.0)
RECORD_LEVELS = (400, 800, 1600)   # the suite's default run: 16 records a step, 100 steps
BUDGET = "records_seen"            # not pairs_seen: RSO trains on 4 pairs per record


def load_runs(root: Path, rename: str | None = None, only: str | None = None) -> dict:
    """{algo: {seed: {"gold": gold_eval.json, "summary": train_summary.json, "dir": path}}} of a results root;
    `only` keeps one algorithm, `rename` files it under another name."""
    runs: dict = {}
    for path in sorted(Path(root).glob(f"synthetic/{only or '*'}/seed*/gold_eval.json")):
        run_dir = path.parent
        algo = rename or run_dir.parent.name
        seed = int(run_dir.name[len("seed"):])
        runs.setdefault(algo, {})[seed] = {"gold": json.loads(path.read_text()), "dir": run_dir,
                                           "summary": json.loads((run_dir / "train_summary.json").read_text())}
    return runs


def crossing(curve: list[dict], x: str, level: float, y: str) -> float | None:
    """y where x first reaches `level` along the curve, linear between the two evaluation steps around it."""
    for a, b in zip(curve, curve[1:]):
        if a[x] < level <= b[x]:
            return a[y] + (b[y] - a[y]) * (level - a[x]) / (b[x] - a[x])
    return curve[0][y] if curve and curve[0][x] >= level else None


def gain_curve(curve: list[dict]) -> list[dict]:
    start = curve[0]["gold/reward"]
    return [dict(c, gain=c["gold/reward"] - start) for c in curve]


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (nan with one value): the report's interval."""
    ci = stats.mean_ci(values)
    if ci["mean"] is None:
        return math.nan, math.nan
    return ci["mean"], math.nan if ci["lo"] is None else (ci["hi"] - ci["lo"]) / 2


def t_test_p(diffs: list[float]) -> float:
    """Two-sided p of a one-sample t-test of mean 0 (the report's test); nan for fewer than two values or for the
    base against itself (every difference 0)."""
    p = stats.t_test_p(diffs)
    return math.nan if p is None or not any(diffs) else p


def summarise(runs: dict, base: str = "dpo") -> dict:
    """Every table of the study as plain data."""
    if base not in runs:
        raise PobenchError(f"no '{base}' runs to compare against (have: {', '.join(sorted(runs))})")
    base_gain = np.mean([gain_curve(r["gold"]["curve"])[-1]["gain"] for r in runs[base].values()])
    # the reference: the step-0 evaluation, where (common random numbers) the policy's draws are the reference's own
    starts = [r["gold"]["curve"][0] for r in runs[base].values()]
    out = {"base": base, "base_final_gain": float(base_gain), "algorithms": {},
           "reference": {key: mean_ci([c[key] for c in starts if key in c]) for key in ("gold/reward", "gold/length")}}
    for algo, by_seed in runs.items():
        finals = {s: r["gold"]["final"] for s, r in by_seed.items()}
        row = {"seeds": sorted(by_seed)}
        for key in ("gold/reward", "gold/win_rate", "gold/kl", "gold/length"):
            row[key] = mean_ci([f[key] for f in finals.values()])
        row["train_s"] = mean_ci([r["summary"]["train_time_s"] for r in by_seed.values()])
        row["pairs"] = mean_ci([r["summary"]["pairs_seen"] for r in by_seed.values()])
        shared = sorted(set(by_seed) & set(runs[base]))
        diffs = [finals[s]["gold/reward"] - runs[base][s]["gold"]["final"]["gold/reward"] for s in shared]
        row["diff_vs_base"] = {"per_seed": diffs, "mean_ci": mean_ci(diffs), "p_over_seeds": t_test_p(diffs)}
        reach = [(crossing(gain_curve(r["gold"]["curve"]), "gain", 0.9 * base_gain, BUDGET),
                  crossing(gain_curve(r["gold"]["curve"]), "gain", 0.9 * base_gain, "time_s")) for r in by_seed.values()]
        row["to_90pct_of_base_gain"] = {"reached": sum(p is not None for p, _ in reach), "of": len(reach),
                                        "records": mean_ci([p for p, _ in reach if p is not None]),
                                        "seconds": mean_ci([t for _, t in reach if t is not None])}
        row["gold_at_kl"] = {}
        for level in KL_LEVELS:
            values = [crossing(r["gold"]["curve"], "gold/kl", level, "gold/reward") for r in by_seed.values()]
            row["gold_at_kl"][level] = {"reached": sum(v is not None for v in values),
                                        "mean_ci": mean_ci([v for v in values if v is not None])}
        row["gold_at_records"] = {}
        for level in RECORD_LEVELS:
            values = [crossing(r["gold"]["curve"], BUDGET, level, "gold/reward") for r in by_seed.values()]
            row["gold_at_records"][level] = mean_ci([v for v in values if v is not None])
        out["algorithms"][algo] = row
    # Holm over every algorithm compared with the base (the family the table asks about)
    rows = [r["diff_vs_base"] for a, r in out["algorithms"].items() if a != base]
    for r, adjusted in zip(rows, stats.holm([None if math.isnan(r["p_over_seeds"]) else r["p_over_seeds"] for r in rows])):
        r["p_holm"] = math.nan if adjusted is None else adjusted
    out["algorithms"][base]["diff_vs_base"]["p_holm"] = math.nan
    return out


def final_draws(run: dict) -> np.ndarray:
    """Gold of every evaluation draw of a run's final weights, [prompts, samples], measured once per run."""
    from pobench.synthetic.evaluate import evaluate_run_dir

    if "draws" not in run:
        run["draws"] = np.asarray(evaluate_run_dir(run["dir"], with_draws=True)["draws"])
    return run["draws"]


def draw_level_test(runs: dict, algo: str, base: str = "dpo") -> dict:
    """Paired per-draw gold differences of the final weights (the runs' own evaluation seed, so draw i of both
    runs used the same random numbers), pooled over seeds, averaged per (seed, prompt); mean, 95% CI, p."""
    units = []
    for seed in sorted(set(runs[algo]) & set(runs[base])):
        a, b = final_draws(runs[algo][seed]), final_draws(runs[base][seed])
        units.extend((a - b).mean(axis=1).tolist())
    d = np.asarray(units)
    se = float(d.std(ddof=1) / math.sqrt(d.size))
    z = float(d.mean()) / se if se > 0 else math.inf
    return {"units": int(d.size), "mean": float(d.mean()), "ci95": 1.96 * se, "p": math.erfc(abs(z) / math.sqrt(2))}


def sampler_logs(runs: dict, last: int = 50) -> dict:
    """What the kernels' logs (metrics.jsonl) say, per algorithm that logs `sampler/kernel_entropy`: the lowest batch
    mean of the kernel's entropy in any step of any seed, a uniform draw's entropy, and per seed the drawn negative's
    mean gold rank in its pool (`sampler/drawn_rm_rank`: 0 = the pool's best, 1 = its worst), over all steps and
    over the last `last`."""
    out = {}
    for algo, by_seed in runs.items():
        rows = {seed: [json.loads(line) for line in (r["dir"] / "metrics.jsonl").read_text().splitlines() if line]
                for seed, r in sorted(by_seed.items())}
        entropy = [row["sampler/kernel_entropy"] for rs in rows.values() for row in rs if "sampler/kernel_entropy" in row]
        if not entropy:
            continue
        uniform = [row["sampler/kernel_entropy_uniform"] for rs in rows.values() for row in rs
                   if "sampler/kernel_entropy_uniform" in row]
        ranks = {seed: [row["sampler/drawn_rm_rank"] for row in rs if "sampler/drawn_rm_rank" in row]
                 for seed, rs in rows.items()}
        out[algo] = {"min_kernel_entropy": min(entropy), "uniform_entropy": max(uniform) if uniform else math.nan,
                     "drawn_rank": {seed: float(np.mean(r)) if r else math.nan for seed, r in ranks.items()},
                     f"drawn_rank_last_{last}": {seed: float(np.mean(r[-last:])) if r else math.nan
                                                 for seed, r in ranks.items()}}
    return out


def sampler_markdown(logs: dict, last: int = 50) -> str:
    lines = [f"| algorithm | lowest kernel entropy (nats) | uniform draw's | drawn negative's gold rank, per seed | "
             f"the same, last {last} steps |", "|---|---|---|---|---|"]
    def num(v: float, digits: int) -> str:
        return "-" if math.isnan(v) else f"{v:.{digits}f}"

    for algo, row in logs.items():
        ranks = ", ".join(num(v, 2) for v in row["drawn_rank"].values())
        late = ", ".join(num(v, 2) for v in row[f"drawn_rank_last_{last}"].values())
        lines.append(f"| {algo} | {row['min_kernel_entropy']:.3f} | {num(row['uniform_entropy'], 3)} | {ranks} | {late} |")
    return "\n".join(lines)


def fmt(pair: tuple[float, float], digits: int = 3) -> str:
    mean, half = pair
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" + ("" if math.isnan(half) else f" ± {half:.{digits}f}")


def markdown(summary: dict, draws: dict | None = None) -> str:
    base = summary["base"]
    lines = [f"| algorithm | seeds | gold reward | win rate vs ref | KL(pi‖ref) | length | train s | pairs | "
             f"gold - {base} (per seed) | p (t over seeds) | p, Holm |" + (" gold - base, per draw (p) |" if draws else ""),
             "|---" * (11 + bool(draws)) + "|"]
    ref = summary.get("reference")
    if ref:
        lines.append(f"| reference | {len(summary['algorithms'][base]['seeds'])} | {fmt(ref['gold/reward'])} | 0.5 | 0 | "
                     f"{fmt(ref['gold/length'], 1)} | - | - | | | |" + (" |" if draws else ""))
    for algo, row in summary["algorithms"].items():
        diff = row["diff_vs_base"]
        extra = ""
        if draws:
            d = draws.get(algo)
            extra = f" {d['mean']:+.3f} ± {d['ci95']:.3f} ({d['p']:.2g}) |" if d else " - |"
        lines.append(f"| {algo} | {len(row['seeds'])} | {fmt(row['gold/reward'])} | {fmt(row['gold/win_rate'])} | "
                     f"{fmt(row['gold/kl'], 2)} | {fmt(row['gold/length'], 1)} | {fmt(row['train_s'], 1)} | "
                     f"{row['pairs'][0]:.0f} | {fmt(diff['mean_ci'])} | "
                     f"{'-' if math.isnan(diff['p_over_seeds']) else format(diff['p_over_seeds'], '.2g')} | "
                     f"{'-' if math.isnan(diff['p_holm']) else format(diff['p_holm'], '.2g')} |" + extra)
    lines += ["", f"To 90% of {base}'s final gold gain ({0.9 * summary['base_final_gain']:.3f}), and gold at matched KL:", "",
              "| algorithm | reached | records | train s | " + " | ".join(f"gold @ KL {k:g}" for k in KL_LEVELS) + " | "
              + " | ".join(f"gold @ {n} records" for n in RECORD_LEVELS) + " |",
              "|---" * (4 + len(KL_LEVELS) + len(RECORD_LEVELS)) + "|"]
    for algo, row in summary["algorithms"].items():
        r = row["to_90pct_of_base_gain"]
        at = [fmt(row["gold_at_kl"][k]["mean_ci"]) + ("" if row["gold_at_kl"][k]["reached"] == len(row["seeds"])
              else f" ({row['gold_at_kl'][k]['reached']}/{len(row['seeds'])})") for k in KL_LEVELS]
        lines.append(f"| {algo} | {r['reached']}/{r['of']} | {fmt(r['records'], 0)} | {fmt(r['seconds'], 1)} | "
                     + " | ".join(at) + " | " + " | ".join(fmt(row["gold_at_records"][n]) for n in RECORD_LEVELS)
                     + " |")
    return "\n".join(lines)


def frontier_plot(runs: dict, path: Path) -> None:
    """Gold reward against KL(policy || reference) along every run (one colour per algorithm)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (algo, by_seed) in enumerate(sorted(runs.items())):
        for j, r in enumerate(by_seed.values()):
            c = r["gold"]["curve"]
            ax.plot([p["gold/kl"] for p in c], [p["gold/reward"] for p in c], marker=".", color=f"C{i}",
                    alpha=0.8, label=algo if j == 0 else None)
    ax.set_xlabel("KL(policy || reference), estimated from samples")
    ax.set_ylabel("gold reward of policy samples")
    ax.set_title("synthetic suite: reward-KL frontier (one line per run)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--extra", action="append", default=[], help="NAME=ROOT[:ALGO]: more runs under another name")
    parser.add_argument("--base", default="dpo")
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--draws", action="store_true", help="also the per-draw paired test (re-measures final weights)")
    parser.add_argument("--json", type=Path, help="write the summary as JSON here")
    args = parser.parse_args(argv)
    runs = load_runs(args.results)
    for item in args.extra:
        name, _, spec = item.partition("=")
        root, _, algo = spec.partition(":")
        found = {p.parent.parent.name for p in Path(root).glob("synthetic/*/seed*/gold_eval.json")}
        if not algo and len(found) != 1:
            raise PobenchError(f"--extra {item}: {root} holds {sorted(found) or 'no runs'}; name one as ROOT:ALGO")
        runs.update(load_runs(Path(root), rename=name, only=algo or None))
    summary = summarise(runs, args.base)
    draws = {a: draw_level_test(runs, a, args.base) for a in runs if a != args.base} if args.draws else None
    print(markdown(summary, draws))
    logs = sampler_logs(runs)
    if logs:
        print("\nThe kernels' logs (metrics.jsonl):\n\n" + sampler_markdown(logs))
    if args.plot:
        frontier_plot(runs, args.plot)
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "draws": draws, "sampler_logs": logs}, indent=1, default=str))


if __name__ == "__main__":
    main()
