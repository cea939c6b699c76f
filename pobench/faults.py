"""Faults: a crash-injection hook for tests, and out-of-memory turned into an error a user can act on.

TEST HOOK, not a feature: `POBENCH_KILL_AT=<point>:<n>` makes the process SIGKILL itself the n-th time (1-based)
it reaches the named point, so the crash-safety tests (tests/test_crash.py) can stop a run at an exact place
instead of guessing with timers. Several points may be given, comma-separated. Unset (always, outside tests),
`kill_point` costs one dict lookup. The points:

    refcache         after a chunk of reference log-probs is computed, before the cache file is written
    pool             after a chunk of candidate pools is appended to the pool store
    pool_append      in the middle of writing a pool-store line (a torn line is left behind)
    eval             in held-out evaluation, after the policy has scored the held-out pairs
    step             mid-step: after backward, before the optimizer update
    checkpoint       in a checkpoint write: weights written to the temporary folder, state.json not yet
    checkpoint_swap  between the two renames that swap a new checkpoint in (only `.old` is complete)
    metrics          in the middle of appending a metrics.jsonl line (a torn line is left behind)
    summary          after the last step, before train_summary.json is written
"""
from __future__ import annotations

import contextlib
import os
import signal
from collections import Counter

KILL_POINTS = ("refcache", "pool", "pool_append", "eval", "step", "checkpoint", "checkpoint_swap", "metrics",
               "summary")
_reached: Counter = Counter()


def _kill_plan() -> dict[str, int]:
    """{point: n} from POBENCH_KILL_AT; read on every call so a test can set it per run in-process."""
    spec = os.environ.get("POBENCH_KILL_AT", "")
    plan = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        point, _, n = item.partition(":")
        if point not in KILL_POINTS or not n.isdigit() or int(n) < 1:
            raise ValueError(f"POBENCH_KILL_AT: bad item {item!r} (expected <point>:<n>, point one of "
                             f"{', '.join(KILL_POINTS)})")
        plan[point] = int(n)
    return plan


def armed(point: str) -> bool:
    """Whether reaching `point` now would kill (lets a writer leave a torn line behind first)."""
    if "POBENCH_KILL_AT" not in os.environ:
        return False
    return _kill_plan().get(point) == _reached[point] + 1


def kill_point(point: str) -> None:
    """SIGKILL this process the n-th time `point` is reached, when POBENCH_KILL_AT asks for it (tests only)."""
    if "POBENCH_KILL_AT" not in os.environ:
        return
    _reached[point] += 1
    if _kill_plan().get(point) == _reached[point]:
        kill_now()


def kill_now() -> None:
    """What a kill point does. In-process tests replace this with an exception (nothing below it runs either)."""
    os.kill(os.getpid(), signal.SIGKILL)


OOM_KNOBS = ("train.batch_size (with train.grad_accum to keep the effective batch)",
             "train.max_prompt_length / train.max_completion_length",
             "pool.batch_size / eval.batch_size (generation)", "model.gradient_checkpointing=true",
             "model.lora_r (LoRA instead of full fine-tuning)")


def _rows(batch_size: int) -> str:
    return "0 (auto: set a number)" if batch_size == 0 else str(batch_size)


def oom_message(where: str, cfg=None) -> str:
    """One line: where memory ran out, the knobs that bound memory, and their current values where known."""
    now = ""
    if cfg is not None:
        t, m = cfg.train, cfg.model
        now = (f" (now batch_size={t.batch_size}, grad_accum={t.grad_accum}, max_prompt_length={t.max_prompt_length}, "
               f"max_completion_length={t.max_completion_length}, gradient_checkpointing={m.gradient_checkpointing}, "
               f"lora_r={m.lora_r}, pool.batch_size={_rows(cfg.pool.batch_size)}"
               + (f", eval.batch_size={_rows(cfg.eval.batch_size)})" if hasattr(cfg, "eval") else ")"))
    return f"{where}: out of memory; lower " + ", ".join(OOM_KNOBS[:3]) + ", or set " + \
        ", ".join(OOM_KNOBS[3:]) + now


def is_out_of_memory(error: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA, and MPS/XPU where they raise it), the CPU allocator's RuntimeError ("can't
    allocate memory ... (Cannot allocate memory)" under Linux, "not enough memory" elsewhere) and Python's own
    MemoryError, without importing torch to ask."""
    if type(error).__name__ == "OutOfMemoryError" or isinstance(error, MemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        s in text for s in ("out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory"))


@contextlib.contextmanager
def out_of_memory_as_error(where: str, cfg=None):
    """Re-raise out-of-memory inside the block as a PobenchError (exit 2) naming the knobs that bound memory."""
    from pobench.errors import PobenchError
    try:
        yield
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        raise PobenchError(oom_message(where, cfg)) from None
