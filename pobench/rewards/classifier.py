"""Reward models that are `AutoModelForSequenceClassification` checkpoints with one output (num_labels=1).

That is the format TRL's RewardTrainer, OpenRLHF and most hub reward models (Skywork, ArmoRM's backbone,
...) save, and the one `pobench train-rm` writes, so a reward model trained here and one downloaded are used
the same way. Rendering and encoding live here and nowhere else: training and scoring must turn a
(prompt, completion) into exactly the same tokens, or the trained head reads inputs it never saw.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from pobench.errors import PobenchError
from pobench.models import pick_device

_ROLES = {"user": "User", "assistant": "Assistant", "system": "System"}


def uses_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render(tokenizer, messages: list[dict], completion: str) -> str:
    """The conversation as the RM reads it: its own chat template when it has one (chat RMs were trained on
    it), else 'User: ...\\n\\nAssistant: ...' turns, the HH-RLHF layout that encoder RMs usually see."""
    if uses_chat_template(tokenizer):
        return tokenizer.apply_chat_template(list(messages) + [{"role": "assistant", "content": completion}],
                                             tokenize=False)
    turns = [f"{_ROLES.get(m['role'], m['role'])}: {m['content']}" for m in messages]
    return "\n\n".join(turns + [f"Assistant: {completion}"])


@contextmanager
def _left_truncation(tokenizer):
    """Long conversations lose their beginning, not their end: the completion being judged (and the turn it
    answers) is what the reward must see."""
    saved = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        yield
    finally:
        tokenizer.truncation_side = saved


def length_batches(tokenizer, texts: list[str], max_length: int, batch_size: int):
    """Yield (indices, padded batch) over `texts`, longest first, `batch_size` texts at a time.

    Batches of similar length: conversations vary from 30 to 500+ tokens, and padding all 32 texts of a
    16-pair HH-RLHF step to the longest one computed 1.6x the tokens of length-sorted groups of 8 (8168 vs
    5193 per step at max_length 256). A chat template writes its
    own special tokens; plain text gets the tokenizer's (BERT's [CLS] ... [SEP], whose [CLS] position the
    classification head pools)."""
    with _left_truncation(tokenizer):
        enc = tokenizer(texts, truncation=True, max_length=max_length,
                        add_special_tokens=not uses_chat_template(tokenizer))
    order = sorted(range(len(texts)), key=lambda i: -len(enc["input_ids"][i]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield idx, tokenizer.pad([{k: enc[k][i] for k in enc.keys()} for i in idx], return_tensors="pt")


def prepare_pad_token(model, tokenizer) -> None:
    """Decoder RMs score the last non-pad token, found through config.pad_token_id: without one, batches of
    more than one sequence fail (or score a padding position)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


class SequenceClassifierScorer:
    def __init__(self, path_or_id: str, batch_size: int = 16, max_length: int | None = None, device: str = "auto"):
        """max_length None: the length the model was trained with (its rm_info.json), else 512 tokens or the
        tokenizer's limit, so a reloaded RM scores what it scored during training."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        device = pick_device(device, key="reward model device")   # before the load, which may take minutes
        try:
            tokenizer = AutoTokenizer.from_pretrained(path_or_id)
            model = AutoModelForSequenceClassification.from_pretrained(path_or_id, dtype=torch.float32)
        except Exception as e:
            first = str(e).splitlines()[0] if str(e) else ""
            raise PobenchError(f"reward model {path_or_id}: cannot load ({type(e).__name__}: {first})") from None
        if max_length is None:
            info = Path(path_or_id) / "rm_info.json"
            max_length = json.loads(info.read_text()).get("max_length") if info.is_file() else None
            max_length = max_length or min(512, tokenizer.model_max_length)
        self._setup(model, tokenizer, f"rm:{path_or_id}", str(path_or_id), batch_size, max_length, device)

    @classmethod
    def from_model(cls, model, tokenizer, name: str = "rm:in-memory", batch_size: int = 16, max_length: int = 512,
                   device: str = "auto") -> "SequenceClassifierScorer":
        """Wrap a model already in memory (the one being trained), so held-out accuracy during training is
        computed by the very code that will score with the saved model."""
        self = cls.__new__(cls)
        self._setup(model, tokenizer, name, None, batch_size, max_length, device)
        return self

    def _setup(self, model, tokenizer, name, path, batch_size, max_length, device) -> None:
        if getattr(model.config, "num_labels", 1) != 1:
            raise PobenchError(f"reward model {path or name}: has {model.config.num_labels} labels; a reward "
                               f"model has one output (num_labels=1)")
        prepare_pad_token(model, tokenizer)
        self.model, self.tokenizer, self.name, self.path = model, tokenizer, name, path
        self.batch_size, self.max_length = batch_size, max_length
        self.device = device if path is not None else next(model.parameters()).device
        if path is not None:
            self.model.to(self.device).eval()

    def texts(self, prompts: list[list[dict]], completions: list[str]) -> list[str]:
        return [render(self.tokenizer, p, c) for p, c in zip(prompts, completions)]

    @torch.no_grad()
    def score(self, prompts: list[list[dict]], completions: list[str]) -> list[float]:
        """One reward per completion, computed in eval mode; the model is handed back in the mode it came in."""
        if len(prompts) != len(completions):
            raise ValueError(f"score: {len(prompts)} prompts but {len(completions)} completions")
        texts = self.texts(prompts, completions)
        scores = [0.0] * len(texts)
        was_training = self.model.training
        self.model.eval()
        try:
            for idx, batch in length_batches(self.tokenizer, texts, self.max_length, self.batch_size):
                rewards = self.model(**batch.to(self.device)).logits[:, 0].float().cpu().tolist()
                for i, r in zip(idx, rewards):
                    scores[i] = r
        finally:
            self.model.train(was_training)
        return scores

    def describe(self) -> dict:
        info = {"name": self.name, "kind": "sequence_classifier", "path": self.path,
                "architecture": type(self.model).__name__, "max_length": self.max_length,
                "rendering": "chat_template" if uses_chat_template(self.tokenizer) else "plain"}
        if self.path and (Path(self.path) / "rm_info.json").is_file():
            info["rm_info"] = json.loads((Path(self.path) / "rm_info.json").read_text())
        return info
