"""The data files of four reference runs, as digests: the record that a refactor changed no output byte.

`tests/data/run_digests.json` holds the digests recorded before the redesign of the package layout
(issue 23); `tests/test_byte_identity.py` reruns the four runs and compares. The runs cover every
data path a redesign moves: the smoke recipe on the tiny Arc2Face and on vec2face-tiny (every export
format), a filtered run on real photos judged by dlib, and a run whose collision is resampled.
Regenerate only when an output is *meant* to change: `python -m tests.run_digests --write`.

The random-weight models' float kernels differ between CPUs (AVX2 vs AVX-512 GEMMs round differently),
so the two smoke runs can give other bytes on another machine with the very same code.
`tests/data/run_digests_variants.json` holds, per run, the digests other machines give, each made from a
commit whose outputs are known right (the landed main) and checked equal at the new code: a run passes
when it reproduces the record or one of its variants. Add one with `python -m tests.run_digests
--add-variant "PLATFORM"` run at such a commit, never to make a changed output pass.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

DIGESTS = Path(__file__).parent / "data" / "run_digests.json"
VARIANTS = Path(__file__).parent / "data" / "run_digests_variants.json"
# What records the command line, the folder's name or timings rather than data.
NOT_DATA = {"run.log", "run.lock", "run.json", "finalize.done", "README.md", "report.json", "report.html"}


def file_digest(path: Path) -> str:
    """sha256 of the file's bytes; a Parquet file by its table's contents (its footer names the writer)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        return "table:" + hashlib.sha256(repr((table.schema.names, table.to_pylist())).encode()).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def data_digests(root: Path) -> dict[str, str]:
    """Every data file under a finished run folder (not logs, markers, the card, the report or stage records)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or path.name in NOT_DATA or path.name.endswith(".done"):
            continue
        if "rank" in path.name or path.name.startswith("stages."):
            continue
        out[str(rel)] = file_digest(path)
    return out


def run_smoke(out: Path, model: str) -> Path:
    from synthface import engine
    from synthface.recipe import load_recipe

    engine.run(load_recipe("smoke", [f"generation.model='{model}'"]), out)
    return out


def _photo_recipe(policy: str):
    from tests.helpers.engine import photo_recipe

    return photo_recipe(collision_policy=policy)


def run_photos(out: Path, policy: str) -> Path:
    from tests.helpers.engine import run_photos as run

    run(_photo_recipe(policy), out)
    return out


RUNS = {
    "smoke-tiny": lambda out: run_smoke(out, "tiny"),
    "smoke-vec2face-tiny": lambda out: run_smoke(out, "vec2face-tiny"),
    "photos-dlib-filtered": lambda out: run_photos(out, "drop"),
    "photos-collision-resampled": lambda out: run_photos(out, "resample"),
}


def compute(name: str, workdir: Path) -> dict[str, str]:
    return data_digests(RUNS[name](workdir / name))


def accepted(name: str) -> list[dict[str, str]]:
    """The digests run `name` may give: the record, then each machine's variant."""
    variants = json.loads(VARIANTS.read_text()) if VARIANTS.is_file() else {}
    return [json.loads(DIGESTS.read_text())[name], *(v["digests"] for v in variants.get(name, []))]


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--add-variant":
        variants = json.loads(VARIANTS.read_text()) if VARIANTS.is_file() else {}
        with tempfile.TemporaryDirectory() as tmp:
            for name in RUNS:
                now = compute(name, Path(tmp))
                if now not in accepted(name):
                    variants.setdefault(name, []).append({"platform": argv[1], "digests": now})
        VARIANTS.write_text(json.dumps(variants, indent=1, sort_keys=True) + "\n")
        print(f"wrote {VARIANTS}")
        return 0
    if argv != ["--write"]:
        print("usage: python -m tests.run_digests --write | --add-variant PLATFORM", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        digests = {name: compute(name, Path(tmp)) for name in RUNS}
    DIGESTS.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    print(f"wrote {DIGESTS} ({sum(map(len, digests.values()))} files in {len(digests)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
