"""Plug-in renderers and the pipelines' boundaries (issue #22, class 8): what a renderer returns is
checked where the engine receives it, with a message naming the renderer; the pipelines' callbacks,
save folders, dtypes and devices are typed errors; `perturb` and identity banks refuse bad vectors."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from synthface import engine, render
from synthface.errors import InvalidInputError
from tests.helpers.engine import noise_renderer, small_recipe, tree_digest

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread (tests/conftest.py)


def returning(make):
    """A renderer whose images are `make(seed)`, one per seed."""

    def render_images(conditions, seeds):
        return [make(int(s)) for s in seeds]

    return render_images


def pixels(seed: int, shape=(48, 48, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


BAD_OUTPUTS = {
    "one image short": (lambda c, s: [pixels(x) for x in s][:-1], "returned 4 image(s) for 5 seed(s)"),
    "a torch tensor": (lambda c, s: torch.zeros(len(s), 3, 8, 8), "returned a tensor"),
    "tensor images": (returning(lambda s: torch.zeros(3, 8, 8)), "torch.tensor, not a numpy array"),
    "grey": (returning(lambda s: pixels(s, (48, 48))), "grey (one channel)"),
    "rgba": (returning(lambda s: pixels(s, (48, 48, 4))), "4 channels (rgba?)"),
    "channels first": (returning(lambda s: pixels(s, (3, 48, 48))), "channels first"),
    "int64 pixels": (returning(lambda s: pixels(s).astype(np.int64)), "dtype int64"),
    "floats in 0-255": (returning(lambda s: pixels(s).astype(np.float32)), "outside [0, 1]"),
    "NaN floats": (returning(lambda s: np.full((8, 8, 3), np.nan, np.float32)), "nan or inf"),
    "empty image": (returning(lambda s: np.zeros((0, 8, 3), np.uint8)), "shape (0, 8, 3)"),
    "None": (lambda c, s: None, "returned a nonetype"),
}


@pytest.mark.parametrize("case", list(BAD_OUTPUTS))
def test_what_a_plug_in_renderer_returns_is_checked_by_the_engine_naming_it(tmp_path, case):
    """Each bad return value is an InvalidInputError naming the renderer and the problem (before: a
    traceback deep in the analyser or the JPEG encoder, or silently wrong images); the run stays
    resumable: a good renderer then finishes it."""
    bad, needle = BAD_OUTPUTS[case]
    recipe = small_recipe()
    with pytest.raises(InvalidInputError) as caught:
        engine.run(recipe, tmp_path / "run", renderer=bad)
    message = " ".join(str(caught.value).lower().split())
    assert bad.__qualname__.lower() in message and needle in message, message
    assert "(h, w, 3) numpy array of uint8" in message
    assert not list((tmp_path / "run").rglob("*.jpg"))
    summary = engine.run(recipe, tmp_path / "run", renderer=noise_renderer())
    assert summary.finalized


def test_float_images_in_0_1_are_converted_as_the_families_convert(tmp_path):
    """Float images in [0, 1] are documented as converted (x * 255 rounded half to even): the run equals
    the one whose renderer returned those uint8 bytes itself."""
    noise = noise_renderer()

    def as_floats(conditions, seeds):
        return [image.astype(np.float64) / 255 for image in noise(conditions, seeds)]

    recipe = small_recipe()
    engine.run(recipe, tmp_path / "uint8", renderer=noise)
    engine.run(recipe, tmp_path / "float", renderer=as_floats)
    assert tree_digest(tmp_path / "float") == tree_digest(tmp_path / "uint8")
    halves = render.check_images([np.full((2, 2, 3), 0.5 / 255, np.float32), np.ones((2, 2, 3))], 2, as_floats)
    assert halves[0].dtype == np.uint8 and halves[0].max() == 0 and halves[1].min() == 255  # 0.5 rounds to even


def test_renderers_are_named_by_qualified_name_class_or_family():
    class Callable:
        def __call__(self, conditions, seeds):
            return []

    partial = functools.partial(returning(pixels))
    assert render.renderer_name(returning(pixels)).endswith("returning.<locals>.render_images")
    assert render.renderer_name(Callable()).endswith(".Callable")
    assert "functools.partial" in render.renderer_name(partial)
    with pytest.raises(InvalidInputError, match="Callable must return a list of 1 RGB images"):
        render.check_images(Callable()(None, [0]), 1, Callable())
    uint8 = pixels(0)
    assert render.check_images((uint8,), 1, Callable())[0] is uint8  # valid images pass as they are


class _Family(render.GeneratorFamily):
    name = "stub"

    def call_kwargs(self, pipeline, settings):
        return {}


class _Pipeline:
    device, dtype = torch.device("cpu"), torch.float32

    def __init__(self, images):
        self.images = images

    def __call__(self, *, id_embeds, generator, output_type):
        return type("Out", (), {"images": self.images(len(generator))})()


@pytest.mark.parametrize("images, found", [
    (lambda n: torch.rand(n, 8, 8, 3), "shape (2, 8, 8, 3)"),      # channels last from a pipeline
    (lambda n: torch.rand(n + 1, 3, 8, 8), "shape (3, 3, 8, 8)"),  # one image too many
    (lambda n: np.random.rand(n, 3, 8, 8), "of type ndarray"),
    (lambda n: torch.zeros(n, 3, 8, 8, dtype=torch.uint8), "torch.uint8"),
])
def test_a_plug_in_familys_pipeline_output_is_checked_naming_the_family(images, found):
    renderer = render.Renderer(pipeline=_Pipeline(images), family=_Family(), name="stub-model")
    with pytest.raises(InvalidInputError) as caught:
        renderer(np.eye(2, 4, dtype=np.float32), [0, 1])
    message = str(caught.value)
    assert "'stub' generator's pipeline (_Pipeline)" in message and found in message, message
    good = render.Renderer(pipeline=_Pipeline(lambda n: torch.rand(n, 3, 8, 8)), family=_Family(), name="stub-model")
    assert [image.shape for image in good(np.eye(2, 4, dtype=np.float32), [0, 1])] == [(8, 8, 3)] * 2


# ---------------------------------------------------------------- the pipelines' own boundaries


@pytest.fixture(scope="module")
def pipe():
    from synthface.generators.arc2face.tiny import tiny_arc2face_pipeline

    return tiny_arc2face_pipeline(seed=0)


def _ids() -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(1, 512, generator=torch.Generator().manual_seed(0)), dim=1)


def _bad_latents(pipe, i, t, tensors):
    return {"latents": tensors["latents"][..., :4]}


@pytest.mark.parametrize("kwargs, needles", [
    ({"callback_on_step_end": 5}, ["callback_on_step_end must be a function", "got 5 (int)"]),
    ({"callback_on_step_end": lambda *a: {}, "callback_on_step_end_tensor_inputs": "latents"},
     ["must be a list of tensor names", "pass ['latents']"]),
    ({"callback_on_step_end": lambda *a: 3}, ["returned 3 (int)", "none or a dict"]),
    ({"callback_on_step_end": _bad_latents}, ["_bad_latents returned 'latents' as shape (1, 4, 16, 4)",
                                              "(1, 4, 16, 16)"]),
    ({"callback": "print"}, ["callback must be a function", "got 'print' (str)"]),
    ({"callback": print, "callback_steps": 0}, ["callback_steps must be an integer 1 or more, got 0"]),
    ({"callback": print, "callback_steps": 1.5}, ["callback_steps must be an integer 1 or more, got 1.5"]),
])
def test_bad_callbacks_are_typed_errors(pipe, kwargs, needles):
    with pytest.raises(InvalidInputError) as caught:
        pipe(_ids(), num_inference_steps=2, output_type="pt", **kwargs)
    message = str(caught.value).lower()
    assert all(n.lower() in message for n in needles), message


def test_the_legacy_callback_runs_every_callback_steps_steps(pipe):
    seen = []
    pipe(_ids(), num_inference_steps=4, output_type="latent", callback=lambda i, t, x: seen.append((i, x.shape)),
         callback_steps=2)
    assert seen == [(0, (1, 4, 16, 16)), (2, (1, 4, 16, 16))]


@pytest.mark.parametrize("call, needles", [
    (lambda p: p.to("float16"), ["'float16' is a dtype, not a device", "dtype=torch.float16"]),
    (lambda p: p.to(dtype="fp16"), ["dtype must be a torch floating-point dtype", "got 'fp16'", "torch.float16"]),
    (lambda p: p.to(dtype="nonsense"), ["got 'nonsense'", "torch.float32, torch.float16 or torch.bfloat16"]),
    (lambda p: p.to("gpu"), ["unknown device 'gpu'", "choose one of: auto, cpu"]),
    (lambda p: p.to("cuda:99"), ["'cuda:99'", "choose one of"]),
])
@pytest.mark.parametrize("family", ["arc2face", "vec2face"])
def test_dtype_and_device_strings_are_typed_errors(pipe, family, call, needles):
    from synthface.generators.vec2face.tiny import tiny_vec2face_pipeline

    target = pipe if family == "arc2face" else tiny_vec2face_pipeline()
    with pytest.raises(InvalidInputError) as caught:
        call(target)
    message = str(caught.value).lower()
    assert all(n.lower() in message for n in needles), message
    assert target.device == torch.device("cpu") and target.dtype == torch.float32  # nothing moved


@pytest.mark.parametrize("loader", ["load_arc2face", "load_vec2face"])
@pytest.mark.parametrize("kwargs, needle", [
    ({"dtype": "float16"}, "got 'float16'; pass torch.float16"),
    ({"dtype": "fp16"}, "got 'fp16'; pass torch.float16"),
    ({"device": "bogus"}, "unknown device 'bogus'"),
])
def test_the_loaders_refuse_string_dtypes_and_bad_devices_before_reading(loader, kwargs, needle):
    from synthface import pipelines

    with pytest.raises(InvalidInputError) as caught:
        getattr(pipelines, loader)("does-not-exist", **kwargs)  # refused before the model is looked up
    assert needle in str(caught.value).lower()


def test_save_pretrained_onto_a_file_is_an_output_path_error(pipe, tmp_path):
    from synthface.errors import OutputPathError

    target = tmp_path / "file"
    target.write_text("mine")
    for folder, needle in ((target, "it is a file, not a folder"), (target / "sub", "(?i)not a directory")):
        with pytest.raises(OutputPathError, match=needle):
            pipe.save_pretrained(folder)
    assert target.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# ---------------------------------------------------------------- perturb and identity banks


@pytest.mark.parametrize("cos, needle", [
    ([0.9, 0.8], "got 2 target cosine(s) for 3 vectors"),
    ([0.9] * 4, "got 4 target cosine(s) for 3 vectors"),
    ([[0.9, 0.9, 0.9]], "an array of shape (1, 3)"),
    ("0.9", "got '0.9' (str)"),
    (True, "got true (bool)"),
])
def test_perturb_checks_the_length_and_kind_of_its_targets(cos, needle):
    from synthface.identity import perturb

    with pytest.raises(InvalidInputError) as caught:
        perturb(np.eye(3, 8, dtype=np.float32), cos)
    assert needle in str(caught.value).lower() and "one per vector" in str(caught.value)


@pytest.mark.parametrize("seed, needle", [
    (-1, "got -1"), (1.5, "got 1.5"), (True, "got True"), ("3", "got '3'"), (None, "got None"),
    ([1, -2, 3], "got -2"), ([1, 2.5, 3], "got 2.5"), ([1, 2], "got 2 seeds for 3 vectors"),
])
def test_perturb_checks_its_seeds(seed, needle):
    from synthface.identity import perturb

    with pytest.raises(InvalidInputError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        perturb(np.eye(3, 8, dtype=np.float32), 0.9, seed=seed)
    one = perturb(np.eye(3, 8, dtype=np.float32), 0.9, seed=np.int64(4))  # numpy integers are seeds too
    assert np.array_equal(one, perturb(np.eye(3, 8, dtype=np.float32), 0.9, seed=4))
    per_row = perturb(np.eye(3, 8, dtype=np.float32), [0.9, 0.8, 0.7], seed=np.array([4, 5, 6]))
    assert np.allclose(np.sum(per_row * np.eye(3, 8), axis=1), [0.9, 0.8, 0.7], atol=1e-6)


def _unit(n: int = 4, d: int = 8) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _nan(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[2, 1] = np.nan
    return x


@pytest.mark.parametrize("vectors, needle", [
    (_unit() * 2, "has 4 row(s) of norm other than 1 (first: row 0, norm 2)"),
    (_nan(_unit()), "has 1 row(s) with nan or inf (first: row 2"),
    (np.vstack([_unit(), np.zeros((1, 8), np.float32)]), "has 1 row(s) of norm other than 1 (first: row 4, norm 0)"),
])
def test_a_bank_of_non_finite_or_non_unit_vectors_is_refused_at_save_and_at_load(tmp_path, vectors, needle):
    from safetensors.numpy import save_file

    from synthface.errors import FileFormatError
    from synthface.identity import IdentityBank, isotropic_prior, load_bank

    with pytest.raises(InvalidInputError) as caught:
        IdentityBank(vectors, isotropic_prior(8)).save(tmp_path / "bank.safetensors")
    assert needle in str(caught.value).lower() and "nothing was written" in str(caught.value)
    assert not list(tmp_path.iterdir())
    save_file({"ids": vectors}, str(tmp_path / "edited.safetensors"), metadata={"format": "synthface.identity_bank"})
    with pytest.raises(FileFormatError) as caught:
        load_bank(tmp_path / "edited.safetensors")
    message = str(caught.value).lower()
    assert needle in message and "edited.safetensors" in message and "synthface ids sample" in message
    near = _unit() * np.float32(1 + 5e-5)  # within the tolerance (1e-4): loaded as saved, bit for bit
    IdentityBank(near, isotropic_prior(8)).save(tmp_path / "near.safetensors")
    assert np.array_equal(load_bank(tmp_path / "near.safetensors").vectors, near)


# ---------------------------------------------------------------- a pickled LoRA is loaded as named


def test_a_pickled_lora_is_never_swapped_for_an_unrelated_safetensors_beside_it(tmp_path, capsys):
    """Before: `use_lcm(folder)` (and `generate --lcm-lora folder`) silently loaded whichever safetensors
    lay beside the pickled LoRA. Now the folder is refused naming both files; the pickled file named
    loads itself; a converted copy recording the pickled file's sha256 loads in its place."""
    import hashlib

    pytest.importorskip("peft")
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    from synthface.generators.arc2face.tiny import tiny_arc2face_pipeline
    from synthface.io import safetensors_bytes
    from synthface.pipelines import Arc2FacePipeline
    from tests.cli_helpers import assert_clean_refusal, run_cli_inprocess

    def lora(seed):
        with_adapter = tiny_arc2face_pipeline()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with_adapter.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights=False,
                                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        return convert_state_dict_to_diffusers(get_peft_model_state_dict(with_adapter.unet))

    def rendered(lora_path, **kwargs):
        pipe = tiny_arc2face_pipeline().use_lcm(str(lora_path), **kwargs)
        return pipe(_ids(), num_inference_steps=2, guidance_scale=1.0, output_type="np",
                    generator=[torch.Generator().manual_seed(0)]).images

    mine, other = lora(1), lora(2)
    Arc2FacePipeline.save_lora_weights(tmp_path / "alone", unet_lora_layers=mine, safe_serialization=False)
    Arc2FacePipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=mine, safe_serialization=False)
    Arc2FacePipeline.save_lora_weights(tmp_path / "other", unet_lora_layers=other)
    pickled = tmp_path / "lora" / "pytorch_lora_weights.bin"
    (tmp_path / "lora" / "unrelated.safetensors").write_bytes(
        (tmp_path / "other" / "pytorch_lora_weights.safetensors").read_bytes())
    want = rendered(tmp_path / "alone" / "pytorch_lora_weights.bin", allow_pickle=True)

    for allow in (None, True):
        with pytest.raises(InvalidInputError) as caught:
            tiny_arc2face_pipeline().use_lcm(str(tmp_path / "lora"), allow_pickle=allow)
        assert "pytorch_lora_weights.bin" in str(caught.value) and "unrelated.safetensors" in str(caught.value)
    ids = tmp_path / "ids.safetensors"
    from synthface.identity import IdentityBank, isotropic_prior
    IdentityBank(_ids().numpy(), isotropic_prior(512)).save(ids)
    result = run_cli_inprocess(capsys, "generate", "--ids", ids, "-k", "1", "--model", "tiny", "--steps", "2",
                               "--guidance", "1", "--device", "cpu", "--lcm-lora", tmp_path / "lora",
                               "--out", tmp_path / "gen")
    assert_clean_refusal(result, 2, "does not guess which one is meant", "unrelated.safetensors")
    assert not (tmp_path / "gen").exists()
    assert np.array_equal(rendered(pickled, allow_pickle=True), want)  # the file named is the file loaded

    # A converted copy (its metadata records the pickled file's sha256) loads instead, with no opt-in.
    digest = hashlib.sha256(pickled.read_bytes()).hexdigest()
    tensors = {k: v.contiguous().numpy() for k, v in torch.load(pickled, weights_only=True).items()}
    (tmp_path / "lora" / "converted.safetensors").write_bytes(safetensors_bytes(tensors, {"source_sha256": digest}))
    assert np.allclose(rendered(pickled), want, atol=1e-6)
    assert np.allclose(rendered(tmp_path / "lora"), want, atol=1e-6)


@pytest.mark.parametrize("seeds, needle", [([-1, 2], "got -1"), ([2**64, 2], "got 18446744073709551616"),
                                           ([1.5, 2], "got 1.5"), (["a", 2], "got 'a'"), ([True, 2], "got True")])
def test_a_renderer_refuses_seeds_a_generator_cannot_take(seeds, needle):
    renderer = render.Renderer(pipeline=_Pipeline(lambda n: torch.rand(n, 3, 8, 8)), family=_Family(), name="stub")
    with pytest.raises(InvalidInputError, match=f"integers from 0 to 2\\*\\*64 - 1, one per image; {needle}"):
        renderer(np.eye(2, 4, dtype=np.float32), seeds)
    with pytest.raises(InvalidInputError, match="conditions must be a \\(B, D\\) array of numbers"):
        renderer("abc", [1])
    assert len(renderer(np.eye(2, 4, dtype=np.float32), [0, 2**64 - 1])) == 2
