"""MC-PO (Chen et al. 2025, "Preference Optimization via Contrastive Divergence"): DPO on a negative drawn
from a candidate pool by a Monte Carlo kernel that favours candidates the current policy rates highly."""
from pobench.algorithm import LossOutput, SeqLogps
from pobench.losses import dpo_loss, ranking_nce_loss
from pobench.registry import register_algorithm


@register_algorithm("mcpo")
class MCPO:
    sampler = "mc_kernel"
    needs_reference = True
    choices = {"kernel": ("sample", "argmax", "uniform"), "kernel_score": ("reward", "loglik", "loglik_mean"),
               "objective": ("pairwise", "ranking_nce", "ranking_nce_pool"), "negatives": ("below_chosen", "any")}
    defaults = """
beta: 0.1                      # DPO's KL strength; also scales the kernel's implicit reward
num_candidates: 8              # L: pool size (the dataset's rejected first, then the record's candidates)
kernel: sample                 # sample: j ~ softmax(score / tau) | argmax | uniform (the last two are ablations)
tau: 1.0                       # kernel temperature
include_chosen_in_pool: false  # let the chosen completion be drawn as its own negative
negatives: below_chosen        # below_chosen: a candidate enters the pool only if scored strictly below the chosen
                               # (where both scores are known; the dataset's rejected always enters) | any: every
                               # candidate, ties with the chosen and better ones too (the pool before this setting)
kernel_score: reward           # reward: beta * (log pi - log ref) | loglik: log pi summed | loglik_mean: per token
label_smoothing: 0.0
objective: pairwise            # pairwise: DPO's loss on one drawn negative | ranking_nce: -log softmax of the chosen
                               # among itself and num_negatives drawn negatives (equals pairwise at 1) |
                               # ranking_nce_pool: among itself and every candidate of the pool (nothing drawn)
num_negatives: 1               # negatives drawn per record (with replacement); > 1 needs ranking_nce
# Opt-in approximations of the kernel's scores, for cost (benchmarks/mcpo_step.py); defaults are exact:
score_prefix_tokens: 0         # >0: score candidates by their first N tokens only (policy and reference alike)
persistent_scores: false       # true: a candidate is scored once, at its prompt's first visit, and keeps that
                               # score for the rest of the run, never rescored (exact in the first epoch; later
                               # epochs skip the pool forward, and a record first seen early keeps scores from
                               # near initialisation, r ~ 0: a near-uniform kernel, for the whole run)
grid:                          # default tuning grid (`--grid default`): 4 points, as every shipped algorithm has
  beta: [0.05, 0.1]
  tau: [0.5, 1.0]
"""

    def loss(self, policy: SeqLogps, reference: SeqLogps, cfg) -> LossOutput:
        if cfg.objective in ("ranking_nce", "ranking_nce_pool"):
            losses, chosen, rejected = ranking_nce_loss(policy.chosen, policy.rejected, reference.chosen,
                                                        reference.rejected, cfg.beta, policy.group)
            return LossOutput(losses, chosen, rejected)
        # the drawn negative is trained against with DPO's loss (Rafailov et al. 2023, eq. 7)
        losses, chosen, rejected = dpo_loss(policy.chosen, policy.rejected, reference.chosen, reference.rejected,
                                            cfg.beta, cfg.label_smoothing)
        return LossOutput(losses, chosen, rejected)
