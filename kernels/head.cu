// head.cu: the classifier end of the network and its loss.
//
// Exported kernels:
//   head_fwd_f16       feat[n][c] = max_p GELU(pre(x[n][p][c])) over the H·W positions (first
//                      maximum → argmax = p), logits[n][k] = scale·Σ_c feat[n][c]·w[k][c].
//                      One block of 256 threads per example (grid n); C ≤ 1024 (host-asserted).
//                      feat and logits are f32.
//   head_bwd_dw_f32    dw[k][c] = scale·Σ_n dlogits[n][k]·feat[n][c]. 1 thread per (k, c).
//   head_bwd_da_f16    da[n][p][c] = scale·Σ_k dlogits[n][k]·w[k][c] at p = argmax[n][c], 0
//                      elsewhere. 1 thread per (n, c), writing all H·W positions.
//   xent_fwd_bwd_f32   label-smoothed cross-entropy: dlogits = softmax − target; acc[0] += Σ loss,
//                      acc[1] += #correct (first-max prediction). One block of 256 threads,
//                      f64 arithmetic (as the reference); classes ≤ 32. Words at the step
//                      record's offset; words past aug_len or an index past the labels: NaN loss.
//   axpy_f32           acc[i] += weight·x[i]. 1 thread/element.
#include "common.cuh"

extern "C" __global__ void head_fwd_f16(const half* __restrict__ x, int HW, int C, const float* __restrict__ pmean,
                                        const float* __restrict__ pinv, const float* __restrict__ pshift, int bn,
                                        const float* __restrict__ w, int classes, float scale,
                                        float* __restrict__ feat, unsigned char* __restrict__ argmax,
                                        float* __restrict__ logits) {
    __shared__ float sf[1024];
    const int n = blockIdx.x;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        const float mean = bn ? pmean[c] : 0.f, inv = bn ? pinv[c] : 1.f, sh = pshift[c];
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

extern "C" __global__ void head_bwd_dw_f32(const float* __restrict__ dlogits, const float* __restrict__ feat, int N,
                                           int C, int classes, float scale, float* __restrict__ dw) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= classes * C) return;
    const int k = t / C, c = t % C;
    float s = 0.f;
    for (int n = 0; n < N; n++) s += dlogits[(long long)n * classes + k] * feat[(long long)n * C + c];
    dw[t] = scale * s;
}

extern "C" __global__ void head_bwd_da_f16(const float* __restrict__ dlogits, const unsigned char* __restrict__ argmax,
                                           const float* __restrict__ w, int N, int HW, int C, int classes,
                                           float scale, half* __restrict__ da) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)N * C) return;
    const int n = (int)(t / C), c = (int)(t % C);
    float g = 0.f;
    for (int k = 0; k < classes; k++) g += dlogits[(long long)n * classes + k] * w[(long long)k * C + c];
    const int a = argmax[t];
    const half v = __float2half(scale * g), z = __float2half(0.f);
    for (int p = 0; p < HW; p++) da[((long long)n * HW + p) * C + c] = p == a ? v : z;
}

extern "C" __global__ void xent_fwd_bwd_f32(const float* __restrict__ logits, const unsigned char* __restrict__ labels,
                                            const unsigned int* __restrict__ aug, int aug_len,
                                            const unsigned int* __restrict__ step, int n, int nlabels,
                                            int classes, float smoothing, float* __restrict__ dlogits,
                                            float* __restrict__ acc) {
    __shared__ double scratch[32];
    double loss = 0.0, correct = 0.0;
    const double s = (double)smoothing;
    const unsigned int* words = step_aug(aug, aug_len, step, n);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
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
            loss += __longlong_as_double(0x7ff8000000000000ll);
            for (int k = 0; k < classes; k++) dlogits[(long long)i * classes + k] = __int_as_float(0x7fc00000);
            continue;
        }
        for (int k = 0; k < classes; k++) {
            const double q = s / (double)classes + (k == label ? 1.0 - s : 0.0);
            loss -= q * ((double)l[k] - lse);
            dlogits[(long long)i * classes + k] = (float)(exp((double)l[k] - lse) - q);
        }
        correct += (arg == label) ? 1.0 : 0.0;
    }
    const double L = block_sum_d(loss, scratch);
    const double Cn = block_sum_d(correct, scratch);
    if (threadIdx.x == 0) {
        acc[0] = (float)((double)acc[0] + L);
        acc[1] = (float)((double)acc[1] + Cn);
    }
}

extern "C" __global__ void axpy_f32(float* __restrict__ acc, const float* __restrict__ x, long long len, float weight) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < len) acc[i] += weight * x[i];
}
