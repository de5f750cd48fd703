"""The demo in a real browser: headless Debian Chromium driven by Playwright uploads insightface's
t1.jpg, clicks Generate, waits for the captioned gallery and saves a screenshot."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api", reason="Python playwright is not installed (pip install -e '.[dev]')")
if not CHROMIUM.is_file():
    pytest.skip(
        f"{CHROMIUM} is missing: install Debian's Chromium (apt-get install -y chromium) to run the browser test",
        allow_module_level=True,
    )

from synthface import demo_page  # noqa: E402 (after the skip checks above)
from tests.helpers.faces import T1  # noqa: E402

NUM_IMAGES = 4  # the page's default


@pytest.fixture(scope="module")
def url():
    page = demo_page.build_demo("tiny", "dlib")
    _, address, _ = demo_page.launch_demo(page, prevent_thread_lock=True, quiet=True)
    yield address
    page.close()


def test_upload_generate_and_screenshot(url, tmp_path):
    shot = tmp_path / "demo.png"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url, wait_until="domcontentloaded")
            page.locator("#photos input[type=file]").set_input_files(str(T1))
            sync_api.expect(page.locator("#photos")).to_contain_text(re.compile(r"t1\s*\.jpg"), timeout=30_000)  # gradio 5 splits the name
            page.locator("#generate").click()
            gallery = page.locator("#gallery img")
            sync_api.expect(gallery).to_have_count(NUM_IMAGES, timeout=90_000)
            sync_api.expect(page.locator("#info")).to_contain_text("6 faces; the largest one was used", timeout=30_000)
            sync_api.expect(page.locator("#crops img")).to_have_count(1)
            captions = page.locator("#gallery").inner_text()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert len(re.findall(r"condition cos \d\.\d\d", captions)) == NUM_IMAGES, captions
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size[0] == 1280 and im.size[1] >= 600
        assert len(im.convert("L").getcolors(1 << 16) or range(1 << 16)) > 50  # a rendered page, not a blank one
