"""Run folders built by hand in the engine's layout, for the report's tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_run(root: Path, labels, emb, kept, reasons, *, ids=None, pose=None, paths=None) -> Path:
    """A run folder in the engine's layout: manifest.parquet, embeddings.safetensors, identities.safetensors
    (`ids`, else one random unit vector per identity)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.numpy import save_file

    root.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels, np.int64)
    m = labels.size
    image = np.zeros(m, np.int64)
    for lab in np.unique(labels):
        image[labels == lab] = np.arange(np.count_nonzero(labels == lab))
    cols = {
        "identity": pa.array(labels, pa.int64()),
        "image": pa.array(image, pa.int64()),
        "seed": pa.array(np.arange(m) * 7919, pa.int64()),
        "condition_cos": pa.array(np.full(m, 0.9, np.float32)),
        "filter_cos": pa.array(np.full(m, np.nan, np.float32)),
        "kept": pa.array(np.asarray(kept, bool)),
        "drop_reason": pa.array([str(r) for r in reasons], pa.string()),
        "path": pa.array(paths if paths is not None else [""] * m, pa.string()),
        "det_score": pa.array(np.full(m, 0.99, np.float32)),
    }
    if pose is not None:
        for k, name in enumerate(("yaw", "pitch", "roll")):
            cols[name] = pa.array(np.asarray(pose, np.float32)[:, k])
    pq.write_table(pa.table(cols), root / "manifest.parquet")
    save_file({"embeddings": np.ascontiguousarray(emb, dtype=np.float32)}, str(root / "embeddings.safetensors"))
    if ids is None:  # a bank of unit vectors, one per identity (a run folder always holds its bank)
        ids = np.random.default_rng(0).standard_normal((int(labels.max(initial=-1)) + 1 or 1, 8))
        ids /= np.linalg.norm(ids, axis=1, keepdims=True)
    save_file({"ids": np.ascontiguousarray(ids, dtype=np.float32)}, str(root / "identities.safetensors"))
    return root


def hand_example(root: Path, *, images: bool = False) -> Path:
    """Five identities in 3-d, small enough to check by eye.

    0 ~ x axis, 1 ~ y axis, 2 ~ z axis; 3 renders as 0 (a collision); 4 sits between all three.
    Greedy packing at 0.3 and 0.4 keeps 0, 1, 2 only: unique = 1, 2, 3, 3, 3.
    """
    nan = [np.nan] * 3
    rows = [
        (0, [1, 0, 0], True, ""), (0, [0.9, 0.1, 0], True, ""), (0, [0.8, 0, 0.2], True, ""),
        (0, nan, False, "no_face"), (0, [0, 1, 0], False, "low_similarity"),
        (1, [0, 1, 0], True, ""), (1, [0.1, 0.9, 0], True, ""), (1, [0.2, 0.9, 0.1], False, "near_duplicate"),
        (2, [0, 0, 1], True, ""), (2, [0, 0.2, 1], True, ""), (2, [0.1, 0, 1], True, ""),
        (3, [1, 0.1, 0], True, ""), (3, [0.9, 0, 0.1], True, ""),
        (4, [0.6, 0.6, 0.5], True, ""), (4, [0.5, 0.5, 0.5], False, "surplus"),
    ]
    labels = [r[0] for r in rows]
    emb = np.array([r[1] for r in rows], np.float32)
    pose = np.stack([np.linspace(-40, 40, len(rows)), np.linspace(10, -10, len(rows)), np.zeros(len(rows))], 1)
    paths = None
    if images:
        from PIL import Image

        (root / "images").mkdir(parents=True, exist_ok=True)
        paths = []
        for i, (lab, *_rest) in enumerate(rows):
            colour = [(200, 60, 60), (60, 160, 60), (60, 60, 200), (200, 200, 40), (160, 60, 160)][lab]
            Image.new("RGB", (64, 64), colour).save(root / "images" / f"{i:04d}.png")
            paths.append(f"images/{i:04d}.png")
    ids = np.eye(5, 3, dtype=np.float32) + 0.01
    return write_run(root, labels, emb, [r[2] for r in rows], [r[3] for r in rows], ids=ids, pose=pose, paths=paths)
