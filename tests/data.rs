//! The CIFAR-10 loader: planar -> NHWC conversion, validation errors, path resolution, and the
//! real dataset (skipped with the reason when absent, unless CIFAR10_REQUIRED=1).
use std::fs;
use std::path::{Path, PathBuf};

use cifar::data::{self, DataPaths, Split, IMAGE_BYTES, RECORD_BYTES, TEST_FILE, TRAIN_FILES};
use cifar::testing::real_dataset;
use cifar::Error;
use rand::{Rng, SeedableRng};

/// A unique, empty temp folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("cifar-data-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `n` records with random labels in 0..=9 and random pixels; returns (file bytes, labels).
fn random_records(n: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut bytes = vec![0u8; n * RECORD_BYTES];
    rng.fill(&mut bytes[..]);
    let mut labels = Vec::with_capacity(n);
    for rec in bytes.chunks_exact_mut(RECORD_BYTES) {
        rec[0] = rng.random_range(0..10);
        labels.push(rec[0]);
    }
    (bytes, labels)
}

/// Writes five valid training batches (10,000 records each) into `dir`, labels i % 10.
fn write_train_batches(dir: &Path) {
    let mut bytes = vec![0u8; 10_000 * RECORD_BYTES];
    for (i, rec) in bytes.chunks_exact_mut(RECORD_BYTES).enumerate() {
        rec[0] = (i % 10) as u8;
        rec[1] = i as u8;
    }
    for f in TRAIN_FILES {
        fs::write(dir.join(f), &bytes).unwrap();
    }
}

fn data_err(r: Result<Split, Error>) -> String {
    match r {
        Err(Error::Data(m)) => m,
        Err(other) => panic!("expected Error::Data, got {other:?}"),
        Ok(s) => panic!("expected an error, loaded {} images from {}", s.len(), s.name),
    }
}

fn assert_contains(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} should contain {p:?}");
    }
}

#[test]
fn load_file_converts_planar_to_nhwc() {
    let t = TempDir::new("nhwc");
    let n = 7;
    let (bytes, labels) = random_records(n, 42);
    let path = t.0.join("some_records.bin");
    fs::write(&path, &bytes).unwrap();

    let s = data::load_file(&path).unwrap();
    assert_eq!(s.len(), n);
    assert!(!s.is_empty());
    assert_eq!(s.labels, labels);
    assert_eq!(s.images.len(), n * IMAGE_BYTES);
    assert_eq!(s.name, path.display().to_string());
    for i in 0..n {
        let rec = &bytes[i * RECORD_BYTES + 1..(i + 1) * RECORD_BYTES];
        let img = s.image(i);
        assert_eq!(img.len(), IMAGE_BYTES);
        for y in 0..32 {
            for x in 0..32 {
                for c in 0..3 {
                    assert_eq!(
                        img[(y * 32 + x) * 3 + c],
                        rec[c * 1024 + y * 32 + x],
                        "image {i} pixel ({y},{x}) channel {c}"
                    );
                }
            }
        }
    }
    // load_test reads any whole-record file the same way.
    assert_eq!(data::load_test(&path).unwrap(), s);

    let sub = s.subset(3);
    assert_eq!(sub.len(), 3);
    assert_eq!(sub.labels, labels[..3]);
    assert_eq!(sub.images, s.images[..3 * IMAGE_BYTES]);
    assert!(sub.name.starts_with("first 3 of "), "{}", sub.name);
    assert!(sub.name.contains("some_records.bin"), "{}", sub.name);
    let all = s.subset(100);
    assert_eq!(all.len(), n);
    let none = s.subset(0);
    assert!(none.is_empty());
}

#[test]
fn load_train_reads_five_batches_in_order() {
    let t = TempDir::new("train_ok");
    // Distinct content per batch, so the order is checked.
    for (b, f) in TRAIN_FILES.iter().enumerate() {
        let mut bytes = vec![0u8; 10_000 * RECORD_BYTES];
        for (i, rec) in bytes.chunks_exact_mut(RECORD_BYTES).enumerate() {
            rec[0] = ((i + b) % 10) as u8;
            rec[1] = b as u8 + 1; // R of pixel (0,0)
            rec[1 + 1024 + 1] = i as u8; // G of pixel (0,1)
        }
        fs::write(t.0.join(f), &bytes).unwrap();
    }
    let s = data::load_train(&t.0).unwrap();
    assert_eq!(s.len(), 50_000);
    assert_eq!(s.images.len(), 50_000 * IMAGE_BYTES);
    for b in 0..5 {
        for i in [0usize, 1, 9_999] {
            let k = b * 10_000 + i;
            assert_eq!(s.labels[k] as usize, (i + b) % 10);
            assert_eq!(s.image(k)[0], b as u8 + 1);
            assert_eq!(s.image(k)[3 + 1], i as u8);
        }
    }
}

#[test]
fn missing_training_batch_is_named() {
    let t = TempDir::new("missing");
    write_train_batches(&t.0);
    fs::remove_file(t.0.join("data_batch_3.bin")).unwrap();
    let m = data_err(data::load_train(&t.0));
    assert_contains(&m, &["data_batch_3.bin", "--data-dir", "CIFAR10_DIR"]);
    assert!(!m.contains("data_batch_2.bin"), "{m}");

    let m = data_err(data::load_test(&t.0.join(TEST_FILE)));
    assert_contains(&m, &["test_batch.bin", "missing"]);
}

#[test]
fn size_not_whole_records_is_rejected() {
    let t = TempDir::new("size");
    let path = t.0.join("odd.bin");
    fs::write(&path, vec![1u8; 2 * RECORD_BYTES + 100]).unwrap();
    let m = data_err(data::load_file(&path));
    assert_contains(&m, &["odd.bin", "6246 bytes", "3073"]);

    // Same for a training batch, which states the size it expected.
    write_train_batches(&t.0);
    fs::write(t.0.join("data_batch_2.bin"), vec![1u8; 10_000 * RECORD_BYTES - 1]).unwrap();
    let m = data_err(data::load_train(&t.0));
    assert_contains(&m, &["data_batch_2.bin", "30729999 bytes", "30730000"]);
}

#[test]
fn training_batch_with_9999_records_is_rejected() {
    let t = TempDir::new("count");
    write_train_batches(&t.0);
    fs::write(t.0.join("data_batch_4.bin"), vec![1u8; 9_999 * RECORD_BYTES]).unwrap();
    let m = data_err(data::load_train(&t.0));
    assert_contains(&m, &["data_batch_4.bin", "9999 records", "10000"]);
    // The same file is fine as a test file: any number of whole records.
    assert_eq!(data::load_test(&t.0.join("data_batch_4.bin")).unwrap().len(), 9_999);
}

#[test]
fn label_out_of_range_names_file_and_record() {
    let t = TempDir::new("label");
    let (mut bytes, _) = random_records(8, 7);
    bytes[5 * RECORD_BYTES] = 10;
    let path = t.0.join("bad_label.bin");
    fs::write(&path, &bytes).unwrap();
    let m = data_err(data::load_file(&path));
    assert_contains(&m, &["bad_label.bin", "record 5", "label 10"]);

    bytes[5 * RECORD_BYTES] = 9;
    bytes[7 * RECORD_BYTES] = 255;
    fs::write(&path, &bytes).unwrap();
    let m = data_err(data::load_file(&path));
    assert_contains(&m, &["bad_label.bin", "record 7", "label 255"]);
}

#[test]
fn empty_file_and_directory_are_rejected() {
    let t = TempDir::new("empty");
    let path = t.0.join("empty.bin");
    fs::write(&path, b"").unwrap();
    let m = data_err(data::load_file(&path));
    assert_contains(&m, &["empty.bin", "empty"]);

    write_train_batches(&t.0);
    fs::write(t.0.join("data_batch_5.bin"), b"").unwrap();
    let m = data_err(data::load_train(&t.0));
    assert_contains(&m, &["data_batch_5.bin", "empty"]);

    let m = data_err(data::load_file(&t.0));
    assert_contains(&m, &["not a regular file"]);
}

/// The only test in this binary that touches CIFAR10_DIR / CIFAR10_TEST, and it does so
/// sequentially, so parallel tests cannot interfere.
#[test]
fn resolve_precedence_flag_env_default() {
    let (dir_flag, test_flag) = (Path::new("/from/flag"), Path::new("/from/flag/t.bin"));
    let set = |d: Option<&str>, t: Option<&str>| {
        match d {
            Some(v) => std::env::set_var(data::DIR_ENV, v),
            None => std::env::remove_var(data::DIR_ENV),
        }
        match t {
            Some(v) => std::env::set_var(data::TEST_ENV, v),
            None => std::env::remove_var(data::TEST_ENV),
        }
    };
    let paths = |dir: &str, test: &str, default: bool| DataPaths {
        dir: PathBuf::from(dir),
        test_file: PathBuf::from(test),
        dir_is_default: default,
    };

    set(None, None);
    assert_eq!(data::resolve(None, None), paths(data::DEFAULT_DIR, "data/cifar-10-batches-bin/test_batch.bin", true));
    assert_eq!(data::resolve(Some(dir_flag), None), paths("/from/flag", "/from/flag/test_batch.bin", false));
    assert_eq!(data::resolve(None, Some(test_flag)), paths(data::DEFAULT_DIR, "/from/flag/t.bin", true));

    set(Some("/from/env"), None);
    assert_eq!(data::resolve(None, None), paths("/from/env", "/from/env/test_batch.bin", false));
    assert_eq!(data::resolve(Some(dir_flag), None), paths("/from/flag", "/from/flag/test_batch.bin", false));

    set(Some("/from/env"), Some("/env/test.bin"));
    assert_eq!(data::resolve(None, None), paths("/from/env", "/env/test.bin", false));
    assert_eq!(data::resolve(Some(dir_flag), Some(test_flag)), paths("/from/flag", "/from/flag/t.bin", false));
    assert_eq!(data::resolve(Some(dir_flag), None), paths("/from/flag", "/env/test.bin", false));

    set(None, Some("/env/test.bin"));
    assert_eq!(data::resolve(None, None), paths(data::DEFAULT_DIR, "/env/test.bin", true));

    // Empty values count as unset.
    set(Some(""), Some(""));
    assert_eq!(data::resolve(None, None), paths(data::DEFAULT_DIR, "data/cifar-10-batches-bin/test_batch.bin", true));
    set(None, None);
}

#[test]
fn real_training_set() {
    let Some(dir) = real_dataset("real_training_set") else { return };
    let s = data::load_train(&dir).unwrap();
    assert_eq!(s.len(), 50_000);
    assert_eq!(s.labels[..10], [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]);
    let mut per_class = [0usize; 10];
    for &l in &s.labels {
        per_class[l as usize] += 1;
    }
    assert_eq!(per_class, [5_000; 10]);
    let mut sums = [0u64; 3];
    for px in s.images.chunks_exact(3) {
        for c in 0..3 {
            sums[c] += px[c] as u64;
        }
    }
    let n = (50_000 * 1024) as f64;
    let expect = [0.491400, 0.482158, 0.446531];
    for c in 0..3 {
        let mean = sums[c] as f64 / n / 255.0;
        assert!((mean - expect[c]).abs() < 1e-5, "channel {c}: mean {mean}, expected {}", expect[c]);
    }
}

#[test]
fn real_test_set_and_partial_prefix() {
    let Some(dir) = real_dataset("real_test_set_and_partial_prefix") else { return };
    let test = data::load_test(&dir.join(TEST_FILE)).unwrap();
    assert_eq!(test.len(), 10_000);
    assert_eq!(test.labels[..10], [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]);

    let partial = dir.join("../partial/test_first1000.bin");
    // The project's shared copy has it; a fresh download into data/ does not.
    let shared = dir.ends_with("shared/cifar10/cifar-10-batches-bin");
    if !partial.exists() && (!shared || std::env::var(cifar::testing::REQUIRE_DATA_ENV).as_deref() != Ok("1")) {
        eprintln!("{} not found; prefix check skipped", partial.display());
        return;
    }
    let p = data::load_test(&partial).unwrap();
    assert_eq!(p.len(), 1_000);
    let first = test.subset(1_000);
    assert_eq!(p.labels, first.labels);
    assert!(p.images == first.images, "partial/test_first1000.bin differs from the first 1000 test images");
}
