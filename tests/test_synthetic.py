"""The synthetic suite: the gold reward's definition, the task's determinism, the tokenizer through pobench's
generic chat code, label noise, settings checks, and a CI-sized run through the CLI (a small reference SFT'd
in the test's own cache): gold rises above the reference for DPO and MC-PO, KL > 0, every algorithm takes a
step, and a seed reproduces exactly."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from pobench.errors import PobenchError
from pobench.synthetic.data import SyntheticSettings, pick_pair
from pobench.synthetic.task import (CONTENT_TOKENS, SyntheticTask, build_tokenizer, content_token_id, repeated,
                                    tokens_text)


def test_gold_matches_its_definition_by_hand():
    task = SyntheticTask(0)
    prompt = [3, 17, 42, 8]
    q = task.u[prompt].sum(0)
    q = q / np.linalg.norm(q)
    s = np.tanh(task.u @ q)
    # 3 distinct tokens, under the length floor of 8: sum / 8
    assert task.gold(prompt, [5, 9, 11]) == pytest.approx((s[5] + s[9] + s[11]) / 8)
    # 10 tokens with 2 repeats: sum / 10 - 0.5 * 2 / 10
    y = [1, 2, 3, 4, 5, 6, 7, 8, 1, 2]
    assert repeated(y) == 2
    assert task.gold(prompt, y) == pytest.approx(s[y].sum() / 10 - 0.5 * 2 / 10)
    assert task.gold(prompt, []) == 0.0
    # the text form (what pobench's scorers see) is the same function
    message = [{"role": "user", "content": tokens_text(prompt)}]
    assert task.gold_text(message, tokens_text(y)) == pytest.approx(task.gold(prompt, y))
    # the best answer: the k highest-scoring distinct tokens for the best k; it beats the 16 best, and no answer of
    # distinct tokens beats it (a repeat only costs)
    ranked = np.argsort(s)[::-1]
    by_k = [task.gold(prompt, ranked[:k]) for k in range(17)]
    assert task.best_gold(prompt) == pytest.approx(max(by_k)) and max(by_k) > by_k[16]
    rng = np.random.default_rng(1)
    assert max(task.gold(prompt, rng.permutation(64)[:rng.integers(1, 17)]) for _ in range(2000)) <= \
        task.best_gold(prompt) + 1e-12


def test_gold_depends_on_the_prompt_and_rejects_foreign_text():
    task = SyntheticTask(0)
    a, b = task.token_scores([0, 1, 2, 3]), task.token_scores([40, 41, 42, 43])
    assert np.corrcoef(a, b)[0, 1] < 0.9           # different prompts prefer different tokens
    assert (a > 0).sum() not in (0, 64)            # a soft "good half", not all or nothing
    with pytest.raises(PobenchError, match="'hello'"):
        task.gold_text([{"role": "user", "content": "t01 t02 t03 t04"}], "t05 hello")


def test_task_is_a_function_of_its_seed():
    assert np.array_equal(SyntheticTask(3).u, SyntheticTask(3).u)
    assert not np.array_equal(SyntheticTask(3).u, SyntheticTask(4).u)
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    t = SyntheticTask(3)
    prompts = t.sample_prompts(50, rng_a)
    assert prompts == SyntheticTask(3).sample_prompts(50, rng_b)
    assert all(4 <= len(p) <= 6 for p in prompts)
    assert t.sample_behaviour(prompts, np.random.default_rng(1)) == t.sample_behaviour(prompts, np.random.default_rng(1))


def test_behaviour_process_is_mildly_tilted_towards_gold():
    task = SyntheticTask(0)
    rng = np.random.default_rng(0)
    prompts = task.sample_prompts(2000, rng)
    behaviour = [task.gold(p, y) for p, y in zip(prompts, task.sample_behaviour(prompts, rng))]
    uniform = [task.gold(p, rng.integers(0, 64, size=10)) for p in prompts]
    best = np.mean([task.best_gold(p) for p in prompts])
    # better than chance, far from the best: room to learn, and a wide spread for pairs
    assert np.mean(uniform) + 0.1 < np.mean(behaviour) < best - 0.4
    assert np.std(behaviour) > 0.15
    assert all(4 <= len(y) <= 16 for y in task.sample_behaviour(prompts[:100], rng))


def test_tokenizer_works_through_the_generic_chat_code(tmp_path):
    from transformers import AutoTokenizer

    from pobench.data.tokenize import ChatFormatter, encode_completions

    build_tokenizer().save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)   # what pobench.models.load_tokenizer does
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, len(tokenizer)) == (0, 1, 3, 68)
    formatter = ChatFormatter(tokenizer)
    messages = [{"role": "user", "content": "t03 t17 t42 t08"}]
    prompt = formatter.prompt_text(messages)
    assert formatter.encode(prompt) == [1] + [content_token_id(i) for i in (3, 17, 42, 8)] + [2]
    assert encode_completions(formatter, messages, prompt, ["t05 t09", ""], 17) == \
        [[content_token_id(5), content_token_id(9), 3], [3]]
    ids = [content_token_id(i) for i in range(64)]
    assert tokenizer.decode(ids + [3, 0], skip_special_tokens=True) == " ".join(CONTENT_TOKENS)


def test_pairs_best_worst_ties_and_bradley_terry_noise():
    rng = np.random.default_rng(0)
    assert pick_pair([0.1, 0.5, -0.2, 0.3], "best_worst", 0.0, rng) == (1, 2)
    assert pick_pair([0.2, 0.2], "best_worst", 0.0, rng) is None
    a, b = pick_pair([0.1, 0.5, -0.2, 0.3], "random", 0.0, rng)
    assert [0.1, 0.5, -0.2, 0.3][a] > [0.1, 0.5, -0.2, 0.3][b]
    # noise: the worse one is chosen at the Bradley-Terry rate sigmoid(-gap / T)
    gap, temperature, n = 0.3, 0.2, 20000
    flips = sum(pick_pair([gap, 0.0], "best_worst", temperature, rng) == (1, 0) for _ in range(n))
    expected = 1 / (1 + math.exp(gap / temperature))
    assert abs(flips / n - expected) < 4 * math.sqrt(expected * (1 - expected) / n)


def test_settings_are_checked_by_key():
    assert SyntheticSettings.from_mapping({}) == SyntheticSettings()
    assert SyntheticSettings.from_mapping({"label_noise": "0.5"}).label_noise == 0.5
    with pytest.raises(PobenchError, match="data.synthetic.num_candidate'"):
        SyntheticSettings.from_mapping({"num_candidate": 8})
    with pytest.raises(PobenchError, match="data.synthetic.num_candidates"):
        SyntheticSettings.from_mapping({"num_candidates": 1})
    with pytest.raises(PobenchError, match="data.synthetic.pairs"):
        SyntheticSettings.from_mapping({"pairs": "best"})
    with pytest.raises(PobenchError, match="data.synthetic.train_prompts"):
        SyntheticSettings.from_mapping({"train_prompts": "many"})


def test_gold_is_registered_as_a_scorer():
    import pobench.synthetic  # noqa: F401  (registers gold:synthetic)
    from pobench.rewards import get_scorer
    from pobench.synthetic import register_task_gold

    prompts = [[{"role": "user", "content": "t01 t02 t03 t04"}]] * 2
    assert get_scorer("gold:synthetic").score(prompts, ["t05 t06", ""]) == \
        [pytest.approx(SyntheticTask(0).gold([1, 2, 3, 4], [5, 6])), 0.0]
    assert register_task_gold(5) == "synthetic-5"
    assert get_scorer("gold:synthetic-5").score(prompts[:1], ["t05 t06"]) == \
        [pytest.approx(SyntheticTask(5).gold([1, 2, 3, 4], [5, 6]))]


def tiny_policy(tmp_path: Path, seed: int = 0):
    """A random model of the suite's shape (narrow, 1 layer) and the suite's tokenizer: no training needed."""
    from pobench.synthetic.reference import ReferenceRecipe, new_model
    return new_model(ReferenceRecipe(layers=1, hidden=32, heads=2), seed=seed), build_tokenizer()


def test_gold_evaluate_policy_against_itself_and_a_perturbed_copy(tmp_path):
    import torch

    from pobench.synthetic.evaluate import gold_evaluate, win_rate

    assert win_rate(np.array([1.0, 0.0, 0.5]), np.array([0.0, 1.0, 0.5])) == 0.5
    assert win_rate(np.array([1.0, 2.0]), np.array([0.0, 2.0])) == 0.75
    reference, tokenizer = tiny_policy(tmp_path)
    task = SyntheticTask(0)
    prompts = [[{"role": "user", "content": tokens_text(p)}] for p in task.sample_prompts(16, np.random.default_rng(0))]
    same = gold_evaluate(reference, reference, tokenizer, prompts, task, seed=5, samples_per_prompt=2)
    # common random numbers: the policy's draws are the reference's own
    assert same["gold/win_rate"] == 0.5 and same["gold/kl"] == 0.0
    assert same["gold/reward"] == same["gold/ref_reward"]
    policy, _ = tiny_policy(tmp_path)
    # a context-free policy that favours the good tokens of one prompt: gold and KL must both go up
    head = torch.nn.Linear(32, 68, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-30.0)   # no special tokens: 16 content tokens per answer
        head.bias[4:] = 3.0 * torch.tensor(task.token_scores([0, 1, 2, 3]), dtype=torch.float32)
    policy.lm_head = head
    prompts = [[{"role": "user", "content": "t00 t01 t02 t03"}]] * 16
    moved = gold_evaluate(policy, reference, tokenizer, prompts, task, seed=5, samples_per_prompt=2)
    assert moved["gold/kl"] > 0.5 and moved["gold/reward"] > moved["gold/ref_reward"]


# -- a CI-sized run through the CLI ---------------------------------------------------------------------------
# A small reference (100 SFT steps instead of 2000) and 256 training prompts, in the test's own cache: the fixture
# costs ~15-25 s on 2 cores, each run a few seconds.
CI_SETTINGS = ["--set", "data.synthetic.ref_steps=100", "--set", "data.synthetic.train_prompts=256",
               "--set", "data.eval_size=64", "--set", "train.lr=2e-4", "--no-eval"]


@pytest.fixture(scope="module")
def ci_reference(tmp_path_factory):
    from pobench.synthetic.reference import ReferenceRecipe, ensure_reference

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POBENCH_CACHE", str(tmp_path_factory.mktemp("synthetic-cache")))
        yield ensure_reference(0, ReferenceRecipe(steps=100))


def run_cli(out: Path, reference: Path, *args: str) -> None:
    from typer.testing import CliRunner

    from pobench.cli import app
    result = CliRunner().invoke(app, ["run", "--suite", "synthetic", "--out", str(out), "--model", str(reference),
                                      *CI_SETTINGS, *args])
    assert result.exit_code == 0, (result.output, result.exception)


def gold(out: Path, algo: str, seed: int = 1) -> dict:
    return json.loads((out / "synthetic" / algo / f"seed{seed}" / "gold_eval.json").read_text())


def metric_rows(out: Path, algo: str, seed: int = 1) -> list[dict]:
    path = out / "synthetic" / algo / f"seed{seed}" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ci_dpo_and_mcpo_raise_gold_above_the_reference(tmp_path, ci_reference):
    run_cli(tmp_path, ci_reference, "--algo", "dpo,mcpo", "--max-steps", "40", "--set", "train.eval_every=20")
    for algo in ("dpo", "mcpo"):
        result = gold(tmp_path, algo)
        start, final = result["curve"][0], result["final"]
        assert result["on_policy_data"] and start["step"] == 0 and final["step"] == 40
        assert start["gold/kl"] == 0 and start["gold/win_rate"] == 0.5
        assert final["gold/reward"] > result["reference"]["gold/reward"] + 0.02, (algo, final)
        assert final["gold/win_rate"] > 0.53, (algo, final)   # paired draws (common random numbers), ties 1/2
        assert final["gold/kl"] > 0.05, (algo, final)
        # the same draws for every algorithm: the reference side of the comparison is identical
        assert final["gold/ref_reward"] == gold(tmp_path, "dpo")["final"]["gold/ref_reward"]
        assert "gold/reward" in metric_rows(tmp_path, algo)[19]    # logged at the evaluation steps
    # the plain function on the saved weights reproduces the last in-training evaluation
    from pobench.synthetic.evaluate import evaluate_run_dir
    again = evaluate_run_dir(tmp_path / "synthetic" / "dpo" / "seed1")
    assert again["gold/reward"] == pytest.approx(gold(tmp_path, "dpo")["final"]["gold/reward"])
    assert again["gold/kl"] == pytest.approx(gold(tmp_path, "dpo")["final"]["gold/kl"], abs=1e-4)
    data = json.loads((tmp_path / "synthetic" / "dpo" / "seed1" / "data.json").read_text())
    assert data["synthetic"]["reference_gold"]["within_prompt_range_mean"] > 0.3   # pairs with a real gap


def test_ci_every_algorithm_takes_a_step(tmp_path, ci_reference):
    algos = ["simpo", "rso", "onmcpo", "online_dpo"]
    run_cli(tmp_path, ci_reference, "--algo", ",".join(algos), "--max-steps", "2",
            "--set", "onmcpo.num_candidates=2", "--set", "online_dpo.num_candidates=2")
    for algo in algos:
        rows = metric_rows(tmp_path, algo)
        assert [r["step"] for r in rows] == [1, 2], algo
        assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows), algo
        assert "gold/reward" in rows[-1] and gold(tmp_path, algo)["final"]["step"] == 2
    summary = json.loads((tmp_path / "synthetic" / "onmcpo" / "seed1" / "train_summary.json").read_text())
    assert summary["reward_model"] == "gold:synthetic"   # fresh samples are scored by the gold reward itself


def test_ci_a_seed_reproduces_exactly(tmp_path, ci_reference):
    def strip(row: dict) -> dict:   # wall-clock measurements differ between runs; everything else must not
        return {k: v for k, v in row.items() if not k.endswith(("time_s", "_per_s", "eval_s"))}

    for out in ("a", "b"):
        run_cli(tmp_path / out, ci_reference, "--algo", "mcpo", "--max-steps", "4", "--seeds", "3",
                "--set", "train.eval_every=2")
    assert [strip(r) for r in metric_rows(tmp_path / "a", "mcpo", 3)] == \
        [strip(r) for r in metric_rows(tmp_path / "b", "mcpo", 3)]
    a, b = gold(tmp_path / "a", "mcpo", 3), gold(tmp_path / "b", "mcpo", 3)
    assert [strip(c) for c in a["curve"]] == [strip(c) for c in b["curve"]]


def test_study_crossings_gain_and_paired_differences():
    from pobench.synthetic.study import crossing, markdown, summarise

    curve = [{"step": 0, "records_seen": 0, "time_s": 0.0, "gold/reward": 0.1, "gold/kl": 0.0},
             {"step": 10, "records_seen": 100, "time_s": 2.0, "gold/reward": 0.3, "gold/kl": 1.0},
             {"step": 20, "records_seen": 200, "time_s": 4.0, "gold/reward": 0.4, "gold/kl": 3.0}]
    assert crossing(curve, "gold/kl", 0.5, "gold/reward") == pytest.approx(0.2)
    assert crossing(curve, "gold/kl", 2.0, "gold/reward") == pytest.approx(0.35)
    assert crossing(curve, "gold/kl", 4.0, "gold/reward") is None      # never reached: not extrapolated

    def run(scale: float, kl_scale: float = 1.0, pairs_per_record: int = 1) -> dict:
        c = [dict(p, **{"gold/reward": 0.1 + scale * (p["gold/reward"] - 0.1), "gold/kl": kl_scale * p["gold/kl"],
                        "gold/win_rate": 0.5, "gold/length": 9.0,
                        "pairs_seen": pairs_per_record * p["records_seen"]}) for p in curve]
        return {"gold": {"curve": c, "final": c[-1]}, "summary": {"train_time_s": 4.0, "pairs_seen": 200 * pairs_per_record}}

    # "ranked" trains on 4 pairs per record (as RSO does): compared at equal records, it is DPO's twin
    runs = {"dpo": {1: run(1.0), 2: run(1.0)}, "slow": {1: run(0.5, 0.5), 2: run(0.6, 0.5)},
            "ranked": {1: run(1.0, pairs_per_record=4), 2: run(1.0, pairs_per_record=4)}}
    summary = summarise(runs, "dpo")
    assert summary["base_final_gain"] == pytest.approx(0.3)
    slow = summary["algorithms"]["slow"]
    assert slow["diff_vs_base"]["per_seed"] == [pytest.approx(-0.15), pytest.approx(-0.12)]
    # "ranked" equals DPO at every seed: no p, so the family is "slow" alone
    assert slow["diff_vs_base"]["p_holm"] == pytest.approx(slow["diff_vs_base"]["p_over_seeds"])
    runs["slower"] = {1: run(0.4, 0.5), 2: run(0.45, 0.5)}
    family = summarise(runs, "dpo")["algorithms"]
    p = sorted([family["slow"]["diff_vs_base"]["p_over_seeds"], family["slower"]["diff_vs_base"]["p_over_seeds"]])
    assert sorted(family[a]["diff_vs_base"]["p_holm"] for a in ("slow", "slower")) == \
        [pytest.approx(2 * p[0]), pytest.approx(max(2 * p[0], p[1]))]
    assert slow["to_90pct_of_base_gain"]["reached"] == 0                # 0.27 of gain never reached
    dpo = summary["algorithms"]["dpo"]["to_90pct_of_base_gain"]
    assert dpo["records"][0] == pytest.approx(170) and dpo["seconds"][0] == pytest.approx(3.4)
    ranked = summary["algorithms"]["ranked"]
    assert ranked["to_90pct_of_base_gain"]["records"][0] == pytest.approx(170)
    assert ranked["gold_at_records"] == summary["algorithms"]["dpo"]["gold_at_records"]
    assert ranked["pairs"][0] == 800
    assert summary["algorithms"]["slow"]["gold_at_kl"][1.0]["mean_ci"][0] == pytest.approx(0.1 + 0.55 * 0.25)
    assert "| slow | 2 |" in markdown(summary)
    assert "| reference | 2 | 0.100 ± 0.000 | 0.5 | 0 | 9.0 ± 0.0 |" in markdown(summary)


def test_study_reads_the_kernels_logs(tmp_path):
    import json

    from pobench.synthetic.study import sampler_logs, sampler_markdown
    runs = {}
    for algo, logged in (("mcpo", True), ("dpo", False)):
        for seed in (1, 2):
            run_dir = tmp_path / algo / f"seed{seed}"
            run_dir.mkdir(parents=True)
            rows = [{"step": i, **({"sampler/kernel_entropy": 1.9 - 0.01 * i * seed, "sampler/kernel_entropy_uniform": 1.9459,
                                    "sampler/drawn_rm_rank": 0.1 * i} if logged else {})} for i in range(1, 5)]
            (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            runs.setdefault(algo, {})[seed] = {"dir": run_dir}
    logs = sampler_logs(runs, last=2)
    assert set(logs) == {"mcpo"}
    assert logs["mcpo"]["min_kernel_entropy"] == pytest.approx(1.82) and logs["mcpo"]["uniform_entropy"] == 1.9459
    assert logs["mcpo"]["drawn_rank"] == {1: pytest.approx(0.25), 2: pytest.approx(0.25)}
    assert logs["mcpo"]["drawn_rank_last_2"] == {1: pytest.approx(0.35), 2: pytest.approx(0.35)}
    assert "| mcpo | 1.820 | 1.946 | 0.25, 0.25 | 0.35, 0.35 |" in sampler_markdown(logs, last=2)


def test_ci_another_tasks_gold_reward_is_refused_before_the_run(tmp_path, ci_reference):
    """A run of task 0 judged (or its samples labelled) by task 3's gold reward would score answers against a
    reward the policy was never trained towards: refused while the run is planned, naming the key."""
    from typer.testing import CliRunner

    from pobench.cli import app
    from pobench.errors import PobenchError
    for key in ("eval.judge", "pool.reward_model"):
        result = CliRunner().invoke(app, ["run", "--suite", "synthetic", "--algo", "dpo", "--out", str(tmp_path),
                                          "--model", str(ci_reference), *CI_SETTINGS, "--set",
                                          f"{key}=gold:synthetic-3"])
        assert isinstance(result.exception, PobenchError), result.output
        assert f"config key '{key}': gold:synthetic-3 is not this task's gold reward" in str(result.exception)
        assert "needs gold:synthetic" in str(result.exception)
    assert not (tmp_path / "synthetic").exists()
    # the alias names a reference by its SFT steps: the default one is not the reference that made this data
    # (data.synthetic.ref_steps=100 above); it trained the 2000-step reference after the data was made
    result = CliRunner().invoke(app, ["run", "--suite", "synthetic", "--algo", "dpo", "--out", str(tmp_path),
                                      "--model", "synthetic-ref", *CI_SETTINGS])
    assert isinstance(result.exception, PobenchError), result.output
    assert ("'model.name_or_path': synthetic-ref is the 2000-step reference, but data.synthetic.ref_steps=100 makes "
            "the data with another; use --model synthetic-ref:0:100") in str(result.exception)
    assert not (tmp_path / "synthetic").exists()


def test_the_reference_alias_names_task_seed_and_steps(ci_reference):
    from pobench.errors import PobenchError
    from pobench.synthetic.reference import parse_alias, resolve_alias
    assert parse_alias("synthetic-ref") == (0, 2000) and parse_alias("synthetic-ref:3") == (3, 2000)
    assert parse_alias("synthetic-ref:0:100") == (0, 100) and parse_alias("smollm2-135m-instruct") is None
    assert resolve_alias("synthetic-ref:0:100") == str(ci_reference)   # the cached one: nothing trained
    for bad in ("synthetic-ref:x", "synthetic-ref:0:0", "synthetic-ref:0:1:2"):
        with pytest.raises(PobenchError, match="expected synthetic-ref, synthetic-ref:<task seed> or"):
            parse_alias(bad)


def test_cached_records_are_keyed_by_how_samples_are_drawn(monkeypatch, tmp_path):
    """The records hold the reference's samples: a change of sampling scheme (pobench.generation.SAMPLING_SCHEME)
    must not reuse records drawn the old way, as the pool store and the eval reference store do not."""
    import pobench.generation as G
    from pobench.synthetic.data import SyntheticSettings, _cache_path
    (tmp_path / "ref").mkdir()
    settings = SyntheticSettings.from_mapping({})
    before = _cache_path(settings, 8, str(tmp_path / "ref"))
    monkeypatch.setattr(G, "SAMPLING_SCHEME", "another scheme")
    assert _cache_path(settings, 8, str(tmp_path / "ref")) != before
