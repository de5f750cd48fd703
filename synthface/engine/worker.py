"""The unit worker: renders, analyses, filters and writes units of work (a rank's shards, the
collision-resampling rounds), with its stages overlapped, and the image codecs it writes with.

The life cycle of a unit on its rank (`ShardWorker.run_units`), with its stages overlapped:
1. opened when its first batch is rendered: a fresh temporary folder, after removing what an
   earlier attempt left;
2. its batches flow render -> analyse -> write (the device renders batch i+1 while threads analyse
   batch i and encode batch i-1 into the temporary folder), a bounded number of batches in flight;
3. when its last batch is through (the finish stage, a thread of its own) it is judged; identities
   still short of min_images get another round of batches (on_too_few = "resample"), rendered next;
4. finished: kept files moved to their names, the folder renamed into place, then the done record.

The condition vectors are made here (`ShardWorker._render_batch`), from each image's identity vector:
at the image's planned cosine of the recipe's mixture (`synthface.identity.perturb`), or, with
variation.perturbation = "bounded", at a cosine drawn from the image's seed above its identity's
bisector bound (`synthface.identity.bounded`; the bound's rule: `ShardWorker.run_units`). With
generation.sampler.negative, each image also gets its identity's negative (NegFaceDiff), chosen over
the same vectors (`synthface.identity.negatives`), passed to the renderer as `negatives=`.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from synthface.engine.plan import ImageTask, plan_identity, shard_identities
from synthface.errors import InvalidInputError, OutputPathError
from synthface.export.manifest import manifest_row, write_manifest
from synthface.filtering import FilterConfig, ImageVerdicts, filter_candidates, keep_first
from synthface.generators import RendererLike, check_images, model_licence
from synthface.identity.bounded import bounded_perturb, nearest_cosines
from synthface.identity.negatives import negative_indices
from synthface.identity.perturb import perturb
from synthface.io import fsync_tree, safetensors_bytes
from synthface.recipe import Recipe
from synthface.runfolder import RunLayout, shard_unit
from synthface.stages import Stage, StageTimes, run_stages

log = logging.getLogger("synthface.engine")


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
    box: np.ndarray | None = None  # the face's (x0, y0, x1, y1) in the rendered image, None when no face
    attributes: object | None = None  # its `synthface.faces.attributes.Attributes` (filtering.attributes)


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
    batches of that round not yet back at the sink, and when and from which stage times it started;
    `nearest`: under bounded perturbation, each of its identities' cosine to its nearest other identity
    in the vectors it renders from (None otherwise); `negatives`: with generation.sampler.negative, each
    of its identities' negative, a row of those vectors (None otherwise)."""

    job: UnitWork
    tmp: Path
    rounds: int  # the most rounds it may take
    started: float
    times_before: StageTimes
    round: int = 0
    waiting: int = 0
    candidates: list[Candidate] = field(default_factory=list)
    nearest: dict[int, float] | None = None
    negatives: dict[int, int] | None = None


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

    def __init__(self, recipe: Recipe, layout: RunLayout, renderer: RendererLike, analyzer=None, *,
                 max_in_flight: int = MAX_IN_FLIGHT, stage_times: StageTimes | None = None,
                 attribute_analyzer=None):
        if analyzer is not None:
            from synthface.faces import check_analyzer

            check_analyzer(analyzer)
        if max_in_flight < 1:
            raise InvalidInputError(f"max_in_flight must be at least 1 (1 = serial), got {max_in_flight}.")
        self.recipe = recipe
        self.layout = layout
        self.renderer = renderer
        self.analyzer = analyzer
        self.attribute_analyzer = attribute_analyzer  # apparent age and gender, on the analyser's face boxes
        self.max_in_flight = max_in_flight
        self.stage_times = stage_times if stage_times is not None else StageTimes()
        self.images = 0  # rendered by this worker so far (the images of `stage_times`)

    # units -------------------------------------------------------------------

    def run_shard(self, shard: int, vectors: np.ndarray, on_images: Callable[[int], None] | None = None, *,
                  nearest: np.ndarray | None = None) -> UnitResult:
        return self.run_shards([shard], vectors, on_images, nearest=nearest)[0]

    def run_shards(self, shards: Sequence[int], vectors: np.ndarray,
                   on_images: Callable[[int], None] | None = None, *,
                   nearest: np.ndarray | None = None) -> list[UnitResult]:
        """Render `shards` (their first vectors), streamed into each other; see `run_units`."""
        units = [UnitWork(shard_unit(s), list(shard_identities(self.recipe, s)), 0) for s in shards]
        return self.run_units(units, vectors, on_images, nearest=nearest)

    def run_unit(self, unit: str, identities: list[int], vectors: np.ndarray, vector_round: int,
                 on_images: Callable[[int], None] | None = None, *, nearest: np.ndarray | None = None) -> UnitResult:
        return self.run_units([UnitWork(unit, identities, vector_round)], vectors, on_images, nearest=nearest)[0]

    def run_units(self, units: Sequence[UnitWork], vectors: np.ndarray,
                  on_images: Callable[[int], None] | None = None, *,
                  nearest: np.ndarray | None = None) -> list[UnitResult]:
        """Render, analyse, filter and write `units`, each from its identities' rows of `vectors`;
        the results of those finished, in the order they finished.

        Bounded perturbation (variation.perturbation = "bounded") bounds each image by its identity's
        cosine to its nearest other identity *in `vectors`, the set as it stands when the image is
        drawn*. `nearest` gives those cosines for every row of `vectors` (the run's bank passes its
        recorded `IdentityBank.nearest_cos`); None computes them exactly from `vectors` for the
        identities rendered (`synthface.identity.bounded.nearest_cosines`): so a bank without
        recorded cosines, and a collision-resampling round, whose `vectors` hold the replacements
        in place, bound the replaced identities against every other current vector (kept or replaced
        in the same round). Images rendered earlier are not redrawn when a neighbour is replaced (a
        replacement keeps identities.max_cos to every identity, so floor >= sqrt((1 + max_cos) / 2)
        bounds them against every vector a run ever uses).

        NegFaceDiff's negatives (generation.sampler.negative) follow the same rule: each identity's
        negative is the row of `vectors` that `synthface.identity.negatives.negative_indices` picks for
        it over all of `vectors` (the bank for shards, the set with its replacements in place for a
        resampling round), so an image's negative depends on its identity and that set alone, never
        on its batch, shard or rank; the manifest records it as `negative_identity`.

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
                                  self.stage_times.copy(), nearest=self._unit_nearest(job.identities, vectors, nearest),
                                  negatives=self._unit_negatives(job.identities, vectors))
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
            kept_per = Counter(c.task.identity for c, k in zip(state.candidates, verdict.kept) if k)
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

        stages = [Stage("render", lambda w: (w[0], self._render_batch(w[1], vectors, w[0].nearest, w[0].negatives))),
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

    def _unit_nearest(self, identities: list[int], vectors: np.ndarray,
                      nearest: np.ndarray | None) -> dict[int, float] | None:
        """Under bounded perturbation, each of `identities`' nearest cosine in `vectors` (given, or
        computed exactly); None otherwise. See `run_units`."""
        if not self.recipe.variation.is_bounded:
            return None
        if nearest is not None:
            if len(nearest) != len(vectors):
                raise InvalidInputError(f"run_units got {len(nearest)} nearest cosines for {len(vectors)} vectors; pass "
                                        "one per row of vectors (the bank's nearest_cos), or None to compute them.")
            return {i: float(nearest[i]) for i in identities}
        return dict(zip(identities, nearest_cosines(vectors, identities).tolist()))

    def _unit_negatives(self, identities: list[int], vectors: np.ndarray) -> dict[int, int] | None:
        """With generation.sampler.negative, each of `identities`' negative (a row of `vectors`, chosen
        over all of them); None otherwise. See `run_units`."""
        sampler = self.recipe.generation.sampler
        if sampler is None or sampler.negative is None:
            return None
        return dict(zip(identities, negative_indices(vectors, sampler.negative, identities).tolist()))

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

    def _finish(self, state: _OpenUnit, verdict: ImageVerdicts) -> UnitResult:
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
        gen = model_licence(self.recipe.generation.model)
        out = [{"name": self.recipe.generation.model, "role": "generator", "licence": gen.text,
                "restricted": gen.restricted}]
        if self.analyzer is not None:
            a = self.analyzer
            options = ", ".join(f"{k}={v}" for k, v in sorted(self.recipe.filtering.analyzer_options.items()))
            out.append({"name": f"{a.name} ({options})" if options else a.name, "role": "filter / face analysis",
                        "licence": a.license, "restricted": a.license_restricted,
                        "embedding_space": a.embedding_space, "same_person_cos": a.same_person_cos})
        if self.attribute_analyzer is not None:
            a = self.attribute_analyzer
            options = ", ".join(f"{k}={v}" for k, v in sorted(self.recipe.filtering.attribute_analyzer_options.items()))
            out.append({"name": f"{a.name} ({options})" if options else a.name,
                        "role": "apparent " + " and ".join(a.measures), "licence": a.license,
                        "restricted": a.license_restricted})
        return out

    def _render_batch(self, batch: list[ImageTask], vectors: np.ndarray, nearest: dict[int, float] | None = None,
                      negatives: dict[int, int] | None = None):
        """The batch's condition vectors, each from its image's identity vector and seed alone, then
        its images (with each image's target pose and negative identity, when the recipe asks for
        them). Bounded perturbation draws each image's cosine here and records it in the returned
        tasks' `target_cos`; a negative is recorded in their `negative`."""
        centres = vectors[[t.identity for t in batch]]
        seeds = [t.seed for t in batch]
        if self.recipe.variation.is_bounded:
            settings = self.recipe.variation.bounded_settings
            conditions, targets = bounded_perturb(centres, [nearest[t.identity] for t in batch], seeds,
                                                  floor=settings.floor, max_cos=settings.max_cos)
            batch = [replace(t, target_cos=float(c)) for t, c in zip(batch, targets)]
        else:
            targets = np.array([t.target_cos for t in batch])
            conditions = np.where(
                (targets >= 1.0)[:, None], centres, perturb(centres, targets, seed=seeds)
            ).astype(np.float32)
        extra = {}  # a plain renderer is called f(conditions, seeds): engine.run refuses it for poses and negatives
        if self.recipe.variation.pose is not None:
            extra["poses"] = np.array([t.pose for t in batch], dtype=np.float32)
        if negatives is not None:
            batch = [replace(t, negative=negatives[t.identity]) for t in batch]
            extra["negatives"] = vectors[[t.negative for t in batch]].astype(np.float32)
        images = self.renderer(conditions, seeds, **extra)
        return batch, conditions, centres, check_images(images, len(seeds), self.renderer)

    def _analyse(self, batch, conditions, centres, images) -> list[Candidate]:
        from synthface.faces.align import norm_crop

        size = self.recipe.export.crop_size
        keep_full = self.recipe.export.keep_full_images
        cond_cos = np.sum(conditions * centres, axis=1)
        faces = self.analyzer.analyze(images) if self.analyzer is not None else [None] * len(images)
        people = [[None]] * len(images)
        if self.attribute_analyzer is not None:  # on the boxes found above: detection is paid once
            boxes = [[tuple(float(v) for v in found[0].bbox)] if found else [] for found in faces]
            people = [p or [None] for p in self.attribute_analyzer.analyze(images, boxes=boxes)]
        result = []
        for task, cos, image, found, person in zip(batch, cond_cos, images, faces, people):
            face = found[0] if found else None
            if face is not None:
                crop = norm_crop(image, face.kps, size)
                cand = Candidate(task, float(cos), crop, image if keep_full else None, face.embedding,
                                 float(face.det_score), face.kps, face.bbox, person[0])
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

    def _judge(self, candidates: list[Candidate], vectors: np.ndarray) -> ImageVerdicts:
        """The per-image verdicts (filtering's): the best images per identity, or with filtering off
        the first ones. Pose and quality are NaN where no recogniser looked."""
        identity = np.array([c.task.identity for c in candidates], dtype=np.int64)
        if not self.recipe.filtering.enabled:
            return keep_first(identity, self.recipe.variation.images_per_identity)
        measured = {}
        if self.recipe.filtering.attribute_consistency:
            values = [_attribute_values(c.attributes) for c in candidates]
            measured = {name: np.array([v[name] for v in values]) for name in ("age", "gender", "gender_confidence")}
        return filter_candidates(
            identity,
            _stack_embeddings(candidates, self.analyzer.embedding_dim),
            id_vectors=vectors if self._compare_with_id_vectors(vectors) else None,
            det_score=np.array([c.det_score for c in candidates], dtype=np.float32),
            kps=np.stack([c.kps if c.kps is not None else np.full((5, 2), np.nan, np.float32) for c in candidates]),
            **measured,
            config=FilterConfig.from_recipe(self.recipe.filtering, same_person_cos=self.analyzer.same_person_cos,
                                            keep_per_identity=self.recipe.variation.images_per_identity),
        )

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

    def _write_unit(self, unit: str, tmp: Path, candidates: list[Candidate], verdict: ImageVerdicts) -> int:
        """Move the kept candidates' files to their final names, delete the dropped ones, write the
        manifest and embeddings, then rename the folder into place (atomic on POSIX); returns the
        number of kept images."""
        rows = []
        prefix = len(f"{RunLayout.SHARDS}/{unit}/")
        for i, c in enumerate(candidates):
            kept = bool(verdict.kept[i])
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
            yaw, pitch, roll = (float(v) for v in verdict.pose[i])
            planned = {} if c.task.pose is None else {"target_yaw": c.task.pose[0], "target_pitch": c.task.pose[1]}
            if c.task.negative is not None:
                planned["negative_identity"] = c.task.negative
            if self.attribute_analyzer is not None:
                planned.update(_attribute_values(c.attributes))
            rows.append(manifest_row(
                identity=c.task.identity, image=c.task.image, round=c.task.round, vector_round=c.task.vector_round,
                seed=c.task.seed, target_cos=c.task.target_cos, condition_cos=c.condition_cos,
                filter_cos=float(verdict.filter_cos[i]), det_score=c.det_score, yaw=yaw, pitch=pitch, roll=roll,
                quality=float(verdict.quality[i]), kept=kept, drop_reason="" if kept else verdict.reason[i], path=rel,
                unit=unit, **planned,
            ))
        shutil.rmtree(tmp / RunLayout.STAGED)  # the dropped candidates
        write_manifest(tmp / RunLayout.MANIFEST, rows)
        dim = self.analyzer.embedding_dim if self.analyzer is not None else 0
        (tmp / RunLayout.EMBEDDINGS).write_bytes(safetensors_bytes({"embeddings": _stack_embeddings(candidates, dim)}))
        fsync_tree(tmp)
        os.replace(tmp, self.layout.unit_dir(unit))
        return int(np.count_nonzero(verdict.kept))


def _attribute_values(attributes) -> dict:
    """The manifest's attribute columns of one candidate (Attributes' FIELDS; NaN and "" where no face was
    measured)."""
    from synthface.faces.attributes import FIELDS

    if attributes is None:
        return {name: "" if name == "gender" else float("nan") for name in FIELDS}
    return {name: getattr(attributes, name) for name in FIELDS}


def _stack_embeddings(candidates: list[Candidate], dim: int) -> np.ndarray:
    out = np.full((len(candidates), dim), np.nan, dtype=np.float32)
    for i, c in enumerate(candidates):
        if c.embedding is not None:
            out[i] = c.embedding
    return out


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
