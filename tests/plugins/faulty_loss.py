"""Test plugin: DPO whose loss goes bad on purpose, to check how the trainer stops on training faults.

`fault` picks what happens at training step `at_step` (1-based; held-out scoring is never touched):
nan_loss / inf_loss (the loss value), nan_grad (finite loss, NaN gradient), oom (a CUDA-style out-of-memory).
"""
import torch

from pobench.algorithm import LossOutput
from pobench.losses import dpo_loss
from pobench.registry import register_algorithm


@register_algorithm("faulty_dpo")
class FaultyDPO:
    sampler = "dataset_pair"
    needs_reference = True
    defaults = """
beta: 0.1
fault: nan_loss   # nan_loss | inf_loss | nan_grad | oom
at_step: 3
"""

    def __init__(self):
        self.training_calls = 0

    def loss(self, policy, reference, cfg):
        losses, chosen, rejected = dpo_loss(policy.chosen, policy.rejected, reference.chosen, reference.rejected,
                                            cfg.beta)
        if not policy.chosen.requires_grad:  # held-out scoring
            return LossOutput(losses, chosen, rejected)
        self.training_calls += 1  # one call per step at grad_accum 1
        if self.training_calls == cfg.at_step:
            if cfg.fault == "oom":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (test plugin)")
            if cfg.fault == "nan_grad":  # the loss stays finite; its gradient reaching the model is NaN
                policy.chosen.register_hook(lambda g: torch.full_like(g, float("nan")))
            else:
                losses = losses * float("nan" if cfg.fault == "nan_loss" else "inf")
        return LossOutput(losses, chosen, rejected)
