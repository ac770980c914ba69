#include "models/weight_reader.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>

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

Result<EngineWeights> WeightReader::convert(const std::string& full, int64_t out, int64_t in) {
    const WeightInfo* info = find(full);
    if (info == nullptr) {
        return Status(StatusCode::kNotFound, fmt::format("{}: tensor '{}' not found", files_.weights->description(), full));
    }
    if (info->shape != std::vector<int64_t>{out, in}) {
        return Status(StatusCode::kCorruptFile,
                      fmt::format("{}: tensor '{}' has shape [{}], expected [{}, {}]", files_.weights->description(),
                                  full, fmt::join(info->shape, ", "), out, in));
    }
    // --weights applies to float matrices; quantised types keep their nearest engine format
    // (Q5_K, Q6_K, Q8_0 -> W8: requantising them to 4 bits would lose what the file kept).
    const bool float_source = info->dtype == DType::kF32 || info->dtype == DType::kF16 || info->dtype == DType::kBF16;
    EngineWeightFormat preferred = EngineWeightFormat::kW8;
    if (float_source) {
        preferred = options_.float_weights == WeightFormat::kBF16 ? EngineWeightFormat::kBf16
                    : options_.float_weights == WeightFormat::kW8 ? EngineWeightFormat::kW8
                                                                   : EngineWeightFormat::kW4;
    }
    Result<EngineWeights> converted = convert_for_engine(info->dtype, files_.weights->bytes(*info), out, in, preferred);
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

Result<Weight> WeightReader::read_matrix_stack(std::span<const TensorName> names, int64_t layer,
                                               std::span<const int64_t> outs, int64_t in) {
    int64_t total = 0;
    for (int64_t out : outs) total += out;
    const bool fp32_backend = ops_->accepts(WeightFormat::kF32);
    if (options_.dummy) {
        return ops_->random_weight(fp32_backend ? WeightFormat::kF32 : options_.float_weights, total, in,
                                   seed_of(name_of(names[0], layer)));
    }
    if (fp32_backend) {
        std::vector<float> stacked;
        stacked.reserve(static_cast<size_t>(total * in));
        for (size_t i = 0; i < names.size(); ++i) {
            const std::string full = name_of(names[i], layer);
            KESTREL_ASSIGN_OR_RETURN(std::vector<float> part, read(full, {outs[i], in}));
            note_progress(find(full)->n_bytes);
            stacked.insert(stacked.end(), part.begin(), part.end());
        }
        return upload_f32(stacked, total, in);
    }
    std::vector<EngineWeights> parts;
    bool any_w8 = false, any_bf16 = false;
    for (size_t i = 0; i < names.size(); ++i) {
        KESTREL_ASSIGN_OR_RETURN(EngineWeights part, convert(name_of(names[i], layer), outs[i], in));
        any_w8 |= std::holds_alternative<W8Weights>(part);
        any_bf16 |= std::holds_alternative<Bf16Weights>(part);
        parts.push_back(std::move(part));
    }
    if (any_bf16) {
        Bf16Weights stacked{total, in, {}};
        for (const EngineWeights& part : parts) {
            const Bf16Weights rounded = round_to_bf16(part);
            stacked.values.insert(stacked.values.end(), rounded.values.begin(), rounded.values.end());
        }
        return upload_engine_weights(*ops_, EngineWeights(std::move(stacked)), total, in);
    }
    if (any_w8) {
        W8Weights stacked;
        stacked.n = total;
        stacked.k = in;
        for (const EngineWeights& part : parts) {
            const W8Weights w8 = std::holds_alternative<W8Weights>(part) ? std::get<W8Weights>(part)
                                                                          : w8_from_w4(std::get<W4Weights>(part));
            stacked.qs.insert(stacked.qs.end(), w8.qs.begin(), w8.qs.end());
            stacked.scale_min.insert(stacked.scale_min.end(), w8.scale_min.begin(), w8.scale_min.end());
        }
        return upload_engine_weights(*ops_, EngineWeights(std::move(stacked)), total, in);
    }
    W4Weights stacked;
    stacked.n = total;
    stacked.k = in;
    for (const EngineWeights& part : parts) {
        const W4Weights& w4 = std::get<W4Weights>(part);
        stacked.qs.insert(stacked.qs.end(), w4.qs.begin(), w4.qs.end());
        stacked.group_scales.insert(stacked.group_scales.end(), w4.group_scales.begin(),
                                    w4.group_scales.end());
        stacked.super_scales.insert(stacked.super_scales.end(), w4.super_scales.begin(),
                                    w4.super_scales.end());
    }
    return upload_engine_weights(*ops_, EngineWeights(std::move(stacked)), total, in);
}

Result<Weight> WeightReader::read_matrix(const TensorName& name, int64_t layer, int64_t out, int64_t in) {
    const std::string full = name_of(name, layer);
    const bool fp32_backend = ops_->accepts(WeightFormat::kF32);
    if (options_.dummy) {
        return ops_->random_weight(fp32_backend ? WeightFormat::kF32 : options_.float_weights, out, in, seed_of(full));
    }
    if (fp32_backend) {
        KESTREL_ASSIGN_OR_RETURN(std::vector<float> data, read(full, {out, in}));
        note_progress(find(full)->n_bytes);
        return upload_f32(data, out, in);
    }
    // Used in place: moving the variant out of the Result trips GCC 13's maybe-uninitialized.
    const Result<EngineWeights> converted = convert(full, out, in);
    if (!converted.ok()) return converted.status();
    return upload_engine_weights(*ops_, *converted, out, in);
}

}  // namespace kestrel
