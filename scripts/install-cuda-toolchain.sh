#!/usr/bin/env bash
# Installs the CUDA 12.9 device-compiler pieces (NVRTC + headers) from PyPI into ./.cuda-venv.
# No GPU, no driver and no root needed; build.rs finds the venv by itself and compiles
# kernels/*.cu to cubins for sm_70/80/86/89/90 plus compute_90 PTX.
#
# Idempotent: a finished install leaves .cuda-venv/.ok (holding the pinned versions); running the
# script again with the same pins only prints where the toolchain is.
# Usage: bash scripts/install-cuda-toolchain.sh     (then: REQUIRE_CUDA_KERNELS=1 cargo build)
set -euo pipefail
cd "$(dirname "$0")/.."

PINS=(
  "nvidia-cuda-nvrtc-cu12==12.9.86"    # libnvrtc.so.12 + builtins: the compiler, used by build.rs via dlopen
  "nvidia-cuda-runtime-cu12==12.9.79"  # include/: cuda_fp16.h, mma.h, ...
  "nvidia-cuda-nvcc-cu12==12.9.86"     # include/crt/*.h (crt/mma.h), ptxas (not needed by build.rs)
)
VENV=.cuda-venv
PYTHON=${PYTHON:-python3}

if [ ! -e "$VENV/.ok" ] || [ "$(cat "$VENV/.ok")" != "${PINS[*]}" ]; then
  command -v "$PYTHON" >/dev/null || { echo "error: $PYTHON not found (needs Python >= 3.8 with venv)" >&2; exit 1; }
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir "${PINS[@]}"
  printf '%s' "${PINS[*]}" > "$VENV/.ok"
  # Make cargo rerun build.rs: it could not watch a venv that did not exist yet.
  touch build.rs
fi

root=$(ls -d "$PWD/$VENV"/lib/python3*/site-packages/nvidia | head -n 1)
[ -e "$root/cuda_nvrtc/lib/libnvrtc.so.12" ] || { echo "error: $root/cuda_nvrtc/lib/libnvrtc.so.12 missing; delete $VENV and rerun" >&2; exit 1; }
echo "CUDA 12.9 NVRTC toolchain ready in $PWD/$VENV"
echo "CUDA_PIP_ROOT=$root"
