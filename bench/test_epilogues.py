"""Tests of bench/epilogues.py on a made-up bench log (run by .ci/run:
python3 -m unittest discover -s bench -p 'test_*.py')."""
import os
import tempfile
import unittest

import epilogues

LOG = """kernel bench on GPU Made-up, sm_90: batch 2000
conv3x3 fwd wgmma [2]              2000x15x15x64->256 pool        662.0 us    174.6 TFLOP/s    201.6 GB/s  floor    144.5 us ( 21.8% of floor)
conv3x3 fwd main loop wgmma [2]    2000x15x15x64->256 pool        462.0 us    250.0 TFLOP/s    201.6 GB/s  floor    144.5 us ( 31.3% of floor)
conv3x3 wgrad+dgrad wgmma [3]      2000x7x7x256->256              650.0 us    355.7 TFLOP/s    1.0 GB/s  floor    289.0 us ( 44.5% of floor)
conv3x3 wgrad+dgrad main loop wgmma [3] 2000x7x7x256->256              600.0 us    385.3 TFLOP/s    1.0 GB/s  floor    289.0 us ( 48.2% of floor)
conv3x3 fwd tma [2]                2000x15x15x64->256 pool        580.8 us    199.1 TFLOP/s    229.8 GB/s  floor    144.5 us ( 24.9% of floor)
conv3x3 fwd wgmmap [2]             2000x15x15x64->256 pool        400.0 us    289.0 TFLOP/s    229.8 GB/s  floor    144.5 us ( 36.1% of floor)
conv3x3 fwd wgmmap [1]             2000x15x15x64->64              150.0 us    221.0 TFLOP/s    568.6 GB/s  floor     41.5 us ( 27.7% of floor)
conv3x3 wgrad wgmma [3]            2000x7x7x256->256              173.0 us    668.0 TFLOP/s    1.0 GB/s  floor    144.5 us ( 83.5% of floor)
pre_bwd [3]                        2000x7x7x256                    99.0 us      1.0 TFLOP/s   1000.0 GB/s  floor     10.0 us ( 10.1% of floor)
"""


class Epilogues(unittest.TestCase):
    def test_reads_only_conv_lines(self):
        lines = epilogues.read(LOG)
        self.assertEqual(lines[("fwd", False, "wgmma", 2)], 662.0)
        self.assertEqual(lines[("fwd", True, "wgmma", 2)], 462.0)
        self.assertEqual(lines[("wgrad+dgrad", True, "wgmma", 3)], 600.0)
        self.assertEqual(lines[("wgrad", False, "wgmma", 3)], 173.0)
        self.assertEqual(len(lines), 8)

    def test_epilogue_is_plain_minus_main_loop(self):
        rows = epilogues.epilogue_rows(epilogues.read(LOG))
        self.assertEqual([(r[0], r[1], r[2]) for r in rows], [("fwd", "wgmma", 2), ("wgrad+dgrad", "wgmma", 3)])
        gemm, path, layer, plain, loop, epi, share = rows[0]
        self.assertAlmostEqual(epi, 200.0)
        self.assertAlmostEqual(share, 200.0 / 662.0)

    def test_persistent_rows_leave_missing_lines_out(self):
        rows = epilogues.persistent_rows(epilogues.read(LOG))
        self.assertEqual(rows, [("fwd", 1, 150.0, None, None), ("fwd", 2, 400.0, 662.0, 580.8)])
        text = epilogues.report(LOG)
        self.assertIn("fwd              1     150.0         -         -", text)

    def test_main_errors(self):
        with tempfile.TemporaryDirectory() as d:
            empty = os.path.join(d, "empty.log")
            with open(empty, "w") as f:
                f.write("nothing here\n")
            self.assertEqual(epilogues.main(["epilogues.py", empty]), 1)
            self.assertEqual(epilogues.main(["epilogues.py", os.path.join(d, "missing.log")]), 1)
            self.assertEqual(epilogues.main(["epilogues.py"]), 2)


if __name__ == "__main__":
    unittest.main()
