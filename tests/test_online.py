"""OnMC-PO and online DPO: pools sampled from the current policy during training."""
from __future__ import annotations

import json
import math
import time
import types

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

    def counting(*a, **k):
        backend = real(*a, **k)
        generate = backend.generate
        backend.generate = lambda *ga, **gk: calls.append(1) or generate(*ga, **gk)
        return backend
    monkeypatch.setattr(G, "get_backend", counting)
    run_train(tmp_path / "r", tiny_model_dir, algo="online_dpo",
              algorithm={"num_candidates": 2, "refresh_every": 2}, **{**ONLINE, "max_steps": 3})
    assert len(calls) == 2   # steps 1-2 from one refresh, step 3 from the next


def test_resume_inside_a_refresh_window_trains_on_the_samples_drawn_at_its_start(tmp_path, tiny_model_dir,
                                                                                  monkeypatch):
    """refresh_every 2: step 4 trains on samples drawn before step 3 from the weights of then. A run that crashes in
    step 4 resumes from step 3's checkpoint, which keeps those samples (each rank's, with the optimizer): the
    resumed step 4 logs what the uninterrupted one logged (fresh samples from newer weights would differ)."""
    from pobench.engine import trainer as T
    cache = tmp_path / "cache"
    kw = dict(algo="onmcpo", algorithm={"num_candidates": 3, "refresh_every": 2}, cache=cache,
              **{**ONLINE, "max_steps": 4, "save_every": 1, "eval_every": 0, "lr": 1e-2})
    run_train(tmp_path / "full", tiny_model_dir, **kw)
    calls, real = {"n": 0}, T.collate_pairs_shared

    def crash_in_step_4(pairs, pad_id):
        calls["n"] += 1
        if calls["n"] == 4:   # one call per training step
            raise RuntimeError("simulated crash")
        return real(pairs, pad_id)

    monkeypatch.setattr(T, "collate_pairs_shared", crash_in_step_4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_train(tmp_path / "crash", tiny_model_dir, **kw)
    monkeypatch.setattr(T, "collate_pairs_shared", real)
    run_train(tmp_path / "crash", tiny_model_dir, resume=True, **kw)
    full = {r["step"]: r for r in metrics(tmp_path / "full")}
    resumed = {r["step"]: r for r in metrics(tmp_path / "crash")}
    assert sorted(resumed) == [1, 2, 3, 4]
    for step in (3, 4):
        for key in ("loss", "rewards/margins", "logps/rejected"):
            assert resumed[step][key] == pytest.approx(full[step][key], abs=1e-5), (step, key)


def test_a_run_resumed_from_its_final_checkpoint_still_names_its_labeller(tmp_path, tiny_model_dir):
    """Killed after the final checkpoint, before train_summary.json: the resume runs no step, and its summary still
    names the reward model that labelled the online samples (it read null before)."""
    kw = dict(algo="onmcpo", algorithm={"num_candidates": 3}, **ONLINE)
    run_train(tmp_path / "r", tiny_model_dir, **kw)
    summary = tmp_path / "r" / "train_summary.json"
    assert json.loads(summary.read_text())["reward_model"] == "gold:test-length"
    summary.unlink()
    run_train(tmp_path / "r", tiny_model_dir, resume=True, **kw)
    assert json.loads(summary.read_text())["reward_model"] == "gold:test-length"


def test_fresh_samples_are_trained_on_the_ids_generated_not_their_text_tokenized_again(tmp_path, tiny_model_dir,
                                                                                        monkeypatch):
    """A sampled sequence is often not the canonical tokenization of its text (for a random model nearly always):
    re-tokenizing the text trained and scored a sequence the policy did not sample. A stub backend (test double)
    returns samples split otherwise than their text tokenizes: the pairs trained on hold exactly those ids, a
    finished one followed by the newline SmolLM2's template puts after <|im_end|> (as a dataset completion ends),
    the unfinished one as generated (open)."""
    from transformers import AutoTokenizer

    from pobench.engine import trainer as T
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos = tokenizer.eos_token_id
    samples = [("Hello there", encode("H") + encode("ello") + encode(" there") + [eos], True),
               ("Hi you all", encode("H") + encode("i") + encode(" you") + encode(" all") + [eos], True),
               ("Hey", encode("He") + encode("y"), False)]
    assert all(ids[:len(encode(text))] != encode(text) for text, ids, _ in samples)   # none canonical

    class StubBackend:
        seeds_each_prompt = True

        def generate(self, prompts, cfg):
            return [[G.Completion(text, list(ids), done) for text, ids, done in samples][:cfg.n] for _ in prompts]

    trained, collate = [], T.collate_pairs_shared
    monkeypatch.setattr(G, "get_backend", lambda *a, **k: StubBackend())
    monkeypatch.setattr(T, "collate_pairs_shared", lambda pairs, pad_id: trained.extend(pairs) or collate(pairs, pad_id))
    run_train(tmp_path / "r", tiny_model_dir, algo="online_dpo",
              algorithm={"num_candidates": 3, "include_dataset_chosen": False}, **ONLINE)
    assert len(trained) == 4                       # 2 steps of 2 records; gold:test-length counts words
    assert all(p.chosen == samples[1][1] + encode("\n") and p.rejected == samples[2][1] for p in trained)


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
    """_refresh hands the backend the rank-independent seed only when the backend declares `seeds_each_prompt`,
    and hands each prompt's completions, with which of them ended, to what makes their ids (a sample cut by
    max_new_tokens stays open)."""
    import types

    from pobench.data.tokenize import TokenizedPair
    seeds, finished_flags = [], []

    class Backend:
        def __init__(self, per_prompt):
            self.seeds_each_prompt = per_prompt

        def generate(self, prompts, cfg):
            seeds.append(cfg.seed)
            return [[G.Completion("a", [5], True), G.Completion("b c", [6, 7], False)][:cfg.n] for _ in prompts]

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

        def sample_ids(self, record, completions):
            finished_flags.append([c.finished for c in completions])
            return [c.token_ids for c in completions]

    sampler = _online_pool(0, [])
    sampler.cfg = types.SimpleNamespace(seed=1, pool=types.SimpleNamespace(
        temperature=1.0, top_p=1.0, max_new_tokens=4, batch_size=4, backend="fake"),
        model=types.SimpleNamespace(compile_decoding=False, top_p_method="auto"))
    sampler.params.num_candidates, sampler.params.refresh_every = 2, 1
    for per_prompt in (False, True):
        monkeypatch.setattr(G, "get_backend", lambda *a, **k: Backend(per_prompt))
        sampler.backend = None                       # a new backend: the sampler keeps the one it built first
        for offset in (0, 2):
            sampler._refresh(Ctx(3, offset))
    assert seeds[0] != seeds[1] and seeds[2] == seeds[3]
    assert finished_flags and all(flags == [True, False] for flags in finished_flags)

    # sharded weights (FSDP/ZeRO-3 over several processes): the backend is built to decode in lockstep with the
    # other ranks; elsewhere it gets no such argument (a plugin backend need not know it)
    built = []
    monkeypatch.setattr(G, "get_backend", lambda *a, **k: built.append(k) or Backend(True))
    ranks = object()
    for ctx_ranks in (None, ranks):
        sampler.backend = None
        ctx = Ctx(3, 0)
        ctx.generation_ranks = ctx_ranks
        sampler._refresh(ctx)
    assert built == [{}, {"ranks": ranks}]


# -- online rounds through the vLLM backend, with a stand-in `vllm` package (vLLM itself is CUDA-only) ----------------

def stand_in_vllm(in_process: bool = False):
    """Test double of the `vllm` package for VLLMBackend: `LLM(model=folder)` loads that folder with transformers
    (so it generates from exactly the weights handed to vLLM) and samples through pobench's transformers backend;
    it records the checksum of the weights each generate call used, and its prefix-cache resets. With `in_process`,
    the engine's model is reachable where vLLM keeps it when the engine runs in this process, and its
    `load_weights` takes (checkpoint name, tensor) pairs, refusing unknown names as vLLM does."""
    import types

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pobench.generation.hf import TransformersBackend
    from test_eval_judges import stand_in_vllm_package

    class EngineModel:
        def __init__(self, model):
            self.model = model

        def load_weights(self, weights):
            params = self.model.state_dict()
            with torch.no_grad():
                for name, tensor in weights:
                    params[name].copy_(tensor)          # KeyError on a name the model does not have

    class LLM:
        instances = []

        def __init__(self, model, **kwargs):
            self.kwargs, self.resets, self.used = kwargs, 0, []
            self.model = AutoModelForCausalLM.from_pretrained(model).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            if in_process:
                runner = types.SimpleNamespace(model=EngineModel(self.model))
                self.llm_engine = types.SimpleNamespace(model_executor=types.SimpleNamespace(
                    driver_worker=types.SimpleNamespace(worker=types.SimpleNamespace(model_runner=runner))))
            LLM.instances.append(self)

        def get_tokenizer(self):
            return self.tokenizer

        def reset_prefix_cache(self):
            self.resets += 1

        def generate(self, prompts, params, use_tqdm=True):
            self.used.append(checksum(self.model))
            backend = TransformersBackend(self.model, self.tokenizer)
            outputs = []
            for prompt, p in zip(prompts, params):
                kw = p.kwargs
                cfg = G.GenerationConfig(n=kw["n"], temperature=kw["temperature"], top_p=kw["top_p"],
                                         max_new_tokens=kw["max_tokens"], seed=kw["seed"], fast="off")
                done = backend.generate([prompt["prompt_token_ids"]], cfg)[0]
                outputs.append(types.SimpleNamespace(outputs=[
                    types.SimpleNamespace(index=i, token_ids=c.token_ids, text=c.text,
                                          finish_reason="stop" if c.finished else "length")
                    for i, c in enumerate(done)]))
            return outputs

    return stand_in_vllm_package(LLM)


@pytest.mark.parametrize("in_process", [False, True], ids=["reload", "in-place"])
def test_online_rounds_through_vllm_follow_the_policy(tmp_path, tiny_model_dir, monkeypatch, in_process):
    """pool.backend=vllm: the first refresh hands vLLM the initial policy; each later one gives the engine the
    policy's weights after the update, so the pool comes from the updated policy, and resets its prefix cache.
    vLLM's default engine (a child process) is rebuilt from a saved folder; an engine in this process is loaded in
    place."""
    import sys

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    fake = stand_in_vllm(in_process)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    vllm_pool = {**ONLINE["pool"], "backend": "vllm"}
    run_train(tmp_path / "one", tiny_model_dir, algo="onmcpo", algorithm={"num_candidates": 3},
              **{**ONLINE, "pool": vllm_pool, "max_steps": 1})
    after_one = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    after_one.load_state_dict(load_file(str(tmp_path / "one" / "checkpoints" / "latest" / "trainable.safetensors")),
                              strict=False)
    initial = checksum(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    fake.LLM.instances.clear()
    run_train(tmp_path / "two", tiny_model_dir, algo="onmcpo", algorithm={"num_candidates": 3},
              **{**ONLINE, "pool": vllm_pool})
    used = [c for llm in fake.LLM.instances for c in llm.used]
    assert used == [pytest.approx(initial, abs=1e-6), pytest.approx(checksum(after_one), abs=1e-6)]
    assert used[1] != pytest.approx(initial, abs=1e-6)
    assert len(fake.LLM.instances) == (1 if in_process else 2)         # in place: the engine is never rebuilt
    assert fake.LLM.instances[-1].resets == 1
    first = fake.LLM.instances[0]
    assert first.kwargs["enable_prefix_caching"] and first.kwargs["gpu_memory_utilization"] == 0.5
    rows = metrics(tmp_path / "two")
    assert rows[1]["sampler/weight_sync_s"] > 0             # the export and reload, or the in-place load, timed
    assert all(math.isfinite(r["loss"]) and r["sampler/chosen_rm_score"] >= r["sampler/rejected_rm_score"]
               for r in rows)


@pytest.mark.parametrize("in_process", [False, True], ids=["reload", "in-place"])
def test_vllm_backend_merges_a_lora_policy_into_a_copy(tiny_model_dir, monkeypatch, in_process):
    """A LoRA policy goes to vLLM merged, at the start and at every sync (through a folder, or in place by checkpoint
    names), and the policy itself keeps its adapter unmerged and its weights exact."""
    import copy
    import sys

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    fake = stand_in_vllm(in_process)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=4, target_modules=["q_proj"]))

    def train_adapter(seed):
        with torch.no_grad():
            for name, p in policy.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed))
    train_adapter(1)
    backend = G.get_backend("vllm", policy, AutoTokenizer.from_pretrained(tiny_model_dir))
    merged = lambda: checksum(copy.deepcopy(policy).merge_and_unload())  # noqa: E731
    assert checksum(fake.LLM.instances[-1].model) == pytest.approx(merged(), abs=1e-6)
    assert merged() != pytest.approx(checksum(AutoModelForCausalLM.from_pretrained(tiny_model_dir)), abs=1e-6)
    train_adapter(2)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    backend.sync_weights(policy)
    assert len(fake.LLM.instances) == (1 if in_process else 2) and backend.in_place_syncs == int(in_process)
    assert checksum(fake.LLM.instances[-1].model) == pytest.approx(merged(), abs=1e-6)
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())   # the policy: unmerged, exact


def test_vllm_generation_is_refused_under_several_processes(tmp_path, tiny_model_dir, monkeypatch):
    """accelerate puts rank k on GPU k, but each rank's vLLM engine would start on the first visible GPU: refused
    before any model is loaded (an Accelerator test double reports two processes)."""
    import accelerate

    from pobench.errors import PobenchError

    class TwoProcesses:
        num_processes, is_fsdp2 = 2, False

        def __init__(self, **kwargs):
            pass

    monkeypatch.setattr(accelerate, "Accelerator", TwoProcesses)
    with pytest.raises(PobenchError, match="pool.backend=vllm runs in one process"):
        run_train(tmp_path / "r", tiny_model_dir, algo="onmcpo", **{**ONLINE, "pool": {**ONLINE["pool"], "backend": "vllm"}})


@pytest.mark.parametrize("lora_r", [0, 4])
def test_fresh_samples_are_scored_against_the_initial_policy(tmp_path, tiny_model_dir, monkeypatch, lora_r):
    """The reference of samples drawn after updates is the initial policy: a frozen copy of the initial weights
    (full fine-tuning) or the adapter-disabled policy (LoRA), never the policy being trained. Checked against the
    initial model scoring the same sequences in a fresh process-local copy, with the trained policy's own
    log-probs as the control that the two differ."""
    from transformers import AutoModelForCausalLM

    from pobench.engine import trainer as T
    from pobench.engine.logps import SequenceLogps

    seen = []
    real = T.SamplerContext.ensure_reference

    def recording(self, seqs):
        real(self, seqs)
        if self.step >= 1 and seqs:    # after at least one update
            with torch.no_grad():
                trained, _ = self.policy_logps(seqs)
            reference, _ = self.refcache.lookup_sequences(seqs)
            seen.append((list(seqs), reference.clone(), trained.clone()))

    monkeypatch.setattr(T.SamplerContext, "ensure_reference", recording)
    run_train(tmp_path / "run", tiny_model_dir, algo="onmcpo", algorithm={"num_candidates": 3},
              model={"lora_r": lora_r}, **{**ONLINE, "max_steps": 3, "lr": 1e-2})
    assert seen
    initial = SequenceLogps(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), 1024)
    for seqs, reference, trained in seen:
        want, _ = T.score_sequences(initial, seqs, 0, torch.device("cpu"), 8)
        torch.testing.assert_close(reference.float(), want.float(), rtol=1e-4, atol=1e-3)
        assert (trained.float() - want.float()).abs().max() > 1e-2   # the policy has moved: the check can fail


def test_online_runs_hold_their_fresh_samples_reference_once_and_not_the_reference_copys_load(tmp_path, tiny_model_dir,
                                                                                               monkeypatch):
    """Online DPO scores its fresh samples against the reference inside its steps: reference_s holds them beside
    the dataset pairs' (scored before step 1 and charged as DPO's are), within train_time_s. Loading the frozen
    reference copy at the first fresh sample (full fine-tuning) landed in step 1's time; it is setup, as loading the
    policy is, and as the reference model of the pass before step 1 is: kept out of the step, as reference_load_s."""
    from pobench.engine import trainer as T
    cache = tmp_path / "cache"
    dpo, _ = run_train(tmp_path / "dpo", tiny_model_dir, algo="dpo", cache=cache, **ONLINE)
    real, loads, skew = T.load_policy, [], [0.0]

    def slow_load(*args, **kwargs):   # the policy, then the reference copy, which takes 1000 s on the trainer's clock
        loads.append(1)
        if len(loads) > 1:
            skew[0] += 1000.0
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "load_policy", slow_load)
    monkeypatch.setattr(T, "time", types.SimpleNamespace(perf_counter=lambda: time.perf_counter() + skew[0]))
    online, _ = run_train(tmp_path / "online", tiny_model_dir, algo="online_dpo", cache=cache, **ONLINE)
    assert len(loads) == 2 and online["reference_load_s"] >= 1000
    assert online["train_time_s"] < 1000
    assert dpo["reference_load_s"] is None
    assert 0 < dpo["reference_s"] < online["reference_s"] < online["train_time_s"]


@pytest.mark.parametrize("pairing", ["best_worst", "kernel"])
def test_a_copy_of_the_chosen_sample_is_not_its_negative(pairing):
    """Two identical samples get identical scores; where every sample ties, online DPO's worst was the chosen's own
    copy (a pair with no gradient, counted as trained). Copies of the chosen now leave the candidates; a pool of
    copies alone still pairs, and sampler/identical_pair says so."""
    import types

    from pobench.data.tokenize import TokenizedPair
    from pobench.sampling.online import OnlinePool
    params = types.SimpleNamespace(include_dataset_chosen=False, pairing=pairing, kernel="sample", tau=1.0,
                                   kernel_score="reward", beta=0.1)
    sampler = OnlinePool(params, types.SimpleNamespace(seed=1))
    records = [TokenizedPair([1], [10], [20]), TokenizedPair([2], [10], [20])]
    sampler.pools[0] = [([[5, 6], [5, 6], [5, 6], [7]], [2.0, 2.0, 2.0, 2.0], 0.0),
                        ([[5, 6], [5, 6]], [1.0, 1.0], 0.0)]
    pairs, logged = sampler(records, _KernelContext(0, 0))
    assert pairs[0].chosen == [5, 6] and pairs[0].rejected == [7]
    assert pairs[1].chosen == pairs[1].rejected == [5, 6]
    assert logged["sampler/identical_pair"] == 0.5


def test_a_sample_rated_as_high_as_the_chosen_is_not_its_negative():
    """Samples are trained as generated, so one text can come in two token splits: two sequences, one answer. The
    reward model rates them alike (one score per distinct text), and a sample rated as high as the preferred one is
    no negative of it (as MC-PO's negatives: below_chosen), though the kernel's argmax would draw it (the policy rates
    the short split highest); where every other sample ties, they stay candidates."""
    import types

    from pobench.data.tokenize import TokenizedPair
    from pobench.sampling.online import OnlinePool
    params = types.SimpleNamespace(include_dataset_chosen=False, pairing="kernel", kernel="argmax", tau=1.0,
                                   kernel_score="reward", beta=0.1)
    sampler = OnlinePool(params, types.SimpleNamespace(seed=1))
    records = [TokenizedPair([1], [10], [20]), TokenizedPair([2], [10], [20])]
    sampler.pools[0] = [([[5, 6], [56], [7, 8, 9]], [2.0, 2.0, 1.0], 0.0),    # [5, 6] and [56]: one text, two splits
                        ([[5, 6], [56]], [2.0, 2.0], 0.0)]
    pairs, _ = sampler(records, _KernelContext(0, 0))
    assert (pairs[0].chosen, pairs[0].rejected) == ([5, 6], [7, 8, 9])
    assert (pairs[1].chosen, pairs[1].rejected) == ([5, 6], [56])


def test_samples_of_one_text_get_one_reward_score(monkeypatch):
    """A reward model scoring in batches can rate one text a few 1e-9 apart (padding): a refresh keeps the first
    score of each distinct text, the dataset's chosen's too, so that ties are ties."""
    import types

    from pobench.generation import Completion
    from pobench.sampling.online import OnlinePool
    import pobench.generation as G

    class Backend:   # test double: fixed samples, no model
        def generate(self, prompts, gen):
            return [[Completion("same", [5, 6], False), Completion("same", [56], False),
                     Completion("other", [7], False)] for _ in prompts]

    class Scorer:    # test double: a reward model whose batches round differently
        def score(self, prompts, texts):
            return [1.0 + 1e-9 * k for k, _ in enumerate(texts)]

    monkeypatch.setattr(G, "get_backend", lambda *a, **k: Backend())
    params = types.SimpleNamespace(include_dataset_chosen=True, pairing="best_worst", num_candidates=3,
                                   refresh_every=1)
    cfg = types.SimpleNamespace(seed=1, algorithm_name="online_dpo",
                                pool=types.SimpleNamespace(backend="hf", temperature=1.0, top_p=1.0, max_new_tokens=4,
                                                           batch_size=0),
                                model=types.SimpleNamespace(compile_decoding=False, top_p_method="sort"))
    sampler = OnlinePool(params, cfg)
    record = types.SimpleNamespace(prompt=[1])
    ctx = types.SimpleNamespace(step=0, max_steps=1, batch_at=lambda s: [record], batch_offset=0, model=None,
                                tokenizer=None, reward_scorer=Scorer, prompt_messages=lambda r: [],
                                chosen_text=lambda r: "same", sample_ids=lambda r, cs: [c.token_ids for c in cs])
    sampler._refresh(ctx)
    ids, scores, chosen = sampler.pools[0][0]
    assert scores == [1.0, 1.0, 1.0 + 2e-9] and chosen == 1.0


def test_the_online_kernel_leans_to_the_negative_the_policy_rates_above_the_reference():
    """OnMC-PO's kernel scores beta (log pi - log pi_ref) of each non-preferred sample: with argmax it draws the
    sample the policy likes most *relative to the reference* (a hard negative), not the one it likes most, nor the
    one it likes least; and softmax at a small tau leans the same way."""
    import types

    from pobench.data.tokenize import TokenizedPair
    from pobench.sampling.online import OnlinePool
    policy = {(30,): -1.0, (40,): -2.0, (50,): -3.0}       # the policy likes [30] most
    reference = {(30,): -0.5, (40,): -4.0, (50,): -3.0}    # but [40] most above the reference (+2.0)

    class Context(_KernelContext):
        def policy_logps(self, seqs):
            return torch.tensor([policy[tuple(c)] for _, c in seqs]), torch.ones(len(seqs), dtype=torch.long)

        def lookup_sequences(self, seqs, device=None):
            return torch.tensor([reference[tuple(c)] for _, c in seqs]), torch.ones(len(seqs), dtype=torch.long)

    record = TokenizedPair([1], [10], [20])
    for kernel, tau in (("argmax", 1.0), ("sample", 0.01)):
        params = types.SimpleNamespace(include_dataset_chosen=False, pairing="kernel", kernel=kernel, tau=tau,
                                       kernel_score="reward", beta=0.1)
        sampler = OnlinePool(params, types.SimpleNamespace(seed=1))
        sampler.pools[0] = [([[60], [30], [40], [50]], [5.0, 1.0, 1.0, 1.0], 0.0)]   # [60]: the preferred
        pairs, logged = sampler([record], Context(0, 0))
        assert (pairs[0].chosen, pairs[0].rejected) == ([60], [40]), kernel
