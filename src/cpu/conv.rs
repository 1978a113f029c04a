//! 3×3 "same" convolution (NHWC activations, OHWI weights), its fused 2×2 max-pool, and both
//! gradients. One register-blocked core (`conv_core`) computes the forward pass and, with
//! flipped and transposed weights, the input gradient; the weight gradient is a direct
//! accumulation. `tests` checks all of it against a naive seven-loop convolution.
use super::layers::Affine;
use super::par;
use super::real::Real;
use crate::backend::Shape;

/// `apad` ← zero-bordered `(h+2)×(w+2)×c` copy of `GELU(pre(x))` (x itself where it is
/// activated already) for one image.
pub fn activate_padded<T: Real>(x: &[T], h: usize, w: usize, c: usize, aff: &Affine<T>, apad: &mut [T]) {
    apad.fill(T::ZERO);
    for y in 0..h {
        for xx in 0..w {
            let src = &x[(y * w + xx) * c..][..c];
            let dst = &mut apad[((y + 1) * (w + 2) + xx + 1) * c..][..c];
            for ch in 0..c {
                dst[ch] = aff.a(src[ch], ch);
            }
        }
    }
}

const PB: usize = 4; // output pixels per block (along a row)
const CB: usize = 8; // output channels per block

/// `out[y][x][o] = Σ_{ky,kx,i} inp[y+ky][x+kx][i] · wt[(ky·3+kx)·ci + i][o]` for one image,
/// with `inp` zero-padded `(h+2)×(w+2)×ci` and `wt` the `9·ci × co` matrix.
fn conv_core<T: Real>(inp: &[T], h: usize, w: usize, ci: usize, wt: &[T], co: usize, out: &mut [T]) {
    let row = (w + 2) * ci;
    for y in 0..h {
        let mut x0 = 0;
        while x0 < w {
            let np = PB.min(w - x0);
            let mut o0 = 0;
            while o0 < co {
                let nc = CB.min(co - o0);
                let mut acc = [[T::ZERO; CB]; PB];
                if np == PB && nc == CB {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let base = (y + ky) * row + (x0 + kx) * ci;
                            let wbase = (ky * 3 + kx) * ci;
                            for i in 0..ci {
                                let wv: &[T; CB] = wt[(wbase + i) * co + o0..][..CB].try_into().unwrap();
                                for (p, accp) in acc.iter_mut().enumerate() {
                                    let a = inp[base + p * ci + i];
                                    for j in 0..CB {
                                        accp[j] += a * wv[j];
                                    }
                                }
                            }
                        }
                    }
                } else {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let base = (y + ky) * row + (x0 + kx) * ci;
                            let wbase = (ky * 3 + kx) * ci;
                            for i in 0..ci {
                                let wv = &wt[(wbase + i) * co + o0..][..nc];
                                for (p, accp) in acc.iter_mut().enumerate().take(np) {
                                    let a = inp[base + p * ci + i];
                                    for j in 0..nc {
                                        accp[j] += a * wv[j];
                                    }
                                }
                            }
                        }
                    }
                }
                for (p, accp) in acc.iter().enumerate().take(np) {
                    out[(y * w + x0 + p) * co + o0..][..nc].copy_from_slice(&accp[..nc]);
                }
                o0 += CB;
            }
            x0 += PB;
        }
    }
}

/// Forward weights as the `9·cin × cout` matrix: `wt[(tap·cin + i)·cout + o] = w[o][tap][i]`.
fn forward_matrix<T: Real>(w: &[T], cin: usize, cout: usize) -> Vec<T> {
    let mut wt = vec![T::ZERO; 9 * cin * cout];
    for o in 0..cout {
        for k in 0..9 * cin {
            wt[k * cout + o] = w[o * 9 * cin + k];
        }
    }
    wt
}

/// Input-gradient weights (the transposed conv is a conv with the kernel flipped and the
/// channel roles swapped): `wd[(tap·cout + o)·cin + i] = w[o][8 − tap][i]`.
fn dgrad_matrix<T: Real>(w: &[T], cin: usize, cout: usize) -> Vec<T> {
    let mut wd = vec![T::ZERO; 9 * cin * cout];
    for o in 0..cout {
        for tap in 0..9 {
            for i in 0..cin {
                wd[(tap * cout + o) * cin + i] = w[(o * 9 + 8 - tap) * cin + i];
            }
        }
    }
    wd
}

/// 2×2 stride-2 max-pool of one `h×w×c` image (floor); argmax = dy·2 + dx of the first max.
fn pool2<T: Real>(full: &[T], h: usize, w: usize, c: usize, y: &mut [T], argmax: &mut [u8]) {
    let (ph, pw) = (h / 2, w / 2);
    for py in 0..ph {
        for px in 0..pw {
            for ch in 0..c {
                let mut best = full[((2 * py) * w + 2 * px) * c + ch];
                let mut arg = 0u8;
                for k in 1..4u8 {
                    let v = full[((2 * py + (k as usize >> 1)) * w + 2 * px + (k as usize & 1)) * c + ch];
                    if v > best {
                        best = v;
                        arg = k;
                    }
                }
                y[(py * pw + px) * c + ch] = best;
                argmax[(py * pw + px) * c + ch] = arg;
            }
        }
    }
}

/// Inverse of `pool2` for gradients: `full` (h×w×c) gets each pooled gradient at its argmax,
/// zeros elsewhere (including a dropped odd last row/column).
fn unpool2<T: Real>(dy: &[T], argmax: &[u8], h: usize, w: usize, c: usize, full: &mut [T]) {
    full.fill(T::ZERO);
    let (ph, pw) = (h / 2, w / 2);
    for py in 0..ph {
        for px in 0..pw {
            for ch in 0..c {
                let k = argmax[(py * pw + px) * c + ch] as usize;
                full[((2 * py + (k >> 1)) * w + 2 * px + (k & 1)) * c + ch] = dy[(py * pw + px) * c + ch];
            }
        }
    }
}

/// `unpool2` of every image: `dy` (shape `full.pooled()`) into `out` (shape `full`).
pub fn unpool<T: Real>(dy: &[T], argmax: &[u8], full: Shape, out: &mut [T]) {
    let ps = full.pooled();
    assert!(dy.len() == ps.len() && argmax.len() == ps.len(), "unpool: dy and argmax are {ps:?}");
    assert_eq!(out.len(), full.len(), "unpool: the output is {full:?}");
    let (per_p, per_f) = (ps.h * ps.w * ps.c, full.h * full.w * full.c);
    for i in 0..full.n {
        let (d, a) = (&dy[i * per_p..][..per_p], &argmax[i * per_p..][..per_p]);
        unpool2(d, a, full.h, full.w, full.c, &mut out[i * per_f..][..per_f]);
    }
}

#[allow(clippy::too_many_arguments)]
pub fn conv3x3<T: Real>(
    x: &[T],
    xs: Shape,
    aff: &Affine<T>,
    w: &[T],
    cout: usize,
    pool: bool,
    y: &mut [T],
    argmax: &mut [u8],
    threads: usize,
) {
    let Shape { h, w: wd, c: cin, .. } = xs;
    assert_eq!(x.len(), xs.len(), "conv3x3: x is not {xs:?}");
    assert_eq!(w.len(), cout * 9 * cin, "conv3x3: weight is not {cout}×3×3×{cin}");
    let ys = if pool { xs.with_c(cout).pooled() } else { xs.with_c(cout) };
    assert_eq!(y.len(), ys.len(), "conv3x3: y is not {ys:?}");
    if pool {
        assert_eq!(argmax.len(), ys.len(), "conv3x3: argmax is not {ys:?}");
    }
    let wt = forward_matrix(w, cin, cout);
    let per_out = ys.h * ys.w * cout;
    let per_arg = if pool { per_out } else { 0 };
    let argmax: &mut [u8] = if pool { argmax } else { &mut [] };
    par::images_mut2(y, per_out, argmax, per_arg, threads, |imgs, yblock, ablock| {
        let mut apad = vec![T::ZERO; (h + 2) * (wd + 2) * cin];
        let mut full = vec![T::ZERO; if pool { h * wd * cout } else { 0 }];
        for (k, i) in imgs.enumerate() {
            activate_padded(&x[i * h * wd * cin..][..h * wd * cin], h, wd, cin, aff, &mut apad);
            let yi = &mut yblock[k * per_out..][..per_out];
            if pool {
                conv_core(&apad, h, wd, cin, &wt, cout, &mut full);
                pool2(&full, h, wd, cout, yi, &mut ablock[k * per_arg..][..per_arg]);
            } else {
                conv_core(&apad, h, wd, cin, &wt, cout, yi);
            }
        }
    });
}

/// Weight gradient and (optionally) input gradient of `conv3x3`; see `Backend::conv3x3_bwd`.
#[allow(clippy::too_many_arguments)]
pub fn conv3x3_bwd<T: Real>(
    x: &[T],
    xs: Shape,
    aff: &Affine<T>,
    w: &[T],
    cout: usize,
    pool: bool,
    argmax: &[u8],
    dy: &[T],
    dw: &mut [T],
    da: Option<&mut [T]>,
    threads: usize,
) {
    let Shape { n, h, w: wd, c: cin } = xs;
    assert_eq!(x.len(), xs.len());
    assert_eq!(w.len(), cout * 9 * cin);
    assert_eq!(dw.len(), w.len());
    let ys = if pool { xs.with_c(cout).pooled() } else { xs.with_c(cout) };
    assert_eq!(dy.len(), ys.len(), "conv3x3_bwd: dy is not {ys:?}");
    if pool {
        assert_eq!(argmax.len(), ys.len());
    }
    let per_dy = ys.h * ys.w * cout;
    let full_len = h * wd * cout;
    // Full-resolution output gradient of image i, written into `buf`.
    let unpooled = |i: usize, buf: &mut Vec<T>| {
        if pool {
            buf.resize(full_len, T::ZERO);
            unpool2(&dy[i * per_dy..][..per_dy], &argmax[i * per_dy..][..per_dy], h, wd, cout, buf);
        } else {
            buf.clear();
            buf.extend_from_slice(&dy[i * per_dy..][..per_dy]);
        }
    };

    // Weight gradient: dw[o][tap][i] = Σ_pixels dy[p][o] · a[p + tap][i].
    let k9 = 9 * cin;
    let sum = par::reduce(n, cout * k9, threads, |imgs, acc| {
        let mut apad = vec![T::ZERO; (h + 2) * (wd + 2) * cin];
        let mut g = Vec::new();
        let mut part = vec![T::ZERO; cout * k9];
        for i in imgs {
            activate_padded(&x[i * h * wd * cin..][..h * wd * cin], h, wd, cin, aff, &mut apad);
            unpooled(i, &mut g);
            part.fill(T::ZERO);
            for y in 0..h {
                for xx in 0..wd {
                    let grow = &g[(y * wd + xx) * cout..][..cout];
                    for (o, &gv) in grow.iter().enumerate() {
                        if gv == T::ZERO {
                            continue;
                        }
                        let prow = &mut part[o * k9..][..k9];
                        for ky in 0..3 {
                            let src = &apad[((y + ky) * (wd + 2) + xx) * cin..][..3 * cin];
                            let dst = &mut prow[ky * 3 * cin..][..3 * cin];
                            for (d, &a) in dst.iter_mut().zip(src) {
                                *d += gv * a;
                            }
                        }
                    }
                }
            }
            for (a, &p) in acc.iter_mut().zip(&part) {
                *a += p.f64();
            }
        }
    });
    for (d, s) in dw.iter_mut().zip(sum) {
        *d = T::of(s);
    }

    // Input gradient: a transposed conv = conv of the padded output gradient with the
    // flipped, channel-swapped kernel.
    if let Some(da) = da {
        assert_eq!(da.len(), xs.len());
        let wdm = dgrad_matrix(w, cin, cout);
        par::images_mut(da, h * wd * cin, threads, |imgs, block| {
            let mut g = Vec::new();
            let mut gpad = vec![T::ZERO; (h + 2) * (wd + 2) * cout];
            for (k, i) in imgs.enumerate() {
                unpooled(i, &mut g);
                for y in 0..h {
                    gpad[((y + 1) * (wd + 2) + 1) * cout..][..wd * cout]
                        .copy_from_slice(&g[y * wd * cout..][..wd * cout]);
                }
                conv_core(&gpad, h, wd, cout, &wdm, cin, &mut block[k * h * wd * cin..][..h * wd * cin]);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, randn};

    /// The obviously-correct version: seven nested loops, f64, bounds checks for padding.
    fn naive_conv(a: &[f64], s: Shape, w: &[f64], cout: usize) -> Vec<f64> {
        let mut y = vec![0.0; s.count() * cout];
        for n in 0..s.n {
            for yy in 0..s.h {
                for xx in 0..s.w {
                    for o in 0..cout {
                        let mut acc = 0.0;
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (sy, sx) = (yy as i64 + ky as i64 - 1, xx as i64 + kx as i64 - 1);
                                if sy < 0 || sx < 0 || sy >= s.h as i64 || sx >= s.w as i64 {
                                    continue;
                                }
                                for i in 0..s.c {
                                    acc += a[((n * s.h + sy as usize) * s.w + sx as usize) * s.c + i]
                                        * w[((o * 3 + ky) * 3 + kx) * s.c + i];
                                }
                            }
                        }
                        y[((n * s.h + yy) * s.w + xx) * cout + o] = acc;
                    }
                }
            }
        }
        y
    }

    fn act(x: &[f64], s: Shape, aff: &Affine<f64>) -> Vec<f64> {
        x.iter().enumerate().map(|(k, &v)| aff.a(v, k % s.c)).collect()
    }

    #[test]
    fn forward_matches_naive_conv_on_odd_shapes() {
        // odd sizes exercise the pixel- and channel-block remainders; C == H == W catches
        // NHWC/NCHW stride aliasing.
        for &(s, cout) in &[
            (Shape::new(2, 7, 5, 3), 11),
            (Shape::new(3, 9, 9, 16), 16),
            (Shape::new(1, 6, 6, 6), 6),
            (Shape::new(2, 3, 3, 8), 24),
        ] {
            let x = randn(s.len(), 1);
            let w = randn(cout * 9 * s.c, 2);
            let aff = Affine::bn_from(
                &randn(s.c, 3),
                &randn(s.c, 4).iter().map(|v| v.abs() + 0.5).collect::<Vec<_>>(),
                &randn(s.c, 5),
            );
            let want = naive_conv(&act(&x, s, &aff), s, &w, cout);
            for threads in [1, 3] {
                let mut y = vec![f64::NAN; want.len()];
                conv3x3(&x, s, &aff, &w, cout, false, &mut y, &mut [], threads);
                assert_close(&y, &want, 1e-12, "conv3x3 forward");
            }
        }
    }

    #[test]
    fn pooled_forward_takes_first_max_and_drops_odd_edge() {
        let s = Shape::new(2, 7, 5, 4);
        let cout = 3;
        let x = randn(s.len(), 11);
        let w = randn(cout * 9 * s.c, 12);
        let aff = Affine::bias(&randn(s.c, 13));
        let full = naive_conv(&act(&x, s, &aff), s, &w, cout);
        let ps = s.with_c(cout).pooled();
        let mut y = vec![f64::NAN; ps.len()];
        let mut am = vec![9u8; ps.len()];
        conv3x3(&x, s, &aff, &w, cout, true, &mut y, &mut am, 2);
        for n in 0..ps.n {
            for py in 0..ps.h {
                for px in 0..ps.w {
                    for o in 0..cout {
                        let at = |k: usize| full[((n * s.h + 2 * py + k / 2) * s.w + 2 * px + k % 2) * cout + o];
                        let best = (0..4).map(at).fold(f64::NEG_INFINITY, f64::max);
                        let i = ((n * ps.h + py) * ps.w + px) * cout + o;
                        assert_eq!(y[i], best);
                        assert_eq!(at(am[i] as usize), best);
                    }
                }
            }
        }
    }

    #[test]
    fn backward_matches_naive_transposes() {
        // <dy, conv(a, w)> is bilinear: its gradients are what the naive loops give by
        // accumulating a[p+tap]·dy[p] (weights) and w·dy (inputs).
        let s = Shape::new(2, 6, 5, 5);
        let cout = 9;
        let x = randn(s.len(), 21);
        let w = randn(cout * 9 * s.c, 22);
        let aff = Affine::bias(&randn(s.c, 23));
        let a = act(&x, s, &aff);
        let dy = randn(s.count() * cout, 24);
        let mut dw_want = vec![0.0; w.len()];
        let mut da_want = vec![0.0; a.len()];
        for n in 0..s.n {
            for yy in 0..s.h {
                for xx in 0..s.w {
                    for o in 0..cout {
                        let g = dy[((n * s.h + yy) * s.w + xx) * cout + o];
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (sy, sx) = (yy as i64 + ky as i64 - 1, xx as i64 + kx as i64 - 1);
                                if sy < 0 || sx < 0 || sy >= s.h as i64 || sx >= s.w as i64 {
                                    continue;
                                }
                                for i in 0..s.c {
                                    let ai = ((n * s.h + sy as usize) * s.w + sx as usize) * s.c + i;
                                    let wi = ((o * 3 + ky) * 3 + kx) * s.c + i;
                                    dw_want[wi] += g * a[ai];
                                    da_want[ai] += g * w[wi];
                                }
                            }
                        }
                    }
                }
            }
        }
        let mut dw = vec![f64::NAN; w.len()];
        let mut da = vec![f64::NAN; a.len()];
        conv3x3_bwd(&x, s, &aff, &w, cout, false, &[], &dy, &mut dw, Some(&mut da), 3);
        assert_close(&dw, &dw_want, 1e-12, "wgrad");
        assert_close(&da, &da_want, 1e-12, "dgrad");
    }
}
