"""DDP plumbing: read the torchrun environment, agree across ranks, and launch N local processes."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Only the main rank writes files (checkpoints, metrics, summary, plots, events)."""
        return self.rank == 0


def under_launcher() -> bool:
    """True inside a process started by torchrun / torch.distributed.run with more than one rank."""
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def from_env() -> Dist:
    if not under_launcher():
        return Dist()
    return Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))


def init(dist: Dist, device: torch.device) -> None:
    """Join the process group (NCCL on GPUs, gloo on CPUs) once per process."""
    if dist.world > 1 and not tdist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        tdist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def shutdown() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


def agree_max(values: list[int], dist: Dist, device: torch.device) -> list[int]:
    """Element-wise maximum over ranks, so that every rank takes the same decision (skip, stop)."""
    if dist.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.int64, device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return t.tolist()


def all_sum(t: torch.Tensor, dist: Dist) -> torch.Tensor:
    if dist.world > 1:
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def launch(nproc: int, argv: list[str]) -> int:
    """Run `python -m spectramind <argv>` in `nproc` local processes through torch.distributed.run."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc_per_node={nproc}", "--module", "spectramind", *argv])
    try:
        run(args)
    except ChildFailedError as e:
        failure = next(iter(e.failures.values()), None)
        return failure.exitcode if failure is not None and failure.exitcode > 0 else 1
    return 0
