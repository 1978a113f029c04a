//! The op interface `main.rs` trains with. One method per GPU kernel family; the CPU reference
//! (`cpu::Cpu`) implements every method by composing plain loops, and that composition is the
//! specification the CUDA kernels are checked against.
//!
//! Conventions (all backends):
//! - Activations are NHWC (`Shape`), channels contiguous. Conv weights are OHWI:
//!   `w[co][ky][kx][ci]`, i.e. a `cout × 9·cin` matrix with K = (ky, kx, ci).
//! - `Buf` holds floats (the CPU uses `T` = f32 or f64; a GPU may store f16 or f32 as it likes);
//!   `upload`/`download` always speak f32 on the host side.
//! - Every layer's input is `a = GELU(u)` with `u = pre(x)` applied per channel to the stored
//!   tensor `x` (see `Pre`). This is where a GPU fuses BN-apply + GELU into the conv prologue.
//! - Shapes are passed explicitly and asserted; a wrong shape is a programming error (panic),
//!   never silent mis-indexing.
use crate::error::Result;
use crate::replay::Record;

/// NHWC shape of an activation tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl Shape {
    pub const fn new(n: usize, h: usize, w: usize, c: usize) -> Shape {
        Shape { n, h, w, c }
    }
    /// Number of elements.
    pub const fn len(&self) -> usize {
        self.n * self.h * self.w * self.c
    }
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Positions per channel (N·H·W): the BatchNorm statistics count.
    pub const fn count(&self) -> usize {
        self.n * self.h * self.w
    }
    /// After a 2×2 stride-2 max-pool (floor: an odd last row/column is dropped).
    pub const fn pooled(&self) -> Shape {
        Shape::new(self.n, self.h / 2, self.w / 2, self.c)
    }
    pub const fn with_c(&self, c: usize) -> Shape {
        Shape::new(self.n, self.h, self.w, c)
    }
}

/// The per-channel affine map a layer applies to its stored input before GELU:
/// `a = GELU(u)`.
pub enum Pre<'a, B: Backend + ?Sized> {
    /// `u = x + bias[c]`: the whitening conv's output and its trainable bias.
    Bias(&'a B::Buf),
    /// `x` holds `a` already (the stem's output, through its bias and GELU): no map, no GELU.
    /// No gradient goes through it: `pre_bwd` and an input gradient (`da`) refuse it (and the
    /// GPU's `head`, which has no kernel for it).
    Activated,
    /// `u = (x − mean[c])·invstd[c] + beta[c]`: BatchNorm with scale fixed at 1.
    /// `bn` is `[mean(c) | invstd(c)]` as written by `bn_stats` or `bn_eval`.
    Bn { bn: &'a B::Buf, beta: &'a B::Buf },
}

impl<B: Backend + ?Sized> Clone for Pre<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend + ?Sized> Copy for Pre<'_, B> {}

/// Where `pre_bwd` writes `dx` unpooled: `x` is a max-pool's output, and `dx` the gradient
/// w.r.t. the pool's input (shape `full`, whose odd last row/column the pool dropped): each
/// value at its pick in `argmax` (as `conv3x3` wrote it), zeros elsewhere. The conv backward
/// then takes it unpooled (`conv3x3_bwd` with `pool` false), with no pass of its own.
pub struct Unpool<'a, B: Backend + ?Sized> {
    pub argmax: &'a B::Bytes,
    pub full: Shape,
}

impl<B: Backend + ?Sized> Clone for Unpool<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend + ?Sized> Copy for Unpool<'_, B> {}

/// The shape `pre_bwd` writes the gradient of x[k] at, in a chain of 3×3 convs where conv l
/// (`layers[l]` = (cin, cout, pool)) maps x[l] to x[l + 1] and `s[k]` is x[k]'s shape: x[k]'s
/// own, or where conv k − 1 pools, its output's before the pool (`Unpool::full`).
pub fn grad_shape(s: &[Shape], layers: &[(usize, usize, bool)], k: usize) -> Shape {
    match k.checked_sub(1).map(|l| layers[l]) {
        Some((_, cout, true)) => s[k - 1].with_c(cout),
        _ => s[k],
    }
}

/// Image normalisation: `(pixel/255 − mean[c]) / std[c]`.
#[derive(Clone, Copy, Debug)]
pub struct Norm {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// The values that change from one training step to the next: where the step's examples start
/// in the augmentation words, and the learning rates. The ops read them from a small word
/// tensor on the device (the *step record*, [`STEP_LEN`] words), never from launch arguments,
/// so that one recorded step (a CUDA graph, [`Record::record`]) serves every step.
///
/// Record layout: word 0 `offset`, words 1..=[`LRS`] the rates as f32 bits, then padding up to
/// word [`STEP_WORDS`], which holds the cursor of [`Backend::next_step`] (the plan row the next
/// call loads). A plan is [`STEP_WORDS`] words per row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    pub offset: u32,
    pub lr: [f32; LRS],
}

/// Learning-rate slots in a step record (an op names its rate by slot index).
pub const LRS: usize = 4;
/// Words per plan row; the step record has one more (the cursor).
pub const STEP_WORDS: usize = 8;
/// Words of a step record.
pub const STEP_LEN: usize = STEP_WORDS + 1;

impl Step {
    /// A step record's words with the cursor at `cursor`.
    pub fn record(&self, cursor: u32) -> [u32; STEP_LEN] {
        let mut r = [0u32; STEP_LEN];
        r[..STEP_WORDS].copy_from_slice(&self.row());
        r[STEP_WORDS] = cursor;
        r
    }
    /// One plan row.
    pub fn row(&self) -> [u32; STEP_WORDS] {
        let mut r = [0u32; STEP_WORDS];
        r[0] = self.offset;
        for (w, lr) in r[1..].iter_mut().zip(self.lr) {
            *w = lr.to_bits();
        }
        r
    }
    /// Reads a record (or a row); `None` if it is shorter than a row.
    pub fn from_words(w: &[u32]) -> Option<Step> {
        let w = w.get(..STEP_WORDS)?;
        let mut lr = [0.0; LRS];
        for (l, &b) in lr.iter_mut().zip(&w[1..]) {
            *l = f32::from_bits(b);
        }
        Some(Step { offset: w[0], lr })
    }
    /// The record a plan yields when its cursor runs past the last row: every rate NaN and an
    /// offset no word tensor has, so the stem and the loss produce NaN and the run's divergence
    /// check stops it (a device cannot panic).
    pub const EXHAUSTED: Step = Step { offset: u32::MAX, lr: [f32::NAN; LRS] };
}

/// One tensor updated by Nesterov SGD (PyTorch semantics, decay coupled through the gradient):
/// `g ← g + wd·p; m ← μ·m + g; p ← p − lr·(g + μ·m)`. `m` starts at zero; `lr` is the step
/// record's rate in slot `lr_slot`.
pub struct SgdParam<'a, B: Backend + ?Sized> {
    pub p: &'a mut B::Buf,
    pub g: &'a B::Buf,
    pub m: &'a mut B::Buf,
    pub lr_slot: usize,
    pub wd: f32,
}

/// One conv weight (`rows = cout`, `cols = 9·cin`) updated by Muon.
pub struct MuonParam<'a, B: Backend + ?Sized> {
    pub w: &'a mut B::Buf,
    pub g: &'a B::Buf,
    pub m: &'a mut B::Buf,
    pub rows: usize,
    pub cols: usize,
}

/// Training-mode BatchNorm statistics of a conv's output, taken by `conv3x3` itself: the same
/// result as `bn_stats(y, ys, eps, momentum, running_mean, running_var, bn)` called after it
/// (up to summation order), but a GPU sums them in the conv's epilogue instead of reading `y`
/// again.
pub struct BnStats<'a, B: Backend + ?Sized> {
    pub eps: f32,
    pub momentum: f32,
    pub running_mean: &'a mut B::Buf,
    pub running_var: &'a mut B::Buf,
    pub bn: &'a mut B::Buf,
}

/// Every backend can record steps (`replay::Record`), if only by declining (the CPU).
pub trait Backend: Record {
    /// Float tensor.
    type Buf;
    /// Byte tensor: the u8 dataset, labels, pooling argmax indices.
    type Bytes;
    /// 32-bit word tensor: packed augmentation words (`aug::pack`).
    type Words;

    /// One line naming the device, for logs.
    fn describe(&self) -> String;

    /// Interchangeable kernel variants a run may use (the GPU's conv paths), the current one
    /// first: the same results up to the order of fp32 sums. Empty where there is nothing to
    /// choose (the CPU; a GPU with one path, or with the choice pinned by `SPEEDRUN_CONV`).
    fn variants(&self) -> Vec<&'static str> {
        Vec::new()
    }
    /// Switches to variant `name`, one of [`Backend::variants`].
    fn set_variant(&mut self, name: &str) -> Result<()> {
        Err(crate::Error::Usage(format!("{}: no kernel variant {name:?} to switch to", self.describe())))
    }
    /// Whether the current variant still chooses its kernels by timing them as the ops first
    /// run (the GPU's `mixed` conv path): a run on it includes that timing, so the warm-up's
    /// autotune runs it once untimed before timing it like the others.
    fn variant_settles(&self) -> bool {
        false
    }
    /// What the current variant chose, for the autotune's line (empty: nothing to say).
    fn variant_note(&self) -> String {
        String::new()
    }

    // ---- memory -------------------------------------------------------------------------
    fn zeros(&mut self, n: usize) -> Result<Self::Buf>;
    fn upload(&mut self, host: &[f32]) -> Result<Self::Buf>;
    fn download(&mut self, buf: &Self::Buf) -> Result<Vec<f32>>;
    fn upload_bytes(&mut self, host: &[u8]) -> Result<Self::Bytes>;
    fn byte_zeros(&mut self, n: usize) -> Result<Self::Bytes>;
    fn upload_words(&mut self, host: &[u32]) -> Result<Self::Words>;
    /// Overwrite an existing word buffer (same length), e.g. the per-epoch augmentation plan.
    fn write_words(&mut self, dst: &mut Self::Words, host: &[u32]) -> Result<()>;
    /// Overwrite an existing float buffer (same length) in place: its address stays the same,
    /// so a recorded step that uses it stays valid.
    fn write(&mut self, dst: &mut Self::Buf, host: &[f32]) -> Result<()>;
    /// Wait for all queued work (a no-op on the CPU).
    fn sync(&mut self) -> Result<()>;

    // ---- timing -------------------------------------------------------------------------
    /// A point on the device's timeline: a CUDA event recorded on the stream (the run's timer, as
    /// in airbench), an `Instant` on the CPU.
    type Mark;
    /// Marks the current point in the queued work (does not wait).
    fn mark(&mut self) -> Result<Self::Mark>;
    /// Seconds from `a` to `b` on the device's timeline; waits until `b` is reached.
    fn seconds(&mut self, a: &Self::Mark, b: &Self::Mark) -> Result<f64>;

    // ---- the step record ----------------------------------------------------------------
    /// Loads the next row of `plan` (rows of [`STEP_WORDS`] words) into the step record `step`
    /// and advances its cursor, on the device: `row = step[STEP_WORDS]; step[..STEP_WORDS] =
    /// plan[row]; step[STEP_WORDS] = row + 1`. Past the last row it loads [`Step::EXHAUSTED`].
    fn next_step(&mut self, plan: &Self::Words, step: &mut Self::Words) -> Result<()>;

    // ---- whitening initialisation --------------------------------------------------------
    /// Uncentered covariance of every 2×2 patch (stride 1) of the first `n` images, normalised
    /// and not augmented: `Σ = XᵀX / (n·31·31)` over 12-vectors ordered (dy, dx, c), the
    /// order of the OHWI stem weights.
    /// Row-major 12×12, accumulated in at least f32, returned to the host as f64.
    fn patch_cov(&mut self, images: &Self::Bytes, n: usize, norm: Norm) -> Result<Vec<f64>>;

    // ---- forward -------------------------------------------------------------------------
    /// The stem: for each of the `n` words `aug[offset..offset + n]`, `offset` from the step
    /// record `step` (image index, shift,
    /// mirror: `aug::unpack`), build the augmented, normalised 32×32×3 view (reflect-indexed
    /// shift, then mirror); below full resolution (`res` < 32, progressive resolution) resize it
    /// to `res`×`res` by bilinear interpolation (`cpu::layers::resize_bilinear`); then apply the
    /// 2×2 whitening conv `w` (`cw × 2×2×3`, OHWI) and its bias, `u = whiten(view) + bias[c]`:
    /// `out` receives `GELU(u)` (the first conv's input, `Pre::Activated`) and `grad`, if given,
    /// `GELU′(u)` (what the bias's gradient needs while it trains, `conv3x3_shift_grad`). Both
    /// are `Shape(n, res − 1, res − 1, cw)`. `images` holds `total` images of 32×32×3 u8, NHWC.
    /// Words past the end of `aug` (or an image index past `total`) give NaN outputs.
    #[allow(clippy::too_many_arguments)]
    fn stem(
        &mut self,
        images: &Self::Bytes,
        total: usize,
        aug: &Self::Words,
        step: &Self::Words,
        n: usize,
        norm: Norm,
        w: &Self::Buf,
        bias: &Self::Buf,
        cw: usize,
        res: usize,
        out: &mut Self::Buf,
        grad: Option<&mut Self::Buf>,
    ) -> Result<()>;

    /// 3×3 "same" conv (pad 1, stride 1, no bias) of `a = GELU(pre(x))` with OHWI weights
    /// `w` (`cout × 3×3×xs.c`). With `pool`, a 2×2 stride-2 max-pool follows (floor) and
    /// `argmax` receives, per pooled element, the window position 0..3 (`dy·2 + dx`) of the
    /// first maximum. `y` is `xs.with_c(cout)`, or its `pooled()` shape with `pool`.
    /// `keep` (`xs.len()` values), if given, is where the backend may keep `a` for the matching
    /// `conv3x3_bwd` (its contents are the backend's own; the CPU reference keeps nothing).
    /// `stats`, if given, receives the training-mode BatchNorm statistics of `y` (`BnStats`).
    #[allow(clippy::too_many_arguments)]
    fn conv3x3(
        &mut self,
        x: &Self::Buf,
        xs: Shape,
        pre: Pre<'_, Self>,
        w: &Self::Buf,
        cout: usize,
        pool: bool,
        y: &mut Self::Buf,
        argmax: &mut Self::Bytes,
        keep: Option<&mut Self::Buf>,
        stats: Option<BnStats<'_, Self>>,
    ) -> Result<()>;

    /// Training-mode BatchNorm statistics of `y` over N·H·W: writes `bn = [mean | invstd]`
    /// with the biased variance, `invstd = 1/√(var + eps)`, and blends the running statistics
    /// `running ← momentum·running + (1 − momentum)·batch` using the unbiased variance.
    #[allow(clippy::too_many_arguments)]
    fn bn_stats(
        &mut self,
        y: &Self::Buf,
        ys: Shape,
        eps: f32,
        momentum: f32,
        running_mean: &mut Self::Buf,
        running_var: &mut Self::Buf,
        bn: &mut Self::Buf,
    ) -> Result<()>;

    /// Eval-mode BatchNorm: `bn = [running_mean | 1/√(running_var + eps)]`.
    fn bn_eval(
        &mut self,
        running_mean: &Self::Buf,
        running_var: &Self::Buf,
        eps: f32,
        bn: &mut Self::Buf,
    ) -> Result<()>;

    /// The head: `a = GELU(pre(x))`, global max over H×W per channel → `feat` (n × c), with
    /// `argmax` the flat position h·W + w of the first maximum; then
    /// `logits = scale · feat · wᵀ` with `w` (`classes × c`).
    #[allow(clippy::too_many_arguments)]
    fn head(
        &mut self,
        x: &Self::Buf,
        xs: Shape,
        pre: Pre<'_, Self>,
        w: &Self::Buf,
        classes: usize,
        scale: f32,
        feat: &mut Self::Buf,
        argmax: &mut Self::Bytes,
        logits: &mut Self::Buf,
    ) -> Result<()>;

    /// Label-smoothed cross-entropy summed over the batch. Example i has label
    /// `labels[aug::unpack(aug[offset + i]).index]`, `offset` from the step record `step`; its
    /// target is `(1 − s)·onehot + s/classes`. A word past the end of `aug` or an index past the
    /// labels makes the loss NaN.
    /// Writes `dlogits = softmax − target` and adds `[loss sum, correct count]` into `acc`
    /// (2 floats; accumulating on the device avoids a host sync per step).
    #[allow(clippy::too_many_arguments)]
    fn xent(
        &mut self,
        logits: &Self::Buf,
        labels: &Self::Bytes,
        aug: &Self::Words,
        step: &Self::Words,
        n: usize,
        classes: usize,
        smoothing: f32,
        dlogits: &mut Self::Buf,
        acc: &mut Self::Buf,
    ) -> Result<()>;

    /// `acc += weight · logits` (test-time augmentation).
    fn axpy(&mut self, acc: &mut Self::Buf, x: &Self::Buf, weight: f32) -> Result<()>;

    // ---- backward ------------------------------------------------------------------------
    /// Backward of `head`: `dw = scale · dlogitsᵀ·feat` and `da` (shape `xs`, the gradient
    /// w.r.t. `a = GELU(pre(x))`): `scale · dlogits·w` routed to each channel's argmax, zero
    /// elsewhere.
    #[allow(clippy::too_many_arguments)]
    fn head_bwd(
        &mut self,
        dlogits: &Self::Buf,
        feat: &Self::Buf,
        argmax: &Self::Bytes,
        w: &Self::Buf,
        xs: Shape,
        classes: usize,
        scale: f32,
        dw: &mut Self::Buf,
        da: &mut Self::Buf,
    ) -> Result<()>;

    /// Backward of `a = GELU(pre(x))` given `da`: with `du = da·GELU′(u)`, writes the shift
    /// gradient `dshift[c] = Σ du` (the BN beta or the whitening bias) and, when `dx` is given,
    /// the gradient w.r.t. `x`: `x + bias` passes `du` through; BN (batch statistics, scale 1)
    /// gives `invstd·(du − mean(du) − x̂·mean(du·x̂))`, `x̂ = (x − mean)·invstd`.
    /// `sums`: the per-channel sums `[Σ du | Σ du·x̂]` (2·C values, `x̂ = x` for the bias) if the
    /// op that wrote `da` took them already (`conv3x3_bwd`'s `da_sums`); else they are computed
    /// here. `unpool` (needs `dx`): `dx` is written at the pool's input resolution (`Unpool`).
    #[allow(clippy::too_many_arguments)]
    fn pre_bwd(
        &mut self,
        da: &Self::Buf,
        x: &Self::Buf,
        xs: Shape,
        pre: Pre<'_, Self>,
        sums: Option<&Self::Buf>,
        dshift: &mut Self::Buf,
        dx: Option<&mut Self::Buf>,
        unpool: Option<Unpool<'_, Self>>,
    ) -> Result<()>;

    /// Backward of `conv3x3` given `dy` (the gradient w.r.t. its output `y`, pooled when
    /// `pool`): unpools through `argmax`, writes the weight gradient `dw` and, when `da` is
    /// given, the gradient w.r.t. the conv input `a` (shape `xs`). `da_sums` (needs `da`):
    /// where to write the sums `pre_bwd` of `da`, `x` and `pre` needs (`[Σ du | Σ du·x̂]`, 2·C
    /// values; a GPU takes them in the input gradient's epilogue). `kept`: the `keep` buffer
    /// the forward `conv3x3` of the same `x` and `pre` (unchanged since) was given, or None
    /// (then `a` is computed again from `x` and `pre`).
    #[allow(clippy::too_many_arguments)]
    fn conv3x3_bwd(
        &mut self,
        x: &Self::Buf,
        xs: Shape,
        pre: Pre<'_, Self>,
        w: &Self::Buf,
        cout: usize,
        pool: bool,
        argmax: &Self::Bytes,
        dy: &Self::Buf,
        dw: &mut Self::Buf,
        da: Option<&mut Self::Buf>,
        da_sums: Option<&mut Self::Buf>,
        kept: Option<&Self::Buf>,
    ) -> Result<()>;

    /// The gradient of the whitening bias through conv 0 (whose input is `a = GELU(u)`, `u` the
    /// stem's output plus the bias), from `dy` (the gradient w.r.t. conv 0's output, unpooled),
    /// without an input gradient of its own: `dshift[c] = Σ_q g_q·da_q` over channel c's values,
    /// `g = GELU′(u)` (the stem's `grad`) and `da` the input gradient `conv3x3_bwd` gives for
    /// `dy`. `da` (`xs.len()`) and `gw` (the weight's length) are scratch. The CPU reference
    /// computes `da` and that sum; a GPU regroups it: `gw` the weight gradient of `dy` against
    /// `g` in place of the conv's input, and `dshift[c] = Σ_{o,tap} w[o][tap][c]·gw[o][tap][c]`,
    /// a weight-gradient GEMM over the pixels instead of an input gradient and a pass over it.
    #[allow(clippy::too_many_arguments)]
    fn conv3x3_shift_grad(
        &mut self,
        g: &Self::Buf,
        xs: Shape,
        w: &Self::Buf,
        cout: usize,
        argmax: &Self::Bytes,
        dy: &Self::Buf,
        da: &mut Self::Buf,
        gw: &mut Self::Buf,
        dshift: &mut Self::Buf,
    ) -> Result<()>;

    // ---- optimisers ----------------------------------------------------------------------
    /// Nesterov SGD over several tensors (one multi-tensor launch on a GPU), rates from `step`.
    fn sgd(&mut self, params: &mut [SgdParam<'_, Self>], step: &Self::Words, momentum: f32) -> Result<()>;

    /// Muon over several conv weights. Per tensor: `m ← μ·m + g`; `u = g + μ·m`;
    /// `w ← w·√rows/‖w‖_F`; `X = u/(‖u‖_F + 1e-7)`, then `ns.steps` Newton–Schulz iterations
    /// `A = X·Xᵀ; B = b·A + c·A·A; X ← a·X + B·X` with (a,b,c) = `ns.coeffs`;
    /// `w ← w − lr·X` with `lr` the step record's rate in slot `lr_slot`. Requires rows ≤ cols.
    fn muon(
        &mut self,
        params: &mut [MuonParam<'_, Self>],
        step: &Self::Words,
        lr_slot: usize,
        momentum: f32,
        ns: Ns,
    ) -> Result<()>;
}

/// Newton–Schulz quintic coefficients (a, b, c) of airbench94_muon.
pub const NS_COEFFS: (f32, f32, f32) = (3.4445, -4.7750, 2.0315);

/// The Newton–Schulz iteration Muon applies to its update: `steps` quintic iterations with the
/// coefficients `(a, b, c)` (`Backend::muon`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ns {
    pub steps: usize,
    pub coeffs: (f32, f32, f32),
}

impl Ns {
    /// `steps` iterations with airbench94_muon's coefficients.
    pub const fn airbench(steps: usize) -> Ns {
        Ns { steps, coeffs: NS_COEFFS }
    }
}
