"""Training-set writers, one module per format, each with a reader used by the tests.

Every writer has one signature, `write(samples, out_dir, *, num_classes=None, overwrite=False,
**format_options) -> ExportSummary`, streams its samples once, and builds its output in a hidden
folder beside `out_dir` that is renamed into place only when complete.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

from synthface.errors import InvalidInputError
from synthface.export import imagefolder, parquet, recordio, webdataset
from synthface.export._common import ExportSummary, Sample
from synthface.export.card import render_card, write_card
from synthface.export.manifest import concat_manifests, manifest_table, read_manifest, write_manifest


class Writer(Protocol):
    def __call__(self, samples: Iterable[Sample], out_dir: str | Path, *, num_classes: int | None = None,
                 overwrite: bool = False, **options) -> ExportSummary: ...


WRITERS: dict[str, Writer] = {
    "recordio": recordio.write,
    "imagefolder": imagefolder.write,
    "webdataset": webdataset.write,
    "parquet": parquet.write,
}


def get_writer(fmt: str) -> Writer:
    try:
        return WRITERS[fmt]
    except KeyError:
        raise InvalidInputError(f"Unknown export format {fmt!r}; choose from {', '.join(WRITERS)}.") from None


def write_format(fmt: str, samples: Iterable[Sample], out_dir: str | Path, **options) -> ExportSummary:
    """Write one format (`WRITERS[fmt]`) to `out_dir`."""
    return get_writer(fmt)(samples, out_dir, **options)


def export_formats(
    samples_factory: Callable[[], Iterable[Sample]],
    out_dir: str | Path,
    formats: Sequence[str],
    *,
    options: dict[str, dict] | None = None,
    **common,
) -> dict[str, ExportSummary]:
    """Write each format to `out_dir/<format>`, calling `samples_factory()` afresh for each.

    `common` (e.g. num_classes, overwrite) goes to every writer, `options[fmt]` to one.
    """
    for fmt in formats:
        get_writer(fmt)  # fail before writing anything
    options = options or {}
    return {fmt: write_format(fmt, samples_factory(), Path(out_dir) / fmt, **common, **options.get(fmt, {})) for fmt in formats}


__all__ = [
    "WRITERS", "ExportSummary", "Sample", "Writer", "concat_manifests", "export_formats", "get_writer",
    "manifest_table", "read_manifest", "render_card", "write_card", "write_format", "write_manifest",
]
