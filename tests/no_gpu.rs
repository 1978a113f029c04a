//! The binary on machines without a usable GPU: it must fail with one clear sentence and exit
//! code 4 (`Error::Gpu`), never panic. Run through the real binary, as a user would.
//!
//! - no driver at all (this test machine, CI): "no NVIDIA driver found";
//! - a driver but no GPU: a stub libcuda.so.1 (built here with gcc) whose cuInit returns
//!   CUDA_ERROR_NO_DEVICE, as the real driver does in a container without a device;
//! - a driver that reports a fake GPU: an old one (sm_61), one whose module loading fails, and a
//!   driver too old to have an entry point we use. The same stub, steered by environment variables.
use std::path::{Path, PathBuf};
use std::process::Command;

/// (exit code, stderr) of the binary run with no arguments and the given environment.
fn run(env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_speedrun"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the speedrun binary");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code().unwrap_or_else(|| panic!("killed by a signal; stderr:\n{stderr}"));
    (code, stderr)
}

/// Exit code 4, no panic, and the error is one line on stderr holding `needle` and the `--cpu`
/// hint.
fn assert_gpu_error(code: i32, stderr: &str, needle: &str) {
    assert!(!stderr.contains("panicked"), "the binary panicked:\n{stderr}");
    assert_eq!(code, 4, "exit code (Error::Gpu is 4); stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(needle)).collect();
    assert_eq!(lines.len(), 1, "one line of stderr should say {needle:?}:\n{stderr}");
    assert!(lines[0].contains("--cpu"), "the error line should point to --cpu:\n{stderr}");
}

#[test]
#[cfg_attr(
    cuda_driver,
    ignore = "this machine has an NVIDIA driver (libcuda.so.1): the no-driver path cannot be shown here"
)]
fn no_driver_is_one_clear_sentence() {
    let (code, stderr) = run(&[]);
    assert_gpu_error(code, &stderr, "no NVIDIA driver found (libcuda.so.1 could not be loaded: libcuda.so.1: ");
    eprintln!("binary said: {}", stderr.trim_end());
}

/// A stub CUDA driver. cuInit returns $STUB_CUDA_INIT (default 100, CUDA_ERROR_NO_DEVICE); with 0
/// the driver reports $STUB_CUDA_DEVICES devices (default 0) of compute capability $STUB_CUDA_CC
/// (default 90), and module loading fails with CUDA_ERROR_NO_BINARY_FOR_GPU. Every other entry
/// point the program checks for exists but returns CUDA_ERROR_UNKNOWN; -DOLD_DRIVER leaves out
/// cuGraphUpload (a driver too old for us).
const STUB_C: &str = r#"
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
static int env_int(const char *n, int d) { const char *v = getenv(n); return v ? atoi(v) : d; }
static const char *name_of(int e) {
    switch (e) {
    case 0: return "CUDA_SUCCESS";
    case 100: return "CUDA_ERROR_NO_DEVICE";
    case 209: return "CUDA_ERROR_NO_BINARY_FOR_GPU";
    default: return "CUDA_ERROR_UNKNOWN";
    }
}
static const char *text_of(int e) {
    switch (e) {
    case 0: return "no error";
    case 100: return "no CUDA-capable device is detected";
    case 209: return "no kernel image is available for execution on the device";
    default: return "unknown error";
    }
}
int cuInit(unsigned flags) { (void)flags; return env_int("STUB_CUDA_INIT", 100); }
int cuGetErrorName(int e, const char **s) { *s = name_of(e); return 0; }
int cuGetErrorString(int e, const char **s) { *s = text_of(e); return 0; }
int cuDriverGetVersion(int *v) { *v = 12040; return 0; }
int cuDeviceGetCount(int *n) { *n = env_int("STUB_CUDA_DEVICES", 0); return 0; }
int cuDeviceGet(int *d, int ordinal) { *d = ordinal; return 0; }
int cuDeviceGetName(char *s, int len, int d) { (void)d; strncpy(s, "Stub GPU", (size_t)len); return 0; }
int cuDeviceTotalMem_v2(size_t *b, int d) { (void)d; *b = (size_t)16 << 30; return 0; }
int cuDeviceGetAttribute(int *v, int attr, int d) {
    (void)d;
    int cc = env_int("STUB_CUDA_CC", 90);
    switch (attr) {
    case 16: *v = 80; break;          /* MULTIPROCESSOR_COUNT */
    case 75: *v = cc / 10; break;     /* COMPUTE_CAPABILITY_MAJOR */
    case 76: *v = cc % 10; break;     /* COMPUTE_CAPABILITY_MINOR */
    case 97: *v = 98304; break;       /* MAX_SHARED_MEMORY_PER_BLOCK_OPTIN */
    case 115: *v = 1; break;          /* MEMORY_POOLS_SUPPORTED */
    default: *v = 0;
    }
    return 0;
}
static void *current;
int cuDevicePrimaryCtxRetain(void **c, int d) { (void)d; *c = (void *)0x1000; return 0; }
int cuDevicePrimaryCtxRelease_v2(int d) { (void)d; return 0; }
int cuCtxGetCurrent(void **c) { *c = current; return 0; }
int cuCtxSetCurrent(void *c) { current = c; return 0; }
int cuStreamCreate(void **s, unsigned f) { (void)f; *s = (void *)0x2000; return 0; }
int cuStreamDestroy_v2(void *s) { (void)s; return 0; }
int cuModuleLoadData(void **m, const void *image) { (void)m; (void)image; return 209; }
#define UNUSED(f) int f(void) { return 999; }
UNUSED(cuCtxSynchronize) UNUSED(cuModuleUnload) UNUSED(cuModuleGetFunction) UNUSED(cuFuncGetAttribute)
UNUSED(cuFuncSetAttribute) UNUSED(cuLaunchKernel) UNUSED(cuLaunchKernelEx) UNUSED(cuCtxGetStreamPriorityRange) UNUSED(cuStreamSynchronize) UNUSED(cuStreamWaitEvent)
UNUSED(cuStreamBeginCapture_v2) UNUSED(cuStreamEndCapture) UNUSED(cuGraphInstantiateWithFlags)
UNUSED(cuGraphLaunch) UNUSED(cuGraphExecDestroy) UNUSED(cuGraphDestroy) UNUSED(cuEventCreate)
UNUSED(cuEventRecord) UNUSED(cuEventSynchronize) UNUSED(cuEventElapsedTime) UNUSED(cuEventQuery)
UNUSED(cuEventDestroy_v2) UNUSED(cuMemAlloc_v2) UNUSED(cuMemFree_v2) UNUSED(cuMemAllocAsync)
UNUSED(cuMemFreeAsync) UNUSED(cuMemcpyHtoDAsync_v2) UNUSED(cuMemcpyDtoHAsync_v2) UNUSED(cuMemcpyDtoDAsync_v2)
UNUSED(cuMemsetD8Async) UNUSED(cuMemGetInfo_v2)
#ifndef OLD_DRIVER
UNUSED(cuGraphUpload)
#endif
"#;

/// A temporary folder holding a compiled stub driver under every name cudarc tries first
/// (libcuda.so before libcuda.so.1), so it wins over a real driver too. Removed on drop.
struct StubDriver {
    dir: PathBuf,
}

impl StubDriver {
    fn build(defines: &[&str]) -> StubDriver {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "cifar-stub-libcuda-{}-{nanos}-{}",
            std::process::id(),
            defines.join("")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let stub = StubDriver { dir: dir.clone() }; // removes the folder, also on panic
        let src = dir.join("stub.c");
        std::fs::write(&src, STUB_C).unwrap();
        let lib = dir.join("libcuda.so.1");
        let out = Command::new("gcc")
            .args(["-shared", "-fPIC", "-O1", "-o"])
            .arg(&lib)
            .arg(&src)
            .args(defines)
            .output()
            .unwrap_or_else(|e| {
                panic!("gcc is needed for this test (it builds a stub libcuda.so.1 to simulate a driver): {e}")
            });
        assert!(out.status.success(), "gcc failed to build the stub driver:\n{}", String::from_utf8_lossy(&out.stderr));
        for alias in ["libcuda.so", "libcuda.so.12"] {
            std::os::unix::fs::symlink("libcuda.so.1", dir.join(alias)).unwrap();
        }
        stub
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for StubDriver {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run_with(stub: &StubDriver, env: &[(&str, &str)]) -> (i32, String) {
    let lp = stub.path().to_str().unwrap().to_string();
    let mut all = vec![("LD_LIBRARY_PATH", lp.as_str())];
    all.extend_from_slice(env);
    run(&all)
}

#[test]
fn driver_without_gpu_says_no_gpu() {
    let stub = StubDriver::build(&[]);
    let (code, stderr) = run_with(&stub, &[]);
    assert_gpu_error(code, &stderr, "no CUDA-capable GPU detected");
    assert!(stderr.contains("CUDA_ERROR_NO_DEVICE"), "{stderr}");
    eprintln!("binary said: {}", stderr.trim_end());

    let (code, stderr) = run_with(&stub, &[("STUB_CUDA_INIT", "0"), ("STUB_CUDA_DEVICES", "0")]);
    assert_gpu_error(code, &stderr, "no CUDA-capable GPU detected (the driver reports 0 devices)");
}

#[test]
fn fake_gpus_get_clear_sentences() {
    let stub = StubDriver::build(&[]);
    let gpu = [("STUB_CUDA_INIT", "0"), ("STUB_CUDA_DEVICES", "1")];

    let (code, stderr) = run_with(&stub, &[gpu[0], gpu[1], ("STUB_CUDA_CC", "61")]);
    assert_gpu_error(code, &stderr, "unsupported GPU Stub GPU (sm_61): needs compute capability 7.0 or newer");
    eprintln!("sm_61: {}", stderr.trim_end());

    let (code, stderr) = run_with(&stub, &[gpu[0], gpu[1], ("STUB_CUDA_CC", "90")]);
    match cifar::kernels::MISSING {
        // A binary without kernels on a machine with a GPU: say so, with the fix.
        Some(_) => {
            assert_gpu_error(code, &stderr, "this binary was built without CUDA kernels");
            assert!(stderr.contains("scripts/install-cuda-toolchain.sh"), "{stderr}");
        }
        // Kernels present: the (failing) load names the module, the image and the driver error.
        None => {
            let first = cifar::kernels::MODULES[0].name; // modules load in this order
            let want = format!("loading kernel module {first} (sm_90 SASS) on Stub GPU: CUDA_ERROR_NO_BINARY_FOR_GPU");
            assert_gpu_error(code, &stderr, &want)
        }
    }
    eprintln!("sm_90: {}", stderr.trim_end());
}

#[test]
fn driver_lacking_an_entry_point_is_named_too_old() {
    let stub = StubDriver::build(&["-DOLD_DRIVER"]);
    let (code, stderr) = run_with(&stub, &[("STUB_CUDA_INIT", "0"), ("STUB_CUDA_DEVICES", "1")]);
    assert_gpu_error(code, &stderr, "the NVIDIA driver (CUDA 12.4) is too old: libcuda.so.1 lacks cuGraphUpload");
    eprintln!("old driver: {}", stderr.trim_end());
}
