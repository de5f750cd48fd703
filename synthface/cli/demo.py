"""`synthface demo`: the identity-customisation page (Gradio) on this machine."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console


def register(root: typer.Typer) -> None:
    root.command("demo")(demo)


def demo(
    model: Annotated[str | None, typer.Option(help="Generator: a model name a registered family loads (an unknown name lists them; the random-weight ones are smoke tests), or a local folder or file a family reads. Default: the first one whose weights are installed (the default family first), else its random-weight model.")] = None,
    analyzer: Annotated[str, typer.Option(help="Judge of the generated faces: a registered face analyser (dlib, offline; insightface). Its licence is shown on the page.")] = "dlib",
    host: Annotated[str, typer.Option(help="Address to bind; the default serves this machine only. Use 0.0.0.0 to serve your network.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port (default: the first free one from 7860).")] = None,
    share: Annotated[bool, typer.Option("--share", help="Also open a public gradio.live link (anyone with the link can use your GPU).")] = False,
    device: Annotated[str | None, typer.Option(help="torch device for the generator (default: cuda when available, else cpu).")] = None,
    analyzer_option: Annotated[list[str] | None, typer.Option("--analyzer-option", metavar="NAME=VALUE", help="An analyser keyword argument, as in a recipe's filtering.analyzer_options; repeat for several. Values are read as TOML (true, 3, 0.5, or text). E.g. insightface on the GPU: --analyzer-option runtime=torch --analyzer-option device=cuda.")] = None,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Also load pickled weights (.pth generator or recogniser files), read with torch's weights_only loader.")] = False,
) -> None:
    """Upload photos of a person (or draw a random identity) and get new images of that identity.

    Uploads and generated zips live in a private temporary folder, removed when the demo stops.
    """
    from synthface.demo.page import build_demo, check_port_free, launch_demo, require_gradio
    from synthface.demo.session import DemoSession, default_model, require_model_weights, weights_notice
    from synthface.faces import require_registered

    require_registered(analyzer)
    if model is not None:
        require_generator(model)
    options = parse_analyzer_options(analyzer_option or [])
    if port is not None:  # before the models load, so a busy port is reported at once
        check_port_free(host, port)
    require_gradio()
    if model is None:
        model = default_model()
    else:
        require_model_weights(model)  # asked for by name: its weights must be here (the message says how)
    console = Console()
    missing = weights_notice(model, analyzer, options)
    if missing:
        console.print("Weights not installed (these models are not offered; fetch them and restart the demo):",
                      highlight=False)
        for line in missing:
            console.print(f"  - {line}", highlight=False, soft_wrap=True)
    console.print(f"Starting the demo on {model}.", highlight=False)
    session = DemoSession(model, analyzer, device=device, analyzer_options=options, allow_pickle=allow_pickle or None)
    if options:
        session.analyzer  # noqa: B018 - built now, so an option the analyser refuses is reported before the page starts
    launch_demo(build_demo(model, analyzer, session=session), host=host, port=port, share=share)


def parse_analyzer_options(items: list[str]) -> dict:
    """`NAME=VALUE` pairs as a dict; each VALUE is read as a TOML value (true, 3, 0.5, "text") and
    taken as text when it is not one, so `device=cuda` and `det_size=320` both mean what they say.
    A malformed pair, a repeated name or a value of another type is an InvalidInputError."""
    import tomllib

    from synthface.demo.session import check_analyzer_options
    from synthface.errors import InvalidInputError

    options: dict = {}
    for item in items:
        name, sep, text = item.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name or not text:
            raise InvalidInputError(
                f"--analyzer-option {item!r} is not NAME=VALUE; write e.g. --analyzer-option device=cuda."
            )
        if name in options:
            raise InvalidInputError(f"--analyzer-option {name} is given twice; give each option once.")
        try:
            options[name] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            options[name] = text
    return check_analyzer_options(options)


def require_generator(model: str) -> None:
    """Refuse a model that is neither a name `synthface.generators.generator_names` lists nor an existing
    local path, listing the names (InvalidInputError), before anything loads."""
    from pathlib import Path

    from synthface.errors import InvalidInputError
    from synthface.generators import generator_names

    names = generator_names()
    if model.lower() not in names and not Path(model).expanduser().exists():
        raise InvalidInputError(
            f"Unknown generator {model!r}: choose one of {', '.join(names)}, or pass a local model folder or file."
        )
