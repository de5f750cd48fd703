"""The dataset card `README.md`: a YAML header the Hugging Face Hub reads, then what the data is,
which models made it under which licences, the counts, the command and the recipe.

Facts (all optional): name, description, models (list of {name, role, licence, restricted}: what
actually ran, the analyser with its options; a model without a licence counts as unknown and
restricted), stats (dict of counts; `images_kept`, `identities_kept` are shown first), command,
recipe_toml, formats, attributes (with filtering.attributes: identities_by_gender, images_by_gender,
identities_by_age, median_age, median_age_range; the models with role "apparent ..." measured them).
Licences are never guessed from a model's name.
"""

from __future__ import annotations

import json
from pathlib import Path

from synthface.io import atomic_write_bytes


def _models(facts: dict) -> list[dict]:
    """The models that made the data, as given: each says its own licence and whether it restricts use
    (the engine takes them from the analyser and from synthface.weights); a model that does not is unknown,
    and so restricted."""
    from synthface.weights import UNKNOWN_LICENCE

    models = []
    for m in facts.get("models") or []:
        m = {"role": "", **m}
        if "licence" not in m:
            m["licence"], m["restricted"] = UNKNOWN_LICENCE.text, UNKNOWN_LICENCE.restricted
        m.setdefault("restricted", True)
        models.append(m)
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
    from synthface.weights import NON_COMMERCIAL

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
        body += [(f"**Licence: {NON_COMMERCIAL}, or stricter; commercial use is excluded.** At least one model "
                  "below restricts use (or its licence is unknown); this data inherits the strictest of their terms."),
                 ""]
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
    body += _who(facts.get("attributes"), models)
    body += ["", "## How it was made", ""]
    if facts.get("command"):
        body += ["```bash", str(facts["command"]), "```", ""]
    if facts.get("recipe_toml"):
        body += ["Recipe:", "", "```toml", str(facts["recipe_toml"]).rstrip(), "```", ""]
    return "\n".join(header + body).rstrip() + "\n"


def _who(attributes: dict | None, models: list[dict]) -> list[str]:
    """The measured distribution of apparent gender and age, and the models that measured it."""
    if not attributes:
        return []
    judges = [m for m in models if str(m.get("role", "")).startswith("apparent")]
    by = ", ".join(f"{m['name']} (licence: {m['licence']})" for m in judges) or "an unrecorded attribute analyser"
    lines = ["", "## Who is in the set", "",
             f"Apparent age and gender as measured by {by}: estimates from the images, not facts about anyone.", ""]
    for key, what in (("identities_by_gender", "identities by apparent gender"),
                      ("images_by_gender", "images by apparent gender"),
                      ("identities_by_age", "identities by median apparent age (years)")):
        counts = attributes.get(key) or {}
        total = sum(counts.values())
        shares = ", ".join(f"{k}: {v} ({100 * v / total:.0f} %)" for k, v in counts.items()) if total else "none"
        lines.append(f"- {what}: {shares}")
    if attributes.get("median_age") is not None:
        lo, hi = attributes["median_age_range"]
        lines.append(f"- median apparent age over identities: {attributes['median_age']:.1f} years "
                     f"(identities from {lo:.1f} to {hi:.1f})")
    return lines


def write_card(path: str | Path, facts: dict) -> Path:
    """Render and write the card atomically."""
    return atomic_write_bytes(path, render_card(facts).encode())
