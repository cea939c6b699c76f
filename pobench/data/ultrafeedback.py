"""UltraFeedback in its three upstream schemas: binarized (H4), raw (openbmb), on-policy (princeton-nlp)."""
from __future__ import annotations

import math
import numbers
import random

from pobench.data.hh import RowSkip
from pobench.data.records import PreferenceRecord

ROLES = ("system", "user", "assistant")


def _list(row: dict, key: str) -> list:
    """row[key], which must be a list: a string here is a schema defect (an error naming the row), not a skip."""
    value = row[key]
    if not isinstance(value, list):
        raise TypeError(f"'{key}' must be a list, got {type(value).__name__}")
    return value


def _text(row: dict, key: str) -> str:
    """row[key], which must be a string: anything else became a prompt's text (null trained on as "None")."""
    value = row[key]
    if not isinstance(value, str):
        raise TypeError(f"'{key}' must be a string, got {type(value).__name__}")
    return value


def _messages(row: dict, key: str) -> list[dict]:
    """row[key] as chat messages, each {"role": system | user | assistant, "content": a string}, checked here: a
    defect used to surface only in training, after the model's load, naming a record id rather than the row."""
    messages = _list(row, key)
    for n, message in enumerate(messages):
        _check_message(message, f"{key}[{n}]")
    return messages


def _check_message(message, where: str) -> None:
    if not isinstance(message, dict):
        raise TypeError(f"{where} must be a message (an object with role and content), got {type(message).__name__}")
    for key in ("role", "content"):   # a missing role is an error as a missing content is, not a skipped row
        if key not in message:
            raise KeyError(f"{where}.{key}")
    if message["role"] not in ROLES:
        raise ValueError(f"{where}.role must be one of {', '.join(ROLES)}, got {message['role']!r}")
    if not isinstance(message["content"], str):
        raise TypeError(f"{where}.content must be a string, got {type(message['content']).__name__}")


def _last_assistant(messages: list[dict]) -> str:
    if not messages or messages[-1].get("role") != "assistant":
        raise RowSkip("no_final_assistant_turn")
    return messages[-1]["content"]


def _score(value, where: str) -> float:
    """A score as a float. It must be a JSON number: float() also took true (1.0) and text ("9", "nan"), so a
    schema mix-up ranked answers silently. A null is a score missing upstream, skipped as nan_score with NaN."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where} must be a number, got {type(value).__name__} {value!r:.40}")
    return float(value)


def _check_scores(scores: list[float]) -> list[float]:
    if any(math.isnan(s) or math.isinf(s) for s in scores):
        raise RowSkip("nan_score")
    return scores


def _id(row: dict, row_id: str) -> str:
    """The row's prompt_id, else its place in the file. Only text or an integer is an id: str() turned a list or a
    bool into one ("['a']", "True"), hiding a schema mix-up, and two such rows could not match as duplicates."""
    value = row.get("prompt_id")
    if value is None or value == "":
        return row_id
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"'prompt_id' must be a string or an integer, got {type(value).__name__} {value!r:.40}")
    return str(value)


def binarized_record(row: dict, row_id: str) -> PreferenceRecord:
    chosen, rejected = _messages(row, "chosen"), _messages(row, "rejected")
    prompt = chosen[:-1] if len(chosen) > 1 else [{"role": "user", "content": _text(row, "prompt")}]
    if rejected[:-1] and rejected[:-1] != prompt:
        raise RowSkip("prefix_mismatch")
    record = PreferenceRecord(prompt=prompt, chosen=_last_assistant(chosen), rejected=_last_assistant(rejected),
                              id=_id(row, row_id))
    if not record.chosen.strip() or not record.rejected.strip():
        raise RowSkip("empty_completion")
    if record.chosen == record.rejected:   # no preference to learn; its margin is 0 and it would count as wrong
        raise RowSkip("identical_completions")
    return record


def raw_record(row: dict, row_id: str, rejected: str = "worst", seed: int = 0) -> PreferenceRecord:
    """openbmb/UltraFeedback: chosen = best overall_score, rejected = worst (or a random lower one)."""
    every, instruction = _list(row, "completions"), _text(row, "instruction")   # (an error before any skip)
    kept = [(n, c) for n, c in enumerate(every) if _response(c, n).strip()]
    scores = [_score(c["overall_score"], f"completions[{n}].overall_score") for n, c in kept]   # (an error before any skip)
    completions = [c for _, c in kept]
    if len(completions) < 2:
        raise RowSkip("fewer_than_two_completions")
    scores = _check_scores(scores)
    responses = [c["response"] for c in completions]
    best = max(range(len(scores)), key=scores.__getitem__)
    lower = [i for i in range(len(scores)) if scores[i] < scores[best]]
    if not lower:
        raise RowSkip("all_scores_tied")
    # the chosen's own text scored lower is no preference to learn (as in the other schemas' identical_completions);
    # left out of the draw rather than skipped after it, so that which rows are kept does not depend on the seed
    lower = [i for i in lower if responses[i] != responses[best]]
    if not lower:
        raise RowSkip("identical_completions")
    if rejected == "worst":
        worst = min(lower, key=scores.__getitem__)
    else:  # seeded per row so every algorithm and rerun sees the same pair
        worst = random.Random(f"{seed}:{row_id}").choice(lower)
    return PreferenceRecord(prompt=[{"role": "user", "content": instruction}], chosen=responses[best],
                            rejected=responses[worst], candidates=responses, scores=scores, id=row_id)


def _response(completion, n: int) -> str:
    """A raw completion's text. A missing one is an error naming it, as a null one is (it was dropped unseen)."""
    if not isinstance(completion, dict):
        raise TypeError(f"completions[{n}] must be an object, got {type(completion).__name__}")
    if "response" not in completion:
        raise KeyError(f"completions[{n}].response")
    if not isinstance(completion["response"], str):
        raise TypeError(f"completions[{n}].response must be a string, got {type(completion['response']).__name__}")
    return completion["response"]


def onpolicy_record(row: dict, row_id: str) -> PreferenceRecord:
    """princeton-nlp/llama3-ultrafeedback-armorm: 5 policy samples scored by a reward model."""
    responses = list(_list(row, "all_generated_responses"))
    if not all(isinstance(r, str) for r in responses):
        raise TypeError(f"'all_generated_responses' must hold strings, got "
                        f"{next(type(r).__name__ for r in responses if not isinstance(r, str))}")
    scores = _check_scores([_score(s, f"all_rm_scores[{i}]") for i, s in enumerate(_list(row, "all_rm_scores"))])
    if len(responses) != len(scores):
        raise RowSkip("scores_do_not_match_responses")
    if row.get("chosen"):
        chosen_turns, rejected_turns = _messages(row, "chosen"), _messages(row, "rejected")
        prompt = chosen_turns[:-1] or [{"role": "user", "content": _text(row, "prompt")}]
        if rejected_turns[:-1] and rejected_turns[:-1] != prompt:   # an answer to another conversation
            raise RowSkip("prefix_mismatch")
        chosen, rejected_text = _last_assistant(chosen_turns), _last_assistant(rejected_turns)
    else:
        prompt = [{"role": "user", "content": _text(row, "prompt")}]
        chosen = responses[max(range(len(scores)), key=scores.__getitem__)]
        rejected_text = responses[min(range(len(scores)), key=scores.__getitem__)]
    if not chosen.strip() or not rejected_text.strip():
        raise RowSkip("empty_completion")
    if chosen == rejected_text:
        raise RowSkip("all_scores_tied")
    return PreferenceRecord(prompt=prompt, chosen=chosen, rejected=rejected_text, candidates=responses,
                            scores=scores, id=_id(row, row_id))
