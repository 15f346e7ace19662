"""Running a study over several processes: ``torchrun --nproc-per-node K -m robustarch study run STUDY.toml``.

Each rank reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (set by torchrun), joins a process group (gloo on
CPU, nccl on CUDA, one GPU per local rank) and computes the chunks ``c % WORLD_SIZE == RANK`` of every run.
A chunk's numbers depend only on the run and the chunk index (``engine.chunk_seed``), never on which rank
computes it, so the store ends exactly as after one process. Ranks meet only at barriers: after each model
(then rank 0 marks runs complete and runs the model checks) and at the end.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from robustarch.errors import RobustarchError
from robustarch.evaluation.engine import resolve_device

log = logging.getLogger(__name__)


@dataclass
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise RobustarchError(f"environment variable {name}={value!r} is not an integer") from None


def init(device: str = "auto", *, timeout_s: float = 3600.0) -> Context:
    """The process's place in the run: a single process, or a rank under torchrun (process group created
    here when torchrun's variables are set and none exists yet)."""
    world = env_int("WORLD_SIZE", 1)
    rank = env_int("RANK", 0)
    local = env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise RobustarchError(f"RANK={rank} is outside WORLD_SIZE={world}")
    dev = resolve_device(device)
    if world == 1:
        return Context(0, 1, 0, dev)
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise RobustarchError(
                f"LOCAL_RANK={local} but only {torch.cuda.device_count()} GPU(s) are visible: start at most "
                "one process per GPU (torchrun --nproc-per-node)"
            )
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
        owns = True
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise RobustarchError("the process group disagrees with RANK / WORLD_SIZE")
    log.info("rank %d of %d on %s", rank, world, dev)
    return Context(rank, world, local, dev, owns)
