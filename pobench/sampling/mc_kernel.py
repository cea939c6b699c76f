"""MC-PO's sampler: the contrastive-divergence Monte Carlo kernel over a candidate pool (Chen et al. 2025).

Preference optimisation is read as maximum likelihood of p(y|x) proportional to pi_ref(y|x) exp(r(y)); the
normaliser is estimated with samples, and those samples are the dispreferred completions. Given the record's
pool {y_1..y_L}, the kernel scores every candidate under the *current* policy without gradient and draws
j ~ softmax(score_j / tau): hard negatives are the candidates the policy already rates highly.

The paper's body was not available to us: the pool order, the score and the kernel are reconstructions,
exposed as knobs (see algorithms/mcpo.py).
"""
from __future__ import annotations

import math

import torch

from pobench.errors import PobenchError
from pobench.registry import register_sampler
from pobench.sampling import pair_sequences, record_generator


# argmax: scores within this of the best are tied, and the record's seeded draw picks among them. At the start
# pi = pi_ref and every score is float rounding (1e-7..1e-5), which moves with how sequences were batched (the
# reference cache's history, the number of processes): a bare argmax picked by that noise.
ARGMAX_TIE = 1e-4


def kernel_probs(scores: torch.Tensor, kernel: str, tau: float) -> torch.Tensor:
    """The kernel's distribution over one pool."""
    if kernel == "uniform":
        return torch.full_like(scores, 1.0 / scores.numel())
    if kernel == "argmax":
        tied = (scores >= scores.max() - ARGMAX_TIE).to(scores.dtype)
        return tied / tied.sum()
    return torch.softmax(scores / tau, dim=0)


KERNELS = ("sample", "argmax", "uniform")
KERNEL_SCORES = ("reward", "loglik", "loglik_mean")
NEGATIVES = ("below_chosen", "any")


def check_kernel(params, algorithm: str) -> None:
    """The kernel's settings, checked when the sampler is built: a plugin that reuses a kernel sampler without
    `choices` for them would otherwise sample by softmax whatever it named (or fail at step 1)."""
    for key, allowed in (("kernel", KERNELS), ("kernel_score", KERNEL_SCORES)):
        if getattr(params, key) not in allowed:
            raise PobenchError(f"{algorithm}.{key}={getattr(params, key)!r}: one of {', '.join(allowed)}")


def chosen_score(record) -> float | None:
    """The chosen's score on its pool's scale: the one a generated pool's reward model gave it, else the best score
    its ids have among the record's own candidates (raw UltraFeedback's and the synthetic suite's chosen is one of
    them); None where neither is known (an on-policy row whose chosen is not among its scored samples, or a NaN
    score, below which nothing would rate)."""
    known = [record.chosen_score] if record.chosen_score is not None else \
        [s for c, s in zip(record.candidates, record.scores or []) if c == record.chosen and s is not None]
    known = [s for s in known if math.isfinite(s)]
    return max(known) if known else None


def draw(probs: torch.Tensor, generator: torch.Generator) -> int:
    return int(torch.multinomial(probs, 1, generator=generator))


def entropy(probs: torch.Tensor) -> float:
    p = probs[probs > 0]
    return float(-(p * p.log()).sum())


@register_sampler("mc_kernel")
class MCKernel:
    def __init__(self, params, cfg):
        check_kernel(params, getattr(cfg, "algorithm_name", "mcpo"))
        self.num_candidates = params.num_candidates
        self.kernel = params.kernel
        self.tau = params.tau
        self.include_chosen = params.include_chosen_in_pool
        # a plugin reusing this sampler without the setting gets what mcpo's default gives
        self.negatives = getattr(params, "negatives", "below_chosen")
        if self.negatives not in NEGATIVES:
            raise PobenchError(f"{getattr(cfg, 'algorithm_name', 'mcpo')}.negatives={self.negatives!r}: one of "
                               f"{', '.join(NEGATIVES)}")
        self.kernel_score = params.kernel_score
        self.beta = params.beta
        self.seed = cfg.seed
        # Opt-in approximations of the kernel's scores (cheaper pool forward; both off = exact):
        self.prefix = int(getattr(params, "score_prefix_tokens", 0))
        self.persistent = bool(getattr(params, "persistent_scores", False))
        self._last_visit: dict[str, float] = {}
        # ranking_nce draws several negatives per record (with replacement, as Monte Carlo samples); ranking_nce_pool
        # takes the whole pool, the normaliser summed exactly over it, and draws nothing
        self.objective = getattr(params, "objective", "pairwise")
        self.num_negatives = int(getattr(params, "num_negatives", 1))
        if self.objective != "ranking_nce" and self.num_negatives != 1:
            raise PobenchError(f"mcpo.num_negatives={self.num_negatives} needs mcpo.objective=ranking_nce "
                               f"(pairwise trains one negative per record, ranking_nce_pool the whole pool)")
        if self.objective == "ranking_nce_pool" and self.include_chosen:
            # the chosen would be one of its own negatives: counted twice in the normaliser, the loss could not
            # fall below log 2 (drawn objectives may draw it, which is what the setting is for)
            raise PobenchError("mcpo.include_chosen_in_pool=true with objective=ranking_nce_pool: the chosen would "
                               "be a negative of itself in every term; use objective=ranking_nce or pairwise")
        if self.objective != "pairwise" and getattr(params, "label_smoothing", 0.0):
            raise PobenchError(f"mcpo.label_smoothing applies to the pairwise objective only, not to {self.objective}")

    @property
    def needs_candidates(self) -> bool:
        """With L = 1 the pool is the dataset's rejected alone: nothing to generate or tokenize."""
        return self.num_candidates > 1

    def candidates(self, record) -> tuple[list[list[int]], int]:
        """(the record's candidates a negative may be, in stored order; how many `negatives: below_chosen` left out).
        A negative is by definition rated below the chosen: with the chosen's score known, a candidate scored as
        high or higher is left out (raw UltraFeedback keeps answers tied with the chosen among its candidates, and a
        reference sample can outscore the dataset's chosen). Where the chosen's score is unknown every candidate is
        kept, as with `any`; so is a candidate without a (finite) score. Copies of the chosen (it enters only through
        include_chosen_in_pool), of the rejected and of each other count in neither."""
        bar = chosen_score(record) if self.negatives == "below_chosen" else None
        scores = record.scores if record.scores is not None else [None] * len(record.candidates)
        kept, left_out, seen = [], 0, [record.chosen, record.rejected]
        for candidate, score in zip(record.candidates, scores):
            if candidate in seen:
                continue
            seen.append(candidate)
            if bar is not None and score is not None and score >= bar:   # (a NaN score is no score: kept)
                left_out += 1
            else:
                kept.append(candidate)
        return kept, left_out

    def pool(self, record) -> tuple[list[list[int]], list[float] | None]:
        """The dataset's rejected first (the dataset's own label, never left out, so no pool is empty), then the
        record's candidates that may be a negative (`candidates`), cut to L.
        With L = 1 the pool is the dataset's rejected alone, and MC-PO is DPO exactly."""
        scores_by_text = {}
        if record.scores is not None:
            scores_by_text = {tuple(c): s for c, s in zip(record.candidates, record.scores)}
        items = [record.rejected] + ([record.chosen] if self.include_chosen else []) + self.candidates(record)[0]
        items = items[:self.num_candidates]
        # None where a candidate has no score: a generated pool scores its samples, not the dataset's rejected
        scores = [scores_by_text.get(tuple(c)) for c in items] if scores_by_text else None
        return items, scores

    def left_out_fraction(self, batch) -> float:
        """Of the batch's candidates (the chosen's and the rejected's copies aside), the fraction left out as
        scored no lower than the chosen."""
        counts = [(len(kept), left_out) for kept, left_out in map(self.candidates, batch)]
        considered = sum(k + n for k, n in counts)
        return sum(n for _, n in counts) / considered if considered else 0.0

    def state_dict(self) -> dict:
        """persistent_scores: the scores kept from earlier visits, which a resumed run must keep too."""
        return {"last_visit": dict(self._last_visit)}

    def load_state_dict(self, state: dict) -> None:
        self._last_visit = dict(state.get("last_visit") or {})

    def scored(self, candidate: list[int]) -> list[int]:
        """What the kernel scores of a candidate: all of it, or its first `score_prefix_tokens` tokens."""
        return candidate[:self.prefix] if self.prefix > 0 else candidate

    def reference_sequences(self, records) -> list[tuple]:
        """Every candidate whole (any can be drawn as the negative, whose loss needs its reference log-prob), and
        what the kernel scores of it when the score is the implicit reward (a prefix, with score_prefix_tokens)."""
        whole = [(r.prompt, c) for r in records for c in self.pool(r)[0]]
        scored = [(p, self.scored(c)) for p, c in whole] if self.kernel_score == "reward" and self.prefix > 0 else []
        return pair_sequences(records) + whole + scored

    def _scores(self, batch, pools, ctx) -> list[torch.Tensor]:
        from pobench.data.tokenize import sequence_key

        flat = [(r.prompt, self.scored(c)) for r, (items, _) in zip(batch, pools) for c in items]
        values = torch.zeros(len(flat))
        todo = list(range(len(flat)))
        if self.persistent:                      # hash sequences only when scores are kept between visits
            keys = [sequence_key(p, c) for p, c in flat]
            todo = [i for i, k in enumerate(keys) if k not in self._last_visit]
            values = torch.tensor([self._last_visit.get(k, 0.0) for k in keys], dtype=torch.float32)
        if todo or getattr(ctx, "collective", False):   # sharded weights: join the other ranks' forwards
            logps, counts = ctx.policy_logps([flat[i] for i in todo])
        if todo:
            if self.kernel_score == "reward":
                ref, _ = ctx.refcache.lookup_sequences([flat[i] for i in todo])
                fresh = self.beta * (logps - ref)
            elif self.kernel_score == "loglik_mean":
                fresh = logps / counts.clamp(min=1)
            else:
                fresh = logps
            values[todo] = fresh.float()
            if self.persistent:
                self._last_visit.update((keys[i], float(v)) for i, v in zip(todo, fresh))
        self.rescored = len(todo) / max(1, len(flat))
        return list(torch.split(values, [len(items) for items, _ in pools]))

    def whole_pools(self, batch, pools) -> tuple[list, dict]:
        """ranking_nce_pool: every candidate of a record's pool is a negative of its one ranking-NCE term."""
        pairs = []
        for index, (record, (items, _)) in enumerate(zip(batch, pools)):
            for item in items:
                pair = record.with_rejected(item)
                pair.group = index
                pairs.append(pair)
        return pairs, {"sampler/pool_size": sum(len(items) for items, _ in pools) / len(pools),
                       "sampler/pool_filtered": self.left_out_fraction(batch)}

    def __call__(self, batch, ctx):
        pools = [self.pool(r) for r in batch]
        if self.objective == "ranking_nce_pool":
            return self.whole_pools(batch, pools)
        trivial = all(len(items) == 1 for items, _ in pools)
        self.rescored = 0.0
        # no policy scores needed: skip the forward (a one-candidate pool on this rank is no reason to skip where
        # the other ranks' forwards need this one's: sharded weights)
        if self.kernel == "uniform" or (trivial and not getattr(ctx, "collective", False)):
            scores = [torch.zeros(len(items)) for items, _ in pools]
        else:
            scores = self._scores(batch, pools, ctx)
        pairs, entropies, ranks, drawn_scores, is_rejected = [], [], [], [], []
        for index, (record, (items, rm_scores), s) in enumerate(zip(batch, pools, scores)):
            # one stream per record, keyed by its place in the global batch: independent of the rank that draws it
            generator = record_generator(self.seed, ctx.step, ctx.batch_offset + index, "mc_kernel")
            probs = kernel_probs(s, self.kernel, self.tau)
            entropies.append(entropy(probs))
            for _ in range(self.num_negatives):
                j = draw(probs, generator)
                pair = record.with_rejected(items[j])
                if self.num_negatives > 1:
                    pair.group = index
                pairs.append(pair)
                drawn_scores.append(float(s[j]))
                is_rejected.append(float(j == 0))
                scored = [i for i in range(len(items)) if rm_scores is not None and rm_scores[i] is not None]
                if j in scored and len(scored) > 1:
                    # rank of the drawn candidate by reward-model score among the pool's scored candidates:
                    # 0 = the best, 1 = the worst
                    order = sorted(scored, key=lambda i: -rm_scores[i])
                    ranks.append(order.index(j) / (len(scored) - 1))
        metrics = {
            "sampler/pool_size": sum(len(items) for items, _ in pools) / len(pools),
            "sampler/pool_filtered": self.left_out_fraction(batch),
            "sampler/kernel_entropy": sum(entropies) / len(entropies),
            "sampler/kernel_entropy_uniform": sum(math.log(len(items)) for items, _ in pools) / len(pools),
            "sampler/drawn_kernel_score": sum(drawn_scores) / len(drawn_scores),
            "sampler/drawn_is_dataset_rejected": sum(is_rejected) / len(is_rejected),
            "sampler/rescored_fraction": self.rescored,
        }
        if ranks:
            metrics["sampler/drawn_rm_rank"] = sum(ranks) / len(ranks)
        return pairs, metrics
