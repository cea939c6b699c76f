"""Preference losses as short pure functions of sequence log-probs (summed over completion tokens)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float,
             label_smoothing: float = 0.0, loss_type: str = "sigmoid"):
    """Rafailov et al. 2023, eq. 7:  L = -log sigmoid(beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))]).

    label_smoothing = eps (conservative DPO): L = -(1-eps) log sigmoid(beta h) - eps log sigmoid(-beta h).
    loss_type "ipo" (Azar et al. 2023, eq. 17): (h - 1/(2 beta))^2;  "hinge" (SLiC): relu(1 - beta h).
    Returns (losses, chosen_rewards, rejected_rewards); rewards are beta * log-ratios, detached.
    """
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"loss_type must be sigmoid, ipo or hinge, got {loss_type!r}")
    chosen_rewards = beta * (policy_chosen - ref_chosen).detach()
    rejected_rewards = beta * (policy_rejected - ref_rejected).detach()
    return losses, chosen_rewards, rejected_rewards


def ranking_nce_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float, group=None):
    """Ranking NCE over a record's preferred completion and its M drawn negatives (the multi-sample MC-PO objective):
    L = -log( exp r(y_w) / (exp r(y_w) + sum_m exp r(y_m)) ),  r(y) = beta * (log pi(y) - log ref(y)).

    Rows are (y_w, y_m) pairs; `group` [B] says which record each row belongs to (None: every row its own record,
    where the loss is DPO's sigmoid loss exactly). Each row carries its record's loss; the trainer weighs a
    record's rows 1/M (engine/trainer.py pair_weights), so its mean is over records even where groups differ in
    size (ranking_nce_pool: pools without their duplicates). Returns (losses, chosen_rewards, rejected_rewards)."""
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    rows = torch.arange(len(chosen), device=chosen.device)
    group = rows if group is None else group.to(chosen.device)
    _, inverse = torch.unique(group, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if len(inverse) else 0
    first = torch.full((n_groups,), len(rows), device=rows.device).scatter_reduce(0, inverse, rows, "amin")
    r_w = chosen[first]
    top = torch.full((n_groups,), float("-inf"), device=chosen.device, dtype=chosen.dtype)
    top = torch.maximum(top.scatter_reduce(0, inverse, rejected.detach(), "amax"), r_w.detach())   # stabiliser
    mass = torch.exp(r_w - top).index_add(0, inverse, torch.exp(rejected - top[inverse]))
    group_loss = torch.log(mass) + top - r_w
    losses = group_loss[inverse]
    return losses, chosen.detach(), rejected.detach()


def simpo_loss(policy_chosen, policy_rejected, chosen_tokens, rejected_tokens, beta: float,
               gamma_beta_ratio: float, label_smoothing: float = 0.0, loss_type: str = "sigmoid"):
    """Meng et al. 2024, eq. 6 (no reference model):
    L = -log sigmoid(beta/|y_w| log pi(y_w) - beta/|y_l| log pi(y_l) - gamma),  gamma = gamma_beta_ratio * beta.
    """
    chosen_rewards = beta * policy_chosen / chosen_tokens
    rejected_rewards = beta * policy_rejected / rejected_tokens
    logits = (chosen_rewards - rejected_rewards) / beta - gamma_beta_ratio  # SimPO repo: divide out beta, then scale
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * logits) - label_smoothing * F.logsigmoid(-beta * logits)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    else:
        raise ValueError(f"loss_type must be sigmoid or hinge, got {loss_type!r}")
    return losses, chosen_rewards.detach(), rejected_rewards.detach()
