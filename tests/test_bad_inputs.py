"""The bad-input corpus: every file under tests/bad_inputs/ through the real entry point (`pobench.cli.main`).

Each case either fails with exit code 2 and exactly one `error:` line naming the file, row or key (no
traceback), or, where skipping is the documented behaviour (row-level defects of upstream data), succeeds and
prints the count of skipped rows by reason. Either way a results folder that existed before is byte-identical
afterwards and nothing new appears in it.

The cases run in-process (one `main()` call each, ~50 ms) rather than as subprocesses (~3 s of imports each):
tests/test_cli_errors.py already checks through real subprocesses that such errors reach the shell as exit
code 2 with one line. `pobench data` is used where it reads the same files through the same loader; `pobench
run` where only it gets there (configs, models, results folder, plugins). Every `run` case names a model folder
that fails the model check, so a case that slipped past its own check stops there instead of training.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

CORPUS = Path(__file__).parent / "bad_inputs"
SAFETY_MODEL = "{c}/model_without_weights"
RUN = ["run", "--algo", "dpo", "--seeds", "2", "--out", "out", "--max-steps", "1", "--no-eval"]


def data(file: str, suite: str = "hh-rlhf", *extra: str) -> list[str]:
    return ["data", suite, "--data", f"{{c}}/{file}", "--set", "data.eval_size=2", *extra]


def run(*extra: str, model: str = SAFETY_MODEL) -> list[str]:
    return RUN + ["--model", model, *extra]


# name: (arguments ({c} = the corpus folder), "error" | "skip", substrings of the error line / the skip report)
CASES = {
    # bytes and syntax
    "gzip_cut_in_header": (data("hh_gzip_cut_in_header.jsonl.gz"), "error", ["hh_gzip_cut_in_header.jsonl.gz: unreadable gzip"]),
    "not_really_gzip": (data("hh_not_really_gzip.jsonl.gz"), "error", ["hh_not_really_gzip.jsonl.gz: unreadable gzip"]),
    "latin1_inside_gzip": (data("hh_latin1_inside_gzip.jsonl.gz"), "error", ["hh_latin1_inside_gzip.jsonl.gz:2: not UTF-8"]),
    "bad_line_inside_gzip": (data("hh_bad_line_inside_gzip.jsonl.gz"), "error", ["hh_bad_line_inside_gzip.jsonl.gz:4: bad JSON line"]),
    "utf16_file": (data("hh_utf16.jsonl"), "error", ["hh_utf16.jsonl:1: not UTF-8"]),
    "array_missing_comma": (data("array_missing_comma.json"), "error", ["array_missing_comma.json:4: bad JSON"]),
    "array_latin1": (data("array_latin1.json"), "error", ["array_latin1.json:4: not UTF-8"]),
    "array_of_numbers": (data("array_of_numbers.json"), "error", ["array_of_numbers.json (element 1): a row must be a JSON object"]),
    "array_empty": (data("array_empty.json"), "error", ["array_empty.json: no rows"]),
    "only_blank_lines": (data("only_blank_lines.jsonl"), "error", ["only_blank_lines.jsonl: no rows"]),
    # schema
    "unknown_schema": (data("unknown_schema.jsonl", "hh-rlhf", "--set", "data.schema=auto"), "error",
                       ["unknown_schema.jsonl:1: unknown schema", "question"]),
    "hh_schema_missing_key": (data("unknown_schema.jsonl"), "error", ["unknown_schema.jsonl:1: missing key 'chosen' for schema hh"]),
    "hh_chosen_is_a_number": (data("hh_chosen_is_a_number.jsonl"), "error", ["hh_chosen_is_a_number.jsonl:2: malformed row for schema hh"]),
    "hh_rejected_is_null": (data("hh_rejected_is_null.jsonl"), "error", ["hh_rejected_is_null.jsonl:3: malformed row for schema hh"]),
    "hh_every_row_skipped": (data("hh_every_row_without_assistant_turn.jsonl"), "error",
                             ["hh_every_row_without_assistant_turn.jsonl: every row was skipped", "no_final_assistant_turn': 3"]),
    "uf_message_without_content": (data("uf_binarized_message_without_content.jsonl", "ultrafeedback"), "error",
                                   ["uf_binarized_message_without_content.jsonl:5: missing key 'chosen[1].content'"]),
    "uf_messages_are_strings": (data("uf_binarized_messages_are_strings.jsonl", "ultrafeedback"), "error",
                                ["uf_binarized_messages_are_strings.jsonl:5: malformed row for schema ultrafeedback-binarized"]),
    "uf_raw_score_is_a_word": (data("uf_raw_score_is_a_word.jsonl", "ultrafeedback"), "error",
                               ["uf_raw_score_is_a_word.jsonl:5: malformed row for schema ultrafeedback-raw", "high"]),
    "uf_raw_score_is_true": (data("uf_raw_score_is_true.jsonl", "ultrafeedback"), "error",
                             ["uf_raw_score_is_true.jsonl:5: malformed row for schema ultrafeedback-raw",
                              "completions[1].overall_score must be a number, got bool True"]),
    "uf_raw_score_is_a_numeric_string": (data("uf_raw_score_is_a_numeric_string.jsonl", "ultrafeedback"), "error",
                                         ["uf_raw_score_is_a_numeric_string.jsonl:5: malformed row",
                                          "completions[1].overall_score must be a number, got str '9'"]),
    "uf_onpolicy_score_is_a_string": (data("uf_onpolicy_score_is_a_string.jsonl", "ultrafeedback"), "error",
                                      ["uf_onpolicy_score_is_a_string.jsonl:5: malformed row for schema "
                                       "ultrafeedback-onpolicy", "all_rm_scores[1] must be a number, got str '0.7'"]),
    "uf_binarized_prompt_id_is_a_list": (data("uf_binarized_prompt_id_is_a_list.jsonl", "ultrafeedback"), "error",
                                         ["uf_binarized_prompt_id_is_a_list.jsonl:3: malformed row",
                                          "'prompt_id' must be a string or an integer, got list"]),
    "uf_onpolicy_candidate_not_a_string": (data("uf_onpolicy_candidate_not_a_string.jsonl", "ultrafeedback"), "error",
                                           ["uf_onpolicy_candidate_not_a_string.jsonl:5: malformed row for schema "
                                            "ultrafeedback-onpolicy", "must hold strings, got NoneType"]),
    "uf_raw_completions_is_a_string": (data("uf_raw_completions_is_a_string.jsonl", "ultrafeedback"), "error",
                                       ["uf_raw_completions_is_a_string.jsonl:2: malformed row for schema ultrafeedback-raw"]),
    "forced_wrong_schema": (data("uf_binarized_duplicate_ids.jsonl", "ultrafeedback", "--set", "data.schema=ultrafeedback-raw"),
                            "error", ["uf_binarized_duplicate_ids.jsonl:1: missing key 'completions'"]),
    # row-level defects of upstream data: skipped and counted (README, Data)
    "hh_no_assistant_turn": (data("hh_no_assistant_turn.jsonl"), "skip", ["'no_final_assistant_turn': 2"]),
    "hh_empty_completion": (data("hh_empty_completion.jsonl"), "skip", ["'empty_completion': 1"]),
    "hh_text_before_first_turn": (data("hh_text_before_first_turn.jsonl"), "skip", ["'text_before_first_turn': 1"]),
    "hh_prefix_mismatch": (data("hh_prefix_mismatch.jsonl"), "skip", ["'prefix_mismatch': 1"]),
    "hh_duplicate_rows": (data("hh_duplicate_rows.jsonl"), "skip", ["'duplicate_record': 1"]),
    "uf_duplicate_ids": (data("uf_binarized_duplicate_ids.jsonl", "ultrafeedback"), "skip", ["'duplicate_id': 2"]),
    "uf_empty_completion": (data("uf_binarized_empty_completion.jsonl", "ultrafeedback"), "skip", ["'empty_completion': 1"]),
    "uf_raw_nan_score": (data("uf_raw_nan_score.jsonl", "ultrafeedback"), "skip", ["'nan_score': 1"]),
    "uf_onpolicy_infinite_score": (data("uf_onpolicy_infinite_score.jsonl", "ultrafeedback"), "skip", ["'nan_score': 1"]),
    "uf_onpolicy_rejected_for_another_prompt": (data("uf_onpolicy_rejected_for_another_prompt.jsonl", "ultrafeedback"),
                                                "skip", ["'prefix_mismatch': 1"]),
    "uf_onpolicy_scores_do_not_match": (data("uf_onpolicy_scores_do_not_match.jsonl", "ultrafeedback"), "skip",
                                        ["'scores_do_not_match_responses': 1"]),
    "test_prompts_in_train": (data("folder_with_test_prompts_in_train", "hh-rlhf", "--split", "eval"), "skip",
                              ["'prompt_in_train': 2"]),
    # formats and folders
    "corrupt_parquet": (data("corrupt.parquet"), "error", ["corrupt.parquet: cannot read"]),
    "csv_file": (data("rows.csv"), "error", ["rows.csv: unknown data format"]),
    "corrupt_save_to_disk": (data("save_to_disk_corrupt"), "error", ["save_to_disk_corrupt: not a readable save_to_disk folder"]),
    "folder_without_train_file": (data("folder_without_train_file"), "error",
                                  ["folder_without_train_file: no file for split 'train'"]),
    "folder_with_train_jsonl_beside_parquet_shards": (data("folder_with_train_jsonl_beside_parquet_shards"), "error",
                                                      ["folder_with_train_jsonl_beside_parquet_shards: train.jsonl "
                                                       "and train-00000-of-00002.parquet both hold split 'train'"]),
    # configs (through `run`: --config files and suite files are resolved there)
    "config_typo_in_section": (run("--config", "{c}/config_typo_in_section.yaml"), "error", ["unknown config key 'trian' in --config"]),
    "config_unknown_key": (run("--config", "{c}/config_unknown_key.yaml"), "error", ["unknown config key 'train.lrr'"]),
    "config_algorithm_key_typo": (run("--config", "{c}/config_algorithm_key_typo.yaml"), "error",
                                  ["unknown config key 'algorithm.betta' for algorithm 'dpo'"]),
    "config_wrong_type": (run("--config", "{c}/config_wrong_type.yaml"), "error",
                          ["config key 'train.batch_size': expected an integer", "four"]),
    "config_zero_batch": (run("--config", "{c}/config_zero_batch.yaml"), "error", ["config key 'train.batch_size': must be at least 1"]),
    "config_negative_lr": (run("--config", "{c}/config_negative_lr.yaml"), "error", ["config key 'train.lr': must be greater than 0"]),
    "config_nan_lr": (run("--config", "{c}/config_nan_lr.yaml"), "error", ["config key 'train.lr': must be a finite number"]),
    "config_eval_size_zero": (run("--config", "{c}/config_eval_size_zero.yaml"), "error", ["config key 'data.eval_size': must be at least 1"]),
    "config_warmup_over_one": (run("--config", "{c}/config_warmup_over_one.yaml"), "error",
                               ["config key 'train.warmup_ratio': must be between 0 and 1"]),
    "config_top_level_list": (run("--config", "{c}/config_top_level_list.yaml"), "error",
                              ["config_top_level_list.yaml: expected a mapping"]),
    "config_section_is_a_number": (run("--config", "{c}/config_section_is_a_number.yaml"), "error",
                                   ["config key 'data': expected a mapping"]),
    "config_latin1": (run("--config", "{c}/config_latin1.yaml"), "error", ["config_latin1.yaml: not UTF-8"]),
    "config_bad_choice": (run("--config", "{c}/config_bad_choice.yaml"), "error", ["config key 'pool.backend'", "vllmm"]),
    "set_negative_steps": (run("--set", "train.max_steps=-3"), "error", ["config key 'train.max_steps': must be at least 0"]),
    "set_float16_weights": (run("--set", "model.dtype=float16"), "error",
                            ["model.dtype float16: pobench trains the weights in their own dtype"]),
    "set_chat_template_word": (run("--set", "model.chat_template=Plain"), "error",
                               ["config key 'model.chat_template': 'Plain' is neither auto, plain nor a Jinja template"]),
    # reward settings are checked whether or not the algorithm uses them (DPO draws no pool: it was saved as is)
    "set_unknown_gold_pool_reward": (run("--set", "pool.reward_model=gold:nosuch"), "error",
                                     ["config key 'pool.reward_model': unknown gold reward 'nosuch' (known: ",
                                      "synthetic-<task seed>"]),
    "set_missing_reward_model_folder": (run("--set", "pool.reward_model=./no_such_rm"), "error",
                                        ["config key 'pool.reward_model': ",   # (absolute: the run's config
                                         "/no_such_rm: no such reward-model folder"]),   # names it so)
    "set_zero_lora_alpha": (run("--set", "model.lora_r=8", "--set", "model.lora_alpha=0"), "error",
                            ["config key 'model.lora_alpha': must be greater than 0"]),   # (trained nothing, silently)
    "grad_accum_not_dividing_batch": (run("--set", "train.batch_size=3", "--set", "train.grad_accum=2"), "error",
                                      ["config key 'train.batch_size': 3 must be a multiple of train.grad_accum=2"]),
    "seed_listed_twice": (run("--seeds", "2,2"), "error", ["seed2: planned twice (dpo seed 2 and dpo seed 2)"]),
    "unknown_launch_preset": (run("--launch-config", "bogus"), "error", ["--launch-config bogus: neither a preset"]),
    "set_negative_beta": (run("--set", "dpo.beta=-0.1"), "error",
                          ["config key 'algorithm.beta' for algorithm 'dpo': must be greater than 0, got -0.1"]),
    "set_online_pool_without_negative": (run("--algo", "onmcpo", "--set", "onmcpo.num_candidates=1", "--set",
                                             "onmcpo.include_dataset_chosen=false"), "error",
                                         ["onmcpo.num_candidates=1 with include_dataset_chosen false leaves no negative"]),
    "suite_unknown_data_key": (run("--suite", "{c}/suite_unknown_data_key.yaml"), "error", ["unknown config key 'data.paht'"]),
    "suite_with_a_seed": (run("--suite", "{c}/suite_with_a_seed.yaml"), "error",
                          ["suite_with_a_seed.yaml: 'seed' is chosen with --seeds, not in a suite file"]),
    "suite_name_leaves_the_results_folder": (run("--suite", "{c}/suite_name_leaves_the_results_folder.yaml"), "error",
                                             ["suite_name_leaves_the_results_folder.yaml: 'suite': '../../escape' is "
                                              "not a suite name"]),
    "set_empty_data_path": (run("--set", "data.path="), "error", ["config key 'data.path': empty"]),   # (read ./)
    "set_synthetic_key_for_other_data": (run("--set", "data.synthetic.task_seed=3"), "error",
                                         ["config key 'data.synthetic': set (task_seed), but data.path is 'auto'"]),
    # models: checked before any run folder is written
    "model_missing_folder": (run(model="./no_such_model_folder"), "error",
                             ["/no_such_model_folder: no such model folder"]),
    "model_without_config": (run(model="{c}/model_without_config"), "error", ["model_without_config: no config.json"]),
    "model_corrupt_config": (run(model="{c}/model_corrupt_config"), "error", ["model_corrupt_config/config.json: corrupt"]),
    "model_truncated_weights": (run(model="{c}/model_truncated_weights"), "error",
                                ["model_truncated_weights/model.safetensors: corrupt safetensors file", "truncated"]),
    "model_without_weights": (run(), "error", ["model_without_weights: no weights"]),
    # results folder and plugins
    "plugin_syntax_error": (run("--plugin", "{c}/plugin_syntax_error.py"), "error",
                            ["plugin_syntax_error.py: failed to import (SyntaxError"]),
    "plugin_name_escapes": (run("--plugin", "{c}/plugin_name_escapes.py"), "error",
                            ["@register_algorithm in ", "plugin_name_escapes.py: '../evil' is not an algorithm name",
                             "no '/'"]),
    # a broken loss, found before the first run (dpo, listed first) trains
    "plugin_loss_mean": (run("--algo", "dpo,bad_input_loss_mean", "--plugin", "{c}/plugin_loss_mean.py"), "error",
                         ["algorithm 'bad_input_loss_mean': loss must return", "shape [2]", "got losses []"]),
    "plugin_loss_forgets_reference": (run("--algo", "dpo,bad_input_forgets_reference", "--plugin",
                                          "{c}/plugin_loss_forgets_reference.py"), "error",
                                      ["'bad_input_forgets_reference': its loss reads the reference, but it says "
                                       "needs_reference = False"]),
}
# the results-folder cases need a model that passes the check: they use the real tiny model (see below)
RESULTS_CASES = {
    "results_is_a_file": ("{c}/results_is_a_file.txt", ["results_is_a_file.txt: cannot create the results folder"]),
    "results_under_a_file": ("{c}/results_is_a_file.txt/results", ["results_is_a_file.txt/results: cannot create the results folder"]),
}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _prior_results(cwd: Path) -> Path:
    """A results folder from an earlier run, which no failing command may touch."""
    run_dir = cwd / "out" / "hh-rlhf" / "dpo" / "seed1"
    (run_dir / "checkpoints" / "latest").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 1\n")
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 0.69}\n')
    (run_dir / "checkpoints" / "latest" / "state.json").write_text('{"step": 1}\n')
    (cwd / "out" / ".cache" / "reflogps").mkdir(parents=True)
    (cwd / "out" / ".cache" / "reflogps" / "x.pt").write_bytes(b"\x00\x01")
    return cwd / "out"


def invoke(args: list[str], cwd: Path, monkeypatch, capsys) -> tuple[int, str, str]:
    from pobench import cli
    corpus = cwd / "corpus"
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("POBENCH_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["pobench", *[a.replace("{c}", str(corpus)) for a in args]])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


def check_outcome(code: int, out: str, err: str, kind: str, expected: list[str]) -> None:
    assert "Traceback" not in out + err and "internal error" not in err, err
    if kind == "skip":
        assert code == 0, err
        report = [line for line in err.splitlines() if "skipped" in line and "rows:" in line]
        assert len(report) == 1, err
        for text in expected:
            assert text in report[0], f"{text!r} not in {report[0]!r}"
        return
    assert code == 2, err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, err
    assert err.rstrip().splitlines()[-1] == error_lines[0]
    for text in expected:
        assert text in error_lines[0], f"{text!r} not in {error_lines[0]!r}"


@pytest.fixture
def workdir(tmp_path) -> Path:
    shutil.copytree(CORPUS, tmp_path / "corpus")  # a copy: a command that wrote into the corpus would show too
    _prior_results(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, workdir, monkeypatch, capsys):
    args, kind, expected = CASES[name]
    before, corpus_before = _files(workdir / "out"), _files(workdir / "corpus")
    code, out, err = invoke(args, workdir, monkeypatch, capsys)
    check_outcome(code, out, err, kind, expected)
    assert _files(workdir / "out") == before
    assert not [p for p in (workdir / "out").rglob("*") if p.is_dir() and not any(p.iterdir())], "empty folders left"
    assert _files(workdir / "corpus") == corpus_before


@pytest.mark.parametrize("name", list(RESULTS_CASES))
def test_unusable_results_folder(name, workdir, tiny_model_dir, monkeypatch, capsys):
    out, expected = RESULTS_CASES[name]
    corpus_before = _files(workdir / "corpus")
    args = ["run", "--algo", "dpo", "--out", out, "--model", str(tiny_model_dir), "--data", "sample",
            "--max-steps", "1", "--no-eval"]
    code, stdout, err = invoke(args, workdir, monkeypatch, capsys)
    check_outcome(code, stdout, err, "error", expected)
    assert _files(workdir / "corpus") == corpus_before


def test_every_corpus_file_is_used():
    used = " ".join(" ".join(a) for a, _, _ in CASES.values()) + " ".join(o for o, _ in RESULTS_CASES.values())
    unused = [p.name for p in CORPUS.iterdir() if p.name != "README.md" and p.name not in used]
    assert not unused
    assert len(CASES) + len(RESULTS_CASES) >= 30


# -- prompts longer than the maximum: documented as kept by their end, not skipped -----------------------------
def test_overlong_prompt_keeps_its_end(tiny_model_dir):
    from transformers import AutoTokenizer

    from pobench.data.records import PreferenceRecord
    from pobench.data.tokenize import ChatFormatter, tokenize_record
    formatter = ChatFormatter(AutoTokenizer.from_pretrained(tiny_model_dir))
    long_turn = " ".join(f"word{i}" for i in range(3000)) + " FINAL QUESTION?"
    record = PreferenceRecord(prompt=[{"role": "user", "content": long_turn}], chosen="yes", rejected="no", id="r")
    pair = tokenize_record(record, formatter, max_prompt=48, max_completion=5)
    full = formatter.encode(formatter.prompt_text(record.prompt))
    assert len(full) > 3000 and pair.prompt == full[-48:]   # the end: the question and the assistant header
    assert "FINAL QUESTION?" in formatter.tokenizer.decode(pair.prompt)
    assert len(pair.chosen) <= 5


# -- alpaca_eval files ---------------------------------------------------------------------------------------------
def test_an_eval_file_that_is_not_utf8_is_named(tmp_path):
    """A Latin-1 eval file raised UnicodeDecodeError: an internal error, exit 1, after the training."""
    from pobench.errors import PobenchError
    from pobench.eval.alpaca_set import load_alpaca_eval
    path = tmp_path / "alpaca_latin1.json"
    path.write_bytes('[{"instruction": "caf\u00e9?", "output": "oui"}]'.encode("latin-1"))
    with pytest.raises(PobenchError, match=f"{path}: not UTF-8 text"):
        load_alpaca_eval(str(path))


# -- property-based: the HH transcript parser and the config merge ---------------------------------------------
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
TURN_TEXT = TEXT.filter(lambda t: "\n\nHuman:" not in t and "\n\nAssistant:" not in t)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["Human", "Assistant"]), TURN_TEXT), min_size=1, max_size=6))
def test_hh_parser_round_trips_any_transcript(turns):
    from pobench.data.hh import parse_transcript
    text = "".join(f"\n\n{role}: {content}" for role, content in turns)
    messages = parse_transcript(text)
    assert [m["role"] for m in messages] == [{"Human": "user", "Assistant": "assistant"}[r] for r, _ in turns]
    assert [m["content"] for m in messages] == [c.strip() for _, c in turns]


TRANSCRIPT = st.lists(st.tuples(st.sampled_from(["Human", "Assistant"]), TURN_TEXT), max_size=4).map(
    lambda turns: "".join(f"\n\n{role}: {content}" for role, content in turns))
SKIP_REASONS = {"text_before_first_turn", "no_final_assistant_turn", "prefix_mismatch", "no_prompt", "empty_completion",
                "identical_completions"}


@settings(max_examples=300, deadline=None)
@given(st.one_of(TEXT, TRANSCRIPT), st.one_of(TEXT, TRANSCRIPT, st.just("")), TURN_TEXT)
def test_hh_record_either_parses_or_skips(chosen, rejected, answer):
    """Any pair of strings gives a record or a counted skip with a known reason, never another exception;
    a record's prompt is exactly the shared dialogue before the final assistant turns."""
    from pobench.data.hh import RowSkip, hh_record, parse_transcript
    for c, r in ((chosen, rejected), (chosen + "\n\nAssistant: " + answer, chosen + "\n\nAssistant: x" + answer)):
        try:
            record = hh_record({"chosen": c, "rejected": r}, "r")
        except RowSkip as skip:
            assert skip.reason in SKIP_REASONS
            continue
        assert record.chosen and record.rejected and record.prompt
        assert record.prompt == parse_transcript(c)[:-1] == parse_transcript(r)[:-1]


KEYS = st.sampled_from(["a", "b", "c", "lr", "beta"])
NESTED = st.recursive(st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=5), st.none()),
                      lambda children: st.dictionaries(KEYS, children, max_size=4), max_leaves=12)
DICTS = st.dictionaries(KEYS, NESTED, max_size=4)


def _leaves(d: dict, prefix=()) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_leaves(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


@settings(max_examples=300, deadline=None)
@given(DICTS, DICTS, DICTS)
def test_deep_merge_laws(a, b, c):
    from pobench.config import deep_merge
    snapshot = json.dumps([a, b], sort_keys=True, default=str)
    merged = deep_merge(a, b)
    assert json.dumps([a, b], sort_keys=True, default=str) == snapshot       # inputs untouched
    assert deep_merge(merged, b) == merged                                   # idempotent in the override
    assert deep_merge(a, {}) == a and deep_merge({}, b) == b
    layered = deep_merge(deep_merge(a, b), c)                                 # how resolve() folds its layers
    for path, value in _leaves(c).items():
        node = layered
        for k in path:
            node = node[k]
        assert node == value or (isinstance(value, dict) and not value)
    for path, value in _leaves(b).items():                                   # every override leaf wins
        node = merged
        for k in path:
            node = node[k]
        assert node == value or (isinstance(value, dict) and not value)
    for path, value in _leaves(a).items():             # a base leaf survives unless b overrides a path to it
        overridden = any(_has_path(b, path[:i]) and not (isinstance(_get(b, path[:i]), dict) and
                                                        isinstance(_get(a, path[:i]), dict))
                         for i in range(1, len(path) + 1))
        if not overridden:
            assert _get(merged, path) == value or (isinstance(value, dict) and not value)


def _has_path(d, path) -> bool:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return False
        d = d[k]
    return True


def _get(d, path):
    for k in path:
        d = d[k]
    return d


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["train.lr", "train.batch_size", "dpo.beta", "data.eval_size"]),
                          st.one_of(st.integers(1, 99), st.sampled_from(["1e-6", "0.5", "true", "x"]))),
                max_size=5))
def test_set_overrides_follow_precedence(items):
    """--set key=value pairs: the last value of a key wins, and lands at the dotted path."""
    from pobench.config import parse_set
    parsed = parse_set([f"{k}={v}" for k, v in items])
    last = {k: v for k, v in items}
    typed = {"1e-6": 1e-6, "0.5": 0.5, "true": True, "x": "x"}
    for key, value in last.items():
        section, name = key.split(".")
        assert parsed[section][name] == (value if isinstance(value, int) else typed[value])


LR = st.one_of(st.none(), st.floats(min_value=1e-9, max_value=1.0))


@settings(max_examples=100, deadline=None)
@given(LR, LR, LR, LR)
def test_resolve_takes_the_highest_layer_that_sets_a_key(suite_lr, file_lr, set_lr, scoped_beta):
    """suite < algorithm defaults < --config < --set, for a train key and for an algorithm key (with the
    `<algo>.key` scope of --set above the run-wide `algorithm.key` of --config)."""
    from pobench import config as C
    from pobench.registry import algorithm_defaults, get_algorithm, load_suite
    suite = load_suite("hh-rlhf")
    if suite_lr is not None:
        suite = C.deep_merge(suite, {"train": {"lr": suite_lr}})
    file_cfg = {"train": {"lr": file_lr}} if file_lr is not None else {}
    file_cfg["algorithm"] = {"beta": 0.3}
    set_cfg = {"train": {"lr": set_lr}} if set_lr is not None else {}
    if scoped_beta is not None:
        set_cfg["dpo"] = {"beta": scoped_beta}
    dpo = get_algorithm("dpo")
    cfg = C.resolve(suite, "dpo", algorithm_defaults(dpo), file_cfg, set_cfg, ["dpo"])
    want_lr = next(v for v in (set_lr, file_lr, suite_lr, load_suite("hh-rlhf")["train"]["lr"]) if v is not None)
    assert cfg.train.lr == pytest.approx(want_lr)
    assert cfg.algorithm["beta"] == pytest.approx(scoped_beta if scoped_beta is not None else 0.3)
