"""What `synthface demo` says at start (issue #22, class 12): which weights are missing and the
command that fetches each, on the console and on the page; only models found locally (and the
random-weight test models) are offered; a model asked for by name without its weights is refused;
a Vec2Face model's page hides the Arc2Face-only controls and banners; without Gradio the command
names the [demo] extra. The page is built but never served here (launch_demo is replaced)."""

from __future__ import annotations

import os
import sys

import pytest

from synthface import demo as demo_lib
from synthface import weights
from synthface.errors import ModelNotFoundError
from tests.cli_helpers import assert_clean_refusal, run_cli_inprocess

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
TINY = ["tiny", "idiff-tiny", "vec2face-tiny", "vec2face-plus-tiny"]


@pytest.fixture
def installed(monkeypatch, tmp_path):
    """weights.find over a set of installed registry names (empty: a fresh machine)."""
    names: set[str] = set()

    def find(name, path=None, allow_download=False):
        if name not in names:
            raise ModelNotFoundError(f"Model {name} was not found. Fetch it with: synthface models download {name}")
        return tmp_path / name

    monkeypatch.setattr(weights, "find", find)
    return names


@pytest.fixture
def launched(monkeypatch):
    """Replace the server start: record the page the command built."""
    pytest.importorskip("gradio")
    from synthface import demo_page

    seen = {}
    monkeypatch.setattr(demo_page, "launch_demo", lambda page, **kwargs: seen.update(page=page, **kwargs))
    yield seen
    if "page" in seen:
        demo_page.close_demo(seen["page"])


def _props(page) -> dict[str, dict]:
    """Each component's properties by label (or elem_id)."""
    return {c["props"].get("label") or c["props"].get("elem_id"): c["props"] for c in page.config["components"]}


def test_demo_on_a_fresh_machine_says_which_weights_are_missing_and_offers_the_test_models(installed, launched, capsys):
    result = run_cli_inprocess(capsys, "demo")
    assert result.returncode == 0, result.output
    said = " ".join(result.stdout.split())
    assert "Weights not installed" in said and "Starting the demo on tiny" in said
    for command in ("synthface models download arc2face", "synthface models download sd15",
                    "synthface models download arc2face-arcface", "synthface models download vec2face",
                    "synthface models download vec2face-arcface"):
        assert command in said, command
    props = _props(launched["page"])
    assert [c[0] for c in props["Model"]["choices"]] == TINY and props["Model"]["value"] == "tiny"
    notice = props["missing-weights"]["value"]
    assert "Weights not installed" in notice and "synthface models download arc2face;" in notice
    assert "synthface models download vec2face-plus-pose" in notice


def test_installed_weights_are_offered_and_the_demo_starts_on_them(installed, launched, capsys):
    installed.update({"vec2face", "vec2face-arcface"})
    assert demo_lib.installed_models() == ["vec2face", *TINY] and demo_lib.default_model() == "vec2face"
    assert demo_lib.missing_weights("vec2face-plus") == ["vec2face-plus"]  # the recogniser is there
    installed.add("arc2face-arcface")
    assert demo_lib.missing_weights("arc2face") == ["arc2face", "sd15"]
    installed.update({"arc2face", "sd15", "dlib"})
    assert demo_lib.installed_models("vec2face") == ["vec2face", "arc2face", *TINY]
    assert demo_lib.default_model() == "arc2face"
    assert [line.split()[0] for line in demo_lib.weights_notice("arc2face")] == [
        "idiff-uiface-casia", "idiff-ffhq-cpd25", "idiff-ffhq-cpd50", "negfacediff-casia-cpd25", "vec2face-plus",
        "vec2face-plus-pose"]
    assert "antelopev2" in " ".join(demo_lib.weights_notice("arc2face", "insightface"))


def test_a_model_asked_for_by_name_without_its_weights_is_refused_with_the_way_on(installed, launched, capsys):
    result = run_cli_inprocess(capsys, "demo", "--model", "vec2face")
    assert_clean_refusal(result, 6, "vec2face model needs weights that are not found locally",
                         "synthface models download vec2face;", "synthface models download vec2face-arcface",
                         "synthface demo --model tiny")
    assert "page" not in launched


def test_a_vec2face_page_hides_the_arc2face_only_settings_and_banners(installed):
    pytest.importorskip("gradio")
    from synthface import demo_page

    pages = {m: demo_page.build_demo(m, "dlib") for m in ("tiny", "vec2face-tiny")}
    try:
        arc, vec = _props(pages["tiny"]), _props(pages["vec2face-tiny"])
        for control in ("Steps", "Guidance", "LCM (2-4 steps)"):
            assert arc[control]["visible"] is True and vec[control]["visible"] is False, control
        assert "real Arc2Face model" in arc["standin-note"]["value"]
        assert "real Vec2Face model" in vec["standin-note"]["value"] and "Arc2Face model" not in vec["standin-note"]["value"]
        assert "synthface models download vec2face-arcface" in vec["standin-note"]["value"]
        # choosing the other model on the page switches the controls and the banner with it
        (switch,) = [f.fn for f in pages["tiny"].fns.values() if getattr(f.fn, "__name__", "") == "switch_model"]
        steps, guidance, lcm, banner = switch("vec2face-tiny")
        assert (steps.visible, guidance.visible, lcm.visible) == (False, False, False)
        assert "real Vec2Face model" in banner.value
        steps, _, lcm, banner = switch("tiny")
        assert steps.visible and lcm.visible and "real Arc2Face model" in banner.value
    finally:
        for page in pages.values():
            demo_page.close_demo(page)


def test_demo_without_gradio_names_the_extra_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now fails, as without the [demo] extra
    result = run_cli_inprocess(capsys, "demo", "--model", "tiny")
    assert_clean_refusal(result, 2, "needs gradio", 'pip install -e ".[demo]"', 'pip install "synthface[demo]"')

