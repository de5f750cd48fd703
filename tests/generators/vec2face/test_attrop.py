"""AttrOP on the tiny Vec2Face: always terminates within its caps, reports a status per sample."""

from __future__ import annotations

import pytest
import torch

from synthface.errors import InvalidInputError
from synthface.fr.backbones import iresnet
from synthface.generators.vec2face.attrop import AttrOPConfig, AttrOPEstimators, attrop
from synthface.pipelines import load_vec2face

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe():
    return load_vec2face("vec2face-tiny")


def unit(n: int, seed: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, 512, generator=torch.Generator().manual_seed(seed)), dim=1)


def gens(n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(100 + i) for i in range(n)]


def projection(seed: int, scale: float = 1.0):
    """A fixed random linear judge of the image: differentiable, so Adam has something to follow."""
    weight = torch.randn(3 * 112 * 112, 512, generator=torch.Generator().manual_seed(seed)) / 200
    return lambda images: images.flatten(1) @ weight * scale


def test_unsatisfiable_estimators_stop_at_the_caps_and_say_so(pipe):
    ids = unit(3, 0)
    never = AttrOPEstimators(identity=projection(1), quality=lambda im: torch.zeros(len(im), 512) + 0 * im.sum())
    config = AttrOPConfig(max_steps=3, max_retries=1, quality_target=27.0)
    result = attrop(pipe, ids, ids, never, gens(3), config=config)
    assert [s.converged for s in result.status] == [False] * 3
    assert [s.steps for s in result.status] == [6] * 3 and [s.retries for s in result.status] == [1] * 3
    assert all(s.quality == 0.0 and s.identity_loss > config.max_identity_loss for s in result.status)
    assert result.images.shape == (3, 3, 112, 112) and result.images.abs().max() <= 1


def test_samples_converge_on_their_own_and_stop_moving(pipe):
    ids = unit(2, 1)
    e1 = torch.eye(512)[0]
    judge = projection(2, scale=1e-3)
    # every image is judged ~e1: sample 0 (class e1) passes at once, sample 1 (class -e1) never does
    estimators = AttrOPEstimators(identity=lambda im: e1 + judge(im),
                                  quality=lambda im: torch.full((len(im), 512), 2.0) + 0 * im.sum())
    config = AttrOPConfig(max_steps=4, max_retries=0)
    result = attrop(pipe, ids, torch.stack([e1, -e1]), estimators, gens(2), config=config)
    first, second = result.status
    assert first.converged and first.steps == 1 and first.identity_loss < 1e-3
    assert not second.converged and second.steps == 4 and second.identity_loss > 1.9
    assert torch.allclose(result.vectors[0], ids[0] * 22)  # converged at once: never moved
    assert (result.vectors[1] - ids[1] * 22).abs().max() > 0.05  # optimised (Adam, lr 0.1)


def test_iresnet_estimators_from_state_dicts_drive_the_loop(pipe):
    small = iresnet("r18", widths=(16, 16, 32, 32)).eval()
    estimators = AttrOPEstimators.from_state_dicts(small.state_dict(), small.state_dict())
    ids = unit(2, 3)
    result = attrop(pipe, ids, ids, estimators, gens(2), config=AttrOPConfig(max_steps=2, max_retries=0),
                    final="fresh")
    assert all(s.steps <= 2 for s in result.status) and result.images.shape == (2, 3, 112, 112)
    with torch.no_grad():
        quality = estimators.quality(result.images).norm(dim=1)
    assert all(q > 0 for q in quality)


@pytest.mark.parametrize("kwargs, words", [
    (dict(generator=None), "one torch.Generator per sample"),
    (dict(config=AttrOPConfig(max_steps=0)), "max_steps"),
    (dict(config=AttrOPConfig(max_retries=-1)), "max_retries"),
    (dict(config=AttrOPConfig(lr=float("nan"))), "lr"),
    (dict(yaw_target=torch.zeros(2)), "yaw estimator"),
    (dict(final="best"), "final"),
])
def test_bad_attrop_arguments_are_refused(pipe, kwargs, words):
    estimators = AttrOPEstimators(identity=projection(1), quality=projection(2))
    call = {"generator": gens(2), **kwargs}
    with pytest.raises(InvalidInputError) as err:
        attrop(pipe, unit(2, 0), unit(2, 0), estimators, call.pop("generator"), **call)
    assert words in str(err.value)
