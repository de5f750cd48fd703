"""Vec2Face+'s pose condition image: five coloured dots drawn from a target yaw and pitch.

Vec2Face+ was trained on landmark images of ArcFace-aligned faces: black 112x112, filled discs of
radius ~3 px at the five points, eyes pure red, nose tip pure green, mouth corners pure blue. The
published code reads such images from disk; here they are rendered from a pose, so a recipe can ask
for a pose distribution per identity. The five template points get a depth from a mean face, are
rotated (pitch about the x axis, then yaw about the y axis, around a centre behind the face),
projected orthographically, and mapped back onto the ArcFace template by the least-squares
similarity an aligner would fit: the dots land where a detector would find them on an aligned crop
of a face in that pose. Geometry is a model, not a measurement: an approximation for control.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from synthface.errors import InvalidInputError
from synthface.faces.align import ARCFACE_TEMPLATE, estimate_similarity, transform_points

IMAGE_SIZE = 112
DOT_RADIUS = 3.0
#: RGB of each point: left eye, right eye (red), nose tip (green), mouth corners (blue).
DOT_COLOURS = ((255, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 255))
#: Depth of each template point towards the camera, in template pixels (a mean-face proportion:
#: the nose tip ~0.6 inter-ocular distances in front of the eyes, mouth corners slightly forward).
POINT_DEPTH = np.array([0.0, 0.0, 21.0, 4.0, 4.0])
#: The head turns about a point this far behind the eye plane (template pixels).
ROTATION_CENTRE_DEPTH = -45.0
#: Largest |yaw| and |pitch| accepted, in degrees (beyond a profile the five points are not visible).
MAX_ANGLE = 90.0


def project_points(yaw: float, pitch: float) -> np.ndarray:
    """Aligned 112x112 positions (5, 2) of the template points for a head at (yaw, pitch) degrees.

    Positive yaw moves the nose tip towards the image's right, positive pitch moves it up. (0, 0)
    returns the ArcFace template itself.
    """
    for name, value in (("yaw", yaw), ("pitch", pitch)):
        if not (isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value)
                and abs(value) <= MAX_ANGLE):
            raise InvalidInputError(f"{name} must be a finite angle in degrees from -{MAX_ANGLE:g} to {MAX_ANGLE:g}, "
                                    f"got {value!r}.")
    template = ARCFACE_TEMPLATE.astype(np.float64)
    centre = np.array([template[:, 0].mean(), template[:, 1].mean(), ROTATION_CENTRE_DEPTH])
    points = np.column_stack([template, POINT_DEPTH]) - centre
    a, b = math.radians(pitch), math.radians(yaw)
    # image y points down, so a positive pitch (nose up) rotates depth into -y
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rotated = points @ (ry @ rx).T
    projected = rotated[:, :2]
    return transform_points(projected, estimate_similarity(projected, template))


def draw_landmarks(points: np.ndarray, size: int = IMAGE_SIZE, radius: float = DOT_RADIUS) -> np.ndarray:
    """A black (size, size, 3) uint8 image with a filled disc at each of the five points (x, y)."""
    points = np.asarray(points, dtype=np.float64)
    if points.shape != (5, 2) or not np.isfinite(points).all():
        raise InvalidInputError(f"Landmarks must be five finite (x, y) points, got an array of shape {points.shape}.")
    image = np.zeros((size, size, 3), dtype=np.uint8)
    ys, xs = np.mgrid[0:size, 0:size]
    for (x, y), colour in zip(points, DOT_COLOURS, strict=True):
        image[(xs - x) ** 2 + (ys - y) ** 2 <= radius**2] = colour
    return image


def render_pose_landmarks(poses: Sequence[tuple[float, float]] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Landmark images for (B, 2) (yaw, pitch) degree pairs, as the (B, 3, 112, 112) float tensor in
    [-1, 1] that Vec2Face+'s pose model reads (x / 255 * 2 - 1 of the uint8 drawing)."""
    poses = np.asarray(poses.cpu() if isinstance(poses, torch.Tensor) else poses, dtype=np.float64)
    if poses.ndim != 2 or poses.shape[1] != 2:
        raise InvalidInputError(f"poses must be (B, 2) (yaw, pitch) pairs in degrees, got shape {poses.shape}.")
    images = np.stack([draw_landmarks(project_points(float(y), float(p))) for y, p in poses])
    return landmarks_to_tensor(images)


def landmarks_to_tensor(images) -> torch.Tensor:
    """(B, 112, 112, 3) uint8 landmark images (array or tensor) -> (B, 3, 112, 112) float32 in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.dtype != torch.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise InvalidInputError(
            f"Landmark images must be uint8 of shape (B, {IMAGE_SIZE}, {IMAGE_SIZE}, 3), got {x.dtype} "
            f"{tuple(x.shape)}. Draw them with render_pose_landmarks or resize ArcFace-aligned ones to 112x112."
        )
    return x.permute(0, 3, 1, 2).float() / 255 * 2 - 1
