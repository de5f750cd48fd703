"""`synthface eval MODEL [--bins DIR] [--benchmark NAME=PATH ...] --out results.json`: a recogniser on every
benchmark protocol of synthface.fr.benchmarks (insightface's .bin sets, IJB-B/C, TinyFace, RFW, ...);
`synthface eval make-bin PHOTOS --out FILE`: a `.bin` from your own photos (synthface.fr.make_bin).

Every benchmark's folder is found and read (`find`, `load`) before the model is loaded; the embeddings
go through one progress bar and a cache per benchmark and model (`--cache`, default CACHE_DIR beside
--out), so a rerun or a second model pays only for what changed; results.json is written once, at the
end (--bins' results at its top level as before, each --benchmark under its NAME)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from synthface.errors import FileFormatError, InvalidInputError, SynthfaceError

if TYPE_CHECKING:
    from synthface.fr.benchmarks.registry import Benchmark

console = Console()

#: The subcommand `synthface eval MODEL ...` runs: everything that does not name another subcommand.
DEFAULT_COMMAND = "verify"


class _DefaultCommandGroup(TyperGroup):
    """A group whose arguments go to DEFAULT_COMMAND unless they start with a subcommand's name (or ask for
    the group's help), so `synthface eval MODEL --bins DIR` keeps working beside `synthface eval make-bin`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_DefaultCommandGroup, no_args_is_help=True,
    help="Score a recogniser: `synthface eval MODEL --bins DIR --benchmark ijbc=PATH ... --out results.json` (short "
    "for `synthface eval verify`); `synthface eval make-bin PHOTOS --out FILE` makes a .bin from your own photos, offline.",
)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="eval")


@app.command(DEFAULT_COMMAND)
def eval_command(
    model: Annotated[Path, typer.Argument(help="A `synthface train` run folder, a backbone model.pt, or an ONNX recogniser.")],
    benchmark: Annotated[Optional[list[str]], typer.Option("--benchmark", "-b", help="NAME=PATH: evaluate protocol NAME on "
        "the data at PATH (repeatable), e.g. --benchmark ijbc=/data/IJB_release/IJBC. Its results go to results.json "
        "under NAME. An unknown NAME is refused with the list of protocols and the folder each reads.")] = None,
    bins: Annotated[Optional[Path], typer.Option("--bins", help="Folder with lfw.bin, cfp_fp.bin, agedb_30.bin, calfw.bin, cplfw.bin "
        "(results under results.json's top-level sets and average, as before).")] = None,
    sets: Annotated[Optional[list[str]], typer.Option("--sets", help=".bin set names to use (repeatable; default: every standard set present).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="results.json to write (default: none); written once every benchmark is done.")] = None,
    cache: Annotated[Optional[Path], typer.Option("--cache", help="Folder of cached embeddings (per benchmark and model): a rerun "
        f"or a second model pays only for what changed. Default: {CACHE_DIR}/ beside --out; none without --out.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Embed everything again and keep no cache.")] = False,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:N (default: cuda when available).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 256,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Sum the embeddings of each image and its mirror (the protocol).")] = True,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar with images/s and the time left.")] = True,
) -> None:
    """Score a recogniser on every benchmark given: --bins (insightface's 10-fold verification) and each
    --benchmark NAME=PATH; one table, one results.json with a section per benchmark."""
    import contextlib

    from synthface.fr.benchmarks import load_recognizer, write_results
    from synthface.io import atomic_path

    jobs = plan_jobs(benchmark or [], bins, sets)  # names, folders and layouts: refused before anything is made
    cache_root = None if no_cache else cache if cache is not None else (out.parent / CACHE_DIR if out is not None else None)
    made = [p for p in (cache_root, *cache_root.parents) if not p.exists()] if cache_root is not None else []
    try:
        # The output's temporary file is made before the work, so a bad --out (a name too long, a file on the
        # way, a read-only or full disk) is refused at once; it becomes OUT only when every benchmark is done.
        with atomic_path(out) if out is not None else contextlib.nullcontext() as staged:
            for job in jobs:
                job.load()
            recognizer = load_recognizer(model, device=device, batch_size=batch_size)
            key = _model_key(model) if cache_root is not None else None
            with _ProgressBar(jobs, show=progress) as bar:
                for job in jobs:
                    store = None if key is None else EmbeddingCacheFor(cache_root, job.bench.name, key, flip)
                    job.section = job.bench.evaluate(recognizer, job.items, flip=flip, cache=store, progress=bar.task(job))
            results = compose_results(jobs, recognizer.description, flip)
            for table in results_tables(jobs, f"evaluation: {model}"):
                console.print(table)
            if staged is not None:
                write_results(results, staged)
    except (SynthfaceError, OSError):
        _remove_made(made)  # a refused run leaves no cache folder it created; an interrupted one keeps it
        raise
    if out is not None:
        console.print(f"written {out}")
    if cache_root is not None and cache_root.is_dir():
        console.print(f"embeddings cached in {cache_root}", highlight=False)


#: The default embedding cache: this folder beside --out.
CACHE_DIR = "embedding-cache"


@dataclass
class Job:
    """One benchmark of a `synthface eval` call: its protocol, its folder, found then loaded items, its section."""

    bench: Benchmark
    path: Path
    key: str  # where its section goes in results.json ("" for --bins: today's top-level keys)
    items: list = field(default_factory=list)
    section: dict | None = None

    def load(self) -> None:
        with _named(self):
            self.items = [self.bench.load(item) for item in self.items]

    @property
    def label(self) -> str:
        return self.key or "bins"


@contextlib.contextmanager
def _named(job: Job):
    """A protocol's refusal of its folder, prefixed with the --benchmark (or --bins) it came from."""
    try:
        yield
    except SynthfaceError as exc:
        option = f"--benchmark {job.key}={job.path}" if job.key else f"--bins {job.path}"
        try:
            renamed = type(exc)(f"{option}: {exc}")
        except Exception:  # noqa: BLE001 - an error type with another constructor keeps its own message
            raise exc from None
        raise renamed from None


def plan_jobs(specs: list[str], bins: Path | None, sets: list[str] | None) -> list[Job]:
    """The benchmarks to run, in order (--bins first), each found in its folder; a refusal names the
    option, the protocols and what their folders hold."""
    from synthface.fr.benchmarks import BENCHMARKS, get_benchmark, protocols_help

    jobs = [Job(get_benchmark("bin"), bins, "")] if bins is not None else []
    for spec in specs:
        name, sep, path = spec.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise InvalidInputError(
                f"--benchmark {spec!r} is not NAME=PATH. Write the protocol's name, '=' and its folder, e.g. --benchmark "
                f"ijbc=/data/IJB_release/IJBC. The protocols: {protocols_help()}."
            )
        if name not in BENCHMARKS:
            raise InvalidInputError(
                f"--benchmark {spec}: synthface has no benchmark protocol named {name!r}. The protocols and the folder each "
                f"reads: {protocols_help()}. Use one of these names."
            )
        if any(job.key == name for job in jobs):
            raise InvalidInputError(f"--benchmark {name}=... is given twice; results.json has one {name} section. Give each "
                                    "protocol once (evaluate another folder into another --out).")
        jobs.append(Job(BENCHMARKS[name], Path(path), name))
    if not jobs:
        raise InvalidInputError(
            "Nothing to evaluate: give --bins DIR and/or --benchmark NAME=PATH (repeatable). The protocols and the "
            f"folder each reads: {protocols_help()}."
        )
    if sets and not any(job.bench.name == "bin" for job in jobs):
        raise InvalidInputError("--sets chooses .bin packs of --bins (or --benchmark bin=PATH), and neither is given; "
                                "drop --sets or add the .bin folder.")
    for job in jobs:
        if not job.path.is_dir():
            what = "is a file, not a folder" if job.path.exists() else "does not exist"
            with _named(job):
                raise FileFormatError(
                    f"{job.path} {what}. The {job.bench.name} protocol reads {job.bench.expects or job.bench.description}. "
                    "Benchmark data are licensed and synthface never downloads them: point PATH at your copy."
                )
        with _named(job):
            job.items = job.bench.find(job.path, sets) if job.bench.name == "bin" else job.bench.find(job.path)
    return jobs


def compose_results(jobs: list[Job], model: str, flip: bool) -> dict:
    """results.json: --bins' results as before (model, protocol, flip, sets, average), then one section
    per --benchmark under its name, and "folders": the path each was read from."""
    results: dict = {"model": model, "flip": flip}
    for job in jobs:
        if not job.key:
            results.update(job.section)
    named = [job for job in jobs if job.key]
    if named:
        results["folders"] = {job.key: str(job.path) for job in named}
        results.update({job.key: job.section for job in named})
    return results


def results_tables(jobs: list[Job], title: str) -> list[Table]:
    """--bins' wide table (one row per set) and one table of every --benchmark section's rows."""
    tables = [results_table(job.section, f"verification: {title.removeprefix('evaluation: ')}") for job in jobs if not job.key]
    named = [job for job in jobs if job.key]
    if named:
        table = Table(title=title)
        for heading, justify in (("benchmark", "left"), ("", "left"), ("value", "right")):
            table.add_column(heading, justify=justify)
        for job in named:
            rows = job.bench.table_rows(job.section)
            for i, (label, text) in enumerate(rows):
                table.add_row(job.key if i == 0 else "", label, text, end_section=i == len(rows) - 1)
        tables.append(table)
    return tables


def _model_key(model: Path) -> str:
    """The cache key of the recogniser's file (a run folder: its model.pt, not the files the run keeps changing)."""
    from synthface.fr.benchmarks.embeddings import model_key

    return model_key(model / "model.pt" if model.is_dir() else model)


def EmbeddingCacheFor(root: Path, benchmark: str, key: str, flip: bool):  # noqa: N802 - reads as the class it makes
    from synthface.fr.benchmarks.embeddings import EmbeddingCache

    return EmbeddingCache(root, benchmark=benchmark, model_key=key, flip=flip)


def _remove_made(made: list[Path]) -> None:
    import shutil

    if made:
        shutil.rmtree(made[-1], ignore_errors=True)  # the outermost folder this run created


class _Rate(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} images/s" if speed else "", style="progress.data.speed")


class _ProgressBar:
    """One rich bar over every benchmark's images: rate and time left. Its total is the sum of the protocols'
    `size` where declared; a protocol without one adds each embed call's count as the call starts."""

    def __init__(self, jobs: list[Job], *, show: bool) -> None:
        self.jobs, self.show = jobs, show
        self.known = {id(job): job.bench.size(job.items) for job in jobs if job.bench.size is not None}
        self.progress = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 _Rate(), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                                 console=console, disable=not show)

    def __enter__(self):
        self.progress.__enter__()
        total = sum(self.known.values())
        self.id = self.progress.add_task("embedding", total=total or None)
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def task(self, job: Job):
        """The `progress` callable a protocol's evaluate gets for `job`."""
        self.progress.update(self.id, description=f"{job.label}: embedding")
        bar, known = self, id(job) in self.known

        class Advance:
            def __call__(self, n: int) -> None:
                bar.progress.advance(bar.id, n)

            def expect(self, n: int) -> None:
                if not known:
                    task = bar.progress.tasks[0]
                    bar.progress.update(bar.id, total=(task.total or 0) + n)

        return Advance()


def results_table(results: dict, title: str, protocol: str = "bin") -> Table:
    """One row per set with the protocol's columns (.bin: accuracy +- std in percent, TAR at FAR 1e-3,
    pairs), and the average of its headline number."""
    from synthface.fr.benchmarks import get_benchmark

    bench = get_benchmark(protocol)
    table = Table(title=title)
    table.add_column("set", justify="left")
    for heading, _, _ in bench.columns:
        table.add_column(heading, justify="right")

    def cell(value, scale) -> str:
        return str(value) if scale is None else f"{scale * value:.2f}"

    for name, r in results["sets"].items():
        table.add_row(name, *(cell(r[key], scale) for _, key, scale in bench.columns))
    average = [cell(results["average"], scale) if key == bench.headline else "" for _, key, scale in bench.columns]
    table.add_row("average", *average, style="bold")
    return table


@app.command("make-bin")
def make_bin_command(
    photos: Annotated[Path, typer.Argument(help="A folder of identity subfolders: PHOTOS/alice/1.jpg, PHOTOS/bob/1.jpg, ...")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The .bin to write (e.g. bins/mine.bin; then: synthface eval MODEL --bins bins).")],
    pairs: Annotated[int, typer.Option(min=1, help="Genuine pairs wanted (at most); as many impostor pairs are added.")] = 3000,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the pair draw.")] = 0,
    backend: Annotated[str, typer.Option(help="Face analyser that aligns the crops: dlib (offline) or insightface.")] = "dlib",
    image_format: Annotated[str, typer.Option("--format", help="Crop encoding: jpg (as insightface's packs) or png (lossless).")] = "jpg",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUT.")] = False,
) -> None:
    """Detect and align (112 x 112, ArcFace template) the largest face of each photo, draw genuine pairs within
    a folder and impostor pairs across folders (seeded), and write them in the insightface .bin layout."""
    from synthface.errors import InvalidInputError
    from synthface.fr.make_bin import IMAGE_FORMATS, make_bin

    if image_format not in IMAGE_FORMATS:
        raise InvalidInputError(f"--format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}.")
    # the analyser loads only once the folder and OUT are known to be usable
    made = make_bin(photos, out, analyzer=backend, pairs=pairs, seed=seed, fmt=image_format, overwrite=overwrite)
    for photo, why in made.skipped:
        console.print(f"[yellow]skipped[/] {photo}: {why}", highlight=False)
    console.print(f"written {made.path}: {made.genuine} genuine and {made.impostor} impostor pairs "
                  f"({len(made.skipped)} photos skipped). Evaluate with: synthface eval MODEL --bins {made.path.parent}",
                  highlight=False)
