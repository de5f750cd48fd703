"""Evaluation protocols for trained recognisers: one module per protocol, registered here by name.

    from synthface.fr.benchmarks import get_benchmark
    bench = get_benchmark("bin")                       # insightface's .bin sets, 10-fold
    results = bench.evaluate(load_recognizer(model), bench.find(folder))

A new protocol is a new module declaring a `Benchmark` (see registry.py), its import and one register
call below (one line each, in the order `synthface eval` lists them).
"""

from __future__ import annotations

from synthface.fr.benchmarks import bin, ijb, rfw, tinyface
from synthface.fr.benchmarks.recognizers import Recognizer, load_recognizer, torch_recognizer
from synthface.fr.benchmarks.registry import (
    BENCHMARKS,
    Benchmark,
    column_rows,
    get_benchmark,
    headline_scores,
    protocols_help,
    register_benchmark,
    write_results,
)

register_benchmark(bin.BENCHMARK)
register_benchmark(ijb.IJBC)
register_benchmark(ijb.IJBB)
register_benchmark(tinyface.BENCHMARK)
register_benchmark(rfw.BENCHMARK)

__all__ = [
    "BENCHMARKS", "Benchmark", "Recognizer", "column_rows", "get_benchmark", "headline_scores", "load_recognizer",
    "protocols_help", "register_benchmark", "torch_recognizer", "write_results",
]
