"""`synthface report DIR`: report.json and a self-contained report.html for a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def register(root: typer.Typer) -> None:
    root.command("report")(report)


def report(
    run_dir: Annotated[Path, typer.Argument(help="Run folder (manifest.parquet, embeddings.safetensors, identities.safetensors).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for report.json and report.html (default: the run folder).")] = None,
    reference: Annotated[Path | None, typer.Option(help="Real identity centres (.safetensors or .npy, filter space) for the leakage check.")] = None,
    leak_cos: Annotated[float, typer.Option(help="Flag a synthetic identity whose best cosine to a real centre exceeds this.")] = 0.4,
    max_genuine_pairs: Annotated[int, typer.Option(help="Genuine pairs scored exactly up to this many, sampled beyond; 0 skips them (and so the EER and TAR).")] = 2_000_000,
    impostor_images: Annotated[int, typer.Option(help="Images sampled for impostor pairs (all different-identity pairs among them).")] = 4096,
    seed: Annotated[int, typer.Option(help="Seed for the pair sampling.")] = 0,
    html: Annotated[bool, typer.Option("--html/--no-html", help="Also write report.html (needs matplotlib).")] = True,
    device: Annotated[str | None, typer.Option(help="torch device for the identity packing products (default: numpy on CPU).")] = None,
    analyzer: Annotated[str | None, typer.Option(help="Face analyser that embeds the kept images of a run made with filtering off (default: the recipe's, else dlib).")] = None,
) -> None:
    """Measure a generated dataset: counts, EER and TAR@FAR, unique identities, spread, pose, leakage.

    A run made with filtering off has no embeddings: its kept images are embedded first, and the
    output says with which analyser. Where they hold no face (random weights), the measures that
    need faces are skipped, and the output says so; counts, the identity bank and the contact
    sheet are still written."""
    from synthface.faces import require_registered
    from synthface.report import ReportOptions, write_report
    from synthface.report.sections import skipped_lines

    if analyzer is not None:
        require_registered(analyzer)  # refused before anything is read, whether or not the run needs it
    options = ReportOptions(
        max_genuine_pairs=max_genuine_pairs, impostor_images=impostor_images, leak_cos=leak_cos, seed=seed, device=device
    )
    json_path, html_path, rep = write_report(run_dir, out, reference=reference, options=options, html=html,
                                             analyzer=_analyzer_for(run_dir, analyzer))
    d = rep.data
    if d.get("embedded_by"):
        console.print(f"{run_dir} has no embeddings (filtering was off): its kept images were embedded with "
                      f"{d['embedded_by']} for this report.", highlight=False)
    elif analyzer is not None:
        console.print(f"--analyzer {analyzer} was not used: {run_dir} holds the embeddings its filter stored, and "
                      "the report measures those.", highlight=False)
    for line in skipped_lines(d["skipped"]):
        console.print(line, highlight=False, soft_wrap=True)
    table = Table(title=f"report: {run_dir}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    c, v, b = d["counts"], d["verification"], d["identity_bank"]
    table.add_row("kept / candidates", f"{c['kept']} / {c['candidates']}")
    if b:
        table.add_row("identity bank max cos", f"{_f(b['max_cos'])} ({b['count']} identities)")
    if v:
        table.add_row("EER", _f(v["eer"]))
        for far, r in v["tar_at_far"].items():
            table.add_row(f"TAR @ FAR {far}", _f(r["tar"]))
    else:
        table.add_row("EER, TAR", "skipped")
    if d["unique_identities"] is not None:
        for t, cur in d["unique_identities"].items():
            table.add_row(f"unique identities @ cos {t}", f"{cur['final']} of {c['identities_generated']}")
    else:
        table.add_row("unique identities", "skipped")
    if d["leakage"]:
        table.add_row("leakage flagged", str(d["leakage"]["flagged_count"]))
    for name, result in d.get("recognisers", {}).items():  # synthface train RUN --out RUN/fr/NAME --eval-bins, synthface eval
        if result.get("average") is not None:
            sets = ", ".join(f"{s} {100 * a:.2f}" for s, a in result["sets"].items())
            table.add_row(f"recogniser {name}", f"average {100 * result['average']:.2f} % ({sets})")
        for bench, shown in result.get("benchmarks", {}).items():
            table.add_row(f"recogniser {name} {bench}", ", ".join(f"{label} {100 * v:.2f}" for label, v in shown.items()) + " %")
    table.add_row("written", str(json_path) + (f", {html_path}" if html_path else ""))
    console.print(table)


def _analyzer_for(run_dir: Path, name: str | None):
    """The analyser to embed a run without embeddings: `name`, else the recipe's (with its options),
    else dlib; None for a run that has embeddings (nothing is loaded then)."""
    from synthface.faces import get_analyzer
    from synthface.report.run import map_tensor
    from synthface.runfolder import RunLayout, load_run_recipe

    layout = RunLayout(run_dir)
    if not layout.embeddings.is_file() or map_tensor(layout.embeddings, "embeddings").shape[1:] != (0,):
        return None
    if name is not None:
        return get_analyzer(name)
    recipe = load_run_recipe(layout) if layout.recipe_file.is_file() or layout.run_file.is_file() else None
    if recipe is None:
        return get_analyzer("dlib")
    return get_analyzer(recipe.filtering.analyzer, **recipe.filtering.analyzer_options)


def _f(x) -> str:
    return "-" if x is None else f"{x:.4f}"
