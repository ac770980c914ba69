// The GPU TQ4 KV cache (src/ops/cuda/kv_cache_tq4.cu, attention_*_tq4 in attention_{prefill,
// decode}.cu, CudaOps' kTq4 paths) against the CPU reference of the format (src/ops/kv_tq4.h).
//
// - tq4_rotate_rows: y = R x and R^T x against a double-precision product (fp32 accumulation in
//   k order: |error| <= d * 2^-23 * sum_k |R_ik x_k|, bounded here by 2^-16 ||x||_2 for d <= 512),
//   and R^T (R x) = x.
// - The cache write (CudaOps::kv_write on a kTq4 view): every norm bit for bit tq4_encode's;
//   every index tq4_encode's, except that an element whose rotated value lies within fp32
//   rounding of a bucket boundary may take the neighbouring bucket (the GPU's R x is summed in
//   another order): at most 1 in 2000 elements, never more than one level away. Ring wrap, a
//   zero vector and a vector with a NaN are included. With a key centre (ops/kv_tq4.h, "Key
//   centring"), a session's writes (a long first one on each write path, decode steps, a short
//   first one) leave the centre bit for bit the CPU twin's and the stored vectors as above
//   against the twin's cache.
// - Attention (CudaOps::attention on a kTq4 view: q turned by R, flash attention over the tiles
//   dequantised to the bare levels bf16(level), each score times its key's norm, each
//   probability times its value's norm before P V, the output turned back by R^T) against two
//   references over the same stored vectors: the twin, Ops::attention on the CPU over a fp32
//   cache of the rotated vectors as the kernels see them (norm * bf16(level)) with q' = bf16(R q),
//   whose output is turned back by R^T in double; per row, ||gpu - twin||_2 <= ||b||_2 with
//   cuda_attention_test.cpp's per-column budget b (bf16 probabilities, fp32 order) plus 2^-16
//   of the row's norm (the two fp32 rotations). And tq4_attend (the format's reference, in
//   double, no bf16 rounding): per row ||gpu - ref||_2 <= 0.02 ||ref||_2 + 0.02, bf16 rounding
//   of q' and of the keys; it catches a wrong codebook, nibble order or rotation, which the twin
//   (built from the same index bytes) could share. Decode (single pass and split-K, T = 1 and 4)
//   and chunked prefill, head dims 512 (Gemma 4 31B full layers), 256 (Qwen3.5), 64 with a
//   window and softcap, and 32 (the tiny fixtures). Outputs are poisoned with NaN first.
// Skips without a GPU.
#include <gtest/gtest.h>

#if KESTREL_HAS_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "core/half.h"
#include "ops/cuda/kv_cache_tq4.h"
#include "ops/kv_tq4.h"
#include "ops/ops.h"

#include "cuda_test_support.h"
#endif

namespace kestrel {
namespace {

#if !KESTREL_HAS_CUDA

TEST(CudaKvTq4, NeedsTheCudaBuild) {
    GTEST_SKIP() << "built without CUDA (KESTREL_HAS_CUDA=0)";
}

#else

using kestrel::testing::cuda_device_present;
using kestrel::testing::DeviceBuffer;
using kestrel::testing::download;
using kestrel::testing::upload;

class CudaKvTq4 : public ::testing::Test {
protected:
    void SetUp() override {
        if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
        if (cuda_ops_ == nullptr) {
            Result<std::unique_ptr<Ops> > made = make_cuda_ops();
            ASSERT_TRUE(made.ok()) << made.status().message();
            cuda_ops_ = std::move(*made);
        }
    }
    static Ops& gpu() { return *cuda_ops_; }
    static std::unique_ptr<Ops> cuda_ops_;
};
std::unique_ptr<Ops> CudaKvTq4::cuda_ops_;

Ops& cpu_ops() {
    static const std::unique_ptr<Ops> ops = make_cpu_ops();
    return *ops;
}

std::vector<float> normal_vector(size_t n, float stddev, std::mt19937_64& rng) {
    std::normal_distribution<float> dist(0.0f, stddev);
    std::vector<float> x(n);
    for (float& v : x) v = dist(rng);
    return x;
}

std::vector<float> nan_vector(size_t n) {
    return std::vector<float>(n, std::nanf(""));
}

// y_r = R x_r (transpose false) or R^T x_r, in double.
std::vector<double> rotate_reference(const std::vector<float>& x, int64_t d,
                                     const std::vector<float>& r, bool transpose) {
    const int64_t rows = static_cast<int64_t>(x.size()) / d;
    std::vector<double> y(x.size(), 0.0);
    for (int64_t row = 0; row < rows; ++row)
        for (int64_t i = 0; i < d; ++i) {
            double sum = 0.0;
            for (int64_t k = 0; k < d; ++k) {
                const double m = transpose ? r[static_cast<size_t>(k * d + i)]
                                           : r[static_cast<size_t>(i * d + k)];
                sum += m * x[static_cast<size_t>(row * d + k)];
            }
            y[static_cast<size_t>(row * d + i)] = sum;
        }
    return y;
}

TEST_F(CudaKvTq4, RotateRowsMatchesDoublePrecision) {
    std::mt19937_64 rng(7);
    for (const int64_t d : {32, 96, 256, 512}) {
        const std::vector<float> rotation = tq4_rotation(d);
        DeviceBuffer r_dev;
        upload(r_dev, rotation);
        for (const int64_t rows : {1, 8, 33, 300}) {
            const std::vector<float> x = normal_vector(static_cast<size_t>(rows * d), 1.5f, rng);
            DeviceBuffer x_dev, y_dev, back_dev;
            upload(x_dev, x);
            upload(y_dev, nan_vector(x.size()));
            upload(back_dev, nan_vector(x.size()));
            const cudaStream_t stream = nullptr;
            STATUS_OK(cuda::tq4_rotate_rows(x_dev.as<float>(), rows, d, r_dev.as<float>(), false,
                                            y_dev.as<float>(), stream));
            STATUS_OK(cuda::tq4_rotate_rows(y_dev.as<float>(), rows, d, r_dev.as<float>(), true,
                                            back_dev.as<float>(), stream));
            CUDA_OK(cudaDeviceSynchronize());
            const std::vector<float> y = download(y_dev.as<float>(), x.size());
            const std::vector<float> back = download(back_dev.as<float>(), x.size());
            const std::vector<double> expected = rotate_reference(x, d, rotation, false);
            for (int64_t row = 0; row < rows; ++row) {
                double norm = 0.0;
                for (int64_t i = 0; i < d; ++i)
                    norm += std::pow(x[static_cast<size_t>(row * d + i)], 2);
                norm = std::sqrt(norm);
                for (int64_t i = 0; i < d; ++i) {
                    const size_t at = static_cast<size_t>(row * d + i);
                    ASSERT_LE(std::fabs(y[at] - expected[at]), std::ldexp(norm, -16))
                        << "d " << d << " rows " << rows << " row " << row << " element " << i;
                    // R^T R = I up to R's fp32 rounding (~2^-24 per entry) and two fp32 products.
                    ASSERT_LE(std::fabs(back[at] - x[at]), std::ldexp(norm, -14))
                        << "R^T R x, d " << d << " row " << row << " element " << i;
                }
            }
        }
    }
}

// A TQ4 layer cache on the device and the same bytes on the host.
struct Tq4Cache {
    int64_t capacity = 0, n_kv_heads = 0, head_dim = 0;
    std::vector<uint8_t> k, v;             // [capacity, n_kv, d / 2]
    std::vector<uint16_t> k_norm, v_norm;  // [capacity, n_kv]
    std::vector<float> rotation;
    std::vector<float> center;  // [n_kv, d]: the key centre, used when `centred`
    bool centred = false;
    DeviceBuffer k_dev, v_dev, k_norm_dev, v_norm_dev, rotation_dev, center_dev;

    void allocate(int64_t cap, int64_t kv_heads, int64_t d) {
        capacity = cap;
        n_kv_heads = kv_heads;
        head_dim = d;
        const size_t bytes = static_cast<size_t>(cap * kv_heads * d / 2);
        k.assign(bytes, 0xAB);
        v.assign(bytes, 0xAB);
        k_norm.assign(static_cast<size_t>(cap * kv_heads), 0x7fc1);  // NaN in slots never written
        v_norm.assign(static_cast<size_t>(cap * kv_heads), 0x7fc1);
        rotation = tq4_rotation(d);
        center.assign(static_cast<size_t>(kv_heads * d), 0.0f);
        upload(center_dev, center);
        upload(k_dev, k);
        upload(v_dev, v);
        upload(k_norm_dev, k_norm);
        upload(v_norm_dev, v_norm);
        upload(rotation_dev, rotation);
    }
    void upload_contents() {
        CUDA_OK(cudaMemcpy(k_dev.as<void>(), k.data(), k.size(), cudaMemcpyHostToDevice));
        CUDA_OK(cudaMemcpy(v_dev.as<void>(), v.data(), v.size(), cudaMemcpyHostToDevice));
        CUDA_OK(cudaMemcpy(k_norm_dev.as<void>(), k_norm.data(), k_norm.size() * 2,
                           cudaMemcpyHostToDevice));
        CUDA_OK(cudaMemcpy(v_norm_dev.as<void>(), v_norm.data(), v_norm.size() * 2,
                           cudaMemcpyHostToDevice));
        kestrel::testing::wait_for_host_copies();
    }
    void download_contents() {
        k = download(k_dev.as<uint8_t>(), k.size());
        v = download(v_dev.as<uint8_t>(), v.size());
        k_norm = download(k_norm_dev.as<uint16_t>(), k_norm.size());
        v_norm = download(v_norm_dev.as<uint16_t>(), v_norm.size());
        center = download(center_dev.as<float>(), center.size());
    }
    KvLayerView device_view() const {
        KvLayerView view;
        view.k = k_dev.as<void>();
        view.v = v_dev.as<void>();
        view.capacity = capacity;
        view.n_kv_heads = n_kv_heads;
        view.head_dim = head_dim;
        view.v_head_dim = head_dim;
        view.dtype = KvDtype::kTq4;
        view.k_norm = k_norm_dev.as<uint16_t>();
        view.v_norm = v_norm_dev.as<uint16_t>();
        view.rotation = rotation_dev.as<float>();
        if (centred) view.k_center = center_dev.as<float>();
        return view;
    }
    // The stored vector of (slot, head) as tq4_attend takes it.
    Tq4Vector vector(bool is_v, int64_t slot, int64_t head) const {
        Tq4Vector out;
        const size_t row = static_cast<size_t>(slot * n_kv_heads + head);
        out.norm_bf16 = (is_v ? v_norm : k_norm)[row];
        const auto& bytes = is_v ? v : k;
        out.indices.assign(bytes.begin() + static_cast<std::ptrdiff_t>(row * head_dim / 2),
                           bytes.begin() + static_cast<std::ptrdiff_t>((row + 1) * head_dim / 2));
        return out;
    }
    void store(bool is_v, int64_t slot, int64_t head, const Tq4Vector& vec) {
        const size_t row = static_cast<size_t>(slot * n_kv_heads + head);
        (is_v ? v_norm : k_norm)[row] = vec.norm_bf16;
        std::copy(vec.indices.begin(), vec.indices.end(),
                  (is_v ? v : k).begin() + static_cast<std::ptrdiff_t>(row * head_dim / 2));
    }
};

std::vector<int64_t> consecutive_positions(int64_t first, int64_t count) {
    std::vector<int64_t> positions(static_cast<size_t>(count));
    for (int64_t t = 0; t < count; ++t) positions[static_cast<size_t>(t)] = first + t;
    return positions;
}

// CudaOps::kv_write of k, v [positions, n_kv, d] into `view`, finished before the buffers go.
void kv_write_on_gpu(Ops& gpu, const KvLayerView& view, const std::vector<int64_t>& positions,
                     const std::vector<float>& k, const std::vector<float>& v) {
    DeviceBuffer k_dev, v_dev, positions_dev;
    upload(k_dev, k);
    upload(v_dev, v);
    upload(positions_dev, positions);
    gpu.kv_write(view, std::span<const int64_t>(positions_dev.as<int64_t>(), positions.size()),
                 k_dev.as<float>(), v_dev.as<float>());
    STATUS_OK(gpu.synchronize());
}

int nibble(const std::vector<uint8_t>& indices, size_t i) {
    return (indices[i / 2] >> (4 * (i % 2))) & 0x0F;
}

TEST_F(CudaKvTq4, CacheWriteIsTq4Encode) {
    struct Case {
        int64_t n_kv, d, capacity, first_position, tokens;
    };
    std::mt19937_64 rng(11);
    for (const Case c : {Case{4, 512, 64, 50, 30}, Case{2, 256, 300, 0, 200},
                         Case{2, 32, 16, 9, 16}, Case{1, 96, 8, 3, 1}}) {
        Tq4Cache cache;
        cache.allocate(c.capacity, c.n_kv, c.d);
        const size_t row = static_cast<size_t>(c.n_kv * c.d);
        std::vector<float> k = normal_vector(static_cast<size_t>(c.tokens) * row, 0.7f, rng);
        std::vector<float> v = normal_vector(static_cast<size_t>(c.tokens) * row, 2.0f, rng);
        std::fill(v.begin(), v.begin() + c.d, 0.0f);                             // a zero vector
        if (c.tokens > 1) k[row + 3] = std::numeric_limits<float>::quiet_NaN();  // a non-finite one
        const std::vector<int64_t> positions = consecutive_positions(c.first_position, c.tokens);
        kv_write_on_gpu(gpu(), cache.device_view(), positions, k, v);
        cache.download_contents();

        int64_t neighbours = 0, elements = 0;
        for (int64_t t = 0; t < c.tokens; ++t) {
            const int64_t slot = positions[static_cast<size_t>(t)] % c.capacity;
            for (int64_t h = 0; h < c.n_kv; ++h) {
                for (const bool is_v : {false, true}) {
                    const float* x = (is_v ? v : k).data() + static_cast<size_t>(t) * row +
                                     static_cast<size_t>(h * c.d);
                    const Tq4Vector expected = tq4_encode(
                        std::span<const float>(x, static_cast<size_t>(c.d)), cache.rotation);
                    const Tq4Vector got = cache.vector(is_v, slot, h);
                    const std::string where = "d " + std::to_string(c.d) + " token " +
                                              std::to_string(t) + " head " + std::to_string(h) +
                                              (is_v ? " v" : " k");
                    ASSERT_EQ(got.norm_bf16, expected.norm_bf16) << where;
                    for (size_t i = 0; i < static_cast<size_t>(c.d); ++i) {
                        const int a = nibble(got.indices, i), b = nibble(expected.indices, i);
                        ASSERT_LE(std::abs(a - b), 1) << where << " element " << i;
                        neighbours += a != b;
                        ++elements;
                    }
                }
            }
        }
        EXPECT_LE(neighbours * 2000, elements) << "d " << c.d << ": " << neighbours << " of "
                                               << elements << " elements in a neighbouring bucket";
        std::printf("TQ4 write d %lld: %lld of %lld indices in a neighbouring bucket\n",
                    static_cast<long long>(c.d), static_cast<long long>(neighbours),
                    static_cast<long long>(elements));
    }
}

// A session's writes into a centred cache on the GPU and into the CPU twin's (host memory): a
// first write of kTq4CenterMinTokens or more tokens sets the centre, through the prefill kernels
// (4 kv heads x 40 tokens: 320 rows) or the few-rows one (1 kv head x 20: 40 rows); decode steps
// and a later chunk keep it; a short first write (4 tokens at position 0) does not set it.
TEST_F(CudaKvTq4, CacheWriteCentresKeysAsTheCpuTwin) {
    struct Write {
        int64_t first_position, tokens;
    };
    struct Case {
        int64_t n_kv, d, capacity;
        std::vector<Write> writes;
    };
    const std::vector<Case> cases = {
        {4, 512, 128, {{0, 40}, {40, 1}, {41, 3}, {44, 40}}},
        {1, 256, 64, {{0, 20}, {20, 1}, {21, 10}}},
        {2, 64, 48, {{0, 4}, {4, 20}, {24, 1}}},
    };
    std::mt19937_64 rng(23);
    for (const Case& c : cases) {
        Tq4Cache cache;
        cache.allocate(c.capacity, c.n_kv, c.d);
        cache.centred = true;
        // The twin: the same layout in host memory.
        std::vector<uint8_t> k_twin(cache.k.size(), 0xAB), v_twin(cache.v.size(), 0xAB);
        std::vector<uint16_t> k_norm_twin(cache.k_norm.size(), 0x7fc1),
            v_norm_twin(cache.v_norm.size(), 0x7fc1);
        std::vector<float> center_twin(cache.center.size(), 0.0f);
        KvLayerView twin{k_twin.data(), v_twin.data(), c.capacity, c.n_kv, c.d, c.d, KvDtype::kTq4};
        twin.k_norm = k_norm_twin.data();
        twin.v_norm = v_norm_twin.data();
        twin.rotation = cache.rotation.data();
        twin.k_center = center_twin.data();

        const size_t row = static_cast<size_t>(c.n_kv * c.d);
        const std::vector<float> shared = normal_vector(row, 2.0f, rng);  // the keys' common part
        for (const Write& w : c.writes) {
            std::vector<float> k = normal_vector(static_cast<size_t>(w.tokens) * row, 0.7f, rng);
            for (size_t i = 0; i < k.size(); ++i) k[i] += shared[i % row];
            const std::vector<float> v = normal_vector(k.size(), 1.0f, rng);
            const std::vector<int64_t> positions =
                consecutive_positions(w.first_position, w.tokens);
            kv_write_on_gpu(gpu(), cache.device_view(), positions, k, v);
            cpu_ops().kv_write(twin, positions, k.data(), v.data());
        }
        cache.download_contents();
        const std::string name = "n_kv " + std::to_string(c.n_kv) + " d " + std::to_string(c.d);
        const bool sets_centre = c.writes[0].tokens >= kTq4CenterMinTokens;
        double centre_norm = 0.0;
        for (size_t i = 0; i < cache.center.size(); ++i) {
            ASSERT_EQ(std::bit_cast<uint32_t>(cache.center[i]),
                      std::bit_cast<uint32_t>(center_twin[i]))
                << name << " centre element " << i;
            centre_norm += static_cast<double>(center_twin[i]) * center_twin[i];
        }
        if (sets_centre) {
            EXPECT_GT(centre_norm, static_cast<double>(row))
                << name << ": the shared part is the centre";
        } else {
            EXPECT_EQ(centre_norm, 0.0) << name << ": a short first write sets no centre";
        }
        int64_t neighbours = 0, elements = 0;
        for (size_t entry = 0; entry < cache.k_norm.size(); ++entry) {
            for (const bool is_v : {false, true}) {
                const uint16_t norm = (is_v ? cache.v_norm : cache.k_norm)[entry];
                ASSERT_EQ(norm, (is_v ? v_norm_twin : k_norm_twin)[entry])
                    << name << " entry " << entry << (is_v ? " v" : " k");
                if (norm == 0x7fc1) continue;  // never written (both still poisoned)
                const std::vector<uint8_t>& got = is_v ? cache.v : cache.k;
                const std::vector<uint8_t>& want = is_v ? v_twin : k_twin;
                const size_t begin = entry * static_cast<size_t>(c.d / 2);
                const std::vector<uint8_t> a(got.begin() + begin, got.begin() + begin + c.d / 2);
                const std::vector<uint8_t> b(want.begin() + begin, want.begin() + begin + c.d / 2);
                for (size_t i = 0; i < static_cast<size_t>(c.d); ++i) {
                    const int x = nibble(a, i), y = nibble(b, i);
                    ASSERT_LE(std::abs(x - y), 1) << name << " entry " << entry << " element " << i;
                    neighbours += x != y;
                    ++elements;
                }
            }
        }
        EXPECT_LE(neighbours * 2000, elements) << name << ": " << neighbours << " of " << elements;
        std::printf(
            "TQ4 centred write %s: centre %s, %lld of %lld indices in a neighbouring bucket\n",
            name.c_str(), sets_centre ? "set" : "zero", static_cast<long long>(neighbours),
            static_cast<long long>(elements));
    }
}

struct AttentionCase {
    const char* name;
    int64_t n_heads, n_kv_heads, head_dim, capacity, window;
    float scale, softcap;
};

// The worst ratios seen: twin error / twin budget, reference error / reference allowance.
struct Worst {
    double twin = 0.0, reference = 0.0;
};

// Every slot of the cache holds position = slot (encoded on the CPU); k scaled so that scores
// have a std of ~2.5 for q ~ N(0, 1).
void fill_cache(const AttentionCase& s, std::mt19937_64& rng, Tq4Cache& cache) {
    cache.allocate(s.capacity, s.n_kv_heads, s.head_dim);
    const int64_t d = s.head_dim;
    const float k_std = 2.5f / (s.scale * std::sqrt(static_cast<float>(d)));
    for (int64_t p = 0; p < s.capacity; ++p) {
        for (int64_t h = 0; h < s.n_kv_heads; ++h) {
            const std::vector<float> k = normal_vector(static_cast<size_t>(d), k_std, rng);
            const std::vector<float> v = normal_vector(static_cast<size_t>(d), 1.0f, rng);
            cache.store(false, p, h, tq4_encode(k, cache.rotation));
            cache.store(true, p, h, tq4_encode(v, cache.rotation));
        }
    }
    cache.upload_contents();
}

// The GPU attention of `tokens` queries ending at position `last` (< capacity: the keys after it
// are causally invisible; or, with a window, past it: the ring has wrapped, slot = position %
// capacity), against the twin and, on every 13th row, tq4_attend.
void check_attention(Ops& gpu, const AttentionCase& s, const Tq4Cache& cache, int64_t last,
                     int64_t tokens, std::mt19937_64& rng, Worst& worst) {
    const int64_t d = s.head_dim;
    std::vector<int64_t> positions(static_cast<size_t>(tokens));
    for (int64_t t = 0; t < tokens; ++t) positions[static_cast<size_t>(t)] = last - tokens + 1 + t;
    const size_t out_size = static_cast<size_t>(tokens * s.n_heads * d);
    const std::vector<float> q = normal_vector(out_size, 1.0f, rng);
    DeviceBuffer q_dev, out_dev, positions_dev;
    upload(q_dev, q);
    upload(out_dev, nan_vector(out_size));
    upload(positions_dev, positions);
    const AttentionParams params{s.n_heads, s.scale, s.window, s.softcap};
    gpu.attention(q_dev.as<float>(),
                  std::span<const int64_t>(positions_dev.as<int64_t>(), positions.size()),
                  cache.device_view(), params, out_dev.as<float>());
    STATUS_OK(gpu.synchronize());
    const std::vector<float> out = download(out_dev.as<float>(), out_size);

    // The twin's cache: the rotated vectors as the kernels see them (norm * bf16(level)), and
    // their absolute values.
    const std::array<float, kTq4Levels> levels = tq4_levels(d);
    const size_t cache_size = static_cast<size_t>(s.capacity * s.n_kv_heads * d);
    std::vector<float> k_rot(cache_size, 0.0f), v_rot(cache_size, 0.0f), v_abs(cache_size, 0.0f);
    float max_abs_v = 0.0f;
    for (int64_t slot = 0; slot < s.capacity; ++slot)
        for (int64_t h = 0; h < s.n_kv_heads; ++h)
            for (int64_t i = 0; i < d; ++i) {
                const size_t row = static_cast<size_t>(slot * s.n_kv_heads + h);
                const size_t at = row * static_cast<size_t>(d) + static_cast<size_t>(i);
                const float kn = bf16_to_fp32(cache.k_norm[row]),
                            vn = bf16_to_fp32(cache.v_norm[row]);
                const size_t byte = row * static_cast<size_t>(d / 2) + static_cast<size_t>(i / 2);
                const int ki = (cache.k[byte] >> (4 * (i % 2))) & 0x0F,
                          vi = (cache.v[byte] >> (4 * (i % 2))) & 0x0F;
                k_rot[at] = kn * bf16_to_fp32(fp32_to_bf16(levels[static_cast<size_t>(ki)]));
                v_rot[at] = vn * bf16_to_fp32(fp32_to_bf16(levels[static_cast<size_t>(vi)]));
                v_abs[at] = std::fabs(v_rot[at]);
                if (std::isfinite(v_abs[at])) max_abs_v = std::max(max_abs_v, v_abs[at]);
            }
    KvLayerView twin_view{k_rot.data(), v_rot.data(), s.capacity, s.n_kv_heads, d, d};
    KvLayerView abs_view{k_rot.data(), v_abs.data(), s.capacity, s.n_kv_heads, d, d};
    const std::vector<double> q_rotated = rotate_reference(q, d, cache.rotation, false);
    std::vector<float> q16(out_size);
    for (size_t i = 0; i < out_size; ++i)
        q16[i] = bf16_to_fp32(fp32_to_bf16(static_cast<float>(q_rotated[i])));
    std::vector<float> twin_rotated(out_size), weighted_abs(out_size);
    cpu_ops().attention(q16.data(), positions, twin_view, params, twin_rotated.data());
    cpu_ops().attention(q16.data(), positions, abs_view, params, weighted_abs.data());
    const std::vector<double> twin = rotate_reference(twin_rotated, d, cache.rotation, true);

    const double floor = std::ldexp(1.0, -14) * max_abs_v;
    for (int64_t row = 0; row < tokens * s.n_heads; ++row) {
        const int64_t t = row / s.n_heads, h = row % s.n_heads;
        const size_t base = static_cast<size_t>(row * d);
        double err2 = 0.0, budget2 = 0.0, twin2 = 0.0;
        for (int64_t i = 0; i < d; ++i) {
            const size_t at = base + static_cast<size_t>(i);
            const double b =
                (std::ldexp(1.0, -8) + std::ldexp(1.0, -10)) * weighted_abs[at] + floor;
            err2 += std::pow(out[at] - twin[at], 2);
            budget2 += b * b;
            twin2 += twin[at] * twin[at];
        }
        const double err = std::sqrt(err2),
                     budget = std::sqrt(budget2) + std::ldexp(std::sqrt(twin2), -16);
        ASSERT_LE(err, budget) << s.name << " last " << last << " T " << tokens << ": token " << t
                               << " head " << h << " against the twin";  // NaN fails too
        worst.twin = std::max(worst.twin, err / budget);

        // tq4_attend over this row's visible keys, in double without bf16 rounding.
        if (row % 13 != 0) continue;
        const int64_t position = positions[static_cast<size_t>(t)];
        const int64_t first = s.window > 0 ? std::max<int64_t>(0, position - s.window + 1) : 0;
        std::vector<Tq4Vector> keys, values;
        const int64_t kv_head = h / (s.n_heads / s.n_kv_heads);
        for (int64_t p = first; p <= position; ++p) {
            keys.push_back(cache.vector(false, p % s.capacity, kv_head));
            values.push_back(cache.vector(true, p % s.capacity, kv_head));
        }
        const std::vector<float> reference =
            tq4_attend(std::span<const float>(q.data() + base, static_cast<size_t>(d)), keys,
                       values, cache.rotation, s.scale, s.softcap);
        double ref_err2 = 0.0, ref2 = 0.0;
        for (int64_t i = 0; i < d; ++i) {
            ref_err2 +=
                std::pow(out[base + static_cast<size_t>(i)] - reference[static_cast<size_t>(i)], 2);
            ref2 += std::pow(reference[static_cast<size_t>(i)], 2);
        }
        const double allowed = 0.02 * std::sqrt(ref2) + 0.02;
        ASSERT_LE(std::sqrt(ref_err2), allowed)
            << s.name << " last " << last << " T " << tokens << ": token " << t << " head " << h
            << " against tq4_attend";
        worst.reference = std::max(worst.reference, std::sqrt(ref_err2) / allowed);
    }
}

void run_attention_cases(Ops& gpu, const AttentionCase& s,
                         std::initializer_list<std::pair<int64_t, int64_t> > cases) {
    std::mt19937_64 rng(static_cast<uint64_t>(s.head_dim * 1000 + s.n_heads));
    Tq4Cache cache;
    fill_cache(s, rng, cache);
    if (::testing::Test::HasFatalFailure()) return;
    Worst worst;
    for (const auto& [last, tokens] : cases) {
        check_attention(gpu, s, cache, last, tokens, rng, worst);
        if (::testing::Test::HasFatalFailure()) return;
    }
    std::printf("%s: max ||gpu - twin|| / budget %.3f, max ||gpu - tq4_attend|| / allowed %.3f\n",
                s.name, worst.twin, worst.reference);
}

// (last position, tokens): decode single pass (short) and split-K (long), T = 4, chunked prefill;
// with the window, decode on a ring that has wrapped (a key tile that crosses slot 0).
TEST_F(CudaKvTq4, AttentionGemma4FullLayer) {
    run_attention_cases(gpu(), {"gemma4 full 32/4 x 512", 32, 4, 512, 1200, 0, 1.0f, 0.0f},
                        {{20, 1}, {1199, 1}, {1000, 4}, {500, 100}, {1150, 70}, {1199, 300}});
}

// Head dim 512 with a window and a group (6) that does not divide the prefill kernels' 64-row
// tiles: a token's heads straddle two tiles, the block's first key is not a tile boundary, and
// the ring wraps (capacity 400 >= window + chunk - 1).
TEST_F(CudaKvTq4, AttentionHeadDim512WindowAndOddGroup) {
    run_attention_cases(gpu(),
                        {"window 100, 12/2 x 512", 12, 2, 512, 400, 100, 0.0441941738f, 0.0f},
                        {{399, 150}, {250, 9}, {450, 60}, {460, 1}});
}

TEST_F(CudaKvTq4, AttentionQwen35FullLayer) {
    run_attention_cases(gpu(), {"qwen3.5 full 16/2 x 256", 16, 2, 256, 1200, 0, 0.0625f, 0.0f},
                        {{5, 1}, {1100, 1}, {900, 3}, {300, 301}, {1199, 99}});
}

TEST_F(CudaKvTq4, AttentionWindowSoftcapAndSmallHeads) {
    run_attention_cases(gpu(),
                        {"window 40, softcap 30, 8/2 x 64", 8, 2, 64, 300, 40, 0.125f, 30.0f},
                        {{10, 1}, {250, 1}, {290, 70}, {330, 1}, {320, 4}});
    run_attention_cases(gpu(), {"tiny 4/2 x 32", 4, 2, 32, 200, 0, 0.17677669f, 0.0f},
                        {{0, 1}, {150, 1}, {120, 121}});
}

TEST_F(CudaKvTq4, RejectsHeadDimsTheKernelsCannotTake) {
    Tq4Cache cache;
    cache.allocate(8, 1, 48);  // not a multiple of 32
    std::vector<float> k(48, 1.0f);
    std::vector<int64_t> positions{0};
    DeviceBuffer k_dev, positions_dev;
    upload(k_dev, k);
    upload(positions_dev, positions);
    gpu().kv_write(cache.device_view(), std::span<const int64_t>(positions_dev.as<int64_t>(), 1),
                   k_dev.as<float>(), k_dev.as<float>());
    const Status status = gpu().take_error();
    EXPECT_FALSE(status.ok());
    EXPECT_NE(status.message().find("multiple of 32"), std::string::npos) << status.message();
}

#endif  // KESTREL_HAS_CUDA

}  // namespace
}  // namespace kestrel
