"""Ranks from the launcher, which unit is whose, and waiting for the other ranks.

The engine and the trainer both learn their place in a job here: explicit --shard-index/--num-shards,
else torchrun / accelerate (RANK, WORLD_SIZE, LOCAL_RANK), else Slurm via srun (SLURM_PROCID,
SLURM_NTASKS, SLURM_LOCALID). Unit i belongs to rank i mod world size.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from synthface.errors import InvalidInputError, OutputPathError

log = logging.getLogger("synthface.distributed")

#: The most ranks a job may have: far beyond any cluster, low enough that a stray WORLD_SIZE = 10**9 is
#: refused at once instead of leaving rank 0 waiting for ranks that never come.
MAX_WORLD_SIZE = 65_536

#: How often a waiting rank says what it waits for (in the log, and on stderr under the CLI).
WAIT_REPORT_SECONDS = 60.0

#: The launchers' environment variables, in the order they are looked at: (rank, world size, local rank).
TORCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")  # torchrun, accelerate launch
SLURM_VARIABLES = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")  # srun


@dataclass(frozen=True)
class Ranks:
    """This process's place in a job: 0 <= rank < world_size (checked on construction)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self):
        if self.world_size > MAX_WORLD_SIZE:
            raise InvalidInputError(
                f"world size {self.world_size} is impossible: synthface runs at most {MAX_WORLD_SIZE} ranks, and a "
                "rank 0 would wait for ranks that never start. A stale WORLD_SIZE (or SLURM_NTASKS) in the "
                "environment? Unset it for a single process, launch with torchrun, accelerate or srun, or pass "
                "--shard-index i --num-shards n with 0 <= i < n."
            )
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise InvalidInputError(
                f"rank {self.rank} of world size {self.world_size} (local rank {self.local_rank}) is impossible: "
                "the world size must be at least 1 and 0 <= rank < world size. Launch with torchrun, "
                "accelerate or srun, which set RANK/WORLD_SIZE (SLURM_PROCID/SLURM_NTASKS) consistently, or pass "
                "--shard-index i --num-shards n with 0 <= i < n."
            )

    def owns(self, unit: int) -> bool:
        """Whether unit number `unit` (a shard) is this rank's: unit i goes to rank i mod world size."""
        return unit % self.world_size == self.rank

    def mine(self, units: int) -> list[int]:
        """This rank's units among 0 .. units - 1."""
        return [u for u in range(units) if self.owns(u)]

    def owner(self, unit: int) -> int:
        """The rank that makes unit number `unit`."""
        return unit % self.world_size


def ranks_from_environment(shard_index: int | None = None, num_shards: int | None = None, *,
                           slurm: bool = True) -> Ranks:
    """Explicit --shard-index/--num-shards win; else torchrun/accelerate (RANK, WORLD_SIZE), else Slurm
    (`slurm`: False for a caller that needs torch.distributed's own variables, as the trainer does).

    Raises InvalidInputError for a missing half of a pair, a value that is not an integer, or an
    impossible rank, before anything touches the disk.
    """
    if shard_index is not None or num_shards is not None:
        if shard_index is None or num_shards is None or not 0 <= shard_index < num_shards:
            raise InvalidInputError(
                f"--shard-index {shard_index} and --num-shards {num_shards} must be given together with "
                "0 <= shard-index < num-shards."
            )
        return Ranks(shard_index, num_shards, 0)
    for rank, world, local in (TORCH_VARIABLES, SLURM_VARIABLES) if slurm else (TORCH_VARIABLES,):
        if world in os.environ and rank in os.environ:
            return Ranks(_env_int(rank), _env_int(world), _env_int(local, 0))
    return Ranks()


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None and default is not None:
        return default
    try:
        if not raw.strip().lstrip("+-").isascii() or not raw.strip().lstrip("+-").isdigit():
            raise ValueError(raw)
        return int(raw)
    except (TypeError, ValueError, AttributeError):
        raise InvalidInputError(
            f"The environment variable {name}={raw!r} is not an integer. It tells synthface which rank of a "
            f"distributed job this process is; unset it for a single process (unset {name}), or launch with "
            "torchrun / accelerate / srun, which set it."
        ) from None


def wait_until(missing: Callable[[], Sequence], wait_seconds: float, describe: Callable[[Sequence, float], str], *,
               logger: logging.Logger | None = None) -> None:
    """Poll `missing()` until it is empty; log `describe(missing, waited)` as a warning (on `logger`)
    every WAIT_REPORT_SECONDS, and raise OutputPathError with it after `wait_seconds`."""
    logger = logger or log
    start = time.monotonic()
    reported = start
    left = missing()
    while left:
        now = time.monotonic()
        if now - start > wait_seconds:
            raise OutputPathError(describe(left, now - start) + " Gave up; run the same command again to continue.")
        if now - reported >= WAIT_REPORT_SECONDS:
            logger.warning(describe(left, now - start))
            reported = now
        time.sleep(min(1.0, WAIT_REPORT_SECONDS / 4))
        left = missing()
