// Full-size models without their weights: the tensor shapes a ModelConfig implies
// (model_shapes.h) against the test-only tables of the real files (target_models.h, written from
// ../shared/specs/), the built-in config.json texts (dummy_configs.h), and `kestrel info --dummy`.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include "io/hf_config.h"
#include "io/model_files.h"
#include "models/dummy_configs.h"
#include "models/model_config.h"
#include "models/model_shapes.h"
#include "runtime/memory_plan.h"
#include "target_models.h"
#include "test_support.h"

namespace kestrel {
namespace {

using testing::CommandResult;
using testing::run_kestrel;

ModelConfig dummy_config(std::string_view name) {
    Result<std::string> text = dummy_config_json(name);
    EXPECT_TRUE(text.ok()) << text.status().message();
    Result<HfConfig> hf = HfConfig::parse(text.ok() ? *text : "{}", std::string(name));
    EXPECT_TRUE(hf.ok()) << hf.status().message();
    Result<ModelConfig> config = model_config_from_hf(*hf);
    EXPECT_TRUE(config.ok()) << config.status().message();
    return config.ok() ? *config : ModelConfig{};
}

// name -> shape of the tensors the engine loads.
std::map<std::string, std::vector<int64_t>> loaded_shapes(const ModelConfig& config, std::span<const WeightInfo> tensors) {
    std::map<std::string, std::vector<int64_t>> shapes;
    for (const WeightInfo& tensor : tensors) {
        if (!is_loaded_tensor(config, tensor.name)) continue;
        EXPECT_TRUE(shapes.emplace(tensor.name, tensor.shape).second) << tensor.name;
    }
    return shapes;
}

void expect_same_shapes(const std::map<std::string, std::vector<int64_t>>& ours,
                        const std::map<std::string, std::vector<int64_t>>& expected) {
    EXPECT_EQ(ours.size(), expected.size());
    for (const auto& [name, shape] : expected) {
        const auto found = ours.find(name);
        if (found == ours.end()) {
            ADD_FAILURE() << "missing " << name;
        } else {
            EXPECT_EQ(found->second, shape) << name;
        }
    }
    for (const auto& [name, shape] : ours) EXPECT_TRUE(expected.contains(name)) << "extra " << name;
}

// ---- the built-in configs are the test tables' configs ------------------------------------------

TEST(DummyConfigs, AreTheTargetModelsConfigs) {
    EXPECT_EQ(nlohmann::json::parse(*dummy_config_json("gemma4-31b")), test_support::gemma4_31b_config_json());
    EXPECT_EQ(nlohmann::json::parse(*dummy_config_json("qwen3.5-35b-a3b")), test_support::qwen35_config_json());
}

TEST(DummyConfigs, UnknownNameListsTheKnownOnes) {
    testing::expect_error(dummy_config_json("llama-70b"), StatusCode::kNotFound,
                          {"llama-70b", "gemma4-31b", "qwen3.5-35b-a3b", "gemma3-270m"});
    EXPECT_EQ(dummy_model_names().size(), 3u);
    for (std::string_view name : dummy_model_names()) EXPECT_TRUE(dummy_config_json(name).ok()) << name;
}

TEST(DummyConfigs, Gemma3MatchesTheDefaultModel) {
    Result<std::filesystem::path> path = default_model_path();
    if (!path.ok()) GTEST_SKIP() << path.status().message();
    Result<ModelFiles> files = open_model_files(*path);
    ASSERT_TRUE(files.ok()) << files.status().message();
    Result<ModelConfig> real = model_config_from_gguf(*files->gguf);
    ASSERT_TRUE(real.ok()) << real.status().message();
    const ModelConfig dummy = dummy_config("gemma3-270m");
    EXPECT_EQ(dummy.architecture, real->architecture);
    EXPECT_EQ(dummy.vocab_size, real->vocab_size);
    EXPECT_EQ(dummy.hidden_size, real->hidden_size);
    EXPECT_EQ(dummy.ffn_size, real->ffn_size);
    EXPECT_EQ(dummy.n_heads, real->n_heads);
    EXPECT_EQ(dummy.context_length, real->context_length);
    EXPECT_EQ(dummy.sliding_window, real->sliding_window);
    EXPECT_EQ(dummy.layer_pattern(), real->layer_pattern());
    EXPECT_EQ(dummy.rope_theta, real->rope_theta);
    EXPECT_EQ(dummy.rope_theta_sliding, real->rope_theta_sliding);
    // Every tensor of the real file, by name and shape, from either config.
    const auto file_shapes = loaded_shapes(*real, files->weights->tensors());
    expect_same_shapes(loaded_shapes(dummy, model_tensor_shapes(dummy, DType::kQ4_K)), file_shapes);
    expect_same_shapes(loaded_shapes(*real, model_tensor_shapes(*real, DType::kQ4_K)), file_shapes);
}

// ---- model_tensor_shapes against the real files' tables -------------------------------------------

TEST(ModelTensorShapes, Gemma4IsTheRealFilesTable) {
    const ModelConfig config = dummy_config("gemma4-31b");
    const std::vector<WeightInfo> ours = model_tensor_shapes(config, DType::kQ4_K);
    EXPECT_EQ(ours.size(), 833u);  // gguf-layouts.md
    const test_support::FakeWeightSource real = test_support::gemma4_31b_gguf_weights();
    expect_same_shapes(loaded_shapes(config, ours), loaded_shapes(config, real.tensors()));
    // transformers 5's per_layer_config spelling gives the same model.
    Result<HfConfig> hf = HfConfig::parse(
        test_support::gemma4_31b_config_json(test_support::gemma4_31b_text_config_per_layer()).dump(), "per-layer");
    ASSERT_TRUE(hf.ok());
    Result<ModelConfig> per_layer = model_config_from_hf(*hf);
    ASSERT_TRUE(per_layer.ok()) << per_layer.status().message();
    expect_same_shapes(loaded_shapes(config, model_tensor_shapes(*per_layer, DType::kQ4_K)),
                       loaded_shapes(config, real.tensors()));
}

TEST(ModelTensorShapes, Qwen35IsTheRealFilesTableWithoutMtp) {
    const ModelConfig config = dummy_config("qwen3.5-35b-a3b");
    const std::vector<WeightInfo> ours = model_tensor_shapes(config, DType::kQ4_K);
    const test_support::FakeWeightSource real = test_support::qwen35_gguf_weights();
    const auto real_loaded = loaded_shapes(config, real.tensors());
    EXPECT_EQ(real_loaded.size(), 753u - 20u);  // the MTP block blk.40 holds 20 tensors
    EXPECT_EQ(ours.size(), real_loaded.size());
    expect_same_shapes(loaded_shapes(config, ours), real_loaded);
}

TEST(ModelTensorShapes, TypesFollowTheMatrixType) {
    const ModelConfig config = dummy_config("qwen3.5-35b-a3b");
    for (const DType matrix_type : {DType::kQ4_K, DType::kBF16}) {
        for (const WeightInfo& tensor : model_tensor_shapes(config, matrix_type)) {
            const bool kept_f32 = tensor.shape.size() == 1 || tensor.name.find("ffn_gate_inp") != std::string::npos ||
                                  tensor.name.find("ssm_conv1d") != std::string::npos;
            if (tensor.shape.size() == 1) {
                EXPECT_EQ(tensor.dtype, DType::kF32) << tensor.name;
            } else if (kept_f32 && matrix_type == DType::kQ4_K) {
                EXPECT_EQ(tensor.dtype, DType::kF32) << tensor.name;
            } else {
                EXPECT_EQ(tensor.dtype, matrix_type) << tensor.name;
            }
        }
    }
    // Gemma 3 270M rows of 640 do not hold whole 256-element blocks: Q4_0, as llama-quant falls back.
    const ModelConfig gemma3 = dummy_config("gemma3-270m");
    for (const WeightInfo& tensor : model_tensor_shapes(gemma3, DType::kQ4_K)) {
        if (tensor.name == "blk.0.attn_q.weight") {
            EXPECT_EQ(tensor.dtype, DType::kQ4_0);
        }
        if (tensor.name == "blk.0.attn_output.weight") {
            EXPECT_EQ(tensor.dtype, DType::kQ4_K);  // rows of 1024
        }
    }
}

TEST(ModelTensorShapes, ShapeOnlySourceHoldsNoBytes) {
    const ModelConfig config = dummy_config("gemma4-31b");
    const ShapeOnlySource source("gemma4-31b", model_tensor_shapes(config, DType::kBF16));
    EXPECT_EQ(source.description(), "synthetic gemma4-31b");
    const WeightInfo* embedding = source.find("token_embd.weight");
    ASSERT_NE(embedding, nullptr);
    EXPECT_EQ(embedding->n_bytes, int64_t{262144} * 5376 * 2);
    EXPECT_TRUE(source.bytes(*embedding).empty());
    EXPECT_EQ(source.find("output.weight"), nullptr);  // tied
}

// ---- kestrel info --dummy ---------------------------------------------------------------------------

nlohmann::json info_json(const std::string& arguments) {
    CommandResult result = run_kestrel("info " + arguments + " --json");
    EXPECT_TRUE(result.exited);
    EXPECT_EQ(result.exit_code, 0) << result.err;
    return nlohmann::json::parse(result.out, nullptr, false);
}

TEST(CliInfoDummy, Gemma4_31b) {
    const nlohmann::json info = info_json("--dummy gemma4-31b");
    EXPECT_EQ(info["architecture"], "gemma4");
    EXPECT_EQ(info["format"], "synthetic");
    EXPECT_EQ(info["synthetic"]["weights"], "W4");
    const double parameters = info["parameters"].get<double>();
    EXPECT_NEAR(parameters / 30.70e9, 1.0, 0.005) << parameters;  // gemma4-and-gemma3.md §1.1
    EXPECT_FALSE(info.contains("active_parameters"));
    EXPECT_EQ(info["memory"]["kv_bytes_per_token"], 81920);       // 10 full layers x 8 KiB
    EXPECT_EQ(info["layers"]["sliding"], 50);
    EXPECT_EQ(info["layers"]["full"], 10);
    EXPECT_EQ(info["layers"]["pattern"], "SSSSSF SSSSSF SSSSSF SSSSSF SSSSSF SSSSSF SSSSSF SSSSSF SSSSSF SSSSSF");
    EXPECT_EQ(info["tensors"]["count"], 833);
    EXPECT_EQ(info["memory"]["context"], 262144);
    // W4 at 4.625 bits/weight for the matrices: about 30.7e9 * 37 / 64 bytes.
    EXPECT_NEAR(info["memory"]["weights"].get<double>() / (parameters * 37 / 64), 1.0, 0.001);
}

TEST(CliInfoDummy, Qwen35_35bA3b) {
    const nlohmann::json info = info_json("--dummy qwen3.5-35b-a3b -c 4096");
    EXPECT_EQ(info["architecture"], "qwen35moe");
    // qwen35-moe.md §1.2: 35.51 B with the MTP block (gguf-layouts.md), which the engine skips.
    const double parameters = info["parameters"].get<double>();
    EXPECT_GT(parameters, 34.5e9);
    EXPECT_LT(parameters, 34.9e9);
    // Active per token, counting the input embedding (the spec's 2.95 B leaves it out).
    const double active = info["active_parameters"].get<double>();
    EXPECT_GT(active, 3.0e9);
    EXPECT_LT(active, 3.5e9);
    EXPECT_NEAR(active - 248320.0 * 2048, 2.95e9, 0.02e9);
    EXPECT_EQ(info["layers"]["linear"], 30);
    EXPECT_EQ(info["layers"]["full"], 10);
    EXPECT_EQ(info["layers"]["pattern"], "LLLF LLLF LLLF LLLF LLLF LLLF LLLF LLLF LLLF LLLF");
    EXPECT_EQ(info["memory"]["context"], 4096);
    EXPECT_EQ(info["memory"]["kv_bytes_per_token"], 10 * 2 * (256 + 256) * 2);
    EXPECT_GT(info["memory"]["recurrent_state"].get<int64_t>(), 0);
}

TEST(CliInfoDummy, TextSaysWhatThePlanAssumes) {
    CommandResult result = run_kestrel("info --dummy gemma4-31b -c 131072");
    ASSERT_TRUE(result.exited);
    ASSERT_EQ(result.exit_code, 0) << result.err;
    EXPECT_NE(result.out.find("synthetic gemma4-31b"), std::string::npos) << result.out;
    EXPECT_NE(result.out.find("W4 weights"), std::string::npos) << result.out;
    EXPECT_NE(result.out.find("at context 131072"), std::string::npos) << result.out;
}

TEST(CliInfoDummy, UnknownNameExitsWithOneLine) {
    CommandResult result = run_kestrel("info --dummy llama-70b");
    ASSERT_TRUE(result.exited);
    EXPECT_EQ(result.exit_code, 1);
    EXPECT_EQ(std::count(result.err.begin(), result.err.end(), '\n'), 1) << result.err;
    for (const char* name : {"llama-70b", "gemma4-31b", "qwen3.5-35b-a3b", "gemma3-270m"}) {
        EXPECT_NE(result.err.find(name), std::string::npos) << result.err;
    }
}

TEST(CliInfoDummy, FolderWithOnlyAConfigPlansFromShapes) {
    const std::filesystem::path dir =
        std::filesystem::temp_directory_path() / ("kestrel_config_only_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    std::ofstream(dir / "config.json") << *dummy_config_json("qwen3.5-35b-a3b");
    const nlohmann::json folder = info_json("-m '" + dir.string() + "'");
    const nlohmann::json dummy = info_json("--dummy qwen3.5-35b-a3b");
    EXPECT_EQ(folder["format"], "hf_folder");
    EXPECT_EQ(folder["synthetic"]["weights"], "BF16");
    EXPECT_EQ(folder["parameters"], dummy["parameters"]);
    EXPECT_EQ(folder["active_parameters"], dummy["active_parameters"]);
    // The plan follows --weights for the folder's bf16 matrices: about 2 bytes per parameter as
    // bf16 but for the routed experts, which stay W8 (9/8 bytes: the CUDA expert kernels read W4
    // and W8), and 37/64 as W4 (the default). The experts are the idle share of the parameters
    // times 256 / (256 - 8).
    const nlohmann::json as_bf16 = info_json("-m '" + dir.string() + "' --weights bf16");
    const double parameters = folder["parameters"].get<double>();
    const double experts = (parameters - folder["active_parameters"].get<double>()) * 256.0 / 248.0;
    EXPECT_NEAR(as_bf16["memory"]["weights"].get<double>() /
                    (2 * (parameters - experts) + 9.0 / 8.0 * experts),
                1.0, 0.01);
    EXPECT_NEAR(folder["memory"]["weights"].get<double>() / (parameters * 37 / 64), 1.0, 0.01);
    EXPECT_NE(run_kestrel("info -m '" + dir.string() + "' --weights w3").exit_code, 0);
    CommandResult text = run_kestrel("info -m '" + dir.string() + "'");
    EXPECT_EQ(text.exit_code, 0) << text.err;
    EXPECT_NE(text.out.find("holds no weights"), std::string::npos) << text.out;
    std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kestrel
