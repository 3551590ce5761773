"""torchrun helpers: the process's rank, and gathering tensors from every rank in rank order."""

from __future__ import annotations

import os

import torch


def dist_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the variables torchrun sets; ``(0, 1, 0)`` otherwise."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def gather_cat(t: torch.Tensor, world: int) -> torch.Tensor:
    """Concatenate the CPU tensors of all ranks in rank order (every rank gets the result)."""
    if world == 1:
        return t
    import torch.distributed as dist

    parts = [None] * world
    dist.all_gather_object(parts, t.cpu())
    return torch.cat(parts)
