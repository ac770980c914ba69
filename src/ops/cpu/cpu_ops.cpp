// CpuOps: the Ops interface over the reference kernels; fused ops are compositions of the
// simple ones, which is what the CUDA fused kernels are tested against.
#include "ops/cpu/cpu_ops.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "ops/cpu/parallel.h"

namespace kestrel {

std::unique_ptr<Ops> make_cpu_ops(int threads) { return std::make_unique<cpu::CpuOps>(threads); }

namespace cpu {

CpuOps::CpuOps(int threads) : threads_(resolve_threads(threads)) {}

Result<Buffer> CpuOps::allocate(size_t bytes) {
    // 64-byte aligned host memory (a cache line; the vector loops load 32 bytes).
    void* data = std::aligned_alloc(64, std::max<size_t>((bytes + 63) / 64 * 64, 64));
    if (data == nullptr) {
        return Status(StatusCode::kOutOfMemory, fmt::format("cannot allocate {} bytes of host memory", bytes));
    }
    return Buffer(data, bytes, [](void* p) { std::free(p); });
}

Status CpuOps::copy_to_backend(void* dst, const void* src, size_t bytes) {
    if (bytes > 0 && dst != src) std::memmove(dst, src, bytes);
    return ok_status();
}

Status CpuOps::copy_to_host(void* dst, const void* src, size_t bytes) {
    if (bytes > 0 && dst != src) std::memmove(dst, src, bytes);
    return ok_status();
}

Status CpuOps::copy_within(void* dst, const void* src, size_t bytes) {
    if (bytes > 0) std::memcpy(dst, src, bytes);
    return ok_status();
}

Status CpuOps::fill_zero(void* dst, size_t bytes) {
    if (bytes > 0) std::memset(dst, 0, bytes);
    return ok_status();
}

void CpuOps::embed(std::span<const int32_t> ids, const Weight& table, float scale, float* out) {
    cpu::embed(ids, table.f32(), table.in, scale, out);
}

void CpuOps::rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, float eps, float* out) {
    cpu::rms_norm(x, weight, rows, dim, eps, out);
}

void CpuOps::linear(const float* x, int64_t rows, const Weight& w, float* y) {
    cpu::linear(x, rows, w, y, threads_);
}

void CpuOps::rope_neox(float* x, std::span<const int64_t> positions, int64_t n_heads, int64_t head_dim,
                       double theta) {
    cpu::rope_neox(x, positions, n_heads, head_dim, theta);
}

void CpuOps::rope_proportional(float* x, std::span<const int64_t> positions, int64_t n_heads, int64_t head_dim,
                               int64_t rotary_pairs, double theta) {
    cpu::rope_proportional(x, positions, n_heads, head_dim, rotary_pairs, theta);
}

void CpuOps::kv_write(const KvLayerView& cache, std::span<const int64_t> positions, const float* k,
                      const float* v) {
    cpu::kv_write(cache, positions, k, v, threads_);
}

void CpuOps::attention(const float* q, std::span<const int64_t> positions, const KvLayerView& cache,
                       const AttentionParams& params, float* out) {
    cpu::attention(q, positions, cache, params, out, threads_);
}

void CpuOps::gelu_tanh_and_mul(const float* gate, const float* up, int64_t n, float* out) {
    cpu::gelu_tanh_and_mul(gate, up, n, out);
}

void CpuOps::add(const float* a, const float* b, int64_t n, float* out) { cpu::add(a, b, n, out); }

void CpuOps::scale(float* x, int64_t n, float s) { cpu::scale(x, n, s); }

void CpuOps::logits(const float* x, int64_t rows, const Weight& lm_head, float cap, float* out) {
    cpu::linear(x, rows, lm_head, out, threads_);
    if (cap > 0.0f) cpu::softcap(out, rows * lm_head.out, cap);
}

void CpuOps::rms_norm_add(const float* x, const float* weight, int64_t rows, int64_t dim, float eps,
                          float* residual) {
    std::vector<float> normed(static_cast<size_t>(rows * dim));
    cpu::rms_norm(x, weight, rows, dim, eps, normed.data());
    cpu::add(residual, normed.data(), rows * dim, residual);
}

void CpuOps::head_norm_rope(float* x, const float* weight, std::span<const int64_t> positions, int64_t n_heads,
                            int64_t head_dim, int64_t rotary_pairs, float eps, double theta) {
    const int64_t rows = static_cast<int64_t>(positions.size()) * n_heads;
    cpu::rms_norm(x, weight, rows, head_dim, eps, x);
    if (rotary_pairs == head_dim / 2) {
        cpu::rope_neox(x, positions, n_heads, head_dim, theta);
    } else {
        cpu::rope_proportional(x, positions, n_heads, head_dim, rotary_pairs, theta);
    }
}

}  // namespace cpu
}  // namespace kestrel
