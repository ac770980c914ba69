// Gemma 4's sliding-layer decode on warps that own keys (attention_decode_warp_keys_quantize_q8,
// attention_inputs.h) against attention_inputs (held to its composition and CPU twin in
// cuda_attention_inputs_test.cpp) run on a copy of the same raw rows and cache, and against a
// host reference in double built from what attention_inputs left: its normalised, rotated q
// rounded to bf16 (fp32_to_bf16, core/half.h) and its cache.
//
// Bit for bit: the whole K and V caches (the token's rows must be attention_inputs' rows, in
// slot position % capacity, and nothing else may change), the raw q, k and v (left as they
// were), and every byte of the Q8 blocks against cuda::quantize_q8 of the kernel's own fp32 rows
// (both outputs poisoned with 0xff first, so a missing write shows; a second call with out null
// must give the same blocks). The flash kernels round the probabilities to bf16 and this one does
// not, so the fp32 rows are held to the reference, not to attention_decode_quantize_q8.
//
// Budget per output column d of query head h: |gpu - ref| <= 2^-12 A_d + 2^-16 max|v|, where
// A_d = sum_j p_j |v_j[d]| over the keys the token sees (p the reference probabilities) and max|v|
// is the largest |v| of those keys' V rows. Why that much: q and K are bf16 on both sides, so
// every product q_i k_i is exact in fp32 and a score differs from the double one only by the
// rounding of its 255 fp32 additions (2^-24 each, of random sign: ~1e-6 absolute for an old key,
// ~1e-5 for the token's own key, whose normalised row is 16 times larger; ~1e-4 only if they all
// went one way); the scale, softcap's tanh, the fp32 log2(e) product and exp2 add ~1e-6
// relative. A score error delta_j moves column d by sum_j p_j delta_j (v_j[d] - out[d]), at most
// 2 max|delta| A_d; the fp32 sums of p_j and p_j v_j over at most 1024 keys add ~1e-6 A_d. So
// ~2^-16 A_d at most is expected (a host emulation of this file's cases with 8-term lane sums, a
// shuffle tree and exp2f stayed under 1% of the budget), and 2^-12 leaves room for the kernel's
// own order of operations while staying tight enough to fail (the same emulation's worst ratios
// in brackets): probabilities rounded to bf16 before P V (relative error up to 2^-9; 1.1 to 10
// budgets, most where a few keys or one dominant key hold the probability: positions 1 to 8, and
// heads where the token's own key wins); q not rounded to bf16 (9 to 140); the window's oldest key
// left out (30 to 100: old keys' p ~ 1/(1024 e^0.5) ~ 6e-4 each); the token's own key left out
// (thousands: its score has std ~16, the old keys' ~1, so it takes most of the probability in
// about a third of the heads); and any key outside the window: every slot the token may not see
// holds V = 4096 (kHiddenValue), a thousand budgets even for a key of probability 1e-4. Those
// slots include the token's own slot before the write, so a kernel that used the slot's old
// contents instead of the token's fresh k and v rows (or read it before the write landed) fails
// too. 2^-16 max|v| is a floor for columns whose A_d is tiny. The worst ratio error / budget is
// printed per case.
// Old keys are N(0, (1/16)^2) and old values N(0, 1) rounded to bf16 (not
// cuda_attention_fused_inputs_test's log-uniform bits, |x| < 4): scores of std ~1 spread the
// probability over hundreds of keys, so one key more or less shows, and no outliers inflate
// max|v|.
//
// Cases: Gemma 4 31B sliding (32 q / 16 kv heads x 256, 128 rotating pairs, V-norm, window 1024
// on a ring of 1031 and on the engine's ring of window + 512 - 1 = 1535). The kernel cuts the
// live keys into one split range per block of a cluster (8, 6 or 4, as the GPU holds them: 6 on
// the H100) in whole 8-key batches, which its 16 warps take in turn, so the positions cover: the
// token alone with every other split empty (0); one batch part-filled or full (1, 7); a second
// split holding one key (8); ranges that leave the last splits empty (37, 128) or end short (127,
// 300, 513); a window not yet full (600 on the larger ring); the window full (from 1023: past 768
// keys at 6 splits some warps take a second batch); sliding before the ring wraps (1024, 1030,
// 1534: the last slot); the token in slot 0 as the ring wraps (1031, 1535); and a window
// straddling the wrap (1500, 4000, 5000). Then the things the
// kernel must honour, a few positions each: softcap (30, with scale 1/16), fewer rotating pairs
// (64), no q / k norm weights, V = the raw K (V's input NaN, to prove it is ignored), no V-norm, a
// small model (4 / 2 heads, window 512 on 515 slots), the shortest windows (1 key; 100 keys,
// not a multiple of a warp's 8), and a cache of the context's 520 slots, fewer than the window
// (how kestrel bench sizes it at depth 512). A graph captured once replays at new device positions
// with the bits of direct calls. What it does not take (head dim 512, four query heads per kv
// head, a full layer, a window over kWarpKeysMaxKeys, Qwen's partial rotary, no Q8 output) is
// refused with a message. Skips without a GPU.
#include <gtest/gtest.h>

#include <cstdint>

#include "kestrel/status.h"

#if KESTREL_HAS_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "core/half.h"
#include "ops/cuda/attention.h"
#include "ops/cuda/attention_inputs.h"
#include "ops/cuda/gemv_w4a8.h"  // quantize_q8
#include "ops/weight_format.h"

#include "cuda_decode_inputs_test_support.h"
#include "cuda_test_support.h"
#endif

namespace kestrel {
namespace {

#if !KESTREL_HAS_CUDA

TEST(CudaAttentionWarpKeys, NeedsTheCudaBuild) {
    GTEST_SKIP() << "built without CUDA (KESTREL_HAS_CUDA=0)";
}

#else

using kestrel::testing::copy_to_device;
using kestrel::testing::cuda_device_present;
using kestrel::testing::decode_cache_elements;
using kestrel::testing::decode_output_floats;
using kestrel::testing::decode_q8_bytes;
using kestrel::testing::DecodeInputsHost;
using kestrel::testing::DecodeInputsShape;
using kestrel::testing::DecodeInputsSide;
using kestrel::testing::DeviceBuffer;
using kestrel::testing::download;
using kestrel::testing::expect_same_bits;
using kestrel::testing::expect_same_caches;
using kestrel::testing::make_decode_inputs_side;
using kestrel::testing::poison_decode_outputs;

using Side = DecodeInputsSide;

constexpr float kOldKeySigma = 1.0f / 16.0f;
constexpr float kHiddenValue = 4096.0f;  // exact in bf16

// The shape and the positions of one decode call each.
struct Case : DecodeInputsShape {
    const char* what;
    std::vector<int64_t> positions;
};

// clang-format off
const Case kCases[] = {
    // {n_heads, n_kv_heads, head_dim, rotary_pairs, theta, qk_norm, v_from_raw_k, v_norm,
    //  window, capacity, scale, softcap}, what, positions
    {{32, 16, 256, 128, 1e4, true, false, true, 1024, 1031, 1.0f, 0.0f}, "gemma4 sliding",
     {0, 1, 7, 8, 37, 127, 128, 300, 513, 1023, 1024, 1030, 1031, 1500, 5000}},
    {{32, 16, 256, 128, 1e4, true, false, true, 1024, 1535, 1.0f, 0.0f}, "gemma4 sliding, ring 1535",
     {600, 1534, 1535, 4000}},
    {{32, 16, 256, 128, 1e4, true, false, true, 1024, 1031, 1.0f / 16.0f, 30.0f},
     "softcap 30, scale 1/16", {5, 700, 3000}},
    {{32, 16, 256, 64, 1e4, true, false, true, 1024, 1031, 1.0f, 0.0f}, "64 rotating pairs",
     {5, 700, 3000}},
    {{32, 16, 256, 128, 1e4, false, false, true, 1024, 1031, 1.0f, 0.0f}, "no q / k norm weights",
     {5, 700, 3000}},
    {{32, 16, 256, 128, 1e4, true, true, true, 1024, 1031, 1.0f, 0.0f}, "v = raw k",
     {5, 700, 3000}},
    {{32, 16, 256, 128, 1e4, true, false, false, 1024, 1031, 1.0f, 0.0f}, "no v norm",
     {5, 700, 3000}},
    {{4, 2, 256, 128, 1e4, true, false, true, 512, 515, 1.0f, 0.0f}, "small model",
     {5, 700, 3000}},
    // A context shorter than the window: the engine sizes the sliding cache to the context
    // (kestrel bench at depth 512: 520 slots), so every position is below the capacity.
    {{32, 16, 256, 128, 1e4, true, false, true, 1024, 520, 1.0f, 0.0f},
     "context of 520 < window", {0, 9, 511, 519}},
    {{32, 16, 256, 128, 1e4, true, false, true, 1, 1031, 1.0f, 0.0f}, "window 1",
     {0, 5, 3000}},
    {{32, 16, 256, 128, 1e4, true, false, true, 100, 103, 1.0f, 0.0f}, "window 100",
     {5, 99, 100, 3000}},
};
// clang-format on

// bf16 bits of N(0, sigma^2) draws.
std::vector<uint16_t> random_bf16(size_t n, uint32_t seed, float sigma) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, sigma);
    std::vector<uint16_t> c(n);
    for (uint16_t& v : c) v = fp32_to_bf16(normal(rng));
    return c;
}

DecodeInputsHost make_host_state(const Case& c, uint32_t seed) {
    DecodeInputsHost h = kestrel::testing::random_decode_inputs_rows(c, seed);
    h.k_cache = random_bf16(decode_cache_elements(c), seed + 6, kOldKeySigma);
    h.v_cache = random_bf16(decode_cache_elements(c), seed + 7, 1.0f);
    return h;
}

int64_t first_visible(const Case& c, int64_t position) {
    return std::max<int64_t>(0, position - c.window + 1);
}

// Every slot the token at `position` may not see (its own slot included: the write replaces it)
// gets V = kHiddenValue, so a key read from outside the window cannot hide in the budget.
void hide_invisible_values(const Case& c, int64_t position, DecodeInputsHost& h) {
    std::vector<bool> visible(static_cast<size_t>(c.capacity), false);
    for (int64_t kp = first_visible(c, position); kp < position; ++kp) {
        visible[static_cast<size_t>(kp % c.capacity)] = true;
    }
    const size_t row = static_cast<size_t>(c.n_kv_heads * c.head_dim);
    const uint16_t hidden = fp32_to_bf16(kHiddenValue);
    for (size_t slot = 0; slot < visible.size(); ++slot) {
        if (visible[slot]) continue;
        std::fill_n(h.v_cache.begin() + static_cast<std::ptrdiff_t>(slot * row), row, hidden);
    }
}

Status warp_keys(Side& s, float* out, cudaStream_t stream) {
    return cuda::attention_decode_warp_keys_quantize_q8(s.inputs, s.inv_freq.as<float>(),
                                                        s.position.as<int64_t>(), s.cache, s.shape,
                                                        out, s.q8.as<Q8Block>(), stream);
}

// The Q8 blocks against cuda::quantize_q8 of the kernel's own fp32 rows.
void expect_q8_of_out(const Case& c, const Side& s, const std::string& what) {
    const int64_t row = static_cast<int64_t>(decode_output_floats(c));
    DeviceBuffer want;
    CUDA_OK(want.alloc(decode_q8_bytes(c)));
    STATUS_OK(cuda::quantize_q8(s.out.as<float>(), 1, row, row, want.as<Q8Block>(), nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    expect_same_bits(download(s.q8.as<uint8_t>(), decode_q8_bytes(c)),
                     download(want.as<uint8_t>(), decode_q8_bytes(c)), what + " Q8 blocks");
}

// out against the double reference over attention_inputs' q (rounded to bf16) and cache; the
// budget is the header's. Returns through `worst` the largest error / budget.
void expect_near_reference(const Case& c, int64_t position, const std::vector<float>& q,
                           const std::vector<uint16_t>& k_cache,
                           const std::vector<uint16_t>& v_cache, const std::vector<float>& gpu,
                           const std::string& what, double& worst) {
    const int64_t d_head = c.head_dim;
    const int64_t group = c.n_heads / c.n_kv_heads;
    const int64_t first = first_visible(c, position);
    const size_t n_keys = static_cast<size_t>(position - first + 1);
    std::vector<double> q16(static_cast<size_t>(d_head)), score(n_keys), ref(q16.size()),
        abs_pv(q16.size());
    int64_t failures = 0;
    std::string first_failure;
    for (int64_t h = 0; h < c.n_heads; ++h) {
        const int64_t kv = h / group;
        for (int64_t i = 0; i < d_head; ++i) {
            q16[static_cast<size_t>(i)] =
                bf16_to_fp32(fp32_to_bf16(q[static_cast<size_t>(h * d_head + i)]));
        }
        auto row_of = [&](size_t j) {
            const int64_t slot = (first + static_cast<int64_t>(j)) % c.capacity;
            return static_cast<size_t>((slot * c.n_kv_heads + kv) * d_head);
        };
        double max_score = -INFINITY;
        for (size_t j = 0; j < n_keys; ++j) {
            const uint16_t* k = k_cache.data() + row_of(j);
            double s = 0.0;
            for (int64_t i = 0; i < d_head; ++i)
                s += q16[static_cast<size_t>(i)] * bf16_to_fp32(k[i]);
            s *= static_cast<double>(c.scale);
            if (c.softcap > 0.0f) s = c.softcap * std::tanh(s / c.softcap);
            score[j] = s;
            max_score = std::max(max_score, s);
        }
        double sum = 0.0;
        for (double& s : score) sum += (s = std::exp(s - max_score));
        std::fill(ref.begin(), ref.end(), 0.0);
        std::fill(abs_pv.begin(), abs_pv.end(), 0.0);
        double max_v = 0.0;
        for (size_t j = 0; j < n_keys; ++j) {
            const double p = score[j] / sum;
            const uint16_t* v = v_cache.data() + row_of(j);
            for (int64_t i = 0; i < d_head; ++i) {
                const double x = bf16_to_fp32(v[i]);
                ref[static_cast<size_t>(i)] += p * x;
                abs_pv[static_cast<size_t>(i)] += p * std::fabs(x);
                max_v = std::max(max_v, std::fabs(x));
            }
        }
        for (int64_t i = 0; i < d_head; ++i) {
            const double got = gpu[static_cast<size_t>(h * d_head + i)];
            const double err = std::fabs(got - ref[static_cast<size_t>(i)]);
            const double budget = 0x1.0p-12 * abs_pv[static_cast<size_t>(i)] + 0x1.0p-16 * max_v;
            worst = std::max(worst, err / budget);
            if (!(err <= budget) && failures++ == 0) {
                first_failure = "head " + std::to_string(h) + " column " + std::to_string(i) +
                                ": gpu " + std::to_string(got) + ", reference " +
                                std::to_string(ref[static_cast<size_t>(i)]) + ", budget " +
                                std::to_string(budget);
            }
        }
    }
    EXPECT_EQ(failures, 0) << what << ": " << failures << " columns over budget, first "
                           << first_failure;
}

class CudaAttentionWarpKeys : public ::testing::Test {
protected:
    void SetUp() override {
        if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
        // The kernel runs on thread block clusters, which only sm_90 and later have.
        int major = 0;
        ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0),
                  cudaSuccess);
        if (major < 9) GTEST_SKIP() << "needs thread block clusters (compute capability 9.0)";
    }
};

TEST_F(CudaAttentionWarpKeys, MatchesTheInputsKernelAndAHostReference) {
    uint32_t seed = 500;
    for (const Case& c : kCases) {
        double worst = 0.0;
        for (const int64_t position : c.positions) {
            seed += 10;
            const std::string what = std::string(c.what) + " at " + std::to_string(position);
            DecodeInputsHost h = make_host_state(c, seed);
            hide_invisible_values(c, position, h);
            Side warp, staged;
            ASSERT_NO_FATAL_FAILURE(make_decode_inputs_side(c, h, position, warp));
            ASSERT_NO_FATAL_FAILURE(make_decode_inputs_side(c, h, position, staged));
            ASSERT_TRUE(
                cuda::attention_decode_warp_keys_applies(warp.inputs, warp.cache, warp.shape))
                << what;
            STATUS_OK(warp_keys(warp, warp.out.as<float>(), nullptr));
            STATUS_OK(cuda::attention_inputs(staged.inputs, staged.position.as<int64_t>(), 1,
                                             staged.cache, nullptr));
            CUDA_OK(cudaDeviceSynchronize());
            ASSERT_NO_FATAL_FAILURE(expect_same_caches(c, warp, staged, what));
            // The raw rows stay as they were.
            expect_same_bits(download(warp.q.as<float>(), h.q.size()), h.q, what + " raw q");
            expect_same_bits(download(warp.k.as<float>(), h.k.size()), h.k, what + " raw k");
            expect_same_bits(download(warp.v.as<float>(), h.v.size()), h.v, what + " raw v");
            const std::vector<float> out = download(warp.out.as<float>(), decode_output_floats(c));
            for (size_t i = 0; i < out.size(); ++i) {
                ASSERT_FALSE(std::isnan(out[i])) << what << ": NaN at " << i;
            }
            ASSERT_NO_FATAL_FAILURE(expect_near_reference(
                c, position, download(staged.q.as<float>(), h.q.size()),
                download(staged.k_cache.as<uint16_t>(), decode_cache_elements(c)),
                download(staged.v_cache.as<uint16_t>(), decode_cache_elements(c)), out, what,
                worst));
            ASSERT_NO_FATAL_FAILURE(expect_q8_of_out(c, warp, what));
            // Only the Q8 blocks (out null), called again on the state the first call left (the
            // token's rows already in their slot): the same blocks.
            const std::vector<uint8_t> q8 = download(warp.q8.as<uint8_t>(), decode_q8_bytes(c));
            ASSERT_NO_FATAL_FAILURE(poison_decode_outputs(c, warp));
            STATUS_OK(warp_keys(warp, nullptr, nullptr));
            CUDA_OK(cudaDeviceSynchronize());
            expect_same_bits(download(warp.q8.as<uint8_t>(), decode_q8_bytes(c)), q8,
                             what + " Q8 blocks without out");
        }
        std::printf("%s: max |gpu - ref| / budget = %.3f\n", c.what, worst);
    }
}

// The decode step's way: one capture, replays with new device positions and rows, against
// direct calls on a second side that gets the same rows (the caches of both grow alike).
TEST_F(CudaAttentionWarpKeys, CapturedGraphReplaysAtNewPositions) {
    const Case& c = kCases[0];
    const DecodeInputsHost first = make_host_state(c, 7000);
    Side graphed, direct;
    ASSERT_NO_FATAL_FAILURE(make_decode_inputs_side(c, first, 0, graphed));
    ASSERT_NO_FATAL_FAILURE(make_decode_inputs_side(c, first, 0, direct));
    // The engine's order: it asks before it captures (the call itself is left to do its first
    // launch's setup inside the capture).
    ASSERT_TRUE(
        cuda::attention_decode_warp_keys_applies(graphed.inputs, graphed.cache, graphed.shape));
    cudaStream_t stream;
    CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    const Status captured = warp_keys(graphed, graphed.out.as<float>(), stream);
    CUDA_OK(cudaStreamEndCapture(stream, &graph));
    STATUS_OK(captured);
    CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
    uint32_t seed = 7100;
    for (const int64_t position :
         {int64_t{5}, int64_t{513}, int64_t{900}, int64_t{1023}, int64_t{2100}}) {
        seed += 10;
        const DecodeInputsHost h = make_host_state(c, seed);
        for (Side* s : {&graphed, &direct}) {
            copy_to_device(s->q.as<float>(), h.q);
            copy_to_device(s->k.as<float>(), h.k);
            copy_to_device(s->v.as<float>(), h.v);
            copy_to_device(s->position.as<int64_t>(), std::vector<int64_t>{position});
            ASSERT_NO_FATAL_FAILURE(poison_decode_outputs(c, *s));
        }
        CUDA_OK(cudaGraphLaunch(exec, stream));
        CUDA_OK(cudaStreamSynchronize(stream));
        STATUS_OK(warp_keys(direct, direct.out.as<float>(), nullptr));
        CUDA_OK(cudaDeviceSynchronize());
        const std::string what = "graph replay at " + std::to_string(position);
        const std::vector<float> out = download(graphed.out.as<float>(), decode_output_floats(c));
        for (size_t i = 0; i < out.size(); ++i) {
            ASSERT_FALSE(std::isnan(out[i])) << what << ": NaN at " << i;
        }
        ASSERT_NO_FATAL_FAILURE(expect_same_bits(
            out, download(direct.out.as<float>(), decode_output_floats(c)), what + " out"));
        ASSERT_NO_FATAL_FAILURE(expect_same_bits(
            download(graphed.q8.as<uint8_t>(), decode_q8_bytes(c)),
            download(direct.q8.as<uint8_t>(), decode_q8_bytes(c)), what + " Q8 blocks"));
        ASSERT_NO_FATAL_FAILURE(expect_same_caches(c, graphed, direct, what));
    }
    CUDA_OK(cudaGraphExecDestroy(exec));
    CUDA_OK(cudaGraphDestroy(graph));
    CUDA_OK(cudaStreamDestroy(stream));
}

void expect_refused(const cuda::AttentionInputs& inputs, const cuda::KvCacheBf16View& cache,
                    const cuda::AttentionShape& shape, Side& s, const std::string& what) {
    EXPECT_FALSE(cuda::attention_decode_warp_keys_applies(inputs, cache, shape)) << what;
    const Status refused = cuda::attention_decode_warp_keys_quantize_q8(
        inputs, s.inv_freq.as<float>(), s.position.as<int64_t>(), cache, shape, s.out.as<float>(),
        s.q8.as<Q8Block>(), nullptr);
    EXPECT_EQ(refused.code(), StatusCode::kInvalidArgument) << what << ": " << refused.message();
    EXPECT_FALSE(refused.message().empty()) << what;
}

// What the kernel does not take is refused, with a message, rather than computed wrongly: each
// shape below differs from an accepted one in one thing (the buffers are allocated for the
// shape named, so a call that went ahead would not run off them).
TEST_F(CudaAttentionWarpKeys, RefusesWhatItDoesNotTake) {
    const Case& c = kCases[0];
    const DecodeInputsHost h = make_host_state(c, 9000);
    Side s;
    ASSERT_NO_FATAL_FAILURE(make_decode_inputs_side(c, h, 10, s));
    EXPECT_TRUE(cuda::attention_decode_warp_keys_applies(s.inputs, s.cache, s.shape));

    // Gemma 4's full layers: 32 q / 4 kv heads x 512; and head dim 512 alone (two query heads
    // per kv head).
    Case full = c;
    full.n_kv_heads = 4;
    full.head_dim = 512;
    full.rotary_pairs = 64;
    const DecodeInputsHost full_h = make_host_state(full, 9100);
    Side wide;
    ASSERT_NO_FATAL_FAILURE(make_decode_inputs_side(full, full_h, 10, wide));
    expect_refused(wide.inputs, wide.cache, wide.shape, wide, "head dim 512, 8 groups");
    cuda::AttentionInputs two_groups = wide.inputs;
    two_groups.n_heads = 8;
    cuda::AttentionShape two_groups_shape = wide.shape;
    two_groups_shape.n_heads = 8;
    expect_refused(two_groups, wide.cache, two_groups_shape, wide, "head dim 512, 2 groups");

    // Four query heads per kv head (the buffers hold more than the 8 kv heads read).
    cuda::AttentionInputs four_groups = s.inputs;
    four_groups.n_kv_heads = 8;
    cuda::KvCacheBf16View four_groups_cache = s.cache;
    four_groups_cache.n_kv_heads = 8;
    expect_refused(four_groups, four_groups_cache, s.shape, s, "4 query heads per kv head");

    cuda::AttentionShape full_layer = s.shape;
    full_layer.window = 0;
    expect_refused(s.inputs, s.cache, full_layer, s, "window 0 (a full layer)");

    Case long_window = c;
    long_window.window = 2 * cuda::kWarpKeysMaxKeys;
    long_window.capacity = 2 * cuda::kWarpKeysMaxKeys + 5;
    const DecodeInputsHost long_h = make_host_state(long_window, 9200);
    Side long_side;
    ASSERT_NO_FATAL_FAILURE(make_decode_inputs_side(long_window, long_h, 10, long_side));
    expect_refused(long_side.inputs, long_side.cache, long_side.shape, long_side, "window 2048");

    cuda::AttentionInputs partial = s.inputs;
    partial.partial_rotary_dim = 64;  // Qwen3.5's pairing
    expect_refused(partial, s.cache, s.shape, s, "partial rotary dim 64");

    const Status no_q8 = cuda::attention_decode_warp_keys_quantize_q8(
        s.inputs, s.inv_freq.as<float>(), s.position.as<int64_t>(), s.cache, s.shape,
        s.out.as<float>(), nullptr, nullptr);
    EXPECT_EQ(no_q8.code(), StatusCode::kInvalidArgument) << "no Q8 output: " << no_q8.message();
    EXPECT_FALSE(no_q8.message().empty());
}

#endif

}  // namespace
}  // namespace kestrel
