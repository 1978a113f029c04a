// Checks of the emulated driver itself (run by run.sh before the Rust tests): the behaviours the
// bug hunting relies on, each shown to trigger. `selfcheck LIB MODE`, MODE one of:
//   basic     lookups, a launch, capture/replay, capture errors, events
//   uaf       a graph replayed after one of its buffers was freed -> CUDA_ERROR_ILLEGAL_ADDRESS
//   redzone   (EMU_REDZONE=1) a launch writing past its buffer -> CUDA_ERROR_ILLEGAL_ADDRESS
//   streams   a fork/join capture (a second stream joins it through an event) and its replay; a
//             fork never joined back -> CUDA_ERROR_STREAM_CAPTURE_UNJOINED
//   side-late (EMU_STREAM_ORDER=side-late) a second stream's work runs only when waited for
//   main-late (EMU_STREAM_ORDER=main-late) the first stream's work runs only when waited for
//   pdl       cuLaunchKernelEx with programmatic stream serialization, direct and captured; a kernel
//             whose threads do not all pass pdl_entry() (EMU_PDL_SKIP) -> CUDA_ERROR_LAUNCH_FAILED
#include <dlfcn.h>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

typedef int R;
typedef unsigned long long P;
static void* lib;
template <class F> static F sym(const char* n) {
    void* s = dlsym(lib, n);
    if (!s) {
        fprintf(stderr, "selfcheck: %s missing\n", n);
        exit(1);
    }
    return (F)s;
}
static int fails = 0;
static void expect(bool ok, const char* what) {
    printf("  %-64s %s\n", what, ok ? "ok" : "FAIL");
    if (!ok) fails++;
}

int main(int argc, char** argv) {
    if (argc != 3) return 2;
    lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) {
        fprintf(stderr, "%s\n", dlerror());
        return 1;
    }
    const char* mode = argv[2];
    auto cuInit = sym<R (*)(unsigned)>("cuInit");
    auto cuModuleLoadData = sym<R (*)(void**, const void*)>("cuModuleLoadData");
    auto cuModuleGetFunction = sym<R (*)(void**, void*, const char*)>("cuModuleGetFunction");
    auto cuStreamCreate = sym<R (*)(void**, unsigned)>("cuStreamCreate");
    auto cuLaunchKernel = sym<R (*)(void*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void*,
                                    void**, void**)>("cuLaunchKernel");
    auto cuMemAllocAsync = sym<R (*)(P*, size_t, void*)>("cuMemAllocAsync");
    auto cuMemFreeAsync = sym<R (*)(P, void*)>("cuMemFreeAsync");
    auto cuMemcpyHtoDAsync = sym<R (*)(P, const void*, size_t, void*)>("cuMemcpyHtoDAsync_v2");
    auto cuMemcpyDtoHAsync = sym<R (*)(void*, P, size_t, void*)>("cuMemcpyDtoHAsync_v2");
    auto cuMemsetD8Async = sym<R (*)(P, unsigned char, size_t, void*)>("cuMemsetD8Async");
    auto cuBegin = sym<R (*)(void*, int)>("cuStreamBeginCapture_v2");
    auto cuEnd = sym<R (*)(void*, void**)>("cuStreamEndCapture");
    auto cuIsCapturing = sym<R (*)(void*, int*)>("cuStreamIsCapturing");
    auto cuInstantiate = sym<R (*)(void**, void*, unsigned long long)>("cuGraphInstantiateWithFlags");
    auto cuGraphLaunch = sym<R (*)(void*, void*)>("cuGraphLaunch");
    auto cuEventCreate = sym<R (*)(void**, unsigned)>("cuEventCreate");
    auto cuEventRecord = sym<R (*)(void*, void*)>("cuEventRecord");
    auto cuEventElapsedTime = sym<R (*)(float*, void*, void*)>("cuEventElapsedTime");
    auto cuStreamWaitEvent = sym<R (*)(void*, void*, unsigned)>("cuStreamWaitEvent");
    auto cuStreamSynchronize = sym<R (*)(void*)>("cuStreamSynchronize");
    auto cuGetErrorName = sym<R (*)(R, const char**)>("cuGetErrorName");
    // CUlaunchAttribute (id, padding, a 64-byte value) and CUlaunchConfig, as cuda.h lays them out
    struct Attr {
        int id;
        char pad[4];
        union {
            char bytes[64];
            int value;
        };
    };
    struct Config {
        unsigned gx, gy, gz, bx, by, bz, smem;
        void* stream;
        Attr* attrs;
        unsigned n;
    };
    auto cuLaunchKernelEx = sym<R (*)(const Config*, void*, void**, void**)>("cuLaunchKernelEx");

    cuInit(0);
    // a "module": PTX text naming the kernels it has
    const char* ptx = ".visible .entry cast_f32_f16(\n.visible .entry axpy_f32(\n";
    void *mod, *cast, *axpy, *nope, *st;
    cuModuleLoadData(&mod, ptx);
    cuStreamCreate(&st, 1);
    const int n = 1000;
    std::vector<float> h(n);
    for (int i = 0; i < n; i++) h[i] = 0.25f * i;
    P a, b;
    cuMemAllocAsync(&a, n * 4, st);
    cuMemAllocAsync(&b, n * 4, st);
    cuMemcpyHtoDAsync(a, h.data(), n * 4, st);
    cuModuleGetFunction(&cast, mod, "cast_f32_f16");
    cuModuleGetFunction(&axpy, mod, "axpy_f32");
    long long len = n;
    float wgt = 2.0f;
    // axpy_f32(acc, x, len, weight): acc += weight * x
    void* axpy_args[] = {&b, &a, &len, &wgt};

    if (!strcmp(mode, "basic")) {
        printf("emu-driver selfcheck: basic\n");
        expect(cuModuleGetFunction(&nope, mod, "norm_finalize_f64") == 500, "a kernel not named in the image: NOT_FOUND");
        expect(cuModuleGetFunction(&nope, mod, "no_such_kernel") == 500, "an unknown kernel: NOT_FOUND");
        const char* name = nullptr;
        cuGetErrorName(901, &name);
        expect(name && !strcmp(name, "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"), "error names");
        std::vector<float> got(n, -1.f);
        cuMemcpyDtoHAsync(got.data(), b, n * 4, st);
        expect(std::isnan(got[0]) && std::isnan(got[n - 1]), "fresh allocations read as NaN");
        cuMemsetD8Async(b, 0, n * 4, st);
        expect(cuLaunchKernel(axpy, 4, 1, 1, 256, 1, 1, 0, st, axpy_args, nullptr) == 0, "a launch");
        cuMemcpyDtoHAsync(got.data(), b, n * 4, st);
        expect(got[3] == 1.5f && got[n - 1] == 2.0f * h[n - 1], "its result");
        expect(cuLaunchKernel(axpy, 4, 70000, 1, 256, 1, 1, 0, st, axpy_args, nullptr) == 1, "grid y above 65535: INVALID_VALUE");
        expect(cuLaunchKernel(axpy, 4, 1, 1, 256, 1, 1, 64 << 10, st, axpy_args, nullptr) == 1,
               "64 KB dynamic shared memory without the opt-in: INVALID_VALUE");
        // capture: recorded, not run; parameters copied at capture time
        int cap = -1;
        expect(cuBegin(st, 1) == 0, "begin capture");
        cuIsCapturing(st, &cap);
        expect(cap == 1, "the stream reports capturing");
        wgt = 1.0f;
        cuLaunchKernel(axpy, 4, 1, 1, 256, 1, 1, 0, st, axpy_args, nullptr);
        wgt = 100.0f;  // must not affect the recorded launch
        void *g, *ge;
        expect(cuEnd(st, &g) == 0 && g, "end capture");
        cuMemcpyDtoHAsync(got.data(), b, n * 4, st);
        expect(got[3] == 1.5f, "nothing ran during the capture");
        cuInstantiate(&ge, g, 0);
        cuGraphLaunch(ge, st);
        cuGraphLaunch(ge, st);
        cuMemcpyDtoHAsync(got.data(), b, n * 4, st);
        expect(got[3] == 1.5f + 2 * 0.75f, "two replays, with the parameters of capture time");
        // capture errors
        cuBegin(st, 1);
        P c;
        expect(cuMemAllocAsync(&c, 64, st) == 900, "cuMemAllocAsync during a capture: CAPTURE_UNSUPPORTED");
        expect(cuEnd(st, &g) == 901, "... and the capture is invalidated");
        cuIsCapturing(st, &cap);
        expect(cap == 0, "the stream left capture mode");
        cuBegin(st, 1);
        expect(cuMemcpyDtoHAsync(got.data(), b, 4, st) == 900, "a host copy during a capture: CAPTURE_UNSUPPORTED");
        cuEnd(st, &g);
        // events
        void *e1, *e2;
        cuEventCreate(&e1, 0);
        cuEventCreate(&e2, 2);  // timing disabled
        float ms = -1;
        expect(cuEventElapsedTime(&ms, e1, e1) == 400, "elapsed time of an unrecorded event: INVALID_HANDLE");
        cuEventRecord(e1, st);
        cuEventRecord(e2, st);
        expect(cuEventElapsedTime(&ms, e1, e2) == 400, "elapsed time with a timing-disabled event: INVALID_HANDLE");
        expect(cuEventElapsedTime(&ms, e1, e1) == 0 && ms == 0.f, "elapsed time");
    } else if (!strcmp(mode, "uaf")) {
        printf("emu-driver selfcheck: use after free\n");
        void *g, *ge;
        cuBegin(st, 1);
        cuLaunchKernel(axpy, 4, 1, 1, 256, 1, 1, 0, st, axpy_args, nullptr);
        cuEnd(st, &g);
        cuInstantiate(&ge, g, 0);
        expect(cuGraphLaunch(ge, st) == 0, "a replay");
        cuMemFreeAsync(a, st);
        expect(cuGraphLaunch(ge, st) == 700, "a replay after a buffer of the graph was freed: ILLEGAL_ADDRESS");
    } else if (!strcmp(mode, "redzone")) {
        printf("emu-driver selfcheck: red zones (EMU_REDZONE=1)\n");
        long long too_long = n + 8;
        void* args[] = {&b, &a, &too_long, &wgt};
        expect(cuLaunchKernel(axpy, 5, 1, 1, 256, 1, 1, 0, st, args, nullptr) == 700,
               "a launch writing 32 bytes past its buffer: ILLEGAL_ADDRESS");
    } else if (!strcmp(mode, "streams") || !strcmp(mode, "side-late") || !strcmp(mode, "main-late")) {
        printf("emu-driver selfcheck: %s\n", mode);
        void *side, *fork, *join, *g, *ge;
        cuStreamCreate(&side, 1);
        cuEventCreate(&fork, 2);
        cuEventCreate(&join, 2);
        P c;
        cuMemAllocAsync(&c, n * 4, st);
        std::vector<float> got(n, -1.f), got_c(n, -1.f);
        void* side_args[] = {&c, &a, &len, &wgt};  // c += weight * a
        wgt = 1.0f;
        cuMemsetD8Async(b, 0, n * 4, st);
        cuMemsetD8Async(c, 0, n * 4, st);
        cuStreamSynchronize(st);
        if (!strcmp(mode, "streams")) {
            // b += a on the first stream; c += a on the second, forked after it and joined back
            expect(cuBegin(st, 1) == 0, "begin capture");
            cuLaunchKernel(axpy, 4, 1, 1, 256, 1, 1, 0, st, axpy_args, nullptr);
            cuEventRecord(fork, st);
            expect(cuStreamWaitEvent(side, fork, 0) == 0, "a second stream joins the capture");
            int cap = 0;
            cuIsCapturing(side, &cap);
            expect(cap == 1, "... and reports capturing");
            cuLaunchKernel(axpy, 4, 1, 1, 256, 1, 1, 0, side, side_args, nullptr);
            cuEventRecord(join, side);
            cuStreamWaitEvent(st, join, 0);
            expect(cuEnd(st, &g) == 0 && g, "end capture after the join");
            cuIsCapturing(side, &cap);
            expect(cap == 0, "the second stream left the capture");
            cuInstantiate(&ge, g, 0);
            expect(cuGraphLaunch(ge, st) == 0 && cuGraphLaunch(ge, st) == 0, "two replays");
            cuMemcpyDtoHAsync(got.data(), b, n * 4, st);
            cuMemcpyDtoHAsync(got_c.data(), c, n * 4, st);
            expect(got[5] == 2 * h[5] && got_c[5] == 2 * h[5], "both branches ran twice");
            cuBegin(st, 1);
            cuEventRecord(fork, st);
            cuStreamWaitEvent(side, fork, 0);
            cuLaunchKernel(axpy, 4, 1, 1, 256, 1, 1, 0, side, side_args, nullptr);
            expect(cuEnd(st, &g) == 904, "a fork not joined back: STREAM_CAPTURE_UNJOINED");
            cuIsCapturing(side, &cap);
            expect(cap == 0, "... and the second stream left the capture");
        } else {
            // side-late: a launch on the second stream runs only once the first one needs it;
            // main-late: a launch on the first stream only once the second one does
            const bool side_late = !strcmp(mode, "side-late");
            void* late = side_late ? side : st;
            void* other = side_late ? st : side;
            P buf = side_late ? c : b;
            cuLaunchKernel(axpy, 4, 1, 1, 256, 1, 1, 0, late, side_late ? side_args : axpy_args, nullptr);
            cuMemcpyDtoHAsync(got.data(), buf, n * 4, other);
            expect(got[5] == 0.f, "a launch on the late stream has not run for the other stream's copy");
            cuEventRecord(join, late);
            cuStreamWaitEvent(other, join, 0);
            cuMemcpyDtoHAsync(got.data(), buf, n * 4, other);
            expect(got[5] == h[5], "it has once the other stream waits for it");
        }
    } else if (!strcmp(mode, "pdl")) {
        printf("emu-driver selfcheck: programmatic dependent launch\n");
        std::vector<float> got(n, -1.f);
        Attr pdl{};
        pdl.id = 6;  // CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
        pdl.value = 1;
        Config cfg{4, 1, 1, 256, 1, 1, 0, st, &pdl, 1};
        cuMemsetD8Async(b, 0, n * 4, st);
        expect(cuLaunchKernelEx(&cfg, axpy, axpy_args, nullptr) == 0, "a programmatic launch");
        cuMemcpyDtoHAsync(got.data(), b, n * 4, st);
        expect(got[3] == 1.5f && got[n - 1] == 2.0f * h[n - 1], "its result");
        void *g, *ge;
        cuBegin(st, 1);
        cuLaunchKernelEx(&cfg, axpy, axpy_args, nullptr);
        expect(cuEnd(st, &g) == 0 && g, "one captured");
        cuInstantiate(&ge, g, 0);
        expect(cuGraphLaunch(ge, st) == 0, "and replayed");
        cuMemcpyDtoHAsync(got.data(), b, n * 4, st);
        expect(got[3] == 3.0f, "its result");
        Attr both[2] = {pdl, {}};
        both[1].id = 8;  // CU_LAUNCH_ATTRIBUTE_PRIORITY, in cuCtxGetStreamPriorityRange's 0..-5
        both[1].value = -5;
        Config prio{4, 1, 1, 256, 1, 1, 0, st, both, 2};
        expect(cuLaunchKernelEx(&prio, axpy, axpy_args, nullptr) == 0, "with a priority too");
        both[1].value = -6;
        expect(cuLaunchKernelEx(&prio, axpy, axpy_args, nullptr) == 1, "a priority out of range: INVALID_VALUE");
        Attr other{};
        other.id = 4;  // CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION: not emulated
        Config bad{4, 1, 1, 256, 1, 1, 0, st, &other, 1};
        expect(cuLaunchKernelEx(&bad, axpy, axpy_args, nullptr) == 801, "another launch attribute: NOT_SUPPORTED");
        setenv("EMU_PDL_SKIP", "axpy_f32", 1);
        Config plain{4, 1, 1, 256, 1, 1, 0, st, nullptr, 0};
        expect(cuLaunchKernelEx(&plain, axpy, axpy_args, nullptr) == 0,
               "a kernel not passing pdl_entry, launched without the attribute");
        expect(cuLaunchKernelEx(&cfg, axpy, axpy_args, nullptr) == 719,
               "... and with it: LAUNCH_FAILED");
    } else {
        return 2;
    }
    return fails ? 1 : 0;
}
