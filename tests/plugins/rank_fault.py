"""Test plugin: DPO whose sampler raises on one rank only (rank 1 of a launch, at its second call), to check that
the other ranks do not wait for it in the next collective."""
import torch.distributed as dist

from pobench.losses import dpo_loss
from pobench.algorithm import LossOutput
from pobench.registry import register_algorithm, register_sampler
from pobench.sampling import pair_sequences


@register_sampler("rank1_fault")
class RankOneFault:
    needs_candidates = False

    def __init__(self, params=None, cfg=None):
        self.calls = 0

    def reference_sequences(self, records):
        return pair_sequences(records)

    def __call__(self, batch, ctx):
        self.calls += 1
        if self.calls == 2 and dist.is_initialized() and dist.get_rank() == 1:
            raise ValueError("rank 1 fails on purpose")
        return batch, {}


@register_algorithm("dpo_rank1_fault")
class DPORankOneFault:
    sampler = "rank1_fault"
    needs_reference = True
    defaults = "beta: 0.1"

    def loss(self, policy, reference, cfg):
        return LossOutput(*dpo_loss(policy.chosen, policy.rejected, reference.chosen, reference.rejected, cfg.beta))
