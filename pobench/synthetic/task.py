"""The synthetic task: a small token language with a hidden, prompt-dependent gold reward.

Everything here is a pure function of the task seed (numpy's PCG64), so a task is reproduced exactly on any
machine:

* vocabulary: 64 content tokens "t00".."t63" plus <pad>, <bos>, <sep>, <eos>;
* prompts: 4-6 content tokens drawn uniformly with replacement; completions: at most 16 content tokens;
* hidden 8-d token vectors u_t ~ N(0, U_SCALE^2 I); q(x) = (sum of the prompt tokens' u) / its norm, so each
  prompt picks a soft "good half" of the vocabulary: s(x, t) = tanh(<q(x), u_t>);
* gold r*(x, y) = sum_t s(x, y_t) / max(|y|, 8) - 0.5 * repeated(y) / |y|, where repeated(y) counts the
  tokens of y that already occurred earlier in y. The max(|y|, 8) makes very short answers pay (one good token
  is worth 1/8 of it), the penalty makes "repeat the best token" pay, and the best tokens differ per prompt,
  so no single trick (length, one token, one fixed set) scores well: a policy must read the prompt.
  The empty completion scores 0. The best possible score is that of the k largest distinct s(x, t) for the best
  k, usually 8 (best_gold).
* the behaviour process the reference policy is fine-tuned on: a hidden Markov chain over content tokens
  (random transition logits, start logits) tilted by exp(TILT * s(x, t)), run for a length drawn uniformly from
  4..16. It is mildly correlated with the gold reward, so reference samples spread widely in it.

Text form, what the rest of pobench sees: a prompt is one user message whose content is the tokens joined by
spaces ("t03 t17 t42 t08"); a completion is the same ("t05 t09"). The tokenizer (`build_tokenizer`) is a real
`PreTrainedTokenizerFast` (WordLevel) whose chat template renders "<bos> x1 .. xn <sep>" for the prompt and
" y1 .. yk <eos>" for the answer, so ChatFormatter, generation backends and the trainer work unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from pobench.errors import PobenchError

NUM_CONTENT = 64        # content tokens t00..t63
DIM = 8                 # hidden vector size
PROMPT_MIN, PROMPT_MAX = 4, 6
MAX_COMPLETION = 16     # content tokens; the model's answer is at most this plus <eos>
MIN_BEHAVIOUR_LENGTH = 4
U_SCALE = 1.5           # spread of <q, u_t>: s(x, t) ranges over most of (-1, 1)
TILT = 0.5              # behaviour process: transition logits + TILT * s(x, t) (mild; 0 would be reward-blind)
MARKOV_SCALE = 1.5      # std of the hidden chain's transition logits (higher: peakier chain, more repeats)
LENGTH_FLOOR = 8        # gold divides by max(|y|, LENGTH_FLOOR)
REPEAT_PENALTY = 0.5

SPECIALS = ["<pad>", "<bos>", "<sep>", "<eos>"]
CONTENT_TOKENS = [f"t{i:02d}" for i in range(NUM_CONTENT)]
TOKEN_INDEX = {t: i for i, t in enumerate(CONTENT_TOKENS)}
# Prompt "<bos> x1 .. xn <sep>", answer " y1 .. yk <eos>": the answer is what the template appends for an
# assistant turn, so ChatFormatter.completion_text returns exactly it.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %} {{ m['content'] }} {{ eos_token }}"
    "{% else %} {{ m['content'] }} <sep>{% endif %}{% endfor %}"
)


def parse_tokens(text: str, where: str) -> list[int]:
    """'t03 t17' -> [3, 17]; anything else is an error naming the token (the gold reward is only defined here)."""
    out = []
    for word in text.split():
        index = TOKEN_INDEX.get(word)
        if index is None:
            raise PobenchError(f"synthetic gold reward: {where} holds '{word[:20]}', not a token t00..t63")
        out.append(index)
    return out


def tokens_text(tokens) -> str:
    return " ".join(CONTENT_TOKENS[int(t)] for t in tokens)


def repeated(tokens) -> int:
    """How many tokens already occurred earlier in the sequence."""
    return len(tokens) - len(set(int(t) for t in tokens))


@dataclass(frozen=True)
class SyntheticTask:
    seed: int = 0

    @cached_property
    def _params(self) -> dict:
        rng = np.random.Generator(np.random.PCG64(self.seed))
        return {
            "u": rng.normal(0.0, U_SCALE, size=(NUM_CONTENT, DIM)),
            "start": rng.normal(0.0, MARKOV_SCALE, size=NUM_CONTENT),
            "transition": rng.normal(0.0, MARKOV_SCALE, size=(NUM_CONTENT, NUM_CONTENT)),
        }

    @property
    def u(self) -> np.ndarray:
        return self._params["u"]

    def prompt_direction(self, prompt) -> np.ndarray:
        """q(x): the normalised sum of the prompt tokens' vectors."""
        v = self.u[np.asarray(prompt, dtype=int)].sum(0)
        norm = np.linalg.norm(v)
        return v / norm if norm > 0 else v

    def token_scores(self, prompt) -> np.ndarray:
        """s(x, t) for every content token t: [64]."""
        return np.tanh(self.u @ self.prompt_direction(prompt))

    def gold(self, prompt, completion) -> float:
        """r*(x, y) on token indices."""
        if len(completion) == 0:
            return 0.0
        s = self.token_scores(prompt)
        total = float(s[np.asarray(completion, dtype=int)].sum())
        return total / max(len(completion), LENGTH_FLOOR) - REPEAT_PENALTY * repeated(completion) / len(completion)

    def best_gold(self, prompt) -> float:
        """The largest r* any completion can reach: the k best distinct tokens for the best k (r* divides by
        max(|y|, 8), so with eight good tokens a ninth only pays if it beats their mean: usually k = 8), or the
        empty completion's 0 where no token scores above 0."""
        best = np.sort(self.token_scores(prompt))[::-1][:MAX_COMPLETION]
        k = np.arange(1, len(best) + 1)
        return float(max(0.0, (np.cumsum(best) / np.maximum(k, LENGTH_FLOOR)).max()))

    def gold_text(self, prompt_messages: list[dict], completion: str) -> float:
        """r*(x, y) on pobench's text form (the registered gold reward)."""
        user = [m for m in prompt_messages if m.get("role") == "user"]
        if not user:
            raise PobenchError("synthetic gold reward: the prompt has no user message")
        return self.gold(parse_tokens(user[-1]["content"], "the prompt"), parse_tokens(completion, "a completion"))

    def sample_prompts(self, n: int, rng: np.random.Generator) -> list[list[int]]:
        lengths = rng.integers(PROMPT_MIN, PROMPT_MAX + 1, size=n)
        return [rng.integers(0, NUM_CONTENT, size=k).tolist() for k in lengths]

    def sample_behaviour(self, prompts: list[list[int]], rng: np.random.Generator) -> list[list[int]]:
        """One completion per prompt from the tilted Markov chain (vectorised over prompts)."""
        n = len(prompts)
        tilt = TILT * np.stack([self.token_scores(p) for p in prompts])            # [n, 64]
        lengths = rng.integers(MIN_BEHAVIOUR_LENGTH, MAX_COMPLETION + 1, size=n)
        out = np.zeros((n, MAX_COMPLETION), dtype=int)
        logits = self._params["start"][None, :] + tilt
        for step in range(MAX_COMPLETION):
            probs = np.exp(logits - logits.max(1, keepdims=True))
            probs /= probs.sum(1, keepdims=True)
            # inverse-CDF draw per row: one uniform per row keeps the stream independent of the vocabulary size
            draws = (probs.cumsum(1) < rng.random((n, 1))).sum(1).clip(max=NUM_CONTENT - 1)
            out[:, step] = draws
            logits = self._params["transition"][draws] + tilt
        return [out[i, :lengths[i]].tolist() for i in range(n)]

    def behaviour_logprob(self, prompt, completion) -> float:
        """log p_behaviour(y | x), the length factor included: what a perfect SFT would assign."""
        tilt = TILT * self.token_scores(prompt)
        logits = self._params["start"] + tilt
        total = 0.0
        for t in completion:
            total += float(logits[t] - np.log(np.exp(logits - logits.max()).sum()) - logits.max())
            logits = self._params["transition"][t] + tilt
        return total - float(np.log(MAX_COMPLETION - MIN_BEHAVIOUR_LENGTH + 1))


def build_tokenizer():
    """A WordLevel PreTrainedTokenizerFast over the task's tokens, with a chat template (see the module doc)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CONTENT_TOKENS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)   # joins words with single spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>",
                                        eos_token="<eos>", unk_token="<pad>",
                                        additional_special_tokens=["<sep>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def content_token_id(index: int) -> int:
    """Tokenizer id of content token t<index>."""
    return len(SPECIALS) + int(index)
