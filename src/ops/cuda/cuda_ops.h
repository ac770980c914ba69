// CudaOps: the Ops interface on one NVIDIA GPU (DESIGN.md "CUDA rules"). One stream; every op
// is an asynchronous launch on it; errors are kept (the first one) and returned by take_error.
// Linear layers dispatch on the weight format and the row count: the W4A8 / W8A8 dp4a GEMVs
// for up to kGemvMaxRows rows (decode), dequantise-to-bf16 + cuBLASLt above (prefill).
// Scratch buffers grow outside graph capture only; one outgrown after a graph was captured is
// retired (kept until the backend dies), so a captured decode graph never points at freed memory.
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <vector>

#include "ops/cuda/attention.h"
#include "ops/cuda/gemm_prefill.h"
#include "ops/ops.h"

namespace kestrel::cuda {

class CudaOps final : public Ops {
public:
    static Result<std::unique_ptr<CudaOps>> create();
    ~CudaOps() override;

    const char* name() const override { return "cuda"; }

    Result<Buffer> allocate(size_t bytes) override;
    Status copy_to_backend(void* dst, const void* src, size_t bytes) override;
    Status copy_to_host(void* dst, const void* src, size_t bytes) override;
    Status fill_zero(void* dst, size_t bytes) override;
    Status copy_within(void* dst, const void* src, size_t bytes) override;
    Result<int64_t> copy_to_host_async(void* dst, const void* src, size_t bytes) override;
    Status wait_host_copy(int64_t ticket) override;
    Status take_error() override;
    Status synchronize() override;
    KvDtype kv_dtype() const override { return KvDtype::kBF16; }
    bool supports_kv(KvDtype dtype) const override {
        return dtype == KvDtype::kBF16 || dtype == KvDtype::kTq4;
    }
    bool accepts(WeightFormat format) const override { return format != WeightFormat::kF32; }
    Workspace& workspace() override { return workspace_; }
    Result<std::unique_ptr<CapturedStep>> capture(const std::function<Status()>& step) override;
    Result<Weight> random_weight(WeightFormat format, int64_t out, int64_t in, uint64_t seed) override;

    Result<std::unique_ptr<DeviceSampler>> make_sampler(int64_t vocab, const SamplerSettings& settings) override;
    void set_profiling(bool enabled) override { profiling_ = enabled; }
    std::vector<OpTiming> take_profile() override;

    cudaStream_t stream() const { return stream_; }
    // Bytes of replaced scratch buffers kept for the graphs captured while they lived.
    size_t retired_bytes() const;

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
    void linear_blocks(const float* x, int64_t rows, const Weight& w, std::span<const int64_t> widths,
                       float* out) override;
    Status attention_inputs(float* q, float* k, float* v, const float* q_norm, const float* k_norm,
                            std::span<const int64_t> positions, const AttentionInputsParams& params,
                            const KvLayerView& cache) override;
    void rms_norm_add_scale(const float* x, const float* weight, int64_t rows, int64_t dim, float eps, float scale,
                            float* residual) override;
    void gelu_tanh_and_mul_linear(const float* gate, const float* up, int64_t rows, int64_t dim, float* act,
                                  bool keep_act, const Weight& w, float* out) override;
    void rms_norm_linear_blocks(const float* x, const float* norm_weight, int64_t rows, int64_t dim, float eps,
                                float* normed, bool keep_normed, const Weight& w, std::span<const int64_t> widths,
                                float* out) override;
    void attention_linear(const float* q, std::span<const int64_t> positions,
                          const KvLayerView& cache, const AttentionParams& params, float* attn_out,
                          bool keep_attn_out, const Weight& w, float* out) override;
    Status attention_inputs_linear(float* q, float* k, float* v, const float* q_norm,
                                   const float* k_norm, std::span<const int64_t> positions,
                                   const AttentionInputsParams& inputs, const KvLayerView& cache,
                                   const AttentionParams& params, float* attn_out,
                                   bool keep_attn_out, const Weight& w, float* out) override;
    void residual_norm_linear_blocks(const float* x, const float* post_norm_weight, float scale,
                                     float* residual, const float* pre_norm_weight, int64_t rows,
                                     int64_t dim, float eps, float* normed, bool keep_normed,
                                     const Weight& w, std::span<const int64_t> widths,
                                     float* out) override;
    void add_rms_norm_linear_blocks(const float* x, float* residual, const float* norm_weight,
                                    int64_t rows, int64_t dim, float eps, float* normed,
                                    bool keep_normed, const Weight& w,
                                    std::span<const int64_t> widths, float* out) override;
    void rms_norm_gated_linear(const float* x, const float* z, const float* weight, int64_t rows,
                               int64_t heads, int64_t head_dim, float eps, float* gated,
                               bool keep_gated, const Weight& w, float* out) override;
    void rms_norm_linear_conv1d(const float* x, const float* norm_weight, int64_t rows, int64_t dim,
                                float eps, float* normed, bool keep_normed, const Weight& w,
                                std::span<const int64_t> widths, float* out,
                                const float* conv_weight, const RecurrentLayerView& state,
                                bool silu, float* conv_out) override;
    void rope_proportional(float* x, std::span<const int64_t> positions, int64_t n_heads, int64_t head_dim,
                           int64_t rotary_pairs, double theta) override;
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

private:
    friend class ProfileScope;
    struct TimedLaunch {
        const char* op;
        cudaEvent_t start;
        cudaEvent_t stop;
    };

    // One copy_to_host_async in flight: its slot of pinned memory, the event after its copy, and
    // where its bytes go.
    struct HostCopy {
        cudaEvent_t done = nullptr;
        void* dst = nullptr;
        size_t bytes = 0;
        int64_t ticket = -1;  // -1: none in flight
    };
    static constexpr int kHostCopySlots = 4;
    // Lands copy `slot`'s bytes at its dst once its event has passed.
    Status finish_host_copy(int slot);

    // A device scratch buffer that only grows, outside capture. A replaced buffer is retired
    // (kept until the backend dies) once a graph has been captured since it was made; before
    // that it is freed.
    struct Scratch {
        Buffer buffer;
        int64_t graphs_before = 0;  // graphs_captured_ when `buffer` was made
    };

    CudaOps() = default;
    // Records the first failure; later ops still launch (their results are discarded with it).
    void note(const Status& status);
    Result<void*> ensure(Scratch& scratch, size_t bytes);
    // Whether `rows` rows into w take the decode path: Q8 activations and a dp4a GEMV.
    static bool gemv_path(int64_t rows, const Weight& w);
    // The Q8 activation buffer (q8_) grown for up to kGemvMaxRows rows of w's input.
    Result<Q8Block*> q8_blocks(const Weight& w);
    // The GEMV of up to kGemvMaxRows rows of Q8 blocks (already in q8_) with a W4/W8 weight.
    void gemv(const Q8Block* q8, int64_t rows, const Weight& w, float* y);
    // The decode attention's split-K partials, grown for this call's shape.
    Result<void*> attention_workspace(const KvCacheBf16View& cache, const AttentionShape& shape,
                                      int64_t tokens);
    // A device copy of rope_inv_freq(n_pairs, frequency_dim, theta) (attention_inputs.h), made
    // on first use outside capture and kept for the backend's life (a layer kind has one).
    Result<const float*> rope_inv_freq_table(int64_t n_pairs, int64_t frequency_dim, double theta);
    // Says once in the log when a decode call's splits could combine in clusters but the GPU
    // cannot hold them (attention.h), so the reduce kernel runs instead.
    static void note_cluster_refusal(const KvCacheBf16View& cache, const AttentionShape& shape,
                                     int64_t tokens);
    // Attention over a TQ4 layer: q turned into the rotated space, attention there, the output
    // turned back (attention.h attention_*_tq4, kv_cache_tq4.h).
    void attention_tq4(const float* q, std::span<const int64_t> positions, const KvLayerView& cache,
                       const AttentionParams& params, float* out);

    cudaStream_t stream_ = nullptr;
    bool capturing_ = false;
    Status first_error_;
    Workspace workspace_{*this};
    std::unique_ptr<GemmContext> gemm_;
    Scratch q8_;         // Q8 blocks of a GEMV's input rows
    Scratch gemm_scratch_;  // dequantised bf16 weight + bf16 activations of a prefill GEMM
    Scratch attention_;  // split-K partials of decode attention
    Scratch moe_;        // the routed experts' activations (moe_experts_scratch_bytes)
    Scratch gated_delta_;  // chunked Gated DeltaNet: T, QK, gates (gated_delta_scratch_bytes)
    Scratch moe_prefill_;  // the prefill routed experts' buffers (moe_prefill_scratch_bytes)
    Scratch tq4_write_;    // a TQ4 cache write's rotated K and V rows (kv_write_tq4_scratch_bytes)
    Scratch
        tq4_rows_;  // TQ4 attention's rotated q, then in place its rotated output [T, n_heads, d]
    std::vector<Buffer> retired_;
    struct RopeInvFreq {
        int64_t n_pairs = 0;
        int64_t frequency_dim = 0;
        double theta = 0.0;
        Buffer table;
    };
    std::vector<RopeInvFreq> rope_inv_freq_;
    int64_t graphs_captured_ = 0;       // by capture(), ever
    void* host_copy_pinned_ = nullptr;  // kHostCopySlots x kAsyncHostCopyBytes, cudaMallocHost
    HostCopy host_copies_[kHostCopySlots];
    int64_t next_host_copy_ = 0;
    bool profiling_ = false;
    std::vector<TimedLaunch> timed_;
};

// Records events around one op while profiling (not while capturing).
class ProfileScope {
public:
    ProfileScope(CudaOps& ops, const char* op);
    ~ProfileScope();
    ProfileScope(const ProfileScope&) = delete;
    ProfileScope& operator=(const ProfileScope&) = delete;

private:
    CudaOps& ops_;
    const char* op_;
    cudaEvent_t start_ = nullptr;
};

}  // namespace kestrel::cuda
