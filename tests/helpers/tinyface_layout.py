"""A tiny TinyFace test split in AdaFace's aligned layout, built at test time from real photos.

The six people of insightface's t1.jpg are cut out through known similarities of their five landmarks
(dlib's points on t1.jpg, written below so no detector runs), jittered like a misaligned MTCNN crop,
degraded to ~16-28 px and blown back up to 112 x 112 like TinyFace's native low resolution, and written as
JPEG or PNG at several depths of Probe/, Gallery_Match/ and Gallery_Distractor/. Shared with
rfw_layout.py: the landmarks, `render` (a photo through a similarity) and `tiny_recognizer`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthface.fr.benchmarks.recognizers import Recognizer

#: Five points (left eye, right eye, nose, left and right mouth corner) of t1.jpg's six people, left to right
#: (dlib's 5-point model on insightface/data/images/t1.jpg, rounded to 0.01 px).
T1_KPS = np.array([
    [[87.73, 327.67], [127.39, 308.49], [118.52, 340.74], [113.28, 371.81], [146.12, 355.93]],
    [[289.77, 211.22], [320.81, 197.23], [313.28, 221.97], [308.59, 245.86], [334.30, 234.28]],
    [[492.00, 321.29], [540.68, 333.23], [509.52, 355.08], [482.40, 378.53], [522.72, 388.41]],
    [[761.08, 398.54], [801.23, 403.85], [778.12, 424.14], [758.40, 445.34], [791.64, 449.74]],
    [[913.71, 120.52], [948.53, 118.98], [932.01, 139.65], [918.49, 160.59], [947.33, 159.31]],
    [[1149.58, 325.54], [1190.83, 324.45], [1170.83, 348.57], [1154.39, 373.08], [1188.55, 372.17]],
], np.float64)


def t1_bgr() -> np.ndarray:
    import cv2

    from tests.helpers.faces import T1

    return cv2.imread(str(T1), cv2.IMREAD_COLOR)


def similarity(angle_deg: float, scale: float, centre_from, centre_to) -> np.ndarray:
    """(2, 3) matrix rotating by `angle_deg` and scaling by `scale` about `centre_from`, which lands on `centre_to`."""
    a = np.deg2rad(angle_deg)
    r = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    t = np.asarray(centre_to, float) - r @ np.asarray(centre_from, float)
    return np.hstack([r, t[:, None]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def render(image: np.ndarray, matrix: np.ndarray, size: int, gain=(1.0, 1.0, 1.0)) -> np.ndarray:
    """`image` warped through `matrix` onto a size x size canvas, each channel scaled by `gain` (light and colour)."""
    import cv2

    out = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return np.clip(out.astype(np.float32) * np.asarray(gain, np.float32), 0, 255).astype(np.uint8)


def aligned_face(person: int, rng: np.random.Generator, *, low: int) -> np.ndarray:
    """Person `person` of t1.jpg as a 112 x 112 BGR crop: ArcFace-aligned from slightly jittered landmarks,
    downscaled to `low` px and back up (TinyFace's native resolution), with a random colour gain."""
    import cv2

    from synthface.faces.align import estimate_similarity

    kps = T1_KPS[person]
    jitter = similarity(rng.uniform(-6, 6), rng.uniform(0.93, 1.07), kps.mean(0), kps.mean(0) + rng.uniform(-2, 2, 2))
    matrix = estimate_similarity(apply(jitter, kps))
    crop = render(t1_bgr(), matrix, 112, rng.uniform(0.75, 1.25, 3))
    small = cv2.resize(crop, (low, low), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (112, 112), interpolation=cv2.INTER_CUBIC)


def tiny_recognizer(seed: int = 0, dim: int = 16) -> Recognizer:
    """A random two-layer net on 16 x 16 pooled RGB crops (112 input): colour- and mirror-sensitive, float32."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((16 * 16 * 3, 48)) / np.sqrt(16 * 16 * 3)).astype(np.float32)
    w2 = (rng.standard_normal((48, dim)) / np.sqrt(48)).astype(np.float32)

    def forward(crops: np.ndarray) -> np.ndarray:
        return tiny_forward(crops, w1, w2)

    rec = Recognizer(forward, 112, f"tiny random net (seed {seed})")
    rec.weights = (w1, w2)  # for the tests' independent computation
    return rec


def tiny_forward(crops: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    x = (np.asarray(crops, np.float32) / 255.0 - 0.5) / 0.5
    x = x.reshape(len(x), 16, 7, 16, 7, 3).mean(axis=(2, 4)).reshape(len(x), -1)
    return np.tanh(x @ w1) @ w2


# ----------------------------------------------------------------------------------------------- the split

#: Identity label of each t1 person in the split (written in the probe / match file names).
LABELS = (3, 7, 12, 25, 31, 40)


def build_tinyface(root: Path, seed: int = 0) -> Path:
    """Write the split under `root/aligned_pad_0.1_pad_high/` and return that folder.

    Probe: three images of each person (16-22 px), plus two probes (labels 90, 91) with no mate. Gallery_Match:
    two images of each person (24-28 px), one person's in a sub-folder. Gallery_Distractor: 30 images at two
    depths, of the same six people; 12 of them are named with a probe's label first (`<label>_...`), which must
    not make them mates."""
    import cv2

    rng = np.random.default_rng(seed)
    split = root / "aligned_pad_0.1_pad_high"

    def write(rel: str, image: np.ndarray) -> None:
        path = split / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        params = [cv2.IMWRITE_JPEG_QUALITY, 92] if path.suffix == ".jpg" else []
        assert cv2.imwrite(str(path), image, params)

    for person, label in enumerate(LABELS):
        for k in range(1, 4):
            write(f"Probe/{label}_{k}.jpg", aligned_face(person, rng, low=int(rng.integers(16, 23))))
        sub = "deeper/" if person == 2 else ""
        for k in range(4, 6):
            suffix = ".png" if k == 5 else ".jpg"
            write(f"Gallery_Match/{sub}{label}_{k}{suffix}", aligned_face(person, rng, low=int(rng.integers(24, 29))))
    write("Probe/90_1.jpg", aligned_face(0, rng, low=20))
    write("Probe/91_1.jpg", aligned_face(4, rng, low=20))
    for i in range(30):
        person = i % 6
        name = f"{LABELS[person]}_{1000 + i}_AD_0_{i}_face{i}.jpg" if i < 12 else f"{500 + i}_x_{i}_0_face{i}.jpg"
        write(f"Gallery_Distractor/{name[:6]}/{name}" if i % 3 else f"Gallery_Distractor/{name}",
              aligned_face(person, rng, low=int(rng.integers(16, 29))))
    return split
