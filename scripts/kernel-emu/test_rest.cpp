#define TEST_SEED 7
#include "testlib.h"
#include <array>
#include <cstring>
#include "norm.cu"
#include "stem.cu"
#include "head.cu"
#include "optim.cu"
#include "conv.cu"  // wgrad_reduce_f32, which also adds the head's weight-gradient slices

static void report(const char* what, double e, double tol) {
    printf("%-36s relL2 %.3e %s\n", what, e, e <= tol ? "PASS" : "FAIL");
    if (!(e <= tol)) fails++;
}
static unsigned blocks(long long n) { return (unsigned)((n + 255) / 256); }
// A step record (src/backend.rs Step): offset, four rates, padding, cursor.
static std::vector<unsigned> step_rec(unsigned offset, std::array<float, 4> lr = {0, 0, 0, 0}, unsigned cursor = 0) {
    std::vector<unsigned> r(STEP_WORDS + 1, 0);
    r[0] = offset;
    for (int k = 0; k < 4; k++) memcpy(&r[1 + k], &lr[k], 4);
    r[STEP_WORDS] = cursor;
    return r;
}

static void test_bn(int N, int H, int W, int C, float scale = 2.0f, float offset = 0.5f) {
    long long P = (long long)N * H * W;
    auto y = rndv(P * C, scale, offset);
    std::vector<half> yh(y.size()); for (size_t i = 0; i < y.size(); i++) yh[i] = (half)y[i];
    std::vector<double> mean(C, 0), var(C, 0);
    for (long long p = 0; p < P; p++) for (int c = 0; c < C; c++) mean[c] += y[p * C + c];
    for (auto& m : mean) m /= P;
    for (long long p = 0; p < P; p++) for (int c = 0; c < C; c++) var[c] += (y[p * C + c] - mean[c]) * (y[p * C + c] - mean[c]);
    for (auto& v : var) v /= P;
    std::vector<float> rm(C, 0.1f), rv(C, 0.9f), bn(2 * C, NAN);
    long long nb = std::min((P + 63) / 64, 512LL), chunk = (P + nb - 1) / nb; nb = (P + chunk - 1) / chunk;
    std::vector<double> part(nb * 2 * C, NAN);
    launch(dim3{(unsigned)nb, (unsigned)((C + 31) / 32), 1}, dim3{32, 8, 1}, [&] { bn_reduce_f16(yh.data(), P, C, chunk, part.data()); });
    if (C % 8 == 0 && C <= 256) {
        // 8 channels per thread in 16-byte loads: the same partials, bit for bit
        std::vector<double> part8(part.size(), NAN);
        launch(dim3{(unsigned)nb, 1, 1}, dim3{(unsigned)(C / 8), 8, 1}, [&] { bn_reduce8_f16(yh.data(), P, C, chunk, part8.data()); });
        size_t differ = 0;
        for (size_t i = 0; i < part.size(); i++) differ += memcmp(&part[i], &part8[i], sizeof(double)) != 0;
        char name[96]; snprintf(name, sizeof name, "bn_reduce8 partials = bn_reduce's (%lld px, C %d, chunk %lld)", P, C, chunk);
        report(name, (double)differ, 0.5);
    }
    launch(dim3{(unsigned)C, 1, 1}, dim3{CHAN_FIN_THREADS, 1, 1}, [&] { bn_finalize_f32(part.data(), (int)nb, C, P, 1e-12f, 0.6f, rm.data(), rv.data(), bn.data()); });
    std::vector<double> want(2 * C), wrm(C), wrv(C);
    for (int c = 0; c < C; c++) { want[c] = mean[c]; want[C + c] = 1 / sqrt(var[c] + 1e-12); wrm[c] = 0.6 * 0.1 + 0.4 * mean[c]; wrv[c] = 0.6 * 0.9 + 0.4 * var[c] * P / (P - 1); }
    report("bn_stats bn", relerr(bn, want), 1e-5);
    report("bn_stats running mean", relerr(rm, wrm), 1e-5);
    report("bn_stats running var", relerr(rv, wrv), 1e-5);
}

static void test_pre_bwd(int N, int H, int W, int C, int bn) {
    long long P = (long long)N * H * W, L = P * C;
    auto x = rndv(L, 1), da = rndv(L, 0.1f), shift = rndv(C, 0.3f), mean = rndv(C, 0.3f), inv = rndv(C, 0.3f);
    for (auto& v : inv) v = 0.6f + fabsf(v);
    std::vector<float> bnb(mean); bnb.insert(bnb.end(), inv.begin(), inv.end());
    std::vector<half> xh(L), dah(L); for (long long i = 0; i < L; i++) { xh[i] = (half)x[i]; dah[i] = (half)da[i]; }
    std::vector<double> s0(C, 0), s1(C, 0);
    auto xhat = [&](long long i) { int c = i % C; return bn ? ((double)x[i] - mean[c]) * inv[c] : (double)x[i]; };
    auto du = [&](long long i) { int c = i % C; return da[i] * gg64(xhat(i) + shift[c]); };
    for (long long i = 0; i < L; i++) { s0[i % C] += du(i); s1[i % C] += du(i) * xhat(i); }
    std::vector<double> dxw(L);
    for (long long i = 0; i < L; i++) { int c = i % C; dxw[i] = bn ? inv[c] * (du(i) - s0[c] / P - xhat(i) * s1[c] / P) : du(i); }
    long long nb = std::min((P + 63) / 64, 512LL), chunk = (P + nb - 1) / nb; nb = (P + chunk - 1) / chunk;
    std::vector<float> part(nb * 2 * C + 2 * C, NAN), dshift(C, NAN);
    float* sums = part.data() + nb * 2 * C;
    const float* pm = bn ? bnb.data() : nullptr; const float* pi = bn ? bnb.data() + C : nullptr;
    launch(dim3{(unsigned)nb, 1, 1}, dim3{CHAN_REDUCE_THREADS, 1, 1}, [&] { chan_reduce_f16(xh.data(), dah.data(), P, C, chunk, pm, pi, shift.data(), bn, part.data()); });
    launch(dim3{(unsigned)C, 1, 1}, dim3{CHAN_FIN_THREADS, 1, 1}, [&] { pre_bwd_sums_f32(part.data(), (int)nb, C, sums); });
    std::vector<half> dx(L, (half)NAN);
    launch(dim3{blocks(std::max(L / 8, (long long)C)), 1, 1}, dim3{256, 1, 1}, [&] { pre_bwd_dx_f16(dah.data(), xh.data(), L, C, pm, pi, shift.data(), bn, sums, P, dshift.data(), dx.data(), nullptr, 0, 0); });
    std::vector<float> dxf(L); for (long long i = 0; i < L; i++) dxf[i] = (float)dx[i];
    report(bn ? "pre_bwd dshift [bn]" : "pre_bwd dshift [bias]", relerr(dshift, s0), 1e-4);
    report(bn ? "pre_bwd dx [bn]" : "pre_bwd dx [bias]", relerr(dxf, dxw), 2e-3);
    // the host's grid (≈ 4 chunks per thread) and the smallest one (C threads): each thread
    // strides over chunks of its own channels; the same bits as one chunk per thread
    for (long long threads : {std::max((L / 8 + 3) / 4, (long long)C), (long long)C}) {
        std::vector<half> dx2(L, (half)NAN);
        launch(dim3{blocks(threads), 1, 1}, dim3{256, 1, 1}, [&] { pre_bwd_dx_f16(dah.data(), xh.data(), L, C, pm, pi, shift.data(), bn, sums, P, nullptr, dx2.data(), nullptr, 0, 0); });
        long long diff = 0;
        for (long long i = 0; i < L; i++) diff += memcmp(&dx[i], &dx2[i], sizeof(half)) != 0;
        printf("  pre_bwd dx %s, %u blocks of 256 for %lld chunks: %lld values differ from one chunk per thread: %s\n",
               bn ? "[bn]" : "[bias]", blocks(threads), L / 8, diff, diff ? "FAIL" : "PASS");
        fails += diff != 0;
    }
    // unpooled: x as the max-pool output of an FH × FW input (an odd last row and column, or
    // none), random picks; dx at the picks, zeros elsewhere, bit for bit against the dx above
    // routed on the host; from the host's grid and from C threads
    for (int odd : {1, 0}) {
        const int FH = 2 * H + odd, FW = 2 * W + odd;
        const long long FL = (long long)N * FH * FW * C;
        std::vector<unsigned char> am(L);
        for (long long i = 0; i < L; i++) am[i] = (unsigned char)((i * 2654435761ull >> 13) & 3);
        std::vector<half> want(FL, (half)0.f);
        for (long long i = 0; i < L; i++) {
            const long long q = i / C, n = q / (H * W);
            const int c = (int)(i % C), py = (int)(q % (H * W)) / W, px = (int)(q % W);
            want[((n * FH + 2 * py + (am[i] >> 1)) * FW + 2 * px + (am[i] & 1)) * C + c] = dx[i];
        }
        for (long long threads : {std::max((L / 8 + 3) / 4, (long long)C), (long long)C}) {
            std::vector<half> full(FL, (half)NAN);
            launch(dim3{blocks(threads), 1, 1}, dim3{256, 1, 1}, [&] { pre_bwd_dx_f16(dah.data(), xh.data(), L, C, pm, pi, shift.data(), bn, sums, P, nullptr, full.data(), am.data(), FH, FW); });
            long long diff = 0;
            for (long long i = 0; i < FL; i++) diff += memcmp(&full[i], &want[i], sizeof(half)) != 0;
            printf("  pre_bwd dx %s unpooled to %dx%d, %u blocks of 256: %lld of %lld values differ from dx routed to the picks: %s\n",
                   bn ? "[bn]" : "[bias]", FH, FW, blocks(threads), diff, FL, diff ? "FAIL" : "PASS");
            fails += diff != 0;
        }
    }
}

static int refl(int i) { return i < 0 ? -i : (i >= 32 ? 62 - i : i); }
static double gelu_d(double u) { return 0.5 * u * erfc(-u / sqrt(2.0)); }
static double gelu_grad_d(double u) { return 0.5 * erfc(-u / sqrt(2.0)) + u * exp(-0.5 * u * u) / sqrt(2.0 * M_PI); }
// A stem's outputs against f64: act = GELU(u) and grad = GELU′(u), u = raw + bias (raw the f64
// whitening conv), over the values outside [skip, skip + skip_len) (an example whose outputs
// are NaN); and `alone` (the launch without grad) equal to act bit for bit.
static void stem_report(const std::string& name, const std::vector<half>& act, const std::vector<half>& grad,
                        const std::vector<half>& alone, const std::vector<double>& raw, const std::vector<float>& bias,
                        int cw, size_t skip = 0, size_t skip_len = 0) {
    std::vector<float> ga, gg;
    std::vector<double> wa, wg;
    size_t differ = 0;
    for (size_t k = 0; k < raw.size(); k++) {
        if (k >= skip && k < skip + skip_len) continue;
        const double u = raw[k] + bias[k % cw];
        ga.push_back((float)act[k]); wa.push_back(gelu_d(u));
        gg.push_back((float)grad[k]); wg.push_back(gelu_grad_d(u));
        differ += memcmp(&act[k], &alone[k], sizeof(half)) != 0;
    }
    report((name + " GELU(u)").c_str(), relerr(ga, wa), 2e-3);
    report((name + " GELU'(u)").c_str(), relerr(gg, wg), 2e-3);
    report((name + " without grad: the same output").c_str(), (double)differ, 0.5);
}
static void test_stem() {
    int total = 20, n = 12, cw = 24;
    std::vector<unsigned char> img(total * 3072); for (auto& b : img) b = rng() & 255;
    std::vector<unsigned> words(n + 2);
    for (auto& w : words) { int idx = rng() % total, sy = rng() % 5 - 2, sx = rng() % 5 - 2, fl = rng() & 1; w = idx | ((sy + 4) << 20) | ((sx + 4) << 23) | (fl << 26); }
    auto w = rndv(cw * 12, 0.5f), bias = rndv(cw, 0.3f);
    float mn[3] = {0.4914f, 0.4822f, 0.4465f}, sd[3] = {0.2470f, 0.2435f, 0.2616f};
    // example 3 names an image past the dataset: its outputs are NaN, the others unaffected
    const int bad = 3;
    words[2 + bad] = (words[2 + bad] & ~0xFFFFFu) | (unsigned)(total + 3);
    std::vector<half> act((size_t)n * 961 * cw, (half)NAN), grad(act.size(), (half)NAN), alone(act.size(), (half)NAN);
    auto st = step_rec(2);
    launch(dim3{(unsigned)n, 1, 1}, dim3{256, 1, 1}, [&] { stem_fwd_grad_f16(img.data(), total, words.data(), n + 2, st.data(), n, mn[0], mn[1], mn[2], sd[0], sd[1], sd[2], w.data(), cw, bias.data(), act.data(), grad.data()); });
    launch(dim3{(unsigned)n, 1, 1}, dim3{256, 1, 1}, [&] { stem_fwd_f16(img.data(), total, words.data(), n + 2, st.data(), n, mn[0], mn[1], mn[2], sd[0], sd[1], sd[2], w.data(), cw, bias.data(), alone.data()); });
    std::vector<double> ref(act.size());
    size_t bad_nan = 0, per = (size_t)961 * cw;
    for (size_t k = 0; k < per; k++)
        bad_nan += std::isnan((float)act[bad * per + k]) + std::isnan((float)grad[bad * per + k]) + std::isnan((float)alone[bad * per + k]);
    report("stem image index past the dataset -> NaN", bad_nan == 3 * per ? 0.0 : 1.0, 0.5);
    for (int i = 0; i < n; i++) {
        if (i == bad) continue;
        unsigned wd = words[i + 2]; int idx = wd & 0xFFFFF, sy = ((wd >> 20) & 7) - 4, sx = ((wd >> 23) & 7) - 4; bool fl = (wd >> 26) & 1;
        auto v = [&](int y, int x, int c) { int xx = fl ? 31 - x : x; int p = img[idx * 3072 + (refl(y + sy) * 32 + refl(xx + sx)) * 3 + c]; return ((double)p / 255 - mn[c]) / sd[c]; };
        for (int y = 0; y < 31; y++) for (int x = 0; x < 31; x++) for (int f = 0; f < cw; f++) {
            double s = 0;
            for (int dy = 0; dy < 2; dy++) for (int dx = 0; dx < 2; dx++) for (int c = 0; c < 3; c++) s += v(y + dy, x + dx, c) * w[f * 12 + (dy * 2 + dx) * 3 + c];
            ref[(((size_t)i * 31 + y) * 31 + x) * cw + f] = s;
        }
    }
    stem_report("stem", act, grad, alone, ref, bias, cw, bad * per, per);
    // the step names words past the end: every output NaN, nothing read out of bounds
    auto past = step_rec(3);
    std::vector<half> out2(act.size(), (half)0.5f), grad2(act.size(), (half)0.5f), alone2(act.size(), (half)0.5f);
    launch(dim3{(unsigned)n, 1, 1}, dim3{256, 1, 1}, [&] { stem_fwd_grad_f16(img.data(), total, words.data(), n + 2, past.data(), n, mn[0], mn[1], mn[2], sd[0], sd[1], sd[2], w.data(), cw, bias.data(), out2.data(), grad2.data()); });
    launch(dim3{(unsigned)n, 1, 1}, dim3{256, 1, 1}, [&] { stem_fwd_f16(img.data(), total, words.data(), n + 2, past.data(), n, mn[0], mn[1], mn[2], sd[0], sd[1], sd[2], w.data(), cw, bias.data(), alone2.data()); });
    size_t nan = 0;
    for (size_t k = 0; k < out2.size(); k++) nan += std::isnan((float)out2[k]) + std::isnan((float)grad2[k]) + std::isnan((float)alone2[k]);
    report("stem words past the end -> NaN", nan == 3 * out2.size() ? 0.0 : 1.0, 0.5);
    // patch covariance of the first 7 images
    int nc = 7;
    std::vector<double> partial(nc * 144, NAN);
    launch(dim3{(unsigned)nc, 1, 1}, dim3{160, 1, 1}, [&] { patch_cov_f32(img.data(), nc, mn[0], mn[1], mn[2], sd[0], sd[1], sd[2], partial.data()); });
    std::vector<double> cov(144, 0), want(144, 0);
    for (int b = 0; b < nc; b++) for (int k = 0; k < 144; k++) cov[k] += partial[b * 144 + k];
    for (int i = 0; i < nc; i++) for (int y = 0; y < 31; y++) for (int x = 0; x < 31; x++) {
        double v[12];
        for (int dy = 0; dy < 2; dy++) for (int dx = 0; dx < 2; dx++) for (int c = 0; c < 3; c++) v[(dy * 2 + dx) * 3 + c] = ((double)img[i * 3072 + ((y + dy) * 32 + x + dx) * 3 + c] / 255 - mn[c]) / sd[c];
        for (int r = 0; r < 12; r++) for (int s = 0; s < 12; s++) want[r * 12 + s] += v[r] * v[s];
    }
    report("patch_cov", relerr(cov, want), 1e-5);
}


static void test_stem_res(int res) {
    int total = 9, n = 5, cw = 16, o = res - 1;
    std::vector<unsigned char> img(total * 3072); for (auto& b : img) b = rng() & 255;
    std::vector<unsigned> words(n);
    for (auto& w : words) { int idx = rng() % total, sy = rng() % 5 - 2, sx = rng() % 5 - 2, fl = rng() & 1; w = idx | ((sy + 4) << 20) | ((sx + 4) << 23) | (fl << 26); }
    auto w = rndv(cw * 12, 0.5f), bias = rndv(cw, 0.3f);
    float mn[3] = {0.4914f, 0.4822f, 0.4465f}, sd[3] = {0.2470f, 0.2435f, 0.2616f};
    std::vector<half> act((size_t)n * o * o * cw, (half)NAN), grad(act.size(), (half)NAN), alone(act.size(), (half)NAN);
    long long len = (long long)n * o * o * cw / 8;
    auto st = step_rec(0);
    launch(dim3{blocks(len), 1, 1}, dim3{256, 1, 1}, [&] { stem_res_fwd_f16(img.data(), total, words.data(), n, st.data(), n, mn[0], mn[1], mn[2], sd[0], sd[1], sd[2], w.data(), cw, res, bias.data(), act.data(), grad.data()); });
    launch(dim3{blocks(len), 1, 1}, dim3{256, 1, 1}, [&] { stem_res_fwd_f16(img.data(), total, words.data(), n, st.data(), n, mn[0], mn[1], mn[2], sd[0], sd[1], sd[2], w.data(), cw, res, bias.data(), alone.data(), nullptr); });
    std::vector<double> ref(act.size());
    for (int i = 0; i < n; i++) {
        unsigned wd = words[i]; int idx = wd & 0xFFFFF, sy = ((wd >> 20) & 7) - 4, sx = ((wd >> 23) & 7) - 4; bool fl = (wd >> 26) & 1;
        auto v = [&](int y, int x, int c) { int xx = fl ? 31 - x : x; int p = img[idx * 3072 + (refl(y + sy) * 32 + refl(xx + sx)) * 3 + c]; return ((double)p / 255 - mn[c]) / sd[c]; };
        auto taps = [&](int k, int& lo, int& hi, double& f) { double s = std::clamp((k + 0.5) * 32.0 / res - 0.5, 0.0, 31.0); lo = (int)floor(s); hi = std::min(lo + 1, 31); f = s - lo; };
        auto rv = [&](int y, int x, int c) { int y0, y1, x0, x1; double fy, fx; taps(y, y0, y1, fy); taps(x, x0, x1, fx);
            double top = v(y0, x0, c) + (v(y0, x1, c) - v(y0, x0, c)) * fx, bot = v(y1, x0, c) + (v(y1, x1, c) - v(y1, x0, c)) * fx; return top + (bot - top) * fy; };
        for (int y = 0; y < o; y++) for (int x = 0; x < o; x++) for (int f = 0; f < cw; f++) {
            double s = 0;
            for (int dy = 0; dy < 2; dy++) for (int dx = 0; dx < 2; dx++) for (int c = 0; c < 3; c++) s += rv(y + dy, x + dx, c) * w[f * 12 + (dy * 2 + dx) * 3 + c];
            ref[(((size_t)i * o + y) * o + x) * cw + f] = s;
        }
    }
    char name[64]; snprintf(name, sizeof name, "stem_res %d", res);
    stem_report(name, act, grad, alone, ref, bias, cw);
}

static void test_head(int N, int HW, int C, int classes) {
    auto x = rndv((size_t)N * HW * C, 1), w = rndv(classes * C, 1), shift = rndv(C, 0.3f), mean = rndv(C, 0.3f), inv = rndv(C, 0.3f);
    for (auto& v : inv) v = 0.6f + fabsf(v);
    std::vector<half> xh(x.size()); for (size_t i = 0; i < x.size(); i++) xh[i] = (half)x[i];
    float scale = 1.0f / C;
    std::vector<float> feat(N * C, NAN), logits(N * classes, NAN);
    std::vector<unsigned char> am(N * C, 0xEE);
    launch(dim3{(unsigned)N, 1, 1}, dim3{256, 1, 1}, [&] { head_fwd_f16(xh.data(), HW, C, mean.data(), inv.data(), shift.data(), 1, w.data(), classes, scale, feat.data(), am.data(), logits.data()); });
    std::vector<double> fw(N * C), lw(N * classes); std::vector<int> aw(N * C);
    for (int n = 0; n < N; n++) for (int c = 0; c < C; c++) {
        double best = -1e300; int arg = 0;
        for (int p = 0; p < HW; p++) { double v = g64(((double)x[((size_t)n * HW + p) * C + c] - mean[c]) * inv[c] + shift[c]); if (p == 0 || v > best) { best = v; arg = p; } }
        fw[n * C + c] = best; aw[n * C + c] = arg;
    }
    for (int n = 0; n < N; n++) for (int k = 0; k < classes; k++) { double s = 0; for (int c = 0; c < C; c++) s += fw[n * C + c] * w[k * C + c]; lw[n * classes + k] = scale * s; }
    int differ = 0; for (int i = 0; i < N * C; i++) differ += am[i] != aw[i];
    report("head feat", relerr(feat, fw), 1e-5);
    report("head logits", relerr(logits, lw), 1e-5);
    printf("  head argmax differ %d of %d\n", differ, N * C);
    // backward
    auto dl = rndv(N * classes, 0.5f);
    std::vector<float> dw(classes * C, NAN); std::vector<half> da((size_t)N * HW * C, (half)NAN);
    // as src/gpu/backend.rs: per slice of HEAD_SLICE examples, then the slices added in order by
    // conv.cu's wgrad_reduce_f32
    int slices = std::max(1, (N + HEAD_SLICE - 1) / HEAD_SLICE);
    std::vector<float> part((size_t)slices * classes * C, NAN);
    launch(dim3{(unsigned)((C + 31) / 32), (unsigned)slices, 1}, dim3{32, 8, 1}, [&] { head_bwd_dw_part_f32(dl.data(), feat.data(), N, C, classes, scale, part.data()); });
    launch(dim3{(unsigned)((classes * C + 31) / 32), 1, 1}, dim3{256, 1, 1}, [&] { wgrad_reduce_f32(part.data(), slices, (long long)classes * C, dw.data()); });
    launch(dim3{blocks(N * C), 1, 1}, dim3{256, 1, 1}, [&] { head_bwd_da_f16(dl.data(), am.data(), w.data(), N, HW, C, classes, scale, da.data()); });
    std::vector<double> dww(classes * C, 0), daw(da.size(), 0);
    for (int k = 0; k < classes; k++) for (int c = 0; c < C; c++) for (int n = 0; n < N; n++) dww[k * C + c] += scale * dl[n * classes + k] * feat[n * C + c];
    for (int n = 0; n < N; n++) for (int c = 0; c < C; c++) { double g = 0; for (int k = 0; k < classes; k++) g += dl[n * classes + k] * w[k * C + c]; daw[((size_t)n * HW + am[n * C + c]) * C + c] = scale * g; }
    std::vector<float> daf(da.size()); for (size_t i = 0; i < da.size(); i++) daf[i] = (float)da[i];
    report("head_bwd dw", relerr(dw, dww), 1e-5);
    report("head_bwd da", relerr(daf, daw), 2e-3);
}

// as src/gpu/backend.rs: per-block partial sums, then the accumulator in block order
static void xent(const std::vector<float>& logits, const std::vector<unsigned char>& labels, const std::vector<unsigned>& words,
                 const std::vector<unsigned>& st, int n, int classes, std::vector<float>& dl, std::vector<float>& acc) {
    int nb = (n + XENT_THREADS - 1) / XENT_THREADS;
    std::vector<double> part(2 * nb, NAN);
    launch(dim3{(unsigned)nb, 1, 1}, dim3{XENT_THREADS, 1, 1}, [&] { xent_fwd_bwd_f32(logits.data(), labels.data(), words.data(), (int)words.size(), st.data(), n, (int)labels.size(), classes, 0.2f, dl.data(), part.data()); });
    launch(dim3{1, 1, 1}, dim3{32, 1, 1}, [&] { xent_acc_f64(part.data(), nb, acc.data()); });
}

static void test_xent(int n, int classes) {
    int total = n + 10;
    std::vector<unsigned char> labels(total); for (auto& l : labels) l = rng() % classes;
    std::vector<unsigned> words(n + 3); for (auto& w : words) w = rng() % total;
    auto logits = rndv(n * classes, 3);
    std::vector<float> dl(n * classes, NAN), acc{1.5f, 2.0f};
    auto st = step_rec(3);
    xent(logits, labels, words, st, n, classes, dl, acc);
    std::vector<double> dw(n * classes), aw{1.5, 2.0};
    for (int i = 0; i < n; i++) {
        int lab = labels[words[i + 3]]; const float* l = &logits[i * classes];
        double best = l[0]; int arg = 0; for (int k = 1; k < classes; k++) if (l[k] > best) { best = l[k]; arg = k; }
        double se = 0; for (int k = 0; k < classes; k++) se += exp(l[k] - best);
        double lse = best + log(se);
        for (int k = 0; k < classes; k++) { double q = 0.2 / classes + (k == lab ? 0.8 : 0); aw[0] -= q * (l[k] - lse); dw[i * classes + k] = exp(l[k] - lse) - q; }
        aw[1] += arg == lab;
    }
    report("xent dlogits", relerr(dl, dw), 1e-5);
    report("xent acc", relerr(acc, aw), 1e-6);
    // An image index past the labels: no out-of-bounds read, and the loss turns NaN.
    words[3 + n / 2] = total;
    std::vector<float> bad{0.f, 0.f};
    xent(logits, labels, words, st, n, classes, dl, bad);
    report("xent bad index -> NaN loss", std::isnan(bad[0]) ? 0.0 : 1.0, 0.5);
    // words past the end: NaN loss and NaN dlogits
    auto past = step_rec(4);
    std::vector<float> bad2{0.f, 0.f}, dl2(n * classes, 0.5f);
    xent(logits, labels, words, past, n, classes, dl2, bad2);
    size_t nan = 0; for (auto v : dl2) nan += std::isnan(v);
    report("xent words past the end -> NaN", std::isnan(bad2[0]) && nan == dl2.size() ? 0.0 : 1.0, 0.5);
}

// One batched launch as src/gpu/backend.rs issues it: grid over the largest GEMM, blockIdx.z =
// GEMM·splits + slice; with splits > 1 the slice sum after it (fewer blocks than values).
static void gemm_launch(bool tb, const GemmBatch& g) {
    int gx = 1, gy = 1, len = 1;
    const int S = std::max(1, g.splits);
    for (int z = 0; z < g.count; z++) { gx = std::max(gx, (g.n[z] + 63) / 64); gy = std::max(gy, (g.m[z] + 63) / 64); len = std::max(len, g.m[z] * g.n[z]); }
    launch(dim3{(unsigned)gx, (unsigned)gy, (unsigned)(g.count * S)}, dim3{128, 1, 1}, [&] { if (tb) gemm_nt_f32(g); else gemm_nn_f32(g); });
    if (S > 1) launch(dim3{(unsigned)std::max(1, len / 256 / 3), (unsigned)g.count, 1}, dim3{256, 1, 1}, [&] { gemm_splitk_sum_f32(g); });
}

// Several GEMMs of different shapes in one batched launch, each against an f64 reference.
// splits > 1: split-K (beta 0; the result lands in D, C is the [splits][M][N] scratch).
static void test_gemm(bool tb, std::vector<std::array<int, 3>> shapes, int splits = 1) {
    static_assert(sizeof(GemmBatch) == 368, "GemmBatch size (mirrored in src/gpu/backend.rs)");
    GemmBatch g{};
    const float beta = splits > 1 ? 0.f : -2.0f;
    std::vector<std::vector<float>> As, Bs, Ds, Cs;
    for (auto [M, N, K] : shapes) { As.push_back(rndv(M * K, 1)); Bs.push_back(rndv(N * K, 1)); Ds.push_back(rndv(M * N, 1)); Cs.emplace_back((size_t)M * N * splits, NAN); }
    const auto D0 = Ds;
    for (size_t z = 0; z < shapes.size(); z++) {
        g.a[z] = As[z].data(); g.b[z] = Bs[z].data(); g.d[z] = Ds[z].data(); g.c[z] = Cs[z].data();
        g.m[z] = shapes[z][0]; g.n[z] = shapes[z][1]; g.k[z] = shapes[z][2];
    }
    g.count = (int)shapes.size(); g.alpha = 0.5f; g.beta = beta; g.splits = splits;
    gemm_launch(tb, g);
    for (size_t z = 0; z < shapes.size(); z++) {
        auto [M, N, K] = shapes[z];
        const auto &A = As[z], &B = Bs[z], &D = Ds[z];
        std::vector<double> W(M * N);
        for (int m = 0; m < M; m++) for (int n = 0; n < N; n++) { double s = 0; for (int k = 0; k < K; k++) s += (double)A[m * K + k] * (tb ? B[n * K + k] : B[k * N + n]); W[m * N + n] = 0.5 * s + beta * D0[z][m * N + n]; }
        char name[80]; snprintf(name, sizeof name, "%s %zu/%zu %dx%dx%d%s", tb ? "gemm_nt" : "gemm_nn", z + 1, shapes.size(), M, N, K, splits > 1 ? " split-K" : "");
        report(name, relerr(splits > 1 ? D : std::vector<float>(Cs[z].begin(), Cs[z].begin() + (size_t)M * N), W), 1e-5);
    }
}

static void test_sgd() {
    static_assert(sizeof(SgdArgs) == 592, "SgdArgs size (mirrored in src/gpu/backend.rs)");
    auto st = step_rec(0, {0.05f, 0.06f, 0.07f, 0.08f});
    SgdArgs a{}; std::vector<std::vector<float>> P, G, Mv; std::vector<std::vector<double>> PW, MW;
    int sizes[5] = {24, 64, 2560, 1, 333};
    for (int t = 0; t < 5; t++) { P.push_back(rndv(sizes[t], 1)); G.push_back(rndv(sizes[t], 1)); Mv.push_back(rndv(sizes[t], 0.5f)); }
    for (int t = 0; t < 5; t++) {
        std::vector<double> pw(sizes[t]), mw(sizes[t]);
        float lr = 0.05f + 0.01f * (t % 4), wd = 0.1f;
        for (int i = 0; i < sizes[t]; i++) { double g = G[t][i] + wd * P[t][i]; mw[i] = 0.85f * Mv[t][i] + g; pw[i] = P[t][i] - lr * (g + 0.85f * mw[i]); }
        PW.push_back(pw); MW.push_back(mw);
        a.p[t] = P[t].data(); a.g[t] = G[t].data(); a.m[t] = Mv[t].data(); a.n[t] = sizes[t]; a.lr_slot[t] = t % 4; a.wd[t] = wd;
    }
    a.count = 5; a.mu = 0.85f; a.step = st.data();
    launch(dim3{10, 5, 1}, dim3{256, 1, 1}, [&] { sgd_nesterov_f32(a); });
    double e = 0; for (int t = 0; t < 5; t++) e = std::max({e, relerr(P[t], PW[t]), relerr(Mv[t], MW[t])});
    report("sgd", e, 1e-6);
}

// Muon for several tensors at once, as src/gpu/backend.rs runs it: each step one launch for all
// (MuonBatch, GemmBatch), against a per-tensor f64 reference.
static void test_muon(std::vector<std::pair<int, int>> shapes) {
    struct T { int rows, cols, n; std::vector<float> w, g, m, uu, x1, x2, A, Bm; std::vector<double> sc, mw, X, ww; };
    std::vector<T> ts;
    const double a = 3.4445, b = -4.7750, c = 2.0315;
    for (auto [rows, cols] : shapes) {
        T t{rows, cols, rows * cols};
        int n = t.n;
        t.w = rndv(n, 1.0f / sqrtf(cols)); t.g = rndv(n, 0.1f); t.m = rndv(n, 0.1f);
        // reference in double
        std::vector<double> u(n);
        t.mw.resize(n); t.X.resize(n); t.ww.resize(n);
        for (int i = 0; i < n; i++) { t.mw[i] = 0.6 * t.m[i] + t.g[i]; u[i] = t.g[i] + 0.6 * t.mw[i]; }
        double fu = 0, fw = 0; for (int i = 0; i < n; i++) { fu += u[i] * u[i]; fw += (double)t.w[i] * t.w[i]; }
        fu = sqrt(fu); fw = sqrt(fw);
        auto& X = t.X;
        for (int i = 0; i < n; i++) X[i] = u[i] / (fu + 1e-7);
        for (int s = 0; s < 3; s++) {
            std::vector<double> A(rows * rows, 0), AA(rows * rows, 0), Bm(rows * rows), BX(n, 0);
            for (int i = 0; i < rows; i++) for (int j = 0; j < rows; j++) for (int k = 0; k < cols; k++) A[i * rows + j] += X[i * cols + k] * X[j * cols + k];
            for (int i = 0; i < rows; i++) for (int j = 0; j < rows; j++) for (int k = 0; k < rows; k++) AA[i * rows + j] += A[i * rows + k] * A[k * rows + j];
            for (int i = 0; i < rows * rows; i++) Bm[i] = b * A[i] + c * AA[i];
            for (int i = 0; i < rows; i++) for (int j = 0; j < cols; j++) for (int k = 0; k < rows; k++) BX[i * cols + j] += Bm[i * rows + k] * X[k * cols + j];
            for (int i = 0; i < n; i++) X[i] = a * X[i] + BX[i];
        }
        double renorm = sqrt((double)rows) / fw;
        for (int i = 0; i < n; i++) t.ww[i] = t.w[i] * renorm - 0.24 * X[i];
        t.uu.assign(n, NAN); t.x1.assign(n, NAN); t.x2.assign(n, NAN);
        t.A.assign(rows * rows, NAN); t.Bm.assign(rows * rows, NAN); t.sc.assign(2 + 2 * 256, NAN);
        ts.push_back(std::move(t));
    }
    auto st = step_rec(0, {1.0f, 2.0f, 0.24f, 4.0f});  // the rate in slot 2
    MuonBatch mb{};
    unsigned max_nb = 1, max_n = 1;
    for (size_t k = 0; k < ts.size(); k++) {
        T& t = ts[k];
        unsigned nb = std::min(blocks(t.n), 256u);
        mb.w[k] = t.w.data(); mb.g[k] = t.g.data(); mb.m[k] = t.m.data(); mb.u[k] = t.uu.data(); mb.x[k] = t.x1.data();
        mb.scal[k] = t.sc.data(); mb.n[k] = t.n; mb.rows[k] = t.rows; mb.nb[k] = (int)nb;
        max_nb = std::max(max_nb, nb); max_n = std::max(max_n, (unsigned)t.n);
    }
    mb.step = st.data(); mb.count = (int)ts.size(); mb.mu = 0.6f; mb.lr_slot = 2;
    const unsigned nt = (unsigned)ts.size();
    launch(dim3{max_nb, nt, 1}, dim3{256, 1, 1}, [&] { muon_prep_f32(mb); });
    launch(dim3{1, nt, 1}, dim3{256, 1, 1}, [&] { muon_norms_f64(mb); });
    launch(dim3{blocks(max_n), nt, 1}, dim3{256, 1, 1}, [&] { muon_scale_f32(mb); });
    std::vector<float*> cur(nt), nxt(nt);
    for (unsigned k = 0; k < nt; k++) { cur[k] = ts[k].x1.data(); nxt[k] = ts[k].x2.data(); }
    // X·Xᵀ in split-K slices as src/gpu/backend.rs chooses them (⌈max cols / 288⌉, ≤ 8)
    int splits = 1;
    for (auto& t : ts) splits = std::max(splits, std::min(8, (t.cols + 287) / 288));
    std::vector<std::vector<float>> parts;
    for (auto& t : ts) parts.emplace_back((size_t)splits * t.rows * t.rows, NAN);
    auto gemm = [&](bool tb, float al, float be, auto f) {
        GemmBatch g{};
        for (unsigned k = 0; k < nt; k++) f(g, k);
        g.count = (int)nt; g.alpha = al; g.beta = be;
        gemm_launch(tb, g);
    };
    for (int s = 0; s < 3; s++) {
        gemm(true, 1, 0, [&](GemmBatch& g, unsigned k) { T& t = ts[k]; g.a[k] = cur[k]; g.b[k] = cur[k]; g.d[k] = splits > 1 ? t.A.data() : nullptr; g.c[k] = splits > 1 ? parts[k].data() : t.A.data(); g.m[k] = t.rows; g.n[k] = t.rows; g.k[k] = t.cols; g.splits = splits; });
        gemm(false, 2.0315f, -4.7750f, [&](GemmBatch& g, unsigned k) { T& t = ts[k]; g.a[k] = t.A.data(); g.b[k] = t.A.data(); g.d[k] = t.A.data(); g.c[k] = t.Bm.data(); g.m[k] = t.rows; g.n[k] = t.rows; g.k[k] = t.rows; });
        gemm(false, 1, 3.4445f, [&](GemmBatch& g, unsigned k) { T& t = ts[k]; g.a[k] = t.Bm.data(); g.b[k] = cur[k]; g.d[k] = cur[k]; g.c[k] = nxt[k]; g.m[k] = t.rows; g.n[k] = t.cols; g.k[k] = t.rows; });
        std::swap(cur, nxt);
    }
    for (unsigned k = 0; k < nt; k++) mb.x[k] = cur[k];
    launch(dim3{blocks(max_n), nt, 1}, dim3{256, 1, 1}, [&] { muon_apply_f32(mb); });
    for (unsigned k = 0; k < nt; k++) {
        T& t = ts[k];
        std::vector<double> Xg(t.n); for (int i = 0; i < t.n; i++) Xg[i] = cur[k][i];
        char name[64];
        snprintf(name, sizeof name, "muon NS X %dx%d (%u of %u)", t.rows, t.cols, k + 1, nt); report(name, relerr(Xg, t.X), 2e-2);
        snprintf(name, sizeof name, "muon w %dx%d (%u of %u)", t.rows, t.cols, k + 1, nt); report(name, relerr(t.w, t.ww), 1e-3);
        snprintf(name, sizeof name, "muon m %dx%d (%u of %u)", t.rows, t.cols, k + 1, nt); report(name, relerr(t.m, t.mw), 1e-6);
    }
}

static void test_step_next() {
    std::vector<unsigned> plan;
    for (int t = 0; t < 3; t++) { auto r = step_rec(100 * t, {0.5f / (t + 1), 0.25f, -1.5f, 3e-3f}); plan.insert(plan.end(), r.begin(), r.begin() + STEP_WORDS); }
    std::vector<unsigned> st(STEP_WORDS + 1, 7); st[STEP_WORDS] = 0;
    int bad = 0;
    for (int k = 0; k < 4; k++) {
        launch(dim3{1, 1, 1}, dim3{32, 1, 1}, [&] { step_next(plan.data(), 3, st.data()); });
        std::vector<unsigned> want = k < 3 ? step_rec(100 * k, {0.5f / (k + 1), 0.25f, -1.5f, 3e-3f}, k + 1)
                                           : step_rec(0xFFFFFFFFu, {NAN, NAN, NAN, NAN}, 4);
        if (k == 3) for (int j = 1; j <= 4; j++) want[j] = 0x7fc00000u;
        bad += st != want;
    }
    report("step_next rows, then exhausted", bad, 0.5);
}

// FastDiv / PixGrid (common.cuh) against plain division: every divisor up to 4,096 (and large
// ones), numerators at the multiples' edges, around 2^31, and random.
static void test_fastdiv() {
    long long bad = 0;
    auto check = [&](int d, int n) {
        const FastDiv f(d);
        bad += f.div(n) != n / d;
    };
    std::vector<int> ds;
    for (int d = 1; d <= 4096; d++) ds.push_back(d);
    for (int d : {5000, 65535, 65536, 65537, 1 << 20, 1000003, (1 << 30) - 1, 1 << 30, 2147483647}) ds.push_back(d);
    for (int d : ds) {
        for (long long k : {0LL, 1LL, 2LL, 3LL, 7LL, 31LL, 961LL, 1000LL, 65536LL})
            for (int e = -1; e <= 1; e++) {
                const long long n = k * d + e;
                if (n >= 0 && n <= 2147483647LL) check(d, (int)n);
            }
        for (int n : {2147483647, 2147483646, 2147483647 - d, 1 << 30})
            if (n >= 0) check(d, n);
        for (int r = 0; r < 64; r++) check(d, (int)(rng() & 0x7fffffffu));
    }
    long long badp = 0;
    for (auto hw : {std::array<int, 2>{31, 31}, {15, 15}, {7, 7}, {3, 3}, {1, 1}, {5, 3}, {2, 9}}) {
        const PixGrid g(hw[0], hw[1]);
        const int P = 37 * hw[0] * hw[1];
        for (int p = 0; p < P + 40; p++) {
            int n, y, x; bool ok;
            g.at(p, P, n, y, x, ok);
            const int q = p < P ? p : 0;
            badp += ok != (p < P) || n != q / (hw[0] * hw[1]) || y != q % (hw[0] * hw[1]) / hw[1] || x != q % hw[1];
        }
    }
    report("FastDiv vs n / d (mismatches)", (double)bad, 0.5);
    report("PixGrid.at vs division (mismatches)", (double)badp, 0.5);
}

// conv.cu's wgrad_reduce_f32 (split-K slices added in a fixed order: warp w the slices w, w + 8,
// … with four loads in flight, then the warps in order) against f64 sums, for slice counts below,
// at and well past the warps' unrolled loop (264: the recipe's layer 0), len not a multiple of 32;
// outputs NaN-poisoned, and the same inputs twice give the same bits.
static void test_wgrad_reduce(int slices, long long len) {
    auto part = rndv((size_t)slices * len, 1.0f);
    std::vector<float> dw(len, NAN), dw2(len, NAN);
    const dim3 grid{(unsigned)((len + 31) / 32), 1, 1};
    launch(grid, dim3{256, 1, 1}, [&] { wgrad_reduce_f32(part.data(), slices, len, dw.data()); });
    launch(grid, dim3{256, 1, 1}, [&] { wgrad_reduce_f32(part.data(), slices, len, dw2.data()); });
    std::vector<double> want(len, 0.0);
    for (int z = 0; z < slices; z++) for (long long i = 0; i < len; i++) want[i] += part[(size_t)z * len + i];
    char name[64]; snprintf(name, sizeof name, "wgrad_reduce (%d slices of %lld)", slices, len);
    report(name, relerr(dw, want), 1e-6);
    if (memcmp(dw.data(), dw2.data(), len * sizeof(float)) != 0) { printf("FAIL %s: not deterministic\n", name); fails++; }
    if (len % 4 == 0) {
        // 4 values per lane in float4 loads: the same bits
        std::vector<float> dw4(len, NAN);
        launch(dim3{(unsigned)((len + 127) / 128), 1, 1}, dim3{256, 1, 1}, [&] { wgrad_reduce4_f32(part.data(), slices, len, dw4.data()); });
        snprintf(name, sizeof name, "wgrad_reduce4 (%d slices of %lld) = wgrad_reduce's bits", slices, len);
        report(name, memcmp(dw.data(), dw4.data(), len * sizeof(float)) != 0 ? 1.0 : 0.0, 0.5);
    }
}

int main() {
    test_fastdiv();
    test_bn(3, 5, 3, 24); test_bn(4, 15, 15, 64); test_bn(2, 7, 7, 256);
    test_bn(4, 15, 15, 64, 0.05f, 30.0f);  // mean² ≫ var: the one-pass E[y²] − mean² must not cancel
    test_pre_bwd(3, 15, 5, 40, 1); test_pre_bwd(4, 15, 15, 64, 1); test_pre_bwd(2, 31, 31, 24, 0);
    test_pre_bwd(5, 7, 7, 256, 1);  // chan_reduce_f16: 32 channel groups, 8 rows at a time
    test_stem(); test_stem_res(24); test_stem_res(17); test_stem_res(2);
    test_head(5, 9, 256, 10); test_head(7, 6, 40, 3); test_head(300, 4, 64, 10);
    test_xent(64, 10); test_xent(300, 7);
    test_gemm(true, {{70, 70, 200}}); test_gemm(false, {{64, 130, 70}}); test_gemm(false, {{8, 8, 8}});
    test_gemm(true, {{24, 24, 72}, {70, 70, 200}, {8, 8, 8}}); test_gemm(false, {{8, 200, 8}, {64, 130, 70}, {24, 72, 24}});
    test_gemm(true, {{64, 64, 2304}, {70, 70, 200}, {8, 8, 8}}, 8);  // split-K: uneven and empty slices
    test_gemm(false, {{64, 130, 100}}, 3);
    test_gemm(true, {{256, 256, 2304}}, 8); test_gemm(false, {{256, 2304, 256}});  // the recipe's largest
    test_gemm(true, {{33, 45, 77}}); test_gemm(true, {{70, 66, 203}}, 3);  // rows not 16-byte aligned (nt)
    test_sgd(); test_step_next();
    test_wgrad_reduce(2, 45); test_wgrad_reduce(7, 1000); test_wgrad_reduce(33, 200); test_wgrad_reduce(264, 77);
    test_wgrad_reduce(264, 13824); test_wgrad_reduce(5, 36868); test_wgrad_reduce(31, 2564);
    test_muon({{24, 72}, {64, 216}, {8, 200}});  // one batch of three shapes
    test_muon({{128, 576}});                     // n > 256·256: 256 partial blocks, grid-stride
    test_muon({{64, 2304}, {24, 72}});           // X·Xᵀ split 8 ways (some slices of the small one empty)
    printf("%d failures\n", fails);
    return fails != 0;
}
