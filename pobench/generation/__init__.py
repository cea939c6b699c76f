"""Generation backends behind one interface: prompt token ids in, n completions per prompt out.

    backend = get_backend("transformers", model, tokenizer)      # or "vllm" (CUDA only, optional extra)
    completions = backend.generate(prompt_ids, GenerationConfig(n=4))
    completions[i][j].text / .token_ids / .finished

Prompts arrive as token ids already rendered with the chat template (pobench.data.tokenize.ChatFormatter
`prompt_text` + `encode`), so every backend sees exactly the tokens the trainer scores: no backend applies a
template or adds special tokens of its own.

Backends are registered by dotted path and imported only when asked for (the lm-evaluation-harness pattern),
so `import pobench.generation` never imports vLLM, and a machine without it can still list and use the others.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

from pobench.errors import PobenchError

# How the transformers backend turns seeds into draws; part of the keys of every store of generated text (pools,
# reference outputs), so draws made another way are never mixed with these. Change it whenever the same seed and
# logits would give other tokens. History: "per prompt" (hashed Gumbel-max noise) until inverse-CDF sampling.
SAMPLING_SCHEME = "per-prompt keys, inverse CDF"
# How the fast decoder finds top-p samples; "select" (eager steps only) is what "auto" means off a CUDA graph.
TOP_P_METHODS = ("auto", "select", "sort", "bisect", "kary", "radix", "reject")


@dataclass
class GenerationConfig:
    """Sampling settings. The defaults are SimPO's on-policy recipe (temperature 0.8, top_p 0.95), which the
    design uses for candidate pools; temperature 0 means greedy decoding."""
    n: int = 1                  # completions per prompt
    temperature: float = 0.8    # 0 = greedy
    top_p: float = 0.95         # nucleus sampling mass (1.0 = off)
    max_new_tokens: int = 64    # completions that hit this limit come back with finished=False
    seed: int = 0               # same seed + same prompt -> same samples, whatever the batching (transformers)
    batch_size: int = 0         # prompt x sample rows per forward (transformers backend); 0 = auto: 64 off CUDA,
                                # on CUDA all of the call's rows up to 256 as far as a quarter of the free GPU
                                # memory holds their KV cache (pobench/generation/hf.py, auto_batch_rows)
    fast: str = "auto"          # transformers backend: "auto" = static cache + CUDA-graph decoding on CUDA where
                                # the model supports it (pobench/generation/static.py), "on" = that path on any
                                # device (eager steps off CUDA), "off" = plain `model.generate`
    compile: bool = False       # fast path: torch.compile each decode step whole before capturing it (opt-in: one
                                # compilation per prompt shape; see pobench/generation/static.py)
    top_p_method: str = "auto"  # transformers backend, how top-p draws are made (pobench/generation/static.py):
                                # "auto" = find the nucleus by partial selection in eager steps, by sort in CUDA
                                # graphs and compiled steps; "sort", "bisect", "kary", "radix" find the same nucleus
                                # (same tokens); "reject" draws from the whole distribution until a draw lands in
                                # the nucleus: the same distribution, other tokens, no nucleus search (at top_p
                                # below REJECT_MIN_TOP_P, 0.352, too many tries: there it draws as "radix")

    def __post_init__(self):
        # Checked here rather than deep in a backend, so a bad --set fails before any model is loaded.
        if self.n < 1:
            raise PobenchError(f"generation n={self.n}: must be at least 1")
        if self.temperature < 0:
            raise PobenchError(f"generation temperature={self.temperature}: must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise PobenchError(f"generation top_p={self.top_p}: must be in (0, 1]")
        if self.max_new_tokens < 1:
            raise PobenchError(f"generation max_new_tokens={self.max_new_tokens}: must be at least 1")
        if self.batch_size < 0:
            raise PobenchError(f"generation batch_size={self.batch_size}: must be at least 1 (or 0 = auto)")
        if self.fast not in ("auto", "on", "off"):
            raise PobenchError(f"generation fast={self.fast!r}: must be one of auto, on, off")
        if self.top_p_method not in TOP_P_METHODS:
            raise PobenchError(f"generation top_p_method={self.top_p_method!r}: must be one of "
                               f"{', '.join(TOP_P_METHODS)}")


REJECT_MISS = 2.0 ** -40      # "reject": the chance, per token, that every try falls outside the nucleus
REJECT_MAX_TRIES = 64         # each try is a masked sum over the row: below REJECT_MIN_TOP_P "reject" searches
REJECT_MIN_TOP_P = 1 - REJECT_MISS ** (1 / REJECT_MAX_TRIES)   # 0.352: (1 - top_p)^64 <= 2^-40 from here up


def rejection_tries(top_p: float) -> int:
    """How many draws "reject" makes per token: each falls outside the nucleus with chance 1 - (its mass) <=
    1 - top_p, so this many all miss with chance <= REJECT_MISS (10 at top_p 0.95, 13 at 0.9, 40 at 0.5)."""
    if top_p >= 1:
        return 1
    return max(1, math.ceil(math.log(REJECT_MISS) / math.log1p(-top_p)))


def rejects(temperature: float, top_p: float) -> bool:
    """Whether top_p_method "reject" draws by rejection at these settings: when sampling with a nucleus, at most
    REJECT_MAX_TRIES tries a token (top_p >= REJECT_MIN_TOP_P); otherwise it draws what the radix select does."""
    return temperature > 0 and top_p < 1 and rejection_tries(top_p) <= REJECT_MAX_TRIES


def draw_settings(cfg: GenerationConfig) -> dict:
    """The settings beyond seed and sampling parameters that change which tokens are drawn: part of the keys of
    stores of generated text (pools, reference outputs). Empty at the defaults, so stores made before these
    settings existed keep their keys. A compiled decode step rounds differently in bf16 on a GPU; "reject" makes
    other draws than the nucleus searches (which make the same ones, up to the sort's float32 running sum missing
    a crossing by a token), and only where it draws by rejection (`rejects`). Greedy decoding has no draws, but a
    compiled step's rounding still moves its tokens. The transformers backend's settings: vLLM ignores both."""
    settings = {}
    if cfg.compile:
        settings["compile_decoding"] = True
    if cfg.top_p_method == "reject" and rejects(cfg.temperature, cfg.top_p):
        settings["top_p_method"] = "reject"
    return settings


@dataclass
class Completion:
    text: str              # decoded without special tokens, cut before the first EOS
    token_ids: list[int]   # generated ids, up to and including the first EOS (what online samplers train on)
    finished: bool         # True when generation ended at an EOS, False when it hit max_new_tokens


def truncate_at_eos(token_ids: list[int], eos_ids) -> tuple[list[int], bool]:
    """(ids up to and including the first EOS, whether there was one).

    The EOS is kept in `token_ids` because the chat template's completions hold it (<|im_end|> for SmolLM2,
    which the template follows with a newline: the trainer adds that, pobench.data.tokenize.closing_ids), so a
    generated completion scored by the trainer looks like a dataset completion; whatever a backend emits after it
    (padding of finished rows) is dropped."""
    eos = set(eos_ids)
    for i, t in enumerate(token_ids):
        if t in eos:
            return list(token_ids[:i + 1]), True
    return list(token_ids), False


# name -> "module:Class"; imported on first use so optional backends cost nothing until chosen.
BACKENDS: dict[str, str] = {
    "transformers": "pobench.generation.hf:TransformersBackend",
    "vllm": "pobench.generation.vllm_backend:VLLMBackend",
}


def rows_per_call(backend, prompt_ids: list[list[int]], cfg: GenerationConfig) -> int:
    """How many prompt x sample rows a backend decodes together for these prompts: cfg.batch_size, or the backend's
    own choice for 0 (a backend that schedules its own batches, as vLLM does, takes everything: 256 rows a call
    bounds how much a crash can lose)."""
    if cfg.batch_size:
        return cfg.batch_size
    choose = getattr(backend, "auto_batch_rows", None)
    return choose(prompt_ids, cfg) if choose else 256


def register_backend(name: str, target: str | type | None = None):
    """Register a backend as a dotted "module:Class" path (lazy) or, used as a class decorator, a class."""
    if target is not None:
        BACKENDS[name] = target
        return target

    def wrap(cls):
        BACKENDS[name] = cls
        return cls
    return wrap


def get_backend(name: str = "transformers", model=None, tokenizer=None, **kw):
    """Build a backend by name. `model` is a loaded model (transformers) or a model folder (vllm)."""
    if name not in BACKENDS:
        raise PobenchError(f"unknown generation backend '{name}' (known: {', '.join(sorted(BACKENDS))})")
    target = BACKENDS[name]
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        target = getattr(importlib.import_module(module), attr)
    return target(model, tokenizer, **kw)


__all__ = ["BACKENDS", "Completion", "GenerationConfig", "TOP_P_METHODS", "draw_settings", "get_backend", "register_backend", "truncate_at_eos"]
