"""`synthface run RECIPE`: the dataset engine from the command line."""

from __future__ import annotations

import contextlib
import logging
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

console = Console()

def licence_note(model: str) -> str:
    """What the console says before a run: the generator's licence as its family declares it."""
    from synthface.generators import model_licence

    return (f"Generator {model}: {model_licence(model)}. Pretrained face models carry their own, mostly "
            "non-commercial, licences; the dataset card records every model that made the data and its terms.")


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)


def run_command(
    recipe: Annotated[str, typer.Argument(help="A recipe TOML file, or a shipped recipe's name (`synthface recipes`), e.g. smoke.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (default: out/<recipe name>).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe value: section.field=value (repeatable).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and exit.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a different recipe's run in --out.")] = False,
    shard_index: Annotated[Optional[int], typer.Option(help="This process's rank (default: from torchrun/accelerate/Slurm).")] = None,
    num_shards: Annotated[Optional[int], typer.Option(help="Number of ranks (with --shard-index).")] = None,
) -> None:
    """Turn a recipe into a finished training set; rerun the same command to resume."""
    from synthface import engine
    from synthface.distributed import ranks_from_environment
    from synthface.io import check_output_folder
    from synthface.recipe import load_recipe

    spec = load_recipe(recipe, set_ or [])
    out_dir = check_output_folder(out or Path("out") / spec.name, what="run folder")
    ranks = ranks_from_environment(shard_index, num_shards)
    plan = engine.make_plan(spec, out_dir)
    _print_plan(spec, plan, out_dir, ranks)
    if dry_run:
        return
    console.print(Text(licence_note(spec.generation.model), style="dim"))
    command = "synthface run " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else ""
    start = time.perf_counter()
    with _engine_warnings_on_stderr():
        summary = engine.run(spec, out_dir, ranks=ranks, overwrite=overwrite, progress=_RichProgress(), command=command)
    elapsed = time.perf_counter() - start
    if not summary.finalized and not summary.stats:
        console.print(f"rank {ranks.rank}: {len(summary.shards_run)} shards done in {elapsed:.1f} s; rank 0 finalizes.")
        return
    stats = summary.stats
    table = Table(title=f"{spec.name} -> {out_dir}", show_header=False)
    for key, value in [
        ("identities kept", f"{stats['identities_kept']} of {stats['identities_requested']}"),
        ("images kept", f"{stats['images_kept']} of {stats['candidates']} candidates"),
        ("drop reasons", ", ".join(f"{k}: {v}" for k, v in stats["drop_reasons"].items()) or "none"),
        ("identity collisions", str(stats["collisions"])),
        ("formats", ", ".join(spec.export.formats)),
        ("shards run / skipped", f"{len(summary.shards_run)} / {len(summary.shards_skipped)}"),
        *_stage_rows(summary.stages),
        ("time", f"{elapsed:.1f} s"),
    ]:
        table.add_row(key, value)
    console.print(table)


def _stage_rows(stages: dict) -> list[tuple[str, str]]:
    """The summary's rows for the shards this process rendered: speed and each stage's busy share."""
    if not stages:
        return []
    return [("images/s (shards)", f"{stages['images_per_s']:.2f}"),
            ("stages", Text.from_markup(stage_shares_text(stages["busy_share"], stages["bottleneck"])))]


@contextlib.contextmanager
def _engine_warnings_on_stderr() -> Iterator[None]:
    """Show the engine's warnings (a rank saying what it waits for, a shard being redone) on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    engine_log = logging.getLogger("synthface.engine")
    engine_log.addHandler(handler)
    try:
        yield
    finally:
        engine_log.removeHandler(handler)


def _print_plan(spec, plan, out_dir: Path, ranks) -> None:
    table = Table(title=f"plan: {spec.name}", show_header=False)
    eta = "unknown until a shard has finished" if plan.remaining_hours is None else f"{plan.remaining_hours:.2f} device-hours left"
    for key, value in [
        ("identities", f"{plan.identities} (max cos {spec.identities.max_cos}, {spec.identities.prior} prior)"),
        ("images", f"{plan.images_wanted} kept from {plan.candidates_first_round} candidates (first round)"),
        ("model", f"{spec.generation.model}, {spec.generation.steps} steps, guidance {spec.generation.guidance}"),
        ("filter", spec.filtering.analyzer if spec.filtering.enabled else "off"),
        ("shards", _shards_text(plan.shards, plan.identities, spec.compute.shard_size, plan.shards_done)),
        ("ranks", f"this is rank {ranks.rank} of {ranks.world_size}"),
        ("disk", f"about {plan.disk_bytes / 1e9:.2f} GB"),
        ("time", eta),
        ("output", str(out_dir)),
    ]:
        table.add_row(key, value)
    console.print(table)


def _shards_text(shards: int, identities: int, shard_size: int, done: int) -> str:
    """The plan's shard line: how many shards, how many identities each (the last may hold fewer), done."""

    def count(n: int, noun: str) -> str:
        return f"{n} {noun if n == 1 else noun[:-1] + 'ies' if noun.endswith('y') else noun + 's'}"

    if shards == 1:
        return f"1 shard ({count(identities, 'identity')}), {done} done"
    last = identities - (shards - 1) * shard_size
    tail = "" if last == shard_size else f", the last {last}"
    return f"{count(shards, 'shard')} ({count(shard_size, 'identity')} each{tail}), {done} done"


def wall_rate(completed: float, elapsed: float | None) -> float | None:
    """Images per second over the wall time since the bar started (None before any image): not
    rich's speed, which is taken over the last few updates and jumps with each batch."""
    return completed / elapsed if completed and elapsed else None


class _ImagesPerSecond(ProgressColumn):
    def render(self, task) -> Text:
        rate = wall_rate(task.completed, task.elapsed)
        return Text("" if rate is None else f"{rate:.2f} img/s")


class _WallTimeRemaining(ProgressColumn):
    """The time left at the wall-time rate so far."""

    def render(self, task) -> Text:
        rate = wall_rate(task.completed, task.elapsed)
        if rate is None or task.total is None:
            return Text("-:--:--")
        left = max(task.total - task.completed, 0) / rate
        return Text(time.strftime("%H:%M:%S", time.gmtime(left)) if left < 86400 else f"{left / 86400:.1f} days")


def stage_shares_text(shares: dict[str, float], bottleneck: str | None) -> str:
    """'render 97% · analyse 41% · write 12% busy' with the bottleneck in bold markup."""
    parts = [f"[bold]{name} {share:.0%}[/]" if name == bottleneck else f"{name} {share:.0%}"
             for name, share in shares.items() if name != "sink"]
    return " · ".join(parts) + " busy" if parts else ""


class _StageShares(ProgressColumn):
    """Each stage's busy share so far, the bottleneck in bold (the engine's live StageTimes)."""

    def __init__(self, times):
        super().__init__()
        self.times = times

    def render(self, task) -> Text:
        return Text.from_markup(stage_shares_text(self.times.shares(), self.times.bottleneck))


class _RichProgress:
    """Adapter from the engine's start/advance/stop calls to a rich progress bar."""

    def __init__(self, get_time=None):
        self._bar = None
        self._get_time = get_time  # the bar's clock (default: rich's monotonic one)

    def start(self, total: int, times) -> None:
        self._bar = Progress(
            TextColumn("rendering"), BarColumn(), MofNCompleteColumn(), _ImagesPerSecond(),
            TimeElapsedColumn(), _WallTimeRemaining(), _StageShares(times), console=console, transient=True,
            get_time=self._get_time,
        )
        self._bar.start()
        self._task = self._bar.add_task("images", total=total)

    def advance(self, images: int) -> None:
        task = self._bar.tasks[0]
        done = task.completed + images  # resampling rounds render more than the first round's total:
        self._bar.update(self._task, completed=done, total=max(task.total, done))  # never past 100 %

    def stop(self) -> None:
        if self._bar:
            self._bar.stop()
