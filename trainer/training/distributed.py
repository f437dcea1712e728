"""The process group: start it, know who is where, and move small values between ranks.

Started by the `deepspeed` launcher (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT in the
environment) or as a single plain `python` process. gloo on CPU, nccl on NVIDIA GPUs, both chosen
by DeepSpeed's accelerator. The timeout bounds how long a collective waits for a dead or hung rank
(gloo's default is 30 minutes).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    hosts: list[str]  # one name per node, in node order
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(timeout_s: float) -> DistInfo:
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:  # a lone process picks a free port of its own
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    deepspeed.init_distributed(timeout=timedelta(seconds=timeout_s), verbose=False)
    accelerator = get_accelerator()
    local_rank = int(os.environ["LOCAL_RANK"])
    if accelerator.device_name() == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    names: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(names, socket.gethostname())
    hosts = list(dict.fromkeys(names))  # ranks are numbered node by node
    # Every rank has entered the all-gather above, so every rank has returned from DeepSpeed's
    # shm_initialize (in init_distributed), which maps all the ranks' buffers.
    _unlink_shared_memory_buffer(dist.get_rank())
    return DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), hosts, device)


def _unlink_shared_memory_buffer(rank: int) -> None:
    """Remove the name of this rank's CPU all-reduce buffer; its memory stays mapped until the ranks exit.

    When all ranks of a CPU job share one machine, DeepSpeed gives each a 66 MB buffer in /dev/shm
    (csrc/cpu/comm/shm.cpp, named as below) and never unlinks it, so every run, clean or killed,
    left them behind until /dev/shm was full. Unlinked once every rank holds its mappings, the
    memory goes with the last process.
    """
    name = f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ['MASTER_ADDR']}_{os.environ['MASTER_PORT']}_{rank}"
    (Path("/dev/shm") / name).unlink(missing_ok=True)


def store() -> dist.Store:
    """The process group's key-value store (a TCP server in rank 0's process): ranks exchange small
    values through it without a collective, so without --dist-timeout."""
    return dist.distributed_c10d._get_default_store()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over all ranks (float64, so token counts stay exact)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def barrier() -> None:
    """Every rank waits for the others (a single process has nobody to wait for)."""
    if dist.is_initialized():
        dist.barrier()


def shutdown(barrier: bool) -> None:
    if dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()
