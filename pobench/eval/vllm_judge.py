"""The vLLM decoder of `alpaca_eval:local` (eval.judge_decoder vllm; CUDA only, `pip install 'pobench[vllm]'`).

It answers the same judge prompts as the transformers `LocalJudgeDecoder`, encoded by the same code
(`llm_judge.encode_judge_prompt`: the judge's chat template, as token ids, so vLLM neither re-tokenizes nor adds
a BOS), and returns the same thing: the log-probabilities of the choice tokens 'm' and 'M' at the next position,
in the shape of OpenAI's chat logprobs.

vLLM returns only the top-k log-probabilities of a generated position (`SamplingParams(logprobs=k)`, k at most
the engine's `max_logprobs`, 20 by default), so a choice token can be missing. Restricting the vocabulary
(`allowed_token_ids`) would not help: whether the returned log-probabilities are taken before or after that
restriction depends on the vLLM version and its `logprobs_mode`. So, in two passes:

1. every prompt: one greedy token (temperature 0, no penalties, no top-k/top-p) with `logprobs=k`. These are
   log_softmax of the model's own logits over the whole vocabulary (vLLM V1 computes them from the raw logits,
   `logprobs_mode` raw_logprobs by default; V0 after temperature and penalties, which greedy decoding leaves at 1
   and none), so a choice token in the top k has its exact log-probability;
2. only the (prompt, choice token) pairs missing from the top k: the prompt with that token appended, with
   `prompt_logprobs=0`, which returns the log-probability of each prompt token given the tokens before it,
   always computed from the raw logits; the last one is log p(token | prompt). vLLM skips its prefix cache for
   such requests, so this pass costs a full prefill each: it runs only for what pass 1 missed.

Either way each choice token's log-probability is the one under the model's unrestricted next-token
distribution, as the transformers decoder computes it, up to the dtype: the transformers decoder runs float32,
vLLM its `dtype` (default auto: the checkpoint's, float16 for a float32 checkpoint; VLLMJudgeDecoder(dtype=...)
or build_judge(..., vllm_options={"dtype": "float32"}) to match). vLLM is imported inside the constructor only;
building the requests and reading the outputs are plain functions that the tests exercise on every machine.
"""
from __future__ import annotations

import time

from pobench.errors import PobenchError
from pobench.eval.llm_judge import choice_token_ids, completions_result, encode_judge_prompt, openai_entry

TOP_LOGPROBS = 20   # vLLM's default max_logprobs: the most a request may ask for without raising it


def build_judge_requests(prompt_ids: list[list[int]], top_logprobs: int = TOP_LOGPROBS) -> tuple[list[dict], dict]:
    """Pass 1: (prompts, SamplingParams kwargs) for `LLM.generate`: one greedy token and the top-k
    log-probabilities of its position, for token-id prompts."""
    prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]
    return prompts, dict(n=1, max_tokens=1, temperature=0.0, logprobs=int(top_logprobs))


def read_choice_logprobs(outputs, choice_ids: dict[str, int]) -> tuple[list[dict[str, float]], list[tuple[int, str]]]:
    """Pass 1's RequestOutputs (one per prompt, in prompt order) -> per prompt {choice token: log-prob} for the
    choice tokens in the returned top-k, and the (prompt index, choice token) pairs that were not."""
    found, missing = [], []
    for i, request in enumerate(outputs):
        completion = request.outputs[0]
        position = completion.logprobs[0] if completion.logprobs else {}
        row = {}
        for token, tid in choice_ids.items():
            if tid in position:
                row[token] = float(position[tid].logprob)
            else:
                missing.append((i, token))
        found.append(row)
    return found, missing


def build_fallback_requests(prompt_ids: list[list[int]], missing: list[tuple[int, str]],
                            choice_ids: dict[str, int]) -> tuple[list[dict], dict]:
    """Pass 2: each missing (prompt, choice token) as the prompt with the token appended, asking for the
    log-probability of every prompt token (`prompt_logprobs=0`: the actual token's only)."""
    prompts = [{"prompt_token_ids": list(prompt_ids[i]) + [choice_ids[token]]} for i, token in missing]
    return prompts, dict(n=1, max_tokens=1, temperature=0.0, prompt_logprobs=0)


def read_fallback_logprobs(outputs, missing: list[tuple[int, str]],
                           choice_ids: dict[str, int]) -> dict[tuple[int, str], float]:
    """Pass 2's RequestOutputs -> {(prompt index, choice token): log p(token | prompt)}, read from the last
    entry of `prompt_logprobs` (its first entry is None: the first prompt token has no context)."""
    result = {}
    for (i, token), request in zip(missing, outputs):
        entries = request.prompt_logprobs
        last = entries[len(entries) - 1] if entries else None   # by position: a list or vLLM's FlatLogprobs
        tid = choice_ids[token]
        if not last or tid not in last:
            raise RuntimeError(f"vLLM returned no prompt log-probability for the choice token '{token}'")
        result[(i, token)] = float(last[tid].logprob)
    return result


def choice_logprobs(generate, prompt_ids: list[list[int]], choice_ids: dict[str, int],
                    top_logprobs: int = TOP_LOGPROBS) -> tuple[list[dict[str, float]], int]:
    """Both passes: per prompt {choice token: log-prob} for every choice token (in CHOICE_TOKENS order), and
    how many (prompt, token) pairs needed pass 2. `generate(prompts, sampling_kwargs)` runs vLLM."""
    if not prompt_ids:
        return [], 0
    found, missing = read_choice_logprobs(generate(*build_judge_requests(prompt_ids, top_logprobs)), choice_ids)
    if missing:
        extra = read_fallback_logprobs(generate(*build_fallback_requests(prompt_ids, missing, choice_ids)),
                                       missing, choice_ids)
        for (i, token), lp in extra.items():
            found[i][token] = lp
    return [{t: row[t] for t in choice_ids} for row in found], len(missing)


def model_window(path: str, max_length: int) -> int:
    """The longest judge prompt, in tokens: max_length, within the model's positions less the two that pass 2
    needs (the appended choice token and the one generated token)."""
    from transformers import AutoConfig
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception:   # vLLM reports an unreadable config itself, at load
        return max_length
    names = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
    limit = next((getattr(config, n) for n in names if getattr(config, n, None)), None)
    return min(max_length, limit - 2) if limit else max_length


def engine_dtype(llm, configured: str) -> str:
    """The dtype vLLM runs in: `auto` is resolved by the engine (a float32 checkpoint runs in float16), and the judge's
    identity is the dtype its verdicts came from. The configured one where the engine does not say."""
    try:
        return str(llm.llm_engine.model_config.dtype).removeprefix("torch.")
    except AttributeError:
        return configured


class VLLMJudgeDecoder:
    """An alpaca_eval decoder (`fn_completions`) backed by vLLM's offline `LLM`; the call contract of
    `LocalJudgeDecoder` (see the module docstring for how the log-probabilities are obtained)."""
    kind = "vllm"

    def __init__(self, model: str = "smollm2-135m-instruct", gpu_memory_utilization: float = 0.5,
                 dtype: str = "auto", max_length: int = 2048, top_logprobs: int = TOP_LOGPROBS, engine=None,
                 **llm_kwargs):
        """`engine`: a callable (prompts, sampling kwargs) -> RequestOutputs that stands in for vLLM (tests); None
        loads vLLM's `LLM` on the GPU, at gpu_memory_utilization of its memory."""
        if engine is None:   # before any loading: a missing vLLM or GPU is the user's to fix, at once
            try:
                import vllm
            except ImportError:
                raise PobenchError("eval.judge_decoder vllm: vllm is not installed: pip install 'pobench[vllm]' "
                                   "(CUDA only), or set eval.judge_decoder transformers") from None
            import torch
            if not torch.cuda.is_available():
                raise PobenchError("eval.judge_decoder vllm: vLLM needs a CUDA GPU and none is available here "
                                   "(set eval.judge_decoder transformers)")
        from pobench.models import load_tokenizer, model_fingerprint, resolve_model_path
        self.spec, self.dtype, self.top_logprobs = model, dtype, int(top_logprobs)
        self.path = resolve_model_path(model)
        self.tokenizer = load_tokenizer(self.path)   # pobench's tokenizer: the ids the transformers decoder uses
        self.choice_ids = choice_token_ids(self.tokenizer, model)
        self.max_length = model_window(self.path, max_length)
        self.fingerprint = model_fingerprint(self.path)
        self.cache_key = f"vllm:{self.fingerprint}:{dtype}"
        self.second_pass = 0
        if engine is not None:
            self.generate, self.engine_version = engine, "test double"
            return
        from vllm import LLM, SamplingParams

        self.engine_version = getattr(vllm, "__version__", "unknown")
        extra = {"max_logprobs": self.top_logprobs} if self.top_logprobs > TOP_LOGPROBS else {}
        self.llm = LLM(model=self.path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                       max_model_len=self.max_length + 2, enable_prefix_caching=True, **extra, **llm_kwargs)
        self.dtype = engine_dtype(self.llm, dtype)
        self.generate = lambda prompts, kw: self.llm.generate(prompts, SamplingParams(**kw), use_tqdm=False)

    def encode(self, prompt: str) -> list[int]:
        return encode_judge_prompt(self.tokenizer, prompt, self.max_length)

    def __call__(self, prompts, **_decoding_kwargs) -> dict:
        started = time.time()
        rows = [self.encode(p) for p in prompts]
        logprobs, second = choice_logprobs(self.generate, rows, self.choice_ids, self.top_logprobs)
        self.second_pass += second
        entries = [openai_entry(lp, len(row)) for lp, row in zip(logprobs, rows)]
        return completions_result(entries, time.time() - started)

    def describe(self) -> dict:
        return {"decoder": f"pobench VLLMJudgeDecoder (vllm {self.engine_version})", "judge_decoder": self.kind,
                "model": self.spec, "model_path": self.path, "model_fingerprint": self.fingerprint,
                "dtype": self.dtype, "top_logprobs": self.top_logprobs,
                "choice_logprobs": "exact next-token log-probs: top-k of one greedy step, or prompt_logprobs of "
                                   "prompt + token for a token outside the top k",
                "second_pass_tokens": self.second_pass}
