"""Ranks from the launcher, which unit is whose, and waiting for the other ranks."""

from __future__ import annotations

import logging

import pytest

from synthface import distributed
from synthface.distributed import Ranks, ranks_from_environment, wait_until
from synthface.errors import InvalidInputError, OutputPathError

LAUNCHER_VARIABLES = (*distributed.TORCH_VARIABLES, *distributed.SLURM_VARIABLES)


def test_ranks_from_launchers(monkeypatch):
    for var in LAUNCHER_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    assert ranks_from_environment() == Ranks(0, 1, 0)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert ranks_from_environment() == Ranks(3, 8, 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert ranks_from_environment() == Ranks(1, 2, 1)
    assert ranks_from_environment(2, 4) == Ranks(2, 4, 0)
    with pytest.raises(InvalidInputError, match="0 <= shard-index < num-shards"):
        ranks_from_environment(4, 4)


def test_the_trainer_ignores_slurm_alone_and_bad_values_are_refused(monkeypatch):
    for var in LAUNCHER_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert ranks_from_environment(slurm=False) == Ranks()  # torch.distributed's env:// needs RANK/WORLD_SIZE
    monkeypatch.setenv("RANK", "x")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InvalidInputError, match="RANK='x' is not an integer"):
        ranks_from_environment(slurm=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", str(distributed.MAX_WORLD_SIZE + 1))
    with pytest.raises(InvalidInputError, match="is impossible"):
        ranks_from_environment()


def test_unit_i_is_rank_i_mod_world_size():
    ranks = Ranks(1, 3)
    assert ranks.mine(8) == [1, 4, 7]
    assert [ranks.owner(u) for u in range(4)] == [0, 1, 2, 0]
    assert ranks.owns(4) and not ranks.owns(5)
    assert Ranks().mine(3) == [0, 1, 2]


def test_waiting_reports_what_it_waits_for_and_gives_up(monkeypatch, caplog):
    monkeypatch.setattr(distributed, "WAIT_REPORT_SECONDS", 0.05)
    logger = logging.getLogger("synthface.test-wait")
    with caplog.at_level(logging.WARNING), pytest.raises(OutputPathError, match="still 1 missing. Gave up"):
        wait_until(lambda: ["x"], 0.3, lambda left, waited: f"still {len(left)} missing.", logger=logger)
    assert any(r.name == "synthface.test-wait" for r in caplog.records)
    left = [["a"], []]
    wait_until(lambda: left.pop(0), 5, lambda left, waited: "never said")
