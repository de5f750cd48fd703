"""6DRepNet (RepVGG-B1g2 deploy form) as AttrOP's pose judge: the published file's keys and size,
strict loading with named mismatches, the 6D -> rotation -> Euler conversion against scipy, and
AttrOP driven by the real module (random weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from synthface import weights
from synthface.errors import FileFormatError, ModelNotFoundError
from synthface.fr.backbones import iresnet
from synthface.generators.vec2face.attrop import AttrOPConfig, AttrOPEstimators, attrop
from synthface.generators.vec2face.pose import (
    SixDRepNet,
    euler_from_rotation,
    load_sixdrepnet,
    read_sixdrepnet_state,
    rotation_from_6d,
)
from synthface.pipelines import load_vec2face

PUBLISHED = "6DRepNet_300W_LP_AFLW2000.pth"
PUBLISHED_BYTES = 157_315_191  # VEC2FACE.md / synthface.weights (vec2face-6drepnet)
PARAMETERS = 39_323_398


def published_shapes() -> dict[str, tuple[int, ...]]:
    """The deploy-form state dict, written out from RepVGG-B1g2's definition (thohemp/6DRepNet
    sixdrepnet/backbone/repvgg.py and model.py): blocks (4, 6, 16, 1), widths 64 * (2, 2, 2, 4),
    stem min(64, 128), groups=2 on blocks 2, 4, ..., 26, then linear_reg Linear(2048, 6)."""
    shapes = {"layer0.rbr_reparam.weight": (64, 3, 3, 3), "layer0.rbr_reparam.bias": (64,)}
    cin, number = 64, 1
    for stage, (blocks, width) in enumerate([(4, 128), (6, 256), (16, 512), (1, 2048)], start=1):
        for i in range(blocks):
            groups = 2 if number % 2 == 0 and number <= 26 else 1
            shapes[f"layer{stage}.{i}.rbr_reparam.weight"] = (width, cin // groups, 3, 3)
            shapes[f"layer{stage}.{i}.rbr_reparam.bias"] = (width,)
            cin, number = width, number + 1
    shapes["linear_reg.weight"], shapes["linear_reg.bias"] = (6, 2048), (6,)
    return shapes


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A random state dict with the published names, saved as the published file (a bare state dict)."""
    with torch.device("meta"):
        names = SixDRepNet().state_dict()
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=g) * 0.02 for k, v in names.items()}
    path = tmp_path_factory.mktemp("6drepnet") / PUBLISHED
    torch.save(state, path)
    return path, state


def test_keys_parameters_and_bytes_match_the_published_file():
    with torch.device("meta"):
        model = SixDRepNet()
    state = model.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == published_shapes()
    assert len(state) == 58 and list(state)[:2] == ["layer0.rbr_reparam.weight", "layer0.rbr_reparam.bias"]
    assert sum(v.numel() for v in state.values()) == PARAMETERS
    # the fp32 bytes of the module's own tensors, then what the published file holds beyond them:
    # per tensor, a zip entry (local header, central record, data alignment) and its pickle record
    tensor_bytes = sum(v.numel() * 4 for v in state.values())
    assert tensor_bytes == 157_293_592
    assert 200 * len(state) < PUBLISHED_BYTES - tensor_bytes < 600 * len(state)  # 21,599 B: 372 B per tensor
    assert dict(weights.spec("vec2face-6drepnet").sizes) == {f"weights/{PUBLISHED}": PUBLISHED_BYTES}
    assert weights.licence("vec2face-6drepnet").restricted


def test_the_saved_file_has_the_published_size_and_loads_strictly(published, monkeypatch):
    path, state = published
    # torch's zip layout: a state dict of these tensors is the published size to within one
    # alignment pad per tensor (the rest is the archive name and torch version's records)
    assert abs(path.stat().st_size - PUBLISHED_BYTES) < 64 * len(state)
    monkeypatch.delenv(weights.PICKLE_ENV, raising=False)
    with pytest.raises(ModelNotFoundError, match="allow_pickle=True"):
        load_sixdrepnet(path)
    model = load_sixdrepnet(path, allow_pickle=True)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    monkeypatch.setattr(weights, "find", lambda name, path=None, allow_download=False: published[0])
    assert torch.equal(load_sixdrepnet(allow_pickle=True).linear_reg.bias, state["linear_reg.bias"])


def test_mismatched_keys_are_named(published, tmp_path):
    state = dict(published[1])
    del state["layer3.7.rbr_reparam.bias"]
    state["layer1.0.rbr_dense.conv.weight"] = torch.zeros(128, 64, 3, 3)
    state["linear_reg.weight"] = torch.zeros(3, 2048)
    path = tmp_path / "training_form.pth"
    torch.save(state, path)
    with pytest.raises(FileFormatError) as err:
        load_sixdrepnet(path, allow_pickle=True)
    message = str(err.value)
    for words in ("missing: layer3.7.rbr_reparam.bias", "unexpected: layer1.0.rbr_dense.conv.weight",
                  "linear_reg.weight (3, 2048) (expected (6, 2048))", "switch_to_deploy"):
        assert words in message


def test_wrapped_and_foreign_files(tmp_path):
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model_state_dict": {"linear_reg.bias": torch.ones(6)}, "epoch": 3}, wrapped)
    assert list(read_sixdrepnet_state(wrapped, allow_pickle=True)) == ["linear_reg.bias"]
    foreign = tmp_path / "foreign.pth"
    torch.save([torch.ones(2)], foreign)
    with pytest.raises(FileFormatError, match=r"holds a list, not a state dict.*6DRepNet.*models download vec2face-6drepnet"):
        read_sixdrepnet_state(foreign, allow_pickle=True)
    (tmp_path / "cut.pth").write_bytes(wrapped.read_bytes()[:100])
    with pytest.raises(FileFormatError, match="truncated"):
        read_sixdrepnet_state(tmp_path / "cut.pth", allow_pickle=True)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_sixdrepnet(tmp_path / "absent.pth", allow_pickle=True)


def six_d(matrices: np.ndarray) -> torch.Tensor:
    """The 6D representation 6DRepNet regresses: the first two columns of the rotation."""
    return torch.from_numpy(np.concatenate([matrices[:, :, 0], matrices[:, :, 1]], axis=1))


def test_6d_to_euler_recovers_scipy_angles():
    rng = np.random.default_rng(0)
    n = 200
    angles = np.stack([rng.uniform(-179, 179, n), rng.uniform(-89, 89, n), rng.uniform(-179, 179, n)], axis=1)
    # 6DRepNet's R = Rz(roll) Ry(yaw) Rx(pitch) is scipy's extrinsic "xyz" with (pitch, yaw, roll)
    matrices = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    got = euler_from_rotation(rotation_from_6d(six_d(matrices))).numpy()
    np.testing.assert_allclose(got, angles, atol=1e-4)
    # the network's 6 numbers are a column pair up to scale and skew: Gram-Schmidt removes both
    raw = six_d(matrices)
    raw = torch.cat([raw[:, :3] * 3.0, raw[:, 3:] * 0.5 + raw[:, :3] * 0.7], dim=1)
    np.testing.assert_allclose(euler_from_rotation(rotation_from_6d(raw)).numpy(), angles, atol=1e-4)


def test_yaw_is_the_rotation_about_y_with_6drepnets_sign():
    """Labels are built with 6DRepNet's get_R(pitch, yaw, roll); a pure +30 degree Ry reads yaw +30."""
    t = np.radians(30.0)
    ry = np.array([[[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]]])
    np.testing.assert_allclose(euler_from_rotation(rotation_from_6d(six_d(ry))).numpy(), [[0, 30, 0]], atol=1e-6)
    # gimbal lock (yaw 90): roll is 0 by convention and the angles still rebuild the rotation
    locked = Rotation.from_euler("xyz", [25, 90, 0], degrees=True).as_matrix()[None]
    got = euler_from_rotation(rotation_from_6d(six_d(locked))).numpy()
    assert got[0, 2] == 0 and abs(got[0, 1] - 90) < 1e-4
    np.testing.assert_allclose(Rotation.from_euler("xyz", got, degrees=True).as_matrix(), locked, atol=1e-6)


def test_preprocessing_follows_vec2face_and_6drepnet():
    with torch.device("meta"):
        vec2face, own = SixDRepNet(), SixDRepNet("6drepnet")
    image = torch.rand(2, 3, 112, 112) * 2 - 1
    assert torch.equal(vec2face.prepare(image), (image[:, [2, 1, 0]] + 1) / 2)  # BGR in [0, 1], 112 x 112
    x = own.prepare(image)
    assert x.shape == (2, 3, 224, 224)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    assert torch.allclose(x.mean(dim=(2, 3), keepdim=True) * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + mean,
                          ((image + 1) / 2).mean(dim=(2, 3), keepdim=True), atol=1e-3)


@pytest.mark.usefixtures("one_thread")
def test_attrop_with_the_real_pose_module_terminates_and_reports_pose_error():
    pipe = load_vec2face("vec2face-tiny")
    small = iresnet("r18", widths=(16, 16, 32, 32)).eval()
    torch.manual_seed(0)
    estimators = AttrOPEstimators.from_state_dicts(small.state_dict(), small.state_dict(), SixDRepNet().state_dict())
    ids = torch.nn.functional.normalize(torch.randn(2, 512, generator=torch.Generator().manual_seed(3)), dim=1)
    gens = [torch.Generator().manual_seed(100 + i) for i in range(2)]
    config = AttrOPConfig(max_steps=2, max_retries=1)
    result = attrop(pipe, ids, ids, estimators, gens, config=config, yaw_target=torch.tensor([30.0, 60.0]))
    assert all(s.steps <= 4 and s.retries <= 1 for s in result.status)
    with torch.no_grad():
        yaw = estimators.yaw(result.images)
    for status, target, measured in zip(result.status, (30.0, 60.0), yaw.tolist()):
        # final="checked": the returned image is the one whose pose error the status reports
        assert status.pose_error == pytest.approx(abs(target - abs(measured)), abs=1e-3)
        assert status.converged == (status.pose_error <= config.max_pose_error and status.identity_loss <= 0.3
                                    and config.quality_target - status.quality <= 1)


def test_registry_estimators_use_6drepnet_when_installed(published, tmp_path, monkeypatch):
    small = iresnet("r18", widths=(16, 16, 32, 32)).eval()
    files = {"vec2face-6drepnet": published[0]}
    for name in ("vec2face-arcface", "vec2face-magface"):
        files[name] = tmp_path / f"{name}.pth"
        torch.save(small.state_dict(), files[name])

    def find(name, path=None, allow_download=False):
        if name not in files:
            raise ModelNotFoundError(f"Model {name} was not found: synthface models download {name}")
        return files[name]

    monkeypatch.setattr(weights, "find", find)
    monkeypatch.delenv(weights.PICKLE_ENV, raising=False)
    with pytest.raises(ModelNotFoundError, match="allow_pickle=True"):
        AttrOPEstimators.from_registry()
    with_pose = AttrOPEstimators.from_registry(allow_pickle=True)
    assert with_pose.yaw is not None and with_pose.yaw(torch.zeros(1, 3, 112, 112)).shape == (1,)
    assert AttrOPEstimators.from_registry(pose=False, allow_pickle=True).yaw is None
    del files["vec2face-6drepnet"]
    assert AttrOPEstimators.from_registry(allow_pickle=True).yaw is None
    with pytest.raises(ModelNotFoundError, match="synthface models download vec2face-6drepnet"):
        AttrOPEstimators.from_registry(pose=True, allow_pickle=True)
