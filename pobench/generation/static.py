"""Fast decoding: a static KV cache, one decode step replayed as a CUDA graph, sampling on the device.

Why it is faster than `model.generate`: decoding a small model is bound by kernel launches and host round
trips, not by arithmetic. `generate` launches a few hundred small kernels per token from Python and waits on the
device every step (stopping criteria, logits processors). Here the whole step - forward over one token, top-p
sampling (inverse CDF, no host round trip), EOS bookkeeping, advancing positions and the mask - is captured once
as a CUDA graph and replayed, so a token costs one launch; the host looks at the device only every `check_every`
steps to stop early.

Exactness: the same model, prompts and masks as `generate`; greedy decoding gives the same tokens (tested on CPU,
where the identical step runs eagerly). Sampling draws from the same distribution (temperature, then top-p as
transformers' TopPLogitsWarper: keep the most probable tokens until their mass reaches top_p), each row with the
noise keys the caller hands in (the transformers backend's per-prompt streams, pobench/generation/hf.py), so the
plain and the fast path give the same samples wherever their logits agree.

Needs transformers' StaticCache with an in-place `cumulative_length` (transformers >= 5.2x, `cache=` keyword);
`unsupported_reason(model, capacity)` says why a model does not qualify for a call (a sliding window shorter than the call's
prompt width + max_new_tokens does not), and callers fall back to `generate` where it does not.
"""
from __future__ import annotations

import collections
import contextlib
import inspect
import math

import torch
import torch.nn.functional as F

from pobench.generation import TOP_P_METHODS as GENERATION_TOP_P_METHODS, rejection_tries, rejects


def unsupported_reason(model, capacity: int | None = None, compiled: bool = False) -> str | None:
    """Why the static decoder cannot run `model` for `capacity` cache slots (prompt width + max_new_tokens; None:
    not known yet), with its step compiled or not, or None where it can."""
    try:
        from transformers import StaticCache  # noqa: F401
        from transformers.cache_utils import StaticLayer
    except ImportError:
        return "this transformers has no StaticCache"
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    if not ("cache" in params and "logits_to_keep" in params and hasattr(StaticLayer(8), "cumulative_length")):
        return (f"{type(base).__name__}'s forward takes no `cache` and `logits_to_keep`, or this transformers' "
                f"StaticLayer has no in-place cumulative_length")
    return window_conflict(base.config, capacity, compiled)


def window_conflict(config, capacity: int | None, compiled: bool = False) -> str | None:
    """Where a layer's cache would be shorter than `capacity`, why; else None. StaticCache gives a sliding-window
    or chunked layer (Mistral v0.1, Gemma 2/3, Qwen2 with use_sliding_window, Llama 4) only its window's slots, and
    rolls them once full, while the decoder's mask spans every slot of prompt + new tokens: a mismatch of sizes
    (seen: "size of tensor a (32) must match ... (44)"). A window at least `capacity` long never fills, so it
    masks nothing the causal mask keeps and its layer writes slots as a full one does. Any other kind of layer
    (linear attention, shared or absent caches) is refused: the decoder's masks and slot bookkeeping assume
    attention over a cache of every position. Compiled, any window is refused: its layer branches on a Python
    count of the tokens it holds, so every step compiled anew (measured on the CPU: 5 graphs for 5 steps of a
    windowed Mistral, 1 without the window)."""
    config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    try:   # the reading StaticCache itself makes of the config
        from transformers.cache_utils import get_layer_types_and_kwargs
        kinds, kwargs = get_layer_types_and_kwargs(config)
    except (ImportError, AttributeError):
        window = getattr(config, "sliding_window", None) or getattr(config, "attention_chunk_size", None)
        kinds = getattr(config, "layer_types", None) or \
            ["sliding_attention" if window else "full_attention"] * config.num_hidden_layers
        kwargs = [{"sliding_window": window} for _ in kinds]
    for kind, layer in zip(kinds, kwargs):
        if kind == "full_attention":
            continue
        if kind not in ("sliding_attention", "chunked_attention"):
            return f"its layers of type {kind!r} are not plain attention over a static cache"
        window = layer.get("sliding_window")
        if compiled:
            return f"its {kind} layers (window {window}) recompile a compiled decode step at every token"
        if capacity is None:
            return f"its {kind} layers keep a window of {window} tokens (the call's prompt width is not known)"
        if window is None or window < capacity:
            return (f"its {kind} layers keep a window of {window} tokens, fewer than the call's prompt width + "
                    f"max_new_tokens ({capacity}) that the decoder attends over")
    return None


def blockwise_cumsum(values: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """`values.cumsum(-1)`, summed in blocks of `block` entries and the blocks' totals carried over (the same sums up
    to rounding). One scan over a 150k vocabulary did not compile on CUDA (torch 2.11's inductor failed in its
    split-scan codegen, measured on an H200); two short scans do. Every path uses this, so eager and compiled steps
    add in the same order."""
    width = values.shape[-1]
    if width <= block:
        return values.cumsum(-1)
    blocks = F.pad(values, (0, (-width) % block)).unflatten(-1, (-1, block)).cumsum(-1)   # zeros pad: add nothing
    carried = F.pad(blocks[..., :-1, -1].cumsum(-1), (1, 0))          # what the blocks before each one sum to
    return (blocks + carried[..., None]).flatten(-2)[..., :width]


# See top_p_threshold and sample_tokens; GenerationConfig's "auto" picks one by where the step runs.
TOP_P_METHODS = tuple(m for m in GENERATION_TOP_P_METHODS if m != "auto")


def top_p_threshold(probs: torch.Tensor, top_p: float, method: str = "select", iters: int = 40,
                    select: int = 1024, ways: int = 16) -> torch.Tensor:
    """[rows, 1] probability of the token that takes the nucleus's mass to top_p (transformers' TopPLogitsWarper
    keeps the most probable tokens until their mass reaches top_p, that token included). The nucleus is
    `probs >= threshold`: tokens tied with the crossing token are all kept, whatever order a sort puts ties in, so
    the kept set depends on the row alone.

    Three ways to the same threshold:
    - "sort" sorts each row whole (the textbook way; a full sort of a 150k vocabulary per row dominated a decode
      step on an H200, and costs 30 ms a step for 16 rows of SmolLM2's 49k on 2 CPU cores).
    - "select" takes each row's `select` largest probabilities (a partial selection, several times cheaper than the
      sort) and sorts a row whole only where its nucleus is wider than that. The largest values in order are the
      sort's first values, so the threshold is the sort's (to the bit where the running sum is sequential, as on
      the CPU: tested). It asks the host which rows need the fallback, so it cannot run inside a CUDA graph: eager
      decoding only.
    - "bisect": the largest t with mass(p >= t) >= top_p, by bisection on t, each step one masked sum over the row;
      `iters` = 40 halvings of [0, max p] resolve t to max p / 2^40, far below float32's spacing of any
      probabilities that could matter. No sort and no host: for a compiled decode step.
    - "kary": the bisection's search, `ways`-ary: each round the masses at `ways` - 1 thresholds spread over
      [lo, hi], so 16 ways resolve as finely as 40 halvings in 10 rounds. A round is 15 masked sums over the same
      row, which a compiler can make one pass; eager, it is the slowest. It exists because the 40 halvings,
      compiled, cost more than the sort on an H200 (benchmarks/GPU.md); `w-kary` in benchmarks/gpu_generate.py
      measures it: on an H200 it cost more than the sort too (17.6k new tokens/s against 23.9k, benchmarks/GPU.md).
    - "radix": the crossing token's value digit by digit, as a radix select does. A non-negative float orders as
      its bit pattern, so three passes over the row, each a histogram of masses over 2048 or 1024 values of the
      next bits of the tokens still in question, pin the threshold's 31 bits exactly. Masses are summed as
      integers (probability x 2^52, truncated), so the sums do not depend on the order a GPU adds in; a token
      below 2^-52 counts no mass. No sort, no host, three passes. Exact where the sort's float32 running sum
      can miss the crossing by a token (tested). Its cost: compiled on an H200, the sort's (the sampler 1.15 ms
      against 1.24 for 64 rows, the decode step 23.9k new tokens/s against 23.8k, benchmarks/GPU.md), and in a
      graph of eager kernels 11% slower, so the sort stays the default there."""
    if method == "select" and select < probs.shape[-1]:
        threshold, kept = _crossing(probs.topk(select, dim=-1).values, top_p)
        wide = (kept.squeeze(-1) == select).nonzero().squeeze(-1)
        if len(wide):
            threshold[wide] = _crossing(probs[wide].sort(dim=-1, descending=True).values, top_p)[0]
        return threshold
    if method in ("sort", "select"):
        return _crossing(probs.sort(dim=-1, descending=True).values, top_p)[0]
    lo = torch.zeros_like(probs[:, :1])
    hi = probs.amax(-1, keepdim=True)
    if method == "kary":
        return _kary_threshold(probs, top_p, lo, hi, ways, rounds=-(-iters // (ways.bit_length() - 1)))
    if method in ("radix", "reject"):       # "reject" never computes a threshold; its nucleus is the radix select's
        return _radix_threshold(probs, top_p)
    if method != "bisect":
        raise ValueError(f"top_p method {method!r}: one of {', '.join(TOP_P_METHODS)}")
    for _ in range(iters):
        mid = (lo + hi) * 0.5
        enough = torch.where(probs >= mid, probs, 0.0).sum(-1, keepdim=True) >= top_p
        lo = torch.where(enough, mid, lo)
        hi = torch.where(enough, hi, mid)
    return lo


def _kary_threshold(probs: torch.Tensor, top_p: float, lo: torch.Tensor, hi: torch.Tensor, ways: int,
                    rounds: int) -> torch.Tensor:
    """The largest t with mass(p >= t) >= top_p, narrowed `ways`-fold a round. mass(p >= t) falls as t rises, so
    the thresholds with enough mass are the first `enough` of the grid: lo moves to the last of them, hi to the next.
    lo keeps enough mass throughout (0 has all of it)."""
    fractions = torch.arange(1, ways, device=probs.device, dtype=probs.dtype) / ways
    for _ in range(rounds):
        grid = lo + (hi - lo) * fractions                                      # [rows, ways - 1], ascending
        mass = torch.stack([torch.where(probs >= grid[:, j:j + 1], probs, 0.0).sum(-1) for j in range(ways - 1)], -1)
        enough = (mass >= top_p).sum(-1, keepdim=True)
        lo, hi = (torch.where(enough > 0, grid.gather(-1, (enough - 1).clamp(min=0)), lo),
                  torch.where(enough < ways - 1, grid.gather(-1, enough.clamp(max=ways - 2)), hi))
    return lo


FIXED_POINT = 2.0 ** 52       # radix: a probability's mass in units of 2^-52; a row's sum stays below 2^63


def fixed_point_mass(probs: torch.Tensor, from_bits: bool | None = None) -> torch.Tensor:
    """int64 probability x 2^52, truncated: exact integers, so that masses sum alike in any order. Through float64
    (exact: scaling by a power of two), or where float64 is missing (MPS; `from_bits` forces it) from the float32
    bits: mantissa x 2^(exponent - 150) x 2^52, shifted, which truncates the same way (tested equal)."""
    if not (probs.device.type == "mps" if from_bits is None else from_bits):
        return (probs.double() * FIXED_POINT).long()
    bits = probs.float().view(torch.int32).long()
    field = (bits >> 23) & 0xFF
    exponent = field.clamp(min=1)                                 # subnormals: exponent field 0 counts as 1
    mantissa = torch.where(field > 0, (bits & 0x7FFFFF) | (1 << 23), bits & 0x7FFFFF)
    shift = exponent - 98                                         # probabilities <= 1: shift <= 29, mass <= 2^53
    return torch.where(shift >= 0, mantissa << shift.clamp(min=0), mantissa >> (-shift).clamp(max=63))


def _radix_threshold(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The sort's threshold - the smallest probability v with mass(p > v) < top_p - found by bits, high to low.

    Each pass takes the tokens whose leading bits equal the prefix found so far, sums their masses by the value of
    the next bits (a histogram, one scatter-add), and keeps the lowest non-empty bucket whose mass above it
    (everything above the prefix, carried from earlier passes, plus the higher buckets) is below top_p: the
    threshold is in that bucket, and nothing above it can be. 11 + 10 + 10 bits: the 31 bits of a non-negative
    float32."""
    bits = probs.float().view(torch.int32).long()
    mass = fixed_point_mass(probs)
    target = math.ceil(top_p * FIXED_POINT)             # integers m: m < top_p x 2^52  <=>  m < target
    prefix = torch.zeros_like(bits[:, :1])
    carried = torch.zeros_like(bits[:, :1])             # mass above every token still in question
    for shift, width in ((20, 11), (10, 10), (0, 10)):
        buckets = 1 << width
        digit = (bits >> shift) & (buckets - 1)
        inside = (bits >> (shift + width)) == prefix
        hist = bits.new_zeros(bits.shape[0], buckets).scatter_add_(1, digit, torch.where(inside, mass, 0))
        above = carried + hist.flip(-1).cumsum(-1).flip(-1) - hist
        order = torch.arange(buckets, device=probs.device)
        chosen = torch.where((hist > 0) & (above < target), order, buckets).amin(-1, keepdim=True)
        carried = above.gather(-1, chosen)
        prefix = (prefix << width) | chosen
    return prefix.int().view(torch.float32).to(probs.dtype)


def _crossing(sorted_probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """From probabilities sorted in descending order (a row's largest, or all of them): the crossing token's
    probability and how many tokens are kept, both [rows, 1]. A token is kept while the mass before it is below
    top_p, so the first always is."""
    kept = ((blockwise_cumsum(sorted_probs) - sorted_probs) < top_p).sum(-1, keepdim=True)
    return sorted_probs.gather(-1, kept - 1), kept


def inside_nucleus(probs: torch.Tensor, candidates: torch.Tensor, top_p: float) -> torch.Tensor:
    """Boolean [rows, n]: whether each of `candidates` ([rows, n] token ids) is in its row's nucleus, without
    finding the nucleus: token c is kept exactly when the mass of the tokens more probable than c is below top_p
    (the nucleus is `probs >= t` with t the smallest probability whose mass above is below top_p, and that mass
    only falls as the probability rises). Masses summed as integers, as the radix select sums them, so the kept set
    is the radix select's to the token (which never keeps a token of no mass, below 2^-52), and eager and compiled
    steps agree. n masked sums over the same row: n passes eager, one compiled (inductor fuses them; checked)."""
    mass = fixed_point_mass(probs)
    target = math.ceil(top_p * FIXED_POINT)
    values = probs.gather(-1, candidates)
    above = torch.stack([torch.where(probs > values[:, k:k + 1], mass, 0).sum(-1) for k in range(values.shape[1])],
                        -1)
    return (above < target) & (mass.gather(-1, candidates) > 0)


_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for int64 x < 2^32, split so that no int64 product overflows."""
    if c < 1 << 31:
        return (x * c) & _MASK32
    return (x * (c - (1 << 31)) + ((x & 1) << 31)) & _MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (Chris Wellons' 32-bit integer hash, a bijection) of int64 tensors holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def try_keys(keys: torch.Tensor, tries: int) -> torch.Tensor:
    """[rows] noise keys -> [rows, tries]: the key itself first, then hashes of the key with each try's offset (a
    multiple of 2^32 / golden ratio), so a row's tries depend on its own key alone."""
    offsets = torch.arange(tries, device=keys.device, dtype=torch.long) * 0x9E3779B9
    hashed = mix32((keys[:, None] + offsets) & _MASK32)
    return torch.cat([keys[:, None], hashed[:, 1:]], -1)


def top_p_keep(probs: torch.Tensor, top_p: float, method: str = "select") -> torch.Tensor:
    """Boolean [rows, vocab] mask of the nucleus (see top_p_threshold)."""
    return probs >= top_p_threshold(probs, top_p, method)


def key_uniforms(keys: torch.Tensor) -> torch.Tensor:
    """Noise keys (integers in [0, 2^32)) -> float64 numbers in (0, 1), 32 bits of resolution (computed on the CPU
    for a device without float64)."""
    if keys.device.type == "mps":
        keys = keys.cpu()
    return (keys.to(torch.float64) + 0.5) * 2.0 ** -32


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float, method: str = "select",
                  keys: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row from [rows, vocab] logits; temperature 0 = greedy.

    Sampling is by inverse CDF: the nucleus's probabilities are summed in token-id order (in float64, so that even
    a 1e-9 probability keeps its share of [0, 1)) and the row takes the token whose interval holds u x the kept mass.
    u is one number per row and step: from `keys` ([rows] integers in [0, 2^32), see `key_uniforms`), so that a
    row's draw depends on its own logits and key only, never on the other rows of its batch; without keys, from the
    global torch stream. With the nucleus by "sort" or "bisect" nothing here waits on the host, so a CUDA graph or a
    compiled step can hold it ("select", the eager default, asks the host once a step). "reject" draws other
    tokens from the same distribution without finding the nucleus (_rejection_sample). It replaces Gumbel-max,
    which needed a random number per row and vocabulary entry every step: hashing 150k numbers per row cost more
    than the sampling itself."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = (logits.float() / temperature).softmax(-1)
    if method == "reject" and top_p < 1:
        if rejects(temperature, top_p):
            return _rejection_sample(probs, top_p, keys)
        method = "radix"          # too many tries below REJECT_MIN_TOP_P: the same nucleus, searched
    if top_p < 1:
        probs = torch.where(probs >= top_p_threshold(probs, top_p, method), probs, 0.0)
    wide = torch.float32 if probs.device.type == "mps" else torch.float64    # MPS has no float64
    cdf = blockwise_cumsum(probs.to(wide))
    u = torch.rand(probs.shape[0], dtype=wide, device=probs.device) if keys is None else key_uniforms(keys)
    target = u.to(probs.device, wide)[:, None] * cdf[:, -1:]
    # The first token whose cumulative mass reaches the target; tokens outside the nucleus add nothing to the sum,
    # so they are never the first to reach it.
    return (cdf < target).sum(-1).clamp_(max=probs.shape[-1] - 1)


def _rejection_sample(probs: torch.Tensor, top_p: float, keys: torch.Tensor | None,
                      tries: int | None = None) -> torch.Tensor:
    """Top-p sampling without finding the nucleus: draw from the whole distribution and keep the first draw that
    falls inside the nucleus. A draw from p conditioned on landing in a set S is a draw from p restricted to S and
    renormalised, which is what top-p sampling is, so the distribution is exactly the other methods'; the tokens
    are not theirs for the same key (they draw once, from the nucleus). `tries` draws per row (rejection_tries),
    each by inverse CDF over the whole row with its own uniform (try_keys), and one fused membership pass
    (inside_nucleus); where every try misses (chance <= REJECT_MISS per token) the row takes its most probable
    token, which is always kept. It costs a cumulative sum, a binary search and one pass over the row compiled
    (one per try eager), whatever the nucleus's width; the sort, the searches and the radix select cost a sort or
    several passes (for a compiled decode step on a random model's flat rows, the nucleus search was a third of a
    step, GPU.md)."""
    tries = tries or rejection_tries(top_p)
    wide = torch.float32 if probs.device.type == "mps" else torch.float64
    cdf = blockwise_cumsum(probs.to(wide))
    if keys is None:
        u = torch.rand(probs.shape[0], tries, dtype=wide, device=probs.device)
    else:
        u = key_uniforms(try_keys(keys, tries)).to(probs.device, wide)
    # The first token whose cumulative mass reaches the target, as in sample_tokens.
    drawn = torch.searchsorted(cdf.contiguous(), u * cdf[:, -1:]).clamp_(max=probs.shape[-1] - 1)
    kept = inside_nucleus(probs, drawn, top_p)
    first = drawn.gather(-1, kept.int().argmax(-1, keepdim=True)).squeeze(-1)   # argmax: the first True
    return torch.where(kept.any(-1), first, probs.argmax(-1))


GROUPED_DECODE_ATTENTION = "pobench_grouped_decode"


def grouped_decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """SDPA for one query token with each key/value head's group of query heads stacked as queries, so the cache is
    read as it is stored, not copied once per query head (`repeat_kv`). transformers' sdpa does this for one token
    too, but not while dynamo traces (it copies there), and the compiled decode step is traced: at batch 64 those
    copies are about 2 GB a token for a 0.5B model with a 384-slot cache. Anything else goes to transformers' sdpa.
    Same inputs and output layout as any transformers attention function."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    groups = getattr(module, "num_key_value_groups", 1)
    rows, heads, tokens, dim = query.shape
    if tokens != 1 or groups == 1 or kwargs.get("position_bias") is not None or (
            attention_mask is not None and attention_mask.shape[1] != 1):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    grouped = query.reshape(rows, heads // groups, groups, dim)        # head h attends with key/value head h // groups
    out = F.scaled_dot_product_attention(grouped, key, value, attn_mask=attention_mask, scale=scaling)
    return out.reshape(rows, heads, 1, value.shape[-1]).transpose(1, 2), None


@contextlib.contextmanager
def grouped_decode_attention_in(config):
    """While decode steps run (and are captured or compiled), a model on sdpa attends with
    grouped_decode_attention; its configuration is restored after, so training and prefill keep sdpa."""
    if config._attn_implementation != "sdpa":
        yield
        return
    from transformers import AttentionInterface
    AttentionInterface.register(GROUPED_DECODE_ATTENTION, grouped_decode_attention)
    config._attn_implementation = GROUPED_DECODE_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"


def _mask_value(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).min


class StaticDecoder:
    """Decodes batches of left-padded prompts of one shape (rows x prompt width) with a static cache.

    One decoder per shape: the CUDA graph is captured on the first call and replayed by later calls (the weights
    are read in place, so an optimizer step between calls is seen, as online rounds need)."""

    def __init__(self, model, rows: int, prompt_width: int, max_new_tokens: int, eos_ids: list[int], pad_id: int,
                 temperature: float, top_p: float, use_graph: bool | None = None, check_every: int = 32,
                 top_p_method: str | None = None, compile_sampling: bool = False, compile_step: bool = False):
        from transformers import StaticCache

        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
        self.rows, self.width, self.max_new = rows, prompt_width, max_new_tokens
        self.temperature, self.top_p = temperature, top_p
        # Compiled, the bisection's masked sums fuse into one kernel per halving (eager, it was slower than a sort).
        self._sample = torch.compile(sample_tokens, dynamic=False) if compile_sampling else sample_tokens
        self.check_every = check_every
        # compile_step: torch.compile the whole decode step - every layer unrolled, the sampling and the bookkeeping
        # - into one graph (it traces without a graph break; tested), captured in the CUDA graph as before. This
        # fuses the ~400 small kernels a step launches (norms, rotary, activations, the nucleus search) that bound
        # decoding speed at batch 64 (H200, 0.5B model: 24.4k new tokens/s against 13.5k for the graph of eager
        # kernels, benchmarks/GPU.md). Compiling each layer instead did not work: dynamo recompiles per layer.
        # Costs one compilation per decoder shape (27-63 s there, GPU.md), so it is opt-in (model.compile_decoding).
        self._step = torch.compile(self._decode_step, fullgraph=True, dynamic=False) if compile_step else self._decode_step
        self.compile_step = compile_step
        self.use_graph = self.device.type == "cuda" if use_graph is None else use_graph
        # "select" asks the host which rows need a full sort: fine for eager steps, impossible inside a graph.
        traced = self.use_graph or compile_step or compile_sampling
        self.top_p_method = top_p_method or ("sort" if traced else "select")
        if self.top_p_method not in TOP_P_METHODS:
            raise ValueError(f"top_p method {self.top_p_method!r}: one of {', '.join(TOP_P_METHODS)}")
        if self.top_p_method == "select" and traced:
            raise ValueError("top_p_method='select' synchronises with the host: not inside a CUDA graph or a "
                             "compiled step (use 'sort', 'bisect', 'kary', 'radix' or 'reject')")
        self.capacity = prompt_width + max_new_tokens
        config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
        self.config = config
        self.cache = StaticCache(config=config, max_cache_len=self.capacity)
        dev = self.device
        # State the decode step reads and advances in place (static addresses: the graph holds these pointers).
        self.token = torch.zeros(rows, 1, dtype=torch.long, device=dev)
        self.position = torch.zeros(rows, 1, dtype=torch.long, device=dev)
        self.cursor = torch.zeros(1, dtype=torch.long, device=dev)          # cache slot of the token being fed
        self.mask = torch.full((rows, 1, 1, self.capacity), _mask_value(self.dtype), dtype=self.dtype, device=dev)
        self.done = torch.zeros(rows, dtype=torch.bool, device=dev)
        self.next_token = torch.zeros(rows, dtype=torch.long, device=dev)
        self.eos = torch.tensor(sorted(set(eos_ids)) or [-1], dtype=torch.long, device=dev)
        self.pad = torch.tensor(pad_id, dtype=torch.long, device=dev)
        # sampling: row r's token at step t uses noise keys[r, t] (filled per call); `step` counts emitted tokens
        self.keys = torch.zeros(rows, max_new_tokens, dtype=torch.long, device=dev) if temperature > 0 else None
        self.step = torch.zeros(1, dtype=torch.long, device=dev)
        self.graph = None

    # -- the two phases ---------------------------------------------------------------------------------------
    def _prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Runs the prompts through the model, filling cache slots [0, width); returns the last position's logits."""
        valid = attention_mask.bool()
        q = torch.arange(self.width, device=self.device)
        causal = q[None, :, None] >= q[None, None, :]
        # A padding query attends to itself only, so its (unused) output stays finite: an all-masked row would be
        # NaN in SDPA, and NaN values in the cache poison later queries even at zero weight.
        allowed = causal & (valid[:, None, :] | torch.eye(self.width, dtype=torch.bool, device=self.device)[None])
        mask = torch.full((self.rows, 1, self.width, self.capacity), _mask_value(self.dtype), dtype=self.dtype,
                          device=self.device)
        mask[:, 0, :, :self.width].masked_fill_(allowed, 0.0)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=self.cache,
                         use_cache=True, logits_to_keep=1)
        # Decode state: every valid prompt slot visible; the next token goes into slot `width`.
        self.mask.fill_(_mask_value(self.dtype))
        self.mask[:, 0, 0, :self.width].masked_fill_(valid, 0.0)
        self.position.copy_(attention_mask.long().sum(-1, keepdim=True))
        self.cursor.fill_(self.width)
        return out.logits[:, -1]

    def _emit(self, logits: torch.Tensor) -> None:
        """Sample the next token, keep finished rows at padding, and make it the next step's input."""
        keys = None if self.keys is None else self.keys.index_select(1, self.step).squeeze(1)
        token = self._sample(logits, self.temperature, self.top_p, self.top_p_method, keys)
        self.step.add_(1)
        token = torch.where(self.done, self.pad, token)
        self.done |= (token[:, None] == self.eos[None, :]).any(-1)   # not torch.isin: no sync inside a graph
        self.next_token.copy_(token)
        self.token.copy_(token[:, None])

    def _decode_step(self) -> None:
        self.mask.index_fill_(3, self.cursor, 0.0)
        out = self.model(input_ids=self.token, attention_mask=self.mask, position_ids=self.position,
                         cache=self.cache, use_cache=True, logits_to_keep=1)
        self._emit(out.logits[:, -1])
        self.position.add_(1)
        self.cursor.add_(1)

    def _run_step(self) -> None:
        with grouped_decode_attention_in(self.config):
            if not self.compile_step:
                return self._decode_step()
            # Every decoder (one per prompt shape) is a new compilation of the same code; dynamo's default limit of
            # 8 per code object would silently send later shapes back to eager steps.
            with torch._dynamo.config.patch(recompile_limit=max(64, torch._dynamo.config.recompile_limit)):
                self._step()

    def _capture(self) -> None:
        """Capture `_decode_step` as a CUDA graph. Warm-up runs happen on a side stream first (as CUDA graph capture
        requires); they are real decode steps, so the caller counts them as emitted tokens."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._run_step()
        self.graph = graph

    # -- public -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 keys: torch.Tensor | None = None) -> torch.Tensor:
        """[rows, width] left-padded prompts -> [rows, max_new_tokens] new token ids (pad after EOS). When sampling,
        `keys` [rows, max_new_tokens] (integers in [0, 2^32)) decide the draws (default: from the global torch stream)."""
        if tuple(input_ids.shape) != (self.rows, self.width):
            raise ValueError(f"decoder built for {self.rows}x{self.width} prompts, got {tuple(input_ids.shape)}")
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        self.cache.reset()
        self.done.zero_()
        self.step.zero_()
        if self.keys is not None:
            self.keys.copy_(torch.randint(0, 1 << 32, self.keys.shape) if keys is None else keys)
        out = torch.full((self.rows, self.max_new), int(self.pad), dtype=torch.long, device=self.device)
        self._emit(self._prefill(input_ids, attention_mask))
        out[:, 0] = self.next_token
        step = 1
        if self.use_graph and self.graph is None:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(min(2, self.max_new - step)):      # warm-up: allocator, cuBLAS handles, kernels
                    self._run_step()
                    out[:, step] = self.next_token
                    step += 1
            torch.cuda.current_stream().wait_stream(side)
            if step < self.max_new:
                self._capture()
        while step < self.max_new:
            if self.graph is not None:
                self.graph.replay()
            else:
                self._run_step()
            out[:, step] = self.next_token
            step += 1
            if step % self.check_every == 0 and bool(self.done.all()):
                break
        return out

    def release(self) -> None:
        """Give back the cache and the graph's memory now: the compiled step and dynamo's caches may keep this
        object itself alive."""
        if self.graph is not None:
            self.graph.reset()
        self.graph = self.cache = None
        self.token = self.position = self.mask = self.done = self.next_token = self.keys = None


class DecoderPool:
    """Keeps the decoders of the last few shapes, so repeated rounds (OnMC-PO refreshes, evaluation) reuse
    their captured graphs (and compiled steps: 27-63 s each on an H200) instead of capturing again.

    A decoder holds its KV cache and, on CUDA, its graph's memory between calls, while training runs in between:
    the pool evicts the least recently used decoder first (a hot shape stays), and where the caller gives a budget
    it keeps the decoders' estimated bytes, the new one's included, within it."""

    def __init__(self, keep: int = 4):
        self.keep = keep
        self.decoders: collections.OrderedDict[tuple, StaticDecoder] = collections.OrderedDict()   # LRU first
        self.sizes: dict[tuple, int] = {}

    def held_bytes(self) -> int:
        """What the retained decoders hold, as estimated by their callers."""
        return sum(self.sizes.values())

    def get(self, model, rows: int, width: int, max_new: int, eos_ids, pad_id: int, temperature: float,
            top_p: float, compile_step: bool = False, top_p_method: str | None = None, need_bytes: int = 0,
            budget_bytes: int | None = None) -> StaticDecoder:
        """The decoder of this shape, built where missing. `need_bytes`: a new decoder's estimated memory;
        `budget_bytes`: what all retained decoders may hold together (None: no limit but `keep`)."""
        key = (id(model), rows, width, max_new, tuple(eos_ids), pad_id, temperature, top_p, compile_step, top_p_method)
        if key in self.decoders:
            self.decoders.move_to_end(key)
            return self.decoders[key]
        while self.decoders and (len(self.decoders) >= self.keep or (
                budget_bytes is not None and self.held_bytes() + need_bytes > budget_bytes)):
            self._evict(next(iter(self.decoders)))
        self.decoders[key] = StaticDecoder(model, rows, width, max_new, list(eos_ids), pad_id, temperature, top_p,
                                           compile_step=compile_step, top_p_method=top_p_method)
        self.sizes[key] = need_bytes
        return self.decoders[key]

    def _evict(self, key: tuple) -> None:
        self.sizes.pop(key)
        self.decoders.pop(key).release()
