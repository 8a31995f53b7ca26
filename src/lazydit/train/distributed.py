"""torch.distributed helpers that degrade to no-ops in a single process.

Gate gradients are summed with an explicit all-reduce instead of a DDP wrapper: the gates are
not called through a module forward (they live in the lazy controller), and each rank's loss is
already divided by the global batch, so the sum is the global mean.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as td


def init_from_env(device: str = "cpu") -> str:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, nccl on GPU) and
    return the device this rank runs on: under torchrun on GPUs, cuda:LOCAL_RANK, made current
    because NCCL collectives run on the current device (else every rank would share cuda:0)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    cuda = device.startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not td.is_initialized():
        td.init_process_group(backend="nccl" if cuda else "gloo")
    return device


def active() -> bool:
    return td.is_available() and td.is_initialized()


def rank() -> int:
    return td.get_rank() if active() else 0


def world_size() -> int:
    return td.get_world_size() if active() else 1


def sum_grads(params) -> None:
    if active():
        for p in params:
            if p.grad is not None:
                td.all_reduce(p.grad, op=td.ReduceOp.SUM)


def sum_tensor(t: torch.Tensor) -> torch.Tensor:
    if active():
        t = t.clone()
        td.all_reduce(t, op=td.ReduceOp.SUM)
    return t


def barrier() -> None:
    if active():
        td.barrier()
