"""Read images safely: one typed `ImageError` for anything unusable, RGB uint8 out.

Guards against decompression bombs and images no detector can use (the pixel count and the aspect
ratio are checked from the header, before decoding), truncated or empty files, files that are not
regular files (a FIFO would block the reader forever, a device would never end), and odd modes
(grayscale, alpha, palette, 16-bit, float). `check_image_bounds` and `fit_pixels` let every face
detector hold the same bounds on in-memory arrays and on its own working copies.
"""

from __future__ import annotations

import io
import math
import os
import stat
from pathlib import Path

import numpy as np

from synthface.errors import ImageError

#: Largest image accepted by default: 64 megapixels (an 8K x 8K photo); larger is refused unread.
MAX_PIXELS = 64_000_000
#: Most elongated image accepted: the longer side at most this many times the shorter (a 20:1
#: panorama passes; a 4 x 20000 strip, which holds no face and defeats every detector's resizing,
#: is refused).
MAX_ASPECT_RATIO = 20


def check_image_bounds(width: int, height: int, label: str = "the image", *, max_pixels: int = MAX_PIXELS,
                       max_aspect: float = MAX_ASPECT_RATIO) -> None:
    """Raise ImageError unless a `width` x `height` image has pixels, at most `max_pixels` of them,
    and an aspect ratio (longer side / shorter side) of at most `max_aspect`."""
    if width <= 0 or height <= 0:
        raise ImageError(f"Cannot read {label}: the image has no pixels ({width} x {height}).")
    if width * height > max_pixels:
        raise ImageError(
            f"Refusing {label}: {width} x {height} = {width * height:,} pixels is more than the "
            f"limit of {max_pixels:,} (a guard against decompression bombs). Downscale the image "
            "or raise max_pixels if it is genuine."
        )
    aspect = max(width, height) / min(width, height)
    if aspect > max_aspect:
        raise ImageError(
            f"Refusing {label}: {width} x {height} is {aspect:,.0f} times longer than it is wide, more than "
            f"the limit of {max_aspect:g}:1 for a photo of a face. Crop it to the region with the face."
        )


def fit_pixels(image: np.ndarray, max_pixels: int) -> np.ndarray:
    """`image` downscaled (area-averaged, aspect kept, each side at least 1) so that it has at
    most `max_pixels` pixels; returned unchanged when it already fits."""
    h, w = image.shape[:2]
    if h * w <= max_pixels:
        return image
    import cv2

    scale = math.sqrt(max_pixels / (h * w))
    size = (max(1, math.floor(w * scale)), max(1, math.floor(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def load_image(source: str | os.PathLike | bytes | np.ndarray, *, max_pixels: int = MAX_PIXELS,
               max_aspect: float = MAX_ASPECT_RATIO) -> np.ndarray:
    """Read a path or encoded bytes (or check an array) and return an (H, W, 3) uint8 RGB array.

    Guarantees: a path that is not a regular file (folder, FIFO, device, socket) is refused before
    it is opened; an image over `max_pixels` pixels or `max_aspect`:1 is refused from its header,
    before any pixel is decoded. EXIF orientation is applied; alpha is composited over white;
    16-bit data is scaled to 8 bits.
    """
    if isinstance(source, np.ndarray):
        image = as_rgb_uint8(source)
        check_image_bounds(image.shape[1], image.shape[0], "the image array", max_pixels=max_pixels,
                           max_aspect=max_aspect)
        return image
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(source, (bytes, bytearray, memoryview)):
        stream, label = io.BytesIO(bytes(source)), "image bytes"
        empty = not stream.getbuffer().nbytes
    else:
        path = Path(source)
        label = str(path)
        empty = _regular_file_size(path, label) == 0
        if not empty:
            try:
                stream = open(path, "rb")  # noqa: SIM115 - closed by Image.open's context below
            except OSError as exc:
                raise ImageError(f"Cannot read {label}: {exc.strerror or exc}.") from None
    if empty:
        raise ImageError(f"Cannot read {label}: the file is empty (0 bytes).")
    try:
        with stream, Image.open(stream) as img:
            width, height = img.size
            check_image_bounds(width, height, label, max_pixels=max_pixels, max_aspect=max_aspect)
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


def _regular_file_size(path: Path, label: str) -> int:
    """The size of `path`, refusing anything but a regular file without opening it."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ImageError(f"Cannot read {label}: no such file. Check the path.") from None
    except OSError as exc:
        raise ImageError(f"Cannot read {label}: {exc.strerror or exc}.") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"Cannot read {label}: it is a folder, not an image file.")
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode) else (
            "a socket" if stat.S_ISSOCK(info.st_mode) else "a device")
        raise ImageError(
            f"Cannot read {label}: it is {kind}, not a regular file; reading it could block or never end. "
            "Save the image to a file and pass that."
        )
    return info.st_size


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
