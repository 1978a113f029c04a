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

// Exact GELU 0.5·u·(1 + erf(u/√2)) and its derivative Φ(u) + u·φ(u), in f32 like the CPU
// reference (erff differs from libm's by at most a couple of ulp).
__device__ __forceinline__ float gelu_f(float u) {
    return 0.5f * u * (1.0f + erff(u * 0.70710678118654752f));
}
__device__ __forceinline__ float gelu_grad_f(float u) {
    const float cdf = 0.5f * (1.0f + erff(u * 0.70710678118654752f));
    const float pdf = 0.3989422804014327f * expf(-0.5f * u * u);
    return cdf + u * pdf;
}

// The per-channel map in front of every GELU (`Pre` in src/backend.rs):
//   bn != 0:  u = (x − mean[c])·invstd[c] + shift[c]   (BatchNorm, scale 1)
//   bn == 0:  u = x + shift[c]                          (whitening bias; mean/invstd unused)
// The form (x − mean)·invstd + shift is the CPU reference's, operation for operation.
__device__ __forceinline__ float pre_u(float x, float mean, float invstd, float shift, int bn) {
    return bn ? (x - mean) * invstd + shift : x + shift;
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
