//! One error type for the whole program. Every failure a user can cause or meet (bad data,
//! no GPU, a diverging run) becomes one of these, is printed as one clear sentence and maps to a
//! non-zero exit code; nothing in the program panics on bad input.
use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// Bad command line.
    Usage(String),
    /// Dataset missing, corrupt, wrong size, failed download or checksum.
    Data(String),
    /// No driver, no GPU, unsupported GPU, kernels not built, CUDA errors, out of memory.
    Gpu(String),
    /// Loss became NaN or infinite.
    Diverged(String),
    /// Other I/O (writing logs, JSON, CSV).
    Io(String),
}

impl Error {
    /// Exit status for `main`: 2 usage, 3 data, 4 GPU, 5 diverged, 6 other I/O.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            Error::Data(_) => 3,
            Error::Gpu(_) => 4,
            Error::Diverged(_) => 5,
            Error::Io(_) => 6,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) => write!(f, "usage error: {m}"),
            Error::Data(m) => write!(f, "data error: {m}"),
            Error::Gpu(m) => write!(f, "GPU error: {m}"),
            Error::Diverged(m) => write!(f, "training diverged: {m}"),
            Error::Io(m) => write!(f, "I/O error: {m}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;
