"""The identity bank a run renders: sampled once by rank 0 (seed-determined) and, with
`identities.attrop`, its centres optimised once by AttrOP (saved to attrop.safetensors)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from synthface.distributed import Ranks, wait_until
from synthface.errors import FileFormatError, InvalidInputError
from synthface.generators import RendererLike, families
from synthface.identity.bank import IdentityBank, load_bank, load_vectors
from synthface.identity.sample import sample_identities
from synthface.io import atomic_write_bytes, safetensors_bytes
from synthface.recipe import Recipe
from synthface.runfolder import RunLayout
from synthface.seeds import ATTROP_STREAM, derive_seed

log = logging.getLogger("synthface.engine")

#: identities.safetensors metadata after collision resampling: JSON {identity: round its vector was replaced in}.
REPLACED_KEY = "replaced_in_round"


def ensure_identities(recipe: Recipe, layout: RunLayout, ranks: Ranks, *, wait_seconds: float = 3600,
                      renderer: RendererLike | None = None) -> IdentityBank:
    """The bank the shards render: rank 0 samples it once (it is seed-determined) and, with
    `identities.attrop`, optimises its centres once (`attrop_centres`, saved to attrop.safetensors
    before identities.safetensors; `renderer` is the Vec2Face generator it needs); other ranks wait
    for its file, saying every distributed.WAIT_REPORT_SECONDS what they wait for. Once resampling has replaced
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
        wait_until(lambda: [path] if not path.exists() else [], wait_seconds, lambda missing, waited: (
            f"rank {ranks.rank} of {ranks.world_size} is waiting for rank 0 to write {path} ({waited:.0f} s so far); "
            "is rank 0 running?"), logger=log)
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


#: identities.safetensors metadata with AttrOP: JSON {status: count} (per-identity rows: attrop.safetensors).
ATTROP_KEY = "attrop"
#: Per-identity AttrOP outcomes, in attrop.safetensors' `status` metadata (a JSON list, one per identity).
ATTROP_STATUSES = ("converged", "not_converged", "too_close")


def attrop_centres(recipe: Recipe, layout: RunLayout, bank: IdentityBank, renderer: RendererLike | None) -> IdentityBank:
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


def _run_attrop(recipe: Recipe, bank: IdentityBank, renderer: RendererLike | None) -> tuple[np.ndarray, list[dict]]:
    import torch

    cfg = recipe.identities.attrop
    family = getattr(renderer, "family", None)
    if family is None or "attrop" not in family.options:
        takers = [m for f in families() if "attrop" in f.options for m in f.models]
        raise InvalidInputError(
            f"identities.attrop optimises centres through a generator that declares AttrOP, but generation.model = "
            f"{recipe.generation.model!r} does not. Use one that does ({', '.join(repr(m) for m in takers)}) or "
            "remove identities.attrop."
        )
    tools = family.attrop_tools()
    pose = cfg.yaw_target is not None
    estimators = attrop_estimators(cfg.estimators, renderer.device, bank.dim, pose=pose,
                                   allow_pickle=recipe.generation.allow_pickle or None, tools=tools)
    config = tools.AttrOPConfig(lr=cfg.lr, max_steps=cfg.max_steps, max_retries=cfg.max_retries,
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
        result = tools.attrop(renderer.pipeline, rows, rows, estimators, gens, config=config, yaw_target=yaw)
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


def attrop_estimators(name: str, device, dim: int, *, pose: bool = False, allow_pickle: bool | None = None,
                      tools=None):
    """AttrOP's judges. "vec2face": the registry's vec2face-arcface and vec2face-magface iresnet100s
    and, with `pose`, vec2face-6drepnet (`AttrOPEstimators.from_registry`, found locally:
    `synthface models download ...`); all are pickled .pth files, read only on the run's pickle opt-in
    (`allow_pickle`: the recipe's generation.allow_pickle, or SYNTHFACE_ALLOW_PICKLE=1). "tiny":
    fixed random projections of the 8x8-pooled image (plumbing only: they judge nothing about faces,
    and there is no tiny yaw judge, so `pose` is refused).

    `tools` is the AttrOP module of the renderer's family (`GeneratorFamily.attrop_tools`); by default
    that of the first registered family declaring "attrop".

    Raises ModelNotFoundError (a file not installed, naming its download command, or no pickle
    opt-in, naming it), FileFormatError (a damaged file) or InvalidInputError (tiny with `pose`)."""
    import torch

    if tools is None:  # the AttrOP of the (first) family that declares it
        tools = next(f for f in families() if "attrop" in f.options).attrop_tools()
    AttrOPEstimators = tools.AttrOPEstimators

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
