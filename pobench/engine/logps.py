"""Sequence log-probs over completion tokens, with the output layer applied only where it is needed.

A plain causal-LM forward materialises [batch, length, vocab] logits, prompt positions included. Here the
decoder's hidden states are gathered at the positions that predict a completion token, and the output layer
plus logsumexp run on those rows only, in chunks, so no full copy of the vocabulary logits ever exists.

Shared prompts (`collate_shared`): the completions of one prompt (a pair's chosen and rejected, an MC-PO pool)
go into one row, prompt | completion_1 | completion_2 | ..., with a 4D attention mask under which each
completion sees the prompt and itself only, and position ids that restart after the prompt. Each completion's
log-probs are then exactly those of its own (prompt + completion) row, and the prompt is computed once, not
once per completion.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pobench.data.tokenize import TokenizedPair
from pobench.errors import PobenchError


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


def collate_shared(groups: list[tuple[list[int], list[list[int]]]], pad_id: int, slots: list[int] | None = None) -> dict:
    """One right-padded row per (prompt, completions) group; see the module docstring.

    Output sequences are numbered group by group (group 0's completions first), or by `slots` (one output index
    per completion in that order). Returns input_ids, a [rows, 1, width, width] boolean attention mask, position
    ids, and for every predicted token its row, its column (the position that predicts it: the prompt's last
    token for a completion's first token) and its output sequence."""
    width = max(len(p) + sum(len(c) for c in cs) for p, cs in groups)
    n_rows = len(groups)
    input_ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n_rows, width), dtype=torch.long)
    segment = torch.full((n_rows, width), -1, dtype=torch.long)         # -1 padding, 0 prompt, j + 1 completion j
    rows, cols, targets, seq = [], [], [], []
    k = 0
    for r, (prompt, completions) in enumerate(groups):
        if not prompt:
            raise ValueError("collate_shared needs a non-empty prompt: its last token predicts each completion")
        n_prompt = len(prompt)
        ids = list(prompt)
        pos = list(range(n_prompt))
        seg = [0] * n_prompt
        for j, completion in enumerate(completions):
            if not completion:
                raise ValueError("collate_shared needs non-empty completions: an empty one has no token to score")
            start = len(ids)
            ids += completion
            pos += range(n_prompt, n_prompt + len(completion))
            seg += [j + 1] * len(completion)
            out = slots[k] if slots is not None else k
            cols += [n_prompt - 1] + list(range(start, start + len(completion) - 1))
            rows += [r] * len(completion)
            targets += completion
            seq += [out] * len(completion)
            k += 1
        input_ids[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        position_ids[r, :len(ids)] = torch.tensor(pos, dtype=torch.long)
        segment[r, :len(ids)] = torch.tensor(seg, dtype=torch.long)
    q_seg, k_seg = segment[:, :, None], segment[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    mask = causal[None] & (k_seg >= 0) & ((k_seg == 0) | (k_seg == q_seg))
    mask |= torch.eye(width, dtype=torch.bool)[None]   # padding queries see themselves: no all-masked (NaN) rows
    return {"input_ids": input_ids, "attention_mask": mask[:, None], "position_ids": position_ids,
            "token_rows": torch.tensor(rows, dtype=torch.long), "token_cols": torch.tensor(cols, dtype=torch.long),
            "token_targets": torch.tensor(targets, dtype=torch.long), "token_seqs": torch.tensor(seq, dtype=torch.long),
            "num_seqs": torch.tensor(k)}


def collate_pairs_shared(pairs: list[TokenizedPair], pad_id: int) -> dict:
    """collate_pairs' output order (chosen 0..B-1, then rejected), one prompt | chosen | rejected row per pair."""
    b = len(pairs)
    slots = [i for p in range(b) for i in (p, b + p)]
    return collate_shared([(p.prompt, [p.chosen, p.rejected]) for p in pairs], pad_id, slots)


def collate_sequences_shared(seqs: list[tuple[list[int], list[int]]], pad_id: int) -> dict:
    """collate_sequences' output order, with sequences that share a prompt packed into one row."""
    groups: dict[tuple, list[int]] = {}
    for i, (prompt, _) in enumerate(seqs):
        groups.setdefault(tuple(prompt), []).append(i)
    order = [i for members in groups.values() for i in members]
    return collate_shared([(list(prompt), [seqs[i][1] for i in members]) for prompt, members in groups.items()],
                          pad_id, order)


def unwrap_peft(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@dataclass(frozen=True)
class LogitTransform:
    """What a model's forward does to its output layer's result before the softmax, which token_logps, computing
    the output layer itself, must do too: Cohere multiplies by `logit_scale`, Granite divides by `logits_scaling`,
    Gemma 2/3 soft-cap with `final_logit_softcapping` (cap * tanh(logits / cap)). The identity for most models."""
    scale: float = 1.0
    softcap: float | None = None

    @classmethod
    def of(cls, config) -> "LogitTransform":
        scale = float(getattr(config, "logit_scale", None) or 1.0)
        scale /= float(getattr(config, "logits_scaling", None) or 1.0)
        cap = getattr(config, "final_logit_softcapping", None)
        return cls(scale, float(cap) if cap else None)

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and self.softcap is None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def token_logps(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module, chunk: int,
                transform: LogitTransform = LogitTransform()) -> torch.Tensor:
    """log softmax(transform(head(hidden)))[target] for each row, chunked; logsumexp in fp32. The target's logit is
    read from the same logits the normaliser sums: under bf16 autocast head(h) is rounded to bf16, and a target
    logit computed apart in fp32 put each token's rounding error (up to ~0.06 nats at logit 20) into its log-prob,
    half of them above 0. (gather's backward writes one column per row, so it stays deterministic, unlike indexing
    the weight by repeated targets.)"""
    out = []
    for start in range(0, hidden.shape[0], chunk):
        logits = transform(head(hidden[start:start + chunk]).float())
        t = targets[start:start + chunk]
        out.append(logits.gather(-1, t[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


class SequenceLogps(nn.Module):
    """Wraps a causal LM (optionally peft-wrapped) so that forward returns per-sequence summed log-probs
    of completion tokens and their counts. Being an nn.Module, it can be handed to accelerate/DDP."""

    def __init__(self, model: nn.Module, chunk: int = 1024):
        super().__init__()
        self.model = model
        self.chunk = chunk
        self.transform = LogitTransform.of(unwrap_peft(model).config)

    def forward(self, input_ids, attention_mask, completion_mask=None, position_ids=None, token_rows=None,
                token_cols=None, token_targets=None, token_seqs=None, num_seqs=None):
        """Either a padded batch with a completion mask (collate_sequences / collate_pairs) or a shared-prompt
        batch (collate_shared and friends); both return (summed log-probs, token counts) per sequence."""
        base = unwrap_peft(self.model)
        if token_rows is not None:
            attention_mask = self._mask_for(base, attention_mask)
            hidden = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                        use_cache=False).last_hidden_state
            logps = token_logps(hidden[token_rows, token_cols], token_targets, base.get_output_embeddings(), self.chunk,
                                self.transform)
            n = int(num_seqs)
            sums = torch.zeros(n, dtype=torch.float32, device=input_ids.device).index_add(0, token_seqs, logps)
            return sums, torch.bincount(token_seqs, minlength=n)
        hidden = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                    use_cache=False).last_hidden_state
        predicts = completion_mask[:, 1:]               # position t predicts token t + 1
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(predicts)[predicts]
        logps = token_logps(hidden[:, :-1][predicts], input_ids[:, 1:][predicts],
                            base.get_output_embeddings(), self.chunk, self.transform)
        sums = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device).index_add(0, rows, logps)
        return sums, predicts.sum(1)


    @staticmethod
    def _mask_for(base, mask: torch.Tensor) -> torch.Tensor:
        """SDPA takes the boolean mask as it is (True = attend); eager attention adds the mask to its scores."""
        if getattr(base.config, "_attn_implementation", "sdpa") != "eager":
            return mask
        dtype = torch.get_autocast_dtype(mask.device.type) if torch.is_autocast_enabled(mask.device.type) else \
            next(base.parameters()).dtype
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)


def reference_logps_naive(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook computation (full logits, log_softmax, gather): used by tests to pin SequenceLogps."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    mask = batch["completion_mask"][:, 1:]
    return (logp * mask).sum(1), mask.sum(1)


def check_logps_match_the_forward(model, name: str) -> None:
    """token_logps computes the output layer itself: a model whose forward does more to the logits than
    LogitTransform knows (a scale or cap of a newer architecture) would be trained on log-probs other than those it
    samples from, silently. One short sequence through both paths, once per loaded model, names that model."""
    vocab = model.get_output_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (1, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids, dtype=torch.bool),
             "completion_mask": torch.arange(12)[None] >= 4}
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    with torch.no_grad():
        ours = SequenceLogps(model)(**batch)[0].item()
        forward = reference_logps_naive(model, batch)[0].item()
    # fp32 paths differ by rounding (~1e-5); half precision rounds each of the 8 logits to ~3 significant digits
    tolerance = 1e-3 if next(model.parameters()).dtype == torch.float32 else 0.05 * 8
    if not abs(ours - forward) <= tolerance + 1e-3 * abs(forward):
        raise PobenchError(f"{name}: its forward transforms the output layer's logits in a way pobench's log-probs "
                           f"do not reproduce (summed log-prob {ours:.4f} against the forward's {forward:.4f}); "
                           f"its architecture ({type(model).__name__}) is not supported for training yet")
