"""`synthface eval MODEL --bins DIR`: insightface verification accuracy (library: synthface.fr.verification)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)


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
    from synthface.fr.verification import evaluate, find_bins, load_recognizer, write_results

    paths = find_bins(bins, sets)
    if out is not None:
        from synthface.io import check_output_path

        check_output_path(out)  # before the work
    results = evaluate(load_recognizer(model, device=device, batch_size=batch_size), paths, flip=flip)
    console.print(results_table(results, f"verification: {model}"))
    if out is not None:
        write_results(results, out)
        console.print(f"written {out}")


def results_table(results: dict, title: str) -> Table:
    """Per-set accuracy +- std (percent), TAR at FAR 1e-3, pairs, and the average."""
    table = Table(title=title)
    for name, justify in (("set", "left"), ("accuracy %", "right"), ("std", "right"), ("TAR@FAR1e-3 %", "right"), ("pairs", "right")):
        table.add_column(name, justify=justify)
    for name, r in results["sets"].items():
        table.add_row(name, f"{100 * r['accuracy']:.2f}", f"{100 * r['std']:.2f}", f"{100 * r['tar_at_far']:.2f}", str(r["pairs"]))
    table.add_row("average", f"{100 * results['average']:.2f}", "", "", "", style="bold")
    return table
