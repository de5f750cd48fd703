"""The self-contained HTML report: tables and matplotlib (Agg) plots embedded as base64 PNG."""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from synthface.report.run import Run
from synthface.report.sections import skipped_lines

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em} h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
img.plot{max-width:100%;border:1px solid #eee} .note{color:#666;font-size:.9em}
.skipped{background:#fff6e0;border:1px solid #e6c200;padding:.4em .8em;margin:.6em 0}
"""


def render_html(report, run: Run, *, sheet_identities: int = 8, sheet_images: int = 6) -> str:
    """One HTML page with every section of `report` (a `Report`) and a contact sheet from `run`."""
    d, a = report.data, report.arrays
    parts = [f"<h1>synthface dataset report: {_e(d['run'])}</h1>"]
    skipped = d.get("skipped", {})
    if skipped:
        parts.append('<div class="skipped" id="skipped"><b>Not everything could be measured.</b><ul>'
                     + "".join(f"<li>{_e(line[0].upper() + line[1:])}</li>" for line in skipped_lines(skipped))
                     + "</ul>Everything else below was measured.</div>")

    c = d["counts"]
    parts.append("<h2>Counts</h2>")
    parts.append(_table([
        ("candidates", c["candidates"]), ("kept", c["kept"]), ("dropped", c["dropped"]),
        ("identities generated", c["identities_generated"]), ("identities with images", c["identities_with_images"]),
        ("identities in bank", c["identities_in_bank"]),
        ("images per identity (mean)", _f(c["images_per_identity"]["mean"])),
    ]))
    parts.append(_table([(k, v) for k, v in c["drop_reasons"].items()], head=("drop reason", "images")))
    parts.append(_img(_bar_plot(c["drop_reasons"]), "drop reasons"))

    b = d.get("identity_bank")
    parts.append("<h2>Identity bank (nearest-neighbour cosine of each identity)</h2>")
    if b:
        parts.append(_table([
            ("identities", b["count"]), ("dimension", b["dim"]), ("max cos (closest pair)", _f(b["max_cos"])),
            ("mean nearest cos", _f(b["nearest_cos"]["mean"])), ("5th / 95th percentile", f"{_f(b['nearest_cos']['p05'])} / {_f(b['nearest_cos']['p95'])}"),
            ("source", "recorded when the bank was sampled" if b["source"] == "recorded" else "computed for this report"),
        ]))
        parts.append(_img(_hist_plot(a["bank_nearest"], "cosine of each identity to its nearest neighbour in the bank",
                                     color="#dd8452"), "identity bank separation"))
    else:
        parts.append(_skipped(skipped, "identity_bank"))

    v = d["verification"]
    parts.append(f"<h2>{SECTION_TITLES['verification']}</h2>")
    if v:
        rows = [("EER", _f(v["eer"])), ("EER threshold", _f(v["eer_threshold"]))]
        for far, r in v["tar_at_far"].items():
            rows.append((f"TAR @ FAR {far}", f"{_f(r['tar'])} (t = {_f(r['threshold'])}{'' if r['reliable'] else ', few impostor pairs'})"))
        rows += [
            ("genuine pairs", f"{v['genuine_pairs']} of {v['genuine_pairs_total']}{'' if v['genuine_exact'] else ' (sampled)'}"),
            ("impostor pairs", f"{v['impostor_pairs']}{'' if v['impostor_exact'] else ' (among sampled images)'}"),
        ]
        parts.append(_table(rows))
        parts.append(_img(_score_plot(a["genuine"], a["impostor"], v["eer_threshold"]), "genuine and impostor cosine histograms"))
    else:
        parts.append(_skipped(skipped, "verification"))

    parts.append(f"<h2>{SECTION_TITLES['unique_identities']}</h2>")
    if d["unique_identities"] is not None:
        parts.append(_table([(f"cos {t}", f"{cur['final']} of {c['identities_generated']}") for t, cur in d["unique_identities"].items()], head=("threshold", "unique")))
        parts.append(_img(_unique_plot(d["unique_identities"]), "unique identities vs generated"))
    else:
        parts.append(_skipped(skipped, "unique_identities"))

    s = d["intra_class"]
    parts.append(f"<h2>{SECTION_TITLES['intra_class']}</h2>")
    if s:
        parts.append(_table(
            [("mean cos to centre", _f(s["cos_to_centre"]["mean"])), ("5th percentile", _f(s["cos_to_centre"]["p05"]))]
            + [(f"share with cos >= {t}", _f(x)) for t, x in s["share_within"].items()]
        ))
        parts.append(_img(_hist_plot(a["cos_to_centre"], "cosine of each image to its identity centre"), "intra-class spread"))
    else:
        parts.append(_skipped(skipped, "intra_class"))

    if "pose" in skipped:
        parts.append(f"<h2>{SECTION_TITLES['pose']}</h2>")
        parts.append(_skipped(skipped, "pose"))
    if d["pose"]:
        parts.append("<h2>Pose</h2>")
        parts.append(_table([(k, _f(p["mean"]), _f(p["std"]), _f(p["p05"]), _f(p["p95"])) for k, p in d["pose"].items()], head=("angle", "mean", "std", "p05", "p95")))
        parts.append(_img(_pose_plot(d["pose"]), "pose distribution"))

    if d.get("who"):
        parts.extend(_who_section(d["who"]))

    parts.append("<h2>Sample identities</h2>")
    sheet = contact_sheet(run, identities=sheet_identities, images=sheet_images)
    parts.append(_img(sheet, "contact sheet") if sheet else '<p class="note">No image files in this run folder (embeddings only).</p>')

    if "leakage" in skipped:
        parts.append(f"<h2>{SECTION_TITLES['leakage']}</h2>")
        parts.append(_skipped(skipped, "leakage"))
    if d["leakage"]:
        lk = d["leakage"]
        parts.append(f"<h2>{SECTION_TITLES['leakage']}</h2>")
        parts.append(_table([
            ("reference identities", lk["reference_identities"]), ("max best-match cos", _f(lk["max_cos"])),
            (f"flagged (cos > {lk['threshold']})", lk["flagged_count"]),
        ]))
        parts.append(_img(_hist_plot(a["leak_best_cos"], "best cosine to a real identity centre", line=lk["threshold"]), "leakage"))
        if lk["flagged"]:
            parts.append(_table([(f["identity"], f["reference"], _f(f["cos"])) for f in lk["flagged"][:200]], head=("identity", "real identity", "cos")))
    if d.get("recognisers"):
        parts.extend(_recogniser_tables(d["recognisers"]))
    parts.append(f'<p class="note">Timings (s): {_e(", ".join(f"{k} {x}" for k, x in d["seconds"].items()))}</p>')
    body = "\n".join(parts)
    return f'<!doctype html>\n<html><head><meta charset="utf-8"><title>synthface report</title><style>{_CSS}</style></head><body>\n{body}\n</body></html>\n'


def _recogniser_tables(trained: dict) -> list[str]:
    """The five .bin sets and their average per trained recogniser; then, when any has benchmark sections
    (IJB-B/C, TinyFace, RFW, ...), each section's numbers beside the five-set average."""
    parts = []
    five = {n: fr for n, fr in trained.items() if fr.get("average") is not None}
    if five:
        parts.append("<h2>Recognisers trained on this set (verification accuracy, %)</h2>")
        names = sorted({k for fr in five.values() for k in fr["sets"]})
        parts.append(_table(
            [(f"fr/{n}", *(f"{100 * fr['sets'][k]:.2f}" if k in fr["sets"] else "-" for k in names), f"{100 * fr['average']:.2f}")
             for n, fr in five.items()],
            head=("run", *names, "average"),
        ))
    from synthface.report.recognisers import SECTION_FIELDS

    columns = list(dict.fromkeys((b, label) for fr in trained.values() for b, shown in fr.get("benchmarks", {}).items()
                                 for label in shown))
    known = list(SECTION_FIELDS)  # the known protocols in their order, then the others as they come
    columns.sort(key=lambda c: known.index(c[0]) if c[0] in known else len(known))
    if columns:
        parts.append("<h2>Recognisers trained on this set: benchmarks (%)</h2>")
        parts.append(_table(
            [(f"fr/{n}", "-" if fr.get("average") is None else f"{100 * fr['average']:.2f}",
              *(f"{100 * fr['benchmarks'][b][label]:.2f}" if label in fr.get("benchmarks", {}).get(b, {}) else "-"
                for b, label in columns))
             for n, fr in trained.items() if fr.get("benchmarks")],
            head=("run", "five-set average", *(f"{b} {label}" for b, label in columns)),
        ))
    return parts


def _who_section(w: dict) -> list[str]:
    """Who is in the set: gender and age over identities and images, consistency, verification per group."""
    ids, ims, con = w["identities"], w["images"], w["consistency"]
    parts = [f"<h2>{SECTION_TITLES['who']}</h2>",
             _table([(g, ids["gender"][g], ims["gender"][g]) for g in ids["gender"]], head=("gender", "identities",
                                                                                         "images")),
             _table([("median age of identities (median)", _f(ids["median_age"]["median"])),
                     ("age of images (median)", _f(ims["age"]["median"])),
                     ("gender agreement per identity (mean / min)",
                      f"{_f(con['gender_agreement']['mean'])} / {_f(con['gender_agreement']['min'])}"),
                     ("age spread (IQR, years) per identity (mean / max)",
                      f"{_f(con['age_spread']['mean'])} / {_f(con['age_spread']['max'])}")]),
             _table([(name, n) for name, n in ids["age_groups"].items()], head=("median age", "identities")),
             _img(_who_plot(ids, ims), "apparent age and gender histograms")]
    groups = w.get("verification_by_group")
    if groups:
        fars = next(iter(next(iter(groups.values())).values()))["tar_at_far"]
        parts.append(_table(
            [(f"{marginal} {name}", r["identities"], _f(r["eer"]), *(_f(r["tar_at_far"][far]) for far in fars))
             for marginal, by in groups.items() for name, r in by.items()],
            head=("group", "identities", "EER", *(f"TAR @ FAR {far}" for far in fars)),
        ))
    if con["least_consistent"]:
        parts.append(_table([(r["identity"], r["images"], r["gender"], _f(r["agreement"]), _f(r["median_age"]),
                              _f(r["age_spread"])) for r in con["least_consistent"]],
                            head=("identity", "images", "gender", "agreement", "median age", "age spread")))
    return parts


def _who_plot(identities: dict, images: dict) -> bytes:
    """Left: the apparent-age histograms (identities by median age, images); right: gender shares."""
    plt, fig = _figure()
    ages, genders = fig.add_subplot(1, 3, (1, 2)), fig.add_subplot(1, 3, 3)
    edges = np.asarray(identities["age_histogram"]["edges"])
    for name, hist in (("identities (median age)", identities["age_histogram"]), ("images", images["age_histogram"])):
        counts = np.asarray(hist["counts"], dtype=np.float64)
        ages.step(edges[:-1], counts / max(counts.sum(), 1), where="post", label=name)
    ages.set_xlabel("apparent age (years)")
    ages.set_ylabel("share")
    ages.legend()
    names = list(identities["gender"])
    x = np.arange(len(names))
    for k, (name, counts) in enumerate((("identities", identities["gender"]), ("images", images["gender"]))):
        values = np.asarray([counts[g] for g in names], dtype=np.float64)
        genders.bar(x + (k - 0.5) * 0.4, values / max(values.sum(), 1), width=0.4, label=name)
    genders.set_xticks(x, names)
    genders.set_ylabel("share")
    genders.legend(fontsize="small")
    return _png(plt, fig)


SECTION_TITLES = {
    "identity_bank": "Identity bank",
    "verification": "Genuine and impostor scores",
    "unique_identities": "Unique identities (greedy packing of class centres)",
    "intra_class": "Intra-class spread",
    "pose": "Pose",
    "leakage": "Leakage against real identities",
    "who": "Who is in the set (apparent age and gender)",
}


def _skipped(skipped: dict, key: str) -> str:
    return f'<p class="note skipped">Skipped: {_e(skipped.get(key, "not measured"))}.</p>'


def contact_sheet(run: Run, *, identities: int = 8, images: int = 6, size: int = 112) -> bytes | None:
    """PNG of a grid: one row per sampled identity (evenly spread), its first kept images."""
    paths = run.columns.get("path")
    if paths is None:
        return None
    from PIL import Image

    has = np.array([bool(p) for p in paths]) & run.kept
    labels = np.unique(run.identity[has])
    if not labels.size:
        return None
    chosen = labels[np.linspace(0, labels.size - 1, num=min(identities, labels.size)).round().astype(int)]
    sheet = Image.new("RGB", (images * size, chosen.size * size), "white")
    placed = 0
    for row, label in enumerate(chosen):
        for col, idx in enumerate(np.flatnonzero(has & (run.identity == label))[:images]):
            file = run.root / str(paths[idx])
            try:
                with Image.open(file) as im:
                    sheet.paste(im.convert("RGB").resize((size, size)), (col * size, row * size))
                placed += 1
            except (OSError, ValueError):
                continue
    if not placed:
        return None
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- plots


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(7, 3.2), dpi=100)


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _bar_plot(reasons: dict) -> bytes:
    plt, fig = _figure()
    ax = fig.add_subplot()
    ax.bar(list(reasons), list(reasons.values()), color="#c44e52")
    ax.set_ylabel("images")
    ax.set_title("drop reasons")
    return _png(plt, fig)


def _score_plot(genuine, impostor, threshold) -> bytes:
    plt, fig = _figure()
    ax = fig.add_subplot()
    bins = np.linspace(-1, 1, 101)
    if len(impostor):
        ax.hist(impostor, bins=bins, density=True, alpha=0.6, label=f"impostor ({len(impostor)})", color="#4c72b0")
    if len(genuine):
        ax.hist(genuine, bins=bins, density=True, alpha=0.6, label=f"genuine ({len(genuine)})", color="#55a868")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label="EER threshold")
    ax.set_xlabel("cosine")
    ax.set_ylabel("density")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return _png(plt, fig)


def _unique_plot(curves: dict) -> bytes:
    plt, fig = _figure()
    ax = fig.add_subplot()
    top = 1
    for t, cur in curves.items():
        ax.plot(cur["generated"], cur["unique"], marker="o", ms=3, label=f"cos {t}")
        top = max([top, *cur["generated"]])
    ax.plot([0, top], [0, top], color="#999", ls=":", lw=1, label="all unique")
    ax.set_xlabel("identities generated")
    ax.set_ylabel("unique identities")
    ax.legend()
    return _png(plt, fig)


def _hist_plot(values, xlabel: str, line: float | None = None, color: str = "#8172b2") -> bytes:
    plt, fig = _figure()
    ax = fig.add_subplot()
    ax.hist(values, bins=np.linspace(-1, 1, 101), color=color)
    if line is not None:
        ax.axvline(line, color="#c44e52", ls="--", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    return _png(plt, fig)


def _pose_plot(pose: dict) -> bytes:
    plt, fig = _figure()
    ax = fig.add_subplot()
    for name, p in pose.items():
        edges = np.asarray(p["histogram"]["edges"])
        ax.step(edges[:-1], p["histogram"]["counts"], where="post", label=name)
    ax.set_xlabel("degrees")
    ax.set_ylabel("images")
    ax.legend()
    return _png(plt, fig)


# --------------------------------------------------------------------------- html bits


def _img(png: bytes, alt: str) -> str:
    return f'<img class="plot" alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(rows, head=None) -> str:
    out = ["<table>"]
    if head:
        out.append("<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{_e(x)}</td>" for x in row) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _f(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def _e(x) -> str:
    return html.escape(str(x))

