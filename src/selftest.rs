//! GPU-vs-CPU self-test of every `Backend` op, one whole training step compared end to end,
//! and a per-kernel benchmark (`speedrun selftest` / `bench`).
//!
//! Inputs: seeded `testing::randn` values (never zeros), every float rounded to fp16 once on the
//! host, so both backends see identical values and input quantisation never shows up as a kernel
//! error. GPU outputs are poisoned with NaN before each call (the f32 bit pattern 0x7FC0_7FC0,
//! whose two halves are fp16 NaNs too, so unwritten elements fail whichever type a kernel stores).
//! The oracle is `Cpu<f32>`.
//!
//! One line per kernel and shape: name, shape, max |err|, relative L2 error ‖g − r‖₂/‖r‖₂,
//! tolerance (on the relative L2 error) and PASS/FAIL; NaN or Inf in a GPU output fails. With
//! u = 2⁻¹¹ (fp16 unit roundoff) the tolerances are:
//! - `TOL_F32` 1e-5: f32 outputs computed from identical fp16-exact inputs in f32 with f32/f64
//!   sums (BN statistics, head features and logits, loss, optimizer steps): only the order of
//!   f32 operations differ (≈ 1e-7 per op), and the GPU's GELU (common.cuh: Abramowitz–Stegun
//!   7.1.26) is within 4.2e-7 of the exact one (bench/gelu_error.py): ≥ 20× margin.
//! - `TOL_F16_OUT` 2e-3: elementwise results stored as fp16 (stem, head_bwd da, pre_bwd dx):
//!   the final rounding is ≤ u/2 = 2.4e-4 relative per element (plus BN's cancellation).
//! - `TOL_CONV` 1e-2: conv outputs and both conv gradients, K up to 2,304 (forward/dgrad) or
//!   N·H·W up to 61,504 (wgrad): a = GELU(pre(x)) and the fp32 weights are rounded to fp16 for
//!   the MMA (u each, random-sign over K terms, so ≈ u relative on the sum), the output to fp16
//!   (u/2), and fp32 accumulation (K·2⁻²⁴ worst case = 1.4e-4); ≈ 1e-3 expected, 10× margin,
//!   while one dropped tap or a wrong channel gives ≥ 0.3.
//! - `TOL_NS` 2e-2: Muon's Newton–Schulz update: 3 iterations × 3 GEMMs whose f32 inputs are
//!   rounded to fp16 (u each), compounded by the quintic's slope (a = 3.4) near zero.
//!   `TOL_MUON_W` 5e-3 for the updated weight w·√rows/‖w‖ − lr·X: lr·X is ≈ 0.2 of |w| at these
//!   scales and carries the NS error (host emulation measured 4e-4).
//! - Whole step: 4× the largest relative error measured on a GPU (H200, sm_90, mma convs,
//!   bench/logs/2026-11-26-h200-selftest.log: loss 9.4e-7, logits 2.2e-3, BN statistics
//!   ≤ 1.8e-4, parameter gradients ≤ 4.3e-3, updated parameters ≤ 7.8e-4), rounded up:
//!   loss ≤ 4e-6, logits and BN statistics ≤ 1e-2, every parameter gradient ≤ 2e-2, updated
//!   parameters ≤ 4e-3. The gradients' error is fp16 rounding (≈ 1e-3 per layer) compounded
//!   through 7 layers and BN backward, plus gradients routed differently at near-tied pooling
//!   windows.
//! - Measured without a GPU by the host emulation of the kernels (scripts/kernel-emu, same
//!   fp16 rounding points, f64 references): conv fwd/dgrad/wgrad 2–3e-4, fp16 elementwise
//!   outputs ≈ 2e-4, f32 outputs ≤ 5e-7, Newton–Schulz 2e-3, muon weight 4e-4.
//! - Argmax outputs (pooling, head) are checked by value, not index: the value at the GPU's
//!   index must be within the conv tolerance of the window's maximum (ties and near-ties may
//!   legitimately pick another position); the number of indices differing from the CPU's is
//!   printed for information.
use crate::backend::{
    grad_shape, Backend, BnStats, MuonParam, Norm, Ns, Pre, SgdParam, Shape, Step, Unpool, LRS, NS_COEFFS, STEP_LEN,
    STEP_WORDS,
};
use crate::cpu::Cpu;
use crate::error::{Error, Result};
use crate::gpu::{ConvPath, GBuf, Gpu, Timer};
use crate::replay::Record;
use crate::testing::randn;
use half::f16;
use std::io::Write;

const POISON: f32 = f32::from_bits(0x7FC0_7FC0);
const TOL_F32: f64 = 1e-5;
const TOL_F16_OUT: f64 = 2e-3;
const TOL_CONV: f64 = 1e-2;
const TOL_NS: f64 = 2e-2;
const TOL_MUON_W: f64 = 5e-3;
const TOL_STEP_LOSS: f64 = 4e-6;
const TOL_STEP_ACT: f64 = 1e-2;
const TOL_STEP_GRAD: f64 = 2e-2;
const TOL_STEP_PARAM: f64 = 4e-3;

/// The checks' batch (conv layers, BatchNorm, pre_bwd, head, loss, the whole step; the recipe
/// trains with 2000, 64 keeps the CPU reference fast), or [`BATCH_ENV`]'s (a multiple of 8: the
/// recorded step runs an eighth of it).
const BATCH: usize = 64;
/// Environment variable that sets the checks' batch (the emulated CI run: 32, half the time).
pub const BATCH_ENV: &str = "SPEEDRUN_SELFTEST_BATCH";

/// [`BATCH_ENV`]'s value (None or blank: [`BATCH`]); anything but a positive multiple of 8 is a
/// usage error.
fn batch_from(v: Option<&str>) -> Result<usize> {
    match v.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(BATCH),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 && n % 8 == 0 => Ok(n),
            _ => Err(Error::Usage(format!("{BATCH_ENV}={v:?}: expected a positive multiple of 8"))),
        },
    }
}
const NORM: Norm = Norm { mean: [0.4914, 0.4822, 0.4465], std: [0.2470, 0.2435, 0.2616] };
/// The recipe's six 3×3 convs: (input shape per image h, w, cin; cout; pool).
const LAYERS: [(usize, usize, usize, usize, bool); 6] = [
    (31, 31, 24, 64, true),
    (15, 15, 64, 64, false),
    (15, 15, 64, 256, true),
    (7, 7, 256, 256, false),
    (7, 7, 256, 256, true),
    (3, 3, 256, 256, false),
];

fn io(e: std::io::Error) -> Error {
    Error::Io(format!("writing the self-test report: {e}"))
}

/// `n` values `scale·randn + offset`, rounded to fp16.
fn rnd(n: usize, seed: u64, scale: f64, offset: f64) -> Vec<f32> {
    randn(n, seed).into_iter().map(|v| f16::from_f64(v * scale + offset).to_f32()).collect()
}

/// Random bytes below `modulus`.
fn bytes(n: usize, seed: u64, modulus: u32) -> Vec<u8> {
    let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((s >> 33) as u32 % modulus) as u8
        })
        .collect()
}

/// Augmentation words for `n` examples over `total` images, every shift in −2..=2 and both mirrors.
fn words(n: usize, total: usize, seed: u64) -> Vec<u32> {
    let r = bytes(3 * n, seed, 251);
    (0..n)
        .map(|i| {
            crate::aug::pack(crate::aug::Aug {
                index: (i * 7 + r[3 * i] as usize) % total,
                sy: (r[3 * i + 1] % 5) as i32 - 2,
                sx: (r[3 * i + 2] % 5) as i32 - 2,
                flip: (r[3 * i] ^ r[3 * i + 1]) & 1 == 1,
            })
        })
        .collect()
}

fn rel_l2(got: &[f32], want: &[f32]) -> (f64, f64, bool) {
    let (mut d2, mut r2, mut max, mut finite) = (0.0f64, 0.0f64, 0.0f64, true);
    for (&g, &w) in got.iter().zip(want) {
        if !g.is_finite() && w.is_finite() {
            finite = false;
        }
        let d = g as f64 - w as f64;
        d2 += d * d;
        r2 += (w as f64) * (w as f64);
        max = max.max(d.abs());
    }
    let rel = if r2 > 0.0 { (d2 / r2).sqrt() } else { d2.sqrt() };
    (max, rel, finite && got.len() == want.len())
}

fn shape_str(s: Shape) -> String {
    format!("{}x{}x{}x{}", s.n, s.h, s.w, s.c)
}

/// The report and the running verdict.
struct Report<'a> {
    out: &'a mut dyn Write,
    ok: bool,
    lines: usize,
    failed: usize,
}

impl Report<'_> {
    fn line(&mut self, name: &str, shape: &str, got: &[f32], want: &[f32], tol: f64) -> Result<()> {
        let (max, rel, finite) = rel_l2(got, want);
        let pass = finite && rel <= tol && !rel.is_nan();
        self.lines += 1;
        if !pass {
            self.ok = false;
            self.failed += 1;
        }
        let verdict = if pass {
            "PASS"
        } else if !finite {
            "FAIL (NaN/Inf or wrong length)"
        } else {
            "FAIL"
        };
        writeln!(
            self.out,
            "{name:<30} {shape:<22} max|err| {max:>10.3e}  relL2 {rel:>10.3e}  tol {tol:>7.1e}  {verdict}"
        )
        .map_err(io)
    }

    /// The outcome of one named check: an error is a FAIL line and the checks go on, unless the
    /// GPU no longer works after it (a sticky error such as an illegal address): then Ok(false).
    fn survive(&mut self, gpu: &mut Gpu, name: &str, res: Result<()>) -> Result<bool> {
        let Err(e) = res else { return Ok(true) };
        self.flag(&format!("{name}: stopped"), &e.to_string(), false)?;
        match gpu.sync() {
            Ok(()) => Ok(true),
            Err(e) => {
                writeln!(self.out, "the GPU is unusable after this error ({e}); the remaining checks are skipped")
                    .map_err(io)?;
                Ok(false)
            }
        }
    }

    /// A line that is not a check (not counted), e.g. why one was left out.
    fn note(&mut self, name: &str, shape: &str, why: &str) -> Result<()> {
        writeln!(self.out, "{name:<30} {shape:<22} not run: {why}").map_err(io)
    }

    /// A yes/no check (exact results: bit patterns, NaN guards).
    fn flag(&mut self, name: &str, detail: &str, pass: bool) -> Result<()> {
        self.lines += 1;
        if !pass {
            self.ok = false;
            self.failed += 1;
        }
        writeln!(self.out, "{name:<38} {detail}  {}", if pass { "PASS" } else { "FAIL" }).map_err(io)
    }

    /// Pooling/argmax check by value: `vals(i, k)` is the reference value of candidate k of
    /// output i, `cands` candidates each; the GPU's pick must be within `slack` of the maximum.
    #[allow(clippy::too_many_arguments)]
    fn argmax(
        &mut self,
        name: &str,
        shape: &str,
        got: &[u8],
        want: &[u8],
        cands: usize,
        slack: f64,
        vals: impl Fn(usize, usize) -> f64,
    ) -> Result<()> {
        let (mut bad, mut differ) = (0usize, 0usize);
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            differ += (g != w) as usize;
            let best = (0..cands).map(|k| vals(i, k)).fold(f64::NEG_INFINITY, f64::max);
            if (g as usize) >= cands || vals(i, g as usize) < best - slack {
                bad += 1;
            }
        }
        let pass = bad == 0 && got.len() == want.len();
        self.lines += 1;
        if !pass {
            self.ok = false;
            self.failed += 1;
        }
        writeln!(
            self.out,
            "{name:<30} {shape:<22} wrong picks {bad} (slack {slack:.1e}), {differ} of {} differ from the CPU at near-ties  {}",
            got.len(),
            if pass { "PASS" } else { "FAIL" }
        )
        .map_err(io)
    }
}

/// The per-layer `Pre` inputs on the host: shift, and (mean, invstd) when BatchNorm.
struct HostPre {
    shift: Vec<f32>,
    bn: Option<Vec<f32>>,
}

impl HostPre {
    fn new(c: usize, bn: bool, seed: u64) -> HostPre {
        let shift = rnd(c, seed, 0.3, 0.0);
        let bn = bn.then(|| {
            let mut v = rnd(c, seed + 1, 0.3, 0.0);
            v.extend(rnd(c, seed + 2, 0.3, 0.0).into_iter().map(|s| f16::from_f32(0.6 + s.abs()).to_f32()));
            v
        });
        HostPre { shift, bn }
    }
    fn label(&self) -> &'static str {
        if self.bn.is_some() {
            "bn"
        } else {
            "bias"
        }
    }
    /// u = pre(x) for channel c (f64, the reference form).
    fn u(&self, x: f32, c: usize) -> f64 {
        let n = self.shift.len();
        match &self.bn {
            Some(b) => (x as f64 - b[c] as f64) * b[n + c] as f64 + self.shift[c] as f64,
            None => x as f64 + self.shift[c] as f64,
        }
    }
}

fn gelu64(u: f64) -> f64 {
    0.5 * u * (1.0 + libm::erf(u * std::f64::consts::FRAC_1_SQRT_2))
}

/// A `Pre` on backend B from uploaded buffers.
fn pre_of<'a, B: Backend>(shift: &'a B::Buf, bn: &'a Option<B::Buf>) -> Pre<'a, B> {
    match bn {
        Some(bn) => Pre::Bn { bn, beta: shift },
        None => Pre::Bias(shift),
    }
}

fn up_pre<B: Backend>(b: &mut B, p: &HostPre) -> Result<(B::Buf, Option<B::Buf>)> {
    let s = b.upload(&p.shift)?;
    let bn = match &p.bn {
        Some(v) => Some(b.upload(v)?),
        None => None,
    };
    Ok((s, bn))
}

/// Runs every check; prints one line per kernel/shape and returns whether all passed.
pub fn run(gpu: &mut Gpu, out: &mut dyn Write) -> Result<bool> {
    let threads = crate::cpu::par::default_threads();
    let mut cpu = Cpu::<f32>::with_threads(threads);
    writeln!(out, "self-test: {} vs {}", gpu.describe(), cpu.describe()).map_err(io)?;
    let batch = batch_from(std::env::var(BATCH_ENV).ok().as_deref())?;
    if batch != BATCH {
        writeln!(out, "batch {batch} ({BATCH_ENV}; the checks' default is {BATCH})").map_err(io)?;
    }
    let mut r = Report { out, ok: true, lines: 0, failed: 0 };

    // Every check by name; one that stops with an error (a failed launch, say) is a FAIL line
    // and the rest still run, unless the error left the GPU unusable.
    type Check = Box<dyn Fn(&mut Gpu, &mut Cpu<f32>, &mut Report) -> Result<()>>;
    let mut checks: Vec<(String, Check)> = vec![("stem".into(), Box::new(check_stem))];
    // The conv checks on every path but the sm_90a ones here; wgmma's and tma's come last (below),
    // so that a fault in one of their kernels, which leaves the GPU unusable, skips only them.
    let (others, wgmma) = ConvPath::wgmma_last(gpu.info.cc);
    // before: paths whose kernels an earlier group checks (their lines say so instead)
    let conv_checks = |checks: &mut Vec<(String, Check)>, before: &[ConvPath], paths: &[ConvPath], suffix: &str| {
        for (i, &(h, w, cin, cout, pool)) in LAYERS.iter().enumerate() {
            let s = Shape::new(batch, h, w, cin);
            let (bs, ps) = (before.to_vec(), paths.to_vec());
            let f = move |g: &mut Gpu, c: &mut Cpu<f32>, r: &mut Report| {
                check_conv(g, c, r, s, cout, pool, i > 0, 100 + 10 * i as u64, &bs, &ps)
            };
            checks.push((format!("conv layer {i}{suffix}"), Box::new(f)));
        }
        // odd shapes: sizes not multiples of the tiles, C == H == W, 1×1 images, both Pre variants
        for (k, (s, cout, pool, bn)) in [
            (Shape::new(3, 7, 5, 8), 16, true, true),
            (Shape::new(2, 9, 9, 16), 8, false, false),
            (Shape::new(2, 8, 8, 8), 24, true, false),
            (Shape::new(5, 1, 1, 8), 72, false, true),
            (Shape::new(1, 6, 6, 40), 136, false, true),
        ]
        .into_iter()
        .enumerate()
        {
            let (bs, ps) = (before.to_vec(), paths.to_vec());
            let f = move |g: &mut Gpu, c: &mut Cpu<f32>, r: &mut Report| {
                check_conv(g, c, r, s, cout, pool, bn, 200 + 10 * k as u64, &bs, &ps)
            };
            checks.push((format!("conv odd shape {}{suffix}", shape_str(s)), Box::new(f)));
        }
    };
    conv_checks(&mut checks, &[], &others, "");
    for (k, &(h, w, _, cout, pool)) in LAYERS.iter().enumerate() {
        let s = if pool { Shape::new(batch, h / 2, w / 2, cout) } else { Shape::new(batch, h, w, cout) };
        checks.push((
            format!("bn_stats {}", shape_str(s)),
            Box::new(move |g, c, r| check_bn(g, c, r, s, 300 + k as u64)),
        ));
    }
    checks.push(("bn_stats odd shape".into(), Box::new(|g, c, r| check_bn(g, c, r, Shape::new(3, 5, 3, 24), 310))));
    for (k, (s, bn, dx)) in [
        (Shape::new(batch, 31, 31, 24), false, false),
        (Shape::new(batch, 31, 31, 24), false, true),
        (Shape::new(batch, 15, 15, 64), true, true),
        (Shape::new(batch, 7, 7, 256), true, true),
        (Shape::new(batch, 3, 3, 256), true, true),
        (Shape::new(3, 5, 3, 40), true, true),
    ]
    .into_iter()
    .enumerate()
    {
        let f = move |g: &mut Gpu, c: &mut Cpu<f32>, r: &mut Report| {
            check_pre_bwd(g, c, r, s, bn, dx, None, 400 + 10 * k as u64)
        };
        checks.push((format!("pre_bwd {}", shape_str(s)), Box::new(f)));
    }
    // dx unpooled (the step's pooled layers: 31 → 15, 15 → 7, 7 → 3; odd and even odd shapes)
    for (k, full) in [
        Shape::new(batch, 31, 31, 64),
        Shape::new(batch, 15, 15, 256),
        Shape::new(batch, 7, 7, 256),
        Shape::new(3, 7, 5, 40),
        Shape::new(2, 6, 4, 16),
    ]
    .into_iter()
    .enumerate()
    {
        let f = move |g: &mut Gpu, c: &mut Cpu<f32>, r: &mut Report| {
            check_pre_bwd(g, c, r, full.pooled(), true, true, Some(full), 470 + 10 * k as u64)
        };
        checks.push((format!("pre_bwd unpooled {}", shape_str(full)), Box::new(f)));
    }
    checks.push((
        "shift_grad".into(),
        Box::new(move |g, c, r| check_shift_grad(g, c, r, Shape::new(batch, 31, 31, 24), 64, 490)),
    ));
    checks.push((
        "shift_grad odd shape".into(),
        Box::new(|g, c, r| check_shift_grad(g, c, r, Shape::new(3, 7, 5, 40), 16, 495)),
    ));
    checks.push(("head".into(), Box::new(move |g, c, r| check_head(g, c, r, Shape::new(batch, 3, 3, 256), 10, 500))));
    checks.push(("head odd shape".into(), Box::new(|g, c, r| check_head(g, c, r, Shape::new(7, 2, 3, 40), 3, 510))));
    checks.push(("xent".into(), Box::new(move |g, c, r| check_xent(g, c, r, batch, 10, 600))));
    checks.push(("xent odd shape".into(), Box::new(|g, c, r| check_xent(g, c, r, 300, 7, 610))));
    checks.push(("sgd".into(), Box::new(|g, c, r| check_sgd(g, c, r, 700))));
    // Muon, one call per list: the recipe's six conv weights (one batched launch per
    // Newton–Schulz GEMM), then nine odd shapes (more than one batch of 8)
    let recipe = [(64, 216), (64, 576), (256, 576), (256, 2304), (256, 2304), (256, 2304)];
    let ns = Ns::airbench(3);
    checks.push(("muon, recipe weights".into(), Box::new(move |g, c, r| check_muon(g, c, r, &recipe, ns, 800))));
    let odd = [(24, 72), (8, 200), (16, 16), (40, 360), (8, 8), (24, 216), (64, 64), (8, 72), (32, 288)];
    // with other coefficients (hiverge's, RECIPE.md §9.3): they reach the kernels as arguments
    let ns = Ns { steps: 3, coeffs: (3.4576, -4.7391, 2.0843) };
    checks.push(("muon, nine shapes".into(), Box::new(move |g, c, r| check_muon(g, c, r, &odd, ns, 880))));
    checks.push(("whole step".into(), Box::new(move |g, c, r| check_step(g, c, r, batch, 900))));
    // the step again on the other tunable conv paths (mma128; wgmma's and tma's below) where the
    // GPU has them, at a quarter of the batch: the conv checks hold each path's kernels at the full
    // batch, and what these add (the path wired through a whole step) does not depend on it; at the
    // full batch they were 80 s of the emulated CI run
    let step_on = |checks: &mut Vec<(String, Check)>, path: ConvPath| {
        let f = move |g: &mut Gpu, c: &mut Cpu<f32>, r: &mut Report| {
            g.with_conv_path(path, |g| check_step(g, c, r, batch / 4, 900))
        };
        checks.push((format!("whole step, {} convs", path.name()), Box::new(f)));
    };
    for path in ConvPath::tunable(gpu.info.cc).into_iter().filter(|&p| p != gpu.conv_path && !p.is_sm90()) {
        step_on(&mut checks, path);
    }
    // at an eighth of the batch: what it checks (replays equal op by op, bit for bit, each step
    // reading its own plan row) does not depend on the batch, and its six steps were 40% of the
    // emulated run at the full batch
    checks.push(("recorded step".into(), Box::new(move |g, c, r| check_graph(g, c, r, batch / 8, 950))));
    // wgmma (its layers and the whole step); then wgmma2, wgmmap, tma and tma4 in one group:
    // their kernels are wgmma's but for their own (wgmma2's tiles of which two blocks fit an SM,
    // wgmmap's persistent forward, the multicast ones), so only those run, against one CPU
    // reference per layer. No whole step on them here (it took a minute of the emulated CI run):
    // the GPU test tma_convs_equal_wgmma_ones holds tma's forward and backward, statistics and
    // sums included, to the wgmma path's bit for bit, persistent_convs_equal_wgmma_ones wgmmap's,
    // wide_convs_equal_narrow_ones wgmma2's to mma's, and the bench times the step on them.
    let (wg, mc): (Vec<ConvPath>, Vec<ConvPath>) = wgmma.iter().partition(|&&p| p == ConvPath::Wgmma);
    if !wg.is_empty() {
        conv_checks(&mut checks, &[], &wg, ", wgmma");
        if gpu.conv_path != ConvPath::Wgmma {
            step_on(&mut checks, ConvPath::Wgmma);
        }
    }
    if !mc.is_empty() {
        let names: Vec<&str> = mc.iter().map(|p| p.name()).collect();
        conv_checks(&mut checks, &wg, &mc, &format!(", {}", names.join(", ")));
    }
    // SPEEDRUN_SELFTEST_TIMES=1: each check's wall time after its lines (where the emulated
    // CI run spends its minutes)
    let times = std::env::var("SPEEDRUN_SELFTEST_TIMES").is_ok_and(|v| v == "1");
    // SPEEDRUN_SELFTEST_ONLY=a,b: only the checks whose name contains a or b (to time or debug
    // one part on the emulated GPU); each check left out gets a line, and the summary says so
    let only = only_filter(std::env::var(ONLY_ENV).ok().as_deref());
    only_matches(&only, checks.iter().map(|(n, _)| n.as_str()))?;
    let mut left_out = 0;
    for (name, check) in &checks {
        if !only_wants(&only, name) {
            writeln!(r.out, "-- {name}: not run ({ONLY_ENV})").map_err(io)?;
            left_out += 1;
            continue;
        }
        let t0 = std::time::Instant::now();
        let res = check(gpu, &mut cpu, &mut r);
        if times {
            writeln!(r.out, "-- {name}: {:.1} s", t0.elapsed().as_secs_f64()).map_err(io)?;
        }
        if !r.survive(gpu, name, res)? {
            break;
        }
    }

    let (ok, lines, failed) = (r.ok, r.lines, r.failed);
    let verdict = if ok { "PASS" } else { "FAIL" };
    let partial = match left_out {
        0 => String::new(),
        n => format!(" (PARTIAL: {n} checks left out by {ONLY_ENV}={})", only.join(",")),
    };
    writeln!(r.out, "self-test: {lines} checks, {failed} failed: {verdict}{partial}").map_err(io)?;
    Ok(ok)
}

/// The environment variable that runs only some of the self-test's checks.
pub const ONLY_ENV: &str = "SPEEDRUN_SELFTEST_ONLY";

/// `SPEEDRUN_SELFTEST_ONLY`'s (and `SPEEDRUN_BENCH_ONLY`'s) comma-separated parts, blanks
/// dropped (empty: everything runs).
fn only_filter(v: Option<&str>) -> Vec<String> {
    v.unwrap_or("").split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// Whether the check or bench line `name` runs under the filter `only`: no filter, or a part in
/// its name.
fn only_wants(only: &[String], name: &str) -> bool {
    only.is_empty() || only.iter().any(|o| name.contains(o.as_str()))
}

/// A part of the filter that names no check (a typo would otherwise run nothing and pass) is a
/// usage error that lists the checks.
fn only_matches<'a>(only: &[String], names: impl Iterator<Item = &'a str> + Clone) -> Result<()> {
    for o in only {
        if !names.clone().any(|n| n.contains(o.as_str())) {
            let all: Vec<&str> = names.collect();
            return Err(Error::Usage(format!(
                "{ONLY_ENV}: {o:?} is in no check's name; the checks: {}",
                all.join("; ")
            )));
        }
    }
    Ok(())
}

fn check_stem(gpu: &mut Gpu, cpu: &mut Cpu<f32>, r: &mut Report) -> Result<()> {
    let total = 150;
    let images = bytes(total * 3072, 11, 256);
    let (n, cw) = (BATCH, 24);
    let wds = words(n + 5, total, 12);
    let w = rnd(cw * 12, 13, 0.5, 0.0);
    let bias = rnd(cw, 14, 0.3, 0.0);
    // patch covariance (first 100 images)
    let ci = cpu.upload_bytes(&images)?;
    let gi = gpu.upload_bytes(&images)?;
    let want: Vec<f32> = cpu.patch_cov(&ci, 100, NORM)?.into_iter().map(|v| v as f32).collect();
    let got: Vec<f32> = gpu.patch_cov(&gi, 100, NORM)?.into_iter().map(|v| v as f32).collect();
    r.line("patch_cov", "100 images, 12x12", &got, &want, TOL_F32)?;
    // stem at offset 5 (read from the step record)
    let rec = Step { offset: 5, lr: [0.0; LRS] }.record(0);
    let (cst, gst) = (cpu.upload_words(&rec)?, gpu.upload_words(&rec)?);
    let (cwd, gwd) = (cpu.upload_words(&wds)?, gpu.upload_words(&wds)?);
    let (cw_, gw_) = (cpu.upload(&w)?, gpu.upload(&w)?);
    let (cb, gb) = (cpu.upload(&bias)?, gpu.upload(&bias)?);
    // the full-resolution kernels, then the progressive-resolution one (bilinear downscale of
    // the view first): the activated output GELU(u), u = whiten(view) + bias, and GELU′(u)
    for res in [32usize, 24, 17] {
        let len = n * (res - 1) * (res - 1) * cw;
        let (mut cy, mut cgrad) = (vec![f32::NAN; len], vec![f32::NAN; len]);
        cpu.stem(&ci, total, &cwd, &cst, n, NORM, &cw_, &cb, cw, res, &mut cy, Some(&mut cgrad))?;
        let (mut gy, mut ggrad) = (gpu.upload(&vec![POISON; len])?, gpu.upload(&vec![POISON; len])?);
        gpu.stem(&gi, total, &gwd, &gst, n, NORM, &gw_, &gb, cw, res, &mut gy, Some(&mut ggrad))?;
        let (got, got_grad) = (gpu.download(&gy)?, gpu.download(&ggrad)?);
        let (name, shape) = match res {
            32 => ("stem".to_string(), shape_str(Shape::new(n, 31, 31, cw))),
            _ => (format!("stem_res {res}px"), shape_str(Shape::new(n, res - 1, res - 1, cw))),
        };
        r.line(&name, &shape, &got, &cy, TOL_F16_OUT)?;
        r.line(&format!("{name} GELU'"), &shape, &got_grad, &cgrad, TOL_F16_OUT)?;
        // without grad (its own kernel at full resolution): the same activated output, bit for bit
        let mut alone = gpu.upload(&vec![POISON; len])?;
        gpu.stem(&gi, total, &gwd, &gst, n, NORM, &gw_, &gb, cw, res, &mut alone, None)?;
        let same = gpu.download(&alone)?.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits());
        r.flag(&format!("{name}: the same output without GELU'"), &format!("{len} values"), same)?;
    }
    // words past the end (offset 6 + n > n + 5): every output NaN, nothing read out of bounds
    let len = n * 31 * 31 * cw;
    let past = gpu.upload_words(&Step { offset: 6, lr: [0.0; LRS] }.record(0))?;
    let (mut gy, mut ggrad) = (gpu.upload(&vec![0.25; len])?, gpu.upload(&vec![0.25; len])?);
    gpu.stem(&gi, total, &gwd, &past, n, NORM, &gw_, &gb, cw, 32, &mut gy, Some(&mut ggrad))?;
    let (out, grad) = (gpu.download(&gy)?, gpu.download(&ggrad)?);
    let nan = out.iter().chain(&grad).filter(|v| v.is_nan()).count();
    r.flag("stem: words past the end give NaN", &format!("{nan} of {} NaN", 2 * len), nan == 2 * len)?;
    let mut gy = gpu.upload(&vec![0.25; len])?;
    gpu.stem(&gi, total, &gwd, &past, n, NORM, &gw_, &gb, cw, 32, &mut gy, None)?;
    let nan = gpu.download(&gy)?.iter().filter(|v| v.is_nan()).count();
    r.flag("stem without GELU': words past the end give NaN", &format!("{nan} of {len} NaN"), nan == len)?;
    check_next_step(gpu, cpu, r)
}

/// `next_step` walks a plan row by row on the device, then yields `Step::EXHAUSTED`.
fn check_next_step(gpu: &mut Gpu, cpu: &mut Cpu<f32>, r: &mut Report) -> Result<()> {
    let rows: Vec<Step> =
        (0..3).map(|t| Step { offset: 100 * t, lr: [0.5 / (t + 1) as f32, 0.25, -1.5, 3e-3] }).collect();
    let plan: Vec<u32> = rows.iter().flat_map(|s| s.row()).collect();
    let (cplan, gplan) = (cpu.upload_words(&plan)?, gpu.upload_words(&plan)?);
    let mut start = vec![7u32; STEP_LEN]; // stale values, cursor 0
    start[STEP_WORDS] = 0;
    let (mut cst, mut gst) = (cpu.upload_words(&start)?, gpu.upload_words(&start)?);
    for (k, row) in rows.iter().copied().chain([Step::EXHAUSTED]).enumerate() {
        cpu.next_step(&cplan, &mut cst)?;
        gpu.next_step(&gplan, &mut gst)?;
        let got = gpu.download_words(&gst)?;
        let want = row.record(k as u32 + 1);
        // compare bit patterns (NaN rates included)
        let same = got == want && cst == want;
        r.flag(&format!("next_step call {}", k + 1), &format!("record {got:x?}"), same)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn check_conv(
    gpu: &mut Gpu,
    cpu: &mut Cpu<f32>,
    r: &mut Report,
    xs: Shape,
    cout: usize,
    pool: bool,
    bn: bool,
    seed: u64,
    before: &[ConvPath],
    paths: &[ConvPath],
) -> Result<()> {
    let cin = xs.c;
    let hp = HostPre::new(cin, bn, seed);
    let x = rnd(xs.len(), seed + 3, 1.0, 0.0);
    let w = rnd(cout * 9 * cin, seed + 4, 1.0 / ((9 * cin) as f64).sqrt(), 0.0);
    let ys = if pool { xs.with_c(cout).pooled() } else { xs.with_c(cout) };
    let fs = xs.with_c(cout);
    let tag = format!("{}{}", if pool { "pool," } else { "" }, hp.label());
    let label = |what: &str| format!("conv3x3 {what} [{tag}]");
    let shape = format!("{}->{}", shape_str(xs), cout);

    // forward
    let (cx, cw) = (cpu.upload(&x)?, cpu.upload(&w)?);
    let (cs, cb) = up_pre(cpu, &hp)?;
    let mut cy = vec![f32::NAN; ys.len()];
    let mut cam = vec![9u8; if pool { ys.len() } else { 0 }];
    cpu.conv3x3(&cx, xs, pre_of(&cs, &cb), &cw, cout, pool, &mut cy, &mut cam, None, None)?;
    let (gx, gw) = (gpu.upload_f16(&x)?, gpu.upload(&w)?);
    let (gs, gb) = up_pre(gpu, &hp)?;
    let mut full = vec![f32::NAN; if pool { fs.len() } else { 0 }];
    if pool {
        cpu.conv3x3(&cx, xs, pre_of(&cs, &cb), &cw, cout, false, &mut full, &mut Vec::new(), None, None)?;
    }
    let rms = (full.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / full.len().max(1) as f64).sqrt();
    // every forward kernel this GPU can run (mma and wmma on sm_80+), each against the CPU;
    // the first call keeps its activated input (for the backward below), the second does not
    let mut gkeep = gpu.upload(&vec![POISON; xs.len()])?;
    let mut fwd = |gpu: &mut Gpu, r: &mut Report, path: &str| -> Result<()> {
        let mut gy = gpu.upload(&vec![POISON; ys.len()])?;
        let mut gam = gpu.upload_bytes(&vec![0xEE; if pool { ys.len() } else { 0 }])?;
        gpu.conv3x3(&gx, xs, pre_of(&gs, &gb), &gw, cout, pool, &mut gy, &mut gam, Some(&mut gkeep), None)?;
        let got = gpu.download(&gy)?;
        r.line(&label(&format!("fwd ({path})")), &shape, &got, &cy, TOL_CONV)?;
        // deterministic: a second run is bit-identical
        let mut gy2 = gpu.upload(&vec![POISON; ys.len()])?;
        let mut gam2 = gpu.upload_bytes(&vec![0xEE; if pool { ys.len() } else { 0 }])?;
        gpu.conv3x3(&gx, xs, pre_of(&gs, &gb), &gw, cout, pool, &mut gy2, &mut gam2, None, None)?;
        let again = gpu.download(&gy2)?;
        r.line(&label(&format!("fwd rerun ({path})")), &shape, &again, &got, 0.0)?;
        // the training forward: the conv also takes its output's BatchNorm statistics; y must
        // not change, and the statistics must be those of the stored y
        if ys.count() > 1 {
            let mut y3 = Vec::new();
            let what = label(&format!("fwd + bn_stats ({path})"));
            bn_against_cpu(gpu, cpu, r, &what, &shape, ys, &got, seed + 6, &mut |g, st| {
                let mut gy3 = g.upload(&vec![POISON; ys.len()])?;
                let mut gam3 = g.upload_bytes(&vec![0xEE; if pool { ys.len() } else { 0 }])?;
                g.conv3x3(&gx, xs, pre_of(&gs, &gb), &gw, cout, pool, &mut gy3, &mut gam3, None, Some(st))?;
                y3 = g.download(&gy3)?;
                Ok(())
            })?;
            r.line(&format!("{what} y"), &shape, &y3, &got, 0.0)?;
        }
        if pool {
            let am = gpu.download_bytes(&gam)?;
            let (ph, pw) = (ys.h, ys.w);
            let vals = |i: usize, k: usize| {
                let o = i % cout;
                let px = (i / cout) % pw;
                let py = (i / cout / pw) % ph;
                let n = i / cout / pw / ph;
                full[((n * xs.h + 2 * py + k / 2) * xs.w + 2 * px + k % 2) * cout + o] as f64
            };
            r.argmax(&label(&format!("argmax ({path})")), &shape, &am, &cam, 4, TOL_CONV * rms, vals)?;
        }
        Ok(())
    };
    // a path whose forward (backward) kernels were all checked above under an earlier path's
    // name is not checked again: img runs mma's kernels outside the first layers, mma128 mma's
    // weight gradient (the same rule as the bench's lines)
    let fresh = new_kernels(gpu, before, paths, xs, cout, pool);
    for (&path, new) in paths.iter().zip(&fresh) {
        if new[0] {
            gpu.with_conv_path(path, |g| fwd(g, r, path.name()))?;
        } else {
            r.note(&label(&format!("fwd ({})", path.name())), &shape, "its kernel was checked above")?;
        }
    }

    // backward, with the CPU's argmax as the common routing
    let dy = rnd(ys.len(), seed + 5, 1.0, 0.0);
    let cdy = cpu.upload(&dy)?;
    let mut cdw = vec![f32::NAN; w.len()];
    let mut cda = vec![f32::NAN; xs.len()];
    cpu.conv3x3_bwd(&cx, xs, pre_of(&cs, &cb), &cw, cout, pool, &cam, &cdy, &mut cdw, Some(&mut cda), None, None)?;
    let gdy = gpu.upload_f16(&dy)?;
    let gam = gpu.upload_bytes(&cam)?;
    let mut bwd = |gpu: &mut Gpu, r: &mut Report, path: &str| -> Result<()> {
        let mut gdw = gpu.upload(&vec![POISON; w.len()])?;
        let mut gda = gpu.upload(&vec![POISON; xs.len()])?;
        let mut gsum = gpu.upload(&vec![POISON; 2 * cin])?;
        let (da, sums) = (Some(&mut gda), Some(&mut gsum));
        gpu.conv3x3_bwd(&gx, xs, pre_of(&gs, &gb), &gw, cout, pool, &gam, &gdy, &mut gdw, da, sums, None)?;
        let got_dw = gpu.download(&gdw)?;
        r.line(&label(&format!("wgrad dw ({path})")), &shape, &got_dw, &cdw, TOL_CONV)?;
        let got = gpu.download(&gda)?;
        r.line(&label(&format!("dgrad da ({path})")), &shape, &got, &cda, TOL_CONV)?;
        // pre_bwd from the sums the input gradient took (da_sums), against the CPU's pre_bwd of
        // the same da (the training backward)
        let (mut gds, mut gdx) = (gpu.upload(&vec![POISON; cin])?, gpu.upload(&vec![POISON; xs.len()])?);
        gpu.pre_bwd(&gda, &gx, xs, pre_of(&gs, &gb), Some(&gsum), &mut gds, Some(&mut gdx), None)?;
        let (mut cds, mut cdx) = (vec![f32::NAN; cin], vec![f32::NAN; xs.len()]);
        cpu.pre_bwd(&got, &cx, xs, pre_of(&cs, &cb), None, &mut cds, Some(&mut cdx), None)?;
        let got_ds = gpu.download(&gds)?;
        r.line(&label(&format!("da_sums: pre_bwd dshift ({path})")), &shape, &got_ds, &cds, TOL_F32 * 10.0)?;
        let got_dx = gpu.download(&gdx)?;
        r.line(&label(&format!("da_sums: pre_bwd dx ({path})")), &shape, &got_dx, &cdx, TOL_F16_OUT)?;
        // the same without da (the first layer once its bias is frozen), from the forward's kept
        // activation: dw must not change
        let mut gdw2 = gpu.upload(&vec![POISON; w.len()])?;
        let kept = Some(&gkeep);
        gpu.conv3x3_bwd(&gx, xs, pre_of(&gs, &gb), &gw, cout, pool, &gam, &gdy, &mut gdw2, None, None, kept)?;
        let got2 = gpu.download(&gdw2)?;
        r.line(&label(&format!("wgrad dw, no da, kept a ({path})")), &shape, &got2, &got_dw, 0.0)
    };
    for (&path, new) in paths.iter().zip(&fresh) {
        if new[1] || new[2] {
            gpu.with_conv_path(path, |g| bwd(g, r, path.name()))?;
        } else {
            r.note(&label(&format!("wgrad, dgrad ({})", path.name())), &shape, "their kernels were checked above")?;
        }
    }
    Ok(())
}

/// For each of `paths` in order: whether its (forward, weight gradient, input gradient) kernel
/// at this shape is one that no earlier path in `paths` runs there.
/// (`before`: paths whose kernels count as seen already, checked or timed by an earlier call.)
fn new_kernels(
    gpu: &Gpu,
    before: &[ConvPath],
    paths: &[ConvPath],
    xs: Shape,
    cout: usize,
    pool: bool,
) -> Vec<[bool; 3]> {
    let mut seen: Vec<[&str; 3]> = before.iter().map(|&p| gpu.conv_kernels(p, xs, cout, pool)).collect();
    paths
        .iter()
        .map(|&path| {
            let k = gpu.conv_kernels(path, xs, cout, pool);
            let new = [0, 1, 2].map(|g| !seen.iter().any(|s| s[g] == k[g]));
            seen.push(k);
            new
        })
        .collect()
}

/// BatchNorm statistics written by a GPU op (`run`, given where to write them) against the CPU's
/// `bn_stats` of `y` (host values of the tensor they are of): `[mean|invstd]`, and the running
/// mean and var blended from random starting values. Returns the GPU's running statistics.
#[allow(clippy::too_many_arguments)]
fn bn_against_cpu(
    gpu: &mut Gpu,
    cpu: &mut Cpu<f32>,
    r: &mut Report,
    what: &str,
    shape: &str,
    ys: Shape,
    y: &[f32],
    seed: u64,
    run: &mut dyn FnMut(&mut Gpu, BnStats<'_, Gpu>) -> Result<()>,
) -> Result<(GBuf, GBuf)> {
    let c = ys.c;
    let rm = rnd(c, seed + 1, 0.2, 0.0);
    let rv = rnd(c, seed + 2, 0.2, 1.0).into_iter().map(|v| v.abs() + 0.1).collect::<Vec<_>>();
    let (eps, momentum) = (1e-12f32, 0.6f32);
    let (mut crm, mut crv) = (rm.clone(), rv.clone());
    let mut cbn = vec![f32::NAN; 2 * c];
    cpu.bn_stats(&y.to_vec(), ys, eps, momentum, &mut crm, &mut crv, &mut cbn)?;
    let (mut grm, mut grv) = (gpu.upload(&rm)?, gpu.upload(&rv)?);
    let mut gbn = gpu.upload(&vec![POISON; 2 * c])?;
    run(gpu, BnStats { eps, momentum, running_mean: &mut grm, running_var: &mut grv, bn: &mut gbn })?;
    let got = gpu.download(&gbn)?;
    r.line(&format!("{what} [mean|invstd]"), shape, &got, &cbn, TOL_F32)?;
    let got = gpu.download(&grm)?;
    r.line(&format!("{what} running mean"), shape, &got, &crm, TOL_F32)?;
    let got = gpu.download(&grv)?;
    r.line(&format!("{what} running var"), shape, &got, &crv, TOL_F32)?;
    Ok((grm, grv))
}

fn check_bn(gpu: &mut Gpu, cpu: &mut Cpu<f32>, r: &mut Report, ys: Shape, seed: u64) -> Result<()> {
    let c = ys.c;
    let y = rnd(ys.len(), seed, 2.0, 0.5);
    let gy = gpu.upload_f16(&y)?;
    let s = shape_str(ys);
    let (grm, grv) = bn_against_cpu(gpu, cpu, r, "bn_stats", &s, ys, &y, seed, &mut |g, st| {
        g.bn_stats(&gy, ys, st.eps, st.momentum, st.running_mean, st.running_var, st.bn)
    })?;
    // eval mode from the GPU's updated running statistics, on both
    let (crm, crv) = (gpu.download(&grm)?, gpu.download(&grv)?);
    let mut ce = vec![f32::NAN; 2 * c];
    cpu.bn_eval(&crm, &crv, 1e-5, &mut ce)?;
    let mut ge = gpu.upload(&vec![POISON; 2 * c])?;
    gpu.bn_eval(&grm, &grv, 1e-5, &mut ge)?;
    let got = gpu.download(&ge)?;
    r.line("bn_eval", &format!("c={c}"), &got, &ce, TOL_F32)
}

#[allow(clippy::too_many_arguments)]
fn check_pre_bwd(
    gpu: &mut Gpu,
    cpu: &mut Cpu<f32>,
    r: &mut Report,
    xs: Shape,
    bn: bool,
    with_dx: bool,
    unpooled: Option<Shape>,
    seed: u64,
) -> Result<()> {
    let c = xs.c;
    let hp = HostPre::new(c, bn, seed);
    let x = rnd(xs.len(), seed + 3, 1.0, 0.0);
    let da = rnd(xs.len(), seed + 4, 0.1, 0.0);
    // unpooled: random picks (window positions 0..3), and dx at the pool input's shape
    let picks = bytes(if unpooled.is_some() { xs.len() } else { 0 }, seed + 5, 4);
    let dxs = unpooled.unwrap_or(xs);
    let (cs, cb) = up_pre(cpu, &hp)?;
    let (cx, cda, cam) = (cpu.upload(&x)?, cpu.upload(&da)?, cpu.upload_bytes(&picks)?);
    let mut cds = vec![f32::NAN; c];
    let mut cdx = vec![f32::NAN; dxs.len()];
    let unpool = unpooled.map(|full| Unpool { argmax: &cam, full });
    cpu.pre_bwd(&cda, &cx, xs, pre_of(&cs, &cb), None, &mut cds, with_dx.then_some(&mut cdx), unpool)?;
    let (gs, gb) = up_pre(gpu, &hp)?;
    // da uploaded as f32: exercises the cast path
    let (gx, gda, gam) = (gpu.upload_f16(&x)?, gpu.upload(&da)?, gpu.upload_bytes(&picks)?);
    let mut gds = gpu.upload(&vec![POISON; c])?;
    let mut gdx = gpu.upload(&vec![POISON; dxs.len()])?;
    let unpool = unpooled.map(|full| Unpool { argmax: &gam, full });
    gpu.pre_bwd(&gda, &gx, xs, pre_of(&gs, &gb), None, &mut gds, with_dx.then_some(&mut gdx), unpool)?;
    let s = match unpooled {
        Some(full) => format!("{} unpooled to {}", shape_str(xs), shape_str(full)),
        None => shape_str(xs),
    };
    let got = gpu.download(&gds)?;
    r.line(&format!("pre_bwd dshift [{}]", hp.label()), &s, &got, &cds, TOL_F32 * 10.0)?;
    if with_dx {
        let got = gpu.download(&gdx)?;
        r.line(&format!("pre_bwd dx [{}]", hp.label()), &s, &got, &cdx, TOL_F16_OUT)?;
    }
    Ok(())
}

/// `conv3x3_shift_grad` (the whitening bias's gradient through conv 0): the GPU's regrouped sum
/// (a weight gradient against g = GELU′(u), then Σ w·gw per input channel) against the CPU's
/// input gradient and Σ g·da, on the same fp16-valued g and dy.
fn check_shift_grad(
    gpu: &mut Gpu,
    cpu: &mut Cpu<f32>,
    r: &mut Report,
    xs: Shape,
    cout: usize,
    seed: u64,
) -> Result<()> {
    let c = xs.c;
    // GELU′ takes values in about [−0.17, 1.13]; fp16 values (rnd), as the GPU holds them
    let g = rnd(xs.len(), seed + 1, 0.6, 0.5);
    let w = rnd(cout * 9 * c, seed + 3, (1.0 / (9 * c) as f64).sqrt(), 0.0);
    let dy = rnd(xs.len() / c * cout, seed + 4, 0.1, 0.0);
    let (cg, cw, cdy, cam) = (cpu.upload(&g)?, cpu.upload(&w)?, cpu.upload(&dy)?, vec![]);
    let (mut cda, mut cgw, mut cds) = (vec![f32::NAN; xs.len()], vec![f32::NAN; w.len()], vec![f32::NAN; c]);
    cpu.conv3x3_shift_grad(&cg, xs, &cw, cout, &cam, &cdy, &mut cda, &mut cgw, &mut cds)?;
    let (gg, gw, gdy) = (gpu.upload_f16(&g)?, gpu.upload(&w)?, gpu.upload_f16(&dy)?);
    let gam = gpu.upload_bytes(&[])?;
    let (mut gda, mut ggw) = (gpu.upload(&vec![POISON; xs.len()])?, gpu.upload(&vec![POISON; w.len()])?);
    let mut gds = gpu.upload(&vec![POISON; c])?;
    gpu.conv3x3_shift_grad(&gg, xs, &gw, cout, &gam, &gdy, &mut gda, &mut ggw, &mut gds)?;
    let got = gpu.download(&gds)?;
    r.line("conv3x3_shift_grad dshift", &format!("{}->{cout}", shape_str(xs)), &got, &cds, TOL_F16_OUT)
}

fn check_head(gpu: &mut Gpu, cpu: &mut Cpu<f32>, r: &mut Report, xs: Shape, classes: usize, seed: u64) -> Result<()> {
    let (n, c, hw) = (xs.n, xs.c, xs.h * xs.w);
    let hp = HostPre::new(c, true, seed);
    let x = rnd(xs.len(), seed + 3, 1.0, 0.0);
    let w = rnd(classes * c, seed + 4, 1.0, 0.0);
    let scale = 1.0 / c as f32;
    let (cs, cb) = up_pre(cpu, &hp)?;
    let (cx, cw) = (cpu.upload(&x)?, cpu.upload(&w)?);
    let (mut cf, mut cam, mut cl) = (vec![f32::NAN; n * c], vec![0u8; n * c], vec![f32::NAN; n * classes]);
    cpu.head(&cx, xs, pre_of(&cs, &cb), &cw, classes, scale, &mut cf, &mut cam, &mut cl)?;
    let (gs, gb) = up_pre(gpu, &hp)?;
    let (gx, gw) = (gpu.upload_f16(&x)?, gpu.upload(&w)?);
    let mut gf = gpu.upload(&vec![POISON; n * c])?;
    let mut gam = gpu.upload_bytes(&vec![0xEE; n * c])?;
    let mut gl = gpu.upload(&vec![POISON; n * classes])?;
    gpu.head(&gx, xs, pre_of(&gs, &gb), &gw, classes, scale, &mut gf, &mut gam, &mut gl)?;
    let s = format!("{} -> {classes}", shape_str(xs));
    let got = gpu.download(&gf)?;
    r.line("head feat", &s, &got, &cf, TOL_F32)?;
    let got = gpu.download(&gl)?;
    r.line("head logits", &s, &got, &cl, TOL_F32)?;
    let am = gpu.download_bytes(&gam)?;
    let vals = |i: usize, p: usize| {
        let (img, ch) = (i / c, i % c);
        gelu64(hp.u(x[(img * hw + p) * c + ch], ch))
    };
    r.argmax("head argmax", &s, &am, &cam, hw, 1e-5, vals)?;

    // backward with the CPU's features and argmax
    let dl = rnd(n * classes, seed + 5, 0.5, 0.0);
    let cdl = cpu.upload(&dl)?;
    let (mut cdw, mut cda) = (vec![f32::NAN; classes * c], vec![f32::NAN; xs.len()]);
    cpu.head_bwd(&cdl, &cf, &cam, &cw, xs, classes, scale, &mut cdw, &mut cda)?;
    let (gdl, gfeat, gam) = (gpu.upload(&dl)?, gpu.upload(&cf)?, gpu.upload_bytes(&cam)?);
    let mut gdw = gpu.upload(&vec![POISON; classes * c])?;
    let mut gda = gpu.upload(&vec![POISON; xs.len()])?;
    gpu.head_bwd(&gdl, &gfeat, &gam, &gw, xs, classes, scale, &mut gdw, &mut gda)?;
    let got = gpu.download(&gdw)?;
    r.line("head_bwd dw", &s, &got, &cdw, TOL_F32)?;
    let got = gpu.download(&gda)?;
    r.line("head_bwd da", &s, &got, &cda, TOL_F16_OUT)
}

fn check_xent(gpu: &mut Gpu, cpu: &mut Cpu<f32>, r: &mut Report, n: usize, classes: usize, seed: u64) -> Result<()> {
    let total = n + 40;
    let labels = bytes(total, seed, classes as u32);
    let wds = words(n + 3, total, seed + 1);
    let logits = rnd(n * classes, seed + 2, 3.0, 0.0);
    let acc0 = vec![1.5f32, 2.0];
    let rec = Step { offset: 3, lr: [0.0; LRS] }.record(0);
    let (cst, gst) = (cpu.upload_words(&rec)?, gpu.upload_words(&rec)?);
    let (cl, clab, cw) = (cpu.upload(&logits)?, cpu.upload_bytes(&labels)?, cpu.upload_words(&wds)?);
    let mut cd = vec![f32::NAN; n * classes];
    let mut cacc = acc0.clone();
    cpu.xent(&cl, &clab, &cw, &cst, n, classes, 0.2, &mut cd, &mut cacc)?;
    let (gl, glab, gw) = (gpu.upload(&logits)?, gpu.upload_bytes(&labels)?, gpu.upload_words(&wds)?);
    let mut gd = gpu.upload(&vec![POISON; n * classes])?;
    let mut gacc = gpu.upload(&acc0)?;
    gpu.xent(&gl, &glab, &gw, &gst, n, classes, 0.2, &mut gd, &mut gacc)?;
    let s = format!("{n}x{classes}");
    let got = gpu.download(&gd)?;
    r.line("xent dlogits", &s, &got, &cd, TOL_F32)?;
    let got = gpu.download(&gacc)?;
    r.line("xent [loss, correct] acc", &s, &got, &cacc, TOL_F32)?;
    // axpy on the same logits
    let mut ca = rnd(n * classes, seed + 3, 1.0, 0.0);
    let mut ga = gpu.upload(&ca)?;
    cpu.axpy(&mut ca, &cl, 0.125)?;
    gpu.axpy(&mut ga, &gl, 0.125)?;
    let got = gpu.download(&ga)?;
    r.line("axpy", &s, &got, &ca, TOL_F32)
}

fn check_sgd(gpu: &mut Gpu, cpu: &mut Cpu<f32>, r: &mut Report, seed: u64) -> Result<()> {
    // 18 tensors: more than one multi-tensor launch (16 per launch), sizes of the recipe's
    // biases and head plus odd ones
    let sizes: Vec<usize> = (0..18).map(|i| [24, 64, 256, 2560, 1, 333][i % 6]).collect();
    let mut host = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let s = seed + 3 * i as u64;
        host.push((rnd(n, s, 1.0, 0.0), rnd(n, s + 1, 1.0, 0.0), rnd(n, s + 2, 0.5, 0.0)));
    }
    // four rates in the step record's slots; tensor i uses slot i % 4
    let rec = Step { offset: 0, lr: [0.05, 0.06, 0.07, 0.08] }.record(0);
    let (cst, gst) = (cpu.upload_words(&rec)?, gpu.upload_words(&rec)?);
    let lr = |i: usize| i % LRS;
    let wd = |i: usize| 0.004 / (0.05 + 0.01 * i as f32);
    let mut cp: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = host.clone();
    let mut cparams: Vec<SgdParam<Cpu<f32>>> =
        cp.iter_mut().enumerate().map(|(i, (p, g, m))| SgdParam { p, g: &*g, m, lr_slot: lr(i), wd: wd(i) }).collect();
    cpu.sgd(&mut cparams, &cst, 0.85)?;
    drop(cparams);
    let mut gp = Vec::new();
    for (p, g, m) in &host {
        gp.push((gpu.upload(p)?, gpu.upload(g)?, gpu.upload(m)?));
    }
    let mut gparams: Vec<SgdParam<Gpu>> =
        gp.iter_mut().enumerate().map(|(i, (p, g, m))| SgdParam { p, g: &*g, m, lr_slot: lr(i), wd: wd(i) }).collect();
    gpu.sgd(&mut gparams, &gst, 0.85)?;
    drop(gparams);
    let (mut gall, mut call, mut gm, mut cm) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((p, _, m), (cpp, _, cmm)) in gp.iter().zip(&cp) {
        gall.extend(gpu.download(p)?);
        gm.extend(gpu.download(m)?);
        call.extend_from_slice(cpp);
        cm.extend_from_slice(cmm);
    }
    let s = format!("{} tensors", sizes.len());
    r.line("sgd params", &s, &gall, &call, TOL_F32)?;
    r.line("sgd momentum", &s, &gm, &cm, TOL_F32)
}

fn check_muon(
    gpu: &mut Gpu,
    cpu: &mut Cpu<f32>,
    r: &mut Report,
    shapes: &[(usize, usize)],
    ns: Ns,
    seed: u64,
) -> Result<()> {
    let (lr, mom) = (0.24f32, 0.6f32);
    let rec = Step { offset: 0, lr: [1.0, 2.0, lr, 4.0] }.record(0); // the rate in slot 2
    let (cst, gst) = (cpu.upload_words(&rec)?, gpu.upload_words(&rec)?);
    // per tensor: (w0, g, m0)
    let host: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = shapes
        .iter()
        .enumerate()
        .map(|(t, &(rows, cols))| {
            let (n, s) = (rows * cols, seed + 3 * t as u64);
            (rnd(n, s, 1.0 / (cols as f64).sqrt(), 0.0), rnd(n, s + 1, 0.1, 0.0), rnd(n, s + 2, 0.1, 0.0))
        })
        .collect();
    let mut c: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = host.clone();
    let mut cp: Vec<MuonParam<Cpu<f32>>> =
        c.iter_mut().zip(shapes).map(|((w, g, m), &(rows, cols))| MuonParam { w, g: &*g, m, rows, cols }).collect();
    cpu.muon(&mut cp, &cst, 2, mom, ns)?;
    drop(cp);
    let mut g = Vec::new();
    for (w, gr, m) in &host {
        g.push((gpu.upload(w)?, gpu.upload(gr)?, gpu.upload(m)?));
    }
    let mut gp: Vec<MuonParam<Gpu>> =
        g.iter_mut().zip(shapes).map(|((w, gr, m), &(rows, cols))| MuonParam { w, g: &*gr, m, rows, cols }).collect();
    gpu.muon(&mut gp, &gst, 2, mom, ns)?;
    drop(gp);
    for (t, ((&(rows, cols), (gw, _, gm)), ((cw, _, cm), (w0, _, _)))) in
        shapes.iter().zip(&g).zip(c.iter().zip(&host)).enumerate()
    {
        let coeffs = if ns.coeffs == NS_COEFFS { String::new() } else { format!(", NS {:?}", ns.coeffs) };
        let s = format!("{rows}x{cols} ({} of {}){coeffs}", t + 1, shapes.len());
        let (gwv, gmv) = (gpu.download(gw)?, gpu.download(gm)?);
        r.line("muon momentum", &s, &gmv, cm, TOL_F32)?;
        r.line("muon weight", &s, &gwv, cw, TOL_MUON_W)?;
        // the Newton–Schulz update alone: (w_new − w·renorm)/lr
        let fro = w0.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        let renorm = ((rows as f64).sqrt() / fro) as f32;
        let upd = |w: &[f32]| -> Vec<f32> { w.iter().zip(w0).map(|(&a, &b)| (b * renorm - a) / lr).collect() };
        r.line("muon Newton-Schulz update", &s, &upd(&gwv), &upd(cw), TOL_NS)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// One whole training step, generic over the backend (the sequence of main.rs's train_step).

const WHITEN: usize = 24;
const CLASSES: usize = 10;
const STEP_LAYERS: [(usize, usize, bool); 6] =
    [(24, 64, true), (64, 64, false), (64, 256, true), (256, 256, false), (256, 256, true), (256, 256, false)];
/// main.rs's `MUON_EARLY`: the conv layers whose Muon runs in the middle of the backward.
const MUON_EARLY: usize = 2;

/// Host copies of everything a step starts from.
struct StepInit {
    images: Vec<u8>,
    labels: Vec<u8>,
    words: Vec<u32>,
    total: usize,
    whiten_w: Vec<f32>,
    whiten_b: Vec<f32>,
    conv: Vec<Vec<f32>>,
    beta: Vec<Vec<f32>>,
    head: Vec<f32>,
    /// One row per step: its examples' offset and its rates (slots `LR_*`).
    plan: Vec<u32>,
}

/// What a step produced, downloaded: (name, values) in a fixed order, with the tolerance class.
type StepOut = Vec<(String, f64, Vec<f32>)>;

/// Rate slots of the step record in these checks (main.rs has its own assignment).
const LR_MUON: usize = 0;
const LR_BIAS: usize = 1;
const LR_HEAD: usize = 2;
const LR_WHITEN: usize = 3;

/// `steps` steps of `n` examples each: step t takes words t·n.. and the recipe's step-0 rates
/// decayed by 1 − t/4 (so that a step that read the wrong row would show).
/// The plan of `steps` steps of `n` examples: step t's offset, and the recipe's rates (Muon,
/// biases, head, whitening bias) times `f(t)`.
fn plan_rows(n: usize, steps: usize, f: impl Fn(usize) -> f32) -> Vec<u32> {
    (0..steps)
        .flat_map(|t| {
            let f = f(t);
            let mut lr = [0.0; LRS];
            (lr[LR_MUON], lr[LR_BIAS], lr[LR_HEAD], lr[LR_WHITEN]) = (0.24 * f, 0.053 * f, 0.67 * f, 0.053 * f);
            Step { offset: (t * n) as u32, lr }.row()
        })
        .collect()
}

fn step_init(n: usize, steps: usize, seed: u64) -> StepInit {
    let total = n + 50;
    let conv = STEP_LAYERS
        .iter()
        .enumerate()
        .map(|(l, &(cin, cout, _))| {
            let mut w = rnd(cout * 9 * cin, seed + l as u64, 0.6 / ((9 * cin) as f64).sqrt(), 0.0);
            for i in 0..cin.min(cout) {
                w[(i * 9 + 4) * cin + i] += 0.5; // partly Dirac, as the recipe's init
            }
            w
        })
        .collect();
    let plan = plan_rows(n, steps, |t| 1.0 - t as f32 / 4.0);
    StepInit {
        images: bytes(total * 3072, seed + 10, 256),
        labels: bytes(total, seed + 11, CLASSES as u32),
        words: words(n * steps, total, seed + 12),
        total,
        whiten_w: Vec::new(),
        whiten_b: rnd(WHITEN, seed + 13, 0.3, 0.0),
        conv,
        beta: STEP_LAYERS.iter().enumerate().map(|(l, &(_, co, _))| rnd(co, seed + 20 + l as u64, 0.1, 0.0)).collect(),
        head: rnd(CLASSES * 256, seed + 30, 1.0, 0.0),
        plan,
    }
}

/// Every tensor of a training step on one backend: inputs, parameters, activations, gradients
/// and optimizer state, allocated once (a recorded step needs fixed addresses).
struct StepState<B: Backend> {
    n: usize,
    total: usize,
    images: B::Bytes,
    labels: B::Bytes,
    words: B::Words,
    plan: B::Words,
    step: B::Words,
    whiten_w: B::Buf,
    whiten_b: B::Buf,
    conv: Vec<B::Buf>,
    beta: Vec<B::Buf>,
    head: B::Buf,
    run_mean: Vec<B::Buf>,
    run_var: Vec<B::Buf>,
    s: [Shape; 7],
    x: Vec<B::Buf>,
    x0_grad: B::Buf,
    keep: Vec<B::Buf>,
    ga: Vec<B::Buf>,
    gsum: Vec<B::Buf>,
    gx: Vec<B::Buf>,
    am: Vec<B::Bytes>,
    bn: Vec<B::Buf>,
    feat: B::Buf,
    ham: B::Bytes,
    logits: B::Buf,
    dlogits: B::Buf,
    acc: B::Buf,
    g_conv: Vec<B::Buf>,
    g_beta: Vec<B::Buf>,
    g_head: B::Buf,
    g_wb: B::Buf,
    gw0: B::Buf, // scratch of conv 0's weight size (conv3x3_shift_grad), as main.rs's
    /// Whether the whitening bias trains (main.rs's `bias_trains`, the first
    /// `whiten_bias_epochs`): if not, layer 0 has no input gradient and the bias no update.
    bias_trains: bool,
    m_conv: Vec<B::Buf>,
    m_beta: Vec<B::Buf>,
    m_head: B::Buf,
    m_wb: B::Buf,
}

impl<B: Backend> StepState<B> {
    fn new(b: &mut B, init: &StepInit, n: usize) -> Result<StepState<B>> {
        let mut s = [Shape::new(n, 31, 31, WHITEN); 7];
        for (l, &(_, cout, pool)) in STEP_LAYERS.iter().enumerate() {
            s[l + 1] = if pool { s[l].with_c(cout).pooled() } else { s[l].with_c(cout) };
        }
        let c6 = s[6].c;
        let each = |b: &mut B, vs: &[Vec<f32>]| vs.iter().map(|v| b.upload(v)).collect::<Result<Vec<_>>>();
        let zeros = |b: &mut B, vs: &[Vec<f32>]| vs.iter().map(|v| b.zeros(v.len())).collect::<Result<Vec<_>>>();
        let acts = |b: &mut B| s.iter().map(|s| b.zeros(s.len())).collect::<Result<Vec<_>>>();
        Ok(StepState {
            n,
            total: init.total,
            images: b.upload_bytes(&init.images)?,
            labels: b.upload_bytes(&init.labels)?,
            words: b.upload_words(&init.words)?,
            plan: b.upload_words(&init.plan)?,
            step: b.upload_words(&[0; STEP_LEN])?,
            whiten_w: b.upload(&init.whiten_w)?,
            whiten_b: b.upload(&init.whiten_b)?,
            conv: each(b, &init.conv)?,
            beta: each(b, &init.beta)?,
            head: b.upload(&init.head)?,
            run_mean: STEP_LAYERS.iter().map(|&(_, co, _)| b.zeros(co)).collect::<Result<_>>()?,
            run_var: STEP_LAYERS.iter().map(|&(_, co, _)| b.upload(&vec![1.0; co])).collect::<Result<_>>()?,
            x: acts(b)?,
            x0_grad: b.zeros(s[0].len())?,
            // none for conv 0, whose input the stem activated (as main.rs's)
            keep: (0..6).map(|l| b.zeros(if l > 0 { s[l].len() } else { 0 })).collect::<Result<_>>()?,
            ga: acts(b)?,
            // none for conv 0, which takes no input gradient (as main.rs's)
            gsum: (0..6).map(|k| b.zeros(if k > 0 { 2 * s[k].c } else { 0 })).collect::<Result<_>>()?,
            // unpooled where the conv before pools (pre_bwd unpools), as main.rs's
            gx: (0..7).map(|k| b.zeros(grad_shape(&s, &STEP_LAYERS, k).len())).collect::<Result<_>>()?,
            am: (0..6)
                .map(|l| b.byte_zeros(if STEP_LAYERS[l].2 { s[l + 1].len() } else { 0 }))
                .collect::<Result<_>>()?,
            bn: s.iter().map(|s| b.zeros(2 * s.c)).collect::<Result<_>>()?,
            feat: b.zeros(n * c6)?,
            ham: b.byte_zeros(n * c6)?,
            logits: b.zeros(n * CLASSES)?,
            dlogits: b.zeros(n * CLASSES)?,
            acc: b.zeros(2)?,
            g_conv: zeros(b, &init.conv)?,
            g_beta: zeros(b, &init.beta)?,
            g_head: b.zeros(init.head.len())?,
            g_wb: b.zeros(WHITEN)?,
            gw0: b.zeros(init.conv[0].len())?,
            bias_trains: true,
            m_conv: zeros(b, &init.conv)?,
            m_beta: zeros(b, &init.beta)?,
            m_head: b.zeros(init.head.len())?,
            m_wb: b.zeros(WHITEN)?,
            s,
        })
    }

    /// One step, the sequence of main.rs's train_step: the next plan row → forward (training
    /// BN) → xent → backward (the whitening bias trains) → SGD + Muon. Allocates nothing.
    fn step(&mut self, b: &mut B) -> Result<()> {
        self.forward(b)?;
        self.backward(b)
    }

    /// The first part of [`StepState::step`]: the next plan row, the forward pass and the loss.
    fn forward(&mut self, b: &mut B) -> Result<()> {
        let (n, s) = (self.n, self.s);
        let scale = 1.0 / s[6].c as f32;
        b.next_step(&self.plan, &mut self.step)?;
        let (ww, wb, grad) = (&self.whiten_w, &self.whiten_b, self.bias_trains.then_some(&mut self.x0_grad));
        b.stem(&self.images, self.total, &self.words, &self.step, n, NORM, ww, wb, WHITEN, 32, &mut self.x[0], grad)?;
        for (l, &(_, cout, pool)) in STEP_LAYERS.iter().enumerate() {
            let (xi, xo) = self.x.split_at_mut(l + 1);
            let (bi, bo) = self.bn.split_at_mut(l + 1);
            let pre = if l == 0 { Pre::Activated } else { Pre::Bn { bn: &bi[l], beta: &self.beta[l - 1] } };
            let keep = Some(&mut self.keep[l]).filter(|_| l > 0);
            let stats = BnStats {
                eps: 1e-12,
                momentum: 0.6,
                running_mean: &mut self.run_mean[l],
                running_var: &mut self.run_var[l],
                bn: &mut bo[0],
            };
            b.conv3x3(&xi[l], s[l], pre, &self.conv[l], cout, pool, &mut xo[0], &mut self.am[l], keep, Some(stats))?;
        }
        let pre6 = Pre::Bn { bn: &self.bn[6], beta: &self.beta[5] };
        b.head(&self.x[6], s[6], pre6, &self.head, CLASSES, scale, &mut self.feat, &mut self.ham, &mut self.logits)?;
        b.xent(&self.logits, &self.labels, &self.words, &self.step, n, CLASSES, 0.2, &mut self.dlogits, &mut self.acc)
    }

    /// The rest of [`StepState::step`]: the backward pass and both optimisers.
    fn backward(&mut self, b: &mut B) -> Result<()> {
        let s = self.s;
        let scale = 1.0 / s[6].c as f32;
        b.head_bwd(
            &self.dlogits,
            &self.feat,
            &self.ham,
            &self.head,
            s[6],
            CLASSES,
            scale,
            &mut self.g_head,
            &mut self.ga[6],
        )?;
        // as main.rs: the deep layers' Muon as soon as their weight gradients are issued
        self.backward_convs(b, MUON_EARLY..6)?;
        self.muon(b, MUON_EARLY..6)?;
        self.backward_convs(b, 0..MUON_EARLY)?;

        let mut sgd = vec![SgdParam {
            p: &mut self.head,
            g: &self.g_head,
            m: &mut self.m_head,
            lr_slot: LR_HEAD,
            wd: 0.004 / 0.67,
        }];
        for ((p, g), m) in self.beta.iter_mut().zip(&self.g_beta).zip(&mut self.m_beta) {
            sgd.push(SgdParam { p, g, m, lr_slot: LR_BIAS, wd: 0.004 / 0.053 });
        }
        if self.bias_trains {
            let (p, g, m) = (&mut self.whiten_b, &self.g_wb, &mut self.m_wb);
            sgd.push(SgdParam { p, g, m, lr_slot: LR_WHITEN, wd: 0.004 / 0.053 });
        }
        b.sgd(&mut sgd, &self.step, 0.85)?;
        self.muon(b, 0..MUON_EARLY)
    }

    /// The backward of the conv layers `convs`, from the top (the whitening bias's gradient
    /// after conv 0 while it trains), as main.rs's `backward`.
    fn backward_convs(&mut self, b: &mut B, convs: std::ops::Range<usize>) -> Result<()> {
        let s = self.s;
        for (l, &(_, cout, pool)) in STEP_LAYERS.iter().enumerate().rev().filter(|(l, _)| convs.contains(l)) {
            let k = l + 1;
            let pre = Pre::Bn { bn: &self.bn[k], beta: &self.beta[l] };
            let sums = self.gsum.get(k); // from conv k's backward (none for the head's input), as main.rs does
            let unpool = pool.then(|| Unpool { argmax: &self.am[l], full: s[l].with_c(cout) });
            b.pre_bwd(&self.ga[k], &self.x[k], s[k], pre, sums, &mut self.g_beta[l], Some(&mut self.gx[k]), unpool)?;
            let pre = if l == 0 { Pre::Activated } else { Pre::Bn { bn: &self.bn[l], beta: &self.beta[l - 1] } };
            let (ga, gsum, gx) = (&mut self.ga[l], &mut self.gsum[l], &self.gx[k]);
            let (da, da_sums) = if l > 0 { (Some(ga), Some(gsum)) } else { (None, None) };
            b.conv3x3_bwd(
                &self.x[l],
                s[l],
                pre,
                &self.conv[l],
                cout,
                false, // gx is unpooled already
                &self.am[l],
                gx,
                &mut self.g_conv[l],
                da,
                da_sums,
                Some(&self.keep[l]).filter(|_| l > 0),
            )?;
        }
        if self.bias_trains && convs.start == 0 {
            // through conv 0 without its input gradient, as main.rs
            let (gelu_grad, w, dy, am) = (&self.x0_grad, &self.conv[0], &self.gx[1], &self.am[0]);
            let (cout, g0, gw0) = (STEP_LAYERS[0].1, &mut self.ga[0], &mut self.gw0); // scratch
            b.conv3x3_shift_grad(gelu_grad, s[0], w, cout, am, dy, g0, gw0, &mut self.g_wb)?;
        }
        Ok(())
    }

    /// Muon for the conv weights `convs`, as main.rs's `muon`.
    fn muon(&mut self, b: &mut B, convs: std::ops::Range<usize>) -> Result<()> {
        let mut muon: Vec<MuonParam<B>> = self.conv[convs.clone()]
            .iter_mut()
            .zip(&self.g_conv[convs.clone()])
            .zip(&mut self.m_conv[convs.clone()])
            .zip(&STEP_LAYERS[convs])
            .map(|(((w, g), m), &(cin, cout, _))| MuonParam { w, g, m, rows: cout, cols: 9 * cin })
            .collect();
        b.muon(&mut muon, &self.step, LR_MUON, 0.6, Ns::airbench(3))
    }

    /// Everything the step produced, downloaded, with each output's tolerance class.
    fn outputs(&self, b: &mut B) -> Result<StepOut> {
        let mut out: StepOut = Vec::new();
        let mut push = |name: String, tol: f64, buf: &B::Buf| -> Result<()> {
            out.push((name, tol, b.download(buf)?));
            Ok(())
        };
        push("step loss/correct".into(), TOL_STEP_LOSS, &self.acc)?;
        push("step logits".into(), TOL_STEP_ACT, &self.logits)?;
        for (k, bk) in self.bn.iter().enumerate().skip(1) {
            push(format!("step bn[{k}] mean|invstd"), TOL_STEP_ACT, bk)?;
        }
        push("step grad head".into(), TOL_STEP_GRAD, &self.g_head)?;
        for l in (0..6).rev() {
            push(format!("step grad beta[{l}]"), TOL_STEP_GRAD, &self.g_beta[l])?;
            push(format!("step grad conv[{l}]"), TOL_STEP_GRAD, &self.g_conv[l])?;
        }
        push("step grad whiten bias".into(), TOL_STEP_GRAD, &self.g_wb)?;
        push("step updated head".into(), TOL_STEP_PARAM, &self.head)?;
        push("step updated whiten bias".into(), TOL_STEP_PARAM, &self.whiten_b)?;
        for l in 0..6 {
            push(format!("step updated beta[{l}]"), TOL_STEP_PARAM, &self.beta[l])?;
            push(format!("step updated conv[{l}]"), TOL_STEP_PARAM, &self.conv[l])?;
            push(format!("step running var[{l}]"), TOL_STEP_ACT, &self.run_var[l])?;
        }
        b.sync()?;
        Ok(out)
    }
}

/// A step's initial state with whitening filters from the CPU covariance of its images.
fn step_init_whitened(cpu: &mut Cpu<f32>, n: usize, steps: usize, seed: u64) -> Result<StepInit> {
    let mut init = step_init(n, steps, seed);
    let ci = cpu.upload_bytes(&init.images)?;
    let cov = cpu.patch_cov(&ci, init.total, NORM)?;
    let (w, _) = crate::whiten::filters(&cov, 5e-4);
    init.whiten_w = w.into_iter().map(|v| f16::from_f32(v).to_f32()).collect();
    Ok(init)
}

/// One whole training step on both backends, every output compared.
fn check_step(gpu: &mut Gpu, cpu: &mut Cpu<f32>, r: &mut Report, n: usize, seed: u64) -> Result<()> {
    let init = step_init_whitened(cpu, n, 1, seed)?;
    let mut c = StepState::new(cpu, &init, n)?;
    let mut g = StepState::new(gpu, &init, n)?;
    c.forward(cpu)?;
    g.forward(gpu)?;
    // Max-pool picks at near-ties differ between fp16 activations and the f32 reference (the
    // per-op argmax checks bound them), and a gradient routed to another pixel differs there
    // entirely: a few dozen flips of 16384 head picks make every gradient below the head ~6%
    // off. So the CPU backward routes through the GPU's picks, as the per-op conv checks do.
    let shape = format!("batch {n}, recipe widths, {} convs", gpu.conv_path.name());
    let (mut differ, mut picks) = (0, 0);
    for l in 0..6 {
        let am = gpu.download_bytes(&g.am[l])?;
        differ += am.iter().zip(&c.am[l]).filter(|(a, b)| a != b).count();
        picks += am.len();
        c.am[l] = am;
    }
    let ham = gpu.download_bytes(&g.ham)?;
    differ += ham.iter().zip(&c.ham).filter(|(a, b)| a != b).count();
    picks += ham.len();
    c.ham = ham;
    let detail =
        format!("{differ} of {picks} pooling picks differ from the CPU's (near-ties); its backward uses the GPU's");
    r.flag("step argmax picks", &detail, differ * 100 <= picks)?;
    c.backward(cpu)?;
    g.backward(gpu)?;
    let want = c.outputs(cpu)?;
    let got = g.outputs(gpu)?;
    // the logits' error, which the summed loss inherits: each image's loss moves by at most
    // sum_j |p_j - q_j| * max|dz| <= 2 max|dz| (its gradient in the logits is p - q)
    let dz = got.iter().zip(&want).find(|(g, _)| g.0 == "step logits").map_or(0.0, |(g, w)| rel_l2(&g.2, &w.2).0);
    for ((name, tol, g), (_, _, w)) in got.iter().zip(&want) {
        if name == "step loss/correct" && g.len() == 2 && w.len() == 2 {
            // the loss sum to TOL_STEP_LOSS, or to what the logits' error can move it by (at a
            // small batch, a few images' errors need not cancel); the correct count may differ
            // by one prediction whose two top logits are within the fp16 error of each other
            let tol = tol.max(2.0 * n as f64 * dz / (w[0] as f64).abs().max(1e-30));
            r.line("step loss", &shape, &g[..1], &w[..1], tol)?;
            r.line("step correct count (±1)", &shape, &g[1..], &w[1..], 1.0 / (w[1] as f64).max(1.0) + 1e-9)?;
        } else {
            r.line(name, &shape, g, w, *tol)?;
        }
    }
    Ok(())
}

/// The training step recorded as a CUDA graph and replayed equals the same steps run op by op,
/// bit for bit (no kernel uses atomics): three steps, each reading its own plan row (offset and
/// rates), so a graph that froze the first step's values would differ.
fn check_graph(gpu: &mut Gpu, cpu: &mut Cpu<f32>, r: &mut Report, n: usize, seed: u64) -> Result<()> {
    let init = step_init_whitened(cpu, n, 3, seed)?;
    let mut eager = StepState::new(gpu, &init, n)?;
    for _ in 0..3 {
        eager.step(gpu)?;
    }
    let want = eager.outputs(gpu)?;
    drop(eager);
    let mut rec = StepState::new(gpu, &init, n)?;
    rec.step(gpu)?; // once op by op: kernels loaded, scratch sized
    let graph =
        gpu.record(&mut |g| rec.step(g))?.ok_or_else(|| Error::Gpu("the GPU backend recorded no graph".into()))?;
    gpu.replay(&graph)?;
    gpu.replay(&graph)?;
    let got = rec.outputs(gpu)?;
    let shape = format!("3 steps of {n}");
    for ((name, _, g), (_, _, w)) in got.iter().zip(&want) {
        let same = g.len() == w.len() && g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits());
        r.flag(&format!("graph replay = op by op: {}", name.trim_start_matches("step ")), &shape, same)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Per-kernel benchmark

/// H100 SXM peaks from ../shared/docs/RECIPE.md: dense fp16 tensor-core FLOP/s and HBM bytes/s.
const PEAK_FLOPS: f64 = 800e12;
const PEAK_BYTES: f64 = 3.0e12;
const REPS: usize = 20;
const WARMUP: usize = 3;

/// Median milliseconds of `REPS` event-timed runs of `f` after `WARMUP` untimed ones.
fn time_ms(gpu: &mut Gpu, f: &mut dyn FnMut(&mut Gpu) -> Result<()>) -> Result<f64> {
    for _ in 0..WARMUP {
        f(gpu)?;
    }
    gpu.sync()?;
    let t = Timer::new(&gpu.ctx)?;
    let mut ms = Vec::with_capacity(REPS);
    for _ in 0..REPS {
        t.start(&gpu.stream)?;
        f(gpu)?;
        ms.push(t.stop(&gpu.stream)? as f64);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    Ok(ms[REPS / 2])
}

fn bench_line(out: &mut dyn Write, name: &str, shape: &str, ms: f64, flops: f64, bytes: f64) -> Result<()> {
    let s = ms * 1e-3;
    let floor_us = (flops / PEAK_FLOPS).max(bytes / PEAK_BYTES) * 1e6;
    writeln!(
        out,
        "{name:<34} {shape:<26} {:>9.1} us  {:>7.1} TFLOP/s  {:>7.1} GB/s  floor {:>8.1} us ({:>5.1}% of floor)",
        ms * 1e3,
        flops / s / 1e12,
        bytes / s / 1e9,
        floor_us,
        100.0 * floor_us / (ms * 1e3)
    )
    .map_err(io)
}

/// The environment variable that runs only some of the bench's lines.
pub const BENCH_ONLY_ENV: &str = "SPEEDRUN_BENCH_ONLY";

/// Where the bench's lines go, and which of them run: every line, or with
/// `SPEEDRUN_BENCH_ONLY=a,b` those whose name contains a or b (the others are neither timed nor
/// printed; `bench/gpu-session.sh ncu` runs one line per profiled kernel so).
pub struct Lines<'a> {
    out: &'a mut dyn Write,
    only: Vec<String>,
    offered: Vec<String>, // every line's name, for the error when the filter names none
    wanted: usize,
}

impl<'a> Lines<'a> {
    pub fn new(out: &'a mut dyn Write, only: Vec<String>) -> Lines<'a> {
        Lines { out, only, offered: Vec::new(), wanted: 0 }
    }

    /// Whether the line `name` runs (each line asks once).
    fn wants(&mut self, name: &str) -> bool {
        self.offered.push(name.to_string());
        let w = only_wants(&self.only, name);
        self.wanted += w as usize;
        w
    }

    /// Times `f` and prints its line, if `name` runs.
    fn time(
        &mut self,
        gpu: &mut Gpu,
        name: &str,
        shape: &str,
        flops: f64,
        bytes: f64,
        f: &mut dyn FnMut(&mut Gpu) -> Result<()>,
    ) -> Result<()> {
        if self.wants(name) {
            let ms = time_ms(gpu, f)?;
            bench_line(self.out, name, shape, ms, flops, bytes)?;
        }
        Ok(())
    }

    /// With a filter: a usage error if it named no line (a typo would otherwise time nothing),
    /// listing them; else the note that the output is partial.
    pub(crate) fn finish(self) -> Result<()> {
        if self.only.is_empty() {
            return Ok(());
        }
        let filter = self.only.join(",");
        if self.wanted == 0 {
            return Err(Error::Usage(format!(
                "{BENCH_ONLY_ENV}={filter} is in no bench line's name; the lines: {}",
                self.offered.join("; ")
            )));
        }
        let left = self.offered.len() - self.wanted;
        writeln!(self.out, "(PARTIAL: {left} lines left out by {BENCH_ONLY_ENV}={filter})").map_err(io)
    }
}

/// Times every kernel family at the recipe's shapes for `batch` images and prints time,
/// achieved TFLOP/s and GB/s, and the floor time at 800 TFLOP/s / 3.0 TB/s (H100 SXM).
/// Inputs are random (fp16 activations, f32 parameters); nothing is validated here (`run` does).
/// `SPEEDRUN_BENCH_ONLY` picks lines ([`Lines`]).
pub fn bench(gpu: &mut Gpu, batch: usize, out: &mut dyn Write) -> Result<()> {
    let only = only_filter(std::env::var(BENCH_ONLY_ENV).ok().as_deref());
    let mut lines = Lines::new(out, only);
    bench_lines(gpu, batch, &mut lines)?;
    lines.finish()
}

/// The bench's lines for `batch` images into `lines` (which says which run).
pub(crate) fn bench_lines(gpu: &mut Gpu, batch: usize, lines: &mut Lines) -> Result<()> {
    let n = batch;
    writeln!(lines.out, "kernel bench on {}: batch {n}, median of {REPS} after {WARMUP} warm-up runs", gpu.describe())
        .map_err(io)?;
    // stem
    let total = n.max(1);
    let images = gpu.upload_bytes(&bytes(total * 3072, 1, 256))?;
    let wds = gpu.upload_words(&words(n, total, 2))?;
    let rec = gpu.upload_words(&Step { offset: 0, lr: [0.24, 0.01, 0.01, 0.01] }.record(0))?;
    let ww = gpu.upload(&rnd(WHITEN * 12, 3, 0.5, 0.0))?;
    let wb = gpu.upload(&rnd(WHITEN, 4, 0.3, 0.0))?;
    let mut x0 = gpu.upload_f16(&vec![0.5; n * 961 * WHITEN])?;
    let mut grad = gpu.upload_f16(&vec![0.5; n * 961 * WHITEN])?;
    // the stem with its bias and GELU (conv 0's activated input); "+GELU'": also GELU′, as
    // while the whitening bias trains
    let (flops, bytes_moved) = ((n * 961 * WHITEN * 24) as f64, (n * 3072 + n * 961 * WHITEN * 2) as f64);
    lines.time(gpu, "stem", &format!("{n}x32x32x3->24"), flops, bytes_moved, &mut |g| {
        g.stem(&images, total, &wds, &rec, n, NORM, &ww, &wb, WHITEN, 32, &mut x0, None)
    })?;
    let bytes_grad = bytes_moved + (n * 961 * WHITEN * 2) as f64;
    lines.time(gpu, "stem+GELU'", &format!("{n}x32x32x3->24"), flops, bytes_grad, &mut |g| {
        g.stem(&images, total, &wds, &rec, n, NORM, &ww, &wb, WHITEN, 32, &mut x0, Some(&mut grad))
    })?;
    let nc = total.min(5000);
    lines.time(
        gpu,
        "patch_cov",
        &format!("{nc} images"),
        (nc * 961 * 144 * 2) as f64,
        (nc * 3072) as f64,
        &mut |g| g.patch_cov(&images, nc, NORM).map(|_| ()),
    )?;

    // the whitening bias's gradient through conv 0 (the first whiten_bias_epochs' steps), on the
    // default path: against "wgrad+dgrad+sums [0]" − "wgrad [0]", which it replaced
    {
        let xs = Shape::new(n, 31, 31, WHITEN);
        let cout = LAYERS[0].3;
        let gelu_grad = gpu.upload_f16(&rnd(xs.len(), 60, 1.0, 0.0))?;
        let w = gpu.upload(&rnd(cout * 9 * WHITEN, 62, 0.1, 0.0))?;
        let dy = gpu.upload_f16(&rnd(n * 961 * cout, 63, 0.1, 0.0))?;
        let am = gpu.upload_bytes(&[])?;
        let (mut g0, mut gw, mut ds) = (gpu.zeros(xs.len())?, gpu.zeros(cout * 9 * WHITEN)?, gpu.zeros(WHITEN)?);
        let flops = 2.0 * (n * 961 * cout * 9 * WHITEN) as f64;
        let bytes_moved = (xs.len() * 2 + n * 961 * cout * 2) as f64;
        let shape = format!("{}->{cout}", shape_str(xs));
        lines.time(gpu, "conv3x3_shift_grad [0]", &shape, flops, bytes_moved, &mut |g| {
            g.conv3x3_shift_grad(&gelu_grad, xs, &w, cout, &am, &dy, &mut g0, &mut gw, &mut ds)
        })?;
    }

    // every conv path but wgmma here; the wgmma lines come last (bench_step), so that a fault in
    // them (which loses the context) costs only their own lines
    bench_convs(gpu, n, &[], &ConvPath::wgmma_last(gpu.info.cc).0, true, lines)?;

    // head, loss, optimizers (each on the previous line's outputs, zeros where it did not run)
    let xs = Shape::new(n, 3, 3, 256);
    let x = gpu.upload_f16(&rnd(xs.len(), 70, 1.0, 0.0))?;
    let hw = gpu.upload(&rnd(CLASSES * 256, 71, 1.0, 0.0))?;
    let beta = gpu.upload(&rnd(256, 72, 0.1, 0.0))?;
    let mut bnv = rnd(256, 73, 0.1, 0.0);
    bnv.extend(vec![1.0; 256]);
    let bnb = gpu.upload(&bnv)?;
    let (mut feat, mut ham, mut logits) = (gpu.zeros(n * 256)?, gpu.byte_zeros(n * 256)?, gpu.zeros(n * CLASSES)?);
    let (flops, bytes_moved) = ((n * 256 * (9 * 20 + 20)) as f64, (xs.len() * 2 + n * 256 * 5) as f64);
    lines.time(gpu, "head", &shape_str(xs), flops, bytes_moved, &mut |g| {
        g.head(&x, xs, Pre::Bn { bn: &bnb, beta: &beta }, &hw, CLASSES, 1.0 / 256.0, &mut feat, &mut ham, &mut logits)
    })?;
    let labels = gpu.upload_bytes(&bytes(total, 74, CLASSES as u32))?;
    let (mut dl, mut acc) = (gpu.zeros(n * CLASSES)?, gpu.zeros(2)?);
    let (flops, bytes_moved) = ((n * CLASSES * 30) as f64, (n * CLASSES * 8) as f64);
    lines.time(gpu, "xent", &format!("{n}x{CLASSES}"), flops, bytes_moved, &mut |g| {
        g.xent(&logits, &labels, &wds, &rec, n, CLASSES, 0.2, &mut dl, &mut acc)
    })?;
    let (mut dw, mut da) = (gpu.zeros(CLASSES * 256)?, gpu.zeros(xs.len())?);
    let (flops, bytes_moved) = ((4 * n * 256 * CLASSES) as f64, (xs.len() * 2 + n * 256 * 9) as f64);
    lines.time(gpu, "head_bwd", &shape_str(xs), flops, bytes_moved, &mut |g| {
        g.head_bwd(&dl, &feat, &ham, &hw, xs, CLASSES, 1.0 / 256.0, &mut dw, &mut da)
    })?;

    let sizes = [CLASSES * 256, 64, 64, 256, 256, 256, 256, WHITEN];
    let mut st: Vec<(GBuf, GBuf, GBuf)> = Vec::new();
    for (i, &s) in sizes.iter().enumerate() {
        st.push((
            gpu.upload(&rnd(s, 80 + i as u64, 1.0, 0.0))?,
            gpu.upload(&rnd(s, 90 + i as u64, 1.0, 0.0))?,
            gpu.zeros(s)?,
        ));
    }
    let total_sgd: usize = sizes.iter().sum();
    let (flops, bytes_moved) = ((6 * total_sgd) as f64, (5 * 4 * total_sgd) as f64);
    lines.time(gpu, "sgd (8 tensors)", &format!("{total_sgd} values"), flops, bytes_moved, &mut |g| {
        let mut ps: Vec<SgdParam<Gpu>> =
            st.iter_mut().map(|(p, gr, m)| SgdParam { p, g: &*gr, m, lr_slot: 1, wd: 0.01 }).collect();
        g.sgd(&mut ps, &rec, 0.85)
    })?;
    let mut mu: Vec<(GBuf, GBuf, GBuf, usize, usize)> = Vec::new();
    for (i, &(_, _, cin, cout, _)) in LAYERS.iter().enumerate() {
        let len = cout * 9 * cin;
        mu.push((
            gpu.upload(&rnd(len, 100 + i as u64, 0.02, 0.0))?,
            gpu.upload(&rnd(len, 110 + i as u64, 0.01, 0.0))?,
            gpu.zeros(len)?,
            cout,
            9 * cin,
        ));
    }
    let ns_flops: f64 =
        mu.iter().map(|&(_, _, _, r, c)| 3.0 * (4.0 * (r * r * c) as f64 + 2.0 * (r * r * r) as f64)).sum();
    let ns_bytes: f64 = mu.iter().map(|&(_, _, _, r, c)| (r * c * 4 * 20) as f64).sum();
    lines.time(gpu, "muon (6 convs, 3 NS)", "recipe weights", ns_flops, ns_bytes, &mut |g| {
        let mut ps: Vec<MuonParam<Gpu>> =
            mu.iter_mut().map(|(w, gr, m, r, c)| MuonParam { w, g: &*gr, m, rows: *r, cols: *c }).collect();
        g.muon(&mut ps, &rec, 0, 0.6, Ns::airbench(3))
    })?;
    drop((mu, st));
    bench_step(gpu, n, ns_flops, lines)
}

/// The conv lines (forward, with BatchNorm statistics, weight and input gradients, with sums)
/// of every layer on each of `paths`, then, with `bn_lines`, each layer's bn_stats and pre_bwd.
fn bench_convs(
    gpu: &mut Gpu,
    n: usize,
    before: &[ConvPath],
    paths: &[ConvPath],
    bn_lines: bool,
    lines: &mut Lines,
) -> Result<()> {
    for (l, &(h, w, cin, cout, pool)) in LAYERS.iter().enumerate() {
        let xs = Shape::new(n, h, w, cin);
        let ys = if pool { xs.with_c(cout).pooled() } else { xs.with_c(cout) };
        let x = gpu.upload_f16(&rnd(xs.len(), 10 + l as u64, 1.0, 0.0))?;
        let wt = gpu.upload(&rnd(cout * 9 * cin, 20 + l as u64, 0.05, 0.0))?;
        let shift = gpu.upload(&rnd(cin, 30 + l as u64, 0.1, 0.0))?;
        let mut bnv = rnd(cin, 40, 0.1, 0.0);
        bnv.extend(vec![1.0; cin]);
        let bnb = gpu.upload(&bnv)?;
        let pre = |l: usize| if l == 0 { Pre::Bias(&shift) } else { Pre::Bn { bn: &bnb, beta: &shift } };
        let mut y = gpu.upload_f16(&vec![0.0; ys.len()])?;
        let mut am = gpu.byte_zeros(if pool { ys.len() } else { 0 })?;
        let computed = if pool { ys.count() * 4 } else { xs.count() };
        let flops = 2.0 * computed as f64 * cout as f64 * (9 * cin) as f64;
        let shape = format!("{}->{}{}", shape_str(xs), cout, if pool { " pool" } else { "" });
        let bytes = (xs.len() * 2 + cout * 9 * cin * 4 + ys.len() * 2 + if pool { ys.len() } else { 0 }) as f64;
        let dy = gpu.upload_f16(&rnd(ys.len(), 50 + l as u64, 1.0, 0.0))?;
        let mut dw = gpu.zeros(cout * 9 * cin)?;
        let mut da = gpu.zeros(xs.len())?;
        let mut keep = gpu.zeros(xs.len())?;
        let mut gsum = gpu.zeros(2 * cin)?;
        let full = 2.0 * xs.count() as f64 * cout as f64 * (9 * cin) as f64;
        let wbytes = (xs.len() * 2 + ys.len() * 2 + cout * 9 * cin * 4) as f64;
        let mut rm = gpu.zeros(cout)?;
        let mut rv = gpu.upload(&vec![1.0; cout])?;
        let mut bo = gpu.zeros(2 * cout)?;
        // a line whose kernels were all timed already under an earlier path's name is left out
        let fresh = new_kernels(gpu, before, paths, xs, cout, pool);
        for (&path, &[fwd_new, wgrad_new, dgrad_new]) in paths.iter().zip(&fresh) {
            let p = path.name();
            let names = [
                format!("conv3x3 fwd {p} [{l}]"),
                format!("conv3x3 fwd+bn_stats {p} [{l}]"),
                format!("conv3x3 wgrad {p} [{l}]"),
                format!("conv3x3 wgrad+dgrad {p} [{l}]"),
                format!("conv3x3 wgrad+dgrad+sums {p} [{l}]"),
                // the same kernels with null outputs: their main loops without epilogues
                // (Gpu::mainloop_only); against the lines above, what the epilogues cost
                format!("conv3x3 fwd main loop {p} [{l}]"),
                format!("conv3x3 wgrad+dgrad main loop {p} [{l}]"),
                // the wgmma forwards' and input gradients' former epilogues
                // (Gpu::register_epilogue), against the shared-memory loops of the plain lines
                format!("conv3x3 fwd register epilogue {p} [{l}]"),
                format!("conv3x3 wgrad+dgrad+sums register epilogue {p} [{l}]"),
            ];
            let (mma, bwd_new) = (path.is_mma(), wgrad_new || dgrad_new);
            let regs = fwd_new && path.is_sm90() && path != ConvPath::WgmmaP;
            let dregs = bwd_new && path.is_sm90() && path != ConvPath::WgmmaP;
            let offered = [fwd_new, fwd_new, wgrad_new, bwd_new, bwd_new, fwd_new && mma, bwd_new && mma, regs, dregs];
            let want: Vec<bool> = names.iter().zip(offered).map(|(name, o)| o && lines.wants(name)).collect();
            if !want.contains(&true) {
                continue;
            }
            gpu.with_conv_path(path, |gpu| -> Result<()> {
                // as in training: the forward keeps its activated input, the backward reuses it
                // (an untimed forward where its lines are left out: the backward reads its argmax)
                let mut fwd =
                    |g: &mut Gpu| g.conv3x3(&x, xs, pre(l), &wt, cout, pool, &mut y, &mut am, Some(&mut keep), None);
                if want[0] {
                    let ms = time_ms(gpu, &mut fwd)?;
                    bench_line(lines.out, &names[0], &shape, ms, flops, bytes)?;
                } else if !want[1] && (want[2] || want[3] || want[4] || want[6] || want[8]) {
                    // (not before a main-loop line alone: ncu's first launch is then the timed one)
                    fwd(gpu)?;
                }
                if want[1] {
                    // the training forward: the conv also takes its output's BatchNorm statistics
                    // (mma: in its epilogue; wmma: conv, then bn_stats)
                    let ms = time_ms(gpu, &mut |g| {
                        let st = BnStats {
                            eps: 1e-12,
                            momentum: 0.6,
                            running_mean: &mut rm,
                            running_var: &mut rv,
                            bn: &mut bo,
                        };
                        g.conv3x3(&x, xs, pre(l), &wt, cout, pool, &mut y, &mut am, Some(&mut keep), Some(st))
                    })?;
                    bench_line(lines.out, &names[1], &shape, ms, flops, bytes)?;
                }
                let k = Some(&keep);
                if want[2] {
                    let ms = time_ms(gpu, &mut |g| {
                        g.conv3x3_bwd(&x, xs, pre(l), &wt, cout, pool, &am, &dy, &mut dw, None, None, k)
                    })?;
                    bench_line(lines.out, &names[2], &shape, ms, full, wbytes)?;
                }
                if want[3] {
                    let ms = time_ms(gpu, &mut |g| {
                        g.conv3x3_bwd(&x, xs, pre(l), &wt, cout, pool, &am, &dy, &mut dw, Some(&mut da), None, k)
                    })?;
                    bench_line(lines.out, &names[3], &shape, ms, 2.0 * full, 2.0 * wbytes)?;
                }
                if want[4] {
                    // the training backward: the input gradient also takes pre_bwd's sums (mma: in
                    // its epilogue; wmma: one more reduction over da and x)
                    let ms = time_ms(gpu, &mut |g| {
                        let (da, sums) = (Some(&mut da), Some(&mut gsum));
                        g.conv3x3_bwd(&x, xs, pre(l), &wt, cout, pool, &am, &dy, &mut dw, da, sums, k)
                    })?;
                    bench_line(lines.out, &names[4], &shape, ms, 2.0 * full, 2.0 * wbytes + (xs.len() * 2) as f64)?;
                }
                let main_loop = |g: &mut Gpu, f: &mut dyn FnMut(&mut Gpu) -> Result<()>| {
                    g.mainloop_only = true;
                    let ms = time_ms(g, f);
                    g.mainloop_only = false;
                    ms
                };
                if want[5] {
                    let ms = main_loop(gpu, &mut |g| {
                        g.conv3x3(&x, xs, pre(l), &wt, cout, pool, &mut y, &mut am, Some(&mut keep), None)
                    })?;
                    bench_line(lines.out, &names[5], &shape, ms, flops, bytes)?;
                    // the plain line's floor
                }
                if want[6] {
                    let ms = main_loop(gpu, &mut |g| {
                        let k = Some(&keep);
                        g.conv3x3_bwd(&x, xs, pre(l), &wt, cout, pool, &am, &dy, &mut dw, Some(&mut da), None, k)
                    })?;
                    bench_line(lines.out, &names[6], &shape, ms, 2.0 * full, 2.0 * wbytes)?;
                }
                if want[7] {
                    gpu.register_epilogue = true;
                    let ms = time_ms(gpu, &mut |g| {
                        g.conv3x3(&x, xs, pre(l), &wt, cout, pool, &mut y, &mut am, Some(&mut keep), None)
                    });
                    gpu.register_epilogue = false;
                    bench_line(lines.out, &names[7], &shape, ms?, flops, bytes)?;
                }
                if want[8] {
                    gpu.register_epilogue = true;
                    let ms = time_ms(gpu, &mut |g| {
                        let (da, sums, k) = (Some(&mut da), Some(&mut gsum), Some(&keep));
                        g.conv3x3_bwd(&x, xs, pre(l), &wt, cout, pool, &am, &dy, &mut dw, da, sums, k)
                    });
                    gpu.register_epilogue = false;
                    bench_line(lines.out, &names[8], &shape, ms?, 2.0 * full, 2.0 * wbytes + (xs.len() * 2) as f64)?;
                }
                Ok(())
            })?;
        }

        if !bn_lines {
            continue;
        }
        // act_f16 over this conv's input by itself (inside every "conv3x3 fwd" line above; layer
        // 0's input now comes activated from the stem, the "stem" line)
        let mut a = gpu.zeros(xs.len())?;
        lines.time(
            gpu,
            &format!("act [{l}]"),
            &shape_str(xs),
            20.0 * xs.len() as f64,
            (4 * xs.len()) as f64,
            &mut |g| g.act_only(&x, xs, pre(l), &mut a),
        )?;
        // BN statistics (by themselves) and pre_bwd of this conv's output
        let (flops, moved) = (3.0 * ys.len() as f64, (2 * ys.len() * 2) as f64);
        lines.time(gpu, &format!("bn_stats [{l}]"), &shape_str(ys), flops, moved, &mut |g| {
            g.bn_stats(&y, ys, 1e-12, 0.6, &mut rm, &mut rv, &mut bo)
        })?;
        let beta = gpu.upload(&rnd(cout, 60, 0.1, 0.0))?;
        let mut dshift = gpu.zeros(cout)?;
        let mut dx = gpu.zeros(ys.len())?;
        let (flops, moved) = (40.0 * ys.len() as f64, (5 * ys.len() * 2) as f64);
        lines.time(gpu, &format!("pre_bwd [{l}]"), &shape_str(ys), flops, moved, &mut |g| {
            g.pre_bwd(&dy, &y, ys, Pre::Bn { bn: &bo, beta: &beta }, None, &mut dshift, Some(&mut dx), None)
        })?;
        if pool {
            // as the step runs it: dx written unpooled, for the conv backward without a pool
            let full = xs.with_c(cout);
            let mut dxf = gpu.zeros(full.len())?;
            let moved = (4 * ys.len() * 2 + ys.len() + full.len() * 2) as f64;
            lines.time(gpu, &format!("pre_bwd unpooled [{l}]"), &shape_str(full), flops, moved, &mut |g| {
                let unpool = Some(Unpool { argmax: &am, full });
                g.pre_bwd(&dy, &y, ys, Pre::Bn { bn: &bo, beta: &beta }, None, &mut dshift, Some(&mut dxf), unpool)
            })?;
        }
    }
    Ok(())
}

/// The whole training step (what main.rs replays per step), op by op and as one CUDA graph:
/// the difference is the launch overhead the graph removes. FLOPs: the six convs' forward,
/// input and weight gradients plus Muon's Newton–Schulz GEMMs.
fn bench_step(gpu: &mut Gpu, n: usize, ns_flops: f64, lines: &mut Lines) -> Result<()> {
    let conv_flops: f64 =
        LAYERS.iter().map(|&(h, w, cin, cout, _)| 3.0 * 2.0 * (n * h * w * cout * 9 * cin) as f64).sum();
    let flops = conv_flops + ns_flops;
    let batch = format!("batch {n}");
    // the step's state, made for the first line that runs (a CPU reference step: seconds)
    let mut state: Option<StepState<Gpu>> = None;
    if lines.wants("train step, op by op") {
        let st = step_state(&mut state, gpu, n)?;
        let ms = time_ms(gpu, &mut |g| st.step(g))?;
        bench_line(lines.out, "train step, op by op", &batch, ms, flops, 0.0)?;
    }
    if lines.wants("train step, CUDA graph") {
        let st = step_state(&mut state, gpu, n)?;
        st.step(gpu)?; // scratch sized outside the recording, which must not allocate
        let graph =
            gpu.record(&mut |g| st.step(g))?.ok_or_else(|| Error::Gpu("the GPU backend recorded no graph".into()))?;
        let ms = time_ms(gpu, &mut |g| g.replay(&graph))?;
        bench_line(lines.out, "train step, CUDA graph", &batch, ms, flops, 0.0)?;
    }
    // The same step with one switch changed, recorded and replayed: each other sm_80+ conv path
    // (mma, mma128, wgmma), then the BatchNorm sums the other way (NOTES levers 2b, 2c). One
    // step op by op first: scratch sized outside the recording, which must not allocate.
    // the other paths: where SPEEDRUN_CONV is a list (a way to leave out one that faults), the
    // families mixed chooses among, else every tunable path
    let tunable = if gpu.conv_tune.len() >= 2 { gpu.mixed_candidates() } else { ConvPath::tunable(gpu.info.cc) };
    let others: Vec<ConvPath> =
        if gpu.conv_path.is_mma() { tunable.into_iter().filter(|&p| p != gpu.conv_path).collect() } else { Vec::new() };
    for &path in others.iter().filter(|&&p| !p.is_sm90()) {
        let name = format!("train step, graph, {} convs", path.name());
        gpu.with_conv_path(path, |g| step_variant(g, lines, &mut state, n, flops, &name))?;
    }
    if gpu.conv_path.is_mma() {
        let sums = gpu.epilogue_sums;
        gpu.epilogue_sums = !sums;
        let name = if sums { "train step, graph, sums off" } else { "train step, graph, epilogue sums" };
        let r = step_variant(gpu, lines, &mut state, n, flops, name);
        gpu.epilogue_sums = sums;
        r?;
    }
    profile_line(gpu, lines, &mut state, n, None)?;
    // Last, where the GPU has them and they are not the default: the wgmma convs per layer, the
    // step on them, and its profile, then the same for wgmma2, wgmmap, tma and tma4 (their own kernels'
    // lines; a fault in an sm_90a kernel loses the context: only the lines after it are then
    // missing)
    let sm90 = [ConvPath::Wgmma, ConvPath::Wgmma2, ConvPath::WgmmaP, ConvPath::Tma, ConvPath::Tma4];
    for (i, &path) in sm90.iter().enumerate().filter(|(_, p)| others.contains(p)) {
        // wgmma2's, wgmmap's, tma's and tma4's lines: their own kernels only (the others are wgmma's,
        // timed just above)
        bench_convs(gpu, n, &sm90[..i], &[path], false, lines)?;
        let name = format!("train step, graph, {} convs", path.name());
        gpu.with_conv_path(path, |g| step_variant(g, lines, &mut state, n, flops, &name))?;
        profile_line(gpu, lines, &mut state, n, Some(path))?;
    }
    // Then (it may take wgmma kernels) the mixed path: each GEMM's family chosen by timing the
    // candidates in the first op-by-op step, then the step recorded and replayed; its choices
    // and its profile.
    if gpu.conv_path.is_mma() && gpu.conv_path != ConvPath::Mixed && ConvPath::Mixed.runs_on(gpu.info.cc) {
        let name = "train step, graph, mixed convs";
        if gpu.with_conv_path(ConvPath::Mixed, |g| step_variant(g, lines, &mut state, n, flops, name))? {
            for line in gpu.conv_picks_timed() {
                writeln!(lines.out, "  mixed {line}").map_err(io)?;
            }
        }
        profile_line(gpu, lines, &mut state, n, Some(ConvPath::Mixed))?;
        // the step once the whitening bias is frozen (main.rs: after `whiten_bias_epochs`, 135 of
        // the recipe's 210 steps): no input gradient for layer 0, whose FLOPs it leaves out
        let (h, w, cin, cout, _) = LAYERS[0];
        let frozen = flops - 2.0 * (n * h * w * cout * 9 * cin) as f64;
        frozen_step(gpu, lines, &mut state, n, frozen, "train step, graph, mixed convs, bias frozen")?;
        // both again with one switch off where it is on: the weight gradients on the main stream
        // (what overlapping them with the input-gradient chain hides), the chain at the default
        // priority (what giving it the SMs first does), Muon on the main stream (what running
        // the deep layers' beside the shallow layers' backward hides), then every kernel
        // launched plainly (what programmatic dependent launch hides)
        type Switch = fn(&mut Gpu) -> &mut bool;
        let switches: [(&str, Switch); 4] = [
            ("no overlap", |g| &mut g.overlap),
            ("overlap without priority", |g| &mut g.chain_priority),
            ("Muon on the main stream", |g| &mut g.muon_side),
            ("no PDL", |g| &mut g.pdl),
        ];
        for (off, switch) in switches {
            if !*switch(gpu) {
                continue;
            }
            *switch(gpu) = false;
            let name = format!("train step, graph, mixed convs, {off}");
            let r = gpu.with_conv_path(ConvPath::Mixed, |g| step_variant(g, lines, &mut state, n, flops, &name));
            let name = format!("train step, graph, mixed convs, bias frozen, {off}");
            let r = r.and_then(|_| frozen_step(gpu, lines, &mut state, n, frozen, &name));
            *switch(gpu) = true;
            r?;
        }
    }
    Ok(())
}

/// The mixed path's step with the whitening bias frozen, as line `name` (if it runs).
fn frozen_step(
    gpu: &mut Gpu,
    lines: &mut Lines,
    state: &mut Option<StepState<Gpu>>,
    n: usize,
    flops: f64,
    name: &str,
) -> Result<()> {
    if !lines.wants(name) {
        return Ok(());
    }
    step_state(state, gpu, n)?.bias_trains = false;
    let r = gpu.with_conv_path(ConvPath::Mixed, |g| step_variant(g, lines, state, n, flops, name));
    if let Some(st) = state.as_mut() {
        st.bias_trains = true;
    }
    r.map(|_| ())
}

/// The step with one switch changed (the caller's: a conv path, the sums), recorded and
/// replayed, if the line `name` runs (true then). One step op by op first: scratch sized outside
/// the recording, which must not allocate.
fn step_variant(
    gpu: &mut Gpu,
    lines: &mut Lines,
    state: &mut Option<StepState<Gpu>>,
    n: usize,
    flops: f64,
    name: &str,
) -> Result<bool> {
    if !lines.wants(name) {
        return Ok(false);
    }
    let st = step_state(state, gpu, n)?;
    let graph = st.step(gpu).and_then(|_| gpu.record(&mut |g| st.step(g)));
    let graph = graph?.ok_or_else(|| Error::Gpu("the GPU backend recorded no graph".into()))?;
    let ms = time_ms(gpu, &mut |g| g.replay(&graph))?;
    bench_line(lines.out, name, &format!("batch {n}"), ms, flops, 0.0)?;
    Ok(true)
}

/// The step's per-kernel profile (`step_profile`) on the current conv path or on `path`, if its
/// line runs ("train step profile", "train step profile (<path> convs)").
fn profile_line(
    gpu: &mut Gpu,
    lines: &mut Lines,
    state: &mut Option<StepState<Gpu>>,
    n: usize,
    path: Option<ConvPath>,
) -> Result<()> {
    let name = match path {
        Some(p) => format!("train step profile ({} convs)", p.name()),
        None => "train step profile".to_string(),
    };
    if !lines.wants(&name) {
        return Ok(());
    }
    let st = step_state(state, gpu, n)?;
    match path {
        Some(p) => {
            writeln!(lines.out, "({} convs)", p.name()).map_err(io)?;
            gpu.with_conv_path(p, |g| step_profile(g, &mut |g| st.step(g), lines.out))
        }
        None => step_profile(gpu, &mut |g| st.step(g), lines.out),
    }
}

/// The bench's training step state in `s`, made at the first call.
fn step_state<'s>(s: &'s mut Option<StepState<Gpu>>, gpu: &mut Gpu, n: usize) -> Result<&'s mut StepState<Gpu>> {
    if s.is_none() {
        // A plan row for every step the lines below time (≈ 250; past the last row the rates are
        // NaN and the data would turn NaN), all rates 0: the bench times the kernels, and the
        // weights then stay as initialised (finite data in every line).
        let steps = 20 * (WARMUP + REPS) + 16;
        let mut cpu = Cpu::<f32>::with_threads(crate::cpu::par::default_threads());
        let mut init = step_init_whitened(&mut cpu, n, steps, 960)?;
        init.plan = plan_rows(n, steps, |_| 0.0);
        *s = Some(StepState::new(gpu, &init, n)?);
    }
    Ok(s.as_mut().expect("made above"))
}

/// One step op by op with an event pair around every launch: time per kernel, largest first,
/// and its share of the profiled total (the events add their own gaps; the shares are the point).
fn step_profile(gpu: &mut Gpu, step: &mut dyn FnMut(&mut Gpu) -> Result<()>, out: &mut dyn Write) -> Result<()> {
    let ((), rows) = gpu.profile(|g| step(g))?;
    let total: f64 = rows.iter().map(|r| r.seconds).sum();
    let launches: usize = rows.iter().map(|r| r.launches).sum();
    writeln!(out, "train step profile: {launches} launches, {:.1} us inside them (events around each)", total * 1e6)
        .map_err(io)?;
    for r in &rows {
        let share = if total > 0.0 { 100.0 * r.seconds / total } else { 0.0 };
        writeln!(out, "  {:<32} {:>4} x {:>10.1} us  {share:>5.1}%", r.name, r.launches, r.seconds * 1e6)
            .map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPEEDRUN_SELFTEST_ONLY's parts: comma-separated, trimmed, blanks dropped.
    #[test]
    fn only_filter_splits_on_commas() {
        assert!(only_filter(None).is_empty());
        assert!(only_filter(Some(" , ")).is_empty());
        assert_eq!(only_filter(Some("conv layer 1, whole step,")), ["conv layer 1", "whole step"]);
    }

    /// SPEEDRUN_SELFTEST_BATCH: unset or blank, 64; a positive multiple of 8; anything else a
    /// usage error that names the variable.
    #[test]
    fn selftest_batch_is_64_or_a_multiple_of_8() {
        assert_eq!(batch_from(None).unwrap(), 64);
        assert_eq!(batch_from(Some(" ")).unwrap(), 64);
        assert_eq!(batch_from(Some("32")).unwrap(), 32);
        assert_eq!(batch_from(Some(" 8 ")).unwrap(), 8);
        for bad in ["0", "12", "-8", "x", "4"] {
            let e = batch_from(Some(bad)).unwrap_err().to_string();
            assert!(e.contains(BATCH_ENV) && e.contains("multiple of 8"), "{bad}: {e}");
        }
    }

    /// Every part of the filter must be in some check's name; the error lists the checks.
    #[test]
    fn only_filter_that_names_no_check_is_a_usage_error() {
        let names = ["stem", "conv layer 0", "whole step"];
        assert!(only_matches(&only_filter(Some("layer 0,stem")), names.iter().copied()).is_ok());
        assert!(only_matches(&[], names.iter().copied()).is_ok());
        let e = only_matches(&only_filter(Some("stem,layr 0")), names.iter().copied()).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let msg = e.to_string();
        assert!(msg.contains("\"layr 0\" is in no check's name") && msg.contains("conv layer 0; whole step"), "{msg}");
    }

    /// SPEEDRUN_BENCH_ONLY: a line runs if its name contains a part; a filter that names no
    /// line is a usage error listing them; a partial bench says how many it left out.
    #[test]
    fn bench_lines_filter_and_report() {
        let mut out = Vec::new();
        let mut lines = Lines::new(&mut out, only_filter(Some("fwd img [0], pre_bwd")));
        let got: Vec<bool> =
            ["conv3x3 fwd img [0]", "conv3x3 fwd+bn_stats img [0]", "conv3x3 fwd img [1]", "pre_bwd [3]", "stem"]
                .iter()
                .map(|n| lines.wants(n))
                .collect();
        assert_eq!(got, [true, false, false, true, false]);
        lines.finish().unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, "(PARTIAL: 3 lines left out by SPEEDRUN_BENCH_ONLY=fwd img [0],pre_bwd)\n");
        let mut out = Vec::new();
        let mut lines = Lines::new(&mut out, only_filter(Some("fwd imgg")));
        assert!(!lines.wants("conv3x3 fwd img [0]") && !lines.wants("stem"));
        let e = lines.finish().unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("is in no bench line's name; the lines: conv3x3 fwd img [0]; stem"), "{e}");
        let mut out = Vec::new();
        let mut lines = Lines::new(&mut out, Vec::new());
        assert!(lines.wants("stem") && lines.wants("anything"));
        lines.finish().unwrap();
        assert!(out.is_empty(), "no filter, no note");
    }

    /// The whole self-test on the GPU (every op against the CPU reference, then one training
    /// step end to end).
    #[test]
    #[cfg_attr(not(cuda_driver), ignore = "no NVIDIA driver (libcuda.so.1) on this machine: GPU checks skipped")]
    #[cfg_attr(
        all(cuda_driver, not(kernels_built)),
        ignore = "CUDA kernels not built (no NVRTC/nvcc at build time): run scripts/install-cuda-toolchain.sh"
    )]
    fn gpu_matches_cpu_reference() {
        let _device = crate::gpu::device_test_lock();
        let mut gpu = match Gpu::open(0) {
            Ok(g) => g,
            Err(e) => panic!("{e} (this machine has libcuda.so.1, so a usable GPU is expected)"),
        };
        let mut report = Vec::new();
        let ok = run(&mut gpu, &mut report);
        let text = String::from_utf8_lossy(&report);
        eprintln!("{text}");
        match ok {
            Ok(true) => {}
            Ok(false) => panic!("GPU self-test failed: see the FAIL lines above"),
            Err(e) => panic!("GPU self-test stopped: {e}"),
        }
    }

    /// The generic training step the GPU is compared with runs on the CPU reference: every
    /// shape in it is consistent, every output is finite and written, it is deterministic, and
    /// each step reads its own plan row.
    #[test]
    fn whole_step_sequence_runs_on_the_cpu_reference() {
        let n = 4;
        let mut cpu = Cpu::<f32>::with_threads(2);
        let init = step_init_whitened(&mut cpu, n, 2, 3).unwrap();
        let run = |cpu: &mut Cpu<f32>, steps: usize| {
            let mut st = StepState::new(cpu, &init, n).unwrap();
            for _ in 0..steps {
                st.step(cpu).unwrap();
            }
            assert_eq!(st.step[STEP_WORDS] as usize, steps, "the cursor counts the steps");
            let row = Step::from_words(&init.plan[(steps - 1) * STEP_WORDS..]).unwrap();
            assert_eq!(Step::from_words(&st.step), Some(row), "the record holds the last row");
            st.outputs(cpu).unwrap()
        };
        let (a, b) = (run(&mut cpu, 1), run(&mut cpu, 1));
        let two = run(&mut cpu, 2);
        let differ = |name: &str| {
            let find = |o: &StepOut| o.iter().find(|(m, _, _)| m == name).unwrap().2.clone();
            find(&a) != find(&two)
        };
        assert!(differ("step logits") && differ("step updated conv[3]"), "the second step changed nothing");
        assert_eq!(a.len(), 2 + 6 + 1 + 12 + 1 + 2 + 18);
        for ((name, _, x), (_, _, y)) in a.iter().zip(&b) {
            assert!(!x.is_empty() && x.iter().all(|v| v.is_finite()), "{name}: {x:?}");
            assert_eq!(x, y, "{name}: not deterministic");
        }
        let grad_norm =
            |name: &str| a.iter().find(|(m, _, _)| m == name).unwrap().2.iter().map(|v| v.abs()).sum::<f32>();
        for l in 0..6 {
            assert!(grad_norm(&format!("step grad conv[{l}]")) > 0.0, "conv[{l}] got no gradient");
        }
        assert!(grad_norm("step grad whiten bias") > 0.0);
    }

    /// The helpers that need no GPU: the poison is NaN in both storage types, and the
    /// relative error flags NaN outputs.
    #[test]
    fn poison_is_nan_as_f32_and_f16() {
        assert!(POISON.is_nan());
        let bits = POISON.to_bits();
        assert!(f16::from_bits((bits & 0xFFFF) as u16).is_nan());
        assert!(f16::from_bits((bits >> 16) as u16).is_nan());
        let (_, rel, finite) = rel_l2(&[1.0, f32::NAN], &[1.0, 2.0]);
        assert!(!finite || rel.is_nan());
        let (max, rel, finite) = rel_l2(&[1.0, 2.0], &[1.0, 2.0]);
        assert!(finite && rel == 0.0 && max == 0.0);
    }
}
