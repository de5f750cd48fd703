"""`synthface eval MODEL --benchmark NAME=PATH ...`: the generic path over the registry, tried with the .bin
protocol and a toy protocol registered here; results.json sections, the cache (counted recogniser calls),
the table, the progress bar's total, and the refusals before any work."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthface.errors import FileFormatError, InvalidInputError
from synthface.fr import benchmarks
from synthface.fr.backbones import iresnet
from synthface.fr.benchmarks.bin import write_bin
from synthface.fr.benchmarks.embeddings import embed
from synthface.fr.benchmarks.registry import Benchmark
from tests.cli_helpers import assert_clean_refusal, run_cli_inprocess

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 32


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"/") for p in sorted(folder.rglob("*"))}


# ----------------------------------------------------------------------------------------------- a toy protocol

def toy_find(folder: Path) -> list[Path]:
    pairs = Path(folder) / "pairs.txt"
    if not pairs.is_file():
        raise FileFormatError(f"{folder} has no pairs.txt (lines 'a.png b.png'); the toy protocol reads faces/*.png and pairs.txt.")
    return [pairs]


def toy_load(pairs: Path) -> dict:
    names = [line.split() for line in pairs.read_text().splitlines() if line.strip()]
    for n, pair in enumerate(names, 1):
        missing = [x for x in pair if not (pairs.parent / "faces" / x).is_file()]
        if missing:
            raise FileFormatError(f"{pairs} line {n} names {missing[0]}, which is not in faces/.")
    return {"root": pairs.parent, "pairs": names}


def toy_evaluate(recognizer, items, *, flip=True, cache=None, progress=None) -> dict:
    """Mean cosine of the listed pairs (each face embedded once, by file name and bytes)."""
    item = items[0]
    files = sorted({x for pair in item["pairs"] for x in pair})
    data = {f: (item["root"] / "faces" / f).read_bytes() for f in files}
    keys = [f"{f}:{hash(data[f])}" for f in files]
    crops = np.stack([np.asarray(Image.open(io.BytesIO(data[f])).convert("RGB")) for f in files])
    raw = embed(recognizer, lambda index: crops[index], keys, flip=flip, cache=cache, progress=progress)
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    at = {f: i for i, f in enumerate(files)}
    cos = [float(unit[at[a]] @ unit[at[b]]) for a, b in item["pairs"]]
    return {"mean_cos": float(np.mean(cos)), "pairs": len(cos)}


TOY = Benchmark(name="toy", description="a toy protocol", find=toy_find, load=toy_load, evaluate=toy_evaluate,
                headline="mean_cos", columns=(), rows=lambda s: [("mean cos", f"{s['mean_cos']:.4f}"), ("pairs", str(s["pairs"]))],
                expects="faces/*.png and pairs.txt")


@pytest.fixture(autouse=True)
def toy_registered():
    benchmarks.register_benchmark(TOY)
    yield
    del benchmarks.BENCHMARKS["toy"]


@pytest.fixture(scope="module")
def model_pt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = iresnet("r18", widths=(8, 8, 16, 16), num_features=16, input_size=SIZE).eval()
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save(model.state_dict(), path)
    return path


def make_data(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    (root / "bins").mkdir(parents=True)
    write_bin(root / "bins" / "lfw.bin", [png(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)) for _ in range(20)],
              [bool(i % 2) for i in range(10)])
    (root / "toy" / "faces").mkdir(parents=True)
    for k in range(4):
        (root / "toy" / "faces" / f"{k}.png").write_bytes(png(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)))
    (root / "toy" / "pairs.txt").write_text("0.png 1.png\n2.png 3.png\n0.png 3.png\n")
    return root / "bins", root / "toy"


def reference_mean_cos(model_pt: Path, toy: Path) -> float:
    """The toy measure computed here: torch forward of (x/255 - 0.5)/0.5 and of its mirror, summed, unit, cosine."""
    model = iresnet("r18", widths=(8, 8, 16, 16), num_features=16, input_size=SIZE).eval()
    model.load_state_dict(torch.load(model_pt, weights_only=True))

    def emb(name):
        x = torch.from_numpy(np.asarray(Image.open(toy / "faces" / name).convert("RGB")).copy()).permute(2, 0, 1)[None].float()
        x = (x / 255 - 0.5) / 0.5
        with torch.no_grad():
            e = (model(x) + model(torch.flip(x, dims=[3])))[0].numpy().astype(np.float64)
        return e / np.linalg.norm(e)

    pairs = [line.split() for line in (toy / "pairs.txt").read_text().splitlines()]
    return float(np.mean([emb(a) @ emb(b) for a, b in pairs]))


@pytest.fixture()
def counted(monkeypatch):
    """Every image the recogniser is asked to embed, counted (the cache's promise is fewer of these)."""
    calls: list[int] = []
    real = benchmarks.load_recognizer

    def load(*args, **kwargs):
        rec = real(*args, **kwargs)
        forward = rec.forward
        rec.forward = lambda crops: calls.append(len(crops)) or forward(crops)
        return rec

    monkeypatch.setattr(benchmarks, "load_recognizer", load)
    return calls


# ----------------------------------------------------------------------------------------------- results and cache


def test_sections_table_and_a_cache_that_pays_only_for_what_changed(tmp_path, capsys, model_pt, counted):
    bins, toy = make_data(tmp_path / "data")
    out = tmp_path / "eval" / "results.json"
    (tmp_path / "eval").mkdir()
    args = ("eval", model_pt, "--bins", bins, "--benchmark", f"toy={toy}", "--benchmark", f"bin={bins}", "--out", out)
    first = run_cli_inprocess(capsys, *args)
    assert first.returncode == 0, first.output
    results = json.loads(out.read_text())
    # --bins keeps today's top-level keys; each --benchmark is a section under its name
    assert set(results) == {"model", "protocol", "flip", "sets", "average", "folders", "toy", "bin"}
    assert results["folders"] == {"toy": str(toy), "bin": str(bins)}
    assert results["bin"]["sets"] == results["sets"] and results["average"] == results["sets"]["lfw"]["accuracy"]
    assert results["toy"]["pairs"] == 3
    assert results["toy"]["mean_cos"] == pytest.approx(reference_mean_cos(model_pt, toy), abs=1e-5)
    print(first.stdout)
    lines = [" ".join(line.replace("│", " ").split()) for line in first.stdout.splitlines()]
    assert f"toy mean cos {results['toy']['mean_cos']:.4f}" in lines and "pairs 3" in lines
    # the bin section's rows come from its columns; --bins' wide table is today's
    assert f"bin lfw accuracy % {100 * results['sets']['lfw']['accuracy']:.2f}, std" in " ".join(lines)
    assert any(line.startswith(f"average {100 * results['average']:.2f}") for line in lines)
    # 20 lfw images for --bins (bin= reads them from the "bin" cache: keys are the images' bytes), 4 toy faces;
    # each is embedded with its mirror
    assert sum(counted) == 2 * (20 + 4)
    assert (tmp_path / "eval" / "embedding-cache" / "bin").is_dir() and (tmp_path / "eval" / "embedding-cache" / "toy").is_dir()

    counted.clear()
    again = run_cli_inprocess(capsys, *args)
    assert again.returncode == 0, again.output
    assert counted == [] and json.loads(out.read_text()) == results  # a rerun embeds nothing

    rng = np.random.default_rng(5)
    (toy / "faces" / "2.png").write_bytes(png(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)))
    third = run_cli_inprocess(capsys, *args)
    assert third.returncode == 0, third.output
    assert counted == [1, 1]  # only the changed face (and its mirror)
    changed = json.loads(out.read_text())
    assert changed["sets"] == results["sets"]
    assert changed["toy"]["mean_cos"] == pytest.approx(reference_mean_cos(model_pt, toy), abs=1e-5)

    counted.clear()
    plain = run_cli_inprocess(capsys, "eval", model_pt, "--benchmark", f"toy={toy}", "--no-cache", "--out", tmp_path / "r.json")
    assert plain.returncode == 0 and counted == [4, 4]  # --no-cache embeds everything
    # equal up to float32 rounding: the changed face was embedded alone, here in a batch of four
    assert json.loads((tmp_path / "r.json").read_text())["toy"]["mean_cos"] == pytest.approx(changed["toy"]["mean_cos"], abs=1e-6)
    assert not (tmp_path / "embedding-cache").exists()


def test_without_out_nothing_is_written_and_an_explicit_cache_is_used(tmp_path, capsys, model_pt, counted):
    bins, toy = make_data(tmp_path / "data")
    before = snapshot(tmp_path)
    result = run_cli_inprocess(capsys, "eval", model_pt, "--benchmark", f"toy={toy}", "--no-progress")
    assert result.returncode == 0, result.output
    assert snapshot(tmp_path) == before  # no --out, no --cache: nothing at all is written
    cache = tmp_path / "cache"
    for _ in range(2):
        assert run_cli_inprocess(capsys, "eval", model_pt, "--benchmark", f"toy={toy}", "--cache", cache).returncode == 0
    # the uncached run and the first cached run embed the 4 faces and their mirrors; the second run nothing
    assert counted == [4, 4, 4, 4] and len(list((cache / "toy").glob("*.npz"))) == 1


def test_a_failure_mid_run_writes_no_results_and_no_cache_folder(tmp_path, capsys, model_pt, monkeypatch):
    bins, toy = make_data(tmp_path / "data")
    out_dir = tmp_path / "eval"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("mine")

    def broken(recognizer, items, **kwargs):
        raise FileFormatError("the toy protocol met a damaged face.")

    monkeypatch.setitem(benchmarks.BENCHMARKS, "toy", Benchmark(**{**TOY.__dict__, "evaluate": broken}))
    before = snapshot(out_dir)
    result = run_cli_inprocess(capsys, "eval", model_pt, "--bins", bins, "--benchmark", f"toy={toy}", "--out", out_dir / "results.json")
    assert_clean_refusal(result, FileFormatError.exit_code, "damaged face")
    assert snapshot(out_dir) == before  # the .bin embeddings were cached, then removed with the folder this run made


# ----------------------------------------------------------------------------------------------- refusals before work


@pytest.mark.parametrize(
    "spec, code, needles",
    [
        (lambda t: "ijbz=/x", InvalidInputError.exit_code, ["no benchmark protocol named 'ijbz'", "bin: a folder of insightface",
                                                            "toy: faces/*.png and pairs.txt", "use one of these names"]),
        (lambda t: "toy", InvalidInputError.exit_code, ["is not NAME=PATH", "toy: faces/*.png"]),
        (lambda t: f"toy={t / 'nowhere'}", FileFormatError.exit_code, ["--benchmark toy=", "nowhere does not exist",
                                                                       "reads faces/*.png and pairs.txt", "never downloads"]),
        (lambda t: f"toy={t / 'data' / 'bins'}", FileFormatError.exit_code, ["--benchmark toy=", "has no pairs.txt"]),
        (lambda t: f"toy={t / 'data' / 'toy'}", FileFormatError.exit_code, ["pairs.txt line 2 names 9.png"]),
    ],
    ids=["unknown name", "no path", "missing folder", "wrong layout", "malformed file"],
)
def test_bad_benchmarks_are_refused_before_the_model_loads_and_leave_nothing(tmp_path, capsys, model_pt, monkeypatch, spec, code, needles):
    make_data(tmp_path / "data")
    (tmp_path / "data" / "toy" / "pairs.txt").write_text("0.png 1.png\n0.png 9.png\n")
    loaded = []
    monkeypatch.setattr(benchmarks, "load_recognizer", lambda *a, **k: loaded.append(1))
    before = snapshot(tmp_path)
    result = run_cli_inprocess(capsys, "eval", model_pt, "--benchmark", spec(tmp_path), "--out", tmp_path / "results.json")
    assert_clean_refusal(result, code, *needles)
    assert result.output.count("error:") == 1 and loaded == [] and snapshot(tmp_path) == before


def test_nothing_to_do_twice_the_same_name_and_sets_without_bins(tmp_path, capsys, model_pt):
    bins, toy = make_data(tmp_path / "data")
    assert_clean_refusal(run_cli_inprocess(capsys, "eval", model_pt), InvalidInputError.exit_code, "nothing to evaluate",
                         "--benchmark name=path", "toy:")
    assert_clean_refusal(run_cli_inprocess(capsys, "eval", model_pt, "-b", f"toy={toy}", "-b", f"toy={toy}"),
                         InvalidInputError.exit_code, "given twice")
    assert_clean_refusal(run_cli_inprocess(capsys, "eval", model_pt, "-b", f"toy={toy}", "--sets", "lfw"),
                         InvalidInputError.exit_code, "--sets chooses .bin packs")


def test_the_progress_bar_totals_declared_sizes_and_grows_for_the_rest(tmp_path):
    from synthface.cli.evaluate import _ProgressBar, plan_jobs

    bins, toy = make_data(tmp_path / "data")
    jobs = plan_jobs([f"toy={toy}"], bins, None)
    for job in jobs:
        job.load()
    with _ProgressBar(jobs, show=False) as bar:
        task = bar.progress.tasks[0]
        assert task.total == 20  # the .bin protocol declares its size: 2 images per pair
        advance = bar.task(jobs[0])
        advance.expect(20)  # a declared size is not counted twice
        advance(20)
        toy_advance = bar.task(jobs[1])
        toy_advance.expect(4)  # the toy protocol declares none: its embed call adds its count
        toy_advance(4)
        assert (task.total, task.completed) == (24, 24)
