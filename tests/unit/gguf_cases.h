// Hand-assembled GGUF bytes for the reader's tests: one valid file and every kind of corruption
// the reader must refuse. Shared by the in-process tests, the CLI test (each case must exit 1
// with one line on stderr) and the fuzzer's seed corpus.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "kestrel/status.h"

namespace kestrel::testing {

// Little-endian byte assembly, independent of GgufWriter so the writer is tested too.
class GgufBytes {
public:
    GgufBytes& u8(uint8_t v) { return put(v); }
    GgufBytes& u32(uint32_t v) { return put(v); }
    GgufBytes& i32(int32_t v) { return put(v); }
    GgufBytes& u64(uint64_t v) { return put(v); }
    GgufBytes& f32(float v) { return put(v); }
    GgufBytes& str(std::string_view s) {
        u64(s.size());
        bytes.insert(bytes.end(), s.begin(), s.end());
        return *this;
    }
    GgufBytes& header(uint64_t tensor_count, uint64_t kv_count, uint32_t version = 3) {
        return u32(0x46554747).u32(version).u64(tensor_count).u64(kv_count);
    }
    // A key with a u32 value (type 4).
    GgufBytes& kv_u32(std::string_view key, uint32_t v) { return str(key).u32(4).u32(v); }
    GgufBytes& kv_string(std::string_view key, std::string_view v) { return str(key).u32(8).str(v); }
    // A tensor info: name, dims (ggml order), ggml type id, offset.
    GgufBytes& tensor(std::string_view name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
        str(name).u32(static_cast<uint32_t>(ne.size()));
        for (uint64_t d : ne) u64(d);
        return u32(type).u64(offset);
    }
    GgufBytes& pad_to(size_t alignment) {
        while (bytes.size() % alignment != 0) bytes.push_back(0);
        return *this;
    }
    GgufBytes& zeros(size_t n) {
        bytes.resize(bytes.size() + n, 0);
        return *this;
    }

    std::vector<uint8_t> bytes;

private:
    template <class T>
    GgufBytes& put(T v) {
        uint8_t raw[sizeof(T)];
        std::memcpy(raw, &v, sizeof(T));
        for (uint8_t byte : raw) bytes.push_back(byte);  // (insert trips a GCC 12 false -Wstringop-overflow)
        return *this;
    }
};

// A small valid file: architecture and a few keys, an F32 [4, 2] tensor and a Q8_0 [32] tensor.
std::vector<uint8_t> valid_gguf_bytes();
// Bytes the valid file needs: header, infos, padding and both tensors' data.
size_t valid_gguf_required_size();

struct CorruptCase {
    std::string name;            // a file-name-safe identifier
    std::vector<uint8_t> bytes;
    StatusCode code;             // what the reader must answer
    std::string message_part;    // a phrase the one-line message must contain
};

std::vector<CorruptCase> corrupt_gguf_cases();

}  // namespace kestrel::testing
