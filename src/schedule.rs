//! Progressive resolution (VAR's pg / pg0 / pgwp): which image size each training step uses and
//! the learning-rate warm-up after each size change. Pure functions of (step, total steps), so
//! every backend and every test sees the same schedule.
use crate::error::{Error, Result};

/// Full resolution, and the granularity of the reduced ones (sizes are multiples of 4 px).
pub const FULL: usize = 32;
pub const STEP_PX: usize = 4;
/// The smallest size the network accepts: the 2×2 stem and three 2×2 pools need (res−1)/8 ≥ 1;
/// 12 px keeps at least one full pooling window at the last stage.
pub const MIN_PX: usize = 12;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progressive {
    /// Fraction of the steps trained below full resolution (0: off).
    pub frac: f64,
    /// Starting size as a fraction of 32 px.
    pub start: f64,
    /// Steps of linear learning-rate warm-up after each size change (0: none).
    pub warmup: usize,
}

impl Progressive {
    pub const OFF: Progressive = Progressive { frac: 0.0, start: 1.0, warmup: 0 };

    /// Checks the values (the flags' ranges are checked by the parser; this checks the size).
    pub fn new(frac: f64, start: f64, warmup: usize) -> Result<Progressive> {
        let p = Progressive { frac, start, warmup };
        if !((0.0..1.0).contains(&frac) && start > 0.0 && start <= 1.0) {
            return Err(Error::Usage(format!(
                "progressive resolution: fraction {frac} must be in [0, 1) and start {start} in (0, 1]"
            )));
        }
        if frac > 0.0 && p.start_px() < MIN_PX {
            return Err(Error::Usage(format!(
                "--prog-start {start} gives {} px; the network needs at least {MIN_PX} px (--prog-start {:.3})",
                p.start_px(),
                MIN_PX as f64 / FULL as f64
            )));
        }
        Ok(p)
    }

    /// The starting size: 32·start rounded down to a multiple of 4 px.
    pub fn start_px(&self) -> usize {
        ((FULL as f64 * self.start + 1e-9) as usize / STEP_PX * STEP_PX).min(FULL)
    }

    /// Steps at reduced resolution out of `total`.
    pub fn reduced_steps(&self, total: usize) -> usize {
        (self.frac * total as f64).round() as usize
    }

    /// Image size at step `t` of `total`: grows linearly from `start_px` at t = 0 towards 32 px at
    /// the end of the reduced phase, rounded down to a multiple of 4 px; 32 px from then on.
    pub fn resolution(&self, t: usize, total: usize) -> usize {
        let p = self.reduced_steps(total);
        if t >= p {
            return FULL;
        }
        let r0 = self.start_px();
        let r = r0 as f64 + (FULL - r0) as f64 * t as f64 / p as f64;
        ((r + 1e-9) as usize / STEP_PX * STEP_PX).clamp(r0, FULL)
    }

    /// Learning-rate factor at step `t`: `(j + 1)/warmup` for the j-th step (from 0) after a size
    /// change, 1 otherwise. The first step of the run is not a change.
    pub fn lr_factor(&self, t: usize, total: usize) -> f32 {
        if self.warmup == 0 || t == 0 {
            return 1.0;
        }
        let r = self.resolution(t, total);
        // The step at which the current size began.
        let since = (1..=t.min(self.warmup)).take_while(|&j| self.resolution(t - j, total) == r).count();
        if since == t || since >= self.warmup {
            1.0 // the size has not changed within the last `warmup` steps (or ever)
        } else {
            (since + 1) as f32 / self.warmup as f32
        }
    }

    /// The distinct sizes in order of use, with the step each begins at.
    pub fn phases(&self, total: usize) -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = Vec::new();
        for t in 0..total {
            let r = self.resolution(t, total);
            if out.last().is_none_or(|&(_, last)| last != r) {
                out.push((t, r));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_is_always_full_resolution_without_warmup() {
        let p = Progressive::OFF;
        assert!((0..200).all(|t| p.resolution(t, 200) == 32 && p.lr_factor(t, 200) == 1.0));
        assert_eq!(p.phases(200), vec![(0, 32)]);
    }

    #[test]
    fn resolution_per_step() {
        // Half of 200 steps reduced, from 24 px: 24 px for steps 0..50, 28 px for 50..100, 32 after.
        let p = Progressive::new(0.5, 0.75, 0).unwrap();
        assert_eq!(p.start_px(), 24);
        assert_eq!(p.phases(200), vec![(0, 24), (50, 28), (100, 32)]);
        assert_eq!((p.resolution(49, 200), p.resolution(50, 200), p.resolution(99, 200)), (24, 28, 28));
        // From 16 px over 40% of 100 steps: 16, 20, 24, 28 for 10 steps each.
        let q = Progressive::new(0.4, 0.5, 0).unwrap();
        assert_eq!(q.phases(100), vec![(0, 16), (10, 20), (20, 24), (30, 28), (40, 32)]);
        // Sizes never shrink and the run always ends at full resolution.
        for (f, s) in [(0.9, 0.4), (0.3, 0.8), (0.75, 0.55)] {
            let p = Progressive::new(f, s, 0).unwrap();
            let r: Vec<usize> = (0..97).map(|t| p.resolution(t, 97)).collect();
            assert!(r.windows(2).all(|w| w[0] <= w[1] && w[1] % 4 == 0), "{f} {s}: {r:?}");
            assert_eq!(*r.last().unwrap(), 32);
        }
    }

    #[test]
    fn warmup_after_each_change() {
        let p = Progressive::new(0.5, 0.75, 4).unwrap();
        let f: Vec<f32> = (48..58).map(|t| p.lr_factor(t, 200)).collect();
        assert_eq!(f, vec![1.0, 1.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0]);
        assert_eq!(p.lr_factor(0, 200), 1.0, "the start is not a change");
        assert_eq!(p.lr_factor(100, 200), 0.25, "the switch to 32 px warms up too");
        assert_eq!(p.lr_factor(103, 200), 1.0);
    }

    #[test]
    fn too_small_a_start_is_refused() {
        match Progressive::new(0.5, 0.3, 0) {
            Err(Error::Usage(m)) => assert!(m.contains("at least 12 px"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(Progressive::new(0.0, 0.3, 0).is_ok(), "irrelevant when off");
    }
}
