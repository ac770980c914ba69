#include "models/weight_reader.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>

namespace kestrel {

WeightReader::WeightReader(const ModelFiles& files) : files_(files) {
    if (gguf()) return;
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
    if (gguf()) return 0;
    int64_t outside = 0;
    for (const WeightInfo& tensor : files_.weights->tensors()) {
        if (!tensor.name.starts_with(hf_prefix_) && tensor.name != kHfLmHead) ++outside;
    }
    return outside;
}

Result<std::vector<float>> WeightReader::read(const std::string& full, const std::vector<int64_t>& shape) const {
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
    if (gguf()) return data;
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

}  // namespace kestrel
