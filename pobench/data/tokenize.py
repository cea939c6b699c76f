"""Chat template + truncation: PreferenceRecord -> token ids of prompt, chosen and rejected.

A completion's ids are those of the joint text prompt + completion after the prompt's ids (ChatFormatter.encode_after:
the prompt tokenized again from its last special token on), one path for every completion tokenized (completion_ids,
tokenize_records, encode_completions). Online samples are not tokenized: they keep the ids generated, closed as the
template closes a completion (closing_ids)."""
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

    def encode_all(self, texts: list[str]) -> list[list[int]]:
        """`encode` of each text, in one call (a fast tokenizer encodes a batch in parallel)."""
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    def encode_prompts(self, prompt_texts: list[str]) -> list["EncodedPrompt"]:
        """The prompts' ids, and the tail of each that a completion is tokenized with (`encode_after`): its text
        from its last special token that splits the text (`split_tokens`) on, checked to give the ids the prompt
        ends with; the whole prompt where it holds no such token or the check fails."""
        if not self.split_tokens or not prompt_texts:
            return [EncodedPrompt(text, ids) for text, ids in zip(prompt_texts, self.encode_all(prompt_texts))]
        encoded = self.tokenizer(prompt_texts, add_special_tokens=False, return_offsets_mapping=True)
        prompts = [self._with_tail(text, ids, offsets)
                   for text, ids, offsets in zip(prompt_texts, encoded["input_ids"], encoded["offset_mapping"])]
        tails = list({p.tail for p in prompts if p.tail_start})   # a template's prompts mostly share one
        alone = dict(zip(tails, self.encode_all(tails)))
        return [p if not p.tail_start or alone[p.tail] == p.tail_ids else EncodedPrompt(p.text, p.ids)
                for p in prompts]

    def _with_tail(self, text: str, ids: list[int], offsets: list[tuple[int, int]]) -> "EncodedPrompt":
        split = self.split_tokens
        last = next((i for i in range(len(ids) - 1, -1, -1) if ids[i] in split), None)
        if last is None or text[slice(*offsets[last])] != split[ids[last]]:
            return EncodedPrompt(text, ids)
        return EncodedPrompt(text, ids, offsets[last][0], last)

    @property
    def split_tokens(self) -> dict[int, str]:
        """Special tokens (id: text) at which a fast tokenizer's ids of a text are those of the text before the
        token, then those of the rest from the token on, whatever follows: a fast tokenizer (HF `tokenizers`) first
        cuts its added tokens out of the text, then normalizes, pre-tokenizes and encodes each piece between them
        apart. A token qualifies if it is matched on the raw text (not `normalized`), takes no space before it
        (`lstrip`) and looks at no character before it (`single_word`), and no other added token holds its text
        (which could match across it); the pieces after it keep their offset from the start of the text (Metaspace's
        prepend_scheme "first" adds its prefix only at offset 0) since the tail starts with the token itself. Empty
        where the tokenizer is not a fast one or encodes special tokens as text (`split_special_tokens`)."""
        if not hasattr(self, "_split_tokens"):
            backend = getattr(self.tokenizer, "backend_tokenizer", None)
            self._split_tokens = {}
            if getattr(self.tokenizer, "is_fast", False) and backend is not None and \
                    not getattr(backend, "encode_special_tokens", True):
                added = backend.get_added_tokens_decoder()
                texts = [token.content for token in added.values()]
                self._split_tokens = {i: t.content for i, t in added.items() if t.special and t.content and
                                      not (t.normalized or t.lstrip or t.single_word) and
                                      sum(t.content in other for other in texts) == 1}
        return self._split_tokens

    def encode_after(self, prompts: list["EncodedPrompt"], texts: list[str]) -> list[list[int]]:
        """The ids of each text where it follows its prompt (pairwise): those of the joint text prompt + text after
        the prompt's own ids. Tokenized alone, a completion can start otherwise than in the joint text: a
        SentencePiece tokenizer with a dummy prefix (Llama 2, Mistral v0.1: legacy, add_dummy_prefix) starts every
        call with a word boundary '▁', so '[/INST]' + 'Hi' gave '▁Hi' where the joint text has 'Hi', and '[/INST]' +
        ' Hi' gave '▁' '▁Hi' where it has '▁Hi': a sequence the policy, continuing the prompt's ids, would not
        produce.

        The joint text is tokenized from the prompt's tail on (`encode_prompts`), since the ids before the tail are
        the prompt's whatever follows: the whole prompt tokenized again with each completion made tokenizing a
        dataset 1.4-2.3x slower than tokenizing the completions alone. All the texts go in one call.

        Where the prompt's ids are not a prefix of the joint ids (a token merges the prompt's last characters with
        the completion's first), no split of the joint ids leaves the prompt as the model is given it, here and at
        generation: the prompt keeps its ids, and the completion is its text tokenized as it reads after other
        text (`encode_continuations`), so a dummy prefix is not added there either.

        SmolLM2's byte-level BPE (the default) gives the ids it gave when completions were tokenized alone: its
        pre-tokenizer splits at the template's last newline and tokenizes what follows as it did alone, and an answer
        that starts with whitespace (which joins that newline) is tokenized alone, as before, since the tokenizer
        adds no prefix. Tested on every record of the shipped HH-RLHF sample."""
        joint = self.encode_all([prompt.tail + text for prompt, text in zip(prompts, texts)])
        ids = [j[len(p.tail_ids):] if j[:len(p.tail_ids)] == p.tail_ids else None for p, j in zip(prompts, joint)]
        merged = [k for k, found in enumerate(ids) if found is None]
        for k, continued in zip(merged, self.encode_continuations([texts[k] for k in merged])):
            ids[k] = continued
        return ids

    def encode_continuations(self, texts: list[str]) -> list[list[int]]:
        """Each text's ids as they read after other text. A tokenizer that starts each call with a word boundary
        (`adds_prefix`) gives them after a newline, with the newline's own ids cut off (a newline is not part of a
        word, so the completion's first word is tokenized as it is mid-text); if the text's start merges with the
        newline, or the tokenizer adds no prefix, they are the text's ids alone (as before joint tokenization)."""
        if not self.adds_prefix:
            return self.encode_all(texts)
        anchor = self.encode("\n")
        return [ids[len(anchor):] if anchor and ids[:len(anchor)] == anchor else self.encode(text)
                for text, ids in zip(texts, self.encode_all(["\n" + text for text in texts]))]

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



@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt's text and ids. Its tail, the text from `tail_start` (characters) on, has the ids from index
    `tail_index` on: the ids of the joint text prompt + completion are those before, then those of tail + completion."""
    text: str
    ids: list[int]
    tail_start: int = 0
    tail_index: int = 0

    @property
    def tail(self) -> str:
        return self.text[self.tail_start:]

    @property
    def tail_ids(self) -> list[int]:
        return self.ids[self.tail_index:]


def completion_ids(formatter: ChatFormatter, messages: list[list[dict]], prompts: list[EncodedPrompt],
                   texts: list[str], finished: list[bool] | None = None) -> list[list[int]]:
    """Completions' ids after their prompts (pairwise: each text's conversation and prompt; `finished`: one flag
    per text, default all finished), untruncated (`ChatFormatter.encode_after`): the one path every completion is
    tokenized by (the dataset's pairs and candidates, generated pools; online samples keep the ids generated,
    closing_ids)."""
    finished = [True] * len(texts) if finished is None else finished
    ids = formatter.encode_after(prompts, [formatter.completion_text(m, p.text, text, done)
                                           for m, p, text, done in zip(messages, prompts, texts, finished)])
    # a cut sample whose text is empty (its tokens were all special ones) has no token to score, open: it is
    # scored closed, as the empty answer, so that every sequence has a token (a log-prob, a length)
    empty = [k for k, (found, done) in enumerate(zip(ids, finished)) if not found and not done]
    closed = formatter.encode_after([prompts[k] for k in empty],
                                    [formatter.completion_text(messages[k], prompts[k].text, texts[k]) for k in empty])
    for k, closed_ids in zip(empty, closed):
        ids[k] = closed_ids
    return ids


def encode_completions(formatter: ChatFormatter, messages: list[dict], prompt_text: str, texts: list[str],
                       max_completion: int, finished: list[bool] | None = None) -> list[list[int]]:
    """One prompt's completions' ids after it, the first `max_completion` of each kept."""
    prompts = formatter.encode_prompts([prompt_text]) * len(texts)
    return [ids[:max_completion] for ids in completion_ids(formatter, [messages] * len(texts), prompts, texts,
                                                           finished)]


def _prompt_text(formatter: ChatFormatter, record: PreferenceRecord) -> str:
    try:
        return formatter.prompt_text(record.prompt)
    except Exception as e:  # a template that rejects the roles or their order
        raise PobenchError(f"record {record.id}: the chat template rejects this prompt ({type(e).__name__}: {e})") from None


def tokenize_records(records: list[PreferenceRecord], formatter: ChatFormatter, max_prompt: int,
                     max_completion: int, with_candidates: bool = False, chunk: int = 512) -> list[TokenizedPair]:
    """Prompts keep their last `max_prompt` tokens (the turn being answered); completions keep their first.
    `chunk` records at a time go to the tokenizer in one call (their prompts), then one more (their completions)."""
    pairs = []
    for start in range(0, len(records), chunk):
        part = records[start:start + chunk]
        prompts = formatter.encode_prompts([_prompt_text(formatter, r) for r in part])
        texts = [(list(r.candidates) if with_candidates else []) + [r.chosen, r.rejected] for r in part]
        owner = [k for k, own in enumerate(texts) for _ in own]
        ids = iter(completion_ids(formatter, [part[k].prompt for k in owner], [prompts[k] for k in owner],
                                  [text for own in texts for text in own]))
        for record, prompt, own in zip(part, prompts, texts):
            *pool, chosen, rejected = [next(ids) for _ in own]
            pairs.append(TokenizedPair(
                prompt.ids[-max_prompt:], chosen[:max_completion], rejected[:max_completion],
                [c[:max_completion] for c in pool], record.scores if with_candidates else None, source=record,
                truncated=(len(prompt.ids) > max_prompt, any(len(c) > max_completion for c in (chosen, rejected)))))
    return pairs


def closing_ids(formatter: ChatFormatter, messages: list[dict], prompt: EncodedPrompt, end_id: int) -> list[int]:
    """The ids the template puts after `end_id` where it closes an answer: what a dataset completion has after the
    token a generated one stops at (SmolLM2: the newline after <|im_end|>, which generation never produces). A
    finished sample takes them, so that neither a sample nor the dataset's chosen is told apart by its ending. []
    where the closed turn ends with `end_id` or does not hold it (plain prompts; a model that stops at an EOS the
    template does not close turns with). The closing follows a special token, so any answer gives the same ids."""
    closed = completion_ids(formatter, [messages], [prompt], [""])[0]
    ends = [i for i, t in enumerate(closed) if t == end_id]
    return closed[ends[-1] + 1:] if ends else []


def tokenize_record(record: PreferenceRecord, formatter: ChatFormatter, max_prompt: int, max_completion: int,
                    with_candidates: bool = False) -> TokenizedPair:
    """`tokenize_records` of one record."""
    return tokenize_records([record], formatter, max_prompt, max_completion, with_candidates)[0]


def truncation_counts(pairs: list[TokenizedPair]) -> dict:
    """How many records lost prompt tokens (their start) or completion tokens (their end) to the length limits:
    documented behaviour, counted so that a run says how much of its data it did not see whole."""
    return {"prompts": sum(p.truncated[0] for p in pairs), "completions": sum(p.truncated[1] for p in pairs)}
