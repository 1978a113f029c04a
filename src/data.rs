//! Reading and validating the CIFAR-10 *binary version*.
//!
//! Each file is a sequence of 3073-byte records: one label byte (0..=9), then the 32x32 red plane,
//! the green plane and the blue plane, each row-major. The training set is `data_batch_1.bin` ..
//! `data_batch_5.bin` (10,000 records each, read in that order); the test set is `test_batch.bin`.
//! Files are memory-mapped, validated (size, record count, labels) and converted at load time to
//! NHWC `u8`: image `i`, pixel `(y, x)`, channel `c` is `images[i*3072 + (y*32 + x)*3 + c]`.
//! Nothing here panics on bad input: every problem is an [`Error::Data`] naming the file.
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Bytes of one image: 32*32 pixels, 3 channels.
pub const IMAGE_BYTES: usize = 3072;
/// Bytes of one record: 1 label + 1024 R + 1024 G + 1024 B (planar).
pub const RECORD_BYTES: usize = 3073;
/// Images per training batch file (and in the official test file).
pub const RECORDS_PER_BATCH: usize = 10_000;
/// The five training batches, in the order they are read.
pub const TRAIN_FILES: [&str; 5] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
/// The official test batch.
pub const TEST_FILE: &str = "test_batch.bin";
/// Where the trainer looks for (and downloads) the dataset by default, relative to the working
/// directory.
pub const DEFAULT_DIR: &str = "data/cifar-10-batches-bin";
/// Environment variable naming a folder that holds the six `.bin` files.
pub const DIR_ENV: &str = "CIFAR10_DIR";
/// Environment variable naming the test file explicitly.
pub const TEST_ENV: &str = "CIFAR10_TEST";

const PLANE: usize = 1024;

/// A set of images in memory, NHWC u8 (converted from the planar file layout at load time).
#[derive(Clone, PartialEq, Eq)]
pub struct Split {
    /// `len() * 3072` bytes, NHWC.
    pub images: Vec<u8>,
    /// One label in 0..=9 per image.
    pub labels: Vec<u8>,
    /// Where the images came from (file path(s)), for messages and logs.
    pub name: String,
}

impl Split {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The 3072 NHWC bytes of image `i`. Panics if `i >= len()` (a programming error, like slice
    /// indexing).
    pub fn image(&self, i: usize) -> &[u8] {
        &self.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]
    }

    /// The first `n` images (all of them if `n >= len()`), named "first n of <name>".
    pub fn subset(&self, n: usize) -> Split {
        let n = n.min(self.len());
        Split {
            images: self.images[..n * IMAGE_BYTES].to_vec(),
            labels: self.labels[..n].to_vec(),
            name: format!("first {n} of {}", self.name),
        }
    }
}

/// Name and size only: the pixels would be megabytes of numbers.
impl std::fmt::Debug for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Split").field("name", &self.name).field("len", &self.len()).finish_non_exhaustive()
    }
}

/// Where the data comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataPaths {
    /// The folder holding the five training batches (and, by default, the test batch).
    pub dir: PathBuf,
    /// The test file.
    pub test_file: PathBuf,
    /// True when `dir` is [`DEFAULT_DIR`] (no flag, no environment variable): only then may the
    /// trainer download the dataset into it.
    pub dir_is_default: bool,
}

/// Where the data comes from. Precedence for the folder: the flag, then `$CIFAR10_DIR`, then
/// [`DEFAULT_DIR`]. The test file: the flag, then `$CIFAR10_TEST`, then `<folder>/test_batch.bin`.
/// An environment variable set to the empty string counts as unset.
pub fn resolve(dir_flag: Option<&Path>, test_flag: Option<&Path>) -> DataPaths {
    resolve_with(dir_flag, test_flag, std::env::var_os(DIR_ENV), std::env::var_os(TEST_ENV))
}

/// [`resolve`] with the environment values passed in.
fn resolve_with(
    dir_flag: Option<&Path>,
    test_flag: Option<&Path>,
    env_dir: Option<OsString>,
    env_test: Option<OsString>,
) -> DataPaths {
    let env_dir = env_dir.filter(|v| !v.is_empty()).map(PathBuf::from);
    let env_test = env_test.filter(|v| !v.is_empty()).map(PathBuf::from);
    let (dir, dir_is_default) = match (dir_flag, env_dir) {
        (Some(flag), _) => (flag.to_path_buf(), false),
        (None, Some(env)) => (env, false),
        (None, None) => (PathBuf::from(DEFAULT_DIR), true),
    };
    let test_file = match (test_flag, env_test) {
        (Some(flag), _) => flag.to_path_buf(),
        (None, Some(env)) => env,
        (None, None) => dir.join(TEST_FILE),
    };
    DataPaths { dir, test_file, dir_is_default }
}

/// The five training batches of `dir`, 50,000 images in file order. Each batch must hold
/// exactly 10,000 records.
pub fn load_train(dir: &Path) -> Result<Split> {
    // Check that every file is there before reading any, so the message names all that are missing.
    let missing: Vec<&str> = TRAIN_FILES.iter().copied().filter(|f| !dir.join(f).exists()).collect();
    if !missing.is_empty() {
        let what = if missing.len() == 1 { "training batch" } else { "training batches" };
        let verb = if missing.len() == 1 { "is" } else { "are" };
        return Err(Error::Data(format!(
            "CIFAR-10 {what} {} {verb} missing from {}; {}",
            missing.join(", "),
            dir.display(),
            WHERE_HINT
        )));
    }
    let total = TRAIN_FILES.len() * RECORDS_PER_BATCH;
    let mut images = Vec::with_capacity(total * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(total);
    for f in TRAIN_FILES {
        read_records(&dir.join(f), Some(RECORDS_PER_BATCH), &mut images, &mut labels)?;
    }
    Ok(Split { images, labels, name: format!("{} (data_batch_1..5.bin)", dir.display()) })
}

/// A test file: any file of whole records (the official one has 10,000; for example
/// `../shared/cifar10/partial/test_first1000.bin` has 1,000).
pub fn load_test(file: &Path) -> Result<Split> {
    load_file(file)
}

/// One file of whole records, any (non-zero) count.
pub fn load_file(path: &Path) -> Result<Split> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    read_records(path, None, &mut images, &mut labels)?;
    Ok(Split { images, labels, name: path.display().to_string() })
}

/// For tests and CI: the project's shared copy `<CARGO_MANIFEST_DIR>/../shared/cifar10/cifar-10-batches-bin`
/// if it exists with all six files, else [`DEFAULT_DIR`] under the manifest dir if complete, else None.
pub fn find_local_dataset() -> Option<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    [manifest.join("../shared/cifar10/cifar-10-batches-bin"), manifest.join(DEFAULT_DIR)]
        .into_iter()
        .find(|dir| is_complete(dir))
}

/// True when `dir` holds all six batch files (as regular files; sizes are not checked).
pub fn is_complete(dir: &Path) -> bool {
    all_files().all(|f| dir.join(f).is_file())
}

/// The six batch files: the five training batches, then the test batch.
pub fn all_files() -> impl Iterator<Item = &'static str> {
    TRAIN_FILES.into_iter().chain(std::iter::once(TEST_FILE))
}

/// Checks that a file of `len` bytes holds whole records, and exactly `expect` of them if given.
/// Returns the record count. Shared with the download check.
pub fn check_size(path: &Path, len: u64, expect: Option<usize>) -> Result<usize> {
    if len == 0 {
        let expected = match expect {
            Some(n) => format!("{n} records of {RECORD_BYTES} bytes"),
            None => format!("whole records of {RECORD_BYTES} bytes"),
        };
        return Err(Error::Data(format!("CIFAR-10 file {} is empty (0 bytes); expected {expected}", path.display())));
    }
    if len % RECORD_BYTES as u64 != 0 {
        let expected = match expect {
            Some(n) => format!("{} bytes ({n} records of {RECORD_BYTES} bytes)", n * RECORD_BYTES),
            None => format!("a multiple of {RECORD_BYTES} bytes (whole records)"),
        };
        return Err(Error::Data(format!(
            "CIFAR-10 file {} is {len} bytes, which is not a whole number of {RECORD_BYTES}-byte records; expected {expected}",
            path.display()
        )));
    }
    let count = usize::try_from(len / RECORD_BYTES as u64)
        .map_err(|_| Error::Data(format!("CIFAR-10 file {} is too large ({len} bytes)", path.display())))?;
    if let Some(n) = expect {
        if count != n {
            return Err(Error::Data(format!(
                "CIFAR-10 training batch {} holds {count} records ({len} bytes); expected {n} records ({} bytes)",
                path.display(),
                n * RECORD_BYTES
            )));
        }
    }
    Ok(count)
}

const WHERE_HINT: &str = "the trainer downloads the dataset into the default folder data/cifar-10-batches-bin when it is absent (unless --no-download), or --data-dir / CIFAR10_DIR can point at a folder that holds it (and --test-file / CIFAR10_TEST at a test file)";

/// Maps `path`, validates it and appends its images (NHWC) and labels.
fn read_records(path: &Path, expect: Option<usize>, images: &mut Vec<u8>, labels: &mut Vec<u8>) -> Result<()> {
    let file = File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Data(format!("CIFAR-10 file {} is missing; {WHERE_HINT}", path.display()))
        } else {
            Error::Data(format!("cannot open CIFAR-10 file {}: {e}", path.display()))
        }
    })?;
    let meta = file
        .metadata()
        .map_err(|e| Error::Data(format!("cannot read the size of CIFAR-10 file {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(Error::Data(format!("CIFAR-10 file {} is not a regular file (a directory?)", path.display())));
    }
    // Checked before mapping: a zero-length mapping is an error in itself.
    let count = check_size(path, meta.len(), expect)?;
    // SAFETY: the mapping is read-only and lives only for this function. The one hazard of a
    // file mapping, another process truncating the file while it is mapped, is outside what this
    // program can prevent; the dataset files are not expected to change while being read.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| Error::Data(format!("cannot map CIFAR-10 file {}: {e}", path.display())))?;
    if map.len() != count * RECORD_BYTES {
        return Err(Error::Data(format!(
            "CIFAR-10 file {} changed size while being read ({} bytes mapped, {} expected)",
            path.display(),
            map.len(),
            count * RECORD_BYTES
        )));
    }
    // Labels first, so that a bad file appends nothing.
    for (i, rec) in map.chunks_exact(RECORD_BYTES).enumerate() {
        if rec[0] > 9 {
            return Err(Error::Data(format!(
                "CIFAR-10 file {}: record {i} (counting from 0) has label {}; labels must be 0..9",
                path.display(),
                rec[0]
            )));
        }
    }
    labels.reserve(count);
    images.reserve(count * IMAGE_BYTES);
    let start = images.len();
    images.resize(start + count * IMAGE_BYTES, 0);
    for (rec, out) in map.chunks_exact(RECORD_BYTES).zip(images[start..].chunks_exact_mut(IMAGE_BYTES)) {
        labels.push(rec[0]);
        let (r, gb) = rec[1..].split_at(PLANE);
        let (g, b) = gb.split_at(PLANE);
        for (p, px) in out.chunks_exact_mut(3).enumerate() {
            px[0] = r[p];
            px[1] = g[p];
            px[2] = b[p];
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_precedence_without_touching_the_environment() {
        let flag = Path::new("/flag/dir");
        let tflag = Path::new("/flag/test.bin");
        let env = || Some(OsString::from("/env/dir"));
        let tenv = || Some(OsString::from("/env/test.bin"));

        let p = resolve_with(Some(flag), Some(tflag), env(), tenv());
        assert_eq!(p, DataPaths { dir: flag.into(), test_file: tflag.into(), dir_is_default: false });

        let p = resolve_with(None, None, env(), tenv());
        assert_eq!(p.dir, PathBuf::from("/env/dir"));
        assert_eq!(p.test_file, PathBuf::from("/env/test.bin"));
        assert!(!p.dir_is_default);

        let p = resolve_with(None, None, env(), None);
        assert_eq!(p.test_file, PathBuf::from("/env/dir/test_batch.bin"));

        let p = resolve_with(Some(flag), None, env(), None);
        assert_eq!(p.test_file, PathBuf::from("/flag/dir/test_batch.bin"));

        let p = resolve_with(None, None, Some(OsString::new()), Some(OsString::new()));
        assert_eq!(p.dir, PathBuf::from(DEFAULT_DIR));
        assert_eq!(p.test_file, Path::new(DEFAULT_DIR).join(TEST_FILE));
        assert!(p.dir_is_default);
    }
}
