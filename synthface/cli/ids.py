"""`synthface ids sample|verify`: build and check identity banks."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Sample and verify identity banks (well-separated ID vectors).", no_args_is_help=True)
console = Console()


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="ids")


class PriorName(str, Enum):
    isotropic = "isotropic"
    gaussian = "gaussian"


@app.command()
def sample(
    num: Annotated[int, typer.Option("--num", "-n", help="Number of identities.")],
    max_cos: Annotated[float, typer.Option("--max-cos", help="Largest allowed cosine between any two identities.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .safetensors file.")],
    prior: Annotated[PriorName, typer.Option(help="isotropic (uniform on the sphere) or gaussian (fitted to --reference).")] = PriorName.isotropic,
    reference: Annotated[Optional[Path], typer.Option(help="Reference embeddings (.npy or .safetensors) for the gaussian prior.")] = None,
    exclude: Annotated[Optional[Path], typer.Option(help="Embeddings of real people the identities must stay away from.")] = None,
    exclude_max_cos: Annotated[Optional[float], typer.Option(help="Largest allowed cosine to any --exclude vector (default: --max-cos).")] = None,
    dim: Annotated[int, typer.Option(help="Embedding dimension for the isotropic prior.")] = 512,
    seed: Annotated[int, typer.Option(help="Random seed; the same arguments and seed give identical vectors.")] = 0,
    device: Annotated[Optional[str], typer.Option(help="torch device (default: cuda when available, else cpu).")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="Also run the independent all-pairs check (a second pass "
                                         "over the bank); the exact max cosine is reported either way.")] = False,
    checkpoint_every: Annotated[float, typer.Option(help="Minutes between checkpoints (OUT.checkpoint, resumed by "
                                                    "the same command after an interruption); 0: none.")] = 5.0,
) -> None:
    """Sample NUM unit vectors with every pairwise cosine <= MAX_COS and write them to OUT.

    Each identity's exact nearest-neighbour cosine is recorded while sampling and saved with the
    bank, so the max pairwise cosine is reported without a second pass (--verify adds one).
    """
    from synthface.devices import resolve_device
    from synthface.errors import InvalidInputError
    from synthface.identity import load_vectors, sample_identities
    from synthface.identity import verify as verify_bank
    from synthface.io import check_output_path

    device = resolve_device(device)  # fail before the work, not after it
    check_output_path(out)
    if not 0 <= checkpoint_every < float("inf"):
        raise InvalidInputError(f"--checkpoint-every must be a number of minutes >= 0 (0: no checkpoints), got {checkpoint_every}.")
    checkpoint = out.with_name(out.name + ".checkpoint") if checkpoint_every > 0 else None
    if checkpoint is not None:
        check_output_path(checkpoint)
    ref = load_vectors(reference) if reference is not None else None
    if ref is not None:
        dim = ref.shape[1]
    excl = load_vectors(exclude, dim=dim) if exclude is not None else None
    start = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task("sampling identities", total=num, eta="")
        bank = sample_identities(
            num,
            max_cos=max_cos,
            prior=prior.value,
            dim=dim,
            seed=seed,
            reference=ref,
            exclude=excl,
            exclude_max_cos=exclude_max_cos,
            device=device,
            progress=lambda state: progress.update(task, completed=state.accepted, eta=_eta_text(state.eta_s)),
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every * 60,
        )
    sampled = time.perf_counter() - start
    bank.save(out)
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    recorded = bank.separation(bins=0)
    rows = [
        ("identities", f"{len(bank)} x {bank.dim}"),
        ("prior", bank.prior.name),
        ("max pairwise cosine", f"{recorded.max_cos:.4f} (threshold {max_cos})"),
        ("nearest neighbours", "exact, recorded while sampling"),
        ("mean nearest-neighbour cosine", f"{float(recorded.nearest_cos.mean()):.4f}"),
    ]
    if excl is not None:
        rows.append(("excluded real vectors", f"{excl.shape[0]} at cosine <= {bank.exclude_max_cos}"))
    rows.append(("sample time", f"{sampled:.2f} s"))
    if verify:
        check = verify_bank(bank, bins=0, device=device)
        rows += [("independent check", f"max pairwise cosine {check.max_cos:.4f}"),
                 ("verify time", f"{check.seconds:.2f} s")]
    rows.append(("written", str(out)))
    _table("identity bank", rows)


@app.command("verify")
def verify_command(
    path: Annotated[Path, typer.Argument(help="Identity bank (.safetensors) or vectors (.npy).")],
    bins: Annotated[int, typer.Option(help="Histogram bins for nearest-neighbour cosines.")] = 20,
    device: Annotated[Optional[str], typer.Option(help="torch device (default: cuda when available).")] = None,
) -> None:
    """Exact maximum pairwise cosine and the nearest-neighbour cosine histogram of a bank."""
    from synthface.devices import resolve_device
    from synthface.identity import load_bank, verify

    device = resolve_device(device)
    bank = load_bank(path)
    check = verify(bank, bins=bins, device=device)
    ok = bank.max_cos is None or check.max_cos <= bank.max_cos
    _table(
        str(path),
        [
            ("identities", f"{check.count} x {bank.dim}"),
            ("prior", bank.prior.name),
            ("max pairwise cosine", f"{check.max_cos:.4f}"),
            ("threshold recorded", "none" if bank.max_cos is None else f"{bank.max_cos} ({'holds' if ok else 'VIOLATED'})"),
            ("verify time", f"{check.seconds:.2f} s"),
        ],
    )
    if check.histogram.size:
        hist = Table(title="nearest-neighbour cosine")
        hist.add_column("from", justify="right")
        hist.add_column("to", justify="right")
        hist.add_column("identities", justify="right")
        for lo, hi, count in zip(check.edges[:-1], check.edges[1:], check.histogram):
            hist.add_row(f"{lo:.4f}", f"{hi:.4f}", str(int(count)))
        console.print(hist)
    if not ok:
        raise typer.Exit(code=1)


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[eta]}"), console=console, transient=True,
    )


def _eta_text(seconds: float | None) -> str:
    """The sampler's modelled time left (it is not linear in the count: each identity costs more as the bank grows)."""
    if seconds is None:
        return ""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"ETA {hours}:{minutes:02d}:{secs:02d}"


def _table(title: str, rows: list[tuple[str, str]]) -> None:
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
