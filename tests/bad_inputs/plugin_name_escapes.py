"""An algorithm name that is a path: its runs were written to <out>/evil/seed1, outside the suite's folder."""
from pobench.algorithm import LossOutput
from pobench.registry import register_algorithm


@register_algorithm("../evil")
class Evil:
    sampler = "dataset_pair"
    needs_reference = False
    defaults = "beta: 0.1"

    def loss(self, policy, reference, cfg):
        return LossOutput(-policy.chosen, policy.chosen.detach(), policy.rejected.detach())
