"""One writer per run folder: `<run folder>/.lock`, held with flock(2) and holding the owner's pid and host.

Two `pobench run`s aimed at the same results folder each lock every run folder they will write before writing
anything; the second one stops with an error naming the owner, instead of sharing the folder. The kernel holds the
lock for the owner's open file and drops it when the owner exits, however it exits: a crashed or killed run leaves
a file that the next run simply locks, so `--resume` after a crash just works, and no two processes can both win
(breaking a stale O_EXCL file by hand had a window where a third process could slip in). A lock file naming a live
pobench process of this host that holds no flock (an older pobench) or another host (whose locks a network
filesystem may not show here) is refused all the same: the user removes it when sure.
Folders of different runs (other algorithms, seeds, suites) never share a lock, so runs of one comparison can go
in parallel. The shared cache files under `results/.cache` need no lock: every one is replaced atomically or
appended one whole line at a time, and a lost race only recomputes an entry. The models cached there as folders (a
converted GGUF, the `auto` reward models, the synthetic reference) take turns on a waiting_lock instead: training
one twice costs minutes, and a second move onto the filled folder fails. So does an LLM judge's annotation cache
(`.cache/judges/alpaca_eval-*-annotations.json`, replaced atomically too): alpaca_eval re-reads it and writes it
whole after every chunk of rows, so a lost race there loses verdicts, which may have been paid for.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from pobench.errors import PobenchError

LOCK_NAME = ".lock"
NO_FLOCK = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)   # a filesystem that cannot flock


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
    if not owner:
        return "its owner is writing its name"
    return f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('since')}"


class RunLock:
    """`acquire()` or PobenchError; `release()` removes the lock file and drops the lock."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.me = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid()),
                   "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def _read_owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}   # empty (created, not yet written) or garbage: no owner to name

    def _open(self, create: bool) -> int | None:
        """The lock file opened for writing; None where it belongs to another user (it can only be read)."""
        try:
            return os.open(self.path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        except PermissionError:
            return None

    def _flock(self, fd: int, how: int) -> bool:
        """False where another open file holds the lock. A filesystem without flock (NFS without lockd, Lustre
        mounted noflock) leaves the contents check alone, as pobench's locks were before flock."""
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno not in NO_FLOCK:
                os.close(fd)
                raise
        return True

    def _refuse(self, owner: dict | None, held_elsewhere: bool) -> None:
        """The in-use error, where the lock is held elsewhere or its file names a live owner this lock cannot see."""
        owner = owner or {}
        same_host = owner.get("host") in (None, self.me["host"])
        live_here = same_host and owner.get("pid") not in (None, self.me["pid"]) and \
            _alive(int(owner["pid"]), owner.get("start"))
        if held_elsewhere or live_here or not same_host:
            where = "" if same_host else f" (another host: remove {self.path} if that run is gone)"
            raise PobenchError(f"{self.path.parent}: in use by another pobench run ({_owner_text(owner)}){where}; "
                               f"wait for it (a new run can also choose another --out)")

    def acquire(self) -> "RunLock":
        busy = 0
        for _ in range(20):
            fd = self._open(create=True)
            if fd is None:   # another user's file: a live owner is refused, a dead one's file removed
                self._refuse(self._read_owner(), held_elsewhere=False)
                self.path.unlink(missing_ok=True)
                continue
            if not self._flock(fd, fcntl.LOCK_EX):
                os.close(fd)
                busy += 1
                if busy >= 5:   # held all along, not a passing check (refuse_if_in_use) or a release
                    self._refuse(self._read_owner(), held_elsewhere=True)
                time.sleep(0.05)
                continue
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:   # its owner removed the file on release after we opened it: lock the new one
                os.close(fd)
                continue
            try:
                self._refuse(self._read_owner(), held_elsewhere=False)
            except PobenchError:
                os.close(fd)
                raise
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(self.me).encode(), 0)
            os.fsync(fd)
            self.fd = fd
            return self
        raise PobenchError(f"{self.path}: cannot take the run folder's lock (it keeps changing hands)")

    def refuse_if_in_use(self) -> None:
        """The error `acquire()` would give for a live owner, without taking the lock: a folder that a running run
        is writing is reported as in use, not as a finished or abandoned run. It probes with a shared lock, which
        an owner's exclusive one blocks (and an acquirer waits out)."""
        try:
            fd = self._open(create=False)
        except FileNotFoundError:
            return
        if fd is None:
            self._refuse(self._read_owner(), held_elsewhere=False)
            return
        free = self._flock(fd, fcntl.LOCK_SH)
        try:
            self._refuse(self._read_owner(), held_elsewhere=not free)
        finally:
            os.close(fd)

    def release(self) -> None:
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            self.path.unlink()   # while still locked: a process that opened it meanwhile sees it gone and retries
        except OSError:
            pass
        os.close(fd)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


@contextlib.contextmanager
def waiting_lock(path: Path):
    """Hold an exclusive flock(2) on `path` (created if missing), waiting while another process holds it: for a
    shared cache entry that one process fills and the others, once let in, find filled (a GGUF converted once).
    The file stays: removing it would let a process that opened it before the removal lock an orphan beside a
    newcomer. A filesystem without flock gets no lock, as RunLock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            if e.errno not in NO_FLOCK:
                raise
        yield
    finally:
        os.close(fd)   # drops the lock
