"""The IDiff-Face family's render hook-up: the recipe's [generation.sampler] mapping to the pipeline's
arguments (`call_kwargs`), the sampler names checked against the pipeline's SAMPLERS when a renderer
is built, and each image's negative identity (`negatives=`) reaching the pipeline as negative_embeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthface.errors import InvalidInputError
from synthface.generators import RenderSettings, build_renderer, family_for
from synthface.generators.idiff.family import IDiffFaceFamily
from synthface.generators.idiff.pipeline import SAMPLERS, IDiffFacePipeline
from synthface.generators.idiff.scheduler import IDiffDDIMScheduler
from synthface.generators.idiff.tiny import tiny_unet, tiny_vqmodel
from synthface.recipe import SamplerConfig

pytestmark = pytest.mark.usefixtures("one_thread")


class SpyPipeline(IDiffFacePipeline):
    """The tiny pipeline, keeping the keyword arguments of its last call."""

    def __call__(self, id_embeds, **kwargs):
        self.last = kwargs
        return super().__call__(id_embeds, **kwargs)


@pytest.fixture(scope="module")
def pipe():
    return SpyPipeline(tiny_unet(), tiny_vqmodel(), IDiffDDIMScheduler(), latent_size=8)


def ids(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, 512)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def kwargs_for(**sampler) -> dict:
    settings = RenderSettings(steps=7, guidance=2.5, sampler=SamplerConfig(**sampler).settings() if sampler else None)
    return family_for("idiff-anything").call_kwargs(None, settings)


def test_the_recipe_section_maps_onto_the_pipeline_s_arguments():
    assert isinstance(family_for("uiface-casia"), IDiffFaceFamily)
    plain = {"num_inference_steps": 7, "guidance_scale": 2.5, "rng": "per_image", "sampler": "cfg"}
    assert kwargs_for() == plain == kwargs_for(name="cfg")
    assert kwargs_for(name="uiface", mse_threshold=0.01, stage_threshold=600) == {
        **plain, "sampler": "uiface", "mse_threshold": 0.01, "stage_threshold": 600}
    assert kwargs_for(name="ddpm") == {**plain, "sampler": "ddpm", "num_inference_steps": None}  # always all 1000
    negative = kwargs_for(negative="far", negative_scale=0.75, adaptive_negative=True)
    assert negative == {"num_inference_steps": 7, "rng": "per_image", "sampler": "cfg", "negative_scale": 0.75,
                        "adaptive_negative": True}  # w in the guidance's place: the pipeline takes one of them


@pytest.mark.parametrize("name", ["dpm", "UIFACE", "negative"])
def test_a_sampler_the_pipeline_lacks_is_refused_when_the_renderer_is_built(pipe, name):
    with pytest.raises(InvalidInputError) as info:
        build_renderer(pipe, settings=RenderSettings(sampler={"name": name}))
    assert str(info.value).startswith(f"generation.sampler.name = {name!r} is not an IDiff-Face sampler; choose one of "
                                      f"{SAMPLERS}")
    assert SAMPLERS == ("cfg", "uiface", "ddpm")


def test_negatives_reach_the_pipeline_as_negative_embeds_and_steer_the_images(pipe):
    settings = RenderSettings(steps=2, sampler=SamplerConfig(negative="far", negative_scale=1.0).settings())
    renderer = build_renderer(pipe, settings=settings)
    assert renderer.takes_negatives
    c, negatives = ids(3), ids(3, seed=1)
    images = renderer(c, [0, 1, 2], negatives=negatives)
    assert torch.equal(pipe.last["negative_embeds"], torch.from_numpy(negatives))
    assert (pipe.last["negative_scale"], pipe.last["sampler"]) == (1.0, "cfg") and "guidance_scale" not in pipe.last
    # w = 1 with the negative in the empty context's place is the pipeline's own negative guidance ...
    direct = pipe(torch.from_numpy(c), generator=[torch.Generator().manual_seed(s) for s in (0, 1, 2)], num_inference_steps=2,
                  negative_embeds=torch.from_numpy(negatives), negative_scale=1.0).images
    assert all(np.array_equal(a, b) for a, b in zip(images, renderer.family.to_uint8(direct)))
    # ... and another negative is another image
    other = renderer(c, [0, 1, 2], negatives=negatives[::-1].copy())
    assert all(not np.array_equal(a, b) for a, b in zip(images[:1] + images[2:], other[:1] + other[2:]))
    assert np.array_equal(images[1], other[1])  # the middle row kept its negative


def test_negatives_are_asked_for_by_the_settings_and_given_per_image(pipe):
    renderer = build_renderer(pipe, settings=RenderSettings(steps=2, sampler=SamplerConfig(negative="close").settings()))
    with pytest.raises(InvalidInputError, match=r"settings ask for NegFaceDiff's negative guidance \(sampler negative = "
                       r"'close'\), but the render call passes no negatives: pass negatives="):
        renderer(ids(2), [0, 1])
    for bad in (ids(1), ids(3), ids(2)[0], [[0.0] * 512] * 2):
        with pytest.raises(InvalidInputError, match="Render negatives must be a \\(B, D\\) array, one negative identity "
                           "per image \\(2 here\\)"):
            renderer(ids(2), [0, 1], negatives=bad)
