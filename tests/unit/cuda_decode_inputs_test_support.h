// One decode token's raw attention-input rows and a bf16 KV cache on the device, for the tests of
// the decode kernels that take the rows themselves: cuda_attention_fused_inputs_test.cpp (the
// flash decode kernel with its inputs fused) and cuda_attention_warp_keys_test.cpp (the sliding
// layers' warp-keys kernel). Each test keeps its own cases and its own cache values. Needs the
// CUDA build, like cuda_test_support.h.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "ops/cuda/attention.h"
#include "ops/cuda/attention_inputs.h"
#include "ops/weight_format.h"  // Q8Block

#include "cuda_test_support.h"

namespace kestrel::testing {

constexpr float kDecodeInputsEps = 1e-6f;

// What the tests vary: the model's heads, its RoPE, its norms, and the attention's cache and shape.
struct DecodeInputsShape {
    int64_t n_heads, n_kv_heads, head_dim, rotary_pairs;
    double theta;
    bool qk_norm, v_from_raw_k, v_norm;
    int64_t window, capacity;
    float scale, softcap;
};

inline size_t decode_output_floats(const DecodeInputsShape& s) {
    return static_cast<size_t>(s.n_heads * s.head_dim);
}
inline size_t decode_q8_bytes(const DecodeInputsShape& s) {
    return decode_output_floats(s) / 32 * sizeof(Q8Block);
}
inline size_t decode_cache_elements(const DecodeInputsShape& s) {
    return static_cast<size_t>(s.capacity * s.n_kv_heads * s.head_dim);
}

// The token's raw rows and the cache before the call, on the host.
struct DecodeInputsHost {
    std::vector<float> q, k, v, q_norm, k_norm;
    std::vector<uint16_t> k_cache, v_cache;  // left empty here: each test fills its own
};

// q ~ N(0, 1), k ~ N(0, 3^2), v ~ N(0, 0.5^2), norm weights 1 + N(0, 0.3^2) (random_vector's
// draws, with its sparse outliers), from seeds seed + 1 to seed + 5. V's input is NaN when V is the
// raw K: a kernel that read it would show.
inline DecodeInputsHost random_decode_inputs_rows(const DecodeInputsShape& s, uint32_t seed) {
    DecodeInputsHost h;
    const size_t kv = static_cast<size_t>(s.n_kv_heads * s.head_dim);
    h.q = random_vector(static_cast<size_t>(s.n_heads * s.head_dim), seed + 1, 1.0f);
    h.k = random_vector(kv, seed + 2, 3.0f);
    h.v =
        s.v_from_raw_k ? std::vector<float>(kv, std::nanf("")) : random_vector(kv, seed + 3, 0.5f);
    h.q_norm = random_vector(static_cast<size_t>(s.head_dim), seed + 4, 0.3f);
    h.k_norm = random_vector(static_cast<size_t>(s.head_dim), seed + 5, 0.3f);
    for (float& w : h.q_norm) w += 1.0f;
    for (float& w : h.k_norm) w += 1.0f;
    return h;
}

// One side's device state: the token's raw rows, the RoPE table, the position, the cache, the
// outputs, and the views the kernels take of them.
struct DecodeInputsSide {
    DeviceBuffer q, k, v, q_norm, k_norm, inv_freq, position, k_cache, v_cache, out, q8;
    cuda::AttentionInputs inputs;
    cuda::KvCacheBf16View cache;
    cuda::AttentionShape shape;
};

// Both outputs set to 0xff bytes (a NaN pattern), so a missing write shows.
inline void poison_decode_outputs(const DecodeInputsShape& s, DecodeInputsSide& side) {
    CUDA_OK(cudaMemset(side.out.as<void>(), 0xff, decode_output_floats(s) * sizeof(float)));
    CUDA_OK(cudaMemset(side.q8.as<void>(), 0xff, decode_q8_bytes(s)));
    CUDA_OK(cudaDeviceSynchronize());
}

inline void make_decode_inputs_side(const DecodeInputsShape& s, const DecodeInputsHost& h,
                                    int64_t position, DecodeInputsSide& side) {
    upload(side.q, h.q);
    upload(side.k, h.k);
    upload(side.v, h.v);
    upload(side.q_norm, h.q_norm);
    upload(side.k_norm, h.k_norm);
    upload(side.inv_freq, cuda::rope_inv_freq(s.rotary_pairs, s.head_dim, s.theta));
    upload(side.position, std::vector<int64_t>{position});
    upload(side.k_cache, h.k_cache);
    upload(side.v_cache, h.v_cache);
    CUDA_OK(side.out.alloc(decode_output_floats(s) * sizeof(float)));
    CUDA_OK(side.q8.alloc(decode_q8_bytes(s)));
    ASSERT_NO_FATAL_FAILURE(poison_decode_outputs(s, side));
    side.inputs = cuda::AttentionInputs{side.q.as<float>(),
                                        side.k.as<float>(),
                                        side.v.as<float>(),
                                        s.qk_norm ? side.q_norm.as<float>() : nullptr,
                                        s.qk_norm ? side.k_norm.as<float>() : nullptr,
                                        s.v_from_raw_k,
                                        s.v_norm,
                                        s.n_heads,
                                        s.n_kv_heads,
                                        s.head_dim,
                                        s.rotary_pairs,
                                        kDecodeInputsEps,
                                        s.theta,
                                        0};
    side.cache = cuda::KvCacheBf16View{side.k_cache.as<uint16_t>(),
                                       side.v_cache.as<uint16_t>(),
                                       s.capacity,
                                       s.n_kv_heads,
                                       s.head_dim,
                                       s.head_dim};
    side.shape = cuda::AttentionShape{s.n_heads, s.scale, s.window, s.softcap};
}

template <class T>
void expect_same_bits(const std::vector<T>& got, const std::vector<T>& want,
                      const std::string& what) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_EQ(std::memcmp(&got[i], &want[i], sizeof(T)), 0)
            << what << ": element " << i << " differs (got " << +got[i] << ", want " << +want[i]
            << ")";
    }
}

// Both caches of two sides, bit for bit.
inline void expect_same_caches(const DecodeInputsShape& s, const DecodeInputsSide& got,
                               const DecodeInputsSide& want, const std::string& what) {
    const size_t n = decode_cache_elements(s);
    ASSERT_NO_FATAL_FAILURE(expect_same_bits(download(got.k_cache.as<uint16_t>(), n),
                                             download(want.k_cache.as<uint16_t>(), n),
                                             what + " k cache"));
    ASSERT_NO_FATAL_FAILURE(expect_same_bits(download(got.v_cache.as<uint16_t>(), n),
                                             download(want.v_cache.as<uint16_t>(), n),
                                             what + " v cache"));
}

}  // namespace kestrel::testing
