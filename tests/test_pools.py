"""Generated candidate pools: made once from the reference policy, scored, stored, shared by algorithms."""
from __future__ import annotations

import json

from pobench.rewards import register_gold
from pobench.sampling.pools import PoolStore
from test_engine import metrics, run_train


@register_gold("test-length")
def _length_reward(prompt_messages, completion):
    return float(len(completion.split()))


def pool_overrides(cache):
    return dict(cache=cache, max_steps=2, batch_size=2)


def test_generated_pool_is_made_once_and_shared(tmp_path, tiny_model_dir):
    cache = tmp_path / "cache"
    pool = {"source": "generated", "reward_model": "gold:test-length", "num_samples": 3, "max_new_tokens": 6}
    run_train(tmp_path / "mcpo", tiny_model_dir, algo="mcpo", pool=pool, **pool_overrides(cache))
    stores = list((cache / "pools").glob("*.jsonl"))
    assert len(stores) == 1
    entries = PoolStore(stores[0]).entries
    assert len(entries) == 4  # 2 steps x 2 records
    for e in entries.values():
        assert len(e["candidates"]) == 3 and e["scores"] == [float(len(t.split())) for t in e["candidates"]]
    before = stores[0].read_text()
    rows = metrics(tmp_path / "mcpo")
    assert all(r["sampler/pool_size"] == 4 for r in rows)        # the dataset's rejected + 3 generated
    summary = json.loads((tmp_path / "mcpo" / "train_summary.json").read_text())
    assert summary["candidate_pool"]["reward_model"] == "gold:test-length"
    # a second algorithm at the same seed reuses the stored pool: nothing is generated again
    run_train(tmp_path / "rso", tiny_model_dir, algo="rso", pool=pool, algorithm={"num_accepted": 2},
              **pool_overrides(cache))
    assert stores[0].read_text() == before
    assert all(r["sampler/accepted"] == 2 for r in metrics(tmp_path / "rso"))


def test_torn_store_line_is_ignored(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"key": "a", "candidates": ["x"], "scores": [1.0]}) + "\n{\"key\": \"b\", \"cand")
    assert list(PoolStore(path).entries) == ["a"]
