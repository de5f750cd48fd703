"""The `synthface` command: one thin typer sub-app per capability, each in its own module.

Commands parse arguments and call the library. `cli()` is the one place that turns outcomes into
exit codes: a `SynthfaceError` prints its paragraph and exits with the error's code, a usage
mistake (unknown option, bad value, missing argument) prints click's usage message and exits 2,
Ctrl-C prints "aborted" (`synthface run`: "aborted; rerun to resume", a RunInterruptedError) and exits 130.
No user mistake ends in a Python traceback.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

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

EXIT_USAGE = 2  # click's convention for a usage error
EXIT_INTERRUPTED = 130  # the shell's convention for a process ended by SIGINT


def _register() -> None:
    # Each command module imports its heavy dependencies inside its commands, so `--help` is fast.
    # Registered in the order of the data flow, which is the order `synthface --help` lists them.
    from synthface.cli import (
        attributes,
        demo,
        evaluate,
        export,
        faces,
        generate,
        ids,
        models,
        recipes,
        report,
        run,
        train,
    )

    for module in (ids, models, faces, attributes, generate, recipes, run, export, report, train, evaluate, demo):
        module.register(app)


_register()


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """Usage errors as raised by typer's bundled click copy and, for older typer, by click itself."""
    types: list[type[BaseException]] = [typer.exceptions.TyperException]
    try:
        import click

        types.append(click.ClickException)
    except ImportError:  # pragma: no cover - typer bundles its own copy
        pass
    return tuple(types)


def print_error(message: str) -> None:
    """One paragraph on stderr, as text (messages may contain brackets such as "[filtering]")."""
    err_console.print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _sigint_recorded() -> Iterator[list[bool]]:
    """Yield a flag that becomes [True] when SIGINT arrives (still raised as KeyboardInterrupt).

    typer turns a KeyboardInterrupt inside a command into a silent exit code 130, so the flag is how
    `cli` knows to say "aborted". Signal handlers belong to the main thread; elsewhere the flag stays
    [False] and the handler in place is left alone.
    """
    flag = [False]
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def on_sigint(signum, frame):
        flag[0] = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _replace_unencodable_output() -> None:
    """A console that cannot show all of Unicode (PYTHONIOENCODING=ascii, a Latin-1 terminal) shows '?'
    for what it cannot encode, e.g. an emoji in a recipe's name, instead of failing with a traceback."""
    for stream in (sys.stdout, sys.stderr):
        try:
            "\U0001f600\u2014".encode(stream.encoding or "ascii")
        except (UnicodeEncodeError, LookupError):
            with contextlib.suppress(AttributeError, ValueError, OSError):
                stream.reconfigure(errors="replace")
        except (AttributeError, TypeError):
            continue


def cli(args: Sequence[str] | None = None) -> int:
    """Run the command line `args` (default: sys.argv[1:]) and return its exit code; never raises
    for a user mistake. Tests call this in-process; `main` is the console entry point."""
    usage_errors = _usage_error_types()
    _replace_unencodable_output()
    try:
        with _sigint_recorded() as interrupted:
            rc = app(args=list(args) if args is not None else None, prog_name="synthface", standalone_mode=False)
        if interrupted[0]:
            raise KeyboardInterrupt
    except SynthfaceError as exc:
        if exc.exit_code == EXIT_INTERRUPTED:  # Ctrl-C, with what to do next ("aborted; rerun to resume")
            err_console.print(Text(str(exc)), highlight=False, soft_wrap=True)
        else:
            print_error(str(exc))
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        return EXIT_INTERRUPTED
    except usage_errors as exc:
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:  # pragma: no cover
            print_error(str(exc))
        code = getattr(exc, "exit_code", EXIT_USAGE)
        return code if isinstance(code, int) else EXIT_USAGE
    except typer.Exit as exc:
        return int(exc.exit_code)
    return rc if isinstance(rc, int) else 0


def main() -> None:
    """Console entry point."""
    sys.exit(cli())
