//! `impl Backend for Gpu`: every op of the recipe as launches of the hand-written kernels in
//! `kernels/` (conv, norm, stem, head, optim). Host code here only checks shapes (each
//! violated assumption is one `Error::Gpu` sentence, never mis-indexing), picks grids and
//! workspaces, and launches; all work goes to [`Gpu::stream`] in order, but for a recorded
//! step's weight gradients, which go to a second stream between a fork and a join event
//! ([`Gpu::overlap`]).
//!
//! Storage: a [`GBuf`] always owns room for `len` f32 values and records how its contents are
//! stored. Activations and their gradients (stem output, conv outputs, `da`, `dx`) are written
//! as fp16; parameters, optimizer state, BN statistics, features, logits and the loss
//! accumulator are f32. `upload` stores f32 and `zeros` stores all-zero bytes (valid as either
//! type). An op that expects the other type for an input casts it into a temporary first (a
//! slow path, taken only when tests feed host-uploaded tensors straight to a kernel), and
//! `download` converts whatever is stored to f32. An fp16 tensor occupies the first 2·len bytes,
//! so a buffer poisoned with the f32 bit pattern 0x7FC0_7FC0 reads as NaN in both types.
use super::{ConvPath, Gpu};
use crate::backend::{Backend, BnStats, MuonParam, Norm, Ns, Pre, SgdParam, Shape, Unpool, LRS, STEP_LEN, STEP_WORDS};
use crate::error::{Error, Result};
use crate::replay::Record;
use cudarc::driver::{
    result, sys, CudaEvent, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr,
    DriverError, LaunchConfig,
};
use half::f16;
use std::collections::HashMap;
use std::ffi::c_void;

/// How a [`GBuf`]'s bytes are to be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// All bytes zero (fresh from `zeros`): reads as 0 in either type.
    Zero,
    F32,
    F16,
}

/// A float tensor on the device: `len` values stored as `dtype`.
pub struct GBuf {
    mem: CudaSlice<f32>,
    len: usize,
    dtype: Dtype,
}

impl GBuf {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }
}

/// A byte tensor on the device (u8 images, labels, argmax indices).
pub struct GBytes {
    mem: CudaSlice<u8>,
    len: usize,
}

impl GBytes {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A u32 tensor on the device (packed augmentation words).
pub struct GWords {
    mem: CudaSlice<u32>,
    len: usize,
}

impl GWords {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A recorded CUDA graph, counted in [`OpState`] while it lives.
pub struct GpuGraph {
    graph: CudaGraph,
    _live: std::rc::Rc<()>,
}

/// A loaded kernel and its parameter sizes (None when its PTX entry could not be read).
type Kernel = (CudaFunction, Option<Vec<u8>>);

/// Per-device op state kept in [`Gpu`]: looked-up kernels, a reusable f32 workspace for
/// reductions, split-K partial sums and Muon's matrices, and the temporaries of the current op.
///
/// Recording (CUDA graphs): a graph keeps the addresses of the scratch buffers it was recorded
/// with. So once a graph has been recorded, a scratch buffer that grows keeps its old allocation
/// alive in `retired` (each graph's ops fit the scratch as it was when it was recorded), and while
/// a recording is in progress nothing may be allocated: a temporary or a growth then is an error
/// (run the step once unrecorded first, so that every scratch buffer has its size).
#[derive(Default)]
pub struct OpState {
    /// Each kernel with its parameter sizes in bytes (from the embedded PTX), checked at launch.
    funcs: HashMap<(&'static str, &'static str), Kernel>,
    /// Kernels already allowed more than 48 KB of dynamic shared memory, with the bytes allowed
    /// (`launch_smem`; the image-resident forward's need differs by layer).
    smem_opted: HashMap<(&'static str, &'static str), u32>,
    ws: Option<CudaSlice<f32>>,
    /// a = GELU(pre(x)) in fp16 for the conv being computed (grow-only).
    act: Option<CudaSlice<f32>>,
    /// The weight gradients' split-K slices when they run on the side stream ([`Gpu::overlap`]):
    /// apart from `ws`, which the input gradient uses meanwhile (grow-only).
    side_ws: Option<CudaSlice<f32>>,
    /// Muon's scratch where it may run on the side stream ([`Gpu::muon_side`]): apart from `ws`
    /// (the chain's) and `side_ws` (the weight gradients' issued after it there).
    muon_ws: Option<CudaSlice<f32>>,
    /// Launches go to the side stream (while a weight gradient or Muon is issued there).
    on_side: bool,
    /// Work is on the side stream that the main stream has not waited for yet.
    side_pending: bool,
    /// The fork (main → side) and join (side → main) events (Gpu::open).
    fork_join: Option<(CudaEvent, CudaEvent)>,
    /// The recording in progress forked work onto the side stream.
    forked: bool,
    tmp: Vec<CudaSlice<f32>>,
    /// A graph is being recorded: no allocation allowed.
    recording: bool,
    /// One clone per live graph (held by [`GpuGraph`]): while any exists, grown scratch keeps
    /// its old allocation in `retired`; when none is left, `retired` is freed (stream-ordered,
    /// after every launch already queued).
    graphs: std::rc::Rc<()>,
    retired: Vec<CudaSlice<f32>>,
    /// While [`Gpu::profile`] runs: each launch with an event recorded before and after it.
    profile: Option<Vec<(&'static str, CudaEvent, CudaEvent)>>,
    /// `ConvPath::Mixed`: each conv GEMM's path, chosen by timing (`tune_gemm`), in the order
    /// chosen, with the candidates' milliseconds per call.
    picks: Vec<Pick>,
    /// While `tune_gemm` times a candidate: the path that GEMM takes (the others: their picks),
    /// and for a forward with BatchNorm statistics (an input gradient with pre_bwd's sums)
    /// whether its epilogue takes them.
    force: Option<(Gemm, ConvPath, bool)>,
}

/// `ConvPath::Mixed`'s choice for one GEMM, and the milliseconds per op call it was made from.
/// `fused`: a forward with BatchNorm statistics takes them in its epilogue (else in a separate
/// pass over y, `bn_from_y`); an input gradient with pre_bwd's sums likewise (else
/// `chan_reduce_f16` over da and x, `pre_sums`); for the weight gradient always true.
struct Pick {
    key: GemmKey,
    path: ConvPath,
    fused: bool,
    times: Vec<(ConvPath, bool, f32)>,
}

/// The three GEMMs of a conv layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gemm {
    Fwd,
    Wgrad,
    Dgrad,
}

/// One conv GEMM at one shape, as `ConvPath::Mixed` keys its choices: the input shape, output
/// channels, pooling, and whether the epilogue takes BatchNorm / pre_bwd sums (training) or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GemmKey {
    gemm: Gemm,
    xs: Shape,
    cout: usize,
    pool: bool,
    sums: bool,
}

impl GemmKey {
    /// The mma kernel family's base name and the GEMM's N (output channels; for the input
    /// gradient, the input channels).
    fn base(&self) -> (&'static str, usize) {
        match self.gemm {
            Gemm::Fwd => ("conv3x3_fwd_mma_f16", self.cout),
            Gemm::Wgrad => ("conv3x3_wgrad_mma_f16", self.cout),
            Gemm::Dgrad => ("conv3x3_dgrad_mma_f16", self.xs.c),
        }
    }
    /// e.g. "fwd 31x31x24->64 pool" ("… no sums": without the BatchNorm or pre_bwd sums).
    fn label(&self) -> String {
        let g = match self.gemm {
            Gemm::Fwd => "fwd",
            Gemm::Wgrad => "wgrad",
            Gemm::Dgrad => "dgrad",
        };
        let pool = if self.pool { " pool" } else { "" };
        let sums = if self.sums || self.gemm == Gemm::Wgrad { "" } else { " no sums" };
        format!("{g} {}x{}x{}->{}{pool}{sums}", self.xs.h, self.xs.w, self.xs.c, self.cout)
    }
}

/// Kernel arguments are passed as 8-byte words: pointers and `long long` fill them, `int` and
/// `float` parameters occupy the low 4 bytes (the driver copies exactly the parameter's size
/// from each address; all supported hosts are little-endian).
type Arg = u64;

fn int(v: usize, what: &str) -> Result<Arg> {
    i32::try_from(v)
        .map(|v| v as u32 as u64)
        .map_err(|_| Error::Gpu(format!("{what} = {v} does not fit the kernels' 32-bit index")))
}
fn flt(v: f32) -> Arg {
    v.to_bits() as u64
}
fn long(v: usize) -> Arg {
    v as u64
}

const SGD_MAX: usize = 16;

/// Mirrors `struct SgdArgs` in kernels/optim.cu (passed by value, 592 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
struct SgdArgs {
    p: [u64; SGD_MAX],
    g: [u64; SGD_MAX],
    m: [u64; SGD_MAX],
    n: [i32; SGD_MAX],
    lr_slot: [i32; SGD_MAX],
    wd: [f32; SGD_MAX],
    step: u64,
    count: i32,
    mu: f32,
}
// SAFETY: plain old data laid out exactly like the C struct.
unsafe impl DeviceRepr for SgdArgs {}

const GEMM_BATCH: usize = 8;

/// Mirrors `struct GemmBatch` in kernels/optim.cu (passed by value, 368 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
struct GemmBatch {
    a: [u64; GEMM_BATCH],
    b: [u64; GEMM_BATCH],
    d: [u64; GEMM_BATCH],
    c: [u64; GEMM_BATCH],
    m: [i32; GEMM_BATCH],
    n: [i32; GEMM_BATCH],
    k: [i32; GEMM_BATCH],
    count: i32,
    alpha: f32,
    beta: f32,
    splits: i32,
}
// SAFETY: plain old data laid out exactly like the C struct.
unsafe impl DeviceRepr for GemmBatch {}

/// Mirrors `struct MuonBatch` in kernels/optim.cu (passed by value, 504 bytes): Muon's
/// per-tensor elementwise steps and norms for up to [`GEMM_BATCH`] tensors in one launch each.
#[repr(C)]
#[derive(Clone, Copy)]
struct MuonBatch {
    w: [u64; GEMM_BATCH],
    g: [u64; GEMM_BATCH],
    m: [u64; GEMM_BATCH],
    u: [u64; GEMM_BATCH],
    x: [u64; GEMM_BATCH],
    scal: [u64; GEMM_BATCH],
    n: [i32; GEMM_BATCH],
    rows: [i32; GEMM_BATCH],
    nb: [i32; GEMM_BATCH],
    step: u64,
    count: i32,
    mu: f32,
    lr_slot: i32,
}
// SAFETY: plain old data laid out exactly like the C struct.
unsafe impl DeviceRepr for MuonBatch {}

/// The pointers of a `Pre`: (bn flag, mean, invstd, shift).
#[derive(Clone, Copy)]
struct PrePtrs {
    bn: Arg,
    mean: Arg,
    inv: Arg,
    shift: Arg,
}

/// Makes a grow-only scratch `slot` hold at least `n` f32 values (64 Ki at least), allocated on
/// `stream`; the old allocation is freed, or kept in `retired` once a graph may refer to it
/// (see [`OpState`]). SAFETY of the uninitialised allocation: every scratch user (workspace
/// reductions, split-K partials, Muon's matrices, `act_f16`) writes the values it reads first.
/// The grow-only scratch buffers of [`OpState`].
#[derive(Clone, Copy)]
enum Scratch {
    Ws,
    Act,
    SideWs,
    MuonWs,
}

fn grow(
    stream: &std::sync::Arc<CudaStream>,
    ops: &mut OpState,
    which: Scratch,
    n: usize,
    what: &dyn Fn() -> String,
) -> Result<()> {
    if scratch(ops, which).as_ref().is_some_and(|w| w.len() >= n) {
        return Ok(());
    }
    check(!ops.recording, || format!("{} during a CUDA graph recording: run the step once unrecorded first", what()))?;
    if let Some(old) = scratch(ops, which).take() {
        if std::rc::Rc::strong_count(&ops.graphs) > 1 {
            ops.retired.push(old);
        } // else freed here, before the new one is allocated: it may need the room
    }
    let w = unsafe { stream.alloc::<f32>(n.max(1 << 16)) }.map_err(|e| Gpu::err(&what(), e))?;
    *scratch(ops, which) = Some(w);
    Ok(())
}

fn scratch(ops: &mut OpState, which: Scratch) -> &mut Option<CudaSlice<f32>> {
    match which {
        Scratch::Ws => &mut ops.ws,
        Scratch::Act => &mut ops.act,
        Scratch::SideWs => &mut ops.side_ws,
        Scratch::MuonWs => &mut ops.muon_ws,
    }
}

fn check(ok: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Gpu(msg()))
    }
}

/// A launchable grid: no empty dimension, y and z at most 65535.
fn check_grid(name: &str, grid: (u32, u32, u32)) -> Result<()> {
    check(grid.0 > 0 && grid.1 > 0 && grid.2 > 0, || format!("{name}: empty grid {grid:?}"))?;
    check(grid.1 <= 65535 && grid.2 <= 65535, || format!("{name}: grid {grid:?} exceeds 65535 in y or z"))
}

fn check_len(got: usize, want: usize, what: &str) -> Result<()> {
    check(got == want, || format!("{what} holds {got} values, expected {want}"))
}

/// The conv kernels index pixels (N·H·W, kernels/common.cuh `PixGrid`), and the mma kernels' tap
/// gathers index the values of a tensor of `xs`'s pixels with `cin` or `cout` channels, in 32 bits.
fn check_pixels(op: &str, xs: Shape, cout: usize) -> Result<()> {
    let values = xs.count().saturating_mul(xs.c.max(cout));
    check(values <= i32::MAX as usize, || {
        format!(
            "{op}: {xs:?} with {cout} output channels has {values} values at the input's resolution; the conv \
             kernels index at most 2^31 − 1 (use a smaller batch)"
        )
    })
}

/// Shape rules of the tensor-core conv kernels.
fn check_channels(op: &str, cin: usize, cout: usize) -> Result<()> {
    check(cin % 8 == 0 && cout % 8 == 0 && cin > 0 && cout > 0, || {
        format!(
            "{op}: channel counts must be positive multiples of 8 (16-byte fp16 chunks), got cin {cin}, cout {cout}"
        )
    })?;
    check(cin <= 512, || format!("{op}: at most 512 input channels are supported, got {cin}"))
}

const BLOCK: u32 = 256;
/// Dynamic shared memory of the wide mma convs (`MMA_WIDE_SMEM` in kernels/conv.cu: 3 stages of
/// a 128×40 A tile and a 128×40 B tile, fp16).
pub(super) const WIDE_SMEM: u32 = 61440;
/// The same for the tall ones (`MMA_TALL_SMEM`: 3 stages of 256×40 A and 64×40 B).
pub(super) const TALL_SMEM: u32 = 76800;
/// And for the 256×32 input gradient (`MMA_TALL32_SMEM`: 3 stages of 256×40 A and 32×40 B).
pub(super) const TALL32_SMEM: u32 = 69120;
/// Dynamic shared memory of the wgmma convs (`WG_*_SMEM` in kernels/conv.cu: 4 stages of A and B
/// rows of 128 bytes, + 1 KB to align them): 128×256 tiles (256 threads), 256×64 and 256×32
/// (512 threads), 128×64 (256 threads: the weight gradient of 64 output channels, `Wgmma2`'s
/// forward and input gradient of 64; 2 blocks per SM), and `Wgmma2`'s 128×128 in 3 stages (256
/// threads, 2 blocks per SM).
pub(super) const WG_WIDE_SMEM: u32 = 197632;
pub(super) const WG_TALL_SMEM: u32 = 164864;
pub(super) const WG_TALL32_SMEM: u32 = 148480;
pub(super) const WG_NARROW_SMEM: u32 = 99328;
pub(super) const WG_WIDE2_SMEM: u32 = 99328;
/// The multicast (`ConvPath::Tma`, `Tma4`) 128×256 kernels' (`WG_MC_SMEM`): [`WG_WIDE_SMEM`]
/// and the stages' mbarriers.
pub(super) const WG_MC_SMEM: u32 = 197696;
/// The wgmma weight-gradient kernels as `Gpu::conv_kernels` names them on `ConvPath::WgmmaP`
/// (one wave of split-K slices).
const ONE_WAVE: [(&str, &str); 2] = [
    ("conv3x3_wgrad_wgmma_f16", "conv3x3_wgrad_wgmma_f16, one wave"),
    ("conv3x3_wgrad_wgmma_narrow_f16", "conv3x3_wgrad_wgmma_narrow_f16, one wave"),
];
/// Shared memory of an sm_90 SM (228 KB), and what the driver reserves per block (1 KB): the
/// blocks of a kernel with `smem` bytes that fit an SM at once are `SM90_SMEM / (smem +
/// BLOCK_SMEM_RESERVED)` (conv.cu's static_assert on two wgmma2 blocks per SM uses the same).
const SM90_SMEM: usize = 233_472;
const BLOCK_SMEM_RESERVED: usize = 1024;
/// Threads per block of `wgrad_reduce_f32` (`WR_THREADS` in kernels/conv.cu): 32 values each.
pub(super) const WR_THREADS: u32 = 256;

/// An sm_80+ conv kernel as `Gpu::mma_kernel` picks it: name, block tile (rows × columns),
/// dynamic shared memory, threads per block, and whether it is a wgmma kernel (its input
/// gradient reads the weights K-major).
#[derive(Clone, Copy, Debug)]
struct MmaKernel {
    name: &'static str,
    tm: usize,
    tn: usize,
    smem: u32,
    threads: u32,
    wgmma: bool,
    /// An image-resident kernel: the forward's grid rows are the batch, not ⌈GEMM rows / tm⌉,
    /// and the weight gradient's slices are whole images.
    per_image: bool,
    /// CTAs per cluster along the grid's x (1: no clusters; 2, 4: a multicast kernel,
    /// `_wgmma_mc_` / `_wgmma_mc4_`, its grid padded to whole clusters and its weights in
    /// `conv_weights_f16`'s bulk-copy layout, layout 2).
    cluster: u32,
    /// A persistent kernel (`_wgmma_p_`): at most one block per SM along the grid's x, each
    /// looping over the row tiles x, x + blocks, …; its BatchNorm partials still one row per tile.
    persistent: bool,
}

impl MmaKernel {
    /// Grid rows for `rows` tiles: whole clusters.
    fn grid_rows(&self, rows: u32) -> u32 {
        rows.next_multiple_of(self.cluster)
    }
    /// Blocks along the grid's x for `rows` row tiles on a GPU of `sms` SMs: [`Self::grid_rows`],
    /// or for a persistent kernel one per SM at most (one per tile where there are fewer).
    fn launch_rows(&self, rows: u32, sms: u32) -> u32 {
        if self.persistent {
            rows.min(sms.max(1))
        } else {
            self.grid_rows(rows)
        }
    }
    /// `conv_weights_f16`'s layout for this kernel's B: 2 (bulk-copy blocks) for a multicast
    /// kernel, else 1 (K-major) for a wgmma input gradient's wt, 0 otherwise.
    fn weight_layout(&self) -> u64 {
        if self.cluster > 1 {
            2
        } else {
            self.wgmma as u64
        }
    }
}

/// Threads per block of the image-resident kernels (`IMG_THREADS` in kernels/conv.cu).
pub(super) const IMG_THREADS: u32 = 256;

/// Bytes of an `h`×`w`×`cin` image in the image-resident kernels' shared memory, with the
/// 16-byte zero row after it (`ImgLayout` in kernels/conv.cu): 16-byte units, pixel stride
/// P | 1 (P = cin/8), row stride the first ≥ w·(P | 1) that is 4 mod 8.
fn img_image_smem(h: usize, w: usize, cin: usize) -> usize {
    let pp = (cin / 8) | 1;
    let row = w * pp + (12 - w * pp % 8) % 8;
    h * row * 16 + 16
}

/// Bytes of dynamic shared memory `conv3x3_fwd_img_f16` needs (`ImgLayout`; the kernel traps
/// when given less): the image and zero row, 64 filter rows of ⌈9·cin/16⌉·16 + 8 halves, and
/// 4 × 64 × 2 f64 of column sums.
pub(super) fn img_smem(h: usize, w: usize, cin: usize) -> usize {
    let ldw = (9 * cin).next_multiple_of(16) + 8;
    img_image_smem(h, w, cin) + 64 * ldw * 2 + 4 * 64 * 2 * 8
}

/// The same for `conv3x3_wgrad_img_f16` (`img_wgrad_smem`): the image and zero row, then two
/// stages of 64 rows of the output gradient, 72 halves each.
pub(super) fn img_wgrad_smem(h: usize, w: usize, cin: usize) -> usize {
    img_image_smem(h, w, cin) + 2 * 64 * 72 * 2
}
/// The image-resident weight gradient's largest K = 9·cin (`IMG_WG_K`: 4 warps × 7 n8 tiles).
pub(super) const IMG_WG_K: usize = 224;
/// Timed calls per candidate when `ConvPath::Mixed` chooses a GEMM's kernel (after one untimed).
const TUNE_REPS: usize = 3;
/// Block size of the per-channel stage-2 reductions (`CHAN_FIN_THREADS` in kernels/norm.cu).
const CHAN_FIN_THREADS: u32 = 256;
/// Block size of `chan_reduce_f16` (`CHAN_REDUCE_THREADS` in kernels/norm.cu): 8 channels per
/// thread, so at most 8 × this many channels.
const CHAN_REDUCE_THREADS: u32 = 256;
/// kernels/head.cu: examples per slice of the head's weight gradient, its largest class count,
/// and the cross-entropy's examples per block (`HEAD_SLICE`, `HEAD_MAX_CLASSES`, `XENT_THREADS`).
const HEAD_SLICE: usize = 128;
const HEAD_MAX_CLASSES: usize = 32;
const XENT_THREADS: usize = 128;

/// Stage-1 split of a per-channel reduction over `p` positions (norm.cu): (blocks, positions
/// per block), at most 512 blocks of at least 64 positions.
fn stage1_split(p: usize) -> (usize, usize) {
    let chunk = p.div_ceil(p.div_ceil(64).min(512));
    (p.div_ceil(chunk), chunk)
}

fn blocks(len: usize) -> Result<u32> {
    u32::try_from(len.div_ceil(BLOCK as usize).max(1))
        .map_err(|_| Error::Gpu(format!("{len} elements is too many for one launch")))
}

impl Gpu {
    fn func_params(&mut self, module: &'static str, name: &'static str) -> Result<Kernel> {
        if let Some(f) = self.ops.funcs.get(&(module, name)) {
            return Ok(f.clone());
        }
        let f = self.function(module, name)?;
        let params = crate::kernels::module(module).and_then(|m| ptx_params(m.ptx, name));
        self.ops.funcs.insert((module, name), (f.clone(), params.clone()));
        Ok((f, params))
    }

    fn func(&mut self, module: &'static str, name: &'static str) -> Result<CudaFunction> {
        Ok(self.func_params(module, name)?.0)
    }

    /// Launches `module::name` on the stream; launch errors become one sentence.
    fn launch(
        &mut self,
        module: &'static str,
        name: &'static str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        args: &[Arg],
    ) -> Result<()> {
        self.launch_smem(module, name, grid, block, 0, args)
    }

    /// [`Self::launch`] with `smem` bytes of dynamic shared memory (the opt-in above 48 KB is
    /// made once per kernel and size, raised when a launch needs more than the last; more than
    /// the GPU allows is an error naming both).
    fn launch_smem(
        &mut self,
        module: &'static str,
        name: &'static str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: &[Arg],
    ) -> Result<()> {
        check_grid(name, grid)?;
        let (f, params) = self.func_params(module, name)?;
        if let Some(sizes) = params {
            check_args(module, name, &sizes, args)?;
        }
        if smem > 48 * 1024 && self.ops.smem_opted.get(&(module, name)).is_none_or(|&had| had < smem) {
            check(smem as i64 <= self.info.smem_optin as i64, || {
                format!(
                    "{module}::{name} needs {smem} bytes of shared memory; {} allows {}",
                    self.info, self.info.smem_optin
                )
            })?;
            super::set_max_dynamic_smem(&f, smem)?;
            self.ops.smem_opted.insert((module, name), smem);
        }
        let start = self.profile_mark()?;
        let mut params: Vec<*mut c_void> = args.iter().map(|a| a as *const Arg as *mut c_void).collect();
        let cfg = LaunchConfig { grid_dim: grid, block_dim: block, shared_mem_bytes: smem };
        // SAFETY: argument lists match the kernels' signatures (see kernels/*.cu headers), and
        // every pointer refers to a live allocation whose length the caller checked.
        unsafe { self.launch_kernel(&f, cfg, &mut params) }
            .map_err(|e| Gpu::err(&format!("launching {module}::{name}"), e))?;
        self.profile_done(name, start)
    }

    /// Programmatic dependent launch tried once ([`Gpu::open`], where [`Gpu::pdl`] is on):
    /// two launches and a third recorded into a graph and replayed, each adding x to a sum; an
    /// error or a wrong sum is returned.
    pub(super) fn probe_pdl(&mut self) -> Result<()> {
        let x: Vec<f32> = (0..1000).map(|i| 0.5 + i as f32).collect();
        let xb = self.upload(&x)?;
        let mut acc = self.zeros(x.len())?;
        self.axpy(&mut acc, &xb, 1.0)?;
        self.axpy(&mut acc, &xb, 1.0)?;
        if let Some(graph) = self.record(&mut |g| g.axpy(&mut acc, &xb, 1.0))? {
            self.replay(&graph)?;
        }
        let got = self.download(&acc)?;
        match got.iter().zip(&x).position(|(g, x)| *g != 3.0 * x) {
            None => Ok(()),
            Some(i) => Err(Error::Gpu(format!("its sum {} at {i} should be {}", got[i], 3.0 * x[i]))),
        }
    }

    /// Launches `f` on the stream (the side stream while a weight gradient is issued there),
    /// `params` pointing at each parameter's bytes: with programmatic stream serialization where
    /// [`Gpu::pdl`] is on (cuLaunchKernelEx: the kernel may be scheduled while the previous one
    /// finishes, and waits in `pdl_entry`, its first statement, kernels/common.cuh), at the
    /// greatest priority where [`Gpu::chain_priority`] asks for it, else a plain cuLaunchKernel.
    ///
    /// # Safety
    /// `params` must match `f`'s parameter list and stay valid for the call; every pointer among
    /// them must refer to a live allocation large enough for the launch.
    unsafe fn launch_kernel(
        &self,
        f: &CudaFunction,
        cfg: LaunchConfig,
        params: &mut [*mut c_void],
    ) -> std::result::Result<(), DriverError> {
        self.ctx.bind_to_thread()?;
        let (g, b) = (cfg.grid_dim, cfg.block_dim);
        let stream = match (&self.side, self.ops.on_side) {
            (Some(side), true) => side.cu_stream(),
            _ => self.stream.cu_stream(),
        };
        // SAFETY: an all-zero attribute is a valid value of the plain-data union
        let mut attrs: [sys::CUlaunchAttribute; 2] = std::mem::zeroed();
        let mut n = 0;
        if self.pdl {
            attrs[n].id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
            attrs[n].value.programmaticStreamSerializationAllowed = 1;
            n += 1;
        }
        if self.chain_priority && self.overlap && self.ops.recording && !self.ops.on_side {
            attrs[n].id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PRIORITY;
            attrs[n].value.priority = self.priority_high;
            n += 1;
        }
        if n == 0 {
            return result::launch_kernel(f.cu_function(), g, b, cfg.shared_mem_bytes, stream, params);
        }
        let config = sys::CUlaunchConfig {
            gridDimX: g.0,
            gridDimY: g.1,
            gridDimZ: g.2,
            blockDimX: b.0,
            blockDimY: b.1,
            blockDimZ: b.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: stream,
            attrs: attrs.as_mut_ptr(),
            numAttrs: n as u32,
        };
        sys::cuLaunchKernelEx(&config, f.cu_function(), params.as_mut_ptr(), std::ptr::null_mut()).result()
    }

    /// With [`Gpu::profile`] on (and not recording): an event before a launch.
    fn profile_mark(&mut self) -> Result<Option<CudaEvent>> {
        if self.ops.profile.is_none() || self.ops.recording {
            return Ok(None);
        }
        Ok(Some(self.mark()?))
    }
    /// The event after it, kept with the kernel's name.
    fn profile_done(&mut self, name: &'static str, start: Option<CudaEvent>) -> Result<()> {
        if let Some(start) = start {
            let end = self.mark()?;
            self.ops.profile.as_mut().expect("profiling: checked by profile_mark").push((name, start, end));
        }
        Ok(())
    }

    fn launch1d(&mut self, module: &'static str, name: &'static str, len: usize, args: &[Arg]) -> Result<()> {
        self.launch(module, name, (blocks(len)?, 1, 1), (BLOCK, 1, 1), args)
    }

    /// dw = the sum of `slices` slices of `len` floats at `part`, in slice order
    /// (`wgrad_reduce4_f32`: a block of WR_THREADS per 128 values where len % 4 == 0, else
    /// `wgrad_reduce_f32`: per 32 values; the same bits).
    fn reduce_slices(&mut self, part: Arg, slices: usize, len: usize, dw: Arg) -> Result<()> {
        let args = [part, int(slices, "slices")?, long(len), dw];
        if len % 4 == 0 && part % 16 == 0 && dw % 16 == 0 {
            // 4 values per lane in float4 loads (every recipe weight): the same bits
            let grid = (int(len.div_ceil(128).max(1), "reduction blocks")? as u32, 1, 1);
            return self.launch("conv", "wgrad_reduce4_f32", grid, (WR_THREADS, 1, 1), &args);
        }
        let grid = (int(len.div_ceil(32).max(1), "reduction blocks")? as u32, 1, 1);
        self.launch("conv", "wgrad_reduce_f32", grid, (WR_THREADS, 1, 1), &args)
    }

    fn ptr<T>(&self, s: &CudaSlice<T>) -> Arg {
        s.device_ptr(&self.stream).0
    }
    fn ptr_mut<T>(&self, s: &mut CudaSlice<T>) -> Arg {
        s.device_ptr_mut(&self.stream).0
    }

    fn alloc<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(&self, n: usize, what: &str) -> Result<CudaSlice<T>> {
        check(!self.ops.recording, || format!("allocating {what} during a CUDA graph recording"))?;
        self.stream.alloc_zeros::<T>(n.max(1)).map_err(|e| Gpu::err(&format!("allocating {what}"), e))
    }

    /// A temporary of `n` f32 slots, alive until the next op starts.
    fn tmp(&mut self, n: usize) -> Result<Arg> {
        check(!self.ops.recording, || {
            format!("a {n}-float temporary (a tensor stored in the other precision?) during a CUDA graph recording")
        })?;
        // SAFETY: every user writes the temporary before reading it.
        let mut t = unsafe { self.stream.alloc::<f32>(n.max(1)) }.map_err(|e| Gpu::err("allocating a temporary", e))?;
        let p = self.ptr_mut(&mut t);
        self.ops.tmp.push(t);
        Ok(p)
    }

    /// The shared workspace with room for at least `n` f32 values.
    fn workspace(&mut self, n: usize) -> Result<Arg> {
        self.scratch_ptr(Scratch::Ws, n, &|| format!("allocating a {n}-float workspace"))
    }

    /// The side stream's workspace for the weight gradients' slices ([`Gpu::overlap`]).
    fn side_workspace(&mut self, n: usize) -> Result<Arg> {
        self.scratch_ptr(Scratch::SideWs, n, &|| format!("allocating a {n}-float workspace for the side stream"))
    }

    /// A scratch buffer of at least `n` floats (grown, outside recordings), as a pointer.
    fn scratch_ptr(&mut self, which: Scratch, n: usize, what: &dyn Fn() -> String) -> Result<Arg> {
        grow(&self.stream, &mut self.ops, which, n, what)?;
        let mut w = scratch(&mut self.ops, which).take().expect("allocated above");
        let p = self.ptr_mut(&mut w);
        *scratch(&mut self.ops, which) = Some(w);
        Ok(p)
    }

    /// a = GELU(pre(x)) as fp16 in the activation scratch; returns its pointer and the `Pre`
    /// pointers that tell the conv kernels their input is already activated (bn = 2).
    /// `into`: a caller's buffer (the conv's `keep`) instead of the scratch.
    fn activate(&mut self, xp: Arg, xs: Shape, pp: &PrePtrs, into: Option<Arg>) -> Result<(Arg, PrePtrs)> {
        if pp.bn == 2 {
            // x is a already (Pre::Activated): nothing to pass over, nothing to keep
            check(into.is_none(), || {
                "conv3x3: an activated input (Pre::Activated) has no activation to keep: pass no keep".to_string()
            })?;
            return Ok((xp, *pp));
        }
        let len = xs.len();
        let ap = match into {
            Some(p) => p,
            None => {
                let slots = len.div_ceil(2);
                self.scratch_ptr(Scratch::Act, slots, &|| {
                    format!("allocating the activation scratch ({len} fp16 values)")
                })?
            }
        };
        self.act_pass(xp, xs, pp, ap)?;
        Ok((ap, PrePtrs { bn: 2, mean: 0, inv: 0, shift: 0 }))
    }

    /// `act_f16` by itself, `a = GELU(pre(x))`: the pass `conv3x3` runs over its input first
    /// (the bench's "act [l]" lines; layer 0's input comes activated from the stem instead).
    pub(crate) fn act_only(&mut self, x: &GBuf, xs: Shape, pre: Pre<'_, Gpu>, a: &mut GBuf) -> Result<()> {
        self.begin()?;
        check(!matches!(pre, Pre::Activated), || "act: the input is activated already".to_string())?;
        let xp = self.in_f16(x, xs.len(), &format!("act: x {xs:?}"))?;
        let pp = self.pre_ptrs(pre, xs.c, "act")?;
        let ap = self.out(a, xs.len(), Dtype::F16, &format!("act: a {xs:?}"))?;
        self.act_pass(xp, xs, &pp, ap)
    }

    /// `act_f16` over x (shape `xs`, fp16) into `ap` (fp16): a = GELU(pre(x)).
    fn act_pass(&mut self, xp: Arg, xs: Shape, pp: &PrePtrs, ap: Arg) -> Result<()> {
        if xs.is_empty() {
            return Ok(());
        }
        let args = [xp, long(xs.len() / 8), int(xs.c, "channels")?, pp.mean, pp.inv, pp.shift, pp.bn, ap];
        // ≈ 4 chunks of 8 values per thread (each thread loads its channels' parameters once)
        self.launch1d("conv", "act_f16", (xs.len() / 8).div_ceil(4).max(xs.c / 8), &args)
    }

    /// Checks and pointers of the BatchNorm statistics outputs of `ys` ([running mean, running
    /// var, bn]); `op` prefixes the messages ("conv3x3: " when the conv takes the statistics).
    fn bn_outputs(
        &mut self,
        op: &str,
        ys: Shape,
        running_mean: &mut GBuf,
        running_var: &mut GBuf,
        bn: &mut GBuf,
    ) -> Result<[Arg; 3]> {
        let (c, p) = (ys.c, ys.count());
        check(p > 1, || format!("{op}bn_stats: BatchNorm needs more than one value per channel, {ys:?} has {p}"))?;
        let rm = self.inout_f32(running_mean, c, &format!("{op}bn_stats: running mean"))?;
        let rv = self.inout_f32(running_var, c, &format!("{op}bn_stats: running var"))?;
        let bp = self.out(bn, 2 * c, Dtype::F32, &format!("{op}bn_stats: bn [mean | invstd]"))?;
        Ok([rm, rv, bp])
    }

    /// The BatchNorm statistics of the fp16 tensor at `yp` (shape `ys`) into `out` (`bn_outputs`):
    /// one read of y, f64 Σy and Σy² per block (2·C f64 = 4·C f32 slots each), then the finalize.
    fn bn_from_y(&mut self, yp: Arg, ys: Shape, eps: f32, momentum: f32, out: [Arg; 3]) -> Result<()> {
        let (c, p) = (ys.c, ys.count());
        let (nb, chunk) = stage1_split(p);
        let part = self.workspace(nb * 4 * c)?;
        let args = [yp, long(p), int(c, "channels")?, long(chunk), part];
        if c % 8 == 0 && c <= 256 {
            // the same partials, bit for bit, 8 channels per thread in 16-byte loads
            self.launch("norm", "bn_reduce8_f16", (nb as u32, 1, 1), ((c / 8) as u32, 8, 1), &args)?;
        } else {
            self.launch("norm", "bn_reduce_f16", (nb as u32, c.div_ceil(32) as u32, 1), (32, 8, 1), &args)?;
        }
        self.bn_finalize(part, nb, ys, eps, momentum, out)
    }

    /// Stage 2 of the BatchNorm statistics of `ys` from `blocks` partials per channel, laid out
    /// [2·C][blocks] f64 (`bn_reduce_f16` or the mma forward conv's epilogue).
    fn bn_finalize(
        &mut self,
        part: Arg,
        blocks: usize,
        ys: Shape,
        eps: f32,
        momentum: f32,
        out: [Arg; 3],
    ) -> Result<()> {
        let [rm, rv, bp] = out;
        let c = int(ys.c, "channels")?;
        let args = [part, int(blocks, "partial blocks")?, c, long(ys.count()), flt(eps), flt(momentum), rm, rv, bp];
        self.launch("norm", "bn_finalize_f32", (ys.c as u32, 1, 1), (CHAN_FIN_THREADS, 1, 1), &args)
    }

    /// `[Σdu | Σdu·x̂]` per channel of `da`, `x` (fp16, shape `xs`) and `pp` (`chan_reduce_f16`,
    /// then `pre_bwd_sums_f32`), into `out`, or into the workspace (returned) when None.
    fn pre_sums(&mut self, dap: Arg, xp: Arg, xs: Shape, pp: PrePtrs, out: Option<Arg>) -> Result<Arg> {
        let (c, p) = (xs.c, xs.count());
        check(c % 8 == 0 && c > 0 && c <= 8 * CHAN_REDUCE_THREADS as usize, || {
            format!(
                "pre_bwd sums: {xs:?} has {c} channels; a positive multiple of 8, at most {}",
                8 * CHAN_REDUCE_THREADS
            )
        })?;
        let (nb, chunk) = stage1_split(p);
        let part = self.workspace(nb * 2 * c + 2 * c)?;
        let sums = out.unwrap_or(part + 4 * (nb * 2 * c) as u64);
        let cc = int(c, "channels")?;
        let args = [xp, dap, long(p), cc, long(chunk), pp.mean, pp.inv, pp.shift, pp.bn, part];
        self.launch("norm", "chan_reduce_f16", (nb as u32, 1, 1), (CHAN_REDUCE_THREADS, 1, 1), &args)?;
        self.pre_sums_finalize(part, nb, c, sums)?;
        Ok(sums)
    }

    /// Stage 2 of `[Σdu | Σdu·x̂]` from `blocks` f32 partials per channel, [2·C][blocks].
    fn pre_sums_finalize(&mut self, part: Arg, blocks: usize, c: usize, sums: Arg) -> Result<()> {
        let args = [part, int(blocks, "partial blocks")?, int(c, "channels")?, sums];
        self.launch("norm", "pre_bwd_sums_f32", (c as u32, 1, 1), (CHAN_FIN_THREADS, 1, 1), &args)
    }

    /// Whether `op` takes the mma conv kernels (`ConvPath::Mma`, set only where the GPU has them).
    fn mma_path(&self, op: &str) -> Result<bool> {
        let mma = self.conv_path.is_mma();
        check(!mma || self.info.cc.0 >= 8, || format!("{op}: the mma kernels need sm_80+, this GPU is {}", self.info))?;
        Ok(mma)
    }

    /// The sm_80+ conv kernel for a GEMM with `n` columns, `base` being the 128×64-tile kernel's
    /// name (`conv3x3_{fwd,dgrad,wgrad}_mma_f16`). On `ConvPath::MmaWide` (warp tiles of 64×64):
    /// the 128×128-tile kernel (`_mma_wide_`, [`WIDE_SMEM`] bytes of dynamic shared memory) where
    /// n ≥ 128, else the 256×64 one where there is one (`_mma_tall_`: forward and input gradient,
    /// [`TALL_SMEM`]; for an input gradient of ≤ 32 channels, layer 0's 24, the 256×32
    /// `_mma_tall32_`, [`TALL32_SMEM`]); otherwise the 128×64 kernel. On `ConvPath::Wgmma` the
    /// wgmma kernels (`_wgmma_`: 128×256 where n ≥ 128, all three GEMMs; `_wgmma_tall_`: 256×64
    /// for the forward and input gradient with n < 128; `_wgmma_tall32_`: 256×32 for an input
    /// gradient with n ≤ 32; `_wgmma_narrow_`: 128×64 for a weight gradient with 32 < n < 128),
    /// else `MmaWide`'s (a weight gradient of ≤ 32 output channels). On `ConvPath::Wgmma2` the
    /// tiles of which 2 blocks fit an SM (`_wgmma2_`: 128×128 in 3 stages where n ≥ 128, all
    /// three GEMMs; `_wgmma_narrow_`: 128×64 where 32 < n < 128), else `Wgmma`'s. On
    /// `ConvPath::WgmmaP` the persistent kernels on wgmma's tiles for the forward and the input
    /// gradient (`_wgmma_p_`: 128×256 where n ≥ 128; `_wgmma_p_tall_`: 256×64 below, but for an
    /// input gradient with n ≤ 32), else `Wgmma`'s. On `ConvPath::Tma` (`Tma4`)
    /// the multicast 128×256 kernels (`_wgmma_mc_`, `_wgmma_mc4_`, [`WG_MC_SMEM`]) for a forward
    /// or input gradient whose n is a multiple of 256 and whose K = 9·(channels gathered) a
    /// multiple of 64 (the bulk-copy layout's blocks), else `Wgmma`'s.
    fn mma_kernel(&self, key: &GemmKey) -> MmaKernel {
        self.mma_kernel_on(self.gemm_path(key), key)
    }

    /// The kernel family `key`'s GEMM takes: the one `tune_gemm` is timing, its pick on
    /// `ConvPath::Mixed` (the first candidate before it has one), else the conv path.
    fn gemm_path(&self, key: &GemmKey) -> ConvPath {
        match self.ops.force {
            Some((g, p, _)) if g == key.gemm => return p,
            _ => {}
        }
        if self.conv_path != ConvPath::Mixed {
            return self.conv_path;
        }
        match self.ops.picks.iter().find(|p| p.key == *key) {
            Some(p) => p.path,
            None => self.mixed_candidates()[0],
        }
    }

    /// Whether a training forward (`key.sums`) takes its BatchNorm statistics in its epilogue, or
    /// an input gradient pre_bwd's sums: the candidate `tune_gemm` is timing, then
    /// `ConvPath::Mixed`'s pick; otherwise yes (with `epilogue_sums`).
    fn fused_stats(&self, key: &GemmKey) -> bool {
        match self.ops.force {
            Some((g, _, fused)) if g == key.gemm => return fused,
            _ => {}
        }
        self.conv_path != ConvPath::Mixed || self.ops.picks.iter().find(|p| p.key == *key).is_none_or(|p| p.fused)
    }

    /// The kernel families `ConvPath::Mixed` chooses among: the mma ones of the autotune's list
    /// (`SPEEDRUN_CONV`), or all this GPU has when the list names none.
    pub(crate) fn mixed_candidates(&self) -> Vec<ConvPath> {
        let listed: Vec<ConvPath> =
            self.conv_tune.iter().copied().filter(|&p| p.is_mma() && p != ConvPath::Mixed).collect();
        if listed.is_empty() {
            ConvPath::tunable(self.info.cc)
        } else {
            listed
        }
    }

    fn mma_kernel_on(&self, path: ConvPath, key: &GemmKey) -> MmaKernel {
        let (base, n) = key.base();
        const fn mma(name: &'static str, tm: usize, tn: usize, smem: u32) -> Option<MmaKernel> {
            Some(MmaKernel {
                name,
                tm,
                tn,
                smem,
                threads: 128,
                wgmma: false,
                per_image: false,
                cluster: 1,
                persistent: false,
            })
        }
        const fn wg(name: &'static str, tm: usize, tn: usize, smem: u32, threads: u32) -> Option<MmaKernel> {
            Some(MmaKernel {
                name,
                tm,
                tn,
                smem,
                threads,
                wgmma: true,
                per_image: false,
                cluster: 1,
                persistent: false,
            })
        }
        // ConvPath::Img: the image-resident forward where the image and 64 filters fit the
        // shared memory (layers 0–2 of the recipe), the image-resident weight gradient where
        // 9·cin ≤ IMG_WG_K and the image fits (layer 0), the 128×64 kernels for everything else
        if path == ConvPath::Img {
            let (h, w, c) = (key.xs.h, key.xs.w, key.xs.c);
            let img = match key.gemm {
                Gemm::Fwd => Some(("conv3x3_fwd_img_f16", img_smem(h, w, c))),
                Gemm::Wgrad if 9 * c <= IMG_WG_K => Some(("conv3x3_wgrad_img_f16", img_wgrad_smem(h, w, c))),
                _ => None,
            };
            if let Some((name, smem)) = img.filter(|&(_, smem)| smem <= self.info.smem_optin.max(0) as usize) {
                let (tm, tn, threads, smem) = (0, 64, IMG_THREADS, smem as u32);
                let persistent = false;
                return MmaKernel {
                    name,
                    tm,
                    tn,
                    smem,
                    threads,
                    wgmma: false,
                    per_image: true,
                    cluster: 1,
                    persistent,
                };
            }
        }
        // Per GEMM: the 128×64 kernel, then the mma128, the wgmma and the wgmma2 choices for
        // n ≥ 128, for 32 < n < 128 and for n ≤ 32 (None: that path has no kernel of its own
        // there; wgmma2 falls back to wgmma's choice, wgmma to mma128's, mma128 to the 128×64
        // kernel).
        type Slots = [Option<MmaKernel>; 3];
        const KERNELS: [(&str, Slots, Slots, Slots); 3] = [
            (
                "conv3x3_fwd_mma_f16",
                [
                    mma("conv3x3_fwd_mma_wide_f16", 128, 128, WIDE_SMEM),
                    mma("conv3x3_fwd_mma_tall_f16", 256, 64, TALL_SMEM),
                    mma("conv3x3_fwd_mma_tall_f16", 256, 64, TALL_SMEM),
                ],
                [
                    wg("conv3x3_fwd_wgmma_f16", 128, 256, WG_WIDE_SMEM, 256),
                    wg("conv3x3_fwd_wgmma_tall_f16", 256, 64, WG_TALL_SMEM, 512),
                    wg("conv3x3_fwd_wgmma_tall_f16", 256, 64, WG_TALL_SMEM, 512),
                ],
                [
                    wg("conv3x3_fwd_wgmma2_f16", 128, 128, WG_WIDE2_SMEM, 256),
                    wg("conv3x3_fwd_wgmma_narrow_f16", 128, 64, WG_NARROW_SMEM, 256),
                    None,
                ],
            ),
            (
                "conv3x3_dgrad_mma_f16",
                [
                    mma("conv3x3_dgrad_mma_wide_f16", 128, 128, WIDE_SMEM),
                    mma("conv3x3_dgrad_mma_tall_f16", 256, 64, TALL_SMEM),
                    mma("conv3x3_dgrad_mma_tall32_f16", 256, 32, TALL32_SMEM),
                ],
                [
                    wg("conv3x3_dgrad_wgmma_f16", 128, 256, WG_WIDE_SMEM, 256),
                    wg("conv3x3_dgrad_wgmma_tall_f16", 256, 64, WG_TALL_SMEM, 512),
                    wg("conv3x3_dgrad_wgmma_tall32_f16", 256, 32, WG_TALL32_SMEM, 512),
                ],
                [
                    wg("conv3x3_dgrad_wgmma2_f16", 128, 128, WG_WIDE2_SMEM, 256),
                    wg("conv3x3_dgrad_wgmma_narrow_f16", 128, 64, WG_NARROW_SMEM, 256),
                    None,
                ],
            ),
            (
                "conv3x3_wgrad_mma_f16",
                [mma("conv3x3_wgrad_mma_wide_f16", 128, 128, WIDE_SMEM), None, None],
                [
                    wg("conv3x3_wgrad_wgmma_f16", 128, 256, WG_WIDE_SMEM, 256),
                    wg("conv3x3_wgrad_wgmma_narrow_f16", 128, 64, WG_NARROW_SMEM, 256),
                    None,
                ],
                [wg("conv3x3_wgrad_wgmma2_f16", 128, 128, WG_WIDE2_SMEM, 256), None, None],
            ),
        ];
        let (narrow, mma128, wgmma, wgmma2) = KERNELS.into_iter().find(|k| k.0 == base).expect("an mma conv kernel");
        let slot = if n >= 128 {
            0
        } else if n > 32 {
            1
        } else {
            2
        };
        // the multicast kernels: n whole 256-column blocks, K = 9·(gathered channels) whole 64-k steps
        let k = 9 * if key.gemm == Gemm::Dgrad { key.cout } else { key.xs.c };
        let cluster = path.cluster();
        if cluster > 1 && n % 256 == 0 && k % 64 == 0 {
            let mc = match (key.gemm, cluster) {
                (Gemm::Fwd, 2) => Some("conv3x3_fwd_wgmma_mc_f16"),
                (Gemm::Fwd, _) => Some("conv3x3_fwd_wgmma_mc4_f16"),
                (Gemm::Dgrad, 2) => Some("conv3x3_dgrad_wgmma_mc_f16"),
                (Gemm::Dgrad, _) => Some("conv3x3_dgrad_wgmma_mc4_f16"),
                (Gemm::Wgrad, _) => None,
            };
            if let Some(name) = mc {
                let (tm, tn, smem, threads) = (128, 256, WG_MC_SMEM, 256);
                let persistent = false;
                return MmaKernel { name, tm, tn, smem, threads, wgmma: true, per_image: false, cluster, persistent };
            }
        }
        // the persistent kernels: wgmma's 128×256 and 256×64 tiles for the forward and input gradient
        let persistent = match (key.gemm, slot) {
            (Gemm::Fwd, 0) => Some(("conv3x3_fwd_wgmma_p_f16", 128, 256, WG_WIDE_SMEM, 256)),
            (Gemm::Fwd, _) => Some(("conv3x3_fwd_wgmma_p_tall_f16", 256, 64, WG_TALL_SMEM, 512)),
            (Gemm::Dgrad, 0) => Some(("conv3x3_dgrad_wgmma_p_f16", 128, 256, WG_WIDE_SMEM, 256)),
            (Gemm::Dgrad, 1) => Some(("conv3x3_dgrad_wgmma_p_tall_f16", 256, 64, WG_TALL_SMEM, 512)),
            _ => None,
        };
        if let Some((name, tm, tn, smem, threads)) = persistent.filter(|_| path == ConvPath::WgmmaP) {
            let kernel = wg(name, tm, tn, smem, threads).expect("a wgmma kernel");
            return MmaKernel { persistent: true, ..kernel };
        }
        let chosen = match path {
            ConvPath::Wgmma | ConvPath::WgmmaP | ConvPath::Tma | ConvPath::Tma4 => wgmma[slot].or(mma128[slot]),
            ConvPath::Wgmma2 => wgmma2[slot].or(wgmma[slot]).or(mma128[slot]),
            ConvPath::MmaWide => mma128[slot],
            _ => None,
        };
        chosen.or(mma(narrow, 128, 64, 0)).expect("the 128×64 kernel")
    }

    /// The (forward, weight gradient, input gradient) kernels `path` runs for a conv of input `xs`
    /// to `cout` channels, by name (`path`'s own name for the paths that are not one mma kernel
    /// family: wmma, mixed). The bench leaves out the lines of kernels an earlier path timed.
    /// wgmmap's weight gradients are wgmma's kernels in one wave of slices (other sums): named
    /// apart, so that the bench times them and the self-test checks them.
    pub fn conv_kernels(&self, path: ConvPath, xs: Shape, cout: usize, pool: bool) -> [&'static str; 3] {
        [Gemm::Fwd, Gemm::Wgrad, Gemm::Dgrad].map(|gemm| {
            if path.is_mma() && path != ConvPath::Mixed {
                let kn = self.mma_kernel_on(path, &GemmKey { gemm, xs, cout, pool, sums: true });
                match (path, gemm, kn.wgmma) {
                    (ConvPath::WgmmaP, Gemm::Wgrad, true) => {
                        ONE_WAVE.iter().find(|(k, _)| *k == kn.name).map_or(kn.name, |&(_, one_wave)| one_wave)
                    }
                    _ => kn.name,
                }
            } else {
                path.name()
            }
        })
    }

    /// Whether `key`'s GEMM is still to be timed: on `ConvPath::Mixed`, before its first pick,
    /// outside a recording and outside `tune_gemm` itself.
    fn must_tune(&self, key: &GemmKey) -> bool {
        self.conv_path == ConvPath::Mixed
            && !self.ops.recording
            && self.ops.force.is_none()
            && !self.ops.picks.iter().any(|p| p.key == *key)
    }

    /// `ConvPath::Mixed`'s choice for `key`'s GEMM: `op`, the whole conv op on the caller's
    /// operands (it overwrites its outputs, so a repeat leaves them as one call would), runs
    /// with that GEMM on each candidate family that gives it a kernel of its own, once untimed
    /// and [`TUNE_REPS`] times between events; the fastest is kept (the first of equals).
    fn tune_gemm(&mut self, key: GemmKey, op: &mut dyn FnMut(&mut Gpu) -> Result<()>) -> Result<()> {
        fn per_call(g: &mut Gpu, timer: &super::Timer, op: &mut dyn FnMut(&mut Gpu) -> Result<()>) -> Result<f32> {
            op(g)?;
            timer.start(&g.stream)?;
            for _ in 0..TUNE_REPS {
                op(g)?;
            }
            Ok(timer.stop(&g.stream)? / TUNE_REPS as f32)
        }
        let timer = self.timer()?;
        let mut seen: Vec<&'static str> = Vec::new();
        let mut times: Vec<(ConvPath, bool, f32)> = Vec::new();
        // a training forward: the BatchNorm statistics in the epilogue, or in a pass over y (the
        // H200 bench: the pooled layers 0 and 2 paid 66–128 µs in the epilogue, 32 for the pass);
        // an input gradient with pre_bwd's sums: in the epilogue, or in a pass over da and x (the
        // 854d170 bench: the wgmma/tma epilogue's sums cost 184–217 µs at 7×7×256, where that
        // pass reads 100 MB)
        let modes: &[bool] =
            if key.gemm != Gemm::Wgrad && key.sums && self.epilogue_sums { &[true, false] } else { &[true] };
        for p in self.mixed_candidates() {
            let name = self.mma_kernel_on(p, &key).name;
            if seen.contains(&name) {
                continue;
            }
            seen.push(name);
            for &fused in modes {
                self.ops.force = Some((key.gemm, p, fused));
                let t = per_call(self, &timer, op);
                self.ops.force = None;
                times.push((p, fused, t?));
            }
        }
        let best = times.iter().fold(times[0], |b, &t| if t.2 < b.2 { t } else { b });
        self.ops.picks.push(Pick { key, path: best.0, fused: best.1, times });
        Ok(())
    }

    /// `ConvPath::Mixed`'s choices so far, in the order made: (GEMM and shape, family).
    pub fn conv_picks(&self) -> Vec<(String, ConvPath)> {
        self.ops.picks.iter().map(|p| (p.key.label(), p.path)).collect()
    }

    /// The same with each candidate's milliseconds per op call, e.g.
    /// "fwd 15x15x64->256 pool: wgmma (mma 0.750, mma128 0.610, wgmma 0.402 ms)".
    pub fn conv_picks_timed(&self) -> Vec<String> {
        // "+pass": the forward's BatchNorm statistics (the input gradient's pre_bwd sums) in a
        // separate pass
        let name = |c: ConvPath, fused: bool| format!("{}{}", c.name(), if fused { "" } else { "+pass" });
        let each = |p: &Pick| p.times.iter().map(|&(c, f, t)| format!("{} {t:.3}", name(c, f))).collect::<Vec<_>>();
        self.ops
            .picks
            .iter()
            .map(|p| format!("{}: {} ({} ms)", p.key.label(), name(p.path, p.fused), each(p).join(", ")))
            .collect()
    }

    /// Start of an op: work left on the side stream joined back first ([`Gpu::overlap`]), then
    /// [`Self::begin_chain`].
    fn begin(&mut self) -> Result<()> {
        self.join_side()?;
        self.begin_chain();
        Ok(())
    }

    /// Start of an op of the backward chain (the input gradients and BatchNorm/GELU backward
    /// passes, which the side stream's weight gradients may overlap): launches go to the main
    /// stream, the previous op's temporaries are freed (stream-ordered), and so is the retired
    /// scratch once no graph that may use it is left.
    fn begin_chain(&mut self) {
        self.ops.on_side = false;
        self.ops.tmp.clear();
        if !self.ops.retired.is_empty() && std::rc::Rc::strong_count(&self.ops.graphs) == 1 {
            self.ops.retired.clear();
        }
    }

    /// Test helpers: every byte of `b` set to `byte` on the main stream (0xFF: NaN), and the
    /// side stream's workspace size in floats.
    #[cfg(test)]
    pub(super) fn fill_bytes(&mut self, b: &mut GBuf, byte: u8) -> Result<()> {
        let p = self.ptr_mut(&mut b.mem);
        let bytes = b.mem.len() * std::mem::size_of::<f32>();
        // SAFETY: the whole allocation of a live buffer, on the stream that owns it
        unsafe { sys::cuMemsetD8Async(p, byte, bytes, self.stream.cu_stream()) }
            .result()
            .map_err(|e| Gpu::err("poisoning a buffer", e))
    }
    #[cfg(test)]
    pub(super) fn side_workspace_floats(&self) -> usize {
        self.ops.side_ws.as_ref().map_or(0, |w| w.len())
    }

    /// The fork and join events of [`Gpu::overlap`], made before any recording (Gpu::open).
    pub(super) fn prepare_overlap(&mut self) -> Result<()> {
        let ev = |g: &Gpu| g.ctx.new_event(None).map_err(|e| Gpu::err("creating a CUDA event", e));
        self.ops.fork_join = Some((ev(self)?, ev(self)?));
        Ok(())
    }

    /// Whether the overlap may be on: asked for ([`super::OVERLAP_ENV`]) and not switched off by
    /// a failed recording.
    fn overlap_allowed(&self) -> bool {
        self.overlap_wanted && self.overlap_off.is_none()
    }

    /// The autotune's current variant is [`super::MIXED_ONE_STREAM`]: mixed, with the overlap
    /// allowed but off.
    fn one_stream_variant(&self) -> bool {
        self.conv_path == ConvPath::Mixed && self.overlap_allowed() && !self.overlap
    }

    /// The autotune's current variant is [`super::MIXED_MUON_MAIN`]: mixed, with the overlap on
    /// and Muon on the main stream though it may go to the second one.
    fn muon_main_variant(&self) -> bool {
        self.conv_path == ConvPath::Mixed && self.overlap && self.muon_side_wanted && !self.muon_side
    }

    /// Main → side: the side stream's next launches wait for all work issued on the main stream.
    fn fork(&mut self) -> Result<()> {
        let (Some(side), Some((fork, _))) = (&self.side, &self.ops.fork_join) else {
            return Err(Error::Gpu("overlapping the weight gradients without a second stream".into()));
        };
        self.ops.forked = true;
        fork.record(&self.stream).map_err(|e| Gpu::err("recording the fork event", e))?;
        side.wait(fork).map_err(|e| Gpu::err("the second stream waiting for the main one", e))
    }

    /// `issue`'s launches on the side stream after a fork where `side` (the next op that is not
    /// part of the backward chain joins them back: `side_pending`), on the main stream otherwise.
    fn on_side_if<R>(&mut self, side: bool, issue: impl FnOnce(&mut Self) -> Result<R>) -> Result<R> {
        if !side {
            return issue(self);
        }
        self.fork()?;
        self.ops.on_side = true;
        let r = issue(self);
        self.ops.on_side = false;
        self.ops.side_pending = true;
        r
    }

    /// Side → main, if the side stream has work the main stream has not waited for.
    fn join_side(&mut self) -> Result<()> {
        if !self.ops.side_pending {
            return Ok(());
        }
        self.ops.side_pending = false;
        let (Some(side), Some((_, join))) = (&self.side, &self.ops.fork_join) else {
            return Err(Error::Gpu("work on a second stream that does not exist".into()));
        };
        join.record(side).map_err(|e| Gpu::err("recording the join event", e))?;
        self.stream.wait(join).map_err(|e| Gpu::err("the main stream waiting for the second one", e))
    }

    /// Device pointer of `b` as fp16 (cast into a temporary when it holds f32).
    fn in_f16(&mut self, b: &GBuf, want: usize, what: &str) -> Result<Arg> {
        check_len(b.len, want, what)?;
        let p = self.ptr(&b.mem);
        if b.dtype != Dtype::F32 {
            return Ok(p);
        }
        let t = self.tmp(want.div_ceil(2))?;
        self.launch1d("norm", "cast_f32_f16", want, &[p, long(want), t])?;
        Ok(t)
    }

    /// Device pointer of `b` as f32 (cast into a temporary when it holds fp16).
    fn in_f32(&mut self, b: &GBuf, want: usize, what: &str) -> Result<Arg> {
        check_len(b.len, want, what)?;
        let p = self.ptr(&b.mem);
        if b.dtype != Dtype::F16 {
            return Ok(p);
        }
        let t = self.tmp(want)?;
        self.launch1d("norm", "cast_f16_f32", want, &[p, long(want), t])?;
        Ok(t)
    }

    /// Device pointer of an output written entirely as `dtype`.
    fn out(&mut self, b: &mut GBuf, want: usize, dtype: Dtype, what: &str) -> Result<Arg> {
        check_len(b.len, want, what)?;
        b.dtype = dtype;
        Ok(self.ptr_mut(&mut b.mem))
    }

    /// Device pointer of an f32 tensor updated in place (converted first if it holds fp16).
    fn inout_f32(&mut self, b: &mut GBuf, want: usize, what: &str) -> Result<Arg> {
        check_len(b.len, want, what)?;
        let p = self.ptr_mut(&mut b.mem);
        if b.dtype == Dtype::F16 {
            let t = self.tmp(want)?;
            self.launch1d("norm", "cast_f16_f32", want, &[p, long(want), t])?;
            let t_slice = self.ops.tmp.last().expect("just pushed");
            self.stream
                .memcpy_dtod(&t_slice.slice(0..want.max(1)), &mut b.mem.slice_mut(0..want.max(1)))
                .map_err(|e| Gpu::err("copying a cast tensor", e))?;
        }
        b.dtype = Dtype::F32;
        Ok(p)
    }

    fn pre_ptrs(&mut self, pre: Pre<'_, Gpu>, c: usize, what: &str) -> Result<PrePtrs> {
        Ok(match pre {
            Pre::Bias(b) => PrePtrs { bn: 0, mean: 0, inv: 0, shift: self.in_f32(b, c, &format!("{what}: bias"))? },
            Pre::Bn { bn, beta } => {
                let p = self.in_f32(bn, 2 * c, &format!("{what}: BN state [mean | invstd]"))?;
                let shift = self.in_f32(beta, c, &format!("{what}: BN beta"))?;
                PrePtrs { bn: 1, mean: p, inv: p + 4 * c as u64, shift }
            }
            // the kernels' "input is already a" (the conv kernels take it; head and pre_bwd
            // refuse it first)
            Pre::Activated => PrePtrs { bn: 2, mean: 0, inv: 0, shift: 0 },
        })
    }

    /// For each `(A, B, D, C, M, N, K)` of `batch` (at most [`GEMM_BATCH`]), `C = alpha·A·op(B) +
    /// beta·D` on f32 matrices (tensor cores, fp16-rounded inputs), all in one launch. With
    /// `splits` > 1 (split-K, beta 0): each entry's D is the destination and its C an
    /// [splits][M][N] scratch; a second launch adds the slices in order.
    fn gemm(
        &mut self,
        trans_b: bool,
        batch: &[(Arg, Arg, Arg, Arg, usize, usize, usize)],
        alpha: f32,
        beta: f32,
        splits: usize,
    ) -> Result<()> {
        check(!batch.is_empty() && batch.len() <= GEMM_BATCH, || {
            format!("gemm: a batch of {} (1..={GEMM_BATCH})", batch.len())
        })?;
        check(splits >= 1 && (splits == 1 || beta == 0.0), || format!("gemm: {splits} splits with beta {beta}"))?;
        let mut g = GemmBatch {
            a: [0; GEMM_BATCH],
            b: [0; GEMM_BATCH],
            d: [0; GEMM_BATCH],
            c: [0; GEMM_BATCH],
            m: [0; GEMM_BATCH],
            n: [0; GEMM_BATCH],
            k: [0; GEMM_BATCH],
            count: batch.len() as i32,
            alpha,
            beta,
            splits: int(splits, "GEMM splits")? as i32,
        };
        let (mut gx, mut gy, mut len) = (1, 1, 1);
        for (z, &(a, b, d, c, m, n, k)) in batch.iter().enumerate() {
            (g.a[z], g.b[z], g.d[z], g.c[z]) = (a, b, d, c);
            (g.m[z], g.n[z], g.k[z]) =
                (int(m, "GEMM rows")? as i32, int(n, "GEMM columns")? as i32, int(k, "GEMM depth")? as i32);
            gx = gx.max(n.div_ceil(64));
            gy = gy.max(m.div_ceil(64));
            len = len.max(m * n);
        }
        let z = int(batch.len() * splits, "GEMM blocks in z")? as u32;
        let grid = (int(gx, "GEMM column tiles")? as u32, int(gy, "GEMM row tiles")? as u32, z);
        let name = if trans_b { "gemm_nt_f32" } else { "gemm_nn_f32" };
        self.launch_struct("optim", name, grid, (128, 1, 1), &g)?;
        if splits > 1 {
            let grid = (blocks(len)?.min(1024), batch.len() as u32, 1);
            self.launch_struct("optim", "gemm_splitk_sum_f32", grid, (BLOCK, 1, 1), &g)?;
        }
        Ok(())
    }

    /// Launches `module::name` whose one parameter is the struct `arg`, passed by value.
    fn launch_struct<T: DeviceRepr>(
        &mut self,
        module: &'static str,
        name: &'static str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        arg: &T,
    ) -> Result<()> {
        check_grid(name, grid)?;
        let f = self.func(module, name)?;
        let start = self.profile_mark()?;
        let mut params = [arg as *const T as *mut c_void];
        let cfg = LaunchConfig { grid_dim: grid, block_dim: block, shared_mem_bytes: 0 };
        // SAFETY: `T` mirrors the kernel's by-value struct (sizes checked by a test against the
        // PTX); its pointers were checked by the caller.
        unsafe { self.launch_kernel(&f, cfg, &mut params) }
            .map_err(|e| Gpu::err(&format!("launching {module}::{name}"), e))?;
        self.profile_done(name, start)
    }
}

/// One kernel's share of a profiled stretch of work ([`Gpu::profile`]).
#[derive(Debug, Clone, PartialEq)]
pub struct KernelTime {
    pub name: &'static str,
    pub launches: usize,
    pub seconds: f64,
}

impl Gpu {
    /// Runs `body` op by op with an event pair around every kernel launch, and returns the time
    /// per kernel name, largest first. The events add their own cost between launches, so the
    /// shares are what to read, not the total. Not while recording a graph.
    pub fn profile<R>(&mut self, body: impl FnOnce(&mut Self) -> Result<R>) -> Result<(R, Vec<KernelTime>)> {
        check(!self.ops.recording && self.ops.profile.is_none(), || "profile: nested or while recording".into())?;
        self.ops.profile = Some(Vec::new());
        let out = body(self);
        let events = self.ops.profile.take().expect("set above");
        let out = out?;
        let mut rows: Vec<KernelTime> = Vec::new();
        for (name, a, b) in &events {
            let s = self.seconds(a, b)?;
            match rows.iter_mut().find(|r| r.name == *name) {
                Some(r) => (r.launches, r.seconds) = (r.launches + 1, r.seconds + s),
                None => rows.push(KernelTime { name, launches: 1, seconds: s }),
            }
        }
        rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds).then(a.name.cmp(b.name)));
        Ok((out, rows))
    }

    /// Whether no profile is being taken (tests).
    #[cfg(test)]
    pub(crate) fn ops_profiling_is_off(&self) -> bool {
        self.ops.profile.is_none()
    }

    /// Uploads `host` stored as fp16 (each value rounded to nearest): an activation-type
    /// tensor as the kernels write them (tests and benchmarks use it to skip the cast path).
    pub fn upload_f16(&mut self, host: &[f32]) -> Result<GBuf> {
        let mut mem = self.alloc::<f32>(host.len(), "a float tensor")?;
        if !host.is_empty() {
            let h: Vec<u16> = host.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
            // SAFETY: len fp16 values fit in the 4·len bytes of the allocation.
            let mut v = unsafe { mem.transmute_mut::<u16>(host.len()) }
                .ok_or_else(|| Error::Gpu("an fp16 view of a tensor does not fit".into()))?;
            self.stream.memcpy_htod(&h, &mut v).map_err(|e| Gpu::err("uploading an fp16 tensor", e))?;
        }
        Ok(GBuf { mem, len: host.len(), dtype: Dtype::F16 })
    }

    /// Copies a word tensor (e.g. the step record) to the host.
    pub fn download_words(&mut self, w: &GWords) -> Result<Vec<u32>> {
        self.download_first(&w.mem, w.len, "downloading a word tensor")
    }

    /// Copies a byte tensor (e.g. pooling argmax indices) to the host.
    pub fn download_bytes(&mut self, b: &GBytes) -> Result<Vec<u8>> {
        self.download_first(&b.mem, b.len, "downloading a byte tensor")
    }

    /// The first `len` values of `mem` on the host.
    fn download_first<T: DeviceRepr + Default + Clone>(
        &self,
        mem: &CudaSlice<T>,
        len: usize,
        what: &str,
    ) -> Result<Vec<T>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        self.stream.clone_dtoh(&mem.slice(0..len)).map_err(|e| Gpu::err(what, e))
    }
}

fn norm_args(norm: Norm) -> [Arg; 6] {
    [flt(norm.mean[0]), flt(norm.mean[1]), flt(norm.mean[2]), flt(norm.std[0]), flt(norm.std[1]), flt(norm.std[2])]
}

/// Steps recorded as CUDA graphs (see [`OpState`] for the rules that keep them valid).
impl Record for Gpu {
    type Graph = GpuGraph;

    fn record(&mut self, body: &mut dyn FnMut(&mut Self) -> Result<()>) -> Result<Option<GpuGraph>> {
        self.begin()?; // free the last op's temporaries outside the recording
        let (ctx, stream) = (self.ctx.clone(), self.stream.clone());
        // counted as live from here: a scratch buffer must not be freed under a half-made graph
        let live = self.ops.graphs.clone();
        self.ops.recording = true;
        self.ops.forked = false;
        // the side stream joined back before the capture ends (it must be: a fork left open
        // invalidates the capture)
        let mut capture = |g: &mut Self| super::capture(&ctx, &stream, |_| body(g).and_then(|_| g.join_side()));
        let mut g = capture(self);
        if let (Err(e), true) = (&g, self.ops.forked) {
            // a driver that refuses the fork into a second stream in a capture: once more with
            // every kernel on the main stream, Gpu::overlap off from here and the reason kept
            self.overlap_off = Some(format!("recording with a second stream failed ({e})"));
            self.overlap = false;
            (self.ops.side_pending, self.ops.on_side) = (false, false);
            g = capture(self);
        }
        self.ops.recording = false;
        Ok(Some(GpuGraph { graph: g?, _live: live }))
    }

    fn replay(&mut self, graph: &GpuGraph) -> Result<()> {
        self.begin()?;
        graph.graph.launch().map_err(|e| Gpu::err("replaying a recorded training step (CUDA graph)", e))
    }
}

impl Backend for Gpu {
    type Buf = GBuf;
    type Bytes = GBytes;
    type Words = GWords;

    fn variants(&self) -> Vec<&'static str> {
        let paths = &self.conv_tune;
        if paths.len() < 2 {
            return Vec::new();
        }
        let mut names: Vec<_> = paths.iter().map(|p| p.name()).collect();
        if let Some(i) = names.iter().position(|&n| n == self.conv_path.name()) {
            names[..=i].rotate_right(1); // the current one first
        }
        // mixed once more without the overlap, after mixed (whose first run made its picks), and
        // with the overlap but Muon on the main stream
        if self.overlap_allowed() && names.contains(&ConvPath::Mixed.name()) {
            names.push(super::MIXED_ONE_STREAM);
            if self.muon_side_wanted {
                names.push(super::MIXED_MUON_MAIN);
            }
        }
        names
    }

    fn set_variant(&mut self, name: &str) -> Result<()> {
        let one_stream = name == super::MIXED_ONE_STREAM && self.overlap_allowed();
        let muon_main = name == super::MIXED_MUON_MAIN && self.overlap_allowed() && self.muon_side_wanted;
        let path = if one_stream || muon_main { Some(ConvPath::Mixed) } else { ConvPath::named(name) };
        match path {
            Some(p) if p.runs_on(self.info.cc) => {
                self.conv_path = p;
                self.overlap = self.overlap_allowed() && !one_stream;
                self.muon_side = self.overlap && self.muon_side_wanted && !muon_main;
                Ok(())
            }
            _ => Err(Error::Usage(format!("{}: no conv path {name:?} on this GPU", self.info))),
        }
    }

    /// Mixed's own variant settles its picks in an untimed first run; mixed on one stream and
    /// with Muon on the main stream reuse them (they are timed after mixed).
    fn variant_settles(&self) -> bool {
        self.conv_path == ConvPath::Mixed && !self.one_stream_variant() && !self.muon_main_variant()
    }

    fn variant_note(&self) -> String {
        if self.conv_path != ConvPath::Mixed {
            return String::new();
        }
        if self.one_stream_variant() {
            return "mixed's picks, every kernel on the main stream".into();
        }
        if self.muon_main_variant() {
            return "mixed's picks, Muon on the main stream".into();
        }
        self.conv_picks_timed().join("; ")
    }

    fn describe(&self) -> String {
        let img = self.image("conv").map(|i| i.to_string()).unwrap_or_else(|| "no conv image".into());
        let sums = if self.conv_path.is_mma() && !self.epilogue_sums { " (epilogue sums off)" } else { "" };
        let convs = self.conv_path.name();
        let pdl = match (&self.pdl_off, self.pdl) {
            (Some(why), _) => format!(", programmatic dependent launch off: {why}"),
            (None, true) => ", programmatic dependent launch".into(),
            (None, false) => String::new(),
        };
        let overlap = match (&self.overlap_off, self.overlap) {
            (Some(why), _) => format!(", weight gradients on one stream: {why}"),
            (None, true) if self.chain_priority => {
                format!(", weight gradients on a second stream (the chain at priority {})", self.priority_high)
            }
            (None, true) => ", weight gradients on a second stream".into(),
            (None, false) => String::new(),
        };
        let overlap = if self.overlap && self.muon_side { format!("{overlap}, Muon there too") } else { overlap };
        format!("GPU {} ({img}, {convs} convs{sums}{pdl}{overlap}, fp16 activations, fp32 accumulation)", self.info)
    }

    fn zeros(&mut self, n: usize) -> Result<GBuf> {
        Ok(GBuf { mem: self.alloc::<f32>(n, "a float tensor")?, len: n, dtype: Dtype::Zero })
    }
    fn upload(&mut self, host: &[f32]) -> Result<GBuf> {
        let mut mem = self.alloc::<f32>(host.len(), "a float tensor")?;
        if !host.is_empty() {
            self.stream.memcpy_htod(host, &mut mem).map_err(|e| Gpu::err("uploading a float tensor", e))?;
        }
        Ok(GBuf { mem, len: host.len(), dtype: Dtype::F32 })
    }
    fn download(&mut self, buf: &GBuf) -> Result<Vec<f32>> {
        if buf.len == 0 {
            return Ok(Vec::new());
        }
        let err = |e| Gpu::err("downloading a float tensor", e);
        match buf.dtype {
            Dtype::Zero | Dtype::F32 => self.stream.clone_dtoh(&buf.mem.slice(0..buf.len)).map_err(err),
            Dtype::F16 => {
                // SAFETY: len fp16 values occupy the first 2·len of the 4·len bytes.
                let v = unsafe { buf.mem.transmute::<u16>(buf.len) }
                    .ok_or_else(|| Error::Gpu("an fp16 view of a tensor does not fit".into()))?;
                let h = self.stream.clone_dtoh(&v).map_err(err)?;
                Ok(h.into_iter().map(|b| f16::from_bits(b).to_f32()).collect())
            }
        }
    }
    fn upload_bytes(&mut self, host: &[u8]) -> Result<GBytes> {
        let mut mem = self.alloc::<u8>(host.len(), "a byte tensor")?;
        if !host.is_empty() {
            self.stream.memcpy_htod(host, &mut mem).map_err(|e| Gpu::err("uploading bytes", e))?;
        }
        Ok(GBytes { mem, len: host.len() })
    }
    fn byte_zeros(&mut self, n: usize) -> Result<GBytes> {
        Ok(GBytes { mem: self.alloc::<u8>(n, "a byte tensor")?, len: n })
    }
    fn upload_words(&mut self, host: &[u32]) -> Result<GWords> {
        let mut mem = self.alloc::<u32>(host.len(), "a word tensor")?;
        if !host.is_empty() {
            self.stream.memcpy_htod(host, &mut mem).map_err(|e| Gpu::err("uploading words", e))?;
        }
        Ok(GWords { mem, len: host.len() })
    }
    fn write_words(&mut self, dst: &mut GWords, host: &[u32]) -> Result<()> {
        check_len(host.len(), dst.len, "write_words: the host words")?;
        if !host.is_empty() {
            self.stream.memcpy_htod(host, &mut dst.mem).map_err(|e| Gpu::err("uploading words", e))?;
        }
        Ok(())
    }
    fn write(&mut self, dst: &mut GBuf, host: &[f32]) -> Result<()> {
        check_len(host.len(), dst.len, "write: the host values")?;
        if !host.is_empty() {
            self.stream.memcpy_htod(host, &mut dst.mem).map_err(|e| Gpu::err("writing a float tensor", e))?;
        }
        dst.dtype = Dtype::F32;
        Ok(())
    }
    fn sync(&mut self) -> Result<()> {
        Gpu::sync(self)
    }

    type Mark = CudaEvent;
    fn mark(&mut self) -> Result<CudaEvent> {
        let e = self
            .ctx
            .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| Gpu::err("creating a timing event", e))?;
        e.record(&self.stream).map_err(|e| Gpu::err("recording a timing event", e))?;
        Ok(e)
    }
    fn seconds(&mut self, a: &CudaEvent, b: &CudaEvent) -> Result<f64> {
        b.synchronize().map_err(|e| Gpu::err("waiting for a timing event", e))?;
        let ms = a.elapsed_ms(b).map_err(|e| Gpu::err("reading two timing events", e))?;
        Ok(ms as f64 * 1e-3)
    }

    fn next_step(&mut self, plan: &GWords, step: &mut GWords) -> Result<()> {
        self.begin()?;
        check(plan.len % STEP_WORDS == 0, || {
            format!("next_step: a plan of {} words is not rows of {STEP_WORDS}", plan.len)
        })?;
        check_len(step.len, STEP_LEN, "next_step: the step record")?;
        let args = [self.ptr(&plan.mem), int(plan.len / STEP_WORDS, "plan rows")?, self.ptr_mut(&mut step.mem)];
        self.launch("optim", "step_next", (1, 1, 1), (32, 1, 1), &args)
    }

    fn patch_cov(&mut self, images: &GBytes, n: usize, norm: Norm) -> Result<Vec<f64>> {
        self.begin()?;
        check(n > 0 && images.len >= n * 3072, || {
            format!(
                "patch_cov: {n} images asked for, the tensor holds {} bytes ({} images)",
                images.len,
                images.len / 3072
            )
        })?;
        // the f64 partial sums live in the shared workspace (2 f32 slots each): nothing is
        // allocated inside a timed run, of which the whitening init is part
        let nb = n.min(256);
        let part = self.workspace(nb * 144 * 2)?;
        let mut args = vec![self.ptr(&images.mem), int(n, "images")?];
        args.extend(norm_args(norm));
        args.push(part);
        self.launch("stem", "patch_cov_f32", (nb as u32, 1, 1), (160, 1, 1), &args)?;
        let ws = self.ops.ws.as_ref().expect("sized by workspace() above");
        let words = self.download_first(ws, nb * 144 * 2, "downloading the patch covariance")?;
        let host: Vec<f64> = words
            .chunks_exact(2)
            .map(|w| f64::from_bits(w[0].to_bits() as u64 | (w[1].to_bits() as u64) << 32))
            .collect();
        let count = (n * 31 * 31) as f64;
        let mut cov = vec![0.0f64; 144];
        for b in 0..nb {
            for (c, v) in cov.iter_mut().zip(&host[b * 144..][..144]) {
                *c += v;
            }
        }
        Ok(cov.into_iter().map(|s| s / count).collect())
    }

    fn stem(
        &mut self,
        images: &GBytes,
        total: usize,
        aug: &GWords,
        step: &GWords,
        n: usize,
        norm: Norm,
        w: &GBuf,
        bias: &GBuf,
        cw: usize,
        res: usize,
        out: &mut GBuf,
        grad: Option<&mut GBuf>,
    ) -> Result<()> {
        self.begin()?;
        check((2..=32).contains(&res), || format!("stem: resolution {res} outside 2..=32"))?;
        check_len(images.len, total * 3072, &format!("stem: images ({total}×32×32×3)"))?;
        check_len(step.len, STEP_LEN, "stem: the step record")?;
        check(cw % 8 == 0 && cw > 0 && cw <= 64, || {
            format!("stem: {cw} filters; must be a multiple of 8, at most 64")
        })?;
        let per = (res - 1) * (res - 1);
        if n == 0 {
            check_len(out.len, 0, "stem: out")?;
            return grad.map_or(Ok(()), |g| check_len(g.len, 0, "stem: grad"));
        }
        let wp = self.in_f32(w, cw * 12, "stem: weights")?;
        let bp = self.in_f32(bias, cw, "stem: bias")?;
        let o = self.out(out, n * per * cw, Dtype::F16, "stem: out")?;
        let gp = match grad {
            Some(g) => Some(self.out(g, n * per * cw, Dtype::F16, "stem: grad")?),
            None => None,
        };
        let mut args = vec![
            self.ptr(&images.mem),
            int(total, "images")?,
            self.ptr(&aug.mem),
            int(aug.len, "augmentation words")?,
            self.ptr(&step.mem),
            int(n, "batch")?,
        ];
        args.extend(norm_args(norm));
        // Full resolution has its own kernels (no resize, one block per example; with grad, its
        // own kernel); below it, the bilinear one.
        if res == 32 {
            args.extend([wp, int(cw, "filters")?, bp, o]);
            let name = match gp {
                Some(g) => {
                    args.push(g);
                    "stem_fwd_grad_f16"
                }
                None => "stem_fwd_f16",
            };
            self.launch("stem", name, (int(n, "batch")? as u32, 1, 1), (256, 1, 1), &args)
        } else {
            args.extend([wp, int(cw, "filters")?, int(res, "resolution")?, bp, o, gp.unwrap_or(0)]);
            self.launch1d("stem", "stem_res_fwd_f16", n * per * cw / 8, &args)
        }
    }

    fn conv3x3(
        &mut self,
        x: &GBuf,
        xs: Shape,
        pre: Pre<'_, Self>,
        w: &GBuf,
        cout: usize,
        pool: bool,
        y: &mut GBuf,
        argmax: &mut GBytes,
        mut keep: Option<&mut GBuf>,
        mut stats: Option<BnStats<'_, Self>>,
    ) -> Result<()> {
        self.begin()?;
        let key = GemmKey { gemm: Gemm::Fwd, xs, cout, pool, sums: stats.is_some() };
        if self.must_tune(&key) {
            // each call updates the running statistics once: put them back afterwards
            let saved = match &stats {
                Some(s) => Some((self.download(s.running_mean)?, self.download(s.running_var)?)),
                None => None,
            };
            self.tune_gemm(key, &mut |g| {
                let st = stats.as_mut().map(|s| BnStats {
                    eps: s.eps,
                    momentum: s.momentum,
                    running_mean: &mut *s.running_mean,
                    running_var: &mut *s.running_var,
                    bn: &mut *s.bn,
                });
                g.conv3x3(x, xs, pre, w, cout, pool, y, argmax, keep.as_deref_mut(), st)
            })?;
            if let (Some(s), Some((m, v))) = (&mut stats, saved) {
                self.write(s.running_mean, &m)?;
                self.write(s.running_var, &v)?;
            }
            self.begin()?;
        }
        let cin = xs.c;
        check_channels("conv3x3", cin, cout)?;
        check_pixels("conv3x3", xs, cout)?;
        let ys = if pool { xs.with_c(cout).pooled() } else { xs.with_c(cout) };
        let xp = self.in_f16(x, xs.len(), &format!("conv3x3: x {xs:?}"))?;
        let pp = self.pre_ptrs(pre, cin, "conv3x3")?;
        let wp = self.in_f32(w, cout * 9 * cin, &format!("conv3x3: weight {cout}×3×3×{cin}"))?;
        let yp = self.out(y, ys.len(), Dtype::F16, &format!("conv3x3: y {ys:?}"))?;
        let ap = if pool {
            check_len(argmax.len, ys.len(), &format!("conv3x3: argmax {ys:?}"))?;
            self.ptr_mut(&mut argmax.mem)
        } else {
            0
        };
        let keep = match keep {
            Some(k) => Some(self.out(k, xs.len(), Dtype::F16, &format!("conv3x3: kept activation {xs:?}"))?),
            None => None,
        };
        // with stats: (outputs, eps, momentum)
        let bn = match stats {
            Some(s) => {
                Some((self.bn_outputs("conv3x3: ", ys, s.running_mean, s.running_var, s.bn)?, s.eps, s.momentum))
            }
            None => None,
        };
        let m = if pool { ys.count() * 4 } else { xs.count() };
        if m == 0 {
            return Ok(());
        }
        let (xp, pp) = self.activate(xp, xs, &pp, keep)?;
        if self.mma_path("conv3x3")? {
            // with stats: the epilogue writes the BatchNorm partials, [2·cout][row tiles] f64
            let kn = self.mma_kernel(&key);
            let rows = if kn.per_image { blocks_of(xs.n, 1)? } else { blocks_of(m, kn.tm)? };
            let tiles = kn.grid_rows(rows);
            let grid = (kn.launch_rows(rows, self.info.sms.max(1) as u32), cout.div_ceil(kn.tn) as u32, 1);
            // one workspace: the fp16 weights (conv_weights_f16), then the BatchNorm partials
            let wf = (cout * 9 * cin).div_ceil(2).next_multiple_of(64);
            let fused = bn.is_some() && self.epilogue_sums && self.fused_stats(&key);
            let part_len = if fused { tiles as usize * 4 * cout } else { 0 };
            let ws = self.workspace(wf + part_len)?;
            let part = if part_len > 0 { ws + 4 * wf as u64 } else { 0 };
            let (ni, hi, wi) = (int(xs.n, "batch")?, int(xs.h, "height")?, int(xs.w, "width")?);
            let (ci, co) = (int(cin, "cin")?, int(cout, "cout")?);
            // the multicast kernel reads wf in the bulk-copy layout (layout 2, the same size;
            // layout 1 only changes wt, which is not written here)
            let layout = kn.weight_layout();
            self.launch1d("conv", "conv_weights_f16", cout * 9 * cin, &[wp, co, ci, ws, 0, layout])?;
            // null y: the kernel skips its epilogue (the bench's main-loop-only lines); pool | 2:
            // a wgmma forward's register epilogue instead of its shared-memory loop (the bench's
            // "register epilogue" lines; the persistent kernels have only the former)
            let yk = if self.mainloop_only { 0 } else { yp };
            let regs = self.register_epilogue && kn.wgmma && !kn.persistent;
            let args = [xp, ni, hi, wi, ci, ws, co, pool as u64 | if regs { 2 } else { 0 }, yk, ap, part];
            self.launch_smem("conv", kn.name, grid, (kn.threads, 1, 1), kn.smem, &args)?;
            return match bn {
                Some((o, eps, mom)) if part != 0 => self.bn_finalize(part, tiles as usize, ys, eps, mom, o),
                Some((o, eps, mom)) => self.bn_from_y(yp, ys, eps, mom, o),
                None => Ok(()),
            };
        }
        let grid = (blocks_of(m, 64)?, cout.div_ceil(64) as u32, 1);
        let args = [
            xp,
            int(xs.n, "batch")?,
            int(xs.h, "height")?,
            int(xs.w, "width")?,
            int(cin, "cin")?,
            pp.mean,
            pp.inv,
            pp.shift,
            pp.bn,
            wp,
            int(cout, "cout")?,
            pool as u64,
            yp,
            ap,
        ];
        self.launch("conv", "conv3x3_fwd_f16", grid, (128, 1, 1), &args)?;
        match bn {
            // the wmma kernel has no statistics epilogue: one more read of y
            Some((o, eps, mom)) => self.bn_from_y(yp, ys, eps, mom, o),
            None => Ok(()),
        }
    }

    fn bn_stats(
        &mut self,
        y: &GBuf,
        ys: Shape,
        eps: f32,
        momentum: f32,
        running_mean: &mut GBuf,
        running_var: &mut GBuf,
        bn: &mut GBuf,
    ) -> Result<()> {
        self.begin()?;
        let yp = self.in_f16(y, ys.len(), &format!("bn_stats: y {ys:?}"))?;
        let out = self.bn_outputs("", ys, running_mean, running_var, bn)?;
        self.bn_from_y(yp, ys, eps, momentum, out)
    }

    fn bn_eval(&mut self, running_mean: &GBuf, running_var: &GBuf, eps: f32, bn: &mut GBuf) -> Result<()> {
        self.begin()?;
        let c = running_mean.len;
        let rm = self.in_f32(running_mean, c, "bn_eval: running mean")?;
        let rv = self.in_f32(running_var, c, "bn_eval: running var")?;
        let bp = self.out(bn, 2 * c, Dtype::F32, "bn_eval: bn [mean | invstd]")?;
        if c == 0 {
            return Ok(());
        }
        self.launch1d("norm", "bn_eval_f32", c, &[rm, rv, int(c, "channels")?, flt(eps), bp])
    }

    fn head(
        &mut self,
        x: &GBuf,
        xs: Shape,
        pre: Pre<'_, Self>,
        w: &GBuf,
        classes: usize,
        scale: f32,
        feat: &mut GBuf,
        argmax: &mut GBytes,
        logits: &mut GBuf,
    ) -> Result<()> {
        self.begin()?;
        let (n, c, hw) = (xs.n, xs.c, xs.h * xs.w);
        check(!matches!(pre, Pre::Activated), || "head: its input must have a map (bias or BatchNorm)".to_string())?;
        check((1..=256).contains(&hw), || format!("head: argmax is a byte, so 1..=256 positions, got {xs:?}"))?;
        check(c <= 1024, || format!("head: at most 1024 channels, got {c}"))?;
        let xp = self.in_f16(x, xs.len(), &format!("head: x {xs:?}"))?;
        let pp = self.pre_ptrs(pre, c, "head")?;
        let wp = self.in_f32(w, classes * c, "head: weight")?;
        let fp = self.out(feat, n * c, Dtype::F32, "head: feat")?;
        check_len(argmax.len, n * c, "head: argmax")?;
        let ap = self.ptr_mut(&mut argmax.mem);
        let lp = self.out(logits, n * classes, Dtype::F32, "head: logits")?;
        if n == 0 {
            return Ok(());
        }
        let args = [
            xp,
            int(hw, "positions")?,
            int(c, "channels")?,
            pp.mean,
            pp.inv,
            pp.shift,
            pp.bn,
            wp,
            int(classes, "classes")?,
            flt(scale),
            fp,
            ap,
            lp,
        ];
        self.launch("head", "head_fwd_f16", (int(n, "batch")? as u32, 1, 1), (256, 1, 1), &args)
    }

    fn xent(
        &mut self,
        logits: &GBuf,
        labels: &GBytes,
        aug: &GWords,
        step: &GWords,
        n: usize,
        classes: usize,
        smoothing: f32,
        dlogits: &mut GBuf,
        acc: &mut GBuf,
    ) -> Result<()> {
        self.begin()?;
        check(classes >= 1, || "xent: no classes".into())?;
        check_len(step.len, STEP_LEN, "xent: the step record")?;
        let lp = self.in_f32(logits, n * classes, "xent: logits")?;
        let dp = self.out(dlogits, n * classes, Dtype::F32, "xent: dlogits")?;
        let ap = self.inout_f32(acc, 2, "xent: accumulator [loss, correct]")?;
        if n == 0 {
            return Ok(());
        }
        // per block of XENT_THREADS examples: its f64 (loss, correct) sums, 4 f32 slots
        let nb = n.div_ceil(XENT_THREADS);
        let part = self.workspace(4 * nb)?;
        let args = [
            lp,
            self.ptr(&labels.mem),
            self.ptr(&aug.mem),
            int(aug.len, "augmentation words")?,
            self.ptr(&step.mem),
            int(n, "batch")?,
            int(labels.len, "labels")?,
            int(classes, "classes")?,
            flt(smoothing),
            dp,
            part,
        ];
        self.launch("head", "xent_fwd_bwd_f32", (int(nb, "blocks")? as u32, 1, 1), (XENT_THREADS as u32, 1, 1), &args)?;
        self.launch("head", "xent_acc_f64", (1, 1, 1), (32, 1, 1), &[part, int(nb, "blocks")?, ap])
    }

    fn axpy(&mut self, acc: &mut GBuf, x: &GBuf, weight: f32) -> Result<()> {
        self.begin()?;
        let n = acc.len;
        let xp = self.in_f32(x, n, "axpy: x")?;
        let ap = self.inout_f32(acc, n, "axpy: acc")?;
        if n == 0 {
            return Ok(());
        }
        self.launch1d("head", "axpy_f32", n, &[ap, xp, long(n), flt(weight)])
    }

    fn head_bwd(
        &mut self,
        dlogits: &GBuf,
        feat: &GBuf,
        argmax: &GBytes,
        w: &GBuf,
        xs: Shape,
        classes: usize,
        scale: f32,
        dw: &mut GBuf,
        da: &mut GBuf,
    ) -> Result<()> {
        self.begin()?;
        let (n, c, hw) = (xs.n, xs.c, xs.h * xs.w);
        check(classes <= HEAD_MAX_CLASSES, || format!("head_bwd: {classes} classes; at most {HEAD_MAX_CLASSES}"))?;
        let dl = self.in_f32(dlogits, n * classes, "head_bwd: dlogits")?;
        let fp = self.in_f32(feat, n * c, "head_bwd: feat")?;
        check_len(argmax.len, n * c, "head_bwd: argmax")?;
        let wp = self.in_f32(w, classes * c, "head_bwd: weight")?;
        let dwp = self.out(dw, classes * c, Dtype::F32, "head_bwd: dw")?;
        let dap = self.out(da, xs.len(), Dtype::F16, &format!("head_bwd: da {xs:?}"))?;
        let (ni, ci, ki) = (int(n, "batch")?, int(c, "channels")?, int(classes, "classes")?);
        if classes * c > 0 {
            // dw in two passes: per slice of HEAD_SLICE examples, then the slices in order (the
            // conv weight gradient's in-order slice sum)
            let slices = n.div_ceil(HEAD_SLICE).max(1);
            let (len, part) = (classes * c, self.workspace(slices * classes * c)?);
            let grid = (int(c.div_ceil(32), "channel blocks")? as u32, int(slices, "slices")? as u32, 1);
            self.launch("head", "head_bwd_dw_part_f32", grid, (32, 8, 1), &[dl, fp, ni, ci, ki, flt(scale), part])?;
            self.reduce_slices(part, slices, len, dwp)?;
        }
        if n * c > 0 {
            let args = [dl, self.ptr(&argmax.mem), wp, ni, int(hw, "positions")?, ci, ki, flt(scale), dap];
            self.launch1d("head", "head_bwd_da_f16", n * c, &args)?;
        }
        Ok(())
    }

    fn pre_bwd(
        &mut self,
        da: &GBuf,
        x: &GBuf,
        xs: Shape,
        pre: Pre<'_, Self>,
        sums: Option<&GBuf>,
        dshift: &mut GBuf,
        dx: Option<&mut GBuf>,
        unpool: Option<Unpool<'_, Self>>,
    ) -> Result<()> {
        self.begin_chain();
        let c = xs.c;
        check(c % 8 == 0, || format!("pre_bwd: {c} channels; a multiple of 8 is required (16-byte fp16 chunks)"))?;
        // unpooled: dx at the pool input's shape, routed through the pool's picks
        let (dxs, am, full_h, full_w) = match unpool {
            Some(u) => {
                check(dx.is_some(), || "pre_bwd: unpool needs dx".to_string())?;
                let f = u.full;
                check(f.pooled() == xs && f.h >= 2 && f.w >= 2, || format!("pre_bwd: {xs:?} is not {f:?} pooled"))?;
                // the kernel indexes the unpooled pixels and chunks in 32 bits
                check(f.len() <= i32::MAX as usize, || {
                    format!("pre_bwd: unpooled gradient {f:?} has more than 2^31 − 1 values (use a smaller batch)")
                })?;
                check_len(u.argmax.len, xs.len(), &format!("pre_bwd: argmax {xs:?}"))?;
                (f, self.ptr(&u.argmax.mem), int(f.h, "height")?, int(f.w, "width")?)
            }
            None => (xs, 0, 0, 0),
        };
        let dap = self.in_f16(da, xs.len(), &format!("pre_bwd: da {xs:?}"))?;
        let xp = self.in_f16(x, xs.len(), &format!("pre_bwd: x {xs:?}"))?;
        check(!matches!(pre, Pre::Activated), || "pre_bwd: no gradient through an activated input".to_string())?;
        let pp = self.pre_ptrs(pre, c, "pre_bwd")?;
        let sums = match sums {
            Some(s) => Some(self.in_f32(s, 2 * c, "pre_bwd: sums [Σdu | Σdu·x̂]")?),
            None => None,
        };
        let dsp = self.out(dshift, c, Dtype::F32, "pre_bwd: dshift")?;
        let dxp = match dx {
            Some(d) => Some(self.out(d, dxs.len(), Dtype::F16, &format!("pre_bwd: dx {dxs:?}"))?),
            None => None,
        };
        if c == 0 {
            return Ok(());
        }
        check(xs.count() > 0, || format!("pre_bwd: empty tensor {xs:?}"))?;
        let sums = match sums {
            Some(s) => s,
            None => self.pre_sums(dap, xp, xs, pp, None)?,
        };
        // dshift from the sums (threads c < C) and dx (8 channels per thread)
        let len = if dxp.is_some() { xs.len() } else { 0 };
        let cc = int(c, "channels")?;
        check(dxs.len() / 8 < 1 << 31, || format!("pre_bwd: {dxs:?} is too large"))?;
        let (count, dxp) = (long(xs.count()), dxp.unwrap_or(0));
        let args =
            [dap, xp, long(len), cc, pp.mean, pp.inv, pp.shift, pp.bn, sums, count, dsp, dxp, am, full_h, full_w];
        // ≈ 4 chunks of 8 values per thread (each thread loads its channels' parameters once)
        self.launch1d("norm", "pre_bwd_dx_f16", (len / 8).div_ceil(4).max(c), &args)
    }

    fn conv3x3_bwd(
        &mut self,
        x: &GBuf,
        xs: Shape,
        pre: Pre<'_, Self>,
        w: &GBuf,
        cout: usize,
        pool: bool,
        argmax: &GBytes,
        dy: &GBuf,
        dw: &mut GBuf,
        mut da: Option<&mut GBuf>,
        mut da_sums: Option<&mut GBuf>,
        kept: Option<&GBuf>,
    ) -> Result<()> {
        self.begin_chain();
        // ConvPath::Mixed: the weight gradient timed alone (no da), then the input gradient
        // with the weight gradient's pick
        let key = GemmKey { gemm: Gemm::Dgrad, xs, cout, pool, sums: da_sums.is_some() };
        let wkey = GemmKey { gemm: Gemm::Wgrad, sums: false, ..key };
        if self.must_tune(&wkey) {
            self.tune_gemm(wkey, &mut |g| g.conv3x3_bwd(x, xs, pre, w, cout, pool, argmax, dy, dw, None, None, kept))?;
            self.begin()?;
        }
        if da.is_some() && self.must_tune(&key) {
            self.tune_gemm(key, &mut |g| {
                let (d, s) = (da.as_deref_mut(), da_sums.as_deref_mut());
                g.conv3x3_bwd(x, xs, pre, w, cout, pool, argmax, dy, dw, d, s, kept)
            })?;
            self.begin()?;
        }
        let cin = xs.c;
        check_channels("conv3x3_bwd", cin, cout)?;
        check_pixels("conv3x3_bwd", xs, cout)?;
        check(da.is_some() || da_sums.is_none(), || "conv3x3_bwd: da_sums needs da".to_string())?;
        check(da.is_none() || !matches!(pre, Pre::Activated), || {
            "conv3x3_bwd: no input gradient through an activated input (its map is the stem's)".to_string()
        })?;
        let ys = if pool { xs.with_c(cout).pooled() } else { xs.with_c(cout) };
        let k = 9 * cin;
        let xp = self.in_f16(x, xs.len(), &format!("conv3x3_bwd: x {xs:?}"))?;
        let pp = self.pre_ptrs(pre, cin, "conv3x3_bwd")?;
        let wp = self.in_f32(w, cout * k, &format!("conv3x3_bwd: weight {cout}×3×3×{cin}"))?;
        let dyp = self.in_f16(dy, ys.len(), &format!("conv3x3_bwd: dy {ys:?}"))?;
        let ap = if pool {
            check_len(argmax.len, ys.len(), &format!("conv3x3_bwd: argmax {ys:?}"))?;
            self.ptr(&argmax.mem)
        } else {
            0
        };
        let dwp = self.out(dw, cout * k, Dtype::F32, "conv3x3_bwd: dw")?;
        let dap = match da {
            Some(d) => Some(self.out(d, xs.len(), Dtype::F16, &format!("conv3x3_bwd: da {xs:?}"))?),
            None => None,
        };
        let sums = match da_sums {
            Some(s) => Some(self.out(s, 2 * cin, Dtype::F32, "conv3x3_bwd: da_sums [Σdu | Σdu·x̂]")?),
            None => None,
        };
        let (x_raw, pre_raw) = (xp, pp);
        let (ni, hi, wi, ci, co) =
            (int(xs.n, "batch")?, int(xs.h, "height")?, int(xs.w, "width")?, int(cin, "cin")?, int(cout, "cout")?);

        // Weight gradient: split-K over pixels so that the grid fills the GPU, then a
        // deterministic reduction of the slices.
        let p = xs.count();
        let mma = self.mma_path("conv3x3_bwd")?;
        // wmma: M = cout, N = 9·cin in 64×64 tiles; mma: M = 9·cin in 128-row tiles, N = cout in 64
        // (128 with the wide kernel)
        let k_tile = if mma { 128 } else { 64 };
        let wgrad_kernel = self.mma_kernel(&wkey);
        let o_tile = if mma { wgrad_kernel.tn } else { 64 };
        let per_image = mma && wgrad_kernel.per_image;
        let (slices, chunk) = if per_image {
            // the image-resident kernel: slices of whole images, about two blocks per SM
            let images = xs.n.div_ceil(2 * self.info.sms.max(1) as usize).max(1);
            (xs.n.div_ceil(images).max(1), images)
        } else {
            let tiles = k.div_ceil(k_tile) * cout.div_ceil(o_tile);
            let sms = self.info.sms.max(1) as usize;
            // blocks per SM: 4, or on wgmmap those of its wgmma kernel that fit an SM at once
            let per_sm = if self.gemm_path(&wkey) == ConvPath::WgmmaP && wgrad_kernel.wgmma {
                (SM90_SMEM / (wgrad_kernel.smem as usize + BLOCK_SMEM_RESERVED)).clamp(1, 4)
            } else {
                4
            };
            let slices = wgrad_slices(mma, tiles, per_sm * sms, p);
            let chunk = p.div_ceil(slices).div_ceil(32).max(1) * 32;
            (p.div_ceil(chunk).max(1), chunk)
        };
        let len = cout * k;
        // One workspace: on the mma path where the layer pools, the full-resolution output
        // gradient (unpool_f16) first, for both GEMMs; then the wgrad slices (reduced before the
        // dgrad runs) or the dgrad's epilogue partials.
        let full = if mma && pool { (p * cout).div_ceil(2).next_multiple_of(64) } else { 0 };
        let dgrad_kernel = self.mma_kernel(&key);
        // the input gradient's row tiles (its sums' partials: one row each) and its grid's x
        let dgrad_tiles = dgrad_kernel.grid_rows(blocks_of(p.max(1), dgrad_kernel.tm)?);
        let dgrad_blocks = dgrad_kernel.launch_rows(dgrad_tiles, self.info.sms.max(1) as u32);
        let dgrad_tiles = dgrad_tiles as usize;
        let epilogue = mma && dap.is_some() && sums.is_some() && self.epilogue_sums && self.fused_stats(&key);
        // Gpu::overlap: in a recording, the weight gradient and its slices' sum on the side
        // stream, the slices in its own workspace (sized here op by op, as recordings must not
        // allocate). Only with the kept input (nothing the chain rewrites) and an input gradient
        // to overlap, not where the output gradient is unpooled into the shared workspace.
        let side_capable = self.overlap
            && kept.is_some()
            && dap.is_some()
            && full == 0
            && p > 0
            && self.ops.force.is_none()
            && !self.mainloop_only;
        let side = side_capable && self.ops.recording;
        let side_ws = if side_capable && slices > 1 { self.side_workspace(slices * len)? } else { 0 };
        let wgrad_parts = if slices > 1 && !side { slices * len } else { 0 };
        let parts = wgrad_parts.max(if epilogue { dgrad_tiles * 2 * cin } else { 0 });
        let wt = if mma && dap.is_some() { len.div_ceil(2).next_multiple_of(64) } else { 0 };
        let ws = if full + wt + parts > 0 { self.workspace(full + wt + parts)? } else { 0 };
        let (ws_wt, ws_parts) = (ws + 4 * full as u64, ws + 4 * (full + wt) as u64);
        // the output gradient the mma GEMMs read
        let gp = if full > 0 {
            check(p * cout / 8 < 1 << 30, || format!("conv3x3_bwd: {xs:?}×{cout} is too large to unpool"))?;
            let args = [dyp, ap, ni, hi, wi, co, ws];
            // one thread per pooled 8-channel chunk (its window's four chunks), grid-stride
            self.launch1d("conv", "unpool_f16", (p * cout / 32).max(1), &args)?;
            ws
        } else {
            dyp
        };
        let out = match (slices, side) {
            (1, _) => dwp,
            (_, true) => side_ws,
            _ => ws_parts,
        };
        let (xp, pp) = match kept {
            Some(a) => {
                let what = format!("conv3x3_bwd: kept activation {xs:?}");
                check_len(a.len, xs.len(), &what)?;
                check(a.dtype == Dtype::F16, || format!("{what} was not written by conv3x3"))?;
                (self.ptr(&a.mem), PrePtrs { bn: 2, mean: 0, inv: 0, shift: 0 })
            }
            None => self.activate(xp, xs, &pp, None)?,
        };
        let k_blocks = if per_image { 1 } else { k.div_ceil(k_tile) as u32 };
        let grid = (k_blocks, cout.div_ceil(o_tile) as u32, slices as u32);
        // on the side stream until the slices' sum is issued
        self.on_side_if(side, |g| {
            if mma {
                // chunk: pixels per slice, or for the image-resident kernel images per slice
                // null out: the kernel skips its epilogue (the bench's main-loop-only lines)
                let ok = if g.mainloop_only { 0 } else { out };
                let args = [xp, ni, hi, wi, ci, gp, co, ok, int(chunk, "pixel chunk")?];
                let kn = wgrad_kernel;
                g.launch_smem("conv", kn.name, grid, (kn.threads, 1, 1), kn.smem, &args)?;
            } else {
                let args = [
                    xp,
                    ni,
                    hi,
                    wi,
                    ci,
                    pp.mean,
                    pp.inv,
                    pp.shift,
                    pp.bn,
                    dyp,
                    ap,
                    co,
                    pool as u64,
                    out,
                    int(chunk, "pixel chunk")?,
                ];
                g.launch("conv", "conv3x3_wgrad_f16", grid, (128, 1, 1), &args)?;
            }
            if slices > 1 {
                g.reduce_slices(out, slices, len, dwp)?;
            }
            Ok(())
        })?;

        // Input gradient; with da_sums, pre_bwd's sums too (mma: partials in its epilogue).
        if let Some(dap) = dap {
            if p > 0 {
                if mma {
                    let kn = dgrad_kernel;
                    let grid = (dgrad_blocks, cin.div_ceil(kn.tn) as u32, 1);
                    let part = if epilogue { ws_parts } else { 0 };
                    let pr = pre_raw;
                    // the wgmma kernels read the weights K-major: [cin][9·cout] (the multicast
                    // ones in the bulk-copy layout)
                    let layout = kn.weight_layout();
                    self.launch1d("conv", "conv_weights_f16", len, &[wp, co, ci, 0, ws_wt, layout])?;
                    // null da: the kernel skips its epilogue (the bench's main-loop-only lines);
                    // bn | 4: a wgmma input gradient's register epilogue for its sums instead of
                    // the shared-memory loop (the bench's "register epilogue" lines)
                    let dk = if self.mainloop_only { 0 } else { dap };
                    let regs = self.register_epilogue && kn.wgmma && !kn.persistent;
                    let bn = pr.bn | if regs { 4 } else { 0 };
                    let args = [gp, ni, hi, wi, ci, co, ws_wt, dk, x_raw, pr.mean, pr.inv, pr.shift, bn, part];
                    self.launch_smem("conv", kn.name, grid, (kn.threads, 1, 1), kn.smem, &args)?;
                    match sums {
                        Some(sp) if part != 0 => self.pre_sums_finalize(part, dgrad_tiles, cin, sp)?,
                        Some(sp) => _ = self.pre_sums(dap, x_raw, xs, pre_raw, Some(sp))?,
                        None => {}
                    }
                } else {
                    let grid = (blocks_of(p, 64)?, cin.div_ceil(64) as u32, 1);
                    let args = [dyp, ap, ni, hi, wi, ci, co, pool as u64, wp, dap];
                    self.launch("conv", "conv3x3_dgrad_f16", grid, (128, 1, 1), &args)?;
                    if let Some(sp) = sums {
                        // the wmma kernel has no sums epilogue: one more read
                        self.pre_sums(dap, x_raw, xs, pre_raw, Some(sp))?;
                    }
                }
            }
        }
        Ok(())
    }

    fn conv3x3_shift_grad(
        &mut self,
        g: &GBuf,
        xs: Shape,
        w: &GBuf,
        cout: usize,
        argmax: &GBytes,
        dy: &GBuf,
        _da: &mut GBuf,
        gw: &mut GBuf,
        dshift: &mut GBuf,
    ) -> Result<()> {
        // part of the backward chain: the side stream's weight gradients and Muon go on beside it
        self.begin_chain();
        let cin = xs.c;
        check_channels("conv3x3_shift_grad", cin, cout)?;
        check_len(g.len, xs.len(), &format!("conv3x3_shift_grad: g {xs:?}"))?;
        let dsp = self.out(dshift, cin, Dtype::F32, "conv3x3_shift_grad: dshift")?;
        // gw = the weight gradient of dy against g = GELU′(u) (the stem's grad) as the conv's
        // activated input, on the kernel the conv's own weight gradient at this shape takes;
        // no input gradient (da is the reference's scratch)
        self.conv3x3_bwd(g, xs, Pre::Activated, w, cout, false, argmax, dy, gw, None, None, None)?;
        let wp = self.in_f32(w, cout * 9 * cin, &format!("conv3x3_shift_grad: weight {cout}×3×3×{cin}"))?;
        let gwp = self.ptr(&gw.mem);
        let args = [wp, gwp, int(9 * cout, "weight rows")?, int(cin, "channels")?, dsp];
        self.launch("conv", "shift_from_wgrad_f32", (cin as u32, 1, 1), (256, 1, 1), &args)
    }

    fn sgd(&mut self, params: &mut [SgdParam<'_, Self>], step: &GWords, momentum: f32) -> Result<()> {
        self.begin()?;
        check_len(step.len, STEP_LEN, "sgd: the step record")?;
        for group in params.chunks_mut(SGD_MAX) {
            let mut a = SgdArgs {
                p: [0; SGD_MAX],
                g: [0; SGD_MAX],
                m: [0; SGD_MAX],
                n: [0; SGD_MAX],
                lr_slot: [0; SGD_MAX],
                wd: [0.0; SGD_MAX],
                step: self.ptr(&step.mem),
                count: group.len() as i32,
                mu: momentum,
            };
            let mut longest = 1;
            for (t, q) in group.iter_mut().enumerate() {
                let n = q.p.len;
                a.g[t] = self.in_f32(q.g, n, &format!("sgd: gradient of tensor {t}"))?;
                a.p[t] = self.inout_f32(q.p, n, &format!("sgd: parameter {t}"))?;
                a.m[t] = self.inout_f32(q.m, n, &format!("sgd: momentum of tensor {t}"))?;
                a.n[t] = int(n, "tensor length")? as i32;
                check(q.lr_slot < LRS, || format!("sgd: tensor {t} names rate slot {}, there are {LRS}", q.lr_slot))?;
                a.lr_slot[t] = q.lr_slot as i32;
                a.wd[t] = q.wd;
                longest = longest.max(n);
            }
            let grid = (blocks(longest)?.min(1024), group.len() as u32, 1);
            self.launch_struct("optim", "sgd_nesterov_f32", grid, (BLOCK, 1, 1), &a)?;
        }
        Ok(())
    }

    fn muon(
        &mut self,
        params: &mut [MuonParam<'_, Self>],
        step: &GWords,
        lr_slot: usize,
        momentum: f32,
        ns: Ns,
    ) -> Result<()> {
        // Gpu::muon_side: its own scratch (sized op by op too, as recordings must not allocate);
        // in a recording, its launches on the side stream after a fork (a conv weight gradient
        // may have run on the main stream: layer 0's), joined by the next op that is not part
        // of the backward chain
        let side_capable = self.overlap && self.muon_side && self.ops.force.is_none() && !self.mainloop_only;
        let side = side_capable && self.ops.recording;
        if side {
            self.begin_chain();
        } else {
            self.begin()?;
        }
        check_len(step.len, STEP_LEN, "muon: the step record")?;
        check(lr_slot < LRS, || format!("muon: rate slot {lr_slot}, there are {LRS}"))?;
        let sp = self.ptr(&step.mem);
        let scratch = if side_capable { Scratch::MuonWs } else { Scratch::Ws };
        self.on_side_if(side, |g| {
            params.chunks_mut(GEMM_BATCH).try_for_each(|group| g.muon_group(group, sp, lr_slot, momentum, ns, scratch))
        })
    }
}

impl Gpu {
    /// Muon for up to [`GEMM_BATCH`] tensors, every step one launch for all of them: the
    /// momentum with both norms' partial sums, the norms, X₀; each Newton–Schulz GEMM; the
    /// update. Scratch for every tensor lives in the shared workspace at once: u, X and the next X
    /// (n each), A and B (rows² each), the two f64 norms and 2·256 f64 partials, each region
    /// 256-byte aligned.
    fn muon_group(
        &mut self,
        group: &mut [MuonParam<'_, Self>],
        sp: Arg,
        lr_slot: usize,
        momentum: f32,
        ns: Ns,
        scratch: Scratch,
    ) -> Result<()> {
        let (ca, cb, cc) = ns.coeffs;
        let region = |len: usize| len.div_ceil(64) * 64;
        // X·Xᵀ (K = cols) in split-K slices of ≈ 288 columns: the 256-row weights' K loop of 72
        // steps over 16 output tiles was the longest chain of the step (NOTES, Muon)
        let splits = group.iter().map(|q| q.cols.div_ceil(288)).max().unwrap_or(1).clamp(1, 8);
        let need = |rows: usize, cols: usize| {
            3 * region(rows * cols) + 2 * region(rows * rows) + region(2 * 514) + region(splits * rows * rows)
        };
        let total: usize = group.iter().map(|q| need(q.rows, q.cols)).sum();
        let ws = self.scratch_ptr(scratch, total, &|| format!("allocating Muon's {total}-float workspace"))?;
        let mut mb = MuonBatch {
            w: [0; GEMM_BATCH],
            g: [0; GEMM_BATCH],
            m: [0; GEMM_BATCH],
            u: [0; GEMM_BATCH],
            x: [0; GEMM_BATCH],
            scal: [0; GEMM_BATCH],
            n: [0; GEMM_BATCH],
            rows: [0; GEMM_BATCH],
            nb: [0; GEMM_BATCH],
            step: sp,
            count: group.len() as i32,
            mu: momentum,
            lr_slot: lr_slot as i32,
        };
        // (rows, cols, X, next X, A, B) per tensor
        let mut mats = Vec::with_capacity(group.len());
        let mut at = ws;
        let (mut max_n, mut max_nb) = (1, 1);
        for (t, q) in group.iter_mut().enumerate() {
            let (rows, cols) = (q.rows, q.cols);
            let n = rows * cols;
            check(rows <= cols && rows > 0, || format!("muon: tensor {t} is {rows}×{cols}; needs 0 < rows ≤ cols"))?;
            mb.g[t] = self.in_f32(q.g, n, &format!("muon: gradient of tensor {t}"))?;
            mb.w[t] = self.inout_f32(q.w, n, &format!("muon: weight {t}"))?;
            mb.m[t] = self.inout_f32(q.m, n, &format!("muon: momentum of tensor {t}"))?;
            let off = |k: usize| at + 4 * k as u64;
            let (u, x, x2) = (off(0), off(region(n)), off(2 * region(n)));
            let (am, bm) = (off(3 * region(n)), off(3 * region(n) + region(rows * rows)));
            mb.scal[t] = off(3 * region(n) + 2 * region(rows * rows));
            let part = off(3 * region(n) + 2 * region(rows * rows) + region(2 * 514));
            at = off(need(rows, cols));
            let nb = blocks(n)?.min(256);
            (mb.u[t], mb.x[t], mb.nb[t]) = (u, x, nb as i32);
            (mb.n[t], mb.rows[t]) = (int(n, "tensor length")? as i32, int(rows, "rows")? as i32);
            (max_n, max_nb) = (max_n.max(n), max_nb.max(nb));
            mats.push((rows, cols, x, x2, am, bm, part));
        }
        let tensors = group.len() as u32;
        let wide = (blocks(max_n)?, tensors, 1);
        self.launch_struct("optim", "muon_prep_f32", (max_nb, tensors, 1), (BLOCK, 1, 1), &mb)?;
        self.launch_struct("optim", "muon_norms_f64", (1, tensors, 1), (BLOCK, 1, 1), &mb)?;
        self.launch_struct("optim", "muon_scale_f32", wide, (BLOCK, 1, 1), &mb)?;
        for _ in 0..ns.steps {
            // A = X·Xᵀ; B = b·A + c·A·A; X ← a·X + B·X
            // split-K: A lands in D (am), C is the slices' scratch
            let ab: Vec<_> = mats
                .iter()
                .map(
                    |&(r, c, x, _, am, _, part)| {
                        if splits > 1 {
                            (x, x, am, part, r, r, c)
                        } else {
                            (x, x, 0, am, r, r, c)
                        }
                    },
                )
                .collect();
            self.gemm(true, &ab, 1.0, 0.0, splits)?;
            let bb: Vec<_> = mats.iter().map(|&(r, _, _, _, am, bm, _)| (am, am, am, bm, r, r, r)).collect();
            self.gemm(false, &bb, cc, cb, 1)?;
            let xb: Vec<_> = mats.iter().map(|&(r, c, x, x2, _, bm, _)| (bm, x, x, x2, r, c, r)).collect();
            self.gemm(false, &xb, 1.0, ca, 1)?;
            for m in &mut mats {
                std::mem::swap(&mut m.2, &mut m.3);
            }
        }
        for (t, m) in mats.iter().enumerate() {
            mb.x[t] = m.2; // the final X
        }
        self.launch_struct("optim", "muon_apply_f32", wide, (BLOCK, 1, 1), &mb)
    }
}

/// Parameter sizes in bytes of kernel `name` from its PTX `.entry` (`.param .u64 x` → 8,
/// `.u32`/`.f32` → 4, a by-value `.b8 x[584]` → 584), or None if the entry is not there.
pub fn ptx_params(ptx: &str, name: &str) -> Option<Vec<u8>> {
    let head = format!(".entry {name}(");
    let start = ptx.find(&head)? + head.len();
    let body = &ptx[start..start + ptx[start..].find(')')?];
    body.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            if let Some(open) = p.rfind('[') {
                return p[open + 1..p.len() - 1].parse::<usize>().ok().map(|n| n.min(255) as u8);
            }
            let ty = p.split_whitespace().find(|w| {
                matches!(
                    *w,
                    ".u64"
                        | ".s64"
                        | ".b64"
                        | ".f64"
                        | ".u32"
                        | ".s32"
                        | ".b32"
                        | ".f32"
                        | ".u16"
                        | ".b16"
                        | ".u8"
                        | ".b8"
                )
            })?;
            Some(match &ty[2..] {
                "64" => 8,
                "32" => 4,
                "16" => 2,
                _ => 1,
            })
        })
        .collect()
}

/// The host's argument list against the kernel's parameters: the same count, and every 4-byte
/// parameter given a value that fits 32 bits (a pointer passed as an `int` would not).
fn check_args(module: &str, name: &str, sizes: &[u8], args: &[Arg]) -> Result<()> {
    check(sizes.len() == args.len(), || {
        format!("{module}::{name} takes {} parameters, the host passed {} (kernels/{module}.cu and src/gpu/backend.rs disagree)", sizes.len(), args.len())
    })?;
    for (i, (&sz, &a)) in sizes.iter().zip(args).enumerate() {
        check(sz == 8 || (sz == 4 && a <= u32::MAX as u64), || {
            format!("{module}::{name}: parameter {i} is {sz} bytes but the host passed {a:#x} (kernels/{module}.cu and src/gpu/backend.rs disagree)")
        })?;
    }
    Ok(())
}

/// Split-K slices of a weight gradient over `pixels` for `tiles` output tiles, for a grid of about
/// `blocks` blocks: 4·SMs (at most 4 blocks per SM for the mma kernels), or on `ConvPath::WgmmaP`
/// one wave, the blocks that fit the SMs at once (fewer, longer blocks: each pays its pipeline
/// fill and launch once, and the reduction reads fewer slices). 4·SMs blocks are whole waves of the kernels that fit
/// 1, 2 or 4 blocks on an SM, and rounding the slice count down keeps the grid inside them
/// (rounding up launched 530–540 blocks for the wgmma weight gradients: a fifth wave of 2–12
/// blocks, one SM's whole block time, at 1 per SM). Not the wmma kernel (`mma` false): more of
/// its blocks fit an SM than 4, so its grid is under a wave either way, and fewer slices only
/// took parallelism away (rounding down, its 7×7×256 weight gradients took 1.79 and 2.45 ms
/// instead of 1.51 and 1.98 on an H200, bench/logs/2026-11-27-h200-854d170-bench*.log,
/// "conv3x3 wgrad wmma [3]" and "[4]"): rounded up. At least 32 pixels per slice.
fn wgrad_slices(mma: bool, tiles: usize, blocks: usize, pixels: usize) -> usize {
    let slices = if mma { blocks / tiles } else { blocks.div_ceil(tiles) };
    slices.clamp(1, pixels.div_ceil(32).max(1)).min(65535)
}

fn blocks_of(n: usize, per: usize) -> Result<u32> {
    u32::try_from(n.div_ceil(per)).map_err(|_| Error::Gpu(format!("{n} rows is too many for one launch")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_value_count_fits_32_bits() {
        let at = |n| Shape { n, h: 31, w: 31, c: 24 };
        // the wider of input and output channels counts: 64 output channels here
        let most = i32::MAX as usize / (31 * 31 * 64);
        assert!(check_pixels("conv3x3", at(most), 64).is_ok());
        let e = check_pixels("conv3x3", at(most + 1), 64).unwrap_err().to_string();
        assert!(e.contains("at most 2^31 − 1") && e.contains("conv3x3") && e.contains("64 output channels"), "{e}");
        // 24 input channels against 8 output channels: the input's count
        let most = i32::MAX as usize / (31 * 31 * 24);
        assert!(check_pixels("conv3x3_bwd", at(most), 8).is_ok());
        assert!(check_pixels("conv3x3_bwd", at(most + 1), 8).is_err());
    }

    #[test]
    fn weight_gradient_slices_fill_whole_waves_on_mma_and_round_up_on_wmma() {
        let pixels = 2000 * 7 * 7;
        // an H200's 132 SMs, 7×7×256: 144 wmma tiles (64×64 of 256 × 2304), 18 wgmma ones
        // (128×256): 29 slices, 522 blocks, where rounding up launched 540
        assert_eq!(wgrad_slices(false, 144, 4 * 132, pixels), 4);
        assert_eq!(wgrad_slices(true, 144, 4 * 132, pixels), 3);
        assert_eq!(wgrad_slices(true, 18, 4 * 132, pixels), 29);
        // wgmmap: one wave of the 128×256 kernel (1 block per SM): 7 slices, 126 blocks
        assert_eq!(wgrad_slices(true, 18, 132, pixels), 7);
        for (tiles, sms) in [(18, 132), (144, 132), (4, 132), (18, 80), (144, 80), (600, 132)] {
            let (m, w) = (wgrad_slices(true, tiles, 4 * sms, pixels), wgrad_slices(false, tiles, 4 * sms, pixels));
            assert!(m == 1 || m * tiles <= 4 * sms, "mma {tiles} tiles on {sms} SMs: {m} slices, past 4 per SM");
            assert!(
                w * tiles >= (4 * sms).min(tiles * pixels.div_ceil(32)),
                "wmma {tiles} tiles on {sms} SMs: {w} slices"
            );
            assert!(m <= w && w <= m + 1, "{tiles} tiles on {sms} SMs: mma {m}, wmma {w}");
        }
        // few pixels: at least 32 per slice, at least one slice
        assert_eq!(wgrad_slices(false, 4, 4 * 132, 64), 2);
        assert_eq!(wgrad_slices(true, 4, 4 * 132, 1), 1);
    }

    #[test]
    fn head_block_constants_mirror_the_kernels() {
        let head = include_str!("../../kernels/head.cu");
        for line in [
            format!("#define HEAD_SLICE {HEAD_SLICE}\n"),
            format!("#define HEAD_MAX_CLASSES {HEAD_MAX_CLASSES}\n"),
            format!("#define XENT_THREADS {XENT_THREADS}\n"),
        ] {
            assert!(head.contains(&line), "kernels/head.cu lacks {line:?}");
        }
        let norm = include_str!("../../kernels/norm.cu");
        for line in [
            format!("#define CHAN_FIN_THREADS {CHAN_FIN_THREADS} "),
            format!("#define CHAN_REDUCE_THREADS {CHAN_REDUCE_THREADS} "),
        ] {
            assert!(norm.contains(&line), "kernels/norm.cu lacks {line:?}");
        }
    }

    #[test]
    fn ptx_parameter_lists_are_read() {
        let ptx = ".visible .entry k(\n\t.param .u64 k_param_0,\n\t.param .u32 k_param_1,\n\t.param .f32 k_param_2\n)\n{\n}\n\
                   .visible .entry s(\n\t.param .align 8 .b8 s_param_0[584]\n)";
        assert_eq!(ptx_params(ptx, "k"), Some(vec![8, 4, 4]));
        assert_eq!(ptx_params(ptx, "s"), Some(vec![255]));
        assert_eq!(ptx_params(ptx, "missing"), None);
        assert!(check_args("m", "k", &[8, 4, 4], &[1 << 40, 7, flt(1.5)]).is_ok());
        let e = check_args("m", "k", &[8, 4, 4], &[1, 2]).unwrap_err().to_string();
        assert!(e.contains("takes 3 parameters, the host passed 2"), "{e}");
        let e = check_args("m", "k", &[8, 4, 4], &[1, 1 << 40, 3]).unwrap_err().to_string();
        assert!(e.contains("parameter 1 is 4 bytes"), "{e}");
    }

    /// Every kernel the backend launches is in the embedded PTX with the parameter sizes the
    /// host code assumes (8 for pointers and `long long`, 4 for `int`/`float`).
    #[test]
    #[cfg_attr(
        not(kernels_built),
        ignore = "CUDA kernels not built (no NVRTC/nvcc at build time): run scripts/install-cuda-toolchain.sh"
    )]
    fn embedded_kernels_have_the_parameters_the_host_passes() {
        // (module, kernel, sizes: P = 8-byte pointer or long long, I = 4-byte int or float)
        let table: &[(&str, &str, &str)] = &[
            ("conv", "conv3x3_fwd_f16", "PIIIIPPPIPIIPP"),
            ("conv", "conv3x3_fwd_mma_f16", "PIIIIPIIPPP"),
            ("conv", "conv3x3_dgrad_mma_f16", "PIIIIIPPPPPPIP"),
            ("conv", "conv3x3_wgrad_mma_f16", "PIIIIPIPI"),
            ("conv", "conv3x3_fwd_wgmma_f16", "PIIIIPIIPPP"),
            ("conv", "conv3x3_dgrad_wgmma_f16", "PIIIIIPPPPPPIP"),
            ("conv", "conv3x3_wgrad_wgmma_f16", "PIIIIPIPI"),
            ("conv", "conv3x3_wgrad_wgmma_narrow_f16", "PIIIIPIPI"),
            ("conv", "conv3x3_fwd_wgmma_narrow_f16", "PIIIIPIIPPP"),
            ("conv", "conv3x3_dgrad_wgmma_narrow_f16", "PIIIIIPPPPPPIP"),
            ("conv", "conv3x3_fwd_wgmma2_f16", "PIIIIPIIPPP"),
            ("conv", "conv3x3_fwd_wgmma_p_f16", "PIIIIPIIPPP"),
            ("conv", "conv3x3_fwd_wgmma_p_tall_f16", "PIIIIPIIPPP"),
            ("conv", "conv3x3_dgrad_wgmma_p_f16", "PIIIIIPPPPPPIP"),
            ("conv", "conv3x3_dgrad_wgmma_p_tall_f16", "PIIIIIPPPPPPIP"),
            ("conv", "conv3x3_dgrad_wgmma2_f16", "PIIIIIPPPPPPIP"),
            ("conv", "conv3x3_wgrad_wgmma2_f16", "PIIIIPIPI"),
            ("conv", "unpool_f16", "PPIIIIP"),
            ("conv", "conv_weights_f16", "PIIPPI"),
            ("conv", "conv3x3_dgrad_f16", "PPIIIIIIPP"),
            ("conv", "conv3x3_wgrad_f16", "PIIIIPPPIPPIIPI"),
            ("conv", "wgrad_reduce_f32", "PIPP"),
            ("conv", "wgrad_reduce4_f32", "PIPP"),
            ("conv", "act_f16", "PPIPPPIP"),
            ("conv", "shift_from_wgrad_f32", "PPIIP"),
            ("norm", "chan_reduce_f16", "PPPIPPPPIP"),
            ("norm", "bn_reduce_f16", "PPIPP"),
            ("norm", "bn_reduce8_f16", "PPIPP"),
            ("norm", "bn_finalize_f32", "PIIPIIPPP"),
            ("norm", "bn_eval_f32", "PPIIP"),
            ("norm", "pre_bwd_sums_f32", "PIIP"),
            ("norm", "pre_bwd_dx_f16", "PPPIPPPIPPPPPII"),
            ("norm", "cast_f32_f16", "PPP"),
            ("norm", "cast_f16_f32", "PPP"),
            ("stem", "stem_fwd_f16", "PIPIPIIIIIIIPIPP"),
            ("stem", "stem_fwd_grad_f16", "PIPIPIIIIIIIPIPPP"),
            ("stem", "stem_res_fwd_f16", "PIPIPIIIIIIIPIIPPP"),
            ("stem", "patch_cov_f32", "PIIIIIIIP"),
            ("head", "head_fwd_f16", "PIIPPPIPIIPPP"),
            ("head", "head_bwd_dw_part_f32", "PPIIIIP"),
            ("head", "head_bwd_da_f16", "PPPIIIIIP"),
            ("head", "xent_fwd_bwd_f32", "PPPIPIIIIPP"),
            ("head", "xent_acc_f64", "PIP"),
            ("head", "axpy_f32", "PPPI"),
            ("optim", "step_next", "PIP"),
        ];
        for &(module, name, sig) in table {
            let m = crate::kernels::module(module).unwrap_or_else(|| panic!("module {module} not embedded"));
            let sizes = ptx_params(m.ptx, name).unwrap_or_else(|| panic!("{module}::{name} not in the PTX"));
            let want: Vec<u8> = sig.chars().map(|c| if c == 'P' { 8 } else { 4 }).collect();
            assert_eq!(sizes, want, "{module}::{name}");
        }
        assert_eq!(ptx_params(crate::kernels::module("optim").unwrap().ptx, "sgd_nesterov_f32"), Some(vec![255]));
        let sgd = ".entry sgd_nesterov_f32(\n\t.param .align 8 .b8 sgd_nesterov_f32_param_0[592]";
        assert!(crate::kernels::module("optim").unwrap().ptx.contains(sgd), "SgdArgs: 592 bytes in the PTX");
        assert_eq!(std::mem::size_of::<SgdArgs>(), 592);
        let optim = crate::kernels::module("optim").unwrap().ptx;
        for name in ["gemm_nt_f32", "gemm_nn_f32"] {
            assert_eq!(ptx_params(optim, name), Some(vec![255]), "{name}: one by-value struct");
            assert!(
                optim.contains(&format!(".entry {name}(\n\t.param .align 8 .b8 {name}_param_0[368]")),
                "{name}: 368 bytes"
            );
        }
        assert_eq!(std::mem::size_of::<GemmBatch>(), 368);
        for name in ["muon_prep_f32", "muon_norms_f64", "muon_scale_f32", "muon_apply_f32"] {
            assert_eq!(ptx_params(optim, name), Some(vec![255]), "{name}: one by-value struct");
            assert!(
                optim.contains(&format!(".entry {name}(\n\t.param .align 8 .b8 {name}_param_0[504]")),
                "{name}: MuonBatch, 504 bytes"
            );
        }
        assert_eq!(std::mem::size_of::<MuonBatch>(), 504);
    }
}
