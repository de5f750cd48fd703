"""`seed_like_script`: the published scripts' generator state before their first noise draw, and the
proof that the port builds its UNet with exactly the original's draws (construction order and inits)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from synthface.errors import InvalidInputError
from synthface.generators.idiff.reference import NUMPY_AFTER_BUILD, script_draws, seed_like_script
from synthface.generators.idiff.unet import IDiffUNet


def _replay(draws) -> None:
    for op, numel in draws:
        scratch = torch.empty(numel)
        scratch.uniform_() if op == "u" else scratch.normal_()


def test_building_the_unet_consumes_exactly_the_originals_unet_draws_and_the_rest_is_the_first_stage():
    draws = script_draws("uiface")
    assert len(draws) == 811 and sum(n for _, n in draws) == 271_597_793
    torch.manual_seed(41)
    IDiffUNet()  # the published config, built as the script builds it (on the CPU, real tensors)
    after_unet = torch.get_rng_state()
    torch.manual_seed(41)
    _replay(draws[:689])
    assert torch.equal(torch.get_rng_state(), after_unet)  # the UNet's share: the first 689 draws, in order
    _replay(draws[689:])  # the VQ encoder and decoder
    expected = torch.randn(2, 3, 32, 32)
    seed_like_script("uiface", 41)
    assert torch.equal(torch.randn(2, 3, 32, 32), expected)
    # IDiff-Face's UNet has no learned empty context: the same list without its one normal_ draw
    idiff = script_draws("idiff_face")
    assert len(idiff) == 810 and [d for d in draws if d != ("n", 256)] == list(idiff)


def test_seed_like_script_seeds_every_generator_as_the_scripts_do():
    seed_like_script("idperturb")  # IDperturb's default seed 1205 on rank 0, UIFace's modules
    first = torch.rand(3)
    assert random.random() == random.Random(1205).random()
    assert np.random.random() == np.random.RandomState(NUMPY_AFTER_BUILD).random_sample()
    seed_like_script("uiface", 1205)
    assert torch.equal(torch.rand(3), first)
    for bad in ({"script": "arc2face"}, {"seed": -1}, {"seed": 1.5}, {"rank": -1}):
        with pytest.raises(InvalidInputError, match="must be"):
            seed_like_script(**bad)
