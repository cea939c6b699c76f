"""Atomic file writes and the metrics log: a crash never leaves a half-written file behind; reading JSON lines
back with errors that name the file and line."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from pobench import faults
from pobench.errors import PobenchError


def fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable: without it a power loss can bring back the old name's file (or none)
    even though the new file's bytes reached the disk. Filesystems that cannot sync a directory are let be."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, data) -> None:
    """Strict JSON (`json_text`): every result file pobench writes whole (eval.json, train_summary.json,
    head_to_head.json, gold_eval.json, a checkpoint's state.json) goes through here."""
    atomic_write_text(path, json_text(data, indent=2, default=str) + "\n")


def append_line(path: Path, line: str, kill_point: str | None = None) -> None:
    """Append one line with a single write() on an O_APPEND descriptor: a concurrent appender cannot interleave
    inside it. A torn last line left by a crash (power loss, a full disk) is closed with a newline first, so it
    stays one bad line that readers skip instead of swallowing this one. `kill_point` names the crash-test hook
    (pobench/faults.py) that stops half-way through the line."""
    data = (line + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        if kill_point:
            if faults.armed(kill_point):
                os.write(fd, data[:len(data) // 2])
            faults.kill_point(kill_point)
        if os.write(fd, data) != len(data):
            raise OSError(f"{path}: short write (disk full?)")
    finally:
        os.close(fd)


# How every result file pobench writes holds an infinity (+-INFINITY): strict JSON has no Infinity. Readers take a
# number this large (is_written_infinity) for the infinity it stands for, never for a value (a mean over seeds of
# 1e308 and 0.5 overflowed; of 1e308 twice it was inf, which `pobench report --format json` could not write).
INFINITY = 1e308


def is_written_infinity(value) -> bool:
    """Whether `value` is a number the writer's rule makes of an infinity (or an infinity itself)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) >= INFINITY


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (INFINITY if value > 0 else -INFINITY)
    return value


def finite_json(value):
    """`value` with the result files' rule applied through its dicts, lists and tuples: NaN as null (not measured),
    an infinity as +-INFINITY. Python's json writes NaN and Infinity bare, which is not JSON: strict readers (jq,
    JavaScript, `pobench report --format json`'s own writer) refuse the file; eval.json held a bare NaN for the
    standard error of one judged prompt, and metrics.jsonl a sampler's nested one."""
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return _clean(value)


def json_text(data, **kwargs) -> str:
    """json.dumps of finite_json(data), refusing (ValueError) any non-finite number left, so nothing writes one."""
    return json.dumps(finite_json(data), allow_nan=False, **kwargs)


def finite_metrics(row: dict | None) -> dict | None:
    """A row of metrics as metrics.jsonl holds it: finite_json's rule (NaN as null, an infinity as +-INFINITY), at
    every depth (a sampler's `sampler/*` value may be a list or an object). train_summary.json's held-out metrics go
    through it too: json.dumps wrote NaN and Infinity there (a plugin loss that is not finite on the held-out pairs,
    which no training step checks), and pobench report refuses a literal Infinity as a damaged file."""
    return None if row is None else finite_json(row)


class MetricsLog:
    """metrics.jsonl: one JSON object per logged step, flushed per line."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """On resume: keep lines up to `step`; drop later ones and a torn last line (a crash mid-write). Any other
        damage is an error naming the line, before anything is rewritten: dropping from there on would lose the
        good rows after it without a word."""
        if not self.path.exists():
            return
        kept = []
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                if i == len(lines):
                    break
                raise PobenchError(f"{self.path}:{i}: not valid JSON ({e.msg}); only a torn last line is dropped on "
                                   f"--resume: mend or delete the line") from None
            if not isinstance(row, dict) or not isinstance(row.get("step"), int) or isinstance(row["step"], bool):
                raise PobenchError(f"{self.path}:{i}: expected a metrics row (an object with an integer 'step')")
            if row["step"] <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def append(self, row: dict) -> None:
        append_line(self.path, json_text(row), "metrics")   # strict JSON, as every result file

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_jsonl(path: Path, required_key: str) -> list[tuple[int, dict]]:
    """(line number, object) of every non-blank line; a line that is not a JSON object holding `required_key` is
    an error naming the file and line."""
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PobenchError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise PobenchError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or required_key not in row:
            raise PobenchError(f"{path}:{i}: expected an object with '{required_key}'")
        rows.append((i, row))
    return rows
