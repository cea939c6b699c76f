"""The algorithm interface: what a sampler hands a loss, and what a loss hands back."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SeqLogps:
    """Summed log-probs over completion tokens, and the token counts (length normalisation is the loss's job)."""
    chosen: torch.Tensor           # [B]
    rejected: torch.Tensor         # [B]
    chosen_tokens: torch.Tensor    # [B]
    rejected_tokens: torch.Tensor  # [B]
    group: torch.Tensor | None = None  # [B] which record each pair came from, when a sampler draws several
                                       # negatives per record (ranking objectives); None = one pair per record

    def to(self, device) -> "SeqLogps":
        return SeqLogps(*(t.to(device) for t in (self.chosen, self.rejected, self.chosen_tokens, self.rejected_tokens)),
                        group=None if self.group is None else self.group.to(device))


@dataclass
class LossOutput:
    losses: torch.Tensor            # [B], per pair; the trainer averages
    chosen_rewards: torch.Tensor    # [B], the algorithm's implicit reward, detached
    rejected_rewards: torch.Tensor  # [B]
