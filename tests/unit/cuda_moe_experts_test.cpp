// The routed-experts kernels (src/ops/cuda/moe_experts.cu) against their CPU twin, composed here
// from the engine's twins: x -> quantize_q8_row; gate and up rows by matvec_w4a8 / matvec_w8a8 on
// row slices of the gate_up stack; act = cpu::silu_and_mul (ops/cpu, the fp32 CPU backend's own);
// act -> quantize_q8_row; down rows by matvec_w4a8 / matvec_w8a8 on slices of the down stack;
// out = the weighted sum over j in j order.
//
// Three checks per call, each with a bound rather than a magic tolerance (eps = 2^-24):
//   act: the GPU's act Q8 blocks (the start of scratch, moe_experts.h) against the twin's act.
//     The GPU's gate and up differ from the twin's by fp32 accumulation order, at most
//     c_d eps |terms| (c_d = groups + groups / 16 + 40, the GEMV tests' bound), which moves act by
//     at most D = 1.1 dg (|u| + du) + |silu(g)| du + 2^-20 |act| (|silu'| <= 1.1; the last term
//     for silu's and the product's roundings), so each dequantised d q is within d / 2 + D of the
//     twin's act, and d within max D / 127 of the twin's d. Quantisation flips at a rounding
//     boundary are allowed by that; they must stay rare (<= 1% of the values).
//   down: out against the twin's down stage and weighted sum run on the GPU's own act blocks,
//     to c_f eps sum_j |w_j| |terms_j| (c_f = groups + groups / 16 + 40 + k + 4: the dots' order
//     and the k products and sums).
//   end to end (every row at small shapes, a sample at the real ones): out against the twin
//     alone, within the down bound plus, per slot, sum_i |W_down[r, i]| |dq_gpu,i - dq_twin,i|,
//     the effect of the act blocks' flips (the W4A8 / W8A8 dot is exactly sum_i W_i (d q_i)).
// Outputs and scratch are poisoned with NaN first; every comparison fails on NaN. An unknown
// expert id must give its row NaN and leave the other rows alone. Skips without a GPU.
#include <gtest/gtest.h>

#if KESTREL_HAS_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "ops/cpu/cpu_ops.h"
#include "ops/cuda/gemv_w4a8.h"
#include "ops/cuda/moe_experts.h"
#include "ops/weight_format.h"

#include "cuda_moe_test_support.h"
#include "cuda_test_support.h"
#endif

namespace kestrel {
namespace {

#if !KESTREL_HAS_CUDA

TEST(CudaMoeExperts, NeedsTheCudaBuild) {
    GTEST_SKIP() << "built without CUDA (KESTREL_HAS_CUDA=0)";
}

#else

using namespace kestrel::testing::moe;
using kestrel::testing::DeviceBuffer;
using kestrel::testing::download;

constexpr double kEps = 1.0 / (1 << 24);

// ---- the GPU side --------------------------------------------------------------------------

struct GpuResult {
    std::vector<float> out;    // [rows, dim]
    std::vector<Q8Block> act;  // [rows, k, ffn / 32], the start of scratch
};

// base (optional): out's values before the call, which then accumulates into them.
void run_gpu(const Layer& layer, const std::vector<float>& x, int64_t rows, const Routing& routing,
             int64_t k, GpuResult& result, const std::vector<float>* base = nullptr) {
    DeviceInputs in;
    DeviceBuffer dscratch, dout;
    upload_inputs(x, routing, in);
    const size_t scratch_bytes = cuda::moe_experts_scratch_bytes(rows, k, layer.dim, layer.ffn);
    ASSERT_EQ(scratch_bytes % 256, 0u);
    ASSERT_GE(scratch_bytes, static_cast<size_t>(rows * k * (layer.ffn / 32)) * sizeof(Q8Block));
    CUDA_OK(dscratch.alloc(scratch_bytes));
    CUDA_OK(cudaMemset(dscratch.as<void>(), 0xff, scratch_bytes));  // NaN scales, -1 codes
    const size_t out_count = static_cast<size_t>(rows * layer.dim);
    kestrel::testing::wait_for_host_copies();
    CUDA_OK(dout.alloc(out_count * 4));
    if (base != nullptr) {
        ASSERT_EQ(base->size(), out_count);
        testing::copy_to_device(dout.as<float>(), *base);
    } else {
        CUDA_OK(cudaMemset(dout.as<void>(), 0xff, out_count * 4));  // NaN poison
    }
    STATUS_OK(cuda::moe_experts(in.x.as<float>(), rows, in.ids.as<int32_t>(),
                                in.weights.as<float>(), k, layer.gate_up->view, layer.down->view,
                                layer.n_experts, layer.ffn, layer.dim, dscratch.as<void>(),
                                /*accumulate=*/base != nullptr, dout.as<float>(), nullptr));
    kestrel::testing::wait_for_host_copies();
    CUDA_OK(cudaDeviceSynchronize());
    result.out = download<float>(dout, out_count);
    result.act = download<Q8Block>(dscratch, static_cast<size_t>(rows * k * (layer.ffn / 32)));
}

// ---- the twin and the checks ---------------------------------------------------------------

struct Worst {
    double act = 0.0;         // max |d q - act_twin| / its bound
    double down = 0.0;        // max |out - twin down on the GPU's act| / its bound
    double end_to_end = 0.0;  // max |out - twin| / its bound
    int64_t q_differences = 0;
    int64_t act_values = 0;

    void print(const std::string& label) const {
        std::printf(
            "%s: act %.3f, down %.3e, end to end %.3e of their bounds; %lld of %lld act codes "
            "differ\n",
            label.c_str(), act, down, end_to_end, static_cast<long long>(q_differences),
            static_cast<long long>(act_values));
    }
};

// Checks one call's GPU result against the twin (see the file comment). sampled_rows: the rows
// r of each row t's output checked end to end (all when empty).
void check_against_twin(const Layer& layer, const std::vector<float>& x, int64_t rows,
                        const Routing& routing, int64_t k, const GpuResult& gpu,
                        std::vector<int64_t> sampled_rows, const std::string& label, Worst& worst) {
    const int64_t dim = layer.dim, ffn = layer.ffn, n_experts = layer.n_experts;
    const int64_t groups_d = dim / 32, groups_f = ffn / 32;
    const double gate_up_order = static_cast<double>(groups_d + groups_d / 16 + 40);
    const double down_order = static_cast<double>(groups_f + groups_f / 16 + 40 + k + 4);
    const HostStack& gate_up = layer.gate_up->host;
    const HostStack& down = layer.down->host;
    if (sampled_rows.empty()) {
        for (int64_t r = 0; r < dim; ++r) sampled_rows.push_back(r);
    }

    std::vector<Q8Block> x_blocks(static_cast<size_t>(groups_d));
    std::vector<float> gate_up_y(static_cast<size_t>(2 * ffn)), gate_up_mag(gate_up_y.size());
    std::vector<float> act(static_cast<size_t>(ffn));
    std::vector<Q8Block> twin_blocks(static_cast<size_t>(k * groups_f));
    // Per slot j of the row: down on the GPU's act (y_gpu_act) and on the twin's (y_twin), with
    // the twins' magnitudes; dq_change = d q (GPU) - d q (twin) per act value.
    std::vector<float> y_gpu_act(static_cast<size_t>(k * dim)), mag_gpu_act(y_gpu_act.size());
    std::vector<float> y_twin(y_gpu_act.size()), mag_twin(y_gpu_act.size());
    std::vector<double> dq_change(static_cast<size_t>(k * ffn));
    std::vector<HostStack> down_slices(static_cast<size_t>(k));

    for (int64_t t = 0; t < rows; ++t) {
        quantize_q8_row(x.data() + t * dim, dim, x_blocks.data());
        bool row_known = true;
        for (int64_t j = 0; j < k; ++j) {
            const int64_t slot = t * k + j;
            const int32_t expert = routing.ids[static_cast<size_t>(slot)];
            const Q8Block* gpu_blocks = gpu.act.data() + slot * groups_f;
            if (!known_expert(expert, n_experts)) {
                row_known = false;
                for (int64_t g = 0; g < groups_f; ++g) {
                    ASSERT_TRUE(std::isnan(gpu_blocks[g].d))
                        << label << ": row " << t << " slot " << j << " (id " << expert
                        << ") act block " << g << " d = " << gpu_blocks[g].d;
                }
                continue;
            }
            // Stage 1: gate and up, act, its Q8 blocks.
            const HostStack expert_gate_up = gate_up.slice(expert * 2 * ffn, 2 * ffn);
            expert_gate_up.matvec(x_blocks.data(), gate_up_y.data(), gate_up_mag.data());
            cpu::silu_and_mul(gate_up_y.data(), gate_up_y.data() + ffn, ffn, act.data());
            Q8Block* twin = twin_blocks.data() + j * groups_f;
            quantize_q8_row(act.data(), ffn, twin);

            for (int64_t g = 0; g < groups_f; ++g) {
                const Q8Block& got = gpu_blocks[g];
                ASSERT_TRUE(std::isfinite(got.d)) << label << ": row " << t << " slot " << j
                                                  << " act block " << g << " d = " << got.d;
                int32_t sum = 0;
                for (int i = 0; i < 32; ++i) sum += got.qs[i];
                ASSERT_EQ(got.sum, sum) << label << ": act block " << g;
                ASSERT_TRUE(got.pad[0] == 0 && got.pad[1] == 0) << label << ": act block " << g;
                double max_change = 0.0;
                for (int i = 0; i < 32; ++i) {
                    const size_t f = static_cast<size_t>(g * 32 + i);
                    const double gate = gate_up_y[f], up = gate_up_y[f + static_cast<size_t>(ffn)];
                    const double gate_tol = gate_up_order * kEps * gate_up_mag[f];
                    const double up_tol =
                        gate_up_order * kEps * gate_up_mag[f + static_cast<size_t>(ffn)];
                    const double silu = gate / (1.0 + std::exp(-gate));
                    const double change = 1.1 * gate_tol * (std::fabs(up) + up_tol) +
                                          std::fabs(silu) * up_tol +
                                          std::ldexp(std::fabs(static_cast<double>(act[f])), -20);
                    max_change = std::max(max_change, change);
                    const double got_value = static_cast<double>(got.d) * got.qs[i];
                    const double bound =
                        static_cast<double>(got.d) * (0.5 + std::ldexp(1.0, -16)) + change + 1e-30;
                    const double err = std::fabs(got_value - act[f]);
                    ASSERT_LE(err, bound)
                        << label << ": row " << t << " slot " << j << " (expert " << expert
                        << ") act " << f << ": gpu " << got_value << " (q " << int(got.qs[i])
                        << ", d " << got.d << ") twin act " << act[f];
                    worst.act = std::max(worst.act, err / bound);
                    worst.q_differences += got.qs[i] != twin[g].qs[i] ? 1 : 0;
                    dq_change[static_cast<size_t>(j * ffn) + f] =
                        got_value - static_cast<double>(twin[g].d) * twin[g].qs[i];
                }
                const double d_bound = max_change / 127.0 * (1.0 + std::ldexp(1.0, -20)) +
                                       std::ldexp(static_cast<double>(twin[g].d), -22) + 1e-38;
                ASSERT_LE(std::fabs(static_cast<double>(got.d) - twin[g].d), d_bound)
                    << label << ": row " << t << " slot " << j << " act block " << g << ": gpu d "
                    << got.d << ", twin d " << twin[g].d;
            }
            worst.act_values += ffn;

            // Stage 2 twice: down on the GPU's act blocks and on the twin's.
            down_slices[static_cast<size_t>(j)] = down.slice(expert * dim, dim);
            const HostStack& expert_down = down_slices[static_cast<size_t>(j)];
            expert_down.matvec(gpu_blocks, y_gpu_act.data() + j * dim,
                               mag_gpu_act.data() + j * dim);
            expert_down.matvec(twin, y_twin.data() + j * dim, mag_twin.data() + j * dim);
        }

        const float* out = gpu.out.data() + t * dim;
        if (!row_known) {
            for (int64_t r = 0; r < dim; ++r) {
                ASSERT_TRUE(std::isnan(out[r]))
                    << label << ": row " << t << " has an unknown expert, out " << r << " = "
                    << out[r];
            }
            continue;
        }
        const float* w = routing.weights.data() + t * k;
        for (int64_t r = 0; r < dim; ++r) {
            ASSERT_TRUE(std::isfinite(out[r]))
                << label << ": row " << t << " out " << r << " = " << out[r];
            float reference = 0.0f;  // ops/cpu moe_experts' sum, in j order
            double magnitude = 0.0;
            for (int64_t j = 0; j < k; ++j) {
                reference += y_gpu_act[static_cast<size_t>(j * dim + r)] * w[j];
                magnitude += std::fabs(w[j]) * mag_gpu_act[static_cast<size_t>(j * dim + r)];
            }
            const double bound = down_order * kEps * magnitude + 1e-30;
            const double err = std::fabs(static_cast<double>(out[r]) - reference);
            ASSERT_LE(err, bound) << label << ": row " << t << " out " << r << ": gpu " << out[r]
                                  << ", twin down on the gpu's act " << reference;
            worst.down = std::max(worst.down, err / bound);
        }
        for (const int64_t r : sampled_rows) {
            float twin_out = 0.0f;
            double bound = 1e-30;
            for (int64_t j = 0; j < k; ++j) {
                const size_t at = static_cast<size_t>(j * dim + r);
                twin_out += y_twin[at] * w[j];
                double flips = 0.0;
                for (int64_t i = 0; i < ffn; ++i) {
                    const double change = dq_change[static_cast<size_t>(j * ffn + i)];
                    if (change != 0.0) {
                        flips += std::fabs(down_slices[static_cast<size_t>(j)].weight(r, i)) *
                                 std::fabs(change);
                    }
                }
                bound +=
                    std::fabs(w[j]) * (flips * (1.0 + std::ldexp(1.0, -20)) +
                                       down_order * kEps * (2.0 * mag_gpu_act[at] + mag_twin[at]));
            }
            const double err = std::fabs(static_cast<double>(out[r]) - twin_out);
            ASSERT_LE(err, bound) << label << ": row " << t << " out " << r << ": gpu " << out[r]
                                  << ", twin " << twin_out;
            worst.end_to_end = std::max(worst.end_to_end, err / bound);
        }
    }
    ASSERT_LE(worst.q_differences * 100, std::max<int64_t>(worst.act_values, 800))
        << label << ": act codes that differ from the twin's should be rare flips at a rounding "
        << "boundary";
}

// Rows r of a row's output checked end to end at large dim: the first and last 8, every 61st.
std::vector<int64_t> sample_rows(int64_t dim) {
    std::vector<int64_t> rows;
    for (int64_t r = 0; r < dim; ++r) {
        if (r < 8 || r >= dim - 8 || r % 61 == 0) rows.push_back(r);
    }
    return rows;
}

void run_and_check(const Layer& layer, int64_t rows, int64_t k, uint64_t seed,
                   const std::vector<int64_t>& sampled_rows, Worst& worst) {
    const std::vector<float> x = random_x(rows, layer.dim, seed);
    const Routing routing = random_routing(rows, k, layer.n_experts, seed + 1);
    GpuResult gpu;
    run_gpu(layer, x, rows, routing, k, gpu);
    if (::testing::Test::HasFatalFailure()) return;
    check_against_twin(layer, x, rows, routing, k, gpu, sampled_rows, case_label(layer, rows, k),
                       worst);
}

// ---- shapes --------------------------------------------------------------------------------

// kQwen35 (cuda_moe_test_support.h) at these row counts.
constexpr int64_t kQwen35Rows[] = {1, 2, 3, 8, 37};

// Small shapes that, with the Qwen3.5 ones, reach every down variant (format x lanes per row L
// x warps per row group S; on an H100's 132 SMs, EveryDownVariantIsTested checks the GPU at
// hand): the fixture's tiny layer; ffn 256 (L = 16) and ffn 1024 (L = 32) at small dim, where S
// grows to fill the SMs; k = 4 (W4 with S = 1); a partial W4 super-group in the gate/up rows
// (dim 96) with k = 3 (S = 4 > k: an idle warp per row group); down rows longer than a warp's
// units (ffn 1536: 48 W4 and 96 W8 units over 32 lanes); gate/up rows of several steps (dim 4096).
constexpr Shape kOddShapes[] = {{64, 32, 8, 2},     {256, 256, 16, 8},  {1024, 256, 16, 4},
                                {256, 1024, 16, 8}, {512, 1024, 16, 8}, {1024, 1024, 16, 8},
                                {96, 64, 5, 3},     {2048, 1536, 8, 4}, {4096, 256, 8, 8}};
constexpr int64_t kOddRows[] = {1, 2, 5};

// (gate_up, down) formats: all four pairs (llama.cpp's Q4_K_M is W4/W8 in some layers).
constexpr bool kFormats[][2] = {{true, true}, {true, false}, {false, false}, {false, true}};

// The fixture (cuda_moe_test_support.h): skips without a GPU; the Qwen3.5 stacks, once a suite.
class CudaMoeExperts : public CudaMoeTest {};

// ---- tests ---------------------------------------------------------------------------------

// The split rule (moe_experts.h) at the decode shapes on an H100's 132 SMs.
TEST(CudaMoeExpertsSplitRule, H100Shapes) {
    constexpr int kH100Sms = 132;
    // Resident down blocks per SM with CUDA 13.0 for sm_90a: W4 79 registers (3 of 256 threads),
    // W8 126 (2).
    constexpr int kW4Blocks = 3, kW8Blocks = 2;
    // W4 down: 16 units a row, two rows a warp; 4 slots a batch -> S >= 2: 256 blocks.
    EXPECT_EQ(cuda::moe_down_warps_per_row(1, 8, 2048, 512, true, kH100Sms, kW4Blocks), 2);
    EXPECT_EQ(cuda::moe_down_warps_per_row(8, 8, 2048, 512, true, kH100Sms, kW4Blocks), 2);
    // k = 9 (the shared expert stacked): one batch needs S = 4, 512 blocks, more than the 396
    // that fit at once; S = 2 (256 blocks, one warp with a second batch of one slot) fits.
    EXPECT_EQ(cuda::moe_down_warps_per_row(1, 9, 2048, 512, true, kH100Sms, kW4Blocks), 2);
    // Eight rows take several waves at either split: one batch each.
    EXPECT_EQ(cuda::moe_down_warps_per_row(8, 9, 2048, 512, true, kH100Sms, kW4Blocks), 4);
    // W8 down: 32 units a row, one row a warp; 8 slots a batch: 256 blocks at S = 1.
    EXPECT_EQ(cuda::moe_down_warps_per_row(1, 8, 2048, 512, false, kH100Sms, kW8Blocks), 1);
    // k = 9: S = 2 would be 512 blocks (> 264); S = 1, 256 blocks, fits.
    EXPECT_EQ(cuda::moe_down_warps_per_row(1, 9, 2048, 512, false, kH100Sms, kW8Blocks), 1);
    // The fixture's tiny layer: 4 blocks at S = 1, and k = 2 caps S at 2.
    EXPECT_EQ(cuda::moe_down_warps_per_row(1, 2, 64, 32, true, kH100Sms, kW4Blocks), 2);
    EXPECT_EQ(cuda::moe_down_warps_per_row(1, 8, 256, 256, true, kH100Sms, kW4Blocks), 8);
}

TEST_F(CudaMoeExperts, EveryDownVariantIsTested) {
    const Result<int> sms = cuda::gemv_sm_count();
    ASSERT_TRUE(sms.ok()) << sms.status().message();
    // reached[is_w4][L == 32][log2 S]
    bool reached[2][2][4] = {};
    const auto add = [&](const Shape& s, int64_t rows) {
        for (const bool w4 : {true, false}) {
            const int64_t units = w4 ? s.ffn / 32 : s.ffn / 16;
            // Blocks per SM as ptxas gives them today (see H100Shapes); the rule halves S only
            // where one batch per warp would take a second wave, which these shapes never do.
            const int split =
                cuda::moe_down_warps_per_row(rows, s.k, s.dim, s.ffn, w4, *sms, w4 ? 3 : 2);
            const int log2_split = split == 1 ? 0 : split == 2 ? 1 : split == 4 ? 2 : 3;
            reached[w4][units > 16][log2_split] = true;
        }
    };
    for (const int64_t rows : kQwen35Rows) add(kQwen35, rows);
    for (const Shape& s : kOddShapes)
        for (const int64_t rows : kOddRows) add(s, rows);
    for (const bool w4 : {true, false}) {
        for (const int lanes : {16, 32}) {
            for (int log2_split = 0; log2_split < 4; ++log2_split) {
                EXPECT_TRUE(reached[w4][lanes == 32][log2_split])
                    << "no test shape reaches " << format_name(w4) << " down with L = " << lanes
                    << ", S = " << (1 << log2_split) << " on " << *sms
                    << " SMs: add one to kOddShapes";
            }
        }
    }
}

TEST_F(CudaMoeExperts, TinyLayerAllFormats) {
    const Shape s = kOddShapes[0];  // d = 64, f = 32, 8 experts, k = 2
    uint64_t seed = 100;
    for (const auto& formats : kFormats) {
        const auto gate_up = make_stack(formats[0], s.n_experts * 2 * s.ffn, s.dim, ++seed);
        const auto down = make_stack(formats[1], s.n_experts * s.dim, s.ffn, ++seed);
        if (HasFatalFailure()) return;
        const Layer layer{s.dim, s.ffn, s.n_experts, gate_up.get(), down.get()};
        Worst worst;
        for (const int64_t rows : {1, 2, 3, 4, 5, 9}) {
            run_and_check(layer, rows, s.k, ++seed, {}, worst);
            if (HasFatalFailure()) return;
        }
        worst.print(case_label(layer, 9, s.k) + " (all row counts)");
    }
}

TEST_F(CudaMoeExperts, OddShapesAllFormats) {
    uint64_t seed = 200;
    for (const Shape& s : kOddShapes) {
        for (const auto& formats : kFormats) {
            const auto gate_up = make_stack(formats[0], s.n_experts * 2 * s.ffn, s.dim, ++seed);
            const auto down = make_stack(formats[1], s.n_experts * s.dim, s.ffn, ++seed);
            if (HasFatalFailure()) return;
            const Layer layer{s.dim, s.ffn, s.n_experts, gate_up.get(), down.get()};
            Worst worst;
            for (const int64_t rows : kOddRows) {
                run_and_check(layer, rows, s.k, ++seed, {}, worst);
                if (HasFatalFailure()) return;
            }
            worst.print(case_label(layer, 5, s.k) + " (rows 1, 2, 5)");
        }
    }
}

TEST_F(CudaMoeExperts, Qwen35ShapesAllFormats) {
    uint64_t seed = 300;
    for (const auto& formats : kFormats) {
        const Layer layer = qwen35_layer(formats[0], formats[1]);
        if (HasFatalFailure()) return;
        for (const int64_t rows : kQwen35Rows) {
            Worst worst;
            run_and_check(layer, rows, kQwen35.k, ++seed, sample_rows(kQwen35.dim), worst);
            if (HasFatalFailure()) return;
            worst.print(case_label(layer, rows, kQwen35.k));
        }
    }
}

// The same expert twice in a row (the router never does it, a caller could), and in every slot.
TEST_F(CudaMoeExperts, DuplicateExpertInARow) {
    const int64_t rows = 3, k = kQwen35.k;
    for (const auto& formats : {kFormats[0], kFormats[1]}) {
        const Layer layer = qwen35_layer(formats[0], formats[1]);
        if (HasFatalFailure()) return;
        const std::vector<float> x = random_x(rows, layer.dim, 400);
        Routing routing = random_routing(rows, k, layer.n_experts, 401);
        for (int64_t j = 0; j < k; ++j) routing.ids[static_cast<size_t>(j)] = 17;
        routing.ids[static_cast<size_t>(k + 1)] = routing.ids[static_cast<size_t>(k)];
        routing.ids[static_cast<size_t>(k + 5)] = routing.ids[static_cast<size_t>(k + 2)];
        GpuResult gpu;
        run_gpu(layer, x, rows, routing, k, gpu);
        if (HasFatalFailure()) return;
        Worst worst;
        check_against_twin(layer, x, rows, routing, k, gpu, sample_rows(layer.dim),
                           case_label(layer, rows, k) + " duplicates", worst);
        if (HasFatalFailure()) return;
        worst.print(case_label(layer, rows, k) + " duplicates");
    }
}

// accumulate: out = base + the sum the plain call writes, one fp32 add, bit for bit. k = 9 is
// the model's routed top 8 plus its shared expert stacked as a ninth slot (Ops::moe_route).
TEST_F(CudaMoeExperts, AccumulateAddsTheSumToOut) {
    const Layer layer = qwen35_layer(true, false);
    if (HasFatalFailure()) return;
    for (const int64_t k : {kQwen35.k, kQwen35.k + 1}) {
        for (const int64_t rows : {1, 3}) {
            const std::vector<float> x = random_x(rows, layer.dim, 700 + k + rows);
            const Routing routing = random_routing(rows, k, layer.n_experts, 710 + k + rows);
            const std::vector<float> base = random_x(rows, layer.dim, 720 + k + rows);
            GpuResult plain, accumulated;
            run_gpu(layer, x, rows, routing, k, plain);
            run_gpu(layer, x, rows, routing, k, accumulated, &base);
            if (HasFatalFailure()) return;
            for (size_t i = 0; i < base.size(); ++i) {
                ASSERT_TRUE(std::isfinite(plain.out[i]))
                    << "k " << k << " rows " << rows << " at " << i;
                const float expected = base[i] + plain.out[i];
                ASSERT_EQ(std::bit_cast<uint32_t>(accumulated.out[i]),
                          std::bit_cast<uint32_t>(expected))
                    << "k " << k << " rows " << rows << " at " << i << ": " << accumulated.out[i]
                    << " vs " << expected;
            }
            if (k == kQwen35.k + 1 && rows == 1) {
                Worst worst;
                check_against_twin(layer, x, rows, routing, k, plain, sample_rows(layer.dim),
                                   case_label(layer, rows, k), worst);
                if (HasFatalFailure()) return;
                worst.print(case_label(layer, rows, k) + " (nine slots)");
            }
        }
    }
}

// Ids outside [0, n_experts) read no weights and make their row NaN, and only their row.
TEST_F(CudaMoeExperts, UnknownExpertGivesNaNRow) {
    const int64_t rows = 5;
    uint64_t seed = 500;
    for (const Shape& s : {kOddShapes[0], kOddShapes[1]}) {
        for (const auto& formats : {kFormats[0], kFormats[2]}) {
            const auto gate_up = make_stack(formats[0], s.n_experts * 2 * s.ffn, s.dim, ++seed);
            const auto down = make_stack(formats[1], s.n_experts * s.dim, s.ffn, ++seed);
            if (HasFatalFailure()) return;
            const Layer layer{s.dim, s.ffn, s.n_experts, gate_up.get(), down.get()};
            const std::vector<float> x = random_x(rows, s.dim, ++seed);
            Routing routing = random_routing(rows, s.k, s.n_experts, ++seed);
            add_unknown_ids(s.k, s.n_experts, routing);
            GpuResult gpu;
            run_gpu(layer, x, rows, routing, s.k, gpu);
            if (HasFatalFailure()) return;
            Worst worst;
            check_against_twin(layer, x, rows, routing, s.k, gpu, {},
                               case_label(layer, rows, s.k) + " unknown ids", worst);
            if (HasFatalFailure()) return;
        }
    }
}

// Captured once into a CUDA graph and replayed with new ids, weights and x written into the same
// device buffers: nothing in the launches may depend on the host seeing the ids.
TEST_F(CudaMoeExperts, GraphReplayWithNewRouting) {
    const Layer layer = qwen35_layer(true, true);
    if (HasFatalFailure()) return;
    const int64_t rows = 1, k = kQwen35.k;
    std::vector<float> x = random_x(rows, layer.dim, 600);
    Routing routing = random_routing(rows, k, layer.n_experts, 601);
    DeviceInputs in;
    DeviceBuffer dscratch, dout;
    upload_inputs(x, routing, in);
    const size_t scratch_bytes = cuda::moe_experts_scratch_bytes(rows, k, layer.dim, layer.ffn);
    CUDA_OK(dscratch.alloc(scratch_bytes));
    const size_t out_count = static_cast<size_t>(rows * layer.dim);
    CUDA_OK(dout.alloc(out_count * 4));

    CapturedGraph g;
    // The SM count is queried (and cached) on a launcher's first call: not inside the capture.
    ASSERT_TRUE(cuda::gemv_sm_count().ok());
    capture(moe_call(cuda::moe_experts, layer, rows, k, in, dscratch, dout), g);
    if (HasFatalFailure()) return;

    for (uint64_t replay = 0; replay < 3; ++replay) {
        x = random_x(rows, layer.dim, 610 + replay);
        routing = random_routing(rows, k, layer.n_experts, 620 + replay);
        copy_inputs(x, routing, in);
        replay_poisoned(g, dscratch, scratch_bytes, dout, out_count * 4);
        if (HasFatalFailure()) return;
        GpuResult gpu;
        gpu.out = download<float>(dout, out_count);
        gpu.act = download<Q8Block>(dscratch, static_cast<size_t>(rows * k * (layer.ffn / 32)));
        Worst worst;
        check_against_twin(layer, x, rows, routing, k, gpu, sample_rows(layer.dim),
                           case_label(layer, rows, k) + " replay " + std::to_string(replay), worst);
        if (HasFatalFailure()) return;
    }
}

TEST_F(CudaMoeExperts, RejectsBadArguments) {
    const Shape s = kOddShapes[0];
    const auto gate_up = make_stack(true, s.n_experts * 2 * s.ffn, s.dim, 1);
    const auto down = make_stack(false, s.n_experts * s.dim, s.ffn, 2);
    if (HasFatalFailure()) return;
    const Layer layer{s.dim, s.ffn, s.n_experts, gate_up.get(), down.get()};
    const int64_t rows = 2;
    DeviceInputs in;
    DeviceBuffer dscratch, dout;
    alloc_zeroed_inputs(rows, s.k, s.dim, in);
    CUDA_OK(dscratch.alloc(cuda::moe_experts_scratch_bytes(rows, s.k, s.dim, s.ffn)));
    CUDA_OK(dout.alloc(static_cast<size_t>(rows * s.dim) * 4));
    if (HasFatalFailure()) return;
    const MoeCall good = moe_call(cuda::moe_experts, layer, rows, s.k, in, dscratch, dout);
    run_good_call(good);
    if (HasFatalFailure()) return;
    const std::vector<MoeCall> bad = bad_calls(good);
    for (size_t i = 0; i < bad.size(); ++i) {
        EXPECT_EQ(bad[i].run().code(), StatusCode::kInvalidArgument) << "bad call " << i;
    }
    // Beyond the shared-memory limits (checked before any shape comparison).
    MoeCall wide = good;
    wide.dim = cuda::kMoeMaxDim + 32;
    EXPECT_EQ(wide.run().code(), StatusCode::kInvalidArgument);
    MoeCall long_slots = good;
    long_slots.ffn = cuda::kMoeMaxSlotValues / long_slots.k + 32;
    EXPECT_EQ(long_slots.run().code(), StatusCode::kInvalidArgument);
}

#endif  // KESTREL_HAS_CUDA

}  // namespace
}  // namespace kestrel
