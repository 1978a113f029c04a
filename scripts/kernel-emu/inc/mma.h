#pragma once
#include "cuda_fp16.h"
namespace nvcuda { namespace wmma {
struct row_major {}; struct col_major {}; struct matrix_a {}; struct matrix_b {}; struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };
template <class Use, int M, int N, int K, class T, class L = void> struct fragment { T x[256]; };
// EMU_FIBERS (scripts/emu-driver): fragment arguments are warp-uniform, so only lane 0 of each
// warp loads, multiplies and stores the whole tile (1x the work instead of 32x); the other lanes'
// fragments stay unused. Without it every lane holds and computes the whole tile.
#ifdef EMU_FIBERS
inline bool emu_lane0() { return (threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y) % 32 == 0; }
#else
inline bool emu_lane0() { return true; }
#endif
template <class U, class T, class L> inline void fill_fragment(fragment<U, 16, 16, 16, T, L>& f, T v) { if (emu_lane0()) for (auto& e : f.x) e = v; }
inline void chk(const void* p, unsigned ldm, int bytes) {
    assert(((uintptr_t)p % 32) == 0 && "wmma pointer must be 256-bit aligned");
    assert((ldm * bytes) % 16 == 0 && "wmma ldm must be a multiple of 16 bytes");
}
// element (r, c) of the logical 16x16 matrix (A: m x k, B: k x n)
inline void load_matrix_sync(fragment<matrix_a, 16, 16, 16, half, row_major>& f, const half* p, unsigned ldm) { if (!emu_lane0()) return; chk(p, ldm, 2); for (int r = 0; r < 16; r++) for (int c = 0; c < 16; c++) f.x[r * 16 + c] = p[r * ldm + c]; }
inline void load_matrix_sync(fragment<matrix_a, 16, 16, 16, half, col_major>& f, const half* p, unsigned ldm) { if (!emu_lane0()) return; chk(p, ldm, 2); for (int r = 0; r < 16; r++) for (int c = 0; c < 16; c++) f.x[r * 16 + c] = p[c * ldm + r]; }
inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, half, row_major>& f, const half* p, unsigned ldm) { if (!emu_lane0()) return; chk(p, ldm, 2); for (int r = 0; r < 16; r++) for (int c = 0; c < 16; c++) f.x[r * 16 + c] = p[r * ldm + c]; }
inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, half, col_major>& f, const half* p, unsigned ldm) { if (!emu_lane0()) return; chk(p, ldm, 2); for (int r = 0; r < 16; r++) for (int c = 0; c < 16; c++) f.x[r * 16 + c] = p[c * ldm + r]; }
template <class LA, class LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, half, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, half, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
    if (!emu_lane0()) return;
    float t[256];
#ifdef EMU_FIBERS
    // the same sums in the same order, on operands converted once (b transposed)
    float af[256], bt[256];
    for (int i = 0; i < 256; i++) af[i] = (float)a.x[i];
    for (int k = 0; k < 16; k++) for (int j = 0; j < 16; j++) bt[j * 16 + k] = (float)b.x[k * 16 + j];
    for (int i = 0; i < 16; i++) for (int j = 0; j < 16; j++) {
        float s = c.x[i * 16 + j];
        for (int k = 0; k < 16; k++) s += af[i * 16 + k] * bt[j * 16 + k];
        t[i * 16 + j] = s;
    }
#else
    for (int i = 0; i < 16; i++) for (int j = 0; j < 16; j++) {
        float s = c.x[i * 16 + j];
        for (int k = 0; k < 16; k++) s += (float)a.x[i * 16 + k] * (float)b.x[k * 16 + j];
        t[i * 16 + j] = s;
    }
#endif
    memcpy(d.x, t, sizeof t);
}
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm, layout_t l) {
    chk(p, ldm, 4);
    // one lane writes (all lanes hold the whole tile in this emulation)
    const int t = threadIdx.x + threadIdx.y * blockDim.x;
    if (t % 32 == 0) for (int r = 0; r < 16; r++) for (int c = 0; c < 16; c++) {
        if (l == mem_row_major) p[r * ldm + c] = f.x[r * 16 + c]; else p[c * ldm + r] = f.x[r * 16 + c];
    }
    // the real store is warp-synchronous: make the tile visible to the warp
    emu_warp_barrier(t / 32);
}
}}
