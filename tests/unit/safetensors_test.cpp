// SafetensorsFile and HfFolderSource against tests/fixtures/hf_tiny (written by the PyPI
// safetensors package: scripts/make_safetensors_fixture.py) and against corrupt files made
// here from the fixture's bytes.
#include <gtest/gtest.h>

#include "test_support.h"

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/half.h"
#include "io/hf_folder_source.h"
#include "io/safetensors.h"

namespace kestrel {
namespace {

using testing::expect_error;

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kFixture = fs::path(KESTREL_SOURCE_DIR) / "tests" / "fixtures" / "hf_tiny";
const char* const kShard1 = "model-00001-of-00002.safetensors";
const char* const kShard2 = "model-00002-of-00002.safetensors";

std::vector<uint8_t> read_bytes(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string read_text(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const fs::path& path, const std::vector<uint8_t>& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

void write_text(const fs::path& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
}

json expected_tensors() { return json::parse(read_text(kFixture / "expected.json")).at("tensors"); }

// u64 length | header | data: a safetensors file from parts.
std::vector<uint8_t> make_file(const std::string& header, const std::vector<uint8_t>& data) {
    std::vector<uint8_t> out(8 + header.size() + data.size());
    const uint64_t length = header.size();
    std::memcpy(out.data(), &length, 8);
    std::memcpy(out.data() + 8, header.data(), header.size());
    if (!data.empty()) std::memcpy(out.data() + 8 + header.size(), data.data(), data.size());
    return out;
}

// A fixture shard taken apart: its header as JSON and its data region.
struct Parts {
    json header;
    std::vector<uint8_t> data;
};

Parts split(const std::vector<uint8_t>& file) {
    uint64_t length;
    std::memcpy(&length, file.data(), 8);
    Parts parts;
    parts.header = json::parse(file.begin() + 8, file.begin() + 8 + static_cast<std::ptrdiff_t>(length));
    parts.data.assign(file.begin() + 8 + static_cast<std::ptrdiff_t>(length), file.end());
    return parts;
}

std::vector<uint8_t> join(const Parts& parts) { return make_file(parts.header.dump(), parts.data); }


Result<SafetensorsFile> parse_bytes(const std::vector<uint8_t>& bytes) {
    return SafetensorsFile::parse(bytes, "bad.safetensors");
}

// A folder under the system temp dir, removed when the test ends.
class TempDir {
public:
    TempDir() {
        const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
        path_ = fs::temp_directory_path() /
                (std::string("kestrel_") + info->test_suite_name() + "_" + info->name() + "_" +
                 std::to_string(::getpid()));
        fs::remove_all(path_);
        fs::create_directories(path_);
    }
    ~TempDir() {
        std::error_code error;
        fs::remove_all(path_, error);
    }
    const fs::path& path() const { return path_; }

    // A copy of the fixture folder.
    static void copy_fixture_to(const fs::path& to) {
        for (const auto& entry : fs::directory_iterator(kFixture)) {
            fs::copy_file(entry.path(), to / entry.path().filename(), fs::copy_options::overwrite_existing);
        }
    }

private:
    fs::path path_;
};

// Every element as a double (integers exactly up to 2^53; I64 is compared separately).
std::vector<double> decode(const WeightInfo& info, std::span<const uint8_t> bytes) {
    std::vector<double> out;
    const uint8_t* p = bytes.data();
    for (int64_t i = 0; i < info.n_elements; ++i) {
        switch (info.dtype) {
            case DType::kF32: out.push_back(load_le<float>(p + 4 * i)); break;
            case DType::kF16: out.push_back(fp16_to_fp32(load_le<uint16_t>(p + 2 * i))); break;
            case DType::kBF16: out.push_back(bf16_to_fp32(load_le<uint16_t>(p + 2 * i))); break;
            case DType::kF64: out.push_back(load_le<double>(p + 8 * i)); break;
            case DType::kI8: out.push_back(load_le<int8_t>(p + i)); break;
            case DType::kU8:
            case DType::kBool: out.push_back(load_le<uint8_t>(p + i)); break;
            case DType::kI16: out.push_back(load_le<int16_t>(p + 2 * i)); break;
            case DType::kI32: out.push_back(load_le<int32_t>(p + 4 * i)); break;
            case DType::kI64: out.push_back(static_cast<double>(load_le<int64_t>(p + 8 * i))); break;
            default: ADD_FAILURE() << "unexpected dtype in " << info.name; return out;
        }
    }
    return out;
}

// ---- SafetensorsFile on good files ------------------------------------------------------------

TEST(Safetensors, ReadsShardWrittenByReference) {
    Result<SafetensorsFile> file = SafetensorsFile::open(kFixture / kShard2);
    ASSERT_TRUE(file.ok()) << file.status().message();
    EXPECT_EQ(file->metadata().at("format"), "pt");
    const json expected = expected_tensors();
    size_t in_shard = 0;
    for (const auto& [name, entry] : expected.items()) in_shard += entry.at("shard") == kShard2;
    ASSERT_EQ(file->tensors().size(), in_shard);

    uint64_t previous_end = 0;
    for (const SafetensorsTensor& tensor : file->tensors()) {
        EXPECT_GE(tensor.offset, previous_end) << tensor.name << ": tensors come in data order";
        previous_end = tensor.offset + static_cast<uint64_t>(tensor.n_bytes);
        const std::span<const uint8_t> data = file->tensor_data(tensor);
        EXPECT_EQ(data.size(), static_cast<size_t>(tensor.n_bytes));
        ASSERT_EQ(file->find_tensor(tensor.name), &tensor);
        const json& want = expected.at(tensor.name);
        EXPECT_EQ(safetensors_dtype_name(tensor.dtype), want.at("dtype").get<std::string>());
        EXPECT_EQ(tensor.shape, want.at("shape").get<std::vector<int64_t>>());
    }
    EXPECT_EQ(previous_end, file->file_size() - file->data_offset()) << "the reference leaves no holes";

    const SafetensorsTensor* empty = file->find_tensor("language_model.model.empty");
    ASSERT_NE(empty, nullptr);
    EXPECT_EQ(empty->shape, (std::vector<int64_t>{0, 4}));
    EXPECT_EQ(empty->n_elements, 0);
    EXPECT_EQ(empty->n_bytes, 0);
    EXPECT_EQ(file->find_tensor("no.such.tensor"), nullptr);

    Result<SafetensorsFile> first = SafetensorsFile::open(kFixture / kShard1);
    ASSERT_TRUE(first.ok()) << first.status().message();
    const SafetensorsTensor* scalar = first->find_tensor("language_model.model.logit_scale");
    ASSERT_NE(scalar, nullptr);
    EXPECT_TRUE(scalar->shape.empty());
    EXPECT_EQ(scalar->n_elements, 1);
    EXPECT_EQ(load_le<float>(first->tensor_data(*scalar).data()), 0.125f);
}

TEST(Safetensors, ParsesBorrowedBytesAndEmptyHeader) {
    const std::vector<uint8_t> bytes = make_file("{}  ", {});  // trailing spaces are allowed padding
    Result<SafetensorsFile> file = parse_bytes(bytes);
    ASSERT_TRUE(file.ok()) << file.status().message();
    EXPECT_TRUE(file->tensors().empty());
    EXPECT_EQ(file->display_name(), "bad.safetensors");
    EXPECT_EQ(file->data_offset(), 12u);
}

TEST(Safetensors, ZeroSizedTensorOverlapsNothing) {
    const std::string header =
        R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
        R"("e":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]},"__metadata__":null})";
    Result<SafetensorsFile> file = parse_bytes(make_file(header, std::vector<uint8_t>(8)));
    ASSERT_TRUE(file.ok()) << file.status().message();
    EXPECT_EQ(file->tensors().size(), 2u);
}

TEST(Safetensors, OpenMissingFileIsNotFound) {
    Result<SafetensorsFile> file = SafetensorsFile::open(kFixture / "missing.safetensors");
    expect_error(file, StatusCode::kNotFound, {"missing.safetensors"});
}

// ---- SafetensorsFile on corrupt files -----------------------------------------------------------

TEST(Safetensors, RejectsFileShorterThanLength) {
    expect_error(parse_bytes({1, 2, 3}), StatusCode::kCorruptFile, {"bad.safetensors", "8-byte"});
    expect_error(parse_bytes({}), StatusCode::kCorruptFile, {"bad.safetensors"});
}

TEST(Safetensors, RejectsTruncatedHeader) {
    std::vector<uint8_t> bytes = read_bytes(kFixture / kShard2);
    uint64_t length;
    std::memcpy(&length, bytes.data(), 8);
    bytes.resize(8 + length / 2);
    expect_error(parse_bytes(bytes), StatusCode::kCorruptFile, {"bad.safetensors", "header length"});
}

TEST(Safetensors, RejectsAbsurdHeaderLength) {
    std::vector<uint8_t> bytes = read_bytes(kFixture / kShard2);
    const uint64_t absurd = 200'000'000;
    std::memcpy(bytes.data(), &absurd, 8);
    expect_error(parse_bytes(bytes), StatusCode::kCorruptFile, {"bad.safetensors", "200000000", "limit"});
    const uint64_t huge = ~uint64_t{0};
    std::memcpy(bytes.data(), &huge, 8);
    expect_error(parse_bytes(bytes), StatusCode::kCorruptFile, {"bad.safetensors"});
}

TEST(Safetensors, RejectsInvalidJson) {
    expect_error(parse_bytes(make_file("{not json}", {})), StatusCode::kCorruptFile,
                 {"bad.safetensors", "invalid JSON"});
    expect_error(parse_bytes(make_file("{\"a\": {\"dtype\": \"F32\",", {})), StatusCode::kCorruptFile,
                 {"bad.safetensors", "invalid JSON"});
    expect_error(parse_bytes(make_file("[1, 2]", {})), StatusCode::kCorruptFile, {"bad.safetensors", "'{'"});
    expect_error(parse_bytes(make_file("{} trailing", {})), StatusCode::kCorruptFile, {"bad.safetensors"});
    // Nesting is bounded, not recursed into.
    expect_error(parse_bytes(make_file("{\"a\":" + std::string(100000, '[') + std::string(100000, ']') + "}", {})),
                 StatusCode::kCorruptFile, {"bad.safetensors", "nested"});
}

TEST(Safetensors, RejectsOffsetsPastEnd) {
    Parts parts = split(read_bytes(kFixture / kShard2));
    const std::string name = "language_model.model.rope_freqs";  // F64 [8]: 64 bytes
    const uint64_t past = parts.data.size() - 32;
    parts.header[name]["data_offsets"] = {past, past + 64};
    expect_error(parse_bytes(join(parts)), StatusCode::kCorruptFile,
                 {"bad.safetensors", name, "past the end of the data region"});
}

TEST(Safetensors, RejectsTruncatedData) {
    std::vector<uint8_t> bytes = read_bytes(kFixture / kShard2);
    bytes.pop_back();
    expect_error(parse_bytes(bytes), StatusCode::kCorruptFile, {"bad.safetensors", "past the end"});
}

TEST(Safetensors, RejectsOverlappingTensors) {
    const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                               R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
    expect_error(parse_bytes(make_file(header, std::vector<uint8_t>(12))), StatusCode::kCorruptFile,
                 {"bad.safetensors", "'b'", "overlap", "'a'"});
    // The same bytes twice is an overlap too.
    Parts parts = split(read_bytes(kFixture / kShard2));
    parts.header["language_model.model.position_ids"]["data_offsets"] =
        parts.header["language_model.model.layers.1.mlp.down_proj.scales"]["data_offsets"];  // 64 bytes each
    expect_error(parse_bytes(join(parts)), StatusCode::kCorruptFile, {"bad.safetensors", "overlap"});
}

TEST(Safetensors, RejectsSizeMismatch) {
    const std::string header = R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})";
    expect_error(parse_bytes(make_file(header, std::vector<uint8_t>(8))), StatusCode::kCorruptFile,
                 {"bad.safetensors", "'a'", "hold 8 bytes, expected 12", "F32 [3]"});
    Parts parts = split(read_bytes(kFixture / kShard2));
    parts.header["language_model.model.rope_freqs"]["dtype"] = "F32";  // F64 bytes, F32 claim
    expect_error(parse_bytes(join(parts)), StatusCode::kCorruptFile,
                 {"bad.safetensors", "rope_freqs", "expected 32"});
}

TEST(Safetensors, RejectsUnknownDtype) {
    Parts parts = split(read_bytes(kFixture / kShard2));
    parts.header["language_model.model.layers.1.mlp.down_proj.qweight"]["dtype"] = "F8_E4M3";
    expect_error(parse_bytes(join(parts)), StatusCode::kUnsupported,
                 {"bad.safetensors", "'language_model.model.layers.1.mlp.down_proj.qweight'", "'F8_E4M3'"});
}

TEST(Safetensors, RejectsDuplicateNames) {
    const std::string header = R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                               R"("a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})";
    expect_error(parse_bytes(make_file(header, {7, 8})), StatusCode::kCorruptFile,
                 {"bad.safetensors", "duplicate", "'a'"});
}

TEST(Safetensors, RejectsWrongFieldTypes) {
    const std::vector<uint8_t> data(64);
    const std::vector<std::pair<std::string, std::string>> cases = {
        {R"({"t":[1,2]})", "expected an object"},
        {R"({"t":{"shape":[2],"data_offsets":[0,8]}})", "missing field 'dtype'"},
        {R"({"t":{"dtype":7,"shape":[2],"data_offsets":[0,8]}})", "field 'dtype'"},
        {R"({"t":{"dtype":"F32","data_offsets":[0,8]}})", "missing field 'shape'"},
        {R"({"t":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", "field 'shape'"},
        {R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", "field 'shape'"},
        {R"({"t":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", "field 'shape'"},
        {R"({"t":{"dtype":"F32","shape":[true],"data_offsets":[0,8]}})", "field 'shape'"},
        {R"({"t":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]}})", "field 'shape'"},
        {R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", "too large"},
        {R"({"t":{"dtype":"F32","shape":[2305843009213693952],"data_offsets":[0,8]}})", "too large"},
        {R"({"t":{"dtype":"F32","shape":[2]}})", "missing field 'data_offsets'"},
        {R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8,16]}})", "field 'data_offsets'"},
        {R"({"t":{"dtype":"F32","shape":[2],"data_offsets":{"begin":0}}})", "field 'data_offsets'"},
        {R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", "field 'data_offsets'"},
        {R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,1e3]}})", "field 'data_offsets'"},
        {R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", "end before"},
        {R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[18446744073709551615,18446744073709551615]}})",
         "past the end"},
        {R"({"__metadata__":{"format":1}})", "'__metadata__'"},
        {R"({"__metadata__":"pt"})", "'__metadata__'"},
    };
    for (const auto& [header, mention] : cases) {
        SCOPED_TRACE(header);
        expect_error(parse_bytes(make_file(header, data)), StatusCode::kCorruptFile, {"bad.safetensors", mention});
    }
}

TEST(Safetensors, HostileNamesStayOnOneLine) {
    const std::string header = R"({"evil\nname\u0000":{"dtype":"Q9","shape":[1],"data_offsets":[0,1]}})";
    const Result<SafetensorsFile> file = parse_bytes(make_file(header, {0}));
    expect_error(file, StatusCode::kUnsupported, {"bad.safetensors", "evil\\x0aname\\x00"});
    // and a file name with a newline in it
    expect_error(SafetensorsFile::parse(std::vector<uint8_t>{1}, "two\nlines"), StatusCode::kCorruptFile,
                 {"two\\x0alines"});
}

// Every truncation and many random byte changes: never a crash, and whatever parses stays in bounds.
TEST(Safetensors, SurvivesMutatedFiles) {
    const std::vector<uint8_t> original = read_bytes(kFixture / kShard2);
    const auto check = [](const std::vector<uint8_t>& bytes) {
        Result<SafetensorsFile> file = SafetensorsFile::parse(bytes, "mutant");
        if (!file.ok()) {
            EXPECT_EQ(file.status().message().find('\n'), std::string::npos);
            return;
        }
        for (const SafetensorsTensor& tensor : file->tensors()) {
            const std::span<const uint8_t> data = file->tensor_data(tensor);
            EXPECT_EQ(data.size(), static_cast<size_t>(tensor.n_bytes));
            if (!data.empty()) {
                EXPECT_GE(data.data(), bytes.data());
                EXPECT_LE(data.data() + data.size(), bytes.data() + bytes.size());
            }
        }
    };
    for (size_t size = 0; size < original.size(); ++size) {
        check(std::vector<uint8_t>(original.begin(), original.begin() + static_cast<std::ptrdiff_t>(size)));
    }
    std::mt19937 rng(1234);
    uint64_t header_length;
    std::memcpy(&header_length, original.data(), 8);
    const size_t header_end = 8 + static_cast<size_t>(header_length);
    for (int iteration = 0; iteration < 3000; ++iteration) {
        std::vector<uint8_t> bytes = original;
        const int changes = 1 + static_cast<int>(rng() % 4);
        for (int i = 0; i < changes; ++i) {
            // Mostly the header, where the structure is; digits make plausible numbers.
            const size_t at = rng() % 8 == 0 ? rng() % bytes.size() : rng() % header_end;
            bytes[at] = rng() % 2 ? static_cast<uint8_t>('0' + rng() % 10) : static_cast<uint8_t>(rng());
        }
        check(bytes);
    }
}

// ---- HfFolderSource --------------------------------------------------------------------------

void expect_matches_fixture(const WeightSource& source, const std::string& only_shard = "") {
    const json expected = expected_tensors();
    size_t count = 0;
    for (const auto& [name, entry] : expected.items()) {
        if (!only_shard.empty() && entry.at("shard") != only_shard) continue;
        ++count;
    }
    ASSERT_EQ(source.tensors().size(), count);
    for (const WeightInfo& info : source.tensors()) {
        SCOPED_TRACE(info.name);
        ASSERT_TRUE(expected.contains(info.name));
        const json& want = expected.at(info.name);
        EXPECT_EQ(safetensors_dtype_name(info.dtype), want.at("dtype").get<std::string>());
        EXPECT_EQ(info.shape, want.at("shape").get<std::vector<int64_t>>());
        EXPECT_EQ(info.n_elements, want.at("n_elements").get<int64_t>());
        const std::span<const uint8_t> bytes = source.bytes(info);
        ASSERT_EQ(bytes.size(), static_cast<size_t>(info.n_bytes));
        if (info.dtype == DType::kI64) {  // exact, past 2^53
            const std::vector<int64_t> values = want.at("values").get<std::vector<int64_t>>();
            ASSERT_EQ(values.size(), static_cast<size_t>(info.n_elements));
            for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(load_le<int64_t>(bytes.data() + 8 * i), values[i]);
            continue;
        }
        const std::vector<double> got = decode(info, bytes);
        if (want.contains("values")) {
            const std::vector<double> values = want.at("values").get<std::vector<double>>();
            ASSERT_EQ(got.size(), values.size());
            for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(got[i], values[i]) << "element " << i;
        } else {
            for (const auto& [index, value] : want.at("spot").items()) {
                EXPECT_EQ(got.at(std::stoul(index)), value.get<double>()) << "element " << index;
            }
            double sum = 0, sum_abs = 0;
            for (const double v : got) {
                sum += v;
                sum_abs += std::fabs(v);
            }
            EXPECT_NEAR(sum, want.at("sum").get<double>(), 1e-9 * want.at("sum_abs").get<double>());
            EXPECT_NEAR(sum_abs, want.at("sum_abs").get<double>(), 1e-9 * want.at("sum_abs").get<double>());
        }
    }
}

TEST(HfFolderSource, ReadsEveryTensorOfTheShardedFixture) {
    Result<std::unique_ptr<HfFolderSource>> source = HfFolderSource::open(kFixture);
    ASSERT_TRUE(source.ok()) << source.status().message();
    const HfFolderSource& folder = **source;
    EXPECT_TRUE(folder.sharded());
    ASSERT_EQ(folder.shards().size(), 2u);
    EXPECT_EQ(fs::path(folder.shards()[0].display_name()).filename(), kShard1);
    EXPECT_EQ(folder.description(), "Hugging Face folder " + kFixture.string());
    expect_matches_fixture(folder);

    // Shard by shard: every shard-1 tensor before any shard-2 tensor.
    const json expected = expected_tensors();
    bool seen_second = false;
    for (const WeightInfo& info : folder.tensors()) {
        const bool second = expected.at(info.name).at("shard") == kShard2;
        EXPECT_FALSE(seen_second && !second) << info.name;
        seen_second = seen_second || second;
    }
}

TEST(HfFolderSource, BytesOfACopiedWeightInfo) {
    Result<std::unique_ptr<HfFolderSource>> source = HfFolderSource::open(kFixture);
    ASSERT_TRUE(source.ok()) << source.status().message();
    const WeightInfo copy = (*source)->tensors()[3];
    EXPECT_EQ((*source)->bytes(copy).data(), (*source)->bytes((*source)->tensors()[3]).data());
    WeightInfo stranger = copy;
    stranger.name = "not.in.this.folder";
    EXPECT_TRUE((*source)->bytes(stranger).empty());
}

TEST(HfFolderSource, ReadsASingleFileFolder) {
    TempDir dir;
    fs::copy_file(kFixture / kShard2, dir.path() / "model.safetensors");
    Result<std::unique_ptr<HfFolderSource>> source = HfFolderSource::open(dir.path());
    ASSERT_TRUE(source.ok()) << source.status().message();
    EXPECT_FALSE((*source)->sharded());
    expect_matches_fixture(**source, kShard2);
}

TEST(HfFolderSource, MissingOrEmptyFolderIsNotFound) {
    expect_error(HfFolderSource::open(kFixture / "no_such_folder"), StatusCode::kNotFound, {"no_such_folder"});
    TempDir dir;
    expect_error(HfFolderSource::open(dir.path()), StatusCode::kNotFound,
                 {dir.path().string(), "model.safetensors", "model.safetensors.index.json"});
}

// A fixture copy whose index is edited by `edit`, opened.
template <class Edit>
Result<std::unique_ptr<HfFolderSource>> open_with_index(const TempDir& dir, Edit edit) {
    TempDir::copy_fixture_to(dir.path());
    json index = json::parse(read_text(kFixture / "model.safetensors.index.json"));
    edit(index);
    write_text(dir.path() / "model.safetensors.index.json", index.dump(2));
    return HfFolderSource::open(dir.path());
}

TEST(HfFolderSource, IndexPointingAtAMissingShard) {
    TempDir dir;
    auto source = open_with_index(dir, [](json& index) {
        index["weight_map"]["language_model.model.position_ids"] = "model-00003-of-00002.safetensors";
    });
    expect_error(source, StatusCode::kNotFound,
                 {"model.safetensors.index.json", "'model-00003-of-00002.safetensors'", "position_ids"});
}

TEST(HfFolderSource, IndexMayNotEscapeTheFolder) {
    for (const std::string shard : {"../model-00001-of-00002.safetensors", "/etc/passwd", "sub/x.safetensors",
                                    "..", "a\\b.safetensors", ""}) {
        SCOPED_TRACE(shard);
        TempDir dir;
        auto source = open_with_index(dir, [&](json& index) {
            index["weight_map"]["language_model.model.empty"] = shard;
        });
        expect_error(source, StatusCode::kCorruptFile,
                     {"model.safetensors.index.json", "'language_model.model.empty'", "plain file name"});
    }
}

TEST(HfFolderSource, IndexNamingATensorTheShardLacks) {
    TempDir dir;
    auto source = open_with_index(dir, [](json& index) {
        index["weight_map"]["ghost.weight"] = "model-00001-of-00002.safetensors";
    });
    expect_error(source, StatusCode::kCorruptFile,
                 {"model.safetensors.index.json", "'ghost.weight'", "'model-00001-of-00002.safetensors'"});
}

TEST(HfFolderSource, IndexIsAuthoritative) {
    TempDir dir;
    auto source = open_with_index(dir, [](json& index) {
        index["weight_map"].erase("language_model.model.position_ids");  // still in shard 2
    });
    ASSERT_TRUE(source.ok()) << source.status().message();
    const json expected = expected_tensors();
    EXPECT_EQ((*source)->tensors().size(), expected.size() - 1);
    for (const WeightInfo& info : (*source)->tensors()) EXPECT_NE(info.name, "language_model.model.position_ids");
}

TEST(HfFolderSource, RejectsMalformedIndex) {
    const std::vector<std::string> indices = {
        "{\"weight_map\": ",
        "[]",
        "{\"metadata\": {}}",
        "{\"weight_map\": []}",
        "{\"weight_map\": {\"a\": 1}}",
        "{\"metadata\": 3, \"weight_map\": {}}",
        "{\"weight_map\": {\"a\": \"x.safetensors\", \"a\": \"y.safetensors\"}}",
    };
    for (const std::string& text : indices) {
        SCOPED_TRACE(text);
        TempDir dir;
        write_text(dir.path() / "model.safetensors.index.json", text);
        expect_error(HfFolderSource::open(dir.path()), StatusCode::kCorruptFile, {"model.safetensors.index.json"});
    }
}

TEST(HfFolderSource, CorruptShardNamesTheShard) {
    TempDir dir;
    TempDir::copy_fixture_to(dir.path());
    const std::vector<uint8_t> bytes = read_bytes(kFixture / kShard2);
    write_bytes(dir.path() / kShard2, std::vector<uint8_t>(bytes.begin(), bytes.end() - 10));
    expect_error(HfFolderSource::open(dir.path()), StatusCode::kCorruptFile,
                 {(dir.path() / kShard2).string(), "past the end"});
}

}  // namespace
}  // namespace kestrel
