"""Relative paths in suite files, --config files and on the command line, and how runs store them (pobench/paths.py).

A researcher's own suite in `suites/` naming `data.path: ../mydata/hh` worked only when pobench ran inside `suites/`
(paths were read from the current folder, whoever wrote them), and a run saved its paths as typed, so `pobench eval`
of it from another folder, or `--resume` from there, failed with "mydata/uf.jsonl: no such file".
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from pobench.config import RunConfig, _build, check_new_config, parse_set, resolve
from pobench.data import load_suite_data
from pobench.errors import PobenchError
from pobench.paths import absolute_overrides, rebase_file_paths, saved_config
from pobench.registry import load_suite

HH = {"chosen": "\n\nHuman: q{i}?\n\nAssistant: yes {i}", "rejected": "\n\nHuman: q{i}?\n\nAssistant: no {i}"}
DPO = {"beta": 0.1, "label_smoothing": 0.0, "loss_type": "sigmoid"}


def _hh_file(path: Path, n: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({k: v.format(i=i) for k, v in HH.items()}) + "\n" for i in range(n)))
    return path


@pytest.fixture
def project(tmp_path, monkeypatch):
    """project/suites/mine.yaml beside project/mydata/hh.jsonl and project/rm/ (a reward-model folder); the shell in
    another folder."""
    root = tmp_path / "project"
    _hh_file(root / "mydata" / "hh.jsonl")
    (root / "rm").mkdir()
    (root / "suites").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return root


def _suite(root: Path, values: dict) -> Path:
    f = root / "suites" / "mine.yaml"
    f.write_text(yaml.safe_dump(values))
    return f


def test_a_suite_files_paths_are_read_from_its_folder(project):
    f = _suite(project, {"data": {"path": "../mydata/hh.jsonl", "schema": "hh", "eval_size": 2},
                         "model": {"name_or_path": "smollm2-135m-instruct"},
                         "pool": {"reward_model": "../rm"}, "eval": {"judge": "rm:../rm"}})
    suite = load_suite(str(f))
    assert suite["data"]["path"] == str(project / "mydata" / "hh.jsonl")    # absolute, `..` folded
    assert suite["pool"]["reward_model"] == str(project / "rm")
    assert suite["eval"]["judge"] == f"rm:{project / 'rm'}"
    assert suite["model"]["name_or_path"] == "smollm2-135m-instruct"         # an alias, not a path
    data = load_suite_data(_build(RunConfig, {"data": suite["data"]}, "").data)   # from another folder
    assert len(data.train) == 10 and data.report["train_source"] == str(project / "mydata" / "hh.jsonl")
    # the same from the suite's own folder, and through a relative path to the suite file
    os.chdir(project)
    assert load_suite("suites/mine.yaml")["data"]["path"] == str(project / "mydata" / "hh.jsonl")


@pytest.mark.parametrize("key, value", [
    ("data.path", "auto"), ("data.path", "sample"), ("data.path", "hub"), ("data.path", "Anthropic/hh-rlhf"),
    ("model.name_or_path", "HuggingFaceTB/SmolLM2-135M-Instruct"), ("model.name_or_path", "synthetic-ref:3:100"),
    ("pool.reward_model", "auto"), ("pool.reward_model", "gold:synthetic"), ("pool.reward_model", "org/rm"),
    ("eval.judge", "auto"), ("eval.judge", "gold:synthetic"), ("eval.judge", "alpaca_eval:local"),
    ("eval.judge", "rm:org/rm"), ("eval.judge_model", "smollm2-135m-instruct"),
])
def test_hub_ids_aliases_and_keywords_stay_as_they_are(project, key, value):
    """What the loaders read as a hub id, an alias or a keyword (it exists nowhere and is not spelled as a path)."""
    section, name = key.split(".")
    f = _suite(project, {section: {name: value}})
    assert load_suite(str(f))[section][name] == value
    cfg = check_new_config(_build(RunConfig, {"suite": "mine", section: {name: value}}, ""))
    assert getattr(getattr(cfg, section), name) == value


def test_a_path_there_only_from_the_current_folder_is_still_read_from_there(project):
    """Suites written for the old rule (`data.path: mydata/hh.jsonl`, run from the project folder) still work."""
    f = _suite(project, {"data": {"path": "mydata/hh.jsonl", "schema": "hh", "eval_size": 2}})
    os.chdir(project)
    suite = load_suite(str(f))
    assert suite["data"]["path"] == "mydata/hh.jsonl"
    cfg = check_new_config(_build(RunConfig, suite, ""))
    assert cfg.data.path == str(project / "mydata" / "hh.jsonl")   # and absolute in the config the run saves


def test_a_missing_suite_path_is_named_where_it_was_looked_for(project):
    f = _suite(project, {"data": {"path": "mydata/hh.jsonl", "schema": "hh"},
                         "model": {"name_or_path": "./no_model"}})   # not there from suites/ nor from the shell
    suite = load_suite(str(f))
    cfg = check_new_config(_build(RunConfig, suite, ""))
    with pytest.raises(PobenchError) as e:
        load_suite_data(cfg.data)
    assert str(e.value) == (f"{project / 'suites' / 'mydata' / 'hh.jsonl'}: no such file or folder (data.path "
                            f"'mydata/hh.jsonl' in {f}, whose relative paths are read from its folder)")
    from pobench.models import check_model_source
    with pytest.raises(PobenchError, match=r"no_model: no such model folder \(model.name_or_path './no_model' in "):
        check_model_source(cfg.model.name_or_path)


def test_command_line_paths_are_read_from_the_current_folder_and_stored_absolute(project):
    """--data, --model, --set: from the shell's folder, as before; the config a run saves names them absolutely."""
    os.chdir(project / "mydata")
    suite = load_suite(str(_suite(project, {"data": {"path": "sample", "sample_train": "x.jsonl"}})))
    cfg = resolve(suite, "dpo", DPO, {}, parse_set(["data.path=hh.jsonl", "eval.judge=rm:../rm",
                                                    "model.name_or_path=./nothing.gguf"]), ["dpo"])
    assert cfg.data.path == str(project / "mydata" / "hh.jsonl")
    assert cfg.eval.judge == f"rm:{project / 'rm'}"
    assert cfg.model.name_or_path == str(project / "mydata" / "nothing.gguf")   # spelled as a path: named so
    assert absolute_overrides({"eval": {"eval_file": "a.json", "judge": "rm:../rm"}}) == {
        "eval": {"eval_file": str(project / "mydata" / "a.json"), "judge": f"rm:{project / 'rm'}"}}


def test_a_config_files_paths_are_read_from_its_folder(project):
    """`--config` is a YAML file like a suite: `pobench run --config study/c.yaml` with `data.path: ../mydata/...`."""
    (project / "study").mkdir()
    layer = rebase_file_paths({"data": {"path": "../mydata/hh.jsonl"}, "model": {"name_or_path": "gone"}},
                              project / "study" / "c.yaml")
    assert layer == {"data": {"path": str(project / "mydata" / "hh.jsonl")}, "model": {"name_or_path": "gone"}}


def test_pobench_run_reads_a_config_files_paths_from_its_folder(project):
    """Through `pobench run --config`: the model the file names beside it is looked for there (here: missing, so
    nothing trains, and the error says which file named it)."""
    from typer.testing import CliRunner

    from pobench.cli import app
    (project / "study").mkdir()
    (project / "study" / "c.yaml").write_text("model:\n  name_or_path: ./no_model\n")
    result = CliRunner().invoke(app, ["run", "--algo", "dpo", "--config", str(project / "study" / "c.yaml"),
                                      "--out", str(project / "r")])
    assert isinstance(result.exception, PobenchError)
    assert str(result.exception) == (f"model.name_or_path {project / 'study' / 'no_model'}: no such model folder "
                                     f"(model.name_or_path './no_model' in {project / 'study' / 'c.yaml'}, whose "
                                     f"relative paths are read from its folder)")
    assert not (project / "r").exists()


def _old_run(tmp_path: Path, cwd: str | None) -> Path:
    run = tmp_path / "results" / "mine" / "dpo" / "seed1"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("data:\n  path: mydata/hh.jsonl\nmodel:\n  name_or_path: tiny\n")
    (run / "env.json").write_text(json.dumps({"command": ["/venv/bin/pobench", "run", "--suite", "suites/mine.yaml"],
                                              **({"cwd": cwd} if cwd else {})}))
    return run


def test_a_saved_relative_path_is_read_from_the_folder_the_run_started_in(project, tmp_path):
    run = _old_run(tmp_path, str(project))
    saved = saved_config(yaml.safe_load((run / "config.yaml").read_text()), run, ("data.path",))
    assert saved["data"]["path"] == str(project / "mydata" / "hh.jsonl")
    assert saved["model"]["name_or_path"] == "tiny"                              # a hub id there: as it was
    (project / "mydata" / "hh.jsonl").unlink()
    with pytest.raises(PobenchError) as e:
        saved_config(yaml.safe_load((run / "config.yaml").read_text()), run, ("data.path",))
    assert str(e.value) == (f"{run / 'config.yaml'}: data.path 'mydata/hh.jsonl' (the run's config value, relative "
                            f"to the folder the run was started in, {project}): no such file or folder there")


def test_a_run_saved_before_env_json_recorded_its_folder(project, tmp_path):
    """Its relative paths are read from the current folder, as they always were; where they are not there, the
    message says whose value it is and what it is relative to (`pobench eval RUN` from another folder said only
    "mydata/hh.jsonl: no such file")."""
    run = _old_run(tmp_path, None)
    with pytest.raises(PobenchError) as e:
        saved_config(yaml.safe_load((run / "config.yaml").read_text()), run, ("data.path",))
    assert str(e.value) == (
        f"{run / 'config.yaml'}: data.path 'mydata/hh.jsonl' (the run's config value, relative to the folder the run "
        f"was started in, which its env.json does not record: it was started by `pobench run --suite "
        f"suites/mine.yaml`): not found from here ({Path.cwd()}); run this command from the folder that run was "
        f"started in")
    os.chdir(project)
    assert saved_config({"data": {"path": "mydata/hh.jsonl"}}, run, ("data.path",)) == {
        "data": {"path": str(project / "mydata" / "hh.jsonl")}}
    # an absolute one (every run saved since) that is gone is named as the run's too
    with pytest.raises(PobenchError, match=r"data.path '/gone/x.jsonl' \(the run's config value\): no such file"):
        saved_config({"data": {"path": "/gone/x.jsonl"}}, run, ("data.path",))


def test_the_report_reads_an_older_runs_relative_paths_as_absolute(project, tmp_path):
    """Two runs of one model, one saved with `model.name_or_path: tiny` (before paths were stored absolute), one with
    its absolute path: one setting, not UNLIKE ROWS."""
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    from test_report import write_run

    from pobench.report.build import build_report
    (project / "tiny").mkdir()
    os.chdir(project)
    root = tmp_path / "results"
    for algo, model in (("dpo", "tiny"), ("simpo", str(project / "tiny"))):
        run = write_run(root, algo, 1, [0.5, 0.6])
        (run / "config.yaml").write_text(f"suite: hh-rlhf\nseed: 1\nmodel:\n  name_or_path: {model}\n")
    assert build_report(root)[0]["suites"][0]["unlike_rows"] == {}
    (root / "hh-rlhf" / "simpo" / "seed1" / "config.yaml").write_text(
        f"suite: hh-rlhf\nseed: 1\nmodel:\n  name_or_path: {project / 'other'}\n")
    (project / "other").mkdir()
    assert "model.name_or_path" in str(build_report(root)[0]["suites"][0]["unlike_rows"])


def test_a_runs_evaluation_and_resume_work_from_another_folder(tmp_path, tiny_model_dir):
    """Through the command line: a suite in project/suites/ naming ../mydata and ../models/tiny, run from
    project/; then `pobench eval` and `pobench run --resume` of that run from tmp_path (the run's config.yaml
    named mydata relative to the folder it ran in: "mydata/uf.jsonl: no such file")."""
    import subprocess
    import sys
    project = tmp_path / "project"
    _hh_file(project / "mydata" / "hh.jsonl", 30)
    (project / "models").mkdir()
    (project / "models" / "tiny").symlink_to(tiny_model_dir)
    (project / "work").mkdir()
    (project / "suites").mkdir()
    suite = _suite(project, {"data": {"path": "../mydata/hh.jsonl", "schema": "hh", "eval_size": 4},
                             "model": {"name_or_path": "../models/tiny"},
                             "train": {"max_steps": 1, "batch_size": 2, "max_prompt_length": 16,
                                       "max_completion_length": 8},
                             "eval": {"num_prompts": 2, "max_new_tokens": 4, "judge_rm_steps": 1, "kl_samples": 0}})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def pobench(*args, cwd):
        proc = subprocess.run([sys.executable, "-m", "pobench.cli", *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    pobench("run", "--suite", "suites/mine.yaml", "--algo", "dpo", "--no-eval", "--out", "work/results",
            cwd=project)   # (from here, ../mydata is not the data: the suite's folder is what it is relative to)
    run = project / "work" / "results" / "mine" / "dpo" / "seed1"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["path"] == str(project / "mydata" / "hh.jsonl")
    assert saved["model"]["name_or_path"] == str(project / "models" / "tiny")   # the name given, not the link's target
    assert json.loads((run / "env.json").read_text())["cwd"] == str(project)
    pobench("eval", str(run.relative_to(tmp_path)), cwd=tmp_path)
    assert json.loads((run / "eval.json").read_text())["n_prompts"] == 2
    resumed = pobench("run", "--suite", str(suite), "--algo", "dpo", "--no-eval", "--resume", "--out",
                      str(run.parents[2]), cwd=tmp_path)
    assert "finished earlier, skipped" in resumed.stderr + resumed.stdout
