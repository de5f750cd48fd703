"""bench_fr.py runs on CPU in its quick mode and its JSON carries consistent numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_fr_quick_on_cpu(tmp_path):
    out = tmp_path / "fr.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_fr.py"), "--quick", "--device", "cpu", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["network"] == "custom" and result["input_size"] == 32
    (row,) = result["train"]
    assert row["batch"] == 16 and row["precision"] == "fp32" and row["images_per_s"] > 0
    assert result["best_train_images_per_s"] == row["images_per_s"] and result["eval_images_per_s"] > 0
    assert {(r["augment"], r["workers"]) for r in result["loader"]} == {("hsface", 0), ("flip", 0)}
    for r in result["loader"]:
        assert abs(r["share_of_training_rate"] - r["images_per_s"] / row["images_per_s"]) < 1e-3 * max(1, r["share_of_training_rate"])
    assert json.loads(proc.stdout) == result
