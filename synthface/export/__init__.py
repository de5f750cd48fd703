"""Training-set formats, one module per format, and FORMATS: the one registry of their names.

Each format module declares an `ExportFormat` (its name, the files it writes, `write`, `detect`,
`open`); everything that names formats (the recipe's `export.formats`, CLI help, the trainer's
reader) reads them from here. Every writer has one signature, `write(samples, out_dir, *,
num_classes=None, overwrite=False, **format_options) -> ExportSummary`, streams its samples once, and
builds its output in a hidden folder beside `out_dir` that is renamed into place only when complete.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from synthface.errors import InvalidInputError
from synthface.export import imagefolder, parquet, recordio, webdataset
from synthface.export._common import ExportFormat, ExportReader, ExportSummary, Sample, Writer
from synthface.export.card import render_card, write_card
from synthface.export.manifest import concat_manifests, manifest_table, read_manifest, write_manifest

#: name -> ExportFormat, in registration order (the order formats are listed and a run folder's
#: export/ is searched in).
FORMATS: dict[str, ExportFormat] = {}


def register_format(fmt: ExportFormat) -> ExportFormat:
    """Add a format to FORMATS (a name may be registered once)."""
    if fmt.name in FORMATS:
        raise InvalidInputError(f"An export format named {fmt.name!r} is registered already.")
    FORMATS[fmt.name] = fmt
    return fmt


for _module in (recordio, imagefolder, webdataset, parquet):
    register_format(_module.FORMAT)


def format_names() -> tuple[str, ...]:
    """Every registered format's name, in registration order."""
    return tuple(FORMATS)


def get_format(name: str) -> ExportFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise InvalidInputError(f"Unknown export format {name!r}; choose from {', '.join(FORMATS)}.") from None


def get_writer(name: str) -> Writer:
    return get_format(name).write


def detect_format(folder: str | Path) -> str | None:
    """The name of the format `folder` holds, or None: the formats recognised by their own file names
    first (in registration order), then those recognised by the folder's shape (`detect_last`)."""
    folder = Path(folder)
    for fmt in sorted(FORMATS.values(), key=lambda f: f.detect_last):
        if fmt.detect(folder):
            return fmt.name
    return None


def write_format(fmt: str, samples: Iterable[Sample], out_dir: str | Path, **options) -> ExportSummary:
    """Write one format (`FORMATS[fmt].write`) to `out_dir`."""
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
    "FORMATS", "ExportFormat", "ExportReader", "ExportSummary", "Sample", "Writer", "concat_manifests",
    "detect_format", "export_formats", "format_names", "get_format", "get_writer", "manifest_table",
    "read_manifest", "register_format", "render_card", "write_card", "write_format", "write_manifest",
]
