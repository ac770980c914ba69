// The GGUF reader on hand-assembled bytes: a valid file reads back exactly, every corruption
// gives one clear line, no truncation or random mutation makes it crash or read out of bounds
// (the sanitizer build runs these too).
#include <gtest/gtest.h>

#include <random>

#include "gguf_cases.h"
#include "io/gguf.h"

namespace kestrel {
namespace {

TEST(GgufReader, ReadsValidFile) {
    const std::vector<uint8_t> bytes = testing::valid_gguf_bytes();
    Result<GgufFile> file = GgufFile::parse(bytes, "valid.gguf");
    ASSERT_TRUE(file.ok()) << file.status().message();
    EXPECT_EQ(file->version(), 3u);
    EXPECT_EQ(file->alignment(), 32u);
    EXPECT_EQ(file->data_offset() % 32, 0u);
    EXPECT_EQ(*file->get_string("general.architecture"), "test");
    EXPECT_EQ(*file->get_int("test.block_count"), 1);
    ASSERT_EQ(file->tensors().size(), 2u);

    const GgufTensorInfo* a = file->find_tensor("a");
    ASSERT_NE(a, nullptr);
    EXPECT_EQ(a->type, DType::kF32);
    EXPECT_EQ(a->ne, (std::vector<int64_t>{4, 2}));
    EXPECT_EQ(a->n_elements, 8);
    EXPECT_EQ(a->n_bytes, 32);
    std::span<const uint8_t> a_data = file->tensor_data(*a);
    float third;
    std::memcpy(&third, a_data.data() + 8, 4);
    EXPECT_EQ(third, -1.5f);

    const GgufTensorInfo* b = file->find_tensor("b");
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(b->type, DType::kQ8_0);
    EXPECT_EQ(b->n_bytes, 34);
    EXPECT_EQ(file->tensor_data(*b)[1], 0x3c);
    EXPECT_EQ(file->find_tensor("c"), nullptr);
}

TEST(GgufReader, TypedGettersNameTheKey) {
    const std::vector<uint8_t> bytes = testing::valid_gguf_bytes();
    Result<GgufFile> file = GgufFile::parse(bytes, "valid.gguf");
    ASSERT_TRUE(file.ok());
    Result<int64_t> wrong = file->get_int("general.architecture");
    ASSERT_FALSE(wrong.ok());
    EXPECT_EQ(wrong.status().code(), StatusCode::kCorruptFile);
    EXPECT_NE(wrong.status().message().find("'general.architecture' is string, expected an integer"),
              std::string::npos)
        << wrong.status().message();
    Result<std::string> missing = file->get_string("general.name");
    ASSERT_FALSE(missing.ok());
    EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
    EXPECT_NE(missing.status().message().find("valid.gguf"), std::string::npos);
}

TEST(GgufReader, EachCorruptionGivesOneClearLine) {
    for (const testing::CorruptCase& c : testing::corrupt_gguf_cases()) {
        SCOPED_TRACE(c.name);
        Result<GgufFile> file = GgufFile::parse(c.bytes, c.name + ".gguf");
        ASSERT_FALSE(file.ok());
        const std::string& message = file.status().message();
        EXPECT_EQ(file.status().code(), c.code) << message;
        EXPECT_NE(message.find(c.name + ".gguf"), std::string::npos) << message;
        EXPECT_NE(message.find(c.message_part), std::string::npos) << message;
        EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    }
}

TEST(GgufReader, EveryTruncationIsRefused) {
    const std::vector<uint8_t> bytes = testing::valid_gguf_bytes();
    for (size_t size = 0; size < bytes.size(); ++size) {
        // An exact-size copy, so AddressSanitizer sees any read past the prefix.
        const std::vector<uint8_t> prefix(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(size));
        Result<GgufFile> file = GgufFile::parse(prefix, "cut.gguf");
        ASSERT_FALSE(file.ok()) << "a file cut to " << size << " of " << bytes.size() << " bytes parsed";
        EXPECT_EQ(file.status().message().find('\n'), std::string::npos);
    }
}

TEST(GgufReader, RandomMutationsNeverCrash) {
    const std::vector<uint8_t> valid = testing::valid_gguf_bytes();
    std::mt19937 rng(1234);
    int refused = 0;
    for (int trial = 0; trial < 20000; ++trial) {
        std::vector<uint8_t> bytes = valid;
        const int edits = 1 + static_cast<int>(rng() % 4);
        for (int e = 0; e < edits; ++e) {
            const size_t at = rng() % bytes.size();
            switch (rng() % 3) {
                case 0: bytes[at] = static_cast<uint8_t>(rng()); break;
                case 1: bytes[at] ^= static_cast<uint8_t>(1u << (rng() % 8)); break;
                case 2: bytes.resize(at); break;
            }
            if (bytes.empty()) break;
        }
        Result<GgufFile> file = GgufFile::parse(bytes, "mutant.gguf");
        if (!file.ok()) {
            ++refused;
            ASSERT_EQ(file.status().message().find('\n'), std::string::npos);
            continue;
        }
        // What parsed must be self-consistent: every tensor's bytes inside the buffer.
        for (const GgufTensorInfo& tensor : file->tensors()) {
            std::span<const uint8_t> data = file->tensor_data(tensor);
            ASSERT_GE(data.data(), bytes.data());
            ASSERT_LE(data.data() + data.size(), bytes.data() + bytes.size());
        }
    }
    EXPECT_GT(refused, 1000);  // the mutations do reach the checks
}

// Found by the fuzzer: a key holding a newline must not split the error message.
TEST(GgufReader, NamesFromTheFileAreEscapedInMessages) {
    testing::GgufBytes b;
    b.header(0, 1).kv_string("bad\nkey\x1b[31m", "value");
    Result<GgufFile> file = GgufFile::parse(b.bytes, "escape.gguf");
    ASSERT_TRUE(file.ok()) << file.status().message();
    Result<int64_t> wrong = file->get_int("bad\nkey\x1b[31m");
    ASSERT_FALSE(wrong.ok());
    EXPECT_EQ(wrong.status().message().find('\n'), std::string::npos);
    EXPECT_EQ(wrong.status().message().find('\x1b'), std::string::npos);
    EXPECT_NE(wrong.status().message().find("bad\\x0akey\\x1b[31m"), std::string::npos) << wrong.status().message();
}

TEST(GgufReader, OpensFromDisk) {
    const std::filesystem::path path = std::filesystem::temp_directory_path() / "kestrel_gguf_reader_test.gguf";
    const std::vector<uint8_t> bytes = testing::valid_gguf_bytes();
    {
        std::FILE* out = std::fopen(path.c_str(), "wb");
        ASSERT_NE(out, nullptr);
        std::fwrite(bytes.data(), 1, bytes.size(), out);
        std::fclose(out);
    }
    Result<GgufFile> file = GgufFile::open(path);
    ASSERT_TRUE(file.ok()) << file.status().message();
    EXPECT_EQ(file->display_name(), path.string());
    EXPECT_EQ(file->tensors().size(), 2u);
    std::filesystem::remove(path);

    Result<GgufFile> missing = GgufFile::open(path);
    ASSERT_FALSE(missing.ok());
    EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
    EXPECT_NE(missing.status().message().find(path.string()), std::string::npos);

    Result<GgufFile> directory = GgufFile::open(std::filesystem::temp_directory_path());
    ASSERT_FALSE(directory.ok());
}

}  // namespace
}  // namespace kestrel
