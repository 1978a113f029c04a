// Host emulation of the sm_80 warp-level instructions that kernels/common.cuh wraps
// (mma_16816, ldmatrix_x4, cp_async16 / commit / wait), lane by lane, with the fragment layouts
// of the PTX ISA ("Matrix Fragments for mma.m16n8k16", "ldmatrix"): each lane hands its operands
// to a per-warp table, the warp meets at a barrier, and each lane gets exactly the values the
// hardware would give it (computed once per warp with fibers; see emu_meet). A wrong lane→element
// mapping in a kernel therefore gives wrong numbers here, as it would on a GPU (assuming this
// file reads the ISA right; smoke_mma_f16 on a real GPU is the cross-check).
//
// cp.async is deferred like the hardware's: the destination is poisoned with NaN at issue and
// filled only at the cp_async_wait that retires its group, so a missing wait, or a stage
// overwritten while another warp still reads it, shows up as NaN or wrong values.
#pragma once
#include <cassert>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <vector>
#ifdef __F16C__
#include <immintrin.h>
#endif
#define EMU_KERNELS 1

inline int emu_tid() { return threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y; }
// The thread's number in its cluster (emu_tid() without clusters): the index of the per-thread
// state below, and / 32 of the per-warp tables and barriers.
inline int emu_gtid() { return emu_tid() + emu_rank_base; }
// Per-warp exchange tables, double-buffered: collective op number n of a lane uses table n % 2,
// so one barrier per op suffices (a lane can only reuse table n % 2 at op n + 2, after every lane
// has passed op n + 1's barrier, i.e. finished reading op n). Each entry carries the op number:
// a lane that reads an entry of another op number (lanes of a warp out of step) aborts.
//
// With EMU_FIBERS (a block's threads are cooperative fibers) the lane whose arrival completes the
// warp's barrier is the leader: the others are suspended at the barrier, so it computes every
// lane's result from the table at that one instant and writes it through the lane's `out`
// (registers on the suspended lane's stack), once per warp instead of once per lane. A lane
// resumed by anything else (other lanes of its warp exited) finds emu_done stale and aborts.
// Without fibers (--tsan: concurrent OS threads) each lane computes its own result after the
// barrier, from the same functions.
struct EmuLane {
    unsigned long long n;  // collective ops this lane has done
    float f[12];  // mma: the lane's A (8) and B (4) values, in register order
    float c[4];   // mma: the lane's accumulators (C)
    const half* ptr;  // ldmatrix: the lane's row address
    void* out;  // the lane's result registers (mma: float[4], ldmatrix: unsigned[4])
};
#ifdef EMU_FIBERS
inline thread_local EmuLane emu_tab[2][64][32];
inline thread_local unsigned long long emu_nops[1024];
inline thread_local unsigned long long emu_done[64];  // per warp: 1 + the last op its leader computed
#else
inline EmuLane emu_tab[2][64][32];
inline thread_local unsigned long long emu_nops[1];
#endif
// Starts a collective op: this lane's entry (to fill, then call emu_meet).
inline EmuLane& emu_entry(int& w, int& l, int& par) {
    const int t = emu_gtid();
    w = t / 32;
    l = t % 32;
#ifdef EMU_FIBERS
    unsigned long long& n = emu_nops[t];
#else
    unsigned long long& n = emu_nops[0];
#endif
    par = (int)(n & 1);
    EmuLane& e = emu_tab[par][w][l];
    e.n = n++;
    return e;
}
[[noreturn]] inline void emu_out_of_step(int w, unsigned long long a, unsigned long long b) {
    fprintf(stderr, "emulated warp %d: lanes out of step in a collective op (%llu vs %llu)\n", w, a, b);
    abort();
}
// Lane `src`'s entry of this op.
inline const EmuLane& emu_peer(int par, int w, int src, const EmuLane& mine) {
    const EmuLane& e = emu_tab[par][w][src];
    if (e.n != mine.n) emu_out_of_step(w, e.n, mine.n);
    return e;
}
// Waits for the warp. With fibers: runs lane(l, out) for every lane l of the warp, once, by the
// leader; without: lane(own lane, own out) after the barrier.
template <class F> inline void emu_meet(int w, int l, int par, const EmuLane& me, F lane) {
#ifdef EMU_FIBERS
    if (emu_warp_sync(w)) {
        for (int src = 0; src < 32; src++) lane(src, emu_peer(par, w, src, me).out);
        emu_done[w] = me.n + 1;
    } else if (emu_done[w] != me.n + 1) {
        emu_out_of_step(w, emu_done[w] - 1, me.n);
    }
#else
    (void)par;
    emu_warp_barrier(w);
    lane(l, me.out);
#endif
}

// 16 halves to floats (F16C: two instructions instead of 16 conversions through a register)
inline void emu_h2f16(const half* h, float* out) {
#ifdef __F16C__
    for (int i = 0; i < 16; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i))));
#else
    for (int i = 0; i < 16; i++) out[i] = (float)h[i];
#endif
}
inline float emu_half_of(unsigned u, int hi) {
    half h[2];
    memcpy(h, &u, 4);
    return (float)h[hi];
}
inline unsigned emu_pack(half lo, half hi) {
    half h[2] = {lo, hi};
    unsigned u;
    memcpy(&u, h, 4);
    return u;
}

// The launch's dynamic shared memory: the buffer holds at least the opt-in maximum
// (EMU_SMEM_BYTES); an access inside the buffer but past the launch's size (a kernel that needs
// more than the host asked for) is reported here, as the GPU would fault on it.
unsigned char* emu_dyn_smem();
size_t emu_dyn_smem_bytes();  // the launch's dynamic shared memory (kernel-emu: EMU_SMEM_BYTES)
constexpr unsigned EMU_SMEM_BYTES = 232448;
inline void emu_check_dyn(const void* p, size_t n) {
    const unsigned char* b = emu_dyn_smem();
    const unsigned char* q = static_cast<const unsigned char*>(p);
    if (q >= b && q < b + EMU_SMEM_BYTES && q + n > b + emu_dyn_smem_bytes()) {
        fprintf(stderr, "emulated kernel: shared memory bytes %lld..%lld, past the launch's %zu of dynamic shared memory\n",
                (long long)(q - b), (long long)(q - b + n), emu_dyn_smem_bytes());
        abort();
    }
}

inline unsigned dyn_smem_bytes() { return (unsigned)emu_dyn_smem_bytes(); }

// One warp's D = A·B + C of mma.m16n8k16 from its 32 entries of op `par`. Lane l (g = l/4,
// q = l%4) holds A(g, 2q..2q+1), A(g+8, 2q..), A(g, 2q+8..), A(g+8, 2q+8..) in its four A
// registers (the PTX ISA's "A(r, k) sits in lane (r%8)·4 + (k%8)/2, register (r ≥ 8) + 2·(k ≥ 8),
// half k%2"), B(2q..2q+1, g), B(2q+8.., g) in its two B registers, and C/D(g + 8h, 2q + e) as
// element 2h + e. Each sum runs k = 0..15 in order from C.
inline void emu_mma_warp(int par, int w, const EmuLane& me, float (&D)[16][8]) {
    float A[16][16], B[16][8];
    for (int l = 0; l < 32; l++) {
        const EmuLane& e = emu_peer(par, w, l, me);
        const int g = l / 4, q = 2 * (l % 4);
        const float* f = e.f;
        A[g][q] = f[0], A[g][q + 1] = f[1], A[g + 8][q] = f[2], A[g + 8][q + 1] = f[3];
        A[g][q + 8] = f[4], A[g][q + 9] = f[5], A[g + 8][q + 8] = f[6], A[g + 8][q + 9] = f[7];
        B[q][g] = f[8], B[q + 1][g] = f[9], B[q + 8][g] = f[10], B[q + 9][g] = f[11];
        D[g][q] = e.c[0], D[g][q + 1] = e.c[1], D[g + 8][q] = e.c[2], D[g + 8][q + 1] = e.c[3];
    }
    for (int r = 0; r < 16; r++)
        for (int k = 0; k < 16; k++)
            for (int n = 0; n < 8; n++) D[r][n] += A[r][k] * B[k][n];
}
inline void mma_16816(float* d, const unsigned* a, const unsigned* b) {
    int w, l, par;
    EmuLane& me = emu_entry(w, l, par);
    // a0.lo, a0.hi, a1.lo, ..., then b0.lo, ... (the halves in memory order)
#ifdef __F16C__
    _mm256_storeu_ps(me.f, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a))));
    _mm_storeu_ps(me.f + 8, _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b))));
#else
    for (int i = 0; i < 8; i++) me.f[i] = emu_half_of(a[i >> 1], i & 1);
    for (int i = 0; i < 4; i++) me.f[8 + i] = emu_half_of(b[i >> 1], i & 1);
#endif
    for (int i = 0; i < 4; i++) me.c[i] = d[i];
    me.out = d;
    float D[16][8];
    bool done = false;  // D computed (once per leader, or once per lane without fibers)
    emu_meet(w, l, par, me, [&](int src, void* out) {
        if (!done) emu_mma_warp(par, w, me, D), done = true;
        const int g = src / 4, q = 2 * (src % 4);
        float* o = static_cast<float*>(out);
        o[0] = D[g][q], o[1] = D[g][q + 1], o[2] = D[g + 8][q], o[3] = D[g + 8][q + 1];
    });
}

template <bool TRANS> inline void ldmatrix_x4(unsigned* r, const half* p) {
    int w, l, par;
    EmuLane& me = emu_entry(w, l, par);
    assert(((uintptr_t)p % 16) == 0 && "ldmatrix row addresses must be 16-byte aligned");
    emu_check_dyn(p, 16);
    me.ptr = p;
    me.out = r;
    emu_meet(w, l, par, me, [&](int src, void* out) {
        unsigned* o = static_cast<unsigned*>(out);
        for (int j = 0; j < 4; j++) {
            if (!TRANS) {  // row src/4, columns 2(src%4), 2(src%4) + 1
                const half* row = emu_peer(par, w, 8 * j + src / 4, me).ptr;
                o[j] = emu_pack(row[2 * (src % 4)], row[2 * (src % 4) + 1]);
            } else {  // column src/4 of rows 2(src%4), 2(src%4) + 1
                const half* r0 = emu_peer(par, w, 8 * j + 2 * (src % 4), me).ptr;
                const half* r1 = emu_peer(par, w, 8 * j + 2 * (src % 4) + 1, me).ptr;
                o[j] = emu_pack(r0[src / 4], r1[src / 4]);
            }
        }
    });
}

struct EmuCpOp {
    unsigned char* dst;
    const unsigned char* src;
    int bytes;
};
struct EmuCpThread {
    std::vector<EmuCpOp> open;
    std::vector<std::vector<EmuCpOp>> groups;
};
inline EmuCpThread& emu_cp_state() {
#ifdef EMU_FIBERS
    static thread_local EmuCpThread s[1024];  // fibers share the OS thread: one state per thread of the cluster
    return s[emu_gtid()];
#else
    static thread_local EmuCpThread s;
    return s;
#endif
}
inline void cp_async16(half* dst, const void* src, int bytes) {
    assert(((uintptr_t)dst % 16) == 0 && "cp.async destination must be 16-byte aligned");
    assert((bytes == 0 || bytes == 16) && "cp_async16 copies 0 or 16 bytes");
    assert((bytes == 0 || ((uintptr_t)src % 16) == 0) && "cp.async source must be 16-byte aligned");
    emu_check_dyn(dst, 16);
    memset(dst, 0xFF, 16);  // NaN until the group is waited for
    emu_cp_state().open.push_back({reinterpret_cast<unsigned char*>(dst), static_cast<const unsigned char*>(src), bytes});
}
inline void cp_async_commit() {
    auto& s = emu_cp_state();
    s.groups.push_back(std::move(s.open));
    s.open.clear();
}
template <int N> inline void cp_async_wait() {
    auto& s = emu_cp_state();
    assert(s.open.empty() && "cp_async_wait with uncommitted copies (they would not be waited for)");
    while ((int)s.groups.size() > N) {
        for (const auto& op : s.groups.front()) {
            memset(op.dst, 0, 16);
            if (op.bytes) memcpy(op.dst, op.src, op.bytes);
        }
        s.groups.erase(s.groups.begin());
    }
}

// ---- sm_90a: wgmma.mma_async (m64nNk16, f32 += f16·f16, operands K-major or MN-major in shared
// memory, 128-byte swizzle) with its fences, commit and wait, as kernels/common.cuh wraps them.
//
// Shared addresses are offsets into the block's dynamic shared memory plus EMU_SMEM_BASE, a base
// that is deliberately not 1024-byte aligned (kernels must align their swizzle atoms at run time,
// as on a GPU where the dynamic window need not start on 1 KB). A wgmma is recorded at issue and
// computed at the wgmma_wait that retires its group, reading shared memory then: a stage
// overwritten before the wait (or a cp.async that has not landed: NaN) gives wrong numbers here.
// Each thread computes its own accumulators from shared memory through the descriptor (start
// address, SBO, swizzle decoded as the PTX ISA describes the K-major 128B-swizzle layout), with
// the fragment layout of D: thread t of the warpgroup, warp w = t/32, g = lane/4, q = lane%4,
// holds d[4j + 2h + e] = D(16w + g + 8h, 8j + 2q + e). Sums run k = 0..15 in order from d, as
// mma_16816 above, so a wgmma kernel's results equal an mma.sync kernel's bit for bit.
constexpr unsigned EMU_SMEM_BASE = 0x410;
inline unsigned smem_u32(const void* p) {
    const long long off = (const unsigned char*)p - emu_dyn_smem();
    assert(off >= 0 && off < (long long)emu_dyn_smem_bytes() && "smem_u32: not in the launch's dynamic shared memory");
    return (unsigned)off + EMU_SMEM_BASE;
}
inline unsigned long long wgmma_desc(unsigned addr, unsigned lbo = 16, unsigned sbo = 1024) {
    // the fields are 14 bits of 16-byte units: the kernel's version does not mask, so a value
    // that does not fit would spill into the next field
    assert(addr % 16 == 0 && lbo % 16 == 0 && sbo % 16 == 0 && (lbo >> 4) < (1u << 14) && (sbo >> 4) < (1u << 14) &&
           "wgmma_desc: addresses and offsets in 16-byte units, offsets below 256 KB");
    return (unsigned long long)((addr & 0x3FFFF) >> 4) | ((unsigned long long)(lbo >> 4) << 16) |
           ((unsigned long long)(sbo >> 4) << 32) | (1ull << 62);
}
struct EmuWgmma {
    float* d;
    unsigned long long da, db;
    int n, scale_d, ta, tb;
};
struct EmuWgState {
    std::vector<EmuWgmma> open;
    std::vector<std::vector<EmuWgmma>> groups;
    bool fenced = false;  // wgmma_fence since the last commit
};
inline EmuWgState& emu_wg_state() {
#ifdef EMU_FIBERS
    static thread_local EmuWgState s[1024];
    return s[emu_gtid()];
#else
    static thread_local EmuWgState s;
    return s;
#endif
}
inline void fence_proxy_async() {}
inline void wgmma_fence() { emu_wg_state().fenced = true; }
template <int R> inline void wgmma_fence_regs(float*) {}
// (below) every operand element a wgmma reads has landed at its issue: no cp.async NaN poison
inline void emu_wg_landed(unsigned long long da, unsigned long long db, int n, int ta, int tb);
template <int N, int TA = 0, int TB = 0>
inline void wgmma_f16(float* d, unsigned long long da, unsigned long long db, int scale_d) {
    static_assert(N == 32 || N == 64 || N == 128 || N == 256, "wgmma_f16: N is 32, 64, 128 or 256");
    auto& s = emu_wg_state();
    assert(s.fenced && "wgmma without a wgmma_fence before it");
    assert(blockDim.x % 128 == 0 && blockDim.y == 1 && blockDim.z == 1 && "wgmma: whole warpgroups");
    if (emu_tid() % 128 == 0) emu_wg_landed(da, db, N, TA, TB);
    s.open.push_back({d, da, db, N, scale_d, TA, TB});
}
#ifdef EMU_FIBERS
// A wgmma is one instruction of the whole warpgroup: its 128 threads must issue the same ones
// (shape, descriptors, scale, transposes). The first of a warpgroup's threads to reach a commit
// records its group under the commit's number; the others compare theirs with it. (A barrier per
// K step keeps the threads within a commit or two of each other, inside the 64-entry ring.)
struct EmuWgLead {
    unsigned long long block = ~0ull;
    unsigned n = 0;
    std::vector<EmuWgmma> ops;
};
inline void emu_wg_uniform(const std::vector<EmuWgmma>& ops) {
    static thread_local EmuWgLead lead[8][64];  // warpgroup, commit number % 64
    static thread_local unsigned commits[1024];
    static thread_local unsigned long long seen_block[1024];
    const int t = emu_gtid();
    const unsigned long long blk = emu_block_serial();  // this block (of this launch)
    if (seen_block[t] != blk + 1) seen_block[t] = blk + 1, commits[t] = 0;  // its first commit in this block
    const unsigned n = commits[t]++;
    EmuWgLead& l = lead[t / 128][n % 64];
    if (l.block != blk || l.n != n) {  // the first to get here
        l.block = blk;
        l.n = n;
        l.ops.clear();
        for (const auto& o : ops) l.ops.push_back({nullptr, o.da, o.db, o.n, o.scale_d, o.ta, o.tb});
        return;
    }
    bool same = l.ops.size() == ops.size();
    for (size_t i = 0; same && i < ops.size(); i++) {
        const auto &a = l.ops[i], &b = ops[i];
        same = a.da == b.da && a.db == b.db && a.n == b.n && a.scale_d == b.scale_d && a.ta == b.ta && a.tb == b.tb;
    }
    if (!same) {
        fprintf(stderr, "emulated wgmma: thread %d's commit group %u differs from another thread's of its warpgroup (descriptors, shape or count)\n", t, n);
        abort();
    }
}
#endif
inline void wgmma_commit() {
    auto& s = emu_wg_state();
#ifdef EMU_FIBERS
    emu_wg_uniform(s.open);
#endif
    s.groups.push_back(std::move(s.open));
    s.open.clear();
    s.fenced = false;
}
// An operand's descriptor, checked once per wgmma: element (r, k) (r < rows, k < 16) is K-major
// (mn = 0: rows of 128 B along K, 8-row atoms SBO apart) or MN-major (mn = 1: CUTLASS's canonical
// ((8 fp16, 8 chunks, M/64 blocks), (8 k, K/8 groups)) : ((1, 8, LBO), (128 B, SBO)), i.e. k rows
// of 128 bytes holding 64 consecutive r, 64-wide r blocks LBO apart, 8-deep k groups SBO apart),
// then swizzled: 16-byte chunk bits 4-6 of the shared address XOR its bits 7-9.
struct EmuWgOperand {
    const unsigned char* base;  // host address of shared address 0
    unsigned start, lbo, sbo;
    int mn;
    EmuWgOperand(unsigned long long desc, int mn_, int rows) : mn(mn_) {
        start = (unsigned)(desc & 0x3FFF) << 4;
        lbo = (unsigned)((desc >> 16) & 0x3FFF) << 4;
        sbo = (unsigned)((desc >> 32) & 0x3FFF) << 4;
        base = emu_dyn_smem() - EMU_SMEM_BASE;
        assert((desc >> 62) == 1 && "emulated wgmma: only the 128-byte swizzle");
        assert(((desc >> 49) & 7) == 0 && "emulated wgmma: base offset 0");
        assert(((start >> 7) & 7) == 0 && "wgmma operand: the 8-row atom must start on a 1024-byte boundary");
        if (!mn) assert(lbo == 16 && sbo == 1024 && "emulated wgmma, K-major: LBO 16 (unused), SBO 1024");
        else assert((start & 1023) == 0 && lbo % 1024 == 0 && sbo % 1024 == 0 && "emulated wgmma, MN-major: whole atoms");
        // the atoms' extent (swizzling stays inside an atom; a K-major start is its atom's plus
        // the k offset in the row): first byte and one past the last in shared memory
        const unsigned atom = start & ~1023u;
        const unsigned end = mn ? atom + (unsigned)((rows - 1) / 64) * lbo + sbo + 1024
                                : atom + (unsigned)((rows - 1) / 8) * sbo + 1024;
        assert(atom >= EMU_SMEM_BASE && end <= EMU_SMEM_BASE + emu_dyn_smem_bytes() &&
               "wgmma operand outside the launch's dynamic shared memory");
        (void)end;
    }
    // the element's address in shared memory, swizzled
    unsigned phys(int r, int k) const {
        const unsigned logical = mn ? start + (unsigned)(r / 64) * lbo + (unsigned)(k / 8) * sbo + (unsigned)(k % 8) * 128 +
                                          2u * (unsigned)(r % 64)
                                    : start + (unsigned)(r / 8) * sbo + (unsigned)(r % 8) * 128 + 2u * (unsigned)k;
        return logical ^ (((logical >> 7) & 7u) << 4);
    }
    // the element's 16 bits
    unsigned short bits(int r, int k) const {
        unsigned short b;
        memcpy(&b, base + phys(r, k), 2);
        return b;
    }
    // row r's 16 elements (k = 0..15). K-major: k = 0..7 and 8..15 are each one 16-byte chunk
    // (start is a multiple of 16 bytes, and the swizzle moves whole chunks), read at once.
    void row(int r, float (&out)[16]) const {
        half h[16];
        if (!mn) {
            memcpy(h, base + phys(r, 0), 16);
            memcpy(h + 8, base + phys(r, 8), 16);
        } else {
            for (int k = 0; k < 16; k++) memcpy(&h[k], base + phys(r, k), 2);
        }
        emu_h2f16(h, out);
    }
};
// NC = N/4 as a constant, so that the column loops vectorize at -O2
template <int NC> inline void emu_wgmma_cols(const EmuWgmma& op) {
    const int t = emu_tid() % 128, w = t / 32, l = t % 32, g = l / 4, q = l % 4;
    const EmuWgOperand A(op.da, op.ta, 64), B(op.db, op.tb, op.n);
    // this thread's columns n = 8j + 2q + e as c = 2j + e; the sums run over c innermost, each
    // still k = 0..15 in order from d
    float a[2][16], bt[16][NC], s[2][NC];
    for (int h = 0; h < 2; h++) A.row(16 * w + g + 8 * h, a[h]);
    if (B.mn) {  // columns 8j + 2q and + 1 are next to each other in a k row: one 4-byte load
        for (int j = 0; j < NC / 2; j++)
            for (int k = 0; k < 16; k++) {
                half pair[2];
                memcpy(pair, B.base + B.phys(8 * j + 2 * q, k), 4);
                bt[k][2 * j] = (float)pair[0], bt[k][2 * j + 1] = (float)pair[1];
            }
    } else {
        for (int c = 0; c < NC; c++) {
            float b[16];
            B.row(8 * (c / 2) + 2 * q + c % 2, b);
            for (int k = 0; k < 16; k++) bt[k][c] = b[k];
        }
    }
    for (int c = 0; c < NC; c++)
        for (int h = 0; h < 2; h++) s[h][c] = op.scale_d ? op.d[4 * (c / 2) + 2 * h + c % 2] : 0.f;
    for (int k = 0; k < 16; k++)
        for (int h = 0; h < 2; h++)
            for (int c = 0; c < NC; c++) s[h][c] += a[h][k] * bt[k][c];
    for (int c = 0; c < NC; c++)
        for (int h = 0; h < 2; h++) op.d[4 * (c / 2) + 2 * h + c % 2] = s[h][c];
}
inline void emu_wgmma_run(const EmuWgmma& op) {
    switch (op.n) {
        case 32: return emu_wgmma_cols<8>(op);
        case 64: return emu_wgmma_cols<16>(op);
        case 128: return emu_wgmma_cols<32>(op);
        case 256: return emu_wgmma_cols<64>(op);
        default: assert(!"emulated wgmma: N is 32, 64, 128 or 256");
    }
}
// At issue (by the warpgroup's first thread): a wgmma reads its operands when the hardware gets
// to it, which may be right away, so every element must have landed then; the emulator computes
// it only at the wait that retires it, which would hide a copy that lands in between.
// The poison is the bit pattern 0xFFFF (cp_async16's fill; also the emulated driver's fresh
// allocations), not any NaN: a NaN the data carries (a diverged training step; NaN outputs for
// words past the end) has come through arithmetic or a store and is another pattern.
inline void emu_wg_landed(unsigned long long da, unsigned long long db, int n, int ta, int tb) {
    auto landed = [](const EmuWgOperand& op, int rows, char name) {
        for (int k = 0; k < 16; k++)
            for (int r = 0; r < rows; r++)
                if (op.bits(r, k) == 0xFFFF) {
                    fprintf(stderr, "emulated wgmma: issued while %c(%d, %d) has not landed (cp.async NaN poison)\n",
                            name, r, k);
                    abort();
                }
    };
    landed(EmuWgOperand(da, ta, 64), 64, 'A');
    landed(EmuWgOperand(db, tb, n), n, 'B');
}
template <int N> inline void wgmma_wait() {
    auto& s = emu_wg_state();
    assert(s.open.empty() && "wgmma_wait with uncommitted wgmma (they would not be waited for)");
    while ((int)s.groups.size() > N) {
        for (const auto& op : s.groups.front()) emu_wgmma_run(op);
        s.groups.erase(s.groups.begin());
    }
}

// ---- sm_90a thread-block clusters, mbarriers and bulk copies (kernels/common.cuh's
// cluster_ctarank, cluster_sync, mbar_*, bulk_copy_multicast), with EMU_FIBERS only: the CTAs of
// a cluster are fibers of one OS thread (fibers.cpp), each with its own dynamic shared memory.
//
// An mbarrier is its 8 bytes of shared memory, here: pending arrivals (bits 0-15), the count
// (16-31), the phase (32), the transaction count + 2^19 (33-52) and a tag (56-63) that
// mbar_init writes, so a barrier used before its init (or overwritten) aborts. A phase
// completes when its arrivals and its transaction bytes are all in; the transaction count may
// go below zero first (a peer's bytes landing before this CTA's expect_tx), as on the GPU.
//
// A bulk copy poisons its destination (0xFF, in every CTA of the multicast mask) at issue and
// lands, with its complete_tx, only when some thread of the cluster waits on an mbarrier whose
// phase is not complete (emu_bulk_drain): a wgmma issued before its wait reads the poison
// (emu_wg_landed aborts), and a stage overwritten while a peer's wgmma still reads it gives NaN.
#ifdef EMU_FIBERS
constexpr unsigned long long EMU_MBAR_TAG = 0xA5ull << 56;
inline unsigned char* emu_smem_at(int rank, unsigned addr, unsigned bytes, const char* what) {
    if (rank < 0 || rank >= emu_cluster_size()) {
        fprintf(stderr, "emulated %s: CTA rank %d outside the cluster of %d\n", what, rank, emu_cluster_size());
        abort();
    }
    if (addr < EMU_SMEM_BASE || addr - EMU_SMEM_BASE + bytes > emu_dyn_smem_bytes()) {
        fprintf(stderr, "emulated %s: shared bytes %u..%u outside the launch's %zu of dynamic shared memory\n", what,
                addr - EMU_SMEM_BASE, addr - EMU_SMEM_BASE + bytes, emu_dyn_smem_bytes());
        abort();
    }
    return emu_dyn_smem_of(rank) + (addr - EMU_SMEM_BASE);
}
struct EmuMbar {
    unsigned char* p;
    unsigned long long w;
    EmuMbar(int rank, unsigned addr, const char* what) : p(emu_smem_at(rank, addr, 8, what)) {
        assert(addr % 8 == 0 && "an mbarrier is 8-byte aligned");
        memcpy(&w, p, 8);
        if ((w & (0xFFull << 56)) != EMU_MBAR_TAG) {
            fprintf(stderr, "emulated %s: the mbarrier at shared %u was not initialised (mbar_init)\n", what,
                    addr - EMU_SMEM_BASE);
            abort();
        }
    }
    unsigned pending() const { return (unsigned)(w & 0xFFFF); }
    unsigned count() const { return (unsigned)((w >> 16) & 0xFFFF); }
    unsigned phase() const { return (unsigned)((w >> 32) & 1); }
    long tx() const { return (long)((w >> 33) & 0xFFFFF) - (1l << 19); }
    // the word for these fields (the layout above)
    static unsigned long long pack(unsigned pend, unsigned count, unsigned phase, long tx) {
        assert(tx > -(1l << 19) && tx < (1l << 19) && "emulated mbarrier: transaction count out of range");
        return EMU_MBAR_TAG | (unsigned long long)pend | ((unsigned long long)count << 16) |
               ((unsigned long long)phase << 32) | ((unsigned long long)(tx + (1l << 19)) << 33);
    }
    void set(unsigned pend, unsigned phase_, long tx_) {
        // a phase that completes: the next one starts with the full count
        w = pend == 0 && tx_ == 0 ? pack(count(), count(), phase_ ^ 1, 0) : pack(pend, count(), phase_, tx_);
        memcpy(p, &w, 8);
        emu_progress();
    }
};
inline unsigned cluster_ctarank() { return (unsigned)emu_rank; }
inline void cluster_sync() { emu_cluster_sync(); }
inline void cluster_arrive_relaxed() { emu_cluster_arrive(); }
inline void cluster_wait() { emu_cluster_wait(); }
inline void fence_mbar_init() {}
inline void mbar_init(unsigned bar, unsigned count) {
    assert(count >= 1 && count < 0xFFFF && "mbar_init: count 1..65534");
    unsigned char* p = emu_smem_at(emu_rank, bar, 8, "mbar_init");
    const unsigned long long w = EmuMbar::pack(count, count, 0, 0);
    memcpy(p, &w, 8);
}
inline void emu_mbar_arrive(int rank, unsigned bar, long tx_add, unsigned arrivals, const char* what) {
    EmuMbar m(rank, bar, what);
    if (arrivals > m.pending()) {
        fprintf(stderr, "emulated %s: more arrivals than the mbarrier's pending %u\n", what, m.pending());
        abort();
    }
    m.set(m.pending() - arrivals, m.phase(), m.tx() + tx_add);
}
inline void mbar_arrive_expect_tx(unsigned bar, unsigned bytes) {
    emu_mbar_arrive(emu_rank, bar, (long)bytes, 1, "mbar_arrive_expect_tx");
}
inline bool mbar_try_wait(unsigned bar, unsigned parity) {
    return EmuMbar(emu_rank, bar, "mbar_wait").phase() != (parity & 1);
}
inline void mbar_wait(unsigned bar, unsigned parity) {
    unsigned long long seen = ~0ull;
    int idle = 0;
    while (!mbar_try_wait(bar, parity)) {
        emu_bulk_drain();
        if (mbar_try_wait(bar, parity)) return;
        emu_spin(seen, idle, "mbar_wait");
    }
}
inline void bulk_copy_multicast(unsigned dst, const void* src, unsigned bytes, unsigned bar, unsigned short mask) {
    assert(dst % 16 == 0 && bytes % 16 == 0 && bytes > 0 && ((uintptr_t)src % 16) == 0 &&
           "cp.async.bulk: 16-byte aligned addresses, a multiple of 16 bytes");
    assert(mask != 0 && (mask >> emu_cluster_size()) == 0 && "multicast mask: CTAs of the cluster");
    for (int r = 0; r < emu_cluster_size(); r++) {
        if (!((mask >> r) & 1)) continue;
        unsigned char* d = emu_smem_at(r, dst, bytes, "bulk_copy_multicast");
        emu_smem_at(r, bar, 8, "bulk_copy_multicast's mbarrier");
        memset(d, 0xFF, bytes);
        emu_bulk_defer([=] {
            memcpy(d, src, bytes);
            emu_mbar_arrive(r, bar, -(long)bytes, 0, "bulk_copy_multicast's complete_tx");
        });
    }
}
#else
// the OS-thread launcher (--tsan / --asan) has no clusters
[[noreturn]] inline void emu_no_clusters() {
    fprintf(stderr, "clusters, mbarriers and bulk copies are emulated with fibers only (EMU_FIBERS)\n");
    abort();
}
inline unsigned cluster_ctarank() { emu_no_clusters(); }
inline void cluster_sync() { emu_no_clusters(); }
inline void cluster_arrive_relaxed() { emu_no_clusters(); }
inline void cluster_wait() { emu_no_clusters(); }
inline void fence_mbar_init() { emu_no_clusters(); }
inline void mbar_init(unsigned, unsigned) { emu_no_clusters(); }
inline void mbar_arrive_expect_tx(unsigned, unsigned) { emu_no_clusters(); }
inline void mbar_wait(unsigned, unsigned) { emu_no_clusters(); }
inline void bulk_copy_multicast(unsigned, const void*, unsigned, unsigned, unsigned short) { emu_no_clusters(); }
#endif

// ---- griddepcontrol (kernels/common.cuh's pdl_entry). A launch runs here only after the
// previous one has ended, so there is nothing to wait for; with EMU_FIBERS every thread that
// passes is counted (fibers.cpp), and the emulated driver fails a launch made with programmatic
// stream serialization in which not every thread did (scripts/emu-driver/README.md).
#ifdef EMU_FIBERS
inline void pdl_entry() { emu_pdl_entry(); }
#else
inline void pdl_entry() {}
#endif
