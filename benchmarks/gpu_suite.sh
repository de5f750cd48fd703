#!/usr/bin/env bash
# The GPU suite: Arc2Face images/s, reference procedure vs synthface's engine path, on one
# H100/H200 (see benchmarks/gpu_bench.py for what is measured). Finishes within 8 minutes and
# leaves gpu_bench.json (and gpu_suite.log) in $OUT when OUT is set, else in out/gpu-bench/.
#
# The GPU machine sees only the working tree plus carried folders, with no network. Its Python
# (3.12, torch with CUDA, transformers, onnx, opencv, pillow, safetensors, huggingface_hub,
# matplotlib, pyarrow) lacks these, so they travel as wheels in .whl/ (about 9 MB):
#   diffusers==0.42.1  pydantic==2.14.4  pydantic-core==2.50.5 (cp312 manylinux)
#   annotated-types==0.8.0  typing-inspection==0.4.5  typing-extensions==4.16.0
# (diffusers uses the standard library's importlib.metadata on Python >= 3.8, so the
# importlib_metadata backport is not needed.)
#
# 1. Here, with network, once:       bash benchmarks/gpu_suite.sh fetch
#    which runs, for each wheel above:
#      python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#        -d .whl NAME==VERSION
#    and adds /.whl/ to .git/info/exclude so the wheels are never committed.
# 2. On the GPU machine (device tool: carry [".whl"], timeout_s 540):
#                                    bash benchmarks/gpu_suite.sh [extra gpu_bench.py arguments]
#    Missing imports are installed from .whl with pip --no-index into /tmp/synthface-site.
#
# Knobs: SUITE_SECONDS (hard kill, default 470), BUDGET (gpu_bench's own budget, default 400),
# PYTHON (default python3), WHEELS (default .whl), GPU_SUITE_CPU=1 (dry run of this script on a
# CPU: tiny components, `--device cpu --tiny`).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
PACKAGES=(diffusers==0.42.1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
          typing-inspection==0.4.5 typing-extensions==4.16.0)

if [[ "${1:-}" == "fetch" ]]; then
    mkdir -p "$WHEELS" .git/info
    grep -qxF "/$WHEELS/" .git/info/exclude 2>/dev/null || echo "/$WHEELS/" >> .git/info/exclude
    exec "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$WHEELS" "${PACKAGES[@]}"
fi

source benchmarks/gpu_common.sh
[[ "${GPU_SUITE_CPU:-}" == 1 ]] && export GPU_CPU_DRY_RUN=1
DEVICE_ARGS=()
[[ "${GPU_SUITE_CPU:-}" == 1 ]] && DEVICE_ARGS=(--device cpu --tiny)
OUT=${OUT:-out/gpu-bench} gpu_setup gpu_suite 'import diffusers, pydantic, transformers, onnx, cv2, PIL, safetensors'
"$PY" -c 'import torch, diffusers, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda,
"diffusers", diffusers.__version__, "transformers", transformers.__version__)'

# Whatever setup took comes out of the 8 minutes; gpu_bench skips configs to fit what is left.
SUITE_SECONDS=${SUITE_SECONDS:-470}
LEFT=$(( SUITE_SECONDS - ($(date +%s) - START) ))
BUDGET=${BUDGET:-400}
(( BUDGET > LEFT - 45 )) && BUDGET=$(( LEFT - 45 ))
echo "gpu_suite: gpu_bench budget ${BUDGET} s, hard limit ${LEFT} s"
PYTHONUNBUFFERED=1 timeout --kill-after=10 "$LEFT" "$PY" benchmarks/gpu_bench.py \
    --budget "$BUDGET" --out "$RESULTS/gpu_bench.json" "${DEVICE_ARGS[@]}" "$@"
gpu_finish gpu_suite $? "$RESULTS/gpu_bench.json"
