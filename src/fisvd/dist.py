"""More than one process, one result: the helpers that let the `finetune` and `fisher` stages run
under `accelerate launch` or `torchrun` with N processes (one per GPU; gloo processes on CPU).

The launcher gives every process RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT.
`init_group()` joins the process group they describe when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA,
each rank on GPU LOCAL_RANK, see `local_device`) and `close_group()` leaves it; a plain
`python -m stages.<stage>` is one process and never makes a group. Everything else reads the
initialised group and falls back to one process (rank 0 of 1) when torch.distributed is
unavailable or not initialised, so single-process code paths are unchanged:

- `rank()`, `world_size()`, `is_main()` (rank 0: the only process that writes files);
- `shard(items)`: this rank's round-robin share `items[rank::world]` of a fixed-order sequence;
  the shards are disjoint and together hold every item once (the whole input, untouched, for one
  process). Statistics passes shard whole batches, so each batch's gradient is the one a single
  process computes;
- `all_reduce(tensors)`: sums a dict of tensors over the ranks in place, after checking that every
  rank holds the same keys, shapes and dtypes (a mismatch raises on every rank instead of hanging);
  `sum_counts(counts, device)` does the same for a dict of ints.

A pass that shards its input and all-reduces its raw sums gives every rank the single-process sums,
up to float summation order.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import torch
import torch.distributed  # noqa: F401  (torch.distributed.is_available() is False on builds without it)

__all__ = ["init_group", "close_group", "launched_world_size", "rank", "world_size", "is_main", "local_device",
           "shard", "all_reduce", "sum_counts"]


def _dist():
    """torch.distributed when it is available and initialised, else None."""
    d = torch.distributed
    return d if d.is_available() and d.is_initialized() else None


def launched_world_size() -> int:
    """The number of processes the launcher started (WORLD_SIZE; 1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init_group() -> bool:
    """Join the launcher's process group when WORLD_SIZE > 1; True when this process is one of several.

    nccl when CUDA is available (after selecting GPU LOCAL_RANK), gloo otherwise; a no-op for one
    process and when a group already exists (e.g. made by accelerate or the HF Trainer)."""
    if launched_world_size() <= 1 or not torch.distributed.is_available():
        return False
    if not torch.distributed.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    return world_size() > 1


def close_group() -> None:
    """Leave the process group, if any (before the process exits; a no-op for one process)."""
    d = _dist()
    if d is not None:
        d.destroy_process_group()


def world_size() -> int:
    d = _dist()
    return d.get_world_size() if d is not None else 1


def rank() -> int:
    d = _dist()
    return d.get_rank() if d is not None else 0


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes outputs and logs."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """`device`, pinned to this rank's GPU (cuda:LOCAL_RANK) when it is CUDA and there are several ranks."""
    device = torch.device(device)
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def shard(items: Iterable) -> Iterable:
    """This rank's round-robin share of `items` (a fixed-order sequence, or an iterable read into a list).

    One process: `items` itself, unchanged. Several: `list(items)[rank::world_size]`."""
    w = world_size()
    if w == 1:
        return items
    items = items if isinstance(items, Sequence) else list(items)
    return list(items[rank()::w])


def _agree(signature: list, what: str) -> None:
    """Raise (on every rank alike) unless all ranks pass the same `signature`."""
    d = _dist()
    got = [None] * d.get_world_size()
    d.all_gather_object(got, signature)
    bad = [r for r, s in enumerate(got) if s != got[0]]
    if bad:
        raise ValueError(f"all_reduce of {what}: rank {bad[0]} holds {got[bad[0]]}, rank 0 holds {got[0]}; "
                         f"every rank must hold the same keys and shapes")


def all_reduce(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum every tensor over the ranks, in place (keys in sorted order); returns `tensors`.

    The tensors must live on the group's device (CPU for gloo, this rank's GPU for nccl). One
    process: returned untouched."""
    d = _dist()
    if d is None or d.get_world_size() == 1:
        return tensors
    keys = sorted(tensors)
    _agree([(k, tuple(tensors[k].shape), str(tensors[k].dtype)) for k in keys], "tensors")
    for k in keys:
        d.all_reduce(tensors[k], op=d.ReduceOp.SUM)
    return tensors


def sum_counts(counts: dict[str, int], device: torch.device) -> dict[str, int]:
    """{key: the sum over the ranks of counts[key]} (one int64 all_reduce on `device`); a copy for one process."""
    d = _dist()
    if d is None or d.get_world_size() == 1:
        return dict(counts)
    keys = sorted(counts)
    _agree(keys, "counts")
    t = torch.tensor([int(counts[k]) for k in keys], dtype=torch.int64, device=device)
    d.all_reduce(t, op=d.ReduceOp.SUM)
    return dict(zip(keys, map(int, t.tolist())))
