// The launcher of the emulated driver: every CUDA thread of a block is a fiber on one OS thread,
// switched by a hand-written x86-64 context switch (glibc's swapcontext makes a signal-mask
// syscall per switch, which was 60% of the run time). __syncthreads and the per-warp barrier of
// the shuffles are cooperative yields, so a barrier costs a few context switches instead of
// OS-thread wake-ups. Blocks are independent and run in parallel on $EMU_THREADS OS threads
// (default: all cores); __shared__ is `static thread_local` (see
// ../kernel-emu/inc/cuda_fp16.h, EMU_FIBERS), one copy per OS thread, which is exactly one per
// running block. Threads of a block run in order 0, 1, ... up to their next barrier (a
// deterministic interleaving; data races are not detected here: use
// scripts/kernel-emu/run.sh --tsan). A block whose threads wait at different barriers is
// reported as a failed launch.
//
// Thread-block clusters (a kernel with __cluster_dims__(n, 1, 1)): the n CTAs of a cluster run
// together on one OS thread, their threads all fibers of one scheduler (CTA r's threads after
// CTA r − 1's), each CTA with its own dynamic shared memory, block barrier and blockIdx; the
// cluster barrier waits for all of them. Static __shared__ would be shared by the cluster's CTAs
// here, so the cluster kernels keep everything in dynamic shared memory.
#include "cuda_fp16.h"
#include "emu_kernel.h"
#include <sys/mman.h>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

dim3 blockDim, gridDim;
thread_local double g_xchg[64][32];

#if !defined(__x86_64__)
#error "scripts/emu-driver/fibers.cpp: the fiber switch is written for x86-64"
#endif
// emu_switch(save, to): saves the callee-saved general registers on the current stack, stores
// the stack pointer in *save, and resumes the stack `to`. MXCSR and the x87 control word are not
// switched: nothing here changes them, so every fiber and the launcher share the same values.
extern "C" void emu_switch(void** save, void* to);
asm(R"(
    .text
    .globl emu_switch
    .hidden emu_switch
    .type emu_switch,@function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");

namespace {
// Each fiber's stack; its top is moved down by the fiber's colour (below), so at least 256 KB
// are left.
constexpr size_t STACK = 320 << 10;
// Stacks from mmap all start on a page (and here 64 KB) boundary, so their tops, the lines each
// fiber touches at every switch, would all fall in the same cache sets: with 128-1024 fibers a
// block overflows the ways and every switch misses (72% of emu_switch's samples were its first
// load from the new stack). Fiber i's top is (33·i mod 1024) lines lower: spread over all sets of
// a 64 KB period (33 and 1024 are coprime).
uintptr_t colour(int i) { return (uintptr_t)((33 * i) % 1024) * 64; }

struct Barrier {
    int expected = 0, count = 0;
    uint64_t gen = 0;
    int waiters = -1;  // the fibers waiting for this generation: a list through Sched::next
};
struct Fiber {
    void* sp = nullptr;
    void* stack = nullptr;
    dim3 tid, bid;
    int rank = 0;
    bool arrived = false;  // a cluster_arrive not yet paired with its cluster_wait
    uint64_t arrived_gen = 0;  // the cluster barrier's generation it arrived in
};
// A set of fibers, one bit each (nt ≤ 1024 threads per cluster). next_fiber finds the next one
// to run in a few word operations instead of checking every fiber: with hundreds of fibers
// waiting at a barrier or spinning in mbarrier waits, that scan was ≈ 20% of the self-test.
struct Bits {
    uint64_t w[16] = {};
    void set(int i) { w[i >> 6] |= 1ull << (i & 63); }
    void clear(int i) { w[i >> 6] &= ~(1ull << (i & 63)); }
    // the first member in [a, b), or −1
    int find(int a, int b) const {
        while (a < b) {
            const int k = a >> 6;
            if (const uint64_t m = w[k] & (~0ull << (a & 63))) {
                const int i = (k << 6) + __builtin_ctzll(m);
                return i < b ? i : -1;
            }
            a = (k + 1) << 6;
        }
        return -1;
    }
    bool has(int i) const { return (w[i >> 6] >> (i & 63)) & 1; }
    // the first member in [a, b), else in [c, d), or −1
    int find2(int a, int b, int c, int d) const {
        const int i = find(a, b);
        return i >= 0 ? i : find(c, d);
    }
};
struct Sched {
    void* main = nullptr;
    std::vector<Fiber*> fibers;
    // The fibers that can run (`live`: not done, not waiting at a barrier whose generation has
    // not completed), and of those the ones not deferred (`ready`: deferred ones are runnable
    // but run only when nothing else is: spinning in an mbarrier wait (emu_spin), or just past a
    // cluster_arrive). Kept up to date at every change: a wait (wait_at), a release, a
    // deferral (yield_deferred), an exit (trampoline).
    Bits live, ready;
    std::vector<int> next;  // per fiber: the next fiber waiting at the same barrier (Barrier::waiters)
    int cur = 0, alive = 0, nt = 0;
    int cx = 1, block_threads = 0;  // CTAs per cluster, threads per CTA (nt = cx · block_threads)
    std::vector<Barrier> blocks;    // per CTA of the cluster
    Barrier cluster;
    std::vector<Barrier> warps;     // per warp of the cluster (emu_gtid() / 32)
    const std::function<void()>* f = nullptr;
    std::vector<std::vector<unsigned char>> dyn;  // per CTA of the cluster
    std::vector<std::function<void()>> bulk;      // bulk copies in flight (emu_bulk_defer)
    unsigned long long epoch = 0;                 // barrier arrivals and mbarrier changes so far
    size_t dyn_bytes = 0;  // the running launch's dynamic shared memory (dyn may be larger)
    unsigned long long blocks_run = 0;  // blocks started on this OS thread (emu_block_serial)
};
thread_local Sched S;

[[noreturn]] void emu_cluster_fail(const char* what) {
    fprintf(stderr, "emulated cluster barrier: block (%u,%u,%u) thread %u: %s\n", blockIdx.x, blockIdx.y, blockIdx.z,
            threadIdx.x, what);
    abort();
}
void release(Barrier& b) {
    b.count = 0;
    b.gen++;
    S.epoch++;
    // its waiters can run (a waiting fiber is never deferred)
    for (int i = b.waiters; i >= 0; i = S.next[i]) {
        S.live.set(i);
        S.ready.set(i);
    }
    b.waiters = -1;
}
// The current fiber waits for barrier b's current generation to complete.
void wait_at(Barrier& b) {
    const int i = S.cur;
    S.next[i] = b.waiters;
    b.waiters = i;
    S.live.clear(i);
    S.ready.clear(i);
}
// Resumes fiber i, saving the current stack pointer (a fiber's or the launcher's) in *save.
void resume(int i, void** save) {
    Fiber& f = *S.fibers[i];
    S.cur = i;
    threadIdx = f.tid;
    blockIdx = f.bid;
    emu_rank = f.rank;
    emu_rank_base = f.rank * S.block_threads;
    emu_switch(save, f.sp);
}
// The fiber to run after the current one (−1: none runnable): the next runnable one after it in
// round-robin order (0, 1, ..., nt − 1, 0, ...) among its own CTA's, else among the cluster's,
// skipping the deferred ones unless only they are left. Without clusters that
// is the plain round robin. With them, a CTA runs as far as it can before its peer gets a turn,
// which makes the CTAs drift apart as far as their synchronisation lets them: a missing wait
// between them then shows (a stage refilled while the peer still reads it gives NaN).
int next_fiber() {
    const int cur = S.cur, bt = S.block_threads, r0 = S.fibers[cur]->rank * bt, nt = S.nt;
    if (const int i = S.ready.find2(cur + 1, r0 + bt, r0, cur + 1); i >= 0) return i;
    if (S.cx > 1)  // the other CTAs' (its own were all just checked)
        if (const int i = S.ready.find2(cur + 1, nt, 0, cur + 1); i >= 0) return i;
    return S.live.find2(cur + 1, nt, 0, cur + 1);
}
// Suspends fiber fb and resumes next_fiber() directly: one switch instead of two through the
// launcher. With none runnable (all done, or a deadlock) it returns to the launcher, which
// tells which.
void yield_from(Fiber& fb) {
    const int i = next_fiber();
    if (i >= 0) return resume(i, &fb.sp);
    emu_switch(&fb.sp, S.main);
}
// Counts the current fiber in on b; true when that completes (and releases) the barrier.
bool count_in(Barrier& b) {
    S.epoch++;
    if (++b.count < b.expected) return false;
    release(b);
    return true;
}
// Returns true when this arrival completes the barrier: the fiber goes on at once, while the
// others are still suspended until it yields (sm80.h's leader lanes rely on that).
bool arrive(Barrier& b) {
    Fiber& fb = *S.fibers[S.cur];
    if (count_in(b)) return true;
    wait_at(b);
    yield_from(fb);
    return false;
}
// Lets the other fibers run first while fb stays runnable (marked deferred until it runs again):
// a fiber spinning in an mbarrier wait, or just past a cluster arrive.
void yield_deferred(Fiber& fb) {
    const int me = S.cur;
    S.ready.clear(me);
    const int i = next_fiber();
    if (i >= 0 && i != me) resume(i, &fb.sp);
    S.ready.set(me);
}
void leave(Barrier& b) {
    b.expected--;
    if (b.count > 0 && b.count >= b.expected) release(b);
}
void trampoline() {
    (*S.f)();
    Fiber& fb = *S.fibers[S.cur];
    if (fb.arrived) emu_cluster_fail("exits with a cluster_arrive that no cluster_wait paired");
    S.live.clear(S.cur);
    S.ready.clear(S.cur);
    S.alive--;
    S.epoch++;
    leave(S.blocks[fb.rank]);
    leave(S.cluster);
    const dim3 t = fb.tid;
    leave(S.warps[(t.x + t.y * blockDim.x + t.z * blockDim.x * blockDim.y + fb.rank * S.block_threads) / 32]);
    yield_from(fb);
    abort();  // never resumed
}
// A fresh fiber's stack: the frame emu_switch pops (six registers) and trampoline as its return
// address, placed so that trampoline starts with the ABI's alignment.
void* fresh_stack(void* stack, int i) {
    uintptr_t ret = ((uintptr_t)stack + STACK - 16 - colour(i)) & ~(uintptr_t)15;
    uint64_t* f = (uint64_t*)(ret - 48);
    for (int i = 0; i < 6; i++) f[i] = 0;
    *(uint64_t*)ret = (uint64_t)(uintptr_t)&trampoline;
    return f;
}

// Runs one cluster (one block without clusters: cx = 1) on this OS thread, its CTAs at
// blockIdx.x = bx..bx+cx−1; returns false on a deadlock.
bool run_block(unsigned bx, unsigned by, unsigned bz, int bt, int cx) {
    const int nt = bt * cx;
    while ((int)S.fibers.size() < nt) {
        Fiber* fb = new Fiber;
        fb->stack = mmap(nullptr, STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (fb->stack == MAP_FAILED) {
            perror("emu-driver: fiber stack");
            abort();
        }
        S.fibers.push_back(fb);
    }
    S.blocks_run++;
    S.cx = cx;
    S.block_threads = bt;
    S.blocks.assign(cx, Barrier{bt, 0, 0});
    S.cluster = Barrier{nt, 0, 0};
    // warps never straddle two CTAs: each CTA's warps start at a multiple of 32 in emu_gtid()
    // only when bt is a multiple of 32, which clusters require (emu_launch)
    const int wpb = (bt + 31) / 32;
    S.warps.assign(wpb * cx, Barrier{});
    for (int w = 0; w < wpb * cx; w++) S.warps[w].expected = std::min(32, bt - 32 * (w % wpb));
    for (int i = 0; i < nt; i++) {
        Fiber& fb = *S.fibers[i];
        const int t = i % bt;
        fb.sp = fresh_stack(fb.stack, i);
        fb.tid.x = t % blockDim.x;
        fb.tid.y = (t / blockDim.x) % blockDim.y;
        fb.tid.z = t / (blockDim.x * blockDim.y);
        fb.rank = i / bt;
        fb.bid = dim3{bx + (unsigned)fb.rank, by, bz};
        fb.arrived = false;
    }
    S.next.assign(nt, -1);
    S.live = S.ready = Bits{};
    for (int i = 0; i < nt; i++) S.live.set(i), S.ready.set(i);
    S.bulk.clear();
    S.alive = nt;
    S.nt = nt;
    // the fibers switch among themselves (yield_from) and come back here only when none is
    // runnable: all done, or a deadlock (this pass then finds no progress)
    while (S.alive > 0) {
        bool progress = false;
        for (int i = 0; i < nt; i++) {
            if (!S.live.has(i)) continue;
            resume(i, &S.main);
            progress = true;
        }
        if (!progress) return false;
    }
    if (!S.bulk.empty()) {
        fprintf(stderr, "emulated cluster (%u,%u,%u): %zu bulk copies still in flight when its CTAs exited (nobody "
                "waited for them)\n", bx, by, bz, S.bulk.size());
        abort();
    }
    return true;
}

struct Job {
    unsigned gx, gy, gz, cx;  // cx: CTAs per cluster along x (1: no clusters)
    int nt;
    size_t dyn;
    const std::function<void()>* f;
    std::atomic<uint64_t> next{0};
    uint64_t total;
    std::atomic<bool> deadlock{false};
    std::string where;
    std::mutex m;
};

void work(Job& j) {
    S.f = j.f;
    // at least the opt-in maximum, so that an access past the launch's size stays in the buffer
    // for sm80.h's checks to report
    const size_t want = std::max<size_t>(j.dyn, EMU_SMEM_BYTES);
    if (S.dyn.size() < j.cx) S.dyn.resize(j.cx);
    for (auto& d : S.dyn)
        if (d.size() < want) d.resize(want);
    S.dyn_bytes = j.dyn;
    const unsigned ncx = j.gx / j.cx;  // clusters along x
    for (uint64_t b; (b = j.next.fetch_add(1)) < j.total && !j.deadlock.load();) {
        const unsigned x = (b % ncx) * j.cx, y = (b / ncx) % j.gy, z = b / ((uint64_t)ncx * j.gy);
        if (!run_block(x, y, z, j.nt, j.cx)) {
            std::lock_guard<std::mutex> g(j.m);
            if (!j.deadlock.exchange(true))
                j.where = "block (" + std::to_string(x) + "," + std::to_string(y) + "," + std::to_string(z) + ")";
        }
    }
}

struct Pool {
    std::mutex m;
    std::condition_variable cv, done;
    uint64_t gen = 0;
    int busy = 0;
    Job* job = nullptr;
    int n = 0;
    Pool() {
        const char* e = getenv("EMU_THREADS");
        n = e ? atoi(e) : (int)std::thread::hardware_concurrency();
        if (n < 1) n = 1;
        for (int i = 1; i < n; i++) std::thread([this] { loop(); }).detach();
    }
    void loop() {
        uint64_t seen = 0;
        for (;;) {
            Job* j;
            {
                std::unique_lock<std::mutex> g(m);
                cv.wait(g, [&] { return gen != seen; });
                seen = gen;
                j = job;
            }
            work(*j);
            std::lock_guard<std::mutex> g(m);
            if (--busy == 0) done.notify_all();
        }
    }
    void run(Job& j) {
        const uint64_t helpers = std::min<uint64_t>(n - 1, j.total - 1);
        if (helpers > 0) {
            std::lock_guard<std::mutex> g(m);
            job = &j;
            busy = n - 1;
            gen++;
            cv.notify_all();
        }
        work(j);
        if (helpers > 0) {
            std::unique_lock<std::mutex> g(m);
            done.wait(g, [&] { return busy == 0; });
        }
    }
};
}  // namespace

void emu_block_sync() { arrive(S.blocks[emu_rank]); }
bool emu_warp_sync(int w) { return arrive(S.warps[w]); }
unsigned char* emu_dyn_smem() { return S.dyn[emu_rank].data(); }
unsigned char* emu_dyn_smem_of(int rank) { return S.dyn[rank].data(); }
int emu_cluster_size() { return S.cx; }
void emu_cluster_sync() {
    if (S.fibers[S.cur]->arrived) emu_cluster_fail("cluster_sync after a cluster_arrive with no cluster_wait");
    arrive(S.cluster);
}
// The split barrier: arrive counts this thread in the current generation without blocking;
// wait blocks until that generation has completed. A thread arrives once per wait.
void emu_cluster_arrive() {
    Fiber& fb = *S.fibers[S.cur];
    if (fb.arrived) emu_cluster_fail("two cluster_arrive with no cluster_wait between them");
    fb.arrived = true;
    fb.arrived_gen = S.cluster.gen;
    count_in(S.cluster);
    // A thread goes on past its arrive (it does not wait), but only once nothing else can run:
    // its CTA's other threads arrive too, then the CTAs their arrivals released run as far as
    // they can (refilling this CTA's stages) before this one goes on past its arrive. A thread
    // that arrives before it is really done (its wgmma not yet retired) then reads the refill.
    yield_deferred(fb);
}
void emu_cluster_wait() {
    Fiber& fb = *S.fibers[S.cur];
    if (!fb.arrived) emu_cluster_fail("cluster_wait with no cluster_arrive before it");
    fb.arrived = false;
    if (S.cluster.gen != fb.arrived_gen) return;  // its generation has completed
    wait_at(S.cluster);  // the generation it arrived in, still the current one
    yield_from(fb);
}
void emu_progress() { S.epoch++; }
void emu_bulk_defer(std::function<void()> op) { S.bulk.push_back(std::move(op)); }
void emu_bulk_drain() {
    std::vector<std::function<void()>> ops;
    ops.swap(S.bulk);
    for (auto& op : ops) op();
}
void emu_spin(unsigned long long& seen, int& idle, const char* what) {
    if (S.epoch != seen) {
        seen = S.epoch;
        idle = 0;
    } else if (++idle > 3) {  // every other fiber had three turns and no barrier or mbarrier moved
        fprintf(stderr, "emulated %s: block (%u,%u,%u) thread %u waits for an mbarrier phase that cannot complete "
                "(deadlock)\n", what, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x);
        abort();
    }
    yield_deferred(*S.fibers[S.cur]);
}
// pdl_entry: threads that passed it since the last emu_pdl_reset (every launch's threads, on
// every OS thread of the pool), unless the driver's fault injection asked to ignore them.
static std::atomic<unsigned long long> g_pdl_entries{0};
static std::atomic<bool> g_pdl_ignore{false};
void emu_pdl_entry() {
    if (!g_pdl_ignore.load(std::memory_order_relaxed)) g_pdl_entries.fetch_add(1, std::memory_order_relaxed);
}
void emu_pdl_reset(bool ignore) {
    g_pdl_entries.store(0);
    g_pdl_ignore.store(ignore);
}
unsigned long long emu_pdl_entries() { return g_pdl_entries.load(); }
size_t emu_dyn_smem_bytes() { return S.dyn_bytes; }
unsigned long long emu_block_serial() { return S.blocks_run; }

std::string emu_launch(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, size_t dyn_smem,
                       const std::function<void()>& f, unsigned cluster) {
    // never destroyed: its detached threads wait on its condition variable until the process ends
    // (destroying it at exit would block in pthread_cond_destroy)
    static Pool& pool = *new Pool;
    blockDim = dim3{bx, by, bz};
    gridDim = dim3{gx, gy, gz};
    const unsigned bt = bx * by * bz;
    if (cluster < 1 || gx % cluster != 0) return "grid x " + std::to_string(gx) + " is not a multiple of the cluster size " + std::to_string(cluster);
    if (cluster > 1 && (bt % 32 != 0 || bt * cluster > 1024))
        return "the emulated clusters need whole warps and at most 1024 threads per cluster";
    if (bt < 1 || bt > 1024) return "a block of " + std::to_string(bt) + " threads (1 to 1024)";
    Job j;
    j.cx = cluster;
    j.gx = gx;
    j.gy = gy;
    j.gz = gz;
    j.nt = (int)(bx * by * bz);
    j.dyn = dyn_smem;
    j.f = &f;
    j.total = (uint64_t)(gx / cluster) * gy * gz;
    pool.run(j);
    if (j.deadlock) return "threads of " + j.where + " wait at different barriers (a __syncthreads not reached by all)";
    return "";
}
