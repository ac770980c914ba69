// The fused block-end kernels (src/ops/cuda/fused_ffn.h) against the launch pairs they
// replace, and against those pairs' CPU twins, at the Gemma 4 31B shapes (ffn 21504, d_model
// 5376; 1, 3 and 17 rows), Gemma 3 270M (ffn 2048, d_model 640) and odd ones (dim 96 x 7 rows,
// unaligned pointers, the 32- / 256- / 1024-thread norm rows), with NaN, infinite and all-zero
// rows. Skips without a GPU. With u = 2^-24 (half an fp32 ulp, relative):
//   gelu_tanh_and_mul_quantize_q8: all 48 bytes of every Q8 block equal to gelu_tanh_and_mul then
//     quantize_q8 on the GPU (outputs poisoned with 0xff first). Against the CPU (gelu_tanh_and_mul
//     then quantize_q8_row): a block is NaN (d NaN, q 0) exactly where the CPU's is; otherwise,
//     with e_i = 8u (|0.5 gate up| + |cpu|) the gelu tolerance of cuda_small_ops_test.cpp, |d -
//     d_cpu| <= max_i e_i / 127 + 2u d_cpu, |q - q_cpu| <= 1 and |d q - d_cpu q_cpu| <= (d + d_cpu)
//     / 2 + e_i (each side within half a step of its own input).
//   rms_norm_add_scale: bit for bit rms_norm_add then scale on the GPU (in place: the residual is
//     input and output, so instead of poison, NaN guards either side must stay untouched and rows
//     with finite inputs must come out NaN-free). Against the CPU: rms_norm_add's tolerance
//     (32u |normed| + 2u |residual + normed|), times |scale|, plus 2u |expected| for the scaling's
//     rounding; NaN exactly where the CPU has NaN.
//   rms_norm_add_scale_norm_quantize_q8: bit for bit rms_norm_add_scale then rms_norm_quantize_q8
//     (residual and Q8 bytes).
#include <gtest/gtest.h>

#if KESTREL_HAS_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/half.h"
#include "ops/cuda/fused_ffn.h"
#include "ops/cuda/gemm_prefill.h"  // convert_f32_to_bf16
#include "ops/cuda/gemv_w4a8.h"
#include "ops/cuda/small_ops.h"
#include "ops/ops.h"
#include "ops/weight_format.h"

#include "cuda_test_support.h"
#endif

namespace kestrel {
namespace {

#if !KESTREL_HAS_CUDA

TEST(CudaFusedFfn, NeedsTheCudaBuild) { GTEST_SKIP() << "built without CUDA (KESTREL_HAS_CUDA=0)"; }

#else

using kestrel::testing::cuda_device_present;
using kestrel::testing::DeviceBuffer;
using kestrel::testing::download;
using kestrel::testing::random_vector;
using kestrel::testing::upload;

constexpr double kU = 0x1.0p-24;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// Norm weights around 1, as trained ones are.
std::vector<float> random_weight(size_t n, uint32_t seed) {
    std::vector<float> w = random_vector(n, seed, 0.3f);
    for (float& v : w) v = 1.0f + std::clamp(v, -0.9f, 3.0f);
    return w;
}

// Equal bits, or both NaN (a NaN's payload is not part of any op's contract).
bool same_value(float a, float b) {
    if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
    return std::memcmp(&a, &b, sizeof(float)) == 0;
}

bool all_zero_codes(const Q8Block& b) {
    return std::all_of(std::begin(b.qs), std::end(b.qs), [](int8_t q) { return q == 0; }) && b.sum == 0;
}

class CudaFusedFfn : public ::testing::Test {
protected:
    void SetUp() override {
        if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
        cpu_ = make_cpu_ops(1);
    }
    std::unique_ptr<Ops> cpu_;
};

struct Case {
    int64_t rows;
    int64_t dim;
    int64_t offset;  // floats: 1 puts every input (and the norm's residual) off 16-byte alignment
    const char* what;
};

// Rows with special values, where the case has them: row 1 a NaN and infinities, row 2 all zero,
// row 3 one infinity (the norm: sum of squares inf, so that element NaN and the others just scaled).
void add_special_rows(std::vector<float>& v, int64_t rows, int64_t dim, int64_t offset) {
    if (rows >= 2) {
        const size_t row1 = static_cast<size_t>(offset + dim);
        v[row1 + 5] = kNaN;
        v[row1 + std::min<int64_t>(dim - 1, 40)] = kInf;
        v[row1 + std::min<int64_t>(dim - 1, 70)] = -kInf;
    }
    if (rows >= 3) {
        const auto row2 = v.begin() + static_cast<long>(offset + 2 * dim);
        std::fill(row2, row2 + static_cast<long>(dim), 0.0f);
    }
    if (rows >= 4) v[static_cast<size_t>(offset + 3 * dim + std::min<int64_t>(dim - 1, 9))] = kInf;
}

// ---- gelu_tanh_and_mul_quantize_q8 -------------------------------------------------------------

const Case kGeluCases[] = {
    {1, 21504, 0, "Gemma 4 ffn, decode"}, {3, 21504, 0, "Gemma 4 ffn, 3 rows"}, {17, 21504, 0, "Gemma 4 ffn, 17 rows"},
    {1, 2048, 0, "Gemma 3 ffn, decode"},  {3, 2048, 0, "Gemma 3 ffn, 3 rows"},  {7, 96, 0, "odd: dim 96 x 7"},
    {5, 2048, 1, "unaligned gate/up"},    {1, 32, 0, "one block"},
};

TEST_F(CudaFusedFfn, GeluQuantizeIsGeluThenQuantize) {
    uint32_t seed = 1;
    double worst_d = 0.0;
    int64_t blocks_off_by_one = 0;
    for (const Case& c : kGeluCases) {
        const size_t n = static_cast<size_t>(c.rows * c.dim);
        const size_t total = n + static_cast<size_t>(c.offset);
        const int64_t groups = c.dim / 32;
        const size_t n_blocks = static_cast<size_t>(c.rows * groups);
        std::vector<float> gate = random_vector(total, ++seed, 2.0f);
        std::vector<float> up = random_vector(total, ++seed, 2.0f);
        add_special_rows(gate, c.rows, c.dim, c.offset);
        if (c.rows >= 2) up[static_cast<size_t>(c.offset + c.dim + c.dim - 1)] = kInf;  // inf * gelu: NaN or inf
        // A gate whose cube overflows: tanh = 1, gelu = gate, the block stays finite with a huge d.
        gate[static_cast<size_t>(c.offset) + std::min<size_t>(n - 1, 33)] = 3e13f;
        if (c.rows >= 3) std::fill(up.begin() + c.offset + 2 * c.dim, up.begin() + c.offset + 3 * c.dim, 0.0f);

        DeviceBuffer dgate, dup, dact, dfused, dsplit;
        upload(dgate, gate);
        upload(dup, up);
        const size_t block_bytes = (n_blocks + 1) * sizeof(Q8Block);  // + 1: a guard block after the end
        CUDA_OK(dact.alloc(n * 4));
        CUDA_OK(dfused.alloc(block_bytes));
        CUDA_OK(dsplit.alloc(block_bytes));
        CUDA_OK(cudaMemset(dact.as<void>(), 0xff, n * 4));
        CUDA_OK(cudaMemset(dfused.as<void>(), 0xff, block_bytes));
        CUDA_OK(cudaMemset(dsplit.as<void>(), 0xff, block_bytes));
        kestrel::testing::wait_for_host_copies();
        const float* pgate = dgate.as<float>() + c.offset;
        const float* pup = dup.as<float>() + c.offset;

        STATUS_OK(cuda::gelu_tanh_and_mul_quantize_q8(pgate, pup, c.rows, c.dim, dfused.as<Q8Block>(), nullptr));
        STATUS_OK(cuda::gelu_tanh_and_mul(pgate, pup, static_cast<int64_t>(n), dact.as<float>(), nullptr));
        STATUS_OK(cuda::quantize_q8(dact.as<float>(), c.rows, c.dim, c.dim, dsplit.as<Q8Block>(), nullptr));
        CUDA_OK(cudaDeviceSynchronize());
        const std::vector<Q8Block> fused = download(dfused.as<Q8Block>(), n_blocks + 1);
        const std::vector<Q8Block> split = download(dsplit.as<Q8Block>(), n_blocks);

        // Against the GPU pair: every byte (NaN blocks carry the one canonical NaN both write).
        for (size_t b = 0; b < n_blocks; ++b) {
            ASSERT_EQ(std::memcmp(&fused[b], &split[b], sizeof(Q8Block)), 0)
                << c.what << ": block " << b << " d " << fused[b].d << " vs " << split[b].d << ", sum "
                << fused[b].sum << " vs " << split[b].sum;
        }
        const std::vector<unsigned char> poison(sizeof(Q8Block), 0xff);
        ASSERT_EQ(std::memcmp(&fused[n_blocks], poison.data(), sizeof(Q8Block)), 0) << c.what << ": wrote past the end";

        // Against the CPU twins.
        std::vector<float> act(n);
        cpu_->gelu_tanh_and_mul(gate.data() + c.offset, up.data() + c.offset, static_cast<int64_t>(n), act.data());
        std::vector<Q8Block> expected(n_blocks);
        for (int64_t r = 0; r < c.rows; ++r) {
            quantize_q8_row(act.data() + r * c.dim, c.dim, expected.data() + r * groups);
        }
        for (size_t b = 0; b < n_blocks; ++b) {
            const Q8Block& got = fused[b];
            const Q8Block& want = expected[b];
            const std::string where = std::string(c.what) + ": block " + std::to_string(b);
            if (std::isnan(want.d)) {
                ASSERT_TRUE(std::isnan(got.d) && all_zero_codes(got)) << where << " should be NaN";
                continue;
            }
            ASSERT_FALSE(std::isnan(got.d)) << where << ": NaN where the CPU has d " << want.d;
            std::vector<double> element_tol(32);
            double max_tol = 0.0;
            for (int i = 0; i < 32; ++i) {
                const size_t k = static_cast<size_t>(c.offset) + b * 32 + static_cast<size_t>(i);
                const double g = gate[k], u = up[k];
                element_tol[static_cast<size_t>(i)] = 8 * kU * (std::fabs(0.5 * g * u) + std::fabs(act[b * 32 + i]));
                max_tol = std::max(max_tol, element_tol[static_cast<size_t>(i)]);
            }
            const double d_err = std::fabs(static_cast<double>(got.d) - want.d);
            ASSERT_LE(d_err, max_tol / 127 + 2 * kU * want.d) << where << ": d " << got.d << " cpu " << want.d;
            if (want.d > 0) worst_d = std::max(worst_d, d_err / (kU * want.d));
            bool off_by_one = false;
            int sum = 0;
            for (int i = 0; i < 32; ++i) {
                const int q = got.qs[i], q_cpu = want.qs[i];
                sum += q;
                ASSERT_LE(std::abs(q - q_cpu), 1) << where << " element " << i << ": q " << q << " cpu " << q_cpu;
                off_by_one |= q != q_cpu;
                const double err = std::fabs(static_cast<double>(got.d) * q - static_cast<double>(want.d) * q_cpu);
                ASSERT_LE(err, 0.5 * (static_cast<double>(got.d) + want.d) + element_tol[static_cast<size_t>(i)])
                    << where << " element " << i << ": " << got.d << " x " << q << " vs cpu " << want.d << " x "
                    << q_cpu;
            }
            ASSERT_EQ(got.sum, sum) << where;
            blocks_off_by_one += off_by_one;
        }
    }
    std::printf("gelu_tanh_and_mul_quantize_q8 vs CPU: max |d - d_cpu| = %.2f u d_cpu, %lld blocks with a code "
                "off by one\n",
                worst_d, static_cast<long long>(blocks_off_by_one));
}

// ---- gelu_tanh_and_mul_bf16
// ------------------------------------------------------------------------

// The prefill FFN's GEMM input: bit for bit the GPU's gelu_tanh_and_mul then convert_f32_to_bf16,
// and the CPU twin's gelu_tanh_and_mul then fp32_to_bf16 within the gelu's tolerance (the GPU's
// tanhf is not the host's std::tanh) and one bf16 rounding; nothing written past the end.
TEST_F(CudaFusedFfn, GeluBf16IsGeluThenBf16) {
    uint32_t seed = 100;
    for (const Case& c : kGeluCases) {
        const size_t n = static_cast<size_t>(c.rows * c.dim);
        const size_t total = n + static_cast<size_t>(c.offset);
        std::vector<float> gate = random_vector(total, ++seed, 2.0f);
        std::vector<float> up = random_vector(total, ++seed, 2.0f);
        add_special_rows(gate, c.rows, c.dim, c.offset);
        gate[static_cast<size_t>(c.offset) + std::min<size_t>(n - 1, 33)] = 3e13f;
        DeviceBuffer dgate, dup, dact, dfused, dsplit;
        upload(dgate, gate);
        upload(dup, up);
        CUDA_OK(dact.alloc(n * 4));
        CUDA_OK(dfused.alloc((n + 8) * 2));  // + 8: a guard after the end
        CUDA_OK(dsplit.alloc(n * 2));
        CUDA_OK(cudaMemset(dfused.as<void>(), 0xff, (n + 8) * 2));
        CUDA_OK(cudaMemset(dsplit.as<void>(), 0xff, n * 2));
        kestrel::testing::wait_for_host_copies();
        const float* pgate = dgate.as<float>() + c.offset;
        const float* pup = dup.as<float>() + c.offset;
        STATUS_OK(cuda::gelu_tanh_and_mul_bf16(pgate, pup, static_cast<int64_t>(n),
                                               dfused.as<uint16_t>(), nullptr));
        STATUS_OK(cuda::gelu_tanh_and_mul(pgate, pup, static_cast<int64_t>(n), dact.as<float>(),
                                          nullptr));
        STATUS_OK(cuda::convert_f32_to_bf16(dact.as<float>(), static_cast<int64_t>(n),
                                            dsplit.as<uint16_t>(), nullptr));
        CUDA_OK(cudaDeviceSynchronize());
        const std::vector<uint16_t> fused = download(dfused.as<uint16_t>(), n + 8);
        const std::vector<uint16_t> split = download(dsplit.as<uint16_t>(), n);
        for (size_t i = 0; i < n; ++i) {
            ASSERT_EQ(fused[i], split[i]) << c.what << ": element " << i;
        }
        for (size_t i = n; i < n + 8; ++i)
            ASSERT_EQ(fused[i], 0xffff) << c.what << ": wrote past the end";

        std::vector<float> act(n);
        cpu_->gelu_tanh_and_mul(gate.data() + c.offset, up.data() + c.offset,
                                static_cast<int64_t>(n), act.data());
        for (size_t i = 0; i < n; ++i) {
            const float got = bf16_to_fp32(fused[i]);
            const float want = act[i];
            if (std::isnan(want) || std::isinf(want)) {
                ASSERT_TRUE(std::isnan(want) ? std::isnan(got) : got == want)
                    << c.what << ": element " << i << " got " << got << " cpu " << want;
                continue;
            }
            const size_t k = static_cast<size_t>(c.offset) + i;
            const double tol = 8 * kU * (std::fabs(0.5 * gate[k] * up[k]) + std::fabs(want)) +
                               std::fabs(static_cast<double>(want)) / 256.0;
            ASSERT_LE(std::fabs(static_cast<double>(got) - want), tol)
                << c.what << ": element " << i << " got " << got << " cpu " << want;
        }
    }
    EXPECT_EQ(cuda::gelu_tanh_and_mul_bf16(nullptr, nullptr, 6, nullptr, nullptr).code(),
              StatusCode::kInvalidArgument);  // not a multiple of 4
}

// ---- rms_norm_add_scale ------------------------------------------------------------------------

const Case kNormCases[] = {
    {1, 5376, 0, "Gemma 4 d_model, decode"}, {3, 5376, 0, "Gemma 4 d_model, 3 rows"},
    {17, 5376, 0, "Gemma 4 d_model, 17 rows"}, {1, 640, 0, "Gemma 3 d_model, decode"},
    {3, 640, 0, "Gemma 3 d_model, 3 rows"},    {7, 96, 0, "odd: dim 96 x 7"},
    {3, 96, 1, "odd: unaligned"},              {3, 7, 0, "odd: dim 7 (no float4)"},
    {4, 2000, 0, "odd: dim 2000"},             {2, 21504, 0, "1024-thread rows"},
};

TEST_F(CudaFusedFfn, RmsNormAddScaleIsRmsNormAddThenScale) {
    constexpr int64_t kGuard = 64;  // floats either side of the residual, NaN, that must stay NaN
    uint32_t seed = 100;
    double worst = 0.0;
    for (const Case& c : kNormCases) {
        for (const bool weighted : {true, false}) {
            const float scale = weighted ? 0.8671875f : 0.37354f;  // Gemma 4 layer_scalar-like values
            const size_t n = static_cast<size_t>(c.rows * c.dim);
            const size_t total = n + static_cast<size_t>(c.offset);
            std::vector<float> x = random_vector(total, ++seed);
            add_special_rows(x, c.rows, c.dim, c.offset);
            std::vector<float> residual = random_vector(total, ++seed, 3.0f);
            residual[static_cast<size_t>(c.offset) + std::min<size_t>(n - 1, 3)] = kInf;
            const std::vector<float> w = random_weight(static_cast<size_t>(c.dim), ++seed);
            const float* weight = weighted ? w.data() : nullptr;
            const std::string what = std::string(c.what) + (weighted ? "" : " (no weight)");

            std::vector<float> guarded(static_cast<size_t>(kGuard), kNaN);
            guarded.insert(guarded.end(), residual.begin(), residual.end());
            guarded.insert(guarded.end(), static_cast<size_t>(kGuard), kNaN);
            DeviceBuffer dx, dw, dfused, dsplit;
            upload(dx, x);
            upload(dw, w);
            upload(dfused, guarded);
            upload(dsplit, guarded);
            const float* px = dx.as<float>() + c.offset;
            const float* pw = weighted ? dw.as<float>() : nullptr;
            float* fused_residual = dfused.as<float>() + kGuard + c.offset;
            float* split_residual = dsplit.as<float>() + kGuard + c.offset;

            STATUS_OK(cuda::rms_norm_add_scale(px, pw, c.rows, c.dim, 1e-6f, scale, fused_residual, nullptr));
            STATUS_OK(cuda::rms_norm_add(px, pw, c.rows, c.dim, 1e-6f, split_residual, nullptr));
            STATUS_OK(cuda::scale(split_residual, static_cast<int64_t>(n), scale, nullptr));
            CUDA_OK(cudaDeviceSynchronize());
            const std::vector<float> fused_all = download(dfused.as<float>(), guarded.size());
            const std::vector<float> got(fused_all.begin() + kGuard + c.offset, fused_all.end() - kGuard);
            const std::vector<float> split = download(split_residual, n);
            for (int64_t i = 0; i < kGuard; ++i) {
                ASSERT_TRUE(std::isnan(fused_all[static_cast<size_t>(i)])) << what << ": wrote before the start";
                ASSERT_TRUE(std::isnan(fused_all[fused_all.size() - 1 - static_cast<size_t>(i)]))
                    << what << ": wrote past the end";
            }
            for (size_t i = 0; i < n; ++i) {
                ASSERT_TRUE(same_value(got[i], split[i]))
                    << what << " element " << i << ": fused " << got[i] << " pair " << split[i];
            }

            // Against the CPU twins: rms_norm_add then scale.
            std::vector<float> normed(n), pre(residual.begin() + c.offset, residual.end());
            cpu_->rms_norm(x.data() + c.offset, weight, c.rows, c.dim, 1e-6f, normed.data());
            cpu_->rms_norm_add(x.data() + c.offset, weight, c.rows, c.dim, 1e-6f, pre.data());
            std::vector<float> expected = pre;
            cpu_->scale(expected.data(), static_cast<int64_t>(n), scale);
            for (size_t i = 0; i < n; ++i) {
                if (std::isnan(expected[i])) {
                    ASSERT_TRUE(std::isnan(got[i])) << what << " element " << i << ": " << got[i] << ", cpu NaN";
                    continue;
                }
                ASSERT_FALSE(std::isnan(got[i])) << what << " element " << i << ": NaN, cpu " << expected[i];
                if (std::isinf(expected[i])) {
                    ASSERT_EQ(got[i], expected[i]) << what << " element " << i;
                    continue;
                }
                const double err = std::fabs(static_cast<double>(got[i]) - expected[i]);
                const double tol = std::fabs(scale) * (32 * kU * std::fabs(normed[i]) + 2 * kU * std::fabs(pre[i])) +
                                   2 * kU * std::fabs(expected[i]);
                ASSERT_LE(err, tol) << what << " element " << i << ": gpu " << got[i] << " cpu " << expected[i];
                if (tol > 0) worst = std::max(worst, err / tol);
            }
        }
    }
    std::printf("rms_norm_add_scale vs CPU: max error = %.3f of the tolerance\n", worst);
}

// The block seam: rms_norm_add_scale, then the next pre-norm's Q8 blocks from the registers. Bit
// for bit the launches it replaces (rms_norm_add_scale, then rms_norm_quantize_q8 reading the
// residual back), both outputs: the residual and all 48 bytes of every Q8 block (poisoned first),
// with the residual read after the wait and before it (ResidualRead: the decode step's mode).
// Each of those launches is held to its CPU twin above and in cuda_small_ops_test.cpp.
TEST_F(CudaFusedFfn, RmsNormAddScaleNormQuantizeIsTheThreeLaunches) {
    uint32_t seed = 500;
    int checked = 0;
    for (const Case& c : kNormCases) {
        if (c.dim % 32 != 0) continue;  // the Q8 blocks need whole groups of 32
        for (const bool weighted : {true, false})
            for (const cuda::ResidualRead read :
                 {cuda::ResidualRead::kAfterWait, cuda::ResidualRead::kBeforeWait}) {
                const float scale = weighted ? 0.8671875f : 1.0f;
                const size_t n = static_cast<size_t>(c.rows * c.dim);
                const size_t total = n + static_cast<size_t>(c.offset);
                std::vector<float> x = random_vector(total, ++seed);
                add_special_rows(x, c.rows, c.dim, c.offset);
                const std::vector<float> residual = random_vector(total, ++seed, 3.0f);
                const std::vector<float> w = random_weight(static_cast<size_t>(c.dim), ++seed);
                const std::vector<float> next_w = random_weight(static_cast<size_t>(c.dim), ++seed);
                const std::string what =
                    std::string(c.what) + (weighted ? "" : " (no weight, scale 1)") +
                    (read == cuda::ResidualRead::kBeforeWait ? ", residual read before the wait"
                                                             : "");
                const size_t blocks = n / 32;
                const std::vector<uint8_t> poison(blocks * sizeof(Q8Block), 0xff);
                DeviceBuffer dx, dw, dnext, dfused, dsplit, dq8_fused, dq8_split;
                upload(dx, x);
                upload(dw, w);
                upload(dnext, next_w);
                upload(dfused, residual);
                upload(dsplit, residual);
                upload(dq8_fused, poison);
                upload(dq8_split, poison);
                const float* px = dx.as<float>() + c.offset;
                const float* pw = weighted ? dw.as<float>() : nullptr;
                const float* pnext = weighted ? dnext.as<float>() : nullptr;
                float* fused_residual = dfused.as<float>() + c.offset;
                float* split_residual = dsplit.as<float>() + c.offset;

                STATUS_OK(cuda::rms_norm_add_scale_norm_quantize_q8(
                    px, pw, c.rows, c.dim, 1e-6f, scale, fused_residual, pnext,
                    dq8_fused.as<Q8Block>(), read, nullptr));
                STATUS_OK(cuda::rms_norm_add_scale(px, pw, c.rows, c.dim, 1e-6f, scale,
                                                   split_residual, nullptr));
                STATUS_OK(cuda::rms_norm_quantize_q8(split_residual, pnext, c.rows, c.dim, 1e-6f,
                                                     dq8_split.as<Q8Block>(), nullptr));
                CUDA_OK(cudaDeviceSynchronize());
                const std::vector<float> got = download(fused_residual, n);
                const std::vector<float> want = download(split_residual, n);
                for (size_t i = 0; i < n; ++i) {
                    ASSERT_TRUE(same_value(got[i], want[i]))
                        << what << " residual " << i << ": fused " << got[i] << " launches "
                        << want[i];
                }
                const std::vector<uint8_t> q8_got =
                    download(dq8_fused.as<uint8_t>(), poison.size());
                const std::vector<uint8_t> q8_want =
                    download(dq8_split.as<uint8_t>(), poison.size());
                for (size_t b = 0; b < blocks; ++b) {
                    ASSERT_EQ(std::memcmp(q8_got.data() + b * sizeof(Q8Block),
                                          q8_want.data() + b * sizeof(Q8Block), sizeof(Q8Block)),
                              0)
                        << what << ": Q8 block " << b << " differs";
                }
                ++checked;
            }
    }
    EXPECT_GE(checked, 24);
}

// Decode-step cost (T = 1, Gemma 4): each side captured 100 times into a CUDA graph, so the times
// are what the engine's graph sees, launch gaps included. Printed, not asserted.
TEST_F(CudaFusedFfn, DecodeTimings) {
    constexpr int64_t kFfn = 21504, kModel = 5376;
    constexpr int kReps = 100;
    DeviceBuffer dgate, dup, dact, dq8, dx, dw, dres;
    upload(dgate, random_vector(kFfn, 1));
    upload(dup, random_vector(kFfn, 2));
    upload(dx, random_vector(kModel, 3));
    upload(dw, random_weight(kModel, 4));
    upload(dres, random_vector(kModel, 5));
    CUDA_OK(dact.alloc(kFfn * 4));
    CUDA_OK(dq8.alloc(kFfn / 32 * sizeof(Q8Block)));
    cudaStream_t stream = nullptr;
    CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    const float* gate = dgate.as<float>();
    const float* up = dup.as<float>();
    Q8Block* q8 = dq8.as<Q8Block>();
    float* res = dres.as<float>();
    // One capture of kReps calls of `body`, replayed once to warm up and once timed: us per call.
    auto time_graph = [&](auto body) -> double {
        cudaGraph_t graph = nullptr;
        cudaGraphExec_t exec = nullptr;
        cudaEvent_t start = nullptr, stop = nullptr;
        float ms = -1.0f;
        bool ok = cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess;
        for (int i = 0; ok && i < kReps; ++i) ok = body().ok();
        ok = cudaStreamEndCapture(stream, &graph) == cudaSuccess && ok;
        ok = ok && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess;
        ok = ok && cudaEventCreate(&start) == cudaSuccess && cudaEventCreate(&stop) == cudaSuccess;
        ok = ok && cudaGraphLaunch(exec, stream) == cudaSuccess && cudaEventRecord(start, stream) == cudaSuccess &&
             cudaGraphLaunch(exec, stream) == cudaSuccess && cudaEventRecord(stop, stream) == cudaSuccess &&
             cudaEventSynchronize(stop) == cudaSuccess && cudaEventElapsedTime(&ms, start, stop) == cudaSuccess;
        if (start != nullptr) (void)cudaEventDestroy(start);
        if (stop != nullptr) (void)cudaEventDestroy(stop);
        if (exec != nullptr) (void)cudaGraphExecDestroy(exec);
        if (graph != nullptr) (void)cudaGraphDestroy(graph);
        return ok ? 1000.0 * ms / kReps : -1.0;
    };
    const double gelu_pair = time_graph([&] {
        const Status s = cuda::gelu_tanh_and_mul(gate, up, kFfn, dact.as<float>(), stream);
        return s.ok() ? cuda::quantize_q8(dact.as<float>(), 1, kFfn, kFfn, q8, stream) : s;
    });
    const double gelu_fused =
        time_graph([&] { return cuda::gelu_tanh_and_mul_quantize_q8(gate, up, 1, kFfn, q8, stream); });
    const double norm_pair = time_graph([&] {
        const Status s = cuda::rms_norm_add(dx.as<float>(), dw.as<float>(), 1, kModel, 1e-6f, res, stream);
        return s.ok() ? cuda::scale(res, kModel, 0.999f, stream) : s;
    });
    const double norm_fused = time_graph(
        [&] { return cuda::rms_norm_add_scale(dx.as<float>(), dw.as<float>(), 1, kModel, 1e-6f, 0.999f, res, stream); });
    CUDA_OK(cudaStreamDestroy(stream));
    ASSERT_GT(gelu_pair, 0.0);
    ASSERT_GT(gelu_fused, 0.0);
    ASSERT_GT(norm_pair, 0.0);
    ASSERT_GT(norm_fused, 0.0);
    std::printf("T=1 in a CUDA graph, us per call: gelu+quantize %.2f pair -> %.2f fused (ffn %lld); "
                "rms_norm_add+scale %.2f pair -> %.2f fused (d_model %lld)\n",
                gelu_pair, gelu_fused, static_cast<long long>(kFfn), norm_pair, norm_fused,
                static_cast<long long>(kModel));
}

// Host-side argument checks: no launch happens, so these run without a GPU too.
TEST(CudaFusedFfnArguments, RejectsBadShapesAndPointers) {
    alignas(16) static float data[64] = {};
    alignas(16) static Q8Block blocks[4] = {};
    EXPECT_FALSE(cuda::gelu_tanh_and_mul_quantize_q8(data, data, 1, 48, blocks, nullptr).ok());  // dim % 32
    EXPECT_FALSE(cuda::gelu_tanh_and_mul_quantize_q8(data, data, -1, 32, blocks, nullptr).ok());
    EXPECT_FALSE(cuda::gelu_tanh_and_mul_quantize_q8(nullptr, data, 1, 32, blocks, nullptr).ok());
    EXPECT_FALSE(cuda::gelu_tanh_and_mul_quantize_q8(data, data, 1, 32,
                                                     reinterpret_cast<Q8Block*>(data + 1), nullptr).ok());
    EXPECT_TRUE(cuda::gelu_tanh_and_mul_quantize_q8(data, data, 0, 32, blocks, nullptr).ok());  // nothing to do
    EXPECT_FALSE(cuda::rms_norm_add_scale(data, data, 1, 0, 1e-6f, 1.0f, data, nullptr).ok());
    EXPECT_FALSE(cuda::rms_norm_add_scale(data, data, 1, cuda::kMaxNormDim + 1, 1e-6f, 1.0f, data, nullptr).ok());
    EXPECT_FALSE(cuda::rms_norm_add_scale(nullptr, data, 1, 64, 1e-6f, 1.0f, data, nullptr).ok());
    EXPECT_FALSE(cuda::rms_norm_add_scale(data, data, 1, 64, 1e-6f, 1.0f, nullptr, nullptr).ok());
    EXPECT_TRUE(cuda::rms_norm_add_scale(data, data, 0, 64, 1e-6f, 1.0f, data, nullptr).ok());
    EXPECT_FALSE(cuda::rms_norm_add_scale_norm_quantize_q8(data, data, 1, 48, 1e-6f, 1.0f, data,
                                                           data, blocks,
                                                           cuda::ResidualRead::kAfterWait, nullptr)
                     .ok());  // dim % 32
    EXPECT_FALSE(cuda::rms_norm_add_scale_norm_quantize_q8(data, data, 1, 32, 1e-6f, 1.0f, data,
                                                           data, nullptr,
                                                           cuda::ResidualRead::kAfterWait, nullptr)
                     .ok());
    EXPECT_FALSE(cuda::rms_norm_add_scale_norm_quantize_q8(
                     data, data, 1, 32, 1e-6f, 1.0f, data, data,
                     reinterpret_cast<Q8Block*>(data + 1), cuda::ResidualRead::kAfterWait, nullptr)
                     .ok());
}

#endif  // KESTREL_HAS_CUDA

}  // namespace
}  // namespace kestrel
