// HfConfig against tests/fixtures/hf_tiny/config.json (gemma3-like, nested text_config) and
// small configs written inline.
#include <gtest/gtest.h>

#include "test_support.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <vector>

#include "io/hf_config.h"

namespace kestrel {
namespace {

using testing::expect_error;

namespace fs = std::filesystem;

const fs::path kFixture = fs::path(KESTREL_SOURCE_DIR) / "tests" / "fixtures" / "hf_tiny";


HfConfig parse_ok(const std::string& text) {
    Result<HfConfig> config = HfConfig::parse(text, "test/config.json");
    EXPECT_TRUE(config.ok()) << config.status().message();
    return config.ok() ? std::move(config).value() : HfConfig();
}

TEST(HfConfig, LoadsFixtureFromFolderOrFile) {
    Result<HfConfig> from_folder = load_hf_config(kFixture);
    ASSERT_TRUE(from_folder.ok()) << from_folder.status().message();
    EXPECT_EQ(from_folder->display_name, (kFixture / "config.json").string());
    Result<HfConfig> from_file = load_hf_config(kFixture / "config.json");
    ASSERT_TRUE(from_file.ok()) << from_file.status().message();
    EXPECT_EQ(from_file->root, from_folder->root);
}

TEST(HfConfig, TextConfigNesting) {
    Result<HfConfig> config = load_hf_config(kFixture);
    ASSERT_TRUE(config.ok()) << config.status().message();
    EXPECT_TRUE(config->nested_text);
    EXPECT_EQ(config->model_type, "gemma3_text");  // the text config's, not the root's "gemma3"
    EXPECT_EQ(config->root.at("model_type"), "gemma3");
    EXPECT_EQ(config->architectures, std::vector<std::string>{"Gemma3ForConditionalGeneration"});

    EXPECT_EQ(config->get_int("hidden_size").value(), 64);
    EXPECT_EQ(config->get_int("num_hidden_layers").value(), 2);
    EXPECT_EQ(config->get_int("head_dim").value(), 16);
    EXPECT_DOUBLE_EQ(config->get_float("rms_norm_eps").value(), 1e-6);
    EXPECT_DOUBLE_EQ(config->get_float("query_pre_attn_scalar").value(), 16.0);  // ints read as floats
    EXPECT_TRUE(config->get_bool("tie_word_embeddings").value());
    EXPECT_EQ(config->get_string("hidden_activation").value(), "gelu_pytorch_tanh");
    EXPECT_EQ(config->get_string_array("layer_types").value(),
              (std::vector<std::string>{"sliding_attention", "full_attention"}));
    EXPECT_EQ(config->get_int_array("eos_token_id").value(), (std::vector<int64_t>{1, 106}));

    // Root-only settings are not in the text config, but find_root reaches them.
    EXPECT_FALSE(config->has("image_token_index"));
    ASSERT_NE(config->find_root("image_token_index"), nullptr);
    EXPECT_EQ(*config->find_root("image_token_index"), 29);
    EXPECT_EQ(*config->find_root("vision_config.patch_size"), 16);
}

TEST(HfConfig, DottedPathsReachNestedRopeParameters) {
    Result<HfConfig> config = load_hf_config(kFixture);
    ASSERT_TRUE(config.ok()) << config.status().message();
    EXPECT_DOUBLE_EQ(config->get_float("rope_parameters.full_attention.rope_theta").value(), 1e6);
    EXPECT_DOUBLE_EQ(config->get_float("rope_parameters.sliding_attention.rope_theta").value(), 1e4);
    EXPECT_EQ(config->get_string("rope_parameters.full_attention.rope_type").value(), "linear");
    EXPECT_DOUBLE_EQ(config->get_float("rope_parameters.full_attention.factor").value(), 8.0);
    EXPECT_TRUE(config->has("rope_parameters.full_attention"));
    EXPECT_FALSE(config->has("rope_parameters.chunked_attention.rope_theta"));
    EXPECT_EQ(config->find("hidden_size.deeper"), nullptr);  // through a non-object
    expect_error(config->get_float("rope_parameters.global.rope_theta"), StatusCode::kNotFound,
                 {"config.json", "field 'text_config.rope_parameters.global.rope_theta' is missing"});
}

TEST(HfConfig, NullCountsAsAbsent) {
    Result<HfConfig> config = load_hf_config(kFixture);
    ASSERT_TRUE(config.ok()) << config.status().message();
    ASSERT_NE(config->find("final_logit_softcapping"), nullptr);
    EXPECT_FALSE(config->has("final_logit_softcapping"));
    EXPECT_DOUBLE_EQ(config->get_float_or("final_logit_softcapping", 0.0).value(), 0.0);
    EXPECT_EQ(config->get_int_or("sliding_window", 4096).value(), 512);  // present: the value wins
    EXPECT_EQ(config->get_int_or("no_such_key", 7).value(), 7);
    EXPECT_FALSE(config->get_bool_or("no_such_key", false).value());
    EXPECT_EQ(config->get_string_or("no_such_key", "x").value(), "x");
    expect_error(config->get_float("final_logit_softcapping"), StatusCode::kNotFound,
                 {"config.json", "'text_config.final_logit_softcapping' is null"});
}

TEST(HfConfig, WrongTypesAreErrorsNamingTheField) {
    Result<HfConfig> config = load_hf_config(kFixture);
    ASSERT_TRUE(config.ok()) << config.status().message();
    expect_error(config->get_int("rms_norm_eps"), StatusCode::kCorruptFile,
                 {"config.json", "field 'text_config.rms_norm_eps'", "expected an integer"});
    expect_error(config->get_string("hidden_size"), StatusCode::kCorruptFile,
                 {"config.json", "field 'text_config.hidden_size'", "expected a string"});
    expect_error(config->get_bool("hidden_size"), StatusCode::kCorruptFile, {"'text_config.hidden_size'"});
    expect_error(config->get_int_array("layer_types"), StatusCode::kCorruptFile,
                 {"'text_config.layer_types'", "expected an array of integers"});
    expect_error(config->get_string_array("hidden_size"), StatusCode::kCorruptFile, {"'text_config.hidden_size'"});
    expect_error(config->get_int("missing_key"), StatusCode::kNotFound,
                 {"config.json", "field 'text_config.missing_key' is missing"});
    // A default never hides a field of the wrong type.
    expect_error(config->get_int_or("hidden_activation", 3), StatusCode::kCorruptFile,
                 {"'text_config.hidden_activation'"});
}

TEST(HfConfig, FlatConfigIsItsOwnTextConfig) {
    const HfConfig config = parse_ok(R"({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
        "hidden_size": 1024, "max_position_embeddings": 40960.0, "rope_theta": 1000000,
        "sliding_window": null, "text_config": null})");
    EXPECT_FALSE(config.nested_text);
    EXPECT_EQ(config.model_type, "qwen3");
    EXPECT_EQ(config.get_int("hidden_size").value(), 1024);
    EXPECT_EQ(config.get_int("max_position_embeddings").value(), 40960);  // integral float
    EXPECT_DOUBLE_EQ(config.get_float("rope_theta").value(), 1e6);
    expect_error(config.get_int("nope"), StatusCode::kNotFound, {"test/config.json", "field 'nope' is missing"});
}

TEST(HfConfig, ModelTypeFallsBackToTheRoot) {
    const HfConfig config = parse_ok(R"({"model_type": "qwen3_5_moe", "text_config": {"hidden_size": 8}})");
    EXPECT_TRUE(config.nested_text);
    EXPECT_EQ(config.model_type, "qwen3_5_moe");
    EXPECT_TRUE(config.architectures.empty());
    EXPECT_EQ(parse_ok("{}").model_type, "");
}

TEST(HfConfig, IntegerConversionsAreExact) {
    const HfConfig config = parse_ok(R"({"a": 2.5, "b": 1e300, "c": -3, "d": 18446744073709551615,
        "e": [1, 2.0, 3], "f": [1, "2"], "g": [0.5, 1]})");
    expect_error(config.get_int("a"), StatusCode::kCorruptFile, {"field 'a'"});
    expect_error(config.get_int("b"), StatusCode::kCorruptFile, {"field 'b'"});
    EXPECT_EQ(config.get_int("c").value(), -3);
    expect_error(config.get_int("d"), StatusCode::kCorruptFile, {"field 'd'"});
    EXPECT_EQ(config.get_int_array("e").value(), (std::vector<int64_t>{1, 2, 3}));
    expect_error(config.get_int_array("f"), StatusCode::kCorruptFile, {"field 'f'"});
    EXPECT_EQ(config.get_float_array("g").value(), (std::vector<double>{0.5, 1.0}));
}

TEST(HfConfig, MalformedFilesAreOneLineErrors) {
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"{\"hidden_size\": ", "invalid JSON"},
        {"[1, 2]", "expected a JSON object"},
        {"", "invalid JSON"},
        {R"({"text_config": 5})", "'text_config'"},
        {R"({"model_type": 5})", "'model_type'"},
        {R"({"text_config": {"model_type": ["x"]}})", "'text_config.model_type'"},
        {R"({"architectures": "Gemma3ForCausalLM"})", "'architectures'"},
        {R"({"architectures": [1]})", "'architectures'"},
        {"{\"a\":" + std::string(10000, '[') + std::string(10000, ']') + "}", "nested"},
    };
    for (const auto& [text, mention] : cases) {
        SCOPED_TRACE(text.substr(0, 60));
        expect_error(HfConfig::parse(text, "test/config.json"), StatusCode::kCorruptFile,
                     {"test/config.json", mention});
    }
}

TEST(HfConfig, MissingFileIsNotFound) {
    expect_error(load_hf_config(kFixture / "no_such_dir"), StatusCode::kNotFound, {"no_such_dir"});
    const fs::path empty = fs::temp_directory_path() / ("kestrel_hf_config_empty_" + std::to_string(::getpid()));
    fs::create_directories(empty);
    expect_error(load_hf_config(empty), StatusCode::kNotFound, {(empty / "config.json").string()});
    fs::remove_all(empty);
}

}  // namespace
}  // namespace kestrel
