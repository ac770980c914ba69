#include "io/gguf_source.h"

#include <algorithm>

namespace kestrel {

GgufSource::GgufSource(std::shared_ptr<const GgufFile> file) : file_(std::move(file)) {
    tensors_.reserve(file_->tensors().size());
    for (const GgufTensorInfo& tensor : file_->tensors()) {
        std::vector<int64_t> shape(tensor.ne.rbegin(), tensor.ne.rend());  // ggml ne -> row-major
        tensors_.push_back({tensor.name, tensor.type, std::move(shape), tensor.n_elements, tensor.n_bytes});
    }
}

std::string GgufSource::description() const { return "GGUF file " + file_->display_name(); }

std::span<const uint8_t> GgufSource::bytes(const WeightInfo& tensor) const {
    const size_t index = static_cast<size_t>(&tensor - tensors_.data());
    return file_->tensor_data(file_->tensors()[index]);
}

}  // namespace kestrel
