"""No output byte changed: four reference runs reproduce the data files recorded before the redesign.

The record is `tests/data/run_digests.json` (see tests/run_digests.py for what it covers and when it
may be regenerated). A difference names the run and the files that changed.
"""

from __future__ import annotations

import json

import pytest

from tests.run_digests import DIGESTS, RUNS, accepted, compute


@pytest.mark.parametrize("name", sorted(RUNS))
def test_reference_run_reproduces_its_recorded_files(name, tmp_path, one_thread):
    now = compute(name, tmp_path)
    if now in accepted(name)[1:]:
        return  # this machine's float kernels give one of the recorded variants (tests/run_digests.py)
    recorded = json.loads(DIGESTS.read_text())[name]
    assert sorted(now) == sorted(recorded), f"{name}: other files ({set(now) ^ set(recorded)})"
    changed = sorted(path for path in now if now[path] != recorded[path])
    assert not changed, f"{name}: {len(changed)} files changed bytes: {changed[:8]}"


# The shipped recipes' fingerprints as recorded before the redesign: a run folder stores its recipe's
# fingerprint, and a resume with another one is refused, so these must never change.
SHIPPED_FINGERPRINTS = {
    "hsface10k": "ef4d5d06de876407", "hsface10k-vec2face": "882fc485c118405e", "quickstart": "3903191dc9cdca53",
    "scale-1m": "8c6a9249268efbce", "smoke": "9510f151679a89ce", "vec2face-plus-pose": "8ddfb52c9b0bb7c9",
}


def test_shipped_recipe_fingerprints_are_unchanged_so_old_runs_resume():
    from synthface.recipe import load_recipe, shipped_recipes

    now = {r.name: load_recipe(r.path).fingerprint() for r in shipped_recipes()}
    assert {name: now[name] for name in SHIPPED_FINGERPRINTS} == SHIPPED_FINGERPRINTS
