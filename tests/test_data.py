"""Data layer: HH transcripts, the three UltraFeedback schemas, local file formats, and bad input.

No model is loaded here; everything runs on the shipped samples and on tiny hand-written fixtures.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pobench.config import DataConfig
from pobench.data import load_suite_data
from pobench.data.hh import RowSkip, hh_record, parse_transcript
from pobench.data.loading import SAMPLES_DIR, detect_schema, parse_rows, read_json_rows, read_rows
from pobench.data.ultrafeedback import binarized_record, onpolicy_record, raw_record
from pobench.errors import PobenchError

FIXTURES = Path(__file__).parent / "fixtures"
HH_SAMPLE = SAMPLES_DIR / "hh-rlhf" / "harmless-base-test-2000.jsonl.gz"
UF_TRAIN = SAMPLES_DIR / "ultrafeedback" / "train_prefs-1000.jsonl.gz"
UF_TEST = SAMPLES_DIR / "ultrafeedback" / "test_prefs-100.jsonl.gz"
UF_RAW = FIXTURES / "ultrafeedback-raw.jsonl"
UF_ONPOLICY = FIXTURES / "ultrafeedback-onpolicy.jsonl"


def render(turns: list[tuple[str, str]]) -> str:
    """HH format: every turn introduced by a blank line and 'Human: ' / 'Assistant: '."""
    names = {"user": "Human", "assistant": "Assistant"}
    return "".join(f"\n\n{names[role]}: {text}" for role, text in turns)


def hh_row(prompt: list[tuple[str, str]], chosen: str, rejected: str) -> dict:
    return {"chosen": render(prompt + [("assistant", chosen)]), "rejected": render(prompt + [("assistant", rejected)])}


def load(path: Path, **kw):
    name, rows = read_rows(str(path), "train")
    return parse_rows(name, rows, **kw)


def content(record) -> tuple:
    """A record without its id (ids carry the source file's name)."""
    return (record.prompt, record.chosen, record.rejected, record.candidates, record.scores)


# -- HH transcripts ------------------------------------------------------------------------------------------

def test_parse_transcript_multi_turn():
    text = "\n\nHuman: Hi there.\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke.\n\nAssistant: No."
    assert parse_transcript(text) == [
        {"role": "user", "content": "Hi there."},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "No."},
    ]


def test_parse_transcript_keeps_newlines_inside_a_turn_and_strips_the_ends():
    text = "\n\nHuman: line one\nline two\n\nmore text  \n\nAssistant:   answer\n"
    assert parse_transcript(text) == [
        {"role": "user", "content": "line one\nline two\n\nmore text"},
        {"role": "assistant", "content": "answer"},
    ]


def test_parse_transcript_accepts_a_missing_leading_blank_line():
    assert parse_transcript("Human: a\n\nAssistant: b") == [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert parse_transcript("Assistant: b") == [{"role": "assistant", "content": "b"}]


def test_parse_transcript_text_before_the_first_turn_is_a_skip():
    with pytest.raises(RowSkip) as e:
        parse_transcript("Preamble.\n\nHuman: a\n\nAssistant: b")
    assert e.value.reason == "text_before_first_turn"
    with pytest.raises(RowSkip):
        parse_transcript(" Human: a\n\nAssistant: b")   # not at the very start: not a turn marker


def test_parse_transcript_marker_needs_the_blank_line():
    # "Human:" inside a turn, without a preceding blank line, is text, not a new turn
    assert parse_transcript("\n\nHuman: I said\nHuman: hi\n\nAssistant: ok") == [
        {"role": "user", "content": "I said\nHuman: hi"}, {"role": "assistant", "content": "ok"}]


def test_hh_record_splits_prompt_and_final_answers():
    prompt = [("user", "What is 2+2?"), ("assistant", "Why?"), ("user", "Just tell me.")]
    rec = hh_record(hh_row(prompt, "4.", "5."), "f:7")
    assert rec.prompt == [{"role": r, "content": c} for r, c in prompt]
    assert rec.chosen == "4." and rec.rejected == "5."
    assert rec.candidates == [] and rec.scores is None and rec.id == "f:7"


@pytest.mark.parametrize("row, reason", [
    ({"chosen": "\n\nHuman: a\n\nAssistant: yes", "rejected": "\n\nHuman: b\n\nAssistant: no"}, "prefix_mismatch"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: x\n\nHuman: c\n\nAssistant: yes",
      "rejected": "\n\nHuman: a\n\nAssistant: y\n\nHuman: c\n\nAssistant: no"}, "prefix_mismatch"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: x\n\nHuman: b\n\nAssistant: yes",     # one turn more
      "rejected": "\n\nHuman: a\n\nAssistant: no"}, "prefix_mismatch"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: yes\n\nHuman: more?", "rejected": "\n\nHuman: a\n\nAssistant: no"},
     "no_final_assistant_turn"),
    ({"chosen": "\n\nHuman: a", "rejected": "\n\nHuman: a"}, "no_final_assistant_turn"),
    ({"chosen": "", "rejected": ""}, "no_final_assistant_turn"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: ", "rejected": "\n\nHuman: a\n\nAssistant: no"}, "empty_completion"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: yes", "rejected": "\n\nHuman: a\n\nAssistant:   \n"}, "empty_completion"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: same", "rejected": "\n\nHuman: a\n\nAssistant:  same"},
     "identical_completions"),
    ({"chosen": "\n\nAssistant: yes", "rejected": "\n\nAssistant: no"}, "no_prompt"),
    ({"chosen": "intro\n\nHuman: a\n\nAssistant: yes", "rejected": "intro\n\nHuman: a\n\nAssistant: no"},
     "text_before_first_turn"),
])
def test_hh_record_skips(row, reason):
    with pytest.raises(RowSkip) as e:
        hh_record(row, "f:1")
    assert e.value.reason == reason


# Random dialogues: text free of the turn markers, rendered in HH format and parsed back.
_ALPHABET = st.sampled_from(list("abcXYZ :.?!\n\t-'\"é中") + ["Human", "Assistant", "Human:", "\n\n", "\r\n"])
_TEXT = st.lists(_ALPHABET, max_size=12).map("".join).filter(
    lambda s: "\n\nHuman:" not in s and "\n\nAssistant:" not in s)


@st.composite
def dialogues(draw, min_turns=1, max_turns=7):
    n = draw(st.integers(min_turns, max_turns))
    first = draw(st.sampled_from(["user", "assistant"]))
    other = {"user": "assistant", "assistant": "user"}
    roles = [first]
    for _ in range(n - 1):
        roles.append(other[roles[-1]])
    return [(role, draw(_TEXT)) for role in roles]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(dialogues(), st.booleans())
def test_parse_transcript_round_trip(turns, drop_leading_blank_line):
    text = render(turns)
    if drop_leading_blank_line:
        text = text[2:]          # "Human: ..." at the very start, as in a few upstream rows
    parsed = parse_transcript(text)
    assert [m["role"] for m in parsed] == [role for role, _ in turns]
    assert [m["content"] for m in parsed] == [t.strip() for _, t in turns]


@settings(max_examples=200, deadline=None)
@given(dialogues(min_turns=1, max_turns=6).filter(lambda d: d[-1][0] == "user"), _TEXT, _TEXT)
def test_hh_record_round_trip(prompt, chosen, rejected):
    assume(chosen.strip() and rejected.strip() and chosen.strip() != rejected.strip())   # else: no preference
    rec = hh_record(hh_row(prompt, chosen, rejected), "x:1")
    assert rec.prompt == [{"role": r, "content": t.strip()} for r, t in prompt]
    assert (rec.chosen, rec.rejected) == (chosen.strip(), rejected.strip())


# -- the shipped samples --------------------------------------------------------------------------------------

def test_hh_sample_parses_with_known_skips():
    loaded = parse_rows(str(HH_SAMPLE), read_json_rows(HH_SAMPLE), schema="auto")
    assert loaded.rows_read == 2000
    assert len(loaded.records) == 1992
    # upstream defects: 4 empty answers, 4 rows where a completion contains extra turns
    assert dict(loaded.skipped) == {"empty_completion": 4, "prefix_mismatch": 4}
    for rec in loaded.records:
        assert rec.prompt and rec.prompt[-1]["role"] == "user"
        assert all(m["role"] in ("user", "assistant") for m in rec.prompt)
        assert rec.chosen.strip() and rec.rejected.strip()
        assert rec.id.startswith(HH_SAMPLE.name + ":")
    assert sum(r.chosen != r.rejected for r in loaded.records) >= 0.95 * len(loaded.records)
    # roles alternate, except in 4 upstream dialogues with two assistant turns in a row (kept as they are)
    repeats = [r.id for r in loaded.records if any(a["role"] == b["role"] for a, b in zip(r.prompt, r.prompt[1:]))]
    assert len(repeats) == 4
    # ids are unique and carry the 1-based line number
    assert len({r.id for r in loaded.records}) == len(loaded.records)
    assert loaded.records[0].id == f"{HH_SAMPLE.name}:1"


def test_hh_suite_data_holds_out_the_last_records():
    cfg = DataConfig(path="sample", hub_id="Anthropic/hh-rlhf", sample_train="hh-rlhf/harmless-base-test-2000.jsonl.gz",
                     sample_eval=None, schema="hh", eval_size=64)
    data = load_suite_data(cfg)
    assert (len(data.train), len(data.eval)) == (1992 - 64, 64)
    assert not {r.id for r in data.train} & {r.id for r in data.eval}
    assert data.report["train_skipped"] == {"empty_completion": 4, "prefix_mismatch": 4}
    assert data.report["eval_skipped"] == {}
    assert data.report["train_rows"] == 2000
    limited = load_suite_data(DataConfig(**{**cfg.__dict__, "max_train_records": 10}))
    assert len(limited.train) == 10 and limited.eval == data.eval


def test_ultrafeedback_binarized_samples():
    train = load(UF_TRAIN)
    test = load(UF_TEST)
    assert detect_schema(next(read_json_rows(UF_TRAIN))[1]) == "ultrafeedback-binarized"
    # 4 training rows and 1 held-out row hold the same text as chosen and rejected: no preference, skipped
    assert (train.rows_read, len(train.records), dict(train.skipped)) == \
        (1000, 994, {"empty_completion": 2, "identical_completions": 4})
    assert (test.rows_read, len(test.records), dict(test.skipped)) == (100, 99, {"identical_completions": 1})
    for rec in train.records + test.records:
        assert rec.prompt[-1]["role"] == "user" and rec.prompt[-1]["content"].strip()
        assert rec.chosen.strip() and rec.rejected.strip()
    # ids are the upstream prompt ids
    first = next(read_json_rows(UF_TRAIN))[1]
    assert train.records[0].id == first["prompt_id"]
    assert train.records[0].prompt == first["chosen"][:-1]
    assert train.records[0].chosen == first["chosen"][-1]["content"]
    assert train.records[0].rejected == first["rejected"][-1]["content"]


def test_ultrafeedback_suite_data_uses_the_held_out_sample():
    cfg = DataConfig(path="sample", hub_id="HuggingFaceH4/ultrafeedback_binarized",
                     sample_train="ultrafeedback/train_prefs-1000.jsonl.gz",
                     sample_eval="ultrafeedback/test_prefs-100.jsonl.gz", schema="auto", eval_size=64)
    data = load_suite_data(cfg)
    assert (len(data.train), len(data.eval)) == (994, 64)
    assert data.report["train_skipped"] == {"empty_completion": 2, "identical_completions": 4}
    assert data.report["eval_source"].endswith("test_prefs-100.jsonl.gz")


def test_binarized_record_by_hand():
    row = {"prompt": "Hi?", "prompt_id": "abc",
           "chosen": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}],
           "rejected": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Go away."}],
           "messages": [], "score_chosen": 8.0, "score_rejected": 2.0}
    rec = binarized_record(row, "f:1")
    assert (rec.prompt, rec.chosen, rec.rejected, rec.id) == ([{"role": "user", "content": "Hi?"}], "Hello.", "Go away.", "abc")
    bad = dict(row, rejected=[{"role": "user", "content": "Other?"}, {"role": "assistant", "content": "x"}])
    with pytest.raises(RowSkip, match="prefix_mismatch"):
        binarized_record(bad, "f:1")
    empty = dict(row, chosen=[{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "  "}])
    with pytest.raises(RowSkip, match="empty_completion"):
        binarized_record(empty, "f:1")
    no_answer = dict(row, rejected=[{"role": "user", "content": "Hi?"}])
    with pytest.raises(RowSkip, match="no_final_assistant_turn"):
        binarized_record(no_answer, "f:1")


# -- UltraFeedback raw (openbmb) and on-policy (armorm) fixtures ----------------------------------------------

def test_detect_schema_of_fixtures():
    assert detect_schema(next(read_json_rows(UF_RAW))[1]) == "ultrafeedback-raw"
    assert detect_schema(next(read_json_rows(UF_ONPOLICY))[1]) == "ultrafeedback-onpolicy"
    assert detect_schema(next(read_json_rows(HH_SAMPLE))[1]) == "hh"
    with pytest.raises(PobenchError, match="unknown schema"):
        detect_schema({"question": "q", "answer": "a"})


def test_raw_ultrafeedback_worst():
    loaded = load(UF_RAW)
    assert loaded.rows_read == 4
    assert dict(loaded.skipped) == {"all_scores_tied": 1, "nan_score": 1}
    first, last = loaded.records
    assert first.prompt == [{"role": "user", "content": "Name three primary colors."}]
    assert first.chosen.startswith("The three primary colors")   # 9.0, the best
    assert first.rejected == "Green."                            # 3.0, the worst
    assert first.candidates == ["Red, yellow and blue.", first.chosen, "Green.", "Red, blue, and green."]
    assert first.scores == [7.5, 9.0, 3.0, 6.0]
    assert first.id == "ultrafeedback-raw.jsonl:1"
    assert (last.chosen, last.rejected, last.scores) == ("4", "22", [2.0, 10.0, 9.5, 1.0])
    assert last.id == "ultrafeedback-raw.jsonl:4"


def test_raw_ultrafeedback_random_rejected_is_lower_and_seeded():
    rows = [row for _, row in read_json_rows(UF_RAW)]
    row = rows[0]     # scores 7.5, 9.0, 3.0, 6.0: three lower-scored completions
    lower = {"Red, yellow and blue.", "Green.", "Red, blue, and green."}
    picks = {}
    for seed in range(40):
        rec = raw_record(row, "f:1", rejected="random", seed=seed)
        again = raw_record(row, "f:1", rejected="random", seed=seed)
        assert rec.rejected == again.rejected                       # deterministic per seed
        assert rec.rejected in lower and rec.chosen not in lower
        assert rec.candidates == [c["response"] for c in row["completions"]]
        picks[seed] = rec.rejected
    assert set(picks.values()) == lower                             # every lower one gets picked by some seed
    # through parse_rows, with the seed passed along
    a = load(UF_RAW, raw_rejected="random", seed=3)
    b = load(UF_RAW, raw_rejected="random", seed=3)
    assert [content(r) for r in a.records] == [content(r) for r in b.records]
    assert a.records[0].rejected == raw_record(row, "ultrafeedback-raw.jsonl:1", rejected="random", seed=3).rejected


def test_raw_ultrafeedback_edge_cases():
    base = next(read_json_rows(UF_RAW))[1]
    one = dict(base, completions=base["completions"][:1])
    with pytest.raises(RowSkip, match="fewer_than_two_completions"):
        raw_record(one, "f:1")
    # an empty response drops out of the pool (and out of the scores)
    comps = [dict(c) for c in base["completions"]]
    comps[2]["response"] = "   "
    rec = raw_record(dict(base, completions=comps), "f:1")
    assert len(rec.candidates) == len(rec.scores) == 3 and rec.rejected == "Red, blue, and green."
    # a tie for the best still gives a pair; the chosen is one of the best
    comps = [dict(c) for c in base["completions"]]
    comps[0]["overall_score"] = 9.0
    rec = raw_record(dict(base, completions=comps), "f:1")
    assert rec.rejected == "Green." and rec.chosen in {comps[0]["response"], comps[1]["response"]}
    comps[3]["overall_score"] = math.inf
    with pytest.raises(RowSkip, match="nan_score"):
        raw_record(dict(base, completions=comps), "f:1")


def test_raw_ultrafeedback_never_pairs_a_text_with_itself():
    """The raw schema paired the chosen with a lower-scored copy of its own text (a margin of 0, no preference),
    which the other schemas skip as identical_completions; the rejected is drawn among the other texts."""
    base = next(read_json_rows(UF_RAW))[1]
    comps = [dict(c) for c in base["completions"]]   # scores 7.5, 9.0, 3.0, 6.0
    comps[2]["response"] = comps[1]["response"]      # the worst is the best's text
    for mode in ("worst", "random"):
        for seed in range(10):
            rec = raw_record(dict(base, completions=comps), "f:1", rejected=mode, seed=seed)
            assert rec.rejected != rec.chosen and rec.rejected in {comps[0]["response"], comps[3]["response"]}
    assert raw_record(dict(base, completions=comps), "f:1").rejected == comps[3]["response"]   # 6.0 < 7.5
    same = [dict(c, response="The same answer.") for c in comps]
    with pytest.raises(RowSkip, match="identical_completions"):
        raw_record(dict(base, completions=same), "f:1")


def test_raw_rejected_must_be_worst_or_random():
    with pytest.raises(PobenchError, match="raw_rejected"):
        load(UF_RAW, raw_rejected="wrost")


def test_onpolicy_ultrafeedback():
    loaded = load(UF_ONPOLICY)
    assert loaded.rows_read == 4
    assert dict(loaded.skipped) == {"nan_score": 1, "scores_do_not_match_responses": 1}
    with_messages, without = loaded.records
    assert with_messages.id == "p-001" and without.id == "p-002"
    assert with_messages.prompt == [{"role": "user", "content": "Name a fruit."}]
    assert (with_messages.chosen, with_messages.rejected) == ("A banana.", "Carrot.")
    assert with_messages.candidates == ["Apple.", "A banana.", "Carrot.", "Cherry!", "An orange."]
    assert with_messages.scores == [0.031, 0.052, -0.044, 0.018, 0.047]
    # without chosen/rejected messages: best and worst by RM score
    assert without.prompt == [{"role": "user", "content": "Count to three."}]
    assert (without.chosen, without.rejected) == ("1, 2, 3.", "3, 2, 1")
    assert len(without.candidates) == len(without.scores) == 5


def test_onpolicy_skips_ties_and_empty_answers():
    row = {"prompt_id": "p", "prompt": "q", "all_generated_responses": ["same", "same"], "all_rm_scores": [1.0, 1.0]}
    with pytest.raises(RowSkip, match="all_scores_tied"):
        onpolicy_record(row, "f:1")
    row = {"prompt_id": "p", "prompt": "q", "all_generated_responses": ["", "b"], "all_rm_scores": [1.0, 0.0]}
    with pytest.raises(RowSkip, match="empty_completion"):
        onpolicy_record(row, "f:1")


# -- local formats --------------------------------------------------------------------------------------------

def _sample_rows(path: Path, n: int) -> list[dict]:
    rows = []
    for _, row in read_json_rows(path):
        rows.append(row)
        if len(rows) == n:
            break
    return rows


@pytest.fixture(scope="module")
def local_copies(tmp_path_factory):
    """The same rows (HH and binarized UltraFeedback) written as jsonl, jsonl.gz, a JSON array, parquet, arrow and
    a save_to_disk DatasetDict."""
    import datasets

    datasets.disable_progress_bars()
    root = tmp_path_factory.mktemp("formats")
    out = {}
    for name, path in (("hh", HH_SAMPLE), ("uf", UF_TRAIN)):
        rows = _sample_rows(path, 12)
        held = _sample_rows(path, 15)[12:]   # the test split: other prompts (one of train's would be dropped from it)
        d = root / name
        d.mkdir()
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (d / "rows.jsonl").write_text(text, encoding="utf-8")
        with gzip.open(d / "rows.jsonl.gz", "wt", encoding="utf-8") as f:
            f.write(text)
        (d / "rows.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False), encoding="utf-8")
        ds = datasets.Dataset.from_list(rows)
        ds.to_parquet(str(d / "rows.parquet"))
        datasets.DatasetDict(train=ds, test=datasets.Dataset.from_list(held)).save_to_disk(str(d / "saved"))
        arrow = sorted((d / "saved" / "train").glob("*.arrow"))
        assert len(arrow) == 1
        (d / "rows.arrow").write_bytes(arrow[0].read_bytes())
        out[name] = (rows, d)
    return out


@pytest.mark.parametrize("name", ["hh", "uf"])
def test_local_formats_give_identical_records(local_copies, name):
    rows, d = local_copies[name]
    expected = parse_rows("x", enumerate(rows, 1))
    assert len(expected.records) >= 10
    for target in ("rows.jsonl", "rows.jsonl.gz", "rows.json", "rows.parquet", "rows.arrow", "saved"):
        source, it = read_rows(str(d / target), "train")
        got = parse_rows(source, it)
        assert [content(r) for r in got.records] == [content(r) for r in expected.records], target
        # ids: the upstream prompt id, or "<file>:<row>" with the same row numbers in every format
        assert [r.id.rsplit(":", 1)[-1] for r in got.records] == [r.id.rsplit(":", 1)[-1] for r in expected.records]
        assert got.rows_read == len(rows) and got.skipped == expected.skipped
    source, it = read_rows(str(d / "saved"), "test")
    assert source.endswith("saved[test]")
    held = parse_rows("x", enumerate(_sample_rows({"hh": HH_SAMPLE, "uf": UF_TRAIN}[name], 15)[12:], 1))
    assert [content(r) for r in parse_rows(source, it).records] == [content(r) for r in held.records]
    with pytest.raises(PobenchError, match=r"no split 'validation' \(has train, test\)"):
        read_rows(str(d / "saved"), "validation")


def test_folder_of_split_files(tmp_path):
    rows = _sample_rows(HH_SAMPLE, 5)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    assert read_rows(str(tmp_path), "train")[0] == str(tmp_path / "train.jsonl")
    assert read_rows(str(tmp_path), "test")[0] == str(tmp_path / "test.jsonl")
    with pytest.raises(PobenchError, match="no file for split 'dev'"):
        read_rows(str(tmp_path), "dev")


def test_a_split_in_two_formats_is_refused(tmp_path):
    """train.jsonl beside train.jsonl.gz was read as two shards: every record twice, and held-out records trained on."""
    import gzip
    rows = _sample_rows(HH_SAMPLE, 5)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "train.jsonl").write_text(text)
    (tmp_path / "train.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    with pytest.raises(PobenchError, match="train.jsonl and train.jsonl.gz hold the same part of split 'train'"):
        read_rows(str(tmp_path), "train")


def test_a_split_in_shards_is_read_whole(tmp_path):
    """The hub's layout, train-00000-of-00002.* and train-00001-of-00002.*: every shard is read, in order (the first
    alone was read before); a file of another split whose name starts alike (train_prefs.*) is not part of it; a bad
    row is named by its shard and line."""
    rows = _sample_rows(HH_SAMPLE, 7)
    (tmp_path / "train-00000-of-00002.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    (tmp_path / "train-00001-of-00002.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[4:]))
    (tmp_path / "train_prefs.jsonl").write_text(json.dumps(rows[0]) + "\n")
    source, it = read_rows(str(tmp_path), "train")
    got = parse_rows(source, it)
    assert source == f"{tmp_path}[train]" and got.rows_read == 7
    whole = parse_rows("x", ((i, r) for i, r in enumerate(rows, 1)))
    assert [r.chosen for r in got.records] == [r.chosen for r in whole.records]
    assert len({r.id for r in got.records}) == len(got.records)
    (tmp_path / "train-00001-of-00002.jsonl").write_text(json.dumps(rows[4]) + "\n{not json\n")
    with pytest.raises(PobenchError, match=r"train-00001-of-00002.jsonl:2"):
        parse_rows(*read_rows(str(tmp_path), "train"))


def _write_split(path: Path, rows: list[dict]) -> None:
    """rows as a file of the format its name ends with: JSON Lines (gzipped or not), a JSON array or parquet."""
    if path.name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.name.endswith(".json"):
        path.write_text(json.dumps(rows))
    else:
        text = "".join(json.dumps(r) + "\n" for r in rows).encode()
        path.write_bytes(gzip.compress(text) if path.name.endswith(".gz") else text)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".json", ".parquet"])
def test_shards_in_one_format_are_read_whole(tmp_path, suffix):
    rows = _sample_rows(HH_SAMPLE, 7)
    _write_split(tmp_path / f"train-00000-of-00002{suffix}", rows[:4])
    _write_split(tmp_path / f"train-00001-of-00002{suffix}", rows[4:])
    got = parse_rows(*read_rows(str(tmp_path), "train"))
    assert [r.chosen for r in got.records] == [r.chosen for r in parse_rows("x", enumerate(rows, 1)).records]


@pytest.mark.parametrize("whole, shards", [("train.jsonl", ".parquet"), ("train.json", ".parquet"),
                                           ("train.parquet", ".parquet"), ("train.jsonl", ".jsonl")])
def test_a_whole_split_file_beside_shards_is_refused(tmp_path, whole, shards):
    """train.jsonl beside train-00000-of-00002.parquet was read as one more shard of the split: a copy of the
    shards trained on twice, or two exports of the data mixed."""
    rows = _sample_rows(HH_SAMPLE, 6)
    _write_split(tmp_path / whole, rows)
    _write_split(tmp_path / f"train-00000-of-00002{shards}", rows[:3])
    _write_split(tmp_path / f"train-00001-of-00002{shards}", rows[3:])
    with pytest.raises(PobenchError) as e:
        read_rows(str(tmp_path), "train")
    assert str(e.value) == (f"{tmp_path}: {whole} and train-00000-of-00002{shards} both hold split 'train' (a whole "
                            f"file beside shards); keep one")


def test_shards_in_two_formats_are_refused(tmp_path):
    rows = _sample_rows(HH_SAMPLE, 6)
    _write_split(tmp_path / "train.jsonl", rows)
    _write_split(tmp_path / "test-00000-of-00002.jsonl", rows[:3])
    _write_split(tmp_path / "test-00001-of-00002.parquet", rows[3:])
    with pytest.raises(PobenchError, match=r"test-00000-of-00002.jsonl and test-00001-of-00002.parquet are shards of "
                                           r"split 'test' in two formats; keep one$"):
        load_suite_data(_data_cfg(tmp_path, eval_size=2))   # (the held-out split, found by source_has_split)


def _data_cfg(path, eval_split="test", eval_size=4):
    return DataConfig(path=str(path), hub_id="", schema="auto", train_split="train", eval_split=eval_split,
                      eval_size=eval_size)


def test_a_single_local_file_holds_out_its_last_records(local_copies):
    """A file has no splits: the held-out records must not be the first training records read again."""
    rows, d = local_copies["hh"]
    for target in ("rows.jsonl", "rows.parquet", "rows.arrow"):
        data = load_suite_data(_data_cfg(d / target))
        assert (len(data.train), len(data.eval)) == (len(rows) - 4, 4), target
        assert not {r.id for r in data.train} & {r.id for r in data.eval}, target
        assert [r.chosen for r in data.eval] == [hh_record(r, "").chosen for r in rows[-4:]]
        assert "last 4 records" in data.report["eval_source"]


def test_a_save_to_disk_folder_uses_its_splits(local_copies):
    rows, d = local_copies["hh"]
    data = load_suite_data(_data_cfg(d / "saved", eval_size=2))
    assert (len(data.train), len(data.eval)) == (len(rows), 2)
    assert data.report["eval_source"].endswith("saved[test]")
    # a DatasetDict without the eval split but with another (test): a typo that would leave test unread, refused;
    # eval_split null carves the held-out records off the train split on purpose
    with pytest.raises(PobenchError, match=r"saved: no split 'validation' \(data.eval_split\), but it holds train, "
                                           r"test: "):
        load_suite_data(_data_cfg(d / "saved", eval_split="validation", eval_size=2))
    data = load_suite_data(_data_cfg(d / "saved", eval_split=None, eval_size=2))
    assert (len(data.train), len(data.eval)) == (len(rows) - 2, 2)


def test_an_eval_split_typo_beside_a_test_split_is_refused(tmp_path):
    """`--set data.eval_split=tset` on a folder of train.jsonl + test.jsonl carved 4 held-out records off train and
    never read test.jsonl, without a word; a train_split typo was an error. Only where the folder holds no other
    split (train files alone) is a missing eval split carved, as for a single file."""
    _write_jsonl(tmp_path / "train.jsonl", [_qa(f"q{i}?") for i in range(8)])
    _write_jsonl(tmp_path / "test.jsonl", [_qa(f"t{i}?") for i in range(4)])
    with pytest.raises(PobenchError) as e:
        load_suite_data(_data_cfg(tmp_path, eval_split="tset"))
    assert str(e.value) == (f"{tmp_path}: no split 'tset' (data.eval_split), but it holds test, train: name the "
                            f"held-out one with data.eval_split, or set data.eval_split to null to hold out the last "
                            f"data.eval_size training records instead")
    carved = load_suite_data(_data_cfg(tmp_path, eval_split=None))   # asked for: test.jsonl is left unread
    assert [r.prompt[-1]["content"] for r in carved.eval] == ["q4?", "q5?", "q6?", "q7?"]
    assert [r.prompt[-1]["content"] for r in load_suite_data(_data_cfg(tmp_path)).eval] == ["t0?", "t1?", "t2?", "t3?"]
    (tmp_path / "test.jsonl").unlink()   # train shards and train.jsonl alone: no other split, carved as before
    (tmp_path / "train.jsonl").rename(tmp_path / "train-00000-of-00001.jsonl")
    assert len(load_suite_data(_data_cfg(tmp_path, eval_split="tset")).eval) == 4


def test_too_few_records_to_hold_out(tmp_path):
    f = tmp_path / "two.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in _sample_rows(HH_SAMPLE, 2)))
    with pytest.raises(PobenchError, match=r"two.jsonl: 2 records, too few to hold out data.eval_size=4"):
        load_suite_data(_data_cfg(f))


# -- bad input: PobenchError naming the file and the row ------------------------------------------------------

GOOD = {"chosen": "\n\nHuman: a\n\nAssistant: yes", "rejected": "\n\nHuman: a\n\nAssistant: no"}


def _write_lines(path: Path, lines: list[str | bytes]) -> Path:
    data = b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines)
    path.write_bytes(data)
    return path


def _error(path: Path, **kw) -> str:
    with pytest.raises(PobenchError) as e:
        load(path, **kw)
    message = str(e.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def test_bad_json_line_names_the_row(tmp_path):
    f = _write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD)] * 3 + ['{"chosen": "x", '] + [json.dumps(GOOD)])
    message = _error(f)
    assert f"{f}:4: bad JSON line" in message


def test_row_numbers_count_blank_lines(tmp_path):
    f = _write_lines(tmp_path / "d.jsonl", ["", "  ", json.dumps(GOOD), "", "{nope}"])
    assert f"{f}:5: bad JSON line" in _error(f)
    f = _write_lines(tmp_path / "e.jsonl", ["", json.dumps(GOOD), json.dumps({"chosen": "\n\nHuman: a"})])
    assert f"{f}:3: missing key 'rejected'" in _error(f)


def test_truncated_gzip(tmp_path):
    full = tmp_path / "full.jsonl.gz"
    with gzip.open(full, "wt", encoding="utf-8") as f:
        for _, row in zip(range(200), read_json_rows(HH_SAMPLE)):
            f.write(json.dumps(row[1]) + "\n")
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    message = _error(cut)
    assert "unreadable gzip" in message and "after line" in message
    not_gzip = _write_lines(tmp_path / "plain.jsonl.gz", [json.dumps(GOOD)])
    assert "unreadable gzip" in _error(not_gzip)


def test_non_utf8_bytes_name_the_row(tmp_path):
    f = _write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD), json.dumps(GOOD), b'{"chosen": "\xff\xfe", "rejected": "x"}'])
    message = _error(f)
    assert f"{f}:3: not UTF-8" in message
    latin = _write_lines(tmp_path / "d.json", [b"[", json.dumps(GOOD).encode() + b",", b'{"chosen": "caf\xe9"}', b"]"])
    assert f"{latin}:3: not UTF-8" in _error(latin)


def test_utf8_bom_is_accepted(tmp_path):
    f = tmp_path / "bom.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + (json.dumps(GOOD) + "\n").encode())
    assert len(load(f).records) == 1


@pytest.mark.parametrize("second_row, expected", [
    ({"chosen": GOOD["chosen"]}, "missing key 'rejected' for schema hh"),
    ({"chosen": 5, "rejected": GOOD["rejected"]}, "malformed row for schema hh"),
    ([1, 2], "a row must be a JSON object, got list"),
    ("just a string", "a row must be a JSON object, got str"),
    (None, "a row must be a JSON object, got NoneType"),
])
def test_bad_rows_name_the_row(tmp_path, second_row, expected):
    f = _write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD), json.dumps(second_row), json.dumps(GOOD)])
    assert f"{f}:2: {expected}" in _error(f)


def test_bad_rows_in_a_json_array_name_the_element(tmp_path):
    """A JSON array's rows are its elements, not its lines: "file:3" (the form of a line number) sent the reader to
    line 3 of a pretty-printed file, inside another element. A syntax error still names its line."""
    f = tmp_path / "d.json"
    f.write_text(json.dumps([GOOD, GOOD, 7]))
    assert f"{f} (element 3): a row must be a JSON object, got int" in _error(f)
    f.write_text(json.dumps([GOOD, GOOD, {"chosen": GOOD["chosen"]}], indent=2))
    assert f"{f} (element 3): missing key 'rejected' for schema hh" in _error(f)
    f.write_text(json.dumps([GOOD, {"chosen": 5, "rejected": "x"}], indent=2))
    assert f"{f} (element 2): malformed row for schema hh" in _error(f)
    f.write_text(json.dumps([{"question": "q"}]))
    assert f"{f} (element 1): unknown schema" in _error(f)
    f.write_text(json.dumps([GOOD, dict(GOOD, chosen=GOOD["chosen"] + "!")]))
    assert [r.id for r in load(f).records] == ["d.json:1", "d.json:2"]   # ids unchanged: so are the records' digests
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "train-00000-of-00002.jsonl").write_text(json.dumps(GOOD) + "\n")
    (shards / "train-00001-of-00002.json").write_text(json.dumps([GOOD, 7], indent=2))
    with pytest.raises(PobenchError, match=r"shards\[train\]:train-00001-of-00002.json \(element 2\): a row must be"):
        parse_rows(*read_rows(str(shards), "train"))
    g = tmp_path / "e.json"
    g.write_text('[\n  {"chosen": "a",\n  "rejected": }\n]\n')
    assert f"{g}:3: bad JSON" in _error(g)


def test_an_integer_too_long_to_read_is_bad_json(tmp_path):
    """Python reads no integer of over 4300 digits: its ValueError is not a JSONDecodeError and went past the
    loader as an internal error (exit 1)."""
    huge = json.dumps(GOOD)[:-1] + ', "extra": ' + "9" * 4400 + "}"
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps(GOOD) + "\n" + huge + "\n")
    assert f"{f}:2: bad JSON line (Exceeds the limit (4300 digits)" in _error(f)
    g = tmp_path / "d.json"
    g.write_text(f"[{json.dumps(GOOD)},\n{huge}]")
    assert f"{g}: bad JSON (Exceeds the limit (4300 digits)" in _error(g)


def test_a_score_too_big_for_a_float_names_the_row(tmp_path):
    """An integer score of a few hundred digits reads as JSON but float() raises OverflowError, which parse_rows
    did not catch: an internal error instead of the row."""
    raw = next(read_json_rows(UF_RAW))[1]
    raw["completions"][0]["overall_score"] = 10 ** 400
    f = _write_lines(tmp_path / "raw.jsonl", [json.dumps(raw)])
    assert f"{f}:1: malformed row for schema ultrafeedback-raw (OverflowError" in _error(f)
    onpolicy = {"prompt_id": "p", "prompt": "q", "all_generated_responses": ["a", "b"], "all_rm_scores": [1.0, 10 ** 400]}
    g = _write_lines(tmp_path / "onpolicy.jsonl", [json.dumps(onpolicy)])
    assert f"{g}:1: malformed row for schema ultrafeedback-onpolicy (OverflowError" in _error(g)


def _user(content="q?"):
    return {"role": "user", "content": content}


def _answer(content="a"):
    return {"role": "assistant", "content": content}


def _binarized(turns=None, chosen=None, rejected=None, **extra):
    turns = [_user()] if turns is None else turns
    return {"prompt_id": "b", "prompt": "q?", "chosen": turns + [chosen or _answer("yes")],
            "rejected": turns + [rejected or _answer("no")], **extra}


def _raw(instruction="q?", second=None):
    first = {"response": "good", "overall_score": 9.0}
    return {"instruction": instruction, "completions": [first, second or {"response": "bad", "overall_score": 2.0}]}


def _onpolicy(**extra):
    return {"prompt_id": "o", "prompt": "q?", "all_generated_responses": ["a", "b"], "all_rm_scores": [1.0, 0.0], **extra}


@pytest.mark.parametrize("schema, row, expected", [
    ("binarized", _binarized([_user(None)]), "(TypeError: chosen[0].content must be a string, got NoneType)"),
    ("binarized", _binarized([_user(5)]), "(TypeError: chosen[0].content must be a string, got int)"),
    ("binarized", _binarized(["q?"]), "(TypeError: chosen[0] must be a message (an object with role and content), got str)"),
    ("binarized", _binarized([{"content": "q?"}]), "missing key 'chosen[0].role'"),
    ("binarized", _binarized([{"role": "tool", "content": "q?"}]), "(ValueError: chosen[0].role must be one of system, "
                                                                   "user, assistant, got 'tool')"),
    ("binarized", _binarized(chosen={"content": "yes"}), "missing key 'chosen[1].role'"),   # was skipped, unnamed
    ("binarized", _binarized(chosen={"role": "assistant"}), "missing key 'chosen[1].content'"),
    ("binarized", _binarized(rejected=_answer(7)), "(TypeError: rejected[1].content must be a string, got int)"),
    ("binarized", _binarized([], prompt=123), "(TypeError: 'prompt' must be a string, got int)"),
    ("raw", _raw(None), "(TypeError: 'instruction' must be a string, got NoneType)"),
    ("raw", _raw(second={"overall_score": 2.0}), "missing key 'completions[1].response'"),   # was dropped unseen
    ("raw", _raw(second={"response": None, "overall_score": 2.0}),
     "(TypeError: completions[1].response must be a string, got NoneType)"),
    ("onpolicy", _onpolicy(prompt=None), "(TypeError: 'prompt' must be a string, got NoneType)"),
    ("onpolicy", _onpolicy(chosen=[_user(None), _answer("a")], rejected=[_user(None), _answer("b")]),
     "(TypeError: chosen[0].content must be a string, got NoneType)"),
])
def test_prompt_messages_and_texts_are_checked_where_the_row_is_read(tmp_path, schema, row, expected):
    """A prompt's message had to be {role: system | user | assistant, content: text}, but only the chat template
    found out, in training, after the model's load, naming a record id (and with chat_template plain a null was
    trained on as "None"); a final message without a role was skipped where one without content was an error, and a
    raw completion without a response was dropped where a null one was an error."""
    good = {"binarized": _binarized, "raw": _raw, "onpolicy": _onpolicy}[schema]()
    f = _write_lines(tmp_path / "d.jsonl", [json.dumps(good), json.dumps(row)])
    message = _error(f)
    assert message.startswith(f"{f}:2: ") and f"for schema ultrafeedback-{schema}" in message
    assert expected in message


@pytest.mark.parametrize("row, expected", [
    (_binarized(), "'chosen' must be text for schema hh (a whole transcript), got a list of messages); the row "
                   "reads as ultrafeedback-binarized: set data.schema to auto (or ultrafeedback-binarized)"),
    ({"chosen": None, "rejected": "x"}, "'chosen' must be text for schema hh (a whole transcript), got null)"),
    ({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": 5}, "'rejected' must be text for schema hh (a whole "
                                                                  "transcript), got int 5)"),
])
def test_a_row_of_another_shape_under_schema_hh_says_what_it_holds(tmp_path, row, expected):
    """UltraFeedback rows read with `schema: hh` (the hh-rlhf suite's, or a suite copied from it) failed with
    "(AttributeError: 'list' object has no attribute 'startswith')": Python's words, not the data's."""
    f = _write_lines(tmp_path / "d.jsonl", [json.dumps(row)])
    message = _error(f, schema="hh")
    assert message.startswith(f"{f}:1: malformed row for schema hh (TypeError: ")
    assert expected in message and "AttributeError" not in message


def test_hh_rows_read_as_binarized_name_the_schema_they_read_as(tmp_path):
    f = _write_lines(tmp_path / "d.jsonl", [json.dumps({"chosen": "\n\nHuman: q\n\nAssistant: a",
                                                        "rejected": "\n\nHuman: q\n\nAssistant: b"})])
    assert _error(f, schema="ultrafeedback-binarized").endswith(
        "; the row reads as hh: set data.schema to auto (or hh)")
    assert "reads as" not in _error(_write_lines(tmp_path / "e.jsonl", [json.dumps({"chosen": []})]))   # auto


@pytest.mark.parametrize("schema, row, expected", [
    ("raw", _raw(second={"response": "bad", "overall_score": True}),
     "(TypeError: completions[1].overall_score must be a number, got bool True)"),
    ("raw", _raw(second={"response": "bad", "overall_score": "9"}),
     "(TypeError: completions[1].overall_score must be a number, got str '9')"),
    ("raw", _raw(second={"response": "bad", "overall_score": "nan"}),     # was a nan_score skip
     "(TypeError: completions[1].overall_score must be a number, got str 'nan')"),
    ("raw", _raw(second={"response": "bad", "overall_score": [2.0]}),
     "(TypeError: completions[1].overall_score must be a number, got list [2.0])"),
    ("onpolicy", _onpolicy(all_rm_scores=[1.0, False]), "(TypeError: all_rm_scores[1] must be a number, got bool False)"),
    ("onpolicy", _onpolicy(all_rm_scores=["1.0", 0.0]), "(TypeError: all_rm_scores[0] must be a number, got str '1.0')"),
    ("binarized", _binarized(prompt_id=["b"]), "(TypeError: 'prompt_id' must be a string or an integer, got list ['b'])"),
    ("binarized", _binarized(prompt_id={"id": "b"}), "'prompt_id' must be a string or an integer, got dict {'id': 'b'}"),
    ("binarized", _binarized(prompt_id=True), "'prompt_id' must be a string or an integer, got bool True"),
    ("binarized", _binarized(prompt_id=1.5), "'prompt_id' must be a string or an integer, got float 1.5"),
    ("onpolicy", _onpolicy(prompt_id=["o"]), "'prompt_id' must be a string or an integer, got list ['o']"),
])
def test_scores_and_ids_of_another_type_name_the_row_and_key(tmp_path, schema, row, expected):
    """float() took a score of true (1.0) or "9", and str() made an id of a list ("['b']") or of true: a schema
    mix-up trained on silently. Only JSON numbers are scores, and text or integers ids."""
    good = {"binarized": _binarized, "raw": _raw, "onpolicy": _onpolicy}[schema]()
    f = _write_lines(tmp_path / "d.jsonl", [json.dumps(good), json.dumps(row)])
    message = _error(f)
    assert message.startswith(f"{f}:2: ") and f"for schema ultrafeedback-{schema}" in message
    assert expected in message


def test_integer_ids_and_scores_and_null_scores_are_still_read():
    assert binarized_record(_binarized(prompt_id=7), "f:1").id == "7"
    assert binarized_record(_binarized(prompt_id=0), "f:1").id == "0"         # (a falsy id read as missing before)
    assert binarized_record(_binarized(prompt_id=""), "f:1").id == "f:1"
    assert onpolicy_record(_onpolicy(prompt_id=None), "f:2").id == "f:2"
    assert raw_record(_raw(second={"response": "bad", "overall_score": 2}), "f:1").scores == [9.0, 2.0]
    assert onpolicy_record(_onpolicy(all_rm_scores=[1, 0]), "f:1").scores == [1.0, 0.0]
    with pytest.raises(RowSkip, match="nan_score"):   # a missing score upstream, counted as NaN is
        raw_record(_raw(second={"response": "bad", "overall_score": None}), "f:1")


def test_bad_row_in_the_binarized_schema(tmp_path):
    rows = _sample_rows(UF_TEST, 2)
    rows[1]["chosen"] = "not a list of messages"
    f = _write_lines(tmp_path / "d.jsonl", [json.dumps(r) for r in rows])
    assert f"{f}:2: malformed row for schema ultrafeedback-binarized" in _error(f)


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_file(tmp_path, text):
    f = tmp_path / "empty.jsonl"
    f.write_text(text)
    assert _error(f) == f"{f}: no rows"


def test_unknown_schema_names_the_first_row(tmp_path):
    f = _write_lines(tmp_path / "d.jsonl", [json.dumps({"question": "q", "answer": "a"})])
    assert f"{f}:1: unknown schema" in _error(f)


def test_every_row_skipped(tmp_path):
    f = _write_lines(tmp_path / "d.jsonl", [json.dumps({"chosen": "\n\nHuman: a", "rejected": "\n\nHuman: a"})] * 2)
    assert "every row was skipped" in _error(f) and "no_final_assistant_turn" in _error(f)


def test_missing_and_unknown_paths(tmp_path):
    with pytest.raises(PobenchError, match="no such file or folder"):
        read_rows(str(tmp_path / "nope.jsonl"), "train")
    other = tmp_path / "data.csv"
    other.write_text("a,b\n")
    with pytest.raises(PobenchError, match="unknown data format"):
        read_rows(str(other), "train")


# -- `pobench data`: which skip counts it reports -------------------------------------------------------------

def _pobench_data(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "pobench.cli", "data", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=60)


@pytest.mark.parametrize("suite, split, lines, skipped", [
    ("ultrafeedback", "eval", 32, "{'identical_completions': 1}"),                 # test_prefs-100
    ("ultrafeedback", "train", 994, "{'identical_completions': 4, 'empty_completion': 2}"),   # train_prefs-1000
    ("hh-rlhf", "train", 1992 - 32, "{'empty_completion': 4, 'prefix_mismatch': 4}"),
    ("hh-rlhf", "eval", 32, None),                                                  # carved off the train sample
])
def test_pobench_data_reports_the_skips_of_the_split_it_prints(tmp_path, suite, split, lines, skipped):
    """The UltraFeedback samples skip 6 (train) and 1 (eval) rows; the HH counts {4, 4} belong to hh-rlhf only."""
    r = _pobench_data(suite, "--split", split, "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == lines
    if skipped:
        assert f"skipped rows: {skipped}" in r.stderr
    else:
        assert "skipped" not in r.stderr
    assert "prefix_mismatch" not in r.stderr or suite == "hh-rlhf"


def test_the_suites_hub_data_dir_applies_to_its_own_hub_dataset_only(monkeypatch):
    """hh-rlhf reads data_dir harmless-base of Anthropic/hh-rlhf; `--data someone/other` is read whole (it was read
    with data_dir harmless-base too). The hub is a test double here: nothing can be downloaded."""
    import datasets
    asked = []

    def fake_load_dataset(path, data_dir=None, split=None):   # stands in for the hub
        asked.append((path, data_dir, split))
        raise ConnectionError("offline test double")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr("pobench.data.loading.hub_reachable", lambda timeout=2.0: True)   # (and a reachable hub)
    for path in ("Anthropic/hh-rlhf", "someone/other"):
        cfg = DataConfig(path=path, hub_id="Anthropic/hh-rlhf", hub_data_dir="harmless-base", schema="hh")
        with pytest.raises(PobenchError, match="cannot load from the hub"):
            load_suite_data(cfg)
    assert [(p, d) for p, d, _ in asked] == [("Anthropic/hh-rlhf", "harmless-base"), ("someone/other", None)]


def test_an_unreachable_hub_is_named_at_once(monkeypatch):
    """datasets retried an unreachable hub for ~30 s, logging each try above pobench's error; pobench asks first
    (2 s) and says so in one line. Offline mode (HF_DATASETS_OFFLINE=1) still reads the hub cache."""
    import datasets
    asked = []

    def fake_load_dataset(path, data_dir=None, split=None):   # stands in for the hub cache
        asked.append(path)
        raise FileNotFoundError("not in the cache (test double)")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr("pobench.data.loading.hub_reachable", lambda timeout=2.0: False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)   # (the tests run offline: conftest)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    cfg = DataConfig(path="someone/other", schema="hh")
    with pytest.raises(PobenchError, match="someone/other: not a local file or folder, and the Hugging Face hub "
                                           "cannot be reached from here"):
        load_suite_data(cfg)
    assert asked == []
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(PobenchError, match="cannot load from the hub"):
        load_suite_data(cfg)
    assert asked == ["someone/other"]


def test_a_runs_data_line_keeps_each_splits_skip_counts():
    """The UltraFeedback samples skip identical pairs in both splits: the run's line merged the two dicts, and the
    held-out count (1) hid the training one (4)."""
    from pobench.data import describe_loaded
    report = {"train_records": 994, "eval_records": 32, "train_source": "train_prefs-1000.jsonl",
              "train_skipped": {"identical_completions": 4, "empty_completion": 2},
              "eval_skipped": {"identical_completions": 1}}
    line = describe_loaded(report)
    assert "skipped train rows: {'identical_completions': 4, 'empty_completion': 2}" in line
    assert "skipped eval rows: {'identical_completions': 1}" in line
    assert describe_loaded({**report, "train_skipped": {}, "eval_skipped": {}}).count("skipped") == 0


@pytest.mark.parametrize("splits, eval_split", [(["train"], "test"), (["train", "test"], "test"),
                                                (["train", "test[:10]"], "test[:10]"), (["train", "test"], "tset")])
def test_a_hub_dataset_without_a_held_out_split_is_carved(monkeypatch, splits, eval_split):
    """`--data someone/prefs` with only a train split on the hub: the last data.eval_size records are held out, as
    for a local file (reading the missing split was an error). With a test split, that split is read. The hub is a
    test double: the rows are the shipped HH sample's."""
    import gzip

    import datasets
    with gzip.open(SAMPLES_DIR / "hh-rlhf" / "harmless-base-test-2000.jsonl.gz", "rt") as f:
        rows = [json.loads(next(f)) for _ in range(40)]
    read = []

    def fake_load_dataset(path, data_dir=None, split=None):
        read.append(split)
        if split not in splits:
            raise ValueError(f"Unknown split {split!r}")
        return datasets.Dataset.from_list(rows[:30] if split == "train" else rows[30:])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(datasets, "get_dataset_split_names",
                        lambda path, data_dir=None: [s.split("[")[0] for s in splits])   # the hub lists no slices
    monkeypatch.setattr("pobench.data.loading.hub_reachable", lambda timeout=2.0: True)
    cfg = DataConfig(path="someone/prefs", hub_id="", schema="hh", eval_size=4, eval_split=eval_split)
    if eval_split == "tset":   # a typo beside the hub's test split: refused, naming the splits the hub lists
        with pytest.raises(PobenchError, match=r"^someone/prefs: no split 'tset' \(data.eval_split\), but it holds "
                                               r"train, test: "):
            load_suite_data(cfg)
        return
    data = load_suite_data(cfg)
    if splits == ["train"]:
        assert read == ["train"] and data.report["eval_source"] == "hub:someone/prefs[train] (last 4 records)"
        assert len(data.train) + len(data.eval) == 30 - sum(data.report["train_skipped"].values())
    else:
        assert read == ["train", eval_split] and data.report["eval_source"] == f"hub:someone/prefs[{eval_split}]"
    assert len(data.eval) == 4


def _qa(prompt: str, chosen: str = "yes", rejected: str = "no") -> dict:
    return hh_row([("user", prompt)], chosen, rejected)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_held_out_records_whose_prompt_is_trained_on_are_dropped_and_counted(tmp_path):
    """Duplicates were removed within a split only: a held-out record whose prompt a training record has (the same
    row in both splits, or the prompt with other answers) was measured as held out."""
    from pobench.data import describe_loaded
    _write_jsonl(tmp_path / "train.jsonl", [_qa(f"q{i}?", f"yes {i}") for i in range(8)])
    _write_jsonl(tmp_path / "test.jsonl", [
        _qa("q1?", "yes 1"),                                          # a training row again
        _qa("q2?", "another answer", "a worse one"),                  # a training prompt, other answers
        hh_row([("user", "q2?"), ("assistant", "a"), ("user", "and?")], "yes", "no"),   # a longer dialogue: kept
        *[_qa(f"t{i}?") for i in range(4)]])
    data = load_suite_data(_data_cfg(tmp_path, eval_size=4))
    assert [r.prompt[-1]["content"] for r in data.eval] == ["and?", "t0?", "t1?", "t2?"]
    assert len(data.train) == 8
    # counted over the whole held-out split, as its skipped rows are; shown on the run's line, saved in data.json
    assert data.report["eval_skipped"] == {"prompt_in_train": 2} and data.report["eval_records"] == 4
    assert "skipped eval rows: {'prompt_in_train': 2}" in describe_loaded(data.report)
    # against every training record, not only those max_train_records trains on: one held-out set for any limit
    limited = load_suite_data(DataConfig(**{**_data_cfg(tmp_path, eval_size=4).__dict__, "max_train_records": 1}))
    assert limited.eval == data.eval and len(limited.train) == 1


def test_a_held_out_split_wholly_in_the_training_split_is_refused(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", [_qa(f"q{i}?") for i in range(8)])
    _write_jsonl(tmp_path / "test.jsonl", [_qa("q1?"), _qa("q2?", "other")])
    with pytest.raises(PobenchError) as e:
        load_suite_data(_data_cfg(tmp_path, eval_size=2))
    assert str(e.value) == (f"{tmp_path / 'test.jsonl'}: every held-out record's prompt is also a training record's "
                            f"(2 records): nothing left to hold out")


def test_carved_held_out_records_whose_prompt_is_trained_on_are_dropped():
    """Without a held-out split the last eval_size records are held out: two of the HH sample's prompts come twice
    (records 250 and 1479, 1258 and 1448), and with 600 held out the later of each pair was held out while the
    earlier was trained on. They are dropped from the held-out records, not replaced: the training records stay
    the first N - eval_size, as in a run that holds out fewer (the default 32 holds out neither)."""
    cfg = DataConfig(path="sample", sample_train="hh-rlhf/harmless-base-test-2000.jsonl.gz", sample_eval=None,
                     schema="hh", eval_size=600)
    records = load(HH_SAMPLE).records
    data = load_suite_data(cfg)
    assert data.train == records[:-600]
    assert data.eval == [r for i, r in enumerate(records[-600:], len(records) - 600) if i not in (1447, 1478)]
    assert data.report["eval_skipped"] == {"prompt_in_train": 2} and data.report["eval_records"] == 598
    assert load_suite_data(DataConfig(**{**cfg.__dict__, "eval_size": 32})).report["eval_skipped"] == {}


def test_a_hub_test_split_loses_the_prompts_of_its_train_split(monkeypatch):
    """The hub's splits go through the same loading: a test row whose prompt is a train row's is dropped there too.
    The hub is a test double."""
    import datasets
    splits = {"train": [_qa(f"q{i}?") for i in range(6)], "test": [_qa("q3?", "other"), _qa("t0?"), _qa("t1?")]}
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda path, data_dir=None, split=None: datasets.Dataset.from_list(splits[split]))
    monkeypatch.setattr(datasets, "get_dataset_split_names", lambda path, data_dir=None: list(splits))
    monkeypatch.setattr("pobench.data.loading.hub_reachable", lambda timeout=2.0: True)
    data = load_suite_data(DataConfig(path="someone/prefs", schema="hh", eval_size=4))
    assert [r.prompt[-1]["content"] for r in data.eval] == ["t0?", "t1?"]
    assert data.report["eval_skipped"] == {"prompt_in_train": 1}
    assert data.report["eval_source"] == "hub:someone/prefs[test]"


def test_offline_mode_and_mirrors_are_read_as_huggingface_hub_reads_them(monkeypatch):
    """HF_HUB_OFFLINE=true (not only "1") and HF_DATASETS_OFFLINE=yes are offline mode; the hub probed is
    HF_ENDPOINT's host (a mirror), not huggingface.co."""
    import socket

    from huggingface_hub import constants

    from pobench.data import loading
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert loading.hub_offline() and not loading.hub_reachable()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "yes")
    assert loading.hub_offline()
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    asked = []

    def connect(address, timeout=None):   # test double for the network: records the host asked
        asked.append(address)
        raise OSError("unreachable (test double)")

    monkeypatch.setattr(socket, "create_connection", connect)
    monkeypatch.setattr(constants, "ENDPOINT", "https://hf-mirror.example.org")
    assert not loading.hub_reachable() and asked == [("hf-mirror.example.org", 443)]


def test_the_alpaca_eval_set_in_the_hub_cache_needs_no_network(monkeypatch):
    """No eval file and no network: refused, unless the hub cache already holds the set (offline mode reads it)."""
    import huggingface_hub

    from pobench.eval.runner import check_alpaca_eval_set
    from types import SimpleNamespace
    monkeypatch.setattr("pobench.data.loading.hub_reachable", lambda timeout=2.0: False)
    e = SimpleNamespace(eval_set="alpaca_eval", judge="alpaca_eval:local", reference="alpaca_eval", eval_file=None,
                        lc_difficulty_file=None, num_prompts=0)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    with pytest.raises(PobenchError, match="is not reachable"):
        check_alpaca_eval_set(e)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: "/cache/alpaca_eval.json")
    check_alpaca_eval_set(e)


# -- runs made before records_rule 2 (pobench.data.RECORDS_RULE) -------------------------------------------------

def _old_run(tmp_path: Path, train, held, name: str = "run") -> Path:
    """A run folder whose data.json an older pobench wrote: digests of the records it chose, no records_rule."""
    from pobench.data.records import records_digest
    run = tmp_path / name
    run.mkdir()
    (run / "data.json").write_text(json.dumps({"source": "x", "train_source": "x", "records_digest": {
        "train": records_digest(train), "eval": records_digest(held)}}))
    return run


def _run_cfg(data_cfg):
    from pobench.config import RunConfig
    cfg = RunConfig(data=data_cfg)
    cfg.eval.num_prompts = 0
    return cfg


def test_a_run_made_before_prompt_in_train_is_evaluated_on_its_own_held_out_records(tmp_path):
    """A run trained before held-out prompts that are also training prompts were dropped was held out on them: its
    data.json's digest names that set, and `pobench eval`, `compare` and `--resume` refused it ('on other held-out
    records than the run started on'). Its records are rebuilt by the rules it was made with; a new run keeps the
    new rule, and a run on other data is still refused."""
    from pobench.data import RECORDS_RULE, check_run_records, run_records_rule
    from pobench.eval.runner import eval_items
    d = tmp_path / "data"
    d.mkdir()
    _write_jsonl(d / "train.jsonl", [_qa(f"q{i}?", f"yes {i}") for i in range(8)])
    _write_jsonl(d / "test.jsonl", [_qa("q1?", "yes 1"), *[_qa(f"t{i}?") for i in range(4)]])
    data_cfg = _data_cfg(d, eval_size=4)
    train, held = load(d / "train.jsonl").records, load(d / "test.jsonl").records
    old = _old_run(tmp_path, train, held[:4])   # as the run was held out: q1? among them
    assert run_records_rule(old) == 1
    items, _, data = eval_items(_run_cfg(data_cfg), [old])
    assert [it.prompt[-1]["content"] for it in items] == ["q1?", "t0?", "t1?", "t2?"]
    assert data.report["records_rule"] == 1 and data.report["eval_skipped"] == {}
    # a new run: the rule it was made by is saved, and it is evaluated without the training prompt
    new = tmp_path / "new"
    new.mkdir()
    report = load_suite_data(data_cfg).report
    assert report["records_rule"] == RECORDS_RULE == 2
    (new / "data.json").write_text(json.dumps(report))
    assert run_records_rule(new) == 2
    items, _, _ = eval_items(_run_cfg(data_cfg), [new])
    assert [it.prompt[-1]["content"] for it in items] == ["t0?", "t1?", "t2?", "t3?"]
    # the two compared: each is checked against its own records, the prompts are the current rule's
    items, _, _ = eval_items(_run_cfg(data_cfg), [old, new], "pobench compare")
    assert [it.prompt[-1]["content"] for it in items] == ["t0?", "t1?", "t2?", "t3?"]
    # the old run's records under the new rule are other records (the refusal this fixes) ...
    with pytest.raises(PobenchError, match="on other held-out records than the run started on"):
        check_run_records(old, report, "pobench eval")
    # ... and an old run on data edited since is still refused
    _write_jsonl(d / "test.jsonl", [_qa("q1?", "yes 1"), *[_qa(f"u{i}?") for i in range(4)]])
    with pytest.raises(PobenchError, match="on other held-out records than the run started on"):
        eval_items(_run_cfg(data_cfg), [old])


def test_a_run_made_before_the_eval_split_and_shard_refusals_reads_its_data_as_it_did(tmp_path):
    """A data.eval_split the data lacks beside another split, and a whole split file beside shards, are refused for
    new runs; a run made before was trained on what they read then (the carved train split; every file as a
    shard), which its digest names: its records are read that way again."""
    from pobench.eval.runner import eval_items
    rows = [_qa(f"q{i}?") for i in range(8)]
    d = tmp_path / "data"
    d.mkdir()
    _write_jsonl(d / "train.jsonl", rows)
    _write_jsonl(d / "test.jsonl", [_qa(f"t{i}?") for i in range(4)])
    typo = _data_cfg(d, eval_split="tset")
    records = load(d / "train.jsonl").records
    old = _old_run(tmp_path, records[:-4], records[-4:])
    with pytest.raises(PobenchError, match="no split 'tset'"):
        load_suite_data(typo)
    items, _, _ = eval_items(_run_cfg(typo), [old])
    assert [it.prompt[-1]["content"] for it in items] == ["q4?", "q5?", "q6?", "q7?"]

    (d / "test.jsonl").unlink()
    _write_jsonl(d / "train-00000-of-00002.jsonl", [_qa(f"s{i}?") for i in range(4)])   # another version
    _write_jsonl(d / "train-00001-of-00002.jsonl", [_qa(f"s{i}?") for i in range(4, 8)])
    # every file one shard, in name order (the shards, then train.jsonl), rows named by file and row
    files = ("train-00000-of-00002.jsonl", "train-00001-of-00002.jsonl", "train.jsonl")
    both = parse_rows(f"{d}[train]", ((f"{f}:{i}", row) for f in files for i, row in read_json_rows(d / f))).records
    old = _old_run(tmp_path, both[:-4], both[-4:], "sharded")
    with pytest.raises(PobenchError, match="both hold split 'train'"):
        load_suite_data(_data_cfg(d, eval_split=None))
    _, _, data = eval_items(_run_cfg(_data_cfg(d, eval_split=None)), [old])
    assert len(data.train) == 12 and [r.prompt[-1]["content"] for r in data.eval] == ["q4?", "q5?", "q6?", "q7?"]


def test_datasets_metadata_files_are_not_splits(tmp_path):
    """A hub repo's dataset_infos.json beside its split files was read as a split: a data.eval_split the folder
    lacks was refused naming 'dataset_infos, train' rather than carved off train."""
    from pobench.data.loading import source_has_split, source_splits
    _write_jsonl(tmp_path / "train.jsonl", [_qa(f"q{i}?") for i in range(8)])
    (tmp_path / "dataset_infos.json").write_text(json.dumps({"default": {"splits": {}}}))
    (tmp_path / ".train.jsonl").write_text("")   # hidden: an editor's or a copy's leftover
    assert source_splits(str(tmp_path)) == ["train"]
    assert not source_has_split(str(tmp_path), "dataset_infos")
    assert len(load_suite_data(_data_cfg(tmp_path)).eval) == 4   # eval_split test: carved off train
    _write_jsonl(tmp_path / "validation-00000-of-00001.jsonl", [_qa("v?")])
    assert source_splits(str(tmp_path)) == ["train", "validation"]
    with pytest.raises(PobenchError, match=r"no split 'test' \(data.eval_split\), but it holds train, validation: "):
        load_suite_data(_data_cfg(tmp_path))
