"""One writer per run folder: `<run folder>/.lock`, created with O_EXCL and holding the owner's pid and host.

Two `pobench run`s aimed at the same results folder each lock every run folder they will write before writing
anything; the second one stops with an error naming the owner, instead of sharing the folder. A lock whose pid is
dead on this host (a crashed or killed run) is stale and is taken over, so `--resume` after a crash just works.
A lock from another host cannot be checked from here: it is reported, and the user removes it when sure.
Folders of different runs (other algorithms, seeds, suites) never share a lock, so runs of one comparison can go
in parallel. The shared caches under `results/.cache` need no lock: every cache file is replaced atomically or
appended one whole line at a time, and a lost race only recomputes an entry.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from pobench.errors import PobenchError

LOCK_NAME = ".lock"


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), so a recycled pid is not mistaken for the lock's owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of stat, counted after the parenthesised command name


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return start is None or _process_start(pid) in (None, start)


def _owner_text(owner: dict) -> str:
    return f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('since')}"


class RunLock:
    """`acquire()` or PobenchError; `release()` removes the lock if it is still ours."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.me = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid()),
                   "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.held = False

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self.me, f)
        return True

    def _read_owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written right now, or garbage: decided below by its age

    def _is_stale(self, owner: dict) -> bool:
        if not owner:  # unreadable: stale only once it is old enough not to be a lock being written
            try:
                return time.time() - self.path.stat().st_mtime > 60
            except FileNotFoundError:
                return True
        if owner.get("host") != self.me["host"]:
            return False
        return not _alive(int(owner.get("pid", -1)), owner.get("start"))

    def _break(self, owner: dict) -> None:
        """Move the stale lock aside and delete it, unless what was moved is not the lock we judged (a racing
        process took it over meanwhile): then put that one back, refusing to overwrite."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = {}
        if moved == owner:
            aside.unlink(missing_ok=True)
            return
        try:
            os.link(aside, self.path)  # fails if a new lock appeared: never overwrites one
        except FileExistsError:
            pass
        aside.unlink(missing_ok=True)

    def acquire(self) -> "RunLock":
        for _ in range(5):
            if self._create():
                self.held = True
                return self
            owner = self._read_owner()
            if owner is None:
                continue  # released between the two calls
            self._refuse_if_live(owner)
            self._break(owner)
        raise PobenchError(f"{self.path}: cannot take the run folder's lock (it keeps changing hands)")

    def _refuse_if_live(self, owner: dict) -> None:
        if not self._is_stale(owner):
            where = "" if owner.get("host") in (None, self.me["host"]) else \
                f" (another host: remove {self.path} if that run is gone)"
            raise PobenchError(f"{self.path.parent}: in use by another pobench run ({_owner_text(owner)}){where}; "
                               f"wait for it, or choose another --out")

    def refuse_if_in_use(self) -> None:
        """The error `acquire()` would give for a live owner, without taking the lock: a folder that a running run
        is writing is reported as in use, not as a finished or abandoned run."""
        owner = self._read_owner()
        if owner is not None:
            self._refuse_if_live(owner)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            if json.loads(self.path.read_text()).get("pid") == self.me["pid"]:
                self.path.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
