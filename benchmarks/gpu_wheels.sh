#!/usr/bin/env bash
# Download the wheels that benchmarks/gpu_check.sh needs on the lent GPU machine and that its
# image lacks. That image has torch, transformers, peft, accelerate, safetensors, rich, pyyaml,
# httpx, numpy and prometheus-client, but not pydantic (every slmforge config) nor fastapi,
# starlette, uvicorn and opentelemetry-api (`slmforge serve`; this fastapi imports it). It cannot
# reach a registry, so they travel as wheels in a git-ignored folder named in the device
# tool's `carry`. typer travels too, so the CLI runs with the version it was tested with.
#
#   bash benchmarks/gpu_wheels.sh                 # -> .cache/gpu-wheels, for Python 3.12
#   PY_VERSION=3.11 bash benchmarks/gpu_wheels.sh /tmp/wheels311   # e.g. to try them here
#
# Versions are the ones the project's own environment was tested with. `--no-deps`: each
# dependency the image lacks is named here, so nothing else is fetched; the image's own
# packages (anyio, h11, click, typing-extensions, annotated-doc, ...) are used as they are.
# What the finetune and serve paths import was found by running gpu_check.sh's CPU smoke test
# in an environment holding only the image's packages plus these wheels.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${1:-.cache/gpu-wheels}
PY_VERSION=${PY_VERSION:-3.12}  # python3 on the GPU machine is 3.12 (KINDS.md)
PYTHON=${PYTHON:-.venv/bin/python}
LIMIT_MIB=32  # the device tool carries at most 64 MiB with the working tree

WHEELS=(
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 opentelemetry-api==1.45.2 typer==0.29.2
)

rm -rf "$DEST"
mkdir -p "$DEST"
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
  --implementation cp "${platforms[@]}" -d "$DEST" "${WHEELS[@]}"

size=$(du -sk "$DEST" | cut -f1)
count=$(find "$DEST" -name '*.whl' | wc -l)
echo "gpu_wheels: $count wheels, $((size / 1024)) MiB in $DEST (Python $PY_VERSION)"
if [ "$count" -ne "${#WHEELS[@]}" ]; then
  echo "gpu_wheels: expected ${#WHEELS[@]} wheels" >&2
  exit 1
fi
if [ "$size" -gt $((LIMIT_MIB * 1024)) ]; then
  echo "gpu_wheels: over ${LIMIT_MIB} MiB: the device tool could not carry them" >&2
  exit 1
fi
