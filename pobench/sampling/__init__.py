"""Samplers turn a batch of dataset records into the pairs the loss trains on.

A sampler is a class registered by name, built once per run with the algorithm's parameters:

    sampler = Sampler(params, cfg)
    sampler.needs_candidates           -> tokenize each record's candidate pool too
    sampler.reference_sequences(recs)  -> every (prompt, completion) whose reference log-prob the run needs,
                                          computed and cached before the first update
    sampler(batch, ctx)                -> (pairs, metrics): the pairs to train on and `sampler/*` metrics

It is the only place where DPO, RSO, MC-PO and OnMC-PO differ.
"""
from pobench.registry import register_sampler


def pair_sequences(records) -> list[tuple]:
    return [(r.prompt, r.chosen) for r in records] + [(r.prompt, r.rejected) for r in records]


@register_sampler("dataset_pair")
class DatasetPair:
    """The pair the dataset gives, unchanged."""
    needs_candidates = False

    def __init__(self, params=None, cfg=None):
        pass

    def reference_sequences(self, records) -> list[tuple]:
        return pair_sequences(records)

    def __call__(self, batch, ctx):
        return batch, {}
