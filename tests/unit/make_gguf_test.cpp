// Synthetic GGUF files (models/dummy_gguf.h, `kestrel make-gguf`): the block encoders against
// our dequantiser (every element within half a step, and steps no coarser than the block needs),
// the Q4_K_M mix against the real Gemma 3 270M Q4_K_M file llama-quantize wrote (every tensor's
// name, shape and type) and against the spec's Gemma 4 31B file size, and written files read
// back: names, shapes, types, metadata, the regenerated values, and the CPU engine decoding.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include "core/half.h"
#include "io/dequantize.h"
#include "io/dequantize_blocks.h"
#include "io/gguf.h"
#include "io/model_files.h"
#include "models/dummy_gguf.h"
#include "models/model_shapes.h"
#include "runtime/engine.h"
#include "runtime/session.h"
#include "test_support.h"
#include "tokenizer/tokenizer.h"

namespace kestrel {
namespace {

// ---- the encoders ------------------------------------------------------------------------------

// The quantisation step of each element, read from the encoded blocks' own scales.
std::vector<float> element_steps(DType type, std::span<const uint8_t> bytes, int64_t n) {
    std::vector<float> steps(static_cast<size_t>(n));
    const DTypeInfo& info = dtype_info(type);
    for (int64_t b = 0; b < n / info.block_elements; ++b) {
        const uint8_t* block = bytes.data() + b * info.block_bytes;
        float* step = steps.data() + b * info.block_elements;
        switch (type) {
            case DType::kQ8_0:
            case DType::kQ5_0:
            case DType::kQ5_1:
                std::fill(step, step + 32, fp16_to_fp32(load_le<uint16_t>(block)));
                break;
            case DType::kQ4_K:
            case DType::kQ5_K:
                for (int j = 0; j < 8; ++j) {
                    const float d = fp16_to_fp32(load_le<uint16_t>(block));
                    std::fill(step + 32 * j, step + 32 * j + 32,
                              d * static_cast<float>(dequant::k4_scale_min(block + 4, j).scale));
                }
                break;
            case DType::kQ6_K:
                for (int g = 0; g < 16; ++g) {
                    const float d = fp16_to_fp32(load_le<uint16_t>(block + 208));
                    std::fill(step + 16 * g, step + 16 * g + 16, d * static_cast<float>(static_cast<int8_t>(block[192 + g])));
                }
                break;
            default:
                std::fill(step, step + info.block_elements, 0.0f);
        }
    }
    return steps;
}

// |dequantised - x| within half a step (F16: half an fp16 ulp), up to fp32 rounding of the
// dequantiser's d·q - m.
void expect_within_half_step(DType type, std::span<const float> x, std::span<const uint8_t> bytes,
                             std::span<const float> decoded, const std::string& what) {
    const std::vector<float> steps = element_steps(type, bytes, static_cast<int64_t>(x.size()));
    int reported = 0;
    for (size_t i = 0; i < x.size(); ++i) {
        ASSERT_FALSE(std::isnan(decoded[i])) << what << " element " << i;
        const float bound = type == DType::kF16 ? std::max(std::fabs(x[i]) * 0x1p-11f, 0x1p-25f)
                                                : 0.5f * steps[i] * (1.0f + 1e-5f) + 1e-6f * std::fabs(x[i]) + 1e-30f;
        const float error = std::fabs(decoded[i] - x[i]);
        if (error > bound && reported++ < 5) {
            ADD_FAILURE() << what << " " << dtype_name(type) << " element " << i << ": " << x[i] << " -> " << decoded[i]
                          << ", error " << error << " > bound " << bound << " (step " << steps[i] << ")";
        }
    }
}

// A block's step must be what its values need, not more: the ideal (range / levels) plus the
// rounding of the 6-bit (K types) or 8-bit (Q6_K) scale codes up to the next code.
void expect_tight_steps(DType type, std::span<const float> x, std::span<const uint8_t> bytes, const std::string& what) {
    const std::vector<float> steps = element_steps(type, bytes, static_cast<int64_t>(x.size()));
    const int64_t sub = type == DType::kQ6_K ? 16 : 32;
    const int64_t super = dtype_info(type).block_elements;
    const float q_levels = type == DType::kQ4_K ? 15.0f : type == DType::kQ5_K ? 31.0f : type == DType::kQ6_K ? 31.0f
                           : type == DType::kQ8_0 ? 127.0f : type == DType::kQ5_0 ? 15.0f : 31.0f;
    const bool asymmetric = type == DType::kQ4_K || type == DType::kQ5_K || type == DType::kQ5_1;
    for (int64_t b = 0; b < static_cast<int64_t>(x.size()) / super; ++b) {
        std::vector<float> ideal, min_rounding;
        float max_low = 0.0f;
        for (int64_t s = 0; s < super / sub; ++s) {
            const float* v = x.data() + b * super + s * sub;
            float lo = v[0], hi = v[0], amax = 0.0f;
            for (int64_t i = 0; i < sub; ++i) {
                lo = std::min(lo, v[i]);
                hi = std::max(hi, v[i]);
                amax = std::max(amax, std::fabs(v[i]));
            }
            if (type != DType::kQ5_1) lo = std::min(lo, 0.0f);  // K types clip the minimum at 0
            max_low = std::max(max_low, -lo);
            ideal.push_back(asymmetric ? (hi - lo) / q_levels : amax / q_levels);
            // Q5_1 rounds its fp16 minimum down, by up to one fp16 spacing (2^-10 relative).
            min_rounding.push_back(type == DType::kQ5_1 ? std::fabs(lo) * 0x1p-10f / q_levels : 0.0f);
        }
        const float max_ideal = *std::max_element(ideal.begin(), ideal.end());
        // One code of the super-block scale (K types: d = max / 63; Q6_K: d = max / 127), and for
        // K types the minimum's code rounded up adds up to dmin / q_levels.
        const float code = type == DType::kQ6_K ? max_ideal / 127.0f : max_ideal / 63.0f;
        const float min_code = asymmetric ? max_low / 63.0f / q_levels : 0.0f;
        const bool k_type = super == 256;
        for (int64_t s = 0; s < super / sub; ++s) {
            const float step = steps[static_cast<size_t>(b * super + s * sub)];
            const float slack = (k_type ? 1.01f * (code + min_code) + 1.01f * min_code / 63.0f : 0.0f) +
                                1.01f * min_rounding[static_cast<size_t>(s)];
            EXPECT_LE(step, ideal[static_cast<size_t>(s)] * (1.0f + 2e-3f) + slack + 1e-7f)
                << what << " " << dtype_name(type) << " block " << b << " sub-block " << s;
        }
    }
}

struct Case {
    std::string name;
    std::vector<float> values;
};

std::vector<Case> encoder_cases(int64_t n) {
    std::mt19937 rng(7);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const auto make = [&](std::string name, auto value) {
        Case c{std::move(name), std::vector<float>(static_cast<size_t>(n))};
        for (int64_t i = 0; i < n; ++i) c.values[static_cast<size_t>(i)] = value(i);
        return c;
    };
    return {
        make("normal", [&](int64_t) { return normal(rng); }),
        make("small", [&](int64_t) { return 1e-3f * normal(rng); }),
        make("tiny (fp16 subnormal scales)", [&](int64_t) { return 1e-6f * normal(rng); }),
        make("positive", [&](int64_t) { return 2.0f + std::fabs(normal(rng)); }),
        make("negative", [&](int64_t) { return -1.0f - std::fabs(normal(rng)); }),
        make("constant", [&](int64_t) { return 0.75f; }),
        make("zeros", [&](int64_t) { return 0.0f; }),
        make("outlier per 256", [&](int64_t i) { return i % 256 == 17 ? 40.0f : 0.01f * normal(rng); }),
        make("ramp", [&](int64_t i) { return static_cast<float>(i % 300) / 300.0f - 0.4f; }),
    };
}

TEST(MakeGguf, EncodersDequantiseWithinHalfAStep) {
    const int64_t n = 256 * 6;
    for (const Case& c : encoder_cases(n)) {
        for (DType type : {DType::kF16, DType::kQ8_0, DType::kQ5_0, DType::kQ5_1, DType::kQ4_K, DType::kQ5_K,
                           DType::kQ6_K}) {
            SCOPED_TRACE(c.name + " " + std::string(dtype_name(type)));
            std::vector<uint8_t> bytes(static_cast<size_t>(*dtype_bytes(type, n)), 0xAB);
            ASSERT_TRUE(quantize_blocks(type, c.values, bytes).ok());
            std::vector<float> decoded(static_cast<size_t>(n), std::nanf(""));
            ASSERT_TRUE(dequantize(type, bytes, n, decoded.data()).ok());
            expect_within_half_step(type, c.values, bytes, decoded, c.name);
            if (type != DType::kF16) expect_tight_steps(type, c.values, bytes, c.name);
        }
    }
}

TEST(MakeGguf, EncoderErrors) {
    std::vector<float> values(256, 1.0f);
    std::vector<uint8_t> bytes(144);
    testing::expect_error(Result<int>(quantize_blocks(DType::kIQ4_XS, values, bytes)), StatusCode::kUnsupported,
                          {"IQ4_XS"});
    testing::expect_error(Result<int>(quantize_blocks(DType::kQ4_K, std::span(values).first(100), bytes)),
                          StatusCode::kInvalidArgument, {"Q4_K"});
    std::vector<uint8_t> short_bytes(143);
    EXPECT_FALSE(quantize_blocks(DType::kQ4_K, values, short_bytes).ok());
}

TEST(MakeGguf, ParsesTypes) {
    EXPECT_EQ(*parse_dummy_quant("q4_k_m"), DummyQuant::kQ4_K_M);
    EXPECT_EQ(*parse_dummy_quant("Q8_0"), DummyQuant::kQ8_0);
    EXPECT_EQ(*parse_dummy_quant("f16"), DummyQuant::kF16);
    testing::expect_error(parse_dummy_quant("q4_0"), StatusCode::kInvalidArgument, {"q4_0", "q4_k_m"});
    EXPECT_EQ(gguf_file_type(DummyQuant::kQ4_K_M), 15u);
}

// ---- the mix --------------------------------------------------------------------------------------

// llama-quantize's own output: the installed default model is Gemma 3 270M Q4_K_M (scripts/setup.sh).
TEST(MakeGguf, Q4KMMixEqualsLlamaQuantizeOnGemma3_270M) {
    Result<std::filesystem::path> path = default_model_path();
    ASSERT_TRUE(path.ok()) << path.status().message();
    Result<GgufFile> real = GgufFile::open(*path);
    ASSERT_TRUE(real.ok()) << real.status().message();
    Result<DummyModel> model = plan_dummy_model("gemma3-270m", DummyQuant::kQ4_K_M, 1);
    ASSERT_TRUE(model.ok()) << model.status().message();
    ASSERT_EQ(model->tensors.size(), real->tensors().size());
    for (const DummyTensor& tensor : model->tensors) {
        SCOPED_TRACE(tensor.info.name);
        const GgufTensorInfo* found = real->find_tensor(tensor.info.name);
        ASSERT_NE(found, nullptr);
        EXPECT_EQ(std::vector<int64_t>(found->ne.rbegin(), found->ne.rend()), tensor.info.shape);
        EXPECT_EQ(dtype_name(found->type), dtype_name(tensor.info.dtype));
        EXPECT_EQ(found->n_bytes, tensor.info.n_bytes);
    }
}

TEST(MakeGguf, Q4KMMixOfGemma4_31B) {
    Result<DummyModel> model = plan_dummy_model("gemma4-31b", DummyQuant::kQ4_K_M, 1);
    ASSERT_TRUE(model.ok()) << model.status().message();
    std::map<std::string, int> q6k;
    int other = 0;
    for (const DummyTensor& tensor : model->tensors) {
        const std::string& name = tensor.info.name;
        const std::string role = name.substr(name.find_last_of('.', name.size() - 8) + 1);  // "attn_v.weight"
        if (tensor.info.dtype == DType::kQ6_K) ++q6k[role];
        if (tensor.info.dtype != DType::kQ6_K && tensor.info.dtype != DType::kQ4_K && tensor.info.dtype != DType::kF32) {
            ++other;
        }
    }
    // gemma4-and-gemma3.md §7.4: tied token_embd Q6_K; ffn_down Q6_K on 30 of 60 layers; attn_v
    // Q6_K on 25 of the 50 sliding layers that have one; everything else Q4_K.
    EXPECT_EQ(q6k["token_embd.weight"], 1);
    EXPECT_EQ(q6k["ffn_down.weight"], 30);
    EXPECT_EQ(q6k["attn_v.weight"], 25);
    EXPECT_EQ(q6k.size(), 3u);
    EXPECT_EQ(other, 0);
    EXPECT_EQ(model->tensors.size(), 833u);  // gguf-layouts.md
    // gguf-layouts.md: llama-quantize's Q4_K_M file of Gemma 4 31B holds 17.39 GiB.
    EXPECT_NEAR(static_cast<double>(model->tensor_bytes) / (1 << 30), 17.39, 0.01);
}

TEST(MakeGguf, Q4KMMixOfQwen35_35B) {
    Result<DummyModel> model = plan_dummy_model("qwen3.5-35b-a3b", DummyQuant::kQ4_K_M, 1);
    ASSERT_TRUE(model.ok()) << model.status().message();
    const auto type_of = [&](const std::string& name) {
        for (const DummyTensor& tensor : model->tensors) {
            if (tensor.info.name == name) return tensor.info.dtype;
        }
        return DType::kU8;
    };
    // Untied: output Q6_K, token_embd the default Q4_K (gguf-layouts.md).
    EXPECT_EQ(type_of("output.weight"), DType::kQ6_K);
    EXPECT_EQ(type_of("token_embd.weight"), DType::kQ4_K);
    EXPECT_EQ(type_of("blk.0.ffn_gate_inp.weight"), DType::kF32);
    EXPECT_EQ(type_of("blk.0.ssm_conv1d.weight"), DType::kF32);
    // use_more_bits(i, 40): i < 5, i >= 35, or (i - 5) % 3 == 2; attn_qkv (linear layers) and
    // attn_v (full layers) share one count, one per layer.
    for (int i = 0; i < 40; ++i) {
        SCOPED_TRACE(i);
        const bool more = i < 5 || i >= 35 || (i - 5) % 3 == 2;
        const std::string v = (i + 1) % 4 == 0 ? fmt::format("blk.{}.attn_v.weight", i) : fmt::format("blk.{}.attn_qkv.weight", i);
        EXPECT_EQ(type_of(v), more ? DType::kQ6_K : DType::kQ4_K);
        EXPECT_EQ(type_of(fmt::format("blk.{}.ffn_down_exps.weight", i)), more ? DType::kQ6_K : DType::kQ4_K);
        EXPECT_EQ(type_of(fmt::format("blk.{}.ffn_down_shexp.weight", i)), more ? DType::kQ6_K : DType::kQ4_K);
        EXPECT_EQ(type_of(fmt::format("blk.{}.ffn_gate_exps.weight", i)), DType::kQ4_K);
    }
}

TEST(MakeGguf, Q8AndF16Mixes) {
    for (DummyQuant quant : {DummyQuant::kQ8_0, DummyQuant::kF16}) {
        Result<DummyModel> model = plan_dummy_model("gemma3-270m", quant, 1);
        ASSERT_TRUE(model.ok()) << model.status().message();
        for (const DummyTensor& tensor : model->tensors) {
            const DType expected = tensor.info.shape.size() == 1 ? DType::kF32
                                   : quant == DummyQuant::kQ8_0  ? DType::kQ8_0
                                                                 : DType::kF16;
            EXPECT_EQ(tensor.info.dtype, expected) << tensor.info.name;
        }
    }
}

TEST(MakeGguf, UnknownModel) {
    testing::expect_error(plan_dummy_model("gemma9", DummyQuant::kQ4_K_M, 1), StatusCode::kNotFound,
                          {"gemma9", "gemma4-31b"});
}

// ---- written files ----------------------------------------------------------------------------

std::filesystem::path temp_path(const std::string& name) {
    return std::filesystem::temp_directory_path() / ("kestrel_make_gguf_" + std::to_string(::getpid()) + "_" + name);
}

Result<HfConfig> fixture_config(const std::string& relative) {
    const std::filesystem::path path = std::filesystem::path(KESTREL_SOURCE_DIR) / relative;
    return HfConfig::parse(testing::read_text_file(path), path.string());
}

void expect_same_config(const ModelConfig& read, const ModelConfig& planned) {
    EXPECT_EQ(read.architecture, planned.architecture);
    EXPECT_EQ(read.name, planned.name);
    EXPECT_EQ(read.vocab_size, planned.vocab_size);
    EXPECT_EQ(read.hidden_size, planned.hidden_size);
    EXPECT_EQ(read.ffn_size, planned.ffn_size);
    EXPECT_EQ(read.n_layers, planned.n_layers);
    EXPECT_EQ(read.n_heads, planned.n_heads);
    EXPECT_EQ(read.context_length, planned.context_length);
    EXPECT_EQ(read.sliding_window, planned.sliding_window);
    EXPECT_EQ(read.n_experts, planned.n_experts);
    EXPECT_EQ(read.n_experts_used, planned.n_experts_used);
    EXPECT_EQ(read.expert_ffn_size, planned.expert_ffn_size);
    EXPECT_EQ(read.shared_expert_ffn_size, planned.shared_expert_ffn_size);
    EXPECT_EQ(read.linear_conv_kernel, planned.linear_conv_kernel);
    EXPECT_EQ(read.linear_k_heads, planned.linear_k_heads);
    EXPECT_EQ(read.linear_v_heads, planned.linear_v_heads);
    EXPECT_EQ(read.linear_k_head_dim, planned.linear_k_head_dim);
    EXPECT_EQ(read.linear_v_head_dim, planned.linear_v_head_dim);
    EXPECT_EQ(read.rope_dim, planned.rope_dim);
    EXPECT_FLOAT_EQ(static_cast<float>(read.rms_norm_eps), static_cast<float>(planned.rms_norm_eps));
    EXPECT_FLOAT_EQ(static_cast<float>(read.rope_theta), static_cast<float>(planned.rope_theta));
    EXPECT_FLOAT_EQ(static_cast<float>(read.rope_theta_sliding), static_cast<float>(planned.rope_theta_sliding));
    EXPECT_FLOAT_EQ(static_cast<float>(read.final_logit_softcap), static_cast<float>(planned.final_logit_softcap));
    ASSERT_EQ(read.layers.size(), planned.layers.size());
    for (size_t i = 0; i < read.layers.size(); ++i) {
        SCOPED_TRACE(i);
        EXPECT_EQ(read.layers[i].kind, planned.layers[i].kind);
        EXPECT_EQ(read.layers[i].n_kv_heads, planned.layers[i].n_kv_heads);
        EXPECT_EQ(read.layers[i].head_dim, planned.layers[i].head_dim);
        EXPECT_EQ(read.layers[i].v_head_dim, planned.layers[i].v_head_dim);
        EXPECT_EQ(read.layers[i].k_eq_v, planned.layers[i].k_eq_v);
    }
}

// Reads the file back: the tensor table is model_shapes' with the mix's types, the metadata gives
// the planned config, the tokenizer loads, and sampled rows of every tensor (all rows of small
// ones) dequantise to within half a step of the regenerated values.
void expect_file_matches(const std::filesystem::path& path, const DummyModel& model, DummyQuant quant) {
    Result<GgufFile> file = GgufFile::open(path);
    ASSERT_TRUE(file.ok()) << file.status().message();
    const std::vector<WeightInfo> shapes = model_tensor_shapes(model.config, DType::kQ4_K);
    const std::vector<DType> types = dummy_tensor_types(model.config, shapes, quant);
    ASSERT_EQ(file->tensors().size(), shapes.size());
    for (size_t i = 0; i < shapes.size(); ++i) {
        const GgufTensorInfo& tensor = file->tensors()[i];
        SCOPED_TRACE(tensor.name);
        EXPECT_EQ(tensor.name, shapes[i].name);
        EXPECT_EQ(std::vector<int64_t>(tensor.ne.rbegin(), tensor.ne.rend()), shapes[i].shape);
        EXPECT_EQ(tensor.type, types[i]);
        const DummyTensor& planned = model.tensors[i];
        const int64_t row = planned.info.shape.back();
        const int64_t rows = planned.info.n_elements / row;
        const int64_t row_bytes = planned.info.n_bytes / rows;
        const std::span<const uint8_t> data = file->tensor_data(tensor);
        for (int64_t r : {int64_t{0}, rows / 2, rows - 1, (rows * 7) / 11}) {
            std::vector<float> expected(static_cast<size_t>(row)), decoded(static_cast<size_t>(row));
            dummy_values(planned, r * row, row, expected.data());
            const std::span<const uint8_t> bytes = data.subspan(static_cast<size_t>(r * row_bytes), row_bytes);
            ASSERT_TRUE(dequantize(tensor.type, bytes, row, decoded.data()).ok());
            if (tensor.type == DType::kF32) {
                EXPECT_EQ(decoded, expected);
            } else {
                expect_within_half_step(tensor.type, expected, bytes, decoded, tensor.name);
            }
        }
    }
    Result<ModelConfig> config = model_config_from_gguf(*file);
    ASSERT_TRUE(config.ok()) << config.status().message();
    expect_same_config(*config, model.config);
    Result<Tokenizer> tokenizer = Tokenizer::from_gguf(*file);
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status().message();
    EXPECT_EQ(tokenizer->vocab_size(), model.config.vocab_size);
    EXPECT_EQ(*file->get_int("general.file_type"), gguf_file_type(quant));
}

// The CPU engine loads the file, prefills a prompt and decodes greedily; the logits stay finite.
void expect_engine_decodes(const std::filesystem::path& path) {
    EngineOptions options;
    options.model = path;
    options.device = Device::kCpu;
    Result<std::unique_ptr<Engine>> engine = Engine::load(options);
    ASSERT_TRUE(engine.ok()) << engine.status().message();
    const std::vector<int32_t> prompt = (*engine)->tokenizer().encode("hello world", false, true);
    ASSERT_GE(prompt.size(), 2u);
    Result<std::unique_ptr<Session>> session = (*engine)->new_session(64, 16);
    ASSERT_TRUE(session.ok()) << session.status().message();
    Result<std::span<const float>> logits = (*session)->prefill(prompt);
    for (int step = 0; step < 4; ++step) {
        ASSERT_TRUE(logits.ok()) << logits.status().message();
        ASSERT_EQ(static_cast<int64_t>(logits->size()), (*engine)->config().vocab_size);
        for (float value : *logits) ASSERT_TRUE(std::isfinite(value));
        const auto best = std::max_element(logits->begin(), logits->end()) - logits->begin();
        logits = (*session)->decode(static_cast<int32_t>(best));
    }
    ASSERT_TRUE(logits.ok()) << logits.status().message();
}

TEST(MakeGguf, Gemma3_270MFileReadsBackAndDecodes) {
    Result<DummyModel> model = plan_dummy_model("gemma3-270m", DummyQuant::kQ4_K_M, 99);
    ASSERT_TRUE(model.ok()) << model.status().message();
    const std::filesystem::path path = temp_path("gemma3_270m.gguf");
    std::vector<DummyWriteProgress> progress;
    DummyWriteOptions options;
    options.on_progress = [&](const DummyWriteProgress& p) { progress.push_back(p); };
    ASSERT_TRUE(write_dummy_gguf(*model, path, options).ok());
    ASSERT_EQ(progress.size(), model->tensors.size());
    EXPECT_EQ(progress.back().bytes_done, model->tensor_bytes);
    expect_file_matches(path, *model, DummyQuant::kQ4_K_M);
    expect_engine_decodes(path);
    std::filesystem::remove(path);
}

TEST(MakeGguf, TinyConfigsReadBackAndDecode) {
    // The tiny transformers configs of the reference fixtures: rows of 64 exercise llama-quant's
    // fallbacks (Q5_0, Q8_0, and with exactly 8 experts Q5_K -> Q5_1).
    for (const std::string relative : {"tests/fixtures/gemma4_tiny/hf/config.json", "tests/fixtures/qwen35_tiny/config.json"}) {
        Result<HfConfig> hf = fixture_config(relative);
        ASSERT_TRUE(hf.ok()) << hf.status().message();
        for (DummyQuant quant : {DummyQuant::kQ4_K_M, DummyQuant::kQ8_0, DummyQuant::kF16}) {
            SCOPED_TRACE(relative + " " + std::string(dummy_quant_name(quant)));
            Result<DummyModel> model = plan_dummy_model(*hf, "tiny", quant, 5);
            ASSERT_TRUE(model.ok()) << model.status().message();
            const std::filesystem::path path = temp_path("tiny.gguf");
            DummyWriteOptions options;
            options.threads = 3;
            ASSERT_TRUE(write_dummy_gguf(*model, path, options).ok());
            expect_file_matches(path, *model, quant);
            expect_engine_decodes(path);
            std::filesystem::remove(path);
        }
    }
}

TEST(MakeGguf, SeededAndThreadIndependent) {
    Result<HfConfig> hf = fixture_config("tests/fixtures/gemma4_tiny/hf/config.json");
    ASSERT_TRUE(hf.ok()) << hf.status().message();
    const auto written = [&](uint64_t seed, int threads) {
        Result<DummyModel> model = plan_dummy_model(*hf, "tiny", DummyQuant::kQ4_K_M, seed);
        EXPECT_TRUE(model.ok());
        const std::filesystem::path path = temp_path("seeded.gguf");
        DummyWriteOptions options;
        options.threads = threads;
        EXPECT_TRUE(write_dummy_gguf(*model, path, options).ok());
        std::ifstream in(path, std::ios::binary);
        std::stringstream bytes;
        bytes << in.rdbuf();
        std::filesystem::remove(path);
        return bytes.str();
    };
    const std::string a = written(1, 1);
    EXPECT_EQ(a, written(1, 4));
    EXPECT_NE(a, written(2, 1));
}

TEST(MakeGguf, ValuesHaveTheirDistributions) {
    Result<DummyModel> model = plan_dummy_model("gemma3-270m", DummyQuant::kQ4_K_M, 3);
    ASSERT_TRUE(model.ok());
    for (const DummyTensor& tensor : model->tensors) {
        const int64_t n = std::min<int64_t>(tensor.info.n_elements, 1 << 16);
        std::vector<float> values(static_cast<size_t>(n));
        dummy_values(tensor, 0, n, values.data());
        double sum = 0.0, squares = 0.0;
        for (float v : values) {
            sum += v;
            squares += static_cast<double>(v) * v;
        }
        const double mean = sum / static_cast<double>(n);
        const double stddev = std::sqrt(squares / static_cast<double>(n) - mean * mean);
        SCOPED_TRACE(tensor.info.name);
        if (tensor.init == DummyInit::kMatrix) {
            // N(0, 1/sqrt(row)): the mean within 5 standard errors, the deviation within 3%.
            const double expected = 1.0 / std::sqrt(static_cast<double>(tensor.info.shape.back()));
            EXPECT_NEAR(mean, 0.0, 5.0 * expected / std::sqrt(static_cast<double>(n)));
            EXPECT_NEAR(stddev, expected, 0.03 * expected);
        } else {
            EXPECT_EQ(tensor.init, DummyInit::kNorm);
            EXPECT_NEAR(mean, 1.0, 0.05);
        }
    }
}

TEST(MakeGguf, SyntheticVocabulary) {
    const SyntheticVocabulary vocabulary = synthetic_vocabulary(262144);
    ASSERT_EQ(vocabulary.pieces.size(), 262144u);
    ASSERT_EQ(vocabulary.scores.size(), 262144u);
    ASSERT_EQ(vocabulary.token_types.size(), 262144u);
    EXPECT_EQ(vocabulary.pieces[2], "<bos>");
    EXPECT_EQ(vocabulary.pieces[4], "<0x00>");
    EXPECT_EQ(vocabulary.token_types[4 + 255], 6);
    std::set<std::string> unique(vocabulary.pieces.begin(), vocabulary.pieces.end());
    EXPECT_EQ(unique.size(), vocabulary.pieces.size());
}

}  // namespace
}  // namespace kestrel
