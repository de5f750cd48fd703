"""The dataset engine: recipe -> identities -> shards -> render -> faces -> keep -> write -> finalize.

Work is cut into shards of identities (datatrove-style tasks). A shard is written under a
temporary folder, renamed into place, and only then marked done; a rerun skips done shards and
redoes the rest, so a run can be killed at any moment. Every image's seed is derived from (recipe
seed, identity, image index), so the data do not depend on how shards are spread over ranks or on
interruptions. Ranks come from the launcher (torchrun, accelerate, Slurm) or explicit arguments;
shard i belongs to rank i mod world size, and rank 0 finalizes once every shard is done.

The life cycle of a shard on its rank (`ShardWorker.run_units`), with its stages overlapped:
1. opened when its first batch is rendered: a fresh temporary folder, after removing what an
   earlier attempt left;
2. its batches flow render -> analyse -> write (the device renders batch i+1 while threads analyse
   batch i and encode batch i-1 into the temporary folder), a bounded number of batches in flight;
3. when its last batch is through (the finish stage, a thread of its own) it is judged; identities
   still short of min_images get another round of batches (on_too_few = "resample"), rendered next;
4. finished: kept files moved to their names, the folder renamed into place, then the done record.
The rank's shards stream into each other: the next shard renders while the previous one is
analysed, written and finished, so the device never waits at a shard boundary. Each shard's files
depend on that shard alone, so they are byte-identical to one stage after another; a failure keeps
the shards finished before it and removes the temporary folders of the open ones. Each rank
records how its session's shards ran (images/s, busy share per stage, bottleneck:
`RunLayout.stage_record`), and rank 0 copies those records into run.json once the run is finalized.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import ClassVar

import numpy as np

from synthface.errors import (
    EmptyDatasetError,
    FileFormatError,
    InvalidInputError,
    OutputPathError,
    RunInterruptedError,
    RunLockedError,
    SynthfaceError,
)
from synthface.identity import (
    IdentityBank,
    draw_replacements,
    load_bank,
    load_vectors,
    mixture_cosines,
    perturb,
    sample_identities,
)
from synthface.io import atomic_write_bytes, check_output_folder, fsync_tree, output_errors, safetensors_bytes
from synthface.recipe import Recipe, loads_recipe_toml, parse_recipe
from synthface.render import check_images
from synthface.stages import Stage, StageTimes, run_stages

log = logging.getLogger("synthface.engine")

# A renderer turns condition vectors (B, D) and one seed per image into B RGB uint8 images.
Renderer = Callable[[np.ndarray, Sequence[int]], list[np.ndarray]]

# How often a waiting rank says what it waits for (in the log, and on stderr under the CLI).
WAIT_REPORT_SECONDS = 60.0


# --------------------------------------------------------------------------- ranks and seeds


#: The most ranks a job may have: far beyond any cluster, low enough that a stray WORLD_SIZE = 10**9 is
#: refused at once instead of leaving rank 0 waiting for ranks that never come.
MAX_WORLD_SIZE = 65_536


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


def ranks_from_environment(shard_index: int | None = None, num_shards: int | None = None) -> Ranks:
    """Explicit --shard-index/--num-shards win; else torchrun/accelerate (RANK, WORLD_SIZE), else Slurm.

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
    for rank, world, local in (("RANK", "WORLD_SIZE", "LOCAL_RANK"), ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")):
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


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends only on `parts` (e.g. recipe seed, identity, image)."""
    words = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1]))


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class ImageTask:
    """One candidate image. `round` counts the identity's rendering rounds over all its vectors;
    `vector_round` says which vector it is rendered from (0: the sampled one, r: the replacement
    drawn in collision-resampling round r); `pose`: the target (yaw, pitch) in degrees when the recipe
    asks for poses (`variation.pose`), else None."""

    identity: int
    image: int
    round: int
    seed: int
    target_cos: float
    vector_round: int = 0
    pose: tuple[float, float] | None = None


#: Mixed into an image's seed parts to draw its target pose (a stream of its own, so adding poses
#: to a recipe changes no other draw).
POSE_STREAM = 0x706F7365


def draw_pose(recipe: Recipe, identity: int, image: int) -> tuple[float, float] | None:
    """The target (yaw, pitch) of one image, uniform in `variation.pose`'s ranges, from
    derive_seed(recipe seed, identity, image, POSE_STREAM) alone; None when the recipe sets no poses."""
    pose = recipe.variation.pose
    if pose is None:
        return None
    rng = np.random.default_rng(derive_seed(recipe.seed, identity, image, POSE_STREAM))
    return float(rng.uniform(*pose.yaw)), float(rng.uniform(*pose.pitch))


def plan_identity(recipe: Recipe, identity: int, round_: int = 0, vector_round: int = 0) -> list[ImageTask]:
    """The candidate images of one identity in one rendering round of one of its vectors.

    Image indices (and so seeds and file names) never repeat within an identity: vector v's round r
    is attempt v * max_rounds + r, whose k candidates are images attempt * k .. attempt * k + k - 1.
    """
    k = recipe.variation.candidates_per_identity
    attempt = vector_round * recipe.filtering.max_rounds + round_
    mix_seed = derive_seed(recipe.seed, identity, attempt, 0x6D6978)
    targets = mixture_cosines(recipe.variation.perturbation, k, seed=mix_seed % 2**32)
    return [
        ImageTask(identity, attempt * k + j, attempt, derive_seed(recipe.seed, identity, attempt * k + j),
                  float(targets[j]), vector_round, draw_pose(recipe, identity, attempt * k + j))
        for j in range(k)
    ]


def shard_unit(shard: int) -> str:
    """The name of shard `shard` as a unit of work (its folder and done marker under shards/)."""
    return f"shard-{shard:06d}"


def resample_unit(round_: int) -> str:
    """The unit that renders the replacement vectors of collision-resampling round `round_` (1, 2, ...)."""
    return f"resample-{round_:02d}"


def shard_identities(recipe: Recipe, shard: int) -> range:
    size = recipe.compute.shard_size
    return range(shard * size, min((shard + 1) * size, recipe.identities.count))


def num_shards(recipe: Recipe) -> int:
    return -(-recipe.identities.count // recipe.compute.shard_size)


@dataclass
class Plan:
    identities: int
    candidates_first_round: int
    images_wanted: int
    shards: int
    shards_done: int
    disk_bytes: int
    seconds_per_candidate: float | None

    @property
    def remaining_hours(self) -> float | None:
        if self.seconds_per_candidate is None:
            return None
        left = self.candidates_first_round * (self.shards - self.shards_done) / max(self.shards, 1)
        return left * self.seconds_per_candidate / 3600


def make_plan(recipe: Recipe, out_dir: Path) -> Plan:
    """What a run will do, and how much is already done in `out_dir` (reads only)."""
    layout = RunLayout(out_dir)
    rates = [r for r in (layout.record(shard_unit(s)) for s in range(num_shards(recipe))) if r is not None]
    per_candidate = None
    speeds = layout.session_speeds()
    if speeds:  # images per second over each rank's wall time (its shards overlap one another)
        per_candidate = sum(1 / v for v in speeds) / len(speeds)
    elif rates:  # a run from before the stage records: each shard's own seconds
        per_candidate = sum(r["seconds"] for r in rates) / max(sum(r["candidates"] for r in rates), 1)
    kept = recipe.identities.count * recipe.variation.images_per_identity
    crop_bytes = 4_500 * (recipe.export.crop_size / 112) ** 2  # a 112x112 face JPEG at q95 is ~4.5 KB
    full_bytes = 0.25 * (recipe.generation.resolution or 512) ** 2 if recipe.export.keep_full_images else 0
    formats = 1 + len(recipe.export.formats)  # shard copies plus each export
    return Plan(
        identities=recipe.identities.count,
        candidates_first_round=recipe.identities.count * recipe.variation.candidates_per_identity,
        images_wanted=kept,
        shards=num_shards(recipe),
        shards_done=len(rates),
        disk_bytes=int(kept * (crop_bytes * formats + full_bytes)),
        seconds_per_candidate=per_candidate,
    )


# --------------------------------------------------------------------------- layout


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
        return self.shards / _unit_name(unit)

    def shard_dir(self, shard: int) -> Path:
        return self.unit_dir(shard)

    def done_marker(self, unit: int | str) -> Path:
        if unit == self.FINALIZE:
            return self.root / self.FINAL_DONE
        return self.shards / f"{_unit_name(unit)}.done"

    def temp_dir(self, unit: int | str) -> Path:
        return self.shards / f".{_unit_name(unit)}.tmp-{os.getpid()}"

    def image_path(self, unit: int | str, identity: int, image: int, *, full: bool = False) -> str:
        """Where a kept image of a unit lies, relative to the run folder (as the manifest records it)."""
        kind, ext = (self.FULL, "png") if full else (self.IMAGES, "jpg")
        return f"{self.SHARDS}/{_unit_name(unit)}/{kind}/{identity:07d}/{image:04d}.{ext}"

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


def _unit_name(unit: int | str) -> str:
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


# --------------------------------------------------------------------------- locking


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


# --------------------------------------------------------------------------- identities


def ensure_identities(recipe: Recipe, layout: RunLayout, ranks: Ranks, *, wait_seconds: float = 3600,
                      renderer: Renderer | None = None) -> IdentityBank:
    """The bank the shards render: rank 0 samples it once (it is seed-determined) and, with
    `identities.attrop`, optimises its centres once (`attrop_centres`, saved to attrop.safetensors
    before identities.safetensors; `renderer` is the Vec2Face generator it needs); other ranks wait
    for its file, saying every WAIT_REPORT_SECONDS what they wait for. Once finalize has replaced
    colliding vectors the file holds the final vectors; the rendered bank is then rebuilt (sampled
    again, same seed, same vectors; AttrOP's saved centres reused), since shards are always rendered from it."""
    path = layout.identities
    if path.exists():
        bank = _check_bank(recipe, path, load_bank(path))
        if REPLACED_KEY not in bank.metadata:
            return bank
        log.warning("%s holds the vectors after collision resampling; sampling the original bank again", path)
        rendered = attrop_centres(recipe, layout, _sample_bank(recipe), renderer)
        kept = np.ones(len(bank), dtype=bool)
        kept[[int(i) for i in json.loads(bank.metadata[REPLACED_KEY])]] = False
        if not np.allclose(rendered.vectors[kept], bank.vectors[kept], atol=1e-5):
            raise _foreign_bank(path, "its vectors are not those this recipe samples")
        return rendered
    if ranks.rank != 0:
        _wait_until(lambda: [path] if not path.exists() else [], wait_seconds, lambda missing, waited: (
            f"rank {ranks.rank} of {ranks.world_size} is waiting for rank 0 to write {path} ({waited:.0f} s so far); "
            "is rank 0 running?"))
        return _check_bank(recipe, path, load_bank(path))
    bank = attrop_centres(recipe, layout, _sample_bank(recipe), renderer)
    bank.save(path)
    return bank


def _check_bank(recipe: Recipe, path: Path, bank: IdentityBank) -> IdentityBank:
    """`bank` (read from the run's `path`) if what it records fits the recipe: its count, dimension,
    prior, seed, max cosine, exclusion and AttrOP; else a FileFormatError naming the file. (A bank of
    another run would silently give the dataset other identities.) Fields an older file lacks pass."""
    cfg = recipe.identities
    expected = {"count": cfg.count, "prior": cfg.prior, "seed": cfg.seed, "max_cos": cfg.max_cos,
                "excluded": bool(cfg.exclude), "attrop": cfg.attrop is not None}
    found = {"count": len(bank), "prior": bank.prior.name, "seed": bank.seed, "max_cos": bank.max_cos,
             "excluded": bank.num_excluded > 0, "attrop": ATTROP_KEY in bank.metadata}
    if not cfg.reference:
        expected["dim"], found["dim"] = cfg.dim, bank.dim
    if cfg.exclude:
        expected["exclude_max_cos"] = cfg.max_cos if cfg.exclude_max_cos is None else cfg.exclude_max_cos
        found["exclude_max_cos"] = bank.exclude_max_cos
    wrong = [f"{key} {found[key]} (the recipe: {expected[key]})" for key in expected
             if found[key] is not None and found[key] != expected[key]]
    if wrong:
        raise _foreign_bank(path, "it records " + ", ".join(wrong))
    return bank


def _foreign_bank(path: Path, why: str) -> FileFormatError:
    return FileFormatError(
        f"{path} was not made by this run's recipe: {why}. Rendering from it would give the dataset other "
        f"identities than the recipe's. Delete it (or put this run's own file back) and run the same command "
        "again: the bank is sampled again from the recipe, with the same vectors as before."
    )


#: Mixed into an identity's seed parts for the generator of its AttrOP masks.
ATTROP_STREAM = 0x617474
#: identities.safetensors metadata with AttrOP: JSON {status: count} (per-identity rows: attrop.safetensors).
ATTROP_KEY = "attrop"
#: Per-identity AttrOP outcomes, in attrop.safetensors' `status` metadata (a JSON list, one per identity).
ATTROP_STATUSES = ("converged", "not_converged", "too_close")


def attrop_centres(recipe: Recipe, layout: RunLayout, bank: IdentityBank, renderer: Renderer | None) -> IdentityBank:
    """`bank` with its centres optimised by AttrOP (`identities.attrop`), or `bank` itself when unset.

    Computed once and saved to attrop.safetensors (`vectors`: the unit centres rendered; metadata
    `status`: one JSON record per identity: status, steps, retries, identity_loss, quality, pose_error
    (|yaw_target - |yaw|| in degrees with identities.attrop.yaw_target, else null); a rerun reuses
    the file. Identity i's mask draws come from derive_seed(recipe seed, i, ATTROP_STREAM).
    A centre keeps its optimised vector only if AttrOP converged ("converged"); otherwise it keeps
    the sampled one ("not_converged"). The bank's guarantee then holds again: in identity order, a
    converged vector whose cosine to any other current centre exceeds identities.max_cos is reverted
    to its sampled vector ("too_close"), so no two centres are closer than max_cos, as sampled.
    """
    cfg = recipe.identities.attrop
    if cfg is None:
        return bank
    path = layout.attrop
    if not path.exists():
        vectors, records = _run_attrop(recipe, bank, renderer)
        atomic_write_bytes(path, safetensors_bytes({"vectors": vectors}, {"status": json.dumps(records)}))
    vectors, records = _read_attrop(path, bank)
    counts = Counter(r["status"] for r in records)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    meta = {**bank.metadata, ATTROP_KEY: json.dumps({s: counts[s] for s in ATTROP_STATUSES})}
    return replace(bank, vectors=vectors, nearest_cos=sims.max(axis=1).astype(np.float32), metadata=meta)


def _read_attrop(path: Path, bank: IdentityBank) -> tuple[np.ndarray, list[dict]]:
    """attrop.safetensors' centres and per-identity records, checked against the sampled `bank` they
    were optimised from: one finite unit vector and one record per identity, and every centre AttrOP
    did not keep (not converged, too close) exactly the sampled one. Else a FileFormatError naming the
    file: damaged (unreadable) or foreign (another run's), never used."""
    from safetensors import SafetensorError, safe_open

    fix = (f"Delete it and run the same command again: AttrOP runs again on the sampled centres (and {path.name} "
           "is written anew).")
    try:
        with safe_open(str(path), "numpy") as handle:
            vectors = handle.get_tensor("vectors")
            records = json.loads((handle.metadata() or {})["status"])
        if not (isinstance(records, list) and all(isinstance(r, dict) and r.get("status") in ATTROP_STATUSES
                                                   for r in records)):
            raise ValueError("its status records are not AttrOP's")
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise FileFormatError(f"{path} is damaged ({exc or type(exc).__name__}); it holds a run's AttrOP centres. {fix}") from None
    kept_sampled = np.array([r["status"] != "converged" for r in records], dtype=bool)
    why = None
    if vectors.shape != bank.vectors.shape or len(records) != len(bank):
        why = (f"it holds {vectors.shape[0] if vectors.ndim else 0} centres of {vectors.shape[1:] or 'no'} dimensions "
               f"and {len(records)} records, and this run has {len(bank)} identities of {bank.dim}")
    elif vectors.dtype != np.float32 or not np.isfinite(vectors).all() or not np.allclose(
            np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4):
        why = "its centres are not finite unit float32 vectors"
    elif not np.allclose(vectors[kept_sampled], bank.vectors[kept_sampled], atol=1e-5):
        why = "the centres it did not optimise are not this recipe's sampled ones"
    if why:
        raise FileFormatError(f"{path} was not made for this run: {why}. {fix}")
    return vectors, records


def _run_attrop(recipe: Recipe, bank: IdentityBank, renderer: Renderer | None) -> tuple[np.ndarray, list[dict]]:
    import torch

    from synthface.pipelines.vec2face_attrop import AttrOPConfig, attrop

    cfg = recipe.identities.attrop
    if renderer is None or renderer.family.name != "vec2face":
        raise InvalidInputError(
            f"identities.attrop optimises centres through a Vec2Face generator, but generation.model = "
            f"{recipe.generation.model!r} is not one. Use a Vec2Face model ('vec2face', 'vec2face-tiny') or remove "
            "identities.attrop."
        )
    pose = cfg.yaw_target is not None
    estimators = attrop_estimators(cfg.estimators, renderer.device, bank.dim, pose=pose,
                                   allow_pickle=recipe.generation.allow_pickle or None)
    config = AttrOPConfig(lr=cfg.lr, max_steps=cfg.max_steps, max_retries=cfg.max_retries,
                          quality_target=cfg.quality_target, max_identity_loss=cfg.max_identity_loss,
                          max_quality_gap=cfg.max_quality_gap, max_pose_error=cfg.max_pose_error,
                          identity_weight=cfg.identity_weight, quality_scale=cfg.quality_scale,
                          pose_scale=cfg.pose_scale)
    start = bank.vectors.astype(np.float32)
    optimised, records = start.copy(), []
    step = recipe.generation.batch_size
    log.info("AttrOP on %d identity centres (at most %d steps each)", len(bank), cfg.max_steps * (cfg.max_retries + 1))
    for lo in range(0, len(bank), step):
        rows = torch.from_numpy(start[lo : lo + step])
        gens = [torch.Generator().manual_seed(derive_seed(recipe.seed, i, ATTROP_STREAM))
                for i in range(lo, lo + len(rows))]
        yaw = torch.full((len(rows),), float(cfg.yaw_target)) if pose else None
        result = attrop(renderer.pipeline, rows, rows, estimators, gens, config=config, yaw_target=yaw)
        out = torch.nn.functional.normalize(result.vectors.float(), dim=1).numpy()
        for j, st in enumerate(result.status):
            if st.converged:
                optimised[lo + j] = out[j]
            records.append({"status": "converged" if st.converged else "not_converged", "steps": st.steps,
                            "retries": st.retries, "identity_loss": st.identity_loss, "quality": st.quality,
                            "pose_error": st.pose_error})
    for i in range(len(bank)):  # the guarantee, in identity order, against the centres as they stand
        if records[i]["status"] == "converged":
            cos = optimised @ optimised[i]
            cos[i] = -1.0
            if cos.max() > recipe.identities.max_cos:
                optimised[i], records[i]["status"] = start[i], "too_close"
    return optimised, records


def attrop_estimators(name: str, device, dim: int, *, pose: bool = False, allow_pickle: bool | None = None):
    """AttrOP's judges. "vec2face": the registry's vec2face-arcface and vec2face-magface iresnet100s
    and, with `pose`, vec2face-6drepnet (`AttrOPEstimators.from_registry`, found locally:
    `synthface models download ...`); all are pickled .pth files, read only on the run's pickle opt-in
    (`allow_pickle`: the recipe's generation.allow_pickle, or SYNTHFACE_ALLOW_PICKLE=1). "tiny":
    fixed random projections of the 8x8-pooled image (plumbing only: they judge nothing about faces,
    and there is no tiny yaw judge, so `pose` is refused).

    Raises ModelNotFoundError (a file not installed, naming its download command, or no pickle
    opt-in, naming it), FileFormatError (a damaged file) or InvalidInputError (tiny with `pose`)."""
    import torch

    from synthface.pipelines.vec2face_attrop import AttrOPEstimators

    if name == "tiny":
        if pose:
            raise InvalidInputError(
                "identities.attrop.yaw_target needs a yaw judge, and the 'tiny' estimators have none: set "
                "identities.attrop.estimators = 'vec2face' (with vec2face-6drepnet installed) or remove yaw_target."
            )
        g = torch.Generator().manual_seed(0)
        w_id, w_q = (torch.randn(3 * 64, dim, generator=g).to(device) for _ in range(2))

        def pooled(images):
            return torch.nn.functional.adaptive_avg_pool2d(images, 8).flatten(1)

        return AttrOPEstimators(identity=lambda im: pooled(im) @ w_id, quality=lambda im: pooled(im) @ w_q)
    from synthface import weights
    from synthface.errors import ModelNotFoundError

    try:
        return AttrOPEstimators.from_registry(pose=pose, allow_pickle=allow_pickle, device=device)
    except ModelNotFoundError as exc:
        if weights.pickle_allowed(allow_pickle):
            raise  # a file not installed: the message names `synthface models download ...`
        raise ModelNotFoundError(
            f"identities.attrop: {exc} In a recipe: generation.allow_pickle = true "
            "(or --set generation.allow_pickle=true)."
        ) from None


def _sample_bank(recipe: Recipe) -> IdentityBank:
    cfg = recipe.identities
    reference = load_vectors(cfg.reference) if cfg.reference else None
    exclude = load_vectors(cfg.exclude) if cfg.exclude else None
    return sample_identities(
        cfg.count, max_cos=cfg.max_cos, prior=cfg.prior, dim=reference.shape[1] if reference is not None else cfg.dim,
        seed=cfg.seed, reference=reference, exclude=exclude, exclude_max_cos=cfg.exclude_max_cos,
    )


# --------------------------------------------------------------------------- shards


@dataclass
class Candidate:
    """One rendered image and what the face analyser saw in it.

    `crop` (aligned face, or the resized whole image when no face was found or no analyser runs)
    and `full` (the whole image, with export.keep_full_images) hold pixels only until the write
    stage has encoded them into the unit's temporary folder; then both are None, so a unit holds
    only its in-flight batches' pixels however many images it renders.
    """

    task: ImageTask
    condition_cos: float
    crop: np.ndarray | None
    full: np.ndarray | None
    embedding: np.ndarray | None  # filter-space embedding, None when no face
    det_score: float = float("nan")
    kps: np.ndarray | None = None


@dataclass
class UnitResult:
    unit: str
    candidates: int
    kept: int
    seconds: float
    stages: dict = field(default_factory=dict)  # `stage_report` of this unit


@dataclass(frozen=True)
class UnitWork:
    """A unit to render: its name, its identities, and which of their vectors (0: the sampled ones,
    r: the replacements of collision-resampling round r)."""

    unit: str
    identities: list[int]
    vector_round: int


@dataclass
class _OpenUnit:
    """A unit between its first rendered batch and its done record (`ShardWorker.run_units`): its
    temporary folder, its candidates so far (pixels already encoded there), its rendering round, the
    batches of that round not yet back at the sink, and when and from which stage times it started."""

    job: UnitWork
    tmp: Path
    rounds: int  # the most rounds it may take
    started: float
    times_before: StageTimes
    round: int = 0
    waiting: int = 0
    candidates: list[Candidate] = field(default_factory=list)


#: Batches between the renderer and the end of the write stage at once (`ShardWorker.max_in_flight`):
#: one rendering, one being analysed, one being written, one waiting; more only holds more memory.
MAX_IN_FLIGHT = 4


def stage_report(times: StageTimes, images: int) -> dict:
    """What a unit's (or a run's) done record and summary say about its stages: images per second
    over the wall time, each stage's busy seconds and busy share, and the bottleneck."""
    return {
        "images_per_s": round(images / times.wall, 3) if times.wall > 0 else 0.0,
        "wall_s": round(times.wall, 3),
        "busy_s": {k: round(v, 3) for k, v in times.busy.items()},
        "busy_share": {k: round(v, 3) for k, v in times.shares().items()},
        "bottleneck": times.bottleneck,
    }


class ShardWorker:
    """Renders, analyses, filters and writes units of work: the shards of one rank, and on rank 0 the
    collision-resampling rounds. Every per-image verdict is `synthface.filtering`'s.

    The stages overlap (`synthface.stages.run_stages`), within a unit and across units: the calling
    thread renders batch i+1 while one thread analyses batch i, another encodes and writes batch i-1
    into its unit's temporary folder, and a fourth judges and finishes units whose last batch is in. `max_in_flight` bounds the batches in between (1: the
    serial engine, for debugging), and so the pixels held. The files are byte-identical either way:
    every batch's work depends on that batch alone, and each unit collects its results in render
    order. `stage_times` adds up over every unit.
    """

    def __init__(self, recipe: Recipe, layout: RunLayout, renderer: Renderer, analyzer=None, *,
                 max_in_flight: int = MAX_IN_FLIGHT, stage_times: StageTimes | None = None):
        if analyzer is not None:
            from synthface.faces import check_analyzer

            check_analyzer(analyzer)
        if max_in_flight < 1:
            raise InvalidInputError(f"max_in_flight must be at least 1 (1 = serial), got {max_in_flight}.")
        self.recipe = recipe
        self.layout = layout
        self.renderer = renderer
        self.analyzer = analyzer
        self.max_in_flight = max_in_flight
        self.stage_times = stage_times if stage_times is not None else StageTimes()
        self.images = 0  # rendered by this worker so far (the images of `stage_times`)

    # units -------------------------------------------------------------------

    def run_shard(self, shard: int, vectors: np.ndarray, on_images: Callable[[int], None] | None = None) -> UnitResult:
        return self.run_shards([shard], vectors, on_images)[0]

    def run_shards(self, shards: Sequence[int], vectors: np.ndarray,
                   on_images: Callable[[int], None] | None = None) -> list[UnitResult]:
        """Render `shards` (their first vectors), streamed into each other; see `run_units`."""
        units = [UnitWork(shard_unit(s), list(shard_identities(self.recipe, s)), 0) for s in shards]
        return self.run_units(units, vectors, on_images)

    def run_unit(self, unit: str, identities: list[int], vectors: np.ndarray, vector_round: int,
                 on_images: Callable[[int], None] | None = None) -> UnitResult:
        return self.run_units([UnitWork(unit, identities, vector_round)], vectors, on_images)[0]

    def run_units(self, units: Sequence[UnitWork], vectors: np.ndarray,
                  on_images: Callable[[int], None] | None = None) -> list[UnitResult]:
        """Render, analyse, filter and write `units`, each from its identities' rows of `vectors`;
        the results of those finished, in the order they finished.

        A unit's life cycle (`_OpenUnit`): opened (a fresh temporary folder) when its first batch is
        rendered; each round's batches stream their candidates into that folder; when the round's
        last batch reaches the finish stage the unit is judged, and either a next round is rendered for the
        identities still short of min_images (on_too_few = "resample", up to max_rounds rounds) or
        the unit is finished: kept files moved to their names, the folder renamed into place, then
        its done record written. One `run_stages` carries every unit, so the next unit renders while
        the previous one is analysed, written and finished: the device does not wait at unit
        boundaries, and a resampling round waits only for its own unit.

        Each unit's batches, candidates and files depend on that unit alone (rounds are batched
        within the unit), so the files are the same whatever overlaps (max_in_flight=1 is the
        serial engine). On any failure the units finished before it (their batches were ahead of
        it) are kept, every unit still open loses its temporary folder, and the exception is
        raised (OSError as OutputPathError): a unit is complete or absent.
        """
        open_units: list[_OpenUnit] = []
        finished: list[UnitResult] = []

        def work() -> Iterator[tuple[_OpenUnit, list[ImageTask]]]:
            for job in units:
                state = _OpenUnit(job, self._open_temp(job.unit), self._max_rounds(), time.perf_counter(),
                                  self.stage_times.copy())
                open_units.append(state)
                yield from self._round_batches(state, job.identities)

        def settle(item: tuple[_OpenUnit, list[Candidate]]) -> tuple[_OpenUnit, int, list[int]]:
            """The finish stage (a thread of its own, so the device never waits for it): take a batch's
            candidates; after a round's last batch, judge the unit and either name the identities
            of its next round or finish it. Returns (unit, images, identities of the next round)."""
            state, candidates = item
            state.candidates += candidates
            state.waiting -= 1
            if state.waiting:
                return state, len(candidates), []
            verdict = self._judge(state.candidates, vectors)
            kept_per = Counter(c.task.identity for c, k in zip(state.candidates, verdict["kept"]) if k)
            short = [i for i in state.job.identities if kept_per[i] < self.recipe.filtering.min_images]
            state.round += 1
            if short and state.round < state.rounds:
                return state, len(candidates), short
            finished.append(self._finish(state, verdict))
            open_units.remove(state)
            return state, len(candidates), []

        def collect(item: tuple[_OpenUnit, int, list[int]]) -> list | None:
            state, images, short = item
            self.images += images
            if on_images:
                on_images(images)
            return self._round_batches(state, short) if short else None  # rendered before any later unit

        stages = [Stage("render", lambda w: (w[0], self._render_batch(w[1], vectors))),
                  Stage("analyse", lambda w: (w[0], self._analyse(*w[1]))),
                  Stage("write", lambda w: (w[0], self._stage_files(w[0].tmp, w[1]))),
                  Stage("finish", settle)]
        try:
            run_stages(work(), stages, collect, max_in_flight=self.max_in_flight, times=self.stage_times)
        except OSError as exc:
            names = ", ".join(u.job.unit for u in open_units)
            raise OutputPathError(
                f"Writing {names} under {self.layout.shards} failed: {exc.strerror or exc}. Finished shards "
                "are kept and nothing half-written is left; free space or fix permissions, then run the same "
                "command again to resume."
            ) from None
        finally:
            for state in open_units:
                shutil.rmtree(state.tmp, ignore_errors=True)
        return finished

    def _max_rounds(self) -> int:
        filt = self.recipe.filtering
        return filt.max_rounds if filt.on_too_few == "resample" and filt.enabled else 1

    def _round_batches(self, state: _OpenUnit, identities: list[int]) -> list[tuple[_OpenUnit, list[ImageTask]]]:
        """The work items of `state`'s current round for `identities`: its tasks cut into batches
        (counted in `state.waiting`, so the finish stage knows the round's last batch)."""
        tasks = [t for i in identities for t in plan_identity(self.recipe, i, state.round, state.job.vector_round)]
        size = self.recipe.generation.batch_size
        batches = [(state, tasks[lo : lo + size]) for lo in range(0, len(tasks), size)]
        state.waiting = len(batches)
        return batches

    def _finish(self, state: _OpenUnit, verdict: dict) -> UnitResult:
        """Write the unit's files into place (`_write_unit`), then its done record with what ran."""
        unit, candidates = state.job.unit, state.candidates
        kept = self._write_unit(unit, state.tmp, candidates, verdict)
        stages = stage_report(self.stage_times.since(state.times_before), len(candidates))
        result = UnitResult(unit, len(candidates), kept, time.perf_counter() - state.started, stages)
        self.layout.mark_done(unit, {"unit": unit, "candidates": result.candidates, "kept": result.kept,
                                     "seconds": round(result.seconds, 3), "stages": stages, "models": self.models()})
        log.info("%s: %d candidates, %d kept, %.1f s, %.2f images/s, bottleneck %s (busy %s)", unit,
                 result.candidates, result.kept, result.seconds, stages["images_per_s"], stages["bottleneck"],
                 stages["busy_share"])
        return result

    def models(self) -> list[dict]:
        """What renders and judges the images, with licences: the dataset card lists these."""
        from synthface.weights import licence

        gen = licence(self.recipe.generation.model)
        out = [{"name": self.recipe.generation.model, "role": "generator", "licence": gen.text,
                "restricted": gen.restricted}]
        if self.analyzer is not None:
            a = self.analyzer
            options = ", ".join(f"{k}={v}" for k, v in sorted(self.recipe.filtering.analyzer_options.items()))
            out.append({"name": f"{a.name} ({options})" if options else a.name, "role": "filter / face analysis",
                        "licence": a.license, "restricted": a.license_restricted,
                        "embedding_space": a.embedding_space, "same_person_cos": a.same_person_cos})
        return out

    def _render_batch(self, batch: list[ImageTask], vectors: np.ndarray):
        centres = vectors[[t.identity for t in batch]]
        targets = np.array([t.target_cos for t in batch])
        conditions = np.where(
            (targets >= 1.0)[:, None], centres, perturb(centres, targets, seed=[t.seed for t in batch])
        ).astype(np.float32)
        seeds = [t.seed for t in batch]
        if self.recipe.variation.pose is None:
            images = self.renderer(conditions, seeds)
            return batch, conditions, centres, check_images(images, len(seeds), self.renderer)
        poses = np.array([t.pose for t in batch], dtype=np.float32)
        images = self.renderer(conditions, seeds, poses=poses)
        return batch, conditions, centres, check_images(images, len(seeds), self.renderer)

    def _analyse(self, batch, conditions, centres, images) -> list[Candidate]:
        from synthface.faces.align import norm_crop

        size = self.recipe.export.crop_size
        keep_full = self.recipe.export.keep_full_images
        cond_cos = np.sum(conditions * centres, axis=1)
        faces = self.analyzer.analyze(images) if self.analyzer is not None else [None] * len(images)
        result = []
        for task, cos, image, found in zip(batch, cond_cos, images, faces):
            face = found[0] if found else None
            if face is not None:
                crop = norm_crop(image, face.kps, size)
                cand = Candidate(task, float(cos), crop, image if keep_full else None, face.embedding,
                                 float(face.det_score), face.kps)
            else:
                crop = _resize(image, size)  # no face to align: keep the whole image for inspection
                cand = Candidate(task, float(cos), crop, image if keep_full else None, None)
            result.append(cand)
        return result

    def _stage_files(self, tmp: Path, candidates: list[Candidate]) -> list[Candidate]:
        """Encode each candidate's crop (and full image) under its staging name in `tmp` and drop its
        pixels; `_write_unit` moves the kept ones to their final names."""
        quality = self.recipe.export.jpeg_quality
        for c in candidates:
            for full, pixels in ((False, c.crop), (True, c.full)):
                if pixels is None:
                    continue
                path = tmp / self.layout.staged_path(c.task.identity, c.task.image, full=full)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(encode_png(pixels) if full else encode_jpeg(pixels, quality))
            c.crop = c.full = None
        return candidates

    def _judge(self, candidates: list[Candidate], vectors: np.ndarray) -> dict:
        """The per-image verdicts (filtering's): the best images per identity, or with filtering off
        the first ones. Pose and quality are NaN where no recogniser looked."""
        from synthface import filtering

        identity = np.array([c.task.identity for c in candidates], dtype=np.int64)
        nan = np.full(len(candidates), np.nan, dtype=np.float32)
        if not self.recipe.filtering.enabled:
            kept, reasons = filtering.keep_first(identity, self.recipe.variation.images_per_identity)
            return {"kept": kept, "reasons": reasons, "filter_cos": nan, "quality": nan,
                    "pose": np.full((len(candidates), 3), np.nan, dtype=np.float32)}
        result = filtering.filter_candidates(
            identity,
            _stack_embeddings(candidates, self.analyzer.embedding_dim),
            id_vectors=vectors if self._compare_with_id_vectors(vectors) else None,
            det_score=np.array([c.det_score for c in candidates], dtype=np.float32),
            kps=np.stack([c.kps if c.kps is not None else np.full((5, 2), np.nan, np.float32) for c in candidates]),
            config=filter_config(self.recipe, self.analyzer.same_person_cos),
        )
        return {"kept": result.kept, "reasons": result.reason, "filter_cos": result.filter_cos,
                "quality": result.quality, "pose": result.pose}

    def _compare_with_id_vectors(self, vectors: np.ndarray) -> bool:
        """Compare images with the ID vector only when the analyser embeds into the conditioning space.

        Equal dimensions are not enough (insightface's glintr100 and Arc2Face's arcface.onnx are both
        512-d and unrelated), so the recipe says so explicitly.
        """
        if not self.recipe.filtering.same_space:
            return False
        if self.analyzer.embedding_dim != vectors.shape[1]:
            raise InvalidInputError(
                f"filtering.same_space is true, but the analyser embeds into {self.analyzer.embedding_dim} dimensions "
                f"and the identities have {vectors.shape[1]}; set same_space = false or use the conditioning recogniser."
            )
        return True

    def _open_temp(self, unit: str) -> Path:
        """A fresh temporary folder for `unit`, after removing what an earlier attempt left."""
        final = self.layout.unit_dir(unit)
        # Leftovers of an earlier attempt that never got its done-marker. A unit has one owner rank and
        # the rank's lock (`lock_run`) admits one process per rank, so no live process owns them.
        shutil.rmtree(final, ignore_errors=True)
        for stale in self.layout.shards.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = self.layout.temp_dir(unit)
        try:
            tmp.mkdir(parents=True)
        except OSError as exc:
            raise OutputPathError(
                f"Cannot create {tmp}: {exc.strerror or exc}. Free space or fix permissions, then run the same "
                "command again to resume; finished shards are kept."
            ) from None
        return tmp

    def _write_unit(self, unit: str, tmp: Path, candidates: list[Candidate], verdict: dict) -> int:
        """Move the kept candidates' files to their final names, delete the dropped ones, write the
        manifest and embeddings, then rename the folder into place (atomic on POSIX); returns the
        number of kept images."""
        from synthface.export import write_manifest

        rows = []
        prefix = len(f"{RunLayout.SHARDS}/{unit}/")
        for i, c in enumerate(candidates):
            kept = bool(verdict["kept"][i])
            rel = ""
            if kept:
                rel = self.layout.image_path(unit, c.task.identity, c.task.image)
                for full, final in ((False, rel), (True, self.layout.image_path(unit, c.task.identity, c.task.image,
                                                                                  full=True))):
                    staged = tmp / self.layout.staged_path(c.task.identity, c.task.image, full=full)
                    if full and not staged.exists():
                        continue
                    (tmp / final[prefix:]).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(staged, tmp / final[prefix:])
            yaw, pitch, roll = (float(v) for v in verdict["pose"][i])
            rows.append({
                "identity": c.task.identity,
                "image": c.task.image,
                "round": c.task.round,
                "vector_round": c.task.vector_round,
                "seed": c.task.seed,
                "target_cos": c.task.target_cos,
                "condition_cos": c.condition_cos,
                "filter_cos": float(verdict["filter_cos"][i]),
                "det_score": c.det_score,
                "yaw": yaw,
                "pitch": pitch,
                "roll": roll,
                "quality": float(verdict["quality"][i]),
                "kept": kept,
                "drop_reason": "" if kept else verdict["reasons"][i],
                "path": rel,
                "unit": unit,
                **({} if c.task.pose is None else {"target_yaw": c.task.pose[0], "target_pitch": c.task.pose[1]}),
            })
        shutil.rmtree(tmp / RunLayout.STAGED)  # the dropped candidates
        write_manifest(tmp / RunLayout.MANIFEST, rows)
        dim = self.analyzer.embedding_dim if self.analyzer is not None else 0
        (tmp / RunLayout.EMBEDDINGS).write_bytes(safetensors_bytes({"embeddings": _stack_embeddings(candidates, dim)}))
        fsync_tree(tmp)
        os.replace(tmp, self.layout.unit_dir(unit))
        return int(np.count_nonzero(verdict["kept"]))


def filter_config(recipe: Recipe, same_person_cos: float):
    """The filtering module's per-image configuration for one unit: min_cos defaults to the
    analyser's declared same-person cosine (identity verdicts are judged at finalize)."""
    from synthface.filtering import FilterConfig

    cfg = recipe.filtering
    return FilterConfig(
        min_cos=same_person_cos if cfg.min_cos is None else cfg.min_cos,
        min_det_score=cfg.min_det_score,
        duplicate_cos=cfg.near_duplicate_cos,
        keep_per_identity=recipe.variation.images_per_identity,
        rank_by="index",
        collision_cos=None,
    )


def _stack_embeddings(candidates: list[Candidate], dim: int) -> np.ndarray:
    out = np.full((len(candidates), dim), np.nan, dtype=np.float32)
    for i, c in enumerate(candidates):
        if c.embedding is not None:
            out[i] = c.embedding
    return out


# --------------------------------------------------------------------------- images and tables


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


# --------------------------------------------------------------------------- run and finalize


@dataclass
class RunSummary:
    out_dir: Path
    shards_run: list[int]
    shards_skipped: list[int]
    finalized: bool
    stats: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)  # `stage_report` of the shards this process rendered


def run(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    ranks: Ranks | None = None,
    overwrite: bool = False,
    renderer: Renderer | None = None,
    analyzer=None,
    progress=None,
    command: str = "",
    wait_seconds: float = 7 * 24 * 3600,
    max_in_flight: int = MAX_IN_FLIGHT,
) -> RunSummary:
    """Make (or resume) the dataset of `recipe` in `out_dir`; see the module docstring.

    `renderer` and `analyzer` default to the recipe's model and face analyser. `progress` is an
    object with `start(total_images, stage_times)`, `advance(images)` and `stop()` (the CLI passes a
    rich bar; `stage_times` is the live `StageTimes` of the render/analyse/write stages).
    `max_in_flight` bounds the batches between rendering and writing (1: the serial engine; the
    files are the same either way).
    Ranks, the device and the destination are checked before anything is written; the folder is
    locked for the whole run (`lock_run`). Shards whose files were damaged are redone; a run that
    keeps no image raises EmptyDatasetError after writing the manifest that says why.
    """
    ranks = ranks or Ranks()
    layout = RunLayout(check_output_folder(out_dir, what="run folder"))
    check_destination(layout)
    if renderer is None:
        resolve_render_device(recipe, ranks)  # a device this machine lacks is refused before the folder exists
        if recipe.variation.pose is not None or recipe.identities.attrop is not None:
            renderer = build_renderer(recipe, ranks)  # so is a generator without pose control (loaded to find out)
    if recipe.variation.pose is not None:
        renderer.require_poses(f"The recipe sets variation.pose, but generation.model = {recipe.generation.model!r}")
    with _resumable_interrupt(), output_errors(layout.root, action="write into the run folder"), \
            lock_run(layout, ranks, command):
        prepare_output(recipe, layout.root, overwrite=overwrite and ranks.rank == 0, command=command)
        _attach_log_file(layout, ranks)
        bank = ensure_identities(recipe, layout, ranks, wait_seconds=min(wait_seconds, 3600), renderer=renderer)
        mine = [s for s in range(num_shards(recipe)) if s % ranks.world_size == ranks.rank]
        todo = layout.incomplete(mine)
        log.info("rank %d/%d: %d shards, %d already done", ranks.rank, ranks.world_size, len(mine), len(mine) - len(todo))
        worker, times = None, StageTimes()

        def get_worker() -> ShardWorker:
            nonlocal worker, analyzer
            if analyzer is None and recipe.filtering.enabled:
                analyzer = make_analyzer(recipe)
            worker = worker or ShardWorker(recipe, layout, renderer or build_renderer(recipe, ranks), analyzer,
                                           max_in_flight=max_in_flight, stage_times=times)
            return worker

        def render(shards: list[int]) -> None:
            total = sum(len(shard_identities(recipe, s)) for s in shards) * recipe.variation.candidates_per_identity
            if progress:
                progress.start(total, times)
            try:
                get_worker().run_shards(shards, bank.vectors, on_images=progress.advance if progress else None)
            finally:
                if progress:
                    progress.stop()

        def stages() -> dict:
            return stage_report(times, worker.images) if worker else {}

        if todo:
            layout.write_stage_record(ranks.rank, None)
            render(todo)
            layout.write_stage_record(ranks.rank, stages())
        skipped = sorted(set(mine) - set(todo))

        if ranks.rank != 0:
            return RunSummary(layout.root, todo, skipped, False, {}, stages())
        _wait_for_shards(recipe, layout, ranks, wait_seconds)
        if layout.is_done(layout.FINALIZE):
            return RunSummary(layout.root, todo, skipped, False, layout.record(layout.FINALIZE), stages())
        damaged = damaged_units(layout, [*range(num_shards(recipe)), *_resample_units_done(recipe, layout)])
        if damaged:
            for unit in damaged:
                layout.done_marker(unit).unlink(missing_ok=True)
            listing = "; ".join(f"{_unit_name(u)}: {why}" for u, why in list(damaged.items())[:3])
            if ranks.world_size > 1 and any(isinstance(u, int) for u in damaged):
                raise FileFormatError(
                    f"{len(damaged)} finished unit(s) of {layout.root} were damaged ({listing}); their done markers "
                    "were removed. Run the same command again (all ranks) and they are redone."
                )
            log.warning("redoing %d damaged unit(s): %s", len(damaged), listing)
            shards = sorted(u for u in damaged if isinstance(u, int))
            render(shards)  # damaged resampling rounds are redone by finalize
            todo = sorted(set(todo) | set(shards))
            skipped = sorted(set(skipped) - set(shards))
        stats = finalize(recipe, layout, bank, worker=get_worker)
        if worker is not None:  # this session rendered (shards, damaged units or resampling rounds)
            layout.write_stage_record(ranks.rank, stages())
        layout.record_stages(ranks.world_size)
        return RunSummary(layout.root, todo, skipped, True, stats, stages())


@contextlib.contextmanager
def _resumable_interrupt() -> Iterator[None]:
    """A Ctrl-C (KeyboardInterrupt) during a run leaves it resumable (finished units are kept, open ones
    removed) and leaves as RunInterruptedError "aborted; rerun to resume" (exit code 130)."""
    try:
        yield
    except KeyboardInterrupt:
        raise RunInterruptedError("aborted; rerun to resume") from None


def make_analyzer(recipe: Recipe):
    """The recipe's face analyser; options it does not take are an InvalidInputError naming them."""
    from synthface.faces import get_analyzer

    cfg = recipe.filtering
    try:
        return get_analyzer(cfg.analyzer, **cfg.analyzer_options)
    except TypeError as exc:
        raise InvalidInputError(
            f"filtering.analyzer_options {cfg.analyzer_options} do not fit the {cfg.analyzer!r} analyser ({exc}). "
            "Remove or rename the option; the analyser's keyword arguments are listed in the README under "
            "'Face analysis'."
        ) from None


def resolve_render_device(recipe: Recipe, ranks: Ranks):
    """The torch device this rank renders on: "auto" is this rank's GPU (LOCAL_RANK) or the CPU; any
    other name must exist here, else InvalidInputError (see synthface.devices)."""

    from synthface.devices import resolve_device

    try:
        return resolve_device(recipe.generation.device, local_rank=ranks.local_rank)
    except InvalidInputError as exc:
        raise InvalidInputError(f"generation.device: {exc} In a recipe: --set generation.device=auto.") from None


def build_renderer(recipe: Recipe, ranks: Ranks) -> Renderer:
    """The recipe's generator as a `synthface.render.Renderer` on this rank's device
    (`resolve_render_device`), with the recipe's speed settings (`compute.attention`,
    `compute.channels_last`, `compute.compile`)."""
    from synthface.render import Optimizations, RenderSettings
    from synthface.render import build_renderer as render_build

    gen, compute = recipe.generation, recipe.compute
    return render_build(
        gen.model,
        settings=RenderSettings(gen.steps, gen.guidance, gen.resolution),
        device=resolve_render_device(recipe, ranks),
        dtype=gen.dtype,
        optimizations=Optimizations(attention=compute.attention, channels_last=compute.channels_last,
                                    compile=compute.compile),
        allow_pickle=gen.allow_pickle or None,
    )


def _wait_until(missing: Callable[[], list], wait_seconds: float, describe: Callable[[list, float], str]) -> None:
    """Poll `missing()` until it is empty; log `describe(missing, waited)` as a warning every
    WAIT_REPORT_SECONDS, and raise OutputPathError with it after `wait_seconds`."""
    start = time.monotonic()
    reported = start
    left = missing()
    while left:
        now = time.monotonic()
        if now - start > wait_seconds:
            raise OutputPathError(describe(left, now - start) + " Gave up; run the same command again to continue.")
        if now - reported >= WAIT_REPORT_SECONDS:
            log.warning(describe(left, now - start))
            reported = now
        time.sleep(min(1.0, WAIT_REPORT_SECONDS / 4))
        left = missing()


def _wait_for_shards(recipe: Recipe, layout: RunLayout, ranks: Ranks, wait_seconds: float) -> None:
    """Rank 0 waits for the other ranks' shards, naming them while it waits."""
    pending = layout.incomplete(range(num_shards(recipe)))

    def missing() -> list[int]:
        pending[:] = layout.incomplete(pending)
        return pending

    _wait_until(missing, wait_seconds, lambda left, waited: (
        f"rank 0 is waiting for {len(left)} shard(s) of other ranks (first: {layout.done_marker(left[0])}, rank "
        f"{left[0] % ranks.world_size} of {ranks.world_size}) for {waited:.0f} s; are all ranks running?"))


def damaged_units(layout: RunLayout, units: Sequence[int | str]) -> dict[int | str, str]:
    """Units marked done whose files are no longer whole: unit -> what is wrong."""
    from synthface.export import read_manifest

    damaged = {}
    for unit in units:
        try:
            rows = read_manifest(layout.unit_dir(unit) / layout.MANIFEST).to_pylist()
        except SynthfaceError as exc:
            damaged[unit] = str(exc)
            continue
        lost = [r["path"] for r in rows if r["kept"] and not (layout.root / r["path"]).is_file()]
        if lost:
            damaged[unit] = f"{len(lost)} kept image(s) missing, e.g. {lost[0]}"
    return damaged


def _resample_units_done(recipe: Recipe, layout: RunLayout) -> list[str]:
    return [u for u in map(resample_unit, range(1, recipe.filtering.max_rounds + 1)) if layout.done_marker(u).exists()]


def _attach_log_file(layout: RunLayout, ranks: Ranks) -> None:
    path = layout.log_file(ranks)
    try:
        handler = logging.FileHandler(path)
    except OSError as exc:
        raise OutputPathError(
            f"Cannot open the run log {path}: {exc.strerror or exc}. Free space or fix the folder's permissions, "
            "then run the same command again; finished shards are kept."
        ) from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    # A line the full disk cannot take is lost quietly (not logging's "--- Logging error ---" traceback on
    # stderr): the run's next write fails with the one paragraph that says what to do.
    handler.handleError = lambda record: None
    for old in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
        log.removeHandler(old)
        old.close()
    log.addHandler(handler)
    log.setLevel(logging.INFO)


#: identities.safetensors metadata after collision resampling: JSON {identity: round its vector was replaced in}.
REPLACED_KEY = "replaced_in_round"


def finalize(recipe: Recipe, layout: RunLayout, bank: IdentityBank, *,
             worker: Callable[[], ShardWorker] | None = None) -> dict:
    """Merge the units, give every identity its verdict (`filtering.judge_identities`), write the
    manifest, embeddings, exports, card and report.

    With collision_policy "resample", the losing identity of each colliding pair gets a fresh vector
    (`draw_replacements`: from the bank's prior, keeping the bank's max cosine and exclusion margin
    against every other identity, kept or replaced), rendered by `worker()` as unit
    `resample_unit(r)` with derived seeds and the same per-image filter; then the whole set is judged
    again, for up to filtering.max_rounds rounds, after which identities still colliding are dropped
    ("collision"). Images of a replaced vector are dropped as "replaced"; the manifest's
    `vector_round` says which vector each image came from, and identities.safetensors then holds the
    final vectors with REPLACED_KEY in its metadata. Each round is a unit with its own done marker and
    its vectors depend only on the seeds and the set, so any kill and rerun, with any number of
    ranks, gives the same files. When no image is kept, EmptyDatasetError (with the drop reasons) is
    raised after the manifest is written, and the run stays unfinished.
    """
    from synthface import filtering
    from synthface.export import write_manifest

    filt = recipe.filtering
    units: list[int | str] = list(range(num_shards(recipe)))
    rows, embeddings = _read_units(layout, units)
    judging = filt.enabled and embeddings.shape[1] > 0
    vectors, replaced = bank.vectors, {}
    for round_ in range(1, filt.max_rounds + 1) if judging and filt.collision_policy == "resample" else ():
        collided = filtering.judge_identities(
            [r["identity"] for r in rows], embeddings, [r["kept"] for r in rows], [r["drop_reason"] for r in rows],
            collision_cos=filt.collision_cos, collision_policy="resample", drop_too_few=False,
        ).collided
        if not collided.size:
            break
        vectors = vectors.copy()
        vectors[collided] = draw_replacements(
            vectors, collided, prior=bank.prior, max_cos=recipe.identities.max_cos, seed=recipe.identities.seed,
            round_=round_, exclude=load_vectors(recipe.identities.exclude) if recipe.identities.exclude else None,
            exclude_max_cos=recipe.identities.exclude_max_cos,
        )
        unit = resample_unit(round_)
        if not layout.is_done(unit):
            if worker is None:
                raise InvalidInputError(f"finalize needs a worker to render {unit} (collision_policy = 'resample').")
            result = worker().run_unit(unit, collided.tolist(), vectors, round_)
            log.info("%s: %d identities replaced, %d candidates, %d kept", unit, collided.size, result.candidates,
                     result.kept)
        lost = set(collided.tolist())
        for r in rows:
            if r["kept"] and r["identity"] in lost:
                r["kept"], r["drop_reason"] = False, "replaced"
        new_rows, new_embeddings = _read_units(layout, [unit])
        rows, embeddings = rows + new_rows, np.concatenate([embeddings, new_embeddings])
        units.append(unit)
        replaced.update(dict.fromkeys(lost, round_))

    identity = np.array([r["identity"] for r in rows], dtype=np.int64)
    verdict = filtering.judge_identities(
        identity, embeddings, [r["kept"] for r in rows], [r["drop_reason"] for r in rows],
        collision_cos=filt.collision_cos if judging else None,
        collision_policy="flag" if filt.collision_policy == "flag" else "drop",
        min_images=filt.min_images, drop_too_few=filt.on_too_few != "keep",
    )
    kept, reasons = verdict.kept, verdict.reason
    counts = np.bincount(identity[kept], minlength=recipe.identities.count)
    classes = np.flatnonzero(counts)
    label_of = np.full(recipe.identities.count, -1, dtype=np.int64)
    label_of[classes] = np.arange(len(classes))
    for i, row in enumerate(rows):
        row["kept"] = bool(kept[i])
        row["drop_reason"] = "" if kept[i] else reasons[i]
        row["label"] = int(label_of[row["identity"]]) if kept[i] else -1
    write_manifest(layout.manifest, rows)
    atomic_write_bytes(layout.embeddings, safetensors_bytes({"embeddings": embeddings}))
    if replaced:
        meta = {**bank.metadata, REPLACED_KEY: json.dumps({str(k): v for k, v in sorted(replaced.items())})}
        IdentityBank(vectors, bank.prior, max_cos=bank.max_cos, seed=bank.seed, exclude_max_cos=bank.exclude_max_cos,
                     num_excluded=bank.num_excluded, metadata=meta).save(layout.identities)

    kept_rows = [r for r in rows if r["kept"]]
    stats = {
        "identities_requested": recipe.identities.count,
        "identities_kept": int(len(classes)),
        "identities_replaced": len(replaced),
        "candidates": len(rows),
        "images_kept": len(kept_rows),
        "drop_reasons": {k: int(v) for k, v in zip(*np.unique(reasons[~kept].astype(str), return_counts=True))},
        "collisions": len(verdict.collisions),
    }
    if not kept_rows:
        reasons_text = ", ".join(f"{k}: {v}" for k, v in stats["drop_reasons"].items())
        raise EmptyDatasetError(
            f"The run kept no image: all {len(rows)} candidates were dropped ({reasons_text}). Every candidate and "
            f"its drop reason is in {layout.manifest}. Loosen the rule that dropped them (e.g. filtering.min_cos, "
            "filtering.min_det_score, filtering.min_images) or check that the model draws faces the analyser finds, "
            "then run again."
        )
    export_run(recipe, layout, kept_rows)
    from synthface.export.card import write_card

    write_card(layout.card, dataset_card_facts(recipe, layout, stats, units))
    if judging:
        from synthface.report import write_report

        write_report(layout.root)  # report.json + report.html: what the set is worth, measured
    layout.mark_done(layout.FINALIZE, stats)
    log.info("finalized: %s", stats)
    return stats


def _read_units(layout: RunLayout, units: Sequence[int | str]) -> tuple[list[dict], np.ndarray]:
    """The manifest rows and embeddings of finished units, in unit order."""
    from safetensors.numpy import load_file

    from synthface.export import concat_manifests

    table = concat_manifests([layout.unit_dir(u) / layout.MANIFEST for u in units])
    parts = [load_file(str(layout.unit_dir(u) / layout.EMBEDDINGS))["embeddings"] for u in units]
    return table.to_pylist(), np.concatenate(parts)


def export_run(recipe: Recipe, layout: RunLayout, kept_rows: list[dict], formats: Sequence[str] | None = None) -> None:
    """Write each export format from the kept rows of a finished run; a kept image missing from the
    run folder is a FileFormatError naming it and the fix, raised before any format is written."""
    from synthface.export import Sample, write_format

    lost = [r["path"] for r in kept_rows if not (layout.root / r["path"]).is_file()]
    if lost:
        raise FileFormatError(
            f"{len(lost)} kept image(s) listed in {layout.manifest} are missing from the run folder, e.g. "
            f"{layout.root / lost[0]}. Delete {layout.final_done} and run `synthface run {layout.recipe_file} --out "
            f"{layout.root}` again: it redoes the damaged shards and rebuilds the exports."
        )

    def samples():
        for row in kept_rows:
            yield Sample(
                label=row["label"],
                key=f"{row['identity']:07d}_{row['image']:04d}",
                jpeg=(layout.root / row["path"]).read_bytes(),
                meta={k: row[k] for k in ("identity", "image", "seed", "condition_cos", "filter_cos")},
            )

    num_classes = int(max((r["label"] for r in kept_rows), default=-1)) + 1
    for fmt in formats or recipe.export.formats:
        # Each writer builds its folder under a hidden name and swaps it in only when complete.
        write_format(fmt, samples(), layout.export_dir(fmt), num_classes=num_classes, overwrite=True)


def dataset_card_facts(recipe: Recipe, layout: RunLayout, stats: dict, units: Sequence[int | str]) -> dict:
    """The card's facts; its models are those the units' done records say actually ran."""
    run_info = read_run_info(layout) or {}
    models: list[dict] = []
    for unit in units:
        for model in (layout.record(unit) or {}).get("models", []):
            if model not in models:
                models.append(model)
    return {
        "name": recipe.name,
        "description": recipe.description,
        "models": models,
        "stats": stats,
        "command": run_info.get("command", ""),
        "recipe_toml": recipe.to_toml(),
        "formats": list(recipe.export.formats),
    }
