"""The pobench command line: run, eval, list, data."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from pobench.errors import PobenchError

# rich_markup_mode None: click's plain help. typer 0.29's rich help (rich_utils._print_options_panel) prints every
# option's type, flags' too, as though they took a value (`--resume <bool>`, `--help <bool>`); the plain help
# (TyperOption.get_help_record) leaves a flag's type out: `--resume`, `--disjoint / --no-disjoint`
app = typer.Typer(add_completion=False, no_args_is_help=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Benchmark preference-optimisation algorithms on the same data, budget and judge.")
console = Console(stderr=True)

DEFAULT_ALGOS = "dpo,simpo"
DEFAULT_SUITE = "hh-rlhf"


def _split_list(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise PobenchError(f"{what}: empty list")
    return items


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in _split_list(text, "--seeds")]
    except ValueError:
        raise PobenchError(f"--seeds {text}: expected comma-separated integers") from None


def _shortcuts(model: str | None, data: str | None, max_steps: int | None) -> dict:
    """--model / --data / --max-steps as config overrides (they rank with --set)."""
    out: dict = {}
    if model:
        out["model"] = {"name_or_path": model}
    if data:
        out["data"] = {"path": data}
    if max_steps is not None:
        out["train"] = {"max_steps": max_steps}
    return out


def _writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PobenchError(f"{out}: cannot create the results folder ({e.strerror})") from None
    if not os.access(out, os.W_OK):
        raise PobenchError(f"{out}: the results folder is not writable")


@app.command()
def run(
    ctx: typer.Context,
    algo: str = typer.Option(DEFAULT_ALGOS, "--algo", help="Comma-separated algorithm names (see `pobench list`)."),
    suite: str = typer.Option(DEFAULT_SUITE, "--suite", help="Suite name or path to a suite .yaml."),
    model: Optional[str] = typer.Option(None, "--model", help="Policy: hub id, local folder, .gguf, or alias."),
    data: Optional[str] = typer.Option(None, "--data", help="Data: 'sample', 'hub', a hub id, or a local file/folder."),
    seeds: str = typer.Option("1", "--seeds", help="Comma-separated seeds; each algorithm runs once per seed."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps per run (train.max_steps)."),
    out: Path = typer.Option(Path("results"), "--out", help="Results root."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file of overrides."),
    set_: List[str] = typer.Option([], "--set", help="Override one key, e.g. --set train.lr=1e-6 or dpo.beta=0.2."),
    no_eval: bool = typer.Option(False, "--no-eval", help="Skip evaluation after training (no eval.json)."),
    resume: bool = typer.Option(False, "--resume", help="Continue unfinished runs from their checkpoints; skip finished ones."),
    plugin: List[Path] = typer.Option([], "--plugin", help="Python file registering extra algorithms."),
    grid: Optional[str] = typer.Option(None, "--grid", help="Tuning grid, e.g. 'lr=3e-7,1e-6;beta=0.01,0.1': every "
                                       "algorithm runs at every point, in <algo>/<point>/seed<k>/; the leaderboard "
                                       "takes each algorithm's best point on held-out pairs."),
    num_processes: Optional[int] = typer.Option(None, "--num-processes", help="Train in N processes (DDP over GPUs, "
                                                "or CPU processes over gloo): re-runs this command under `accelerate "
                                                "launch`. train.batch_size is per process: the global batch is N times "
                                                "it. Default: 1, or the --launch-config file's count."),
    launch_config: Optional[str] = typer.Option(None, "--launch-config", help="accelerate config for the launch: a "
                                                "preset (ddp, fsdp, deepspeed-zero2, deepspeed-zero3, multinode-ddp) or a file."),
):
    """Train every algorithm x seed on a suite and write results/<suite>/<algo>/seed<k>/."""
    from pobench import config as C
    from pobench.data import (RECORDS_RULE, check_run_records, describe_loaded, load_suite_data,
                              older_rules_warning, run_records_rule)
    from pobench.models import check_model_source, training_dtype_warning
    from pobench.rewards import check_scorer_spec
    from pobench.registry import algorithm_defaults, discover, get_algorithm, load_suite, suite_source
    from pobench.sampling.pools import check_dataset_pools

    is_main = _quiet_unless_main()
    if num_processes is not None and num_processes < 1:
        raise PobenchError(f"--num-processes {num_processes}: expected 1 or more")
    from pobench.engine.distributed import collective_timeout, inside_launch
    if inside_launch() or (num_processes or 1) > 1 or launch_config:
        collective_timeout()   # a bad $POBENCH_COLLECTIVE_TIMEOUT_MIN is named before any work
    discover([str(p) for p in plugin])
    algos = _split_list(algo, "--algo")
    seed_list = _seeds(seeds)
    suite_cfg = load_suite(suite)
    suite_file = suite_source(suite)
    from pobench.paths import rebase_file_paths
    # its relative paths are read from its own folder, as a suite file's are (pobench/paths.py)
    file_cfg = rebase_file_paths(C.read_yaml(config), config) if config else {}
    from pobench.registry import ALGORITHMS
    # one --config file may hold sections for several algorithms: those of algorithms not in this run are not for it
    file_cfg = {k: v for k, v in file_cfg.items() if k in algos or k not in ALGORITHMS}
    set_cfg = C.parse_set(set_)
    for origin, layer in (("--config", file_cfg), ("--set", set_cfg)):
        for key, option in (("seed", "--seeds"), ("suite", "--suite"), ("algorithm_name", "--algo")):
            if key in layer:   # --seeds would override the seed silently; a suite name would file runs elsewhere
                raise PobenchError(f"{origin}: '{key}' is chosen with {option}, not here")
    set_cfg = C.deep_merge(_shortcuts(model, data, max_steps), set_cfg)

    # Resolve and check everything before anything is written.
    from pobench.engine.lock import RunLock
    from pobench.engine.checkpoint import changed_code, find_checkpoint, read_state
    from pobench.engine.trainer import dry_check_loss, make_sampler, plugin_code
    from pobench.eval.runner import check_auto_judge_records, check_eval_config
    from pobench.report.grid import check_point_applied, plan_grid
    for name in algos:
        try:
            get_algorithm(name)
        except PobenchError as e:   # a plugin's run resumed without its --plugin: the run folder knows which
            plugins = _plugins_started_with(out, name)
            if not plugins:
                raise
            raise PobenchError(f"{e}; its runs under {out} were started with "
                               f"{' '.join('--plugin ' + p for p in plugins)}: pass it again") from None
    grid_plan, budget_warning = plan_grid(grid, {n: algorithm_defaults(get_algorithm(n)) for n in algos})
    _warn(budget_warning)
    if launch_config:
        from pobench.launch import check_one_machine, preset_path
        config_file = preset_path(launch_config)   # a bad name fails now, before any folder exists
        if not inside_launch():
            check_one_machine(config_file)
    plans, planned = [], {}
    for name in algos:
        algorithm = get_algorithm(name)
        defaults = algorithm_defaults(algorithm)
        for (point, point_cfg), seed in ((p, s) for p in grid_plan[name] for s in seed_list):
            cfg = C.resolve(suite_cfg, name, defaults, file_cfg, C.deep_merge(C.deep_merge(set_cfg, point_cfg),
                                                                              {"seed": seed}), algos,
                            getattr(algorithm, "choices", None), f"--config {config}")
            check_point_applied(cfg, point_cfg, point)
            sampler = make_sampler(algorithm, cfg)   # the sampler's own parameter checks, before anything is written
            dry_check_loss(algorithm, cfg)   # a broken loss found now, not after other algorithms trained
            if not no_eval:
                check_eval_config(cfg)     # a judge typo found now, not after the training budget is spent
            run_dir = out / cfg.suite / name / point / f"seed{seed}"  # point '' without --grid
            if run_dir in planned:   # --seeds 1,1, --algo dpo,dpo, grid values that name one folder
                raise PobenchError(f"{run_dir}: planned twice ({planned[run_dir]} and {point or name} seed {seed}); "
                                   f"list each algorithm, seed and grid point once")
            planned[run_dir] = f"{point or name} seed {seed}"
            done = (run_dir / "train_summary.json").exists() and (no_eval or (run_dir / "eval.json").exists())
            if resume and (run_dir / "config.yaml").is_file():   # a resumed run must be the run that was started
                if is_main:
                    RunLock(run_dir).refuse_if_in_use()   # a run writing there now is named first, as such
                from pobench.paths import saved_config
                # a run saved before paths were stored absolute holds them relative to the folder it started in
                saved = saved_config(C.read_yaml(run_dir / "config.yaml"), run_dir, RUN_NEEDS)
                changed = C.changed_keys(saved, cfg)
                # eval.* settings do not touch the training: a run not evaluated yet (its evaluation failed after the
                # training, or it ran with --no-eval) is evaluated under the ones asked for now, which eval.json's
                # eval_config records while config.yaml keeps the run's, as after `pobench eval --set`
                if changed and all(c.startswith("eval.") for c in changed):
                    if (run_dir / "eval.json").is_file() and not no_eval:
                        # an evaluated run is skipped: eval settings other than those it was started or last
                        # evaluated with would go unused, silently
                        from pobench.eval.runner import evaluated_eval_config
                        other = C.changed_keys(C.deep_merge(saved, {"eval": evaluated_eval_config(run_dir)}), cfg)
                        if other:
                            raise PobenchError(f"{run_dir}: finished and evaluated with other eval settings than "
                                               f"these ({'; '.join(other[:4])}{'; ...' if len(other) > 4 else ''}); "
                                               f"--resume skips a finished run: evaluate it again with `pobench eval "
                                               f"{run_dir} --set eval.KEY=VALUE`, or leave it out of this command")
                    changed = []
                if changed:
                    raise PobenchError(f"{run_dir}: --resume with other settings than the run's ({'; '.join(changed[:4])}"
                                       f"{'; ...' if len(changed) > 4 else ''}); resume with the run's settings, or "
                                       f"start a new run with another --out")
                checkpoint = find_checkpoint(run_dir)
                if checkpoint is not None and not (run_dir / "train_summary.json").exists():
                    changed = changed_code(read_state(checkpoint).get("code"), plugin_code(algorithm, sampler))
                    if changed:   # (the config names only the algorithm: an edited plugin passed the check above)
                        raise PobenchError(f"{run_dir}: --resume with other code than the run's ({'; '.join(changed)}); "
                                           f"a run trained by two versions of its algorithm is not one run: start "
                                           f"it afresh in another --out, or remove {run_dir}")
            if _holds_run(run_dir) and not resume and is_main:  # other ranks: the main one checks (and may have written)
                RunLock(run_dir).refuse_if_in_use()   # a run writing there now is named as such
                raise PobenchError(f"{run_dir}: already holds a run; pass --resume to continue or skip it, "
                                   f"or choose another --out")
            if not done:
                training_dtype_warning(cfg.model.dtype)   # refuses float16 now, before the model is read
                check_scorer_spec(cfg.pool.reward_model, "pool.reward_model")
            plans.append((algorithm, cfg, run_dir, done))
    if resume and plans and not any((run_dir / "config.yaml").is_file() for _, _, run_dir, _ in plans):
        # `--resume` alone plans the default runs: they would start from scratch while the interrupted ones wait
        unfinished = _unfinished_runs(out)
        if unfinished:
            shown = "; ".join(f"{run_dir} (started by `{_started_by(run_dir)}`)" for run_dir in unfinished[:3])
            more = f"; and {len(unfinished) - 3} more" if len(unfinished) > 3 else ""
            raise PobenchError(f"--resume: none of the planned runs ({', '.join(algos)} on {plans[0][1].suite}"
                               f", seeds {seeds}) has a folder under {out}, which holds unfinished runs: "
                               f"{shown}{more}; resume them with their --suite, --algo, --seeds and --plugin, or "
                               f"drop --resume to start the planned runs")
        finished = _finished_runs(out)
        if finished and all(_from_default(ctx, name) for name in ("algo", "suite", "seeds", "grid")):
            # bare `run --resume` after everything finished would otherwise start the default runs from scratch
            shown = "; ".join(str(run_dir) for run_dir in finished[:3])
            more = f"; and {len(finished) - 3} more" if len(finished) > 3 else ""
            raise PobenchError(f"--resume: nothing to resume under {out}: its {len(finished)} run(s) are finished "
                               f"({shown}{more}) and the default runs ({', '.join(algos)} on {plans[0][1].suite}, "
                               f"seeds {seeds}) were never started; name them with --algo, --suite and --seeds to "
                               f"start them")
    for suite_name in dict.fromkeys(cfg.suite for _, cfg, _, _ in plans):
        _check_suite_file(out / suite_name, suite, suite_file)
    for model_source in dict.fromkeys((cfg.model.name_or_path, cfg.model.gguf_file) for _, cfg, _, _ in plans):
        check_model_source(*model_source)
    # Data is read now too, so that bad data fails before any folder or progress bar exists.
    datasets_by_key: dict = {}
    data_by_run: dict = {}   # the records each run trains on
    warned: set = set()
    # a run resumed keeps the rules its records were chosen by (data.json's records_rule: an older pobench's)
    rules = {run_dir: run_records_rule(run_dir) if resume else RECORDS_RULE for _, _, run_dir, _ in plans}
    _warn(older_rules_warning(rules.values()))
    for algorithm, cfg, run_dir, done in plans:
        rule = rules[run_dir]
        key = _data_key(cfg, rule)
        if not done and key not in datasets_by_key:
            datasets_by_key[key] = load_suite_data(cfg.data, cfg.seed, rule)
            console.print(describe_loaded(datasets_by_key[key].report), highlight=False, markup=False)
        if not done:
            data_by_run[run_dir] = datasets_by_key[key]
            world = planned_world(num_processes, launch_config)
            global_batch = cfg.train.batch_size * (world or 1)
            if global_batch > len(datasets_by_key[key].train):   # every step would repeat records (or never end)
                raise PobenchError(f"config key 'train.batch_size': {global_batch} records per step"
                                   f"{f' ({world} processes)' if (world or 1) > 1 else ''} is more than "
                                   f"the {len(datasets_by_key[key].train)} training records")
            if not no_eval and world:
                check_auto_judge_records(cfg, len(datasets_by_key[key].train), global_batch)
            sampler = make_sampler(algorithm, cfg)
            check_dataset_pools(cfg, sampler, datasets_by_key[key])
            if datasets_by_key[key].check_config:
                datasets_by_key[key].check_config(cfg)
            warnings = [training_dtype_warning(cfg.model.dtype), plan_warning(sampler, cfg, datasets_by_key[key])]
            for warning in filter(None, warnings):
                if warning not in warned:
                    warned.add(warning)
                    _warn(warning)
            if resume:
                check_run_records(run_dir, datasets_by_key[key].report, "--resume")
    if inside_launch():
        from pobench.launch import check_inside_launch
        check_inside_launch(num_processes or 1)
        if not is_main:  # the main process checks, locks and writes; the other ranks train and evaluate alongside it
            _train_other_rank(plans, data_by_run, out, resume, no_eval)
            return
    elif (num_processes or 1) > 1 or launch_config:  # everything is checked: now run it again, in N processes
        from pobench.launch import relaunch
        _writable(out)
        sys.exit(relaunch(sys.argv[1:], num_processes, launch_config))  # (typer.Exit's code would be dropped)
    _writable(out)
    locks = _lock_run_folders(plans, resume)
    try:
        _run_plans(plans, data_by_run, out, resume, no_eval, {lock.path.parent: lock for lock in locks}, suite_file)
    finally:
        for lock in locks:
            lock.release()
            _remove_if_empty(lock.path.parent, out)


# the saved paths a run's resume or evaluation reads (the others are checked where they are used, if they are)
RUN_NEEDS = ("data.path", "model.name_or_path")


def _warn(warning: str | None) -> None:
    if warning:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)


def _check_suite_file(folder: Path, suite: str, suite_file: dict | None) -> None:
    """Runs of two suite files of one name (suites/myuf.yaml and other/myuf.yaml, other data) went into one results
    folder, results/myuf/, and their report mixed them as one suite. A suite folder whose runs were started from
    another file (env.json's `suite_file`) with other content is refused; the same file edited since, or a copy of
    it elsewhere (another checkout), is not: a config that differs is then named by the report. Runs made before
    the file was recorded are not compared."""
    if suite_file is None or not folder.is_dir():
        return
    for env_file in sorted(folder.rglob("env.json")):
        try:
            other = json.loads(env_file.read_text(encoding="utf-8")).get("suite_file")
        except (OSError, ValueError, AttributeError):
            continue   # a damaged env.json is the report's to name
        if isinstance(other, dict) and other.get("file") != suite_file["file"] and \
                other.get("sha1") != suite_file["sha1"]:
            raise PobenchError(f"{folder}: holds runs of the suite file {other.get('file')} ({env_file.parent}), and "
                               f"--suite {suite} is {suite_file['file']}, with other content: the report would take "
                               f"the two for one suite; choose another --out, or name this suite apart (`suite: "
                               f"<name>` in its file)")


def _run_command(run_dir: Path) -> list[str] | None:
    from pobench.environment import recorded_command
    return recorded_command(run_dir)


def _plugins_started_with(out: Path, algo: str) -> list[str]:
    """The --plugin files recorded in env.json by `algo`'s run folders under `out` (as typed, so relative to where
    that run was started)."""
    found: list[str] = []
    for env_file in sorted(Path(out).glob(f"*/{algo}/**/env.json")):
        command = _run_command(env_file.parent) or []
        for i, arg in enumerate(command):
            path = command[i + 1] if arg == "--plugin" and i + 1 < len(command) else \
                arg.split("=", 1)[1] if arg.startswith("--plugin=") else None
            if path and path not in found:
                found.append(path)
    return found


def _started_runs(out: Path) -> list[Path]:
    """Folders under `out` where a run was started (config.yaml); caches (dot folders) excluded."""
    if not Path(out).is_dir():
        return []
    return sorted(p.parent for p in Path(out).rglob("config.yaml")
                  if not any(part.startswith(".") for part in p.parent.relative_to(out).parts))


def _unfinished_runs(out: Path) -> list[Path]:
    """Started runs under `out` with no train_summary.json that no other command is training now."""
    return [d for d in _started_runs(out) if not (d / "train_summary.json").is_file() and not _in_use(d)]


def _finished_runs(out: Path) -> list[Path]:
    return [d for d in _started_runs(out) if (d / "train_summary.json").is_file()]


def _from_default(ctx: typer.Context, name: str) -> bool:
    """Whether option `name` was left at its default (not typed, not from the environment)."""
    source = ctx.get_parameter_source(name)   # by name: typer may carry its own copy of click's enum
    return source is None or source.name == "DEFAULT"


def _in_use(run_dir: Path) -> bool:
    """Whether another pobench command is writing the folder now (a run of a command started beside this one)."""
    from pobench.engine.lock import RunLock
    try:
        RunLock(run_dir).refuse_if_in_use()
    except PobenchError:
        return True
    return False


def _started_by(run_dir: Path) -> str:
    from pobench.environment import started_by
    return started_by(run_dir)


def _folder_lock(folder: Path, is_main: bool = True):
    """The run folder's lock for a command that rewrites its files (the main process takes it for every rank)."""
    import contextlib
    from pobench.engine.lock import RunLock
    return RunLock(folder) if is_main else contextlib.nullcontext()


def _quiet_unless_main() -> bool:
    """Under a multi-process launch only global rank 0 prints progress and tables (errors still print, see main);
    True on the main process."""
    from pobench.engine.distributed import launched_rank
    is_main = launched_rank() == 0
    console.quiet = not is_main
    return is_main


def _train_other_rank(plans, data_by_run: dict, out: Path, resume: bool, no_eval: bool) -> None:
    """A rank other than the main one: train and evaluate the same runs in the same order (every step is a
    collective with the main process, and evaluation is split across the ranks) and write nothing; the main process
    writes every file."""
    from pobench.engine.trainer import train

    tokenized: dict = {}
    for algorithm, cfg, run_dir, done in plans:
        if not (done and resume):
            train(cfg, algorithm, data_by_run[run_dir], run_dir, out / ".cache", resume=resume,
                  tokenized=tokenized)
            if not no_eval:
                from pobench.eval.runner import evaluate_run
                evaluate_run(run_dir, out / ".cache", _eval_settings(cfg))


def _holds_run(run_dir: Path) -> bool:
    """Anything but a lock file (a crash before the first write leaves only that) counts as a run."""
    from pobench.engine.lock import LOCK_NAME
    return run_dir.is_dir() and any(p.name != LOCK_NAME for p in run_dir.iterdir())


def _remove_if_empty(folder: Path, root: Path) -> None:
    """Remove `folder` and its parents up to `root` while empty: a run that stopped before writing leaves nothing."""
    while folder != root and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


@contextlib.contextmanager
def _discard_if_unstarted(run_dir: Path):
    """A run that fails (a model that does not load, out of memory, an internal error) before its first metrics
    line or checkpoint leaves no half-run behind: what this invocation wrote into a fresh folder is removed, so
    the folder is not later refused as "already holds a run". A run that got further keeps everything (its
    checkpoint is what --resume continues from, its metrics show what happened)."""
    from pobench.engine.checkpoint import find_checkpoint
    from pobench.engine.lock import LOCK_NAME

    fresh = not _holds_run(run_dir)
    try:
        yield
    except Exception:   # a user error, or one pobench did not foresee (which the rerun may not hit once fixed)
        if fresh and not (run_dir / "metrics.jsonl").exists() and find_checkpoint(run_dir) is None:
            for path in run_dir.iterdir():
                if path.name != LOCK_NAME:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        raise


def _lock_run_folders(plans, resume: bool) -> list:
    """Lock every run folder this invocation will write, before writing anything (see pobench/engine/lock.py).
    A folder that filled up since it was checked (a concurrent run finished there) is refused as before."""
    from pobench.engine.lock import RunLock

    locks: list = []
    try:
        for _, _, run_dir, done in plans:
            if done and resume:
                continue  # only read
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                locks.append(RunLock(run_dir).acquire())
            except PermissionError as e:   # a run folder (or one above it) that is not ours to write
                raise PobenchError(f"{run_dir}: cannot write the run folder ({e.strerror})") from None
            if _holds_run(run_dir) and not resume:
                raise PobenchError(f"{run_dir}: already holds a run (written by another pobench run meanwhile); "
                                   f"pass --resume to continue it, or choose another --out")
    except BaseException:
        for lock in locks:
            lock.release()
        for _, _, run_dir, _ in plans:
            if run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()
        raise
    return locks


def _data_key(cfg, rule: int) -> str:
    """Records depend on the data config, on the seed only where a random choice is made per row, and on the rules
    choosing them (pobench.data.RECORDS_RULE)."""
    seed = cfg.seed if cfg.data.raw_rejected == "random" else None
    return json.dumps([cfg.data.__dict__, seed, rule], sort_keys=True, default=str)


def _run_plans(plans, data_by_run: dict, out: Path, resume: bool, no_eval: bool, locks: dict | None = None,
               suite_file: dict | None = None) -> None:
    """Trains (and evaluates) the plans in order; each run folder's lock is released once its run is done, so that
    `pobench eval` or `compare` of a finished seed need not wait for the whole grid. `suite_file`: the suite file's
    place and content digest (registry.suite_source), recorded in env.json."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pobench.config import dump
    from pobench.engine.io import atomic_write_json, atomic_write_text
    from pobench.engine.trainer import train
    from pobench.environment import environment_info
    from pobench.faults import out_of_memory_as_error
    from pobench.report.collect import grid_point_of, read_summary

    tokenized: dict = {}
    summaries = []
    started = time.time()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        overall = progress.add_task("runs", total=len(plans))
        for algorithm, cfg, run_dir, done in plans:
            point = grid_point_of(run_dir, cfg.algorithm_name)
            if done and resume:
                summaries.append((point, read_summary(run_dir / "train_summary.json")))
                progress.console.print(f"[dim]{run_dir}: finished earlier, skipped[/dim]")
                progress.advance(overall)
                continue
            data = data_by_run[run_dir]
            run_dir.mkdir(parents=True, exist_ok=True)
            from pobench.models import pick_device
            env = {**environment_info(pick_device(cfg.model.device)), "suite_file": suite_file}
            # A resumed run keeps the files it started with (its config and records were checked equal above; its
            # env.json names the software that trained its first steps) and adds this environment once it has
            # trained: a resume refused by a damaged checkpoint changes nothing.
            resuming = resume and (run_dir / "env.json").is_file()
            trains = not (run_dir / "train_summary.json").is_file()   # not a finished run resumed to evaluate
            with _discard_if_unstarted(run_dir), out_of_memory_as_error(str(run_dir), cfg):
                if not resuming:
                    atomic_write_text(run_dir / "config.yaml", dump(cfg))
                    atomic_write_json(run_dir / "data.json", data.report)
                    atomic_write_json(run_dir / "env.json", env)
                summary = train(cfg, algorithm, data, run_dir, out / ".cache", resume=resume, progress=progress,
                                tokenized=tokenized)
            if resuming and trains:
                _record_resume(run_dir, env, cfg, summary.get("code"))
            if not no_eval:  # generate, judge, metrics -> eval.json + generations.jsonl (pobench/eval/runner.py)
                from pobench.eval.runner import evaluate_run
                try:
                    with out_of_memory_as_error(f"{run_dir} (evaluation)", cfg):
                        evaluate_run(run_dir, out / ".cache", _eval_settings(cfg), progress=progress)
                except PobenchError as e:   # the training is done and kept: say how to evaluate it without retraining
                    raise PobenchError(f"{e}; {run_dir} finished training and is kept: evaluate it with `pobench eval "
                                       f"{run_dir}` (--judge or --set eval.KEY=VALUE to change a setting), or rerun "
                                       f"this command with --resume, which may change its eval.* settings, to evaluate "
                                       f"it and train the runs left") from None
            summaries.append((point, summary))
            if locks and run_dir in locks:
                locks[run_dir].release()
            progress.advance(overall)
    _print_summary(summaries, time.time() - started)
    from pobench.report.command import print_leaderboard
    print_leaderboard(out, {cfg.suite for _, cfg, _, _ in plans})


def _eval_settings(cfg) -> dict:
    """The eval section a run is evaluated under, as evaluate_run's overrides of its config.yaml: the same but where
    `--resume` changed an eval.* setting of a run not evaluated yet."""
    import dataclasses
    return {"eval": dataclasses.asdict(cfg.eval)}


def plan_warning(sampler, cfg, data) -> str | None:
    """A sampler's warning about the planned run (RSO: a pool too small to reject from), told the pools' size and
    the setting that sizes them."""
    from pobench.sampling.pools import candidates_per_prompt, pool_size_setting
    if not hasattr(sampler, "plan_warning"):
        return None
    return sampler.plan_warning(candidates_per_prompt(cfg, data), pool_size_setting(cfg, data))


def planned_world(num_processes: int | None, launch_config: str | None) -> int | None:
    """The processes the runs will train under, as the trainer will count them: inside a launch the launcher's;
    before one, --num-processes, or None where only a launch preset names it (the world-dependent checks then
    wait for the launched processes, which plan again)."""
    from pobench.engine.distributed import inside_launch, launched_world_size
    if inside_launch():
        return launched_world_size()
    return num_processes or (None if launch_config else 1)


def _record_resume(run_dir: Path, env: dict, cfg, code: dict | None = None) -> None:
    """Adds a finished resume to env.json's `resumed` list: its environment, the settings a resume may change
    (config.yaml keeps the ones the run started with) and the algorithm's and sampler's code it ran (equal to the
    checkpoint's, or the first record of it for a checkpoint older than that). A damaged env.json is left as it is."""
    from pobench import config as C
    from pobench.engine.io import atomic_write_json
    from pobench.report.collect import read_json
    try:
        started = read_json(run_dir / "env.json")
    except PobenchError:
        return
    if not isinstance(started, dict):
        return
    flat = C.flatten(cfg.to_dict())
    entry = {**env, "settings": {k: flat.get(k) for k in C.RESUMABLE_CHANGES}, "code": code}
    atomic_write_json(run_dir / "env.json", {**started, "resumed": [*(started.get("resumed") or []), entry]})


def _print_summary(summaries: list[tuple[str, dict]], wall: float) -> None:
    """One row per run: (its grid point, '' without a grid; its train_summary.json)."""
    from pobench.report.render import seconds_digits
    gridded = any(point for point, _ in summaries)
    table = Table(title=f"pobench run: {len(summaries)} run(s) in {wall:.0f} s", caption="held-out: "
                  "the algorithm's implicit-reward accuracy and margin on held-out pairs, before -> after")
    for col in ("suite", "algo") + (("grid point",) if gridded else ()) + (
            "seed", "steps", "pairs", "train s", "pairs/s", "loss", "held-out acc", "margin"):
        table.add_column(col, no_wrap=True)
    def num(v, digits: int) -> str:
        return "-" if v is None else f"{v:.{digits}f}"

    for point, s in summaries:   # a run finished by an older pobench may lack a field: "-"
        init, final = s.get("held_out_initial") or {}, s.get("held_out_final") or {}
        table.add_row(s["suite"], s["algorithm"], *([Text(point or "(default)")] if gridded else []),
                      str(s["seed"]), str(s.get("steps", "-")), str(s.get("pairs_seen", "-")),
                      num(s.get("train_time_s"), seconds_digits(s.get("train_time_s"))),
                      num(s.get("pairs_per_s") or 0, 2), num(s.get("final_loss"), 3),
                      f"{num(init.get('eval/rewards/accuracies'), 2)}->{num(final.get('eval/rewards/accuracies'), 2)}",
                      f"{num(init.get('eval/rewards/margins'), 3)}->{num(final.get('eval/rewards/margins'), 3)}")
    Console(width=max(120, Console().width)).print(table)


from pobench.report.command import report  # noqa: E402  (imports only typer; the report's work is lazy)

app.command("report")(report)


@app.command("list")
def list_(
    json_: bool = typer.Option(False, "--json", help="Machine-readable output."),
    plugin: List[Path] = typer.Option([], "--plugin", help="Python file registering extra algorithms."),
):
    """List algorithms and suites."""
    from pobench.registry import ALGORITHMS, algorithm_defaults, discover, load_suite, suite_files

    discover([str(p) for p in plugin])
    algos = [{"name": n, "sampler": cls.sampler, "needs_reference": bool(cls.needs_reference),
              "defaults": algorithm_defaults(cls), "doc": (sys.modules[cls.__module__].__doc__ or "").strip()}
             for n, cls in sorted(ALGORITHMS.items())]
    suites = [{"name": n, "description": load_suite(n).get("description", ""), "path": str(p)}
              for n, p in suite_files().items()]
    import importlib.util

    from pobench.generation import BACKENDS
    from pobench.registry import SAMPLERS
    from pobench.rewards import GOLD_REWARDS, builtin_gold
    builtin_gold("synthetic")
    backends = [{"name": n, "installed": n != "vllm" or importlib.util.find_spec("vllm") is not None}
                for n in sorted(BACKENDS)]
    samplers = [{"name": n, "doc": (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]}
                for n, cls in sorted(SAMPLERS.items())]
    scorers = ["<reward-model folder>", "<hub id>"] + [f"gold:{n}" for n in sorted(GOLD_REWARDS)] + \
        ["gold:synthetic-<task seed>"]
    judges = ["auto", "rm:<reward-model folder or hub id>"] + [f"gold:{n}" for n in sorted(GOLD_REWARDS)] + \
        ["alpaca_eval:<annotators config>" + ("" if importlib.util.find_spec("alpaca_eval") else " (not installed)"),
         "alpaca_eval:local"]
    if json_:
        typer.echo(json.dumps({"algorithms": algos, "suites": suites, "samplers": samplers,
                               "generation_backends": backends, "reward_models": scorers, "judges": judges}, indent=2))
        return
    con = Console()
    t = Table(title="algorithms")
    for c in ("name", "sampler", "reference", "defaults", "about"):
        t.add_column(c)
    for a in algos:
        t.add_row(a["name"], a["sampler"], "yes" if a["needs_reference"] else "no",
                  ", ".join(f"{k}={v}" for k, v in a["defaults"].items()), _first_sentence(a["doc"]))
    con.print(t)
    t = Table(title="suites")
    t.add_column("name")
    t.add_column("description")
    for s in suites:
        t.add_row(s["name"], s["description"])
    con.print(t)
    con.print("generation backends: " + ", ".join(f"{b['name']}{'' if b['installed'] else ' (not installed)'}"
                                                  for b in backends), highlight=False)
    con.print("reward models: " + ", ".join(scorers), highlight=False, markup=False)
    con.print("judges (pobench eval --judge): " + ", ".join(judges), highlight=False, markup=False)


def _first_sentence(doc: str) -> str:
    """A docstring's first sentence, its line breaks undone: its first line was cut mid-sentence where the source
    wraps ("MC-PO (...): DPO on a negative drawn"). A sentence ends at . ! or ? before a capital ("et al. 2025" and
    "e.g. a" go on)."""
    import re
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    return re.split(r"(?<=[.!?])\s+(?=[A-Z])", paragraph)[0]


@app.command()
def data(
    suite: str = typer.Argument(..., help="Suite name or path to a suite .yaml."),
    data_path: Optional[str] = typer.Option(None, "--data", help="'sample', 'hub', a hub id, or a local file/folder."),
    split: str = typer.Option("train", "--split", help="train, or eval (the held-out records)."),
    head: int = typer.Option(0, "--head", help="Print only the first N records (0 = all)."),
    json_: bool = typer.Option(False, "--json", help="One JSON object per line."),
    set_: List[str] = typer.Option([], "--set", help="Override a data key, e.g. --set data.schema=hh."),
):
    """Print the parsed records a suite will train on."""
    from pobench import config as C
    from pobench.data import load_suite_data
    from pobench.registry import load_suite

    if split not in ("train", "eval"):
        raise PobenchError(f"--split {split}: choose train or eval")
    set_cfg = C.parse_set(set_)
    C.check_layer(set_cfg, "--set")   # a typo named as typed there, not as if the suite held it
    merged = C.deep_merge(load_suite(suite), set_cfg)
    if data_path:
        merged = C.deep_merge(merged, {"data": {"path": data_path}})
    cfg = C.check_new_config(C._build(C.RunConfig, {k: v for k, v in merged.items() if k != "algorithm"}, ""))
    loaded = load_suite_data(cfg.data, cfg.seed)  # the seed `run` uses, for per-row random choices
    records = loaded.train if split == "train" else loaded.eval
    total = len(records)
    if head:
        records = records[:head]
    skipped = loaded.report["train_skipped"] if split == "train" else loaded.report["eval_skipped"]
    if skipped:
        console.print(f"skipped rows: {skipped}")
    if json_:
        for r in records:
            sys.stdout.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
        return
    con = Console()
    for r in records:
        con.rule(r.id)
        for m in r.prompt:
            con.print(f"[bold]{m['role']}[/bold]: {m['content']}")
        con.print(f"[green]chosen[/green]: {r.chosen}")
        con.print(f"[red]rejected[/red]: {r.rejected}")
        if r.candidates:
            con.print(f"candidates: {len(r.candidates)} scores: {r.scores}")
    # the split's whole count, and how many of them --head showed ("2 records" read as the split's size)
    count = f"{total} {'training' if split == 'train' else 'held-out'} record{'' if total == 1 else 's'}"
    shown = f"showing {len(records)} of {count}" if len(records) < total else count
    console.print(f"{shown} ({loaded.report['train_source'] if split == 'train' else loaded.report['eval_source']})",
                  highlight=False, markup=False, soft_wrap=True)


@app.command("train-rm")
def train_rm(
    suite: str = typer.Option(DEFAULT_SUITE, "--suite", help="Suite name or path to a suite .yaml."),
    data_path: Optional[str] = typer.Option(None, "--data", help="'sample', 'hub', a hub id, or a local file/folder."),
    backbone: str = typer.Option("minilm", "--backbone", help="minilm (all-MiniLM-L6-v2), policy (SmolLM2-135M), or a model folder."),
    steps: int = typer.Option(200, "--steps", help="Optimizer steps."),
    batch_size: int = typer.Option(16, "--batch-size", help="Preference pairs per step."),
    lr: float = typer.Option(5e-5, "--lr", help="AdamW learning rate (linear warmup, cosine decay)."),
    max_length: int = typer.Option(256, "--max-length", help="Tokens per conversation; longer ones keep their end."),
    seed: int = typer.Option(1, "--seed", help="Seeds the head's init and the data order."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: results/reward_models/<suite>-<backbone>-seed<k>)."),
    disjoint: bool = typer.Option(True, "--disjoint/--no-disjoint",
                                  help="Train on the second half of the training records only, so a policy trained "
                                       "on the first half is not judged by a model of its own training data."),
):
    """Train a Bradley-Terry reward model on a suite's preference pairs and report held-out pair accuracy."""
    from pobench import config as C
    from pobench.data import load_suite_data
    from pobench.registry import load_suite
    from pobench.rewards.train import train_reward_model

    merged = load_suite(suite)
    if data_path:
        merged = C.deep_merge(merged, {"data": {"path": data_path}})
    cfg = C.check_new_config(C._build(C.RunConfig, {k: v for k, v in merged.items() if k != "algorithm"}, ""))
    loaded = load_suite_data(cfg.data, cfg.seed)   # the records `run` trains on, in file order
    train_records = loaded.train
    first = len(train_records) // 2 if disjoint else 0
    train_records = train_records[first:]
    if len(train_records) < 1:
        raise PobenchError(f"{loaded.report['train_source']}: no training records left for the reward model")
    name = backbone if backbone in ("minilm", "policy") else Path(backbone).name
    out = out or Path("results") / "reward_models" / f"{cfg.suite}-{name}-seed{seed}"
    console.print(f"reward model: {len(train_records)} training pairs (records {first}..{first + len(train_records)} "
                  f"of {len(loaded.train)}{', disjoint from the first half' if disjoint else ''}), "
                  f"{len(loaded.eval)} held-out pairs, backbone {backbone}", highlight=False, markup=False)
    info = train_reward_model(
        train_records, loaded.eval, backbone=backbone, out_dir=out, steps=steps, batch_size=batch_size, lr=lr,
        max_length=max_length, seed=seed,
        extra_info={"suite": cfg.suite, "train_source": loaded.report["train_source"],
                    "eval_source": loaded.report["eval_source"], "disjoint": disjoint,
                    "train_records_range": [first, first + len(train_records)]})
    typer.echo(f"held-out pair accuracy: {info['eval_accuracy_before']:.3f} -> {info['eval_accuracy_after']:.3f} "
               f"(+/- {info['eval_accuracy_stderr_after']:.3f}, {info['eval_pairs']} pairs); train loss "
               f"{info['train_loss_first']:.3f} -> {info['train_loss_last']:.3f}; training {info['train_time_s']:.0f} s, "
               f"held-out scoring {info['eval_time_s']:.0f} s; "
               f"saved to {info['out_dir']}")


@app.command()
def candidates(
    suite: str = typer.Option(DEFAULT_SUITE, "--suite", help="Suite name or path to a suite .yaml."),
    model: Optional[str] = typer.Option(None, "--model", help="Reference policy: hub id, folder, .gguf, or alias."),
    data_path: Optional[str] = typer.Option(None, "--data", help="'sample', 'hub', a hub id, or a local file/folder."),
    seeds: str = typer.Option("1", "--seeds", help="Make the pools of the prompts these run seeds will train on."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="train.max_steps of the runs to prepare for."),
    out: Path = typer.Option(Path("results"), "--out", help="Results root (the pools go to OUT/.cache/pools)."),
    set_: List[str] = typer.Option([], "--set", help="Override a key, e.g. --set pool.num_samples=16."),
):
    """Generate and score the candidate pools of a suite ahead of `pobench run` (stored and shared by all runs)."""
    from pobench import config as C
    from pobench.data import load_suite_data
    from pobench.engine.trainer import build_pools
    from pobench.faults import out_of_memory_as_error
    from pobench.registry import algorithm_defaults, get_algorithm, load_suite

    _quiet_unless_main()  # under accelerate launch each rank generates its share; the main one reports
    # pool.source as a run reads it (the suite's, auto by default): records that carry their own pools need none
    set_cfg = C.deep_merge(_shortcuts(model, data_path, max_steps), C.parse_set(set_))
    mcpo = get_algorithm("mcpo")
    for seed in _seeds(seeds):
        cfg = C.resolve(load_suite(suite), "mcpo", algorithm_defaults(mcpo), {}, C.deep_merge(set_cfg, {"seed": seed}),
                        ["mcpo"], mcpo.choices)
        suite_data = load_suite_data(cfg.data, cfg.seed)
        _writable(out)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress:
            with out_of_memory_as_error("pobench candidates", cfg):
                info = build_pools(cfg, suite_data, out / ".cache", progress)
        if info["source"] == "dataset":
            console.print(f"seed {seed}: the records carry their own pools (pool.source={cfg.pool.source}): nothing "
                          f"to generate", markup=False, highlight=False)
            continue
        console.print(f"seed {seed}: pools of {info['prompts']} prompts x {info['samples_per_prompt']} samples, "
                      f"scored by {info['reward_model']}, in {info['store']}", markup=False, highlight=False)


def _run_folders(paths: list[Path]) -> list[Path]:
    """Run folders among `paths`: a folder with config.yaml is one; any other folder is searched for finished
    runs (config.yaml beside train_summary.json), caches excluded."""
    found: list[Path] = []
    for path in paths:
        if (path / "config.yaml").is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(c.parent for c in path.rglob("config.yaml")
                                if (c.parent / "train_summary.json").is_file() and ".cache" not in c.parts))
        else:
            raise PobenchError(f"{path}: no such run folder")
    if not found:
        raise PobenchError(f"{', '.join(map(str, paths))}: no finished run folders (config.yaml + train_summary.json)")
    return list(dict.fromkeys(found))


@app.command("eval")
def eval_(
    run_dirs: List[Path] = typer.Argument(..., help="Run folders (results/<suite>/<algo>/seed<k>) or folders holding them."),
    judge: Optional[str] = typer.Option(None, "--judge", help="auto | rm:<folder or hub id> | gold:<name> | "
                                        "alpaca_eval:<config> | alpaca_eval:local (eval.judge)."),
    reference: Optional[str] = typer.Option(None, "--reference", help="sft | dataset | alpaca_eval (eval.reference)."),
    eval_set: Optional[str] = typer.Option(None, "--eval-set", help="held_out | alpaca_eval (eval.eval_set)."),
    eval_file: Optional[Path] = typer.Option(None, "--eval-file", help="Local alpaca_eval_gpt4_baseline.json for --eval-set alpaca_eval."),
    num_prompts: Optional[int] = typer.Option(None, "--num-prompts", help="Prompts to judge (eval.num_prompts; 0 = all)."),
    set_: List[str] = typer.Option([], "--set", help="Override an eval key, e.g. --set eval.max_new_tokens=128."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Caches (reference outputs, judges); "
                                             "default: <results root>/.cache."),
    json_: bool = typer.Option(False, "--json", help="Print every eval.json as one JSON line."),
):
    """Generate on the eval prompts, judge against a reference, write eval.json + generations.jsonl per run."""
    from pobench import config as C
    from pobench.eval.runner import evaluate_run, load_run_config
    from pobench.faults import out_of_memory_as_error

    is_main = _quiet_unless_main()  # under accelerate launch the ranks split each evaluation; the main one reports
    shortcuts = {k: v for k, v in {"judge": judge, "reference": reference, "eval_set": eval_set,
                                   "eval_file": str(eval_file) if eval_file else None,
                                   "num_prompts": num_prompts}.items() if v is not None}
    from pobench.paths import absolute_overrides, saved_config
    # typed here: read from the current folder, stored absolute as a run's own paths are (pobench/paths.py)
    overrides = absolute_overrides(C.deep_merge({"eval": shortcuts} if shortcuts else {}, C.parse_set(set_)))
    folders = _run_folders(run_dirs)
    from pobench.eval.runner import check_eval_config
    for folder in folders:   # every config, and the judge it names, is checked before the first evaluation starts
        # a path from the run's config.yaml that is not there is named as the run's (and, relative, as relative to
        # the folder the run was started in), not as "no such file" once the evaluation reads it
        saved_config(C.read_yaml(folder / "config.yaml") if (folder / "config.yaml").is_file() else {}, folder,
                     RUN_NEEDS + (() if "judge" in _section(overrides, "eval") else ("eval.judge",)))
        resolved = load_run_config(folder, overrides)
        if eval_file and resolved.eval.eval_set != "alpaca_eval":   # it would be silently unused
            raise PobenchError(f"--eval-file {eval_file}: read for the alpaca_eval set only, and {folder} is "
                               f"evaluated on {resolved.eval.eval_set} (add --eval-set alpaca_eval)")
        check_eval_config(resolved)
    from pobench.data import older_rules_warning, run_records_rule
    _warn(older_rules_warning(map(run_records_rule, folders)))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    results = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        for folder in folders:
            # the folder's lock, as a run holds it: an evaluation beside `pobench run` evaluating the same folder
            # (or another `pobench eval`) would leave one's eval.json beside the other's generations
            with _folder_lock(folder, is_main), out_of_memory_as_error(f"{folder} (evaluation)"):
                results.append((folder, evaluate_run(folder, cache_dir, overrides, progress)))
    if not is_main:
        return
    if json_:
        from pobench.engine.io import json_text
        for _, r in results:
            typer.echo(json_text(r))   # as eval.json holds it: strict JSON, NaN as null
        return
    Console(width=max(120, Console().width)).print(_eval_table([r for _, r in results]))


def _section(config: dict, name: str) -> dict:
    return config.get(name) if isinstance(config.get(name), dict) else {}


def _eval_table(results: list[dict]) -> Table:
    """pobench eval's summary of eval.json results. "judged" is what the win rate is over: prompts the judge gave no
    verdict on are left out of it."""
    table = Table(title=f"pobench eval: {len(results)} run(s)", caption=escape(
        "win rate: P(output beats the reference), ties half, +/- standard error; 95% CI: bootstrap; judged: prompts "
        "with a verdict of those answered; LC: length-controlled; length: characters, policy vs reference; judges: " +
        "; ".join(sorted({f"{r['judge']['name']} ({r['judge']['kind']})" for r in results}))))
    for col in ("suite", "algo", "seed", "reference", "judged", "win rate", "95% CI", "LC", "length", "reward", "KL"):
        table.add_column(col, no_wrap=True)
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for r in results:
        table.add_row(r["suite"], r["algorithm"], str(r["seed"]), r["reference"]["kind"],
                      f"{r['n_judged']}/{r['n_prompts']}",
                      f"{r['win_rate']:.3f}" + ("" if r["win_rate_se"] is None else f" +/- {r['win_rate_se']:.3f}"),
                      f"[{r['win_rate_ci95'][0]:.3f}, {r['win_rate_ci95'][1]:.3f}]", fmt(r["lc_win_rate"], ".3f"),
                      f"{r['avg_length']:.0f} vs {r['reference_avg_length']:.0f}", fmt(r["reward_mean"], ".3f"),
                      fmt(r["kl"], ".3f"))
    return table


@app.command("compare")
def compare(
    runs: List[Path] = typer.Argument(..., help="Run folders, or folders holding them: one algorithm "
                                      "(results/hh-rlhf/mcpo) or a whole suite (results/hh-rlhf)."),
    against: Path = typer.Option(..., "--against", help="The runs to judge them against, paired by seed "
                                 "(e.g. results/hh-rlhf/dpo)."),
    judge: Optional[str] = typer.Option(None, "--judge", help="auto | rm:<folder or hub id> | gold:<name> | "
                                        "alpaca_eval:<config> | alpaca_eval:local (default: the runs' eval.judge)."),
    set_: List[str] = typer.Option([], "--set", help="A judge key, e.g. --set eval.judge_model=<model> "
                                   "(eval.judge, judge_model, judge_decoder, judge_rm_steps, judge_both_orders, bootstrap)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Caches (judges); default: <results root>/.cache."),
    json_: bool = typer.Option(False, "--json", help="Print every comparison as one JSON line (without its rows)."),
):
    """Judge runs' answers head to head against other runs' of the same seed (no generation; head_to_head.json)."""
    from pobench import config as C
    from pobench.eval.head_to_head import check_overrides, check_pair, head_to_head
    from pobench.eval.runner import load_run_config

    from pobench.paths import absolute_overrides
    overrides = absolute_overrides(C.deep_merge({"eval": {"judge": judge}} if judge else {}, C.parse_set(set_)))
    check_overrides(overrides)
    theirs = _runs_by_seed(_run_folders([against]), "--against", overrides)
    baseline = {p.resolve() for p in theirs.values()}
    # RUNS may hold several algorithms or grid points (e.g. a whole suite folder): each is paired by seed
    groups: dict[Path, list[Path]] = {}
    for folder in _run_folders(runs):
        if folder.resolve() not in baseline:
            groups.setdefault(folder.parent, []).append(folder)
    pairs = []
    for group in groups.values():
        mine = _runs_by_seed(group, "RUNS", overrides)
        pairs += [(mine[s], theirs[s]) for s in sorted(set(mine) & set(theirs))]
    if not pairs:
        raise PobenchError(f"no seed in both: {', '.join(map(str, runs))} and {against} (seeds {sorted(theirs)}) "
                           f"share no seed")
    from pobench.eval.judges import check_judge_spec
    from pobench.rewards import check_reward_model
    for run, other in pairs:   # every pair is checked before the first judge runs
        check_pair(run, other)
        spec = load_run_config(run, overrides, as_evaluated=True).eval.judge   # the judge asked for
        kind, arg = check_judge_spec(spec) or (None, None)
        if kind == "rm":
            check_reward_model(arg, "eval.judge", shown=spec)
    from pobench.data import older_rules_warning, run_records_rule
    _warn(older_rules_warning(map(run_records_rule, dict.fromkeys(run for pair in pairs for run in pair))))
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    results = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console,
                  transient=True) as progress:
        for run, other in pairs:
            with _folder_lock(run):   # head_to_head.json is read, added to and written again
                results.append(head_to_head(run, other, cache_dir, overrides, progress))
    if json_:
        from pobench.engine.io import json_text
        for r in results:
            typer.echo(json_text({k: v for k, v in r.items() if k != "rows"}))   # strict JSON, as head_to_head.json
        return
    table = Table(title=f"pobench compare: {len(results)} pair(s)", caption=escape(
        "win rate: P(the run's answer beats the other run's on the same prompt), ties half, +/- standard error; "
        "95% CI: bootstrap over prompts; won/tied/lost: prompts; same text: prompts both answered alike; judges: "
        + "; ".join(sorted({r["judge"]["name"] for r in results}))))
    for col in ("suite", "seed", "run", "against", "n", "win rate", "95% CI", "won/tied/lost", "same text"):
        table.add_column(col, no_wrap=True)
    for r in results:
        se = "" if r["win_rate_se"] is None else f" +/- {r['win_rate_se']:.3f}"   # None: one prompt
        table.add_row(r["suite"], str(r["seed"]), r["run"], r["against"], str(r["n_judged"]), f"{r['win_rate']:.3f}{se}",
                      f"[{r['win_rate_ci95'][0]:.3f}, {r['win_rate_ci95'][1]:.3f}]",
                      f"{r['better']}/{r['tied']}/{r['worse']}", str(r["identical_outputs"]))
    Console(width=max(120, Console().width)).print(table)


def _runs_by_seed(folders: list[Path], what: str, overrides: dict) -> dict[int, Path]:
    """{seed: run folder}; two runs of one seed (grid points, two algorithms) are ambiguous: name the folder of one."""
    from pobench.eval.runner import load_run_config
    by_seed: dict[int, Path] = {}
    for folder in folders:
        seed = load_run_config(folder, overrides).seed
        if seed in by_seed:
            raise PobenchError(f"{what}: two runs of seed {seed} ({by_seed[seed]} and {folder}); name one "
                               f"algorithm or grid point folder")
        by_seed[seed] = folder
    return by_seed


def main() -> None:
    """Entry point: PobenchError -> one line, exit 2; anything else -> one line, exit 1."""
    import warnings
    from pobench.engine.distributed import close_process_group
    # deprecation notices that transformers raises from inside peft: noise for a user, nothing they can act on
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    _quiet_deepspeed_cpu_notice()
    completed = False
    try:
        _run_app()
        completed = True
    except SystemExit as e:
        completed = not e.code
        raise
    finally:
        close_process_group(completed)  # under a launch: before exit, or gloo may abort a finished rank


def _quiet_deepspeed_cpu_notice() -> None:
    """accelerate imports DeepSpeed where it is installed, DeepSpeed used or not (Accelerator.unwrap_model does, on
    every run, to ask whether the model is a DeepSpeed engine), and DeepSpeed's import logs "[WARNING] ... Setting
    accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it." to stdout on every machine
    without CUDA: noise on each command, and on the CPU nothing to act on. That one notice is dropped (a filter on
    DeepSpeed's logger, set before the import creates it); every other DeepSpeed message still shows."""
    import logging

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Setting accelerator to CPU.")
    logging.getLogger("DeepSpeed").addFilter(keep)


INTERRUPTED = 130   # the shell's code for a run stopped by Ctrl-C (128 + SIGINT)


def _interrupted() -> None:
    console.quiet = False
    console.print("interrupted; rerun with --resume to continue from the last checkpoint")
    sys.exit(INTERRUPTED)


def _run_app() -> None:
    try:
        # without standalone mode, typer turns Ctrl-C (and a typer.Exit) into a returned exit code, not an exception
        code = app(standalone_mode=False)
        if code == INTERRUPTED:
            _interrupted()
        if isinstance(code, int) and not isinstance(code, bool) and code:
            sys.exit(code)
    except PobenchError as e:
        console.quiet = False  # a rank's error is printed even where its progress is silenced
        console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        from pobench.launch import report_to_launcher
        report_to_launcher(str(e), e.exit_code)   # under --num-processes: for the command that launched this one
        sys.exit(e.exit_code)
    except (typer.Exit, SystemExit) as e:
        code = getattr(e, "exit_code", getattr(e, "code", 0))
        sys.exit(code or 0)
    except KeyboardInterrupt:
        _interrupted()
    except Exception as e:  # click usage errors come here too
        # typer bundles its own copy of click: recognise its usage errors by shape, not by class
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            console.print(f"[red]error:[/red] {escape(e.format_message())}", highlight=False, soft_wrap=True)
            sys.exit(2)
        if type(e).__name__ == "Abort":
            sys.exit(INTERRUPTED)
        if os.environ.get("POBENCH_DEBUG"):
            traceback.print_exc()
        console.quiet = False
        console.print(f"[red]internal error:[/red] {type(e).__name__}: {escape(str(e))} (set POBENCH_DEBUG=1 for the traceback)",
                      highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
