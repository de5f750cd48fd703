"""The recipes ship inside the package: a wheel holds pipelines/ byte for byte, and after a plain
install `synthface run NAME`, `synthface recipes` and `synthface recipes show NAME` work from any
folder (no clone of the repository needed)."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.cli_helpers import assert_clean_refusal, run_cli_inprocess

REPO = Path(__file__).resolve().parents[1]
PIPELINES = REPO / "pipelines"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from this checkout, the way `pip install .` or a release would build it."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    (built,) = out.glob("synthface-*.whl")
    return built


def test_every_recipe_is_in_the_wheel_byte_for_byte(wheel):
    recipes = sorted(PIPELINES.glob("*.toml"))
    assert recipes, "pipelines/ holds the recipes"
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if name.startswith("synthface/recipes/")}
        assert shipped == {f"synthface/recipes/{p.name}" for p in recipes}
        for path in recipes:
            assert archive.read(f"synthface/recipes/{path.name}") == path.read_bytes(), path.name


def test_installed_wheel_runs_a_recipe_by_name_from_an_empty_folder(wheel, tmp_path):
    # A fresh environment that sees this one's dependencies but not its editable synthface: the
    # dependencies' folder is added by a .pth file, and .pth files inside it (the editable
    # install's finder) are not processed for a folder added that way.
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    python = env_dir / "bin" / "python"
    target = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                 check=True, capture_output=True, text=True).stdout.strip())
    (target / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONPATH": ""}
    synthface = str(env_dir / "bin" / "synthface")

    def run(*args):
        return subprocess.run([synthface, *args], cwd=empty, env=env, capture_output=True, text=True, timeout=300)

    where = subprocess.run([str(python), "-c", "import synthface; print(synthface.__file__)"],
                           cwd=empty, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(target)), where  # the wheel's copy, not the checkout

    listing = run("recipes")
    assert listing.returncode == 0, listing.stderr
    for path in PIPELINES.glob("*.toml"):
        assert path.stem in listing.stdout

    shown = run("recipes", "show", "smoke")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == (PIPELINES / "smoke.toml").read_text(encoding="utf-8")

    made = run("run", "smoke", "--set", "identities.count=2", "--set", "variation.images_per_identity=1")
    assert made.returncode == 0, made.stderr
    run_dir = empty / "out" / "smoke"
    assert (run_dir / "finalize.done").is_file()
    assert (run_dir / "export" / "imagefolder").is_dir()


def test_a_bare_name_resolves_to_the_shipped_recipe_and_a_path_to_the_file(tmp_path, monkeypatch):
    from synthface.recipe import load_recipe, resolve_recipe, shipped_recipes

    names = [r.name for r in shipped_recipes()]
    assert names == sorted(p.stem for p in PIPELINES.glob("*.toml"))
    assert resolve_recipe("smoke").read_bytes() == (PIPELINES / "smoke.toml").read_bytes()
    assert resolve_recipe("smoke.toml").read_bytes() == (PIPELINES / "smoke.toml").read_bytes()
    # A file of that name in the working folder wins over the shipped recipe.
    monkeypatch.chdir(tmp_path)
    own = tmp_path / "smoke"
    own.write_text('name = "mine"\n')
    assert resolve_recipe("smoke") == Path("smoke")
    assert load_recipe("smoke").name == "mine"


def test_unknown_recipe_names_the_shipped_ones(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli_inprocess(capsys, "run", "smok")
    assert_clean_refusal(result, 2, "smok", "smoke", "quickstart", "synthface recipes")
    result = run_cli_inprocess(capsys, "recipes", "show", "nope")
    assert_clean_refusal(result, 2, "nope", "smoke")
    assert not any(tmp_path.iterdir())  # nothing written
