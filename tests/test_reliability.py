"""Training faults (NaN/inf loss or gradient, out of memory), the run-folder lock, and determinism.

Faults are injected by a test-only algorithm plugin (tests/plugins/faulty_loss.py, loaded with --plugin), and
the commands go through the real entry point in-process (`pobench.cli.main`), on the tiny random model.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from pobench.engine.lock import LOCK_NAME, RunLock
from pobench.errors import PobenchError
from test_bad_inputs import check_outcome, invoke

PLUGINS = Path(__file__).parent / "plugins"
TIME_KEYS = {"time_s", "step_time_s", "tokens_per_s", "pairs_per_s", "peak_mem_gb"}
SMALL = ["--data", "sample", "--set", "data.max_train_records=16", "--set", "data.eval_size=4",
         "--set", "train.max_prompt_length=32", "--set", "train.max_completion_length=16", "--set", "train.lr=1e-3",
         "--no-eval"]


def run_args(model_dir, *extra: str, algo: str = "faulty_dpo", steps: int = 6, out: str = "out") -> list[str]:
    return ["run", "--algo", algo, "--plugin", str(PLUGINS / "faulty_loss.py"), "--model", str(model_dir),
            "--max-steps", str(steps), "--out", out, *SMALL, *extra]


# -- training faults -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fault, message", [("nan_loss", "faulty_loss.py): step 3: non-finite loss (nan)"),
                                            ("inf_loss", "faulty_loss.py): step 3: non-finite loss (inf)"),
                                            ("nan_grad", "step 3: non-finite gradient norm (nan)")])
def test_non_finite_training_stops_and_keeps_the_last_good_checkpoint(fault, message, tmp_path, tiny_model_dir,
                                                                       monkeypatch, capsys):
    args = run_args(tiny_model_dir, "--set", f"faulty_dpo.fault={fault}", "--set", "train.save_every=2")
    code, out, err = invoke(args, tmp_path, monkeypatch, capsys)
    run_dir = tmp_path / "out" / "hh-rlhf" / "faulty_dpo" / "seed1"
    check_outcome(code, out, err, "error", [message, "stopped before the update",
                                            "the last good checkpoint (step 2) is kept", "train.lr"])
    state = json.loads((run_dir / "checkpoints" / "latest" / "state.json").read_text())
    assert state["step"] == 2
    weights = load_file(str(run_dir / "checkpoints" / "latest" / "trainable.safetensors"))
    assert all(bool(w.isfinite().all()) for w in weights.values())
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert not (run_dir / LOCK_NAME).exists()   # released on the way out
    assert not (run_dir / "train_summary.json").exists()


def test_out_of_memory_names_the_knobs_and_leaves_nothing(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """A CUDA-style OutOfMemoryError at step 1 (raised by the plugin): one line naming the knobs, exit 2, and
    the run folder it had just started is removed again (no metrics, no checkpoint: nothing to resume)."""
    args = run_args(tiny_model_dir, "--set", "faulty_dpo.fault=oom", "--set", "faulty_dpo.at_step=1")
    code, out, err = invoke(args, tmp_path, monkeypatch, capsys)
    check_outcome(code, out, err, "error", [
        "faulty_dpo/seed1: out of memory", "train.batch_size", "train.grad_accum", "train.max_prompt_length",
        "train.max_completion_length", "model.gradient_checkpointing=true", "now batch_size=4"])
    assert not (tmp_path / "out" / "hh-rlhf").exists()
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file() and ".cache" not in p.parts]


def test_out_of_memory_detection():
    import torch

    from pobench.faults import is_out_of_memory, out_of_memory_as_error
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: not enough memory"))
    with pytest.raises(RuntimeError) as real:   # the CPU allocator's own failure (Linux), a real one: 128 TiB
        torch.empty(2**45, dtype=torch.float32)
    assert is_out_of_memory(real.value), str(real.value)
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    with pytest.raises(PobenchError, match="here: out of memory; lower train.batch_size"):
        with out_of_memory_as_error("here"):
            raise torch.OutOfMemoryError("CUDA out of memory")
    with pytest.raises(ValueError):
        with out_of_memory_as_error("here"):
            raise ValueError("not memory")


# -- the run-folder lock ---------------------------------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(folder: Path, **owner) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps({"since": "earlier", **owner}))


def test_lock_is_exclusive_and_released(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(PobenchError, match=f"in use by another pobench run \\(pid {os.getpid()} on "):
        RunLock(tmp_path).acquire()
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_stale_lock_of_a_dead_pid_is_taken_over(tmp_path):
    _write_lock(tmp_path, pid=_dead_pid(), host=socket.gethostname())
    lock = RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_recycled_pid_is_not_the_owner(tmp_path):
    """Our own (live) pid with another process start time: the owner died and the pid was reused."""
    _write_lock(tmp_path, pid=os.getpid(), host=socket.gethostname(), start="1")
    RunLock(tmp_path).acquire().release()


def test_lock_from_another_host_is_reported_not_broken(tmp_path):
    _write_lock(tmp_path, pid=_dead_pid(), host="some-other-host")
    with pytest.raises(PobenchError, match="another host: remove .*\\.lock if that run is gone"):
        RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == "some-other-host"


def test_run_refuses_a_folder_locked_by_a_live_run(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """A live owner (this test process) holds the run folder: `pobench run` and `run --resume` both stop with
    exit 2 naming it, and write nothing; also once the owner has written its first files (then the folder is named
    as in use, not as "already holds a run")."""
    run_dir = tmp_path / "out" / "hh-rlhf" / "dpo" / "seed1"
    run_dir.mkdir(parents=True)
    with RunLock(run_dir):
        for written in ([], ["config.yaml"]):
            for name in written:
                (run_dir / name).write_text("written by the owner\n")
            for resume in ([], ["--resume"]):
                code, out, err = invoke(run_args(tiny_model_dir, *resume, algo="dpo"), tmp_path, monkeypatch, capsys)
                check_outcome(code, out, err, "error", [str(Path("out") / "hh-rlhf" / "dpo" / "seed1"),
                                                        f"in use by another pobench run (pid {os.getpid()}"])
                assert sorted(p.name for p in run_dir.iterdir()) == sorted([LOCK_NAME, *written])
                assert all((run_dir / n).read_text() == "written by the owner\n" for n in written)


def _cli(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("POBENCH_KILL_AT", None)
    return subprocess.Popen([sys.executable, "-m", "pobench.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


@pytest.mark.slow
def test_two_concurrent_runs_into_one_results_folder(tmp_path, tiny_model_dir):
    """Run A is frozen (SIGSTOP) while it holds its run folder; run B aimed at the same folder is refused
    (exit 2, naming A's pid), run C for another seed in the same results folder goes ahead and shares the
    caches; A, resumed (SIGCONT), finishes with a complete, uncorrupted metrics.jsonl."""
    args = run_args(tiny_model_dir, algo="dpo", steps=8)
    a = _cli(args, tmp_path)
    lock = tmp_path / "out" / "hh-rlhf" / "dpo" / "seed1" / LOCK_NAME
    deadline = time.time() + 300
    while not lock.exists() and a.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert lock.exists(), a.communicate()[1][-2000:]
    os.kill(a.pid, signal.SIGSTOP)
    try:
        b = _cli(args, tmp_path)
        _, b_err = b.communicate(timeout=300)
        c = _cli(run_args(tiny_model_dir, "--seeds", "2", algo="dpo", steps=8), tmp_path)
        _, c_err = c.communicate(timeout=600)
    finally:
        os.kill(a.pid, signal.SIGCONT)
    _, a_err = a.communicate(timeout=600)
    assert b.returncode == 2 and f"in use by another pobench run (pid {a.pid}" in b_err, b_err
    assert c.returncode == 0, c_err[-2000:]
    assert a.returncode == 0, a_err[-2000:]
    for seed in (1, 2):
        rows = [json.loads(line) for line in
                (tmp_path / "out" / "hh-rlhf" / "dpo" / f"seed{seed}" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == list(range(1, 9))
    assert not lock.exists()


# -- determinism ------------------------------------------------------------------------------------------------
SEEDS = (1, 2, 3)


def _metrics(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIME_KEYS}
            for line in path.read_text().splitlines()]


def test_same_seed_and_config_give_identical_metrics(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """`pobench run --seeds 1,2,3` twice into two results folders: metrics.jsonl identical per seed (all fields
    but wall-time ones), and different between seeds."""
    seeds = ",".join(map(str, SEEDS))
    for out in ("a", "b"):
        args = run_args(tiny_model_dir, "--seeds", seeds, "--set", "train.deterministic=true",
                        "--set", "data.max_train_records=8", algo="dpo", steps=2, out=out)
        code, _, err = invoke(args, tmp_path, monkeypatch, capsys)
        assert code == 0, err
    runs = {seed: [_metrics(tmp_path / out / "hh-rlhf" / "dpo" / f"seed{seed}" / "metrics.jsonl") for out in "ab"]
            for seed in SEEDS}
    for seed, (a, b) in runs.items():
        assert len(a) == 2 and a == b, seed
    assert runs[1][0] != runs[2][0] and runs[2][0] != runs[3][0] and runs[1][0] != runs[3][0]


def test_atomic_writes_and_the_checkpoint_swap_sync_their_folder(tmp_path, monkeypatch):
    """A rename is durable only once its directory is synced: every atomic write syncs the folder it renamed in,
    and the checkpoint swap syncs checkpoints/ before it deletes `.old`, the fallback."""
    import os

    import torch

    from pobench.engine import checkpoint as CK
    from pobench.engine.io import atomic_write_text

    synced = []
    real = os.fsync

    def recording(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    atomic_write_text(tmp_path / "a.json", "{}")
    assert synced[-1] == str(tmp_path) and str(tmp_path / ".a.json.tmp") in synced[-2]
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    for step in (1, 2):   # the second swaps `latest` out through `.old`
        synced.clear()
        CK.save_checkpoint(tmp_path, model, optimizer, scheduler, {"step": step})
        assert synced[-1] == str(tmp_path / "checkpoints")
    assert CK.find_checkpoint(tmp_path) == tmp_path / "checkpoints" / "latest"


def test_the_kernel_holds_the_lock_and_drops_it_with_its_owner(tmp_path):
    """flock(2): another process holding the lock is refused whatever its file says (even emptied), and once that
    process is killed the lock is free at once, with no stale file to judge or break."""
    import signal
    import subprocess
    import sys
    code = ("import sys, time; from pobench.engine.lock import RunLock; RunLock(sys.argv[1]).acquire(); "
            "print('held', flush=True); time.sleep(120)")
    owner = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "held"
        with pytest.raises(PobenchError, match=f"in use by another pobench run \\(pid {owner.pid} on "):
            RunLock(tmp_path).acquire()
        (tmp_path / LOCK_NAME).write_text("")               # its name gone: still held
        with pytest.raises(PobenchError, match="in use by another pobench run"):
            RunLock(tmp_path).refuse_if_in_use()
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_filesystem_without_flock_still_locks_by_the_files_contents(tmp_path, monkeypatch):
    """NFS without lockd answers flock with ENOLCK: the lock is then its file alone, as before flock, and a file
    naming a live process of this host is refused (here pid 1, alive on any Linux)."""
    import errno

    from pobench.engine import lock as L

    def no_locks(fd, how):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(L.fcntl, "flock", no_locks)
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()
    _write_lock(tmp_path, pid=1, host=socket.gethostname())
    with pytest.raises(PobenchError, match="in use by another pobench run \\(pid 1 on "):
        RunLock(tmp_path).acquire()


def test_resume_drops_only_a_torn_last_metrics_line(tmp_path):
    """A damaged line in the middle of metrics.jsonl made --resume drop every row after it, good ones included,
    without a word: steps 2-4 vanished. Only a torn last line (a crash mid-write) is dropped now."""
    from pobench.engine.io import MetricsLog
    from pobench.errors import PobenchError
    path = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"step": i, "loss": 0.5}) for i in range(1, 7)]
    path.write_text("\n".join(rows) + '\n{"step": 7, "lo')
    MetricsLog(path).truncate_after(4)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]
    for damage, message in (('{"step": 2, garbage', "metrics.jsonl:2: not valid JSON"),
                            ("5", "metrics.jsonl:2: expected a metrics row"),
                            ('{"step": "2"}', "metrics.jsonl:2: expected a metrics row")):
        text = "\n".join([rows[0], damage, *rows[2:]]) + "\n"
        path.write_text(text)
        with pytest.raises(PobenchError, match=message):
            MetricsLog(path).truncate_after(4)
        assert path.read_text() == text   # nothing rewritten


@pytest.mark.parametrize("damage", ["state_not_json", "state_without_step", "weights_truncated", "optimizer_truncated"])
def test_a_damaged_checkpoint_is_named(tmp_path, damage):
    """A truncated trainable.safetensors or optimizer.pt, or a broken state.json, ended --resume and `pobench eval`
    with 'internal error: SafetensorError' (or KeyError, JSONDecodeError), naming no file."""
    import torch

    from pobench.engine.checkpoint import load_checkpoint, save_checkpoint
    from pobench.errors import PobenchError
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    save_checkpoint(tmp_path, model, optimizer, scheduler, {"step": 4}, with_optimizer=True)
    folder = tmp_path / "checkpoints" / "latest"
    assert load_checkpoint(folder, model, optimizer, scheduler)["step"] == 4
    file, text = {"state_not_json": ("state.json", b"{"), "state_without_step": ("state.json", b"{}"),
                  "weights_truncated": ("trainable.safetensors", None),
                  "optimizer_truncated": ("optimizer.pt", None)}[damage]
    path = folder / file
    path.write_bytes(text if text is not None else path.read_bytes()[:40])
    with pytest.raises(PobenchError, match=f"{file}: .*damaged checkpoint"):
        load_checkpoint(folder, model, optimizer, scheduler)


class Killed(BaseException):
    """A kill point reached in-process (faults.kill_now), where the subprocess tests send SIGKILL."""


def kill_in_process(monkeypatch) -> None:
    from pobench import faults

    def kill():
        raise Killed()
    monkeypatch.setattr(faults, "kill_now", kill)
    monkeypatch.setattr(faults, "_reached", faults.Counter())


def test_a_resume_keeps_the_runs_env_json_and_adds_itself_once_it_has_trained(tmp_path, tiny_model_dir, monkeypatch):
    """env.json names the software that trained a run's first steps. --resume rewrote it before anything was
    checked, so a resume refused by a damaged checkpoint (exit 2) still changed it, and a successful one lost
    the first environment. Now the first stays, and each finished resume is appended under `resumed`."""
    import shutil

    from typer.testing import CliRunner

    from pobench.cli import app

    kill_in_process(monkeypatch)
    out = tmp_path / "out"
    args = ["run", "--algo", "dpo", "--model", str(tiny_model_dir), "--data", "sample", "--max-steps", "3", "--out",
            str(out), "--no-eval", "--set", "train.save_every=1", "--set", "data.max_train_records=16", "--set",
            "data.eval_size=4", "--set", "train.batch_size=2"]
    monkeypatch.setenv("POBENCH_KILL_AT", "step:2")
    with pytest.raises(Killed):
        CliRunner().invoke(app, args, catch_exceptions=False)
    monkeypatch.delenv("POBENCH_KILL_AT")
    folder = out / "hh-rlhf" / "dpo" / "seed1"
    first = (folder / "env.json").read_text()
    checkpoint = folder / "checkpoints" / "latest"
    shutil.copytree(checkpoint, tmp_path / "kept")
    (checkpoint / "optimizer.pt").write_bytes((checkpoint / "optimizer.pt").read_bytes()[:40])
    refused = CliRunner().invoke(app, args + ["--resume"])   # the CLI's entry point makes this error exit 2
    assert isinstance(refused.exception, PobenchError) and "optimizer.pt" in str(refused.exception)
    assert (folder / "env.json").read_text() == first
    shutil.rmtree(checkpoint)
    shutil.copytree(tmp_path / "kept", checkpoint)
    resumed = CliRunner().invoke(app, args + ["--resume", "--set", "train.log_every=2"])
    assert resumed.exit_code == 0, resumed.output
    env = json.loads((folder / "env.json").read_text())
    assert {k: v for k, v in env.items() if k != "resumed"} == json.loads(first)
    assert len(env["resumed"]) == 1 and env["resumed"][0]["pobench"] == env["pobench"]   # in process: argv is pytest's
    assert env["resumed"][0]["settings"]["train.log_every"] == 2


EDITED_PLUGIN = """
from pobench.algorithm import LossOutput
from pobench.losses import dpo_loss
from pobench.registry import register_algorithm


@register_algorithm("edited_dpo")
class EditedDPO:
    sampler = "dataset_pair"
    needs_reference = True
    defaults = "beta: 0.1\\n"

    def loss(self, policy, reference, cfg):
        return LossOutput(*dpo_loss(policy.chosen, policy.rejected, reference.chosen, reference.rejected, cfg.beta))
"""


def test_a_resume_with_an_edited_plugin_is_refused_and_the_code_is_recorded(tmp_path, tiny_model_dir, monkeypatch):
    """A plugin's loss edited between the interruption and --resume: the run went on under the new loss without a
    word (the config names only the algorithm), and train_summary.json kept the new file's hash alone. The
    checkpoint now records the code it trained with; a resume under other code is refused, naming the file and both
    hashes, and one under the same code adds that code to env.json's `resumed` entry. A checkpoint written before
    the record has none and resumes as before."""
    import hashlib

    from typer.testing import CliRunner

    from pobench.cli import app
    from pobench.engine.checkpoint import changed_code

    kill_in_process(monkeypatch)
    plugin = tmp_path / "edited.py"
    plugin.write_text(EDITED_PLUGIN)
    first_sha = hashlib.sha1(plugin.read_bytes()).hexdigest()[:12]
    out = tmp_path / "out"
    args = ["run", "--algo", "edited_dpo", "--plugin", str(plugin), "--model", str(tiny_model_dir), "--data",
            "sample", "--max-steps", "3", "--out", str(out), "--no-eval", "--set", "train.save_every=1", "--set",
            "data.max_train_records=16", "--set", "data.eval_size=4", "--set", "train.batch_size=2"]
    monkeypatch.setenv("POBENCH_KILL_AT", "step:2")
    with pytest.raises(Killed):
        CliRunner().invoke(app, args, catch_exceptions=False)
    monkeypatch.delenv("POBENCH_KILL_AT")
    folder = out / "hh-rlhf" / "edited_dpo" / "seed1"
    state = json.loads((folder / "checkpoints" / "latest" / "state.json").read_text())
    assert state["code"]["algorithm"]["sha1"] == first_sha
    metrics = (folder / "metrics.jsonl").read_text()
    plugin.write_text(EDITED_PLUGIN + "# beta doubled\n")
    edited_sha = hashlib.sha1(plugin.read_bytes()).hexdigest()[:12]
    refused = CliRunner().invoke(app, args + ["--resume"])
    message = str(refused.exception)
    assert isinstance(refused.exception, PobenchError) and "\n" not in message, refused.output
    assert f"algorithm code {plugin} {first_sha} -> {edited_sha}" in message, message
    assert "not one run" in message and "another --out" in message
    assert (folder / "metrics.jsonl").read_text() == metrics and not (folder / "train_summary.json").exists()
    plugin.write_text(EDITED_PLUGIN)
    resumed = CliRunner().invoke(app, args + ["--resume"])
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads((folder / "train_summary.json").read_text())
    env = json.loads((folder / "env.json").read_text())
    assert summary["code"]["algorithm"]["sha1"] == first_sha
    assert env["resumed"][0]["code"] == summary["code"]
    assert changed_code(None, summary["code"]) == []             # a checkpoint from before the record
    assert changed_code(summary["code"], summary["code"]) == []


def test_a_metrics_value_or_resume_counter_of_the_wrong_type_is_named(tmp_path):
    """metrics.jsonl's values are numbers: a string one was a TypeError or ValueError deep in the report (exit 1,
    no file named). state.json's counters are what a resume adds to: a missing one was a KeyError."""
    from pobench.engine.checkpoint import check_resumable_state
    from pobench.report.collect import read_metrics
    path = tmp_path / "metrics.jsonl"
    good = {"step": 1, "pairs_seen": 2, "records_seen": 2, "loss": 0.69, "eval/loss": None}
    path.write_text(json.dumps(good) + "\n")
    assert read_metrics(path) == [good]
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")     # `head -1 metrics.jsonl >> metrics.jsonl`
    with pytest.raises(PobenchError, match="metrics.jsonl:2: step 1 after step 1"):
        read_metrics(path)
    for key, value in (("records_seen", "x"), ("eval/rewards/accuracies", "x"), ("loss", True)):
        path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "step": 2, key: value}) + "\n")
        with pytest.raises(PobenchError, match=f"metrics.jsonl:2: '{key}' must be a number, got {value!r}"):
            read_metrics(path)
    state = {"step": 3, "pairs_seen": 6, "records_seen": 6, "time_s": 1.5}
    check_resumable_state(state, tmp_path)
    for key, value in (("pairs_seen", None), ("time_s", "1.5"), ("records_seen", 6.0)):
        broken = {k: v for k, v in {**state, key: value}.items() if v is not None}
        with pytest.raises(PobenchError, match=f"state.json: '{key}' must be a number"):
            check_resumable_state(broken, tmp_path)


def test_checks_before_training_count_the_processes_the_trainer_will(monkeypatch):
    """Inside `accelerate launch` (WORLD_SIZE set) without --num-processes, the checks counted one process while the
    trainer counts the launch's: a valid run was refused by the auto judge's check, and an invalid one let through."""
    from pobench.cli import planned_world
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert planned_world(None, None) == 1 and planned_world(4, None) == 4
    assert planned_world(None, "fsdp") is None                   # only the preset knows: checked inside the launch
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert planned_world(None, None) == 8 and planned_world(None, "fsdp") == 8


def test_old_runs_resume_and_plugins_may_log_their_own_values(tmp_path):
    """A run whose config.yaml predates a config key resumes (the key's default is what it ran with); a sampler's
    own metric may be a flag, which the report leaves alone."""
    from pobench.config import RunConfig, changed_keys
    from pobench.report.collect import read_metrics
    saved = RunConfig().to_dict()
    del saved["model"]["top_p_method"]
    assert changed_keys(saved, RunConfig()) == []
    changed = RunConfig()
    changed.model.top_p_method = "reject"
    assert changed_keys(saved, changed) == ["model.top_p_method 'auto' -> 'reject'"]
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "pairs_seen": 2, "sampler/refreshed": True, "sampler/note": "x"}) + "\n")
    assert read_metrics(path)[0]["sampler/refreshed"] is True


def test_eval_and_compare_take_the_run_folders_lock(tmp_path, monkeypatch):
    """`pobench eval` beside a `pobench run` evaluating the same folder (or two compares into one head_to_head.json)
    interleaved their writes; both commands now hold the folder's lock while they write there."""
    from pobench import cli
    from pobench.engine.lock import RunLock
    folder = tmp_path / "run"
    folder.mkdir()
    with RunLock(folder):                               # held by "another run": a second holder is refused...
        with pytest.raises(PobenchError, match="in use by another pobench run"):
            with cli._folder_lock(folder):
                pass
    with cli._folder_lock(folder):                      # ...and a free folder is locked, then released
        assert (folder / ".lock").exists()
    import contextlib
    assert isinstance(cli._folder_lock(folder, is_main=False), contextlib.nullcontext)


def test_resume_does_not_count_runs_another_command_is_training(tmp_path):
    """`pobench run --algo dpo --resume` and `--algo simpo --resume` started side by side into one --out: the second
    found the first's folder unfinished, and refused to start (nothing to resume) while it was being trained."""
    from pobench.cli import _unfinished_runs
    from pobench.engine.lock import RunLock
    run_dir = tmp_path / "out" / "hh-rlhf" / "dpo" / "seed1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 1\n")
    lock = RunLock(run_dir)
    lock.acquire()
    try:
        assert _unfinished_runs(tmp_path / "out") == []
    finally:
        lock.release()
    assert _unfinished_runs(tmp_path / "out") == [run_dir]
