#!/usr/bin/env python3
"""Side by side: this trainer's runs (the JSON of `speedrun --runs N --json FILE`) against
airbench94_muon's (the log of `bench/gpu-session.sh airbench N`), on the numbers issues 4 and 6
ask for. Nothing is typed in: every figure is read from the two files.

    python3 bench/compare.py OURS.json AIRBENCH.log

Prints, for each trainer, the runs, the TTA accuracy (mean, std, min, max, runs >= 94%) and the
timed seconds (mean, std), then
  time ratio        our mean time / airbench's (issue 4: < 1; issue 6's target: <= 0.5)
  accuracy delta    our mean - airbench's, in points, with a 95% interval (normal approximation
                    of the difference of two means, Welch's standard error)
and whether each criterion of issue 4 holds: >= 25 runs each, our mean >= 94.0%, our mean >=
airbench's, our time below airbench's. Exit status 0 when the files were read (whatever the
verdict), 2 when one cannot be read.

The airbench log is its own table: per run, epoch rows and an `eval` row whose columns are
train_acc, val_acc, tta_val_acc, time_seconds; the run number stands in the first column of the
run's first row, and the warm-up run ("warmup") is not counted.
"""
import json
import math
import re
import sys

ROW = re.compile(r"^\|\s*([^|]*?)\s*\|\s*([^|]*?)\s*\|\s*([^|]*?)\s*\|\s*([^|]*?)\s*\|\s*([^|]*?)\s*\|\s*([^|]*?)\s*\|\s*$")


def stats(xs):
    n = len(xs)
    mean = sum(xs) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return {"n": n, "mean": mean, "std": std, "min": min(xs), "max": max(xs)}


def read_ours(path):
    """(device line, [(accuracy %, seconds)]) from a `--json` file."""
    with open(path) as f:
        d = json.load(f)
    runs = [(100.0 * r["correct"] / r["tested"], float(r["seconds"])) for r in d["runs"]]
    if not runs:
        raise ValueError(f"{path}: no runs")
    return d.get("device", "?"), runs


def read_airbench(path):
    """(GPU line, [(TTA accuracy %, seconds)]) from a gpu-session.sh airbench log."""
    gpu, run, runs = "?", None, []
    with open(path) as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("name, driver_version") and i + 1 < len(lines):
            gpu = lines[i + 1].strip()
        m = ROW.match(line)
        if not m:
            continue
        cols = m.groups()
        if cols[0] and cols[0] != "run":
            run = cols[0]
        if cols[1] == "eval":
            if run is None:
                raise ValueError(f"{path}:{i + 1}: an eval row before any run number")
            if run != "warmup":
                runs.append((100.0 * float(cols[4]), float(cols[5])))
    if not runs:
        raise ValueError(f"{path}: no timed airbench run (eval rows of runs other than the warm-up)")
    return gpu, runs


def compare(ours, theirs):
    """The report's lines and the verdicts (a dict of criterion -> bool)."""
    oa, ot = stats([a for a, _ in ours]), stats([t for _, t in ours])
    aa, at = stats([a for a, _ in theirs]), stats([t for _, t in theirs])
    se = math.sqrt(oa["std"] ** 2 / oa["n"] + aa["std"] ** 2 / aa["n"])
    delta, ratio = oa["mean"] - aa["mean"], ot["mean"] / at["mean"]
    lines = []
    for name, acc, sec, runs in (("this trainer", oa, ot, ours), ("airbench94_muon", aa, at, theirs)):
        hits = sum(1 for a, _ in runs if a >= 94.0)
        lines.append(
            f"{name:16} {acc['n']:3} runs  accuracy {acc['mean']:.3f} ± {acc['std']:.3f} % "
            f"({acc['min']:.2f}–{acc['max']:.2f}, {hits}/{acc['n']} ≥ 94%)  "
            f"time {sec['mean']:.4f} ± {sec['std']:.4f} s"
        )
    lines.append(f"time ratio        {ratio:.3f} (ours / airbench's mean time)")
    lines.append(f"accuracy delta    {delta:+.3f} points (95% interval {delta - 1.96 * se:+.3f} .. {delta + 1.96 * se:+.3f})")
    verdict = {
        "at least 25 runs each": oa["n"] >= 25 and aa["n"] >= 25,
        "our mean accuracy >= 94.0%": oa["mean"] >= 94.0,
        "our mean accuracy >= airbench's": oa["mean"] >= aa["mean"],
        "our mean time < airbench's": ratio < 1.0,
        "our mean time <= 0.5 x airbench's (issue 6)": ratio <= 0.5,
    }
    for k, v in verdict.items():
        lines.append(f"{'yes' if v else 'NO ':3}  {k}")
    return lines, verdict


def main(argv):
    if len(argv) != 3:
        print("usage: python3 bench/compare.py OURS.json AIRBENCH.log", file=sys.stderr)
        return 2
    try:
        device, ours = read_ours(argv[1])
        gpu, theirs = read_airbench(argv[2])
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        print(f"compare: {e}", file=sys.stderr)
        return 2
    print(f"this trainer:    {argv[1]}  ({device})")
    print(f"airbench94_muon: {argv[2]}  ({gpu})")
    name = gpu.split(",")[0].strip()
    if name and name != "?" and name not in device:
        print(f"warning: the airbench log's GPU ({name}) is not named in our device line: not the same GPU?")
    lines, _ = compare(ours, theirs)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
