// ThreadSanitizer run of wgmmap's four persistent kernels alone (every CUDA thread an OS thread,
// __syncthreads a std::barrier): each on one block that takes three row tiles of three K steps,
// so the pipeline runs across tile boundaries and each tile's epilogue (pooling or stores, and the
// sums in the step's stage) overlaps the next tile's copies in flight. The one-tile-per-block
// kernels they are compared with run under it too: the wgmma forwards' epilogue through shared
// memory (conv_fwd_epilogue_smem) among them. A shared-memory write and
// another thread's access with no barrier between them is reported (halt_on_error=1), as far as
// ThreadSanitizer's access history reaches; then each output is compared with the
// one-tile-per-block wgmma kernel's: bit for bit, but the input gradient's sums to f32 rounding.
// A few minutes instead of run.sh --tsan's hour:
//   out=/tmp/tsan-p; mkdir -p $out/kernels
//   for f in kernels/*.cu kernels/*.cuh; do sed -E 's/extern __shared__ (\w+) (\w+)\[\];/\1* \2 = reinterpret_cast<\1*>(emu_dyn_smem());/' $f > $out/kernels/$(basename $f); done
//   g++ scripts/kernel-emu/emu.cpp scripts/kernel-emu/tsan_persistent.cpp -o $out/t -std=c++20 -g -O1 -fsanitize=thread \
//       -Iscripts/kernel-emu/inc -Iscripts/kernel-emu -I$out/kernels -lpthread && TSAN_OPTIONS=halt_on_error=1 $out/t
#define TEST_SEED 11
#include <cstring>
#include "testlib.h"
#include "conv.cu"
#include "norm.cu"

using Fwd = void (*)(const half*, int, int, int, int, const half*, int, int, half*, unsigned char*, double*);
using Dgrad = void (*)(const half*, int, int, int, int, int, const half*, half*, const half*, const float*,
                       const float*, const float*, int, float*);

static std::vector<half> halves(size_t n, float scale) {
    auto v = rndv(n, scale);
    std::vector<half> h(n);
    for (size_t i = 0; i < n; i++) h[i] = (half)v[i];
    return h;
}

// y, argmax and the BN partials of `persistent` on one block against `plain` on one per tile
static void fwd(Fwd persistent, Fwd plain, int tm, int tn, int threads, int N, int H, int W, int cin, int cout,
                int pool, const char* what) {
    const auto a = halves((size_t)N * H * W * cin, 1.0f), wf = halves((size_t)cout * 9 * cin, 0.1f);
    const long long M = pool ? (long long)N * (H / 2) * (W / 2) * 4 : (long long)N * H * W;
    const unsigned tiles = (unsigned)((M + tm - 1) / tm), cols = (unsigned)((cout + tn - 1) / tn);
    const size_t ylen = pool ? (size_t)M / 4 * cout : (size_t)M * cout;
    std::vector<half> y0(ylen, (half)NAN), y1(ylen, (half)NAN);
    std::vector<unsigned char> a0(pool ? ylen : 8, 0xEE), a1(pool ? ylen : 8, 0xEE);
    std::vector<double> p0((size_t)2 * cout * tiles, NAN), p1((size_t)2 * cout * tiles, NAN);
    launch(dim3{tiles, cols, 1}, dim3{(unsigned)threads, 1, 1}, [&] { plain(a.data(), N, H, W, cin, wf.data(), cout, pool, y0.data(), a0.data(), p0.data()); });
    launch(dim3{1, cols, 1}, dim3{(unsigned)threads, 1, 1}, [&] { persistent(a.data(), N, H, W, cin, wf.data(), cout, pool, y1.data(), a1.data(), p1.data()); });
    const bool same = memcmp(y0.data(), y1.data(), ylen * 2) == 0 && a0 == a1 && memcmp(p0.data(), p1.data(), p0.size() * 8) == 0;
    printf("%s, %u tiles on one block: no race reported, y, argmax, partials bit-identical: %s\n", what, tiles, same ? "PASS" : "FAIL");
    fails += !same;
}

// da and the sums' partials, the same way
static void dgrad(Dgrad persistent, Dgrad plain, int tm, int tn, int threads, int N, int H, int W, int cin, int cout,
                  const char* what) {
    const long long P = (long long)N * H * W;
    const auto g = halves((size_t)P * cout, 1.0f), wk = halves((size_t)cin * 9 * cout, 0.1f), x = halves((size_t)P * cin, 1.0f);
    const auto mean = rndv(cin, 0.1f), shift = rndv(cin, 0.1f);
    const std::vector<float> inv(cin, 1.5f);
    const unsigned tiles = (unsigned)((P + tm - 1) / tm), cols = (unsigned)((cin + tn - 1) / tn);
    std::vector<half> d0((size_t)P * cin, (half)NAN), d1((size_t)P * cin, (half)NAN);
    std::vector<float> p0((size_t)2 * cin * tiles, NAN), p1((size_t)2 * cin * tiles, NAN);
    auto run = [&](Dgrad k, unsigned blocks, std::vector<half>& d, std::vector<float>& p) {
        launch(dim3{blocks, cols, 1}, dim3{(unsigned)threads, 1, 1}, [&] {
            k(g.data(), N, H, W, cin, cout, wk.data(), d.data(), x.data(), mean.data(), inv.data(), shift.data(), 1, p.data());
        });
    };
    run(plain, tiles, d0, p0);
    run(persistent, 1, d1, p1);
    // the one-tile-per-block kernel sums through its shared-memory loop, the persistent one
    // through its register epilogue: the same values in another order
    const double e = relerr(p1, std::vector<double>(p0.begin(), p0.end()));
    const bool same = memcmp(d0.data(), d1.data(), d0.size() * 2) == 0 && e < 1e-5;
    printf("%s, %u tiles on one block: no race reported, da bit-identical, sums' partials relL2 %.1e: %s\n", what, tiles, e,
           same ? "PASS" : "FAIL");
    fails += !same;
}

int main() {
    // three tiles of three K steps each (K = 144: 16 channels × 9 taps)
    fwd(conv3x3_fwd_wgmma_p_f16, conv3x3_fwd_wgmma_f16, 128, 256, 256, 2, 12, 12, 16, 256, 0, "fwd 128x256");
    fwd(conv3x3_fwd_wgmma_p_f16, conv3x3_fwd_wgmma_f16, 128, 256, 256, 6, 8, 8, 16, 256, 1, "fwd 128x256, pooled");
    fwd(conv3x3_fwd_wgmma_p_tall_f16, conv3x3_fwd_wgmma_tall_f16, 256, 64, 512, 4, 12, 12, 16, 64, 0, "fwd 256x64");
    dgrad(conv3x3_dgrad_wgmma_p_f16, conv3x3_dgrad_wgmma_f16, 128, 256, 256, 2, 12, 12, 256, 16, "dgrad 128x256");
    dgrad(conv3x3_dgrad_wgmma_p_tall_f16, conv3x3_dgrad_wgmma_tall_f16, 256, 64, 512, 4, 12, 12, 64, 16, "dgrad 256x64");
    printf("%d failures\n", fails);
    return fails != 0;
}
