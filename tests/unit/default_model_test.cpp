// The real default model (Gemma 3 270M Q4_K_M GGUF, installed by scripts/setup.sh) parses, and
// every tensor dequantises to what gguf-py computes (tests/fixtures/gemma3_270m_gguf.json,
// made by scripts/make_default_model_fixtures.py).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/gguf_source.h"
#include "io/model_files.h"
#include "models/model_config.h"
#include "runtime/memory_plan.h"

namespace kestrel {
namespace {

class DefaultModel : public ::testing::Test {
protected:
    // Opened once for the suite; a missing model fails every test (never skips: CI must have it).
    static void SetUpTestSuite() {
        Result<std::filesystem::path> path = default_model_path();
        if (!path.ok()) {
            load_error_ = path.status().message();
            return;
        }
        Result<GgufFile> opened = GgufFile::open(*path);
        if (!opened.ok()) {
            load_error_ = opened.status().message();
            return;
        }
        file_ = std::make_shared<const GgufFile>(std::move(opened).value());
        std::ifstream in(std::string(KESTREL_SOURCE_DIR) + "/tests/fixtures/gemma3_270m_gguf.json");
        expected_ = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
        if (!expected_.is_object()) load_error_ = "missing or invalid tests/fixtures/gemma3_270m_gguf.json";
    }
    static void TearDownTestSuite() { file_.reset(); }

    void SetUp() override { ASSERT_TRUE(load_error_.empty()) << load_error_; }

    static std::shared_ptr<const GgufFile> file_;
    static nlohmann::json expected_;
    static std::string load_error_;
};

std::shared_ptr<const GgufFile> DefaultModel::file_;
nlohmann::json DefaultModel::expected_;
std::string DefaultModel::load_error_;

TEST_F(DefaultModel, KnownMetadata) {
    EXPECT_EQ(file_->version(), 3u);
    EXPECT_EQ(*file_->get_string("general.architecture"), "gemma3");
    EXPECT_EQ(*file_->get_int("gemma3.block_count"), 18);
    EXPECT_EQ(*file_->get_int("gemma3.embedding_length"), 640);
    for (const auto& [key, value] : expected_["metadata"].items()) {
        SCOPED_TRACE(key);
        if (key == "tokenizer.ggml.tokens.count") {
            EXPECT_EQ(static_cast<int64_t>(file_->get_string_array("tokenizer.ggml.tokens")->size()), value.get<int64_t>());
        } else if (key.ends_with("]")) {  // "tokenizer.ggml.tokens[2]"
            const size_t open = key.find('[');
            const size_t index = std::stoul(key.substr(open + 1));
            EXPECT_EQ(file_->get_string_array(key.substr(0, open))->at(index), value.get<std::string>());
        } else if (value.is_string()) {
            EXPECT_EQ(*file_->get_string(key), value.get<std::string>());
        } else {
            EXPECT_EQ(*file_->get_int(key), value.get<int64_t>());
        }
    }
}

TEST_F(DefaultModel, TensorInfosMatchGgufPy) {
    const nlohmann::json& tensors = expected_["tensors"];
    ASSERT_EQ(file_->tensors().size(), tensors.size());
    std::map<std::string, int> type_counts;
    for (size_t i = 0; i < tensors.size(); ++i) {
        const GgufTensorInfo& tensor = file_->tensors()[i];
        SCOPED_TRACE(tensor.name);
        EXPECT_EQ(tensor.name, tensors[i]["name"].get<std::string>());
        EXPECT_EQ(dtype_name(tensor.type), tensors[i]["type"].get<std::string>());
        EXPECT_EQ(tensor.ne, tensors[i]["ne"].get<std::vector<int64_t>>());
        EXPECT_EQ(file_->data_offset() + tensor.offset, tensors[i]["file_offset"].get<uint64_t>());
        ++type_counts[std::string(dtype_name(tensor.type))];
    }
    EXPECT_EQ(type_counts, expected_["type_counts"].get<decltype(type_counts)>());
}

TEST_F(DefaultModel, EveryTensorDequantisesLikeGgufPy) {
    GgufSource source(file_);
    const nlohmann::json& tensors = expected_["tensors"];
    ASSERT_EQ(source.tensors().size(), tensors.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
        const WeightInfo& tensor = source.tensors()[i];
        SCOPED_TRACE(tensor.name);
        std::vector<int64_t> row_major = tensors[i]["ne"].get<std::vector<int64_t>>();
        std::reverse(row_major.begin(), row_major.end());
        EXPECT_EQ(tensor.shape, row_major);
        Result<std::vector<float>> values = read_tensor_f32(source, tensor);
        ASSERT_TRUE(values.ok()) << values.status().message();
        ASSERT_EQ(static_cast<int64_t>(values->size()), tensor.n_elements);
        for (const nlohmann::json& spot : tensors[i]["spot"]) {
            const size_t index = spot[0].get<size_t>();
            EXPECT_EQ(std::bit_cast<uint32_t>((*values)[index]), spot[1].get<uint32_t>()) << "element " << index;
        }
        double sum = 0;
        double abs_sum = 0;
        for (float v : *values) {
            sum += v;
            abs_sum += std::fabs(v);
        }
        // gguf-py sums pairwise, we sum in order: equal up to double rounding.
        const double expected_abs_sum = tensors[i]["abs_sum"].get<double>();
        EXPECT_NEAR(sum, tensors[i]["sum"].get<double>(), 1e-9 * expected_abs_sum + 1e-9);
        EXPECT_NEAR(abs_sum, expected_abs_sum, 1e-9 * expected_abs_sum);
    }
}

TEST_F(DefaultModel, ConfigAndMemoryPlan) {
    Result<ModelConfig> config = model_config_from_gguf(*file_);
    ASSERT_TRUE(config.ok()) << config.status().message();
    EXPECT_EQ(config->architecture, "gemma3");
    EXPECT_EQ(config->n_layers, 18);
    EXPECT_EQ(config->hidden_size, 640);
    EXPECT_EQ(config->vocab_size, 262144);
    EXPECT_EQ(config->sliding_window, 512);
    // Gemma 3: full attention at layers 5, 11, 17 (HF layer_types), the rest sliding.
    EXPECT_EQ(config->layer_pattern(), "SSSSSF SSSSSF SSSSSF");
    EXPECT_EQ(config->layers[5].head_dim, 256);
    EXPECT_EQ(config->layers[5].n_kv_heads, 1);
    // 3 full layers x 1 kv head x (256 + 256) x 2 bytes
    EXPECT_EQ(kv_bytes_per_token(*config), 3 * 512 * 2);

    GgufSource source(file_);
    const MemoryPlan plan = plan_memory(*config, source, {.context = 4096});
    // Sliding rings: window 512 plus the rest of a 512-token attention step (CUDA's default
    // chunk of 2048 takes its sliding attention in steps of kSlidingAttentionStep).
    EXPECT_EQ(plan.sliding_ring_entries, 512 + 512 - 1);
    EXPECT_EQ(plan.kv_cache_bytes, 3 * 4096 * 1024 + 15 * 1023 * 1024);
    EXPECT_GT(plan.weight_bytes, 200 << 20);
    EXPECT_LT(plan.weight_bytes, 400 << 20);
}

}  // namespace
}  // namespace kestrel
