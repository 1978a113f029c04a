// head.cu: the classifier end of the network and its loss.
//
// Exported kernels:
//   head_fwd_f16       feat[n][c] = max_p GELU(pre(x[n][p][c])) over the H·W positions (first
//                      maximum → argmax = p), logits[n][k] = scale·Σ_c feat[n][c]·w[k][c].
//                      One block of 256 threads per example (grid n); C ≤ 1024 (host-asserted).
//                      feat and logits are f32.
//   head_bwd_dw_part_f32  part[s][k][c] = scale·Σ_{n in slice s} dlogits[n][k]·feat[n][c], slices
//                     of HEAD_SLICE examples: grid (⌈C/32⌉, ⌈N/HEAD_SLICE⌉), block (32, 8): lane =
//                     channel, warp w takes examples w, w + 8, ... of the slice; the 8 warps are
//                     added in order through shared memory. classes ≤ HEAD_MAX_CLASSES
//                     (host-asserted). The host then adds the slices in order into dw with
//                     conv.cu's wgrad_reduce_f32.
//   head_bwd_da_f16    da[n][p][c] = scale·Σ_k dlogits[n][k]·w[k][c] at p = argmax[n][c], 0
//                      elsewhere. 1 thread per (n, c), writing all H·W positions.
//   xent_fwd_bwd_f32   label-smoothed cross-entropy: dlogits = softmax − target, and per block the
//                      f64 sums of the loss and of #correct (first-max prediction) into
//                      part[2·b], part[2·b + 1]. One thread per example: grid ⌈n/XENT_THREADS⌉,
//                      block XENT_THREADS; f64 arithmetic (as the reference). Words at the step
//                      record's offset; words past aug_len or an index past the labels: NaN loss.
//   xent_acc_f64       acc[0] += Σ_b part[2·b], acc[1] += Σ_b part[2·b + 1] in block order. 1 block
//                      of 32 threads.
//   axpy_f32           acc[i] += weight·x[i]. 1 thread/element.
#include "common.cuh"

extern "C" __global__ void head_fwd_f16(const half* __restrict__ x, int HW, int C, const float* __restrict__ pmean,
                                        const float* __restrict__ pinv, const float* __restrict__ pshift, int bn,
                                        const float* __restrict__ w, int classes, float scale,
                                        float* __restrict__ feat, unsigned char* __restrict__ argmax,
                                        float* __restrict__ logits) {
    pdl_entry();
    __shared__ float sf[1024];
    const int n = blockIdx.x;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float mean, inv, sh;
        pre_params(pmean, pinv, pshift, bn, c, mean, inv, sh);
        const half* xp = x + (long long)n * HW * C + c;
        float best = gelu_f(pre_u(__half2float(xp[0]), mean, inv, sh, bn));
        int arg = 0;
        for (int p = 1; p < HW; p++) {
            const float v = gelu_f(pre_u(__half2float(xp[(long long)p * C]), mean, inv, sh, bn));
            if (v > best) {
                best = v;
                arg = p;
            }
        }
        sf[c] = best;
        feat[(long long)n * C + c] = best;
        argmax[(long long)n * C + c] = (unsigned char)arg;
    }
    __syncthreads();
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int k = wid; k < classes; k += nw) {
        float d = 0.f;
        for (int c = lane; c < C; c += 32) d += sf[c] * w[(long long)k * C + c];
        d = warp_sum(d);
        if (lane == 0) logits[(long long)n * classes + k] = scale * d;
    }
}

// Mirrored in src/gpu/backend.rs.
#define HEAD_SLICE 128
#define HEAD_MAX_CLASSES 32
#define XENT_THREADS 128

extern "C" __global__ void __launch_bounds__(256)
head_bwd_dw_part_f32(const float* __restrict__ dlogits, const float* __restrict__ feat, int N, int C, int classes,
                     float scale, float* __restrict__ part) {
    pdl_entry();
    __shared__ float red[8][HEAD_MAX_CLASSES][32];
    const int lane = threadIdx.x, wq = threadIdx.y, c = blockIdx.x * 32 + lane, s = blockIdx.y;
    const int n0 = s * HEAD_SLICE, n1 = min(N, n0 + HEAD_SLICE);
    float acc[HEAD_MAX_CLASSES];
#pragma unroll
    for (int k = 0; k < HEAD_MAX_CLASSES; k++) acc[k] = 0.f;
    if (c < C)
        for (int n = n0 + wq; n < n1; n += 8) {
            const float f = feat[(long long)n * C + c];
            const float* dl = dlogits + (long long)n * classes;
#pragma unroll
            for (int k = 0; k < HEAD_MAX_CLASSES; k++)
                if (k < classes) acc[k] += dl[k] * f;
        }
#pragma unroll
    for (int k = 0; k < HEAD_MAX_CLASSES; k++)
        if (k < classes) red[wq][k][lane] = acc[k];
    __syncthreads();
    if (c >= C) return;
    for (int k = wq; k < classes; k += 8) {
        float t = 0.f;
#pragma unroll
        for (int w = 0; w < 8; w++) t += red[w][k][lane];
        part[((long long)s * classes + k) * C + c] = scale * t;
    }
}

extern "C" __global__ void head_bwd_da_f16(const float* __restrict__ dlogits, const unsigned char* __restrict__ argmax,
                                           const float* __restrict__ w, int N, int HW, int C, int classes,
                                           float scale, half* __restrict__ da) {
    pdl_entry();
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)N * C) return;
    const int n = (int)(t / C), c = (int)(t % C);
    float g = 0.f;
    for (int k = 0; k < classes; k++) g += dlogits[(long long)n * classes + k] * w[(long long)k * C + c];
    const int a = argmax[t];
    const half v = __float2half(scale * g), z = __float2half(0.f);
    for (int p = 0; p < HW; p++) da[((long long)n * HW + p) * C + c] = p == a ? v : z;
}

extern "C" __global__ void __launch_bounds__(XENT_THREADS)
xent_fwd_bwd_f32(const float* __restrict__ logits, const unsigned char* __restrict__ labels,
                 const unsigned int* __restrict__ aug, int aug_len, const unsigned int* __restrict__ step, int n,
                 int nlabels, int classes, float smoothing, float* __restrict__ dlogits, double* __restrict__ part) {
    pdl_entry();
    __shared__ double scratch[32];
    double loss = 0.0, correct = 0.0;
    const double s = (double)smoothing;
    const unsigned int* words = step_aug(aug, aug_len, step, n);
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const unsigned int index = words ? words[i] & 0xFFFFFu : 0xFFFFFu;
        // The reference asserts on a bad index or label; a kernel cannot, so the loss becomes NaN
        // (the run's divergence check then stops it) and nothing out of bounds is read.
        const int label = index < (unsigned int)nlabels ? labels[index] : classes;
        const float* l = logits + (long long)i * classes;
        double best = (double)l[0];
        int arg = 0;
        for (int k = 1; k < classes; k++)
            if ((double)l[k] > best) {
                best = (double)l[k];
                arg = k;
            }
        double se = 0.0;
        for (int k = 0; k < classes; k++) se += exp((double)l[k] - best);
        const double lse = best + log(se);
        if (label >= classes) {
            loss = __longlong_as_double(0x7ff8000000000000ll);
            for (int k = 0; k < classes; k++) dlogits[(long long)i * classes + k] = __int_as_float(0x7fc00000);
        } else {
            for (int k = 0; k < classes; k++) {
                const double q = s / (double)classes + (k == label ? 1.0 - s : 0.0);
                loss -= q * ((double)l[k] - lse);
                dlogits[(long long)i * classes + k] = (float)(exp((double)l[k] - lse) - q);
            }
            correct = (arg == label) ? 1.0 : 0.0;
        }
    }
    const double L = block_sum_d(loss, scratch);
    const double Cn = block_sum_d(correct, scratch);
    if (threadIdx.x == 0) {
        part[2 * blockIdx.x] = L;
        part[2 * blockIdx.x + 1] = Cn;
    }
}

extern "C" __global__ void xent_acc_f64(const double* __restrict__ part, int blocks, float* __restrict__ acc) {
    pdl_entry();
    if (threadIdx.x != 0) return;
    double L = 0.0, Cn = 0.0;
    for (int b = 0; b < blocks; b++) {
        L += part[2 * b];
        Cn += part[2 * b + 1];
    }
    acc[0] = (float)((double)acc[0] + L);
    acc[1] = (float)((double)acc[1] + Cn);
}

extern "C" __global__ void axpy_f32(float* __restrict__ acc, const float* __restrict__ x, long long len, float weight) {
    pdl_entry();
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) acc[i] += weight * x[i];
}
