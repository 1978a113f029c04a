// norm.cu: per-channel reductions over N·H·W of NHWC fp16 tensors and the elementwise maps
// that use them: BatchNorm statistics (training and eval) and the backward of
// a = GELU(pre(x)) (`pre_bwd` in src/backend.rs). All reductions are two-stage and
// deterministic: stage 1 writes per-block partial sums, stage 2 adds them in a fixed order in f64.
//
// Exported kernels. Stage 1 (bn_reduce_f16: grid (blocks, ceil(C/32)), block (32, 8)): thread
// (tx, ty) owns channel blockIdx.y·32 + tx and every 8th pixel of the block's slice of `chunk`
// pixels (chan_reduce_f16: 8 channels per thread, below). Every part is channel-major,
// [2·C][blocks] (first-sum rows, then second-sum rows): the layout the mma conv epilogues write
// too (conv.cu), so one stage 2 serves both. Stage 2 (grid C, block CHAN_FIN_THREADS): block c
// adds row c and row C + c (coalesced) in f64 in a fixed order.
//   bn_reduce_f16     stage 1 of the BatchNorm statistics in ONE read of y: Σy and Σy² in f64
//                     (the fp16 values and their squares are exact in f64, so the sums are
//                     exact to ~1e-16 relative and var = E[y²] − mean² loses nothing that matters).
//   bn_reduce8_f16    the same partials, bit for bit, in 16-byte loads: block (C/8, 8), thread
//                     (g, ty) takes channels 8g..8g+7 of bn_reduce_f16's ty rows (C % 8 == 0,
//                     C ≤ 256; the host takes bn_reduce_f16 elsewhere).
//   bn_finalize_f32   stage 2: bn = [mean | 1/√(var + eps)] (biased var), running stats blended
//                     with the unbiased var: running ← momentum·running + (1 − momentum)·batch.
//   bn_eval_f32       bn = [running_mean | 1/√(running_var + eps)]. C threads.
//   chan_reduce_f16   stage 1 of pre_bwd: Σdu and Σdu·x̂ (f32 per thread) with du = da·GELU′(pre(x)),
//                     x̂ = (x − mean)·invstd (x for the bias). Grid (blocks, 1), block
//                     CHAN_REDUCE_THREADS, C % 8 == 0, C ≤ 8·CHAN_REDUCE_THREADS: thread t takes
//                     channels g·8..g·8+7 (g = t mod C/8) of rows p0 + r, p0 + r + R, … of the
//                     block's slice (r = t div C/8, R = CHAN_REDUCE_THREADS div C/8 rows at a time,
//                     threads past that idle), in 16-byte loads of da and x; the block adds its R
//                     row sums per channel in row order.
//   pre_bwd_sums_f32  stage 2 of pre_bwd (from chan_reduce_f16 or the mma dgrad epilogue):
//                     sums = [Σdu | Σdu·x̂] (2·C f32).
//   pre_bwd_dx_f16    from sums: dshift[c] = Σdu (threads c < C, if dshift), and for i < len
//                     dx = invstd·(du − mean(du) − x̂·mean(du·x̂)) (BN) or du (bias). 8 channels
//                     per chunk (C % 8 == 0, len/8 < 2^31), a thread's chunks in a stride that
//                     keeps its channels; any grid with ≥ C threads (the host: ≈ 4 chunks each).
//                     With am (x a max-pool's output, am its picks as conv3x3_fwd writes them):
//                     dx unpooled, at the pool input's H × W (N·H·W·C values): each value at its
//                     pick, zeros at the window's other three pixels and on the dropped odd last
//                     row/column (unpool_f16's output, without the pooled dx in between).
//   cast_f32_f16, cast_f16_f32  storage casts (a host upload is f32). 1 thread/element.
#include "common.cuh"

#define CHAN_FIN_THREADS 256  // stage-2 block size (the host launches them so)
#define CHAN_REDUCE_THREADS 256  // chan_reduce_f16's block size (the host launches it so)

// Stage-1 epilogue of a (32, 8) block: thread (tx, ty) holds the sums a0, a1 of channel c over
// its rows; the 8 rows are added in order and written to part[c][block] and part[C + c][block].
template <typename T> __device__ __forceinline__ void store_pair(T a0, T a1, int C, int c, T* __restrict__ part) {
    __shared__ T s0[8][32], s1[8][32];
    const int tx = threadIdx.x, ty = threadIdx.y;
    s0[ty][tx] = a0;
    s1[ty][tx] = a1;
    __syncthreads();
    if (ty == 0 && c < C) {
        T t0 = 0, t1 = 0;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            t0 += s0[j][tx];
            t1 += s1[j][tx];
        }
        part[(long long)c * gridDim.x + blockIdx.x] = t0;
        part[(long long)(C + c) * gridDim.x + blockIdx.x] = t1;
    }
}

// Stage 2 for channel c = blockIdx.x of a [2·C][blocks] part: returns (in thread 0; the others
// get partial values) the f64 sums of rows c and C + c, added in a fixed order.
template <typename T>
__device__ __forceinline__ void chan_block_sums(const T* __restrict__ part, int blocks, int C, double& s, double& q) {
    __shared__ double s0[CHAN_FIN_THREADS], s1[CHAN_FIN_THREADS];
    const int c = blockIdx.x, t = threadIdx.x;
    const T* ps = part + (long long)c * blocks;
    const T* pq = part + (long long)(C + c) * blocks;
    double a = 0.0, b = 0.0;
    for (int i = t; i < blocks; i += CHAN_FIN_THREADS) {
        a += (double)ps[i];
        b += (double)pq[i];
    }
    s0[t] = a;
    s1[t] = b;
    __syncthreads();
    for (int h = CHAN_FIN_THREADS / 2; h > 0; h >>= 1) {  // fixed-order tree: deterministic
        if (t < h) {
            s0[t] += s0[t + h];
            s1[t] += s1[t + h];
        }
        __syncthreads();
    }
    s = s0[0];
    q = s1[0];
}

extern "C" __global__ void chan_reduce_f16(const half* __restrict__ x, const half* __restrict__ da, long long P, int C,
                                           long long chunk, const float* __restrict__ pmean,
                                           const float* __restrict__ pinv, const float* __restrict__ pshift, int bn,
                                           float* __restrict__ part) {
    pdl_entry();
    // [r][c] per row group r < R: R·C = (CHAN_REDUCE_THREADS / G)·8·G ≤ 8·CHAN_REDUCE_THREADS
    __shared__ float s0[8 * CHAN_REDUCE_THREADS], s1[8 * CHAN_REDUCE_THREADS];
    const int G = C >> 3, R = CHAN_REDUCE_THREADS / G, t = threadIdx.x, g = t % G, r = t / G;
    const long long p0 = (long long)blockIdx.x * chunk;
    const long long p1 = min(P, p0 + chunk);
    if (r < R) {
        float mean[8], inv[8], shift[8], a0[8], a1[8];
#pragma unroll
        for (int j = 0; j < 8; j++) {
            const int c = g * 8 + j;
            mean[j] = (bn && pmean) ? pmean[c] : 0.f;
            inv[j] = (bn && pinv) ? pinv[c] : 1.f;
            shift[j] = pshift ? pshift[c] : 0.f;
            a0[j] = 0.f;
            a1[j] = 0.f;
        }
#pragma unroll 4
        for (long long p = p0 + r; p < p1; p += R) {
            Half8 a, v;
            a.u = *reinterpret_cast<const uint4*>(da + p * C + g * 8);
            v.u = *reinterpret_cast<const uint4*>(x + p * C + g * 8);
#pragma unroll
            for (int j = 0; j < 8; j++) {
                float xhat;
                const float du = pre_du(__half2float(a.h[j]), __half2float(v.h[j]), mean[j], inv[j], shift[j], bn, xhat);
                a0[j] += du;
                a1[j] += du * xhat;
            }
        }
#pragma unroll
        for (int j = 0; j < 8; j++) {
            s0[r * C + g * 8 + j] = a0[j];
            s1[r * C + g * 8 + j] = a1[j];
        }
    }
    __syncthreads();
    for (int c = t; c < C; c += CHAN_REDUCE_THREADS) {
        float t0 = 0.f, t1 = 0.f;
        for (int q = 0; q < R; q++) {
            t0 += s0[q * C + c];
            t1 += s1[q * C + c];
        }
        part[(long long)c * gridDim.x + blockIdx.x] = t0;
        part[(long long)(C + c) * gridDim.x + blockIdx.x] = t1;
    }
}

extern "C" __global__ void bn_reduce_f16(const half* __restrict__ y, long long P, int C, long long chunk,
                                         double* __restrict__ part) {
    pdl_entry();
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int c = blockIdx.y * 32 + tx;
    const long long p0 = (long long)blockIdx.x * chunk;
    const long long p1 = min(P, p0 + chunk);
    double a0 = 0.0, a1 = 0.0;
    if (c < C)
        for (long long p = p0 + ty; p < p1; p += 8) {
            const double v = (double)__half2float(y[p * C + c]);
            a0 += v;
            a1 += v * v;
        }
    store_pair(a0, a1, C, c, part);
}

// bn_reduce_f16's partials with 8 channels per thread: the same rows per ty in the same order
// (p0 + ty, p0 + ty + 8, …), the same f64 operations, the 8 row phases added in the same order,
// so the same bits; a warp now loads 512 bytes per row step instead of 64 (2-byte loads
// 32 channels to a warp were latency-bound: ≈ 1.9 TB/s on the H200), and 4 row steps' loads are
// in flight at once.
extern "C" __global__ void bn_reduce8_f16(const half* __restrict__ y, long long P, int C, long long chunk,
                                          double* __restrict__ part) {
    pdl_entry();
    __shared__ double s0[8][256], s1[8][256];
    const int g = threadIdx.x, ty = threadIdx.y, c0 = 8 * g;
    if (C % 8 || C > 256 || (int)blockDim.x * 8 != C || blockDim.y != 8) __trap();
    const long long p0 = (long long)blockIdx.x * chunk;
    const long long p1 = min(P, p0 + chunk);
    double a0[8], a1[8];
#pragma unroll
    for (int j = 0; j < 8; j++) a0[j] = a1[j] = 0.0;
    for (long long p = p0 + ty; p < p1; p += 32) {
        Half8 v[4];
#pragma unroll
        for (int u = 0; u < 4; u++)
            if (p + 8 * u < p1) v[u].u = *reinterpret_cast<const uint4*>(y + (p + 8 * u) * C + c0);
#pragma unroll
        for (int u = 0; u < 4; u++) {
            if (p + 8 * u >= p1) break;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const double d = (double)__half2float(v[u].h[j]);
                a0[j] += d;
                a1[j] += d * d;
            }
        }
    }
#pragma unroll
    for (int j = 0; j < 8; j++) {
        s0[ty][c0 + j] = a0[j];
        s1[ty][c0 + j] = a1[j];
    }
    __syncthreads();
    if (ty == 0) {
#pragma unroll
        for (int j = 0; j < 8; j++) {
            double t0 = 0, t1 = 0;
#pragma unroll
            for (int r = 0; r < 8; r++) {
                t0 += s0[r][c0 + j];
                t1 += s1[r][c0 + j];
            }
            part[(long long)(c0 + j) * gridDim.x + blockIdx.x] = t0;
            part[(long long)(C + c0 + j) * gridDim.x + blockIdx.x] = t1;
        }
    }
}

extern "C" __global__ void __launch_bounds__(CHAN_FIN_THREADS)
bn_finalize_f32(const double* __restrict__ part, int blocks, int C, long long count, float eps, float momentum,
                float* __restrict__ running_mean, float* __restrict__ running_var, float* __restrict__ bn) {
    pdl_entry();
    double s, q;
    chan_block_sums(part, blocks, C, s, q);
    const int c = blockIdx.x;
    if (threadIdx.x != 0 || c >= C) return;
    const double cnt = (double)count, m = (double)momentum;
    const double mean = s / cnt;
    const double var = fmax(q / cnt - mean * mean, 0.0);
    bn[c] = (float)mean;
    bn[C + c] = (float)(1.0 / sqrt(var + (double)eps));
    running_mean[c] = (float)(m * (double)running_mean[c] + (1.0 - m) * mean);
    running_var[c] = (float)(m * (double)running_var[c] + (1.0 - m) * var * cnt / (cnt - 1.0));
}

extern "C" __global__ void bn_eval_f32(const float* __restrict__ running_mean, const float* __restrict__ running_var,
                                       int C, float eps, float* __restrict__ bn) {
    pdl_entry();
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    bn[c] = running_mean[c];
    bn[C + c] = (float)(1.0 / sqrt((double)running_var[c] + (double)eps));
}

extern "C" __global__ void __launch_bounds__(CHAN_FIN_THREADS)
pre_bwd_sums_f32(const float* __restrict__ part, int blocks, int C, float* __restrict__ sums) {
    pdl_entry();
    double s, q;
    chan_block_sums(part, blocks, C, s, q);
    const int c = blockIdx.x;
    if (threadIdx.x != 0 || c >= C) return;
    sums[c] = (float)s;
    sums[C + c] = (float)q;
}

extern "C" __global__ void pre_bwd_dx_f16(const half* __restrict__ da, const half* __restrict__ x, long long len, int C,
                                          const float* __restrict__ pmean, const float* __restrict__ pinv,
                                          const float* __restrict__ pshift, int bn, const float* __restrict__ sums,
                                          long long count, float* __restrict__ dshift, half* __restrict__ dx,
                                          const unsigned char* __restrict__ am, int H, int W) {
    pdl_entry();
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (dshift && t < C) dshift[t] = sums[t];
    const int groups = C >> 3, threads = gridDim.x * blockDim.x, stride = threads - threads % groups;
    const int PH = H >> 1, PW = W >> 1;
    // unpooled, pixel indices in 32 bits with multiply-high divisions (the host bounds the full
    // resolution's pixels below 2^31; 64-bit divisions by runtime values were a subroutine call
    // and about as many instructions as the chunk's arithmetic)
    const FastDiv div_groups(groups);
    if (dx && am) {
        // the dropped odd last row (W pixels) and last column of the pooled rows of each image
        // get zeros (the picks cover the other pixels' windows)
        const int er = (H & 1) ? W : 0, e = er + ((W & 1) ? 2 * PH : 0);
        const int images = PH * PW > 0 ? (int)(len / ((long long)PH * PW * C)) : 0;
        const FastDiv div_e(e);
        for (int i = t; i < images * e * groups; i += threads) {
            const int q = div_groups.div(i), n = div_e.div(q);
            const int c = (i - q * groups) * 8, k = q - n * e;
            const int y = k < er ? H - 1 : k - er, xx = k < er ? k : W - 1;
            *reinterpret_cast<uint4*>(dx + ((long long)(n * H + y) * W + xx) * C + c) = make_uint4(0u, 0u, 0u, 0u);
        }
    }
    // Thread t takes the 8-channel chunks t, t + stride, ... of dx: stride, a multiple of C/8,
    // keeps its channels c0..c0+7 fixed, so their parameters and the sums' means are loaded and
    // divided once per thread, not per value (the same operations: the same bits).
    if (!dx || t >= stride) return;
    const int c0 = t % groups * 8;
    const float cnt = (float)count;
    float mean[8], inv[8], shift[8], m0[8], m1[8];
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const int c = c0 + j;
        pre_params(pmean, pinv, pshift, bn, c, mean[j], inv[j], shift[j]);
        m0[j] = sums[c] / cnt;
        m1[j] = sums[C + c] / cnt;
    }
    // chunk k is pooled pixel q = k / groups (unpooled: its window's four pixels); stride is a
    // multiple of groups, so q advances by stride / groups with k
    const int sq = stride / groups, PHW = PH * PW;
    const FastDiv div_phw(PHW), div_pw(PW);
    int q = div_groups.div(t);
    for (long long k = t; k * 8 < len; k += stride, q += sq) {
        Half8 a, v, o;
        a.u = *reinterpret_cast<const uint4*>(da + k * 8);
        v.u = *reinterpret_cast<const uint4*>(x + k * 8);
#pragma unroll
        for (int j = 0; j < 8; j++) {
            float xhat;
            const float du = pre_du(__half2float(a.h[j]), __half2float(v.h[j]), mean[j], inv[j], shift[j], bn, xhat);
            const float g = bn ? inv[j] * (du - m0[j] - xhat * m1[j]) : du;
            o.h[j] = __float2half(g);
        }
        if (!am) {
            *reinterpret_cast<uint4*>(dx + k * 8) = o.u;
            continue;
        }
        // pooled pixel q = (n, py, px): its window's four chunks, each value at its pick
        const int n = div_phw.div(q), r = q - n * PHW, py = div_pw.div(r), px = r - py * PW;
        const uint2 pick = *reinterpret_cast<const uint2*>(am + k * 8);
        const unsigned char* ab = reinterpret_cast<const unsigned char*>(&pick);
        const int pix0 = (n * H + 2 * py) * W + 2 * px;  // the window's first pixel
#pragma unroll
        for (int w = 0; w < 4; w++) {  // window position dy·2 + dx, the argmax byte's code
            const int pix = pix0 + (w >> 1) * W + (w & 1);
            *reinterpret_cast<uint4*>(dx + (long long)pix * C + c0) = route8(o, ab, (unsigned char)w);
        }
    }
}

// dtype casts, used when a tensor arrives in the other storage type (e.g. a host upload, which is
// f32, fed to a kernel that reads fp16). 1 thread/element.
extern "C" __global__ void cast_f32_f16(const float* __restrict__ a, long long len, half* __restrict__ b) {
    pdl_entry();
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) b[i] = __float2half(a[i]);
}
extern "C" __global__ void cast_f16_f32(const half* __restrict__ a, long long len, float* __restrict__ b) {
    pdl_entry();
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) b[i] = __half2float(a[i]);
}
