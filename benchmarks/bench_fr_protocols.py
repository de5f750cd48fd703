"""The new evaluation protocols against a bare embedding loop over the same images (issue #25: goal
within 10 % on CPU). Builds the test-time TinyFace layout (tests/helpers/tinyface_layout.py: real
photos, 62 images), evaluates it with a random IResNet through `synthface.fr.benchmarks.tinyface`
(no cache), and times a bare loop that reads the same files, flips and calls the same network in the
same batches. Prints JSON: median seconds of each over repeats and their ratio.

    python benchmarks/bench_fr_protocols.py [--network r18] [--repeats 3] [--copies 4]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the layout builder lives in tests/helpers


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="r18")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--copies", type=int, default=4, help="copies of the layout's images (more work per call)")
    args = parser.parse_args(argv)

    from synthface.fr.backbones import iresnet
    from synthface.fr.benchmarks import tinyface
    from synthface.fr.benchmarks.embeddings import CHUNK
    from synthface.fr.benchmarks.recognizers import torch_recognizer
    from tests.helpers.tinyface_layout import build_tinyface

    torch.manual_seed(0)
    recognizer = torch_recognizer(iresnet(args.network).eval(), device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = build_tinyface(Path(tmp) / "tinyface")
        split = tinyface.find(root)[0]
        for copy in range(1, args.copies):  # more distractors: same files under new names
            for name in list(split.distractors):
                src = split.root / name
                shutil.copy(src, src.with_name(f"copy{copy}_{src.name}"))
        split = tinyface.find(root)[0]
        paths = [split.root / p for p in split.images]

        def protocol():
            tinyface.evaluate(recognizer, split)

        def bare():
            out = []
            for start in range(0, len(paths), CHUNK):
                crops = np.stack([tinyface.read_rgb(p, 112) for p in paths[start:start + CHUNK]])
                out.append(recognizer.forward(crops) + recognizer.forward(np.ascontiguousarray(crops[:, :, ::-1])))
            emb = np.concatenate(out)
            return emb / np.linalg.norm(emb, axis=1, keepdims=True)

        times = {"protocol": [], "bare": []}
        protocol()  # warm-up
        for _ in range(args.repeats):
            for name, fn in (("bare", bare), ("protocol", protocol)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    median = {k: float(np.median(v)) for k, v in times.items()}
    print(json.dumps({"benchmark": "tinyface protocol vs bare embedding loop", "network": args.network,
                      "images": len(paths), "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "seconds": times, "median_s": median,
                      "protocol_over_bare": round(median["protocol"] / median["bare"], 3)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
