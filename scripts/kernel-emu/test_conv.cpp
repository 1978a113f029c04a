#define TEST_SEED 42
#include "testlib.h"
#include "conv.cu"
#include "norm.cu"

static void report(const char* what, int N, int H, int W, int cin, int cout, int pool, int bn, double e, double tol) {
    printf("%-28s N%d %dx%dx%d->%d pool%d bn%d relL2 %.3e %s\n", what, N, H, W, cin, cout, pool, bn, e, e <= tol ? "PASS" : "FAIL");
    if (!(e <= tol)) fails++;
}

static void test(int N, int H, int W, int cin, int cout, int pool, int bn) {
    const int K = 9 * cin;
    // the wide mma kernels (128×128 tiles; the host takes them where the GEMM's N is ≥ 128) on
    // the shapes with a channel count past one 64-wide tile (partial tiles at 72 and 136)
    const bool wide = cin > 64 || cout > 64;
    auto x = rndv((size_t)N * H * W * cin, 1.0f);
    auto w = rndv((size_t)cout * K, 1.0f / sqrtf(K));
    // the mma kernels' fp16 weights (conv_weights_f16; fewer blocks than values: grid-stride),
    // wt checked against the flip it stands for
    std::vector<half> wf((size_t)cout * K, (half)NAN), wt((size_t)cout * K, (half)NAN), wk((size_t)cout * K, (half)NAN);
    const dim3 gcw{(unsigned)std::max<size_t>(1, wf.size() / 256 / 3), 1, 1};
    launch(gcw, dim3{256, 1, 1}, [&] { conv_weights_f16(w.data(), cout, cin, wf.data(), wt.data(), 0); });
    // the wgmma input gradient's K-major copy: wk [cin][9·cout]
    launch(gcw, dim3{256, 1, 1}, [&] { conv_weights_f16(w.data(), cout, cin, nullptr, wk.data(), 1); });
    {
        long long bad = 0;
        for (int o = 0; o < cout; o++) for (int t = 0; t < 9; t++) for (int i = 0; i < cin; i++) {
            const half h = (half)w[((size_t)o * 9 + t) * cin + i];
            const size_t kb = (size_t)(8 - t) * cout + o;
            bad += !(wf[((size_t)o * 9 + t) * cin + i] == h) || !(wt[kb * cin + i] == h) ||
                   !(wk[(size_t)i * 9 * cout + kb] == h);
        }
        printf("  conv_weights_f16: %lld of %zu wrong %s\n", bad, 3 * wf.size(), bad ? "FAIL" : "PASS");
        fails += bad > 0;
    }
    // the multicast kernels' copies (layout 2, mc_tiled_index) where they are defined: every
    // element of wf and wk at its place in the bulk-copy blocks
    const bool mc_fwd = cout % MC_TN == 0 && K % MC_WK == 0, mc_dgrad = cin % MC_TN == 0 && 9 * cout % MC_WK == 0;
    std::vector<half> wfb(mc_fwd ? wf.size() : 0, (half)NAN), wkb(mc_dgrad ? wk.size() : 0, (half)NAN);
    if (mc_fwd || mc_dgrad) {
        launch(gcw, dim3{256, 1, 1}, [&] { conv_weights_f16(w.data(), cout, cin, mc_fwd ? wfb.data() : nullptr, mc_dgrad ? wkb.data() : nullptr, 2); });
        long long bad = 0;
        for (int o = 0; mc_fwd && o < cout; o++) for (int k = 0; k < K; k++) bad += !(wfb[mc_tiled_index(o, k, K)] == wf[(size_t)o * K + k]);
        for (int i = 0; mc_dgrad && i < cin; i++) for (int k = 0; k < 9 * cout; k++) bad += !(wkb[mc_tiled_index(i, k, 9 * cout)] == wk[(size_t)i * 9 * cout + k]);
        printf("  conv_weights_f16 bulk-copy layout (%s%s): %lld wrong %s\n", mc_fwd ? "wf" : "", mc_dgrad ? " wk" : "", bad, bad ? "FAIL" : "PASS");
        fails += bad > 0;
    }
    auto shift = rndv(cin, 0.3f);
    auto mean = rndv(cin, 0.3f);
    auto inv = rndv(cin, 0.3f); for (auto& v : inv) v = (float)(half)(0.6f + fabsf(v));
    std::vector<float> bnbuf(mean); bnbuf.insert(bnbuf.end(), inv.begin(), inv.end());
    auto u = [&](float xv, int c) { return bn ? ((double)xv - mean[c]) * inv[c] + shift[c] : (double)xv + shift[c]; };
    std::vector<double> a(x.size());
    for (size_t i = 0; i < x.size(); i++) a[i] = g64(u(x[i], i % cin));
    // reference full conv
    std::vector<double> full((size_t)N * H * W * cout, 0.0);
    for (int n = 0; n < N; n++) for (int y = 0; y < H; y++) for (int xx = 0; xx < W; xx++) for (int o = 0; o < cout; o++) {
        double s = 0;
        for (int ky = 0; ky < 3; ky++) for (int kx = 0; kx < 3; kx++) {
            int sy = y + ky - 1, sx = xx + kx - 1;
            if (sy < 0 || sx < 0 || sy >= H || sx >= W) continue;
            for (int i = 0; i < cin; i++) s += a[(((size_t)n * H + sy) * W + sx) * cin + i] * w[(size_t)o * K + (ky * 3 + kx) * cin + i];
        }
        full[(((size_t)n * H + y) * W + xx) * cout + o] = s;
    }
    const int PH = H / 2, PW = W / 2;
    const size_t ylen = pool ? (size_t)N * PH * PW * cout : full.size();
    std::vector<double> yref(ylen);
    std::vector<unsigned char> amref(pool ? ylen : 0);
    if (pool) {
        for (int n = 0; n < N; n++) for (int py = 0; py < PH; py++) for (int px = 0; px < PW; px++) for (int o = 0; o < cout; o++) {
            auto at = [&](int k) { return full[(((size_t)n * H + 2 * py + k / 2) * W + 2 * px + k % 2) * cout + o]; };
            double best = at(0); int arg = 0;
            for (int k = 1; k < 4; k++) if (at(k) > best) { best = at(k); arg = k; }
            size_t i = (((size_t)n * PH + py) * PW + px) * cout + o;
            yref[i] = best; amref[i] = arg;
        }
    } else yref = full;
    // device buffers
    std::vector<half> xh(x.size()); for (size_t i = 0; i < x.size(); i++) xh[i] = (half)x[i];
    std::vector<half> yh(ylen, (half)NAN), yh2(ylen, (half)NAN);
    std::vector<unsigned char> am(pool ? ylen : 8, 0xEE), am2(pool ? ylen : 8, 0xEE);
    long long M = pool ? (long long)N * PH * PW * 4 : (long long)N * H * W;
    dim3 grid{(unsigned)((M + 63) / 64), (unsigned)((cout + 63) / 64), 1}, block{128, 1, 1};
    // as src/gpu/backend.rs does it: act_f16 once, then the conv with bn = 2
    std::vector<half> ah(x.size(), (half)NAN);
    long long len8 = (long long)x.size() / 8;
    launch(dim3{(unsigned)((len8 + 255) / 256), 1, 1}, dim3{256, 1, 1}, [&] { act_f16(xh.data(), len8, cin, bnbuf.data(), bnbuf.data() + cin, shift.data(), bn, ah.data()); });
    launch(grid, block, [&] { conv3x3_fwd_f16(ah.data(), N, H, W, cin, nullptr, nullptr, nullptr, 2, w.data(), cout, pool, yh.data(), am.data()); });
    std::vector<double> yg(ylen); for (size_t i = 0; i < ylen; i++) yg[i] = (double)(float)yh[i];
    report("fwd (act_f16 + conv)", N, H, W, cin, cout, pool, bn, relerr(yg, yref), 1e-2);
    // act_f16 on a small grid (several chunks per thread, each thread's channels fixed; a grid
    // whose threads are no multiple of cin/8 idles the rest) gives the one-chunk-per-thread bits
    for (unsigned g : {1u, 3u}) {
        std::vector<half> ah2(x.size(), (half)NAN);
        launch(dim3{g, 1, 1}, dim3{96, 1, 1}, [&] { act_f16(xh.data(), len8, cin, bnbuf.data(), bnbuf.data() + cin, shift.data(), bn, ah2.data()); });
        int same = memcmp(ah.data(), ah2.data(), x.size() * 2) == 0;
        printf("  act_f16 on %u block(s) of 96 (%lld chunks of %d channels): bit-identical: %s\n", g, len8, cin / 8 * 8, same ? "PASS" : "FAIL");
        fails += !same;
    }
    // the fused prologue must give bit-identical results
    launch(grid, block, [&] { conv3x3_fwd_f16(xh.data(), N, H, W, cin, bnbuf.data(), bnbuf.data() + cin, shift.data(), bn, w.data(), cout, pool, yh2.data(), am2.data()); });
    int same = memcmp(yh.data(), yh2.data(), ylen * 2) == 0 && am == am2;
    printf("  fused prologue bit-identical: %s\n", same ? "PASS" : "FAIL");
    fails += !same;
    // the sm_80 kernel (mma.sync + ldmatrix + cp.async, emulated lane by lane): the same sums in
    // the same order as the emulated wmma, so bit-identical here (not necessarily on a GPU)
    {
        std::vector<half> yh3(ylen, (half)NAN);
        std::vector<unsigned char> am3(pool ? ylen : 8, 0xEE);
        dim3 gm{(unsigned)((M + 127) / 128), (unsigned)((cout + 63) / 64), 1};
        launch(gm, block, [&] { conv3x3_fwd_mma_f16(ah.data(), N, H, W, cin, wf.data(), cout, pool, yh3.data(), am3.data(), nullptr); });
        std::vector<double> yg3(ylen); for (size_t i = 0; i < ylen; i++) yg3[i] = (double)(float)yh3[i];
        report("fwd mma (sm_80 path)", N, H, W, cin, cout, pool, bn, relerr(yg3, yref), 1e-2);
        int same3 = memcmp(yh.data(), yh3.data(), ylen * 2) == 0 && am == am3;
        printf("  mma path bit-identical to wmma path: %s\n", same3 ? "PASS" : "FAIL");
        fails += !same3;
        // with the BatchNorm partials in the epilogue (as the training forward runs it), then
        // bn_finalize_f32: y unchanged, statistics those of the stored fp16 y (f64 reference)
        std::vector<half> yh4(ylen, (half)NAN);
        std::vector<unsigned char> am4(pool ? ylen : 8, 0xEE);
        std::vector<double> part((size_t)2 * cout * gm.x, NAN);
        launch(gm, block, [&] { conv3x3_fwd_mma_f16(ah.data(), N, H, W, cin, wf.data(), cout, pool, yh4.data(), am4.data(), part.data()); });
        int same4 = memcmp(yh.data(), yh4.data(), ylen * 2) == 0 && am == am4;
        printf("  mma path with BN partials: y and argmax unchanged: %s\n", same4 ? "PASS" : "FAIL");
        fails += !same4;
        const long long cnt = (long long)(ylen / cout);
        std::vector<float> rm(cout, 0.1f), rv(cout, 0.9f), bnv(2 * cout, NAN);
        launch(dim3{(unsigned)cout, 1, 1}, dim3{CHAN_FIN_THREADS, 1, 1}, [&] { bn_finalize_f32(part.data(), (int)gm.x, cout, cnt, 1e-12f, 0.6f, rm.data(), rv.data(), bnv.data()); });
        std::vector<double> mean(cout, 0), var(cout, 0), want(2 * cout), wrm(cout), wrv(cout);
        for (size_t i = 0; i < ylen; i++) mean[i % cout] += (double)(float)yh3[i];
        for (auto& v : mean) v /= cnt;
        for (size_t i = 0; i < ylen; i++) var[i % cout] += ((double)(float)yh3[i] - mean[i % cout]) * ((double)(float)yh3[i] - mean[i % cout]);
        for (auto& v : var) v /= cnt;
        for (int c = 0; c < cout; c++) { want[c] = mean[c]; want[cout + c] = 1 / sqrt(var[c] + 1e-12); wrm[c] = 0.06 + 0.4 * mean[c]; wrv[c] = 0.54 + 0.4 * var[c] * cnt / (cnt - 1); }
        report("fwd mma + BN partials: bn", N, H, W, cin, cout, pool, bn, relerr(bnv, want), 1e-6);
        report("  running mean", N, H, W, cin, cout, pool, bn, relerr(rm, wrm), 1e-6);
        report("  running var", N, H, W, cin, cout, pool, bn, relerr(rv, wrv), 1e-6);
        // the wide kernel (128×128 tiles, dynamic shared memory): each output is the same sum
        // in the same order, so y, argmax and the partials equal the 128×64 kernel's bit for bit
        if (wide) {
            std::vector<half> yh5(ylen, (half)NAN);
            std::vector<unsigned char> am5(pool ? ylen : 8, 0xEE);
            std::vector<double> part5(part.size(), NAN);
            dim3 gw{gm.x, (unsigned)((cout + 127) / 128), 1};
            launch(gw, block, [&] { conv3x3_fwd_mma_wide_f16(ah.data(), N, H, W, cin, wf.data(), cout, pool, yh5.data(), am5.data(), part5.data()); });
            int same5 = memcmp(yh4.data(), yh5.data(), ylen * 2) == 0 && am4 == am5 && memcmp(part.data(), part5.data(), part.size() * 8) == 0;
            printf("  fwd mma wide (128x128 tiles): y, argmax, BN partials bit-identical: %s\n", same5 ? "PASS" : "FAIL");
            fails += !same5;
        }
        // the tall kernel (256×64 tiles): y and argmax bit for bit; the partials are per 256-row
        // tile (four warp rows), so the statistics are compared after bn_finalize_f32
        {
            std::vector<half> yh6(ylen, (half)NAN);
            std::vector<unsigned char> am6(pool ? ylen : 8, 0xEE);
            dim3 gt{(unsigned)((M + 255) / 256), (unsigned)((cout + 63) / 64), 1};
            std::vector<double> part6((size_t)2 * cout * gt.x, NAN);
            launch(gt, block, [&] { conv3x3_fwd_mma_tall_f16(ah.data(), N, H, W, cin, wf.data(), cout, pool, yh6.data(), am6.data(), part6.data()); });
            int same6 = memcmp(yh4.data(), yh6.data(), ylen * 2) == 0 && am4 == am6;
            printf("  fwd mma tall (256x64 tiles): y and argmax bit-identical: %s\n", same6 ? "PASS" : "FAIL");
            fails += !same6;
            std::vector<float> rm6(cout, 0.1f), rv6(cout, 0.9f), bn6(2 * cout, NAN);
            launch(dim3{(unsigned)cout, 1, 1}, dim3{CHAN_FIN_THREADS, 1, 1}, [&] { bn_finalize_f32(part6.data(), (int)gt.x, cout, cnt, 1e-12f, 0.6f, rm6.data(), rv6.data(), bn6.data()); });
            report("fwd mma tall: bn vs 128x64", N, H, W, cin, cout, pool, bn, relerr(bn6, bnv), 1e-9);
        }
        // the sm_90a kernels (wgmma from 128-byte-swizzled stages, emulated in inc/sm80.h): y and
        // argmax bit for bit (each output the same k16 chain), the statistics after
        // bn_finalize_f32 (partials per tile of TM rows)
        using Fwd = void (*)(const half*, int, int, int, int, const half*, int, int, half*, unsigned char*, double*);
        // blocks > 0: a persistent kernel (wgmmap) on that many blocks at most, each looping over
        // its row tiles; its partials still one row per tile
        auto wg_fwd = [&](Fwd kernel, int tm, int tn, int threads, const char* tile, unsigned blocks = 0) {
            std::vector<half> yh7(ylen, (half)NAN);
            std::vector<unsigned char> am7(pool ? ylen : 8, 0xEE);
            dim3 gt{(unsigned)((M + tm - 1) / tm), (unsigned)((cout + tn - 1) / tn), 1};
            std::vector<double> part7((size_t)2 * cout * gt.x, NAN);
            const dim3 gl{blocks ? std::min(blocks, gt.x) : gt.x, gt.y, 1};
            launch(gl, dim3{(unsigned)threads, 1, 1}, [&] { kernel(ah.data(), N, H, W, cin, wf.data(), cout, pool, yh7.data(), am7.data(), part7.data()); });
            int same7 = memcmp(yh4.data(), yh7.data(), ylen * 2) == 0 && am4 == am7;
            printf("  fwd wgmma (%s tiles): y and argmax bit-identical: %s\n", tile, same7 ? "PASS" : "FAIL");
            fails += !same7;
            std::vector<float> rm7(cout, 0.1f), rv7(cout, 0.9f), bn7(2 * cout, NAN);
            launch(dim3{(unsigned)cout, 1, 1}, dim3{CHAN_FIN_THREADS, 1, 1}, [&] { bn_finalize_f32(part7.data(), (int)gt.x, cout, cnt, 1e-12f, 0.6f, rm7.data(), rv7.data(), bn7.data()); });
            char name[64]; snprintf(name, sizeof name, "fwd wgmma %s: bn vs 128x64", tile);
            report(name, N, H, W, cin, cout, pool, bn, relerr(bn7, bnv), 1e-9);
        };
        wg_fwd(conv3x3_fwd_wgmma_f16, 128, 256, 256, "128x256");
        wg_fwd(conv3x3_fwd_wgmma_tall_f16, 256, 64, 512, "256x64");
        // wgmma2's (two blocks per SM): 128×128 in 3 stages (copies one step ahead), 128×64
        wg_fwd(conv3x3_fwd_wgmma2_f16, 128, 128, 256, "128x128, 3 stages");
        wg_fwd(conv3x3_fwd_wgmma_narrow_f16, 128, 64, 256, "128x64");
        wg_fwd(conv3x3_fwd_wgmma_p_f16, 128, 256, 256, "128x256, persistent on 2 blocks", 2);
        wg_fwd(conv3x3_fwd_wgmma_p_tall_f16, 256, 64, 512, "256x64, persistent on 2 blocks", 2);
        // the multicast kernel (2-CTA clusters, the weights by bulk copies into both CTAs, grid x
        // padded to even as the host pads it): y, argmax and the BN partials bit for bit with
        // the 128×256 wgmma kernel's (the padding block's partials are zeros)
        for (auto [kernel, cx] : {std::pair<Fwd, unsigned>{conv3x3_fwd_wgmma_mc_f16, 2}, {conv3x3_fwd_wgmma_mc4_f16, 4}}) {
            if (!mc_fwd) break;
            std::vector<half> yh8(ylen, (half)NAN), yh9(ylen, (half)NAN);
            std::vector<unsigned char> am8(pool ? ylen : 8, 0xEE), am9(pool ? ylen : 8, 0xEE);
            const unsigned tiles = (unsigned)((M + 127) / 128);
            dim3 g1{tiles, 1, 1}, g2{(tiles + cx - 1) / cx * cx, 1, 1};
            std::vector<double> p8((size_t)2 * cout * g1.x, NAN), p9((size_t)2 * cout * g2.x, NAN);
            launch(g1, dim3{256, 1, 1}, [&] { conv3x3_fwd_wgmma_f16(ah.data(), N, H, W, cin, wf.data(), cout, pool, yh8.data(), am8.data(), p8.data()); });
            launch(g2, dim3{256, 1, 1}, [&] { kernel(ah.data(), N, H, W, cin, wfb.data(), cout, pool, yh9.data(), am9.data(), p9.data()); }, cx);
            bool parts = true;
            for (size_t c = 0; c < (size_t)2 * cout; c++)
                for (unsigned b = 0; b < g2.x; b++) parts &= b < g1.x ? p9[c * g2.x + b] == p8[c * g1.x + b] : p9[c * g2.x + b] == 0.0;
            int same = memcmp(yh8.data(), yh9.data(), ylen * 2) == 0 && am8 == am9 && parts;
            printf("  fwd wgmma multicast (128x256 tiles, %u clusters of %u, %u tiles): y, argmax, BN partials bit-identical: %s\n", g2.x / cx, cx, tiles, same ? "PASS" : "FAIL");
            fails += !same;
        }
        // the image-resident forward (one block per image and 64 channels, image and filters in
        // shared memory as ImgLayout lays them out; the host takes it where that fits): y and
        // argmax bit for bit (the same k16 chain), the statistics after bn_finalize_f32 (one
        // partial per image), and y again without the statistics
        if (ImgLayout(H, W, cin).bytes <= (int)EMU_SMEM_BYTES) {
            std::vector<half> yh8(ylen, (half)NAN), yh9(ylen, (half)NAN);
            std::vector<unsigned char> am8(pool ? ylen : 8, 0xEE), am9(pool ? ylen : 8, 0xEE);
            const dim3 gi{(unsigned)N, (unsigned)((cout + 63) / 64), 1}, bi{IMG_THREADS, 1, 1};
            std::vector<double> part8((size_t)2 * cout * N, NAN);
            launch(gi, bi, [&] { conv3x3_fwd_img_f16(ah.data(), N, H, W, cin, wf.data(), cout, pool, yh8.data(), am8.data(), part8.data()); });
            launch(gi, bi, [&] { conv3x3_fwd_img_f16(ah.data(), N, H, W, cin, wf.data(), cout, pool, yh9.data(), am9.data(), nullptr); });
            const int same8 = memcmp(yh4.data(), yh8.data(), ylen * 2) == 0 && am4 == am8;
            const int same9 = memcmp(yh4.data(), yh9.data(), ylen * 2) == 0 && am4 == am9;
            printf("  fwd img (image-resident, %d B of shared memory): y and argmax bit-identical: %s, without the statistics: %s\n",
                   ImgLayout(H, W, cin).bytes, same8 ? "PASS" : "FAIL", same9 ? "PASS" : "FAIL");
            fails += !same8 + !same9;
            std::vector<float> rm8(cout, 0.1f), rv8(cout, 0.9f), bn8(2 * cout, NAN);
            launch(dim3{(unsigned)cout, 1, 1}, dim3{CHAN_FIN_THREADS, 1, 1}, [&] { bn_finalize_f32(part8.data(), N, cout, cnt, 1e-12f, 0.6f, rm8.data(), rv8.data(), bn8.data()); });
            report("fwd img: bn vs 128x64", N, H, W, cin, cout, pool, bn, relerr(bn8, bnv), 1e-9);
        } else printf("  fwd img: %d B of shared memory needed, more than an H100 has: not a host choice here\n", ImgLayout(H, W, cin).bytes);
    }
    if (pool) {
        int bad = 0, differ = 0;
        double rms = 0; for (double v : full) rms += v * v; rms = sqrt(rms / full.size());
        for (int n = 0; n < N; n++) for (int py = 0; py < PH; py++) for (int px = 0; px < PW; px++) for (int o = 0; o < cout; o++) {
            size_t i = (((size_t)n * PH + py) * PW + px) * cout + o;
            int k = am[i];
            if (k > 3) { bad++; continue; }
            double v = full[(((size_t)n * H + 2 * py + k / 2) * W + 2 * px + k % 2) * cout + o];
            if (v < yref[i] - 1e-2 * rms) bad++;
            differ += k != amref[i];
        }
        printf("  argmax: %d bad, %d differ of %zu %s\n", bad, differ, ylen, bad ? "FAIL" : "PASS");
        fails += bad > 0;
    }
    // backward with the reference argmax
    auto dy = rndv(ylen, 1.0f);
    std::vector<double> g((size_t)N * H * W * cout, 0.0);
    if (pool) {
        for (int n = 0; n < N; n++) for (int py = 0; py < PH; py++) for (int px = 0; px < PW; px++) for (int o = 0; o < cout; o++) {
            size_t i = (((size_t)n * PH + py) * PW + px) * cout + o;
            int k = amref[i];
            g[(((size_t)n * H + 2 * py + k / 2) * W + 2 * px + k % 2) * cout + o] = dy[i];
        }
    } else for (size_t i = 0; i < g.size(); i++) g[i] = dy[i];
    std::vector<double> dwref((size_t)cout * K, 0.0), daref(x.size(), 0.0);
    for (int n = 0; n < N; n++) for (int y = 0; y < H; y++) for (int xx = 0; xx < W; xx++) for (int o = 0; o < cout; o++) {
        double gv = g[(((size_t)n * H + y) * W + xx) * cout + o];
        if (gv == 0) continue;
        for (int ky = 0; ky < 3; ky++) for (int kx = 0; kx < 3; kx++) {
            int sy = y + ky - 1, sx = xx + kx - 1;
            if (sy < 0 || sx < 0 || sy >= H || sx >= W) continue;
            for (int i = 0; i < cin; i++) {
                size_t ai = (((size_t)n * H + sy) * W + sx) * cin + i, wi = (size_t)o * K + (ky * 3 + kx) * cin + i;
                dwref[wi] += gv * a[ai];
                daref[ai] += gv * w[wi];
            }
        }
    }
    std::vector<half> dyh(ylen); for (size_t i = 0; i < ylen; i++) dyh[i] = (half)dy[i];
    std::vector<unsigned char> amu(amref); if (amu.empty()) amu.resize(8);
    // the mma backward reads the full-resolution gradient: dy itself, or unpool_f16's output,
    // from the host's grid (a thread per pooled chunk) and from one block (the grid-stride loops)
    std::vector<half> gfull((size_t)N * H * W * cout, (half)NAN);
    if (pool) {
        const int total = N * H * W * (cout / 8);
        for (unsigned nb : {(unsigned)std::max(1, (total / 4 + 255) / 256), 1u}) {
            std::fill(gfull.begin(), gfull.end(), (half)NAN);
            launch(dim3{nb, 1, 1}, dim3{256, 1, 1}, [&] { unpool_f16(dyh.data(), amu.data(), N, H, W, cout, gfull.data()); });
            long long bad = 0;
            for (size_t i = 0; i < gfull.size(); i++) bad += !((double)(float)gfull[i] == g[i]);
            printf("  unpool_f16 (%u blocks): %lld of %zu values differ from the reference %s\n", nb, bad, gfull.size(), bad ? "FAIL" : "PASS");
            fails += bad > 0;
        }
    } else gfull = dyh;
    // wgrad with slices
    long long P = (long long)N * H * W;
    for (int slices_target : {1, 3}) {
        long long chunk = ((P + slices_target - 1) / slices_target + 31) / 32 * 32;
        int slices = (int)((P + chunk - 1) / chunk);
        std::vector<float> part((size_t)slices * cout * K, NAN), dw((size_t)cout * K, NAN);
        dim3 gw{(unsigned)((K + 63) / 64), (unsigned)((cout + 63) / 64), (unsigned)slices};
        if (slices == 1)  // fused prologue
            launch(gw, block, [&] { conv3x3_wgrad_f16(xh.data(), N, H, W, cin, bnbuf.data(), bnbuf.data() + cin, shift.data(), bn, dyh.data(), amu.data(), cout, pool, dw.data(), (int)chunk); });
        else  // activated input, as the backend does
            launch(gw, block, [&] { conv3x3_wgrad_f16(ah.data(), N, H, W, cin, nullptr, nullptr, nullptr, 2, dyh.data(), amu.data(), cout, pool, part.data(), (int)chunk); });
        if (slices > 1) {
            long long len = (long long)cout * K;
            launch(dim3{(unsigned)((len + 31) / 32), 1, 1}, dim3{256, 1, 1}, [&] { wgrad_reduce_f32(part.data(), slices, len, dw.data()); });
        }
        std::vector<double> dwg(dw.begin(), dw.end());
        char name[64]; snprintf(name, sizeof name, "wgrad (%d slices)", slices);
        report(name, N, H, W, cin, cout, pool, bn, relerr(dwg, dwref), 1e-2);
        // the sm_80 kernel (transposed: M = 9·cin, N = cout), same slices, same reduction
        std::vector<float> part2((size_t)slices * cout * K, NAN), dw2((size_t)cout * K, NAN);
        float* dst = slices == 1 ? dw2.data() : part2.data();
        dim3 gm{(unsigned)((K + 127) / 128), (unsigned)((cout + 63) / 64), (unsigned)slices};
        launch(gm, block, [&] { conv3x3_wgrad_mma_f16(ah.data(), N, H, W, cin, gfull.data(), cout, dst, (int)chunk); });
        if (slices > 1) {
            long long len = (long long)cout * K;
            launch(dim3{(unsigned)((len + 31) / 32), 1, 1}, dim3{256, 1, 1}, [&] { wgrad_reduce_f32(part2.data(), slices, len, dw2.data()); });
        }
        std::vector<double> dwg2(dw2.begin(), dw2.end());
        snprintf(name, sizeof name, "wgrad mma (%d slices)", slices);
        report(name, N, H, W, cin, cout, pool, bn, relerr(dwg2, dwref), 1e-2);
        int same = memcmp(dw.data(), dw2.data(), dw.size() * 4) == 0;
        printf("  wgrad mma bit-identical to wmma: %s\n", same ? "PASS" : "FAIL");
        fails += !same;
        if (wide) {  // 128×128 tiles, same slices: the slices' values bit for bit
            std::vector<float> out3(slices == 1 ? dw2.size() : part2.size(), NAN);
            dim3 gw{gm.x, (unsigned)((cout + 127) / 128), (unsigned)slices};
            launch(gw, block, [&] { conv3x3_wgrad_mma_wide_f16(ah.data(), N, H, W, cin, gfull.data(), cout, out3.data(), (int)chunk); });
            const std::vector<float>& want = slices == 1 ? dw2 : part2;
            int same3 = memcmp(out3.data(), want.data(), want.size() * 4) == 0;
            printf("  wgrad mma wide (128x128 tiles) bit-identical: %s\n", same3 ? "PASS" : "FAIL");
            fails += !same3;
        }
        // the sm_90a kernels (128×256 and 128×64 tiles, both operands MN-major), same slices: bit
        // for bit
        using Wgrad = void (*)(const half*, int, int, int, int, const half*, int, float*, int);
        for (auto [kernel, tn, tile] : {std::tuple<Wgrad, int, const char*>{conv3x3_wgrad_wgmma_f16, 256, "128x256"},
                                        {conv3x3_wgrad_wgmma_narrow_f16, 64, "128x64"},
                                        {conv3x3_wgrad_wgmma2_f16, 128, "128x128, 3 stages"}}) {
            std::vector<float> out4(slices == 1 ? dw2.size() : part2.size(), NAN);
            dim3 gw{gm.x, (unsigned)((cout + tn - 1) / tn), (unsigned)slices};
            launch(gw, dim3{256, 1, 1}, [&] { kernel(ah.data(), N, H, W, cin, gfull.data(), cout, out4.data(), (int)chunk); });
            const std::vector<float>& want = slices == 1 ? dw2 : part2;
            int same4 = memcmp(out4.data(), want.data(), want.size() * 4) == 0;
            printf("  wgrad wgmma (%s tiles, MN-major operands) bit-identical: %s\n", tile, same4 ? "PASS" : "FAIL");
            fails += !same4;
        }
        // the image-resident weight gradient (9·cin ≤ IMG_WG_K): slices of whole images, each
        // image's pixels in k16 steps from its first (another grouping than the pixel slices
        // above), so compared with the reference and with the mma kernel's sum to f32 rounding
        if (K <= IMG_WG_K) {
            const int ichunk = (N + slices_target - 1) / slices_target, islices = (N + ichunk - 1) / ichunk;
            std::vector<float> part5((size_t)islices * cout * K, NAN), dw5((size_t)cout * K, NAN);
            float* d5 = islices == 1 ? dw5.data() : part5.data();
            launch(dim3{1, (unsigned)((cout + 63) / 64), (unsigned)islices}, dim3{IMG_THREADS, 1, 1}, [&] { conv3x3_wgrad_img_f16(ah.data(), N, H, W, cin, gfull.data(), cout, d5, ichunk); });
            if (islices > 1) {
                long long len = (long long)cout * K;
                launch(dim3{(unsigned)((len + 31) / 32), 1, 1}, dim3{256, 1, 1}, [&] { wgrad_reduce_f32(part5.data(), islices, len, dw5.data()); });
            }
            if (slices_target == 1) printf("  wgrad img: %d B of shared memory\n", img_wgrad_smem(H, W, cin));
            snprintf(name, sizeof name, "wgrad img (%d slices)", islices);
            report(name, N, H, W, cin, cout, pool, bn, relerr(dw5, dwref), 1e-2);
            report("  wgrad img vs mma", N, H, W, cin, cout, pool, bn, relerr(dw5, dw2), 1e-5);
        }
    }
    std::vector<half> da(x.size(), (half)NAN);
    dim3 gd{(unsigned)((P + 63) / 64), (unsigned)((cin + 63) / 64), 1};
    launch(gd, block, [&] { conv3x3_dgrad_f16(dyh.data(), amu.data(), N, H, W, cin, cout, pool, w.data(), da.data()); });
    std::vector<double> dag(da.size()); for (size_t i = 0; i < da.size(); i++) dag[i] = (double)(float)da[i];
    report("dgrad", N, H, W, cin, cout, pool, bn, relerr(dag, daref), 1e-2);
    std::vector<half> da2(x.size(), (half)NAN);
    dim3 gdm{(unsigned)((P + 127) / 128), (unsigned)((cin + 63) / 64), 1};
    launch(gdm, block, [&] { conv3x3_dgrad_mma_f16(gfull.data(), N, H, W, cin, cout, wt.data(), da2.data(), nullptr, nullptr, nullptr, nullptr, 0, nullptr); });
    std::vector<double> dag2(da2.size()); for (size_t i = 0; i < da2.size(); i++) dag2[i] = (double)(float)da2[i];
    report("dgrad mma", N, H, W, cin, cout, pool, bn, relerr(dag2, daref), 1e-2);
    int same_da = memcmp(da.data(), da2.data(), da.size() * 2) == 0;
    printf("  dgrad mma bit-identical to wmma: %s\n", same_da ? "PASS" : "FAIL");
    fails += !same_da;
    // with pre_bwd's partial sums in the epilogue (the training backward), then pre_bwd_sums_f32:
    // da unchanged, sums [Σdu | Σdu·x̂] of the stored da against an f64 reference
    {
        std::vector<half> da3(x.size(), (half)NAN);
        std::vector<float> part((size_t)2 * cin * gdm.x, NAN), sums(2 * cin, NAN);
        const float* pm = bn ? bnbuf.data() : nullptr; const float* pi = bn ? bnbuf.data() + cin : nullptr;
        launch(gdm, block, [&] { conv3x3_dgrad_mma_f16(gfull.data(), N, H, W, cin, cout, wt.data(), da3.data(), xh.data(), pm, pi, shift.data(), bn, part.data()); });
        launch(dim3{(unsigned)cin, 1, 1}, dim3{CHAN_FIN_THREADS, 1, 1}, [&] { pre_bwd_sums_f32(part.data(), (int)gdm.x, cin, sums.data()); });
        int same = memcmp(da.data(), da3.data(), da.size() * 2) == 0;
        printf("  dgrad mma with pre_bwd sums: da unchanged: %s\n", same ? "PASS" : "FAIL");
        fails += !same;
        std::vector<double> want(2 * cin, 0.0);
        for (size_t i = 0; i < x.size(); i++) {
            const int c = i % cin;
            const double xv = (double)(float)xh[i], m = bn ? mean[c] : 0.0, iv = bn ? inv[c] : 1.0;
            const double du = (double)(float)da3[i] * gg64((xv - m) * iv + shift[c]);
            want[c] += du;
            want[cin + c] += du * (xv - m) * iv;
        }
        report("dgrad mma + pre_bwd sums", N, H, W, cin, cout, pool, bn, relerr(sums, want), 1e-4);
        if (wide) {  // 128×128 tiles: da and the partials bit for bit
            std::vector<half> da4(x.size(), (half)NAN);
            std::vector<float> part4(part.size(), NAN);
            dim3 gw{gdm.x, (unsigned)((cin + 127) / 128), 1};
            launch(gw, block, [&] { conv3x3_dgrad_mma_wide_f16(gfull.data(), N, H, W, cin, cout, wt.data(), da4.data(), xh.data(), pm, pi, shift.data(), bn, part4.data()); });
            int same4 = memcmp(da3.data(), da4.data(), da.size() * 2) == 0 && memcmp(part.data(), part4.data(), part.size() * 4) == 0;
            printf("  dgrad mma wide (128x128 tiles): da and sums' partials bit-identical: %s\n", same4 ? "PASS" : "FAIL");
            fails += !same4;
        }
        // 256-row tiles (256×64; 256×32, the host's choice for ≤ 32 input channels): da bit for
        // bit, the sums (grouped per 256-row tile) to f32 rounding
        using Dgrad = void (*)(const half*, int, int, int, int, int, const half*, half*, const half*, const float*,
                               const float*, const float*, int, float*);
        auto tall = [&](Dgrad kernel, int tn, const char* what, const char* tile) {
            std::vector<half> da5(x.size(), (half)NAN);
            dim3 gt{(unsigned)((P + 255) / 256), (unsigned)((cin + tn - 1) / tn), 1};
            std::vector<float> part5((size_t)2 * cin * gt.x, NAN), sums5(2 * cin, NAN);
            launch(gt, block, [&] { kernel(gfull.data(), N, H, W, cin, cout, wt.data(), da5.data(), xh.data(), pm, pi, shift.data(), bn, part5.data()); });
            launch(dim3{(unsigned)cin, 1, 1}, dim3{CHAN_FIN_THREADS, 1, 1}, [&] { pre_bwd_sums_f32(part5.data(), (int)gt.x, cin, sums5.data()); });
            int same5 = memcmp(da3.data(), da5.data(), da.size() * 2) == 0;
            printf("  dgrad mma %s (%s tiles): da bit-identical: %s\n", what, tile, same5 ? "PASS" : "FAIL");
            fails += !same5;
            char name[64]; snprintf(name, sizeof name, "dgrad mma %s: sums vs 128x64", what);
            report(name, N, H, W, cin, cout, pool, bn, relerr(sums5, sums), 1e-5);
        };
        tall(conv3x3_dgrad_mma_tall_f16, 64, "tall", "256x64");
        tall(conv3x3_dgrad_mma_tall32_f16, 32, "tall32", "256x32");
        // the sm_90a kernels, B = wk (K-major): da bit for bit, the sums to f32 rounding
        auto wg_dgrad = [&](Dgrad kernel, int tm, int tn, int threads, const char* tile, unsigned blocks = 0) {
            std::vector<half> da6(x.size(), (half)NAN);
            dim3 gt{(unsigned)((P + tm - 1) / tm), (unsigned)((cin + tn - 1) / tn), 1};
            std::vector<float> part6((size_t)2 * cin * gt.x, NAN), sums6(2 * cin, NAN);
            const dim3 gl{blocks ? std::min(blocks, gt.x) : gt.x, gt.y, 1};  // as wg_fwd's
            launch(gl, dim3{(unsigned)threads, 1, 1}, [&] { kernel(gfull.data(), N, H, W, cin, cout, wk.data(), da6.data(), xh.data(), pm, pi, shift.data(), bn, part6.data()); });
            launch(dim3{(unsigned)cin, 1, 1}, dim3{CHAN_FIN_THREADS, 1, 1}, [&] { pre_bwd_sums_f32(part6.data(), (int)gt.x, cin, sums6.data()); });
            int same6 = memcmp(da3.data(), da6.data(), da.size() * 2) == 0;
            printf("  dgrad wgmma (%s tiles): da bit-identical: %s\n", tile, same6 ? "PASS" : "FAIL");
            fails += !same6;
            char name[64]; snprintf(name, sizeof name, "dgrad wgmma %s: sums", tile);
            report(name, N, H, W, cin, cout, pool, bn, relerr(sums6, sums), 1e-5);
        };
        wg_dgrad(conv3x3_dgrad_wgmma_f16, 128, 256, 256, "128x256");
        wg_dgrad(conv3x3_dgrad_wgmma_tall_f16, 256, 64, 512, "256x64");
        wg_dgrad(conv3x3_dgrad_wgmma_tall32_f16, 256, 32, 512, "256x32");
        wg_dgrad(conv3x3_dgrad_wgmma2_f16, 128, 128, 256, "128x128, 3 stages");
        wg_dgrad(conv3x3_dgrad_wgmma_narrow_f16, 128, 64, 256, "128x64");
        wg_dgrad(conv3x3_dgrad_wgmma_p_f16, 128, 256, 256, "128x256, persistent on 2 blocks", 2);
        wg_dgrad(conv3x3_dgrad_wgmma_p_tall_f16, 256, 64, 512, "256x64, persistent on 2 blocks", 2);
        // the multicast kernel (wk in the bulk-copy layout, grid x padded to even): da and the
        // sums' partials bit for bit with the 128×256 wgmma kernel's
        for (auto [kernel, cx] : {std::pair<Dgrad, unsigned>{conv3x3_dgrad_wgmma_mc_f16, 2}, {conv3x3_dgrad_wgmma_mc4_f16, 4}}) {
            if (!mc_dgrad) break;
            std::vector<half> da8(x.size(), (half)NAN), da9(x.size(), (half)NAN);
            const unsigned tiles = (unsigned)((P + 127) / 128);
            dim3 g1{tiles, 1, 1}, g2{(tiles + cx - 1) / cx * cx, 1, 1};
            std::vector<float> p8((size_t)2 * cin * g1.x, NAN), p9((size_t)2 * cin * g2.x, NAN);
            launch(g1, dim3{256, 1, 1}, [&] { conv3x3_dgrad_wgmma_f16(gfull.data(), N, H, W, cin, cout, wk.data(), da8.data(), xh.data(), pm, pi, shift.data(), bn, p8.data()); });
            launch(g2, dim3{256, 1, 1}, [&] { kernel(gfull.data(), N, H, W, cin, cout, wkb.data(), da9.data(), xh.data(), pm, pi, shift.data(), bn, p9.data()); }, cx);
            bool parts = true;
            for (size_t c = 0; c < (size_t)2 * cin; c++)
                for (unsigned b = 0; b < g2.x; b++) parts &= b < g1.x ? p9[c * g2.x + b] == p8[c * g1.x + b] : p9[c * g2.x + b] == 0.0f;
            int same = memcmp(da8.data(), da9.data(), da8.size() * 2) == 0 && parts;
            printf("  dgrad wgmma multicast (128x256 tiles, %u clusters of %u, %u tiles): da and sums' partials bit-identical: %s\n", g2.x / cx, cx, tiles, same ? "PASS" : "FAIL");
            fails += !same;
        }
    }
}

int main() {
    test(2, 7, 5, 8, 16, 1, 1);
    test(2, 9, 9, 16, 8, 0, 0);
    test(3, 8, 8, 8, 24, 1, 0);
    test(5, 1, 1, 8, 72, 0, 1);
    test(1, 6, 6, 40, 136, 0, 1);
    test(2, 31, 31, 24, 64, 1, 0);
    test(2, 15, 15, 64, 256, 1, 1);
    test(2, 7, 7, 256, 256, 0, 1);
    test(2, 7, 7, 256, 256, 1, 1);
    // 294 rows: 3 tiles, the multicast grids padded to 4 (two clusters of 2, one of 4): the
    // forward's (K = 576) and the input gradient's (K = 9·64)
    test(6, 7, 7, 64, 256, 0, 0);
    test(6, 7, 7, 256, 64, 0, 0);
    printf("%d failures\n", fails);
    return fails != 0;
}
