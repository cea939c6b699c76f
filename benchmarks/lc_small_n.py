"""Bias of the offline length-controlled win rate at small prompt counts (pobench/eval/metrics.py, length_only_glm).

A judge driven by length alone: P(policy wins) = sigmoid(1.5 tanh(z)), z the standardised length difference, the
policy's answers 150 +/- 150 characters longer than the reference's. The true LC win rate is 0.5, the raw one
about 0.68. Labels: `soft` (the true probability plus N(0, 0.05) noise, clipped: a reward model's sigmoid),
`hard` (0/1 draws: an LLM judge's verdicts). For each prompt count, the mean over `--draws` seeded draws of:
  ridge1   the estimator before: maximum likelihood with a unit ridge on the length coefficient
  mle      maximum likelihood (a 1e-4 ridge keeps separable draws finite, at a huge length coefficient)
  firth    Firth's bias-reduced estimate with the full Jeffreys penalty (dispersion 1)
  pobench  length_controlled_win_rate as it is now (Firth, penalty scaled by the labels' dispersion), with its
           spread over draws (sd), the standard error of the mean over draws (se) and the median of the
           lc_win_rate_se it reported (rep. se), which should match sd

    python benchmarks/lc_small_n.py [--draws 300]
"""
from __future__ import annotations

import argparse
import time
from unittest import mock

import numpy as np

from pobench.eval import metrics as M


def draw(rng, n: int, labels: str):
    ref = rng.integers(100, 600, n)
    pol = ref + rng.normal(150, 150, n).astype(int)
    d = pol - ref
    p = M._sigmoid(1.5 * np.tanh(d / d.std(ddof=1)))
    y = (rng.random(n) < p).astype(float) if labels == "hard" else np.clip(p + rng.normal(0, 0.05, n), 0, 1)
    return y, pol, ref


def estimates(y, pol, ref) -> dict:
    z = M.standardized_length_difference(pol, ref)
    X = np.column_stack([np.ones_like(z), np.tanh(z)])
    out = {"ridge1": M.fit_logistic(X, y, l2=[1e-4, 1.0])[0][0], "mle": M.fit_logistic(X, y)[0][0]}
    with mock.patch.object(M, "label_dispersion", lambda y, mu: 1.0):
        out["firth"] = M.fit_logistic(X, y, bias_reduced=True)[0][0]
    out = {k: float(M._sigmoid(v)) for k, v in out.items()}
    lc = M.length_controlled_win_rate(y, pol, ref)
    out["pobench"], out["reported_se"] = lc["lc_win_rate"], lc["lc_win_rate_se"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    started = time.time()
    print(f"mean LC win rate over {args.draws} draws (truth 0.500); pobench's sd over draws, the standard error "
          f"of its mean and the median lc_win_rate_se it reported in brackets")
    print(f"{'labels':6} {'n':>4} {'raw':>6} {'ridge1':>7} {'mle':>7} {'firth':>7} {'pobench':>8}")
    for labels in ("soft", "hard"):
        for n in (16, 64, 256):
            rng = np.random.default_rng([args.seed, n, labels == "hard"])
            rows, raw = [], []
            for _ in range(args.draws):
                y, pol, ref = draw(rng, n, labels)
                raw.append(y.mean())
                rows.append(estimates(y, pol, ref))
            mean = {k: np.mean([r[k] for r in rows]) for k in ("ridge1", "mle", "firth", "pobench")}
            sd = np.std([r["pobench"] for r in rows], ddof=1)
            print(f"{labels:6} {n:>4} {np.mean(raw):6.3f} {mean['ridge1']:7.3f} {mean['mle']:7.3f} {mean['firth']:7.3f} "
                  f"{mean['pobench']:8.3f} (sd {sd:.3f}, se {sd / np.sqrt(args.draws):.3f}, "
                  f"rep. se {np.median([r['reported_se'] for r in rows]):.3f})")
    print(f"{time.time() - started:.1f} s")


if __name__ == "__main__":
    main()
