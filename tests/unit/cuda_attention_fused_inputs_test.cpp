// The decode attention with the token's attention inputs fused in
// (attention_decode_fused_inputs_quantize_q8, attention_inputs.h) against the two launches it
// replaces: attention_inputs (held to its composition and its CPU twin in
// cuda_attention_inputs_test.cpp), then attention_decode_quantize_q8 (held to the CPU twin and to
// attention_decode + quantize_q8 in cuda_attention_test.cpp), run on a copy of the same inputs
// and cache. Bit for bit: the attention's fp32 rows, every byte of the Q8 blocks (both outputs
// poisoned with 0xff first), and the whole K and V caches; the raw q, k and v rows are left as
// they were. Shapes: Gemma 4 31B sliding (32 q / 16 kv heads x 256, window 1024 on a ring of
// 1031: the clusters combine the splits) and full (32 / 4 x 512, 64 rotating pairs, V = raw K:
// the reduce kernel), Gemma 3 (4 / 1 x 256, no V-norm), each with both combines (kAuto and
// kReduceKernel), at positions where the token's key is alone in its split, shares a tile loaded
// before the wait, sits in a tile the main loop loads, and where the ring has wrapped. A captured
// graph replayed at new device positions gives the two launches' bits too. Skips without a GPU.
#include <gtest/gtest.h>

#include <cstdint>

#include "kestrel/status.h"

#if KESTREL_HAS_CUDA
#include <cuda_runtime.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "ops/cuda/attention.h"
#include "ops/cuda/attention_inputs.h"
#include "ops/weight_format.h"

#include "cuda_decode_inputs_test_support.h"
#include "cuda_test_support.h"
#endif

namespace kestrel {
namespace {

#if !KESTREL_HAS_CUDA

TEST(CudaAttentionFusedInputs, NeedsTheCudaBuild) {
    GTEST_SKIP() << "built without CUDA (KESTREL_HAS_CUDA=0)";
}

#else

using kestrel::testing::copy_to_device;
using kestrel::testing::cuda_device_present;
using kestrel::testing::decode_output_floats;
using kestrel::testing::decode_q8_bytes;
using kestrel::testing::DecodeInputsHost;
using kestrel::testing::DecodeInputsShape;
using kestrel::testing::DecodeInputsSide;
using kestrel::testing::DeviceBuffer;
using kestrel::testing::download;
using kestrel::testing::expect_same_bits;
using kestrel::testing::expect_same_caches;

// The shape (q / k norm weights always, scale 1, no softcap) and the positions of one decode call
// each.
struct Case : DecodeInputsShape {
    const char* what;
    std::vector<int64_t> positions;
};

// DecodeInputsShape's fields in order: n_heads, n_kv_heads, head_dim, rotary_pairs, theta,
// qk_norm, v_from_raw_k, v_norm, window, capacity, scale, softcap.
// clang-format off
const Case kCases[] = {
    // 0: single pass; 37: one split; 300 / 513: the key alone in the last split or in a tile
    // loaded before the wait; 800: three tiles a split, the key's loaded in the main loop; 5000:
    // the ring wrapped.
    {{32, 16, 256, 128, 1e4, true, false, true, 1024, 1031, 1.0f, 0.0f}, "gemma4 sliding",
     {0, 37, 300, 513, 800, 5000}},
    {{32, 4, 512, 64, 1e6, true, true, true, 0, 4099, 1.0f, 0.0f}, "gemma4 full",
     {0, 100, 700, 3000}},
    {{4, 1, 256, 128, 1e6, true, false, false, 512, 515, 1.0f, 0.0f}, "gemma3", {3, 600}},
};
// clang-format on

// Finite bf16 bits (|x| < 4): the keys and values of the earlier positions.
std::vector<uint16_t> random_cache(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<int> exponent(120, 128), mantissa(0, 127), sign(0, 1);
    std::vector<uint16_t> c(n);
    for (uint16_t& v : c) {
        v = static_cast<uint16_t>((sign(rng) << 15) | (exponent(rng) << 7) | mantissa(rng));
    }
    return c;
}

DecodeInputsHost make_host_state(const Case& c, uint32_t seed) {
    DecodeInputsHost h = kestrel::testing::random_decode_inputs_rows(c, seed);
    h.k_cache = random_cache(kestrel::testing::decode_cache_elements(c), seed + 6);
    h.v_cache = random_cache(kestrel::testing::decode_cache_elements(c), seed + 7);
    return h;
}

// One side's device state, with the split-K workspace.
struct Side : DecodeInputsSide {
    DeviceBuffer workspace;
};

void make_side(const Case& c, const DecodeInputsHost& h, int64_t position, Side& s) {
    ASSERT_NO_FATAL_FAILURE(kestrel::testing::make_decode_inputs_side(c, h, position, s));
    const size_t workspace_bytes = cuda::attention_decode_workspace_bytes(1, s.cache, s.shape);
    ASSERT_GT(workspace_bytes, 0u);
    CUDA_OK(s.workspace.alloc(workspace_bytes));
    CUDA_OK(cudaDeviceSynchronize());
}

Status two_launches(Side& s, cuda::DecodeCombine combine, cudaStream_t stream) {
    KESTREL_RETURN_IF_ERROR(
        cuda::attention_inputs(s.inputs, s.position.as<int64_t>(), 1, s.cache, stream));
    return cuda::attention_decode_quantize_q8(s.q.as<float>(), s.position.as<int64_t>(), 1, s.cache,
                                              s.shape, s.workspace.as<void>(), s.out.as<float>(),
                                              s.q8.as<Q8Block>(), stream, combine);
}

Status fused_launch(Side& s, cuda::DecodeCombine combine, cudaStream_t stream) {
    return cuda::attention_decode_fused_inputs_quantize_q8(
        s.inputs, s.inv_freq.as<float>(), s.position.as<int64_t>(), s.cache, s.shape,
        s.workspace.as<void>(), s.out.as<float>(), s.q8.as<Q8Block>(), stream, combine);
}

void expect_same_outputs(const Case& c, const Side& fused, const Side& split,
                         const std::string& what) {
    const std::vector<float> out = download(fused.out.as<float>(), decode_output_floats(c));
    for (size_t i = 0; i < out.size(); ++i)
        ASSERT_FALSE(std::isnan(out[i])) << what << ": NaN at " << i;
    ASSERT_NO_FATAL_FAILURE(expect_same_bits(
        out, download(split.out.as<float>(), decode_output_floats(c)), what + " out"));
    ASSERT_NO_FATAL_FAILURE(expect_same_bits(download(fused.q8.as<uint8_t>(), decode_q8_bytes(c)),
                                             download(split.q8.as<uint8_t>(), decode_q8_bytes(c)),
                                             what + " Q8 blocks"));
    ASSERT_NO_FATAL_FAILURE(expect_same_caches(c, fused, split, what));
}

class CudaAttentionFusedInputs : public ::testing::Test {
protected:
    void SetUp() override {
        if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
    }
};

TEST_F(CudaAttentionFusedInputs, BitIdenticalToTheTwoLaunches) {
    uint32_t seed = 300;
    for (const Case& c : kCases) {
        for (const int64_t position : c.positions) {
            for (const cuda::DecodeCombine combine :
                 {cuda::DecodeCombine::kAuto, cuda::DecodeCombine::kReduceKernel}) {
                seed += 10;
                const std::string what =
                    std::string(c.what) + " at " + std::to_string(position) +
                    (combine == cuda::DecodeCombine::kAuto ? " (auto)" : " (reduce)");
                const DecodeInputsHost h = make_host_state(c, seed);
                Side fused, split;
                ASSERT_NO_FATAL_FAILURE(make_side(c, h, position, fused));
                ASSERT_NO_FATAL_FAILURE(make_side(c, h, position, split));
                ASSERT_TRUE(cuda::attention_decode_fuses_inputs(fused.inputs, 1, fused.cache))
                    << what;
                STATUS_OK(fused_launch(fused, combine, nullptr));
                STATUS_OK(two_launches(split, combine, nullptr));
                CUDA_OK(cudaDeviceSynchronize());
                ASSERT_NO_FATAL_FAILURE(expect_same_outputs(c, fused, split, what));
                // The raw rows stay as they were.
                expect_same_bits(download(fused.q.as<float>(), h.q.size()), h.q, what + " raw q");
                expect_same_bits(download(fused.k.as<float>(), h.k.size()), h.k, what + " raw k");
            }
        }
    }
}

// The decode step's way: one capture, replays with new device positions and rows (the Gemma 4
// sliding shape: the cluster combine).
TEST_F(CudaAttentionFusedInputs, CapturedGraphReplaysAtNewPositions) {
    const Case& c = kCases[0];
    const DecodeInputsHost first = make_host_state(c, 7000);
    Side fused, split;
    ASSERT_NO_FATAL_FAILURE(make_side(c, first, 0, fused));
    ASSERT_NO_FATAL_FAILURE(make_side(c, first, 0, split));
    cudaStream_t stream;
    CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    const Status captured = fused_launch(fused, cuda::DecodeCombine::kAuto, stream);
    CUDA_OK(cudaStreamEndCapture(stream, &graph));
    STATUS_OK(captured);
    CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
    uint32_t seed = 7100;
    for (const int64_t position : {int64_t{5}, int64_t{513}, int64_t{900}, int64_t{2100}}) {
        seed += 10;
        const DecodeInputsHost h = make_host_state(c, seed);
        for (Side* s : {&fused, &split}) {
            copy_to_device(s->q.as<float>(), h.q);
            copy_to_device(s->k.as<float>(), h.k);
            copy_to_device(s->v.as<float>(), h.v);
            copy_to_device(s->position.as<int64_t>(), std::vector<int64_t>{position});
            ASSERT_NO_FATAL_FAILURE(kestrel::testing::poison_decode_outputs(c, *s));
        }
        CUDA_OK(cudaGraphLaunch(exec, stream));
        CUDA_OK(cudaStreamSynchronize(stream));
        STATUS_OK(two_launches(split, cuda::DecodeCombine::kAuto, nullptr));
        CUDA_OK(cudaDeviceSynchronize());
        ASSERT_NO_FATAL_FAILURE(
            expect_same_outputs(c, fused, split, "graph replay at " + std::to_string(position)));
    }
    CUDA_OK(cudaGraphExecDestroy(exec));
    CUDA_OK(cudaGraphDestroy(graph));
    CUDA_OK(cudaStreamDestroy(stream));
}

// What the kernel does not fuse is refused, with a message, rather than computed wrongly.
TEST_F(CudaAttentionFusedInputs, RefusesWhatItDoesNotFuse) {
    const Case& c = kCases[0];
    const DecodeInputsHost h = make_host_state(c, 9000);
    Side s;
    ASSERT_NO_FATAL_FAILURE(make_side(c, h, 10, s));
    EXPECT_TRUE(cuda::attention_decode_fuses_inputs(s.inputs, 1, s.cache));
    EXPECT_FALSE(cuda::attention_decode_fuses_inputs(s.inputs, 2, s.cache)) << "two tokens";
    cuda::AttentionInputs partial = s.inputs;
    partial.partial_rotary_dim = 64;  // Qwen3.5's pairing
    EXPECT_FALSE(cuda::attention_decode_fuses_inputs(partial, 1, s.cache));
    const Status refused = cuda::attention_decode_fused_inputs_quantize_q8(
        partial, s.inv_freq.as<float>(), s.position.as<int64_t>(), s.cache, s.shape,
        s.workspace.as<void>(), nullptr, s.q8.as<Q8Block>(), nullptr);
    EXPECT_EQ(refused.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(refused.message().find("not a fused shape"), std::string::npos) << refused.message();
    cuda::KvCacheBf16View narrow = s.cache;
    narrow.head_dim = narrow.v_head_dim = 128;
    cuda::AttentionInputs narrow_inputs = s.inputs;
    narrow_inputs.head_dim = 128;
    narrow_inputs.rotary_pairs = 64;
    EXPECT_FALSE(cuda::attention_decode_fuses_inputs(narrow_inputs, 1, narrow)) << "head dim 128";
    const Status no_q8 = cuda::attention_decode_fused_inputs_quantize_q8(
        s.inputs, s.inv_freq.as<float>(), s.position.as<int64_t>(), s.cache, s.shape,
        s.workspace.as<void>(), s.out.as<float>(), nullptr, nullptr);
    EXPECT_EQ(no_q8.code(), StatusCode::kInvalidArgument);
    const Status no_table = cuda::attention_decode_fused_inputs_quantize_q8(
        s.inputs, nullptr, s.position.as<int64_t>(), s.cache, s.shape, s.workspace.as<void>(),
        s.out.as<float>(), s.q8.as<Q8Block>(), nullptr);
    EXPECT_EQ(no_table.code(), StatusCode::kInvalidArgument) << "rotating pairs, no inv_freq";
}

#endif

}  // namespace
}  // namespace kestrel
