//! Command-line flags. Hyperparameters are not flags: they live at the top of `main.rs`.
use crate::error::{Error, Result};
use std::path::PathBuf;

pub const HELP: &str = "\
speedrun: train a small conv net on CIFAR-10 to 94% as fast as the GPU allows

usage: speedrun [flags]            (cargo run --release -- [flags])

  --cpu               train the plain-Rust CPU reference with its reduced configuration
                      (narrow net, subset of the data) instead of the GPU recipe
  --data-dir DIR      folder with data_batch_1..5.bin and test_batch.bin
                      (default: $CIFAR10_DIR, else data/cifar-10-batches-bin; downloaded there if absent)
  --test-file FILE    evaluate on this file of CIFAR-10 records instead of <data-dir>/test_batch.bin
                      (default: $CIFAR10_TEST), e.g. ../shared/cifar10/partial/test_first1000.bin
  --no-download       never download the dataset; fail if it is missing
  --seed S            seed of the first run (default 0); run i uses S + i
  --runs N            train N runs and print their statistics (default 1)
  --threads N         CPU threads for --cpu (default: all; also $CIFAR_CPU_THREADS)
  -h, --help          this text

exit status: 0 success, 2 usage, 3 data, 4 GPU, 5 diverged, 6 other I/O";

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Args {
    pub cpu: bool,
    pub data_dir: Option<PathBuf>,
    pub test_file: Option<PathBuf>,
    pub no_download: bool,
    pub seed: u64,
    pub runs: usize,
    pub threads: Option<usize>,
    pub help: bool,
}

fn number<T>(flag: &str, v: Option<String>, min: T) -> Result<T>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let v = v.ok_or_else(|| Error::Usage(format!("{flag} needs a value")))?;
    let n: T = v.parse().map_err(|_| Error::Usage(format!("{flag} expects a whole number, got {v:?}")))?;
    if n < min {
        return Err(Error::Usage(format!("{flag} must be at least {min}, got {n}")));
    }
    Ok(n)
}

pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Args> {
    let mut a = Args { runs: 1, ..Args::default() };
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let path = |v: Option<String>| v.map(PathBuf::from).ok_or_else(|| Error::Usage(format!("{flag} needs a path")));
        match flag.as_str() {
            "--cpu" => a.cpu = true,
            "--data-dir" => a.data_dir = Some(path(it.next())?),
            "--test-file" => a.test_file = Some(path(it.next())?),
            "--no-download" => a.no_download = true,
            "--seed" => a.seed = number(&flag, it.next(), 0)?,
            "--runs" => a.runs = number(&flag, it.next(), 1)?,
            "--threads" => a.threads = Some(number(&flag, it.next(), 1)?),
            "-h" | "--help" => a.help = true,
            other => return Err(Error::Usage(format!("unknown flag {other:?} (see --help)"))),
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
        assert_eq!(p("").unwrap().runs, 1);
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for (line, needle) in [
            ("--bogus", "unknown flag"),
            ("--runs", "needs a value"),
            ("--runs 0", "at least 1"),
            ("--seed -3", "whole number"),
            ("--data-dir", "needs a path"),
        ] {
            match p(line) {
                Err(Error::Usage(m)) => assert!(m.contains(needle), "{line}: {m}"),
                other => panic!("{line}: {other:?}"),
            }
        }
    }
}
