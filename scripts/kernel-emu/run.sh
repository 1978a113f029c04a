#!/usr/bin/env bash
# Host emulation of the CUDA kernels, for checking their index logic on a machine without a GPU.
#
# The kernels in kernels/*.cu are compiled as plain C++ (g++ ≥ 12, C++20) against a small shim
# (inc/cuda_fp16.h, inc/mma.h): `half` is _Float16, each block's threads are fibers on one OS
# thread (scripts/emu-driver/fibers.cpp: __syncthreads and warp barriers are fiber switches,
# blocks run in parallel on the cores, __shared__ is per OS thread), warp shuffles go through a per-warp exchange table, and wmma fragments hold the whole
# 16×16 tile in every lane (load/store assert the 256-bit pointer alignment and ldm rules). The
# drivers (test_conv.cpp, test_rest.cpp) launch the kernels exactly as src/gpu/backend.rs does
# and compare against naive f64 references.
#
# The sm_80 instructions (mma.sync m16n8k16, ldmatrix, cp.async; inc/sm80.h) are emulated lane
# by lane with the PTX ISA's fragment layouts, cp.async landing only at its wait_group; sm_90a's
# wgmma.mma_async (inc/sm80.h, end) reads shared memory through its descriptors and swizzle at
# the wgmma.wait_group that retires it; thread-block clusters, mbarriers and multicast bulk
# copies (the tma kernels) run on the fiber launcher only (scripts/emu-driver/README.md).
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
# Usage: bash scripts/kernel-emu/run.sh [--asan | --tsan]
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
# By default a block's threads are fibers (scripts/emu-driver/fibers.cpp, blocks in parallel on
# the cores); --asan and --tsan give every CUDA thread an OS thread (sanitizers and hand-made
# stack switches do not mix, and ThreadSanitizer needs the threads to run concurrently).
srcs=("$here/emu.cpp")
if [[ "${1:-}" == "--asan" ]]; then flags+=(-fsanitize=address,undefined)
elif [[ "${1:-}" == "--tsan" ]]; then flags+=(-O1 -fsanitize=thread); export TSAN_OPTIONS="halt_on_error=1 ${TSAN_OPTIONS:-}"
else
    flags+=(-DEMU_FIBERS ${EMU_CXXFLAGS--mf16c} -I"$here/../emu-driver")
    srcs+=("$here/../emu-driver/fibers.cpp")
fi
# Each translation unit compiled once, in parallel (one job per core: the compiles were most of
# this script's time on CI's 2 cores), then the two drivers linked and run in turn.
jobs=$(nproc 2>/dev/null || echo 2)
objs=()
pids=()
for src in "${srcs[@]}" "$here/test_rest.cpp" "$here/test_conv.cpp"; do
    while (( $(jobs -rp | wc -l) >= jobs )); do wait -n || true; done
    o="$out/$(basename "${src%.cpp}").o"
    g++ -c "$src" -o "$o" "${flags[@]}" & pids+=($!)
    objs+=("$o")
done
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
(( fail == 0 )) || { echo "kernel-emu: a compile failed (above)" >&2; exit 1; }
common=("${objs[@]:0:${#srcs[@]}}")
for t in test_rest test_conv; do
    g++ "${common[@]}" "$out/$t.o" -o "$out/$t" "${flags[@]}"
    echo "== $t"
    "$out/$t"
done
