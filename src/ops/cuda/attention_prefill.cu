// Prefill attention: flash attention over the bf16 cache (core: attention_common.cuh).
//
// Block = 64 packed query rows (64 / group tokens x the group's query heads) of one kv head,
// 8 warps (4 row groups x 2 column halves), grid (row tiles, kv heads). The block's keys are
// [first key its first token sees, its last token's position]: KV tiles fully masked by
// causality or by the sliding window are never visited (spec techniques.md §2: exact, since
// they contribute nothing). Row tiles run last-first, so the longest (latest) tiles start first.
#include <string>

#include "ops/cuda/attention.h"
#include "ops/cuda/attention_common.cuh"
#include "ops/cuda/attention_prefill_tq4_wgmma.h"
#include "ops/cuda/cuda_check.h"

namespace kestrel::cuda {
namespace {

template <int kHeadDimPad>
using PrefillConfig = FlashConfig<kHeadDimPad, 4, 2>;

template <int kHeadDimPad, bool kTq4>
__global__ void __launch_bounds__(PrefillConfig<kHeadDimPad>::kThreads, 1)
    attention_prefill_kernel(AttentionKernelArgs a) {
    using C = PrefillConfig<kHeadDimPad>;
    extern __shared__ __align__(16) unsigned char shared[];
    const int row_tile = static_cast<int>(gridDim.x - 1 - blockIdx.x);
    const int kv_head = static_cast<int>(blockIdx.y);
    const int row0 = row_tile * C::kRows;
    const int rows_total = a.n_tokens * a.group;
    const int first_token = row0 / a.group;
    const int last_row = row0 + C::kRows - 1 < rows_total - 1 ? row0 + C::kRows - 1 : rows_total - 1;
    const int last_token = last_row / a.group;
    const int key_begin = attention_first_visible(static_cast<int>(a.positions[first_token]), a.window);
    const int key_end = static_cast<int>(a.positions[last_token]) + 1;

    FlashState<C> st;
    flash_attend<C, kTq4>(a, kv_head, row0, key_begin, key_end, shared, st);

    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int row_group = warp / C::kSplit;
    const int col_base = (warp % C::kSplit) * C::kColsPerWarp + 2 * (lane & 3);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int packed = row0 + row_group * 16 + (lane >> 2) + 8 * i;
        if (packed >= rows_total) continue;
        const int t = packed / a.group;
        const int h = kv_head * a.group + packed % a.group;
        float* dst = a.out + (static_cast<int64_t>(t) * a.n_heads + h) * a.v_head_dim;
        const float inv_l = 1.0f / st.l[i];  // every query sees at least its own key: l >= 1
#pragma unroll
        for (int ct = 0; ct < C::kColTiles; ++ct) {
            const int col = col_base + ct * 8;
            if (col < a.v_head_dim) {
                *reinterpret_cast<float2*>(dst + col) = make_float2(st.o[ct][2 * i] * inv_l, st.o[ct][2 * i + 1] * inv_l);
            }
        }
    }
}

template <int kHeadDimPad, bool kTq4>
Status launch_prefill(const AttentionKernelArgs& args, cudaStream_t stream) {
    using C = PrefillConfig<kHeadDimPad>;
    const int64_t rows = static_cast<int64_t>(args.n_tokens) * args.group;
    const int64_t row_tiles = (rows + C::kRows - 1) / C::kRows;
    KESTREL_CUDA_CHECK(cudaFuncSetAttribute(attention_prefill_kernel<kHeadDimPad, kTq4>,
                                            cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            kTq4 ? C::kTq4SharedBytes : C::kSharedBytes));
    attention_prefill_kernel<kHeadDimPad, kTq4>
        <<<dim3(static_cast<unsigned>(row_tiles), static_cast<unsigned>(args.n_kv_heads)),
           C::kThreads, kTq4 ? C::kTq4SharedBytes : C::kSharedBytes, stream>>>(args);
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

}  // namespace

Status launch_attention_prefill(const AttentionKernelArgs& args, int head_dim_pad,
                                cudaStream_t stream) {
    const bool tq4 = args.k_tq4 != nullptr;
    switch (head_dim_pad) {
        case 64:
            return tq4 ? launch_prefill<64, true>(args, stream)
                       : launch_prefill<64, false>(args, stream);
        case 128:
            return tq4 ? launch_prefill<128, true>(args, stream)
                       : launch_prefill<128, false>(args, stream);
        case 256:
            return tq4 ? launch_prefill<256, true>(args, stream)
                       : launch_prefill<256, false>(args, stream);
        default:
            return tq4 ? launch_prefill<512, true>(args, stream)
                       : launch_prefill<512, false>(args, stream);
    }
}

Status attention_prefill(const float* q, const int64_t* positions, int64_t n_tokens, const KvCacheBf16View& cache,
                         const AttentionShape& shape, float* out, cudaStream_t stream) {
    KESTREL_RETURN_IF_ERROR(check_attention_arguments("attention_prefill", q, positions, n_tokens, cache, shape, out));
    const AttentionKernelArgs args = make_attention_kernel_args(q, positions, n_tokens, cache, shape, out);
    return launch_attention_prefill(
        args, attention_padded_head_dim(cache.head_dim, cache.v_head_dim), stream);
}

Status attention_prefill_tq4(const float* q_rotated, const int64_t* positions, int64_t n_tokens,
                             const KvCacheTq4View& cache, const AttentionShape& shape,
                             float* out_rotated, cudaStream_t stream) {
    KESTREL_RETURN_IF_ERROR(check_tq4_cache("attention_prefill_tq4", cache, shape));
    const KvCacheBf16View shadow = tq4_shadow_view(cache);
    KESTREL_RETURN_IF_ERROR(check_attention_arguments("attention_prefill_tq4", q_rotated, positions,
                                                      n_tokens, shadow, shape, out_rotated));
    AttentionKernelArgs args =
        make_attention_kernel_args(q_rotated, positions, n_tokens, shadow, shape, out_rotated);
    set_tq4_arguments(cache, args);
    if (cache.head_dim == 512 && attention_prefill_tq4_wgmma_available()) {
        return launch_attention_prefill_tq4_wgmma(args, stream);
    }
    return launch_attention_prefill(args, attention_padded_head_dim(cache.head_dim, cache.head_dim),
                                    stream);
}

}  // namespace kestrel::cuda
