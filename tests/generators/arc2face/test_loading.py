"""Loading Arc2Face: save/load round trip, the published layout on disk, the HF cache, clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from synthface.errors import ModelNotFoundError
from synthface.generators.arc2face.testing import save_tiny_published_layout
from synthface.generators.arc2face.tiny import tiny_arc2face_pipeline
from synthface.pipelines import Arc2FacePipeline, load_arc2face

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread (tests/conftest.py)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def render(pipe, n: int = 2) -> np.ndarray:
    ids = torch.nn.functional.normalize(torch.randn(n, 512, generator=torch.Generator().manual_seed(3)), dim=1)
    gens = [torch.Generator().manual_seed(i) for i in range(n)]
    return pipe(ids, num_inference_steps=2, generator=gens, output_type="np").images


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return render(tiny_arc2face_pipeline(seed=0))


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    return save_tiny_published_layout(tmp_path_factory.mktemp("published") / "Arc2Face")


def fake_hf_cache(cache: Path, repo: str, source: Path) -> None:
    """Lay `source` out as the Hugging Face cache does for a downloaded `repo`."""
    root = cache / ("models--" + repo.replace("/", "--"))
    shutil.copytree(source, root / "snapshots" / COMMIT)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)


def test_save_pretrained_round_trip_reproduces_outputs(tmp_path, reference):
    tiny_arc2face_pipeline(seed=0).save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model_index.json").is_file()
    assert not list((tmp_path / "saved").rglob("*.bin"))  # safetensors only
    loaded = Arc2FacePipeline.from_pretrained(tmp_path / "saved")
    assert type(loaded.scheduler).__name__ == "DPMSolverMultistepScheduler"
    np.testing.assert_allclose(render(loaded), reference, atol=1e-6, rtol=0)
    np.testing.assert_allclose(render(load_arc2face(tmp_path / "saved")), reference, atol=1e-6, rtol=0)


def test_published_layout_with_base_inside(published, reference):
    """arc2face/ + encoder/ (transformers-4.x key names) + SD 1.5 vae/tokenizer/scheduler beside them."""
    pipe = load_arc2face(published)
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"  # swapped in for SD 1.5's PNDM
    np.testing.assert_allclose(render(pipe), reference, atol=1e-6, rtol=0)


def test_published_layout_with_separate_base_and_dtype(tmp_path, reference):
    root = save_tiny_published_layout(tmp_path / "a2f", base=tmp_path / "sd15")
    with pytest.raises(ModelNotFoundError, match="stable-diffusion-v1-5"):
        load_arc2face(root, cache_dir=tmp_path / "empty-cache")  # base not found anywhere
    pipe = load_arc2face(root, base=tmp_path / "sd15", dtype=torch.bfloat16)
    assert pipe.unet.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.bfloat16
    assert np.abs(render(pipe) - reference).max() < 0.1


def test_repo_ids_resolve_through_the_local_hf_cache(tmp_path, reference):
    root = save_tiny_published_layout(tmp_path / "a2f", base=tmp_path / "sd15")
    cache = tmp_path / "hub"
    fake_hf_cache(cache, "FoivosPar/Arc2Face", root)
    fake_hf_cache(cache, "stable-diffusion-v1-5/stable-diffusion-v1-5", tmp_path / "sd15")
    np.testing.assert_allclose(render(load_arc2face("arc2face", cache_dir=cache)), reference, atol=1e-6, rtol=0)
    tiny_arc2face_pipeline(seed=0).save_pretrained(tmp_path / "saved")
    fake_hf_cache(cache, "someone/arc2face-saved", tmp_path / "saved")
    np.testing.assert_allclose(render(load_arc2face("someone/arc2face-saved", cache_dir=cache)), reference,
                               atol=1e-6, rtol=0)


def test_missing_repo_is_a_paragraph_naming_the_download(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"not in the local Hugging Face cache.*`synthface models download arc2face`"):
        load_arc2face("arc2face", cache_dir=tmp_path)
    with pytest.raises(ModelNotFoundError, match="neither 'tiny', an existing folder"):
        load_arc2face("no such thing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="arc2face/"):
        load_arc2face(tmp_path / "empty")


def test_pickled_encoder_needs_an_opt_in(tmp_path, reference, monkeypatch):
    root = save_tiny_published_layout(tmp_path / "a2f", encoder_format="bin")
    monkeypatch.delenv("SYNTHFACE_ALLOW_PICKLE", raising=False)
    with pytest.raises(ModelNotFoundError, match="allow_pickle=True"):
        load_arc2face(root)
    np.testing.assert_allclose(render(load_arc2face(root, allow_pickle=True)), reference, atol=1e-6, rtol=0)
    monkeypatch.setenv("SYNTHFACE_ALLOW_PICKLE", "1")
    assert isinstance(load_arc2face(root), Arc2FacePipeline)


def test_tiny_by_name_on_device_and_dtype():
    pipe = load_arc2face("tiny", dtype=torch.bfloat16, device="cpu")
    assert pipe.unet.dtype == torch.bfloat16 and pipe.device.type == "cpu"
