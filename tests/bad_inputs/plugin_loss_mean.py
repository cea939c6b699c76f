"""A loss that takes the mean itself: shape [] where one value per pair is due."""
import torch.nn.functional as F

from pobench.algorithm import LossOutput
from pobench.registry import register_algorithm


@register_algorithm("bad_input_loss_mean")
class MeanLoss:
    sampler = "dataset_pair"
    needs_reference = True
    defaults = "beta: 0.1"

    def loss(self, policy, reference, cfg):
        chosen = cfg.beta * (policy.chosen - reference.chosen)
        rejected = cfg.beta * (policy.rejected - reference.rejected)
        return LossOutput(-F.logsigmoid(chosen - rejected).mean(), chosen.detach(), rejected.detach())
