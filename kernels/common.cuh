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

// True in device code compiled for sm_80 or newer (Ampere+: mma.sync m16n8k16, cp.async, ldmatrix).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
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
