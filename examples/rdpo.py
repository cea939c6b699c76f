"""Robust DPO with a label-noise rate: the loss of Chowdhury et al. 2024, in three lines."""
import torch.nn.functional as F

from pobench.algorithm import LossOutput, SeqLogps
from pobench.registry import register_algorithm


@register_algorithm("rdpo")
class RobustDPO:
    sampler = "dataset_pair"     # train on the dataset's pair
    needs_reference = True       # reference log-probs come from the shared cache
    defaults = """
beta: 0.1     # KL strength
eps: 0.1      # assumed label-flip rate
"""

    def loss(self, policy: SeqLogps, reference: SeqLogps, cfg) -> LossOutput:
        # L = [(1-eps) * -log s(beta h) - eps * -log s(-beta h)] / (1 - 2 eps),  h = policy margin - reference margin
        chosen = cfg.beta * (policy.chosen - reference.chosen)
        rejected = cfg.beta * (policy.rejected - reference.rejected)
        h = chosen - rejected
        losses = (-(1 - cfg.eps) * F.logsigmoid(h) + cfg.eps * F.logsigmoid(-h)) / (1 - 2 * cfg.eps)
        return LossOutput(losses, chosen.detach(), rejected.detach())
