"""torch.distributed for sharded sweeps: detect a launcher, start the process group, gather parts.

A launcher (``torchrun``, ``python -m torch.distributed.run``, Slurm's ``srun`` with the
variables exported, ...) sets ``RANK``, ``WORLD_SIZE`` (and ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``). headscope then runs shard ``RANK/WORLD_SIZE`` on each rank
(:mod:`headscope.scale.shard`), and every rank sends its part -- or its failure -- to all others
with one ``all_gather`` of uint8 tensors (:mod:`headscope.scale.wire`; no pickle). Rank 0 merges
and writes; every rank learns of a failed shard and exits with an error naming it, so no rank
waits forever on a dead peer's collective.

Backend: ``nccl`` when the model runs on CUDA (each rank on ``cuda:LOCAL_RANK``), else ``gloo``.
The collective's timeout is long (``HEADSCOPE_DIST_TIMEOUT_S``, default 24 h): ranks finish their
shards at different times and wait for the slowest in the gather.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass

import torch

from headscope.errors import HeadscopeError


@dataclass(frozen=True)
class Launch:
    """What a launcher set: this process's global and local rank and the world size."""

    rank: int
    world_size: int
    local_rank: int


def from_env(env: dict[str, str] | None = None) -> Launch | None:
    """The launcher's ranks, or None when ``RANK``/``WORLD_SIZE`` are not both set."""
    env = dict(os.environ) if env is None else env
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError:
        raise HeadscopeError(f"RANK={env['RANK']!r} / WORLD_SIZE={env['WORLD_SIZE']!r} are not integers: start with torchrun.") from None
    if world < 1 or not 0 <= rank < world:
        raise HeadscopeError(f"RANK={rank} does not lie in 0..WORLD_SIZE-1 (WORLD_SIZE={world}): check the launcher.")
    return Launch(rank, world, local)


def rank_device(device: str, launch: Launch) -> str:
    """``cuda`` (or ``auto`` with CUDA) becomes this rank's ``cuda:LOCAL_RANK``; others unchanged."""
    if device in ("cuda", "auto") and torch.cuda.is_available():
        return f"cuda:{launch.local_rank % torch.cuda.device_count()}"
    return device


def init(launch: Launch, device: str) -> torch.device:
    """Start the default process group; return the device its collectives use."""
    import torch.distributed as dist

    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise HeadscopeError(f"RANK/WORLD_SIZE are set but {', '.join(missing)} not: start with torchrun (or export them).")
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.set_device(torch.device(device))
    timeout = _dt.timedelta(seconds=float(os.environ.get("HEADSCOPE_DIST_TIMEOUT_S", 24 * 3600)))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", rank=launch.rank, world_size=launch.world_size,
                                timeout=timeout)
    return torch.device(device) if cuda else torch.device("cpu")


def all_gather_bytes(payload: bytes, device: torch.device) -> list[bytes]:
    """Every rank's ``payload``, in rank order, on every rank (two ``all_gather`` calls: sizes, then
    the bytes padded to the longest)."""
    import torch.distributed as dist

    world = dist.get_world_size()
    size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = max(int(s.item()) for s in sizes)
    mine = torch.zeros(longest, dtype=torch.uint8, device=device)
    if payload:
        mine[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device)
    got = [torch.zeros(longest, dtype=torch.uint8, device=device) for _ in range(world)]
    dist.all_gather(got, mine)
    return [bytes(g[: int(s.item())].cpu().numpy().tobytes()) for g, s in zip(got, sizes, strict=True)]


def finish() -> None:
    """Destroy the process group if one is up."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
