"""No output byte changed: four reference runs reproduce the data files recorded before the redesign.

The record is `tests/data/run_digests.json` (see tests/run_digests.py for what it covers and when it
may be regenerated). A difference names the run and the files that changed.
"""

from __future__ import annotations

import json

import pytest

from tests.run_digests import DIGESTS, RUNS, compute


@pytest.mark.parametrize("name", sorted(RUNS))
def test_reference_run_reproduces_its_recorded_files(name, tmp_path, one_thread):
    recorded = json.loads(DIGESTS.read_text())[name]
    now = compute(name, tmp_path)
    assert sorted(now) == sorted(recorded), f"{name}: other files ({set(now) ^ set(recorded)})"
    changed = sorted(path for path in now if now[path] != recorded[path])
    assert not changed, f"{name}: {len(changed)} files changed bytes: {changed[:8]}"
