"""Bad usage and bad input through the real command line: exit code 2, one line naming the culprit, no traceback,
nothing written under --out.

Every `pobench run` case fails while configs and data are checked, before any model is loaded. As a safety net
each one also names a model folder that does not exist, so a regression fails fast instead of training.
The subprocesses are started together (each spends ~2 s importing torch) and checked one test per case.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pobench.data.loading import SAMPLES_DIR, read_json_rows

HH_SAMPLE = SAMPLES_DIR / "hh-rlhf" / "harmless-base-test-2000.jsonl.gz"
RUN = ["run", "--out", "out", "--model", "no-such-model", "--max-steps", "1", "--no-eval"]
FIXTURES = Path(__file__).parent / "fixtures"
# a reward model's config.json, tokenizer config and a stand-in weights file: it passes the checks before a run
RM_CONFIG = FIXTURES / "reward-model-config"
# the alpaca_eval set with a judge that may grade it (a hub id offline is refused now: a folder)
ALPACA = RUN[:-1] + ["--set", "eval.eval_set=alpaca_eval", "--set", f"eval.judge=rm:{RM_CONFIG}"]
GOOD = {"chosen": "\n\nHuman: a\n\nAssistant: yes", "rejected": "\n\nHuman: a\n\nAssistant: no"}


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("POBENCH_DEBUG", "OPENAI_API_KEY", "OPENAI_API_KEYS",
                                                                 "OPENAI_CLIENT_CONFIG_PATH")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", COLUMNS="80",
               NO_COLOR="1")
    return env


def pobench(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pobench.cli", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _lines(path: Path, lines: list[bytes | str]) -> None:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))


def _hh_rows(n: int) -> list[str]:
    out = []
    for _, row in read_json_rows(HH_SAMPLE):
        out.append(json.dumps(row))
        if len(out) == n:
            return out


def _setup_truncated_gzip(d: Path) -> None:
    with gzip.open(d / "full.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(_hh_rows(300)) + "\n")
    data = (d / "full.jsonl.gz").read_bytes()
    (d / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])


def _setup_existing_run(d: Path) -> None:
    run_dir = d / "out" / "hh-rlhf" / "dpo" / "seed1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("# an earlier run\nseed: 1\n")


def _setup_interrupted_plugin_run(d: Path) -> None:
    """What `pobench run --algo dpo_hardneg --plugin hardneg.py --suite synthetic` leaves when interrupted."""
    run_dir = d / "out" / "synthetic" / "dpo_hardneg" / "seed1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("suite: synthetic\nseed: 1\nalgorithm_name: dpo_hardneg\n")
    (run_dir / "env.json").write_text(json.dumps({"command": [
        "/venv/bin/pobench", "run", "--suite", "synthetic", "--algo", "dpo_hardneg", "--plugin", "hardneg.py",
        "--out", "out"]}))
    (d / "out" / "hh-rlhf" / "dpo" / "seed1").mkdir(parents=True)   # a finished run: not listed
    (d / "out" / "hh-rlhf" / "dpo" / "seed1" / "config.yaml").write_text("seed: 1\n")
    (d / "out" / "hh-rlhf" / "dpo" / "seed1" / "train_summary.json").write_text("{}")


def _causal_lm_config(folder: Path) -> None:
    """A causal LM's config, tokenizer config and a stand-in weights file, as RM_CONFIG holds a reward model's."""
    folder.mkdir()
    for name in ("tokenizer_config.json", "pytorch_model.bin"):
        (folder / name).write_bytes((RM_CONFIG / name).read_bytes())
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))


def _setup_runs_of_another_suite_file(d: Path) -> None:
    (d / "mine").mkdir()
    (d / "mine" / "hh.yaml").write_text("data:\n  path: sample\n")
    run_dir = d / "out" / "hh" / "dpo" / "seed1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("suite: hh\nseed: 1\n")
    (run_dir / "env.json").write_text(json.dumps({"suite_file": {"file": "/elsewhere/hh.yaml", "sha1": "0123456789ab"}}))


def _setup_finished_run(d: Path) -> None:
    run_dir = d / "out" / "ultrafeedback" / "mcpo" / "seed1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 1\n")
    (run_dir / "train_summary.json").write_text("{}")


# name: (arguments, setup(cwd), substrings the error line must hold)
# `pobench run` cases pay ~2 s each for importing torch, so the rest of the data and config checks go through
# `pobench data` (no torch), which reads the same files through the same code (and test_config/test_data cover
# the messages in-process).
CASES = {
    "unknown_algorithm": (RUN + ["--algo", "dpo,nope"], None, ["unknown algorithm 'nope'", "dpo", "simpo"]),
    "unknown_suite": (RUN + ["--suite", "nope"], None, ["unknown suite 'nope'", "hh-rlhf", "ultrafeedback"]),
    # `run --resume` alone planned the default runs and trained them from scratch beside the interrupted one
    "resume_with_no_planned_run_to_resume": (RUN + ["--resume", "--algo", "simpo"], _setup_interrupted_plugin_run, [
        "--resume: none of the planned runs (simpo on hh-rlhf, seeds 1) has a folder under out",
        "out/synthetic/dpo_hardneg/seed1 (started by `pobench run --suite synthetic --algo dpo_hardneg --plugin "
        "hardneg.py --out out`)", "drop --resume"]),
    # bare `run --resume` when every run under --out is finished started the default runs from scratch
    "resume_with_every_run_finished": (RUN + ["--resume"], _setup_finished_run, [
        "--resume: nothing to resume under out: its 1 run(s) are finished (out/ultrafeedback/mcpo/seed1)",
        "the default runs (dpo, simpo on hh-rlhf, seeds 1) were never started", "--algo"]),
    # ... while naming the runs keeps `--resume` usable as "start or continue" (this one stops at the model)
    "resume_naming_new_runs_beside_finished_ones": (RUN + ["--resume", "--algo", "dpo"], _setup_finished_run,
                                                    ["no-such-model"]),
    "resume_a_plugin_run_without_its_plugin": (RUN + ["--resume", "--algo", "dpo_hardneg", "--suite", "synthetic"],
                                               _setup_interrupted_plugin_run, [
        "unknown algorithm 'dpo_hardneg'", "started with --plugin hardneg.py: pass it again"]),
    "bad_set_key": (RUN + ["--set", "train.lrr=1e-6"], None, ["unknown config key 'train.lrr'"]),
    "bad_set_type": (RUN + ["--set", "train.lr=fast"], None, ["config key 'train.lr'", "expected a number", "fast"]),
    "missing_config": (RUN + ["--config", "missing.yaml"], None, ["missing.yaml: no such file"]),
    "bad_yaml_config": (RUN + ["--config", "bad.yaml"],
                        lambda d: (d / "bad.yaml").write_text("train:\n  lr: 1e-6\n  batch_size: [4,\n"),
                        ["bad.yaml:4: bad YAML"]),
    "data_missing_file": (RUN + ["--data", "missing.jsonl"], None, ["missing.jsonl: no such file or folder"]),
    "data_bad_json_line": (RUN + ["--data", "rows.jsonl"],
                           lambda d: _lines(d / "rows.jsonl", _hh_rows(2) + ['{"chosen": "x",'] + _hh_rows(1)),
                           ["rows.jsonl:3: bad JSON line"]),
    "bad_seeds": (RUN + ["--seeds", "a,b"], None, ["--seeds a,b", "integers"]),
    "negative_seed": (RUN + ["--seeds=-1"], None, ["config key 'seed'", "between 0 and 2**32 - 1", "-1"]),
    "seed_in_set": (RUN + ["--set", "seed=5"], None, ["--set: 'seed' is chosen with --seeds"]),
    "adam_beta_1": (RUN + ["--set", "train.adam_beta2=1.0"], None, ["config key 'train.adam_beta2'", "in [0, 1)"]),
    "judge_typo_before_training": (RUN[:-1] + ["--set", "eval.judge=bogus"], None, ["eval.judge 'bogus'"]),
    "judge_rm_missing": (RUN[:-1] + ["--set", "eval.judge=rm:/nonexistent/rm"], None,
                         ["config key 'eval.judge': rm:/nonexistent/rm: no such reward-model folder"]),
    # an rm: judge failed only after the training ('unknown reward model', 'cannot load', 'has 2 labels') while the
    # same mistakes in pool.reward_model were refused up front: one check for both now
    "judge_rm_typo": (RUN[:-1] + ["--set", "eval.judge=rm:rm_hhh"], None,
                      ["config key 'eval.judge': rm:rm_hhh: no such reward-model folder in", "not a hub id"]),
    "judge_rm_hub_id_offline": (RUN[:-1] + ["--set", "eval.judge=rm:myorg/my-rm"], None,
                                ["config key 'eval.judge': rm:myorg/my-rm: not in the local hub cache",
                                 "the hub cannot be reached"]),
    "judge_rm_causal_lm": (RUN[:-1] + ["--set", "eval.judge=rm:lm"], lambda d: _causal_lm_config(d / "lm"),
                           ["config key 'eval.judge': rm:/", "/lm: its config.json names LlamaForCausalLM, not a "
                            "sequence classifier"]),   # (absolute: the run's config names it so)
    "pool_rm_causal_lm": (RUN + ["--set", "pool.reward_model=lm"], lambda d: _causal_lm_config(d / "lm"),
                          ["config key 'pool.reward_model': /", "/lm: its config.json names LlamaForCausalLM"]),
    # suites/myuf.yaml's runs and other/myuf.yaml's (other data) went into one results/myuf/ folder
    "suite_file_of_another_suite": (RUN + ["--suite", "mine/hh.yaml", "--algo", "dpo", "--seeds", "2"],
                                    _setup_runs_of_another_suite_file,
                                    ["out/hh: holds runs of the suite file /elsewhere/hh.yaml", "--suite mine/hh.yaml",
                                     "with other content", "choose another --out"]),
    "judge_gold_of_another_suite": (RUN[:-1] + ["--set", "eval.judge=gold:synthetic"], None,
                                    ["gold:synthetic scores the synthetic suite's token language", "hh-rlhf"]),
    "openai_judge_without_credentials": (RUN[:-1] + ["--set", "eval.judge=alpaca_eval:weighted_alpaca_eval_gpt4_turbo"],
                                         None, ["alpaca_eval:weighted_alpaca_eval_gpt4_turbo calls OpenAI",
                                                "set OPENAI_API_KEY, OPENAI_API_KEYS or OPENAI_CLIENT_CONFIG_PATH first"]),
    "eval_file_missing": (ALPACA + ["--set", "eval.eval_file=/no/such.json"],
                          None, ["config key 'eval.eval_file': /no/such.json: no such file"]),
    # the alpaca_eval set's settings that failed only after the training, once the answers were generated
    "alpaca_set_with_the_auto_judge": (RUN[:-1] + ["--set", "eval.eval_set=alpaca_eval", "--set",
                                                   f"eval.eval_file={FIXTURES / 'alpaca_eval_sample.json'}"], None,
                                       ["eval.judge auto trains on the suite's pairs", "eval.eval_set held_out"]),
    "alpaca_reference_on_held_out": (RUN[:-1] + ["--set", "eval.reference=alpaca_eval"], None,
                                     ["eval.reference alpaca_eval needs eval.eval_set alpaca_eval"]),
    "alpaca_set_offline_without_a_file": (ALPACA, None, ["config key 'eval.eval_file': none given",
                                                         "hub", "not reachable", "--eval-file"]),
    "eval_file_bad_json": (ALPACA + ["--set", "eval.eval_file=bad.json"],
                           lambda d: (d / "bad.json").write_text('[{"instruction": "a",\n'), ["bad.json:1: bad JSON"]),
    "eval_file_not_utf8": (ALPACA + ["--set", "eval.eval_file=latin.json"],
                           lambda d: (d / "latin.json").write_bytes('[{"instruction": "caf\u00e9"}]'.encode("latin-1")),
                           ["latin.json: not UTF-8 text"]),
    "eval_file_without_the_reference_outputs": (
        ALPACA + ["--set", "eval.eval_file=no_output.json", "--set", "eval.reference=alpaca_eval"],
        lambda d: (d / "no_output.json").write_text(json.dumps([{"instruction": "a", "output": "x"}, {"instruction": "b"}])),
        # (absolute: a config holds its local paths so, pobench/paths.py)
        ["config key 'eval.eval_file': /", "/no_output.json: row 2 has no 'output'", "eval.reference alpaca_eval"]),
    # the reference policy answers every instruction itself: the file's outputs are not needed
    "eval_file_without_outputs_read_for_sft": (ALPACA + ["--set", "eval.eval_file=no_output.json"],
                                               lambda d: (d / "no_output.json").write_text(json.dumps([{"instruction": "b"}])),
                                               ["no-such-model"]),
    # a difficulty file is read for alpaca_eval's set only: with the held-out set, a missing one is not refused
    # (the run then fails on the missing model, as every case here does)
    "lc_file_without_a_column": (ALPACA + ["--set", f"eval.eval_file={FIXTURES / 'alpaca_eval_sample.json'}", "--set",
                                           "eval.lc_difficulty_file=gamed.csv"],
                                 lambda d: (d / "gamed.csv").write_text("index,preference\n0,0.5\n"),
                                 ["eval.lc_difficulty_file /", "/gamed.csv: no column 'instruction_difficulty'"]),
    "lc_file_unread_by_held_out": (RUN[:-1] + ["--set", "eval.lc_difficulty_file=/no/such.csv"], None,
                                   ["no-such-model"]),
    "batch_larger_than_the_data": (RUN + ["--set", "data.max_train_records=40", "--set", "train.batch_size=1e10"],
                                   None, ["config key 'train.batch_size': 10000000000 records per step",
                                          "more than the 40 training records"]),
    # one pass over 16 records trains on the whole second half, which the default judge trains on: refused before
    # training (it failed at evaluation, after the budget was spent, and the command's later runs were dropped)
    "auto_judge_without_records": (["run", "--out", "out", "--model", "no-such-model", "--max-steps", "0", "--set",
                                    "data.max_train_records=16"], None,
                                   ["eval.judge auto:", "train on every one of the 8 records the judge would train on"]),
    "not_a_device": (RUN + ["--set", "model.device=banana"], None, ["config key 'model.device'", "'banana'"]),
    "mcpo_dataset_pool_without_pools": (RUN + ["--algo", "dpo,mcpo", "--set", "pool.source=dataset"], None,
                                        ["mcpo: pool.source=dataset", "harmless-base-test-2000.jsonl.gz carries no "
                                         "candidate pools"]),
    "existing_run_folder": (RUN + ["--algo", "dpo", "--suite", "hh-rlhf"], _setup_existing_run,
                            [str(Path("out") / "hh-rlhf" / "dpo" / "seed1"), "already holds a run", "--resume"]),
    # `pobench data`: the same data and config checks, without importing torch
    "data_cmd_bad_json_line": (["data", "hh-rlhf", "--data", "rows.jsonl"],
                               lambda d: _lines(d / "rows.jsonl", _hh_rows(1) + ["{oops"]),
                               ["rows.jsonl:2: bad JSON line"]),
    "data_cmd_truncated_gzip": (["data", "hh-rlhf", "--data", "cut.jsonl.gz"], _setup_truncated_gzip,
                                ["cut.jsonl.gz: unreadable gzip"]),
    "data_cmd_non_utf8": (["data", "hh-rlhf", "--data", "latin.jsonl"],
                          lambda d: _lines(d / "latin.jsonl", _hh_rows(1) + [b'{"chosen": "caf\xe9", "rejected": "x"}']),
                          ["latin.jsonl:2: not UTF-8"]),
    "data_cmd_bad_set_yaml": (["data", "hh-rlhf", "--set", "data.eval_size=[1,"], None,
                              ["--set data.eval_size=[1,", "bad value for 'data.eval_size'"]),
    "data_cmd_missing_folder": (["data", "hh-rlhf", "--data", "./nothing/here"], None,
                                ["nothing/here: no such file or folder"]),
    "data_cmd_missing_key": (["data", "hh-rlhf", "--data", "rows.jsonl"],
                             lambda d: _lines(d / "rows.jsonl", _hh_rows(1) + [json.dumps({"chosen": GOOD["chosen"]})]),
                             ["rows.jsonl:2: missing key 'rejected'"]),
    "data_cmd_missing_key_after_a_bad_transcript": (["data", "hh-rlhf", "--data", "rows.jsonl"],
                                                    lambda d: _lines(d / "rows.jsonl", _hh_rows(1) + [json.dumps({"chosen": "x"})]),
                                                    ["rows.jsonl:2: missing key 'rejected'"]),
    "data_cmd_not_an_object": (["data", "hh-rlhf", "--data", "rows.jsonl"],
                               lambda d: _lines(d / "rows.jsonl", _hh_rows(3) + ["[1, 2]"]),
                               ["rows.jsonl:4: a row must be a JSON object"]),
    "data_cmd_wrong_type": (["data", "ultrafeedback", "--data", "rows.jsonl"],
                            lambda d: _lines(d / "rows.jsonl", [json.dumps({"prompt": "p", "chosen": [], "rejected": []}),
                                                                json.dumps({"prompt": "p", "chosen": "x", "rejected": []})]),
                            ["rows.jsonl:2: malformed row for schema ultrafeedback-binarized"]),
    "data_cmd_lone_surrogate": (["data", "hh-rlhf", "--data", "rows.jsonl"],
                                lambda d: _lines(d / "rows.jsonl", _hh_rows(2) + [json.dumps(
                                    {"chosen": GOOD["chosen"] + "\ud800", "rejected": GOOD["rejected"]})]),
                                ["rows.jsonl:3: text with a lone UTF-16 surrogate"]),
    "data_cmd_empty_file": (["data", "hh-rlhf", "--data", "empty.jsonl"], lambda d: (d / "empty.jsonl").write_text(""),
                            ["empty.jsonl: no rows"]),
    "data_cmd_too_few_rows": (["data", "hh-rlhf", "--data", "rows.jsonl"], lambda d: _lines(d / "rows.jsonl", _hh_rows(5)),
                              ["rows.jsonl: 5 records, too few to hold out data.eval_size=32"]),
    "data_cmd_bad_set_type": (["data", "hh-rlhf", "--set", "data.eval_size=many"], None,
                              ["config key 'data.eval_size'", "many"]),
    "data_cmd_bad_choice": (["data", "hh-rlhf", "--set", "data.raw_rejected=wrost"], None,
                            ["config key 'data.raw_rejected'", "wrost"]),
    "data_cmd_bad_split": (["data", "hh-rlhf", "--split", "dev"], None, ["--split dev: choose train or eval"]),
    "data_cmd_unknown_suite": (["data", "nope"], None, ["unknown suite 'nope'"]),
    # a name with a folder in it, or ending .yaml, is a path: "unknown suite 'bad/nosuch.yaml' (known: hh-rlhf, ...)"
    "data_cmd_missing_suite_file": (["data", "bad/nosuch.yaml"], None, ["error: bad/nosuch.yaml: no such suite file"]),
    # a suite file without data.path: "data.path sample: this suite ships no sample", a value nobody wrote
    "data_cmd_suite_without_data_path": (["data", "mine.yaml"], lambda d: (d / "mine.yaml").write_text(
        "data:\n  schema: hh\n"), ["data.path auto: the suite names neither a hub dataset (data.hub_id) nor a "
                                   "shipped sample",
                                   "set data.path in the suite file's data: section, or pass --data"]),
    # which layer a bad key is in: the suite file, --set
    "data_cmd_suite_key_typo": (["data", "mine.yaml"], lambda d: (d / "mine.yaml").write_text(
        "data:\n  path: x.jsonl\ntrain:\n  max_completon_length: 3\n"),
                                ["unknown config key 'train.max_completon_length' in mine.yaml (known: "]),
    "data_cmd_set_key_typo": (["data", "hh-rlhf", "--set", "train.max_completon_length=3"], None,
                              ["unknown config key 'train.max_completon_length' in --set (known: "]),
    "data_cmd_suite_algorithm_section": (["data", "mine.yaml"], lambda d: (d / "mine.yaml").write_text(
        "data:\n  path: x.jsonl\nalgorithm:\n  beta: 0.3\n"),
                                         ["mine.yaml: 'algorithm' does not go in a suite file", "--set dpo.beta=0.2"]),
    "data_cmd_wrong_schema": (["data", "hh-rlhf", "--set", "data.schema=ultrafeedback-binarized"], None,
                              ["harmless-base-test-2000.jsonl.gz:1: malformed row for schema ultrafeedback-binarized"]),
}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Run every case at once; name -> (result, cwd, files under out/ before the run)."""
    root = tmp_path_factory.mktemp("cli")
    prepared = {}
    for name, (args, setup, _) in CASES.items():
        cwd = root / name
        cwd.mkdir()
        if setup:
            setup(cwd)
        prepared[name] = (args, cwd, _files(cwd / "out") if (cwd / "out").exists() else {})
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(pobench, args, cwd) for name, (args, cwd, _) in prepared.items()}
        return {name: (futures[name].result(), prepared[name][1], prepared[name][2]) for name in CASES}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_usage_exits_2_with_one_line(outcomes, name):
    result, cwd, before = outcomes[name]
    expected = CASES[name][2]
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output and "internal error" not in output, output
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.stderr
    line = error_lines[0]
    for text in expected:
        assert text in line, f"{text!r} not in {line!r}"
    # the reason is the last thing printed, on its own line (no wrapping at 80 columns)
    assert result.stderr.rstrip().splitlines()[-1] == line
    assert not result.stdout.strip(), result.stdout
    # nothing written under --out (an existing folder is left exactly as it was)
    out = cwd / "out"
    assert (_files(out) if out.exists() else {}) == before


def test_existing_run_folder_is_unchanged(outcomes):
    result, cwd, before = outcomes["existing_run_folder"]
    config = cwd / "out" / "hh-rlhf" / "dpo" / "seed1" / "config.yaml"
    assert config.read_text() == "# an earlier run\nseed: 1\n"
    assert list(before) == [str(Path("hh-rlhf") / "dpo" / "seed1" / "config.yaml")]


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: chmod 0o500 does not stop root from writing")
@pytest.mark.parametrize("out", ["locked", "locked/results"])
def test_unwritable_out(tmp_path, out):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = pobench(["run", "--out", out, "--model", "no-such-model", "--max-steps", "1", "--no-eval"], tmp_path)
    finally:
        locked.chmod(0o700)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "locked" in error_lines[0], result.stderr
    assert not any(locked.rglob("*"))


@pytest.mark.parametrize("out", ["taken", "taken/results"])
def test_out_that_cannot_be_a_folder(tmp_path, out):
    """What root (CI) can test of an unusable --out: a path that is, or runs through, an existing file."""
    (tmp_path / "taken").write_text("not a folder\n")
    result = pobench(["run", "--out", out, "--model", "no-such-model", "--max-steps", "1", "--no-eval"], tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and f"{out}: cannot create the results folder" in error_lines[0], result.stderr
    assert (tmp_path / "taken").read_text() == "not a folder\n"


@pytest.mark.parametrize("args, text", [(["run", "--nope"], "No such option: --nope"),
                                        (["run", "--max-steps", "many"], "--max-steps"),
                                        (["frobnicate"], "frobnicate")])
def test_click_usage_errors_exit_2(tmp_path, args, text):
    result = pobench(args, tmp_path)
    assert "Traceback" not in result.stdout + result.stderr
    assert "internal error" not in result.stderr
    assert result.returncode == 2
    assert text in result.stderr


def test_help_shows_boolean_options_as_flags():
    """typer 0.29's rich help printed a type column for every option, flags included: `--resume <bool>`, `--help
    <bool>`, `--disjoint --no-disjoint <bool>`, as though they took a value."""
    from typer.testing import CliRunner

    from pobench.cli import app
    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    for args in [["--help"]] + [[name, "--help"] for name in commands]:
        result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert "<bool>" not in result.output, " ".join(args)
        assert "--help" in result.output
    run_help = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
    assert "--resume " in run_help and "--no-eval " in run_help and "--max-steps <int>" in run_help
    assert "--disjoint / --no-disjoint " in CliRunner().invoke(app, ["train-rm", "--help"],
                                                               env={"COLUMNS": "200"}).output


@pytest.mark.parametrize("name", ["rows[v2].jsonl", "rows[/].jsonl"])
def test_error_message_keeps_brackets(tmp_path, name):
    result = pobench(["data", "hh-rlhf", "--data", name], tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"error: {tmp_path / name}: no such file or folder" in result.stderr   # (read from the current folder)


def _parquet(path: Path, rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    text = pa.array([GOOD["chosen"]] * rows, pa.string())
    pq.write_table(pa.table({"chosen": text, "rejected": text}), path)


@pytest.mark.parametrize("name, setup, error", [
    ("empty.parquet", lambda p: p.write_bytes(b""), "empty.parquet: cannot read (ArrowInvalid: Parquet file size is 0 bytes)"),
    ("no_rows.parquet", lambda p: _parquet(p, 0), "no_rows.parquet: no rows"),
])
def test_a_parquet_file_that_cannot_be_read_is_one_line(tmp_path, name, setup, error):
    """datasets logged its own "Failed to read schema ..." line above pobench's error, and a parquet file without
    rows was "cannot read (ValueError: Instruction "train" corresponds to no data!)" where a jsonl one is "no rows"."""
    setup(tmp_path / name)
    result = pobench(["data", "hh-rlhf", "--data", name], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path}/{error}"]


def test_data_head_json(tmp_path):
    result = pobench(["data", "hh-rlhf", "--json", "--head", "3"], tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    for rec in records:
        assert {"prompt", "chosen", "rejected", "candidates", "scores"} <= set(rec)
        assert rec["prompt"][-1]["role"] == "user" and rec["chosen"] and rec["rejected"]
        assert rec["candidates"] == [] and rec["scores"] is None
    assert records[0]["id"] == "harmless-base-test-2000.jsonl.gz:1"
    assert not (tmp_path / "results").exists()


def test_data_head_says_how_many_it_shows_of_how_many(tmp_path):
    """`pobench data --head 2` ended with "2 records": the number shown, read as the split's size (and "1 records")."""
    result = pobench(["data", "hh-rlhf", "--head", "1"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("showing 1 of 1960 training records (")
    result = pobench(["data", "hh-rlhf", "--split", "eval", "--head", "40"], tmp_path)   # all of them
    assert result.stderr.strip().splitlines()[-1].startswith("32 held-out records (")


def test_data_json_from_a_local_file_with_a_candidate_pool(tmp_path):
    fixture = Path(__file__).parent / "fixtures" / "ultrafeedback-raw.jsonl"
    rows = [json.loads(line) for line in fixture.read_text().splitlines()]
    copies = [{**row, "instruction": f"{row['instruction']} ({k})"} for k in range(3) for row in rows]  # no copies
    (tmp_path / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in copies))  # 12 rows, 6 records
    result = pobench(["data", "ultrafeedback", "--data", "raw.jsonl", "--json", "--set", "data.eval_size=2"], tmp_path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 4                                               # 6 records, the last 2 held out
    assert all(len(r["candidates"]) == len(r["scores"]) == 4 for r in records)
    assert "skipped rows: {'all_scores_tied': 3, 'nan_score': 3}" in result.stderr


def test_list_json_names_every_registry(tmp_path):
    """`pobench list --json`: the algorithms with their samplers and defaults, the suites, samplers, generation
    backends, reward models and judges (the synthetic suite's gold reward among them, without loading the suite)."""
    result = pobench(["list", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    algos = {a["name"]: a for a in listed["algorithms"]}
    assert {"dpo", "simpo", "rso", "mcpo", "onmcpo", "online_dpo"} <= set(algos)
    assert algos["mcpo"]["defaults"]["tau"] == 1.0
    assert {s["name"] for s in listed["suites"]} >= {"hh-rlhf", "ultrafeedback", "synthetic"}
    assert {"transformers", "vllm"} <= {b["name"] for b in listed["generation_backends"]}
    assert "gold:synthetic" in listed["judges"] and "gold:synthetic" in listed["reward_models"]
    assert {s["name"] for s in listed["samplers"]} >= {"dataset_pair", "mc_kernel", "rso", "online_pool"}


def test_list_says_what_each_algorithm_is_in_a_whole_sentence():
    """The table's "about" was the docstring's first source line, cut mid-sentence ("... DPO on a negative drawn")."""
    from pobench.cli import _first_sentence
    from pobench.registry import ALGORITHMS, discover
    discover()
    about = _first_sentence(sys.modules[ALGORITHMS["mcpo"].__module__].__doc__)
    assert about.startswith("MC-PO (Chen et al. 2025") and about.endswith("that favours candidates the current "
                                                                         "policy rates highly.")
    assert _first_sentence("SimPO (Meng et al. 2024): reference-free,\nwith a margin. More here.\n\nDetails.") == \
        "SimPO (Meng et al. 2024): reference-free, with a margin."


def test_deepspeeds_cpu_notice_is_dropped_and_its_other_messages_kept():
    """Every command printed DeepSpeed's "[WARNING] [real_accelerator.py:...] Setting accelerator to CPU ..." to stdout
    on a machine without CUDA: accelerate imports DeepSpeed where it is installed (Accelerator.unwrap_model does, to
    ask whether the model is a DeepSpeed engine), and DeepSpeed's import logs it."""
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("DeepSpeed is not installed")
    code = ("import logging, sys; from pobench.cli import _quiet_deepspeed_cpu_notice; {}import deepspeed; "
            "logging.getLogger('DeepSpeed').warning('a real DeepSpeed warning')")
    env = {**_env(), "CUDA_VISIBLE_DEVICES": ""}
    out = {quiet: subprocess.run([sys.executable, "-c", code.format("_quiet_deepspeed_cpu_notice(); " if quiet else "")],
                                 capture_output=True, text=True, env=env, timeout=120) for quiet in (False, True)}
    assert "Setting accelerator to CPU" in out[False].stdout + out[False].stderr   # what it printed
    assert "Setting accelerator to CPU" not in out[True].stdout + out[True].stderr
    assert "a real DeepSpeed warning" in out[True].stdout


def test_ctrl_c_exits_130_with_the_resume_hint(monkeypatch, capsys):
    """Typer, run without standalone mode, returns Ctrl-C as the exit code 130 instead of raising it: the code was
    dropped, so an interrupted `pobench run ... && pobench report` carried on as if the run had finished."""
    import pobench.registry
    from pobench import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pobench.registry, "discover", interrupted)
    monkeypatch.setattr(sys, "argv", ["pobench", "list"])
    with pytest.raises(SystemExit) as exit_:
        cli._run_app()
    assert exit_.value.code == 130
    assert "interrupted; rerun with --resume" in capsys.readouterr().err


@pytest.mark.parametrize("error", [RuntimeError("an error pobench did not foresee"), ValueError("bad")])
def test_a_run_that_fails_before_its_first_step_leaves_no_half_run(tmp_path, error):
    """Only PobenchError cleaned up: any other error left config.yaml, data.json and env.json, and the next run was
    refused as 'already holds a run'. A run with metrics keeps everything."""
    from pobench.cli import _discard_if_unstarted
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with pytest.raises(type(error)), _discard_if_unstarted(fresh):
        (fresh / "config.yaml").write_text("seed: 1\n")
        raise error
    assert not any(fresh.iterdir())
    started = tmp_path / "started"
    started.mkdir()
    with pytest.raises(type(error)), _discard_if_unstarted(started):
        (started / "config.yaml").write_text("seed: 1\n")
        (started / "metrics.jsonl").write_text('{"step": 1}\n')
        raise error
    assert sorted(p.name for p in started.iterdir()) == ["config.yaml", "metrics.jsonl"]


def test_a_run_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    """An unwritable run folder (as another user's, where the results root itself is writable) was an internal
    error with exit 1. Root writes anywhere, so the refusal is simulated where the lock is taken."""
    import pobench.engine.lock
    from pobench.cli import _lock_run_folders
    from pobench.errors import PobenchError

    def refused(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(pobench.engine.lock.RunLock, "acquire", refused)
    run_dir = tmp_path / "hh-rlhf" / "dpo" / "seed1"
    with pytest.raises(PobenchError, match="seed1: cannot write the run folder \\(Permission denied\\)"):
        _lock_run_folders([(None, None, run_dir, False)], resume=False)
    assert not run_dir.exists()   # the folder it made is removed again
