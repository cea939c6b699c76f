"""Anthropic HH-RLHF: whole transcripts with turns introduced by "\\n\\nHuman: " / "\\n\\nAssistant: "."""
from __future__ import annotations

import re

from pobench.data.records import PreferenceRecord

_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_ROLE = {"Human": "user", "Assistant": "assistant"}


class RowSkip(Exception):
    """A row-level defect that occurs in upstream data: the row is skipped and counted, not fatal."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def describe_value(value) -> str:
    """What a row holds where text was expected, in the data's terms: "a list of messages" (a chat schema's
    turns), "null", "int 5"."""
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
        return "a list of messages"
    if value is None:
        return "null"
    return f"{type(value).__name__} {value!r:.40}"


def parse_transcript(text: str) -> list[dict]:
    """Split an HH transcript into chat messages. Text before the first turn marker is a defect."""
    if text.startswith(("Human:", "Assistant:")):
        text = "\n\n" + text  # a few upstream rows drop the leading blank line
    parts = _TURN.split(text)
    if parts[0].strip():
        raise RowSkip("text_before_first_turn")
    return [
        {"role": _ROLE[role], "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2])
    ]


def hh_record(row: dict, row_id: str) -> PreferenceRecord:
    """prompt = every turn before the final assistant turn; chosen/rejected = the two final assistant turns.

    Rows whose chosen and rejected transcripts disagree before the final turn are skipped and counted
    (RowSkip "prefix_mismatch"): training on them would attach one answer to the wrong dialogue.
    """
    chosen, rejected = row["chosen"], row["rejected"]   # both keys first: a missing one is an error, not a skip
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str):   # parse_transcript's str methods failed on it with a Python AttributeError
            raise TypeError(f"'{key}' must be text for schema hh (a whole transcript), got {describe_value(value)}")
    chosen, rejected = parse_transcript(chosen), parse_transcript(rejected)
    if not chosen or chosen[-1]["role"] != "assistant" or not rejected or rejected[-1]["role"] != "assistant":
        raise RowSkip("no_final_assistant_turn")
    if chosen[:-1] != rejected[:-1]:
        raise RowSkip("prefix_mismatch")
    if len(chosen) < 2:
        raise RowSkip("no_prompt")
    if not chosen[-1]["content"] or not rejected[-1]["content"]:
        raise RowSkip("empty_completion")
    if chosen[-1]["content"] == rejected[-1]["content"]:   # no preference, as in UltraFeedback's rows
        raise RowSkip("identical_completions")
    return PreferenceRecord(prompt=chosen[:-1], chosen=chosen[-1]["content"],
                            rejected=rejected[-1]["content"], id=row_id)
