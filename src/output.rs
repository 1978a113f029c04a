//! Files a run writes: per-epoch curves as CSV and SVG, and the runs with their statistics as
//! JSON. Every file is written to a temporary name beside it and renamed into place, so an
//! interrupted or failed write never leaves a half-written file.
use crate::error::{Error, Result};
use crate::report::{Epoch, Run, Stats, Summary};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically (temp file in the same folder, then rename).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().ok_or_else(|| Error::Usage(format!("{} is not a file name", path.display())))?;
    let tmp = path.with_file_name(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let io = |e: std::io::Error, what: &str| Error::Io(format!("cannot {what} {}: {e}", path.display()));
    if let Err(e) = std::fs::write(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e, "write"));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e, "rename into place")
    })
}

/// One curve point: which run (index, seed) and its epoch row.
pub type Point = (usize, u64, Epoch);

pub const CSV_HEADER: &str = "run,seed,epoch,step,lr,train_loss,train_acc,eval_acc,train_s,eval_s,wall_s";

/// The CSV: one line per (run, epoch); `eval_acc` is empty where no evaluation ran.
pub fn csv(points: &[Point]) -> String {
    let mut s = format!("{CSV_HEADER}\n");
    for (run, seed, e) in points {
        let eval = e.eval_acc.map_or(String::new(), |a| format!("{a:.6}"));
        let _ = writeln!(
            s,
            "{run},{seed},{},{},{:.6e},{:.6},{:.6},{eval},{:.4},{:.4},{:.4}",
            e.epoch, e.step, e.lr, e.train_loss, e.train_acc, e.seconds, e.eval_seconds, e.wall
        );
    }
    s
}

/// The SVG path of `csv` with the extension replaced: `curves.csv` → `curves.svg`.
pub fn svg_path(csv: &Path) -> PathBuf {
    csv.with_extension("svg")
}

/// Two panels side by side, against timed training seconds: train loss (left) and accuracy
/// (right: train as solid lines, periodic eval as dots). One colour per run.
pub fn svg(points: &[Point], title: &str) -> String {
    const W: f64 = 420.0;
    const H: f64 = 260.0;
    const M: f64 = 48.0; // margin for the axes' labels
    const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"];
    let tmax = points.iter().map(|p| p.2.seconds).fold(0.0, f64::max).max(1e-9);
    let lmax = points.iter().map(|p| p.2.train_loss).filter(|l| l.is_finite()).fold(0.0, f64::max).max(1e-9);
    let runs: Vec<usize> = {
        let mut r: Vec<usize> = points.iter().map(|p| p.0).collect();
        r.dedup();
        r
    };
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11">"#,
        2.0 * (W + M) + M,
        H + 2.0 * M
    );
    let _ = write!(s, r#"<text x="{M}" y="16" font-size="13">{}</text>"#, escape(title));
    for (panel, (name, ymax)) in
        [("train loss", lmax), ("accuracy (solid: train, dots: eval)", 1.0)].into_iter().enumerate()
    {
        let x0 = M + panel as f64 * (W + M);
        let (y0, y1) = (M, M + H);
        let _ = write!(s, r##"<rect x="{x0}" y="{y0}" width="{W}" height="{H}" fill="none" stroke="#888"/>"##);
        let _ = write!(s, r#"<text x="{x0}" y="{}">{}</text>"#, y0 - 6.0, escape(name));
        let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="end">{:.3}</text>"#, x0 - 4.0, y0 + 4.0, ymax);
        let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="end">0</text>"#, x0 - 4.0, y1);
        let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="end">{tmax:.2} s (timed)</text>"#, x0 + W, y1 + 16.0);
        let at = |t: f64, v: f64| (x0 + W * t / tmax, y1 - H * (v / ymax).clamp(0.0, 1.0));
        for (k, run) in runs.iter().enumerate() {
            let color = COLORS[k % COLORS.len()];
            let pts: Vec<&Epoch> = points.iter().filter(|p| p.0 == *run).map(|p| &p.2).collect();
            let line: Vec<String> = pts
                .iter()
                .map(|e| at(e.seconds, if panel == 0 { e.train_loss } else { e.train_acc }))
                .map(|(x, y)| format!("{x:.1},{y:.1}"))
                .collect();
            let _ =
                write!(s, r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#, line.join(" "));
            if panel == 1 {
                for e in pts.iter().filter(|e| e.eval_acc.is_some()) {
                    let (x, y) = at(e.seconds, e.eval_acc.unwrap_or(0.0));
                    let _ = write!(s, r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{color}"/>"#);
                }
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON number (non-finite values, which JSON lacks, become null).
fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "null".into()
    }
}

fn json_stats(s: &Stats) -> String {
    format!(
        r#"{{"mean": {}, "std": {}, "min": {}, "max": {}}}"#,
        json_num(s.mean),
        json_num(s.std),
        json_num(s.min),
        json_num(s.max)
    )
}

/// Everything a results table needs: what ran where, each run, and the statistics.
pub fn json(device: &str, config: &str, test: &str, runs: &[Run]) -> String {
    let s = Summary::of(runs);
    let rows: Vec<String> = runs
        .iter()
        .map(|r| {
            format!(
                r#"    {{"seed": {}, "correct": {}, "tested": {}, "accuracy": {}, "seconds": {}, "init_seconds": {}, "final_eval_seconds": {}, "eval_seconds": {}, "reached_94": {}, "fingerprint": "{:016x}", "full_tta_correct": {}}}"#,
                r.seed,
                r.correct,
                r.tested,
                json_num(r.accuracy()),
                json_num(r.seconds),
                json_num(r.init_seconds),
                json_num(r.final_eval_seconds),
                json_num(r.eval_seconds),
                r.accuracy() >= crate::report::TARGET,
                r.fingerprint,
                r.full_tta_correct.map_or("null".into(), |c| c.to_string())
            )
        })
        .collect();
    format!(
        "{{\n  \"commit\": {},\n  \"device\": {},\n  \"config\": {},\n  \"test\": {},\n  \"runs\": [\n{}\n  ],\n  \"summary\": {{\"runs\": {}, \"accuracy_percent\": {}, \"seconds\": {}, \"runs_at_or_above_94\": {}, \"fraction_at_or_above_94\": {}}}\n}}\n",
        json_str(&crate::report::commit()),
        json_str(device),
        json_str(config),
        json_str(test),
        rows.join(",\n"),
        s.runs,
        json_stats(&s.accuracy),
        json_stats(&s.seconds),
        s.hits,
        json_num(s.hits as f64 / s.runs.max(1) as f64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(k: usize, eval: Option<f64>) -> Epoch {
        Epoch {
            epoch: k,
            step: 25 * k,
            lr: 0.24 * (1.0 - k as f64 / 8.0),
            train_loss: 2.0 / k as f64,
            train_acc: 0.1 * k as f64,
            eval_acc: eval,
            seconds: 0.5 * k as f64,
            eval_seconds: if eval.is_some() { 0.1 } else { 0.0 },
            wall: 0.6 * k as f64,
        }
    }

    #[test]
    fn csv_has_one_line_per_run_and_epoch() {
        let pts = vec![(0, 7, epoch(1, None)), (0, 7, epoch(2, Some(0.4375))), (1, 8, epoch(1, None))];
        let c = csv(&pts);
        let lines: Vec<&str> = c.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[1], "0,7,1,25,2.100000e-1,2.000000,0.100000,,0.5000,0.0000,0.6000");
        assert_eq!(lines[2], "0,7,2,50,1.800000e-1,1.000000,0.200000,0.437500,1.0000,0.1000,1.2000");
        assert!(lines.iter().all(|l| l.split(',').count() == 11));
    }

    #[test]
    fn svg_draws_a_line_per_run_and_a_dot_per_evaluation() {
        let pts =
            vec![(0, 7, epoch(1, None)), (0, 7, epoch(2, Some(0.5))), (1, 8, epoch(1, None)), (1, 8, epoch(2, None))];
        let s = svg(&pts, "runs <1,2> & more");
        assert!(s.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\"") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 4, "2 runs × 2 panels");
        assert_eq!(s.matches("<circle").count(), 1, "one evaluation");
        assert!(s.contains("runs &lt;1,2&gt; &amp; more"));
        assert!(s.contains("1.00 s (timed)"));
        // The first run's loss line: epoch 1 at t = 0.5 of 1.0 s, loss 2.0 of max 2.0 (top).
        assert!(s.contains(r#"points="258.0,48.0 468.0,178.0""#), "{s}");
        assert_eq!(svg_path(Path::new("out/c.csv")), PathBuf::from("out/c.svg"));
    }

    #[test]
    fn json_holds_runs_and_statistics() {
        let runs = vec![
            Run {
                seed: 1,
                correct: 9410,
                tested: 10000,
                seconds: 2.0,
                init_seconds: 0.25,
                final_eval_seconds: 0.125,
                eval_seconds: 0.0,
                fingerprint: 10,
                full_tta_correct: None,
            },
            Run {
                seed: 2,
                correct: 9390,
                tested: 10000,
                seconds: 3.0,
                init_seconds: 0.25,
                final_eval_seconds: 0.125,
                eval_seconds: 0.5,
                fingerprint: 11,
                full_tta_correct: Some(9395),
            },
        ];
        let j = json("cpu \"ref\"", "Hyp {..}", "all 10000 images of t.bin", &runs);
        assert!(j.contains(r#""device": "cpu \"ref\"""#), "{j}");
        assert!(j.contains(r#""seed": 1, "correct": 9410, "tested": 10000, "accuracy": 0.941, "seconds": 2, "init_seconds": 0.25, "final_eval_seconds": 0.125, "eval_seconds": 0, "reached_94": true, "fingerprint": "000000000000000a", "full_tta_correct": null}"#), "{j}");
        assert!(j.contains(r#""fingerprint": "000000000000000b", "full_tta_correct": 9395}"#), "{j}");
        assert!(j.contains(r#""reached_94": false"#));
        assert!(j.contains(r#""runs_at_or_above_94": 1, "fraction_at_or_above_94": 0.5"#), "{j}");
        assert!(j.contains(r#""seconds": {"mean": 2.5, "std": 0.7071067811865476, "min": 2, "max": 3}"#), "{j}");
        // Balanced braces and brackets (a cheap well-formedness check without a JSON crate).
        assert_eq!(j.matches('{').count(), j.matches('}').count());
        assert_eq!(j.matches('[').count(), j.matches(']').count());
        assert_eq!(json_num(f64::NAN), "null");
    }

    #[test]
    fn atomic_write_replaces_whole_files_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("cifar-output-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("r.json");
        atomic_write(&f, b"first").unwrap();
        atomic_write(&f, b"second").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"second");
        let missing = dir.join("no/such/dir/r.json");
        assert!(matches!(atomic_write(&missing, b"x"), Err(Error::Io(m)) if m.contains("cannot write")));
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("r.json")], "no temporary files left");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
