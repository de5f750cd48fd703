"""`synthface train DATA [DATA ...] --out RUN`: train a face recogniser on a synthface export, or on several
mixed (library: synthface.fr.train, synthface.fr.mixing)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from synthface.export import format_names

console = Console()

#: The presets named for --help without importing torch (synthface.fr.settings.PRESETS declares them, with
#: their sources and expected numbers in PRESET_NOTES; a test keeps this list equal to it).
PRESET_HELP = ("hsface10k / sota-fr-irse50 (Vec2Face's SOTA-FR IR-SE50 ArcFace recipe), adaface-ir50 and adaface-irse50 "
               "(AdaFace's IR-50 / IR-SE-50 with the AdaFace head), arcface-torch (IResNet-50, poly) or tiny (CPU smoke "
               "runs); the README lists each one's source and expected numbers.")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)


def train_command(
    data: Annotated[list[Path], typer.Argument(help=f"An export folder ({', '.join(format_names())}) or a run folder with "
        "export/; several (A B ...) train together, each source's labels after the classes of those before it.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder for model.pt, config.json, checkpoint.pt, metrics.jsonl.")],
    preset: Annotated[str, typer.Option(help=PRESET_HELP)] = "hsface10k",
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override one setting: key=value, the value in TOML (--set lr=0.05, --set milestones=[8,12], --set se=true); repeatable. The README lists the settings and their ranges.")] = None,
    eval_bins: Annotated[Optional[Path], typer.Option(help="Folder of insightface .bin packs: verify after every epoch, write results.json.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(min=1, help="Stop after this many optimiser steps in total, across epochs (a checkpoint is written); never beyond the epochs setting.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the stopped or killed run in --out (same preset and --set values).")] = False,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:N (default: cuda when available). Multi-GPU: torchrun/accelerate launch.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar with images/s.")] = True,
    weight: Annotated[Optional[list[str]], typer.Option("--weight", help="SOURCE=W: sample SOURCE (as given, or its folder's "
        "name) W times per epoch, e.g. --weight casia=0.5 (repeatable; default 1). An epoch holds round(W x images) "
        "samples of each source: floor(W) passes plus a fresh draw of the fraction, all shuffled together.")] = None,
) -> None:
    """Train an IResNet with an ArcFace head on a synthetic set (or several, mixed); resumable, one checkpoint per epoch."""
    from synthface.fr.mixing import parse_weights
    from synthface.fr.train import preset_config, train

    config = preset_config(preset, sets=set_ or [])
    weights = parse_weights(weight, data) if weight else None
    result = train(data[0] if len(data) == 1 else data, out, config, eval_bins=eval_bins, max_steps=max_steps,
                   resume=resume, device=device, progress=progress, weights=weights)
    if result.rank != 0:  # under torchrun / accelerate launch, one summary
        return
    console.print(f"{result.steps} steps ({result.epochs_done:g} epochs), last loss {result.last_loss:.4f}, "
                  f"{result.images_per_s:.0f} images/s -> {result.out_dir / 'model.pt'}")
    if result.results is not None:
        from synthface.cli.evaluate import results_table

        console.print(results_table(result.results, f"verification: {result.out_dir}"))
