# Shared set-up of the GPU scripts (gpu_suite.sh, gpu_fr.sh, gpu_vec2face.sh); source it, then call
#   gpu_setup NAME "IMPORTS"      e.g. gpu_setup gpu_fr 'import numpy, cv2, PIL'
# It sets PY, RESULTS ($OUT or out/NAME) and START, tees stdout+stderr to $RESULTS/NAME.log, exits 2
# without a CUDA GPU (unless GPU_CPU_DRY_RUN=1), prints the GPU, puts the checkout on PYTHONPATH and,
# when IMPORTS fail, installs the carried wheels from $WHEELS (default .whl; see gpu_suite.sh fetch)
# into /tmp/synthface-site, exiting 3 when that cannot help.
# The GPU machine's Python has torch with CUDA, transformers, onnx, opencv, pillow, safetensors,
# huggingface_hub, matplotlib and pyarrow, but not diffusers or pydantic.

gpu_setup() {
    local name=$1 needed=$2
    PY=${PYTHON:-python3}
    WHEELS=${WHEELS:-.whl}
    RESULTS=${OUT:-out/${name//_/-}}
    mkdir -p "$RESULTS"
    exec > >(tee "$RESULTS/$name.log") 2>&1
    START=$(date +%s)
    if [[ "${GPU_CPU_DRY_RUN:-}" != 1 ]] && ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo "$name: no CUDA GPU visible to $PY (torch missing, no driver, or a CPU build of torch)."
        echo "$name: run this on the GPU machine; the CPU form of each benchmark is in its header."
        exit 2
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null || true
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    if ! "$PY" -c "$needed" 2>/dev/null; then
        if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
            echo "$name: missing Python packages and no wheels in $WHEELS/."
            echo "$name: fetch them on a machine with network (bash benchmarks/gpu_suite.sh fetch) and carry $WHEELS."
            "$PY" -c "$needed"
            exit 3
        fi
        echo "$name: installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into /tmp/synthface-site"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/synthface-site "$WHEELS"/*.whl || exit 3
        export PYTHONPATH="/tmp/synthface-site:$PYTHONPATH"
        "$PY" -c "$needed" || { echo "$name: packages still missing after installing the wheels"; exit 3; }
    fi
}

# gpu_finish NAME RC JSON: one closing line, naming a kill at the hard limit.
gpu_finish() {
    local name=$1 rc=$2 json=$3
    (( rc == 124 || rc == 137 )) && echo "$name: killed at the hard limit; $json holds what finished, if anything"
    echo "$name: exit $rc after $(( $(date +%s) - START )) s; results in $json"
    exit "$rc"
}
