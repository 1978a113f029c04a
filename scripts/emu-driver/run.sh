#!/usr/bin/env bash
# Runs the real GPU host code (src/gpu/*.rs, src/selftest.rs, the GPU training path) on the CPU
# through the emulated CUDA driver built by build.sh (see driver.cpp for what it emulates and
# checks). Checks the driver itself (selfcheck.cpp), builds into target/emu (so normal builds
# keep no `cuda_driver` cfg), then runs:
#   1. src/gpu/tests.rs (smoke kernels, dynamic shared memory, events, graphs, PTX image, ...)
#   2. recipe_tests::gpu_recorded_run_equals_op_by_op_run (a tiny run recorded as CUDA graphs
#      vs op by op, bit for bit)
#   3. selftest::tests::gpu_matches_cpu_reference (every kernel vs the CPU reference, a whole
#      training step, and the recorded step), at batch 32 (SPEEDRUN_SELFTEST_BATCH)
#   4. the binary: speedrun --smoke --epochs 0.5 (5 steps on 1,000 images, GPU path with
#      graphs), if the dataset is in ../shared/cifar10 or $CIFAR10_DIR
# The forward convs use the sm_80 kernel (the emulated GPU is sm_90) in steps 1-3, whose mma.sync
# and ldmatrix the shim emulates lane by lane with the PTX ISA's layouts; step 4 uses wmma.
# Not covered: wmma's real fragment layouts (the shim's wmma is whole-tile), timing, races
# between a block's threads (scripts/kernel-emu/run.sh --tsan), asynchrony (every stream
# operation here completes before the call returns).
#
# Usage: bash scripts/emu-driver/run.sh [--quick]    (--quick: steps 1 and 2 only)
#        EMU_THREADS=N  OS threads running blocks (default: all cores)
#        EMU_LOCKED=1   cargo --locked (CI)
#        EMU_REDZONE=1  check every allocation's red zones after every launch (slower)
#        EMU_TRACE=1    print launches, captures, graph launches, allocations and frees
# Time on 2 cores: see the sections of the last clean-clone CI log (bench/logs/ci-clean-clone.log);
# the self-test and the tiny runs are most of it, the target/emu build reuses the kernel images
# of the CI's debug build (target/kernel-cache).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
start=$SECONDS
lap() { echo "-- $1: $((SECONDS - t0)) s"; }

t0=$SECONDS
bash "$here/build.sh" "$root/target/emu-driver"
lap "emulated driver built"
echo "== the emulated driver's own checks (scripts/emu-driver/selfcheck.cpp)"
lib="$root/target/emu-driver/libcuda.so.1"
g++ -std=c++20 -O1 "$here/selfcheck.cpp" -o "$root/target/emu-driver/selfcheck" -ldl
# loaded at process start in everything below (build.sh: its thread-locals are initial-exec, so a
# later dlopen of it alone would fail); cudarc's and build.rs's dlopen("libcuda.so.1") then find
# it by its soname
export LD_PRELOAD="$lib"
"$root/target/emu-driver/selfcheck" "$lib" basic 2>/dev/null
"$root/target/emu-driver/selfcheck" "$lib" uaf 2>/dev/null
"$root/target/emu-driver/selfcheck" "$lib" pdl 2>/dev/null
"$root/target/emu-driver/selfcheck" "$lib" streams 2>/dev/null
EMU_STREAM_ORDER=side-late "$root/target/emu-driver/selfcheck" "$lib" side-late 2>/dev/null
EMU_STREAM_ORDER=main-late "$root/target/emu-driver/selfcheck" "$lib" main-late 2>/dev/null
EMU_REDZONE=1 "$root/target/emu-driver/selfcheck" "$lib" redzone 2>/dev/null
export LD_LIBRARY_PATH="$root/target/emu-driver${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CARGO_TARGET_DIR="$root/target/emu" REQUIRE_CUDA_KERNELS=1
# --no-default-features: no dataset download (ureq, rustls: the longest chain of dependencies to
# compile, ≈ 30 s of the 2-core build); the runs below read the data from disk (--no-download)
flags=(--no-default-features)
[[ -n "${EMU_LOCKED:-}" ]] && flags+=(--locked)

t0=$SECONDS
cargo build --release "${flags[@]}" --all-targets
lap "cargo build (target/emu, cfg cuda_driver)"

echo "== src/gpu tests (runtime, smoke kernels, events, graphs) on the emulated driver, and the build without the download feature"
t0=$SECONDS
cargo test --release "${flags[@]}" --lib -- --test-threads 1 gpu:: download:: 2>&1 | tee "$CARGO_TARGET_DIR/emu-gpu-tests.log"
lap "src/gpu tests"

echo "== tiny runs: recorded as CUDA graphs = op by op, and the warm-up's conv autotune keeps the chosen path's steps (bit for bit)"
t0=$SECONDS
cargo test --release "${flags[@]}" --bin speedrun recipe_tests::gpu_ -- --nocapture --test-threads 1
lap "recorded vs op-by-op run, autotune"

# the recorded step's weight gradients run on a second stream (Gpu::overlap): the same two
# checks with the streams' work reordered as the GPU could (README.md, "Stream order"), where a
# missing fork or join changes the numbers
echo "== the overlapped weight gradients with the streams reordered (EMU_STREAM_ORDER)"
t0=$SECONDS
for order in side-late main-late; do
    EMU_STREAM_ORDER=$order cargo test --release "${flags[@]}" --lib -- --test-threads 1 gpu::tests::overlapped
    EMU_STREAM_ORDER=$order cargo test --release "${flags[@]}" --bin speedrun recipe_tests::gpu_recorded_run_equals_op_by_op_run -- --test-threads 1
done
lap "stream orders"

[[ "${1:-}" == "--quick" ]] && { echo "== emulated GPU (quick) green in $((SECONDS - start)) s"; exit 0; }

echo "== the GPU self-test (every kernel vs the CPU reference, whole step, recorded step)"
t0=$SECONDS
# at batch 32 (the GPU's self-test: 64): the same kernels, paths and host code at half the
# emulated work (the conv checks were most of this step's ≈ 6 minutes on CI's 2 cores)
SPEEDRUN_SELFTEST_BATCH=32 SPEEDRUN_SELFTEST_TIMES=1 cargo test --release "${flags[@]}" --lib selftest::tests::gpu_matches_cpu_reference -- --exact --nocapture
lap "self-test"

data="${CIFAR10_DIR:-$root/../shared/cifar10/cifar-10-batches-bin}"
if [[ -f "$data/data_batch_1.bin" ]]; then
    # wmma convs here: the sm_80 kernel's lane-by-lane emulation (mma.sync, ldmatrix) costs ~7x
    # the whole-tile wmma shim, and the two steps above already run it through the host code.
    # --epochs 0.5: 5 steps (the first op by op, then recorded and replayed) and the 6-view
    # evaluation, before and after the warm-up run: the pipeline end to end at half the emulated
    # time of the smoke's 10 steps
    echo "== speedrun --smoke --epochs 0.5 on the emulated GPU (SPEEDRUN_CONV=wmma)"
    t0=$SECONDS
    SPEEDRUN_CONV=wmma "$CARGO_TARGET_DIR/release/speedrun" --smoke --epochs 0.5 --no-download --data-dir "$data"
    lap "speedrun --smoke"
elif [[ "${CIFAR10_REQUIRED:-}" == 1 ]]; then
    echo "CIFAR10_REQUIRED=1 but there is no CIFAR-10 in $data" >&2
    exit 1
else
    echo "== speedrun --smoke skipped: no CIFAR-10 in $data"
fi
echo "== emulated GPU green in $((SECONDS - start)) s"
