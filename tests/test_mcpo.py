"""MC-PO: the kernel's statistics, the pool, the reduction to DPO at L = 1, and a run on a candidate pool."""
from __future__ import annotations

import gzip
import json
import math
import types

import pytest
import torch

from pobench.data.tokenize import TokenizedPair
from pobench.registry import get_algorithm
from pobench.sampling.mc_kernel import MCKernel, draw, entropy, kernel_probs
from test_engine import metrics, run_train

# chi-square critical values at p = 0.001 (df -> value), from standard tables
CHI2_CRIT_001 = {3: 16.266, 4: 18.467, 7: 24.322}


def chi_square(counts: list[int], probs: list[float]) -> float:
    n = sum(counts)
    return sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, probs))


@pytest.mark.parametrize("tau", [1.0, 0.5, 2.0])
def test_kernel_frequencies_match_softmax(tau):
    scores = torch.tensor([0.3, -1.2, 1.5, 0.0, 0.8])
    probs = kernel_probs(scores, "sample", tau)
    want = [math.exp(s / tau) for s in scores.tolist()]
    want = [w / sum(want) for w in want]
    assert probs.tolist() == pytest.approx(want, rel=1e-6)
    g = torch.Generator().manual_seed(1234)
    counts = [0] * 5
    for _ in range(20000):
        counts[draw(probs, g)] += 1
    assert chi_square(counts, want) < CHI2_CRIT_001[4]
    # and the test has teeth: the same draws are far from the uniform distribution
    assert chi_square(counts, [0.2] * 5) > 10 * CHI2_CRIT_001[4]


def test_argmax_and_uniform_kernels():
    scores = torch.tensor([0.1, 2.0, -1.0])
    assert kernel_probs(scores, "argmax", 1.0).tolist() == [0.0, 1.0, 0.0]
    assert kernel_probs(scores, "uniform", 1.0).tolist() == pytest.approx([1 / 3] * 3)
    assert entropy(kernel_probs(scores, "uniform", 1.0)) == pytest.approx(math.log(3))


def test_argmax_does_not_pick_by_rounding_noise():
    """At the start every score is float rounding, which moved with the reference cache's history and the number
    of processes, and so did argmax's pick; near-ties are now drawn among with the record's seeded stream."""
    noisy = torch.tensor([2e-7, -1e-7, 5e-7, -3e-6])
    assert kernel_probs(noisy, "argmax", 1.0).tolist() == pytest.approx([0.25] * 4)
    reordered_noise = torch.tensor([-1e-7, 4e-7, 1e-7, 2e-6])
    gen = lambda: torch.Generator().manual_seed(7)   # noqa: E731  (the same record's stream)
    assert draw(kernel_probs(noisy, "argmax", 1.0), gen()) == draw(kernel_probs(reordered_noise, "argmax", 1.0), gen())
    assert kernel_probs(torch.tensor([0.3, 0.30005, -1.0]), "argmax", 1.0).tolist() == [0.5, 0.5, 0.0]


def sampler(**kw):
    params = dict(num_candidates=8, kernel="sample", tau=1.0, include_chosen_in_pool=False, kernel_score="reward",
                  beta=0.1)
    params.update(kw)
    return MCKernel(types.SimpleNamespace(**params), types.SimpleNamespace(seed=1))


def test_pool_order_and_chosen_exclusion():
    rec = TokenizedPair([1], [10], [20], candidates=[[10], [30], [20], [40]], scores=[5.0, 3.0, 1.0, 2.0])
    items, scores = sampler().pool(rec)
    assert items == [[20], [30], [40]] and scores == [1.0, 3.0, 2.0]
    assert sampler(num_candidates=1).pool(rec)[0] == [[20]]
    assert sampler(include_chosen_in_pool=True).pool(rec)[0] == [[20], [10], [30], [40]]
    assert sampler().pool(TokenizedPair([1], [10], [20]))[0] == [[20]]   # no candidates: the dataset pair


def tied_record() -> TokenizedPair:
    """Raw UltraFeedback's answers scored [8, 8, 5, 3]: chosen A (8), rejected D (the worst), B tied with A."""
    from pobench.data.tokenize import ChatFormatter, tokenize_record
    from pobench.data.ultrafeedback import raw_record

    class CharTokenizer:   # one id per character: the pool's texts are readable back
        chat_template, bos_token, eos_token = None, "", ""

        def __call__(self, text, add_special_tokens=False):   # one text, or a batch of them
            ids = [[ord(c) for c in t] for t in ([text] if isinstance(text, str) else text)]
            return {"input_ids": ids[0] if isinstance(text, str) else ids}

    row = {"instruction": "Q?", "completions": [{"response": text, "overall_score": score} for text, score in
                                                (("A", 8.0), ("B", 8.0), ("C", 5.0), ("D", 3.0))]}
    return tokenize_record(raw_record(row, "r0"), ChatFormatter(CharTokenizer()), 64, 64, with_candidates=True)


def test_a_negative_is_rated_below_the_chosen():
    """A candidate tied with the chosen (or better) was drawn as its negative, a third of the time on this record at
    the start: a pair DPO never trains on (raw UltraFeedback's rejected is below the chosen) and RSO drops."""
    rec = tied_record()
    text = lambda items: ["".join(map(chr, c)).strip() for c in items]   # noqa: E731
    items, scores = sampler().pool(rec)
    assert text(items) == ["D", "C"] and scores == [3.0, 5.0]
    assert text(sampler(negatives="any").pool(rec)[0]) == ["D", "B", "C"]        # the pool before the setting
    assert text(sampler(include_chosen_in_pool=True).pool(rec)[0]) == ["D", "A", "C"]
    pairs, m = sampler(kernel="uniform")([rec], kernel_context())
    assert m["sampler/pool_filtered"] == 0.5 and m["sampler/pool_size"] == 2     # B left out of B and C
    assert sampler(negatives="any", kernel="uniform")([rec], kernel_context())[1]["sampler/pool_filtered"] == 0.0
    pairs, m = sampler(objective="ranking_nce_pool")([rec, rec], kernel_context())   # pools of every size
    assert [text([p.rejected])[0] for p in pairs] == ["D", "C", "D", "C"] and m["sampler/pool_filtered"] == 0.5
    from pobench.errors import PobenchError
    with pytest.raises(PobenchError, match="mcpo.negatives='below': one of below_chosen, any"):
        sampler(negatives="below")


def test_a_generated_pools_negatives_are_rated_below_the_chosen_by_its_reward_model():
    """The dataset's chosen is scored by the pool's reward model (chosen_score): a sample rated above it is no
    negative, and the dataset's rejected, which has no score, always stays. Unknown chosen score: every candidate."""
    rec = TokenizedPair([1], [10], [20], candidates=[[30], [40], [50]], scores=[3.0, 1.0, 2.5], chosen_score=2.5)
    assert sampler().pool(rec) == ([[20], [40]], [None, 1.0])
    assert sampler(negatives="any").pool(rec)[0] == [[20], [30], [40], [50]]
    rec.chosen_score = None
    assert sampler().pool(rec)[0] == [[20], [30], [40], [50]]
    rec.chosen_score = math.nan     # a NaN score says nothing of what rates below it
    assert sampler().pool(rec)[0] == [[20], [30], [40], [50]]
    all_better = TokenizedPair([1], [10], [20], candidates=[[30], [40]], scores=[3.0, 4.0], chosen_score=1.0)
    assert sampler().pool(all_better)[0] == [[20]]    # the dataset's pair, as DPO trains on it
    # persistent_scores keys candidates by content: pools that lost some are scored once all the same
    rec.chosen_score = 2.5
    s, ctx = sampler(persistent_scores=True), kernel_context()
    s([rec, all_better], ctx)
    assert ctx.scorer.seen == [3]    # the kept pools' rows: 2 + 1
    s([rec, all_better], ctx)
    assert ctx.scorer.seen == [3] and s.rescored == 0.0


def test_the_drawn_rank_is_among_the_scored_candidates_of_a_generated_pool():
    """A generated pool scores its samples but not the dataset's rejected (pool index 0): the rank is taken among
    the scored ones (it was missing whenever one candidate had no score, so on every generated pool)."""
    rec = TokenizedPair([1], [10], [20], candidates=[[30], [40], [50]], scores=[3.0, 1.0, 2.0])
    items, scores = sampler().pool(rec)
    assert items == [[20], [30], [40], [50]] and scores == [None, 3.0, 1.0, 2.0]
    ranks = []
    for step in range(40):
        pairs, metrics = sampler(kernel="uniform")([rec], kernel_context(step=step))
        drawn_item = pairs[0].rejected
        expected = {(30,): 0.0, (50,): 0.5, (40,): 1.0}.get(tuple(drawn_item))
        assert metrics.get("sampler/drawn_rm_rank") == expected       # none when the dataset's rejected is drawn
        ranks.append(expected)
    assert None in ranks and len(set(ranks)) == 4                        # every case met


@pytest.fixture(scope="module")
def pool_data(tmp_path_factory):
    """UltraFeedback sample rows in the on-policy schema: a 4-candidate pool per prompt with scores."""
    from pathlib import Path
    src = Path(__file__).resolve().parent.parent / "pobench/data/samples/ultrafeedback/train_prefs-1000.jsonl.gz"
    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    with gzip.open(src, "rt") as f, open(path, "w") as out:
        for i, line in zip(range(60), f):
            row = json.loads(line)
            chosen, rejected = row["chosen"][-1]["content"], row["rejected"][-1]["content"]
            if not chosen.strip() or not rejected.strip():
                continue
            out.write(json.dumps({"prompt_id": row["prompt_id"], "prompt": row["prompt"],
                                  "all_generated_responses": [chosen, rejected, "I am not sure.", chosen[:40] + "..."],
                                  "all_rm_scores": [4.0, 1.0, 0.5, 2.0]}) + "\n")
    return path


def test_mcpo_with_one_candidate_is_dpo(tmp_path, tiny_model_dir):
    cache = tmp_path / "cache"
    run_train(tmp_path / "dpo", tiny_model_dir, algo="dpo", cache=cache)
    run_train(tmp_path / "mcpo", tiny_model_dir, algo="mcpo", cache=cache, algorithm={"num_candidates": 1})
    dpo, mcpo = metrics(tmp_path / "dpo"), metrics(tmp_path / "mcpo")
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("sampler/")} for r in rows]
    assert strip(mcpo) == strip(dpo)
    assert all(r["sampler/kernel_entropy"] == 0.0 for r in mcpo)


def test_runs_record_what_they_trained_on(tmp_path, tiny_model_dir, pool_data):
    """"Same data order, same candidates" was inferred from equal settings: train_summary.json now records digests
    of the records in the order consumed and of the pools drawn from (token ids), equal for every algorithm of one
    seed and data, and the report names a difference between algorithms (not between seeds, which differ by design)."""
    from pobench.report.versus import differences
    cache = tmp_path / "cache"
    dpo, _ = run_train(tmp_path / "dpo", tiny_model_dir, algo="dpo", cache=cache, data_path=str(pool_data), max_steps=2)
    mcpo, _ = run_train(tmp_path / "mcpo", tiny_model_dir, algo="mcpo", cache=cache, data_path=str(pool_data),
                        max_steps=2, algorithm={"num_candidates": 3})
    from pobench.data import load_suite_data
    from pobench.engine import trainer as T
    from test_engine import make_cfg
    cfg, algorithm = make_cfg(tiny_model_dir, "mcpo", {"num_candidates": 3}, str(pool_data), max_steps=2)
    cfg.seed = 2
    (tmp_path / "seed2").mkdir()
    other = T.train(cfg, algorithm, load_suite_data(cfg.data, cfg.seed), tmp_path / "seed2", cache)
    assert dpo["data_order_digest"] == mcpo["data_order_digest"] != other["data_order_digest"]
    assert "pool_digest" not in dpo and len(mcpo["pool_digest"]) == 16
    assert json.loads((tmp_path / "mcpo" / "train_summary.json").read_text())["pool_digest"] == mcpo["pool_digest"]
    assert differences({"data_order_digest": "a"}, {"data_order_digest": "a"}) == []
    assert differences({"data_order_digest": "a"}, {"data_order_digest": "b"}) == \
        ["records trained on, in order a vs b"]


def test_every_run_is_charged_the_reference_log_probs_of_what_it_trains_on(tmp_path, tiny_model_dir, pool_data):
    """MC-PO's pool candidates were scored against the reference before step 1, outside every step: in neither
    train_time_s nor pool s, while an online sampler's fresh samples are scored inside its steps. Each cache entry
    now keeps what scoring it took, and a run is charged those of the sequences it trains on (reference_s, within
    train_time_s and the curves' time_s), whoever scored them: DPO, on MC-PO's cache, scores nothing itself and is
    charged its pairs'; MC-PO is charged its pools' besides. The held-out pairs' scoring is evaluation: no one's."""
    from pobench.engine.refcache import ReferenceCache
    cache = tmp_path / "cache"
    mcpo, _ = run_train(tmp_path / "mcpo", tiny_model_dir, algo="mcpo", cache=cache, data_path=str(pool_data),
                        max_steps=1, algorithm={"num_candidates": 3})
    files = sorted((cache / "reflogps").glob("*.pt"))
    made = [f.read_bytes() for f in files]
    dpo, _ = run_train(tmp_path / "dpo", tiny_model_dir, algo="dpo", cache=cache, data_path=str(pool_data), max_steps=1)
    assert [f.read_bytes() for f in files] == made       # every sequence DPO needs was scored by the MC-PO run
    assert 0 < dpo["reference_s"] < mcpo["reference_s"]
    assert mcpo["reference_s"] < sum(ReferenceCache(files[0]).spent.values())   # + the held-out pairs'
    for summary, run in ((dpo, "dpo"), (mcpo, "mcpo")):
        assert summary["reference_s"] < summary["train_time_s"]
        last = json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[-1])
        assert last["time_s"] == pytest.approx(summary["train_time_s"], abs=1e-3)


def test_mcpo_trains_on_a_pool_and_logs_the_kernel(tmp_path, tiny_model_dir, pool_data):
    run_train(tmp_path / "m", tiny_model_dir, algo="mcpo", data_path=str(pool_data), max_steps=3,
              algorithm={"num_candidates": 3, "tau": 0.05})
    rows = metrics(tmp_path / "m")
    assert len(rows) == 3
    for r in rows:
        assert r["sampler/pool_size"] == 3
        assert 0 <= r["sampler/kernel_entropy"] <= math.log(3) + 1e-6
        assert 0 <= r["sampler/drawn_rm_rank"] <= 1
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert get_algorithm("mcpo").sampler == "mc_kernel"   # (argmax against a direct computation: the kernel tests)


class RecordingScorer:
    """Stands in for the policy scorer inside score_sequences: log-prob = -(sum of token ids) / 100, and records
    which sequences it was asked to score."""
    training = False

    def __init__(self):
        self.seen = []

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def __call__(self, token_rows, token_cols, token_targets, token_seqs, num_seqs, **_):
        n = int(num_seqs)
        sums = torch.zeros(n).index_add(0, token_seqs, -token_targets.float() / 100)
        self.seen.append(n)
        return sums, torch.bincount(token_seqs, minlength=n)


class ZeroReference:
    def lookup_sequences(self, seqs, device=None):
        return torch.zeros(len(seqs)), torch.ones(len(seqs), dtype=torch.long)


def kernel_context(step=0, batch_offset=0, agree_forwards=None):
    """The trainer's SamplerContext around RecordingScorer (its real policy_logps: batching, collective forwards)."""
    from pobench.engine.trainer import SamplerContext
    cfg = types.SimpleNamespace(train=types.SimpleNamespace(batch_size=32))
    ctx = SamplerContext(cfg, RecordingScorer(), None, None, None, ZeroReference(), "cpu", 0, None, 1, None, None,
                         batch_offset=batch_offset, agree_forwards=agree_forwards)
    ctx.step = step
    return ctx


def drawn(pairs) -> list[list[int]]:
    return [p.rejected for p in pairs]


@pytest.mark.parametrize("kw", [dict(kernel="uniform"), dict(kernel="sample", tau=0.01),
                                dict(kernel="uniform", objective="ranking_nce", num_negatives=3)])
def test_kernel_draws_do_not_depend_on_how_the_batch_is_split_over_ranks(kw):
    """A record's draws are keyed by its place in the step's global batch: one process drawing for 6 records gives
    each record what it gets when two simulated ranks draw for 3 records each (ctx.batch_offset 0 and 3)."""
    recs = [TokenizedPair([i + 1], [10], [20 + i], candidates=[[30 + i], [40 + i], [50 + i], [60 + i]])
            for i in range(6)]
    s = sampler(num_candidates=5, **kw)
    whole, _ = s(recs, kernel_context(step=7))
    split = s(recs[:3], kernel_context(step=7))[0] + s(recs[3:], kernel_context(step=7, batch_offset=3))[0]
    assert drawn(split) == drawn(whole)
    assert drawn(s(recs, kernel_context(step=8))[0]) != drawn(whole)       # and another step draws anew


def test_records_of_one_step_do_not_share_a_random_stream():
    """Identical pools under the uniform kernel: the two simulated ranks (offsets 0 and 8) draw differently for
    the same records (with one stream per step, as before, every rank drew the same indices), and within a rank
    the records' draws are not all the same."""
    recs = [TokenizedPair([1], [10], [20], candidates=[[30 + j] for j in range(7)]) for _ in range(8)]
    s = sampler(kernel="uniform")
    rank0 = drawn(s(recs, kernel_context(step=3, batch_offset=0))[0])
    rank1 = drawn(s(recs, kernel_context(step=3, batch_offset=8))[0])
    assert rank0 != rank1
    assert len({tuple(d) for d in rank0}) > 1 and len({tuple(d) for d in rank1}) > 1


def test_record_seeds_are_distinct_across_steps_positions_and_streams():
    from pobench.sampling import record_generator, record_random, record_seed
    seeds = {record_seed(1, step, pos, stream) for step in range(64) for pos in range(64)
             for stream in ("mc_kernel", "rso")}
    assert len(seeds) == 64 * 64 * 2 and all(0 <= x < 2 ** 63 for x in seeds)
    assert record_seed(1, 0, 0, "mc_kernel") != record_seed(2, 0, 0, "mc_kernel")        # the run seed counts
    assert all(0 <= record_seed(s, 5, 3, "g", bits=32) < 2 ** 32 for s in range(100))
    a, b = record_generator(1, 2, 3, "x"), record_generator(1, 2, 3, "x")
    assert torch.rand(4, generator=a).tolist() == torch.rand(4, generator=b).tolist()   # deterministic
    assert record_random(1, 2, 3, "x").random() == record_random(1, 2, 3, "x").random()


def test_score_prefix_scores_only_the_first_tokens():
    rec = TokenizedPair([1, 2], [10, 11], [20, 1, 1, 1], candidates=[[30, 50, 50, 50], [40, 2]])
    ctx = kernel_context()
    exact = sampler(num_candidates=3)._scores([rec], [sampler(num_candidates=3).pool(rec)], ctx)[0]
    assert exact.tolist() == pytest.approx([-0.1 * 0.23, -0.1 * 1.8, -0.1 * 0.42])
    short = sampler(num_candidates=3, score_prefix_tokens=1)
    assert short._scores([rec], [short.pool(rec)], ctx)[0].tolist() == pytest.approx([-0.02, -0.03, -0.04])
    assert (rec.prompt, [20]) in short.reference_sequences([rec])          # its reference entries are prefixes too
    for whole in rec.candidates:   # and every candidate whole: any can be drawn as the negative the loss needs
        assert (rec.prompt, whole) in short.reference_sequences([rec])


@pytest.mark.parametrize("kernel_settings", [{"kernel_score": "loglik"}, {"kernel_score": "loglik_mean"},
                                             {"score_prefix_tokens": 4}])
def test_mcpo_trains_whatever_the_kernel_scores(tmp_path, tiny_model_dir, pool_data, kernel_settings):
    """The loss needs the reference log-prob of whichever candidate is drawn, also where the kernel does not score
    candidates by the implicit reward (log-likelihood) or scores only their first tokens: every candidate's is
    cached before training (these runs stopped at step 1 with a KeyError on the reference cache before)."""
    run_train(tmp_path / "m", tiny_model_dir, algo="mcpo", data_path=str(pool_data), max_steps=2,
              algorithm={"num_candidates": 4, **kernel_settings})
    rows = metrics(tmp_path / "m")
    assert len(rows) == 2 and rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)


def test_under_sharded_weights_every_rank_runs_the_busiest_ranks_forwards():
    """FSDP/ZeRO-3: a forward is a collective. A rank whose pools need no score (one candidate each) or fewer batches
    than another rank's still runs as many forwards as the busiest rank (agree_forwards: the max over ranks), on a
    stand-in whose result is dropped; its own draws are unchanged."""
    trivial = [TokenizedPair([1], [10], [20])]                             # a one-candidate pool: nothing to score
    busy = lambda n: 3                                                    # the busiest rank runs 3 forwards
    ctx = kernel_context(agree_forwards=busy)
    pairs, _ = sampler(num_candidates=3)(trivial, ctx)
    assert ctx.scorer.seen == [1, 1, 1] and drawn(pairs) == [[20]]        # three stand-in forwards of one sequence
    recs = [TokenizedPair([1], [10], [20], candidates=[[30], [40]])]
    alone, shared = kernel_context(), kernel_context(agree_forwards=busy)
    assert drawn(sampler(num_candidates=3)(recs, alone)[0]) == drawn(sampler(num_candidates=3)(recs, shared)[0])
    assert alone.scorer.seen == [3] and shared.scorer.seen == [3, 1, 1]   # its own batch, then two stand-ins
    assert kernel_context().scorer.seen == [] and sampler(num_candidates=3)(trivial, alone) and alone.scorer.seen == [3]


def test_persistent_scores_skip_the_pool_forward_on_a_later_visit():
    recs = [TokenizedPair([1], [10], [20], candidates=[[30], [40]]), TokenizedPair([2], [11], [21], candidates=[[31]])]
    s = sampler(num_candidates=3, persistent_scores=True)
    ctx = kernel_context()
    first, _ = s(recs, ctx)
    assert s.rescored == 1.0 and ctx.scorer.seen == [5]
    scores_then = [t.tolist() for t in s._scores(recs, [s.pool(r) for r in recs], ctx)]
    assert s.rescored == 0.0 and ctx.scorer.seen == [5]                     # nothing new to score: no forward
    _, m = s(recs, ctx)
    assert m["sampler/rescored_fraction"] == 0.0
    assert scores_then[0] == pytest.approx([-0.02, -0.03, -0.04]) and scores_then[1] == pytest.approx([-0.021, -0.031])
    assert sampler(num_candidates=3)(recs, ctx)[1]["sampler/rescored_fraction"] == 1.0   # exact by default
    resumed = sampler(num_candidates=3, persistent_scores=True)   # a resumed run: the scores come with the checkpoint
    resumed.load_state_dict(s.state_dict())
    assert resumed(recs, ctx)[1]["sampler/rescored_fraction"] == 0.0


def test_mcpo_ranking_nce_trains_on_several_negatives(tmp_path, tiny_model_dir, pool_data):
    """objective ranking_nce with 3 negatives per record: every step trains 3x the pairs, the first step's loss is
    log(1 + M) (all implicit rewards 0 at initialisation), and grad_accum keeps a record's rows together."""
    run_train(tmp_path / "r", tiny_model_dir, algo="mcpo", data_path=str(pool_data), max_steps=2, grad_accum=2,
              algorithm={"num_candidates": 3, "objective": "ranking_nce", "num_negatives": 3})
    rows = metrics(tmp_path / "r")
    assert len(rows) == 2 and rows[0]["pairs_seen"] == 3 * rows[0]["records_seen"]
    assert rows[0]["loss"] == pytest.approx(math.log(4), abs=1e-5)
    from pobench.errors import PobenchError
    with pytest.raises(PobenchError, match="needs mcpo.objective=ranking_nce"):
        sampler(num_negatives=2)
    with pytest.raises(PobenchError, match="label_smoothing applies to the pairwise objective only"):
        sampler(objective="ranking_nce", num_negatives=2, label_smoothing=0.1)
    # the chosen as a negative of itself in every term: the normaliser counts it twice, the loss stops at log 2
    with pytest.raises(PobenchError, match="include_chosen_in_pool=true with objective=ranking_nce_pool"):
        sampler(objective="ranking_nce_pool", include_chosen_in_pool=True)
    sampler(objective="ranking_nce", num_negatives=2, include_chosen_in_pool=True)   # drawing it is the setting


def test_mcpo_ranking_nce_over_the_whole_pool(tmp_path, tiny_model_dir, pool_data):
    """objective ranking_nce_pool: every candidate of the pool is a negative of the record's one NCE term (the
    normaliser summed over the pool, nothing drawn): L pairs per record, first loss log(1 + L)."""
    rec = TokenizedPair([1], [10], [20], candidates=[[10], [30], [40]])
    pairs, m = sampler(num_candidates=3, objective="ranking_nce_pool")([rec, rec], kernel_context())
    assert [(p.rejected, p.group) for p in pairs] == [([20], 0), ([30], 0), ([40], 0), ([20], 1), ([30], 1), ([40], 1)]
    assert m["sampler/pool_size"] == 3
    run_train(tmp_path / "r", tiny_model_dir, algo="mcpo", data_path=str(pool_data), max_steps=2, grad_accum=2,
              algorithm={"num_candidates": 3, "objective": "ranking_nce_pool"})
    rows = metrics(tmp_path / "r")
    assert len(rows) == 2 and rows[0]["pairs_seen"] == 3 * rows[0]["records_seen"]
    assert rows[0]["loss"] == pytest.approx(math.log(4), abs=1e-5)


class TableReference:
    """Reference log-probs by completion, from a table (the other tests' reference is 0 everywhere)."""

    def __init__(self, table: dict):
        self.table = table

    def lookup_sequences(self, seqs, device=None):
        return (torch.tensor([self.table[tuple(c)] for _, c in seqs]),
                torch.ones(len(seqs), dtype=torch.long))


def test_the_kernel_scores_the_implicit_reward_against_the_reference():
    """score_j = beta (log pi(y_j) - log pi_ref(y_j)): the hardest negative is the one the policy likes more than
    the reference does, not the one it likes most. Policy (RecordingScorer): -(sum of ids) / 100."""
    from pobench.engine.trainer import SamplerContext
    rec = TokenizedPair([1], [10], [20], candidates=[[30], [40]])
    reference = TableReference({(20,): 0.0, (30,): -1.0, (40,): 0.0})
    ctx = SamplerContext(types.SimpleNamespace(train=types.SimpleNamespace(batch_size=32)), RecordingScorer(), None,
                         None, None, reference, "cpu", 0, None, 1, None, None)
    ctx.step = 0
    s = sampler(num_candidates=3, kernel="argmax")
    scores = s._scores([rec], [s.pool(rec)], ctx)[0]
    assert scores.tolist() == pytest.approx([0.1 * (-0.2 - 0.0), 0.1 * (-0.3 + 1.0), 0.1 * (-0.4 - 0.0)])
    assert drawn(s([rec], ctx)[0]) == [[30]]                          # against a zero reference: [20]
    assert drawn(s([rec], kernel_context())[0]) == [[20]]


def test_ranking_nce_pool_counts_every_record_once_whatever_its_pool_size(tmp_path, tiny_model_dir, pool_data):
    """Pools of 1 and 3 candidates (rows with two answers, rows with four): the step's loss is the mean over records
    of log(1 + L_r) at step 1, not the mean over pairs (which weighed a record by its pool's size), and splitting
    the step into micro-batches changes nothing."""
    uneven = tmp_path / "uneven.jsonl"
    rows = [json.loads(line) for line in pool_data.read_text().splitlines()]
    for i, row in enumerate(rows):
        if i % 2:
            row["all_generated_responses"], row["all_rm_scores"] = row["all_generated_responses"][:2], [4.0, 1.0]
    uneven.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = dict(algo="mcpo", data_path=str(uneven), max_steps=2, lr=1e-2,
                    algorithm={"num_candidates": 3, "objective": "ranking_nce_pool"})
    for accum in (1, 2):
        run_train(tmp_path / f"a{accum}", tiny_model_dir, cache=tmp_path / "cache", grad_accum=accum, **settings)
    one, two = metrics(tmp_path / "a1"), metrics(tmp_path / "a2")
    share_of_3 = (one[0]["sampler/pool_size"] - 1) / 2              # pools of 1 and 3 only
    assert 0 < share_of_3 < 1
    by_record = (1 - share_of_3) * math.log(2) + share_of_3 * math.log(4)
    by_pair = ((1 - share_of_3) * math.log(2) + 3 * share_of_3 * math.log(4)) / (1 + 2 * share_of_3)
    assert one[0]["loss"] == pytest.approx(by_record, abs=1e-5) and abs(by_record - by_pair) > 1e-2
    assert two[1]["loss"] == pytest.approx(one[1]["loss"], rel=1e-4)


def test_a_ranking_steps_reward_metrics_count_every_record_once():
    """With pools of unequal size, the loss counted a record once (1/L per pair) but rewards/* and logps/* were
    plain means over pairs: a record with a larger pool, and its chosen reward repeated L times, weighed more."""
    import types

    from pobench.algorithm import SeqLogps
    from pobench.engine.trainer import pair_metrics
    # record A: one pair; record B: three pairs (weights 1/3)
    out = types.SimpleNamespace(losses=torch.tensor([1.0, 4.0, 4.0, 4.0]),
                                chosen_rewards=torch.tensor([0.2, 0.8, 0.8, 0.8]),
                                rejected_rewards=torch.tensor([0.4, 0.1, 0.2, 0.3]))
    policy = SeqLogps(torch.tensor([-10.0, -20.0, -20.0, -20.0]), torch.tensor([-1.0, -2.0, -3.0, -4.0]), None, None)
    m = pair_metrics(out, policy, weights=[1.0, 1 / 3, 1 / 3, 1 / 3])
    assert m["loss"] == pytest.approx(2.5) and m["rewards/chosen"] == pytest.approx(0.5)
    assert m["rewards/rejected"] == pytest.approx((0.4 + 0.2) / 2) and m["rewards/accuracies"] == pytest.approx(0.5)
    assert m["logps/chosen"] == pytest.approx(-15.0) and m["logps/rejected"] == pytest.approx((-1.0 - 3.0) / 2)
    plain = pair_metrics(out, policy)
    assert plain["rewards/chosen"] == pytest.approx(0.65) and plain["loss"] == pytest.approx(3.25)


def test_a_kernel_sampler_refuses_settings_it_does_not_know():
    """A plugin that reuses mc_kernel or online_pool without `choices` for their settings: refused when the sampler
    is built (a misspelt kernel sampled by softmax, a misspelt pairing drew by the kernel)."""
    from pobench.errors import PobenchError
    from pobench.sampling.online import OnlinePool
    with pytest.raises(PobenchError, match="mcpo.kernel='softmax': one of sample, argmax, uniform"):
        sampler(kernel="softmax")
    with pytest.raises(PobenchError, match="kernel_score='reward_mean'"):
        sampler(kernel_score="reward_mean")
    cfg = types.SimpleNamespace(algorithm_name="my_online", seed=1)
    params = dict(num_candidates=4, kernel="sample", kernel_score="reward", tau=1.0, beta=0.1)
    with pytest.raises(PobenchError, match="my_online.pairing='best-worst': one of kernel, best_worst"):
        OnlinePool(types.SimpleNamespace(**params, pairing="best-worst"), cfg)
    with pytest.raises(PobenchError, match="my_online.kernel='hard'"):
        OnlinePool(types.SimpleNamespace(**{**params, "kernel": "hard"}, pairing="kernel"), cfg)
    OnlinePool(types.SimpleNamespace(**{**params, "kernel": "unused"}, pairing="best_worst"), cfg)   # no kernel
