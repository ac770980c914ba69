#include "models/weight_reader.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <variant>

#include "core/half.h"
#include "core/log.h"
#include "ops/weight_format_w8.h"

namespace kestrel {

WeightReader::WeightReader(const ModelFiles& files, Ops& ops, const WeightLoadOptions& options)
    : WeightReader(files) {
    ops_ = &ops;
    options_ = options;
    if (files_.weights != nullptr) {
        for (const WeightInfo& tensor : files_.weights->tensors()) total_bytes_ += tensor.n_bytes;
    }
}

WeightReader::WeightReader(const ModelFiles& files) : files_(files) {
    if (gguf() || files.weights == nullptr) return;
    for (std::string_view prefix : {"model.language_model.", "model.", "language_model.model."}) {
        if (files.weights->find(fmt::format("{}embed_tokens.weight", prefix)) != nullptr) {
            hf_prefix_ = prefix;
            break;
        }
    }
}

std::string WeightReader::name_of(const TensorName& name, int64_t layer) const {
    if (gguf()) return fmt::format(fmt::runtime(name.gguf), layer);
    if (name.hf == kHfLmHead) return std::string(kHfLmHead);
    return hf_prefix_ + fmt::format(fmt::runtime(name.hf), layer);
}

int64_t WeightReader::count_outside_text_model() const {
    if (gguf() || files_.weights == nullptr) return 0;
    int64_t outside = 0;
    for (const WeightInfo& tensor : files_.weights->tensors()) {
        if (!tensor.name.starts_with(hf_prefix_) && tensor.name != kHfLmHead) ++outside;
    }
    return outside;
}

Result<std::vector<float>> WeightReader::read(const std::string& full, const std::vector<int64_t>& shape) const {
    if (options_.dummy) {
        // Synthetic vectors: norm weights near 1 (every Gemma/Qwen norm multiplies by its stored
        // weight), decays of Gated DeltaNet negative so the recurrence stays bounded.
        int64_t count = 1;
        for (int64_t n : shape) count *= n;
        std::vector<float> data(static_cast<size_t>(count));
        uint64_t state = seed_of(full);
        const bool decay = full.ends_with("ssm_a");
        for (float& value : data) {
            state = state * 6364136223846793005ull + 1442695040888963407ull;
            const float unit = static_cast<float>(state >> 40) * (1.0f / 16777216.0f);
            value = decay ? -(0.5f + unit) : 1.0f + 0.1f * (unit - 0.5f);
        }
        return data;
    }
    const WeightInfo* info = files_.weights->find(full);
    if (info == nullptr) {
        return Status(StatusCode::kNotFound, fmt::format("{}: tensor '{}' not found", files_.weights->description(), full));
    }
    int64_t count = 1;
    for (int64_t n : shape) count *= n;
    std::vector<int64_t> squeezed;
    for (int64_t n : info->shape) {
        if (n != 1 || info->shape.size() <= shape.size()) squeezed.push_back(n);
    }
    if (info->n_elements != count || squeezed != shape) {
        return Status(StatusCode::kCorruptFile,
                      fmt::format("{}: tensor '{}' has shape [{}], expected [{}]", files_.weights->description(), full,
                                  fmt::join(info->shape, ", "), fmt::join(shape, ", ")));
    }
    return read_tensor_f32(*files_.weights, *info);
}

Result<std::vector<float>> WeightReader::read(const TensorName& name, int64_t layer,
                                              const std::vector<int64_t>& shape) const {
    KESTREL_ASSIGN_OR_RETURN(std::vector<float> data, read(name_of(name, layer), shape));
    if (gguf() || options_.dummy) return data;
    switch (name.hf_convert) {
        case HfConvert::kNone: break;
        case HfConvert::kAddOne:
            for (float& w : data) w += 1.0f;
            break;
        case HfConvert::kNegativeExp:
            for (float& w : data) w = -std::exp(w);
            break;
    }
    return data;
}

uint64_t WeightReader::seed_of(const std::string& full) const {
    uint64_t hash = 1469598103934665603ull ^ options_.dummy_seed;  // FNV-1a over the name
    for (char c : full) hash = (hash ^ static_cast<uint8_t>(c)) * 1099511628211ull;
    return hash;
}

void WeightReader::note_progress(int64_t bytes) {
    done_bytes_ += bytes;
    if (total_bytes_ < (int64_t{1} << 30)) return;  // smaller files load in a moment
    const int percent = static_cast<int>(100 * done_bytes_ / total_bytes_);
    if (percent < next_percent_) return;
    log_info("weights: {}% ({:.1f} of {:.1f} GB)", percent, static_cast<double>(done_bytes_) / 1e9,
             static_cast<double>(total_bytes_) / 1e9);
    next_percent_ = (percent / 10 + 1) * 10;
}

Result<Weight> WeightReader::upload_f32(const std::vector<float>& data, int64_t out, int64_t in) {
    return ops_->upload(WeightFormat::kF32, out, in,
                        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data.data()),
                                                 data.size() * sizeof(float)));
}

Result<Weight> WeightReader::read_vector(const TensorName& name, int64_t layer, const std::vector<int64_t>& shape) {
    KESTREL_ASSIGN_OR_RETURN(std::vector<float> data, read(name, layer, shape));
    if (const WeightInfo* info = find(name, layer); info != nullptr) note_progress(info->n_bytes);
    return upload_f32(data, static_cast<int64_t>(data.size()), 1);
}

Result<EngineWeights> WeightReader::convert(const MatrixPart& part, MatrixPrecision precision) {
    const WeightInfo* info = find(part.full);
    if (info == nullptr) {
        return Status(StatusCode::kNotFound, fmt::format("{}: tensor '{}' not found",
                                                         files_.weights->description(), part.full));
    }
    if (info->shape != part.shape) {
        return Status(StatusCode::kCorruptFile,
                      fmt::format("{}: tensor '{}' has shape [{}], expected [{}]",
                                  files_.weights->description(), part.full,
                                  fmt::join(info->shape, ", "), fmt::join(part.shape, ", ")));
    }
    const int64_t in = part.shape.back();
    const int64_t out = info->n_elements / std::max<int64_t>(in, 1);
    if (in % kW8Group != 0) {
        // W4 and W8 quantise groups of 32 along a row; a row of another length (the tiny Qwen3.5
        // fixture's shared expert, 48 wide) stays bf16, which the GEMM path takes at any width.
        if (!noted_bf16_columns_) {
            log_info("weights: '{}' has rows of {} (not a multiple of {}): held as bf16", part.full,
                     in, kW8Group);
            noted_bf16_columns_ = true;
        }
        KESTREL_ASSIGN_OR_RETURN(std::vector<float> values,
                                 read_tensor_f32(*files_.weights, *info));
        Bf16Weights bf16{out, in, {}};
        bf16.values.reserve(values.size());
        for (float v : values) bf16.values.push_back(fp32_to_bf16(v));
        note_progress(info->n_bytes);
        return EngineWeights(std::move(bf16));
    }
    // --weights applies to float matrices; quantised types keep their nearest engine format
    // (Q5_K, Q6_K, Q8_0 -> W8: requantising them to 4 bits would lose what the file kept).
    const bool float_source = info->dtype == DType::kF32 || info->dtype == DType::kF16 || info->dtype == DType::kBF16;
    EngineWeightFormat preferred = EngineWeightFormat::kW8;
    if (float_source) {
        preferred = options_.float_weights == WeightFormat::kBF16 ? EngineWeightFormat::kBf16
                    : options_.float_weights == WeightFormat::kW8 ? EngineWeightFormat::kW8
                                                                   : EngineWeightFormat::kW4;
        if (precision == MatrixPrecision::kAtLeastW8 && preferred == EngineWeightFormat::kW4) {
            preferred = EngineWeightFormat::kW8;
        }
        if (precision == MatrixPrecision::kQuantised && preferred == EngineWeightFormat::kBf16) {
            if (!noted_w8_experts_) {
                log_info(
                    "weights: MoE expert stacks are held as W8 under --weights bf16 (the CUDA "
                    "expert kernels "
                    "read W4 and W8)");
                noted_w8_experts_ = true;
            }
            preferred = EngineWeightFormat::kW8;
        }
    }
    Result<EngineWeights> converted =
        convert_for_engine(info->dtype, files_.weights->bytes(*info), out, in, preferred);
    note_progress(info->n_bytes);
    return converted;
}

namespace {

std::span<const uint8_t> bytes_of(const auto& v) {
    return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(v[0]));
}

Result<Weight> upload_engine_weights(Ops& ops, const EngineWeights& converted, int64_t out, int64_t in) {
    if (const auto* w4 = std::get_if<W4Weights>(&converted)) {
        return ops.upload(WeightFormat::kW4, out, in, bytes_of(w4->qs), bytes_of(w4->group_scales),
                          bytes_of(w4->super_scales));
    }
    if (const auto* w8 = std::get_if<W8Weights>(&converted)) {
        return ops.upload(WeightFormat::kW8, out, in, bytes_of(w8->qs), bytes_of(w8->scale_min));
    }
    return ops.upload(WeightFormat::kBF16, out, in, bytes_of(std::get<Bf16Weights>(converted).values));
}

Bf16Weights round_to_bf16(const EngineWeights& weights) {
    if (const auto* bf16 = std::get_if<Bf16Weights>(&weights)) return *bf16;
    const std::vector<float> values = std::holds_alternative<W4Weights>(weights)
                                          ? w4_dequantize(std::get<W4Weights>(weights))
                                          : w8_dequantize(std::get<W8Weights>(weights));
    Bf16Weights out;
    std::visit([&](const auto& w) {
        out.n = w.n;
        out.k = w.k;
    }, weights);
    out.values.reserve(values.size());
    for (float v : values) out.values.push_back(fp32_to_bf16(v));
    return out;
}

}  // namespace

namespace {

// Bytes of one row of each array of a weight in an engine format, in the order the variant's
// vectors hold them (W4: qs, group_scales, super_scales; W8: qs, scale_min; bf16: values).
struct RowCopier {
    template <class T>
    static void rows(std::vector<T>& dst, const std::vector<T>& src, int64_t per_row, int64_t begin,
                     int64_t count) {
        dst.insert(dst.end(), src.begin() + begin * per_row,
                   src.begin() + (begin + count) * per_row);
    }
};

// parts[] all in one format (the caller widened them); rows gathered in `blocks` order.
EngineWeights gather_rows(const std::vector<EngineWeights>& parts, std::span<const RowBlock> blocks,
                          int64_t total, int64_t in) {
    if (std::holds_alternative<Bf16Weights>(parts[0])) {
        Bf16Weights out{total, in, {}};
        for (const RowBlock& b : blocks) {
            RowCopier::rows(out.values, std::get<Bf16Weights>(parts[b.part]).values, in, b.begin,
                            b.count);
        }
        return out;
    }
    if (std::holds_alternative<W8Weights>(parts[0])) {
        W8Weights out;
        out.n = total;
        out.k = in;
        for (const RowBlock& b : blocks) {
            const W8Weights& w = std::get<W8Weights>(parts[b.part]);
            RowCopier::rows(out.qs, w.qs, in, b.begin, b.count);
            RowCopier::rows(out.scale_min, w.scale_min, w.groups() * 2, b.begin, b.count);
        }
        return out;
    }
    W4Weights out;
    out.n = total;
    out.k = in;
    for (const RowBlock& b : blocks) {
        const W4Weights& w = std::get<W4Weights>(parts[b.part]);
        RowCopier::rows(out.qs, w.qs, in / 2, b.begin, b.count);
        RowCopier::rows(out.group_scales, w.group_scales, w.groups(), b.begin, b.count);
        RowCopier::rows(out.super_scales, w.super_scales, w.supers() * 2, b.begin, b.count);
    }
    return out;
}

}  // namespace

Result<Weight> WeightReader::read_rows(std::span<const MatrixPart> parts,
                                       std::span<const RowBlock> blocks, int64_t in,
                                       MatrixPrecision precision) {
    int64_t total = 0;
    for (const RowBlock& b : blocks) total += b.count;
    for (const MatrixPart& part : parts) {
        if (part.shape.empty() || part.shape.back() != in) {
            return Status(
                StatusCode::kInternal,
                fmt::format("read_rows: '{}' is not a matrix of {} columns", part.full, in));
        }
    }
    for (const RowBlock& b : blocks) {
        if (b.part >= parts.size())
            return Status(StatusCode::kInternal, "read_rows: a row block of no part");
        int64_t rows = 1;
        for (size_t i = 0; i + 1 < parts[b.part].shape.size(); ++i) rows *= parts[b.part].shape[i];
        if (b.begin < 0 || b.count < 0 || b.begin + b.count > rows) {
            return Status(StatusCode::kInternal, "read_rows: a row block outside its part");
        }
    }
    const bool fp32_backend = ops_->accepts(WeightFormat::kF32);
    if (options_.dummy) {
        WeightFormat format = fp32_backend ? WeightFormat::kF32 : options_.float_weights;
        if (!fp32_backend && precision == MatrixPrecision::kAtLeastW8 &&
            format == WeightFormat::kW4) {
            format = WeightFormat::kW8;
        }
        if (!fp32_backend && precision == MatrixPrecision::kQuantised &&
            format == WeightFormat::kBF16) {
            format = WeightFormat::kW8;
        }
        return ops_->random_weight(format, total, in, seed_of(parts[0].full));
    }
    if (fp32_backend) {
        std::vector<std::vector<float>> values;
        for (const MatrixPart& part : parts) {
            KESTREL_ASSIGN_OR_RETURN(std::vector<float> data, read(part.full, part.shape));
            note_progress(find(part.full)->n_bytes);
            values.push_back(std::move(data));
        }
        std::vector<float> stacked;
        stacked.reserve(static_cast<size_t>(total * in));
        for (const RowBlock& b : blocks) {
            const std::vector<float>& src = values[b.part];
            stacked.insert(stacked.end(), src.begin() + b.begin * in,
                           src.begin() + (b.begin + b.count) * in);
        }
        return upload_f32(stacked, total, in);
    }
    std::vector<EngineWeights> converted;
    bool any_w8 = false, any_bf16 = false;
    for (const MatrixPart& part : parts) {
        Result<EngineWeights> one = convert(part, precision);
        if (!one.ok()) return one.status();
        any_w8 |= std::holds_alternative<W8Weights>(*one);
        any_bf16 |= std::holds_alternative<Bf16Weights>(*one);
        converted.push_back(std::move(one).value());
    }
    // One format for the whole stack: the widest part's (W4 -> W8 is exact but for fp16
    // rounding of scale and min; anything -> bf16 rounds to bf16).
    for (EngineWeights& part : converted) {
        if (any_bf16) {
            part = round_to_bf16(part);
        } else if (any_w8 && std::holds_alternative<W4Weights>(part)) {
            part = w8_from_w4(std::get<W4Weights>(part));
        }
    }
    if (any_bf16 && precision == MatrixPrecision::kQuantised) {
        return Status(
            StatusCode::kUnsupported,
            fmt::format("{}: '{}' would be held as bf16, which the MoE expert kernels do not read",
                        files_.weights->description(), parts[0].full));
    }
    if (converted.size() == 1 && blocks.size() == 1 && blocks[0].begin == 0 &&
        blocks[0].count == total) {
        return upload_engine_weights(*ops_, converted[0], total, in);  // one whole matrix: no copy
    }
    return upload_engine_weights(*ops_, gather_rows(converted, blocks, total, in), total, in);
}

Result<Weight> WeightReader::read_matrix_stack(std::span<const TensorName> names, int64_t layer,
                                               std::span<const int64_t> outs, int64_t in,
                                               MatrixPrecision precision) {
    std::vector<MatrixPart> parts;
    std::vector<RowBlock> blocks;
    for (size_t i = 0; i < names.size(); ++i) {
        parts.push_back({name_of(names[i], layer), {outs[i], in}});
        blocks.push_back({i, 0, outs[i]});
    }
    return read_rows(parts, blocks, in, precision);
}

Result<Weight> WeightReader::read_matrix(const TensorName& name, int64_t layer, int64_t out,
                                         int64_t in) {
    const TensorName names[] = {name};
    const int64_t outs[] = {out};
    return read_matrix_stack(names, layer, outs, in);
}

}  // namespace kestrel
