//! Build script: compiles every `kernels/*.cu` ahead of time and embeds the images.
//!
//! - Compiler: NVRTC, dlopen'ed by absolute path (no GPU, no driver, no host compiler needed).
//!   Looked for in this order, first hit wins: `$CUDA_PIP_ROOT` (a `site-packages/nvidia`
//!   folder), `./.cuda-venv` (the pinned CUDA 12.9 PyPI wheels that
//!   `scripts/install-cuda-toolchain.sh` installs), `$CUDA_HOME`, `$CUDA_PATH`, the toolkit of the
//!   `nvcc` on `PATH`, `/usr/local/cuda`. The pinned wheels come first: they are reproducible and
//!   CUDA 12.9 is the last release that can still target sm_70 (V100).
//! - Output: one SASS cubin per arch in `SASS_ARCHS` plus compute_90 PTX (the driver JITs it on
//!   newer GPUs) per `.cu` file, written to OUT_DIR and listed in OUT_DIR/kernels.rs, which
//!   `src/kernels.rs` includes. Options: `-std=c++17 -lineinfo --ptxas-options=-v -I kernels/`.
//! - Registers and spills: every kernel x arch goes into OUT_DIR/ptxas-report.txt, copied to
//!   `<target dir>/ptxas-report.txt`; a kernel that spills gets one cargo warning per arch,
//!   unless `SPILLS_ACCEPTED` lists it with a budget its spill stays within.
//! - No compiler found: the build still succeeds with a warning, `kernels::MODULES` is empty and
//!   the GPU path says so at run time. `REQUIRE_CUDA_KERNELS=1` makes that a build error (CI,
//!   release builds). A kernel that fails to compile is always a build error, with the NVRTC log.
//! - cfgs: `kernels_built` when the images are embedded, `cuda_driver` when this machine can
//!   dlopen libcuda.so.1 (tests that need a GPU are ignored, with the reason, without it).
//! - Env for the crate: `GIT_COMMIT` (short hash or "unknown") and `GIT_DIRTY` (0, 1 or
//!   "unknown"), as of the last run of this script: it reruns when HEAD, the branch ref, the git
//!   index or the kernels change, so an edit that no git command has seen yet is not reflected.
//!
//! Compiles run on `NUM_JOBS` threads (cargo's -j) and are cached: if this script, the sources,
//! the compiler and the options are unchanged since the last run (OUT_DIR/kernels.stamp), a rerun
//! (e.g. after a commit) reuses the images. The images are also shared between OUT_DIRs through
//! `target/kernel-cache/<key>/` (or `$SPEEDRUN_KERNEL_CACHE`; empty: no sharing), so a debug
//! build, clippy, a release build and `target/emu` compile one key once (four newest keys
//! kept). A `.cuda-venv` that appears later is noticed because
//! the install script touches build.rs (a watched path that does not exist would make cargo rerun
//! this script, and rebuild the crate, on every build).
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::{env, fs};

/// SASS targets: V100, A100, RTX 30xx/A10, RTX 40xx/L4, H100. Keep in sync with src/kernels.rs.
const SASS_ARCHS: &[u32] = &[70, 80, 86, 89, 90];
/// PTX target (forward compatibility: JIT-compiled by the driver on GPUs newer than sm_90).
const PTX_ARCH: u32 = 90;
/// SASS targets compiled with their arch-specific features ("a"): sm_90a, for the wgmma conv
/// kernels (`__CUDA_ARCH_FEAT_SM90_ALL`). Such a cubin runs on compute capability 9.0 only, as
/// an sm_90 cubin would; the PTX stays plain compute_90 (no wgmma: those kernels trap there and
/// the host never picks them off the sm_90 cubin).
const ARCH_SPECIFIC: &[u32] = &[90];
const FIX: &str = "run `bash scripts/install-cuda-toolchain.sh` (CUDA 12.9 NVRTC from PyPI, no GPU needed)";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    println!("cargo::rustc-check-cfg=cfg(cuda_driver)");
    println!("cargo::rustc-check-cfg=cfg(kernels_built)");
    println!("cargo::rerun-if-changed=build.rs");
    git_info(&manifest);
    // SAFETY: dlopen of the system's CUDA driver library; it is only probed and closed again.
    if unsafe { libloading::Library::new("libcuda.so.1") }.is_ok() {
        println!("cargo::rustc-cfg=cuda_driver");
    }

    let kdir = manifest.join("kernels");
    println!("cargo::rerun-if-changed={}", kdir.display()); // files added or removed
    let mut srcs: Vec<PathBuf> =
        fs::read_dir(&kdir).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    srcs.retain(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("cu" | "cuh")));
    srcs.sort();
    for s in &srcs {
        println!("cargo::rerun-if-changed={}", s.display());
    }
    println!("cargo::rerun-if-env-changed=REQUIRE_CUDA_KERNELS");
    println!("cargo::rerun-if-env-changed=SPEEDRUN_WGMMA_NO_PROXY_FENCE");
    let require = env::var("REQUIRE_CUDA_KERNELS").is_ok_and(|v| v == "1");

    let found = find_toolchain(&manifest)
        .map_err(|looked| ("no CUDA compiler (NVRTC + CUDA headers) was found at build time".to_string(), looked))
        .and_then(|tc| match Nvrtc::open(&tc.lib) {
            Ok(n) => Ok((tc, n)),
            Err(e) => Err((format!("the CUDA compiler could not be loaded at build time ({e})"), String::new())),
        });
    let gen = match found {
        Err((why, looked)) => {
            let looked = if looked.is_empty() { looked } else { format!(" (looked at {looked})") };
            if require {
                panic!("REQUIRE_CUDA_KERNELS=1 but {why}{looked}; {FIX}");
            }
            println!(
                "cargo::warning=building WITHOUT CUDA kernels: {why}{looked}; {FIX}; until then the binary's GPU path says so"
            );
            format!(
                "pub const MISSING: Option<&str> = Some({why:?});\npub const NVRTC_VERSION: Option<(i32, i32)> = None;\n\
                 pub const COMPILER: &str = \"none\";\npub static MODULES: &[Module] = &[];\n"
            )
        }
        Ok((tc, nvrtc)) => {
            println!("cargo::rustc-cfg=kernels_built");
            let mut cus: Vec<&PathBuf> = srcs.iter().filter(|p| p.extension().is_some_and(|e| e == "cu")).collect();
            cus.sort_by_key(|p| stem(p).to_string()); // MODULES sorted by name
            compile_all(&nvrtc, &tc, &kdir, &cus, &srcs, &out)
        }
    };
    // Only touch kernels.rs when it changes, so a rerun does not force a recompile by itself.
    let p = out.join("kernels.rs");
    if fs::read_to_string(&p).ok().as_deref() != Some(gen.as_str()) {
        fs::write(&p, gen).expect("write OUT_DIR/kernels.rs");
    }
}

/// Compiles every .cu for every target (in parallel), writes the images and the ptxas report,
/// emits the spill warnings and returns the text of OUT_DIR/kernels.rs.
fn compile_all(nvrtc: &Nvrtc, tc: &Toolchain, kdir: &Path, cus: &[&PathBuf], all: &[PathBuf], out: &Path) -> String {
    let (maj, min) = nvrtc.version();
    // NVRTC >= 13 cannot target sm_70 (CUDA 13 dropped offline compilation for Volta).
    let archs: Vec<u32> = SASS_ARCHS.iter().copied().filter(|&a| maj < 13 || a >= 75).collect();
    if archs.len() != SASS_ARCHS.len() {
        println!(
            "cargo::warning=NVRTC {maj}.{min} cannot target sm_70: this build has no V100 image; {FIX} for CUDA 12.9"
        );
    }
    let mut incs = vec![kdir.to_path_buf()];
    incs.extend(tc.includes.iter().cloned());
    let mut base_opts = vec!["-std=c++17", "-lineinfo"];
    // SPEEDRUN_WGMMA_NO_PROXY_FENCE=1: the wgmma convs without `fence.proxy.async` before each K
    // step's barrier (kernels/common.cuh), an experiment for timing on a GPU (bench/NOTES.md);
    // the compiler line of `speedrun selftest`/`bench` names the define.
    let no_fence = env::var("SPEEDRUN_WGMMA_NO_PROXY_FENCE").is_ok_and(|v| v == "1");
    if no_fence {
        base_opts.push("-DWG_NO_PROXY_FENCE");
    }

    // Cache key: this script, the compiler, options, targets and every kernel source byte.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (include_str!("build.rs"), &tc.lib, (maj, min), &archs, PTX_ARCH, &base_opts, &incs).hash(&mut h);
    for s in all {
        (s, fs::read(s).unwrap_or_default()).hash(&mut h);
    }
    let key = format!("{:016x}\n", h.finish());
    let stamp = out.join("kernels.stamp");
    let report_path = out.join("ptxas-report.txt");

    // Jobs: (file index, Some(sm) for a cubin | None for the PTX).
    let jobs: Vec<(usize, Option<u32>)> = (0..cus.len())
        .flat_map(|i| archs.iter().map(move |&a| (i, Some(a))).chain(std::iter::once((i, None))))
        .collect();
    let image = |i: usize, a: Option<u32>| {
        let stem = stem(cus[i]);
        match a {
            Some(a) => format!("{stem}.sm_{a}.cubin"),
            None => format!("{stem}.compute_{PTX_ARCH}.ptx"),
        }
    };
    let files: Vec<String> =
        jobs.iter().map(|&(i, a)| image(i, a)).chain(std::iter::once("ptxas-report.txt".to_string())).collect();
    let complete = |dir: &Path| has_all(dir, &files);
    let cached = fs::read_to_string(&stamp).is_ok_and(|k| k == key) && complete(out);
    // The shared cache: another profile or target dir (debug, clippy, release, target/emu) that
    // compiled the same key already.
    let shared = cache_root(out).map(|r| r.join(key.trim()));
    let from_shared = !cached
        && shared
            .as_deref()
            .is_some_and(|d| complete(d) && files.iter().all(|f| fs::copy(d.join(f), out.join(f)).is_ok()));
    if from_shared {
        fs::write(&stamp, &key).expect("write kernels.stamp");
        // the entry's time is its last use (the pruning in `share` keeps the newest)
        let now = std::time::SystemTime::now();
        let _ = shared.as_deref().map(|d| fs::File::open(d).and_then(|f| f.set_modified(now)));
    }

    if !cached && !from_shared {
        let _ = fs::remove_file(&stamp);
        let t0 = std::time::Instant::now();
        let sources: Vec<String> = cus
            .iter()
            .map(|p| fs::read_to_string(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display())))
            .collect();
        let results: Vec<Mutex<Option<Compiled>>> = jobs.iter().map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        let workers = env::var("NUM_JOBS")
            .ok()
            .and_then(|j| j.parse::<usize>().ok())
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
            .unwrap_or(1)
            .clamp(1, jobs.len().max(1));
        // NVRTC is thread-safe for distinct programs (NVRTC user guide, "Thread Safety").
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let j = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(i, a)) = jobs.get(j) else { break };
                    let name = format!("kernels/{}.cu", stem(cus[i]));
                    let r = nvrtc.compile(&sources[i], &name, a, &base_opts, &incs);
                    *results[j].lock().unwrap() = Some(r);
                });
            }
        });
        // (file, message) -> targets: the same error for every arch is printed once.
        let mut failures: Vec<(String, String, Vec<String>)> = Vec::new();
        let mut report = format!(
            "ptxas report: NVRTC {maj}.{min} ({}), options {} --ptxas-options=-v\n\
             Registers and stack/spill bytes per thread, per kernel and arch (full ptxas logs below the table).\n\n",
            tc.lib.display(),
            base_opts.join(" ")
        );
        for (j, &(i, a)) in jobs.iter().enumerate() {
            match results[j].lock().unwrap().take().expect("every job ran") {
                Err(e) => {
                    let file = format!("kernels/{}.cu", stem(cus[i]));
                    let target = a.map_or(format!("compute_{PTX_ARCH}"), |a| format!("sm_{a}"));
                    match failures.iter_mut().find(|(f, m, _)| *f == file && *m == e) {
                        Some((_, _, targets)) => targets.push(target),
                        None => failures.push((file, e, vec![target])),
                    }
                }
                Ok((img, log)) => {
                    fs::write(out.join(image(i, a)), &img).expect("write kernel image");
                    if let Some(a) = a {
                        let _ = writeln!(report, "=== {}.cu sm_{a}\n{}\n", stem(cus[i]), log.trim_end());
                    }
                }
            }
        }
        if !failures.is_empty() {
            let text: Vec<String> = failures.iter().map(|(f, m, t)| format!("{f} ({}): {m}", t.join(", "))).collect();
            panic!("CUDA kernel compilation failed:\n\n{}", text.join("\n\n"));
        }
        let mut table = format!(
            "{:<12} {:<32} {:<6} {:>9} {:>6} {:>12} {:>11}\n",
            "file", "kernel", "arch", "registers", "stack", "spill stores", "spill loads"
        );
        for u in parse_ptxas(&report) {
            let _ = writeln!(
                table,
                "{:<12} {:<32} {:<6} {:>9} {:>6} {:>12} {:>11}",
                u.file, u.kernel, u.arch, u.regs, u.stack, u.spill_st, u.spill_ld
            );
        }
        let (head, logs) = report.split_at(report.find("=== ").unwrap_or(report.len()));
        let report = format!("{head}{table}\nFull ptxas logs:\n\n{logs}");
        fs::write(&report_path, &report).expect("write ptxas report");
        fs::write(&stamp, &key).expect("write kernels.stamp");
        if let Some(d) = &shared {
            share(out, d, &files);
        }
        eprintln!(
            "compiled {} kernel file(s) x {} targets in {:.2?} with {workers} threads",
            cus.len(),
            archs.len() + 1,
            t0.elapsed()
        );
    }

    // The report next to the build outputs, and spill warnings on every run (cargo shows
    // warnings only from the run that printed them).
    let report = fs::read_to_string(&report_path).unwrap_or_default();
    let mut shown = report_path.clone();
    if let Some(t) = target_dir(out) {
        if fs::write(t.join("ptxas-report.txt"), &report).is_ok() {
            shown = t.join("ptxas-report.txt");
        }
    }
    for u in parse_ptxas(&report).iter().filter(|u| u.spill_st + u.spill_ld > 0 && !spill_accepted(u)) {
        println!(
            "cargo::warning=kernel {} ({}, {}) spills registers: {} bytes spill stores, {} bytes spill loads, {} registers (see {})",
            u.kernel, u.file, u.arch, u.spill_st, u.spill_ld, u.regs, shown.display()
        );
    }

    let mut gen = format!(
        "pub const MISSING: Option<&str> = None;\npub const NVRTC_VERSION: Option<(i32, i32)> = Some(({maj}, {min}));\n\
         pub const COMPILER: &str = {:?};\npub static MODULES: &[Module] = &[\n",
        format!("NVRTC {maj}.{min} ({}){}", tc.origin, if no_fence { " -DWG_NO_PROXY_FENCE" } else { "" })
    );
    for (i, cu) in cus.iter().enumerate() {
        let stem = stem(cu);
        let inc = |f: String, mac: &str| format!("{mac}!(concat!(env!(\"OUT_DIR\"), \"/{f}\"))");
        let cubins: Vec<String> =
            archs.iter().map(|&a| format!("({a}, {})", inc(image(i, Some(a)), "include_bytes"))).collect();
        let _ = writeln!(
            gen,
            "    Module {{\n        name: {stem:?},\n        cubins: &[{}],\n        ptx: {},\n    }},",
            cubins.join(", "),
            inc(image(i, None), "include_str")
        );
    }
    gen.push_str("];\n");
    gen
}

fn stem(p: &Path) -> &str {
    p.file_stem().and_then(|s| s.to_str()).expect("kernel file names are UTF-8")
}

/// One kernel x arch line of the ptxas -v logs.
struct Usage {
    file: String,
    arch: String,
    kernel: String,
    regs: u64,
    stack: u64,
    spill_st: u64,
    spill_ld: u64,
}

/// Kernels whose spill was read in the SASS and kept, with the bytes (stored or loaded, per
/// thread) up to which it stays accepted: the stem's, a few loop-carried values in L1 around
/// its group loop (kernels/stem.cu, STEM_MIN_BLOCKS). Past the budget, the usual warning.
const SPILLS_ACCEPTED: &[(&str, u64)] = &[("stem_fwd_f16", 96), ("stem_fwd_grad_f16", 96)];

fn spill_accepted(u: &Usage) -> bool {
    SPILLS_ACCEPTED.iter().any(|&(k, bytes)| k == u.kernel && u.spill_st.max(u.spill_ld) <= bytes)
}

/// Parses the `=== <file> <arch>` blocks of ptxas -v output in the report.
fn parse_ptxas(report: &str) -> Vec<Usage> {
    let (mut file, mut arch) = (String::new(), String::new());
    let mut rows: Vec<Usage> = Vec::new();
    // "12 registers" -> 12; "0 bytes spill stores" -> 0
    let num_before = |line: &str, what: &str| -> u64 {
        line.split(',')
            .find(|p| p.contains(what))
            .and_then(|p| p.split(what).next())
            .and_then(|p| p.split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    for line in report.lines() {
        if let Some(rest) = line.strip_prefix("=== ") {
            let mut it = rest.split_whitespace();
            file = it.next().unwrap_or_default().to_string();
            arch = it.next().unwrap_or_default().to_string();
        } else if let Some(rest) = line.split("Function properties for ").nth(1) {
            let kernel = rest.trim().to_string();
            rows.push(Usage {
                file: file.clone(),
                arch: arch.clone(),
                kernel,
                regs: 0,
                stack: 0,
                spill_st: 0,
                spill_ld: 0,
            });
        } else if let Some(r) = rows.last_mut().filter(|r| r.file == file && r.arch == arch) {
            if line.contains("bytes spill stores") {
                r.stack = num_before(line, "bytes stack frame");
                r.spill_st = num_before(line, "bytes spill stores");
                r.spill_ld = num_before(line, "bytes spill loads");
            } else if line.contains("Used ") && line.contains(" registers") {
                r.regs = num_before(line, "registers");
            }
        }
    }
    rows
}

/// The shared kernel cache's folder: `$SPEEDRUN_KERNEL_CACHE`, else `kernel-cache/` in the
/// `target` folder above this build's target dir (`target/emu` shares `target`'s); `None`
/// (no sharing) when `SPEEDRUN_KERNEL_CACHE` is empty or the target dir is not recognised.
fn cache_root(out: &Path) -> Option<PathBuf> {
    println!("cargo::rerun-if-env-changed=SPEEDRUN_KERNEL_CACHE");
    if let Some(d) = env::var_os("SPEEDRUN_KERNEL_CACHE") {
        return (!d.is_empty()).then(|| PathBuf::from(d));
    }
    let t = target_dir(out)?;
    let top = t.ancestors().find(|a| a.file_name().is_some_and(|n| n == "target")).unwrap_or(&t);
    Some(top.join("kernel-cache"))
}

/// Whether `dir` holds every one of `files`.
fn has_all(dir: &Path, files: &[String]) -> bool {
    files.iter().all(|f| dir.join(f).exists())
}

/// Copies the compiled `files` from `out` into the cache entry `dir`: written under a temporary
/// name and renamed, so an entry is complete or absent (a concurrent build that got there
/// first wins). Keeps the `KEEP` newest entries (folders named like a key; nothing else in the
/// cache folder is touched). Failures only cost the sharing.
fn share(out: &Path, dir: &Path, files: &[String]) {
    const KEEP: usize = 4;
    let Some(root) = dir.parent() else { return };
    let tmp = root.join(format!(".tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let copied = fs::create_dir_all(&tmp).is_ok() && files.iter().all(|f| fs::copy(out.join(f), tmp.join(f)).is_ok());
    // an incomplete entry (files deleted by hand) is replaced; a complete one was another build's
    if copied && fs::rename(&tmp, dir).is_err() && !has_all(dir, files) {
        let _ = fs::remove_dir_all(dir);
        let _ = fs::rename(&tmp, dir);
    }
    let _ = fs::remove_dir_all(&tmp);
    let mut entries: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(root)
        .map(|rd| {
            rd.flatten()
                // only this script's entries (16 hex digits): the folder may be one the user named
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.len() == 16 && n.bytes().all(|b| b.is_ascii_hexdigit())
                })
                .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
                .collect()
        })
        .unwrap_or_default();
    entries.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (_, p) in entries.into_iter().skip(KEEP) {
        let _ = fs::remove_dir_all(p);
    }
}

/// `<target dir>` from OUT_DIR = <target>[/<triple>]/<profile>/build/<pkg>-<hash>/out.
fn target_dir(out: &Path) -> Option<PathBuf> {
    let build = out.parent()?.parent()?;
    if build.file_name()? != "build" {
        return None;
    }
    let mut t = build.parent()?.parent()?;
    if let (Ok(target), Ok(host)) = (env::var("TARGET"), env::var("HOST")) {
        if target != host && t.file_name().is_some_and(|n| n == target.as_str()) {
            t = t.parent()?;
        }
    }
    Some(t.to_path_buf())
}

/// GIT_COMMIT / GIT_DIRTY for the run header, plus rerun triggers on HEAD, the ref and the index.
fn git_info(manifest: &Path) {
    let git = |args: &[&str]| -> Option<String> {
        let o = Command::new("git").args(args).current_dir(manifest).output().ok()?;
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = match git(&["status", "--porcelain"]) {
        Some(s) if commit != "unknown" => if s.is_empty() { "0" } else { "1" }.to_string(),
        _ => "unknown".into(),
    };
    println!("cargo::rustc-env=GIT_COMMIT={commit}");
    println!("cargo::rustc-env=GIT_DIRTY={dirty}");
    // Watch only paths that exist: a missing path makes cargo rerun the script (and rebuild the
    // crate) on every build.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]).map(PathBuf::from) {
        let common = git(&["rev-parse", "--git-common-dir"]).map(|c| manifest.join(c)).unwrap_or_else(|| dir.clone());
        let mut watch = vec![dir.join("HEAD"), dir.join("index"), common.join("packed-refs")];
        let head = fs::read_to_string(dir.join("HEAD")).unwrap_or_default();
        if let Some(r) = head.strip_prefix("ref:").map(str::trim) {
            let rp = common.join(r);
            // An unborn branch has no ref file yet: watch its folder for the first commit.
            watch.push(if rp.exists() { rp } else { rp.parent().map(Path::to_path_buf).unwrap_or(rp) });
        }
        for w in watch.into_iter().filter(|w| w.exists()) {
            println!("cargo::rerun-if-changed={}", w.display());
        }
    }
}

struct Toolchain {
    lib: PathBuf,
    includes: Vec<PathBuf>,
    /// Where it was found, for messages and `kernels::COMPILER`.
    origin: String,
}

/// First hit of: $CUDA_PIP_ROOT, ./.cuda-venv, $CUDA_HOME, $CUDA_PATH, nvcc on PATH, /usr/local/cuda.
/// Layouts: pip cu12 `<root>/cuda_nvrtc/lib/libnvrtc.so.12` + `cuda_runtime/include` +
/// `cuda_nvcc/include` (crt/mma.h); pip cu13 `<root>/cu13/lib/libnvrtc.so.13` + `cu13/include`;
/// toolkit `<T>/lib64/libnvrtc.so.{12,13}` + `<T>/include` (+ `include/cccl`).
/// Err: the places looked at, for the message.
fn find_toolchain(manifest: &Path) -> Result<Toolchain, String> {
    let mut looked: Vec<String> = vec![]; // for the error message
    let mut check = |place: &str, root: Option<PathBuf>, pip: bool| -> Option<Toolchain> {
        let Some(r) = root else {
            looked.push(format!("{place} ({})", if place.starts_with('$') { "unset" } else { "none" }));
            return None;
        };
        let cands: Vec<(PathBuf, Vec<PathBuf>)> = if pip {
            vec![
                (
                    r.join("cuda_nvrtc/lib/libnvrtc.so.12"),
                    vec![r.join("cuda_runtime/include"), r.join("cuda_nvcc/include")],
                ),
                (r.join("cu13/lib/libnvrtc.so.13"), vec![r.join("cu13/include"), r.join("cu13/include/cccl")]),
            ]
        } else {
            ["libnvrtc.so.12", "libnvrtc.so.13", "libnvrtc.so"]
                .iter()
                .map(|so| (r.join("lib64").join(so), vec![r.join("include"), r.join("include/cccl")]))
                .collect()
        };
        for (lib, incs) in cands {
            if lib.exists() && incs[0].join("cuda_fp16.h").exists() && incs.iter().any(|i| i.join("crt/mma.h").exists())
            {
                let includes = incs.into_iter().filter(|i| i.exists()).collect();
                return Some(Toolchain { lib, includes, origin: place.to_string() });
            }
        }
        let state = if r.exists() { "no libnvrtc + headers there" } else { "absent" };
        let at = if Path::new(place) == r { String::new() } else { format!(" = {}", r.display()) };
        looked.push(format!("{place}{at} ({state})"));
        None
    };
    println!("cargo::rerun-if-env-changed=CUDA_PIP_ROOT");
    if let Some(tc) = check("$CUDA_PIP_ROOT", env::var_os("CUDA_PIP_ROOT").map(PathBuf::from), true) {
        return Ok(tc);
    }
    let venv = manifest.join(".cuda-venv");
    // Rerun when the install script finishes or changes the pins. A venv that does not exist
    // yet cannot be watched (a watched path that is missing reruns this script, and rebuilds the
    // crate, on every build): the install script touches build.rs instead.
    if let Some(w) = [venv.join(".ok"), venv.clone()].into_iter().find(|w| w.exists()) {
        println!("cargo::rerun-if-changed={}", w.display());
    }
    let site = fs::read_dir(venv.join("lib"))
        .ok()
        .and_then(|rd| rd.flatten().map(|e| e.path().join("site-packages/nvidia")).find(|p| p.exists()));
    if let Some(tc) = check("./.cuda-venv (PyPI wheels)", site.or_else(|| Some(venv.clone())), true) {
        return Ok(tc);
    }
    for v in ["CUDA_HOME", "CUDA_PATH"] {
        println!("cargo::rerun-if-env-changed={v}");
        if let Some(tc) = check(&format!("${v}"), env::var_os(v).map(PathBuf::from), false) {
            return Ok(tc);
        }
    }
    // Only now look at PATH, so that PATH changes rerun the script only when it matters.
    println!("cargo::rerun-if-env-changed=PATH");
    let nvcc = env::var_os("PATH").and_then(|p| env::split_paths(&p).map(|d| d.join("nvcc")).find(|f| f.is_file()));
    if let Some(tc) = check("nvcc on PATH", nvcc.and_then(|n| Some(n.parent()?.parent()?.to_path_buf())), false) {
        return Ok(tc);
    }
    if let Some(tc) = check("/usr/local/cuda", Some("/usr/local/cuda".into()), false) {
        return Ok(tc);
    }
    Err(looked.join(", "))
}

/// (image, log) or the error with the NVRTC log.
type Compiled = Result<(Vec<u8>, String), String>;
type Prog = *mut c_void;
type CreateFn = unsafe extern "C" fn(
    *mut Prog,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
type CompileFn = unsafe extern "C" fn(Prog, c_int, *const *const c_char) -> c_int;
type SizeFn = unsafe extern "C" fn(Prog, *mut usize) -> c_int;
type GetFn = unsafe extern "C" fn(Prog, *mut c_char) -> c_int;

/// The few NVRTC entry points we need, resolved from a library opened by absolute path.
struct Nvrtc {
    create: CreateFn,
    compile: CompileFn,
    destroy: unsafe extern "C" fn(*mut Prog) -> c_int,
    log_size: SizeFn,
    log: GetFn,
    ptx_size: SizeFn,
    ptx: GetFn,
    cubin_size: SizeFn,
    cubin: GetFn,
    version: unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int,
    // Keep the libraries loaded for as long as the function pointers above are used.
    _lib: libloading::Library,
    _builtins: Option<libloading::Library>,
}

impl Nvrtc {
    fn open(path: &Path) -> Result<Self, String> {
        // libnvrtc dlopen()s libnvrtc-builtins.so.X.Y by soname. The cu12 wheel has
        // RUNPATH=$ORIGIN, the cu13 wheel and some toolkits do not: preload it by absolute path.
        let builtins = fs::read_dir(path.parent().unwrap_or(Path::new(".")))
            .ok()
            .and_then(|rd| {
                rd.flatten().map(|e| e.path()).find(|p| {
                    let n = p.file_name().unwrap_or_default().to_string_lossy();
                    n.starts_with("libnvrtc-builtins.so.") && !n.contains(".alt.")
                })
            })
            // SAFETY: loading NVIDIA's NVRTC builtins library; its initialisers are benign.
            .and_then(|p| unsafe { libloading::Library::new(p) }.ok());
        // SAFETY: as above, for libnvrtc itself.
        let lib =
            unsafe { libloading::Library::new(path) }.map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        macro_rules! sym {
            ($n:literal) => {
                // SAFETY: the declared signature matches nvrtc.h for this symbol.
                *unsafe { lib.get($n) }
                    .map_err(|e| format!("{} lacks {}: {e}", path.display(), String::from_utf8_lossy($n)))?
            };
        }
        Ok(Nvrtc {
            create: sym!(b"nvrtcCreateProgram"),
            compile: sym!(b"nvrtcCompileProgram"),
            destroy: sym!(b"nvrtcDestroyProgram"),
            log_size: sym!(b"nvrtcGetProgramLogSize"),
            log: sym!(b"nvrtcGetProgramLog"),
            ptx_size: sym!(b"nvrtcGetPTXSize"),
            ptx: sym!(b"nvrtcGetPTX"),
            cubin_size: sym!(b"nvrtcGetCUBINSize"),
            cubin: sym!(b"nvrtcGetCUBIN"),
            version: sym!(b"nvrtcVersion"),
            _lib: lib,
            _builtins: builtins,
        })
    }

    fn version(&self) -> (i32, i32) {
        let (mut a, mut b) = (0, 0);
        // SAFETY: two out-pointers to live integers.
        unsafe { (self.version)(&mut a, &mut b) };
        (a, b)
    }

    /// Compiles `src` for `sm_<a>` (SASS cubin, with the ptxas -v log) or, for `None`, for
    /// compute_90 (PTX text). Returns (image, log) or the error with the full log.
    fn compile(&self, src: &str, name: &str, arch: Option<u32>, base: &[&str], incs: &[PathBuf]) -> Compiled {
        let target = match arch {
            Some(a) if ARCH_SPECIFIC.contains(&a) => format!("sm_{a}a"),
            Some(a) => format!("sm_{a}"),
            None => format!("compute_{PTX_ARCH}"),
        };
        let mut opts: Vec<CString> = vec![CString::new(format!("--gpu-architecture={target}")).unwrap()];
        opts.extend(base.iter().map(|o| CString::new(*o).unwrap()));
        if arch.is_some() {
            opts.push(CString::new("--ptxas-options=-v").unwrap());
        }
        for i in incs {
            opts.push(
                CString::new(format!("--include-path={}", i.display()))
                    .map_err(|_| "NUL in include path".to_string())?,
            );
        }
        let optp: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
        let src_c = CString::new(src).map_err(|_| "the source contains a NUL byte".to_string())?;
        let name_c = CString::new(name).unwrap();
        // SAFETY: NVRTC calls on one program owned by this function; buffers are sized by the
        // matching *Size call; the program is destroyed on every path.
        unsafe {
            let mut p: Prog = std::ptr::null_mut();
            let rc = (self.create)(&mut p, src_c.as_ptr(), name_c.as_ptr(), 0, std::ptr::null(), std::ptr::null());
            if rc != 0 {
                return Err(format!("nvrtcCreateProgram failed with code {rc}"));
            }
            let rc = (self.compile)(p, optp.len() as c_int, optp.as_ptr());
            let mut n = 0usize;
            (self.log_size)(p, &mut n);
            let mut logb = vec![0 as c_char; n.max(1)];
            (self.log)(p, logb.as_mut_ptr());
            let log = CStr::from_ptr(logb.as_ptr()).to_string_lossy().into_owned();
            if rc != 0 {
                (self.destroy)(&mut p);
                // Without the sm_70 deprecation notice the log is the same for every target.
                let log: Vec<&str> = log.lines().filter(|l| !l.contains("Architectures prior to")).collect();
                return Err(format!("NVRTC error {rc}; log:\n{}", log.join("\n").trim_end()));
            }
            let mut n = 0usize;
            let img = if arch.is_some() {
                (self.cubin_size)(p, &mut n);
                let mut v = vec![0u8; n];
                (self.cubin)(p, v.as_mut_ptr().cast());
                v
            } else {
                (self.ptx_size)(p, &mut n);
                let mut v = vec![0u8; n];
                (self.ptx)(p, v.as_mut_ptr().cast());
                while v.last() == Some(&0) {
                    v.pop(); // NUL terminator: include_str! text must not carry it
                }
                v
            };
            (self.destroy)(&mut p);
            if img.is_empty() {
                return Err(format!("NVRTC returned an empty image; log:\n{log}"));
            }
            Ok((img, log))
        }
    }
}
