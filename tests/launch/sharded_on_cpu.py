"""`pobench ...` under an FSDP or DeepSpeed accelerate launch on the CPU (gloo), for the tests only.

accelerate (1.15) runs FSDP and DeepSpeed on accelerators only: with `cpu=True` its state is MULTI_CPU (plain DDP
over gloo) whatever the launch config says, and pobench refuses such a launch (distributed.refuse_sharding_on_cpu).
torch's FSDP1 and DeepSpeed's CPU accelerator (DS_ACCELERATOR=cpu, gloo without oneCCL) do run on the CPU, so this
entry point lifts accelerate's rule in each launched process: once an Accelerator is made, a MULTI_CPU state
becomes FSDP / DEEPSPEED with the plugin that the launch's environment describes, exactly as accelerate builds it
on GPUs, and its device is the plain "cpu" (FSDP1 compares its compute device with device_id, and torch.cpu
reports "cpu", not accelerate's "cpu:0"). Everything after that (accelerator.prepare wrapping the model in FSDP or
a DeepSpeed engine, collectives, clipping, checkpoint gathering) is the real code path.

    accelerate launch --config_file pobench/launch/fsdp.yaml --fsdp_sync_module_states false \\
        tests/launch/sharded_on_cpu.py run ...
"""
from __future__ import annotations

import os
import sys

import torch
from accelerate import accelerator as accelerate_accelerator
from accelerate.state import PartialState
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin

from pobench.engine import distributed

_make_accelerator = accelerate_accelerator.Accelerator.__init__


def _asked(variable: str) -> bool:
    return os.environ.get(variable, "false").lower() == "true"


def _sharded_on_cpu(self, *args, **kwargs):
    _make_accelerator(self, *args, **kwargs)
    state = self.state
    if state.distributed_type != DistributedType.MULTI_CPU:
        return
    if _asked("ACCELERATE_USE_FSDP"):
        state.fsdp_plugin = FullyShardedDataParallelPlugin()
        state.distributed_type = DistributedType.FSDP
    elif _asked("ACCELERATE_USE_DEEPSPEED"):
        plugin = DeepSpeedPlugin()
        plugin.set_mixed_precision("no")
        plugin.select(_from_accelerator_state=True)  # as AcceleratorState does on GPUs
        state.deepspeed_plugins = plugin
        state._mixed_precision = "no"
        state.distributed_type = DistributedType.DEEPSPEED
    else:
        return
    PartialState._shared_state["distributed_type"] = state.distributed_type
    state.device = PartialState._shared_state["device"] = torch.device("cpu")


accelerate_accelerator.Accelerator.__init__ = _sharded_on_cpu
distributed.refuse_sharding_on_cpu = lambda device: None

if __name__ == "__main__":
    from pobench.cli import main
    sys.argv = ["pobench", *sys.argv[1:]]
    main()
