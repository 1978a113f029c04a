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
        print(f"{name}: {len(ins)} instructions, {hmma} HMMA")
        for i, (a, s) in enumerate(ins):
            m = re.search(r"BRA.*?(0x[0-9a-f]+)", s)
            if not m:
                continue
            t = int(m.group(1), 16)
            if t < a and t in at and i + 1 - at[t] >= 10:
                body = ins[at[t] : i + 1]
                ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", x).split()[0].split(".")[0] for _, x in body)
                print(f"  loop {t:#x}-{a:#x}: {len(body)} instructions; HMMA {ops['HMMA']} LDSM {ops['LDSM']} "
                      f"LDGSTS {ops['LDGSTS']} LDG {ops['LDG']} STS {ops['STS']} BAR {ops['BAR']}; "
                      f"most: {ops.most_common(8)}")


if __name__ == "__main__":
    main()
