#!/usr/bin/env bash
# What a GPU session runs on the lent machine, in order of value (../shared/docs/GPU.md).
# The machine has no Rust and no network: build and pack here with bench/prepare-gpu.sh (two
# builds, the data in two packs of under 64 MiB, one per device call), then carry data/pk1 and
# run `bash bench/gpu-session.sh unpack data/pk1` there, later data/pk2 likewise, and run, e.g.:
#   bash bench/gpu-session.sh selftest      # every kernel + one training step vs the CPU reference
#   bash bench/gpu-session.sh bench         # per-kernel timings against their floors
#   bash bench/gpu-session.sh one           # one timed run with the per-epoch table
#   bash bench/gpu-session.sh runs 25       # 25 seeded runs: statistics + JSON (more flags after N
#                                           # go to the trainer, e.g. runs 25 --tta-frac 0.2, and
#                                           # name its JSON: runs-tta-frac-0.2.json)
#   SPEEDRUN_CONV=mma128 bash bench/gpu-session.sh runs 25   # pinned to the 64×64-warp-tile convs
#                                           # (SPEEDRUN_CONV=mma,mma128: tuned over those two only)
#                                           # (unpinned, the warm-up times mma, mma128, img, on
#                                           # an H100/H200 wgmma, wgmma2, wgmmap, tma and tma4, and mixed (each GEMM's
#                                           # fastest of those), and keeps the fastest whose
#                                           # accuracy agrees; pin SPEEDRUN_CONV=mma if the
#                                           # selftest shows "(mma128)" or "(wgmma)" FAIL lines,
#                                           # list SPEEDRUN_CONV=mma,mma128,img,wgmma,mixed if
#                                           # only "(wgmma2)" / "(wgmmap)" / "(tma)" / "(tma4)" lines fail)
#   bash bench/gpu-session.sh first         # selftest, bench, one run, one --no-graph, one with the
#                                           # epilogue sums off, one with wmma convs
#   bash bench/gpu-session.sh airbench 25   # the anchor, same GPU, same images (see below)
#   bash bench/gpu-session.sh ncu           # Nsight Compute on the kernels with the largest gaps
#                                           # to their floor: one bench line each
#                                           # (SPEEDRUN_BENCH_ONLY), its kernel's first launch:
#                                           # stall reasons, L2/DRAM traffic, occupancy (≈ 2 min)
#   SPEEDRUN_BIN=target/base/release/speedrun bash bench/gpu-session.sh bench
#                                           # another build: prepare-gpu.sh's baseline (BASE), the
#                                           # binary of the last GPU logs, timed on this machine
# The anchor: fetch KellerJordan/cifar10-airbench with the search tool's fetch, write its
# airbench94_muon.py into ./airbench/ (git-ignored, never committed) and carry that folder.
# This step converts our binary files into its train.pt/test.pt (bench/cifar_to_pt.py), so both
# trainers see the same 50,000 training and 10,000 test images, and runs it N times after its
# own warm-up run (its run count is set with sed on a temporary copy).
# Every step writes its raw log under $OUT (the device tool brings it back) with the GPU, driver
# and command at its top; commit those logs verbatim under bench/logs/. The side-by-side report
# (issue 4's ratio and accuracy delta, read from the two logs) is made here afterwards:
#   python3 bench/compare.py <runs.json> <airbench log> > bench/logs/DATE-<gpu>-compare.log
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
BIN=${SPEEDRUN_BIN:-./target/release/speedrun}
what=${1:-selftest}
case "$what" in selftest|bench|one|runs|first|airbench|ncu|unpack) ;; *)
  echo "unknown step $what (unpack DIR | selftest | bench | one | runs N | first | airbench N | ncu)" >&2; exit 2 ;; esac
if [ "$what" = unpack ]; then
  # a pack from bench/prepare-gpu.sh: the CIFAR-10 files into data/cifar-10-batches-bin, and
  # speedrun.xz / speedrun-base.xz into target/release / target/base/release
  dir=${2:?unpack needs the pack folder}
  python3 bench/pack_cifar.py unpack "$dir" data/cifar-10-batches-bin || exit 1
  for b in speedrun speedrun-base; do
    [ -f "$dir/$b.xz" ] || continue
    dst=target/release/speedrun; [ "$b" = speedrun-base ] && dst=target/base/release/speedrun
    mkdir -p "$(dirname "$dst")"
    python3 -c 'import lzma,sys; open(sys.argv[2],"wb").write(lzma.open(sys.argv[1]).read())' "$dir/$b.xz" "$dst" && chmod +x "$dst" || exit 1
    echo "unpacked $dst"
  done
  exit 0
fi
log="$OUT/$(date -u +%Y%m%d-%H%M%S)-$what.log"
{
  echo "# command: bench/gpu-session.sh $*"
  echo "# date: $(date -u)"
  echo "# env: SPEEDRUN_CONV=${SPEEDRUN_CONV-} SPEEDRUN_EPILOGUE_SUMS=${SPEEDRUN_EPILOGUE_SUMS-} SPEEDRUN_PDL=${SPEEDRUN_PDL-} SPEEDRUN_OVERLAP=${SPEEDRUN_OVERLAP-} (unset: the defaults); binary $BIN"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "# nvidia-smi unavailable"
  # what else loads the machine (airbench launches from Python, so a busy CPU slows it; its
  # 2026-11-27 timings ran 1.5x slower than the day before with nothing here to say why)
  echo "# load: $(uptime 2>&1)"
  nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader 2>&1 | sed 's/^/# gpu process: /'
  ps -eo pid,pcpu,etimes,args --sort=-pcpu 2>/dev/null | head -6 | cut -c1-160 | sed 's/^/# top: /'
} > "$log"
case "$what" in
  selftest) $BIN selftest 2>&1 | tee -a "$log"
            # a failure with programmatic dependent launch or the weight gradients on a second
            # stream (the defaults since the seventeenth session): once more without both, which
            # tells a missing wait or event (then train with both off) from a kernel that is
            # wrong either way
            if [ "${PIPESTATUS[0]}" != 0 ] && [ -z "${SPEEDRUN_PDL-}${SPEEDRUN_OVERLAP-}" ]; then
              echo "# selftest failed: again with SPEEDRUN_PDL=0 SPEEDRUN_OVERLAP=0" | tee -a "$log"
              SPEEDRUN_PDL=0 SPEEDRUN_OVERLAP=0 $BIN selftest 2>&1 | tee -a "$log"
            fi ;;
  bench) $BIN bench 2>&1 | tee -a "$log"
         status=${PIPESTATUS[0]}
         # a fault in a wgmma2, wgmmap, tma or tma4 kernel (the newest) loses the context and every line
         # after it (theirs and mixed's): once more without them
         if [ "$status" != 0 ] && [ -z "${SPEEDRUN_CONV-}" ]; then
           echo "# bench failed: again with SPEEDRUN_CONV=mma,mma128,img,wgmma,mixed (no wgmma2, wgmmap, tma, tma4)" | tee -a "$log"
           SPEEDRUN_CONV=mma,mma128,img,wgmma,mixed $BIN bench 2>&1 | tee -a "$log"
           status=${PIPESTATUS[0]}
         fi ;;
  one) $BIN --no-download --csv "$OUT/curves.csv" 2>&1 | tee -a "$log" ;;
  runs) # the JSON named after the flags past N (runs.json, runs-tta-frac-0.2.json, ...), so
        # that two runs steps in one call keep both
        tag=$(printf '%s' "${*:3}" | tr -c 'A-Za-z0-9.' '-' | sed 's/^-*//; s/-*$//')
        json="$OUT/runs${tag:+-$tag}.json"
        $BIN --no-download --runs "${2:-25}" "${@:3}" --json "$json" 2>&1 | tee -a "$log"
        status=${PIPESTATUS[0]}
        # a failure while tuning over every path (a fault in an sm_90a kernel loses the
        # context): once more without wgmma2, wgmmap, tma and tma4, then without wgmma too, rather than losing
        # the call
        for paths in mma,mma128,img,wgmma,mixed mma,mma128,mixed; do
          if [ "$status" != 0 ] && [ -z "${SPEEDRUN_CONV-}" ] && ! grep -q "^kernel autotune" "$log"; then
            echo "# the run failed before its autotune ended: again with SPEEDRUN_CONV=$paths" | tee -a "$log"
            SPEEDRUN_CONV=$paths $BIN --no-download --runs "${2:-25}" "${@:3}" --json "$json" 2>&1 | tee -a "$log"
            status=${PIPESTATUS[0]}
          fi
        done ;;
  first) { $BIN selftest | tee "$OUT/selftest.txt"; echo "# selftest exit status: ${PIPESTATUS[0]}";
           # the runs below need a working conv path: if only mma lines failed, train on wmma
           if grep -q "(mma).*FAIL" "$OUT/selftest.txt" && ! grep -q "(wmma).*FAIL" "$OUT/selftest.txt"; then
             echo "# mma conv checks FAILED, wmma passed: the runs below use SPEEDRUN_CONV=wmma"; export SPEEDRUN_CONV=wmma; fi
           $BIN bench; echo "# bench exit status: $?";
           $BIN --no-download --csv "$OUT/curves.csv"; echo "# run exit status: $?";
           $BIN --no-download --no-graph; echo "# --no-graph run exit status: $?";
           echo "# SPEEDRUN_EPILOGUE_SUMS=0 (the mma convs' BatchNorm sums as separate reductions)";
           SPEEDRUN_EPILOGUE_SUMS=0 $BIN --no-download; echo "# sums-off run exit status: $?";
           echo "# SPEEDRUN_CONV=wmma (the wmma convs on this GPU)"; SPEEDRUN_CONV=wmma $BIN --no-download; } 2>&1 | tee -a "$log" ;;
  ncu)
    # bench line | kernel (exact name, or regex:...): the largest gaps of the 2026-11-27 mixed
    # step profile, those the third H200 session's 200 s did not reach first (≈ 45 s each), then
    # those it profiled (bench/logs/2026-11-27-h200-854d170-ncu.log; bench/NOTES.md says why each);
    # the wgmma2 forward at layer 2 beside wgmma's: does a second block per SM fill the issue slots?
    # First (sixteenth session): the 128×256 wgmma forward at layer 2 with its epilogue (the
    # shared-memory loop), without it (the bench's "main loop" line) and with the former register
    # epilogue, unrolled (132 KB of code): ≈ 20 µs per tile outside the K loop by the bench
    # lines' arithmetic (bench/NOTES.md); the stall reasons and the tensor pipe's busy share say
    # where (the metrics by name: the WarpStateStats section prints no breakdown in text).
    # Then (eighteenth session) the pooled forwards that now pool in registers: img at layer 0
    # (issue-bound at 56.5% in the fourteenth session's ncu; now tensor-bound?) and wgmmap at
    # layer 2 (its register epilogue, one shuffle per value pair).
    command -v ncu > /dev/null || { echo "ncu is not on PATH" | tee -a "$log"; exit 2; }
    status=0
    stalls=sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active
    # no_instruction: the instruction cache (the 128×256 forwards are 132 KB of SASS, their
    # epilogue unrolled: bench/logs/2026-11-27-sass-sizes.log); membar: fence_proxy_async
    for r in long_scoreboard barrier wait math_pipe_throttle short_scoreboard mio_throttle lg_throttle not_selected \
             no_instruction membar dispatch_stall; do
      stalls="$stalls,smsp__average_warps_issue_stalled_${r}_per_issue_active.ratio"
    done
    while IFS='|' read -r line kern; do
      echo "## bench line \"$line\", kernel $kern" | tee -a "$log"
      SPEEDRUN_BENCH_ONLY="$line" timeout 240 ncu --target-processes all -k "$kern" --launch-count 1 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        --section SchedulerStats --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
        --metrics "$stalls" \
        "$BIN" bench 2>&1 | tee -a "$log"
      s=${PIPESTATUS[0]}; [ "$s" = 0 ] || { status=$s; echo "# exit status of this target: $s" | tee -a "$log"; }
    done <<'TARGETS'
conv3x3 fwd wgmma [2]|conv3x3_fwd_wgmma_f16
conv3x3 fwd main loop wgmma [2]|conv3x3_fwd_wgmma_f16
conv3x3 fwd img [0]|conv3x3_fwd_img_f16
conv3x3 fwd wgmmap [2]|conv3x3_fwd_wgmma_p_f16
conv3x3 fwd register epilogue wgmma [2]|conv3x3_fwd_wgmma_f16
conv3x3 wgrad+dgrad+sums tma [3]|conv3x3_dgrad_wgmma_mc_f16
pre_bwd [3]|chan_reduce_f16
pre_bwd unpooled [0]|pre_bwd_dx_f16
conv3x3 wgrad+dgrad+sums mma128 [0]|regex:conv3x3_dgrad
conv3x3 fwd wgmma2 [2]|conv3x3_fwd_wgmma2_f16
conv3x3 fwd tma [3]|conv3x3_fwd_wgmma_mc_f16
TARGETS
    ;;
  airbench)
    [ -f airbench/airbench94_muon.py ] || { echo "airbench/airbench94_muon.py missing (fetch and carry it)" >&2; exit 2; }
    # an earlier attempt cut off by a timeout may have left its Python or torch.compile workers
    # running (they slow this one): stop them, and say so in the log
    left=$(pgrep -f '\.run\.py|_inductor/compile_worker' || true)
    if [ -n "$left" ]; then
      echo "# stopping leftovers of an earlier run: $(ps -o pid=,etimes=,args= -p "$(echo $left | tr ' ' ',')" | cut -c1-120 | tr '\n' ';')" | tee -a "$log"
      kill $left 2>/dev/null; sleep 2; kill -9 $left 2>/dev/null
    fi
    python3 bench/cifar_to_pt.py data/cifar-10-batches-bin airbench/cifar10 2>&1 | tee -a "$log"
    sed -E "s/for run in range\([0-9]+\)/for run in range(${2:-25})/" airbench/airbench94_muon.py > airbench/.run.py
    (cd airbench && python3 .run.py) 2>&1 | tee -a "$log" ;;
esac
last=${PIPESTATUS[0]}
# the trainer's exit status (the runs and bench steps set it above: their last pipeline may be a
# test, not the run)
[ "$what" = runs ] || [ "$what" = bench ] || [ "$what" = ncu ] || status=$last
echo "# exit status: $status" >> "$log"
exit "$status"
