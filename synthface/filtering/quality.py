"""Image quality from what a face analyser reports: pose from five landmarks, sharpness, a quality
score in [0, 1], and which images fail the quality thresholds."""

from __future__ import annotations

import numpy as np

from synthface.errors import InvalidInputError

# ArcFace 112x112 five-point template (left eye, right eye, nose, left mouth, right mouth): the
# frontal reference for the landmark pose estimate.
_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
# Depth of the nose tip in front of the eyes, as a share of the eye distance (yaw) and of the
# eye-to-mouth distance (pitch); typical adult proportions, good to about ten degrees.
_NOSE_DEPTH_PER_EYE_DISTANCE = 0.5
_NOSE_DEPTH_PER_EYE_MOUTH = 0.43


def pose_from_landmarks(kps) -> np.ndarray:
    """Rough (yaw, pitch, roll) in degrees from 5-point landmarks (M, 5, 2), ArcFace point order.

    Roll is the eye-line angle. Yaw and pitch come from where the nose tip sits relative to the
    eye and mouth midpoints, with a typical nose depth; the ArcFace template gives (0, 0, 0).
    Good to about ten degrees: enough to drop profiles and to plot a pose spread. Positive yaw:
    the nose points to the image's right; positive pitch: the chin is raised.
    """
    p = np.asarray(kps, dtype=np.float64)
    if p.ndim != 3 or p.shape[1:] != (5, 2):
        raise InvalidInputError(f"kps must have shape (M, 5, 2), got {p.shape}.")
    return (_raw_pose(p) - _raw_pose(_TEMPLATE[None])).astype(np.float32)


def _raw_pose(p: np.ndarray) -> np.ndarray:
    eye_l, eye_r, nose, mouth_l, mouth_r = (p[:, i] for i in range(5))
    eye_vec = eye_r - eye_l
    roll = np.arctan2(eye_vec[:, 1], eye_vec[:, 0])
    cos_r, sin_r = np.cos(-roll), np.sin(-roll)

    def derotate(q):
        return np.stack([q[:, 0] * cos_r - q[:, 1] * sin_r, q[:, 0] * sin_r + q[:, 1] * cos_r], axis=1)

    eyes = derotate((eye_l + eye_r) / 2)
    mouth = derotate((mouth_l + mouth_r) / 2)
    nose_r = derotate(nose)
    eye_dist = np.maximum(np.linalg.norm(eye_vec, axis=1), 1e-9)
    height = np.maximum(mouth[:, 1] - eyes[:, 1], 1e-9)
    t = (nose_r[:, 1] - eyes[:, 1]) / height
    midline_x = eyes[:, 0] + t * (mouth[:, 0] - eyes[:, 0])
    yaw = np.arctan((nose_r[:, 0] - midline_x) / eye_dist / _NOSE_DEPTH_PER_EYE_DISTANCE)
    pitch = np.arctan((0.5 - t) / _NOSE_DEPTH_PER_EYE_MOUTH)
    return np.degrees(np.stack([yaw, pitch, roll], axis=1))


def sharpness(images) -> np.ndarray:
    """Variance of the 4-neighbour Laplacian of each image (M, H, W) or (M, H, W, C), uint8 scale.

    Higher is sharper; compare images of one size (the aligned 112x112 crops).
    """
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 4:
        x = x.mean(axis=3)
    if x.ndim != 3 or x.shape[1] < 3 or x.shape[2] < 3:
        raise InvalidInputError(f"images must have shape (M, H, W) or (M, H, W, C) with H, W >= 3, got {np.shape(images)}.")
    lap = x[:, 1:-1, :-2] + x[:, 1:-1, 2:] + x[:, :-2, 1:-1] + x[:, 2:, 1:-1] - 4 * x[:, 1:-1, 1:-1]
    return lap.reshape(lap.shape[0], -1).var(axis=1).astype(np.float32)


#: The sharpness (`sharpness`) at which an image counts as fully sharp in `quality_score`.
SHARPNESS_REF = 100.0


def quality_score(
    det_score=None, sharp=None, pose=None, *, sharpness_ref: float = SHARPNESS_REF, count: int | None = None
) -> np.ndarray:
    """A quality in [0, 1]: detection score x min(1, sharpness / sharpness_ref) x frontality.

    Frontality is cos(yaw) * cos(pitch), clipped at 0. Missing inputs count as 1; with no input
    at all the result is `count` ones.
    """
    parts = []
    if det_score is not None:
        parts.append(np.clip(np.nan_to_num(np.asarray(det_score, np.float64)), 0, 1))
    if sharp is not None:
        parts.append(np.clip(np.nan_to_num(np.asarray(sharp, np.float64)) / sharpness_ref, 0, 1))
    if pose is not None:
        rad = np.radians(np.nan_to_num(np.asarray(pose, np.float64)[:, :2], nan=90.0))
        parts.append(np.clip(np.cos(rad[:, 0]) * np.cos(rad[:, 1]), 0, 1))
    if not parts:
        return np.ones(count or 0, np.float32)
    return np.prod(parts, axis=0).astype(np.float32)


def quality_failures(det_score, min_det_score: float | None, count: int) -> np.ndarray:
    """Boolean (count,) mask of images whose detection score is below `min_det_score` (None: none fail)."""
    bad = np.zeros(count, dtype=bool)
    if det_score is not None and min_det_score is not None:
        bad |= ~(det_score >= min_det_score)
    return bad
