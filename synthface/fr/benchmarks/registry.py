"""What a benchmark protocol declares, the registry of protocols by name, and results.json.

A protocol finds its data in a folder (`find`, cheap: names what is missing), reads one item of it
and checks it (`load`: `synthface train` and `synthface eval` load everything before the first
embedding, so a bad file is refused before hours of work), and scores a recogniser on the items
(`evaluate(recognizer, items, *, flip=True, cache=None, progress=None)` takes found or loaded items;
`cache` is an embeddings.EmbeddingCache, `progress(n)` is called as n more images are embedded).
`headline` names the per-set field that `average` averages and the training log records, `columns`
the (title, field, scale) triples a results table shows (scale 100: a fraction shown in percent).

Optional: `rows(section) -> [(label, text)]`, the lines of the CLI's table for one results section
(default: `column_rows`, one line per set from `columns`, then the average), and `size(items) -> int`,
the number of images `evaluate` will embed (the progress bar's total; without it the total grows as
each `embeddings.embed` call starts).

results.json of `synthface eval` holds one section per benchmark under its name (results[NAME]); the
.bin protocol given with `--bins` keeps today's top-level keys ("sets", "average", ...).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from synthface.errors import InvalidInputError

#: Top-level keys of results.json that are not benchmark sections (no protocol may take these names).
RESERVED_KEYS = ("model", "flip", "protocol", "sets", "average", "folders", "benchmarks")


@dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    find: Callable[..., list]  # (folder, sets=None) -> the items to evaluate
    load: Callable[[object], object]  # one found item -> the item read and checked
    evaluate: Callable[..., dict]  # (recognizer, found or loaded items, *, flip=True, cache=None, progress=None) -> results
    headline: str
    columns: tuple[tuple[str, str, float | None], ...]
    rows: Callable[[dict], list[tuple[str, str]]] | None = None  # one results section -> (label, text) lines
    size: Callable[[list], int] | None = None  # loaded items -> images evaluate will embed (progress total)
    expects: str = ""  # the files PATH must hold, in words (for `synthface eval`'s refusals)

    def table_rows(self, section: dict) -> list[tuple[str, str]]:
        """The CLI table's lines for one section: `rows` when the protocol declares it, else `column_rows`."""
        return (self.rows or (lambda s: column_rows(self, s)))(section)


def column_rows(benchmark: Benchmark, section: dict) -> list[tuple[str, str]]:
    """One line per set of a {"sets": {...}, "average": ...} section, its `columns` side by side
    ("accuracy % 99.50, std 0.20, ..."), then the average of the headline field."""

    def cell(value, scale) -> str:
        return str(value) if scale is None else f"{scale * value:.2f}"

    rows = [(name, ", ".join(f"{title} {cell(fields[key], scale)}" for title, key, scale in benchmark.columns if key in fields))
            for name, fields in section.get("sets", {}).items()]
    if "average" in section:
        scale = next((s for _, key, s in benchmark.columns if key == benchmark.headline), None)
        rows.append(("average", f"{benchmark.headline} {cell(section['average'], scale)}"))
    return rows


BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    """Add a protocol to BENCHMARKS (a name may be registered once, and not as a reserved results key)."""
    if benchmark.name in BENCHMARKS:
        raise InvalidInputError(f"A benchmark protocol named {benchmark.name!r} is registered already.")
    if benchmark.name in RESERVED_KEYS or not benchmark.name.isidentifier():
        raise InvalidInputError(f"A benchmark protocol cannot be named {benchmark.name!r}: a name is a plain identifier and "
                                f"not one of results.json's own keys ({', '.join(RESERVED_KEYS)}).")
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise InvalidInputError(f"Unknown benchmark protocol {name!r}; choose from {', '.join(BENCHMARKS)}.") from None


def protocols_help() -> str:
    """Every registered protocol and what its folder must hold, in one line each (for refusals and --help)."""
    return "; ".join(f"{b.name}: {b.expects or b.description}" for b in BENCHMARKS.values())


def headline_scores(benchmark: Benchmark, results: dict) -> dict[str, float]:
    """Each set's headline number (what the training log records per epoch)."""
    return {name: fields[benchmark.headline] for name, fields in results["sets"].items()}


def write_results(results: dict, path: str | Path) -> Path:
    """results.json, written atomically (a link, folder or device under that name is refused)."""
    from synthface.io import atomic_write_bytes

    return atomic_write_bytes(path, (json.dumps(results, indent=2) + "\n").encode())


__all__ = ["BENCHMARKS", "RESERVED_KEYS", "Benchmark", "column_rows", "get_benchmark", "headline_scores", "protocols_help",
           "register_benchmark", "write_results"]
