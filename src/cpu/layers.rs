//! Everything of the network that is not a 3×3 conv: the stem (augment + normalise + 2×2
//! whitening conv) and its patch covariance, the BN/GELU prologue and its backward, BatchNorm
//! statistics, the max-pool head with its linear layer, and the label-smoothed loss.
use super::par;
use super::real::{gelu, gelu_grad, Real};
use crate::aug::{reflect, unpack};
use crate::backend::{Norm, Shape};

pub const IMG: usize = 32;
const IMG_BYTES: usize = IMG * IMG * 3;

/// The per-channel map `u = (x − mean)·invstd + shift` in front of every GELU.
pub struct Affine<T> {
    pub mean: Vec<T>,
    pub invstd: Vec<T>,
    pub shift: Vec<T>,
    /// True for BatchNorm (`x̂ = (x − mean)·invstd` is a function of the batch).
    pub bn: bool,
    /// True where x holds the activation already (`Pre::Activated`): no map, no GELU, and no
    /// channels (the gradients through a map refuse it).
    pub activated: bool,
}

impl<T: Real> Affine<T> {
    pub fn bias(bias: &[T]) -> Self {
        let c = bias.len();
        Affine { mean: vec![T::ZERO; c], invstd: vec![T::ONE; c], shift: bias.to_vec(), bn: false, activated: false }
    }
    pub fn activated() -> Self {
        Affine { mean: Vec::new(), invstd: Vec::new(), shift: Vec::new(), bn: false, activated: true }
    }
    pub fn bn_from(mean: &[T], invstd: &[T], beta: &[T]) -> Self {
        assert!(mean.len() == invstd.len() && mean.len() == beta.len());
        Affine { mean: mean.to_vec(), invstd: invstd.to_vec(), shift: beta.to_vec(), bn: true, activated: false }
    }
    /// From a `[mean | invstd]` buffer as written by `bn_stats`/`bn_eval`.
    pub fn from_bn_buf(bn: &[T], beta: &[T]) -> Self {
        let c = beta.len();
        assert_eq!(bn.len(), 2 * c, "BN state must be [mean | invstd] of {c} channels");
        Self::bn_from(&bn[..c], &bn[c..], beta)
    }
    pub fn channels(&self) -> usize {
        self.shift.len()
    }
    #[inline(always)]
    pub fn xhat(&self, x: T, c: usize) -> T {
        (x - self.mean[c]) * self.invstd[c]
    }
    #[inline(always)]
    pub fn u(&self, x: T, c: usize) -> T {
        self.xhat(x, c) + self.shift[c]
    }
    /// The activation `a = GELU(u)` of x in channel c (x itself where it holds `a` already).
    #[inline(always)]
    pub fn a(&self, x: T, c: usize) -> T {
        if self.activated {
            x
        } else {
            gelu(self.u(x, c))
        }
    }
}

fn per_channel_sums<T: Real>(x: &[T], s: Shape, threads: usize, f: impl Fn(T, usize) -> f64 + Sync) -> Vec<f64> {
    let per = s.h * s.w * s.c;
    par::reduce(s.n, s.c, threads, |imgs, acc| {
        for i in imgs {
            for (k, &v) in x[i * per..][..per].iter().enumerate() {
                acc[k % s.c] += f(v, k % s.c);
            }
        }
    })
}

#[allow(clippy::too_many_arguments)]
pub fn bn_stats<T: Real>(
    y: &[T],
    ys: Shape,
    eps: f32,
    momentum: f32,
    running_mean: &mut [T],
    running_var: &mut [T],
    bn: &mut [T],
    threads: usize,
) {
    let c = ys.c;
    assert_eq!(y.len(), ys.len());
    assert!(running_mean.len() == c && running_var.len() == c && bn.len() == 2 * c);
    let count = ys.count() as f64;
    assert!(count > 1.0, "BatchNorm needs more than one value per channel");
    let mean: Vec<f64> = per_channel_sums(y, ys, threads, |v, _| v.f64()).iter().map(|s| s / count).collect();
    let var: Vec<f64> =
        per_channel_sums(y, ys, threads, |v, ch| (v.f64() - mean[ch]).powi(2)).iter().map(|s| s / count).collect();
    let m = momentum as f64;
    for ch in 0..c {
        bn[ch] = T::of(mean[ch]);
        bn[c + ch] = T::of(1.0 / (var[ch] + eps as f64).sqrt());
        running_mean[ch] = T::of(m * running_mean[ch].f64() + (1.0 - m) * mean[ch]);
        running_var[ch] = T::of(m * running_var[ch].f64() + (1.0 - m) * var[ch] * count / (count - 1.0));
    }
}

pub fn bn_eval<T: Real>(running_mean: &[T], running_var: &[T], eps: f32, bn: &mut [T]) {
    let c = running_mean.len();
    assert!(running_var.len() == c && bn.len() == 2 * c);
    for ch in 0..c {
        bn[ch] = running_mean[ch];
        bn[c + ch] = T::of(1.0 / (running_var[ch].f64() + eps as f64).sqrt());
    }
}

/// `[Σ du | Σ du·x̂]` per channel (f64), `du = da·GELU′(u)`: the sums `pre_bwd` needs.
pub fn pre_bwd_sums<T: Real>(da: &[T], x: &[T], xs: Shape, aff: &Affine<T>, threads: usize) -> Vec<f64> {
    let c = xs.c;
    assert!(da.len() == xs.len() && x.len() == xs.len() && aff.channels() == c);
    let per = xs.h * xs.w * c;
    par::reduce(xs.n, 2 * c, threads, |imgs, acc| {
        for k in imgs.start * per..imgs.end * per {
            let g = (da[k] * gelu_grad(aff.u(x[k], k % c))).f64();
            acc[k % c] += g;
            acc[c + k % c] += g * aff.xhat(x[k], k % c).f64();
        }
    })
}

/// `Σ da·g` per channel (f64): the whitening bias's gradient from conv 0's input gradient `da`
/// and `g = GELU′(u)` (`Backend::conv3x3_shift_grad`); the products and their order are
/// `pre_bwd_sums`'s `Σ du` with `du = da·GELU′(u)`.
pub fn shift_sums<T: Real>(da: &[T], g: &[T], xs: Shape, threads: usize) -> Vec<f64> {
    let c = xs.c;
    assert!(da.len() == xs.len() && g.len() == xs.len());
    let per = xs.h * xs.w * c;
    par::reduce(xs.n, c, threads, |imgs, acc| {
        for k in imgs.start * per..imgs.end * per {
            acc[k % c] += (da[k] * g[k]).f64();
        }
    })
}

/// Backward of `a = GELU(pre(x))`, `Backend::pre_bwd`; `sums` as `pre_bwd_sums` gives them (computed here when None).
#[allow(clippy::too_many_arguments)]
pub fn pre_bwd<T: Real>(
    da: &[T],
    x: &[T],
    xs: Shape,
    aff: &Affine<T>,
    sums: Option<&[f64]>,
    dshift: &mut [T],
    dx: Option<&mut [T]>,
    threads: usize,
) {
    let c = xs.c;
    assert!(da.len() == xs.len() && x.len() == xs.len() && dshift.len() == c && aff.channels() == c);
    let du = |k: usize| da[k] * gelu_grad(aff.u(x[k], k % c));
    let per = xs.h * xs.w * c;
    let computed;
    let sums = match sums {
        Some(s) => s,
        None => {
            computed = pre_bwd_sums(da, x, xs, aff, threads);
            &computed
        }
    };
    assert_eq!(sums.len(), 2 * c, "pre_bwd: sums are [Σdu | Σdu·x̂], 2·{c} values");
    for ch in 0..c {
        dshift[ch] = T::of(sums[ch]);
    }
    if let Some(dx) = dx {
        assert_eq!(dx.len(), xs.len());
        let count = xs.count() as f64;
        let mean_du: Vec<T> = (0..c).map(|ch| T::of(sums[ch] / count)).collect();
        let mean_duxh: Vec<T> = (0..c).map(|ch| T::of(sums[c + ch] / count)).collect();
        par::images_mut(dx, per, threads, |imgs, block| {
            for (j, k) in (imgs.start * per..imgs.end * per).enumerate() {
                let ch = k % c;
                block[j] = if aff.bn {
                    aff.invstd[ch] * (du(k) - mean_du[ch] - aff.xhat(x[k], ch) * mean_duxh[ch])
                } else {
                    du(k)
                };
            }
        });
    }
}

#[allow(clippy::too_many_arguments)]
pub fn head<T: Real>(
    x: &[T],
    xs: Shape,
    aff: &Affine<T>,
    w: &[T],
    classes: usize,
    scale: f32,
    feat: &mut [T],
    argmax: &mut [u8],
    logits: &mut [T],
) {
    let Shape { n, c, .. } = xs;
    let hw = xs.h * xs.w;
    assert!(hw <= 256, "head: argmax is a byte, so at most 256 positions");
    assert!(x.len() == xs.len() && w.len() == classes * c);
    assert!(feat.len() == n * c && argmax.len() == n * c && logits.len() == n * classes);
    for i in 0..n {
        for ch in 0..c {
            let mut best = aff.a(x[i * hw * c + ch], ch);
            let mut arg = 0;
            for p in 1..hw {
                let v = aff.a(x[(i * hw + p) * c + ch], ch);
                if v > best {
                    best = v;
                    arg = p;
                }
            }
            feat[i * c + ch] = best;
            argmax[i * c + ch] = arg as u8;
        }
        for k in 0..classes {
            let dot = (0..c).fold(T::ZERO, |s, ch| s + feat[i * c + ch] * w[k * c + ch]);
            logits[i * classes + k] = T::of(scale as f64) * dot;
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn head_bwd<T: Real>(
    dlogits: &[T],
    feat: &[T],
    argmax: &[u8],
    w: &[T],
    xs: Shape,
    classes: usize,
    scale: f32,
    dw: &mut [T],
    da: &mut [T],
) {
    let Shape { n, c, .. } = xs;
    let hw = xs.h * xs.w;
    assert!(dlogits.len() == n * classes && feat.len() == n * c && argmax.len() == n * c);
    assert!(w.len() == classes * c && dw.len() == w.len() && da.len() == xs.len());
    let s = T::of(scale as f64);
    for k in 0..classes {
        for ch in 0..c {
            dw[k * c + ch] = s * (0..n).fold(T::ZERO, |acc, i| acc + dlogits[i * classes + k] * feat[i * c + ch]);
        }
    }
    da.fill(T::ZERO);
    for i in 0..n {
        for ch in 0..c {
            let g = (0..classes).fold(T::ZERO, |acc, k| acc + dlogits[i * classes + k] * w[k * c + ch]);
            da[(i * hw + argmax[i * c + ch] as usize) * c + ch] = s * g;
        }
    }
}

/// Label-smoothed cross-entropy; see `Backend::xent`.
#[allow(clippy::too_many_arguments)]
pub fn xent<T: Real>(
    logits: &[T],
    labels: &[u8],
    aug: &[u32],
    n: usize,
    classes: usize,
    smoothing: f32,
    dlogits: &mut [T],
    acc: &mut [T],
) {
    assert!(logits.len() == n * classes && dlogits.len() == n * classes && aug.len() >= n && acc.len() == 2);
    let s = smoothing as f64;
    let (mut loss, mut correct) = (0.0f64, 0usize);
    for i in 0..n {
        let label = labels[unpack(aug[i]).index] as usize;
        assert!(label < classes, "label {label} out of range");
        let l = &logits[i * classes..][..classes];
        let (mut best, mut arg) = (l[0].f64(), 0);
        for (k, v) in l.iter().enumerate() {
            if v.f64() > best {
                best = v.f64();
                arg = k;
            }
        }
        let lse = best + l.iter().map(|v| (v.f64() - best).exp()).sum::<f64>().ln();
        for k in 0..classes {
            let q = s / classes as f64 + if k == label { 1.0 - s } else { 0.0 };
            loss -= q * (l[k].f64() - lse);
            dlogits[i * classes + k] = T::of((l[k].f64() - lse).exp() - q);
        }
        correct += (arg == label) as usize;
    }
    acc[0] += T::of(loss);
    acc[1] += T::of(correct as f64);
}

/// Normalised value of channel `c` of pixel (y, x) of the augmented view `a` of `img`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn view<T: Real>(img: &[u8], y: i32, x: i32, c: usize, sy: i32, sx: i32, flip: bool, norm: &[(T, T); 3]) -> T {
    let xx = if flip { IMG as i32 - 1 - x } else { x };
    let p = img[(reflect(y + sy, IMG as i32) * IMG + reflect(xx + sx, IMG as i32)) * 3 + c];
    (T::of(p as f64) / T::of(255.0) - norm[c].0) / norm[c].1
}

fn norm_pairs<T: Real>(norm: Norm) -> [(T, T); 3] {
    std::array::from_fn(|c| (T::of(norm.mean[c] as f64), T::of(norm.std[c] as f64)))
}

/// The stem; see `Backend::stem`. Output 31×31×cw per example.
#[allow(clippy::too_many_arguments)]
pub fn stem<T: Real>(
    images: &[u8],
    total: usize,
    aug: &[u32],
    n: usize,
    norm: Norm,
    w: &[T],
    cw: usize,
    res: usize,
    out: &mut [T],
    threads: usize,
) {
    assert_eq!(images.len(), total * IMG_BYTES, "stem: images is not {total}×32×32×3");
    assert!(aug.len() >= n && w.len() == cw * 12);
    assert!((2..=IMG).contains(&res), "stem: resolution {res} outside 2..=32");
    let o = res - 1;
    assert_eq!(out.len(), n * o * o * cw, "stem: out is not {n}×{o}×{o}×{cw}");
    let nv = norm_pairs::<T>(norm);
    par::images_mut(out, o * o * cw, threads, |imgs, block| {
        let mut full = [T::ZERO; IMG * IMG * 3];
        let mut small = [T::ZERO; IMG * IMG * 3];
        for (k, i) in imgs.enumerate() {
            let a = unpack(aug[i]);
            assert!(a.index < total, "stem: image index {} ≥ {total}", a.index);
            let img = &images[a.index * IMG_BYTES..][..IMG_BYTES];
            for y in 0..IMG {
                for x in 0..IMG {
                    for c in 0..3 {
                        full[(y * IMG + x) * 3 + c] = view(img, y as i32, x as i32, c, a.sy, a.sx, a.flip, &nv);
                    }
                }
            }
            let v = if res == IMG {
                &full
            } else {
                resize_bilinear(&full, res, &mut small);
                &small
            };
            let dst = &mut block[k * o * o * cw..][..o * o * cw];
            for y in 0..o {
                for x in 0..o {
                    for f in 0..cw {
                        let mut acc = T::ZERO;
                        for dy in 0..2 {
                            for dx in 0..2 {
                                for c in 0..3 {
                                    acc += v[((y + dy) * res + x + dx) * 3 + c] * w[f * 12 + (dy * 2 + dx) * 3 + c];
                                }
                            }
                        }
                        dst[(y * o + x) * cw + f] = acc;
                    }
                }
            }
        }
    });
}

/// Bilinear downscale of a 32×32×3 image to `res`×`res`×3 (written row-major with row length
/// `res` at the start of `dst`), sampling at `(i + ½)·32/res − ½` clamped to the edge: PyTorch's
/// `F.interpolate(mode="bilinear", align_corners=False, antialias=False)`.
pub fn resize_bilinear<T: Real>(src: &[T], res: usize, dst: &mut [T]) {
    let taps = |i: usize| {
        let s = ((i as f64 + 0.5) * IMG as f64 / res as f64 - 0.5).clamp(0.0, (IMG - 1) as f64);
        let lo = s.floor() as usize;
        (lo, (lo + 1).min(IMG - 1), T::of(s - lo as f64))
    };
    for y in 0..res {
        let (y0, y1, fy) = taps(y);
        for x in 0..res {
            let (x0, x1, fx) = taps(x);
            for c in 0..3 {
                let p = |yy: usize, xx: usize| src[(yy * IMG + xx) * 3 + c];
                let top = p(y0, x0) + (p(y0, x1) - p(y0, x0)) * fx;
                let bottom = p(y1, x0) + (p(y1, x1) - p(y1, x0)) * fx;
                dst[(y * res + x) * 3 + c] = top + (bottom - top) * fy;
            }
        }
    }
}

/// Uncentered covariance of the 2×2 patches of the first `n` images (12×12, patch vectors
/// ordered (dy, dx, c) like the OHWI stem weights).
pub fn patch_cov<T: Real>(images: &[u8], n: usize, norm: Norm, threads: usize) -> Vec<f64> {
    assert!(images.len() >= n * IMG_BYTES, "patch_cov: fewer than {n} images");
    let nv = norm_pairs::<T>(norm);
    let o = IMG - 1;
    let sum = par::reduce(n, 144, threads, |imgs, acc| {
        let mut v = [0.0f64; 12];
        for i in imgs {
            let img = &images[i * IMG_BYTES..][..IMG_BYTES];
            for y in 0..o {
                for x in 0..o {
                    for dy in 0..2 {
                        for dx in 0..2 {
                            for c in 0..3 {
                                v[(dy * 2 + dx) * 3 + c] =
                                    view(img, (y + dy) as i32, (x + dx) as i32, c, 0, 0, false, &nv).f64();
                            }
                        }
                    }
                    for r in 0..12 {
                        for s in 0..12 {
                            acc[r * 12 + s] += v[r] * v[s];
                        }
                    }
                }
            }
        }
    });
    let count = (n * o * o) as f64;
    sum.into_iter().map(|s| s / count).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aug::{pack, Aug};

    #[test]
    fn resize_bilinear_averages_2x2_blocks_at_half_size_and_keeps_constants() {
        // An image made of 2×2 blocks of distinct values: at 16 px every sample falls midway
        // between two equal columns and rows, so the result is exactly the block values.
        let src: Vec<f64> =
            (0..IMG * IMG * 3).map(|i| ((i / 3 % IMG / 2) * 31 + (i / 3 / IMG / 2) * 7 + i % 3) as f64).collect();
        let mut dst = vec![f64::NAN; IMG * IMG * 3];
        resize_bilinear(&src, 16, &mut dst);
        for y in 0..16 {
            for x in 0..16 {
                for c in 0..3 {
                    assert_eq!(dst[(y * 16 + x) * 3 + c], src[(2 * y * IMG + 2 * x) * 3 + c], "({y},{x},{c})");
                }
            }
        }
        // A constant image stays constant at any size; 32 px is the identity.
        let flat = vec![0.25f64; IMG * IMG * 3];
        resize_bilinear(&flat, 24, &mut dst);
        assert!(dst[..24 * 24 * 3].iter().all(|&v| (v - 0.25).abs() < 1e-15));
        resize_bilinear(&src, 32, &mut dst);
        assert_eq!(dst, src);
    }

    #[test]
    fn stem_at_reduced_resolution_is_the_whitening_conv_of_the_resized_view() {
        let norm = Norm { mean: [0.5; 3], std: [0.25; 3] };
        let img: Vec<u8> = (0..IMG_BYTES).map(|i| (i * 37 % 251) as u8).collect();
        let w: Vec<f64> = crate::testing::randn(2 * 12, 4);
        let aug = [pack(Aug { index: 0, sy: 1, sx: -2, flip: true })];
        let res = 20;
        let mut out = vec![f64::NAN; (res - 1) * (res - 1) * 2];
        stem(&img, 1, &aug, 1, norm, &w, 2, res, &mut out, 1);
        // By hand: the augmented full view, resized, then the 2×2 conv.
        let nv = norm_pairs::<f64>(norm);
        let full: Vec<f64> = (0..IMG * IMG * 3)
            .map(|i| view(&img, (i / 3 / IMG) as i32, (i / 3 % IMG) as i32, i % 3, 1, -2, true, &nv))
            .collect();
        let mut small = vec![0.0; res * res * 3];
        resize_bilinear(&full, res, &mut small);
        for (y, x, f) in [(0, 0, 0), (7, 11, 1), (18, 18, 0), (18, 0, 1)] {
            let mut want = 0.0;
            for k in 0..12 {
                let (dy, dx, c) = (k / 6, k / 3 % 2, k % 3);
                want += small[((y + dy) * res + x + dx) * 3 + c] * w[f * 12 + k];
            }
            let got = out[(y * (res - 1) + x) * 2 + f];
            assert!((got - want).abs() < 1e-12, "({y},{x},{f}): {got} vs {want}");
        }
        assert!(out.iter().all(|v| v.is_finite()));
    }
}
