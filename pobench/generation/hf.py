"""The default backend: batched `model.generate` from transformers, on whatever device the model is on.

Works on a plain causal LM or a peft-wrapped one, in the middle of training: the model is put in eval mode
for generation and handed back in the mode it came in, and the global torch RNG is left untouched.

Seeding is per (prompt, sample): each row draws its tokens from its own random stream, seeded by the call's seed,
the sample's index and the prompt's tokens (`row_seed`), not by the batch it lands in, its position there or the
other prompts of the call. A prompt therefore gets the same samples generated alone, in any batch or on any rank of a
sharded run, up to float rounding of the logits across batch shapes: a draw flips where its uniform number falls
within that rounding of a boundary of the nucleus's CDF (rare, likeliest on flat distributions; after a flip the
row's continuation differs too).
Identical prompts in one call get identical samples.
"""
from __future__ import annotations

import contextlib
import hashlib

import torch

from pobench.generation import Completion, GenerationConfig, rows_per_call, truncate_at_eos


def eos_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS plus every EOS id of the model's generation config.

    Both are needed: chat models end an assistant turn with a token (<|im_end|> for SmolLM2, <|eot_id|> for
    Llama 3) that only one of the two may name, and a completion must stop at whichever comes first."""
    ids: set[int] = set()
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_cfg = getattr(model, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None) if gen_cfg is not None else None
    if eos is not None:
        ids.update(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
    return sorted(ids)


def left_pad(rows: list[list[int]], pad_id: int, multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Left padding puts every prompt's last token in the last column, so the first generated token of every
    row is predicted from the same position and new tokens are simply appended on the right. `multiple` rounds
    the width up, so that the static-cache decoder meets few distinct shapes (one captured graph each)."""
    width = -(-max(len(r) for r in rows) // multiple) * multiple
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            input_ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            attention_mask[i, width - len(r):] = 1
    return input_ids, attention_mask


@contextlib.contextmanager
def _plain_generation_config(model):
    """`model.generate` with transformers' defaults underneath the settings pobench passes, not the checkpoint's
    generation_config.json: one that ships suppress_tokens, bad_words_ids, no_repeat_ngram_size,
    forced_eos_token_id or the like would otherwise change what the plain path draws (the static decoder and vLLM
    apply none of them), and forced_eos_token_id would mark samples cut at the limit as finished."""
    from transformers import GenerationConfig as HFGenerationConfig
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    saved = base.generation_config
    base.generation_config = HFGenerationConfig()
    try:
        yield
    finally:
        base.generation_config = saved


def row_seed(prompt: list[int], sample: int, seed: int) -> int:
    """The seed of one (prompt, sample) row's random stream: a hash of the call's seed, the sample's index and the
    prompt's token ids."""
    text = f"{seed}|{sample}|{','.join(map(str, prompt))}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def row_keys(prompt_ids: list[list[int]], rows: list[tuple[int, int]], seed: int, steps: int) -> torch.Tensor:
    """[len(rows), steps] int64 noise keys in [0, 2^32): row (p, s)'s stream, one key per decoding step, from
    from which static.sample_tokens takes that step's uniform number (key_uniforms)."""
    out = torch.empty(len(rows), steps, dtype=torch.long)
    for i, (p, s) in enumerate(rows):
        gen = torch.Generator().manual_seed(row_seed(prompt_ids[p], s, seed))
        out[i] = torch.randint(0, 1 << 32, (steps,), generator=gen)
    return out


def prompt_rounding(cfg: GenerationConfig) -> int:
    """The fast path pads prompts to a multiple of this: each width is a decoder shape, and compiled decoding
    compiles every shape anew (27-63 s on an H200), so there widths are rounded coarser and a long generation meets
    few shapes."""
    return 128 if cfg.compile else 16


def fast_path_capacity(prompt_ids: list[list[int]], cfg: GenerationConfig) -> int:
    """Cache slots the static decoder needs for a call: its widest prompt as the decoder pads it, plus
    max_new_tokens (each chunk's prompts are no wider)."""
    return -(-max(map(len, prompt_ids)) // prompt_rounding(cfg)) * prompt_rounding(cfg) + cfg.max_new_tokens


CPU_BATCH_ROWS = 64      # off CUDA: SmolLM2-135M on 2 cores decoded 1.68x the tokens/s of 16 rows, and 128 no more
                         # (benchmarks/cpu_generate.py --batch-sweep)
MAX_BATCH_ROWS = 256     # on CUDA: on an H200 batch 256 decoded 2.1x the new tokens/s of batch 64 (benchmarks/GPU.md)
MEMORY_SHARE = 0.25      # on CUDA: the share of free GPU memory a decode batch may take


def decode_bytes_per_row(config, dtype_bytes: int, capacity: int, sampler_bytes: int = 32) -> int:
    """GPU memory one decoding row holds: its KV cache (layers x keys and values x KV heads x head dim x
    `capacity` positions) plus the sampler's buffers over the vocabulary (logits, probabilities, sorted values
    and their int64 indices, the float64 cumulative sum: about 32 bytes per entry; rejection draws hold a float64
    copy, int64 masses, a try's int64 terms and the cumulative sum twice: about 48)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv = config.num_hidden_layers * 2 * kv_heads * head_dim * dtype_bytes * capacity
    return kv + sampler_bytes * config.vocab_size


def auto_batch_rows(rows: int, device_type: str, bytes_per_row: int, free_bytes: int) -> int:
    """batch_size 0: off CUDA, CPU_BATCH_ROWS. On CUDA, all `rows` of the call (a round's prompts x samples in one
    batch: decoding a small model is bound by kernel launches, so a wider step costs little more; on an H200 a
    step over 256 rows took 1.9x the time of one over 64), at most MAX_BATCH_ROWS, and no more than MEMORY_SHARE of
    the free memory holds."""
    if device_type != "cuda":
        return min(rows, CPU_BATCH_ROWS) or 1
    fits = int(MEMORY_SHARE * free_bytes) // max(1, bytes_per_row)
    return max(1, min(rows, MAX_BATCH_ROWS, fits))


class _RowSampler:
    """A logits processor for `model.generate` in greedy mode that draws each row's token with the row's own noise
    for the step (static.sample_tokens) and leaves only that token finite, so generate's argmax takes it."""

    def __init__(self, keys: torch.Tensor, prompt_width: int, temperature: float, top_p: float, method: str):
        self.keys, self.width, self.temperature, self.top_p = keys, prompt_width, temperature, top_p
        self.method = "select" if method == "auto" else method     # all but "reject" draw the same tokens

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        from pobench.generation.static import sample_tokens
        step = input_ids.shape[1] - self.width
        token = sample_tokens(scores, self.temperature, self.top_p, self.method, self.keys[:, step])
        return torch.full_like(scores, float("-inf")).scatter_(-1, token[:, None].to(scores.device), 0.0)


class TransformersBackend:
    name = "transformers"
    seeds_each_prompt = True   # per-(prompt, sample) streams, see the module docstring (read by sampling/online.py)

    def __init__(self, model, tokenizer, ranks=None, **_ignored):
        """`ranks` (distributed.GenerationRanks): given where the model's weights are sharded across processes, so
        that every forward is a collective; generation then runs in lockstep with the other ranks (see generate)."""
        if model is None or tokenizer is None:
            from pobench.errors import PobenchError
            raise PobenchError("the transformers generation backend needs a loaded model and its tokenizer")
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_token_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else (self.eos_ids[0] if self.eos_ids else 0)
        self._decoders = None   # static-cache decoders by shape, built on first fast call
        self.ranks = ranks
        self.batch_rows_used: set[int] = set()   # rows per forward of its calls (batch_size 0: auto), for eval.json

    def uses_fast_path(self, cfg: GenerationConfig, prompt_ids: list[list[int]] | None = None) -> bool:
        """Whether generate() takes the static decoder for these prompts (None: not known yet, so a model with a
        sliding window is refused). fast="on" where the decoder cannot serve the call is a PobenchError: the
        user asked for that path."""
        from pobench.generation import static
        if cfg.fast == "off":
            return False
        if cfg.fast == "auto" and self._device().type != "cuda":
            return False
        if self.ranks is not None:
            # the decoder stops when its own rows are done and would capture the weight gathers in a CUDA graph
            reason = ("the model's weights are sharded across processes (FSDP, ZeRO-3), where every forward is a "
                      "collective that all ranks must run alike")
        else:
            capacity = None if not prompt_ids else fast_path_capacity(prompt_ids, cfg)
            reason = static.unsupported_reason(self.model, capacity, compiled=cfg.compile)
        if reason is not None and cfg.fast == "on":
            from pobench.errors import PobenchError
            raise PobenchError(f"generation fast='on': the static-cache decoder cannot run this model: {reason} "
                               f"(use fast='auto' or 'off')")
        return reason is None

    def auto_batch_rows(self, prompt_ids: list[list[int]], cfg: GenerationConfig) -> int:
        """Rows per batch for batch_size 0 (see auto_batch_rows), sized for the call's longest prompt."""
        rows = len(prompt_ids) * cfg.n
        device = self._device()
        if device.type != "cuda":
            return auto_batch_rows(rows, device.type, 0, 0)
        # the pool's decoders count as free: it gives them back where a new shape needs the room (_decode_static),
        # and sizing around them would make new shapes, hence more decoders
        held = self._decoders.held_bytes() if self._decoders is not None else 0
        return auto_batch_rows(rows, device.type, self._bytes_per_row(fast_path_capacity(prompt_ids, cfg), cfg),
                               self._free_bytes(device) + held)

    def _free_bytes(self, device: torch.device) -> int:
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)   # torch's cached blocks

    def _bytes_per_row(self, capacity: int, cfg: GenerationConfig) -> int:
        dtype = next(p for p in self.model.parameters() if p.is_floating_point()).dtype
        config = (self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model).config
        return decode_bytes_per_row(config, torch.finfo(dtype).bits // 8, capacity,
                                    48 if cfg.top_p_method == "reject" else 32)

    def _device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    def _sampling_kwargs(self, cfg: GenerationConfig) -> dict:
        """The settings `generate` runs with, on top of a default configuration (_plain_generation_config): the
        result does not depend on a checkpoint's generation_config.json."""
        kw = dict(max_new_tokens=cfg.max_new_tokens, min_new_tokens=0, eos_token_id=self.eos_ids,
                  pad_token_id=self.pad_id, use_cache=True, num_beams=1, repetition_penalty=1.0)
        if self.ranks is not None:
            # every rank keeps stepping until all ranks are done; transformers infers this for ZeRO-3 but not for
            # the module inside an FSDP1 wrapper, which is what pobench generates from
            kw["synced_gpus"] = True
        # Sampling (temperature, then top-p) happens in _RowSampler, each row with its own noise; generate itself
        # runs greedy over the one token left finite, so transformers' warpers (and its default top_k=50, which
        # vLLM and SimPO's recipe do not apply) never run.
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], cfg: GenerationConfig | None = None) -> list[list[Completion]]:
        """n completions per prompt, in prompt order.

        All prompt x sample rows are generated together in chunks of `batch_size` (0: auto_batch_rows), longest
        prompts first so that a chunk holds prompts of similar length (less padding to compute on). Seeding: per
        row (see the module docstring), so the same seed and prompt give the same samples whatever the batching;
        the training run's own random stream (data order, dropout) is not moved by generating."""
        cfg = cfg or GenerationConfig()
        if not prompt_ids:
            return []
        rows = [(p, s) for p in range(len(prompt_ids)) for s in range(cfg.n)]
        rows.sort(key=lambda r: -len(prompt_ids[r[0]]))   # stable: ties keep prompt-major order
        device = self._device()
        kwargs = self._sampling_kwargs(cfg)
        fast = self.uses_fast_path(cfg, prompt_ids)
        sampling = cfg.temperature > 0
        keys = row_keys(prompt_ids, rows, cfg.seed, cfg.max_new_tokens).to(device) if sampling else None
        out: list[list[Completion | None]] = [[None] * cfg.n for _ in prompt_ids]
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                batch = rows_per_call(self, prompt_ids, cfg)
                if self.ranks is not None:   # one chunk size for all (auto sizing reads each GPU's own free memory)
                    batch = self.ranks.min(batch)
                self.batch_rows_used.add(min(batch, len(rows)))
                starts = list(range(0, len(rows), batch))
                if self.ranks is not None:   # as many chunks as the busiest rank: a repeat of the last one, unused
                    starts += starts[-1:] * (self.ranks.max(len(starts)) - len(starts))
                for n, start in enumerate(starts):
                    chunk = rows[start:start + batch]
                    chunk_keys = keys[start:start + len(chunk)] if sampling else None
                    if fast:
                        new_tokens = self._decode_static([prompt_ids[p] for p, _ in chunk], cfg, chunk_keys).tolist()
                    else:
                        from transformers import LogitsProcessorList
                        input_ids, attention_mask = left_pad([prompt_ids[p] for p, _ in chunk], self.pad_id)
                        processors = LogitsProcessorList([_RowSampler(chunk_keys, input_ids.shape[1],
                                                                      cfg.temperature, cfg.top_p,
                                                                      cfg.top_p_method)] if sampling else [])
                        with _plain_generation_config(self.model):
                            sequences = self.model.generate(input_ids=input_ids.to(device),
                                                            attention_mask=attention_mask.to(device),
                                                            logits_processor=processors, **kwargs)
                        new_tokens = sequences[:, input_ids.shape[1]:].tolist()
                    if n > 0 and start == starts[n - 1]:
                        continue   # a repeat that kept this rank in step with the others
                    for (p, s), ids in zip(chunk, new_tokens):
                        out[p][s] = self._completion(ids)
        finally:
            self.model.train(was_training)
        return out  # type: ignore[return-value]

    def _decode_static(self, rows: list[list[int]], cfg: GenerationConfig,
                       keys: torch.Tensor | None = None) -> torch.Tensor:
        from pobench.generation.static import DecoderPool
        if self._decoders is None:
            self._decoders = DecoderPool()
        input_ids, attention_mask = left_pad(rows, self.pad_id, multiple=prompt_rounding(cfg))
        need, budget = 0, None
        device = self._device()
        if device.type == "cuda":   # the pool's decoders and the new one, within auto_batch_rows' share
            need = len(rows) * self._bytes_per_row(input_ids.shape[1] + cfg.max_new_tokens, cfg)
            budget = int(MEMORY_SHARE * (self._free_bytes(device) + self._decoders.held_bytes()))
        decoder = self._decoders.get(self.model, len(rows), input_ids.shape[1], cfg.max_new_tokens, self.eos_ids,
                                     self.pad_id, cfg.temperature, cfg.top_p, compile_step=cfg.compile,
                                     # "select" asks the host, which a CUDA graph or compiled step cannot: there
                                     # the decoder picks the sort, whose nucleus is the same
                                     top_p_method=None if cfg.top_p_method in ("auto", "select") else cfg.top_p_method,
                                     need_bytes=need, budget_bytes=budget)
        return decoder.generate(input_ids, attention_mask, keys)

    def _completion(self, ids: list[int]) -> Completion:
        kept, finished = truncate_at_eos(ids, self.eos_ids)
        body = kept[:-1] if finished else kept
        return Completion(self.tokenizer.decode(body, skip_special_tokens=True), kept, finished)
