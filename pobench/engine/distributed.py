"""Multi-process helpers: shard work across ranks, merge it back in order, average metrics, pick who writes.

Every helper is a no-op in a single process (no process group, nothing gathered), so a run without
`accelerate launch` takes exactly the code path it took before distributed support existed.

Sharding is contiguous and padded: rank r computes items [r*k, (r+1)*k) of n items, k = ceil(n / world), the
last ranks padding their share with copies of the last item. Every rank then runs the same number of forwards,
which FSDP and ZeRO-3 need (their forwards are collectives), and concatenating the gathered shards in rank order
gives the items in their original order followed by the padding, which is cut off.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Sequence

from pobench.errors import PobenchError


def inside_launch() -> bool:
    """True in a process started by accelerate launch / torchrun (they set WORLD_SIZE), even a launch of one."""
    return "WORLD_SIZE" in os.environ


def launched_world_size() -> int:
    """Processes in this launch, read from the environment that accelerate/torchrun set (1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's global rank from the launcher's environment (0 when not launched); usable before any
    process group exists, e.g. to silence the console of the other ranks."""
    return int(os.environ.get("RANK", "0"))


# Phases that the main process runs alone while the other ranks wait in a collective: training an auto judge's
# reward model, an LLM judge's calls, a reference model converted once. NCCL's default timeout (10 minutes) would
# abort the waiting ranks in the middle of a long judge, so pobench's process group waits this long instead.
COLLECTIVE_TIMEOUT_ENV = "POBENCH_COLLECTIVE_TIMEOUT_MIN"
DEFAULT_COLLECTIVE_TIMEOUT_MIN = 180


def collective_timeout():
    """How long a rank waits in one collective: $POBENCH_COLLECTIVE_TIMEOUT_MIN minutes, 180 by default."""
    from datetime import timedelta
    raw = os.environ.get(COLLECTIVE_TIMEOUT_ENV, str(DEFAULT_COLLECTIVE_TIMEOUT_MIN))
    try:
        minutes = float(raw)
    except ValueError:
        minutes = float("nan")
    if not minutes > 0 or minutes == float("inf"):
        raise PobenchError(f"{COLLECTIVE_TIMEOUT_ENV}={raw!r}: give the minutes a rank may wait in one collective, "
                           f"a positive number (default {DEFAULT_COLLECTIVE_TIMEOUT_MIN})")
    return timedelta(minutes=minutes)


def process_group_handlers() -> list:
    """accelerate kwargs handlers for an Accelerator that may create the process group (with collective_timeout)."""
    from accelerate.utils import InitProcessGroupKwargs
    return [InitProcessGroupKwargs(timeout=collective_timeout())]


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int, int]:
    """(start, stop, padded size) of rank's contiguous share of n items."""
    size = -(-n // world) if n else 0
    start = min(n, rank * size)
    return start, min(n, start + size), size


def local_shard(items: Sequence, rank: int, world: int) -> list:
    """Rank's share of `items`, padded with copies of the last item to the common share size."""
    start, stop, size = shard_bounds(len(items), rank, world)
    share = list(items[start:stop])
    return share + [items[-1]] * (size - len(share))


def gather_lists(local: list, accelerator) -> list:
    """Concatenate every rank's list in rank order, on every rank."""
    if accelerator.num_processes == 1:
        return list(local)
    from accelerate.utils import gather_object
    return gather_object(list(local))


def main_process_list(local: list, accelerator) -> list:
    """The main process's `local`, on every rank: what ranks shard must be one list, and each rank's own reading of a
    cache file that concurrent runs append to may differ from the others' (shards of two lists mismatch their
    results, and a rank with nothing to do would skip a collective the others wait in)."""
    if accelerator is None or accelerator.num_processes == 1:
        return list(local)
    return gather_lists([list(local)] if accelerator.is_main_process else [], accelerator)[0]


def map_sharded(fn: Callable[[list], list], items: Sequence, accelerator) -> list:
    """fn over all items, each rank computing its shard; the per-item results in item order, on every rank.
    `fn` returns one picklable result per item it is given."""
    if accelerator.num_processes == 1:
        return list(fn(list(items)))
    if not items:
        return []
    share = local_shard(items, accelerator.process_index, accelerator.num_processes)
    results = list(fn(share))
    if len(results) != len(share):
        raise RuntimeError(f"map_sharded: {len(results)} results for {len(share)} items")
    return gather_lists(results, accelerator)[:len(items)]


def mean_over_ranks(values: dict, accelerator) -> dict:
    """Per-key mean of numeric values over the ranks that reported the key (sampler metrics of each rank's
    share of the batch). Non-numeric values are taken from the main process."""
    if accelerator.num_processes == 1:
        return values
    from accelerate.utils import gather_object
    every = gather_object([values])
    out = dict(every[0])
    for key in {k for d in every for k in d}:
        numbers = [d[key] for d in every if isinstance(d.get(key), (int, float)) and not isinstance(d.get(key), bool)]
        if numbers:
            out[key] = sum(numbers) / len(numbers)
    return out


def sum_over_ranks(value, accelerator):
    if accelerator.num_processes == 1:
        return value
    return sum(gather_lists([value], accelerator))


def close_process_group(completed: bool) -> None:
    """Destroy this process's default process group, if one was made, before the interpreter shuts down.

    Left to interpreter finalisation, gloo's worker threads may still hold tensors whose release needs the GIL that
    finalisation is tearing down: the process aborts ("terminate called without an active exception", SIGABRT)
    after its work is done and written, and the launcher reports the whole launch failed (seen in CI on a 2-process
    FSDP run). After a command that completed, the ranks first meet at a barrier, so that none closes its
    connections while another still receives; after a failure they do not (the others may never arrive), and the
    launcher ends them anyway."""
    dist = sys.modules.get("torch.distributed")  # never imports torch for a command that did not
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    if completed:
        try:
            dist.barrier()
        except RuntimeError:  # a rank that failed has left: its own error is the one to read, not this one
            pass
    dist.destroy_process_group()


def refuse_sharding_on_cpu(device) -> None:
    """accelerate (1.15) runs FSDP and DeepSpeed on accelerators only: launched with such a config for the CPU, its
    Accelerator either fails (the fsdp preset: sync_module_states wants a device) or trains plain DDP over gloo
    (MULTI_CPU) and the run would pass for an FSDP/DeepSpeed one. Refused before the Accelerator is made.
    (tests/launch/sharded_on_cpu.py lifts accelerate's rule to test these code paths on the CPU.)"""
    if device.type != "cpu":
        return
    for variable, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(variable, "false").lower() == "true":
            raise PobenchError(f"{name} launch on the CPU: accelerate runs {name} on GPUs only, and on the CPU would "
                               f"train plain DDP instead; use the ddp preset (--num-processes N without "
                               f"--launch-config) for CPU processes")


def max_over_ranks(value: int, accelerator) -> int:
    if accelerator.num_processes == 1:
        return value
    return max(gather_lists([value], accelerator))


def forwards_need_all_ranks(accelerator) -> bool:
    """FSDP and DeepSpeed shard the weights, so a forward is a collective and must go through the wrapped model on
    every rank; under DDP (or one process) each rank holds the whole model and can score on its own."""
    from accelerate.utils import DistributedType
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def main_process_first(fn: Callable, accelerator=None):
    """fn() on the main process, then on the others once it is done: for work that fills a shared on-disk cache
    (a reward model trained once, a converted model), so the others find it there instead of racing to write it."""
    if accelerator is None or accelerator.num_processes == 1:
        return fn()
    with accelerator.main_process_first():
        return fn()


def scoring_module(accelerator, wrapped):
    """The module for no-grad scoring (held-out pairs, candidates): under DDP the plain module, so that scoring is
    never a collective (a DDP forward syncs buffers across ranks) and each rank may score as much as it needs; under
    FSDP/DeepSpeed the wrapped one, whose forward gathers the sharded weights (every rank must then score the same
    number of batches)."""
    return wrapped if forwards_need_all_ranks(accelerator) else accelerator.unwrap_model(wrapped)


def weights_are_sharded(accelerator) -> bool:
    """FSDP and ZeRO-3 keep each weight on one rank outside their own forwards: the policy cannot be run by one rank
    alone. (ZeRO-1/2 shard the optimizer state only.)"""
    from accelerate.utils import DistributedType
    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    return accelerator.distributed_type == DistributedType.DEEPSPEED and \
        accelerator.state.deepspeed_plugin.zero_stage == 3


class GenerationRanks:
    """What generation agrees on across ranks where the policy's weights are sharded (lockstep_generation)."""

    def __init__(self, accelerator):
        self.accelerator = accelerator

    def min(self, value: int) -> int:
        return min(gather_lists([value], self.accelerator))

    def max(self, value: int) -> int:
        return max_over_ranks(value, self.accelerator)


def lockstep_generation(accelerator) -> GenerationRanks | None:
    """Where generating from the policy is a collective - FSDP or ZeRO-3 across several processes: every forward
    gathers weights from all ranks, so each rank must run the same forwards, and a rank's own early stop (all of its
    rows at EOS) or its own batch size (from its GPU's free memory) would leave the others waiting in a gather
    forever. The backend then decodes in lockstep with the others (pobench/generation/hf.py); None elsewhere."""
    if accelerator.num_processes > 1 and weights_are_sharded(accelerator):
        return GenerationRanks(accelerator)
    return None


def optimizer_state_is_sharded(accelerator) -> bool:
    """FSDP and ZeRO shard the optimizer state across ranks: the main process alone cannot save it."""
    return forwards_need_all_ranks(accelerator)


def configure_deepspeed(accelerator, micro_batch: int, max_grad_norm: float, grad_accum: int) -> None:
    """Fill the DeepSpeed config values that accelerate takes from a dataloader, which pobench does not use.
    DeepSpeed clips inside its own step and steps inside `backward` at an accumulation boundary, so the loop's
    micro-batch accumulation is not mapped onto it yet: train.grad_accum must be 1 (use more processes instead)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    if grad_accum != 1:
        raise PobenchError(f"train.grad_accum={grad_accum}: under DeepSpeed pobench supports train.grad_accum=1 only "
                           f"(raise train.batch_size or the number of processes instead)")
    config = plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = micro_batch
    config["train_batch_size"] = micro_batch * accelerator.num_processes
    config["gradient_accumulation_steps"] = 1
    config["gradient_clipping"] = max_grad_norm


def register_output_layer(accelerator, wrapped) -> None:
    """ZeRO-3 gathers a weight only inside its own module's forward, but the sequence log-probs read the output
    layer's weight rows directly (engine/logps.py); registering it as used by the whole scorer keeps it gathered
    for the scorer's forward (without it ZeRO-3 fails on the CPU: "index is out of bounds for dimension with size
    0"). A no-op elsewhere."""
    from accelerate.utils import DistributedType
    if accelerator.distributed_type != DistributedType.DEEPSPEED or accelerator.state.deepspeed_plugin.zero_stage != 3:
        return
    import deepspeed
    scorer = accelerator.unwrap_model(wrapped)
    base = scorer.model.get_base_model() if hasattr(scorer.model, "get_base_model") else scorer.model
    deepspeed.zero.register_external_parameter(scorer, base.get_output_embeddings().weight)


@contextlib.contextmanager
def generation_weights(accelerator, wrapped):
    """Entered by every rank around generation from the policy during training (OnMC-PO, online DPO): generate()
    runs the inner model, not the wrapped forward. Under FSDP the auto-wrapped decoder layers gather their own weights
    in their forwards, but the root unit's (embeddings, final norm, output layer) stay sharded outside the root's
    forward ("'weight' must be 2-D"): they are gathered on every rank for the duration. ZeRO-3's hooks gather every
    module's weights in its own forward; DDP and ZeRO-1/2 hold them whole."""
    from accelerate.utils import DistributedType
    if accelerator.distributed_type != DistributedType.FSDP:
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    with FSDP.summon_full_params(wrapped, recurse=False, writeback=False):
        yield


class _UnwrappedNames:
    """A view of a model whose parameter names lose FSDP's wrapper prefixes, so that a checkpoint written under
    FSDP has the same keys as one written by a single process."""

    PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")

    def __init__(self, model):
        self.model = model

    def named_parameters(self):
        for name, p in self.model.named_parameters():
            for prefix in self.PREFIXES:
                name = name.replace(prefix, "")
            yield name, p


def offload_gathered_weights(device, sharding_strategy) -> bool:
    """Whether FSDP's gathered weights go to the CPU for the checkpoint (so the gathered model never sits on the GPU
    whole). Not on a CPU compute device: torch's offload there "moves" the weights to the CPU (a no-op) and then
    frees them, leaving parameters with empty storage (seen with torch 2.13, gloo). Not when nothing is sharded:
    FSDP on one process runs NO_SHARD (it switches by itself at world size 1), where torch refuses the offload
    ("offload_to_cpu=True and NO_SHARD is not supported yet": a one-GPU launch of the fsdp preset, H200, torch 2.11)
    and the full weights are on the device already."""
    from torch.distributed.fsdp import ShardingStrategy
    return device.type != "cpu" and sharding_strategy != ShardingStrategy.NO_SHARD


@contextlib.contextmanager
def full_weights(accelerator, wrapped):
    """Entered by every rank; yields the policy model whose `named_parameters()` the checkpoint code reads, holding
    full (unsharded) weights on the main process: FSDP and ZeRO-3 gather them for the duration. Under DDP and
    ZeRO-1/2 it is simply the unwrapped policy."""
    from accelerate.utils import DistributedType
    policy = accelerator.unwrap_model(wrapped).model
    if accelerator.distributed_type == DistributedType.FSDP:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        offload = offload_gathered_weights(accelerator.device, getattr(wrapped, "sharding_strategy", None))
        with FSDP.summon_full_params(wrapped, writeback=False, rank0_only=True, offload_to_cpu=offload):
            yield _UnwrappedNames(policy)
    elif accelerator.distributed_type == DistributedType.DEEPSPEED and \
            accelerator.state.deepspeed_plugin.zero_stage == 3:
        import deepspeed
        with deepspeed.zero.GatheredParameters(list(policy.parameters()), modifier_rank=None):
            yield policy
    else:
        yield policy
