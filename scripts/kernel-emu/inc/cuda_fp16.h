// Host emulation shim of the CUDA pieces the kernels use (logic checks on a CPU; see ../run.sh).
#pragma once
#include <cmath>
#include <cstring>
#include <cstdint>
#include <cassert>
#include <barrier>
#include <thread>
#include <vector>
#include <functional>
#include <algorithm>
typedef _Float16 half;
struct __half2 { half x, y; };
inline __half2 __halves2half2(half a, half b) { return {a, b}; }
inline half __float2half(float f) { return (half)f; }
inline float __half2float(half h) { return (float)h; }
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) float4 { float x, y, z, w; };
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
inline uint2 make_uint2(unsigned a, unsigned b) { return {a, b}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
struct dim3 { unsigned x = 1, y = 1, z = 1; };
inline thread_local dim3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;
#ifdef EMU_FIBERS
// scripts/emu-driver: a block's threads are cooperative fibers on one OS thread (blocks run in
// parallel on a few OS threads), so shared memory is per OS thread and barriers are fiber yields.
void emu_block_sync();
bool emu_warp_sync(int warp);  // true for the lane whose arrival completed the barrier
unsigned long long emu_block_serial();  // a number for the block running on this OS thread, new per block
inline void __syncthreads() { emu_block_sync(); }
#define __shared__ static thread_local
#else
extern std::barrier<>* g_block_barrier;
inline void __syncthreads() { g_block_barrier->arrive_and_wait(); }
#define __shared__ static
#endif
// The launch's dynamic shared memory (`extern __shared__ T name[];` is rewritten to a pointer
// to it by scripts/kernel-emu/run.sh and scripts/emu-driver/build.sh).
unsigned char* emu_dyn_smem();
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline double __longlong_as_double(long long i) { double f; memcpy(&f, &i, 8); return f; }
using std::min; using std::max;
// warp shuffles: per-warp exchange through a shared table and a per-warp barrier
#ifdef EMU_FIBERS
extern thread_local double g_xchg[64][32];
inline void emu_warp_barrier(int w) { emu_warp_sync(w); }
#else
extern std::vector<std::barrier<>*> g_warp_barriers;
extern double g_xchg[64][32];
inline void emu_warp_barrier(int w) { g_warp_barriers[w]->arrive_and_wait(); }
#endif
template <class T> inline T __shfl_xor_sync(unsigned, T v, int o) {
    const int t = threadIdx.x + threadIdx.y * blockDim.x, w = t / 32, l = t % 32;
    g_xchg[w][l] = (double)v;
    emu_warp_barrier(w);
    T r = (T)g_xchg[w][l ^ o];
    emu_warp_barrier(w);
    return r;
}
template <class T> inline T __shfl_sync(unsigned, T v, int src) {
    const int t = threadIdx.x + threadIdx.y * blockDim.x, w = t / 32, l = t % 32;
    g_xchg[w][l] = (double)v;
    emu_warp_barrier(w);
    T r = (T)g_xchg[w][src & 31];
    emu_warp_barrier(w);
    return r;
}
[[noreturn]] inline void __trap() { assert(!"__trap"); abort(); }
#include "sm80.h"
