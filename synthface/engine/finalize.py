"""Finalize: merge the units, give every identity its verdict, write the manifest, embeddings, exports,
card and report. It never renders: the collision-resampling rounds (`engine.resample`) come before it."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import numpy as np

from synthface.engine.identities import REPLACED_KEY
from synthface.engine.resample import Resampled, resample_collisions
from synthface.errors import EmptyDatasetError, FileFormatError
from synthface.identity.bank import IdentityBank
from synthface.io import atomic_write_bytes, safetensors_bytes
from synthface.recipe import Recipe
from synthface.runfolder import RunLayout, read_run_info

log = logging.getLogger("synthface.engine")


def finalize(recipe: Recipe, layout: RunLayout, bank: IdentityBank, resampled: Resampled | None = None) -> dict:
    """Give every identity its verdict (`filtering.judge_identities`) and write the manifest, embeddings,
    exports, card and report; then mark the run finalized. Returns the run's stats.

    `resampled` is what `resample_collisions` made (None: it is read here, every resampling round it
    needs already rendered). Identities still colliding after the rounds are dropped ("collision");
    with replaced vectors, identities.safetensors then holds the final vectors with REPLACED_KEY in
    its metadata. When no image is kept, EmptyDatasetError (with the drop reasons) is raised after the
    manifest is written, and the run stays unfinished.
    """
    from synthface import filtering
    from synthface.export import write_manifest

    filt = recipe.filtering
    if resampled is None:
        resampled = resample_collisions(recipe, layout, bank)
    rows, embeddings, judging = resampled.rows, resampled.embeddings, resampled.judging
    vectors, replaced, units = resampled.vectors, resampled.replaced, resampled.units

    identity = np.array([r["identity"] for r in rows], dtype=np.int64)
    if filt.attribute_consistency and filt.on_attribute_drift != "keep":
        drop_inconsistent(rows, filt.max_drift_share)
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
    if recipe.identities.balance is not None:
        check_balance(recipe, rows, layout)
    export_run(recipe, layout, kept_rows)
    from synthface.export.card import write_card

    facts = dataset_card_facts(recipe, layout, stats, units)
    if recipe.filtering.attributes:
        facts["attributes"] = attribute_stats(rows)
    write_card(layout.card, facts)
    if judging:
        from synthface.report import write_report

        write_report(layout.root)  # report.json + report.html: what the set is worth, measured
    layout.mark_done(layout.FINALIZE, stats)
    log.info("finalized: %s", stats)
    return stats


def drop_inconsistent(rows: list[dict], max_share: float) -> None:
    """Drop (reason attribute_drift) every kept image of the identities more than `max_share` of whose
    judged images drifted (`synthface.filtering.attributes.inconsistent_identities`), in place."""
    from synthface.filtering.attributes import DRIFT, inconsistent_identities

    lost = set(inconsistent_identities([r["identity"] for r in rows], [r["drop_reason"] for r in rows],
                                       max_share).tolist())
    for row in rows:
        if row["kept"] and row["identity"] in lost:
            row["kept"], row["drop_reason"] = False, DRIFT


def _kept_attributes(rows: list[dict]):
    from synthface.filtering.attributes import identity_attributes

    kept = [r for r in rows if r["kept"]]
    summary = identity_attributes([r["identity"] for r in kept], [r["age"] for r in kept],
                                  [r["gender"] for r in kept], [r["gender_confidence"] for r in kept])
    return kept, summary


def attribute_stats(rows: list[dict]) -> dict:
    """What the card states about who is in the set: kept identities and images per apparent gender, and
    the identities' median ages (`synthface.filtering.attributes`)."""
    from synthface.faces.attributes import GENDERS
    from synthface.filtering.attributes import REPORT_AGE_BINS, group_of

    kept, summary = _kept_attributes(rows)
    ages = summary.median_age[np.isfinite(summary.median_age)]
    age_groups = group_of(summary, "age", REPORT_AGE_BINS)
    return {
        "identities_by_gender": {g: int(np.count_nonzero(summary.gender == g)) for g in GENDERS},
        "images_by_gender": {g: sum(r["gender"] == g for r in kept) for g in GENDERS},
        "identities_by_age": {name: int(np.count_nonzero(age_groups == name)) for name in REPORT_AGE_BINS},
        "median_age": float(np.median(ages)) if ages.size else None,
        "median_age_range": [float(ages.min()), float(ages.max())] if ages.size else None,
    }


def check_balance(recipe: Recipe, rows: list[dict], layout: RunLayout) -> None:
    """identities.balance against the kept identities: a BalanceError naming the first bin off its
    target (and why) when one is, raised after the manifest is written."""
    from synthface.engine.resample import balance_targets
    from synthface.errors import BalanceError
    from synthface.filtering.attributes import balance_report

    _, summary = _kept_attributes(rows)
    status = balance_report(summary, summary.images > 0, *balance_targets(recipe))
    off = [s for s in status if not s.met]
    if not off:
        return
    total = int(np.count_nonzero(summary.images > 0))
    worst = min(off, key=lambda s: s.share - s.target)  # the emptiest bin: the one that could not be filled
    rounds = recipe.filtering.max_rounds
    why = ("it is short: the generator rendered too few identities the attribute analyser judges so, within "
           f"filtering.max_rounds = {rounds} resampling rounds" if worst.share < worst.target else
           "it is over-full and the resampled identities kept landing in it")
    raise BalanceError(
        f"identities.balance could not be met: {worst.describe(total)}; {why}. "
        + ("Other bins off target: " + "; ".join(s.describe(total) for s in off if s is not worst) + ". "
           if len(off) > 1 else "")
        + f"Every identity's images and attributes are in {layout.manifest}. Raise filtering.max_rounds or "
        "identities.count, widen identities.balance.tolerance, or change the target.",
        bin=f"{worst.marginal}={worst.name}",
    )


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
