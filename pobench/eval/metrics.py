"""Evaluation metrics as pure functions of per-prompt numbers (numpy only; alpaca_eval only for its full GLM).

Preferences are P(policy output beats the reference output) per prompt, in [0, 1]; a tie is 0.5. So a win
rate is a fraction in [0, 1] (alpaca_eval reports the same number x 100, with 1 = reference, 2 = model).

* `win_rate`: mean preference, its standard error (sample sd / sqrt(n)) and a percentile bootstrap 95% CI.
* `length_controlled_win_rate`: what the win rate would be if the policy's outputs were as long as the
  reference's. Two forms:
  - `length_only_glm` (offline, any prompt set): logistic regression of the preference on
    tanh(standardised length difference) with an intercept, fitted to the soft labels by bias-reduced maximum
    likelihood (Firth's Jeffreys-prior penalty, scaled by the labels' dispersion: see `fit_logistic`), which is
    finite where length separates a few prompts and has no O(1/n) bias; the LC win rate is the fitted probability
    at zero length difference, sigmoid(intercept). It is the model of alpaca_eval's `length_controlled_minimal`
    (its length term and its per-model intercept, no instruction difficulty) with another estimator: alpaca_eval
    fits that one by L1-penalised logistic regression whose strength is chosen by 5-fold cross-validation
    (sklearn's LogisticRegressionCV), a penalty on the intercept as well.
  - `alpaca_eval_glm` (`length_controlled_v1`): alpaca_eval's full GLM with instruction difficulty and its
    regularisation towards the "gamed" baselines, on the 805 AlpacaEval instructions, fitted with
    alpaca_eval's own functions on a local copy of its `df_gamed.csv` (never downloaded here).
* `kl_estimate`: KL(policy || reference) ~ mean over samples y ~ policy of log pi(y|x) - log pi_ref(y|x).
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from pobench.errors import PobenchError

DEFAULT_BOOTSTRAP = 2000   # resamples for the CI: the percentile error of a 95% bound is ~0.3 points at 2000


def _array(values, what: str) -> np.ndarray:
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        raise PobenchError(f"{what}: no values")
    if not np.all(np.isfinite(arr)):
        raise PobenchError(f"{what}: non-finite values")
    return arr


def win_rate(preferences, n_bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict:
    """{"win_rate", "win_rate_se", "win_rate_ci95": [lo, hi], "n_judged"}; ties (0.5) count half by construction.
    win_rate_se is None for one preference."""
    p = _array(preferences, "win rate")
    if np.any((p < 0) | (p > 1)):
        raise PobenchError("win rate: preferences must lie in [0, 1]")
    n = p.size
    se = float(p.std(ddof=1) / math.sqrt(n)) if n > 1 else None   # one prompt has no spread: not measured (null)
    rng = np.random.default_rng(seed)
    means = p[rng.integers(0, n, size=(n_bootstrap, n))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return {"win_rate": float(p.mean()), "win_rate_se": se, "win_rate_ci95": [float(lo), float(hi)], "n_judged": n}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def label_dispersion(y: np.ndarray, mu: np.ndarray) -> float:
    """Var(y | x) / (mu (1 - mu)) of labels in [0, 1], pooled: 1 for 0/1 verdicts, below 1 for soft ones.

    For any y in [0, 1] with mean mu, Var(y) = mu (1 - mu) - E[y (1 - y)], so 1 - sum y(1 - y) / sum mu(1 - mu)
    estimates it without the residuals (which a separating fit drives to zero). Floored at the share of 0/1
    labels, each of which is a Bernoulli draw (its own ratio is 1) however well the fit matches it: the floor keeps
    a penalty on them, and the fit finite, where they are separable."""
    hard = float(np.mean((y == 0) | (y == 1)))
    return float(np.clip(1.0 - np.sum(y * (1 - y)) / max(np.sum(mu * (1 - mu)), 1e-300), hard, 1.0))


def fit_logistic(X: np.ndarray, y: np.ndarray, l2=1e-4, iters: int = 500,
                 bias_reduced: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(coefficients, covariance) of a logistic regression with soft labels y in [0, 1], by Fisher scoring.

    `l2`: a ridge per coefficient (a number or one per column); a small one keeps the fit finite when the data
    are separable. The covariance is the sandwich (robust, HC1) estimate H^-1 (sum_i g_i g_i^T) H^-1 n / (n - k),
    g_i = x_i (mu_i - y_i): the inverse Hessian alone assumes each label varies as a 0/1 outcome, mu (1 - mu), which
    soft labels (a reward model's sigmoid, an LLM judge's weighted preference) do not; for the intercept alone it
    gives the win rate's own standard error.

    `bias_reduced`: Firth's (1993) estimate instead of the maximum-likelihood one: the score gets
    + phi X^T (h (1/2 - mu)), h the hat values of the weighted fit, the gradient of a Jeffreys-prior penalty
    (phi / 2) log det(X^T W X). Maximum likelihood is biased by O(1/n) (towards larger coefficients) and infinite
    when the labels are separable; the penalty removes the O(1/n) term and is finite always. A fixed ridge does
    neither: a unit one on the length coefficient moved a pure length effect's LC win rate from 0.50 to 0.61 at 16
    prompts (benchmarks/lc_small_n.py). The O(1/n) bias of a GLM is proportional to the labels' dispersion phi
    (Cordeiro & McCullagh 1991), 1 for 0/1 verdicts, less for soft labels: the plain Firth penalty (phi = 1)
    over-corrects those (+0.015 at 16 prompts for a reward model's), so phi is estimated (`label_dispersion`)."""
    w = np.zeros(X.shape[1])
    ridge = np.broadcast_to(np.asarray(l2, dtype=float), w.shape)
    adjust = np.zeros_like(y)

    def firth_adjustment(mu, wt, bread):
        # h_i = w_i x_i^T (X^T W X)^-1 x_i; the adjusted score is X^T (y - mu + phi h (1/2 - mu))
        h = wt * np.einsum("ij,jk,ik->i", X, bread, X)
        return label_dispersion(y, mu) * h * (0.5 - mu)

    for _ in range(iters):
        mu = _sigmoid(X @ w)
        wt = mu * (1 - mu)
        hess = (X * wt[:, None]).T @ X + np.diag(ridge)
        if bias_reduced:
            adjust = firth_adjustment(mu, wt, np.linalg.inv(hess))
        step = np.linalg.solve(hess, X.T @ (mu - y - adjust) + ridge * w)
        # the scoring step ignores the adjustment's own slope: capped (as R's logistf caps it at 5), it cannot
        # overshoot into saturated weights from which it creeps back
        step *= min(1.0, 5.0 / max(np.max(np.abs(step)), 1e-300))
        w -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    mu = _sigmoid(X @ w)
    bread = np.linalg.inv((X * (mu * (1 - mu))[:, None]).T @ X + np.diag(ridge))
    if bias_reduced:
        adjust = firth_adjustment(mu, mu * (1 - mu), bread)
    scores = X * (mu - y - adjust)[:, None]
    n, k = X.shape
    return w, bread @ (scores.T @ scores) @ bread * (n / (n - k) if n > k else 1.0)


def standardized_length_difference(policy_lengths, reference_lengths) -> np.ndarray:
    """(len policy - len reference) / sd of that difference, as alpaca_eval standardises it (no centring)."""
    delta = _array(policy_lengths, "lengths") - _array(reference_lengths, "lengths")
    sd = delta.std(ddof=1) if delta.size > 1 else 0.0
    return delta / sd if sd > 0 else np.zeros_like(delta)


def length_confounded(z: np.ndarray, policy_lengths, reference_lengths) -> bool:
    """Whether the answers differ in length from their references, but all by the same amount (or there is one
    answer): the standardised differences are then all zero, and a length effect is the intercept's."""
    return not np.any(z) and bool(np.any(_array(policy_lengths, "lengths") != _array(reference_lengths, "lengths")))


def no_lc_win_rate(method: str) -> dict:
    return {"lc_win_rate": None, "lc_win_rate_se": None, "lc_method": method, "length_coef": None,
            "lc_note": "every judged answer differs in length from its reference by the same amount: a length "
                       "effect cannot be told apart from a quality effect"}


def length_controlled_win_rate(preferences, policy_lengths, reference_lengths) -> dict:
    """The length-only GLM: p_i = sigmoid(a + b * tanh(z_i)), z = standardised length difference; LC = sigmoid(a).

    Returns {"lc_win_rate", "lc_win_rate_se" (delta method on the robust covariance), "lc_method", "length_coef"}. With every length
    difference zero there is nothing to control for, and the LC win rate equals the win rate. With every
    difference the same non-zero number (or one prompt) the length effect cannot be told from the intercept: no
    LC win rate, and `lc_note` says why."""
    p = _array(preferences, "LC win rate")
    z = standardized_length_difference(policy_lengths, reference_lengths)
    if p.size != z.size:
        raise PobenchError(f"LC win rate: {p.size} preferences but {z.size} length pairs")
    if length_confounded(z, policy_lengths, reference_lengths):
        return no_lc_win_rate("length_only_glm")
    if not np.any(z):
        w, cov = fit_logistic(np.ones((p.size, 1)), p)
        coef = 0.0
    else:
        # bias-reduced: the intercept's maximum-likelihood bias is O(1/n), and a few prompts that length separates
        # have no finite maximum-likelihood fit
        w, cov = fit_logistic(np.column_stack([np.ones_like(z), np.tanh(z)]), p, bias_reduced=True)
        coef = float(w[1])
    lc = float(_sigmoid(w[0]))
    return {"lc_win_rate": lc, "lc_win_rate_se": float(lc * (1 - lc) * math.sqrt(cov[0, 0])),
            "lc_method": "length_only_glm", "length_coef": coef}


DIFFICULTY_COLUMNS = ("index", "instruction_difficulty", "preference", "std_delta_len", "not_gamed_baseline")


def read_difficulty_file(path: Path):
    """alpaca_eval's df_gamed.csv (its length-gamed baselines and each instruction's difficulty), checked for the
    columns the GLM reads."""
    import pandas as pd
    if not path.is_file():
        raise PobenchError(f"eval.lc_difficulty_file {path}: no such file (alpaca_eval's df_gamed.csv)")
    try:
        df = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError) as e:   # pandas' ParserError and EmptyDataError are ValueErrors
        raise PobenchError(f"eval.lc_difficulty_file {path}: not a CSV file ({str(e).splitlines()[0]})") from None
    missing = [c for c in DIFFICULTY_COLUMNS if c not in df.columns]
    if missing:
        raise PobenchError(f"eval.lc_difficulty_file {path}: no column '{missing[0]}' (alpaca_eval's df_gamed.csv "
                           f"has {', '.join(DIFFICULTY_COLUMNS)})")
    return df


def check_difficulty_file(path: Path) -> None:
    """read_difficulty_file's checks, once per file and version however many runs a command plans."""
    if not path.is_file():
        read_difficulty_file(path)                       # its error
    st = path.stat()
    _checked_difficulty_file(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=8)
def _checked_difficulty_file(path: str, mtime_ns: int, size: int) -> None:
    read_difficulty_file(Path(path))


def alpaca_eval_lc_win_rate(preferences, policy_outputs, reference_outputs, instruction_index,
                            df_gamed_path: str | Path) -> dict:
    """alpaca_eval's `length_controlled_v1` GLM, fitted by alpaca_eval's own code on a local `df_gamed.csv`.

    `instruction_index`: each row's position among AlpacaEval's 805 instructions (the file's order), which is
    how alpaca_eval looks up the instruction difficulty. Replicates `_get_featurized_data` with the file read
    from disk instead of `hf_hub_download`."""
    import pandas as pd
    from alpaca_eval.metrics.glm_winrate import GLM_INFO, fit_LogisticRegressionCV, make_dmatrix_for_model

    path = Path(df_gamed_path).expanduser()
    df_gamed = read_difficulty_file(path).drop(columns=["model"], errors="ignore")
    difficulty = df_gamed.drop_duplicates("index").set_index("index")["instruction_difficulty"]
    info = GLM_INFO["length_controlled_v1"]
    method = "alpaca_eval_glm_length_controlled_v1"
    policy_len, reference_len = [len(o) for o in policy_outputs], [len(o) for o in reference_outputs]
    z = standardized_length_difference(policy_len, reference_len)
    # one answer, or equal differences, divided by a zero spread: NaN rows broke alpaca_eval's fit, infinite ones
    # made up a length effect
    if length_confounded(z, policy_len, reference_len):
        return no_lc_win_rate(method)
    df = pd.DataFrame({"preference": _array(preferences, "LC win rate"), "index": list(instruction_index)})
    missing = sorted(set(df["index"]) - set(difficulty.index))
    if missing:
        raise PobenchError(f"{path}: no instruction difficulty for AlpacaEval index {missing[0]}")
    # alpaca_eval's orientation: output_1 = reference, output_2 = model, so its length difference is reference minus
    # model; preference 1..2 -> 0..1 = model wins
    df["std_delta_len"] = -z
    df["instruction_difficulty"] = df["index"].map(difficulty)
    df["not_gamed_baseline"] = True
    df_test = df[["instruction_difficulty", "not_gamed_baseline"]].copy()
    df_test["std_delta_len"] = 0
    both = pd.concat([df_gamed, df], axis=0, ignore_index=True)
    xy_train, x_test = make_dmatrix_for_model(both, df_test, formula=info["formula"])
    weight = both["not_gamed_baseline"].astype(float) + (
        info["regularize_to_baseline_lambda"] * (~both["not_gamed_baseline"].astype(bool))).astype(float) / 2
    keep = xy_train["preference"].notna()
    import warnings
    with warnings.catch_warnings():   # sklearn's deprecation notices about alpaca_eval's arguments
        warnings.simplefilter("ignore", FutureWarning)
        model = fit_LogisticRegressionCV(xy_train[keep], "preference", is_ytrue_proba=True,
                                         sample_weight=weight[keep], **info["kwargs"])
    predicted = model.predict_proba(x_test)[:, 1]
    return {"lc_win_rate": float(predicted.mean()),
            "lc_win_rate_se": float(pd.Series(predicted).sem()), "lc_method": method,
            # alpaca_eval's length difference is reference minus model: negated, the coefficient reads as the length-only
            # GLM's does (> 0: the judge favours the policy where its output is the longer one)
            "length_coef": -float(dict(zip(x_test.columns, model.coef_[0])).get("np.tanh(std_delta_len)", float("nan")))}


def kl_estimate(policy_logps, reference_logps) -> dict:
    """Monte Carlo KL(policy || reference) from samples of the policy: mean of log pi(y|x) - log pi_ref(y|x)
    (summed over each sample's tokens), with its standard error. Unbiased only when y ~ pi exactly
    (temperature 1, no top-p cut); a single sample can give a negative term, the mean cannot be far below 0."""
    a, b = _array(policy_logps, "KL"), _array(reference_logps, "KL")
    if a.size != b.size:
        raise PobenchError(f"KL: {a.size} policy log-probs but {b.size} reference log-probs")
    d = a - b
    # one sample has no spread: its standard error is not measured (null in eval.json)
    return {"kl": float(d.mean()), "kl_se": float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else None,
            "kl_samples": int(d.size)}


def mean_or_none(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None
