"""Five-point alignment to the ArcFace 112 x 112 template, on numpy (cv2) and batched torch.

A similarity transform (rotation, uniform scale, translation; no reflection) is fitted by least
squares from the detected points to the template; in 2-D that fit has a closed form when points
are written as complex numbers: dst = a * src + b.
"""

from __future__ import annotations

import numpy as np

#: ArcFace template for a 112 x 112 crop: left eye, right eye, nose tip, left and right mouth corner.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


def template(size: int = 112) -> np.ndarray:
    """The ArcFace template scaled to a `size` x `size` crop."""
    return ARCFACE_TEMPLATE * (size / 112.0)


def estimate_similarity(src: np.ndarray, dst: np.ndarray | None = None) -> np.ndarray:
    """Least-squares similarity transform mapping `src` (K, 2) onto `dst` (K, 2) as a (2, 3) matrix.

    `dst` defaults to the 112 x 112 ArcFace template. Needs K >= 2 distinct points.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = ARCFACE_TEMPLATE if dst is None else dst
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or src.shape[0] < 2:
        raise ValueError(f"need matching (K>=2, 2) point sets, got {src.shape} and {dst.shape}")
    s = src[:, 0] + 1j * src[:, 1]
    d = dst[:, 0] + 1j * dst[:, 1]
    sc, dc = s - s.mean(), d - d.mean()
    denom = float(np.sum(np.abs(sc) ** 2))
    if denom <= 1e-12:
        raise ValueError("source points are all at the same place; cannot fit a similarity transform")
    a = np.sum(np.conj(sc) * dc) / denom
    b = d.mean() - a * s.mean()
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]], dtype=np.float64)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to (K, 2) points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine matrix."""
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def norm_crop(image: np.ndarray, kps: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp `image` so the five `kps` land on the ArcFace template; returns (size, size, C) uint8.

    Bilinear sampling; pixels from outside the image are black.
    """
    import cv2

    matrix = estimate_similarity(kps, template(size))
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


# ---------------------------------------------------------------------------------------------
# torch: the same maths, batched, on whatever device the tensors live on


def estimate_similarity_torch(src, dst=None):
    """Batched least-squares similarity: `src` (N, K, 2) -> (N, 2, 3) matrices onto `dst` (K, 2)."""
    import torch

    src = src.to(torch.float64)
    if dst is None:
        dst = torch.as_tensor(ARCFACE_TEMPLATE, device=src.device)
    dst = torch.as_tensor(dst, dtype=torch.float64, device=src.device).expand_as(src)
    s = torch.complex(src[..., 0], src[..., 1])
    d = torch.complex(dst[..., 0], dst[..., 1])
    sc = s - s.mean(dim=1, keepdim=True)
    dc = d - d.mean(dim=1, keepdim=True)
    a = (sc.conj() * dc).sum(1) / (sc.abs() ** 2).sum(1).clamp_min(1e-12)
    b = d.mean(1) - a * s.mean(1)
    row0 = torch.stack([a.real, -a.imag, b.real], dim=-1)
    row1 = torch.stack([a.imag, a.real, b.imag], dim=-1)
    return torch.stack([row0, row1], dim=1)


def warp_affine_torch(images, matrices, size: tuple[int, int]):
    """Batched equivalent of cv2.warpAffine (bilinear, black border) for (N, C, H, W) float tensors.

    `matrices` (N, 2, 3) map input pixel coordinates to output ones, as in cv2; `size` is (h, w).
    Pixel centres sit at integer coordinates, as in cv2, hence align_corners=False below.
    """
    import torch
    import torch.nn.functional as F

    n, _, h_in, w_in = images.shape
    h, w = size
    full = torch.zeros(n, 3, 3, dtype=torch.float64, device=images.device)
    full[:, :2] = matrices.to(device=images.device, dtype=torch.float64)
    full[:, 2, 2] = 1.0
    inv = torch.linalg.inv(full)[:, :2]  # output pixel -> input pixel
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64, device=images.device),
        torch.arange(w, dtype=torch.float64, device=images.device),
        indexing="ij",
    )
    ones = torch.ones_like(xs)
    coords = torch.stack([xs, ys, ones], dim=-1).reshape(1, -1, 3)  # (1, h*w, 3)
    src = coords @ inv.transpose(1, 2)  # (N, h*w, 2)
    grid = torch.empty_like(src)
    grid[..., 0] = (2.0 * src[..., 0] + 1.0) / w_in - 1.0
    grid[..., 1] = (2.0 * src[..., 1] + 1.0) / h_in - 1.0
    grid = grid.reshape(n, h, w, 2).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def norm_crop_torch(images, kps, size: int = 112):
    """Batched `norm_crop` on tensors: images (N, H, W, 3) uint8 or (N, 3, H, W) float, kps (N, 5, 2).

    Returns (N, 3, size, size) float32 in 0-255 on the images' device, ready to normalise and feed
    a recogniser without leaving the GPU.
    """
    import torch

    if images.dtype == torch.uint8 and images.shape[-1] == 3:
        images = images.permute(0, 3, 1, 2)
    images = images.to(torch.float32)
    kps = torch.as_tensor(kps, device=images.device)
    matrices = estimate_similarity_torch(kps, torch.as_tensor(template(size)))
    return warp_affine_torch(images, matrices, (size, size))
