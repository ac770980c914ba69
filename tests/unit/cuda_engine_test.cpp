// The CUDA backend end to end against the CPU reference backend on the same files: the tiny
// Gemma 4 fixture (F32 GGUF, loaded with bf16 and W8 engine weights) and the real Gemma 3 270M
// Q4_K_M GGUF (Q4_K -> W4, Q6_K -> W8, int8 activations in the decode GEMVs).
//
// What must hold:
// - Greedy decoding: at every step both backends are fed the CPU's token; the CUDA argmax must be
//   the CPU's wherever the CPU's top-1 / top-2 gap exceeds twice that step's max|cuda - cpu| (a
//   smaller gap is a tie within the formats' own rounding, and a tie may go either way), and
//   a stated number of steps must be binding.
// - Logits within budget: max|cuda - cpu| <= budget * max|cpu logit| at every checked position.
//   Every value the GPU keeps in a narrower format (bf16 weights, KV, q and attention
//   probabilities: relative 2^-9; W8/W4 weights and int8 activation blocks: up to 2^-8 of the
//   block's largest) moves the logits; through the layers these add up. Measured on the H100
//   (max over all positions and logits): tiny Gemma 4 bf16 6.6e-2, W8 2.0e-1 (a random tiny
//   model's logits are a small difference of large terms), Gemma 3 270M Q4_K_M 8.0e-2. Budgets:
//   1.5x those, rounded: 0.1, 0.3, 0.12 -- a wrong mask, RoPE or scale moves them by O(1).
// - A decode replayed from the captured CUDA graph is bit-identical to the same decode run
//   eagerly (the same kernels on the same data), at every position.
// Outputs must be finite everywhere (NaN never passes: comparisons are written so NaN fails).
// Skips without a CUDA device; the Gemma 3 case also without the default model.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "io/model_files.h"
#include "runtime/engine.h"
#include "runtime/generate.h"
#include "runtime/kv_cache_format.h"
#include "runtime/sampler.h"
#include "runtime/session.h"
#include "test_support.h"

namespace kestrel {
namespace {

const std::string kTinyGemma4 = std::string(KESTREL_SOURCE_DIR) + "/tests/fixtures/gemma4_tiny/model.gguf";
const std::string kTinyQwen35Gguf =
    std::string(KESTREL_SOURCE_DIR) + "/tests/fixtures/qwen35_tiny/qwen35_tiny-f32.gguf";
const std::string kTinyQwen35Hf = std::string(KESTREL_SOURCE_DIR) + "/tests/fixtures/qwen35_tiny";
// Shared expert ffn = routed ffn: the shared expert runs stacked with the routed ones.
const std::string kTinyQwen35Shared32Hf =
    std::string(KESTREL_SOURCE_DIR) + "/tests/fixtures/qwen35_tiny_shared32";

bool have_cuda() { return make_cuda_ops().ok(); }

std::unique_ptr<Engine> load(const std::string& path, Device device, WeightFormat float_weights) {
    EngineOptions options;
    options.model = path;
    options.device = device;
    options.float_weights = float_weights;
    Result<std::unique_ptr<Engine>> engine = Engine::load(options);
    EXPECT_TRUE(engine.ok()) << engine.status().message();
    return engine.ok() ? std::move(*engine) : nullptr;
}

struct Comparison {
    double worst_relative = 0.0;  // max over positions of max|cuda - cpu| / max|cpu|
    int greedy_checked = 0;       // steps whose gap made the argmax binding
};

// max|a - b| / max|a|, NaN-propagating (returns +inf when anything is not finite).
double relative_difference(std::span<const float> cpu, std::span<const float> gpu) {
    double diff = 0.0, scale = 0.0;
    for (size_t i = 0; i < cpu.size(); ++i) {
        if (!std::isfinite(cpu[i]) || !std::isfinite(gpu[i])) return INFINITY;
        diff = std::max(diff, std::fabs(static_cast<double>(cpu[i]) - gpu[i]));
        scale = std::max(scale, std::fabs(static_cast<double>(cpu[i])));
    }
    return diff / std::max(scale, 1e-30);
}

double top2_gap(std::span<const float> logits) {
    float first = -INFINITY, second = -INFINITY;
    for (float v : logits) {
        if (v > first) {
            second = first;
            first = v;
        } else if (v > second) {
            second = v;
        }
    }
    return static_cast<double>(first) - second;
}

// Prefills `prompt` on both, then decodes `steps` tokens feeding both the CPU's greedy choice.
Comparison compare_greedy(const Engine& cpu, const Engine& gpu, const std::vector<int32_t>& prompt,
                          int steps, double budget, int64_t chunk,
                          KvCacheFormat kv_cache = KvCacheFormat::kNative,
                          int64_t sliding_step = kSlidingAttentionStep) {
    Comparison result;
    auto cpu_session = cpu.new_session(512, chunk, kv_cache, sliding_step);
    auto gpu_session = gpu.new_session(512, chunk, kv_cache, sliding_step);
    EXPECT_TRUE(cpu_session.ok() && gpu_session.ok());
    if (!cpu_session.ok() || !gpu_session.ok()) return result;
    Result<std::span<const float>> a = (*cpu_session)->prefill(prompt);
    Result<std::span<const float>> b = (*gpu_session)->prefill(prompt);
    for (int step = 0;; ++step) {
        EXPECT_TRUE(a.ok() && b.ok()) << (a.ok() ? b.status().message() : a.status().message());
        if (!a.ok() || !b.ok()) return result;
        std::vector<float> cpu_logits(a->begin(), a->end()), gpu_logits(b->begin(), b->end());
        const double relative = relative_difference(cpu_logits, gpu_logits);
        result.worst_relative = std::max(result.worst_relative, relative);
        EXPECT_LE(relative, budget) << "step " << step;
        double step_diff = 0.0;
        for (size_t i = 0; i < cpu_logits.size(); ++i) {
            step_diff = std::max(step_diff, std::fabs(static_cast<double>(cpu_logits[i]) - gpu_logits[i]));
        }
        const int32_t expected = argmax(cpu_logits);
        if (top2_gap(cpu_logits) > 2.0 * step_diff) {
            ++result.greedy_checked;
            EXPECT_EQ(argmax(gpu_logits), expected) << "step " << step;
        }
        if (step == steps) break;
        a = (*cpu_session)->decode(expected);
        b = (*gpu_session)->decode(expected);
    }
    EXPECT_TRUE((*gpu_session)->decode_captured()) << "decode never ran from a captured graph";
    return result;
}

// Budget for the tiny Qwen3.5 with W8 weights (see the file comment): the worst measured on the
// H100 was 0.592 (HF folder, one prefill chunk of 25; the GGUF in chunks of 16 gave 0.338),
// times 1.5. Its size is the router: a flip between two near-equal experts moves a logit by
// much more than the weights' rounding does. W4 is not compared end to end: on this tiny
// random model 4-bit weights move the router's logits enough to pick other experts, and the
// logits then differ by up to 0.93 of their range with no decisive greedy step (measured), which
// tests nothing; the W4 kernels are held to their CPU twins in the op tests.
constexpr double kQwen35W8Budget = 0.9;

class CudaEngine : public ::testing::Test {
protected:
    void SetUp() override {
        if (!have_cuda()) GTEST_SKIP() << "no CUDA device";
    }
};

// Twice: with the default rings, and with rings of window + 3 - 1 entries under the same chunks,
// where the sliding layers write and attend in steps of 3 tokens on both backends
// (forward_common.h attention_block), the GPU's steps through its prefill attention kernel and one
// projection GEMM of all rows.
TEST_F(CudaEngine, TinyGemma4Bf16WeightsMatchTheCpuReference) {
    auto cpu = load(kTinyGemma4, Device::kCpu, WeightFormat::kW4);
    auto gpu = load(kTinyGemma4, Device::kCuda, WeightFormat::kBF16);
    ASSERT_TRUE(cpu && gpu);
    // 40 prompt tokens (> the window of 8: the sliding rings wrap), prefilled in chunks of 16
    // (the GEMM and prefill attention), then 40 decode steps (GEMV, split-K decode, graphs).
    std::vector<int32_t> prompt;
    for (int i = 0; i < 40; ++i) prompt.push_back(2 + (i * 37) % 390);
    for (const int64_t sliding_step : {kSlidingAttentionStep, int64_t{3}}) {
        const Comparison c =
            compare_greedy(*cpu, *gpu, prompt, 40, 0.1, 16, KvCacheFormat::kNative, sliding_step);
        std::printf(
            "tiny gemma4, bf16 weights, sliding step %lld: worst max|diff|/max|logit| %.3g, %d "
            "binding greedy steps\n",
            static_cast<long long>(sliding_step), c.worst_relative, c.greedy_checked);
        EXPECT_GE(c.greedy_checked, 20) << "sliding step " << sliding_step;
    }
}

// The TQ4 KV cache on both backends (the full layers; the sliding ones stay native): the CUDA
// write, rotations and attention over the 4-bit cache against the CPU's, end to end. The
// quantiser is a step function, so the bf16 differences of the GPU's inputs (weights, sliding
// KV, q) move an element lying near a bucket boundary into the neighbouring bucket, and the
// logits differ more than with a native cache (measured on the H100: worst 0.283 of the logit
// range, against 0.066 native). What must hold, on one token stream (the CPU TQ4 greedy
// choices): every step within 1.5x that worst, 0.45; and on average the GPU at most 0.7x as
// far from the CPU's TQ4 logits as the CPU's own native-cache logits are, so it runs TQ4 and not
// something else (measured: mean 0.148 against 0.266, 0.56x; native vs TQ4 on the CPU is 0.114
// to 0.527 per step).
TEST_F(CudaEngine, TinyGemma4Tq4KvCacheMatchesTheCpuReference) {
    auto cpu = load(kTinyGemma4, Device::kCpu, WeightFormat::kW4);
    auto gpu = load(kTinyGemma4, Device::kCuda, WeightFormat::kBF16);
    ASSERT_TRUE(cpu && gpu);
    std::vector<int32_t> prompt;
    for (int i = 0; i < 70; ++i) prompt.push_back(5 + (i * 41) % 390);
    auto cpu_tq4 = cpu->new_session(512, 32, KvCacheFormat::kTq4);
    auto cpu_native = cpu->new_session(512, 32, KvCacheFormat::kNative);
    auto gpu_tq4 = gpu->new_session(512, 32, KvCacheFormat::kTq4);
    ASSERT_TRUE(cpu_tq4.ok() && cpu_native.ok() && gpu_tq4.ok());
    Result<std::span<const float>> reference = (*cpu_tq4)->prefill(prompt);
    Result<std::span<const float>> native = (*cpu_native)->prefill(prompt);
    Result<std::span<const float>> cuda = (*gpu_tq4)->prefill(prompt);
    double gpu_sum = 0.0, format_sum = 0.0, gpu_worst = 0.0;
    constexpr int kSteps = 40;
    for (int step = 0;; ++step) {
        ASSERT_TRUE(reference.ok() && native.ok() && cuda.ok());
        const std::vector<float> r(reference->begin(), reference->end());
        const double gpu_distance =
            relative_difference(r, std::vector<float>(cuda->begin(), cuda->end()));
        const double format_distance =
            relative_difference(r, std::vector<float>(native->begin(), native->end()));
        EXPECT_LE(gpu_distance, 0.45) << "step " << step;  // NaN fails
        gpu_worst = std::max(gpu_worst, gpu_distance);
        gpu_sum += gpu_distance;
        format_sum += format_distance;
        if (step == kSteps) break;
        const int32_t token = argmax(r);
        reference = (*cpu_tq4)->decode(token);
        native = (*cpu_native)->decode(token);
        cuda = (*gpu_tq4)->decode(token);
    }
    EXPECT_TRUE((*gpu_tq4)->decode_captured()) << "decode never ran from a captured graph";
    std::printf(
        "tiny gemma4, TQ4 KV: CUDA vs CPU worst %.3g, mean %.3g; CPU native vs TQ4 mean %.3g\n",
        gpu_worst, gpu_sum / (kSteps + 1), format_sum / (kSteps + 1));
    EXPECT_LE(gpu_sum, 0.7 * format_sum);
}

TEST_F(CudaEngine, TinyGemma4W8WeightsMatchTheCpuReference) {
    auto cpu = load(kTinyGemma4, Device::kCpu, WeightFormat::kW4);
    auto gpu = load(kTinyGemma4, Device::kCuda, WeightFormat::kW8);
    ASSERT_TRUE(cpu && gpu);
    std::vector<int32_t> prompt;
    for (int i = 0; i < 23; ++i) prompt.push_back(3 + (i * 53) % 390);
    const Comparison c = compare_greedy(*cpu, *gpu, prompt, 30, 0.3, 512);
    std::printf("tiny gemma4, W8 weights: worst max|diff|/max|logit| %.3g, %d binding greedy steps\n",
                c.worst_relative, c.greedy_checked);
    EXPECT_GE(c.greedy_checked, 8);  // measured 11 of 31: W8's larger error leaves fewer decisive gaps
}

// Qwen3.5 on CUDA: Gated DeltaNet (conv and delta rule with their state in device memory), gated
// attention, the router and the routed experts' kernels, against the CPU reference on the same
// file. The GGUF (value heads in tiled order) with W8 weights, the HF folder (grouped order)
// with W4; prompts of 40 tokens in chunks of 16 (prefill GEMMs) and 9 (the last chunk), then
// decode steps from the captured graph. The experts are W4/W8 in both (the CUDA expert kernels
// read those), the router W8, the 48-wide shared expert's down projection bf16.
TEST_F(CudaEngine, TinyQwen35GgufW8WeightsMatchTheCpuReference) {
    auto cpu = load(kTinyQwen35Gguf, Device::kCpu, WeightFormat::kW4);
    auto gpu = load(kTinyQwen35Gguf, Device::kCuda, WeightFormat::kW8);
    ASSERT_TRUE(cpu && gpu);
    std::vector<int32_t> prompt;
    for (int i = 0; i < 41; ++i) prompt.push_back(1 + (i * 37) % 319);
    const Comparison c = compare_greedy(*cpu, *gpu, prompt, 30, kQwen35W8Budget, 16);
    std::printf(
        "tiny qwen3.5 gguf, W8 weights: worst max|diff|/max|logit| %.3g, %d binding greedy steps\n",
        c.worst_relative, c.greedy_checked);
    EXPECT_GE(c.greedy_checked, 8);
}

TEST_F(CudaEngine, TinyQwen35HfW8WeightsMatchTheCpuReference) {
    auto cpu = load(kTinyQwen35Hf, Device::kCpu, WeightFormat::kW4);
    auto gpu = load(kTinyQwen35Hf, Device::kCuda, WeightFormat::kW8);
    ASSERT_TRUE(cpu && gpu);
    std::vector<int32_t> prompt;
    for (int i = 0; i < 25; ++i) prompt.push_back(2 + (i * 53) % 317);
    const Comparison c = compare_greedy(*cpu, *gpu, prompt, 30, kQwen35W8Budget, 512);
    std::printf(
        "tiny qwen3.5 hf, W8 weights: worst max|diff|/max|logit| %.3g, %d binding greedy steps\n",
        c.worst_relative, c.greedy_checked);
    EXPECT_GE(c.greedy_checked, 5);
}

// The shared expert stacked as the ninth slot of the routed-expert kernels (ffn 32 = 32), with
// prefill chunks above the GEMV's row limit (the grouped expert GEMMs, the chunked delta rule).
TEST_F(CudaEngine, TinyQwen35SharedExpertStackedMatchesTheCpuReference) {
    auto cpu = load(kTinyQwen35Shared32Hf, Device::kCpu, WeightFormat::kW4);
    auto gpu = load(kTinyQwen35Shared32Hf, Device::kCuda, WeightFormat::kW8);
    ASSERT_TRUE(cpu && gpu);
    std::vector<int32_t> prompt;
    for (int i = 0; i < 150; ++i) prompt.push_back(2 + (i * 41) % 317);
    const Comparison c = compare_greedy(*cpu, *gpu, prompt, 30, kQwen35W8Budget, 100);
    std::printf(
        "tiny qwen3.5 shared32 hf, W8 weights: worst max|diff|/max|logit| %.3g, %d binding greedy "
        "steps\n",
        c.worst_relative, c.greedy_checked);
    EXPECT_GE(c.greedy_checked, 5);
}

// Chunked prefill on the GPU (tensor-core GEMMs, grouped experts, the chunked delta rule in one
// call of 150 tokens) against the same prompt fed one token per step (GEMVs, the decode kernels):
// the logits after the prompt and after each following decode step agree within the budget.
TEST_F(CudaEngine, TinyQwen35ChunkedPrefillEqualsTokenByToken) {
    auto gpu = load(kTinyQwen35Shared32Hf, Device::kCuda, WeightFormat::kW8);
    ASSERT_TRUE(gpu);
    auto chunked = gpu->new_session(512, 512);
    auto stepwise = gpu->new_session(512, 1);
    ASSERT_TRUE(chunked.ok() && stepwise.ok());
    std::vector<int32_t> prompt;
    for (int i = 0; i < 150; ++i) prompt.push_back(3 + (i * 29) % 311);
    Result<std::span<const float>> a = (*chunked)->prefill(prompt);
    Result<std::span<const float>> b = (*stepwise)->prefill(prompt);
    double worst = 0.0;
    for (int step = 0; step < 8; ++step) {
        ASSERT_TRUE(a.ok() && b.ok()) << (a.ok() ? b.status().message() : a.status().message());
        const std::vector<float> one(a->begin(), a->end()), many(b->begin(), b->end());
        const double relative = relative_difference(one, many);
        worst = std::max(worst, relative);
        EXPECT_LE(relative, kQwen35W8Budget) << "step " << step;
        const int32_t next = argmax(one);
        a = (*chunked)->decode(next);
        b = (*stepwise)->decode(next);
    }
    std::printf("tiny qwen3.5 shared32: chunked vs token-by-token prefill, worst %.3g\n", worst);
}

// The recurrent state is updated in place by the captured kernels: replaying the graph must give
// the eager decode's logits bit for bit at every step.
TEST_F(CudaEngine, TinyQwen35GraphReplayIsBitIdenticalToEagerDecode) {
    auto gpu = load(kTinyQwen35Gguf, Device::kCuda, WeightFormat::kW8);
    ASSERT_TRUE(gpu);
    auto eager = gpu->new_session(512, 16);
    auto graphed = gpu->new_session(512, 16);
    ASSERT_TRUE(eager.ok() && graphed.ok());
    (*eager)->set_decode_graphs(false);
    const std::vector<int32_t> prompt = {2, 50, 60, 70, 80};
    ASSERT_TRUE((*eager)->prefill(prompt).ok());
    ASSERT_TRUE((*graphed)->prefill(prompt).ok());
    for (int step = 0; step < 20; ++step) {
        const int32_t token = 5 + (step * 29) % 310;
        Result<std::span<const float>> a = (*eager)->decode(token);
        ASSERT_TRUE(a.ok()) << a.status().message();
        const std::vector<float> expected(a->begin(), a->end());
        Result<std::span<const float>> b = (*graphed)->decode(token);
        ASSERT_TRUE(b.ok()) << b.status().message();
        for (size_t i = 0; i < expected.size(); ++i) {
            ASSERT_TRUE(std::isfinite(expected[i]));
            ASSERT_EQ(expected[i], (*b)[i]) << "step " << step << " logit " << i;
        }
    }
    EXPECT_TRUE((*graphed)->decode_captured());
}

TEST_F(CudaEngine, GraphReplayIsBitIdenticalToEagerDecode) {
    auto gpu = load(kTinyGemma4, Device::kCuda, WeightFormat::kBF16);
    ASSERT_TRUE(gpu);
    auto eager = gpu->new_session(512, 16);
    auto graphed = gpu->new_session(512, 16);
    ASSERT_TRUE(eager.ok() && graphed.ok());
    (*eager)->set_decode_graphs(false);
    const std::vector<int32_t> prompt = {2, 50, 60, 70, 80};
    ASSERT_TRUE((*eager)->prefill(prompt).ok());
    ASSERT_TRUE((*graphed)->prefill(prompt).ok());
    for (int step = 0; step < 30; ++step) {
        const int32_t token = 5 + (step * 29) % 390;
        Result<std::span<const float>> a = (*eager)->decode(token);
        ASSERT_TRUE(a.ok()) << a.status().message();
        const std::vector<float> expected(a->begin(), a->end());
        Result<std::span<const float>> b = (*graphed)->decode(token);
        ASSERT_TRUE(b.ok()) << b.status().message();
        for (size_t i = 0; i < expected.size(); ++i) {
            ASSERT_TRUE(std::isfinite(expected[i]));
            ASSERT_EQ(expected[i], (*b)[i]) << "step " << step << " logit " << i;
        }
    }
    EXPECT_TRUE((*graphed)->decode_captured());
    EXPECT_FALSE((*eager)->decode_captured());
}

// GPU sampling (Ops::make_sampler, used by generate) draws what the host Sampler draws from the
// same logits: the same tokens over 48 steps, for greedy, a temperature chain and penalties.
TEST_F(CudaEngine, GenerateSamplesTheSameTokensOnTheDeviceAsOnTheHost) {
    auto gpu = load(kTinyGemma4, Device::kCuda, WeightFormat::kBF16);
    ASSERT_TRUE(gpu);
    const std::vector<int32_t> prompt = {2, 40, 41, 42, 43, 44, 45};
    std::vector<SamplingParams> settings(3);
    settings[0].temperature = 0.0f;
    settings[1].temperature = 0.9f;
    settings[1].seed = 77;
    settings[2].temperature = 1.2f;
    settings[2].top_k = 0;
    settings[2].repeat_penalty = 1.3f;
    settings[2].presence_penalty = 0.4f;
    settings[2].seed = 5;
    for (const SamplingParams& params : settings) {
        std::vector<int32_t> tokens[2];
        for (int device = 0; device < 2; ++device) {
            auto session = gpu->new_session(256, 16);
            ASSERT_TRUE(session.ok());
            Sampler sampler(params);
            GenerateOptions options;
            options.max_tokens = 48;
            options.device_sampling = device == 1;
            Result<GenerateResult> result = generate(**session, gpu->tokenizer(), sampler, prompt, options, nullptr);
            ASSERT_TRUE(result.ok()) << result.status().message();
            tokens[device] = result->tokens;
        }
        EXPECT_GE(tokens[0].size(), 1u);
        EXPECT_EQ(tokens[0], tokens[1]) << "temperature " << params.temperature << " seed " << params.seed;
    }
}

// Pipelined decoding (generate with device sampling queues the step for token i before it reads
// token i): a generation its text sink cancels drops the step it had queued, so the session goes
// on as one that never queued it: the same position, and in a second turn the same tokens, as
// with host sampling (which never queues ahead).
TEST_F(CudaEngine, PipelinedGenerateDropsTheStepQueuedPastAStop) {
    auto gpu = load(kTinyGemma4, Device::kCuda, WeightFormat::kBF16);
    ASSERT_TRUE(gpu);
    SamplingParams greedy;
    greedy.temperature = 0.0f;
    int64_t positions[2] = {0, 0};
    std::vector<int32_t> second_turn[2];
    for (int device = 0; device < 2; ++device) {
        auto session = gpu->new_session(256, 16);
        ASSERT_TRUE(session.ok());
        ASSERT_TRUE((*session)->can_rewind());
        GenerateOptions options;
        options.max_tokens = 40;
        options.device_sampling = device == 1;
        int texts = 0;
        Sampler first(greedy);
        Result<GenerateResult> result =
            generate(**session, gpu->tokenizer(), first, std::vector<int32_t>{2, 40, 41, 42, 43},
                     options, [&](std::string_view) { return ++texts < 4; });
        ASSERT_TRUE(result.ok()) << result.status().message();
        ASSERT_EQ(result->stop_reason, StopReason::kCancelled) << "the sink must stop it";
        positions[device] = (*session)->position();
        Sampler second(greedy);
        options.max_tokens = 16;
        result = generate(**session, gpu->tokenizer(), second, std::vector<int32_t>{50, 51, 52},
                          options, nullptr);
        ASSERT_TRUE(result.ok()) << result.status().message();
        second_turn[device] = result->tokens;
    }
    EXPECT_EQ(positions[0], positions[1]);
    EXPECT_EQ(second_turn[0], second_turn[1]);
}

// A model with recurrent state (Gated DeltaNet) cannot drop a step, so it pipelines only where
// the session ends with the generation (kestrel run); its tokens are host sampling's either way.
TEST_F(CudaEngine, TinyQwen35PipelinedGenerateMatchesHostSampling) {
    auto gpu = load(kTinyQwen35Gguf, Device::kCuda, WeightFormat::kW8);
    ASSERT_TRUE(gpu);
    SamplingParams greedy;
    greedy.temperature = 0.0f;
    std::vector<int32_t> tokens[3];
    for (int run = 0; run < 3; ++run) {  // host; device, session goes on; device, session ends
        auto session = gpu->new_session(256, 16);
        ASSERT_TRUE(session.ok());
        ASSERT_FALSE((*session)->can_rewind());
        GenerateOptions options;
        options.max_tokens = 32;
        options.device_sampling = run > 0;
        options.session_ends = run == 2;
        Sampler sampler(greedy);
        Result<GenerateResult> result =
            generate(**session, gpu->tokenizer(), sampler, std::vector<int32_t>{2, 50, 60, 70, 80},
                     options, nullptr);
        ASSERT_TRUE(result.ok()) << result.status().message();
        tokens[run] = result->tokens;
    }
    EXPECT_GE(tokens[0].size(), 1u);
    EXPECT_EQ(tokens[0], tokens[1]);
    EXPECT_EQ(tokens[0], tokens[2]);
}

TEST_F(CudaEngine, DefaultGemma3MatchesTheCpuReference) {
    Result<std::filesystem::path> path = default_model_path();
    if (!path.ok()) GTEST_SKIP() << path.status().message();
    auto cpu = load(path->string(), Device::kCpu, WeightFormat::kW4);
    auto gpu = load(path->string(), Device::kCuda, WeightFormat::kW4);
    ASSERT_TRUE(cpu && gpu);
    std::vector<int32_t> prompt = cpu->tokenizer().encode("Q: What is the capital of France?\nA:", false, true);
    // Chunks of 4: the prefill GEMM path on every chunk but the last.
    const Comparison c = compare_greedy(*cpu, *gpu, prompt, 24, 0.12, 4);
    std::printf("gemma3 270m Q4_K_M: worst max|diff|/max|logit| %.3g, %d binding greedy steps\n", c.worst_relative,
                c.greedy_checked);
    EXPECT_GE(c.greedy_checked, 12);
}

TEST_F(CudaEngine, SyntheticGemma3DecodesFiniteLogits) {
    EngineOptions options;
    options.dummy = "gemma3-270m";
    options.device = Device::kCuda;
    Result<std::unique_ptr<Engine>> engine = Engine::load(options);
    ASSERT_TRUE(engine.ok()) << engine.status().message();
    EXPECT_FALSE((*engine)->has_tokenizer());
    auto session = (*engine)->new_session(1024, 256);
    ASSERT_TRUE(session.ok());
    std::vector<int32_t> prompt(300);
    for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>((i * 7919) % 262144);
    Result<std::span<const float>> logits = (*session)->prefill(prompt);
    ASSERT_TRUE(logits.ok()) << logits.status().message();
    for (int step = 0; step < 5; ++step) {
        for (float v : *logits) ASSERT_TRUE(std::isfinite(v));
        logits = (*session)->decode(argmax(*logits));
        ASSERT_TRUE(logits.ok()) << logits.status().message();
    }
}

}  // namespace
}  // namespace kestrel
