"""Time and memory of `compute_report` on a large synthetic run folder, against baselines run here.

    python benchmarks/bench_report.py [--identities 100000] [--images 50] [--dim 512] [--workdir DIR] [--attributes]

Writes a run folder of synthetic embeddings (identities x images rows, 10 GB at the defaults;
a tenth of the identities re-render an earlier identity so the unique-identity curve bends),
then times the report (no HTML) and two baselines in the same process:
- gemm: one blocked all-pairs product of the identity centres (N x N x D), the least an exact
  unique-identity count can do;
- read: one sequential pass over the embeddings file (the I/O floor).
With --attributes the manifest also holds apparent ages and genders (each identity a gender and an age,
each image noisy around them), so the report computes its "who is in the set" section (stage "who").
Memory is the peak anonymous RSS sampled every 20 ms (the mapped embeddings file is page cache,
not process memory), printed beside the size of the embeddings it covers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


class PeakAnon:
    """Sample RssAnon from /proc/self/status in a thread; `.peak` in bytes."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _now(self) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
        return 0

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._now())
            time.sleep(0.02)

    def __enter__(self):
        self.peak = self._now()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def write_synthetic_run(root: Path, n: int, k: int, dim: int, seed: int = 0, attributes: bool = False) -> None:
    """Stream a run folder to disk identity-chunk by identity-chunk (bounded memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = rng.standard_normal((n, dim)).astype(np.float32)
    ids /= np.linalg.norm(ids, axis=1, keepdims=True)
    twins = rng.choice(np.arange(n // 2, n), size=n // 10, replace=False)
    ids[twins] = ids[rng.integers(0, n // 2, size=twins.size)]  # re-rendered earlier identities
    m = n * k
    header = json.dumps({"embeddings": {"dtype": "F32", "shape": [m, dim], "data_offsets": [0, m * dim * 4]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(root / "embeddings.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        step = max(1, 65536 // k)
        for s in range(0, n, step):
            e = min(n, s + step)
            x = np.repeat(ids[s:e], k, axis=0) * 2.5 + rng.standard_normal(((e - s) * k, dim), dtype=np.float32) / np.sqrt(dim)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            f.write(x.astype("<f4").tobytes())
    from safetensors.numpy import save_file

    save_file({"ids": ids}, str(root / "identities.safetensors"))
    labels = np.repeat(np.arange(n, dtype=np.int64), k)
    kept = rng.random(m) > 0.05
    reasons = pa.DictionaryArray.from_arrays(pa.array(np.where(kept, 0, 1).astype(np.int32)), pa.array(["", "low_similarity"]))
    table = pa.table({
        "identity": labels,
        "image": np.tile(np.arange(k, dtype=np.int64), n),
        "kept": kept,
        "drop_reason": reasons,
        "yaw": rng.normal(0, 20, m).astype(np.float32),
    })
    if attributes:
        female = np.repeat(rng.random(n) < 0.5, k) ^ (rng.random(m) < 0.05)  # 5 % of images read the other way
        columns = {"age": (np.repeat(rng.uniform(18, 70, n), k) + rng.normal(0, 4, m)).astype(np.float32),
                   "age_confidence": rng.uniform(0.2, 0.9, m).astype(np.float32),
                   "gender": np.where(female, "female", "male"),
                   "gender_confidence": rng.uniform(0.5, 1.0, m).astype(np.float32)}
        for name, values in columns.items():
            table = table.append_column(name, pa.array(values))
    pq.write_table(table, root / "manifest.parquet")


def gemm_baseline(centres: np.ndarray, block: int = 4096) -> float:
    t = time.perf_counter()
    best = np.full(centres.shape[0], -2.0, np.float32)
    for s in range(0, centres.shape[0], block):
        for r in range(0, centres.shape[0], block):
            g = centres[s : s + block] @ centres[r : r + block].T
            best[s : s + block] = np.maximum(best[s : s + block], g.max(axis=1))
    return time.perf_counter() - t


def read_baseline(embeddings: np.ndarray, chunk: int = 1 << 16) -> float:
    t = time.perf_counter()
    total = 0.0
    for s in range(0, embeddings.shape[0], chunk):
        total += float(np.asarray(embeddings[s : s + chunk], dtype=np.float32).sum())
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--identities", type=int, default=100_000)
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--attributes", action="store_true", help="add apparent age and gender columns (the who section)")
    ap.add_argument("--workdir", type=Path, default=None, help="where to write the run folder (default: a temp dir, removed)")
    args = ap.parse_args()

    from synthface.report import ReportOptions, compute_report, load_run

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_report_"))
    root = work / "run"
    try:
        t = time.perf_counter()
        write_synthetic_run(root, args.identities, args.images, args.dim, attributes=args.attributes)
        gen_s = time.perf_counter() - t
        run = load_run(root)
        emb_bytes = run.embeddings.nbytes
        with PeakAnon() as mem:
            t = time.perf_counter()
            rep = compute_report(run, None, ReportOptions()).data
            report_s = time.perf_counter() - t
        read_s = read_baseline(run.embeddings)
        rng = np.random.default_rng(1)
        centres = rng.standard_normal((args.identities, args.dim)).astype(np.float32)
        gemm_s = gemm_baseline(centres)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    gb = 1 << 30
    print(f"run: {args.identities} identities x {args.images} images x {args.dim}-d "
          f"({emb_bytes / gb:.2f} GiB of embeddings; written in {gen_s:.1f} s)")
    print(f"report (no html):      {report_s:8.1f} s   peak anonymous RSS {mem.peak / gb:.2f} GiB")
    print(f"  stages: {rep['seconds']}")
    print(f"baseline gemm (N x N): {gemm_s:8.1f} s   report / gemm = {report_s / gemm_s:.2f}")
    print(f"baseline read pass:    {read_s:8.1f} s   report / read = {report_s / read_s:.2f}")
    v, u = rep["verification"], rep["unique_identities"]
    print(f"EER {v['eer']:.4f}  TAR@1e-3 {v['tar_at_far']['0.001']['tar']:.4f}  TAR@1e-4 {v['tar_at_far']['0.0001']['tar']:.4f}  "
          f"unique @0.3 {u['0.3']['final']}  @0.4 {u['0.4']['final']} of {args.identities} "
          f"(genuine {v['genuine_pairs']}, impostor {v['impostor_pairs']} pairs)")


if __name__ == "__main__":
    main()
