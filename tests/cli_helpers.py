"""Run the real `synthface` command in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_cli(*args: str | Path, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "synthface", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout,
    )


class CliResult:
    """What a user sees: the exit code and the two streams (and `output`, both together)."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli_inprocess(capsys, *args: str | Path) -> CliResult:
    """The real entry point (error mapping and exit codes included) without a subprocess start,
    which costs seconds on a 2-core machine. Pass pytest's `capsys` fixture."""
    from synthface.cli import cli

    capsys.readouterr()
    code = cli([str(a) for a in args])
    out, err = capsys.readouterr()
    return CliResult(code, out, err)


def assert_clean_refusal(result: CliResult, code: int, *needles: str) -> None:
    """A refusal as the project promises it: the exit code, every needle in the message (case
    folded), and no Python traceback."""
    text = result.output
    assert result.returncode == code, (result.returncode, text)
    assert "Traceback" not in text, text
    folded = " ".join(text.lower().split())
    for needle in needles:
        assert needle.lower() in folded, (needle, text)
