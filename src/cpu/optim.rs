//! Nesterov SGD and Muon (momentum + Newton–Schulz orthogonalisation) on plain slices.
use super::real::Real;
use crate::backend::Ns;

/// `g ← g + wd·p; m ← μ·m + g; p ← p − lr·(g + μ·m)` (PyTorch SGD, nesterov=True).
pub fn sgd<T: Real>(p: &mut [T], g: &[T], m: &mut [T], lr: f32, wd: f32, momentum: f32) {
    assert!(p.len() == g.len() && p.len() == m.len(), "sgd: length mismatch");
    let (lr, wd, mu) = (T::of(lr as f64), T::of(wd as f64), T::of(momentum as f64));
    for ((p, &g), m) in p.iter_mut().zip(g).zip(m.iter_mut()) {
        let g = g + wd * *p;
        *m = mu * *m + g;
        *p -= lr * (g + mu * *m);
    }
}

/// `c (r×k) = a (r×q) · b (q×k)`, row-major.
fn matmul<T: Real>(a: &[T], b: &[T], r: usize, q: usize, k: usize) -> Vec<T> {
    let mut c = vec![T::ZERO; r * k];
    for i in 0..r {
        let ci = &mut c[i * k..][..k];
        for (j, &aij) in a[i * q..][..q].iter().enumerate() {
            for (cv, &bv) in ci.iter_mut().zip(&b[j * k..][..k]) {
                *cv += aij * bv;
            }
        }
    }
    c
}

/// `x·xᵀ` for `x` (r×q).
fn gram<T: Real>(x: &[T], r: usize, q: usize) -> Vec<T> {
    let mut c = vec![T::ZERO; r * r];
    for i in 0..r {
        for j in 0..=i {
            let d = x[i * q..][..q].iter().zip(&x[j * q..][..q]).fold(T::ZERO, |s, (&a, &b)| s + a * b);
            c[i * r + j] = d;
            c[j * r + i] = d;
        }
    }
    c
}

fn frobenius<T: Real>(x: &[T]) -> f64 {
    x.iter().map(|v| v.f64() * v.f64()).sum::<f64>().sqrt()
}

/// `steps` quintic Newton–Schulz iterations on `x / (‖x‖_F + 1e-7)` (rows ≤ cols): pushes every
/// singular value of `x` towards 1 while keeping its singular vectors.
pub fn newton_schulz<T: Real>(g: &[T], rows: usize, cols: usize, ns: Ns) -> Vec<T> {
    assert!(rows <= cols, "newton_schulz: needs rows ≤ cols");
    assert_eq!(g.len(), rows * cols);
    let (a, b, c) = (T::of(ns.coeffs.0 as f64), T::of(ns.coeffs.1 as f64), T::of(ns.coeffs.2 as f64));
    let inv = T::of(1.0 / (frobenius(g) + 1e-7));
    let mut x: Vec<T> = g.iter().map(|&v| v * inv).collect();
    for _ in 0..ns.steps {
        let am = gram(&x, rows, cols);
        let aa = matmul(&am, &am, rows, rows, rows);
        let bm: Vec<T> = am.iter().zip(&aa).map(|(&p, &q)| b * p + c * q).collect();
        let bx = matmul(&bm, &x, rows, rows, cols);
        for (xv, &d) in x.iter_mut().zip(&bx) {
            *xv = a * *xv + d;
        }
    }
    x
}

/// One Muon step for one conv weight (`rows = cout`, `cols = 9·cin`); see `Backend::muon`.
#[allow(clippy::too_many_arguments)]
pub fn muon<T: Real>(w: &mut [T], g: &[T], m: &mut [T], rows: usize, cols: usize, lr: f32, momentum: f32, ns: Ns) {
    assert!(w.len() == rows * cols && g.len() == w.len() && m.len() == w.len(), "muon: length mismatch");
    let mu = T::of(momentum as f64);
    for (m, &g) in m.iter_mut().zip(g) {
        *m = mu * *m + g;
    }
    let u: Vec<T> = g.iter().zip(m.iter()).map(|(&g, &m)| g + mu * m).collect();
    let renorm = T::of((rows as f64).sqrt() / frobenius(w));
    let x = newton_schulz(&u, rows, cols, ns);
    let lr = T::of(lr as f64);
    for (w, &x) in w.iter_mut().zip(&x) {
        *w = *w * renorm - lr * x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::randn;

    #[test]
    fn sgd_matches_pytorch_rule_by_hand() {
        // two steps of p=1, g=0.5, wd=0.1, lr=0.2, μ=0.9
        let (mut p, mut m) = (vec![1.0f64], vec![0.0]);
        sgd(&mut p, &[0.5], &mut m, 0.2, 0.1, 0.9);
        // g=0.6, m=0.6, p = 1 − 0.2·(0.6 + 0.54) = 0.772 (hyperparameters are f32: 1e-7)
        assert!((m[0] - 0.6).abs() < 1e-7 && (p[0] - 0.772).abs() < 1e-7);
        sgd(&mut p, &[0.5], &mut m, 0.2, 0.1, 0.9);
        // g = 0.5772, m = 0.54 + 0.5772 = 1.1172, p = 0.772 − 0.2·(0.5772 + 1.00548)
        assert!((m[0] - 1.1172).abs() < 1e-7 && (p[0] - (0.772 - 0.2 * (0.5772 + 1.00548))).abs() < 1e-7);
    }

    /// The coefficients are the ones given: with (a, 0, 0) each step only scales X by a.
    #[test]
    fn newton_schulz_takes_its_coefficients() {
        let (r, c) = (3, 7);
        let g = randn(r * c, 9);
        let norm = frobenius(&g) + 1e-7;
        for (a, steps) in [(1.0f32, 1), (2.0, 2), (0.5, 3)] {
            let x = newton_schulz(&g, r, c, Ns { steps, coeffs: (a, 0.0, 0.0) });
            let k = (a as f64).powi(steps as i32) / norm;
            assert!(x.iter().zip(&g).all(|(x, g)| (x - k * g).abs() < 1e-12), "a = {a}, {steps} steps");
        }
        let other = newton_schulz(&g, r, c, Ns { steps: 3, coeffs: (3.4576, -4.7391, 2.0843) });
        assert_ne!(other, newton_schulz(&g, r, c, Ns::airbench(3)));
    }

    #[test]
    fn newton_schulz_orthogonalises() {
        // After enough iterations X·Xᵀ ≈ I (singular values in the quintic's band around 1).
        let (r, c) = (8, 20);
        let g = randn(r * c, 5);
        let x = newton_schulz(&g, r, c, Ns::airbench(10));
        // the quintic drives singular values into ≈[0.7, 1.2] (not exactly 1): the
        // eigenvalues σ² of X·Xᵀ land in [0.45, 1.5], while g's spread over orders of magnitude
        let (sig2, _) = crate::whiten::eigh(&gram(&x, r, c), r);
        assert!(sig2.iter().all(|s| (0.45..1.5).contains(s)), "σ² = {sig2:?}");
        let (g2, _) = crate::whiten::eigh(&gram(&g, r, c), r);
        assert!(g2[r - 1] / g2[0] > 2.0, "test input should not already be orthogonal");
        // it keeps singular vectors: orthogonal rows of different lengths stay on their axes
        let mut d = vec![0.0f64; r * c];
        for i in 0..r {
            d[i * c + i] = 1.0 + i as f64;
        }
        let x = newton_schulz(&d, r, c, Ns::airbench(10));
        for i in 0..r {
            for j in 0..c {
                if i == j {
                    assert!((0.6..1.3).contains(&x[i * c + j]), "σ{i} = {}", x[i * c + j]);
                } else {
                    assert_eq!(x[i * c + j], 0.0);
                }
            }
        }
    }

    #[test]
    fn muon_renormalises_then_steps() {
        let (r, c) = (4, 9);
        let mut w = randn(r * c, 1);
        let g = randn(r * c, 2);
        let mut m = vec![0.0; r * c];
        let w0 = w.clone();
        muon(&mut w, &g, &mut m, r, c, 0.0, 0.6, Ns::airbench(3));
        // lr = 0: only the renormalisation to ‖w‖ = √rows happens
        assert!((frobenius(&w) - 2.0).abs() < 1e-12);
        let ratio = w[0] / w0[0];
        assert!(w.iter().zip(&w0).all(|(a, b)| (a / b - ratio).abs() < 1e-12));
        assert_eq!(m, g, "first step: m = g");
        // with lr the step is −lr·NS(g + μ·m)
        let mut w2 = w0.clone();
        let mut m2 = vec![0.0; r * c];
        muon(&mut w2, &g, &mut m2, r, c, 0.1, 0.6, Ns::airbench(3));
        let u: Vec<f64> = g.iter().map(|v| v * 1.6).collect();
        let x = newton_schulz(&u, r, c, Ns::airbench(3));
        for k in 0..r * c {
            assert!((w2[k] - (w[k] - 0.1f32 as f64 * x[k])).abs() < 1e-12);
        }
    }
}
