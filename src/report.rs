//! What a run prints: the header naming build and device, the per-epoch table, one greppable
//! result line per run, and the statistics over several runs.
use std::fmt;

/// The commit this binary was built from (set by build.rs; "unknown" outside a git checkout).
pub fn commit() -> String {
    let c = option_env!("GIT_COMMIT").unwrap_or("unknown");
    if option_env!("GIT_DIRTY") == Some("1") {
        format!("{c}-dirty")
    } else {
        c.to_string()
    }
}

pub fn header(device: &str) -> String {
    format!("speedrun {} (commit {}) on {device}", env!("CARGO_PKG_VERSION"), commit())
}

/// "all 10000 images of F" or "the first 2000 of the 10000 images of F".
pub fn describe_test(file: &str, used: usize, available: usize) -> String {
    if used == available {
        format!("all {used} images of {file}")
    } else {
        format!("the first {used} of the {available} images of {file}")
    }
}

pub const EPOCH_HEADER: &str =
    "| epoch | train loss | train acc | time (s) |\n|------:|-----------:|----------:|---------:|";

/// One row of the per-epoch table. `seconds` is timed time so far.
#[derive(Clone, Copy, Debug)]
pub struct Epoch {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub seconds: f64,
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "| {:>5} | {:>10.4} | {:>8.2}% | {:>8.2} |",
            self.epoch,
            self.train_loss,
            100.0 * self.train_acc,
            self.seconds
        )
    }
}

/// The outcome of one run.
#[derive(Clone, Debug)]
pub struct Run {
    pub seed: u64,
    pub correct: usize,
    pub tested: usize,
    /// Timed seconds: whitening init, training, final evaluation.
    pub seconds: f64,
    /// Hash of the trained parameters.
    pub fingerprint: u64,
}

impl Run {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.tested as f64
    }
    pub fn line(&self, what: &str, test_desc: &str) -> String {
        format!(
            "{what}: test acc {:.2}% ({}/{}) on {test_desc}; {:.2} s timed; seed {}; params {:016x}",
            100.0 * self.accuracy(),
            self.correct,
            self.tested,
            self.seconds,
            self.seed,
            self.fingerprint
        )
    }
}

pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Sample standard deviation (n − 1); 0 for fewer than two values.
pub fn std_dev(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = mean(xs);
    (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
}

pub fn summary(runs: &[Run], test_desc: &str) -> String {
    let acc: Vec<f64> = runs.iter().map(|r| 100.0 * r.accuracy()).collect();
    let sec: Vec<f64> = runs.iter().map(|r| r.seconds).collect();
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = |v: &[f64]| v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let hit = acc.iter().filter(|&&a| a >= 94.0).count();
    format!(
        "summary over {} runs on {test_desc}:\n  accuracy %: mean {:.3} std {:.3} min {:.2} max {:.2}; runs >= 94%: {hit}/{}\n  time s:     mean {:.3} std {:.3} min {:.3} max {:.3}",
        runs.len(),
        mean(&acc),
        std_dev(&acc),
        min(&acc),
        max(&acc),
        runs.len(),
        mean(&sec),
        std_dev(&sec),
        min(&sec),
        max(&sec)
    )
}

/// 64-bit FNV-1a.
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics() {
        assert_eq!(mean(&[1.0, 2.0, 6.0]), 3.0);
        assert!((std_dev(&[1.0, 2.0, 6.0]) - 7f64.sqrt()).abs() < 1e-12);
        assert_eq!(std_dev(&[5.0]), 0.0);
        let runs: Vec<Run> = [(9410, 2.0), (9390, 3.0)]
            .iter()
            .map(|&(correct, seconds)| Run { seed: 0, correct, tested: 10000, seconds, fingerprint: 0 })
            .collect();
        let s = summary(&runs, "x");
        assert!(
            s.contains("mean 94.000") && s.contains("runs >= 94%: 1/2") && s.contains("time s:     mean 2.500"),
            "{s}"
        );
    }

    #[test]
    fn fnv1a_known_values() {
        assert_eq!(fnv1a(*b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(*b"a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn epoch_row_and_run_line() {
        let e = Epoch { epoch: 3, train_loss: 1.23456, train_acc: 0.5, seconds: 12.0 };
        assert_eq!(e.to_string(), "|     3 |     1.2346 |    50.00% |    12.00 |");
        let r = Run { seed: 4, correct: 1234, tested: 2000, seconds: 9.5, fingerprint: 255 };
        assert_eq!(
            r.line("cpu", "all 2000 images of t.bin"),
            "cpu: test acc 61.70% (1234/2000) on all 2000 images of t.bin; 9.50 s timed; seed 4; params 00000000000000ff"
        );
    }
}
