"""The benchmark registry: protocols by name, the .bin protocol as its first member, the old import path."""

from __future__ import annotations

import pytest

from synthface.errors import InvalidInputError
from synthface.fr import benchmarks
from synthface.fr.benchmarks import bin as bin_protocol


def test_the_bin_protocol_is_registered_by_name_and_declares_its_steps():
    bench = benchmarks.get_benchmark("bin")
    assert bench is bin_protocol.BENCHMARK and list(benchmarks.BENCHMARKS)[0] == "bin"
    assert (bench.find, bench.load, bench.evaluate) == (bin_protocol.find_bins, bin_protocol.read_bin, bin_protocol.evaluate)
    assert bench.headline in {key for _, key, _ in bench.columns}
    results = {"sets": {"lfw": {"accuracy": 0.9}, "cplfw": {"accuracy": 0.7}}, "average": 0.8}
    assert benchmarks.headline_scores(bench, results) == {"lfw": 0.9, "cplfw": 0.7}


def test_unknown_and_twice_registered_protocols_are_refused():
    with pytest.raises(InvalidInputError, match="Unknown benchmark protocol 'nosuch'; choose from bin"):
        benchmarks.get_benchmark("nosuch")
    with pytest.raises(InvalidInputError, match="registered already"):
        benchmarks.register_benchmark(bin_protocol.BENCHMARK)


def test_the_old_verification_module_still_gives_the_protocol():
    from synthface.fr import verification

    assert verification.read_bin is bin_protocol.read_bin
    assert verification.load_recognizer is benchmarks.load_recognizer
    assert verification.write_results is benchmarks.write_results
