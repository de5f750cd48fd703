"""ImageFolder: `<label>/<n>.jpg`, the layout torchvision's ImageFolder (and arcface_torch's fallback) reads.

Class folders are zero-padded to one width so that sorting their names, which is how ImageFolder
assigns class indices, gives back the labels; labels must therefore cover 0..C-1 without gaps.
`open(folder)` reads the images back by index (what training reads).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from synthface.errors import FileFormatError, InvalidInputError
from synthface.export._common import ExportFormat, ExportReader, ExportSummary, Sample, SampleChecker, staged_dir


def class_dir_name(label: int, num_classes: int) -> str:
    return f"{label:0{len(str(max(num_classes - 1, 0)))}d}"


def write(
    samples: Iterable[Sample],
    out_dir: str | Path,
    *,
    num_classes: int | None = None,
    overwrite: bool = False,
) -> ExportSummary:
    """One folder per label, images numbered 0, 1, ... per class in input order; `files` lists the class folders."""
    checker = SampleChecker(num_classes)
    out_dir = Path(out_dir)
    with staged_dir(out_dir, overwrite=overwrite) as tmp:
        per_class: dict[int, int] = {}
        for s in checker(samples):
            n = per_class.get(s.label, 0)
            if n == 0:
                (tmp / str(s.label)).mkdir()
            with open(tmp / str(s.label) / f"{n}.jpg", "wb") as handle:
                handle.write(s.jpeg)
            per_class[s.label] = n + 1
        classes = checker.classes
        missing = [c for c in range(classes) if c not in per_class]
        if missing:
            raise InvalidInputError(
                f"ImageFolder needs an image for every label 0..{classes - 1}, but {len(missing)} labels have none "
                f"(first: {missing[0]}); ImageFolder would shift every later class index. Relabel the classes "
                "contiguously (or pass the right num_classes)."
            )
        for label in per_class:
            os.rename(tmp / str(label), tmp / class_dir_name(label, classes))
    return ExportSummary("imagefolder", out_dir, checker.count, classes, tuple(class_dir_name(c, classes) for c in sorted(per_class)))


def read(folder: str | Path) -> list[tuple[int, Path]]:
    """(label, path) for every image, sorted by label then image number."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileFormatError(f"{folder} is not a folder; an ImageFolder export is a folder of class folders.")
    out: list[tuple[int, int, Path]] = []
    for class_dir in folder.iterdir():
        if not class_dir.is_dir():
            continue
        if not class_dir.name.isdigit():
            raise FileFormatError(f"{class_dir} is not named by an integer label; this is not a synthface ImageFolder export.")
        for path in class_dir.glob("*.jpg"):
            if not path.stem.isdigit():
                raise FileFormatError(f"{path} is not named '<n>.jpg'; this is not a synthface ImageFolder export.")
            out.append((int(class_dir.name), int(path.stem), path))
    return [(label, path) for label, _, path in sorted(out)]


class ImageFolderSource(ExportReader):
    """The images of an ImageFolder export by index, in `read`'s order; an empty class folder is refused."""

    fmt = "imagefolder"

    def __init__(self, folder: Path):
        import numpy as np

        folder = Path(folder)
        items = read(folder)
        self.paths = [str(p) for _, p in items]
        self.labels = np.array([label for label, _ in items], dtype=np.int64)
        empty = sorted(p.name for p in folder.iterdir() if p.is_dir() and not any(p.glob("*.jpg")))
        if empty:
            raise FileFormatError(
                f"Class folder {folder / empty[0]} holds no images ({len(empty)} empty in all). Every class needs "
                "images: remove the empty folders and renumber the rest contiguously, or export the run again."
            )
        self.num_classes = int(self.labels.max()) + 1 if len(self.labels) else 0

    def __len__(self) -> int:
        return len(self.paths)

    def where(self, i: int) -> str:
        return f"Image {self.paths[i]}"

    def read(self, i: int) -> tuple[bytes, int]:
        with open(self.paths[i], "rb") as handle:
            return handle.read(), int(self.labels[i])


def detect(folder: Path) -> bool:
    """Numbered class folders only (hidden ones aside): a shape, not file names, so asked last."""
    subdirs = [p for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith(".")]
    return bool(subdirs) and all(p.name.isdigit() for p in subdirs)


FORMAT = ExportFormat(
    name="imagefolder", files=("<label>/<n>.jpg",), signature="numbered class folders of .jpg",
    write=write, detect=detect, open=ImageFolderSource, detect_last=True,
)
