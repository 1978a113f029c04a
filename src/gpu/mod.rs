//! The guarded CUDA runtime: open a device without ever panicking, load the embedded kernel
//! images, time with events, capture graphs. Everything CUDA goes through cudarc's driver API,
//! dlopen'ed at run time (the binary links no CUDA library), so this module always compiles
//! and CPU-only CI type-checks it.
//!
//! [`Gpu::open`] checks, in this order, and stops at the first problem with one sentence
//! (`Error::Gpu`, exit code 4):
//! 1. libcuda.so.1 can be loaded: "no NVIDIA driver found ...". Checked before anything else:
//!    cudarc *panics* when it cannot load the library, so this probe is what keeps a machine
//!    without a driver (CI) from crashing.
//! 2. the driver initialises and has the device: "no CUDA-capable GPU detected ...", or the
//!    driver's own error; a driver lacking an entry point we use is named as too old.
//! 3. the GPU is compute capability 7.0 or newer: `unsupported GPU <name> (sm_XY) ...`.
//! 4. the binary has kernels: `this binary was built without CUDA kernels: <why>; ...`.
//! 5. every embedded module has an image for this GPU and loads ([`crate::kernels::select`]).
//!
//! Why the hardware checks come before the kernels check: each message names the most
//! fundamental obstacle. On a machine with no driver or no GPU, "install the CUDA toolchain and
//! rebuild" would be a fix that fixes nothing; there the missing hardware is the news. On a GPU
//! machine running a binary built without a compiler, step 4 says so, with the fix.
//!
//! All work runs on the one stream [`Gpu::stream`], so cudarc's cross-stream event tracking is
//! switched off at open (it would record events around every launch and break graph capture).
//! The one exception synchronises by hand: a recorded step's weight gradients on a second
//! stream, forked and joined by events ([`Gpu::overlap`], src/gpu/backend.rs `fork`,
//! `join_side`).
use crate::error::{Error, Result};
use crate::kernels::{self, Image};
use cudarc::driver::{
    result, sys, CudaContext, CudaEvent, CudaFunction, CudaGraph, CudaModule, CudaStream, DriverError,
};
use cudarc::nvrtc::Ptx;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

mod backend;
#[cfg(test)]
mod tests;

pub use backend::{Dtype, GBuf, GBytes, GWords, GpuGraph, KernelTime};

/// What a run header and every GPU test failure print about the device.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// Compute capability (major, minor), e.g. (9, 0).
    pub cc: (i32, i32),
    /// Streaming multiprocessors.
    pub sms: i32,
    /// Total device memory in bytes.
    pub mem_bytes: usize,
    /// The CUDA version the driver supports, from cuDriverGetVersion, e.g. "13.0".
    pub driver_version: String,
    /// Largest dynamic shared memory per block after opt-in, in bytes (see [`set_max_dynamic_smem`]).
    pub smem_optin: i32,
}

impl std::fmt::Display for DeviceInfo {
    /// One line, e.g. `NVIDIA H100 80GB HBM3, sm_90, 132 SMs, 79.6 GiB, driver CUDA 13.0`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gib = self.mem_bytes as f64 / (1u64 << 30) as f64;
        write!(
            f,
            "{}, sm_{}{}, {} SMs, {gib:.1} GiB, driver CUDA {}",
            self.name, self.cc.0, self.cc.1, self.sms, self.driver_version
        )
    }
}

/// An open device with every embedded kernel module loaded.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    /// The stream all work runs on (a real stream, not the legacy default one: capturable).
    pub stream: Arc<CudaStream>,
    pub info: DeviceInfo,
    modules: BTreeMap<&'static str, (Arc<CudaModule>, Image)>,
    /// Which convolution kernels `conv3x3` / `conv3x3_bwd` launch (see [`ConvPath`]).
    pub conv_path: ConvPath,
    /// Whether the mma convs take the BatchNorm sums in their epilogues (default), or run them
    /// as separate reductions as on the wmma path ([`SUMS_ENV`]`=0`). On an H200 the fused sums
    /// cost 0.85 ms per step with the register-staged kernels (bench-pass2) and save 0.44 ms with
    /// the all-cp.async ones (bench/logs/2026-11-26-h200-bench-pass3.log).
    pub epilogue_sums: bool,
    /// A diagnostic for the bench's "main loop" lines (false otherwise): the mma-family conv
    /// kernels get null outputs and skip their epilogues (stores, pooling, the fused sums), so
    /// a line with it against one without is what the epilogue costs. Outputs are not written.
    pub mainloop_only: bool,
    /// A diagnostic for the bench's "register epilogue" lines (false otherwise): the wgmma
    /// forwards and input gradients with sums (not the persistent ones) take their former
    /// epilogue, unrolled over the tile's column pairs from the accumulators, instead of the loop
    /// over shared memory; the outputs are the same (y, argmax and da bit for bit, the
    /// statistics and sums to rounding).
    pub register_epilogue: bool,
    /// Every kernel launched with programmatic stream serialization (cuLaunchKernelEx; [`pdl`]
    /// decides, [`PDL_ENV`] overrides): on sm_90 the next kernel's blocks are scheduled while
    /// the previous kernel's last wave runs, onto the SMs its tail leaves idle, and wait at their
    /// first statement (`pdl_entry`: griddepcontrol.wait, kernels/common.cuh) until it has
    /// completed; the launch latency between the step's kernels is hidden instead of paid. The
    /// results are the same either way.
    pub pdl: bool,
    /// In a recorded step (CUDA graph), each layer's weight gradient (with its slices' sum)
    /// runs on a second stream, forked from the main one once the layer's output gradient is
    /// ready and joined back before the next op that is not part of the backward chain: the
    /// weight gradients' blocks take the SMs the input-gradient chain leaves idle (its input
    /// gradients' last waves, its small finalisation kernels). They need each layer's output
    /// gradient and kept input only, which nothing in the chain rewrites, and their slices go
    /// to a workspace of their own. Op by op (the first step, the autotune, the bench's op
    /// lines) everything stays on the main stream. [`OVERLAP_ENV`]=0 turns it off; the results
    /// are the same either way.
    pub overlap: bool,
    /// With [`Gpu::overlap`], a recorded step's Muon too goes to the second stream (after the
    /// weight gradients issued there before it, in their order), in a workspace of its own: the
    /// recipe calls Muon for the deep layers (2–5) as soon as their weight gradients are issued,
    /// so its small Newton–Schulz launches overlap the shallow layers' backward instead of
    /// following it. [`MUON_SIDE_ENV`]=0 keeps Muon on the main stream; the autotune also times
    /// that ([`MIXED_MUON_MAIN`]). The results are the same either way.
    pub muon_side: bool,
    /// [`MUON_SIDE_ENV`]'s choice.
    muon_side_wanted: bool,
    /// The second stream of [`Gpu::overlap`].
    side: Option<Arc<CudaStream>>,
    /// [`OVERLAP_ENV`]'s choice: the warm-up's autotune times the mixed path both with the
    /// overlap and without it ([`MIXED_ONE_STREAM`]) and keeps the faster.
    overlap_wanted: bool,
    /// With [`Gpu::overlap`], a recorded step's main-stream launches (the input-gradient chain,
    /// the step's critical path) carry the context's greatest scheduling priority
    /// (`CU_LAUNCH_ATTRIBUTE_PRIORITY`) and the second stream's the default, least one: when an
    /// SM frees up, the chain's waiting blocks take it before a weight gradient's. Off where the
    /// context has one priority only, or with [`PRIORITY_ENV`]=0.
    pub chain_priority: bool,
    /// The greatest priority (cuCtxGetStreamPriorityRange), numerically the smallest.
    priority_high: i32,
    /// Why [`Gpu::overlap`] was switched off: a recording with it failed (the error), and
    /// succeeded without it.
    pub overlap_off: Option<String>,
    /// Why [`Gpu::pdl`] is off though the GPU and driver should have it: its probe at open
    /// failed (the error), so the kernels are launched plainly.
    pub pdl_off: Option<String>,
    /// The conv paths the warm-up's autotune chooses from (`Backend::variants`): the tunable ones,
    /// or those [`CONV_ENV`] lists (one name pins it: no choice).
    pub conv_tune: Vec<ConvPath>,
    /// Kernel handles, workspace and temporaries of the `Backend` ops (src/gpu/backend.rs).
    ops: backend::OpState,
}

/// The convolution kernels (forward, weight gradient, input gradient): `Mma` (mma.sync +
/// ldmatrix + cp.async, 128×64 tiles of four 64×32 warp tiles, compute capability ≥ 8.0),
/// `MmaWide` (the same with 64×64 warp tiles: 128×128 block tiles wherever the GEMM's N, the
/// output channels or for the input gradient the input channels, is ≥ 128, 256×64 for the
/// forward and input gradient elsewhere; half the shared-memory reads and two thirds of the
/// copies per MMA, 2 blocks per SM instead of 4; the weight gradient stays 128×64 where N < 128),
/// `Img` (compute capability ≥ 8.0: `Mma` but for the forward of the layers whose image and 64
/// filters fit the shared memory, the recipe's first three, which keeps both there and reads the
/// A fragments straight from the image: one block per image, no im2col stage, each input byte
/// read once instead of once per tap), `Wgmma` (compute capability 9.0, from the sm_90a cubin: the three GEMMs as warpgroup MMAs,
/// wgmma, on 128-byte-swizzled shared-memory stages: 128×256 tiles where the GEMM's N is ≥ 128,
/// 256×64 for the other forwards and input gradients, 256×32 for input gradients of ≤ 32
/// channels, 128×64 for weight gradients of 64 channels), `Wgmma2` (compute capability 9.0: the
/// same instructions on tiles that let two blocks share an SM, so one block's epilogue overlaps
/// the other's main loop: 128×128 in 3 stages where N ≥ 128, 128×64 where 32 < N < 128, else
/// `Wgmma`'s), `WgmmaP` (compute capability 9.0: `Wgmma`, but the forwards and input gradients
/// on its 128×256 and 256×64 tiles in persistent blocks, one per SM, that loop over the row
/// tiles with one pipeline, so a tile's first copies are in flight during the previous tile's
/// epilogue), `Tma` (compute capability 9.0: as
/// `Wgmma`, but the 128×256 forwards and input gradients of 256-channel weights run in 2-CTA
/// clusters that share one bulk (TMA) copy of each weight tile, multicast into both CTAs' shared
/// memory: half the weight traffic from L2 per CTA), `Tma4` (the same in 4-CTA clusters: a
/// quarter) or `Wmma` (nvcuda::wmma, 64×64 tiles,
/// every GPU). `Mixed` is not a kernel family: per GEMM (each layer's forward, weight gradient
/// and input gradient at its shape) it takes the fastest of the other sm_80+ paths, timed on the
/// real operands the first time that GEMM runs outside a recording (src/gpu/backend.rs,
/// `tune_gemm`). `Gpu::open` picks
/// `Mma` where the GPU has it; the environment variable `SPEEDRUN_CONV=wmma` (or `mma`,
/// `mma128`, `img`, `wgmma`, `wgmma2`, `wgmmap`, `tma`, `tma4`, `mixed`) overrides, and a comma list (`SPEEDRUN_CONV=mma,mma128`) is the
/// set the warm-up's autotune chooses from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvPath {
    Wmma,
    Mma,
    MmaWide,
    Img,
    Wgmma,
    Wgmma2,
    WgmmaP,
    Tma,
    Tma4,
    Mixed,
}

/// Environment variable that overrides the convolution kernels: `wmma`, `mma`, `mma128` or `wgmma`
/// (pinned), or a comma list of them (the autotune's choices).
pub const CONV_ENV: &str = "SPEEDRUN_CONV";
/// Environment variable that turns the mma convs' epilogue sums off (`0`) or on (`1`, default).
pub const SUMS_ENV: &str = "SPEEDRUN_EPILOGUE_SUMS";

/// [`SUMS_ENV`]'s value (None: unset) as a switch; anything but 0 or 1 is an error.
pub fn epilogue_sums(env: Option<&str>) -> Result<bool> {
    switch(SUMS_ENV, env, true)
}

/// Set to 0, the kernels are launched one after another as before (cuLaunchKernel) instead of
/// with programmatic dependent launch; see [`Gpu::pdl`].
pub const PDL_ENV: &str = "SPEEDRUN_PDL";

/// Whether the kernels are launched with programmatic dependent launch: where the GPU has it
/// (compute capability 9.0 and newer) and the driver captures it into graphs (CUDA 12.3 and
/// newer), unless [`PDL_ENV`] is 0; [`PDL_ENV`]=1 where they lack it is an error naming why.
pub fn pdl(info: &DeviceInfo, env: Option<&str>) -> Result<bool> {
    let driver = info.driver_version.split_once('.').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
    let why_not = if info.cc.0 < 9 {
        Some(format!("{} is sm_{}{}; it needs compute capability 9.0", info.name, info.cc.0, info.cc.1))
    } else if driver.is_none_or(|v: (u32, u32)| v < (12, 3)) {
        Some(format!("the driver supports CUDA {}; graphs take it from CUDA 12.3", info.driver_version))
    } else {
        None
    };
    let on = switch(PDL_ENV, env, why_not.is_none())?;
    match why_not {
        Some(why) if on => {
            Err(Error::Gpu(format!("{PDL_ENV}=1: programmatic dependent launch is not available: {why}")))
        }
        _ => Ok(on),
    }
}

/// What [`Gpu::open`] makes of programmatic dependent launch's probe (`probe`, with [`PDL_ENV`]
/// = `env`): None, it stays on; Some(why), it is switched off; an error where it was asked for
/// by name (`1`).
fn pdl_after_probe(probe: Result<()>, env: Option<&str>) -> Result<Option<String>> {
    match probe {
        Ok(()) => Ok(None),
        Err(e) if env.map(str::trim) == Some("1") => {
            Err(Error::Gpu(format!("{PDL_ENV}=1: programmatic dependent launch failed its probe: {e}")))
        }
        Err(e) => Ok(Some(format!("its probe failed ({e})"))),
    }
}

/// Set to 0, a recorded step runs every kernel on the one stream; see [`Gpu::overlap`].
pub const OVERLAP_ENV: &str = "SPEEDRUN_OVERLAP";

/// The autotune variant (`Backend::variants`): the mixed path with a recorded step's weight
/// gradients on the main stream ([`Gpu::overlap`] off), timed beside `mixed` where the overlap
/// is on, so that a GPU on which the overlap loses trains without it.
pub const MIXED_ONE_STREAM: &str = "mixed/one-stream";

/// Set to 0, a recorded step's Muon stays on the main stream; see [`Gpu::muon_side`].
pub const MUON_SIDE_ENV: &str = "SPEEDRUN_MUON_SIDE";

/// The autotune variant: the mixed path with the overlap but Muon on the main stream
/// ([`Gpu::muon_side`] off), timed beside `mixed` where both are on.
pub const MIXED_MUON_MAIN: &str = "mixed/muon-main";

/// Set to 0, the overlapped step's main-stream kernels keep the default priority; see
/// [`Gpu::chain_priority`].
pub const PRIORITY_ENV: &str = "SPEEDRUN_CHAIN_PRIORITY";

/// An environment switch `name` (value `env`, None: unset): 0 or 1, `default` when unset or
/// empty; anything else is an error.
fn switch(name: &str, env: Option<&str>, default: bool) -> Result<bool> {
    match env.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some("1") => Ok(true),
        Some("0") => Ok(false),
        Some(v) => Err(Error::Gpu(format!("{name}={v:?}: expected 0 or 1"))),
    }
}

impl ConvPath {
    pub fn name(self) -> &'static str {
        match self {
            ConvPath::Wmma => "wmma",
            ConvPath::Mma => "mma",
            ConvPath::MmaWide => "mma128",
            ConvPath::Img => "img",
            ConvPath::Wgmma => "wgmma",
            ConvPath::Wgmma2 => "wgmma2",
            ConvPath::WgmmaP => "wgmmap",
            ConvPath::Tma => "tma",
            ConvPath::Tma4 => "tma4",
            ConvPath::Mixed => "mixed",
        }
    }
    /// Whether the path runs the sm_80+ kernels (mma.sync, and on `Wgmma` also wgmma): the
    /// activated input, the fp16 weight copies, the epilogue sums.
    pub fn is_mma(self) -> bool {
        self != ConvPath::Wmma
    }
    /// Whether the path runs sm_90a kernels (wgmma; on `Tma` and `Tma4` also clusters and bulk
    /// copies).
    pub fn is_sm90(self) -> bool {
        matches!(self, ConvPath::Wgmma | ConvPath::Wgmma2 | ConvPath::WgmmaP | ConvPath::Tma | ConvPath::Tma4)
    }
    /// CTAs per cluster of the multicast kernels this path runs (1: none).
    pub fn cluster(self) -> u32 {
        match self {
            ConvPath::Tma => 2,
            ConvPath::Tma4 => 4,
            _ => 1,
        }
    }
    /// The paths a GPU of compute capability `cc` can run, best first (9.0 has every kernel
    /// family). `Wgmma`, `Wgmma2`, `WgmmaP`, `Tma` and `Tma4` need exactly 9.0: their kernels are compiled
    /// for sm_90a only (elsewhere they trap).
    pub fn available(cc: (i32, i32)) -> &'static [ConvPath] {
        if cc == (9, 0) {
            &[
                ConvPath::Mma,
                ConvPath::MmaWide,
                ConvPath::Img,
                ConvPath::Wgmma,
                ConvPath::Wgmma2,
                ConvPath::WgmmaP,
                ConvPath::Tma,
                ConvPath::Tma4,
                ConvPath::Wmma,
            ]
        } else if cc.0 >= 8 {
            &[ConvPath::Mma, ConvPath::MmaWide, ConvPath::Img, ConvPath::Wmma]
        } else {
            &[ConvPath::Wmma]
        }
    }
    /// [`Self::available`] split into (every path but the sm_90a ones, wgmma, wgmma2, wgmmap, tma and tma4 if
    /// `cc` has them): the self-test and the bench run the sm_90a kernels after everything
    /// else, since a fault in one loses the CUDA context and with it every later line.
    pub fn wgmma_last(cc: (i32, i32)) -> (Vec<ConvPath>, Vec<ConvPath>) {
        Self::available(cc).iter().partition(|&&p| !p.is_sm90())
    }
    /// The mma kernel families for `cc` (the trainer times each in its warm-up and keeps the
    /// fastest, unless [`CONV_ENV`] pins one), the default first; `Mixed` chooses among these.
    pub fn tunable(cc: (i32, i32)) -> Vec<ConvPath> {
        Self::available(cc).iter().copied().filter(|p| p.is_mma()).collect()
    }
    /// The path named `name` ("wmma", "mma", "mma128", "img", "wgmma", "wgmma2", "wgmmap", "tma", "tma4",
    /// "mixed").
    pub fn named(name: &str) -> Option<ConvPath> {
        Self::available((9, 0)).iter().copied().chain([ConvPath::Mixed]).find(|p| p.name() == name)
    }
    /// Whether a GPU of compute capability `cc` can run `self` (`Mixed`: where there are two
    /// mma kernel families to choose from).
    pub fn runs_on(self, cc: (i32, i32)) -> bool {
        match self {
            ConvPath::Mixed => Self::tunable(cc).len() >= 2,
            p => Self::available(cc).contains(&p),
        }
    }
    /// The path for `cc`, given the value of [`CONV_ENV`] (None: unset); an unknown name or a
    /// path the GPU lacks is an error.
    pub fn choose(cc: (i32, i32), env: Option<&str>) -> Result<ConvPath> {
        let have = Self::available(cc);
        let Some(v) = env.map(str::trim).filter(|v| !v.is_empty()) else { return Ok(have[0]) };
        let Some(want) = Self::named(v) else {
            return Err(Error::Gpu(format!(
                "{CONV_ENV}={v:?}: expected \"wmma\", \"mma\", \"mma128\", \"img\", \"wgmma\", \"wgmma2\", \"wgmmap\", \"tma\", \"tma4\" or \"mixed\""
            )));
        };
        if !want.runs_on(cc) {
            let need =
                if want.is_sm90() { "compute capability 9.0 (H100, H200)" } else { "compute capability 8.0 or newer" };
            return Err(Error::Gpu(format!("{CONV_ENV}={v} needs {need}; this GPU is sm_{}{}", cc.0, cc.1)));
        }
        Ok(want)
    }
    /// What [`CONV_ENV`] asks for on `cc` (None: unset), default first: unset, the tunable paths
    /// and `Mixed` where there are two or more (or the one available); one name, that path
    /// alone (pinned); a comma list such as `mma,mma128`, those paths (the warm-up tunes over
    /// them: a way to leave one out).
    pub fn choose_list(cc: (i32, i32), env: Option<&str>) -> Result<Vec<ConvPath>> {
        let v = env.map(str::trim).unwrap_or("");
        if v.is_empty() {
            let mut t = Self::tunable(cc);
            if ConvPath::Mixed.runs_on(cc) {
                t.push(ConvPath::Mixed);
            }
            return Ok(if t.is_empty() { vec![Self::available(cc)[0]] } else { t });
        }
        let mut list = Vec::new();
        for name in v.split(',') {
            let p = Self::choose(cc, Some(name))?;
            if name.trim().is_empty() || list.contains(&p) {
                return Err(Error::Gpu(format!("{CONV_ENV}={v:?}: each path once, separated by commas")));
            }
            list.push(p);
        }
        Ok(list)
    }
}

/// Held by every test of this crate that opens the device. Cargo runs tests on parallel threads,
/// and all of them share the device's primary context: a graph capture in one test must not
/// overlap another test's context-wide work (CUDA may synchronise the context to load a kernel
/// lazily on first use, which fails and invalidates a capture in progress on any stream).
#[cfg(test)]
pub(crate) fn device_test_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Set once libcuda has been found: only then may error formatting ask the driver for text.
static DRIVER_LOADED: AtomicBool = AtomicBool::new(false);

/// Entry points needed before we know whether there is a GPU (error text and cuInit).
const SYMBOLS_INIT: &[&str] =
    &["cuInit", "cuGetErrorName", "cuGetErrorString", "cuDriverGetVersion", "cuDeviceGetCount"];
/// Everything else cudarc (with cuda-12090 bindings) calls for what this program does: context,
/// device queries, modules, launches, memory, events, graphs. All exist since CUDA 12.0
/// (driver R525). Checked up front because cudarc panics on the first call to a missing one.
const SYMBOLS_USED: &[&str] = &[
    "cuDeviceGet",
    "cuDeviceGetName",
    "cuDeviceTotalMem_v2",
    "cuDeviceGetAttribute",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxSetCurrent",
    "cuCtxGetCurrent",
    "cuCtxSynchronize",
    "cuCtxGetStreamPriorityRange",
    "cuModuleLoadData",
    "cuModuleUnload",
    "cuModuleGetFunction",
    "cuFuncGetAttribute",
    "cuFuncSetAttribute",
    "cuLaunchKernel",
    "cuLaunchKernelEx",
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuStreamSynchronize",
    "cuStreamWaitEvent",
    "cuStreamBeginCapture_v2",
    "cuStreamEndCapture",
    "cuGraphInstantiateWithFlags",
    "cuGraphUpload",
    "cuGraphLaunch",
    "cuGraphExecDestroy",
    "cuGraphDestroy",
    "cuEventCreate",
    "cuEventRecord",
    "cuEventSynchronize",
    "cuEventElapsedTime",
    "cuEventQuery",
    "cuEventDestroy_v2",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemAllocAsync",
    "cuMemFreeAsync",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyDtoHAsync_v2",
    "cuMemcpyDtoDAsync_v2",
    "cuMemsetD8Async",
    "cuMemGetInfo_v2",
];

/// Why libcuda.so.1 cannot be loaded, in the dynamic loader's words (cudarc only tells whether
/// it can): "cannot open shared object file" (no driver installed) differs from a driver library
/// that is there but broken.
fn dlopen_error() -> String {
    // SAFETY: dlopens libcuda.so.1 (running its initialisers, as cudarc would) and closes it again.
    match unsafe { libloading::Library::new("libcuda.so.1") } {
        Ok(_) => "it loads under this name, but none of cudarc's names did".into(),
        // libloading says "dlopen failed"; the loader's own text is its source
        Err(e) => std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string()),
    }
}

impl Gpu {
    /// Opens device `ordinal` and loads every embedded kernel module. Never panics; see the module
    /// docs for the order of checks and their messages.
    pub fn open(ordinal: usize) -> Result<Gpu> {
        // 1. The driver library. cudarc panics (it does not return Err) when it cannot load it.
        // SAFETY: only dlopens the candidate library names and closes them again.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::Gpu(format!(
                "no NVIDIA driver found (libcuda.so.1 could not be loaded: {})",
                dlopen_error()
            )));
        }
        if let Some(s) = missing_symbol(SYMBOLS_INIT) {
            return Err(Error::Gpu(format!(
                "the CUDA driver library (libcuda.so.1) lacks {s}: it is not a usable NVIDIA driver"
            )));
        }

        // From here on, error messages may ask the driver for its text (cuGetErrorString).
        DRIVER_LOADED.store(true, Ordering::Relaxed);

        // 2. Driver initialisation and the device.
        guarded("initialising the CUDA driver", result::init)?;
        let driver_version = guarded("querying the driver version", || {
            let mut v = 0;
            // SAFETY: one out-pointer to a live integer.
            unsafe { sys::cuDriverGetVersion(&mut v) }.result().map(|_| v)
        })?;
        let driver_version = format!("{}.{}", driver_version / 1000, driver_version % 1000 / 10);
        if let Some(s) = missing_symbol(SYMBOLS_USED) {
            return Err(Error::Gpu(format!(
                "the NVIDIA driver (CUDA {driver_version}) is too old: libcuda.so.1 lacks {s}; \
                 this binary needs a driver for CUDA 12.0 or newer (R525+)"
            )));
        }
        let count = guarded("counting CUDA devices", CudaContext::device_count)?;
        if count <= 0 {
            return Err(Error::Gpu("no CUDA-capable GPU detected (the driver reports 0 devices)".into()));
        }
        if ordinal >= count as usize {
            return Err(Error::Gpu(format!(
                "GPU {ordinal} was asked for but the driver sees {count} CUDA device(s) (ordinals 0..{})",
                count - 1
            )));
        }
        let ctx = guarded(&format!("creating a CUDA context on GPU {ordinal}"), || CudaContext::new(ordinal))?;
        let attr =
            |a: sys::CUdevice_attribute, what: &str| guarded(&format!("querying the {what}"), || ctx.attribute(a));
        let info = DeviceInfo {
            ordinal,
            name: guarded("querying the GPU name", || ctx.name())?,
            cc: guarded("querying the compute capability", || ctx.compute_capability())?,
            sms: attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, "SM count")?,
            mem_bytes: guarded("querying the GPU memory size", || ctx.total_mem())?,
            driver_version,
            smem_optin: attr(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
                "shared memory opt-in limit",
            )?,
        };

        // 3. The architecture.
        let (maj, min) = info.cc;
        if maj < 7 {
            return Err(Error::Gpu(format!(
                "unsupported GPU {} (sm_{maj}{min}): needs compute capability 7.0 or newer",
                info.name
            )));
        }

        // 4. The kernels.
        if let Some(why) = kernels::MISSING {
            return Err(Error::Gpu(format!(
                "this binary was built without CUDA kernels: {why}; run `bash scripts/install-cuda-toolchain.sh` and rebuild"
            )));
        }

        // One stream for everything (but the overlapped weight gradients, synchronised by hand);
        // such code needs no per-buffer events.
        // SAFETY: all work is issued on `stream` or ordered against it by events (module docs).
        unsafe { ctx.disable_event_tracking() };
        let stream = guarded("creating a CUDA stream", || ctx.new_stream())?;

        // 5. One image per module for this architecture.
        let mut modules = BTreeMap::new();
        for m in kernels::MODULES {
            let Some(image) = kernels::select(m, maj, min) else {
                let archs: Vec<String> = m.cubins.iter().map(|(sm, _)| format!("sm_{sm}")).collect();
                return Err(Error::Gpu(format!(
                    "no kernel image for {} (sm_{maj}{min}) in this binary: module {} was compiled by {} for {} and compute_90 PTX",
                    info.name,
                    m.name,
                    kernels::COMPILER,
                    archs.join(", ")
                )));
            };
            let what = format!("loading kernel module {} ({image}) on {}", m.name, info.name);
            let loaded = guarded(&what, || match image {
                Image::Cubin { bytes, .. } => ctx.load_module(Ptx::from_binary(bytes.to_vec())),
                Image::Ptx(text) => ctx.load_module(Ptx::from_src(text)),
            })
            .map_err(|e| match (image, &e) {
                (Image::Ptx(_), Error::Gpu(msg)) if msg.contains("CUDA_ERROR_UNSUPPORTED_PTX_VERSION") => {
                    Error::Gpu(format!(
                    "{msg}; the driver (CUDA {}) is older than the compiler of the PTX ({}): update the NVIDIA driver",
                    info.driver_version,
                    kernels::COMPILER
                ))
                }
                _ => e,
            })?;
            modules.insert(m.name, (loaded, image));
        }
        let conv_tune = ConvPath::choose_list(info.cc, std::env::var(CONV_ENV).ok().as_deref())?;
        let conv_path = conv_tune[0];
        let epilogue_sums = epilogue_sums(std::env::var(SUMS_ENV).ok().as_deref())?;
        let overlap = switch(OVERLAP_ENV, std::env::var(OVERLAP_ENV).ok().as_deref(), true)?;
        let (mut least, mut greatest) = (0, 0);
        guarded("querying the stream priority range", || {
            // SAFETY: two out-pointers to live integers, the context current (CudaContext::new)
            unsafe { sys::cuCtxGetStreamPriorityRange(&mut least, &mut greatest) }.result()
        })?;
        let chain_priority =
            overlap && greatest < least && switch(PRIORITY_ENV, std::env::var(PRIORITY_ENV).ok().as_deref(), true)?;
        let side = if overlap { Some(guarded("creating a second CUDA stream", || ctx.new_stream())?) } else { None };
        let muon_side = overlap && switch(MUON_SIDE_ENV, std::env::var(MUON_SIDE_ENV).ok().as_deref(), true)?;
        let pdl_env = std::env::var(PDL_ENV).ok();
        let pdl = pdl(&info, pdl_env.as_deref())?;
        let ops = backend::OpState::default();
        let mut gpu = Gpu {
            ctx,
            stream,
            info,
            modules,
            conv_path,
            epilogue_sums,
            mainloop_only: false,
            register_epilogue: false,
            pdl,
            overlap,
            muon_side,
            muon_side_wanted: muon_side,
            side,
            overlap_wanted: overlap,
            chain_priority,
            priority_high: greatest,
            overlap_off: None,
            pdl_off: None,
            conv_tune,
            ops,
        };
        if gpu.overlap {
            gpu.prepare_overlap()?;
        }
        // 6. Programmatic dependent launch, tried once before anything relies on it: where a
        // driver refuses it (a launch attribute, its capture into a graph), the kernels are
        // launched plainly and the run says why, unless it was asked for by name.
        if gpu.pdl {
            let probe = gpu.probe_pdl();
            if let Some(why) = pdl_after_probe(probe, pdl_env.as_deref())? {
                gpu.sync().map_err(|s| Error::Gpu(format!("{why}; after it the GPU fails: {s}")))?;
                gpu.pdl = false;
                gpu.pdl_off = Some(why);
            }
        }
        Ok(gpu)
    }

    /// Runs `f` with the convolution kernels set to `path`, then restores the current choice.
    pub fn with_conv_path<T>(&mut self, path: ConvPath, f: impl FnOnce(&mut Gpu) -> T) -> T {
        let keep = std::mem::replace(&mut self.conv_path, path);
        let r = f(self);
        self.conv_path = keep;
        r
    }

    /// The kernel `name` from module `module` (the stem of `kernels/<module>.cu`).
    pub fn function(&self, module: &str, name: &str) -> Result<CudaFunction> {
        let Some((m, _)) = self.modules.get(module) else {
            let have: Vec<&str> = self.modules.keys().copied().collect();
            return Err(Error::Gpu(format!(
                "no kernel module `{module}` in this binary (embedded: {}); is kernels/{module}.cu missing?",
                have.join(", ")
            )));
        };
        m.load_function(name).map_err(|e| {
            if e.0 == sys::CUresult::CUDA_ERROR_NOT_FOUND {
                Error::Gpu(format!(
                    "kernel `{name}` not found in module `{module}` (kernels/{module}.cu): missing, or not extern \"C\""
                ))
            } else {
                Gpu::err(&format!("looking up kernel `{name}` in module `{module}`"), e)
            }
        })
    }

    /// The image loaded for `module` (e.g. to print "sm_90 SASS" in a run header).
    pub fn image(&self, module: &str) -> Option<Image> {
        self.modules.get(module).map(|(_, i)| *i)
    }

    /// A new event-pair timer on this device.
    pub fn timer(&self) -> Result<Timer> {
        Timer::new(&self.ctx)
    }

    /// Waits for all work on [`Gpu::stream`].
    pub fn sync(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| Gpu::err("waiting for the GPU", e))
    }

    /// A cudarc error as one `Error::Gpu` sentence: `<what>: CUDA_ERROR_X: driver text`.
    /// Out of memory reads `out of GPU memory while <what> (...)`; no device reads `no
    /// CUDA-capable GPU detected (...)`.
    pub fn err(what: &str, e: DriverError) -> Error {
        use sys::CUresult as R;
        let code = describe(e);
        Error::Gpu(match e.0 {
            R::CUDA_ERROR_OUT_OF_MEMORY => format!("out of GPU memory while {what} ({code})"),
            R::CUDA_ERROR_NO_DEVICE => {
                format!("no CUDA-capable GPU detected ({:?} while {what})", e.0)
            }
            R::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH | R::CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE => {
                format!(
                    "the NVIDIA driver cannot run this program while {what} ({code}): update or reinstall the driver"
                )
            }
            _ => format!("{what}: {code}"),
        })
    }
}

/// "CUDA_ERROR_X (text from the driver)"; the text only when the driver is loaded.
fn describe(e: DriverError) -> String {
    let name = format!("{:?}", e.0);
    if !DRIVER_LOADED.load(Ordering::Relaxed) {
        return name;
    }
    match std::panic::catch_unwind(|| e.error_string().map(|s| s.to_string_lossy().into_owned())) {
        Ok(Ok(text)) => format!("{name}: {text}"),
        _ => name,
    }
}

/// Runs a cudarc call, turning both its errors and any panic (cudarc panics on a missing
/// driver symbol) into `Error::Gpu`.
fn guarded<T>(what: &str, f: impl FnOnce() -> std::result::Result<T, DriverError>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| Gpu::err(what, e)),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::Gpu(format!("the CUDA driver library failed while {what}: {msg}")))
        }
    }
}

/// The first of `names` that libcuda does not export, if any. Call only after
/// `is_culib_present()` returned true.
fn missing_symbol(names: &[&'static str]) -> Option<&'static str> {
    // SAFETY: culib() loads the library is_culib_present() found (no panic), and we only look
    // symbols up, never call them through this type.
    let lib = unsafe { sys::culib() };
    names.iter().copied().find(|n| unsafe { lib.get::<unsafe extern "C" fn()>(n.as_bytes()) }.is_err())
}

/// GPU-side timing with a pair of CUDA events (created with CU_EVENT_DEFAULT: `None` would
/// create them with timing disabled).
pub struct Timer {
    start: CudaEvent,
    stop: CudaEvent,
}

impl Timer {
    pub fn new(ctx: &Arc<CudaContext>) -> Result<Timer> {
        let ev = || {
            ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(|e| Gpu::err("creating a CUDA event", e))
        };
        Ok(Timer { start: ev()?, stop: ev()? })
    }

    /// Marks the start on `stream` (does not wait).
    pub fn start(&self, stream: &CudaStream) -> Result<()> {
        self.start.record(stream).map_err(|e| Gpu::err("recording a timing event", e))
    }

    /// Marks the end on `stream`, waits for it and returns the milliseconds since `start`.
    pub fn stop(&self, stream: &CudaStream) -> Result<f32> {
        self.stop.record(stream).map_err(|e| Gpu::err("recording a timing event", e))?;
        self.stop.synchronize().map_err(|e| Gpu::err("waiting for a timing event", e))?;
        self.start.elapsed_ms(&self.stop).map_err(|e| Gpu::err("reading a timing event", e))
    }
}

/// Records everything `body` issues on `stream` into a CUDA graph, instantiates and uploads it;
/// replay with `graph.launch()`. The capture is always ended, also when `body` fails (its error
/// is returned). Do not allocate inside `body`. Turns off cudarc's event tracking for `ctx`
/// (already off for a context from [`Gpu::open`]); buffers used in the graph should be allocated
/// after that, i.e. from a `Gpu`.
pub fn capture<F>(ctx: &Arc<CudaContext>, stream: &Arc<CudaStream>, body: F) -> Result<CudaGraph>
where
    F: FnOnce(&Arc<CudaStream>) -> Result<()>,
{
    // SAFETY: work synchronised by hand (see the module docs).
    unsafe { ctx.disable_event_tracking() };
    stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(|e| Gpu::err("starting a CUDA graph capture", e))?;
    let r = body(stream);
    let g = stream.end_capture(sys::CUgraphInstantiate_flags(0));
    if g.is_err() {
        // cudarc returns an error stored by an earlier call *before* ending the capture: make
        // sure the stream leaves capture mode, or every later launch would be captured too.
        let capturing =
            stream.capture_status().is_ok_and(|s| s != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE);
        if capturing {
            // SAFETY: the stream is valid; the graph the driver hands back is destroyed unused.
            if let Ok(graph) = unsafe { result::stream::end_capture(stream.cu_stream()) } {
                if !graph.is_null() {
                    let _ = unsafe { result::graph::destroy(graph) };
                }
            }
        }
    }
    r?;
    let g = g
        .map_err(|e| Gpu::err("ending a CUDA graph capture", e))?
        .ok_or_else(|| Error::Gpu("the CUDA graph capture recorded no work".into()))?;
    g.upload().map_err(|e| Gpu::err("uploading a CUDA graph", e))?;
    Ok(g)
}

/// Allows launches of `f` with up to `bytes` of dynamic shared memory; required above 48 KB.
/// The device's limit is [`DeviceInfo::smem_optin`] (96 KB V100, 163 KB A100, 99 KB RTX 4090,
/// 227 KB H100). Also prefers the largest shared-memory carveout of the SM's L1 (these kernels
/// copy through L2 with cp.async), so that as many blocks as their launch bounds ask for fit:
/// two 97 KB wgmma weight-gradient blocks per H100 SM, say.
pub fn set_max_dynamic_smem(f: &CudaFunction, bytes: u32) -> Result<()> {
    let v = i32::try_from(bytes)
        .map_err(|_| Error::Gpu(format!("{bytes} bytes of shared memory is not a valid request")))?;
    f.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, v).map_err(|e| {
        Gpu::err(&format!("allowing {bytes} bytes of dynamic shared memory (above the device's opt-in limit?)"), e)
    })?;
    f.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, 100)
        .map_err(|e| Gpu::err("preferring the largest shared-memory carveout", e))
}
