//! The binary end to end on the CPU path with the `--smoke` configuration (seconds per run):
//! the per-epoch table, the final line, `--runs` statistics, `--json`, `--csv` + SVG, progressive
//! resolution, the evaluation policy, and `--gpus` fan-out with CPU processes as fake devices,
//! which must reproduce the single-process runs bit for bit. Needs the real CIFAR-10 (skipped
//! with the reason when absent, unless CIFAR10_REQUIRED=1).
use cifar::testing::real_dataset;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn speedrun(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_speedrun")).args(args).output().expect("the binary starts")
}

/// The binary on the CPU with the smoke configuration on `dir`, plus `extra` (space-separated).
fn smoke(dir: &Path, extra: &str) -> Output {
    let mut args = vec!["--cpu", "--smoke", "--no-download", "--data-dir", dir.to_str().unwrap()];
    args.extend(extra.split_whitespace());
    speedrun(&args)
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("speedrun-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The fingerprints of the runs in a `--json` file, in order.
fn fingerprints(json: &Path) -> Vec<String> {
    let j = std::fs::read_to_string(json).unwrap();
    j.split("\"fingerprint\": \"").skip(1).map(|s| s[..16].to_string()).collect()
}

#[test]
fn smoke_runs_report_statistics_json_and_curves() {
    let Some(dir) = real_dataset("smoke_runs_report_statistics_json_and_curves") else { return };
    let out = scratch("smoke");
    let (json, csv) = (out.join("r.json"), out.join("curves.csv"));
    let o = smoke(
        &dir,
        &format!(
            "--runs 2 --seed 5 --eval-every 1 --eval-subset 100 --json {} --csv {}",
            json.display(),
            csv.display(),
        ),
    );
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("| epoch |  step |      lr | train loss | train acc | eval acc | train s | eval s |"),
        "{stdout}"
    );
    assert!(stdout.contains("derived: batch 100 | 10 steps/epoch x 1 epochs = 10 steps"), "{stdout}");
    assert!(stdout.contains("test: the first 500 of the 10000 images of"), "{stdout}");
    assert_eq!(stdout.matches("cpu-reference: test acc ").count(), 2);
    assert!(stdout.contains("summary over 2 runs") && stdout.contains("runs >= 94%: 0/2"), "{stdout}");
    let last = stdout.lines().last().unwrap();
    assert!(last.starts_with("did not reach 94% on average: mean test acc "), "a smoke run cannot reach 94%: {last}");

    let j = std::fs::read_to_string(&json).unwrap();
    assert_eq!(j.matches("\"seed\": ").count(), 2, "{j}");
    assert!(j.contains("\"seed\": 5,") && j.contains("\"seed\": 6,") && j.contains("\"runs\": 2,"), "{j}");
    let c = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = c.lines().collect();
    assert_eq!(lines.len(), 3, "header + 2 runs × 1 epoch: {c}");
    assert!(lines[1].starts_with("0,5,1,10,") && lines[2].starts_with("1,6,1,10,"), "{c}");
    assert_ne!(lines[1].split(',').nth(7), Some(""), "the periodic evaluation is in the CSV");
    let svg = std::fs::read_to_string(out.join("curves.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 4);
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // The same seeds fanned out over two CPU "devices": the same runs, bit for bit.
    let fan = out.join("fan.json");
    let o = smoke(
        &dir,
        &format!("--runs 2 --seed 5 --eval-every 1 --eval-subset 100 --threads 1 --gpus 0,1 --json {}", fan.display(),),
    );
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("[fan-out] device 0: runs [0]") && stdout.contains("[fan-out] device 1: runs [1]"),
        "{stdout}"
    );
    assert!(stdout.contains("[device 1] run 2 of 2 (seed 6)"), "{stdout}");
    assert!(stdout.contains("summary over 2 runs"), "{stdout}");
    assert_eq!(fingerprints(&fan), fingerprints(&json), "fan-out must reproduce the single-process runs");
    assert_eq!(fingerprints(&json).len(), 2);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn progressive_resolution_and_batch_size_from_the_command_line() {
    let Some(dir) = real_dataset("progressive_resolution_and_batch_size_from_the_command_line") else { return };
    let o = smoke(&dir, "--batch-size 50 --prog-frac 0.5 --prog-start 0.5 --prog-warmup 2 --no-tta --no-graph");
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("steps: op by op (--no-graph)"), "{stdout}");
    assert!(stdout.contains("derived: batch 50 | 20 steps/epoch x 1 epochs = 20 steps | Muon lr 0.00600"), "{stdout}");
    assert!(stdout.contains("progressive [(0, 16), (3, 20), (5, 24), (8, 28), (10, 32)]"), "{stdout}");
    assert!(stdout.contains("TTA level 0"), "{stdout}");
    assert!(stdout.lines().last().unwrap().starts_with("did not reach 94%: test acc "), "{stdout}");
}

#[test]
fn bad_input_exits_with_a_message_and_no_panic() {
    let missing = std::env::temp_dir().join("speedrun-no-such-dir");
    for (args, code, needle) in [
        (vec!["--bogus"], 2, "unknown flag"),
        (vec!["--cpu", "--prog-frac", "0.5", "--prog-start", "0.2"], 2, "at least 12 px"),
        (vec!["--cpu", "--batch-size", "20000"], 2, "exceeds the 10000 training images"),
        (vec!["--cpu", "--set", "muon_lr=0.1,nope=2"], 2, "no hyperparameter \"nope\""),
        (vec!["--cpu", "--data-dir", missing.to_str().unwrap()], 3, "missing from"),
        (vec!["--cpu", "--smoke", "--gpus", "0,1", "--data-dir", missing.to_str().unwrap()], 3, "missing from"),
        (vec!["--gpus", "0,4096", "--data-dir", missing.to_str().unwrap()], 4, "--cpu"),
    ] {
        let o = speedrun(&args);
        let (_, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
