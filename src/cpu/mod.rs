//! The CPU reference: every op of the recipe in plain Rust, generic over the float type (f32 to
//! train, f64 for gradient checks). It is the oracle the GPU kernels are checked against, so
//! it favours obvious loops over cleverness; the only speed tricks are a register-blocked conv
//! core and deterministic threading (`par`).
pub mod conv;
#[cfg(test)]
mod gradcheck;
pub mod layers;
pub mod optim;
pub mod par;
pub mod real;

use crate::backend::{Backend, BnStats, MuonParam, Norm, Ns, Pre, SgdParam, Shape, Step, Unpool, STEP_LEN, STEP_WORDS};
use crate::error::Result;
use crate::replay::Record;
use layers::Affine;
use real::{gelu_grad, Real};
use std::marker::PhantomData;

/// The CPU backend. `Buf` is a `Vec<T>`, so tests may read and perturb tensors directly.
pub struct Cpu<T: Real> {
    pub threads: usize,
    _t: PhantomData<T>,
}

impl<T: Real> Cpu<T> {
    pub fn new() -> Self {
        Self::with_threads(par::default_threads())
    }
    pub fn with_threads(threads: usize) -> Self {
        Cpu { threads: threads.max(1), _t: PhantomData }
    }
}

impl<T: Real> Default for Cpu<T> {
    fn default() -> Self {
        Self::new()
    }
}

fn affine<T: Real>(pre: Pre<'_, Cpu<T>>) -> Affine<T> {
    match pre {
        Pre::Bias(b) => Affine::bias(b),
        Pre::Bn { bn, beta } => Affine::from_bn_buf(bn, beta),
        Pre::Activated => Affine::activated(),
    }
}

/// The step record's values (a record shorter than [`STEP_LEN`] is a programming error).
fn step_of(step: &[u32]) -> Step {
    assert_eq!(step.len(), STEP_LEN, "a step record has {STEP_LEN} words");
    Step::from_words(step).expect("length checked")
}

/// The `n` augmentation words a step names, or None when they run past the end of `aug`.
fn step_words<'a>(aug: &'a [u32], step: &[u32], n: usize) -> Option<&'a [u32]> {
    let offset = step_of(step).offset as usize;
    aug.get(offset..offset.checked_add(n)?)
}

/// The CPU runs every step op by op.
impl<T: Real> Record for Cpu<T> {
    type Graph = ();
    fn record(&mut self, _body: &mut dyn FnMut(&mut Self) -> Result<()>) -> Result<Option<()>> {
        Ok(None)
    }
    fn replay(&mut self, _graph: &()) -> Result<()> {
        unreachable!("the CPU backend records no graphs")
    }
}

impl<T: Real> Backend for Cpu<T> {
    type Buf = Vec<T>;
    type Bytes = Vec<u8>;
    type Words = Vec<u32>;

    fn describe(&self) -> String {
        format!("CPU reference ({}, {} threads)", std::any::type_name::<T>(), self.threads)
    }

    fn zeros(&mut self, n: usize) -> Result<Vec<T>> {
        Ok(vec![T::ZERO; n])
    }
    fn upload(&mut self, host: &[f32]) -> Result<Vec<T>> {
        Ok(host.iter().map(|&v| T::of(v as f64)).collect())
    }
    fn download(&mut self, buf: &Vec<T>) -> Result<Vec<f32>> {
        Ok(buf.iter().map(|v| v.f64() as f32).collect())
    }
    fn upload_bytes(&mut self, host: &[u8]) -> Result<Vec<u8>> {
        Ok(host.to_vec())
    }
    fn byte_zeros(&mut self, n: usize) -> Result<Vec<u8>> {
        Ok(vec![0; n])
    }
    fn upload_words(&mut self, host: &[u32]) -> Result<Vec<u32>> {
        Ok(host.to_vec())
    }
    fn write_words(&mut self, dst: &mut Vec<u32>, host: &[u32]) -> Result<()> {
        assert_eq!(dst.len(), host.len(), "write_words: length mismatch");
        dst.copy_from_slice(host);
        Ok(())
    }
    fn write(&mut self, dst: &mut Vec<T>, host: &[f32]) -> Result<()> {
        assert_eq!(dst.len(), host.len(), "write: length mismatch");
        dst.iter_mut().zip(host).for_each(|(d, &v)| *d = T::of(v as f64));
        Ok(())
    }
    fn sync(&mut self) -> Result<()> {
        Ok(())
    }

    type Mark = std::time::Instant;
    fn mark(&mut self) -> Result<std::time::Instant> {
        Ok(std::time::Instant::now())
    }
    fn seconds(&mut self, a: &std::time::Instant, b: &std::time::Instant) -> Result<f64> {
        Ok(b.saturating_duration_since(*a).as_secs_f64())
    }

    fn next_step(&mut self, plan: &Vec<u32>, step: &mut Vec<u32>) -> Result<()> {
        assert!(plan.len() % STEP_WORDS == 0, "a plan is rows of {STEP_WORDS} words");
        assert_eq!(step.len(), STEP_LEN, "a step record has {STEP_LEN} words");
        let row = step[STEP_WORDS] as usize;
        let next = match plan.get(row * STEP_WORDS..(row + 1) * STEP_WORDS) {
            Some(words) => Step::from_words(words).expect("a whole row"),
            None => Step::EXHAUSTED,
        };
        let cursor = step[STEP_WORDS].wrapping_add(1);
        step.copy_from_slice(&next.record(cursor));
        Ok(())
    }

    fn patch_cov(&mut self, images: &Vec<u8>, n: usize, norm: Norm) -> Result<Vec<f64>> {
        Ok(layers::patch_cov::<T>(images, n, norm, self.threads))
    }

    fn stem(
        &mut self,
        images: &Vec<u8>,
        total: usize,
        aug: &Vec<u32>,
        step: &Vec<u32>,
        n: usize,
        norm: Norm,
        w: &Vec<T>,
        bias: &Vec<T>,
        cw: usize,
        res: usize,
        out: &mut Vec<T>,
        grad: Option<&mut Vec<T>>,
    ) -> Result<()> {
        assert_eq!(bias.len(), cw, "stem: bias is not {cw} values");
        let mut raw = vec![T::ZERO; out.len()];
        match step_words(aug, step, n) {
            Some(words) => layers::stem(images, total, words, n, norm, w, cw, res, &mut raw, self.threads),
            None => raw.fill(T::of(f64::NAN)),
        }
        // u = raw + bias: the first conv's input GELU(u), as conv3x3 with Pre::Bias would take
        // it, and GELU′(u), as pre_bwd would
        let aff = Affine::bias(bias);
        out.iter_mut().zip(&raw).enumerate().for_each(|(k, (o, &r))| *o = aff.a(r, k % cw));
        if let Some(grad) = grad {
            assert_eq!(grad.len(), raw.len(), "stem: grad and out differ in length");
            grad.iter_mut().zip(&raw).enumerate().for_each(|(k, (d, &r))| *d = gelu_grad(aff.u(r, k % cw)));
        }
        Ok(())
    }

    fn conv3x3(
        &mut self,
        x: &Vec<T>,
        xs: Shape,
        pre: Pre<'_, Self>,
        w: &Vec<T>,
        cout: usize,
        pool: bool,
        y: &mut Vec<T>,
        argmax: &mut Vec<u8>,
        _keep: Option<&mut Vec<T>>,
        stats: Option<BnStats<'_, Self>>,
    ) -> Result<()> {
        conv::conv3x3(x, xs, &affine(pre), w, cout, pool, y, argmax, self.threads);
        if let Some(s) = stats {
            let ys = if pool { xs.with_c(cout).pooled() } else { xs.with_c(cout) };
            self.bn_stats(y, ys, s.eps, s.momentum, s.running_mean, s.running_var, s.bn)?;
        }
        Ok(())
    }

    fn bn_stats(
        &mut self,
        y: &Vec<T>,
        ys: Shape,
        eps: f32,
        momentum: f32,
        running_mean: &mut Vec<T>,
        running_var: &mut Vec<T>,
        bn: &mut Vec<T>,
    ) -> Result<()> {
        layers::bn_stats(y, ys, eps, momentum, running_mean, running_var, bn, self.threads);
        Ok(())
    }

    fn bn_eval(&mut self, running_mean: &Vec<T>, running_var: &Vec<T>, eps: f32, bn: &mut Vec<T>) -> Result<()> {
        layers::bn_eval(running_mean, running_var, eps, bn);
        Ok(())
    }

    fn head(
        &mut self,
        x: &Vec<T>,
        xs: Shape,
        pre: Pre<'_, Self>,
        w: &Vec<T>,
        classes: usize,
        scale: f32,
        feat: &mut Vec<T>,
        argmax: &mut Vec<u8>,
        logits: &mut Vec<T>,
    ) -> Result<()> {
        layers::head(x, xs, &affine(pre), w, classes, scale, feat, argmax, logits);
        Ok(())
    }

    fn xent(
        &mut self,
        logits: &Vec<T>,
        labels: &Vec<u8>,
        aug: &Vec<u32>,
        step: &Vec<u32>,
        n: usize,
        classes: usize,
        smoothing: f32,
        dlogits: &mut Vec<T>,
        acc: &mut Vec<T>,
    ) -> Result<()> {
        match step_words(aug, step, n) {
            Some(words) => layers::xent(logits, labels, words, n, classes, smoothing, dlogits, acc),
            None => {
                dlogits.fill(T::of(f64::NAN));
                acc[0] += T::of(f64::NAN);
            }
        }
        Ok(())
    }

    fn axpy(&mut self, acc: &mut Vec<T>, x: &Vec<T>, weight: f32) -> Result<()> {
        assert_eq!(acc.len(), x.len(), "axpy: length mismatch");
        let wt = T::of(weight as f64);
        acc.iter_mut().zip(x).for_each(|(a, &v)| *a += wt * v);
        Ok(())
    }

    fn head_bwd(
        &mut self,
        dlogits: &Vec<T>,
        feat: &Vec<T>,
        argmax: &Vec<u8>,
        w: &Vec<T>,
        xs: Shape,
        classes: usize,
        scale: f32,
        dw: &mut Vec<T>,
        da: &mut Vec<T>,
    ) -> Result<()> {
        layers::head_bwd(dlogits, feat, argmax, w, xs, classes, scale, dw, da);
        Ok(())
    }

    fn pre_bwd(
        &mut self,
        da: &Vec<T>,
        x: &Vec<T>,
        xs: Shape,
        pre: Pre<'_, Self>,
        sums: Option<&Vec<T>>,
        dshift: &mut Vec<T>,
        dx: Option<&mut Vec<T>>,
        unpool: Option<Unpool<'_, Self>>,
    ) -> Result<()> {
        assert!(!matches!(pre, Pre::Activated), "pre_bwd: no gradient through an activated input");
        let sums: Option<Vec<f64>> = sums.map(|s| s.iter().map(|v| v.f64()).collect());
        let (aff, threads) = (affine(pre), self.threads);
        match (dx, unpool) {
            (Some(dx), Some(u)) => {
                assert_eq!(u.full.pooled(), xs, "pre_bwd: {xs:?} is not {:?} pooled", u.full);
                let mut pooled = vec![T::ZERO; xs.len()];
                layers::pre_bwd(da, x, xs, &aff, sums.as_deref(), dshift, Some(&mut pooled), threads);
                conv::unpool(&pooled, u.argmax, u.full, dx);
            }
            (dx, u) => {
                assert!(u.is_none(), "pre_bwd: unpool needs dx");
                let dx = dx.map(|v| v.as_mut_slice());
                layers::pre_bwd(da, x, xs, &aff, sums.as_deref(), dshift, dx, threads);
            }
        }
        Ok(())
    }

    fn conv3x3_shift_grad(
        &mut self,
        g: &Vec<T>,
        xs: Shape,
        w: &Vec<T>,
        cout: usize,
        argmax: &Vec<u8>,
        dy: &Vec<T>,
        da: &mut Vec<T>,
        gw: &mut Vec<T>,
        dshift: &mut Vec<T>,
    ) -> Result<()> {
        // da from dy alone; gw (scratch) of dy against g, which the reference does not use
        let aff = Affine::activated();
        conv::conv3x3_bwd(g, xs, &aff, w, cout, false, argmax, dy, gw, Some(da.as_mut_slice()), self.threads);
        let sums = layers::shift_sums(da, g, xs, self.threads);
        assert_eq!(dshift.len(), xs.c, "conv3x3_shift_grad: dshift is not {} values", xs.c);
        dshift.iter_mut().zip(sums).for_each(|(d, s)| *d = T::of(s));
        Ok(())
    }

    fn conv3x3_bwd(
        &mut self,
        x: &Vec<T>,
        xs: Shape,
        pre: Pre<'_, Self>,
        w: &Vec<T>,
        cout: usize,
        pool: bool,
        argmax: &Vec<u8>,
        dy: &Vec<T>,
        dw: &mut Vec<T>,
        da: Option<&mut Vec<T>>,
        da_sums: Option<&mut Vec<T>>,
        _kept: Option<&Vec<T>>,
    ) -> Result<()> {
        assert!(da.is_some() || da_sums.is_none(), "conv3x3_bwd: da_sums needs da");
        let activated = matches!(pre, Pre::Activated);
        assert!(!(activated && da.is_some()), "conv3x3_bwd: no input gradient through an activated input");
        let aff = affine(pre);
        let mut da = da.map(|v| v.as_mut_slice());
        conv::conv3x3_bwd(x, xs, &aff, w, cout, pool, argmax, dy, dw, da.as_deref_mut(), self.threads);
        if let (Some(da), Some(out)) = (da, da_sums) {
            assert_eq!(out.len(), 2 * xs.c, "conv3x3_bwd: da_sums is [Σdu | Σdu·x̂], 2·{} values", xs.c);
            for (o, s) in out.iter_mut().zip(layers::pre_bwd_sums(da, x, xs, &aff, self.threads)) {
                *o = T::of(s);
            }
        }
        Ok(())
    }

    fn sgd(&mut self, params: &mut [SgdParam<'_, Self>], step: &Vec<u32>, momentum: f32) -> Result<()> {
        let lr = step_of(step).lr;
        for p in params.iter_mut() {
            optim::sgd(p.p, p.g, p.m, lr[p.lr_slot], p.wd, momentum);
        }
        Ok(())
    }

    fn muon(
        &mut self,
        params: &mut [MuonParam<'_, Self>],
        step: &Vec<u32>,
        lr_slot: usize,
        momentum: f32,
        ns: Ns,
    ) -> Result<()> {
        let lr = step_of(step).lr[lr_slot];
        for p in params.iter_mut() {
            optim::muon(p.w, p.g, p.m, p.rows, p.cols, lr, momentum, ns);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LRS;

    /// The step record on the CPU: `next_step` walks the plan and then yields
    /// `Step::EXHAUSTED`; the stem and the loss turn NaN when the step's words run past the end;
    /// SGD reads each tensor's rate from its slot.
    #[test]
    fn step_record_drives_offsets_and_rates() {
        let mut cpu = Cpu::<f32>::with_threads(1);
        let rows = [Step { offset: 3, lr: [0.1, 0.2, 0.3, 0.4] }, Step { offset: 9, lr: [1.0, 2.0, 3.0, 4.0] }];
        let plan: Vec<u32> = rows.iter().flat_map(|s| s.row()).collect();
        let mut step = vec![5u32; STEP_LEN];
        step[STEP_WORDS] = 0;
        for (k, want) in rows.iter().chain([&Step::EXHAUSTED]).enumerate() {
            cpu.next_step(&plan, &mut step).unwrap();
            assert_eq!(step, want.record(k as u32 + 1).to_vec(), "call {k}");
        }
        assert!(Step::from_words(&step).unwrap().lr.iter().all(|v| v.is_nan()));

        // stem and xent: offset 2 of 6 words with n = 4 fits; offset 3 does not
        let images: Vec<u8> = (0..3 * 3072).map(|i| (i * 7 % 251) as u8).collect();
        let words = vec![0u32, 1, 2, 0, 1, 2];
        let norm = Norm { mean: [0.5; 3], std: [0.25; 3] };
        let (w, bias) = (vec![0.1f32; 8 * 12], vec![-0.25f32; 8]);
        let (mut out, n) = (vec![0.0f32; 4 * 31 * 31 * 8], 4);
        let mut grad = out.clone();
        let fits = Step { offset: 2, lr: [0.0; LRS] }.record(0).to_vec();
        let past = Step { offset: 3, lr: [0.0; LRS] }.record(0).to_vec();
        cpu.stem(&images, 3, &words, &fits, n, norm, &w, &bias, 8, 32, &mut out, Some(&mut grad)).unwrap();
        // out is GELU(u) and grad GELU′(u) of the same u = raw − 0.25, raw the whitening conv
        let mut raw = vec![0.0f32; out.len()];
        layers::stem(&images, 3, &words[2..6], n, norm, &w, 8, 32, &mut raw, 1);
        assert!(raw.iter().all(|v| v.is_finite()));
        assert!(out.iter().zip(&raw).all(|(&o, &r)| o == real::gelu(r - 0.25)));
        assert!(grad.iter().zip(&raw).all(|(&d, &r)| d == gelu_grad(r - 0.25)));
        let mut alone = vec![f32::NAN; out.len()];
        cpu.stem(&images, 3, &words, &fits, n, norm, &w, &bias, 8, 32, &mut alone, None).unwrap();
        assert_eq!(alone, out);
        cpu.stem(&images, 3, &words, &past, n, norm, &w, &bias, 8, 32, &mut out, Some(&mut grad)).unwrap();
        assert!(out.iter().chain(&grad).all(|v| v.is_nan()));
        let (logits, labels) = (vec![0.5f32; n * 10], vec![1u8, 2, 3]);
        let (mut dl, mut acc) = (vec![0.0f32; n * 10], vec![0.0f32; 2]);
        cpu.xent(&logits, &labels, &words, &fits, n, 10, 0.2, &mut dl, &mut acc).unwrap();
        assert!(acc[0].is_finite() && dl.iter().all(|v| v.is_finite()));
        cpu.xent(&logits, &labels, &words, &past, n, 10, 0.2, &mut dl, &mut acc).unwrap();
        assert!(acc[0].is_nan() && dl.iter().all(|v| v.is_nan()));

        // SGD: zero momentum and decay, so p ← p − lr·g with lr from the tensor's slot
        let rec = rows[1].record(0).to_vec();
        let (mut p0, mut p1, g, mut m0, mut m1) = (vec![1.0f32], vec![1.0f32], vec![0.5f32], vec![0.0], vec![0.0]);
        let mut params = [
            SgdParam { p: &mut p0, g: &g, m: &mut m0, lr_slot: 0, wd: 0.0 },
            SgdParam { p: &mut p1, g: &g, m: &mut m1, lr_slot: 3, wd: 0.0 },
        ];
        cpu.sgd(&mut params, &rec, 0.0).unwrap();
        assert_eq!((p0[0], p1[0]), (1.0 - 1.0 * 0.5, 1.0 - 4.0 * 0.5));
    }

    /// The whitening bias's gradient from the stem's GELU′(u) (`conv3x3_shift_grad`) is, bit
    /// for bit, what conv 0's input gradient and `pre_bwd` give from the raw stem output and
    /// `Pre::Bias`: the composition it replaced.
    #[test]
    fn shift_grad_equals_input_gradient_then_pre_bwd() {
        use crate::testing::randn;
        let mut cpu = Cpu::<f32>::with_threads(2);
        let (xs, cout) = (Shape::new(3, 7, 5, 8), 16);
        let f = |n: usize, seed: u64, k: f64| randn(n, seed).iter().map(|v| (v * k) as f32).collect::<Vec<f32>>();
        let (raw, bias, w, dy) =
            (f(xs.len(), 1, 1.0), f(8, 2, 0.3), f(cout * 9 * 8, 3, 0.1), f(xs.count() * cout, 4, 0.1));
        // the old composition
        let (mut gw, mut da, mut want) = (vec![0.0; w.len()], vec![0.0; xs.len()], vec![0.0; 8]);
        cpu.conv3x3_bwd(&raw, xs, Pre::Bias(&bias), &w, cout, false, &vec![], &dy, &mut gw, Some(&mut da), None, None)
            .unwrap();
        cpu.pre_bwd(&da, &raw, xs, Pre::Bias(&bias), None, &mut want, None, None).unwrap();
        // from g = GELU′(raw + bias), as the stem gives it
        let g: Vec<f32> = raw.iter().enumerate().map(|(k, &r)| gelu_grad(r + bias[k % 8])).collect();
        let (mut scratch, mut got) = (vec![f32::NAN; xs.len()], vec![f32::NAN; 8]);
        cpu.conv3x3_shift_grad(&g, xs, &w, cout, &vec![], &dy, &mut scratch, &mut gw, &mut got).unwrap();
        assert!(want.iter().all(|v| v.is_finite() && *v != 0.0), "{want:?}");
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}
