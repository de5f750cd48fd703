"""What the Vec2Face family declares: one forward pass from an ID vector to a 112 x 112 face."""

from __future__ import annotations

import numpy as np
import torch

from synthface.errors import InvalidInputError
from synthface.generators.base import GeneratorFamily
from synthface.generators.registry import register_family


class Vec2FaceFamily(GeneratorFamily):
    """Vec2Face and Vec2Face+ (`synthface.generators.vec2face.pipeline.Vec2FacePipeline`): one forward pass from an ID
    vector to a 112 x 112 face.

    Names: "vec2face", "vec2face-plus", "vec2face-plus-pose" (the published files), "vec2face-tiny",
    "vec2face-plus-tiny" (random weights, plumbing only), and any local path it `claims`.
    There is no denoising, so `RenderSettings.steps` and `guidance` do not apply and are ignored;
    `resolution` must be None or 112 (the model's only size). Each image draws its mask rate and
    token noise from its own generator (`rng="per_image"`, the generation scripts' mask preset).
    uint8 images are truncated, ((x + 1) / 2 * 255) clipped then cut to an integer, as the published
    scripts write them (HSFace was made so), not rounded as Arc2Face's are.
    Attention: "exact" (the published arithmetic, the default) or "sdpa"; no VAE, so no
    vae_slicing; channels_last applies to the CNN decoder.
    """

    name = "vec2face"
    title = "Vec2Face"
    models = ("vec2face", "vec2face-plus", "vec2face-plus-pose", "vec2face-tiny", "vec2face-plus-tiny")
    random_models = ("vec2face-tiny", "vec2face-plus-tiny")
    aliases = ("vec2face*",)
    options = frozenset({"pose", "attrop"})  # one forward pass: no steps, no guidance, no LCM
    native_size = resolution = 112
    #: Its own Glint360K IResNet-100 first; Arc2Face's arcface.onnx (same kind) when that is missing.
    recognisers = ("vec2face-arcface", "arc2face-arcface")
    test_recognisers = ("arc2face-arcface",)
    pose_models = ("vec2face-plus-pose", "vec2face-plus-tiny")

    def load(self, model, *, device, dtype, allow_download, allow_pickle, pose=False, merge_lora=False):
        """`load_vec2face`; `pose` reads Vec2Face+'s pose checkpoint from its Hugging Face folder,
        `merge_lora` folds the LoRA adapters into the attention weights."""
        from synthface.generators.vec2face.loading import load_vec2face

        if self.is_random(model):
            torch.set_num_threads(1)  # as Arc2Face's tiny model: layers too small to gain from threads
        return load_vec2face(model, device=device, dtype=dtype, allow_download=allow_download,
                             allow_pickle=allow_pickle, pose=pose, merge_lora=merge_lora)

    def accepts(self, pipeline) -> bool:
        from synthface.generators.vec2face.pipeline import Vec2FacePipeline

        return isinstance(pipeline, Vec2FacePipeline)

    def claims(self, path: str) -> bool:
        """A .pth file, a folder in the published Hugging Face layout, or a converted folder whose
        model_index.json names Vec2FacePipeline."""
        import json
        from pathlib import Path

        from synthface.generators.vec2face.loading import VEC2FACE_LAYOUT

        folder = Path(path)
        if folder.is_file():
            return folder.suffix == ".pth"
        if any((folder / file).is_file() for file in VEC2FACE_LAYOUT.values()):
            return True
        try:
            return json.loads((folder / "model_index.json").read_text()).get("_class_name") == "Vec2FacePipeline"
        except (OSError, ValueError, AttributeError):
            return False

    def optimize(self, pipeline, optimizations):
        if optimizations.vae_slicing:
            raise InvalidInputError("Vec2Face has no VAE, so vae_slicing does not apply; leave it off.")
        pipeline.optimize(attention=optimizations.attention or "exact", compile=optimizations.compile)
        layout = torch.channels_last if optimizations.channels_last else torch.contiguous_format
        pipeline.vec2face.im_decoder.to(memory_format=layout)

    def call_kwargs(self, pipeline, settings):
        if settings.resolution not in (None, self.resolution):
            raise InvalidInputError(
                f"Vec2Face renders {self.resolution} x {self.resolution} images only, got resolution "
                f"{settings.resolution}; leave the resolution unset (or {self.resolution})."
            )
        return {"rng": "per_image"}

    def recogniser_conditioner(self, name, path, analyzer, *, allow_pickle, note=""):
        """Its own recogniser (a pickled IResNet-100) through `Vec2FaceConditioner`; arcface.onnx as the default."""
        if name == "vec2face-arcface":
            from synthface.generators.vec2face.conditioning import Vec2FaceConditioner

            return Vec2FaceConditioner(path, allow_pickle=allow_pickle)
        return super().recogniser_conditioner(name, path, analyzer, allow_pickle=allow_pickle, note=note)

    def conditioning_note(self, model, recogniser):
        from synthface.generators.vec2face.conditioning import VEC2FACE_NOTE

        return VEC2FACE_NOTE if recogniser != self.conditioning(model)[0] else ""

    def converted(self, model, *, allow_pickle, pose=False):
        """A published `.pth` (or its folder, or a model name) loaded for `save_pretrained` as a
        safetensors folder; weights that share memory are refused (safetensors cannot store them)."""
        from synthface.generators.vec2face.loading import load_vec2face, refuse_shared_storage

        pipe = load_vec2face(model, allow_pickle=allow_pickle, pose=pose)
        refuse_shared_storage(pipe, model)
        parts = "generator + pose model" if pipe.pose_model is not None else "generator"
        return pipe, f"{parts}, {pipe.vec2face.num_parameters():,} generator parameters"

    def attrop_tools(self):
        """AttrOP for this family's pipelines: the module with `AttrOPConfig`, `AttrOPEstimators`, `attrop`."""
        from synthface.generators.vec2face import attrop

        return attrop

    def takes_poses(self, pipeline) -> bool:
        """Vec2Face+ loaded with its pose model ("vec2face-plus-pose", "vec2face-plus-tiny"); with poses
        the pipeline uses the published pose-control mask preset (`MASK_RATIOS["pose"]`)."""
        return pipeline.pose_model is not None

    def to_uint8(self, images: torch.Tensor) -> list[np.ndarray]:
        """Truncation, as the published scripts write: the same bytes as
        `synthface.generators.vec2face.pipeline.to_uint8` of the decoder output (output_type="pil")."""
        pixels = images.float().mul(255).clamp(0, 255).to(torch.uint8)
        return list(pixels.permute(0, 2, 3, 1).cpu().numpy())


register_family(Vec2FaceFamily)
