// Key centring of the TQ4 cache (ops/kv_tq4.h, "Key centring"; CPU twin ops/cpu/attention_tq4.cpp):
// which writes set a layer's centre and to what, that every key is stored as tq4_encode(k - mu)
// and every value as tq4_encode(v), and what it is for: over keys that share a large component,
// as trained models' do, attention over the centred cache is much closer to exact attention over
// the raw vectors than over the uncentred one, with no correction anywhere in attention.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <random>
#include <span>
#include <vector>

#include "ops/cpu/cpu_ops.h"
#include "ops/kv_tq4.h"

namespace kestrel {
namespace {

// One layer's TQ4 cache in host memory, with or without a key centre.
struct Cache {
    std::vector<uint8_t> k, v;
    std::vector<uint16_t> k_norm, v_norm;
    std::vector<float> rotation, center;
    KvLayerView view;

    Cache(int64_t capacity, int64_t n_kv, int64_t d, bool centred)
        : k(static_cast<size_t>(capacity * n_kv * d / 2), 0xAA),
          v(k.size(), 0xAA),
          k_norm(static_cast<size_t>(capacity * n_kv), 0xFFFF),
          v_norm(k_norm.size(), 0xFFFF),
          rotation(tq4_rotation(d)),
          center(static_cast<size_t>(n_kv * d), 0.0f) {
        view = KvLayerView{k.data(), v.data(), capacity, n_kv, d, d, KvDtype::kTq4};
        view.k_norm = k_norm.data();
        view.v_norm = v_norm.data();
        view.rotation = rotation.data();
        if (centred) view.k_center = center.data();
    }
};

// [tokens, n_kv, d] keys: per head a shared vector 3x the size of the per-token part, as in
// Gemma 3 270M's global layers (there about equal; larger here for a clear margin).
std::vector<float> shared_component_keys(int64_t tokens, int64_t n_kv, int64_t d,
                                         std::mt19937& rng) {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> shared(static_cast<size_t>(n_kv * d));
    for (float& x : shared) x = 3.0f * normal(rng);
    std::vector<float> k(static_cast<size_t>(tokens * n_kv * d));
    for (size_t i = 0; i < k.size(); ++i) k[i] = shared[i % shared.size()] + normal(rng);
    return k;
}

std::vector<float> normal_values(size_t n, std::mt19937& rng) {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> x(n);
    for (float& value : x) value = normal(rng);
    return x;
}

std::vector<int64_t> positions_from(int64_t first, int64_t count) {
    std::vector<int64_t> positions(static_cast<size_t>(count));
    for (int64_t t = 0; t < count; ++t) positions[static_cast<size_t>(t)] = first + t;
    return positions;
}

// The centre a first long write must set: fp32 sums in token order, divided by the count.
std::vector<float> mean_in_token_order(const std::vector<float>& k, int64_t tokens, int64_t row) {
    std::vector<float> mean(static_cast<size_t>(row));
    for (int64_t i = 0; i < row; ++i) {
        float sum = 0.0f;
        for (int64_t t = 0; t < tokens; ++t) sum += k[static_cast<size_t>(t * row + i)];
        mean[static_cast<size_t>(i)] = sum / static_cast<float>(tokens);
    }
    return mean;
}

void expect_same_bits(const std::vector<float>& got, const std::vector<float>& want,
                      const char* what) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i]))
            << what << ", element " << i;
    }
}

TEST(Tq4KeyCenter, FirstLongWriteAtPositionZeroSetsTheMeanAndKeysAreStoredLessIt) {
    constexpr int64_t n_kv = 2, d = 64, capacity = 96;
    const int64_t row = n_kv * d;
    std::mt19937 rng(3);
    Cache cache(capacity, n_kv, d, true);
    const auto write = [&](int64_t first, const std::vector<float>& k,
                           const std::vector<float>& v) {
        const int64_t tokens = static_cast<int64_t>(k.size()) / row;
        const std::vector<int64_t> positions = positions_from(first, tokens);
        cpu::kv_write(cache.view, positions, k.data(), v.data(), 2);
    };
    // Every slot of positions [first, first + tokens) holds tq4_encode(k - centre), tq4_encode(v).
    const auto expect_stored = [&](int64_t first, const std::vector<float>& k,
                                   const std::vector<float>& v) {
        const int64_t tokens = static_cast<int64_t>(k.size()) / row;
        for (int64_t t = 0; t < tokens; ++t) {
            for (int64_t h = 0; h < n_kv; ++h) {
                const size_t at = static_cast<size_t>(t * row + h * d);
                std::vector<float> centred(static_cast<size_t>(d));
                for (int64_t i = 0; i < d; ++i)
                    centred[static_cast<size_t>(i)] = k[at + static_cast<size_t>(i)] -
                                                      cache.center[static_cast<size_t>(h * d + i)];
                const Tq4Vector want_k = tq4_encode(centred, cache.rotation);
                const Tq4Vector want_v = tq4_encode(
                    std::span<const float>(v).subspan(at, static_cast<size_t>(d)), cache.rotation);
                const auto entry = static_cast<size_t>(((first + t) % capacity) * n_kv + h);
                ASSERT_EQ(cache.k_norm[entry], want_k.norm_bf16) << "token " << first + t;
                ASSERT_EQ(cache.v_norm[entry], want_v.norm_bf16) << "token " << first + t;
                for (size_t b = 0; b < static_cast<size_t>(d / 2); ++b) {
                    ASSERT_EQ(cache.k[entry * d / 2 + b], want_k.indices[b]) << first + t;
                    ASSERT_EQ(cache.v[entry * d / 2 + b], want_v.indices[b]) << first + t;
                }
            }
        }
    };
    const std::vector<float> zero(static_cast<size_t>(row), 0.0f);

    // A first write shorter than kTq4CenterMinTokens leaves the centre at zero.
    const int64_t short_tokens = kTq4CenterMinTokens - 1;
    std::vector<float> k = shared_component_keys(short_tokens, n_kv, d, rng);
    std::vector<float> v = normal_values(k.size(), rng);
    write(0, k, v);
    expect_same_bits(cache.center, zero, "after a short first write");
    expect_stored(0, k, v);

    // A long write that does not start at position 0 leaves it too.
    k = shared_component_keys(20, n_kv, d, rng);
    v = normal_values(k.size(), rng);
    write(short_tokens, k, v);
    expect_same_bits(cache.center, zero, "after a long write at a later position");

    // A long write at position 0 (a new sequence) sets it to its keys' mean...
    k = shared_component_keys(24, n_kv, d, rng);
    v = normal_values(k.size(), rng);
    write(0, k, v);
    const std::vector<float> mean = mean_in_token_order(k, 24, row);
    expect_same_bits(cache.center, mean, "after a long first write");
    double shared_norm = 0.0;
    for (float x : mean) shared_norm += static_cast<double>(x) * x;
    EXPECT_GT(shared_norm, 4.0 * row) << "the keys' shared part must show in the centre";
    expect_stored(0, k, v);

    // ... which the decode steps after it keep and subtract.
    for (int64_t p = 24; p < 28; ++p) {
        const std::vector<float> k1 = shared_component_keys(1, n_kv, d, rng);
        const std::vector<float> v1 = normal_values(k1.size(), rng);
        write(p, k1, v1);
        expect_same_bits(cache.center, mean, "after a decode step");
        expect_stored(p, k1, v1);
    }
}

// Attention over the raw keys (an fp32 cache) against the TQ4 cache with and without a centre,
// chunk by chunk as a session runs: the centre must cut the error. The fp32 cache holds the
// values as TQ4 stores them (tq4_decode), so the error measured is the keys' alone.
TEST(Tq4KeyCenter, AttentionOverCentredKeysIsCloserToExact) {
    constexpr int64_t n_kv = 2, n_heads = 8, d = 128, tokens = 96, chunk = 32;
    const int64_t row = n_kv * d;
    std::mt19937 rng(17);
    const std::vector<float> k = shared_component_keys(tokens, n_kv, d, rng);
    const std::vector<float> v = normal_values(k.size(), rng);
    // Queries that see the keys' structure: scores ~ q . k spread like a trained model's.
    std::vector<float> q = normal_values(static_cast<size_t>(tokens * n_heads * d), rng);
    for (float& x : q) x *= 0.5f;
    const AttentionParams params{n_heads, 1.0f / std::sqrt(static_cast<float>(d)), 0, 0.0f};

    std::vector<float> k_fp32(k.size()), v_fp32(v.size());
    const KvLayerView exact{k_fp32.data(), v_fp32.data(), tokens, n_kv, d, d, KvDtype::kF32};
    Cache plain(tokens, n_kv, d, false), centred(tokens, n_kv, d, true);
    std::vector<float> out_exact(q.size(), NAN), out_plain(q.size(), NAN),
        out_centred(q.size(), NAN);
    for (int64_t begin = 0; begin < tokens; begin += chunk) {
        const std::vector<int64_t> positions = positions_from(begin, chunk);
        const size_t kv_at = static_cast<size_t>(begin * row);
        const size_t q_at = static_cast<size_t>(begin * n_heads * d);
        std::vector<float> v_stored(static_cast<size_t>(chunk * row));
        for (int64_t r = 0; r < chunk * n_kv; ++r) {
            const std::vector<float> decoded = tq4_decode(
                tq4_encode(std::span<const float>(v).subspan(kv_at + static_cast<size_t>(r * d),
                                                             static_cast<size_t>(d)),
                           plain.rotation),
                plain.rotation);
            std::copy(decoded.begin(), decoded.end(), v_stored.begin() + r * d);
        }
        cpu::kv_write(exact, positions, k.data() + kv_at, v_stored.data(), 2);
        cpu::kv_write(plain.view, positions, k.data() + kv_at, v.data() + kv_at, 2);
        cpu::kv_write(centred.view, positions, k.data() + kv_at, v.data() + kv_at, 2);
        cpu::attention(q.data() + q_at, positions, exact, params, out_exact.data() + q_at, 2);
        cpu::attention(q.data() + q_at, positions, plain.view, params, out_plain.data() + q_at, 2);
        cpu::attention(q.data() + q_at, positions, centred.view, params, out_centred.data() + q_at,
                       2);
    }
    double plain_error = 0.0, centred_error = 0.0, reference = 0.0;
    for (size_t i = 0; i < q.size(); ++i) {
        ASSERT_TRUE(std::isfinite(out_plain[i]) && std::isfinite(out_centred[i])) << i;
        plain_error += std::pow(static_cast<double>(out_plain[i]) - out_exact[i], 2);
        centred_error += std::pow(static_cast<double>(out_centred[i]) - out_exact[i], 2);
        reference += std::pow(static_cast<double>(out_exact[i]), 2);
    }
    plain_error = std::sqrt(plain_error / reference);
    centred_error = std::sqrt(centred_error / reference);
    std::printf("attention vs exact, relative rms error: TQ4 %.4f, TQ4 with centred keys %.4f\n",
                plain_error, centred_error);
    EXPECT_GT(plain_error, 0.0);
    EXPECT_LT(centred_error, 0.5 * plain_error);
}

}  // namespace
}  // namespace kestrel
