"""What the IDiff-Face family declares: latent diffusion on 3 x 32 x 32 VQ-f4 latents, conditioned on
one ElasticFace-Arc embedding, with the published samplers of IDiff-Face, UIFace, IDperturb and NegFaceDiff."""

from __future__ import annotations

import numpy as np
import torch

from synthface.errors import InvalidInputError
from synthface.generators.base import GeneratorFamily
from synthface.generators.registry import register_family

#: The one side it renders: the published scripts resize the 128 x 128 decode to 112 x 112.
IDIFF_SIZE = 112

IDIFF_NOTE = (
    "IDiff-Face models were trained on ElasticFace-Arc R100 embeddings (idiff-elasticface), which is not "
    "installed; this conditions them on Arc2Face's arcface.onnx instead, a recogniser of another training whose "
    "space is not the same, so the likeness will be weaker than the model's own. To condition on its own "
    "recogniser, place the ElasticFace-Arc backbone as `synthface models download idiff-elasticface` describes."
)


class IDiffFaceFamily(GeneratorFamily):
    """IDiff-Face latent diffusion (`synthface.generators.idiff.pipeline.IDiffFacePipeline`): a 216M-parameter
    ConditionalUNet on LDM VQ-f4 latents, conditioned on one unit ElasticFace-Arc R100 embedding.

    Names: "idiff-uiface-casia" (UIFace's CASIA-WebFace model, also IDperturb's), "idiff-ffhq-cpd25" and
    "idiff-ffhq-cpd50" (IDiff-Face's FFHQ models), "negfacediff-casia-cpd25" (NegFaceDiff's CASIA model),
    "idiff-tiny" (random weights, plumbing only), and any local checkpoint or folder it `claims`.
    Settings: `steps` (DDIM steps; the DDPM sampler always takes 1000), `guidance` (diffusers'
    guidance_scale = the original cfg_scale + 1: 2.0 is the published cfg_scale 1.0), and the recipe's
    `generation.sampler` section (`RenderSettings.sampler`): "cfg" (IDperturb's plain guidance, the
    default), "uiface" (UIFace's two stages, `mse_threshold`, `stage_threshold`), "ddpm" (IDiff-Face's
    1000 steps), with NegFaceDiff's negative identities (`negative`, `negative_scale`) passed per image
    by the engine. `resolution` must be None or 112. Each image draws only from its own generator
    (`rng="per_image"`). uint8 images are rounded half up, trunc(x * 255 + 0.5), as torchvision's
    `save_image` writes the published datasets.
    """

    name = "idiff"
    title = "IDiff-Face"
    models = ("idiff-uiface-casia", "idiff-ffhq-cpd25", "idiff-ffhq-cpd50", "negfacediff-casia-cpd25", "idiff-tiny")
    random_models = ("idiff-tiny",)
    aliases = ("idiff*", "uiface*", "idperturb*", "negfacediff*")
    options = frozenset({"steps", "guidance", "sampler", "negatives"})
    native_size = IDIFF_SIZE
    #: Its own ElasticFace-Arc R100 first; Arc2Face's arcface.onnx (another space: noted) when that is missing.
    recognisers = ("idiff-elasticface", "arc2face-arcface")
    test_recognisers = ("arc2face-arcface",)

    def load(self, model, *, device, dtype, allow_download, allow_pickle, first_stage=None):
        """`load_idiff`; `first_stage` is the VQ-f4 decoder file or its folder (None: beside the checkpoint,
        then the `idiff-vq-f4` registry entry)."""
        from synthface.generators.idiff.loading import load_idiff

        if self.is_random(model):
            torch.set_num_threads(1)  # as the other tiny models: layers too small to gain from threads
        return load_idiff(model, first_stage, device=device, dtype=dtype, allow_pickle=allow_pickle,
                          allow_download=allow_download)

    def accepts(self, pipeline) -> bool:
        from synthface.generators.idiff.pipeline import IDiffFacePipeline

        return isinstance(pipeline, IDiffFacePipeline)

    def claims(self, path: str) -> bool:
        """A `.ckpt` file, a folder holding a published diffusion checkpoint (UIFace's
        ema_averaged_model_<step>.ckpt, IDiff-Face's trained_models/<name>/checkpoints/), or a converted
        folder whose model_index.json names IDiffFacePipeline."""
        import json
        from pathlib import Path

        found = Path(path)
        if found.is_file():
            return found.suffix == ".ckpt"
        if any(found.glob("ema_averaged_model*.ckpt")) or (found / "checkpoints" / "ema_averaged_model.ckpt").is_file():
            return True
        try:
            return json.loads((found / "model_index.json").read_text()).get("_class_name") == "IDiffFacePipeline"
        except (OSError, ValueError, AttributeError):
            return False

    def optimize(self, pipeline, optimizations):
        if optimizations.vae_slicing:
            raise InvalidInputError(
                "vae_slicing does not apply to IDiff-Face: its VQ decoder works on 32 x 32 latents and already "
                "decodes in the sampling batch; leave it off."
            )
        if optimizations.attention not in (None, "sdpa"):
            raise InvalidInputError(
                f"IDiff-Face's attention is its own (pre-softmax logits are read and injected by UIFace's sampler), "
                f"so attention={optimizations.attention!r} does not apply; leave it unset."
            )
        layout = torch.channels_last if optimizations.channels_last else torch.contiguous_format
        pipeline.unet.to(memory_format=layout)
        pipeline.vqvae.to(memory_format=layout)
        if optimizations.compile:
            pipeline.unet = torch.compile(pipeline.unet)

    def call_kwargs(self, pipeline, settings):
        if settings.resolution not in (None, IDIFF_SIZE):
            raise InvalidInputError(
                f"IDiff-Face models render {IDIFF_SIZE} x {IDIFF_SIZE} images only (128 x 128 decodes resized as the "
                f"published scripts do), got resolution {settings.resolution}; leave the resolution unset."
            )
        from synthface.generators.idiff.pipeline import SAMPLERS  # the one declaration of the names

        sampler = dict(settings.sampler or {})
        name = sampler.get("name", "cfg")
        if name not in SAMPLERS:
            raise InvalidInputError(
                f"generation.sampler.name = {name!r} is not an IDiff-Face sampler; choose one of {SAMPLERS}: 'cfg' "
                "(IDperturb's DDIM with plain guidance), 'uiface' (UIFace's two stages), 'ddpm' (IDiff-Face's "
                "1000-step DDPM)."
            )
        kwargs = {"num_inference_steps": None if name == "ddpm" else settings.steps,  # DDPM: always all 1000
                  "guidance_scale": settings.guidance, "rng": "per_image", "sampler": name}
        if name == "uiface":
            kwargs.update(mse_threshold=sampler.get("mse_threshold", 0.006),
                          stage_threshold=sampler.get("stage_threshold", 500))
        if sampler.get("negative"):  # the negative takes the empty context's place: w replaces the guidance
            del kwargs["guidance_scale"]
            kwargs.update(negative_scale=sampler.get("negative_scale", 0.5),
                          adaptive_negative=sampler.get("adaptive_negative", False))
        return kwargs

    def negative_kwargs(self, pipeline, negatives):
        """NegFaceDiff's negative identities are the pipeline's `negative_embeds`."""
        return {"negative_embeds": negatives}

    def required_weights(self, model):
        """Its checkpoint, the VQ-f4 first stage, its recogniser (the random model needs none)."""
        groups = super().required_weights(model)
        if groups and not self.is_random(model):
            groups.insert(1 if model in self.models else 0, ("idiff-vq-f4",))
        return groups

    def recogniser_conditioner(self, name, path, analyzer, *, allow_pickle, note=""):
        """ElasticFace-Arc (an IResNet-100 state dict) through `IResNetConditioner`; arcface.onnx as the default."""
        if name == "idiff-elasticface":
            from synthface.generators.conditioning import IResNetConditioner

            return IResNetConditioner(path, name=name, allow_pickle=allow_pickle, note=note,
                                      what="IDiff-Face conditioning recogniser (ElasticFace-Arc R100)")
        return super().recogniser_conditioner(name, path, analyzer, allow_pickle=allow_pickle, note=note)

    def conditioning_note(self, model, recogniser):
        return IDIFF_NOTE if recogniser != self.conditioning(model)[0] else ""

    def converted(self, model, *, allow_pickle, first_stage=None):
        """A published checkpoint (with its first stage) loaded for `save_pretrained` as a safetensors folder."""
        from synthface.generators.idiff.loading import converted_idiff

        return converted_idiff(model, allow_pickle=allow_pickle, first_stage=first_stage)

    def to_uint8(self, images: torch.Tensor) -> list[np.ndarray]:
        """trunc(x * 255 + 0.5) clamped to [0, 255]: torchvision `save_image`'s rounding, as the published
        UIFace and IDperturb datasets were written."""
        pixels = images.float().mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
        return list(pixels.permute(0, 2, 3, 1).cpu().numpy())


register_family(IDiffFaceFamily)
