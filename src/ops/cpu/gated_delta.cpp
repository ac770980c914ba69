// The gated delta rule (Gated DeltaNet, Yang et al. 2024; Qwen3.5 "linear_attention" layers),
// in its two forms. Both start from and update the sequence's state S [n_v_heads, dk, dv]:
//
//   recurrent (decode; HF torch_recurrent_gated_delta_rule), per token t and value head h:
//     S = exp(g_t) S;   delta = beta_t (v_t - S^T k_t);   S = S + k_t delta^T;   o_t = S^T q_t
//
//   chunked (prefill; HF torch_chunk_gated_delta_rule, FLA's chunk_gated_delta_rule), per chunk
//   of L tokens with G_r = g_1 + ... + g_r inside the chunk:
//     A[r, s]  = beta_r (k_r . k_s) exp(G_r - G_s)                    for s < r  (else 0)
//     U = (I + A)^-1 diag(beta) V;   W = (I + A)^-1 diag(beta exp(G)) K   (forward substitution)
//     V' = U - W S
//     o_r = exp(G_r) q_r^T S + sum_{s <= r} (q_r . k_s) exp(G_r - G_s) V'_s
//     S   = exp(G_L) S + sum_r exp(G_L - G_r) k_r V'_r^T
//
// The two are the same function of the inputs (the chunked form is the recurrence unrolled over
// a chunk, the WY representation); in fp32 they agree to rounding. q is scaled by dk^-0.5 here.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/cpu_ops.h"
#include "ops/cpu/parallel.h"

namespace kestrel::cpu {

namespace {

// One value head's inputs over the T tokens, gathered contiguous: q (normalised, scaled) and k
// (normalised) of its key head [T, dk], v [T, dv], g and beta [T].
struct HeadInputs {
    std::vector<float> q, k, v, g, beta;
};

void recurrent_head(const HeadInputs& in, int64_t rows, int64_t dk, int64_t dv, float* s, float* out,
                    int64_t out_stride) {
    std::vector<float> delta(static_cast<size_t>(dv));
    for (int64_t t = 0; t < rows; ++t) {
        const float* q = in.q.data() + t * dk;
        const float* k = in.k.data() + t * dk;
        const float* v = in.v.data() + t * dv;
        const float decay = std::exp(in.g[t]);
        for (int64_t i = 0; i < dk * dv; ++i) s[i] *= decay;
        for (int64_t j = 0; j < dv; ++j) delta[j] = 0.0f;
        for (int64_t i = 0; i < dk; ++i)
            for (int64_t j = 0; j < dv; ++j) delta[j] += s[i * dv + j] * k[i];  // S^T k
        for (int64_t j = 0; j < dv; ++j) delta[j] = (v[j] - delta[j]) * in.beta[t];
        for (int64_t i = 0; i < dk; ++i)
            for (int64_t j = 0; j < dv; ++j) s[i * dv + j] += k[i] * delta[j];
        float* o = out + t * out_stride;
        for (int64_t j = 0; j < dv; ++j) o[j] = 0.0f;
        for (int64_t i = 0; i < dk; ++i)
            for (int64_t j = 0; j < dv; ++j) o[j] += s[i * dv + j] * q[i];
    }
}

void chunked_head(const HeadInputs& in, int64_t rows, int64_t dk, int64_t dv, int64_t c, float* s, float* out,
                  int64_t out_stride) {
    std::vector<float> G(static_cast<size_t>(c)), A(static_cast<size_t>(c * c)), QK(static_cast<size_t>(c * c));
    std::vector<float> U(static_cast<size_t>(c * dv)), W(static_cast<size_t>(c * dk));
    for (int64_t t0 = 0; t0 < rows; t0 += c) {
        const int64_t len = std::min(c, rows - t0);
        const float* q = in.q.data() + t0 * dk;
        const float* k = in.k.data() + t0 * dk;
        const float* v = in.v.data() + t0 * dv;
        const float* beta = in.beta.data() + t0;
        float cumulative = 0.0f;
        for (int64_t r = 0; r < len; ++r) G[r] = cumulative += in.g[t0 + r];
        // A (strictly lower) and the decayed q.k (lower, diagonal included).
        for (int64_t r = 0; r < len; ++r) {
            for (int64_t j = 0; j <= r; ++j) {
                const float decay = std::exp(G[r] - G[j]);
                A[r * c + j] = j < r ? beta[r] * dot(k + r * dk, k + j * dk, dk) * decay : 0.0f;
                QK[r * c + j] = dot(q + r * dk, k + j * dk, dk) * decay;
            }
        }
        // Forward substitution: U = (I + A)^-1 diag(beta) V, W = (I + A)^-1 diag(beta exp(G)) K.
        for (int64_t r = 0; r < len; ++r) {
            float* u = U.data() + r * dv;
            float* w = W.data() + r * dk;
            const float bg = beta[r] * std::exp(G[r]);
            for (int64_t j = 0; j < dv; ++j) u[j] = beta[r] * v[r * dv + j];
            for (int64_t i = 0; i < dk; ++i) w[i] = bg * k[r * dk + i];
            for (int64_t j2 = 0; j2 < r; ++j2) {
                const float a = A[r * c + j2];
                for (int64_t j = 0; j < dv; ++j) u[j] -= a * U[j2 * dv + j];
                for (int64_t i = 0; i < dk; ++i) w[i] -= a * W[j2 * dk + i];
            }
        }
        // V' = U - W S (in place in U), and the output's read of the chunk-start state.
        for (int64_t r = 0; r < len; ++r) {
            float* u = U.data() + r * dv;
            float* o = out + (t0 + r) * out_stride;
            const float eg = std::exp(G[r]);
            for (int64_t j = 0; j < dv; ++j) o[j] = 0.0f;
            for (int64_t i = 0; i < dk; ++i) {
                const float wi = W[r * dk + i];
                const float qi = q[r * dk + i] * eg;
                const float* srow = s + i * dv;
                for (int64_t j = 0; j < dv; ++j) {
                    u[j] -= wi * srow[j];
                    o[j] += qi * srow[j];
                }
            }
        }
        // The intra-chunk part of the output.
        for (int64_t r = 0; r < len; ++r) {
            float* o = out + (t0 + r) * out_stride;
            for (int64_t j2 = 0; j2 <= r; ++j2) {
                const float a = QK[r * c + j2];
                for (int64_t j = 0; j < dv; ++j) o[j] += a * U[j2 * dv + j];
            }
        }
        // The state at the chunk's end.
        const float g_last = G[len - 1];
        const float chunk_decay = std::exp(g_last);
        for (int64_t i = 0; i < dk * dv; ++i) s[i] *= chunk_decay;
        for (int64_t r = 0; r < len; ++r) {
            const float d = std::exp(g_last - G[r]);
            const float* u = U.data() + r * dv;
            for (int64_t i = 0; i < dk; ++i) {
                const float ki = k[r * dk + i] * d;
                for (int64_t j = 0; j < dv; ++j) s[i * dv + j] += ki * u[j];
            }
        }
    }
}

}  // namespace

void gated_delta_rule(const float* qkv, const float* a, const float* b, const float* a_neg, const float* dt_bias,
                      int64_t rows, const GatedDeltaParams& p, const RecurrentLayerView& state, float* out,
                      int threads) {
    const int64_t nk = p.n_k_heads, nv = p.n_v_heads, dk = p.k_head_dim, dv = p.v_head_dim;
    const int64_t ratio = nv / nk;
    const int64_t key_dim = nk * dk;
    const int64_t row_stride = 2 * key_dim + nv * dv;  // q | k | v
    // HF: l2norm(eps 1e-6), then query * dk^-0.5.
    const float scale = 1.0f / std::sqrt(static_cast<float>(dk));
    constexpr float kL2Eps = 1e-6f;
    parallel_for(nv, threads, rows * dk * dv * 4, [&](int64_t begin, int64_t end) {
        HeadInputs in;
        in.q.resize(static_cast<size_t>(rows * dk));
        in.k.resize(in.q.size());
        in.v.resize(static_cast<size_t>(rows * dv));
        in.g.resize(static_cast<size_t>(rows));
        in.beta.resize(in.g.size());
        for (int64_t h = begin; h < end; ++h) {
            const int64_t kh = p.order == GdnHeadOrder::kGrouped ? h / ratio : h % nk;
            for (int64_t t = 0; t < rows; ++t) {
                const float* row = qkv + t * row_stride;
                l2_norm(row + kh * dk, 1, dk, kL2Eps, in.q.data() + t * dk);
                for (int64_t i = 0; i < dk; ++i) in.q[t * dk + i] *= scale;
                l2_norm(row + key_dim + kh * dk, 1, dk, kL2Eps, in.k.data() + t * dk);
                std::copy(row + 2 * key_dim + h * dv, row + 2 * key_dim + (h + 1) * dv, in.v.begin() + t * dv);
                // HF: beta = b.sigmoid(); g = -A_log.exp() * softplus(a + dt_bias)
                in.beta[t] = sigmoid(b[t * nv + h]);
                in.g[t] = a_neg[h] * softplus(a[t * nv + h] + dt_bias[h]);
            }
            float* s = state.state + h * dk * dv;
            if (p.chunk > 0) {
                chunked_head(in, rows, dk, dv, p.chunk, s, out + h * dv, nv * dv);
            } else {
                recurrent_head(in, rows, dk, dv, s, out + h * dv, nv * dv);
            }
        }
    });
}

}  // namespace kestrel::cpu
