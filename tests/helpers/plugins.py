"""Install the example plug-in family (tests/helpers/plugin_family) for one test, as pip would: its
package on sys.path and a `.dist-info` whose entry_points.txt names it in "synthface.generators"."""

from __future__ import annotations

import shutil
from pathlib import Path

PLUGIN_SOURCE = Path(__file__).parent / "plugin_family"
DISTRIBUTION = "synthface-disc"


def install_plugin(site: Path, monkeypatch, *, entry: str = "disc = synthface_disc:DiscFamily",
                   distribution: str = DISTRIBUTION) -> Path:
    """Put the plug-in's package and metadata in `site`, on sys.path (for subprocesses too), and make
    the registry look for plug-ins again on its next look-up (the built-in families stay)."""
    from synthface.generators import registry

    site.mkdir(parents=True, exist_ok=True)
    if not (site / "synthface_disc").exists():
        shutil.copytree(PLUGIN_SOURCE / "synthface_disc", site / "synthface_disc")
    info = site / f"{distribution.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(f"[synthface.generators]\n{entry}\n")
    registry.families()  # the built-in families, registered before the copy below
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setattr(registry, "_plugin_error", None)
    monkeypatch.syspath_prepend(str(site))
    import importlib

    importlib.invalidate_caches()
    return site


def uninstall_plugin(monkeypatch) -> None:
    """After `install_plugin`: the registry looks again once the monkeypatch is undone."""
    from synthface.generators import registry

    monkeypatch.setattr(registry, "_plugins_loaded", False)
