"""RSO (Liu et al. 2023, "Statistical Rejection Sampling Improves Preference Optimization"): pairs drawn from
the reward-tilted policy by rejection sampling a scored pool, trained with the sigmoid-norm or hinge-norm loss."""
from pobench.algorithm import LossOutput, SeqLogps
from pobench.losses import dpo_loss
from pobench.registry import register_algorithm


@register_algorithm("rso")
class RSO:
    sampler = "rso"
    needs_reference = True
    choices = {"pairing": ("first_round", "tournament"), "loss_type": ("sigmoid", "hinge")}
    defaults = """
beta: 0.05            # gamma of the sigmoid-norm / hinge-norm loss (scale of the log-ratio margin)
beta_rso: 0.5         # acceptance temperature: accept with prob exp((s - s_max) / beta_rso)
num_candidates: 64    # N: candidates per prompt considered (the pool is cut to N)
num_accepted: 8       # k: accepted samples per prompt
pairing: first_round  # first_round (1-2, 3-4, ...) | tournament (every match of a knock-out bracket)
loss_type: sigmoid    # sigmoid (sigmoid-norm) | hinge (hinge-norm)
grid:                 # default tuning grid (`--grid default`): 4 points, as every shipped algorithm has
  beta: [0.05, 0.1]
  beta_rso: [0.5, 1.0]
"""

    def loss(self, policy: SeqLogps, reference: SeqLogps, cfg) -> LossOutput:
        # sigmoid-norm: -log sigmoid(gamma * [log pi/ref (y_w) - log pi/ref (y_l)]); hinge-norm: relu(1 - gamma * ...)
        losses, chosen, rejected = dpo_loss(policy.chosen, policy.rejected, reference.chosen, reference.rejected,
                                            cfg.beta, 0.0, cfg.loss_type)
        return LossOutput(losses, chosen, rejected)
