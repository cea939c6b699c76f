"""Reward-model scorers behind one interface, and the registry of gold reward functions.

A scorer turns (prompt messages, completion text) into one float per completion:

    scorer = get_scorer("results/reward_models/hh-rlhf-minilm-seed1")   # or "gold:<name>", or a hub id
    scorer.score(prompts, completions) -> list[float]
    scorer.name        # recorded with every result that a scorer graded, so a number always names its judge
    scorer.describe()  # a JSON-able dict with what else identifies it (path, training info, ...)

Scorers serve candidate pools (RSO, OnMC-PO pick the best of N by reward) and evaluation (reward of a
policy's generations). No reward model ships with the suites, so `pobench train-rm` trains a Bradley-Terry
one (pobench/rewards/train.py); where the suite has a known reward function, `gold:<name>` uses it exactly.
The model-backed scorer imports torch/transformers only when built.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

from pobench.errors import PobenchError

GoldFn = Callable[[list, str], float]   # fn(prompt_messages, completion) -> reward
GOLD_REWARDS: dict[str, GoldFn] = {}


class Scorer(Protocol):
    name: str

    def score(self, prompts: list[list[dict]], completions: list[str]) -> list[float]: ...

    def describe(self) -> dict: ...


def reward_model_name(spec: str, cache_dir) -> str:
    """How results and cache keys name a reward model. One that pobench trained into the results' cache (the auto
    pool reward model and eval judge, in content-keyed folders) is named by its place in the cache,
    "auto:reward_models/hh-rlhf-minilm-<digest>": the same whether the results folder was typed as a relative or an
    absolute path, or moved, so runs that share it name it alike. Any other spec (a folder, a hub id, gold:<name>)
    is named as given."""
    try:
        inside = Path(spec).resolve().relative_to(Path(cache_dir).resolve())
    except (ValueError, OSError):
        return spec
    return f"auto:{inside.as_posix()}"


def reward_model_identity(rm_info: dict | None, path: str | None = None) -> dict:
    """What stands behind a reward model's name, by content, for eval.json's `judge.identity` (the report tells judges
    of one name apart by it: a folder retrained in place, with other steps or seed, kept its name). One that pobench
    trained is identified by its rm_info.json, which `pobench train-rm` writes with the weights and which tells each
    training apart (its settings, losses and clocks), less the loss curve that eval.json leaves out: so an eval.json
    written before the identity was recorded, which holds that rm_info, is identified alike. Any other by a digest
    of its files, or its hub commit (models.model_content_digest; None when neither is known)."""
    import hashlib
    import json
    if isinstance(rm_info, dict):
        kept = {k: v for k, v in rm_info.items() if k != "train_loss_curve"}
        return {"rm_info": hashlib.sha1(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12]}
    from pobench.models import model_content_digest
    return {"weights": (model_content_digest(path) if path else "") or None}


def register_gold(name: str):
    """Decorator for a suite whose true reward is known (e.g. a synthetic suite):

        @register_gold("synthetic-length")
        def reward(prompt_messages, completion): return -abs(len(completion) - 100)

    The registering module must be imported before `get_scorer("gold:<name>")` is called (a suite's loader
    module is the natural place)."""
    def wrap(fn: GoldFn) -> GoldFn:
        known = GOLD_REWARDS.get(name)
        if known is not None and (known.__module__, known.__qualname__) != (fn.__module__, fn.__qualname__):
            raise PobenchError(f"gold reward '{name}' is registered twice ({known.__module__} and {fn.__module__})")
        GOLD_REWARDS[name] = fn
        return fn
    return wrap


def _check_lengths(prompts, completions) -> None:
    if len(prompts) != len(completions):
        raise ValueError(f"score: {len(prompts)} prompts but {len(completions)} completions")


def builtin_gold(name: str) -> None:
    """Register `name` when a built-in suite provides it: the synthetic suite's task rewards (`synthetic`,
    `synthetic-<task seed>`) are registered when that suite loads, which a command that only reads a finished run
    (`pobench compare`) never does."""
    import re
    match = re.fullmatch(r"synthetic(?:-(\d+))?", name)
    if match and name not in GOLD_REWARDS:
        from pobench.synthetic import register_task_gold
        register_task_gold(int(match.group(1) or 0))


class GoldScorer:
    """A registered reward function, applied as is: no model, no noise, the ground truth of a suite."""

    def __init__(self, gold_name: str):
        builtin_gold(gold_name)
        if gold_name not in GOLD_REWARDS:
            known = ", ".join(sorted(set(GOLD_REWARDS) | {"synthetic", "synthetic-<task seed>"}))
            raise PobenchError(f"unknown gold reward '{gold_name}' (known: {known}; a --plugin registers more "
                               f"with @register_gold)")
        self.gold_name = gold_name
        self.fn = GOLD_REWARDS[gold_name]
        self.name = f"gold:{gold_name}"

    def score(self, prompts: list[list[dict]], completions: list[str]) -> list[float]:
        _check_lengths(prompts, completions)
        return [float(self.fn(p, c)) for p, c in zip(prompts, completions)]

    def describe(self) -> dict:
        doc = (self.fn.__doc__ or "").strip()
        return {"name": self.name, "kind": "gold", "function": f"{self.fn.__module__}.{self.fn.__qualname__}",
                "doc": doc.splitlines()[0] if doc else ""}


def _looks_like_hub_id(spec: str) -> bool:
    """'org/name' and nothing else: a relative path that does not exist must not silently become a hub
    lookup (which, offline, would fail with a confusing message much later)."""
    parts = spec.split("/")
    return (len(parts) == 2 and all(parts) and not spec.startswith((".", "~"))
            and all(c.isalnum() or c in "-_." for c in spec.replace("/", "")))


def get_scorer(spec: str, **kw) -> Scorer:
    """'gold:<name>' -> GoldScorer; a reward-model folder (e.g. from `pobench train-rm`) or a hub id ->
    SequenceClassifierScorer (keywords such as batch_size, max_length, device go to it)."""
    spec = str(spec).strip()
    if spec.startswith("gold:"):
        return GoldScorer(spec[len("gold:"):])
    from pobench.rewards.classifier import SequenceClassifierScorer
    return SequenceClassifierScorer(_model_source(spec), **kw)


def _model_source(spec: str) -> str:
    """A reward model's folder or hub id, checked without loading it."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PobenchError(f"reward model {spec}: the folder has no config.json (not a saved model)")
        return str(path)
    if path.exists():
        raise PobenchError(f"reward model {spec}: expected a model folder, got a file")
    if spec.startswith((".", "/", "~")):   # spelled as a path (configs hold local paths absolute: pobench/paths.py)
        from pobench.paths import written_in
        raise PobenchError(f"reward model {spec}: no such reward-model folder{written_in(spec)}")
    if not _looks_like_hub_id(spec):
        raise PobenchError(f"unknown reward model '{spec}': expected gold:<name>, a reward-model folder, "
                           f"or a hub id like org/name")
    return spec


def check_scorer_spec(spec: str, key: str) -> None:
    """A reward setting's mistake named before any run starts, whether or not the run's algorithm uses it (an
    unused one would be saved in config.yaml as if it were fine): `auto`, a known gold reward, or a reward model
    that check_reward_model finds usable."""
    spec = str(spec).strip()
    if spec == "auto":
        return
    if spec.startswith("gold:"):
        try:
            GoldScorer(spec[len("gold:"):])
        except PobenchError as e:
            raise PobenchError(f"config key '{key}': {e}") from None
        return
    check_reward_model(spec, key)


def _is_path_like(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec


def check_reward_model(spec: str, key: str, shown: str | None = None) -> None:
    """The checks a reward model (pool.reward_model, or an `rm:` judge: `shown` is the spec as the key holds it)
    gets before any run starts, without loading its weights: each of these failed only at load, which for the eval
    judge is after the training budget is spent. A local folder (a bare relative name too, read from the current
    folder as at load) must be a saved model with intact weights (models.check_model_source); a hub id must be in
    the local hub cache when the hub cannot be reached; and the config either names must be a sequence classifier
    with one output, which is what SequenceClassifierScorer loads (a causal LM gets an untrained score head of 2
    labels)."""
    from pobench.models import check_model_source
    spec, shown = str(spec).strip(), shown or str(spec).strip()

    def refuse(reason: str):
        raise PobenchError(f"config key '{key}': {shown}: {reason}")

    path = Path(spec).expanduser()
    if path.is_file():
        refuse("expected a reward-model folder, got a file")
    if path.is_dir():
        if not (path / "config.json").is_file():
            refuse("the folder has no config.json (not a saved model)")
        try:
            check_model_source(spec)
        except PobenchError as e:
            refuse(str(e))
        source = str(path)
    elif _is_path_like(spec):
        refuse("no such reward-model folder")
    elif not _looks_like_hub_id(spec):
        refuse(f"no such reward-model folder in {Path.cwd()}, and not a hub id (org/name)")
    else:
        source = spec
        _check_hub_reward_model(spec, refuse)
    config = _reward_model_config(source, refuse)
    architectures = list(getattr(config, "architectures", None) or [])
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        refuse(f"its config.json names {', '.join(architectures)}, not a sequence classifier: a reward model is "
               f"loaded as AutoModelForSequenceClassification, which would put an untrained score head on it")
    if config.num_labels != 1:
        refuse(f"{', '.join(architectures) or config.model_type} has {config.num_labels} labels; a reward model has "
               f"one output (num_labels=1)")


def _check_hub_reward_model(repo_id: str, refuse) -> None:
    """A hub id is loaded from the local hub cache when the hub cannot be reached (HF_HUB_OFFLINE, no network)."""
    from huggingface_hub import try_to_load_from_cache

    from pobench.data.loading import hub_reachable
    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return
    if not hub_reachable():
        refuse("not in the local hub cache, and the hub cannot be reached (offline): download it where the hub is "
               "reachable, or give a local reward-model folder")


def _reward_model_config(source: str, refuse):
    """The model config (no weights) of a folder or hub id: read from the hub cache, or fetched (one small file)."""
    from transformers import AutoConfig

    from pobench.data.loading import hub_logs_quiet
    try:
        with hub_logs_quiet():
            return AutoConfig.from_pretrained(source)
    except Exception as e:   # a hub id that does not exist, a gated repo, a config transformers cannot read
        first = str(e).splitlines()[0] if str(e) else ""
        refuse(f"cannot read its config ({type(e).__name__}: {first})")


def __getattr__(name: str):
    # `from pobench.rewards import SequenceClassifierScorer` works without importing torch at package import.
    if name == "SequenceClassifierScorer":
        from pobench.rewards.classifier import SequenceClassifierScorer
        return SequenceClassifierScorer
    if name == "train_reward_model":
        from pobench.rewards.train import train_reward_model
        return train_reward_model
    raise AttributeError(f"module 'pobench.rewards' has no attribute '{name}'")


__all__ = ["GOLD_REWARDS", "GoldScorer", "Scorer", "SequenceClassifierScorer", "get_scorer", "register_gold",
           "train_reward_model"]
