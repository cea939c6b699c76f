"""Distributed runs: sharding helpers, launch presets, and a real 2-process DDP run (gloo, CPU) against one process.

The equivalence test launches `pobench run --num-processes 2` (accelerate's launcher, the shipped `ddp` preset),
each process training on half of every global batch, and compares its metrics with one process training on the
whole batch: same pairs, same order, same updates. What may differ is float rounding: padded batch shapes differ
(4 vs 8 sequences per forward) and DDP sums two half-batch gradients. A sibling does the same for MC-PO, whose random
draws are keyed by each record's place in the global batch, so that 2 processes draw the negatives 1 process draws.

Tolerance: every metric within 1e-5 relative, except the implicit rewards, which are beta times the difference of
two summed log-probs of ~-250 whose float32 resolution is ~1.5e-5: they are compared within 1e-5 absolute.
Measured (4 steps, tiny Llama): largest relative difference 5e-7 (loss), largest reward difference 8e-7 absolute;
log-probs differed by at most one float32 ulp and the held-out metrics were identical.

The DPO launch also evaluates its run, the work split across the two ranks (policy and reference generation, KL
samples, a gold judge). One process evaluating the same checkpoint must write the same generations.jsonl (exactly:
generation is seeded per prompt, and a gold judge is a function of the text) and the same eval.json, where only the
KL estimate (log-probs summed in batches of another composition) may differ, within 1e-4 absolute. An audit hook in
every process of that launch logs each file it opens for writing under the results root: only rank 0 may appear.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pobench.engine import distributed as D
from pobench.errors import PobenchError
from test_mcpo import pool_data  # noqa: F401  (fixture)

# metrics compared between the 2-process and the 1-process run; time and throughput are not
COMPARED = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
            "logps/rejected", "grad_norm", "learning_rate", "pairs_seen", "records_seen")
REL_TOL = 1e-5     # relative, on every compared value but the rewards
REWARD_ABS_TOL = 1e-5  # absolute, on rewards/* (differences of log-probs, see above)


@given(n=st.integers(0, 40), world=st.integers(1, 8))
def test_contiguous_shards_concatenate_back_to_the_items(n, world):
    items = list(range(n))
    shards = [D.local_shard(items, rank, world) for rank in range(world)] if n else [[] for _ in range(world)]
    assert len({len(s) for s in shards}) == 1            # every rank runs the same number of forwards
    merged = [x for s in shards for x in s]
    assert merged[:n] == items and set(merged[n:]) <= set(items[-1:])


def test_map_sharded_in_one_process_is_a_plain_call():
    one = types.SimpleNamespace(num_processes=1, process_index=0)
    assert D.map_sharded(lambda xs: [x * 2 for x in xs], [1, 2, 3], one) == [2, 4, 6]
    assert D.mean_over_ranks({"a": 1.0}, one) == {"a": 1.0} and D.sum_over_ranks(5, one) == 5


def test_presets_are_accelerate_configs():
    from accelerate.commands.config.config_args import load_config_from_file

    from pobench.launch import preset_path, presets
    kinds = {name: load_config_from_file(str(path)).distributed_type for name, path in presets().items()}
    assert {k: v.value for k, v in kinds.items()} == {
        "ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed-zero2": "DEEPSPEED", "deepspeed-zero3": "DEEPSPEED",
        "multinode-ddp": "MULTI_GPU"}
    assert preset_path("fsdp").name == "fsdp.yaml"
    with pytest.raises(PobenchError, match="--launch-config nope"):
        preset_path("nope")


def test_launch_command_reruns_the_same_arguments():
    from pobench.launch import launch_command, preset_path
    cmd = launch_command(["run", "--algo", "dpo", "--num-processes", "2"], 2, preset_path("ddp"), 12345)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "2" and cmd[cmd.index("--main_process_port") + 1] == "12345"
    assert cmd[cmd.index("-m", 3):] == ["-m", "pobench.cli", "run", "--algo", "dpo", "--num-processes", "2"]


def _settings(model_dir: Path, batch_size: int) -> dict:
    return {"model": {"name_or_path": str(model_dir)}, "seed": 1,
            "data": {"path": "sample", "schema": "hh", "max_train_records": 48, "eval_size": 8},
            "train": {"max_steps": 4, "batch_size": batch_size, "eval_every": 2, "lr": 1e-3, "deterministic": True,
                      "max_prompt_length": 48, "max_completion_length": 24}}


def _set_args(settings: dict, prefix: str = "") -> list[str]:
    """--set arguments for `settings`, but the seed: on the command line it is --seeds' (1 by default)."""
    args = []
    for key, value in settings.items():
        if not prefix and key == "seed":
            assert value == 1
            continue
        if isinstance(value, dict):
            args += _set_args(value, f"{prefix}{key}.")
        else:
            args += ["--set", f"{prefix}{key}={value}"]
    return args


def _close(key: str, a: float, b: float) -> bool:
    if "rewards/" in key and "accuracies" not in key:
        return abs(a - b) <= REWARD_ABS_TOL
    return math.isclose(a, b, rel_tol=REL_TOL)


def _two_processes_against_one(tmp_path: Path, model_dir: Path, algo: str, extra: dict | None = None,
                               compared: tuple = COMPARED, launch_args: tuple = ("--no-eval",),
                               env_extra: dict | None = None) -> tuple[dict, float]:
    """`pobench run --num-processes 2` with 2 pairs per process against one process with 4 pairs, 4 steps: every
    compared metric of every step (and the held-out metrics) must agree. Returns the largest absolute difference
    per metric and the launch's wall time."""
    from pobench import config as C
    from pobench.data import load_suite_data
    from pobench.engine.trainer import train
    from pobench.registry import algorithm_defaults, get_algorithm, load_suite

    settings = lambda batch: C.deep_merge(_settings(model_dir, batch), extra or {})  # noqa: E731
    # two processes x 2 pairs, launched through the CLI (its own reference cache, built sharded across the ranks)
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           **(env_extra or {})}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pobench.cli", "run", "--algo", algo, "--out", str(out),
                           *launch_args, "--num-processes", "2", *_set_args(settings(2))],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    launched_s = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = out / "hh-rlhf" / algo / "seed1"
    two = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["global_batch_size"] == 4
    assert [r["step"] for r in two] == [1, 2, 3, 4]       # written once, by the main process

    # one process x 4 pairs, in this process
    algorithm = get_algorithm(algo)
    cfg = C.resolve(load_suite("hh-rlhf"), algo, algorithm_defaults(algorithm), {}, settings(4), [algo])
    one_summary = train(cfg, algorithm, load_suite_data(cfg.data, cfg.seed), tmp_path / "one", tmp_path / "one-cache")
    one = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]

    assert len(two) == len(one) == 4
    worst: dict = {}
    for a, b in zip(two, one):
        for key in compared + tuple(k for k in b if k.startswith("eval/")):
            assert _close(key, a[key], b[key]), f"step {b['step']} {key}: 2 processes {a[key]!r}, 1 process {b[key]!r}"
            worst[key] = max(worst.get(key, 0.0), abs(a[key] - b[key]))
    for key, value in one_summary["held_out_final"].items():
        assert _close(key, summary["held_out_final"][key], value), key
    return worst, launched_s


def _report(worst: dict, launched_s: float, processes: int = 2) -> None:
    print(f"\n{processes}-process launch {launched_s:.1f} s; largest absolute differences: "
          + ", ".join(f"{k} {v:.1e}" for k, v in sorted(worst.items()) if v))


# sitecustomize (put on PYTHONPATH): every process of a launch logs the files it opens for writing under a root
WRITE_AUDIT = """
import os, sys
_root, _log = os.environ["POBENCH_TEST_AUDIT_ROOT"], os.environ["POBENCH_TEST_AUDIT_LOG"]
def _hook(event, args):
    if event == "open" and isinstance(args[0], (str, os.PathLike)):
        mode, flags = args[1], args[2] or 0
        writing = any(c in mode for c in "wax+") if mode else bool(flags & (os.O_WRONLY | os.O_RDWR))
    elif event in ("os.rename", "os.replace", "os.remove") and isinstance(args[0], (str, os.PathLike)):
        writing = True
    else:
        return
    path = os.path.abspath(os.fspath(args[0]))
    if writing and path.startswith(_root):
        with open(_log, "a") as f:
            f.write(os.environ.get("RANK", "launcher") + " " + event + " " + path + chr(10))
sys.addaudithook(_hook)
"""
GOLD_PLUGIN = Path(__file__).parent / "plugins" / "gold_length.py"
EVAL_SETTINGS = {"judge": "gold:test-words", "num_prompts": 5, "max_new_tokens": 8, "batch_size": 2, "kl_samples": 2,
                 "judge_check_pairs": 3, "bootstrap": 200}   # 5 prompts: shards of 3 and 2 (+1 padding)
KL_ABS_TOL = 1e-4


def _write_audit(tmp_path: Path, root: Path) -> dict:
    folder = tmp_path / "audit"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(WRITE_AUDIT)
    return {"PYTHONPATH": os.pathsep.join([str(folder), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "POBENCH_TEST_AUDIT_ROOT": str(root), "POBENCH_TEST_AUDIT_LOG": str(tmp_path / "writes.log")}


def _eval_matches_one_process(tmp_path: Path, run: Path) -> tuple[dict, float]:
    """Evaluate a copy of the launched run's folder in this process (a cache of its own, so that it generates the
    reference outputs too) and compare; returns the KL differences and this evaluation's wall time."""
    from pobench.eval.runner import evaluate_run
    from pobench.registry import discover
    discover([str(GOLD_PLUGIN)])
    single = tmp_path / "single" / "hh-rlhf" / "dpo" / "seed1"
    shutil.copytree(run, single, ignore=shutil.ignore_patterns("eval.json", "generations.jsonl"))
    started = time.perf_counter()
    one = evaluate_run(single, tmp_path / "single-cache")
    eval_s = time.perf_counter() - started
    two = json.loads((run / "eval.json").read_text())
    assert (single / "generations.jsonl").read_text() == (run / "generations.jsonl").read_text()
    assert two["n_prompts"] == 5 and two["judge"]["held_out_agreement"]["pairs"] == 3 and two["kl"] is not None
    kl_diff = {k: abs(two[k] - one[k]) for k in ("kl", "kl_se")}
    assert max(kl_diff.values()) <= KL_ABS_TOL, kl_diff
    skip = {"kl", "kl_se", "kl_info", "eval_time_s", "reference"}
    assert {k: v for k, v in two.items() if k not in skip} == {k: v for k, v in one.items() if k not in skip}
    assert {**two["reference"], "store": None} == {**one["reference"], "store": None}
    stored = [json.loads(line)["key"] for line in Path(two["reference"]["store"]).read_text().splitlines()]
    assert len(stored) == len(set(stored)) == 5                    # the shared reference cache, appended once
    return kl_diff, eval_s


def test_two_process_ddp_run_matches_one_process_with_the_same_global_batch(tmp_path, tiny_model_dir):
    """Training, and then evaluation split across the ranks, as one process trains and evaluates."""
    out = tmp_path / "ddp"
    worst, launched_s = _two_processes_against_one(tmp_path, tiny_model_dir, "dpo", {"eval": EVAL_SETTINGS},
                                                   launch_args=("--plugin", str(GOLD_PLUGIN)),
                                                   env_extra=_write_audit(tmp_path, out))
    writers = {line.split()[0] for line in (tmp_path / "writes.log").read_text().splitlines()}
    assert writers == {"0"}, writers                               # rank 1 wrote nothing under the results root
    kl_diff, eval_s = _eval_matches_one_process(tmp_path, out / "hh-rlhf" / "dpo" / "seed1")
    _report(worst, launched_s)
    print(f"(the launch trains and evaluates; one process evaluates in {eval_s:.1f} s; eval.json differences: "
          + ", ".join(f"{k} {v:.1e}" for k, v in kl_diff.items()) + ", every other value equal)")


def test_two_process_mcpo_run_draws_what_one_process_draws(tmp_path, tiny_model_dir, pool_data):
    """MC-PO on the records' own 4-candidate pools (3 per record in the kernel's pool): each record's negative is
    drawn from a stream keyed by its place in the global batch (pobench.sampling.record_generator), so 2 processes
    draw the negatives 1 process draws, and train and log the same (the sampler's metrics included)."""
    # a checkpoint at step 2 gathers every rank's sampler state (MC-PO's kept scores) into it, under the launch too
    extra = {"data": {"path": str(pool_data), "schema": "auto"}, "algorithm": {"num_candidates": 3},
             "train": {"save_every": 2}}
    sampler_keys = ("sampler/drawn_is_dataset_rejected", "sampler/drawn_rm_rank", "sampler/kernel_entropy")
    _report(*_two_processes_against_one(tmp_path, tiny_model_dir, "mcpo", extra, COMPARED + sampler_keys))


def _launch(tmp_path: Path, model_dir: Path, out: str, *extra: str, env_extra: dict | None = None):
    settings = _settings(model_dir, 2)
    settings["train"]["save_every"] = 2
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "pobench.cli", "run", "--out", str(tmp_path / out), "--no-eval",
                           "--num-processes", "2", *_set_args(settings), *extra],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)


@pytest.mark.slow
def test_ddp_resume_after_a_crash_reproduces_the_run(tmp_path, tiny_model_dir):
    """Both ranks die mid-step 3 (after backward, before the update); --resume under 2 processes continues from the
    step-2 checkpoint and logs exactly what the uninterrupted 2-process run logged."""
    whole = _launch(tmp_path, tiny_model_dir, "whole", "--algo", "dpo")
    assert whole.returncode == 0, whole.stderr[-3000:]
    crashed = _launch(tmp_path, tiny_model_dir, "cut", "--algo", "dpo", env_extra={"POBENCH_KILL_AT": "step:3"})
    assert crashed.returncode != 0
    resumed = _launch(tmp_path, tiny_model_dir, "cut", "--algo", "dpo", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    timeless = lambda row: {k: v for k, v in row.items() if not (k.endswith("_s") or k.endswith("per_s"))}  # noqa: E731
    rows = {name: [timeless(json.loads(line)) for line in
                   (tmp_path / name / "hh-rlhf" / "dpo" / "seed1" / "metrics.jsonl").read_text().splitlines()]
            for name in ("whole", "cut")}
    assert [r["step"] for r in rows["cut"]] == [1, 2, 3, 4] and rows["cut"] == rows["whole"]


@pytest.mark.slow
def test_ddp_mcpo_generates_each_pool_once_across_ranks(tmp_path, tiny_model_dir):
    """Generated candidate pools are split over the ranks and written once, by the main process."""
    plugin = Path(__file__).parent / "plugins" / "gold_length.py"
    proc = _launch(tmp_path, tiny_model_dir, "mcpo", "--algo", "mcpo", "--plugin", str(plugin),
                   "--set", "pool.source=generated", "--set", "pool.reward_model=gold:test-words",
                   "--set", "pool.num_samples=3", "--set", "pool.max_new_tokens=6", "--set", "pool.batch_size=6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "mcpo" / "hh-rlhf" / "mcpo" / "seed1" / "train_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["pairs_seen"] == 16
    store = tmp_path / summary["candidate_pool"]["store"]  # relative to the command's folder, or absolute
    lines = [json.loads(line) for line in store.read_text().splitlines()]
    assert len(lines) == len({e["key"] for e in lines}) == summary["candidate_pool"]["prompts"] == 16
    assert all(len(e["candidates"]) == 3 for e in lines)
    # the records' chosen, scored by the same reward model for MC-PO's negatives: once, by the main process
    chosen = [json.loads(line) for line in (store.parent / "chosen" / store.name).read_text().splitlines()]
    assert len(chosen) == len({e["key"] for e in chosen}) == 16


# -- FSDP and DeepSpeed on the CPU -------------------------------------------------------------------------------
# accelerate runs FSDP and DeepSpeed on GPUs only and pobench refuses them on the CPU; tests/launch/sharded_on_cpu.py
# lifts accelerate's rule in the launched processes, so that the shipped presets run on 2 CPU processes over gloo:
# `fsdp` (with --fsdp_sync_module_states false: accelerate builds that broadcast for a GPU; every rank loads the
# same weights anyway), `deepspeed-zero2` and `deepspeed-zero3` unchanged (DeepSpeed's CPU accelerator, gloo).
# Each is compared with one process training on the same global batch, as the DDP test does and with its tolerances
# (measured: loss within 6e-7 relative, grad_norm 5e-6 relative, rewards and held-out metrics 8e-7 absolute);
# the checkpoint it writes has the single-process checkpoint's keys and values within CHECKPOINT_ATOL (measured: at
# most 3.2e-6 after 4 AdamW steps at lr 1e-3, i.e. well under one step's update).
SHARDED_ENTRY = Path(__file__).parent / "launch" / "sharded_on_cpu.py"
CHECKPOINT_ATOL = 5e-5


@pytest.fixture(scope="module")
def one_process_dpo(tmp_path_factory, tiny_model_dir) -> Path:
    """The comparison run of the sharded launches: DPO, one process x 4 pairs, 4 steps, in this process."""
    from pobench import config as C
    from pobench.data import load_suite_data
    from pobench.engine.trainer import train
    from pobench.registry import algorithm_defaults, get_algorithm, load_suite

    root = tmp_path_factory.mktemp("one-process-dpo")
    algorithm = get_algorithm("dpo")
    cfg = C.resolve(load_suite("hh-rlhf"), "dpo", algorithm_defaults(algorithm), {}, _settings(tiny_model_dir, 4),
                    ["dpo"])
    train(cfg, algorithm, load_suite_data(cfg.data, cfg.seed), root / "run", root / "cache")
    return root / "run"


def _sharded_launch(tmp_path: Path, model_dir: Path, out: str, launch_args: list[str], *extra: str,
                    env_extra: dict | None = None, algo: str = "dpo", processes: int = 2):
    from pobench.launch import free_port
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "DS_ACCELERATOR": "cpu", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", *launch_args, "--num_processes",
                           str(processes), "--main_process_port", str(free_port()), str(SHARDED_ENTRY), "run",
                           "--algo", algo, "--out", str(tmp_path / out), "--no-eval",
                           *_set_args(_settings(model_dir, 4 // processes)), *extra],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)


def _sharded_run_matches_one_process(tmp_path: Path, model_dir: Path, one: Path, launch_args: list[str],
                                     distributed: str, processes: int = 2) -> None:
    """N processes x 4/N pairs under a sharded launch against one process x 4 pairs: every logged metric, the
    held-out metrics and the final checkpoint agree."""
    from safetensors.torch import load_file
    started = time.perf_counter()
    proc = _sharded_launch(tmp_path, model_dir, "sharded", launch_args, processes=processes)
    launched_s = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "sharded" / "hh-rlhf" / "dpo" / "seed1"
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["distributed"] == distributed and summary["num_processes"] == processes
    assert summary["global_batch_size"] == 4
    rows = [[json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()] for folder in (run, one)]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] == [1, 2, 3, 4]
    worst: dict = {}
    for a, b in zip(*rows):
        for key in COMPARED + tuple(k for k in b if k.startswith("eval/")):
            assert _close(key, a[key], b[key]), f"step {b['step']} {key}: 2 processes {a[key]!r}, 1 process {b[key]!r}"
            worst[key] = max(worst.get(key, 0.0), abs(a[key] - b[key]))
    one_summary = json.loads((one / "train_summary.json").read_text())
    for key, value in one_summary["held_out_final"].items():
        assert _close(key, summary["held_out_final"][key], value), key

    # the checkpoint: the weights gathered from the shards, under the single-process names
    sharded, single = (load_file(str(folder / "checkpoints" / "latest" / "trainable.safetensors"))
                       for folder in (run, one))
    assert sorted(sharded) == sorted(single)
    assert all(sharded[k].shape == single[k].shape for k in single)
    weight_diff = max(float((sharded[k] - single[k]).abs().max()) for k in single)
    assert weight_diff <= CHECKPOINT_ATOL, weight_diff
    _report(worst, launched_s, processes)
    print(f"checkpoint: same {len(single)} tensors, largest difference {weight_diff:.1e}")


def _resume_is_refused(tmp_path: Path, model_dir: Path, launch_args: list[str]) -> None:
    """Both ranks die mid-step 3; the step-2 checkpoint holds the gathered weights but no optimizer state (it is
    sharded), so --resume under the same launch is refused with the documented message."""
    crashed = _sharded_launch(tmp_path, model_dir, "cut", launch_args, "--set", "train.save_every=2",
                              env_extra={"POBENCH_KILL_AT": "step:3"})
    assert crashed.returncode != 0
    checkpoint = tmp_path / "cut" / "hh-rlhf" / "dpo" / "seed1" / "checkpoints" / "latest"
    assert json.loads((checkpoint / "state.json").read_text())["step"] == 2
    assert (checkpoint / "trainable.safetensors").is_file() and not (checkpoint / "optimizer.pt").exists()
    resumed = _sharded_launch(tmp_path, model_dir, "cut", launch_args, "--set", "train.save_every=2", "--resume")
    assert resumed.returncode != 0
    assert "--resume is supported for single-process and DDP runs; FSDP/DeepSpeed checkpoints hold the weights only" \
        in " ".join((resumed.stdout + resumed.stderr).split()), resumed.stderr[-3000:]


@pytest.mark.parametrize("argv, code, met", [(["list"], None, True), (["run", "--algo", "no-such-algo"], 2, False)])
def test_the_cli_destroys_its_process_group_before_exit(tmp_path, monkeypatch, argv, code, met):
    """Left to interpreter shutdown, gloo can abort a rank that finished its work (SIGABRT, "terminate called without
    an active exception"), failing the launch. The entry point destroys the group itself: after a completed command
    the ranks first meet at a barrier; after a failure they do not (the others may never arrive)."""
    import torch.distributed as dist
    from pobench import cli
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    barriers = []
    real_barrier = dist.barrier
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: barriers.append(1) or real_barrier(*a, **k))
    monkeypatch.setattr(sys, "argv", ["pobench", *argv])
    try:
        if code is None:
            cli.main()
        else:
            with pytest.raises(SystemExit) as exited:
                cli.main()
            assert exited.value.code == code
        assert not dist.is_initialized()
        assert bool(barriers) is met
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_generation_runs_in_lockstep_only_where_the_weights_are_sharded_across_processes():
    """FSDP and ZeRO-3 over several processes make every forward a collective: the trainer hands the online
    sampler's backend a GenerationRanks there (plain generate, synced, one chunk size), and nothing elsewhere
    (DDP, ZeRO-1/2, one process), where each rank may decode on its own, fast path included."""
    from accelerate.utils import DistributedType

    def accelerator(kind, processes, stage=None):
        return types.SimpleNamespace(distributed_type=kind, num_processes=processes, state=types.SimpleNamespace(
            deepspeed_plugin=types.SimpleNamespace(zero_stage=stage)))
    assert isinstance(D.lockstep_generation(accelerator(DistributedType.FSDP, 2)), D.GenerationRanks)
    assert isinstance(D.lockstep_generation(accelerator(DistributedType.DEEPSPEED, 4, stage=3)), D.GenerationRanks)
    for alone in (accelerator(DistributedType.FSDP, 1), accelerator(DistributedType.DEEPSPEED, 1, stage=3),
                  accelerator(DistributedType.DEEPSPEED, 2, stage=2), accelerator(DistributedType.MULTI_GPU, 2),
                  accelerator(DistributedType.NO, 1)):
        assert D.lockstep_generation(alone) is None


def test_fsdp_or_deepspeed_launch_on_the_cpu_is_refused(monkeypatch):
    """On the CPU accelerate would train plain DDP under an FSDP/DeepSpeed launch: refused, not passed off as one."""
    import torch
    for variable, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        with monkeypatch.context() as m:
            m.setenv(variable, "true")
            with pytest.raises(PobenchError, match=f"{name} launch on the CPU"):
                D.refuse_sharding_on_cpu(torch.device("cpu"))
            D.refuse_sharding_on_cpu(torch.device("cuda"))   # a GPU launch goes ahead
    D.refuse_sharding_on_cpu(torch.device("cpu"))            # as does a CPU launch that asks for neither


def test_models_load_whole_under_a_zero3_deepspeed_config(tiny_model_dir):
    """Under a ZeRO-3 launch accelerate points transformers at the ZeRO-3 config, and from_pretrained would partition
    the weights at load (leaving empty shards on every rank): pobench loads them whole, and leaves the pointer set."""
    import weakref

    import torch
    from transformers.integrations import deepspeed as hf_deepspeed

    from pobench.models import load_causal_lm

    class Zero3:  # what transformers asks of the config it points to
        def is_zero3(self):
            return True

    config = Zero3()
    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = weakref.ref(config)
    try:
        assert hf_deepspeed.is_deepspeed_zero3_enabled()
        model = load_causal_lm(str(tiny_model_dir), torch.float32)
        assert tuple(model.get_input_embeddings().weight.shape) == (model.config.vocab_size, 64)
        assert hf_deepspeed.is_deepspeed_zero3_enabled()       # restored: generate() reads it (synced_gpus)
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def _fsdp_on_cpu() -> list[str]:
    from pobench.launch import preset_path
    return ["--config_file", str(preset_path("fsdp")), "--fsdp_sync_module_states", "false"]


def test_two_process_fsdp_run_matches_one_process(tmp_path, tiny_model_dir, one_process_dpo):
    """The shipped `fsdp` preset (FSDP1, full sharding, transformer-layer auto-wrap) on 2 CPU processes: sharded
    forwards for the held-out pairs, clipping over the wrapped parameters, the checkpoint gathered on rank 0."""
    _sharded_run_matches_one_process(tmp_path, tiny_model_dir, one_process_dpo, _fsdp_on_cpu(), "DistributedType.FSDP")


@pytest.mark.slow
def test_fsdp_resume_is_refused(tmp_path, tiny_model_dir):
    _resume_is_refused(tmp_path, tiny_model_dir, _fsdp_on_cpu())


@pytest.mark.slow
def test_fsdp_onmcpo_generates_from_the_sharded_policy(tmp_path, tiny_model_dir):
    """OnMC-PO generates from the policy during training, outside the wrapped forward: under FSDP the root unit's
    weights (embeddings, output layer) are gathered for it (distributed.generation_weights). 2 steps under `fsdp`
    log what 2 steps under `ddp` log, the sampler's metrics included (its samples are seeded per prompt)."""
    online = ("--plugin", str(GOLD_PLUGIN), "--set", "pool.reward_model=gold:test-words", "--set",
              "pool.max_new_tokens=6", "--set", "algorithm.num_candidates=3", "--set", "train.max_steps=2")
    fsdp = _sharded_launch(tmp_path, tiny_model_dir, "fsdp", _fsdp_on_cpu(), *online, algo="onmcpo")
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    ddp = _launch(tmp_path, tiny_model_dir, "ddp", "--algo", "onmcpo", *online)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    rows = [[json.loads(line) for line in (tmp_path / name / "hh-rlhf" / "onmcpo" / "seed1" / "metrics.jsonl")
             .read_text().splitlines()] for name in ("fsdp", "ddp")]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] == [1, 2]
    for a, b in zip(*rows):
        for key in COMPARED + tuple(k for k in b if k.startswith(("eval/", "sampler/")) and not k.endswith("_s")):
            assert _close(key, a[key], b[key]), f"step {b['step']} {key}: fsdp {a[key]!r}, ddp {b[key]!r}"


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["deepspeed-zero2", "deepspeed-zero3"])
def test_two_process_deepspeed_run_matches_one_process(tmp_path, tiny_model_dir, one_process_dpo, preset):
    """The shipped DeepSpeed presets, unchanged, on 2 CPU processes (DeepSpeed's CPU accelerator over gloo): the
    micro-batch and clipping pobench fills in, ZeRO-3's registered output layer and gathered checkpoint."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install -e '.[deepspeed]')")
    from pobench.launch import preset_path
    launch_args = ["--config_file", str(preset_path(preset))]
    _sharded_run_matches_one_process(tmp_path, tiny_model_dir, one_process_dpo, launch_args,
                                     "DistributedType.DEEPSPEED")
    _resume_is_refused(tmp_path, tiny_model_dir, launch_args)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["ddp", "fsdp", "deepspeed-zero3"])
def test_four_processes_match_one_process(tmp_path, tiny_model_dir, one_process_dpo, preset):
    """More than two ranks: 4 processes x 1 pair (4 shards of every parameter under FSDP and ZeRO-3, a 4-way
    all-reduce under DDP) against one process x 4 pairs, on 4 CPU processes over gloo."""
    from pobench.launch import preset_path
    if preset.startswith("deepspeed"):
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install -e '.[deepspeed]')")
    launch_args = _fsdp_on_cpu() if preset == "fsdp" else ["--config_file", str(preset_path(preset))]
    distributed = {"ddp": "DistributedType.MULTI_CPU", "fsdp": "DistributedType.FSDP",
                   "deepspeed-zero3": "DistributedType.DEEPSPEED"}[preset]
    _sharded_run_matches_one_process(tmp_path, tiny_model_dir, one_process_dpo, launch_args, distributed, processes=4)


def test_gathered_weights_go_to_the_cpu_only_where_fsdp_sharded_them(tmp_path):
    """A one-GPU launch of the fsdp preset failed when the checkpoint gathered the weights: FSDP on one process
    runs NO_SHARD, and torch refuses offload_to_cpu there. A real FSDP wrap at world size 1 reports NO_SHARD, so the
    offload is off; it stays on for sharded weights on a GPU and off on a CPU device."""
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import ShardingStrategy

    from pobench.engine.distributed import offload_gathered_weights
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        wrapped = FSDP(torch.nn.Linear(4, 4), sharding_strategy=ShardingStrategy.FULL_SHARD,
                       device_id=torch.device("cpu"))
        assert wrapped.sharding_strategy == ShardingStrategy.NO_SHARD          # FSDP's own switch at world size 1
        assert not offload_gathered_weights(torch.device("cuda"), wrapped.sharding_strategy)
    finally:
        dist.destroy_process_group()
    assert offload_gathered_weights(torch.device("cuda"), ShardingStrategy.FULL_SHARD)
    assert offload_gathered_weights(torch.device("cuda"), ShardingStrategy.SHARD_GRAD_OP)
    assert not offload_gathered_weights(torch.device("cpu"), ShardingStrategy.FULL_SHARD)


def test_a_user_error_inside_a_launch_ends_the_command_with_exit_2(tmp_path, tiny_model_dir):
    """`--num-processes 2`: a check that only the launched processes make (here: the run folder's lock, held by a
    live process) ends the launching command as it would end without the launch, with its one line last and exit
    code 2, not with the launcher's exit code 1."""
    from pobench.engine.lock import RunLock
    run_dir = tmp_path / "out" / "hh-rlhf" / "dpo" / "seed1"
    run_dir.mkdir(parents=True)
    held = RunLock(run_dir)   # this test's own process: alive for the whole launch
    held.acquire()
    try:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        proc = subprocess.run([sys.executable, "-m", "pobench.cli", "run", "--algo", "dpo", "--out",
                               str(tmp_path / "out"), "--no-eval", "--num-processes", "2",
                               *_set_args(_settings(tiny_model_dir, 2))],
                              capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    finally:
        held.release()
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "in use by another pobench run" in last, last


@pytest.mark.slow
def test_a_plugin_sampler_failing_on_one_rank_ends_the_launch(tmp_path, tiny_model_dir):
    """A plugin's sampler that raises on rank 1 only: the command ends with the plugin's one line and exit 2 well
    within the collective timeout, instead of rank 0 waiting for rank 1 in the step's all-reduce."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "POBENCH_COLLECTIVE_TIMEOUT_MIN": "30"}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pobench.cli", "run", "--algo", "dpo_rank1_fault", "--plugin",
                           str(Path(__file__).parent / "plugins" / "rank_fault.py"), "--out", str(tmp_path / "out"),
                           "--no-eval", "--num-processes", "2", *_set_args(_settings(tiny_model_dir, 2))],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "rank 1 fails on purpose" in last and "rank_fault.py:" in last, last
    assert time.monotonic() - started < 300


def test_ranks_shard_the_main_processes_list_of_missing_items(monkeypatch):
    """Each rank read the shared cache itself: with another run appending between two ranks' reads, rank 0 missed
    [a, b, c, d] and rank 1 [c, d], their shards did not line up, and c's result was stored under d. The ranks now
    shard the main process's list (gathered from it), and a rank that would have had nothing to do still joins."""
    import types

    from pobench.engine import distributed as D
    sent = {}

    def gather(local, accelerator):          # two ranks: rank 0's list travels, rank 1 sends nothing
        if accelerator.is_main_process:
            sent["main"] = list(local)
        return list(sent["main"])
    monkeypatch.setattr(D, "gather_lists", gather)
    main = types.SimpleNamespace(num_processes=2, is_main_process=True)
    other = types.SimpleNamespace(num_processes=2, is_main_process=False)
    assert D.main_process_list(["a", "b", "c", "d"], main) == ["a", "b", "c", "d"]
    assert D.main_process_list(["c", "d"], other) == ["a", "b", "c", "d"]
    assert D.main_process_list([], other) == ["a", "b", "c", "d"]
    assert D.main_process_list(["x"], None) == ["x"] == D.main_process_list(["x"], types.SimpleNamespace(
        num_processes=1, is_main_process=True))


def test_candidates_refuse_vllm_pools_under_a_launch_as_a_run_does():
    import types

    from pobench.engine.trainer import refuse_vllm_pools_under_a_launch
    from pobench.errors import PobenchError
    cfg = types.SimpleNamespace(pool=types.SimpleNamespace(backend="vllm"))
    refuse_vllm_pools_under_a_launch(cfg, None)
    refuse_vllm_pools_under_a_launch(cfg, types.SimpleNamespace(num_processes=1))
    with pytest.raises(PobenchError, match="pool.backend=vllm runs in one process"):
        refuse_vllm_pools_under_a_launch(cfg, types.SimpleNamespace(num_processes=2))


def test_a_config_for_several_machines_is_not_launched_from_one(tmp_path):
    """--launch-config multinode-ddp replaced the preset's rendezvous port with a local one and had no machine rank:
    it could not work. It is refused with the command to run on each machine; one-machine presets pass."""
    from pobench.errors import PobenchError
    from pobench.launch import check_one_machine, preset_path
    for name in ("ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"):
        check_one_machine(preset_path(name))
    with pytest.raises(PobenchError, match="a config for 2 machines; run `accelerate launch --config_file .* "
                                           "--machine_rank K"):
        check_one_machine(preset_path("multinode-ddp"))


def test_ranks_wait_for_the_main_process_as_long_as_the_collective_timeout_says(tmp_path, monkeypatch):
    """An LLM judge (or an auto judge's reward model) runs on the main process alone while the other ranks wait in a
    collective: NCCL's default 10 minutes would abort them. Every place that may create pobench's process group
    passes $POBENCH_COLLECTIVE_TIMEOUT_MIN (180 by default); the real process group takes it."""
    import torch
    from pobench.engine import trainer as T
    from pobench.eval import runner
    from test_engine import make_cfg

    class Made(Exception):
        pass

    def recorder(name):   # test double for accelerate's constructors: records their arguments, builds nothing
        def construct(*args, **kwargs):
            made[name] = kwargs
            raise Made
        return construct

    made = {}
    monkeypatch.setenv(D.COLLECTIVE_TIMEOUT_ENV, "7")
    monkeypatch.setattr("accelerate.Accelerator", recorder("trainer"))
    monkeypatch.setattr("accelerate.PartialState", recorder("eval"))
    cfg, algorithm = make_cfg(tmp_path / "unused-model")
    with pytest.raises(Made):
        T.train(cfg, algorithm, None, tmp_path / "run", tmp_path / "cache")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(Made):
        T.build_pools(cfg, None, tmp_path / "cache")
    made["pools"] = made.pop("trainer")
    with pytest.raises(Made):
        T.train(cfg, algorithm, None, tmp_path / "run", tmp_path / "cache")
    with pytest.raises(Made):
        runner.launch_state(torch.device("cpu"))
    assert made["eval"]["timeout"].total_seconds() == 420
    for name in ("trainer", "pools"):
        (handler,) = made[name]["kwargs_handlers"]
        assert handler.to_kwargs() == {"timeout": made["eval"]["timeout"]}, name

    monkeypatch.undo()
    script = ("import torch, torch.distributed as dist; from accelerate import Accelerator; "
              "from pobench.engine import distributed as D; "
              "Accelerator(cpu=True, kwargs_handlers=D.process_group_handlers()); "
              "print(dist.distributed_c10d._get_default_group()._get_backend(torch.device('cpu'))"
              ".options._timeout.total_seconds()); dist.destroy_process_group()")
    env = {**os.environ, "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(29400 + os.getpid() % 500)}
    for setting, seconds in ((None, 180 * 60.0), ("0.5", 30.0)):
        env.pop(D.COLLECTIVE_TIMEOUT_ENV, None)
        if setting:
            env[D.COLLECTIVE_TIMEOUT_ENV] = setting
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and float(done.stdout.split()[-1]) == seconds, done.stderr[-2000:]


@pytest.mark.parametrize("value", ["0", "-3", "soon", "inf", "nan"])
def test_a_bad_collective_timeout_is_named_before_the_processes_start(monkeypatch, value):
    monkeypatch.setenv(D.COLLECTIVE_TIMEOUT_ENV, value)
    with pytest.raises(PobenchError, match=f"{D.COLLECTIVE_TIMEOUT_ENV}='{value}'"):
        D.collective_timeout()
