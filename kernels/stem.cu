// stem.cu: the network's input side. Images are u8 NHWC 32×32×3; an augmentation word
// (src/aug.rs: bits 0–19 image index, 20–22 sy+4, 23–25 sx+4, 26 flip) says which image and
// view. The view's pixel (y, x) is source pixel (reflect(y + sy), reflect(x' + sx)) with
// x' = 31 − x when flipped, normalised as (p/255 − mean[c]) / std[c] in f32 (the reference's
// operations, IEEE division). Example i's word is aug[offset + i], the offset read from the step
// record (common.cuh); words past aug_len, like image indices past `total`, give NaN outputs.
//
// Exported kernels:
//   stem_fwd_f16      raw[n][y][x][f] = Σ_{dy,dx,c} view[y+dy][x+dx][c]·w[f][dy][dx][c] (2×2, no
//                     padding, 31×31×cw), rounded to fp16, then out = GELU(raw + bias[f]) and,
//                     where grad is not null, grad = GELU′(raw + bias[f]) (fp16, from the fp16 raw
//                     value with act_f16's operations, so act_f16's bits for out; grad is what
//                     the whitening bias's gradient needs while it trains; stem_fwd_f16 has no
//                     grad argument).
//   stem_fwd_grad_f16 the same, grad written: a kernel of its own, so that stem_fwd_f16 (most
//                     steps) keeps its register allocation.
//                     One block per example (grid n, block 256): the source image (3 KB), w
//                     (cw ≤ 64), the bias and a 3×256 table of the normalised byte values (the
//                     same f32 operations as norm_px, so the same bits) are staged in shared
//                     memory; then one thread per output pixel computes its 2×2×3 patch once
//                     and all cw/8 groups of 8 filters. The host asserts cw % 8 == 0.
//   stem_res_fwd_f16  the same at resolution res (2..=32, progressive resizing): the 32×32 view is
//                     downscaled bilinearly (PyTorch align_corners=False, no antialias: source
//                     coordinate (i + ½)·32/res − ½ clamped to [0, 31]; `cpu::layers::resize_bilinear`)
//                     before the conv; out is (res−1)×(res−1)×cw. Same launch shape with 961 →
//                     (res−1)². Both outputs as stem_fwd_f16's.
//   patch_cov_f32     partial[b][r·12 + s] = Σ over the images b, b + gridDim.x, ... and their
//                     31·31 2×2 patches of v[r]·v[s], v ordered (dy, dx, c) (no augmentation).
//                     grid ≤ 256 blocks, block 160 (threads 0..143 own one (r, s) each); one image
//                     at a time is normalised into shared memory; f32 within an image, f64 across.
#include "common.cuh"

__device__ __forceinline__ int reflect32(int i) { return i < 0 ? -i : (i >= 32 ? 62 - i : i); }

__device__ __forceinline__ float norm_px(unsigned char p, int c, const float* nm) {
    return ((float)p / 255.0f - nm[c]) / nm[3 + c];
}

// Shared by both stem kernels: the weights, bias and normalisation staged in shared memory (the
// caller synchronises), the augmentation word decoded, and an 8-filter output group written.
__device__ __forceinline__ void stem_stage(const float* __restrict__ w, const float* __restrict__ bias, int cw,
                                           float m0, float m1, float m2, float s0, float s1, float s2, float* sw,
                                           float* sb, float* nm) {
    for (int i = threadIdx.x; i < cw * 12; i += blockDim.x) sw[i] = w[i];
    for (int i = threadIdx.x; i < cw; i += blockDim.x) sb[i] = bias[i];
    if (threadIdx.x == 0) {
        nm[0] = m0; nm[1] = m1; nm[2] = m2;
        nm[3] = s0; nm[4] = s1; nm[5] = s2;
    }
}

struct StemAug {
    int index, sy, sx;
    bool flip;
};

__device__ __forceinline__ StemAug stem_word(unsigned int word) {
    return StemAug{(int)(word & 0xFFFFFu), (int)((word >> 20) & 7u) - 4, (int)((word >> 23) & 7u) - 4,
                   ((word >> 26) & 1u) != 0};
}

// Example i's view: its word at the step record's offset, decoded. False when the words run
// past aug_len or the image index past `total` (the caller then stores NaN).
__device__ __forceinline__ bool stem_lookup(const unsigned int* aug, int aug_len, const unsigned int* step, int n,
                                            int i, int total, StemAug& a) {
    const unsigned int* words = step_aug(aug, aug_len, step, n);
    if (!words) return false;
    a = stem_word(words[i]);
    return a.index < total;
}

// The reference asserts on an image index past the dataset; a device cannot: the outputs (out,
// and grad where given) are NaN.
__device__ __forceinline__ void stem_store_nan(half* out, half* grad) {
    Half8 o;
#pragma unroll
    for (int j = 0; j < 8; j++) o.h[j] = __float2half(__int_as_float(0x7fc00000));
    *reinterpret_cast<uint4*>(out) = o.u;
    if (grad) *reinterpret_cast<uint4*>(grad) = o.u;
}

// Filters g·8 .. g·8+7 applied to the 2×2×3 patch v (order (dy, dx, c)): the dot rounded to
// fp16, u = that + bias, then GELU(u) into out and GELU′(u) into grad (GRAD). act_f16's
// operations on the same halves (pre_u with bn = 0, gelu_f; gelu_grad_f for GELU′), so the
// same bits.
template <bool GRAD>
__device__ __forceinline__ void stem_store_dot(const float* v, const float* sw, const float* sb, int g, half* out,
                                               half* grad) {
    Half8 o, a;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const float* wf = sw + (g * 8 + j) * 12;
        float acc = 0.f;
#pragma unroll
        for (int k = 0; k < 12; k++) acc += v[k] * wf[k];
        o.h[j] = __float2half(acc);
    }
    Half8 d;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const float u = pre_u(__half2float(o.h[j]), 0.f, 1.f, sb[g * 8 + j], 0);
        a.h[j] = __float2half(gelu_f(u));
        if (GRAD) d.h[j] = __float2half(gelu_grad_f(u));
    }
    if (GRAD) *reinterpret_cast<uint4*>(grad) = d.u;
    *reinterpret_cast<uint4*>(out) = a.u;
}

// Blocks per SM for stem_fwd_f16's register budget. On sm_90, 8 (32 registers; it had 44 and 5
// blocks): the grid of one block per image then runs in 2 rounds of blocks instead of 4 (2000
// images, 132 SMs), with 64 warps per SM to hide the image loads and the stores. sm_80–89: 5,
// the occupancy they had (48 registers). sm_70: 6 (40 registers; it had 48 and 5 blocks).
// Since the stem applies the bias and GELU, these budgets spill a little (ptxas, stem_fwd_f16:
// sm_90 48 bytes stored, 60 loaded; sm_80–89 20 and 48; sm_70 none; stem_fwd_grad_f16 up to
// 76): in sm_90's SASS, 4 STL and 5 LDL of loop-carried values (L1) per 291-instruction group
// of 8 filters. 7 blocks gets the same 32 registers; 6 (40) would take 3 rounds. Two other
// arrangements (pointers per pixel; the patch re-read from shared memory per group) spilled
// as much or more. build.rs accepts these spills up to 96 bytes (SPILLS_ACCEPTED).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define STEM_MIN_BLOCKS 8
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define STEM_MIN_BLOCKS 5
#else
#define STEM_MIN_BLOCKS 6
#endif
// The body of stem_fwd_f16 (GRAD false: grad is not written) and stem_fwd_grad_f16 (true): two
// kernels, so that the one most steps run keeps its own register allocation.
template <bool GRAD>
__device__ __forceinline__ void stem_full(const unsigned char* __restrict__ images, int total,
                                          const unsigned int* __restrict__ aug, int aug_len,
                                          const unsigned int* __restrict__ step, int n, float m0, float m1, float m2,
                                          float s0, float s1, float s2, const float* __restrict__ w, int cw,
                                          const float* __restrict__ bias, half* __restrict__ out,
                                          half* __restrict__ grad) {
    __shared__ float sw[64 * 12];
    __shared__ float sb[64];
    __shared__ float nm[6];
    __shared__ float lut[3 * 256];            // lut[c·256 + p] = norm_px(p, c)
    __shared__ __align__(16) unsigned char im[3072];
    stem_stage(w, bias, cw, m0, m1, m2, s0, s1, s2, sw, sb, nm);
    __syncthreads();
    for (int k = threadIdx.x; k < 3 * 256; k += blockDim.x) lut[k] = norm_px((unsigned char)(k & 255), k >> 8, nm);
    const int i = blockIdx.x, groups = cw / 8;
    const long long base = (long long)i * 961 * cw;
    StemAug a;
    // uniform per block: the whole example is NaN, and no barrier follows the early return
    if (!stem_lookup(aug, aug_len, step, n, i, total, a)) {
        for (int q = threadIdx.x; q < 961 * groups; q += blockDim.x)
            stem_store_nan(out + base + q * 8, GRAD ? grad + base + q * 8 : nullptr);
        return;
    }
    const unsigned char* src = images + (long long)a.index * 3072;
    if ((reinterpret_cast<size_t>(src) & 15) == 0) {
        for (int k = threadIdx.x; k < 3072 / 16; k += blockDim.x)
            reinterpret_cast<uint4*>(im)[k] = reinterpret_cast<const uint4*>(src)[k];
    } else {
        for (int k = threadIdx.x; k < 3072; k += blockDim.x) im[k] = src[k];
    }
    __syncthreads();
    const int sy = a.sy, sx = a.sx;
    const bool flip = a.flip;
    for (int r = threadIdx.x; r < 961; r += blockDim.x) {
        const int y = r / 31, x = r - y * 31;
        float v[12];
#pragma unroll
        for (int dy = 0; dy < 2; dy++)
#pragma unroll
            for (int dx = 0; dx < 2; dx++) {
                const int xx = flip ? 31 - (x + dx) : x + dx;
                const unsigned char* p = im + (reflect32(y + dy + sy) * 32 + reflect32(xx + sx)) * 3;
#pragma unroll
                for (int c = 0; c < 3; c++) v[(dy * 2 + dx) * 3 + c] = lut[c * 256 + p[c]];
            }
        for (int g = 0; g < groups; g++) {
            const long long q = base + r * cw + g * 8;
            stem_store_dot<GRAD>(v, sw, sb, g, out + q, GRAD ? grad + q : nullptr);
        }
    }
}
extern "C" __global__ void __launch_bounds__(256, STEM_MIN_BLOCKS)
stem_fwd_f16(const unsigned char* __restrict__ images, int total, const unsigned int* __restrict__ aug, int aug_len,
             const unsigned int* __restrict__ step, int n, float m0, float m1, float m2, float s0, float s1, float s2,
             const float* __restrict__ w, int cw, const float* __restrict__ bias, half* __restrict__ out) {
    pdl_entry();
    stem_full<false>(images, total, aug, aug_len, step, n, m0, m1, m2, s0, s1, s2, w, cw, bias, out, nullptr);
}
extern "C" __global__ void __launch_bounds__(256, STEM_MIN_BLOCKS)
stem_fwd_grad_f16(const unsigned char* __restrict__ images, int total, const unsigned int* __restrict__ aug,
                  int aug_len, const unsigned int* __restrict__ step, int n, float m0, float m1, float m2, float s0,
                  float s1, float s2, const float* __restrict__ w, int cw, const float* __restrict__ bias,
                  half* __restrict__ out, half* __restrict__ grad) {
    pdl_entry();
    stem_full<true>(images, total, aug, aug_len, step, n, m0, m1, m2, s0, s1, s2, w, cw, bias, out, grad);
}

// Bilinear taps of output index i at resolution res: (lo, hi, fraction), computed in f64 like
// the reference, the fraction rounded to f32.
__device__ __forceinline__ void bilinear_taps(int i, int res, int& lo, int& hi, float& f) {
    double s = ((double)i + 0.5) * 32.0 / (double)res - 0.5;
    s = s < 0.0 ? 0.0 : (s > 31.0 ? 31.0 : s);
    lo = (int)floor(s);
    hi = lo + 1 < 31 ? lo + 1 : 31;
    f = (float)(s - (double)lo);
}

extern "C" __global__ void stem_res_fwd_f16(const unsigned char* __restrict__ images, int total,
                                            const unsigned int* __restrict__ aug, int aug_len,
                                        const unsigned int* __restrict__ step, int n, float m0, float m1, float m2,
                                            float s0, float s1, float s2, const float* __restrict__ w, int cw, int res,
                                            const float* __restrict__ bias, half* __restrict__ out,
                                            half* __restrict__ grad) {
    pdl_entry();
    __shared__ float sw[64 * 12];
    __shared__ float sb[64];
    __shared__ float nm[6];
    stem_stage(w, bias, cw, m0, m1, m2, s0, s1, s2, sw, sb, nm);
    __syncthreads();
    const int groups = cw / 8, o = res - 1, per = o * o;
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long len = (long long)n * per * groups;
    if (t >= len) return;
    const int g = (int)(t % groups);
    const long long pix = t / groups;
    const int i = (int)(pix / per), r = (int)(pix % per);
    const int y = r / o, x = r % o;
    StemAug a;
    const long long q = pix * cw + g * 8;
    if (!stem_lookup(aug, aug_len, step, n, i, total, a)) return stem_store_nan(out + q, grad ? grad + q : nullptr);
    const int sy = a.sy, sx = a.sx;
    const bool flip = a.flip;
    const unsigned char* img = images + (long long)a.index * 3072;
    // the augmented, normalised view at full resolution
    auto view = [&](int vy, int vx, int c) {
        const int xx = flip ? 31 - vx : vx;
        return norm_px(img[(reflect32(vy + sy) * 32 + reflect32(xx + sx)) * 3 + c], c, nm);
    };
    float v[12];
#pragma unroll
    for (int dy = 0; dy < 2; dy++) {
        int y0, y1;
        float fy;
        bilinear_taps(y + dy, res, y0, y1, fy);
#pragma unroll
        for (int dx = 0; dx < 2; dx++) {
            int x0, x1;
            float fx;
            bilinear_taps(x + dx, res, x0, x1, fx);
#pragma unroll
            for (int c = 0; c < 3; c++) {
                const float p00 = view(y0, x0, c), p01 = view(y0, x1, c), p10 = view(y1, x0, c), p11 = view(y1, x1, c);
                const float top = p00 + (p01 - p00) * fx;
                const float bottom = p10 + (p11 - p10) * fx;
                v[(dy * 2 + dx) * 3 + c] = top + (bottom - top) * fy;
            }
        }
    }
    if (grad) stem_store_dot<true>(v, sw, sb, g, out + q, grad + q);
    else stem_store_dot<false>(v, sw, sb, g, out + q, nullptr);
}

extern "C" __global__ void patch_cov_f32(const unsigned char* __restrict__ images, int n, float m0, float m1,
                                         float m2, float s0, float s1, float s2, double* __restrict__ partial) {
    pdl_entry();
    __shared__ float img[32 * 32 * 3];
    __shared__ float nm[6];
    if (threadIdx.x == 0) {
        nm[0] = m0; nm[1] = m1; nm[2] = m2;
        nm[3] = s0; nm[4] = s1; nm[5] = s2;
    }
    const int t = threadIdx.x;
    const int r = t / 12, s = t % 12;
    // (dy, dx, c) of entries r and s
    const int rdy = r / 6, rdx = (r / 3) & 1, rc = r % 3;
    const int sdy = s / 6, sdx = (s / 3) & 1, sc = s % 3;
    double acc = 0.0;
    for (int i = blockIdx.x; i < n; i += gridDim.x) {
        __syncthreads();
        const unsigned char* src = images + (long long)i * 3072;
        for (int k = t; k < 3072; k += blockDim.x) img[k] = norm_px(src[k], k % 3, nm);
        __syncthreads();
        if (t < 144) {
            float a = 0.f;
            for (int y = 0; y < 31; y++)
                for (int x = 0; x < 31; x++)
                    a += img[((y + rdy) * 32 + x + rdx) * 3 + rc] * img[((y + sdy) * 32 + x + sdx) * 3 + sc];
            acc += (double)a;
        }
    }
    if (t < 144) partial[(long long)blockIdx.x * 144 + t] = acc;
}
