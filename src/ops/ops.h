// The Ops interface: every numerical step a model's forward takes (DESIGN.md "The Ops
// interface"). models/<arch>.cpp call only these; a backend (cpu/ now, cuda/ later) implements
// them. The CPU backend is the reference the CUDA kernels are tested against: plain fp32 loops
// with fp32 accumulation, results independent of the thread count and of how a prompt is split
// into chunks (each output element is computed by the same sequence of operations).
//
// Pointers are in the backend's memory space (host for the CPU backend). Shapes are row-major,
// outermost first: `x [T, D]` is T rows of D floats.
#pragma once

#include <cstdint>
#include <memory>
#include <span>

namespace kestrel {

// A linear layer's weight in the engine's format. Only fp32 for now (the CPU reference); the
// CUDA backend adds BF16/W8/W4 (DESIGN.md) and `linear` dispatches on `format`.
enum class WeightFormat { kF32 };

struct LinearWeight {
    WeightFormat format = WeightFormat::kF32;
    const float* data = nullptr;  // [out, in] row-major
    int64_t out = 0;
    int64_t in = 0;
};

// One attention layer's KV cache of one sequence. Position p lives in slot p % capacity: a flat
// cache has capacity >= every position it will hold; a sliding layer's ring has capacity
// >= window + chunk - 1, so that writing a chunk never overwrites a key an earlier query of the
// same chunk still needs (spec §10.6).
struct KvLayerView {
    float* k = nullptr;  // [capacity, n_kv_heads, head_dim]
    float* v = nullptr;  // [capacity, n_kv_heads, v_head_dim]
    int64_t capacity = 0;
    int64_t n_kv_heads = 0;
    int64_t head_dim = 0;
    int64_t v_head_dim = 0;
};

struct AttentionParams {
    int64_t n_heads = 0;  // query heads; query head h reads kv head h / (n_heads / n_kv_heads) (GQA)
    float scale = 1.0f;   // multiplies q·k (Gemma 3: query_pre_attn_scalar^-0.5)
    int64_t window = 0;   // 0: causal over every earlier position; W: keys with p - W < k_pos <= p
    float softcap = 0.0f; // 0: none; else scores = softcap * tanh(scores / softcap)
};

class Ops {
public:
    virtual ~Ops() = default;
    virtual const char* name() const = 0;

    // ---- simple ops ----------------------------------------------------------------------------

    // out[t, :] = table[ids[t], :] * scale.   table [vocab, D], out [T, D]
    virtual void embed(std::span<const int32_t> ids, const float* table, int64_t dim, float scale,
                       float* out) = 0;

    // out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight   (weight null: no weight).
    // x, out [rows, dim]; out may equal x. Per-head norms are rows = T * n_heads, dim = head_dim.
    virtual void rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, float eps,
                          float* out) = 0;

    // y [T, out] = x [T, in] · W^T.
    virtual void linear(const float* x, int64_t rows, const LinearWeight& w, float* y) = 0;

    // In place, NeoX / rotate-half RoPE (HF `apply_rotary_pos_emb`): for j < head_dim / 2,
    // (x[j], x[j + D/2]) is rotated by angle pos * theta^(-2j / D).   x [T, n_heads, head_dim]
    virtual void rope_neox(float* x, std::span<const int64_t> positions, int64_t n_heads,
                           int64_t head_dim, double theta) = 0;

    // Stores k, v of each token at slot positions[t] % capacity.   k [T, n_kv_heads, head_dim]
    virtual void kv_write(const KvLayerView& cache, std::span<const int64_t> positions,
                          const float* k, const float* v) = 0;

    // Causal (and, with params.window, sliding-window) softmax attention of each query against
    // the cache, which must already hold every key the queries see (kv_write first).
    // q [T, n_heads, head_dim], out [T, n_heads, v_head_dim]
    virtual void attention(const float* q, std::span<const int64_t> positions,
                           const KvLayerView& cache, const AttentionParams& params, float* out) = 0;

    // out[i] = gelu_tanh(gate[i]) * up[i]   (HF `gelu_pytorch_tanh`).   gate, up, out [n]
    virtual void gelu_tanh_and_mul(const float* gate, const float* up, int64_t n, float* out) = 0;

    // out[i] = a[i] + b[i]; out may alias a or b.
    virtual void add(const float* a, const float* b, int64_t n, float* out) = 0;
    // x[i] *= s
    virtual void scale(float* x, int64_t n, float s) = 0;

    // logits [T, vocab] = x [T, D] · table^T, then softcap (0: none). A tied lm_head passes the
    // embedding table.
    virtual void logits(const float* x, int64_t rows, const LinearWeight& lm_head, float softcap,
                        float* out) = 0;

    // ---- fused ops (the CPU backend composes the simple ones) -----------------------------------

    // residual[r, :] += rms_norm(x[r, :], weight)   (Gemma's sandwich: post-norm, then add)
    virtual void rms_norm_add(const float* x, const float* weight, int64_t rows, int64_t dim,
                              float eps, float* residual) = 0;

    // Per-head rms_norm with `weight` [head_dim] then rope_neox, in place (Gemma 3: QK-norm
    // before RoPE).   x [T, n_heads, head_dim]
    virtual void head_norm_rope(float* x, const float* weight, std::span<const int64_t> positions,
                                int64_t n_heads, int64_t head_dim, float eps, double theta) = 0;
};

// The reference backend. threads <= 0: std::thread::hardware_concurrency().
std::unique_ptr<Ops> make_cpu_ops(int threads = 0);

}  // namespace kestrel
