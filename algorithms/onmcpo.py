"""OnMC-PO (Chen et al. 2025): MC-PO whose candidate pool is sampled from the current policy during training;
the best sample under the reward model is preferred and the negative is drawn by the MC kernel."""
from pobench.algorithm import LossOutput, SeqLogps
from pobench.losses import dpo_loss
from pobench.registry import register_algorithm


@register_algorithm("onmcpo")
class OnMCPO:
    sampler = "online_pool"
    needs_reference = True
    choices = {"kernel": ("sample", "argmax", "uniform"), "kernel_score": ("reward", "loglik", "loglik_mean"),
               "pairing": ("kernel",)}
    defaults = """
beta: 0.1                     # DPO's KL strength; also scales the kernel's implicit reward
num_candidates: 4             # completions sampled from the current policy per prompt at each refresh
refresh_every: 1              # steps between pool refreshes (generation covers the next refresh_every batches)
include_dataset_chosen: true  # the dataset's chosen competes with the samples for the preferred slot
kernel: sample                # sample | argmax | uniform
tau: 1.0
kernel_score: reward          # reward | loglik | loglik_mean
pairing: kernel               # the negative is drawn by the kernel from the non-preferred samples
label_smoothing: 0.0
grid:                         # default tuning grid (`--grid default`): 4 points, as every shipped algorithm has
  beta: [0.05, 0.1]
  tau: [0.5, 1.0]
"""

    def loss(self, policy: SeqLogps, reference: SeqLogps, cfg) -> LossOutput:
        losses, chosen, rejected = dpo_loss(policy.chosen, policy.rejected, reference.chosen, reference.rejected,
                                            cfg.beta, cfg.label_smoothing)
        return LossOutput(losses, chosen, rejected)
