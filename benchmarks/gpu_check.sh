#!/usr/bin/env bash
# The GPU check of issue 19: real shapes (qwen2.5-0.5b, phi-3-mini-4k) on one NVIDIA GPU in at
# most 8 minutes, from a fresh checkout: bf16 LoRA and full fine-tuning against the Hugging
# Face Trainer + PEFT baseline (tokens/s, peak GPU memory), and `slmforge serve` with the
# PyTorch engine on CUDA under 1 and 8 clients. Results: gpu_check.json, gpu_check.txt and
# gpu_check.log in $OUT (the device tool's folder), else in --out or .cache/gpu-check.
#
# On the lent GPU machine (its image lacks pydantic, fastapi, uvicorn, openai: first run
# `bash benchmarks/gpu_wheels.sh` here, which fills the git-ignored .cache/gpu-wheels):
#   run(command="bash benchmarks/gpu_check.sh", carry=[".cache/gpu-wheels"], timeout_s=560)
# Smoke test of every code path on a machine without a GPU (one layer, two steps):
#   GPU_CHECK_DEVICE=cpu PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
# Any other arguments go to benchmarks/gpu_check.py (e.g. --shapes qwen2.5-0.5b --steps 40).
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
WHEELS=${GPU_WHEELS:-.cache/gpu-wheels}
SITE=${GPU_CHECK_SITE:-/tmp/slmforge-gpu-site}
BUDGET_S=${GPU_CHECK_BUDGET_S:-440}  # the parts; startup and the summary fit in the 8 minutes
RESULTS=${OUT:-.cache/gpu-check}
WORK=${GPU_CHECK_WORK:-/tmp/slmforge-gpu-check}  # models of several GB: never under $OUT

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
paths="$PWD/src"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  # --target keeps the image's own packages as they are; only the missing ones are added
  if "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHEELS"/*.whl; then
    paths="$paths:$SITE"
  else
    echo "gpu_check: installing the wheels in $WHEELS failed; going on without them" >&2
  fi
else
  echo "gpu_check: no wheels in $WHEELS (bash benchmarks/gpu_wheels.sh makes them)" >&2
fi
export PYTHONPATH="$paths${PYTHONPATH:+:$PYTHONPATH}"

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,memory.used \
  --format=csv,noheader >&2
timeout --kill-after=10 $((${BUDGET_S%.*} + 30)) "$PYTHON" benchmarks/gpu_check.py \
  --device "$DEVICE" --budget-s "$BUDGET_S" --out "$RESULTS" --work "$WORK" "$@"
status=$?
[ $status -eq 124 ] && echo "gpu_check: stopped at its time limit; see $RESULTS" >&2
exit $status
