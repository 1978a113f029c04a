//! The whitening stem's filters from the 2×2 patch covariance: a cyclic Jacobi eigensolver for
//! small symmetric matrices, and airbench's filter construction (`±v_k/√(λ_k + eps)`).

/// Eigen-decomposition of the symmetric `n×n` row-major matrix `a`: eigenvalues ascending, and
/// the matching unit eigenvectors (`vectors[k]` belongs to `values[k]`), each with its
/// largest-magnitude component positive so the result is reproducible.
pub fn eigh(a: &[f64], n: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    assert_eq!(a.len(), n * n, "eigh: not an {n}×{n} matrix");
    for i in 0..n {
        for j in 0..i {
            let (x, y) = (a[i * n + j], a[j * n + i]);
            assert!((x - y).abs() <= 1e-9 * (x.abs() + y.abs() + 1e-300), "eigh: matrix not symmetric at ({i},{j})");
        }
    }
    let mut m = a.to_vec();
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i * n + j].powi(2))
            .sum();
        let diag: f64 = (0..n).map(|i| m[i * n + i].powi(2)).sum();
        if off <= 1e-30 * diag || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                // rotation angle that zeroes m[p][q]
                let theta = (m[q * n + q] - m[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (mkp, mkq) = (m[k * n + p], m[k * n + q]);
                    m[k * n + p] = c * mkp - s * mkq;
                    m[k * n + q] = s * mkp + c * mkq;
                }
                for k in 0..n {
                    let (mpk, mqk) = (m[p * n + k], m[q * n + k]);
                    m[p * n + k] = c * mpk - s * mqk;
                    m[q * n + k] = s * mpk + c * mqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| m[i * n + i].total_cmp(&m[j * n + j]));
    let values = order.iter().map(|&i| m[i * n + i]).collect();
    let vectors = order
        .iter()
        .map(|&i| {
            let mut col: Vec<f64> = (0..n).map(|k| v[k * n + i]).collect();
            let big = col.iter().copied().fold(0.0f64, |b, x| if x.abs() > b.abs() { x } else { b });
            if big < 0.0 {
                col.iter_mut().for_each(|x| *x = -*x);
            }
            col
        })
        .collect();
    (values, vectors)
}

/// The 24 whitening filters (OHWI, 24×2×2×3, patch order (dy, dx, c)) from the 12×12 patch
/// covariance: filter k < 12 is `v_k/√(λ_k + eps)` with eigenvalues ascending, filter k + 12 is
/// its negative. Also returns the eigenvalues, for logs and tests.
pub fn filters(cov: &[f64], eps: f64) -> (Vec<f32>, Vec<f64>) {
    let (values, vectors) = eigh(cov, 12);
    let mut w = vec![0.0f32; 24 * 12];
    for (k, (lam, vec)) in values.iter().zip(&vectors).enumerate() {
        let scale = 1.0 / (lam + eps).sqrt();
        for j in 0..12 {
            w[k * 12 + j] = (vec[j] * scale) as f32;
            w[(k + 12) * 12 + j] = (-vec[j] * scale) as f32;
        }
    }
    (w, values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random_symmetric(n: usize, seed: u64) -> Vec<f64> {
        let g = crate::testing::randn(n * n, seed);
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n).map(|k| g[i * n + k] * g[j * n + k]).sum();
            }
        }
        a
    }

    #[test]
    fn eigh_reconstructs_and_is_orthonormal() {
        for (n, seed) in [(12, 1), (5, 2), (1, 3)] {
            let a = random_symmetric(n, seed);
            let (vals, vecs) = eigh(&a, n);
            assert!(vals.windows(2).all(|w| w[0] <= w[1]), "ascending");
            for i in 0..n {
                for j in 0..n {
                    let dot: f64 = (0..n).map(|k| vecs[i][k] * vecs[j][k]).sum();
                    assert!((dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
                    let rec: f64 = (0..n).map(|k| vals[k] * vecs[k][i] * vecs[k][j]).sum();
                    assert!((rec - a[i * n + j]).abs() < 1e-10 * (1.0 + a[i * n + j].abs()));
                }
            }
        }
    }

    #[test]
    fn filters_whiten_the_covariance() {
        // W Σ Wᵀ restricted to the first 12 filters = diag(λ/(λ+eps)) ≈ I for λ ≫ eps
        let cov = random_symmetric(12, 9);
        let eps = 5e-4;
        let (w, vals) = filters(&cov, eps);
        for a in 0..12 {
            for b in 0..12 {
                let mut s = 0.0;
                for i in 0..12 {
                    for j in 0..12 {
                        s += w[a * 12 + i] as f64 * cov[i * 12 + j] * w[b * 12 + j] as f64;
                    }
                }
                let want = if a == b { vals[a] / (vals[a] + eps) } else { 0.0 };
                assert!((s - want).abs() < 1e-5, "({a},{b}): {s} vs {want}");
            }
        }
        for k in 0..12 * 12 {
            assert_eq!(w[12 * 12 + k], -w[k]);
        }
    }
}
