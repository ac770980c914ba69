// Every tensor the engine loads for a model, derived from its ModelConfig alone: names as
// llama.cpp's GGUF files spell them, row-major shapes (outermost first: a GGUF `ne` reversed).
// With ShapeOnlySource this lets `kestrel info` count parameters and plan memory for a model
// whose weights are not here (the full-size targets, or a config.json without safetensors).
#pragma once

#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "io/weight_source.h"
#include "models/model_config.h"

namespace kestrel {

// gemma3, gemma4 and qwen35moe (empty for any other architecture). Matrices (2-D and 3-D
// tensors llama.cpp quantises) are `matrix_type`; a block type whose block does not divide a
// row falls back as llama-quant does, to Q4_0 (types of at most 4.5 bits/weight) or Q8_0. Norms,
// scalars and the small tensors llama.cpp keeps in F32 (router, shared-expert gate, conv1d,
// ssm_a, ssm_dt) are F32 when `matrix_type` is a block type, else `matrix_type` for 2-D ones.
// Embeddings are tied for Gemma (no output.weight) and untied for Qwen3.5; Qwen3.5's MTP block
// is not listed (the engine does not load it).
std::vector<WeightInfo> model_tensor_shapes(const ModelConfig& config, DType matrix_type);

// A WeightInfo with n_elements and n_bytes filled in from the shape and dtype.
WeightInfo make_weight_info(std::string name, DType dtype, std::vector<int64_t> shape);

// A WeightSource that lists tensors and holds no bytes.
class ShapeOnlySource : public WeightSource {
public:
    ShapeOnlySource(std::string name, std::vector<WeightInfo> tensors)
        : name_(std::move(name)), tensors_(std::move(tensors)) {}

    std::string description() const override { return "synthetic " + name_; }
    std::span<const WeightInfo> tensors() const override { return tensors_; }
    std::span<const uint8_t> bytes(const WeightInfo&) const override { return {}; }

private:
    std::string name_;
    std::vector<WeightInfo> tensors_;
};

}  // namespace kestrel
