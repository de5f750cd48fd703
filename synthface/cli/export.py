"""`synthface export DIR --format F`: more export formats from a finished run (library: synthface.export)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from synthface.export import format_names

console = Console()

#: "recordio, imagefolder, webdataset or parquet": the registry's formats, for the help text.
_FORMAT_CHOICES = ", ".join(format_names()[:-1]) + " or " + format_names()[-1]


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)


def export_command(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder.")],
    format_: Annotated[list[str], typer.Option("--format", "-f", help=f"{_FORMAT_CHOICES} (repeatable).")],
) -> None:
    """Build more export formats from a finished run (the run folder is locked while it works)."""
    from synthface.distributed import Ranks
    from synthface.engine import export_run
    from synthface.errors import FileFormatError, InvalidInputError
    from synthface.export import FORMATS, read_manifest
    from synthface.runfolder import RunLayout, load_run_recipe, lock_run

    layout = RunLayout(run_dir)
    if not layout.run_file.is_file():
        raise InvalidInputError(
            f"{run_dir} is not a synthface run folder (no {layout.RUN_FILE}). Give the --out folder of a finished "
            "`synthface run`."
        )
    if not layout.is_done(layout.FINALIZE):
        raise InvalidInputError(
            f"{run_dir} is not a finished run ({layout.FINAL_DONE} is missing or damaged). Finish it with "
            f"`synthface run {layout.recipe_file} --out {run_dir}`."
        )
    unknown = sorted(set(format_) - set(FORMATS))
    if unknown:
        raise InvalidInputError(f"unknown export format(s) {', '.join(unknown)}; choose from {', '.join(sorted(FORMATS))}.")
    command = "synthface export " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    with lock_run(layout, Ranks(), command):
        spec = load_run_recipe(layout)
        try:
            table = read_manifest(layout.manifest)
        except FileFormatError as exc:
            raise FileFormatError(
                f"{exc} Delete {layout.final_done} and run `synthface run {layout.recipe_file} --out {run_dir}` "
                "again: it rebuilds the manifest from the shards."
            ) from None
        rows = [r for r in table.to_pylist() if r["kept"]]
        export_run(spec, layout, rows, formats=format_)
    console.print(f"wrote {', '.join(format_)} for {len(rows)} images under {layout.root / layout.EXPORT}")
