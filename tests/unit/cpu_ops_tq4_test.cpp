// The CPU backend's TQ4 KV cache (ops/cpu/attention_tq4.cpp) against the TQ4 reference in
// ops/kv_tq4.h, which it must equal: a cache write stores tq4_encode()'s bits, attention over the
// cache is tq4_attend() over the visible keys (selected here from positions, independently of the
// backend's bounds), and it is attention over the decoded vectors (tq4_decode into an fp32 cache,
// the backend's plain attention). Cases cover GQA, a sliding window over a ring that wraps,
// softcap and head dims 32 to 256, written chunk by chunk as a session does.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "ops/cpu/cpu_ops.h"
#include "ops/kv_tq4.h"

namespace kestrel {
namespace {

struct Case {
    const char* name;
    int64_t head_dim;
    int64_t n_heads;
    int64_t n_kv_heads;
    int64_t window;  // 0: full attention
    float softcap;
    int64_t tokens;  // positions 0 .. tokens - 1, written and attended chunk by chunk
    int64_t chunk;
    int64_t capacity;  // < tokens: a ring that wraps
};

void PrintTo(const Case& c, std::ostream* os) {
    *os << c.name;
}

const Case kCases[] = {
    {"full_gqa2_d32", 32, 4, 2, 0, 0.0f, 70, 16, 70},
    {"full_mha_d64_softcap", 64, 2, 2, 0, 20.0f, 40, 40, 40},
    {"sliding_gqa4_d64_ring", 64, 8, 2, 9, 0.0f, 50, 6, 9 + 6 - 1},
    {"sliding_d32_ring_softcap", 32, 2, 1, 5, 10.0f, 33, 4, 5 + 4 - 1},
    {"full_gqa4_d256", 256, 4, 1, 0, 0.0f, 24, 8, 24},
};

// Storage for one layer's TQ4 cache and the views over it.
struct Tq4Cache {
    std::vector<uint8_t> k, v;
    std::vector<uint16_t> k_norm, v_norm;
    std::vector<float> rotation;
    KvLayerView view;

    Tq4Cache(int64_t capacity, int64_t n_kv, int64_t d)
        : k(static_cast<size_t>(capacity * n_kv * d / 2), 0xAA),
          v(k.size(), 0xAA),
          k_norm(static_cast<size_t>(capacity * n_kv), 0xFFFF),
          v_norm(k_norm.size(), 0xFFFF),
          rotation(tq4_rotation(d)) {
        view = KvLayerView{k.data(), v.data(), capacity, n_kv, d, d, KvDtype::kTq4};
        view.k_norm = k_norm.data();
        view.v_norm = v_norm.data();
        view.rotation = rotation.data();
    }
};

std::vector<float> random_values(size_t n, std::mt19937& rng, float spread) {
    std::normal_distribution<float> normal(0.0f, spread);
    std::vector<float> x(n);
    for (float& value : x) value = normal(rng);
    return x;
}

// Keys with norms that differ key to key and a few outlier coordinates, as trained models' have.
std::vector<float> random_keys(size_t n, std::mt19937& rng) {
    std::vector<float> x = random_values(n, rng, 1.0f);
    std::uniform_real_distribution<float> scale(0.5f, 2.0f);
    for (size_t i = 0; i < n; ++i) x[i] *= scale(rng) * (i % 13 == 0 ? 4.0f : 1.0f);
    return x;
}

std::span<const float> row(const std::vector<float>& x, int64_t index, int64_t width) {
    return std::span<const float>(x).subspan(static_cast<size_t>(index * width),
                                             static_cast<size_t>(width));
}

// tq4_decode(tq4_encode(x)) into out [x.size()].
void store_decoded(std::span<const float> x, std::span<const float> rotation, float* out) {
    const std::vector<float> y = tq4_decode(tq4_encode(x, rotation), rotation);
    std::memcpy(out, y.data(), y.size() * sizeof(float));
}

// max |a - b| over max |b|.
double relative_difference(std::span<const float> a, std::span<const float> b) {
    double diff = 0.0, scale = 0.0;
    for (size_t i = 0; i < a.size(); ++i) {
        if (!std::isfinite(a[i])) return INFINITY;
        diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
        scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
    }
    return diff / scale;
}

class CpuTq4 : public ::testing::TestWithParam<Case> {};

// Every slot the writes leave holds tq4_encode() of the vector last written there, bit for bit.
TEST_P(CpuTq4, KvWriteStoresTq4EncodeBitForBit) {
    const Case c = GetParam();
    const int64_t d = c.head_dim, n_kv = c.n_kv_heads;
    std::mt19937 rng(11);
    const std::vector<float> k = random_keys(static_cast<size_t>(c.tokens * n_kv * d), rng);
    const std::vector<float> v = random_values(k.size(), rng, 1.0f);
    std::vector<int64_t> positions(static_cast<size_t>(c.tokens));
    for (int64_t t = 0; t < c.tokens; ++t) positions[static_cast<size_t>(t)] = t;
    Tq4Cache cache(c.capacity, n_kv, d);
    for (int64_t begin = 0; begin < c.tokens; begin += c.chunk) {
        const int64_t count = std::min(c.chunk, c.tokens - begin);
        cpu::kv_write(
            cache.view,
            std::span(positions).subspan(static_cast<size_t>(begin), static_cast<size_t>(count)),
            k.data() + begin * n_kv * d, v.data() + begin * n_kv * d, 2);
    }
    for (int64_t t = std::max<int64_t>(0, c.tokens - c.capacity); t < c.tokens; ++t) {
        for (int64_t h = 0; h < n_kv; ++h) {
            const int64_t entry = (t % c.capacity) * n_kv + h;
            const Tq4Vector want_k = tq4_encode(row(k, t * n_kv + h, d), cache.rotation);
            const Tq4Vector want_v = tq4_encode(row(v, t * n_kv + h, d), cache.rotation);
            ASSERT_EQ(cache.k_norm[static_cast<size_t>(entry)], want_k.norm_bf16) << t << " " << h;
            ASSERT_EQ(cache.v_norm[static_cast<size_t>(entry)], want_v.norm_bf16) << t << " " << h;
            for (int64_t b = 0; b < d / 2; ++b) {
                ASSERT_EQ(cache.k[static_cast<size_t>(entry * d / 2 + b)],
                          want_k.indices[static_cast<size_t>(b)])
                    << "key at position " << t << ", head " << h << ", byte " << b;
                ASSERT_EQ(cache.v[static_cast<size_t>(entry * d / 2 + b)],
                          want_v.indices[static_cast<size_t>(b)])
                    << "value at position " << t << ", head " << h << ", byte " << b;
            }
        }
    }
}

// Attention over the TQ4 cache, chunk by chunk (each chunk written, then its queries attend),
// equals tq4_attend over tq4_encode of the keys each query sees, and (decoded into an fp32 cache)
// the backend's plain attention; two threads give the same bits as one.
TEST_P(CpuTq4, AttentionIsTq4AttendOverTheVisibleKeys) {
    const Case c = GetParam();
    const int64_t d = c.head_dim, n_kv = c.n_kv_heads, nh = c.n_heads, group = nh / n_kv;
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    const AttentionParams params{nh, scale, c.window, c.softcap};
    std::mt19937 rng(5);
    const std::vector<float> k = random_keys(static_cast<size_t>(c.tokens * n_kv * d), rng);
    const std::vector<float> v = random_values(k.size(), rng, 1.0f);
    const std::vector<float> q = random_values(static_cast<size_t>(c.tokens * nh * d), rng, 1.5f);
    std::vector<int64_t> positions(static_cast<size_t>(c.tokens));
    for (int64_t t = 0; t < c.tokens; ++t) positions[static_cast<size_t>(t)] = t;

    Tq4Cache cache(c.capacity, n_kv, d);
    // The same stored vectors decoded into an fp32 cache of the same capacity.
    std::vector<float> k_decoded(static_cast<size_t>(c.capacity * n_kv * d)),
        v_decoded(k_decoded.size());
    const KvLayerView decoded{k_decoded.data(), v_decoded.data(), c.capacity, n_kv, d, d,
                              KvDtype::kF32};
    // Poisoned, so that a row the attention skips never passes.
    std::vector<std::vector<float>> outputs(3, std::vector<float>(q.size(), NAN));
    std::vector<float>& out = outputs[0];
    std::vector<float>& out_one_thread = outputs[1];
    std::vector<float>& out_decoded = outputs[2];
    for (int64_t begin = 0; begin < c.tokens; begin += c.chunk) {
        const int64_t count = std::min(c.chunk, c.tokens - begin);
        const auto chunk = std::span<const int64_t>(positions).subspan(static_cast<size_t>(begin),
                                                                       static_cast<size_t>(count));
        cpu::kv_write(cache.view, chunk, k.data() + begin * n_kv * d, v.data() + begin * n_kv * d,
                      2);
        for (int64_t t = begin; t < begin + count; ++t) {
            for (int64_t h = 0; h < n_kv; ++h) {
                const int64_t entry = (t % c.capacity) * n_kv + h;
                store_decoded(row(k, t * n_kv + h, d), cache.rotation,
                              k_decoded.data() + entry * d);
                store_decoded(row(v, t * n_kv + h, d), cache.rotation,
                              v_decoded.data() + entry * d);
            }
        }
        const size_t offset = static_cast<size_t>(begin * nh * d);
        cpu::attention(q.data() + offset, chunk, cache.view, params, out.data() + offset, 2);
        cpu::attention(q.data() + offset, chunk, cache.view, params, out_one_thread.data() + offset,
                       1);
        cpu::attention(q.data() + offset, chunk, decoded, params, out_decoded.data() + offset, 1);
    }

    double worst_reference = 0.0, worst_decoded = 0.0;
    for (int64_t t = 0; t < c.tokens; ++t) {
        for (int64_t h = 0; h < nh; ++h) {
            const int64_t kv_head = h / group;
            std::vector<Tq4Vector> keys, values;
            for (int64_t p = 0; p <= t; ++p) {
                if (c.window > 0 && t - p >= c.window) continue;  // HF sliding mask: q - k < window
                keys.push_back(tq4_encode(row(k, p * n_kv + kv_head, d), cache.rotation));
                values.push_back(tq4_encode(row(v, p * n_kv + kv_head, d), cache.rotation));
            }
            const std::vector<float> want =
                tq4_attend(row(q, t * nh + h, d), keys, values, cache.rotation, scale, c.softcap);
            const std::span<const float> got = row(out, t * nh + h, d);
            worst_reference = std::max(worst_reference, relative_difference(got, want));
            worst_decoded =
                std::max(worst_decoded, relative_difference(got, row(out_decoded, t * nh + h, d)));
        }
    }
    std::printf(
        "%s: TQ4 attention vs tq4_attend %.2e, vs fp32 attention over the decoded cache %.2e\n",
        c.name, worst_reference, worst_decoded);
    // fp32 sums against tq4_attend's double ones.
    EXPECT_LE(worst_reference, 1e-5) << c.name;
    // The decoded vectors carry tq4_decode's fp32 rounding as well.
    EXPECT_LE(worst_decoded, 1e-4) << c.name;
    for (size_t i = 0; i < out.size(); ++i) {
        ASSERT_EQ(std::bit_cast<uint32_t>(out[i]), std::bit_cast<uint32_t>(out_one_thread[i]))
            << "element " << i;
    }
}

INSTANTIATE_TEST_SUITE_P(Cases, CpuTq4, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& info) {
                             return std::string(info.param.name);
                         });

TEST(CpuTq4Ops, TheCpuBackendTakesTq4AndItsNativeFp32) {
    const std::unique_ptr<Ops> ops = make_cpu_ops(1);
    EXPECT_TRUE(ops->supports_kv(KvDtype::kF32));
    EXPECT_TRUE(ops->supports_kv(KvDtype::kTq4));
    EXPECT_FALSE(ops->supports_kv(KvDtype::kBF16));
}

}  // namespace
}  // namespace kestrel
