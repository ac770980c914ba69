#include "ops/kv_tq4.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/half.h"

namespace kestrel {
namespace {

double normal_pdf(double x) {
    return std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI);
}

// P(a < X < b) for X ~ N(0, 1), a < b, without cancellation in the tails (erfc of the side the
// interval is on).
double normal_mass(double a, double b) {
    if (a >= 0.0) return 0.5 * (std::erfc(a / M_SQRT2) - std::erfc(b / M_SQRT2));
    if (b <= 0.0) return 0.5 * (std::erfc(-b / M_SQRT2) - std::erfc(-a / M_SQRT2));
    return 1.0 - 0.5 * std::erfc(-a / M_SQRT2) - 0.5 * std::erfc(b / M_SQRT2);
}

// Lloyd's iteration for the minimum mean-squared-error quantiser of N(0, 1) (Lloyd 1957/1982,
// Max 1960): boundaries at the midpoints of the levels, each level the mean of N(0, 1) over its
// cell, E[X | a < X < b] = (pdf(a) - pdf(b)) / P(a < X < b). Started from levels evenly spread
// over [-3, 3]; it converges monotonically in distortion.
Tq4Codebook lloyd_max_standard_normal() {
    Tq4Codebook book{};
    for (int i = 0; i < kTq4Levels; ++i) book.levels[i] = -3.0 + 6.0 * (i + 0.5) / kTq4Levels;
    const double infinity = std::numeric_limits<double>::infinity();
    for (int iteration = 0; iteration < 100000; ++iteration) {
        for (int i = 0; i + 1 < kTq4Levels; ++i)
            book.boundaries[i] = 0.5 * (book.levels[i] + book.levels[i + 1]);
        double change = 0.0;
        for (int i = 0; i < kTq4Levels; ++i) {
            const double a = i == 0 ? -infinity : book.boundaries[i - 1];
            const double b = i + 1 == kTq4Levels ? infinity : book.boundaries[i];
            const double level = (normal_pdf(a) - normal_pdf(b)) / normal_mass(a, b);
            change = std::max(change, std::fabs(level - book.levels[i]));
            book.levels[i] = level;
        }
        if (change < 1e-13) break;
    }
    for (int i = 0; i + 1 < kTq4Levels; ++i)
        book.boundaries[i] = 0.5 * (book.levels[i] + book.levels[i + 1]);
    // Distortion: E[X^2] - sum_i P_i y_i^2 for the centroid condition (each level its cell's mean).
    double kept = 0.0;
    for (int i = 0; i < kTq4Levels; ++i) {
        const double a = i == 0 ? -infinity : book.boundaries[i - 1];
        const double b = i + 1 == kTq4Levels ? infinity : book.boundaries[i];
        kept += normal_mass(a, b) * book.levels[i] * book.levels[i];
    }
    book.distortion = 1.0 - kept;
    return book;
}

uint64_t splitmix64(uint64_t& state) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// A uniform double in (0, 1): 53 random bits, never 0 (Box-Muller takes its log).
double uniform_open(uint64_t& state) {
    return (static_cast<double>(splitmix64(state) >> 11) + 0.5) * 0x1.0p-53;
}

}  // namespace

const Tq4Codebook& tq4_standard_normal_codebook() {
    static const Tq4Codebook book = lloyd_max_standard_normal();
    return book;
}

std::array<float, kTq4Levels> tq4_levels(int64_t head_dim) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
    std::array<float, kTq4Levels> levels{};
    for (int i = 0; i < kTq4Levels; ++i) {
        levels[i] = static_cast<float>(tq4_standard_normal_codebook().levels[i] * scale);
    }
    return levels;
}

std::array<float, kTq4Levels - 1> tq4_boundaries(int64_t head_dim) {
    const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
    std::array<float, kTq4Levels - 1> boundaries{};
    for (int i = 0; i + 1 < kTq4Levels; ++i) {
        boundaries[i] = static_cast<float>(tq4_standard_normal_codebook().boundaries[i] * scale);
    }
    return boundaries;
}

// Gram-Schmidt, twice per column ("twice is enough", Giraud et al. 2005), in double: the columns
// of a Gaussian matrix made orthonormal are Haar-distributed (R's diagonal is positive by
// construction, the sign convention that makes QR's Q Haar). Stored transposed, so row i of R
// is column i of Q: rotating is R x.
std::vector<float> tq4_rotation(int64_t head_dim) {
    const auto d = static_cast<size_t>(head_dim);
    std::vector<double> q(d * d);  // q[c * d + r]: column c
    uint64_t state = kTq4RotationSeed ^ static_cast<uint64_t>(head_dim);
    for (size_t i = 0; i < d * d; i += 2) {
        const double u1 = uniform_open(state), u2 = uniform_open(state);
        const double radius = std::sqrt(-2.0 * std::log(u1));
        q[i] = radius * std::cos(2.0 * M_PI * u2);
        if (i + 1 < d * d) q[i + 1] = radius * std::sin(2.0 * M_PI * u2);
    }
    for (size_t c = 0; c < d; ++c) {
        double* column = q.data() + c * d;
        for (int pass = 0; pass < 2; ++pass) {
            for (size_t p = 0; p < c; ++p) {
                const double* previous = q.data() + p * d;
                double dot = 0.0;
                for (size_t r = 0; r < d; ++r) dot += previous[r] * column[r];
                for (size_t r = 0; r < d; ++r) column[r] -= dot * previous[r];
            }
        }
        double norm = 0.0;
        for (size_t r = 0; r < d; ++r) norm += column[r] * column[r];
        norm = std::sqrt(norm);
        for (size_t r = 0; r < d; ++r) column[r] /= norm;
    }
    std::vector<float> rotation(d * d);
    for (size_t i = 0; i < d * d; ++i) rotation[i] = static_cast<float>(q[i]);
    return rotation;
}

int tq4_index(float r, const std::array<float, kTq4Levels - 1>& boundaries) {
    int index = 0;
    while (index < kTq4Levels - 1 && r > boundaries[index]) ++index;
    return index;
}

void tq4_encode_into(std::span<const float> x, std::span<const float> rotation, uint16_t* norm_bf16,
                     uint8_t* indices) {
    const size_t d = x.size();
    double sum_squares = 0.0;
    bool finite = true;
    for (float v : x) {
        finite = finite && std::isfinite(v);
        sum_squares += static_cast<double>(v) * v;
    }
    const float norm = finite ? static_cast<float>(std::sqrt(sum_squares))
                              : std::numeric_limits<float>::quiet_NaN();
    *norm_bf16 = fp32_to_bf16(norm);
    const std::array<float, kTq4Levels - 1> boundaries = tq4_boundaries(static_cast<int64_t>(d));
    std::fill(indices, indices + d / 2, uint8_t{0});
    for (size_t i = 0; i < d; ++i) {
        float r = 0.0f;
        if (norm > 0.0f) {
            const float* row = rotation.data() + i * d;
            for (size_t j = 0; j < d; ++j) r += row[j] * x[j];
            r /= norm;
        }
        // A zero vector: any index decodes to zeros (norm 0); 8, the smallest positive level.
        const int index = norm > 0.0f ? tq4_index(r, boundaries) : kTq4Levels / 2;
        indices[i / 2] |= static_cast<uint8_t>(index << (4 * (i % 2)));
    }
}

Tq4Vector tq4_encode(std::span<const float> x, std::span<const float> rotation) {
    Tq4Vector out;
    out.indices.assign(x.size() / 2, 0);
    tq4_encode_into(x, rotation, &out.norm_bf16, out.indices.data());
    return out;
}

std::vector<float> tq4_decode(const Tq4Vector& v, std::span<const float> rotation) {
    const size_t d = v.indices.size() * 2;
    const std::array<float, kTq4Levels> levels = tq4_levels(static_cast<int64_t>(d));
    const float norm = bf16_to_fp32(v.norm_bf16);
    std::vector<float> x(d, 0.0f);
    for (size_t i = 0; i < d; ++i) {
        const float c = levels[(v.indices[i / 2] >> (4 * (i % 2))) & 0x0F];
        const float* row = rotation.data() + i * d;
        for (size_t j = 0; j < d; ++j) x[j] += row[j] * c;
    }
    for (float& value : x) value *= norm;
    return x;
}

std::vector<float> tq4_attend(std::span<const float> q, std::span<const Tq4Vector> keys,
                              std::span<const Tq4Vector> values, std::span<const float> rotation,
                              float scale, float softcap) {
    const size_t d = q.size();
    const std::array<float, kTq4Levels> levels = tq4_levels(static_cast<int64_t>(d));
    const auto level = [&](const Tq4Vector& v, size_t i) {
        return static_cast<double>(levels[(v.indices[i / 2] >> (4 * (i % 2))) & 0x0F]);
    };
    std::vector<double> q_rotated(d, 0.0);
    for (size_t i = 0; i < d; ++i) {
        for (size_t j = 0; j < d; ++j)
            q_rotated[i] += static_cast<double>(rotation[i * d + j]) * q[j];
    }
    std::vector<double> scores(keys.size());
    double max_score = -std::numeric_limits<double>::infinity();
    for (size_t n = 0; n < keys.size(); ++n) {
        double dot = 0.0;
        for (size_t i = 0; i < d; ++i) dot += q_rotated[i] * level(keys[n], i);
        double score = scale * bf16_to_fp32(keys[n].norm_bf16) * dot;
        if (softcap > 0.0f) score = softcap * std::tanh(score / softcap);
        scores[n] = score;
        max_score = std::max(max_score, score);
    }
    double total = 0.0;
    std::vector<double> accumulated(d, 0.0);  // in the rotated space
    for (size_t n = 0; n < keys.size(); ++n) {
        const double p = std::exp(scores[n] - max_score);
        total += p;
        const double weight = p * bf16_to_fp32(values[n].norm_bf16);
        for (size_t i = 0; i < d; ++i) accumulated[i] += weight * level(values[n], i);
    }
    std::vector<float> out(d, 0.0f);
    for (size_t j = 0; j < d; ++j) {
        double sum = 0.0;
        for (size_t i = 0; i < d; ++i)
            sum += static_cast<double>(rotation[i * d + j]) * accumulated[i];
        out[j] = static_cast<float>(sum / total);
    }
    return out;
}

}  // namespace kestrel
