// Shared by the kernel-emu drivers (test_conv.cpp, test_rest.cpp): the launcher declaration,
// fp16-exact random inputs, the exact GELU, the relative L2 error and the failure count. Each
// driver defines TEST_SEED before including this and keeps its own report() line format.
#pragma once
#include "cuda_fp16.h"
#include <cstdio>
#include <random>
#include <tuple>
#ifndef TEST_SEED
#error "define TEST_SEED before including testlib.h"
#endif
// cluster: CTAs per thread-block cluster along x (the kernel's CLUSTER_Xn; fibers only)
void launch(dim3 grid, dim3 block, const std::function<void()>& f, unsigned cluster = 1);

static std::mt19937 rng(TEST_SEED);
// n values scale·N(0, 1) + off, each rounded to fp16 (exact inputs for both sides).
static std::vector<float> rndv(size_t n, float scale, float off = 0) {
    std::normal_distribution<float> d(0, 1);
    std::vector<float> v(n);
    for (auto& x : v) x = (float)(half)(d(rng) * scale + off);
    return v;
}
static double g64(double u) { return 0.5 * u * (1 + erf(u / sqrt(2.0))); }
static double gg64(double u) { return 0.5 * (1 + erf(u / sqrt(2.0))) + u * exp(-0.5 * u * u) / sqrt(2 * M_PI); }
// ‖g − w‖₂ / ‖w‖₂ (‖g − w‖₂ when w is zero); infinite if g holds a NaN or an Inf.
template <class A, class B> static double relerr(const A& g, const B& w) {
    double d = 0, r = 0;
    for (size_t i = 0; i < g.size(); i++) { double gv = (double)g[i]; if (!std::isfinite(gv)) return INFINITY; d += (gv - (double)w[i]) * (gv - (double)w[i]); r += (double)w[i] * (double)w[i]; }
    return r > 0 ? sqrt(d / r) : sqrt(d);
}
static int fails = 0;
