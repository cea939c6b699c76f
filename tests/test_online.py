"""OnMC-PO and online DPO: pools sampled from the current policy during training."""
from __future__ import annotations

import math

import pytest
import torch

import pobench.generation as G
from test_engine import metrics, run_train
from test_pools import _length_reward  # noqa: F401  (registers gold:test-length)

ONLINE = {"pool": {"reward_model": "gold:test-length", "max_new_tokens": 6}, "max_steps": 2, "batch_size": 2}


def checksum(model) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def test_pool_is_sampled_from_the_updated_policy(tmp_path, tiny_model_dir, monkeypatch):
    seen = []
    real = G.get_backend

    def spy(name, model, tokenizer, **kw):
        backend = real(name, model, tokenizer, **kw)
        generate = backend.generate

        def recording(prompt_ids, cfg=None):
            seen.append(checksum(model))
            return generate(prompt_ids, cfg)
        backend.generate = recording
        return backend

    monkeypatch.setattr(G, "get_backend", spy)
    run_train(tmp_path / "one", tiny_model_dir, algo="onmcpo", algorithm={"num_candidates": 3}, **{**ONLINE, "max_steps": 1})
    from transformers import AutoModelForCausalLM
    from safetensors.torch import load_file
    after_one = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    after_one.load_state_dict(load_file(str(tmp_path / "one" / "checkpoints" / "latest" / "trainable.safetensors")),
                              strict=False)
    initial = checksum(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    seen.clear()
    run_train(tmp_path / "two", tiny_model_dir, algo="onmcpo", algorithm={"num_candidates": 3}, **ONLINE)
    assert len(seen) == 2                                      # refresh_every = 1: one generation per step
    assert seen[0] == pytest.approx(initial, abs=1e-6)         # step 1 samples the initial policy
    assert seen[1] != pytest.approx(initial, abs=1e-6)         # step 2 samples the policy after one update
    assert seen[1] == pytest.approx(checksum(after_one), abs=1e-6)


@pytest.mark.parametrize("algo", ["onmcpo", "online_dpo"])
def test_online_algorithms_train(tmp_path, tiny_model_dir, algo):
    run_train(tmp_path / algo, tiny_model_dir, algo=algo, algorithm={"num_candidates": 3}, **ONLINE)
    rows = metrics(tmp_path / algo)
    assert len(rows) == 2
    for r in rows:
        assert r["sampler/chosen_rm_score"] >= r["sampler/rejected_rm_score"]
        assert math.isfinite(r["loss"])
    if algo == "online_dpo":
        assert all(r["sampler/kernel_entropy"] == 0 for r in rows)
    else:
        assert any(r["sampler/kernel_entropy"] > 0 for r in rows)


def test_refresh_every_covers_several_steps(tmp_path, tiny_model_dir, monkeypatch):
    calls = []
    real = G.get_backend
    monkeypatch.setattr(G, "get_backend", lambda *a, **k: calls.append(1) or real(*a, **k))
    run_train(tmp_path / "r", tiny_model_dir, algo="online_dpo",
              algorithm={"num_candidates": 2, "refresh_every": 2}, **{**ONLINE, "max_steps": 3})
    assert len(calls) == 2   # steps 1-2 from one refresh, step 3 from the next


class _KernelContext:
    """What OnlinePool's kernel draw reads from the trainer's SamplerContext: flat policy scores (log-prob = -length)
    and zero reference log-probs, so that with tau large the kernel is close to uniform."""

    def __init__(self, step: int, batch_offset: int):
        self.step, self.batch_offset = step, batch_offset
        self.refcache = self

    def ensure_reference(self, seqs):
        pass

    def policy_logps(self, seqs):
        return -torch.tensor([float(len(c)) for _, c in seqs]), torch.tensor([len(c) for _, c in seqs])

    def lookup_sequences(self, seqs, device=None):
        return torch.zeros(len(seqs)), torch.ones(len(seqs), dtype=torch.long)


def _online_pool(step: int, records: list):
    import types

    from pobench.sampling.online import OnlinePool
    params = types.SimpleNamespace(include_dataset_chosen=True, pairing="kernel", kernel="sample", tau=100.0,
                                   kernel_score="reward", beta=0.1)
    sampler = OnlinePool(params, types.SimpleNamespace(seed=1))
    # six fresh samples per record, the first the best: the negative is drawn from the other five and the chosen
    sampler.pools[step] = [([[40 + j, 41] for j in range(6)], [9.0, 1.0, 1.0, 1.0, 1.0, 1.0], 0.0) for _ in records]
    return sampler


def test_online_kernel_draws_do_not_depend_on_how_the_batch_is_split_over_ranks():
    from pobench.data.tokenize import TokenizedPair
    records = [TokenizedPair([i + 1], [10], [20]) for i in range(6)]
    negatives = lambda pairs: [p.rejected for p in pairs]  # noqa: E731
    whole = negatives(_online_pool(4, records)(records, _KernelContext(4, 0))[0])
    split = negatives(_online_pool(4, records[:3])(records[:3], _KernelContext(4, 0))[0]) + \
        negatives(_online_pool(4, records[3:])(records[3:], _KernelContext(4, 3))[0])
    assert split == whole and len({tuple(n) for n in whole}) > 1
    # identical records on two simulated ranks draw independently (one stream per step made them equal)
    other_rank = negatives(_online_pool(4, records)(records, _KernelContext(4, 6))[0])
    assert other_rank != whole


def test_online_generation_seed_differs_per_rank_unless_the_backend_seeds_each_prompt():
    """A backend that seeds the call (not each prompt) gets a seed per (step, rank), so ranks never reuse one for
    different prompts; a backend that seeds each prompt by its content gets one seed per step on every rank."""
    sampler = _online_pool(0, [])
    seeds = {sampler.generation_seed(_KernelContext(step, offset)) for step in range(20) for offset in (0, 4, 8)}
    assert len(seeds) == 60 and all(0 <= s < 2 ** 32 for s in seeds)
    per_prompt = [[sampler.generation_seed(_KernelContext(step, offset), seeds_each_prompt=True)
                   for offset in (0, 4, 8)] for step in range(20)]
    assert all(len(set(step)) == 1 for step in per_prompt) and len({step[0] for step in per_prompt}) == 20


def test_refresh_seeds_the_call_per_rank_unless_the_backend_seeds_each_prompt(monkeypatch):
    """_refresh hands the backend the rank-independent seed only when the backend declares `seeds_each_prompt`."""
    import types

    from pobench.data.tokenize import TokenizedPair
    seeds = []

    class Backend:
        def __init__(self, per_prompt):
            self.seeds_each_prompt = per_prompt

        def generate(self, prompts, cfg):
            seeds.append(cfg.seed)
            return [[G.Completion("a", [5], True)] * cfg.n for _ in prompts]

    class Ctx(_KernelContext):
        max_steps, model, tokenizer = 10, None, None

        def batch_at(self, step):
            return [TokenizedPair([1], [10], [20])] * 2

        def reward_scorer(self):
            return types.SimpleNamespace(score=lambda prompts, texts: [0.0] * len(texts))

        def prompt_messages(self, record):
            return []

        def chosen_text(self, record):
            return ""

        def encode_completions(self, record, texts):
            return [[5] for _ in texts]

    sampler = _online_pool(0, [])
    sampler.cfg = types.SimpleNamespace(seed=1, pool=types.SimpleNamespace(
        temperature=1.0, top_p=1.0, max_new_tokens=4, batch_size=4, backend="fake"))
    sampler.params.num_candidates, sampler.params.refresh_every = 2, 1
    for per_prompt in (False, True):
        monkeypatch.setattr(G, "get_backend", lambda *a, **k: Backend(per_prompt))
        for offset in (0, 2):
            sampler._refresh(Ctx(3, offset))
    assert seeds[0] != seeds[1] and seeds[2] == seeds[3]
