"""Run `textxfer` (its command line: `python tests/fsdp_on_cpu.py train RECIPE ...`, under `accelerate launch`) with
Accelerate's FSDP allowed on CPU processes over gloo, so that the sharded path can be tested on a machine
without GPUs.

Accelerate sets up FSDP only on GPUs (and similar devices): on CPU processes it keeps MULTI_CPU and ignores an
FSDP plugin, and textxfer refuses to train (`sharding.check_sharding`). PyTorch's FSDP2 itself runs on CPU tensors
over gloo; this wrapper makes Accelerate's state say FSDP where it would on GPUs, as `AcceleratorState` does for
`MULTI_GPU`, and changes nothing else: the plugin, `prepare`, `save_state` and `load_state` are Accelerate's own.
"""

from __future__ import annotations

import accelerate.state as state
from accelerate.utils import DistributedType

_init = state.AcceleratorState.__init__


def _init_with_fsdp_on_cpu(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    plugin = kwargs.get("fsdp_plugin")
    if plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        if self._mixed_precision != "no":
            plugin.set_mixed_precision(self._mixed_precision)
        self.fsdp_plugin = plugin


state.AcceleratorState.__init__ = _init_with_fsdp_on_cpu

if __name__ == "__main__":
    from textxfer.cli.main import main

    main()
