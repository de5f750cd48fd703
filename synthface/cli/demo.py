"""`synthface demo`: the identity-customisation page (Gradio) on this machine."""

from __future__ import annotations

from typing import Annotated

import typer


def register(root: typer.Typer) -> None:
    root.command("demo")(demo)


def demo(
    model: Annotated[str, typer.Option(help="Generator: a model name synthface.render loads (an unknown name lists them; the random-weight ones are smoke tests), or a local folder or Vec2Face .pth.")] = "arc2face",
    analyzer: Annotated[str, typer.Option(help="Judge of the generated faces: a registered face analyser (dlib, offline; insightface). Its licence is shown on the page.")] = "dlib",
    host: Annotated[str, typer.Option(help="Address to bind; the default serves this machine only. Use 0.0.0.0 to serve your network.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port (default: the first free one from 7860).")] = None,
    share: Annotated[bool, typer.Option("--share", help="Also open a public gradio.live link (anyone with the link can use your GPU).")] = False,
    device: Annotated[str | None, typer.Option(help="torch device for the generator (default: cuda when available, else cpu).")] = None,
) -> None:
    """Upload photos of a person (or draw a random identity) and get new images of that identity.

    Uploads and generated zips live in a private temporary folder, removed when the demo stops.
    """
    from synthface.demo_page import build_demo, check_port_free, launch_demo
    from synthface.faces import require_registered

    require_registered(analyzer)
    require_generator(model)
    if port is not None:  # before the models load, so a busy port is reported at once
        check_port_free(host, port)
    launch_demo(build_demo(model, analyzer, device=device), host=host, port=port, share=share)


def require_generator(model: str) -> None:
    """Refuse a model that is neither a name `synthface.render.generator_names` lists nor an existing
    local path, listing the names (InvalidInputError), before anything loads."""
    from pathlib import Path

    from synthface.errors import InvalidInputError
    from synthface.render import generator_names

    names = generator_names()
    if model.lower() not in names and not Path(model).expanduser().exists():
        raise InvalidInputError(
            f"Unknown generator {model!r}: choose one of {', '.join(names)}, or pass a local model folder or file."
        )
