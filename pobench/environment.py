"""What a run ran on: versions, device, git commit. Saved as env.json beside every result."""
from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pobench

PACKAGES = ("torch", "transformers", "accelerate", "peft", "datasets", "tokenizers", "safetensors", "trl",
            "vllm", "alpaca-eval")


@functools.lru_cache(maxsize=1)   # read once: the code a process runs is the code it imported, not a later commit
def git_commit() -> str | None:
    root = Path(pobench.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def environment_info(device=None) -> dict:
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    info = {
        "pobench": pobench.__version__, "git_commit": git_commit(), "python": sys.version.split()[0],
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "packages": versions, "device": str(device) if device else None,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "command": sys.argv,
        # the folder the command ran in: what a relative path on its command line (`--out`, `--plugin`) or in a run
        # saved before config.yaml stored paths absolute is relative to (pobench/paths.py)
        "cwd": os.getcwd(),
    }
    if torch.cuda.is_available():
        info["gpu"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def recorded_command(run_dir) -> list[str] | None:
    """The command line that started a run (env.json's `command`), or None where env.json lacks it."""
    import json
    try:
        command = json.loads((Path(run_dir) / "env.json").read_text(encoding="utf-8")).get("command")
    except (OSError, ValueError, AttributeError):
        return None
    return command if isinstance(command, list) and all(isinstance(a, str) for a in command) else None


def started_by(run_dir) -> str:
    """The command that started a run, as one could type it again."""
    import shlex
    command = recorded_command(run_dir)
    return shlex.join(["pobench", *command[1:]]) if command else "a command env.json does not record"


def started_in(run_dir) -> str | None:
    """The folder a run was started in (env.json's `cwd`), or None where env.json does not record it (runs made
    before it did)."""
    import json
    try:
        cwd = json.loads((Path(run_dir) / "env.json").read_text(encoding="utf-8")).get("cwd")
    except (OSError, ValueError, AttributeError):
        return None
    return cwd if isinstance(cwd, str) and os.path.isabs(cwd) else None
