"""The run folder: every file name of a run (`RunLayout`), its identity (run.json), the lock,
completion and stage records, the clear/overwrite rules.

A run folder is a synthface run exactly when it holds `run.json`; only the names `RunLayout.owns`
are ever deleted. A unit of work (a shard, a resampling round, or FINALIZE) is done exactly when its
marker, written last, holds a whole record.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

import numpy as np

from synthface.distributed import Ranks
from synthface.errors import FileFormatError, InvalidInputError, OutputPathError, RunLockedError, SynthfaceError
from synthface.io import atomic_write_bytes
from synthface.recipe import Recipe, loads_recipe_toml, parse_recipe

log = logging.getLogger("synthface.engine")


def shard_unit(shard: int) -> str:
    """The name of shard `shard` as a unit of work (its folder and done marker under shards/)."""
    return f"shard-{shard:06d}"


def resample_unit(round_: int) -> str:
    """The unit that renders the replacement vectors of collision-resampling round `round_` (1, 2, ...)."""
    return f"resample-{round_:02d}"


@dataclass(frozen=True)
class RunLayout:
    """Where everything of a run lives: the one place that names the files of a run folder.

    `owns(name)` says whether a name in the folder is one a run writes; only those are ever
    deleted (by `clear_run`) and only a folder holding `run.json` counts as a run. It also keeps the
    completion records: a unit of work (a shard, a resampling round, or FINALIZE) is done exactly
    when its marker, written last by `mark_done`, holds a whole record (`is_done`, `incomplete`).
    """

    root: Path

    SHARDS: ClassVar[str] = "shards"
    EXPORT: ClassVar[str] = "export"
    RUN_FILE: ClassVar[str] = "run.json"
    RECIPE: ClassVar[str] = "recipe.toml"
    IDENTITIES: ClassVar[str] = "identities.safetensors"
    ATTROP: ClassVar[str] = "attrop.safetensors"  # identities.attrop: the optimised centres and their statuses
    MANIFEST: ClassVar[str] = "manifest.parquet"
    EMBEDDINGS: ClassVar[str] = "embeddings.safetensors"
    CARD: ClassVar[str] = "README.md"
    REPORTS: ClassVar[tuple[str, ...]] = ("report.json", "report.html")  # written by synthface.report
    FINAL_DONE: ClassVar[str] = "finalize.done"
    FINALIZE: ClassVar[str] = "finalize"  # the unit whose marker is FINAL_DONE
    IMAGES: ClassVar[str] = "images"  # kept crops inside a unit folder: images/<identity>/<image>.jpg
    FULL: ClassVar[str] = "full"  # whole images (export.keep_full_images): full/<identity>/<image>.png
    STAGED: ClassVar[str] = "candidates"  # every candidate's files in a unit's temporary folder, until judged
    LOG: ClassVar[str] = "run.log"
    LOCK: ClassVar[str] = "run.lock"
    STAGE_RECORD: ClassVar[str] = "stages.rank{rank}.json"  # in SHARDS: how a rank's last session ran (timings)
    # Per-rank logs and locks of a distributed job, and the hidden temporaries of atomic writes.
    _RANK_FILE: ClassVar[re.Pattern] = re.compile(r"^run\.rank\d+\.(log|lock)$")
    _TEMPORARY: ClassVar[re.Pattern] = re.compile(r"^\.(?P<name>.+)\.[^.]+\.tmp$")
    # In SHARDS: unit folders and done markers, their temporary folders, the ranks' stage records.
    _UNIT_ENTRY: ClassVar[re.Pattern] = re.compile(
        r"^(shard-\d{6}|resample-\d{2})(\.done)?$|^\.(shard-\d{6}|resample-\d{2})\.tmp-\d+$|^stages\.rank\d+\.json$")
    # In EXPORT: a format's folder and the hidden folders its writer stages it in (`staging_prefix`).
    _EXPORT_ENTRY: ClassVar[re.Pattern] = re.compile(
        r"^(imagefolder|recordio|webdataset|parquet)$|^\.(imagefolder|recordio|webdataset|parquet)\.partial-\d+-.+$")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The fixed names a run writes in its folder (per-rank files aside)."""
        return (cls.SHARDS, cls.EXPORT, cls.RUN_FILE, cls.RECIPE, cls.IDENTITIES, cls.ATTROP, cls.MANIFEST, cls.EMBEDDINGS,
                cls.CARD, *cls.REPORTS, cls.FINAL_DONE, cls.LOG, cls.LOCK)

    @classmethod
    def owns(cls, name: str) -> bool:
        """True for a name a run writes: its files, per-rank logs and locks, their atomic temporaries."""
        temporary = cls._TEMPORARY.match(name)
        if temporary:
            name = temporary["name"]
        return name in cls.names() or bool(cls._RANK_FILE.match(name))

    @classmethod
    def owns_inside(cls, folder: str, name: str) -> bool:
        """True for a name a run writes inside its folder `folder` (SHARDS or EXPORT), atomic temporaries
        included; a user's files put there are not the run's."""
        temporary = cls._TEMPORARY.match(name)
        if temporary:
            name = temporary["name"]
        pattern = {cls.SHARDS: cls._UNIT_ENTRY, cls.EXPORT: cls._EXPORT_ENTRY}.get(folder)
        return bool(pattern and pattern.match(name))

    @classmethod
    def is_lock(cls, name: str) -> bool:
        return name == cls.LOCK or (name.endswith(".lock") and bool(cls._RANK_FILE.match(name)))

    @property
    def shards(self) -> Path:
        return self.root / self.SHARDS

    def unit_dir(self, unit: int | str) -> Path:
        """The folder of a unit of work (a shard number or a unit name such as `resample_unit(1)`)."""
        return self.shards / unit_name(unit)

    def shard_dir(self, shard: int) -> Path:
        return self.unit_dir(shard)

    def done_marker(self, unit: int | str) -> Path:
        if unit == self.FINALIZE:
            return self.root / self.FINAL_DONE
        return self.shards / f"{unit_name(unit)}.done"

    def temp_dir(self, unit: int | str) -> Path:
        return self.shards / f".{unit_name(unit)}.tmp-{os.getpid()}"

    def image_path(self, unit: int | str, identity: int, image: int, *, full: bool = False) -> str:
        """Where a kept image of a unit lies, relative to the run folder (as the manifest records it)."""
        kind, ext = (self.FULL, "png") if full else (self.IMAGES, "jpg")
        return f"{self.SHARDS}/{unit_name(unit)}/{kind}/{identity:07d}/{image:04d}.{ext}"

    def staged_path(self, identity: int, image: int, *, full: bool = False) -> str:
        """Where a candidate's crop (or full image) is written in a unit's temporary folder as soon as
        it is rendered, relative to that folder; `image_path` is where a kept one moves."""
        return f"{self.STAGED}/{identity:07d}/{image:04d}{'.full.png' if full else '.jpg'}"

    def record(self, unit: int | str) -> dict | None:
        """The done marker's record of a complete unit; None when it must be (re)done: no marker, a
        damaged one, or a unit folder that lost its manifest or embeddings."""
        try:
            record = json.loads(self.done_marker(unit).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict):
            return None
        if unit == self.FINALIZE:
            return record
        folder = self.unit_dir(unit)
        if not ({"candidates", "kept", "seconds"} <= record.keys() and (folder / self.MANIFEST).is_file()
                and (folder / self.EMBEDDINGS).is_file()):
            return None
        return record

    def is_done(self, unit: int | str) -> bool:
        return self.record(unit) is not None

    def stage_record(self, rank: int) -> Path:
        """Where rank `rank` records how its latest session's shards ran (`stage_report`: images/s, each
        stage's busy seconds and share, the bottleneck); `record_stages` gathers these into run.json."""
        return self.shards / self.STAGE_RECORD.format(rank=rank)

    def session_speeds(self) -> list[float]:
        """Images per second over the wall time of each rank's latest session (its stage record), for
        the ranks that recorded one."""
        speeds = []
        try:
            paths = sorted(self.shards.glob(self.STAGE_RECORD.format(rank="*")))
        except OSError:
            paths = []
        for path in paths:
            try:
                speed = json.loads(path.read_text()).get("images_per_s")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(speed, (int, float)) and speed > 0 and np.isfinite(speed):
                speeds.append(float(speed))
        return speeds

    def write_stage_record(self, rank: int, report: dict | None) -> None:
        """Write rank `rank`'s stage record (atomically), or remove it (None: a session is starting,
        so an earlier session's timings are never taken for this one's)."""
        if report is None:
            self.stage_record(rank).unlink(missing_ok=True)
        else:
            atomic_write_bytes(self.stage_record(rank), json.dumps(report, indent=2).encode())

    def record_stages(self, world_size: int) -> dict:
        """Copy the stage records of ranks 0 .. world_size - 1 into run.json under "stages"
        ({"rank0": report, ...}), rewriting it atomically with its identity unchanged; returns what was
        recorded. A rank whose record is not there yet (it writes it after its last shard is marked
        done, so rank 0 can finalize first) or is unreadable is left out; its own file stays current."""
        found = {}
        for rank in range(world_size):
            try:
                found[f"rank{rank}"] = json.loads(self.stage_record(rank).read_text())
            except (OSError, ValueError):
                continue
        info = json.loads(self.run_file.read_text())
        if found and info.get("stages") != found:
            atomic_write_bytes(self.run_file, json.dumps({**info, "stages": found}, indent=2).encode())
        return found

    def mark_done(self, unit: int | str, record: dict) -> None:
        """Record a unit as complete: its marker is written atomically, after everything it made."""
        atomic_write_bytes(self.done_marker(unit), json.dumps(record, indent=2).encode())

    def incomplete(self, units) -> list:
        """The units among `units` that are not done, in the given order."""
        return [u for u in units if not self.is_done(u)]

    @property
    def attrop(self) -> Path:
        return self.root / self.ATTROP

    @property
    def identities(self) -> Path:
        return self.root / self.IDENTITIES

    @property
    def run_file(self) -> Path:
        return self.root / self.RUN_FILE

    @property
    def recipe_file(self) -> Path:
        return self.root / self.RECIPE

    @property
    def manifest(self) -> Path:
        return self.root / self.MANIFEST

    @property
    def embeddings(self) -> Path:
        return self.root / self.EMBEDDINGS

    @property
    def card(self) -> Path:
        return self.root / self.CARD

    def export_dir(self, fmt: str) -> Path:
        return self.root / self.EXPORT / fmt

    @property
    def final_done(self) -> Path:
        return self.done_marker(self.FINALIZE)

    def log_file(self, ranks: Ranks) -> Path:
        return self.root / (self.LOG if ranks.world_size == 1 else f"run.rank{ranks.rank}.log")

    def lock_file(self, rank: int | None = None) -> Path:
        """The folder's lock (rank None) or the lock of one rank of a distributed job."""
        return self.root / (self.LOCK if rank is None else f"run.rank{rank}.lock")


def unit_name(unit: int | str) -> str:
    """The name of a unit of work given as a shard number or already as a name."""
    return shard_unit(unit) if isinstance(unit, int) else unit


def check_destination(layout: RunLayout) -> None:
    """Refuse, before anything is created, an output that is a file or a folder holding anything but
    a synthface run (`run.json`) or what a run leaves before writing it (locks, temporaries)."""
    root = layout.root
    if root.exists() and not root.is_dir():
        raise OutputPathError(f"{root} exists and is a file; choose a folder for the run's output with --out.")
    if not root.is_dir() or layout.run_file.exists():
        return
    foreign = sorted(p.name for p in root.iterdir()
                     if not (layout.is_lock(p.name) or (layout.owns(p.name) and p.name.startswith("."))
                             or (p.name == layout.SHARDS and p.is_dir() and not any(p.iterdir()))))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputPathError(
            f"{root} is not empty and holds no synthface run (no {layout.RUN_FILE}; it holds {shown}). synthface "
            "never replaces or deletes files it did not write, so --overwrite does not apply either. Choose an "
            "empty or new --out folder."
        )


def prepare_output(recipe: Recipe, out_dir: Path, *, overwrite: bool = False, command: str = "") -> RunLayout:
    """Create or reopen a run folder and make its identity complete.

    The identity is `run.json` (name, fingerprint, batch size, command and the recipe's TOML), written
    atomically in one step, so any kill leaves it complete or absent; `recipe.toml` is a copy that a
    rerun rewrites from it when missing. Refused: a folder that is not a run (see
    `check_destination`), another recipe's run unless `overwrite` (which deletes only that run's own
    files), a damaged `run.json`, and a resume with another batch size (images would not be
    byte-identical).
    """
    layout = RunLayout(Path(out_dir))
    check_destination(layout)
    try:
        layout.root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(
            f"Cannot create the run folder {layout.root}: {exc.strerror}. Choose a writable location with --out."
        ) from None
    if not os.access(layout.root, os.W_OK):
        raise OutputPathError(f"The run folder {layout.root} is read-only for this user; choose another with --out.")
    fingerprint = recipe.fingerprint()
    info = read_run_info(layout, heal_with=recipe)
    if info is not None and info["fingerprint"] != fingerprint:
        if not overwrite:
            raise OutputPathError(
                f"{layout.root} holds a run of a different recipe ({info.get('name')!r}, "
                f"fingerprint {info['fingerprint']}; this one is {fingerprint}). Resuming would mix two "
                "datasets. Choose another --out, or pass --overwrite to delete that run's outputs."
            )
        clear_run(layout)
        info = None
    batch_size = recipe.generation.batch_size
    if info is None:
        info = {"name": recipe.name, "fingerprint": fingerprint, "command": command, "batch_size": batch_size,
                "recipe": recipe.to_toml()}
        atomic_write_bytes(layout.run_file, json.dumps(info, indent=2).encode())
    elif info.get("batch_size", batch_size) != batch_size:
        raise InvalidInputError(
            f"{layout.root} was started with generation.batch_size = {info['batch_size']} and this command asks "
            f"for {batch_size}. Images rendered in another batch size can differ in the last bit, so the resumed "
            f"dataset would not be byte-identical. Resume with --set generation.batch_size={info['batch_size']}, "
            "or start a new run in another --out."
        )
    if not layout.recipe_file.exists():
        atomic_write_bytes(layout.recipe_file, info.get("recipe", recipe.to_toml()).encode())
    elif _recipe_from_file(layout.recipe_file) is None:  # damaged: rewritten from the recipe of run.json
        log.warning("%s was damaged (not a valid recipe); rewritten from %s", layout.recipe_file, layout.run_file)
        atomic_write_bytes(layout.recipe_file, info.get("recipe", recipe.to_toml()).encode())
    else:
        _check_recipe_copy(layout, info["fingerprint"], f"synthface run RECIPE --out {layout.root}")
    layout.shards.mkdir(exist_ok=True)
    return layout


def _check_recipe_copy(layout: RunLayout, fingerprint: str, rerun: str) -> Recipe:
    """The recipe in `recipe.toml`, which must be the one run.json records (`fingerprint`): a copy edited
    after the run started is a FileFormatError naming it, never used (`rerun`: the command to run again)."""
    saved = _recipe_from_file(layout.recipe_file)
    if saved is not None and saved.fingerprint() != fingerprint:
        raise FileFormatError(
            f"{layout.recipe_file} does not match the run in {layout.root}: its recipe has fingerprint "
            f"{saved.fingerprint()}, and {layout.run_file} records {fingerprint}, the recipe the data were made with. "
            "It was edited after the run started, so synthface does not use it. Delete it and run "
            f"`{rerun}` again (it is rewritten from {layout.RUN_FILE}); to make the edited recipe's dataset, copy it "
            "elsewhere and run it into a new --out folder."
        )
    return saved


def read_run_info(layout: RunLayout, *, heal_with: Recipe | None = None) -> dict | None:
    """The run's `run.json`, or None where there is none.

    A damaged one is rewritten when `recipe.toml` shows it was made by `heal_with` (same
    fingerprint); otherwise a FileFormatError names the file and the fix.
    """
    try:
        info = json.loads(layout.run_file.read_text())
        if isinstance(info, dict) and isinstance(info.get("fingerprint"), str):
            return info
        problem = "it lacks the recipe fingerprint"
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        problem = f"it is not readable JSON: {exc}"
    saved = _recipe_from_file(layout.recipe_file)
    if heal_with is not None and saved is not None and saved.fingerprint() == heal_with.fingerprint():
        log.warning("%s was damaged (%s); rebuilt from %s", layout.run_file, problem, layout.recipe_file)
        layout.run_file.unlink()
        return None
    raise FileFormatError(
        f"{layout.run_file} is damaged ({problem}). It records which recipe made the run in {layout.root}. "
        f"Restore it from a backup; or, if {layout.recipe_file} is intact, rerun with that recipe "
        f"(`synthface run {layout.recipe_file} --out {layout.root}`) and run.json is rebuilt; or start again in "
        "a new --out folder."
    )


def _recipe_from_file(path: Path) -> Recipe | None:
    try:
        return parse_recipe(loads_recipe_toml(path.read_text(encoding="utf-8")), source=str(path))
    except (OSError, ValueError, SynthfaceError):
        return None


def load_run_recipe(layout: RunLayout) -> Recipe:
    """The recipe of the run in `layout`: `recipe.toml`, rewritten from `run.json` when missing or
    damaged. Either copy must have the fingerprint run.json records (else FileFormatError naming it)."""
    try:
        info = read_run_info(layout)
    except FileFormatError:
        if _recipe_from_file(layout.recipe_file) is None:
            raise
        info = None  # a damaged run.json: recipe.toml is all there is (`synthface run` rebuilds run.json)
    rerun = f"synthface export {layout.root} --format FORMAT"
    recipe = _check_recipe_copy(layout, info["fingerprint"], rerun) if info else _recipe_from_file(layout.recipe_file)
    if recipe is not None:
        return recipe
    if info is None or "recipe" not in info:
        raise FileFormatError(
            f"{layout.recipe_file} is missing or damaged and {layout.run_file} holds no copy of the recipe. Put the "
            f"recipe the run was made with back at {layout.recipe_file} (its fingerprint must be "
            f"{info['fingerprint'] if info else 'the one in run.json'})."
        )
    try:
        recipe = parse_recipe(loads_recipe_toml(info["recipe"]), source=str(layout.run_file))
    except (ValueError, SynthfaceError):
        recipe = None
    if recipe is None or recipe.fingerprint() != info["fingerprint"]:
        raise FileFormatError(
            f"{layout.run_file} is damaged: its copy of the recipe is not the recipe of fingerprint {info['fingerprint']} "
            f"it records, and {layout.recipe_file} is missing or damaged. Put the recipe the run was made with back at "
            f"{layout.recipe_file}, or start again in a new --out folder."
        )
    log.warning("%s was missing or damaged; rewritten from %s", layout.recipe_file, layout.run_file)
    atomic_write_bytes(layout.recipe_file, info["recipe"].encode())
    return recipe


def clear_run(layout: RunLayout) -> None:
    """Delete what a run writes (the names `RunLayout.owns`, and inside SHARDS and EXPORT those
    `RunLayout.owns_inside`) and nothing else: a user's files in those folders stay, and so do the
    folders holding them. Locks stay, as they may be held."""
    def remove(path: Path) -> None:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    for path in layout.root.iterdir():
        if not layout.owns(path.name) or layout.is_lock(path.name):
            continue
        if path.name in (layout.SHARDS, layout.EXPORT) and path.is_dir() and not path.is_symlink():
            for inner in path.iterdir():
                if layout.owns_inside(path.name, inner.name):
                    remove(inner)
            with contextlib.suppress(OSError):
                path.rmdir()  # only when nothing of the user's is left in it
            continue
        remove(path)


@contextlib.contextmanager
def lock_run(layout: RunLayout, ranks: Ranks, command: str = "") -> Iterator[None]:
    """Hold the run folder for this process until the block ends (or the process dies).

    A single process (world size 1, also `synthface export`) holds `run.lock` exclusively. The ranks
    of one job share `run.lock` and each holds its own `run.rank<N>.lock`, so a second process
    claiming a rank, or a single process while a job runs (and the reverse), is refused with a
    RunLockedError naming the holder (pid, host, start time, command), which each holder writes
    into the lock it holds alone. The folder is created if missing; nothing else is written.
    """
    try:
        layout.root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(
            f"Cannot create the run folder {layout.root}: {exc.strerror}. Choose a writable location with --out."
        ) from None
    alone = ranks.world_size == 1
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(_open_lock(layout.lock_file()))
        _flock(folder, exclusive=alone, layout=layout, ranks=ranks)
        own = folder if alone else stack.enter_context(_open_lock(layout.lock_file(ranks.rank)))
        if not alone:
            _flock(own, exclusive=True, layout=layout, ranks=ranks)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "rank": ranks.rank, "world_size": ranks.world_size,
                  "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "command": command or " ".join(sys.argv)}
        own.truncate(0)
        own.write(json.dumps(holder))
        own.flush()
        if alone:
            _remove_stale_temporaries(layout)
        try:
            yield
        finally:
            own.truncate(0)  # an empty lock file: nobody holds it; the lock itself goes with the descriptor


def _open_lock(path: Path):
    try:
        return open(path, "a+")  # noqa: SIM115 - closed by the caller's ExitStack
    except OSError as exc:
        raise OutputPathError(f"Cannot create the lock file {path}: {exc.strerror}. Choose a writable --out.") from None


def _flock(handle, *, exclusive: bool, layout: RunLayout, ranks: Ranks) -> None:
    try:
        fcntl.flock(handle, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        what = "this rank" if handle.name != str(layout.lock_file()) else "this folder"
        raise RunLockedError(
            f"{layout.root} is in use by another synthface process ({_describe_holders(layout)}), which holds "
            f"{what}. Two processes writing one run would render shards twice and overwrite each other's files. "
            "Wait for it to finish or stop it, then run the command again; to work in parallel, launch the ranks "
            f"of one job (torchrun, srun, or --shard-index/--num-shards; this process is rank {ranks.rank} of "
            f"{ranks.world_size})."
        ) from None


def _describe_holders(layout: RunLayout) -> str:
    """Who holds the locks of `layout`, from what each holder wrote into its lock file."""
    def held(path: Path) -> bool:
        with open(path, "a+") as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False

    # A folder lock held in shared mode belongs to the ranks of a job, whose rank locks say who they are.
    paths = [layout.lock_file()] if held(layout.lock_file()) else sorted(layout.root.glob("run.rank*.lock"))
    holders = []
    for path in paths:
        try:
            h = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if path != layout.lock_file() and not held(path):
            continue
        holders.append(f"pid {h['pid']} on {h['host']}, rank {h['rank']} of {h['world_size']}, started "
                       f"{h['started']}, command: {h['command']}")
    return "; ".join(holders) or "its details were not recorded"


def _remove_stale_temporaries(layout: RunLayout) -> None:
    """Hidden temporaries of the run's own files left by a killed process (only the sole holder may)."""
    for path in layout.root.glob(".*.tmp"):
        if layout.owns(path.name) and path.is_file():
            path.unlink(missing_ok=True)

