"""RSO's sampler: statistical rejection sampling over a scored candidate pool (Liu et al. 2023).

Candidates drawn from the reference policy are accepted with probability exp((s_i - s_max) / beta_rso), so
that accepted samples approximate the reward-tilted policy pi_ref(y|x) exp(r(y) / beta_rso). Rounds repeat
over the remaining candidates until k are accepted (the paper's Algorithm 1); the accepted samples are paired
by first-round ranking (1-2, 3-4, ...) or as the matches of a knock-out tournament, and labelled by score.
"""
from __future__ import annotations

import math
import random

from pobench.errors import PobenchError
from pobench.registry import register_sampler
from pobench.sampling import pair_sequences, record_random


def rejection_sample(scores: list[float], k: int, beta: float, rng: random.Random) -> tuple[list[int], list[int]]:
    """(accepted indices in acceptance order, the round each was accepted in). Each round visits the remaining
    candidates in a random order; the round's best is always accepted, so every round accepts at least one."""
    remaining = list(range(len(scores)))
    accepted, rounds = [], []
    round_no = 0
    while remaining and len(accepted) < k:
        s_max = max(scores[i] for i in remaining)
        rng.shuffle(remaining)
        taken = []
        for i in remaining:
            if rng.random() < math.exp((scores[i] - s_max) / beta):
                taken.append(i)
                accepted.append(i)
                rounds.append(round_no)
                if len(accepted) == k:
                    break
        remaining = [i for i in remaining if i not in taken]
        round_no += 1
    return accepted, rounds


def pair_up(accepted: list[int], scores: list[float], pairing: str) -> list[tuple[int, int]]:
    """(chosen, rejected) index pairs, labelled by score; ties are dropped (no preference)."""
    def label(a, b):
        return (a, b) if scores[a] > scores[b] else (b, a) if scores[b] > scores[a] else None

    matches = []
    if pairing == "first_round":
        matches = [label(accepted[i], accepted[i + 1]) for i in range(0, len(accepted) - 1, 2)]
    else:  # tournament: every match of a knock-out bracket; winners advance
        bracket = list(accepted)
        while len(bracket) > 1:
            winners = []
            for i in range(0, len(bracket) - 1, 2):
                a, b = bracket[i], bracket[i + 1]
                matches.append(label(a, b))
                winners.append(a if scores[a] >= scores[b] else b)
            if len(bracket) % 2:
                winners.append(bracket[-1])
            bracket = winners
    return [m for m in matches if m is not None]


@register_sampler("rso")
class RejectionSampler:
    needs_candidates = True

    def __init__(self, params, cfg):
        self.num_candidates = params.num_candidates
        self.k = params.num_accepted
        self.beta_rso = params.beta_rso
        self.pairing = params.pairing
        self.seed = cfg.seed

    def pool(self, record) -> tuple[list[list[int]], list[float]]:
        if record.scores is None or not record.candidates:
            raise PobenchError("rso needs a scored candidate pool per prompt: use data that carries one "
                               "(raw UltraFeedback, the on-policy schema) or let pobench generate one "
                               "(pool.source=generated, or auto; `pobench candidates` makes it ahead of time)")
        return record.candidates[:self.num_candidates], record.scores[:self.num_candidates]

    def plan_warning(self, candidates: int, pool_setting: str = "pool.num_samples") -> str | None:
        """With k at least the pool's size nothing is rejected: every candidate is accepted, and only the order
        of acceptance (which decides the first-round pairs) still leans to high scores. `pool_setting`: what gives
        the run's prompts more candidates (pools.pool_size_setting)."""
        n = min(self.num_candidates, candidates)
        if n and self.k >= n:
            return (f"rso: num_accepted={self.k} >= the {n} candidates per prompt, so rejection sampling rejects "
                    f"nothing (the paper accepts 8 of 64): raise {pool_setting}, or lower rso.num_accepted")
        return None

    def reference_sequences(self, records) -> list[tuple]:
        return pair_sequences(records) + [(r.prompt, c) for r in records for c in self.pool(r)[0]]

    def __call__(self, batch, ctx):
        pairs, accepted_counts, rounds_used = [], [], []
        for index, record in enumerate(batch):
            items, scores = self.pool(record)
            rng = record_random(self.seed, ctx.step, ctx.batch_offset + index, "rso")  # per record, rank-independent
            accepted, rounds = rejection_sample(scores, self.k, self.beta_rso, rng)
            accepted_counts.append(len(accepted))
            rounds_used.append(max(rounds) + 1 if rounds else 0)
            for w, l in pair_up(accepted, scores, self.pairing):
                pairs.append(type(record)(record.prompt, items[w], items[l]))
        if not pairs:
            raise PobenchError(f"rso: step {ctx.step + 1} produced no pair (every accepted candidate tied in score)")
        return pairs, {"sampler/accepted": sum(accepted_counts) / len(batch),
                       "sampler/rounds": sum(rounds_used) / len(batch),
                       "sampler/pairs_per_record": len(pairs) / len(batch)}
