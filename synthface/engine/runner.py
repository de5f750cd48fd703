"""The run: orders the stages of a dataset (identities -> shards -> resample -> finalize) on each rank,
with the folder locked, and decides what a rerun redoes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from synthface.distributed import Ranks, wait_until
from synthface.engine.finalize import finalize
from synthface.engine.identities import ensure_identities
from synthface.engine.plan import num_shards, shard_identities
from synthface.engine.resample import resample_collisions, resample_units_done
from synthface.engine.worker import MAX_IN_FLIGHT, ShardWorker, stage_report
from synthface.errors import FileFormatError, InvalidInputError, OutputPathError, RunInterruptedError, SynthfaceError
from synthface.generators import RendererLike, renderer_name
from synthface.io import check_output_folder, output_errors
from synthface.recipe import Recipe
from synthface.runfolder import RunLayout, check_destination, lock_run, prepare_output, unit_name
from synthface.stages import StageTimes

log = logging.getLogger("synthface.engine")


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
    renderer: RendererLike | None = None,
    analyzer=None,
    progress=None,
    command: str = "",
    wait_seconds: float = 7 * 24 * 3600,
    max_in_flight: int = MAX_IN_FLIGHT,
) -> RunSummary:
    """Make (or resume) the dataset of `recipe` in `out_dir`; see `synthface.engine`'s docstring.

    `renderer` (a `synthface.generators.Renderer`, or any callable `f(conditions, seeds) -> list of HxWx3 uint8
    arrays`) and `analyzer` default to the recipe's model and face analyser. `progress` is an
    object with `start(total_images, stage_times)`, `advance(images)` and `stop()` (the CLI passes a
    rich bar; `stage_times` is the live `StageTimes` of the render/analyse/write stages).
    `max_in_flight` bounds the batches between rendering and writing (1: the serial engine; the
    files are the same either way).
    Ranks, the device and the destination are checked before anything is written, and so is a
    generator that cannot follow the recipe (poses, [generation.sampler], negatives: `check_sampler`);
    the folder is locked for the whole run (`lock_run`). Shards whose files were damaged are redone; a run that
    keeps no image raises EmptyDatasetError after writing the manifest that says why.
    """
    ranks = ranks or Ranks()
    layout = RunLayout(check_output_folder(out_dir, what="run folder"))
    check_destination(layout)
    # built before anything is rendered or written: a missing extra refuses with nothing left behind
    attribute_analyzer = make_attribute_analyzer(recipe) if recipe.filtering.attributes else None
    if renderer is None:
        resolve_render_device(recipe, ranks)  # a device this machine lacks is refused before the folder exists
        check_sampler(recipe, None)  # so is a family without the recipe's sampler (its declarations say)
        if (recipe.variation.pose is not None or recipe.identities.attrop is not None
                or recipe.generation.sampler is not None):
            # loaded to find out: a generator without pose control, a sampler name its pipeline lacks
            renderer = build_renderer(recipe, ranks)
    elif not callable(renderer):
        raise InvalidInputError(
            f"engine.run(renderer=...) takes a callable f(conditions, seeds) -> list of (H, W, 3) uint8 arrays or a "
            f"synthface.generators.Renderer, got {type(renderer).__name__}. Pass the function itself (not its "
            "result), or leave renderer out to render with the recipe's generation.model."
        )
    if recipe.variation.pose is not None:
        require = getattr(renderer, "require_poses", None)
        if require is None:
            raise InvalidInputError(
                f"The recipe sets variation.pose, but the renderer {renderer_name(renderer)} is a plain function, "
                "which takes no poses (a plain renderer is called as f(conditions, seeds)). Remove variation.pose, "
                "or pass a synthface.generators.Renderer of a family that declares \"pose\"."
            )
        require(f"The recipe sets variation.pose, but generation.model = {recipe.generation.model!r}")
    check_sampler(recipe, renderer)
    with _resumable_interrupt(), output_errors(layout.root, action="write into the run folder"), \
            lock_run(layout, ranks, command):
        prepare_output(recipe, layout.root, overwrite=overwrite and ranks.rank == 0, command=command)
        _attach_log_file(layout, ranks)
        bank = ensure_identities(recipe, layout, ranks, wait_seconds=min(wait_seconds, 3600), renderer=renderer)
        mine = ranks.mine(num_shards(recipe))
        todo = layout.incomplete(mine)
        log.info("rank %d/%d: %d shards, %d already done", ranks.rank, ranks.world_size, len(mine), len(mine) - len(todo))
        worker, times = None, StageTimes()

        def get_worker() -> ShardWorker:
            nonlocal worker, analyzer
            if analyzer is None and recipe.filtering.enabled:
                analyzer = make_analyzer(recipe)
            worker = worker or ShardWorker(recipe, layout, renderer or build_renderer(recipe, ranks), analyzer,
                                           max_in_flight=max_in_flight, stage_times=times,
                                           attribute_analyzer=attribute_analyzer)
            return worker

        def render(shards: list[int]) -> None:
            total = sum(len(shard_identities(recipe, s)) for s in shards) * recipe.variation.candidates_per_identity
            if progress:
                progress.start(total, times)
            try:
                get_worker().run_shards(shards, bank.vectors, on_images=progress.advance if progress else None,
                                        nearest=bank.nearest_cos)
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
        damaged = damaged_units(layout, [*range(num_shards(recipe)), *resample_units_done(recipe, layout)])
        if damaged:
            for unit in damaged:
                layout.done_marker(unit).unlink(missing_ok=True)
            listing = "; ".join(f"{unit_name(u)}: {why}" for u, why in list(damaged.items())[:3])
            if ranks.world_size > 1 and any(isinstance(u, int) for u in damaged):
                raise FileFormatError(
                    f"{len(damaged)} finished unit(s) of {layout.root} were damaged ({listing}); their done markers "
                    "were removed. Run the same command again (all ranks) and they are redone."
                )
            log.warning("redoing %d damaged unit(s): %s", len(damaged), listing)
            shards = sorted(u for u in damaged if isinstance(u, int))
            render(shards)  # damaged resampling rounds are redone by resample_collisions
            todo = sorted(set(todo) | set(shards))
            skipped = sorted(set(skipped) - set(shards))
        resampled = resample_collisions(recipe, layout, bank, worker=get_worker)  # renders its rounds
        stats = finalize(recipe, layout, bank, resampled)  # never renders
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
    return _built(get_analyzer, cfg.analyzer, cfg.analyzer_options, "analyzer_options", "analyser",
                  " the analyser's keyword arguments are listed in the README under 'Face analysis'.")


def make_attribute_analyzer(recipe: Recipe):
    """The recipe's attribute analyser (filtering.attribute_analyzer, built with its options); options it
    does not take are an InvalidInputError naming them, a missing extra the backend's own SynthfaceError."""
    from synthface.faces.attributes import get_attribute_analyzer

    cfg = recipe.filtering
    return _built(get_attribute_analyzer, cfg.attribute_analyzer, cfg.attribute_analyzer_options,
                  "attribute_analyzer_options", "attribute analyser")


def _built(factory, name: str, options: dict, field: str, what: str, where: str = ""):
    """`factory(name, **options)`; a TypeError (an option the backend does not take) is an InvalidInputError."""
    try:
        return factory(name, **options)
    except TypeError as exc:
        raise InvalidInputError(
            f"filtering.{field} {options} do not fit the {name!r} {what} ({exc}). Remove or rename the option;"
            + (where or " the option names are the backend's keyword arguments.")
        ) from None


def resolve_render_device(recipe: Recipe, ranks: Ranks):
    """The torch device this rank renders on: "auto" is this rank's GPU (LOCAL_RANK) or the CPU; any
    other name must exist here, else InvalidInputError (see synthface.devices)."""

    from synthface.devices import resolve_device

    try:
        return resolve_device(recipe.generation.device, local_rank=ranks.local_rank)
    except InvalidInputError as exc:
        raise InvalidInputError(f"generation.device: {exc} In a recipe: --set generation.device=auto.") from None


def render_settings(recipe: Recipe):
    """What the recipe asks of each render call (`synthface.generators.RenderSettings`): generation's
    steps, guidance and resolution, and its [generation.sampler] section as a mapping (None unset)."""
    from synthface.generators import RenderSettings

    gen = recipe.generation
    return RenderSettings(gen.steps, gen.guidance, gen.resolution,
                          sampler=gen.sampler.settings() if gen.sampler is not None else None)


def check_sampler(recipe: Recipe, renderer: RendererLike | None) -> None:
    """Refuse, in one paragraph, a [generation.sampler] section the generator cannot follow: its family
    (the renderer's, or with None the recipe's generation.model's, from declarations alone) must declare
    "sampler", and with a negative also "negatives"; a plain function takes no negatives."""
    from synthface.generators import Renderer, families_with, family_for

    sampler = recipe.generation.sampler
    if sampler is None:
        return
    negative = f"generation.sampler.negative = {sampler.negative!r} (NegFaceDiff's negative identities)"
    if renderer is not None and not isinstance(renderer, Renderer):
        if sampler.negative is not None:
            raise InvalidInputError(
                f"The recipe sets {negative}, but the renderer {renderer_name(renderer)} is a plain function, which "
                "takes no negatives (a plain renderer is called as f(conditions, seeds)). Remove negative, or pass a "
                f"synthface.generators.Renderer of a family that takes them ({families_with('negatives')})."
            )
        return
    family = family_for(recipe.generation.model) if renderer is None else renderer.family
    who = (f"generation.model = {recipe.generation.model!r}" if renderer is None else renderer_name(renderer)) + \
        f" renders with the {family.display_name} family"
    if "sampler" not in family.options:
        raise InvalidInputError(
            f"The recipe sets [generation.sampler] (name = {sampler.name!r}), but {who}, which offers no choice "
            f"of denoising procedure. Use a model of a family that does ({families_with('sampler')}), or "
            "remove the [generation.sampler] section."
        )
    if sampler.negative is not None and "negatives" not in family.options:
        raise InvalidInputError(
            f"The recipe sets {negative}, but {who}, which takes none. Use a model of a family that takes "
            f"them ({families_with('negatives')}), or remove negative."
        )


def build_renderer(recipe: Recipe, ranks: Ranks) -> RendererLike:
    """The recipe's generator as a `synthface.generators.Renderer` on this rank's device
    (`resolve_render_device`), with the recipe's settings (`render_settings`) and speed settings
    (`compute.attention`, `compute.channels_last`, `compute.compile`)."""
    from synthface.generators import Optimizations
    from synthface.generators import build_renderer as render_build

    gen, compute = recipe.generation, recipe.compute
    return render_build(
        gen.model,
        settings=render_settings(recipe),
        device=resolve_render_device(recipe, ranks),
        dtype=gen.dtype,
        optimizations=Optimizations(attention=compute.attention, channels_last=compute.channels_last,
                                    compile=compute.compile),
        allow_pickle=gen.allow_pickle or None,
    )



def _wait_for_shards(recipe: Recipe, layout: RunLayout, ranks: Ranks, wait_seconds: float) -> None:
    """Rank 0 waits for the other ranks' shards, naming them while it waits."""
    pending = layout.incomplete(range(num_shards(recipe)))

    def missing() -> list[int]:
        pending[:] = layout.incomplete(pending)
        return pending

    wait_until(missing, wait_seconds, lambda left, waited: (
        f"rank 0 is waiting for {len(left)} shard(s) of other ranks (first: {layout.done_marker(left[0])}, rank "
        f"{ranks.owner(left[0])} of {ranks.world_size}) for {waited:.0f} s; are all ranks running?"), logger=log)


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
