//! Plumbing for the CIFAR-10 speedrun trainer. The recipe itself (hyperparameters, network,
//! training step) is `main.rs` at the top of the repository; everything here serves it:
//!
//! - `backend`  the op interface the recipe trains with (one method per GPU kernel family)
//! - `cpu`      the plain-Rust reference implementation of every op: the oracle
//! - `whiten`   the whitening filters from the patch covariance (symmetric eigensolver)
//! - `aug`      epoch plans (permutation, shifts, alternating mirror) and TTA views
//! - `data`     reading and validating the CIFAR-10 binary files (memmap2)
//! - `download` fetching, checking and unpacking the official archive, atomically
//! - `kernels`  the CUDA images embedded by build.rs and the choice among them
//! - `gpu`      the guarded CUDA runtime (device open, modules, launches, events, graphs)
//! - `replay`   recorded training steps: when to run op by op, record, or replay
//! - `cli`      command-line flags (hyperparameters are not flags)
//! - `report`   the run header, per-epoch table, result lines and statistics
//! - `testing`  random inputs, comparisons and gradient checks shared by the tests
//! - `error`    the one error type; each failure is one sentence and a non-zero exit
pub mod aug;
pub mod backend;
pub mod cli;
pub mod cpu;
pub mod data;
pub mod download;
pub mod error;
pub mod fanout;
pub mod gpu;
pub mod kernels;
pub mod output;
pub mod replay;
pub mod report;
pub mod schedule;
pub mod selftest;
pub mod testing;
pub mod whiten;

pub use error::{Error, Result};
