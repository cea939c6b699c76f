"""Chat template + truncation: PreferenceRecord -> token ids of prompt, chosen and rejected.

A completion's ids are those of the joint text prompt + completion after the prompt's ids (ChatFormatter.encode_after),
one path for every completion tokenized (completion_ids / encode_completion). Online samples are not tokenized: they
keep the ids generated, closed as the template closes a completion (closing_ids)."""
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
    chosen_score: float | None = None   # the chosen's score by a generated pool's reward model (a dataset pool's
                                        # is that of the chosen's text among its candidates: mc_kernel.chosen_score)

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

    def encode_after(self, prompt_text: str, prompt_ids: list[int], text: str) -> list[int]:
        """The ids of `text` where it follows the prompt: those of the joint text prompt + `text` after the prompt's
        own ids. Tokenized alone, a completion can start otherwise than in the joint text: a SentencePiece tokenizer
        with a dummy prefix (Llama 2, Mistral v0.1: legacy, add_dummy_prefix) starts every call with a word boundary
        '▁', so '[/INST]' + 'Hi' gave '▁Hi' where the joint text has 'Hi', and '[/INST]' + ' Hi' gave '▁' '▁Hi'
        where it has '▁Hi': a sequence the policy, continuing the prompt's ids, would not produce.

        Where the prompt's ids are not a prefix of the joint ids (a token merges the prompt's last characters with
        the completion's first), no split of the joint ids leaves the prompt as the model is given it, here and at
        generation: the prompt keeps its ids, and the completion is its text tokenized as it reads after other
        text (`encode_continuation`), so a dummy prefix is not added there either.

        SmolLM2's byte-level BPE (the default) gives the ids it gave when completions were tokenized alone: its
        pre-tokenizer splits at the template's last newline and tokenizes what follows as it did alone, and an answer
        that starts with whitespace (which joins that newline) is tokenized alone, as before, since the tokenizer
        adds no prefix. Tested on every record of the shipped HH-RLHF sample."""
        joint = self.encode(prompt_text + text)
        n = len(prompt_ids)
        if joint[:n] == prompt_ids:
            return joint[n:]
        return self.encode_continuation(text)

    def encode_continuation(self, text: str) -> list[int]:
        """`text`'s ids as they read after other text. A tokenizer that starts each call with a word boundary
        (`adds_prefix`) gives them after a newline, with the newline's own ids cut off (a newline is not part of a
        word, so the completion's first word is tokenized as it is mid-text); if the text's start merges with the
        newline, or the tokenizer adds no prefix, they are the text's ids alone (as before joint tokenization)."""
        if not self.adds_prefix:
            return self.encode(text)
        anchor = self.encode("\n")
        ids = self.encode("\n" + text)
        return ids[len(anchor):] if anchor and ids[:len(anchor)] == anchor else self.encode(text)

    @property
    def adds_prefix(self) -> bool:
        """Whether the tokenizer starts every call with a word boundary: 'a' alone gives other ids than 'a' after a
        newline ('▁a' against 'a'). Probed once; a tokenizer the probe cannot read counts as adding none."""
        if not hasattr(self, "_adds_prefix"):
            try:
                anchor, after = self.encode("\n"), self.encode("\na")
                self._adds_prefix = bool(anchor) and after[:len(anchor)] == anchor and \
                    after[len(anchor):] != self.encode("a")
            except Exception:
                self._adds_prefix = False
        return self._adds_prefix


def completion_ids(formatter: ChatFormatter, messages: list[dict], prompt_text: str, text: str,
                   finished: bool = True, prompt_ids: list[int] | None = None) -> list[int]:
    """A completion's ids after its prompt (`ChatFormatter.encode_after`), untruncated: the one path every
    completion is tokenized by (the dataset's pairs and candidates, generated pools; online samples keep the ids
    generated, see closing_ids).
    `prompt_ids`: the whole prompt's ids (before any truncation), when the caller has them."""
    if prompt_ids is None:
        prompt_ids = formatter.encode(prompt_text)
    ids = formatter.encode_after(prompt_text, prompt_ids,
                                 formatter.completion_text(messages, prompt_text, text, finished))
    if not ids and not finished:
        # a cut sample whose text is empty (its tokens were all special ones) has no token to score, open: it is
        # scored closed, as the empty answer, so that every sequence has a token (a log-prob, a length)
        ids = formatter.encode_after(prompt_text, prompt_ids, formatter.completion_text(messages, prompt_text, text))
    return ids


def encode_completion(formatter: ChatFormatter, messages: list[dict], prompt_text: str, text: str,
                      max_completion: int, finished: bool = True, prompt_ids: list[int] | None = None) -> list[int]:
    """A completion's ids after its prompt, its first `max_completion` kept."""
    return completion_ids(formatter, messages, prompt_text, text, finished, prompt_ids)[:max_completion]


def closing_ids(formatter: ChatFormatter, messages: list[dict], prompt_text: str, prompt_ids: list[int],
                end_id: int) -> list[int]:
    """The ids the template puts after `end_id` where it closes an answer: what a dataset completion has after the
    token a generated one stops at (SmolLM2: the newline after <|im_end|>, which generation never produces). A
    finished sample takes them, so that neither a sample nor the dataset's chosen is told apart by its ending. []
    where the closed turn ends with `end_id` or does not hold it (plain prompts; a model that stops at an EOS the
    template does not close turns with). The closing follows a special token, so any answer gives the same ids."""
    closed = completion_ids(formatter, messages, prompt_text, "", prompt_ids=prompt_ids)
    ends = [i for i, t in enumerate(closed) if t == end_id]
    return closed[ends[-1] + 1:] if ends else []


def tokenize_record(record: PreferenceRecord, formatter: ChatFormatter, max_prompt: int, max_completion: int,
                    with_candidates: bool = False) -> TokenizedPair:
    """Prompt keeps its last `max_prompt` tokens (the turn being answered); completions keep their first."""
    try:
        prompt_text = formatter.prompt_text(record.prompt)
    except Exception as e:  # a template that rejects the roles or their order
        raise PobenchError(f"record {record.id}: the chat template rejects this prompt ({type(e).__name__}: {e})") from None

    prompt_ids = formatter.encode(prompt_text)

    def completion(text: str) -> list[int]:
        return completion_ids(formatter, record.prompt, prompt_text, text, prompt_ids=prompt_ids)

    candidates = [completion(c)[:max_completion] for c in record.candidates] if with_candidates else []
    full = [completion(t) for t in (record.chosen, record.rejected)]
    return TokenizedPair(prompt_ids[-max_prompt:], full[0][:max_completion], full[1][:max_completion], candidates,
                         record.scores if with_candidates else None, source=record,
                         truncated=(len(prompt_ids) > max_prompt, any(len(c) > max_completion for c in full)))


def truncation_counts(pairs: list[TokenizedPair]) -> dict:
    """How many records lost prompt tokens (their start) or completion tokens (their end) to the length limits:
    documented behaviour, counted so that a run says how much of its data it did not see whole."""
    return {"prompts": sum(p.truncated[0] for p in pairs), "completions": sum(p.truncated[1] for p in pairs)}
