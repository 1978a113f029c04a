#!/usr/bin/env python3
"""What each conv kernel's epilogue costs, and what the persistent path changes, from one
`speedrun bench` log (the sixteenth session's question, bench/NOTES.md).

    python3 bench/epilogues.py bench.log

For every path and layer with both lines, prints the plain forward ("conv3x3 fwd P [l]") and its
"main loop" line (the same call with null outputs: no epilogue), their difference (the
epilogue) and its share of the plain line; the same for "wgrad+dgrad". Then, per layer, wgmmap's
plain lines against wgmma's and tma's (the persistent kernels against one block per tile).
Only figures the log holds; a line it lacks is left out, never filled in.
"""
import re
import sys

LINE = re.compile(r"^conv3x3 (fwd|wgrad\+dgrad|wgrad)( main loop)? (\S+) \[(\d)\]\s+\S+.*?\s([\d.]+) us\s")


def read(text):
    """{(gemm, main_loop, path, layer): microseconds} of the conv lines in a bench log."""
    lines = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            gemm, main, path, layer, us = m.groups()
            lines[(gemm, main is not None, path, int(layer))] = float(us)
    return lines


def epilogue_rows(lines):
    """(gemm, path, layer, plain, main loop, epilogue, share) where both lines are there."""
    rows = []
    for (gemm, main, path, layer), us in sorted(lines.items()):
        if main:
            continue
        loop = lines.get((gemm, True, path, layer))
        if loop is not None:
            rows.append((gemm, path, layer, us, loop, us - loop, (us - loop) / us if us else 0.0))
    return rows


def persistent_rows(lines):
    """(gemm, layer, wgmmap, wgmma, tma) plain lines per layer where wgmmap has one."""
    rows = []
    for (gemm, main, path, layer), us in sorted(lines.items()):
        if main or path != "wgmmap":
            continue
        rows.append((gemm, layer, us, lines.get((gemm, False, "wgmma", layer)), lines.get((gemm, False, "tma", layer))))
    return rows


def report(text):
    lines = read(text)
    out = ["epilogues (plain line − main-loop line), µs:"]
    out.append(f"{'gemm':12} {'path':8} {'layer':>5} {'plain':>9} {'main loop':>9} {'epilogue':>9} {'share':>6}")
    for gemm, path, layer, plain, loop, epi, share in epilogue_rows(lines):
        out.append(f"{gemm:12} {path:8} {layer:>5} {plain:9.1f} {loop:9.1f} {epi:9.1f} {share:6.1%}")
    rows = persistent_rows(lines)
    if rows:
        out.append("persistent (wgmmap) against one block per tile, µs:")
        out.append(f"{'gemm':12} {'layer':>5} {'wgmmap':>9} {'wgmma':>9} {'tma':>9}")
        fmt = lambda v: f"{v:9.1f}" if v is not None else f"{'-':>9}"
        for gemm, layer, p, w, t in rows:
            out.append(f"{gemm:12} {layer:>5} {fmt(p)} {fmt(w)} {fmt(t)}")
    return "\n".join(out)


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        with open(argv[1]) as f:
            text = f.read()
    except OSError as e:
        print(f"epilogues.py: {e}", file=sys.stderr)
        return 1
    if not read(text):
        print(f"epilogues.py: no conv3x3 bench lines in {argv[1]}", file=sys.stderr)
        return 1
    print(report(text))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
