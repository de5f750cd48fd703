"""A tiny RFW test release (test/data, test/txts) and its <Race>_test.bin packs, built at test time from real photos.

Each race has six identities (the six people of t1.jpg, in a race-dependent order) with three loose 400 x 400
crops each, rendered from t1.jpg through known similarities (random rotation, scale, offset and colour gain),
so the landmarks written to <Race>_lmk.txt are the photo's points carried through the same similarity: true.
Pairs follow RFW's file order, 10 blocks of genuine then impostor pairs (2 + 2 per block, 40 per race).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthface.fr.benchmarks.bin import write_bin
from tests.helpers.tinyface_layout import T1_KPS, apply, render, similarity, t1_bgr

GROUPS = ("African", "Asian", "Caucasian", "Indian")
SIZE = 400
GENUINE = ((1, 2), (1, 3), (2, 3))


def identity(race: str, k: int) -> str:
    return f"m.0{race[:2].lower()}{k}x"


def build_rfw(root: Path, seed: int = 0) -> Path:
    """Write the release under `root` (root/test/...) and return `root`."""
    import cv2

    rng = np.random.default_rng(seed)
    photo = t1_bgr()
    for r, race in enumerate(GROUPS):
        lmk_lines = []
        for k in range(6):
            person = (k + r) % 6
            ident = identity(race, k)
            for n in range(1, 4):
                kps = T1_KPS[person]
                eyes = np.linalg.norm(kps[1] - kps[0])
                matrix = similarity(rng.uniform(-20, 20), rng.uniform(60, 95) / eyes, kps.mean(0),
                                    (SIZE / 2 + rng.uniform(-25, 25), SIZE / 2 + rng.uniform(-25, 25)))
                path = root / "test" / "data" / race / ident / f"{ident}_{n:04d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                assert cv2.imwrite(str(path), render(photo, matrix, SIZE, rng.uniform(0.7, 1.3, 3)), [cv2.IMWRITE_JPEG_QUALITY, 95])
                points = apply(matrix, kps)
                lmk_lines.append(f"./test/data/{race}/{ident}/{ident}_{n:04d}.jpg\t{k}\t" + "\t".join(f"{v:.4f}" for v in points.ravel()))
        pairs = []
        for block in range(10):
            for g in range(2):
                k = (2 * block + g) % 6
                n1, n2 = GENUINE[(block + g) % 3]
                pairs.append(f"{identity(race, k)}\t{n1}\t{n2}")
            for g in range(2):
                k = (block + 3 * g) % 6
                other = (k + 1 + (block + g) % 5) % 6
                pairs.append(f"{identity(race, k)}\t{1 + (block + g) % 3}\t{identity(race, other)}\t{1 + (block + 2 * g) % 3}")
        txts = root / "test" / "txts" / race
        txts.mkdir(parents=True, exist_ok=True)
        (txts / f"{race}_pairs.txt").write_text("\n".join(pairs) + "\n")
        (txts / f"{race}_lmk.txt").write_text("\n".join(lmk_lines) + "\n")
    return root


def read_pairs(root: Path, race: str) -> list[tuple[Path, Path, bool]]:
    """The race's pairs as (image 1, image 2, same), read independently of synthface."""
    out = []
    for line in (root / "test" / "txts" / race / f"{race}_pairs.txt").read_text().splitlines():
        f = line.split("\t")
        id1, n1, id2, n2 = (f[0], f[1], f[0], f[2]) if len(f) == 3 else f
        data = root / "test" / "data" / race
        out.append((data / id1 / f"{id1}_{int(n1):04d}.jpg", data / id2 / f"{id2}_{int(n2):04d}.jpg", len(f) == 3))
    return out


def read_lmk(root: Path, race: str) -> dict[str, np.ndarray]:
    out = {}
    for line in (root / "test" / "txts" / race / f"{race}_lmk.txt").read_text().splitlines():
        f = line.split("\t")
        out[Path(f[0]).stem] = np.array([float(v) for v in f[2:]]).reshape(5, 2)
    return out


def build_bins(root: Path, out: Path, size: int = 112) -> Path:
    """<Race>_test.bin packs of the release's pairs: each image aligned (insightface's norm_crop) and stored as
    PNG, so the packs decode to exactly the folder route's crops."""
    import cv2

    from synthface.faces import norm_crop

    out.mkdir(parents=True, exist_ok=True)
    for race in GROUPS:
        lmk = read_lmk(root, race)
        images, issame = [], []
        for a, b, same in read_pairs(root, race):
            for path in (a, b):
                crop = norm_crop(cv2.imread(str(path)), lmk[path.stem], size)  # BGR in, BGR out: PNG stores BGR
                images.append(cv2.imencode(".png", crop)[1].tobytes())
            issame.append(same)
        write_bin(out / f"{race}_test.bin", images, issame)
    return out
