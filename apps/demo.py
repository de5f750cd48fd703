"""The synthface identity-customisation demo as a standalone Gradio app.

    python apps/demo.py                      # the first installed generator (Arc2Face first), else tiny
    SYNTHFACE_DEMO_MODEL=vec2face python apps/demo.py   # Vec2Face (synthface models download vec2face)
    SYNTHFACE_DEMO_MODEL=tiny python apps/demo.py   # random weights: a smoke test of the page

Same page as `synthface demo`: it says which weights are missing and how to get them, and offers the
models found locally. The logic lives in `synthface.demo` (session, photos, conditioning), the page in `synthface.demo.page`. Set
SYNTHFACE_DEMO_HOST=0.0.0.0 to serve a network (or a hosted Space), SYNTHFACE_DEMO_ANALYZER=insightface
for the ArcFace judge.
"""

import os

from synthface.demo.page import build_demo, launch_demo

demo = build_demo(
    os.environ.get("SYNTHFACE_DEMO_MODEL") or None,
    os.environ.get("SYNTHFACE_DEMO_ANALYZER", "dlib"),
)

if __name__ == "__main__":
    launch_demo(demo, host=os.environ.get("SYNTHFACE_DEMO_HOST", "127.0.0.1"))
