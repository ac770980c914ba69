// GgufWriter output read back by GgufReader: every metadata type (nested and empty arrays
// too), tensors of several types, alignment, streamed tensor bytes, atomic file writes.
#include <gtest/gtest.h>

#include "core/half.h"
#include "io/gguf_writer.h"

namespace kestrel {
namespace {

GgufWriter writer_with_every_value_type() {
    GgufWriter writer;
    writer.set("general.architecture", gguf_string("test"));
    writer.set("v.u8", GgufValue{uint8_t{200}});
    writer.set("v.i8", GgufValue{int8_t{-100}});
    writer.set("v.u16", GgufValue{uint16_t{60000}});
    writer.set("v.i16", GgufValue{int16_t{-30000}});
    writer.set("v.u32", gguf_u32(4000000000u));
    writer.set("v.i32", gguf_i32(-2000000000));
    writer.set("v.f32", gguf_f32(0.15625f));
    writer.set("v.bool", gguf_bool(true));
    writer.set("v.string", gguf_string("h\xc3\xa9llo \xe4\xb8\x96\xe7\x95\x8c"));
    writer.set("v.u64", gguf_u64(uint64_t{1} << 60));
    writer.set("v.i64", GgufValue{int64_t{-(int64_t{1} << 60)}});
    writer.set("v.f64", GgufValue{3.141592653589793});
    writer.set("v.strings", gguf_string_array({"<bos>", "", "\xe2\x96\x81the"}));
    writer.set("v.floats", gguf_f32_array({-1.0f, 0.5f, 1e-30f}));
    writer.set("v.bools", gguf_bool_array({true, false, true}));
    writer.set("v.empty", gguf_array(GgufValueType::kInt32, {}));
    writer.set("v.nested", gguf_array(GgufValueType::kArray, {gguf_i32_array({1, 2}), gguf_i32_array({}),
                                                              gguf_i32_array({3})}));
    return writer;
}

TEST(GgufWriter, RoundTripsEveryValueType) {
    GgufWriter writer = writer_with_every_value_type();
    Result<std::vector<uint8_t>> bytes = writer.to_bytes();
    ASSERT_TRUE(bytes.ok());
    Result<GgufFile> file = GgufFile::parse(*bytes, "roundtrip.gguf");
    ASSERT_TRUE(file.ok()) << file.status().message();

    EXPECT_EQ(file->metadata().size(), 18u);
    EXPECT_EQ(file->metadata()[1].key, "v.u8");  // order of first set is kept
    EXPECT_EQ(std::get<uint8_t>(file->find("v.u8")->data), 200);
    EXPECT_EQ(std::get<int8_t>(file->find("v.i8")->data), -100);
    EXPECT_EQ(std::get<uint16_t>(file->find("v.u16")->data), 60000);
    EXPECT_EQ(std::get<int16_t>(file->find("v.i16")->data), -30000);
    EXPECT_EQ(*file->get_int("v.u32"), 4000000000);
    EXPECT_EQ(*file->get_int("v.i32"), -2000000000);
    EXPECT_EQ(*file->get_float("v.f32"), 0.15625);
    EXPECT_EQ(*file->get_bool("v.bool"), true);
    EXPECT_EQ(*file->get_string("v.string"), "h\xc3\xa9llo \xe4\xb8\x96\xe7\x95\x8c");
    EXPECT_EQ(*file->get_int("v.u64"), int64_t{1} << 60);
    EXPECT_EQ(*file->get_int("v.i64"), -(int64_t{1} << 60));
    EXPECT_EQ(*file->get_float("v.f64"), 3.141592653589793);
    EXPECT_EQ(*file->get_string_array("v.strings"), (std::vector<std::string>{"<bos>", "", "\xe2\x96\x81the"}));
    EXPECT_EQ(*file->get_float_array("v.floats"), (std::vector<float>{-1.0f, 0.5f, 1e-30f}));
    EXPECT_EQ(*file->get_bool_array("v.bools"), (std::vector<bool>{true, false, true}));

    const GgufArray* empty = file->find("v.empty")->as_array();
    ASSERT_NE(empty, nullptr);
    EXPECT_EQ(empty->element_type, GgufValueType::kInt32);
    EXPECT_TRUE(empty->elements.empty());

    const GgufArray* nested = file->find("v.nested")->as_array();
    ASSERT_NE(nested, nullptr);
    EXPECT_EQ(nested->element_type, GgufValueType::kArray);
    ASSERT_EQ(nested->elements.size(), 3u);
    EXPECT_EQ(nested->elements[0].as_array()->elements.size(), 2u);
    EXPECT_EQ(*nested->elements[0].as_array()->elements[1].as_int(), 2);
    EXPECT_EQ(nested->elements[1].as_array()->elements.size(), 0u);
    EXPECT_EQ(*nested->elements[2].as_array()->elements[0].as_int(), 3);

    // Written again from what was read, the bytes are identical.
    GgufWriter again;
    for (const GgufKeyValue& entry : file->metadata()) again.set(entry.key, entry.value);
    EXPECT_EQ(*again.to_bytes(), *bytes);
}

TEST(GgufWriter, RoundTripsTensorsWithAlignment) {
    GgufWriter writer(64);
    writer.set("general.architecture", gguf_string("test"));
    std::vector<uint8_t> f32_bytes(6 * 4);
    for (int i = 0; i < 6; ++i) {
        const float v = static_cast<float>(i) * 0.25f;
        std::memcpy(f32_bytes.data() + i * 4, &v, 4);
    }
    ASSERT_TRUE(writer.add_tensor("f32", DType::kF32, {3, 2}, f32_bytes).ok());
    std::vector<uint8_t> q4k(2 * 144, 0x5a);
    ASSERT_TRUE(writer.add_tensor("q4k", DType::kQ4_K, {512}, q4k).ok());
    ASSERT_TRUE(writer
                    .add_tensor("filled", DType::kBF16, {5},
                                [](std::span<uint8_t> out) {
                                    for (size_t i = 0; i < out.size(); i += 2) {
                                        const uint16_t v = fp32_to_bf16(static_cast<float>(i));
                                        std::memcpy(out.data() + i, &v, 2);
                                    }
                                    return ok_status();
                                })
                    .ok());

    Result<std::vector<uint8_t>> bytes = writer.to_bytes();
    ASSERT_TRUE(bytes.ok());
    Result<GgufFile> file = GgufFile::parse(*bytes, "tensors.gguf");
    ASSERT_TRUE(file.ok()) << file.status().message();
    EXPECT_EQ(file->alignment(), 64u);
    EXPECT_EQ(file->data_offset() % 64, 0u);
    ASSERT_EQ(file->tensors().size(), 3u);
    for (const GgufTensorInfo& tensor : file->tensors()) {
        EXPECT_EQ(tensor.offset % 64, 0u) << tensor.name;
    }
    const GgufTensorInfo& f32 = file->tensors()[0];
    EXPECT_EQ(f32.ne, (std::vector<int64_t>{3, 2}));
    std::span<const uint8_t> f32_data = file->tensor_data(f32);
    EXPECT_TRUE(std::equal(f32_data.begin(), f32_data.end(), f32_bytes.begin(), f32_bytes.end()));
    std::span<const uint8_t> q4k_data = file->tensor_data(*file->find_tensor("q4k"));
    EXPECT_TRUE(std::equal(q4k_data.begin(), q4k_data.end(), q4k.begin(), q4k.end()));
    std::span<const uint8_t> filled = file->tensor_data(*file->find_tensor("filled"));
    ASSERT_EQ(filled.size(), 10u);
    EXPECT_EQ(bf16_to_fp32(load_le<uint16_t>(filled.data() + 8)), 8.0f);

    // The same through a file on disk.
    const std::filesystem::path path = std::filesystem::temp_directory_path() / "kestrel_writer_test.gguf";
    ASSERT_TRUE(writer.write(path).ok());
    EXPECT_FALSE(std::filesystem::exists(path.string() + ".tmp"));
    Result<GgufFile> from_disk = GgufFile::open(path);
    ASSERT_TRUE(from_disk.ok()) << from_disk.status().message();
    EXPECT_EQ(from_disk->file_size(), bytes->size());
    std::filesystem::remove(path);
}

TEST(GgufWriter, RefusesBadTensors) {
    GgufWriter writer;
    EXPECT_EQ(writer.add_tensor("bad_rows", DType::kQ8_0, {33}, std::vector<uint8_t>(35)).code(),
              StatusCode::kInvalidArgument);
    EXPECT_EQ(writer.add_tensor("bad_size", DType::kF32, {4}, std::vector<uint8_t>(15)).code(),
              StatusCode::kInvalidArgument);
    ASSERT_TRUE(writer.add_tensor("t", DType::kF32, {4}, std::vector<uint8_t>(16)).ok());
    EXPECT_EQ(writer.add_tensor("t", DType::kF32, {4}, std::vector<uint8_t>(16)).code(),
              StatusCode::kInvalidArgument);
}

TEST(GgufWriter, FailedFillLeavesNoFile) {
    GgufWriter writer;
    ASSERT_TRUE(writer
                    .add_tensor("t", DType::kF32, {4},
                                [](std::span<uint8_t>) { return Status(StatusCode::kInternal, "fill failed"); })
                    .ok());
    const std::filesystem::path path = std::filesystem::temp_directory_path() / "kestrel_failed_write.gguf";
    Status status = writer.write(path);
    EXPECT_EQ(status.code(), StatusCode::kInternal);
    EXPECT_FALSE(std::filesystem::exists(path));
    EXPECT_FALSE(std::filesystem::exists(path.string() + ".tmp"));
}

}  // namespace
}  // namespace kestrel
