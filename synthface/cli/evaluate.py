"""`synthface eval MODEL --bins DIR`: insightface verification accuracy (library: synthface.fr.benchmarks, protocol "bin");
`synthface eval make-bin PHOTOS --out FILE`: a `.bin` for it from your own photos (synthface.fr.make_bin)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

console = Console()

#: The subcommand `synthface eval MODEL ...` runs: everything that does not name another subcommand.
DEFAULT_COMMAND = "verify"


class _DefaultCommandGroup(TyperGroup):
    """A group whose arguments go to DEFAULT_COMMAND unless they start with a subcommand's name (or ask for
    the group's help), so `synthface eval MODEL --bins DIR` keeps working beside `synthface eval make-bin`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_DefaultCommandGroup, no_args_is_help=True,
    help="Verification accuracy on insightface .bin packs: `synthface eval MODEL --bins DIR` (short for `synthface "
    "eval verify`); `synthface eval make-bin PHOTOS --out FILE` makes a .bin from your own photos, offline.",
)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="eval")


@app.command(DEFAULT_COMMAND)
def eval_command(
    model: Annotated[Path, typer.Argument(help="A `synthface train` run folder, a backbone model.pt, or an ONNX recogniser.")],
    bins: Annotated[Path, typer.Option("--bins", help="Folder with lfw.bin, cfp_fp.bin, agedb_30.bin, calfw.bin, cplfw.bin.")],
    sets: Annotated[Optional[list[str]], typer.Option("--sets", help="Set names to use (repeatable; default: every standard set present).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="results.json to write (default: none).")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:N (default: cuda when available).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 256,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Sum the embeddings of each image and its mirror (the protocol).")] = True,
) -> None:
    """Verification accuracy (10-fold, insightface protocol) on each set and their average."""
    import contextlib

    from synthface.fr.benchmarks import get_benchmark, load_recognizer, write_results
    from synthface.io import atomic_path

    bench = get_benchmark("bin")
    paths = bench.find(bins, sets)
    # The output's temporary file is made before the work, so a bad --out (a name too long, a file on the
    # way, a read-only or full disk) is refused at once; it becomes OUT only when every set is done.
    with atomic_path(out) if out is not None else contextlib.nullcontext() as staged:
        results = bench.evaluate(load_recognizer(model, device=device, batch_size=batch_size), paths, flip=flip)
        console.print(results_table(results, f"verification: {model}", bench.name))
        if staged is not None:
            write_results(results, staged)
    if out is not None:
        console.print(f"written {out}")


def results_table(results: dict, title: str, protocol: str = "bin") -> Table:
    """One row per set with the protocol's columns (.bin: accuracy +- std in percent, TAR at FAR 1e-3,
    pairs), and the average of its headline number."""
    from synthface.fr.benchmarks import get_benchmark

    bench = get_benchmark(protocol)
    table = Table(title=title)
    table.add_column("set", justify="left")
    for heading, _, _ in bench.columns:
        table.add_column(heading, justify="right")

    def cell(value, scale) -> str:
        return str(value) if scale is None else f"{scale * value:.2f}"

    for name, r in results["sets"].items():
        table.add_row(name, *(cell(r[key], scale) for _, key, scale in bench.columns))
    average = [cell(results["average"], scale) if key == bench.headline else "" for _, key, scale in bench.columns]
    table.add_row("average", *average, style="bold")
    return table


@app.command("make-bin")
def make_bin_command(
    photos: Annotated[Path, typer.Argument(help="A folder of identity subfolders: PHOTOS/alice/1.jpg, PHOTOS/bob/1.jpg, ...")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The .bin to write (e.g. bins/mine.bin; then: synthface eval MODEL --bins bins).")],
    pairs: Annotated[int, typer.Option(min=1, help="Genuine pairs wanted (at most); as many impostor pairs are added.")] = 3000,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the pair draw.")] = 0,
    backend: Annotated[str, typer.Option(help="Face analyser that aligns the crops: dlib (offline) or insightface.")] = "dlib",
    image_format: Annotated[str, typer.Option("--format", help="Crop encoding: jpg (as insightface's packs) or png (lossless).")] = "jpg",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUT.")] = False,
) -> None:
    """Detect and align (112 x 112, ArcFace template) the largest face of each photo, draw genuine pairs within
    a folder and impostor pairs across folders (seeded), and write them in the insightface .bin layout."""
    from synthface.errors import InvalidInputError
    from synthface.fr.make_bin import IMAGE_FORMATS, make_bin

    if image_format not in IMAGE_FORMATS:
        raise InvalidInputError(f"--format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}.")
    # the analyser loads only once the folder and OUT are known to be usable
    made = make_bin(photos, out, analyzer=backend, pairs=pairs, seed=seed, fmt=image_format, overwrite=overwrite)
    for photo, why in made.skipped:
        console.print(f"[yellow]skipped[/] {photo}: {why}", highlight=False)
    console.print(f"written {made.path}: {made.genuine} genuine and {made.impostor} impostor pairs "
                  f"({len(made.skipped)} photos skipped). Evaluate with: synthface eval MODEL --bins {made.path.parent}",
                  highlight=False)
