#include "cuda_fp16.h"

#ifdef EMU_FIBERS
// The default: the launcher of scripts/emu-driver (fibers.cpp). A block's threads are fibers on
// one OS thread, switched at __syncthreads and the warp barriers; blocks run in parallel on the
// cores, each with its own shared memory. About 10x faster than an OS thread per CUDA thread.
#include "emu_kernel.h"
#include <cstdio>
void launch(dim3 grid, dim3 block, const std::function<void()>& f, unsigned cluster) {
    // every launch gets the opt-in maximum of an H100 (the kernels check their own need)
    const std::string err = emu_launch(grid.x, grid.y, grid.z, block.x, block.y, block.z, EMU_SMEM_BYTES, f, cluster);
    if (!err.empty()) {
        fprintf(stderr, "emulated launch failed: %s\n", err.c_str());
        abort();
    }
}
#else
// --asan / --tsan: every CUDA thread of a block is an OS thread, __syncthreads a std::barrier,
// so ThreadSanitizer sees the block's threads really run concurrently.
dim3 blockDim, gridDim;
std::barrier<>* g_block_barrier;
std::vector<std::barrier<>*> g_warp_barriers;
double g_xchg[64][32];
// dynamic shared memory: one buffer (blocks run one after another), the size of an H100's opt-in
alignas(128) static unsigned char g_dyn_smem[EMU_SMEM_BYTES];
unsigned char* emu_dyn_smem() { return g_dyn_smem; }
size_t emu_dyn_smem_bytes() { return EMU_SMEM_BYTES; }
// Runs f for every block of grid sequentially, the block's threads concurrently.
void launch(dim3 grid, dim3 block, const std::function<void()>& f, unsigned cluster) {
    if (cluster != 1) {
        fprintf(stderr, "thread-block clusters are emulated with fibers only (not with --asan / --tsan)\n");
        abort();
    }
    blockDim = block; gridDim = grid;
    const int nt = block.x * block.y * block.z;
    std::barrier<> bar(nt);
    g_block_barrier = &bar;
    std::vector<std::barrier<>*> wb;
    for (int w = 0; w < (nt + 31) / 32; w++) wb.push_back(new std::barrier<>(std::min(32, nt - 32 * w)));
    g_warp_barriers = wb;
    std::vector<std::thread> th;
    for (int t = 0; t < nt; t++)
        th.emplace_back([&, t] {
            threadIdx.x = t % block.x; threadIdx.y = (t / block.x) % block.y; threadIdx.z = t / (block.x * block.y);
            for (unsigned z = 0; z < grid.z; z++) for (unsigned y = 0; y < grid.y; y++) for (unsigned x = 0; x < grid.x; x++) {
                blockIdx.x = x; blockIdx.y = y; blockIdx.z = z;
                f();
                bar.arrive_and_wait();
            }
        });
    for (auto& t : th) t.join();
    for (auto* b : wb) delete b;
}
#endif
