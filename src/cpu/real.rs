//! The float type of the CPU reference: f32 to train, f64 for finite-difference gradient checks.
use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + Debug
    + 'static
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
{
    const ZERO: Self;
    const ONE: Self;
    fn of(x: f64) -> Self;
    fn f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn erf(self) -> Self;
    fn is_finite(self) -> bool;
}

macro_rules! real {
    ($t:ty, $erf:path) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn of(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn erf(self) -> Self {
                $erf(self)
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
        }
    };
}
real!(f32, libm::erff);
real!(f64, libm::erf);

const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
/// 1/√(2π)
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// Exact GELU: `0.5·u·(1 + erf(u/√2))`.
#[inline(always)]
pub fn gelu<T: Real>(u: T) -> T {
    T::of(0.5) * u * (T::ONE + (u * T::of(FRAC_1_SQRT_2)).erf())
}

/// `GELU′(u) = Φ(u) + u·φ(u)`.
#[inline(always)]
pub fn gelu_grad<T: Real>(u: T) -> T {
    let cdf = T::of(0.5) * (T::ONE + (u * T::of(FRAC_1_SQRT_2)).erf());
    let pdf = T::of(INV_SQRT_2PI) * (T::of(-0.5) * u * u).exp();
    cdf + u * pdf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_values() {
        // GELU(1) = 0.5·(1 + erf(1/√2)) = Φ(1) = 0.841344746...
        assert!((gelu(1.0f64) - 0.841_344_746_068_542_9).abs() < 1e-15);
        assert!((gelu(-1.0f64) + 0.158_655_253_931_457_05).abs() < 1e-15);
        assert_eq!(gelu(0.0f64), 0.0);
        assert!((gelu(1.0f32) - 0.841_344_7).abs() < 1e-6);
    }

    #[test]
    fn gelu_grad_matches_central_difference() {
        let h = 1e-6;
        for i in -40..=40 {
            let u = i as f64 * 0.1 + 0.013;
            let fd = (gelu(u + h) - gelu(u - h)) / (2.0 * h);
            assert!((fd - gelu_grad(u)).abs() < 1e-8, "u={u}: fd {fd} vs {}", gelu_grad(u));
        }
    }
}
