// The prefill routed experts (src/ops/cuda/moe_prefill.cu) against their CPU twin, stage by stage
// through the scratch the launcher leaves behind (moe_prefill_scratch_layout), and against the
// decode path (moe_experts.cu).
//
// The twin (moe_prefill.h's arithmetic): xb = bf16(x); wb = bf16(w4_dequantize / w8_dequantize of
// the expert's rows); g, u = sums of xb wb in double; act = silu(g) u in double; the down sums in
// double; the weighted sum in j order. Checks, each with a bound (eps = 2^-24):
//   routing (every slot): per expert, offsets[e + 1] - offsets[e] = its count and its sorted
//     range holds exactly its slots; the tile table is ceil(count / kTileRows) tiles per expert
//     in order.
//   act (every act value of the checked rows): the tensor cores' fp32 sums of exact products
//     differ from the double sums by at most c_K mag, c_K = (K + 16) eps, mag = sum |xb wb|: K / 8
//     internal steps (mma k16 as two k8 adds, products aligned and truncated to the largest
//     exponent) of at most 2 ulp of a partial sum <= mag each, that is K 2^-25 mag, doubled,
//     plus 2^-20 mag. Then act moves by D = 1.1 Eg (|u| + Eu) + |silu(g)| Eu + 2^-20 |act| (|silu'|
//     <= 1.1; the last term for expf's 2 ulp and the division's and product's roundings), and
//     the bf16 rounding adds at most 2^-8 (|act| + D) (8 significant bits, round to nearest).
//     Act codes that differ from the twin's bf16(act) (a rounding boundary between the two)
//     must be rare (<= 2% of values).
//   y (each checked slot at the checked columns): against the double down sum of the GPU's own
//     act, to c_ffn sum |act wb|.
//   out (every row and column): against the weighted sum of the GPU's own y in fp32 in j order
//     (the kernel's operations; (k + 2) eps sum |w_j y_j| of slack), NaN rows exactly where an
//     id is unknown.
//   end to end (checked rows and columns): out against the twin alone, within the y bounds plus,
//     per slot, sum_i |wb_down[n, i]| |act_gpu_i - act_twin_i| (the effect of act flips).
// Outputs and scratch are poisoned first (NaN floats, 0xffff bf16, -1 ints); NaN never passes.
// Decode agreement: moe_experts (Q8 activations) and the prefill path against the unquantised
// experts (fp32 x, exact weights, double arithmetic): the prefill's rms error must not exceed the
// decode's (bf16's 2^-9 relative roundings of x, w and act against Q8's amax / 254 per block of
// x and act: the prefill is expected about 3x closer). Skips without a GPU.
#include <gtest/gtest.h>

#if KESTREL_HAS_CUDA
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/half.h"
#include "ops/cuda/moe_experts.h"
#include "ops/cuda/moe_prefill.h"

#include "cuda_moe_test_support.h"
#include "cuda_test_support.h"
#endif

namespace kestrel {
namespace {

#if !KESTREL_HAS_CUDA

TEST(CudaMoePrefill, NeedsTheCudaBuild) {
    GTEST_SKIP() << "built without CUDA (KESTREL_HAS_CUDA=0)";
}

#else

using namespace kestrel::testing::moe;
using kestrel::testing::DeviceBuffer;
using kestrel::testing::download;
using kestrel::testing::upload;

constexpr double kEps = 1.0 / (1 << 24);
constexpr int64_t kTileRows = cuda::kMoePrefillTileRows;

// ---- weights ---------------------------------------------------------------------------------

// One expert's weights: exact fp32 (w*_dequantize) and rounded to bf16 (the kernels' operands).
struct ExpertWeights {
    std::vector<float> gate_up, down;            // exact: [2 ffn, dim], [dim, ffn]
    std::vector<float> gate_up_bf16, down_bf16;  // the same, rounded
};

float bf16_round(float v) {
    return bf16_to_fp32(fp32_to_bf16(v));
}

ExpertWeights expert_weights(const Layer& layer, int64_t e) {
    ExpertWeights w;
    w.gate_up = layer.gate_up->host.dequantize_rows(e * 2 * layer.ffn, 2 * layer.ffn);
    w.down = layer.down->host.dequantize_rows(e * layer.dim, layer.dim);
    w.gate_up_bf16.resize(w.gate_up.size());
    w.down_bf16.resize(w.down.size());
    for (size_t i = 0; i < w.gate_up.size(); ++i) w.gate_up_bf16[i] = bf16_round(w.gate_up[i]);
    for (size_t i = 0; i < w.down.size(); ++i) w.down_bf16[i] = bf16_round(w.down[i]);
    return w;
}

// ---- the GPU side --------------------------------------------------------------------------

struct GpuResult {
    std::vector<float> out_before;  // [rows, dim]: out's contents before the call (accumulate)
    std::vector<float> out;         // [rows, dim]
    std::vector<uint16_t> act;      // [rows k, ffn] bf16, sorted
    std::vector<float> y;           // [rows k, dim]
    std::vector<int32_t> sorted_slots, offsets, tiles;
};

// Downloads the scratch pieces of a finished call.
void download_scratch(const DeviceBuffer& dscratch, const cuda::MoePrefillLayout& layout,
                      int64_t slots, int64_t dim, int64_t ffn, int64_t n_experts,
                      GpuResult& result) {
    const char* base = dscratch.as<const char>();
    result.act = download(reinterpret_cast<const uint16_t*>(base + layout.act),
                          static_cast<size_t>(slots * ffn));
    result.y =
        download(reinterpret_cast<const float*>(base + layout.y), static_cast<size_t>(slots * dim));
    result.sorted_slots = download(reinterpret_cast<const int32_t*>(base + layout.sorted_slots),
                                   static_cast<size_t>(slots));
    result.offsets = download(reinterpret_cast<const int32_t*>(base + layout.offsets),
                              static_cast<size_t>(n_experts + 2));
    result.tiles = download(reinterpret_cast<const int32_t*>(base + layout.tiles),
                            static_cast<size_t>(layout.max_tiles * 4));
}

void run_gpu(const Layer& layer, const std::vector<float>& x, int64_t rows, const Routing& routing,
             int64_t k, bool accumulate, GpuResult& result) {
    DeviceInputs in;
    DeviceBuffer dscratch, dout;
    upload_inputs(x, routing, in);
    const cuda::MoePrefillLayout layout =
        cuda::moe_prefill_scratch_layout(rows, k, layer.dim, layer.ffn, layer.n_experts);
    const size_t scratch_bytes =
        cuda::moe_prefill_scratch_bytes(rows, k, layer.dim, layer.ffn, layer.n_experts);
    ASSERT_EQ(scratch_bytes, layout.total);
    CUDA_OK(dscratch.alloc(scratch_bytes));
    CUDA_OK(cudaMemset(dscratch.as<void>(), 0xff, scratch_bytes));  // NaN, -1
    const size_t out_count = static_cast<size_t>(rows * layer.dim);
    kestrel::testing::wait_for_host_copies();
    if (accumulate) {
        result.out_before = random_x(rows, layer.dim, 4242);
        upload(dout, result.out_before);
    } else {
        CUDA_OK(dout.alloc(out_count * 4));
        CUDA_OK(cudaMemset(dout.as<void>(), 0xff, out_count * 4));  // NaN poison
        result.out_before.assign(out_count, 0.0f);
        kestrel::testing::wait_for_host_copies();
    }
    STATUS_OK(cuda::moe_experts_prefill(
        in.x.as<float>(), rows, in.ids.as<int32_t>(), in.weights.as<float>(), k,
        layer.gate_up->view, layer.down->view, layer.n_experts, layer.ffn, layer.dim,
        dscratch.as<void>(), accumulate, dout.as<float>(), nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    result.out = download<float>(dout, out_count);
    download_scratch(dscratch, layout, rows * k, layer.dim, layer.ffn, layer.n_experts, result);
}

// ---- the twin and the checks ---------------------------------------------------------------

double silu(double g) {
    return g / (1.0 + std::exp(-g));
}

struct Worst {
    double act = 0.0, y = 0.0, out = 0.0, end_to_end = 0.0;  // max error / its bound
    int64_t act_flips = 0, act_values = 0;

    void print(const std::string& label) const {
        std::printf(
            "%s: act %.3f, y %.3e, out %.3e, end to end %.3e of their bounds; %lld of %lld act "
            "codes differ from the twin's\n",
            label.c_str(), act, y, out, end_to_end, static_cast<long long>(act_flips),
            static_cast<long long>(act_values));
    }
};

// Routing: counts, sorted ranges and tiles against the ids. position[slot] = sorted position
// (-1 for an unknown id).
void check_routing(const Layer& layer, int64_t rows, const Routing& routing, int64_t k,
                   const GpuResult& gpu, const std::string& label, std::vector<int64_t>& position) {
    const int64_t slots = rows * k, n_experts = layer.n_experts;
    std::vector<std::vector<int32_t> > by_expert(static_cast<size_t>(n_experts));
    int64_t known = 0;
    for (int64_t s = 0; s < slots; ++s) {
        const int32_t e = routing.ids[static_cast<size_t>(s)];
        if (!known_expert(e, n_experts)) continue;
        by_expert[static_cast<size_t>(e)].push_back(static_cast<int32_t>(s));
        ++known;
    }
    position.assign(static_cast<size_t>(slots), -1);
    int64_t at = 0, tile = 0;
    for (int64_t e = 0; e < n_experts; ++e) {
        const std::vector<int32_t>& expected = by_expert[static_cast<size_t>(e)];
        const int64_t count = static_cast<int64_t>(expected.size());
        ASSERT_EQ(gpu.offsets[static_cast<size_t>(e)], at) << label << ": offset of expert " << e;
        std::vector<int32_t> got(gpu.sorted_slots.begin() + at,
                                 gpu.sorted_slots.begin() + at + count);
        std::sort(got.begin(), got.end());
        ASSERT_EQ(got, expected) << label << ": the slots of expert " << e;
        for (int64_t i = 0; i < count; ++i) {
            position[static_cast<size_t>(gpu.sorted_slots[static_cast<size_t>(at + i)])] = at + i;
        }
        for (int64_t first = 0; first < count; first += kTileRows, ++tile) {
            ASSERT_LT(tile, static_cast<int64_t>(gpu.tiles.size() / 4)) << label;
            const int32_t* entry = gpu.tiles.data() + tile * 4;
            ASSERT_EQ(entry[0], e) << label << ": tile " << tile;
            ASSERT_EQ(entry[1], at + first) << label << ": tile " << tile;
            ASSERT_EQ(entry[2], at + count) << label << ": tile " << tile;
        }
        at += count;
    }
    ASSERT_EQ(gpu.offsets[static_cast<size_t>(n_experts)], known) << label;
    ASSERT_EQ(gpu.offsets[static_cast<size_t>(n_experts + 1)], tile) << label << ": tile count";
}

// See the file comment. checked_rows / checked_cols: the rows t and output columns n checked
// against the twin (all when empty); the routing and the weighted sum are checked everywhere.
void check_against_twin(const Layer& layer, const std::vector<float>& x, int64_t rows,
                        const Routing& routing, int64_t k, const GpuResult& gpu,
                        std::vector<int64_t> checked_rows, std::vector<int64_t> checked_cols,
                        const std::string& label, Worst& worst) {
    const int64_t dim = layer.dim, ffn = layer.ffn, n_experts = layer.n_experts;
    std::vector<int64_t> position;
    check_routing(layer, rows, routing, k, gpu, label, position);
    if (::testing::Test::HasFatalFailure()) return;

    // The weighted sum of the GPU's own y, every row and column.
    for (int64_t t = 0; t < rows; ++t) {
        bool row_known = true;
        for (int64_t j = 0; j < k; ++j) {
            row_known &= known_expert(routing.ids[static_cast<size_t>(t * k + j)], n_experts);
        }
        for (int64_t n = 0; n < dim; ++n) {
            const float got = gpu.out[static_cast<size_t>(t * dim + n)];
            if (!row_known) {
                ASSERT_TRUE(std::isnan(got)) << label << ": row " << t
                                             << " has an unknown expert, out " << n << " = " << got;
                continue;
            }
            float sum = 0.0f;
            double magnitude = 0.0;
            for (int64_t j = 0; j < k; ++j) {
                const float w = routing.weights[static_cast<size_t>(t * k + j)];
                const float v = gpu.y[static_cast<size_t>((t * k + j) * dim + n)];
                sum += w * v;
                magnitude += std::fabs(static_cast<double>(w) * v);
            }
            const float before = gpu.out_before[static_cast<size_t>(t * dim + n)];
            const float expected = before + sum;
            const double bound = static_cast<double>(k + 2) * kEps * magnitude +
                                 2.0 * kEps * std::fabs(static_cast<double>(before)) + 1e-38;
            const double err = std::fabs(static_cast<double>(got) - expected);
            ASSERT_LE(err, bound) << label << ": row " << t << " out " << n << ": gpu " << got
                                  << ", the weighted sum of its y " << expected;
            worst.out = std::max(worst.out, err / bound);
        }
    }

    if (checked_rows.empty()) {
        for (int64_t t = 0; t < rows; ++t) checked_rows.push_back(t);
    }
    if (checked_cols.empty()) {
        for (int64_t n = 0; n < dim; ++n) checked_cols.push_back(n);
    }
    const int64_t n_cols = static_cast<int64_t>(checked_cols.size());
    // Per (checked row index, slot j, checked column index): the twin's y, y's bound on the
    // GPU's act and the flips' effect.
    const size_t per_row = static_cast<size_t>(k * n_cols);
    std::vector<double> y_twin(checked_rows.size() * per_row);
    std::vector<double> y_bound(y_twin.size()), flips_bound(y_twin.size());

    // The checked slots grouped by expert, so each expert is dequantised once.
    std::map<int32_t, std::vector<std::pair<size_t, int64_t> > > slots_of;  // (row index, j)
    for (size_t ri = 0; ri < checked_rows.size(); ++ri) {
        for (int64_t j = 0; j < k; ++j) {
            const int32_t e = routing.ids[static_cast<size_t>(checked_rows[ri] * k + j)];
            if (known_expert(e, n_experts)) slots_of[e].push_back({ri, j});
        }
    }
    const double c_dim = static_cast<double>(dim + 16) * kEps;
    const double c_ffn = static_cast<double>(ffn + 16) * kEps;
    std::vector<float> xb(static_cast<size_t>(dim)), act_gpu(static_cast<size_t>(ffn)),
        act_twin(static_cast<size_t>(ffn));
    for (const auto& [expert, slot_list] : slots_of) {
        const ExpertWeights w = expert_weights(layer, expert);
        for (const auto& [ri, j] : slot_list) {
            const int64_t t = checked_rows[ri];
            const int64_t slot = t * k + j;
            const int64_t p = position[static_cast<size_t>(slot)];
            for (int64_t i = 0; i < dim; ++i) {
                xb[static_cast<size_t>(i)] = bf16_round(x[static_cast<size_t>(t * dim + i)]);
            }
            for (int64_t c = 0; c < ffn; ++c) {
                double g = 0.0, u = 0.0, g_mag = 0.0, u_mag = 0.0;
                const float* gate_row = w.gate_up_bf16.data() + c * dim;
                const float* up_row = w.gate_up_bf16.data() + (ffn + c) * dim;
                for (int64_t i = 0; i < dim; ++i) {
                    const double a = xb[static_cast<size_t>(i)];
                    g += a * gate_row[i];
                    u += a * up_row[i];
                    g_mag += std::fabs(a * gate_row[i]);
                    u_mag += std::fabs(a * up_row[i]);
                }
                const double act = silu(g) * u;
                const double eg = c_dim * g_mag + 1e-30, eu = c_dim * u_mag + 1e-30;
                const double d = 1.1 * eg * (std::fabs(u) + eu) + std::fabs(silu(g)) * eu +
                                 std::ldexp(std::fabs(act), -20) + 1e-30;
                const double bound = d + std::ldexp(std::fabs(act) + d, -8);
                const uint16_t code = gpu.act[static_cast<size_t>(p * ffn + c)];
                const float got = bf16_to_fp32(code);
                const double err = std::fabs(static_cast<double>(got) - act);
                ASSERT_LE(err, bound) << label << ": row " << t << " slot " << j << " (expert "
                                      << expert << ", sorted position " << p << ") act " << c
                                      << ": gpu " << got << ", twin " << act;
                worst.act = std::max(worst.act, err / bound);
                act_gpu[static_cast<size_t>(c)] = got;
                const uint16_t twin_code = fp32_to_bf16(static_cast<float>(act));
                act_twin[static_cast<size_t>(c)] = bf16_to_fp32(twin_code);
                worst.act_flips += code != twin_code ? 1 : 0;
            }
            worst.act_values += ffn;
            for (int64_t ci = 0; ci < n_cols; ++ci) {
                const int64_t n = checked_cols[static_cast<size_t>(ci)];
                const float* down_row = w.down_bf16.data() + n * ffn;
                double y_gpu_act = 0.0, mag = 0.0, y_of_twin = 0.0, flips = 0.0;
                for (int64_t i = 0; i < ffn; ++i) {
                    const double wd = down_row[i];
                    y_gpu_act += act_gpu[static_cast<size_t>(i)] * wd;
                    mag += std::fabs(act_gpu[static_cast<size_t>(i)] * wd);
                    y_of_twin += act_twin[static_cast<size_t>(i)] * wd;
                    flips += std::fabs(wd) *
                             std::fabs(static_cast<double>(act_gpu[static_cast<size_t>(i)] -
                                                           act_twin[static_cast<size_t>(i)]));
                }
                const double bound = c_ffn * mag + 1e-30;
                const float got = gpu.y[static_cast<size_t>(slot * dim + n)];
                const double err = std::fabs(static_cast<double>(got) - y_gpu_act);
                ASSERT_LE(err, bound)
                    << label << ": row " << t << " slot " << j << " (expert " << expert << ") y "
                    << n << ": gpu " << got << ", twin down on the gpu's act " << y_gpu_act;
                worst.y = std::max(worst.y, err / bound);
                const size_t at = ri * per_row + static_cast<size_t>(j * n_cols + ci);
                y_twin[at] = y_of_twin;
                y_bound[at] = bound;
                flips_bound[at] = flips * (1.0 + 1e-6);
            }
        }
    }

    // End to end: out against the twin alone.
    for (size_t ri = 0; ri < checked_rows.size(); ++ri) {
        const int64_t t = checked_rows[ri];
        bool row_known = true;
        for (int64_t j = 0; j < k; ++j) {
            row_known &= known_expert(routing.ids[static_cast<size_t>(t * k + j)], n_experts);
        }
        if (!row_known) continue;  // NaN checked above
        for (int64_t ci = 0; ci < n_cols; ++ci) {
            const int64_t n = checked_cols[static_cast<size_t>(ci)];
            const double before = gpu.out_before[static_cast<size_t>(t * dim + n)];
            double twin = 0.0, bound = 1e-30, magnitude = std::fabs(before);
            for (int64_t j = 0; j < k; ++j) {
                const size_t at = ri * per_row + static_cast<size_t>(j * n_cols + ci);
                const double w = routing.weights[static_cast<size_t>(t * k + j)];
                twin += w * y_twin[at];
                bound += std::fabs(w) * (y_bound[at] + flips_bound[at]);
                magnitude += std::fabs(w * y_twin[at]) + std::fabs(w) * y_bound[at];
            }
            twin += before;
            bound += static_cast<double>(k + 4) * kEps * magnitude;
            const float got = gpu.out[static_cast<size_t>(t * dim + n)];
            const double err = std::fabs(static_cast<double>(got) - twin);
            ASSERT_LE(err, bound) << label << ": row " << t << " out " << n << ": gpu " << got
                                  << ", twin " << twin;
            worst.end_to_end = std::max(worst.end_to_end, err / bound);
        }
    }
    ASSERT_LE(worst.act_flips * 50, std::max<int64_t>(worst.act_values, 3200))
        << label << ": act codes that differ from the twin's should be rare flips at a rounding "
        << "boundary";
}

// Rows t checked against the twin at large shapes: the first and last 4, every 97th.
std::vector<int64_t> sample(int64_t count, int64_t every) {
    std::vector<int64_t> picked;
    for (int64_t i = 0; i < count; ++i) {
        if (i < 4 || i >= count - 4 || i % every == 0) picked.push_back(i);
    }
    return picked;
}

void run_and_check(const Layer& layer, const std::vector<float>& x, int64_t rows,
                   const Routing& routing, int64_t k, bool accumulate,
                   const std::vector<int64_t>& checked_rows,
                   const std::vector<int64_t>& checked_cols, const std::string& label,
                   Worst& worst) {
    GpuResult gpu;
    run_gpu(layer, x, rows, routing, k, accumulate, gpu);
    if (::testing::Test::HasFatalFailure()) return;
    check_against_twin(layer, x, rows, routing, k, gpu, checked_rows, checked_cols, label, worst);
}

// ---- shapes --------------------------------------------------------------------------------

// Small shapes: partial column tiles (ffn 32, 96 of 64-column gate_up tiles; dim 64, 96, 160 of
// 128-column down tiles), 8 and 9 experts, k from 1 to 8.
constexpr Shape kOddShapes[] = {
    {64, 32, 8, 2}, {96, 64, 9, 8}, {96, 32, 9, 1}, {160, 96, 8, 5}, {256, 64, 9, 3},
};
constexpr int64_t kOddRows[] = {9, 64, 65, 300};

// {gate_up is W4, down is W4}.
constexpr bool kFormats[4][2] = {{true, true}, {true, false}, {false, true}, {false, false}};

// The fixture (cuda_moe_test_support.h): skips without a GPU; the Qwen3.5 stacks, once a suite.
class CudaMoePrefill : public CudaMoeTest {};

struct OwnedLayer {
    std::unique_ptr<Stack> gate_up, down;
    Layer layer;
};

OwnedLayer make_layer(const Shape& s, bool gate_up_w4, bool down_w4, uint64_t seed) {
    OwnedLayer owned;
    owned.gate_up = make_stack(gate_up_w4, s.n_experts * 2 * s.ffn, s.dim, seed);
    owned.down = make_stack(down_w4, s.n_experts * s.dim, s.ffn, seed + 1);
    owned.layer = {s.dim, s.ffn, s.n_experts, owned.gate_up.get(), owned.down.get()};
    return owned;
}

// ---- tests ---------------------------------------------------------------------------------

TEST(CudaMoePrefillLayout, ScratchPieces) {
    const cuda::MoePrefillLayout l = cuda::moe_prefill_scratch_layout(2048, 8, 2048, 512, 256);
    EXPECT_EQ(l.max_tiles, 16384 / kTileRows + 256);
    for (const size_t piece : {l.x_bf16, l.act, l.y, l.sorted_slots, l.offsets, l.tiles, l.total}) {
        EXPECT_EQ(piece % 256, 0u);
    }
    EXPECT_GE(l.act - l.x_bf16, size_t{2048} * 2048 * 2);
    EXPECT_GE(l.y - l.act, size_t{16384} * 512 * 2);
    EXPECT_GE(l.sorted_slots - l.y, size_t{16384} * 2048 * 4);
    EXPECT_GE(l.total - l.tiles, static_cast<size_t>(l.max_tiles) * 16);
    EXPECT_EQ(cuda::moe_prefill_scratch_bytes(2048, 8, 2048, 512, 256), l.total);
    EXPECT_EQ(cuda::moe_prefill_scratch_bytes(0, 8, 2048, 512, 256), 0u);
}

TEST_F(CudaMoePrefill, OddShapesAllFormats) {
    uint64_t seed = 100;
    for (const Shape& s : kOddShapes) {
        for (const auto& formats : kFormats) {
            OwnedLayer owned = make_layer(s, formats[0], formats[1], seed += 2);
            if (HasFatalFailure()) return;
            Worst worst;
            for (const int64_t rows : kOddRows) {
                const std::vector<float> x = random_x(rows, s.dim, ++seed);
                const Routing routing = random_routing(rows, s.k, s.n_experts, ++seed);
                run_and_check(owned.layer, x, rows, routing, s.k, false, {}, {},
                              case_label(owned.layer, rows, s.k), worst);
                if (HasFatalFailure()) return;
            }
            worst.print(case_label(owned.layer, 300, s.k) + " (rows 9, 64, 65, 300)");
        }
    }
}

TEST_F(CudaMoePrefill, AccumulatesIntoOut) {
    const Shape s = kOddShapes[1];
    OwnedLayer owned = make_layer(s, true, false, 150);
    if (HasFatalFailure()) return;
    const int64_t rows = 70;
    const std::vector<float> x = random_x(rows, s.dim, 151);
    const Routing routing = random_routing(rows, s.k, s.n_experts, 152);
    Worst worst;
    run_and_check(owned.layer, x, rows, routing, s.k, true, {}, {},
                  case_label(owned.layer, rows, s.k) + " accumulate", worst);
    if (HasFatalFailure()) return;
    worst.print(case_label(owned.layer, rows, s.k) + " accumulate");
}

TEST_F(CudaMoePrefill, Qwen35ShapesAllFormats) {
    uint64_t seed = 300;
    for (const auto& formats : kFormats) {
        const Layer layer = qwen35_layer(formats[0], formats[1]);
        if (HasFatalFailure()) return;
        for (const int64_t rows : {64, 512}) {
            // All formats at 64 rows; the Q4_K_M pairing (W4 gate_up, W8 down) and W4 at 512.
            if (rows == 512 && !formats[0]) continue;
            const std::vector<float> x = random_x(rows, layer.dim, ++seed);
            const Routing routing = random_routing(rows, kQwen35.k, layer.n_experts, ++seed);
            Worst worst;
            run_and_check(layer, x, rows, routing, kQwen35.k, false, sample(rows, 97),
                          sample(layer.dim, 61), case_label(layer, rows, kQwen35.k), worst);
            if (HasFatalFailure()) return;
            worst.print(case_label(layer, rows, kQwen35.k));
        }
    }
}

// A full prefill chunk: 2048 rows, 16384 slots (~64 per expert, uneven).
TEST_F(CudaMoePrefill, Qwen35FullChunk) {
    const Layer layer = qwen35_layer(true, false);
    if (HasFatalFailure()) return;
    const int64_t rows = 2048;
    const std::vector<float> x = random_x(rows, layer.dim, 350);
    const Routing routing = random_routing(rows, kQwen35.k, layer.n_experts, 351);
    Worst worst;
    run_and_check(layer, x, rows, routing, kQwen35.k, false, sample(rows, 331),
                  sample(layer.dim, 127), case_label(layer, rows, kQwen35.k), worst);
    if (HasFatalFailure()) return;
    worst.print(case_label(layer, rows, kQwen35.k));
}

// Every slot to one expert (many tiles of one expert, every other expert empty), k = 1 and
// k = 8 (the same expert in all of a row's slots), and routing to a few experts only.
TEST_F(CudaMoePrefill, SkewedRouting) {
    uint64_t seed = 400;
    for (const auto& formats : {kFormats[0], kFormats[3]}) {
        const Shape s = kOddShapes[1];  // dim 96, ffn 64, 9 experts, k 8
        OwnedLayer owned = make_layer(s, formats[0], formats[1], seed += 2);
        if (HasFatalFailure()) return;
        for (const int64_t k : {int64_t{1}, int64_t{8}}) {
            const int64_t rows = 300;
            const std::vector<float> x = random_x(rows, s.dim, ++seed);
            Routing routing = random_routing(rows, k, s.n_experts, ++seed);
            std::fill(routing.ids.begin(), routing.ids.end(), 4);
            Worst worst;
            run_and_check(owned.layer, x, rows, routing, k, false, {}, {},
                          case_label(owned.layer, rows, k) + " all to expert 4", worst);
            if (HasFatalFailure()) return;
            worst.print(case_label(owned.layer, rows, k) + " all to expert 4");
        }
        // Experts 0 and 8 only (1..7 get no slots), alternating by slot.
        const int64_t rows = 129, k = 3;
        const std::vector<float> x = random_x(rows, s.dim, ++seed);
        Routing routing = random_routing(rows, k, s.n_experts, ++seed);
        for (size_t i = 0; i < routing.ids.size(); ++i) routing.ids[i] = (i % 2 == 0) ? 0 : 8;
        Worst worst;
        run_and_check(owned.layer, x, rows, routing, k, false, {}, {},
                      case_label(owned.layer, rows, k) + " experts 0 and 8", worst);
        if (HasFatalFailure()) return;
    }
    // The real shape, 4096 slots on one expert (4096 / kTileRows tiles).
    const Layer layer = qwen35_layer(true, true);
    if (HasFatalFailure()) return;
    const int64_t rows = 512, k = kQwen35.k;
    const std::vector<float> x = random_x(rows, layer.dim, ++seed);
    Routing routing = random_routing(rows, k, layer.n_experts, ++seed);
    std::fill(routing.ids.begin(), routing.ids.end(), 201);
    Worst worst;
    run_and_check(layer, x, rows, routing, k, false, sample(rows, 127), sample(layer.dim, 61),
                  case_label(layer, rows, k) + " all to expert 201", worst);
    if (HasFatalFailure()) return;
    worst.print(case_label(layer, rows, k) + " all to expert 201");
}

// The same expert twice in a row (the router never does it, a caller could), and in every slot.
TEST_F(CudaMoePrefill, DuplicateExpertInARow) {
    const Shape s = kOddShapes[3];  // dim 160, ffn 96, 8 experts, k 5
    OwnedLayer owned = make_layer(s, true, false, 500);
    if (HasFatalFailure()) return;
    const int64_t rows = 33, k = s.k;
    const std::vector<float> x = random_x(rows, s.dim, 501);
    Routing routing = random_routing(rows, k, s.n_experts, 502);
    for (int64_t j = 0; j < k; ++j) routing.ids[static_cast<size_t>(j)] = 6;
    routing.ids[static_cast<size_t>(k + 1)] = routing.ids[static_cast<size_t>(k)];
    routing.ids[static_cast<size_t>(5 * k + 4)] = routing.ids[static_cast<size_t>(5 * k + 2)];
    Worst worst;
    run_and_check(owned.layer, x, rows, routing, k, false, {}, {},
                  case_label(owned.layer, rows, k) + " duplicates", worst);
    if (HasFatalFailure()) return;
    worst.print(case_label(owned.layer, rows, k) + " duplicates");
}

// Ids outside [0, n_experts) read no weights and make their row NaN, and only their row.
TEST_F(CudaMoePrefill, UnknownExpertGivesNaNRow) {
    uint64_t seed = 600;
    for (const Shape& s : {kOddShapes[0], kOddShapes[1]}) {
        for (const auto& formats : {kFormats[0], kFormats[2]}) {
            OwnedLayer owned = make_layer(s, formats[0], formats[1], seed += 2);
            if (HasFatalFailure()) return;
            const int64_t rows = 20;
            const std::vector<float> x = random_x(rows, s.dim, ++seed);
            Routing routing = random_routing(rows, s.k, s.n_experts, ++seed);
            add_unknown_ids(s.k, s.n_experts, routing);
            for (const bool accumulate : {false, true}) {
                Worst worst;
                run_and_check(owned.layer, x, rows, routing, s.k, accumulate, {}, {},
                              case_label(owned.layer, rows, s.k) + " unknown ids", worst);
                if (HasFatalFailure()) return;
            }
        }
    }
    // Every id unknown: no tiles at all, every row NaN.
    const Shape s = kOddShapes[0];
    OwnedLayer owned = make_layer(s, true, true, 650);
    if (HasFatalFailure()) return;
    const int64_t rows = 12;
    const std::vector<float> x = random_x(rows, s.dim, 651);
    Routing routing = random_routing(rows, s.k, s.n_experts, 652);
    std::fill(routing.ids.begin(), routing.ids.end(), -7);
    Worst worst;
    run_and_check(owned.layer, x, rows, routing, s.k, false, {}, {},
                  case_label(owned.layer, rows, s.k) + " all unknown", worst);
}

// Against the decode path and the unquantised experts (see the file comment).
TEST_F(CudaMoePrefill, AgreesWithDecodePath) {
    struct Case {
        bool qwen35;
        bool gate_up_w4, down_w4;
        int64_t rows;
    };
    uint64_t seed = 700;
    for (const Case& c : {Case{false, true, true, 33}, Case{false, false, true, 40},
                          Case{true, true, true, 64}, Case{true, true, false, 64}}) {
        OwnedLayer owned;
        Layer layer;
        if (c.qwen35) {
            layer = qwen35_layer(c.gate_up_w4, c.down_w4);
        } else {
            owned = make_layer(kOddShapes[3], c.gate_up_w4, c.down_w4, seed += 2);
            layer = owned.layer;
        }
        if (HasFatalFailure()) return;
        const int64_t rows = c.rows, k = c.qwen35 ? kQwen35.k : kOddShapes[3].k;
        const int64_t dim = layer.dim, ffn = layer.ffn;
        const std::vector<float> x = random_x(rows, dim, ++seed);
        const Routing routing = random_routing(rows, k, layer.n_experts, ++seed);
        const std::string label = case_label(layer, rows, k) + " vs decode";

        GpuResult prefill;
        run_gpu(layer, x, rows, routing, k, false, prefill);
        if (HasFatalFailure()) return;
        std::vector<float> decode;
        {
            DeviceInputs in;
            DeviceBuffer dscratch, dout;
            upload_inputs(x, routing, in);
            CUDA_OK(dscratch.alloc(cuda::moe_experts_scratch_bytes(rows, k, dim, ffn)));
            CUDA_OK(dout.alloc(static_cast<size_t>(rows * dim) * 4));
            CUDA_OK(cudaMemset(dout.as<void>(), 0xff, static_cast<size_t>(rows * dim) * 4));
            kestrel::testing::wait_for_host_copies();
            STATUS_OK(cuda::moe_experts(in.x.as<float>(), rows, in.ids.as<int32_t>(),
                                        in.weights.as<float>(), k, layer.gate_up->view,
                                        layer.down->view, layer.n_experts, ffn, dim,
                                        dscratch.as<void>(), false, dout.as<float>(), nullptr));
            CUDA_OK(cudaDeviceSynchronize());
            decode = download<float>(dout, static_cast<size_t>(rows * dim));
        }

        // The unquantised experts at the checked rows and columns.
        const std::vector<int64_t> rows_checked = c.qwen35 ? sample(rows, 13) : sample(rows, 1);
        const std::vector<int64_t> cols_checked = c.qwen35 ? sample(dim, 31) : sample(dim, 1);
        std::vector<double> reference(rows_checked.size() * cols_checked.size(), 0.0);
        for (size_t ri = 0; ri < rows_checked.size(); ++ri) {
            const int64_t t = rows_checked[ri];
            for (int64_t j = 0; j < k; ++j) {
                const int32_t e = routing.ids[static_cast<size_t>(t * k + j)];
                const ExpertWeights w = expert_weights(layer, e);
                std::vector<double> act(static_cast<size_t>(ffn));
                for (int64_t f = 0; f < ffn; ++f) {
                    double g = 0.0, u = 0.0;
                    for (int64_t i = 0; i < dim; ++i) {
                        const double a = x[static_cast<size_t>(t * dim + i)];
                        g += a * w.gate_up[static_cast<size_t>(f * dim + i)];
                        u += a * w.gate_up[static_cast<size_t>((ffn + f) * dim + i)];
                    }
                    act[static_cast<size_t>(f)] = silu(g) * u;
                }
                const double weight = routing.weights[static_cast<size_t>(t * k + j)];
                for (size_t ci = 0; ci < cols_checked.size(); ++ci) {
                    const int64_t n = cols_checked[ci];
                    double y = 0.0;
                    for (int64_t f = 0; f < ffn; ++f) {
                        y += act[static_cast<size_t>(f)] * w.down[static_cast<size_t>(n * ffn + f)];
                    }
                    reference[ri * cols_checked.size() + ci] += weight * y;
                }
            }
        }
        double prefill_sq = 0.0, decode_sq = 0.0, ref_sq = 0.0, prefill_max = 0.0, decode_max = 0.0;
        for (size_t ri = 0; ri < rows_checked.size(); ++ri) {
            for (size_t ci = 0; ci < cols_checked.size(); ++ci) {
                const size_t at = static_cast<size_t>(rows_checked[ri] * dim + cols_checked[ci]);
                const double ref = reference[ri * cols_checked.size() + ci];
                ASSERT_TRUE(std::isfinite(prefill.out[at]) && std::isfinite(decode[at])) << label;
                const double dp = prefill.out[at] - ref, dd = decode[at] - ref;
                prefill_sq += dp * dp;
                decode_sq += dd * dd;
                ref_sq += ref * ref;
                prefill_max = std::max(prefill_max, std::fabs(dp));
                decode_max = std::max(decode_max, std::fabs(dd));
            }
        }
        const double count = static_cast<double>(reference.size());
        const double prefill_rms = std::sqrt(prefill_sq / count);
        const double decode_rms = std::sqrt(decode_sq / count);
        std::printf(
            "%s: rms error vs unquantised: prefill %.3e, decode %.3e (reference rms %.3e); max "
            "%.3e, %.3e\n",
            label.c_str(), prefill_rms, decode_rms, std::sqrt(ref_sq / count), prefill_max,
            decode_max);
        EXPECT_GT(decode_rms, 0.0) << label;
        EXPECT_LE(prefill_rms, decode_rms) << label;
    }
}

// Captured once into a CUDA graph and replayed with new ids, weights and x in the same buffers:
// nothing in the launches may depend on the host seeing the ids.
TEST_F(CudaMoePrefill, GraphReplayWithNewRouting) {
    const Shape s = kOddShapes[1];
    OwnedLayer owned = make_layer(s, true, false, 800);
    if (HasFatalFailure()) return;
    const Layer& layer = owned.layer;
    const int64_t rows = 100, k = s.k;
    std::vector<float> x = random_x(rows, layer.dim, 801);
    Routing routing = random_routing(rows, k, layer.n_experts, 802);
    DeviceInputs in;
    DeviceBuffer dscratch, dout;
    upload_inputs(x, routing, in);
    const cuda::MoePrefillLayout layout =
        cuda::moe_prefill_scratch_layout(rows, k, layer.dim, layer.ffn, layer.n_experts);
    CUDA_OK(dscratch.alloc(layout.total));
    const size_t out_count = static_cast<size_t>(rows * layer.dim);
    CUDA_OK(dout.alloc(out_count * 4));

    CapturedGraph g;
    capture(moe_call(cuda::moe_experts_prefill, layer, rows, k, in, dscratch, dout), g);
    if (HasFatalFailure()) return;

    for (uint64_t replay = 0; replay < 3; ++replay) {
        x = random_x(rows, layer.dim, 810 + replay);
        routing = random_routing(rows, k, layer.n_experts, 820 + replay);
        if (replay == 1) std::fill(routing.ids.begin(), routing.ids.begin() + rows * k / 2, 3);
        copy_inputs(x, routing, in);
        replay_poisoned(g, dscratch, layout.total, dout, out_count * 4);
        if (HasFatalFailure()) return;
        GpuResult gpu;
        gpu.out = download<float>(dout, out_count);
        gpu.out_before.assign(out_count, 0.0f);
        download_scratch(dscratch, layout, rows * k, layer.dim, layer.ffn, layer.n_experts, gpu);
        Worst worst;
        check_against_twin(layer, x, rows, routing, k, gpu, {}, {},
                           case_label(layer, rows, k) + " replay " + std::to_string(replay), worst);
        if (HasFatalFailure()) return;
    }
}

TEST_F(CudaMoePrefill, RejectsBadArguments) {
    const Shape s = kOddShapes[0];
    OwnedLayer owned = make_layer(s, true, false, 900);
    if (HasFatalFailure()) return;
    const int64_t rows = 12;
    DeviceInputs in;
    DeviceBuffer dscratch, dout;
    alloc_zeroed_inputs(rows, s.k, s.dim, in);
    CUDA_OK(dscratch.alloc(cuda::moe_prefill_scratch_bytes(rows, s.k, s.dim, s.ffn, s.n_experts)));
    CUDA_OK(dout.alloc(static_cast<size_t>(rows * s.dim) * 4));
    if (HasFatalFailure()) return;
    const MoeCall good =
        moe_call(cuda::moe_experts_prefill, owned.layer, rows, s.k, in, dscratch, dout);
    run_good_call(good);
    if (HasFatalFailure()) return;
    std::vector<MoeCall> bad = bad_calls(good);
    // And the prefill's own limits.
    bad.push_back(changed(good, [](MoeCall& c) { c.n_experts = cuda::kMoePrefillMaxExperts + 1; }));
    bad.push_back(changed(good, [](MoeCall& c) { c.rows = 1 << 22; }));  // beyond the GEMM grids
    for (size_t i = 0; i < bad.size(); ++i) {
        EXPECT_EQ(bad[i].run().code(), StatusCode::kInvalidArgument) << "bad call " << i;
    }
}

#endif  // KESTREL_HAS_CUDA

}  // namespace
}  // namespace kestrel
