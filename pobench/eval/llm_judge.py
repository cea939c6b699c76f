"""LLM judges through alpaca_eval's annotator machinery (optional extra: `pip install 'pobench[judge]'`).

`alpaca_eval:<config>` runs alpaca_eval's `PairwiseAnnotator` with one of its annotator configs (e.g.
`weighted_alpaca_eval_gpt4_turbo`: GPT-4-turbo's log-probabilities of the tokens 'm' and 'M' give a soft
preference) or a config file of your own. Its OpenAI decoder reads an API key (OPENAI_API_KEY) or a client
config (OPENAI_CLIENT_CONFIG_PATH, e.g. a local OpenAI-compatible server); pobench passes that path on at call
time, so setting it after import works too.

`alpaca_eval:local` keeps alpaca_eval's prompt (the weighted GPT-4-turbo template) and its `logprob_parser`,
and swaps the decoder for `LocalJudgeDecoder`: a transformers causal LM (eval.judge_model, default
SmolLM2-135M-Instruct) whose next-token log-probabilities of 'm' and 'M' after the judge prompt are returned
in the shape of OpenAI's chat logprobs. A 135M model is a *weak* judge (close to a coin flip with a position
bias); it exists so that the whole LLM-judge path runs offline, and a bigger local model can be named instead.
`eval.judge_decoder` picks the engine: `transformers` (LocalJudgeDecoder), `vllm` (VLLMJudgeDecoder in
pobench/eval/vllm_judge.py: the same prompts, token ids and log-probabilities, decoded by vLLM on a CUDA GPU), or
`auto` (vLLM where it is installed and CUDA is available, transformers otherwise).

A local judge's prompt longer than its window has both answers shortened by the same number of tokens
(`fit_answers`), recorded per row (`answer_tokens_cut`) and counted in describe() (`truncated_prompts`).

Annotations are cached by alpaca_eval under the pobench cache (never inside site-packages), keyed by the
judge's identity, so re-judging the same outputs costs nothing. Evaluations judging side by side share that file: they
take turns on a lock beside it (AlpacaEvalJudge.cache_lock) to read it and to save (each save merges the file's
rows and replaces it atomically), and ask for verdicts side by side.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import time
from pathlib import Path

from pobench.errors import PobenchError
from pobench.eval.judges import Comparison, prompt_text

LOCAL_CONFIG = "local"
PROMPT_TEMPLATE = "alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt"   # the weighted GPT-4-turbo judge's prompt
CHOICE_TOKENS = ("m", "M")   # that prompt's identifiers: 'm' = output_1, 'M' = output_2
JUDGE_DECODERS = ("auto", "transformers", "vllm")   # eval.judge_decoder
# sha1 of PROMPT_TEMPLATE as alpaca-eval 0.6.6 (the pinned version) ships it: the annotation caches of alpaca_eval:local
# made before the template's content was part of their key were made with it, so they keep their key (local_ident)
SHIPPED_TEMPLATE_SHA1 = "132d2b946b2b58ee40ddde64f42f6145e3f2201d"


def require_alpaca_eval():
    import warnings
    try:
        with warnings.catch_warnings():   # its pkg_resources deprecation notice: nothing a user can act on
            warnings.simplefilter("ignore", UserWarning)
            import alpaca_eval  # noqa: F401  (imports pkg_resources: needs setuptools<81)
    except ImportError as e:
        raise PobenchError(f"judge alpaca_eval needs the optional extra: pip install 'pobench[judge]' "
                           f"(alpaca-eval and setuptools<81) ({type(e).__name__}: {e})") from None
    import alpaca_eval
    return alpaca_eval


@contextlib.contextmanager
def quiet_logging():
    """alpaca_eval logs every step at INFO on the root logger (and sets the root level to INFO on import): that
    is silenced while it runs; its errors still show (its tqdm bars too: they time a slow remote judge)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def choice_token_ids(tokenizer, model: str) -> dict[str, int]:
    """The id of each choice token ('m', 'M'): each must be one token of the judge's tokenizer."""
    ids = {}
    for t in CHOICE_TOKENS:
        encoded = tokenizer.encode(t, add_special_tokens=False)
        if len(encoded) != 1:
            raise PobenchError(f"eval.judge_model {model}: '{t}' is not a single token for its tokenizer")
        ids[t] = encoded[0]
    return ids


def judge_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """alpaca_eval's ChatML prompt -> the judge's own chat template, as token ids (every local decoder feeds the
    model these ids)."""
    from alpaca_eval.utils import prompt_to_chatml
    messages = [{"role": m["role"], "content": m["content"]} for m in prompt_to_chatml(prompt)]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = "".join(f"{m['role']}: {m['content']}\n\n" for m in messages) + "assistant:"
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_judge_prompt(tokenizer, prompt: str, max_length: int) -> list[int]:
    """judge_prompt_ids within the model's window. The judge shortens the answers to fit it first (fit_answers), so
    only an instruction that fills the window alone is cut here, keeping the prompt's end (the task)."""
    return judge_prompt_ids(tokenizer, prompt)[-max_length:]


def render_judge_prompt(template: str, row: dict) -> str:
    """The prompt alpaca_eval makes of a row ({instruction, output_1, output_2}), by its own function."""
    import pandas as pd
    from alpaca_eval.utils import make_prompts
    return make_prompts(pd.DataFrame([row]), template)[0][0]


def fit_answers(decoder, template: str, row: dict) -> tuple[dict, int]:
    """(row, tokens cut from the end of each answer) such that the judge prompt fits the decoder's window. Both
    answers lose the same number of tokens (all of a shorter one): cutting the prompt's start instead took the
    instruction and the first answer, never the second, so the answer shown first lost where the other did not."""
    tokenizer, limit = decoder.tokenizer, decoder.max_length
    excess = len(judge_prompt_ids(tokenizer, render_judge_prompt(template, row))) - limit
    answers = [tokenizer(row[k], add_special_tokens=False)["input_ids"] for k in ("output_1", "output_2")]
    longest, cut, fitted = max(map(len, answers)), 0, row
    while excess > 0 and cut < longest:
        cut = min(longest, cut + (excess + 1) // 2)   # a token less in each answer: about two less in the prompt
        fitted = {**row, **{k: tokenizer.decode(ids[:max(0, len(ids) - cut)])
                            for k, ids in zip(("output_1", "output_2"), answers)}}
        excess = len(judge_prompt_ids(tokenizer, render_judge_prompt(template, fitted))) - limit
    return fitted, cut


def openai_entry(choice_logprobs: dict[str, float], total_tokens: int) -> dict:
    """One judge answer in the shape of OpenAI's chat logprobs (`logprobs.content[0].top_logprobs`), which
    alpaca_eval's `logprob_parser` reads: the choice tokens' log-probabilities, the likelier one as the text."""
    top = [{"token": t, "logprob": float(lp)} for t, lp in choice_logprobs.items()]
    best = max(top, key=lambda x: x["logprob"])
    return {"text": best["token"], "total_tokens": total_tokens,
            "logprobs": {"content": [{"token": best["token"], "logprob": best["logprob"], "top_logprobs": top}]}}


def completions_result(entries: list[dict], seconds: float) -> dict:
    """What alpaca_eval expects back from a decoder (`fn_completions`)."""
    n = max(1, len(entries))
    return {"completions": [e["text"] for e in entries], "completions_all": entries,
            "price_per_example": [0.0] * len(entries), "time_per_example": [seconds / n] * len(entries)}


class LocalJudgeDecoder:
    """An alpaca_eval decoder (`fn_completions`) backed by a local causal LM: for each judge prompt, one
    forward pass and the log-probabilities of the choice tokens at the next position, returned like OpenAI's
    `logprobs.content[0].top_logprobs` so that alpaca_eval's `logprob_parser` reads them unchanged."""
    kind = "transformers"

    def __init__(self, model: str = "smollm2-135m-instruct", device: str = "auto", batch_size: int = 4,
                 max_length: int = 2048):
        import torch

        from pobench.models import load_causal_lm, load_tokenizer, model_fingerprint, pick_device, resolve_model_path
        self.path = resolve_model_path(model)
        self.device = pick_device(device)
        self.tokenizer = load_tokenizer(self.path)
        self.dtype = "float32"
        self.model = load_causal_lm(self.path, getattr(torch, self.dtype)).to(self.device).eval()
        self.batch_size, self.spec = batch_size, model
        limit = getattr(self.model.config, "max_position_embeddings", None) or max_length
        self.max_length = min(max_length, limit)
        self.fingerprint = model_fingerprint(self.path)
        # the annotation cache of this decoder: verdicts cached before left-padded batches got position ids differ
        # for judges with absolute position embeddings, so those are not reused
        self.cache_key = f"{self.fingerprint}-position-ids"
        self.choice_ids = choice_token_ids(self.tokenizer, model)

    def encode(self, prompt: str) -> list[int]:
        return encode_judge_prompt(self.tokenizer, prompt, self.max_length)

    def __call__(self, prompts, **_decoding_kwargs) -> dict:
        import torch

        from pobench.generation.hf import left_pad
        started = time.time()
        entries = []
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for start in range(0, len(prompts), self.batch_size):
            rows = [self.encode(p) for p in prompts[start:start + self.batch_size]]
            input_ids, mask = left_pad(rows, pad)
            # counted from each prompt's first token: a model with absolute position embeddings (GPT-2) read a
            # left-padded prompt at shifted positions, and its verdict depended on the batch it was in
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                                    position_ids=positions.to(self.device)).logits
            logps = torch.log_softmax(logits[:, -1].float(), dim=-1).cpu()
            for row, lp in zip(rows, logps):
                entries.append(openai_entry({t: float(lp[i]) for t, i in self.choice_ids.items()}, len(row)))
        return completions_result(entries, time.time() - started)

    def describe(self) -> dict:
        return {"decoder": "pobench LocalJudgeDecoder (transformers)", "judge_decoder": self.kind, "model": self.spec,
                "model_path": self.path, "model_fingerprint": self.fingerprint, "dtype": self.dtype,
                "device": str(self.device)}


def vllm_importable() -> bool:
    import importlib.util
    return importlib.util.find_spec("vllm") is not None


def pick_judge_decoder(choice: str, device: str = "auto") -> str:
    """eval.judge_decoder -> "transformers" | "vllm". auto: vLLM where it is installed and CUDA is available
    (and the device is not pinned to the CPU), transformers otherwise."""
    if choice not in JUDGE_DECODERS:
        raise PobenchError(f"config key 'eval.judge_decoder': {choice!r} is not one of {', '.join(JUDGE_DECODERS)}")
    if choice != "auto":
        return choice
    if str(device).startswith(("cpu", "mps")) or not vllm_importable():
        return "transformers"
    import torch
    return "vllm" if torch.cuda.is_available() else "transformers"


def make_judge_decoder(choice: str, model: str, device: str = "auto", batch_size: int = 4,
                       vllm_options: dict | None = None):
    """The decoder of alpaca_eval:local that eval.judge_decoder names (vllm_options: VLLMJudgeDecoder's keyword
    arguments, e.g. dtype or gpu_memory_utilization; not config keys)."""
    if pick_judge_decoder(choice, device) == "vllm":
        from pobench.eval.vllm_judge import VLLMJudgeDecoder
        return VLLMJudgeDecoder(model, **(vllm_options or {}))
    return LocalJudgeDecoder(model, device, batch_size)


def local_template() -> Path:
    import alpaca_eval.constants as AC
    return Path(AC.EVALUATORS_CONFIG_DIR) / PROMPT_TEMPLATE


def local_ident(decoder_key: str) -> str:
    """What alpaca_eval:local's annotation cache is keyed by: the decoder (its model's fingerprint, its engine) and
    the prompt template's content, so a template edited in place or changed by another alpaca_eval version never
    reuses verdicts given to the old prompt (as config_identity does for named configs). The template as shipped
    adds nothing to the key, which caches made before it was included keep."""
    digest = hashlib.sha1(local_template().read_bytes()).hexdigest()
    extra = "" if digest == SHIPPED_TEMPLATE_SHA1 else f"-template-{digest}"
    return hashlib.sha1(f"{decoder_key}{extra}".encode()).hexdigest()[:10]


def local_config(cache_dir: Path, ident: str) -> Path:
    """The annotators config of `alpaca_eval:local`: alpaca_eval's weighted GPT-4-turbo judge minus its
    decoder (passed in as a function), written once under the cache."""
    import yaml
    folder = Path(cache_dir) / "judges" / f"alpaca_eval_local-{ident}"
    path = folder / "configs.yaml"
    config = {f"pobench_local_{ident}": {
        "prompt_template": str(local_template()),
        "fn_completion_parser": "logprob_parser",
        "completion_parser_kwargs": {"numerator_token": "m", "denominator_tokens": list(CHOICE_TOKENS),
                                     "is_binarize": False},
        "completion_key": "completions_all", "batch_size": 1}}
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def resolve_config(config: str) -> Path | str:
    """An alpaca_eval config name (a folder of its evaluators_configs) or a path to a configs.yaml/folder."""
    import alpaca_eval.constants as AC
    own = Path(AC.EVALUATORS_CONFIG_DIR) / config
    if own.is_dir() or own.is_file():
        return config
    path = Path(config).expanduser()
    if path.is_dir() and (path / "configs.yaml").is_file():
        return path.resolve() / "configs.yaml"
    if path.is_file():
        return path.resolve()
    known = sorted(p.name for p in Path(AC.EVALUATORS_CONFIG_DIR).iterdir() if (p / "configs.yaml").is_file())
    raise PobenchError(f"eval.judge alpaca_eval:{config}: neither an alpaca_eval annotators config "
                       f"(e.g. {', '.join(known[:4])}, ...) nor a configs.yaml path")


def config_entries(annotators_config: Path | str) -> tuple[Path, dict]:
    """(its configs.yaml, {annotator name: settings}) of an alpaca_eval annotators config ({} where unreadable:
    alpaca_eval then says what is wrong with it)."""
    import yaml
    import alpaca_eval.constants as AC
    path = Path(annotators_config)
    if not path.is_file():   # a config of alpaca_eval's own, by name
        path = Path(AC.EVALUATORS_CONFIG_DIR) / str(annotators_config) / "configs.yaml"
    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (yaml.YAMLError, UnicodeDecodeError):
        entries = {}
    return path, {k: v for k, v in entries.items() if isinstance(v, dict)} if isinstance(entries, dict) else {}


OPENAI_CREDENTIALS = ("OPENAI_API_KEY", "OPENAI_API_KEYS", "OPENAI_CLIENT_CONFIG_PATH")   # what alpaca_eval reads


def check_alpaca_eval_judge(config: str) -> None:
    """What `alpaca_eval:<config>` needs that can be checked before any work: the extra installed, the config
    found, and for a config that calls OpenAI, credentials (without them alpaca_eval fails at the first call,
    after every answer was generated)."""
    require_alpaca_eval()
    if config == LOCAL_CONFIG:
        return
    _, entries = config_entries(resolve_config(config))
    calls = sorted({str(e.get("fn_completions")) for e in entries.values() if "openai" in str(e.get("fn_completions"))})
    import alpaca_eval.constants as AC
    default_client = Path(str(getattr(AC, "OPENAI_CLIENT_CONFIG_PATH", "") or "")).is_file()   # its own client file
    if calls and not default_client and not any(os.environ.get(name) for name in OPENAI_CREDENTIALS):
        raise PobenchError(f"eval.judge alpaca_eval:{config} calls OpenAI ({', '.join(calls)}): set "
                           f"{', '.join(OPENAI_CREDENTIALS[:-1])} or {OPENAI_CREDENTIALS[-1]} first")


def config_files(annotators_config: Path | str) -> list[Path]:
    """Its configs.yaml and the prompt templates it names (those that exist)."""
    path, entries = config_entries(annotators_config)
    # alpaca_eval reads templates relative to the folder above the config's own (its evaluators_configs)
    files, templates_dir = [path], path.parents[1]
    for entry in entries.values():
        template = entry.get("prompt_template")
        if isinstance(template, str):
            files.append(templates_dir / template)
    return files


def files_digest(digest, files: list[Path]) -> str:
    for f in files:
        if f.is_file():
            digest.update(f.name.encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:10]


def config_identity(annotators_config: Path | str) -> str:
    """What the annotation cache is keyed by: the config's name or path, the content of its configs.yaml and of the
    prompt templates it names, and, where OPENAI_CLIENT_CONFIG_PATH is set, where that client config sends its OpenAI
    models (client_entries: the endpoint fields, never an api_key: a rotated key re-keyed the cache, so verdicts
    were bought again), so that an edited prompt or another model never reuses annotations made before. Without a
    client config the key is what it always was."""
    digest = hashlib.sha1(str(annotators_config).encode())
    if os.environ.get("OPENAI_CLIENT_CONFIG_PATH"):
        sent = {model: client_entries(model) for model, openai in config_models(annotators_config) if openai}
        if sent:
            digest.update(b"client config\0" + json.dumps(sent, sort_keys=True).encode())
    return files_digest(digest, config_files(annotators_config))


def config_models(annotators_config: Path | str) -> list[tuple[str, bool]]:
    """(model, whether an OpenAI decoder asks for it) for each annotator of the config that names a model."""
    _, entries = config_entries(annotators_config)
    out = []
    for entry in entries.values():
        kwargs = entry.get("completions_kwargs") if isinstance(entry.get("completions_kwargs"), dict) else {}
        model = kwargs.get("model_name") or kwargs.get("model")
        if model is not None:
            out.append((str(model), "openai" in str(entry.get("fn_completions"))))
    return out


OPENAI_BASE_URL = "https://api.openai.com/v1"   # where the openai client sends requests given no base_url
# what an OpenAI client config entry may say about where requests go (never its api_key, nor any other field)
ENDPOINT_FIELDS = ("base_url", "azure_endpoint", "azure_deployment", "api_version", "client_class")


def client_config_path() -> Path | None:
    """The OpenAI client config alpaca_eval reads: OPENAI_CLIENT_CONFIG_PATH now (decoding_kwargs passes it on at call
    time), else alpaca_eval's default (fixed at its import)."""
    import alpaca_eval.constants as AC
    path = os.environ.get("OPENAI_CLIENT_CONFIG_PATH") or getattr(AC, "OPENAI_CLIENT_CONFIG_PATH", None)
    return Path(path) if path else None


def client_entries(model: str) -> list[dict]:
    """The client configs alpaca_eval's OpenAI decoder picks among for `model` (alpaca_eval.utils.get_all_clients:
    the file's entries for the model, with "default"'s where it lists "default", else "default"'s; without the file,
    OPENAI_API_BASE), reduced to ENDPOINT_FIELDS."""
    import yaml
    path = client_config_path()
    configs = None
    if path is not None and path.is_file():
        try:
            configs = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError, OSError):
            configs = None   # alpaca_eval says what is wrong with it at the first call
    if not isinstance(configs, dict):
        entries = [{"base_url": os.environ.get("OPENAI_API_BASE")}]
    elif isinstance(configs.get(model), list):
        listed = configs[model]
        shared = (configs.get("default") or []) if "default" in listed else []
        entries = shared + [e for e in listed if e != "default"]
    else:
        entries = configs.get("default") or []
    return [{k: e[k] for k in ENDPOINT_FIELDS if e.get(k) is not None} for e in entries if isinstance(e, dict)]


def endpoint_text(entry: dict) -> str:
    """Where one client config sends requests: its base_url (or Azure endpoint), else the openai client's default
    (OPENAI_BASE_URL, else OpenAI's API), with the client class, deployment and API version where given."""
    where = entry.get("base_url") or entry.get("azure_endpoint") or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL
    extra = [f"{k} {entry[k]}" for k in ("client_class", "azure_deployment", "api_version") if k in entry]
    return f"{where} ({', '.join(extra)})" if extra else str(where)


def config_judge_identity(annotators_config: Path | str) -> dict:
    """What stands behind an `alpaca_eval:<config>` judge's name, for describe() and the report: the models its
    annotators ask for, where an OpenAI decoder sends them (from the client config; a local OpenAI-compatible server
    answering under `weighted_alpaca_eval_gpt4_turbo` is not GPT-4-turbo), and a digest of the config's and its
    prompt templates' content. Never an API key: the client config's keys are neither read into it nor hashed."""
    models, endpoints = set(), set()
    for model, openai in config_models(annotators_config):
        models.add(model)
        if openai:
            endpoints.update(endpoint_text(e) for e in client_entries(model))
    return {"models": sorted(models), "endpoints": sorted(endpoints),
            "config": files_digest(hashlib.sha1(), config_files(annotators_config))}


@functools.lru_cache(maxsize=None)
def annotator_class():
    """alpaca_eval's PairwiseAnnotator, able to leave failed verdicts out of its cache: alpaca_eval 0.6.6 then looks
    for stored failures in a cache that may not exist yet (None, or an empty file read back without columns); and
    saving its cache atomically (save)."""
    from alpaca_eval.annotators import PairwiseAnnotator

    from pobench.engine.io import atomic_write_text

    class Annotator(PairwiseAnnotator):
        def _apply_cached_annotations(self, df_to_annotate):
            cache = self.df_annotations
            if cache is None or self.annotation_key not in cache.columns:
                return df_to_annotate
            return super()._apply_cached_annotations(df_to_annotate)

        def save(self, path=None):
            """alpaca_eval's save (BaseAnnotatorJSON.save: re-read the file, add this annotator's verdicts, drop the
            failed ones, write it all), written to a temporary file and renamed into place. alpaca_eval writes the
            file in place (`to_json(path)`) after every chunk of 128 rows: a process reading it meanwhile got a
            half-written file (ValueError), and a kill during the write left one that every later judge refuses,
            with every verdict in it, paid ones included. Writers take turns on AlpacaEvalJudge.cache_lock, held
            for the save alone."""
            path = path or self.caching_path
            if path is None:
                return
            # the re-read, merge and write under the cache's lock (AlpacaEvalJudge.cache_lock): another judge's rows
            # saved meanwhile are merged in, never written over
            with getattr(self, "pobench_cache_lock", contextlib.nullcontext)():
                self._refresh_annotations_()
                if not self.is_store_missing_annotations:
                    self.df_annotations = self.df_annotations[~self.df_annotations[self.annotation_key].isna()]
                atomic_write_text(Path(path), self.df_annotations.to_json(orient="records", indent=2))

    return Annotator


class AlpacaEvalJudge:
    kind = "llm"

    def __init__(self, config: str, cache_dir: str | Path | None = None, judge_model: str = "smollm2-135m-instruct",
                 device: str = "auto", batch_size: int = 4, seed: int = 0, judge_decoder: str = "auto",
                 vllm_options: dict | None = None, **_options):
        require_alpaca_eval()
        with quiet_logging():
            import alpaca_eval.annotators  # noqa: F401
        self.config, self.seed, self.decoder, self.truncated = config, seed, None, 0
        if config == LOCAL_CONFIG:
            self.decoder = make_judge_decoder(judge_decoder, judge_model, device, batch_size, vllm_options)
            ident = local_ident(self.decoder.cache_key)
            self.annotators_config = local_config(Path(cache_dir or ".pobench-judge"), ident)
            self.name = f"alpaca_eval:local({judge_model})"
        else:
            self.annotators_config = resolve_config(config)
            ident = config_identity(self.annotators_config)
            self.name = f"alpaca_eval:{config}"
        self.caching_path = (Path(cache_dir) / "judges" / f"alpaca_eval-{ident}-annotations.json") if cache_dir else None

    def cache_lock(self):
        """The annotation cache is one file that every process judging with this judge re-reads and rewrites whole
        (alpaca_eval's save): two evaluations judging side by side lost each other's verdicts, or read the other's
        half-written file. This lock, beside the cache file, is held while the cache is read (the annotator is built)
        and around each save (which re-reads the file and merges this judge's verdicts into it), not while verdicts
        are asked for: two evaluations with one judge judge side by side (held around the whole judging, they ran
        one after the other, silently). A row both ask for before either saved it is asked twice."""
        if self.caching_path is None:
            return contextlib.nullcontext()
        from pobench.engine.lock import waiting_lock
        return waiting_lock(self.caching_path.with_name(self.caching_path.name + ".lock"))

    def annotator(self):
        kwargs = {"fn_completions": self.decoder} if self.decoder is not None else {}
        if self.caching_path is not None:
            self.caching_path.parent.mkdir(parents=True, exist_ok=True)
            self._check_cache()
        # pobench randomises the order itself (judges.judge_against_reference), the same way for every judge. A
        # failed verdict is not cached: alpaca_eval would return it as None ever after, and the prompt would drop out
        # of every later win rate unnoticed; it is asked again instead
        return annotator_class()(annotators_config=self.annotators_config, seed=self.seed,
                                 caching_path=self.caching_path, is_randomize_output_order=False,
                                 is_store_missing_annotations=False, **kwargs)

    def _check_cache(self) -> None:
        """alpaca_eval reads its annotation cache whole when the annotator is built (pandas, one JSON document); a
        damaged one, e.g. a save cut short, is named here rather than failing inside alpaca_eval. It is left in
        place: its verdicts may have cost money."""
        if not self.caching_path.is_file():
            return
        import pandas as pd
        try:
            pd.read_json(self.caching_path)
        except ValueError as e:
            reason = (str(e).splitlines() or [type(e).__name__])[0]
            raise PobenchError(f"{self.caching_path}: the judge's annotation cache cannot be read ({reason}); move "
                               f"it away to judge those prompts again") from None

    def decoding_kwargs(self) -> dict:
        """OPENAI_CLIENT_CONFIG_PATH read now, not at alpaca_eval's import (its default is frozen then)."""
        path = os.environ.get("OPENAI_CLIENT_CONFIG_PATH")
        return {"client_config_path": path} if path and self.decoder is None else {}

    def fit_rows(self, rows: list[dict]) -> tuple[list[dict], list[int]]:
        """The rows with both answers shortened alike where a local judge's window needs it (fit_answers), and the
        tokens cut per row. A remote judge gets them whole: its service sets and reports its own limit."""
        if self.decoder is None:
            return rows, [0] * len(rows)
        template = local_template().read_text(encoding="utf-8")
        fitted = [fit_answers(self.decoder, template, row) for row in rows]
        self.truncated += sum(cut > 0 for _, cut in fitted)
        return [row for row, _ in fitted], [cut for _, cut in fitted]

    def compare(self, prompts: list[list[dict]], first: list[str], second: list[str]) -> Comparison:
        rows, cuts = self.fit_rows([{"instruction": prompt_text(p), "output_1": a, "output_2": b}
                                    for p, a, b in zip(prompts, first, second)])
        with quiet_logging():
            with self.cache_lock():   # reading the cache; each save takes the lock again (annotator_class's save)
                annotator = self.annotator()
            annotator.pobench_cache_lock = self.cache_lock
            annotated = annotator.annotate_pairs(rows, **self.decoding_kwargs())
        by_key = {(r["instruction"], r["output_1"], r["output_2"]): r for r in annotated}
        preferences, extra = [], []
        for row, cut in zip(rows, cuts):
            got = by_key.get((row["instruction"], row["output_1"], row["output_2"]), {})
            pref = got.get("preference")
            # alpaca_eval: 1 = output_1 preferred, 2 = output_2, 1.5 = tie (floats in between for soft judges)
            ok = pref is not None and pref == pref and 1.0 <= float(pref) <= 2.0
            preferences.append(2.0 - float(pref) if ok else None)
            raw = got.get("preference_raw_completion")
            extra.append({"alpaca_eval_preference": float(pref) if ok else None,
                          "raw_completion": raw if isinstance(raw, (str, type(None))) else json.dumps(raw, default=str)[:2000],
                          **({"answer_tokens_cut": cut} if self.decoder is not None else {})})
        return Comparison(preferences, extra=extra)

    def identity(self) -> dict:
        """What tells apart judges of one name (the report's judge, pobench/report/collect.py judge_label): a local
        judge's engine and the dtype it ran in (vLLM in float16 and transformers in float32 give other verdicts);
        a config's models, endpoints and content (config_judge_identity)."""
        if self.decoder is not None:
            return {"decoder": self.decoder.kind, "dtype": self.decoder.describe().get("dtype")}
        return config_judge_identity(self.annotators_config)

    def describe(self) -> dict:
        info = {"name": self.name, "kind": self.kind, "held_out_accuracy": None,
                "annotators_config": str(self.annotators_config), "order": "randomised per prompt by pobench",
                "caching_path": str(self.caching_path) if self.caching_path else None, "identity": self.identity()}
        if self.decoder is not None:
            info.update(self.decoder.describe(), note="a local judge; SmolLM2-135M-Instruct (the default) is weak",
                        max_prompt_tokens=self.decoder.max_length,
                        # prompts whose two answers were both shortened by the same number of tokens to fit
                        truncated_prompts=self.truncated)
        else:
            info["config_identity"] = config_identity(self.annotators_config)   # its cache's key
        return info


def alpaca_eval_judge(config: str, **options) -> AlpacaEvalJudge:
    return AlpacaEvalJudge(config, **options)
