// GPU sampling (src/ops/cuda/sampling.h) against its CPU twin, kestrel::Sampler and
// kestrel::argmax (runtime/sampler.h): the same ids, draw by draw, for the same parameters, seed,
// logits and accepted tokens. Skips without a GPU.
//   Greedy: random logits at Gemma's vocab (262144) and odd sizes, ties (lowest id wins), -inf,
//     +inf, -0 vs +0, NaN (at id 0 it wins, elsewhere it is ignored), as kestrel::argmax.
//   The chain (penalties -> top-k -> top-p -> min-p -> temperature -> draw): 200 draws per
//     parameter set over fresh random logits, each drawn token accepted by both samplers, then a
//     reset and more draws: top-k 40 / top-p 0.9 / min-p 0.05 / T 0.7; top-k off (top-p keeps
//     ~half the vocabulary); everything off (the draw walks all 262144); penalties with a window
//     and with the whole history; many tied logits; tiny vocabularies; greedy with penalties.
//   The same, captured once into a CUDA graph (sample + accept) and replayed.
// The token output is poisoned (-1) before every sample.
#include <gtest/gtest.h>

#if KESTREL_HAS_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "ops/cuda/sampling.h"
#include "runtime/sampler.h"

#include "cuda_test_support.h"
#endif

namespace kestrel {
namespace {

#if !KESTREL_HAS_CUDA

TEST(CudaSampling, NeedsTheCudaBuild) { GTEST_SKIP() << "built without CUDA (KESTREL_HAS_CUDA=0)"; }

#else

using kestrel::testing::cuda_device_present;
using kestrel::testing::DeviceBuffer;

class CudaSampling : public ::testing::Test {
protected:
    void SetUp() override {
        if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
    }
};

cuda::GpuSamplingParams gpu_params(const SamplingParams& p) {
    cuda::GpuSamplingParams g;
    g.temperature = p.temperature;
    g.top_k = p.top_k;
    g.top_p = p.top_p;
    g.min_p = p.min_p;
    g.repeat_penalty = p.repeat_penalty;
    g.repeat_last_n = p.repeat_last_n;
    g.presence_penalty = p.presence_penalty;
    g.frequency_penalty = p.frequency_penalty;
    g.seed = p.seed;
    return g;
}

// A fast deterministic source of normals (the test draws tens of millions).
class Noise {
public:
    explicit Noise(uint64_t seed) : state_(seed) {}
    uint64_t next() {
        state_ += 1;
        return splitmix64(state_ * 0x9E3779B97F4A7C15ull);
    }
    double uniform() { return (static_cast<double>(next() >> 11) + 0.5) * 0x1.0p-53; }
    float normal() {
        return static_cast<float>(std::sqrt(-2.0 * std::log(uniform())) * std::cos(6.283185307179586 * uniform()));
    }

private:
    uint64_t state_;
};

struct LogitShape {
    float sigma = 2.0f;     // spread of the logits
    int32_t hot = 0;        // ids [0, hot) get + hot_boost, so they are drawn (and penalised) often
    float hot_boost = 0.0f;
    float quantum = 0.0f;   // > 0: logits rounded to multiples of it, so many tie
};

std::vector<float> random_logits(int64_t vocab, const LogitShape& shape, Noise& noise) {
    std::vector<float> logits(static_cast<size_t>(vocab));
    for (int64_t i = 0; i < vocab; ++i) {
        float l = shape.sigma * noise.normal();
        if (i < shape.hot) l += shape.hot_boost;
        if (shape.quantum > 0) l = std::round(l / shape.quantum) * shape.quantum;
        logits[static_cast<size_t>(i)] = l;
    }
    return logits;
}

struct ChainCase {
    const char* what;
    SamplingParams params;
    int64_t vocab;
    LogitShape shape;
    std::vector<int32_t> prompt;  // accepted before the first draw, as one batch on the GPU
    int draws = 200;
};

// Samples `draws` tokens on both sides from the same logits, accepting each on both; then resets
// both, accepts the prompt again and draws a quarter as many more.
void check_chain(const ChainCase& c) {
    Sampler cpu(c.params);
    Result<cuda::GpuSampler> created = cuda::GpuSampler::create(c.vocab, gpu_params(c.params));
    ASSERT_TRUE(created.ok()) << created.status().message();
    cuda::GpuSampler& gpu = created.value();
    cudaStream_t stream = nullptr;
    CUDA_OK(cudaStreamCreate(&stream));
    DeviceBuffer logits_device, token_device, prompt_device;
    CUDA_OK(logits_device.alloc(static_cast<size_t>(c.vocab) * 4));
    CUDA_OK(token_device.alloc(4));
    CUDA_OK(prompt_device.alloc(c.prompt.size() * 4));
    if (!c.prompt.empty()) {
        CUDA_OK(cudaMemcpy(prompt_device.as<void>(), c.prompt.data(), c.prompt.size() * 4, cudaMemcpyHostToDevice));
        kestrel::testing::wait_for_host_copies();
    }
    Noise noise(c.params.seed * 7919 + static_cast<uint64_t>(c.vocab));
    int from_boosted = 0;
    for (int round = 0; round < 2; ++round) {
        if (round == 1) {
            cpu.reset();
            STATUS_OK(gpu.reset(stream));
        }
        for (int32_t t : c.prompt) cpu.accept(t);
        STATUS_OK(gpu.accept(prompt_device.as<int32_t>(), static_cast<int64_t>(c.prompt.size()), stream));
        const int draws = round == 0 ? c.draws : c.draws / 4;
        for (int step = 0; step < draws; ++step) {
            const std::vector<float> logits = random_logits(c.vocab, c.shape, noise);
            CUDA_OK(cudaMemcpyAsync(logits_device.as<void>(), logits.data(), logits.size() * 4, cudaMemcpyHostToDevice,
                                    stream));
            CUDA_OK(cudaMemsetAsync(token_device.as<void>(), 0xff, 4, stream));
            STATUS_OK(gpu.sample(logits_device.as<float>(), token_device.as<int32_t>(), stream));
            int32_t got = -1;
            CUDA_OK(cudaMemcpyAsync(&got, token_device.as<void>(), 4, cudaMemcpyDeviceToHost, stream));
            CUDA_OK(cudaStreamSynchronize(stream));
            const int32_t expected = cpu.sample(logits);
            ASSERT_EQ(got, expected) << c.what << ": round " << round << " draw " << step;
            cpu.accept(expected);
            STATUS_OK(gpu.accept(token_device.as<int32_t>(), stream));
            if (expected < c.shape.hot) ++from_boosted;
        }
    }
    CUDA_OK(cudaStreamDestroy(stream));
    std::printf("%s: %d draws equal (%d from the boosted ids)\n", c.what, c.draws + c.draws / 4, from_boosted);
}

TEST_F(CudaSampling, GreedyIsArgmax) {
    Noise noise(1);
    const float inf = std::numeric_limits<float>::infinity();
    const float nan = std::numeric_limits<float>::quiet_NaN();
    struct Case {
        std::string what;
        std::vector<float> logits;
    };
    std::vector<Case> cases;
    for (int64_t vocab : {262144, 1000, 33, 1}) {
        cases.push_back({"random " + std::to_string(vocab), random_logits(vocab, {}, noise)});
    }
    std::vector<float> ties = random_logits(262144, {}, noise);
    for (size_t i : {200000u, 5000u, 7u, 131072u}) ties[i] = 50.0f;
    cases.push_back({"ties: lowest id", ties});
    std::vector<float> nan_elsewhere = ties;
    nan_elsewhere[3] = nan;
    nan_elsewhere[7] = nan;
    cases.push_back({"NaN away from id 0 is ignored", nan_elsewhere});
    std::vector<float> nan_first = ties;
    nan_first[0] = nan;
    cases.push_back({"NaN at id 0 wins", nan_first});
    std::vector<float> minus_inf(262144, -inf);
    cases.push_back({"all -inf", minus_inf});
    minus_inf[123456] = -1e30f;
    cases.push_back({"one finite among -inf", minus_inf});
    std::vector<float> plus_inf = random_logits(5000, {}, noise);
    plus_inf[4000] = inf;
    plus_inf[4001] = inf;
    cases.push_back({"+inf", plus_inf});
    std::vector<float> zeros(100, -1.0f);
    zeros[30] = -0.0f;
    zeros[10] = 0.0f;
    zeros[40] = -0.0f;
    cases.push_back({"-0 ties +0", zeros});
    std::vector<float> all_nan(64, nan);
    all_nan[0] = -inf;
    cases.push_back({"-inf at 0, NaN elsewhere", all_nan});

    for (const Case& c : cases) {
        const int64_t vocab = static_cast<int64_t>(c.logits.size());
        SamplingParams params;
        params.temperature = 0.0f;
        Sampler cpu(params);
        const int32_t expected = argmax(c.logits);
        ASSERT_EQ(cpu.sample(c.logits), expected) << c.what;
        Result<cuda::GpuSampler> gpu = cuda::GpuSampler::create(vocab, gpu_params(params));
        ASSERT_TRUE(gpu.ok()) << gpu.status().message();
        DeviceBuffer logits_device, token_device;
        CUDA_OK(logits_device.alloc(c.logits.size() * 4));
        CUDA_OK(token_device.alloc(4));
        CUDA_OK(cudaMemcpy(logits_device.as<void>(), c.logits.data(), c.logits.size() * 4, cudaMemcpyHostToDevice));
        kestrel::testing::wait_for_host_copies();
        for (int repeat = 0; repeat < 2; ++repeat) {  // the second run checks the ticket was re-armed
            CUDA_OK(cudaMemset(token_device.as<void>(), 0xff, 4));
            kestrel::testing::wait_for_host_copies();
            STATUS_OK(gpu->sample(logits_device.as<float>(), token_device.as<int32_t>(), nullptr));
            int32_t got = -1;
            CUDA_OK(cudaMemcpy(&got, token_device.as<void>(), 4, cudaMemcpyDeviceToHost));
            EXPECT_EQ(got, expected) << c.what;
        }
    }
}

SamplingParams chain_params(float temperature, int32_t top_k, float top_p, float min_p, uint64_t seed) {
    SamplingParams p;
    p.temperature = temperature;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.seed = seed;
    return p;
}

TEST_F(CudaSampling, TopKTopPMinPEqualsCpu) {
    check_chain({"T 0.7, top-k 40, top-p 0.9, min-p 0.05", chain_params(0.7f, 40, 0.9f, 0.05f, 1), 262144,
                 {.sigma = 2.0f}, {}, 200});
}

TEST_F(CudaSampling, TopKOffEqualsCpu) {
    // Over N(0, 2) logits top-p 0.9 keeps most of the vocabulary; min-p then cuts to a few hundred.
    check_chain({"T 0.8, top-k off, top-p 0.9, min-p 0.05", chain_params(0.8f, 0, 0.9f, 0.05f, 2), 262144,
                 {.sigma = 2.0f}, {}, 200});
    check_chain({"T 1.2, top-k off, top-p 0.6, min-p off", chain_params(1.2f, 0, 0.6f, 0.0f, 3), 262144,
                 {.sigma = 3.0f}, {}, 100});
}

TEST_F(CudaSampling, EverythingOffDrawsFromTheWholeVocabulary) {
    check_chain({"T 1, no cuts", chain_params(1.0f, 0, 1.0f, 0.0f, 4), 262144, {.sigma = 1.0f}, {}, 200});
    check_chain({"T 0.5, top-k 1000 only", chain_params(0.5f, 1000, 1.0f, 0.0f, 5), 262144, {.sigma = 1.0f}, {},
                 200});
}

TEST_F(CudaSampling, PenaltiesEqualCpu) {
    // Ids below 100 are boosted so that most draws come from them and the penalties decide.
    const LogitShape hot{.sigma = 1.0f, .hot = 100, .hot_boost = 8.0f};
    std::vector<int32_t> prompt;
    for (int32_t i = 0; i < 40; ++i) prompt.push_back((i * 37) % 100);
    prompt.push_back(-5);      // outside the vocabulary: counted in the window, never penalised
    prompt.push_back(262150);
    SamplingParams windowed = chain_params(1.0f, 50, 0.95f, 0.0f, 6);
    windowed.repeat_penalty = 1.3f;
    windowed.repeat_last_n = 64;
    windowed.presence_penalty = 0.5f;
    windowed.frequency_penalty = 0.25f;
    check_chain({"penalties, window 64", windowed, 262144, hot, prompt, 200});

    SamplingParams whole = chain_params(0.9f, 0, 0.8f, 0.1f, 7);
    whole.repeat_last_n = -1;
    whole.frequency_penalty = 0.4f;
    check_chain({"frequency penalty, whole history, vocab 32000", whole, 32000, hot, prompt, 200});

    SamplingParams short_window = chain_params(1.0f, 20, 1.0f, 0.05f, 8);
    short_window.repeat_penalty = 3.0f;
    short_window.repeat_last_n = 4;  // the 42-token prompt overflows it in one batch
    check_chain({"repeat penalty, window 4", short_window, 5000, {.sigma = 1.0f, .hot = 10, .hot_boost = 6.0f},
                 prompt, 200});

    SamplingParams greedy;
    greedy.temperature = 0.0f;
    greedy.repeat_penalty = 1.5f;
    greedy.repeat_last_n = 8;
    greedy.presence_penalty = 0.3f;
    check_chain({"greedy with penalties", greedy, 262144, hot, prompt, 200});
}

TEST_F(CudaSampling, TiesAndTinyVocabulariesEqualCpu) {
    // Logits on a 0.5 grid: dozens tie at every cut, and the order among them is by id.
    check_chain({"ties, top-k 100", chain_params(1.0f, 100, 0.95f, 0.0f, 9), 1000, {.sigma = 1.5f, .quantum = 0.5f},
                 {}, 200});
    check_chain({"ties, top-k off", chain_params(1.0f, 0, 0.7f, 0.02f, 10), 262144, {.sigma = 1.5f, .quantum = 0.5f},
                 {}, 100});
    check_chain({"vocab 7, top-k 3", chain_params(1.0f, 3, 0.9f, 0.0f, 11), 7, {.sigma = 1.0f}, {}, 200});
    check_chain({"vocab 1", chain_params(1.0f, 40, 0.9f, 0.05f, 12), 1, {.sigma = 1.0f}, {}, 20});
    check_chain({"top-k 1", chain_params(1.0f, 1, 0.5f, 0.5f, 13), 3000, {.sigma = 1.0f}, {}, 50});
}

// The step captured once (sample, then accept the sampled token) and replayed: only device
// contents change between replays (new logits; the history and draw counter on the device).
TEST_F(CudaSampling, CapturedGraphReplaysEqualCpu) {
    SamplingParams params = chain_params(0.7f, 40, 0.9f, 0.05f, 14);
    params.repeat_penalty = 1.2f;
    params.presence_penalty = 0.2f;
    const int64_t vocab = 262144;
    const LogitShape shape{.sigma = 1.5f, .hot = 64, .hot_boost = 7.0f};
    Sampler cpu(params);
    Result<cuda::GpuSampler> created = cuda::GpuSampler::create(vocab, gpu_params(params));
    ASSERT_TRUE(created.ok()) << created.status().message();
    cuda::GpuSampler& gpu = created.value();
    cudaStream_t stream = nullptr;
    CUDA_OK(cudaStreamCreate(&stream));
    DeviceBuffer logits_device, token_device;
    CUDA_OK(logits_device.alloc(static_cast<size_t>(vocab) * 4));
    CUDA_OK(token_device.alloc(4));
    CUDA_OK(cudaMemset(logits_device.as<void>(), 0, static_cast<size_t>(vocab) * 4));
    kestrel::testing::wait_for_host_copies();

    cudaGraph_t graph = nullptr;
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    const Status sampled = gpu.sample(logits_device.as<float>(), token_device.as<int32_t>(), stream);
    const Status accepted = gpu.accept(token_device.as<int32_t>(), stream);
    CUDA_OK(cudaStreamEndCapture(stream, &graph));
    STATUS_OK(sampled);
    STATUS_OK(accepted);
    cudaGraphExec_t exec = nullptr;
    CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));

    Noise noise(99);
    for (int step = 0; step < 100; ++step) {
        const std::vector<float> logits = random_logits(vocab, shape, noise);
        CUDA_OK(cudaMemcpyAsync(logits_device.as<void>(), logits.data(), logits.size() * 4, cudaMemcpyHostToDevice,
                                stream));
        CUDA_OK(cudaMemsetAsync(token_device.as<void>(), 0xff, 4, stream));
        CUDA_OK(cudaGraphLaunch(exec, stream));
        int32_t got = -1;
        CUDA_OK(cudaMemcpyAsync(&got, token_device.as<void>(), 4, cudaMemcpyDeviceToHost, stream));
        CUDA_OK(cudaStreamSynchronize(stream));
        const int32_t expected = cpu.sample(logits);
        cpu.accept(expected);
        ASSERT_EQ(got, expected) << "replay " << step;
    }
    CUDA_OK(cudaGraphExecDestroy(exec));
    CUDA_OK(cudaGraphDestroy(graph));
    CUDA_OK(cudaStreamDestroy(stream));
}

TEST_F(CudaSampling, RejectsBadArguments) {
    cuda::GpuSamplingParams params;
    EXPECT_FALSE(cuda::GpuSampler::create(0, params).ok());
    params.top_p = 0.0f;
    EXPECT_FALSE(cuda::GpuSampler::create(100, params).ok());
    params = {};
    params.repeat_last_n = -2;
    EXPECT_FALSE(cuda::GpuSampler::create(100, params).ok());
    params = {};
    Result<cuda::GpuSampler> gpu = cuda::GpuSampler::create(100, params);
    ASSERT_TRUE(gpu.ok());
    EXPECT_EQ(gpu->sample(nullptr, nullptr, nullptr).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(gpu->accept(nullptr, 3, nullptr).code(), StatusCode::kInvalidArgument);
}

#endif  // KESTREL_HAS_CUDA

}  // namespace
}  // namespace kestrel
