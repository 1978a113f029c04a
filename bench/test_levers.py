"""Tests of bench/levers.py on made-up bench logs (run by .ci/run:
python3 -m unittest discover -s bench -p 'test_*.py')."""
import os
import tempfile
import unittest

import levers

def step(name, us):
    """A step line as src/selftest.rs's bench_line writes it (the name padded to 34, a space)."""
    return f"{name:<34} {'batch 2000':<26} {us:>9.1f} us    238.4 TFLOP/s      0.0 GB/s  floor   1775.9 us ( 29.8% of floor)"


NEW = "\n".join([
    "kernel bench on GPU Made-up, sm_90: batch 2000",
    "conv3x3 fwd tma [2]                2000x15x15x64->256 pool        580.0 us    199.1 TFLOP/s    229.8 GB/s  floor    144.5 us ( 24.9% of floor)",
    "conv3x3 fwd register epilogue tma [2] 2000x15x15x64->256 pool        780.0 us    150.0 TFLOP/s    229.8 GB/s  floor    144.5 us ( 18.5% of floor)",
    "conv3x3 fwd wgmma [1]              2000x15x15x64->64              200.0 us    163.6 TFLOP/s    568.6 GB/s  floor     41.5 us ( 20.4% of floor)",
    "conv3x3 fwd register epilogue wgmma [1] 2000x15x15x64->64              250.0 us    130.0 TFLOP/s    568.6 GB/s  floor     41.5 us ( 16.6% of floor)",
    "conv3x3 fwd register epilogue wgmma [3] 2000x7x7x256->256              999.0 us    130.0 TFLOP/s    568.6 GB/s  floor     41.5 us ( 16.6% of floor)",
    "conv3x3_shift_grad [0]             2000x31x31x24->64 pool         300.0 us    100.0 TFLOP/s    500.0 GB/s  floor     66.4 us ( 22.1% of floor)",
    "conv3x3 fwd img [0]                2000x31x31x24->64 pool         320.0 us    155.5 TFLOP/s    558.5 GB/s  floor     62.2 us ( 19.4% of floor)",
    "pre_bwd [0]                        2000x15x15x64                  150.0 us      5.0 TFLOP/s   1257.2 GB/s  floor     96.0 us ( 41.9% of floor)",
    "pre_bwd unpooled [0]               2000x31x31x64                  180.0 us      4.0 TFLOP/s   1763.4 GB/s  floor    168.4 us ( 58.8% of floor)",
    "act [0]                            2000x31x31x24                   70.0 us      5.0 TFLOP/s   2627.0 GB/s  floor     38.4 us ( 54.9% of floor)",
    "stem                               2000x32x32x3->24                80.0 us     11.3 TFLOP/s   1006.5 GB/s  floor     32.8 us ( 33.6% of floor)",
    "stem+GELU'                         2000x32x32x3->24               110.0 us     11.3 TFLOP/s   1006.5 GB/s  floor     32.8 us ( 33.6% of floor)",
    step("train step, graph, wgmma convs", 6600.0),
    "(wgmma convs)",
    "train step profile: 88 launches, 6922.7 us inside them (events around each)",
    "  pre_bwd_dx_f16                      7 x      999.0 us    7.1%",
    step("train step, graph, mixed convs", 5000.0),
    "  mixed fwd 15x15x64->256 pool: tma (wgmma 0.700, wgmma2 0.650, tma 0.580, wgmmap 0.600, mma128 0.610 ms)",
    "  mixed fwd 7x7x256->256 pool: mma128 (tma4 0.280, mma128 0.260 ms)",
    "  mixed fwd 15x15x64->64: wgmma (wgmma 0.200, wgmma2 0.210 ms)",
    "  mixed fwd 7x7x256->256: wgmmap (wgmma 0.330, tma 0.290, wgmmap 0.250 ms)",
    "  mixed dgrad 7x7x256->256: tma+pass (wgmma 0.656, tma 0.562, tma+pass 0.450, wgmmap 0.500 ms)",
    "  mixed wgrad 7x7x256->256: wgmmap (wgmma 0.173, wgmmap 0.150 ms)",
    "(mixed convs)",
    "train step profile: 90 launches, 5600.0 us inside them (events around each)",
    "  pre_bwd_dx_f16                      7 x      300.0 us    7.8%",
    "  act_f16                             6 x      200.0 us    4.1%",
    "  wgrad_reduce4_f32                   6 x       60.0 us    1.2%",
    "  wgrad_reduce_f32                    1 x       20.0 us    0.4%",
    "  muon_norms_f64                      1 x        3.0 us    0.1%",
    "  bn_reduce8_f16                      3 x       35.0 us    0.7%",
    "  stem_fwd_grad_f16                   1 x       60.0 us    1.2%",
    step("train step, graph, mixed convs, bias frozen", 4700.0),
    step("train step, graph, mixed convs, no PDL", 5150.0),
    step("train step, graph, mixed convs, bias frozen, no PDL", 4720.0),
    step("train step, graph, mixed convs, no overlap", 5300.0),
    step("train step, graph, mixed convs, Muon on the main stream", 5080.0),
    "",
])

BASE = "\n".join([
    "kernel bench on GPU Made-up, sm_90: batch 2000",
    "conv3x3 fwd img [0]                2000x31x31x24->64 pool         510.0 us     97.6 TFLOP/s    350.4 GB/s  floor     62.2 us ( 12.2% of floor)",
    "pre_bwd [0]                        2000x15x15x64                  229.1 us      5.0 TFLOP/s   1257.2 GB/s  floor     96.0 us ( 41.9% of floor)",
    "pre_bwd unpooled [0]               2000x31x31x64                  286.5 us      4.0 TFLOP/s   1763.4 GB/s  floor    168.4 us ( 58.8% of floor)",
    step("train step, graph, mixed convs", 5960.0),
    "  mixed wgrad 31x31x24->64: wgmma (mma 0.272, wgmma 0.234 ms)",
    "  mixed dgrad 31x31x24->64: mma128 (mma 1.105, mma128 0.862, wgmma 0.868 ms)",
    "(mixed convs)",
    "train step profile: 91 launches, 6268.6 us inside them (events around each)",
    "  pre_bwd_dx_f16                      7 x      489.0 us    7.8%",
    "  act_f16                             6 x      284.0 us    4.1%",
    "  wgrad_reduce_f32                    7 x      116.0 us    1.7%",
    "  bn_reduce_f16                       3 x       62.2 us    1.0%",
    "  muon_norms_f64                      1 x       19.3 us    0.3%",
    "  stem_fwd_f16                        1 x      100.2 us    1.6%",
    "",
])


class Levers(unittest.TestCase):
    def test_reads_steps_picks_and_profiles_by_path(self):
        lines, picks, profiles = levers.read(NEW)
        self.assertEqual(lines["train step, graph, mixed convs, no PDL"], 5150.0)
        self.assertEqual(lines["conv3x3 fwd register epilogue tma [2]"], 780.0)
        self.assertEqual(lines["conv3x3_shift_grad [0]"], 300.0)
        self.assertEqual((lines["stem"], lines["stem+GELU'"], lines["act [0]"]), (80.0, 110.0, 70.0))
        self.assertEqual(picks[("dgrad", "7x7x256->256", False)][0], "tma+pass")
        self.assertEqual(picks[("fwd", "15x15x64->256", True)][1]["wgmma2"], 0.650)
        self.assertEqual(profiles["wgmma"], {"pre_bwd_dx_f16": 999.0})
        self.assertEqual(profiles["mixed"]["act_f16"], 200.0)

    def test_launches_follow_the_recipe(self):
        self.assertEqual(levers.launches("dgrad", "7x7x256->256", False), 2)  # layers 3 and 4
        self.assertEqual(levers.launches("fwd", "7x7x256->256", False), 1)
        self.assertEqual(levers.launches("fwd", "7x7x256->256", True), 1)
        self.assertEqual(levers.launches("fwd", "15x15x64->256", False), 0)

    def test_measured_levers(self):
        got = levers.measured(levers.read(NEW), levers.read(BASE))
        self.assertAlmostEqual(got["pdl"][0], -0.150)
        self.assertAlmostEqual(got["pdl_frozen"][0], -0.020)
        self.assertAlmostEqual(got["overlap"][0], -0.300)
        self.assertNotIn("overlap_frozen", got)  # its "no overlap" line is missing
        self.assertAlmostEqual(got["muon_side"][0], -0.080)
        # the new profile's act_f16 lacks layer 0's launch (the stem's now): "act [0]" added back
        self.assertAlmostEqual(got["gelu"][0], (300 + 200 + 70 - 489 - 284) / 1000)
        self.assertAlmostEqual(got["reduce"][0], (60.0 + 20.0 - 116.0) / 1000)  # wgrad_reduce4 + the scalar one
        self.assertAlmostEqual(got["norms"][0], -0.0163)
        self.assertAlmostEqual(got["bn_reduce8"][0], (35.0 - 62.2) / 1000)
        # the new stem (stem_fwd_grad_f16 in a bias-training step) against the base's stem plus
        # the act_f16 pass it took over
        self.assertAlmostEqual(got["stem"][0], (60.0 - 100.2 - 70.0) / 1000)
        # the unpooling's cost 30 µs (180 − 150) against 57.4 (286.5 − 229.1); layers 2, 4 absent
        self.assertAlmostEqual(got["unpool_idx"][0], (30.0 - 57.4) / 1000)
        # with the stem's GELU′ cost ("stem+GELU'" − "stem", 30 µs) counted in
        self.assertAlmostEqual(got["shift"][0], 0.300 + 0.030 - (0.862 - 0.234))
        self.assertAlmostEqual(got["img_pool"][0], 0.320 - 0.510)
        # mma128 the pick at the pooled layer 4 (0.260 against tma4's 0.280), not at layer 2
        # (0.610 against tma's 0.580: nothing saved there)
        self.assertAlmostEqual(got["mma_pool"][0], 0.260 - 0.280)
        # wgmma2: nowhere the best (0 saved); wgmmap: fwd 7x7 0.250 vs 0.290, wgrad 7x7 (×2)
        # 0.150 vs 0.173; the dgrad's best without it is tma+pass anyway
        self.assertAlmostEqual(got["wgmma2"][0], 0.0)
        self.assertAlmostEqual(got["wgmmap"][0], (0.250 - 0.290) + 2 * (0.150 - 0.173))
        self.assertAlmostEqual(got["dpass"][0], 2 * (0.450 - 0.500))
        # mixed's picks with register-epilogue lines: tma at layer 2 (−0.2); wgmma at layer 1
        # (−0.05); layer 3's pick is wgmmap, which has none
        self.assertAlmostEqual(got["loop_epilogue"][0], -0.250)

    def test_without_the_19th_sessions_lines_the_logs_compare_as_they_are(self):
        new = "\n".join(l for l in NEW.splitlines() if not l.startswith(("act [0]", "stem")))
        new = new.replace("stem_fwd_grad_f16  ", "stem_fwd_f16       ")
        got = levers.measured(levers.read(new), levers.read(BASE))
        self.assertAlmostEqual(got["gelu"][0], (300 + 200 - 489 - 284) / 1000)
        self.assertAlmostEqual(got["stem"][0], -0.0402)
        self.assertAlmostEqual(got["shift"][0], 0.300 - (0.862 - 0.234))

    def test_without_base_those_levers_are_left_out(self):
        got = levers.measured(levers.read(NEW), None)
        self.assertNotIn("gelu", got)
        self.assertNotIn("shift", got)
        self.assertNotIn("img_pool", got)
        self.assertIn("pdl", got)
        text = levers.report(NEW)
        self.assertIn("(needs the base log)", text)
        self.assertNotIn("whole step", text)

    def test_report_verdicts(self):
        self.assertEqual(levers.verdict(-0.1, -0.25, -0.05), "hit")
        self.assertEqual(levers.verdict(-0.3, -0.25, -0.05), "beyond the range")
        self.assertEqual(levers.verdict(-0.01, -0.25, -0.05), "less than predicted")
        self.assertEqual(levers.verdict(0.02, -0.25, -0.05), "no gain")
        text = levers.report(NEW, BASE)
        self.assertIn("whole step on mixed, new − base: -0.960 ms", text)
        pdl = [l for l in text.splitlines() if l.startswith("programmatic dependent launch ")][0]
        self.assertIn("-0.150  hit", pdl)

    def test_main_errors(self):
        with tempfile.TemporaryDirectory() as d:
            empty = os.path.join(d, "empty.log")
            with open(empty, "w") as f:
                f.write("nothing here\n")
            self.assertEqual(levers.main(["levers.py", empty]), 1)
            self.assertEqual(levers.main(["levers.py", os.path.join(d, "missing.log")]), 1)
            self.assertEqual(levers.main(["levers.py"]), 2)


if __name__ == "__main__":
    unittest.main()
