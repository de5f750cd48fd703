"""AttrOP (attribute operation) for Vec2Face, bounded: per-sample convergence and hard caps.

The published loop optimises the input vector with Adam (lr 0.1) so that the rendered face keeps
its identity (ArcFace cosine to the class vector), reaches a quality target (the norm of MagFace's
output) and, optionally, a target |yaw|; it retries without a cap until the batch means pass, so
some identities hang forever. Here every sample converges on its own (its row stops moving once
its own checks pass), retries and steps are capped, each sample reports a status, and every
random draw comes from that sample's explicit generator.

Per step, each unconverged sample gets a fresh mask (the pipeline's per-image draw), the image is
clipped to [-1, 1], and loss_i = identity_weight * (1 - cos_i) + max(0, quality_target - q_i) *
quality_scale [+ |yaw_target - |yaw_i|| * pose_scale]. A sample passes when 1 - cos_i <=
max_identity_loss, quality_target - q_i <= max_quality_gap and (with a pose target) the yaw error
is <= max_pose_error degrees. A retry restarts the unconverged samples from their start vector.
The judges are Vec2Face's: iresnet100s for identity and quality, 6DRepNet for yaw
(`synthface.generators.vec2face.pose`, fed BGR in [0, 1] at 112 x 112 as Vec2Face feeds it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from synthface.checks import check_int, check_real
from synthface.errors import InvalidInputError
from synthface.generators._checks import check_id_embeds

#: images (B, 3, 112, 112) RGB in [-1, 1] -> (B, D) features (identity, quality) or (B,) yaw degrees.
Estimator = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AttrOPConfig:
    """Targets, weights and hard caps; the defaults are Vec2Face's (quality target 27)."""

    lr: float = 0.1
    max_steps: int = 20
    max_retries: int = 3
    quality_target: float = 27.0
    max_identity_loss: float = 0.3
    max_quality_gap: float = 1.0
    max_pose_error: float = 5.0
    identity_weight: float = 100.0
    quality_scale: float = 1.0
    pose_scale: float = 1.0


@dataclass(frozen=True)
class AttrOPStatus:
    """One sample's outcome: converged or not, the steps and retries it used, its last checks."""

    converged: bool
    steps: int
    retries: int
    identity_loss: float
    quality: float
    pose_error: float | None


@dataclass
class AttrOPEstimators:
    """The judges: ArcFace-style identity features, MagFace-style quality (norm of the output),
    optional yaw in degrees. `from_state_dicts` builds iresnet100s via synthface.fr.backbones and
    6DRepNet via synthface.generators.vec2face.pose; `from_registry` finds Vec2Face's own files."""

    identity: Estimator
    quality: Estimator
    yaw: Estimator | None = None

    @classmethod
    def from_state_dicts(cls, identity: dict, quality: dict, pose: dict | None = None, *, device="cpu",
                         dtype=torch.float32) -> AttrOPEstimators:
        """IResNets (arcface_torch names, e.g. Vec2Face's arcface-r100-glint360k.pth and
        magface-r100-glint360k.pth) and, with `pose`, 6DRepNet (6DRepNet_300W_LP_AFLW2000.pth, fed as
        Vec2Face feeds it: BGR in [0, 1]) from their state dicts, frozen, in eval mode.

        Raises FileFormatError when a state dict is not the architecture it is given as (naming keys)."""
        from synthface.fr.backbones import backbone_from_state_dict
        from synthface.generators.vec2face.pose import sixdrepnet_from_state_dict

        models = []
        for name, state in (("identity", identity), ("quality", quality)):
            model = backbone_from_state_dict(state, source=f"the AttrOP {name} estimator").to(device, dtype)
            models.append(model.requires_grad_(False))
        yaw = None
        if pose is not None:
            yaw = sixdrepnet_from_state_dict(pose, source="the AttrOP pose estimator").to(device, dtype).yaw
        return cls(identity=models[0], quality=models[1], yaw=yaw)

    @classmethod
    def from_registry(cls, *, pose: bool | None = None, allow_pickle: bool | None = None, device="cpu",
                      dtype=torch.float32) -> AttrOPEstimators:
        """Vec2Face's own judges, found locally through synthface.weights: `vec2face-arcface`,
        `vec2face-magface` and, for the pose term, `vec2face-6drepnet` (pose=True: required;
        None: used when installed; False: not loaded). All are pickled `.pth` files, read with
        torch's weights_only loader on an opt-in only (`allow_pickle`, SYNTHFACE_ALLOW_PICKLE=1).
        Every file is non-commercial (`synthface.weights.licence`).

        Raises:
            ModelNotFoundError: a required file is not installed (the message names the download
                command), or no pickle opt-in was given.
            FileFormatError: a file is damaged or not the published architecture.
        """
        from synthface import weights
        from synthface.errors import ModelNotFoundError
        from synthface.generators.vec2face.pose import read_sixdrepnet_state

        if not weights.pickle_allowed(allow_pickle):  # refused up front, naming both files
            raise weights.pickle_refusal("Vec2Face AttrOP estimators", [Path(weights.spec(m).files[0]).name
                                                                       for m in ("vec2face-arcface", "vec2face-magface")])
        states = [weights.read_pickled_state_dict(weights.find(model), model=model, what=what, allow_pickle=True)
                  for model, what in (("vec2face-arcface", "AttrOP identity estimator (vec2face-arcface)"),
                                      ("vec2face-magface", "AttrOP quality estimator (vec2face-magface)"))]
        pose_state = None
        if pose is not False:
            try:
                pose_file = weights.find("vec2face-6drepnet")
            except ModelNotFoundError:
                if pose:
                    raise
            else:
                pose_state = read_sixdrepnet_state(pose_file, allow_pickle=True)
        return cls.from_state_dicts(*states, pose_state, device=device, dtype=dtype)


@dataclass
class AttrOPResult:
    """images: (B, 3, 112, 112) float32 in [-1, 1] (the last checked image of each sample, or a fresh
    render when `final="fresh"`); vectors: (B, 512) optimised input vectors (at `identity_norm`)."""

    images: torch.Tensor
    vectors: torch.Tensor
    status: list[AttrOPStatus]


def attrop(pipe, id_embeds, class_embeds, estimators: AttrOPEstimators, generator: list[torch.Generator], *,
           config: AttrOPConfig = AttrOPConfig(), identity_norm: float = 22.0, mask_ratio="scripts",
           yaw_target: torch.Tensor | None = None, final: str = "checked") -> AttrOPResult:
    """Optimise B input vectors until each sample's image passes its checks, or its caps run out.

    Args:
        pipe: a `Vec2FacePipeline` (its generator is frozen for the call; gradients flow to the input).
        id_embeds: (B, 512) start vectors (unit rows; scaled to `identity_norm`).
        class_embeds: (B, 512) identity targets for the cosine (the class centres).
        estimators: identity, quality and optional yaw judges.
        generator: one `torch.Generator` per sample: all its masks come from it.
        config: targets, weights and the caps `max_steps` (Adam steps per try) and `max_retries`.
        yaw_target: optional (B,) target |yaw| in degrees (needs `estimators.yaw`).
        final: "checked" returns the image the last check judged; "fresh" renders once more with a
            new mask, as the published code does (that image was never checked).

    Returns an `AttrOPResult`; it always returns after at most max_steps * (max_retries + 1) steps.
    """
    start = check_id_embeds(id_embeds, pipe.id_dim)
    target = torch.nn.functional.normalize(check_id_embeds(class_embeds, pipe.id_dim), dim=1)
    b = start.shape[0]
    _check_attrop_args(config, b, target, generator, yaw_target, estimators, final)
    device, dtype = pipe._execution_device, pipe.vec2face.dtype
    ratio = pipe.check_inputs(start, 1, generator, mask_ratio, identity_norm, "per_image", None, None, "pt")[1]
    start, target = (start * identity_norm).to(device), target.to(device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    vectors, images = start.clone(), torch.zeros(b, 3, 112, 112, device=device)
    steps, retries = [0] * b, [0] * b
    last = [(float("nan"), float("nan"), None)] * b
    requires = [p.requires_grad for p in pipe.vec2face.parameters()]
    pipe.vec2face.requires_grad_(False)
    try:
        for attempt in range(config.max_retries + 1):
            todo = (~done).nonzero().flatten()
            if len(todo) == 0:
                break
            x = start[todo].clone().requires_grad_(True)
            optimiser = torch.optim.Adam([x], lr=config.lr)
            active = torch.ones(len(todo), dtype=torch.bool, device=device)
            for _ in range(config.max_steps):
                rows = todo[active]
                _, mask, drop = pipe.draw_masks(len(rows), ratio, [generator[i] for i in rows.tolist()],
                                                "per_image", device)
                image = pipe.vec2face(x[active].to(dtype), mask, drop).float().clamp(-1, 1)
                loss, id_loss, quality, pose_error = _losses(image, target[rows], estimators, config,
                                                             None if yaw_target is None else yaw_target[rows])
                passed = (id_loss <= config.max_identity_loss) & (config.quality_target - quality <= config.max_quality_gap)
                if pose_error is not None:
                    passed &= pose_error <= config.max_pose_error
                for j, i in enumerate(rows.tolist()):
                    steps[i] += 1
                    retries[i] = attempt
                    last[i] = (float(id_loss[j]), float(quality[j]),
                               None if pose_error is None else float(pose_error[j]))
                images[rows] = image.detach()
                vectors[rows] = x[active].detach()
                done[rows[passed]] = True
                still = active.clone()
                still[active.nonzero().flatten()[passed]] = False
                if not bool(still.any()):
                    break
                optimiser.zero_grad()
                loss[~passed].sum().backward()
                frozen = x.detach()[~still].clone()
                optimiser.step()
                with torch.no_grad():
                    x[~still] = frozen  # converged rows never move again (Adam's momentum included)
                active = still
        if final == "fresh":
            with torch.no_grad():
                _, mask, drop = pipe.draw_masks(b, ratio, generator, "per_image", device)
                images = pipe.vec2face(vectors.to(dtype), mask, drop).float().clamp(-1, 1)
    finally:
        for p, flag in zip(pipe.vec2face.parameters(), requires):
            p.requires_grad_(flag)
    status = [AttrOPStatus(bool(done[i]), steps[i], retries[i], last[i][0], last[i][1], last[i][2]) for i in range(b)]
    return AttrOPResult(images=images.cpu(), vectors=vectors.cpu(), status=status)


def _losses(image, target, estimators, config, yaw_target):
    features = estimators.identity(image)
    id_loss = 1 - torch.nn.functional.cosine_similarity(features.float(), target, dim=1)
    quality = estimators.quality(image).float().norm(dim=1)
    loss = config.identity_weight * id_loss + (config.quality_target - quality).clamp(min=0) * config.quality_scale
    pose_error = None
    if yaw_target is not None:
        pose_error = (yaw_target.to(image.device) - estimators.yaw(image).float().abs()).abs()
        loss = loss + pose_error * config.pose_scale
    return loss, id_loss.detach(), quality.detach(), None if pose_error is None else pose_error.detach()


def _check_attrop_args(config, b, target, generator, yaw_target, estimators, final) -> None:
    check_real("lr", config.lr, 1e-6, 10.0)
    check_int("max_steps", config.max_steps, 1, 10_000, why="a hard cap on Adam steps per try")
    check_int("max_retries", config.max_retries, 0, 100, why="a hard cap on restarts")
    for name in ("quality_target", "max_identity_loss", "max_quality_gap", "max_pose_error", "identity_weight",
                 "quality_scale", "pose_scale"):
        check_real(name, getattr(config, name), 0.0, 1e4)
    if target.shape[0] != b:
        raise InvalidInputError(f"class_embeds has {target.shape[0]} rows for {b} start vectors; pass one per sample.")
    if not isinstance(generator, list) or len(generator) != b or not all(isinstance(g, torch.Generator) for g in generator):
        raise InvalidInputError(f"AttrOP needs one torch.Generator per sample (a list of {b}); every draw comes from it.")
    if yaw_target is not None:
        if estimators.yaw is None:
            raise InvalidInputError("yaw_target needs a yaw estimator (AttrOPEstimators.yaw).")
        if yaw_target.shape != (b,) or not bool(torch.isfinite(yaw_target).all()):
            raise InvalidInputError(f"yaw_target must be {b} finite angles in degrees, got shape {tuple(yaw_target.shape)}.")
    if final not in ("checked", "fresh"):
        raise InvalidInputError(f"final must be 'checked' or 'fresh', got {final!r}.")
