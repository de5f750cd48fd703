"""The dataset engine: recipe -> identities -> shards -> render -> faces -> keep -> write -> finalize.

Work is cut into shards of identities (datatrove-style tasks). A shard is written under a
temporary folder, renamed into place, and only then marked done; a rerun skips done shards and
redoes the rest, so a run can be killed at any moment. Every image's seed is derived from (recipe
seed, identity, image index), so the data do not depend on how shards are spread over ranks or on
interruptions. Ranks come from the launcher (torchrun, accelerate, Slurm) or explicit arguments;
shard i belongs to rank i mod world size, and rank 0 finalizes once every shard is done.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synthface.errors import InvalidInputError, OutputPathError
from synthface.identity import IdentityBank, load_bank, load_vectors, mixture_cosines, perturb, sample_identities
from synthface.io import atomic_write_bytes, fsync_tree, safetensors_bytes
from synthface.recipe import Recipe

log = logging.getLogger("synthface.engine")

# A renderer turns condition vectors (B, D) and one seed per image into B RGB uint8 images.
Renderer = Callable[[np.ndarray, Sequence[int]], list[np.ndarray]]

SHARDS = "shards"
RUN_FILE = "run.json"
# Cosine above which two ArcFace embeddings are usually the same person (the common 1:1 operating
# point on LFW-style benchmarks); used only when neither the recipe nor the analyser sets one.
ARCFACE_SAME_PERSON_COS = 0.3
FINAL_DONE = "finalize.done"


# --------------------------------------------------------------------------- ranks and seeds


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def ranks_from_environment(shard_index: int | None = None, num_shards: int | None = None) -> Ranks:
    """Explicit --shard-index/--num-shards win; else torchrun/accelerate (RANK, WORLD_SIZE), else Slurm."""
    if shard_index is not None or num_shards is not None:
        if shard_index is None or num_shards is None or not 0 <= shard_index < num_shards:
            raise InvalidInputError(
                f"--shard-index {shard_index} and --num-shards {num_shards} must be given together with "
                "0 <= shard-index < num-shards."
            )
        return Ranks(shard_index, num_shards, 0)
    env = os.environ
    if "WORLD_SIZE" in env and "RANK" in env:
        return Ranks(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if "SLURM_NTASKS" in env and "SLURM_PROCID" in env:
        return Ranks(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return Ranks()


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends only on `parts` (e.g. recipe seed, identity, image)."""
    words = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1]))


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class ImageTask:
    identity: int
    image: int
    round: int
    seed: int
    target_cos: float


def plan_identity(recipe: Recipe, identity: int, round_: int = 0) -> list[ImageTask]:
    """The candidate images of one identity in one rendering round."""
    k = recipe.variation.candidates_per_identity
    mix_seed = derive_seed(recipe.seed, identity, round_, 0x6D6978)
    targets = mixture_cosines(recipe.variation.perturbation, k, seed=mix_seed % 2**32)
    return [
        ImageTask(identity, round_ * k + j, round_, derive_seed(recipe.seed, identity, round_ * k + j), float(targets[j]))
        for j in range(k)
    ]


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
    """What a run will do, and how much is already done in `out_dir`."""
    layout = RunLayout(out_dir)
    done = [s for s in range(num_shards(recipe)) if layout.done_marker(s).exists()]
    rates = [json.loads(layout.done_marker(s).read_text()) for s in done]
    per_candidate = None
    if rates:
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
        shards_done=len(done),
        disk_bytes=int(kept * (crop_bytes * formats + full_bytes)),
        seconds_per_candidate=per_candidate,
    )


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class RunLayout:
    """Where everything of a run lives."""

    root: Path

    @property
    def shards(self) -> Path:
        return self.root / SHARDS

    def shard_dir(self, shard: int) -> Path:
        return self.shards / f"shard-{shard:06d}"

    def done_marker(self, shard: int) -> Path:
        return self.shards / f"shard-{shard:06d}.done"

    def temp_dir(self, shard: int) -> Path:
        return self.shards / f".shard-{shard:06d}.tmp-{os.getpid()}"

    @property
    def identities(self) -> Path:
        return self.root / "identities.safetensors"

    @property
    def run_file(self) -> Path:
        return self.root / RUN_FILE

    @property
    def final_done(self) -> Path:
        return self.root / FINAL_DONE


def prepare_output(recipe: Recipe, out_dir: Path, *, overwrite: bool = False, command: str = "") -> RunLayout:
    """Create or reopen a run folder; refuse one that holds another recipe's run unless `overwrite`."""
    layout = RunLayout(Path(out_dir))
    if layout.root.exists() and not layout.root.is_dir():
        raise OutputPathError(f"{layout.root} exists and is a file; choose a folder for the run's output.")
    try:
        layout.shards.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(
            f"Cannot create the run folder {layout.root}: {exc.strerror}. Choose a writable location with --out."
        ) from None
    if not os.access(layout.root, os.W_OK):
        raise OutputPathError(f"The run folder {layout.root} is read-only for this user; choose another with --out.")
    fingerprint = recipe.fingerprint()
    if layout.run_file.exists():
        previous = json.loads(layout.run_file.read_text())
        if previous.get("fingerprint") != fingerprint:
            if not overwrite:
                raise OutputPathError(
                    f"{layout.root} holds a run of a different recipe ({previous.get('name')!r}, "
                    f"fingerprint {previous.get('fingerprint')}; this one is {fingerprint}). Resuming would mix two "
                    "datasets. Choose another --out, or pass --overwrite to delete that run's outputs."
                )
            clear_run(layout)
            layout.shards.mkdir(parents=True, exist_ok=True)
    elif any(p for p in layout.root.iterdir() if p.name != SHARDS) and not overwrite:
        raise OutputPathError(
            f"{layout.root} is not empty and holds no synthface run. Choose an empty or new --out folder, "
            "or pass --overwrite to write into it anyway."
        )
    if not layout.run_file.exists():
        atomic_write_bytes(layout.run_file, json.dumps(
            {"name": recipe.name, "fingerprint": fingerprint, "command": command}, indent=2).encode())
        atomic_write_bytes(layout.root / "recipe.toml", recipe.to_toml().encode())
    return layout


def clear_run(layout: RunLayout) -> None:
    """Delete what a run writes (and nothing else) from its folder."""
    for name in (SHARDS, "export"):
        shutil.rmtree(layout.root / name, ignore_errors=True)
    for name in (RUN_FILE, FINAL_DONE, "recipe.toml", "identities.safetensors", "manifest.parquet",
                 "embeddings.safetensors", "README.md", "report.json", "report.html", "run.log"):
        (layout.root / name).unlink(missing_ok=True)


# --------------------------------------------------------------------------- identities


def ensure_identities(recipe: Recipe, layout: RunLayout, ranks: Ranks, *, wait_seconds: float = 3600) -> IdentityBank:
    """Rank 0 samples the bank once (it is seed-determined); other ranks wait for its file."""
    path = layout.identities
    if path.exists():
        return load_bank(path)
    if ranks.rank != 0:
        deadline = time.monotonic() + wait_seconds
        while not path.exists():
            if time.monotonic() > deadline:
                raise OutputPathError(f"rank {ranks.rank} waited {wait_seconds:.0f} s for rank 0 to write {path}; is rank 0 running?")
            time.sleep(0.5)
        return load_bank(path)
    cfg = recipe.identities
    reference = load_vectors(cfg.reference) if cfg.reference else None
    exclude = load_vectors(cfg.exclude) if cfg.exclude else None
    bank = sample_identities(
        cfg.count, max_cos=cfg.max_cos, prior=cfg.prior, dim=reference.shape[1] if reference is not None else cfg.dim,
        seed=cfg.seed, reference=reference, exclude=exclude, exclude_max_cos=cfg.exclude_max_cos,
    )
    bank.save(path)
    return bank


# --------------------------------------------------------------------------- shards


@dataclass
class Candidate:
    """One rendered image and what the face analyser saw in it."""

    task: ImageTask
    condition_cos: float
    crop: np.ndarray  # (S, S, 3) uint8, aligned face or a resized full image when no analyser runs
    full: np.ndarray | None
    embedding: np.ndarray | None  # filter-space embedding, None when no face
    det_score: float = float("nan")
    kps: np.ndarray | None = None


@dataclass
class ShardResult:
    shard: int
    candidates: int
    kept: int
    seconds: float
    rows: list[dict] = field(default_factory=list)


class ShardWorker:
    """Renders, analyses, filters and writes the shards of one rank."""

    def __init__(self, recipe: Recipe, layout: RunLayout, bank: IdentityBank, renderer: Renderer, analyzer=None):
        self.recipe = recipe
        self.layout = layout
        self.bank = bank
        self.renderer = renderer
        self.analyzer = analyzer

    # one shard ---------------------------------------------------------------

    def run_shard(self, shard: int, on_images: Callable[[int], None] | None = None) -> ShardResult:
        start = time.perf_counter()
        identities = list(shard_identities(self.recipe, shard))
        candidates: list[Candidate] = []
        kept: dict[int, list[int]] = {}
        rounds = self.recipe.filtering.max_rounds if self.recipe.filtering.on_too_few == "resample" else 1
        pending = identities
        for round_ in range(rounds):
            tasks = [t for ident in pending for t in plan_identity(self.recipe, ident, round_)]
            candidates += self._render(tasks, on_images)
            decision = self._select(candidates)
            kept = decision["kept_by_identity"]
            pending = [i for i in identities if len(kept.get(i, [])) < self.recipe.filtering.min_images]
            if not pending or not self.recipe.filtering.enabled:
                break
        result = self._write(shard, candidates, decision)
        result.seconds = time.perf_counter() - start
        atomic_write_bytes(self.layout.done_marker(shard), json.dumps(
            {"shard": shard, "candidates": result.candidates, "kept": result.kept, "seconds": round(result.seconds, 3)}
        ).encode())
        return result

    def _render(self, tasks: list[ImageTask], on_images) -> list[Candidate]:
        out: list[Candidate] = []
        batch_size = self.recipe.generation.batch_size
        for lo in range(0, len(tasks), batch_size):
            batch = tasks[lo : lo + batch_size]
            centres = self.bank.vectors[[t.identity for t in batch]]
            targets = np.array([t.target_cos for t in batch])
            conditions = np.where(
                (targets >= 1.0)[:, None], centres, perturb(centres, targets, seed=[t.seed for t in batch])
            ).astype(np.float32)
            images = self.renderer(conditions, [t.seed for t in batch])
            out += self._analyse(batch, conditions, centres, images)
            if on_images:
                on_images(len(batch))
        return out

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

    def _select(self, candidates: list[Candidate]) -> dict:
        """Keep the best images per identity (or the first ones, with filtering off)."""
        want = self.recipe.variation.images_per_identity
        identity = np.array([c.task.identity for c in candidates], dtype=np.int64)
        if not self.recipe.filtering.enabled:
            rank = np.zeros(len(candidates), dtype=np.int64)
            seen: dict[int, int] = {}
            for i, ident in enumerate(identity):
                rank[i] = seen.get(int(ident), 0)
                seen[int(ident)] = rank[i] + 1
            kept = rank < want
            reasons = np.where(kept, "", "surplus").astype(object)
            filter_cos = np.full(len(candidates), np.nan, dtype=np.float32)
        else:
            from synthface.filtering import filter_candidates

            result = filter_candidates(
                identity,
                _stack_embeddings(candidates, self.analyzer.embedding_dim),
                id_vectors=self.bank.vectors if self._same_space() else None,
                det_score=np.array([c.det_score for c in candidates], dtype=np.float32),
                kps=np.stack([c.kps if c.kps is not None else np.full((5, 2), np.nan, np.float32) for c in candidates]),
                config=filter_config(self.recipe, self._same_space_threshold()),
            )
            kept, reasons, filter_cos = result.kept, result.reason, result.filter_cos
        kept_by: dict[int, list[int]] = {}
        for i in np.flatnonzero(kept):
            kept_by.setdefault(int(identity[i]), []).append(int(i))
        return {"kept_by_identity": kept_by, "reasons": reasons, "filter_cos": filter_cos}

    def _same_space(self) -> bool:
        """Compare images with the ID vector only when the analyser embeds into the conditioning space.

        Equal dimensions are not enough (insightface's glintr100 and Arc2Face's arcface.onnx are both
        512-d and unrelated), so the recipe says so explicitly.
        """
        if not self.recipe.filtering.same_space:
            return False
        if self.analyzer.embedding_dim != self.bank.dim:
            raise InvalidInputError(
                f"filtering.same_space is true, but the analyser embeds into {self.analyzer.embedding_dim} dimensions "
                f"and the identities have {self.bank.dim}; set same_space = false or use the conditioning recogniser."
            )
        return True

    def _same_space_threshold(self) -> float:
        """The analyser's documented same-person cosine, used when the recipe sets no min_cos."""
        value = getattr(self.analyzer, "same_person_cos", None)
        if value is None:
            from synthface.faces import DLIB_SAME_PERSON_COS

            value = DLIB_SAME_PERSON_COS if self.analyzer.name.startswith("dlib") else ARCFACE_SAME_PERSON_COS
        return float(value)

    def _write(self, shard: int, candidates: list[Candidate], decision: dict) -> ShardResult:
        """Write the shard under a temporary folder, then rename it into place (atomic on POSIX)."""
        final = self.layout.shard_dir(shard)
        # Leftovers of an earlier attempt that never got its done-marker (a shard has one owner rank).
        shutil.rmtree(final, ignore_errors=True)
        for stale in self.layout.shards.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = self.layout.temp_dir(shard)
        try:
            tmp.mkdir(parents=True)
            rows = self._write_files(tmp, final.name, candidates, decision)
            fsync_tree(tmp)
            os.replace(tmp, final)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise OutputPathError(
                f"Writing shard {shard} under {self.layout.shards} failed: {exc.strerror or exc}. Finished shards "
                "are kept and nothing half-written is left; free space or fix permissions, then run the same "
                "command again to resume."
            ) from None
        return ShardResult(shard, len(candidates), sum(r["kept"] for r in rows), 0.0, rows)

    def _write_files(self, tmp: Path, shard_name: str, candidates: list[Candidate], decision: dict) -> list[dict]:
        from synthface.export import write_manifest

        kept_flat = {i for idx in decision["kept_by_identity"].values() for i in idx}
        rows = []
        quality = self.recipe.export.jpeg_quality
        for i, c in enumerate(candidates):
            rel = ""
            if i in kept_flat:
                rel = f"images/{c.task.identity:07d}/{c.task.image:04d}.jpg"
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_bytes(encode_jpeg(c.crop, quality))
                if c.full is not None:
                    full = tmp / f"full/{c.task.identity:07d}/{c.task.image:04d}.png"
                    full.parent.mkdir(parents=True, exist_ok=True)
                    full.write_bytes(encode_png(c.full))
            rows.append({
                "identity": c.task.identity,
                "image": c.task.image,
                "round": c.task.round,
                "seed": c.task.seed,
                "target_cos": c.task.target_cos,
                "condition_cos": c.condition_cos,
                "filter_cos": float(decision["filter_cos"][i]),
                "det_score": c.det_score,
                "kept": i in kept_flat,
                "drop_reason": "" if i in kept_flat else decision["reasons"][i] or "surplus",
                "path": f"{SHARDS}/{shard_name}/{rel}" if rel else "",
                "shard": int(shard_name.rsplit("-", 1)[1]),
            })
        write_manifest(tmp / "manifest.parquet", rows)
        dim = self.analyzer.embedding_dim if self.analyzer is not None else 0
        (tmp / "embeddings.safetensors").write_bytes(safetensors_bytes({"embeddings": _stack_embeddings(candidates, dim)}))
        return rows


def filter_config(recipe: Recipe, default_min_cos: float):
    """The filtering module's configuration for one shard (collisions are judged at finalize)."""
    from synthface.filtering import FilterConfig

    cfg = recipe.filtering
    return FilterConfig(
        min_cos=default_min_cos if cfg.min_cos is None else cfg.min_cos,
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
) -> RunSummary:
    """Make (or resume) the dataset of `recipe` in `out_dir`; see the module docstring.

    `renderer` and `analyzer` default to the recipe's model and face analyser. `progress` is an
    object with `start(total_images)`, `advance(images)` and `stop()` (the CLI passes a rich bar).
    """
    ranks = ranks or Ranks()
    layout = prepare_output(recipe, Path(out_dir), overwrite=overwrite and ranks.rank == 0, command=command)
    _attach_log_file(layout, ranks)
    bank = ensure_identities(recipe, layout, ranks)
    mine = [s for s in range(num_shards(recipe)) if s % ranks.world_size == ranks.rank]
    todo = [s for s in mine if not layout.done_marker(s).exists()]
    log.info("rank %d/%d: %d shards, %d already done", ranks.rank, ranks.world_size, len(mine), len(mine) - len(todo))
    if todo:
        renderer = renderer or build_renderer(recipe, ranks)
        if analyzer is None and recipe.filtering.enabled:
            from synthface.faces import get_analyzer

            analyzer = get_analyzer(recipe.filtering.analyzer, **recipe.filtering.analyzer_options)
        worker = ShardWorker(recipe, layout, bank, renderer, analyzer)
        total = sum(len(shard_identities(recipe, s)) for s in todo) * recipe.variation.candidates_per_identity
        if progress:
            progress.start(total)
        try:
            for shard in todo:
                result = worker.run_shard(shard, on_images=progress.advance if progress else None)
                log.info("shard %d: %d candidates, %d kept, %.1f s", shard, result.candidates, result.kept, result.seconds)
        finally:
            if progress:
                progress.stop()
    finalized = False
    if ranks.rank == 0:
        _wait_for_shards(recipe, layout, wait_seconds)
        if not layout.final_done.exists():
            stats = finalize(recipe, layout, analyzer_name=_analyzer_label(recipe, analyzer))
            finalized = True
        else:
            stats = json.loads(layout.final_done.read_text())
        return RunSummary(layout.root, todo, sorted(set(mine) - set(todo)), finalized, stats)
    return RunSummary(layout.root, todo, sorted(set(mine) - set(todo)), False, {})


def build_renderer(recipe: Recipe, ranks: Ranks) -> Renderer:
    """The recipe's diffusion model as a `Renderer` on this rank's device."""
    import torch

    from synthface.pipelines import load_arc2face

    gen = recipe.generation
    device = gen.device
    if device == "auto":
        device = f"cuda:{ranks.local_rank}" if torch.cuda.is_available() else "cpu"
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[gen.dtype]
    if str(device) == "cpu" and dtype == torch.float16:
        log.warning("fp16 is slow and imprecise on CPU; rendering in fp32 instead")
        dtype = torch.float32
    if gen.model == "tiny":
        # The tiny model's layers are far too small to gain from threads; on few cores the thread
        # hand-off costs more than the work (measured on a busy 2-core machine: ~1 s per call with 2
        # threads, ~0.04 s with 1).
        torch.set_num_threads(1)
    pipe = load_arc2face(gen.model, dtype=dtype, device=device, allow_pickle=gen.allow_pickle or None)
    pipe.set_progress_bar_config(disable=True)

    def render(conditions: np.ndarray, seeds: Sequence[int]) -> list[np.ndarray]:
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        out = pipe(
            id_embeds=torch.from_numpy(conditions),
            num_inference_steps=gen.steps,
            guidance_scale=gen.guidance,
            height=gen.resolution,
            width=gen.resolution,
            generator=generators,
            output_type="np",
        )
        return [np.clip(np.rint(im * 255), 0, 255).astype(np.uint8) for im in out.images]

    return render


def _wait_for_shards(recipe: Recipe, layout: RunLayout, wait_seconds: float) -> None:
    missing = [s for s in range(num_shards(recipe)) if not layout.done_marker(s).exists()]
    deadline = time.monotonic() + wait_seconds
    while missing:
        if time.monotonic() > deadline:
            raise OutputPathError(
                f"{len(missing)} shards (first: {missing[0]}) are still not done after waiting {wait_seconds:.0f} s. "
                "Run the same command again (with the same ranks) to finish them; finished shards are kept."
            )
        time.sleep(1.0)
        missing = [s for s in missing if not layout.done_marker(s).exists()]


def _analyzer_label(recipe: Recipe, analyzer) -> str:
    if not recipe.filtering.enabled:
        return ""  # no recogniser judged the images, so the card lists none
    return getattr(analyzer, "name", recipe.filtering.analyzer)


def _attach_log_file(layout: RunLayout, ranks: Ranks) -> None:
    name = "run.log" if ranks.world_size == 1 else f"run.rank{ranks.rank}.log"
    handler = logging.FileHandler(layout.root / name)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    for old in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
        log.removeHandler(old)
        old.close()
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def finalize(recipe: Recipe, layout: RunLayout, *, analyzer_name: str = "") -> dict:
    """Merge shard manifests, judge collisions between identities, write exports and the card."""
    from safetensors.numpy import load_file

    from synthface.export import concat_manifests, write_manifest

    shards = range(num_shards(recipe))
    table = concat_manifests([layout.shard_dir(s) / "manifest.parquet" for s in shards])
    embeddings = np.concatenate([load_file(str(layout.shard_dir(s) / "embeddings.safetensors"))["embeddings"] for s in shards])
    rows = table.to_pylist()
    kept = np.array([r["kept"] for r in rows], dtype=bool)
    reasons = np.array([r["drop_reason"] for r in rows], dtype=object)
    identity = np.array([r["identity"] for r in rows], dtype=np.int64)
    collisions: list[tuple[int, int, float]] = []
    if recipe.filtering.enabled and embeddings.shape[1]:
        from synthface.filtering import class_centres, collision_losers, find_collisions, unit_rows

        labels, inv = np.unique(identity, return_inverse=True)
        _, unit = unit_rows(embeddings)
        centres = class_centres(unit, inv, kept, len(labels))
        pairs = find_collisions(centres, recipe.filtering.collision_cos)
        collisions = [(int(labels[a]), int(labels[b]), float(c)) for a, b, c in pairs]
        if recipe.filtering.collision_policy == "drop" and pairs:
            lose = collision_losers(pairs, len(labels))[inv] & kept
            kept &= ~lose
            reasons[lose] = "collision"
    counts = np.bincount(identity[kept], minlength=recipe.identities.count)
    if recipe.filtering.on_too_few != "keep":
        too_few = (counts < recipe.filtering.min_images)[identity] & kept
        kept &= ~too_few
        reasons[too_few] = "too_few"
        counts = np.bincount(identity[kept], minlength=recipe.identities.count)
    classes = np.flatnonzero(counts)
    label_of = np.full(recipe.identities.count, -1, dtype=np.int64)
    label_of[classes] = np.arange(len(classes))
    for i, row in enumerate(rows):
        row["kept"] = bool(kept[i])
        row["drop_reason"] = "" if kept[i] else reasons[i]
        row["label"] = int(label_of[row["identity"]]) if kept[i] else -1
    write_manifest(layout.root / "manifest.parquet", rows)
    atomic_write_bytes(layout.root / "embeddings.safetensors", safetensors_bytes({"embeddings": embeddings}))

    kept_rows = [r for r in rows if r["kept"]]
    stats = {
        "identities_requested": recipe.identities.count,
        "identities_kept": int(len(classes)),
        "candidates": len(rows),
        "images_kept": len(kept_rows),
        "drop_reasons": {k: int(v) for k, v in zip(*np.unique(reasons[~kept].astype(str), return_counts=True))},
        "collisions": len(collisions),
    }
    export_run(recipe, layout, kept_rows)
    from synthface.export.card import write_card

    write_card(layout.root / "README.md", dataset_card_facts(recipe, layout, stats, analyzer_name))
    if recipe.filtering.enabled:
        from synthface.report import write_report

        write_report(layout.root)  # report.json + report.html: what the set is worth, measured
    atomic_write_bytes(layout.final_done, json.dumps(stats, indent=2).encode())
    log.info("finalized: %s", stats)
    return stats


def export_run(recipe: Recipe, layout: RunLayout, kept_rows: list[dict], formats: Sequence[str] | None = None) -> None:
    """Write each export format from the kept rows of a finished run."""
    from synthface.export import Sample, write_format

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
        write_format(fmt, samples(), layout.root / "export" / fmt, num_classes=num_classes, overwrite=True)


def dataset_card_facts(recipe: Recipe, layout: RunLayout, stats: dict, analyzer_name: str) -> dict:
    run_info = json.loads(layout.run_file.read_text())
    return {
        "name": recipe.name,
        "description": recipe.description,
        "generator": recipe.generation.model,
        "analyzer": analyzer_name,
        "stats": stats,
        "command": run_info.get("command", ""),
        "recipe_toml": recipe.to_toml(),
        "formats": list(recipe.export.formats),
    }
