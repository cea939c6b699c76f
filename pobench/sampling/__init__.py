"""Samplers turn a batch of dataset records into the pairs the loss trains on.

A sampler is a class registered by name, built once per run with the algorithm's parameters:

    sampler = Sampler(params, cfg)     params: the algorithm's parameters (attributes); cfg: the run's RunConfig
    sampler.needs_candidates           -> tokenize each record's candidate pool too (True on data without pools makes
                                          pobench generate and score one: pool.*, and the auto reward model)
    sampler.reference_sequences(recs)  -> every (prompt, completion) whose reference log-prob the run needs,
                                          computed and cached before the first update
    sampler(batch, ctx)                -> (pairs, metrics): a list of TokenizedPair to train on and a dict of
                                          `sampler/*` floats (logged, averaged over ranks)
    sampler.state_dict() / .load_state_dict(state)   optional: state that a resumed run must keep (saved with
                                          each checkpoint, per rank)

`batch` is a list of TokenizedPair (pobench/data/tokenize.py): token ids `prompt`, `chosen`, `rejected`, the pool
`candidates` with `scores` where the sampler needs them, and `source`, the PreferenceRecord it came from.
`pair.with_rejected(ids)` is the pair with another negative (it drops candidates, scores and group). A sampler that
gives a record several pairs (a ranking objective) sets `pair.group` to the record's index in the batch and keeps
them consecutive; the trainer then weighs them 1/n each and never splits them across micro-batches.
`ctx` (pobench/engine/trainer.py, SamplerContext) gives `ctx.step`, `ctx.batch_offset`, `ctx.policy_logps(seqs)`
(the current policy's summed log-probs and token counts, no gradient), `ctx.refcache` (None when the algorithm
needs no reference), and `ctx.ensure_reference(seqs)`: a sampler that makes sequences during training that
`reference_sequences` did not list (another record's answer, fresh samples) calls it on them before returning,
or the loss finds no reference log-prob for them.

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
