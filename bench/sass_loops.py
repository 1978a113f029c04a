#!/usr/bin/env python3
"""Instruction mix of a kernel's main loop(s) from its SASS (no GPU needed): the proxy used to
compare conv kernel versions before timing them. Backward branches delimit the loops; for each
loop of at least 10 instructions (the set-up's small while loops are left out): its address
range, instruction count, and the most frequent opcodes.

  cuobjdump -sass target/release/build/cifar-speedrun-*/out/conv.sm_90.cubin > conv.sass
  python3 bench/sass_loops.py conv.sass conv3x3_fwd_mma

cuobjdump comes with the nvidia-cuda-cuobjdump wheel (PyPI)."""
import collections
import re
import sys


def hot_path(body):
    """One iteration of a loop whose body holds rarely taken blocks (a tile's set-up, its
    epilogue): over the paths from the loop head to its back edge, taking forward branches only
    (an inner loop's body counts once), the one with the most HMMA (mma.sync) or HGMMA (wgmma),
    then the most LDGSTS, then the fewest instructions. Returns (MMAs, LDGSTS, instructions) of
    that path."""
    addr = [a for a, _ in body]
    at = {a: i for i, a in enumerate(addr)}
    best = [None] * (len(body) + 1)
    best[len(body)] = (0, 0, 0)  # past the back edge
    for i in range(len(body) - 1, -1, -1):
        s = body[i][1]
        op = re.sub(r"^@!?U?P\w+\s+", "", s).split()[0]
        me = (1 if op.startswith(("HMMA", "HGMMA")) else 0, 1 if op.startswith("LDGSTS") else 0)
        succ = []
        m = re.search(r"BRA.*?(0x[0-9a-f]+)", s)
        cond = s.lstrip().startswith("@")
        if m and not s.lstrip().startswith("@!PT"):
            tgt = int(m.group(1), 16)
            if tgt > addr[i] and tgt in at:
                succ.append(at[tgt])
            elif tgt > addr[-1]:
                pass  # leaves the loop
            if cond or i == len(body) - 1:
                succ.append(i + 1)
        elif op == "EXIT" and not cond:
            pass
        else:
            succ.append(i + 1)
        cands = [best[j] for j in succ if best[j] is not None]
        if not cands:
            continue
        h, g, n = max(cands, key=lambda c: (c[0], c[1], -c[2]))
        best[i] = (h + me[0], g + me[1], n + 1)
    return best[0] if best[0] else (0, 0, 0)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    text = open(sys.argv[1]).read()
    for f in re.split(r"\n\s*Function : ", text)[1:]:
        name = f.split("\n")[0].strip()
        if sys.argv[2] not in name:
            continue
        ins = []
        for line in f.split("\n"):
            m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
            if m:
                ins.append((int(m.group(1), 16), m.group(2)))
        at = {a: i for i, (a, _) in enumerate(ins)}
        hmma = sum("HMMA" in s for _, s in ins)
        hgmma = sum("HGMMA" in s for _, s in ins)
        print(f"{name}: {len(ins)} instructions, {hmma} HMMA" + (f", {hgmma} HGMMA" if hgmma else ""))
        for i, (a, s) in enumerate(ins):
            m = re.search(r"BRA.*?(0x[0-9a-f]+)", s)
            if not m:
                continue
            t = int(m.group(1), 16)
            if t < a and t in at and i + 1 - at[t] >= 10:
                body = ins[at[t] : i + 1]
                ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", x).split()[0].split(".")[0] for _, x in body)
                print(f"  loop {t:#x}-{a:#x}: {len(body)} instructions; HMMA {ops['HMMA']} HGMMA {ops['HGMMA']} "
                      f"LDSM {ops['LDSM']} "
                      f"LDGSTS {ops['LDGSTS']} LDG {ops['LDG']} STS {ops['STS']} BAR {ops['BAR']}; "
                      f"most: {ops.most_common(8)}")
                if ops["HMMA"] or ops["HGMMA"]:
                    h, g, n = hot_path(body)
                    kind = "HMMA" if ops["HMMA"] else "HGMMA"
                    print(f"    hot path (most HMMA/HGMMA, then most LDGSTS, then fewest instructions; inner "
                          f"loops once): {n} instructions, {kind} {h} LDGSTS {g}")


if __name__ == "__main__":
    main()
