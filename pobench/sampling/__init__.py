"""Samplers turn a batch of dataset records into the pairs the loss trains on.

A sampler is `fn(batch: list[TokenizedPair], ctx) -> (pairs, metrics)`; `ctx` gives access to the policy
and the reference cache for samplers that score or generate. It is the only place where DPO, RSO, MC-PO
and OnMC-PO differ.
"""
from pobench.registry import register_sampler


@register_sampler("dataset_pair")
def dataset_pair(batch, ctx):
    """The pair the dataset gives, unchanged."""
    return batch, {}
