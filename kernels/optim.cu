// optim.cu: the optimisers (all state f32).
//
// Exported kernels:
//   sgd_nesterov_f32   multi-tensor Nesterov SGD, one launch for up to SGD_MAX tensors passed by
//                      value (SgdArgs, mirrored in src/gpu/backend.rs): g ← g + wd·p;
//                      m ← μ·m + g; p ← p − lr·(g + μ·m), lr the step record's rate in the
//                      tensor's slot. grid (x, tensors), block 256, grid-stride over each tensor.
//   Muon's elementwise steps and norms, each one launch for up to MUON_MAX tensors passed by
//   value (MuonBatch, mirrored in src/gpu/backend.rs); grid (x, tensors), block 256:
//   muon_prep_f32      m ← μ·m + g; u = g + μ·m; and the partial sums of u² and w² over
//                      grid-stride slices of nb[t] blocks (f32 per thread, f64 per block) into
//                      scal[t][2 + b] and scal[t][2 + nb + b]. grid.x ≥ max nb.
//   muon_norms_f64     scal[t][0] = ‖u‖, scal[t][1] = ‖w‖ (√ of the partials' sum, f64, in a
//                      fixed order). grid (1, tensors), block a multiple of 32 (256).
//   muon_scale_f32     X₀ = u·(1/(‖u‖ + 1e-7)), the factor rounded to f32 as in the reference.
//                      1 thread/element.
//   muon_apply_f32     w ← w·(√rows/‖w‖) − lr·X, lr the step record's rate in slot lr_slot.
//                      1 thread/element.
//   step_next          the step record ← the plan's row at its cursor, cursor + 1 (past the last
//                      row: offset 0xFFFFFFFF and NaN rates). 1 block of 32 threads.
//   gemm_nt_f32 / gemm_nn_f32  a batch of up to 8 GEMMs (GemmBatch, by value), GEMM z:
//                      C = alpha·A·op(B) + beta·D (D may be null when beta == 0):
//                      A M×K row-major, op(B) = Bᵀ with B N×K row-major (nt) or B K×N row-major
//                      (nn); f32 in memory, rounded to fp16 when staged, wmma 16×16×16 with f32
//                      accumulation. 128 threads, tile 64×64×32, grid (ceil(max N/64),
//                      ceil(max M/64), count). The Newton–Schulz GEMMs (X·Xᵀ, A·A, B·X) of Muon,
//                      all conv weights in one launch per GEMM of an iteration.
#include <mma.h>
#include "common.cuh"

using namespace nvcuda;

#define SGD_MAX 16
struct SgdArgs {
    float* p[SGD_MAX];
    const float* g[SGD_MAX];
    float* m[SGD_MAX];
    int n[SGD_MAX];
    int lr_slot[SGD_MAX];
    float wd[SGD_MAX];
    const unsigned int* step;
    int count;
    float mu;
};

extern "C" __global__ void sgd_nesterov_f32(SgdArgs a) {
    pdl_entry();
    const int t = blockIdx.y;
    if (t >= a.count) return;
    float* p = a.p[t];
    const float* g = a.g[t];
    float* m = a.m[t];
    const int n = a.n[t];
    const float lr = step_lr(a.step, a.lr_slot[t]), wd = a.wd[t], mu = a.mu;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const float pv = p[i];
        const float gv = g[i] + wd * pv;
        const float mv = mu * m[i] + gv;
        m[i] = mv;
        p[i] = pv - lr * (gv + mu * mv);
    }
}

extern "C" __global__ void step_next(const unsigned int* __restrict__ plan, int rows, unsigned int* __restrict__ step) {
    pdl_entry();
    const unsigned int row = step[STEP_WORDS];
    __syncthreads();  // every thread has read the cursor before thread 0 moves it
    const int k = threadIdx.x;
    if (k < STEP_WORDS) {
        unsigned int v;
        if (row < (unsigned int)rows) v = plan[(long long)row * STEP_WORDS + k];
        else v = k == 0 ? 0xFFFFFFFFu : (k <= STEP_LRS ? 0x7fc00000u : 0u);
        step[k] = v;
    }
    if (k == 0) step[STEP_WORDS] = row + 1;
}

#define MUON_MAX 8
struct MuonBatch {
    float* w[MUON_MAX];
    const float* g[MUON_MAX];
    float* m[MUON_MAX];
    float* u[MUON_MAX];      // g + μ·m
    float* x[MUON_MAX];      // X₀ (muon_scale_f32), the final X (muon_apply_f32)
    double* scal[MUON_MAX];  // [‖u‖, ‖w‖, nb partials of Σu², nb partials of Σw²]
    int n[MUON_MAX];
    int rows[MUON_MAX];
    int nb[MUON_MAX];  // partial blocks of tensor t (the grid-stride slices of muon_prep_f32)
    const unsigned int* step;
    int count;
    float mu;
    int lr_slot;
};

extern "C" __global__ void muon_prep_f32(MuonBatch a) {
    pdl_entry();
    __shared__ double scratch[32];
    const int t = blockIdx.y;
    if (t >= a.count || (int)blockIdx.x >= a.nb[t]) return;  // uniform per block
    const float* g = a.g[t];
    const float* w = a.w[t];
    float* m = a.m[t];
    float* u = a.u[t];
    const int n = a.n[t], nb = a.nb[t];
    const float mu = a.mu;
    float su = 0.f, sw = 0.f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += nb * blockDim.x) {
        const float mv = mu * m[i] + g[i];
        m[i] = mv;
        const float uv = g[i] + mu * mv;
        u[i] = uv;
        su += uv * uv;
        sw += w[i] * w[i];
    }
    const double bu = block_sum_d((double)su, scratch);
    const double bw = block_sum_d((double)sw, scratch);
    if (threadIdx.x == 0) {
        a.scal[t][2 + blockIdx.x] = bu;
        a.scal[t][2 + nb + blockIdx.x] = bw;
    }
}

extern "C" __global__ void muon_norms_f64(MuonBatch a) {
    pdl_entry();
    __shared__ double scratch[32];
    const int t = blockIdx.y;
    if (t >= a.count || blockIdx.x != 0) return;  // uniform per block
    double* sc = a.scal[t];
    const int nb = a.nb[t];
    // thread i adds partials i, i + blockDim, …; then block_sum_d's fixed tree (one thread adding
    // all nb partials in turn was a chain of 2·nb dependent loads: ≈ 19 µs of the H200's step)
    double su = 0.0, sw = 0.0;
    for (int b = threadIdx.x; b < nb; b += blockDim.x) {
        su += sc[2 + b];
        sw += sc[2 + nb + b];
    }
    su = block_sum_d(su, scratch);
    sw = block_sum_d(sw, scratch);
    if (threadIdx.x == 0) {
        sc[0] = sqrt(su);
        sc[1] = sqrt(sw);
    }
}

extern "C" __global__ void muon_scale_f32(MuonBatch a) {
    pdl_entry();
    const int t = blockIdx.y;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= a.count || i >= a.n[t]) return;
    const float inv = (float)(1.0 / (a.scal[t][0] + 1e-7));
    a.x[t][i] = a.u[t][i] * inv;
}

extern "C" __global__ void muon_apply_f32(MuonBatch a) {
    pdl_entry();
    const int t = blockIdx.y;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= a.count || i >= a.n[t]) return;
    const float lr = step_lr(a.step, a.lr_slot);
    const float renorm = (float)(sqrt((double)a.rows[t]) / a.scal[t][1]);
    a.w[t][i] = a.w[t][i] * renorm - lr * a.x[t][i];
}

// ---------------------------------------------------------------------------------------------
#define GBM 64
#define GBN 64
#define GBK 32
#define GLD 40  // GBK + 8 (rows of k)
#define GLDN 72 // GBN + 8 (rows of n)
#define GLDC 68

template <bool TRANS_B>
__device__ __forceinline__ void gemm_body(const float* __restrict__ A, const float* __restrict__ B,
                                          const float* __restrict__ D, float* __restrict__ C, int M, int N, int K,
                                          int kbeg, int kend, float alpha, float beta) {
    __shared__ __align__(128) unsigned char raw[GBM * GLD * 2 + GBK * GLDN * 2 > GBM * GLDC * 4
                                                    ? GBM * GLD * 2 + GBK * GLDN * 2
                                                    : GBM * GLDC * 4];
    half* As = reinterpret_cast<half*>(raw);  // [GBM][GLD]
    half* Bs = As + GBM * GLD;                // nt: [GBN][GLD] (col_major B); nn: [GBK][GLDN] (row_major)
    float* Cs = reinterpret_cast<float*>(raw);
    const int tid = threadIdx.x, warp = tid >> 5, wm = warp >> 1, wn = warp & 1;
    const int m0 = blockIdx.y * GBM, n0 = blockIdx.x * GBN;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.f);
    // One K step (GBK) of MMAs from the staged tiles.
    auto tile_mma = [&]() {
#pragma unroll
        for (int kk = 0; kk < GBK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> fa[2];
#pragma unroll
            for (int i = 0; i < 2; i++) wmma::load_matrix_sync(fa[i], As + (wm * 32 + i * 16) * GLD + kk, GLD);
            if (TRANS_B) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::col_major> fb[2];
#pragma unroll
                for (int j = 0; j < 2; j++) wmma::load_matrix_sync(fb[j], Bs + (wn * 32 + j * 16) * GLD + kk, GLD);
#pragma unroll
                for (int i = 0; i < 2; i++)
#pragma unroll
                    for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
            } else {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::row_major> fb[2];
#pragma unroll
                for (int j = 0; j < 2; j++) wmma::load_matrix_sync(fb[j], Bs + kk * GLDN + wn * 32 + j * 16, GLDN);
#pragma unroll
                for (int i = 0; i < 2; i++)
#pragma unroll
                    for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
            }
        }
    };
    // Vector path (every row stride a multiple of 4 floats, 16-byte aligned bases; K ranges are
    // multiples of 4 then): each thread loads 4 float4 of A and of B per K step (blockDim 128),
    // and the next step's loads are in flight while this step's MMAs run. Otherwise one float at
    // a time.
    const int ldb = TRANS_B ? K : N;
    const bool vec = ((K | ldb) & 3) == 0 &&
                     ((reinterpret_cast<unsigned long long>(A) | reinterpret_cast<unsigned long long>(B)) & 15) == 0;
    if (vec) {
        float4 ra[4], rb[4];
        auto load = [&](int k0) {
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int idx = tid + i * 128;  // 512 float4 per tile
                const int r = idx >> 3, kq = (idx & 7) * 4, gm = m0 + r, gk = k0 + kq;
                ra[i] = gm < M && gk < kend ? *reinterpret_cast<const float4*>(A + (long long)gm * K + gk)
                                            : make_float4(0.f, 0.f, 0.f, 0.f);
                if (TRANS_B) {
                    const int gn = n0 + r;
                    rb[i] = gn < N && gk < kend ? *reinterpret_cast<const float4*>(B + (long long)gn * K + gk)
                                                : make_float4(0.f, 0.f, 0.f, 0.f);
                } else {
                    const int k = idx >> 4, nq = (idx & 15) * 4, gn = n0 + nq, gkb = k0 + k;
                    rb[i] = gn < N && gkb < kend ? *reinterpret_cast<const float4*>(B + (long long)gkb * N + gn)
                                                 : make_float4(0.f, 0.f, 0.f, 0.f);
                }
            }
        };
        auto h4 = [](float4 v) {
            return make_uint2(pack_half2(__float2half(v.x), __float2half(v.y)),
                              pack_half2(__float2half(v.z), __float2half(v.w)));
        };
        load(kbeg);
        for (int k0 = kbeg; k0 < kend; k0 += GBK) {
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int idx = tid + i * 128;
                *reinterpret_cast<uint2*>(As + (idx >> 3) * GLD + (idx & 7) * 4) = h4(ra[i]);
                if (TRANS_B)
                    *reinterpret_cast<uint2*>(Bs + (idx >> 3) * GLD + (idx & 7) * 4) = h4(rb[i]);
                else
                    *reinterpret_cast<uint2*>(Bs + (idx >> 4) * GLDN + (idx & 15) * 4) = h4(rb[i]);
            }
            __syncthreads();
            if (k0 + GBK < kend) load(k0 + GBK);
            tile_mma();
            __syncthreads();
        }
    } else {
        for (int k0 = kbeg; k0 < kend; k0 += GBK) {
            for (int e = tid; e < GBM * GBK; e += blockDim.x) {
                const int r = e / GBK, k = e % GBK;
                const int gm = m0 + r, gk = k0 + k;
                As[r * GLD + k] = __float2half(gm < M && gk < kend ? A[(long long)gm * K + gk] : 0.f);
            }
            if (TRANS_B) {
                for (int e = tid; e < GBN * GBK; e += blockDim.x) {
                    const int r = e / GBK, k = e % GBK;
                    const int gn = n0 + r, gk = k0 + k;
                    Bs[r * GLD + k] = __float2half(gn < N && gk < kend ? B[(long long)gn * K + gk] : 0.f);
                }
            } else {
                for (int e = tid; e < GBK * GBN; e += blockDim.x) {
                    const int k = e / GBN, c = e % GBN;
                    const int gn = n0 + c, gk = k0 + k;
                    Bs[k * GLDN + c] = __float2half(gn < N && gk < kend ? B[(long long)gk * N + gn] : 0.f);
                }
            }
            __syncthreads();
            tile_mma();
            __syncthreads();
        }
    }
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++)
            wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * GLDC + wn * 32 + j * 16, acc[i][j], GLDC,
                                    wmma::mem_row_major);
    __syncthreads();
    for (int e = tid; e < GBM * GBN; e += blockDim.x) {
        const int r = e / GBN, c = e % GBN;
        const int gm = m0 + r, gn = n0 + c;
        if (gm < M && gn < N) {
            const long long o = (long long)gm * N + gn;
            float v = alpha * Cs[r * GLDC + c];
            if (beta != 0.f) v += beta * D[o];
            C[o] = v;
        }
    }
}

// Up to GEMM_BATCH independent GEMMs in one launch (mirrored as GemmBatch in
// src/gpu/backend.rs, 368 bytes by value): GEMM z is computed by the blocks with blockIdx.z = z;
// the grid covers the largest one and the blocks past a smaller GEMM's extent return at once.
// Split-K (splits S > 1, beta must be 0): blockIdx.z = z·S + s computes the K range
// [s·kc, (s + 1)·kc) (kc = ⌈K/S⌉ rounded up to GBK; empty ranges write zeros) and writes
// alpha·(its partial) to c[z] + s·M·N, an [S][M][N] scratch; gemm_splitk_sum_f32 then adds the
// slices in order into d[z] (deterministic).
#define GEMM_BATCH 8
struct GemmBatch {
    const float* a[GEMM_BATCH];
    const float* b[GEMM_BATCH];
    float* d[GEMM_BATCH];  // beta·D input, or the split-K destination
    float* c[GEMM_BATCH];
    int m[GEMM_BATCH];
    int n[GEMM_BATCH];
    int k[GEMM_BATCH];
    int count;
    float alpha, beta;
    int splits;  // ≤ 1: no split
};

template <bool TRANS_B>
__device__ __forceinline__ void gemm_batch(const GemmBatch& g) {
    const int S = g.splits > 1 ? g.splits : 1;
    const int z = blockIdx.z / S, sl = blockIdx.z - z * S;
    if (z >= g.count || (int)blockIdx.x * GBN >= g.n[z] || (int)blockIdx.y * GBM >= g.m[z]) return;
    const int M = g.m[z], N = g.n[z], K = g.k[z];
    const int kc = S == 1 ? K : CEIL_DIV(CEIL_DIV(K, S), GBK) * GBK, kbeg = min(K, sl * kc), kend = min(K, kbeg + kc);
    const float* D = S == 1 ? g.d[z] : nullptr;
    float* C = g.c[z] + (long long)sl * M * N;
    gemm_body<TRANS_B>(g.a[z], g.b[z], D, C, M, N, K, kbeg, kend, g.alpha, S == 1 ? g.beta : 0.f);
}

extern "C" __global__ void __launch_bounds__(128) gemm_nt_f32(GemmBatch g) {
    pdl_entry();
    gemm_batch<true>(g);
}
extern "C" __global__ void __launch_bounds__(128) gemm_nn_f32(GemmBatch g) {
    pdl_entry();
    gemm_batch<false>(g);
}
// d[z][i] = Σ_s c[z][s·M·N + i] in slice order, for a split-K batch; grid (·, count), grid-stride.
extern "C" __global__ void gemm_splitk_sum_f32(GemmBatch g) {
    pdl_entry();
    const int z = blockIdx.y;
    if (z >= g.count) return;
    const int len = g.m[z] * g.n[z], S = g.splits;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < len; i += gridDim.x * blockDim.x) {
        float v = 0.f;
        for (int s = 0; s < S; s++) v += g.c[z][(long long)s * len + i];
        g.d[z][i] = v;
    }
}
