"""synthface.weights: models placed by hand (kind "manual": Google Drive folders behind request forms),
the IDiff-Face family's registry entries, and which registered model a file belongs to."""

from __future__ import annotations

import pytest
import torch

from synthface import weights
from synthface.errors import ModelNotFoundError

IDIFF = ("idiff-uiface-casia", "idiff-ffhq-cpd25", "idiff-ffhq-cpd50", "negfacediff-casia-cpd25", "idiff-vq-f4",
         "idiff-elasticface")
#: Each entry's Google Drive folder (IDIFF.md, Checkpoints; ElasticFace's README for the recogniser).
DRIVE = {"idiff-uiface-casia": "11OnYj0mtEkepjl3gE2oLeDJu_WeuB0Ma", "idiff-ffhq-cpd25": "1bzKEzM32WuEdQd8U2ShEdBiZWNqiyTMS",
         "idiff-ffhq-cpd50": "1bzKEzM32WuEdQd8U2ShEdBiZWNqiyTMS", "negfacediff-casia-cpd25": "1RXplM2j8cP4pyljcHweoq5I_xZFi3h_T",
         "idiff-vq-f4": "1d-zs3yjsnzOMNkz7qy3JSb-fMf0UmSdT", "idiff-elasticface": "1q3ws_BQLmgXyiy2msvHummXq4pRqc1rx"}
#: The training data each licence must name.
TRAINED_ON = {"idiff-uiface-casia": ("CASIA-WebFace", "MS1MV2"), "idiff-ffhq-cpd25": ("FFHQ", "MS1MV2"),
              "idiff-ffhq-cpd50": ("FFHQ", "MS1MV2"), "negfacediff-casia-cpd25": ("CASIA-WebFace", "MS1MV2"),
              "idiff-vq-f4": ("FFHQ",), "idiff-elasticface": ("MS1MV2",)}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.HOME_ENV, str(tmp_path / "home"))
    return tmp_path / "home" / "models"


def test_models_home_follows_synthface_home_then_xdg_then_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.HOME_ENV, str(tmp_path / "h"))
    assert weights.models_home() == tmp_path / "h" / "models"
    monkeypatch.delenv(weights.HOME_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.models_home() == tmp_path / "xdg" / "synthface" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert weights.models_home() == tmp_path / "user" / ".cache" / "synthface" / "models"


@pytest.mark.parametrize("name", IDIFF)
def test_idiff_entries_are_manual_non_commercial_and_name_their_training_data(name):
    s = weights.spec(name)
    assert s.kind == "manual" and s.url == f"https://drive.google.com/drive/folders/{DRIVE[name]}"
    licence = weights.licence(name)
    assert licence.restricted and not s.commercial and weights.NON_COMMERCIAL in licence.text
    for data in TRAINED_ON[name]:
        assert data in licence.text, (name, data)


def test_the_published_file_names_and_their_places_in_the_request_folders():
    assert weights.spec("idiff-uiface-casia").files == ("ema_averaged_model_250000.ckpt",)
    for name, folder in (("idiff-ffhq-cpd25", "unet-cond-ca-bs512-150K-cpd25"),
                         ("idiff-ffhq-cpd50", "unet-cond-ca-bs512-150K-cpd50"),
                         ("negfacediff-casia-cpd25", "CASIA-IDiff-cpd25")):
        s = weights.spec(name)
        assert s.files == ("checkpoints/ema_averaged_model.ckpt",)
        assert dict(s.drive_paths) == {s.files[0]: f"trained_models/{folder}/checkpoints/ema_averaged_model.ckpt"}
    vq = weights.spec("idiff-vq-f4")
    assert vq.files == ("first_stage_decoder_state_dict.pt",) and vq.optional == ("first_stage_encoder_state_dict.pt",)
    assert weights.spec("idiff-elasticface").files == ("295672backbone.pth",)


@pytest.mark.parametrize("name", IDIFF)
def test_download_refuses_with_where_to_request_and_where_each_file_goes(name, home):
    s = weights.spec(name)
    with pytest.raises(ModelNotFoundError) as info:
        weights.download(name)
    text = str(info.value)
    assert "\n" not in text and "cannot download" in text and DRIVE[name] in text
    for f in s.files:
        assert str(home / name / f) in text
    for f, inside in s.drive_paths:
        assert f"place {inside} from it at {home / name / f}" in text
    for f in s.optional:
        assert f"{f} may go beside it" in text
    assert s.license in text and weights.HOME_ENV in text
    behind_a_form = name in ("idiff-ffhq-cpd25", "idiff-ffhq-cpd50", "negfacediff-casia-cpd25")
    assert ("behind a request form (name, affiliation, official email)" in text) is behind_a_form
    assert not home.exists()  # nothing written
    with pytest.raises(ModelNotFoundError) as found:  # find says the same, and so does an allowed download
        weights.find(name, allow_download=True)
    assert str(found.value) == text


def test_find_looks_in_the_hand_placed_folder_and_accepts_the_file_or_its_folder(home, tmp_path):
    ckpt = home / "idiff-ffhq-cpd50" / "checkpoints" / "ema_averaged_model.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"x": torch.ones(2)}, ckpt)
    assert weights.find("idiff-ffhq-cpd50") == ckpt  # a single-file model is the file itself
    assert weights.find("idiff-ffhq-cpd50", path=home / "idiff-ffhq-cpd50") == ckpt
    with pytest.raises(ModelNotFoundError, match=r"idiff-ffhq-cpd25 \(.*\) is not in"):
        weights.find("idiff-ffhq-cpd25")
    vq = home / "idiff-vq-f4"
    vq.mkdir()
    torch.save({"decoder.w": torch.ones(1)}, vq / "first_stage_decoder_state_dict.pt")
    assert weights.find("idiff-vq-f4") == vq  # with an optional file the folder is the model
    lone = tmp_path / "elsewhere" / "295672backbone.pth"
    lone.parent.mkdir()
    torch.save({"w": torch.ones(1)}, lone)
    assert weights.find("idiff-elasticface", path=lone) == lone


def test_verify_checks_the_optional_file_only_when_it_is_there(home):
    vq = home / "idiff-vq-f4"
    vq.mkdir(parents=True)
    torch.save({"decoder.w": torch.ones(3)}, vq / "first_stage_decoder_state_dict.pt")
    checks = weights.verify("idiff-vq-f4")
    assert [(c.path.name, c.ok) for c in checks] == [("first_stage_decoder_state_dict.pt", True)]
    torch.save({"encoder.w": torch.ones(3)}, vq / "first_stage_encoder_state_dict.pt")
    data = (vq / "first_stage_encoder_state_dict.pt").read_bytes()
    (vq / "first_stage_encoder_state_dict.pt").write_bytes(data[: len(data) // 2])
    checks = weights.verify("idiff-vq-f4")
    assert [(c.path.name, c.ok) for c in checks] == [("first_stage_decoder_state_dict.pt", True),
                                                      ("first_stage_encoder_state_dict.pt", False)]
    assert checks[1].status.startswith("UNREADABLE")


def test_a_truncated_ckpt_fails_its_zip_check(tmp_path):
    path = tmp_path / "ema_averaged_model.ckpt"
    torch.save({"w": torch.arange(1000.0)}, path)
    assert weights.check_format(path) is None
    path.write_bytes(path.read_bytes()[:-200])
    assert weights.check_format(path).startswith("UNREADABLE ckpt")


@pytest.mark.parametrize("path, model", [
    ("/any/where/arcface.onnx", "arc2face-arcface"),
    ("/d/trained_models/unet-cond-ca-bs512-150K-cpd50/checkpoints/ema_averaged_model.ckpt", "idiff-ffhq-cpd50"),
    ("/d/trained_models/CASIA-IDiff-cpd25/checkpoints/ema_averaged_model.ckpt", "negfacediff-casia-cpd25"),
    ("/home/me/.cache/synthface/models/idiff-ffhq-cpd25/checkpoints/ema_averaged_model.ckpt", "idiff-ffhq-cpd25"),
    ("/x/checkpoints/ema_averaged_model.ckpt", None),  # three models ship that name: a tie names none
    ("/x/first_stage_encoder_state_dict.pt", "idiff-vq-f4"),  # an optional file counts
    ("/x/1k3d68.onnx", None),  # in both insightface packs
    ("/root/.insightface/models/buffalo_l/1k3d68.onnx", "buffalo_l"),
    ("/x/unknown.pt", None),
])
def test_model_of_file_tells_same_named_files_apart_by_their_folders(path, model):
    assert weights.model_of_file(path) == model
