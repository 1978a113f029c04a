//! Tests of the GPU runtime. The device tests run where build.rs found libcuda.so.1 and kernels
//! were built; elsewhere cargo lists them as ignored with the reason. With a driver but no usable
//! GPU they fail (with the open error), as they should.
use super::*;
use cudarc::driver::{LaunchConfig, PushKernelArg};
use half::f16;

/// Small deterministic generator (no zeros, no ones: unwritten outputs must not look right).
fn values(n: usize, seed: u32) -> Vec<f16> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(12_345);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            f16::from_f32(((s >> 8) % 2001) as f32 / 1000.0 - 1.0 + 0.0005)
        })
        .collect()
}

fn open() -> Gpu {
    match Gpu::open(0) {
        Ok(g) => {
            eprintln!("device: {}; smoke image: {:?}", g.info, g.image("smoke"));
            g
        }
        Err(e) => panic!("{e} (this machine has libcuda.so.1, so a usable GPU is expected)"),
    }
}

/// The GPU on the mma conv path, or None (said on stderr) where it has none.
fn open_mma() -> Option<Gpu> {
    let mut gpu = open();
    if !ConvPath::available(gpu.info.cc).contains(&ConvPath::Mma) {
        eprintln!("skipped: {} has no mma convs", gpu.info);
        return None;
    }
    gpu.conv_path = ConvPath::Mma;
    Some(gpu)
}

/// ‖a − b‖ / ‖a‖ in f64.
fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let (num, den) =
        a.iter().zip(b).fold((0.0, 0.0), |(n, d), (u, v)| (n + f64::from(u - v).powi(2), d + f64::from(*u).powi(2)));
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// `values` as f32, for uploads.
fn floats(n: usize, seed: u32) -> Vec<f32> {
    values(n, seed).iter().map(|v| v.to_f32()).collect()
}

/// C = A·B for A 16x16 row-major, B given column-major (b[n*16 + k]); returns (c, Σ|a||b|).
fn matmul_ref(a: &[f16], b: &[f16]) -> (Vec<f64>, Vec<f64>) {
    let mut c = vec![0.0; 256];
    let mut m = vec![0.0; 256];
    for i in 0..16 {
        for j in 0..16 {
            for k in 0..16 {
                let p = a[i * 16 + k].to_f64() * b[j * 16 + k].to_f64();
                c[i * 16 + j] += p;
                m[i * 16 + j] += p.abs();
            }
        }
    }
    (c, m)
}

/// Runs one of the 16x16x16 matrix kernels and checks it. Tolerance: every f16·f16 product is
/// exact in f32, so the only error is the fp32 accumulation of K = 16 terms: K·2⁻²⁴·Σ|a||b|,
/// times 4 because tensor cores may truncate instead of rounding between adds.
fn check_matmul(gpu: &Gpu, f: &CudaFunction, label: &str) {
    let (a, b) = (values(256, 1), values(256, 2));
    let s = &gpu.stream;
    let (da, db) = (s.clone_htod(&a).unwrap(), s.clone_htod(&b).unwrap());
    let mut dc = s.clone_htod(&vec![f32::NAN; 256]).unwrap();
    let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (32, 1, 1), shared_mem_bytes: 0 };
    let mut l = s.launch_builder(f);
    l.arg(&da).arg(&db).arg(&mut dc);
    unsafe { l.launch(cfg) }.unwrap_or_else(|e| panic!("{label}: {}", Gpu::err("launching", e)));
    let c = s.clone_dtoh(&dc).unwrap();
    let (r, m) = matmul_ref(&a, &b);
    let mut worst = 0.0f64;
    for i in 0..256 {
        let tol = 16.0 * 4.0 * (-24f64).exp2() * m[i] + 1e-30;
        let err = (c[i] as f64 - r[i]).abs();
        assert!(
            err <= tol,
            "{label} on {}: c[{}][{}] = {} vs reference {} (err {err:e} > tol {tol:e})",
            gpu.info,
            i / 16,
            i % 16,
            c[i],
            r[i]
        );
        worst = worst.max(err / tol);
    }
    eprintln!("{label}: max err {:.1}% of the tolerance", worst * 100.0);
}

#[test]
#[cfg_attr(not(cuda_driver), ignore = "no NVIDIA driver (libcuda.so.1) on this machine: GPU checks skipped")]
#[cfg_attr(
    all(cuda_driver, not(kernels_built)),
    ignore = "CUDA kernels not built (no NVRTC/nvcc at build time): run scripts/install-cuda-toolchain.sh"
)]
fn smoke_kernels_events_graphs() {
    let _device = device_test_lock();
    let gpu = open();
    let expected = kernels::select(kernels::module("smoke").unwrap(), gpu.info.cc.0, gpu.info.cc.1).unwrap();
    assert_eq!(format!("{:?}", gpu.image("smoke").unwrap()), format!("{expected:?}"));

    // Matrix units: WMMA everywhere, inline mma.sync on sm_80+.
    check_matmul(&gpu, &gpu.function("smoke", "smoke_wmma_f16").unwrap(), "smoke_wmma_f16");
    check_matmul(&gpu, &gpu.function("smoke", "smoke_mma_f16").unwrap(), "smoke_mma_f16");

    // Dynamic shared memory above 48 KB (capped at the device's opt-in limit).
    let scale = gpu.function("smoke", "smoke_scale_f16").unwrap();
    let smem = (gpu.info.smem_optin as u32).min(96 * 1024) & !255;
    assert!(smem > 48 * 1024, "{}: opt-in limit {} bytes", gpu.info, gpu.info.smem_optin);
    set_max_dynamic_smem(&scale, smem).unwrap();
    let n = 1_000_003usize; // not a multiple of the per-block tile
    let x0 = values(n, 3);
    let mut x = gpu.stream.clone_htod(&x0).unwrap();
    let per_block = smem as usize / 2;
    let launch = |x: &mut cudarc::driver::CudaSlice<f16>, s: f32, st: &Arc<CudaStream>| -> Result<()> {
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(per_block) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: smem,
        };
        let (n, sb) = (n as i32, smem as i32);
        let mut l = st.launch_builder(&scale);
        l.arg(x).arg(&s).arg(&n).arg(&sb);
        unsafe { l.launch(cfg) }.map(|_| ()).map_err(|e| Gpu::err("launching smoke_scale_f16", e))
    };
    launch(&mut x, 2.0, &gpu.stream).unwrap();
    let got = gpu.stream.clone_dtoh(&x).unwrap();
    for i in 0..n {
        // ×2 is exact in f16 for these magnitudes.
        assert_eq!(got[i], f16::from_f32(x0[i].to_f32() * 2.0), "x[{i}] after scaling by 2");
    }

    // Events: the timer measures something positive.
    let t = gpu.timer().unwrap();
    t.start(&gpu.stream).unwrap();
    for _ in 0..5 {
        launch(&mut x, 1.0, &gpu.stream).unwrap();
    }
    let ms = t.stop(&gpu.stream).unwrap();
    assert!(ms > 0.0 && ms.is_finite(), "timer returned {ms} ms");
    eprintln!("5 launches of smoke_scale_f16 ({smem} B dynamic smem): {ms:.3} ms");

    // Graphs: capture three launches, replay twice: ×2 six times = ×64, exact.
    let graph = capture(&gpu.ctx, &gpu.stream, |st| {
        for _ in 0..3 {
            launch(&mut x, 2.0, st)?;
        }
        Ok(())
    })
    .unwrap();
    graph.launch().unwrap();
    graph.launch().unwrap();
    let got = gpu.stream.clone_dtoh(&x).unwrap();
    for i in (0..n).step_by(997) {
        assert_eq!(got[i], f16::from_f32(x0[i].to_f32() * 128.0), "x[{i}] after the graph replays");
    }

    // A failing capture body is reported and the stream is usable afterwards.
    let e = capture(&gpu.ctx, &gpu.stream, |_| Err(Error::Gpu("body failed".into()))).err().unwrap();
    assert_eq!(e.to_string(), "GPU error: body failed");
    launch(&mut x, 0.5, &gpu.stream).unwrap();
    gpu.sync().unwrap();

    // Clear errors for names that do not exist.
    let e = gpu.function("smoke", "no_such_kernel").unwrap_err().to_string();
    assert!(e.contains("`no_such_kernel` not found in module `smoke`"), "{e}");
    let e = gpu.function("no_such_module", "x").unwrap_err().to_string();
    assert!(e.contains("no kernel module `no_such_module`"), "{e}");
}

/// The compute_90 PTX JIT-compiles and computes the same as the SASS on sm_90 and newer; on
/// older GPUs loading it fails cleanly (an error, not a crash).
#[test]
#[cfg_attr(not(cuda_driver), ignore = "no NVIDIA driver (libcuda.so.1) on this machine: GPU checks skipped")]
#[cfg_attr(
    all(cuda_driver, not(kernels_built)),
    ignore = "CUDA kernels not built (no NVRTC/nvcc at build time): run scripts/install-cuda-toolchain.sh"
)]
fn ptx_image() {
    let _device = device_test_lock();
    let gpu = open();
    let m = kernels::module("smoke").unwrap();
    let loaded = gpu.ctx.load_module(Ptx::from_src(m.ptx));
    if gpu.info.cc.0 < 9 {
        let e = loaded.err().unwrap_or_else(|| panic!("compute_90 PTX loaded on {}", gpu.info));
        eprintln!("PTX on {}: refused as expected ({})", gpu.info, Gpu::err("JIT-loading the PTX", e));
        return;
    }
    let module = loaded.unwrap_or_else(|e| panic!("{}", Gpu::err("JIT-loading the PTX", e)));
    for k in ["smoke_wmma_f16", "smoke_mma_f16"] {
        check_matmul(&gpu, &module.load_function(k).unwrap(), &format!("{k} (PTX JIT)"));
    }
}

#[test]
fn error_sentences() {
    let oom = Gpu::err("allocating activations", DriverError(sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY));
    assert!(matches!(oom, Error::Gpu(_)));
    assert!(
        oom.to_string()
            .starts_with("GPU error: out of GPU memory while allocating activations (CUDA_ERROR_OUT_OF_MEMORY"),
        "{oom}"
    );
    let nodev = Gpu::err("initialising", DriverError(sys::CUresult::CUDA_ERROR_NO_DEVICE)).to_string();
    assert!(nodev.contains("no CUDA-capable GPU detected"), "{nodev}");
    let other = Gpu::err("launching conv", DriverError(sys::CUresult::CUDA_ERROR_LAUNCH_FAILED)).to_string();
    assert!(other.starts_with("GPU error: launching conv: CUDA_ERROR_LAUNCH_FAILED"), "{other}");
}

#[test]
fn device_info_line() {
    let d = DeviceInfo {
        ordinal: 0,
        name: "NVIDIA H100 80GB HBM3".into(),
        cc: (9, 0),
        sms: 132,
        mem_bytes: 85_468_397_568,
        driver_version: "13.0".into(),
        smem_optin: 232_448,
    };
    assert_eq!(d.to_string(), "NVIDIA H100 80GB HBM3, sm_90, 132 SMs, 79.6 GiB, driver CUDA 13.0");
}

/// Without a driver, open() returns the driver sentence (and does not panic).
#[test]
#[cfg_attr(
    cuda_driver,
    ignore = "this machine has an NVIDIA driver (libcuda.so.1): the no-driver path cannot be shown here"
)]
fn open_without_driver() {
    let e = Gpu::open(0).err().expect("open() must fail without libcuda");
    let msg = e.to_string();
    // with the loader's reason, e.g. "libcuda.so.1: cannot open shared object file: ..."
    let reason = msg
        .strip_prefix("GPU error: no NVIDIA driver found (libcuda.so.1 could not be loaded: ")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected message: {msg}"));
    assert!(reason.contains("libcuda.so.1"), "the loader's reason names the library: {msg}");
    assert_eq!(e.exit_code(), 4);
}

/// The conv kernel choice (no GPU needed): mma where the GPU has it, the override, and
/// clear errors for an unknown name or a path the GPU lacks.
#[test]
fn conv_path_choice() {
    use super::ConvPath::{Img, Mixed, Mma, MmaWide, Tma, Tma4, Wgmma, Wgmma2, WgmmaP, Wmma};
    use super::{ConvPath, CONV_ENV};
    assert_eq!(ConvPath::choose((9, 0), None).unwrap(), Mma);
    assert_eq!(ConvPath::choose((8, 0), Some("")).unwrap(), Mma);
    assert_eq!(ConvPath::choose((7, 5), None).unwrap(), Wmma);
    assert_eq!(ConvPath::choose((7, 0), Some("wmma")).unwrap(), Wmma);
    assert_eq!(ConvPath::choose((9, 0), Some(" wmma ")).unwrap(), Wmma);
    assert_eq!(ConvPath::choose((8, 6), Some("mma")).unwrap(), Mma);
    let e = ConvPath::choose((7, 0), Some("mma")).unwrap_err().to_string();
    assert!(e.contains("8.0") && e.contains("sm_70") && e.contains(CONV_ENV), "{e}");
    let e = ConvPath::choose((9, 0), Some("cutlass")).unwrap_err().to_string();
    assert!(e.contains("cutlass") && e.contains("wmma"), "{e}");
    assert_eq!(ConvPath::available((7, 0)), &[Wmma]);
    assert_eq!(ConvPath::available((9, 0)), &[Mma, MmaWide, Img, Wgmma, Wgmma2, WgmmaP, Tma, Tma4, Wmma]);
    assert_eq!(ConvPath::available((8, 9)), &[Mma, MmaWide, Img, Wmma]);
    assert_eq!(ConvPath::tunable((9, 0)), [Mma, MmaWide, Img, Wgmma, Wgmma2, WgmmaP, Tma, Tma4]);
    assert_eq!(ConvPath::wgmma_last((9, 0)), (vec![Mma, MmaWide, Img, Wmma], vec![Wgmma, Wgmma2, WgmmaP, Tma, Tma4]));
    assert_eq!(ConvPath::wgmma_last((8, 6)), (vec![Mma, MmaWide, Img, Wmma], vec![]));
    assert_eq!(ConvPath::choose((9, 0), Some("wgmma")).unwrap(), Wgmma);
    assert_eq!(ConvPath::named("wgmma"), Some(Wgmma));
    // wgmma and tma are sm_90a code: not on 8.x, nor on a newer major (the PTX has no wgmma)
    assert_eq!(ConvPath::choose((9, 0), Some("tma")).unwrap(), Tma);
    assert_eq!(ConvPath::named("tma"), Some(Tma));
    assert_eq!(ConvPath::choose((9, 0), Some("tma4")).unwrap(), Tma4);
    assert_eq!(ConvPath::choose((9, 0), Some("wgmma2")).unwrap(), Wgmma2);
    assert_eq!(ConvPath::choose((9, 0), Some("wgmmap")).unwrap(), WgmmaP);
    for cc in [(8, 9), (10, 0)] {
        for name in ["wgmma", "wgmma2", "wgmmap", "tma", "tma4"] {
            let e = ConvPath::choose(cc, Some(name)).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains("9.0"), "{e}");
        }
    }
    assert!(
        [Wgmma, Wgmma2, WgmmaP, Tma, Tma4].iter().all(|p| p.is_sm90() && p.is_mma())
            && !Mma.is_sm90()
            && !Mixed.is_sm90()
    );
    assert_eq!([Wgmma, Wgmma2, WgmmaP, Tma, Tma4, Mixed].map(|p| p.cluster()), [1, 1, 1, 2, 4, 1]);
    assert_eq!(ConvPath::choose((8, 0), Some("mma128")).unwrap(), MmaWide);
    let e = ConvPath::choose((7, 5), Some("mma128")).unwrap_err().to_string();
    assert!(e.contains("mma128") && e.contains("8.0") && e.contains("sm_75"), "{e}");
    // img: the image-resident forward beside the 128×64 kernels, on every sm_80+ GPU
    assert_eq!(ConvPath::named("img"), Some(Img));
    assert_eq!(ConvPath::choose((8, 6), Some("img")).unwrap(), Img);
    let e = ConvPath::choose((7, 0), Some("img")).unwrap_err().to_string();
    assert!(e.contains("img") && e.contains("8.0") && e.contains("sm_70"), "{e}");
    assert!(Mma.is_mma() && MmaWide.is_mma() && Img.is_mma() && Wgmma.is_mma() && Mixed.is_mma() && !Wmma.is_mma());
    // mixed: a choice per GEMM among the mma families, so where there are two or more
    assert_eq!(ConvPath::named("mixed"), Some(Mixed));
    assert!(Mixed.runs_on((8, 0)) && Mixed.runs_on((9, 0)) && !Mixed.runs_on((7, 5)));
    assert_eq!(ConvPath::choose((8, 6), Some("mixed")).unwrap(), Mixed);
    let e = ConvPath::choose((7, 5), Some("mixed")).unwrap_err().to_string();
    assert!(e.contains("mixed") && e.contains("8.0") && e.contains("sm_75"), "{e}");
    // the list form: unset, every tunable path and mixed (the one available without mma); one
    // name, pinned; a comma list, those paths in its order; each checked like one name
    assert_eq!(
        ConvPath::choose_list((9, 0), None).unwrap(),
        [Mma, MmaWide, Img, Wgmma, Wgmma2, WgmmaP, Tma, Tma4, Mixed]
    );
    assert_eq!(ConvPath::choose_list((8, 6), Some(" ")).unwrap(), [Mma, MmaWide, Img, Mixed]);
    assert_eq!(ConvPath::choose_list((9, 0), Some("mma,mma128,mixed")).unwrap(), [Mma, MmaWide, Mixed]);
    assert_eq!(ConvPath::choose_list((7, 5), None).unwrap(), [Wmma]);
    assert_eq!(ConvPath::choose_list((9, 0), Some("wgmma")).unwrap(), [Wgmma]);
    assert_eq!(ConvPath::choose_list((9, 0), Some("mma128, mma")).unwrap(), [MmaWide, Mma]);
    let e = ConvPath::choose_list((8, 0), Some("mma,wgmma")).unwrap_err().to_string();
    assert!(e.contains("wgmma") && e.contains("9.0"), "{e}");
    for bad in ["mma,mma", "mma,", ",mma128", "mma,,mma128"] {
        let e = ConvPath::choose_list((9, 0), Some(bad)).unwrap_err().to_string();
        assert!(e.contains(CONV_ENV) && e.contains("once"), "{bad}: {e}");
    }
}

/// The host launches the wide convs with the dynamic shared memory the kernels' tiles need.
#[test]
fn wide_conv_smem_matches_kernels() {
    let src = include_str!("../../kernels/conv.cu");
    for line in [
        format!("#define MMA_WIDE_SMEM {}\n", super::backend::WIDE_SMEM),
        format!("#define MMA_TALL_SMEM {}\n", super::backend::TALL_SMEM),
        format!("#define MMA_TALL32_SMEM {}\n", super::backend::TALL32_SMEM),
        format!("#define WG_WIDE_SMEM {}\n", super::backend::WG_WIDE_SMEM),
        format!("#define WG_TALL_SMEM {}\n", super::backend::WG_TALL_SMEM),
        format!("#define WG_TALL32_SMEM {}\n", super::backend::WG_TALL32_SMEM),
        format!("#define WG_NARROW_SMEM {}\n", super::backend::WG_NARROW_SMEM),
        format!("#define WG_WIDE2_SMEM {}\n", super::backend::WG_WIDE2_SMEM),
        format!("#define WG_MC_SMEM {}\n", super::backend::WG_MC_SMEM),
        format!("#define WR_THREADS {} ", super::backend::WR_THREADS),
    ] {
        assert!(src.contains(&line), "kernels/conv.cu lacks {line:?}");
    }
}

/// The host's sizes of the image-resident kernels' shared memory equal the kernels' own
/// (`ImgLayout`, `img_wgrad_smem`; the kernels trap when given less). The sizes are those
/// kernel-emu's test_conv prints for its shapes ("fwd img (image-resident, … B of shared
/// memory)", "wgrad img: … B of shared memory"), the recipe's first three layers among them.
#[test]
fn img_smem_matches_kernel_layout() {
    for (h, w, cin, bytes) in
        [(7, 5, 8, 19792), (9, 9, 16, 22480), (8, 8, 8, 19984), (1, 1, 8, 18512), (31, 31, 24, 68048)]
    {
        assert_eq!(super::backend::img_wgrad_smem(h, w, cin), bytes, "wgrad {h}x{w}x{cin}");
    }
    for (h, w, cin, bytes) in [
        (31, 31, 24, 83408),
        (15, 15, 64, 112464),
        (7, 5, 8, 16720),
        (9, 9, 16, 27600),
        (8, 8, 8, 16912),
        (1, 1, 8, 15440),
        (6, 6, 40, 55696),
        (7, 7, 256, 326480),
    ] {
        assert_eq!(super::backend::img_smem(h, w, cin), bytes, "{h}x{w}x{cin}");
    }
    // and the constants the host launches them by
    let src = include_str!("../../kernels/conv.cu");
    for line in [
        format!("#define IMG_THREADS {}\n", super::backend::IMG_THREADS),
        format!("#define IMG_WG_K {} ", super::backend::IMG_WG_K),
    ] {
        assert!(src.contains(&line), "kernels/conv.cu lacks {line:?}");
    }
}

#[test]
fn epilogue_sums_switch() {
    assert!(epilogue_sums(None).unwrap());
    assert!(epilogue_sums(Some("1")).unwrap());
    assert!(epilogue_sums(Some(" ")).unwrap());
    assert!(!epilogue_sums(Some("0")).unwrap());
    let e = epilogue_sums(Some("off")).unwrap_err().to_string();
    assert!(e.contains(SUMS_ENV) && e.contains("\"off\"") && e.contains("0 or 1"), "{e}");
}

#[test]
fn pdl_where_the_gpu_and_driver_have_it() {
    let info = |cc, driver: &str| DeviceInfo {
        ordinal: 0,
        name: "GPU".into(),
        cc,
        sms: 132,
        mem_bytes: 1 << 30,
        driver_version: driver.into(),
        smem_optin: 232_448,
    };
    assert!(pdl(&info((9, 0), "13.0"), None).unwrap());
    assert!(pdl(&info((9, 0), "12.3"), Some("1")).unwrap());
    assert!(pdl(&info((10, 0), "12.9"), Some("")).unwrap());
    assert!(!pdl(&info((9, 0), "13.0"), Some("0")).unwrap());
    // off by default where it is missing, and asking for it there says why
    for (cc, driver, why) in [((8, 0), "13.0", "sm_80"), ((9, 0), "12.2", "CUDA 12.2"), ((9, 0), "odd", "CUDA odd")] {
        assert!(!pdl(&info(cc, driver), None).unwrap());
        assert!(!pdl(&info(cc, driver), Some("0")).unwrap());
        let e = pdl(&info(cc, driver), Some("1")).unwrap_err().to_string();
        assert!(e.contains(PDL_ENV) && e.contains(why), "{e}");
    }
    let e = pdl(&info((9, 0), "13.0"), Some("yes")).unwrap_err().to_string();
    assert!(e.contains(PDL_ENV) && e.contains("\"yes\"") && e.contains("0 or 1"), "{e}");
}

#[test]
fn pdl_probe_failure_switches_it_off_unless_asked_for() {
    assert_eq!(pdl_after_probe(Ok(()), None).unwrap(), None);
    assert_eq!(pdl_after_probe(Ok(()), Some("1")).unwrap(), None);
    let failed = || Err(Error::Gpu("launching head::axpy_f32: CUDA_ERROR_NOT_SUPPORTED".into()));
    let why = pdl_after_probe(failed(), None).unwrap().expect("switched off");
    assert!(why.contains("probe failed") && why.contains("CUDA_ERROR_NOT_SUPPORTED"), "{why}");
    let e = pdl_after_probe(failed(), Some(" 1")).unwrap_err().to_string();
    assert!(e.contains(PDL_ENV) && e.contains("CUDA_ERROR_NOT_SUPPORTED"), "{e}");
}

/// A GPU opened with programmatic dependent launch where it has it (the emulated driver: sm_90,
/// CUDA 12.9) passed its probe, and says so in its description.
#[test]
#[cfg_attr(not(cuda_driver), ignore = "no NVIDIA driver (libcuda.so.1) on this machine: GPU checks skipped")]
#[cfg_attr(
    all(cuda_driver, not(kernels_built)),
    ignore = "CUDA kernels not built (no NVRTC/nvcc at build time): run scripts/install-cuda-toolchain.sh"
)]
fn pdl_is_on_where_the_gpu_has_it() {
    use crate::backend::Backend;
    let gpu = Gpu::open(0).unwrap();
    let expected = pdl(&gpu.info, std::env::var(PDL_ENV).ok().as_deref()).unwrap();
    assert_eq!((gpu.pdl, &gpu.pdl_off), (expected, &None), "{}", gpu.describe());
    assert_eq!(gpu.describe().contains("programmatic dependent launch"), gpu.pdl, "{}", gpu.describe());
}

/// The mma convs with their epilogue sums switched off (separate reductions, for measuring)
/// give the same outputs and the same statistics up to summation order.
#[test]
#[cfg_attr(not(cuda_driver), ignore = "no NVIDIA driver (libcuda.so.1) on this machine: GPU checks skipped")]
#[cfg_attr(
    all(cuda_driver, not(kernels_built)),
    ignore = "CUDA kernels not built (no NVRTC/nvcc at build time): run scripts/install-cuda-toolchain.sh"
)]
fn epilogue_sums_off_gives_the_same_statistics() {
    use crate::backend::{Backend, BnStats, Pre, Shape};
    let _device = device_test_lock();
    let Some(mut gpu) = open_mma() else { return };
    let (xs, cout) = (Shape::new(2, 6, 6, 16), 24);
    let ys = xs.with_c(cout).pooled();
    let f = floats;
    let (x, w, shift) = (
        gpu.upload(&f(xs.len(), 1)).unwrap(),
        gpu.upload(&f(cout * 9 * 16, 2)).unwrap(),
        gpu.upload(&f(16, 3)).unwrap(),
    );
    let dy = gpu.upload(&f(ys.len(), 4)).unwrap();
    let run = |g: &mut Gpu, on: bool| -> Vec<Vec<f32>> {
        g.epilogue_sums = on;
        let (mut y, mut am) = (g.zeros(ys.len()).unwrap(), g.byte_zeros(ys.len()).unwrap());
        let (mut rm, mut rv, mut bn) =
            (g.zeros(cout).unwrap(), g.upload(&vec![1.0; cout]).unwrap(), g.zeros(2 * cout).unwrap());
        let st = BnStats { eps: 1e-5, momentum: 0.6, running_mean: &mut rm, running_var: &mut rv, bn: &mut bn };
        g.conv3x3(&x, xs, Pre::Bias(&shift), &w, cout, true, &mut y, &mut am, None, Some(st)).unwrap();
        let (mut dw, mut da, mut sums) =
            (g.zeros(cout * 9 * 16).unwrap(), g.zeros(xs.len()).unwrap(), g.zeros(32).unwrap());
        let pre = Pre::Bias(&shift);
        g.conv3x3_bwd(&x, xs, pre, &w, cout, true, &am, &dy, &mut dw, Some(&mut da), Some(&mut sums), None).unwrap();
        [&y, &bn, &rm, &rv, &da, &sums].iter().map(|b| g.download(b).unwrap()).collect()
    };
    let (on, off) = (run(&mut gpu, true), run(&mut gpu, false));
    gpu.epilogue_sums = true;
    for (k, (a, b)) in ["y", "bn", "running mean", "running var", "da", "da sums"].iter().zip(on.iter().zip(&off)) {
        assert!(a.iter().all(|v| v.is_finite()), "{k}: not finite");
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let worst = a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(worst <= 1e-5 * scale, "{k}: epilogue sums on and off differ by {worst} (scale {scale})");
    }
}

/// One training forward (BatchNorm statistics in the epilogue) and backward (dw, da and the
/// pre_bwd sums) of a conv with a bias pre, on `g`'s current path: the outputs [y, bn, running
/// mean, running var, dw, da, da sums], the argmax bytes and the conv kernels launched (sorted).
/// `[x, w, shift, dy]`: the inputs.
fn conv_layer_outputs(
    g: &mut Gpu,
    xs: crate::backend::Shape,
    cout: usize,
    pool: bool,
    [x, w, shift, dy]: [&super::backend::GBuf; 4],
) -> (Vec<Vec<f32>>, Vec<u8>, Vec<&'static str>) {
    use crate::backend::{Backend, BnStats, Pre};
    let cin = xs.c;
    let ys = if pool { xs.with_c(cout).pooled() } else { xs.with_c(cout) };
    let (mut y, mut am) = (g.zeros(ys.len()).unwrap(), g.byte_zeros(ys.len()).unwrap());
    let (mut rm, mut rv, mut bn) =
        (g.zeros(cout).unwrap(), g.upload(&vec![1.0; cout]).unwrap(), g.zeros(2 * cout).unwrap());
    let (mut dw, mut da, mut sums) =
        (g.zeros(cout * 9 * cin).unwrap(), g.zeros(xs.len()).unwrap(), g.zeros(2 * cin).unwrap());
    let ((), rows) = g
        .profile(|g| {
            let st = BnStats { eps: 1e-5, momentum: 0.6, running_mean: &mut rm, running_var: &mut rv, bn: &mut bn };
            g.conv3x3(x, xs, Pre::Bias(shift), w, cout, pool, &mut y, &mut am, None, Some(st))?;
            g.conv3x3_bwd(
                x,
                xs,
                Pre::Bias(shift),
                w,
                cout,
                pool,
                &am,
                dy,
                &mut dw,
                Some(&mut da),
                Some(&mut sums),
                None,
            )
        })
        .unwrap();
    let outs = [&y, &bn, &rm, &rv, &dw, &da, &sums].iter().map(|b| g.download(b).unwrap()).collect();
    let mut names: Vec<_> = rows.iter().map(|r| r.name).filter(|n| n.starts_with("conv3x3")).collect();
    names.sort();
    (outs, g.download_bytes(&am).unwrap(), names)
}

/// The `mma128` path's convs (warp tiles of 64×64, `SPEEDRUN_CONV=mma128`): 128×128 tiles where
/// the GEMM's N is ≥ 128 (the forward and weight gradient for 136 output channels, the input
/// gradient for 136 input channels: partial second tiles), 256×64 tiles for the forward and
/// input gradient elsewhere (256×32 for an input gradient of ≤ 32 channels). They give the 128×64 kernels' outputs bit for bit (every output is
/// the same chain of m16n8k16 steps in the same order); the epilogue sums over a 256-row tile
/// are grouped differently, so the BatchNorm statistics and the input gradient's sums agree to
/// rounding. The weight gradient's pixel slices depend on the tile count, but 72 pixels clamp
/// both paths to the same 3 slices, so dw too is compared bit for bit. Where the GPU has the
/// `wgmma` path (compute capability 9.0; the emulated driver reports 9.0, and the emulated wgmma
/// sums each output's k16 steps in the same order), the same for its kernels: 128×256 tiles
/// where N ≥ 128 (the weight gradient's too: its slices, fewer tiles, may differ, but 72 pixels
/// still clamp to 3), 256×64 (256×32) elsewhere, the weight gradient with N < 128 as on mma128;
/// and `wgmma2`'s: 128×128 in 3 stages where N ≥ 128, 128×64 where 32 < N < 128, else wgmma's.
#[test]
#[cfg_attr(not(cuda_driver), ignore = "no NVIDIA driver (libcuda.so.1) on this machine: GPU checks skipped")]
fn wide_convs_equal_narrow_ones() {
    use crate::backend::{Backend, Shape};
    let _device = device_test_lock();
    let Some(mut gpu) = open_mma() else { return };
    // batch 8: every wgmma kernel runs more K steps than its 4 stages (the 128×256 ones fill the
    // launch's shared memory to within 16 bytes in the emulator's misaligned window)
    for (cin, cout, pool) in [(32, 136, true), (136, 16, false), (40, 48, false)] {
        let xs = Shape::new(8, 6, 6, cin);
        let ys = if pool { xs.with_c(cout).pooled() } else { xs.with_c(cout) };
        let (x, w, shift) = (
            gpu.upload(&floats(xs.len(), 1)).unwrap(),
            gpu.upload(&floats(cout * 9 * cin, 2)).unwrap(),
            gpu.upload(&floats(cin, 3)).unwrap(),
        );
        let dy = gpu.upload(&floats(ys.len(), 4)).unwrap();
        let run = |g: &mut Gpu| conv_layer_outputs(g, xs, cout, pool, [&x, &w, &shift, &dy]);
        let (narrow, am0, names0) = run(&mut gpu);
        assert!(names0.iter().all(|n| !n.contains("wide") && !n.contains("tall")), "{cin}->{cout}: {names0:?}");
        let want: &[&str] = match cin {
            32 => &["conv3x3_dgrad_mma_tall32_f16", "conv3x3_fwd_mma_wide_f16", "conv3x3_wgrad_mma_wide_f16"],
            136 => &["conv3x3_dgrad_mma_wide_f16", "conv3x3_fwd_mma_tall_f16", "conv3x3_wgrad_mma_f16"],
            _ => &["conv3x3_dgrad_mma_tall_f16", "conv3x3_fwd_mma_tall_f16", "conv3x3_wgrad_mma_f16"],
        };
        // the wgmma path (compute capability 9.0 only; the emulated driver reports 9.0): its
        // kernels where it has one, the weight gradient of 16 channels as on mma128
        let want_wg: &[&str] = match cin {
            32 => &["conv3x3_dgrad_wgmma_tall32_f16", "conv3x3_fwd_wgmma_f16", "conv3x3_wgrad_wgmma_f16"],
            136 => &["conv3x3_dgrad_wgmma_f16", "conv3x3_fwd_wgmma_tall_f16", "conv3x3_wgrad_mma_f16"],
            _ => &["conv3x3_dgrad_wgmma_tall_f16", "conv3x3_fwd_wgmma_tall_f16", "conv3x3_wgrad_wgmma_narrow_f16"],
        };
        // wgmma2 (two blocks per SM): 128×128 where N ≥ 128, 128×64 where 32 < N < 128
        let want_wg2: &[&str] = match cin {
            32 => &["conv3x3_dgrad_wgmma_tall32_f16", "conv3x3_fwd_wgmma2_f16", "conv3x3_wgrad_wgmma2_f16"],
            136 => &["conv3x3_dgrad_wgmma2_f16", "conv3x3_fwd_wgmma_tall_f16", "conv3x3_wgrad_mma_f16"],
            _ => &["conv3x3_dgrad_wgmma_narrow_f16", "conv3x3_fwd_wgmma_narrow_f16", "conv3x3_wgrad_wgmma_narrow_f16"],
        };
        let mut paths = vec![(ConvPath::MmaWide, want)];
        if ConvPath::available(gpu.info.cc).contains(&ConvPath::Wgmma) {
            paths.push((ConvPath::Wgmma, want_wg));
            paths.push((ConvPath::Wgmma2, want_wg2));
        }
        for (path, want) in paths {
            let (wide, am1, names1) = gpu.with_conv_path(path, |g| run(g));
            let p = path.name();
            assert_eq!(names1, want, "{cin}->{cout}: kernels on the {p} path");
            // mma128 runs the same m16n8k16 chains as mma: equal bit for bit (but for sums over
            // the tiles). wgmma's HGMMA need not add a k16 step's products as HMMA does (the
            // emulator makes them equal, and holds them to it; a GPU may differ by an fp16 ulp):
            // close, argmax picks equal but for near-ties, the backward compared if they agree.
            let hw = path.is_sm90() && !gpu.info.name.starts_with("Emulated");
            let differ = am0.iter().zip(&am1).filter(|(a, b)| a != b).count();
            if hw {
                assert!(differ * 100 <= am0.len(), "{cin}->{cout}: {differ} of {} argmax picks ({p})", am0.len());
            } else {
                assert_eq!(am0, am1, "{cin}->{cout}: argmax ({p})");
            }
            let outs = ["y", "bn", "running mean", "running var", "dw", "da", "da sums"];
            for (k, (a, b)) in outs.iter().zip(narrow.iter().zip(&wide)) {
                assert!(a.iter().all(|v| v.is_finite()), "{cin}->{cout} {k}: not finite");
                if hw && differ > 0 && matches!(*k, "dw" | "da" | "da sums") {
                    eprintln!("{cin}->{cout} {k} ({p}): not compared, {differ} argmax picks differ (near-ties)");
                    continue;
                }
                // sums over the tile's rows: f64 for the statistics, f32 for the input gradient's;
                // dw: the weight gradient's split-K slices depend on the tile count
                let tol = match (*k, hw) {
                    ("bn" | "running mean" | "running var" | "dw", false) => 1e-6,
                    ("da sums", false) => 1e-4,
                    (_, false) => 0.0,
                    ("bn" | "running mean" | "running var", true) => 1e-4,
                    (_, true) => 4e-3, // a few fp16 ulps of the largest value
                };
                let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
                let worst = a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
                assert!(worst <= tol * scale, "{cin}->{cout} {k}: {p} differs from mma by {worst} (scale {scale})");
            }
        }
    }
}

/// The `tma` (`tma4`) path runs the multicast kernels (2-CTA (4-CTA) clusters, the weights by
/// bulk copies in `conv_weights_f16`'s layout 2, the grid padded to whole clusters) for the
/// forward where cout is 256 and for the input gradient where cin is 256, wgmma's elsewhere. They issue the same
/// wgmma on the same shared-memory bytes as the 128×256 wgmma kernels, so every output equals
/// the wgmma path's bit for bit (on a GPU too). Shapes: 256 → 256 (both multicast kernels; 3
/// tiles of rows, the grid padded to 4), 64 → 256 pooled (the forward's K = 576; 2 tiles, one
/// cluster of 2, padded to 4 for tma4), 24 → 256 (K = 216 is not whole 64-k blocks: wgmma's
/// forward), 256 → 64 (wgmma's forward, n = 64; the multicast input gradient, 1 tile padded).
#[test]
#[cfg_attr(not(cuda_driver), ignore = "no NVIDIA driver (libcuda.so.1) on this machine: GPU checks skipped")]
fn tma_convs_equal_wgmma_ones() {
    use crate::backend::{Backend, Shape};
    let _device = device_test_lock();
    let Some(mut gpu) = open_mma() else { return };
    if !ConvPath::available(gpu.info.cc).contains(&ConvPath::Tma) {
        eprintln!("skipped: {} has no tma convs (compute capability 9.0 only)", gpu.info);
        return;
    }
    for (n, hw, cin, cout, pool) in
        [(8, 6, 256, 256, false), (4, 6, 64, 256, true), (2, 4, 24, 256, false), (2, 5, 256, 64, false)]
    {
        let xs = Shape::new(n, hw, hw, cin);
        let ys = if pool { xs.with_c(cout).pooled() } else { xs.with_c(cout) };
        let (x, w, shift) = (
            gpu.upload(&floats(xs.len(), 11)).unwrap(),
            gpu.upload(&floats(cout * 9 * cin, 12)).unwrap(),
            gpu.upload(&floats(cin, 13)).unwrap(),
        );
        let dy = gpu.upload(&floats(ys.len(), 14)).unwrap();
        let run = |g: &mut Gpu| conv_layer_outputs(g, xs, cout, pool, [&x, &w, &shift, &dy]);
        let (wg, am0, names0) = gpu.with_conv_path(ConvPath::Wgmma, |g| run(g));
        let (fwd_mc, dgrad_mc) = (cout == 256 && cin % 64 == 0, cin == 256);
        for (path, suffix) in [(ConvPath::Tma, "_wgmma_mc_f16"), (ConvPath::Tma4, "_wgmma_mc4_f16")] {
            let (mc, am1, names1) = gpu.with_conv_path(path, |g| run(g));
            let multicast = |nm: &str| (nm.contains("_fwd_") && fwd_mc) || (nm.contains("_dgrad_") && dgrad_mc);
            let want: Vec<String> = names0
                .iter()
                .map(|&nm| if multicast(nm) { nm.replace("_wgmma_f16", suffix) } else { nm.to_string() })
                .collect();
            let p = path.name();
            assert_eq!(names1, want, "{xs:?}->{cout}: kernels on the {p} path (wgmma's: {names0:?})");
            assert_eq!(am0, am1, "{xs:?}->{cout}: argmax ({p})");
            for (k, (a, b)) in
                ["y", "bn", "running mean", "running var", "dw", "da", "da sums"].iter().zip(wg.iter().zip(&mc))
            {
                assert!(a.iter().all(|v| v.is_finite()), "{xs:?}->{cout} {k}: not finite");
                assert!(
                    a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits()),
                    "{xs:?}->{cout} {k}: {p} differs from wgmma"
                );
            }
        }
    }
}

/// Statistics asked of the conv ops in a way that cannot work are errors with a sentence,
/// checked before anything is launched.
#[test]
#[cfg_attr(not(cuda_driver), ignore = "no NVIDIA driver (libcuda.so.1) on this machine: GPU checks skipped")]
#[cfg_attr(
    all(cuda_driver, not(kernels_built)),
    ignore = "CUDA kernels not built (no NVRTC/nvcc at build time): run scripts/install-cuda-toolchain.sh"
)]
fn conv_statistics_misuse_is_an_error() {
    use crate::backend::{Backend, BnStats, Pre, Shape};
    let _device = device_test_lock();
    let mut gpu = open();
    let up = |g: &mut Gpu, n: usize| g.upload(&vec![0.25; n]).unwrap();
    // one value per channel: no batch statistics
    let xs = Shape::new(1, 1, 1, 8);
    let (x, w, bias) = (up(&mut gpu, 8), up(&mut gpu, 8 * 9 * 8), up(&mut gpu, 8));
    let (mut y, mut am) = (up(&mut gpu, 8), gpu.byte_zeros(0).unwrap());
    let (mut rm, mut rv, mut bn) = (up(&mut gpu, 8), up(&mut gpu, 8), up(&mut gpu, 16));
    let st = BnStats { eps: 1e-5, momentum: 0.6, running_mean: &mut rm, running_var: &mut rv, bn: &mut bn };
    let e = gpu.conv3x3(&x, xs, Pre::Bias(&bias), &w, 8, false, &mut y, &mut am, None, Some(st)).unwrap_err();
    assert!(e.to_string().contains("more than one value per channel"), "{e}");
    // a bn output of the wrong size
    let xs = Shape::new(2, 2, 2, 8);
    let (x, mut y) = (up(&mut gpu, xs.len()), up(&mut gpu, xs.len()));
    let mut short = up(&mut gpu, 8);
    let st = BnStats { eps: 1e-5, momentum: 0.6, running_mean: &mut rm, running_var: &mut rv, bn: &mut short };
    let e = gpu.conv3x3(&x, xs, Pre::Bias(&bias), &w, 8, false, &mut y, &mut am, None, Some(st)).unwrap_err();
    assert!(e.to_string().contains("bn [mean | invstd] holds 8 values, expected 16"), "{e}");
    // the input gradient's sums without the input gradient
    let (mut dw, mut sums) = (up(&mut gpu, 8 * 9 * 8), up(&mut gpu, 16));
    let e = gpu
        .conv3x3_bwd(&x, xs, Pre::Bias(&bias), &w, 8, false, &am, &y, &mut dw, None, Some(&mut sums), None)
        .unwrap_err();
    assert!(e.to_string().contains("da_sums needs da"), "{e}");
}

/// An input given as `Pre::Activated` (the stem's output, conv 0's input) is read as the
/// activation itself: the conv runs no `act_f16` and matches the CPU reference's conv of the same
/// values, with the same bits on the wmma and mma paths; and every op that would need a
/// gradient through it (or a map) refuses it.
#[test]
#[cfg_attr(not(cuda_driver), ignore = "no NVIDIA driver (libcuda.so.1) on this machine: GPU checks skipped")]
#[cfg_attr(
    all(cuda_driver, not(kernels_built)),
    ignore = "CUDA kernels not built (no NVRTC/nvcc at build time): run scripts/install-cuda-toolchain.sh"
)]
fn activated_input_runs_no_act_pass_and_refuses_gradients() {
    use crate::backend::{Backend, Pre, Shape};
    use crate::cpu::Cpu;
    let _device = device_test_lock();
    let mut gpu = open();
    let (xs, cout) = (Shape::new(2, 11, 9, 8), 16);
    let ys = xs.with_c(cout).pooled();
    // fp16 values, as the stem stores them
    let x: Vec<f32> = floats(xs.len(), 1).iter().map(|&v| f16::from_f32(v).to_f32()).collect();
    let w = floats(cout * 9 * 8, 3);
    let mut cpu = Cpu::<f32>::with_threads(2);
    let (mut want, mut cam) = (vec![f32::NAN; ys.len()], vec![0u8; ys.len()]);
    cpu.conv3x3(&x, xs, Pre::Activated, &w, cout, true, &mut want, &mut cam, None, None).unwrap();
    let (gx, gw) = (gpu.upload_f16(&x).unwrap(), gpu.upload(&w).unwrap());
    let mut first: Option<Vec<f32>> = None;
    for path in [ConvPath::Wmma, ConvPath::Mma] {
        if !ConvPath::available(gpu.info.cc).contains(&path) {
            continue;
        }
        gpu.conv_path = path;
        let (mut y, mut am) = (gpu.upload(&vec![f32::NAN; ys.len()]).unwrap(), gpu.byte_zeros(ys.len()).unwrap());
        let ((), rows) =
            gpu.profile(|g| g.conv3x3(&gx, xs, Pre::Activated, &gw, cout, true, &mut y, &mut am, None, None)).unwrap();
        assert!(rows.iter().all(|r| r.name != "act_f16"), "{path:?}: {rows:?}");
        let got = gpu.download(&y).unwrap();
        let e = rel_l2(&want, &got);
        assert!(e < 2e-3, "{path:?}: relL2 {e} against the CPU reference");
        match &first {
            Some(f) => assert!(f.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "{path:?}: y differs"),
            None => first = Some(got),
        }
    }
    assert!(first.is_some(), "no conv path ran");
    // refused: a kept activation, an input gradient, pre_bwd, the head
    let (mut y, mut am) = (gpu.zeros(ys.len()).unwrap(), gpu.byte_zeros(ys.len()).unwrap());
    let mut keep = gpu.zeros(xs.len()).unwrap();
    let e = gpu.conv3x3(&gx, xs, Pre::Activated, &gw, cout, true, &mut y, &mut am, Some(&mut keep), None).unwrap_err();
    assert!(e.to_string().contains("has no activation to keep"), "{e}");
    let dy = gpu.upload_f16(&floats(xs.with_c(cout).len(), 4)).unwrap();
    let (mut dw, mut da) = (gpu.zeros(cout * 9 * 8).unwrap(), gpu.zeros(xs.len()).unwrap());
    let e = gpu
        .conv3x3_bwd(&gx, xs, Pre::Activated, &gw, cout, false, &am, &dy, &mut dw, Some(&mut da), None, None)
        .unwrap_err();
    assert!(e.to_string().contains("no input gradient through an activated input"), "{e}");
    let mut dshift = gpu.zeros(8).unwrap();
    let e = gpu.pre_bwd(&da, &gx, xs, Pre::Activated, None, &mut dshift, None, None).unwrap_err();
    assert!(e.to_string().contains("pre_bwd: no gradient through an activated input"), "{e}");
    let hw = gpu.upload(&floats(10 * 8, 5)).unwrap();
    let (mut feat, mut ham, mut logits) =
        (gpu.zeros(xs.n * 8).unwrap(), gpu.byte_zeros(xs.n * 8).unwrap(), gpu.zeros(xs.n * 10).unwrap());
    let e = gpu.head(&gx, xs, Pre::Activated, &hw, 10, 1.0, &mut feat, &mut ham, &mut logits).unwrap_err();
    assert!(e.to_string().contains("head: its input must have a map"), "{e}");
    // its weight gradient is allowed (conv 0's, and the whitening bias's against GELU′)
    gpu.conv3x3_bwd(&gx, xs, Pre::Activated, &gw, cout, false, &am, &dy, &mut dw, None, None, None).unwrap();
    assert!(gpu.download(&dw).unwrap().iter().all(|v| v.is_finite()));
}

/// `Gpu::profile` attributes every launch of the profiled work to its kernel, and only that work:
/// a forward conv on the mma path is activate + fp16 weights + conv, once each.
#[test]
#[cfg_attr(not(cuda_driver), ignore = "no NVIDIA driver (libcuda.so.1) on this machine: GPU checks skipped")]
#[cfg_attr(
    all(cuda_driver, not(kernels_built)),
    ignore = "CUDA kernels not built (no NVRTC/nvcc at build time): run scripts/install-cuda-toolchain.sh"
)]
fn profile_counts_each_launch() {
    use crate::backend::{Backend, Pre, Shape};
    let _device = device_test_lock();
    let Some(mut gpu) = open_mma() else { return };
    let f = floats;
    let xs = Shape::new(2, 4, 4, 8);
    let x = gpu.upload_f16(&f(xs.len(), 1)).unwrap(); // an activation as the kernels store it: no cast
    let (w, bias) = (gpu.upload(&f(16 * 9 * 8, 2)).unwrap(), gpu.upload(&f(8, 3)).unwrap());
    let (mut y, mut am) = (gpu.zeros(xs.count() * 16).unwrap(), gpu.byte_zeros(0).unwrap());
    let mut conv = |g: &mut Gpu| g.conv3x3(&x, xs, Pre::Bias(&bias), &w, 16, false, &mut y, &mut am, None, None);
    conv(&mut gpu).unwrap(); // scratch sized outside the profile
    let ((), rows) = gpu.profile(|g| conv(g)).unwrap();
    let mut names: Vec<_> = rows.iter().map(|r| (r.name, r.launches)).collect();
    names.sort();
    assert_eq!(names, [("act_f16", 1), ("conv3x3_fwd_mma_f16", 1), ("conv_weights_f16", 1)], "{rows:?}");
    assert!(rows.iter().all(|r| r.seconds.is_finite() && r.seconds >= 0.0), "{rows:?}");
    assert!(rows.windows(2).all(|p| p[0].seconds >= p[1].seconds), "largest first: {rows:?}");
    // off again afterwards; and not nested
    assert!(gpu.ops_profiling_is_off());
    let e = gpu.profile(|g| g.profile(|_| Ok(())).map(|_| ())).unwrap_err();
    assert!(e.to_string().contains("nested"), "{e}");
}

/// The head's weight gradient keeps one accumulator per class in registers: more classes than
/// it holds is an error with a sentence, not a wrong gradient.
#[test]
#[cfg_attr(not(cuda_driver), ignore = "no NVIDIA driver (libcuda.so.1) on this machine: GPU checks skipped")]
#[cfg_attr(
    all(cuda_driver, not(kernels_built)),
    ignore = "CUDA kernels not built (no NVRTC/nvcc at build time): run scripts/install-cuda-toolchain.sh"
)]
fn head_backward_with_too_many_classes_is_an_error() {
    use crate::backend::{Backend, Shape};
    let _device = device_test_lock();
    let mut gpu = open();
    let up = |g: &mut Gpu, n: usize| g.upload(&vec![0.25; n]).unwrap();
    let (classes, xs) = (33, Shape::new(2, 1, 1, 8));
    let (dl, feat, w) = (up(&mut gpu, 2 * classes), up(&mut gpu, 16), up(&mut gpu, classes * 8));
    let (mut dw, mut da, am) = (up(&mut gpu, classes * 8), up(&mut gpu, 16), gpu.byte_zeros(16).unwrap());
    let e = gpu.head_bwd(&dl, &feat, &am, &w, xs, classes, 1.0, &mut dw, &mut da).unwrap_err();
    assert!(e.to_string().contains("33 classes; at most 32"), "{e}");
}

/// `ConvPath::Mixed` times each GEMM's candidate kernels on the op's own operands the first time
/// it runs, and keeps one pick per GEMM: the op's results are still those of one call (outputs
/// overwritten, running statistics updated once), equal bit for bit to the next call's, which
/// times nothing. A training forward is timed with its BatchNorm statistics both in the epilogue
/// and in a separate pass ("+pass"), the input gradient with pre_bwd's sums likewise; the weight
/// gradient has no such choice. A recording never times: an untimed GEMM there takes the first
/// candidate.
#[test]
#[cfg_attr(not(cuda_driver), ignore = "no NVIDIA driver (libcuda.so.1) on this machine: GPU checks skipped")]
#[cfg_attr(
    all(cuda_driver, not(kernels_built)),
    ignore = "CUDA kernels not built (no NVRTC/nvcc at build time): run scripts/install-cuda-toolchain.sh"
)]
fn mixed_path_times_each_gemm_once_and_leaves_one_calls_results() {
    use crate::backend::{Backend, BnStats, Pre, Shape};
    use crate::replay::Record;
    let _device = device_test_lock();
    let mut gpu = open();
    if !ConvPath::Mixed.runs_on(gpu.info.cc) {
        eprintln!("skipped: {} has fewer than two mma kernel families", gpu.info);
        return;
    }
    gpu.conv_tune = ConvPath::tunable(gpu.info.cc);
    let (cin, cout) = (32, 136);
    let xs = Shape::new(8, 6, 6, cin);
    let ys = xs.with_c(cout).pooled();
    let (x, w, shift, dy) = (
        gpu.upload(&floats(xs.len(), 11)).unwrap(),
        gpu.upload(&floats(cout * 9 * cin, 12)).unwrap(),
        gpu.upload(&floats(cin, 13)).unwrap(),
        gpu.upload(&floats(ys.len(), 14)).unwrap(),
    );
    let rm0 = floats(cout, 15);
    let run = |g: &mut Gpu| -> (Vec<Vec<f32>>, Vec<u8>) {
        let (mut y, mut am) = (g.zeros(ys.len()).unwrap(), g.byte_zeros(ys.len()).unwrap());
        let (mut rm, mut rv, mut bn) =
            (g.upload(&rm0).unwrap(), g.upload(&vec![1.5; cout]).unwrap(), g.zeros(2 * cout).unwrap());
        let (mut dw, mut da, mut sums) =
            (g.zeros(cout * 9 * cin).unwrap(), g.zeros(xs.len()).unwrap(), g.zeros(2 * cin).unwrap());
        let st = BnStats { eps: 1e-5, momentum: 0.6, running_mean: &mut rm, running_var: &mut rv, bn: &mut bn };
        g.conv3x3(&x, xs, Pre::Bias(&shift), &w, cout, true, &mut y, &mut am, None, Some(st)).unwrap();
        let pre = Pre::Bias(&shift);
        g.conv3x3_bwd(&x, xs, pre, &w, cout, true, &am, &dy, &mut dw, Some(&mut da), Some(&mut sums), None).unwrap();
        let outs = [&y, &bn, &rm, &rv, &dw, &da, &sums].iter().map(|b| g.download(b).unwrap()).collect();
        (outs, g.download_bytes(&am).unwrap())
    };
    gpu.conv_path = ConvPath::Mixed;
    let first = run(&mut gpu);
    let picks = gpu.conv_picks();
    let labels: Vec<&str> = picks.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(labels, ["fwd 6x6x32->136 pool", "wgrad 6x6x32->136 pool", "dgrad 6x6x32->136 pool"]);
    assert!(picks.iter().all(|(_, p)| ConvPath::tunable(gpu.info.cc).contains(p)), "{picks:?}");
    let timed = gpu.conv_picks_timed();
    // in the list of candidates' times, after the pick: "fwd …: mma+pass (mma 0.2, mma+pass 0.1 ms)"
    let passes = |line: &str| line.split_once('(').map_or(0, |(_, times)| times.matches("+pass").count());
    let families = ConvPath::tunable(gpu.info.cc).len();
    for k in [0, 2] {
        let n = passes(&timed[k]);
        assert!(n >= 1 && n <= families, "the forward and the input gradient: both modes timed: {timed:?}");
    }
    assert_eq!(passes(&timed[1]), 0, "no sums mode in the weight gradient: {timed:?}");
    assert_ne!(first.0[2], rm0, "the running mean was updated");
    let again = run(&mut gpu);
    assert_eq!(gpu.conv_picks(), picks, "chosen once");
    assert!(first == again, "the first call's results (timed among the candidates) differ from the next call's");

    // a recording: no timing, the first candidate's kernels
    let xs = Shape::new(4, 6, 6, cin);
    let ys = xs.with_c(cout).pooled();
    let (x, mut y, mut am) = (
        gpu.upload_f16(&floats(xs.len(), 16)).unwrap(),
        gpu.zeros(ys.len()).unwrap(),
        gpu.byte_zeros(ys.len()).unwrap(),
    );
    let first_family = ConvPath::tunable(gpu.info.cc)[0];
    let pre = Pre::Bias(&shift);
    gpu.with_conv_path(first_family, |g| g.conv3x3(&x, xs, pre, &w, cout, true, &mut y, &mut am, None, None)).unwrap();
    let graph = gpu.record(&mut |g| g.conv3x3(&x, xs, pre, &w, cout, true, &mut y, &mut am, None, None)).unwrap();
    assert!(graph.is_some());
    assert_eq!(gpu.conv_picks(), picks, "a recording times nothing");
}

/// `SPEEDRUN_BENCH_ONLY` (bench's `Lines`): on the device, a filtered bench times and prints
/// exactly the lines it names (a conv line of the default path and a BatchNorm one here, at
/// batch 2), made in bench order, and says how many it left out.
#[test]
#[cfg_attr(not(cuda_driver), ignore = "no NVIDIA driver (libcuda.so.1) on this machine: GPU checks skipped")]
#[cfg_attr(
    all(cuda_driver, not(kernels_built)),
    ignore = "CUDA kernels not built (no NVRTC/nvcc at build time): run scripts/install-cuda-toolchain.sh"
)]
fn bench_runs_only_the_lines_named() {
    let _device = device_test_lock();
    let Some(mut gpu) = open_mma() else { return };
    let mut out = Vec::new();
    let mut lines = crate::selftest::Lines::new(&mut out, vec!["pre_bwd [5]".into(), "fwd mma [1]".into()]);
    crate::selftest::bench_lines(&mut gpu, 2, &mut lines).unwrap();
    lines.finish().unwrap();
    let text = String::from_utf8(out).unwrap();
    let timed: Vec<&str> = text.lines().filter(|l| l.contains(" us ")).map(|l| l.split("  ").next().unwrap()).collect();
    assert_eq!(timed, ["conv3x3 fwd mma [1]", "pre_bwd [5]"], "{text}");
    assert!(text.lines().last().unwrap().starts_with("(PARTIAL: "), "{text}");
}

/// `Gpu::mainloop_only` (the bench's "main loop" lines): on every mma-family path, the conv
/// kernels given null outputs run without writing y or da (their NaN poison stays), and the
/// same calls without it write both (finite), so the diagnostic leaves out exactly the
/// epilogues' stores and the "main loop" lines time the same launches otherwise.
#[test]
#[cfg_attr(not(cuda_driver), ignore = "no NVIDIA driver (libcuda.so.1) on this machine: GPU checks skipped")]
#[cfg_attr(
    all(cuda_driver, not(kernels_built)),
    ignore = "CUDA kernels not built (no NVRTC/nvcc at build time): run scripts/install-cuda-toolchain.sh"
)]
fn mainloop_only_skips_the_epilogues() {
    use crate::backend::{Backend, Pre, Shape};
    let _device = device_test_lock();
    let Some(mut gpu) = open_mma() else { return };
    let (xs, cout) = (Shape::new(4, 6, 6, 64), 256);
    let ys = xs.with_c(cout).pooled();
    let (x, w, shift) = (
        gpu.upload(&floats(xs.len(), 1)).unwrap(),
        gpu.upload(&floats(cout * 9 * xs.c, 2)).unwrap(),
        gpu.upload(&floats(xs.c, 3)).unwrap(),
    );
    let dy = gpu.upload(&floats(ys.len(), 4)).unwrap();
    let paths = ConvPath::available(gpu.info.cc).iter().filter(|p| p.is_mma() && **p != ConvPath::Mixed);
    for &path in paths {
        for only in [true, false] {
            let mut y = gpu.upload_f16(&vec![f32::NAN; ys.len()]).unwrap();
            let mut da = gpu.upload_f16(&vec![f32::NAN; xs.len()]).unwrap();
            let (mut am, mut dw) = (gpu.byte_zeros(ys.len()).unwrap(), gpu.zeros(cout * 9 * xs.c).unwrap());
            gpu.mainloop_only = only;
            let r = gpu.with_conv_path(path, |g| {
                g.conv3x3(&x, xs, Pre::Bias(&shift), &w, cout, true, &mut y, &mut am, None, None)?;
                let da = Some(&mut da);
                g.conv3x3_bwd(&x, xs, Pre::Bias(&shift), &w, cout, true, &am, &dy, &mut dw, da, None, None)
            });
            gpu.mainloop_only = false;
            r.unwrap();
            let p = path.name();
            for (what, v) in [("y", gpu.download(&y).unwrap()), ("da", gpu.download(&da).unwrap())] {
                if only {
                    assert!(v.iter().all(|v| v.is_nan()), "{p}: main loop only, but {what} was written");
                } else {
                    assert!(v.iter().all(|v| v.is_finite()), "{p}: {what} not (all) written");
                }
            }
        }
    }
}

/// The wgmma forwards' and input gradients' two epilogues (`Gpu::register_epilogue`: the former
/// ones, unrolled over the tile's column pairs from the accumulators; by default loops over the
/// tile staged in shared memory) give y, argmax, dw and da bit for bit and the BatchNorm
/// statistics and the input gradient's sums to rounding (the same values summed in another
/// order), on each wgmma path with kernels of its own, at pooled and plain shapes of 128×256,
/// 128×128, 256×64 and 128×64 tiles.
#[test]
#[cfg_attr(not(cuda_driver), ignore = "no NVIDIA driver (libcuda.so.1) on this machine: GPU checks skipped")]
#[cfg_attr(
    all(cuda_driver, not(kernels_built)),
    ignore = "CUDA kernels not built (no NVRTC/nvcc at build time): run scripts/install-cuda-toolchain.sh"
)]
fn wgmma_epilogues_agree() {
    use crate::backend::{Backend, Shape};
    let _device = device_test_lock();
    let Some(mut gpu) = open_mma() else { return };
    if !ConvPath::available(gpu.info.cc).contains(&ConvPath::Wgmma) {
        eprintln!("skipped: {} has no wgmma convs", gpu.info);
        return;
    }
    let shapes = [
        (Shape::new(8, 12, 12, 32), 256, true),
        (Shape::new(6, 7, 7, 64), 256, false),
        (Shape::new(8, 12, 12, 16), 64, true),
        (Shape::new(6, 9, 9, 40), 136, false),
    ];
    for (xs, cout, pool) in shapes {
        let ys = if pool { xs.with_c(cout).pooled() } else { xs.with_c(cout) };
        let (x, w, shift) = (
            gpu.upload(&floats(xs.len(), 9)).unwrap(),
            gpu.upload(&floats(cout * 9 * xs.c, 10)).unwrap(),
            gpu.upload(&floats(xs.c, 11)).unwrap(),
        );
        let dy = gpu.upload(&floats(ys.len(), 12)).unwrap();
        for path in [ConvPath::Wgmma, ConvPath::Wgmma2, ConvPath::Tma, ConvPath::Tma4] {
            let mut run = |regs: bool| {
                gpu.register_epilogue = regs;
                let r = gpu.with_conv_path(path, |g| conv_layer_outputs(g, xs, cout, pool, [&x, &w, &shift, &dy]));
                gpu.register_epilogue = false;
                r
            };
            let (loop_outs, am0, names) = run(false);
            let (regs_outs, am1, _) = run(true);
            let p = path.name();
            assert!(names.iter().any(|n| n.starts_with("conv3x3_fwd_wgmma")), "{xs:?} {p}: {names:?}");
            assert_eq!(am0, am1, "{xs:?} {p}: argmax");
            let outs = ["y", "bn", "running mean", "running var", "dw", "da", "da sums"];
            for (k, (a, b)) in outs.iter().zip(loop_outs.iter().zip(&regs_outs)) {
                assert!(a.iter().all(|v| v.is_finite()), "{xs:?} {p} {k}: not finite");
                if matches!(*k, "bn" | "running mean" | "running var" | "da sums") {
                    let e = rel_l2(a, b);
                    assert!(e < 1e-5, "{xs:?} {p} {k}: relL2 {e} between the epilogues");
                } else {
                    assert!(a.iter().zip(b).all(|(u, v)| u.to_bits() == v.to_bits()), "{xs:?} {p} {k}: differ");
                }
            }
        }
    }
}

/// `wgmmap`'s persistent kernels (`_wgmma_p_`, `_wgmma_p_tall_`: one block per SM at most, each
/// looping over row tiles x, x + blocks, … in one pipeline) give the wgmma path's outputs bit for
/// bit: y, argmax and, from their per-tile partials, the BatchNorm statistics and the input
/// gradient's sums (read from global memory here, from shared memory on wgmma); its weight
/// gradient (wgmma's kernel in one wave of split-K slices) to 1e-6. The emulated GPU
/// has 8 SMs, so the shapes give blocks 2 to 3 tiles each: the 128×256 forward over 2304 pooled
/// rows in 18 tiles of 5 K steps (32 channels) and over 1152 rows in 9 tiles of 2 K steps (8
/// channels: a tile shorter than the copies run ahead), the 256×64 forward and input gradient
/// over 2304 rows in 9 tiles, the 128×256 forward and input gradient over 1960 rows in 16 tiles
/// of 36 K steps.
#[test]
#[cfg_attr(not(cuda_driver), ignore = "no NVIDIA driver (libcuda.so.1) on this machine: GPU checks skipped")]
#[cfg_attr(
    all(cuda_driver, not(kernels_built)),
    ignore = "CUDA kernels not built (no NVRTC/nvcc at build time): run scripts/install-cuda-toolchain.sh"
)]
fn persistent_convs_equal_wgmma_ones() {
    use crate::backend::{Backend, Shape};
    let _device = device_test_lock();
    let Some(mut gpu) = open_mma() else { return };
    if !ConvPath::available(gpu.info.cc).contains(&ConvPath::WgmmaP) {
        eprintln!("skipped: {} has no wgmma convs", gpu.info);
        return;
    }
    let shapes = [
        (Shape::new(16, 12, 12, 32), 256, true),
        (Shape::new(8, 12, 12, 8), 128, false),
        (Shape::new(16, 12, 12, 64), 64, false),
        (Shape::new(40, 7, 7, 256), 256, false),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (xs, cout, pool) in shapes {
        let ys = if pool { xs.with_c(cout).pooled() } else { xs.with_c(cout) };
        let (x, w, shift) = (
            gpu.upload(&floats(xs.len(), 5)).unwrap(),
            gpu.upload(&floats(cout * 9 * xs.c, 6)).unwrap(),
            gpu.upload(&floats(xs.c, 7)).unwrap(),
        );
        let dy = gpu.upload(&floats(ys.len(), 8)).unwrap();
        let tm = if cout < 128 { 256 } else { 128 };
        let tiles = (if pool { ys.count() * 4 } else { xs.count() }).div_ceil(tm);
        assert!(tiles > gpu.info.sms as usize, "{xs:?}: {tiles} tiles, so that blocks take several");
        let run =
            |g: &mut Gpu, p| g.with_conv_path(p, |g| conv_layer_outputs(g, xs, cout, pool, [&x, &w, &shift, &dy]));
        let (want, am0, names0) = run(&mut gpu, ConvPath::Wgmma);
        let (got, am1, names1) = run(&mut gpu, ConvPath::WgmmaP);
        // wgmma's kernels, the forward and input gradient on 128×256 and 256×64 tiles persistent
        let persistent = |n: &&'static str| -> &'static str {
            match *n {
                "conv3x3_fwd_wgmma_f16" => "conv3x3_fwd_wgmma_p_f16",
                "conv3x3_fwd_wgmma_tall_f16" => "conv3x3_fwd_wgmma_p_tall_f16",
                "conv3x3_dgrad_wgmma_f16" => "conv3x3_dgrad_wgmma_p_f16",
                "conv3x3_dgrad_wgmma_tall_f16" => "conv3x3_dgrad_wgmma_p_tall_f16",
                other => other,
            }
        };
        let mut want_names: Vec<_> = names0.iter().map(persistent).collect();
        want_names.sort();
        assert_eq!(names1, want_names, "{xs:?}: wgmmap's kernels");
        seen.extend(names1.iter().filter(|n| n.contains("_p_")).copied());
        assert_eq!(am0, am1, "{xs:?}: argmax");
        let outs = ["y", "bn", "running mean", "running var", "dw", "da", "da sums"];
        for (k, (a, b)) in outs.iter().zip(want.iter().zip(&got)) {
            assert!(a.iter().all(|v| v.is_finite()), "{xs:?} {k}: not finite");
            if matches!(*k, "dw" | "bn" | "running mean" | "running var" | "da sums") {
                // wgmmap splits the weight gradient into one wave of slices (fewer than wgmma's
                // 4 blocks per SM where the tiles are few): the same products, summed in other
                // groups; and its persistent forward keeps the register epilogue, whose
                // statistics add the same fp16 values as wgmma's shared-memory loop in
                // another order
                let e = rel_l2(a, b);
                assert!(e < 1e-5, "{xs:?} {k}: relL2 {e} against wgmma's");
                continue;
            }
            assert!(a.iter().zip(b).all(|(u, v)| u.to_bits() == v.to_bits()), "{xs:?} {k}: differs from wgmma's");
        }
    }
    let all = [
        "conv3x3_dgrad_wgmma_p_f16",
        "conv3x3_dgrad_wgmma_p_tall_f16",
        "conv3x3_fwd_wgmma_p_f16",
        "conv3x3_fwd_wgmma_p_tall_f16",
    ];
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), all, "every persistent kernel ran");
}

/// [`Gpu::overlap`]: a recorded backward chain with the weight gradients on the second stream
/// (two layers' input and weight gradients, the second layer's output gradient the first's
/// input gradient, then an op that reads a weight gradient) equals, bit for bit, the same ops
/// run one after another on the main stream. The outputs are NaN-poisoned before the replay, so
/// a value read before it was written shows. On the emulated driver this is run again with its
/// streams reordered (`EMU_STREAM_ORDER=side-late`: the second stream's work as late as the
/// joins allow; `main-late`: as early as the forks allow; scripts/emu-driver/run.sh), where a
/// missing fork or join gives other numbers.
#[test]
#[cfg_attr(not(cuda_driver), ignore = "no NVIDIA driver (libcuda.so.1) on this machine: GPU checks skipped")]
#[cfg_attr(
    all(cuda_driver, not(kernels_built)),
    ignore = "CUDA kernels not built (no NVRTC/nvcc at build time): run scripts/install-cuda-toolchain.sh"
)]
fn overlapped_weight_gradients_equal_one_stream_ones() {
    use crate::backend::{Backend, Pre, Shape};
    use crate::replay::Record;
    let _device = device_test_lock();
    let Some(mut gpu) = open_mma() else { return };
    if !gpu.overlap {
        eprintln!("skipped: {OVERLAP_ENV}=0");
        return;
    }
    let (xs, cout) = (Shape::new(16, 12, 12, 64), 64);
    // fp16 activations and gradients, as in training (an f32 one takes a cast into a temporary,
    // which a recording may not allocate)
    let up = |g: &mut Gpu, n: usize, seed: u32| g.upload(&floats(n, seed)).unwrap();
    let up16 = |g: &mut Gpu, n: usize, seed: u32| g.upload_f16(&floats(n, seed)).unwrap();
    let (x0, x1, w0, w1, s0, s1) = (
        up16(&mut gpu, xs.len(), 1),
        up16(&mut gpu, xs.len(), 2),
        up(&mut gpu, cout * 9 * xs.c, 3),
        up(&mut gpu, cout * 9 * xs.c, 4),
        up(&mut gpu, xs.c, 5),
        up(&mut gpu, xs.c, 6),
    );
    let dy = up16(&mut gpu, xs.len(), 7);
    let am = gpu.byte_zeros(xs.len()).unwrap();
    // the kept activated inputs, as the forward writes them
    let mut kept = Vec::new();
    for (x, w, s) in [(&x0, &w0, &s0), (&x1, &w1, &s1)] {
        let (mut y, mut a, mut k) =
            (gpu.zeros(xs.len()).unwrap(), gpu.byte_zeros(xs.len()).unwrap(), gpu.zeros(xs.len()).unwrap());
        gpu.conv3x3(x, xs, Pre::Bias(s), w, cout, false, &mut y, &mut a, Some(&mut k), None).unwrap();
        kept.push(k);
    }
    let (k0, k1) = (&kept[0], &kept[1]);
    let fresh = |g: &mut Gpu| -> Vec<super::backend::GBuf> {
        [xs.len(), xs.len(), cout * 9 * xs.c, cout * 9 * xs.c, 2 * xs.c, 2 * xs.c, cout * 9 * xs.c]
            .iter()
            .map(|&n| g.zeros(n).unwrap())
            .collect()
    };
    // da1, da0, dw1, dw0, sums1, sums0, acc
    let chain = |g: &mut Gpu, o: &mut [super::backend::GBuf]| -> crate::error::Result<()> {
        let [da1, da0, dw1, dw0, sums1, sums0, acc] = o else { unreachable!() };
        let (p1, p0) = (Pre::Bias(&s1), Pre::Bias(&s0));
        g.conv3x3_bwd(&x1, xs, p1, &w1, cout, false, &am, &dy, dw1, Some(&mut *da1), Some(sums1), Some(k1))?;
        g.conv3x3_bwd(&x0, xs, p0, &w0, cout, false, &am, da1, dw0, Some(da0), Some(sums0), Some(k0))?;
        g.axpy(acc, dw1, 1.0)
    };
    gpu.overlap = false;
    let mut want = fresh(&mut gpu);
    chain(&mut gpu, &mut want).unwrap();
    let want: Vec<Vec<f32>> = want.iter().map(|b| gpu.download(b).unwrap()).collect();
    gpu.overlap = true;
    let mut got = fresh(&mut gpu);
    chain(&mut gpu, &mut got).unwrap(); // op by op: sizes the side stream's workspace
    assert!(gpu.side_workspace_floats() > 0, "the weight gradients here split into slices");
    let streams = [gpu.stream.cu_stream(), gpu.side.as_ref().expect("overlap on").cu_stream()];
    let before = streams.map(emu_launch_priorities);
    let graph = gpu.record(&mut |g| chain(g, &mut got)).unwrap().expect("a graph");
    let after = streams.map(emu_launch_priorities);
    if let ([Some(m0), Some(s0)], [Some(m1), Some(s1)]) = (before, after) {
        // the emulated driver's count of cuLaunchKernelEx calls (with a priority, without): the
        // recording's main-stream launches (the chain) at a priority, the second stream's at none
        let (main, side) = ([m1[0] - m0[0], m1[1] - m0[1]], [s1[0] - s0[0], s1[1] - s0[1]]);
        let pdl = gpu.pdl;
        assert_eq!((main[0] > 0, main[1] > 0), (gpu.chain_priority, !gpu.chain_priority && pdl), "main {main:?}");
        assert_eq!((side[0], side[1] > 0), (0, pdl), "second stream {side:?}");
    }
    let acc = got.len() - 1;
    for (i, b) in got.iter_mut().enumerate() {
        gpu.fill_bytes(b, if i == acc { 0 } else { 0xFF }).unwrap();
    }
    gpu.replay(&graph).unwrap();
    let names = ["da1", "da0", "dw1", "dw0", "sums1", "sums0", "acc = dw1"];
    for ((name, w), b) in names.iter().zip(&want).zip(&got) {
        let g = gpu.download(b).unwrap();
        assert!(w.iter().all(|v| v.is_finite()), "{name}: not finite op by op");
        assert!(w.iter().zip(&g).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}: the recorded overlap differs");
    }
}

/// Under the emulated driver: its count of cuLaunchKernelEx calls so far on `stream`, with a
/// priority attribute and without (`emuLaunchPriorities`); None on a real driver.
fn emu_launch_priorities(stream: sys::CUstream) -> Option<[u64; 2]> {
    let this = libloading::os::unix::Library::this();
    // SAFETY: the emulated driver's function of this signature (scripts/emu-driver/driver.cpp)
    let f = unsafe { this.get::<unsafe extern "C" fn(sys::CUstream, *mut u64)>(b"emuLaunchPriorities") }.ok()?;
    let mut out = [0u64; 2];
    // SAFETY: a stream handle of this context, two u64 to write
    unsafe { f(stream, out.as_mut_ptr()) };
    Some(out)
}

/// [`Gpu::overlap`] where the driver refuses a second stream in a capture (the emulated driver's
/// fault injection `EMU_FAIL_CAPTURE_FORK`): the recording is made again on the main stream,
/// the overlap is off from then on with the reason in the GPU's description, and the replay
/// gives what the ops give run one by one.
#[test]
#[cfg_attr(not(cuda_driver), ignore = "no NVIDIA driver (libcuda.so.1) on this machine: GPU checks skipped")]
#[cfg_attr(
    all(cuda_driver, not(kernels_built)),
    ignore = "CUDA kernels not built (no NVRTC/nvcc at build time): run scripts/install-cuda-toolchain.sh"
)]
fn overlap_falls_back_to_one_stream_when_a_capture_refuses_the_fork() {
    use crate::backend::{Backend, Pre, Shape};
    use crate::replay::Record;
    let _device = device_test_lock();
    let mut gpu = open();
    if gpu.info.name != "Emulated GPU (host CPU)" || !gpu.overlap {
        eprintln!("skipped: needs the emulated driver's fault injection, with {OVERLAP_ENV} on ({})", gpu.info);
        return;
    }
    let (xs, cout) = (Shape::new(4, 6, 6, 16), 16);
    let (x, w, s, dy) = (
        gpu.upload_f16(&floats(xs.len(), 1)).unwrap(),
        gpu.upload(&floats(cout * 9 * xs.c, 2)).unwrap(),
        gpu.upload(&floats(xs.c, 3)).unwrap(),
        gpu.upload_f16(&floats(xs.len(), 4)).unwrap(),
    );
    let am = gpu.byte_zeros(xs.len()).unwrap();
    let (mut y, mut a, mut kept) =
        (gpu.zeros(xs.len()).unwrap(), gpu.byte_zeros(xs.len()).unwrap(), gpu.zeros(xs.len()).unwrap());
    gpu.conv3x3(&x, xs, Pre::Bias(&s), &w, cout, false, &mut y, &mut a, Some(&mut kept), None).unwrap();
    let mut out = [gpu.zeros(cout * 9 * xs.c).unwrap(), gpu.zeros(xs.len()).unwrap()];
    let bwd = |g: &mut Gpu, [dw, da]: &mut [super::backend::GBuf; 2]| {
        g.conv3x3_bwd(&x, xs, Pre::Bias(&s), &w, cout, false, &am, &dy, dw, Some(da), None, Some(&kept))
    };
    bwd(&mut gpu, &mut out).unwrap();
    let want = gpu.download(&out[0]).unwrap();
    std::env::set_var("EMU_FAIL_CAPTURE_FORK", "1");
    let graph = gpu.record(&mut |g| bwd(g, &mut out));
    std::env::remove_var("EMU_FAIL_CAPTURE_FORK");
    let graph = graph.unwrap().expect("a graph");
    gpu.fill_bytes(&mut out[0], 0xFF).unwrap();
    assert!(!gpu.overlap, "the overlap is off after the refused recording");
    let why = gpu.overlap_off.clone().expect("the reason kept");
    assert!(why.contains("second stream failed"), "{why}");
    assert!(gpu.describe().contains("weight gradients on one stream"), "{}", gpu.describe());
    gpu.replay(&graph).unwrap();
    assert_eq!(gpu.download(&out[0]).unwrap(), want);
}

/// The warm-up's autotune times the mixed path also without [`Gpu::overlap`]
/// ([`MIXED_ONE_STREAM`], after mixed, reusing its picks instead of settling them again), so a
/// GPU on which the overlap loses trains without it, and with the overlap but Muon on the main
/// stream ([`MIXED_MUON_MAIN`]); the other variants keep both.
#[test]
#[cfg_attr(not(cuda_driver), ignore = "no NVIDIA driver (libcuda.so.1) on this machine: GPU checks skipped")]
#[cfg_attr(
    all(cuda_driver, not(kernels_built)),
    ignore = "CUDA kernels not built (no NVRTC/nvcc at build time): run scripts/install-cuda-toolchain.sh"
)]
fn the_autotune_times_mixed_without_the_overlap_too() {
    use crate::backend::Backend;
    let _device = device_test_lock();
    let mut gpu = open();
    if !ConvPath::Mixed.runs_on(gpu.info.cc) || !gpu.overlap {
        eprintln!("skipped: {} has no mixed path, or {OVERLAP_ENV}=0", gpu.info);
        return;
    }
    gpu.conv_tune = vec![ConvPath::Mma, ConvPath::Mixed];
    assert!(gpu.muon_side, "{MUON_SIDE_ENV} on by default with the overlap");
    assert_eq!(gpu.variants(), ["mma", "mixed", MIXED_ONE_STREAM, MIXED_MUON_MAIN]);
    gpu.set_variant(MIXED_ONE_STREAM).unwrap();
    assert!(gpu.conv_path == ConvPath::Mixed && !gpu.overlap && !gpu.muon_side && !gpu.variant_settles());
    gpu.set_variant("mixed").unwrap();
    assert!(gpu.conv_path == ConvPath::Mixed && gpu.overlap && gpu.muon_side && gpu.variant_settles());
    gpu.set_variant(MIXED_MUON_MAIN).unwrap();
    assert!(gpu.conv_path == ConvPath::Mixed && gpu.overlap && !gpu.muon_side && !gpu.variant_settles());
    assert_eq!(gpu.variant_note(), "mixed's picks, Muon on the main stream");
    gpu.set_variant(MIXED_ONE_STREAM).unwrap();
    gpu.set_variant("mma").unwrap();
    assert!(gpu.conv_path == ConvPath::Mma && gpu.overlap && gpu.muon_side);
    gpu.conv_tune = vec![ConvPath::Mma, ConvPath::MmaWide];
    assert_eq!(gpu.variants(), ["mma", "mma128"], "no mixed, no one-stream variant");
    gpu.muon_side_wanted = false;
    gpu.conv_tune = vec![ConvPath::Mma, ConvPath::Mixed];
    assert_eq!(gpu.variants(), ["mma", "mixed", MIXED_ONE_STREAM], "{MUON_SIDE_ENV}=0: no Muon variant");
    gpu.set_variant("mixed").unwrap();
    assert!(gpu.overlap && !gpu.muon_side);
    gpu.set_variant("mma").unwrap();
    gpu.overlap_wanted = false;
    gpu.conv_tune = vec![ConvPath::Mma, ConvPath::Mixed];
    assert_eq!(gpu.variants(), ["mma", "mixed"], "{OVERLAP_ENV}=0: nothing to compare");
}

/// `pre_bwd` indexes the unpooled gradient in 32 bits: a shape past 2^31 − 1 values is refused
/// with the reason before any buffer is read (the buffers here are far smaller than the shape).
#[test]
#[cfg_attr(not(cuda_driver), ignore = "no NVIDIA driver (libcuda.so.1) on this machine: GPU checks skipped")]
#[cfg_attr(
    all(cuda_driver, not(kernels_built)),
    ignore = "CUDA kernels not built (no NVRTC/nvcc at build time): run scripts/install-cuda-toolchain.sh"
)]
fn pre_bwd_refuses_an_unpooled_gradient_past_32_bit_indices() {
    use crate::backend::{Backend, Pre, Shape, Unpool};
    let _device = device_test_lock();
    let mut gpu = open();
    let full = Shape::new(40_000, 128, 128, 64); // 41.9·10⁹ values
    let xs = full.pooled();
    let (da, x) = (gpu.upload(&floats(64, 1)).unwrap(), gpu.upload(&floats(64, 2)).unwrap());
    let (bn, beta) = (gpu.upload(&floats(128, 3)).unwrap(), gpu.upload(&floats(64, 4)).unwrap());
    let am = gpu.upload_bytes(&[0u8; 64]).unwrap();
    let (mut dshift, mut dx) = (gpu.zeros(64).unwrap(), gpu.zeros(64).unwrap());
    let unpool = Some(Unpool { argmax: &am, full });
    let e = gpu.pre_bwd(&da, &x, xs, Pre::Bn { bn: &bn, beta: &beta }, None, &mut dshift, Some(&mut dx), unpool);
    let msg = e.expect_err("a shape past 32-bit indices must be refused").to_string();
    assert!(msg.contains("more than 2^31 − 1 values") && msg.contains("smaller batch"), "{msg}");
    // one that fits passes this check and meets the next: the argmax buffer's length
    let full = Shape::new(2, 8, 8, 64);
    let unpool = Some(Unpool { argmax: &am, full });
    let e =
        gpu.pre_bwd(&da, &x, full.pooled(), Pre::Bn { bn: &bn, beta: &beta }, None, &mut dshift, Some(&mut dx), unpool);
    let msg = e.expect_err("the argmax buffer is too short").to_string();
    assert!(msg.contains("argmax"), "{msg}");
}
