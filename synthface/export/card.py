"""The dataset card `README.md`: a YAML header the Hugging Face Hub reads, then what the data is,
which models made it under which licences, the counts, the command and the recipe.

Facts (all optional): name, description, generator, analyzer, models (list of {name, role, licence,
restricted}), stats (dict of counts; `images_kept`, `identities_kept` are shown first), command,
recipe_toml, formats.
"""

from __future__ import annotations

import json
from pathlib import Path

from synthface.io import atomic_write_bytes

NON_COMMERCIAL = "non-commercial research only"

# Lower-case name fragment -> (licence statement, restricts use); the first match wins.
MODEL_LICENCES: tuple[tuple[str, str, bool], ...] = (
    ("arc2face", (f"Arc2Face weights: {NON_COMMERCIAL} (they build on Stable Diffusion 1.5, CreativeML "
                  "OpenRAIL-M, and on insightface ArcFace features)"), True),
    ("insightface", f"insightface pretrained models: {NON_COMMERCIAL}", True),
    ("antelopev2", f"insightface pretrained models: {NON_COMMERCIAL}", True),
    ("buffalo", f"insightface pretrained models: {NON_COMMERCIAL}", True),
    ("glintr100", f"insightface pretrained models: {NON_COMMERCIAL}", True),
    ("arcface", f"ArcFace weights from insightface / Arc2Face: {NON_COMMERCIAL}", True),
    ("dlib68", "dlib 68-point landmark model (iBUG 300-W data): commercial use excluded", True),
    ("dlib", "dlib 5-point landmarks and face descriptor: public domain", False),
    ("tiny", "random weights for plumbing tests: no restriction, and no faces", False),
)
UNKNOWN = "unknown: check the model's own licence before using this data"


def licence_for(name: str) -> tuple[str, bool]:
    """(licence statement, whether it restricts use) for a model name; unknown models count as restricted."""
    low = (name or "").lower()
    for fragment, licence, restricted in MODEL_LICENCES:
        if fragment in low:
            return licence, restricted
    return UNKNOWN, True


def _models(facts: dict) -> list[dict]:
    models = [dict(m) for m in facts.get("models") or []]
    named = {m.get("name") for m in models}
    for role, key in (("generator", "generator"), ("filter / face analysis", "analyzer")):
        if facts.get(key) and facts[key] not in named:
            models.append({"name": facts[key], "role": role})
    for m in models:
        licence, restricted = licence_for(m["name"])
        m.setdefault("licence", licence)
        m.setdefault("restricted", restricted if m["licence"] == licence else "non-commercial" in m["licence"].lower())
        m.setdefault("role", "")
    return models


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                         (10_000_000, "1M<n<10M")):
        if n < limit:
            return label
    return "10M<n<100M"


def _yaml_str(value: str) -> str:
    return json.dumps(str(value))  # a JSON string is a valid YAML double-quoted scalar


def render_card(facts: dict) -> str:
    """The card as markdown text with a YAML front matter."""
    stats = dict(facts.get("stats") or {})
    models = _models(facts)
    restricted = any(m["restricted"] for m in models)
    name = facts.get("name") or "synthface dataset"
    images = int(stats.get("images_kept", 0) or 0)
    header = [
        "---",
        f"pretty_name: {_yaml_str(name)}",
        "license: other",
        f"license_name: {_yaml_str('non-commercial-research' if restricted else 'see-model-licences')}",
        "task_categories:",
        "- image-classification",
        "tags:",
        "- synthetic",
        "- face-recognition",
        "- synthface",
        "size_categories:",
        f"- {_size_category(images)}",
        "---",
    ]
    body = [f"# {name}", ""]
    if facts.get("description"):
        body += [str(facts["description"]), ""]
    body += [
        ("Synthetic, identity-conditioned face images made with synthface. The identities are sampled vectors, "
         "not real people, though a generator can still reproduce likenesses from its training data."),
        "",
    ]
    if restricted:
        body += [(f"**Licence: {NON_COMMERCIAL}, or stricter.** At least one model below restricts use (or its "
                  "licence is unknown); this data inherits the strictest of their terms."), ""]
    body += ["## Models", "", "| model | role | licence |", "| --- | --- | --- |"]
    body += [f"| {m['name']} | {m['role']} | {m['licence']} |" for m in models] or ["| (none recorded) | | |"]
    body += ["", "## Counts", ""]
    first = [k for k in ("identities_kept", "images_kept", "identities_requested", "candidates") if k in stats]
    for key in first + sorted(k for k in stats if k not in first):
        value = stats[key]
        if isinstance(value, dict):
            value = ", ".join(f"{k}: {v}" for k, v in sorted(value.items())) or "none"
        elif isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value))
        body.append(f"- {key.replace('_', ' ')}: {value}")
    if facts.get("formats"):
        body.append(f"- formats: {', '.join(facts['formats'])}")
    body += ["", "## How it was made", ""]
    if facts.get("command"):
        body += ["```bash", str(facts["command"]), "```", ""]
    if facts.get("recipe_toml"):
        body += ["Recipe:", "", "```toml", str(facts["recipe_toml"]).rstrip(), "```", ""]
    return "\n".join(header + body).rstrip() + "\n"


def write_card(path: str | Path, facts: dict) -> Path:
    """Render and write the card atomically."""
    return atomic_write_bytes(path, render_card(facts).encode())
