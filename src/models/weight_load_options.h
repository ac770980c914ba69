// How a model's weights reach the backend (models/weight_reader.h reads them).
#pragma once

#include <cstdint>

#include "ops/ops.h"

namespace kestrel {

struct WeightLoadOptions {
    // The engine format for matrices stored as F32/F16/BF16 (HF folders, f16 GGUFs) on a backend
    // that quantises (`--weights w4|w8|bf16`); quantised GGUF types convert to the nearest
    // engine format whatever this says (ops/weight_format_w8.h states the policy).
    WeightFormat float_weights = WeightFormat::kW4;
    // Synthetic weights of the right shapes, made by the backend (`--dummy`): no files are read.
    bool dummy = false;
    uint64_t dummy_seed = 1234;
};

}  // namespace kestrel
