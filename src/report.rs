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

pub const EPOCH_HEADER: &str = "\
| epoch |  step |      lr | train loss | train acc | eval acc | train s | eval s |
|------:|------:|--------:|-----------:|----------:|---------:|--------:|-------:|";

/// One row of the per-epoch table (and of the CSV curves).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Epoch {
    pub epoch: usize,
    /// Optimizer steps done so far.
    pub step: usize,
    /// Muon's learning rate at the last step of the epoch (the other groups follow the same decay).
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    /// Accuracy of the periodic evaluation (`--eval-every`) after this epoch, if one ran.
    pub eval_acc: Option<f64>,
    /// Timed seconds so far: whitening init and training (the final evaluation comes later).
    pub seconds: f64,
    /// Seconds spent in periodic evaluations so far: never part of `seconds`.
    pub eval_seconds: f64,
    /// Wall-clock seconds since the run started (everything, including the printing).
    pub wall: f64,
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let eval = self.eval_acc.map_or("-".to_string(), |a| format!("{:.2}%", 100.0 * a));
        write!(
            f,
            "| {:>5} | {:>5} | {:>7.4} | {:>10.4} | {:>8.2}% | {eval:>8} | {:>7.2} | {:>6.2} |",
            self.epoch,
            self.step,
            self.lr,
            self.train_loss,
            100.0 * self.train_acc,
            self.seconds,
            self.eval_seconds
        )
    }
}

/// The outcome of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub seed: u64,
    pub correct: usize,
    pub tested: usize,
    /// Timed seconds: whitening init, training, final evaluation.
    pub seconds: f64,
    /// Of `seconds`: the whitening init (patch covariance, eigenvectors) and the final
    /// evaluation (the TTA views); the rest is training.
    pub init_seconds: f64,
    pub final_eval_seconds: f64,
    /// Seconds of periodic evaluation (`--eval-every`), excluded from `seconds`.
    pub eval_seconds: f64,
    /// Hash of the trained parameters.
    pub fingerprint: u64,
    /// With the TTA's other views for the least confident images only (`--tta-frac`): the same
    /// net's correct count with every view for every image, evaluated after the timer.
    pub full_tta_correct: Option<usize>,
}

/// The accuracy a run must reach to report a time-to-94%.
pub const TARGET: f64 = 0.94;

impl Run {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.tested as f64
    }

    /// One line per run.
    pub fn line(&self, what: &str, test_desc: &str) -> String {
        format!(
            "{what}: test acc {:.2}% ({}/{}) on {test_desc}; {:.3} s timed (whitening init {:.3} s, final evaluation \
             {:.3} s; +{:.3} s periodic eval, untimed); seed {}; params {:016x}",
            100.0 * self.accuracy(),
            self.correct,
            self.tested,
            self.seconds,
            self.init_seconds,
            self.final_eval_seconds,
            self.eval_seconds,
            self.seed,
            self.fingerprint
        ) + &self.full_tta_correct.map_or(String::new(), |c| {
            format!("; every view of every image (untimed): {:.2}% ({c})", 100.0 * c as f64 / self.tested as f64)
        })
    }

    /// The greppable final line: a time-to-94% only when the run reached 94%, else it says so.
    pub fn verdict(&self, device: &str) -> String {
        let acc = format!("test acc {:.2}% ({} images)", 100.0 * self.accuracy(), self.tested);
        let tail = format!("{device}  commit {}", commit());
        if self.accuracy() >= TARGET {
            format!("time-to-94%: {:.3} s  {acc}  {tail}", self.seconds)
        } else {
            format!("did not reach 94%: {acc} after {:.3} s  {tail}", self.seconds)
        }
    }

    /// The line a fan-out child writes per run, parsed back by [`Run::parse`].
    pub fn record(&self) -> String {
        format!(
            "RUN seed={} correct={} tested={} seconds={:e} init_seconds={:e} final_eval_seconds={:e} eval_seconds={:e} \
             fingerprint={:016x} full_tta_correct={}",
            self.seed,
            self.correct,
            self.tested,
            self.seconds,
            self.init_seconds,
            self.final_eval_seconds,
            self.eval_seconds,
            self.fingerprint,
            self.full_tta_correct.map_or("-".into(), |c| c.to_string())
        )
    }

    pub fn parse(line: &str) -> Option<Run> {
        let mut it = line.strip_prefix("RUN ")?.split(' ');
        let mut field = |name: &str| it.next()?.strip_prefix(name)?.strip_prefix('=').map(str::to_string);
        let run = Run {
            seed: field("seed")?.parse().ok()?,
            correct: field("correct")?.parse().ok()?,
            tested: field("tested")?.parse().ok()?,
            seconds: field("seconds")?.parse().ok()?,
            init_seconds: field("init_seconds")?.parse().ok()?,
            final_eval_seconds: field("final_eval_seconds")?.parse().ok()?,
            eval_seconds: field("eval_seconds")?.parse().ok()?,
            fingerprint: u64::from_str_radix(&field("fingerprint")?, 16).ok()?,
            full_tta_correct: match field("full_tta_correct")?.as_str() {
                "-" => None,
                c => Some(c.parse().ok()?),
            },
        };
        let full_ok = run.full_tta_correct.is_none_or(|c| c <= run.tested);
        (it.next().is_none() && run.tested > 0 && run.correct <= run.tested && full_ok).then_some(run)
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

/// Mean, sample std, min and max.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(xs: &[f64]) -> Stats {
        Stats {
            mean: mean(xs),
            std: std_dev(xs),
            min: xs.iter().copied().fold(f64::INFINITY, f64::min),
            max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

/// Statistics over several runs: accuracy in percent, timed seconds, runs at or above 94%.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub runs: usize,
    pub accuracy: Stats,
    pub seconds: Stats,
    pub hits: usize,
}

impl Summary {
    pub fn of(runs: &[Run]) -> Summary {
        let acc: Vec<f64> = runs.iter().map(|r| 100.0 * r.accuracy()).collect();
        let sec: Vec<f64> = runs.iter().map(|r| r.seconds).collect();
        Summary {
            runs: runs.len(),
            accuracy: Stats::of(&acc),
            seconds: Stats::of(&sec),
            hits: runs.iter().filter(|r| r.accuracy() >= TARGET).count(),
        }
    }
}

impl Summary {
    /// The greppable final line of several runs: the mean time-to-94% when the mean accuracy
    /// reached 94%, else a plain statement that it did not.
    pub fn verdict(&self, device: &str) -> String {
        let acc =
            format!("mean test acc {:.2}% over {} runs ({} reached 94%)", self.accuracy.mean, self.runs, self.hits);
        let tail = format!("{device}  commit {}", commit());
        if self.accuracy.mean >= 100.0 * TARGET {
            format!("time-to-94%: {:.3} s (mean)  {acc}  {tail}", self.seconds.mean)
        } else {
            format!("did not reach 94% on average: {acc}, mean {:.3} s  {tail}", self.seconds.mean)
        }
    }
}

pub fn summary(runs: &[Run], test_desc: &str) -> String {
    let s = Summary::of(runs);
    let (a, t) = (s.accuracy, s.seconds);
    format!(
        "summary over {} runs on {test_desc}:\n  accuracy %: mean {:.3} ± {:.3} (std), min {:.2}, max {:.2}; runs >= 94%: {}/{} ({:.0}%)\n  time s:     mean {:.3} ± {:.3} (std), min {:.3}, max {:.3}",
        s.runs,
        a.mean,
        a.std,
        a.min,
        a.max,
        s.hits,
        s.runs,
        100.0 * s.hits as f64 / s.runs as f64,
        t.mean,
        t.std,
        t.min,
        t.max
    ) + &format!(
        " (of it: whitening init {:.4}, final evaluation {:.4}, training {:.3}, means)",
        mean(&runs.iter().map(|r| r.init_seconds).collect::<Vec<_>>()),
        mean(&runs.iter().map(|r| r.final_eval_seconds).collect::<Vec<_>>()),
        mean(&runs.iter().map(|r| r.seconds - r.init_seconds - r.final_eval_seconds).collect::<Vec<_>>())
    ) + &paired_tta(runs)
}

/// With `--tta-frac`: the full TTA's accuracy of the same nets and the paired difference (a
/// line of its own), when every run has it; else nothing.
fn paired_tta(runs: &[Run]) -> String {
    let Some(full) = runs
        .iter()
        .map(|r| r.full_tta_correct.map(|c| 100.0 * c as f64 / r.tested as f64))
        .collect::<Option<Vec<f64>>>()
    else {
        return String::new();
    };
    let diff: Vec<f64> = runs.iter().zip(&full).map(|(r, f)| 100.0 * r.accuracy() - f).collect();
    let (f, d) = (Stats::of(&full), Stats::of(&diff));
    format!(
        "\n  every view of every image (same nets, untimed): accuracy % mean {:.3} ± {:.3}; timed minus it: mean {:+.3} ± {:.3} (std), min {:+.2}, max {:+.2}",
        f.mean, f.std, d.mean, d.std, d.min, d.max
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
            .map(|&(correct, seconds)| Run {
                seed: 0,
                correct,
                tested: 10000,
                seconds,
                init_seconds: 0.25,
                final_eval_seconds: 0.5,
                eval_seconds: 0.0,
                fingerprint: 0,
                full_tta_correct: None,
            })
            .collect();
        let s = summary(&runs, "x");
        assert!(
            s.contains("mean 94.000 ± 0.141")
                && s.contains("runs >= 94%: 1/2 (50%)")
                && s.contains("time s:     mean 2.500")
                && s.contains("(of it: whitening init 0.2500, final evaluation 0.5000, training 1.750, means)"),
            "{s}"
        );
        assert!(!s.contains("every view"), "no paired line without --tta-frac: {s}");
        // --tta-frac: the paired full-TTA line, only when every run has its figure
        let mut paired: Vec<Run> =
            runs.iter().map(|r| Run { full_tta_correct: Some(r.correct + 5), ..r.clone() }).collect();
        paired[1].full_tta_correct = Some(9400);
        let s = summary(&paired, "x");
        assert!(
            s.ends_with("\n  every view of every image (same nets, untimed): accuracy % mean 94.075 ± 0.106; timed minus it: mean -0.075 ± 0.035 (std), min -0.10, max -0.05"),
            "{s}"
        );
        paired[0].full_tta_correct = None;
        assert!(!summary(&paired, "x").contains("every view"));
    }

    #[test]
    fn fnv1a_known_values() {
        assert_eq!(fnv1a(*b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(*b"a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn epoch_row_and_run_line() {
        let mut e = Epoch {
            epoch: 3,
            step: 75,
            lr: 0.15,
            train_loss: 1.23456,
            train_acc: 0.5,
            eval_acc: None,
            seconds: 12.0,
            eval_seconds: 0.0,
            wall: 13.0,
        };
        assert_eq!(e.to_string(), "|     3 |    75 |  0.1500 |     1.2346 |    50.00% |        - |   12.00 |   0.00 |");
        e.eval_acc = Some(0.8125);
        e.eval_seconds = 1.5;
        assert_eq!(e.to_string(), "|     3 |    75 |  0.1500 |     1.2346 |    50.00% |   81.25% |   12.00 |   1.50 |");
        assert_eq!(EPOCH_HEADER.lines().next().unwrap().len(), e.to_string().len(), "header and rows align");
        let r = Run {
            seed: 4,
            correct: 1234,
            tested: 2000,
            seconds: 9.5,
            init_seconds: 0.0125,
            final_eval_seconds: 0.5,
            eval_seconds: 0.25,
            fingerprint: 255,
            full_tta_correct: None,
        };
        assert_eq!(
            r.line("cpu", "all 2000 images of t.bin"),
            "cpu: test acc 61.70% (1234/2000) on all 2000 images of t.bin; 9.500 s timed (whitening init 0.013 s, \
             final evaluation 0.500 s; +0.250 s periodic eval, untimed); seed 4; params 00000000000000ff"
        );
    }

    #[test]
    fn verdict_names_a_time_only_at_94_percent() {
        let mut r = Run {
            seed: 0,
            correct: 9407,
            tested: 10000,
            seconds: 2.4137,
            init_seconds: 0.001,
            final_eval_seconds: 0.03,
            eval_seconds: 0.0,
            fingerprint: 1,
            full_tta_correct: None,
        };
        let v = r.verdict("GPU: NVIDIA H100 80GB HBM3 sm_90");
        assert!(
            v.starts_with(
                "time-to-94%: 2.414 s  test acc 94.07% (10000 images)  GPU: NVIDIA H100 80GB HBM3 sm_90  commit "
            ),
            "{v}"
        );
        r.correct = 9399;
        let v = r.verdict("cpu");
        assert!(v.starts_with("did not reach 94%: test acc 93.99% (10000 images) after 2.414 s  cpu  commit "), "{v}");
        assert!(!v.contains("time-to-94%"));
        let runs = [Run { correct: 9420, ..r.clone() }, Run { correct: 9390, seconds: 3.0, ..r.clone() }];
        let v = Summary::of(&runs).verdict("gpu");
        assert!(
            v.starts_with("time-to-94%: 2.707 s (mean)  mean test acc 94.05% over 2 runs (1 reached 94%)  gpu"),
            "{v}"
        );
        let v = Summary::of(&runs[1..]).verdict("gpu");
        assert!(
            v.starts_with(
                "did not reach 94% on average: mean test acc 93.90% over 1 runs (0 reached 94%), mean 3.000 s"
            ),
            "{v}"
        );
    }

    #[test]
    fn run_records_round_trip_and_reject_garbage() {
        let r = Run {
            seed: 17,
            correct: 9401,
            tested: 10000,
            seconds: 2.0 / 3.0,
            init_seconds: 1.0 / 7.0,
            final_eval_seconds: 0.0625,
            eval_seconds: 0.125,
            fingerprint: u64::MAX - 5,
            full_tta_correct: None,
        };
        assert_eq!(Run::parse(&r.record()), Some(r.clone()), "{}", r.record());
        let with = Run { full_tta_correct: Some(9412), ..r.clone() };
        assert!(with.record().ends_with(" full_tta_correct=9412"), "{}", with.record());
        assert_eq!(Run::parse(&with.record()), Some(with.clone()), "{}", with.record());
        let full = |c: &str| {
            format!("RUN seed=1 correct=1 tested=2 seconds=1 init_seconds=0 final_eval_seconds=0 eval_seconds=0 fingerprint=0 full_tta_correct={c}")
        };
        assert_eq!(Run::parse(&full("-")).map(|r| r.full_tta_correct), Some(None));
        assert_eq!(Run::parse(&full("2")).map(|r| r.full_tta_correct), Some(Some(2)));
        for bad in [
            "",
            "RUN",
            "RUN seed=1",
            "run seed=1 correct=1 tested=2 seconds=1 init_seconds=0 final_eval_seconds=0 eval_seconds=0 fingerprint=0",
            "RUN seed=1 correct=3 tested=2 seconds=1 init_seconds=0 final_eval_seconds=0 eval_seconds=0 fingerprint=0",
            "RUN seed=1 correct=1 tested=2 seconds=1 init_seconds=0 final_eval_seconds=0 eval_seconds=0 fingerprint=0 x=1",
            "RUN seed=1 correct=1 tested=2 seconds=1 eval_seconds=0 fingerprint=0",
            full("3").as_str(),
            full("x").as_str(),
            full("").as_str(),
        ] {
            assert_eq!(Run::parse(bad), None, "{bad:?}");
        }
    }
}
