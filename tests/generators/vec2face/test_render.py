"""Vec2Face through synthface.render: its names and local paths route to its family, its renderer
writes the published scripts' truncated bytes, and it refuses settings it cannot honour."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from synthface import generators as render
from synthface.errors import InvalidInputError
from synthface.generators import Optimizations, RenderSettings, build_renderer, family_for, registry
from synthface.generators.vec2face.family import Vec2FaceFamily

pytestmark = pytest.mark.usefixtures("one_thread")


def conditions(n: int, seed: int = 0) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, 512, generator=gen), dim=1).numpy()


@pytest.fixture(scope="module")
def tiny():
    return build_renderer("vec2face-tiny", device="cpu")


def test_vec2face_names_go_to_its_family():
    for name in ("vec2face", "vec2face-plus", "Vec2Face-Plus-Pose", "vec2face-tiny", "vec2face-plus-tiny"):
        assert isinstance(family_for(name), Vec2FaceFamily), name
    for name in ("arc2face", "tiny", "FoivosPar/Arc2Face"):
        assert family_for(name) is registry.default_family()


def test_local_vec2face_paths_are_claimed_before_the_default(tmp_path):
    published = tmp_path / "hf" / "weights"
    published.mkdir(parents=True)
    (published / "vec2face_generator.pth").write_bytes(b"")
    pose = tmp_path / "plus" / "vec2face_plus"
    pose.mkdir(parents=True)
    (pose / "pose_model.pth").write_bytes(b"")
    converted, arc2face, empty = tmp_path / "converted", tmp_path / "arc2face", tmp_path / "empty"
    for folder, cls in ((converted, "Vec2FacePipeline"), (arc2face, "Arc2FacePipeline")):
        folder.mkdir()
        (folder / "model_index.json").write_text(json.dumps({"_class_name": cls}))
    empty.mkdir()
    (tmp_path / "main_model.pth").write_bytes(b"")
    for path in (tmp_path / "hf", tmp_path / "plus", converted, tmp_path / "main_model.pth"):
        assert isinstance(family_for(path), Vec2FaceFamily), path
    for path in (arc2face, empty, tmp_path / "missing.pth"):
        assert family_for(path) is registry.default_family(), path


def test_a_converted_folder_renders_what_the_name_renders(tiny, tmp_path):
    tiny.pipeline.save_pretrained(tmp_path / "v2f")
    local = build_renderer(tmp_path / "v2f", device="cpu")
    assert isinstance(local.family, Vec2FaceFamily) and local.licence.restricted  # a local path: unknown licence
    cond = conditions(2)
    assert all(np.array_equal(a, b) for a, b in zip(local(cond, [4, 5]), tiny(cond, [4, 5])))


def test_images_are_truncated_as_the_published_scripts_write_them(tiny):
    cond, seeds = conditions(3, seed=1), [7, 8, 9]
    images = tiny(cond, seeds)
    assert tiny.resolution == 112 and [im.shape for im in images] == [(112, 112, 3)] * 3
    published = tiny.pipeline(id_embeds=torch.from_numpy(cond), generator=render.image_generators(seeds),
                              output_type="pil").images  # the scripts' ((x + 1) / 2 * 255) cut to uint8
    assert all(np.array_equal(np.asarray(p), im) for p, im in zip(published, images))
    floats = tiny.pipeline(id_embeds=torch.from_numpy(cond), generator=render.image_generators(seeds),
                           output_type="pt").images
    rounded = np.stack(render.to_uint8(floats)).astype(np.int16)
    difference = rounded - np.stack(images)
    assert set(np.unique(difference)) == {0, 1} and (difference == 1).mean() > 0.3  # about half round up


def test_steps_and_guidance_do_not_apply_and_other_sizes_are_refused(tiny):
    cond = conditions(2, seed=3)
    other = replace(tiny, settings=RenderSettings(steps=1, guidance=0.0, resolution=112))
    assert all(np.array_equal(a, b) for a, b in zip(other(cond, [1, 2]), tiny(cond, [1, 2])))
    with pytest.raises(InvalidInputError, match="Vec2Face renders 112 x 112 images only, got resolution 128"):
        build_renderer(tiny.pipeline, settings=RenderSettings(resolution=128))


def test_optimizations_reach_the_pipeline_or_are_refused(tiny):
    pipe = tiny.pipeline
    build_renderer(pipe, optimizations=Optimizations(attention="sdpa", channels_last=True))
    assert {b.attn.mode for b in pipe.vec2face.attention_blocks()} == {"sdpa"}
    assert pipe.vec2face.im_decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    build_renderer(pipe, optimizations=Optimizations())
    assert {b.attn.mode for b in pipe.vec2face.attention_blocks()} == {"exact"}
    assert pipe.vec2face.im_decoder.conv_in.weight.is_contiguous()
    with pytest.raises(InvalidInputError, match="no VAE"):
        build_renderer(pipe, optimizations=Optimizations(vae_slicing=True))
    with pytest.raises(InvalidInputError, match="attention must be one of"):
        build_renderer(pipe, optimizations=Optimizations(attention="xformers"))


def test_published_names_carry_the_registry_licence():
    from synthface.weights import licence

    assert licence("vec2face").restricted and "academic use only" in licence("vec2face").text


def test_the_family_lists_the_names_its_loader_takes():
    from synthface.generators.vec2face.loading import VEC2FACE_MODELS, VEC2FACE_TINY

    assert set(Vec2FaceFamily.models) == {*VEC2FACE_MODELS, *VEC2FACE_TINY}
    assert set(Vec2FaceFamily.models) <= set(render.generator_names())
    assert all(isinstance(family_for(name), Vec2FaceFamily) for name in Vec2FaceFamily.models)
