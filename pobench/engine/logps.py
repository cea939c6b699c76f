"""Sequence log-probs over completion tokens, with the output layer applied only where it is needed.

A plain causal-LM forward materialises [batch, length, vocab] logits, prompt positions included. Here the
decoder's hidden states are gathered at the positions that predict a completion token, and the output layer
plus logsumexp run on those rows only, in chunks, so no full copy of the vocabulary logits ever exists.
"""
from __future__ import annotations

import torch
from torch import nn

from pobench.data.tokenize import TokenizedPair


def collate_pairs(pairs: list[TokenizedPair], pad_id: int) -> dict:
    """Chosen sequences first, then rejected: rows [0, B) are prompt+chosen, rows [B, 2B) prompt+rejected."""
    return collate_sequences([(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs], pad_id)


def collate_sequences(seqs: list[tuple[list[int], list[int]]], pad_id: int) -> dict:
    """Right-padded (prompt + completion) rows with a mask of the completion tokens."""
    width = max(len(a) + len(b) for a, b in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    completion_mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (prompt, completion) in enumerate(seqs):
        n = len(prompt) + len(completion)
        input_ids[i, :n] = torch.tensor(prompt + completion, dtype=torch.long)
        attention_mask[i, :n] = 1
        completion_mask[i, len(prompt):n] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def _unwrap_peft(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def token_logps(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module, chunk: int) -> torch.Tensor:
    """log softmax(head(hidden))[target] for each row, chunked; logsumexp in fp32."""
    out = []
    weight = head.weight
    for start in range(0, hidden.shape[0], chunk):
        h = hidden[start:start + chunk]
        t = targets[start:start + chunk]
        logits = head(h)
        target_logit = (h * weight[t]).sum(-1).float()
        if head.bias is not None:
            target_logit = target_logit + head.bias[t].float()
        out.append(target_logit - torch.logsumexp(logits.float(), dim=-1))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


class SequenceLogps(nn.Module):
    """Wraps a causal LM (optionally peft-wrapped) so that forward returns per-sequence summed log-probs
    of completion tokens and their counts. Being an nn.Module, it can be handed to accelerate/DDP."""

    def __init__(self, model: nn.Module, chunk: int = 1024):
        super().__init__()
        self.model = model
        self.chunk = chunk

    def forward(self, input_ids, attention_mask, completion_mask):
        base = _unwrap_peft(self.model)
        hidden = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                    use_cache=False).last_hidden_state
        predicts = completion_mask[:, 1:]               # position t predicts token t + 1
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(predicts)[predicts]
        logps = token_logps(hidden[:, :-1][predicts], input_ids[:, 1:][predicts],
                            base.get_output_embeddings(), self.chunk)
        sums = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device).index_add(0, rows, logps)
        return sums, predicts.sum(1)


def reference_logps_naive(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook computation (full logits, log_softmax, gather): used by tests to pin SequenceLogps."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    mask = batch["completion_mask"][:, 1:]
    return (logp * mask).sum(1), mask.sum(1)
