"""`synthface generate`: render K images of every identity in a bank to PNGs plus a manifest."""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from synthface.errors import InvalidInputError, OutputPathError

console = Console()


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_command)


class DType(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


def generate_command(
    ids: Annotated[Path, typer.Option("--ids", help="Identity bank: .safetensors with tensor 'ids' (N, D), or an (N, D) .npy.")],
    images_per_id: Annotated[int, typer.Option("--images-per-id", "-k", min=1, help="Images per identity.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (created; PNGs go to <identity>/<image>.png).")],
    model: Annotated[str, typer.Option(help="'arc2face', 'vec2face', 'vec2face-plus' (HF cache), 'tiny' / 'vec2face-tiny' (random weights), a repo id, a local folder or a Vec2Face .pth.")] = "arc2face",
    steps: Annotated[int, typer.Option(min=1, help="Denoising steps (2-4 with --lcm-lora); Arc2Face only.")] = 25,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale (1.0 with --lcm-lora); Arc2Face only.")] = 3.0,
    seed: Annotated[int, typer.Option(min=0, help="Base seed; image j of identity i always gets the same derived seed.")] = 0,
    size: Annotated[int | None, typer.Option(help="Image side in pixels (default: the model's own: 512 for Arc2Face, 112 for Vec2Face, its only size).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per diffusion call; lower it if the GPU runs out of memory.")] = 8,
    dtype: Annotated[DType, typer.Option(help="Weights dtype (fp16/bf16 on GPU).")] = DType.fp32,
    device: Annotated[str, typer.Option(help="torch device: auto, cpu, cuda, cuda:1 ...")] = "auto",
    base: Annotated[str | None, typer.Option(help="SD 1.5 base (folder or repo id) for a published-layout Arc2Face model.")] = None,
    lcm_lora: Annotated[str | None, typer.Option(help="LCM-LoRA for SD 1.5 (folder, file or repo id); use with --steps 4 --guidance 1. Arc2Face only.")] = None,
    vae_slicing: Annotated[bool, typer.Option(help="Decode one image at a time (less VAE memory).")] = False,
    compile_unet: Annotated[bool, typer.Option("--compile", help="torch.compile the generator (slow first batch).")] = False,
    allow_download: Annotated[bool, typer.Option(help="Download missing weights from the Hugging Face Hub.")] = False,
    allow_pickle: Annotated[bool, typer.Option(help="Also load pickled weights (the published Arc2Face encoder .bin, Vec2Face's .pth files; `synthface models convert` avoids it for Vec2Face).")] = False,
) -> None:
    """Render IMAGES_PER_ID images of each identity in IDS into OUT, with a manifest.json.

    The manifest records the model's licence: Arc2Face's and Vec2Face's weights are for
    non-commercial research only.
    """
    import numpy as np

    from synthface.devices import resolve_device
    from synthface.engine import derive_seed
    from synthface.identity import load_bank
    from synthface.io import atomic_write_bytes, check_output_path

    _check_bounds(steps=steps, guidance=guidance, resolution=size, batch_size=batch_size,
                  images_per_identity=images_per_id)
    target = resolve_device(device)  # an unknown device is refused before any file is touched
    vectors = np.asarray(load_bank(ids).vectors, dtype=np.float32)
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"Cannot write images into {out}: it exists and is not a folder. Give a folder path for --out.")
    out.mkdir(parents=True, exist_ok=True)
    check_output_path(out / "manifest.json")  # a link or device under that name is refused before rendering
    from synthface.render import DTYPES, Optimizations, RenderSettings, build_renderer  # diffusers: inputs are good

    start = time.perf_counter()
    renderer = build_renderer(
        model, settings=RenderSettings(steps=steps, guidance=guidance, resolution=size), device=target,
        dtype=dtype.value, optimizations=Optimizations(compile=compile_unet, vae_slicing=vae_slicing),
        allow_download=allow_download, allow_pickle=allow_pickle,
        **{k: v for k, v in (("base", base), ("lcm_lora", lcm_lora)) if v is not None},  # options given only
    )
    loaded = time.perf_counter() - start

    tasks = [(i, j, derive_seed(seed, i, j)) for i in range(len(vectors)) for j in range(images_per_id)]
    rows = []
    start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        bar = progress.add_task("rendering", total=len(tasks))
        for first in range(0, len(tasks), batch_size):
            chunk = tasks[first:first + batch_size]
            images = renderer(vectors[[i for i, _, _ in chunk]], [s for _, _, s in chunk])
            for (i, j, s), image in zip(chunk, images):
                name = f"{i:05d}/{j:03d}.png"
                (out / f"{i:05d}").mkdir(exist_ok=True)
                atomic_write_bytes(out / name, _png(image))
                rows.append({"file": name, "identity": i, "image": j, "seed": s})
            progress.update(bar, advance=len(chunk))
    rendered = time.perf_counter() - start

    manifest = {
        "model": model,
        "ids": ids.name,
        "identities": len(vectors),
        "images_per_id": images_per_id,
        "steps": steps,
        "guidance": guidance,
        "seed": seed,
        "size": [renderer.resolution, renderer.resolution],
        "dtype": {v: k for k, v in DTYPES.items()}[renderer.dtype],  # as rendered: fp16 on a CPU is fp32
        "lcm_lora": lcm_lora,
        "licence": str(renderer.licence),
        "images": rows,
    }
    atomic_write_bytes(out / "manifest.json", json.dumps(manifest, indent=1).encode())
    console.print(
        f"wrote {len(rows)} images of {len(vectors)} identities to {out} "
        f"(load {loaded:.1f} s, render {rendered:.1f} s, {len(rows) / max(rendered, 1e-9):.2f} images/s on {renderer.device})"
    )


# Option names of the recipe fields whose bounds `generate` shares with a recipe.
_OPTIONS = {"steps": "--steps", "guidance": "--guidance", "resolution": "--size", "batch_size": "--batch-size",
            "images_per_identity": "--images-per-id"}


def _check_bounds(*, images_per_identity: int, **generation) -> None:
    """Refuse values a recipe would refuse (same bounds: steps 1-1000, guidance 0-30 and finite, size
    16-2048 in multiples of 8, batch 1-4096, 1-10000 images per identity), naming the options."""
    from pydantic import ValidationError

    from synthface.recipe import GenerationConfig, VariationConfig

    problems = []
    for section, values in ((GenerationConfig, generation), (VariationConfig, {"images_per_identity": images_per_identity})):
        try:
            section(**values)
        except ValidationError as exc:
            for error in exc.errors():
                message = error["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
                problems.append(f"{_OPTIONS[error['loc'][0]]} {message} (given: {error['input']!r})")
    if problems:
        raise InvalidInputError("; ".join(problems) + ". These are the bounds of a recipe's [generation] section.")


def _png(image) -> bytes:
    """An (H, W, 3) uint8 array as PNG bytes."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
