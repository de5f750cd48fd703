"""The HTML report in a real browser: headless Chromium renders it and a screenshot shows the plots."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from synthface.report import write_report
from tests.helpers.report import write_run

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--hide-scrollbars",
)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)")
def test_report_html_renders_its_plots_in_chromium(tmp_path):
    root, reference = _random_run(tmp_path)
    _, html_path, _ = write_report(root, reference=reference)
    shot = tmp_path / "report.png"
    subprocess.run(
        [str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,5200",
         f"--screenshot={shot}", html_path.as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    if os.environ.get("SYNTHFACE_TEST_ARTIFACTS"):  # keep the screenshot for a person to look at
        dest = Path(os.environ["SYNTHFACE_TEST_ARTIFACTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, dest / "report_screenshot.png")

    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (5200, 1200)

    def share(rgb, tol=40):
        return float((np.abs(img - np.array(rgb)).sum(axis=2) < tol).mean())

    # each plot's own colour is on screen: drop-reason bars, genuine/impostor histograms, spread
    # histogram, and the contact sheet's first identity; a blank or broken page has none of them
    assert share((0xC4, 0x4E, 0x52)) > 1e-4  # drop reasons (red)
    assert share((135, 203, 164), 30) > 1e-4  # genuine histogram (green at alpha 0.6)
    assert share((148, 170, 208), 30) > 1e-4  # impostor histogram (blue at alpha 0.6)
    assert share((0x81, 0x72, 0xB2)) > 1e-4  # spread histogram (purple)
    assert share((200, 60, 60), 10) > 5e-4  # contact sheet tile of identity 0
    assert (img.sum(axis=2) < 600).mean() > 0.05  # a good part of the page is drawn, not white


def _random_run(tmp_path: Path, n: int = 60, k: int = 8, dim: int = 32):
    """A run whose plots are well filled: n identities x k images, some dropped, images for a few."""
    from PIL import Image

    rng = np.random.default_rng(0)
    ids = rng.standard_normal((n, dim)).astype(np.float32)
    labels = np.repeat(np.arange(n), k)
    emb = ids[labels] / np.sqrt(dim) * 3 + rng.standard_normal((n * k, dim)).astype(np.float32) / np.sqrt(dim)
    kept = rng.random(n * k) > 0.15
    reasons = np.where(kept, "", rng.choice(["no_face", "low_similarity", "near_duplicate"], n * k))
    emb[reasons == "no_face"] = np.nan
    root = tmp_path / "run"
    (root / "images").mkdir(parents=True)
    paths = []
    for i, lab in enumerate(labels):
        if lab < 8:
            colour = (200, 60, 60) if lab == 0 else tuple(int(c) for c in rng.integers(0, 255, 3))
            Image.new("RGB", (32, 32), colour).save(root / "images" / f"{i:05d}.png")
            paths.append(f"images/{i:05d}.png")
        else:
            paths.append("")
    pose = rng.normal(0, 15, size=(n * k, 3))
    write_run(root, labels, emb, kept, reasons, ids=ids, pose=pose, paths=paths)
    reference = tmp_path / "real.npy"
    np.save(reference, np.concatenate([ids[:3], rng.standard_normal((20, dim)).astype(np.float32)]))
    return root, reference
