"""SimPO (Meng et al. 2024): reference-free, length-normalised reward with a target margin."""
from pobench.algorithm import LossOutput, SeqLogps
from pobench.losses import simpo_loss
from pobench.registry import register_algorithm


@register_algorithm("simpo")
class SimPO:
    sampler = "dataset_pair"
    needs_reference = False
    logps_per_token = True  # logps/chosen, logps/rejected: per-token means, as TRL's CPOTrainer logs for SimPO
    choices = {"loss_type": ("sigmoid", "hinge")}
    defaults = """
beta: 2.0               # reward scale: r(y) = beta / |y| * log pi(y|x)
gamma_beta_ratio: 0.5   # target margin gamma, given as gamma / beta (the SimPO repo's convention)
label_smoothing: 0.0
loss_type: sigmoid      # sigmoid | hinge
grid:                   # default tuning grid (`--grid default`): 4 points; the SimPO paper searched beta 2-10
  beta: [2.0, 10.0]
  gamma_beta_ratio: [0.3, 0.5]
"""

    def loss(self, policy: SeqLogps, reference, cfg) -> LossOutput:
        losses, chosen, rejected = simpo_loss(policy.chosen, policy.rejected, policy.chosen_tokens,
                                              policy.rejected_tokens, cfg.beta, cfg.gamma_beta_ratio,
                                              cfg.label_smoothing, cfg.loss_type)
        return LossOutput(losses, chosen, rejected)
