"""Chat template + truncation: PreferenceRecord -> token ids of prompt, chosen and rejected."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from pobench.data.records import PreferenceRecord
from pobench.errors import PobenchError


Sequence = tuple  # (prompt ids, completion ids): what the model scores
OPEN_END = "\ue000"   # a private-use character no answer holds: marks where an unfinished answer is cut


def sequence_key(prompt: list[int], completion: list[int]) -> str:
    """Content hash of a (prompt, completion): the reference cache's key (template and truncation included)."""
    return hashlib.sha1((",".join(map(str, prompt)) + "|" + ",".join(map(str, completion))).encode()).hexdigest()


@dataclass
class TokenizedPair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    candidates: list[list[int]] = field(default_factory=list)  # the record's candidate pool, tokenized
    scores: list[float] | None = None                          # reward-model scores of the candidates
    source: PreferenceRecord | None = field(default=None, compare=False, repr=False)  # the text it came from
    truncated: tuple[bool, bool] = field(default=(False, False), compare=False)  # (prompt cut, a completion cut)
    group: int | None = field(default=None, compare=False)     # set by samplers that draw several negatives per
                                                               # record: pairs of one record share it

    def with_rejected(self, rejected: list[int]) -> "TokenizedPair":
        return TokenizedPair(self.prompt, self.chosen, rejected, source=self.source)


def _plain_prompt(messages: list[dict]) -> str:
    role = {"user": "User", "assistant": "Assistant", "system": "System"}
    return "".join(f"{role.get(m['role'], m['role'])}: {m['content']}\n\n" for m in messages) + "Assistant:"


def _merge_turns(messages: list[dict]) -> list[dict]:
    """Consecutive messages of one role as one message, their texts a blank line apart."""
    merged: list[dict] = []
    for m in messages:
        if merged and merged[-1]["role"] == m["role"]:
            merged[-1] = {**merged[-1], "content": merged[-1]["content"] + "\n\n" + m["content"]}
        else:
            merged.append(dict(m))
    return merged


def _simpler_conversations(messages: list[dict]):
    """What a strict template may take instead: the turns merged; then a leading system turn folded into the
    first user turn too."""
    merged = _merge_turns(messages)
    yield merged
    if len(merged) > 1 and merged[0]["role"] == "system" and merged[1]["role"] == "user":
        yield [{"role": "user", "content": merged[0]["content"] + "\n\n" + merged[1]["content"]}] + merged[2:]


class ChatFormatter:
    """Renders prompts with the tokenizer's chat template ('auto'), a plain fallback ('plain'), or a given
    Jinja template; completions are whatever the template appends for an assistant turn (e.g. <|im_end|>)."""

    def __init__(self, tokenizer, template: str = "auto"):
        self.tokenizer = tokenizer
        if template == "auto":
            self.mode = "template" if getattr(tokenizer, "chat_template", None) else "plain"
        elif template == "plain":
            self.mode = "plain"
        else:
            tokenizer.chat_template = template
            self.mode = "template"

    def prompt_text(self, messages: list[dict]) -> str:
        if self.mode == "plain":
            bos = self.tokenizer.bos_token or ""
            return bos + _plain_prompt(messages)
        return self._render(messages, add_generation_prompt=True)

    def _render(self, messages: list[dict], **options) -> str:
        """The chat template's text. Templates that insist on alternating user/assistant turns (Mistral's, Llama
        2's) or on no system turn (Gemma's) reject some records (4 of HH-RLHF's 1,992 samples hold two turns of one
        role in a row): those get the turns merged, then the system turn folded into the first user turn; a prompt
        the template takes as it is stays as it is."""
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, **options)
        except Exception as rejected:
            for simpler in _simpler_conversations(messages):
                try:
                    return self.tokenizer.apply_chat_template(simpler, tokenize=False, **options)
                except Exception:
                    continue
            raise rejected

    def completion_text(self, messages: list[dict], prompt_text: str, completion: str, finished: bool = True) -> str:
        """The text after the prompt. `finished=False` (a sample cut by its token limit) keeps it open: no end of
        turn or EOS, which would teach that the cut is where an answer ends."""
        eos = self.tokenizer.eos_token or ""
        if self.mode == "plain":
            return " " + completion + (eos if finished else "")
        if finished:
            return self._assistant_turn(messages, prompt_text, completion, eos)
        # the turn rendered with a marker after the answer, cut at the marker: whatever the template puts before
        # the answer (an empty <think></think> block) stays, and what closes the turn goes
        marked = self._assistant_turn(messages, prompt_text, completion + OPEN_END, eos)
        at = marked.find(OPEN_END)
        return marked[:at] if at >= 0 else completion

    def _assistant_turn(self, messages: list[dict], prompt_text: str, completion: str, eos: str) -> str:
        full = self._render(messages + [{"role": "assistant", "content": completion}])
        # templates that rewrite earlier turns: fall back to text + EOS
        return full[len(prompt_text):] if full.startswith(prompt_text) else completion + eos

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_completion(formatter: ChatFormatter, messages: list[dict], prompt_text: str, text: str,
                      max_completion: int, finished: bool = True) -> list[int]:
    ids = formatter.encode(formatter.completion_text(messages, prompt_text, text, finished))[:max_completion]
    if not ids and not finished:
        # a cut sample whose text is empty (its tokens were all special ones) has no token to score, open: it is
        # scored closed, as the empty answer, so that every sequence has a token (a log-prob, a length)
        ids = formatter.encode(formatter.completion_text(messages, prompt_text, text, True))[:max_completion]
    return ids


def tokenize_record(record: PreferenceRecord, formatter: ChatFormatter, max_prompt: int, max_completion: int,
                    with_candidates: bool = False) -> TokenizedPair:
    """Prompt keeps its last `max_prompt` tokens (the turn being answered); completions keep their first."""
    try:
        prompt_text = formatter.prompt_text(record.prompt)
    except Exception as e:  # a template that rejects the roles or their order
        raise PobenchError(f"record {record.id}: the chat template rejects this prompt ({type(e).__name__}: {e})") from None

    def completion(text: str) -> list[int]:
        return encode_completion(formatter, record.prompt, prompt_text, text, max_completion)

    candidates = [completion(c) for c in record.candidates] if with_candidates else []
    prompt_ids = formatter.encode(prompt_text)
    full = [formatter.encode(formatter.completion_text(record.prompt, prompt_text, t))
            for t in (record.chosen, record.rejected)]
    return TokenizedPair(prompt_ids[-max_prompt:], full[0][:max_completion], full[1][:max_completion], candidates,
                         record.scores if with_candidates else None, source=record,
                         truncated=(len(prompt_ids) > max_prompt, any(len(c) > max_completion for c in full)))


def truncation_counts(pairs: list[TokenizedPair]) -> dict:
    """How many records lost prompt tokens (their start) or completion tokens (their end) to the length limits:
    documented behaviour, counted so that a run says how much of its data it did not see whole."""
    return {"prompts": sum(p.truncated[0] for p in pairs), "completions": sum(p.truncated[1] for p in pairs)}
