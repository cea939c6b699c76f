"""OnMC-PO's and online DPO's sampler: the pool is generated from the *current* policy during training.

Every `refresh_every` steps, `num_candidates` completions are sampled from the current policy for the prompts
of the next `refresh_every` batches and scored by the suite's reward model. The preferred completion is the
best of the generated set (with the dataset's chosen competing when `include_dataset_chosen`). The negative is
drawn from the rest by MC-PO's kernel (OnMC-PO), or is the worst of them (online DPO, Guo et al. 2024: the
comparator that tells the gain of being online from the gain of the kernel). Reference log-probs of the fresh
samples are computed as they appear (LoRA: adapter disabled; full fine-tuning: a frozen copy of the initial
weights, loaded once). The samples are trained and scored as the token ids the policy generated (ctx.sample_ids);
the reward model, with a tokenizer of its own, scores their text.
"""
from __future__ import annotations

import contextlib
import time

from pobench.errors import PobenchError
from pobench.registry import register_sampler
from pobench.sampling import pair_sequences, record_generator, record_seed
from pobench.sampling.mc_kernel import check_kernel, draw, entropy, kernel_probs


PAIRINGS = ("kernel", "best_worst")    # the negative: drawn by the MC kernel, or the reward model's worst


@register_sampler("online_pool")
class OnlinePool:
    needs_candidates = False
    uses_reward_model = True   # labels its fresh samples with the suite's reward model (named in train_summary.json)

    def __init__(self, params, cfg):
        samples = getattr(params, "num_candidates", 2)
        if samples + bool(getattr(params, "include_dataset_chosen", False)) < 2:
            raise PobenchError(f"{cfg.algorithm_name}.num_candidates={samples} with include_dataset_chosen "
                               f"false leaves no negative beside the preferred sample: sample at least 2")
        # checked here for a plugin that reuses this sampler without `choices` (its run would fail at step 1)
        if getattr(params, "pairing", "kernel") not in PAIRINGS:
            raise PobenchError(f"{cfg.algorithm_name}.pairing={params.pairing!r}: one of {', '.join(PAIRINGS)}")
        if getattr(params, "pairing", "kernel") == "kernel":
            check_kernel(params, getattr(cfg, "algorithm_name", "onmcpo"))
        self.params = params
        self.cfg = cfg
        self.pools: dict[int, tuple] = {}   # step -> per record (candidate ids, rm scores, dataset chosen score)
        self.backend = None                 # kept across refreshes (the fast decoder's graphs, vLLM's engine)

    def reference_sequences(self, records) -> list[tuple]:
        return pair_sequences(records)  # the fresh samples' reference log-probs are computed as they appear

    def state_dict(self) -> dict:
        """The pools generated for steps still to come (refresh_every > 1): a run resumed inside a refresh window
        trains on the samples the uninterrupted run drew at the window's start, not on fresh ones."""
        return {"pools": self.pools}

    def load_state_dict(self, state: dict) -> None:
        self.pools = dict(state.get("pools") or {})

    def generation_seed(self, ctx, seeds_each_prompt: bool = False) -> int:
        """The seed of one refresh's generate call.

        A backend whose `seeds_each_prompt` is true draws every (prompt, sample) from a stream of its own, keyed by
        the call's seed and the prompt itself, not by the other prompts of the call: the call's seed is then keyed
        by (run seed, step) alone, the same on every rank, and a prompt gets the samples a 1-process run gives it
        (up to float rounding across batch shapes); both shipped backends do (vLLM: per_prompt_sampling). A
        backend that seeds the call, not the prompt, gets a seed that also takes the position of this rank's first
        record in the global batch: ranks never share it (no shared random numbers for different prompts), but a
        prompt's samples then depend on which prompts share its call, hence on the number of processes. 32 bits."""
        offset = 0 if seeds_each_prompt else ctx.batch_offset
        return record_seed(self.cfg.seed, ctx.step, offset, "online_generation", bits=32)

    def _refresh(self, ctx) -> float:
        """Generate and score pools for the steps [ctx.step, ctx.step + refresh_every). Returns the seconds spent
        handing the weights to the backend (building it at the first refresh: vLLM's export and engine start)."""
        from pobench.generation import GenerationConfig, get_backend

        p, pc = self.params, self.cfg.pool
        steps = [s for s in range(ctx.step, ctx.step + p.refresh_every) if s < ctx.max_steps]
        batches = [ctx.batch_at(s) for s in steps]
        records = [r for b in batches for r in b]
        synced = time.perf_counter()
        if self.backend is None:
            # sharded weights: the backend decodes in lockstep with the other ranks (distributed.lockstep_generation)
            ranks = getattr(ctx, "generation_ranks", None)
            self.backend = get_backend(pc.backend, ctx.model, ctx.tokenizer,
                                       **({"ranks": ranks} if ranks is not None else {}))
        elif hasattr(self.backend, "sync_weights"):
            # vLLM generates from its own copy of the weights, loaded when it was built: every refresh after the
            # first follows an optimizer step, so the engine takes the current policy's weights first
            self.backend.sync_weights(ctx.model)
        sync_s = time.perf_counter() - synced
        backend = self.backend
        seed = self.generation_seed(ctx, bool(getattr(backend, "seeds_each_prompt", False)))
        gen = GenerationConfig(n=p.num_candidates, temperature=pc.temperature, top_p=pc.top_p,
                               max_new_tokens=pc.max_new_tokens, seed=seed, batch_size=pc.batch_size,
                               compile=self.cfg.model.compile_decoding, top_p_method=self.cfg.model.top_p_method)
        # FSDP: the weights outside the wrapped decoder layers, gathered (a context without the hook: nothing to do)
        with getattr(ctx, "generation_weights", contextlib.nullcontext)():
            completions = backend.generate([r.prompt for r in records], gen)
        rm = ctx.reward_scorer()
        out, k = {}, 0
        for s, batch in zip(steps, batches):
            per_record = []
            for record in batch:
                texts = [c.text for c in completions[k]]
                messages = ctx.prompt_messages(record)
                texts.append(ctx.chosen_text(record))
                scores = rm.score([messages] * len(texts), texts)
                # one score per distinct text: samples of one text in other token splits (trained as generated)
                # are one answer to the reward model, tied exactly, so that none is the negative of another
                first: dict[str, float] = {}
                scores = [first.setdefault(text, float(x)) for text, x in zip(texts, scores)]
                ids = ctx.sample_ids(record, completions[k])
                per_record.append((ids, scores[:-1], scores[-1]))
                k += 1
            out[s] = per_record
        self.pools = out
        return sync_s

    def __call__(self, batch, ctx):
        p = self.params
        started = time.perf_counter()
        sync_s = self._refresh(ctx) if ctx.step not in self.pools else 0.0
        gen_time = time.perf_counter() - started
        pairs, chosen_scores, drawn_scores, entropies, from_dataset, identical = [], [], [], [], [], []
        for index, (record, (ids, scores, dataset_chosen_score)) in enumerate(zip(batch, self.pools.pop(ctx.step))):
            items, item_scores = list(ids), list(scores)
            if p.include_dataset_chosen:
                items.append(record.chosen)  # token ids, like the samples
                item_scores.append(dataset_chosen_score)
            best = max(range(len(items)), key=item_scores.__getitem__)
            # a sample drawn twice is no negative of itself, nor is one the reward model rates as high (the same
            # text in another token split among them): both leave the candidates, unless nothing else is left (a
            # pair of copies trains on nothing; sampler/identical_pair counts it)
            others = [i for i in range(len(items)) if i != best]
            distinct = [i for i in others if list(items[i]) != list(items[best])]
            rest = [i for i in distinct if item_scores[i] < item_scores[best]] or distinct or others
            if p.pairing == "best_worst":
                j = min(rest, key=item_scores.__getitem__)
                entropies.append(0.0)
            else:
                negatives = [(record.prompt, items[i]) for i in rest]
                ctx.ensure_reference(negatives)
                logps, counts = ctx.policy_logps(negatives)
                ref, _ = ctx.refcache.lookup_sequences(negatives)
                values = {"reward": p.beta * (logps - ref), "loglik": logps,
                          "loglik_mean": logps / counts.clamp(min=1)}[p.kernel_score]
                probs = kernel_probs(values, p.kernel, p.tau)
                generator = record_generator(self.cfg.seed, ctx.step, ctx.batch_offset + index, "online_kernel")
                j = rest[draw(probs, generator)]
                entropies.append(entropy(probs))
            pairs.append(type(record)(record.prompt, items[best], items[j], source=record.source))
            identical.append(float(list(items[j]) == list(items[best])))
            chosen_scores.append(item_scores[best])
            drawn_scores.append(item_scores[j])
            from_dataset.append(float(p.include_dataset_chosen and best == len(items) - 1))
        ctx.ensure_reference([s for pair in pairs for s in ((pair.prompt, pair.chosen), (pair.prompt, pair.rejected))])
        n = len(pairs)
        return pairs, {"sampler/generation_s": round(gen_time, 3),
                       "sampler/weight_sync_s": round(sync_s, 3),
                       "sampler/chosen_rm_score": sum(chosen_scores) / n,
                       "sampler/rejected_rm_score": sum(drawn_scores) / n,
                       "sampler/chosen_is_dataset": sum(from_dataset) / n,
                       "sampler/kernel_entropy": sum(entropies) / n,
                       "sampler/identical_pair": sum(identical) / n}
