// conv.cu: the 3×3 "same" convolution (pad 1, stride 1, no bias) of `a = GELU(pre(x))`, its
// fused 2×2 max-pool, and both gradients, as implicit GEMMs on tensor cores (nvcuda::wmma
// 16×16×16, fp16 inputs, fp32 accumulators: one code path for sm_70 .. sm_90; sm_80+ also has
// mma.sync kernels for all three, at the end of this file).
//
// Layouts (src/backend.rs): activations NHWC fp16, C contiguous; weights OHWI fp32
// (w[co][ky][kx][ci], a cout × K matrix with K = 9·cin, k = (ky·3 + kx)·cin + ci), converted to
// fp16 while staged into shared memory. The host asserts cin % 8 == 0, cout % 8 == 0 and
// cin ≤ 512 (every 16-byte chunk of 8 channels then lies inside one tap and is 16-byte aligned).
//
// Common tiling: 128 threads (4 warps, 2×2), block tile 64×64, K step 32, each warp 32×32 =
// 2×2 wmma fragments; the global→shared staging goes through registers with two shared
// buffers, so the loads of step t+1 overlap the MMAs of step t. The prologue pre + GELU is
// applied while staging (computed in fp32, rounded once to fp16 for the MMA).
//
// Exported kernels:
//   conv3x3_fwd_f16     y = conv(GELU(pre(x)), w). GEMM M = output pixels, N = cout, K = 9·cin.
//                       grid (ceil(M/64), ceil(cout/64)). With pool, M enumerates only the
//                       pixels of complete 2×2 windows (4 consecutive rows = one window, floor
//                       pooling drops an odd last row/column), the epilogue takes the first
//                       maximum of the fp32 sums (window order dy·2 + dx) and writes the pooled
//                       fp16 value and its argmax byte.
//   conv3x3_{fwd,dgrad,wgrad}_mma_f16  the same three for compute capability ≥ 8.0, input
//                       already activated (bn = 2): mma.sync m16n8k16, ldmatrix, a 3-stage
//                       cp.async pipeline, 128×64 block tiles (see the section at the end of this
//                       file). The host picks them on sm_80+ (`ConvPath` in src/gpu/mod.rs).
//                       The forward's epilogue also writes the BatchNorm partial sums of its
//                       output when the host asks (training), for bn_finalize_f32 (norm.cu).
//   conv3x3_dgrad_f16   da = conv(unpool(dy), w flipped and channel-swapped). GEMM M = input
//                       pixels, N = cin, K = 9·cout (k = tap'·cout + o, tap' = 8 − tap).
//                       grid (ceil(M/64), ceil(cin/64)). The unpool (through argmax) is fused
//                       into the A staging.
//   conv3x3_wgrad_f16   partial dw[z] = Σ_{pixels of slice z} unpool(dy)ᵀ · im2col(GELU(pre(x))).
//                       GEMM M = cout, N = 9·cin, reduced over N·H·W pixels split into
//                       gridDim.z slices of `chunk` pixels (a multiple of 32).
//                       grid (ceil(9·cin/64), ceil(cout/64), slices); out is [slices][cout][9·cin].
//   wgrad_reduce_f32    dw[i] = Σ_s part[s][i] in slice order (deterministic); 1 thread/element.
//   wgrad_reduce4_f32   the same, 4 values per lane in float4 loads (len % 4 == 0): the same bits.
//   act_f16             a = GELU(pre(x)) rounded to fp16, chunks of 8 channels (C % 8 == 0),
//                       grid-stride with each thread's channels fixed (act_body).
//                       The host runs it once per conv and passes bn = 2 ("input is already a")
//                       to conv3x3_fwd_f16 / conv3x3_wgrad_f16, instead of recomputing pre + GELU
//                       for every tap and column tile (9·ceil(cout/64) times per element); the
//                       values fed to the MMA are bit-identical either way.
//   shift_from_wgrad_f32 (grid cin, block 256): dshift[c] = Σ w·gw over the weights of input
//                       channel c, gw a weight gradient against GELU′(u) (the stem's grad): the
//                       whitening bias's gradient without the first conv's input gradient.
#include <mma.h>
#include "common.cuh"

using namespace nvcuda;

#define BM 64
#define BN 64
#define BK 32
#define NT 128
#define LDA 40   // BK + 8 halves: rows of 32 k-values (row stride 80 B, a multiple of 16 B)
#define LDB 72   // 64 + 8 halves: rows of 64 n- (or m-) values
#define LDC 68   // BN + 4 floats for the fp32 epilogue tile
#define MAXC 512
#define RAW_BYTES 20480  // ≥ 2·2·64·40·2 (A and B, double-buffered) and ≥ 64·68·4 (C)

typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> FragC;

// Per-channel pre parameters into shared memory. bn: 0 bias (u = x + shift), 1 BatchNorm,
// 2 none (the input already is a = GELU(pre(x)), written by act_f16; no parameter is read).
__device__ __forceinline__ void load_pre(const float* pmean, const float* pinv, const float* pshift, int bn, int c,
                                         float* s_mean, float* s_inv, float* s_shift) {
    for (int i = threadIdx.x; i < c; i += blockDim.x) {
        s_mean[i] = bn == 1 ? pmean[i] : 0.f;
        s_inv[i] = bn == 1 ? pinv[i] : 1.f;
        s_shift[i] = bn == 2 ? 0.f : pshift[i];
    }
}

// 8 consecutive k = (tap, ci..ci+7) of the im2col row of output pixel (n, oy, ox):
// GELU(pre(x)) at the tapped input pixel, 0 outside the image (padding is in a-space).
__device__ __forceinline__ uint4 im2col8(const half* __restrict__ x, int n, int oy, int ox, bool ok, int k, int K,
                                         int cin, int H, int W, const float* s_mean, const float* s_inv,
                                         const float* s_shift, int bn) {
    Half8 r;
    r.u = make_uint4(0u, 0u, 0u, 0u);
    if (ok && k < K) {
        const int tap = k / cin, ci = k - tap * cin;
        const int iy = oy + tap / 3 - 1, ix = ox + tap % 3 - 1;
        if (iy >= 0 && iy < H && ix >= 0 && ix < W) {
            Half8 v;
            v.u = *reinterpret_cast<const uint4*>(x + (((long long)n * H + iy) * W + ix) * cin + ci);
            if (bn == 2) return v.u;  // x already holds a = GELU(pre(x)) (act_f16)
#pragma unroll
            for (int j = 0; j < 8; j++)
                r.h[j] = __float2half(
                    gelu_f(pre_u(__half2float(v.h[j]), s_mean[ci + j], s_inv[ci + j], s_shift[ci + j], bn)));
        }
    }
    return r.u;
}

// 8 consecutive fp32 weights → 8 halves (p 32-byte aligned), or zeros when !ok.
__device__ __forceinline__ uint4 w8(const float* __restrict__ p, bool ok) {
    Half8 r;
    r.u = make_uint4(0u, 0u, 0u, 0u);
    if (ok) {
        const float4 a = *reinterpret_cast<const float4*>(p);
        const float4 b = *reinterpret_cast<const float4*>(p + 4);
        r.h[0] = __float2half(a.x); r.h[1] = __float2half(a.y); r.h[2] = __float2half(a.z); r.h[3] = __float2half(a.w);
        r.h[4] = __float2half(b.x); r.h[5] = __float2half(b.y); r.h[6] = __float2half(b.z); r.h[7] = __float2half(b.w);
    }
    return r.u;
}

// Channels o..o+7 of the full-resolution output gradient at pixel (n, yy, xx): dy itself, or,
// with pool, dy of the window routed to the argmax position (0 elsewhere and on a dropped odd
// last row/column).
__device__ __forceinline__ uint4 gfull8(const half* __restrict__ dy, const unsigned char* __restrict__ am, int n,
                                        int yy, int xx, int o, bool ok, int H, int W, int cout, int pool) {
    Half8 r;
    r.u = make_uint4(0u, 0u, 0u, 0u);
    if (!ok || yy < 0 || yy >= H || xx < 0 || xx >= W) return r.u;
    if (!pool) {
        r.u = *reinterpret_cast<const uint4*>(dy + (long long)((n * H + yy) * W + xx) * cout + o);
        return r.u;
    }
    const int PH = H >> 1, PW = W >> 1;
    if (yy >= 2 * PH || xx >= 2 * PW) return r.u;
    const long long idx = (long long)((n * PH + (yy >> 1)) * PW + (xx >> 1)) * cout + o;
    const unsigned char want = (unsigned char)(((yy & 1) << 1) | (xx & 1));
    Half8 d;
    d.u = *reinterpret_cast<const uint4*>(dy + idx);
    const uint2 a = *reinterpret_cast<const uint2*>(am + idx);
    return route8(d, reinterpret_cast<const unsigned char*>(&a), want);
}

// Rows of the forward GEMM: every pixel, or with pool the pixels of complete 2×2 windows (floor).
__device__ __forceinline__ long long fwd_gemm_rows(int N, int H, int W, int pool) {
    return pool ? (long long)N * (H >> 1) * (W >> 1) * 4 : (long long)N * H * W;
}
// Row m of the forward GEMM → its full-resolution pixel; ok = m < M. With pool the rows
// enumerate the complete 2×2 windows, 4 consecutive rows a window in order dy·2 + dx. g: the
// grid the rows enumerate, fwd_row_grid (pixel counts < 2^31: the host checks).
__device__ __forceinline__ PixGrid fwd_row_grid(int H, int W, int pool) {
    return pool ? PixGrid(H >> 1, W >> 1) : PixGrid(H, W);
}
__device__ __forceinline__ void fwd_row_pixel(int m, int M, const PixGrid& g, int pool, int& n, int& yy, int& xx,
                                              bool& ok) {
    if (!pool) {
        g.at(m, M, n, yy, xx, ok);
        return;
    }
    int wy, wx;
    g.at(m >> 2, M >> 2, n, wy, wx, ok);
    yy = 2 * wy + ((m >> 1) & 1);
    xx = 2 * wx + (m & 1);
}
// The pooled forward's GEMM rows in lane order, a permutation of each aligned group of G rows
// (G / 4 windows), so every window is computed once. Row g + 8h of an m16 tile is accumulator
// row g or g + 8 of lane 4g + q.
// G = 64 (pool_tile_inlane, a warp on 4 m16 tiles): row 16i + g + 8h is member 2(i & 1) + h of
//   window 8(i >> 1) + g: a lane holds all four members of its windows.
// G = 16 (pool_tile_pairs, a warp on one m16 tile): row g + 8h is member 2(g & 1) + h of window
//   g >> 1: a lane holds two members, lane ^ 4 the other two.
// Returns fwd_row_pixel's row for m: 4·window + member.
template <int G> __device__ __forceinline__ int lane_pool_row(int m) {
    static_assert(G == 64 || G == 16, "a warp's rows: 4 m16 tiles or one");
    const int r = m & (G - 1);
    const int w = G == 64 ? ((r >> 5) << 3) | (r & 7) : (r & 7) >> 1;
    const int p = G == 64 ? (((r >> 4) & 1) << 1) | ((r >> 3) & 1) : ((r & 1) << 1) | (r >> 3);
    return (m & ~(G - 1)) | (w << 2) | p;
}

// ---------------------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(NT)
conv3x3_fwd_f16(const half* __restrict__ x, int N, int H, int W, int cin, const float* __restrict__ pmean,
                const float* __restrict__ pinv, const float* __restrict__ pshift, int bn,
                const float* __restrict__ w, int cout, int pool, half* __restrict__ y,
                unsigned char* __restrict__ argmax) {
    pdl_entry();
    __shared__ __align__(128) unsigned char raw[RAW_BYTES];
    __shared__ float s_mean[MAXC], s_inv[MAXC], s_shift[MAXC];
    half* As = reinterpret_cast<half*>(raw);  // [2][BM][LDA]
    half* Bs = As + 2 * BM * LDA;             // [2][BN][LDA]  (n rows, k contiguous: col_major B)
    float* Cs = reinterpret_cast<float*>(raw);  // [BM][LDC] after the main loop
    const int tid = threadIdx.x, warp = tid >> 5, wm = warp >> 1, wn = warp & 1;
    load_pre(pmean, pinv, pshift, bn, cin, s_mean, s_inv, s_shift);

    const int K = 9 * cin;
    const long long M = fwd_gemm_rows(N, H, W, pool);
    const long long m0 = (long long)blockIdx.x * BM;
    const int n0 = blockIdx.y * BN;
    // This thread stages rows r and r + 32 (A: pixels, B: output channels) at k offset kc.
    const int r0 = tid >> 2, kc = (tid & 3) * 8;
    int an[2], ay[2], ax[2];
    bool aok[2];
    const PixGrid g = fwd_row_grid(H, W, pool);
#pragma unroll
    for (int i = 0; i < 2; i++) fwd_row_pixel((int)(m0 + r0 + 32 * i), (int)M, g, pool, an[i], ay[i], ax[i], aok[i]);
    __syncthreads();  // s_mean & co.

    FragC acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.f);

    uint4 ra[2], rb[2];
    auto load = [&](int k0) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            ra[i] = im2col8(x, an[i], ay[i], ax[i], aok[i], k0 + kc, K, cin, H, W, s_mean, s_inv, s_shift, bn);
            const int co = n0 + r0 + 32 * i, k = k0 + kc;
            const bool ok = co < cout && k < K;
            rb[i] = w8(w + (ok ? (long long)co * K + k : 0), ok);
        }
    };
    auto store = [&](int buf) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            *reinterpret_cast<uint4*>(As + buf * BM * LDA + (r0 + 32 * i) * LDA + kc) = ra[i];
            *reinterpret_cast<uint4*>(Bs + buf * BN * LDA + (r0 + 32 * i) * LDA + kc) = rb[i];
        }
    };
    const int nk = CEIL_DIV(K, BK);
    load(0);
    store(0);
    __syncthreads();
    for (int t = 0; t < nk; t++) {
        const int cur = t & 1;
        if (t + 1 < nk) load((t + 1) * BK);
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::col_major> fb[2];
#pragma unroll
            for (int i = 0; i < 2; i++)
                wmma::load_matrix_sync(fa[i], As + cur * BM * LDA + (wm * 32 + i * 16) * LDA + kk, LDA);
#pragma unroll
            for (int j = 0; j < 2; j++)
                wmma::load_matrix_sync(fb[j], Bs + cur * BN * LDA + (wn * 32 + j * 16) * LDA + kk, LDA);
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
        if (t + 1 < nk) store(cur ^ 1);
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++)
            wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * LDC + wn * 32 + j * 16, acc[i][j], LDC,
                                    wmma::mem_row_major);
    __syncthreads();

    if (!pool) {
        for (int e = tid; e < BM * (BN / 8); e += NT) {
            const int row = e >> 3, cc = (e & 7) * 8;
            const long long m = m0 + row;
            const int co = n0 + cc;
            if (m < M && co < cout) {
                Half8 o;
#pragma unroll
                for (int j = 0; j < 8; j++) o.h[j] = __float2half(Cs[row * LDC + cc + j]);
                *reinterpret_cast<uint4*>(y + m * cout + co) = o.u;
            }
        }
    } else {
        for (int e = tid; e < (BM / 4) * BN; e += NT) {
            const int wi = e / BN, col = e - wi * BN;
            const long long m = m0 + wi * 4;
            const int co = n0 + col;
            if (m < M && co < cout) {
                float best = Cs[(wi * 4) * LDC + col];
                unsigned char arg = 0;
#pragma unroll
                for (int k = 1; k < 4; k++) {
                    const float v = Cs[(wi * 4 + k) * LDC + col];
                    if (v > best) {  // strict: the first maximum wins, as in the reference
                        best = v;
                        arg = (unsigned char)k;
                    }
                }
                const long long o = (m >> 2) * cout + co;
                y[o] = __float2half(best);
                argmax[o] = arg;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(NT)
conv3x3_dgrad_f16(const half* __restrict__ dy, const unsigned char* __restrict__ am, int N, int H, int W, int cin,
                  int cout, int pool, const float* __restrict__ w, half* __restrict__ da) {
    pdl_entry();
    __shared__ __align__(128) unsigned char raw[RAW_BYTES];
    half* As = reinterpret_cast<half*>(raw);  // [2][BM][LDA]  (pixels × k)
    half* Bs = As + 2 * BM * LDA;             // [2][BK][LDB]  (k × cin, row_major B)
    float* Cs = reinterpret_cast<float*>(raw);
    const int tid = threadIdx.x, warp = tid >> 5, wm = warp >> 1, wn = warp & 1;
    const int K = 9 * cout;
    const long long M = (long long)N * H * W;
    const long long m0 = (long long)blockIdx.x * BM;
    const int n0 = blockIdx.y * BN;
    const int r0 = tid >> 2, kc = (tid & 3) * 8;    // A staging: rows r0, r0+32; k offset kc
    const int br0 = tid >> 3, bc = (tid & 7) * 8;   // B staging: k rows br0, br0+16; cols bc
    int an[2], ay[2], ax[2];
    bool aok[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const long long m = m0 + r0 + 32 * i;
        aok[i] = m < M;
        const long long mm = aok[i] ? m : 0;
        const int per = H * W;
        an[i] = (int)(mm / per);
        const int r = (int)(mm - (long long)an[i] * per);
        ay[i] = r / W;
        ax[i] = r % W;
    }

    FragC acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.f);

    uint4 ra[2], rb[2];
    auto load = [&](int k0) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int k = k0 + kc;
            bool ok = aok[i] && k < K;
            const int tap = ok ? k / cout : 0, o = k - tap * cout;
            // tap' = tap: the gradient at pixel q + off(tap') times w[o][8 − tap'][i]
            ra[i] = gfull8(dy, am, an[i], ay[i] + tap / 3 - 1, ax[i] + tap % 3 - 1, o, ok, H, W, cout, pool);
            const int kb = k0 + br0 + 16 * i, ci = n0 + bc;
            const bool okb = kb < K && ci < cin;
            const int tb = okb ? kb / cout : 0, ob = kb - tb * cout;
            rb[i] = w8(w + (okb ? ((long long)ob * 9 + 8 - tb) * cin + ci : 0), okb);
        }
    };
    auto store = [&](int buf) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            *reinterpret_cast<uint4*>(As + buf * BM * LDA + (r0 + 32 * i) * LDA + kc) = ra[i];
            *reinterpret_cast<uint4*>(Bs + buf * BK * LDB + (br0 + 16 * i) * LDB + bc) = rb[i];
        }
    };
    const int nk = CEIL_DIV(K, BK);
    load(0);
    store(0);
    __syncthreads();
    for (int t = 0; t < nk; t++) {
        const int cur = t & 1;
        if (t + 1 < nk) load((t + 1) * BK);
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::row_major> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::row_major> fb[2];
#pragma unroll
            for (int i = 0; i < 2; i++)
                wmma::load_matrix_sync(fa[i], As + cur * BM * LDA + (wm * 32 + i * 16) * LDA + kk, LDA);
#pragma unroll
            for (int j = 0; j < 2; j++)
                wmma::load_matrix_sync(fb[j], Bs + cur * BK * LDB + kk * LDB + wn * 32 + j * 16, LDB);
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
        if (t + 1 < nk) store(cur ^ 1);
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++)
            wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * LDC + wn * 32 + j * 16, acc[i][j], LDC,
                                    wmma::mem_row_major);
    __syncthreads();
    for (int e = tid; e < BM * (BN / 8); e += NT) {
        const int row = e >> 3, cc = (e & 7) * 8;
        const long long m = m0 + row;
        const int ci = n0 + cc;
        if (m < M && ci < cin) {
            Half8 o;
#pragma unroll
            for (int j = 0; j < 8; j++) o.h[j] = __float2half(Cs[row * LDC + cc + j]);
            *reinterpret_cast<uint4*>(da + m * cin + ci) = o.u;
        }
    }
}

// ---------------------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(NT)
conv3x3_wgrad_f16(const half* __restrict__ x, int N, int H, int W, int cin, const float* __restrict__ pmean,
                  const float* __restrict__ pinv, const float* __restrict__ pshift, int bn,
                  const half* __restrict__ dy, const unsigned char* __restrict__ am, int cout, int pool,
                  float* __restrict__ out, int chunk) {
    pdl_entry();
    __shared__ __align__(128) unsigned char raw[RAW_BYTES];
    __shared__ float s_mean[MAXC], s_inv[MAXC], s_shift[MAXC];
    half* As = reinterpret_cast<half*>(raw);  // [2][BK][LDB]  (pixels × cout: col_major A)
    half* Bs = As + 2 * BK * LDB;             // [2][BK][LDB]  (pixels × k: row_major B)
    float* Cs = reinterpret_cast<float*>(raw);
    const int tid = threadIdx.x, warp = tid >> 5, wm = warp >> 1, wn = warp & 1;
    load_pre(pmean, pinv, pshift, bn, cin, s_mean, s_inv, s_shift);
    __syncthreads();

    const int K = 9 * cin;
    const long long P = (long long)N * H * W;
    const long long p_begin = (long long)blockIdx.z * chunk;
    const long long p_end = min(P, p_begin + chunk);
    const int o0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int r0 = tid >> 3, cc = (tid & 7) * 8;  // staging rows r0, r0+16 (pixels); cols cc

    FragC acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.f);

    uint4 ra[2], rb[2];
    auto load = [&](long long pb) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const long long p = pb + r0 + 16 * i;
            const bool ok = p < p_end;
            const int per = H * W;
            const int n = ok ? (int)(p / per) : 0;
            const int r = ok ? (int)(p - (long long)n * per) : 0;
            const int yy = r / W, xx = r % W;
            const int o = o0 + cc;
            ra[i] = gfull8(dy, am, n, yy, xx, o, ok && o < cout, H, W, cout, pool);
            rb[i] = im2col8(x, n, yy, xx, ok, n0 + cc, K, cin, H, W, s_mean, s_inv, s_shift, bn);
        }
    };
    auto store = [&](int buf) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            *reinterpret_cast<uint4*>(As + buf * BK * LDB + (r0 + 16 * i) * LDB + cc) = ra[i];
            *reinterpret_cast<uint4*>(Bs + buf * BK * LDB + (r0 + 16 * i) * LDB + cc) = rb[i];
        }
    };
    const long long span = p_end > p_begin ? p_end - p_begin : 0;
    const int nk = (int)CEIL_DIV(span, (long long)BK);
    if (nk > 0) {
        load(p_begin);
        store(0);
    }
    __syncthreads();
    for (int t = 0; t < nk; t++) {
        const int cur = t & 1;
        if (t + 1 < nk) load(p_begin + (long long)(t + 1) * BK);
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, half, wmma::col_major> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, half, wmma::row_major> fb[2];
#pragma unroll
            for (int i = 0; i < 2; i++)
                wmma::load_matrix_sync(fa[i], As + cur * BK * LDB + kk * LDB + wm * 32 + i * 16, LDB);
#pragma unroll
            for (int j = 0; j < 2; j++)
                wmma::load_matrix_sync(fb[j], Bs + cur * BK * LDB + kk * LDB + wn * 32 + j * 16, LDB);
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
        if (t + 1 < nk) store(cur ^ 1);
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++)
            wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * LDC + wn * 32 + j * 16, acc[i][j], LDC,
                                    wmma::mem_row_major);
    __syncthreads();
    float* dst = out + (long long)blockIdx.z * cout * K;
    for (int e = tid; e < BM * BN; e += NT) {
        const int row = e / BN, col = e - row * BN;
        const int o = o0 + row, k = n0 + col;
        if (o < cout && k < K) dst[(long long)o * K + k] = Cs[row * LDC + col];
    }
}

// a = GELU(pre(x)) (act_f16). Thread t takes the 8-channel chunks t, t + stride, ...: stride,
// the grid's threads rounded down to a multiple of C/8, keeps its channels c0..c0+7 fixed, so
// their parameters are loaded once per thread, not per chunk (6 float4 loads of parameters per
// 16-byte chunk were 6 times the chunk's own L1 traffic); 4 chunks' loads in flight at once.
// Any grid (the host gives about 4 chunks per thread); the same operations per value as one
// chunk per thread, so the same bits.
__device__ __forceinline__ void act_body(const half* __restrict__ x, long long len8, int C, const float* __restrict__ pmean,
                                         const float* __restrict__ pinv, const float* __restrict__ pshift, int bn,
                                         half* __restrict__ a) {
    const int c8 = C >> 3;
    const long long threads = (long long)gridDim.x * blockDim.x, stride = threads - threads % c8;
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= stride) return;
    const int c0 = 8 * (int)(t % c8);
    // the 8 channels' parameters as float4 pairs (c0·4 bytes is a multiple of 32; the host's
    // parameter pointers are buffer starts or start + 4·C bytes)
    float mean[8], inv[8], sh[8];
    *reinterpret_cast<float4*>(sh) = *reinterpret_cast<const float4*>(pshift + c0);
    *reinterpret_cast<float4*>(sh + 4) = *reinterpret_cast<const float4*>(pshift + c0 + 4);
    if (bn) {
        *reinterpret_cast<float4*>(mean) = *reinterpret_cast<const float4*>(pmean + c0);
        *reinterpret_cast<float4*>(mean + 4) = *reinterpret_cast<const float4*>(pmean + c0 + 4);
        *reinterpret_cast<float4*>(inv) = *reinterpret_cast<const float4*>(pinv + c0);
        *reinterpret_cast<float4*>(inv + 4) = *reinterpret_cast<const float4*>(pinv + c0 + 4);
    } else {
#pragma unroll
        for (int j = 0; j < 8; j++) {
            mean[j] = 0.f;
            inv[j] = 1.f;
        }
    }
    const uint4* x4 = reinterpret_cast<const uint4*>(x);
    uint4* a4 = reinterpret_cast<uint4*>(a);
    for (long long i = t; i < len8; i += 4 * stride) {
        Half8 v[4];
#pragma unroll
        for (int u = 0; u < 4; u++)
            if (i + u * stride < len8) v[u].u = x4[i + u * stride];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            if (i + u * stride >= len8) break;
            Half8 r;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const float uu = pre_u(__half2float(v[u].h[j]), mean[j], inv[j], sh[j], bn);
                r.h[j] = __float2half(gelu_f(uu));
            }
            a4[i + u * stride] = r.u;
        }
    }
}
extern "C" __global__ void act_f16(const half* __restrict__ x, long long len8, int C, const float* __restrict__ pmean,
                                   const float* __restrict__ pinv, const float* __restrict__ pshift, int bn,
                                   half* __restrict__ a) {
    pdl_entry();
    act_body(x, len8, C, pmean, pinv, pshift, bn, a);
}

// dshift[c] = Σ_{j < rows} w[j·cin + c] · gw[j·cin + c] (rows = cout·9: w and gw [cout][3·3][cin],
// gw the weight gradient of the output gradient against GELU′(pre(x))): the shift's gradient
// without the input gradient (Σ_q GELU′(u_q)·da_q regrouped). Grid cin, block 256; f64 sums in
// a fixed order.
extern "C" __global__ void shift_from_wgrad_f32(const float* __restrict__ w, const float* __restrict__ gw, int rows,
                                                int cin, float* __restrict__ dshift) {
    pdl_entry();
    __shared__ double scratch[32];
    const int c = blockIdx.x;
    double s = 0.0;
    for (int j = threadIdx.x; j < rows; j += blockDim.x) {
        const long long k = (long long)j * cin + c;
        s += (double)w[k] * (double)gw[k];
    }
    s = block_sum_d(s, scratch);
    if (threadIdx.x == 0) dshift[c] = (float)s;
}

// The bulk-copy layout of a K-major B matrix [rows][K] for the multicast kernels
// (conv3x3_*_wgmma_mc_f16, _mc4_): blocks of MC_TN rows × MC_WK k, block (row block nb, K step t) at
// (nb·K/MC_WK + t)·MC_TN·MC_WK halves, each exactly the bytes of one pipeline stage's B: row r
// of 128 bytes at r·128, its 16-byte chunk c at chunk c ^ (r % 8) (the 128-byte swizzle wgmma
// reads). Defined for rows % MC_TN == 0 and K % MC_WK == 0 only (the host takes the kernels
// there). Element (n, k)'s index:
#define MC_TN 256
#define MC_WK 64
__device__ __forceinline__ int mc_tiled_index(int n, int k, int K) {
    const int r = n % MC_TN, kc = k % MC_WK;
    return ((n / MC_TN * (K / MC_WK) + k / MC_WK) * MC_TN + r) * MC_WK + (((kc >> 3) ^ (r & 7)) << 3) + (kc & 7);
}

// fp16 copies of a conv weight w [cout][9][cin] (fp32) for the mma kernels' B tiles. layout 0:
// wf [cout][9·cin] (the same layout: the forward's B) and wt [9·cout][cin] with
// wt[(8 − tap)·cout + o][ci] = w[o][tap][ci] (dgrad's B, flipped and channel-swapped); 1: wt as
// the same matrix transposed, wt [cin][9·cout] (the wgmma input gradient's K-major B); 2: both
// K-major matrices (wf [cout][9·cin], wt [cin][9·cout]) in mc_tiled_index's layout (traps unless
// cout, and for wt cin, are multiples of MC_TN and 9·cin, 9·cout of MC_WK). Either may be null.
// cout·9·cin < 2^31; grid-stride.
extern "C" __global__ void conv_weights_f16(const float* __restrict__ w, int cout, int cin, half* __restrict__ wf,
                                            half* __restrict__ wt, int layout) {
    pdl_entry();
    const int k = 9 * cin, n = cout * k;
    if (layout == 2 && ((wf && (cout % MC_TN || k % MC_WK)) || (wt && (cin % MC_TN || 9 * cout % MC_WK)))) __trap();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        const half h = __float2half(w[i]);
        const int o = i / k, r = i - o * k;
        if (wf) wf[layout == 2 ? mc_tiled_index(o, r, k) : i] = h;
        if (wt) {
            const int tap = r / cin, ci = r - tap * cin, kb = (8 - tap) * cout + o;
            wt[layout == 2 ? mc_tiled_index(ci, kb, 9 * cout) : layout ? ci * 9 * cout + kb : kb * cin + ci] = h;
        }
    }
}

// g = the full-resolution output gradient of a pooled conv: g[n][y][x][c] = dy[n][y/2][x/2][c]
// at the window's argmax position, 0 elsewhere and on a dropped odd last row/column (as gfull8
// gives it). N×H×W×C, C % 8 == 0, N·H·W·C/8 < 2^31; grid-stride, any grid. A thread takes a
// pooled pixel's 8 channels: one read of dy and the argmax bytes, its window's four chunks
// written; then the dropped row/column chunks (zeros). The mma dgrad and wgrad then read g with
// plain cp.async gathers, the argmax select done once instead of per tap.
extern "C" __global__ void unpool_f16(const half* __restrict__ dy, const unsigned char* __restrict__ am, int N, int H,
                                      int W, int C, half* __restrict__ g) {
    pdl_entry();
    const int c8 = C >> 3, PH = H >> 1, PW = W >> 1, stride = gridDim.x * blockDim.x;
    const int pooled = N * PH * PW * c8;  // < 2^31: the host checks N·H·W·C/8
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < pooled; i += stride) {
        const int q = i / c8, c = (i - q * c8) * 8, n = q / (PH * PW), r = q - n * (PH * PW), py = r / PW;
        const int px = r - py * PW;
        Half8 d;
        d.u = *reinterpret_cast<const uint4*>(dy + (long long)q * C + c);
        const uint2 a = *reinterpret_cast<const uint2*>(am + (long long)q * C + c);
        const unsigned char* ab = reinterpret_cast<const unsigned char*>(&a);
#pragma unroll
        for (int w = 0; w < 4; w++) {  // window position dy·2 + dx, the argmax byte's code
            const long long pix = ((long long)n * H + 2 * py + (w >> 1)) * W + 2 * px + (w & 1);
            *reinterpret_cast<uint4*>(g + pix * C + c) = route8(d, ab, (unsigned char)w);
        }
    }
    // per image: the last row if H is odd (W pixels), the last column of the pooled rows if W is odd
    const int er = (H & 1) ? W : 0, e = er + ((W & 1) ? 2 * PH : 0);
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < N * e * c8; i += stride) {
        const int q = i / c8, c = (i - q * c8) * 8, n = q / e, k = q - n * e;
        const int y = k < er ? H - 1 : k - er, x = k < er ? k : W - 1;
        *reinterpret_cast<uint4*>(g + (((long long)n * H + y) * W + x) * C + c) = make_uint4(0u, 0u, 0u, 0u);
    }
}

// dw[i] = Σ_z part[z·len + i], the split-K slices of a weight gradient (or the head's) added
// in a fixed order: a block of WR_THREADS for 32 consecutive i (grid ⌈len/32⌉), warp w adding
// slices w, w + WR_WARPS, … in order with four loads in flight, then warp 0 the WR_WARPS
// warps' sums in order. Deterministic. One thread per i adding every slice in turn was a
// chain of dependent loads where a small layer has many slices (264 at the recipe's layer 0:
// 13 824 values × 264 slices in 54 blocks), latency-bound.
#define WR_THREADS 256  // src/gpu/backend.rs launches WR_THREADS, checked against this line by a test
#define WR_WARPS (WR_THREADS / 32)
// v added into s: a float, or a float4 component by component (each component the float's
// operations in the same order: wgrad_reduce4_f32 gives wgrad_reduce_f32's bits)
__device__ __forceinline__ void wr_add(float& s, float v) { s += v; }
__device__ __forceinline__ void wr_add(float4& s, const float4& v) {
    s.x += v.x;
    s.y += v.y;
    s.z += v.z;
    s.w += v.w;
}
// The body of both: T = float (one value a lane, len values) or float4 (four, len / 4 of them).
template <typename T>
__device__ __forceinline__ void wgrad_reduce_body(const T* __restrict__ part, int slices, long long len,
                                                  T* __restrict__ dw) {
    if (blockDim.x != WR_THREADS) __trap();
    __shared__ T red[WR_WARPS][32];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const long long i = (long long)blockIdx.x * 32 + lane;
    T s{};
    if (i < len) {
        const T* p = part + i;
        int z = w;
        for (; z + 3 * WR_WARPS < slices; z += 4 * WR_WARPS) {
            T v[4];
#pragma unroll
            for (int u = 0; u < 4; u++) v[u] = p[(long long)(z + u * WR_WARPS) * len];
#pragma unroll
            for (int u = 0; u < 4; u++) wr_add(s, v[u]);
        }
        for (; z < slices; z += WR_WARPS) wr_add(s, p[(long long)z * len]);
    }
    red[w][lane] = s;
    __syncthreads();
    if (w == 0 && i < len) {
        T t = red[0][lane];
#pragma unroll
        for (int k = 1; k < WR_WARPS; k++) wr_add(t, red[k][lane]);
        dw[i] = t;
    }
}
extern "C" __global__ void __launch_bounds__(WR_THREADS) wgrad_reduce_f32(const float* __restrict__ part, int slices,
                                                                         long long len, float* __restrict__ dw) {
    pdl_entry();
    wgrad_reduce_body(part, slices, len, dw);
}

// The same sums with 4 consecutive values per lane, float4 loads (len % 4 == 0; part and dw
// 16-byte aligned, as the host's workspaces and parameters are): a block of WR_THREADS for 128
// consecutive i (grid ⌈len/128⌉), the same order per value, so the same bits, with a warp's
// load 512 bytes instead of 128.
extern "C" __global__ void __launch_bounds__(WR_THREADS) wgrad_reduce4_f32(const float* __restrict__ part, int slices,
                                                                          long long len, float* __restrict__ dw) {
    pdl_entry();
    if (len & 3) __trap();
    wgrad_reduce_body(reinterpret_cast<const float4*>(part), slices, len >> 2, reinterpret_cast<float4*>(dw));
}

// =============================================================================================
// sm_80+ kernels: mma.sync m16n8k16 + ldmatrix + a 3-stage cp.async pipeline, K step 32, 4
// warps of 64×WN each, epilogues from registers; the block tile is MmaTile<WN, WGM> (below).
// `_mma_`: 128×64 (Narrow: static shared memory, ≤ 128 registers so 4 blocks share an SM);
// `_mma_wide_`: 128×128 (Wide, for GEMMs with N ≥ 128); `_mma_tall_`: 256×64 (Tall);
// `_mma_tall32_`: 256×32 (Tall32, input gradients of ≤ 32 channels). The last three use 64×64
// or 64×32 warp tiles of 4 warps along M, 60–75 KB of dynamic shared memory, ≤ 255 registers,
// 2 blocks per SM. Launched only on compute capability ≥ 8.0 (`ConvPath::Mma` / `MmaWide` in
// src/gpu/mod.rs), and only with an activated input (bn = 2).
//
// Shared-memory stages are either row-major [rows][k] (MLD = 40 halves per row: 80 B, so the 8
// row reads of an ldmatrix hit 8 distinct bank groups), read with ldmatrix, or k-major
// [k][rows] (A: TM + 8, B: TN + 8 halves per k row, odd multiples of 16 B), read with ldmatrix.trans.
#define MK 32
#define MSTAGES 3
#define MLD 40
// Bytes of dynamic shared memory the wide and tall kernels need (Wide::SMEM, Tall::SMEM,
// Tall32::SMEM; the host passes them: WIDE_SMEM, TALL_SMEM, TALL32_SMEM in src/gpu/backend.rs,
// checked against these lines by a test).
#define MMA_WIDE_SMEM 61440
#define MMA_TALL_SMEM 76800
#define MMA_TALL32_SMEM 69120

// A block tile: 4 warps of 64×WN in WGM rows × (4/WGM) columns, TM × TN = 64·WGM × WN·4/WGM.
template <int WN_, int WGM_> struct MmaTile {
    static constexpr int WN = WN_, WGM = WGM_, WGN = 4 / WGM_;  // warp tile width, warp grid
    static constexpr int TM = 64 * WGM, TN = WN * WGN;           // block tile
    static constexpr int NJ = WN / 8;                             // m16n8 tiles per warp along n
    static constexpr int MI = 4, WROWS = 64, THREADS = 128;       // m16 tiles per warp, its rows; block
    static constexpr int LDA_T = TM + 8, LDB_T = TN + 8;          // k-major stage rows, halves
    static constexpr int A_STAGE = TM * MLD;                      // halves; ≥ MK * LDA_T
    static constexpr int B_STAGE = TN * MLD;                      // ≥ MK * LDB_T
    static constexpr int SMEM = MSTAGES * (A_STAGE + B_STAGE) * 2;  // bytes
    static_assert(A_STAGE >= MK * LDA_T && B_STAGE >= MK * LDB_T && WGM * WGN == 4 && (WGN == 1 || WGN == 2), "tile");
    // this warp's place in the block's warp grid
    static __device__ __forceinline__ int wm() {
        const int warp = threadIdx.x >> 5;
        return WGN == 2 ? warp >> 1 : warp;
    }
    static __device__ __forceinline__ int wn() {
        const int warp = threadIdx.x >> 5;
        return WGN == 2 ? warp & 1 : 0;
    }
};
using Narrow = MmaTile<32, 2>;  // 128×64, static shared memory, 4 blocks per SM
using Wide = MmaTile<64, 2>;    // 128×128, MMA_WIDE_SMEM bytes of dynamic shared memory
using Tall = MmaTile<64, 4>;    // 256×64, MMA_TALL_SMEM bytes of dynamic shared memory
using Tall32 = MmaTile<32, 4>;  // 256×32 (input gradients with ≤ 32 channels), MMA_TALL32_SMEM
static_assert(Wide::SMEM == MMA_WIDE_SMEM && Tall::SMEM == MMA_TALL_SMEM && Tall32::SMEM == MMA_TALL32_SMEM,
              "MMA_*_SMEM");

// A thread's index k = tap·C + c (0 ≤ c < C) along an implicit GEMM's K = 9·C, moved one K step
// (STEP: MK, or WK for the wgmma kernels) per advance without a division: issue runs for
// t = 0, 1, 2, … in order.
struct KCursor {
    int tap, c;
    __device__ __forceinline__ KCursor(int k, int C) : tap(0), c(k) { wrap(C); }
    template <int STEP = MK> __device__ __forceinline__ void advance(int C) {
        c += STEP;
        wrap(C);
    }
    __device__ __forceinline__ void wrap(int C) {
        while (c >= C) {
            c -= C;
            tap++;
        }
    }
};

// This thread's four A rows of a 3×3 tap gather (the forward's im2col of a, the input
// gradient's gather of g), rows r0 + 32i of the block tile: each row's pixel as the element
// offset pix·C (pix = (n·H + y)·W + x) and a mask of the taps that land inside the image (bit
// ky·3 + kx; 0 for a row past M). Per K step copy() costs a shift, an add and a select per row;
// the offsets are 32-bit (the host checks N·H·W·C < 2^31: check_pixels).
// The 3×3 taps of pixel (y, x) that land inside an H×W image, as bits ky·3 + kx.
__device__ __forceinline__ unsigned tap_mask(int y, int x, int H, int W) {
    unsigned rows = 0u, cols = 0u;
#pragma unroll
    for (int d = 0; d < 3; d++) {
        if ((unsigned)(y + d - 1) < (unsigned)H) rows |= 7u << (3 * d);
        if ((unsigned)(x + d - 1) < (unsigned)W) cols |= 0x49u << d;  // bits d, d + 3, d + 6
    }
    return rows & cols;
}

template <int R> struct TapRows {
    int off[R];
    unsigned mask[R];
    __device__ __forceinline__ void set(int i, int pix, int y, int x, bool ok, int C, int H, int W) {
        mask[i] = ok ? tap_mask(y, x, H, W) : 0u;
        off[i] = ok ? pix * C : 0;
    }
    // Channels c..c+7 (of C) at 3×3 tap `tap` of the rows' pixels, by cp.async into dst + i·STEP
    // (row i's place: 32 rows of MLD halves apart in the mma stages): zeros outside the image, for
    // rows past M and past the last tap (9 ≤ tap < 32).
    template <int STEP = 32 * MLD>
    __device__ __forceinline__ void copy(half* dst, const half* src, int tap, int c, int C, int W) const {
        const int t3 = tap / 3;
        const int toff = ((t3 - 1) * W + (tap - 3 * t3 - 1)) * C + c;
#pragma unroll
        for (int i = 0; i < R; i++) {
            const bool ok = (mask[i] >> tap) & 1u;
            cp_async16(dst + i * STEP, src + (ok ? (unsigned)(off[i] + toff) : 0u), ok ? 16 : 0);
        }
    }
};

// The TapRows of block rows first + step·i (i < R) of the forward's GEMM (fwd_row_pixel: every
// output pixel, or with pool the pixels of complete 2×2 windows), gathering cin channels.
// LANE_POOL (0: none): pooled rows in lane_pool_row<LANE_POOL>'s order (the kernels whose
// epilogue pools in registers: the mma ones, 64; the persistent wgmma ones, 16).
template <int R, int LANE_POOL = 0>
__device__ __forceinline__ void fwd_tap_rows(TapRows<R>& rows, long long first, int step, long long M, int H, int W,
                                             int pool, int cin) {
    const PixGrid g = fwd_row_grid(H, W, pool);
#pragma unroll
    for (int i = 0; i < R; i++) {
        int n, yy, xx;
        bool ok;
        int m = (int)(first + step * i);
        if constexpr (LANE_POOL != 0)
            if (pool) m = lane_pool_row<LANE_POOL>(m);
        fwd_row_pixel(m, (int)M, g, pool, n, yy, xx, ok);
        rows.set(i, (n * H + yy) * W + xx, yy, xx, ok, cin, H, W);
    }
}
// The same for the input gradient's GEMM: row = input pixel, gathering C channels of g.
template <int R>
__device__ __forceinline__ void pixel_tap_rows(TapRows<R>& rows, long long first, int step, long long M, int H, int W,
                                               int C) {
    const PixGrid pg(H, W);
#pragma unroll
    for (int i = 0; i < R; i++) {
        int n, yy, xx;
        bool ok;
        const int pix = (int)(first + step * i);
        pg.at(pix, (int)M, n, yy, xx, ok);
        rows.set(i, pix, yy, xx, ok, C, H, W);
    }
}

// Copies k-major stages of MK k rows × TN columns (row stride LDB_T) by cp.async, 16 bytes per
// copy, TN·MK/8/128 copies per thread. copy(dst, src): src(k, col, p) says whether columns
// col..col+7 of k row `k` of the stage come from p (set to a valid address either way; false:
// 0 bytes are read, the 16 bytes are zero-filled).
template <class Tl> struct KMajorCopy {
    static constexpr int TPR = Tl::TN / 8;  // threads per k row
    int r0, col;                                      // this thread's first k row and its columns
    __device__ __forceinline__ KMajorCopy() : r0(threadIdx.x / TPR), col((threadIdx.x % TPR) * 8) {}
    template <class Src> __device__ __forceinline__ void copy(half* dst, Src src) const {
#pragma unroll
        for (int i = 0; i < MK * TPR / 128; i++) {
            const int k = r0 + (128 / TPR) * i;
            const half* p;
            const bool ok = src(k, col, p);
            cp_async16(dst + k * Tl::LDB_T + col, p, ok ? 16 : 0);
        }
    }
};

// One ldmatrix.x4 of a B operand (TRANS: from a k-major stage) as the fragments of n8 tiles 2j
// and 2j + 1: its matrices are (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15).
template <bool TRANS, int NJ>
__device__ __forceinline__ void ldmatrix_b2(unsigned (&fb)[NJ][2], int j, const half* p) {
    unsigned r[4];
    ldmatrix_x4<TRANS>(r, p);
    fb[2 * j][0] = r[0];
    fb[2 * j][1] = r[1];
    fb[2 * j + 1][0] = r[2];
    fb[2 * j + 1][1] = r[3];
}

// One K step (32) of the block tile from stage buffers `as`, `bs` into acc[i][j][·] (the
// m16n8 tile at warp rows 16i, cols 8j). AT / BT: the stage is k-major (ldmatrix.trans).
template <bool AT, bool BT, class Tl>
__device__ __forceinline__ void mma_kstep(float (&acc)[Tl::MI][Tl::NJ][4], const half* as, const half* bs, int lane, int wm,
                                          int wn) {
    constexpr int NJ = Tl::NJ, WN = Tl::WN, LDA_T = Tl::LDA_T, LDB_T = Tl::LDB_T;
#pragma unroll
    for (int kk = 0; kk < MK; kk += 16) {
        unsigned fa[4][4], fb[NJ][2];
#pragma unroll
        for (int i = 0; i < 4; i++) {  // matrices (m 0-7 | 8-15) × (k 0-7 | 8-15) = a0..a3
            if (!AT)
                ldmatrix_x4<false>(fa[i], as + (wm * 64 + i * 16 + (lane & 15)) * MLD + kk + (lane >> 4) * 8);
            else
                ldmatrix_x4<true>(fa[i], as + (kk + (lane & 7) + (lane >> 4) * 8) * LDA_T + wm * 64 + i * 16 +
                                             ((lane >> 3) & 1) * 8);
        }
#pragma unroll
        for (int j = 0; j < NJ / 2; j++) {  // matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), ...
            if (!BT)
                ldmatrix_b2<false>(fb, j, bs + (wn * WN + j * 16 + (lane & 7) + (lane >> 4) * 8) * MLD + kk +
                                              ((lane >> 3) & 1) * 8);
            else
                ldmatrix_b2<true>(fb, j, bs + (kk + (lane & 7) + ((lane >> 3) & 1) * 8) * LDB_T + wn * WN + j * 16 +
                                             (lane >> 4) * 8);
        }
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
            for (int j = 0; j < NJ; j++) mma_16816(acc[i][j], fa[i], fb[j]);
    }
}

// The pipeline over nk K steps, every operand by cp.async. issue(t, s): start copying step t
// into stage s. Step t lives in stage t % 3, issued at the start of step t − 2 into the stage
// that held step t − 3, which every warp finished before step t − 2's barrier; one group is
// committed per step (empty past the end), so "≤ 1 group in flight" at step t means step t has
// landed.
template <bool AT, bool BT, class Tl, class Issue>
__device__ __forceinline__ void mma_pipeline(float (&acc)[Tl::MI][Tl::NJ][4], const half* As, const half* Bs, int nk,
                                             Issue issue) {
    const int lane = threadIdx.x & 31, wm = Tl::wm(), wn = Tl::wn();
#pragma unroll
    for (int i = 0; i < Tl::MI; i++)
#pragma unroll
        for (int j = 0; j < Tl::NJ; j++)
#pragma unroll
            for (int r = 0; r < 4; r++) acc[i][j][r] = 0.f;
    issue(0, 0);
    cp_async_commit();
    if (nk > 1) issue(1, 1);
    cp_async_commit();
    int s = 0, w = 2;  // stages of step t and of step t + 2 (t % 3, (t + 2) % 3 without division)
    for (int t = 0; t < nk; t++) {
        cp_async_wait<1>();
        __syncthreads();
        if (t + 2 < nk) issue(t + 2, w);
        cp_async_commit();
        mma_kstep<AT, BT, Tl>(acc, As + s * Tl::A_STAGE, Bs + s * Tl::B_STAGE, lane, wm, wn);
        s = s == MSTAGES - 1 ? 0 : s + 1;
        w = w == MSTAGES - 1 ? 0 : w + 1;
    }
    cp_async_wait<0>();
}

// Calls f(row, col, v0, v1) on every lane for each accumulator pair of this warp: D(row, col)
// and D(row, col + 1) in block-tile coordinates (row = wm·WROWS + 16i + g + 8h, i < MI, col =
// wn·WN + 8j + 2q, g = lane/4, q = lane%4), column pairs j outermost; done(j) after the last
// call of pair j; begin(col) before the first call of pair j (col as f gets it). Every lane
// makes every call (f and done may shuffle). The same layout serves the mma.sync tiles (MI = 4
// m16 tiles per warp) and the wgmma ones (MI = 1: warp w of the block holds rows 16w..16w+15 of
// its warpgroup's m64 accumulators).
template <class Tl, class F, class D, class B>
__device__ __forceinline__ void mma_epilogue(const float (&acc)[Tl::MI][Tl::NJ][4], F f, D done, B begin) {
    const int lane = threadIdx.x & 31, wm = Tl::wm(), wn = Tl::wn();
    const int g = lane >> 2, q = lane & 3;
    constexpr int WN = Tl::WN;
#pragma unroll
    for (int j = 0; j < Tl::NJ; j++) {
        begin(wn * WN + j * 8 + 2 * q);
#pragma unroll
        for (int i = 0; i < Tl::MI; i++)
#pragma unroll
            for (int h = 0; h < 2; h++)
                f(wm * Tl::WROWS + i * 16 + g + 8 * h, wn * WN + j * 8 + 2 * q, acc[i][j][2 * h], acc[i][j][2 * h + 1]);
        done(j);
    }
}
template <class Tl, class F, class D>
__device__ __forceinline__ void mma_epilogue(const float (&acc)[Tl::MI][Tl::NJ][4], F f, D done) {
    mma_epilogue<Tl>(acc, f, done, [](int) {});
}
template <class Tl, class F> __device__ __forceinline__ void mma_epilogue(const float (&acc)[Tl::MI][Tl::NJ][4], F f) {
    mma_epilogue<Tl>(acc, f, [](int) {});
}

// Per-channel partial sums of a tile's outputs (the forward's BatchNorm Σy, Σy²; dgrad's
// pre_bwd Σdu, Σdu·x̂), in two parts. mma_col_sums, after column pair j: a[e], b[e] hold this
// lane's two sums of column wn·WN + 8j + 2q + e over its rows; they are added over the 8 lanes
// of the column (xor butterfly), put in red[wm][column] (ADD: added to it, for a warp that
// sums several tiles in order), and reset. mma_col_partials, once: adds
// the warp rows (wm 0, 1, … in order) and writes part[c][blockIdx.x] (a) and part[C + c][blockIdx.x]
// (b), c = n0 + column: the channel-major layout of norm.cu's stage 2 (bn_finalize_f32,
// pre_bwd_sums_f32). Fixed order throughout: deterministic. red: mma_spare_stage.
template <typename T, class Tl, bool ADD = false>
__device__ __forceinline__ void mma_col_sums(int j, T (&a)[2], T (&b)[2], T (*red)[Tl::TN][2]) {
    const int lane = threadIdx.x & 31, wm = Tl::wm(), wn = Tl::wn();
    constexpr int WN = Tl::WN;
#pragma unroll
    for (int e = 0; e < 2; e++) {
        T s = a[e], t = b[e];
#pragma unroll
        for (int o = 4; o < 32; o <<= 1) {  // lanes with the same q hold the same column
            s += __shfl_xor_sync(0xffffffffu, s, o);
            t += __shfl_xor_sync(0xffffffffu, t, o);
        }
        if (lane < 4) {
            T* r = red[wm][wn * WN + j * 8 + 2 * lane + e];
            r[0] = ADD ? r[0] + s : s;
            r[1] = ADD ? r[1] + t : t;
        }
        a[e] = b[e] = T(0);
    }
}
// part[c][row] and part[C + c][row] (of rows) = red[0][c − n0][0 | 1] + red[1][…] + … over
// red's first R rows in order, for the columns c = n0.. < C of a TN-wide tile, thread t taking
// column t.
template <typename T, int TN, int R, int THREADS>
__device__ __forceinline__ void col_partials(const T (*red)[TN][2], int n0, int C, T* __restrict__ part, int row,
                                             int rows) {
    static_assert(R >= 2 && TN <= THREADS, "at least two rows, one column per thread");
    const int col = threadIdx.x, c = n0 + col;
    if (col < TN && c < C) {
        T a = red[0][col][0] + red[1][col][0], b = red[0][col][1] + red[1][col][1];
#pragma unroll
        for (int r = 2; r < R; r++) {
            a += red[r][col][0];
            b += red[r][col][1];
        }
        part[(long long)c * rows + row] = a;
        part[(long long)(C + c) * rows + row] = b;
    }
}
template <typename T, class Tl>
__device__ __forceinline__ void mma_col_partials(const T (*red)[Tl::TN][2], int n0, int C, T* __restrict__ part,
                                                 int row, int rows) {
    __syncthreads();
    col_partials<T, Tl::TN, Tl::WGM, Tl::THREADS>(red, n0, C, part, row, rows);
}
// The partials of block row blockIdx.x of gridDim.x (a tile per block).
template <typename T, class Tl>
__device__ __forceinline__ void mma_col_partials(const T (*red)[Tl::TN][2], int n0, int C, T* __restrict__ part) {
    mma_col_partials<T, Tl>(red, n0, C, part, blockIdx.x, gridDim.x);
}
// Room for red (≤ 8 KB) once mma_pipeline has run nk steps: the A stage it left free. The last
// step (nk − 1) used stage (nk − 1) % 3; stage (nk + 1) % 3 last held step nk − 2 (or nothing),
// which every warp finished before the last step's barrier.
template <typename T, class Tl> __device__ __forceinline__ T (*mma_spare_stage(half* As, int nk))[Tl::TN][2] {
    static_assert(sizeof(T) * Tl::WGM * Tl::TN * 2 <= Tl::A_STAGE * sizeof(half), "red fits a stage");
    return reinterpret_cast<T (*)[Tl::TN][2]>(As + ((nk + 1) % MSTAGES) * Tl::A_STAGE);
}

// Stores D(row m, cols c, c+1) as two halves of out[m][c] (C % 8 == 0, c even), within bounds.
__device__ __forceinline__ void store_f16_pair(half* out, long long m, long long M, int c, int C, float v0, float v1) {
    if (m < M && c < C) *reinterpret_cast<unsigned*>(out + m * C + c) = pack_half2(__float2half(v0), __float2half(v1));
}

// A pooled output pair: y[o], y[o + 1] = b0, b1 as halves, their window members k0, k1 as the
// argmax bytes, and (stats) the stored halves added to this lane's sums.
__device__ __forceinline__ void store_pooled_pair(half* __restrict__ y, unsigned char* __restrict__ argmax,
                                                  long long o, float b0, float b1, unsigned k0, unsigned k1,
                                                  bool stats, double (&sum)[2], double (&sq)[2]) {
    const half h0 = __float2half(b0), h1 = __float2half(b1);
    *reinterpret_cast<unsigned*>(y + o) = pack_half2(h0, h1);
    *reinterpret_cast<unsigned short*>(argmax + o) = (unsigned short)(k0 | (k1 << 8));
    if (stats) {
        const double d0 = (double)__half2float(h0), d1 = (double)__half2float(h1);
        sum[0] += d0;
        sum[1] += d1;
        sq[0] += d0 * d0;
        sq[1] += d1 * d1;
    }
}

// The three kernels' bodies, for either tile width; As, Bs: MSTAGES stages each
// (MmaTile<WN>::A_STAGE, B_STAGE halves), 16-byte aligned. The exported kernels follow them.

// One tile of the forward's output from the accumulators (mma_epilogue's layout): y (pooled
// with the argmax byte when pool) for rows m0 + row < M and, when stats, the BatchNorm column
// sums of the stored y into red (ADD: added to what red holds, for a warp that stores several
// tiles; mma_col_sums).
template <class Tl, bool ADD>
__device__ __forceinline__ void conv_fwd_tile(const float (&acc)[Tl::MI][Tl::NJ][4], long long m0, int n0, long long M,
                                              int cout, int pool, half* __restrict__ y, unsigned char* __restrict__ argmax,
                                              bool stats, double (*red)[Tl::TN][2]) {
    double sum[2] = {0.0, 0.0}, sq[2] = {0.0, 0.0};  // this lane's, of its current column pair
    auto stat = [&](half y0, half y1) {
        const double d0 = (double)__half2float(y0), d1 = (double)__half2float(y1);
        sum[0] += d0;
        sum[1] += d1;
        sq[0] += d0 * d0;
        sq[1] += d1 * d1;
    };
    auto cols_done = [&](int j) {
        if (stats) mma_col_sums<double, Tl, ADD>(j, sum, sq, red);
    };
    mma_epilogue<Tl>(acc, [&](int row, int col, float v0, float v1) {
        const long long m = m0 + row;
        const int co = n0 + col;
        if (!pool) {
            store_f16_pair(y, m, M, co, cout, v0, v1);
            if (stats && m < M && co < cout) stat(__float2half(v0), __float2half(v1));
            return;
        }
        // the window's four rows sit in lanes (g & ~3) + p, p = 0..3, same q (g = lane/4)
        const int base = (threadIdx.x & 31) & ~12;
        float w0[4], w1[4];
#pragma unroll
        for (int p = 0; p < 4; p++) {
            w0[p] = __shfl_sync(0xffffffffu, v0, base | (p << 2));
            w1[p] = __shfl_sync(0xffffffffu, v1, base | (p << 2));
        }
        if ((m & 3) == 0 && m < M && co < cout) {
            float b0 = w0[0], b1 = w1[0];
            unsigned char k0 = 0, k1 = 0;
#pragma unroll
            for (int p = 1; p < 4; p++) {  // strict: the first maximum wins
                if (w0[p] > b0) { b0 = w0[p]; k0 = (unsigned char)p; }
                if (w1[p] > b1) { b1 = w1[p]; k1 = (unsigned char)p; }
            }
            store_pooled_pair(y, argmax, (m >> 2) * cout + co, b0, b1, k0, k1, stats, sum, sq);
        }
    }, cols_done);
}
// The pooled forward's epilogue from a warp's 64 rows in lane_pool_row<64>'s order (the mma kernels,
// the image-resident one): a lane's accumulators for m16 tiles 2a and 2a + 1, rows g and
// g + 8, hold all four members of window 8a + g, so the pooling is in registers: no shuffles,
// every lane storing (conv_fwd_tile gathers a window from 4 lanes with 8 shuffles per value
// pair and stores from one lane in 4). y[w][c] the window's first maximum, argmax[w][c] its
// member, for windows w0 + wl, wl < wleft (w0: the warp's first), c < cout; with stats the
// BatchNorm sums of the stored values into red (mma_col_sums; ADD: added to what it holds).
template <class Tl, bool ADD>
__device__ __forceinline__ void pool_tile_inlane(const float (&acc)[Tl::MI][Tl::NJ][4], long long w0, long long wleft,
                                                 int n0, int cout, half* __restrict__ y,
                                                 unsigned char* __restrict__ argmax, bool stats,
                                                 double (*red)[Tl::TN][2]) {
    static_assert(Tl::MI == 4 && Tl::WROWS == 64, "a warp's rows: one group of 16 windows");
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    double sum[2] = {0.0, 0.0}, sq[2] = {0.0, 0.0};  // this lane's, of its current column pair
#pragma unroll
    for (int j = 0; j < Tl::NJ; j++) {
        const int co = n0 + Tl::wn() * Tl::WN + j * 8 + 2 * q;
#pragma unroll
        for (int a = 0; a < 2; a++) {
            const int wl = 8 * a + g;
            if (wl < wleft && co < cout) {
                float b0 = acc[2 * a][j][0], b1 = acc[2 * a][j][1];
                unsigned k0 = 0, k1 = 0;
#pragma unroll
                for (int p = 1; p < 4; p++) {  // strict: the first maximum wins
                    const float v0 = acc[2 * a + (p >> 1)][j][2 * (p & 1)];
                    const float v1 = acc[2 * a + (p >> 1)][j][2 * (p & 1) + 1];
                    if (v0 > b0) { b0 = v0; k0 = p; }
                    if (v1 > b1) { b1 = v1; k1 = p; }
                }
                store_pooled_pair(y, argmax, (w0 + wl) * cout + co, b0, b1, k0, k1, stats, sum, sq);
            }
        }
        if (stats) mma_col_sums<double, Tl, ADD>(j, sum, sq, red);
    }
}
// The same from a warp's 16 rows in lane_pool_row<16>'s order (the wgmma tiles, MI = 1): a lane
// holds members 2(g & 1) + h of window g >> 1 and lane ^ 4 the other two. Per pair of column
// groups j0 = 2t, j1 = 2t + 1, the lane with even g finalises j0 and the odd one j1: each sends
// its partner the four values of the group the partner finalises (4 shuffles per 4 value pairs,
// where conv_fwd_tile takes 8 per pair), and every lane stores.
template <class Tl>
__device__ __forceinline__ void pool_tile_pairs(const float (&acc)[Tl::MI][Tl::NJ][4], long long w0, long long wleft,
                                                int n0, int cout, half* __restrict__ y,
                                                unsigned char* __restrict__ argmax, bool stats,
                                                double (*red)[Tl::TN][2]) {
    static_assert(Tl::MI == 1 && Tl::WROWS == 16 && Tl::NJ % 2 == 0, "a warp's rows: one m16 tile");
    const int lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    const bool odd = (g & 1) != 0, live = (g >> 1) < wleft;
    const long long o0 = (w0 + (g >> 1)) * cout;
#pragma unroll
    for (int t = 0; t < Tl::NJ / 2; t++) {
        const int co = n0 + Tl::wn() * Tl::WN + (2 * t + odd) * 8 + 2 * q;  // the group this lane finalises
        // mine: this lane's members (2·odd + h, h = e >> 1) of its group; theirs: the partner's
        float mine[4], theirs[4];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float keep = odd ? acc[0][2 * t + 1][e] : acc[0][2 * t][e];
            const float send = odd ? acc[0][2 * t][e] : acc[0][2 * t + 1][e];
            mine[e] = keep;
            theirs[e] = __shfl_xor_sync(0xffffffffu, send, 4);
        }
        double sum[2] = {0.0, 0.0}, sq[2] = {0.0, 0.0};
        if (live && co < cout) {
            float b[2];
            unsigned k[2];
#pragma unroll
            for (int c = 0; c < 2; c++) {  // members 0, 1 are the even lane's (h = 0, 1); 2, 3 the odd one's
                const float m0 = odd ? theirs[c] : mine[c], m1 = odd ? theirs[2 + c] : mine[2 + c];
                const float m2 = odd ? mine[c] : theirs[c], m3 = odd ? mine[2 + c] : theirs[2 + c];
                b[c] = m0;
                k[c] = 0;
                if (m1 > b[c]) { b[c] = m1; k[c] = 1; }  // strict: the first maximum wins
                if (m2 > b[c]) { b[c] = m2; k[c] = 2; }
                if (m3 > b[c]) { b[c] = m3; k[c] = 3; }
            }
            store_pooled_pair(y, argmax, o0 + co, b[0], b[1], k[0], k[1], stats, sum, sq);
        }
        if (stats) {
            // group j0's sums are the even lanes', j1's the odd ones': added over the four lanes
            // of a parity and a q (xor 8, 16), they land in lanes g = 0 (j0) and g = 1 (j1)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                double a = sum[e], b = sq[e];
#pragma unroll
                for (int o = 8; o < 32; o <<= 1) {
                    a += __shfl_xor_sync(0xffffffffu, a, o);
                    b += __shfl_xor_sync(0xffffffffu, b, o);
                }
                if (lane < 8) {
                    double* r = red[Tl::wm()][Tl::wn() * Tl::WN + (2 * t + odd) * 8 + 2 * q + e];
                    r[0] = a;
                    r[1] = b;
                }
            }
        }
    }
}
// The forward's epilogue of one tile: conv_fwd_tile, then, when part is set, the BatchNorm
// partial sums of the stored y (mma_col_partials). red: WGM × TN × 2 doubles of shared memory
// no warp still reads.
// prow, prows: the tile's column of part and their count (a persistent block's tile), or by
// default blockIdx.x of gridDim.x.
// LANE_POOL: the tile's pooled rows are in lane_pool_row's order (64 rows a group for the
// 4-tile warps, 16 for the wgmma ones), pooled by pool_tile_inlane or pool_tile_pairs.
template <class Tl, bool LANE_POOL = false>
__device__ __forceinline__ void conv_fwd_epilogue(const float (&acc)[Tl::MI][Tl::NJ][4], long long m0, int n0, long long M,
                                                  int cout, int pool, half* __restrict__ y,
                                                  unsigned char* __restrict__ argmax, double* __restrict__ part,
                                                  double (*red)[Tl::TN][2], int prow, int prows) {
    if (!y) return;  // the bench's main-loop-only lines (null outputs): no epilogue
    bool pooled = false;  // by pool_tile_pairs / pool_tile_inlane
    if constexpr (LANE_POOL) {
        if (pool) {
            const long long w0 = (m0 >> 2) + Tl::wm() * (Tl::WROWS >> 2);
            if constexpr (Tl::MI == 1)
                pool_tile_pairs<Tl>(acc, w0, (M >> 2) - w0, n0, cout, y, argmax, part != nullptr, red);
            else
                pool_tile_inlane<Tl, false>(acc, w0, (M >> 2) - w0, n0, cout, y, argmax, part != nullptr, red);
            pooled = true;
        }
    }
    if (!pooled) conv_fwd_tile<Tl, false>(acc, m0, n0, M, cout, pool, y, argmax, part != nullptr, red);
    if (part) mma_col_partials<double, Tl>(red, n0, cout, part, prow, prows);
}
template <class Tl, bool LANE_POOL = false>
__device__ __forceinline__ void conv_fwd_epilogue(const float (&acc)[Tl::MI][Tl::NJ][4], long long m0, int n0, long long M,
                                                  int cout, int pool, half* __restrict__ y,
                                                  unsigned char* __restrict__ argmax, double* __restrict__ part,
                                                  double (*red)[Tl::TN][2]) {
    conv_fwd_epilogue<Tl, LANE_POOL>(acc, m0, n0, M, cout, pool, y, argmax, part, red, blockIdx.x, gridDim.x);
}

// Same contract as conv3x3_fwd_f16 with bn = 2, but the weights as fp16 (wf, conv_weights_f16).
// A = im2col(a) [pixels][k] by cp.async (zero fill outside the image), B = wf [cout][k] by cp.async. With pool, the four
// rows of a 2×2 window (consecutive m) sit in lanes 4 apart (rows g..g+3 of an m16 tile): their
// values are gathered with shuffles and the first maximum is taken in window order.
// part (may be null): the BatchNorm partial sums of the stored y (fp16 values, pooled when pool)
// per block row, [2·cout][gridDim.x] f64 (mma_col_partials), for bn_finalize_f32.
// grid (ceil(M/128), ceil(cout/TN)), block 128.
template <class Tl>
__device__ __forceinline__ void conv_fwd_mma(const half* __restrict__ a, int N, int H, int W, int cin,
                                             const half* __restrict__ wf, int cout, int pool, half* __restrict__ y,
                                             unsigned char* __restrict__ argmax, double* __restrict__ part, half* As,
                                             half* Bs) {
    constexpr int TM = Tl::TM, TN = Tl::TN, A_STAGE = Tl::A_STAGE, B_STAGE = Tl::B_STAGE;
    const int tid = threadIdx.x;
    const int K = 9 * cin;
    const long long M = fwd_gemm_rows(N, H, W, pool);
    const long long m0 = (long long)blockIdx.x * TM;
    const int n0 = blockIdx.y * TN;
    // Staging: this thread copies A rows r0 + 32i (i < TM/32) and B rows r0 + 32i (i < TN/32), 8 k at kc.
    const int r0 = tid >> 2, kc = (tid & 3) * 8;
    TapRows<TM / 32> rows;
    fwd_tap_rows<TM / 32, 64>(rows, m0 + r0, 32, M, H, W, pool, cin);
    int boff[TN / 32];  // B rows' offsets co·K + kc in wf, 0 for co ≥ cout (masked below)
    unsigned bmask = 0u;
#pragma unroll
    for (int i = 0; i < TN / 32; i++) {
        const int co = n0 + r0 + 32 * i;
        boff[i] = co < cout ? co * K + kc : 0;
        bmask |= co < cout ? 1u << i : 0u;
    }
    KCursor kq(kc, cin);  // this thread's A column k = t·MK + kc as (tap, ci)
    auto issue = [&](int t, int s) {
        rows.copy(As + s * A_STAGE + r0 * MLD + kc, a, kq.tap, kq.c, cin, W);
        const unsigned live = t * MK + kc < K ? bmask : 0u;
#pragma unroll
        for (int i = 0; i < TN / 32; i++) {
            const bool ok = (live >> i) & 1u;
            cp_async16(Bs + s * B_STAGE + (r0 + 32 * i) * MLD + kc, wf + (ok ? (unsigned)(boff[i] + t * MK) : 0u),
                       ok ? 16 : 0);
        }
        kq.advance(cin);
    };
    float acc[4][Tl::NJ][4];
    mma_pipeline<false, false, Tl>(acc, As, Bs, CEIL_DIV(K, MK), issue);

    conv_fwd_epilogue<Tl, true>(acc, m0, n0, M, cout, pool, y, argmax, part,
                                mma_spare_stage<double, Tl>(As, CEIL_DIV(K, MK)));
}

// Where the input gradient's epilogue reads the layer input x (both channels of a value pair in
// one 4-byte word) and the pre's parameters of a column (channels past cin read channel cin − 1
// and are not summed; the bias passes mean 0, invstd 1, for which the BatchNorm formula gives
// x + shift exactly). DgradGlobalX: straight from global memory, enough for the mma kernels (16
// warps per SM hide the loads' latency). DgradSharedX<Tl>: from a copy of the block's tile in
// shared memory (dgrad_stage_x), for the wgmma kernels.
struct DgradGlobalX {
    const half* __restrict__ x;
    const float *__restrict__ pmean, *__restrict__ pinv, *__restrict__ pshift;
    int bn, cin, n0;
    long long m0;
    __device__ __forceinline__ unsigned pair(int row, int col) const {
        return *reinterpret_cast<const unsigned*>(x + (m0 + row) * cin + n0 + col);
    }
    __device__ __forceinline__ void params(int col, float& mean, float& inv, float& shift) const {
        pre_params(pmean, pinv, pshift, bn, min(n0 + col, cin - 1), mean, inv, shift);
    }
};
// The shared-memory layout: x's TM × TN tile, rows ROW bytes apart (16 bytes of padding put the
// 8 rows a warp reads at one column in distinct banks), then mean, invstd, shift per column (TN
// floats each), then the epilogue's column sums (red, WGM × TN × 2 floats).
template <class Tl> struct DgradSharedX {
    static constexpr int ROW = Tl::TN * 2 + 16, PAR = Tl::TM * ROW, RED = PAR + 3 * Tl::TN * 4,
                         BYTES = RED + Tl::WGM * Tl::TN * 2 * 4;
    const unsigned char* base;
    __device__ __forceinline__ unsigned pair(int row, int col) const {
        return *reinterpret_cast<const unsigned*>(base + row * ROW + col * 2);
    }
    __device__ __forceinline__ void params(int col, float& mean, float& inv, float& shift) const {
        const float* p = reinterpret_cast<const float*>(base + PAR);
        mean = p[col];
        inv = p[Tl::TN + col];
        shift = p[2 * Tl::TN + col];
    }
    __device__ __forceinline__ float (*red() const)[Tl::TN][2] {
        return reinterpret_cast<float (*)[Tl::TN][2]>(const_cast<unsigned char*>(base) + RED);
    }
};

// The input gradient's epilogue from the accumulators: da and, when part is set, pre_bwd's
// partial sums (mma_col_partials), with x and the parameters read through xs (DgradGlobalX or
// DgradSharedX). red: WGM × TN × 2 floats of shared memory no warp still reads.
// prow, prows: as conv_fwd_epilogue's.
template <class Tl, class XS>
__device__ __forceinline__ void conv_dgrad_epilogue(const float (&acc)[Tl::MI][Tl::NJ][4], long long m0, int n0,
                                                    long long M, int cin, half* __restrict__ da, const XS& xs,
                                                    float* __restrict__ part, float (*red)[Tl::TN][2], int prow,
                                                    int prows) {
    if (!da) return;  // the bench's main-loop-only lines (null outputs): no epilogue
    if (!part) {
        mma_epilogue<Tl>(acc, [&](int row, int col, float v0, float v1) {
            store_f16_pair(da, m0 + row, M, n0 + col, cin, v0, v1);
        });
        return;
    }
    // the parameters are read once per column pair
    float mean[2], inv[2], shift[2];
    float su[2] = {0.f, 0.f}, sx[2] = {0.f, 0.f};  // this lane's, of its current column pair
    auto cols_begin = [&](int col) {
#pragma unroll
        for (int e = 0; e < 2; e++) xs.params(col + e, mean[e], inv[e], shift[e]);
    };
    auto cols_done = [&](int j) { mma_col_sums<float, Tl>(j, su, sx, red); };
    mma_epilogue<Tl>(acc, [&](int row, int col, float v0, float v1) {
        const long long m = m0 + row;
        const int c = n0 + col;
        store_f16_pair(da, m, M, c, cin, v0, v1);
        if (m >= M || c >= cin) return;
        const float dv[2] = {__half2float(__float2half(v0)), __half2float(__float2half(v1))};
        Half2 xv;  // channels c, c + 1 (c even, cin % 8 == 0)
        xv.u = xs.pair(row, col);
#pragma unroll
        for (int e = 0; e < 2; e++) {
            float xhat;
            const float du = pre_du(dv[e], __half2float(xv.h[e]), mean[e], inv[e], shift[e], 1, xhat);
            su[e] += du;
            sx[e] += du * xhat;
        }
    }, cols_done, cols_begin);
    mma_col_partials<float, Tl>(red, n0, cin, part, prow, prows);
}
template <class Tl, class XS>
__device__ __forceinline__ void conv_dgrad_epilogue(const float (&acc)[Tl::MI][Tl::NJ][4], long long m0, int n0,
                                                    long long M, int cin, half* __restrict__ da, const XS& xs,
                                                    float* __restrict__ part, float (*red)[Tl::TN][2]) {
    conv_dgrad_epilogue<Tl>(acc, m0, n0, M, cin, da, xs, part, red, blockIdx.x, gridDim.x);
}

// Same contract as conv3x3_dgrad_f16, but from the full-resolution output gradient g (NHWC,
// cout channels at every input pixel: dy itself, or unpool_f16's output where the layer pools).
// M = input pixels, N = cin, K = 9·cout (k = tap'·cout + o). A = g gathered [pixels][k] by
// cp.async (zero fill outside the image), B = wt [k][cin] (conv_weights_f16: w flipped and
// channel-swapped, fp16) by cp.async, read with ldmatrix.trans.
// part (may be null): pre_bwd's partial sums of the stored da for the layer input x (raw, NHWC
// fp16) and its pre (pmean, pinv, pshift, bn: 0 bias, 1 BatchNorm): Σdu and Σdu·x̂ with
// du = da·GELU′(pre(x)), as chan_reduce_f16 (norm.cu) takes them, f32 per lane, [2·cin]
// [gridDim.x] (mma_col_partials), for pre_bwd_sums_f32. grid (ceil(P/128), ceil(cin/TN)), block 128.
template <class Tl>
__device__ __forceinline__ void conv_dgrad_mma(const half* __restrict__ g, int N, int H, int W, int cin, int cout,
                                               const half* __restrict__ wt, half* __restrict__ da,
                                               const half* __restrict__ x, const float* __restrict__ pmean,
                                               const float* __restrict__ pinv, const float* __restrict__ pshift,
                                               int bn, float* __restrict__ part, half* As, half* Bs) {
    constexpr int TM = Tl::TM, TN = Tl::TN, A_STAGE = Tl::A_STAGE, B_STAGE = Tl::B_STAGE;
    const int tid = threadIdx.x;
    const int K = 9 * cout;
    const long long M = (long long)N * H * W;
    const long long m0 = (long long)blockIdx.x * TM;
    const int n0 = blockIdx.y * TN;
    const int r0 = tid >> 2, kc = (tid & 3) * 8;  // A: rows r0 + 32i (i < TM/32), k offset kc
    TapRows<TM / 32> rows;
    pixel_tap_rows(rows, m0 + r0, 32, M, H, W, cout);
    KCursor kq(kc, cout);  // this thread's A column k = t·MK + kc as (tap, o)
    const KMajorCopy<Tl> bcopy;
    auto issue = [&](int t, int s) {
        // the gradient at pixel q + off(tap) times w[o][8 − tap][ci]
        rows.copy(As + s * A_STAGE + r0 * MLD + kc, g, kq.tap, kq.c, cout, W);
        // B row kb = tap'·cout + o of wt (conv_weights_f16)
        bcopy.copy(Bs + s * B_STAGE, [&](int kr, int col, const half*& p) {
            const int kb = t * MK + kr, ci = n0 + col;
            const bool ok = kb < K && ci < cin;
            p = wt + (ok ? (unsigned)(kb * cin + ci) : 0u);
            return ok;
        });
        kq.advance(cout);
    };
    float acc[4][Tl::NJ][4];
    mma_pipeline<false, true, Tl>(acc, As, Bs, CEIL_DIV(K, MK), issue);
    conv_dgrad_epilogue<Tl>(acc, m0, n0, M, cin, da, DgradGlobalX{x, pmean, pinv, pshift, bn, cin, n0, m0}, part,
                            mma_spare_stage<float, Tl>(As, CEIL_DIV(K, MK)));
}

// The weight gradient's epilogue: this block's partial dw (rows kw = m0.., columns o = o0..) into
// slice blockIdx.z of out [slices][cout][K].
template <class Tl>
__device__ __forceinline__ void conv_wgrad_epilogue(const float (&acc)[Tl::MI][Tl::NJ][4], int m0, int o0, int K,
                                                    int cout, float* __restrict__ out) {
    if (!out) return;  // the bench's main-loop-only lines (null outputs): no epilogue
    float* dst = out + (long long)blockIdx.z * cout * K;
    mma_epilogue<Tl>(acc, [&](int row, int col, float v0, float v1) {
        const int k = m0 + row, o = o0 + col;
        if (k < K && o < cout) {
            dst[(long long)o * K + k] = v0;
            dst[(long long)(o + 1) * K + k] = v1;
        }
    });
}

// Same contract as conv3x3_wgrad_f16 with bn = 2 (out is [slices][cout][9·cin], slice z covers
// pixels [z·chunk, min(P, (z+1)·chunk)), chunk a multiple of 32), computed transposed:
// M = 9·cin (weight column kw), N = cout, K = pixels. A = im2col(a) [pixels][kw], B = g, the
// full-resolution output gradient [pixels][cout] (dy, or unpool_f16's output where the layer
// pools), both by cp.async and read with ldmatrix.trans.
// grid (ceil(9·cin/128), ceil(cout/TN), slices), block 128.
template <class Tl>
__device__ __forceinline__ void conv_wgrad_mma(const half* __restrict__ a, int N, int H, int W, int cin,
                                               const half* __restrict__ g, int cout, float* __restrict__ out,
                                               int chunk, half* As, half* Bs) {
    constexpr int TM = Tl::TM, TN = Tl::TN, A_STAGE = Tl::A_STAGE, B_STAGE = Tl::B_STAGE;
    const int tid = threadIdx.x;
    const int K = 9 * cin;
    const long long P = (long long)N * H * W;
    const long long p_begin = (long long)blockIdx.z * chunk;
    const long long p_end = min(P, p_begin + chunk);
    static_assert(TM == 128, "wgrad's A copy: 16 threads per k row");
    const int m0 = blockIdx.x * TM, o0 = blockIdx.y * TN;
    const int ar0 = tid >> 4, ac = (tid & 15) * 8;  // A: pixel rows ar0 + 8i (i < 4), kw cols ac
    // the A columns' taps are fixed: kw = tap·cin + ci
    const int kw = m0 + ac;
    const bool kwok = kw < K;
    const int tap = kwok ? kw / cin : 0, ci = kw - tap * cin;
    const int ody = tap / 3 - 1, odx = tap % 3 - 1;
    const int pend = (int)p_end, coff = (ody * W + odx) * cin + ci;
    // The rows' pixels p = p_begin + t·MK + ar0 + 8i as (y, x), moved MK pixels per issue
    // without a division: x by MK mod W (carry into y), y by ⌊MK/W⌋ mod H (one wrap at most).
    int ry[4], rx[4];
    {
        const PixGrid pg(H, W);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int n;
            bool ok;  // rows past p_end stay past it: their (y, x) are never used
            pg.at((int)p_begin + ar0 + 8 * i, pend, n, ry[i], rx[i], ok);
        }
    }
    const int step_x = MK % W, step_y = (MK / W) % H;
    const KMajorCopy<Tl> bcopy;
    auto issue = [&](int t, int s) {
        const int pb = (int)p_begin + t * MK;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int p = pb + ar0 + 8 * i;
            const bool ok = kwok && p < pend && (unsigned)(ry[i] + ody) < (unsigned)H &&
                            (unsigned)(rx[i] + odx) < (unsigned)W;
            cp_async16(As + s * A_STAGE + (ar0 + 8 * i) * Tl::LDA_T + ac, a + (ok ? (unsigned)(p * cin + coff) : 0u),
                       ok ? 16 : 0);
            rx[i] += step_x;
            const bool carry = rx[i] >= W;
            rx[i] -= carry ? W : 0;
            ry[i] += step_y + carry;
            ry[i] -= ry[i] >= H ? H : 0;
        }
        bcopy.copy(Bs + s * B_STAGE, [&](int kr, int col, const half*& src) {
            const int p = pb + kr, o = o0 + col;
            const bool ok = p < pend && o < cout;
            src = g + (ok ? (unsigned)(p * cout + o) : 0u);  // < N·H·W·cout < 2^31 (check_pixels)
            return ok;
        });
    };
    const long long span = p_end > p_begin ? p_end - p_begin : 0;
    float acc[4][Tl::NJ][4];
    mma_pipeline<true, true, Tl>(acc, As, Bs, (int)CEIL_DIV(span, (long long)MK), issue);

    conv_wgrad_epilogue<Tl>(acc, m0, o0, K, cout, out);
}

// The exported kernels. `_mma_`: 128×64 tiles, static shared memory; `_mma_wide_`: 128×128
// tiles, MMA_WIDE_SMEM bytes of dynamic shared memory (the host opts in above 48 KB).
#define CONV_FWD_PARAMS                                                                                     \
    const half *__restrict__ a, int N, int H, int W, int cin, const half *__restrict__ wf, int cout, int pool, \
        half *__restrict__ y, unsigned char *__restrict__ argmax, double *__restrict__ part
#define CONV_DGRAD_PARAMS                                                                                        \
    const half *__restrict__ g, int N, int H, int W, int cin, int cout, const half *__restrict__ wt,             \
        half *__restrict__ da, const half *__restrict__ x, const float *__restrict__ pmean,                      \
        const float *__restrict__ pinv, const float *__restrict__ pshift, int bn, float *__restrict__ part
#define CONV_WGRAD_PARAMS                                                                                    \
    const half *__restrict__ a, int N, int H, int W, int cin, const half *__restrict__ g, int cout, \
        float *__restrict__ out, int chunk

extern "C" __global__ void __launch_bounds__(128, 4) conv3x3_fwd_mma_f16(CONV_FWD_PARAMS) {
    pdl_entry();
#if ARCH_SM80
    __shared__ __align__(128) half As[MSTAGES * Narrow::A_STAGE];
    __shared__ __align__(128) half Bs[MSTAGES * Narrow::B_STAGE];
    conv_fwd_mma<Narrow>(a, N, H, W, cin, wf, cout, pool, y, argmax, part, As, Bs);
#else
    __trap();
#endif
}
extern "C" __global__ void __launch_bounds__(128, 4) conv3x3_dgrad_mma_f16(CONV_DGRAD_PARAMS) {
    pdl_entry();
#if ARCH_SM80
    __shared__ __align__(128) half As[MSTAGES * Narrow::A_STAGE];
    __shared__ __align__(128) half Bs[MSTAGES * Narrow::B_STAGE];
    conv_dgrad_mma<Narrow>(g, N, H, W, cin, cout, wt, da, x, pmean, pinv, pshift, bn, part, As, Bs);
#else
    __trap();
#endif
}
extern "C" __global__ void __launch_bounds__(128, 4) conv3x3_wgrad_mma_f16(CONV_WGRAD_PARAMS) {
    pdl_entry();
#if ARCH_SM80
    __shared__ __align__(128) half As[MSTAGES * Narrow::A_STAGE];
    __shared__ __align__(128) half Bs[MSTAGES * Narrow::B_STAGE];
    conv_wgrad_mma<Narrow>(a, N, H, W, cin, g, cout, out, chunk, As, Bs);
#else
    __trap();
#endif
}
extern "C" __global__ void __launch_bounds__(128, 2) conv3x3_fwd_mma_wide_f16(CONV_FWD_PARAMS) {
    pdl_entry();
#if ARCH_SM80
    extern __shared__ half conv_smem[];
    conv_fwd_mma<Wide>(a, N, H, W, cin, wf, cout, pool, y, argmax, part, conv_smem,
                     conv_smem + MSTAGES * Wide::A_STAGE);
#else
    __trap();
#endif
}
extern "C" __global__ void __launch_bounds__(128, 2) conv3x3_dgrad_mma_wide_f16(CONV_DGRAD_PARAMS) {
    pdl_entry();
#if ARCH_SM80
    extern __shared__ half conv_smem[];
    conv_dgrad_mma<Wide>(g, N, H, W, cin, cout, wt, da, x, pmean, pinv, pshift, bn, part, conv_smem,
                       conv_smem + MSTAGES * Wide::A_STAGE);
#else
    __trap();
#endif
}
extern "C" __global__ void __launch_bounds__(128, 2) conv3x3_wgrad_mma_wide_f16(CONV_WGRAD_PARAMS) {
    pdl_entry();
#if ARCH_SM80
    extern __shared__ half conv_smem[];
    conv_wgrad_mma<Wide>(a, N, H, W, cin, g, cout, out, chunk, conv_smem, conv_smem + MSTAGES * Wide::A_STAGE);
#else
    __trap();
#endif
}
extern "C" __global__ void __launch_bounds__(128, 2) conv3x3_fwd_mma_tall_f16(CONV_FWD_PARAMS) {
    pdl_entry();
#if ARCH_SM80
    extern __shared__ half conv_smem[];
    conv_fwd_mma<Tall>(a, N, H, W, cin, wf, cout, pool, y, argmax, part, conv_smem, conv_smem + MSTAGES * Tall::A_STAGE);
#else
    __trap();
#endif
}
extern "C" __global__ void __launch_bounds__(128, 2) conv3x3_dgrad_mma_tall_f16(CONV_DGRAD_PARAMS) {
    pdl_entry();
#if ARCH_SM80
    extern __shared__ half conv_smem[];
    conv_dgrad_mma<Tall>(g, N, H, W, cin, cout, wt, da, x, pmean, pinv, pshift, bn, part, conv_smem,
                         conv_smem + MSTAGES * Tall::A_STAGE);
#else
    __trap();
#endif
}
// (128, 3): three blocks per SM as its 69 KB of shared memory allow on sm_80/sm_90; the compiler
// would otherwise take 197 registers (two blocks).
extern "C" __global__ void __launch_bounds__(128, 3) conv3x3_dgrad_mma_tall32_f16(CONV_DGRAD_PARAMS) {
    pdl_entry();
#if ARCH_SM80
    extern __shared__ half conv_smem[];
    conv_dgrad_mma<Tall32>(g, N, H, W, cin, cout, wt, da, x, pmean, pinv, pshift, bn, part, conv_smem,
                           conv_smem + MSTAGES * Tall32::A_STAGE);
#else
    __trap();
#endif
}

// =============================================================================================
// sm_80+ image-resident forward (`ConvPath::Img`, `conv3x3_fwd_img_f16`): one block per image
// and 64 output channels. The image's activated input (H×W×cin fp16) and the block's 64 filters
// (fp16, K = 9·cin per row) are copied into shared memory once; then each warp computes its
// GEMM rows straight from there: its A fragments are ldmatrix'd from the image itself (a lane's
// row address is its pixel's tap neighbour, or a zero row outside the image), so there is no
// im2col stage, no K-step barrier, and each input byte crosses L2 once per block instead of
// once per tap and row tile (the 128×64 kernel reads layer 0's A nine times over, 0.8 GB per
// step at batch 2000, and its weights once per 128 rows). For the small-channel layers (cin ≤ 64)
// whose image and filters fit the shared memory; the host checks the fit (img_smem).
//
// 8 warps: 4 warp rows × 2 warp columns (32 channels each). The image's GEMM rows (fwd_row_pixel
// order unpooled; pooled, 16 windows per group in lane_pool_row's order, so that a lane holds
// whole windows) go in groups of 64; warp row wm takes groups wm, wm + 4, …, each as 4 m16
// tiles × 4 n8 tiles over K in k16 steps (the same k16 order as mma_kstep, so y, argmax equal
// the 128×64 kernel's bit for bit on the emulator), m16 tiles past the image's rows skipped. Its BatchNorm column sums add up in red[wm] over its groups in order, and the
// block writes one partial per channel ([2·cout][N], mma_col_partials): deterministic.
//
// Shared memory (ImgLayout; src/gpu/backend.rs `img_smem` mirrors it, and the kernel traps if
// it was given less): the
// image at 16-byte units, pixel stride PP = P | 1 units (P = cin/8; odd, so 8 consecutive
// pixels hit 8 distinct bank groups) and row stride R ≡ 4 (mod 8) units (so the two rows of a
// 2×2 window's pixels do not collide either: the 8 rows of a pooled ldmatrix are conflict-free);
// a 16-byte zero row; the filters, rows of ldw = ⌈K/16⌉·16 + 8 halves (an odd number of 16-byte
// units: conflict-free B ldmatrix; the k ≥ K tail zero); red, WGM × 64 × 2 doubles.
#define IMG_THREADS 256
struct ImgTile {  // the warp grid, in the terms mma_epilogue / mma_col_sums / mma_col_partials use
    static constexpr int WN = 32, WGM = 4, WGN = 2, TN = 64, NJ = 4, MI = 4, WROWS = 64, THREADS = IMG_THREADS;
    static __device__ __forceinline__ int wm() { return threadIdx.x >> 6; }
    static __device__ __forceinline__ int wn() { return (threadIdx.x >> 5) & 1; }
};
struct ImgLayout {
    int P, PP, R, ldw, zoff, woff, roff, bytes;  // units, units, units, halves; byte offsets, total
    __device__ __forceinline__ ImgLayout(int H, int W, int cin) {
        P = cin >> 3;
        PP = P | 1;
        R = W * PP;
        R += (4 - R) & 7;
        ldw = ((9 * cin + 15) & ~15) + 8;
        zoff = H * R * 16;
        woff = zoff + 16;
        roff = woff + ImgTile::TN * ldw * 2;
        bytes = roff + ImgTile::WGM * ImgTile::TN * 2 * (int)sizeof(double);
    }
    // The unit of pixel (y, x)'s first 8 channels (also a tap's offset, for y, x in −1..1).
    __device__ __forceinline__ int pixel(int y, int x) const { return y * R + x * PP; }
    // The block's copy of an image (H·W·cin halves at src) into im, by cp.async, 16 bytes per
    // copy (chunk i = pixel·P + c), and the zero row after it by plain stores.
    __device__ __forceinline__ void copy_in(unsigned char* smem, const half* src, int W, int HW) const {
        half* im = reinterpret_cast<half*>(smem);
        for (int i = threadIdx.x; i < HW * P; i += IMG_THREADS) {
            const int p = i / P, c = i - p * P, py = p / W;
            cp_async16(im + (pixel(py, p - py * W) + c) * 8, src + (long long)i * 8, 16);
        }
        if (threadIdx.x < 4) reinterpret_cast<unsigned*>(smem + zoff)[threadIdx.x] = 0u;
    }
};

// One warp's 64 rows × 32 channels of conv_fwd_img over K, k16 steps in order: acc = A·B with
// A ldmatrix'd from the image (pu, mask: each m16 tile's lane row, see conv_fwd_img) and B from
// the filters (bs: this lane's ldmatrix row). Only m16 tiles i < live are computed; FULL (live
// is 4) has no per-tile condition in the loop (a warp-uniform one still costs WARPSYNCs there).
template <bool FULL>
__device__ __forceinline__ void img_kloop(float (&acc)[4][4][4], const half* im, const half* zrow, const half* bs,
                                          const int (&pu)[4], const unsigned (&mask)[4], int live, const ImgLayout& L,
                                          int nks, int lane) {
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;
    // this lane's 8-channel chunk q = 2s + lane/16 of K as (tap ty·3 + tx, chunk cc of P);
    // q ≥ 9·P (the last step's tail when 9·P is odd) is tap 9: no mask bit, the zero row
    int ty = 0, tx = 0, cc = lane >> 4;
    auto wrap = [&] {
        while (cc >= L.P) {
            cc -= L.P;
            if (++tx == 3) {
                tx = 0;
                ty++;
            }
        }
    };
    wrap();
    for (int s = 0; s < nks; s++) {
        const int tap = ty * 3 + tx, toff = L.pixel(ty - 1, tx - 1) + cc;
        unsigned fa[4][4], fb[4][2];
#pragma unroll
        for (int i = 0; i < 4; i++)
            if (FULL || i < live) ldmatrix_x4<false>(fa[i], (mask[i] >> tap) & 1u ? im + (pu[i] + toff) * 8 : zrow);
#pragma unroll
        for (int jj = 0; jj < 2; jj++) ldmatrix_b2<false>(fb, jj, bs + jj * 16 * L.ldw + s * 16);
#pragma unroll
        for (int i = 0; i < 4; i++)
            if (FULL || i < live)
#pragma unroll
                for (int j = 0; j < 4; j++) mma_16816(acc[i][j], fa[i], fb[j]);
        cc += 2;
        wrap();
    }
}

// Same contract as conv_fwd_mma (part per block: [2·cout][gridDim.x = N]); grid (N, ceil(cout/64)),
// block IMG_THREADS, ImgLayout(H, W, cin).bytes of dynamic shared memory at smem. STORE false:
// no epilogue (null y, the bench's main-loop-only lines), a separate instance so that the
// training one has no check per row group (one cost it 16 more bytes of spill loads on sm_90).
template <bool STORE>
__device__ __forceinline__ void conv_fwd_img(const half* __restrict__ a, int N, int H, int W, int cin,
                                             const half* __restrict__ wf, int cout, int pool, half* __restrict__ y,
                                             unsigned char* __restrict__ argmax, double* __restrict__ part,
                                             unsigned char* smem) {
    using Tl = ImgTile;
    const ImgLayout L(H, W, cin);
    if ((unsigned)L.bytes > dyn_smem_bytes()) __trap();  // the host's img_smem disagrees: a bug
    const int tid = threadIdx.x, lane = tid & 31, wm = Tl::wm(), wn = Tl::wn();
    const int img = blockIdx.x, n0 = blockIdx.y * Tl::TN, K = 9 * cin, HW = H * W;
    half* im = reinterpret_cast<half*>(smem);
    const half* zrow = reinterpret_cast<const half*>(smem + L.zoff);
    half* ws = reinterpret_cast<half*>(smem + L.woff);
    double (*red)[Tl::TN][2] = reinterpret_cast<double (*)[Tl::TN][2]>(smem + L.roff);
    // the image and the filters n0.. by cp.async, 16 bytes per copy; the zero row and red by
    // plain stores
    L.copy_in(smem, a + (long long)img * HW * cin, W, HW);
    const int wrow = L.ldw >> 3;
    for (int i = tid; i < Tl::TN * wrow; i += Tl::THREADS) {
        const int r = i / wrow, k8 = i - r * wrow, co = n0 + r;
        const bool ok = co < cout && k8 * 8 < K;
        cp_async16(ws + r * L.ldw + k8 * 8, wf + (ok ? (long long)co * K + k8 * 8 : 0), ok ? 16 : 0);
    }
    for (int i = tid; i < Tl::WGM * Tl::TN * 2; i += Tl::THREADS) (&red[0][0][0])[i] = 0.0;
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    const int Mi = pool ? (H >> 1) * (W >> 1) * 4 : HW;  // the image's GEMM rows
    const long long mbase = (long long)img * Mi, mend = mbase + Mi;
    const int PW = W >> 1, Wn = Mi >> 2, nks = (K + 15) >> 4;  // Wn: the pooled image's windows
    // this lane's B ldmatrix row (mma_kstep's non-transposed B addressing)
    const half* bs = ws + (wn * 32 + (lane & 7) + (lane >> 4) * 8) * L.ldw + ((lane >> 3) & 1) * 8;
    for (int r0 = wm * 64; r0 < Mi; r0 += Tl::WGM * 64) {
        // m16 tiles with a row < Mi (pooled: a pair of tiles per 8 windows, lane_pool_row)
        const int live = pool ? (Wn - (r0 >> 2) > 8 ? 4 : 2) : min(4, (Mi - r0 + 15) >> 4);
        // this lane's ldmatrix row of each m16 tile: its pixel (units) and the taps inside the image
        int pu[4];
        unsigned mask[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int r = r0 + 16 * i + (lane & 15);
            int yy, xx;
            bool in;
            if (pool) {  // lane_pool_row's order (r0 is a multiple of 64)
                const int pr = lane_pool_row<64>(r), w = pr >> 2, p = pr & 3;
                const int wy = w / PW;
                yy = 2 * wy + (p >> 1);
                xx = 2 * (w - wy * PW) + (p & 1);
                in = w < Wn;
            } else {
                yy = r / W;
                xx = r - yy * W;
                in = r < Mi;
            }
            mask[i] = in ? tap_mask(yy, xx, H, W) : 0u;
            pu[i] = in ? L.pixel(yy, xx) : 0;
        }
        float acc[4][4][4];
        if (live == 4)
            img_kloop<true>(acc, im, zrow, bs, pu, mask, 4, L, nks, lane);
        else
            img_kloop<false>(acc, im, zrow, bs, pu, mask, live, L, nks, lane);
        // mma_epilogue puts warp row wm at rows wm·64..: m0 = this group's first row − wm·64
        if constexpr (STORE) {
            if (pool)
                pool_tile_inlane<Tl, true>(acc, (mbase + r0) >> 2, Wn - (r0 >> 2), n0, cout, y, argmax,
                                           part != nullptr, red);
            else
                conv_fwd_tile<Tl, true>(acc, mbase + r0 - wm * 64, n0, mend, cout, pool, y, argmax, part != nullptr,
                                        red);
        }
    }
    if (STORE && part) mma_col_partials<double, Tl>(red, n0, cout, part);
}

extern "C" __global__ void __launch_bounds__(IMG_THREADS, 2) conv3x3_fwd_img_f16(CONV_FWD_PARAMS) {
    pdl_entry();
#if ARCH_SM80
    extern __shared__ half conv_smem[];
    unsigned char* smem = reinterpret_cast<unsigned char*>(conv_smem);
    if (y)
        conv_fwd_img<true>(a, N, H, W, cin, wf, cout, pool, y, argmax, part, smem);
    else
        conv_fwd_img<false>(a, N, H, W, cin, wf, cout, pool, y, argmax, part, smem);
#else
    __trap();
#endif
}

// The image-resident weight gradient (`ConvPath::Img`, `conv3x3_wgrad_img_f16`), for layers with
// 9·cin ≤ IMG_WG_K (the recipe's layer 0): dw[o][k] = Σ over the block's images and their pixels
// of g[pixel][o] · a[pixel + tap][c], k = tap·cin + c, g the full-resolution output gradient as
// conv_wgrad_mma reads it. The block holds one image of a at a time (ImgLayout's image and zero
// row) and streams the image's rows of g through two cp.async stages of 64 pixels. MMA M = o (the
// block's 64 channels), N = k in n8 tiles of one tap and 8 channels each, B ldmatrix'd
// transposed straight from the image at each pixel's tap neighbour (or the zero row), K = pixels.
// 8 warps: 2 along o (32 each) × 4 along k (7 n8 tiles each). out: [gridDim.z][cout][9·cin] f32,
// slice z = images z·chunk .. z·chunk + chunk − 1, added in order by wgrad_reduce_f32
// (deterministic). grid (1, ceil(cout/64), ceil(N/chunk)), block IMG_THREADS,
// img_wgrad_smem(H, W, cin) bytes of dynamic shared memory (src/gpu/backend.rs mirrors it).
#define IMG_WG_K 224   // 28 n8 tiles: 4 warps × 7
#define IMG_WG_LDG 72  // g stage rows: 64 channels + 8 halves (9 units: conflict-free ldmatrix.trans)
__device__ __forceinline__ int img_wgrad_smem(int H, int W, int cin) {
    return ImgLayout(H, W, cin).zoff + 16 + 2 * 64 * IMG_WG_LDG * 2;
}
__device__ __forceinline__ void conv_wgrad_img(const half* __restrict__ a, int N, int H, int W, int cin,
                                               const half* __restrict__ g, int cout, float* __restrict__ out,
                                               int chunk, unsigned char* smem) {
    const ImgLayout L(H, W, cin);
    const int K = 9 * cin, HW = H * W;
    if (K > IMG_WG_K || (unsigned)img_wgrad_smem(H, W, cin) > dyn_smem_bytes()) __trap();  // a host bug
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp & 1, wn = warp >> 1;
    const int o0 = blockIdx.y * 64;
    half* im = reinterpret_cast<half*>(smem);
    const half* zrow = reinterpret_cast<const half*>(smem + L.zoff);
    half* gs = reinterpret_cast<half*>(smem + L.zoff + 16);
    constexpr int GST = 64 * IMG_WG_LDG;  // halves per g stage
    // this lane's B columns in ldmatrix pair p: n8 tile t = wn·7 + 2p + lane/16 as its tap's
    // offset (units) and the tap's mask bit; the warp's 8th tile, and tiles past K, are dummies
    // (bit 31: never in a mask, so the zero row)
    int toff[4], tbit[4];
#pragma unroll
    for (int p = 0; p < 4; p++) {
        const int j = 2 * p + (lane >> 4), t = wn * 7 + j, tap = t / L.P, cc = t - tap * L.P;
        toff[p] = L.pixel(tap / 3 - 1, tap % 3 - 1) + cc;
        tbit[p] = j < 7 && t * 8 < K ? tap : 31;
    }
    float acc[2][7][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 7; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;
    // g rows c·64 .. c·64 + 63 of image n into stage st: 64 rows × 8 copies of 8 channels
    auto issue_g = [&](int n, int c, int st) {
        for (int i = tid; i < 64 * 8; i += IMG_THREADS) {
            const int r = i >> 3, q = i & 7, px = c * 64 + r, o = o0 + q * 8;
            const bool ok = px < HW && o < cout;
            cp_async16(gs + st * GST + r * IMG_WG_LDG + q * 8, g + (ok ? ((long long)n * HW + px) * cout + o : 0),
                       ok ? 16 : 0);
        }
    };
    const int img1 = min(N, (int)blockIdx.z * chunk + chunk), nch = (HW + 63) >> 6;
    for (int n = blockIdx.z * chunk; n < img1; n++) {
        // every warp finished the previous image at the last chunk's closing barrier
        L.copy_in(smem, a + (long long)n * HW * cin, W, HW);
        issue_g(n, 0, 0);
        cp_async_commit();
        for (int c = 0; c < nch; c++) {
            if (c + 1 < nch) issue_g(n, c + 1, (c + 1) & 1);
            cp_async_commit();
            cp_async_wait<1>();
            __syncthreads();
            const half* gst = gs + (c & 1) * GST;
            const int ks = min(4, (HW - c * 64 + 15) >> 4);  // k16 steps with a pixel < HW
            for (int s = 0; s < ks; s++) {
                unsigned fa[2][4], fb[8][2];
                // A = g transposed (o × pixel): mma_kstep's k-major A addressing
#pragma unroll
                for (int i = 0; i < 2; i++)
                    ldmatrix_x4<true>(fa[i], gst + (s * 16 + (lane & 7) + (lane >> 4) * 8) * IMG_WG_LDG + wm * 32 +
                                                 i * 16 + ((lane >> 3) & 1) * 8);
                // B = the image at this lane's pixel (k row) and each pair's tap
                const int px = c * 64 + s * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
                const int yy = px / W, xx = px - yy * W;
                const unsigned mask = px < HW ? tap_mask(yy, xx, H, W) : 0u;
                const int pu = L.pixel(yy, xx);
#pragma unroll
                for (int p = 0; p < 4; p++)
                    ldmatrix_b2<true>(fb, p, (mask >> tbit[p]) & 1u ? im + (pu + toff[p]) * 8 : zrow);
#pragma unroll
                for (int i = 0; i < 2; i++)
#pragma unroll
                    for (int j = 0; j < 7; j++) mma_16816(acc[i][j], fa[i], fb[j]);
            }
            __syncthreads();  // stage c & 1 and (at the last chunk) the image are free again
        }
    }
    // D(o, k): rows o0 + wm·32 + 16i + g + 8h, columns (wn·7 + j)·8 + 2q, + 1
    if (!out) return;  // the bench's main-loop-only lines (null outputs): no epilogue
    float* dst = out + (long long)blockIdx.z * cout * K;
    const int gq = lane >> 2, q = lane & 3;
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 7; j++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int o = o0 + wm * 32 + i * 16 + gq + 8 * h, k = (wn * 7 + j) * 8 + 2 * q;
                if (o < cout && k < K) {
                    dst[(long long)o * K + k] = acc[i][j][2 * h];
                    dst[(long long)o * K + k + 1] = acc[i][j][2 * h + 1];
                }
            }
}

extern "C" __global__ void __launch_bounds__(IMG_THREADS, 2) conv3x3_wgrad_img_f16(CONV_WGRAD_PARAMS) {
    pdl_entry();
#if ARCH_SM80
    extern __shared__ half conv_smem[];
    conv_wgrad_img(a, N, H, W, cin, g, cout, out, chunk, reinterpret_cast<unsigned char*>(conv_smem));
#else
    __trap();
#endif
}

// =============================================================================================
// sm_90a kernels: warpgroup MMAs (wgmma, common.cuh) on 128-byte-swizzled shared-memory stages
// filled by the same cp.async gathers as the mma kernels. The forward and the input gradient
// have both operands K-major (the forward's B is wf [cout][9·cin], the input gradient's is
// wk [cin][9·cout] from conv_weights_f16 with kmajor = 1); the weight gradient both MN-major
// (its pixel rows, as they lie in memory). K step WK = 64 (one 128-byte row),
// WSTAGES (4) stages, copies two steps ahead, one wgmma group in flight while the next step's
// copies are issued. Warpgroup w computes rows 64w..64w+63 of the block tile. `WgTile<WG, TN,
// STAGES>`: WG warpgroups, TN columns, STAGES stages (copies STAGES − 2 ahead). Launched only on
// compute capability 9.0 from the sm_90a cubin (`ConvPath::Wgmma`, `Wgmma2` in src/gpu/mod.rs),
// only with an activated input (bn = 2). Exported: conv3x3_{fwd,dgrad,wgrad}_wgmma_f16 (128×256
// tiles), conv3x3_{fwd,dgrad}_wgmma_tall_f16 (256×64), conv3x3_dgrad_wgmma_tall32_f16 (256×32),
// conv3x3_{fwd,dgrad,wgrad}_wgmma_narrow_f16 (128×64, 2 blocks per SM),
// conv3x3_{fwd,dgrad,wgrad}_wgmma2_f16 (128×128 in 3 stages, 2 blocks per SM); same parameters
// as the mma kernels.
#define WK 64
#define WSTAGES 4  // the default (and the multicast kernels') stage count
// Bytes of dynamic shared memory (the host passes them: WG_WIDE_SMEM, WG_TALL_SMEM,
// WG_TALL32_SMEM in src/gpu/backend.rs, checked against these lines by a test).
#define WG_WIDE_SMEM 197632
#define WG_TALL_SMEM 164864
#define WG_TALL32_SMEM 148480
#define WG_NARROW_SMEM 99328
#define WG_WIDE2_SMEM 99328
// the multicast kernels (128×256): WG_WIDE_SMEM and the stages' WSTAGES mbarriers
#define WG_MC_SMEM 197696

template <int WG_, int TN_, int STAGES_ = WSTAGES> struct WgTile {
    static constexpr int WG = WG_, THREADS = 128 * WG_, TM = 64 * WG_, TN = TN_;
    // STAGES stages, copies AHEAD = STAGES − 2 steps ahead (the stage a step refills must be one
    // whose wgmma group every warpgroup has retired: at most one group is left in flight)
    static constexpr int STAGES = STAGES_, AHEAD = STAGES_ - 2;
    static_assert(STAGES_ >= 3, "at least one step of copies ahead");
    // the accumulators in mma_epilogue's terms: warp w holds rows 16w..16w+15, all TN columns
    static constexpr int WN = TN_, WGM = 4 * WG_, WGN = 1, NJ = TN_ / 8, MI = 1, WROWS = 16;
    static constexpr int A_BYTES = TM * 128, STAGE = A_BYTES + TN * 128;  // one stage: A rows, then B rows
    static constexpr int SMEM = STAGES * STAGE + 1024;                    // + room to align to 1 KB
    static constexpr int RSTEP = THREADS / 8;  // rows between one thread's copies (8 threads per row)
    static_assert(TN % 8 == 0 && TN <= 256 && TM % RSTEP == 0 && RSTEP % 8 == 0, "tile");
    static __device__ __forceinline__ int wm() { return threadIdx.x >> 5; }
    static __device__ __forceinline__ int wn() { return 0; }
};
using WgWide = WgTile<2, 256>;  // 128×256 (cout or cin 256), WG_WIDE_SMEM
using WgTall = WgTile<4, 64>;   // 256×64, WG_TALL_SMEM
using WgTall32 = WgTile<4, 32>; // 256×32 (input gradients of ≤ 32 channels), WG_TALL32_SMEM
using WgNarrow = WgTile<2, 64>; // 128×64, WG_NARROW_SMEM: 2 blocks per SM (weight gradients of 64
                                // output channels; wgmma2's forwards and input gradients of 64)
// 128×128 in 3 stages (one step of copies ahead), WG_WIDE2_SMEM: 2 blocks per SM, so that one
// block's epilogue (pooling, statistics, stores) overlaps the other's main loop (wgmma2)
using WgWide2 = WgTile<2, 128, 3>;
static_assert(WgWide::SMEM == WG_WIDE_SMEM && WgTall::SMEM == WG_TALL_SMEM && WgTall32::SMEM == WG_TALL32_SMEM &&
                  WgNarrow::SMEM == WG_NARROW_SMEM && WgWide2::SMEM == WG_WIDE2_SMEM,
              "WG_*_SMEM");
static_assert(2 * (WG_WIDE2_SMEM + 1024) <= 233472, "two wgmma2 blocks fit an SM's 228 KB (1 KB reserved per block)");
static_assert(WG_MC_SMEM >= WgWide::SMEM + 8 * WSTAGES, "WG_MC_SMEM: the stages, 1 KB to align them, the mbarriers");

// The stages: the first 1024-byte aligned shared address in the dynamic buffer (the swizzle
// atoms must start on 1 KB; the buffer has 1 KB of slack).
__device__ __forceinline__ unsigned char* wg_stages(half* smem) {
    unsigned char* p = reinterpret_cast<unsigned char*>(smem);
    return p + ((1024u - (smem_u32(p) & 1023u)) & 1023u);
}

// How wg_pipeline's steps meet. WgCta: the block's barrier per K step, every operand copied by
// cp.async (landed once each thread's wait and the barrier are past). WgCluster (the multicast
// kernels, a cluster of 2 or 4 CTAs): B comes by bulk copies that signal one mbarrier per stage
// (at shared address bars + 8·stage, in the bytes after the stages), so a step also waits for
// its stage's phase; and since the other CTAs' copies write into this CTA's stages, a step's
// refill of stage t − 2 also waits until every CTA has retired step t − 2's wgmma: each thread
// arrives on the cluster barrier (relaxed: no fence) right after its wgmma_wait<1> (retired),
// and the step waits for that phase after the block's barrier. The first phase is arrived in
// start (after a full cluster barrier that publishes the initialised mbarriers); the last wait
// (finish) is past every CTA's last mbarrier wait: no copy is still in flight into any CTA when
// the epilogue reuses the stages or a CTA exits.
struct WgCta {
    __device__ __forceinline__ void start() const {}
    __device__ __forceinline__ void step() const { __syncthreads(); }
    __device__ __forceinline__ void landed(int, int) const {}
    __device__ __forceinline__ void retired() const {}
    __device__ __forceinline__ void finish() const {}
};
struct WgCluster {
    unsigned bars;
    __device__ __forceinline__ void start() const {
        if (threadIdx.x == 0) {
#pragma unroll
            for (int s = 0; s < WSTAGES; s++) mbar_init(bars + 8 * s, 1);
            fence_mbar_init();
        }
        cluster_sync();
        cluster_arrive_relaxed();
    }
    __device__ __forceinline__ void step() const {
        __syncthreads();
        cluster_wait();
    }
    // step t's stage s: its (t / WSTAGES)-th fill
    __device__ __forceinline__ void landed(int t, int s) const { mbar_wait(bars + 8 * s, (t / WSTAGES) & 1); }
    __device__ __forceinline__ void retired() const { cluster_arrive_relaxed(); }
    __device__ __forceinline__ void finish() const { cluster_wait(); }
};

// One K step's MMAs (WK / 16 wgmmas) on stage s, accumulating into d: K-major operands (A's
// rows, this warpgroup's 64 of them, then B's in the stage), or with MN both MN-major (below).
template <class Tl, bool MN>
__device__ __forceinline__ void wg_step_mmas(float* d, unsigned char* st, int s) {
    const unsigned a0 = smem_u32(st) + (threadIdx.x >> 7) * 64 * 128;  // this warpgroup's 64 A rows
    const unsigned b0 = smem_u32(st) + Tl::A_BYTES;
#pragma unroll
    for (int kk = 0; kk < WK / 16; kk++) {
        if constexpr (!MN) {
            wgmma_f16<Tl::TN>(d, wgmma_desc(a0 + s * Tl::STAGE + 32 * kk), wgmma_desc(b0 + s * Tl::STAGE + 32 * kk), 1);
        } else {  // k16 step kk = k groups 2kk, 2kk + 1; this warpgroup's 64 rows = column block w of A
            static_assert(Tl::TN % 64 == 0, "MN-major B: whole 64-column blocks");
            constexpr unsigned AB = Tl::TM / 64, BB = Tl::TN / 64;
            const unsigned sa = smem_u32(st) + s * Tl::STAGE + (2 * kk * AB + (threadIdx.x >> 7)) * 1024;
            const unsigned sb = smem_u32(st) + s * Tl::STAGE + Tl::A_BYTES + 2 * kk * BB * 1024;
            wgmma_f16<Tl::TN, 1, 1>(d, wgmma_desc(sa, 1024, AB * 1024), wgmma_desc(sb, 1024, BB * 1024), 1);
        }
    }
}

// The pipeline over nk K steps. issue(t, s): start copying step t into stage s. Step t lives in
// stage t % STAGES; at step t the copies of step t + AHEAD go into the stage that held step
// t + AHEAD − STAGES = t − 2, whose wgmma group every warpgroup retired (wgmma_wait<1> after
// issuing step t − 1) before step t's barrier. Each thread fences its landed copies for the
// async proxy before the barrier. (4 stages: 2 ahead; 3 stages: 1 ahead.)
// MN (the weight gradient): both operands MN-major, each stage's A (then B) as 1 KB atoms of
// 8 k rows × 64 columns, atom (k group, column block) at (kg·(T/64) + cb)·1024 (T: TM or TN).
template <class Tl, bool MN = false, class Issue, class Sync = WgCta>
__device__ __forceinline__ void wg_pipeline(float (&acc)[1][Tl::NJ][4], unsigned char* st, int nk, Issue issue,
                                            Sync sync = {}) {
    float* d = &acc[0][0][0];
#pragma unroll
    for (int i = 0; i < Tl::NJ * 4; i++) d[i] = 0.f;
    wgmma_fence_regs<Tl::NJ * 4>(d);
    sync.start();
    constexpr int AH = Tl::AHEAD, NS = Tl::STAGES;
#pragma unroll
    for (int i = 0; i < AH; i++) {
        if (i == 0 || i < nk) issue(i, i);
        cp_async_commit();
    }
    int s = 0, w = AH;  // stages of steps t and t + AH
    for (int t = 0; t < nk; t++) {
        cp_async_wait<AH - 1>();  // step t's copies landed (those of t + 1 .. t + AH − 1 may not)
        fence_proxy_async();
        sync.step();
        if (t + AH < nk) issue(t + AH, w);
        cp_async_commit();
        sync.landed(t, s);
        wgmma_fence();
        wg_step_mmas<Tl, MN>(d, st, s);
        wgmma_commit();
        wgmma_wait<1>();
        sync.retired();
        s = s == NS - 1 ? 0 : s + 1;
        w = w == NS - 1 ? 0 : w + 1;
    }
    wgmma_wait<0>();
    wgmma_fence_regs<Tl::NJ * 4>(d);
    cp_async_wait<0>();
    sync.finish();
}
// Room for the epilogue's per-warp column sums once wg_pipeline has run nk steps: stage
// (nk − 3) mod STAGES last held step nk − 3 (or nothing), retired before the last step's
// barrier, and no copy went into it after (the last, step nk − 1's, went into another stage).
template <typename T, class Tl> __device__ __forceinline__ T (*wg_spare_stage(unsigned char* st, int nk))[Tl::TN][2] {
    static_assert(sizeof(T) * Tl::WGM * Tl::TN * 2 <= Tl::STAGE, "red fits a stage");
    static_assert(Tl::AHEAD == Tl::STAGES - 2, "the stage of step nk − 3 is free only when copies run STAGES − 2 ahead");
    return reinterpret_cast<T (*)[Tl::TN][2]>(st + ((nk + Tl::STAGES - 3) % Tl::STAGES) * Tl::STAGE);
}

// wg_pipeline over several tiles in a row (a persistent block's): `tiles` tiles of nk K steps
// each, one pipeline through all tiles·nk steps, so the copies of a tile's first AHEAD steps are
// in flight while the previous tile's epilogue runs. issue(j, t, s): start copying step t of
// tile j into stage s (in (j, t) order, each once). After a tile's last step (global step g,
// stage s): every wgmma retired (wgmma_wait<0> and a barrier), then epi(j, acc, spare) with acc
// the tile's D and spare stage s's bytes (step g's; refilled only by step g + STAGES's copies,
// issued after the barriers of the next steps); acc is zeroed for the next tile. K-major only.
template <class Tl, class Issue, class Epi>
__device__ __forceinline__ void wg_pipeline_tiles(float (&acc)[1][Tl::NJ][4], unsigned char* st, int nk, int tiles,
                                                  Issue issue, Epi epi) {
    static_assert(Tl::STAGE >= Tl::WGM * Tl::TN * 2 * (int)sizeof(double), "the epilogue's red fits a stage");
    float* d = &acc[0][0][0];
    constexpr int AH = Tl::AHEAD, NS = Tl::STAGES;
    const int total = nk * tiles;
    int ij = 0, it = 0;  // the tile and step of the next copy
    auto issue_next = [&](int s) {
        issue(ij, it, s);
        if (++it == nk) {
            it = 0;
            ij++;
        }
    };
#pragma unroll
    for (int i = 0; i < Tl::NJ * 4; i++) d[i] = 0.f;
    wgmma_fence_regs<Tl::NJ * 4>(d);
#pragma unroll
    for (int i = 0; i < AH; i++) {
        if (i < total) issue_next(i);
        cp_async_commit();
    }
    int s = 0, w = AH, t = 0, j = 0;  // stages of steps g and g + AH; step t of tile j
    for (int g = 0; g < total; g++) {
        cp_async_wait<AH - 1>();
        fence_proxy_async();
        __syncthreads();
        if (g + AH < total) issue_next(w);
        cp_async_commit();
        wgmma_fence();
        wg_step_mmas<Tl, false>(d, st, s);
        wgmma_commit();
        wgmma_wait<1>();
        if (++t == nk) {
            wgmma_wait<0>();
            wgmma_fence_regs<Tl::NJ * 4>(d);
            __syncthreads();  // every warpgroup's steps g − 1 and g retired: stage s is free
            epi(j, acc, st + s * Tl::STAGE);
#pragma unroll
            for (int i = 0; i < Tl::NJ * 4; i++) d[i] = 0.f;
            wgmma_fence_regs<Tl::NJ * 4>(d);
            t = 0;
            j++;
        }
        s = s == NS - 1 ? 0 : s + 1;
        w = w == NS - 1 ? 0 : w + 1;
    }
    cp_async_wait<0>();
}

// B = wb [nb][K] (K-major), columns n0..n0+TN−1, by cp.async: this thread copies chunk tid % 8
// (8 k) of rows tid/8 + RSTEP·i, stored at chunk (tid % 8) ^ (row % 8).
template <class Tl> struct WgRowsB {
    static constexpr int RS = Tl::RSTEP, NB = CEIL_DIV(Tl::TN, RS);
    const half* __restrict__ wb;
    int boff[NB];  // B rows' offsets row·K + kc in wb, 0 past nb (masked below)
    unsigned bmask = 0u;  // bit i: this thread copies B row r0 + RS·i (inside the tile and nb)
    int K;
    __device__ __forceinline__ WgRowsB(const half* __restrict__ wb_, int nb, int n0, int K_) : wb(wb_), K(K_) {
        const int r0 = threadIdx.x >> 3, kc = (threadIdx.x & 7) * 8;
#pragma unroll
        for (int i = 0; i < NB; i++) {
            const int r = n0 + r0 + RS * i;
            const bool ok = r0 + RS * i < Tl::TN && r < nb;
            boff[i] = ok ? r * K + kc : 0;
            bmask |= ok ? 1u << i : 0u;
        }
    }
    // step t's B into bs (a stage's B rows); dst: this thread's chunk in a stage's rows, halves
    __device__ __forceinline__ void copy(int t, int, half* bs, int dst) const {
        const int r0 = threadIdx.x >> 3, kc = (threadIdx.x & 7) * 8;
        const unsigned live = t * WK + kc < K ? bmask : 0u;
#pragma unroll
        for (int i = 0; i < NB; i++) {
            if (r0 + RS * i >= Tl::TN) break;  // rows past the tile: not this thread's (uniform per warp)
            const bool ok = (live >> i) & 1u;
            cp_async16(bs + dst + i * RS * 64, wb + (ok ? (unsigned)(boff[i] + t * WK) : 0u), ok ? 16 : 0);
        }
    }
};
// B from wb in mc_tiled_index's layout (row block blockIdx.y) by bulk copies, multicast in a
// cluster of CX CTAs: CTA rank r's thread 0 copies rows r·TN/CX.. of the step's block into every
// CTA's stage, after announcing the whole stage's bytes (every part lands in each CTA) on its
// own stage mbarrier. Each CTA thus reads 1/CX of the weights from L2 that it did alone.
template <class Tl, int CX> struct WgMulticastB {
    static constexpr unsigned PART = Tl::TN / CX * 128;  // bytes of one CTA's part of a stage's B
    static_assert(CX >= 2 && CX <= 16 && (Tl::TN / CX) % 8 == 0, "whole 8-row swizzle atoms per part");
    const half* __restrict__ src;                        // this CTA's part of row block blockIdx.y, step 0
    unsigned bars, off;                                  // off: this CTA's part in a stage's B, bytes
    __device__ __forceinline__ WgMulticastB(const half* __restrict__ wb, int K, unsigned bars_)
        : bars(bars_), off(cluster_ctarank() * PART) {
        static_assert(Tl::TN == MC_TN && WK == MC_WK, "the bulk-copy layout's blocks are one stage's B");
        src = wb + (long long)blockIdx.y * (K / WK) * Tl::TN * WK + off / 2;
    }
    __device__ __forceinline__ void copy(int t, int s, half* bs, int) const {
        if (threadIdx.x != 0) return;
        mbar_arrive_expect_tx(bars + 8 * s, CX * PART);
        bulk_copy_multicast(smem_u32(bs) + off, src + (long long)t * Tl::TN * WK, PART, bars + 8 * s,
                            (unsigned short)((1u << CX) - 1));
    }
};

// The implicit GEMM both kernels share: A = the 3×3 tap gather of src (C channels) at the rows'
// pixels (rows), B by the copier b (WgRowsB or WgMulticastB), K = 9·C. This thread copies
// chunk tid % 8 (8 k) of A rows tid/8 + RSTEP·i, stored at chunk (tid % 8) ^ (row % 8).
template <class Tl, class B, class Sync = WgCta>
__device__ __forceinline__ void wg_tap_gemm(float (&acc)[1][Tl::NJ][4], unsigned char* st, const half* __restrict__ src,
                                            int C, int W, const TapRows<Tl::TM / Tl::RSTEP>& rows, const B& b,
                                            Sync sync = {}) {
    constexpr int RS = Tl::RSTEP;
    const int tid = threadIdx.x, r0 = tid >> 3, kc = (tid & 7) * 8;
    const int dst = r0 * 64 + (((tid & 7) ^ (r0 & 7)) * 8);  // halves into a stage's A (or B) rows
    KCursor kq(kc, C);  // this thread's A column k = t·WK + kc as (tap, c)
    auto issue = [&](int t, int s) {
        half* as = reinterpret_cast<half*>(st + s * Tl::STAGE);
        half* bs = reinterpret_cast<half*>(st + s * Tl::STAGE + Tl::A_BYTES);
        rows.template copy<RS * 64>(as + dst, src, kq.tap, kq.c, C, W);
        b.copy(t, s, bs, dst);
        kq.template advance<WK>(C);
    };
    wg_pipeline<Tl>(acc, st, CEIL_DIV(9 * C, WK), issue, sync);
}

// wg_tap_gemm with B = wb [nb][9·C] (K-major), columns n0..: by cp.async (CX = 1), or (the
// multicast kernels) by bulk copies from mc_tiled_index's layout in a cluster of CX CTAs, which
// needs whole bulk-copy blocks (K a multiple of MC_WK, nb of MC_TN) and whole clusters along x
// (the host takes those kernels only there; elsewhere they trap).
template <class Tl, int CX>
__device__ __forceinline__ void wg_conv_gemm(float (&acc)[1][Tl::NJ][4], unsigned char* st, const half* __restrict__ src,
                                             int C, int W, const TapRows<Tl::TM / Tl::RSTEP>& rows,
                                             const half* __restrict__ wb, int nb, int n0) {
    const int K = 9 * C;
    if constexpr (CX > 1) {
        static_assert(Tl::STAGES == WSTAGES, "WgCluster's phases and WG_MC_SMEM count WSTAGES stages");
        if (K % MC_WK != 0 || nb % MC_TN != 0 || gridDim.x % CX != 0 || blockDim.x != Tl::THREADS) __trap();
        const unsigned bars = smem_u32(st + WSTAGES * Tl::STAGE);  // after the stages (WG_MC_SMEM)
        wg_tap_gemm<Tl>(acc, st, src, C, W, rows, WgMulticastB<Tl, CX>(wb, K, bars), WgCluster{bars});
    } else {
        wg_tap_gemm<Tl>(acc, st, src, C, W, rows, WgRowsB<Tl>(wb, nb, n0, K));
    }
}

// The loop epilogues' sums (below): this thread's a[c], b[c] of channels n0 + 8·cc + c over its
// row group rg go to red[rg] (RG × TN × 2 T of shared memory no thread still reads), then the
// groups are added in order per channel into part's row prow of prows (col_partials).
// Deterministic.
template <typename T, class Tl, int RG>
__device__ __forceinline__ void row_group_partials(T (*red)[Tl::TN][2], const T (&a)[8], const T (&b)[8], int cc, int rg,
                                                   int n0, int C, T* __restrict__ part, int prow, int prows) {
#pragma unroll
    for (int c = 0; c < 8; c++) {
        red[rg][8 * cc + c][0] = a[c];
        red[rg][8 * cc + c][1] = b[c];
    }
    __syncthreads();
    col_partials<T, Tl::TN, RG, Tl::THREADS>(red, n0, C, part, prow, prows);
}

// The forward's epilogue of a wgmma tile as a loop over shared memory, once the main loop is
// done (for a multicast kernel: past its last cluster wait, so no copy is in flight into any
// stage): the accumulators go to the stages as fp32 rows (TN + 8 floats apart), then each
// thread takes one 8-channel chunk of every RG-th row (pooled: of every RG-th 2×2 window, the
// four rows in window order, the first maximum winning as in conv_fwd_tile), stores 8 halves
// (and 8 argmax bytes) in one 16-byte (8-byte) store, and sums its channels' statistics in
// double; the RG row groups' sums are then added in order per channel into part's column
// prow. y and argmax equal conv_fwd_epilogue's bit for bit (the same fp32 values compared and
// rounded); the statistics sum the same fp16 values in another order. Its code is one loop,
// where conv_fwd_epilogue's is unrolled over the tile's column pairs (the 128×256 forward: 8464
// instructions, 132 KB, which a tile's epilogue walks through after every main loop: the
// instruction cache's share of each tile's fixed cost, bench/NOTES.md).
template <class Tl>
__device__ __forceinline__ void conv_fwd_epilogue_smem(const float (&acc)[1][Tl::NJ][4], unsigned char* st,
                                                       long long m0, int n0, long long M, int cout, int pool,
                                                       half* __restrict__ y, unsigned char* __restrict__ argmax,
                                                       double* __restrict__ part, int prow, int prows) {
    constexpr int LD = Tl::TN + 8, CC = Tl::TN / 8, RG = Tl::THREADS / CC;
    static_assert(Tl::THREADS % CC == 0 && Tl::TM % (4 * RG) == 0, "whole row groups");
    static_assert(Tl::TM * LD * 4 <= Tl::STAGES * Tl::STAGE && RG * Tl::TN * 16 <= Tl::STAGES * Tl::STAGE,
                  "the staged tile and the sums fit the stages");
    if (!y) return;  // the bench's main-loop-only lines (null outputs): no epilogue
    float* cs = reinterpret_cast<float*>(st);
    const int tid = threadIdx.x;
    __syncthreads();  // every warpgroup's last wgmma retired: the stages are free
    mma_epilogue<Tl>(acc, [&](int row, int col, float v0, float v1) {
        *reinterpret_cast<float2*>(cs + row * LD + col) = make_float2(v0, v1);
    });
    __syncthreads();
    const int cc = tid % CC, rg = tid / CC, co = n0 + 8 * cc;
    double sum[8], sq[8];
#pragma unroll
    for (int c = 0; c < 8; c++) sum[c] = sq[c] = 0.0;
    auto stat = [&](const Half8& h) {
#pragma unroll
        for (int c = 0; c < 8; c++) {
            const double d = (double)__half2float(h.h[c]);
            sum[c] += d;
            sq[c] += d * d;
        }
    };
    auto row8 = [&](int r, float (&v)[8]) {
        const float4* p = reinterpret_cast<const float4*>(cs + r * LD + 8 * cc);
        const float4 a0 = p[0], a1 = p[1];
        v[0] = a0.x, v[1] = a0.y, v[2] = a0.z, v[3] = a0.w, v[4] = a1.x, v[5] = a1.y, v[6] = a1.z, v[7] = a1.w;
    };
    if (co < cout) {
        if (pool) {
#pragma unroll 1
            for (int pr = rg; pr < Tl::TM / 4 && m0 + 4 * pr < M; pr += RG) {
                float v[4][8];
#pragma unroll
                for (int p = 0; p < 4; p++) row8(4 * pr + p, v[p]);
                Half8 h;
                unsigned char k[8];
#pragma unroll
                for (int c = 0; c < 8; c++) {
                    float b = v[0][c];
                    k[c] = 0;
#pragma unroll
                    for (int p = 1; p < 4; p++)  // strict: the first maximum wins
                        if (v[p][c] > b) {
                            b = v[p][c];
                            k[c] = (unsigned char)p;
                        }
                    h.h[c] = __float2half(b);
                }
                const long long o = ((m0 >> 2) + pr) * cout + co;
                *reinterpret_cast<uint4*>(y + o) = h.u;
                uint2 kb;
                kb.x = k[0] | (k[1] << 8) | (k[2] << 16) | ((unsigned)k[3] << 24);
                kb.y = k[4] | (k[5] << 8) | (k[6] << 16) | ((unsigned)k[7] << 24);
                *reinterpret_cast<uint2*>(argmax + o) = kb;
                if (part) stat(h);
            }
        } else {
#pragma unroll 1
            for (int r = rg; r < Tl::TM && m0 + r < M; r += RG) {
                float v[8];
                row8(r, v);
                Half8 h;
#pragma unroll
                for (int c = 0; c < 8; c++) h.h[c] = __float2half(v[c]);
                *reinterpret_cast<uint4*>(y + (m0 + r) * cout + co) = h.u;
                if (part) stat(h);
            }
        }
    }
    if (!part) return;
    __syncthreads();  // the staged tile is read: its bytes take the row groups' sums
    row_group_partials<double, Tl, RG>(reinterpret_cast<double (*)[Tl::TN][2]>(st), sum, sq, cc, rg, n0, cout, part,
                                       prow, prows);
}

// conv_fwd_mma's contract on wgmma, the epilogue conv_fwd_epilogue_smem (pool & 2, the bench's
// "register epilogue" lines: conv_fwd_epilogue, the mma kernels' own, to time the two side by
// side). grid (ceil(M/TM), ceil(cout/TN)), block THREADS, Tl::SMEM bytes of dynamic shared
// memory. CX > 1: the multicast kernels' B (wf in mc_tiled_index's layout, clusters of CX CTAs,
// WG_MC_SMEM).
template <class Tl, int CX = 1>
__device__ __forceinline__ void conv_fwd_wg(const half* __restrict__ a, int N, int H, int W, int cin,
                                            const half* __restrict__ wf, int cout, int pool_arg, half* __restrict__ y,
                                            unsigned char* __restrict__ argmax, double* __restrict__ part, half* smem) {
    constexpr int RS = Tl::RSTEP;
    const int pool = pool_arg & 1;
    unsigned char* st = wg_stages(smem);
    const long long M = fwd_gemm_rows(N, H, W, pool);
    const long long m0 = (long long)blockIdx.x * Tl::TM;
    const int n0 = blockIdx.y * Tl::TN, r0 = threadIdx.x >> 3;
    TapRows<Tl::TM / RS> rows;
    fwd_tap_rows(rows, m0 + r0, RS, M, H, W, pool, cin);
    float acc[1][Tl::NJ][4];
    wg_conv_gemm<Tl, CX>(acc, st, a, cin, W, rows, wf, cout, n0);
    if (pool_arg & 2)
        conv_fwd_epilogue<Tl>(acc, m0, n0, M, cout, pool, y, argmax, part,
                              wg_spare_stage<double, Tl>(st, CEIL_DIV(9 * cin, WK)));
    else
        conv_fwd_epilogue_smem<Tl>(acc, st, m0, n0, M, cout, pool, y, argmax, part, blockIdx.x, gridDim.x);
}

// The implicit GEMM of wg_tap_gemm (A = the 3×3 tap gather of src, C channels; B = wb [nb][9·C]
// K-major, columns n0 = blockIdx.y·TN..) in a persistent block: grid (G, ceil(nb/TN)) with G ≤
// the ⌈M/TM⌉ row tiles (the host: one block per SM); block x computes tiles x, x + G, … through
// one wg_pipeline_tiles, so each tile's first copies are in flight during the previous tile's
// epilogue, and no tile pays a block launch or a pipeline fill. set_rows(rows, first): the
// TapRows of GEMM rows first + RSTEP·i; epi(tile, tiles, acc, spare): tile's epilogue (its
// first row tile·TM; spare: a free stage).
template <class Tl, class SetRows, class Epi>
__device__ __forceinline__ void wg_persistent_gemm(unsigned char* st, const half* __restrict__ src, int C, int W,
                                                   long long M, const half* __restrict__ wb, int nb, SetRows set_rows,
                                                   Epi epi) {
    constexpr int RS = Tl::RSTEP;
    const int tiles = (int)CEIL_DIV(M, (long long)Tl::TM), bx = blockIdx.x, gx = gridDim.x;
    const int mine = bx < tiles ? CEIL_DIV(tiles - bx, gx) : 0;
    const int tid = threadIdx.x, r0 = tid >> 3, kc = (tid & 7) * 8, n0 = blockIdx.y * Tl::TN;
    const int dst = r0 * 64 + (((tid & 7) ^ (r0 & 7)) * 8);  // halves into a stage's A (or B) rows
    TapRows<Tl::TM / RS> rows;
    KCursor kq(kc, C);
    const WgRowsB<Tl> b(wb, nb, n0, 9 * C);
    auto issue = [&](int j, int t, int s) {
        if (t == 0) {  // tile j's rows (every copy of the tile before it was issued already)
            set_rows(rows, (long long)(bx + j * gx) * Tl::TM + r0);
            kq = KCursor(kc, C);
        }
        half* as = reinterpret_cast<half*>(st + s * Tl::STAGE);
        half* bs = reinterpret_cast<half*>(st + s * Tl::STAGE + Tl::A_BYTES);
        rows.template copy<RS * 64>(as + dst, src, kq.tap, kq.c, C, W);
        b.copy(t, s, bs, dst);
        kq.template advance<WK>(C);
    };
    float acc[1][Tl::NJ][4];
    wg_pipeline_tiles<Tl>(acc, st, CEIL_DIV(9 * C, WK), mine, issue,
                          [&](int j, const float (&d)[1][Tl::NJ][4], unsigned char* spare) {
                              epi(bx + j * gx, tiles, d, spare);
                          });
}

// conv_fwd_wg's contract (CX = 1) in persistent blocks (wg_persistent_gemm). part: [2·cout]
// [⌈M/TM⌉] (the tile's column, as conv_fwd_wg's with one block per tile).
template <class Tl>
__device__ __forceinline__ void conv_fwd_wg_persistent(const half* __restrict__ a, int N, int H, int W, int cin,
                                                       const half* __restrict__ wf, int cout, int pool,
                                                       half* __restrict__ y, unsigned char* __restrict__ argmax,
                                                       double* __restrict__ part, half* smem) {
    const long long M = fwd_gemm_rows(N, H, W, pool);
    // the register epilogue (the stages hold the next tile's copies): rows in lane_pool_row<16>'s order
    auto set_rows = [&](TapRows<Tl::TM / Tl::RSTEP>& rows, long long first) {
        fwd_tap_rows<Tl::TM / Tl::RSTEP, 16>(rows, first, Tl::RSTEP, M, H, W, pool, cin);
    };
    auto epi = [&](int tile, int tiles, const float (&acc)[1][Tl::NJ][4], unsigned char* spare) {
        conv_fwd_epilogue<Tl, true>(acc, (long long)tile * Tl::TM, blockIdx.y * Tl::TN, M, cout, pool, y, argmax,
                                    part, reinterpret_cast<double (*)[Tl::TN][2]>(spare), tile, tiles);
    };
    wg_persistent_gemm<Tl>(wg_stages(smem), a, cin, W, M, wf, cout, set_rows, epi);
}

// conv_dgrad_wg's contract (CX = 1) in persistent blocks (wg_persistent_gemm). The epilogue's
// sums read x and the parameters from global memory (DgradGlobalX: the stages still hold the
// next tile's copies, so there is no room to stage x as conv_dgrad_wg does). part: [2·cin]
// [⌈P/TM⌉].
template <class Tl>
__device__ __forceinline__ void conv_dgrad_wg_persistent(const half* __restrict__ g, int N, int H, int W, int cin,
                                                         int cout, const half* __restrict__ wk, half* __restrict__ da,
                                                         const half* __restrict__ x, const float* __restrict__ pmean,
                                                         const float* __restrict__ pinv,
                                                         const float* __restrict__ pshift, int bn,
                                                         float* __restrict__ part, half* smem) {
    const long long M = (long long)N * H * W;
    auto set_rows = [&](TapRows<Tl::TM / Tl::RSTEP>& rows, long long first) {
        pixel_tap_rows(rows, first, Tl::RSTEP, M, H, W, cout);
    };
    auto epi = [&](int tile, int tiles, const float (&acc)[1][Tl::NJ][4], unsigned char* spare) {
        const long long m0 = (long long)tile * Tl::TM;
        const int n0 = blockIdx.y * Tl::TN;
        conv_dgrad_epilogue<Tl>(acc, m0, n0, M, cin, da, DgradGlobalX{x, pmean, pinv, pshift, bn, cin, n0, m0}, part,
                                reinterpret_cast<float (*)[Tl::TN][2]>(spare), tile, tiles);
    };
    wg_persistent_gemm<Tl>(wg_stages(smem), g, cout, W, M, wk, cin, set_rows, epi);
}

// The input gradient's epilogue inputs into shared memory (DgradSharedX's layout at st), once
// the main loop is done: the block's TM × TN tile of x in 16-byte copies (zeros past M and cin),
// and the pre's parameters per column. On the 128×256 wgmma tile (8 warps per SM) the epilogue's
// 32 column pairs each waited for their own global loads of x before (tenth session's bench:
// the sums cost that kernel as much as its GEMM); here the block waits once.
template <class Tl>
__device__ __forceinline__ void dgrad_stage_x(unsigned char* st, const half* __restrict__ x,
                                              const float* __restrict__ pmean, const float* __restrict__ pinv,
                                              const float* __restrict__ pshift, int bn, long long m0, int n0,
                                              long long M, int cin) {
    using S = DgradSharedX<Tl>;
    constexpr int CPR = Tl::TN / 8, CHUNKS = Tl::TM * CPR;  // 16-byte chunks per row, in the tile
    static_assert(S::BYTES <= Tl::STAGES * Tl::STAGE, "the staged tile fits the pipeline's stages");
    static_assert(CHUNKS % Tl::THREADS == 0 && S::ROW % 16 == 0 && Tl::TN <= Tl::THREADS,
                  "whole copy rounds, 16-byte aligned rows, one column's parameters per thread");
    __syncthreads();  // every warpgroup's wgmma groups retired: the stages are free
#pragma unroll
    for (int i = 0; i < CHUNKS / Tl::THREADS; i++) {
        const int k = threadIdx.x + i * Tl::THREADS, r = k / CPR, ch = k % CPR;
        const long long m = m0 + r;
        const int c = n0 + ch * 8;
        const bool ok = m < M && c < cin;
        cp_async16(reinterpret_cast<half*>(st + r * S::ROW + ch * 16), x + (ok ? m * cin + c : 0), ok ? 16 : 0);
    }
    cp_async_commit();
    float* par = reinterpret_cast<float*>(st + S::PAR);
    const DgradGlobalX gx{x, pmean, pinv, pshift, bn, cin, n0, m0};
    const int col = threadIdx.x;
    if (col < Tl::TN) gx.params(col, par[col], par[Tl::TN + col], par[2 * Tl::TN + col]);
    cp_async_wait<0>();
    __syncthreads();
}

// The input gradient's epilogue with pre_bwd's sums as a loop over shared memory (after
// dgrad_stage_x, whose staged x and parameters it reads; conv_fwd_epilogue_smem's scheme): da
// goes to the stages as fp16 rows (the sums read the rounded da, as conv_dgrad_epilogue's do),
// then each thread takes one 8-channel chunk of every RG-th row, stores it (16 bytes) and adds
// du and du·x̂ per channel in f32; the row groups' sums are added in order per channel into part.
// da equals conv_dgrad_epilogue's bit for bit, the sums to f32 rounding (another order).
template <class Tl>
__device__ __forceinline__ void conv_dgrad_sums_smem(const float (&acc)[1][Tl::NJ][4], unsigned char* st,
                                                     long long m0, int n0, long long M, int cin,
                                                     half* __restrict__ da, float* __restrict__ part) {
    using S = DgradSharedX<Tl>;
    constexpr int LD = Tl::TN + 8, CC = Tl::TN / 8, RG = Tl::THREADS / CC;
    constexpr int DA = S::BYTES, RED = DA + Tl::TM * LD * 2;
    static_assert(Tl::THREADS % CC == 0 && DA % 16 == 0 && RED % 16 == 0, "whole row groups, aligned regions");
    static_assert(RED + RG * Tl::TN * 8 <= Tl::STAGES * Tl::STAGE, "x, da and the sums fit the stages");
    half* ds = reinterpret_cast<half*>(st + DA);
    const int tid = threadIdx.x;
    mma_epilogue<Tl>(acc, [&](int row, int col, float v0, float v1) {
        *reinterpret_cast<unsigned*>(ds + row * LD + col) = pack_half2(__float2half(v0), __float2half(v1));
    });
    __syncthreads();
    const int cc = tid % CC, rg = tid / CC, c0 = n0 + 8 * cc;
    float su[8], sx[8];
#pragma unroll
    for (int c = 0; c < 8; c++) su[c] = sx[c] = 0.f;
    if (c0 < cin) {
        const float* par = reinterpret_cast<const float*>(st + S::PAR);
        float mean[8], inv[8], shift[8];
#pragma unroll
        for (int c = 0; c < 8; c++) {
            mean[c] = par[8 * cc + c];
            inv[c] = par[Tl::TN + 8 * cc + c];
            shift[c] = par[2 * Tl::TN + 8 * cc + c];
        }
#pragma unroll 1
        for (int r = rg; r < Tl::TM && m0 + r < M; r += RG) {
            Half8 dv, xv;
            dv.u = *reinterpret_cast<const uint4*>(ds + r * LD + 8 * cc);
            xv.u = *reinterpret_cast<const uint4*>(st + r * S::ROW + cc * 16);
            *reinterpret_cast<uint4*>(da + (m0 + r) * cin + c0) = dv.u;
#pragma unroll
            for (int c = 0; c < 8; c++) {
                float xhat;
                const float du = pre_du(__half2float(dv.h[c]), __half2float(xv.h[c]), mean[c], inv[c], shift[c], 1, xhat);
                su[c] += du;
                sx[c] += du * xhat;
            }
        }
    }
    row_group_partials<float, Tl, RG>(reinterpret_cast<float (*)[Tl::TN][2]>(st + RED), su, sx, cc, rg, n0, cin, part,
                                      blockIdx.x, gridDim.x);
}

// conv_dgrad_mma's contract on wgmma, with B = wk [cin][9·cout] (conv_weights_f16, kmajor = 1:
// wk[ci][(8 − tap)·cout + o] = w[o][tap][ci]). grid (ceil(P/TM), ceil(cin/TN)), block THREADS.
// CX: as conv_fwd_wg's (wk in mc_tiled_index's layout).
template <class Tl, int CX = 1>
__device__ __forceinline__ void conv_dgrad_wg(const half* __restrict__ g, int N, int H, int W, int cin, int cout,
                                              const half* __restrict__ wk, half* __restrict__ da,
                                              const half* __restrict__ x, const float* __restrict__ pmean,
                                              const float* __restrict__ pinv, const float* __restrict__ pshift,
                                              int bn, float* __restrict__ part, half* smem) {
    constexpr int RS = Tl::RSTEP;
    unsigned char* st = wg_stages(smem);
    const long long M = (long long)N * H * W;
    const long long m0 = (long long)blockIdx.x * Tl::TM;
    const int n0 = blockIdx.y * Tl::TN, r0 = threadIdx.x >> 3;
    TapRows<Tl::TM / RS> rows;
    pixel_tap_rows(rows, m0 + r0, RS, M, H, W, cout);
    float acc[1][Tl::NJ][4];
    wg_conv_gemm<Tl, CX>(acc, st, g, cout, W, rows, wk, cin, n0);
    if (!part || !da) {
        conv_dgrad_epilogue<Tl>(acc, m0, n0, M, cin, da, DgradGlobalX{}, nullptr, nullptr);
        return;
    }
    // bn & 4 (the bench's "register epilogue" lines): conv_dgrad_epilogue instead of the loop
    const DgradSharedX<Tl> xs{st};
    dgrad_stage_x<Tl>(st, x, pmean, pinv, pshift, bn & 3, m0, n0, M, cin);
    if (bn & 4)
        conv_dgrad_epilogue<Tl>(acc, m0, n0, M, cin, da, xs, part, xs.red());
    else
        conv_dgrad_sums_smem<Tl>(acc, st, m0, n0, M, cin, da, part);
}

// conv_wgrad_mma's contract (out [slices][cout][9·cin], slice z the pixels [z·chunk, ...),
// M = 9·cin, N = cout, K = pixels) on wgmma, both operands MN-major as they lie in memory: A's
// k row (pixel p) holds kw = m0..m0+TM−1, i.e. a at the pixel p + off(tap) (8 channels of one
// tap per copy), B's k row holds g[p][o0..o0+TN−1]. grid (ceil(9·cin/TM), ceil(cout/TN),
// slices), block THREADS (256: TM = 128, TN = 256 or 64).
template <class Tl>
__device__ __forceinline__ void conv_wgrad_wg(const half* __restrict__ a, int N, int H, int W, int cin,
                                              const half* __restrict__ g, int cout, float* __restrict__ out, int chunk,
                                              half* smem) {
    static_assert(Tl::TM == 128 && Tl::THREADS == 256 && Tl::TN % 64 == 0, "wgrad copy mapping");
    // column blocks of A and B; B: chunks per k row, k rows per pass of the block, passes
    constexpr int AB = Tl::TM / 64, BB = Tl::TN / 64, CPR = Tl::TN / 8, RPP = Tl::THREADS / CPR, NB = WK / RPP;
    unsigned char* st = wg_stages(smem);
    const int tid = threadIdx.x, K = 9 * cin;
    const long long P = (long long)N * H * W;
    const long long p_begin = (long long)blockIdx.z * chunk;
    const long long p_end = min(P, p_begin + chunk);
    const int m0 = blockIdx.x * Tl::TM, o0 = blockIdx.y * Tl::TN, pend = (int)p_end;
    // A: 8 columns kw = m0 + 8·ac (one tap, 8 channels) of k rows ar + 16i (i < 4)
    const int ac = tid & 15, ar = tid >> 4;
    const int kw = m0 + 8 * ac;
    const bool kwok = kw < K;
    const int tap = kwok ? kw / cin : 0, ci = kw - tap * cin;
    const int ody = tap / 3 - 1, odx = tap % 3 - 1, coff = (ody * W + odx) * cin + ci;
    // byte offsets in a stage: k row r = ar + 16i is in k group r / 8 = ar / 8 + 2i, atom row r % 8
    const unsigned adst = ((ar >> 3) * AB + (ac >> 3)) * 1024 + (ar & 7) * 128 + (((ac & 7) ^ (ar & 7)) << 4);
    // B: 8 columns o = o0 + 8·bc of k rows br + RPP·i (i < NB; RPP a multiple of 8)
    const int bc = tid % CPR, br = tid / CPR;
    const bool ook = o0 + 8 * bc < cout;
    const unsigned bdst = ((br >> 3) * BB + (bc >> 3)) * 1024 + (br & 7) * 128 + (((bc & 7) ^ (br & 7)) << 4);
    // the A rows' pixels as (y, x), moved WK pixels per issue as conv_wgrad_mma moves them by MK
    int ry[4], rx[4];
    {
        const PixGrid pg(H, W);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int n;
            bool ok;
            pg.at((int)p_begin + ar + 16 * i, pend, n, ry[i], rx[i], ok);
        }
    }
    const int step_x = WK % W, step_y = (WK / W) % H;
    auto issue = [&](int t, int s) {
        unsigned char* as = st + s * Tl::STAGE;
        unsigned char* bs = as + Tl::A_BYTES;
        const int pb = (int)p_begin + t * WK;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int p = pb + ar + 16 * i;
            const bool ok = kwok && p < pend && (unsigned)(ry[i] + ody) < (unsigned)H &&
                            (unsigned)(rx[i] + odx) < (unsigned)W;
            cp_async16(reinterpret_cast<half*>(as + adst + 2 * i * AB * 1024),
                       a + (ok ? (unsigned)(p * cin + coff) : 0u), ok ? 16 : 0);
            rx[i] += step_x;
            const bool carry = rx[i] >= W;
            rx[i] -= carry ? W : 0;
            ry[i] += step_y + carry;
            ry[i] -= ry[i] >= H ? H : 0;
        }
#pragma unroll
        for (int i = 0; i < NB; i++) {
            const int p = pb + br + RPP * i;
            const bool ok = ook && p < pend;
            cp_async16(reinterpret_cast<half*>(bs + bdst + i * (RPP / 8) * BB * 1024),
                       g + (ok ? (unsigned)(p * cout + o0 + 8 * bc) : 0u), ok ? 16 : 0);
        }
    };
    const long long span = p_end > p_begin ? p_end - p_begin : 0;
    float acc[1][Tl::NJ][4];
    wg_pipeline<Tl, true>(acc, st, (int)CEIL_DIV(span, (long long)WK), issue);
    conv_wgrad_epilogue<Tl>(acc, m0, o0, K, cout, out);
}

// The body of an exported sm_90a kernel: the call on the launch's dynamic shared memory
// (conv_smem) where the file is compiled for sm_90a, a trap elsewhere (the host launches these
// kernels on compute capability 9.0 only).
#if ARCH_SM90A
#define SM90A_BODY(...)                    \
    do {                                   \
        extern __shared__ half conv_smem[]; \
        __VA_ARGS__;                       \
    } while (0)
#else
#define SM90A_BODY(...) __trap()
#endif
extern "C" __global__ void __launch_bounds__(256, 1) conv3x3_fwd_wgmma_f16(CONV_FWD_PARAMS) {
    pdl_entry();
    SM90A_BODY(conv_fwd_wg<WgWide>(a, N, H, W, cin, wf, cout, pool, y, argmax, part, conv_smem));
}
// The 128×256 forward and input gradient with the weights multicast in clusters of 2 (_mc_) or
// 4 (_mc4_) CTAs (B from conv_weights_f16's layout 2), WG_MC_SMEM bytes: the grid's x padded to
// whole clusters (an extra block's rows are past M: it only copies its part of the weights and
// writes zero partials).
extern "C" __global__ void CLUSTER_X2 __launch_bounds__(256, 1) conv3x3_fwd_wgmma_mc_f16(CONV_FWD_PARAMS) {
    pdl_entry();
    SM90A_BODY(conv_fwd_wg<WgWide, 2>(a, N, H, W, cin, wf, cout, pool, y, argmax, part, conv_smem));
}
extern "C" __global__ void CLUSTER_X2 __launch_bounds__(256, 1) conv3x3_dgrad_wgmma_mc_f16(CONV_DGRAD_PARAMS) {
    pdl_entry();
    SM90A_BODY(conv_dgrad_wg<WgWide, 2>(g, N, H, W, cin, cout, wt, da, x, pmean, pinv, pshift, bn, part, conv_smem));
}
extern "C" __global__ void CLUSTER_X4 __launch_bounds__(256, 1) conv3x3_fwd_wgmma_mc4_f16(CONV_FWD_PARAMS) {
    pdl_entry();
    SM90A_BODY(conv_fwd_wg<WgWide, 4>(a, N, H, W, cin, wf, cout, pool, y, argmax, part, conv_smem));
}
extern "C" __global__ void CLUSTER_X4 __launch_bounds__(256, 1) conv3x3_dgrad_wgmma_mc4_f16(CONV_DGRAD_PARAMS) {
    pdl_entry();
    SM90A_BODY(conv_dgrad_wg<WgWide, 4>(g, N, H, W, cin, cout, wt, da, x, pmean, pinv, pshift, bn, part, conv_smem));
}
extern "C" __global__ void __launch_bounds__(512, 1) conv3x3_fwd_wgmma_tall_f16(CONV_FWD_PARAMS) {
    pdl_entry();
    SM90A_BODY(conv_fwd_wg<WgTall>(a, N, H, W, cin, wf, cout, pool, y, argmax, part, conv_smem));
}
extern "C" __global__ void __launch_bounds__(256, 1) conv3x3_dgrad_wgmma_f16(CONV_DGRAD_PARAMS) {
    pdl_entry();
    SM90A_BODY(conv_dgrad_wg<WgWide>(g, N, H, W, cin, cout, wt, da, x, pmean, pinv, pshift, bn, part, conv_smem));
}
extern "C" __global__ void __launch_bounds__(512, 1) conv3x3_dgrad_wgmma_tall_f16(CONV_DGRAD_PARAMS) {
    pdl_entry();
    SM90A_BODY(conv_dgrad_wg<WgTall>(g, N, H, W, cin, cout, wt, da, x, pmean, pinv, pshift, bn, part, conv_smem));
}
extern "C" __global__ void __launch_bounds__(512, 1) conv3x3_dgrad_wgmma_tall32_f16(CONV_DGRAD_PARAMS) {
    pdl_entry();
    SM90A_BODY(conv_dgrad_wg<WgTall32>(g, N, H, W, cin, cout, wt, da, x, pmean, pinv, pshift, bn, part, conv_smem));
}
extern "C" __global__ void __launch_bounds__(256, 1) conv3x3_wgrad_wgmma_f16(CONV_WGRAD_PARAMS) {
    pdl_entry();
    SM90A_BODY(conv_wgrad_wg<WgWide>(a, N, H, W, cin, g, cout, out, chunk, conv_smem));
}
extern "C" __global__ void __launch_bounds__(256, 2) conv3x3_wgrad_wgmma_narrow_f16(CONV_WGRAD_PARAMS) {
    pdl_entry();
    SM90A_BODY(conv_wgrad_wg<WgNarrow>(a, N, H, W, cin, g, cout, out, chunk, conv_smem));
}
// Two blocks per SM (wgmma2): 128×64 where n < 128, 128×128 in 3 stages where n ≥ 128
extern "C" __global__ void __launch_bounds__(256, 2) conv3x3_fwd_wgmma_narrow_f16(CONV_FWD_PARAMS) {
    pdl_entry();
    SM90A_BODY(conv_fwd_wg<WgNarrow>(a, N, H, W, cin, wf, cout, pool, y, argmax, part, conv_smem));
}
extern "C" __global__ void __launch_bounds__(256, 2) conv3x3_dgrad_wgmma_narrow_f16(CONV_DGRAD_PARAMS) {
    pdl_entry();
    SM90A_BODY(conv_dgrad_wg<WgNarrow>(g, N, H, W, cin, cout, wt, da, x, pmean, pinv, pshift, bn, part, conv_smem));
}
// Persistent (wgmmap): the 128×256 and 256×64 forwards and input gradients, one block per SM
// looping over the row tiles
extern "C" __global__ void __launch_bounds__(256, 1) conv3x3_fwd_wgmma_p_f16(CONV_FWD_PARAMS) {
    pdl_entry();
    SM90A_BODY(conv_fwd_wg_persistent<WgWide>(a, N, H, W, cin, wf, cout, pool, y, argmax, part, conv_smem));
}
extern "C" __global__ void __launch_bounds__(512, 1) conv3x3_fwd_wgmma_p_tall_f16(CONV_FWD_PARAMS) {
    pdl_entry();
    SM90A_BODY(conv_fwd_wg_persistent<WgTall>(a, N, H, W, cin, wf, cout, pool, y, argmax, part, conv_smem));
}
extern "C" __global__ void __launch_bounds__(256, 1) conv3x3_dgrad_wgmma_p_f16(CONV_DGRAD_PARAMS) {
    pdl_entry();
    SM90A_BODY(conv_dgrad_wg_persistent<WgWide>(g, N, H, W, cin, cout, wt, da, x, pmean, pinv, pshift, bn, part,
                                                conv_smem));
}
extern "C" __global__ void __launch_bounds__(512, 1) conv3x3_dgrad_wgmma_p_tall_f16(CONV_DGRAD_PARAMS) {
    pdl_entry();
    SM90A_BODY(conv_dgrad_wg_persistent<WgTall>(g, N, H, W, cin, cout, wt, da, x, pmean, pinv, pshift, bn, part,
                                                conv_smem));
}
extern "C" __global__ void __launch_bounds__(256, 2) conv3x3_fwd_wgmma2_f16(CONV_FWD_PARAMS) {
    pdl_entry();
    SM90A_BODY(conv_fwd_wg<WgWide2>(a, N, H, W, cin, wf, cout, pool, y, argmax, part, conv_smem));
}
extern "C" __global__ void __launch_bounds__(256, 2) conv3x3_dgrad_wgmma2_f16(CONV_DGRAD_PARAMS) {
    pdl_entry();
    SM90A_BODY(conv_dgrad_wg<WgWide2>(g, N, H, W, cin, cout, wt, da, x, pmean, pinv, pshift, bn, part, conv_smem));
}
extern "C" __global__ void __launch_bounds__(256, 2) conv3x3_wgrad_wgmma2_f16(CONV_WGRAD_PARAMS) {
    pdl_entry();
    SM90A_BODY(conv_wgrad_wg<WgWide2>(a, N, H, W, cin, g, cout, out, chunk, conv_smem));
}
