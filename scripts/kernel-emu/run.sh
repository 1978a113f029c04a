#!/usr/bin/env bash
# Host emulation of the CUDA kernels, for checking their index logic on a machine without a GPU.
#
# The kernels in kernels/*.cu are compiled as plain C++ (g++ ≥ 12, C++20) against a small shim
# (inc/cuda_fp16.h, inc/mma.h): `half` is _Float16, each block's threads are std::threads with a
# std::barrier for __syncthreads, __shared__ becomes a function-static (blocks run one after
# another), warp shuffles go through a per-warp exchange table, and wmma fragments hold the whole
# 16×16 tile in every lane (load/store assert the 256-bit pointer alignment and ldm rules). The
# drivers (test_conv.cpp, test_rest.cpp) launch the kernels exactly as src/gpu/backend.rs does
# and compare against naive f64 references.
#
# The sm_80 instructions (mma.sync m16n8k16, ldmatrix, cp.async; inc/sm80.h) are emulated lane
# by lane with the PTX ISA's fragment layouts, cp.async landing only at its wait_group; sm_90a's
# wgmma.mma_async (inc/sm80.h, end) reads shared memory through its descriptors and swizzle at
# the wgmma.wait_group that retires it.
#
# What this checks: indexing, tiling, the implicit-GEMM mappings, pooling/argmax, split-K,
# reductions, fp16 rounding points, the mma kernels' lane mappings and pipeline. What it cannot
# check: wmma's real fragment layouts, whether inc/sm80.h reads the ISA right, timing, races the
# barriers would hide, the compiled SASS. It is not a substitute for
# `speedrun selftest` on a GPU.
#
# --asan adds AddressSanitizer/UBSan (out-of-bounds indexing). --tsan adds ThreadSanitizer: the
# threads of a block really run concurrently and __syncthreads is a std::barrier, so a shared-
# memory write and a read (or two writes) of another thread with no __syncthreads between them is
# reported as a data race (about 15 minutes on 2 cores).
#
# Usage: bash scripts/kernel-emu/run.sh [--asan | --tsan]     (about 5–8 minutes on 2 cores)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
kernels="$here/../../kernels"
out="${TMPDIR:-/tmp}/kernel-emu"
mkdir -p "$out"
# dynamic shared memory (`extern __shared__ T name[];`): the launch's buffer (emu.cpp), as
# scripts/emu-driver/build.sh does it
mkdir -p "$out/kernels"
for f in "$kernels"/*.cu "$kernels"/*.cuh; do
    sed -E 's/extern __shared__ (\w+) (\w+)\[\];/\1* \2 = reinterpret_cast<\1*>(emu_dyn_smem());/' "$f" > "$out/kernels/$(basename "$f")"
done
flags=(-std=c++20 -O2 -g -I"$here/inc" -I"$out/kernels" -lpthread)
if [[ "${1:-}" == "--asan" ]]; then flags+=(-fsanitize=address,undefined); fi
if [[ "${1:-}" == "--tsan" ]]; then flags+=(-O1 -fsanitize=thread); export TSAN_OPTIONS="halt_on_error=1 ${TSAN_OPTIONS:-}"; fi
for t in test_rest test_conv; do
    g++ "$here/emu.cpp" "$here/$t.cpp" -o "$out/$t" "${flags[@]}"
    echo "== $t"
    "$out/$t"
done
