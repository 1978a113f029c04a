// Host emulation of the sm_80 warp-level instructions that kernels/common.cuh wraps
// (mma_16816, ldmatrix_x4, cp_async16 / commit / wait), lane by lane, with the fragment layouts
// of the PTX ISA ("Matrix Fragments for mma.m16n8k16", "ldmatrix"): each lane hands its operands
// to a per-warp table, the warp meets at a barrier, and each lane computes exactly the values the
// hardware would give it. A wrong lane→element mapping in a kernel therefore gives wrong numbers
// here, as it would on a GPU (assuming this file reads the ISA right; smoke_mma_f16 on a real
// GPU is the cross-check).
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
#define EMU_KERNELS 1

inline int emu_tid() { return threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y; }
// Per-warp exchange tables, double-buffered: collective op number n of a lane uses table n % 2,
// so one barrier per op suffices (a lane can only reuse table n % 2 at op n + 2, after every lane
// has passed op n + 1's barrier, i.e. finished reading op n). Each entry carries the op number:
// a lane that reads an entry of another op number (lanes of a warp out of step) aborts.
struct EmuLane {
    unsigned long long n;  // collective ops this lane has done
    float f[12];  // mma: the lane's A (8) and B (4) values, in register order
    const half* ptr;
};
#ifdef EMU_FIBERS
inline thread_local EmuLane emu_tab[2][64][32];
inline thread_local unsigned long long emu_nops[1024];
#else
inline EmuLane emu_tab[2][64][32];
inline thread_local unsigned long long emu_nops[1];
#endif
// Starts a collective op: this lane's entry (to fill, then call emu_meet).
inline EmuLane& emu_entry(int& w, int& l, int& par) {
    const int t = emu_tid();
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
// Waits for the warp; returns lane `src`'s entry of this op.
inline void emu_meet(int w) { emu_warp_barrier(w); }
inline const EmuLane& emu_peer(int par, int w, int src, const EmuLane& mine) {
    const EmuLane& e = emu_tab[par][w][src];
    if (e.n != mine.n) {
        fprintf(stderr, "emulated warp %d: lanes out of step in a collective op (%llu vs %llu)\n", w, e.n, mine.n);
        abort();
    }
    return e;
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

inline void mma_16816(float* d, const unsigned* a, const unsigned* b) {
    int w, l, par;
    EmuLane& me = emu_entry(w, l, par);
    for (int i = 0; i < 8; i++) me.f[i] = emu_half_of(a[i >> 1], i & 1);  // a0.lo, a0.hi, a1.lo, ...
    for (int i = 0; i < 4; i++) me.f[8 + i] = emu_half_of(b[i >> 1], i & 1);
    emu_meet(w);
    // A(r, k) sits in lane (r%8)·4 + (k%8)/2, register (r ≥ 8) + 2·(k ≥ 8), half k%2;
    // B(k, n) in lane n·4 + (k%8)/2, register (k ≥ 8), half k%2.
    const int g = l / 4, q = l % 4;
    float bcol[2][16], arow[2][16];
    for (int kq = 0; kq < 4; kq++) {
        for (int e = 0; e < 2; e++) {
            const float* p = emu_peer(par, w, (2 * q + e) * 4 + kq, me).f + 8;
            bcol[e][2 * kq] = p[0];
            bcol[e][2 * kq + 1] = p[1];
            bcol[e][2 * kq + 8] = p[2];
            bcol[e][2 * kq + 9] = p[3];
        }
        const float* p = emu_peer(par, w, g * 4 + kq, me).f;  // rows g (regs 0, 2) and g + 8 (regs 1, 3)
        for (int h = 0; h < 2; h++) {
            arow[h][2 * kq] = p[2 * h];
            arow[h][2 * kq + 1] = p[2 * h + 1];
            arow[h][2 * kq + 8] = p[4 + 2 * h];
            arow[h][2 * kq + 9] = p[4 + 2 * h + 1];
        }
    }
    for (int h = 0; h < 2; h++)
        for (int e = 0; e < 2; e++) {
            float s = d[2 * h + e];
            for (int k = 0; k < 16; k++) s += arow[h][k] * bcol[e][k];
            d[2 * h + e] = s;
        }
}

template <bool TRANS> inline void ldmatrix_x4(unsigned* r, const half* p) {
    int w, l, par;
    EmuLane& me = emu_entry(w, l, par);
    assert(((uintptr_t)p % 16) == 0 && "ldmatrix row addresses must be 16-byte aligned");
    me.ptr = p;
    emu_meet(w);
    for (int j = 0; j < 4; j++) {
        if (!TRANS) {  // row l/4, columns 2(l%4), 2(l%4) + 1
            const half* row = emu_peer(par, w, 8 * j + l / 4, me).ptr;
            r[j] = emu_pack(row[2 * (l % 4)], row[2 * (l % 4) + 1]);
        } else {  // column l/4 of rows 2(l%4), 2(l%4) + 1
            const half* r0 = emu_peer(par, w, 8 * j + 2 * (l % 4), me).ptr;
            const half* r1 = emu_peer(par, w, 8 * j + 2 * (l % 4) + 1, me).ptr;
            r[j] = emu_pack(r0[l / 4], r1[l / 4]);
        }
    }
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
    static thread_local EmuCpThread s[1024];  // fibers share the OS thread: one state per thread of the block
    return s[emu_tid()];
#else
    static thread_local EmuCpThread s;
    return s;
#endif
}
inline void cp_async16(half* dst, const void* src, int bytes) {
    assert(((uintptr_t)dst % 16) == 0 && "cp.async destination must be 16-byte aligned");
    assert((bytes == 0 || bytes == 16) && "cp_async16 copies 0 or 16 bytes");
    assert((bytes == 0 || ((uintptr_t)src % 16) == 0) && "cp.async source must be 16-byte aligned");
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
