//! `--gpus 0,1,...`: one process per device, the runs dealt out round-robin, the statistics
//! merged. Each child is this same binary with `--device D --only-runs I,J --results FILE`
//! (and its own `--csv` file); its output is streamed with a `[device D]` prefix. A child that
//! fails makes the whole command fail with its message, after the others finish.
use crate::error::{Error, Result};
use crate::report::Run;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Flags the parent handles itself, with whether they take a value.
const PARENT_ONLY: [(&str, bool); 3] = [("--gpus", true), ("--json", true), ("--csv", true)];

/// Run indices (0..runs) for each of `devices` devices: round-robin.
pub fn deal(runs: usize, devices: usize) -> Vec<Vec<usize>> {
    (0..devices).map(|d| (d..runs).step_by(devices).collect()).collect()
}

/// The child's arguments: the parent's minus `--gpus/--json/--csv`, plus its share.
pub fn child_args(parent: &[String], device: usize, runs: &[usize], results: &Path, csv: Option<&Path>) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = parent.iter();
    while let Some(a) = it.next() {
        match PARENT_ONLY.iter().find(|(f, _)| f == a) {
            Some((_, true)) => {
                it.next();
            }
            Some((_, false)) => {}
            None => out.push(a.clone()),
        }
    }
    let list = runs.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(",");
    out.extend(["--device".into(), device.to_string(), "--only-runs".into(), list]);
    out.extend(["--results".into(), results.display().to_string()]);
    if let Some(c) = csv {
        out.extend(["--csv".into(), c.display().to_string()]);
    }
    out
}

/// `curves.csv` → `curves.device1.csv`.
pub fn child_csv(csv: &Path, device: usize) -> PathBuf {
    let stem = csv.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    csv.with_file_name(format!("{stem}.device{device}.csv"))
}

/// Runs the children of `exe` and returns every run, ordered by seed.
pub fn run(exe: &Path, parent_args: &[String], devices: &[usize], runs: usize, csv: Option<&Path>) -> Result<Vec<Run>> {
    let shares = deal(runs, devices.len());
    let scratch = std::env::temp_dir().join(format!("speedrun-fanout-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| Error::Io(format!("cannot create {}: {e}", scratch.display())))?;
    let result = run_in(exe, parent_args, devices, &shares, csv, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn run_in(
    exe: &Path,
    parent_args: &[String],
    devices: &[usize],
    shares: &[Vec<usize>],
    csv: Option<&Path>,
    scratch: &Path,
) -> Result<Vec<Run>> {
    let mut children = Vec::new();
    for (&d, share) in devices.iter().zip(shares).filter(|(_, s)| !s.is_empty()) {
        let results = scratch.join(format!("device{d}.runs"));
        let args = child_args(parent_args, d, share, &results, csv.map(|c| child_csv(c, d)).as_deref());
        println!("[fan-out] device {d}: runs {share:?}");
        let mut child = Command::new(exe)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Io(format!("cannot start {} for device {d}: {e}", exe.display())))?;
        let out = child.stdout.take().map(|s| relay(s, d, false));
        let err = child.stderr.take().map(|s| relay(s, d, true));
        children.push((d, child, results, out, err));
    }
    let mut runs = Vec::new();
    let mut failures = Vec::new();
    let mut first_code = None;
    for (d, mut child, results, out, err) in children {
        let status = child.wait().map_err(|e| Error::Io(format!("waiting for device {d}'s process: {e}")))?;
        let _ = out.map(|t| t.join());
        let last_error = err.and_then(|t| t.join().ok()).flatten();
        if !status.success() {
            let why = last_error.unwrap_or_else(|| format!("exit status {status}"));
            failures.push(format!("device {d}: {why}"));
            first_code = first_code.or(status.code());
            continue;
        }
        let text = std::fs::read_to_string(&results).map_err(|e| {
            Error::Io(format!("device {d} finished but its results {} are unreadable: {e}", results.display()))
        })?;
        for line in text.lines() {
            runs.push(
                Run::parse(line)
                    .ok_or_else(|| Error::Io(format!("device {d} wrote a malformed result line {line:?}")))?,
            );
        }
    }
    if !failures.is_empty() {
        // The command fails the way its first failing child did (same exit status).
        let m = format!("fan-out failed: {}", failures.join("; "));
        return Err(match first_code {
            Some(2) => Error::Usage(m),
            Some(3) => Error::Data(m),
            Some(4) => Error::Gpu(m),
            Some(5) => Error::Diverged(m),
            _ => Error::Io(m),
        });
    }
    runs.sort_by_key(|r| r.seed);
    Ok(runs)
}

/// Prints a child's lines with a device prefix; for stderr, returns its last `error:` message.
fn relay(
    stream: impl std::io::Read + Send + 'static,
    device: usize,
    is_err: bool,
) -> std::thread::JoinHandle<Option<String>> {
    std::thread::spawn(move || {
        let mut last = None;
        for line in BufReader::new(stream).lines().map_while(|l| l.ok()) {
            if is_err {
                eprintln!("[device {device}] {line}");
                if let Some(m) = line.strip_prefix("error: ") {
                    last = Some(m.to_string());
                }
            } else {
                println!("[device {device}] {line}");
            }
        }
        last
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_dealt_round_robin() {
        assert_eq!(deal(5, 2), vec![vec![0, 2, 4], vec![1, 3]]);
        assert_eq!(deal(2, 3), vec![vec![0], vec![1], vec![]]);
        let all: usize = deal(25, 8).iter().map(Vec::len).sum();
        assert_eq!(all, 25);
    }

    #[test]
    fn child_arguments_drop_parent_flags_and_add_the_share() {
        let parent: Vec<String> = "--cpu --gpus 0,1 --runs 4 --json r.json --seed 3 --csv c.csv --smoke"
            .split(' ')
            .map(String::from)
            .collect();
        let a = child_args(&parent, 1, &[1, 3], Path::new("/t/d1.runs"), Some(&child_csv(Path::new("out/c.csv"), 1)));
        assert_eq!(
            a.join(" "),
            "--cpu --runs 4 --seed 3 --smoke --device 1 --only-runs 1,3 --results /t/d1.runs --csv out/c.device1.csv"
        );
    }
}
