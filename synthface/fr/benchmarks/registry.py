"""What a benchmark protocol declares, the registry of protocols by name, and results.json.

A protocol finds its data in a folder (`find`, cheap: names what is missing), reads one item of it
and checks it (`load`: `synthface train` loads everything before the first step, so a bad file is
refused before hours of training), and scores a recogniser on the items (`evaluate` takes found or
loaded items). Its results are {"sets": {name: {field: value}}, "average": float, ...}; `headline`
names the per-set field that `average` averages and the training log records, `columns` the
(title, field, scale) triples a results table shows (scale 100: a fraction shown in percent).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from synthface.errors import InvalidInputError


@dataclass(frozen=True)
class Benchmark:
    name: str
    description: str
    find: Callable[..., list]  # (folder, sets=None) -> the items to evaluate
    load: Callable[[object], object]  # one found item -> the item read and checked
    evaluate: Callable[..., dict]  # (recognizer, found or loaded items, *, flip=True) -> results
    headline: str
    columns: tuple[tuple[str, str, float | None], ...]


BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    """Add a protocol to BENCHMARKS (a name may be registered once)."""
    if benchmark.name in BENCHMARKS:
        raise InvalidInputError(f"A benchmark protocol named {benchmark.name!r} is registered already.")
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise InvalidInputError(f"Unknown benchmark protocol {name!r}; choose from {', '.join(BENCHMARKS)}.") from None


def headline_scores(benchmark: Benchmark, results: dict) -> dict[str, float]:
    """Each set's headline number (what the training log records per epoch)."""
    return {name: fields[benchmark.headline] for name, fields in results["sets"].items()}


def write_results(results: dict, path: str | Path) -> Path:
    """results.json, written atomically (a link, folder or device under that name is refused)."""
    from synthface.io import atomic_write_bytes

    return atomic_write_bytes(path, (json.dumps(results, indent=2) + "\n").encode())


__all__ = ["BENCHMARKS", "Benchmark", "get_benchmark", "headline_scores", "register_benchmark", "write_results"]
