"""weights.read_pickled_state_dict: the one reader of pickled `.pth` state dicts behind the pickle
opt-in (the demo's conditioning recogniser, AttrOP's estimators, 6DRepNet)."""

from __future__ import annotations

import pytest
import torch

from synthface import weights
from synthface.errors import FileFormatError, ModelNotFoundError

STATE = {"linear_reg.weight": torch.ones(6, 4), "linear_reg.bias": torch.zeros(6)}


def saved(content):
    return lambda path: torch.save(content, path)


def truncated(path):
    torch.save(STATE, path)
    path.write_bytes(path.read_bytes()[:100])


CASES = {  # name: (write the file, keyword arguments, the error or None, needles in its message)
    "no opt-in": (saved(STATE), {"allow_pickle": False}, ModelNotFoundError,
                  ["6DRepNet pose estimator", "6DRepNet_300W_LP_AFLW2000.pth", "allow_pickle=True", "--allow-pickle",
                   weights.PICKLE_ENV]),
    "truncated": (truncated, {}, FileFormatError,
                  ["cannot be read as a torch checkpoint", "truncated", "synthface models verify vec2face-6drepnet",
                   "synthface models download vec2face-6drepnet"]),
    "missing": (None, {}, FileFormatError, ["missing", "synthface models verify vec2face-6drepnet"]),
    "a list": (saved([torch.ones(2)]), {}, FileFormatError,
               ["holds a list, not a state dict", "6DRepNet pose estimator", "weights/6DRepNet_300W_LP_AFLW2000.pth",
                "registry entry vec2face-6drepnet", "synthface models download vec2face-6drepnet"]),
    "wrapped, not unwrapped": (saved({"model_state_dict": STATE, "epoch": 3}), {"unwrap": ()}, FileFormatError,
                               ["holds a dict with keys 'model_state_dict', 'epoch'", "vec2face-6drepnet"]),
    "bare": (saved(STATE), {}, None, []),
    "wrapped": (saved({"model_state_dict": STATE, "epoch": 3}), {}, None, []),
    "wrapped under a later key": (saved({"state_dict": STATE}), {"unwrap": ("model_state_dict", "state_dict")},
                                  None, []),
}


@pytest.mark.parametrize("case", list(CASES))
def test_read_pickled_state_dict(case, tmp_path, monkeypatch):
    write, kwargs, error, needles = CASES[case]
    monkeypatch.delenv(weights.PICKLE_ENV, raising=False)
    path = tmp_path / "6DRepNet_300W_LP_AFLW2000.pth"
    if write is not None:
        write(path)
    kwargs = {"model": "vec2face-6drepnet", "what": "6DRepNet pose estimator", "allow_pickle": True,
              "unwrap": ("model_state_dict",), **kwargs}
    if error is None:
        state = weights.read_pickled_state_dict(path, **kwargs)
        assert list(state) == list(STATE) and all(torch.equal(state[k], v) for k, v in STATE.items())
        return
    with pytest.raises(error) as info:
        weights.read_pickled_state_dict(path, **kwargs)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_the_environment_opt_in_and_a_file_of_another_entry(tmp_path, monkeypatch):
    """SYNTHFACE_ALLOW_PICKLE=1 is an opt-in; a damaged registered file is named by its own entry."""
    path = tmp_path / "magface-r100-glint360k.pth"
    torch.save(STATE, path)
    monkeypatch.setenv(weights.PICKLE_ENV, "1")
    assert list(weights.read_pickled_state_dict(path, model="vec2face-arcface", what="x")) == list(STATE)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(FileFormatError, match="models verify vec2face-magface"):
        weights.read_pickled_state_dict(path, model="vec2face-arcface", what="x")
