//! Command-line flags. Hyperparameters are not flags (they live at the top of `main.rs`), except
//! the few a user sweeps: the batch size, the progressive-resolution schedule and the evaluation
//! policy, each documented with the rule it applies.
use crate::error::{Error, Result};
use std::path::PathBuf;

pub const HELP: &str = "\
speedrun: train a small conv net on CIFAR-10 to 94% as fast as the GPU allows

usage: speedrun [flags]            (cargo run --release -- [flags])   train and time
       speedrun selftest [flags]   every GPU kernel and one training step against the CPU reference
       speedrun bench [flags]      per-kernel GPU timings at the recipe's shapes (--batch-size)

data
  --data-dir DIR      folder with data_batch_1..5.bin and test_batch.bin
                      (default: $CIFAR10_DIR, else data/cifar-10-batches-bin, downloaded there if absent)
  --test-file FILE    evaluate on this file of CIFAR-10 records instead of <data-dir>/test_batch.bin
                      (default: $CIFAR10_TEST), e.g. ../shared/cifar10/partial/test_first1000.bin
  --no-download       never download the dataset; fail if it is missing

device
  --cpu               train the plain-Rust CPU reference with its reduced configuration
                      (narrow net, subset of the data) instead of the GPU recipe
  --smoke             a tiny configuration (1 epoch on 1,000 images) to check the pipeline in seconds
  --threads N         CPU threads for --cpu (default: all; also $CIFAR_CPU_THREADS)
  --device D          the GPU to use (default 0)
  --no-graph          run every training step op by op instead of replaying it as a recorded CUDA
                      graph (slower: one launch per kernel; for timing comparisons and diagnosis)
  --gpus LIST         fan out: one process per listed device (e.g. 0,1,2,3), the --runs split between
                      them round-robin, statistics merged at the end; with --cpu the \"devices\" are
                      CPU processes (each gets --threads or all cores)

runs and statistics
  --seed S            seed of the first run (default 0); run i uses S + i. Same seed, same result:
                      bit-identical on the CPU path
  --runs N            train N runs; prints each, then mean ± std, min, max and the fraction >= 94%
  --json FILE         also write every run and the statistics as JSON
  --csv FILE          per-epoch curves (epoch, step, lr, train loss/acc, eval acc, times) as CSV,
                      and FILE with extension .svg: loss and accuracy against time

recipe knobs (derived values are printed at start)
  --batch-size B      rescale the recipe to batch B: Muon's rate and the weight decay by the linear
                      scaling rule (x B/B0), SGD rates kept (the loss is summed, so its gradient already
                      scales with B), BatchNorm's running-average momentum m -> m^(B/B0), step counts
                      from the unchanged epoch budget (README: \"Batch-size scaling\")
  --epochs E          train E epochs instead of the recipe's 8.4, E may be fractional (8.4: 210 steps at
                      25 per epoch, the last epoch cut short, as airbench's ceil(epochs x steps/epoch));
                      the learning-rate schedules stretch with them; the whitening bias trains its own
                      epochs, at most E
  --prog-frac F       progressive resolution: the first fraction F of the steps (0 <= F < 1) trains on
                      downscaled images, growing linearly in 4-px steps to 32 px (default 0: off)
  --prog-start S      starting resolution as a fraction of 32 px (default 0.75: 24 px)
  --prog-warmup W     after each resolution change, ramp the learning rates up over W steps (default 0)
  --set NAME=V[,...]  set recipe hyperparameters by name, after --batch-size's rescaling (repeatable;
                      the names: label_smoothing, sgd_momentum, bias_lr, head_lr, weight_decay,
                      muon_lr, muon_momentum, bn_momentum, ns_steps, ns_a, ns_b, ns_c (the Newton-Schulz
                      quintic's coefficients), max_shift, whiten_bias_epochs);
                      the derived line prints the values used. E.g. --set label_smoothing=0.1,muon_lr=0.2

evaluation
  --eval-every K      every K epochs, evaluate on a subset (single view, cheap); its time is reported
                      in its own column, never inside training time (default 0: off)
  --eval-subset N     images of the test file used by --eval-every (default 1000)
  --no-tta            final evaluation with one view instead of the recipe's 6-view TTA
  --tta-frac F        the TTA's other views only for the fraction F (0 < F <= 1) of the test images
                      least confident under the first (as hiverge's record); each run then also
                      prints the full TTA's accuracy of the same net, evaluated after the timer
                      (default 0.2; 1: every view for every image, as airbench94_muon)

  -h, --help          this text

environment
  SPEEDRUN_CONV           conv kernels: wmma, mma, mma128, img, wgmma, wgmma2, wgmmap, tma, tma4 (H100/H200) or mixed (per GEMM,
                          the fastest mma family at its shape) pins one; a comma list (e.g.
                          mma,mma128) is the set the warm-up's autotune chooses from (default:
                          every mma path the GPU has, and mixed)
  SPEEDRUN_EPILOGUE_SUMS  0: the mma convs' BatchNorm sums as separate reductions (default 1)
  SPEEDRUN_PDL            0: kernels launched one after another, without programmatic dependent
                          launch (default 1 on sm_90+ with a CUDA 12.3+ driver)
  SPEEDRUN_OVERLAP        0: a recorded step's weight gradients on the main stream instead of a
                          second one beside the input-gradient chain (default 1)
  SPEEDRUN_CHAIN_PRIORITY 0: with the overlap, the chain's kernels at the default priority instead
                          of the greatest (default 1)
  SPEEDRUN_MUON_SIDE      0: with the overlap, a recorded step's Muon on the main stream instead of
                          the second one beside the shallow layers' backward (default 1)
  SPEEDRUN_SELFTEST_TIMES 1: `selftest` prints each check's time
  SPEEDRUN_SELFTEST_BATCH N: `selftest` checks at batch N (a multiple of 8; default 64)
  SPEEDRUN_SELFTEST_ONLY  a,b: `selftest` runs only the checks whose name contains a or b (PARTIAL)
  SPEEDRUN_BENCH_ONLY     a,b: `bench` times only the lines whose name contains a or b (PARTIAL)
  at build time (cargo build): REQUIRE_CUDA_KERNELS=1 fails a build without the CUDA compiler;
  SPEEDRUN_WGMMA_NO_PROXY_FENCE=1 builds the wgmma convs without their proxy fence (timing only)

exit status: 0 success, 2 usage, 3 data, 4 GPU, 5 diverged, 6 other I/O";

/// What to do: train (the default), or check or time the GPU kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Train,
    Selftest,
    Bench,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Args {
    pub command: Command,
    pub cpu: bool,
    pub smoke: bool,
    pub data_dir: Option<PathBuf>,
    pub test_file: Option<PathBuf>,
    pub no_download: bool,
    pub seed: u64,
    pub runs: usize,
    pub threads: Option<usize>,
    pub gpus: Option<Vec<usize>>,
    pub json: Option<PathBuf>,
    pub csv: Option<PathBuf>,
    pub batch_size: Option<usize>,
    pub epochs: Option<f64>,
    pub prog_frac: f64,
    pub prog_start: f64,
    pub prog_warmup: usize,
    pub eval_every: usize,
    pub eval_subset: usize,
    pub no_tta: bool,
    pub tta_frac: Option<f64>,
    /// `--set`: (name, value) in the order given; the recipe checks the names.
    pub set: Vec<(String, f64)>,
    pub no_graph: bool,
    pub help: bool,
    /// Internal (fan-out child): the device this process uses.
    pub device: usize,
    /// Internal (fan-out child): run only these run indices (of 0..runs).
    pub only_runs: Option<Vec<usize>>,
    /// Internal (fan-out child): append one `RESULT` line per run to this file.
    pub results: Option<PathBuf>,
}

impl Default for Args {
    fn default() -> Args {
        Args {
            command: Command::Train,
            cpu: false,
            smoke: false,
            data_dir: None,
            test_file: None,
            no_download: false,
            seed: 0,
            runs: 1,
            threads: None,
            gpus: None,
            json: None,
            csv: None,
            batch_size: None,
            epochs: None,
            prog_frac: 0.0,
            prog_start: 0.75,
            prog_warmup: 0,
            eval_every: 0,
            eval_subset: 1000,
            no_tta: false,
            tta_frac: None,
            set: Vec::new(),
            no_graph: false,
            help: false,
            device: 0,
            only_runs: None,
            results: None,
        }
    }
}

fn number<T>(flag: &str, v: Option<String>, min: T) -> Result<T>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let v = v.ok_or_else(|| Error::Usage(format!("{flag} needs a value")))?;
    let n: T = v.parse().map_err(|_| Error::Usage(format!("{flag} expects a number, got {v:?}")))?;
    if n < min {
        return Err(Error::Usage(format!("{flag} must be at least {min}, got {n}")));
    }
    Ok(n)
}

/// A finite number above 0 (e.g. `--epochs 8.5`).
fn positive(flag: &str, v: Option<String>) -> Result<f64> {
    let x: f64 = number(flag, v, f64::NEG_INFINITY)?;
    if !(x > 0.0 && x.is_finite()) {
        return Err(Error::Usage(format!("{flag} must be a number above 0, got {x}")));
    }
    Ok(x)
}

/// A fraction in `[lo, hi)` (or `(lo, hi]` when `open_low`).
fn fraction(flag: &str, v: Option<String>, open_low: bool) -> Result<f64> {
    let x: f64 = number(flag, v, f64::NEG_INFINITY)?;
    let ok = if open_low { x > 0.0 && x <= 1.0 } else { (0.0..1.0).contains(&x) };
    if !ok || !x.is_finite() {
        let range = if open_low { "in (0, 1]" } else { "in [0, 1)" };
        return Err(Error::Usage(format!("{flag} must be {range}, got {x}")));
    }
    Ok(x)
}

/// A comma-separated list of whole numbers, e.g. `0,1,3`; no duplicates.
fn list(flag: &str, v: Option<String>) -> Result<Vec<usize>> {
    let v = v.ok_or_else(|| Error::Usage(format!("{flag} needs a value")))?;
    let mut out = Vec::new();
    for part in v.split(',') {
        let n: usize = part
            .trim()
            .parse()
            .map_err(|_| Error::Usage(format!("{flag} expects a comma-separated list like 0,1, got {v:?}")))?;
        if out.contains(&n) {
            return Err(Error::Usage(format!("{flag} lists {n} twice")));
        }
        out.push(n);
    }
    Ok(out)
}

/// `NAME=V[,NAME=V...]`: names of letters, digits and `_`; finite values.
fn assignments(flag: &str, v: Option<String>) -> Result<Vec<(String, f64)>> {
    let v = v.ok_or_else(|| Error::Usage(format!("{flag} needs NAME=VALUE[,NAME=VALUE...]")))?;
    v.split(',')
        .map(|part| {
            let bad = || Error::Usage(format!("{flag}: {part:?} is not NAME=VALUE with a finite number"));
            let (name, value) = part.split_once('=').ok_or_else(bad)?;
            let name_ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            match value.trim().parse::<f64>() {
                Ok(x) if name_ok && x.is_finite() => Ok((name.to_string(), x)),
                _ => Err(bad()),
            }
        })
        .collect()
}

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args> {
    let mut a = Args::default();
    let mut it = args.into_iter().peekable();
    match it.peek().map(String::as_str) {
        Some("selftest") => a.command = Command::Selftest,
        Some("bench") => a.command = Command::Bench,
        _ => {}
    }
    if a.command != Command::Train {
        it.next();
    }
    while let Some(flag) = it.next() {
        let path = |v: Option<String>| v.map(PathBuf::from).ok_or_else(|| Error::Usage(format!("{flag} needs a path")));
        match flag.as_str() {
            "--cpu" => a.cpu = true,
            "--smoke" => a.smoke = true,
            "--data-dir" => a.data_dir = Some(path(it.next())?),
            "--test-file" => a.test_file = Some(path(it.next())?),
            "--no-download" => a.no_download = true,
            "--seed" => a.seed = number(&flag, it.next(), 0)?,
            "--runs" => a.runs = number(&flag, it.next(), 1)?,
            "--threads" => a.threads = Some(number(&flag, it.next(), 1)?),
            "--gpus" => a.gpus = Some(list(&flag, it.next())?),
            "--json" => a.json = Some(path(it.next())?),
            "--csv" => a.csv = Some(path(it.next())?),
            "--batch-size" => a.batch_size = Some(number(&flag, it.next(), 1)?),
            "--epochs" => a.epochs = Some(positive(&flag, it.next())?),
            "--prog-frac" => a.prog_frac = fraction(&flag, it.next(), false)?,
            "--prog-start" => a.prog_start = fraction(&flag, it.next(), true)?,
            "--prog-warmup" => a.prog_warmup = number(&flag, it.next(), 0)?,
            "--eval-every" => a.eval_every = number(&flag, it.next(), 0)?,
            "--eval-subset" => a.eval_subset = number(&flag, it.next(), 1)?,
            "--no-tta" => a.no_tta = true,
            "--tta-frac" => a.tta_frac = Some(fraction(&flag, it.next(), true)?),
            "--set" => a.set.extend(assignments(&flag, it.next())?),
            "--no-graph" => a.no_graph = true,
            "--device" => a.device = number(&flag, it.next(), 0)?,
            "--only-runs" => a.only_runs = Some(list(&flag, it.next())?),
            "--results" => a.results = Some(path(it.next())?),
            "-h" | "--help" => a.help = true,
            other => return Err(Error::Usage(format!("unknown flag {other:?} (see --help)"))),
        }
    }
    if let Some(g) = &a.gpus {
        if g.is_empty() {
            return Err(Error::Usage("--gpus needs at least one device".into()));
        }
        if a.command != Command::Train {
            return Err(Error::Usage(
                "--gpus fans out training runs; run selftest or bench once per device with --device".into(),
            ));
        }
        if a.results.is_some() || a.only_runs.is_some() {
            return Err(Error::Usage("--gpus cannot be combined with the internal child flags".into()));
        }
    }
    if let Some(runs) = &a.only_runs {
        if let Some(&bad) = runs.iter().find(|&&r| r >= a.runs) {
            return Err(Error::Usage(format!("--only-runs names run {bad}, but --runs is {}", a.runs)));
        }
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Args> {
        parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn flags_parse() {
        let a = p("--cpu --data-dir /d --test-file t.bin --seed 7 --runs 3 --threads 2 --no-download").unwrap();
        assert!(a.cpu && a.no_download && !a.help);
        assert_eq!(a.data_dir, Some(PathBuf::from("/d")));
        assert_eq!(a.test_file, Some(PathBuf::from("t.bin")));
        assert_eq!((a.seed, a.runs, a.threads), (7, 3, Some(2)));
        let d = p("").unwrap();
        assert_eq!((d.runs, d.prog_frac, d.prog_start, d.eval_every, d.eval_subset), (1, 0.0, 0.75, 0, 1000));
        let a = p("--batch-size 500 --prog-frac 0.5 --prog-start 0.5 --prog-warmup 10 --eval-every 2 --eval-subset 300 --no-tta --no-graph --json r.json --csv c.csv --gpus 0,2,1 --smoke").unwrap();
        assert_eq!((a.batch_size, a.prog_frac, a.prog_start, a.prog_warmup), (Some(500), 0.5, 0.5, 10));
        assert_eq!((a.eval_every, a.eval_subset, a.no_tta, a.smoke, a.no_graph), (2, 300, true, true, true));
        assert_eq!((a.json, a.csv), (Some("r.json".into()), Some("c.csv".into())));
        assert_eq!(a.gpus, Some(vec![0, 2, 1]));
        assert_eq!(p("selftest --device 1").unwrap().command, Command::Selftest);
        assert_eq!(p("bench --batch-size 1000").unwrap().command, Command::Bench);
        assert_eq!(p("--cpu").unwrap().command, Command::Train);
        assert_eq!((p("--epochs 9").unwrap().epochs, d.epochs), (Some(9.0), None));
        assert_eq!(p("--epochs 8.4").unwrap().epochs, Some(8.4));
        let s = p("--set muon_lr=0.2,label_smoothing=0.1 --set ns_steps=5").unwrap().set;
        let want = [("muon_lr", 0.2), ("label_smoothing", 0.1), ("ns_steps", 5.0)];
        assert_eq!(s, want.map(|(n, v)| (n.to_string(), v)));
        assert!(d.set.is_empty());
        let c = p("--runs 4 --only-runs 1,3 --results r.txt --device 2").unwrap();
        assert_eq!((c.only_runs, c.results, c.device), (Some(vec![1, 3]), Some("r.txt".into()), 2));
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for (line, needle) in [
            ("--bogus", "unknown flag"),
            ("--runs", "needs a value"),
            ("--runs 0", "at least 1"),
            ("--seed -3", "expects a number"),
            ("--data-dir", "needs a path"),
            ("--batch-size 0", "at least 1"),
            ("--epochs 0", "above 0"),
            ("--epochs -1", "above 0"),
            ("--epochs inf", "above 0"),
            ("--epochs x", "expects a number"),
            ("--prog-frac 1", "in [0, 1)"),
            ("--prog-frac -0.1", "in [0, 1)"),
            ("--prog-start 0", "in (0, 1]"),
            ("--prog-start 1.5", "in (0, 1]"),
            ("--prog-start nan", "in (0, 1]"),
            ("--gpus 0,x", "comma-separated"),
            ("--gpus 1,1", "twice"),
            ("--eval-subset 0", "at least 1"),
            ("--runs 2 --only-runs 2", "--runs is 2"),
            ("--cpu selftest", "unknown flag \"selftest\""),
            ("bench --gpus 0,1", "once per device"),
            ("--set", "needs NAME=VALUE"),
            ("--set muon_lr", "\"muon_lr\" is not NAME=VALUE"),
            ("--set muon_lr=x", "\"muon_lr=x\" is not NAME=VALUE"),
            ("--set muon_lr=inf", "with a finite number"),
            ("--set =1", "\"=1\" is not"),
            ("--set a-b=1", "\"a-b=1\" is not"),
            ("--set muon_lr=0.2,", "\"\" is not"),
        ] {
            match p(line) {
                Err(Error::Usage(m)) => assert!(m.contains(needle), "{line}: {m}"),
                other => panic!("{line}: {other:?}"),
            }
        }
    }
}
