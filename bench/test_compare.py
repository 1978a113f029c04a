"""Tests of bench/compare.py on small made-up inputs (run by .ci/run:
python3 -m unittest discover -s bench -p 'test_*.py')."""
import json
import os
import tempfile
import unittest

import compare

AIRBENCH_LOG = """# command: bench/gpu-session.sh airbench 2
name, driver_version, memory.total [MiB], clocks.max.sm [MHz]
NVIDIA H100 80GB HBM3, 580.1, 81559 MiB, 1980 MHz
|  run     |  epoch  |  train_acc  |  val_acc  |  tta_val_acc  |  time_seconds  |
|  warmup  |      0  |     0.1030  |   0.0752  |               |      111.2259  |
|          |   eval  |     0.9000  |   0.9000  |       0.9100  |      120.0000  |
|       0  |      0  |     0.7360  |   0.6224  |               |        0.1640  |
|          |   eval  |     0.9730  |   0.9342  |       0.9410  |        1.2000  |
|       1  |      0  |     0.7180  |   0.6401  |               |        0.1625  |
|          |   eval  |     0.9780  |   0.9337  |       0.9390  |        1.4000  |
Mean: 0.9400    Std: 0.0014
"""


def ours_json(runs):
    return {
        "device": "GPU NVIDIA H100 80GB HBM3, sm_90",
        "runs": [{"seed": i, "correct": c, "tested": 10000, "seconds": s} for i, (c, s) in enumerate(runs)],
    }


class Compare(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.log = os.path.join(self.dir.name, "airbench.log")
        with open(self.log, "w") as f:
            f.write(AIRBENCH_LOG)

    def tearDown(self):
        self.dir.cleanup()

    def test_airbench_log_counts_the_timed_runs_only(self):
        gpu, runs = compare.read_airbench(self.log)
        self.assertTrue(gpu.startswith("NVIDIA H100 80GB HBM3"))
        self.assertEqual(len(runs), 2)  # the warm-up's eval row is left out
        self.assertAlmostEqual(runs[0][0], 94.10)
        self.assertAlmostEqual(runs[1][1], 1.4)

    def test_ratio_delta_and_verdicts(self):
        ours = [(94.20, 0.6), (94.00, 0.6), (94.10, 0.6)]
        lines, verdict = compare.compare(ours, [(94.10, 1.2), (93.90, 1.4)])
        text = "\n".join(lines)
        self.assertIn("time ratio        0.462", text)  # 0.6 / 1.3
        self.assertIn("accuracy delta    +0.100 points", text)  # 94.1 - 94.0
        self.assertFalse(verdict["at least 25 runs each"])
        self.assertTrue(verdict["our mean accuracy >= 94.0%"])
        self.assertTrue(verdict["our mean accuracy >= airbench's"])
        self.assertTrue(verdict["our mean time < airbench's"])
        self.assertTrue(verdict["our mean time <= 0.5 x airbench's (issue 6)"])
        _, verdict = compare.compare(ours * 9, [(94.30, 1.2)] * 25)
        self.assertTrue(verdict["at least 25 runs each"])
        self.assertFalse(verdict["our mean accuracy >= airbench's"])

    def test_main_reads_both_files_and_refuses_bad_ones(self):
        path = os.path.join(self.dir.name, "ours.json")
        with open(path, "w") as f:
            json.dump(ours_json([(9410, 0.61), (9395, 0.62)]), f)
        self.assertEqual(compare.main(["compare.py", path, self.log]), 0)
        self.assertEqual(compare.main(["compare.py", path, os.path.join(self.dir.name, "missing.log")]), 2)
        empty = os.path.join(self.dir.name, "empty.log")
        with open(empty, "w") as f:
            f.write("|  run  |  epoch  |  a  |  b  |  c  |  d  |\n")
        with self.assertRaises(ValueError):
            compare.read_airbench(empty)
        self.assertEqual(compare.main(["compare.py", path, empty]), 2)
        self.assertEqual(compare.main(["compare.py", path]), 2)


if __name__ == "__main__":
    unittest.main()
