// The parts of the Ops seam every backend shares: weight upload, the forward workspace, and the
// host-side random weights of synthetic models.
#include "ops/ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

namespace kestrel {

const char* weight_format_name(WeightFormat format) {
    switch (format) {
        case WeightFormat::kF32: return "f32";
        case WeightFormat::kBF16: return "bf16";
        case WeightFormat::kW8: return "w8";
        case WeightFormat::kW4: return "w4";
    }
    return "?";
}

Weight weight_rows(const Weight& w, int64_t begin, int64_t rows) {
    Weight slice;
    slice.format = w.format;
    slice.out = rows;
    slice.in = w.in;
    const auto* data = static_cast<const uint8_t*>(w.data.data());
    const auto* scales = static_cast<const uint8_t*>(w.scales.data());
    const int64_t groups = w.in / 32;
    switch (w.format) {
        case WeightFormat::kF32:
            slice.data = Buffer::view(data + begin * w.in * 4, static_cast<size_t>(rows * w.in * 4));
            break;
        case WeightFormat::kBF16:
            slice.data = Buffer::view(data + begin * w.in * 2, static_cast<size_t>(rows * w.in * 2));
            break;
        case WeightFormat::kW8:
            slice.data = Buffer::view(data + begin * w.in, static_cast<size_t>(rows * w.in));
            slice.scales = Buffer::view(scales + begin * groups * 4, static_cast<size_t>(rows * groups * 4));
            break;
        case WeightFormat::kW4: {
            const int64_t supers = (groups + 7) / 8;
            const auto* super_scales = static_cast<const uint8_t*>(w.super_scales.data());
            slice.data = Buffer::view(data + begin * w.in / 2, static_cast<size_t>(rows * w.in / 2));
            slice.scales =
                Buffer::view(scales + begin * groups * 2, static_cast<size_t>(rows * groups * 2));
            slice.super_scales = Buffer::view(super_scales + begin * supers * 4,
                                              static_cast<size_t>(rows * supers * 4));
            break;
        }
    }
    return slice;
}

void Ops::linear_blocks(const float* x, int64_t rows, const Weight& w, std::span<const int64_t> widths, float* out) {
    int64_t begin = 0;
    for (const int64_t width : widths) {
        linear(x, rows, weight_rows(w, begin, width), out + rows * begin);
        begin += width;
    }
}

void Ops::rms_norm_linear_blocks(const float* x, const float* norm_weight, int64_t rows, int64_t dim, float eps,
                                float* normed, bool keep_normed, const Weight& w, std::span<const int64_t> widths,
                                float* out) {
    (void)keep_normed;
    rms_norm(x, norm_weight, rows, dim, eps, normed);
    linear_blocks(normed, rows, w, widths, out);
}

Status Ops::attention_inputs(float* q, float* k, float* v, const float* q_norm, const float* k_norm,
                             std::span<const int64_t> positions, const AttentionInputsParams& p,
                             const KvLayerView& cache) {
    const auto tokens = static_cast<int64_t>(positions.size());
    if (p.v_from_raw_k) {
        KESTREL_RETURN_IF_ERROR(copy_within(v, k, static_cast<size_t>(tokens * p.n_kv_heads * p.head_dim) * sizeof(float)));
    }
    if (p.partial_rotary_dim > 0) {  // Qwen3.5: QK-norm, then partial rotate-half RoPE
        rms_norm(q, q_norm, tokens * p.n_heads, p.head_dim, p.eps, q);
        rms_norm(k, k_norm, tokens * p.n_kv_heads, p.head_dim, p.eps, k);
        rope_neox_partial(q, positions, p.n_heads, p.head_dim, p.partial_rotary_dim, p.theta);
        rope_neox_partial(k, positions, p.n_kv_heads, p.head_dim, p.partial_rotary_dim, p.theta);
    } else {
        head_norm_rope(q, q_norm, positions, p.n_heads, p.head_dim, p.rotary_pairs, p.eps, p.theta);
        head_norm_rope(k, k_norm, positions, p.n_kv_heads, p.head_dim, p.rotary_pairs, p.eps,
                       p.theta);
    }
    if (p.v_norm) rms_norm(v, nullptr, tokens * p.n_kv_heads, p.head_dim, p.eps, v);
    kv_write(cache, positions, k, v);
    return ok_status();
}

void Ops::rms_norm_add_scale(const float* x, const float* weight, int64_t rows, int64_t dim, float eps, float s,
                             float* residual) {
    rms_norm_add(x, weight, rows, dim, eps, residual);
    scale(residual, rows * dim, s);
}

void Ops::attention_linear(const float* q, std::span<const int64_t> positions,
                           const KvLayerView& cache, const AttentionParams& params, float* attn_out,
                           bool keep_attn_out, const Weight& w, float* out) {
    (void)keep_attn_out;
    attention(q, positions, cache, params, attn_out);
    linear(attn_out, static_cast<int64_t>(positions.size()), w, out);
}

Status Ops::attention_inputs_linear(float* q, float* k, float* v, const float* q_norm,
                                    const float* k_norm, std::span<const int64_t> positions,
                                    const AttentionInputsParams& inputs, const KvLayerView& cache,
                                    const AttentionParams& params, float* attn_out,
                                    bool keep_attn_out, const Weight& w, float* out) {
    KESTREL_RETURN_IF_ERROR(attention_inputs(q, k, v, q_norm, k_norm, positions, inputs, cache));
    attention_linear(q, positions, cache, params, attn_out, keep_attn_out, w, out);
    return ok_status();
}

void Ops::residual_norm_linear_blocks(const float* x, const float* post_norm_weight, float scale_by,
                                      float* residual, const float* pre_norm_weight, int64_t rows,
                                      int64_t dim, float eps, float* normed, bool keep_normed,
                                      const Weight& w, std::span<const int64_t> widths,
                                      float* out) {
    rms_norm_add_scale(x, post_norm_weight, rows, dim, eps, scale_by, residual);
    rms_norm_linear_blocks(residual, pre_norm_weight, rows, dim, eps, normed, keep_normed, w,
                           widths, out);
}

void Ops::add_rms_norm_linear_blocks(const float* x, float* residual, const float* norm_weight,
                                     int64_t rows, int64_t dim, float eps, float* normed,
                                     bool keep_normed, const Weight& w,
                                     std::span<const int64_t> widths, float* out) {
    add(residual, x, rows * dim, residual);
    rms_norm_linear_blocks(residual, norm_weight, rows, dim, eps, normed, keep_normed, w, widths,
                           out);
}

void Ops::rms_norm_gated_linear(const float* x, const float* z, const float* weight, int64_t rows,
                                int64_t heads, int64_t head_dim, float eps, float* gated,
                                bool keep_gated, const Weight& w, float* out) {
    (void)keep_gated;
    rms_norm_gated(x, z, weight, rows * heads, head_dim, eps, gated);
    linear(gated, rows, w, out);
}

void Ops::rms_norm_linear_conv1d(const float* x, const float* norm_weight, int64_t rows,
                                 int64_t dim, float eps, float* normed, bool keep_normed,
                                 const Weight& w, std::span<const int64_t> widths, float* out,
                                 const float* conv_weight, const RecurrentLayerView& state,
                                 bool silu, float* conv_out) {
    rms_norm_linear_blocks(x, norm_weight, rows, dim, eps, normed, keep_normed, w, widths, out);
    conv1d_causal(out, rows, conv_weight, state, silu, conv_out);
}

void Ops::gelu_tanh_and_mul_linear(const float* gate, const float* up, int64_t rows, int64_t dim, float* act,
                                   bool keep_act, const Weight& w, float* out) {
    (void)keep_act;
    gelu_tanh_and_mul(gate, up, rows * dim, act);
    linear(act, rows, w, out);
}

Result<float*> Workspace::floats(int64_t n) {
    constexpr size_t kAlign = 256;
    // Blocks of at least 16 MiB, so that the small buffers of a forward share a few; a larger
    // buffer gets a block of its own size. (Growing each block to the last one's size wasted a
    // quarter of the workspace: Gemma 4 31B's [T, 21504] activation got a [T, 43008] block.)
    constexpr size_t kMinBlock = size_t{16} << 20;
    const size_t bytes = (static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(float) + kAlign - 1) / kAlign * kAlign;
    while (block_ < blocks_.size() && used_ + bytes > blocks_[block_].bytes()) {
        ++block_;  // the rest of this block stays unused this forward; the next forward reuses it
        used_ = 0;
    }
    if (block_ == blocks_.size()) {
        KESTREL_ASSIGN_OR_RETURN(Buffer block, ops_.allocate(std::max(bytes, kMinBlock)));
        blocks_.push_back(std::move(block));
        used_ = 0;
    }
    float* out = reinterpret_cast<float*>(static_cast<char*>(blocks_[block_].data()) + used_);
    used_ += bytes;
    return out;
}

int64_t Workspace::bytes_reserved() const {
    int64_t total = 0;
    for (const Buffer& block : blocks_) total += static_cast<int64_t>(block.bytes());
    return total;
}

Result<Weight> Ops::upload(WeightFormat format, int64_t out, int64_t in,
                           std::span<const uint8_t> data, std::span<const uint8_t> scales,
                           std::span<const uint8_t> super_scales) {
    Weight w;
    w.format = format;
    w.out = out;
    w.in = in;
    KESTREL_ASSIGN_OR_RETURN(w.data, allocate(data.size()));
    KESTREL_RETURN_IF_ERROR(copy_to_backend(w.data.data(), data.data(), data.size()));
    if (!scales.empty()) {
        KESTREL_ASSIGN_OR_RETURN(w.scales, allocate(scales.size()));
        KESTREL_RETURN_IF_ERROR(copy_to_backend(w.scales.data(), scales.data(), scales.size()));
    }
    if (!super_scales.empty()) {
        KESTREL_ASSIGN_OR_RETURN(w.super_scales, allocate(super_scales.size()));
        KESTREL_RETURN_IF_ERROR(
            copy_to_backend(w.super_scales.data(), super_scales.data(), super_scales.size()));
    }
    return w;
}

// fp32 weights ~ uniform with standard deviation in^-1/2 (a linear layer that keeps the scale
// of its input), from a splitmix64 stream: reproducible for a seed on every machine.
Result<Weight> Ops::random_weight(WeightFormat format, int64_t out, int64_t in, uint64_t seed) {
    if (format != WeightFormat::kF32) {
        return Status(StatusCode::kUnsupported,
                      fmt::format("the {} backend makes no random {} weights", name(), weight_format_name(format)));
    }
    std::vector<float> host(static_cast<size_t>(out * in));
    uint64_t state = seed;
    const float amplitude = std::sqrt(3.0f / static_cast<float>(std::max<int64_t>(in, 1)));
    for (float& w : host) {
        state += 0x9E3779B97F4A7C15ull;
        uint64_t z = state;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        const float unit = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);  // [0, 1)
        w = amplitude * (2.0f * unit - 1.0f);
    }
    return upload(WeightFormat::kF32, out, in,
                  std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(host.data()), host.size() * sizeof(float)));
}

}  // namespace kestrel
