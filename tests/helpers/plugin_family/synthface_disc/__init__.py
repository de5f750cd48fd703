"""An example synthface generator family in a package of its own: one coloured disc per identity.

The disc's hue is the angle of the identity vector's first two coordinates, so one identity keeps
its colour; its position and size move with the image's seed (drawn from the image's own
generator), so an image is the same for the same (identity vector, seed) in any batch. It draws
no faces: use it to see a plug-in run end to end (`synthface run smoke --set generation.model=disc`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from synthface.errors import InvalidInputError
from synthface.generators import GeneratorFamily
from synthface.weights import Licence

CONFIG = "disc_pipeline.json"


@dataclass
class DiscOutput:
    images: torch.Tensor  # (B, 3, H, W) floats in [0, 1]


class DiscPipeline:
    """`pipe(id_embeds=(B, D), generator=[B torch.Generator], output_type="pt") -> DiscOutput`."""

    def __init__(self, size: int = 64, radius: float = 0.3) -> None:
        self.size, self.radius = int(size), float(radius)
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def to(self, device=None, dtype=None):
        self.device = torch.device(device) if device is not None else self.device
        self.dtype = dtype if dtype is not None else self.dtype
        return self

    def set_progress_bar_config(self, **kwargs) -> None:
        pass  # one pass, nothing to report

    def save_pretrained(self, folder) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / CONFIG).write_text(json.dumps({"size": self.size, "radius": self.radius}))

    @classmethod
    def from_pretrained(cls, folder) -> DiscPipeline:
        return cls(**json.loads((Path(folder) / CONFIG).read_text()))

    @torch.no_grad()
    def __call__(self, id_embeds: torch.Tensor, generator: list[torch.Generator], output_type: str = "pt"):
        if output_type != "pt" or len(generator) != len(id_embeds):
            raise InvalidInputError("DiscPipeline takes output_type='pt' and one generator per ID vector.")
        ids = torch.nn.functional.normalize(id_embeds.float(), dim=1)
        hue = (torch.atan2(ids[:, 1], ids[:, 0]) / (2 * torch.pi)) % 1.0
        colour = (((hue[:, None] * 6 + torch.tensor([0.0, 4.0, 2.0])) % 6 - 3).abs() - 1).clamp(0, 1)  # HSV -> RGB
        jitter = torch.stack([torch.rand(3, generator=g) for g in generator])  # x, y, radius: the image's own draws
        axis = (torch.arange(self.size) + 0.5) / self.size
        dy = axis[None, :, None] - (0.3 + 0.4 * jitter[:, 1])[:, None, None]
        dx = axis[None, None, :] - (0.3 + 0.4 * jitter[:, 0])[:, None, None]
        radius = (self.radius * (0.75 + 0.5 * jitter[:, 2]))[:, None, None]
        inside = (dx.square() + dy.square() <= radius.square()).float()[:, None]  # (B, 1, H, W)
        images = inside * colour[:, :, None, None] + (1 - inside) * 0.5
        return DiscOutput(images=images.to(self.device, self.dtype))


class DiscFamily(GeneratorFamily):
    """Model "disc" (built in, no files) or a folder written by `DiscPipeline.save_pretrained`."""

    name = "disc"
    title = "Disc"
    models = ("disc",)
    random_models = ("disc",)  # no trained weights: it draws no faces
    options = frozenset()  # one pass: no steps, guidance, LCM, poses or AttrOP
    native_size = 64

    def load(self, model, *, device, dtype, allow_download, allow_pickle, radius: float = 0.3):
        pipe = DiscPipeline.from_pretrained(model) if self.claims(model) else DiscPipeline(radius=radius)
        return pipe.to(device, dtype)

    def accepts(self, pipeline) -> bool:
        return isinstance(pipeline, DiscPipeline)

    def claims(self, path: str) -> bool:
        return (Path(path) / CONFIG).is_file()

    def optimize(self, pipeline, optimizations) -> None:
        if optimizations.compile or optimizations.vae_slicing:
            raise InvalidInputError("The disc generator has nothing to compile or slice; leave those off.")

    def call_kwargs(self, pipeline, settings) -> dict:
        if settings.resolution not in (None, pipeline.size):
            raise InvalidInputError(f"The disc generator draws {pipeline.size} x {pipeline.size} images only.")
        return {}

    def native_resolution(self, pipeline) -> int:
        return pipeline.size

    def licence(self, model: str) -> Licence:
        return Licence("MIT (an example plug-in: discs, no faces)", False)
