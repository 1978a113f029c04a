//! Helpers for tests of the reference and the recipe (random inputs, comparisons and
//! finite-difference gradient checks). Small, and public so that `main.rs`'s tests use them too.
use rand::{Rng, SeedableRng};

/// `n` standard-normal-ish values (sum of uniforms), never all zero.
pub fn randn(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| (0..4).map(|_| rng.random::<f64>() - 0.5).sum::<f64>() * 1.7).collect()
}

/// Elementwise |got − want| ≤ tol·(1 + |want|), and no NaN anywhere.
pub fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}[{i}] is {g}");
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: {g} vs {w}");
    }
}

const H: f64 = 1e-5;
const TOL: f64 = 1e-6;

/// Compare `grad` with central differences `(f(x+h) − f(x−h))/2h` at (up to) `samples`
/// coordinates of `x` (f64).
///
/// Tolerance: |analytic − numeric| ≤ 1e-6·(1 + |numeric|); with h = 1e-5 the truncation error
/// is O(h²·L‴) ≈ 1e-10 and rounding O(ε·|L|/h) ≈ 1e-10, so 1e-6 leaves four orders of margin
/// while a wrong term (a missing BN mean term, a flipped tap) is off by O(1).
///
/// Max-pools make the loss piecewise smooth: when two candidates of a pool window lie within h
/// of each other the central difference straddles a kink and averages two slopes. A coordinate
/// that fails at h is therefore retried once at h/100 (rounding error still ≈ 1e-8) and must match
/// there; at most a quarter of the checked coordinates may need the retry, so a wrong gradient,
/// which is wrong at every step size, still fails.
pub fn check(what: &str, x: &[f64], grad: &[f64], samples: usize, mut f: impl FnMut(&[f64]) -> f64) {
    assert_eq!(x.len(), grad.len(), "{what}: gradient length");
    let step = (x.len() / samples.max(1)).max(1);
    let mut xp = x.to_vec();
    let mut numeric = |i: usize, h: f64| {
        xp[i] = x[i] + h;
        let lp = f(&xp);
        xp[i] = x[i] - h;
        let lm = f(&xp);
        xp[i] = x[i];
        (lp - lm) / (2.0 * h)
    };
    let close = |a: f64, num: f64| (a - num).abs() <= TOL * (1.0 + num.abs());
    let (mut checked, mut kinks) = (0, 0);
    for i in (0..x.len()).step_by(step).chain([x.len() - 1]) {
        assert!(grad[i].is_finite(), "{what}[{i}]: analytic gradient is {}", grad[i]);
        let num = numeric(i, H);
        if !close(grad[i], num) {
            let fine = numeric(i, H / 100.0);
            assert!(
                close(grad[i], fine),
                "{what}[{i}]: analytic {} vs numeric {num} (h = {H}) and {fine} (h = {})",
                grad[i],
                H / 100.0
            );
            kinks += 1;
        }
        checked += 1;
    }
    assert!(checked >= samples.min(x.len()), "{what}: only {checked} coordinates checked");
    assert!(4 * kinks <= checked, "{what}: {kinks} of {checked} coordinates only matched at h/100");
}

/// Environment variable that turns a missing dataset from "skipped" into a test failure
/// (`.ci/run` sets it: CI has the data, so a test there must never skip silently).
pub const REQUIRE_DATA_ENV: &str = "CIFAR10_REQUIRED";

/// The real CIFAR-10 folder for tests that need it (`data::find_local_dataset`: the project's
/// shared copy, else the downloaded `data/` folder). When neither exists the test reports itself
/// skipped on stderr with the reason and gets `None`, unless `$CIFAR10_REQUIRED=1`, which makes
/// it fail instead.
pub fn real_dataset(test: &str) -> Option<std::path::PathBuf> {
    if let Some(dir) = crate::data::find_local_dataset() {
        return Some(dir);
    }
    let why = format!(
        "the real CIFAR-10 was found neither in ../shared/cifar10/cifar-10-batches-bin nor in {} \
         (run `cargo run --release -- --cpu` once to download it)",
        crate::data::DEFAULT_DIR
    );
    if std::env::var(REQUIRE_DATA_ENV).as_deref() == Ok("1") {
        panic!("{test}: {why}, and {REQUIRE_DATA_ENV}=1 forbids skipping");
    }
    eprintln!("SKIPPED {test}: {why}");
    None
}
