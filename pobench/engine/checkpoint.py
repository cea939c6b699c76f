"""The latest checkpoint of a run, written atomically: a half-written checkpoint is never loaded.

Layout: checkpoints/latest/{trainable.safetensors, optimizer.pt, state.json}. A new checkpoint is built in a
temporary folder and swapped in with renames; `state.json`, written last, marks a complete checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pobench import faults
from pobench.engine.io import atomic_write_json, fsync_dir
from pobench.errors import PobenchError


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def rng_state_kept():
    """Work inside (training a reward model or a synthetic reference mid-run) seeds and draws as it likes; the
    run's own streams come back as they were, so a run's draws do not depend on whether a cache was warm."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def save_checkpoint(run_dir: Path, model, optimizer, scheduler, state: dict, with_optimizer: bool = True,
                    sampler_states: list | None = None) -> None:
    """`with_optimizer=False` (the final checkpoint) keeps only the weights: nothing resumes from it.
    `sampler_states`: each rank's sampler state (pools an online sampler generated for steps still to come, scores
    kept between visits), saved beside the optimizer so that a resumed run draws what the uninterrupted one drew."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp*"):  # left by a crashed writer (the run folder's lock says none is alive)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp{os.getpid()}"
    tmp.mkdir()
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    if with_optimizer:
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
                    "sampler": sampler_states}, tmp / "optimizer.pt")
    _fsync_files(tmp)  # the weights reach the disk before state.json says they are there
    faults.kill_point("checkpoint")
    atomic_write_json(tmp / "state.json", state)  # last: its presence marks a complete checkpoint
    latest, old = root / "latest", root / ".old"
    if latest.exists():
        shutil.rmtree(old, ignore_errors=True)  # only while `latest` is complete: `.old` may be the only good one
        os.replace(latest, old)
    faults.kill_point("checkpoint_swap")
    os.replace(tmp, latest)
    fsync_dir(root)   # both renames durable before `.old`, the fallback, goes
    shutil.rmtree(old, ignore_errors=True)


def _fsync_files(folder: Path) -> None:
    for path in folder.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def find_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint: `latest`, or `.old` if a crash hit between the two renames."""
    root = Path(run_dir) / "checkpoints"
    for name in ("latest", ".old"):
        if (root / name / "state.json").is_file():
            return root / name
    return None


_DAMAGED = "a damaged checkpoint (it was written atomically, so something else changed it): restore it or start the run again"


def read_state(path: Path) -> dict:
    """A checkpoint's state.json (its step and process count); a damaged one is an error naming the file."""
    file = Path(path) / "state.json"
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PobenchError(f"{file}: unreadable ({type(e).__name__}): {_DAMAGED}") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise PobenchError(f"{file}: expected an object with an integer 'step': {_DAMAGED}")
    return state


RESUMED_COUNTERS = (("pairs_seen", int), ("records_seen", int), ("time_s", (int, float)))   # a resume adds to them


def check_resumable_state(state: dict, checkpoint: Path) -> None:
    """The counters a resumed run continues from, present and numbers (a damaged state.json was a KeyError)."""
    for key, kind in RESUMED_COUNTERS:
        if isinstance(state.get(key), bool) or not isinstance(state.get(key), kind):
            raise PobenchError(f"{Path(checkpoint) / 'state.json'}: '{key}' must be a number, got "
                               f"{state.get(key)!r}: {_DAMAGED}")


def read_weights(path: Path) -> dict:
    """A checkpoint's trainable.safetensors; a damaged one is an error naming the file."""
    file = Path(path) / "trainable.safetensors"
    try:
        return load_file(str(file))
    except Exception as e:   # safetensors raises its own SafetensorError, or OSError
        raise PobenchError(f"{file}: unreadable ({type(e).__name__}): {_DAMAGED}") from None


def copy_weights(path: Path, model) -> None:
    """The checkpoint's trainable weights copied into `model` by name (full fine-tuning saves every weight, LoRA the
    adapter only); a weight the model does not have is an error naming it."""
    weights = read_weights(path)
    params = dict(model.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise PobenchError(f"{path / 'trainable.safetensors'}: weight '{unknown[0]}' is not the model's (another model "
                           f"or LoRA setting than the run's config, or {_DAMAGED})")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].dtype))


def _read_extra(path: Path) -> dict | None:
    file = Path(path) / "optimizer.pt"
    if not file.is_file():
        return None
    try:
        extra = torch.load(file, weights_only=False)
    except Exception as e:   # a truncated zip, a pickle error
        raise PobenchError(f"{file}: unreadable ({type(e).__name__}): {_DAMAGED}") from None
    if not isinstance(extra, dict) or not {"optimizer", "scheduler", "rng"} <= set(extra):
        raise PobenchError(f"{file}: expected the optimizer, scheduler and random states: {_DAMAGED}")
    return extra


def load_sampler_states(path: Path) -> list | None:
    """Every rank's sampler state saved with the checkpoint at `path` (None: none saved, or a final checkpoint)."""
    extra = _read_extra(path)
    return None if extra is None else extra.get("sampler")


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    state = read_state(path)
    copy_weights(path, model)
    extra = _read_extra(path)
    if extra is not None:
        optimizer.load_state_dict(extra["optimizer"])
        scheduler.load_state_dict(extra["scheduler"])
        set_rng_state(extra["rng"])
    return state


def changed_code(saved, current: dict) -> list[str]:
    """'<file> <saved sha1> -> <current sha1>' for the algorithm's and the sampler's file whose code changed since
    the checkpoint's state.json recorded it (trainer.run_code); [] for a checkpoint written before it was recorded."""
    out, named = [], set()
    for part in ("algorithm", "sampler"):
        old = saved.get(part) if isinstance(saved, dict) else None
        new = current.get(part) or {}
        if not isinstance(old, dict) or not old.get("sha1") or not new.get("sha1") or old["sha1"] == new["sha1"]:
            continue
        file = new.get("file") or old.get("file") or new.get("module")
        if file not in named:   # a plugin file holding both the algorithm and its sampler is named once
            named.add(file)
            out.append(f"{part} code {file} {old['sha1']} -> {new['sha1']}")
    return out
