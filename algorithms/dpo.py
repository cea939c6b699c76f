"""DPO (Rafailov et al. 2023), with the conservative (label smoothing), IPO and hinge variants."""
from pobench.algorithm import LossOutput, SeqLogps
from pobench.losses import dpo_loss
from pobench.registry import register_algorithm


@register_algorithm("dpo")
class DPO:
    sampler = "dataset_pair"      # train on the pair the dataset gives
    needs_reference = True
    choices = {"loss_type": ("sigmoid", "ipo", "hinge")}
    defaults = """
beta: 0.1              # strength of the KL penalty to the reference policy
label_smoothing: 0.0   # cDPO: assumed probability that a label is flipped
loss_type: sigmoid     # sigmoid (DPO) | ipo | hinge
grid:                  # default tuning grid (`--grid default`): 4 points, as every shipped algorithm has
  beta: [0.01, 0.05, 0.1, 0.5]
"""

    def loss(self, policy: SeqLogps, reference: SeqLogps, cfg) -> LossOutput:
        losses, chosen, rejected = dpo_loss(policy.chosen, policy.rejected, reference.chosen, reference.rejected,
                                            cfg.beta, cfg.label_smoothing, cfg.loss_type)
        return LossOutput(losses, chosen, rejected)
