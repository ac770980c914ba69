// The Ops interface: every numerical step a model's forward takes (DESIGN.md "The Ops
// interface"). models/<arch>.cpp call only these; a backend (cpu/, cuda/) implements
// them. The CPU backend is the reference the CUDA kernels are tested against: plain fp32 loops
// with fp32 accumulation, results independent of the thread count and of how a prompt is split
// into chunks (each output element is computed by the same sequence of operations).
//
// Pointers and spans are in the backend's memory space (host for the CPU backend, device for
// CUDA: the host never reads them there). Shapes are row-major, outermost first: `x [T, D]` is
// T rows of D floats. Token ids and positions are in backend memory too, so that a captured
// CUDA graph replays a decode step at any position by changing only device contents.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kestrel/status.h"

namespace kestrel {

// ---- backend memory ------------------------------------------------------------------------------

// An allocation in a backend's memory space (host memory for the CPU backend, device memory for
// CUDA), freed by `release` when the Buffer dies; with no `release` it borrows memory someone
// else owns (a view). Move-only.
class Buffer {
public:
    using Release = void (*)(void*);
    Buffer() = default;
    Buffer(void* data, size_t bytes, Release release) : data_(data), bytes_(bytes), release_(release) {}
    static Buffer view(const void* data, size_t bytes) { return Buffer(const_cast<void*>(data), bytes, nullptr); }
    Buffer(Buffer&& other) noexcept { *this = std::move(other); }
    Buffer& operator=(Buffer&& other) noexcept {
        if (this != &other) {
            reset();
            data_ = std::exchange(other.data_, nullptr);
            bytes_ = std::exchange(other.bytes_, 0);
            release_ = std::exchange(other.release_, nullptr);
        }
        return *this;
    }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    ~Buffer() { reset(); }

    void* data() const { return data_; }
    size_t bytes() const { return bytes_; }
    bool empty() const { return data_ == nullptr; }
    float* floats() const { return static_cast<float*>(data_); }

private:
    void reset() {
        if (data_ != nullptr && release_ != nullptr) release_(data_);
        data_ = nullptr;
        bytes_ = 0;
    }
    void* data_ = nullptr;
    size_t bytes_ = 0;
    Release release_ = nullptr;
};

// The engine's weight formats (DESIGN.md "The Ops interface"; ops/weight_format.h and
// ops/weight_format_w8.h define W4 and W8 bit for bit). The CPU reference holds everything in
// fp32; the CUDA backend holds linear weights as W4/W8/BF16 and vectors (norms) as fp32.
enum class WeightFormat {
    kF32,   // data: float [out, in]
    kBF16,  // data: bf16 bits [out, in]
    kW8,    // data: int8 [out, in];         scales: fp16 (scale, min) pairs [out, in / 32]
    kW4,    // data: uint8 [out, in / 2];    scales: uint16 (sc | m << 8) [out, in / 32];
            // super_scales: fp16 (d, dmin) pairs [out, ceil(in / 256)]
};

const char* weight_format_name(WeightFormat format);

// A backend that multiplies a prefill chunk by a W4 / W8 weight through a bf16 copy of it (the
// CUDA backend: dequantise, then a tensor-core GEMM) makes that copy in slices of output rows of
// at most this many bytes, so that its scratch stays bounded whatever the matrix: a perplexity
// run's lm_head over every row (262144 x 5376 in bf16 is 2.8 GB at Gemma's width). Small slices
// cost prefill speed (gemm_bench on the H100 at 32 MiB slices: 7-27% slower GEMMs, pp2048 6964
// tok/s against 7331); 256 MiB keeps every layer's projection whole but Gemma 4 31B's gate | up
// (441 MiB), which goes in two halves of 21504 rows, and saves 221 MiB at 128k context on a
// 24 GB card. Memory plans count one slice.
constexpr int64_t kPrefillWeightSliceBytes = int64_t{256} << 20;

// Output rows per slice of an [n, k] weight's bf16 copy under slices of at most `slice_bytes`
// (0: the whole matrix): as few slices as fit, of equal rows (a multiple of 64, at least 64; the
// last may be shorter), so that no GEMM runs on a thin remainder.
inline int64_t prefill_weight_slice_rows(int64_t n, int64_t k, int64_t slice_bytes) {
    if (slice_bytes <= 0) return n;
    const int64_t most = slice_bytes / (k * 2) / 64 * 64;
    if (most <= 64) return n <= 64 ? n : 64;
    if (n <= most) return n;
    const int64_t slices = (n + most - 1) / most;
    return ((n + slices - 1) / slices + 63) / 64 * 64;
}

// A model tensor in backend memory: a linear layer's weight [out, in] (y = x W^T), or a vector
// (a norm's weight: out = its length, in = 1, always kF32).
struct Weight {
    WeightFormat format = WeightFormat::kF32;
    int64_t out = 0;
    int64_t in = 0;
    Buffer data;
    Buffer scales;        // kW8, kW4
    Buffer super_scales;  // kW4

    const float* f32() const { return static_cast<const float*>(data.data()); }
    bool empty() const { return data.empty(); }
};

// Rows [begin, begin + rows) of a matrix, borrowed (the weights of one block of a stacked
// projection: linear_blocks).
Weight weight_rows(const Weight& w, int64_t begin, int64_t rows);

// A borrowed fp32 view of host data [out, in] (the CPU backend, and tests).
inline Weight f32_view(const float* data, int64_t out, int64_t in) {
    Weight w;
    w.out = out;
    w.in = in;
    w.data = Buffer::view(data, static_cast<size_t>(out * in) * sizeof(float));
    return w;
}

// One forward's intermediates: a bump allocator over backend memory, reset at the start of each
// forward. Blocks are kept until the workspace dies and a forward of the same shape gets the same
// addresses every time, so a CUDA graph captured over one forward stays valid (DESIGN.md "CUDA
// rules": no allocation inside a captured step).
class Ops;
class Workspace {
public:
    explicit Workspace(Ops& ops) : ops_(ops) {}
    void reset() {
        block_ = 0;
        used_ = 0;
    }
    // n floats, 256-byte aligned; kOutOfMemory naming the size when the backend has no more.
    Result<float*> floats(int64_t n);
    int64_t bytes_reserved() const;

private:
    Ops& ops_;
    std::vector<Buffer> blocks_;
    size_t block_ = 0;  // the block being filled
    size_t used_ = 0;   // bytes used in it
};

// The KV cache's element type: fp32 on the CPU reference, bf16 (raw bits) on CUDA (the backends'
// native kv_dtype()), or TQ4 (ops/kv_tq4.h: a bf16 norm and 4-bit codebook indices of the rotated
// vector; techniques.md §4), which full-attention layers use with `--kv-cache tq4`.
enum class KvDtype { kF32, kBF16, kTq4 };

// One attention layer's KV cache of one sequence. Position p lives in slot p % capacity: a flat
// cache has capacity >= every position it will hold; a sliding layer's ring has capacity
// >= window + step - 1, so that writing `step` tokens never overwrites a key an earlier query of
// the same step still needs (spec §10.6). A step is a whole prefill chunk, or where the ring is
// shorter than window + chunk - 1 (step_tokens > 0), at most step_tokens of its tokens.
struct KvLayerView {
    // kF32 / kBF16: [capacity, n_kv_heads, head_dim] of `dtype`. kTq4: uint8 [capacity,
    // n_kv_heads, head_dim / 2], TQ4 indices packed as in ops/kv_tq4.h (element 2b in the low
    // nibble of byte b).
    void* k = nullptr;
    void* v = nullptr;  // likewise with v_head_dim
    int64_t capacity = 0;
    int64_t n_kv_heads = 0;
    int64_t head_dim = 0;
    int64_t v_head_dim = 0;
    KvDtype dtype = KvDtype::kF32;
    // kTq4 only (null otherwise); a TQ4 layer has head_dim == v_head_dim, even. The rotation is
    // [head_dim, head_dim] fp32 = tq4_rotation(head_dim), in the backend's memory.
    uint16_t* k_norm = nullptr;  // [capacity, n_kv_heads] bf16 bits of ||k||
    uint16_t* v_norm = nullptr;  // [capacity, n_kv_heads] bf16 bits of ||v||
    const float* rotation = nullptr;
    // [n_kv_heads, head_dim] fp32, or null: the key centre mu (ops/kv_tq4.h, "Key centring"):
    // keys are stored as k - mu, which moves every score of a query by the same q . mu.
    float* k_center = nullptr;
    // A sliding ring shorter than window + prefill chunk - 1 (runtime/kv_cache.h
    // kSlidingAttentionStep): the most tokens one cache write and its attention may take,
    // capacity - window + 1. 0: no limit (flat caches, and rings that hold a whole chunk).
    int64_t step_tokens = 0;
};

struct AttentionParams {
    int64_t n_heads = 0;  // query heads; query head h reads kv head h / (n_heads / n_kv_heads) (GQA)
    float scale = 1.0f;   // multiplies q·k (Gemma 3: query_pre_attn_scalar^-0.5)
    int64_t window = 0;   // 0: causal over every earlier position; W: keys with p - W < k_pos <= p
    float softcap = 0.0f; // 0: none; else scores = softcap * tanh(scores / softcap)
};

// One Gated DeltaNet layer's state of one sequence (Qwen3.5 "linear_attention" layers).
struct RecurrentLayerView {
    float* conv = nullptr;   // [conv_kernel - 1, conv_channels]: the last raw (pre-conv) inputs, oldest first
    float* state = nullptr;  // [n_v_heads, k_head_dim, v_head_dim]: S[h][i][j]
    int64_t conv_kernel = 0;
    int64_t conv_channels = 0;
};

// Which key head a Gated DeltaNet value head reads (n_v_heads = r * n_k_heads). HF checkpoints
// group value heads by key head (v head h reads k head h / r, `repeat_interleave`); llama.cpp's
// converter reorders them to tiled order (v head h reads k head h % n_k_heads).
enum class GdnHeadOrder { kGrouped, kTiled };

struct GatedDeltaParams {
    int64_t n_k_heads = 0;
    int64_t n_v_heads = 0;
    int64_t k_head_dim = 0;
    int64_t v_head_dim = 0;
    GdnHeadOrder order = GdnHeadOrder::kGrouped;
    int64_t chunk = 0;  // 0: the recurrent form, token by token; C: the chunked (WY) form, C tokens per chunk
};

// The routed experts of one MoE layer, each stack one matrix in the backend's engine format, so
// an expert is a block of rows (weight_rows) and a kernel finds it from its id alone.
// f = expert_ffn_size, d = d_model.
struct MoeExpertWeights {
    const Weight* gate_up =
        nullptr;  // [n_experts * 2f, d]: expert e's f gate rows, then its f up rows, at row e * 2f
    const Weight* down = nullptr;  // [n_experts * d, f]: expert e's rows at e * d
    int64_t n_experts = 0;
    int64_t ffn = 0;
    int64_t dim = 0;
};

// A forward step captured once and replayed (a CUDA graph). Replays read the same backend
// addresses (token ids, positions, KV cache, workspace); the caller changes their contents.
class CapturedStep {
public:
    virtual ~CapturedStep() = default;
    virtual Status replay() = 0;
};

// The sampling chain's settings: runtime/sampler.h's SamplingParams field for field (ops/ does
// not include runtime/), whose comments define them.
struct SamplerSettings {
    float temperature = 0.8f;
    int32_t top_k = 40;
    float top_p = 0.95f;
    float min_p = 0.05f;
    float repeat_penalty = 1.0f;
    int32_t repeat_last_n = 64;
    float presence_penalty = 0.0f;
    float frequency_penalty = 0.0f;
    uint64_t seed = 0;
};

// Sampling where the logits are (GPU sampling: only the token id comes back), drawing exactly
// what runtime/sampler.h's Sampler draws from the same logits, seed and history.
class DeviceSampler {
public:
    virtual ~DeviceSampler() = default;
    // The next token from logits [vocab] into *token (both backend memory).
    virtual Status sample(const float* logits, int32_t* token) = 0;
    // Records tokens [count] (backend memory), oldest first, for the penalties.
    virtual Status accept(const int32_t* tokens, int64_t count) = 0;
};

// Time spent in one op (family) over the steps run while profiling was on.
struct OpTiming {
    std::string op;
    int64_t calls = 0;
    double microseconds = 0.0;
};

// What Ops::attention_inputs does to one layer's q, k, v.
struct AttentionInputsParams {
    int64_t n_heads = 0;
    int64_t n_kv_heads = 0;
    int64_t head_dim = 0;
    int64_t rotary_pairs = 0;   // RoPE pairs (j, j + head_dim / 2) for j < rotary_pairs rotate
    float eps = 1e-6f;
    double theta = 10000.0;
    bool v_from_raw_k = false;  // Gemma 4 K=V layers: v is the raw k, before k's norm and RoPE
    bool v_norm = false;        // Gemma 4: v = rms_norm(v) without weight
    // 0: the Gemma pairing above (head_norm_rope). > 0 (even, <= head_dim): Qwen3.5's partial
    // rotate-half, rms_norm then rope_neox_partial: pairs (j, j + partial_rotary_dim / 2) for
    // j < partial_rotary_dim / 2, inv_freq = theta^(-2j / partial_rotary_dim); rotary_pairs unused.
    int64_t partial_rotary_dim = 0;
};

// The largest copy Ops::copy_to_host_async takes.
constexpr size_t kAsyncHostCopyBytes = 64;

class Ops {
public:
    virtual ~Ops() = default;
    virtual const char* name() const = 0;

    // ---- memory, errors, capture -----------------------------------------------------------------

    virtual Result<Buffer> allocate(size_t bytes) = 0;
    // Host <-> backend copies, ordered with the ops (the CPU backend: memcpy).
    virtual Status copy_to_backend(void* dst, const void* src, size_t bytes) = 0;
    virtual Status copy_to_host(void* dst, const void* src, size_t bytes) = 0;
    virtual Status fill_zero(void* dst, size_t bytes) = 0;
    // Backend to backend (dst and src do not overlap).
    virtual Status copy_within(void* dst, const void* src, size_t bytes) = 0;
    // A small backend -> host copy (at most kAsyncHostCopyBytes) in order with the ops that does
    // not wait for them: the bytes are at dst once wait_host_copy(ticket) has returned, and dst
    // must stay valid until then. It lets the host queue the next decode step before it reads the
    // last token (Session::take_sampled). The default copies at once (copy_to_host).
    virtual Result<int64_t> copy_to_host_async(void* dst, const void* src, size_t bytes) {
        KESTREL_RETURN_IF_ERROR(copy_to_host(dst, src, bytes));
        return int64_t{-1};
    }
    virtual Status wait_host_copy(int64_t ticket) {
        (void)ticket;
        return ok_status();
    }
    // The first error any op hit since the last call (ops return void so that a forward reads
    // like the paper; a backend that can fail records its first error and the forward returns it).
    virtual Status take_error() { return ok_status(); }
    // Waits for every op issued so far.
    virtual Status synchronize() { return ok_status(); }
    // The backend's native KV element type (`--kv-cache bf16`: fp32 on the CPU, bf16 on CUDA).
    virtual KvDtype kv_dtype() const { return KvDtype::kF32; }
    // Whether kv_write() and attention() take a cache of `dtype` (kTq4: `--kv-cache tq4`).
    virtual bool supports_kv(KvDtype dtype) const { return dtype == kv_dtype(); }
    // The formats linear(), logits() and embed() take; a loader converts every matrix into one of
    // them (vectors are always kF32).
    virtual bool accepts(WeightFormat format) const { return format == WeightFormat::kF32; }
    // The intermediates of one forward (reset by the forward).
    virtual Workspace& workspace() = 0;
    // Runs `step` once while recording it, and returns the recording to replay (nullptr result:
    // this backend has no graphs; the caller runs the step eagerly).
    virtual Result<std::unique_ptr<CapturedStep>> capture(const std::function<Status()>& step) {
        (void)step;
        return std::unique_ptr<CapturedStep>();
    }

    // A sampler on this backend's logits; nullptr when it samples on the host (the CPU backend:
    // the caller runs Sampler on the logits).
    virtual Result<std::unique_ptr<DeviceSampler>> make_sampler(int64_t vocab, const SamplerSettings& settings) {
        (void)vocab;
        (void)settings;
        return std::unique_ptr<DeviceSampler>();
    }

    // Per-op timing of the ops run eagerly while enabled (the CUDA backend: events around each
    // launch; captured steps are not timed). take_profile waits for the ops and resets the tally.
    virtual void set_profiling(bool enabled) { (void)enabled; }
    virtual std::vector<OpTiming> take_profile() { return {}; }

    // A weight from host bytes already in `format` (data, and scales for W8/W4); and random
    // weights of the right scale for synthetic models (`--dummy`), made where they will live.
    Result<Weight> upload(WeightFormat format, int64_t out, int64_t in,
                          std::span<const uint8_t> data, std::span<const uint8_t> scales = {},
                          std::span<const uint8_t> super_scales = {});
    virtual Result<Weight> random_weight(WeightFormat format, int64_t out, int64_t in, uint64_t seed);

    // ---- simple ops ----------------------------------------------------------------------------

    // out[t, :] = table[ids[t], :] * scale.   table [vocab, D] (any format linear() takes), out [T, D]
    virtual void embed(std::span<const int32_t> ids, const Weight& table, float scale, float* out) = 0;

    // out[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * weight   (weight null: no weight).
    // x, out [rows, dim]; out may equal x. Per-head norms are rows = T * n_heads, dim = head_dim.
    virtual void rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, float eps,
                          float* out) = 0;

    // y [T, out] = x [T, in] · W^T.
    virtual void linear(const float* x, int64_t rows, const Weight& w, float* y) = 0;

    // Several projections of one input with their weights stacked by rows (q | k | v, gate | up),
    // w [sum(widths), in]: block b's output [T, widths[b]] is stored after block b - 1's, so each
    // block is a contiguous [T, width] buffer. The CPU backend runs one linear per block; CUDA
    // quantises x once and, for one row, runs a single GEMV over the whole stack.
    virtual void linear_blocks(const float* x, int64_t rows, const Weight& w, std::span<const int64_t> widths,
                               float* out);

    // normed = rms_norm(x, norm_weight) [rows, dim], then out = linear_blocks(normed, w, widths):
    // the pre-norm of a block feeding its projections. `normed` is written only when
    // keep_normed (a backend may quantise the normalised rows for its GEMV without storing them).
    virtual void rms_norm_linear_blocks(const float* x, const float* norm_weight, int64_t rows, int64_t dim, float eps,
                                        float* normed, bool keep_normed, const Weight& w,
                                        std::span<const int64_t> widths, float* out);

    // In place, NeoX / rotate-half RoPE (HF `apply_rotary_pos_emb`): for j < head_dim / 2,
    // (x[j], x[j + D/2]) is rotated by angle pos * theta^(-2j / D).   x [T, n_heads, head_dim]
    virtual void rope_neox(float* x, std::span<const int64_t> positions, int64_t n_heads,
                           int64_t head_dim, double theta) = 0;

    // Stores k, v of each token at slot positions[t] % capacity.   k [T, n_kv_heads, head_dim]
    // A kTq4 cache stores each head's vector encoded exactly as tq4_encode() does (ops/kv_tq4.h).
    virtual void kv_write(const KvLayerView& cache, std::span<const int64_t> positions,
                          const float* k, const float* v) = 0;

    // Causal (and, with params.window, sliding-window) softmax attention of each query against
    // the cache, which must already hold every key the queries see (kv_write first).
    // q [T, n_heads, head_dim], out [T, n_heads, v_head_dim]. Over a kTq4 cache: in the rotated
    // space as tq4_attend() computes it (q' = R q; scores scale * norm_k * q' . c_k; out = R^T
    // sum_j p_j norm_vj c_vj), with the same bounds, GQA and softcap.
    virtual void attention(const float* q, std::span<const int64_t> positions,
                           const KvLayerView& cache, const AttentionParams& params, float* out) = 0;

    // out[i] = gelu_tanh(gate[i]) * up[i]   (HF `gelu_pytorch_tanh`).   gate, up, out [n]; out
    // may be gate (in place).
    virtual void gelu_tanh_and_mul(const float* gate, const float* up, int64_t n, float* out) = 0;

    // out[i] = a[i] + b[i]; out may alias a or b.
    virtual void add(const float* a, const float* b, int64_t n, float* out) = 0;
    // x[i] *= s
    virtual void scale(float* x, int64_t n, float s) = 0;

    // logits [T, vocab] = x [T, D] · table^T, then softcap (0: none). A tied lm_head passes the
    // embedding table.
    virtual void logits(const float* x, int64_t rows, const Weight& lm_head, float softcap, float* out) = 0;

    // ---- Qwen3.5 (hybrid Gated DeltaNet + gated attention + MoE) --------------------------------

    // out[i] = silu(gate[i]) * up[i]   (SwiGLU).   gate, up, out [n]
    virtual void silu_and_mul(const float* gate, const float* up, int64_t n, float* out) = 0;
    // out[i] = x[i] * sigmoid(gate[i])   (Qwen3.5 attention output gate); out may alias x.
    virtual void sigmoid_mul(const float* x, const float* gate, int64_t n, float* out) = 0;
    // out[t, :] += sigmoid(gate[t]) * x[t, :]   (Qwen3.5 shared expert's scalar gate).   x, out [T, D]
    virtual void add_sigmoid_scaled(const float* x, const float* gate, int64_t rows, int64_t dim, float* out) = 0;
    // rope_neox on the first rotary_dim of each head's head_dim values, frequencies
    // theta^(-2j / rotary_dim); the rest pass through (HF partial_rotary_factor).
    virtual void rope_neox_partial(float* x, std::span<const int64_t> positions, int64_t n_heads,
                                   int64_t head_dim, int64_t rotary_dim, double theta) = 0;
    // out[r, :] = weight * rms_norm(x[r, :]) * silu(z[r, :])   (HF Qwen3_5MoeRMSNormGated; plain w).
    virtual void rms_norm_gated(const float* x, const float* z, const float* weight, int64_t rows, int64_t dim,
                                float eps, float* out) = 0;
    // Causal depthwise conv1d over time with state, then optional SiLU:
    // out[t, c] = act(sum_j w[c, j] * in[t - K + 1 + j, c]), where inputs before the batch come
    // from state.conv, which is then updated to the last K - 1 inputs.   x, out [T, C], w [C, K]
    virtual void conv1d_causal(const float* x, int64_t rows, const float* weight, const RecurrentLayerView& state,
                               bool silu, float* out) = 0;
    // One Gated DeltaNet core over T tokens, continuing state.state (HF Qwen3_5MoeGatedDeltaNet
    // between the conv and the gated norm, with torch_recurrent_gated_delta_rule /
    // torch_chunk_gated_delta_rule):
    //   q, k = l2norm(q), l2norm(k) (eps 1e-6);  q *= dk^-0.5
    //   beta = sigmoid(b);  g = a_neg * softplus(a + dt_bias)      (a_neg = -exp(A_log))
    //   per value head: S = exp(g_t) S;  S += k_t (beta_t (v_t - S^T k_t))^T;  o_t = S^T q_t
    // qkv [T, 2 * n_k_heads * dk + n_v_heads * dv] (q | k | v, the conv's output), a, b [T, n_v_heads],
    // a_neg, dt_bias [n_v_heads], out [T, n_v_heads, dv]
    virtual void gated_delta_rule(const float* qkv, const float* a, const float* b, const float* a_neg,
                                  const float* dt_bias, int64_t rows, const GatedDeltaParams& params,
                                  const RecurrentLayerView& state, float* out) = 0;
    // Router: probabilities = softmax over all n_experts of logits[t, :], then the top k of them
    // renormalised to sum 1 (HF Qwen3_5MoeTopKRouter). Ties go to the lower expert id.
    // logits [T, n_experts], ids, weights [T, k]. With shared_gate [T] (else null) each row gets
    // one more slot, k: expert n_experts with weight sigmoid(shared_gate[t]) — the gated shared
    // expert stacked after the routed ones, so that moe_experts runs it with them (ids, weights
    // [T, k + 1]).
    virtual void moe_route(const float* logits, int64_t rows, int64_t n_experts, int64_t k,
                           const float* shared_gate, int32_t* ids, float* weights) = 0;
    // out[t, :] += sum_j weights[t, j] * down_e(silu(gate_e x[t]) * up_e x[t]), e = ids[t, j]: the
    // sum in fp32 in j order from 0, then added to out (the residual stream).   x, out [T, d]
    virtual void moe_experts(const float* x, int64_t rows, const int32_t* ids, const float* weights, int64_t k,
                             const MoeExpertWeights& experts, float* out) = 0;
    // residual += x, then rms_norm_linear_blocks(residual, ...): a residual add and the next
    // block's pre-norm and projection (a backend may do the add, the norm and its quantisation
    // in one pass).
    virtual void add_rms_norm_linear_blocks(const float* x, float* residual,
                                            const float* norm_weight, int64_t rows, int64_t dim,
                                            float eps, float* normed, bool keep_normed,
                                            const Weight& w, std::span<const int64_t> widths,
                                            float* out);
    // gated = rms_norm_gated(x, z, weight) over rows * heads rows of head_dim, then out = gated
    // W^T over rows of heads * head_dim (Gated DeltaNet's output norm and projection). `gated`
    // is written only when keep_gated.
    virtual void rms_norm_gated_linear(const float* x, const float* z, const float* weight,
                                       int64_t rows, int64_t heads, int64_t head_dim, float eps,
                                       float* gated, bool keep_gated, const Weight& w, float* out);
    // rms_norm_linear_blocks(x, ..., w, widths, out), then conv1d_causal over out's first block
    // ([rows, widths[0]], widths[0] == state.conv_channels) into conv_out: the Gated DeltaNet's
    // in-projection and its conv (a backend may apply the conv in the projection's epilogue).
    virtual void rms_norm_linear_conv1d(const float* x, const float* norm_weight, int64_t rows,
                                        int64_t dim, float eps, float* normed, bool keep_normed,
                                        const Weight& w, std::span<const int64_t> widths,
                                        float* out, const float* conv_weight,
                                        const RecurrentLayerView& state, bool silu,
                                        float* conv_out);

    // ---- Gemma 4 ------------------------------------------------------------------------------------

    // In place, proportional RoPE (HF rope_type "proportional", Gemma 4 full layers): rope_neox
    // over the whole head, (x[j], x[j + D/2]) rotated by pos * theta^(-2j / D) (denominator D =
    // head_dim, not the rotated width), but only for j < rotary_pairs; the other pairs have
    // inv_freq 0 and pass through. rotary_pairs = head_dim / 2 is rope_neox.   x [T, n_heads, head_dim]
    virtual void rope_proportional(float* x, std::span<const int64_t> positions, int64_t n_heads,
                                   int64_t head_dim, int64_t rotary_pairs, double theta) = 0;

    // ---- fused ops (the CPU backend composes the simple ones) -----------------------------------

    // A layer's attention inputs in place, then into the cache: v = k if v_from_raw_k;
    // head_norm_rope(q, q_norm) and head_norm_rope(k, k_norm) with the rotary pairs; v =
    // rms_norm(v) if v_norm; kv_write(cache, positions, k, v).   q [T, n_heads, hd], k, v [T, n_kv, hd]
    virtual Status attention_inputs(float* q, float* k, float* v, const float* q_norm, const float* k_norm,
                                    std::span<const int64_t> positions, const AttentionInputsParams& params,
                                    const KvLayerView& cache);

    // residual = (residual + rms_norm(x, weight)) * scale   (Gemma 4: the post-FFN sandwich norm,
    // the residual add and the layer scalar).
    virtual void rms_norm_add_scale(const float* x, const float* weight, int64_t rows, int64_t dim, float eps,
                                    float scale, float* residual);

    // attention(q, positions, cache, params, attn_out), then out = linear(attn_out, w): the
    // attention block's output projection. `attn_out` is written only when keep_attn_out (a backend
    // may hand the attention's rows to its GEMV as quantised blocks without storing them).
    virtual void attention_linear(const float* q, std::span<const int64_t> positions,
                                  const KvLayerView& cache, const AttentionParams& params,
                                  float* attn_out, bool keep_attn_out, const Weight& w, float* out);

    // attention_inputs(q, k, v, ...), then attention_linear(q, ...): a layer's attention from its
    // raw projections to the output projection. Afterwards q, k and v hold what attention_inputs
    // leaves in them when keep_attn_out, and unspecified values otherwise (a backend may
    // normalise and rotate the rows inside its attention without storing them).
    virtual Status attention_inputs_linear(float* q, float* k, float* v, const float* q_norm,
                                           const float* k_norm, std::span<const int64_t> positions,
                                           const AttentionInputsParams& inputs,
                                           const KvLayerView& cache, const AttentionParams& params,
                                           float* attn_out, bool keep_attn_out, const Weight& w,
                                           float* out);

    // The seam between two blocks of a sandwich-norm decoder: rms_norm_add_scale(x,
    // post_norm_weight, scale, residual) finishes one block (scale 1, or Gemma 4's layer scalar),
    // then rms_norm_linear_blocks(residual, pre_norm_weight, ..., w, widths, out) starts the next.
    // A backend may do the residual update and the next norm's quantisation in one pass. x must
    // be the output of the finished block's last linear, the op called right before this one,
    // and residual not written since the op before that: a backend may read residual while that
    // linear still runs (CudaOps does, cuda/fused_ffn.h ResidualRead).
    virtual void residual_norm_linear_blocks(const float* x, const float* post_norm_weight,
                                             float scale, float* residual,
                                             const float* pre_norm_weight, int64_t rows,
                                             int64_t dim, float eps, float* normed,
                                             bool keep_normed, const Weight& w,
                                             std::span<const int64_t> widths, float* out);

    // act = gelu_tanh(gate) * up [rows, dim], then out = act W^T: the feed-forward's end. `act` is
    // written only when keep_act (a backend may quantise it for its GEMV without storing it); it
    // may be gate.
    virtual void gelu_tanh_and_mul_linear(const float* gate, const float* up, int64_t rows, int64_t dim, float* act,
                                          bool keep_act, const Weight& w, float* out);

    // residual[r, :] += rms_norm(x[r, :], weight)   (Gemma's sandwich: post-norm, then add)
    virtual void rms_norm_add(const float* x, const float* weight, int64_t rows, int64_t dim,
                              float eps, float* residual) = 0;

    // Per-head rms_norm with `weight` [head_dim] then RoPE of the pairs j < rotary_pairs
    // (rope_proportional; rotary_pairs = head_dim / 2 is rope_neox), in place (QK-norm before
    // RoPE: Gemma 3, Gemma 4).   x [T, n_heads, head_dim]
    virtual void head_norm_rope(float* x, const float* weight, std::span<const int64_t> positions,
                                int64_t n_heads, int64_t head_dim, int64_t rotary_pairs, float eps, double theta) = 0;
};

// The reference backend. threads <= 0: std::thread::hardware_concurrency().
std::unique_ptr<Ops> make_cpu_ops(int threads = 0);

// The CUDA backend on device 0 (ops/cuda/cuda_ops.cpp); kUnsupported in a build without CUDA or
// on a machine without a CUDA device.
Result<std::unique_ptr<Ops>> make_cuda_ops();

}  // namespace kestrel
