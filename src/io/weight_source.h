// One view over the tensors of a model, whether they sit in a GGUF file or in a Hugging Face
// folder of safetensors shards: name -> dtype, shape, bytes.
//
// Shapes are row-major, outermost dimension first (PyTorch order). GGUF stores ggml's `ne`
// (fastest dimension first) over the same memory layout, so a GGUF shape is `ne` reversed: a
// linear weight is [out, in] from both sources and its bytes are laid out identically.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "kestrel/status.h"

namespace kestrel {

struct WeightInfo {
    std::string name;            // as the file spells it: "blk.0.attn_q.weight" or HF's name
    DType dtype;
    std::vector<int64_t> shape;  // row-major, outermost first
    int64_t n_elements;
    int64_t n_bytes;
};

class WeightSource {
public:
    virtual ~WeightSource() = default;

    // "GGUF file /path/x.gguf" or "Hugging Face folder /path/dir", for messages.
    virtual std::string description() const = 0;
    virtual std::span<const WeightInfo> tensors() const = 0;
    // The bytes of a tensor this source listed, valid as long as the source lives.
    virtual std::span<const uint8_t> bytes(const WeightInfo& tensor) const = 0;

    const WeightInfo* find(std::string_view name) const;
};

// Every element of a tensor as float32, dequantising block types. Fails with
// "unsupported type T in tensor N" for a type we cannot dequantise.
Result<std::vector<float>> read_tensor_f32(const WeightSource& source, const WeightInfo& tensor);
Result<std::vector<float>> read_tensor_f32(const WeightSource& source, std::string_view name);

}  // namespace kestrel
