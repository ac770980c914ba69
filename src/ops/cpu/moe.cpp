// Mixture of experts (Qwen3.5-MoE): softmax top-k routing and the routed SwiGLU experts.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "ops/cpu/cpu_ops.h"

namespace kestrel::cpu {

// softmax(x) over n router logits in our own summation order, which the CUDA router
// (cuda/qwen35_ops.cu) computes bit for bit with a warp's xor shuffles: max; e_i = exp(x_i - max);
// the sum of each 32 consecutive e (zeros past n) as a butterfly, 16 pairs 16 apart, then 8 pairs
// 8 apart, ... 1; those sums added in order; p_i = e_i * (1 / sum). (A sum in expert order was one
// GPU thread's chain of 256 dependent adds, ~0.6 us of each MoE layer's decode step.)
void router_softmax(float* x, int64_t n) {
    float max_value = x[0];
    for (int64_t i = 1; i < n; ++i) max_value = std::max(max_value, x[i]);
    for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i] - max_value);
    float sum = 0.0f;
    for (int64_t first = 0; first < n; first += 32) {
        float lanes[32];
        for (int64_t l = 0; l < 32; ++l) lanes[l] = first + l < n ? x[first + l] : 0.0f;
        for (int offset = 16; offset > 0; offset /= 2) {
            for (int l = 0; l < offset; ++l) lanes[l] = lanes[l] + lanes[l + offset];
        }
        sum += lanes[0];
    }
    const float inv_sum = 1.0f / sum;
    for (int64_t i = 0; i < n; ++i) x[i] *= inv_sum;
}

// HF Qwen3_5MoeTopKRouter: probs = softmax(logits) over every expert (fp32), top-k of probs,
// divided by their sum. (transformers 5 renormalises unconditionally; Qwen3.5 configs set
// norm_topk_prob = true, so older code paths that read the flag agree.) With shared_gate, slot k
// is the shared expert (id n_experts) weighted by sigmoid(shared_gate[t]), as
// Qwen3_5MoeSparseMoeBlock weights the shared expert's output.
void moe_route(const float* logits, int64_t rows, int64_t n_experts, int64_t k,
               const float* shared_gate, int32_t* ids, float* weights) {
    std::vector<float> probs(static_cast<size_t>(n_experts));
    std::vector<int32_t> order(static_cast<size_t>(n_experts));
    const int64_t slots = shared_gate != nullptr ? k + 1 : k;
    for (int64_t t = 0; t < rows; ++t) {
        std::copy(logits + t * n_experts, logits + (t + 1) * n_experts, probs.begin());
        router_softmax(probs.data(), n_experts);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return probs[a] > probs[b]; });
        float sum = 0.0f;
        for (int64_t j = 0; j < k; ++j) sum += probs[order[j]];
        for (int64_t j = 0; j < k; ++j) {
            ids[t * slots + j] = order[j];
            weights[t * slots + j] = probs[order[j]] / sum;
        }
        if (shared_gate != nullptr) {
            ids[t * slots + k] = static_cast<int32_t>(n_experts);
            weights[t * slots + k] = sigmoid(shared_gate[t]);
        }
    }
}

// Experts run one at a time over the rows routed to them (so each expert's weights are read
// once per call), then each row sums its k weighted outputs in j order in fp32 and adds the sum
// to out. A row's result does not depend on which other rows share the call.
void moe_experts(const float* x, int64_t rows, const int32_t* ids, const float* weights, int64_t k,
                 const MoeExpertWeights& e, float* out, int threads) {
    const int64_t d = e.dim, f = e.ffn;
    std::vector<float> routed(static_cast<size_t>(rows * k * d));  // [T, k, d], weighted outputs
    std::vector<float> xs, gate, up, act, y;
    std::vector<int64_t> slots;  // t * k + j of the rows routed to this expert
    for (int64_t expert = 0; expert < e.n_experts; ++expert) {
        slots.clear();
        for (int64_t i = 0; i < rows * k; ++i)
            if (ids[i] == expert) slots.push_back(i);
        if (slots.empty()) continue;
        const int64_t n = static_cast<int64_t>(slots.size());
        xs.resize(static_cast<size_t>(n * d));
        for (int64_t r = 0; r < n; ++r) std::copy(x + (slots[r] / k) * d, x + (slots[r] / k + 1) * d, xs.begin() + r * d);
        gate.resize(static_cast<size_t>(n * f));
        up.resize(gate.size());
        act.resize(gate.size());
        y.resize(static_cast<size_t>(n * d));
        linear(xs.data(), n, weight_rows(*e.gate_up, expert * 2 * f, f), gate.data(), threads);
        linear(xs.data(), n, weight_rows(*e.gate_up, expert * 2 * f + f, f), up.data(), threads);
        silu_and_mul(gate.data(), up.data(), n * f, act.data());
        linear(act.data(), n, weight_rows(*e.down, expert * d, d), y.data(), threads);
        for (int64_t r = 0; r < n; ++r) {
            const float w = weights[slots[r]];
            float* dst = routed.data() + slots[r] * d;
            for (int64_t i = 0; i < d; ++i) dst[i] = y[r * d + i] * w;
        }
    }
    for (int64_t t = 0; t < rows; ++t) {
        float* o = out + t * d;
        for (int64_t i = 0; i < d; ++i) {
            float sum = 0.0f;
            for (int64_t j = 0; j < k; ++j) sum += routed[static_cast<size_t>((t * k + j) * d + i)];
            o[i] += sum;
        }
    }
}

}  // namespace kestrel::cpu
