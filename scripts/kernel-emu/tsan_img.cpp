// ThreadSanitizer run of the two image-resident kernels alone, on three shapes (every CUDA thread
// an OS thread, __syncthreads a std::barrier): a shared-memory write and another thread's access
// with no barrier between them is reported, as far as ThreadSanitizer's access history reaches
// (it caught the forward's post-copy barrier removed; it missed the weight gradient's closing
// barrier removed, where every warp reads the same stage: bench/logs/kernel-emu-tsan-img.log).
// A minute instead of run.sh --tsan's quarter of an hour:
//   out=/tmp/tsan-img; mkdir -p $out/kernels
//   for f in kernels/*.cu kernels/*.cuh; do sed -E 's/extern __shared__ (\w+) (\w+)\[\];/\1* \2 = reinterpret_cast<\1*>(emu_dyn_smem());/' $f > $out/kernels/$(basename $f); done
//   g++ scripts/kernel-emu/emu.cpp scripts/kernel-emu/tsan_img.cpp -o $out/t -std=c++20 -g -O1 -fsanitize=thread \
//       -Iscripts/kernel-emu/inc -Iscripts/kernel-emu -I$out/kernels -lpthread && TSAN_OPTIONS=halt_on_error=1 $out/t
#define TEST_SEED 7
#include "testlib.h"
#include "conv.cu"
#include "norm.cu"
int main() {
    struct S { int N, H, W, cin, cout, pool; };
    for (S s : {S{2, 31, 31, 24, 64, 1}, S{1, 15, 15, 64, 64, 0}, S{3, 7, 5, 8, 16, 1}}) {
        const int K = 9 * s.cin;
        auto a = rndv((size_t)s.N * s.H * s.W * s.cin, 1.0f);
        auto w = rndv((size_t)s.cout * K, 0.1f);
        std::vector<half> ah(a.size()), wf(w.size());
        for (size_t i = 0; i < a.size(); i++) ah[i] = (half)a[i];
        for (size_t i = 0; i < w.size(); i++) wf[i] = (half)w[i];
        const size_t ylen = s.pool ? (size_t)s.N * (s.H / 2) * (s.W / 2) * s.cout : (size_t)s.N * s.H * s.W * s.cout;
        std::vector<half> y(ylen, (half)NAN);
        std::vector<unsigned char> am(s.pool ? ylen : 8);
        std::vector<double> part((size_t)2 * s.cout * s.N, NAN);
        launch(dim3{(unsigned)s.N, (unsigned)((s.cout + 63) / 64), 1}, dim3{IMG_THREADS, 1, 1}, [&] {
            conv3x3_fwd_img_f16(ah.data(), s.N, s.H, s.W, s.cin, wf.data(), s.cout, s.pool, y.data(), am.data(), part.data());
        });
        printf("fwd img %dx%dx%d->%d pool%d: ran\n", s.H, s.W, s.cin, s.cout, s.pool);
        if (K <= IMG_WG_K) {
            auto g = rndv((size_t)s.N * s.H * s.W * s.cout, 1.0f);
            std::vector<half> gh(g.size());
            for (size_t i = 0; i < g.size(); i++) gh[i] = (half)g[i];
            std::vector<float> out((size_t)s.N * s.cout * K, NAN);
            launch(dim3{1, (unsigned)((s.cout + 63) / 64), (unsigned)s.N}, dim3{IMG_THREADS, 1, 1}, [&] {
                conv3x3_wgrad_img_f16(ah.data(), s.N, s.H, s.W, s.cin, gh.data(), s.cout, out.data(), 1);
            });
            printf("wgrad img %dx%dx%d->%d: ran\n", s.H, s.W, s.cin, s.cout);
        }
    }
    return 0;
}
