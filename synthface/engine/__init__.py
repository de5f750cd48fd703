"""The dataset engine: recipe -> identities -> shards -> render -> faces -> keep -> write -> resample
-> finalize.

Work is cut into shards of identities (datatrove-style tasks). A shard is written under a
temporary folder, renamed into place, and only then marked done; a rerun skips done shards and
redoes the rest, so a run can be killed at any moment. Every image's seed is derived from (recipe
seed, identity, image index), so the data do not depend on how shards are spread over ranks or on
interruptions. Ranks come from the launcher (`synthface.distributed`); shard i belongs to rank i mod
world size, and rank 0 resamples colliding identities and finalizes once every shard is done.

One module per job: `plan` (which images, which shards), `identities` (the run's bank, AttrOP),
`worker` (a unit's life cycle: render, analyse, filter, write, with the stages overlapped),
`resample` (collision resampling, a stage of its own), `finalize` (merge, verdicts, manifest,
exports, card, report; it never renders) and `runner` (orders them: `run`). The run folder's names,
lock and records are `synthface.runfolder`'s. This package re-exports their public names.
"""

from synthface.distributed import Ranks, ranks_from_environment
from synthface.engine.finalize import dataset_card_facts, export_run, finalize
from synthface.engine.identities import (
    ATTROP_KEY,
    ATTROP_STATUSES,
    REPLACED_KEY,
    attrop_centres,
    attrop_estimators,
    ensure_identities,
)
from synthface.engine.plan import ImageTask, Plan, draw_pose, make_plan, num_shards, plan_identity, shard_identities
from synthface.engine.resample import Resampled, resample_collisions
from synthface.engine.runner import (
    RunSummary,
    build_renderer,
    check_sampler,
    make_analyzer,
    make_attribute_analyzer,
    render_settings,
    resolve_render_device,
    run,
)
from synthface.engine.worker import (
    MAX_IN_FLIGHT,
    Candidate,
    ShardWorker,
    UnitResult,
    UnitWork,
    encode_jpeg,
    encode_png,
    stage_report,
)
from synthface.runfolder import (
    RunLayout,
    check_destination,
    clear_run,
    load_run_recipe,
    lock_run,
    prepare_output,
    read_run_info,
    resample_unit,
    shard_unit,
)
from synthface.seeds import derive_seed

__all__ = [
    "ATTROP_KEY", "ATTROP_STATUSES", "MAX_IN_FLIGHT", "REPLACED_KEY", "Candidate", "ImageTask", "Plan", "Ranks",
    "Resampled", "RunLayout", "RunSummary", "ShardWorker", "UnitResult", "UnitWork", "attrop_centres",
    "attrop_estimators", "build_renderer", "check_destination", "check_sampler", "clear_run", "dataset_card_facts",
    "derive_seed", "draw_pose", "encode_jpeg", "encode_png", "ensure_identities", "export_run", "finalize",
    "load_run_recipe", "lock_run", "make_analyzer", "make_attribute_analyzer", "make_plan", "num_shards", "plan_identity", "prepare_output",
    "ranks_from_environment", "read_run_info", "render_settings", "resample_collisions", "resample_unit",
    "resolve_render_device", "run", "shard_identities", "shard_unit", "stage_report",
]
