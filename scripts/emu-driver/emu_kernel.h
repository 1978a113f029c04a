// Shared by driver.cpp and the per-module translation units (k_<module>.cpp): the kernel table
// entry, built from each kernel's C signature, and the fiber launcher (fibers.cpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

struct dim3;

// One kernel: its parameter list (size, alignment, whether it is a pointer) and a thunk that
// calls it with the values behind kernelParams.
struct KernelEntry {
    const char* module;
    const char* name;
    std::vector<size_t> sizes, aligns;
    std::vector<bool> is_ptr;
    void* fn;
    void (*invoke)(void* fn, void* const* params);
    unsigned cluster = 1;  // __cluster_dims__(cluster, 1, 1) of the kernel's definition
    // Extra pointer checks for by-value structs holding pointers (SgdArgs, GemmBatch): returns
    // every (pointer, what) the kernel will dereference.
    void (*struct_ptrs)(void* const* params, std::vector<std::pair<uintptr_t, std::string>>& out) = nullptr;
};

template <class... A, size_t... I>
void emu_invoke_impl(void* fn, void* const* p, std::index_sequence<I...>) {
    auto f = reinterpret_cast<void (*)(A...)>(fn);
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(p[I])...);
}
template <class... A> void emu_invoke(void* fn, void* const* p) {
    emu_invoke_impl<A...>(fn, p, std::index_sequence_for<A...>{});
}
template <class... A>
KernelEntry make_entry(const char* module, const char* name, void (*fn)(A...), unsigned cluster = 1) {
    KernelEntry e;
    e.cluster = cluster;
    e.module = module;
    e.name = name;
    e.sizes = {sizeof(std::remove_cv_t<A>)...};
    e.aligns = {alignof(std::remove_cv_t<A>)...};
    e.is_ptr = {std::is_pointer_v<std::remove_cv_t<A>>...};
    e.fn = reinterpret_cast<void*>(fn);
    e.invoke = &emu_invoke<A...>;
    return e;
}

// fibers.cpp: runs f for every block of the grid (blocks spread over a few OS threads, each
// block's threads as fibers on one of them) with `dyn_smem` bytes of dynamic shared memory,
// `cluster` CTAs along x per thread-block cluster. Returns an empty string or a description of
// a deadlock or of a grid that is not whole clusters.
std::string emu_launch(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, size_t dyn_smem,
                       const std::function<void()>& f, unsigned cluster = 1);
// The dynamic shared memory of the block running on this OS thread.
unsigned char* emu_dyn_smem();
// Its size: the launch's dynamic shared memory bytes.
size_t emu_dyn_smem_bytes();

// Programmatic dependent launch (fibers.cpp): emu_pdl_reset before a launch (ignore: count
// nothing, the driver's fault injection EMU_PDL_SKIP), emu_pdl_entries after it: the threads
// that passed pdl_entry().
void emu_pdl_reset(bool ignore);
unsigned long long emu_pdl_entries();

void register_conv(std::vector<KernelEntry>&);
void register_norm(std::vector<KernelEntry>&);
void register_stem(std::vector<KernelEntry>&);
void register_head(std::vector<KernelEntry>&);
void register_optim(std::vector<KernelEntry>&);
void register_smoke(std::vector<KernelEntry>&);
