"""`pobench run --num-processes N [--launch-config PRESET]`: the same command, re-run under `accelerate launch`.

The presets in this folder are plain accelerate config files: `ddp` (the default), `fsdp`, `deepspeed-zero2`,
`deepspeed-zero3`, and `multinode-ddp` (an example to copy). Any accelerate config file can be named instead.
Inside the launched processes nothing is re-launched: the launcher's WORLD_SIZE says where we are.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from pobench.errors import PobenchError

PRESET_DIR = Path(__file__).parent
DEFAULT_PRESET = "ddp"


def presets() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PRESET_DIR.glob("*.yaml"))}


def preset_path(name_or_path: str) -> Path:
    """A shipped preset by name, or an accelerate config file by path."""
    found = presets().get(name_or_path)
    if found:
        return found
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
        return path
    raise PobenchError(f"--launch-config {name_or_path}: neither a preset ({', '.join(presets())}) nor an "
                       f"accelerate config file")


def check_one_machine(config: Path) -> None:
    """`--launch-config` launches on this machine with a rendezvous port of its own: a config for several machines
    is launched on each of them with `accelerate launch --machine_rank K` instead (the multinode preset's header)."""
    import yaml
    try:
        machines = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("num_machines", 1)
    except (OSError, yaml.YAMLError, AttributeError) as e:
        raise PobenchError(f"--launch-config {config}: not a readable accelerate config ({type(e).__name__})") from None
    if isinstance(machines, int) and machines > 1:
        raise PobenchError(f"--launch-config {config}: a config for {machines} machines; run `accelerate launch "
                           f"--config_file {config} --machine_rank K -m pobench.cli run ...` on each machine instead")


def free_port() -> int:
    """A free TCP port for the rendezvous, so that two launches on one machine (parallel tests) do not collide."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(pobench_args: list[str], num_processes: int | None, config: Path, port: int) -> list[str]:
    """`python -m accelerate.commands.launch ... -m pobench.cli <the same arguments>`; the child processes see
    WORLD_SIZE and do not launch again. `num_processes` None keeps the config file's own count."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
           "--main_process_port", str(port)]
    if num_processes is not None:
        cmd += ["--num_processes", str(num_processes)]
    return cmd + ["-m", "pobench.cli", *pobench_args]


def check_inside_launch(num_processes: int) -> None:
    """Under a launcher already: --num-processes may only repeat the launcher's own count."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if num_processes > 1 and num_processes != world:
        raise PobenchError(f"--num-processes {num_processes}: this process was launched with {world} processes "
                           f"(WORLD_SIZE); drop --num-processes under `accelerate launch`")


ERROR_FILE = "POBENCH_LAUNCH_ERRORS"   # where the launched processes leave their user errors (one JSON line each)


def report_to_launcher(message: str, exit_code: int) -> None:
    """In a process started by `relaunch`: record a user error for the launching command, which would otherwise see
    only the launcher's own exit code (1, whatever the process exited with)."""
    path = os.environ.get(ERROR_FILE)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"message": message, "exit_code": exit_code}) + "\n")


def relaunch(pobench_args: list[str], num_processes: int | None, launch_config: str | None) -> int:
    """Run this pobench command again under accelerate's launcher, in `num_processes` processes (None: as many as
    the launch config says); its exit code: a user error in a launched process ends the command as it would have
    ended without the launch (its one line last, exit code 2), not with the launcher's exit code 1."""
    import tempfile
    config = preset_path(launch_config or DEFAULT_PRESET)
    check_one_machine(config)
    cmd = launch_command(pobench_args, num_processes, config, free_port())
    with tempfile.TemporaryDirectory(prefix="pobench-launch-") as tmp:
        errors = Path(tmp) / "errors.jsonl"
        env = {**os.environ, ERROR_FILE: str(errors)}
        env.setdefault("OMP_NUM_THREADS", "1")  # N processes on one machine: one thread each unless told otherwise
        code = subprocess.run(cmd, env=env).returncode
        reported = [json.loads(line) for line in errors.read_text(encoding="utf-8").splitlines()] \
            if errors.is_file() else []
    if code != 0 and reported:
        first = reported[0]
        print(f"error: {first['message']}", file=sys.stderr)
        return first["exit_code"]
    return code
