"""RSO: acceptance statistics against the closed form, pairing, and a run on a scored pool."""
from __future__ import annotations

import math
import random

import pytest
import torch

from pobench.sampling.rso import pair_up, rejection_sample
from test_engine import metrics, run_train
from test_mcpo import pool_data  # noqa: F401  (fixture)


def test_first_round_acceptance_matches_the_closed_form():
    scores, beta, trials = [2.0, 1.5, 0.0, -1.0, 1.9], 0.7, 20000
    rng = random.Random(7)
    first_round = [0] * len(scores)
    for _ in range(trials):
        accepted, rounds = rejection_sample(scores, len(scores), beta, rng)
        assert sorted(accepted) == list(range(len(scores)))   # k = N: everything is accepted eventually
        for i, r in zip(accepted, rounds):
            first_round[i] += r == 0
    for i, s in enumerate(scores):
        p = math.exp((s - max(scores)) / beta)                  # accept with prob exp((s - s_max) / beta)
        sd = math.sqrt(p * (1 - p) / trials) or 1e-9
        assert abs(first_round[i] / trials - p) < 5 * sd + 1e-9, (i, first_round[i] / trials, p)


def test_k_stops_early_and_the_best_is_always_accepted_in_round_one():
    rng = random.Random(0)
    for _ in range(200):
        accepted, rounds = rejection_sample([0.1, 3.0, -2.0, 0.5], 2, 0.5, rng)
        assert len(accepted) == 2
        first = [i for i, r in zip(accepted, rounds) if r == 0]
        assert 1 in first or (len(first) == 2 and 1 not in accepted)


def test_pairing_labels_by_score():
    scores = [0.0, 3.0, 1.0, 2.0]
    assert pair_up([0, 1, 2, 3], scores, "first_round") == [(1, 0), (3, 2)]
    assert pair_up([0, 1, 2, 3], scores, "tournament") == [(1, 0), (3, 2), (1, 3)]
    assert pair_up([0, 1], [1.0, 1.0], "first_round") == []   # a tie expresses no preference


def rso_sampler(**kw):
    import types

    from pobench.sampling.rso import RejectionSampler
    params = dict(num_candidates=8, num_accepted=4, beta_rso=0.5, pairing="first_round")
    params.update(kw)
    return RejectionSampler(types.SimpleNamespace(**params), types.SimpleNamespace(seed=1))


def rso_ctx(step=0, batch_offset=0):
    import types
    return types.SimpleNamespace(step=step, batch_offset=batch_offset)


def test_rso_draws_do_not_depend_on_how_the_batch_is_split_over_ranks():
    """Each record's acceptance draws are keyed by its place in the step's global batch: one process sampling 6
    records gives the pairs of two simulated ranks sampling 3 each (ctx.batch_offset 0 and 3); and two ranks
    sampling identical records do not draw alike (one stream per step, as before, made them identical)."""
    from pobench.data.tokenize import TokenizedPair
    scores = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    recs = [TokenizedPair([i + 1], [10], [20], candidates=[[30 + j] for j in range(8)], scores=scores)
            for i in range(6)]
    s = rso_sampler()
    pairs = lambda ps: [(tuple(p.chosen), tuple(p.rejected)) for p in ps]  # noqa: E731
    whole = pairs(s(recs, rso_ctx(step=5))[0])
    split = pairs(s(recs[:3], rso_ctx(step=5))[0] + s(recs[3:], rso_ctx(step=5, batch_offset=3))[0])
    assert split == whole
    same = [recs[0]] * 6
    rank0, rank1 = pairs(s(same, rso_ctx(step=5))[0]), pairs(s(same, rso_ctx(step=5, batch_offset=6))[0])
    assert rank0 != rank1 and len(set(rank0)) > 1


def test_rso_trains_on_a_scored_pool(tmp_path, tiny_model_dir, pool_data):  # noqa: F811
    run_train(tmp_path / "r", tiny_model_dir, algo="rso", data_path=str(pool_data), max_steps=3,
              algorithm={"num_accepted": 4})
    rows = metrics(tmp_path / "r")
    assert len(rows) == 3
    assert all(r["sampler/accepted"] == 4 and r["sampler/pairs_per_record"] == 2 for r in rows)
    assert rows[0]["pairs_seen"] == 8 and rows[0]["records_seen"] == 4
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)


def test_rso_without_a_pool_says_how_to_get_one(tmp_path, tiny_model_dir):
    from pobench.errors import PobenchError
    with pytest.raises(PobenchError, match="pool.source=generated"):
        run_train(tmp_path / "r", tiny_model_dir, algo="rso", max_steps=1, pool={"source": "dataset"})


@pytest.fixture(scope="module")
def tied_pool(pool_data, tmp_path_factory):  # noqa: F811
    """pool_data with two of every prompt's four candidates tied in score: RSO drops a match between them (in a
    knock-out bracket of four they meet in a third of the draws), so the number of pairs per step varies."""
    import json
    path = tmp_path_factory.mktemp("tied") / "pool.jsonl"
    rows = [json.loads(line) for line in pool_data.read_text().splitlines()]
    for row in rows:
        row["all_rm_scores"] = [4.0, 1.0, 1.0, 2.0]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rso_with_a_varying_pair_count_accumulates_gradients_like_one_batch(tmp_path, tiny_model_dir, tied_pool):
    """Tied candidates make the step's pair count odd: gradient accumulation splits it into unequal micro-batches
    (it stopped the run before) and still makes the update of the whole batch."""
    from safetensors.torch import load_file
    from pobench.data.tokenize import TokenizedPair
    from pobench.engine.trainer import micro_batches
    cache = tmp_path / "cache"
    kw = dict(algo="rso", data_path=str(tied_pool), max_steps=4, batch_size=2, cache=cache, pool={"source": "dataset"},
              algorithm={"num_candidates": 4, "num_accepted": 4, "pairing": "tournament"})
    run_train(tmp_path / "a1", tiny_model_dir, grad_accum=1, **kw)
    run_train(tmp_path / "a2", tiny_model_dir, grad_accum=2, **kw)
    one, two = metrics(tmp_path / "a1"), metrics(tmp_path / "a2")
    per_step = [b["pairs_seen"] - a["pairs_seen"] for a, b in zip([{"pairs_seen": 0}] + one, one)]
    assert any(n % 2 for n in per_step), per_step   # an odd count reached the split
    for r1, r2 in zip(one, two):
        assert r2["pairs_seen"] == r1["pairs_seen"] and r2["loss"] == pytest.approx(r1["loss"], abs=1e-5)
    w1 = load_file(str(tmp_path / "a1" / "checkpoints" / "latest" / "trainable.safetensors"))
    w2 = load_file(str(tmp_path / "a2" / "checkpoints" / "latest" / "trainable.safetensors"))
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-6)
    pairs = [TokenizedPair([1], [2], [3], group=g) for g in (0, 0, 1, 1, 2, 2)]
    assert [len(c) for c in micro_batches(pairs[:5], 2)] == [2, 3]
    assert [[p.group for p in c] for c in micro_batches(pairs, 2)] == [[0, 0], [1, 1, 2, 2]]   # groups stay whole
    assert [len(c) for c in micro_batches(pairs[:1], 2)] == [0, 1]


def test_a_pool_no_larger_than_k_is_named_before_the_run():
    """RSO's defaults (k = 8, N = 64) against pobench's 8 generated samples per prompt: every candidate would be
    accepted. The run plans with a warning that says so and how to get rejection back."""
    import types

    from pobench.data import SuiteData
    from pobench.data.records import PreferenceRecord
    from pobench.sampling.pools import candidates_per_prompt
    from pobench.sampling.rso import RejectionSampler

    params = types.SimpleNamespace(num_candidates=64, num_accepted=8, beta_rso=0.5, pairing="first_round")
    sampler = RejectionSampler(params, types.SimpleNamespace(seed=1))
    assert "num_accepted=8 >= the 8 candidates per prompt" in sampler.plan_warning(8)
    assert sampler.plan_warning(64) is None
    params.num_candidates = 6                          # N cuts the pool first
    assert "the 6 candidates" in RejectionSampler(params, types.SimpleNamespace(seed=1)).plan_warning(64)

    def cfg(source):
        return types.SimpleNamespace(pool=types.SimpleNamespace(source=source, num_samples=16))
    scored = SuiteData([PreferenceRecord([], "a", "b", ["a", "b", "c", "d"], [1, 2, 3, 4])], [])
    bare = SuiteData([PreferenceRecord([], "a", "b")], [])
    assert candidates_per_prompt(cfg("auto"), scored) == 4      # the records' own pools
    assert candidates_per_prompt(cfg("auto"), bare) == 16       # generated
    assert candidates_per_prompt(cfg("generated"), scored) == 16
    # the warning names the setting that sizes the pools the run draws from: pool.num_samples only where generated
    # (the synthetic suite's pools come with its data, and raising pool.num_samples there changed nothing)
    from pobench.cli import plan_warning

    def config(source, path):
        return types.SimpleNamespace(pool=types.SimpleNamespace(source=source, num_samples=4),
                                     data=types.SimpleNamespace(path=path))
    params.num_candidates = 64
    assert plan_warning(sampler, config("auto", "synthetic"), scored).endswith(
        "raise data.synthetic.num_candidates (these pools come with the data; pool.source=generated makes "
        "pool.num_samples instead), or lower rso.num_accepted")
    assert "raise the dataset's pools" in plan_warning(sampler, config("auto", "sample"), scored)
    assert "raise pool.num_samples, or" in plan_warning(sampler, config("generated", "synthetic"), scored)
