"""Generated candidate pools: made once from the reference policy, scored, stored, shared by algorithms."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pobench.rewards import register_gold
from pobench.sampling.pools import PoolStore
from test_engine import make_cfg, metrics, run_train
from test_mcpo import pool_data  # noqa: F401  (a fixture: records with their own 4-candidate pools)


@register_gold("test-length")
def _length_reward(prompt_messages, completion):
    return float(len(completion.split()))


@register_gold("test-chars")
def _chars_reward(prompt_messages, completion):
    """Characters, not words: the word counts of three 6-token samples tie often, and RSO refuses a step whose
    accepted candidates all tie."""
    return float(len(completion))


def pool_overrides(cache):
    return dict(cache=cache, max_steps=2, batch_size=2)


def test_generated_pool_is_made_once_and_shared(tmp_path, tiny_model_dir):
    cache = tmp_path / "cache"
    pool = {"source": "generated", "reward_model": "gold:test-chars", "num_samples": 3, "max_new_tokens": 6}
    run_train(tmp_path / "mcpo", tiny_model_dir, algo="mcpo", pool=pool, **pool_overrides(cache))
    stores = list((cache / "pools").glob("*.jsonl"))
    assert len(stores) == 1
    entries = PoolStore(stores[0]).entries
    assert len(entries) == 4  # 2 steps x 2 records
    for e in entries.values():
        assert len(e["candidates"]) == 3 and e["scores"] == [float(len(t)) for t in e["candidates"]]
    before = stores[0].read_text()
    rows = metrics(tmp_path / "mcpo")
    # the dataset's rejected + the 3 generated, less those rated no lower than the chosen by the same reward model
    assert all(r["sampler/pool_size"] == pytest.approx(4 - 3 * r["sampler/pool_filtered"]) for r in rows)
    assert any(r["sampler/pool_filtered"] > 0 for r in rows)    # samples longer than the chosen: no negatives
    summary = json.loads((tmp_path / "mcpo" / "train_summary.json").read_text())
    assert summary["candidate_pool"]["reward_model"] == "gold:test-chars"
    made_in = summary["candidate_pool"]["generation_s"]    # the pools' cost, made before training (not in train_time_s)
    assert made_in > 0 and made_in == pytest.approx(sum(e["seconds"] for e in entries.values()), abs=1e-3)
    # a second algorithm at the same seed reuses the stored pool: nothing is generated again
    run_train(tmp_path / "rso", tiny_model_dir, algo="rso", pool=pool, algorithm={"num_accepted": 2},
              **pool_overrides(cache))
    assert stores[0].read_text() == before
    assert all(r["sampler/accepted"] == 2 for r in metrics(tmp_path / "rso"))
    # ...and is charged what making it cost, as the run that made it was
    assert json.loads((tmp_path / "rso" / "train_summary.json").read_text())["candidate_pool"]["generation_s"] == made_in


def test_torn_store_line_is_ignored(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"key": "a", "candidates": ["x"], "scores": [1.0]}) + "\n{\"key\": \"b\", \"cand")
    assert list(PoolStore(path).entries) == ["a"]


def test_store_lines_this_code_did_not_write_are_regenerated(tmp_path):
    """A line of `{}` or `[1, 2]` in the pool store ended the run with an internal error (KeyError)."""
    path = tmp_path / "p.jsonl"
    good = {"key": "a", "candidates": ["x"], "scores": [1.0]}
    path.write_text("\n".join(json.dumps(x) for x in ({}, [1, 2], {"key": "b"}, good, 5)) + "\n")
    assert list(PoolStore(path).entries) == ["a"]


def test_candidates_command_prepares_the_pool_a_run_then_reuses(tmp_path, tiny_model_dir):
    import subprocess
    import sys
    out = tmp_path / "results"
    # one process, so that the test's gold reward (registered by importing this module) is known to both commands
    made = subprocess.run([sys.executable, "-c", CANDIDATES_THEN_RUN, str(out), str(tiny_model_dir)],
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).parent)
    assert made.returncode == 0, made.stderr[-2000:]
    stores = list((out / ".cache" / "pools").glob("*.jsonl"))
    assert len(stores) == 1 and len(PoolStore(stores[0]).entries) == 4
    assert "unchanged" in made.stdout


CANDIDATES_THEN_RUN = """
import sys
from pathlib import Path
from typer.testing import CliRunner
import test_pools  # registers gold:test-length in this process
from pobench.cli import app
out, model = sys.argv[1], sys.argv[2]
common = ["--model", model, "--data", "sample", "--max-steps", "2", "--out", out,
          "--set", "data.max_train_records=16", "--set", "data.eval_size=4", "--set", "train.batch_size=2",
          "--set", "pool.reward_model=gold:test-length", "--set", "pool.num_samples=2", "--set", "pool.max_new_tokens=4"]
runner = CliRunner()
r = runner.invoke(app, ["candidates", *common])
assert r.exit_code == 0, r.output
store = next((Path(out) / ".cache" / "pools").glob("*.jsonl"))
before = store.read_text()
r = runner.invoke(app, ["run", "--algo", "mcpo", "--no-eval", *common])
assert r.exit_code == 0, r.output
print("unchanged" if store.read_text() == before else "regenerated")
"""


def record(i: int, chosen: str = "yes"):
    from pobench.data.records import PreferenceRecord
    return PreferenceRecord([{"role": "user", "content": f"q{i}"}], chosen, "no", id=f"row{i}")


def test_auto_reward_models_are_keyed_by_the_records_not_their_path(tmp_path, monkeypatch):
    """The same records read from another place (a moved checkout, another venv) reuse the cached reward models;
    a record edited in place trains new ones, for the pool and for the judge."""
    import types

    import pobench.rewards.train as rm_train
    from pobench.eval.runner import auto_judge_model
    from pobench.sampling.pools import auto_reward_model

    trainings = []

    def fake_train(records, eval_records, backbone, out, **kw):   # counts trainings; no training
        trainings.append(out)
        Path(out).mkdir(parents=True)
        (Path(out) / "config.json").write_text("{}")

    monkeypatch.setattr(rm_train, "train_reward_model", fake_train)
    cfg = types.SimpleNamespace(suite="s", pool=types.SimpleNamespace(reward_model="auto", rm_steps=3),
                                eval=types.SimpleNamespace(judge_rm_steps=3))

    def both(train, source):
        data = types.SimpleNamespace(train=train, eval=[record(99)], report={"train_source": source})
        return auto_reward_model(cfg, data, tmp_path), auto_judge_model(cfg, data, used={1}, cache_dir=tmp_path)[0]
    first = both([record(i) for i in range(10)], "/old/place/train.jsonl")
    assert both([record(i) for i in range(10)], "/new/place/train.jsonl") == first and len(trainings) == 2
    edited_pool_half = both([record(i, "YES" if i == 2 else "yes") for i in range(10)], "/old/place/train.jsonl")
    assert edited_pool_half[0] != first[0] and edited_pool_half[1] == first[1] and len(trainings) == 3
    edited_judge_half = both([record(i, "YES" if i == 7 else "yes") for i in range(10)], "/old/place/train.jsonl")
    assert edited_judge_half[0] == first[0] and edited_judge_half[1] != first[1] and len(trainings) == 4


def test_runs_in_parallel_train_a_shared_reward_model_once(tmp_path, monkeypatch):
    """Runs side by side (mcpo and rso of one suite, or dpo and simpo evaluated at one seed) both missed the cached
    pool reward model or judge and both trained it; the later finisher's move onto the filled folder failed
    (ENOTEMPTY) and ended that run. They now take turns: one trains, the other waits and finds its folder."""
    import threading
    import time
    import types

    import pobench.rewards.train as rm_train
    from pobench.eval.runner import auto_judge_model
    from pobench.sampling.pools import auto_reward_model

    trainings = []

    def slow_fake_train(records, eval_records, backbone, out, **kw):   # a stand-in: the lock is under test
        trainings.append(out)
        time.sleep(0.5)
        Path(out).mkdir(parents=True)   # as the real one fails on a filled folder
        (Path(out) / "config.json").write_text("{}")

    monkeypatch.setattr(rm_train, "train_reward_model", slow_fake_train)
    cfg = types.SimpleNamespace(suite="s", pool=types.SimpleNamespace(reward_model="auto", rm_steps=3),
                                eval=types.SimpleNamespace(judge_rm_steps=3))
    data = types.SimpleNamespace(train=[record(i) for i in range(10)], eval=[record(99)], report={})
    for make in (lambda: auto_reward_model(cfg, data, tmp_path),
                 lambda: auto_judge_model(cfg, data, used={1}, cache_dir=tmp_path)[0]):
        results, errors = [], []

        def run():
            try:
                results.append(make())
            except Exception as e:   # noqa: BLE001 - reported below
                errors.append(e)
        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(set(results)) == 1
    assert len(trainings) == 2   # one pool reward model, one judge


def test_pools_drawn_another_way_are_another_store():
    """A compiled decode step (bf16 kernels round otherwise on a GPU) and "reject" draws make other samples from
    the same seeds: other stores. The nucleus searches draw the same tokens: the same store."""
    import types
    from pobench.sampling.pools import store_path
    cfg = types.SimpleNamespace(pool=types.SimpleNamespace(num_samples=2, temperature=0.8, top_p=0.95, max_new_tokens=4,
                                                           seed=0, backend="transformers", batch_size=0),
                                model=types.SimpleNamespace(chat_template="auto", dtype="auto", compile_decoding=False,
                                                            top_p_method="auto"),
                                train=types.SimpleNamespace(max_prompt_length=8))

    def name(**model):
        return store_path(Path("c"), "fp", types.SimpleNamespace(**{**vars(cfg), "model": types.SimpleNamespace(
            **{**vars(cfg.model), **model})}), "rm").name
    default = name()
    assert name(top_p_method="radix") == name(top_p_method="sort") == default
    assert len({default, name(top_p_method="reject"), name(compile_decoding=True),
                name(compile_decoding=True, top_p_method="reject")}) == 4
    cfg.pool.backend = "vllm"                          # ignores both: one store
    assert len({name(), name(top_p_method="reject"), name(compile_decoding=True)}) == 1


def test_a_cached_reward_model_has_one_name_however_the_results_path_is_typed(tmp_path, monkeypatch):
    """The pool store's key and the names in results must not change with `--out results` against
    `--out /abs/results`, or with a moved results folder: the same candidates must be found, the same judge named."""
    import types
    from pobench.rewards import reward_model_name
    from pobench.sampling.pools import store_path
    monkeypatch.chdir(tmp_path)
    model = Path("results/.cache/reward_models/s-minilm-0123456789ab")
    typed = [(str(model), Path("results/.cache")), (str(tmp_path / model), tmp_path / "results/.cache"),
             (str(tmp_path / "moved" / model), tmp_path / "moved/results/.cache")]
    names = {reward_model_name(spec, cache) for spec, cache in typed}
    assert names == {"auto:reward_models/s-minilm-0123456789ab"}
    cfg = types.SimpleNamespace(pool=types.SimpleNamespace(num_samples=2, temperature=1.0, top_p=1.0, max_new_tokens=4,
                                                           seed=0, backend="transformers", batch_size=0),
                                model=types.SimpleNamespace(chat_template="auto", dtype="auto", compile_decoding=False,
                                                            top_p_method="auto"),
                                train=types.SimpleNamespace(max_prompt_length=8))
    assert len({store_path(cache, "fp", cfg, reward_model_name(spec, cache)).name for spec, cache in typed}) == 1
    auto = store_path(Path("c"), "fp", cfg, "rm").name   # weights in bf16 sample other draws: another store
    assert auto == "fp-f4dcac887e7d.jsonl"               # the defaults' key before the decoding settings were keys
    cfg.model.dtype = "bfloat16"
    assert store_path(Path("c"), "fp", cfg, "rm").name != auto
    folder = tmp_path / "my-rm"   # a reward model of the user's, retrained in place: its pools are scored anew
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    before = store_path(Path("c"), "fp", cfg, str(folder)).name
    assert before.startswith("fp-")   # the policy's fingerprint (it was the fingerprint function's repr)
    (folder / "model.safetensors").write_bytes(b"y" * 20)
    assert store_path(Path("c"), "fp", cfg, str(folder)).name != before
    for spec in ("gold:test-length", "OpenAssistant/reward-model-deberta-v3-large", str(tmp_path / "my-rm")):
        assert reward_model_name(spec, Path("results/.cache")) == spec   # not pobench's: as given


def test_a_reward_model_folder_keys_its_pools_by_its_weights_not_its_spelling(tmp_path, monkeypatch):
    """pool.reward_model ./my_rm, which runs stored before config paths were absolute, and /abs/my_rm (runs since)
    keyed two pool stores: the pools (minutes of generation) were made again. A folder is keyed by its weights; the
    auto reward model, hub ids and gold rewards keep the keys their stores have."""
    import types
    from pobench.sampling.pools import store_path
    monkeypatch.chdir(tmp_path)
    cfg = types.SimpleNamespace(pool=types.SimpleNamespace(num_samples=2, temperature=1.0, top_p=1.0, max_new_tokens=4,
                                                           seed=0, backend="transformers", batch_size=0),
                                model=types.SimpleNamespace(chat_template="auto", dtype="auto", compile_decoding=False,
                                                            top_p_method="auto"),
                                train=types.SimpleNamespace(max_prompt_length=8))
    folder = tmp_path / "my_rm"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    spellings = ("my_rm", "./my_rm", str(folder), str(tmp_path / ".." / tmp_path.name / "my_rm"))
    assert len({store_path(Path("c"), "fp", cfg, spec).name for spec in spellings}) == 1
    before = store_path(Path("c"), "fp", cfg, "./my_rm").name
    (folder / "model.safetensors").write_bytes(b"y" * 20)   # retrained in place: scored anew
    assert store_path(Path("c"), "fp", cfg, str(folder)).name != before
    # the keys the default suites' stores have had (computed before this change)
    assert store_path(Path("c"), "fp", cfg, "auto:reward_models/s-minilm-0123456789ab").name == "fp-94d777e091f8.jsonl"
    assert store_path(Path("c"), "fp", cfg, "gold:test-length").name == "fp-690e38003701.jsonl"
    assert store_path(Path("c"), "fp", cfg,
                      "OpenAssistant/reward-model-deberta-v3-large").name == "fp-a87d15642d4c.jsonl"


def test_pool_reward_model_and_eval_judge_train_on_disjoint_records(tmp_path, monkeypatch):
    """RSO and OnMC-PO are trained on pairs the pool reward model labels; the auto eval judge must not be a
    sibling of that labeller, so the two train on disjoint halves of the training records."""
    import types

    import pobench.rewards.train as rm_train
    from pobench.eval.runner import auto_judge_model
    from pobench.sampling.pools import auto_reward_model

    trained = {}

    def fake_train(records, eval_records, backbone, out, **kw):   # records who trains on what; no training
        trained[kw["extra_info"]["made_by"]] = {r.id for r in records}
        Path(out).mkdir(parents=True)
        (Path(out) / "config.json").write_text("{}")

    monkeypatch.setattr(rm_train, "train_reward_model", fake_train)
    records = [record(i) for i in range(40)]
    data = types.SimpleNamespace(train=records, eval=[], report={"n": 40})
    cfg = types.SimpleNamespace(suite="s", pool=types.SimpleNamespace(reward_model="auto", rm_steps=3),
                                eval=types.SimpleNamespace(judge_rm_steps=3))
    auto_reward_model(cfg, data, tmp_path)
    auto_judge_model(cfg, data, used={1, 25}, cache_dir=tmp_path)
    pool_rm, judge = trained["pool.reward_model=auto"], trained["eval.judge=auto"]
    assert pool_rm and judge and not (pool_rm & judge)
    assert "row25" not in judge and len(pool_rm) + len(judge) == 39   # the run's record 25 is out of both


def test_a_pool_generated_through_vllm_comes_from_the_reference_and_is_stored_apart(tmp_path, tiny_model_dir,
                                                                                   monkeypatch):
    """pool.backend=vllm (a stand-in vllm package: vLLM is CUDA-only): the engine is handed the reference policy's
    weights, the pool it draws trains MC-PO, and it is stored apart from the transformers backend's pool."""
    import sys

    import pytest
    from transformers import AutoModelForCausalLM

    from test_online import checksum, stand_in_vllm
    fake = stand_in_vllm()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    cache = tmp_path / "cache"
    pool = {"source": "generated", "reward_model": "gold:test-chars", "num_samples": 3, "max_new_tokens": 6}
    run_train(tmp_path / "hf", tiny_model_dir, algo="mcpo", pool=pool, **pool_overrides(cache))
    assert not fake.LLM.instances
    run_train(tmp_path / "vllm", tiny_model_dir, algo="mcpo", pool={**pool, "backend": "vllm"},
              **pool_overrides(cache))
    (llm,) = fake.LLM.instances
    initial = checksum(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    assert llm.used and all(c == pytest.approx(initial, abs=1e-6) for c in llm.used)
    stores = sorted((cache / "pools").glob("*.jsonl"))
    assert len(stores) == 2 and all(len(PoolStore(s).entries) == 4 for s in stores)
    # the dataset's rejected + the 3 samples, less those the reward model rates no lower than the chosen
    assert all(r["sampler/pool_size"] == pytest.approx(4 - 3 * r["sampler/pool_filtered"])
               for r in metrics(tmp_path / "vllm"))


def test_compile_decoding_reaches_every_generation(tmp_path, tiny_model_dir, monkeypatch):
    """`model.compile_decoding` is handed to a generated pool's, an OnMC-PO refresh's and the evaluation's
    generation (on the CPU the plain path ignores it; on CUDA the static decoder compiles its step)."""
    import pobench.generation as G
    from pobench.eval.runner import generation_config
    seen = []
    real = G.get_backend

    def spy(name, model, tokenizer, **kw):
        backend = real(name, model, tokenizer, **kw)
        generate = backend.generate
        backend.generate = lambda prompt_ids, cfg=None: seen.append((name, cfg.compile)) or generate(prompt_ids, cfg)
        return backend

    monkeypatch.setattr(G, "get_backend", spy)
    compiled = {"compile_decoding": True}
    pool = {"source": "generated", "reward_model": "gold:test-chars", "num_samples": 2, "max_new_tokens": 4}
    run_train(tmp_path / "mcpo", tiny_model_dir, algo="mcpo", pool=pool, model=compiled,
              **{**pool_overrides(tmp_path / "cache"), "max_steps": 1})
    run_train(tmp_path / "onmcpo", tiny_model_dir, algo="onmcpo", algorithm={"num_candidates": 2}, model=compiled,
              pool={"reward_model": "gold:test-length", "max_new_tokens": 4}, max_steps=1, batch_size=2)
    assert len(seen) == 2 and all(flag for _, flag in seen)
    assert generation_config(make_cfg(tiny_model_dir, model=compiled)[0]).compile
    assert not generation_config(make_cfg(tiny_model_dir)[0]).compile


def test_a_sample_cut_by_its_token_limit_is_encoded_without_an_end_of_turn(tmp_path, tiny_model_dir):
    """A sample that hit pool.max_new_tokens did not end: closing it with <|im_end|> would train the policy (and
    score the kernel) on an answer that stops where the limit cut it."""
    from transformers import AutoTokenizer

    from pobench.data import load_suite_data
    from pobench.data.tokenize import ChatFormatter
    from pobench.engine import trainer as T
    from pobench.models import model_fingerprint
    from pobench.sampling import pools as P

    cfg, _ = make_cfg(tiny_model_dir, algo="mcpo", max_completion_length=24,
                      pool={"source": "generated", "reward_model": "gold:test-chars", "max_new_tokens": 6})
    data = load_suite_data(cfg.data, cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    formatter = ChatFormatter(tokenizer)
    pairs = T.tokenize_all(data.train[:1], formatter, cfg)
    store = PoolStore(P.store_path(tmp_path, model_fingerprint(str(tiny_model_dir)), cfg, "gold:test-chars"))
    store.add([{"key": P.prompt_key(pairs[0].prompt), "record": data.train[0].id, "candidates": ["All done.", "Cut in"],
                "scores": [9.0, 6.0], "finished": [True, False]}])
    info = T.prepare_pools(cfg, data, pairs, [0], None, tokenizer, None, formatter, tmp_path, str(tiny_model_dir),
                           "cpu", False)
    assert info["store"] == str(store.path)   # the stored pool was used, nothing generated
    closed, cut = (tokenizer.decode(ids) for ids in pairs[0].candidates)
    assert closed.startswith("All done.") and "<|im_end|>" in closed
    assert cut == "Cut in"


def test_a_generated_pools_chosen_is_scored_by_its_reward_model_once(tmp_path, tiny_model_dir, monkeypatch):
    """A reference sample that the pool's reward model rates above the dataset's chosen was drawable as MC-PO's
    negative: the chosen had no score on the pool's scale. It is scored now, by that model, once, and stored beside
    the pool; a pool stored before (this one, made by hand) keeps its candidates and gets its chosen scored."""
    from transformers import AutoTokenizer

    from pobench.data import load_suite_data
    from pobench.data.tokenize import ChatFormatter
    from pobench.engine import trainer as T
    from pobench.models import model_fingerprint
    from pobench.sampling import pools as P
    from test_mcpo import sampler

    cfg, _ = make_cfg(tiny_model_dir, algo="mcpo", pool={"source": "generated", "reward_model": "gold:test-chars"})
    data = load_suite_data(cfg.data, cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    formatter = ChatFormatter(tokenizer)
    pairs = T.tokenize_all(data.train[:1], formatter, cfg)
    chosen = data.train[0].chosen
    better, worse = "Yes, " + chosen, chosen[:len(chosen) // 2]
    store = PoolStore(P.store_path(tmp_path, model_fingerprint(str(tiny_model_dir)), cfg, "gold:test-chars"))
    store.add([{"key": P.prompt_key(pairs[0].prompt), "record": data.train[0].id, "candidates": [better, worse],
                "scores": [float(len(better)), float(len(worse))], "finished": [True, True]}])

    def prepare():
        return T.prepare_pools(cfg, data, pairs, [0], None, tokenizer, None, formatter, tmp_path,
                               str(tiny_model_dir), "cpu", False)
    prepare()
    assert pairs[0].chosen_score == float(len(chosen))
    items, _ = sampler().pool(pairs[0])
    assert items == [pairs[0].rejected, pairs[0].candidates[1]]                 # `better` is no negative
    assert sampler(negatives="any").pool(pairs[0])[0] == [pairs[0].rejected, *pairs[0].candidates]
    chosen_store = P.chosen_store_path(store.path)
    assert [e["score"] for e in PoolStore(chosen_store, P.CHOSEN_FIELDS).entries.values()] == [float(len(chosen))]
    before = chosen_store.read_text()
    monkeypatch.setattr("pobench.rewards.get_scorer", lambda spec: pytest.fail("the chosen scored again"))
    pairs[0].chosen_score = None
    prepare()                                                                  # stored: read, not scored again
    assert pairs[0].chosen_score == float(len(chosen)) and chosen_store.read_text() == before


def test_runs_sharing_tokenized_records_keep_their_own_pools(tmp_path, tiny_model_dir, pool_data):
    """The runs of one command share tokenized records (a grid over pool.source here): the dataset point trained
    on the generated point's pools, which prepare_pools had attached to the shared records."""
    from pobench.data import load_suite_data
    from pobench.engine import trainer as T
    tokenized, data = {}, None
    for name, pool in (("generated", {"source": "generated", "reward_model": "gold:test-chars", "num_samples": 5,
                                      "max_new_tokens": 5}),
                       ("dataset", {"source": "dataset"})):
        # (negatives: any, so that a pool's size tells its source)
        cfg, algorithm = make_cfg(tiny_model_dir, "mcpo", {"negatives": "any"}, data_path=str(pool_data), pool=pool,
                                  max_steps=2, batch_size=2)
        data = data or load_suite_data(cfg.data, cfg.seed)
        T.train(cfg, algorithm, data, tmp_path / name, tmp_path / "cache", tokenized=tokenized)
    assert {r["sampler/pool_size"] for r in metrics(tmp_path / "generated")} == {6}   # the rejected + 5 generated
    assert {r["sampler/pool_size"] for r in metrics(tmp_path / "dataset")} == {3}     # its own 4, less the chosen


def test_candidates_makes_nothing_for_records_with_their_own_pools(tmp_path, tiny_model_dir, pool_data):
    """`pobench candidates` reads pool.source as a run does: on records that carry pools (auto) nothing is generated
    (it forced generated pools, which no default run uses), and pool.source=dataset was an internal KeyError."""
    from typer.testing import CliRunner
    from pobench.cli import app
    out = tmp_path / "results"
    for source in ([], ["--set", "pool.source=dataset"]):
        r = CliRunner().invoke(app, ["candidates", "--suite", "ultrafeedback", "--model", str(tiny_model_dir),
                                     "--data", str(pool_data), "--max-steps", "2", "--out", str(out),
                                     "--set", "train.batch_size=2", "--set", "data.eval_size=4", *source])
        assert r.exit_code == 0, r.output
        said = " ".join(r.output.split())   # as the console wrapped it
        assert "the records carry their own pools" in said and "nothing to generate" in said
    assert not (out / ".cache" / "pools").exists()
