"""What the Arc2Face family declares: SD 1.5 conditioned on ArcFace ID vectors (`Arc2FacePipeline`)."""

from __future__ import annotations

import torch

from synthface.generators.base import GeneratorFamily
from synthface.generators.registry import register_family


class Arc2FaceFamily(GeneratorFamily):
    """Arc2Face (`synthface.generators.arc2face.pipeline.Arc2FacePipeline`): SD 1.5 conditioned on
    ArcFace ID vectors. Names: "arc2face" / "FoivosPar/Arc2Face" (the published weights), "tiny"
    (random weights, plumbing only); it is the default family, so any other local folder or repo id
    in an Arc2Face layout is read by it too. Loading options: `base` (the SD 1.5 base of a published
    layout), `lcm_lora` (an LCM-LoRA to sample with). Attention defaults to PyTorch SDPA; uint8
    images are rounded (`synthface.generators.base.to_uint8`).
    """

    name = "arc2face"
    title = "Arc2Face"
    models = ("arc2face", "tiny")
    random_models = ("tiny",)
    aliases = ("foivospar/arc2face",)
    catch_all = True
    options = frozenset({"steps", "guidance", "lcm"})
    recognisers = ("arc2face-arcface",)
    lcm_lora = "lcm-lora-sdv15"

    def load(self, model, *, device, dtype, allow_download, allow_pickle, base=None, lcm_lora=None):
        """`load_arc2face`, then the LCM-LoRA when `lcm_lora` names one (folder, file or repo id)."""
        from synthface.generators.arc2face.loading import load_arc2face

        if self.is_random(model):
            # The tiny model's layers are far too small to gain from threads; on few cores the thread
            # hand-off costs more than the work (measured on a busy 2-core machine: ~1 s per call with 2
            # threads, ~0.04 s with 1).
            torch.set_num_threads(1)
        pipe = load_arc2face(model, dtype=dtype, device=device, allow_download=allow_download, base=base,
                             allow_pickle=allow_pickle)
        if lcm_lora:
            pipe.use_lcm(lcm_lora, allow_pickle=allow_pickle)
        return pipe

    def accepts(self, pipeline) -> bool:
        from synthface.generators.arc2face.pipeline import Arc2FacePipeline

        return isinstance(pipeline, Arc2FacePipeline)

    def optimize(self, pipeline, optimizations):
        pipeline.optimize(attention=optimizations.attention or "sdpa", compile=optimizations.compile,
                          vae_slicing=optimizations.vae_slicing)
        layout = torch.channels_last if optimizations.channels_last else torch.contiguous_format
        pipeline.unet.to(memory_format=layout)
        pipeline.vae.to(memory_format=layout)

    def call_kwargs(self, pipeline, settings):
        return {"num_inference_steps": settings.steps, "guidance_scale": settings.guidance,
                "height": settings.resolution, "width": settings.resolution}

    def native_resolution(self, pipeline) -> int:
        return int(pipeline.unet.config.sample_size * pipeline.vae_scale_factor)

    def required_weights(self, model):
        """Its own files, SD 1.5's VAE, tokenizer and scheduler for the published model, its recogniser."""
        groups = super().required_weights(model)
        if model == "arc2face":
            groups.insert(1, ("sd15",))
        return groups


register_family(Arc2FaceFamily)
