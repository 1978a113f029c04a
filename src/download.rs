//! Fetching, checking and unpacking the official CIFAR-10 binary archive, atomically.
//!
//! Everything happens inside a fresh hidden folder next to the target (`.cifar10-download-<pid>-<n>`,
//! same filesystem): the archive is streamed to disk there while its MD5 is computed, checked,
//! unpacked there, the six batch files are checked for size, and only then is the extracted
//! `cifar-10-batches-bin/` renamed into place. A drop guard removes the hidden folder (and any
//! parent folders this call created) on every path, so a failure leaves nothing behind.
use std::fs::{self, File};
#[cfg(feature = "download")]
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "download")]
use std::time::Duration;

#[cfg(feature = "download")]
use md5::{Digest, Md5};

use crate::data;
use crate::error::{Error, Result};

/// The official archive of the binary version.
pub const URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
/// Its published MD5.
pub const MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
/// Overrides [`URL`] (mirrors, tests).
pub const URL_ENV: &str = "CIFAR10_URL";

/// The folder inside the archive that holds the batches.
const ARCHIVE_DIR: &str = "cifar-10-batches-bin";
/// Prefix of the hidden working folders.
const TEMP_PREFIX: &str = ".cifar10-download-";
/// Progress is redrawn after every this many bytes.
#[cfg(feature = "download")]
const PROGRESS_STEP: u64 = 4 << 20;

/// `$CIFAR10_URL` when set and non-empty, else [`URL`].
pub fn url() -> String {
    std::env::var(URL_ENV).ok().filter(|u| !u.is_empty()).unwrap_or_else(|| URL.to_string())
}

/// Make sure `dir` holds the six batch files. If all are present: `Ok(false)`, nothing done.
/// If none are present (or `dir` does not exist): download `url`, verify its md5 against `md5`,
/// extract into a temporary folder created next to `dir` (same filesystem), check that the
/// archive's `cifar-10-batches-bin/` holds the six files with valid sizes (whole records; 10,000
/// per training batch), then rename into place as `dir`, and return `Ok(true)`.
/// If only some are present: `Err` naming the missing file(s) (a partial folder is never
/// overwritten). Any failure leaves no partial files: no half-written archive, no temp folder,
/// no `dir`.
pub fn ensure(dir: &Path, url: &str, md5: &str) -> Result<bool> {
    let (present, missing): (Vec<&str>, Vec<&str>) = data::all_files().partition(|f| dir.join(f).is_file());
    if missing.is_empty() {
        return Ok(false);
    }
    if !present.is_empty() {
        return Err(Error::Data(format!(
            "{} holds only some of the CIFAR-10 files (missing: {}); refusing to download over a partial folder: restore the missing files or delete the folder to download afresh",
            dir.display(),
            missing.join(", ")
        )));
    }
    if dir.exists() && !dir.is_dir() {
        return Err(Error::Data(format!(
            "{} exists but is not a folder; cannot download CIFAR-10 into it",
            dir.display()
        )));
    }
    let md5 = md5.trim().to_ascii_lowercase();
    if md5.len() != 32 || !md5.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Data(format!("expected MD5 '{md5}' is not 32 hexadecimal digits")));
    }

    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut guard = Guard::default();
    create_parents(&parent, &mut guard)?;
    remove_stale_temps(&parent);
    let temp = make_temp(&parent)?;
    guard.temp = Some(temp.clone());

    let archive = temp.join("cifar-10-binary.tar.gz");
    fetch(url, &archive, &md5)?;
    extract(&archive, &temp, url)?;
    // The archive is no longer needed; freeing its space early is harmless if it fails.
    let _ = fs::remove_file(&archive);
    let extracted = temp.join(ARCHIVE_DIR);
    check_extracted(&extracted, url)?;
    install(&extracted, dir)?;
    guard.succeeded = true;
    drop(guard);
    eprintln!("CIFAR-10 is ready in {}", dir.display());
    Ok(true)
}

/// Removes the temp folder on every path, and on failure the parent folders this call created.
#[derive(Default)]
struct Guard {
    temp: Option<PathBuf>,
    /// Folders created by this call, outermost first.
    created: Vec<PathBuf>,
    succeeded: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(t) = &self.temp {
            let _ = fs::remove_dir_all(t);
        }
        if !self.succeeded {
            for d in self.created.iter().rev() {
                // Only empty folders: never anything that something else put there meanwhile.
                let _ = fs::remove_dir(d);
            }
        }
    }
}

fn create_parents(parent: &Path, guard: &mut Guard) -> Result<()> {
    let mut missing = Vec::new();
    let mut p = Some(parent);
    while let Some(d) = p {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        p = d.parent();
    }
    for d in missing.into_iter().rev() {
        match fs::create_dir(&d) {
            Ok(()) => guard.created.push(d),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Error::Data(format!("cannot create folder {} for the CIFAR-10 download: {e}", d.display())))
            }
        }
    }
    Ok(())
}

/// A fresh, uniquely named hidden folder in `parent`.
fn make_temp(parent: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let pid = std::process::id();
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let t = parent.join(format!("{TEMP_PREFIX}{pid}-{n}"));
        match fs::create_dir(&t) {
            Ok(()) => return Ok(t),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(Error::Data(format!(
                    "cannot create temporary folder {} for the CIFAR-10 download: {e}",
                    t.display()
                )))
            }
        }
    }
}

/// Removes working folders left in `parent` by earlier downloads that were killed (Ctrl-C, a
/// crash) before their guard could run: those whose process no longer exists. Linux only (it
/// needs /proc to tell); elsewhere they are left alone.
fn remove_stale_temps(parent: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TEMP_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(feature = "download")]
fn fmt_mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// A build without the `download` feature (`--no-default-features`: no HTTPS client, as the
/// emulated-driver CI build) cannot fetch: the data must be on disk.
#[cfg(not(feature = "download"))]
fn fetch(url: &str, _dest: &Path, _md5: &str) -> Result<()> {
    Err(Error::Data(format!(
        "cannot download {url}: this build has no HTTPS client (built without the `download` feature); \
         put CIFAR-10 in the data folder or pass --data-dir"
    )))
}

/// Downloads `url` into `dest`, computing its MD5 on the way, and checks it against `md5`.
#[cfg(feature = "download")]
fn fetch(url: &str, dest: &Path, md5: &str) -> Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        // A stalled transfer fails instead of hanging forever.
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build()
        .into();
    eprintln!("downloading CIFAR-10 from {url}");
    let response = agent
        .get(url)
        // The archive is already compressed: ask for it byte for byte, so the MD5 applies.
        .header("Accept-Encoding", "identity")
        .call()
        .map_err(|e| Error::Data(format!("cannot download {url}: {e}")))?;
    let status = response.status();
    if !status.is_success() {
        return Err(Error::Data(format!(
            "download of {url} failed with HTTP status {}{}",
            status.as_u16(),
            status.canonical_reason().map(|r| format!(" {r}")).unwrap_or_default()
        )));
    }
    let total = response.body().content_length();
    let mut body = response.into_body().into_reader();
    let file = File::create(dest).map_err(|e| Error::Data(format!("cannot create {}: {e}", dest.display())))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut got: u64 = 0;
    let mut next_report = 0;
    let progress = |got: u64| match total {
        Some(t) if t > 0 => eprint!("\r  {} / {} ({:.0}%)   ", fmt_mib(got), fmt_mib(t), 100.0 * got as f64 / t as f64),
        _ => eprint!("\r  {}   ", fmt_mib(got)),
    };
    let incomplete = |got: u64, why: &dyn std::fmt::Display| {
        eprintln!();
        let of = total.map(|t| format!(" of {t}")).unwrap_or_default();
        Error::Data(format!("download of {url} was truncated or interrupted after {got}{of} bytes: {why}"))
    };
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(incomplete(got, &e)),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| Error::Data(format!("cannot write {}: {e}", dest.display())))?;
        got += n as u64;
        if got >= next_report {
            progress(got);
            next_report = got + PROGRESS_STEP;
        }
    }
    progress(got);
    eprintln!();
    if let Some(t) = total {
        if got != t {
            return Err(incomplete(got, &"the server announced a different length"));
        }
    }
    out.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::Data(format!("cannot write {}: {e}", dest.display())))?;
    let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if digest != md5 {
        return Err(Error::Data(format!(
            "the archive downloaded from {url} has MD5 checksum {digest}, expected {md5}: the download is corrupt or not the CIFAR-10 binary archive"
        )));
    }
    Ok(())
}

/// Unpacks the .tar.gz `archive` into `into`.
fn extract(archive: &Path, into: &Path, url: &str) -> Result<()> {
    let file = File::open(archive)
        .map_err(|e| Error::Data(format!("cannot open the downloaded archive {}: {e}", archive.display())))?;
    let gz = flate2::read::GzDecoder::new(std::io::BufReader::with_capacity(1 << 20, file));
    let mut tar = tar::Archive::new(gz);
    tar.set_preserve_permissions(false);
    // `unpack` refuses entries that would land outside `into` (absolute paths, `..`).
    tar.unpack(into).map_err(|e| {
        // tar's own message is terse ("failed to iterate over archive"): add its causes.
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(&format!(": {s}"));
            source = s.source();
        }
        Error::Data(format!("cannot unpack the archive downloaded from {url}: {msg}"))
    })
}

/// Checks that the extracted folder holds the six files with valid sizes.
fn check_extracted(dir: &Path, url: &str) -> Result<()> {
    for f in data::all_files() {
        let path = dir.join(f);
        let meta = fs::metadata(&path)
            .ok()
            .filter(|m| m.is_file())
            .ok_or_else(|| Error::Data(format!("the archive downloaded from {url} has no {ARCHIVE_DIR}/{f}")))?;
        let expect = (f != data::TEST_FILE).then_some(data::RECORDS_PER_BATCH);
        // Named as in the archive, not by the temporary path.
        let shown = Path::new(ARCHIVE_DIR).join(f);
        data::check_size(&shown, meta.len(), expect).map_err(|e| match e {
            Error::Data(m) => Error::Data(format!("in the archive downloaded from {url}: {m}")),
            other => other,
        })?;
    }
    Ok(())
}

/// Moves the extracted folder into place as `dir`: one rename when `dir` does not exist, else
/// (an existing folder holding none of the batches) file by file, never replacing a file.
fn install(extracted: &Path, dir: &Path) -> Result<()> {
    let fail = |e: std::io::Error| {
        Error::Data(format!("cannot move the extracted CIFAR-10 files into {}: {e}", dir.display()))
    };
    if !dir.exists() {
        return fs::rename(extracted, dir).map_err(fail);
    }
    let mut moved = Vec::new();
    let result = (|| -> std::io::Result<()> {
        for e in fs::read_dir(extracted)? {
            let e = e?;
            let to = dir.join(e.file_name());
            if to.exists() {
                continue;
            }
            fs::rename(e.path(), &to)?;
            moved.push(to);
        }
        Ok(())
    })();
    if let Err(e) = result {
        for m in &moved {
            let _ = fs::remove_file(m);
        }
        return Err(fail(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Without the `download` feature (the emulated-driver CI build): asking for the data is a
    /// data error that says why, and nothing is left behind.
    #[test]
    #[cfg(not(feature = "download"))]
    fn a_build_without_the_download_feature_says_so() {
        let dir = std::env::temp_dir().join(format!("cifar-nodl-{}", std::process::id())).join("cifar-10-batches-bin");
        match super::ensure(&dir, "https://example.invalid/c.tgz", super::MD5) {
            Err(crate::error::Error::Data(m)) => assert!(m.contains("no HTTPS client"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(!dir.exists(), "nothing left behind");
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }
}
