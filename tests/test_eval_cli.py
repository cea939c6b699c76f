"""`pobench run` ends with eval.json in the evaluation contract; `pobench eval` re-judges a run folder with other
judges, references and eval sets (tiny random model: the numbers mean nothing, the contract and the plumbing do)."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pobench.errors import PobenchError

FIXTURES = Path(__file__).parent / "fixtures"
CONTRACT = {"eval_set": str, "n_prompts": int, "decoding": dict, "reference": dict, "judge": dict,
            "win_rate": float, "win_rate_se": float, "win_rate_ci95": list, "lc_method": str, "avg_length": float,
            "reference_avg_length": float, "held_out": dict, "versions": dict}
ROW_KEYS = {"prompt", "output", "reference_output", "preference", "scores", "policy_first", "judge"}
EVAL_SETTINGS = ["--set", "eval.num_prompts=4", "--set", "eval.max_new_tokens=8", "--set", "eval.judge_rm_steps=1"]


def check_contract(result: dict, n: int) -> None:
    for key, kind in CONTRACT.items():
        assert isinstance(result[key], kind), key
    assert result["n_prompts"] == n and 0 <= result["win_rate"] <= 1
    lo, hi = result["win_rate_ci95"]
    assert lo <= result["win_rate"] <= hi
    assert result["judge"]["kind"] in ("reward_model", "llm", "gold") and result["judge"]["name"]
    assert result["reference"]["kind"] in ("sft", "dataset", "alpaca_eval")
    assert result["lc_win_rate"] is None or 0 <= result["lc_win_rate"] <= 1
    assert "torch" in result["versions"] and result["decoding"]["max_new_tokens"] > 0


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (run_dir / "generations.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    """`pobench run` of DPO and SimPO on the tiny model, evaluated at the end with the default judge (auto: a MiniLM
    reward model trained, 2 steps here, on training pairs the run did not use); the DPO run folder."""
    out = tmp_path_factory.mktemp("eval-cli") / "results"
    cmd = [sys.executable, "-m", "pobench.cli", "run", "--algo", "dpo,simpo", "--model", str(tiny_model_dir), "--data",
           "sample", "--max-steps", "2", "--out", str(out), "--set", "data.max_train_records=16", "--set",
           "data.eval_size=4", "--set", "train.lr=1e-2", *EVAL_SETTINGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "against dpo: hh-rlhf" in proc.stdout   # the run ends with the paired comparison
    return out / "hh-rlhf" / "dpo" / "seed1"


def test_run_ends_with_eval_json_in_the_contract(finished_run):
    result = json.loads((finished_run / "eval.json").read_text())
    check_contract(result, 4)
    assert result["eval_set"] == "held_out" and result["reference"]["kind"] == "sft"
    assert result["held_out"]["pairs"] == 4 and "eval/rewards/accuracies" in result["held_out"]["final"]
    assert "eval/rewards/accuracies" in result["held_out"]["initial"]
    judge = result["judge"]
    assert judge["kind"] == "reward_model" and judge["spec"] == "auto" and judge["disjoint_from_policy_pairs"]
    assert judge["name"].startswith("auto:judges/hh-rlhf-minilm-")   # its place in the cache, not a path
    assert isinstance(judge["held_out_accuracy"], float)
    assert result["kl"] is not None and result["reward_mean"] is not None
    assert result["lc_method"] == "length_only_glm"
    got = rows(finished_run)
    assert len(got) == 4 and all(ROW_KEYS <= set(r) for r in got)
    assert result["identical_to_reference"] == sum(r["output"] == r["reference_output"] for r in got)
    assert result["policy_first_share"] == sum(r["policy_first"] for r in got) / len(got)
    for r in got:   # the reward-model judge: P(policy wins) = sigmoid of the score difference
        assert r["preference"] == pytest.approx(1 / (1 + math.exp(r["scores"]["reference"] - r["scores"]["policy"])))
    # the reference outputs are cached once for the suite, shared by every run: DPO's and SimPO's evaluations
    # generated the 4 prompts' answers once (the second read them back)
    store = Path(result["reference"]["store"])
    assert store.is_file() and ".cache" in str(store)
    assert len(store.read_text().splitlines()) == 4
    # how the answers were computed: eval.batch_size 0 (auto) took all 4 prompts in one forward, on the CPU, by the
    # plain path
    assert result["decoding"]["batch_size"] == 0 and result["decoding"]["batch_size_used"] == [4]
    assert result["decoding"]["decoder"] == "plain" and result["versions"]["device"] == "cpu"


def test_report_pairs_simpo_with_dpo_prompt_by_prompt(finished_run):
    """The two runs of seed 1 share eval prompts, reference outputs and judge, so the report pairs them on every
    prompt and finds nothing unlike; its per-prompt difference is recomputed here from the two generations files."""
    from pobench.report.build import build_report
    results = finished_run.parents[2]
    simpo = results / "hh-rlhf" / "simpo" / "seed1"
    report, _, _ = build_report(results)
    row = report["suites"][0]["versus"]["rows"][0]
    assert report["suites"][0]["versus"]["baseline"] == "dpo" and row["algo"] == "simpo" and row["seeds"] == [1]
    assert row["unlike_baseline"] == [] and row["unpaired_seeds"] == []
    mine, base = rows(simpo), rows(finished_run)
    assert [r["reference_output"] for r in mine] == [r["reference_output"] for r in base]
    diffs = [a["preference"] - b["preference"] for a, b in zip(mine, base)]
    paired = row["prompt_paired"]
    assert paired["prompts"] == 4 and paired["difference"]["mean"] == pytest.approx(sum(diffs) / 4)
    assert (paired["better"], paired["tied"], paired["worse"]) == (sum(d > 0 for d in diffs), sum(d == 0 for d in diffs),
                                                                   sum(d < 0 for d in diffs))
    ev = {name: json.loads((d / "eval.json").read_text()) for name, d in (("simpo", simpo), ("dpo", finished_run))}
    assert row["delta"]["win_rate"]["mean"] == pytest.approx(ev["simpo"]["win_rate"] - ev["dpo"]["win_rate"])


def test_auto_judge_never_trained_on_the_runs_pairs(finished_run):
    """Replay the run's data order: the judge's training records are the second half minus those."""
    import yaml

    from pobench import config as C
    from pobench.data import load_suite_data
    from pobench.engine.trainer import data_order
    cfg = C._build(C.RunConfig, {k: v for k, v in yaml.safe_load((finished_run / "config.yaml").read_text()).items()
                                 if k != "algorithm"}, "")
    data = load_suite_data(cfg.data, cfg.seed)
    used = set(data_order(len(data.train), cfg.seed, 2, cfg.train.batch_size))
    half = len(data.train) // 2
    judge = json.loads((finished_run / "eval.json").read_text())["judge"]
    assert judge["scorer"]["rm_info"]["train_pairs"] == len(set(range(half, len(data.train))) - used)
    assert used & set(range(half, len(data.train)))   # the exclusion mattered in this run


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the finished run, so that re-evaluating it leaves the fixture's eval.json alone."""
    import shutil
    target = tmp_path / "results" / "hh-rlhf" / "dpo" / "seed1"
    shutil.copytree(run_dir, target)
    return target


def test_eval_again_with_a_gold_judge_and_the_dataset_reference(finished_run, tmp_path):
    import test_eval_judges  # noqa: F401  registers gold:test-eval-length in this process

    from pobench.cli import app
    finished_run = copy_run(finished_run, tmp_path)
    r = CliRunner().invoke(app, ["eval", str(finished_run), "--judge", "gold:test-eval-length", "--reference",
                                 "dataset", "--num-prompts", "3", "--set", "eval.judge_check_pairs=4", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output.strip().splitlines()[-1])
    check_contract(result, 3)
    assert result["judge"] == {**result["judge"], "name": "gold:test-eval-length", "kind": "gold"}
    assert result["reference"]["kind"] == "dataset" and result["held_out"]["pairs"] == 4
    # what this evaluation resolved, options included, for compare and report (config.yaml keeps the run's settings)
    assert {k: result["eval_config"][k] for k in ("judge", "reference", "num_prompts")} == \
        {"judge": "gold:test-eval-length", "reference": "dataset", "num_prompts": 3}
    from pobench.eval.runner import load_run_config as evaluated_config
    assert evaluated_config(finished_run, as_evaluated=True).eval.judge == "gold:test-eval-length"
    assert evaluated_config(finished_run).eval.judge == "auto"
    got = rows(finished_run)
    assert len(got) == 3
    for r in got:
        assert r["scores"]["policy"] == pytest.approx(len(r["output"]) / 10)
        assert r["judge"] == "gold:test-eval-length"
    assert result["reward_mean"] == pytest.approx(sum(len(r["output"]) for r in got) / 30)
    from pobench.eval.runner import eval_items, load_run_config
    held_out, _, data = eval_items(load_run_config(finished_run))
    assert [r["reference_output"] for r in got] == [it.reference_output for it in held_out[:3]]   # the chosen answers
    # the judge's own check on 4 held-out pairs: the length judge agrees where the chosen answer is the longer one
    want = [1.0 if len(r.chosen) > len(r.rejected) else 0.5 if len(r.chosen) == len(r.rejected) else 0.0
            for r in data.eval[:4]]
    assert result["judge"]["held_out_agreement"]["agreement"] == pytest.approx(sum(want) / 4)
    assert result["judge"]["held_out_agreement"]["pairs"] == 4


def test_an_rm_judges_held_out_accuracy_is_measured_on_the_runs_own_pairs(finished_run, tmp_path):
    """rm:rm_uf (trained on suite myuf) judging suite myhh reported rm_info.json's accuracy on myuf's pairs as its
    held-out pair accuracy. On the held-out set it is measured on the run's own held-out pairs, and says so; the
    judge's identity names what stands behind its folder."""
    from conftest import build_tiny_reward_model
    from pobench.cli import app
    from pobench.eval.runner import eval_items, load_run_config
    from pobench.rewards import get_scorer
    rm = build_tiny_reward_model(tmp_path / "rm_uf", rm_info={
        "suite": "myuf", "eval_source": "uf.jsonl (last 8 records)", "eval_pairs": 8, "eval_accuracy_after": 0.123,
        "max_length": 64})
    run = copy_run(finished_run, tmp_path)
    r = CliRunner().invoke(app, ["eval", str(run), "--judge", f"rm:{rm}", "--num-prompts", "2", "--json"])
    assert r.exit_code == 0, r.output
    judge = json.loads(r.output.strip().splitlines()[-1])["judge"]
    _, source, data = eval_items(load_run_config(run))
    scorer = get_scorer(str(rm))
    chosen = scorer.score([p.prompt for p in data.eval], [p.chosen for p in data.eval])
    rejected = scorer.score([p.prompt for p in data.eval], [p.rejected for p in data.eval])
    want = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(chosen, rejected)) / len(data.eval)
    assert judge["held_out_accuracy"] == pytest.approx(want) and judge["scorer"]["rm_info"]["eval_accuracy_after"] == 0.123
    assert judge["held_out_accuracy_on"] == {"suite": "hh-rlhf", "source": source, "pairs": len(data.eval),
                                             "measured_by": "pobench eval", "run_held_out": True}
    assert set(judge["identity"]) == {"rm_info"}


def test_a_failed_evaluation_keeps_the_training_and_resume_may_change_the_eval_settings(tmp_path, tiny_model_dir,
                                                                                        monkeypatch):
    """A judge that failed after the training stopped the command (the next algorithm never trained), and a --resume
    with the judge corrected was refused: 'with other settings than the run's (eval.judge ...)'. Evaluation settings
    do not touch the training: the error says how to evaluate the trained run, and --resume may change them for a
    run not evaluated yet; for one evaluated already, which --resume skips, it says to evaluate it again."""
    import shutil

    import test_eval_judges  # noqa: F401  registers gold:test-eval-length in this process

    import pobench.eval.runner as R
    from pobench.cli import app
    from pobench.config import read_yaml
    out = tmp_path / "results"
    command = ["run", "--model", str(tiny_model_dir), "--data", "sample", "--max-steps", "1", "--out", str(out),
               "--set", "data.max_train_records=16", "--set", "data.eval_size=4", "--set", "eval.max_new_tokens=4",
               "--set", "eval.kl_samples=0", "--set", "eval.judge=gold:test-eval-length"]
    dpo, simpo = out / "hh-rlhf" / "dpo" / "seed1", out / "hh-rlhf" / "simpo" / "seed1"

    def broken(*args, **kwargs):
        raise PobenchError("reward model rm_x: cannot load (OSError: offline)")
    monkeypatch.setattr(R, "evaluate_run", broken)
    r = CliRunner().invoke(app, command + ["--algo", "dpo,simpo", "--set", "eval.num_prompts=2"])
    assert isinstance(r.exception, PobenchError), r.output
    assert str(r.exception) == (
        f"reward model rm_x: cannot load (OSError: offline); {dpo} finished training and is kept: evaluate it with "
        f"`pobench eval {dpo}` (--judge or --set eval.KEY=VALUE to change a setting), or rerun this command with "
        f"--resume, which may change its eval.* settings, to evaluate it and train the runs left")
    assert (dpo / "train_summary.json").is_file() and not (dpo / "eval.json").exists() and not simpo.exists()
    monkeypatch.undo()
    # what the error says: `pobench eval` evaluates the trained run (here a copy of it) ...
    copy = shutil.copytree(dpo, tmp_path / "copy" / "hh-rlhf" / "dpo" / "seed1")
    r = CliRunner().invoke(app, ["eval", str(copy), "--num-prompts", "1"])
    assert r.exit_code == 0, r.output
    assert json.loads((copy / "eval.json").read_text())["n_prompts"] == 1
    # ... and --resume evaluates it under the eval settings asked for now, and trains the runs left
    r = CliRunner().invoke(app, command + ["--algo", "dpo,simpo", "--resume", "--set", "eval.num_prompts=3"])
    assert r.exit_code == 0, (r.output, r.exception)
    for run in (dpo, simpo):
        result = json.loads((run / "eval.json").read_text())
        assert result["n_prompts"] == 3 and result["eval_config"]["num_prompts"] == 3
    assert read_yaml(dpo / "config.yaml")["eval"]["num_prompts"] == 2   # as the run was started
    assert read_yaml(simpo / "config.yaml")["eval"]["num_prompts"] == 3
    # an evaluated run is skipped: other eval settings would go unused, so they are refused, naming `pobench eval`
    r = CliRunner().invoke(app, command + ["--algo", "dpo", "--resume", "--set", "eval.num_prompts=4"])
    assert isinstance(r.exception, PobenchError) and str(r.exception) == (
        f"{dpo}: finished and evaluated with other eval settings than these (eval.num_prompts 3 -> 4); --resume skips "
        f"a finished run: evaluate it again with `pobench eval {dpo} --set eval.KEY=VALUE`, or leave it out of this "
        f"command")
    # ... while those it was started with, or last evaluated with, skip it as before
    for prompts in (2, 3):
        r = CliRunner().invoke(app, command + ["--algo", "dpo", "--resume", "--set", f"eval.num_prompts={prompts}"])
        assert r.exit_code == 0, (r.output, r.exception)
        assert "finished earlier, skipped" in r.output


def test_an_eval_of_one_prompt_writes_strict_json(finished_run, tmp_path):
    """One judged prompt and one KL sample have no standard error: eval.json held a bare NaN for both, which is not
    JSON (strict readers refuse the file); they are null, and the eval table shows the win rate without one."""
    import test_eval_judges  # noqa: F401  registers gold:test-eval-length in this process

    from pobench.cli import app
    finished_run = copy_run(finished_run, tmp_path)

    def strict(constant):
        raise AssertionError(f"{constant} written, which is not JSON")
    r = CliRunner().invoke(app, ["eval", str(finished_run), "--judge", "gold:test-eval-length", "--num-prompts", "1",
                                 "--set", "eval.kl_samples=1"])
    assert r.exit_code == 0, r.output
    result = json.loads((finished_run / "eval.json").read_text(), parse_constant=strict)
    assert result["n_judged"] == 1 and result["win_rate_se"] is None
    assert result["kl_info"]["kl_samples"] == 1 and result["kl_se"] is None and result["kl_info"]["kl_se"] is None
    assert f"{result['win_rate']:.3f}" in r.output and f"{result['win_rate']:.3f} +/-" not in r.output
    for line in (finished_run / "generations.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=strict)


def test_a_crash_while_evaluating_again_never_leaves_new_generations_under_the_old_result(finished_run, tmp_path,
                                                                                          monkeypatch):
    """eval.json names the judge generations.jsonl was judged by: killed after the new generations were written and
    before the new eval.json, the run is left unevaluated (the last result kept as eval.previous.json), not with
    the old judge's result beside the new judge's rows; the next evaluation completes and clears it."""
    import test_eval_judges  # noqa: F401  registers gold:test-eval-length in this process

    from pobench.cli import app
    from pobench.engine import io
    from pobench.eval import runner
    finished_run = copy_run(finished_run, tmp_path)
    old = (finished_run / "eval.json").read_text()
    real = io.atomic_write_json

    def killed_at_eval_json(path, data):
        if Path(path).name == "eval.json":
            raise KeyboardInterrupt("killed")
        return real(path, data)
    monkeypatch.setattr(io, "atomic_write_json", killed_at_eval_json)
    args = ["eval", str(finished_run), "--judge", "gold:test-eval-length", "--num-prompts", "3"]
    CliRunner().invoke(app, args)
    assert not (finished_run / "eval.json").exists()
    assert (finished_run / runner.PREVIOUS_EVAL).read_text() == old
    assert {r["judge"] for r in rows(finished_run)} == {"gold:test-eval-length"}
    monkeypatch.setattr(io, "atomic_write_json", real)
    assert CliRunner().invoke(app, args).exit_code == 0
    assert json.loads((finished_run / "eval.json").read_text())["judge"]["name"] == "gold:test-eval-length"
    assert not (finished_run / runner.PREVIOUS_EVAL).exists()


def evaluate_with_a_judge_that_fails(finished_run, tmp_path, monkeypatch):
    """A copy of the run evaluated one prompt a chunk by a judge whose service fails (a test double), after its
    answers and KL samples are stored; the real judge is put back. Returns (run, the overrides, generate)."""
    import test_eval_judges  # noqa: F401  registers gold:test-eval-length in this process

    from pobench.eval import runner
    from pobench.generation.hf import TransformersBackend
    run = copy_run(finished_run, tmp_path)
    gold = {"eval": {"judge": "gold:test-eval-length"}}
    monkeypatch.setattr(runner, "EVAL_CHUNK_PROMPTS", 1)

    def judge_is_down(*args, **kwargs):
        raise PobenchError("the judge's service is down")

    real_judge_rows = runner.judge_rows
    monkeypatch.setattr(runner, "judge_rows", judge_is_down)
    with pytest.raises(PobenchError, match="down"):
        runner.evaluate_run(run, overrides=gold)
    monkeypatch.setattr(runner, "judge_rows", real_judge_rows)
    return run, gold, TransformersBackend.generate


def test_an_evaluation_stopped_after_some_answers_starts_again_from_them(finished_run, tmp_path, monkeypatch):
    """The policy's answers are stored as they are made (chunks of EVAL_CHUNK_PROMPTS prompts): a judge that fails
    after them costs the judging only, a crash in the middle the chunk it was making. Chunks change no answer
    (sampling is seeded per prompt): one prompt per chunk gives the answers the run's own evaluation made."""
    from pobench.eval import runner
    from pobench.generation.hf import TransformersBackend
    run, gold, real_generate = evaluate_with_a_judge_that_fails(finished_run, tmp_path, monkeypatch)
    store = next((tmp_path / "results" / ".cache" / "eval_policy").glob("*.jsonl"))
    lines = store.read_text().splitlines()
    assert len(lines) == 4
    store.write_text("\n".join(lines[:2]) + "\n")   # as a crash after the second chunk would have left it
    answered = []

    def counted(backend, prompt_ids, gen):
        if gen.temperature != 1.0:   # the answers (KL's pure samples are drawn at temperature 1)
            answered.extend(prompt_ids)
        return real_generate(backend, prompt_ids, gen)

    monkeypatch.setattr(TransformersBackend, "generate", counted)
    runner.evaluate_run(run, overrides=gold)
    assert len(answered) == 2                          # only the two answers the crash lost; the reference's cached
    assert [r["output"] for r in rows(run)] == [r["output"] for r in rows(finished_run)]
    assert [r["output_tokens"] for r in rows(run)] == [r["output_tokens"] for r in rows(finished_run)]


def test_an_evaluation_stopped_after_some_kl_samples_starts_again_from_them(finished_run, tmp_path, monkeypatch):
    """The KL estimate's samples were drawn again by every evaluation of a run: one stopped by a failing judge, and
    one with another judge. They are seeded per prompt (eval.seed), so drawing them again gave the same samples, the
    time spent again; their log-probs are now stored as the answers are, chunk by chunk, and reused."""
    from pobench.eval import runner
    from pobench.generation.hf import TransformersBackend
    run, gold, real_generate = evaluate_with_a_judge_that_fails(finished_run, tmp_path, monkeypatch)
    store = next((tmp_path / "results" / ".cache" / "eval_kl").glob("*.jsonl"))
    lines = store.read_text().splitlines()
    assert len(lines) == 4   # one per prompt, a chunk each
    drawn = []

    def counted(backend, prompt_ids, gen):
        if gen.temperature == 1.0 and gen.top_p == 1.0:   # KL's pure samples (the answers are drawn at 0.7)
            drawn.extend(prompt_ids)
        return real_generate(backend, prompt_ids, gen)

    monkeypatch.setattr(TransformersBackend, "generate", counted)
    result = runner.evaluate_run(run, overrides=gold)
    assert drawn == []                                 # none drawn again
    kl = json.loads((finished_run / "eval.json").read_text())["kl"]
    assert result["kl"] == pytest.approx(kl, rel=1e-5)   # as the run's own evaluation drew them, in one chunk
    store.write_text("\n".join(lines[:2]) + "\n")      # as a crash after the second chunk would have left it
    result = runner.evaluate_run(run, overrides=gold)
    assert len(drawn) == 2 and result["kl"] == pytest.approx(kl, rel=1e-5)   # only the two the crash lost
    assert result["kl_info"]["kl_samples"] == 4


def test_eval_on_alpaca_eval_instructions_with_the_local_llm_judge(finished_run, tiny_model_dir, tmp_path):
    pytest.importorskip("alpaca_eval")
    from pobench.cli import app
    finished_run = copy_run(finished_run, tmp_path)
    r = CliRunner().invoke(app, ["eval", str(finished_run), "--eval-set", "alpaca_eval", "--eval-file",
                                 str(FIXTURES / "alpaca_eval_sample.json"), "--reference", "alpaca_eval", "--judge",
                                 "alpaca_eval:local", "--set", f"eval.judge_model={tiny_model_dir}", "--num-prompts",
                                 "0", "--set", "eval.judge_both_orders=true", "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output.strip().splitlines()[-1])
    check_contract(result, 5)
    assert result["judge"]["kind"] == "llm" and result["eval_set"] == "alpaca_eval"
    # both orders: each prompt's preference is the mean of its two verdicts, both kept
    assert result["eval_config"]["judge_both_orders"] and 0 <= result["order_agreement"] <= 1
    for row in rows(finished_run):
        assert row["preference"] == pytest.approx(sum(row["preference_orders"]) / 2)
    # the decoder's identity is part of the judge's (eval.judge_decoder auto: vLLM only where it and CUDA are here)
    assert result["judge"]["judge_decoder"] in ("transformers", "vllm") and result["judge"]["model_fingerprint"]
    outputs = json.loads((finished_run / "model_outputs.json").read_text())
    fixture = json.loads((FIXTURES / "alpaca_eval_sample.json").read_text())
    assert [o["instruction"] for o in outputs] == [f["instruction"] for f in fixture]
    assert all(set(o) >= {"instruction", "output", "generator"} for o in outputs)
    assert [r["reference_output"] for r in rows(finished_run)] == [f["output"] for f in fixture]
    assert result["reference"]["generator"] == "test_reference"   # the file's generator field, kept


def test_the_reference_answers_are_named_by_the_set_they_come_from():
    """reference dataset on the alpaca_eval set compares with the eval file's outputs: eval.json called them the
    held-out records' chosen responses."""
    from types import SimpleNamespace

    from pobench.eval.alpaca_set import EvalItem
    from pobench.eval.runner import reference_outputs
    items = [EvalItem([{"role": "user", "content": "q"}], "the file's answer", "alpaca_eval:0", 0)]
    for eval_set, reference, source in (("alpaca_eval", "dataset", "the eval file's outputs"),
                                        ("alpaca_eval", "alpaca_eval", "the eval file's outputs"),
                                        ("held_out", "dataset", "the held-out records' chosen responses")):
        cfg = SimpleNamespace(eval=SimpleNamespace(eval_set=eval_set, reference=reference))
        outs, info = reference_outputs(cfg, items, [[1]], None, None, None, None)
        assert outs == ["the file's answer"] and info.pop("generator", None) is None   # the item names none
        assert info == {"kind": reference, "source": source}


def alpaca_rows(n: int, generator: str | None = "gpt4_turbo") -> list[dict]:
    return [{"instruction": f"Instruction {i}?", "output": f"Answer {i}.", "dataset": "helpful_base",
             **({"generator": generator} if generator else {})} for i in range(n)]


def test_the_alpaca_eval_set_is_alpaca_eval_2s_and_its_reference_generator_is_recorded(tmp_path, monkeypatch):
    """The hub's alpaca_eval.json is AlpacaEval 1's reference outputs (text-davinci-003), which pobench read and called
    GPT-4-turbo's: the set is read from AlpacaEval 2's alpaca_eval_gpt4_baseline.json, and eval.json's reference
    names the model that wrote the outputs (the generator field was dropped)."""
    from types import SimpleNamespace

    import huggingface_hub

    from pobench.eval import alpaca_set
    from pobench.eval.runner import reference_outputs
    asked = []
    local = tmp_path / "baseline.json"
    local.write_text(json.dumps(alpaca_rows(3)))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, file, **k: asked.append((repo, file)) or local)
    items, source = alpaca_set.load_alpaca_eval(None)
    assert asked == [("tatsu-lab/alpaca_eval", "alpaca_eval_gpt4_baseline.json")]
    assert source == "hub:tatsu-lab/alpaca_eval/alpaca_eval_gpt4_baseline.json"
    assert [it.generator for it in items] == ["gpt4_turbo"] * 3
    cfg = SimpleNamespace(eval=SimpleNamespace(eval_set="alpaca_eval", reference="alpaca_eval"))
    assert reference_outputs(cfg, items, [[1]] * 3, None, None, None, None)[1]["generator"] == "gpt4_turbo"
    mixed = alpaca_set.parse_items(alpaca_rows(2, "text_davinci_003") + alpaca_rows(1), "f.json")
    assert reference_outputs(cfg, mixed, [[1]] * 3, None, None, None, None)[1]["generator"] == [
        "gpt4_turbo", "text_davinci_003"]
    assert alpaca_set.reference_generator(alpaca_set.parse_items(alpaca_rows(2, None), "f.json")) is None
    with pytest.raises(PobenchError, match=r"^f.json: row 2: 'generator' must be a string"):
        alpaca_set.parse_items([{"instruction": "a"}, {"instruction": "b", "generator": 3}], "f.json")


def test_alpaca_eval_glm_is_refused_against_another_reference_or_a_subset_of_the_set(tmp_path, monkeypatch):
    """eval.lc_difficulty_file fits alpaca_eval's length_controlled_v1 GLM, whose difficulties were measured against
    GPT-4-turbo's outputs and are looked up by position among the 805 instructions: it was fitted against
    text-davinci-003's outputs, and a subset file got other instructions' difficulties, without a word. Refused up
    front (pobench run: before training) and where the items are read (pobench eval, the hub's file too); the sft
    reference leaves the file unused, as before."""
    from types import SimpleNamespace

    import huggingface_hub

    from pobench.eval.runner import check_alpaca_eval_set, eval_items
    gamed = tmp_path / "df_gamed.csv"
    gamed.write_text("index,instruction_difficulty,preference,std_delta_len,not_gamed_baseline\n0,0.1,0.5,0.2,True\n")

    def settings(path, reference="alpaca_eval", num_prompts=0, eval_file=True):
        return SimpleNamespace(eval_set="alpaca_eval", judge="alpaca_eval:local", reference=reference,
                               eval_file=str(path) if eval_file else None, lc_difficulty_file=str(gamed),
                               num_prompts=num_prompts)

    def write(name, rows):
        path = tmp_path / name
        path.write_text(json.dumps(rows))
        return path

    ae2 = write("ae2.json", alpaca_rows(805))
    davinci = write("ae1.json", alpaca_rows(805, "text_davinci_003"))
    unnamed = write("unnamed.json", alpaca_rows(805, None))
    subset = write("subset.json", alpaca_rows(100))
    check_alpaca_eval_set(settings(ae2))
    check_alpaca_eval_set(settings(ae2, "dataset", num_prompts=16))   # a prefix keeps the positions
    for path, reference in ((davinci, "alpaca_eval"), (davinci, "dataset")):
        with pytest.raises(PobenchError, match=r"^config key 'eval.lc_difficulty_file': .*GPT-4-turbo's outputs "
                                               r".*ae1.json row 1's reference output has generator 'text_davinci_003'"):
            check_alpaca_eval_set(settings(path, reference))
    with pytest.raises(PobenchError, match="unnamed.json row 1's reference output has no 'generator'"):
        check_alpaca_eval_set(settings(unnamed))
    with pytest.raises(PobenchError, match=r"position among AlpacaEval's 805 instructions, and .*subset.json has 100 "
                                           r"rows"):
        check_alpaca_eval_set(settings(subset, num_prompts=16))
    check_alpaca_eval_set(settings(davinci, "sft"))   # the reference policy's answers: the file is not used
    # pobench eval reads the items (from the hub where no file is given) before generating anything
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, file, **k: davinci)
    with pytest.raises(PobenchError, match="hub:tatsu-lab/alpaca_eval/alpaca_eval_gpt4_baseline.json row 1's "
                                           "reference output has generator 'text_davinci_003'"):
        eval_items(SimpleNamespace(eval=settings(None, eval_file=False)))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, file, **k: ae2)
    items, source, _ = eval_items(SimpleNamespace(eval=settings(None, num_prompts=4, eval_file=False)))
    assert len(items) == 4 and [it.index for it in items] == [0, 1, 2, 3]
    with pytest.raises(PobenchError, match="subset.json has 100 rows"):
        eval_items(SimpleNamespace(eval=settings(subset)))


def test_the_eval_table_shows_how_many_prompts_were_judged():
    """The win rate is over the prompts the judge gave a verdict on: the table showed the prompts answered."""
    from rich.console import Console

    from pobench.cli import _eval_table
    result = {"suite": "hh-rlhf", "algorithm": "dpo", "seed": 1, "reference": {"kind": "sft"}, "n_prompts": 4,
              "n_judged": 3, "n_unjudged": 1, "win_rate": 0.5, "win_rate_se": 0.1, "win_rate_ci95": [0.3, 0.7],
              "lc_win_rate": None, "avg_length": 10.0, "reference_avg_length": 12.0, "reward_mean": None, "kl": None,
              "judge": {"name": "alpaca_eval:local(x)", "kind": "llm"}}
    console = Console(width=200, record=True)
    console.print(_eval_table([result]))
    text = console.export_text()
    assert "judged" in text and " 3/4 " in text


def test_eval_errors_name_the_problem(finished_run, tmp_path):
    from pobench.eval.runner import evaluate_run
    with pytest.raises(PobenchError, match="not a run folder"):
        evaluate_run(tmp_path)
    (tmp_path / "config.yaml").write_text((finished_run / "config.yaml").read_text())
    with pytest.raises(PobenchError, match="has not finished"):
        evaluate_run(tmp_path)
    with pytest.raises(PobenchError, match="eval.reference"):
        evaluate_run(finished_run, overrides={"eval": {"reference": "chosen"}})
    with pytest.raises(PobenchError, match="--eval-file"):   # offline: the hub is unreachable, never a silent fallback
        evaluate_run(finished_run, overrides={"eval": {"eval_set": "alpaca_eval"}})
    with pytest.raises(PobenchError, match="only eval"):
        evaluate_run(finished_run, overrides={"train": {"lr": 1.0}})
    # a judge of no known form, for several runs: refused before the first run's answers are generated
    from pobench.cli import app
    import pobench.eval.runner as R
    other = copy_run(finished_run, tmp_path / "copy")
    generated = []
    real = R.generate
    R.generate = lambda *a, **k: generated.append(1) or real(*a, **k)
    try:
        result = CliRunner().invoke(app, ["eval", str(other), str(finished_run), "--judge", "gpt4"])
    finally:
        R.generate = real
    assert isinstance(result.exception, PobenchError) and "eval.judge 'gpt4'" in str(result.exception)
    assert generated == []
    # a damaged train_summary.json: one line naming the file and key, before anything is generated (it was a
    # TypeError after the answers)
    summary = other / "train_summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "steps": "2"}))
    R.generate = lambda *a, **k: generated.append(1) or real(*a, **k)
    try:
        with pytest.raises(PobenchError, match=f"{re.escape(str(summary))}: 'steps' must be a number, got '2'"):
            evaluate_run(other)
    finally:
        R.generate = real
    assert generated == []


def test_evaluation_on_cuda_loads_the_bf16_weights_its_training_forwards_ran_in(finished_run, monkeypatch):
    """model.dtype auto trains fp32 master weights under bf16 autocast on CUDA; evaluation there loads bf16 (a
    decode step reads every weight per token: half the bytes), the policy and the full-fine-tuning reference alike,
    and records it. Elsewhere the run's own dtype (CPU: fp32)."""
    import torch

    from pobench.eval import runner
    cfg = runner.load_run_config(finished_run)
    assert cfg.model.dtype == "auto" and runner.evaluation_dtype(cfg, "cpu") == "auto"
    assert runner.evaluation_dtype(cfg, "cuda") == runner.evaluation_dtype(cfg, torch.device("cuda:1")) == "bfloat16"
    # recorded resolved (it read "auto", which on the CPU loads float32): the answer stores keep the setting's name
    assert json.loads((finished_run / "eval.json").read_text())["weights_dtype"] == "float32"
    assert runner.loaded_dtype(cfg, "cuda") == "bfloat16"
    loaded = []

    class Asked(Exception):
        pass

    def recorded(model_cfg, device):   # test double for load_policy: no GPU here; records what it was asked for
        loaded.append((model_cfg.dtype, str(device)))
        raise Asked

    monkeypatch.setattr("pobench.models.load_policy", recorded)
    with pytest.raises(Asked):
        runner.load_trained_policy(cfg, finished_run, "cuda")
    with pytest.raises(Asked), runner.reference_model(cfg, None, "cuda"):
        pass
    assert loaded == [("bfloat16", "cuda"), ("bfloat16", "cuda")]


def test_answers_made_on_another_device_or_path_are_not_served_from_the_store(finished_run, tmp_path, monkeypatch):
    """The answer stores (the suite's shared reference answers, a run's own) were keyed by the model, the weights'
    dtype and the decoding: answers generated on a GPU (another rounding, the static decoder) were served to an
    evaluation on the CPU and the reverse. The device type, decode path, attention kernel and compiled layers are
    in their keys now where they differ from the CPU's plain sdpa path, whose stores keep the keys they had."""
    import hashlib
    import types

    import test_eval_judges  # noqa: F401  registers gold:test-eval-length in this process
    import torch

    from pobench.eval import runner
    from pobench.models import model_fingerprint, resolve_model_path
    cfg = runner.load_run_config(finished_run)
    result = json.loads((finished_run / "eval.json").read_text())
    settings = json.dumps(runner.decoding_record(cfg), sort_keys=True)
    before = f"{model_fingerprint(resolve_model_path(cfg.model.name_or_path))}-auto-{settings}"   # the key until now
    assert Path(result["reference"]["store"]).name == hashlib.sha1(before.encode()).hexdigest()[:16] + ".jsonl"
    on_cpu = types.SimpleNamespace(model=torch.nn.Linear(1, 1), uses_fast_path=lambda gen, ids: False)
    assert runner.answers_context(cfg, on_cpu, [[1, 2]]) == {}
    cfg.model.attn_implementation, cfg.model.compile = "eager", True
    assert runner.answers_context(cfg, on_cpu, [[1, 2]]) == {"attn_implementation": "eager", "model_compile": True}
    elsewhere = types.SimpleNamespace(model=torch.nn.Linear(1, 1, device="meta"), uses_fast_path=lambda gen, ids: True)
    assert runner.answers_context(runner.load_run_config(finished_run), elsewhere, [[1]]) == \
        {"device": "meta", "decoder": "static"}
    # evaluated where the static decoder runs on a GPU (a test double for that context; the model stays on the CPU)
    run = copy_run(finished_run, tmp_path)
    import shutil
    for kind in ("eval_reference", "eval_policy"):   # the stores the CPU evaluations made
        shutil.copytree(finished_run.parents[2] / ".cache" / kind, tmp_path / "results" / ".cache" / kind)
    made = len(list((tmp_path / "results" / ".cache" / "eval_policy").glob("*.jsonl")))
    monkeypatch.setattr(runner, "answers_context", lambda *_: {"device": "cuda", "decoder": "static"})
    again = runner.evaluate_run(run, overrides={"eval": {"judge": "gold:test-eval-length"}})
    assert Path(again["reference"]["store"]).name != Path(result["reference"]["store"]).name
    assert len(Path(again["reference"]["store"]).read_text().splitlines()) == 4   # answered again, in its own store
    assert len(list((tmp_path / "results" / ".cache" / "eval_policy").glob("*.jsonl"))) == made + 1
    assert again["decoding"]["decoder"] == "static" and again["decoding"]["batch_size_used"] == [4]


def test_lora_run_is_evaluated_with_its_adapter(tmp_path, tiny_model_dir):
    """A LoRA run saves only the adapter: eval loads it onto the base model, and the reference is the same model
    with the adapter disabled, so a trained adapter shows as KL > 0 (a forgotten one would give exactly 0)."""
    import test_eval_judges  # noqa: F401  registers gold:test-eval-length

    from pobench import config as C
    from pobench.config import dump
    from pobench.data import load_suite_data
    from pobench.engine import trainer as T
    from pobench.eval.runner import evaluate_run, load_trained_policy
    from pobench.registry import algorithm_defaults, get_algorithm, load_suite
    overrides = {"model": {"name_or_path": str(tiny_model_dir), "lora_r": 4, "lora_alpha": 8},
                 "data": {"path": "sample", "max_train_records": 16, "eval_size": 4, "schema": "hh"},
                 "train": {"max_steps": 2, "batch_size": 4, "lr": 5e-2, "max_prompt_length": 48,
                           "max_completion_length": 16},
                 "eval": {"num_prompts": 3, "max_new_tokens": 8, "judge": "gold:test-eval-length", "kl_samples": 2}}
    algo = get_algorithm("dpo")
    cfg = C.resolve(load_suite("hh-rlhf"), "dpo", algorithm_defaults(algo), {}, overrides, ["dpo"])
    run_dir = tmp_path / "results" / "hh-rlhf" / "dpo" / "seed1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump(cfg))
    T.train(cfg, algo, load_suite_data(cfg.data, cfg.seed), run_dir, tmp_path / "results" / ".cache")
    from safetensors.torch import load_file
    saved = load_file(str(run_dir / "checkpoints" / "latest" / "trainable.safetensors"))
    assert saved and all("lora_" in k for k in saved)
    model, _, _ = load_trained_policy(cfg, run_dir, "cpu")
    params = dict(model.named_parameters())
    assert all(params[k].detach().equal(v) for k, v in saved.items())
    result = evaluate_run(run_dir, device="cpu")
    assert result["kl"] is not None and abs(result["kl"]) > 1e-4 and result["kl_info"]["kl_samples"] == 6
    assert result["judge"]["kind"] == "gold" and len(rows(run_dir)) == 3


def test_compare_judges_simpo_against_dpo_head_to_head(finished_run):
    """`pobench compare` judges SimPO's answers against DPO's on the same prompts with the runs' own judge: a reward
    model, so P(SimPO wins) is the sigmoid of the score difference the two evaluations already recorded."""
    from pobench.cli import app
    from pobench.report.build import build_report
    suite = finished_run.parents[1]
    # the whole suite folder against DPO: every other algorithm is compared, DPO itself is not
    result = CliRunner().invoke(app, ["compare", str(suite), "--against", str(suite / "dpo")])
    assert result.exit_code == 0, result.output
    assert not (finished_run / "head_to_head.json").exists()
    stored = json.loads((suite / "simpo" / "seed1" / "head_to_head.json").read_text())
    h2h = stored["dpo/seed1"]
    evaluated = json.loads((finished_run / "eval.json").read_text())["judge"]["name"]
    assert h2h["judge"]["name"] == evaluated and h2h["n_prompts"] == 4 and h2h["against_algorithm"] == "dpo"
    simpo, dpo = rows(suite / "simpo" / "seed1"), rows(finished_run)
    want = [1 / (1 + math.exp(d["scores"]["policy"] - s["scores"]["policy"])) for s, d in zip(simpo, dpo)]
    assert [r["preference"] for r in h2h["rows"]] == pytest.approx(want, abs=1e-4)
    assert h2h["win_rate"] == pytest.approx(sum(want) / 4, abs=1e-4)
    assert h2h["identical_outputs"] == sum(s["output"] == d["output"] for s, d in zip(simpo, dpo))
    row = build_report(finished_run.parents[2])[0]["suites"][0]["versus"]["rows"][0]
    assert row["head_to_head"]["win_rate"]["mean"] == pytest.approx(h2h["win_rate"])
    suite_only = build_report(suite)[0]["suites"][0]["versus"]["rows"][0]   # `pobench report results/hh-rlhf`
    assert suite_only["head_to_head"]["win_rate"]["mean"] == pytest.approx(h2h["win_rate"])
    # held_out_pairs.json: the final margins of the held-out pairs, whose share above 0 is the summary's accuracy
    for run in (finished_run, suite / "simpo" / "seed1"):
        margins = json.loads((run / "held_out_pairs.json").read_text())["margins"]
        final = json.loads((run / "train_summary.json").read_text())["held_out_final"]
        assert len(margins) == 4 and sum(m > 0 for m in margins) / 4 == final["eval/rewards/accuracies"]
        assert sum(margins) / 4 == pytest.approx(final["eval/rewards/margins"])
    assert row["pair_paired"]["pairs"] == 4
    assert row["head_to_head"]["seeds"] == [1] and row["head_to_head"]["judge"] == [evaluated]
    # SimPO evaluated again with other answers: the stored head-to-head no longer applies, and the report says so
    gen_file = suite / "simpo" / "seed1" / "generations.jsonl"
    kept = gen_file.read_text()
    gen_file.write_text(kept.replace('"output": "', '"output": "changed ', 1))
    row = build_report(finished_run.parents[2])[0]["suites"][0]["versus"]["rows"][0]
    gen_file.write_text(kept)
    assert row["head_to_head"] is None
    assert "head to head of 1 seed(s) left out: answers changed since (pobench compare again)" in row["unlike_baseline"]


def test_compare_and_report_leave_out_generations_without_their_eval_json(finished_run, tmp_path):
    """generations.jsonl without eval.json is what an evaluation stopped between its two writes leaves (unevaluated,
    by design): compare judged those rows anyway, under settings read from config.yaml, and the report paired them."""
    import shutil
    from pobench.cli import app
    from pobench.report.build import build_report
    run = copy_run(finished_run, tmp_path)
    (run / "eval.json").unlink()
    simpo = run.parents[1] / "simpo" / "seed1"
    shutil.copytree(finished_run.parents[1] / "simpo" / "seed1", simpo, ignore=shutil.ignore_patterns("checkpoints"))
    result = CliRunner().invoke(app, ["compare", str(simpo.parent), "--against", str(run.parent)])
    assert isinstance(result.exception, PobenchError)
    assert f"{run}: generations.jsonl without eval.json" in str(result.exception)
    assert f"run pobench eval {run} again" in str(result.exception)
    row = build_report(tmp_path / "results")[0]["suites"][0]["versus"]["rows"][0]
    assert row["prompt_paired"] is None
    assert any("dpo/seed1: generations.jsonl without eval.json" in note for note in row["unlike_baseline"])


def test_compare_refuses_what_is_not_comparable(finished_run, tmp_path):
    import shutil
    from pobench.cli import app
    suite = finished_run.parents[1]
    other = tmp_path / "hh-rlhf" / "dpo" / "seed1"
    shutil.copytree(finished_run, other, ignore=shutil.ignore_patterns("checkpoints"))
    config = (other / "config.yaml").read_text()
    evaluated = json.loads((other / "eval.json").read_text())
    assert evaluated["eval_config"]["max_new_tokens"] == 8   # the settings the evaluation resolved, recorded
    # evaluated again with another setting (as `pobench eval --set eval.max_new_tokens=9` records it), while the run's
    # config.yaml still says 8: the answers, made with 9, are what counts
    evaluated["eval_config"]["max_new_tokens"] = 9
    (other / "eval.json").write_text(json.dumps(evaluated))
    result = CliRunner().invoke(app, ["compare", str(suite / "simpo"), "--against", str(other)])
    assert isinstance(result.exception, PobenchError)
    assert "not comparable head to head (eval.max_new_tokens 8 vs 9)" in str(result.exception)
    from pobench.report.build import build_report
    shutil.copytree(suite / "simpo", tmp_path / "hh-rlhf" / "simpo")
    row = build_report(tmp_path)[0]["suites"][0]["versus"]["rows"][0]
    assert "eval.max_new_tokens 8 vs 9" in row["unlike_baseline"]   # the report names it too
    # several pairs: all are checked before the first is judged, so a later pair's mismatch writes nothing
    shutil.copytree(other, tmp_path / "hh-rlhf" / "xpo" / "seed1")
    baseline = tmp_path / "baseline" / "hh-rlhf" / "dpo" / "seed1"
    shutil.copytree(finished_run, baseline, ignore=shutil.ignore_patterns("checkpoints"))
    stored = lambda: {p: p.read_bytes() for p in (tmp_path / "hh-rlhf").rglob("head_to_head.json")}   # noqa: E731
    before = stored()
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "hh-rlhf"), "--against", str(baseline.parent)])
    assert isinstance(result.exception, PobenchError) and "eval.max_new_tokens 9 vs 8" in str(result.exception)
    assert stored() == before   # the comparable pair (simpo) was not judged either
    evaluated["eval_config"]["max_new_tokens"] = 8
    (other / "eval.json").write_text(json.dumps(evaluated))
    (other / "generations.jsonl").unlink()
    result = CliRunner().invoke(app, ["compare", str(suite / "simpo"), "--against", str(other)])
    assert isinstance(result.exception, PobenchError) and "no generations.jsonl" in str(result.exception)
    (other / "config.yaml").write_text(config.replace("seed: 1", "seed: 2"))
    result = CliRunner().invoke(app, ["compare", str(suite / "simpo"), "--against", str(other)])
    assert isinstance(result.exception, PobenchError) and "no seed in both" in str(result.exception)


def test_compare_refuses_other_prompts_under_the_same_ids_and_answers_made_otherwise(finished_run, tmp_path):
    """Rows were matched by id only: two runs of other data (ids are '<file>:<row>' or positions) were judged
    against each other's prompts; a chat template or prompt cut of its own on one side was not named either."""
    import shutil
    from pobench.cli import app
    suite = finished_run.parents[1]
    other = tmp_path / "hh-rlhf" / "dpo" / "seed1"
    shutil.copytree(finished_run, other, ignore=shutil.ignore_patterns("checkpoints"))
    gen = other / "generations.jsonl"
    kept = gen.read_text()
    rows = [json.loads(line) for line in kept.splitlines()]
    rows[1]["prompt"] = [{"role": "user", "content": "another question"}]
    gen.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(app, ["compare", str(suite / "simpo"), "--against", str(other)])
    assert isinstance(result.exception, PobenchError)
    assert "1 of the 4 eval prompts differ under the same id" in str(result.exception)
    gen.write_text(kept)
    config = (other / "config.yaml").read_text()
    assert "max_prompt_length: 128" in config
    (other / "config.yaml").write_text(config.replace("max_prompt_length: 128", "max_prompt_length: 64"))
    result = CliRunner().invoke(app, ["compare", str(suite / "simpo"), "--against", str(other)])
    assert isinstance(result.exception, PobenchError)
    assert "decoding max_prompt_length 128 vs 64" in str(result.exception)
    result = CliRunner().invoke(app, ["compare", str(suite / "simpo"), "--against", str(finished_run), "--set",
                                      "train.lr=1"])
    assert isinstance(result.exception, PobenchError) and "--set train.lr:" in str(result.exception)


def test_eval_and_compare_refuse_other_records_than_the_run_trained_on(finished_run, tmp_path):
    """Only --resume compared the records read now with data.json's digest: `pobench eval` of a run whose data file
    was edited (or `data.path: auto` reaching the hub where it read the sample) judged other held-out prompts, and
    the auto judge's 'none of the run's records' replayed positions in other data."""
    from pobench.cli import app
    run = copy_run(finished_run, tmp_path)
    report = json.loads((run / "data.json").read_text())
    report["records_digest"]["train"] = "0" * 40
    (run / "data.json").write_text(json.dumps(report))
    result = CliRunner().invoke(app, ["eval", str(run), "--num-prompts", "2"])
    assert isinstance(result.exception, PobenchError)
    assert "pobench eval on other training records than the run started on" in str(result.exception)
    result = CliRunner().invoke(app, ["compare", str(finished_run.parents[1] / "simpo"), "--against", str(run)])
    assert isinstance(result.exception, PobenchError)
    assert "pobench compare on other training records than the run started on" in str(result.exception)


def test_eval_compare_and_resume_name_runs_made_under_older_data_rules_once(finished_run, tmp_path, tiny_model_dir):
    """Runs whose data.json has no records_rule (an older pobench's) are evaluated, compared and resumed on the
    records those rules chose, whose held-out set may hold training prompts: that was done silently. Each command
    says it in one line, however many such runs it reads."""
    import shutil

    import test_eval_judges  # noqa: F401  registers gold:test-eval-length in this process

    from pobench.cli import app
    root = tmp_path / "results"
    for algo in ("dpo", "simpo"):
        run = shutil.copytree(finished_run.parents[1] / algo / "seed1", root / "hh-rlhf" / algo / "seed1")
        report = json.loads((run / "data.json").read_text())
        assert report.pop("records_rule") == 2
        (run / "data.json").write_text(json.dumps(report))

    def said_once(result) -> None:
        assert result.exit_code == 0, (result.output, result.exception)
        text = " ".join(result.stderr.split())   # (the console wraps its lines)
        assert text.count("older data rules") == 1, text
        assert "warning: 2 runs were made under older data rules (data.json without records_rule 2) and read on " \
               "the records those rules chose: their held-out set may hold training records' prompts" in text, text
    said_once(CliRunner().invoke(app, ["eval", str(root), "--judge", "gold:test-eval-length", "--num-prompts", "1",
                                       "--set", "eval.kl_samples=0"]))
    said_once(CliRunner().invoke(app, ["compare", str(root / "hh-rlhf" / "simpo"), "--against",
                                       str(root / "hh-rlhf" / "dpo"), "--judge", "gold:test-eval-length"]))
    command = ["run", "--algo", "dpo,simpo", "--model", str(tiny_model_dir), "--data", "sample",
               "--max-steps", "2", "--out", str(root), "--set", "data.max_train_records=16", "--set",
               "data.eval_size=4", "--set", "train.lr=1e-2", *EVAL_SETTINGS, "--resume"]
    said_once(CliRunner().invoke(app, command))


def test_options_that_would_be_ignored_or_meaningless_are_refused(finished_run, tmp_path):
    from pobench.cli import app
    result = CliRunner().invoke(app, ["eval", str(finished_run), "--eval-file", str(tmp_path / "a.json")])
    assert isinstance(result.exception, PobenchError) and "read for the alpaca_eval set only" in str(result.exception)
    for target in ("2", "-1", "nan"):
        result = CliRunner().invoke(app, ["report", str(finished_run.parents[2]), "--target", target])
        assert isinstance(result.exception, PobenchError) and f"--target {float(target)}" in str(result.exception)


def test_eval_and_compare_wait_for_a_run_writing_the_folder(finished_run, tmp_path):
    """The folder's lock, held here as a `pobench run` still evaluating it would: `pobench eval` of it, and
    `pobench compare` writing its head_to_head.json, are refused with exit 2 instead of interleaving writes."""
    from pobench.cli import app
    from pobench.engine.lock import RunLock
    run = copy_run(finished_run, tmp_path)
    with RunLock(run):
        result = CliRunner().invoke(app, ["eval", str(run), "--num-prompts", "2"])
        assert isinstance(result.exception, PobenchError) and "in use by another pobench run" in str(result.exception)
        result = CliRunner().invoke(app, ["compare", str(run), "--against", str(finished_run.parents[1] / "simpo")])
        assert isinstance(result.exception, PobenchError) and "in use by another pobench run" in str(result.exception)


def test_compare_with_the_local_llm_judge_through_alpaca_eval(finished_run, tiny_model_dir):
    """The LLM-judge path of a head-to-head comparison: alpaca_eval's annotator answered by a local model; only the
    judge's keys can be set, the stored answers' generation settings cannot."""
    pytest.importorskip("alpaca_eval")
    from pobench.cli import app
    suite = finished_run.parents[1]
    result = CliRunner().invoke(app, ["compare", str(suite / "simpo" / "seed1"), "--against", str(finished_run),
                                      "--judge", "alpaca_eval:local", "--set", f"eval.judge_model={tiny_model_dir}",
                                      "--json"])
    assert result.exit_code == 0, result.output
    h2h = json.loads(result.output.strip().splitlines()[-1])
    assert h2h["judge"]["kind"] == "llm" and h2h["n_prompts"] == 4 and 0 <= h2h["win_rate"] <= 1
    assert h2h["decoding"]["max_new_tokens"] == 8   # the answers' own decoding, recorded
    stored = json.loads((suite / "simpo" / "seed1" / "head_to_head.json").read_text())["dpo/seed1"]
    assert stored["judge"]["name"] == h2h["judge"]["name"] and len(stored["rows"]) == 4
    result = CliRunner().invoke(app, ["compare", str(suite / "simpo"), "--against", str(suite / "dpo"),
                                      "--set", "eval.max_new_tokens=64"])
    assert isinstance(result.exception, PobenchError)
    assert "--set eval.max_new_tokens: compare judges answers already generated" in str(result.exception)


def test_compare_reads_prompts_held_as_text(finished_run, tmp_path):
    """generations.jsonl may hold a prompt as text (read_generations accepts it): the reward-model judge read it as
    chat messages and failed (TypeError); it reads it as one user turn now."""
    import shutil
    from pobench.cli import app
    from pobench.eval.judges import prompt_text
    suite = tmp_path / "hh-rlhf"
    for algo in ("dpo", "simpo"):
        run = suite / algo / "seed1"
        shutil.copytree(finished_run.parents[1] / algo / "seed1", run, ignore=shutil.ignore_patterns("checkpoints"))
        rows = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]
        for row in rows:
            row["prompt"] = prompt_text(row["prompt"])
        (run / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(app, ["compare", str(suite / "simpo"), "--against", str(suite / "dpo")])
    assert result.exit_code == 0, result.output
    stored = json.loads((suite / "simpo" / "seed1" / "head_to_head.json").read_text())["dpo/seed1"]
    assert stored["n_prompts"] == 4 and stored["n_unjudged"] == 0
