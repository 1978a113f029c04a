#!/usr/bin/env python3
"""Each lever built since the last GPU session, its predicted gain beside the one measured, from
the bench logs of one GPU session (bench/NOTES.md's rule: predicted before, measured after).

    python3 bench/levers.py NEW_BENCH_LOG [BASE_BENCH_LOG]

NEW_BENCH_LOG is `speedrun bench` of this commit's binary; BASE_BENCH_LOG the same of
bench/prepare-gpu.sh's baseline (BASE, 854d170 by default) on the same machine in the same
session (`SPEEDRUN_BIN=target/base/release/speedrun bash bench/gpu-session.sh bench`). Levers
that need the baseline are left out without it. Every figure is read from the logs; a line a
log lacks is reported as missing, never filled in. Gains are per training step, in ms,
negative where the step gets faster.

The autotune's counterfactuals (wgmma2, wgmmap, the input gradients' "+pass"): for each GEMM
of the mixed path's autotune line, the best time of every candidate against the best without
that family, times the GEMM's launches per step (the recipe's layers below), summed over the
GEMMs: what the family saves mixed, by the autotune's own timings.
"""
import re
import sys

# The recipe's conv layers (main.rs LAYERS): (H, W, Cin, Cout, pooled). A backward GEMM is named
# by its layer's input shape without the pool (the pooled layers' gradient arrives unpooled),
# so layers 3 and 4 share "7x7x256->256"; layer 0's input gradient runs only while the
# whitening bias trains (75 of 210 steps), in place of it now the shift gradient.
LAYERS = [(31, 31, 24, 64, True), (15, 15, 64, 64, False), (15, 15, 64, 256, True), (7, 7, 256, 256, False),
          (7, 7, 256, 256, True), (3, 3, 256, 256, False)]

# (name, session, predicted low, predicted high): ms per step (low = the larger saving).
PREDICTED = {
    "pdl": ("programmatic dependent launch", "17th", -0.25, -0.05),
    "pdl_frozen": ("programmatic dependent launch, bias frozen", "17th", -0.25, -0.05),
    "overlap": ("weight gradients on a second stream", "17th", -0.3, -0.05),
    "overlap_frozen": ("weight gradients on a second stream, bias frozen", "17th", -0.3, -0.05),
    "priority": ("the chain at the greatest priority, with the overlap", "17th", -0.1, 0.0),
    "muon_side": ("Muon for layers 2-5 on the second stream mid-backward", "19th", -0.15, -0.05),
    "muon_side_frozen": ("Muon for layers 2-5 on the second stream, bias frozen", "19th", -0.15, -0.05),
    "gelu": ("GELU/GELU' without erff/expf (15th); act_f16's parameters once per thread (19th)", "15-19th",
             -0.44, -0.215),
    "reduce": ("split-K slice sums by warps (16th), in float4 loads (wgrad_reduce4_f32, 19th)", "16-19th", -0.1, -0.03),
    "shift": ("whitening bias gradient without layer 0's input gradient (15th), GELU′ by the stem (19th), "
              "per bias step", "15-19th", -0.48, -0.29),
    "wgmma2": ("wgmma2 as a mixed candidate", "15th", -0.4, -0.1),
    "wgmmap": ("wgmmap (persistent) as a mixed candidate", "16th", -0.6, -0.05),
    "dpass": ("input gradients' sums in a separate pass (+pass) as a mixed candidate", "14th", -0.3, -0.15),
    "loop_epilogue": ("wgmma forwards' loop epilogue, at mixed's picks", "16th", -0.55, -0.3),
    "img_pool": ("img forward (layer 0) pools in registers, no shuffles", "18th", -0.2, -0.1),
    "mma_pool": ("mma/mma128 pooled forwards pool in registers (pays if mixed picks them)", "18th", -0.1, 0.0),
    "norms": ("Muon's norms by a block (muon_norms_f64)", "18th", -0.017, -0.01),
    "stem": ("the stem at 8 blocks/SM (18th), with the bias and GELU: no act_f16 at layer 0 (19th)", "18-19th",
             -0.12, -0.03),
    "unpool_idx": ("pre_bwd_dx_f16's unpooling without 64-bit divisions", "18th", -0.06, -0.02),
    "bn_reduce8": ("the +pass BatchNorm statistics in 16-byte loads (bn_reduce8_f16)", "19th", -0.035, -0.02),
}

STEP = re.compile(r"^(train step[^\n]*?)\s+batch \d+\s+([\d.]+) us\s")
BRACKET = re.compile(r"^(\S.*?\])\s+\S.*?\s([\d.]+) us\s")
STEM = re.compile(r"^(stem(?:\+GELU')?)\s+\S+\s+([\d.]+) us\s")
PICK = re.compile(r"^  mixed (fwd|wgrad|dgrad) (\d+x\d+x\d+->\d+)( pool)?: (\S+) \((.*) ms\)\s*$")
PROFILE_ROW = re.compile(r"^  (\w+)\s+(\d+) x\s+([\d.]+) us\s")


def read(text):
    """The lines of a bench log: {name: µs} for the step and bracketed lines, the mixed path's
    picks {(gemm, shape, pooled): (pick, {candidate: ms})} and the profiles
    {path or None: {kernel: µs}} (None: the default path's, first)."""
    lines, picks, profiles = {}, {}, {}
    profile, header = None, None
    for line in text.splitlines():
        m = STEP.match(line) or BRACKET.match(line) or STEM.match(line)
        if m:
            lines.setdefault(m.group(1), float(m.group(2)))
        m = PICK.match(line)
        if m:
            gemm, shape, pool, pick, cands = m.groups()
            times = {}
            for c in cands.split(", "):
                name, _, t = c.rpartition(" ")
                times[name] = float(t)
            picks[(gemm, shape, pool is not None)] = (pick, times)
        if re.match(r"^\((\w+) convs\)$", line):
            header = line[1:].split()[0]
            continue
        if line.startswith("train step profile:"):
            profile = profiles.setdefault(header, {})
            header = None
            continue
        m = PROFILE_ROW.match(line)
        if m and profile is not None:
            profile[m.group(1)] = float(m.group(3))
            continue
        if not line.startswith("  "):
            profile = None
    return lines, picks, profiles


def launches(gemm, shape, pooled):
    """The GEMM's launches per step (bias-training steps for layer 0's input gradient)."""
    n = 0
    for h, w, cin, cout, pool in LAYERS:
        if f"{h}x{w}x{cin}->{cout}" != shape:
            continue
        if gemm == "fwd" and pool != pooled:
            continue
        n += 1
    return n


def family_saving(picks, member, pooled_only=False):
    """Σ launches × (best candidate − best candidate not `member`(name)) over the GEMMs where
    the family has a candidate (pooled_only: the pooled forwards only), in ms; None if it has
    none."""
    total, seen = 0.0, False
    for (gemm, shape, pooled), (_, times) in picks.items():
        if pooled_only and not pooled:
            continue
        inside = {c: t for c, t in times.items() if member(gemm, c)}
        outside = [t for c, t in times.items() if not member(gemm, c)]
        if not inside or not outside:
            continue
        seen = True
        total += launches(gemm, shape, pooled) * (min(times.values()) - min(outside))
    return total if seen else None


def measured(new, base):
    """{lever: (ms, how)} for every lever whose lines the logs hold."""
    lines, picks, profiles = new
    out = {}
    step = "train step, graph, mixed convs"
    for key, off in [("pdl", "no PDL"), ("overlap", "no overlap"), ("priority", "overlap without priority"),
                     ("muon_side", "Muon on the main stream")]:
        for k, name in [(key, step), (key + "_frozen", step + ", bias frozen")]:
            if name in lines and f"{name}, {off}" in lines:
                out[k] = ((lines[name] - lines[f"{name}, {off}"]) / 1000, f'"{name}" − "…, {off}"')
    mixed = profiles.get("mixed")
    if base is not None:
        b_lines, b_picks, b_profiles = base
        b_mixed = b_profiles.get("mixed")
        # since the 19th session the stem activates layer 0's input: the new profile's act_f16
        # has one launch fewer, which the bench's "act [0]" line (act_f16 there by itself) is
        act0 = lines.get("act [0]")
        if mixed and b_mixed:
            ks = ["pre_bwd_dx_f16", "act_f16"]
            if all(k in mixed and k in b_mixed for k in ks):
                d = sum(mixed[k] - b_mixed[k] for k in ks) + (act0 or 0.0)
                how = "mixed profile, new − base: " + " + ".join(ks) + (' (new: + "act [0]")' if act0 else "")
                out["gelu"] = (d / 1000, how)
            k = "muon_norms_f64"
            if k in mixed and k in b_mixed:
                out["norms"] = ((mixed[k] - b_mixed[k]) / 1000, f"mixed profile, new − base: {k}")
            # since the 19th session the slices' sums are wgrad_reduce4_f32 where len % 4 == 0
            k = "wgrad_reduce_f32"
            if k in b_mixed and (k in mixed or "wgrad_reduce4_f32" in mixed):
                d = mixed.get(k, 0.0) + mixed.get("wgrad_reduce4_f32", 0.0) - b_mixed[k]
                out["reduce"] = (d / 1000, f"mixed profile: new {k} + wgrad_reduce4_f32 − base {k}")
            # the statistics' extra pass: a new kernel name where the base has the old one; only
            # where both profiles have such a pass (mixed picks "+pass" forwards in both)
            if "bn_reduce8_f16" in mixed and "bn_reduce_f16" in b_mixed:
                d = mixed["bn_reduce8_f16"] + mixed.get("bn_reduce_f16", 0.0) - b_mixed["bn_reduce_f16"]
                out["bn_reduce8"] = (d / 1000, "mixed profile: new bn_reduce8_f16 (+ bn_reduce_f16) − base bn_reduce_f16")
            # the profiled step trains the whitening bias: since the 19th session its stem is
            # stem_fwd_grad_f16 (GELU′ too, where the base wrote the raw output)
            k = "stem_fwd_f16"
            new_k = next((n for n in ("stem_fwd_grad_f16", k) if n in mixed), None)
            if new_k and k in b_mixed:
                if act0 is not None:
                    how = f'mixed profile, new {new_k} − (base {k} + new "act [0]")'
                    out["stem"] = ((mixed[new_k] - b_mixed[k] - act0) / 1000, how)
                else:
                    out["stem"] = ((mixed[new_k] - b_mixed[k]) / 1000, f"mixed profile, new {new_k} − base {k}")
        k = "conv3x3 fwd img [0]"  # the same calls in both binaries; mixed takes img (+pass) there
        if k in lines and k in b_lines:
            out["img_pool"] = ((lines[k] - b_lines[k]) / 1000, f'"{k}", new − base')
        # the unpooling's own cost ("pre_bwd unpooled [l]" − "pre_bwd [l]", the pooled layers),
        # new against base: what the GELU approximation does to both lines cancels
        diffs = []
        for layer in (0, 2, 4):
            u, p = f"pre_bwd unpooled [{layer}]", f"pre_bwd [{layer}]"
            if all(k in lines and k in b_lines for k in (u, p)):
                diffs.append((lines[u] - lines[p]) - (b_lines[u] - b_lines[p]))
        if diffs:
            out["unpool_idx"] = (sum(diffs) / 1000, f'Σ ("pre_bwd unpooled [l]" − "pre_bwd [l]"), new − base, {len(diffs)} layers')
        old_dgrad = b_picks.get(("dgrad", "31x31x24->64", False))
        old_wgrad = b_picks.get(("wgrad", "31x31x24->64", False))
        if "conv3x3_shift_grad [0]" in lines and old_dgrad and old_wgrad:
            # the autotune times an input gradient as the whole op, its weight gradient included
            old = old_dgrad[1][old_dgrad[0]] - old_wgrad[1][old_wgrad[0]]
            # since the 19th session the stem gives GELU′ (the shift gradient's pass before):
            # its cost, "stem+GELU'" − "stem", is counted with the shift gradient
            extra, note = 0.0, ""
            if "stem+GELU'" in lines and "stem" in lines:
                extra, note = (lines["stem+GELU'"] - lines["stem"]) / 1000, ' + ("stem+GELU\'" − "stem")'
            out["shift"] = (
                lines["conv3x3_shift_grad [0]"] / 1000 + extra - old,
                f'"conv3x3_shift_grad [0]"{note} − base\'s picked layer-0 input gradient ({old:.3f} ms: dgrad − wgrad pick)',
            )
    fams = {
        "wgmma2": lambda g, c: c.split("+")[0] == "wgmma2",
        "wgmmap": lambda g, c: c.split("+")[0] == "wgmmap",
        "dpass": lambda g, c: g == "dgrad" and c.endswith("+pass"),
    }
    for key, member in fams.items():
        s = family_saving(picks, member)
        if s is not None:
            out[key] = (s, "mixed autotune: best − best without it, × launches per step")
    # the mma forwards' in-register pooling can only pay on mixed where they become its pick
    s = family_saving(picks, lambda g, c: g == "fwd" and c.split("+")[0] in ("mma", "mma128"), pooled_only=True)
    if s is not None:
        out["mma_pool"] = (s, "mixed autotune, pooled forwards: best − best without mma/mma128, × launches")
    diffs = []
    for layer, (h, w, cin, cout, pool) in enumerate(LAYERS):
        pick = picks.get(("fwd", f"{h}x{w}x{cin}->{cout}", pool))
        if not pick:
            continue
        path = pick[0].split("+")[0]
        plain, reg = f"conv3x3 fwd {path} [{layer}]", f"conv3x3 fwd register epilogue {path} [{layer}]"
        if plain in lines and reg in lines:
            diffs.append((lines[plain] - lines[reg]) / 1000)
    if diffs:
        out["loop_epilogue"] = (sum(diffs), f'Σ "conv3x3 fwd P [l]" − "…register epilogue P [l]" over {len(diffs)} layers')
    return out


def verdict(ms, low, high):
    if ms <= high:
        return "hit" if ms >= low else "beyond the range"
    return "less than predicted" if ms < 0 else "no gain"


def report(new_text, base_text=None):
    new = read(new_text)
    base = read(base_text) if base_text is not None else None
    got = measured(new, base)
    out = [f"{'lever':74} {'session':7} {'predicted ms':>14} {'measured':>9}  verdict"]
    for key, (name, session, low, high) in PREDICTED.items():
        rng = f"{low:+.3f}..{high:+.3f}"
        if key in got:
            ms, how = got[key]
            out.append(f"{name:74} {session:7} {rng:>14} {ms:+9.3f}  {verdict(ms, low, high)}")
            out.append(f"{'':74}   from {how}")
        else:
            needs_base = ("gelu", "reduce", "shift", "img_pool", "norms", "stem", "unpool_idx", "bn_reduce8")
            why = "needs the base log" if base is None and key in needs_base else "lines missing"
            out.append(f"{name:74} {session:7} {rng:>14} {'-':>9}  ({why})")
    lines = new[0]
    step = "train step, graph, mixed convs"
    if base is not None and step in lines and step in base[0]:
        out.append(f"whole step on mixed, new − base: {(lines[step] - base[0][step]) / 1000:+.3f} ms "
                   f"({base[0][step]:.1f} → {lines[step]:.1f} µs)")
    return "\n".join(out)


def main(argv):
    if len(argv) not in (2, 3):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    texts = []
    for path in argv[1:]:
        try:
            with open(path) as f:
                texts.append(f.read())
        except OSError as e:
            print(f"levers.py: {e}", file=sys.stderr)
            return 1
    if not read(texts[0])[0]:
        print(f"levers.py: no bench lines in {argv[1]}", file=sys.stderr)
        return 1
    print(report(*texts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
