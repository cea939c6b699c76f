"""pobench report: known-answer statistics, the grid, the reader (both eval.json forms), the tables, plots and
HTML from run folders written here, and a real tiny-model `pobench run --grid` whose leaderboard `pobench
report --format markdown` reproduces."""
from __future__ import annotations

import json
import re
import shutil
import math
import subprocess
import sys
from pathlib import Path

import pytest

from pobench.errors import PobenchError
from pobench.report import grid as G
from pobench.report.build import build_report
from pobench.report.collect import collect
from pobench.report.render import sections, to_csv, to_json, to_markdown
from pobench.report.stats import (area_under_curve, holm, interpolate_at, mean_ci, x_at_target, t_quantile,
                                  t_test_p, value_at_first_crossing)


# -- statistics: known answers ---------------------------------------------------------------------------
@pytest.mark.parametrize("df,want", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622), (30, 2.0423)])
def test_t_quantile_matches_the_table(df, want):
    assert t_quantile(0.95, df) == pytest.approx(want, abs=1e-4)


def test_mean_ci_of_three_seeds():
    ci = mean_ci([1.0, 2.0, 3.0])   # sd 1, se 1/sqrt(3), t(0.975, 2) = 4.3027
    assert ci["mean"] == 2.0 and ci["n"] == 3
    assert ci["hi"] - 2.0 == pytest.approx(4.30265 / math.sqrt(3), abs=1e-4)
    assert 2.0 - ci["lo"] == pytest.approx(ci["hi"] - 2.0)


def test_mean_ci_one_seed_has_no_interval_and_missing_values_drop():
    assert mean_ci([0.7]) == {"mean": 0.7, "lo": None, "hi": None, "n": 1}
    assert mean_ci([None, float("nan")]) == {"mean": None, "lo": None, "hi": None, "n": 0}
    assert mean_ci([0.5, None, 0.7])["n"] == 2


def test_mean_ci_covers_the_true_mean_at_the_stated_rate():
    import numpy as np
    rng = np.random.default_rng(0)
    trials, covered = 3000, 0
    for sample in rng.normal(0.3, 0.1, size=(trials, 3)):   # 3 seeds, the usual count
        ci = mean_ci(sample.tolist())
        covered += ci["lo"] <= 0.3 <= ci["hi"]
    assert 0.935 <= covered / trials <= 0.965   # 95% +- 3.8 binomial standard errors


@pytest.mark.parametrize("values,want", [([0.04, 0.05, 0.06], 0.0130725), ([0.1, 0.2, 0.0, 0.3], 0.1027281),
                                         ([1, -2, 3, 0.5, 0.25], 0.5295571)])   # scipy.stats.ttest_1samp
def test_t_test_p_known_answers(values, want):
    assert t_test_p(values) == pytest.approx(want, rel=1e-5)
    assert t_test_p([0.1]) is None and t_test_p([0.0, 0.0]) == 1.0


@pytest.mark.parametrize("t,df,want", [(17.0, 127, 1.606658407417203e-34), (9.0, 3000, 3.913623012057606e-19),
                                        (40.0, 5, 1.8411962171772954e-07), (3.0, 2, 0.09546596626670913),
                                        (0.5, 1, 0.7048327646991335), (2.0, 1000, 0.04577034649325166)])
def test_tiny_p_values_are_computed_as_tails_not_written_as_zero(t, df, want):
    """p was 1 - P(|T| <= t), which is exactly 0 below the double's rounding of 1 (~1e-16): 128 prompts that all
    agree closely read "p = 0". The tail itself (an incomplete beta function) keeps them positive and exact.
    Expected values: 2 * scipy.stats.t.sf(t, df), scipy 1.17.1."""
    from pobench.report.stats import student_t_p
    assert student_t_p(t, df) == pytest.approx(want, rel=1e-9)
    assert student_t_p(-t, df) == student_t_p(t, df) and student_t_p(0.0, df) == 1.0
    close = [1 + 0.01 * (-1) ** i for i in range(128)]        # t ~ 1131 over 127 degrees of freedom
    assert 0 < t_test_p(close) < 1e-100


def test_differences_that_all_agree_are_not_marked():
    """Two seeds that agree on +1/32 held-out accuracy (quantised: it happens by chance) gave p = 0, so `*†`."""
    from pobench.report.render import fmt_delta
    assert t_test_p([1 / 32, 1 / 32]) is None and t_test_p([0.2, 0.2, 0.2]) is None
    agree = {**mean_ci([1 / 32, 1 / 32]), "p_holm": None}
    assert fmt_delta(agree) == "+0.031 ± 0.000"
    assert fmt_delta({**mean_ci([0.03, 0.032]), "p_holm": 0.01}, adjusted=True).endswith("*†")


def test_t_test_p_below_5_percent_exactly_when_the_interval_excludes_0():
    import numpy as np
    rng = np.random.default_rng(1)
    for n in (2, 3, 5, 10):
        for sample in rng.normal(0.5, 1.0, size=(400, n)):
            ci, p = mean_ci(sample.tolist()), t_test_p(sample.tolist())
            if abs(p - 0.05) > 1e-9:
                assert (p < 0.05) == (ci["lo"] > 0 or ci["hi"] < 0)


def interval(ci: dict) -> dict:
    """mean_ci's part of a tested difference (which adds its p-values)."""
    return {k: ci[k] for k in ("mean", "lo", "hi", "n")}


def test_holm_adjusts_in_the_given_order_and_keeps_missing_tests_out():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.01, None, 0.04]) == [pytest.approx(0.02), None, pytest.approx(0.04)]
    assert holm([0.6, 0.7]) == [1.0, 1.0] and holm([]) == [] and holm([0.03]) == [0.03]


CURVE_X, CURVE_Y = [0, 48, 96], [0.5, 0.6, 0.8]


def test_interpolation_at_pairs_seen_points_never_extrapolates():
    assert interpolate_at(CURVE_X, CURVE_Y, [0, 24, 72, 96]) == pytest.approx([0.5, 0.55, 0.7, 0.8])
    assert interpolate_at(CURVE_X, CURVE_Y, [-1, 100]) == [None, None]
    assert interpolate_at([0, 48, 96], [0.5, None, 0.8], [48]) == [pytest.approx(0.65)]  # a missing value is skipped


def test_area_under_curve_is_the_mean_value_over_the_range():
    assert area_under_curve(CURVE_X, CURVE_Y, 96) == pytest.approx((48 * 0.55 + 48 * 0.7) / 96)   # 0.625
    assert area_under_curve(CURVE_X, CURVE_Y, 48) == pytest.approx(0.55)
    assert area_under_curve(CURVE_X, CURVE_Y, 72) == pytest.approx((48 * 0.55 + 24 * 0.65) / 72)  # cut mid-segment
    assert area_under_curve(CURVE_X, CURVE_Y, 120) is None   # the run never got there
    assert area_under_curve([0, 10], [0.5, 0.5], 10) == pytest.approx(0.5)


def test_budget_to_target_interpolates_the_first_crossing():
    assert x_at_target(CURVE_X, CURVE_Y, 0.7) == pytest.approx(72)
    assert x_at_target(CURVE_X, CURVE_Y, 0.5) == 0
    assert x_at_target(CURVE_X, CURVE_Y, 0.9) is None
    assert x_at_target([0, 10, 20, 30], [0.5, 0.7, 0.4, 0.9], 0.6) == pytest.approx(5)   # first, not last


def test_value_at_first_crossing_follows_the_trajectory():
    kl, reward = [0.0, 0.2, 0.1, 0.5], [0.0, 1.0, 2.0, 3.0]   # KL need not grow monotonically
    assert value_at_first_crossing(kl, reward, 0.1) == pytest.approx(0.5)
    assert value_at_first_crossing(kl, reward, 0.3) == pytest.approx(2.5)   # from (0.1, 2) to (0.5, 3)
    assert value_at_first_crossing(kl, reward, 0.0) == 0.0
    assert value_at_first_crossing(kl, reward, 0.6) is None


# -- the tuning grid -------------------------------------------------------------------------------------
DEFAULTS = {"dpo": {"beta": 0.1, "label_smoothing": 0.0}, "simpo": {"beta": 2.0, "gamma_beta_ratio": 0.5}}


def test_grid_keys_resolve_short_names_and_scopes():
    keys = G.grid_keys("lr=3e-7,1e-6;beta=0.01,0.1;simpo.gamma_beta_ratio=0.3,0.5", DEFAULTS)
    assert [(k.path, k.algos) for k in keys] == [(("train", "lr"), ("dpo", "simpo")),
                                                 (("algorithm", "beta"), ("dpo", "simpo")),
                                                 (("algorithm", "gamma_beta_ratio"), ("simpo",))]
    assert keys[0].values == [3e-7, 1e-6]
    dpo, simpo = G.grid_points(keys, "dpo"), G.grid_points(keys, "simpo")
    assert [n for n, _ in dpo] == ["lr=3e-7,beta=0.01", "lr=3e-7,beta=0.1", "lr=1e-6,beta=0.01", "lr=1e-6,beta=0.1"]
    assert dpo[1][1] == {"train": {"lr": 3e-7}, "algorithm": {"beta": 0.1}}
    assert len(simpo) == 8
    assert "unequal tuning budget" in G.budget_note({"dpo": dpo, "simpo": simpo})
    assert G.budget_note({"dpo": dpo, "simpo": dpo}) is None
    plan, note = G.plan_grid(None, DEFAULTS)
    assert plan == {"dpo": [("", {})], "simpo": [("", {})]} and note is None


def test_default_grids_give_every_shipped_algorithm_the_same_budget():
    from pobench.registry import ALGORITHMS, algorithm_defaults, algorithm_grid, get_algorithm
    get_algorithm("dpo")   # discovers the shipped algorithms
    shipped = sorted(n for n, cls in ALGORITHMS.items() if cls.__module__.startswith("pobench.algorithms."))
    defaults = {n: algorithm_defaults(get_algorithm(n)) for n in shipped}
    assert all("grid" not in d for d in defaults.values())   # the grid is not a parameter
    plan, note = G.plan_grid("default", defaults)
    assert note is None and {len(points) for points in plan.values()} == {4}, plan
    assert plan["dpo"][0] == ("beta=0.01", {"algorithm": {"beta": 0.01}})
    assert [n for n, _ in plan["simpo"]] == ["beta=2.0,gamma_beta_ratio=0.3", "beta=2.0,gamma_beta_ratio=0.5",
                                            "beta=10.0,gamma_beta_ratio=0.3", "beta=10.0,gamma_beta_ratio=0.5"]
    both, _ = G.plan_grid("default;lr=1e-6,5e-6", {"dpo": defaults["dpo"]})
    assert len(both["dpo"]) == 8 and both["dpo"][1] == ("beta=0.01,lr=5e-6",
                                                        {"algorithm": {"beta": 0.01}, "train": {"lr": 5e-6}})
    assert algorithm_grid(get_algorithm("dpo")) == {"beta": [0.01, 0.05, 0.1, 0.5]}
    with pytest.raises(PobenchError, match="same config field"):
        G.plan_grid("default;beta=0.1,0.2", {"dpo": defaults["dpo"]})


@pytest.mark.parametrize("text,message", [
    ("lr", "expected key=value"), ("lr=", "expected key=value"), ("lr=1,1", "repeated"),
    ("lr=1;lr=2", "given twice"), ("nope=1", "unknown key 'nope'"), ("train.nope=1", "unknown config key"),
    ("dpo.gamma_beta_ratio=1", "has no parameter"), ("lr=1;train.lr=2", "same config field"),
    ("lr=1e-6,0.000001", "'0.000001' repeats an earlier value"),
    ("beta=0." + "0" * 300 + "1", "more than a folder name may hold"),
])
def test_bad_grids_are_usage_errors(text, message):
    with pytest.raises(PobenchError, match=message):
        G.plan_grid(text, DEFAULTS)


def test_a_grid_over_a_text_setting_keeps_what_was_typed():
    """`--grid data.hub_data_dir=1.10,1.1` was refused as a repeat (both read as the number 1.1), and a text
    setting got the number's text."""
    keys = G.grid_keys("data.hub_data_dir=1.10,1.1;lr=1e-6", DEFAULTS)
    assert keys[0].values == ["1.10", "1.1"] and keys[1].values == [1e-6]
    assert G.grid_keys("data.eval_split=test,null", DEFAULTS)[0].values == ["test", None]
    with_text = {"dpo": {**DEFAULTS["dpo"], "tag": "a"}, "simpo": DEFAULTS["simpo"]}
    assert G.grid_keys("dpo.tag=1.10,1.1", with_text)[0].values == ["1.10", "1.1"]


def test_a_short_name_in_two_places_is_ambiguous():
    with pytest.raises(PobenchError, match="ambiguous .*train.lr, algorithm.lr"):
        G.grid_keys("lr=1", {"weird": {"lr": 0.1}})


def test_best_point_by_validation_ties_broken_by_auc_then_order():
    pts = [{"point": "a", "value": 0.6, "tiebreak": 0.55}, {"point": "b", "value": 0.7, "tiebreak": 0.5},
           {"point": "c", "value": 0.7, "tiebreak": 0.6}, {"point": "d", "value": 0.7, "tiebreak": 0.6}]
    assert G.choose_best(pts) == "c"
    assert G.choose_best([{"point": "a", "value": 0.4}, {"point": "b", "value": 0.3}], "loss") == "b"
    assert G.choose_best([{"point": "a", "value": None}, {"point": "b", "value": 0.3}]) == "b"


# -- run folders written here ----------------------------------------------------------------------------
def write_run(root: Path, algo: str, seed: int, accs: list[float], point: str = "", suite: str = "hh-rlhf",
              eval_json: dict | None = None, pairs_per_eval: int = 48, time_per_pair: float = 1.0) -> Path:
    """A finished run: held-out accuracy `accs[0]` before training, then one evaluation every pairs_per_eval."""
    run = root / suite / algo / point / f"seed{seed}"
    run.mkdir(parents=True)
    rows = []
    for i, acc in enumerate(accs[1:], 1):
        seen = i * pairs_per_eval
        rows.append({"step": i * 12, "pairs_seen": seen, "records_seen": seen, "loss": 0.69 - 0.01 * i, "rewards/accuracies": acc,
                     "rewards/margins": 0.01 * i, "time_s": seen * time_per_pair,
                     "eval/rewards/accuracies": acc, "eval/rewards/margins": 0.02 * i, "eval/loss": 0.69 - 0.02 * i})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    final = {k: v for k, v in rows[-1].items() if k.startswith("eval/")}
    (run / "train_summary.json").write_text(json.dumps({
        "suite": suite, "algorithm": algo, "seed": seed, "steps": rows[-1]["step"], "pairs_seen": rows[-1]["pairs_seen"],
        "train_time_s": rows[-1]["time_s"], "pairs_per_s": 1 / time_per_pair, "reward_model": None,
        "held_out_initial": {"eval/rewards/accuracies": accs[0], "eval/rewards/margins": 0.0, "eval/loss": 0.6931},
        "held_out_final": final}))
    (run / "config.yaml").write_text(f"suite: {suite}\nseed: {seed}\n")
    if eval_json is None:   # today's form: held-out pairs only
        eval_json = {"held_out_pairs": final, "judge": None, "note": "held-out preference-pair metrics"}
    (run / "eval.json").write_text(json.dumps(eval_json))
    return run


def new_eval(win_rate: float, acc: float) -> dict:
    """The form `pobench eval` writes."""
    return {"eval_set": "hh-rlhf-test", "n_prompts": 32, "decoding": {"temperature": 0.0},
            "reference": {"kind": "reference_policy"},
            "judge": {"name": "bt-minilm-hh", "kind": "reward_model", "held_out_accuracy": 0.66},
            "win_rate": win_rate, "win_rate_se": 0.05, "win_rate_ci95": [win_rate - 0.1, win_rate + 0.1],
            "lc_win_rate": None, "lc_method": None, "avg_length": 40.0, "reference_avg_length": 38.0,
            "reward_mean": 0.1, "kl": 2.0, "kl_se": float("nan"), "versions": {},
            "held_out": {"final": {"eval/rewards/accuracies": acc, "eval/loss": 0.6}, "initial": {}, "pairs": 4}}


def test_each_judge_is_named_with_its_own_accuracy(tmp_path):
    """Per-seed auto judges: each with its held-out accuracy (names and accuracies were sorted apart, so the
    line paired 'a' with b's accuracy)."""
    for seed, (name, acc) in enumerate((("z-judge", 0.75), ("a-judge", 0.5)), 1):
        ev = new_eval(0.5, 0.6)
        ev["judge"] = {**ev["judge"], "name": name, "held_out_accuracy": acc}
        write_run(tmp_path, "dpo", seed, [0.5, 0.6], eval_json=ev)
    report, _, _ = build_report(tmp_path)
    assert report["suites"][0]["judge_held_out_accuracy"] == {"a-judge": [0.5], "z-judge": [0.75]}
    md = to_markdown(sections(report))
    assert "judge: a-judge, z-judge (reward_model, held-out pair accuracy a-judge 0.500, z-judge 0.750)" in md
    ev = new_eval(0.5, 0.6)
    ev["judge"] = {**ev["judge"], "name": "b-judge", "held_out_accuracy": None}
    write_run(tmp_path, "dpo", 3, [0.5, 0.6], eval_json=ev)                 # a judge without an accuracy
    md = to_markdown(sections(build_report(tmp_path)[0]))
    assert "judge: a-judge, b-judge, z-judge (reward_model, held-out pair accuracy a-judge 0.500, z-judge 0.750)" in md


def test_reader_accepts_both_eval_forms_and_adds_the_initial_point(tmp_path):
    write_run(tmp_path, "dpo", 1, [0.5, 0.6, 0.7])
    write_run(tmp_path, "simpo", 1, [0.5, 0.55, 0.6], eval_json=new_eval(0.62, 0.61))
    runs, curves = collect(tmp_path)
    dpo, simpo = runs.set_index("algo").loc["dpo"], runs.set_index("algo").loc["simpo"]
    assert dpo["held_out_acc"] == 0.7 and (dpo["win_rate"] is None or math.isnan(dpo["win_rate"]))
    assert simpo["held_out_acc"] == 0.61 and simpo["win_rate"] == 0.62 and simpo["judge"] == "bt-minilm-hh"
    flat = {**new_eval(0.3, 0.0), "held_out": {"eval/rewards/accuracies": 0.66}}   # held_out as plain metrics
    write_run(tmp_path, "rso", 1, [0.5, 0.6], eval_json=flat)
    assert collect(tmp_path)[0].set_index("algo").loc["rso", "held_out_acc"] == 0.66
    assert sorted(curves[curves["algo"] == "dpo"]["pairs_seen"]) == [0, 48, 96]


def test_reader_names_the_file_and_key_of_bad_input(tmp_path):
    run = write_run(tmp_path, "dpo", 1, [0.5, 0.6], eval_json=new_eval(1.5, 0.6))
    with pytest.raises(PobenchError, match=r"eval.json: 'win_rate' must be a fraction"):
        collect(tmp_path)
    (run / "eval.json").write_text(json.dumps(new_eval(0.5, 0.6)))
    with open(run / "metrics.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(PobenchError, match=r"metrics.jsonl:2: not valid JSON"):
        collect(tmp_path)
    (run / "metrics.jsonl").write_text("")
    (run / "config.yaml").write_text("- a list\n")
    with pytest.raises(PobenchError, match=r"seed1/config.yaml: expected a mapping of keys at the top level"):
        collect(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PobenchError, match="no finished runs"):
        build_report(tmp_path / "empty")


def grid_results(root: Path) -> Path:
    """dpo at two grid points x 3 seeds: beta=0.1 is better on validation (held-out accuracy) but worse on the
    test win rate, so a selection that peeked at the test would choose beta=0.01. simpo: one point, one seed."""
    finals = {"beta=0.01": [0.58, 0.60, 0.62], "beta=0.1": [0.68, 0.70, 0.72]}
    wins = {"beta=0.01": 0.9, "beta=0.1": 0.4}
    for point, accs in finals.items():
        for seed, acc in enumerate(accs, 1):
            write_run(root, "dpo", seed, [0.5, (0.5 + acc) / 2, acc], point=point,
                      eval_json=new_eval(wins[point] + 0.01 * seed, acc))
    write_run(root, "simpo", 1, [0.5, 0.5, 0.55], point="beta=2.0", eval_json=new_eval(0.5, 0.55))
    write_run(root, "simpo", 1, [0.5, 0.6, 0.6], point="beta=1.0", eval_json=new_eval(0.5, 0.6))
    return root


def test_leaderboard_takes_the_best_point_on_validation_never_on_test(tmp_path):
    report, _, _ = build_report(grid_results(tmp_path))
    suite = report["suites"][0]
    rows = {r["algo"]: r for r in suite["leaderboard"]}
    assert rows["dpo"]["grid_point"] == "beta=0.1" and rows["dpo"]["grid_points"] == 2
    assert rows["dpo"]["seeds"] == [1, 2, 3]
    assert rows["dpo"]["held_out_acc"] == pytest.approx(mean_ci([0.68, 0.70, 0.72]))
    assert rows["dpo"]["win_rate"]["mean"] == pytest.approx(0.42)
    assert rows["simpo"]["grid_point"] == "beta=1.0" and rows["simpo"]["win_rate"]["lo"] is None   # one seed
    assert suite["spread"]["dpo"]["range"] == pytest.approx(0.10)
    assert suite["judge"] == ["bt-minilm-hh"]
    chosen = {(g["algo"], g["grid_point"]) for g in suite["grid"] if g["chosen"]}
    assert chosen == {("dpo", "beta=0.1"), ("simpo", "beta=1.0")}
    conv = suite["convergence"]
    assert conv["x_max"] == 96 and conv["points"] == [24, 48, 72, 96]
    acc = {r["algo"]: r for r in conv["metrics"]["eval/rewards/accuracies"]}
    # seed 1 of dpo beta=0.1: 0.5 -> 0.59 -> 0.68; at 24 pairs: 0.545; over three seeds 0.545, 0.55, 0.555
    assert acc["dpo"]["at"][0]["mean"] == pytest.approx(0.55)
    assert acc["dpo"]["to_target"]["mean"] == pytest.approx(mean_ci([48 + 48 * 0.01 / 0.09, 48, 48 - 48 * 0.01 / 0.11])["mean"])
    assert acc["dpo"]["reached"] == "3/3" and acc["simpo"]["reached"] == "1/1"


def test_grid_points_run_on_other_seeds_are_scored_on_the_seeds_they_share(tmp_path):
    """Point B ran on seed 1 only, A on seeds 1-3: B's one-seed mean (0.68) beat A's three-seed mean (0.64), though A
    is better on the one seed both have (0.70). A mean of fewer seeds swings further, so B could win on its seed's
    luck; every point is scored on the seeds all of the algorithm's points share, and the grid says so."""
    for seed, acc in zip((1, 2, 3), (0.70, 0.60, 0.62)):
        write_run(tmp_path, "dpo", seed, [0.5, acc], point="A")
    write_run(tmp_path, "dpo", 1, [0.5, 0.68], point="B")
    suite = build_report(tmp_path)[0]["suites"][0]
    assert suite["leaderboard"][0]["grid_point"] == "A" and suite["leaderboard"][0]["seeds"] == [1, 2, 3]
    grid = {r["grid_point"]: r for r in suite["grid"]}
    assert grid["A"]["scored_on"] == [1] and grid["A"]["seeds"] == 3 and grid["A"]["scoring"] == "shared"
    assert grid["A"]["validation"]["mean"] == pytest.approx(0.70) and grid["B"]["validation"]["mean"] == 0.68
    md = to_markdown(sections(build_report(tmp_path)[0]))
    assert "dpo's grid points ran on different seeds: each is scored (validation and acc AUC) on the seeds all " \
           "of them have, 1" in md
    assert "| dpo | A | 3 | 1 | 0.700 | 0.600 | * |" in md


def test_grid_points_that_share_no_seed_are_scored_on_equally_many_seeds(tmp_path):
    """B ran on seed 4 only, A on seeds 1-3: with no seed in common, each point is scored on as many seeds as the
    point with the fewest has (so a one-seed mean does not compete with a three-seed one), taking first the seeds
    most points have, and the grid says the choice is weaker."""
    from pobench.report.leaderboard import scoring_seeds
    assert scoring_seeds({"A": [1, 2, 3], "B": [2, 3], "C": [4], "D": []}) == (
        {"A": [2], "B": [2], "C": [4], "D": []}, "equal count")
    assert scoring_seeds({"A": [1, 2], "B": [1, 2], "C": []}) == ({"A": [1, 2], "B": [1, 2], "C": []}, "alike")
    for seed, acc in zip((1, 2, 3), (0.70, 0.60, 0.62)):
        write_run(tmp_path, "dpo", seed, [0.5, acc], point="A")
    write_run(tmp_path, "dpo", 4, [0.5, 0.68], point="B")
    report = build_report(tmp_path)[0]
    assert report["suites"][0]["leaderboard"][0]["grid_point"] == "A"
    assert "dpo's grid points share no seed: each is scored on as many of its own seeds" in to_markdown(sections(report))


def test_the_leaderboard_charges_offline_samplers_their_pools(tmp_path):
    """MC-PO's candidates are generated before training, OnMC-PO's inside it: the leaderboard shows the pools'
    generation time beside the training time (train_summary's candidate_pool.generation_s), not hidden."""
    for seed in (1, 2):
        write_run(tmp_path, "dpo", seed, [0.5, 0.6])
        run = write_run(tmp_path, "mcpo", seed, [0.5, 0.7])
        summary = json.loads((run / "train_summary.json").read_text())
        summary["candidate_pool"] = {"source": "generated", "generation_s": 30.0 + seed}
        (run / "train_summary.json").write_text(json.dumps(summary))
    report, _, _ = build_report(tmp_path)
    rows = {r["algo"]: r for r in report["suites"][0]["leaderboard"]}
    assert rows["mcpo"]["pool_s"]["mean"] == pytest.approx(31.5) and rows["dpo"]["pool_s"]["mean"] is None
    assert "pool s" in to_markdown(sections(report))


def test_the_leaderboard_shows_the_reference_time_and_reads_runs_from_before_it_as_not_measured(tmp_path):
    """train_summary's reference_s (the part of train_time_s spent on reference log-probs, MC-PO's pools' included)
    is the leaderboard's ref s; a run from before it was recorded has none: not measured, and the table says that
    such a run's train s leaves the reference pass before step 1 out, rather than read it as 0."""
    for seed in (1, 2):
        write_run(tmp_path, "dpo", seed, [0.5, 0.6])      # as written before reference_s
        run = write_run(tmp_path, "mcpo", seed, [0.5, 0.7])
        summary = json.loads((run / "train_summary.json").read_text())
        (run / "train_summary.json").write_text(json.dumps({**summary, "reference_s": 10.0 + seed}))
    report, _, _ = build_report(tmp_path)
    rows = {r["algo"]: r for r in report["suites"][0]["leaderboard"]}
    assert rows["mcpo"]["reference_s"]["mean"] == pytest.approx(11.5)
    assert rows["dpo"]["reference_s"] == {"mean": None, "lo": None, "hi": None, "n": 0}
    text = to_markdown(sections(report))
    assert "| ref s |" in text and "ref s not measured for runs of dpo" in text
    assert "every algorithm's reference log-probs in it" in text


def test_rows_evaluated_otherwise_are_marked_on_the_leaderboard(tmp_path):
    """DPO evaluated again on AlpacaEval with an LLM judge, SimPO on the held-out prompts with the auto judge: their
    win rates share a column but not a scale, and the leaderboard says so. Per-seed auto judges are one kind."""
    for seed in (1, 2):
        write_run(tmp_path, "dpo", seed, [0.5, 0.6], eval_json={
            **new_eval(0.57, 0.6), "eval_set": "alpaca_eval", "judge": {"name": "alpaca_eval:local", "kind": "llm"}})
        write_run(tmp_path, "simpo", seed, [0.5, 0.6], eval_json={
            **new_eval(0.5, 0.6), "judge": {"name": f"auto:judges/hh-{seed}", "kind": "reward_model"}})
    report, _, _ = build_report(tmp_path)
    mixed = report["suites"][0]["mixed_evaluations"]
    assert mixed == {"dpo": "eval set alpaca_eval, judge alpaca_eval:local, reference reference_policy",
                     "simpo": "eval set hh-rlhf-test, judge auto, reference reference_policy"}
    assert "MIXED EVALUATIONS: the rows' win rates come from other evaluations" in to_markdown(sections(report))
    alike = tmp_path / "alike"
    for algo in ("dpo", "simpo"):
        write_run(alike, algo, 1, [0.5, 0.6], eval_json=new_eval(0.5, 0.6))
    write_run(alike, "rso", 1, [0.5, 0.6])     # not evaluated (held-out pairs only): nothing of its own to mix
    assert build_report(alike)[0]["suites"][0]["mixed_evaluations"] == {}


def test_formats_agree(tmp_path):
    report, _, _ = build_report(grid_results(tmp_path))
    md = to_markdown(sections(report))
    assert "| dpo | beta=0.1 | 2 | 1,2,3 | 0.420 ± 0.025 |" in md   # 0.41, 0.42, 0.43: sd 0.01 * 4.303 / sqrt 3
    assert "judge: bt-minilm-hh (reward_model, its held-out pair accuracy 0.660)" in md
    assert "### tuning grid: hh-rlhf" in md and "### convergence: held-out reward accuracy (hh-rlhf)" in md
    assert json.loads(to_json(report))["suites"][0]["leaderboard"][0]["algo"] == "dpo"
    import io
    import pandas as pd
    table = pd.read_csv(io.StringIO(to_csv(report)))
    assert list(table["algo"]) == ["dpo", "simpo"] and table.loc[0, "win_rate_mean"] == pytest.approx(0.42)


def test_columns_nobody_measured_are_named_not_shown(tmp_path):
    write_run(tmp_path, "dpo", 1, [0.5, 0.6])
    md = to_markdown(sections(build_report(tmp_path)[0]))
    assert "judge: none yet" in md and "not measured: win rate, LC win rate, RM score, KL, length" in md
    assert "| algo | seeds | held-out acc | train s | pairs/s |" in md


def test_gold_metrics_of_a_known_reward_suite(tmp_path):
    run = write_run(tmp_path, "dpo", 1, [0.5, 0.6, 0.7], suite="synthetic")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row, win in zip(rows, (0.6, 0.7)):
        row.update({"gold/win_rate": win, "gold/reward": 2 * win, "gold/kl": win - 0.5})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    initial = {"step": 0, "pairs_seen": 0, "time_s": 0.0, "gold/win_rate": 0.5, "gold/reward": 1.0, "gold/kl": 0.0}
    (run / "gold_eval.json").write_text(json.dumps({"final": {"gold/reward": 1.4, "gold/win_rate": 0.7, "gold/kl": 0.2,
                                                               "gold/length": 7.5}, "curve": [initial]}))
    suite = build_report(tmp_path)[0]["suites"][0]
    row = suite["leaderboard"][0]
    assert row["gold_win_rate"]["mean"] == 0.7 and row["gold_length"]["mean"] == 7.5
    gold = suite["convergence"]["metrics"]["gold/win_rate"][0]
    assert [ci["mean"] for ci in gold["at"]] == pytest.approx([0.55, 0.6, 0.65, 0.7])   # starts at 0.5 from the curve
    frontier = build_report(tmp_path)[0]["suites"][0]["matched_kl"]   # gold/kl 0 -> 0.1 -> 0.2, reward 1.0 -> 1.4
    assert frontier["levels"] == pytest.approx([0.05, 0.1, 0.15, 0.2])
    assert [ci["mean"] for ci in frontier["rows"][0]["at"]] == pytest.approx([1.1, 1.2, 1.3, 1.4])
    md = to_markdown(sections(build_report(tmp_path)[0]))
    assert "### at matched KL: gold/reward (synthetic)" in md
    from pobench.report.plots import plot_report
    report, runs, curves = build_report(tmp_path)
    written = [p.name for _, p in plot_report(report, runs, curves, tmp_path / "plots")]
    assert "synthetic-gold.png" in written   # gold win rate, gold reward, and the reward-KL frontier
    assert "| gold/win_rate |" in md and "### convergence: gold win rate against the reference (synthetic)" in md


def test_plots_and_self_contained_html(tmp_path):
    from typer.testing import CliRunner
    from pobench.cli import app
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["report", str(grid_results(tmp_path / "results")), "--format", "html",
                                      "--out", str(out / "report.html"), "--plots", str(out / "plots")])
    assert result.exit_code == 0, result.output
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs == ["hh-rlhf-convergence.png", "hh-rlhf-reward-kl.png", "hh-rlhf-training.png", "hh-rlhf-vs-dpo.png"]
    for p in (out / "plots").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "<h3>leaderboard: hh-rlhf</h3>" in html
    assert "<h3>against dpo: hh-rlhf</h3>" in html
    assert "src='http" not in html and 'src="http' not in html   # nothing fetched when opened


def test_a_plot_that_fails_half_way_leaves_the_earlier_png(tmp_path, monkeypatch):
    """PNGs were written straight to their path (fig.savefig(path)): a plot stopped half-way (a full disk, Ctrl-C)
    left a truncated image where the earlier one was. They are written to a temporary file and renamed, as the rest
    of the report's output is."""
    from matplotlib.figure import Figure
    from pobench.report.plots import plot_report
    report, runs, curves = build_report(grid_results(tmp_path / "results"))
    plot_report(report, runs, curves, tmp_path / "plots")
    earlier = {p.name: p.read_bytes() for p in (tmp_path / "plots").glob("*.png")}

    def fails_half_way(self, target, *args, **kwargs):
        if isinstance(target, (str, Path)):
            Path(target).write_bytes(b"\x89PNG half")
        else:
            target.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", fails_half_way)
    with pytest.raises(OSError):
        plot_report(report, runs, curves, tmp_path / "plots")
    assert {p.name: p.read_bytes() for p in (tmp_path / "plots").glob("*.png")} == earlier
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(earlier)   # no temporary file left


def test_report_usage_errors_exit_2(tmp_path):
    from typer.testing import CliRunner
    from pobench.cli import app
    write_run(tmp_path, "dpo", 1, [0.5, 0.6])
    proc = subprocess.run([sys.executable, "-m", "pobench.cli", "report", str(tmp_path), "--format", "xml"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --format xml"), proc.stderr
    for args, message in ((["--select", "winrate"], "--select winrate"), (["--points", "96,48"], "--points"),
                          (["--suite", "nope"], "no runs of suite 'nope'")):
        result = CliRunner().invoke(app, ["report", str(tmp_path), *args])
        assert isinstance(result.exception, PobenchError) and message in str(result.exception), (args, result.output)
    # --out: an unwritable place is a usage error in every format, and an earlier report is not emptied by it
    for fmt in ("table", "markdown"):
        result = CliRunner().invoke(app, ["report", str(tmp_path), "--format", fmt, "--out", str(tmp_path / "no" / "r")])
        assert isinstance(result.exception, PobenchError) and "--out" in str(result.exception), (fmt, result.output)
    earlier = tmp_path / "report.txt"
    assert CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(earlier)]).exit_code == 0
    assert "leaderboard: hh-rlhf" in earlier.read_text() and not list(tmp_path.glob(".report.txt.tmp*"))


def test_runs_made_under_older_data_rules_are_named_once_per_report(tmp_path):
    """A run whose data.json has no records_rule (an older pobench's: held-out records whose prompt was trained on
    were kept) was read silently; its held-out metrics may be measured on training prompts. `pobench report` says
    so in one line however many such runs it reads: runs of the current rule, and runs without data.json (nothing
    to rebuild), are not counted."""
    from typer.testing import CliRunner

    from pobench.cli import app
    from pobench.data import RECORDS_RULE
    digest = {"records_digest": {"train": "t", "eval": "e"}}
    for algo, seed, report in (("dpo", 1, digest), ("dpo", 2, digest), ("simpo", 1, {**digest, "records_rule": 2}),
                               ("simpo", 2, None)):
        run = write_run(tmp_path, algo, seed, [0.5, 0.6])
        if report is not None:
            (run / "data.json").write_text(json.dumps(report))
    assert RECORDS_RULE == 2
    assert sorted(collect(tmp_path)[0]["records_rule"]) == [1, 1, 2, 2]
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--format", "markdown"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "older data rules" in line]
    assert warnings == [
        "warning: 2 runs were made under older data rules (data.json without records_rule 2) and read on the records "
        "those rules chose: their held-out set may hold training records' prompts (since dropped as prompt_in_train); "
        "to rebuild a run under the current rules, start it again (pobench run, without --resume, into a new --out "
        "or after removing its folder)"]
    assert "older data rules" not in result.stdout   # the report itself is unchanged
    for run in (tmp_path / "hh-rlhf" / "dpo").iterdir():
        (run / "data.json").write_text(json.dumps({**digest, "records_rule": 2}))
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--format", "markdown"])
    assert result.exit_code == 0 and "older data rules" not in result.output


def test_the_same_run_twice_under_one_root_is_refused(tmp_path):
    """A copy of a suite folder below the same results root would count one seed twice (and mix its curves)."""
    import shutil
    write_run(tmp_path, "dpo", 1, [0.5, 0.6])
    shutil.copytree(tmp_path / "hh-rlhf", tmp_path / "backup" / "hh-rlhf")
    with pytest.raises(PobenchError, match=r"two runs of hh-rlhf dpo seed 1 under .*point the report at a folder"):
        build_report(tmp_path)
    assert build_report(tmp_path / "backup")[0]["suites"][0]["leaderboard"][0]["seeds"] == [1]


def test_an_eval_of_one_prompt_reads_back(tmp_path):
    """pobench eval of a single prompt has no win_rate_se (no spread from one prompt): eval.json held a bare NaN
    there, which is not JSON; it holds null (a NaN anywhere in it too: kl_se here), and the report reads it as not
    measured, as it reads the NaN of an eval.json written before."""
    from pobench.engine.io import atomic_write_json
    from pobench.eval.metrics import win_rate

    def strict(constant):
        raise AssertionError(f"eval.json holds {constant}, which is not JSON")
    ev = new_eval(0.7, 0.6)   # its kl_se is NaN
    ev.update(win_rate([0.7]))
    assert ev["win_rate_se"] is None
    run = write_run(tmp_path, "dpo", 1, [0.5, 0.6])
    atomic_write_json(run / "eval.json", ev)
    written = json.loads((run / "eval.json").read_text(), parse_constant=strict)
    assert written["win_rate_se"] is None and written["kl_se"] is None
    row = build_report(tmp_path)[0]["suites"][0]["leaderboard"][0]
    assert row["win_rate"]["mean"] == pytest.approx(0.7)
    (run / "eval.json").write_text(json.dumps({**ev, "win_rate_se": float("nan")}))   # written before: bare NaN
    assert build_report(tmp_path)[0]["suites"][0]["leaderboard"][0]["win_rate"]["mean"] == pytest.approx(0.7)


def test_result_files_are_written_as_strict_json(tmp_path):
    """Every JSON file pobench writes whole (atomic_write_json) follows metrics.jsonl's rule, through nested values:
    NaN as null (not measured), an infinity as +-1e308; json.dumps wrote them bare, which is not JSON."""
    from pobench.engine.io import atomic_write_json, json_text

    def strict(constant):
        raise AssertionError(f"{constant} written, which is not JSON")
    path = tmp_path / "result.json"
    atomic_write_json(path, {"a": math.nan, "b": [1.5, math.inf, {"c": -math.inf}], "d": (math.nan, 2), "e": "nan"})
    assert json.loads(path.read_text(), parse_constant=strict) == {
        "a": None, "b": [1.5, 1e308, {"c": -1e308}], "d": [None, 2], "e": "nan"}
    assert json_text([math.nan]) == "[null]"


def test_run_with_a_grid_ends_with_the_leaderboard_that_report_reproduces(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner
    from pobench.cli import app
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "pobench.cli", "run", "--algo", "dpo", "--grid", "beta=0.1,0.5",
           "--model", str(tiny_model_dir), "--data", "sample", "--max-steps", "1", "--out", str(out),
           "--set", "data.max_train_records=8", "--set", "data.eval_size=4", "--set", "train.lr=1e-3", "--no-eval"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import yaml
    for beta in ("0.1", "0.5"):
        run = out / "hh-rlhf" / "dpo" / f"beta={beta}" / "seed1"
        assert (run / "train_summary.json").is_file()
        assert yaml.safe_load((run / "config.yaml").read_text())["algorithm"]["beta"] == float(beta)
    assert "leaderboard: hh-rlhf" in proc.stdout and "tuning grid: hh-rlhf" in proc.stdout
    summary = proc.stdout.split("leaderboard: hh-rlhf")[0]   # the runs' table: one row per grid point, named
    assert "grid point" in summary and all(f"beta={b}" in summary for b in ("0.1", "0.5"))
    md = CliRunner().invoke(app, ["report", str(out), "--format", "markdown"])
    assert md.exit_code == 0, md.output
    board = md.stdout.split("### tuning grid")[0]
    rows = [line for line in board.splitlines() if line.startswith("| dpo ")]
    assert len(rows) == 1 and "| 2 |" in rows[0]   # two grid points
    for row in rows:   # every cell of the markdown leaderboard is on the screen table `run` printed
        cells = [c.strip() for c in row.strip("|").split("|")]
        screen = [line for line in proc.stdout.splitlines() if line.strip("│ ").startswith(cells[0] + " ")]
        assert screen and all(c in screen[0] for c in cells), (row, screen)
    # --resume: the same command skips the finished runs; other settings are refused, naming them, before anything
    # is written (config.yaml said one thing while the checkpoint's optimizer and schedule held another)
    args = cmd[3:]
    again = CliRunner().invoke(app, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    config = (out / "hh-rlhf" / "dpo" / "beta=0.1" / "seed1" / "config.yaml").read_bytes()
    changed = CliRunner().invoke(app, [*args, "--resume", "--set", "train.lr=5e-3"])
    assert isinstance(changed.exception, PobenchError), changed.output
    assert "--resume with other settings than the run's (train.lr 0.001 -> 0.005)" in str(changed.exception)
    assert (out / "hh-rlhf" / "dpo" / "beta=0.1" / "seed1" / "config.yaml").read_bytes() == config


def test_a_scoped_set_that_overrides_the_grid_is_refused(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner
    from pobench.cli import app
    result = CliRunner().invoke(app, ["run", "--algo", "dpo", "--grid", "beta=0.1,0.5", "--set", "dpo.beta=0.2",
                                      "--model", str(tiny_model_dir), "--data", "sample", "--out", str(tmp_path / "r")])
    assert isinstance(result.exception, PobenchError), result.output
    assert "--grid beta=0.1: dpo's algorithm.beta resolves to 0.2" in str(result.exception)
    assert not (tmp_path / "r").exists()   # refused before anything was written


# -- against the baseline: paired by seed and by prompt ----------------------------------------------------
def write_generations(run: Path, preferences: list, references: list[str] | None = None) -> None:
    references = references or [f"reference answer {i}" for i in range(len(preferences))]
    (run / "generations.jsonl").write_text("".join(
        json.dumps({"index": i, "id": f"prompt-{i}", "prompt": f"q{i}", "output": "o", "reference_output": ref,
                    "preference": p}) + "\n" for i, (p, ref) in enumerate(zip(preferences, references))))


def seeded_results(root: Path) -> Path:
    """3 seeds whose luck moves both algorithms alike (win rate 0.3, 0.5, 0.7 for dpo): mcpo is 0.04-0.06 better
    at every seed, and better than dpo on 3 of 4 prompts, tied on one, at every seed."""
    for seed, luck in zip((1, 2, 3), (0.3, 0.5, 0.7)):
        gap = 0.03 + 0.01 * seed
        for algo, win, time_per_pair in (("dpo", luck, 1.0), ("mcpo", luck + gap, 2.0)):
            final = 0.6 if algo == "dpo" else 0.7   # held-out accuracy at 48 pairs: AUC 0.55 against 0.60
            run = write_run(root, algo, seed, [0.5, final], eval_json=new_eval(win, 0.6), time_per_pair=time_per_pair)
            write_generations(run, [luck, luck, luck, luck] if algo == "dpo" else [luck + 0.1, luck + 0.2, luck, luck + 0.3])
    return root


def test_against_dpo_differences_are_paired_by_seed_and_prompt(tmp_path):
    report, _, _ = build_report(seeded_results(tmp_path))
    suite = report["suites"][0]
    board = {r["algo"]: r["win_rate"] for r in suite["leaderboard"]}
    assert board["mcpo"]["lo"] < board["dpo"]["hi"]   # unpaired, the seeds' luck hides the difference
    row = suite["versus"]["rows"][0]
    assert suite["versus"]["baseline"] == "dpo" and row["algo"] == "mcpo" and row["seeds"] == [1, 2, 3]
    assert interval(row["delta"]["win_rate"]) == pytest.approx(mean_ci([0.04, 0.05, 0.06]))
    assert row["delta"]["win_rate"]["p"] == pytest.approx(0.0130725, rel=1e-5)
    assert row["delta"]["win_rate"]["lo"] > 0          # paired, it shows
    assert row["time_ratio"]["mean"] == pytest.approx(2.0)
    assert row["delta"]["held_out_acc_auc"]["mean"] == pytest.approx(0.05)
    paired = row["prompt_paired"]   # per prompt, averaged over seeds: +0.1, +0.2, 0, +0.3
    assert interval(paired["difference"]) == pytest.approx(mean_ci([0.1, 0.2, 0.0, 0.3]))
    assert (paired["better"], paired["tied"], paired["worse"], paired["prompts"]) == (3, 1, 0, 4)
    assert row["unlike_baseline"] == [] and row["unpaired_seeds"] == []
    md = to_markdown(sections(report))
    assert "### against dpo: hh-rlhf" in md
    assert "| vs dpo | mcpo |\n| --- | --- |\n| seeds | 1,2,3 |" in md   # one column per algorithm
    assert "| Δ win rate | +0.050 ± 0.025* |" in md   # 0.04, 0.05, 0.06: sd 0.01 * 4.303 / sqrt 3
    assert "| Δ held-out acc AUC | +0.050 ± 0.000 |\n| train time × | 2.00 ± 0.00 |" in md
    assert "| per prompt: Δ win rate | +0.150 ± 0.205 |\n| prompts better/tied/worse | 3/1/0 |" in md
    import io
    import pandas as pd
    table = pd.read_csv(io.StringIO(to_csv(report))).set_index("algo")
    assert table.loc["mcpo", "vs_win_rate_mean"] == pytest.approx(0.05) and table.loc["mcpo", "baseline"] == "dpo"
    assert table.loc["mcpo", "vs_prompt_win_rate_mean"] == pytest.approx(0.15)
    assert math.isnan(table.loc["dpo", "vs_win_rate_mean"])


def test_per_prompt_and_per_pair_intervals_are_not_marked_as_tests(tmp_path):
    """The per-prompt and per-pair rows take a t-interval over prompts (pairs) of seed-averaged differences: the
    prompts of one seed share its training luck, which that interval never sees, so one seed got a starred,
    Holm-marked "better" (and an A/A simulation marked 12% at the 5% level). They describe the trained models:
    no `*`, no `†`, and no p or p_holm in the report, its JSON or its CSV; the caption says only the seed-level rows
    test "is X better"."""
    for algo, shift in (("dpo", 0.0), ("mcpo", 0.1), ("simpo", 0.12)):
        run = write_run(tmp_path, algo, 1, [0.5, 0.6], eval_json=new_eval(0.3 + shift, 0.6))
        write_generations(run, [0.3 + shift + 0.01 * (i % 3) for i in range(8)])
        margins = [-1.0] * 8 if algo == "dpo" else [1.0] * 6 + [-1.0] * 2
        (run / "held_out_pairs.json").write_text(json.dumps({"ids": list("abcdefgh"), "margins": margins}))
    report = build_report(tmp_path)[0]
    rows = {r["algo"]: r for r in report["suites"][0]["versus"]["rows"]}
    for row in rows.values():
        for kind in ("prompt_paired", "pair_paired"):
            assert row[kind]["difference"]["lo"] > 0 and not {"p", "p_holm"} & set(row[kind]["difference"])
    md = to_markdown(sections(report))
    line = next(l for l in md.splitlines() if l.startswith("| per prompt: Δ win rate |"))
    pair_line = next(l for l in md.splitlines() if l.startswith("| per pair: Δ held-out acc |"))
    assert "±" in line and "*" not in line + pair_line and "†" not in line + pair_line
    assert "only the seed-level Δ rows test \"is the algorithm better\"" in md
    assert "p_holm" not in json.dumps(json.loads(to_json(report))["suites"][0]["versus"]["rows"][0]["prompt_paired"])
    import io
    import pandas as pd
    table = pd.read_csv(io.StringIO(to_csv(report)))
    assert "vs_prompt_win_rate_mean" in table.columns and "vs_pair_held_out_acc_lo" in table.columns
    assert not [c for c in table.columns if c.startswith(("vs_prompt_win_rate_p", "vs_pair_held_out_acc_p"))]
    assert "vs_win_rate_p" in table.columns and "vs_win_rate_p_holm" in table.columns


def test_held_out_accuracy_differences_are_not_tested_where_a_grid_chose_on_them(tmp_path):
    """DPO's grid point was chosen on the held-out pairs that also measure Δ held-out acc (and its AUC): the best of
    two points leans its way by selection alone, yet the row was starred with no caveat. Where a grid chose, those
    rows are unmarked and have no p, and the caption says why; without a grid they are tested as before. With
    eval set held_out the leaderboard says the win rates come from the same held-out records' prompts (it said
    "never the test prompts' win rate", as if they were other prompts)."""
    def results(root: Path, points: tuple) -> Path:
        for seed, luck in zip((1, 2, 3), (0.0, 0.02, 0.04)):
            for point in points:
                write_run(root, "dpo", seed, [0.5, 0.6 + luck], point=point,
                          eval_json={**new_eval(0.5, 0.6 + luck), "eval_set": "held_out"})
            write_run(root, "mcpo", seed, [0.5, 0.7 + luck + 0.001 * seed],
                      eval_json={**new_eval(0.5, 0.7 + luck + 0.001 * seed), "eval_set": "held_out"})
        return root

    report = build_report(results(tmp_path / "grid", ("beta=0.1", "beta=0.5")))[0]
    row = report["suites"][0]["versus"]["rows"][0]
    assert row["chosen_on_held_out"] and row["delta"]["held_out_acc"]["lo"] > 0
    assert row["delta"]["held_out_acc"]["p"] is None and row["delta"]["held_out_acc_auc"]["p"] is None
    md = to_markdown(sections(report))
    assert "| Δ held-out acc | +0.102 ± 0.002 |" in md
    assert "held-out acc, held-out acc AUC: measured on the held-out pairs that chose dpo's grid point (so in every " \
           "column): the best of several points reads optimistically on them by selection alone, so these rows are " \
           "not marked and have no p" in md
    assert "never the test prompts' win rate" not in md
    assert "eval set held_out: the win rates are measured on the prompts of the same held-out records whose pairs " \
           "chose the grid point" in md
    plain = build_report(results(tmp_path / "plain", ("",)))[0]
    assert not plain["suites"][0]["versus"]["rows"][0]["chosen_on_held_out"]
    md = to_markdown(sections(plain))
    assert "| Δ held-out acc | +0.102 ± 0.002* |" in md and "chose" not in md


def test_a_per_prompt_row_over_fewer_seeds_says_so(tmp_path):
    """The per-prompt difference pairs the seeds whose runs both have generations.jsonl; with one missing, the row
    says over how many seeds it is (it read as all of the table's seeds)."""
    root = seeded_results(tmp_path)
    (root / "hh-rlhf" / "dpo" / "seed2" / "generations.jsonl").unlink()
    row = build_report(root)[0]["suites"][0]["versus"]["rows"][0]
    assert row["prompt_paired"] is not None and row["seeds"] == [1, 2, 3]
    assert "per prompt: 2 of the 3 seeds (the others have no generations.jsonl on one side)" in row["unlike_baseline"]


def test_against_dpo_corrects_for_comparing_several_algorithms(tmp_path):
    """Three algorithms against DPO: 'maybe' is better at p = 0.029 on its own (`*`), which Holm's correction over
    the three (p x 2 for the second smallest) no longer calls a difference; 'sure' (p = 0.00013) keeps its `†`."""
    gaps = {"sure": (0.050, 0.051, 0.049), "maybe": (0.035, 0.05, 0.065), "noise": (0.1, -0.05, 0.02)}
    for i, (seed, luck) in enumerate(zip((1, 2, 3), (0.3, 0.5, 0.7))):
        write_run(tmp_path, "dpo", seed, [0.5, 0.6], eval_json=new_eval(luck, 0.6))
        for algo, gap in gaps.items():
            write_run(tmp_path, algo, seed, [0.5, 0.6], eval_json=new_eval(luck + gap[i], 0.6))
    report = build_report(tmp_path)[0]
    rows = {r["algo"]: r["delta"]["win_rate"] for r in report["suites"][0]["versus"]["rows"]}
    assert rows["maybe"]["p"] == pytest.approx(0.0287141, rel=1e-5)
    assert rows["maybe"]["p_holm"] == pytest.approx(2 * rows["maybe"]["p"])
    assert rows["sure"]["p_holm"] == pytest.approx(3 * rows["sure"]["p"]) and rows["noise"]["p_holm"] == rows["noise"]["p"]
    md = to_markdown(sections(report))
    assert "| vs dpo | maybe | noise | sure |" in md
    assert "| Δ win rate | +0.050 ± 0.037* | +0.023 ± 0.186 | +0.050 ± 0.002*† |" in md
    assert "† = still so after Holm's correction over the 3 algorithms of its row" in md
    import io
    import pandas as pd
    table = pd.read_csv(io.StringIO(to_csv(report))).set_index("algo")
    assert table.loc["maybe", "vs_win_rate_p_holm"] == pytest.approx(0.0574283, rel=1e-5)
    assert "vs_time_ratio_p" not in table.columns


def test_a_row_unlike_the_baseline_is_no_test(tmp_path):
    """'maybe' trained 99 steps against DPO's 12: its column said "unlike dpo: optimizer steps 99 vs 12" and still
    had its `*`, a p, and a place in Holm's family, where it made the others' correction stricter (sure's p x 3).
    Such a row is compared, not tested: no marks, no p or p_holm, left out of the family (sure's p x 2), and the
    caption says so. A note on files that only the untested rows use (noise: a seed without generations.jsonl)
    withdraws nothing."""
    gaps = {"sure": (0.050, 0.051, 0.049), "maybe": (0.035, 0.05, 0.065), "noise": (0.1, -0.05, 0.02)}
    for i, (seed, luck) in enumerate(zip((1, 2, 3), (0.3, 0.5, 0.7))):
        write_generations(write_run(tmp_path, "dpo", seed, [0.5, 0.6], eval_json=new_eval(luck, 0.6)), [luck] * 4)
        for algo, gap in gaps.items():
            run = write_run(tmp_path, algo, seed, [0.5, 0.6], eval_json=new_eval(luck + gap[i], 0.6))
            if algo == "maybe":
                summary = json.loads((run / "train_summary.json").read_text())
                (run / "train_summary.json").write_text(json.dumps({**summary, "steps": 99}))
            if algo == "noise" and seed < 3:
                write_generations(run, [luck] * 4)
    report = build_report(tmp_path)[0]
    rows = {r["algo"]: r for r in report["suites"][0]["versus"]["rows"]}
    assert rows["maybe"]["unlike_baseline"] == ["optimizer steps 99 vs 12"] and not rows["maybe"]["alike"]
    assert all(ci["p"] is None and ci["p_holm"] is None for ci in rows["maybe"]["delta"].values())
    assert rows["noise"]["alike"] and rows["noise"]["unlike_baseline"] == [
        "per prompt: 2 of the 3 seeds (the others have no generations.jsonl on one side)"]
    sure = rows["sure"]["delta"]["win_rate"]
    assert sure["p_holm"] == pytest.approx(2 * sure["p"])
    md = to_markdown(sections(report))
    assert "| Δ win rate | +0.050 ± 0.037 | +0.023 ± 0.186 | +0.050 ± 0.002*† |" in md
    assert "† = still so after Holm's correction over the 2 algorithms of its row" in md
    assert "(the numbers of such a row do not answer the question; its Δ rows carry no * or † and no p, and it is " \
           "left out of Holm's correction)" in md
    import io
    import pandas as pd
    table = pd.read_csv(io.StringIO(to_csv(report))).set_index("algo")
    assert math.isnan(table.loc["maybe", "vs_win_rate_p"]) and math.isnan(table.loc["maybe", "vs_win_rate_p_holm"])
    assert table.loc["maybe", "vs_win_rate_mean"] == pytest.approx(0.05)   # the difference itself is still shown


def test_against_dpo_names_what_is_unlike_the_baseline(tmp_path):
    root = seeded_results(tmp_path)
    run = root / "hh-rlhf" / "mcpo" / "seed1"
    (run / "config.yaml").write_text("suite: hh-rlhf\nseed: 1\ndata:\n  max_train_records: 500\n"
                                     "train:\n  lr: 1.0e-3\n  max_completion_length: 128\n")  # lr is free: tuned
    summary = json.loads((run / "train_summary.json").read_text())
    (run / "train_summary.json").write_text(json.dumps({**summary, "steps": 99}))
    (root / "hh-rlhf" / "dpo" / "seed1" / "config.yaml").write_text(
        "suite: hh-rlhf\nseed: 1\ndata:\n  max_train_records: 0\ntrain:\n  lr: 5.0e-6\n  max_completion_length: 64\n")
    write_generations(run, [0.4, 0.5, 0.3, 0.6], references=["another answer"] + [f"reference answer {i}" for i in (1, 2, 3)])
    write_run(root, "mcpo", 4, [0.5, 0.6], eval_json=new_eval(0.5, 0.6))
    row = build_report(root)[0]["suites"][0]["versus"]["rows"][0]
    assert row["seeds"] == [1, 2, 3] and row["unpaired_seeds"] == [4]
    assert row["unlike_baseline"] == ["data.max_train_records 500 vs 0", "train.max_completion_length 128 vs 64",
                                      "optimizer steps 99 vs 12", "reference outputs differ on 1 prompts"]
    md = to_markdown(sections(build_report(root)[0]))
    assert "unlike dpo" in md and "seeds only one has: 4" in md


def test_against_dpo_names_software_and_hardware_that_differ(tmp_path):
    """env.json: another pobench commit, torch version or device can move numbers by themselves, so they are named;
    a run without env.json (made before it existed) is compared on what it has."""
    root = seeded_results(tmp_path)

    def env(run, commit, torch, device, gpu=None):
        (root / "hh-rlhf" / run / "env.json").write_text(json.dumps({
            "pobench": "0.1.0", "git_commit": commit, "packages": {"torch": torch, "transformers": "5.24.0"},
            "device": device, **({"gpu": gpu} if gpu else {}), "command": ["pobench", "run"]}))

    env("dpo/seed1", "abc" * 13 + "d", "2.13.0", "cpu")
    env("mcpo/seed1", "def" * 13 + "d-dirty", "2.12.0", "cuda:0", ["NVIDIA H100 80GB HBM3"])
    env("dpo/seed2", "abc" * 13 + "d", "2.13.0", "cuda:1", ["NVIDIA H100 80GB HBM3"])
    env("mcpo/seed2", "abc" * 13 + "d", "2.13.0", "cuda:0", ["NVIDIA H100 80GB HBM3"])   # another GPU index: the same device
    row = build_report(root)[0]["suites"][0]["versus"]["rows"][0]
    assert row["unlike_baseline"] == ["software: device cuda vs cpu", "software: pobench commit defdefdefdef-dirty vs abcabcabcabc",
                                      "software: torch 2.12.0 vs 2.13.0"]
    md = to_markdown(sections(build_report(root)[0]))
    assert "software: the pobench code, packages or hardware the runs trained on" in md
    (root / "hh-rlhf" / "dpo" / "seed3" / "env.json").write_text("[1, 2]")
    with pytest.raises(PobenchError, match=r"dpo/seed3/env.json: expected a JSON object"):
        build_report(root)


def test_baseline_option(tmp_path):
    from typer.testing import CliRunner
    from pobench.cli import app
    root = seeded_results(tmp_path)
    assert "### against mcpo: hh-rlhf" in to_markdown(sections(build_report(root, baseline="mcpo")[0]))
    assert build_report(root, baseline="none")[0]["suites"][0]["versus"] is None
    result = CliRunner().invoke(app, ["report", str(root), "--baseline", "none", "--format", "markdown"])
    assert result.exit_code == 0 and "against" not in result.stdout
    result = CliRunner().invoke(app, ["report", str(root), "--baseline", "ipo"])
    assert isinstance(result.exception, PobenchError) and "--baseline ipo: no runs of that algorithm" in str(result.exception)
    write_run(tmp_path / "other", "simpo", 1, [0.5, 0.6])   # no dpo run: the default compares nothing, silently
    assert build_report(tmp_path / "other")[0]["suites"][0]["versus"] is None
    gen = root / "hh-rlhf" / "mcpo" / "seed2" / "generations.jsonl"
    row = '{"prompt": "q", "output": "o", "preference": %s}\n'
    gen.write_text(row % "0.5" + row % "2")
    with pytest.raises(PobenchError, match=r"mcpo/seed2/generations.jsonl:2: 'preference' must be a number in \[0, 1\]"):
        build_report(root)
    gen.write_text(row % "0.5" + '{"prompt": "q", "preference": 0.5}\n')
    with pytest.raises(PobenchError, match=r"mcpo/seed2/generations.jsonl:2: 'output' must be a string, got None"):
        build_report(root)
    gen.write_text(row % "0.5" + '{"prompt": [], "output": "o", "preference": 0.5}\n')
    with pytest.raises(PobenchError, match=r"mcpo/seed2/generations.jsonl:2: 'prompt' must be"):
        build_report(root)
    gen.write_text(row % "0.5" + '{"prompt": [{"role": "user"}], "output": "o", "preference": 0.5}\n')
    with pytest.raises(PobenchError, match=r"mcpo/seed2/generations.jsonl:2: 'prompt' must be the prompt's text or "
                                           r"its chat messages"):
        build_report(root)
    gen.write_bytes(b'{"prompt": "q\xff", "output": "o", "preference": 0.5}\n')
    with pytest.raises(PobenchError, match=r"mcpo/seed2/generations.jsonl: not UTF-8 text"):
        build_report(root)


def test_pool_settings_must_match_only_between_algorithms_that_draw_from_a_pool(tmp_path):
    for algo, samples in (("dpo", 4), ("mcpo", 8), ("rso", 16)):
        run = write_run(tmp_path, algo, 1, [0.5, 0.6])
        (run / "config.yaml").write_text(f"suite: hh-rlhf\nseed: 1\npool:\n  num_samples: {samples}\n")
        if algo != "dpo":
            summary = json.loads((run / "train_summary.json").read_text())
            (run / "train_summary.json").write_text(json.dumps({**summary, "candidate_pool": {
                "source": "generated", "prompts": 8}}))
    against_dpo = build_report(tmp_path)[0]["suites"][0]["versus"]["rows"]
    assert [r["unlike_baseline"] for r in against_dpo] == [[], []]   # DPO draws no pool: nothing to match
    against_mcpo = {r["algo"]: r for r in build_report(tmp_path, baseline="mcpo")[0]["suites"][0]["versus"]["rows"]}
    assert against_mcpo["rso"]["unlike_baseline"] == ["pool.num_samples 16 vs 8"]
    assert against_mcpo["dpo"]["unlike_baseline"] == []


def test_every_setting_but_the_tuned_and_the_computational_ones_must_match(tmp_path):
    """The baseline's run and an algorithm's may differ in learning rate, the algorithm's own parameters and how the
    work is computed or logged; any other setting is named, as are other records and another labeller. Online
    samplers (no stored pool) are held to the settings they draw and label with."""
    base = "suite: hh-rlhf\nseed: 1\n"
    for algo, config, summary in (
            ("online_dpo", base + "train:\n  lr: 1.0e-6\n  warmup_ratio: 0.1\n  logps_chunk: 64\npool:\n  top_p: 0.9\n"
             "model:\n  dtype: auto\nalgorithm: {}\ndata:\n  path: auto\n", {"reward_model": "auto:reward_models/a"}),
            ("onmcpo", base + "train:\n  lr: 5.0e-6\n  warmup_ratio: 0.2\n  logps_chunk: 1024\npool:\n  top_p: 1.0\n"
             "model:\n  dtype: bfloat16\nalgorithm:\n  tau: 2.0\ndata:\n  path: sample\n",
             {"reward_model": "auto:reward_models/b"})):
        run = write_run(tmp_path, algo, 1, [0.5, 0.6])
        (run / "config.yaml").write_text(config)
        written = json.loads((run / "train_summary.json").read_text())
        (run / "train_summary.json").write_text(json.dumps({**written, "candidate_pool": None, **summary}))
        (run / "data.json").write_text(json.dumps({"records_digest": {"train": algo, "eval": "same"}}))
    rows = build_report(tmp_path, baseline="online_dpo")[0]["suites"][0]["versus"]["rows"]
    unlike = rows[0]["unlike_baseline"]
    assert [u for u in unlike if not u.startswith("records ")] == [
        "data.path 'sample' vs 'auto'", "model.dtype 'bfloat16' vs 'auto'", "pool.top_p 1.0 vs 0.9",
        "train.warmup_ratio 0.2 vs 0.1", "reward model auto:reward_models/b vs auto:reward_models/a"]
    records = [u.split() for u in unlike if u.startswith("records ")]
    assert len(records) == 1 and len(records[0][1]) == 12 and records[0][1] != records[0][3]
    # the same records read another way (data.path sample against auto) are the same data
    (tmp_path / "hh-rlhf" / "onmcpo" / "seed1" / "data.json").write_text(
        json.dumps({"records_digest": {"train": "online_dpo", "eval": "same"}}))
    unlike = build_report(tmp_path, baseline="online_dpo")[0]["suites"][0]["versus"]["rows"][0]["unlike_baseline"]
    assert not any(u.startswith(("data.", "records ")) for u in unlike)
    # what a grid tuned is free, like the learning rate: online DPO's two points set train.warmup_ratio apart
    for point, warmup in (("warmup_ratio=0.1", 0.1), ("warmup_ratio=0.3", 0.3)):
        run = write_run(tmp_path, "online_dpo", 1, [0.5, 0.7 if warmup == 0.3 else 0.6], point=point)
        (run / "config.yaml").write_text(base + f"train:\n  lr: 1.0e-6\n  warmup_ratio: {warmup}\n  logps_chunk: 64\n"
                                         "pool:\n  top_p: 0.9\nmodel:\n  dtype: auto\nalgorithm: {}\n")
        written = json.loads((run / "train_summary.json").read_text())
        (run / "train_summary.json").write_text(json.dumps({**written, "reward_model": "auto:reward_models/b"}))
    shutil.rmtree(tmp_path / "hh-rlhf" / "online_dpo" / "seed1")
    unlike = build_report(tmp_path, baseline="online_dpo")[0]["suites"][0]["versus"]["rows"][0]["unlike_baseline"]
    assert not any(u.startswith("train.warmup_ratio") for u in unlike) and "pool.top_p 1.0 vs 0.9" in unlike


def test_held_out_accuracy_paired_pair_by_pair(tmp_path):
    """held_out_pairs.json holds each held-out pair's final reward margin: the report differences the two
    algorithms' right/wrong on every pair, averages over seeds, and counts pairs won, tied and lost."""
    margins = {("dpo", 1): [1, -1, 1, -1], ("mcpo", 1): [2, 3, 1, -1],
               ("dpo", 2): [1, -1, 1, -1], ("mcpo", 2): [1, 1, -2, -1]}
    for (algo, seed), ms in margins.items():
        run = write_run(tmp_path, algo, seed, [0.5, 0.6])
        (run / "held_out_pairs.json").write_text(json.dumps({"ids": ["a", "b", "c", "d"], "margins": ms}))
    row = build_report(tmp_path)[0]["suites"][0]["versus"]["rows"][0]
    paired = row["pair_paired"]   # per pair: (0 + 0) / 2, (1 + 1) / 2, (0 - 1) / 2, 0
    assert interval(paired["difference"]) == pytest.approx(mean_ci([0.0, 1.0, -0.5, 0.0]))
    assert (paired["better"], paired["tied"], paired["worse"], paired["pairs"]) == (1, 2, 1, 4)
    md = to_markdown(sections(build_report(tmp_path)[0]))
    assert "| per pair: Δ held-out acc |" in md and "| pairs won/tied/lost | 1/2/1 |" in md
    # a NaN margin (a diverged policy) is written as null, strict JSON: it ranks the pair wrong, as the trainer's
    # accuracy counts NaN (the file was refused as damaged); mcpo seed 2's pair c: -2 -> NaN, wrong either way
    (tmp_path / "hh-rlhf" / "mcpo" / "seed2" / "held_out_pairs.json").write_text(
        json.dumps({"ids": ["a", "b", "c", "d"], "margins": [1, 1, None, -1]}))
    assert build_report(tmp_path)[0]["suites"][0]["versus"]["rows"][0]["pair_paired"] == paired
    (tmp_path / "hh-rlhf" / "mcpo" / "seed2" / "held_out_pairs.json").write_text('{"ids": ["a"], "margins": []}')
    with pytest.raises(PobenchError, match="mcpo/seed2/held_out_pairs.json: expected 'ids' and 'margins'"):
        build_report(tmp_path)


def test_a_process_records_the_commit_it_started_from(monkeypatch):
    """env.json's git_commit is read once per process: a commit made while `pobench run` goes on (the code running
    is what was imported) must not make the later runs of that one invocation look like other software."""
    import subprocess as sp
    from pobench import environment as E
    heads = iter(["a" * 40, "b" * 40])
    calls = []

    def fake_run(args, **kw):
        calls.append(args)
        out = next(heads) if args[1] == "rev-parse" else ""
        return sp.CompletedProcess(args, 0, stdout=out, stderr="")

    E.git_commit.cache_clear()
    monkeypatch.setattr(E.subprocess, "run", fake_run)
    try:
        assert E.git_commit() == "a" * 40 and E.git_commit() == "a" * 40
        assert [c[1] for c in calls] == ["rev-parse", "status"]
    finally:
        E.git_commit.cache_clear()


def test_a_tied_held_out_pair_counts_half_in_the_pairwise_comparison():
    """As in the trainer's rewards/accuracies: a margin of exactly 0 is no preference, worth half a right answer."""
    from pobench.report.versus import pair_paired
    row = pair_paired([({"a": 0.0, "b": 0.3, "c": -0.2}, {"a": 0.1, "b": 0.0, "c": 0.0})])
    assert row["pairs"] == 3 and (row["better"], row["tied"], row["worse"]) == (1, 0, 2)
    assert row["difference"]["mean"] == pytest.approx((-0.5 + 0.5 - 0.5) / 3)


def test_convergence_runs_on_the_shared_budget_of_records_not_on_pairs(tmp_path):
    """RSO trains several pairs per record: on a pairs axis the range every run covers ended a quarter into its
    training, and its curve was compared at its warm-up against DPO's whole run. On records seen (steps x global
    batch, the same for both) the curves span the same training. Runs logged before records_seen get it from
    their steps and batch (train_summary's global batch, or config.yaml's per-process batch before that); a run
    without either is left out of the range rather than shrinking it to nothing."""
    write_run(tmp_path, "dpo", 1, [0.5, 0.6, 0.7])
    rso = write_run(tmp_path, "rso", 1, [0.5, 0.55, 0.65])
    rows = [json.loads(line) for line in (rso / "metrics.jsonl").read_text().splitlines()]
    for row in rows:                    # four pairs per record; records_seen left out, as in older runs
        row["pairs_seen"] = 4 * row.pop("records_seen")
    (rso / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (rso / "config.yaml").write_text("suite: hh-rlhf\nseed: 1\ntrain:\n  batch_size: 4\n")   # 12 steps of 4
    report, _, _ = build_report(tmp_path)
    conv = report["suites"][0]["convergence"]
    assert conv["x_max"] == 96
    acc = {r["algo"]: r for r in conv["metrics"]["eval/rewards/accuracies"]}
    assert acc["rso"]["at"][-1]["mean"] == pytest.approx(0.65) and acc["dpo"]["at"][-1]["mean"] == pytest.approx(0.7)
    # --axis pairs, as asked: RSO's curve is read at its first quarter (pairs 96 = records 24: 0.5 -> 0.55 at 48)
    by_pairs, _, _ = build_report(tmp_path, axis="pairs")
    conv = by_pairs["suites"][0]["convergence"]
    assert conv["axis"] == "pairs_seen" and conv["x_max"] == 96
    acc = {r["algo"]: r for r in conv["metrics"]["eval/rewards/accuracies"]}
    assert acc["rso"]["at"][-1]["mean"] == pytest.approx(0.525)
    assert "@96 pairs" in to_markdown(sections(by_pairs))
    assert "held-out reward accuracy averaged over pairs 0-96 (how fast it learns)" in to_markdown(sections(by_pairs))
    with pytest.raises(PobenchError, match="--axis steps: choose one of records, pairs"):
        build_report(tmp_path, axis="steps")
    (rso / "config.yaml").write_text("suite: hh-rlhf\nseed: 1\n")                          # no batch size anywhere
    conv = build_report(tmp_path)[0]["suites"][0]["convergence"]
    assert conv["x_max"] == 96
    assert {r["algo"]: r["auc"]["mean"] is not None for r in conv["metrics"]["eval/rewards/accuracies"]} == {
        "dpo": True, "rso": False}


def test_accuracy_auc_is_taken_over_the_range_of_the_runs_it_compares(tmp_path):
    """The AUC's range was the shortest run of the whole suite: one short DPO seed that MC-PO lacks (so unpaired)
    cut the paired "Δ held-out acc AUC" to records 0-48, where it read -0.025 instead of +0.025 over the 0-96 both
    paired runs cover; and another algorithm's short run decided a grid's tie-break. The comparison takes the range
    of the runs it compares, the tie-break that of the algorithm's own grid runs."""
    for seed in (1, 2):
        write_run(tmp_path, "dpo", seed, [0.5, 0.6, 0.6])
        write_run(tmp_path, "mcpo", seed, [0.5, 0.55, 0.8])
    write_run(tmp_path, "dpo", 3, [0.5, 0.6])                     # to 48 records only, and no mcpo seed 3
    write_run(tmp_path, "simpo", 1, [0.5, 0.6, 0.5, 0.6], point="a")    # a tie at 0.6: a ahead over 0-48,
    write_run(tmp_path, "simpo", 1, [0.5, 0.55, 0.8, 0.6], point="b")   # b over the 0-144 both cover
    suite = build_report(tmp_path)[0]["suites"][0]
    rows = {r["algo"]: r for r in suite["versus"]["rows"]}
    assert rows["mcpo"]["acc_auc_range"] == 96
    assert rows["mcpo"]["delta"]["held_out_acc_auc"]["mean"] == pytest.approx(0.025)   # 0.6 - 0.575
    grid = {r["grid_point"]: r for r in suite["grid"] if r["algo"] == "simpo"}
    assert grid["b"]["chosen"] and grid["b"]["acc_auc"]["mean"] == pytest.approx((0.525 + 0.675 + 0.7) / 3)
    assert suite["convergence"]["x_max"] == 48   # the convergence table keeps the range every run it shows covers


def test_the_grid_tie_break_is_taken_over_the_runs_each_point_is_scored_on(tmp_path):
    """SimPO's points a and b tie on validation at the seeds both have (1, 2), where b learns faster over the 0-144
    records they cover; a's seed 3, which b lacks and so is scored on by neither, stopped at 48 records and cut the
    tie-break's range to 0-48, where a led: a seed left out of the scores chose the point."""
    for seed in (1, 2):
        write_run(tmp_path, "simpo", seed, [0.5, 0.6, 0.5, 0.6], point="a")
        write_run(tmp_path, "simpo", seed, [0.5, 0.55, 0.8, 0.6], point="b")
    write_run(tmp_path, "simpo", 3, [0.5, 0.6], point="a")
    suite = build_report(tmp_path)[0]["suites"][0]
    grid = {r["grid_point"]: r for r in suite["grid"]}
    assert grid["a"]["scored_on"] == grid["b"]["scored_on"] == [1, 2]
    assert grid["b"]["chosen"] and not grid["a"]["chosen"]
    assert grid["b"]["acc_auc"]["mean"] == pytest.approx((0.525 + 0.675 + 0.7) / 3)
    assert grid["a"]["acc_auc_range"] == grid["b"]["acc_auc_range"] == 144


def test_the_convergence_range_is_that_of_the_runs_the_table_shows(tmp_path):
    """The table's range and default points were those every run of the suite covers: SimPO's unchosen grid point b,
    stopped at 48 records, cut every row's AUC to 0-48 and its points to 12-48, where all the rows shown reach 96."""
    for seed in (1, 2):
        write_run(tmp_path, "dpo", seed, [0.5, 0.6, 0.7])
    write_run(tmp_path, "simpo", 1, [0.5, 0.6, 0.8], point="a")
    write_run(tmp_path, "simpo", 1, [0.5, 0.55], point="b")         # not chosen
    conv = build_report(tmp_path)[0]["suites"][0]["convergence"]
    assert conv["x_max"] == 96 and conv["points"] == [24, 48, 72, 96]
    acc = {r["algo"]: r for r in conv["metrics"]["eval/rewards/accuracies"]}
    assert acc["simpo"]["grid_point"] == "a" and acc["simpo"]["auc"]["mean"] == pytest.approx((0.55 + 0.7) / 2)


def with_gold_curve(run: Path, kls: list[float], rewards: list[float]) -> Path:
    """gold/kl and gold/reward at a run's evaluations (metrics.jsonl's rows), from KL 0 and reward 1.0 before training
    (gold_eval.json's first curve point)."""
    for line, (kl, reward) in enumerate(zip(kls, rewards), 1):
        edit_metrics_row(run, line, lambda r: {**r, "gold/kl": kl, "gold/reward": reward})
    initial = {"pairs_seen": 0, "gold/kl": 0.0, "gold/reward": 1.0}
    (run / "gold_eval.json").write_text(json.dumps({"final": {"gold/kl": kls[-1], "gold/reward": rewards[-1]},
                                                    "curve": [initial]}))
    return run


def test_matched_kl_levels_are_taken_from_the_runs_the_table_compares(tmp_path):
    """The levels went up to the largest KL that every run of the suite reached: an unchosen grid point of SimPO that
    stopped at KL 0.04 set every row's levels to 0.01-0.04 (where DPO and SimPO's chosen point, which reach 0.2, are
    barely apart). The table compares the runs at the chosen points: their levels, 0.05-0.2."""
    for seed in (1, 2):
        with_gold_curve(write_run(tmp_path, "dpo", seed, [0.5, 0.6, 0.7], suite="synthetic"), [0.1, 0.2], [1.2, 1.4])
    with_gold_curve(write_run(tmp_path, "simpo", 1, [0.5, 0.6, 0.8], point="a", suite="synthetic"),
                    [0.1, 0.2], [1.3, 1.6])
    with_gold_curve(write_run(tmp_path, "simpo", 1, [0.5, 0.55, 0.6], point="b", suite="synthetic"),  # not chosen
                    [0.02, 0.04], [1.0, 1.0])
    suite = build_report(tmp_path)[0]["suites"][0]
    assert {r["algo"]: r["grid_point"] for r in suite["leaderboard"]} == {"dpo": "", "simpo": "a"}
    frontier = suite["matched_kl"]
    assert frontier["levels"] == pytest.approx([0.05, 0.1, 0.15, 0.2])
    rows = {r["algo"]: [ci["mean"] for ci in r["at"]] for r in frontier["rows"]}
    assert rows == {"dpo": pytest.approx([1.1, 1.2, 1.3, 1.4]), "simpo": pytest.approx([1.15, 1.3, 1.45, 1.6])}


def test_a_value_from_fewer_seeds_than_its_row_says_so(tmp_path):
    """SimPO's seed 3 has no win rate (not evaluated yet): its leaderboard cell and its difference from DPO are
    the mean of 2 seeds, which the seeds column (1,2,3) hid."""
    for seed, (dpo, simpo) in enumerate([(0.3, 0.36), (0.5, 0.57), (0.7, None)], 1):
        write_run(tmp_path, "dpo", seed, [0.5, 0.6], eval_json=new_eval(dpo, 0.6))
        write_run(tmp_path, "simpo", seed, [0.5, 0.6], eval_json=None if simpo is None else new_eval(simpo, 0.6))
    md = to_markdown(sections(build_report(tmp_path)[0]))
    assert "| simpo | 1,2,3 | 0.465 ± 1.334 [2/3] |" in md
    assert "| Δ win rate | +0.065 ± 0.064* [2/3] |" in md
    assert "[k/n]: from the k of the row's n seeds" in md and "[k/n]: from the k of the n seeds both runs have" in md
    assert "| dpo | 1,2,3 | 0.500 ± 0.497 |" in md   # every seed: no count
    import io

    from rich.console import Console

    from pobench.report.render import print_tables
    out = io.StringIO()
    print_tables(sections(build_report(tmp_path)[0]), Console(file=out, width=250))
    assert "[k/n]: from the k of the row's n seeds" in out.getvalue()   # rich read "[k/n]" as a style tag
    assert "0.465 ± 1.334 [2/3]" in out.getvalue()


def test_convergence_and_matched_kl_cells_from_fewer_seeds_say_so(tmp_path):
    """Seed 2 stopped at 96 records, seed 1 went on to 192: the convergence cell at 192 is seed 1's alone, and seed
    2 logged no gold curve, so every matched-KL cell is seed 1's; both read as the mean of the row's 2 seeds (the
    leaderboard says `[k/n]`, these tables did not)."""
    run = write_run(tmp_path, "dpo", 1, [0.5, 0.6, 0.7, 0.8, 0.9], suite="synthetic")
    write_run(tmp_path, "dpo", 2, [0.5, 0.6, 0.7], suite="synthetic")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for i, row in enumerate(rows, 1):
        row.update({"gold/reward": 0.1 * i, "gold/kl": 0.05 * i})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = build_report(tmp_path, points=[48, 192])[0]
    md = to_markdown(sections(report))
    assert "| dpo | 0.600 ± 0.000 | 0.900 [1/2] | 0.600 ± 0.000 | 48 ± 0 | 2/2 |" in md   # AUC over 0-96: both
    assert "| dpo | 0.100 [1/2] | 0.200 [1/2] | 0.300 [1/2] | 0.400 [1/2] |" in md
    assert "[k/n]: from the k of the row's n seeds whose runs hold the value (the others' curves do not reach that " \
           "point)" in md


def test_runs_of_one_row_that_differ_beyond_the_seed_are_named(tmp_path):
    """Seed 1 run for 12 steps, seed 2 later for 48 into the same folder: one leaderboard row, two settings."""
    write_run(tmp_path, "dpo", 1, [0.5, 0.6])
    write_run(tmp_path, "dpo", 2, [0.5, 0.7, 0.8, 0.85, 0.9])
    write_run(tmp_path, "dpo", 3, [0.5, 0.6])
    for seed, lr in ((1, "1.0e-06"), (2, "1.0e-05"), (3, "1.0e-06")):
        config = tmp_path / "hh-rlhf" / "dpo" / f"seed{seed}" / "config.yaml"
        config.write_text(config.read_text() + f"train:\n  lr: {lr}\n  log_every: {seed}\n")
    report = build_report(tmp_path)[0]["suites"][0]
    assert report["unlike_across_seeds"] == {"dpo": {"against_seed": 1, "differences": [
        "seed 2: train.lr 1e-05 vs 1e-06",
        "seed 2: optimizer steps 48 vs 12"]}}
    md = to_markdown(sections({"selection": {"metric": "acc"}, "suites": [report]}, convergence=False))
    assert "UNLIKE SEEDS: dpo's runs differ in more than the seed" in md
    assert "seed 2: optimizer steps 48 vs 12" in md
    # how the work was computed (a pool's batch for DPO, which uses no pool), and records drawn per seed by design
    # (raw UltraFeedback's random rejected answer) are one setting
    for seed in (1, 2):
        run = write_run(tmp_path / "same", "dpo", seed, [0.5, 0.5 + 0.1 * seed])
        (run / "config.yaml").write_text(f"suite: hh-rlhf\nseed: {seed}\ndata:\n  raw_rejected: random\n"
                                         f"pool:\n  batch_size: {32 * seed}\ntrain:\n  log_every: {seed}\n")
        (run / "data.json").write_text(json.dumps({"records_digest": {"train": f"digest{seed}"}}))
    assert build_report(tmp_path / "same")[0]["suites"][0]["unlike_across_seeds"] == {}
    # the default judge is trained per seed on records that seed's runs left out: one setting; two named judges are not
    for judges, unlike in ((("auto:judges/hh-rlhf-minilm-1", "auto:judges/hh-rlhf-minilm-2"), False),
                           (("rm:/a", "rm:/b"), True)):
        for seed, judge in enumerate(judges, 1):
            write_run(tmp_path / judges[0][:2], "dpo", seed, [0.5, 0.6],
                      eval_json={**new_eval(0.6, 0.6), "judge": {"name": judge, "kind": "reward_model"}})
        found = build_report(tmp_path / judges[0][:2])[0]["suites"][0]["unlike_across_seeds"]
        assert found == ({"dpo": {"against_seed": 1, "differences": [f"seed 2: judge {judges[1]} vs {judges[0]}"]}}
                         if unlike else {})


def test_judges_of_one_name_with_other_models_behind_it_are_other_judges(tmp_path):
    """alpaca_eval:<config> named the config only: a local OpenAI-compatible server answering under
    weighted_alpaca_eval_gpt4_turbo was reported as that judge (GPT-4-turbo), and alpaca_eval:local(m) was one judge
    whether vLLM (float16) or transformers (float32) ran it. eval.json's judge.identity now tells them apart."""
    gpt4 = {"name": "alpaca_eval:weighted_alpaca_eval_gpt4_turbo", "kind": "llm",
            "identity": {"models": ["gpt-4-1106-preview"], "endpoints": ["https://api.openai.com/v1"],
                         "config": "33016f9a00"}}
    local_server = {**gpt4, "identity": {**gpt4["identity"], "endpoints": ["http://127.0.0.1:8000/v1"]}}
    for seed, judge in ((1, gpt4), (2, local_server)):
        write_run(tmp_path / "api", "dpo", seed, [0.5, 0.6], eval_json={**new_eval(0.6, 0.6), "judge": judge})
    report = build_report(tmp_path / "api")[0]["suites"][0]
    named = "alpaca_eval:weighted_alpaca_eval_gpt4_turbo [models gpt-4-1106-preview; endpoints {}; config 33016f9a00]"
    assert report["judge"] == [named.format("http://127.0.0.1:8000/v1"), named.format("https://api.openai.com/v1")]
    assert report["unlike_across_seeds"]["dpo"]["differences"] == [
        f"seed 2: judge {named.format('http://127.0.0.1:8000/v1')} vs {named.format('https://api.openai.com/v1')}"]
    # the local judge: transformers (recorded before the identity was: float32 then too) against vLLM in float16
    old = {"name": "alpaca_eval:local(m)", "kind": "llm", "judge_decoder": "transformers"}
    new = {**old, "identity": {"decoder": "transformers", "dtype": "float32"}}
    fp16 = {**old, "judge_decoder": "vllm", "dtype": "float16", "identity": {"decoder": "vllm", "dtype": "float16"}}
    for seed, judge in ((1, old), (2, new)):
        write_run(tmp_path / "local", "dpo", seed, [0.5, 0.6], eval_json={**new_eval(0.6, 0.6), "judge": judge})
        write_run(tmp_path / "local", "simpo", seed, [0.5, 0.6], eval_json={**new_eval(0.6, 0.6), "judge": fp16})
    report = build_report(tmp_path / "local")[0]["suites"][0]
    assert report["unlike_across_seeds"] == {}   # one judge, recorded before and after the identity was
    assert report["mixed_evaluations"] == {
        "dpo": "eval set hh-rlhf-test, judge alpaca_eval:local(m) [decoder transformers; dtype float32], "
               "reference reference_policy",
        "simpo": "eval set hh-rlhf-test, judge alpaca_eval:local(m) [decoder vllm; dtype float16], "
                 "reference reference_policy"}
    write_run(tmp_path / "bad", "dpo", 1, [0.5, 0.6],
              eval_json={**new_eval(0.6, 0.6), "judge": {**gpt4, "identity": 3}})
    with pytest.raises(PobenchError, match=r"eval.json: 'judge.identity' must be an object of names"):
        build_report(tmp_path / "bad")


def rm_judge_block(rm_info: dict, identity: bool, measured_here: bool = False) -> dict:
    """eval.json's judge block of `rm:rm_uf`, as pobench eval writes it now (identity, where the accuracy was measured)
    or wrote it before (the rm_info alone)."""
    from pobench.rewards import reward_model_identity
    block = {"name": "rm:rm_uf", "kind": "reward_model", "held_out_accuracy": rm_info["eval_accuracy_after"],
             "scorer": {"name": "rm:rm_uf", "kind": "sequence_classifier", "path": "rm_uf", "rm_info": rm_info}}
    if identity:
        block["identity"] = reward_model_identity(rm_info)
        block["held_out_accuracy_on"] = {"suite": rm_info["suite"], "source": rm_info["eval_source"],
                                         "pairs": rm_info["eval_pairs"], "measured_by": "rm_info.json",
                                         "run_held_out": False}
        if measured_here:
            block["held_out_accuracy"] = 0.625
            block["held_out_accuracy_on"] = {"suite": "hh-rlhf", "source": "test.jsonl", "pairs": 8,
                                             "measured_by": "pobench eval", "run_held_out": True}
    return block


def test_one_judge_evaluated_before_and_after_its_identity_was_recorded_is_one_judge(tmp_path):
    """An old eval.json (no identity; an rm: folder or a configs.yaml named relative to the folder the run was started
    in; vLLM's unresolved dtype auto) and a new one (identity, absolute path, the engine's float16) of the same judge
    were reported as two judges: UNLIKE SEEDS and mixed evaluations. An identity not recorded is unknown now."""
    work = tmp_path / "work"
    (work / "rm_uf").mkdir(parents=True)
    (work / "cfgs").mkdir()
    (work / "cfgs" / "configs.yaml").write_text("x: {}\n")
    judges = {   # algo: (the old eval.json's judge, the new one's)
        "dpo": ({"name": "rm:rm_uf", "kind": "reward_model", "scorer": {"path": "rm_uf"}},
                {"name": f"rm:{work / 'rm_uf'}", "kind": "reward_model", "identity": {"weights": "0123456789ab"}}),
        "simpo": ({"name": "alpaca_eval:cfgs/configs.yaml", "kind": "llm"},
                  {"name": f"alpaca_eval:{work / 'cfgs' / 'configs.yaml'}", "kind": "llm",
                   "identity": {"models": ["m"], "endpoints": [], "config": "33016f9a00"}}),
        "ipo": ({"name": "alpaca_eval:local(m)", "kind": "llm", "judge_decoder": "vllm", "dtype": "auto"},
                {"name": "alpaca_eval:local(m)", "kind": "llm", "judge_decoder": "vllm", "dtype": "float16",
                 "identity": {"decoder": "vllm", "dtype": "float16"}}),
    }
    for algo, (old, new) in judges.items():
        root = tmp_path / algo
        for seed, judge in ((1, old), (2, new)):
            run = write_run(root, algo, seed, [0.5, 0.6], eval_json={**new_eval(0.6, 0.6), "judge": judge})
            (run / "env.json").write_text(json.dumps({"cwd": str(work)}))
        for seed, judge in ((1, new), (2, old)):   # another algorithm: each seed judged in the other form
            run = write_run(root, "dpo" if algo != "dpo" else "orpo", seed, [0.5, 0.6],
                            eval_json={**new_eval(0.6, 0.6), "judge": judge})
            (run / "env.json").write_text(json.dumps({"cwd": str(work)}))
        report = build_report(root)[0]["suites"][0]
        assert report["unlike_across_seeds"] == {}, algo
        assert report["mixed_evaluations"] == {}, algo
        assert all("judge" not in " ".join(r["differences"]) for r in report.get("unlike_rows", {}).values()), algo
    runs = collect(tmp_path / "dpo")[0]
    assert set(runs["judge_name"]) == {f"rm:{work / 'rm_uf'}"}   # the old relative name read from env.json's cwd
    # a judge whose identity both record, and differs, is still another judge; so is another name
    fp32 = {**judges["ipo"][1], "dtype": "float32", "identity": {"decoder": "vllm", "dtype": "float32"}}
    for seed, judge in ((1, judges["ipo"][1]), (2, fp32)):
        write_run(tmp_path / "other", "dpo", seed, [0.5, 0.6], eval_json={**new_eval(0.6, 0.6), "judge": judge})
    (diff,) = build_report(tmp_path / "other")[0]["suites"][0]["unlike_across_seeds"]["dpo"]["differences"]
    assert "dtype float32" in diff and "dtype float16" in diff


def test_a_pool_reward_model_named_relative_by_an_older_run_is_the_one_named_absolute(tmp_path):
    """train_summary's reward_model of a run stored before config paths were absolute names the folder as typed
    (./my_rm), a newer run's absolute: the report read them as other reward models (UNLIKE SEEDS)."""
    work = tmp_path / "work"
    (work / "my_rm").mkdir(parents=True)
    for seed, rm in ((1, "./my_rm"), (2, str(work / "my_rm"))):
        run = write_run(tmp_path / "results", "dpo", seed, [0.5, 0.6])
        summary = json.loads((run / "train_summary.json").read_text())
        (run / "train_summary.json").write_text(json.dumps({**summary, "reward_model": rm}))
        (run / "env.json").write_text(json.dumps({"cwd": str(work)}))
    report = build_report(tmp_path / "results")[0]["suites"][0]
    assert report["unlike_across_seeds"] == {}
    assert report["pool_reward_model"] == [str(work / "my_rm")]


def test_alpaca_eval_1_and_2_reference_outputs_are_told_apart(tmp_path):
    """An eval.json against AlpacaEval 1's reference outputs (text-davinci-003's: every file written before
    reference.generator was recorded) and one against AlpacaEval 2's (GPT-4-turbo's) both read reference alpaca_eval:
    the report mixed their win rates, which are on other scales. Both are named, and differ."""
    def alpaca(generator=None, recorded=True):
        reference = {"kind": "alpaca_eval", "source": "the eval file's outputs"}
        if recorded:
            reference["generator"] = generator
        return {**new_eval(0.6, 0.6), "eval_set": "alpaca_eval", "reference": reference}
    write_run(tmp_path / "mixed", "dpo", 1, [0.5, 0.6], eval_json=alpaca(recorded=False))   # AlpacaEval 1, old file
    write_run(tmp_path / "mixed", "dpo", 2, [0.5, 0.6], eval_json=alpaca("gpt4_turbo"))
    write_run(tmp_path / "mixed", "simpo", 1, [0.5, 0.6], eval_json=alpaca("gpt4_turbo"))
    report = build_report(tmp_path / "mixed")[0]["suites"][0]
    assert report["unlike_across_seeds"]["dpo"]["differences"] == [
        "seed 2: reference outputs by gpt4_turbo vs text_davinci_003"]
    assert report["mixed_evaluations"]["simpo"].endswith("reference alpaca_eval (gpt4_turbo's outputs)")
    assert report["mixed_evaluations"]["dpo"].endswith(
        "reference alpaca_eval (gpt4_turbo's outputs), alpaca_eval (text_davinci_003's outputs)")
    # an old file and a new one recording AlpacaEval 1's outputs are one reference; the held-out set names none
    write_run(tmp_path / "same", "dpo", 1, [0.5, 0.6], eval_json=alpaca(recorded=False))
    write_run(tmp_path / "same", "dpo", 2, [0.5, 0.6], eval_json=alpaca("text_davinci_003"))
    write_run(tmp_path / "same", "simpo", 1, [0.5, 0.6], eval_json=alpaca("text_davinci_003"))
    report = build_report(tmp_path / "same")[0]["suites"][0]
    assert report["unlike_across_seeds"] == {} and report["mixed_evaluations"] == {}
    assert report["reference"] == ["alpaca_eval (text_davinci_003's outputs)"]
    assert collect(tmp_path / "same")[0]["reference_generator"].tolist() == ["text_davinci_003"] * 3


def test_an_rm_judge_retrained_in_place_is_another_judge_and_its_accuracy_says_where_it_was_measured(tmp_path):
    """rm_uf retrained between two seeds' evaluations (other steps and seed) showed as one judge, with no UNLIKE SEEDS;
    and an rm: judge trained on suite myuf judging hh-rlhf showed myuf's held-out pair accuracy as its own. Judges are
    now told apart by their identity (in eval.json written before it: their rm_info), and an accuracy measured
    elsewhere names its pairs."""
    first = {"steps": 5, "seed": 1, "suite": "myuf", "eval_source": "mydata/uf.jsonl (last 8 records)",
             "eval_pairs": 8, "eval_accuracy_after": 1.0}
    second = {**first, "steps": 8, "seed": 2}
    # evaluations made before the identity was recorded (the reviewer's files), then one of each form
    for root, blocks in (("old", (rm_judge_block(first, False), rm_judge_block(second, False))),
                         ("mixed", (rm_judge_block(first, False), rm_judge_block(second, True)))):
        for seed, block in enumerate(blocks, 1):
            write_run(tmp_path / root, "dpo", seed, [0.5, 0.6], eval_json={**new_eval(0.6, 0.6), "judge": block})
        report = build_report(tmp_path / root)[0]["suites"][0]
        (diff,) = report["unlike_across_seeds"]["dpo"]["differences"]
        assert re.fullmatch(r"seed 2: judge rm:rm_uf \[rm_info \w{12}\] vs rm:rm_uf \[rm_info \w{12}\]", diff), diff
        md = to_markdown(sections(build_report(tmp_path / root)[0]))
        assert "1.000 on 8 held-out pairs of suite myuf (mydata/uf.jsonl (last 8 records); rm_info.json)" in md
    # the same rm_uf in an old and a new eval.json is one judge
    for seed, block in enumerate((rm_judge_block(first, False), rm_judge_block(first, True)), 1):
        write_run(tmp_path / "same", "dpo", seed, [0.5, 0.6], eval_json={**new_eval(0.6, 0.6), "judge": block})
    report = build_report(tmp_path / "same")[0]["suites"][0]
    assert report["unlike_across_seeds"] == {} and len(report["judge"]) == 1
    # measured at evaluation on the run's own held-out pairs: no note
    write_run(tmp_path / "here", "dpo", 1, [0.5, 0.6],
              eval_json={**new_eval(0.6, 0.6), "judge": rm_judge_block(first, True, measured_here=True)})
    md = to_markdown(sections(build_report(tmp_path / "here")[0]))
    assert re.search(r"judge: rm:rm_uf \[rm_info \w{12}\] \(reward_model, its held-out pair accuracy 0.625\)", md)
    write_run(tmp_path / "bad", "dpo", 1, [0.5, 0.6], eval_json={
        **new_eval(0.6, 0.6), "judge": {**rm_judge_block(first, True), "held_out_accuracy_on": "myuf"}})
    with pytest.raises(PobenchError, match="eval.json: 'judge.held_out_accuracy_on' must be an object"):
        build_report(tmp_path / "bad")


def test_counts_in_the_csv_are_integers_and_short_times_keep_a_decimal(tmp_path):
    """The CSV's vs_*_n columns read 2.0 (the baseline's own row has none, so pandas made the column float) where the
    *_n columns read 2; and a sub-second training time read "0 ± 0"."""
    import io

    import pandas as pd
    for algo in ("dpo", "simpo"):
        for seed in (1, 2):
            write_run(tmp_path, algo, seed, [0.5, 0.6 + 0.01 * seed], eval_json=new_eval(0.5 + 0.01 * seed, 0.6),
                      pairs_per_eval=4, time_per_pair=0.05 + 0.01 * seed)
    report = build_report(tmp_path)[0]
    text = to_csv(report)
    header, dpo, simpo = text.splitlines()[:3]
    columns = header.split(",")
    counts = [i for i, c in enumerate(columns) if c.endswith("_n")]
    assert "vs_win_rate_n" in columns and "win_rate_n" in columns
    assert all(simpo.split(",")[i] in ("", "0", "2") for i in counts)   # 2.0 before
    assert simpo.split(",")[columns.index("vs_win_rate_n")] == "2" and dpo.split(",")[columns.index("vs_win_rate_n")] == ""
    assert pd.read_csv(io.StringIO(text)).loc[1, "vs_win_rate_n"] == 2
    md = to_markdown(sections(report))
    assert "| 0.600 ± 0.000 | 0.26 ± 0.25 |" in md   # train s: 4 pairs at 0.06 and 0.07 s each (read "0 ± 0")


def test_seeds_trained_by_other_versions_of_a_plugin_are_named_but_algorithms_code_is_not_compared(tmp_path):
    """Seeds 1-2 of a plugin run with one loss, seed 3 after the loss was edited: averaged as one setting, and
    UNLIKE SEEDS named nothing (train_summary.json's `code` was not read). Two algorithms' code differs by design:
    it is no difference between rows, nor against the baseline."""
    def set_code(run, algo_sha, file="/p/hardneg.py"):
        summary = json.loads((run / "train_summary.json").read_text())
        summary["code"] = {"algorithm": {"module": "m", "file": file, "sha1": algo_sha},
                           "sampler": {"name": "s", "module": "m", "file": file, "sha1": algo_sha}}
        (run / "train_summary.json").write_text(json.dumps(summary))
    for seed, sha in ((1, "aaaaaaaaaaaa"), (2, "aaaaaaaaaaaa"), (3, "bbbbbbbbbbbb")):
        set_code(write_run(tmp_path, "dpo_hardneg", seed, [0.5, 0.6]), sha)
    for seed in (1, 2, 3):
        set_code(write_run(tmp_path, "dpo", seed, [0.5, 0.6]), "dddddddddddd", "/pobench/algorithms/dpo.py")
    report = build_report(tmp_path)[0]["suites"][0]
    assert report["unlike_across_seeds"] == {"dpo_hardneg": {"against_seed": 1, "differences": [
        "seed 3: algorithm code /p/hardneg.py bbbbbbbbbbbb vs aaaaaaaaaaaa"]}}   # its sampler, in the same file: once
    assert report["unlike_rows"] == {}
    assert all(row["alike"] and not row["unlike_baseline"] for row in report["versus"]["rows"])


def test_leaderboard_rows_of_other_budgets_or_settings_are_named(tmp_path):
    """SimPO run for 12 steps, MC-PO for 48 (another `pobench run` copied into the same folder): only the table
    against DPO compared budgets, so with no DPO run, or --baseline none, the leaderboard set the two side by side
    without a word. Every row is now held to the first (the baseline's where there is one) as against the baseline:
    the learning rate and the algorithms' own parameters may differ, a completion length may not."""
    def results(root: Path, algos=("mcpo", "simpo")) -> Path:
        for seed in (1, 2):
            for algo in algos:
                run = write_run(root, algo, seed, [0.5, 0.6] if algo == "simpo" else [0.5, 0.6, 0.7, 0.8, 0.9])
                length = 128 if algo == "simpo" else 64
                (run / "config.yaml").write_text(f"suite: hh-rlhf\nseed: {seed}\ntrain:\n  lr: {seed}.0e-6\n  "
                                                 f"max_completion_length: {length}\nalgorithm:\n  beta: {seed}\n")
        return root

    unlike = {"simpo": {"against": "mcpo", "seeds": [1, 2], "across_seeds": None, "differences": [
        "train.max_completion_length 128 vs 64", "optimizer steps 12 vs 48"]}}
    report = build_report(results(tmp_path / "no-dpo"))[0]
    assert report["suites"][0]["unlike_rows"] == unlike
    md = to_markdown(sections(report))
    assert "UNLIKE ROWS: simpo's runs differ from mcpo's in what a fair comparison needs equal, so the two rows do " \
           "not compare (at seeds 1,2; simpo's value vs mcpo's): train.max_completion_length 128 vs 64; optimizer " \
           "steps 12 vs 48" in md
    assert json.loads(to_json(report))["suites"][0]["unlike_rows"] == unlike
    import io
    import pandas as pd
    table = pd.read_csv(io.StringIO(to_csv(report)), keep_default_na=False).set_index("algo")
    assert table.loc["simpo", "unlike_rows"] == "vs mcpo: train.max_completion_length 128 vs 64; optimizer steps 12 vs 48"
    assert table.loc["mcpo", "unlike_rows"] == ""
    # --baseline none: the first row is the reference; with a baseline, the baseline's row
    with_dpo = results(tmp_path / "dpo", ("dpo", "mcpo", "simpo"))
    for baseline, against, named in (("none", "dpo", {"simpo"}), ("dpo", "dpo", {"simpo"}), ("simpo", "simpo", {"dpo", "mcpo"})):
        found = build_report(with_dpo, baseline=baseline)[0]["suites"][0]["unlike_rows"]
        assert set(found) == named and {u["against"] for u in found.values()} == {against}
    assert build_report(results(tmp_path / "alike", ("mcpo",)))[0]["suites"][0]["unlike_rows"] == {}


def test_the_csv_and_json_say_each_rows_budget(tmp_path):
    """The CSV and JSON leaderboard, read without the captions, had no column for how long a row trained: 12 and 48
    optimizer steps looked alike. Each row lists its seeds' steps and global batch (distinct values)."""
    for seed in (1, 2):
        write_run(tmp_path, "dpo", seed, [0.5, 0.6])
        run = write_run(tmp_path, "mcpo", seed, [0.5, 0.6] if seed == 1 else [0.5, 0.6, 0.7, 0.8, 0.9])
        summary = json.loads((run / "train_summary.json").read_text())
        (run / "train_summary.json").write_text(json.dumps({**summary, "global_batch_size": 4}))
    report = build_report(tmp_path)[0]
    board = {r["algo"]: r for r in json.loads(to_json(report))["suites"][0]["leaderboard"]}
    assert (board["mcpo"]["steps"], board["mcpo"]["global_batch_size"]) == ([12, 48], [4])
    assert (board["dpo"]["steps"], board["dpo"]["global_batch_size"]) == ([12], [])   # not recorded: none shown
    import io
    import pandas as pd
    table = pd.read_csv(io.StringIO(to_csv(report)), dtype=str, keep_default_na=False).set_index("algo")
    assert table.loc["mcpo", "steps"] == "12;48" and table.loc["mcpo", "global_batch_size"] == "4"
    assert table.loc["dpo", "steps"] == "12" and table.loc["dpo", "global_batch_size"] == ""


def test_rows_are_compared_at_the_seeds_both_have(tmp_path):
    """The records' order (data_order_digest) is the same for every algorithm of one seed and differs between seeds
    by design: rows are held to it at a shared seed, and rows that share no seed are compared at their lowest seeds
    without it (and without each seed's own auto judge), but still on the budget."""
    def run(root: Path, algo: str, seed: int, order: str, accs=(0.5, 0.6)):
        path = write_run(root, algo, seed, list(accs), eval_json={
            **new_eval(0.5, 0.6), "judge": {"name": f"auto:judges/hh-{seed}", "kind": "reward_model"}})
        summary = json.loads((path / "train_summary.json").read_text())
        (path / "train_summary.json").write_text(json.dumps({**summary, "data_order_digest": order}))

    run(tmp_path / "shared", "dpo", 1, "order1")
    run(tmp_path / "shared", "simpo", 1, "order1-truncated")
    found = build_report(tmp_path / "shared")[0]["suites"][0]["unlike_rows"]
    assert found["simpo"]["differences"] == ["records trained on, in order order1-truncated vs order1"]
    run(tmp_path / "apart", "dpo", 1, "order1")
    run(tmp_path / "apart", "simpo", 2, "order2")
    assert build_report(tmp_path / "apart")[0]["suites"][0]["unlike_rows"] == {}
    run(tmp_path / "apart", "mcpo", 3, "order3", accs=(0.5, 0.6, 0.7))
    found = build_report(tmp_path / "apart")[0]["suites"][0]["unlike_rows"]
    assert found == {"mcpo": {"against": "dpo", "seeds": [], "across_seeds": [3, 1],
                              "differences": ["optimizer steps 24 vs 12"]}}
    assert "(no seed in common: its seed 3 against dpo's seed 1; mcpo's value vs dpo's): optimizer steps 24 vs 12" \
        in to_markdown(sections(build_report(tmp_path / "apart")[0]))


@pytest.mark.parametrize("edit, message", [
    (lambda s: {**s, "seed": "two"}, "'seed' must be an integer, got 'two'"),
    (lambda s: {**s, "algorithm": ["dpo"]}, "'algorithm' must be a name"),
    (lambda s: {**s, "train_time_s": "slow"}, "'train_time_s' must be a number, got 'slow'"),
    (lambda s: {**s, "held_out_final": [1]}, "'held_out_final' must be an object"),
    (lambda s: {**s, "held_out_final": {"eval/rewards/accuracies": "high"}},
     "'held_out_final.eval/rewards/accuracies' must be a number"),
    (lambda s: 5, "expected a JSON object"),
])
def test_a_damaged_train_summary_is_named(tmp_path, edit, message):
    """Fields of the wrong type in train_summary.json crashed the report with 'internal error', naming no file."""
    run = write_run(tmp_path, "dpo", 1, [0.5, 0.6])
    summary = run / "train_summary.json"
    summary.write_text(json.dumps(edit(json.loads(summary.read_text()))))
    with pytest.raises(PobenchError, match=f"train_summary.json: {re.escape(message)}"):
        build_report(tmp_path)


def test_damaged_gold_eval_and_config_are_named_on_one_line(tmp_path):
    run = write_run(tmp_path, "dpo", 1, [0.5, 0.6])
    (run / "gold_eval.json").write_text("[1]")
    with pytest.raises(PobenchError, match="gold_eval.json: expected a JSON object"):
        build_report(tmp_path)
    (run / "gold_eval.json").unlink()
    (run / "config.yaml").write_text(": [")
    with pytest.raises(PobenchError) as error:
        build_report(tmp_path)
    assert "config.yaml:1: bad YAML" in str(error.value) and "\n" not in str(error.value)


GOOD_COMPARISON = {"win_rate": 0.6, "win_rate_ci95": [0.4, 0.8], "seed": 1, "better": 3, "tied": 0, "worse": 2,
                   "judge": {"name": "auto:judges/x"}, "answers_digest": "abc"}


@pytest.mark.parametrize("edit, message", [
    (lambda c: {**c, "judge": "auto"}, "'judge' must be an object with a 'name', got 'auto'"),
    (lambda c: {k: v for k, v in c.items() if k != "win_rate"}, "'win_rate' must be a number, got None"),
    (lambda c: {**c, "win_rate_ci95": None}, "'win_rate_ci95' must be [low, high], got None"),
    (lambda c: {**c, "win_rate": float("inf")}, "'win_rate' must be a fraction in [0, 1], got inf"),
    (lambda c: {**c, "win_rate": float("nan")}, "'win_rate' must be a fraction in [0, 1], got nan"),
    (lambda c: {**c, "win_rate_ci95": [0.4, float("inf")]}, "'win_rate_ci95' must be [low, high], got [0.4, inf]"),
    (lambda c: {**c, "seed": "1"}, "'seed' must be an integer, got '1'"),
    (lambda c: {**c, "better": 2.5}, "'better' must be an integer, got 2.5"),
    (lambda c: {**c, "answers_digest": 5}, "'answers_digest' must be text, got 5"),
])
def test_a_damaged_head_to_head_comparison_is_named(tmp_path, edit, message):
    """Fields `pobench report` reads from head_to_head.json crashed it (TypeError, KeyError) when edited."""
    from pobench.eval.head_to_head import read_comparisons
    path = tmp_path / "head_to_head.json"
    path.write_text(json.dumps({"dpo/seed1": GOOD_COMPARISON}))
    assert read_comparisons(path) == {"dpo/seed1": GOOD_COMPARISON}
    older = {k: v for k, v in GOOD_COMPARISON.items() if k != "answers_digest"}   # before digests: stale, not damaged
    path.write_text(json.dumps({"dpo/seed1": older}))
    assert read_comparisons(path) == {"dpo/seed1": older}
    path.write_text(json.dumps({"dpo/seed1": edit(GOOD_COMPARISON)}))
    with pytest.raises(PobenchError, match=re.escape(f"{path}: comparison 'dpo/seed1': {message}")):
        read_comparisons(path)


@pytest.mark.parametrize("edit, message", [
    (lambda e: {**e, "held_out": {**e["held_out"], "final": {"eval/rewards/accuracies": "0.75"}}},
     "'held_out.final.eval/rewards/accuracies' must be a number, got '0.75'"),
    (lambda e: {**e, "held_out": {"final": "x"}}, "'held_out.final' must be an object of held-out pair metrics"),
    (lambda e: {**e, "held_out": [0.7]}, "'held_out' must be an object of held-out pair metrics"),
    (lambda e: {**e, "judge": {**e["judge"], "held_out_accuracy": [0.6]}},
     "'judge.held_out_accuracy' must be a number, got [0.6]"),
])
def test_damaged_held_out_metrics_in_eval_json_are_named(tmp_path, edit, message):
    """eval.json's held-out metrics take precedence over train_summary.json's, and were not checked: a text value
    crashed the report (TypeError), a non-object `final` was ignored silently."""
    write_run(tmp_path, "dpo", 1, [0.5, 0.6], eval_json=edit(new_eval(0.5, 0.6)))
    with pytest.raises(PobenchError, match=re.escape(f"eval.json: {message}")):
        collect(tmp_path)


@pytest.mark.parametrize("file, edit, message", [
    ("eval.json", lambda e: {**e, "kl": float("inf")}, "eval.json: 'kl' must be a finite number, got inf"),
    ("eval.json", lambda e: {**e, "reward_mean": -float("inf")}, "'reward_mean' must be a finite number, got -inf"),
    ("eval.json", lambda e: {**e, "held_out": {"final": {"eval/loss": float("inf")}}},
     "eval.json: 'held_out.final.eval/loss' must be a finite number, got inf"),
    ("gold_eval.json", lambda e: {"final": {"gold/reward": 0.4, "gold/kl": float("inf")}},
     "gold_eval.json: 'final.gold/kl' must be a finite number, got inf"),
])
def test_an_infinite_result_is_refused_naming_the_file_and_key(tmp_path, file, edit, message):
    """Python's json reads `Infinity`: the mean over seeds was inf, markdown printed "inf", and --format json (strict
    JSON) crashed with "internal error: ValueError: Out of range float values" (exit 1). It is a damaged file: one
    line naming the file and key, exit 2."""
    run = write_run(tmp_path, "dpo", 1, [0.5, 0.6], eval_json=new_eval(0.5, 0.6))
    (run / file).write_text(json.dumps(edit(new_eval(0.5, 0.6))))
    with pytest.raises(PobenchError, match=re.escape(message)):
        collect(tmp_path)
    if file == "eval.json" and "kl" in message:
        proc = subprocess.run([sys.executable, "-m", "pobench.cli", "report", str(tmp_path), "--format", "json"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and message in proc.stderr, proc.stderr


def edit_summary(run: Path, edit) -> None:
    path = run / "train_summary.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def edit_metrics_row(run: Path, line: int, edit) -> None:
    path = run / "metrics.jsonl"
    rows = [json.loads(text) for text in path.read_text().splitlines()]
    rows[line - 1] = edit(rows[line - 1])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("file, edit, message", [
    ("train_summary.json", lambda s: {**s, "held_out_final": {**s["held_out_final"], "eval/loss": float("inf")}},
     "train_summary.json: 'held_out_final.eval/loss' must be a finite number, got inf"),
    ("train_summary.json", lambda s: {**s, "train_time_s": float("inf")},
     "train_summary.json: 'train_time_s' must be a finite number, got inf"),
    ("train_summary.json", lambda s: {**s, "steps": float("nan")},     # a count: NaN is no "not measured"
     "train_summary.json: 'steps' must be a finite number, got nan"),
    ("train_summary.json", lambda s: {**s, "candidate_pool": {"source": "generated", "generation_s": float("inf")}},
     "train_summary.json: 'candidate_pool.generation_s' must be a finite number, got inf"),
    ("metrics.jsonl", lambda r: {**r, "eval/rewards/margins": -float("inf")},
     "metrics.jsonl:2: 'eval/rewards/margins' must be a finite number, got -inf"),
    ("metrics.jsonl", lambda r: {**r, "records_seen": float("nan")},
     "metrics.jsonl:2: 'records_seen' must be a finite number, got nan"),
    ("metrics.jsonl", lambda r: {**r, "gold/kl": float("inf")},
     "metrics.jsonl:2: 'gold/kl' must be a finite number, got inf"),
    ("metrics.jsonl", lambda r: {**r, "gold/kl": "0.2"}, "metrics.jsonl:2: 'gold/kl' must be a number, got '0.2'"),
    ("gold_eval.json", lambda g: {**g, "curve": [{"pairs_seen": 0, "gold/kl": float("inf")}]},
     "gold_eval.json: 'curve[0].gold/kl' must be a finite number, got inf"),
])
def test_an_infinite_training_record_is_refused_naming_the_file_and_key(tmp_path, file, edit, message):
    """As eval.json's and gold_eval.json's final results are: an infinite value in train_summary.json or
    metrics.jsonl (or gold_eval.json's first curve point) became the mean over seeds, an AUC or a matched-KL level,
    printed 'inf' and crashed --format json (exit 1). One line naming the file (metrics.jsonl's line) and key, exit
    2. NaN in a metric stays 'not measured' (the trainer writes it as null), but not in a count or a clock."""
    run = write_run(tmp_path, "dpo", 1, [0.5, 0.6, 0.7], suite="synthetic")
    (run / "gold_eval.json").write_text(json.dumps({"final": {"gold/reward": 1.4}, "curve": []}))
    if file == "train_summary.json":
        edit_summary(run, edit)
    elif file == "metrics.jsonl":
        edit_metrics_row(run, 2, edit)
    else:
        (run / file).write_text(json.dumps(edit(json.loads((run / file).read_text()))))
    with pytest.raises(PobenchError, match=re.escape(message)):
        collect(tmp_path)
    if "gold/kl' must be a finite" in message and file == "metrics.jsonl":
        proc = subprocess.run([sys.executable, "-m", "pobench.cli", "report", str(tmp_path), "--format", "json"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and message in proc.stderr, proc.stderr


@pytest.mark.parametrize("file, key, message", [
    ("train_summary.json", "steps", "train_summary.json: 'steps' must be a finite number, got 1e+308"),
    ("train_summary.json", "train_time_s", "train_summary.json: 'train_time_s' must be a finite number, got 1e+308"),
    ("metrics.jsonl", "time_s", "metrics.jsonl:2: 'time_s' must be a finite number, got -1e+308"),
    ("metrics.jsonl", "records_seen", "metrics.jsonl:2: 'records_seen' must be a finite number, got 1e+308"),
])
def test_the_writers_infinity_in_a_count_or_a_clock_is_refused(tmp_path, file, key, message):
    """pobench writes an infinity as +-1e308 (strict JSON has none), which the report read as a value. In a count, a
    clock or a curve's axis, where NaN is no "not measured" either, it is refused as `Infinity` is: one line naming
    the file (metrics.jsonl's line) and key."""
    from pobench.engine.io import MetricsLog, atomic_write_json
    run = write_run(tmp_path, "dpo", 1, [0.5, 0.6, 0.7])
    infinity = -math.inf if key == "time_s" else math.inf
    if file == "train_summary.json":
        summary = json.loads((run / file).read_text())
        atomic_write_json(run / file, {**summary, key: infinity})
    else:
        rows = [json.loads(text) for text in (run / file).read_text().splitlines()]
        (run / file).unlink()
        log = MetricsLog(run / file)
        for i, row in enumerate(rows, 1):
            log.append({**row, key: infinity} if i == 2 else row)
    with pytest.raises(PobenchError, match=re.escape(message)):
        collect(tmp_path)


def test_the_writers_infinity_in_a_result_reads_as_not_measured(tmp_path):
    """The trainer's held-out pass checks nothing: a plugin's loss that is infinite there is written (train_summary's
    held_out_final, eval.json's held-out metrics, metrics.jsonl) as 1e308, which the report averaged as a value:
    two such seeds gave a mean of inf and `--format json` crashed (allow_nan=False); 1e308 with 0.5 overflowed
    (OverflowError, a traceback). A result the writer made of an infinity reads as NaN does: not measured, left out
    of the means (a count or a clock refuses it, as it refuses NaN)."""
    from pobench.engine.io import MetricsLog, atomic_write_json
    for algo, losses in (("dpo", (math.inf, math.inf)), ("simpo", (math.inf, 0.5))):
        for seed, loss in enumerate(losses, 1):
            run = write_run(tmp_path, algo, seed, [0.5, 0.6, 0.7])
            summary = json.loads((run / "train_summary.json").read_text())
            final = {**summary["held_out_final"], "eval/loss": loss}
            atomic_write_json(run / "train_summary.json", {**summary, "held_out_final": final})
            atomic_write_json(run / "eval.json", {"held_out_pairs": final, "judge": None})
            rows = [json.loads(text) for text in (run / "metrics.jsonl").read_text().splitlines()]
            (run / "metrics.jsonl").unlink()
            log = MetricsLog(run / "metrics.jsonl")
            for row in rows[:-1] + [{**rows[-1], "eval/loss": loss, "eval/rewards/margins": -math.inf}]:
                log.append(row)
    assert json.loads((run / "train_summary.json").read_text())["held_out_final"]["eval/loss"] == 0.5
    assert json.loads((tmp_path / "hh-rlhf" / "dpo" / "seed1" / "train_summary.json").read_text())[
        "held_out_final"]["eval/loss"] == 1e308   # as the writer has it
    runs, curves = collect(tmp_path)
    loss = runs.set_index(["algo", "seed"])["held_out_loss"]
    assert math.isnan(loss["dpo", 1]) and math.isnan(loss["dpo", 2]) and math.isnan(loss["simpo", 1])
    assert loss["simpo", 2] == 0.5
    assert curves["eval/loss"].abs().max() < 1 and curves["eval/rewards/margins"].abs().max() < 1
    proc = subprocess.run([sys.executable, "-m", "pobench.cli", "report", str(tmp_path), "--select", "loss",
                           "--format", "json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr

    def strict(constant):
        raise AssertionError(f"the report's JSON holds {constant}")
    spread = json.loads(proc.stdout, parse_constant=strict)["suites"][0]["spread"]   # the seed-mean held-out loss
    assert spread == {"dpo": {"points": 1, "min": None, "max": None, "range": None},
                      "simpo": {"points": 1, "min": 0.5, "max": 0.5, "range": 0.0}}


def test_a_held_out_loss_that_is_not_finite_is_named_not_read_silently_as_not_measured(tmp_path):
    """The trainer keeps a held-out loss that is not finite (no training step checks it) and writes it as the
    writer's infinity or null; the report read it as not measured without a word: a diverged seed only made the
    held-out loss cells `[1/2]`, whose caption said its curve did not reach the point. `pobench report` names each
    such run (algorithm, seed, steps) in a warning line, and the leaderboard and held-out loss table in a caption."""
    from typer.testing import CliRunner

    from pobench.cli import app
    from pobench.engine.io import MetricsLog, atomic_write_json

    def diverge(run: Path, step_0: bool, last: bool, loss: float) -> None:
        summary = json.loads((run / "train_summary.json").read_text())
        if step_0:
            summary["held_out_initial"]["eval/loss"] = loss
        if last:
            summary["held_out_final"]["eval/loss"] = loss
            atomic_write_json(run / "eval.json", {"held_out_pairs": summary["held_out_final"], "judge": None})
        atomic_write_json(run / "train_summary.json", summary)   # as the trainer writes it: inf as 1e308, NaN null
        rows = [json.loads(text) for text in (run / "metrics.jsonl").read_text().splitlines()]
        (run / "metrics.jsonl").unlink()
        for row in rows[:-1] + [{**rows[-1], "eval/loss": loss} if last else rows[-1]]:
            MetricsLog(run / "metrics.jsonl").append(row)

    for algo in ("dpo", "simpo"):
        for seed in (1, 2):
            write_run(tmp_path, algo, seed, [0.5, 0.6, 0.7, 0.8])   # evaluated at steps 12, 24, 36
    diverge(tmp_path / "hh-rlhf" / "dpo" / "seed2", step_0=False, last=True, loss=math.inf)
    diverge(tmp_path / "hh-rlhf" / "simpo" / "seed1", step_0=True, last=False, loss=math.nan)
    runs, _ = collect(tmp_path)
    assert runs.set_index(["algo", "seed"])["held_out_loss_not_finite"].to_dict() == {
        ("dpo", 1): [], ("dpo", 2): [36], ("simpo", 1): [0], ("simpo", 2): []}
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--format", "markdown"])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        "warning: hh-rlhf dpo seed2: the held-out loss was not finite (diverged) at step 36; the report reads it as "
        "not measured",
        "warning: hh-rlhf simpo seed1: the held-out loss was not finite (diverged) at step 0; the report reads it as "
        "not measured"]
    md = result.stdout
    named = ("HELD-OUT LOSS NOT FINITE: the held-out loss of dpo seed 2 at step 36; simpo seed 1 at step 0 was not "
             "finite (diverged), read as not measured")
    leaderboard, loss_table = (md.split("### leaderboard: hh-rlhf")[1].split("###")[0],
                               md.split("### convergence: held-out loss (hh-rlhf)")[1].split("###")[0])
    assert named in leaderboard and named in loss_table and md.count(named) == 2   # not the other curves' tables
    # the cells a diverged seed is missing from say so, with the reason
    assert "[k/n]: from the k of the row's n seeds whose runs hold the value (the others' curves do not reach that " \
           "point, or their held-out loss is not finite there (HELD-OUT LOSS NOT FINITE below))" in loss_table
    assert re.search(r"\| dpo \| [^|]+ \| [^|]+ \| [^|]+ \| [0-9.± ]+ \[1/2\] \| [0-9.± ]+ \[1/2\] \|", loss_table), loss_table
    assert re.search(r"\| simpo \| [0-9.± ]+ \[1/2\] \|", loss_table), loss_table
    report = build_report(tmp_path)[0]
    assert report["suites"][0]["held_out_loss_not_finite"] == [
        {"algo": "dpo", "grid_point": "", "seed": 2, "steps": [36]},
        {"algo": "simpo", "grid_point": "", "seed": 1, "steps": [0]}]
    # a grid chosen on the held-out loss names them where its validation is read, the points not chosen too
    write_run(tmp_path, "dpo", 1, [0.5, 0.6, 0.7, 0.8], point="beta=0.5")
    diverge(tmp_path / "hh-rlhf" / "dpo" / "beta=0.5" / "seed1", step_0=False, last=True, loss=-math.inf)
    secs = sections(build_report(tmp_path, select="loss")[0])
    grid = next(sec for sec in secs if sec.title == "tuning grid: hh-rlhf")
    assert "HELD-OUT LOSS NOT FINITE: the held-out loss of dpo seed 2 at step 36; dpo (beta=0.5) seed 1 at step 36; " \
           "simpo seed 1 at step 0 was not finite (diverged), read as not measured (so left out of its point's " \
           "validation)" in grid.caption


def test_a_metrics_line_is_strict_json_at_every_depth(tmp_path):
    """MetricsLog cleaned a row's top-level values only, and json.dumps wrote what was left bare: a sampler's
    nested `sampler/*` value with a NaN made a line that is not JSON (README: every file is strict JSON)."""
    from pobench.engine.io import MetricsLog, finite_json, finite_metrics
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append({"step": 1, "pairs_seen": 4, "loss": math.nan,
                "sampler/stats": {"scores": [0.5, math.nan, -math.inf], "spread": (math.inf, 1.0)}})

    def strict(constant):
        raise AssertionError(f"metrics.jsonl holds {constant}, which is not JSON")
    line = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(line, parse_constant=strict) == {
        "step": 1, "pairs_seen": 4, "loss": None,
        "sampler/stats": {"scores": [0.5, None, -1e308], "spread": [1e308, 1.0]}}
    row = {"eval/loss": math.inf, "sampler/x": [math.nan]}
    assert finite_metrics(row) == finite_json(row) == {"eval/loss": 1e308, "sampler/x": [None]}


def test_nan_in_a_training_metric_reads_as_not_measured(tmp_path):
    """NaN is the report's 'not measured' for a metric (eval.json's too): left out of the means, not refused."""
    run = write_run(tmp_path, "dpo", 1, [0.5, 0.6, 0.7])
    write_run(tmp_path, "dpo", 2, [0.5, 0.6, 0.8])
    (run / "eval.json").unlink()   # its held-out metrics would take precedence over train_summary.json's
    edit_summary(run, lambda s: {**s, "held_out_final": {**s["held_out_final"], "eval/loss": float("nan")},
                                 "pairs_per_s": float("nan"), "final_loss": float("nan")})
    edit_metrics_row(run, 1, lambda r: {**r, "eval/rewards/margins": float("nan")})
    runs, curves = collect(tmp_path)
    assert len(runs) == 2 and math.isnan(runs.set_index("seed").loc[1, "held_out_loss"])
    assert build_report(tmp_path)[0]["suites"][0]["leaderboard"][0]["pairs_per_s"]["n"] == 1


def test_the_csv_names_each_rows_own_judges(tmp_path):
    """The CSV's judge column listed every judge of the suite on every row."""
    import io

    import pandas as pd
    for algo, judge in (("dpo", "auto:judges/a"), ("simpo", "rm:/b")):
        write_run(tmp_path, algo, 1, [0.5, 0.6], eval_json={**new_eval(0.6, 0.6), "judge": {"name": judge}})
    table = pd.read_csv(io.StringIO(to_csv(build_report(tmp_path)[0]))).set_index("algo")
    assert table.loc["dpo", "judge"] == "auto:judges/a" and table.loc["simpo", "judge"] == "rm:/b"
    assert "each seed's own auto judge" not in to_markdown(sections(build_report(tmp_path)[0]))
    for algo in ("dpo", "simpo"):   # seed 2: its own auto judge, so the RM score mixes two reward models' offsets
        write_run(tmp_path, algo, 2, [0.5, 0.6], eval_json={**new_eval(0.6, 0.6), "judge": {"name": "auto:judges/b"}})
    (tmp_path / "hh-rlhf" / "simpo" / "seed1" / "eval.json").write_text(json.dumps(
        {**new_eval(0.6, 0.6), "judge": {"name": "auto:judges/a"}}))
    assert "RM score: each seed's own auto judge" in to_markdown(sections(build_report(tmp_path)[0]))


def test_differences_show_counts_as_integers():
    """A run-table column with a missing value holds its counts as floats: 'eval prompts 4.0 vs 2.0'."""
    from pobench.report.versus import differences
    assert differences({"n_prompts": 4.0, "steps": 12.0}, {"n_prompts": 2.0, "steps": 12.0}) == ["eval prompts 4 vs 2"]


def test_top_p_methods_that_draw_alike_are_no_difference():
    """The nucleus searches draw the same tokens: a run with the radix select against a baseline with the default
    is not flagged; "reject" draws others and is."""
    from pobench.report.versus import differences

    def run(method, top_p=0.95):
        return {"config": {"model": {"top_p_method": method}, "pool": {"temperature": 0.8, "top_p": top_p}}}
    assert differences(run("radix"), run("auto")) == []
    assert differences(run("reject"), run("auto")) == ["model.top_p_method 'reject' vs 'auto'"]
    assert differences(run("reject", top_p=1.0), run("auto", top_p=1.0)) == []    # no nucleus: nothing rejected


@pytest.mark.parametrize("content", ["null", "[]", "{}"])
def test_an_empty_or_null_eval_json_is_damaged_not_absent(tmp_path, content):
    """An eval.json holding null, [] or {} read as a run never evaluated ([1/2] in the tables): it is a broken
    file, named as such; a missing eval.json is still a run not evaluated yet."""
    run = write_run(tmp_path, "dpo", 1, [0.5, 0.6], eval_json=new_eval(0.5, 0.6))
    write_run(tmp_path, "dpo", 2, [0.5, 0.6], eval_json=new_eval(0.5, 0.6))
    (run / "eval.json").write_text(content)
    with pytest.raises(PobenchError, match="seed1/eval.json: expected a JSON object with the evaluation"):
        collect(tmp_path)
    (run / "eval.json").unlink()
    assert len(collect(tmp_path)[0]) == 2


def test_runs_without_curves_still_report(tmp_path):
    """No metrics.jsonl and no initial held-out point: the report failed with KeyError 'suite' (exit 1)."""
    run = write_run(tmp_path, "dpo", 1, [0.5, 0.6], eval_json=new_eval(0.5, 0.6))
    (run / "metrics.jsonl").unlink()
    summary = json.loads((run / "train_summary.json").read_text())
    del summary["held_out_initial"]
    (run / "train_summary.json").write_text(json.dumps(summary))
    report = build_report(tmp_path)[0]
    assert report["suites"][0]["leaderboard"][0]["algo"] == "dpo"


def test_runs_whose_curves_end_where_they_start_still_report(tmp_path):
    """No metrics.jsonl, but the initial held-out point of train_summary.json: the convergence tables had rows and no
    range, and rendering them failed with "TypeError: float() argument must be ... not 'NoneType'" (exit 1)."""
    run = write_run(tmp_path, "dpo", 1, [0.5, 0.6], eval_json=new_eval(0.5, 0.6))
    (run / "metrics.jsonl").unlink()
    report = build_report(tmp_path)[0]
    assert report["suites"][0]["convergence"]["x_max"] is None
    md = to_markdown(sections(report))
    assert "### leaderboard: hh-rlhf" in md and "### convergence" not in md
