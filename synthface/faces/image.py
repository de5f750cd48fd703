"""Read images safely: one typed `ImageError` for anything unusable, RGB uint8 out.

Guards against decompression bombs (the pixel count is checked from the header, before
decoding), truncated or empty files, and odd modes (grayscale, alpha, palette, 16-bit, float).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from synthface.errors import ImageError

#: Largest image accepted by default: 64 megapixels (an 8K x 8K photo); larger is refused unread.
MAX_PIXELS = 64_000_000


def load_image(source: str | os.PathLike | bytes | np.ndarray, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read a path or encoded bytes (or check an array) and return an (H, W, 3) uint8 RGB array.

    EXIF orientation is applied; alpha is composited over white; 16-bit data is scaled to 8 bits.
    """
    if isinstance(source, np.ndarray):
        return as_rgb_uint8(source)
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(source, (bytes, bytearray, memoryview)):
        data, label = bytes(source), "image bytes"
    else:
        path = Path(source)
        label = str(path)
        if not path.exists():
            raise ImageError(f"Cannot read {label}: no such file. Check the path.")
        if path.is_dir():
            raise ImageError(f"Cannot read {label}: it is a folder, not an image file.")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError(f"Cannot read {label}: {exc.strerror or exc}.") from None
    if not data:
        raise ImageError(f"Cannot read {label}: the file is empty (0 bytes).")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(
                    f"Refusing {label}: {width} x {height} = {width * height:,} pixels is more than the "
                    f"limit of {max_pixels:,} (a guard against decompression bombs). Downscale the image "
                    "or raise max_pixels if it is genuine."
                )
            if width == 0 or height == 0:
                raise ImageError(f"Cannot read {label}: the image has no pixels ({width} x {height}).")
            img.load()
            img = ImageOps.exif_transpose(img)
            return _pil_to_rgb(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own, larger limit tripped first
        raise ImageError(
            f"Refusing {label}: {exc} It is treated as a decompression bomb; downscale the image if it is genuine."
        ) from None
    except UnidentifiedImageError:
        raise ImageError(
            f"Cannot read {label}: not a recognised image format (JPEG, PNG, WebP, BMP, TIFF, ...)."
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"Cannot read {label}: the file is damaged or truncated ({exc}).") from None


def _pil_to_rgb(img) -> np.ndarray:
    mode = img.mode
    if mode in ("RGB", "L", "RGBA", "LA"):
        return as_rgb_uint8(np.asarray(img))
    if mode == "P" or mode == "PA":
        return as_rgb_uint8(np.asarray(img.convert("RGBA")))
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img)
        if mode == "I" and arr.size and int(arr.max()) > 65535:
            raise ImageError(f"Unsupported image: 32-bit integer pixels (mode {mode}).")
        if mode == "I" or mode.startswith("I;16"):
            arr = arr.astype(np.uint16)
        return as_rgb_uint8(arr)
    return as_rgb_uint8(np.asarray(img.convert("RGB")))


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Validate an in-memory image and return it as contiguous (H, W, 3) uint8 RGB.

    Accepts (H, W), (H, W, 1), (H, W, 3), (H, W, 4); uint8, uint16 (scaled), bool, or float in
    [0, 1]. Anything else is an ImageError saying what was received.
    """
    if not isinstance(image, np.ndarray):
        raise ImageError(f"Expected an image as a numpy array (H, W, 3), got {type(image).__name__}.")
    arr = image
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ImageError(f"Expected an image of shape (H, W), (H, W, 3) or (H, W, 4), got {tuple(image.shape)}.")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"The image is empty: shape {tuple(image.shape)}.")
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageError("The image contains NaN or infinite values.")
        if arr.min() < 0 or arr.max() > 1:
            raise ImageError(
                f"Float images must be in [0, 1]; got values in [{arr.min():.3g}, {arr.max():.3g}]. "
                "Pass uint8 0-255 instead."
            )
        arr = np.round(arr * 255).astype(np.uint8)
    else:
        raise ImageError(f"Unsupported pixel type {arr.dtype}; use uint8 (0-255).")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    elif arr.shape[-1] == 4:
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        arr = np.round(arr[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(arr)
