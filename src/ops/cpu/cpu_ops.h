// The CPU reference backend: one free function per op (one file per op family), and CpuOps,
// which implements the Ops interface with them. Tests call the free functions directly.
//
// Summation order is fixed (see dot()), so a row's result does not depend on how many rows are
// computed together, on the thread count, or on how a prompt is chunked.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>

#include "ops/ops.h"

namespace kestrel::cpu {

// Eight fp32 lanes. GCC/Clang vector extensions keep the summation order explicit (lane by
// lane, the same whether the compiler emits one AVX op or two SSE ops, so results do not depend
// on the CPU); with -ffp-contract=off a * b + c is a multiply then an add, exactly as written.
// F8 values only pass between inlined helpers inside the CPU kernels, never across a library
// boundary, so GCC's note that a 32-byte vector is passed differently with and without AVX
// does not apply; it is silenced for the files that include this header.
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float F8 __attribute__((vector_size(32)));
constexpr int64_t kLanes = 8;

inline F8 load8(const float* p) {
    F8 v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

// The reduction of the lanes, in one fixed order.
inline float reduce8(F8 v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }

// sum_i a[i] * b[i] with fp32 accumulation: lane l sums the products with i % 8 == l in order,
// then the lanes are reduced. Every kernel that computes a dot product uses this order.
inline float dot(const float* a, const float* b, int64_t n) {
    F8 acc = {};
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) acc += load8(a + i) * load8(b + i);
    for (int64_t l = 0; i < n; ++i, ++l) acc[l] += a[i] * b[i];
    return reduce8(acc);
}

// Hot loops are compiled twice, for AVX2 and for baseline x86-64, and picked at load time
// (GCC/Clang function multiversioning). Both clones compute the same lanes in the same order.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__SANITIZE_ADDRESS__)
#define KESTREL_HOT_LOOP __attribute__((target_clones("avx2", "default")))
#else
#define KESTREL_HOT_LOOP
#endif

// embed.cpp
void embed(std::span<const int32_t> ids, const float* table, int64_t dim, float scale, float* out);

// norm.cpp
void rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, float eps, float* out);

// linear.cpp. y [rows, w.out] = x [rows, w.in] · W^T, rows split over `threads`.
void linear(const float* x, int64_t rows, const Weight& w, float* y, int threads);

// rope.cpp
void rope_neox(float* x, std::span<const int64_t> positions, int64_t n_heads, int64_t head_dim, double theta);
void rope_neox_partial(float* x, std::span<const int64_t> positions, int64_t n_heads, int64_t head_dim,
                       int64_t rotary_dim, double theta);
void rope_proportional(float* x, std::span<const int64_t> positions, int64_t n_heads, int64_t head_dim,
                       int64_t rotary_pairs, double theta);

// attention.cpp (a kTq4 cache goes to attention_tq4.cpp's functions)
void kv_write(const KvLayerView& cache, std::span<const int64_t> positions, const float* k,
              const float* v, int threads = 1);
void attention(const float* q, std::span<const int64_t> positions, const KvLayerView& cache,
               const AttentionParams& params, float* out, int threads);
// softmax in place over n scores (max-subtracted, fp32 sums in order).
void softmax(float* x, int64_t n);
// The first key position a query at `position` sees: 0 for full attention, else
// max(0, position - window + 1) (HF sliding mask: q_pos - k_pos < window).
int64_t first_visible_position(int64_t position, int64_t window);

// attention_tq4.cpp: the same over a kTq4 cache (KvLayerView's TQ4 layout, ops/kv_tq4.h).
void kv_write_tq4(const KvLayerView& cache, std::span<const int64_t> positions, const float* k,
                  const float* v, int threads);
void attention_tq4(const float* q, std::span<const int64_t> positions, const KvLayerView& cache,
                   const AttentionParams& params, float* out, int threads);

// elementwise.cpp
float gelu_tanh(float x);
void gelu_tanh_and_mul(const float* gate, const float* up, int64_t n, float* out);
void add(const float* a, const float* b, int64_t n, float* out);
void scale(float* x, int64_t n, float s);
void softcap(float* x, int64_t n, float cap);

// qwen35_elementwise.cpp (Qwen3.5's small ops)
float silu(float x);
float sigmoid(float x);
float softplus(float x);  // PyTorch F.softplus: x for x > 20, else log1p(exp(x))
void silu_and_mul(const float* gate, const float* up, int64_t n, float* out);
void sigmoid_mul(const float* x, const float* gate, int64_t n, float* out);
void add_sigmoid_scaled(const float* x, const float* gate, int64_t rows, int64_t dim, float* out);
void l2_norm(const float* x, int64_t rows, int64_t dim, float eps, float* out);
void rms_norm_gated(const float* x, const float* z, const float* weight, int64_t rows, int64_t dim, float eps,
                    float* out);

// conv1d.cpp
void conv1d_causal(const float* x, int64_t rows, const float* weight, const RecurrentLayerView& state, bool silu,
                   float* out);

// gated_delta.cpp. chunk 0: recurrent form; else the chunked form. Heads split over `threads`.
void gated_delta_rule(const float* qkv, const float* a, const float* b, const float* a_neg, const float* dt_bias,
                      int64_t rows, const GatedDeltaParams& params, const RecurrentLayerView& state, float* out,
                      int threads);

// moe.cpp
void router_softmax(float* x, int64_t n);  // the router's summation order (moe.cpp)
void moe_route(const float* logits, int64_t rows, int64_t n_experts, int64_t k,
               const float* shared_gate, int32_t* ids, float* weights);
void moe_experts(const float* x, int64_t rows, const int32_t* ids, const float* weights, int64_t k,
                 const MoeExpertWeights& experts, float* out, int threads);

class CpuOps final : public Ops {
public:
    explicit CpuOps(int threads);
    const char* name() const override { return "cpu"; }
    int threads() const { return threads_; }

    Result<Buffer> allocate(size_t bytes) override;
    Status copy_to_backend(void* dst, const void* src, size_t bytes) override;
    Status copy_to_host(void* dst, const void* src, size_t bytes) override;
    Status fill_zero(void* dst, size_t bytes) override;
    Status copy_within(void* dst, const void* src, size_t bytes) override;
    Workspace& workspace() override { return workspace_; }
    bool supports_kv(KvDtype dtype) const override {
        return dtype == KvDtype::kF32 || dtype == KvDtype::kTq4;
    }

    void embed(std::span<const int32_t> ids, const Weight& table, float scale, float* out) override;
    void rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, float eps, float* out) override;
    void linear(const float* x, int64_t rows, const Weight& w, float* y) override;
    void rope_neox(float* x, std::span<const int64_t> positions, int64_t n_heads, int64_t head_dim,
                   double theta) override;
    void kv_write(const KvLayerView& cache, std::span<const int64_t> positions, const float* k,
                  const float* v) override;
    void attention(const float* q, std::span<const int64_t> positions, const KvLayerView& cache,
                   const AttentionParams& params, float* out) override;
    void gelu_tanh_and_mul(const float* gate, const float* up, int64_t n, float* out) override;
    void add(const float* a, const float* b, int64_t n, float* out) override;
    void scale(float* x, int64_t n, float s) override;
    void logits(const float* x, int64_t rows, const Weight& lm_head, float softcap, float* out) override;
    void rms_norm_add(const float* x, const float* weight, int64_t rows, int64_t dim, float eps,
                      float* residual) override;
    void head_norm_rope(float* x, const float* weight, std::span<const int64_t> positions, int64_t n_heads,
                        int64_t head_dim, int64_t rotary_pairs, float eps, double theta) override;
    void silu_and_mul(const float* gate, const float* up, int64_t n, float* out) override;
    void sigmoid_mul(const float* x, const float* gate, int64_t n, float* out) override;
    void add_sigmoid_scaled(const float* x, const float* gate, int64_t rows, int64_t dim, float* out) override;
    void rope_neox_partial(float* x, std::span<const int64_t> positions, int64_t n_heads, int64_t head_dim,
                           int64_t rotary_dim, double theta) override;
    void rms_norm_gated(const float* x, const float* z, const float* weight, int64_t rows, int64_t dim, float eps,
                        float* out) override;
    void conv1d_causal(const float* x, int64_t rows, const float* weight, const RecurrentLayerView& state, bool silu,
                       float* out) override;
    void gated_delta_rule(const float* qkv, const float* a, const float* b, const float* a_neg, const float* dt_bias,
                          int64_t rows, const GatedDeltaParams& params, const RecurrentLayerView& state,
                          float* out) override;
    void moe_route(const float* logits, int64_t rows, int64_t n_experts, int64_t k,
                   const float* shared_gate, int32_t* ids, float* weights) override;
    void moe_experts(const float* x, int64_t rows, const int32_t* ids, const float* weights, int64_t k,
                     const MoeExpertWeights& experts, float* out) override;
    void rope_proportional(float* x, std::span<const int64_t> positions, int64_t n_heads, int64_t head_dim,
                           int64_t rotary_pairs, double theta) override;

private:
    int threads_;
    Workspace workspace_{*this};
};

}  // namespace kestrel::cpu
