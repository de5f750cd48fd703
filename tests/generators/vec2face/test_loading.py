"""load_vec2face: converted safetensors folders, the pickle opt-in, and clear errors for wrong files.

Wrong-architecture files are written with shape-only tensors (a one-element storage expanded to
the published shapes), so a full-size key set costs kilobytes on disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from synthface.errors import FileFormatError, ModelNotFoundError
from synthface.generators.arc2face.testing import save_tiny_published_layout
from synthface.generators.vec2face.model import PoseConditionModel
from synthface.pipelines import load_vec2face

SHAPES = Path(__file__).resolve().parents[2] / "data" / "vec2face_state_dict.json"  # the published key list, shipped


pytestmark = pytest.mark.usefixtures("one_thread")


def shape_only(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.zeros(1).expand(s) if s else torch.zeros(()) for k, s in shapes.items()}


@pytest.fixture(scope="module")
def published() -> dict[str, tuple[int, ...]]:
    """The 349 published names and shapes (VEC2FACE.md's data file, shipped in tests/data)."""
    return {k: tuple(s) for k, s, _ in json.loads(SHAPES.read_text())["keys"]}


def render(pipe, **kwargs) -> torch.Tensor:
    ids = torch.nn.functional.normalize(torch.randn(2, 512, generator=torch.Generator().manual_seed(0)), dim=1)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    return pipe(ids, generator=gens, output_type="pt", **kwargs).images


@pytest.mark.parametrize("name", ["vec2face-tiny", "vec2face-plus-tiny"])
def test_converted_folder_round_trip(name, tmp_path):
    pipe = load_vec2face(name)
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "vec2face" / "diffusion_pytorch_model.safetensors").is_file()
    again = load_vec2face(tmp_path)  # safetensors: no pickle opt-in needed
    assert (again.pose_model is None) == (name == "vec2face-tiny")
    poses = dict(poses=[(0.0, 0.0), (20.0, 0.0)]) if again.pose_model is not None else {}
    assert torch.equal(render(pipe, **poses), render(again, **poses))


def test_published_file_needs_the_pickle_opt_in(tmp_path, monkeypatch):
    monkeypatch.delenv("SYNTHFACE_ALLOW_PICKLE", raising=False)
    path = tmp_path / "vec2face_generator.pth"
    torch.save({"model_vec2face": {}}, path)
    with pytest.raises(ModelNotFoundError, match="allow_pickle=True"):
        load_vec2face(path)


def test_unknown_name_and_empty_folder_say_what_to_fetch(tmp_path):
    with pytest.raises(ModelNotFoundError, match="synthface models download vec2face"):
        load_vec2face("vec2face-huge")
    with pytest.raises(ModelNotFoundError, match="weights/vec2face_generator.pth"):
        load_vec2face(tmp_path, allow_pickle=True)


def test_missing_and_unexpected_keys_are_named(published, tmp_path):
    state = shape_only(published)
    del state["decoder_norm.bias"]
    state["blocks.12.norm1.weight"] = torch.zeros(768)
    path = tmp_path / "odd.pth"
    torch.save({"model_vec2face": state}, path)
    with pytest.raises(FileFormatError) as err:
        load_vec2face(path, allow_pickle=True)
    assert "missing: decoder_norm.bias" in str(err.value) and "unexpected: blocks.12.norm1.weight" in str(err.value)
    # the three unused entries are dropped by name, never reported
    assert "patch_embed" not in str(err.value) and "center_token" not in str(err.value)


def test_state_dict_of_another_size_is_refused(tmp_path):
    small = load_vec2face("vec2face-tiny").vec2face.state_dict()
    path = tmp_path / "small.pth"
    torch.save({"model_vec2face": small}, path)
    with pytest.raises(FileFormatError) as err:
        load_vec2face(path, allow_pickle=True)
    message = str(err.value)
    assert "wrong shape: " in message and "latent_prior_proj_f.weight (64, 512) (expected (768, 512))" in message
    assert "missing: blocks.10." in message and "another size" in message


def test_pose_model_of_another_shape_is_refused(published, tmp_path):
    with torch.device("meta"):
        pose = {k: tuple(v.shape) for k, v in PoseConditionModel(dim=64).state_dict().items()}
    path = tmp_path / "pose_model.pth"
    torch.save({"model_vec2face": shape_only(published), "pose_model": shape_only(pose)}, path)
    with pytest.raises(FileFormatError, match=r"pose_model\) does not match.*linear.weight \(64, 12544\)"):
        load_vec2face(path, allow_pickle=True)


def test_an_arc2face_file_is_not_a_vec2face_checkpoint(tmp_path):
    save_tiny_published_layout(tmp_path, encoder_format="bin")
    with pytest.raises(FileFormatError, match="not a Vec2Face checkpoint.*text_model"):
        load_vec2face(tmp_path / "encoder" / "pytorch_model.bin", allow_pickle=True)
    with pytest.raises(FileFormatError, match="not a Vec2Face checkpoint.*conv_in"):
        load_vec2face(tmp_path / "arc2face" / "diffusion_pytorch_model.safetensors", allow_pickle=True)


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "vec2face_generator.pth"
    torch.save({"model_vec2face": load_vec2face("vec2face-tiny").vec2face.state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match="truncated, damaged or not a PyTorch file.*models verify"):
        load_vec2face(path, allow_pickle=True)


def test_models_convert_writes_a_folder_load_vec2face_reads(tmp_path, capsys):
    from tests.cli_helpers import run_cli_inprocess

    published = tmp_path / "main_model.pth"
    pipe = load_vec2face("vec2face-plus-tiny")
    torch.save({"model_vec2face": pipe.vec2face.state_dict()}, published)
    refused = run_cli_inprocess(capsys, "models", "convert", published, "--out", tmp_path / "a")
    assert refused.returncode != 0 and "allow-pickle" in refused.output
    # tiny shapes are not the published architecture: a clear refusal, nothing written
    wrong = run_cli_inprocess(capsys, "models", "convert", published, "--out", tmp_path / "b", "--allow-pickle")
    assert wrong.returncode != 0 and "does not match the published" in wrong.output and not (tmp_path / "b").exists()
    converted = run_cli_inprocess(capsys, "models", "convert", "vec2face-plus-tiny", "--out", tmp_path / "c")
    assert converted.returncode == 0, converted.output
    poses = dict(poses=[(0.0, 0.0), (30.0, 0.0)])
    assert torch.equal(render(load_vec2face(tmp_path / "c"), **poses), render(pipe, **poses))
    again = run_cli_inprocess(capsys, "models", "convert", "vec2face-plus-tiny", "--out", tmp_path / "c")
    assert again.returncode != 0 and "not an empty folder" in again.output
