// common.cuh: helpers shared by every kernels/*.cu file (included as "common.cuh"; build.rs
// passes -I kernels/). Conventions for the whole project:
//   - fp16 storage (`half`), fp32 accumulation; NHWC layout, C contiguous, C a multiple of 8.
//   - every exported kernel is extern "C" (no name mangling: Rust looks them up by name) and is
//     named <op>_<pass>[_<fusion>]_<dtype>.
//   - arch-specific instructions sit behind __CUDA_ARCH__ guards with a working sm_70 path
//     (build.rs compiles SASS for sm_70/80/86/89/90 and compute_90 PTX).
#pragma once
#include <cuda_fp16.h>

#define CEIL_DIV(a, b) (((a) + (b) - 1) / (b))

// True in device code compiled for sm_80 or newer (Ampere+: mma.sync m16n8k16, cp.async, ldmatrix),
// and in the host emulation (scripts/kernel-emu), which provides those instructions lane by lane.
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800) || defined(EMU_KERNELS)
#define ARCH_SM80 1
#else
#define ARCH_SM80 0
#endif

// Programmatic dependent launch (compute capability 9.0+; the host launches with it where the
// GPU and driver have it, src/gpu/backend.rs `launch_kernel`): the next kernel of the stream
// may be scheduled before this one ends, so every kernel's first statement is pdl_entry().
// griddepcontrol.wait returns once the previous kernel has completed and its writes are
// visible (at once when not launched that way); launch_dependents then lets the next kernel's
// blocks be scheduled as soon as every block of this grid has passed here, so they wait
// resident on the SMs this grid's tail leaves idle instead of being launched after it. Nothing
// before the wait may touch global memory. A test (src/kernels.rs) holds every __global__ to
// it; the emulation (scripts/kernel-emu/inc/sm80.h) counts the threads that pass here, and the
// emulated driver fails a programmatic launch in which one did not.
#if !defined(EMU_KERNELS)
__device__ __forceinline__ void pdl_entry() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
#endif

// Two fp16 values <-> one 32-bit register (low half = lower address, as mma.sync expects).
__device__ __forceinline__ unsigned pack_half2(half lo, half hi) {
    __half2 h = __halves2half2(lo, hi);
    return *reinterpret_cast<unsigned*>(&h);
}
// Loads a[i], a[i + 1] as one 32-bit register; i must be even and `a` 4-byte aligned.
__device__ __forceinline__ unsigned load_half2(const half* a, int i) {
    return *reinterpret_cast<const unsigned*>(a + i);
}

// ---- sm_80+ warp-level instructions (PTX ISA names). Kernels that use them are launched only on
// compute capability ≥ 8.0 (the host checks); compiled for sm_70 their bodies trap. The host
// emulation (scripts/kernel-emu/inc/sm80.h) implements the same fragment layouts lane by lane.
#if !defined(EMU_KERNELS)
// d += a·b for one m16n8k16 tile, fp16 inputs, fp32 accumulators. g = lane/4, t = lane%4:
// a[0..3] = A(g, 2t..2t+1), A(g+8, 2t..), A(g, 2t+8..), A(g+8, 2t+8..); b[0..1] = B(2t..2t+1, g),
// B(2t+8.., g) (k pairs); d[0..3] = D(g, 2t), D(g, 2t+1), D(g+8, 2t), D(g+8, 2t+1).
__device__ __forceinline__ void mma_16816(float* d, const unsigned* a, const unsigned* b) {
#if ARCH_SM80
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();
#endif
}
// Four 8×8 fp16 matrices from shared memory: lanes 8j..8j+7 give the 16-byte row addresses of
// matrix j; r[j] of lane l = matrix j's row l/4, columns 2(l%4), 2(l%4)+1. With TRANS
// (ldmatrix .trans, for operands stored k-major): matrix j's elements (2(l%4), l/4) and
// (2(l%4)+1, l/4), i.e. the same place in the transposed matrix.
template <bool TRANS> __device__ __forceinline__ void ldmatrix_x4(unsigned* r, const half* p) {
#if ARCH_SM80
    const unsigned s = (unsigned)__cvta_generic_to_shared(p);
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(s)
                     : "memory");
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(s)
                     : "memory");
#else
    __trap();
#endif
}
// Asynchronous 16-byte global → shared copy of `bytes` (0 or 16) bytes, the rest zero-filled;
// both addresses 16-byte aligned. Visible to this thread after cp_async_wait, to the block after
// that and a __syncthreads.
__device__ __forceinline__ void cp_async16(half* dst, const void* src, int bytes) {
#if ARCH_SM80
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(bytes) : "memory");
#else
    __trap();
#endif
}
// Closes the group of this thread's copies issued since the last commit (possibly empty).
__device__ __forceinline__ void cp_async_commit() {
#if ARCH_SM80
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// Waits until at most N of this thread's committed groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
#if ARCH_SM80
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}
// Bytes of dynamic shared memory this launch has (PTX %dynamic_smem_size): for kernels that
// size their shared layout from their arguments and check the host gave them enough.
__device__ __forceinline__ unsigned dyn_smem_bytes() {
    unsigned n;
    asm volatile("mov.u32 %0, %%dynamic_smem_size;\n" : "=r"(n));
    return n;
}
#endif

// True in device code compiled for sm_90a (H100/H200 with the arch-specific features: wgmma;
// build.rs compiles the sm_90 cubin as sm_90a) and in the host emulation. Kernels that use the
// helpers below are launched only on compute capability 9.0 from that cubin (the host checks);
// elsewhere (the compute_90 PTX, older archs) their bodies trap.
#if (defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)) || defined(EMU_KERNELS)
#define ARCH_SM90A 1
#else
#define ARCH_SM90A 0
#endif

// ---- sm_90a warpgroup MMA (PTX "wgmma"; emulated in scripts/kernel-emu/inc/sm80.h) ------------
// A warpgroup (4 consecutive warps, 128 threads) computes D(64×N) += A(64×16)·B(16×N)ᵀ with A
// and B in shared memory, both K-major (16 fp16 per row along K) in the 128-byte swizzle:
// rows of 128 bytes (64 fp16 of K), 8-row atoms of 1024 bytes at 1024-byte aligned shared
// addresses, 16-byte chunk c of row r stored at chunk c ^ (r % 8). The descriptor of a k16 slice
// is that of its first row's address + 32 bytes per slice (the hardware swizzles by address
// bits, so the slice offset stays inside the row). D: thread t of the warpgroup (warp w = t/32,
// g = lane/4, q = lane%4) holds d[4j + 2h + e] = D(16w + g + 8h, 8j + 2q + e).
#if !defined(EMU_KERNELS)
__device__ __forceinline__ unsigned smem_u32(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }
// Descriptor of a 128-byte-swizzled operand at shared address `addr` (swizzle mode 1, base
// offset 0): K-major by default (rows of 128 B, atoms of 8 rows 1024 B apart: SBO = 1024, LBO
// unused = 16); for an MN-major operand lbo / sbo as wgmma_f16 describes them (bytes).
__device__ __forceinline__ unsigned long long wgmma_desc(unsigned addr, unsigned lbo = 16, unsigned sbo = 1024) {
    return (unsigned long long)((addr & 0x3FFFF) >> 4) | ((unsigned long long)(lbo >> 4) << 16) |
           ((unsigned long long)(sbo >> 4) << 32) | (1ull << 62);
}
// Orders this thread's generic-proxy shared-memory writes (st.shared, cp.async) before later
// async-proxy reads (wgmma): each writing thread runs it after its writes landed, before the
// barrier that hands the stage to the MMAs. It compiles to MEMBAR.ALL.CTA + FENCE.VIEW.ASYNC.S;
// if the MEMBAR waits for the copies still in flight it costs pipeline depth, so a build with
// SPEEDRUN_WGMMA_NO_PROXY_FENCE=1 (build.rs: -DWG_NO_PROXY_FENCE) leaves it out, as CUTLASS's
// cp.async + GMMA mainloop (sm90_mma_multistage_gmma_ss) does, for timing the two side by side.
__device__ __forceinline__ void fence_proxy_async() {
#if ARCH_SM90A && !defined(WG_NO_PROXY_FENCE)
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_fence() {
#if ARCH_SM90A
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#if ARCH_SM90A
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
// Waits until at most N of this warpgroup's committed wgmma groups are in flight.
template <int N> __device__ __forceinline__ void wgmma_wait() {
#if ARCH_SM90A
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Keeps the compiler from moving accesses of the accumulators across the asynchronous MMAs
// (before the first issue, after the last wait), as CUTLASS's warpgroup_fence_operand.
template <int R> __device__ __forceinline__ void wgmma_fence_regs(float* d) {
#pragma unroll
    for (int i = 0; i < R; i++) asm volatile("" : "+f"(d[i])::"memory");
}
#if ARCH_SM90A
template <int TA, int TB>
__device__ __forceinline__ void wgmma_m64n32(float* d, unsigned long long da, unsigned long long db, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
        "}, %16, %17, p, 1, 1, %19, %20;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
        : "l"(da), "l"(db), "r"(scale_d), "n"(TA), "n"(TB)
        : "memory");
}
template <int TA, int TB>
__device__ __forceinline__ void wgmma_m64n64(float* d, unsigned long long da, unsigned long long db, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
        "}, %32, %33, p, 1, 1, %35, %36;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(da), "l"(db), "r"(scale_d), "n"(TA), "n"(TB)
        : "memory");
}
template <int TA, int TB>
__device__ __forceinline__ void wgmma_m64n128(float* d, unsigned long long da, unsigned long long db, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
        "}, %64, %65, p, 1, 1, %67, %68;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(da), "l"(db), "r"(scale_d), "n"(TA), "n"(TB)
        : "memory");
}
template <int TA, int TB>
__device__ __forceinline__ void wgmma_m64n256(float* d, unsigned long long da, unsigned long long db, int scale_d) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15,"
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31,"
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63,"
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79,"
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95,"
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111,"
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
        "}, %128, %129, p, 1, 1, %131, %132;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
          "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
          "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
          "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
          "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
          "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]),
          "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]),
          "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]),
          "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]),
          "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "l"(da), "l"(db), "r"(scale_d), "n"(TA), "n"(TB)
        : "memory");
}
#endif
// D(64×N) = A·Bᵀ + (scale_d ? D : 0), d: N/2 registers in the layout above. TA / TB: 0 for a
// K-major operand (the layout above), 1 for an MN-major one ("transposed": rows of 128 bytes
// along K hold 64 consecutive M (N) values; 8-k atoms of 1024 bytes; the descriptor's LBO is the
// byte step between 64-wide M (N) blocks, its SBO the step between 8-deep K groups).
template <int N, int TA = 0, int TB = 0>
__device__ __forceinline__ void wgmma_f16(float* d, unsigned long long da, unsigned long long db, int scale_d) {
#if ARCH_SM90A
    static_assert(N == 32 || N == 64 || N == 128 || N == 256, "wgmma_f16: N is 32, 64, 128 or 256");
    if constexpr (N == 32) wgmma_m64n32<TA, TB>(d, da, db, scale_d);
    else if constexpr (N == 64) wgmma_m64n64<TA, TB>(d, da, db, scale_d);
    else if constexpr (N == 128) wgmma_m64n128<TA, TB>(d, da, db, scale_d);
    else wgmma_m64n256<TA, TB>(d, da, db, scale_d);
#else
    __trap();
#endif
}
#endif

// ---- sm_90a thread-block clusters, mbarriers and bulk copies (the TMA unit without a tensor
// map; emulated in scripts/kernel-emu/inc/sm80.h, with the fiber launcher's clusters) ---------
// CLUSTER_Xn: `__cluster_dims__(n, 1, 1)` where the kernel is compiled for sm_90a (a kernel
// attribute that older targets reject; there the kernel's body traps). Blocks ni..ni+n−1 of
// the grid's x form a cluster (rank = blockIdx.x % n); the grid's x must be a multiple of n.
#if ARCH_SM90A
#define CLUSTER_X2 __cluster_dims__(2, 1, 1)
#define CLUSTER_X4 __cluster_dims__(4, 1, 1)
#else
#define CLUSTER_X2
#define CLUSTER_X4
#endif
#if !defined(EMU_KERNELS)
// This CTA's rank in its cluster.
__device__ __forceinline__ unsigned cluster_ctarank() {
    unsigned r = 0;
#if ARCH_SM90A
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
#endif
    return r;
}
// Every thread of every CTA of the cluster: arrive (release), then wait (acquire).
__device__ __forceinline__ void cluster_sync() {
#if ARCH_SM90A
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#endif
}
// The cluster barrier split in two, without memory ordering on the arrive (a release arrive is
// a MEMBAR.ALL.GPU per thread in the SASS): cluster_wait returns once every thread of the
// cluster has made the cluster_arrive_relaxed that pairs with it (each thread alternates them).
// For ordering that is only "the other CTAs are past point X" (their wgmma retired), not data.
__device__ __forceinline__ void cluster_arrive_relaxed() {
#if ARCH_SM90A
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void cluster_wait() {
#if ARCH_SM90A
    asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
#endif
}
// An mbarrier (8 bytes of shared memory at shared address `bar`) expecting `count` arrivals per
// phase. Then fence_mbar_init and a cluster_sync before another CTA's copies may signal it.
__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count) {
#if ARCH_SM90A
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#endif
}
__device__ __forceinline__ void fence_mbar_init() {
#if ARCH_SM90A
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
// One arrival on `bar`, and `bytes` more that its current phase waits for (complete_tx).
__device__ __forceinline__ void mbar_arrive_expect_tx(unsigned bar, unsigned bytes) {
#if ARCH_SM90A
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
#endif
}
// Waits until the phase of parity `parity` of `bar` has completed (the first phase is parity 0).
// A wait of more than 2^32 clock cycles (≈ 2 s) traps: a phase that never completes (a
// synchronisation bug) then fails the launch instead of hanging the GPU.
__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
#if ARCH_SM90A
    const long long t0 = clock64();
    for (;;) {
        unsigned done;
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
        if (done) return;
        if (clock64() - t0 > (1ll << 32)) __trap();
    }
#endif
}
// Copies `bytes` (a multiple of 16, 16-byte aligned both sides) from global `src` to shared
// address `dst` of every CTA of the cluster in `mask` (bit r: rank r), the same offset in each,
// and signals each one's mbarrier at shared address `bar` (same offset) with the bytes it got.
__device__ __forceinline__ void bulk_copy_multicast(unsigned dst, const void* src, unsigned bytes, unsigned bar,
                                                    unsigned short mask) {
#if ARCH_SM90A
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1], %2, [%3], "
        "%4;\n" ::"r"(dst),
        "l"(src), "r"(bytes), "r"(bar), "h"(mask)
        : "memory");
#endif
}
#endif

// Full-warp sum / max (all 32 lanes active).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// ---- shared by the training kernels (conv, norm, stem, head, optim) ---------------------------

// GELU u·Φ(u) and its derivative Φ(u) + u·φ(u) (Φ, φ: the standard normal's CDF and density),
// the CPU reference's exact GELU to within 2.6e-7 (Φ), 2.8e-7 (GELU′) and 4.2e-7 (GELU)
// absolute in f32 (bench/gelu_error.py, bench/logs/2026-11-27-gelu-error.log), far below the
// fp16 rounding of every output (relative 4.9e-4): Φ from Abramowitz–Stegun 7.1.26, erfc(x) ≈
// t·(a1 + t·(a2 + … + t·a5))·e^(−x²), t = 1/(1 + p·x), x = |u|/√2 (|error| ≤ 1.5e-7), whose
// e^(−x²) = e^(−u²/2) is also φ's: 2 MUFU per value, against erff and expf (whose two branches
// the compiler evaluates and selects between). The element-wise passes that apply them
// (act_f16, pre_bwd_dx_f16, chan_reduce_f16) were ALU-bound at about half the memory
// bandwidth; bench/logs/2026-11-27-sass-gelu.log has their instruction counts before and after.
// In the tails the tail's own value is kept (Φ(u) = r/2 for u < 0, no 1 − (1 − r)).
// 2^x and 1/x by the SFU alone (ex2.approx.ftz, rcp.approx.ftz: relative error ≤ 2^−22, a
// subnormal argument or result flushed to 0), without the subnormal scaling that __expf and
// __fdividef add around them when the file is not compiled with -ftz.
__device__ __forceinline__ float ex2_fast(float x) {
#if defined(EMU_KERNELS)
    return exp2f(x);
#else
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
#endif
}
__device__ __forceinline__ float rcp_fast(float x) {
#if defined(EMU_KERNELS)
    return 1.0f / x;
#else
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
#endif
}
__device__ __forceinline__ void normal_cdf_pdf(float u, float& cdf, float& pdf) {
    const float x = fabsf(u) * 0.70710678118654752f;
    const float e = ex2_fast(-1.4426950408889634f * x * x);  // e^(−x²); 0 once it would be subnormal
    const float t = rcp_fast(fmaf(0.3275911f, x, 1.0f));
    const float q = t * fmaf(t, fmaf(t, fmaf(t, fmaf(t, 1.061405429f, -1.453152027f), 1.421413741f), -0.284496736f),
                             0.254829592f);
    const float half_tail = 0.5f * q * e;  // Φ(−|u|) = erfc(|u|/√2)/2
    cdf = u >= 0.0f ? 1.0f - half_tail : half_tail;
    pdf = 0.3989422804014327f * e;
}
__device__ __forceinline__ float gelu_f(float u) {
    float cdf, pdf;
    normal_cdf_pdf(u, cdf, pdf);
    return u * cdf;
}
__device__ __forceinline__ float gelu_grad_f(float u) {
    float cdf, pdf;
    normal_cdf_pdf(u, cdf, pdf);
    return fmaf(u, pdf, cdf);
}

// The per-channel map in front of every GELU (`Pre` in src/backend.rs):
//   bn != 0:  u = (x − mean[c])·invstd[c] + shift[c]   (BatchNorm, scale 1)
//   bn == 0:  u = x + shift[c]                          (whitening bias; mean/invstd unused)
// The form (x − mean)·invstd + shift is the CPU reference's, operation for operation.
__device__ __forceinline__ float pre_u(float x, float mean, float invstd, float shift, int bn) {
    return bn ? (x - mean) * invstd + shift : x + shift;
}

// The pre's parameters of channel c as pre_u and pre_du take them: the BatchNorm's mean and
// invstd (bn = 1), or mean 0 and invstd 1 for the bias (bn = 0: pmean, pinv are not read).
__device__ __forceinline__ void pre_params(const float* __restrict__ pmean, const float* __restrict__ pinv,
                                           const float* __restrict__ pshift, int bn, int c, float& mean, float& inv,
                                           float& shift) {
    mean = bn ? pmean[c] : 0.f;
    inv = bn ? pinv[c] : 1.f;
    shift = pshift[c];
}

// The backward of a = GELU(pre(x)) at one value (channel parameters as pre_u takes them; the
// bias passes mean 0, invstd 1): returns du = da·GELU′(u) and sets x̂ = (x − mean)·invstd.
// pre_bwd reduces Σdu and Σdu·x̂ (norm.cu chan_reduce_f16, conv.cu dgrad epilogue) and applies
// them per value (norm.cu pre_bwd_dx_f16).
__device__ __forceinline__ float pre_du(float da, float x, float mean, float invstd, float shift, int bn, float& xhat) {
    xhat = (x - mean) * invstd;
    return da * gelu_grad_f(pre_u(x, mean, invstd, shift, bn));
}

// ---- the step record (`Step` in src/backend.rs) ----------------------------------------------
// Values that change from one training step to the next, read on the device so that one
// recorded step (a CUDA graph) serves every step: word 0 the offset of the step's examples in
// the augmentation words, words 1..STEP_LRS the learning rates as f32 bits, word STEP_WORDS the
// cursor of step_next (optim.cu). A plan is STEP_WORDS words per row.
#define STEP_WORDS 8
#define STEP_LRS 4

// The n augmentation words the step names, or nullptr when they run past the aug_len words.
__device__ __forceinline__ const unsigned int* step_aug(const unsigned int* aug, int aug_len,
                                                        const unsigned int* step, int n) {
    const unsigned long long off = step[0];
    return off + (unsigned long long)n <= (unsigned long long)aug_len ? aug + off : nullptr;
}
// Learning rate in slot `slot` (0 ≤ slot < STEP_LRS, checked by the host).
__device__ __forceinline__ float step_lr(const unsigned int* step, int slot) {
    return __int_as_float((int)step[1 + slot]);
}

// 8 halves <-> 16 bytes.
union Half8 {
    uint4 u;
    half h[8];
};
// The 8 channels of a pooled gradient chunk d at window position want (dy·2 + dx): d's value
// where the channel's argmax byte ab[j] names that position, 0 elsewhere.
__device__ __forceinline__ uint4 route8(const Half8& d, const unsigned char* ab, unsigned char want) {
    Half8 r;
    r.u = make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
    for (int j = 0; j < 8; j++)
        if (ab[j] == want) r.h[j] = d.h[j];
    return r.u;
}

// 2 halves <-> 4 bytes.
union Half2 {
    unsigned u;
    half h[2];
};

// Block-wide sum of a double over blockDim.x threads (blockDim.x a multiple of 32, ≤ 1024);
// `scratch` holds 32 doubles. Deterministic. The result is valid in thread 0.
__device__ __forceinline__ double block_sum_d(double v, double* scratch) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) scratch[w] = v;
    __syncthreads();
    double s = 0.0;
    if (threadIdx.x == 0)
        for (int i = 0; i < nw; i++) s += scratch[i];
    return s;
}

// n / d for 0 ≤ n < 2^31 and a runtime divisor d ≥ 1 by multiply-high (Granlund–Montgomery, as
// CUTLASS's FastDivmod): q = (hi32(n · mul) + n) >> shift, shift = ⌈log2 d⌉,
// mul = ⌊2^32 · (2^shift − d) / d⌋ + 1. A few instructions instead of a division's ~20 (or a
// 64-bit division's subroutine call) per use; the set-up costs about as much as a division, so it
// pays where one divisor serves many divisions (the conv main loops). d < 1 is treated as 1.
struct FastDiv {
    unsigned d, mul, shift;
    __device__ __forceinline__ explicit FastDiv(int div) {
        d = div < 1 ? 1u : (unsigned)div;
        unsigned s = 0;
        while (s < 31 && (1u << s) < d) s++;
        shift = s;
        mul = (unsigned)(((1ull << 32) * ((1ull << s) - d)) / d + 1);
    }
    __device__ __forceinline__ int div(int n) const {
        const unsigned hi = (unsigned)(((unsigned long long)(unsigned)n * mul) >> 32);
        return (int)((hi + (unsigned)n) >> shift);
    }
};

// An N×H×W pixel grid, N·H·W < 2^31 (the host checks): pixel index p = (n·H + y)·W + x.
struct PixGrid {
    int H, W;
    FastDiv hw, w;
    __device__ __forceinline__ PixGrid(int H_, int W_) : H(H_), W(W_), hw(H_ * W_), w(W_) {}
    // p → (n, y, x); ok = p < limit (else (0, 0, 0)).
    __device__ __forceinline__ void at(int p, int limit, int& n, int& yy, int& xx, bool& ok) const {
        ok = p < limit;
        const int pp = ok ? p : 0;
        n = hw.div(pp);
        const int r = pp - n * (H * W);
        yy = w.div(r);
        xx = r - yy * W;
    }
};
