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
    model: Annotated[str, typer.Option(help="A model name `synthface models list` shows under generators (the random-weight ones are smoke tests), a repo id, or a local folder or file a family reads.")] = "arc2face",
    steps: Annotated[int, typer.Option(min=1, help="Denoising steps (2-4 with --lcm-lora); for families with the 'steps' option (`synthface models list`).")] = 25,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale (1.0 with --lcm-lora); for families with the 'guidance' option.")] = 3.0,
    seed: Annotated[int, typer.Option(min=0, help="Base seed; image j of identity i always gets the same derived seed.")] = 0,
    size: Annotated[int | None, typer.Option(help="Image side in pixels (default: the model's own; a family with one native size takes only that).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per diffusion call; lower it if the GPU runs out of memory.")] = 8,
    dtype: Annotated[DType, typer.Option(help="Weights dtype (fp16/bf16 on GPU).")] = DType.fp32,
    device: Annotated[str, typer.Option(help="torch device: auto, cpu, cuda, cuda:1 ...")] = "auto",
    base: Annotated[str | None, typer.Option(help="A loading option: the base model (folder or repo id) of a family that takes `base`.")] = None,
    lcm_lora: Annotated[str | None, typer.Option(help="LCM-LoRA (folder, file or repo id); use with --steps 4 --guidance 1. For families with the 'lcm' option.")] = None,
    vae_slicing: Annotated[bool, typer.Option(help="Decode one image at a time (less VAE memory).")] = False,
    compile_unet: Annotated[bool, typer.Option("--compile", help="torch.compile the generator (slow first batch).")] = False,
    allow_download: Annotated[bool, typer.Option(help="Download missing weights from the Hugging Face Hub.")] = False,
    allow_pickle: Annotated[bool, typer.Option(help="Also load pickled weights (.bin / .pth files some published models ship; `synthface models convert` avoids it where a family converts).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a folder that already holds files: an earlier generate's images (those its manifest.json lists) are replaced once the new ones are rendered; other files are kept.")] = False,
) -> None:
    """Render IMAGES_PER_ID images of each identity in IDS into OUT, with a manifest.json.

    OUT must be empty or new (--overwrite replaces an earlier generate's images). Images are rendered
    into a hidden folder inside OUT and moved into place when all are done, so a failure (a full disk,
    Ctrl-C) leaves OUT as it was. The manifest records the model's licence, as its family declares it
    (`synthface models list`).
    """
    import numpy as np

    from synthface.devices import resolve_device
    from synthface.identity import load_bank

    _check_bounds(steps=steps, guidance=guidance, resolution=size, batch_size=batch_size,
                  images_per_identity=images_per_id)
    target = resolve_device(device)  # an unknown device is refused before any file is touched
    vectors = np.asarray(load_bank(ids).vectors, dtype=np.float32)
    _check_out(out, overwrite)
    from synthface.generators import DTYPES, Optimizations, RenderSettings, build_renderer  # diffusers: inputs are good

    start = time.perf_counter()
    renderer = build_renderer(
        model, settings=RenderSettings(steps=steps, guidance=guidance, resolution=size), device=target,
        dtype=dtype.value, optimizations=Optimizations(compile=compile_unet, vae_slicing=vae_slicing),
        allow_download=allow_download, allow_pickle=allow_pickle,
        **{k: v for k, v in (("base", base), ("lcm_lora", lcm_lora)) if v is not None},  # options given only
    )
    loaded = time.perf_counter() - start

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
    }
    start = time.perf_counter()
    rows = _render_into(out, renderer, vectors, images_per_id, seed, batch_size, manifest)
    rendered = time.perf_counter() - start
    console.print(
        f"wrote {len(rows)} images of {len(vectors)} identities to {out} "
        f"(load {loaded:.1f} s, render {rendered:.1f} s, {len(rows) / max(rendered, 1e-9):.2f} images/s on {renderer.device})"
    )


STAGING_PREFIX = ".synthface-generate-"  # the hidden folder inside OUT that images are rendered into


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse, before anything is loaded or written, an OUT that cannot be a folder (a file, under a
    file, a device, a name too long, read-only), a manifest.json that is not a regular file, and a
    non-empty OUT without --overwrite (hidden folders left by a killed generate do not count)."""
    from synthface.io import check_output_folder, check_output_path

    check_output_folder(out, what="output folder", option="--out")
    if not out.is_dir():
        return
    check_output_path(out / "manifest.json")  # a link or device under that name is refused before rendering
    entries = sorted(p.name for p in out.iterdir() if not p.name.startswith(STAGING_PREFIX))
    if entries and not overwrite:
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise OutputPathError(
            f"Cannot write the images into {out}: it already holds {len(entries)} entr{'y' if len(entries) == 1 else 'ies'} "
            f"({shown}). Choose an empty or new folder with --out, or pass --overwrite to replace an earlier "
            "generate's images there (the files its manifest.json lists; other files are kept)."
        )


def _render_into(out: Path, renderer, vectors, images_per_id: int, seed: int, batch_size: int, manifest: dict) -> list:
    """Render every image into a hidden folder inside `out`, then move the images and the manifest into
    place (an earlier generate's images, with --overwrite, are removed only then); on any failure the
    hidden folder is removed and `out` is left as it was. File-system errors are one OutputPathError."""
    import shutil
    import tempfile

    from synthface.io import fsync_tree, output_errors
    from synthface.seeds import derive_seed

    created = out  # the first folder on the way that this command creates, removed again on failure
    while not created.parent.exists():
        created = created.parent
    created = None if out.exists() else created
    tasks = [(i, j, derive_seed(seed, i, j)) for i in range(len(vectors)) for j in range(images_per_id)]
    rows, staging = [], None
    try:
        with output_errors(out, action="write the images into"):
            out.mkdir(parents=True, exist_ok=True)
            for stale in out.glob(f"{STAGING_PREFIX}*"):  # left by a killed generate
                shutil.rmtree(stale, ignore_errors=True)
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
            with _progress() as progress:
                bar = progress.add_task("rendering", total=len(tasks))
                for first in range(0, len(tasks), batch_size):
                    chunk = tasks[first:first + batch_size]
                    images = renderer(vectors[[i for i, _, _ in chunk]], [s for _, _, s in chunk])
                    for (i, j, s), image in zip(chunk, images):
                        name = f"{i:05d}/{j:03d}.png"
                        (staging / f"{i:05d}").mkdir(exist_ok=True)
                        (staging / name).write_bytes(_png(image))
                        rows.append({"file": name, "identity": i, "image": j, "seed": s})
                    progress.update(bar, advance=len(chunk))
            (staging / "manifest.json").write_bytes(json.dumps({**manifest, "images": rows}, indent=1).encode())
            fsync_tree(staging)
            _move_into_place(staging, out)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)  # only the hidden folder was ever in it
        raise
    staging.rmdir()
    return rows


def _move_into_place(staging: Path, out: Path) -> None:
    """Replace an earlier generate's images in `out` (those its manifest.json lists) by the staged ones,
    identity folders first, the manifest last (renames within one file system)."""
    import os

    previous = out / "manifest.json"
    try:
        listed = [row["file"] for row in json.loads(previous.read_text())["images"]]
    except (OSError, ValueError, KeyError, TypeError):
        listed = []  # no earlier generate here (or not its manifest): nothing of it to remove
    for name in listed:
        path = out / str(name)
        if path.parent.parent == out and path.suffix == ".png" and path.is_file():  # <identity>/<image>.png only
            path.unlink()
            if not any(path.parent.iterdir()):
                path.parent.rmdir()
    for folder in sorted(p for p in staging.iterdir() if p.is_dir()):
        target = out / folder.name
        if not target.exists():
            os.replace(folder, target)
            continue
        for image in sorted(folder.iterdir()):
            os.replace(image, target / image.name)
        folder.rmdir()
    os.replace(staging / "manifest.json", previous)


def _progress(screen: Console | None = None) -> Progress:
    """The bar with its count, rate and time left, like `synthface run`'s (on `screen`, default stdout)."""
    from rich.progress import TimeRemainingColumn

    from synthface.cli.run import _ImagesPerSecond

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _ImagesPerSecond(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=screen or console, transient=True)


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
