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
