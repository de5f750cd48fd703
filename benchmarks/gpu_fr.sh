#!/usr/bin/env bash
# Recogniser training speed on one GPU (H100/H200): IResNet-50 + ArcFace over 10K classes, SGD,
# training images/s in bf16 and fp16 at batch 128 and 256 with channels_last, then torch.compile on
# the best eager configuration (kept in the README only where it pays); flip-sum evaluation
# images/s; the loader's images/s with the HSFace augmentation and flip only at 0, 8 and 16
# workers against the training rate. Goal: >= 2,000 training images/s (arcface_torch's logs: 540-690
# per older GPU). Needs torch with CUDA, numpy, opencv and pillow (carried wheels fill any gap) and
# finishes in under 5 minutes; leaves gpu_fr.json and gpu_fr.log in $OUT (else out/gpu-fr/).
#
#   device tool: bash benchmarks/gpu_fr.sh            (timeout_s 330)
#
# Knobs: FR_SECONDS (hard limit, default 280), PYTHON (default python3); extra arguments go to
# benchmarks/bench_fr.py (e.g. --se for HSFace's IR-SE50).
set -uo pipefail
cd "$(dirname "$0")/.."

source benchmarks/gpu_common.sh
gpu_setup gpu_fr 'import numpy, cv2, PIL, tqdm, synthface.fr.train'
LIMIT=${FR_SECONDS:-280}
PYTHONUNBUFFERED=1 timeout --kill-after=10 "$LIMIT" "$PY" benchmarks/bench_fr.py --device cuda --network r50 \
    --batch 128 256 --precision bf16 fp16 --channels-last --compile --steps 30 --warmup 10 \
    --loader-images 4000 --workers 0 8 16 --out "$RESULTS/gpu_fr.json" "$@"
gpu_finish gpu_fr $? "$RESULTS/gpu_fr.json"
