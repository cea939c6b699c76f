"""Known-answer tests of the evaluation metrics: win rate and its CI, the length-controlled win rate, KL."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from pobench.errors import PobenchError
from pobench.eval import metrics as M


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_win_rate_counts_ties_half_and_reports_se_and_ci():
    out = M.win_rate([1, 0, 0.5, 1], n_bootstrap=500)
    assert out["win_rate"] == pytest.approx(0.625)
    assert out["win_rate_se"] == pytest.approx(np.std([1, 0, 0.5, 1], ddof=1) / 2)
    lo, hi = out["win_rate_ci95"]
    assert 0 <= lo <= 0.625 <= hi <= 1 and out["n_judged"] == 4
    ties = M.win_rate([0.5] * 10)
    assert ties["win_rate"] == 0.5 and ties["win_rate_se"] == 0 and ties["win_rate_ci95"] == [0.5, 0.5]
    # one preference has no spread: its standard error is not measured, None (eval.json held a bare NaN, not JSON)
    assert M.win_rate([0.7])["win_rate_se"] is None and M.win_rate([0.7])["win_rate_ci95"] == [0.7, 0.7]
    with pytest.raises(PobenchError, match=r"must lie in \[0, 1\]"):
        M.win_rate([1.2, 0.0])
    with pytest.raises(PobenchError, match="no values"):
        M.win_rate([])


def test_bootstrap_ci_covers_the_truth_at_about_the_stated_rate():
    """300 simulated evaluations of 60 Bernoulli(0.3) verdicts: the 95% CI should hold 0.3 in ~95% of them
    (binomial sd of the rate over 300 trials: 1.3 points; percentile bootstraps run a little under)."""
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(300):
        data = (rng.random(60) < 0.3).astype(float)
        lo, hi = M.win_rate(data, n_bootstrap=1000, seed=trial)["win_rate_ci95"]
        covered += lo <= 0.3 <= hi
    assert 0.90 <= covered / 300 <= 0.985


def lengths_with_offset(rng, n, mean_z):
    """Reference and policy lengths whose standardised difference is ~N(mean_z, 1) (sd of the difference 100)."""
    ref = rng.integers(200, 800, n).astype(float)
    return ref + 100 * rng.normal(mean_z, 1, n), ref


def test_lc_win_rate_removes_a_pure_length_effect():
    """Annotations driven by length alone (the judge likes longer outputs, no quality difference): the raw
    win rate is far above 1/2, the length-controlled one is 1/2 within its noise."""
    rng = np.random.default_rng(1)
    pol, ref = lengths_with_offset(rng, 4000, 0.8)
    z = (pol - ref) / np.std(pol - ref, ddof=1)
    verdicts = (rng.random(z.size) < sigmoid(1.5 * np.tanh(z))).astype(float)
    raw = M.win_rate(verdicts)["win_rate"]
    lc = M.length_controlled_win_rate(verdicts, pol, ref)
    assert raw > 0.6
    assert lc["lc_win_rate"] == pytest.approx(0.5, abs=3 * lc["lc_win_rate_se"] + 0.01)
    assert lc["length_coef"] == pytest.approx(1.5, abs=0.3) and lc["lc_method"] == "length_only_glm"


@pytest.mark.parametrize("n", [16, 64])
def test_lc_win_rate_has_no_small_sample_bias(n):
    """A pure length effect (true LC win rate 0.5, raw ~0.68), averaged over 200 seeded evaluations of n prompts.
    A unit ridge on the length coefficient read 0.61 at 16 prompts and 0.55 at 64 (benchmarks/lc_small_n.py);
    Firth's full penalty on soft labels 0.515 at 16. Soft labels (a reward model's): within 0.01; 0/1 verdicts,
    whose LC win rate varies ~0.19 between draws at 16 prompts: within 3 standard errors of the mean over draws."""
    rng = np.random.default_rng(n)
    for hard in (False, True):
        lcs = []
        for _ in range(200):
            ref = rng.integers(100, 600, n)
            pol = ref + rng.normal(150, 150, n).astype(int)
            p = sigmoid(1.5 * np.tanh((pol - ref) / np.std(pol - ref, ddof=1)))
            y = (rng.random(n) < p).astype(float) if hard else np.clip(p + rng.normal(0, 0.05, n), 0, 1)
            lcs.append(M.length_controlled_win_rate(y, pol, ref)["lc_win_rate"])
        tolerance = 3 * np.std(lcs, ddof=1) / np.sqrt(len(lcs)) if hard else 0.01
        assert np.mean(lcs) == pytest.approx(0.5, abs=tolerance), (hard, np.mean(lcs), tolerance)


def test_lc_win_rate_recovers_a_quality_effect_beside_the_length_effect():
    rng = np.random.default_rng(2)
    pol, ref = lengths_with_offset(rng, 3000, -0.5)   # shorter outputs that are better
    z = (pol - ref) / np.std(pol - ref, ddof=1)
    exact = sigmoid(0.8 + 1.0 * np.tanh(z))
    soft = M.length_controlled_win_rate(exact, pol, ref)   # soft labels, no sampling noise: the fit is exact
    assert soft["lc_win_rate"] == pytest.approx(sigmoid(0.8), abs=2e-3)
    assert soft["length_coef"] == pytest.approx(1.0, abs=1e-3)
    drawn = (rng.random(z.size) < exact).astype(float)
    lc = M.length_controlled_win_rate(drawn, pol, ref)
    assert lc["lc_win_rate"] == pytest.approx(sigmoid(0.8), abs=3 * lc["lc_win_rate_se"] + 0.01)
    assert M.win_rate(drawn)["win_rate"] < lc["lc_win_rate"] - 0.05   # the raw rate is dragged down by length


def test_lc_win_rate_without_length_differences_is_the_win_rate():
    prefs = [1, 1, 0, 0.5, 1]
    lc = M.length_controlled_win_rate(prefs, [10] * 5, [10] * 5)
    assert lc["lc_win_rate"] == pytest.approx(np.mean(prefs), abs=1e-4) and lc["length_coef"] == 0.0
    assert lc["lc_win_rate_se"] == pytest.approx(M.win_rate(prefs)["win_rate_se"], rel=1e-3)   # its standard error too


def test_lc_win_rate_is_not_given_where_length_cannot_be_told_from_quality():
    """Every answer 50 characters longer than its reference: the length effect and the intercept are one number,
    so no LC win rate (it read as the raw win rate with length_coef 0, as if length played no part)."""
    lc = M.length_controlled_win_rate([1, 1, 1, 0, 0.5, 1], [60] * 6, [10] * 6)
    assert lc["lc_win_rate"] is None and lc["length_coef"] is None and "cannot be told apart" in lc["lc_note"]
    assert M.length_controlled_win_rate([1], [60], [10])["lc_win_rate"] is None     # one prompt: the same


def test_lc_standard_error_of_soft_preferences_matches_their_spread():
    """A reward-model judge's preferences (sigmoids of score differences) lie near 0.5 and vary little: the LC win
    rate's standard error must follow their actual spread (measured by redrawing them), not a 0/1 outcome's
    (0.5 x 0.5: hundreds of times too large here)."""
    rng = np.random.default_rng(3)
    pol, ref = lengths_with_offset(rng, 200, 0.3)
    z = (pol - ref) / np.std(pol - ref, ddof=1)
    draws = [0.5 + 0.02 * np.tanh(z) + rng.normal(0, 0.001, z.size) for _ in range(300)]
    fits = [M.length_controlled_win_rate(p, pol, ref) for p in draws]
    spread = np.std([f["lc_win_rate"] for f in fits], ddof=1)
    reported = np.median([f["lc_win_rate_se"] for f in fits])
    assert reported == pytest.approx(spread, rel=0.25)


def test_kl_estimate_matches_the_exact_kl_of_two_categoricals():
    rng = np.random.default_rng(3)
    p = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
    q = np.array([0.2, 0.2, 0.2, 0.2, 0.2])
    y = rng.choice(5, size=20000, p=p)
    out = M.kl_estimate(np.log(p[y]), np.log(q[y]))
    exact = float(np.sum(p * np.log(p / q)))
    assert out["kl"] == pytest.approx(exact, abs=4 * out["kl_se"]) and out["kl_samples"] == 20000
    assert M.kl_estimate([-3.0, -4.0], [-3.0, -4.0])["kl"] == 0.0
    one = M.kl_estimate([-3.0], [-4.0])   # one sample: no standard error (was NaN)
    assert one["kl"] == 1.0 and one["kl_se"] is None and one["kl_samples"] == 1


def synthetic_df_gamed(rng, n=805):
    """A stand-in for alpaca_eval's df_gamed.csv (same columns): two length-gamed baselines on every instruction,
    their preferences driven by length and a per-instruction difficulty. alpaca_eval's orientation: output_1 is
    the reference, so std_delta_len = (reference - model) / sd, and preference (0..1) = the model wins."""
    import pandas as pd
    difficulty = rng.normal(0, 1, n)
    rows = []
    for name, shift in (("gamed_verbose", 1.5), ("gamed_concise", -1.5)):
        z = rng.normal(shift, 0.5, n)
        rows.append(pd.DataFrame({"model": name, "index": np.arange(n), "instruction_difficulty": difficulty,
                                  "preference": sigmoid(1.5 * np.tanh(z) + difficulty), "std_delta_len": -z,
                                  "not_gamed_baseline": False}))
    return pd.concat(rows, ignore_index=True), difficulty


def test_alpaca_eval_glm_removes_a_pure_length_effect(tmp_path):
    pytest.importorskip("alpaca_eval")
    rng = np.random.default_rng(4)
    df_gamed, difficulty = synthetic_df_gamed(rng)
    path = tmp_path / "df_gamed.csv"
    df_gamed.to_csv(path, index=False)
    n = 805
    ref_len = rng.integers(300, 700, n)
    delta = 100 * rng.normal(0.8, 1, n)
    pol_len = np.maximum(1, ref_len + delta).astype(int)
    z = (pol_len - ref_len) / np.std(pol_len - ref_len, ddof=1)
    prefs = sigmoid(1.5 * np.tanh(z) + difficulty)       # length and difficulty, no quality difference
    out = M.alpaca_eval_lc_win_rate(prefs, ["x" * k for k in pol_len], ["x" * k for k in ref_len], range(n), path)
    assert np.mean(prefs) > 0.6
    assert out["lc_win_rate"] == pytest.approx(np.mean(sigmoid(difficulty)), abs=0.01)   # 0.50: length removed
    assert out["lc_method"] == "alpaca_eval_glm_length_controlled_v1"
    own = M.length_controlled_win_rate(prefs, pol_len, ref_len)   # the judge likes longer outputs: both read > 0
    assert out["length_coef"] > 0.5 and own["length_coef"] > 0.5
    better = sigmoid(1.5 * np.tanh(z) + difficulty + 1.0)   # plus a real quality effect: that one is kept
    out = M.alpaca_eval_lc_win_rate(better, ["x" * k for k in pol_len], ["x" * k for k in ref_len], range(n), path)
    assert out["lc_win_rate"] == pytest.approx(np.mean(sigmoid(difficulty + 1.0)), abs=0.01)
    with pytest.raises(PobenchError, match="no such file"):
        M.alpaca_eval_lc_win_rate(prefs, ["a"] * n, ["b"] * n, range(n), tmp_path / "missing.csv")
    df_gamed.drop(columns=["model", "instruction_difficulty"]).to_csv(path, index=False)   # a KeyError before
    with pytest.raises(PobenchError, match=f"eval.lc_difficulty_file {re.escape(str(path))}: no column "
                                           f"'instruction_difficulty'"):
        M.alpaca_eval_lc_win_rate(prefs, ["a"] * n, ["b"] * n, range(n), path)
    path.write_bytes(b"")
    with pytest.raises(PobenchError, match="not a CSV file"):
        M.alpaca_eval_lc_win_rate(prefs, ["a"] * n, ["b"] * n, range(n), path)


def test_sigmoid_of_judges_is_stable_for_large_differences():
    from pobench.eval.judges import _sigmoid
    assert _sigmoid(1000) == 1.0 and _sigmoid(-1000) == 0.0 and math.isclose(_sigmoid(0), 0.5)


def test_lc_win_rate_stays_finite_when_length_separates_a_few_prompts():
    """Eight prompts, every longer output won: without a prior the length coefficient runs off to infinity."""
    pol = [100, 120, 140, 160, 20, 30, 40, 50]
    ref = [50] * 4 + [90] * 4
    lc = M.length_controlled_win_rate([1, 1, 1, 1, 0, 0, 0, 0], pol, ref)
    assert 0.05 < lc["lc_win_rate"] < 0.95 and 0 < lc["length_coef"] < 10 and math.isfinite(lc["lc_win_rate_se"])
    # ties at equal lengths fitted exactly, and separable verdicts: the soft labels alone would set the penalty's
    # dispersion to 0, and the length coefficient would run off again
    lc = M.length_controlled_win_rate([0.5] * 4 + [1, 1, 0, 0], [100] * 4 + [150, 170, 60, 40], [100] * 8)
    assert 0.4 < lc["lc_win_rate"] < 0.6 and 0 < lc["length_coef"] < 5 and math.isfinite(lc["lc_win_rate_se"])


def test_the_kl_estimate_is_of_the_policy_against_the_reference(tiny_model_dir, tmp_path):
    """estimate_kl samples the policy and scores the samples under both models: a policy sharper than its reference
    (output layer x 3) is far from it, KL(policy || reference) clearly positive; the reference against itself is 0.
    Swapping the two models inside it would sample the reference and give a negative mean."""
    import contextlib
    import copy
    import types

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pobench.eval.runner import estimate_kl
    from pobench.sampling.pools import PoolStore

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    policy = copy.deepcopy(reference)
    with torch.no_grad():
        policy.lm_head.weight.mul_(3.0)
    cfg = types.SimpleNamespace(
        eval=types.SimpleNamespace(kl_samples=4, temperature=0.7, top_p=1.0, max_new_tokens=8, seed=0, batch_size=0),
        train=types.SimpleNamespace(logps_chunk=1024),
        model=types.SimpleNamespace(compile_decoding=False, top_p_method="auto"))
    prompts = [tokenizer(f"Question {i}: what is {i} plus {i}?")["input_ids"] for i in range(6)]

    def against(model):
        return lambda: contextlib.nullcontext(model)

    def store(name: str):
        return PoolStore(tmp_path / f"{name}.jsonl", fields={"logps": list})

    sharper = estimate_kl(cfg, policy, tokenizer, prompts, against(reference), torch.device("cpu"), store("sharper"))
    same = estimate_kl(cfg, reference, tokenizer, prompts, against(reference), torch.device("cpu"), store("same"))
    assert sharper["kl_samples"] == 24 and sharper["kl"] > 4 * sharper["kl_se"] > 0
    assert same["kl"] == pytest.approx(0.0, abs=1e-4)


def test_the_difficulty_file_is_checked_once_per_version(tmp_path, monkeypatch):
    """A command that plans many runs checks alpaca_eval's df_gamed.csv once, and again only when the file
    changes (a bad file is reported every time: failures are not remembered)."""
    from pobench.eval import metrics as M
    reads = []
    real = M.read_difficulty_file
    monkeypatch.setattr(M, "read_difficulty_file", lambda path: reads.append(path) or real(path))
    path = tmp_path / "gamed.csv"
    path.write_text(",".join(M.DIFFICULTY_COLUMNS) + "\n0,0.1,1.5,0.2,1\n")
    for _ in range(3):
        M.check_difficulty_file(path)
    assert len(reads) == 1
    path.write_text("index,preference\n0,1.5\n")
    for _ in range(2):
        with pytest.raises(PobenchError, match="no column 'instruction_difficulty'"):
            M.check_difficulty_file(path)
    assert len(reads) == 3


def test_alpaca_eval_glm_with_one_answer_or_equal_length_differences(tmp_path):
    """One prompt divided its length difference by a NaN spread (an IndexingError inside alpaca_eval: internal error,
    the answers lost); equal differences by a zero one (tanh(inf): a made-up length effect). As the length-only GLM:
    no LC win rate where length cannot be told from quality, the GLM where the lengths are equal."""
    pytest.importorskip("alpaca_eval")
    df_gamed, _ = synthetic_df_gamed(np.random.default_rng(4))
    path = tmp_path / "df_gamed.csv"
    df_gamed.to_csv(path, index=False)
    for prefs, policy, reference in (([0.7], ["x" * 10], ["x" * 20]),
                                     ([0.7, 0.2, 0.9], ["x" * 10] * 3, ["x" * 20] * 3)):
        out = M.alpaca_eval_lc_win_rate(prefs, policy, reference, range(len(prefs)), path)
        assert out["lc_win_rate"] is None and "cannot be told apart" in out["lc_note"]
        assert out["lc_method"] == "alpaca_eval_glm_length_controlled_v1"
    for prefs in ([0.7], [0.7, 0.2, 0.9]):
        out = M.alpaca_eval_lc_win_rate(prefs, ["x" * 10] * len(prefs), ["y" * 10] * len(prefs), range(len(prefs)), path)
        assert 0 < out["lc_win_rate"] < 1 and "lc_note" not in out


def test_alpaca_eval_glm_only_against_its_own_reference_outputs(tmp_path):
    """Its instruction difficulties were measured against AlpacaEval's reference outputs: against the reference
    policy's answers (or any other) it was applied all the same; the length-only GLM is used, and eval.json says so."""
    from types import SimpleNamespace

    from pobench.eval.alpaca_set import EvalItem
    from pobench.eval.runner import summarize
    pytest.importorskip("alpaca_eval")
    rng = np.random.default_rng(5)
    df_gamed, _ = synthetic_df_gamed(rng)
    path = tmp_path / "df_gamed.csv"
    df_gamed.to_csv(path, index=False)
    n = 40
    policy = ["x" * int(k) for k in rng.integers(10, 300, n)]
    reference = ["y" * int(k) for k in rng.integers(10, 300, n)]
    rows = [{"preference": float(p), "policy_first": True, "scores": None} for p in rng.uniform(0, 1, n)]
    items = [EvalItem([{"role": "user", "content": f"q{i}"}], reference[i], f"alpaca_eval:{i}", i) for i in range(n)]
    # reference dataset on the alpaca_eval set is the file's own outputs, as reference alpaca_eval
    for reference_kind, method in (("alpaca_eval", "alpaca_eval_glm_length_controlled_v1"),
                                   ("sft", "length_only_glm"), ("dataset", "alpaca_eval_glm_length_controlled_v1")):
        e = SimpleNamespace(eval_set="alpaca_eval", reference=reference_kind, lc_difficulty_file=str(path),
                            bootstrap=100, seed=0)
        out = summarize(SimpleNamespace(eval=e), rows, policy, reference, items)
        assert out["lc_method"] == method
        assert ("eval.lc_difficulty_file unused" in out.get("lc_note", "")) == (reference_kind == "sft")
