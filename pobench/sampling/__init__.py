"""Samplers turn a batch of dataset records into the pairs the loss trains on.

A sampler is a class registered by name, built once per run with the algorithm's parameters:

    sampler = Sampler(params, cfg)
    sampler.needs_candidates           -> tokenize each record's candidate pool too
    sampler.reference_sequences(recs)  -> every (prompt, completion) whose reference log-prob the run needs,
                                          computed and cached before the first update
    sampler(batch, ctx)                -> (pairs, metrics): the pairs to train on and `sampler/*` metrics

It is the only place where DPO, RSO, MC-PO and OnMC-PO differ.

Random draws are per record: every draw a sampler makes for a record comes from a stream seeded by (run seed,
step, the record's position in the step's *global* batch, the sampler's stream name), `record_generator` /
`record_random` below. The position is `ctx.batch_offset + i` for the i-th record of the batch a sampler is given
(`batch_offset` = rank * train.batch_size under `accelerate launch`, 0 in one process), so under N processes each
rank draws independently, and a record gets the same draw whatever N is (given the same global batch).
"""
import hashlib
import random

from pobench.registry import register_sampler


def record_seed(seed: int, step: int, position: int, stream: str, bits: int = 63) -> int:
    """A `bits`-bit seed for the draws of one record at one step: a hash of (run seed, step, position of the
    record in the step's global batch, stream). The stream name keeps apart the draws of different samplers (or
    of different uses in one sampler) for the same record; the hash keeps seeds of nearby steps and positions
    unrelated (no arithmetic collisions such as step 1 position 0 = step 0 position 7919)."""
    digest = hashlib.blake2b(f"{stream}|{seed}|{step}|{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - bits)


def record_generator(seed: int, step: int, position: int, stream: str):
    """A torch.Generator seeded for one record's draws (see record_seed)."""
    import torch
    return torch.Generator().manual_seed(record_seed(seed, step, position, stream))


def record_random(seed: int, step: int, position: int, stream: str) -> random.Random:
    """A random.Random seeded for one record's draws (see record_seed)."""
    return random.Random(record_seed(seed, step, position, stream))


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
