// A reader for .safetensors files (https://github.com/huggingface/safetensors, "Format"):
//
//   u64 little-endian N | N bytes of JSON header | data region
//
// The header maps tensor name -> {"dtype", "shape", "data_offsets": [begin, end]}, offsets
// relative to the start of the data region, plus an optional "__metadata__" string -> string
// map. Shapes are row-major, outermost first, which is also WeightSource's order.
//
// The file is hostile until proven otherwise: every length, offset, shape and type is checked
// before any tensor byte is touched, and each failure is one line naming the file, the tensor
// and what was expected (kCorruptFile; kUnsupported for a well-formed dtype we do not read).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/dtype.h"
#include "core/mapped_file.h"
#include "kestrel/status.h"

namespace kestrel {

struct SafetensorsTensor {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;  // row-major, outermost first; [] is a scalar
    uint64_t offset;             // from the start of the data region
    int64_t n_elements;
    int64_t n_bytes;
};

class SafetensorsFile {
public:
    // The reference implementation's limit (safetensors/src/tensor.rs MAX_HEADER_SIZE): a
    // longer header is a corrupt length, not a real file.
    static constexpr uint64_t kMaxHeaderBytes = 100'000'000;

    // Maps and parses a file.
    static Result<SafetensorsFile> open(const std::filesystem::path& path);
    // Parses bytes held elsewhere (they must outlive the SafetensorsFile); `display_name`
    // stands for the file in messages.
    static Result<SafetensorsFile> parse(std::span<const uint8_t> bytes, std::string display_name);

    const std::string& display_name() const { return display_name_; }
    uint64_t data_offset() const { return data_offset_; }  // 8 + header length
    uint64_t file_size() const { return bytes_.size(); }

    // "__metadata__" (e.g. {"format": "pt"}); empty when the header has none.
    const std::map<std::string, std::string, std::less<>>& metadata() const { return metadata_; }

    // In data-region order (ascending offset), which is the order to read them in.
    const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
    const SafetensorsTensor* find_tensor(std::string_view name) const;
    // The tensor's bytes; `tensor` must come from this file's tensors().
    std::span<const uint8_t> tensor_data(const SafetensorsTensor& tensor) const;

private:
    std::shared_ptr<const MappedFile> mapping_;  // empty when parsing borrowed bytes
    std::span<const uint8_t> bytes_;
    std::string display_name_;
    uint64_t data_offset_ = 0;
    std::map<std::string, std::string, std::less<>> metadata_;
    std::vector<SafetensorsTensor> tensors_;
    std::map<std::string, size_t, std::less<>> by_name_;  // name -> index into tensors_

    friend class SafetensorsParser;
};

// The safetensors dtype string ("BF16") for a DType, or "" for one safetensors cannot hold.
std::string_view safetensors_dtype_name(DType dtype);


}  // namespace kestrel
