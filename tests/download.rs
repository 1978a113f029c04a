//! `download::ensure` against a tiny local HTTP/1.1 server (std::net, one behaviour per server):
//! a good archive, a wrong checksum, a truncated body, an HTTP error, an unreachable host, bad
//! archives, and a partial folder. Every failure must leave the parent folder exactly as it was.
use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use cifar::data::{self, RECORD_BYTES, TEST_FILE, TRAIN_FILES};
use cifar::download;
use cifar::Error;
use flate2::write::GzEncoder;
use flate2::Compression;
use md5::{Digest, Md5};

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A unique temp folder (the parent of the download target) holding one unrelated file, removed
/// on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("cifar-dl-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("unrelated.txt"), b"keep me").unwrap();
        TempDir(p)
    }

    /// Every path under the folder (relative), files and folders, with file sizes.
    fn snapshot(&self) -> BTreeSet<(PathBuf, u64)> {
        fn walk(root: &Path, d: &Path, out: &mut BTreeSet<(PathBuf, u64)>) {
            for e in fs::read_dir(d).unwrap() {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                out.insert((e.path().strip_prefix(root).unwrap().to_path_buf(), if m.is_dir() { 0 } else { m.len() }));
                if m.is_dir() {
                    walk(root, &e.path(), out);
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(&self.0, &self.0, &mut out);
        out
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `n` records: labels i % 10, pixels a cheap repeating non-zero pattern.
fn records(n: usize) -> Vec<u8> {
    let mut rec = vec![0u8; RECORD_BYTES];
    for (j, b) in rec.iter_mut().enumerate().skip(1) {
        *b = (j * 7 % 251) as u8 + 1;
    }
    let mut out = Vec::with_capacity(n * RECORD_BYTES);
    for i in 0..n {
        rec[0] = (i % 10) as u8;
        out.extend_from_slice(&rec);
    }
    out
}

/// A .tar.gz holding `cifar-10-batches-bin/` with the given files.
fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = GzEncoder::new(Vec::new(), Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    h.set_mode(0o755);
    h.set_cksum();
    tar.append_data(&mut h, "cifar-10-batches-bin/", std::io::empty()).unwrap();
    for (name, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, format!("cifar-10-batches-bin/{name}"), *bytes).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

const META: &[u8] = b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n";

/// A valid archive (10,000 records per training batch, 1,000 test records), built once.
fn good_archive() -> Arc<Vec<u8>> {
    static A: OnceLock<Arc<Vec<u8>>> = OnceLock::new();
    A.get_or_init(|| {
        let train = records(10_000);
        let test = records(1_000);
        let mut files: Vec<(&str, &[u8])> = vec![("batches.meta.txt", META)];
        files.extend(TRAIN_FILES.iter().map(|f| (*f, &train[..])));
        files.push((TEST_FILE, &test[..]));
        Arc::new(tar_gz(&files))
    })
    .clone()
}

fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// The server

enum Behaviour {
    /// 200 with the whole body.
    Serve(Arc<Vec<u8>>),
    /// 200 announcing the whole length, then only half the body, then close.
    Truncate(Arc<Vec<u8>>),
    /// This status with a short text body.
    Status(u16, &'static str),
}

struct Server {
    url: String,
    hits: Arc<AtomicUsize>,
}

/// Serves `b` on 127.0.0.1 (any free port) from a background thread, one connection at a time,
/// each closed after one response. The thread lives until the test process ends.
fn serve(b: Behaviour) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/cifar-10-binary.tar.gz", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            if read_request(&mut s).is_err() {
                continue;
            }
            h.fetch_add(1, Ordering::SeqCst);
            // Write errors (the client gave up) are of no interest.
            let _ = respond(&mut s, &b);
            let _ = s.flush();
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    });
    Server { url, hits }
}

fn read_request(s: &mut TcpStream) -> std::io::Result<()> {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        req.extend_from_slice(&buf[..n]);
    }
    assert!(req.starts_with(b"GET /cifar-10-binary.tar.gz HTTP/1.1\r\n"));
    Ok(())
}

fn respond(s: &mut TcpStream, b: &Behaviour) -> std::io::Result<()> {
    let head = |status: &str, len: usize, ctype: &str| {
        format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
    };
    match b {
        Behaviour::Serve(body) => {
            s.write_all(head("200 OK", body.len(), "application/x-gzip").as_bytes())?;
            s.write_all(body)
        }
        Behaviour::Truncate(body) => {
            s.write_all(head("200 OK", body.len(), "application/x-gzip").as_bytes())?;
            s.write_all(&body[..body.len() / 2])
        }
        Behaviour::Status(code, reason) => {
            let text = format!("{code} {reason}\n");
            s.write_all(head(&format!("{code} {reason}"), text.len(), "text/plain").as_bytes())?;
            s.write_all(text.as_bytes())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn data_err(r: Result<bool, Error>) -> String {
    match r {
        Err(Error::Data(m)) => m,
        Err(other) => panic!("expected Error::Data, got {other:?}"),
        Ok(v) => panic!("expected an error, got Ok({v})"),
    }
}

fn assert_contains_any(msg: &str, parts: &[&str]) {
    let low = msg.to_lowercase();
    assert!(parts.iter().any(|p| low.contains(p)), "message {msg:?} should contain one of {parts:?}");
}

/// Runs a failing `ensure` into `<parent>/new/sub/cifar-10-batches-bin` (two folders that do not
/// exist yet) and checks that it left the parent exactly as it was. Returns the message.
fn fails_cleanly(name: &str, url: &str, md5: &str) -> String {
    let t = TempDir::new(name);
    let before = t.snapshot();
    let dir = t.0.join("new/sub/cifar-10-batches-bin");
    let msg = data_err(download::ensure(&dir, url, md5));
    assert!(!dir.exists(), "{} should not exist after a failure", dir.display());
    assert_eq!(t.snapshot(), before, "the failure left something behind in {}", t.0.display());
    msg
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn good_archive_is_installed_then_not_fetched_again() {
    let archive = good_archive();
    let md5 = md5_hex(&archive);
    let server = serve(Behaviour::Serve(archive));
    let t = TempDir::new("good");
    let before = t.snapshot();

    // Into a folder whose parent does not exist yet.
    let dir = t.0.join("data/cifar-10-batches-bin");
    assert!(download::ensure(&dir, &server.url, &md5).unwrap());
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    for f in data::all_files() {
        assert!(dir.join(f).is_file(), "{f} missing after download");
    }
    assert_eq!(fs::read(dir.join("batches.meta.txt")).unwrap(), META);
    let train = data::load_train(&dir).unwrap();
    assert_eq!(train.len(), 50_000);
    assert_eq!(train.labels[..12], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
    // File byte 1 + c*1024 + p is ((1 + c*1024 + p) * 7 % 251) + 1; NHWC pixel p channel c.
    let img = train.image(12_345);
    for (p, c) in [(0usize, 0usize), (0, 1), (0, 2), (33, 1), (1023, 2)] {
        assert_eq!(img[p * 3 + c] as usize, (1 + c * 1024 + p) * 7 % 251 + 1);
    }
    assert_eq!(data::load_test(&dir.join(TEST_FILE)).unwrap().len(), 1_000);
    // Nothing else appeared next to it: only data/ with exactly the extracted files.
    let mut after = t.snapshot();
    after.retain(|(p, _)| !p.starts_with("data"));
    assert_eq!(after, before, "temporary files left behind");
    let mut names: Vec<String> =
        fs::read_dir(t.0.join("data")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["cifar-10-batches-bin"]);

    // Second call: everything present, nothing fetched.
    assert!(!download::ensure(&dir, &server.url, &md5).unwrap());
    assert_eq!(server.hits.load(Ordering::SeqCst), 1, "the second ensure() contacted the server");

    // An existing folder holding none of the batches is filled in, its other files kept.
    let dir2 = t.0.join("existing");
    fs::create_dir(&dir2).unwrap();
    fs::write(dir2.join("notes.txt"), b"mine").unwrap();
    assert!(download::ensure(&dir2, &server.url, &md5).unwrap());
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);
    assert!(data::is_complete(&dir2));
    assert_eq!(fs::read(dir2.join("notes.txt")).unwrap(), b"mine");
    let leftovers: Vec<_> = fs::read_dir(&t.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary folders left: {leftovers:?}");
}

#[test]
fn wrong_checksum_leaves_nothing() {
    let server = serve(Behaviour::Serve(good_archive()));
    let msg = fails_cleanly("md5", &server.url, "0123456789abcdef0123456789abcdef");
    assert_contains_any(&msg, &["md5", "checksum"]);
    assert!(msg.contains("0123456789abcdef0123456789abcdef"), "{msg}");
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
}

#[test]
fn truncated_body_leaves_nothing() {
    let archive = good_archive();
    let md5 = md5_hex(&archive);
    let server = serve(Behaviour::Truncate(archive));
    let msg = fails_cleanly("truncated", &server.url, &md5);
    assert_contains_any(&msg, &["truncated", "incomplete"]);
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
}

#[test]
fn http_error_status_is_named() {
    let server = serve(Behaviour::Status(404, "Not Found"));
    let msg = fails_cleanly("404", &server.url, download::MD5);
    assert!(msg.contains("404") && msg.contains(&server.url), "{msg}");

    let server = serve(Behaviour::Status(500, "Internal Server Error"));
    let msg = fails_cleanly("500", &server.url, download::MD5);
    assert!(msg.contains("500") && msg.contains(&server.url), "{msg}");
}

#[test]
fn unreachable_host_leaves_nothing() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/cifar-10-binary.tar.gz", listener.local_addr().unwrap());
    drop(listener);
    let msg = fails_cleanly("refused", &url, download::MD5);
    assert!(msg.contains(&url), "{msg}");
}

#[test]
fn archive_without_test_batch_leaves_nothing() {
    let train = records(10_000);
    let files: Vec<(&str, &[u8])> = TRAIN_FILES.iter().map(|f| (*f, &train[..])).collect();
    let archive = Arc::new(tar_gz(&files));
    let md5 = md5_hex(&archive);
    let server = serve(Behaviour::Serve(archive));
    let msg = fails_cleanly("no_test", &server.url, &md5);
    assert!(msg.contains("test_batch.bin"), "{msg}");
}

#[test]
fn archive_with_short_training_batch_leaves_nothing() {
    let train = records(10_000);
    let short = records(9_999);
    let mut files: Vec<(&str, &[u8])> = TRAIN_FILES.iter().map(|f| (*f, &train[..])).collect();
    files[1].1 = &short;
    files.push((TEST_FILE, &short[..]));
    let archive = Arc::new(tar_gz(&files));
    let md5 = md5_hex(&archive);
    let server = serve(Behaviour::Serve(archive));
    let msg = fails_cleanly("short", &server.url, &md5);
    assert!(msg.contains("data_batch_2.bin") && msg.contains("9999 records"), "{msg}");
}

#[test]
fn body_that_is_not_an_archive_leaves_nothing() {
    let body = Arc::new(b"<html>this is not a gzip file</html>".repeat(100));
    let md5 = md5_hex(&body);
    let server = serve(Behaviour::Serve(body));
    let msg = fails_cleanly("not_gzip", &server.url, &md5);
    assert_contains_any(&msg, &["unpack"]);
}

#[test]
fn partial_folder_is_refused_and_untouched() {
    let server = serve(Behaviour::Serve(good_archive()));
    let t = TempDir::new("partial");
    let dir = t.0.join("cifar-10-batches-bin");
    fs::create_dir(&dir).unwrap();
    let batch = records(10_000);
    for f in ["data_batch_1.bin", "data_batch_2.bin", "test_batch.bin"] {
        fs::write(dir.join(f), &batch).unwrap();
    }
    let before = t.snapshot();
    let msg = data_err(download::ensure(&dir, &server.url, download::MD5));
    assert!(msg.contains("data_batch_3.bin") && msg.contains("data_batch_5.bin"), "{msg}");
    assert!(!msg.contains("data_batch_1.bin"), "{msg}");
    assert_eq!(t.snapshot(), before, "the partial folder was modified");
    assert_eq!(server.hits.load(Ordering::SeqCst), 0, "a partial folder must not trigger a download");
}

#[test]
fn default_url_and_env_override() {
    assert_eq!(download::URL, "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz");
    assert_eq!(download::MD5.len(), 32);
    // The only test here that touches CIFAR10_URL.
    std::env::remove_var(download::URL_ENV);
    assert_eq!(download::url(), download::URL);
    std::env::set_var(download::URL_ENV, "http://mirror.example/c.tar.gz");
    assert_eq!(download::url(), "http://mirror.example/c.tar.gz");
    std::env::remove_var(download::URL_ENV);
}
