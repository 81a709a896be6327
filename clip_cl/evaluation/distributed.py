"""Splitting an evaluation over processes and gathering the results back in the original order.

Each process takes one contiguous shard of `ceil(n / P)` indices. The last shards are padded by repeating the last
index, so every process runs exactly the same number of forward passes: sharded models (FSDP, DeepSpeed ZeRO-3)
all-gather weights inside `forward` and would hang if one rank ran one batch fewer. Because the shards are contiguous
and in rank order, the padding sits at the very end of the gathered rows, and `[:n]` drops it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import gather, gather_object

__all__ = ["num_processes", "shard_indices", "gather_rows", "gather_list"]


def num_processes() -> int:
    """The number of processes in the current `accelerate` state (1 when not distributed)."""
    return PartialState().num_processes


def shard_indices(n: int, num_shards: int | None = None, rank: int | None = None) -> list[int]:
    """The padded, contiguous shard of `range(n)` that process `rank` evaluates.

    Args:
        n (`int`): number of items, at least 1.
        num_shards (`int`, *optional*): number of processes; defaults to the `accelerate` state's.
        rank (`int`, *optional*): this process's index; defaults to the `accelerate` state's.

    Returns:
        `list[int]`: `ceil(n / num_shards)` indices; positions past `n - 1` repeat `n - 1` (padding).
    """
    if n < 1:
        raise ValueError("Cannot shard an empty dataset.")
    if num_shards is None or rank is None:
        state = PartialState()
        num_shards, rank = state.num_processes, state.process_index
    size = math.ceil(n / num_shards)
    return [min(i, n - 1) for i in range(rank * size, (rank + 1) * size)]


def gather_rows(tensor: torch.Tensor, n: int) -> torch.Tensor:
    """All-gather equally sized per-process tensors along dim 0, in rank order, and keep the first `n` rows.

    Args:
        tensor (`torch.Tensor`): this process's rows (on the device the backend needs, e.g. CUDA for NCCL).
        n (`int`): the number of real (unpadded) rows over all processes.

    Returns:
        `torch.Tensor`: the `n` rows, identical on every process.
    """
    return gather(tensor.contiguous())[:n]


def gather_list(items: list[Any], n: int) -> list[Any]:
    """All-gather equally long per-process lists of picklable objects in rank order and keep the first `n`.

    Args:
        items (`list`): this process's items.
        n (`int`): the number of real (unpadded) items over all processes.

    Returns:
        `list`: the `n` items, identical on every process.
    """
    return list(gather_object(list(items)))[:n]
