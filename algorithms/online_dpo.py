"""Online DPO (Guo et al. 2024), the comparator for OnMC-PO: the same freshly sampled pool, trained best vs
worst under the reward model, so that the effect of being online and the effect of the kernel can be told apart."""
from pobench.algorithm import LossOutput, SeqLogps
from pobench.losses import dpo_loss
from pobench.registry import register_algorithm


@register_algorithm("online_dpo")
class OnlineDPO:
    sampler = "online_pool"
    needs_reference = True
    choices = {"pairing": ("best_worst",)}
    defaults = """
beta: 0.1
num_candidates: 4             # completions sampled from the current policy per prompt at each refresh
refresh_every: 1
include_dataset_chosen: true  # as OnMC-PO, so the two differ only in how the negative is chosen
pairing: best_worst
kernel: sample                # unused by best_worst; kept so configs can be shared with onmcpo
tau: 1.0
kernel_score: reward
label_smoothing: 0.0
grid:                         # default tuning grid (`--grid default`): 4 points, as every shipped algorithm has
  beta: [0.01, 0.05, 0.1, 0.5]
"""

    def loss(self, policy: SeqLogps, reference: SeqLogps, cfg) -> LossOutput:
        losses, chosen, rejected = dpo_loss(policy.chosen, policy.rejected, reference.chosen, reference.rejected,
                                            cfg.beta, cfg.label_smoothing)
        return LossOutput(losses, chosen, rejected)
