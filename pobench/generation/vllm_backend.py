"""The vLLM backend (CUDA only, `pip install 'pobench[vllm]'`): offline `LLM.generate` on token-id prompts.

Generation dominates the cost of OnMC-PO, RSO and evaluation at scale, and vLLM's paged KV cache and
continuous batching decode several times faster than HF `generate`. vLLM conflicts with the CPU stack, so it
is imported inside the constructor only, and the two pieces of logic that can go wrong without a GPU, building
the requests and reading the outputs, are plain functions that the tests exercise on every machine.
"""
from __future__ import annotations

import copy
import gc
import os
import tempfile

from pobench.errors import PobenchError
from pobench.generation import Completion, GenerationConfig, truncate_at_eos

VLLM_SEEDS = 1 << 62      # a request's seed, and its n children's (seed + child index), stay below 2^63


def build_requests(prompt_ids: list[list[int]], cfg: GenerationConfig, eos_ids=()) -> tuple[list[dict], dict]:
    """(prompts, sampling kwargs) for `LLM.generate`.

    Prompts are passed as token ids (vLLM's TokensPrompt shape) so that vLLM neither re-tokenizes nor adds a
    BOS: the ids the trainer scores are the ids the model was conditioned on. The EOS ids go in as stop
    tokens so that vLLM stops where the transformers backend does, whatever the checkpoint's
    generation_config says. top_k=-1 (off) is written out because it is part of the recipe."""
    prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]
    kwargs = dict(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p if cfg.temperature > 0 else 1.0,
                  top_k=-1, max_tokens=cfg.max_new_tokens, seed=cfg.seed)
    if eos_ids:
        kwargs["stop_token_ids"] = sorted(int(e) for e in eos_ids)
    return prompts, kwargs


def per_prompt_sampling(kwargs: dict, prompt_ids: list[list[int]]) -> list[dict]:
    """One sampling-kwargs dict per prompt, each with its own seed.

    vLLM seeds each request's sampler with its own seed, and fans n > 1 out into children seeded
    seed + child index. With one shared seed every prompt would draw the same random numbers (correlated
    candidate pools). Each prompt's seed is a hash of the call's seed and the prompt's tokens (hf.row_seed, as the
    transformers backend seeds its rows), so a prompt draws the same samples whichever call, chunk or batch it
    is in (a position in the call gave prompts of different chunks one seed), and the outputs do not depend on
    how vLLM schedules the requests."""
    from pobench.generation.hf import row_seed
    seed = int(kwargs["seed"])
    return [{**kwargs, "seed": row_seed(p, 0, seed) % VLLM_SEEDS} for p in prompt_ids]


def parse_outputs(outputs, eos_ids) -> list[list[Completion]]:
    """vLLM RequestOutputs (one per prompt, in prompt order) -> Completions.

    finish_reason "stop" means an EOS or stop token ended the sequence ("length" means max_tokens). vLLM keeps
    the EOS token in `token_ids` but not in `text`; the ids are cut after the first EOS all the same, so the
    two backends return identical shapes. An EOS that is the last allowed token is reported as "length" (vLLM
    checks the length first): the sample ended all the same, as the transformers backend says."""
    result = []
    for request in outputs:
        completions = []
        for out in sorted(request.outputs, key=lambda o: getattr(o, "index", 0)):
            ids, ended = truncate_at_eos(list(out.token_ids), eos_ids)
            completions.append(Completion(out.text, ids, ended or out.finish_reason == "stop"))
        result.append(completions)
    return result


class VLLMBackend:
    name = "vllm"
    seeds_each_prompt = True   # per_prompt_sampling: a prompt's seed is a hash of the call's seed and its tokens

    def __init__(self, model, tokenizer=None, gpu_memory_utilization: float = 0.5, seed: int = 0,
                 dtype: str = "auto", max_model_len: int | None = None, **llm_kwargs):
        """`model` is a model folder or hub id, or a loaded transformers model (a peft model too), which is written
        to a temporary folder first: vLLM loads its own copy of the weights. gpu_memory_utilization defaults to
        half the GPU so that the policy being trained fits beside it."""
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise PobenchError("vllm is not installed: pip install 'pobench[vllm]' (CUDA only)") from None
        self.tokenizer = tokenizer
        self._llm_args = dict(seed=seed, gpu_memory_utilization=gpu_memory_utilization, dtype=dtype,
                              max_model_len=max_model_len, enable_prefix_caching=True, **llm_kwargs)
        self._sync_dir: tempfile.TemporaryDirectory | None = None
        self.llm = None
        self.in_place_syncs = 0
        self._load(str(model) if isinstance(model, (str, os.PathLike)) else self._export(model))

    def _load(self, path: str) -> None:
        from vllm import LLM

        self.path = path
        self.llm = LLM(model=path, **{k: v for k, v in self._llm_args.items() if v is not None})
        self.eos_ids = self._eos_ids()

    def _eos_ids(self) -> list[int]:
        from pobench.generation.hf import eos_token_ids

        tokenizer = self.tokenizer or self.llm.get_tokenizer()
        ids = set(eos_token_ids(None, tokenizer))
        try:
            from transformers import GenerationConfig as HFGenerationConfig
            eos = HFGenerationConfig.from_pretrained(self.path).eos_token_id
            ids.update(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        except Exception:  # no generation_config.json: the tokenizer's EOS is all there is
            pass
        return sorted(int(i) for i in ids)

    def generate(self, prompt_ids: list[list[int]], cfg: GenerationConfig | None = None) -> list[list[Completion]]:
        from vllm import SamplingParams

        cfg = cfg or GenerationConfig()
        if not prompt_ids:
            return []
        prompts, kwargs = build_requests(prompt_ids, cfg, self.eos_ids)
        params = [SamplingParams(**kw) for kw in per_prompt_sampling(kwargs, prompt_ids)]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return parse_outputs(outputs, self.eos_ids)

    def sync_weights(self, model_or_path) -> None:
        """Make vLLM generate from new policy weights (online rounds of OnMC-PO / online DPO), then reset its prefix
        cache: cached KV blocks of the old weights would otherwise be reused for prompts seen before.

        In place where the engine's model lives in this process (vLLM with VLLM_ENABLE_V1_MULTIPROCESSING=0, as
        TRL's colocate mode runs it): each tensor goes through the model's own `load_weights`, no restart, no disk.
        Otherwise (vLLM's default: the engine in a child process) it reloads: a path is loaded as is, a loaded
        model is written to a temporary folder first (`_export`), and the engine is recreated."""
        in_process = self._engine_model()
        if in_process is not None and not isinstance(model_or_path, (str, os.PathLike)):
            in_process.load_weights(self._named_weights(model_or_path))
            self.in_place_syncs += 1
        else:
            if self.tokenizer is None and self.llm is not None:
                self.tokenizer = self.llm.get_tokenizer()
            self._release()  # before writing: the old engine may still map the previous files
            self._load(str(model_or_path) if isinstance(model_or_path, (str, os.PathLike))
                       else self._export(model_or_path))
        self.llm.reset_prefix_cache()

    def _engine_model(self):
        """The engine's model when it runs in this process, else None. The attribute path differs by vLLM version:
        V1 with an in-process engine core, then the older single-process executor (TRL reads the latter)."""
        executor = getattr(getattr(self.llm, "llm_engine", None), "model_executor", None)
        worker = getattr(executor, "driver_worker", None)
        for runner in (getattr(getattr(worker, "worker", None), "model_runner", None),
                       getattr(worker, "model_runner", None)):
            model = getattr(runner, "model", None)
            if model is not None and hasattr(model, "load_weights"):
                return model
        return None

    @staticmethod
    def _merged(model):
        """A peft policy merged into a copy of itself (merging in place and unmerging after would leave rounding
        errors in the weights being trained); any other model as it is."""
        return copy.deepcopy(model).merge_and_unload() if hasattr(model, "peft_config") else model

    def _named_weights(self, model):
        """(checkpoint name, tensor) pairs, named as save_pretrained names them."""
        return ((name, tensor.detach()) for name, tensor in self._merged(model).state_dict().items())

    def _export(self, model) -> str:
        """Write a loaded model (a peft one merged: `_merged`) and its tokenizer to this backend's temporary folder,
        for vLLM to load."""
        tokenizer = self.tokenizer or (self.llm.get_tokenizer() if self.llm is not None else None)
        if tokenizer is None:
            raise PobenchError("the vllm backend needs the tokenizer to hand a loaded model to vLLM")
        model = self._merged(model)
        self._sync_dir = self._sync_dir or tempfile.TemporaryDirectory(prefix="pobench-vllm-sync-")
        model.save_pretrained(self._sync_dir.name)
        tokenizer.save_pretrained(self._sync_dir.name)
        return self._sync_dir.name

    def _release(self) -> None:
        """Free the old engine's GPU memory before the new one allocates its KV cache."""
        self.llm = None
        gc.collect()
        try:
            import torch
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
