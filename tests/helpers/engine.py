"""Shared helpers of the engine tests: small recipes, folder digests, test-double renderers
(deterministic noise, and real photos with augmentations), and runs on real photos.

The photo renderer stands in for a diffusion model whose outputs a real recogniser can judge: it
renders identity i as person i mod 6 of insightface's t1.jpg, augmented per seed (flip, light,
scale), except for planted (identity, image) pairs, which get another person's face.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthface.recipe import Recipe, parse_recipe
from synthface.runfolder import RunLayout
from synthface.seeds import derive_seed


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

    from tests.helpers.faces import t1_faces, t1_image

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


def small_recipe(**sections) -> Recipe:
    data = {
        "name": "t",
        "seed": 3,
        "identities": {"count": 7, "max_cos": 0.3, "dim": 64},
        "generation": {"model": "test-double", "batch_size": 5},
        "variation": {"images_per_identity": 3, "overgenerate": 1.0, "perturbation": {"1.0": 0.5, "0.9": 0.5}},
        "filtering": {"enabled": False},
        "export": {"formats": ["imagefolder", "recordio"]},
        "compute": {"shard_size": 2},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value) if isinstance(value, dict) else data.__setitem__(key, value)
    return parse_recipe(data)


def tree_digest(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes, except logs, timing-bearing markers and stage records,
    and the files that record the command line (and so the output folder's name)."""
    skip = {"run.log", "run.json", "finalize.done", "README.md"}
    timings = f"{RunLayout.SHARDS}/{RunLayout.STAGE_RECORD.format(rank='*')}"
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip and not p.name.endswith(".done") and not p.relative_to(root).match(timings)
    }


COLLISION_COS = 0.95  # the six people of t1.jpg are at most 0.90 apart under dlib; one person's images ~0.98
PLANTED = {0: 0, 1: 1, 2: 2, 3: 0}  # identity 3 is rendered as person 0, like identity 0: a collision


def photo_recipe(**filtering):
    return small_recipe(
        identities={"count": 4, "dim": 512},
        generation={"batch_size": 6},
        variation={"images_per_identity": 3, "overgenerate": 1.0, "perturbation": {"1.0": 1.0}},
        filtering={"enabled": True, "analyzer": "dlib", "near_duplicate_cos": 1.0, "collision_cos": COLLISION_COS,
                   **filtering},
        export={"formats": ["imagefolder"]},
        compute={"shard_size": 2},
    )


def run_photos(recipe, out, ranks=None, swaps=None, **renderer_options):
    """Run `recipe` into `out` on PhotoRenderer's real photos (PLANTED people, `swaps`) through dlib."""
    from synthface.distributed import Ranks
    from synthface.engine import ensure_identities, prepare_output, run
    from synthface.faces import get_analyzer

    layout = prepare_output(recipe, out)
    bank = ensure_identities(recipe, layout, Ranks())
    renderer = PhotoRenderer(bank.vectors, recipe.seed, swaps or {}, people=PLANTED, spare=(5,), **renderer_options)
    return run(recipe, out, ranks=ranks, renderer=renderer, analyzer=get_analyzer("dlib"), wait_seconds=5)


def data_files(root) -> dict[str, bytes]:
    """`tree_digest` less the report, which records the folder's name and its own timings."""
    return {k: v for k, v in tree_digest(root).items() if k not in ("report.json", "report.html") and "rank" not in k}
