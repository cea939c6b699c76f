"""Candidate pools: N completions per training prompt from the reference policy, scored by the suite's
reward model, generated once and stored on disk, so every algorithm of a comparison sees the same pool.

Records that carry their own scored pool (raw UltraFeedback, the on-policy schema) use it (`pool.source:
auto`). Otherwise prompts are sampled with SimPO's on-policy recipe (temperature 0.8, top_p 0.95) and scored
by `pool.reward_model`; `auto` trains a Bradley-Terry reward model on the MiniLM encoder once per suite, on the
first half of the training records, and caches it (the eval judge `auto` trains on the second half: an algorithm
whose pairs this model labels, RSO or OnMC-PO, is never graded by a sibling of its own labeller). The store is keyed by the policy's fingerprint, the
generation settings and the reward model; an entry is one JSON line per prompt, appended as it is made, so an
interrupted generation resumes where it stopped. The same reward model scores each record's chosen answer once,
stored beside the pool (score_chosen): MC-PO's negatives are the candidates rated below it.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from pobench import faults
from pobench.data.records import PreferenceRecord, records_digest
from pobench.errors import PobenchError
from pobench.generation import SAMPLING_SCHEME, draw_settings


def prompt_key(prompt_ids: list[int]) -> str:
    return hashlib.sha1(",".join(map(str, prompt_ids)).encode()).hexdigest()


POOL_FIELDS = {"candidates": list, "scores": list}


class PoolStore:
    """A JSON-lines store of one entry per prompt key, first entry wins. `fields` are the keys (and their types)
    every entry of this store has: a pool's candidates and scores by default; another store (the evaluation's
    reference answers) names its own."""

    def __init__(self, path: Path, fields: dict[str, type] = POOL_FIELDS):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from an interrupted write: regenerate that prompt
                if not (isinstance(entry, dict) and isinstance(entry.get("key"), str)
                        and all(isinstance(entry.get(name), kind) for name, kind in fields.items())):
                    continue  # not an entry this code wrote (a cache is rebuilt, never trusted): regenerate
                self.entries.setdefault(entry["key"], entry)  # first wins, as in add()

    def add(self, entries: list[dict]) -> None:
        """Append entries for prompts not stored yet: the first pool made for a prompt is the one every run uses."""
        from pobench.engine.io import append_line

        self.path.parent.mkdir(parents=True, exist_ok=True)
        for e in entries:  # one write per line: runs sharing the store cannot interleave inside a line
            if e["key"] not in self.entries:
                self.entries[e["key"]] = e
                append_line(self.path, json.dumps(e), "pool_append")


def has_own_pool(record: PreferenceRecord) -> bool:
    return bool(record.candidates) and record.scores is not None


def check_dataset_pools(cfg, sampler, data) -> None:
    """`pool.source: dataset` for a sampler that draws from pools, on data that carries none: every pool would be
    the dataset's rejected alone, and MC-PO would train as DPO under its own name."""
    if cfg.pool.source == "dataset" and sampler.needs_candidates and not any(r.candidates for r in data.train):
        raise PobenchError(f"{cfg.algorithm_name}: pool.source=dataset, but {data.report['train_source']} carries "
                           f"no candidate pools; use pool.source=generated or auto, or data with pools")


def uses_dataset_pools(cfg, records) -> bool:
    """Whether a run's pools are its records' own (pool.source dataset, or auto with every record scored) rather
    than generated."""
    return cfg.pool.source == "dataset" or (cfg.pool.source == "auto" and all(has_own_pool(r) for r in records))


def pool_size_setting(cfg, data) -> str:
    """The setting that gives a run's prompts more candidates: pool.num_samples only where the pools are generated
    (a dataset's own pools ignore it)."""
    if not uses_dataset_pools(cfg, data.train):
        return "pool.num_samples"
    own = "data.synthetic.num_candidates" if getattr(cfg.data, "path", None) == "synthetic" else "the dataset's pools"
    return f"{own} (these pools come with the data; pool.source=generated makes pool.num_samples instead)"


def candidates_per_prompt(cfg, data) -> int:
    """The most candidates a prompt's pool will hold: the records' own or the pool.num_samples generated."""
    if uses_dataset_pools(cfg, data.train):
        return max((len(r.candidates) for r in data.train), default=0)
    return cfg.pool.num_samples


def auto_reward_model(cfg, suite_data, cache_dir: Path, progress=None) -> str:
    """`pool.reward_model: auto` -> a MiniLM Bradley-Terry reward model trained once per suite and data."""
    spec = cfg.pool.reward_model
    if spec != "auto":
        return spec
    half = len(suite_data.train) // 2
    records = [0, half]   # the first half: the eval judge `auto` trains on the second (eval/runner.py)
    # keyed by content, not by the data's path: see records_digest
    content = [records_digest(suite_data.train[:half]), records_digest(suite_data.eval)]
    fingerprint = hashlib.sha1(json.dumps([cfg.suite, content, cfg.pool.rm_steps, records],
                                          sort_keys=True, default=str).encode()).hexdigest()[:12]
    out = Path(cache_dir) / "reward_models" / f"{cfg.suite}-minilm-{fingerprint}"
    if (out / "config.json").is_file():
        return str(out)
    from pobench.engine.lock import waiting_lock
    from pobench.rewards.train import train_reward_model

    # runs in parallel (mcpo and rso of one suite) take turns: one trains, the others find its folder (side by side,
    # the later finisher's move onto the filled folder failed, ENOTEMPTY, and ended its run)
    with waiting_lock(out.with_name(out.name + ".lock")):
        if not (out / "config.json").is_file():
            if progress:
                progress.console.print(f"pool.reward_model auto: training a Bradley-Terry MiniLM reward model on "
                                       f"{half} pairs (first half of train), cached in {out}")
            train_reward_model(suite_data.train[:half], suite_data.eval, "minilm", out, steps=cfg.pool.rm_steps,
                               seed=0, show_progress=False, max_length=128,
                               extra_info={"suite": cfg.suite, "train_records_range": records,
                                           "made_by": "pool.reward_model=auto"})
    return str(out)


def pool_generation_config(cfg):
    """How a run's pools are generated (store_path keys the store by it)."""
    from pobench.generation import GenerationConfig
    return GenerationConfig(n=cfg.pool.num_samples, temperature=cfg.pool.temperature, top_p=cfg.pool.top_p,
                            max_new_tokens=cfg.pool.max_new_tokens, seed=cfg.pool.seed, batch_size=cfg.pool.batch_size,
                            compile=cfg.model.compile_decoding, top_p_method=cfg.model.top_p_method)


def store_path(cache_dir: Path, model_fingerprint: str, cfg, rm_spec: str) -> Path:
    settings = {k: getattr(cfg.pool, k) for k in ("num_samples", "temperature", "top_p", "max_new_tokens", "seed")}
    # "seeding": how seeds become draws (pobench.generation.SAMPLING_SCHEME); pools drawn another way must not mix
    # with these in one store
    settings.update(rm=rm_spec, template=cfg.model.chat_template, max_prompt=cfg.train.max_prompt_length,
                    seeding=SAMPLING_SCHEME)
    if cfg.pool.backend != "transformers":  # other backends draw other samples (the default keeps its old keys)
        settings["backend"] = cfg.pool.backend
    if cfg.pool.backend == "vllm":   # its seeds were by position in a call before (vllm_backend.per_prompt_sampling)
        settings["vllm_seeds"] = "per prompt"
    if cfg.model.dtype != "auto":   # weights in another precision sample other draws (auto keeps its old keys)
        settings["dtype"] = cfg.model.dtype
    if cfg.pool.backend == "transformers":   # compiled steps, "reject" draws (empty by default; vLLM ignores both)
        settings.update(draw_settings(pool_generation_config(cfg)))
    if Path(rm_spec).expanduser().is_dir():   # a reward-model folder of the user's: retrained in place, it scores anew
        from pobench.models import model_fingerprint as fingerprint   # not the policy's, the parameter
        settings["rm_weights"] = fingerprint(str(Path(rm_spec).expanduser()))
        # keyed by its weights (the resolved folder and its files), not by how the path is spelled: `./my_rm`, which
        # runs stored before config paths were absolute, and `/abs/my_rm` are one folder and draw one pool. The auto
        # reward model ("auto:reward_models/..."), a hub id and gold:<name> keep their keys
        settings["rm"] = "a folder (rm_weights)"
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / "pools" / f"{model_fingerprint}-{key}.jsonl"


def generate_pools(records: list[PreferenceRecord], prompt_ids: list[list[int]], model, tokenizer, cfg, store: PoolStore,
                   scorer, progress=None, processes: int = 1) -> None:
    """Generate and score the pools of `records` missing from `store` (chunks of prompts, appended as made).
    `processes`: how many make their shares at once, so that each pool's recorded seconds add up to wall time."""
    from pobench.generation import get_backend, rows_per_call

    seen, unique = set(), []
    for r, p in zip(records, prompt_ids):
        if prompt_key(p) not in seen:
            seen.add(prompt_key(p))
            unique.append((r, p))
    if all(prompt_key(p) in store.entries for _, p in unique):
        return
    backend = get_backend(cfg.pool.backend, model, tokenizer)
    gen = pool_generation_config(cfg)
    # A call's prompts are appended to the store together: one decode batch of prompts per call, so a crash loses
    # at most one batch. Chunks are cut from the full prompt list, not from the missing prompts, so a chunk that a
    # crash left half-stored is made again whole, in the batch the uninterrupted run used, and only its missing
    # prompts are added.
    chunk = max(1, rows_per_call(backend, [p for _, p in unique], gen) // cfg.pool.num_samples)
    chunks = [unique[i:i + chunk] for i in range(0, len(unique), chunk)]
    chunks = [part for part in chunks if any(prompt_key(p) not in store.entries for _, p in part)]
    task = progress.add_task(f"candidate pools ({cfg.pool.num_samples}/prompt)",
                             total=sum(map(len, chunks))) if progress else None
    for part in chunks:
        started = time.perf_counter()
        completions = backend.generate([p for _, p in part], gen)
        entries = []
        for (record, ids), outs in zip(part, completions):
            texts = [c.text for c in outs]
            scores = scorer.score([record.prompt] * len(texts), texts)
            entries.append({"key": prompt_key(ids), "record": record.id, "candidates": texts,
                            "scores": [float(s) for s in scores], "finished": [c.finished for c in outs]})
        # what the pools cost in wall time, stored with them: every run that draws from them is charged it
        # (pool_seconds), not only the one that happened to make them; ranks making their shares side by side
        # each count a share of the wall time
        for entry in entries:
            entry["seconds"] = round((time.perf_counter() - started) / len(entries) / processes, 4)
        store.add(entries)
        faults.kill_point("pool")
        if progress:
            progress.advance(task, len(part))
    if progress:
        progress.remove_task(task)


CHOSEN_FIELDS = {"score": float}


def chosen_store_path(pool_path: Path) -> Path:
    """Where the dataset's chosen answers are scored by a pool's reward model: under the pool's key, in `chosen/`
    beside it (so that the pools' folder holds pools alone). Apart from the pool's entries, which are one per prompt:
    records that share a prompt can have other chosen answers, and a pool stored before the chosen were scored keeps
    its candidates (its chosen are scored on first use)."""
    return pool_path.parent / "chosen" / pool_path.name


def chosen_key(record: PreferenceRecord) -> str:
    """What the reward model scores: the prompt's messages and the chosen's text."""
    return hashlib.sha1(json.dumps([record.prompt, record.chosen], sort_keys=True).encode()).hexdigest()


def score_chosen(path: Path, records: list[PreferenceRecord], rm_spec: str) -> list[float]:
    """Each record's chosen answer scored by the pool's reward model as its candidates are (so that MC-PO can tell
    which candidates rate below it), scored once and stored at `path` (chosen_store_path): every later run and
    seed reads the same scores. Under a lock, so that runs side by side neither score twice nor keep scores of
    another batching than the stored ones."""
    from pobench.engine.lock import waiting_lock
    from pobench.rewards import get_scorer

    keys = [chosen_key(r) for r in records]
    store = PoolStore(path, CHOSEN_FIELDS)
    if any(k not in store.entries for k in keys):
        with waiting_lock(path.with_name(path.name + ".lock")):
            store = PoolStore(path, CHOSEN_FIELDS)   # with what another run stored while this one waited
            todo = {k: r for k, r in zip(keys, records) if k not in store.entries}
            if todo:
                scores = get_scorer(rm_spec).score([r.prompt for r in todo.values()], [r.chosen for r in todo.values()])
                store.add([{"key": k, "record": r.id, "score": float(s)} for (k, r), s in zip(todo.items(), scores)])
    return [store.entries[k]["score"] for k in keys]


def pool_seconds(store: PoolStore, prompts: list[list[int]]) -> float | None:
    """Generation and scoring wall time of the pools of `prompts` (each prompt once), wherever and whenever they were
    made; None where a pool's time was not recorded (a store older than the record)."""
    seconds = [store.entries[key].get("seconds") for key in dict.fromkeys(map(prompt_key, prompts))]
    return round(sum(seconds), 3) if all(isinstance(s, (int, float)) for s in seconds) else None


def pool_for(store: PoolStore, prompt_ids: list[int]) -> tuple[list[str], list[float], list[bool]]:
    """(texts, scores, finished) of a prompt's pool; finished is False for a sample cut by max_new_tokens."""
    entry = store.entries.get(prompt_key(prompt_ids))
    if entry is None:
        raise PobenchError("internal: a candidate pool is missing after generation")
    # every stored entry has carried `finished` since the store began; a hand-made one without it reads as ended
    return entry["candidates"], entry["scores"], entry.get("finished") or [True] * len(entry["candidates"])
