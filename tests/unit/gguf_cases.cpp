#include "gguf_cases.h"

namespace kestrel::testing {
namespace {

constexpr uint32_t kF32 = 0;
constexpr uint32_t kQ8_0 = 8;
constexpr uint32_t kTypeString = 8;
constexpr uint32_t kTypeArray = 9;
constexpr uint32_t kTypeBool = 7;
constexpr uint32_t kTypeU32 = 4;

// Header + metadata of the valid file, so cases can corrupt what follows.
GgufBytes valid_prefix(uint64_t tensor_count = 2, uint64_t kv_count = 2) {
    GgufBytes b;
    b.header(tensor_count, kv_count).kv_string("general.architecture", "test").kv_u32("test.block_count", 1);
    return b;
}

GgufBytes valid_infos() {
    GgufBytes b = valid_prefix();
    b.tensor("a", {4, 2}, kF32, 0).tensor("b", {32}, kQ8_0, 32);
    return b;
}

void append_valid_data(GgufBytes& b) {
    b.pad_to(32);
    for (int i = 0; i < 8; ++i) b.f32(static_cast<float>(i) - 3.5f);
    b.u8(0x00).u8(0x3c);  // Q8_0 scale d = 1.0 (fp16 0x3c00)
    for (int i = 0; i < 32; ++i) b.u8(static_cast<uint8_t>(i - 16));
}

}  // namespace

std::vector<uint8_t> valid_gguf_bytes() {
    GgufBytes b = valid_infos();
    append_valid_data(b);
    return b.bytes;
}

size_t valid_gguf_required_size() { return valid_gguf_bytes().size(); }

std::vector<CorruptCase> corrupt_gguf_cases() {
    std::vector<CorruptCase> cases;
    const auto add = [&](std::string name, GgufBytes b, StatusCode code, std::string part) {
        cases.push_back({std::move(name), std::move(b.bytes), code, std::move(part)});
    };
    const StatusCode corrupt = StatusCode::kCorruptFile;

    add("empty_file", GgufBytes(), corrupt, "truncated");
    add("bad_magic", GgufBytes().u32(0x46554746).u32(3).u64(0).u64(0), corrupt, "bad magic");
    add("version_1", GgufBytes().header(0, 0, 1), StatusCode::kUnsupported, "unsupported GGUF version 1");
    add("version_4", GgufBytes().header(0, 0, 4), StatusCode::kUnsupported, "unsupported GGUF version 4");
    add("version_big_endian", GgufBytes().header(0, 0, 0x03000000), StatusCode::kUnsupported, "big-endian");
    add("truncated_header", GgufBytes().u32(0x46554747).u32(3).u32(0), corrupt, "truncated");
    add("huge_kv_count", GgufBytes().header(0, ~uint64_t{0}), corrupt, "cannot fit");
    add("huge_tensor_count", GgufBytes().header(~uint64_t{0}, 0), corrupt, "cannot fit");
    add("key_length_past_end", GgufBytes().header(0, 1).u64(uint64_t{1} << 40).u32(4).u32(0), corrupt, "claims");
    add("empty_key", GgufBytes().header(0, 1).str("").u32(kTypeU32).u32(1), corrupt, "is empty");
    add("unknown_value_type", GgufBytes().header(0, 1).str("k").u32(13).u32(0), corrupt, "unknown value type 13");
    add("string_value_past_end", GgufBytes().header(0, 1).str("k").u32(kTypeString).u64(1000).zeros(8), corrupt,
        "claims");
    add("truncated_value", GgufBytes().header(0, 1).str("k").u32(10).u32(7), corrupt, "truncated");
    add("array_count_past_end",
        GgufBytes().header(0, 1).str("k").u32(kTypeArray).u32(kTypeU32).u64(1'000'000'000'000).zeros(16), corrupt,
        "cannot fit");
    add("array_unknown_element_type", GgufBytes().header(0, 1).str("k").u32(kTypeArray).u32(77).u64(1).u32(0),
        corrupt, "unknown element type 77");
    {
        GgufBytes b;
        b.header(0, 1).str("k").u32(kTypeArray);
        for (int depth = 0; depth < 9; ++depth) b.u32(kTypeArray).u64(1);
        b.u32(kTypeU32).u64(1).u32(0);
        add("arrays_nested_too_deep", b, corrupt, "nests arrays");
    }
    add("bool_value_2", GgufBytes().header(0, 1).str("k").u32(kTypeBool).u8(2), corrupt, "bool value 2");
    add("duplicate_key", GgufBytes().header(0, 2).kv_u32("k", 1).kv_u32("k", 2), corrupt, "duplicate metadata key 'k'");
    add("alignment_not_power_of_two", GgufBytes().header(0, 1).kv_u32("general.alignment", 48), corrupt,
        "power of two");
    add("alignment_zero", GgufBytes().header(0, 1).kv_u32("general.alignment", 0), corrupt, "power of two");
    add("alignment_wrong_type", GgufBytes().header(0, 1).kv_string("general.alignment", "32"), corrupt,
        "expected uint32");

    const auto with_tensor = [&](std::string name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset,
                                 std::string part) {
        GgufBytes b = valid_prefix(1);
        b.tensor("t", ne, type, offset);
        append_valid_data(b);
        add(std::move(name), b, corrupt, std::move(part));
    };
    with_tensor("tensor_zero_dims", {}, kF32, 0, "0 dimensions");
    with_tensor("tensor_five_dims", {1, 1, 1, 1, 1}, kF32, 0, "5 dimensions");
    with_tensor("unknown_ggml_type", {4}, 99, 0, "unknown ggml type 99");
    with_tensor("removed_ggml_type", {4}, 4, 0, "unknown ggml type 4");
    with_tensor("shape_overflow", {uint64_t{1} << 40, uint64_t{1} << 40}, kF32, 0, "overflows");
    with_tensor("dimension_past_int64", {uint64_t{1} << 63}, kF32, 0, "overflows");
    with_tensor("byte_size_overflow", {uint64_t{1} << 62}, kF32, 0, "overflows");
    with_tensor("row_not_whole_blocks", {33}, kQ8_0, 0, "not a multiple of the Q8_0 block size 32");
    with_tensor("misaligned_offset", {4}, kF32, 8, "not a multiple of the alignment");
    with_tensor("data_past_end", {4}, kF32, uint64_t{1} << 20, "outside the file");
    with_tensor("data_offset_near_max", {4}, kF32, ~uint64_t{0} - 31, "outside the file");
    with_tensor("data_larger_than_file", {1 << 20}, kF32, 0, "outside the file");
    {
        GgufBytes b = valid_prefix(1);
        b.tensor("", {4}, kF32, 0);
        append_valid_data(b);
        add("tensor_empty_name", b, corrupt, "empty name");
    }
    {
        GgufBytes b = valid_prefix();
        b.tensor("a", {4, 2}, kF32, 0).tensor("b", {32}, kQ8_0, 0);
        append_valid_data(b);
        add("overlapping_tensors", b, corrupt, "overlaps");
    }
    {
        GgufBytes b = valid_prefix();
        b.tensor("a", {4, 2}, kF32, 0).tensor("a", {32}, kQ8_0, 32);
        append_valid_data(b);
        add("duplicate_tensor_name", b, corrupt, "duplicate tensor name 'a'");
    }
    {
        GgufBytes b = valid_infos();
        b.bytes.resize(b.bytes.size() - 5);
        add("truncated_in_tensor_infos", b, corrupt, "truncated");
    }
    {
        GgufBytes b = valid_infos();
        append_valid_data(b);
        b.bytes.resize(b.bytes.size() - 10);
        add("truncated_tensor_data", b, corrupt, "outside the file");
    }
    return cases;
}

}  // namespace kestrel::testing
