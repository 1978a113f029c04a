// smoke.cu: toolchain and runtime smoke kernels, not used by training. They prove, on every
// architecture we ship, that the build embeds working images and that the Rust side can use:
// fp16 WMMA, inline-PTX mma.sync, dynamic shared memory above 48 KB, events and graphs.
// Checked against a CPU computation by the GPU test in src/gpu/mod.rs.
//
// Exported kernels (one warp each for the matrix kernels):
//   smoke_wmma_f16   C[16x16] f32 = A[16x16] f16 (row-major) x B (col-major, b[n*16+k]), WMMA on all archs
//   smoke_mma_f16    same contract; mma.sync.m16n8k16 inline PTX on sm_80+, WMMA on sm_70
//   smoke_scale_f16  x[i] *= s, staged through `smem_bytes` of dynamic shared memory
//                    (the whole allocation is written and read back, so a bad opt-in faults)
#include <mma.h>
#include "common.cuh"

using namespace nvcuda;

__device__ __forceinline__ void wmma_16x16x16(const half* a, const half* b, float* c) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
    wmma::fill_fragment(fc, 0.0f);
    wmma::load_matrix_sync(fa, a, 16);
    wmma::load_matrix_sync(fb, b, 16);
    wmma::mma_sync(fc, fa, fb, fc);
    wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
}

extern "C" __global__ void smoke_wmma_f16(const half* __restrict__ a, const half* __restrict__ b,
                                          float* __restrict__ c) {
    pdl_entry();
    wmma_16x16x16(a, b, c);
}

extern "C" __global__ void smoke_mma_f16(const half* __restrict__ a, const half* __restrict__ b,
                                         float* __restrict__ c) {
    pdl_entry();
#if ARCH_SM80
    // Fragment layout of mma.m16n8k16: see mma_16816 in common.cuh.
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const unsigned fa[4] = {load_half2(a, g * 16 + 2 * t), load_half2(a, (g + 8) * 16 + 2 * t),
                            load_half2(a, g * 16 + 2 * t + 8), load_half2(a, (g + 8) * 16 + 2 * t + 8)};
#pragma unroll
    for (int nt = 0; nt < 2; nt++) {  // two 16x8 tiles cover N = 16
        const int n = nt * 8 + g;
        const unsigned fb[2] = {load_half2(b, n * 16 + 2 * t), load_half2(b, n * 16 + 2 * t + 8)};
        float d[4] = {0.f, 0.f, 0.f, 0.f};
        mma_16816(d, fa, fb);
        const int col = nt * 8 + 2 * t;
        c[g * 16 + col] = d[0];
        c[g * 16 + col + 1] = d[1];
        c[(g + 8) * 16 + col] = d[2];
        c[(g + 8) * 16 + col + 1] = d[3];
    }
#else
    wmma_16x16x16(a, b, c);  // sm_70: WMMA (HMMA.884 underneath)
#endif
}

extern "C" __global__ void smoke_scale_f16(half* __restrict__ x, float s, int n, int smem_bytes) {
    pdl_entry();
    extern __shared__ half stage[];
    const int per_block = smem_bytes / (int)sizeof(half);
    const int base = blockIdx.x * per_block;
    for (int i = threadIdx.x; i < per_block; i += blockDim.x)  // global -> shared (zero past n)
        stage[i] = base + i < n ? x[base + i] : __float2half(0.f);
    __syncthreads();
    for (int i = threadIdx.x; i < per_block; i += blockDim.x) {  // read back reversed: cross-thread
        const int j = per_block - 1 - i;
        if (base + j < n) x[base + j] = __float2half(__half2float(stage[j]) * s);
    }
}
