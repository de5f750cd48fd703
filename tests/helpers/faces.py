"""Shared inputs for the face tests: real photos shipped by installed packages, cached analyses."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np


def package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.origin is not None, f"{package} is not installed"
    return Path(spec.origin).parent.joinpath(*parts)


T1 = package_file("insightface", "data", "images", "t1.jpg")  # six people
HANKS = package_file("insightface", "data", "images", "Tom_Hanks_54745.png")  # aligned 112 x 112


@functools.cache
def t1_image() -> np.ndarray:
    from synthface.faces import load_image

    return load_image(T1)


@functools.cache
def astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


@functools.cache
def dlib_analyzer():
    from synthface.faces import get_analyzer

    return get_analyzer("dlib")


@functools.cache
def t1_faces():
    return tuple(dlib_analyzer().analyze([t1_image()], all_faces=True)[0])
