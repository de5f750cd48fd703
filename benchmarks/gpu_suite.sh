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

RESULTS=${OUT:-out/gpu-bench}
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_suite.log"
exec > >(tee "$LOG") 2>&1
START=$(date +%s)

DEVICE_ARGS=()
if [[ "${GPU_SUITE_CPU:-}" == 1 ]]; then
    DEVICE_ARGS=(--device cpu --tiny)
elif ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_suite: no CUDA GPU visible to $PY (torch missing, no driver, or a CPU build of torch)."
    echo "gpu_suite: run this on the GPU machine; on CPU use: python benchmarks/gpu_bench.py --device cpu --tiny"
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null || true

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
NEEDED='import diffusers, pydantic, transformers, onnx, cv2, PIL, safetensors'
if ! "$PY" -c "$NEEDED" 2>/dev/null; then
    if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        echo "gpu_suite: missing Python packages and no wheels in $WHEELS/."
        echo "gpu_suite: fetch them on a machine with network (bash benchmarks/gpu_suite.sh fetch) and carry $WHEELS."
        "$PY" -c "$NEEDED"
        exit 3
    fi
    echo "gpu_suite: installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into /tmp/synthface-site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/synthface-site "$WHEELS"/*.whl || exit 3
    export PYTHONPATH="/tmp/synthface-site:$PYTHONPATH"
    "$PY" -c "$NEEDED" || { echo "gpu_suite: packages still missing after installing the wheels"; exit 3; }
fi
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
rc=$?
(( rc == 124 || rc == 137 )) && echo "gpu_suite: killed at the hard limit; $RESULTS/gpu_bench.json holds the stages that finished"
echo "gpu_suite: exit $rc after $(( $(date +%s) - START )) s; results in $RESULTS/gpu_bench.json"
exit $rc
