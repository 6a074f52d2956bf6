"""Data-parallel runs under ``accelerate launch`` or ``torchrun``: who this process is (rank, world size, device),
the collectives the runner needs (through accelerate's ``PartialState``), and how samples are split across ranks.

A single process (no ``WORLD_SIZE`` > 1 in the environment) starts no process group and every collective is a no-op.
On a machine without CUDA, ranks run on the CPU with the gloo backend (``ACCELERATE_USE_CPU`` is implied there)."""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from visfocus.errors import VisfocusError

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # ranks on this node

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self, requested: str) -> str:
        """The device this rank uses: ``cuda`` becomes ``cuda:<local rank>``; anything else stays."""
        return f"cuda:{self.local_rank}" if self.distributed and requested == "cuda" else requested

    def gpus(self, device_count: int) -> list[int]:
        """The GPUs this rank may shard a model over (``device_map``): the node's GPUs split evenly among its ranks,
        e.g. 8 GPUs and 2 ranks per node give rank 0 GPUs 0-3 and rank 1 GPUs 4-7 (data × model parallel)."""
        per_rank = device_count // self.local_world_size
        if per_rank < 1:
            raise VisfocusError(f"{self.local_world_size} ranks on this node but only {device_count} GPU(s)")
        return list(range(self.local_rank * per_rank, (self.local_rank + 1) * per_rank))

    def barrier(self) -> None:
        if self.distributed:
            _state().wait_for_everyone()

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.distributed:
            return [value]
        from accelerate.utils import gather_object

        return list(gather_object([value]))


_RANKS: Ranks | None = None


def _state():
    import torch
    from accelerate import PartialState

    # accelerate ≥ 1.13 starts a CPU (gloo) group only when told to; a GPU-less machine can mean nothing else
    return PartialState(cpu=not torch.cuda.is_available())


def current() -> Ranks:
    """This process's ranks, from the launcher's environment (torchrun and ``accelerate launch`` set ``RANK``,
    ``WORLD_SIZE`` and ``LOCAL_RANK``); starts the process group the first time in a multi-process run."""
    global _RANKS
    if _RANKS is None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            _RANKS = Ranks()
        else:
            state = _state()
            if state.num_processes != world:
                raise VisfocusError(f"WORLD_SIZE is {world} but accelerate started {state.num_processes} process(es); "
                                    "launch with torchrun or `accelerate launch --multi_gpu --num_processes N`")
            _RANKS = Ranks(state.process_index, state.num_processes, state.local_process_index,
                           int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes)))
    return _RANKS


def environment_ranks() -> Ranks:
    """This process's ranks as the launcher's environment gives them, starting nothing (for code running inside
    another framework that owns the process group, e.g. lmms-eval)."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    return Ranks(int(env.get("RANK", "0")), world, int(env.get("LOCAL_RANK", "0")),
                 int(env.get("LOCAL_WORLD_SIZE", str(world))))


def shard(items: Sequence[T], ranks: Ranks, group_of: Callable[[T], Hashable]) -> list[T]:
    """This rank's share: items grouped by ``group_of`` (samples of one image stay together), groups taken in order of
    first appearance and dealt to ranks in turn (group g to rank g mod world size), each item keeping its order."""
    if not ranks.distributed:
        return list(items)
    group_index: dict[Hashable, int] = {}
    mine = []
    for item in items:
        g = group_index.setdefault(group_of(item), len(group_index))
        if g % ranks.world_size == ranks.rank:
            mine.append(item)
    return mine


def same_everywhere(ranks: Ranks, value: Any, what: str) -> None:
    """Refuse a run whose ranks disagree on ``value`` (e.g. the configuration): one error naming the first rank
    that differs from rank 0."""
    values = ranks.gather(value)
    for rank, other in enumerate(values):
        if other != values[0]:
            raise VisfocusError(f"rank {rank} has another {what} than rank 0; every rank must run the same command")


def on_main(ranks: Ranks, work: Callable[[], None]) -> None:
    """Run ``work`` on rank 0 only; a ``VisfocusError`` there is raised on every rank (so none waits forever)."""
    message = None
    if ranks.is_main:
        try:
            work()
        except VisfocusError as err:
            message = str(err)
    message = ranks.broadcast(message)
    if message is not None:
        raise VisfocusError(message)
