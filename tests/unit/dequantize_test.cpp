// dequantize() against gguf-py, bit for bit: tests/fixtures/dequant/<TYPE>.bin hold random
// blocks and gguf.quants.dequantize's float32 output (scripts/make_dequant_fixtures.py
// documents the format). NaN matches NaN of any payload; everything else, signed zeros
// included, must match in all 32 bits. Hand-computed Q4_0 and Q8_0 blocks keep the test
// honest without the fixtures.
#include "io/dequantize.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "io/gguf.h"
#include "io/gguf_source.h"
#include "io/gguf_writer.h"
#include "io/weight_source.h"

namespace kestrel {
namespace {

constexpr DType kSupported[] = {
    DType::kF32,  DType::kF16,  DType::kBF16, DType::kQ4_0,   DType::kQ4_1,
    DType::kQ5_0, DType::kQ5_1, DType::kQ8_0, DType::kQ2_K,   DType::kQ3_K,
    DType::kQ4_K, DType::kQ5_K, DType::kQ6_K, DType::kIQ4_NL, DType::kIQ4_XS,
};

// Poison for outputs, so a value the converter never wrote cannot pass as a NaN by accident:
// the tests compare NaN by class, and this one is not supposed to survive at all.
constexpr uint32_t kPoison = 0x7fbadbadu;

struct Fixture {
    uint32_t type_id = 0;
    uint32_t n_blocks = 0;
    int64_t n_elements = 0;
    std::string gguf_version;
    std::vector<uint8_t> raw;
    std::vector<float> expected;
};

template <class T>
T read_le(const std::vector<uint8_t>& bytes, size_t offset) {
    T value;
    std::memcpy(&value, bytes.data() + offset, sizeof(T));
    return value;
}

// Loads tests/fixtures/dequant/<name>.bin; fails the test (and returns false) when it is
// missing or malformed.
bool load_fixture(const std::string& name, Fixture* fixture) {
    const std::string path =
        std::string(KESTREL_SOURCE_DIR) + "/tests/fixtures/dequant/" + name + ".bin";
    std::ifstream file(path, std::ios::binary);
    if (!file) {
        ADD_FAILURE() << "cannot open " << path << " (run scripts/make_dequant_fixtures.py)";
        return false;
    }
    const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(file)),
                                     std::istreambuf_iterator<char>());
    constexpr size_t kHeader = 48;
    if (bytes.size() < kHeader || std::memcmp(bytes.data(), "KDQFIX01", 8) != 0) {
        ADD_FAILURE() << path << ": not a dequant fixture (bad magic or short header)";
        return false;
    }
    fixture->type_id = read_le<uint32_t>(bytes, 8);
    fixture->n_blocks = read_le<uint32_t>(bytes, 12);
    const uint64_t n_elements = read_le<uint64_t>(bytes, 16);
    const uint64_t n_raw = read_le<uint64_t>(bytes, 24);
    const char* version = reinterpret_cast<const char*>(bytes.data() + 32);
    fixture->gguf_version.assign(version, strnlen(version, 16));
    if (bytes.size() != kHeader + n_raw + 4 * n_elements) {
        ADD_FAILURE() << path << ": " << bytes.size() << " bytes, header promises "
                      << kHeader + n_raw + 4 * n_elements;
        return false;
    }
    fixture->n_elements = static_cast<int64_t>(n_elements);
    fixture->raw.assign(bytes.begin() + kHeader, bytes.begin() + kHeader + n_raw);
    fixture->expected.resize(n_elements);
    std::memcpy(fixture->expected.data(), bytes.data() + kHeader + n_raw, 4 * n_elements);
    return true;
}

std::string hex_bits(float value) {
    char buffer[16];
    std::snprintf(buffer, sizeof(buffer), "0x%08x", std::bit_cast<uint32_t>(value));
    return buffer;
}

class DequantizeFixtureTest : public testing::TestWithParam<DType> {};

TEST_P(DequantizeFixtureTest, BitExactWithGgufPy) {
    const DType type = GetParam();
    const std::string name(dtype_name(type));
    Fixture fixture;
    ASSERT_TRUE(load_fixture(name, &fixture));
    ASSERT_EQ(fixture.type_id, static_cast<uint32_t>(type)) << name << ".bin holds another type";
    ASSERT_GT(fixture.n_elements, 0);

    std::vector<float> got(fixture.expected.size(), std::bit_cast<float>(kPoison));
    const Status status = dequantize(type, fixture.raw, fixture.n_elements, got.data());
    ASSERT_TRUE(status.ok()) << status.message();

    int64_t mismatches = 0;
    int64_t first = -1;
    int64_t nans = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        const float e = fixture.expected[i];
        const float g = got[i];
        if (std::isnan(e)) ++nans;
        const bool same = std::bit_cast<uint32_t>(g) == std::bit_cast<uint32_t>(e) ||
                          (std::isnan(g) && std::isnan(e) && std::bit_cast<uint32_t>(g) != kPoison);
        if (!same) {
            if (first < 0) first = static_cast<int64_t>(i);
            ++mismatches;
        }
    }
    if (first >= 0) {
        const int64_t block_elements = dtype_info(type).block_elements;
        ADD_FAILURE() << name << ": " << mismatches << " of " << got.size()
                      << " values differ from gguf " << fixture.gguf_version << "; first at index "
                      << first << " (block " << first / block_elements << ", element "
                      << first % block_elements << "): got " << got[first] << " ("
                      << hex_bits(got[first]) << "), expected " << fixture.expected[first] << " ("
                      << hex_bits(fixture.expected[first]) << ")";
    }
    // The fixtures are meant to be mostly finite; a regenerated file full of NaN would make
    // this test toothless.
    EXPECT_LT(nans * 4, static_cast<int64_t>(got.size())) << name << ": too many NaN in fixture";
}

INSTANTIATE_TEST_SUITE_P(DequantAllTypes, DequantizeFixtureTest, testing::ValuesIn(kSupported),
                         [](const testing::TestParamInfo<DType>& info) {
                             return std::string(dtype_name(info.param));
                         });

TEST(DequantizeTest, SupportedTypesAreExactlyTheListedOnes) {
    for (uint32_t id = 0; id < 64; ++id) {
        const std::optional<DType> type = dtype_from_ggml_id(id);
        if (!type) continue;
        bool listed = false;
        for (DType t : kSupported) listed = listed || t == *type;
        EXPECT_EQ(dequantize_supported(*type), listed) << dtype_name(*type);
    }
    EXPECT_FALSE(dequantize_supported(DType::kU8));
    EXPECT_FALSE(dequantize_supported(DType::kBool));
}

TEST(DequantizeTest, UnsupportedTypeNamesTheType) {
    for (DType type : {DType::kIQ2_XXS, DType::kTQ1_0, DType::kQ8_K, DType::kMXFP4}) {
        const DTypeInfo& info = dtype_info(type);
        std::vector<uint8_t> src(static_cast<size_t>(info.block_bytes), 0);
        std::vector<float> dst(static_cast<size_t>(info.block_elements));
        const Status status = dequantize(type, src, info.block_elements, dst.data());
        EXPECT_EQ(status.code(), StatusCode::kUnsupported) << info.name;
        EXPECT_EQ(status.message(), "unsupported type " + std::string(info.name));
    }
}

// A tensor name from the file is quoted printable in the error: a newline in it (found by the
// GGUF fuzzer) must not split the one-line message.
TEST(DequantizeTest, UnsupportedTensorErrorIsOneLineWhateverItsName) {
    GgufWriter writer;
    writer.set("general.architecture", gguf_string("gemma3"));
    ASSERT_TRUE(writer.add_tensor("bad\nname", DType::kIQ2_XXS, {256}, std::vector<uint8_t>(66, 0)).ok());
    Result<std::vector<uint8_t>> bytes = writer.to_bytes();
    ASSERT_TRUE(bytes.ok());
    Result<GgufFile> file = GgufFile::parse(*bytes, "line\nbreak.gguf");
    ASSERT_TRUE(file.ok()) << file.status().message();
    GgufSource source(std::make_shared<const GgufFile>(std::move(file).value()));
    ASSERT_EQ(source.tensors().size(), 1u);
    const Result<std::vector<float>> values = read_tensor_f32(source, source.tensors()[0]);
    ASSERT_FALSE(values.ok());
    EXPECT_EQ(values.status().message().find('\n'), std::string::npos) << values.status().message();
    EXPECT_NE(values.status().message().find("'bad\\x0aname'"), std::string::npos) << values.status().message();
}

TEST(DequantizeTest, SizeMismatchIsInvalidArgument) {
    std::vector<float> dst(512);
    // One byte short of a Q4_K super-block.
    std::vector<uint8_t> short_src(143, 0);
    Status status = dequantize(DType::kQ4_K, short_src, 256, dst.data());
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(status.message().find("Q4_K"), std::string::npos) << status.message();
    EXPECT_NE(status.message().find("144"), std::string::npos) << status.message();
    EXPECT_NE(status.message().find("143"), std::string::npos) << status.message();

    // Two blocks of bytes for one block of elements.
    std::vector<uint8_t> long_src(36, 0);
    status = dequantize(DType::kQ8_0, long_src, 32, dst.data());
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);

    // Not a whole number of 32-element blocks.
    std::vector<uint8_t> q4_src(18, 0);
    status = dequantize(DType::kQ4_0, q4_src, 31, dst.data());
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(status.message().find("whole number"), std::string::npos) << status.message();

    status = dequantize(DType::kF16, std::span<const uint8_t>(), -1, dst.data());
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument);

    // Zero elements of zero bytes is fine, even without an output buffer.
    EXPECT_TRUE(dequantize(DType::kQ6_K, std::span<const uint8_t>(), 0, nullptr).ok());
}

TEST(DequantizeTest, Q4_0HandComputed) {
    // Two blocks of 18 bytes: d (fp16), then 16 bytes whose low nibbles are weights 0..15 and
    // high nibbles weights 16..31; weight = d * (nibble - 8).
    //   block 0: d = 0.5 (0x3800)
    //     qs[0] = 0x9F: weight 0  = 0.5 * (15 - 8) = 3.5,   weight 16 = 0.5 * (9 - 8) = 0.5
    //     qs[1] = 0x08: weight 1  = 0.5 * (8 - 8)  = 0,     weight 17 = 0.5 * (0 - 8) = -4
    //     qs[2..15] = 0x88: all 0
    //   block 1: d = -0.25 (0xB400)
    //     qs[15] = 0x3C: weight 15 = -0.25 * (12 - 8) = -1, weight 31 = -0.25 * (3 - 8) = 1.25
    //     qs[0..14] = 0x88: all -0.25 * 0 = -0 (negative zero: the sign of d survives)
    std::vector<uint8_t> src(36, 0x88);
    src[0] = 0x00, src[1] = 0x38;  // d = 0.5, little-endian
    src[2] = 0x9F, src[3] = 0x08;
    src[18] = 0x00, src[19] = 0xB4;  // d = -0.25
    src[20 + 15] = 0x3C;
    std::vector<float> y(64, std::bit_cast<float>(kPoison));
    ASSERT_TRUE(dequantize(DType::kQ4_0, src, 64, y.data()).ok());
    EXPECT_EQ(y[0], 3.5f);
    EXPECT_EQ(y[16], 0.5f);
    EXPECT_EQ(y[1], 0.0f);
    EXPECT_EQ(y[17], -4.0f);
    EXPECT_EQ(y[2], 0.0f);
    EXPECT_EQ(y[32 + 15], -1.0f);
    EXPECT_EQ(y[32 + 31], 1.25f);
    EXPECT_EQ(std::bit_cast<uint32_t>(y[32]), 0x80000000u) << "expected -0";
}

TEST(DequantizeTest, Q8_0HandComputed) {
    // One block of 34 bytes: d (fp16), then 32 int8 weights; weight = q * d.
    //   d = 0.25 (0x3400): q = 127, -128, 1, -1, 0 -> 31.75, -32, 0.25, -0.25, 0
    //   a second block with the smallest subnormal d = 2^-24 (0x0001) and q = 3 -> 3 * 2^-24,
    //   exact in float32 (1.78813934e-07).
    std::vector<uint8_t> src(68, 0);
    src[0] = 0x00, src[1] = 0x34;
    src[2] = 127, src[3] = 0x80 /* -128 */, src[4] = 1, src[5] = 0xFF /* -1 */;
    src[34] = 0x01, src[35] = 0x00;
    src[36] = 3;
    std::vector<float> y(64, std::bit_cast<float>(kPoison));
    ASSERT_TRUE(dequantize(DType::kQ8_0, src, 64, y.data()).ok());
    EXPECT_EQ(y[0], 31.75f);
    EXPECT_EQ(y[1], -32.0f);
    EXPECT_EQ(y[2], 0.25f);
    EXPECT_EQ(y[3], -0.25f);
    EXPECT_EQ(y[4], 0.0f);
    EXPECT_EQ(y[32], std::ldexp(3.0f, -24));
    EXPECT_EQ(y[33], 0.0f);
}

}  // namespace
}  // namespace kestrel
