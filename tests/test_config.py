"""Config layering, validation, --set parsing, deep_merge, and the shipped suites."""
from __future__ import annotations

import copy

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pobench.config import (DataConfig, RunConfig, TrainConfig, _build, _plain, check_new_config, deep_merge, dump,
                            load_yaml, parse_set, read_yaml, resolve)
from pobench.errors import PobenchError
from pobench.registry import algorithm_defaults, get_algorithm, load_suite, suite_files

DPO_DEFAULTS = {"beta": 0.1, "label_smoothing": 0.0, "loss_type": "sigmoid"}
SIMPO_DEFAULTS = {"beta": 2.0, "gamma_beta_ratio": 0.5, "label_smoothing": 0.0, "loss_type": "sigmoid"}
DEFAULTS = {"dpo": DPO_DEFAULTS, "simpo": SIMPO_DEFAULTS}
SUITE = {"suite": "toy", "description": "a toy suite",
         "data": {"path": "sample", "sample_train": "x.jsonl", "schema": "hh", "eval_size": 8},
         "model": {"name_or_path": "suite-model"},
         "train": {"lr": 1.0e-5, "batch_size": 2, "max_steps": 7, "warmup_ratio": 0.2}}


def res(algo="dpo", file_cfg=None, set_cfg=None, algos=("dpo", "simpo"), suite=None) -> RunConfig:
    return resolve(SUITE if suite is None else suite, algo, DEFAULTS[algo], file_cfg or {}, set_cfg or {}, list(algos))


def raises(match: str):
    return pytest.raises(PobenchError, match=match)


# -- precedence -----------------------------------------------------------------------------------------------

def test_suite_values_fill_the_config():
    cfg = res()
    assert (cfg.suite, cfg.algorithm_name, cfg.seed, cfg.description) == ("toy", "dpo", 1, "a toy suite")
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.max_steps, cfg.train.warmup_ratio) == (1e-5, 2, 7, 0.2)
    assert cfg.train.grad_accum == TrainConfig().grad_accum          # not in the suite: the dataclass default
    assert cfg.model.name_or_path == "suite-model" and cfg.data.eval_size == 8
    assert cfg.algorithm == DPO_DEFAULTS


def test_precedence_suite_defaults_config_set():
    suite = dict(SUITE, algorithm={"beta": 0.9, "label_smoothing": 0.3})
    file_cfg = {"train": {"lr": 2e-5, "batch_size": 8}, "algorithm": {"beta": 0.2}, "model": {"dtype": "float32"}}
    set_cfg = {"train": {"lr": 3e-5}, "model": {"device": "cpu"}}
    cfg = res(file_cfg=file_cfg, set_cfg=set_cfg, suite=suite)
    assert cfg.train.lr == 3e-5                # --set beats --config
    assert cfg.train.batch_size == 8           # --config beats the suite
    assert cfg.train.max_steps == 7            # the suite where nobody else speaks
    assert cfg.algorithm["beta"] == 0.2        # --config beats the algorithm defaults
    assert cfg.algorithm["label_smoothing"] == 0.0   # algorithm defaults beat the suite
    assert (cfg.model.dtype, cfg.model.device, cfg.model.name_or_path) == ("float32", "cpu", "suite-model")
    assert res(set_cfg={"algorithm": {"beta": 0.4}}, file_cfg=file_cfg).algorithm["beta"] == 0.4


def test_layers_are_not_mutated():
    suite, file_cfg, set_cfg = copy.deepcopy(SUITE), {"dpo": {"beta": 0.3}, "train": {"lr": 1}}, {"simpo": {"beta": 3}}
    before = copy.deepcopy((suite, file_cfg, set_cfg))
    res("dpo", file_cfg, set_cfg, suite=suite)
    res("simpo", file_cfg, set_cfg, suite=suite)
    assert (suite, file_cfg, set_cfg) == before


def test_algorithm_key_applies_to_all_and_algo_key_to_one():
    file_cfg = {"algorithm": {"label_smoothing": 0.1}, "dpo": {"beta": 0.3}, "simpo": {"gamma_beta_ratio": 0.25}}
    dpo, simpo = res("dpo", file_cfg), res("simpo", file_cfg)
    assert dpo.algorithm == {"beta": 0.3, "label_smoothing": 0.1, "loss_type": "sigmoid"}
    assert simpo.algorithm == {"beta": 2.0, "gamma_beta_ratio": 0.25, "label_smoothing": 0.1, "loss_type": "sigmoid"}


def test_scoped_key_beats_algorithm_key_within_a_layer_but_not_a_later_layer():
    assert res(file_cfg={"algorithm": {"beta": 0.2}, "dpo": {"beta": 0.3}}).algorithm["beta"] == 0.3
    assert res(set_cfg={"algorithm": {"beta": 0.2}, "dpo": {"beta": 0.3}}).algorithm["beta"] == 0.3
    assert res(file_cfg={"dpo": {"beta": 0.3}}, set_cfg={"algorithm": {"beta": 0.2}}).algorithm["beta"] == 0.2
    assert res(file_cfg={"algorithm": {"beta": 0.2}}, set_cfg={"dpo": {"beta": 0.3}}).algorithm["beta"] == 0.3


def test_algorithm_key_unknown_to_one_algorithm_is_an_error():
    """`algorithm.k` is for every algorithm of the run: a key only SimPO has must be given as simpo.k."""
    with raises("unknown config key 'algorithm.gamma_beta_ratio' for algorithm 'dpo'"):
        res("dpo", set_cfg={"algorithm": {"gamma_beta_ratio": 0.3}})
    assert res("simpo", set_cfg={"algorithm": {"gamma_beta_ratio": 0.3}}).algorithm["gamma_beta_ratio"] == 0.3


def test_a_key_for_an_algorithm_outside_the_run_is_an_error():
    with raises("unknown config key 'simpo' in --set"):
        res("dpo", set_cfg={"simpo": {"beta": 3.0}}, algos=["dpo"])
    with raises("'dpo' must hold algorithm parameters"):
        res("dpo", file_cfg={"dpo": 0.3})


def test_algorithm_name_and_seed():
    cfg = res(set_cfg={"seed": 5, "algorithm_name": "ignored"})
    assert (cfg.seed, cfg.algorithm_name) == (5, "dpo")


# -- unknown keys and wrong types -----------------------------------------------------------------------------

@pytest.mark.parametrize("where, layer, message", [
    ("file", {"trian": {"lr": 1}}, "unknown config key 'trian' in --config"),
    ("set", {"bogus": 1}, "unknown config key 'bogus' in --set"),
    ("set", {"train": {"lrr": 1e-6}}, "unknown config key 'train.lrr'"),
    ("file", {"data": {"shema": "hh"}}, "unknown config key 'data.shema'"),
    ("file", {"model": {"name": "x"}}, "unknown config key 'model.name'"),
    ("set", {"algorithm": {"betta": 0.1}}, "unknown config key 'algorithm.betta' for algorithm 'dpo'"),
    ("set", {"dpo": {"gamma_beta_ratio": 0.1}}, "unknown config key 'algorithm.gamma_beta_ratio' for algorithm 'dpo'"),
    # a wrong type names the algorithm too (--set rdpo_len.alpha=abc said only 'algorithm.alpha')
    ("set", {"dpo": {"beta": "abc"}}, "config key 'algorithm.beta' for algorithm 'dpo': expected a number"),
])
def test_unknown_keys_are_named(where, layer, message):
    with raises(message):
        res(file_cfg=layer) if where == "file" else res(set_cfg=layer)


def test_unknown_key_in_the_suite_is_named():
    with raises("unknown config key 'trainer'"):
        res(suite=dict(SUITE, trainer={"lr": 1}))


def _suite_file(tmp_path, text: str):
    f = tmp_path / "mine.yaml"
    f.write_text("data:\n  path: x.jsonl\n" + text)
    return f


@pytest.mark.parametrize("text, message", [
    # a nested typo, and a wrong type, named in the suite file rather than as if typed anywhere
    ("train:\n  max_completon_length: 3\n", "unknown config key 'train.max_completon_length' in {f} (known: "),
    ("train:\n  max_steps: two\n", "{f}: config key 'train.max_steps': expected an integer, got 'two'"),
    ("model:\n  dtype: fp16\n", "{f}: config key 'model.dtype': 'fp16' is not one of auto, "),
    # the top-level keys a suite may hold: seed, algorithm_name and algorithm are refused there, so not offered
    ("evaluation: {}\n", "unknown config key 'evaluation' in {f} (known: data, description, eval, model, pool, "
                          "suite, train)$"),
    ("dpo:\n  beta: 0.3\n", "unknown config key 'dpo' in {f} (known: data, description, eval, model, pool, suite, "
                             "train; dpo's parameters go in --config or --set (e.g. --set dpo.beta=0.2), not in a "
                             "suite file)"),
])
def test_a_suite_files_config_errors_name_the_file(tmp_path, text, message):
    """`unknown config key 'train.max_completon_length'` did not say it came from the suite file (rather than
    --config or --set), and listed seed and algorithm_name, which a suite file may not set, as known keys."""
    f = _suite_file(tmp_path, text)
    with pytest.raises(PobenchError) as e:
        load_suite(str(f))
    assert str(e.value).startswith(message.format(f=f).rstrip("$"))
    assert not message.endswith("$") or str(e.value) == message.format(f=f)[:-1]


def test_an_algorithm_section_in_a_suite_is_refused(tmp_path):
    """`algorithm:` in a suite file was merged under the algorithm's defaults, which outranked it: ignored without a
    word, while `dpo:` was an error listing `algorithm` as a known key."""
    f = _suite_file(tmp_path, "algorithm:\n  beta: 0.3\n")
    with raises(f"^{f}: 'algorithm' does not go in a suite file: algorithm parameters are set with --config \\(an "
                f"`algorithm:` section for every algorithm, `dpo:` for one\\) or --set \\(e.g. --set dpo.beta=0.2\\)$"):
        load_suite(str(f))


def test_config_errors_name_the_layer_they_come_from():
    with raises("^unknown config key 'train.lrr' in --set \\(known: "):
        res(set_cfg={"train": {"lrr": 1}})
    with raises("^--config study.yaml: config key 'train.lr': expected a number, got 'fast'$"):
        resolve(SUITE, "dpo", DPO_DEFAULTS, {"train": {"lr": "fast"}}, {}, ["dpo"], file_origin="--config study.yaml")
    with raises("^unknown config key 'data.shema' in --config study.yaml \\(known: "):
        resolve(SUITE, "dpo", DPO_DEFAULTS, {"data": {"shema": "hh"}}, {}, ["dpo"], file_origin="--config study.yaml")
    # seed, suite and algorithm_name are chosen with --seeds, --suite and --algo: not offered as known keys there
    with pytest.raises(PobenchError) as e:
        res(set_cfg={"bogus": 1})
    known = str(e.value).split("(known: ")[1]
    assert "algorithm, data, description, eval, model, pool, train, or an algorithm name" in known


@pytest.mark.parametrize("item", ["data.path=", "data.path= "])
def test_an_empty_data_path_is_refused(item):
    """`--set data.path=` was the path "", which reads as the current folder: its split files were trained on."""
    with raises("config key 'data.path': empty"):
        res(set_cfg=parse_set([item]))


def test_synthetic_settings_are_refused_for_other_data():
    """data.synthetic is read by the synthetic suite's loader only: for any other data.path it was ignored without a
    word (and saved in config.yaml as if it had applied)."""
    with raises(r"config key 'data.synthetic': set \(label_noise, task_seed\), but data.path is 'sample'"):
        res(set_cfg=parse_set(["data.synthetic.task_seed=3", "data.synthetic.label_noise=0.1"]))
    synthetic = dict(SUITE, data={"path": "synthetic", "eval_size": 8})
    assert res(suite=synthetic, set_cfg=parse_set(["data.synthetic.task_seed=3"])).data.synthetic == {"task_seed": 3}


@pytest.mark.parametrize("name", ["../../escape", "a/b", "a\\b", "..", ".", "", "x\ny"])
def test_a_suite_name_must_be_a_folder_name_under_the_results_root(tmp_path, name):
    """A suite's name is the folder <out>/<suite>: `suite: ../../escape` wrote its runs two levels above --out."""
    with raises("config key 'suite': .* is not a suite name"):
        res(suite=dict(SUITE, suite=name))
    f = tmp_path / "mine.yaml"
    f.write_text(yaml.safe_dump({"suite": name, "data": {"path": "x.jsonl"}}))
    with raises(f"{f}: 'suite': .* is not a suite name"):
        load_suite(str(f))


def test_suite_names_of_letters_digits_dots_and_dashes_pass_and_saved_configs_are_read_as_they_are():
    for name in ("my-suite_2.0", "my suite", "lora+dpo", "x..y", "réglages"):   # suite files' stems that ran before
        assert res(suite=dict(SUITE, suite=name)).suite == name
    # a run's config.yaml (read back by eval and report) is not held to checks newer than the run
    saved = _build(RunConfig, {"suite": "../old", "data": {"path": "x.jsonl", "synthetic": {"task_seed": 1}}}, "")
    with raises("config key 'suite'"):
        check_new_config(saved)


@pytest.mark.parametrize("layer, message", [
    ({"train": {"lr": "abc"}}, "config key 'train.lr': expected a number, got 'abc'"),
    ({"train": {"lr": True}}, "config key 'train.lr': expected a number"),
    ({"train": {"max_steps": 1.5}}, "config key 'train.max_steps': expected an integer, got 1.5"),
    ({"train": {"max_steps": "10"}}, "config key 'train.max_steps': expected an integer"),
    ({"train": {"batch_size": True}}, "config key 'train.batch_size': expected an integer"),
    ({"train": {"deterministic": "yes please"}}, "config key 'train.deterministic': expected true or false"),
    ({"model": {"name_or_path": ["a"]}}, "config key 'model.name_or_path': expected a string"),
    ({"data": {"eval_split": {"a": 1}}}, "config key 'data.eval_split'"),
    ({"train": 5}, r"config key 'train': expected a mapping, got 5"),
    ({"algorithm": 3}, "config key 'algorithm': expected a mapping"),
    ({"seed": "one"}, "config key 'seed': expected an integer"),
    ({"algorithm": {"beta": "high"}}, "config key 'algorithm.beta' for algorithm 'dpo': expected a number, got 'high'"),
    ({"dpo": {"label_smoothing": [0.1]}}, "config key 'algorithm.label_smoothing' for algorithm 'dpo': expected a number"),
    ({"data": {"schema": "hhh"}}, "config key 'data.schema': 'hhh' is not one of auto, hh"),
    ({"data": {"raw_rejected": "wrost"}}, "config key 'data.raw_rejected': 'wrost' is not one of worst, random"),
    ({"model": {"dtype": "fp16"}}, "config key 'model.dtype': 'fp16' is not one of auto, float32"),
    ({"model": {"attn_implementation": "flash_attention_2"}},
     "config key 'model.attn_implementation': 'flash_attention_2' is not one of sdpa, eager"),
    ({"model": {"top_p_method": "gumbel"}}, "config key 'model.top_p_method': 'gumbel' is not one of auto, select"),
])
def test_wrong_types_are_named(layer, message):
    with raises(message):
        res(set_cfg=layer)


def test_evaluations_decoding_record_names_how_it_draws_only_where_set():
    """The record is the key of the reference answers' store: at the defaults it is what it was before compiled
    steps and "reject" draws were keys (stores keep their keys), with either set it names it."""
    from pobench.eval.runner import decoding_record
    default = decoding_record(res())
    assert "compile_decoding" not in default and "top_p_method" not in default
    assert decoding_record(res(set_cfg=parse_set(["model.top_p_method=radix"]))) == default
    assert decoding_record(res(set_cfg=parse_set(["model.top_p_method=reject"]))) == default   # top_p 1: no nucleus
    nucleus = decoding_record(res(set_cfg=parse_set(["eval.top_p=0.9"])))
    changed = decoding_record(res(set_cfg=parse_set(["eval.top_p=0.9", "model.top_p_method=reject",
                                                     "model.compile_decoding=true"])))
    assert changed == {**nucleus, "compile_decoding": True, "top_p_method": "reject"}


def test_numbers_coerce():
    cfg = res(set_cfg=parse_set(["train.lr=1e-6", "train.weight_decay=0", "train.max_grad_norm=2",
                                 "dpo.beta=1", "train.max_steps=3.0", "data.eval_split=null"]))
    assert cfg.train.lr == 1e-6 and isinstance(cfg.train.lr, float)      # YAML reads '1e-6' as a string
    assert cfg.train.weight_decay == 0.0 and isinstance(cfg.train.weight_decay, float)
    assert cfg.train.max_grad_norm == 2.0 and isinstance(cfg.train.max_grad_norm, float)
    assert cfg.algorithm["beta"] == 1.0 and isinstance(cfg.algorithm["beta"], float)
    assert cfg.train.max_steps == 3 and isinstance(cfg.train.max_steps, int)
    assert cfg.data.eval_split is None
    assert res(set_cfg={"train": {"lr": "5E-7"}, "data": {"hub_id": 12}}).data.hub_id == "12"


# -- --set parsing --------------------------------------------------------------------------------------------

def test_parse_set_nesting_and_values():
    got = parse_set(["train.lr=1e-6", "dpo.beta=0.2", "train.batch_size=8", "model.chat_template=a=b",
                     "data.eval_split=null", "a.b.c.d=true", "seed=3", "model.name_or_path=", " data.path = x.jsonl"])
    assert got == {"train": {"lr": 1e-6, "batch_size": 8}, "dpo": {"beta": 0.2},
                   "model": {"chat_template": "a=b", "name_or_path": ""}, "data": {"eval_split": None, "path": "x.jsonl"},
                   "a": {"b": {"c": {"d": True}}}, "seed": 3}
    assert parse_set([]) == {}


@pytest.mark.parametrize("items, message", [
    (["train.lr"], "--set train.lr: expected key=value"),
    (["train=1", "train.lr=2"], "'train' is set twice"),
    (["train.lr=[1,"], "--set train.lr=\\[1,: bad value for 'train.lr'"),
])
def test_parse_set_errors(items, message):
    with raises(message):
        parse_set(items)


# -- deep_merge -----------------------------------------------------------------------------------------------

_KEYS = st.sampled_from(["a", "b", "c", "lr", "beta"])
_LEAVES = st.one_of(st.integers(-3, 3), st.text(max_size=3), st.none(), st.lists(st.integers(), max_size=2))
_TREES = st.recursive(_LEAVES, lambda children: st.dictionaries(_KEYS, children, max_size=4), max_leaves=12)
_DICTS = st.dictionaries(_KEYS, _TREES, max_size=4)


def _leaves(d: dict, prefix=()):
    """(path, value) for every non-dict value, and for every empty dict (it is a value too)."""
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def _get(d, path):
    for k in path:
        d = d[k]
    return d


def _overridden(b: dict, path) -> bool:
    """Whether merging b over a replaces a's value at `path`: b has a non-dict on the way, or anything at the end."""
    node = b
    for i, k in enumerate(path):
        if not isinstance(node, dict) or k not in node:
            return False
        node = node[k]
        if i < len(path) - 1 and not isinstance(node, dict):
            return True
    return True


@settings(max_examples=300, deadline=None)
@given(_DICTS, _DICTS)
def test_deep_merge_properties(a, b):
    a0, b0 = copy.deepcopy(a), copy.deepcopy(b)
    merged = deep_merge(a, b)
    assert (a, b) == (a0, b0)                                   # inputs untouched
    for path, value in _leaves(b):
        got = _get(merged, path)
        assert got == value or (value == {} and isinstance(got, dict))   # every leaf of b wins
    for path, value in _leaves(a):
        if not _overridden(b, path):
            assert _get(merged, path) == value                  # leaves only in a survive
    merged_leaves = dict(_leaves(merged))
    a_leaves, b_leaves = dict(_leaves(a)), dict(_leaves(b))
    assert all(p in a_leaves or p in b_leaves for p in merged_leaves)   # nothing invented
    # the result shares no mutable structure with the inputs
    for path, value in _leaves(merged):
        if isinstance(value, list):
            value.append("x")
    assert (a, b) == (a0, b0)


def test_deep_merge_examples():
    assert deep_merge({"t": {"lr": 1, "bs": 2}, "x": 1}, {"t": {"lr": 3}}) == {"t": {"lr": 3, "bs": 2}, "x": 1}
    assert deep_merge({"t": {"lr": 1}}, {"t": 5}) == {"t": 5}
    assert deep_merge({"t": 5}, {"t": {"lr": 1}}) == {"t": {"lr": 1}}
    assert deep_merge({"t": {"lr": 1}}, {"t": None}) == {"t": None}


# -- the shipped suites, read_yaml and dump -------------------------------------------------------------------

@pytest.mark.parametrize("suite", ["hh-rlhf", "ultrafeedback"])
@pytest.mark.parametrize("algo", ["dpo", "simpo"])
def test_shipped_suites_resolve(suite, algo):
    assert suite in suite_files()
    defaults = algorithm_defaults(get_algorithm(algo))
    assert defaults == DEFAULTS[algo]
    cfg = resolve(load_suite(suite), algo, defaults, {}, {}, ["dpo", "simpo"])
    assert (cfg.suite, cfg.algorithm_name) == (suite, algo)
    assert cfg.algorithm == DEFAULTS[algo]
    assert cfg.data.sample_train and cfg.data.hub_id and cfg.description
    assert cfg.data.schema == {"hh-rlhf": "hh", "ultrafeedback": "auto"}[suite]
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 5e-6


def test_load_suite_by_path(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text(yaml.safe_dump({"data": {"path": "x.jsonl"}, "train": {"max_steps": 2}}))
    suite = load_suite(str(f))
    assert suite["suite"] == "mine"
    assert res(suite=suite).train.max_steps == 2
    with raises("unknown suite 'nope'"):
        load_suite("nope")


@pytest.mark.parametrize("name", ["bad/nosuch.yaml", "nosuch.yaml", "nosuch.yml", "suites/mine"])
def test_a_missing_suite_path_is_no_such_file(tmp_path, monkeypatch, name):
    """A name with a folder in it, or ending .yaml/.yml, is a path: a missing one was "unknown suite
    'bad/nosuch.yaml' (known: hh-rlhf, ...)", as if it were a shipped suite's name misspelt."""
    monkeypatch.chdir(tmp_path)
    with raises(f"^{name}: no such suite file$"):
        load_suite(name)


@pytest.mark.parametrize("algo", ["dpo", "simpo"])
def test_dump_round_trips(algo):
    cfg = resolve(load_suite("ultrafeedback"), algo, DEFAULTS[algo], {"train": {"lr": 1e-6}},
                  parse_set(["data.eval_split=null", "seed=4", f"{algo}.beta=0.25"]), ["dpo", "simpo"])
    text = dump(cfg)
    loaded = yaml.safe_load(text)
    assert loaded == cfg.to_dict()
    assert _build(RunConfig, loaded, "") == cfg
    # a saved config.yaml given as --config (over any suite) reproduces the run's config
    assert resolve(SUITE, algo, DEFAULTS[algo], loaded, {}, [algo]) == cfg
    # as the suite layer its algorithm parameters would lose to the algorithm defaults (suite < defaults)
    assert resolve(loaded, algo, DEFAULTS[algo], {}, {}, [algo]).algorithm == DEFAULTS[algo]
    assert (loaded["seed"], loaded["algorithm"]["beta"], loaded["data"]["eval_split"]) == (4, 0.25, None)


def test_read_yaml_errors(tmp_path):
    with raises("no such file"):
        read_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1,\n")
    with raises(f"{bad}:3: bad YAML"):
        read_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with raises("expected a mapping of keys at the top level"):
        read_yaml(listy)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"description: caf\xe9\n")
    with raises("not UTF-8"):
        read_yaml(latin)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert read_yaml(empty) == {}


def test_data_config_defaults_are_valid():
    assert DataConfig().schema == "auto" and DataConfig().raw_rejected == "worst"


def test_algorithm_choices_are_checked_at_resolve_time():
    from pobench.registry import get_algorithm, load_suite
    dpo = get_algorithm("dpo")
    with pytest.raises(PobenchError, match="algorithm.loss_type"):
        resolve(load_suite("hh-rlhf"), "dpo", algorithm_defaults(dpo), {}, {"dpo": {"loss_type": "foo"}}, ["dpo"],
                  dpo.choices)
    simpo = get_algorithm("simpo")
    with pytest.raises(PobenchError, match="ipo"):
        resolve(load_suite("hh-rlhf"), "simpo", algorithm_defaults(simpo), {}, {"simpo": {"loss_type": "ipo"}},
                  ["simpo"], simpo.choices)


def test_rso_needs_two_accepted_samples_for_a_pair():
    """num_accepted=1 passed the check and failed at step 1 (after the model, reference cache and pools were
    built) with a message about tied scores."""
    from pobench.registry import get_algorithm, load_suite
    rso = get_algorithm("rso")
    with raises("config key 'algorithm.num_accepted' for algorithm 'rso': must be at least 2"):
        resolve(load_suite("hh-rlhf"), "rso", algorithm_defaults(rso), {}, {"rso": {"num_accepted": 1}}, ["rso"],
                rso.choices)
    assert resolve(load_suite("hh-rlhf"), "rso", algorithm_defaults(rso), {}, {"rso": {"num_accepted": 2}}, ["rso"],
                   rso.choices).algorithm["num_accepted"] == 2


def test_a_config_file_for_a_whole_study_serves_a_run_of_some_of_its_algorithms(tmp_path):
    """--config with sections for dpo and simpo, run with --algo dpo: the simpo section is left out (it was an
    error, 'unknown config key simpo'); the run goes on to its next check (here: the model folder, which is
    missing, so nothing trains). A --set for an algorithm not in the run stays an error."""
    from typer.testing import CliRunner
    from pobench.cli import app
    from pobench.errors import PobenchError
    study = tmp_path / "study.yaml"
    study.write_text("train:\n  lr: 1.0e-6\ndpo:\n  beta: 0.2\nsimpo:\n  beta: 2.5\n")
    common = ["run", "--algo", "dpo", "--config", str(study), "--model", str(tmp_path / "no_model"), "--out",
              str(tmp_path / "r")]
    result = CliRunner().invoke(app, common)
    assert isinstance(result.exception, PobenchError) and "no such model folder" in str(result.exception)
    result = CliRunner().invoke(app, [*common, "--set", "simpo.beta=3"])
    assert isinstance(result.exception, PobenchError) and "unknown config key 'simpo'" in str(result.exception)


def test_a_resumed_run_may_change_how_often_it_saves_and_logs_but_nothing_it_computes():
    """Runs configured before train.save_every defaulted to 50 hold 0 in config.yaml: their resume must not be
    refused for it. Anything that changes the computation still is."""
    from pobench.config import changed_keys
    cfg = res()
    saved = cfg.to_dict()
    saved["train"] = {**saved["train"], "save_every": 0, "log_every": 5, "wandb": True}
    assert changed_keys(saved, cfg) == []
    saved["train"]["warmup_ratio"] = 0.5
    assert changed_keys(saved, cfg) == [f"train.warmup_ratio 0.5 -> {cfg.train.warmup_ratio!r}"]


@pytest.mark.parametrize("raw, value", [("1e-6", 1e-6), ("-3e-7", -3e-7), ("5", 5), ("0.1", 0.1), ("true", True),
                                        ("False", False), ("no", "no"), ("off", "off"), ("yes", "yes"),
                                        ("None", None), ("null", None), ("~", None), ("none", "none"),
                                        ("010", "010"), ("1:30", "1:30"), ("2026-11-27", "2026-11-27"),
                                        ("0x_", "0x_"), ("._", "._"), ("0x1F", 31), (".5", 0.5)])
def test_command_line_values_read_as_yaml_1_2(raw, value):
    """`--set eval.judge=off` was the boolean False (YAML 1.1), `--set data.eval_split=None` the string 'None',
    `1e-6` a string and `1:30` the number 90."""
    assert parse_set([f"x.y={raw}"]) == {"x": {"y": value}}
    assert type(_plain(parse_set([f"x.y={raw}"])["x"]["y"])) is type(value)


@pytest.mark.parametrize("raw", ["1.10", "12e4", "1_000", "0x1F", "1e3"])
def test_a_number_typed_for_a_text_setting_keeps_its_text(raw):
    """`--set data.hub_data_dir=12e4` gave the folder "120000.0"."""
    cfg = res(set_cfg=parse_set([f"data.hub_data_dir={raw}", "train.batch_size=8", "train.lr=1e-6", "dpo.beta=0.2"]))
    assert cfg.data.hub_data_dir == raw
    assert (type(cfg.train.batch_size), type(cfg.train.lr), type(cfg.algorithm["beta"])) == (int, float, float)
    assert yaml.safe_load(dump(cfg))["data"]["hub_data_dir"] == raw
    # a plugin's text parameter too (the algorithm section was made plain before its defaults typed it)
    cfg = resolve(SUITE, "dpo", {**DPO_DEFAULTS, "tag": "x"}, {}, parse_set([f"dpo.tag={raw}"]), ["dpo"])
    assert cfg.algorithm["tag"] == raw and yaml.safe_load(dump(cfg))["algorithm"]["tag"] == raw


def test_a_config_file_reads_as_yaml_1_2(tmp_path):
    """A --config file and the command line read alike: `off` is text, `1e-6` a number (YAML 1.1 had them
    False and the text '1e-6')."""
    path = tmp_path / "c.yaml"
    path.write_text("eval:\n  judge: off\ntrain:\n  lr: 1e-6\ndata:\n  train_split: 2026-11-27\n")
    assert read_yaml(path) == {"eval": {"judge": "off"}, "train": {"lr": 1e-6}, "data": {"train_split": "2026-11-27"}}


@pytest.mark.parametrize("text", ["off", "no", "1e-6", "2026-11-27", "1:30", "010", "None", "True", ".inf", "0x1F"])
def test_config_yaml_reads_back_the_same_under_yaml_1_1_and_1_2(text):
    """config.yaml quotes a text that either YAML version reads as something else (the report, alpaca_eval and a
    user's script read it with PyYAML's 1.1)."""
    cfg = res(set_cfg={"description": text, "data": {"hub_data_dir": text}})
    saved = dump(cfg)
    assert yaml.safe_load(saved)["description"] == text == load_yaml(saved)["description"]
    assert yaml.safe_load(saved) == load_yaml(saved) == cfg.to_dict()


def test_a_key_given_twice_in_a_config_file_is_an_error(tmp_path):
    """PyYAML keeps the last of two equal keys without a word: a study file's second `lr:` overrode the first."""
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1.0e-6\n  batch_size: 4\n  lr: 1.0e-5\n")
    with raises(f"{path}:4: bad YAML \\(key 'lr' given twice\\)"):
        read_yaml(path)
    with raises(f"{tmp_path}: cannot read"):
        read_yaml(tmp_path)


def test_yaml_anchors_and_merge_keys_still_read(tmp_path):
    """The repeated-key check constructed the merge key `<<` as a key and failed on every anchor merge."""
    path = tmp_path / "c.yaml"
    path.write_text("common: &c\n  lr: 1.0e-6\n  batch_size: 4\ntrain:\n  <<: *c\n  lr: 2.0e-6\n")
    assert read_yaml(path)["train"] == {"lr": 2e-6, "batch_size": 4}
    path.write_text("[a]: 1\n")
    with raises(f"{path}:1: bad YAML \\(a key must be a scalar"):
        read_yaml(path)


@pytest.mark.parametrize("loss_type", ["ipo", "hinge"])
def test_label_smoothing_with_a_loss_that_has_none_is_refused(loss_type):
    """cDPO's label smoothing is a term of the sigmoid loss: with ipo or hinge it was ignored without a word."""
    with raises("'algorithm.label_smoothing' for algorithm 'dpo': applies to loss_type sigmoid only"):
        res(set_cfg={"dpo": {"label_smoothing": 0.1, "loss_type": loss_type}})
    assert res(set_cfg={"dpo": {"loss_type": loss_type}}).algorithm["loss_type"] == loss_type
