"""Test-double renderers for the engine: deterministic noise, and real photos with augmentations.

The photo renderer stands in for a diffusion model whose outputs a real recogniser can judge: it
renders identity i as person i mod 6 of insightface's t1.jpg, augmented per seed (flip, light,
scale), except for planted (identity, image) pairs, which get another person's face.
"""

from __future__ import annotations

import numpy as np

from synthface.engine import derive_seed


def noise_renderer(size: int = 48):
    """Images that depend only on each image's seed and condition vector (like a real model)."""

    def render(conditions: np.ndarray, seeds) -> list[np.ndarray]:
        out = []
        for cond, seed in zip(conditions, seeds):
            rng = np.random.default_rng(seed)
            base = rng.integers(0, 256, (size, size, 3)).astype(np.float64)
            base[..., 0] = (base[..., 0] + 255 * (cond[:size].reshape(-1, 1) > 0)) / 2
            out.append(base.astype(np.uint8))
        return out

    return render


def face_crops(size: int = 160) -> list[np.ndarray]:
    """The six faces of t1.jpg, each cut with a wide margin so that dlib finds it again."""
    from PIL import Image

    from tests.faces_fixtures import t1_faces, t1_image

    image = t1_image()
    crops = []
    for face in sorted(t1_faces(), key=lambda f: f.bbox[0]):  # left to right: a stable person order
        x1, y1, x2, y2 = face.bbox
        cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, 0.9 * max(x2 - x1, y2 - y1)
        box = [int(max(cx - half, 0)), int(max(cy - half, 0)), int(min(cx + half, image.shape[1])), int(min(cy + half, image.shape[0]))]
        crops.append(np.asarray(Image.fromarray(image).crop(box).resize((size, size), Image.BICUBIC)))
    return crops


class PhotoRenderer:
    """Identity i -> person `people[i]` (default i % 6), found from the condition vector's nearest
    identity vector. A condition far from every bank vector (cosine < 0.5: a replacement vector drawn
    by collision resampling) gets a person from `spare`, chosen by the vector itself, so any process
    renders it alike. `fails_after` makes the renderer raise after that many calls (a killed run)."""

    def __init__(self, bank_vectors: np.ndarray, recipe_seed: int, swaps: dict[tuple[int, int], int],
                 people: dict[int, int] | None = None, spare: tuple[int, ...] = (), fails_after: int | None = None):
        self.bank = bank_vectors
        self.crops = face_crops()
        self.swap_by_seed = {derive_seed(recipe_seed, ident, image): other for (ident, image), other in swaps.items()}
        self.people, self.spare, self.fails_after, self.calls = people or {}, spare, fails_after, 0

    def person(self, condition: np.ndarray) -> int:
        cos = self.bank @ condition
        ident = int(np.argmax(cos))
        if cos[ident] < 0.5 and self.spare:
            return self.spare[int(np.abs(condition).argmax()) % len(self.spare)]
        return self.people.get(ident, ident % len(self.crops))

    def __call__(self, conditions: np.ndarray, seeds) -> list[np.ndarray]:
        from PIL import Image, ImageEnhance

        self.calls += 1
        if self.fails_after is not None and self.calls > self.fails_after:
            raise RuntimeError("killed")
        out = []
        for condition, seed in zip(conditions, seeds):
            person = self.swap_by_seed.get(int(seed), self.person(condition))
            rng = np.random.default_rng(seed)
            img = Image.fromarray(self.crops[person])
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.2))
            side = int(160 * rng.uniform(0.9, 1.1))
            out.append(np.asarray(img.resize((side, side), Image.BICUBIC)))
        return out


def read_labels(fmt: str, folder) -> list[int]:
    """The class label of every image in one export, read back with that format's reader."""
    from synthface.export import imagefolder, parquet, recordio, webdataset

    if fmt == "imagefolder":
        return [label for label, _ in imagefolder.read(folder)]
    if fmt == "recordio":
        with recordio.RecordIOReader(folder) as reader:
            return [label for label, _ in reader.samples()]
    return [s.label for s in {"webdataset": webdataset, "parquet": parquet}[fmt].read(folder)]
