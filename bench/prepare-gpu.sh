#!/usr/bin/env bash
# Everything a GPU session needs built and packed here, before its first device call (the lent
# machine has no Rust and no network; each call carries at most 64 MiB). Run at a committed HEAD:
#   bash bench/prepare-gpu.sh
# It builds
#   target/release/speedrun          the default build (REQUIRE_CUDA_KERNELS=1)
#   target/nofence/release/speedrun  the wgmma convs without fence.proxy.async
#                                    (SPEEDRUN_WGMMA_NO_PROXY_FENCE=1; bench/NOTES.md)
# and packs
#   data/pk1: data_batch_1..3 + speedrun.xz
#   data/pk2: data_batch_4..5 + test_batch + speedrun-nofence.xz
# Then, on the device (bench/gpu-session.sh has the steps; g=bench/gpu-session.sh):
#   call 1, carry ["data/pk1"]:
#     bash $g unpack data/pk1; bash $g selftest; bash $g bench
#   call 2, carry ["data/pk2", "airbench"] (./airbench/airbench94_muon.py, fetched, git-ignored):
#     bash $g unpack data/pk2; bash $g airbench 25; bash $g runs 25
#     (airbench first, on an idle machine; its warm-up, mostly torch.compile, took 169 s on the
#     fresh H200 of 2026-11-26 and over 190 s on 2026-11-27's (cut at 200 s), 85 s once cached;
#     25 runs add about 55 s: give it `timeout 400` and the call 600 s)
#   call 3 if time is left: SPEEDRUN_BIN=target/nofence/release/speedrun bash $g bench
#   then here: python3 bench/compare.py <runs.json> <airbench log> (issue 4's side-by-side)
set -euo pipefail
cd "$(dirname "$0")/.."
src=${CIFAR10_DIR:-../shared/cifar10/cifar-10-batches-bin}
[ -f "$src/data_batch_1.bin" ] || { echo "no CIFAR-10 in $src" >&2; exit 1; }
[ -z "$(git status --porcelain --untracked-files=no)" ] || echo "warning: uncommitted changes; the binaries will say -dirty or an older commit" >&2
[ -d .cuda-venv ] || bash scripts/install-cuda-toolchain.sh
REQUIRE_CUDA_KERNELS=1 cargo build --release --locked
SPEEDRUN_WGMMA_NO_PROXY_FENCE=1 CARGO_TARGET_DIR=target/nofence REQUIRE_CUDA_KERNELS=1 cargo build --release --locked
py=python3
"$py" -c 'import numpy' 2>/dev/null || {
    [ -x /tmp/npv/bin/python3 ] || { python3 -m venv /tmp/npv && /tmp/npv/bin/pip install -q numpy; }
    py=/tmp/npv/bin/python3
}
rm -rf data/pk1 data/pk2
"$py" bench/pack_cifar.py pack "$src" data/pk1 data_batch_1.bin data_batch_2.bin data_batch_3.bin
"$py" bench/pack_cifar.py pack "$src" data/pk2 data_batch_4.bin data_batch_5.bin test_batch.bin
xz -9 -T2 -c target/release/speedrun > data/pk1/speedrun.xz
xz -9 -T2 -c target/nofence/release/speedrun > data/pk2/speedrun-nofence.xz
du -sb data/pk1 data/pk2 | while read -r bytes dir; do
    if [ "$bytes" -gt $((64 * 1024 * 1024)) ]; then echo "$dir is $bytes bytes, over the 64 MiB a call carries" >&2; exit 1; fi
    echo "$dir: $bytes bytes"
done
echo "ready: $(git rev-parse --short HEAD)"
