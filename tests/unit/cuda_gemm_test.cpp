// The prefill GEMM (src/ops/cuda/gemm_prefill.cu, dequantize_bf16.cu) against its CPU twin:
// W dequantised in fp32 (w4_dequantize; for W8 the same formula written here), weights and x
// rounded to bf16 as the kernels round them, products summed in double. Skips without a GPU.
//
// Operand kernels, bit for bit: dequantize_w4_to_bf16 / dequantize_w8_to_bf16 must equal
// fp32_to_bf16(scale * q - min) with the product and the difference each rounded in fp32 (as
// w4_dequantize, no FMA), convert_f32_to_bf16 must equal fp32_to_bf16; rows outside the
// requested range stay untouched.
//
// GEMM outputs (poisoned with NaN first; every one must be written and finite):
//   |gpu - ref_bf16| <= (k + 64) 2^-23 Σ_k |bf16(x) bf16(w)|
// ref_bf16 = Σ bf16(x) bf16(w) in double. Why: each product of two bf16 values (8-bit
// significands) is exact in fp32, so the only error left is fp32 accumulation: at most k
// additions (plus a split-K reduction's few) along any path, each off by at most one fp32 ulp of
// a partial sum (2^-23 relative, allowing the tensor cores' truncation instead of rounding), and
// no partial sum exceeds Σ|terms|. And against the unrounded fp32 reference ref32 (fp32 x and
// fp32 dequantised w), within twice the reference's own bf16 rounding error, per case:
//   max |gpu - ref32| <= 2 max |ref_bf16 - ref32| + max tolerance.
// Outputs checked: all for small shapes; for the Gemma 4 shapes a sample of rows of y (first 8,
// last 8, every 61st) x columns (first 64, last 64, every 97th).
#include <gtest/gtest.h>

#if KESTREL_HAS_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <iterator>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/half.h"
#include "ops/cuda/cuda_ops.h"
#include "ops/cuda/gemm_prefill.h"
#include "ops/weight_format.h"

#include "cuda_test_support.h"
#include "cuda_w4_test_support.h"
#endif

namespace kestrel {
namespace {

#if !KESTREL_HAS_CUDA

TEST(CudaGemm, NeedsTheCudaBuild) { GTEST_SKIP() << "built without CUDA (KESTREL_HAS_CUDA=0)"; }

#else

using kestrel::testing::cuda_device_present;
using kestrel::testing::DeviceBuffer;
using kestrel::testing::DeviceW4;
using kestrel::testing::download;
using kestrel::testing::random_w4;
using kestrel::testing::splitmix64;
using kestrel::testing::upload;
using kestrel::testing::upload_w4;

class CudaGemm : public ::testing::Test {
protected:
    void SetUp() override {
        if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
        auto created = cuda::GemmContext::create();
        ASSERT_TRUE(created.ok()) << created.status().message();
        context_ = std::move(created).value();
    }

    std::unique_ptr<cuda::GemmContext> context_;
};

void fill_random_bytes(uint8_t* p, size_t count, uint64_t seed) {
    for (size_t i = 0; i < count; i += 8) {
        const uint64_t r = splitmix64(seed);
        for (size_t j = 0; j < 8 && i + j < count; ++j) p[i + j] = static_cast<uint8_t>(r >> (8 * j));
    }
}

// W8's (scale, min) fp16 pairs with Q4_K-like magnitudes: scale ~ 2^-9..2^-7,
// min = scale * U(0, q_span).
std::vector<uint16_t> random_scale_min(int64_t n, int64_t k, float q_span, uint64_t seed) {
    std::vector<uint16_t> scale_min(static_cast<size_t>(n * (k / 32) * 2));
    for (size_t i = 0; i < scale_min.size(); i += 2) {
        const uint64_t r = splitmix64(seed);
        const float scale = std::ldexp(1.0f + static_cast<float>(r & 0xffff) / 65536.0f, -9 - static_cast<int>((r >> 16) % 3));
        const float min = scale * q_span * static_cast<float>((r >> 32) & 0xffff) / 65536.0f;
        scale_min[i] = fp32_to_fp16(scale);
        scale_min[i + 1] = fp32_to_fp16(min);
    }
    return scale_min;
}

W4Weights select_rows(const W4Weights& w, const std::vector<int64_t>& rows) {
    W4Weights s;
    s.n = static_cast<int64_t>(rows.size());
    s.k = w.k;
    const int64_t groups = w.groups(), supers2 = w.supers() * 2;
    for (int64_t r : rows) {
        s.qs.insert(s.qs.end(), w.qs.begin() + r * (w.k / 2), w.qs.begin() + (r + 1) * (w.k / 2));
        s.group_scales.insert(s.group_scales.end(), w.group_scales.begin() + r * groups,
                              w.group_scales.begin() + (r + 1) * groups);
        s.super_scales.insert(s.super_scales.end(), w.super_scales.begin() + r * supers2,
                              w.super_scales.begin() + (r + 1) * supers2);
    }
    return s;
}

// W8 as cuda::W8DeviceView describes it: qs [n, k] int8, scale_min [n, k/32, 2] fp16 bits.
struct W8Host {
    int64_t n = 0;
    int64_t k = 0;
    std::vector<int8_t> qs;
    std::vector<uint16_t> scale_min;
};

W8Host random_w8(int64_t n, int64_t k, uint64_t seed) {
    W8Host w;
    w.n = n;
    w.k = k;
    w.qs.resize(static_cast<size_t>(n * k));
    fill_random_bytes(reinterpret_cast<uint8_t*>(w.qs.data()), w.qs.size(), seed);
    w.scale_min = random_scale_min(n, k, 8.0f, seed + 1);
    return w;
}

// The W8 twin: w = scale * q - min in fp32, the product rounded before the subtraction (volatile
// keeps the compiler from contracting it into an FMA under any flags, as the kernel's __fmul_rn).
std::vector<float> w8_dequantize_rows(const W8Host& w, const std::vector<int64_t>& rows) {
    std::vector<float> out;
    out.reserve(rows.size() * static_cast<size_t>(w.k));
    for (int64_t r : rows) {
        for (int64_t col = 0; col < w.k; ++col) {
            const uint16_t* sm = w.scale_min.data() + (r * (w.k / 32) + col / 32) * 2;
            volatile float product = fp16_to_fp32(sm[0]) * static_cast<float>(w.qs[static_cast<size_t>(r * w.k + col)]);
            out.push_back(product - fp16_to_fp32(sm[1]));
        }
    }
    return out;
}

// BF16 weights ~ U(-0.05, 0.05), raw bits.
std::vector<uint16_t> random_bf16(int64_t n, int64_t k, uint64_t seed) {
    std::vector<uint16_t> w(static_cast<size_t>(n * k));
    for (uint16_t& v : w) {
        const float u = static_cast<float>(splitmix64(seed) >> 40) / 16777216.0f;
        v = fp32_to_bf16((u - 0.5f) * 0.1f);
    }
    return w;
}

std::vector<float> random_x(int64_t m, int64_t k, uint64_t seed) {
    std::mt19937 rng(static_cast<uint32_t>(seed));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(m * k));
    for (float& v : x) v = normal(rng);
    for (size_t i = 17; i < x.size(); i += 997) x[i] *= 30.0f;  // outliers, as real activations have
    return x;
}

std::vector<int64_t> sample(int64_t count, int64_t edge, int64_t stride) {
    std::vector<int64_t> out;
    for (int64_t i = 0; i < count; ++i) {
        if (i < edge || i >= count - edge || i % stride == 0) out.push_back(i);
    }
    return out;
}

std::vector<float> round_to_bf16(const std::vector<float>& v) {
    std::vector<float> out(v.size());
    for (size_t i = 0; i < v.size(); ++i) out[i] = bf16_to_fp32(fp32_to_bf16(v[i]));
    return out;
}

// One weight matrix in one format: its device copy, the GEMM on it, and its fp32 rows (the twin).
struct TestWeight {
    std::string format;
    int64_t n = 0;
    int64_t k = 0;
    DeviceBuffer qs, scale_min;  // W8 (or the bf16 matrix in qs)
    DeviceW4 w4;                 // W4
    std::function<std::vector<float>(const std::vector<int64_t>&)> rows_f32;
    std::function<Status(cuda::GemmContext&, const float*, int64_t, void*, float*, cudaStream_t)> gemm;
};

std::unique_ptr<TestWeight> make_w4(int64_t n, int64_t k, uint64_t seed) {
    auto t = std::make_unique<TestWeight>();
    auto w = std::make_shared<const W4Weights>(random_w4(n, k, seed));
    t->format = "w4";
    t->n = n;
    t->k = k;
    upload_w4(*w, t->w4);
    const cuda::W4DeviceView view = t->w4.view;
    t->rows_f32 = [w](const std::vector<int64_t>& rows) { return w4_dequantize(select_rows(*w, rows)); };
    t->gemm = [view](cuda::GemmContext& c, const float* x, int64_t m, void* scratch, float* y, cudaStream_t s) {
        return cuda::gemm_w4(c, x, m, view, scratch, y, s);
    };
    return t;
}

std::unique_ptr<TestWeight> make_w8(int64_t n, int64_t k, uint64_t seed) {
    auto t = std::make_unique<TestWeight>();
    auto w = std::make_shared<const W8Host>(random_w8(n, k, seed));
    t->format = "w8";
    t->n = n;
    t->k = k;
    upload(t->qs, w->qs);
    upload(t->scale_min, w->scale_min);
    const cuda::W8DeviceView view{t->qs.as<int8_t>(), t->scale_min.as<uint32_t>(), n, k};
    t->rows_f32 = [w](const std::vector<int64_t>& rows) { return w8_dequantize_rows(*w, rows); };
    t->gemm = [view](cuda::GemmContext& c, const float* x, int64_t m, void* scratch, float* y, cudaStream_t s) {
        return cuda::gemm_w8(c, x, m, view, scratch, y, s);
    };
    return t;
}

std::unique_ptr<TestWeight> make_bf16(int64_t n, int64_t k, uint64_t seed) {
    auto t = std::make_unique<TestWeight>();
    auto w = std::make_shared<const std::vector<uint16_t>>(random_bf16(n, k, seed));
    t->format = "bf16";
    t->n = n;
    t->k = k;
    upload(t->qs, *w);
    const uint16_t* device_w = t->qs.as<uint16_t>();
    t->rows_f32 = [w, k](const std::vector<int64_t>& rows) {
        std::vector<float> out;
        for (int64_t r : rows) {
            for (int64_t col = 0; col < k; ++col) out.push_back(bf16_to_fp32((*w)[static_cast<size_t>(r * k + col)]));
        }
        return out;
    };
    t->gemm = [device_w, n, k](cuda::GemmContext& c, const float* x, int64_t m, void* scratch, float* y,
                               cudaStream_t s) { return cuda::gemm_bf16(c, x, m, device_w, n, k, scratch, y, s); };
    return t;
}

using WeightMaker = std::unique_ptr<TestWeight> (*)(int64_t, int64_t, uint64_t);

struct Worst {
    double ratio = 0.0;  // max |gpu - ref_bf16| / tolerance
};

// Checks y [m, n] from the device against the twin on the rows/columns sampled (all when small).
void check_output(const TestWeight& w, const std::vector<float>& x, int64_t m, const std::vector<float>& y,
                  Worst& worst, const std::string& label) {
    const int64_t n = w.n, k = w.k;
    for (size_t i = 0; i < y.size(); ++i) ASSERT_TRUE(std::isfinite(y[i])) << label << ": output " << i << " = " << y[i];
    const std::vector<int64_t> rows = m <= 64 ? sample(m, m, 1) : sample(m, 8, 61);
    const std::vector<int64_t> cols = n <= 256 ? sample(n, n, 1) : sample(n, 64, 97);
    const std::vector<float> w32 = w.rows_f32(cols);
    const std::vector<float> w16 = round_to_bf16(w32);
    const double unit = std::ldexp(1.0, -23);
    double max_err32 = 0.0, max_reference_err = 0.0, max_tol = 0.0;
    for (int64_t r : rows) {
        const float* xr = x.data() + r * k;
        std::vector<float> x16(static_cast<size_t>(k));
        for (int64_t c = 0; c < k; ++c) x16[static_cast<size_t>(c)] = bf16_to_fp32(fp32_to_bf16(xr[c]));
        for (size_t j = 0; j < cols.size(); ++j) {
            const float* a16 = w16.data() + j * static_cast<size_t>(k);
            const float* a32 = w32.data() + j * static_cast<size_t>(k);
            double ref16 = 0.0, ref32 = 0.0, magnitude = 0.0;
            for (int64_t c = 0; c < k; ++c) {
                const double term = static_cast<double>(x16[static_cast<size_t>(c)]) * a16[c];
                ref16 += term;
                magnitude += std::fabs(term);
                ref32 += static_cast<double>(xr[c]) * a32[c];
            }
            const double got = y[static_cast<size_t>(r * n + cols[j])];
            const double tol = (static_cast<double>(k) + 64.0) * unit * magnitude + 1e-30;
            const double err = std::fabs(got - ref16);
            ASSERT_LE(err, tol) << label << " y[" << r << ", " << cols[j] << "]: gpu " << got << " twin " << ref16;
            worst.ratio = std::max(worst.ratio, err / tol);
            max_err32 = std::max(max_err32, std::fabs(got - ref32));
            max_reference_err = std::max(max_reference_err, std::fabs(ref16 - ref32));
            max_tol = std::max(max_tol, tol);
        }
    }
    ASSERT_LE(max_err32, 2.0 * max_reference_err + max_tol)
        << label << ": against fp32 weights and x, the bf16 reference's own error is " << max_reference_err;
}

// x random [m, k] -> y = the GEMM (y poisoned with NaN first), checked against the twin.
void run_and_check(cuda::GemmContext& context, const TestWeight& w, int64_t m, uint64_t seed, Worst& worst) {
    const std::string label = w.format + " m " + std::to_string(m) + " k " + std::to_string(w.k) + " n " +
                              std::to_string(w.n) + " slice " + std::to_string(context.weight_slice_bytes());
    const std::vector<float> x = random_x(m, w.k, seed);
    DeviceBuffer dx, dy, scratch;
    upload(dx, x);
    CUDA_OK(dy.alloc(static_cast<size_t>(m * w.n) * 4));
    CUDA_OK(scratch.alloc(cuda::gemm_scratch_bytes(m, w.n, w.k)));
    CUDA_OK(cudaMemset(dy.as<void>(), 0xff, static_cast<size_t>(m * w.n) * 4));  // NaN poison
    const Status s = w.gemm(context, dx.as<float>(), m, scratch.as<void>(), dy.as<float>(), nullptr);
    kestrel::testing::wait_for_host_copies();
    ASSERT_TRUE(s.ok()) << label << ": " << s.message();
    CUDA_OK(cudaDeviceSynchronize());
    check_output(w, x, m, download<float>(dy, static_cast<size_t>(m * w.n)), worst, label);
}

// Gemma 4 31B: q (5376 -> 8192), k/v (5376 -> 4096), gate/up (5376 -> 21504), down (21504 -> 5376), o (8192 -> 5376).
constexpr int64_t kGemma4Shapes[][2] = {{5376, 8192}, {5376, 4096}, {5376, 21504}, {21504, 5376}, {8192, 5376}};

// Rows [row_begin, row_begin + rows) of w dequantised on the device into a buffer with a guard row
// either side: the guards untouched, every value fp32_to_bf16(w4_dequantize(w)) bit for bit.
void check_dequantize_w4(const W4Weights& w, int64_t row_begin, int64_t rows) {
    const int64_t k = w.k;
    DeviceW4 d;
    upload_w4(w, d);
    DeviceBuffer out;
    const std::vector<float> expected = w4_dequantize(w);
    CUDA_OK(out.alloc(static_cast<size_t>((rows + 2) * k) * 2));  // a guard row either side
    CUDA_OK(cudaMemset(out.as<void>(), 0xff, static_cast<size_t>((rows + 2) * k) * 2));
    kestrel::testing::wait_for_host_copies();
    const Status s =
        cuda::dequantize_w4_to_bf16(d.view, row_begin, rows, out.as<uint16_t>() + k, nullptr);
    ASSERT_TRUE(s.ok()) << s.message();
    const std::vector<uint16_t> got = download<uint16_t>(out, static_cast<size_t>((rows + 2) * k));
    for (int64_t c = 0; c < k; ++c) {
        ASSERT_EQ(got[static_cast<size_t>(c)], 0xffff) << "guard row before, column " << c;
        ASSERT_EQ(got[static_cast<size_t>((rows + 1) * k + c)], 0xffff) << "guard row after, column " << c;
    }
    for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < k; ++c) {
            const uint16_t want = fp32_to_bf16(expected[static_cast<size_t>((row_begin + r) * k + c)]);
            ASSERT_EQ(got[static_cast<size_t>((r + 1) * k + c)], want)
                << "k " << k << " row " << row_begin + r << " column " << c;
        }
    }
}

TEST_F(CudaGemm, DequantizeW4MatchesTwinBitForBit) {
    const int64_t n = 300, k = 5376;
    W4Weights w = random_w4(n, k, 7);
    // Edge (d, dmin) pairs in super-groups 0..4 of row 40: fp16 subnormals, the largest fp16 (and
    // negatives), d = 1 + 2^-8 (with sc = 1 and m = 0, q = 1 lands exactly halfway between two
    // bf16 values: ties to even); their groups take sc and m from 0, 1, 255 and between.
    const uint16_t edges[][2] = {
        {0x0001, 0x8001}, {0x7bff, 0xfbff}, {0x3c04, 0x0000}, {0x3c04, 0x3c00}, {0x03ff, 0x7bff}};
    const int sc[8] = {255, 1, 0, 128, 255, 17, 254, 1};
    const int m[8] = {255, 0, 1, 255, 128, 255, 3, 0};
    for (int e = 0; e < 5; ++e) {
        uint16_t* dd = w.super_scales.data() + (40 * w.supers() + e) * 2;
        dd[0] = edges[e][0];
        dd[1] = edges[e][1];
        for (int j = 0; j < 8; ++j) {
            w.group_scales[static_cast<size_t>(40 * w.groups() + 8 * e + j)] =
                static_cast<uint16_t>(sc[j] | (m[j] << 8));
        }
    }
    check_dequantize_w4(w, 37, 200);
    if (HasFatalFailure()) return;
    // K = 640: 20 groups, rows end in a short super-group of 4 (the slice's super_scales offset is
    // row_begin * 3 words); the converter's weights (w4_from_f32), group magnitudes over 100x.
    std::mt19937 rng(8);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> src(static_cast<size_t>(50 * 640));
    for (size_t g = 0; g < src.size() / 32; ++g) {
        const float magnitude = 0.002f * std::pow(10.0f, static_cast<float>(g % 7) / 3.0f);
        const float shift = static_cast<float>(static_cast<int>(g % 3) - 1);
        for (size_t i = 0; i < 32; ++i) src[g * 32 + i] = magnitude * (normal(rng) + shift);
    }
    Result<W4Weights> converted = w4_from_f32(src, 50, 640);
    ASSERT_TRUE(converted.ok()) << converted.status().message();
    check_dequantize_w4(*converted, 5, 41);
}

TEST_F(CudaGemm, DequantizeW8MatchesTwinBitForBit) {
    const int64_t n = 130, k = 8192, row_begin = 64, rows = 66;
    W8Host w = random_w8(n, k, 8);
    const uint16_t edges[][2] = {{0x0001, 0x8001}, {0x7bff, 0xfbff}, {0x3c04, 0x0000}, {0x3c04, 0xbc00}};
    for (int e = 0; e < 4; ++e) {
        uint16_t* sm = w.scale_min.data() + (70 * (k / 32) + 5 * e) * 2;
        sm[0] = edges[e][0];
        sm[1] = edges[e][1];
    }
    DeviceBuffer qs, scale_min, out;
    upload(qs, w.qs);
    upload(scale_min, w.scale_min);
    const cuda::W8DeviceView view{qs.as<int8_t>(), scale_min.as<uint32_t>(), n, k};
    std::vector<int64_t> wanted_rows;
    for (int64_t r = row_begin; r < row_begin + rows; ++r) wanted_rows.push_back(r);
    const std::vector<float> expected = w8_dequantize_rows(w, wanted_rows);
    CUDA_OK(out.alloc(static_cast<size_t>((rows + 2) * k) * 2));
    CUDA_OK(cudaMemset(out.as<void>(), 0xff, static_cast<size_t>((rows + 2) * k) * 2));
    kestrel::testing::wait_for_host_copies();
    const Status s = cuda::dequantize_w8_to_bf16(view, row_begin, rows, out.as<uint16_t>() + k, nullptr);
    ASSERT_TRUE(s.ok()) << s.message();
    const std::vector<uint16_t> got = download<uint16_t>(out, static_cast<size_t>((rows + 2) * k));
    for (int64_t c = 0; c < k; ++c) {
        ASSERT_EQ(got[static_cast<size_t>(c)], 0xffff) << "guard row before, column " << c;
        ASSERT_EQ(got[static_cast<size_t>((rows + 1) * k + c)], 0xffff) << "guard row after, column " << c;
    }
    for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < k; ++c) {
            ASSERT_EQ(got[static_cast<size_t>((r + 1) * k + c)], fp32_to_bf16(expected[static_cast<size_t>(r * k + c)]))
                << "row " << row_begin + r << " column " << c;
        }
    }
}

// Vector path (aligned, a ragged tail of 5) and element path (misaligned by one element).
TEST_F(CudaGemm, ConvertMatchesTwinBitForBit) {
    std::vector<float> x = random_x(1, 4101, 12);
    const uint32_t specials[] = {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0xffc00001u,
                                 0x7fa00000u, 0x3f808000u, 0x3f818000u, 0x3f808001u, 0x7f7fffffu, 0x7f7f8000u,
                                 0x00000001u, 0x807fffffu, 0x00408000u, 0xc2f98000u};
    for (size_t i = 0; i < std::size(specials); ++i) x[100 + 3 * i] = std::bit_cast<float>(specials[i]);
    DeviceBuffer dx, out;
    upload(dx, x);
    CUDA_OK(out.alloc((x.size() + 8) * 2));
    for (int offset = 0; offset < 2; ++offset) {
        const int64_t count = static_cast<int64_t>(x.size()) - offset;
        CUDA_OK(cudaMemset(out.as<void>(), 0xff, (x.size() + 8) * 2));
        kestrel::testing::wait_for_host_copies();
        const Status s = cuda::convert_f32_to_bf16(dx.as<float>() + offset, count, out.as<uint16_t>() + offset, nullptr);
        ASSERT_TRUE(s.ok()) << s.message();
        const std::vector<uint16_t> got = download<uint16_t>(out, x.size() + 8);
        for (int64_t i = 0; i < count; ++i) {
            ASSERT_EQ(got[static_cast<size_t>(offset + i)], fp32_to_bf16(x[static_cast<size_t>(offset + i)]))
                << "offset " << offset << " element " << i << " bits " << std::bit_cast<uint32_t>(x[static_cast<size_t>(offset + i)]);
        }
        for (size_t i = x.size(); i < x.size() + 8; ++i) ASSERT_EQ(got[i], 0xffff) << "past the end: " << i;
    }
}

TEST_F(CudaGemm, Gemma4ShapesW4) {
    Worst worst;
    uint64_t seed = 1000;
    for (const auto& shape : kGemma4Shapes) {
        const auto w = make_w4(shape[1], shape[0], ++seed);
        if (HasFatalFailure()) return;
        for (int64_t m : {int64_t{9}, int64_t{17}, int64_t{512}}) {
            run_and_check(*context_, *w, m, ++seed, worst);
            if (HasFatalFailure()) return;
        }
        if (shape[1] == 21504) {
            run_and_check(*context_, *w, 2048, ++seed, worst);
            if (HasFatalFailure()) return;
        }
    }
    std::printf("W4, Gemma 4 shapes: max |gpu - twin| / tolerance = %.3e\n", worst.ratio);
}

TEST_F(CudaGemm, Gemma4ShapesW8AndBf16) {
    Worst worst;
    uint64_t seed = 2000;
    for (WeightMaker make : {WeightMaker{make_w8}, WeightMaker{make_bf16}}) {
        for (const auto& shape : kGemma4Shapes) {
            const auto w = make(shape[1], shape[0], ++seed);
            if (HasFatalFailure()) return;
            for (int64_t m : {int64_t{9}, int64_t{512}}) {
                run_and_check(*context_, *w, m, ++seed, worst);
                if (HasFatalFailure()) return;
            }
        }
    }
    std::printf("W8 and BF16, Gemma 4 shapes: max |gpu - twin| / tolerance = %.3e\n", worst.ratio);
}

// Dequantise + GEMM in slices of output rows: many slices and a ragged last one, at the Gemma 4
// K and at a small one; the whole matrix at once again afterwards.
TEST_F(CudaGemm, SlicedWeightsW4AndW8) {
    Worst worst;
    uint64_t seed = 3000;
    for (WeightMaker make : {WeightMaker{make_w4}, WeightMaker{make_w8}}) {
        const auto gemma = make(4196, 5376, ++seed);  // 1 MiB slices of 10752-byte rows: 65 x 64 rows + 36
        const auto odd = make(1000, 512, ++seed);     // 128-row slices: 7 x 128 rows + 104
        if (HasFatalFailure()) return;
        context_->set_weight_slice_bytes(size_t{1} << 20);
        run_and_check(*context_, *gemma, 100, ++seed, worst);
        if (HasFatalFailure()) return;
        context_->set_weight_slice_bytes(128 * 512 * 2);
        run_and_check(*context_, *odd, 13, ++seed, worst);
        if (HasFatalFailure()) return;
        context_->set_weight_slice_bytes(0);
        run_and_check(*context_, *odd, 13, ++seed, worst);
        if (HasFatalFailure()) return;
    }
    std::printf("sliced: max |gpu - twin| / tolerance = %.3e\n", worst.ratio);
}

// Every output checked. n = 33 and 7 make y's rows 4-byte but not 16-byte multiples.
TEST_F(CudaGemm, OddShapes) {
    Worst worst;
    uint64_t seed = 4000;
    const int64_t shapes[][3] = {{13, 96, 40}, {9, 64, 33}, {1, 32, 1}, {70, 160, 130}};  // m, k, n
    for (WeightMaker make : {WeightMaker{make_w4}, WeightMaker{make_w8}, WeightMaker{make_bf16}}) {
        for (const auto& shape : shapes) {
            const auto w = make(shape[2], shape[1], ++seed);
            if (HasFatalFailure()) return;
            run_and_check(*context_, *w, shape[0], ++seed, worst);
            if (HasFatalFailure()) return;
        }
    }
    const auto w = make_bf16(7, 40, ++seed);  // bf16 needs only k % 8 == 0
    run_and_check(*context_, *w, 11, ++seed, worst);
    std::printf("odd shapes: max |gpu - twin| / tolerance = %.3e\n", worst.ratio);
}

// The prepared GEMM captured into a CUDA graph and replayed gives the eager result.
TEST_F(CudaGemm, CapturedInAGraph) {
    const int64_t m = 40, n = 4096, k = 5376;
    const auto w = make_w4(n, k, 77);
    const std::vector<float> x = random_x(m, k, 78);
    DeviceBuffer dx, dy, scratch;
    upload(dx, x);
    CUDA_OK(dy.alloc(static_cast<size_t>(m * n) * 4));
    CUDA_OK(scratch.alloc(cuda::gemm_scratch_bytes(m, n, k)));
    CUDA_OK(cudaDeviceSynchronize());  // the uploads, on the legacy stream, which `stream` does not wait for
    cudaStream_t stream = nullptr;
    CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    ASSERT_TRUE(context_->prepare(m, n, k).ok());
    // One eager run first, as the engine warms up before capturing: loads the kernels' modules.
    ASSERT_TRUE(w->gemm(*context_, dx.as<float>(), m, scratch.as<void>(), dy.as<float>(), stream).ok());
    CUDA_OK(cudaMemsetAsync(dy.as<void>(), 0xff, static_cast<size_t>(m * n) * 4, stream));  // NaN poison
    CUDA_OK(cudaStreamSynchronize(stream));
    cudaGraph_t graph = nullptr;
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    const Status s = w->gemm(*context_, dx.as<float>(), m, scratch.as<void>(), dy.as<float>(), stream);
    CUDA_OK(cudaStreamEndCapture(stream, &graph));
    ASSERT_TRUE(s.ok()) << s.message();
    cudaGraphExec_t exec = nullptr;
    CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
    CUDA_OK(cudaGraphLaunch(exec, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
    Worst worst;
    check_output(*w, x, m, download<float>(dy, static_cast<size_t>(m * n)), worst, "graph replay");
    EXPECT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
    EXPECT_EQ(cudaGraphDestroy(graph), cudaSuccess);
    EXPECT_EQ(cudaStreamDestroy(stream), cudaSuccess);
}

// x already in bf16 at the scratch's start (the prefill FFN writes gelu(gate) * up there): the
// same bits as the fp32 x whose rounding it is, for W4 and W8, at a Gemma 4 down projection's
// K and a ragged small shape, whole and in weight slices.
TEST_F(CudaGemm, Bf16XInTheScratchEqualsFp32X) {
    uint64_t seed = 5000;
    for (WeightMaker make : {WeightMaker{make_w4}, WeightMaker{make_w8}}) {
        for (const auto& [m, n, k] : {std::array<int64_t, 3>{40, 512, 21504}, {13, 200, 96}}) {
            const auto w = make(n, k, ++seed);
            const std::vector<float> x = random_x(m, k, ++seed);
            for (const size_t slice_bytes : {size_t{0}, static_cast<size_t>(64 * k * 2)}) {
                context_->set_weight_slice_bytes(slice_bytes);
                DeviceBuffer dx, dx_bf16, dy, dy_bf16, scratch;
                upload(dx, x);
                CUDA_OK(dy.alloc(static_cast<size_t>(m * n) * 4));
                CUDA_OK(dy_bf16.alloc(static_cast<size_t>(m * n) * 4));
                CUDA_OK(scratch.alloc(cuda::gemm_scratch_bytes(*context_, m, n, k)));
                CUDA_OK(cudaMemset(dy_bf16.as<void>(), 0xff, static_cast<size_t>(m * n) * 4));
                kestrel::testing::wait_for_host_copies();
                ASSERT_TRUE(w->gemm(*context_, dx.as<float>(), m, scratch.as<void>(),
                                    dy.as<float>(), nullptr)
                                .ok());
                // Overwrite the x region with a fresh conversion, as the FFN would write it.
                ASSERT_TRUE(cuda::convert_f32_to_bf16(dx.as<float>(), m * k,
                                                      cuda::gemm_scratch_x(scratch.as<void>()),
                                                      nullptr)
                                .ok());
                const Status s =
                    w->format == "w4"
                        ? cuda::gemm_w4_bf16_x(*context_, m, w->w4.view, scratch.as<void>(),
                                               dy_bf16.as<float>(), nullptr)
                        : cuda::gemm_w8_bf16_x(
                              *context_, m,
                              cuda::W8DeviceView{w->qs.as<int8_t>(), w->scale_min.as<uint32_t>(), n,
                                                 k},
                              scratch.as<void>(), dy_bf16.as<float>(), nullptr);
                ASSERT_TRUE(s.ok()) << s.message();
                CUDA_OK(cudaDeviceSynchronize());
                const std::vector<float> a = download<float>(dy, static_cast<size_t>(m * n));
                const std::vector<float> b = download<float>(dy_bf16, static_cast<size_t>(m * n));
                ASSERT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0)
                    << w->format << " m " << m << " n " << n << " k " << k << " slices "
                    << slice_bytes;
            }
        }
    }
    context_->set_weight_slice_bytes(0);
}

// The backend's prefill GEMM scratch (a bf16 copy of the largest weight so far) grows in place:
// before any graph is captured the buffer it outgrows is freed (the first prefill chunk grows it
// from q | k | v to gate | up); after a capture the old one is kept, since the graph may use it.
TEST_F(CudaGemm, BackendScratchKeepsAnOutgrownBufferOnlyForCapturedGraphs) {
    Result<std::unique_ptr<Ops> > made = make_cuda_ops();
    ASSERT_TRUE(made.ok()) << made.status().message();
    auto* ops = dynamic_cast<cuda::CudaOps*>(made->get());
    ASSERT_NE(ops, nullptr);
    const int64_t rows = 16, in = 512;
    Result<Buffer> x = ops->allocate(static_cast<size_t>(rows * in) * 4);
    Result<Buffer> y = ops->allocate(static_cast<size_t>(rows * 4096) * 4);
    ASSERT_TRUE(x.ok() && y.ok());
    ASSERT_TRUE(ops->fill_zero(x->data(), x->bytes()).ok());
    const auto run = [&](int64_t out, uint64_t seed) {
        Result<Weight> w = ops->random_weight(WeightFormat::kW4, out, in, seed);
        ASSERT_TRUE(w.ok()) << w.status().message();
        ops->linear(static_cast<const float*>(x->data()), rows, *w, static_cast<float*>(y->data()));
        ASSERT_TRUE(ops->synchronize().ok());
        ASSERT_TRUE(ops->take_error().ok());
    };
    run(1024, 1);
    run(2048, 2);  // grows, nothing captured yet: freed
    EXPECT_EQ(ops->retired_bytes(), 0u);
    Result<std::unique_ptr<CapturedStep> > graph = ops->capture([] { return ok_status(); });
    ASSERT_TRUE(graph.ok()) << graph.status().message();
    run(4096, 3);  // grows after a capture: the 2048-row buffer (bf16 weight and x) is kept
    EXPECT_EQ(ops->retired_bytes(), cuda::gemm_scratch_bytes(rows, 2048, in));
}

TEST_F(CudaGemm, NaNActivationGivesNaNRow) {
    const int64_t m = 12, k = 512, n = 40;
    const auto w = make_w4(n, k, 9);
    std::vector<float> x = random_x(m, k, 10);
    x[static_cast<size_t>(2 * k + 77)] = std::numeric_limits<float>::quiet_NaN();
    DeviceBuffer dx, dy, scratch;
    upload(dx, x);
    CUDA_OK(dy.alloc(static_cast<size_t>(m * n) * 4));
    CUDA_OK(scratch.alloc(cuda::gemm_scratch_bytes(m, n, k)));
    CUDA_OK(cudaMemset(dy.as<void>(), 0, static_cast<size_t>(m * n) * 4));
    kestrel::testing::wait_for_host_copies();
    ASSERT_TRUE(w->gemm(*context_, dx.as<float>(), m, scratch.as<void>(), dy.as<float>(), nullptr).ok());
    const std::vector<float> y = download<float>(dy, static_cast<size_t>(m * n));
    for (int64_t r = 0; r < m; ++r) {
        for (int64_t j = 0; j < n; ++j) EXPECT_EQ(std::isnan(y[static_cast<size_t>(r * n + j)]), r == 2) << r << " " << j;
    }
}

TEST_F(CudaGemm, RejectsBadArguments) {
    const int64_t n = 8, k = 64;
    const W4Weights host = random_w4(n, k, 1);
    DeviceW4 w4;
    upload_w4(host, w4);
    DeviceBuffer x, y, scratch;
    CUDA_OK(x.alloc(16 * k * 4));
    CUDA_OK(y.alloc(16 * n * 4));
    CUDA_OK(scratch.alloc(cuda::gemm_scratch_bytes(16, n, k)));
    cuda::GemmContext& c = *context_;
    const cuda::W4DeviceView view = w4.view;
    const auto invalid = [](const Status& s) { return s.code() == StatusCode::kInvalidArgument; };
    EXPECT_TRUE(invalid(cuda::gemm_w4(c, x.as<float>(), 0, view, scratch.as<void>(), y.as<float>(), nullptr)));
    EXPECT_TRUE(invalid(cuda::gemm_w4(c, x.as<float>(), 4, view, nullptr, y.as<float>(), nullptr)));
    EXPECT_TRUE(invalid(cuda::gemm_w4(c, x.as<float>(), 4, view, scratch.as<void>(), y.as<float>() + 1, nullptr)));
    cuda::W4DeviceView bad = view;
    bad.k = 48;
    EXPECT_TRUE(invalid(cuda::gemm_w4(c, x.as<float>(), 4, bad, scratch.as<void>(), y.as<float>(), nullptr)));
    EXPECT_TRUE(invalid(cuda::dequantize_w4_to_bf16(view, 4, 5, scratch.as<uint16_t>(), nullptr)));
    bad = view;
    bad.group_scales = nullptr;
    EXPECT_TRUE(invalid(cuda::dequantize_w4_to_bf16(bad, 0, 4, scratch.as<uint16_t>(), nullptr)));
    bad = view;
    bad.super_scales = nullptr;
    EXPECT_TRUE(invalid(cuda::dequantize_w4_to_bf16(bad, 0, 4, scratch.as<uint16_t>(), nullptr)));
    bad.super_scales =
        reinterpret_cast<const uint32_t*>(reinterpret_cast<const uint8_t*>(view.super_scales) + 2);
    EXPECT_TRUE(invalid(cuda::dequantize_w4_to_bf16(bad, 0, 4, scratch.as<uint16_t>(), nullptr)));
    EXPECT_TRUE(invalid(cuda::gemm_bf16(c, x.as<float>(), 4, scratch.as<uint16_t>(), n, 12, scratch.as<void>(),
                                        y.as<float>(), nullptr)));
    EXPECT_TRUE(invalid(cuda::matmul_bf16(c, scratch.as<uint16_t>(), 4, scratch.as<uint16_t>(), n, 32, y.as<float>(),
                                          n - 1, nullptr)));
    EXPECT_TRUE(invalid(cuda::convert_f32_to_bf16(nullptr, 5, scratch.as<uint16_t>(), nullptr)));
    EXPECT_TRUE(invalid(c.prepare(0, n, k)));
}

#endif  // KESTREL_HAS_CUDA

}  // namespace
}  // namespace kestrel
