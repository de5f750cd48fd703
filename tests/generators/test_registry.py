"""synthface.render: one renderer for every caller, byte-identical to the engine's, and its registry."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from synthface import generators as render
from synthface.errors import InvalidInputError
from synthface.generators import registry
from synthface.render import GeneratorFamily, Optimizations, RenderSettings, build_renderer, family_for

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread (tests/conftest.py)

REPO = Path(__file__).resolve().parents[2]
SETTINGS = RenderSettings(steps=2, guidance=3.0)


def conditions(n: int, seed: int = 0) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, 512, generator=gen), dim=1).numpy()


@pytest.fixture(scope="module")
def tiny():
    return build_renderer("tiny", settings=SETTINGS, device="cpu")


def test_renderer_from_name_matches_the_engines_renderer_byte_for_byte(tiny):
    from synthface import engine
    from synthface.recipe import load_recipe

    recipe = load_recipe(REPO / "pipelines" / "smoke.toml", ["generation.steps=2"])
    cond, seeds = conditions(3), [11, 12, 13]
    expected = engine.build_renderer(recipe, engine.Ranks())(cond, seeds)
    got = tiny(cond, seeds)
    assert len(got) == 3 and all(g.dtype == np.uint8 and g.shape == (32, 32, 3) for g in got)
    assert all(np.array_equal(g, e) for g, e in zip(got, expected))
    assert len({g.tobytes() for g in got}) == 3  # three seeds, three different images


def test_renderer_from_a_pipeline_equals_the_one_from_its_name(tiny):
    from synthface.generators.arc2face.tiny import tiny_arc2face_pipeline

    from_pipe = build_renderer(tiny_arc2face_pipeline(), settings=SETTINGS, optimizations=Optimizations())
    cond, seeds = conditions(2, seed=1), [5, 6]
    assert all(np.array_equal(a, b) for a, b in zip(from_pipe(cond, seeds), tiny(cond, seeds)))
    # A pipeline object renders under its family's name (and licence) unless it is named.
    assert (from_pipe.name, from_pipe.family.name, tiny.name) == ("arc2face", "arc2face", "tiny")
    assert from_pipe.licence.restricted and not tiny.licence.restricted


def test_renderer_facts(tiny):
    assert (tiny.device, tiny.dtype, tiny.resolution) == (torch.device("cpu"), torch.float32, 32)
    assert tiny.family is family_for("tiny") and tiny.family.name == "arc2face"
    assert tiny.licence.text.startswith("random weights")
    # Other call settings on the same pipeline: a 16-pixel render, nothing loaded again.
    from dataclasses import replace

    small = replace(tiny, settings=RenderSettings(steps=2, resolution=16))
    assert small.pipeline is tiny.pipeline and small.resolution == 16
    assert small(conditions(1), [3])[0].shape == (16, 16, 3)


def test_an_image_depends_on_its_seed_and_condition_only(tiny):
    cond, seeds = conditions(3, seed=2), [21, 22, 23]
    batch = tiny(cond, seeds)
    alone = tiny(cond[1:2], seeds[1:2])[0]
    # batched convolutions may round differently: at most one grey level apart
    assert np.abs(batch[1].astype(np.int16) - alone.astype(np.int16)).max() <= 1
    assert np.array_equal(tiny(cond[1:2], seeds[1:2])[0], alone)  # and exactly reproducible


def test_to_uint8_is_numpys_rint_clip_on_every_boundary():
    values = np.concatenate([
        (np.arange(256, dtype=np.float32) + 0.5) / 255,  # exact halves round to even
        np.arange(256, dtype=np.float32) / 255,
        np.random.default_rng(0).random(4096, dtype=np.float32),
        np.array([0.0, 1.0, np.nextafter(np.float32(1), np.float32(2)), -1e-7], dtype=np.float32),
    ])
    values = np.resize(values, (2, 3, 16, -(-values.size // 96)))  # every value, then repeats to fill
    expected = [np.clip(np.rint(im * 255), 0, 255).astype(np.uint8) for im in values.transpose(0, 2, 3, 1)]
    got = render.to_uint8(torch.from_numpy(values))
    assert all(np.array_equal(g, e) for g, e in zip(got, expected))


def test_dtype_resolution(caplog):
    cpu = torch.device("cpu")
    with caplog.at_level(logging.WARNING, logger="synthface.render"):
        assert render.resolve_dtype("fp16", cpu) == torch.float32
    assert "fp16 is slow and imprecise on CPU" in caplog.text
    assert render.resolve_dtype("bf16", cpu) == torch.bfloat16
    assert render.resolve_dtype(torch.float16, torch.device("cuda")) == torch.float16
    with pytest.raises(InvalidInputError, match="Unknown dtype 'fp8'.*fp32, fp16, bf16"):
        render.resolve_dtype("fp8", cpu)
    with pytest.raises(InvalidInputError, match="Unsupported dtype torch.int8"):
        render.resolve_dtype(torch.int8, cpu)


def test_fp16_on_cpu_renders_in_fp32_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="synthface.render"):
        renderer = build_renderer("tiny", settings=SETTINGS, device="cpu", dtype="fp16")
    assert renderer.dtype == torch.float32 and "rendering in fp32 instead" in caplog.text


def test_per_image_generators_draw_what_the_seed_alone_draws():
    gens = render.image_generators([7, 7, 8])
    draws = [torch.randn(4, generator=g) for g in gens]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert torch.equal(draws[2], torch.randn(4, generator=torch.Generator().manual_seed(8)))
    assert all(g.device == torch.device("cpu") for g in gens)


class StubFamily(GeneratorFamily):
    def __init__(self, name):
        self.name = name

    def accepts(self, pipeline) -> bool:
        return getattr(pipeline, "family", None) == self.name


def test_registry_routes_names_prefixes_and_pipelines(monkeypatch):
    # Stubs in place of the real Vec2Face family (tests/test_vec2face_render.py tests that one).
    registry.families()  # the built-in families registered first
    monkeypatch.setattr(registry, "_FAMILIES", {k: v for k, v in registry._FAMILIES.items() if not k.startswith("vec2face")})
    vec, plus = StubFamily("vec2face"), StubFamily("vec2face-plus")
    registry.register_generator("vec2face*", vec)
    registry.register_generator("Vec2Face-Plus*", plus)
    registry.register_generator("vec2face-special", plus)
    assert family_for("vec2face-tiny") is vec and family_for("VEC2FACE") is vec
    assert family_for("vec2face-plus-tiny") is plus  # the longest prefix wins
    assert family_for("vec2face-special") is plus  # an exact name beats a prefix
    for other in ("arc2face", "tiny", "FoivosPar/Arc2Face", "/data/models/my-arc2face", "someone/some-model"):
        assert family_for(other) is registry.default_family()
    registry.register_generator("vec2face*", vec)  # the same again is fine
    with pytest.raises(InvalidInputError, match="'tiny' already belongs to the 'arc2face' generator family"):
        registry.register_generator("tiny", vec)
    with pytest.raises(InvalidInputError, match="name prefix ending in"):
        registry.register_generator("*", vec)

    class Pipe:
        family = "vec2face-plus"

    assert registry.family_of_pipeline(Pipe()) is plus
    with pytest.raises(InvalidInputError, match="No generator family renders a list; the registered families are "
                                                "arc2face, idiff, vec2face, vec2face-plus"):
        registry.family_of_pipeline([])


def test_families_with_an_option_are_named_from_their_declarations(monkeypatch):
    class Named(GeneratorFamily):
        def __init__(self, title, options, models=(), random_models=(), aliases=()):
            self.title, self.options, self.models = title, frozenset(options), models
            self.random_models, self.aliases = random_models, aliases

    found = [Named("Disc", {"negatives"}, ("disc-a", "disc-b", "disc-tiny"), ("disc-tiny",)),
             Named("Cone", {"negatives", "sampler"}, aliases=("cone*", "kegel*", "pointy")),
             Named("Flat", {"steps"}, ("flat",)), Named("Lone", {"negatives"}, aliases=("lone*",))]
    monkeypatch.setattr(registry, "families", lambda: found)
    assert registry.families_with("negatives") == ("Disc: 'disc-a', 'disc-b'; 'disc-tiny' for plumbing tests; Cone: "
                                                   "names starting 'cone' or 'kegel'; 'pointy'; Lone: names starting "
                                                   "'lone'")
    assert registry.families_with("sampler") == "Cone: names starting 'cone' or 'kegel'; 'pointy'"
    assert registry.families_with("lcm") == "none is installed"


def test_options_a_family_does_not_take_are_refused():
    with pytest.raises(InvalidInputError, match="'arc2face' generator family does not take the option.*pose"):
        build_renderer("tiny", device="cpu", pose=True)
    from synthface.generators.arc2face.tiny import tiny_arc2face_pipeline

    with pytest.raises(InvalidInputError, match="lcm_lora apply to a model name"):
        build_renderer(tiny_arc2face_pipeline(), lcm_lora="lcm")


def test_optimizations_reach_the_pipeline():
    from synthface.generators.arc2face.tiny import tiny_arc2face_pipeline

    pipe = tiny_arc2face_pipeline()
    build_renderer(pipe, optimizations=Optimizations(channels_last=True, vae_slicing=True))
    conv = pipe.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert pipe.vae.use_slicing
    build_renderer(pipe, optimizations=Optimizations())
    assert pipe.unet.conv_in.weight.is_contiguous()
    with pytest.raises(InvalidInputError, match="attention must be"):
        build_renderer(pipe, optimizations=Optimizations(attention="flash"))


def test_tiny_models_are_what_the_families_declare():
    from synthface.generators import families
    from synthface.generators.testing import tiny_models

    declared = [(f.name, m) for f in families() for m in f.random_models]
    assert tiny_models() == declared and ("arc2face", "tiny") in declared and ("vec2face", "vec2face-tiny") in declared


def test_the_old_import_paths_are_the_new_modules():
    import synthface
    import synthface.demo_page
    import synthface.pipelines
    import synthface.pipelines.vec2face_attrop
    import synthface.pipelines.vec2face_pose
    import synthface.render
    from synthface.demo import page
    from synthface.generators import build_renderer
    from synthface.generators.vec2face import attrop, pose
    from synthface.generators.vec2face.loading import load_vec2face

    assert synthface.demo_page is page and synthface.pipelines.vec2face_attrop is attrop
    assert synthface.pipelines.vec2face_pose is pose and synthface.pipelines.load_vec2face is load_vec2face
    assert synthface.render.build_renderer is build_renderer is synthface.build_renderer
    assert synthface.load_vec2face is load_vec2face
