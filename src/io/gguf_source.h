// The WeightSource over a GGUF file.
#pragma once

#include <memory>

#include "io/gguf.h"
#include "io/weight_source.h"

namespace kestrel {

class GgufSource : public WeightSource {
public:
    explicit GgufSource(std::shared_ptr<const GgufFile> file);

    std::string description() const override;
    std::span<const WeightInfo> tensors() const override { return tensors_; }
    std::span<const uint8_t> bytes(const WeightInfo& tensor) const override;

    const GgufFile& file() const { return *file_; }

private:
    std::shared_ptr<const GgufFile> file_;
    std::vector<WeightInfo> tensors_;  // same order as file_->tensors()
};

}  // namespace kestrel
