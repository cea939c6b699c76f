"""The training recipe: one algorithm, one seed, one run folder. Reads top to bottom.

    load policy -> tokenize data -> reference log-probs (cached) -> seeded data order ->
    for each step: sampler picks pairs -> policy log-probs -> algorithm loss -> AdamW step -> metrics
    -> held-out pair metrics every eval_every steps -> checkpoint every save_every steps -> summary
"""
from __future__ import annotations

import contextlib
import math
import os
import time
import traceback
import types
from collections import Counter
from pathlib import Path

import torch

from pobench import faults
from pobench.algorithm import SeqLogps
from pobench.config import RunConfig
from pobench.data import SuiteData
from pobench.data.tokenize import (ChatFormatter, TokenizedPair, closing_ids, encode_completions, sequence_key,
                                   tokenize_records, truncation_counts)
from pobench.engine import distributed as D
from pobench.engine.checkpoint import (check_resumable_state, find_checkpoint, load_checkpoint, load_sampler_states, read_state,
                                       save_checkpoint)
from pobench.engine.io import MetricsLog, atomic_write_json, finite_metrics
from pobench.engine.loggers import Trackers
from pobench.engine.logps import (LogitTransform, SequenceLogps, unwrap_peft, collate_pairs, collate_pairs_shared,
                                  collate_sequences_shared)
from pobench.engine.refcache import ReferenceCache
from pobench.errors import PobenchError
from pobench.models import load_policy, model_fingerprint, pick_device, pick_dtype, training_dtype_warning
from pobench.registry import get_sampler
from pobench.rewards import reward_model_name


class SamplerContext:
    """What a sampler may use: the policy (to score or to generate from), the reference log-probs, the reward
    model, the records of any step, the config. Built once per run; `step` is updated by the loop.

    `batch_offset` is the position, in every step's global batch, of the first record of this process's batch
    (rank * train.batch_size; 0 in one process; train.grad_accum splits a batch only after sampling, so it does
    not move it): the i-th record of `batch_at(step)` is record `batch_offset + i` of the global batch, which is
    what samplers key their per-record random draws on (pobench.sampling.record_generator).

    A sampler that generates from `model` does so inside `with ctx.generation_weights():` (every rank enters it:
    under FSDP it gathers the weights that generation needs, see distributed.generation_weights), with a backend
    given `ranks=ctx.generation_ranks` where that is not None (generation is then a collective)."""

    def __init__(self, cfg: RunConfig, scorer, model, tokenizer, formatter, refcache, device, pad_id: int,
                 batch_at, max_steps: int, reward_scorer, reference, batch_offset: int = 0,
                 generation_weights=contextlib.nullcontext, agree_forwards=None, generation_ranks=None):
        self.cfg, self.scorer, self.model, self.tokenizer, self.formatter = cfg, scorer, model, tokenizer, formatter
        self.refcache, self.device, self.pad_id, self.batch_at, self.max_steps = refcache, device, pad_id, batch_at, max_steps
        self.batch_offset = batch_offset
        self.score_batch_size = 2 * cfg.train.batch_size
        # forwards -> the number every rank runs: the max over ranks where a forward is a collective (FSDP, ZeRO-3)
        self.agree_forwards = agree_forwards or (lambda n: n)
        self.collective = agree_forwards is not None
        self.step = 0
        self._reward_scorer, self._reference = reward_scorer, reference
        self.generation_weights = generation_weights
        # distributed.GenerationRanks where generating is a collective (sharded weights), else None
        self.generation_ranks = generation_ranks

    def reward_scorer(self):
        """The suite's reward model (built on first use)."""
        return self._reward_scorer()

    def policy_logps(self, seqs: list[tuple]):
        """The current policy's log-probs of `seqs`, no gradient. Under sharded weights every rank calls this at
        the same points of a step (even with nothing to score) and runs as many forwards as the busiest rank."""
        return score_sequences(self.scorer, seqs, self.pad_id, self.device, self.score_batch_size,
                               forwards=self.agree_forwards(-(-len(seqs) // self.score_batch_size)))

    def ensure_reference(self, seqs: list[tuple]) -> None:
        """Reference log-probs for sequences that appear during training (fresh samples)."""
        missing = self.refcache.missing(seqs)
        if missing or self.collective:   # sharded weights: join the other ranks' forwards even with none missing
            self.refcache.add(missing, *self._reference(missing))

    def prompt_messages(self, pair: TokenizedPair) -> list[dict]:
        return pair.source.prompt

    def chosen_text(self, pair: TokenizedPair) -> str:
        return pair.source.chosen

    def sample_ids(self, pair: TokenizedPair, completions: list) -> list[list[int]]:
        """The ids a prompt's fresh samples are trained and scored on: those generated (Completion.token_ids, cut
        after the first EOS), not their text tokenized again, which is often another sequence than the one sampled
        (a sampled split of a word is rarely the tokenizer's). A finished sample is closed as the template closes a
        dataset completion (closing_ids: SmolLM2's newline after <|im_end|>); one cut by its token limit stays open.
        Each keeps its first train.max_completion_length ids."""
        record = pair.source
        # rendered and tokenized once for all of the prompt's samples
        prompt = self.formatter.encode_prompts([self.formatter.prompt_text(record.prompt)])[0]
        closings: dict[int, list[int]] = {}    # by the EOS a sample ended with (a model may have several)
        out = []
        for c in completions:
            ids = list(c.token_ids)
            if c.finished:   # its ids end with the EOS it stopped at
                if ids[-1] not in closings:
                    closings[ids[-1]] = closing_ids(self.formatter, record.prompt, prompt, ids[-1])
                ids += closings[ids[-1]]
            out.append(ids[:self.cfg.train.max_completion_length])
        return out


def last_good_checkpoint(run_dir: Path) -> str:
    """For fault messages: which checkpoint survives (nothing after it was written)."""
    found = find_checkpoint(run_dir)
    if found is None:
        return "no checkpoint was written yet"
    try:
        step = read_state(found)["step"]
    except PobenchError:
        return f"the last checkpoint, {found}, is damaged"
    return f"the last good checkpoint (step {step}) is kept in {found}"


def make_sampler(algo, cfg: RunConfig):
    """The algorithm's sampler for this run; its constructor checks the parameters it reads, so `pobench run` builds
    it for every planned run before writing anything."""
    sampler_cls = get_sampler(algo.sampler, getattr(algo, "name", None))
    try:
        return sampler_cls(types.SimpleNamespace(**cfg.algorithm), cfg)
    except AttributeError as e:
        if getattr(e, "name", None) is None or not isinstance(getattr(e, "obj", None), types.SimpleNamespace):
            raise
        raise PobenchError(f"sampler '{algo.sampler}' reads parameter '{e.name}', which algorithm "
                           f"'{getattr(algo, 'name', '?')}' does not define in its defaults") from None


def micro_batches(pairs: list[TokenizedPair], n: int) -> list[list[TokenizedPair]]:
    """The step's pairs in `n` consecutive micro-batches as equal as their count allows: a sampler may give any
    number of pairs (RSO drops tied candidates), and the update is the same whatever the split (the loss is a
    weighted sum over pairs divided by the step's total weight, pair_weights). A record's group of pairs (ranking objectives) is never split.
    With fewer pairs (or groups) than `n`, the first micro-batches are empty."""
    units: list[list[TokenizedPair]] = []
    for pair in pairs:
        if units and pair.group is not None and units[-1][-1].group == pair.group:
            units[-1].append(pair)
        else:
            units.append([pair])
    small, extra = divmod(len(units), n)
    sizes = [small] * (n - extra) + [small + 1] * extra
    out, start = [], 0
    for size in sizes:
        out.append([p for unit in units[start:start + size] for p in unit])
        start += size
    return out


def pair_weights(pairs: list[TokenizedPair]) -> list[float]:
    """Each pair's share of the step's mean: 1 for a pair of its own, 1/n for each of a record's n pairs (ranking
    objectives), so that a record counts once however many negatives its pool gave (pools lose duplicates)."""
    sizes = Counter(p.group for p in pairs if p.group is not None)
    return [1.0 if p.group is None else 1.0 / sizes[p.group] for p in pairs]


def pair_groups(pairs: list[TokenizedPair]) -> torch.Tensor | None:
    """Which record each pair of a micro-batch came from, for ranking objectives (None: one pair per record)."""
    if all(p.group is None for p in pairs):
        return None
    return torch.tensor([p.group for p in pairs], dtype=torch.long)


def code_identity(cls) -> dict:
    """Where a class's code came from and a hash of that file: a plugin's algorithm or sampler, edited between two
    runs, is told apart in train_summary.json (the config names only the algorithm)."""
    import hashlib

    from pobench.registry import source_file
    path = source_file(cls)
    try:
        digest = hashlib.sha1(Path(path).read_bytes()).hexdigest()[:12] if path else None
    except OSError:
        digest = None
    return {"module": cls.__module__, "file": path, "sha1": digest}


def plugin_code(algo, sampler) -> dict:
    """run_code's parts that are a user's plugin: what a resume holds to the checkpoint's record. pobench's own
    algorithms and samplers change with its versions, which env.json records; an upgrade mid-run is no reason to
    refuse the resume."""
    code = run_code(algo, sampler)
    return {part: code[part] for part, obj in (("algorithm", algo), ("sampler", sampler)) if _user_file(type(obj))}


def run_code(algo, sampler) -> dict:
    """The code identity of a run's algorithm and sampler: train_summary.json's `code`, and state.json's, which a
    resume holds the code it runs now to (cli.run)."""
    return {"algorithm": code_identity(type(algo)), "sampler": {"name": algo.sampler, **code_identity(type(sampler))}}


def checked_loss(algo, policy: SeqLogps, reference, params):
    """algo.loss, held to its contract: one loss and one implicit reward per side for each of the B pairs. A
    broadcasting slip ([B, B]) or a mean taken inside the loss ([]) trained silently or failed deep in the
    trainer; a plugin's loss is named instead."""
    try:
        out = algo.loss(policy, reference, params)
    except AttributeError as e:
        if reference is None and getattr(e, "obj", 0) is None:
            raise PobenchError(f"algorithm '{getattr(algo, 'name', type(algo).__name__)}': its loss reads the "
                               f"reference, but it says needs_reference = False") from None
        if getattr(e, "name", None) and isinstance(getattr(e, "obj", None), types.SimpleNamespace):
            raise PobenchError(f"algorithm '{getattr(algo, 'name', type(algo).__name__)}': its loss reads "
                               f"parameter '{e.name}', which its defaults do not define") from None
        # (a sibling `except Exception` does not see what this handler raises)
        raise_from_plugin(e, algo, f"algorithm '{getattr(algo, 'name', type(algo).__name__)}': its loss")
    except Exception as e:
        raise_from_plugin(e, algo, f"algorithm '{getattr(algo, 'name', type(algo).__name__)}': its loss")
    b = len(policy.chosen)
    fields = ("losses", "chosen_rewards", "rejected_rewards")
    shapes = {f: tuple(getattr(getattr(out, f, None), "shape", ())) for f in fields}
    if not all(hasattr(out, f) for f in fields) or any(s != (b,) for s in shapes.values()):
        got = type(out).__name__ if not all(hasattr(out, f) for f in fields) else \
            ", ".join(f"{f} {list(s)}" for f, s in shapes.items())
        raise PobenchError(f"algorithm '{getattr(algo, 'name', type(algo).__name__)}': loss must return a "
                           f"LossOutput of one value per pair, shape [{b}], for losses, chosen_rewards and "
                           f"rejected_rewards; got {got}")
    if policy.chosen.requires_grad and not out.losses.requires_grad:   # else: torch's own words, from backward
        raise PobenchError(f"algorithm '{getattr(algo, 'name', type(algo).__name__)}'{_in_plugin(algo)}: losses do "
                           f"not require grad: detached from the policy's log-probs?")
    return out


def _user_file(cls) -> str | None:
    """The file of a class that is a user's plugin, not pobench's own code (the package, or its shipped
    algorithms/ folder): None for pobench's own, whose bugs stay internal errors with their traceback."""
    from pobench.registry import builtin_dir, source_file
    path = source_file(cls)
    if not path:
        return None
    resolved = Path(path).resolve()
    ours = [Path(__file__).resolve().parents[1]]
    with contextlib.suppress(PobenchError):
        ours.append(builtin_dir("algorithms").resolve())
    return None if any(resolved.is_relative_to(d) for d in ours) else str(resolved)


def _in_plugin(obj) -> str:
    path = _user_file(type(obj))
    return f" ({path})" if path else ""


def plugin_error(error: Exception, obj, what: str) -> Exception:
    """An exception from a user's loss or sampler, as one line naming it and the plugin's line that raised
    (the user's bug, not pobench's: "internal error" sent them to pobench's tracker). pobench's own code, and
    out-of-memory (reported with its knobs further up), are returned unchanged."""
    path = _user_file(type(obj))
    if path is None or isinstance(error, PobenchError) or faults.is_out_of_memory(error):
        return error
    where = path
    for frame, line in traceback.walk_tb(error.__traceback__):
        if Path(frame.f_code.co_filename).resolve() == Path(path):
            where = f"{path}:{line}"   # the innermost of the plugin's frames
    return PobenchError(f"{what} raised {type(error).__name__}: {error} ({where})")


def raise_from_plugin(error: Exception, obj, what: str):
    """Raise `error` as plugin_error words it; called in the handler that caught it, which it never returns to."""
    wrapped = plugin_error(error, obj, what)
    if wrapped is error:
        raise error
    raise wrapped from None


def dry_check_loss(algo, cfg: RunConfig) -> None:
    """checked_loss on two made-up pairs, so that `pobench run` finds a loss that breaks its contract (shape, an
    undefined parameter, the reference read without needs_reference, a detached loss) before the first run trains,
    not when that algorithm's turn comes. A fresh instance: an algorithm may keep state across calls."""
    fresh = type(algo)()
    fresh.name = getattr(algo, "name", type(algo).__name__)

    def logps(grad: bool) -> SeqLogps:
        # group [0, 1]: each pair its own record, as a ranking objective's None means, for losses that read it
        return SeqLogps(torch.tensor([-20.0, -31.0], requires_grad=grad),
                        torch.tensor([-24.0, -29.0], requires_grad=grad),
                        torch.tensor([12, 17]), torch.tensor([14, 15]), group=torch.tensor([0, 1]))
    try:
        checked_loss(fresh, logps(True), logps(False) if algo.needs_reference else None,
                     types.SimpleNamespace(**cfg.algorithm))
    except Exception as e:
        if faults.is_out_of_memory(e):   # two pairs cannot run out of memory: it is the run's to report, if real
            return
        raise


def checked_sampler_output(result, sampler_name: str) -> tuple[list, dict]:
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], list)
            and isinstance(result[1], dict)):
        raise PobenchError(f"sampler '{sampler_name}': must return (pairs, metrics): a list of TokenizedPair and a "
                           f"dict of sampler/* numbers; got {type(result).__name__}")
    for key in result[1]:   # the step's own keys share the record: {"loss": ...} replaced the logged loss
        if not (isinstance(key, str) and key.startswith("sampler/")):
            raise PobenchError(f"sampler '{sampler_name}': metric {key!r} must be named 'sampler/...', so that it "
                               f"cannot replace the step's own values (loss, rewards, ...)")
    return result


def check_finite_loss(losses: torch.Tensor, step: int, run_dir: Path, algo=None) -> None:
    """NaN/inf loss stops the run before its backward pass, so no update and no checkpoint ever holds it. The
    algorithm is named, and its file for a plugin: a new loss's own bug (a log of 0) is as likely as the lr."""
    if not torch.isfinite(losses).all():
        bad = losses[~torch.isfinite(losses)][0].item()
        who = "" if algo is None else f"algorithm '{getattr(algo, 'name', type(algo).__name__)}'{_in_plugin(algo)}: "
        raise PobenchError(f"{who}step {step}: non-finite loss ({bad}); stopped before the update, "
                           f"{last_good_checkpoint(run_dir)} (lower train.lr, check the data, or look for a bug "
                           f"in the loss)")


def tokenize_all(records, formatter, cfg: RunConfig, with_candidates: bool = False) -> list[TokenizedPair]:
    return tokenize_records(records, formatter, cfg.train.max_prompt_length, cfg.train.max_completion_length,
                            with_candidates)


def trained_digests(train_pairs, order: list[int], with_pools: bool) -> dict:
    """Digests of what a run trained on, as token ids: the records in the order consumed (template and truncation
    included) and the candidate pools it drew from. Runs a comparison calls alike are checked to be alike on these,
    not only on equal settings (pobench report names a difference)."""
    import hashlib
    import json

    def digest(items) -> str:
        h = hashlib.sha1()
        for item in items:
            h.update(json.dumps(item, separators=(",", ":")).encode())
        return h.hexdigest()[:16]
    out = {"data_order_digest": digest([train_pairs[i].prompt, train_pairs[i].chosen, train_pairs[i].rejected]
                                       for i in order)}
    if with_pools:
        out["pool_digest"] = digest([train_pairs[i].candidates, train_pairs[i].scores] for i in sorted(set(order)))
    return out


def data_order(n: int, seed: int, steps: int, batch: int) -> list[int]:
    """Record indices for `steps` global batches: a seeded permutation per epoch, the same for every algorithm."""
    out: list[int] = []
    epoch = 0
    while len(out) < steps * batch:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        out.extend(torch.randperm(n, generator=g).tolist())
        epoch += 1
    return out[:steps * batch]


def lr_lambda(step: int, total: int, warmup_ratio: float) -> float:
    warmup = max(1, int(round(total * warmup_ratio))) if warmup_ratio > 0 else 0
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def score_sequences(scorer: SequenceLogps, seqs: list[tuple], pad_id: int, device, batch_size: int,
                    forwards: int = 0):
    """Policy log-probs (summed over completion tokens) and token counts, no gradient, in batches of `batch_size`
    sequences; the sequences of a batch that share a prompt are packed into one row (exact). `forwards`: run at
    least that many forward passes, the extra ones on a one-token stand-in whose result is dropped (under FSDP or
    ZeRO-3 a forward is a collective, which every rank must join however many sequences it has itself)."""
    was_training = scorer.training
    scorer.eval()
    sums, counts = [], []
    for start in range(0, len(seqs), batch_size):
        batch = {k: v.to(device) for k, v in collate_sequences_shared(seqs[start:start + batch_size], pad_id).items()}
        s, c = scorer(**batch)
        sums.append(s.float().cpu())
        counts.append(c.cpu())
    for _ in range(forwards - len(sums)):
        scorer(**{k: v.to(device) for k, v in collate_sequences_shared([([pad_id], [pad_id])], pad_id).items()})
    scorer.train(was_training)
    if not sums:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    return torch.cat(sums), torch.cat(counts)


def score_pairs(scorer: SequenceLogps, pairs: list[TokenizedPair], pad_id: int, device, batch_size: int) -> SeqLogps:
    b = len(pairs)
    sums, counts = score_sequences(scorer, [(p.prompt, p.chosen) for p in pairs] +
                                   [(p.prompt, p.rejected) for p in pairs], pad_id, device, 2 * batch_size)
    return SeqLogps(sums[:b], sums[b:], counts[:b], counts[b:])


def score_pairs_sharded(scorer, pairs: list[TokenizedPair], pad_id: int, device, batch_size: int,
                        accelerator) -> SeqLogps:
    """score_pairs over all pairs, each rank scoring its shard; every rank receives all of them, in order."""
    if accelerator.num_processes == 1 or not pairs:
        return score_pairs(scorer, pairs, pad_id, device, batch_size)

    def share_rows(share: list) -> list:
        s = score_pairs(scorer, share, pad_id, device, batch_size)
        return list(zip(s.chosen.tolist(), s.rejected.tolist(), s.chosen_tokens.tolist(), s.rejected_tokens.tolist()))

    chosen, rejected, chosen_n, rejected_n = zip(*D.map_sharded(share_rows, pairs, accelerator))
    return SeqLogps(torch.tensor(chosen), torch.tensor(rejected), torch.tensor(chosen_n), torch.tensor(rejected_n))


def gather_step(out, policy: SeqLogps, weights: list[float], accelerator):
    """Every rank's per-pair losses, rewards, log-probs and pair weights of a step, concatenated in rank order: the
    logged metrics are those of the global batch, exactly as one process training on it would log them."""
    if accelerator.num_processes == 1:
        return out, policy, weights
    out_fields = ("losses", "chosen_rewards", "rejected_rewards")
    policy_fields = ("chosen", "rejected", "chosen_tokens", "rejected_tokens")
    local = [[getattr(out, f).detach().cpu() for f in out_fields], [getattr(policy, f).cpu() for f in policy_fields],
             list(weights)]
    every = D.gather_lists([local], accelerator)
    out = type(out)(*(torch.cat([rank[0][i] for rank in every]) for i in range(len(out_fields))))
    policy = SeqLogps(*(torch.cat([rank[1][i] for rank in every]) for i in range(len(policy_fields))))
    return out, policy, [w for rank in every for w in rank[2]]


def pair_metrics(out, policy: SeqLogps, prefix: str = "", weights: list[float] | None = None,
                 per_token: bool = False) -> dict:
    """TRL's metrics of a step's (or the held-out) pairs, each the mean the step optimised: a ranking objective's
    record counts once however many pairs it has (pair_weights), in the loss and in the rewards alike.
    `logps/*` are summed over completion tokens, or with `per_token` (an algorithm's `logps_per_token`: SimPO, as
    TRL's CPOTrainer logs for loss_type="simpo") their per-token means."""
    if weights is None or all(w == 1.0 for w in weights):
        def mean(t):
            return t.mean().item()
    else:
        w = torch.tensor(weights, dtype=torch.float64)

        def mean(t):
            return float((t.detach().double().cpu() * w).sum() / w.sum())
    margins = out.chosen_rewards - out.rejected_rewards
    return {
        f"{prefix}loss": mean(out.losses),
        f"{prefix}rewards/chosen": mean(out.chosen_rewards),
        f"{prefix}rewards/rejected": mean(out.rejected_rewards),
        f"{prefix}rewards/margins": mean(margins),
        # a tie (equal rewards: every held-out pair before training, for a loss with a reference; a training step's
        # pairs at step 1 only up to the last bits, as the reference cache scored them in other batches) counts
        # half, as a tie does in a win rate: no preference is no better than a coin (TRL's strict > counts it wrong)
        f"{prefix}rewards/accuracies": mean((margins > 0).float() + 0.5 * (margins == 0).float()),
        f"{prefix}logps/chosen": mean(policy.chosen / policy.chosen_tokens if per_token else policy.chosen),
        f"{prefix}logps/rejected": mean(policy.rejected / policy.rejected_tokens if per_token else policy.rejected),
    }


@contextlib.contextmanager
def reference_policy(cfg: RunConfig, model, scorer, device, fresh_policy: bool):
    """(model, scorer) of the reference policy, without gradient. LoRA: the policy with its adapter disabled.
    Full fine-tuning: the untouched policy itself before step 1, or, once it has been updated (resuming), a
    freshly loaded copy of the initial weights."""
    with torch.no_grad():
        if cfg.model.lora_r > 0:
            with model.disable_adapter():
                yield model, scorer
        elif fresh_policy:
            yield model, scorer
        else:
            ref_model, _, _ = load_policy(types.SimpleNamespace(**{**vars(cfg.model), "lora_r": 0}), device)
            yield ref_model, SequenceLogps(ref_model, cfg.train.logps_chunk)
            del ref_model


def _reread(path: Path, seqs) -> ReferenceCache:
    """The reference cache read again by a rank whose first read lacked what the main process saw: it must now hold
    every sequence (the file is rewritten whole; a concurrent run's rewrite can lose another's additions)."""
    cache = ReferenceCache(path)
    if cache.missing(seqs):
        raise PobenchError(f"{path}: another run rewrote the reference cache while this one read it, and "
                           f"{len(cache.missing(seqs))} sequences are gone; run the command again")
    return cache


def build_reference_cache(cfg: RunConfig, cache_dir: Path, model_path: str, model, scorer, seqs, pad_id,
                          device, fresh_policy: bool, progress=None, accelerator=None) -> ReferenceCache:
    """Reference log-probs for every sequence the run will touch, computed before the first update. Under several
    processes each rank scores its shard of the missing sequences, every rank receives all of them (each looks
    them up during training), and the main process alone writes the cache file."""
    world = accelerator.num_processes if accelerator is not None else 1
    # the policy's forward runs under the accelerator's autocast (bf16 on CUDA by default): the reference must be
    # computed in that precision too, or the implicit rewards start at the rounding gap instead of 0
    mixed = accelerator.mixed_precision if accelerator is not None else "no"
    fingerprint = f"{model_fingerprint(model_path)}-{cfg.model.dtype}" + (f"-{mixed}" if mixed != "no" else "")
    # "-lp2": caches from before token_logps read the target's logit from the normalised logits hold values that
    # differ (under bf16 autocast by up to ~0.06 nats a token)
    fingerprint += "-lp2"
    transform = LogitTransform.of(unwrap_peft(model).config)
    if not transform.is_identity:   # caches made before log-probs applied the transform hold other values
        fingerprint += f"-logits{transform.scale:g}" + (f"cap{transform.softcap:g}" if transform.softcap else "")
    path = cache_dir / "reflogps" / f"{fingerprint}.pt"
    cache = ReferenceCache(path)
    own = cache.missing(seqs)
    missing = D.main_process_list(own, accelerator)
    if not missing:
        # this rank read the file before another run had finished adding what the main process found there
        return _reread(path, seqs) if own else cache
    task = progress.add_task("reference log-probs", total=len(missing)) if progress else None
    bs = max(2, 2 * cfg.train.batch_size)

    def score_share(share: list) -> list:
        rows = []
        for start in range(0, len(share), bs):
            chunk = share[start:start + bs]
            started = time.perf_counter()
            sums, counts = score_sequences(ref_scorer, chunk, pad_id, device, bs)
            # each sequence's share of the wall time, kept with it: every run that uses it is charged that
            # (reference_charges); ranks scoring their shares side by side each count a share of the wall time
            seconds = (time.perf_counter() - started) / len(chunk) / world
            rows.extend((lp, n, seconds) for lp, n in zip(sums.tolist(), counts.tolist()))
            faults.kill_point("refcache")
            if progress:
                progress.advance(task, len(chunk) * world)  # the other ranks advance alongside
        return rows

    with reference_policy(cfg, model, scorer, device, fresh_policy) as (_, ref_scorer), \
            (accelerator.autocast() if accelerator is not None else contextlib.nullcontext()):
        rows = D.map_sharded(score_share, missing, accelerator) if world > 1 else score_share(missing)
    cache.add(missing, torch.tensor([r[0] for r in rows], dtype=torch.float64), torch.tensor([r[1] for r in rows]),
              [r[2] for r in rows])
    if accelerator is None or accelerator.is_main_process:
        cache.save()
    if world > 1:
        accelerator.wait_for_everyone()  # the next run's ranks read the file this one wrote
        if not accelerator.is_main_process and cache.missing(seqs):
            cache = _reread(path, seqs)   # entries the main process read that this rank's earlier read lacked
    if progress:
        progress.remove_task(task)
    return cache


def reference_charges(refcache: ReferenceCache, sampler, train_pairs, order, global_batch: int,
                      max_steps: int) -> list[float] | None:
    """Per step, the seconds the reference pass before step 1 spent on the sequences (those the sampler lists) that
    the step is the first to use, whoever scored them. Charged to the step, they put an offline sampler's reference
    log-probs (a whole pool's) into its training time, as an online sampler's, scored inside its steps, are. None
    where a sequence's time was not recorded (a cache file older than the record). The held-out pairs' are
    evaluation, which no step's time holds."""
    seen, charges = set(), []
    for step in range(max_steps):
        batch = [train_pairs[i] for i in order[step * global_batch:(step + 1) * global_batch]]
        first = {sequence_key(p, c) for p, c in sampler.reference_sequences(batch)} - seen
        spent = [refcache.spent.get(key) for key in first]
        if None in spent:
            return None
        charges.append(sum(spent))
        seen |= first
    return charges


class _PoolShard:
    """Stands in for the PoolStore while a rank generates its shard of the prompts: entries stay in memory until
    they are gathered, and only the main process appends them to the store file."""

    def __init__(self, entries: dict):
        self.entries, self.new = dict(entries), []

    def add(self, entries: list[dict]) -> None:
        self.new.extend(entries)
        self.entries.update((e["key"], e) for e in entries)


def prepare_pools(cfg: RunConfig, data: SuiteData, train_pairs, indices, model, tokenizer, scorer, formatter,
                  cache_dir: Path, model_path: str, device, fresh_policy: bool, progress=None,
                  accelerator=None) -> dict:
    """Attach a scored candidate pool to every training record the run touches (see pobench/sampling/pools.py).
    Under several processes each rank generates the pools of its shard of the missing prompts."""
    from pobench.sampling import pools as P

    if P.uses_dataset_pools(cfg, [data.train[i] for i in indices]):
        return {"source": "dataset"}
    rm = D.main_process_first(lambda: P.auto_reward_model(cfg, data, cache_dir, progress), accelerator)
    rm_name = reward_model_name(rm, cache_dir)
    store_file = P.store_path(cache_dir, model_fingerprint(model_path), cfg, rm_name)
    store = P.PoolStore(store_file)
    own = [i for i in indices if P.prompt_key(train_pairs[i].prompt) not in store.entries]
    agreed = D.main_process_list(own, accelerator)   # one list to shard (see main_process_list)
    missing = agreed
    world = accelerator.num_processes if accelerator is not None else 1
    if missing:
        from pobench.rewards import get_scorer
        rm_scorer = get_scorer(rm)
        target = store
        if world > 1:
            # unpadded shards: generation runs on each rank's whole model copy, never as a collective
            start, stop, _ = D.shard_bounds(len(missing), accelerator.process_index, world)
            # every prompt of the agreed list is this rank's to make, even one its own (later) read of the store
            # already holds: the main process, which did not see it there, needs it from this rank
            agreed_keys = {P.prompt_key(train_pairs[i].prompt) for i in agreed}
            missing, target = missing[start:stop], _PoolShard({k: e for k, e in store.entries.items()
                                                               if k not in agreed_keys})
        with reference_policy(cfg, model, scorer, device, fresh_policy) as (ref_model, _):
            # one process: the run's whole prompt list, so that chunk boundaries survive a crash (generate_pools)
            todo = missing if world > 1 else indices
            P.generate_pools([data.train[i] for i in todo], [train_pairs[i].prompt for i in todo], ref_model,
                             tokenizer, cfg, target, rm_scorer, progress, processes=world)
        del rm_scorer
    if world > 1:  # every rank takes part, even one whose shard was empty
        new = list({e["key"]: e for e in D.gather_lists(target.new if missing else [], accelerator)}.values())
        if accelerator.is_main_process and new:
            store.add(new)
        else:
            store.entries.update((e["key"], e) for e in new)
        accelerator.wait_for_everyone()
    if set(own) - set(agreed):   # this rank read the store before another run finished adding what the main read
        store = P.PoolStore(store_file)
    for i in indices:
        texts, scores, finished = P.pool_for(store, train_pairs[i].prompt)
        record = data.train[i]
        train_pairs[i].candidates = encode_completions(formatter, record.prompt, formatter.prompt_text(record.prompt),
                                                       texts, cfg.train.max_completion_length, finished)
        train_pairs[i].scores = scores
    # the chosen by the candidates' reward model, for MC-PO's negatives: below_chosen (main process first: it stores)
    chosen = D.main_process_first(lambda: P.score_chosen(P.chosen_store_path(store_file),
                                                         [data.train[i] for i in indices], rm), accelerator)
    for i, score in zip(indices, chosen):
        train_pairs[i].chosen_score = score
    return {"source": "generated", "reward_model": rm_name, "store": str(store.path), "prompts": len(indices),
            "samples_per_prompt": cfg.pool.num_samples,
            "generation_s": P.pool_seconds(store, [train_pairs[i].prompt for i in indices])}


def refuse_vllm_pools_under_a_launch(cfg: RunConfig, accelerator) -> None:
    if cfg.pool.backend == "vllm" and accelerator is not None and accelerator.num_processes > 1:
        # accelerate gives each rank a GPU by index, but every rank's vLLM engine would start on the first visible one
        raise PobenchError("pool.backend=vllm runs in one process (each rank's engine would start on the same GPU); "
                           "use pool.backend=transformers under a multi-process launch")


def build_pools(cfg: RunConfig, data: SuiteData, cache_dir: Path, progress=None) -> dict:
    """`pobench candidates`: the pools a run with this config would generate, made ahead of time."""
    device = pick_device(cfg.model.device)
    accelerator = None
    if D.launched_world_size() > 1:  # under accelerate launch: each rank generates its shard of the prompts
        from accelerate import Accelerator
        accelerator = Accelerator(cpu=device.type == "cpu", kwargs_handlers=D.process_group_handlers())
        device = accelerator.device
    refuse_vllm_pools_under_a_launch(cfg, accelerator)     # as a run under the launch refuses it
    global_batch = cfg.train.batch_size * (accelerator.num_processes if accelerator else 1)  # as train() reads it
    model, tokenizer, model_path = load_policy(cfg.model, device)
    formatter = ChatFormatter(tokenizer, cfg.model.chat_template)
    train_pairs = tokenize_all(data.train, formatter, cfg)
    max_steps = cfg.train.max_steps or max(1, len(train_pairs) // global_batch)
    order = data_order(len(train_pairs), cfg.seed, max_steps, global_batch)
    scorer = SequenceLogps(model, cfg.train.logps_chunk)
    return prepare_pools(cfg, data, train_pairs, sorted(set(order)), model, tokenizer, scorer, formatter, cache_dir,
                         model_path, device, fresh_policy=True, progress=progress, accelerator=accelerator)


TRUNCATION_WARNED = "truncation warnings printed"   # a key of train()'s `tokenized` dict, beside its cache keys


def train(cfg: RunConfig, algo, data: SuiteData, run_dir: Path, cache_dir: Path, resume: bool = False,
          progress=None, tokenized: dict | None = None) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.model.device)
    _, mixed_precision = pick_dtype(cfg.model.dtype, device)
    training_dtype_warning(cfg.model.dtype)   # (refuses float16; the CLI prints the bfloat16 warning)
    D.refuse_sharding_on_cpu(device)
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=mixed_precision,
                              kwargs_handlers=D.process_group_handlers())
    if getattr(accelerator, "is_fsdp2", False):  # its weights are DTensors, which pobench's FSDP code does not handle
        raise PobenchError("fsdp_version: 2 (FSDP2) is not supported (on the CPU it failed at gradient clipping: "
                           "'got mixed torch.Tensor and DTensor'); use FSDP1, as the fsdp preset does")
    # (without this, on the CPU: FSDP failed with "'weight' must be 2-D", ZeRO-3 hung at its first evaluation)
    if getattr(data, "evaluator", None) and D.weights_are_sharded(accelerator):
        raise PobenchError("the synthetic suite measures the policy's gold reward on the main process alone during "
                           "training, which FSDP and ZeRO-3 cannot do (their forwards are collectives over weights "
                           "sharded across the ranks); use the ddp preset")
    refuse_vllm_pools_under_a_launch(cfg, accelerator)
    device = accelerator.device
    if cfg.train.deterministic:  # cuBLAS refuses deterministic mode without a fixed workspace (read at first use)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    set_seed(cfg.seed, deterministic=cfg.train.deterministic)
    params = types.SimpleNamespace(**cfg.algorithm)
    tc = cfg.train

    # -- model and data ------------------------------------------------------------------------------
    model, tokenizer, model_path = load_policy(cfg.model, device)
    pad_id = tokenizer.pad_token_id
    formatter = ChatFormatter(tokenizer, cfg.model.chat_template)
    sampler = make_sampler(algo, cfg)
    # prepare_pools attaches a run's pools to these pairs: runs whose pools may differ (another pool.* setting, or
    # the data's own pools against generated ones) must not share them
    pools = repr(cfg.pool) if sampler.needs_candidates else None   # a dataclass: every pool.* setting
    cache_key = (id(data), model_path, cfg.model.chat_template, tc.max_prompt_length, tc.max_completion_length,
                 sampler.needs_candidates, pools)
    seen_before = tokenized is not None and cache_key in tokenized   # another run of this command: warned then
    if seen_before:
        train_pairs, eval_pairs = tokenized[cache_key]
    else:
        train_pairs = tokenize_all(data.train, formatter, cfg, sampler.needs_candidates)
        eval_pairs = tokenize_all(data.eval, formatter, cfg)
        if tokenized is not None:
            tokenized[cache_key] = (train_pairs, eval_pairs)
    truncated = truncation_counts(train_pairs + eval_pairs)
    if any(truncated.values()) and accelerator.is_main_process and not seen_before:
        message = (f"warning: {truncated['prompts']} of {len(train_pairs) + len(eval_pairs)} records had prompts over "
                   f"train.max_prompt_length={tc.max_prompt_length} (their last tokens kept) and "
                   f"{truncated['completions']} had a completion over train.max_completion_length="
                   f"{tc.max_completion_length} (cut at the end)")
        # the same records tokenized again for another sampler (DPO's pairs, then MC-PO's with pools) count alike:
        # the line is said once per command, not once per algorithm
        warned = tokenized.setdefault(TRUNCATION_WARNED, set()) if tokenized is not None else set()
        if message not in warned:
            warned.add(message)
            (progress.console.print if progress is not None else print)(message)

    if tc.batch_size % tc.grad_accum:
        raise PobenchError(f"train.batch_size={tc.batch_size} must be a multiple of train.grad_accum={tc.grad_accum}")
    world, rank = accelerator.num_processes, accelerator.process_index
    global_batch = tc.batch_size * world
    max_steps = tc.max_steps or max(1, len(train_pairs) // global_batch)
    order = data_order(len(train_pairs), cfg.seed, max_steps, global_batch)

    scorer = SequenceLogps(model, tc.logps_chunk)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=tc.lr, weight_decay=tc.weight_decay,
                                  betas=(tc.adam_beta1, tc.adam_beta2), fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, max_steps, tc.warmup_ratio))

    # -- resume ---------------------------------------------------------------------------------------
    metrics = MetricsLog(run_dir / "metrics.jsonl")
    code = run_code(algo, sampler)
    # reference_s: the part of time_s spent on reference log-probs (None: not measured, see reference_charges)
    state = {"step": 0, "records_seen": 0, "pairs_seen": 0, "time_s": 0.0, "reference_s": 0.0, "initial_eval": None,
             "num_processes": world, "code": code}
    checkpoint = find_checkpoint(run_dir) if resume else None
    if checkpoint is not None and D.optimizer_state_is_sharded(accelerator):
        raise PobenchError(f"{run_dir}: --resume is supported for single-process and DDP runs; FSDP/DeepSpeed "
                           f"checkpoints hold the weights only (start the run again; --resume under DDP would continue "
                           f"from these weights with a fresh optimizer and learning-rate schedule, not reproduce the "
                           f"run)")
    if checkpoint is not None:
        saved_world = read_state(checkpoint).get("num_processes", world)
        if saved_world != world:   # another global batch and data split: not the run that was started
            raise PobenchError(f"{run_dir}: --resume under {world} process(es), but the run was started under "
                               f"{saved_world}; resume it with --num-processes {saved_world}")
        state = load_checkpoint(checkpoint, model, optimizer, scheduler)
        check_resumable_state(state, checkpoint)
        # checked equal before this run started (cli.run); a checkpoint older than the record takes today's, so that
        # a resume of it is recorded from here on. A finished run evaluated again keeps the code that trained it.
        state.setdefault("code", code)
        state.setdefault("reference_s", None)   # a checkpoint from before: its steps' time_s lacks the reference pass
        sampler_states = load_sampler_states(checkpoint)
        if hasattr(sampler, "load_state_dict") and sampler_states and len(sampler_states) == world:
            sampler.load_state_dict(sampler_states[rank])   # this rank's, for its own records
        if accelerator.is_main_process:
            metrics.truncate_after(state["step"])
    elif accelerator.is_main_process and metrics.path.exists():
        metrics.path.unlink()  # no checkpoint to continue from: start clean

    # -- candidate pools (samplers that draw from one), then reference log-probs, before the first update ---
    pool_info = None
    if sampler.needs_candidates:
        pool_info = prepare_pools(cfg, data, train_pairs, sorted(set(order)), model, tokenizer, scorer, formatter,
                                  cache_dir, model_path, device, fresh_policy=state["step"] == 0, progress=progress,
                                  accelerator=accelerator)
    refcache = None
    if algo.needs_reference:
        needed = sampler.reference_sequences([train_pairs[i] for i in order]) + \
            [(p.prompt, c) for p in eval_pairs for c in (p.chosen, p.rejected)]
        refcache = build_reference_cache(cfg, cache_dir, model_path, model, scorer, needed, pad_id, device,
                                         fresh_policy=state["step"] == 0, progress=progress, accelerator=accelerator)
    charges = None   # per step, the seconds of the reference pass above that the step's time is charged
    if state["reference_s"] is not None:
        charges = [0.0] * max_steps if refcache is None else \
            reference_charges(refcache, sampler, train_pairs, order, global_batch, max_steps)
        if charges is None:
            state["reference_s"] = None

    # FSDP's transformer auto-wrap reads the layer classes to shard from the model it is given
    scorer._no_split_modules = getattr(model, "_no_split_modules", None)
    D.configure_deepspeed(accelerator, tc.batch_size // tc.grad_accum, tc.max_grad_norm, tc.grad_accum)
    scorer, optimizer = accelerator.prepare(scorer, optimizer)
    D.register_output_layer(accelerator, scorer)
    scoring = D.scoring_module(accelerator, scorer)  # no-grad scoring: see distributed.scoring_module

    batch_offset = rank * tc.batch_size  # this rank's first record in every global batch (SamplerContext)

    def batch_at(step: int) -> list[TokenizedPair]:
        start = step * global_batch + batch_offset
        return [train_pairs[i] for i in order[start:start + tc.batch_size]]

    frozen: dict = {}

    def reward_spec() -> str:
        """The suite's reward model (pool.reward_model; `auto`: trained once and cached), as a spec."""
        if "rm_spec" not in frozen:
            from pobench.sampling.pools import auto_reward_model
            frozen["rm_spec"] = D.main_process_first(lambda: auto_reward_model(cfg, data, cache_dir, progress),
                                                     accelerator)
        return frozen["rm_spec"]

    def reward_scorer():
        if "rm" not in frozen:
            from pobench.rewards import get_scorer
            frozen["rm"] = get_scorer(reward_spec())
        return frozen["rm"]

    def agree_forwards(n: int) -> int:
        return D.max_over_ranks(n, accelerator) if D.forwards_need_all_ranks(accelerator) else n

    in_step = {"reference_s": 0.0, "setup_s": 0.0}   # the current step's, measured by reference()

    def reference(seqs):
        """Reference log-probs of sequences met during training: the adapter-disabled policy (LoRA) or a
        frozen copy of the initial weights, loaded on first use (full fine-tuning)."""
        if cfg.model.lora_r == 0 and "ref" not in frozen:
            loading = time.perf_counter()
            ref_model, _, _ = load_policy(types.SimpleNamespace(**{**vars(cfg.model), "lora_r": 0}), device)
            frozen["ref"] = SequenceLogps(ref_model.eval().requires_grad_(False), tc.logps_chunk)
            # setup, as loading the policy is, and the reference model an offline run scores with before step 1
            # (the policy itself, or a copy loaded on resuming): kept out of the step's time
            frozen["reference_load_s"] = time.perf_counter() - loading
            in_step["setup_s"] += frozen["reference_load_s"]
        started = time.perf_counter()
        if cfg.model.lora_r > 0:   # the policy's own scoring (and its forward count under sharded weights)
            with torch.no_grad(), model.disable_adapter():
                out = ctx.policy_logps(seqs)
        else:
            with accelerator.autocast():   # the policy's precision (the prepared policy scores under it)
                out = score_sequences(frozen["ref"], seqs, pad_id, device, 2 * tc.batch_size)
        in_step["reference_s"] += time.perf_counter() - started
        return out

    ctx = SamplerContext(cfg, scoring, model, tokenizer, formatter, refcache, device, pad_id, batch_at, max_steps,
                         reward_scorer, reference, batch_offset=batch_offset,
                         generation_weights=lambda: D.generation_weights(accelerator, scorer),
                         generation_ranks=D.lockstep_generation(accelerator),
                         agree_forwards=agree_forwards if D.forwards_need_all_ranks(accelerator) else None)
    eval_bs = max(2, tc.batch_size)
    per_token_logps = bool(getattr(algo, "logps_per_token", False))   # logps/* as the algorithm's TRL trainer logs

    def held_out(before_training: bool = False) -> dict:
        policy = score_pairs_sharded(scoring, eval_pairs, pad_id, device, eval_bs, accelerator)
        faults.kill_point("eval")
        # before the first update the policy is the reference, so its own log-probs are the reference's exactly;
        # the cache's, scored in other batches, differ in the last bits, and margins of 1e-8 either way made the
        # initial accuracy a draw of rounding noise (0.13 on one run, 0.47 on another) instead of ties
        reference = (policy if before_training else refcache.lookup(eval_pairs)) if refcache else None
        with torch.no_grad():
            out = checked_loss(algo, policy, reference, params)
        frozen["held_out_margins"] = (out.chosen_rewards - out.rejected_rewards).tolist()   # the latest, per pair
        metrics = pair_metrics(out, policy, prefix="eval/", per_token=per_token_logps)
        if not math.isfinite(metrics.get("eval/loss", 0.0)) and accelerator.is_main_process:
            # training losses stop the run when they are not finite; a held-out one is kept, and the report reads it
            # as not measured: said here, so that a seed missing from the held-out rows has a reason
            (progress.console.print if progress is not None else print)(
                f"warning: {cfg.algorithm_name} seed{cfg.seed}: the held-out loss is {metrics['eval/loss']} at step "
                f"{state['step']} (the report reads it as not measured)")
        return metrics

    if state["initial_eval"] is None:
        state["initial_eval"] = held_out(before_training=state["step"] == 0)
    # a suite with a known reward (synthetic) also measures the policy itself at every evaluation step
    suite_eval = data.evaluator(cfg, data, model, tokenizer, model_path, device) \
        if getattr(data, "evaluator", None) and accelerator.is_main_process else None

    trackers = Trackers(cfg, run_dir) if accelerator.is_main_process else None
    # -- the loop ------------------------------------------------------------------------------------
    task = progress.add_task(f"{cfg.algorithm_name} seed{cfg.seed}", total=max_steps, completed=state["step"]) if progress else None
    scorer.train()
    # FSDP clips over the wrapped model's own parameters (accelerate matches the list against them)
    clip_params = list(scorer.parameters()) if D.forwards_need_all_ranks(accelerator) else trainable
    last_eval = None
    for step in range(state["step"], max_steps):
        t0 = time.perf_counter()
        in_step.update(reference_s=0.0, setup_s=0.0)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        ctx.step = step
        try:
            drawn = sampler(batch_at(step), ctx)
        except Exception as e:
            raise_from_plugin(e, sampler, f"sampler '{algo.sampler}'")
        pairs, sampler_metrics = checked_sampler_output(drawn, algo.sampler)
        # DDP/FSDP average gradients over ranks: dividing each rank's weighted loss sum by the mean weight per rank
        # makes that average the gradient of the global batch's mean (over records where a ranking objective gives
        # a record several pairs), even where a sampler gives ranks unequal pair counts
        pair_w = pair_weights(pairs)
        counts = D.gather_lists([(len(pairs), sum(pair_w))], accelerator)   # one collective, on every rank
        step_pairs = sum(n for n, _ in counts)
        # without groups every weight is 1.0 and the units are the pair count, exactly (as before weights)
        units_per_rank = sum(u for _, u in counts) / world
        collate = collate_pairs_shared if tc.shared_prompt else collate_pairs
        step_logs, tokens = [], 0
        chunks = micro_batches(pairs, tc.grad_accum)
        if not all(chunks):   # every rank must run each micro-batch (sharded forwards, DeepSpeed's step count)
            raise PobenchError(f"step {step + 1}: sampler {algo.sampler} gave {len(pairs)} pairs, fewer than "
                               f"train.grad_accum={tc.grad_accum} micro-batches; lower train.grad_accum")
        for m, chunk in enumerate(chunks):
            micro = len(chunk)
            inputs = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
            tokens += sum(len(p.prompt) + len(p.chosen) + len(p.rejected) for p in chunk) if tc.shared_prompt \
                else int(inputs["attention_mask"].sum())
            with accelerator.no_sync(scorer) if m < tc.grad_accum - 1 else contextlib.nullcontext():
                with accelerator.autocast():
                    sums, counts = scorer(**inputs)
                policy = SeqLogps(sums[:micro], sums[micro:], counts[:micro], counts[micro:], group=pair_groups(chunk))
                reference = refcache.lookup(chunk, device) if refcache else None
                out = checked_loss(algo, policy, reference, params)
                check_finite_loss(out.losses, step + 1, run_dir, algo)
                # weighted sum / units: accumulated micro-batches give the gradient of the full batch's mean
                total = out.losses.sum() if policy.group is None else \
                    (out.losses * torch.tensor(pair_weights(chunk), device=out.losses.device)).sum()
                accelerator.backward(total / units_per_rank)
            step_logs.append((out, policy))
        # max_grad_norm 0 = no clipping; the norm is still measured (clipping at inf), for the log and the check
        grad_norm = accelerator.clip_grad_norm_(clip_params, tc.max_grad_norm if tc.max_grad_norm > 0 else math.inf)
        if grad_norm is None:  # DeepSpeed clips inside its own step and may not report the norm
            grad_norm = float("nan")
        elif not torch.isfinite(torch.as_tensor(grad_norm)):
            raise PobenchError(f"step {step + 1}: non-finite gradient norm ({float(grad_norm)}); stopped before the "
                               f"update, {last_good_checkpoint(run_dir)} (lower train.lr or check the data)")
        faults.kill_point("step")
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - t0 - in_step["setup_s"]
        state["step"] = step + 1
        state["records_seen"] += global_batch
        state["pairs_seen"] += step_pairs
        # the reference log-probs scored before step 1 for this step's sequences count in its time, as those scored
        # inside the step (an online sampler's fresh samples, in `elapsed`) do: every algorithm's time holds them
        charge = charges[step] if charges is not None else 0.0
        state["time_s"] += elapsed + charge
        if state["reference_s"] is not None:
            state["reference_s"] += charge + in_step["reference_s"]
        tokens = D.sum_over_ranks(tokens, accelerator)
        sampler_metrics = D.mean_over_ranks(sampler_metrics, accelerator)

        out = type(step_logs[0][0])(*(torch.cat([getattr(o, f) for o, _ in step_logs])
                                      for f in ("losses", "chosen_rewards", "rejected_rewards")))
        policy = SeqLogps(*(torch.cat([getattr(p, f) for _, p in step_logs]).detach()
                            for f in ("chosen", "rejected", "chosen_tokens", "rejected_tokens")))
        out, policy, pair_w = gather_step(out, policy, pair_w, accelerator)
        row = {"step": step + 1, "pairs_seen": state["pairs_seen"], "records_seen": state["records_seen"],
               **pair_metrics(out, policy, weights=pair_w, per_token=per_token_logps),
               "learning_rate": lr, "grad_norm": float(grad_norm), "time_s": round(state["time_s"], 4),
               "step_time_s": round(elapsed, 4), "tokens_per_s": round(tokens / elapsed, 1),
               "pairs_per_s": round(step_pairs / elapsed, 3), **sampler_metrics}
        if device.type == "cuda":
            row["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        is_last = step + 1 == max_steps
        evaluated = is_last or bool(tc.eval_every and (step + 1) % tc.eval_every == 0)
        if evaluated:
            last_eval = held_out()
            row.update(last_eval)
            if suite_eval:
                row.update(suite_eval(step + 1))
        if accelerator.is_main_process and (evaluated or (step + 1) % max(1, tc.log_every) == 0):
            metrics.append(row)
            trackers.log(row)
        if is_last or (tc.save_every and (step + 1) % tc.save_every == 0):
            sampler_states = D.gather_lists([sampler.state_dict()], accelerator) \
                if hasattr(sampler, "state_dict") and not is_last else None
            with D.full_weights(accelerator, scorer) as weights:  # every rank enters: FSDP/ZeRO-3 gather them
                if accelerator.is_main_process:
                    save_checkpoint(run_dir, weights, optimizer, scheduler, state,
                                    with_optimizer=not is_last and not D.optimizer_state_is_sharded(accelerator),
                                    sampler_states=sampler_states)
        if progress:
            progress.update(task, completed=step + 1,
                            description=f"{cfg.algorithm_name} seed{cfg.seed} loss {row['loss']:.3f}")
    if progress and task is not None:
        progress.remove_task(task)
    if trackers:
        trackers.close()
    if last_eval is None:
        last_eval = held_out()
    faults.kill_point("summary")
    rows = metrics.read() if accelerator.is_main_process else []  # the main process may still be appending
    summary = {
        "suite": cfg.suite, "algorithm": cfg.algorithm_name, "seed": cfg.seed, "steps": state["step"],
        "pairs_seen": state["pairs_seen"], "train_time_s": round(state["time_s"], 3),
        "reference_s": round(state["reference_s"], 3) if state["reference_s"] is not None else None,
        # the frozen reference copy an online sampler under full fine-tuning loads at its first use: setup, not in
        # train_time_s (None: none was loaded during the steps)
        "reference_load_s": round(frozen["reference_load_s"], 3) if "reference_load_s" in frozen else None,
        "pairs_per_s": round(state["pairs_seen"] / state["time_s"], 4) if state["time_s"] else None,
        "final_loss": rows[-1]["loss"] if rows else None,
        "held_out_initial": finite_metrics(state["initial_eval"]), "held_out_final": finite_metrics(last_eval),
        "reference_model": model_path, "eval_pairs": len(eval_pairs), "train_pairs": len(train_pairs),
        "code": state["code"],
        "records_seen": state["records_seen"], "candidate_pool": pool_info, "truncated": truncated,
        "num_processes": world, "global_batch_size": global_batch, "distributed": str(accelerator.distributed_type),
        # the main process writes the summary; a pool's tokens can run to 10^7 ids
        **(trained_digests(train_pairs, order, with_pools=sampler.needs_candidates)
           if accelerator.is_main_process else {}),
        # an online sampler's labeller, also where no step ran in this process (resumed from the final checkpoint)
        "reward_model": (reward_model_name(reward_spec(), cache_dir)
                         if "rm_spec" in frozen or getattr(sampler, "uses_reward_model", False)
                         else (pool_info or {}).get("reward_model")),
    }
    if suite_eval:
        summary["gold_eval_final"] = suite_eval.finish(run_dir, rows)["final"]
    if accelerator.is_main_process:
        # per pair, so that two algorithms' held-out accuracies can be compared pair by pair (pobench report);
        # written before the summary, which marks the run finished
        atomic_write_json(run_dir / "held_out_pairs.json", {
            "ids": [(p.source.id if p.source is not None else "") or str(i) for i, p in enumerate(eval_pairs)],
            "margins": frozen["held_out_margins"], "step": state["step"],
            "reward": f"{cfg.algorithm_name}'s implicit reward: chosen minus rejected"})
        atomic_write_json(run_dir / "train_summary.json", summary)
    return summary

