// ModelConfig from config.json and from GGUF metadata, held against the published shapes of
// the target models (../shared/specs/gemma4-and-gemma3.md §1, §7.1, §8.1,
// ../shared/specs/qwen35-moe.md §1.1, ../shared/specs/gguf-layouts.md), the errors a bad file
// gives, and `kestrel info` on the tiny HF fixture folder.
#include <gtest/gtest.h>

#include "test_support.h"

#include <algorithm>
#include <filesystem>
#include <initializer_list>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/gguf_writer.h"
#include "io/hf_config.h"
#include "models/model_config.h"
#include "target_models.h"

namespace kestrel {
namespace {

using testing::expect_error;

using nlohmann::json;
using namespace test_support;

// ---- helpers -----------------------------------------------------------------------------------

Result<ModelConfig> from_json(const json& config_json, const std::string& name = "models/test/config.json") {
    Result<HfConfig> hf = HfConfig::parse(config_json.dump(), name);
    if (!hf.ok()) return hf.status();
    return model_config_from_hf(*hf);
}

Result<ModelConfig> from_gguf(const GgufWriter& writer, const std::string& name = "models/test.gguf") {
    Result<std::vector<uint8_t>> bytes = writer.to_bytes();
    if (!bytes.ok()) return bytes.status();
    Result<GgufFile> file = GgufFile::parse(*bytes, name);  // `bytes` outlives `file`
    if (!file.ok()) return file.status();
    return model_config_from_gguf(*file);
}

// A small F32 tensor: only its name matters to ModelConfig.
void add_tiny_tensor(GgufWriter& writer, const std::string& name) {
    const Status status = writer.add_tensor(name, DType::kF32, {4}, std::vector<uint8_t>(16, 0));
    ASSERT_TRUE(status.ok()) << status.message();
}


std::string repeat_group(const std::string& group, int times) {
    std::string out;
    for (int i = 0; i < times; ++i) out += (i ? " " : "") + group;
    return out;
}

void expect_same_layers(const ModelConfig& a, const ModelConfig& b) {
    ASSERT_EQ(a.layers.size(), b.layers.size());
    for (size_t i = 0; i < a.layers.size(); ++i) {
        SCOPED_TRACE("layer " + std::to_string(i));
        EXPECT_EQ(a.layers[i].kind, b.layers[i].kind);
        EXPECT_EQ(a.layers[i].n_kv_heads, b.layers[i].n_kv_heads);
        EXPECT_EQ(a.layers[i].head_dim, b.layers[i].head_dim);
        EXPECT_EQ(a.layers[i].v_head_dim, b.layers[i].v_head_dim);
        EXPECT_EQ(a.layers[i].k_eq_v, b.layers[i].k_eq_v);
    }
}

// gemma4-and-gemma3.md §1: everything a Gemma 4 31B config must come out as, whichever file.
void expect_gemma4_31b(const ModelConfig& c) {
    EXPECT_EQ(c.architecture, "gemma4");
    EXPECT_EQ(c.vocab_size, 262144);
    EXPECT_EQ(c.hidden_size, 5376);
    EXPECT_EQ(c.ffn_size, 21504);
    EXPECT_EQ(c.n_layers, 60);
    EXPECT_EQ(c.n_heads, 32);
    EXPECT_EQ(c.context_length, 262144);
    EXPECT_EQ(c.sliding_window, 1024);
    EXPECT_EQ(c.count_layers(LayerKind::kSliding), 50);
    EXPECT_EQ(c.count_layers(LayerKind::kFull), 10);
    EXPECT_EQ(c.count_layers(LayerKind::kLinear), 0);
    EXPECT_EQ(c.layer_pattern(), repeat_group("SSSSSF", 10));
    ASSERT_EQ(c.layers.size(), 60u);
    for (int64_t i = 0; i < 60; ++i) {
        SCOPED_TRACE("layer " + std::to_string(i));
        const LayerConfig& layer = c.layers[i];
        if ((i + 1) % 6 == 0) {  // full: 4 kv heads x 512, V is the k projection
            EXPECT_EQ(layer.kind, LayerKind::kFull);
            EXPECT_EQ(layer.n_kv_heads, 4);
            EXPECT_EQ(layer.head_dim, 512);
            EXPECT_EQ(layer.v_head_dim, 512);
            EXPECT_TRUE(layer.k_eq_v);
        } else {  // sliding: 16 kv heads x 256 with their own v_proj
            EXPECT_EQ(layer.kind, LayerKind::kSliding);
            EXPECT_EQ(layer.n_kv_heads, 16);
            EXPECT_EQ(layer.head_dim, 256);
            EXPECT_EQ(layer.v_head_dim, 256);
            EXPECT_FALSE(layer.k_eq_v);
        }
    }
    EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
    EXPECT_DOUBLE_EQ(c.rope_theta_sliding, 1e4);
    EXPECT_NEAR(c.rms_norm_eps, 1e-6, 1e-12);
    EXPECT_DOUBLE_EQ(c.final_logit_softcap, 30.0);
    EXPECT_EQ(c.n_experts, 0);
}

// qwen35-moe.md §1.1 and gguf-layouts.md "qwen35moe".
void expect_qwen35_35b_a3b(const ModelConfig& c) {
    EXPECT_EQ(c.architecture, "qwen35moe");
    EXPECT_EQ(c.vocab_size, 248320);
    EXPECT_EQ(c.hidden_size, 2048);
    EXPECT_EQ(c.n_layers, 40);
    EXPECT_EQ(c.n_heads, 16);
    EXPECT_EQ(c.context_length, 262144);
    EXPECT_EQ(c.sliding_window, 0);
    EXPECT_EQ(c.count_layers(LayerKind::kLinear), 30);
    EXPECT_EQ(c.count_layers(LayerKind::kFull), 10);
    EXPECT_EQ(c.count_layers(LayerKind::kSliding), 0);
    EXPECT_EQ(c.layer_pattern(), repeat_group("LLLF", 10));
    ASSERT_EQ(c.layers.size(), 40u);
    for (int64_t i = 0; i < 40; ++i) {
        SCOPED_TRACE("layer " + std::to_string(i));
        EXPECT_EQ(c.layers[i].kind, (i + 1) % 4 == 0 ? LayerKind::kFull : LayerKind::kLinear);
        if (c.layers[i].kind == LayerKind::kFull) {
            EXPECT_EQ(c.layers[i].n_kv_heads, 2);
            EXPECT_EQ(c.layers[i].head_dim, 256);
            EXPECT_EQ(c.layers[i].v_head_dim, 256);
            EXPECT_FALSE(c.layers[i].k_eq_v);
        }
    }
    EXPECT_EQ(c.n_experts, 256);
    EXPECT_EQ(c.n_experts_used, 8);
    EXPECT_EQ(c.expert_ffn_size, 512);
    EXPECT_EQ(c.shared_expert_ffn_size, 512);
    EXPECT_EQ(c.linear_conv_kernel, 4);
    EXPECT_EQ(c.linear_k_heads, 16);
    EXPECT_EQ(c.linear_v_heads, 32);
    EXPECT_EQ(c.linear_k_head_dim, 128);
    EXPECT_EQ(c.linear_v_head_dim, 128);
    EXPECT_DOUBLE_EQ(c.rope_theta, 1e7);
    EXPECT_NEAR(c.rms_norm_eps, 1e-6, 1e-12);
}

// ---- Gemma 4 31B -------------------------------------------------------------------------------

TEST(ModelConfigGemma4, ThirtyOneBFromConfigJson) {
    Result<ModelConfig> config = from_json(gemma4_31b_config_json());
    ASSERT_TRUE(config.ok()) << config.status().message();
    expect_gemma4_31b(*config);
    EXPECT_EQ(config->name, "gemma4_text");
}

TEST(ModelConfigGemma4, FlatTextOnlyConfigJson) {
    // A text-only checkpoint keeps the same fields at the root, model_type gemma4_text.
    Result<ModelConfig> config = from_json(gemma4_31b_text_config());
    ASSERT_TRUE(config.ok()) << config.status().message();
    expect_gemma4_31b(*config);
}

TEST(ModelConfigGemma4, RootModelTypeGemma4) {
    // model_type "gemma4" (the multimodal wrapper's spelling) in the text config maps too.
    json text = gemma4_31b_text_config();
    text["model_type"] = "gemma4";
    Result<ModelConfig> config = from_json(gemma4_31b_config_json(text));
    ASSERT_TRUE(config.ok()) << config.status().message();
    expect_gemma4_31b(*config);
}

TEST(ModelConfigGemma4, TransformersFivePerLayerConfigGivesTheSameModel) {
    Result<ModelConfig> global = from_json(gemma4_31b_config_json());
    Result<ModelConfig> per_layer = from_json(gemma4_31b_config_json(gemma4_31b_text_config_per_layer()));
    ASSERT_TRUE(global.ok()) << global.status().message();
    ASSERT_TRUE(per_layer.ok()) << per_layer.status().message();
    expect_gemma4_31b(*per_layer);
    expect_same_layers(*global, *per_layer);
}

TEST(ModelConfigGemma4, PerLayerConfigAcceptsUnpaddedIndices) {
    json text = gemma4_31b_text_config_per_layer();
    text["per_layer_config"]["5"] = text["per_layer_config"]["05"];
    text["per_layer_config"].erase("05");
    Result<ModelConfig> config = from_json(gemma4_31b_config_json(text));
    ASSERT_TRUE(config.ok()) << config.status().message();
    expect_gemma4_31b(*config);
}

TEST(ModelConfigGemma4, ThirtyOneBFromGgufMetadata) {
    GgufWriter writer;
    gemma4_31b_gguf_metadata(writer);
    // gguf-layouts.md: sliding layers have attn_v, full layers (5, 11, ..., 59) do not.
    for (int64_t i = 0; i < kGemma4Layers; ++i) {
        add_tiny_tensor(writer, fmt::format("blk.{}.attn_k.weight", i));
        if (!gemma4_is_full(i)) add_tiny_tensor(writer, fmt::format("blk.{}.attn_v.weight", i));
    }
    Result<ModelConfig> config = from_gguf(writer);
    ASSERT_TRUE(config.ok()) << config.status().message();
    expect_gemma4_31b(*config);
    EXPECT_EQ(config->name, "Gemma 4 31B It");

    // The same model from its config.json: identical layers.
    Result<ModelConfig> hf = from_json(gemma4_31b_config_json());
    ASSERT_TRUE(hf.ok()) << hf.status().message();
    expect_same_layers(*config, *hf);
}

TEST(ModelConfigGemma4, GgufKEqVFollowsTheAttnVTensor) {
    GgufWriter writer;
    gemma4_31b_gguf_metadata(writer);
    for (int64_t i = 0; i < kGemma4Layers; ++i) {
        // A full layer that does carry attn_v (blk.11) is an ordinary K/V layer.
        if (!gemma4_is_full(i) || i == 11) add_tiny_tensor(writer, fmt::format("blk.{}.attn_v.weight", i));
    }
    Result<ModelConfig> config = from_gguf(writer);
    ASSERT_TRUE(config.ok()) << config.status().message();
    EXPECT_TRUE(config->layers[5].k_eq_v);
    EXPECT_FALSE(config->layers[11].k_eq_v);
    EXPECT_TRUE(config->layers[17].k_eq_v);
    EXPECT_FALSE(config->layers[0].k_eq_v);  // sliding: never
}

TEST(ModelConfigGemma3, Gemma3_270mFromConfigJson) {
    // gemma4-and-gemma3.md §8.1: no layer_types in older configs, transformers' default pattern 6.
    const json text = {{"model_type", "gemma3_text"},
                       {"vocab_size", 262144},
                       {"hidden_size", 640},
                       {"intermediate_size", 2048},
                       {"num_hidden_layers", 18},
                       {"num_attention_heads", 4},
                       {"num_key_value_heads", 1},
                       {"head_dim", 256},
                       {"sliding_window", 512},
                       {"max_position_embeddings", 32768},
                       {"rope_theta", 1000000.0},
                       {"rope_local_base_freq", 10000.0},
                       {"query_pre_attn_scalar", 256},
                       {"final_logit_softcapping", nullptr}};
    Result<ModelConfig> config = from_json(text);
    ASSERT_TRUE(config.ok()) << config.status().message();
    EXPECT_EQ(config->architecture, "gemma3");
    EXPECT_EQ(config->layer_pattern(), "SSSSSF SSSSSF SSSSSF");  // full at 5, 11, 17
    EXPECT_EQ(config->layers[5].head_dim, 256);
    EXPECT_EQ(config->layers[5].n_kv_heads, 1);
    EXPECT_FALSE(config->layers[5].k_eq_v);
    EXPECT_EQ(config->sliding_window, 512);
    EXPECT_DOUBLE_EQ(config->rope_theta, 1e6);
    EXPECT_DOUBLE_EQ(config->rope_theta_sliding, 1e4);
    EXPECT_DOUBLE_EQ(config->final_logit_softcap, 0.0);  // null: none
}

// ---- Qwen3.5-35B-A3B ---------------------------------------------------------------------------

TEST(ModelConfigQwen35, FromConfigJson) {
    Result<ModelConfig> config = from_json(qwen35_config_json());
    ASSERT_TRUE(config.ok()) << config.status().message();
    expect_qwen35_35b_a3b(*config);
    EXPECT_EQ(config->name, "qwen3_5_moe_text");
}

TEST(ModelConfigQwen35, WithoutLayerTypesUsesFullAttentionInterval) {
    json text = qwen35_text_config();
    text.erase("layer_types");
    text["model_type"] = "qwen3_5_moe";
    Result<ModelConfig> config = from_json(qwen35_config_json(text));
    ASSERT_TRUE(config.ok()) << config.status().message();
    expect_qwen35_35b_a3b(*config);
}

TEST(ModelConfigQwen35, FromGgufMetadataWithoutTheMtpBlock) {
    GgufWriter writer;
    qwen35_gguf_metadata(writer);  // block_count 41, nextn_predict_layers 1
    Result<ModelConfig> config = from_gguf(writer);
    ASSERT_TRUE(config.ok()) << config.status().message();
    expect_qwen35_35b_a3b(*config);

    Result<ModelConfig> hf = from_json(qwen35_config_json());
    ASSERT_TRUE(hf.ok()) << hf.status().message();
    expect_same_layers(*config, *hf);
}

TEST(ModelConfigQwen35, GgufWithoutMtpHasFortyBlocks) {
    GgufWriter writer;
    qwen35_gguf_metadata(writer);
    writer.set("qwen35moe.block_count", gguf_u32(40));
    writer.set("qwen35moe.nextn_predict_layers", gguf_u32(0));
    Result<ModelConfig> config = from_gguf(writer);
    ASSERT_TRUE(config.ok()) << config.status().message();
    expect_qwen35_35b_a3b(*config);
}

// ---- errors ------------------------------------------------------------------------------------

TEST(ModelConfigErrors, UnknownArchitectureIsUnsupportedAndNamed) {
    json text = gemma4_31b_text_config();
    text["model_type"] = "llama";
    Result<ModelConfig> hf = from_json(text, "models/llama/config.json");
    expect_error(hf, {"models/llama/config.json", "unsupported architecture 'llama'"});
    EXPECT_EQ(hf.status().code(), StatusCode::kUnsupported);

    GgufWriter writer;
    writer.set("general.architecture", gguf_string("llama"));
    writer.set("llama.block_count", gguf_u32(32));
    Result<ModelConfig> gguf = from_gguf(writer, "models/llama.gguf");
    expect_error(gguf, {"models/llama.gguf", "unsupported architecture 'llama'"});
    EXPECT_EQ(gguf.status().code(), StatusCode::kUnsupported);
}

TEST(ModelConfigErrors, LayerTypesOfTheWrongLength) {
    json text = gemma4_31b_text_config();
    text["layer_types"].erase(text["layer_types"].size() - 1);
    Result<ModelConfig> config = from_json(gemma4_31b_config_json(text), "g4/config.json");
    expect_error(config, {"g4/config.json", "layer_types", "59", "60"});
}

TEST(ModelConfigErrors, UnknownLayerType) {
    json text = qwen35_text_config();
    text["layer_types"][0] = "chunked_attention";
    expect_error(from_json(qwen35_config_json(text), "q/config.json"), {"q/config.json", "chunked_attention"});
}

TEST(ModelConfigErrors, WrongTypedFieldsAreNamed) {
    json text = gemma4_31b_text_config();
    text["num_hidden_layers"] = "sixty";
    expect_error(from_json(gemma4_31b_config_json(text), "g4/config.json"),
                 {"g4/config.json", "num_hidden_layers", "sixty"});

    // An optional field of the wrong type is not silently defaulted.
    text = gemma4_31b_text_config();
    text["sliding_window"] = "1024";
    expect_error(from_json(gemma4_31b_config_json(text), "g4/config.json"), {"g4/config.json", "sliding_window"});

    text = gemma4_31b_text_config();
    text["attention_k_eq_v"] = 1.5;
    expect_error(from_json(gemma4_31b_config_json(text), "g4/config.json"), {"g4/config.json", "attention_k_eq_v"});

    text = gemma4_31b_text_config_per_layer();
    text["per_layer_config"]["11"]["head_dim"] = "512";
    expect_error(from_json(gemma4_31b_config_json(text), "g4/config.json"), {"g4/config.json", "head_dim"});

    GgufWriter writer;
    gemma4_31b_gguf_metadata(writer);
    writer.set("gemma4.attention.sliding_window", gguf_string("1024"));
    expect_error(from_gguf(writer, "g4.gguf"), {"g4.gguf", "gemma4.attention.sliding_window"});
}

TEST(ModelConfigErrors, MissingRequiredFieldIsNamed) {
    json text = qwen35_text_config();
    text.erase("num_key_value_heads");
    expect_error(from_json(qwen35_config_json(text), "q/config.json"), {"q/config.json", "num_key_value_heads"});

    GgufWriter without;  // no embedding_length
    without.set("general.architecture", gguf_string("qwen35moe"));
    without.set("qwen35moe.block_count", gguf_u32(40));
    expect_error(from_gguf(without, "q.gguf"), {"q.gguf", "qwen35moe.embedding_length"});
}

TEST(ModelConfigErrors, PerLayerArraysOfTheWrongLength) {
    GgufWriter writer;
    gemma4_31b_gguf_metadata(writer);
    writer.set("gemma4.attention.head_count_kv", gguf_u32_array(std::vector<uint32_t>(59, 16)));
    expect_error(from_gguf(writer, "g4.gguf"), {"g4.gguf", "gemma4.attention.head_count_kv", "59", "60"});

    GgufWriter pattern;
    gemma4_31b_gguf_metadata(pattern);
    pattern.set("gemma4.attention.sliding_window_pattern", gguf_bool_array(std::vector<bool>(61, true)));
    expect_error(from_gguf(pattern, "g4.gguf"), {"g4.gguf", "gemma4.attention.sliding_window_pattern", "61"});
}

TEST(ModelConfigErrors, ZeroLayers) {
    json text = gemma4_31b_text_config();
    text["num_hidden_layers"] = 0;
    text["layer_types"] = json::array();
    expect_error(from_json(gemma4_31b_config_json(text), "g4/config.json"), {"g4/config.json", "num_hidden_layers"});

    GgufWriter gemma;
    gemma4_31b_gguf_metadata(gemma);
    gemma.set("gemma4.block_count", gguf_u32(0));
    expect_error(from_gguf(gemma, "g4.gguf"), {"g4.gguf", "gemma4.block_count"});

    // Only the MTP block: no decoder layers left.
    GgufWriter qwen;
    qwen35_gguf_metadata(qwen);
    qwen.set("qwen35moe.block_count", gguf_u32(1));
    expect_error(from_gguf(qwen, "q.gguf"), {"q.gguf", "qwen35moe.block_count"});
}

TEST(ModelConfigErrors, NonPositivePatternPeriodIsAnErrorNotACrash) {
    // Without layer_types the pattern comes from a period; 0 used to divide by zero (SIGFPE).
    for (const int period : {0, -6}) {
        json gemma = gemma4_31b_text_config();
        gemma.erase("layer_types");
        gemma["sliding_window_pattern"] = period;
        expect_error(from_json(gemma4_31b_config_json(gemma), "g4/config.json"),
                     {"g4/config.json", "sliding_window_pattern"});

        json qwen = qwen35_text_config();
        qwen.erase("layer_types");
        qwen["full_attention_interval"] = period;
        expect_error(from_json(qwen35_config_json(qwen), "q/config.json"), {"q/config.json", "full_attention_interval"});

        GgufWriter writer;
        qwen35_gguf_metadata(writer);
        writer.set("qwen35moe.full_attention_interval", gguf_i32(period));
        expect_error(from_gguf(writer, "q.gguf"), {"q.gguf", "full_attention_interval"});
    }
}

TEST(ModelConfigErrors, KvHeadsThatDoNotDivideTheQueryHeads) {
    json text = gemma4_31b_text_config();
    text["num_global_key_value_heads"] = 5;  // 32 % 5 != 0
    expect_error(from_json(gemma4_31b_config_json(text), "g4/config.json"), {"g4/config.json", "layer 5"});
}

// ---- the tiny HF fixture through `kestrel info` ----------------------------------------------

const std::filesystem::path kTinyFixture = std::filesystem::path(KESTREL_SOURCE_DIR) / "tests" / "fixtures" / "hf_tiny";

using testing::CommandResult;
using testing::run_kestrel;

TEST(ModelConfigHfFixture, TinyConfigIsAValidGemma3TextConfig) {
    Result<HfConfig> hf = load_hf_config(kTinyFixture);
    ASSERT_TRUE(hf.ok()) << hf.status().message();
    Result<ModelConfig> config = model_config_from_hf(*hf);
    ASSERT_TRUE(config.ok()) << config.status().message();
    EXPECT_EQ(config->architecture, "gemma3");
    EXPECT_EQ(config->n_layers, 2);
    EXPECT_EQ(config->layer_pattern(), "SF");
    EXPECT_EQ(config->hidden_size, 64);
    EXPECT_EQ(config->layers[1].head_dim, 16);
    EXPECT_EQ(config->layers[1].n_kv_heads, 1);
    EXPECT_EQ(config->sliding_window, 512);
    EXPECT_DOUBLE_EQ(config->rope_theta, 1e6);
    EXPECT_DOUBLE_EQ(config->rope_theta_sliding, 1e4);
}

TEST(ModelConfigHfFixture, KestrelInfoDescribesTheFolder) {
    CommandResult result = run_kestrel("info -m '" + kTinyFixture.string() + "'");
    ASSERT_TRUE(result.exited);
    ASSERT_EQ(result.exit_code, 0) << result.err;
    EXPECT_NE(result.out.find("Hugging Face folder"), std::string::npos) << result.out;
    EXPECT_NE(result.out.find("gemma3 (gemma3_text)"), std::string::npos) << result.out;
    EXPECT_NE(result.out.find("2: 1 sliding, 1 full; sliding window 512"), std::string::npos) << result.out;
    EXPECT_NE(result.out.find("layer pattern   SF\n"), std::string::npos) << result.out;
    EXPECT_NE(result.out.find("4 q heads, 1 kv heads, head dim 16"), std::string::npos) << result.out;
    EXPECT_NE(result.out.find("at context 4096"), std::string::npos) << result.out;
    EXPECT_TRUE(result.err.empty()) << result.err;
}

TEST(ModelConfigHfFixture, KestrelInfoJson) {
    CommandResult result = run_kestrel("info --json -c 2048 -m '" + kTinyFixture.string() + "'");
    ASSERT_TRUE(result.exited);
    ASSERT_EQ(result.exit_code, 0) << result.err;
    const json info = json::parse(result.out);
    EXPECT_EQ(info["format"], "hf_folder");
    EXPECT_EQ(info["architecture"], "gemma3");
    EXPECT_EQ(info["layers"]["count"], 2);
    EXPECT_EQ(info["layers"]["pattern"], "SF");
    EXPECT_EQ(info["vocab_size"], 32);
    // Parameters: every element of every tensor the fixture's generator wrote (expected.json),
    // none of them in a vision tower.
    const json expected = json::parse(testing::read_text_file(kTinyFixture / "expected.json"));
    int64_t elements = 0;
    for (const auto& [name, tensor] : expected["tensors"].items()) {
        int64_t n = 1;
        for (const json& extent : tensor["shape"]) n *= extent.get<int64_t>();
        elements += n;
    }
    EXPECT_EQ(info["tensors"]["count"], expected["tensors"].size());
    EXPECT_EQ(info["parameters"], elements);
    // 1 kv head x (16 + 16) x 2 bytes in the full layer; the sliding ring holds the window of
    // 512 plus the rest of a 512-token attention step (kSlidingAttentionStep; 2048-token chunks
    // take their sliding attention in steps).
    EXPECT_EQ(info["memory"]["kv_bytes_per_token"], 64);
    EXPECT_EQ(info["memory"]["sliding_ring_entries"], 512 + 512 - 1);
    EXPECT_EQ(info["memory"]["kv_cache"], 2048 * 64 + 1023 * 64);
}

}  // namespace
}  // namespace kestrel
