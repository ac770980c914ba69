// What the routed-experts tests (tests/unit/cuda_moe_experts_test.cpp for the decode kernels,
// tests/unit/cuda_moe_prefill_test.cpp for the prefill GEMMs) share: random W4 / W8 expert stacks
// on the host and the device, a layer of two stacks, random x and routing, and the fixture that
// makes the Qwen3.5 stacks once per suite. Needs the CUDA build, like cuda_test_support.h.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/half.h"
#include "ops/cuda/moe_experts.h"
#include "ops/weight_format.h"
#include "ops/weight_format_w8.h"

#include "cuda_test_support.h"
#include "cuda_w4_test_support.h"
#include "cuda_w8_test_support.h"

namespace kestrel::testing::moe {

// ---- weights -------------------------------------------------------------------------------

// One stack of expert matrices on the host, W4 or W8, and what the twins need of it.
struct HostStack {
    bool is_w4 = true;
    W4Weights w4;
    W8Weights w8;

    int64_t rows() const { return is_w4 ? w4.n : w8.n; }
    int64_t cols() const { return is_w4 ? w4.k : w8.k; }

    // Rows [begin, begin + count), copied.
    HostStack slice(int64_t begin, int64_t count) const {
        HostStack s;
        s.is_w4 = is_w4;
        if (is_w4) {
            const int64_t bytes = w4.k / 2, groups = w4.groups(), supers2 = w4.supers() * 2;
            s.w4.n = count;
            s.w4.k = w4.k;
            s.w4.qs.assign(w4.qs.begin() + begin * bytes, w4.qs.begin() + (begin + count) * bytes);
            s.w4.group_scales.assign(w4.group_scales.begin() + begin * groups,
                                     w4.group_scales.begin() + (begin + count) * groups);
            s.w4.super_scales.assign(w4.super_scales.begin() + begin * supers2,
                                     w4.super_scales.begin() + (begin + count) * supers2);
        } else {
            const int64_t pairs2 = w8.groups() * 2;
            s.w8.n = count;
            s.w8.k = w8.k;
            s.w8.qs.assign(w8.qs.begin() + begin * w8.k, w8.qs.begin() + (begin + count) * w8.k);
            s.w8.scale_min.assign(w8.scale_min.begin() + begin * pairs2,
                                  w8.scale_min.begin() + (begin + count) * pairs2);
        }
        return s;
    }

    // Rows [begin, begin + count) as fp32 [count, cols()]: w4_dequantize / w8_dequantize of a copy.
    std::vector<float> dequantize_rows(int64_t begin, int64_t count) const {
        const HostStack s = slice(begin, count);
        return is_w4 ? w4_dequantize(s.w4) : w8_dequantize(s.w8);
    }

    // y [rows()] = this matrix times one row of activations a [cols() / 32]; magnitude as the
    // twins define it (the scale of their rounding).
    void matvec(const Q8Block* a, float* y, float* magnitude) const {
        if (is_w4) {
            matvec_w4a8(w4, a, 1, y, magnitude);
        } else {
            matvec_w8a8(w8, a, 1, y, magnitude);
        }
    }

    // The weight scale * q - min, exactly (double holds the fp32 products and difference).
    double weight(int64_t row, int64_t col) const {
        const int64_t g = col / 32;
        if (is_w4) {
            const W4GroupScale gs = w4_group_scale(w4, row, g);
            return static_cast<double>(gs.scale) * w4_q(w4, row, col) - static_cast<double>(gs.min);
        }
        const uint16_t* sm = w8.scale_min.data() + (row * w8.groups() + g) * 2;
        return static_cast<double>(fp16_to_fp32(sm[0])) *
                   w8.qs[static_cast<size_t>(row * w8.k + col)] -
               static_cast<double>(fp16_to_fp32(sm[1]));
    }
};

struct DeviceW8 {
    DeviceBuffer qs, scale_min;
};

// A stack on both sides.
struct Stack {
    HostStack host;
    DeviceW4 w4;
    DeviceW8 w8;
    cuda::ExpertStackView view;
};

// A random stack [rows, cols] (random_w4 / random_w8 from seed), uploaded. Check HasFatalFailure
// after it: a failed upload asserts.
inline std::unique_ptr<Stack> make_stack(bool is_w4, int64_t rows, int64_t cols, uint64_t seed) {
    auto s = std::make_unique<Stack>();
    s->host.is_w4 = is_w4;
    s->view.is_w4 = is_w4;
    if (is_w4) {
        s->host.w4 = random_w4(rows, cols, seed);
        upload_w4(s->host.w4, s->w4);
        s->view.w4 = s->w4.view;
    } else {
        s->host.w8 = random_w8(rows, cols, seed);
        upload(s->w8.qs, s->host.w8.qs);
        upload(s->w8.scale_min, s->host.w8.scale_min);
        s->view.w8 = {s->w8.qs.as<int8_t>(), s->w8.scale_min.as<uint32_t>(), rows, cols};
    }
    return s;
}

inline const char* format_name(bool is_w4) {
    return is_w4 ? "W4" : "W8";
}

// A layer's two stacks (not owned).
struct Layer {
    int64_t dim = 0, ffn = 0, n_experts = 0;
    Stack* gate_up = nullptr;  // [n_experts 2 ffn, dim]
    Stack* down = nullptr;     // [n_experts dim, ffn]
};

struct Shape {
    int64_t dim, ffn, n_experts, k;
};

// Qwen3.5-35B-A3B's routed experts.
inline constexpr Shape kQwen35 = {2048, 512, 256, 8};

inline std::string case_label(const Layer& layer, int64_t rows, int64_t k) {
    return std::string(format_name(layer.gate_up->host.is_w4)) + "/" +
           format_name(layer.down->host.is_w4) + " dim " + std::to_string(layer.dim) + " ffn " +
           std::to_string(layer.ffn) + " experts " + std::to_string(layer.n_experts) + " k " +
           std::to_string(k) + " rows " + std::to_string(rows);
}

// ---- inputs --------------------------------------------------------------------------------

inline std::vector<float> random_x(int64_t rows, int64_t dim, uint64_t seed) {
    std::mt19937 rng(static_cast<uint32_t>(seed));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(rows * dim));
    for (float& v : x) v = normal(rng);
    for (size_t i = 17; i < x.size(); i += 997)
        x[i] *= 30.0f;  // outliers, as real activations have
    return x;
}

struct Routing {
    std::vector<int32_t> ids;    // [rows, k]
    std::vector<float> weights;  // [rows, k]
};

// Per row, k distinct experts (as top-k gives) with positive weights summing to about 1.
inline Routing random_routing(int64_t rows, int64_t k, int64_t n_experts, uint64_t seed) {
    std::mt19937 rng(static_cast<uint32_t>(seed));
    std::uniform_real_distribution<float> uniform(0.05f, 1.0f);
    Routing routing;
    std::vector<int32_t> pool(static_cast<size_t>(n_experts));
    for (int64_t t = 0; t < rows; ++t) {
        std::iota(pool.begin(), pool.end(), 0);
        for (int64_t j = 0; j < k; ++j) {
            const int64_t pick =
                j + static_cast<int64_t>(rng() % static_cast<uint32_t>(n_experts - j));
            std::swap(pool[static_cast<size_t>(j)], pool[static_cast<size_t>(pick)]);
            routing.ids.push_back(pool[static_cast<size_t>(j)]);
        }
        std::vector<float> w(static_cast<size_t>(k));
        float sum = 0.0f;
        for (float& v : w) sum += (v = uniform(rng));
        for (float v : w) routing.weights.push_back(v / sum);
    }
    return routing;
}

inline bool known_expert(int32_t id, int64_t n_experts) {
    return id >= 0 && id < n_experts;
}

// Ids outside [0, n_experts) in rows 1 to 3 (of at least 4): row 1's last slot -1, row 2's first
// n_experts, row 3's first two INT32_MIN and INT32_MAX.
inline void add_unknown_ids(int64_t k, int64_t n_experts, Routing& routing) {
    routing.ids[static_cast<size_t>(1 * k + k - 1)] = -1;
    routing.ids[static_cast<size_t>(2 * k)] = static_cast<int32_t>(n_experts);
    routing.ids[static_cast<size_t>(3 * k)] = std::numeric_limits<int32_t>::min();
    routing.ids[static_cast<size_t>(3 * k + 1)] = std::numeric_limits<int32_t>::max();
}

// ---- the GPU side --------------------------------------------------------------------------

// A launcher's x, ids and weights on the device.
struct DeviceInputs {
    DeviceBuffer x, ids, weights;
};

inline void upload_inputs(const std::vector<float>& x, const Routing& routing, DeviceInputs& d) {
    upload(d.x, x);
    upload(d.ids, routing.ids);
    upload(d.weights, routing.weights);
}

// New values into the same buffers (a captured graph's pointers must not change).
inline void copy_inputs(const std::vector<float>& x, const Routing& routing, DeviceInputs& d) {
    copy_to_device(d.x.as<float>(), x);
    copy_to_device(d.ids.as<int32_t>(), routing.ids);
    copy_to_device(d.weights.as<float>(), routing.weights);
}

// A stream, the graph captured on it and its executable, destroyed however the test returns.
struct CapturedGraph {
    cudaStream_t stream = nullptr;
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    CapturedGraph() = default;
    CapturedGraph(const CapturedGraph&) = delete;
    CapturedGraph& operator=(const CapturedGraph&) = delete;
    ~CapturedGraph() {
        if (exec != nullptr) (void)cudaGraphExecDestroy(exec);
        if (graph != nullptr) (void)cudaGraphDestroy(graph);
        if (stream != nullptr) (void)cudaStreamDestroy(stream);
    }
};

// ---- one launcher call ------------------------------------------------------------------

// What the launchers (cuda::moe_experts, cuda::moe_experts_prefill) share: their signature.
using MoeLauncher = Status (*)(const float* x, int64_t rows, const int32_t* ids,
                               const float* weights, int64_t k,
                               const cuda::ExpertStackView& gate_up,
                               const cuda::ExpertStackView& down, int64_t n_experts, int64_t ffn,
                               int64_t dim, void* scratch, bool accumulate, float* out,
                               cudaStream_t stream);

// One call's arguments (accumulate off), to capture or to change one at a time.
struct MoeCall {
    MoeLauncher launch;
    const float* x;
    int64_t rows;
    const int32_t* ids;
    const float* weights;
    int64_t k;
    cuda::ExpertStackView gate_up, down;
    int64_t n_experts, ffn, dim;
    void* scratch;
    float* out;

    Status run(cudaStream_t stream = nullptr) const {
        return launch(x, rows, ids, weights, k, gate_up, down, n_experts, ffn, dim, scratch,
                      /*accumulate=*/false, out, stream);
    }
};

inline MoeCall moe_call(MoeLauncher launch, const Layer& layer, int64_t rows, int64_t k,
                        const DeviceInputs& in, const DeviceBuffer& scratch,
                        const DeviceBuffer& out) {
    return {launch,
            in.x.as<float>(),
            rows,
            in.ids.as<int32_t>(),
            in.weights.as<float>(),
            k,
            layer.gate_up->view,
            layer.down->view,
            layer.n_experts,
            layer.ffn,
            layer.dim,
            scratch.as<void>(),
            out.as<float>()};
}

// Zeroed x [rows, dim] (and 16 bytes more, so that x + 1 stays inside it), ids and weights
// [rows, k], for the argument checks.
inline void alloc_zeroed_inputs(int64_t rows, int64_t k, int64_t dim, DeviceInputs& in) {
    const size_t x_bytes = static_cast<size_t>(rows * dim) * 4 + 16;
    const size_t slot_bytes = static_cast<size_t>(rows * k) * 4;
    CUDA_OK(in.x.alloc(x_bytes));
    CUDA_OK(in.ids.alloc(slot_bytes));
    CUDA_OK(in.weights.alloc(slot_bytes));
    CUDA_OK(cudaMemset(in.x.as<void>(), 0, x_bytes));
    CUDA_OK(cudaMemset(in.ids.as<void>(), 0, slot_bytes));
    CUDA_OK(cudaMemset(in.weights.as<void>(), 0, slot_bytes));
    kestrel::testing::wait_for_host_copies();
}

// The good call runs, and so does it with no rows (which launches nothing).
inline void run_good_call(const MoeCall& good) {
    STATUS_OK(good.run());
    CUDA_OK(cudaDeviceSynchronize());
    MoeCall zero_rows = good;
    zero_rows.rows = 0;
    STATUS_OK(zero_rows.run());
}

// The good call with one change.
template <class Change>
MoeCall changed(MoeCall call, Change change) {
    change(call);
    return call;
}

// The calls both launchers reject (kInvalidArgument): good with one argument wrong each. good:
// 8 experts, gate_up in W4, down in W8.
inline std::vector<MoeCall> bad_calls(const MoeCall& good) {
    std::vector<MoeCall> bad;
    const auto with = [&](auto change) { bad.push_back(changed(good, change)); };
    with([](MoeCall& c) { c.rows = -1; });
    with([](MoeCall& c) { c.k = 0; });
    with([](MoeCall& c) { c.k = cuda::kMoeMaxTopK + 1; });
    with([](MoeCall& c) { c.n_experts = 0; });
    with([](MoeCall& c) { c.dim = 48; });                    // not a multiple of 32
    with([](MoeCall& c) { c.ffn = 48; });                    // not a multiple of 32
    with([](MoeCall& c) { c.n_experts = 7; });               // stacks hold 8 experts
    with([](MoeCall& c) { std::swap(c.gate_up, c.down); });  // shapes swapped
    with([](MoeCall& c) { c.gate_up.is_w4 = false; });       // W8 view left empty
    with([](MoeCall& c) { c.down.w8.qs += 8; });             // not 16-byte aligned
    with([](MoeCall& c) { c.gate_up.w4.super_scales = nullptr; });
    with([](MoeCall& c) { c.x = nullptr; });
    with([](MoeCall& c) { c.x += 1; });  // not 16-byte aligned
    with([](MoeCall& c) { c.ids = nullptr; });
    with([](MoeCall& c) { c.weights = nullptr; });
    with([](MoeCall& c) { c.scratch = nullptr; });
    with([](MoeCall& c) { c.out = nullptr; });
    return bad;
}

// Captures call (accumulate off) on a new stream of g and instantiates it. Nothing the launcher
// queries on a first call (moe_experts: the SM count, gemv_sm_count) may happen inside the
// capture: query it before.
inline void capture(const MoeCall& call, CapturedGraph& g) {
    CUDA_OK(cudaStreamCreateWithFlags(&g.stream, cudaStreamNonBlocking));
    CUDA_OK(cudaStreamBeginCapture(g.stream, cudaStreamCaptureModeThreadLocal));
    const Status captured = call.run(g.stream);
    CUDA_OK(cudaStreamEndCapture(g.stream, &g.graph));
    ASSERT_TRUE(captured.ok()) << captured.message();
    CUDA_OK(cudaGraphInstantiate(&g.exec, g.graph, 0));
}

// Poisons scratch and out (0xff: NaN floats, -1 ints) and replays g, then waits for it.
inline void replay_poisoned(const CapturedGraph& g, DeviceBuffer& scratch, size_t scratch_bytes,
                            DeviceBuffer& out, size_t out_bytes) {
    CUDA_OK(cudaMemsetAsync(scratch.as<void>(), 0xff, scratch_bytes, g.stream));
    CUDA_OK(cudaMemsetAsync(out.as<void>(), 0xff, out_bytes, g.stream));
    CUDA_OK(cudaGraphLaunch(g.exec, g.stream));
    CUDA_OK(cudaStreamSynchronize(g.stream));
}

// The fixture: skips without a GPU; the Qwen3.5 stacks in both formats (1.3 GB on each side),
// made once per suite (same seeds in every suite) and freed after it.
class CudaMoeTest : public ::testing::Test {
protected:
    void SetUp() override {
        if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
    }

    struct Qwen35Stacks {
        std::unique_ptr<Stack> gate_up[2], down[2];  // [is_w4]
    };

    static Qwen35Stacks& qwen35() {
        if (qwen35_ == nullptr) {
            qwen35_ = new Qwen35Stacks;
            const Shape s = kQwen35;
            for (const bool w4 : {true, false}) {
                qwen35_->gate_up[w4] = make_stack(w4, s.n_experts * 2 * s.ffn, s.dim, w4 ? 11 : 12);
                qwen35_->down[w4] = make_stack(w4, s.n_experts * s.dim, s.ffn, w4 ? 13 : 14);
            }
        }
        return *qwen35_;
    }

    static Layer qwen35_layer(bool gate_up_w4, bool down_w4) {
        Qwen35Stacks& stacks = qwen35();
        return {kQwen35.dim, kQwen35.ffn, kQwen35.n_experts, stacks.gate_up[gate_up_w4].get(),
                stacks.down[down_w4].get()};
    }

    static void TearDownTestSuite() {
        delete qwen35_;
        qwen35_ = nullptr;
    }

    static inline Qwen35Stacks* qwen35_ = nullptr;
};

}  // namespace kestrel::testing::moe
