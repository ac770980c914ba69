// Linear layers: y [T, N] = x [T, K] · W^T, W [N, K] row-major fp32.
//
// By far most of the CPU time is spent here (and in the tied lm_head, a [262144, 640] linear).
// The loop is tiled so a weight block stays in cache while 4 rows of x stream past it, and each
// output is the same dot() (lane l sums k % 4 == l in order), so tiling never changes a result.
#include <algorithm>

#include "ops/cpu/cpu_ops.h"
#include "ops/cpu/parallel.h"

namespace kestrel::cpu {

namespace {

// Weight rows per cache block: 16 rows of K = 2048 floats is 128 KiB (L2).
constexpr int64_t kWeightBlock = 16;

// y[t][n] for 4 rows of x and 2 rows of W at once: 8 accumulators, each in dot()'s order.
inline void kernel_4x2(const float* x, int64_t ldx, const float* w0, const float* w1, int64_t k, float* y,
                       int64_t ldy) {
    F8 a00 = {}, a01 = {}, a10 = {}, a11 = {}, a20 = {}, a21 = {}, a30 = {}, a31 = {};
    const float* x0 = x;
    const float* x1 = x + ldx;
    const float* x2 = x + 2 * ldx;
    const float* x3 = x + 3 * ldx;
    int64_t i = 0;
    for (; i + kLanes <= k; i += kLanes) {
        const F8 v0 = load8(w0 + i), v1 = load8(w1 + i);
        const F8 u0 = load8(x0 + i), u1 = load8(x1 + i), u2 = load8(x2 + i), u3 = load8(x3 + i);
        a00 += u0 * v0; a01 += u0 * v1;
        a10 += u1 * v0; a11 += u1 * v1;
        a20 += u2 * v0; a21 += u2 * v1;
        a30 += u3 * v0; a31 += u3 * v1;
    }
    for (int64_t l = 0; i < k; ++i, ++l) {
        a00[l] += x0[i] * w0[i]; a01[l] += x0[i] * w1[i];
        a10[l] += x1[i] * w0[i]; a11[l] += x1[i] * w1[i];
        a20[l] += x2[i] * w0[i]; a21[l] += x2[i] * w1[i];
        a30[l] += x3[i] * w0[i]; a31[l] += x3[i] * w1[i];
    }
    y[0] = reduce8(a00); y[1] = reduce8(a01);
    y[ldy] = reduce8(a10); y[ldy + 1] = reduce8(a11);
    y[2 * ldy] = reduce8(a20); y[2 * ldy + 1] = reduce8(a21);
    y[3 * ldy] = reduce8(a30); y[3 * ldy + 1] = reduce8(a31);
}

// Output columns [n_begin, n_end) for every row.
KESTREL_HOT_LOOP void linear_columns(const float* x, int64_t rows, const Weight& w, float* y, int64_t n_begin, int64_t n_end) {
    const int64_t k = w.in;
    const int64_t n_total = w.out;
    for (int64_t nb = n_begin; nb < n_end; nb += kWeightBlock) {
        const int64_t ne = std::min(n_end, nb + kWeightBlock);
        int64_t t = 0;
        for (; t + 4 <= rows; t += 4) {
            int64_t n = nb;
            for (; n + 2 <= ne; n += 2)
                kernel_4x2(x + t * k, k, w.f32() + n * k, w.f32() + (n + 1) * k, k, y + t * n_total + n, n_total);
            for (; n < ne; ++n)
                for (int64_t r = t; r < t + 4; ++r) y[r * n_total + n] = dot(x + r * k, w.f32() + n * k, k);
        }
        for (; t < rows; ++t)
            for (int64_t n = nb; n < ne; ++n) y[t * n_total + n] = dot(x + t * k, w.f32() + n * k, k);
    }
}

}  // namespace

void linear(const float* x, int64_t rows, const Weight& w, float* y, int threads) {
    // Split over output columns: decode (one row) parallelises too, and each thread streams its
    // own slice of the weight, the dominant memory traffic.
    const int64_t n_blocks = (w.out + kWeightBlock - 1) / kWeightBlock;
    parallel_for(n_blocks, threads, rows * w.in * kWeightBlock, [&](int64_t begin, int64_t end) {
        linear_columns(x, rows, w, y, begin * kWeightBlock, std::min(w.out, end * kWeightBlock));
    });
}

}  // namespace kestrel::cpu
