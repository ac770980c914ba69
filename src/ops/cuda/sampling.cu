// GPU sampling kernels and GpuSampler (host API and the numerical contract: sampling.h; CPU twin:
// runtime/sampler.cpp, whose steps each kernel below names).
//
// Greedy (temperature <= 0), one launch:
//   argmax_kernel: per block the max of (orderable logit << 32 | ~id) over 2048 penalised logits,
//     so the max key is the largest logit with the lowest id; the block that finishes last (a
//     ticket in device memory) reduces the block results and writes the id. Integer max: the
//     result does not depend on the order. NaN as kestrel::argmax: a NaN at id 0 wins, others lose.
// Sampling (temperature > 0), a fixed sequence per parameter set:
//   sort_keys_kernel: penalised logits -> 32-bit keys whose ascending order is the CPU's
//     (logit descending; -0 == +0); ids 0..vocab-1 were written once by create().
//   cub::DeviceRadixSort::SortPairs: stable, so equal logits keep ascending ids.
//   [top-p or min-p on] softmax_exp_kernel (T = 1) over the top-k prefix, then
//     cut_kernel<kTopPMinP>: the first index where the cumulative probability reaches top_p, then
//     min-p's cut by binary search (probabilities fall along the sorted order) -> state.kept.
//   softmax_exp_kernel (T) over the kept prefix, then cut_kernel<kDraw>: the first index where the
//     cumulative probability exceeds u = sampling_uniform(seed, state.step); writes the id and
//     advances state.step.
// softmax_exp_kernel and cut_kernel give each block 1024 consecutive sorted entries (4 per
// thread); the last block to finish combines the blocks' double sums in block order, finds the
// block where the cumulative sum crosses the target, and rescans that block element by element.
#include "ops/cuda/sampling.h"

#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>

#include <climits>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "ops/cuda/cuda_check.h"

namespace kestrel::cuda {

// Everything that changes from step to step lives here, in device memory.
struct SamplerState {
    unsigned long long step;  // draws so far (runtime/sampler.h)
    double total;             // sum of the exps of the softmax last computed
    int32_t kept;             // candidates left after top-p and min-p
    uint32_t blocks_done;     // last-block ticket; 0 again when every kernel that takes one ends
    int32_t ring_head;        // oldest token of the history ring (repeat_last_n > 0)
    int32_t ring_size;
};

struct GpuSampler::Workspace {
    void* allocation = nullptr;  // the pointers below point into it
    uint32_t* keys = nullptr;    // [vocab]
    uint32_t* sorted_keys = nullptr;
    int32_t* ids = nullptr;  // [vocab] 0..vocab-1
    int32_t* sorted_ids = nullptr;
    float* exps = nullptr;                       // [vocab] exp((logit - max) / T) in sorted order
    double* partials = nullptr;                  // [tiles] per-block sums
    unsigned long long* argmax_partials = nullptr;  // [argmax tiles]
    SamplerState* state = nullptr;
    int32_t* counts = nullptr;  // [vocab] occurrences in the penalty window; null: penalties off
    int32_t* ring = nullptr;    // [repeat_last_n] when repeat_last_n > 0
    void* sort_temp = nullptr;
    size_t sort_temp_bytes = 0;

    Workspace() = default;
    Workspace(const Workspace&) = delete;
    Workspace& operator=(const Workspace&) = delete;
    ~Workspace() {
        if (allocation != nullptr) (void)cudaFree(allocation);
    }
};

namespace {

constexpr int kThreads = 256;
constexpr int kItems = 4;
constexpr int kTile = kThreads * kItems;  // sorted entries per block
constexpr int kArgmaxItems = 8;
constexpr int kArgmaxTile = kThreads * kArgmaxItems;
constexpr int kAcceptThreads = 1024;
constexpr unsigned kFullMask = 0xffffffffu;

struct Penalties {
    const int32_t* counts = nullptr;  // null: off
    float repeat_penalty = 1.0f;
    float presence = 0.0f;
    float frequency = 0.0f;
};

// Sampler::apply_penalties for one token seen `count` times in the window: CTRL's repetition
// penalty, then l -= count * frequency + presence, in the CPU's fp32 operations and order.
__device__ __forceinline__ float penalised_logit(const float* logits, int i, const Penalties& p) {
    float logit = logits[i];
    if (p.counts == nullptr) return logit;
    const int count = p.counts[i];
    if (count <= 0) return logit;
    if (p.repeat_penalty != 1.0f) {
        logit = logit > 0.0f ? __fdiv_rn(logit, p.repeat_penalty) : __fmul_rn(logit, p.repeat_penalty);
    }
    return __fsub_rn(logit, __fadd_rn(__fmul_rn(static_cast<float>(count), p.frequency), p.presence));
}

// Unsigned bits in the order of the float values; -0 is taken as +0 (the CPU's comparisons tie them).
__device__ __forceinline__ uint32_t orderable_bits(float f) {
    const uint32_t bits = f == 0.0f ? 0u : __float_as_uint(f);
    return (bits & 0x80000000u) != 0 ? ~bits : (bits | 0x80000000u);
}

// Ascending key order = the CPU's sort: larger logits first. NaN last.
__device__ __forceinline__ uint32_t sort_key(float logit) { return isnan(logit) ? 0xffffffffu : ~orderable_bits(logit); }

__device__ __forceinline__ float logit_of_key(uint32_t key) {
    const uint32_t o = ~key;
    return __uint_as_float((o & 0x80000000u) != 0 ? (o & 0x7fffffffu) : ~o);
}

// kestrel::argmax: the largest logit, lowest id on ties; a NaN at id 0 is never replaced, a NaN
// elsewhere never wins.
__device__ __forceinline__ unsigned long long argmax_key(float logit, int id) {
    if (isnan(logit)) return id == 0 ? ~0ull : 0ull;
    return (static_cast<unsigned long long>(orderable_bits(logit)) << 32) | (0xffffffffu - static_cast<uint32_t>(id));
}

// runtime/sampler.h: splitmix64(seed + step * gamma) >> 11, times 2^-53.
__device__ __forceinline__ double sampling_uniform_device(unsigned long long seed, unsigned long long step) {
    constexpr unsigned long long kGamma = 0x9E3779B97F4A7C15ull;
    unsigned long long z = seed + step * kGamma + kGamma;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return static_cast<double>(z >> 11) * 0x1.0p-53;
}

// Block-wide sum in a fixed order (xor shuffles, then the warps in order); every thread gets it.
__device__ double block_sum(double v, double* warp_sums) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
    if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x / 32] = v;
    __syncthreads();
    double total = 0.0;
#pragma unroll
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
    __syncthreads();
    return total;
}

__device__ unsigned long long block_max(unsigned long long v, unsigned long long* warp_max) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = max(v, __shfl_xor_sync(kFullMask, v, off));
    if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x / 32] = v;
    __syncthreads();
    unsigned long long best = 0;
#pragma unroll
    for (int w = 0; w < kThreads / 32; ++w) best = max(best, warp_max[w]);
    __syncthreads();
    return best;
}

// Called by every thread once thread 0 has stored the block's partial result. True, in every
// thread, for the block that finished last: it then sees all partials (read them with __ldcg).
// It re-arms the ticket for the next launch.
__device__ bool last_block_done(uint32_t* blocks_done) {
    __shared__ bool last;
    if (threadIdx.x == 0) {
        __threadfence();  // this block's partial is visible before its ticket
        const uint32_t ticket = atomicAdd(blocks_done, 1u);
        last = ticket == gridDim.x - 1;
        if (last) *blocks_done = 0;
    }
    __syncthreads();
    if (last) __threadfence();
    return last;
}

__global__ void __launch_bounds__(kThreads)
    argmax_kernel(const float* logits, int vocab, Penalties penalties, unsigned long long* partials,
                  SamplerState* state, int32_t* token_out) {
    __shared__ unsigned long long warp_max[kThreads / 32];
    unsigned long long best = 0;
    const int base = static_cast<int>(blockIdx.x) * kArgmaxTile + static_cast<int>(threadIdx.x);
#pragma unroll
    for (int k = 0; k < kArgmaxItems; ++k) {
        const int i = base + k * kThreads;
        if (i < vocab) best = max(best, argmax_key(penalised_logit(logits, i, penalties), i));
    }
    best = block_max(best, warp_max);
    if (threadIdx.x == 0) partials[blockIdx.x] = best;
    if (!last_block_done(&state->blocks_done)) return;
    best = 0;
    for (unsigned b = threadIdx.x; b < gridDim.x; b += kThreads) best = max(best, __ldcg(partials + b));
    best = block_max(best, warp_max);
    if (threadIdx.x == 0) *token_out = static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(best));
}

__global__ void __launch_bounds__(kThreads)
    sort_keys_kernel(const float* logits, int vocab, Penalties penalties, uint32_t* keys) {
    const int i = static_cast<int>(blockIdx.x) * kThreads + static_cast<int>(threadIdx.x);
    if (i < vocab) keys[i] = sort_key(penalised_logit(logits, i, penalties));
}

// Sampler::sample's softmax: exps[i] = exp((logit_i - max) / T) with the fp32 subtraction and
// division, exp in double rounded to fp32, and state.total = their sum in double, over the first
// n = min(*kept, n_max) sorted entries (kept null: n_max). max = the first sorted logit.
__global__ void __launch_bounds__(kThreads)
    softmax_exp_kernel(const uint32_t* sorted_keys, int n_max, const int32_t* kept, float temperature, float* exps,
                       double* partials, SamplerState* state) {
    __shared__ double warp_sums[kThreads / 32];
    const int n = kept != nullptr ? min(*kept, n_max) : n_max;
    const float max_logit = logit_of_key(sorted_keys[0]);
    const int base = static_cast<int>(blockIdx.x) * kTile + static_cast<int>(threadIdx.x) * kItems;
    double sum = 0.0;
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
        const int i = base + k;
        if (i < n) {
            const float scaled = __fdiv_rn(__fsub_rn(logit_of_key(sorted_keys[i]), max_logit), temperature);
            const float e = static_cast<float>(exp(static_cast<double>(scaled)));
            exps[i] = e;
            sum += static_cast<double>(e);
        }
    }
    sum = block_sum(sum, warp_sums);
    if (threadIdx.x == 0) partials[blockIdx.x] = sum;
    if (!last_block_done(&state->blocks_done)) return;
    double total = 0.0;
    for (unsigned b = threadIdx.x; b < gridDim.x; b += kThreads) total += __ldcg(partials + b);
    total = block_sum(total, warp_sums);
    if (threadIdx.x == 0) state->total = total;
}

enum class Cut {
    kTopPMinP,  // Sampler's top-p, then min-p: state.kept
    kDraw,      // Sampler's draw: *token_out, state.step + 1
};

struct CutParams {
    float top_p = 1.0f;
    bool top_p_on = false;
    float min_p = 0.0f;
    bool min_p_on = false;
    unsigned long long seed = 0;
};

// The CPU's probability: static_cast<float>(exp / total).
__device__ __forceinline__ float probability(const float* exps, int i, double total) {
    return static_cast<float>(static_cast<double>(exps[i]) / total);
}

template <Cut kCut>
__device__ __forceinline__ bool crosses(double cumulative, double target) {
    // top-p: cumulative >= top_p. Draw: u - cumulative < 0.
    return kCut == Cut::kTopPMinP ? cumulative >= target : cumulative > target;
}

// Over the first n = min(*kept, n_max) sorted entries (kept null: n_max) with probabilities
// exps / state.total: the first index where the cumulative probability crosses the target.
template <Cut kCut>
__global__ void __launch_bounds__(kThreads)
    cut_kernel(const float* exps, int n_max, const int32_t* kept, const int32_t* sorted_ids, double* partials,
               SamplerState* state, CutParams params, int32_t* token_out) {
    using BlockScan = cub::BlockScan<double, kThreads>;
    __shared__ typename BlockScan::TempStorage scan_storage;
    __shared__ double warp_sums[kThreads / 32];
    __shared__ int crossing_block;
    __shared__ double mass_before;
    __shared__ int crossing_index;

    const int n = kept != nullptr ? min(*kept, n_max) : n_max;
    const double total = state->total;
    const int thread_base = static_cast<int>(threadIdx.x) * kItems;
    double mine = 0.0;
    {
        const int base = static_cast<int>(blockIdx.x) * kTile + thread_base;
#pragma unroll
        for (int k = 0; k < kItems; ++k) {
            if (base + k < n) mine += static_cast<double>(probability(exps, base + k, total));
        }
    }
    const double block_mass = block_sum(mine, warp_sums);
    if (threadIdx.x == 0) partials[blockIdx.x] = block_mass;
    if (!last_block_done(&state->blocks_done)) return;

    // ---- the last block: find the crossing --------------------------------------------------------
    const bool search = kCut == Cut::kDraw || params.top_p_on;
    const double target =
        kCut == Cut::kDraw ? sampling_uniform_device(params.seed, state->step) : static_cast<double>(params.top_p);
    if (threadIdx.x == 0) {
        crossing_block = INT_MAX;
        crossing_index = INT_MAX;
    }
    __syncthreads();
    if (search) {
        // Which block: the block sums scanned in block order, kThreads at a time.
        double carry = 0.0;
        for (unsigned chunk = 0; chunk < gridDim.x; chunk += kThreads) {
            const unsigned b = chunk + threadIdx.x;
            const double mass = b < gridDim.x ? __ldcg(partials + b) : 0.0;
            double before, chunk_mass;
            BlockScan(scan_storage).ExclusiveSum(mass, before, chunk_mass);
            before += carry;
            if (b < gridDim.x && crosses<kCut>(before + mass, target)) atomicMin(&crossing_block, static_cast<int>(b));
            __syncthreads();
            if (crossing_block != INT_MAX) {
                if (static_cast<int>(b) == crossing_block) mass_before = before;
                break;  // every thread sees the same crossing_block
            }
            carry += chunk_mass;
            __syncthreads();  // scan_storage is reused
        }
        __syncthreads();
        // Which entry: that block's probabilities rescanned in order.
        if (crossing_block != INT_MAX) {
            const int base = crossing_block * kTile + thread_base;
            float p[kItems];
            double thread_mass = 0.0;
#pragma unroll
            for (int k = 0; k < kItems; ++k) {
                p[k] = base + k < n ? probability(exps, base + k, total) : 0.0f;
                thread_mass += static_cast<double>(p[k]);
            }
            double cumulative;
            BlockScan(scan_storage).ExclusiveSum(thread_mass, cumulative);
            cumulative += mass_before;
#pragma unroll
            for (int k = 0; k < kItems; ++k) {
                if (base + k >= n) break;
                cumulative += static_cast<double>(p[k]);
                if (crosses<kCut>(cumulative, target)) {
                    atomicMin(&crossing_index, base + k);
                    break;
                }
            }
            __syncthreads();
            // The block's sum crossed but its rescan, rounded differently, fell short by an ulp:
            // take the block's last entry.
            if (threadIdx.x == 0 && crossing_index == INT_MAX) crossing_index = min(n, (crossing_block + 1) * kTile) - 1;
        }
    }
    __syncthreads();
    if (threadIdx.x != 0) return;

    if constexpr (kCut == Cut::kTopPMinP) {
        // top-p keeps the smallest prefix reaching top_p (all when none does).
        int cut = crossing_index != INT_MAX ? crossing_index + 1 : n;
        if (params.min_p_on) {
            // min-p keeps entries with probability >= p_0 * min_p, a prefix of at least 1.
            const float threshold = __fmul_rn(probability(exps, 0, total), params.min_p);
            int lo = 1, hi = cut;
            while (lo < hi) {
                const int mid = lo + (hi - lo) / 2;
                if (probability(exps, mid, total) >= threshold) {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            cut = lo;
        }
        state->kept = cut;
    } else {
        // Rounding left a sliver of probability unassigned: the last candidate, as the CPU.
        const int index = crossing_index != INT_MAX ? crossing_index : n - 1;
        *token_out = sorted_ids[index];
        state->step += 1;
    }
}

// Sampler::accept for `count` tokens in order. window > 0: a ring of the last `window` tokens and
// their counts; window < 0: counts of every token. Of a batch longer than the window only its
// last `window` tokens stay (the earlier ones would be counted and evicted again).
__global__ void __launch_bounds__(kAcceptThreads)
    accept_kernel(const int32_t* tokens, int count, int vocab, int window, int32_t* counts, int32_t* ring,
                  SamplerState* state) {
    const auto in_vocab = [vocab](int32_t t) { return t >= 0 && t < vocab; };
    if (window < 0) {
        for (int i = static_cast<int>(threadIdx.x); i < count; i += kAcceptThreads) {
            const int32_t t = tokens[i];
            if (in_vocab(t)) atomicAdd(counts + t, 1);
        }
        return;
    }
    const int64_t head = state->ring_head;
    const int64_t size = state->ring_size;
    const int64_t skip = count > window ? count - window : 0;
    const int64_t arriving = count - skip;
    const int64_t evicted = size + arriving > window ? size + arriving - window : 0;  // <= size
    for (int64_t k = threadIdx.x; k < evicted; k += kAcceptThreads) {
        const int32_t t = ring[(head + k) % window];
        if (in_vocab(t)) atomicSub(counts + t, 1);
    }
    __syncthreads();  // every evicted token is read before its slot is reused
    const int64_t new_head = (head + evicted) % window;
    const int64_t staying = size - evicted;
    for (int64_t k = threadIdx.x; k < arriving; k += kAcceptThreads) {
        const int32_t t = tokens[skip + k];
        ring[(new_head + staying + k) % window] = t;
        if (in_vocab(t)) atomicAdd(counts + t, 1);
    }
    if (threadIdx.x == 0) {
        state->ring_head = static_cast<int32_t>(new_head);
        state->ring_size = static_cast<int32_t>(staying + arriving);
    }
}

unsigned blocks_for(int64_t n, int64_t per_block) { return static_cast<unsigned>((n + per_block - 1) / per_block); }

bool penalties_on(const GpuSamplingParams& p) {
    return p.repeat_last_n != 0 &&
           (p.repeat_penalty != 1.0f || p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f);
}

Status validate_params(const GpuSamplingParams& p) {
    const auto bad = [](const std::string& what) {
        return Status(StatusCode::kInvalidArgument, "GpuSampler: " + what);
    };
    if (!std::isfinite(p.temperature) || p.temperature < 0) return bad("temperature must be 0 (greedy) or positive");
    if (!(p.top_p > 0 && p.top_p <= 1)) return bad("top_p must be in (0, 1]");
    if (!(p.min_p >= 0 && p.min_p <= 1)) return bad("min_p must be in [0, 1]");
    if (!(p.repeat_penalty > 0) || !std::isfinite(p.repeat_penalty)) return bad("repeat_penalty must be positive");
    if (p.repeat_last_n < -1) return bad("repeat_last_n must be -1, 0 or more");
    if (!std::isfinite(p.presence_penalty) || !std::isfinite(p.frequency_penalty)) {
        return bad("presence and frequency penalties must be finite");
    }
    return ok_status();
}

size_t round_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace

GpuSampler::GpuSampler() = default;
GpuSampler::GpuSampler(GpuSampler&& other) noexcept = default;
GpuSampler& GpuSampler::operator=(GpuSampler&& other) noexcept = default;
GpuSampler::~GpuSampler() = default;

Result<GpuSampler> GpuSampler::create(int64_t vocab, const GpuSamplingParams& params) {
    if (vocab < 1 || vocab > INT_MAX) {
        return Status(StatusCode::kInvalidArgument, "GpuSampler: vocab " + std::to_string(vocab) + " out of range");
    }
    KESTREL_RETURN_IF_ERROR(validate_params(params));
    GpuSampler sampler;
    sampler.params_ = params;
    sampler.vocab_ = vocab;
    sampler.workspace_ = std::make_unique<Workspace>();
    Workspace& w = *sampler.workspace_;
    const int n = static_cast<int>(vocab);
    const bool penalised = penalties_on(params);
    const int64_t ring_entries = penalised && params.repeat_last_n > 0 ? params.repeat_last_n : 0;

    KESTREL_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, w.sort_temp_bytes, w.keys, w.sorted_keys, w.ids,
                                                       w.sorted_ids, n, 0, 32));
    const size_t vector_bytes = round_up(static_cast<size_t>(vocab) * 4);
    size_t offsets[11];
    size_t bytes = 0;
    const size_t sizes[11] = {vector_bytes,  // keys
                              vector_bytes,  // sorted_keys
                              vector_bytes,  // ids
                              vector_bytes,  // sorted_ids
                              vector_bytes,  // exps
                              round_up(blocks_for(vocab, kTile) * sizeof(double)),
                              round_up(blocks_for(vocab, kArgmaxTile) * sizeof(unsigned long long)),
                              round_up(sizeof(SamplerState)),
                              penalised ? vector_bytes : 0,
                              round_up(static_cast<size_t>(ring_entries) * 4),
                              round_up(w.sort_temp_bytes)};
    for (int i = 0; i < 11; ++i) {
        offsets[i] = bytes;
        bytes += sizes[i];
    }
    KESTREL_CUDA_CHECK(cudaMalloc(&w.allocation, bytes));
    char* base = static_cast<char*>(w.allocation);
    w.keys = reinterpret_cast<uint32_t*>(base + offsets[0]);
    w.sorted_keys = reinterpret_cast<uint32_t*>(base + offsets[1]);
    w.ids = reinterpret_cast<int32_t*>(base + offsets[2]);
    w.sorted_ids = reinterpret_cast<int32_t*>(base + offsets[3]);
    w.exps = reinterpret_cast<float*>(base + offsets[4]);
    w.partials = reinterpret_cast<double*>(base + offsets[5]);
    w.argmax_partials = reinterpret_cast<unsigned long long*>(base + offsets[6]);
    w.state = reinterpret_cast<SamplerState*>(base + offsets[7]);
    w.counts = penalised ? reinterpret_cast<int32_t*>(base + offsets[8]) : nullptr;
    w.ring = ring_entries > 0 ? reinterpret_cast<int32_t*>(base + offsets[9]) : nullptr;
    w.sort_temp = base + offsets[10];

    std::vector<int32_t> ids(static_cast<size_t>(vocab));
    for (int i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = i;
    KESTREL_CUDA_CHECK(cudaMemcpy(w.ids, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
    KESTREL_CUDA_CHECK(cudaMemset(w.state, 0, sizeof(SamplerState)));
    if (w.counts != nullptr) KESTREL_CUDA_CHECK(cudaMemset(w.counts, 0, static_cast<size_t>(vocab) * 4));
    KESTREL_CUDA_CHECK(cudaDeviceSynchronize());
    return Result<GpuSampler>(std::move(sampler));
}

Status GpuSampler::sample(const float* logits, int32_t* token_out, cudaStream_t stream) {
    if (logits == nullptr || token_out == nullptr) {
        return Status(StatusCode::kInvalidArgument, "GpuSampler::sample: null logits or token");
    }
    Workspace& w = *workspace_;
    const int vocab = static_cast<int>(vocab_);
    Penalties penalties;
    if (w.counts != nullptr) {
        penalties = {w.counts, params_.repeat_penalty, params_.presence_penalty, params_.frequency_penalty};
    }
    if (params_.temperature <= 0.0f) {
        argmax_kernel<<<blocks_for(vocab, kArgmaxTile), kThreads, 0, stream>>>(logits, vocab, penalties,
                                                                              w.argmax_partials, w.state, token_out);
        KESTREL_CUDA_CHECK(cudaGetLastError());
        return ok_status();
    }

    sort_keys_kernel<<<blocks_for(vocab, kThreads), kThreads, 0, stream>>>(logits, vocab, penalties, w.keys);
    KESTREL_CUDA_CHECK(cudaGetLastError());
    size_t temp_bytes = w.sort_temp_bytes;
    KESTREL_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(w.sort_temp, temp_bytes, w.keys, w.sorted_keys, w.ids,
                                                       w.sorted_ids, vocab, 0, 32, stream));

    // Sampler::sample: top-k keeps a prefix of the sorted order; top-p and min-p cut it further.
    const int keep = params_.top_k > 0 && params_.top_k < vocab ? params_.top_k : vocab;
    const unsigned keep_blocks = blocks_for(keep, kTile);
    CutParams cut;
    cut.top_p = params_.top_p;
    cut.top_p_on = params_.top_p < 1.0f;
    cut.min_p = params_.min_p;
    cut.min_p_on = params_.min_p > 0.0f;
    cut.seed = params_.seed;
    const int32_t* kept = nullptr;
    if (cut.top_p_on || cut.min_p_on) {
        softmax_exp_kernel<<<keep_blocks, kThreads, 0, stream>>>(w.sorted_keys, keep, nullptr, 1.0f, w.exps,
                                                                 w.partials, w.state);
        KESTREL_CUDA_CHECK(cudaGetLastError());
        // Without top-p only the first entries are read (p_0 and min-p's binary search): one block.
        cut_kernel<Cut::kTopPMinP><<<cut.top_p_on ? keep_blocks : 1u, kThreads, 0, stream>>>(
            w.exps, keep, nullptr, w.sorted_ids, w.partials, w.state, cut, nullptr);
        KESTREL_CUDA_CHECK(cudaGetLastError());
        kept = &w.state->kept;
    }
    softmax_exp_kernel<<<keep_blocks, kThreads, 0, stream>>>(w.sorted_keys, keep, kept, params_.temperature,
                                                             w.exps, w.partials, w.state);
    KESTREL_CUDA_CHECK(cudaGetLastError());
    cut_kernel<Cut::kDraw><<<keep_blocks, kThreads, 0, stream>>>(w.exps, keep, kept, w.sorted_ids, w.partials,
                                                                 w.state, cut, token_out);
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

Status GpuSampler::accept(const int32_t* tokens, int64_t count, cudaStream_t stream) {
    if (count < 0 || count > INT_MAX || (count > 0 && tokens == nullptr)) {
        return Status(StatusCode::kInvalidArgument,
                      "GpuSampler::accept: " + std::to_string(count) + " tokens (or a null pointer)");
    }
    Workspace& w = *workspace_;
    if (w.counts == nullptr || count == 0) return ok_status();  // penalties off: the history is never read
    accept_kernel<<<1, kAcceptThreads, 0, stream>>>(tokens, static_cast<int>(count), static_cast<int>(vocab_),
                                                    params_.repeat_last_n, w.counts, w.ring, w.state);
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

Status GpuSampler::reset(cudaStream_t stream) {
    Workspace& w = *workspace_;
    KESTREL_CUDA_CHECK(cudaMemsetAsync(w.state, 0, sizeof(SamplerState), stream));
    if (w.counts != nullptr) {
        KESTREL_CUDA_CHECK(cudaMemsetAsync(w.counts, 0, static_cast<size_t>(vocab_) * 4, stream));
    }
    return ok_status();
}

}  // namespace kestrel::cuda
