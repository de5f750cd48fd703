"""A tiny IJB-C (or IJB-B) folder in insightface's release layout, built from a real photo at test time.

The six people of insightface's t1.jpg are rendered into loose crops through known similarities
(t1 -> the ArcFace 112 frame by each person's five points, then a random rotation, scale and shift into
a canvas of random size), so the landmarks written for each crop are the exact images of that person's
points. Media are stills (one face) or "videos" (2-4 frames sharing a media id and its lighting); a
media id may recur in several templates of a person. Some faces are degraded (blur, noise, an occluding
block) and get a low detector score, as in the release. Every template pair is listed, labelled 1 when
both templates show the same person.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers.faces import t1_image

#: Five points (eyes, nose, mouth corners) of t1.jpg's six people, left to right (dlib's analysis, 0.1 px).
T1_KPS = np.array([
    [[87.7, 327.7], [127.4, 308.5], [118.5, 340.7], [113.3, 371.8], [146.1, 355.9]],
    [[289.8, 211.2], [320.8, 197.2], [313.3, 222.0], [308.6, 245.9], [334.3, 234.3]],
    [[492.0, 321.3], [540.7, 333.2], [509.5, 355.1], [482.4, 378.5], [522.7, 388.4]],
    [[761.1, 398.5], [801.2, 403.9], [778.1, 424.1], [758.4, 445.3], [791.6, 449.7]],
    [[913.7, 120.5], [948.5, 119.0], [932.0, 139.6], [918.5, 160.6], [947.3, 159.3]],
    [[1149.6, 325.5], [1190.8, 324.4], [1170.8, 348.6], [1154.4, 373.1], [1188.6, 372.2]],
])


@dataclass
class IJBLayout:
    """The folder and what was written: per face (row) its name, template, media, person, landmarks and
    score; per pair the two templates and the label."""

    root: Path
    target: str
    names: list[str]
    templates: np.ndarray
    medias: np.ndarray
    people: np.ndarray
    landmarks: np.ndarray
    scores: np.ndarray
    pairs: np.ndarray  # (P, 3): template1 template2 label

    def meta(self, kind: str) -> Path:
        return self.root / "meta" / f"{self.target}_{kind}.txt"


def _similarity(angle: float, scale: float, shift) -> np.ndarray:
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, shift[0]], [s, c, shift[1]]], dtype=np.float64)


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    return np.hstack([outer[:, :2] @ inner[:, :2], (outer[:, :2] @ inner[:, 2] + outer[:, 2])[:, None]])


def build_ijb_layout(root: str | Path, *, target: str = "ijbc", templates_per_person: int = 6, seed: int = 0) -> IJBLayout:
    """Write `root`/loose_crop/<n>.jpg and `root`/meta/<target>_*.txt; returns what was written."""
    import cv2

    from synthface.faces.align import estimate_similarity, transform_points

    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "loose_crop").mkdir(parents=True)
    (root / "meta").mkdir()
    photo = t1_image()
    to_frame = [estimate_similarity(k) for k in T1_KPS]  # t1 -> the 112 x 112 ArcFace frame, per person
    people = len(T1_KPS)
    template_ids = rng.permutation(np.arange(people * templates_per_person) * 3 + 7)  # sparse, unordered ids
    media_light: dict[int, tuple] = {}
    rows = []
    for t in range(people * templates_per_person):
        person = t % people
        for _ in range(int(rng.integers(1, 4))):
            media = int(1000 * person + rng.integers(0, 5))  # a person's media recur across their templates
            light = media_light.setdefault(media, (rng.uniform(0.55, 1.45), rng.uniform(-40, 40, 3), rng.uniform(0.6, 1.6)))
            frames = 1 if rng.random() < 0.5 else int(rng.integers(2, 5))
            for _ in range(frames):
                rows.append((int(template_ids[t]), media, person, light))
    names, landmarks, scores = [], [], []
    for n, (_, _, person, (gain, cast, gamma)) in enumerate(rows, 1):
        width, height = (int(v) for v in rng.integers(130, 260, 2))
        scale = rng.uniform(0.8, 1.8)
        outer = _similarity(np.deg2rad(rng.uniform(-30, 30)), scale, [0, 0])
        outer[:, 2] = np.array([width, height]) / 2 + rng.uniform(-15, 15, 2) - outer[:, :2] @ [56.0, 60.0]  # face centre
        warp = _compose(outer, to_frame[person])
        crop = cv2.warpAffine(photo, warp, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        x = 255.0 * (crop / 255.0) ** gamma * gain + cast
        damage = rng.random() ** 2
        if damage > 0.15:
            x = cv2.GaussianBlur(x, (0, 0), 4 * damage)
            x = x + rng.normal(0, 40 * damage, x.shape)
        if damage > 0.6:
            y0, x0 = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
            x[y0 : y0 + height // 3, x0 : x0 + width // 3] = rng.uniform(0, 255, 3)
        score = float(np.clip(1.0 - 0.9 * damage + rng.normal(0, 0.02), 0.05, 1.0))
        name = f"{n}.jpg"
        Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(root / "loose_crop" / name, quality=int(rng.integers(60, 96)))
        names.append(name)
        landmarks.append(transform_points(T1_KPS[person], warp))
        scores.append(round(score, 3))
    templates = np.array([r[0] for r in rows])
    medias = np.array([r[1] for r in rows])
    persons = np.array([r[2] for r in rows])
    landmarks_arr = np.round(np.array(landmarks), 3)
    with open(root / "meta" / f"{target}_face_tid_mid.txt", "w") as f:
        f.writelines(f"{name} {t} {m}\n" for name, t, m in zip(names, templates, medias))
    with open(root / "meta" / f"{target}_name_5pts_score.txt", "w") as f:
        for name, lmk, score in zip(names, landmarks_arr, scores):
            f.write(name + " " + " ".join(f"{v:.3f}" for v in lmk.reshape(-1)) + f" {score:.3f}\n")
    person_of = {int(t): int(p) for t, p in zip(templates, persons)}
    ids = sorted(person_of)
    pairs = np.array([(a, b, int(person_of[a] == person_of[b])) for i, a in enumerate(ids) for b in ids[i + 1 :]])
    pairs = pairs[rng.permutation(len(pairs))]
    with open(root / "meta" / f"{target}_template_pair_label.txt", "w") as f:
        f.writelines(f"{a} {b} {label}\n" for a, b, label in pairs)
    return IJBLayout(root, target, names, templates, medias, persons, landmarks_arr, np.array(scores), pairs)
