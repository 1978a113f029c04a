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
struct alignas(8) float2 { float x, y; };
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
inline uint2 make_uint2(unsigned a, unsigned b) { return {a, b}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline float2 make_float2(float a, float b) { return {a, b}; }
struct dim3 { unsigned x = 1, y = 1, z = 1; };
inline thread_local dim3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;
// Thread-block clusters (EMU_FIBERS only): the CTAs of a cluster run as fibers of one OS thread;
// emu_rank is the running thread's CTA rank in its cluster (blockIdx.x % cluster size, as for
// __cluster_dims__(n, 1, 1)) and emu_rank_base = emu_rank · threads per block, so that
// emu_gtid() numbers the cluster's threads for the per-thread and per-warp state tables.
inline thread_local int emu_rank = 0, emu_rank_base = 0;
#ifdef EMU_FIBERS
// scripts/emu-driver: a block's threads are cooperative fibers on one OS thread (blocks run in
// parallel on a few OS threads), so shared memory is per OS thread and barriers are fiber yields.
void emu_block_sync();
bool emu_warp_sync(int warp);  // true for the lane whose arrival completed the barrier
unsigned long long emu_block_serial();  // a number for the block running on this OS thread, new per block
inline void __syncthreads() { emu_block_sync(); }
#define __shared__ static thread_local
// clusters, mbarriers and bulk copies (sm80.h): fibers.cpp's side
int emu_cluster_size();
unsigned char* emu_dyn_smem_of(int rank);  // the dynamic shared memory of the cluster's CTA `rank`
void emu_cluster_sync();                    // barrier.cluster: every thread of the cluster
void emu_cluster_arrive();                  // its two halves (each thread alternates them)
void emu_cluster_wait();
void emu_progress();                        // an mbarrier changed (for emu_spin's deadlock check)
// An mbarrier wait that found its phase incomplete: lets the cluster's other fibers run; aborts
// when a few rounds of them changed no mbarrier (a wait that can never complete).
void emu_spin(unsigned long long& seen, int& idle, const char* what);
void emu_bulk_defer(std::function<void()> op);  // a bulk copy in flight, done at emu_bulk_drain
void emu_bulk_drain();
void emu_pdl_entry();  // a thread passed pdl_entry (counted per launch for the emulated driver)
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
#define __cluster_dims__(...)
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
    const int t = threadIdx.x + threadIdx.y * blockDim.x + emu_rank_base, w = t / 32, l = t % 32;
    g_xchg[w][l] = (double)v;
    emu_warp_barrier(w);
    T r = (T)g_xchg[w][l ^ o];
    emu_warp_barrier(w);
    return r;
}
template <class T> inline T __shfl_sync(unsigned, T v, int src) {
    const int t = threadIdx.x + threadIdx.y * blockDim.x + emu_rank_base, w = t / 32, l = t % 32;
    g_xchg[w][l] = (double)v;
    emu_warp_barrier(w);
    T r = (T)g_xchg[w][src & 31];
    emu_warp_barrier(w);
    return r;
}
[[noreturn]] inline void __trap() { assert(!"__trap"); abort(); }
#include "sm80.h"
