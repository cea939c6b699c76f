"""A loss that reads the reference while saying it needs none."""
from pobench.algorithm import LossOutput
from pobench.registry import register_algorithm


@register_algorithm("bad_input_forgets_reference")
class ForgetsReference:
    sampler = "dataset_pair"
    needs_reference = False
    defaults = "beta: 0.1"

    def loss(self, policy, reference, cfg):
        h = cfg.beta * (policy.chosen - reference.chosen)
        return LossOutput(-h, h.detach(), h.detach())
