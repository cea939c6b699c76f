"""Crash safety: a run killed at any point resumes to the uninterrupted run's exact metrics.

The crash is placed, not timed: POBENCH_KILL_AT=<point>:<n> (pobench/faults.py, a test hook) makes the process
SIGKILL itself the n-th time it reaches a named point. Every scenario checks what the kill left (a torn
metrics line, a half-written checkpoint, a half-stored candidate pool) and that `pobench run --resume` then
finishes with metrics equal to the uninterrupted run's (CPU, train.deterministic=true): exactly equal on
the same machine (TOLERANCE is 0 for losses and rewards; 1e-6 relative is allowed only to survive
reordering-free float noise if a platform ever shows it), with every step once, no torn line, and the run
folder's lock released.

The real-SIGKILL scenarios run `pobench` subprocesses (~10 s each on an idle 2-core machine): marked slow, run
with `make test-slow`. The fast variant in the default run stops in-process at the same points by replacing the
kill with an exception that unwinds (it shows the same on-disk states, minus the abruptness).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pobench import faults
from pobench.engine.checkpoint import find_checkpoint

PLUGIN = Path(__file__).parent / "plugins" / "gold_length.py"
TIME_KEYS = {"time_s", "step_time_s", "tokens_per_s", "pairs_per_s", "peak_mem_gb"}
SUMMARY_TIME_KEYS = {"train_time_s", "pairs_per_s"}
TOLERANCE = 1e-6  # relative; observed: 0 (bit-identical)

# MC-PO with a pool generated from the reference policy: one run passes every kill point.
RUN_SETTINGS = ["data.max_train_records=24", "data.eval_size=4", "train.batch_size=2", "train.save_every=2",
                "train.eval_every=3", "train.max_prompt_length=48", "train.max_completion_length=24",
                "train.lr=1e-3", "train.deterministic=true", "pool.source=generated",
                "pool.reward_model=gold:test-words", "pool.num_samples=3", "pool.max_new_tokens=6",
                "pool.batch_size=6"]
MAX_STEPS = 6

# point:n -> what the kill must have left behind (checked before resuming)
SCENARIOS = {
    "refcache:2": "no_reference_cache",
    "pool:2": "pool_partly_stored",
    "pool_append:3": "pool_torn_line",
    "eval:1": "no_metrics",            # the held-out evaluation before step 1
    "eval:2": "metrics_up_to_2",       # the one after step 3 (its metrics line waits for it)
    "eval:3": "metrics_up_to_5",       # the final one, after step 6
    "step:3": "checkpoint_2",
    "checkpoint:2": "half_written_checkpoint",
    "checkpoint_swap:2": "only_old_checkpoint",
    "metrics:5": "torn_metrics_line",
    "summary:1": "no_summary",
}


def _env(kill: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("POBENCH_KILL_AT", "POBENCH_DEBUG")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               NO_COLOR="1")
    if kill:
        env["POBENCH_KILL_AT"] = kill
    return env


def pobench_run(out: Path, model_dir: Path, kill: str | None = None, resume: bool = False):
    cmd = [sys.executable, "-m", "pobench.cli", "run", "--algo", "mcpo", "--plugin", str(PLUGIN), "--model",
           str(model_dir), "--data", "sample", "--max-steps", str(MAX_STEPS), "--out", str(out), "--no-eval"]
    for s in RUN_SETTINGS:
        cmd += ["--set", s]
    if resume:
        cmd.append("--resume")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=_env(kill), cwd=out.parent)


def run_dir(out: Path) -> Path:
    return out / "hh-rlhf" / "mcpo" / "seed1"


def metric_rows(folder: Path) -> list[dict]:
    text = (folder / "metrics.jsonl").read_text()
    assert text.endswith("\n"), "metrics.jsonl ends in a torn line"
    return [json.loads(line) for line in text.splitlines()]


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


def assert_same_run(got: Path, want: Path) -> None:
    rows, ref = comparable(metric_rows(got)), comparable(metric_rows(want))
    assert [r["step"] for r in rows] == list(range(1, MAX_STEPS + 1))
    assert [sorted(r) for r in rows] == [sorted(r) for r in ref]
    for r, w in zip(rows, ref):
        for key, value in w.items():
            assert r[key] == pytest.approx(value, rel=TOLERANCE, abs=1e-9), (r["step"], key)
    summaries = [{k: v for k, v in json.loads((d / "train_summary.json").read_text()).items()
                  if k not in SUMMARY_TIME_KEYS | {"candidate_pool"}} for d in (got, want)]
    assert summaries[0]["held_out_final"] == pytest.approx(summaries[1]["held_out_final"], rel=TOLERANCE)
    assert summaries[0]["steps"] == summaries[1]["steps"] == MAX_STEPS


def check_aftermath(kind: str, out: Path) -> None:
    """What the kill left on disk, before --resume touches it."""
    folder, cache = run_dir(out), out / ".cache"
    if kind == "no_reference_cache":
        assert not list((cache / "reflogps").glob("*.pt"))
    elif kind == "pool_partly_stored":
        lines = next((cache / "pools").glob("*.jsonl")).read_text().splitlines()
        assert len(lines) == 2 * 2  # two chunks of two prompts
    elif kind == "pool_torn_line":
        text = next((cache / "pools").glob("*.jsonl")).read_text()
        assert not text.endswith("\n")
    elif kind == "no_metrics":
        assert not (folder / "metrics.jsonl").exists() and find_checkpoint(folder) is None
    elif kind.startswith("metrics_up_to_"):
        last = int(kind.rsplit("_", 1)[1])
        assert [r["step"] for r in metric_rows(folder)] == list(range(1, last + 1))
    elif kind == "checkpoint_2":
        assert json.loads((find_checkpoint(folder) / "state.json").read_text())["step"] == 2
    elif kind == "half_written_checkpoint":
        tmp = list((folder / "checkpoints").glob(".tmp*"))
        assert len(tmp) == 1 and (tmp[0] / "trainable.safetensors").is_file() and not (tmp[0] / "state.json").exists()
        assert find_checkpoint(folder).name == "latest"
        assert json.loads((find_checkpoint(folder) / "state.json").read_text())["step"] == 2
    elif kind == "only_old_checkpoint":
        assert not (folder / "checkpoints" / "latest").exists()
        assert find_checkpoint(folder).name == ".old"
    elif kind == "torn_metrics_line":
        assert not (folder / "metrics.jsonl").read_text().endswith("\n")
    elif kind == "no_summary":
        assert not (folder / "train_summary.json").exists() and len(metric_rows(folder)) == MAX_STEPS


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_model_dir) -> Path:
    out = tmp_path_factory.mktemp("crash-ref") / "out"
    out.parent.mkdir(exist_ok=True)
    proc = pobench_run(out, tiny_model_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir(out)


@pytest.mark.slow
@pytest.mark.parametrize("kill", list(SCENARIOS))
def test_sigkill_then_resume_reproduces_the_run(tmp_path, tiny_model_dir, reference_run, kill):
    out = tmp_path / "out"
    crashed = pobench_run(out, tiny_model_dir, kill=kill)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    check_aftermath(SCENARIOS[kill], out)
    assert (run_dir(out) / ".lock").exists()  # a killed run cannot release its lock: the next run finds it stale
    resumed = pobench_run(out, tiny_model_dir, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(run_dir(out), reference_run)
    assert not (run_dir(out) / ".lock").exists()
    assert not list((run_dir(out) / "checkpoints").glob(".tmp*"))  # the crashed writer's leftovers are gone
    # the same candidates as the uninterrupted run
    assert pool_entries(out / ".cache") == pool_entries(reference_run.parents[2] / ".cache")


def pool_entries(cache: Path) -> dict:
    """The pool store as readers see it: the first entry per prompt; a torn line left by a kill is skipped."""
    entries: dict = {}
    for line in next((cache / "pools").glob("*.jsonl")).read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        entry.pop("seconds")   # what making it took: a measurement, not part of the pool
        entries.setdefault(entry["key"], entry)
    return entries


# -- the fast variant: in-process, the kill replaced by an exception -------------------------------------------
class SimulatedKill(BaseException):
    """Raised where SIGKILL would land; BaseException so that no `except Exception` in pobench swallows it."""


def _raise_kill():
    raise SimulatedKill()


def train_in_process(folder: Path, cache: Path, model_dir: Path, resume: bool = False):
    from pobench.registry import load_plugin
    from test_engine import run_train

    load_plugin(PLUGIN)
    pool = {"source": "generated", "reward_model": "gold:test-words", "num_samples": 3, "max_new_tokens": 6,
            "batch_size": 6}
    return run_train(folder, model_dir, algo="mcpo", resume=resume, cache=cache, pool=pool, max_steps=MAX_STEPS,
                     batch_size=2, save_every=2, eval_every=3, deterministic=True)


@pytest.fixture(scope="module")
def reference_in_process(tmp_path_factory, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("crash-inproc-ref")
    train_in_process(root / "run", root / "cache", tiny_model_dir)
    return root


@pytest.mark.parametrize("kill", ["pool_append:3", "checkpoint:2", "metrics:5"])
def test_crash_in_process_then_resume_reproduces_the_run(tmp_path, tiny_model_dir, reference_in_process,
                                                         monkeypatch, kill):
    monkeypatch.setattr(faults, "kill_now", _raise_kill)
    monkeypatch.setattr(faults, "_reached", faults.Counter())
    monkeypatch.setenv("POBENCH_KILL_AT", kill)
    with pytest.raises(SimulatedKill):
        train_in_process(tmp_path / "run", tmp_path / "cache", tiny_model_dir)
    monkeypatch.delenv("POBENCH_KILL_AT")
    if kill.startswith("metrics"):
        assert not (tmp_path / "run" / "metrics.jsonl").read_text().endswith("\n")
    train_in_process(tmp_path / "run", tmp_path / "cache", tiny_model_dir, resume=True)
    ref = reference_in_process / "run"
    rows, want = comparable(metric_rows(tmp_path / "run")), comparable(metric_rows(ref))
    assert [r["step"] for r in rows] == list(range(1, MAX_STEPS + 1))
    assert rows == want  # bit-identical on CPU
    assert pool_entries(tmp_path / "cache") == pool_entries(reference_in_process / "cache")


def test_kill_hook_is_inert_without_the_variable(monkeypatch):
    monkeypatch.delenv("POBENCH_KILL_AT", raising=False)
    monkeypatch.setattr(faults, "kill_now", _raise_kill)
    for _ in range(3):
        faults.kill_point("step")  # nothing happens
    monkeypatch.setenv("POBENCH_KILL_AT", "step:2")
    monkeypatch.setattr(faults, "_reached", faults.Counter())
    faults.kill_point("step")
    with pytest.raises(SimulatedKill):
        faults.kill_point("step")
    monkeypatch.setenv("POBENCH_KILL_AT", "stepp:2")
    with pytest.raises(ValueError, match="stepp"):
        faults.kill_point("step")
