"""Process groups and everything applied to a model from outside: AC, compile, DDP / FSDP2.

The model code (transformers' Llama) stays single-device; this file decides how
it is spread over the processes torchrun starts (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(kw_only=True, slots=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        """Sum a few floats over ranks (fp64, on the device the backend wants)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        return self.all_sum([float(flag)])[0] > 0

    def gather_objects(self, obj) -> list:
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def init_distributed() -> Dist:
    """Join the torchrun process group if there is one (env ``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=30))
    if not cuda and world > 1:
        # Share the cores instead of every rank spawning one thread per core and thrashing.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    return Dist(rank=int(os.environ.get("RANK", "0")), world_size=world, local_rank=local_rank,
                local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world)), device=device)


def close_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _is_block(module: torch.nn.Module) -> bool:
    """A transformer block of any transformers decoder model (LlamaDecoderLayer, Qwen2DecoderLayer, ...)."""
    return type(module).__name__.endswith("DecoderLayer")


def uncompile(model: torch.nn.Module) -> torch.nn.Module:
    """Undo :func:`parallelize`'s compile in place (same parameters, eager calls): generation after training
    changes shape every token, and each new shape would recompile."""
    for module in model.modules():
        module._compiled_call_impl = None
    return model


def parallelize(model: torch.nn.Module, d: Dist, *, mode: str = "ddp", activation_checkpointing: bool = False,
                compile: bool = False) -> torch.nn.Module:
    """Return the module to train: blocks checkpointed/compiled in place, then wrapped for data parallelism."""
    model.to(d.device)
    if activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
            apply_activation_checkpointing,
            checkpoint_wrapper,
        )

        apply_activation_checkpointing(model, checkpoint_wrapper_fn=checkpoint_wrapper, check_fn=_is_block)
    if compile:
        for module in model.modules():
            if _is_block(module):
                module.compile()
    if not d.distributed:
        return model
    if mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # Parameters are gathered in bf16 on GPU; gradients reduce in fp32 for a stable sum.
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if d.device.type == "cuda" else MixedPrecisionPolicy()
        for module in list(model.modules()):
            if _is_block(module):
                fully_shard(module, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a DDP wrapper (FSDP2 shards in place: nothing to unwrap)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def no_sync(model: torch.nn.Module, skip: bool):
    """Skip the gradient all-reduce on accumulation micro-steps that are not the last."""
    import contextlib

    if skip and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.no_sync()
    if skip and hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        return contextlib.nullcontext()
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(True)
    return contextlib.nullcontext()
