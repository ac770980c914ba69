// Writes GGUF v3 files: fixtures, synthetic full-size models, converted checkpoints. The output
// is what our reader and llama.cpp's both accept (round-trip tested in gguf_writer_test.cpp).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "io/gguf.h"

namespace kestrel {

// Value builders, so metadata reads like `writer.set("gemma3.block_count", gguf_u32(18))`.
inline GgufValue gguf_u32(uint32_t v) { return GgufValue{v}; }
inline GgufValue gguf_i32(int32_t v) { return GgufValue{v}; }
inline GgufValue gguf_u64(uint64_t v) { return GgufValue{v}; }
inline GgufValue gguf_f32(float v) { return GgufValue{v}; }
inline GgufValue gguf_bool(bool v) { return GgufValue{v}; }
inline GgufValue gguf_string(std::string v) { return GgufValue{std::move(v)}; }
GgufValue gguf_array(GgufValueType element_type, std::vector<GgufValue> elements);
GgufValue gguf_string_array(const std::vector<std::string>& values);
GgufValue gguf_f32_array(const std::vector<float>& values);
GgufValue gguf_i32_array(const std::vector<int32_t>& values);
GgufValue gguf_u32_array(const std::vector<uint32_t>& values);
GgufValue gguf_bool_array(const std::vector<bool>& values);

class GgufWriter {
public:
    // Fills a tensor's bytes at write time, so a multi-GB synthetic model never sits in memory whole.
    using FillBytes = std::function<Status(std::span<uint8_t> out)>;

    explicit GgufWriter(uint32_t alignment = GgufFile::kDefaultAlignment);

    // Adds or replaces a metadata key; keys keep the order they were first set in.
    void set(const std::string& key, GgufValue value);

    // `ne` in ggml order (fastest dimension first). Fails on a duplicate name, a row length that
    // is not a whole number of blocks, or `bytes` of the wrong size.
    Status add_tensor(std::string name, DType type, std::vector<int64_t> ne, std::vector<uint8_t> bytes);
    Status add_tensor(std::string name, DType type, std::vector<int64_t> ne, FillBytes fill);

    // The whole file in memory (small files: tests, fuzz seeds).
    Result<std::vector<uint8_t>> to_bytes() const;
    // Writes `path` through a temporary file renamed into place, so a failed write leaves no
    // half-written model behind.
    Status write(const std::filesystem::path& path) const;

private:
    struct PendingTensor {
        std::string name;
        DType type;
        std::vector<int64_t> ne;
        int64_t n_bytes;
        uint64_t offset;
        std::vector<uint8_t> bytes;  // empty when `fill` provides them
        FillBytes fill;
    };

    Status add_tensor_info(std::string name, DType type, std::vector<int64_t> ne, PendingTensor& out);
    std::vector<uint8_t> header_bytes() const;  // up to and including the padding before the data

    uint32_t alignment_;
    std::vector<GgufKeyValue> metadata_;
    std::vector<PendingTensor> tensors_;
    uint64_t data_size_ = 0;
};

}  // namespace kestrel
