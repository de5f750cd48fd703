"""`synthface models list|download|verify|convert`: what each model is, its licence, and whether it is here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="List, download and verify model weights (nothing downloads unless asked).", no_args_is_help=True)
console = Console()


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="models")


@app.command("list")
def list_models() -> None:
    """Every known model: source, size, licence and where it was found locally (or how to get it)."""
    from synthface import weights
    from synthface.errors import ModelNotFoundError

    table = Table(title="models")
    for col in ("name", "source", "size", "licence", "local"):
        table.add_column(col, overflow="fold")
    for spec in weights.REGISTRY.values():
        try:
            local = str(weights.find(spec.name))
        except ModelNotFoundError:
            local = (f"missing: placed by hand in {weights.models_home() / spec.name} (`{spec.fetch_command}` says "
                     "where to get it)" if spec.kind == "manual" else f"missing: {spec.fetch_command}")
        table.add_row(spec.name, spec.url or spec.source, spec.size, spec.license, local)
    console.print(table)
    console.print(generators_table())


def generators_table() -> Table:
    """Every generator model a registered family (built in or a plug-in) loads by name, with what
    its family declares: options, native size, recogniser, licence."""
    from synthface.generators import families

    table = Table(title="generators (generation.model)")
    for col in ("model", "family", "options", "size", "recogniser", "licence"):
        table.add_column(col, overflow="fold")
    for family in families():
        for model in family.models:
            random = " (random weights)" if family.is_random(model) else ""
            table.add_row(model + random, family.name, ", ".join(sorted(family.options)) or "-",
                          str(family.native_size or "model's own"), ", ".join(family.conditioning(model)) or "-",
                          family.licence(model).text)
    return table


@app.command()
def download(
    name: Annotated[str, typer.Argument(help="Model name from `synthface models list`.")],
    to: Annotated[Optional[str], typer.Option(help="Folder to put it in (default: the Hub cache / insightface root).")] = None,
) -> None:
    """Download NAME (Hugging Face Hub or insightface release) and print where it is. A model placed by
    hand (Google Drive folders behind request forms) is refused with where to request its files and
    where each one goes; nothing is written."""
    from synthface import weights
    from synthface.errors import ModelNotFoundError

    spec = weights.spec(name)
    if spec.kind == "manual":
        raise ModelNotFoundError(weights.manual_instructions(spec))
    if to is not None:
        from synthface.io import check_output_folder

        check_output_folder(Path(to).expanduser(), what="download folder", option="--to")
    console.print(f"{name}: {spec.license}")
    path = weights.download(name, to=to)
    console.print(f"ready: {path}")


@app.command("verify")
def verify_command(
    names: Annotated[Optional[list[str]], typer.Argument(help="Models to check (default: all found locally).")] = None,
    path: Annotated[Optional[str], typer.Option(help="Folder holding the model (with one NAME).")] = None,
) -> None:
    """Check each file of the models: present, the pinned size and sha256 where recorded, else a
    complete file by its format (safetensors header and length, ONNX graph, torch zip CRCs).
    Exits with ModelNotFoundError's code (6) when any file is missing, truncated or damaged."""
    from synthface import weights
    from synthface.cli import print_error
    from synthface.errors import InvalidInputError, ModelNotFoundError

    if path and (not names or len(names) != 1):
        raise InvalidInputError("--path needs exactly one model NAME.")
    explicit = bool(names)
    table = Table(title="model files")
    for col in ("model", "file", "size", "sha256", "status"):
        table.add_column(col, overflow="fold")
    broken: dict[str, list[str]] = {}
    for name in names or list(weights.REGISTRY):
        try:
            checks = weights.verify(name, path=path)
        except ModelNotFoundError:
            if explicit:
                raise
            continue
        for c in checks:
            if not c.ok:
                broken.setdefault(name, []).append(f"{c.path.name} ({c.status})")
            table.add_row(name, c.path.name, f"{c.size:,}", (c.sha256 or "")[:16], c.status)
    console.print(table)
    if broken:
        print_error(
            "Damaged model files: "
            + "; ".join(f"{name}: {', '.join(files)}" for name, files in broken.items())
            + ". Fetch "
            + ("them" if len(broken) > 1 else "it")
            + " again with "
            + ", ".join(f"`{weights.spec(name).fetch_command}`" for name in broken)
            + "."
        )
        raise typer.Exit(code=ModelNotFoundError.exit_code)


@app.command()
def convert(
    model: Annotated[str, typer.Argument(help="A model name, or a published file or folder, of a family that converts (`synthface models list`).")],
    out: Annotated[str, typer.Option("--out", help="Folder to write (model_index.json + safetensors per component).")],
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Read the published pickled file (weights_only).")] = False,
    pose: Annotated[bool, typer.Option("--pose", help="Convert the model's pose-control file too (a family declaring 'pose').")] = False,
) -> None:
    """Convert a published pickled checkpoint to a safetensors folder that its family's loader (and
    recipes) read with no pickle opt-in, as the model's family does it (`GeneratorFamily.converted`).
    The weights are unchanged. The folder is written under a hidden temporary name and renamed to
    OUT when complete, so a failure (a full disk, say) leaves no half-written OUT."""
    from synthface.errors import OutputPathError
    from synthface.export._common import staged_dir
    from synthface.generators import family_for
    from synthface.io import check_output_folder, output_errors

    target = check_output_folder(Path(out).expanduser(), what="converted model folder")
    if target.exists() and any(target.iterdir()):
        raise OutputPathError(f"{target} exists and is not an empty folder; pass a new folder to --out.")
    pipe, summary = family_for(model).converted(model, allow_pickle=allow_pickle, **({"pose": True} if pose else {}))
    with output_errors(target), staged_dir(target) as staged:
        pipe.save_pretrained(staged)
    console.print(f"converted ({summary}): {target}")
