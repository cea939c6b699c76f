"""Evaluate one finished run folder: generate on the eval prompts, judge against a reference, write the results.

    policy (final checkpoint) -> outputs on the first eval.num_prompts eval prompts (eval decoding)
    reference outputs (sft: the reference policy's, cached and shared by every run of the suite | dataset | alpaca_eval)
    judge (auto | rm: | gold: | alpaca_eval:) -> per-prompt P(policy beats reference), order randomised per prompt
    metrics: win rate (SE, bootstrap CI), LC win rate, lengths, mean reward, KL(policy || reference) from samples
    -> eval.json, generations.jsonl (and model_outputs.json for the alpaca_eval set)

Under a multi-process launch (`pobench run --num-processes N`, or `accelerate launch`) every rank loads the trained
policy and the work is split by prompt (contiguous shards, pobench/engine/distributed.py): the policy's outputs, the
reference policy's missing outputs, the KL samples and their log-probs, and a reward-model or gold judge's scores;
the results are gathered in prompt order. An LLM judge (alpaca_eval:*) runs on the main process alone (its
annotation cache is one shared file). Only the main process writes: eval.json, generations.jsonl and the shared
reference-output cache. Generation is seeded per prompt (pobench/generation/hf.py), so the samples, and with them
the results, do not depend on the number of processes (up to float rounding of batched forwards).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import time
import types
from pathlib import Path

from pobench.errors import PobenchError
from pobench.data.records import records_digest
from pobench.eval.alpaca_set import EvalItem
from pobench.generation import SAMPLING_SCHEME, draw_settings

PREVIOUS_EVAL = "eval.previous.json"   # a run's last eval.json while a new evaluation is being written


# -- inputs -------------------------------------------------------------------------------------------------------

def results_root(run_dir: Path, suite: str) -> Path:
    """The results root of a run folder (<root>/<suite>/<algo>[/<grid point>]/seed<k>): the caches live there."""
    for parent in Path(run_dir).resolve().parents:
        if parent.name == suite:
            return parent.parent
    return Path(run_dir).resolve().parent


def load_run_config(run_dir: Path, overrides: dict | None = None, as_evaluated: bool = False):
    """The run's resolved config.yaml, with eval.* overrides (from --set / the eval options) on top. `as_evaluated`:
    with the eval section its last evaluation used (eval.json's `eval_config`; `pobench eval --set` may have changed
    it), so that what its stored answers were made with is compared, not what the run was configured with."""
    from pobench import config as C
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise PobenchError(f"{run_dir}: not a run folder (no config.yaml)")
    from pobench.paths import saved_config
    base = saved_config(C.read_yaml(path), run_dir)   # an older run's relative paths: from the folder it started in
    if as_evaluated:
        base = C.deep_merge(base, {"eval": evaluated_eval_config(run_dir)})
    merged = C.deep_merge(base, overrides or {})
    unknown = sorted(set(overrides or {}) - {"eval"})
    if unknown:
        raise PobenchError(f"pobench eval: only eval.* keys can be overridden, not '{unknown[0]}'")
    algorithm = merged.pop("algorithm", {})
    cfg = C._build(C.RunConfig, merged, "")
    cfg.algorithm = algorithm
    return cfg


def evaluated_eval_config(run_dir: Path) -> dict:
    """eval.json's `eval_config` ({} for an evaluation made before it was recorded, or none)."""
    path = Path(run_dir) / "eval.json"
    if not path.is_file():
        return {}
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("eval_config")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise PobenchError(f"{path}: not a valid eval.json ({e})") from None
    if recorded is None:
        return {}
    if not isinstance(recorded, dict):
        raise PobenchError(f"{path}: 'eval_config' must be an object of eval.* settings")
    return recorded


AUTO_JUDGE_NEEDS_HELD_OUT = ("eval.judge auto trains on the suite's pairs: it needs eval.eval_set held_out; name a "
                             "judge for the alpaca_eval set (--judge alpaca_eval:<config> or rm:<folder>)")
ALPACA_REFERENCE_NEEDS_SET = "eval.reference alpaca_eval needs eval.eval_set alpaca_eval (--eval-set alpaca_eval)"


def check_eval_config(cfg) -> None:
    """What the evaluation of `cfg` needs that can be checked without a model: the judge's spec, a gold reward's
    name, the eval set with its judge and reference, the eval and difficulty files, and an `rm:` judge's reward
    model as pool.reward_model's is checked (a folder, a bare relative name included, or a hub id: its config).
    `pobench run` checks before training, so that a typo costs seconds, not the training budget."""
    import re

    from pobench.eval.judges import check_judge_spec
    spec = str(cfg.eval.judge)
    checked = check_judge_spec(spec)
    kind, arg = checked if checked else (None, None)
    if kind == "gold":
        from pobench.rewards import GoldScorer
        GoldScorer(arg)   # an unknown name is an error naming the known ones
        if re.fullmatch(r"synthetic(-\d+)?", arg) and cfg.data.path != "synthetic":
            raise PobenchError(f"config key 'eval.judge': {spec} scores the synthetic suite's token language, not "
                               f"the answers of suite {cfg.suite}")
    if kind == "alpaca_eval":
        from pobench.eval.llm_judge import check_alpaca_eval_judge
        check_alpaca_eval_judge(arg)
    if cfg.eval.reference == "alpaca_eval" and cfg.eval.eval_set != "alpaca_eval":
        raise PobenchError(ALPACA_REFERENCE_NEEDS_SET)
    if cfg.eval.eval_set == "alpaca_eval":
        check_alpaca_eval_set(cfg.eval)
    if kind == "rm":   # last, as it reads the model's config (hub cache, or hub); the check pool.reward_model gets
        from pobench.rewards import check_reward_model
        check_reward_model(arg, "eval.judge", shown=spec)


def check_alpaca_eval_set(e) -> None:
    """The alpaca_eval set's settings (`e`: the eval section): each of these failed only once the answers were
    generated, after the training."""
    if e.judge == "auto":
        raise PobenchError(AUTO_JUDGE_NEEDS_HELD_OUT)
    if e.lc_difficulty_file and not Path(e.lc_difficulty_file).expanduser().is_file():
        raise PobenchError(f"config key 'eval.lc_difficulty_file': {e.lc_difficulty_file}: no such file "
                           f"(alpaca_eval's df_gamed.csv)")
    if e.lc_difficulty_file:
        from pobench.eval.metrics import check_difficulty_file
        check_difficulty_file(Path(e.lc_difficulty_file).expanduser())   # its columns, before any work
    if not e.eval_file:
        from huggingface_hub import try_to_load_from_cache

        from pobench.data.loading import hub_reachable
        from pobench.eval.alpaca_set import HUB_FILE, HUB_REPO
        cached = isinstance(try_to_load_from_cache(HUB_REPO, HUB_FILE, repo_type="dataset"), str)
        if not cached and not hub_reachable():   # (offline mode reads the hub cache)
            raise PobenchError(f"config key 'eval.eval_file': none given, and the hub the alpaca_eval set is read "
                               f"from then is not reachable; pass --eval-file with a local copy of {HUB_REPO}/{HUB_FILE}")
        return
    path = Path(e.eval_file).expanduser()
    if not path.is_file():
        raise PobenchError(f"config key 'eval.eval_file': {e.eval_file}: no such file")
    st = path.stat()
    items = eval_file_items(str(path), st.st_mtime_ns, st.st_size)
    used = items[:e.num_prompts] if e.num_prompts else items
    if not used:
        raise PobenchError(f"config key 'eval.eval_file': {e.eval_file}: no instructions")
    missing = next((it for it in used if it.reference_output is None), None)
    if e.reference != "sft" and missing:   # dataset and alpaca_eval both compare with the file's outputs
        raise PobenchError(f"config key 'eval.eval_file': {e.eval_file}: row {missing.index + 1} has no "
                           f"'output', which eval.reference {e.reference} compares the answers with")
    if uses_difficulty_file(e):
        from pobench.eval.alpaca_set import check_difficulty_reference
        check_difficulty_reference(list(used), len(items), e.eval_file)


@functools.lru_cache(maxsize=8)
def eval_file_items(path: str, mtime_ns: int, size: int) -> tuple[EvalItem, ...]:
    """The eval file's instructions, read once per file and version however many runs a command plans (reading it
    is the check of its form)."""
    from pobench.eval.alpaca_set import load_alpaca_eval
    items, _ = load_alpaca_eval(path)
    return tuple(items)


def uses_difficulty_file(e) -> bool:
    """Whether the LC win rate is alpaca_eval's GLM (`e`: the eval section): on the alpaca_eval set against the
    file's own outputs (reference dataset there is them too); against the sft reference the file is left unused."""
    return bool(e.lc_difficulty_file) and e.eval_set == "alpaca_eval" and e.reference != "sft"


def eval_items(cfg, run_dirs=(), doing: str = "pobench eval") -> tuple[list[EvalItem], str, object]:
    """(items, source, suite data or None): the suite's held-out records or AlpacaEval's instructions. The suite's
    records must be those `run_dirs` were trained on (their data.json): the held-out prompts, and the records the
    auto judge may train on, are chosen from them by position."""
    n = cfg.eval.num_prompts
    if cfg.eval.eval_set == "alpaca_eval":
        from pobench.eval.alpaca_set import check_difficulty_reference, load_alpaca_eval
        items, source = load_alpaca_eval(cfg.eval.eval_file)
        if uses_difficulty_file(cfg.eval):   # also read from the hub, which check_alpaca_eval_set does not read
            check_difficulty_reference(items[:n] if n else items, len(items), source)
        data = None
    else:
        from pobench.data import RECORDS_RULE, check_run_records, load_suite_data, run_records_rule
        # a run made by an older pobench (data.json's records_rule) is checked against the records those rules
        # chose, and evaluated on them; a comparison of runs made under two rules is on the current rule's
        rules = {run_dir: run_records_rule(run_dir) for run_dir in run_dirs}
        rule = next(iter(set(rules.values()))) if len(set(rules.values())) == 1 else RECORDS_RULE
        by_rule = {r: load_suite_data(cfg.data, cfg.seed, r) for r in sorted({*rules.values(), rule})}
        for run_dir in run_dirs:
            check_run_records(run_dir, by_rule[rules[run_dir]].report, doing)
        data = by_rule[rule]
        items = [EvalItem(r.prompt, r.chosen, r.id) for r in data.eval]
        source = data.report.get("eval_source", "")
    return (items[:n] if n else items), source, data


def evaluation_dtype(cfg, device) -> str:
    """The weights evaluation loads (model.dtype's values). On CUDA `auto` trained fp32 master weights under bf16
    autocast: evaluation loads bf16, the precision those forwards ran in, and a decode step, which reads every
    weight once per token, then moves half the bytes (the GPU figures in benchmarks/GPU.md are bf16 weights).
    Elsewhere the run's own setting."""
    import torch
    return "bfloat16" if cfg.model.dtype == "auto" and torch.device(device).type == "cuda" else cfg.model.dtype


def loaded_dtype(cfg, device) -> str:
    """The dtype the evaluation's weights were loaded in, resolved (eval.json's `weights_dtype`): model.dtype auto
    is float32 off CUDA, where evaluation_dtype keeps the setting's name, "auto", because the answer stores are keyed
    by it."""
    import torch

    from pobench.models import pick_dtype
    device = torch.device(device)
    return str(pick_dtype(evaluation_dtype(cfg, device), device)[0]).removeprefix("torch.")


def load_trained_policy(cfg, run_dir: Path, device):
    """(model, tokenizer, base path): the base model (+ LoRA adapter) with the final checkpoint's trainable
    weights copied in by name: full fine-tuning saves every weight, LoRA saves the adapter only."""
    import torch

    from pobench.engine.checkpoint import copy_weights, find_checkpoint
    from pobench.models import load_policy

    device = torch.device(device)
    checkpoint = find_checkpoint(run_dir)
    if checkpoint is None:
        raise PobenchError(f"{run_dir}: no checkpoint to evaluate (checkpoints/latest/state.json); finish the run first")
    model_cfg = types.SimpleNamespace(**{**vars(cfg.model), "gradient_checkpointing": False,
                                         "dtype": evaluation_dtype(cfg, device)})
    model, tokenizer, path = load_policy(model_cfg, device)
    copy_weights(checkpoint, model)
    return model.eval(), tokenizer, path


@contextlib.contextmanager
def reference_model(cfg, policy, device):
    """The reference policy: LoRA runs disable the adapter (no second copy), full fine-tuning loads the base."""
    import torch
    if cfg.model.lora_r > 0:
        with torch.no_grad(), policy.disable_adapter():
            yield policy
        return
    from pobench.models import load_policy
    model_cfg = types.SimpleNamespace(**{**vars(cfg.model), "lora_r": 0, "gradient_checkpointing": False,
                                         "dtype": evaluation_dtype(cfg, device)})
    ref, _, _ = load_policy(model_cfg, device)
    try:
        yield ref.eval()
    finally:
        del ref


def generation_config(cfg, n: int = 1, pure: bool = False):
    from pobench.generation import GenerationConfig
    e = cfg.eval
    return GenerationConfig(n=n, temperature=1.0 if pure else e.temperature, top_p=1.0 if pure else e.top_p,
                            max_new_tokens=e.max_new_tokens, seed=e.seed, batch_size=e.batch_size,
                            compile=cfg.model.compile_decoding, top_p_method=cfg.model.top_p_method)


def decoding_record(cfg) -> dict:
    """How evaluation generates, recorded with its results and the key of its reference answers' store. A compiled
    step or "reject" draws are added only where set, so stores made at the defaults keep their keys."""
    e = cfg.eval
    return {"backend": "transformers", "temperature": e.temperature, "top_p": e.top_p, "top_k": None,
            "max_new_tokens": e.max_new_tokens, "seed": e.seed, "seeding": SAMPLING_SCHEME, "batch_size": e.batch_size,
            "chat_template": cfg.model.chat_template, "max_prompt_length": cfg.train.max_prompt_length,
            **draw_settings(generation_config(cfg))}


def generate(model, tokenizer, prompt_ids, gen):
    from pobench.generation import get_backend
    return get_backend("transformers", model, tokenizer).generate(prompt_ids, gen)


# -- several processes --------------------------------------------------------------------------------------------

def launch_state(device):
    """accelerate's process state (rank, world size, this rank's device) under a launch of several processes; None
    in a single process, whose code path is then the one it always was."""
    from pobench.engine.distributed import collective_timeout, launched_world_size
    if launched_world_size() <= 1:
        return None
    from accelerate import PartialState
    return PartialState(cpu=device.type == "cpu", timeout=collective_timeout())


def map_prompts(fn, items: list, state) -> list:
    """fn over items (one result per item, in order): on every item here in one process, else each rank on its
    shard, gathered on every rank."""
    if state is None:
        return fn(list(items))
    from pobench.engine.distributed import map_sharded
    return map_sharded(fn, items, state)


def is_main(state) -> bool:
    return state is None or state.is_main_process


def shards_judge(spec: str) -> bool:
    """Reward-model and gold judges score each output on its own, so each rank scores its shard; an LLM judge (or
    one registered by a plugin) stays on the main process: alpaca_eval's annotation cache is one shared file."""
    return spec == "auto" or spec.partition(":")[0] in ("rm", "gold")


# -- reference outputs --------------------------------------------------------------------------------------------

def answers_context(cfg, backend, prompt_ids: list[list[int]]) -> dict:
    """How the answers of a store are computed beyond the model, the weights' dtype and the decoding (decoding_record),
    as far as it moves their tokens: part of the keys of the reference and policy answer stores. Each entry changes
    the kernels, hence the rounding of the logits, which moves a token only where it crosses a near-tie, but does
    move some: sdpa against eager attention gave 1 of 24 sampled answers another token (SmolLM2-135M, fp32, CPU,
    temperature 0.7, 64 tokens; greedy: none of 12), and bf16's coarser rounding on a GPU is expected to move more. So
    answers made on a GPU are never served to an evaluation on the CPU, or the reverse: the device type (with
    model.dtype auto also bf16 weights, which `weights` in the key says already), the decode path (pobench's
    static-cache decoder with CUDA graphs, or plain `generate`), the attention kernel and compiled decoder layers
    (model.compile; a compiled decode step is in decoding_record). Entries only where they differ from the CPU's
    plain sdpa path without model.compile, so the stores made there keep their keys; others (made on a GPU, with
    eager attention or compiled layers) are generated again once. On the CPU evaluation always takes the plain path
    (the static one gave the same greedy tokens there, measured)."""
    context = {}
    device = next(backend.model.parameters()).device.type
    if device != "cpu":
        context["device"] = device
    if backend.uses_fast_path(generation_config(cfg), prompt_ids):
        context["decoder"] = "static"
    if cfg.model.attn_implementation != "sdpa":
        context["attn_implementation"] = cfg.model.attn_implementation
    if cfg.model.compile:
        context["model_compile"] = True
    return context


def context_suffix(context: dict) -> str:
    return f"-{json.dumps(context, sort_keys=True)}" if context else ""


def answer_backend(model, tokenizer):
    """The generation backend of an answer store (one per model: its captured decoders are reused by every chunk)."""
    from pobench.generation import get_backend
    return get_backend("transformers", model, tokenizer)


def sft_reference_outputs(cfg, prompt_ids, ref_model, tokenizer, model_path: str, cache_dir: Path,
                          state=None) -> tuple[list[str], str]:
    """The reference policy's own outputs with the eval decoding, one JSON line per prompt in a store keyed by
    the model and the decoding: generated once and shared by every algorithm and seed of the suite. Under several
    processes the missing prompts are split across the ranks and the main process alone appends them."""
    from pobench.models import model_fingerprint
    from pobench.sampling.pools import PoolStore
    settings = json.dumps(decoding_record(cfg), sort_keys=True)
    weights = evaluation_dtype(cfg, next(ref_model.parameters()).device)   # (the run's model.dtype off CUDA)
    backend = answer_backend(ref_model, tokenizer)
    context = context_suffix(answers_context(cfg, backend, prompt_ids))
    key = hashlib.sha1(f"{model_fingerprint(model_path)}-{weights}-{settings}{context}".encode()).hexdigest()[:16]
    store = PoolStore(Path(cache_dir) / "eval_reference" / f"{key}.jsonl", fields={"output": str, "finished": bool})
    answers = stored_answers(store, prompt_ids, ref_model, tokenizer, generation_config(cfg), state, backend)
    return [a["output"] for a in answers], str(store.path)


EVAL_CHUNK_PROMPTS = 256   # prompts per process between two appends to an answer store (what a crash loses): one
                          # full decode batch on CUDA (generation.hf.MAX_BATCH_ROWS) at one sample per prompt


def stored_per_prompt(store, prompt_ids, compute, state=None) -> list[dict]:
    """Each prompt's entry from `store`, the missing ones computed (`compute(prompts)`: one dict per prompt) in
    chunks appended as they are made, so an evaluation stopped partway (a crash, a judge that failed after them)
    starts again where it stopped. Sampling is seeded per prompt, so chunking changes no sample. Under several
    processes each chunk is split across the ranks and the main process alone appends."""
    from pobench.sampling.pools import prompt_key
    todo = [p for p in dict.fromkeys(map(tuple, prompt_ids)) if prompt_key(list(p)) not in store.entries]
    if state is not None:   # the main process's list, should another run have appended to the store meanwhile
        from pobench.engine.distributed import gather_lists
        todo = gather_lists([todo] if state.is_main_process else [], state)[0]
    step = EVAL_CHUNK_PROMPTS * (state.num_processes if state is not None else 1)
    for start in range(0, len(todo), step):
        part = todo[start:start + step]
        computed = map_prompts(lambda share: compute([list(p) for p in share]), part, state)
        entries = [{"key": prompt_key(list(p)), **entry} for p, entry in zip(part, computed)]
        if is_main(state):
            store.add(entries)
        else:
            store.entries.update((e["key"], e) for e in entries)
        if state is not None:
            state.wait_for_everyone()
    return [store.entries[prompt_key(list(p))] for p in prompt_ids]


def stored_answers(store, prompt_ids, model, tokenizer, gen, state=None, backend=None) -> list[dict]:
    """Each prompt's answer ({"output", "finished", "tokens"}) from `store`, the missing ones generated
    (stored_per_prompt)."""
    backend = backend or answer_backend(model, tokenizer)   # one for every chunk: its captured decoders are reused

    def answer(share: list) -> list[dict]:
        return [{"output": o[0].text, "finished": o[0].finished, "tokens": len(o[0].token_ids)}
                for o in backend.generate(share, gen)]
    return stored_per_prompt(store, prompt_ids, answer, state)


def policy_answer_store(cfg, run_dir: Path, model, model_path: str, cache_dir: Path, context: dict | None = None):
    """Where a run's evaluation answers are kept: keyed by its final checkpoint (its state, and its weights file's
    size and time: a checkpoint is replaced whole, by a rename, never rewritten in place; reading tens of GB of a
    large model's weights for a key would cost more than it saves), the base model, the weights' dtype, the
    decoding and how the answers are computed (answers_context), so a changed checkpoint or decoding starts afresh."""
    from pobench.engine.checkpoint import find_checkpoint
    from pobench.models import model_fingerprint
    from pobench.sampling.pools import PoolStore
    checkpoint = find_checkpoint(run_dir)
    weights_file = (checkpoint / "trainable.safetensors").stat()
    digest = hashlib.sha1((checkpoint / "state.json").read_bytes())
    weights = evaluation_dtype(cfg, next(model.parameters()).device)
    digest.update(f"-{weights_file.st_size}-{weights_file.st_mtime_ns}-{model_fingerprint(model_path)}-{weights}-"
                  f"{json.dumps(decoding_record(cfg), sort_keys=True)}{context_suffix(context or {})}".encode())
    return PoolStore(Path(cache_dir) / "eval_policy" / f"{digest.hexdigest()[:16]}.jsonl",
                     fields={"output": str, "finished": bool, "tokens": int})


def reference_outputs(cfg, items, prompt_ids, ref_ctx, tokenizer, model_path, cache_dir,
                      state=None) -> tuple[list[str], dict]:
    kind = cfg.eval.reference
    if kind == "sft":
        with ref_ctx() as ref:
            outs, store = sft_reference_outputs(cfg, prompt_ids, ref, tokenizer, model_path, cache_dir, state)
        return outs, {"kind": "sft", "model": cfg.model.name_or_path, "store": store}
    missing = [it.id for it in items if it.reference_output is None]
    if missing:
        raise PobenchError(f"eval.reference {kind}: item {missing[0]} has no reference output")
    # the answers the set carries: reference dataset on the alpaca_eval set is its file's outputs too
    if kind == "alpaca_eval" and cfg.eval.eval_set != "alpaca_eval":
        raise PobenchError(ALPACA_REFERENCE_NEEDS_SET)
    if cfg.eval.eval_set == "held_out":
        return [it.reference_output for it in items], {"kind": kind, "source": "the held-out records' chosen responses"}
    from pobench.eval.alpaca_set import reference_generator
    # who wrote them, as the file says: AlpacaEval 2's are GPT-4-turbo's (gpt4_turbo), AlpacaEval 1's text-davinci-003's
    return [it.reference_output for it in items], {"kind": kind, "source": "the eval file's outputs",
                                                   "generator": reference_generator(items)}


# -- the judge ----------------------------------------------------------------------------------------------------

def run_training_indices(cfg, n_train: int, run_dir: Path) -> set[int]:
    """The training records the run drew (the trainer's seeded order replayed from its summary)."""
    from pobench.engine.trainer import data_order
    from pobench.report.collect import read_summary
    summary_path = Path(run_dir) / "train_summary.json"
    if not summary_path.is_file():
        raise PobenchError(f"{run_dir}: no train_summary.json; the run has not finished")
    summary = read_summary(summary_path)
    steps, seen = summary.get("steps") or 0, summary.get("records_seen") or 0
    if not steps:
        return set()
    return set(data_order(n_train, cfg.seed, steps, max(1, seen // steps)))


def check_auto_judge_records(cfg, n_train: int, global_batch: int) -> None:
    """Before training: `eval.judge auto` trains on the second half of the training records the run does not
    touch; a budget that touches all of them would fail only at evaluation, after the training was spent."""
    if cfg.eval.judge != "auto" or cfg.eval.eval_set != "held_out":
        return
    from pobench.engine.trainer import data_order
    steps = cfg.train.max_steps or max(1, n_train // global_batch)      # as the trainer reads it
    used = set(data_order(n_train, cfg.seed, steps, global_batch))
    half = n_train // 2
    if all(i in used for i in range(half, n_train)):
        raise PobenchError(f"eval.judge auto: {steps} steps of {global_batch} records train on every one of the "
                           f"{n_train - half} records the judge would train on (the second half of the training "
                           f"records); pass --judge rm:<folder> or gold:<name>, fewer train.max_steps, or --no-eval")


def auto_judge_model(cfg, suite_data, used: set[int], cache_dir: Path, progress=None) -> tuple[str, dict]:
    """A MiniLM Bradley-Terry reward model trained on the second half of the training records minus every
    record the run trained on, so the policy is never graded by a model of its own training pairs. Runs with
    the same records (every algorithm at one seed and budget) share it; it is cached under the results root."""
    from pobench.rewards.train import train_reward_model
    half = len(suite_data.train) // 2
    keep = [i for i in range(half, len(suite_data.train)) if i not in used]
    if not keep:
        raise PobenchError("eval.judge auto: the run trained on every record the judge could use; pass "
                           "--judge rm:<folder> (a reward model trained on other data) or gold:<name>")
    # keyed by the content of the records it trains and is checked on, not by the data's path (records_digest)
    content = [records_digest([suite_data.train[i] for i in keep]), records_digest(suite_data.eval)]
    fingerprint = hashlib.sha1(json.dumps([cfg.suite, content, cfg.eval.judge_rm_steps],
                                          sort_keys=True, default=str).encode()).hexdigest()[:12]
    out = Path(cache_dir) / "judges" / f"{cfg.suite}-minilm-{fingerprint}"
    info = {"train_pairs": len(keep), "train_records": f"second half of train ({half}..{len(suite_data.train)}) "
            f"minus the {len(used & set(range(half, len(suite_data.train))))} the run trained on",
            "disjoint_from_policy_pairs": True, "steps": cfg.eval.judge_rm_steps}
    if not (out / "config.json").is_file():
        from pobench.engine.lock import waiting_lock
        # the runs of one seed (dpo and simpo evaluated in parallel) share this judge: one trains, the others wait
        # and find it (side by side, the later finisher failed on the filled folder after its training was spent)
        with waiting_lock(out.with_name(out.name + ".lock")):
            if not (out / "config.json").is_file():
                if progress:
                    progress.console.print(f"eval judge auto: training a Bradley-Terry MiniLM reward model on "
                                           f"{len(keep)} pairs disjoint from the run's, cached in {out}",
                                           markup=False, highlight=False)
                train_reward_model([suite_data.train[i] for i in keep], suite_data.eval, "minilm", out,
                                   steps=cfg.eval.judge_rm_steps, seed=0, show_progress=False, max_length=128,
                                   extra_info={"suite": cfg.suite, "made_by": "eval.judge=auto", **info})
    return str(out), info


def build_run_judge(cfg, suite_data, run_dirs: list[Path], cache_dir: Path, device: str, progress=None):
    """The judge of `cfg.eval.judge`; `auto` is trained on none of the records that any of `run_dirs` trained on
    (one run for its evaluation, two for a head-to-head comparison)."""
    from pobench.eval.judges import build_judge, rm_judge
    from pobench.rewards import reward_model_name
    spec = cfg.eval.judge
    if spec == "auto":
        if suite_data is None:
            raise PobenchError(AUTO_JUDGE_NEEDS_HELD_OUT)
        used = set().union(*(run_training_indices(cfg, len(suite_data.train), d) for d in run_dirs))
        path, info = auto_judge_model(cfg, suite_data, used, cache_dir, progress)
        judge = rm_judge(path, {"spec": "auto", **info})
        judge.name = reward_model_name(path, cache_dir)   # not its path: runs judged by it must name it alike
        return judge
    return build_judge(spec, cache_dir=cache_dir, judge_model=cfg.eval.judge_model, device=device, seed=cfg.eval.seed,
                       judge_decoder=cfg.eval.judge_decoder)


def judge_rows(judge, prompts, policy: list[str], reference: list[str], seed: int, state=None,
               both_orders: bool = False) -> list[dict]:
    """judge_against_reference, each rank judging its shard of the prompts where `state` is given."""
    from pobench.eval.judges import judge_against_reference
    if state is None:
        return judge_against_reference(judge, prompts, policy, reference, seed, both_orders)
    return map_prompts(lambda idx: judge_against_reference(judge, [prompts[i] for i in idx], [policy[i] for i in idx],
                                                           [reference[i] for i in idx], seed, both_orders),
                       list(range(len(prompts))), state)


def judge_agreement(judge, suite_data, n: int, seed: int, state=None, both_orders: bool = False) -> dict | None:
    """How often the judge prefers the dataset's chosen answer to its rejected one on the first n held-out pairs
    (ties half): a reading of its quality on this suite, for any judge, beside its win rates."""
    if n < 1 or suite_data is None or not suite_data.eval:
        return None
    records = suite_data.eval[:n]
    rows = judge_rows(judge, [r.prompt for r in records], [r.chosen for r in records],
                      [r.rejected for r in records], seed, state, both_orders)
    prefs = [r["preference"] for r in rows if r["preference"] is not None]
    if not prefs:
        return None
    agree = [1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0 for p in prefs]
    return {"agreement": sum(agree) / len(agree), "pairs": len(agree), "mean_preference": sum(prefs) / len(prefs)}


# -- KL -----------------------------------------------------------------------------------------------------------

def sample_logps(model, seqs, pad_id: int, device, chunk: int) -> list[float]:
    from pobench.engine.logps import SequenceLogps
    from pobench.engine.trainer import score_sequences
    sums, _ = score_sequences(SequenceLogps(model, chunk), seqs, pad_id, device, 8)
    return sums.tolist()


def kl_store(cfg, answers):
    """Where a run's KL samples' log-probs are kept, one entry per prompt: keyed by the policy's answer store's key
    (`answers`: the checkpoint, the models, the weights' dtype, the eval decoding and how answers are computed; the
    reference policy is the base model or the policy without its adapter, named by these) and the KL's own settings."""
    from pobench.sampling.pools import PoolStore
    settings = json.dumps({"kl_samples": cfg.eval.kl_samples, "logps_chunk": cfg.train.logps_chunk}, sort_keys=True)
    key = hashlib.sha1(f"{answers.path.stem}-{settings}".encode()).hexdigest()[:16]
    return PoolStore(answers.path.parent.parent / "eval_kl" / f"{key}.jsonl", fields={"logps": list})


def estimate_kl(cfg, policy, tokenizer, prompt_ids, ref_ctx, device, store, state=None) -> dict | None:
    """KL(policy || reference) from eval.kl_samples pure samples per prompt (temperature 1, top_p 1: y ~ pi), their
    log-probs kept in `store` (kl_store) as they are made, chunk by chunk (stored_per_prompt): an evaluation
    stopped after them, or one with another judge, draws none again. Under several processes each rank samples and
    scores its shard of the prompts."""
    from pobench.eval.metrics import kl_estimate
    if cfg.eval.kl_samples < 1:
        return None
    pad = tokenizer.pad_token_id

    def logps(share: list) -> list[dict]:
        """Per prompt, [policy, reference] log-probs of each of its non-empty samples."""
        outs = generate(policy, tokenizer, share, generation_config(cfg, n=cfg.eval.kl_samples, pure=True))
        seqs = [(p, c.token_ids) for p, row in zip(share, outs) for c in row if c.token_ids]
        if not seqs:
            return [{"logps": []} for _ in share]
        pol = sample_logps(policy, seqs, pad, device, cfg.train.logps_chunk)
        with ref_ctx() as ref:   # once per chunk: its memory is freed before the next chunk's samples are drawn
            refl = sample_logps(ref, seqs, pad, device, cfg.train.logps_chunk)
        pairs, out = iter(zip(pol, refl)), []
        for row in outs:
            out.append({"logps": [list(next(pairs)) for c in row if c.token_ids]})
        return out

    pairs = [pair for entry in stored_per_prompt(store, prompt_ids, logps, state) for pair in entry["logps"]]
    if not pairs:
        return None
    return {**kl_estimate([a for a, _ in pairs], [b for _, b in pairs]), "kl_decoding": "temperature 1, top_p 1",
            "kl_max_new_tokens": cfg.eval.max_new_tokens}


# -- the whole evaluation -----------------------------------------------------------------------------------------

def held_out_block(run_dir: Path) -> dict | None:
    """The held-out preference-pair metrics `pobench run` measured (train_summary.json), kept in eval.json."""
    from pobench.report.collect import read_summary
    path = Path(run_dir) / "train_summary.json"
    if not path.is_file():
        return None
    s = read_summary(path)
    return {"final": s.get("held_out_final"), "initial": s.get("held_out_initial"), "pairs": s.get("eval_pairs")}


def versions(device=None) -> dict:
    """Software versions, and the device that computed the results (its GPU's name on CUDA): env.json records
    the training's, and an evaluation may run elsewhere (pobench eval --device, another machine)."""
    from pobench.environment import environment_info
    info = environment_info()
    out = {"pobench": info["pobench"], "git_commit": info["git_commit"], "python": info["python"], **info["packages"]}
    if device is not None:
        import torch
        device = torch.device(device)
        out["device"] = device.type if device.type == "cpu" else str(device)   # (a launch's rank is "cpu:0")
        if device.type == "cuda":
            out["gpu"] = torch.cuda.get_device_name(device)
    return out


def generated_with(context: dict, backend) -> dict:
    """eval.json's record of how the policy's answers were computed, beside decoding_record (the configured settings,
    batch_size 0 = auto): the decode path and the rows per forward that this evaluation's generation used ([]
    where every answer came from the answer store, made earlier under the same key)."""
    return {"decoder": context.get("decoder", "plain"), "batch_size_used": sorted(backend.batch_rows_used)}


def length_controlled(cfg, prefs: list[float], policy_out: list[str], ref_out: list[str], indices: list) -> dict:
    """The LC win rate: alpaca_eval's `length_controlled_v1` GLM against the eval file's reference outputs, else the
    length-only GLM. That GLM's instruction difficulties and gamed baselines were measured against GPT-4-turbo's
    outputs, so against any other reference they would misplace the policy: the sft reference's answers leave the
    file unused (lc_note), a file whose outputs are another model's is refused (check_difficulty_reference, when
    the eval items are read)."""
    from pobench.eval import metrics as M
    e = cfg.eval
    if uses_difficulty_file(e):
        return M.alpaca_eval_lc_win_rate(prefs, policy_out, ref_out, indices, e.lc_difficulty_file)
    lc = M.length_controlled_win_rate(prefs, [len(o) for o in policy_out], [len(o) for o in ref_out])
    if e.lc_difficulty_file and e.eval_set == "alpaca_eval":
        unused = (f"eval.lc_difficulty_file unused: alpaca_eval's GLM holds the difficulty of each instruction against "
                  f"its own reference outputs, and eval.reference is {e.reference}")
        lc["lc_note"] = "; ".join(filter(None, [lc.get("lc_note"), unused]))
    return lc


def order_agreement(rows: list[dict], judged: list[int]) -> dict:
    """Judged in both orders (eval.judge_both_orders): the share of prompts whose two verdicts name the same winner
    (a tie in either counts as half): 1 for a judge blind to the order, near 0 for one that always picks a side."""
    orders = [rows[i]["preference_orders"] for i in judged if rows[i].get("preference_orders")]
    if not orders:
        return {}
    side = lambda p: 0.5 if p == 0.5 else float(p > 0.5)   # noqa: E731
    agree = [1.0 - abs(side(a) - side(b)) for a, b in orders]
    return {"order_agreement": sum(agree) / len(agree)}


def summarize(cfg, rows: list[dict], policy_out: list[str], ref_out: list[str], items) -> dict:
    from pobench.eval import metrics as M
    judged = [i for i, r in enumerate(rows) if r["preference"] is not None]
    if not judged:
        raise PobenchError("the judge gave no verdict on any prompt")
    prefs = [rows[i]["preference"] for i in judged]
    out = M.win_rate(prefs, cfg.eval.bootstrap, cfg.eval.seed)
    pol_len = [len(policy_out[i]) for i in judged]
    ref_len = [len(ref_out[i]) for i in judged]
    lc = length_controlled(cfg, prefs, [policy_out[i] for i in judged], [ref_out[i] for i in judged],
                           [items[i].index for i in judged])
    scores = [rows[i]["scores"] for i in judged if rows[i]["scores"]]
    return {**out, **lc, "n_unjudged": len(rows) - len(judged),
            # a policy that has not moved from the reference answers as it does: its win rate is 0.5 by construction
            "identical_to_reference": sum(policy_out[i] == ref_out[i] for i in judged),
            # each prompt is judged in one order, a seeded coin per prompt: how balanced the coins came out, for a
            # judge with a position bias (an order-blind reward model is unaffected)
            "policy_first_share": sum(bool(rows[i]["policy_first"]) for i in judged) / len(judged),
            **order_agreement(rows, judged),
            "avg_length": sum(pol_len) / len(pol_len), "reference_avg_length": sum(ref_len) / len(ref_len),
            "length_unit": "characters",
            "reward_mean": M.mean_or_none([s["policy"] for s in scores]),
            "reference_reward_mean": M.mean_or_none([s["reference"] for s in scores])}


def evaluate_run(run_dir: Path, cache_dir: Path | None = None, overrides: dict | None = None, progress=None,
                 device: str | None = None) -> dict | None:
    """Evaluate a finished run folder; writes eval.json and generations.jsonl there and returns eval.json. Under a
    launch of several processes every rank must call it (the work is split across them, see the module docstring);
    the main process writes and returns eval.json, the others return None."""
    from pobench.data.tokenize import ChatFormatter
    from pobench.engine.io import atomic_write_json, atomic_write_text, json_text
    from pobench.eval.alpaca_set import model_outputs
    from pobench.models import pick_device

    started = time.time()
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir, overrides)
    dev = pick_device(device or cfg.model.device)
    state = launch_state(dev)
    if state is not None:
        state.wait_for_everyone()   # the main process wrote the final checkpoint and train_summary.json
        if dev.type == state.device.type:
            dev = state.device      # this rank's GPU
    if not (run_dir / "train_summary.json").is_file():
        raise PobenchError(f"{run_dir}: the run has not finished (no train_summary.json); finish it with "
                           f"pobench run --resume first")
    held_out_block(run_dir)   # a damaged summary is named now, before the answers are generated
    cache_dir = Path(cache_dir) if cache_dir else results_root(run_dir, cfg.suite) / ".cache"
    items, source, suite_data = eval_items(cfg, [run_dir])
    if not items:
        raise PobenchError(f"{run_dir}: the eval set {cfg.eval.eval_set} has no prompts")
    policy, tokenizer, model_path = load_trained_policy(cfg, run_dir, dev)
    formatter = ChatFormatter(tokenizer, cfg.model.chat_template)
    prompt_ids = [formatter.encode(formatter.prompt_text(it.prompt))[-cfg.train.max_prompt_length:] for it in items]
    task = progress.add_task(f"eval {cfg.algorithm_name} seed{cfg.seed}", total=None) if progress else None

    backend = answer_backend(policy, tokenizer)
    context = answers_context(cfg, backend, prompt_ids)
    answer_store = policy_answer_store(cfg, run_dir, policy, model_path, cache_dir, context)
    answers = stored_answers(answer_store, prompt_ids, policy, tokenizer, generation_config(cfg), state, backend)
    generation = generated_with(context, backend)
    del backend   # it holds the policy (and on CUDA its captured decoders): freed below, before the judge loads
    policy_out = [a["output"] for a in answers]
    ref_ctx = lambda: reference_model(cfg, policy, dev)  # noqa: E731  (entered once per use: memory is freed between)
    ref_out, reference = reference_outputs(cfg, items, prompt_ids, ref_ctx, tokenizer, model_path, cache_dir, state)
    kl = estimate_kl(cfg, policy, tokenizer, prompt_ids, ref_ctx, dev, kl_store(cfg, answer_store), state)
    del policy
    judge_state = state if shards_judge(cfg.eval.judge) else None   # None: the main process judges alone
    if state is not None and judge_state is None and not state.is_main_process:
        return None
    if judge_state is None:
        judge = build_run_judge(cfg, suite_data, [run_dir], cache_dir, str(dev), progress)
    else:   # the main process trains an auto judge's reward model (or finds it cached); the others then load it
        from pobench.engine.distributed import main_process_first
        judge = main_process_first(lambda: build_run_judge(cfg, suite_data, [run_dir], cache_dir, str(dev),
                                                           progress if state.is_main_process else None), state)
    prompts = [it.prompt for it in items]
    rows = judge_rows(judge, prompts, policy_out, ref_out, cfg.eval.seed, judge_state, cfg.eval.judge_both_orders)
    judge_info = judge.describe() if is_main(state) else None
    check = judge_agreement(judge, suite_data, cfg.eval.judge_check_pairs, cfg.eval.seed, judge_state,
                            cfg.eval.judge_both_orders)
    # an rm: judge's rm_info.json accuracy was measured on the pairs it was trained beside, maybe another suite's
    # (rm:rm_uf judging suite myhh showed myuf's 1.000): on the held-out set it is measured on this run's held-out
    # pairs instead, which costs one score per answer of them
    own = judge_agreement(judge, suite_data, len(suite_data.eval), cfg.eval.seed, judge_state) \
        if cfg.eval.judge.startswith("rm:") and suite_data is not None else None
    if not is_main(state):
        return None
    if check:
        judge_info["held_out_agreement"] = check
    if own:
        judge_info["held_out_accuracy"] = own["agreement"]
        judge_info["held_out_accuracy_on"] = {"suite": cfg.suite, "source": source, "pairs": own["pairs"],
                                              "measured_by": "pobench eval"}
    if judge_info.get("held_out_accuracy_on"):   # the auto judge's are this run's too: it is measured on them
        judge_info["held_out_accuracy_on"]["run_held_out"] = bool(own) or cfg.eval.judge == "auto"
    result = {
        "eval_set": cfg.eval.eval_set, "eval_source": source, "n_prompts": len(items),
        "decoding": {**decoding_record(cfg), **generation},
        "weights_dtype": loaded_dtype(cfg, dev),
        "reference": reference, "judge": judge_info,
        # the eval section as this evaluation resolved it (config.yaml keeps the run's; --set/--judge change this)
        "eval_config": dataclasses.asdict(cfg.eval),
        **summarize(cfg, rows, policy_out, ref_out, items),
        "kl": kl["kl"] if kl else None, "kl_se": kl["kl_se"] if kl else None, "kl_info": kl,
        "held_out": held_out_block(run_dir), "suite": cfg.suite, "algorithm": cfg.algorithm_name, "seed": cfg.seed,
        "eval_time_s": None, "versions": versions(dev),
    }
    judge_name = result["judge"]["name"]
    lines = [json_text({"index": i, "id": it.id, "prompt": it.prompt, "output": p, "reference_output": r,
                        "preference": row["preference"], "policy_first": row["policy_first"],
                        **({"preference_orders": row["preference_orders"]} if "preference_orders" in row else {}),
                        "scores": row["scores"], "finished": o["finished"], "output_tokens": o["tokens"],
                        "judge": judge_name, "judge_extra": row["judge_extra"]}, ensure_ascii=False)
             for i, (it, p, r, row, o) in enumerate(zip(items, policy_out, ref_out, rows, answers))]
    # eval.json names the judge and settings that generations.jsonl was judged under: the old one steps aside first,
    # so a crash before the new one is written leaves the run unevaluated (its last result kept beside it), never
    # new generations under the old result
    previous = run_dir / "eval.json"
    if previous.exists():
        os.replace(previous, run_dir / PREVIOUS_EVAL)
    atomic_write_text(run_dir / "generations.jsonl", "\n".join(lines) + "\n")
    if cfg.eval.eval_set == "alpaca_eval":
        generator = f"pobench-{cfg.suite}-{cfg.algorithm_name}-seed{cfg.seed}"
        atomic_write_json(run_dir / "model_outputs.json", model_outputs(items, policy_out, generator))
        result["model_outputs"] = str(run_dir / "model_outputs.json")
    result["eval_time_s"] = round(time.time() - started, 1)
    atomic_write_json(run_dir / "eval.json", result)
    (run_dir / PREVIOUS_EVAL).unlink(missing_ok=True)
    if progress and task is not None:
        progress.remove_task(task)
    return result
