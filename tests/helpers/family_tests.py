"""`GeneratorFamilyTests`: what every generator family's tests inherit (after diffusers' PipelineTesterMixin).

A family's test class sets `model` (a tiny model name its family loads with no files) and
`family_class`, and gets: the declarations are well-formed and routed to it, determinism, batch ==
one by one (a per-image generator), dtype handling, a save/load round trip through the family's
own folder format, and refusal of options it does not take.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthface.errors import InvalidInputError


class GeneratorFamilyTests:
    model: str = ""
    family_class: type = type(None)
    id_dim: int = 512
    #: Whether image i depends on (conditions[i], seeds[i]) alone, whatever shares its batch.
    per_image: bool = True
    #: How far (in uint8 levels) a batched image may differ from the same image alone: 0, or 1 where
    #: batched GEMMs round differently before the family's conversion (Vec2Face truncates).
    batch_atol: int = 0
    seeds = (0, 1, 2**40 + 3)

    @pytest.fixture(scope="class")
    @classmethod
    def renderer(cls, one_thread):
        from synthface.generators import build_renderer

        return build_renderer(cls.model, device="cpu")

    def conditions(self, count: int = 3, seed: int = 0) -> np.ndarray:
        x = np.random.default_rng(seed).standard_normal((count, self.id_dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def test_declarations(self, renderer):
        from synthface.generators import OPTIONS, family_for, generator_names
        from synthface.weights import Licence

        family = family_for(self.model)
        assert isinstance(family, self.family_class) and renderer.family is family
        assert family.name and set(family.options) <= OPTIONS
        assert self.model in generator_names() and family.is_random(self.model)
        assert set(family.random_models) <= set(family.models)
        assert family.required_weights(self.model) == []  # a tiny model needs no files
        assert isinstance(family.licence(self.model), Licence) and renderer.licence == family.licence(self.model)
        assert family.native_size in (None, renderer.resolution)
        assert set(family.pose_models) <= set(family.models) and (not family.pose_models or "pose" in family.options)
        assert family.lcm_lora is None or "lcm" in family.options

    def test_images_are_uint8_at_the_declared_size(self, renderer):
        images = renderer(self.conditions(2), self.seeds[:2])
        side = renderer.resolution
        assert [im.shape for im in images] == [(side, side, 3)] * 2 and all(im.dtype == np.uint8 for im in images)

    def test_determinism(self, renderer):
        first = renderer(self.conditions(), self.seeds)
        again = renderer(self.conditions(), self.seeds)
        assert all(np.array_equal(a, b) for a, b in zip(first, again))
        other = renderer(self.conditions(), [s + 1 for s in self.seeds])
        assert not all(np.array_equal(a, b) for a, b in zip(first, other))  # the seed matters

    def test_batch_equals_one_by_one(self, renderer):
        if not self.per_image:
            pytest.skip("not a per-image generator")
        conditions = self.conditions()
        batch = renderer(conditions, self.seeds)
        alone = [renderer(conditions[i : i + 1], [s])[0] for i, s in enumerate(self.seeds)]
        assert all(np.abs(a.astype(np.int16) - b).max() <= self.batch_atol for a, b in zip(batch, alone))

    def test_dtype(self, renderer):
        from synthface.generators import build_renderer

        assert renderer.dtype == torch.float32
        half = build_renderer(self.model, device="cpu", dtype="fp16")  # fp16 on a CPU renders in fp32
        assert half.dtype == torch.float32
        with pytest.raises(InvalidInputError, match="Unknown dtype"):
            build_renderer(self.model, device="cpu", dtype="fp8")

    def test_save_load_round_trip(self, renderer, tmp_path):
        from synthface.generators import build_renderer, family_for

        renderer.pipeline.save_pretrained(tmp_path / "saved")
        assert family_for(tmp_path / "saved") is renderer.family
        loaded = build_renderer(str(tmp_path / "saved"), device="cpu")
        assert type(loaded.pipeline) is type(renderer.pipeline)
        conditions = self.conditions()
        assert all(np.array_equal(a, b) for a, b in zip(renderer(conditions, self.seeds), loaded(conditions, self.seeds)))

    def test_refuses_options_it_does_not_take(self, renderer):
        from dataclasses import replace

        from synthface.generators import RenderSettings, build_renderer

        with pytest.raises(InvalidInputError, match="does not take the option"):
            build_renderer(self.model, device="cpu", no_such_option=1)
        with pytest.raises(InvalidInputError, match="apply to a model name"):
            build_renderer(renderer.pipeline, no_such_option=1)
        if "pose" not in renderer.family.options or not renderer.takes_poses:
            with pytest.raises(InvalidInputError, match="no pose control"):
                renderer(self.conditions(1), [0], poses=np.zeros((1, 2), np.float32))
        if "negatives" not in renderer.family.options:
            assert not renderer.takes_negatives
            with pytest.raises(InvalidInputError, match="which takes no negative identities"):
                renderer(self.conditions(1), [0], negatives=self.conditions(1))
        if renderer.family.native_size is not None:
            with pytest.raises(InvalidInputError):
                replace(renderer, settings=RenderSettings(resolution=renderer.family.native_size * 2))(
                    self.conditions(1), [0])

