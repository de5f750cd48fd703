"""The `synthface` command: one thin typer sub-app per capability, each in its own module.

Commands parse arguments and call the library; any `SynthfaceError` is printed as its paragraph
and turned into the error's exit code.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.text import Text

from synthface.errors import SynthfaceError

app = typer.Typer(
    name="synthface",
    help="Identity-conditioned synthetic face datasets. Pretrained face models used by synthface "
    "(insightface, Arc2Face) are licensed for non-commercial research only.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)


def _register() -> None:
    # Each command module imports its heavy dependencies inside its commands, so `--help` is fast.
    # Registered in the order of the data flow, which is the order `synthface --help` lists them.
    from synthface.cli import demo, faces, generate, ids, models, report, run

    for module in (ids, models, faces, generate, run, report, demo):
        module.register(app)


_register()


def main() -> None:
    """Console entry point: run the app, mapping library errors to a message and an exit code."""
    try:
        rc = app(standalone_mode=False)
    except SynthfaceError as exc:
        # Text, not markup: messages may contain brackets such as "[filtering]".
        err_console.print(Text.assemble(("error: ", "bold red"), str(exc)), highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own exit code
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)
