"""The benchmark scripts run, and their JSON carries the numbers the README and the GPU suite use.

gpu_bench.py runs on CPU with tiny components (`--device cpu --tiny`), which exercises every stage
the GPU suite runs except torch.compile; bench_engine.py runs in its quick mode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.bench  # the scripts take minutes on 2 cores: run with -m bench

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"


def run_script(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("OUT", None)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


def test_gpu_bench_tiny_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    proc = run_script(str(BENCH / "gpu_bench.py"), "--device", "cpu", "--tiny", "--budget", "60", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["complete"] is True and result["tiny"] is True
    assert positive(result["reference"]["images_per_s"]) and result["reference"]["images_per_call"] == 4
    assert positive(result["engine"]["images_per_s"]) and positive(result["engine_over_reference"])
    ratio = result["engine"]["images_per_s"] / result["reference"]["images_per_s"]
    assert result["engine_over_reference"] == pytest.approx(ratio, rel=1e-2)
    # the sweep covers every batch size; the best config is one of the rows
    assert {r["batch"] for r in result["engine_configs"]} >= {2, 4}
    assert result["engine"] in result["engine_configs"]
    assert all(positive(r["images_per_s"]) and "peak_gib" in r for r in result["engine_configs"])
    unet = result["unet"]
    assert positive(unet["flops_per_forward_cfg_pair"]) and positive(unet["pipeline_tflops"])
    assert unet["tflop_per_image"] == pytest.approx(unet["flops_per_forward_cfg_pair"] * result["steps"] / 1e12, rel=1e-3)
    assert result["peak_tflops_dense_bf16"] is None  # no chip peak on a CPU, so no share of it
    run = result["engine_run"]
    assert run["images"] == 4 * result["engine"]["batch"] and run["model_calls"] == 4
    assert positive(run["images_per_s"]) and positive(run["shard_images_per_s"])
    assert run["total_s"] >= run["shards_s"] > run["model_s"] > 0
    # stdout ends with the same JSON
    assert json.loads(proc.stdout[proc.stdout.index("\n{") + 1:]) == result


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_gpu_bench_fails_fast_without_cuda():
    proc = run_script(str(BENCH / "gpu_bench.py"), "--budget", "5", timeout=60)
    assert proc.returncode != 0
    assert "no CUDA device" in proc.stderr and "--device cpu --tiny" in proc.stderr


def test_chip_peak_table():
    sys.path.insert(0, str(BENCH))
    try:
        from gpu_bench import chip_peak_tflops
    finally:
        sys.path.remove(str(BENCH))
    assert chip_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert chip_peak_tflops("NVIDIA H200") == 989.0
    assert chip_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert chip_peak_tflops("Some Future GPU") is None


def test_bench_engine_quick(tmp_path):
    out = tmp_path / "engine.json"
    proc = run_script(str(BENCH / "bench_engine.py"), "--quick", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["images"] == 16 and result["model"] == "tiny"
    for key in ("total_s", "model_s", "engine_s", "total_over_model", "images_per_s", "model_images_per_s",
                "shards_s", "shard_images_per_s"):
        assert positive(result[key]), key
    assert result["total_s"] == pytest.approx(result["model_s"] + result["engine_s"], abs=1e-3)
    assert result["total_over_model"] == pytest.approx(result["total_s"] / result["model_s"], rel=1e-2)
    assert 0 < result["engine_share"] < 1
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == result


def test_bench_engine_full_size_vec2face_quick(tmp_path):
    out = tmp_path / "engine.json"
    proc = run_script(str(BENCH / "bench_engine.py"), "--quick", "--full-size-vec2face", "--json", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["images"] == 16 and result["model"].startswith("vec2face (full size")
    assert result["total_s"] == pytest.approx(result["model_s"] + result["engine_s"], abs=1e-3)
    assert result["total_over_model"] >= 1


def test_bench_engine_standin_quick(tmp_path):
    out = tmp_path / "overlap.json"
    proc = run_script(str(BENCH / "bench_engine.py"), "--standin", "--quick", "--json", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    run = result["run"]
    # 6 identities x 4 real photos, one batch of 8 per 2-identity shard; dlib found a face in every one
    assert run["images"] == 24 and run["model_calls"] == result["batches"] == 3
    assert run["images_kept"] == 24 and run["drop_reasons"] == {}
    # by default the stand-in sleeps analysis + writing time per batch: the two stages balance
    assert result["seconds_per_batch"] == pytest.approx(result["analysis_writing_alone_s"] / 3, rel=1e-2)
    assert result["render_alone_s"] >= 3 * result["seconds_per_batch"]
    busier = max(result["render_alone_s"], result["analysis_writing_alone_s"])
    assert result["busier_s"] == pytest.approx(busier, abs=1e-3)
    assert result["busier_stage"] == ("render" if busier == result["render_alone_s"] else "analysis_writing")
    assert result["end_to_end_s"] == run["shards_s"]
    assert result["end_to_end_over_busier"] == pytest.approx(result["end_to_end_s"] / busier, rel=1e-2)
    total = result["render_alone_s"] + result["analysis_writing_alone_s"]
    assert result["end_to_end_over_sum"] == pytest.approx(result["end_to_end_s"] / total, rel=1e-2)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == result


def test_bench_attributes_one_repeat(tmp_path):
    out = tmp_path / "attributes.json"
    proc = run_script(str(BENCH / "bench_attributes.py"), "--repeats", "1", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [r["image"] for r in result["images"]] == ["t1.jpg", "Tom_Hanks_54745.png", "astronaut"]
    assert [r["faces"] for r in result["images"]][0] == 6 and result["runtime"] == "onnxruntime"
    for r in result["images"]:
        assert positive(r["face_analysis_s"]) and positive(r["attributes_s"])
        assert r["ratio"] == pytest.approx(r["attributes_s"] / r["face_analysis_s"], rel=1e-2, abs=1e-3)
    assert result["within_goal"] == (max(r["ratio"] for r in result["images"]) <= result["goal_ratio"])
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == result
