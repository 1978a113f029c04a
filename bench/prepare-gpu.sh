#!/usr/bin/env bash
# Everything a GPU session needs built and packed here, before its first device call (the lent
# machine has no Rust and no network; each call carries at most 64 MiB). Run at a committed HEAD:
#   bash bench/prepare-gpu.sh            # BASE=<commit> to choose the baseline, BASE= for none
# It builds
#   target/release/speedrun       the default build (REQUIRE_CUDA_KERNELS=1)
#   target/base/release/speedrun  the same at BASE (default 854d170, the binary of the last GPU
#                                 logs), so that the changes since are measured against it on
#                                 the same machine in the same session (a git worktree under
#                                 target/, removed after the build)
# and packs (the data only where its pack is missing: unpacking checks each file's SHA-256)
#   data/pk1: data_batch_1..3 + speedrun.xz
#   data/pk2: data_batch_4..5 + test_batch + speedrun-base.xz
# Then, on the device (bench/gpu-session.sh has the steps; g=bench/gpu-session.sh):
#   call 1, carry ["data/pk1"]:
#     bash $g unpack data/pk1; bash $g selftest; bash $g bench
#   call 2, carry ["data/pk2", "airbench"] (./airbench/airbench94_muon.py, fetched, git-ignored):
#     bash $g unpack data/pk2; bash $g airbench 25; bash $g runs 25
#     (airbench first, on an idle machine; its warm-up, mostly torch.compile, took 169 s on the
#     fresh H200 of 2026-11-26, over 190 s on 2026-11-27's (cut at 200 s), 156 s on the third;
#     25 runs add about 40-55 s: give it `timeout 420` and the call 600 s. The device tool gave the third session's
#     calls 1 and 2 as 63 and 284 s of wall time, and its lease put the start at about 40 s)
#   call 3 if time is left: bash $g runs 25 --epochs 8.2; SPEEDRUN_BIN=target/base/release/speedrun bash $g bench
#     (a recipe point with the TTA shortcut now the default; the baseline's per-kernel lines
#     beside call 1's, same machine: together ≈ 70 s)
#   call 4 if time is left: timeout 200 bash $g ncu (stall reasons of the kernels with the
#     largest gaps, bench/NOTES.md "To measure"; ≈ 45 s per target: 4 of 7 in 200 s)
#   then here: python3 bench/compare.py <runs.json> <airbench log> (issue 4's side-by-side), and
#   python3 bench/levers.py <bench log> <base bench log> (each lever since the last GPU session:
#   predicted against measured, for bench/NOTES.md)
set -euo pipefail
cd "$(dirname "$0")/.."
src=${CIFAR10_DIR:-../shared/cifar10/cifar-10-batches-bin}
[ -f "$src/data_batch_1.bin" ] || { echo "no CIFAR-10 in $src" >&2; exit 1; }
[ -z "$(git status --porcelain --untracked-files=no)" ] || echo "warning: uncommitted changes; the binaries will say -dirty or an older commit" >&2
[ -d .cuda-venv ] || bash scripts/install-cuda-toolchain.sh
REQUIRE_CUDA_KERNELS=1 cargo build --release --locked
base=${BASE-854d170}
if [ -n "$base" ]; then
    wt=target/base-src
    [ -e "$wt" ] && git worktree remove --force "$wt" 2>/dev/null; rm -rf "$wt"; git worktree prune
    git worktree add --detach "$wt" "$base"
    ln -s "$PWD/.cuda-venv" "$wt/.cuda-venv"
    (cd "$wt" && REQUIRE_CUDA_KERNELS=1 CARGO_TARGET_DIR="$OLDPWD/target/base" cargo build --release --locked)
    git worktree remove --force "$wt"
fi
py=python3
"$py" -c 'import numpy' 2>/dev/null || {
    [ -x /tmp/npv/bin/python3 ] || { python3 -m venv /tmp/npv && /tmp/npv/bin/pip install -q numpy; }
    py=/tmp/npv/bin/python3
}
pack() {  # pack DIR FILE...: the files whose pack is not there yet
    local dir=$1 f; shift
    mkdir -p "$dir"
    for f in "$@"; do [ -f "$dir/$f.pk" ] || "$py" bench/pack_cifar.py pack "$src" "$dir" "$f"; done
}
pack data/pk1 data_batch_1.bin data_batch_2.bin data_batch_3.bin
pack data/pk2 data_batch_4.bin data_batch_5.bin test_batch.bin
rm -f data/pk1/*.xz data/pk2/*.xz
xz -9 -T2 -c target/release/speedrun > data/pk1/speedrun.xz
[ -z "$base" ] || xz -9 -T2 -c target/base/release/speedrun > data/pk2/speedrun-base.xz
du -sb data/pk1 data/pk2 | while read -r bytes dir; do
    if [ "$bytes" -gt $((64 * 1024 * 1024)) ]; then echo "$dir is $bytes bytes, over the 64 MiB a call carries" >&2; exit 1; fi
    echo "$dir: $bytes bytes"
done
echo "ready: $(git rev-parse --short HEAD)"
