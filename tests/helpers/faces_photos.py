"""Real photos in several shapes for batched face-analysis tests."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tests.helpers.engine import face_crops
from tests.helpers.faces import t1_image


def photos() -> list[np.ndarray]:
    """t1.jpg (six people) and its six faces cut out at two sizes: three image shapes in one batch."""
    crops = face_crops()
    resized = [np.asarray(Image.fromarray(c).resize((200, 200), Image.BICUBIC)) for c in crops[:3]]
    return [t1_image(), *crops, *resized]
