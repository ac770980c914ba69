// Kernel launches with programmatic dependent launch (PDL, sm_90; CUDA programming guide,
// "Programmatic Dependent Launch and Synchronization").
//
// Why: a decode step is ~800 launches, most of them a few microseconds long, and in a CUDA graph
// each boundary still costs the drain of one grid and the ramp of the next (~2-4 us). Launched
// with the programmatic-serialization attribute, a kernel may start while its predecessor in the
// stream is still running: it sets up (and a GEMV streams its first weights towards L2, which no
// earlier kernel writes) and then waits in wait_for_upstream() until the predecessor has finished
// and its writes are visible. Graph capture keeps these edges.
//
// The contract, for every kernel launched with launch_overlapped():
//   - call wait_for_upstream() before the first access to memory that an earlier kernel of the
//     stream writes or reads (activations, caches, logits, anything but constant weights). One
//     exception, decode attention: the K/V of keys older than the step's first position, which
//     no kernel of the step writes, may be read before (flash_attend's early_keys_end); and any
//     kernel may read the step's positions before it: only copies write them, before the
//     step's first kernel (runtime/session.cpp stage, decode_sampled_on_device); and the
//     decode seam (fused_ffn.h ResidualRead::kBeforeWait) may read the residual, whose last
//     writer is two kernels back or more (each kernel below waits; one that calls
//     allow_downstream() after its wait thus lets the next start only once every kernel before
//     it has completed);
//   - call allow_downstream() (anywhere; at entry is fine) so the next kernel may launch before
//     this one ends. Without it the next kernel launches at this one's end, as without PDL.
//     Early is not always better: measured on the H100, two decode kernels gain from letting
//     the next launch only at their end (attention_decode_kernel: its reduce 9.4 -> 4.9 us a
//     layer; conv1d_causal_kernel: Qwen3.5 tg128 503 -> 512.7 tok/s). Early-resident blocks of
//     the next grid take SM slots while this one runs, so they are placed by what is free then.
// Since each kernel waits for the full completion of its predecessor, which itself waited for its
// own, the ordering of the whole stream is preserved transitively.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <utility>

namespace kestrel::cuda {

// griddepcontrol exists from sm_90; on older targets both are no-ops (and launches serialise).
__device__ __forceinline__ void wait_for_upstream() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void allow_downstream() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Hint that `p`'s 128-byte line will be read soon (no register result, so it does not stall).
__device__ __forceinline__ void prefetch_l2(const void* p) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// Asks L2 for the lines of [p, p + bytes) through the bulk-copy unit (sm_90): one instruction for
// a whole range. p and bytes are rounded out to 16 bytes, as the instruction requires.
__device__ __forceinline__ void prefetch_l2_bulk(const void* p, uint64_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const uint64_t start = reinterpret_cast<uint64_t>(p) & ~uint64_t{15};
    const uint64_t end = (reinterpret_cast<uint64_t>(p) + bytes + 15) & ~uint64_t{15};
    if (end > start) {
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(start),
                     "r"(static_cast<uint32_t>(end - start))
                     : "memory");
    }
#endif
}

// KESTREL_PDL=0 in the environment launches without the attribute (each kernel then starts after
// the previous one ends, as with <<<>>>): to measure what the overlap buys.
inline bool overlapped_launches_enabled() {
    static const bool enabled = [] {
        const char* value = std::getenv("KESTREL_PDL");
        return value == nullptr || std::string_view(value) != "0";
    }();
    return enabled;
}

// kernel<<<grid, block, shared_bytes, stream>>>(args...) with the programmatic stream
// serialization attribute, and, with cluster_x > 0, in thread block clusters of cluster_x blocks
// along x (grid.x a multiple of cluster_x; sm_90); returns the launch's error (callers check it
// like cudaGetLastError).
template <class... Params, class... Args>
cudaError_t launch_overlapped_clusters(void (*kernel)(Params...), dim3 grid, dim3 block,
                                       size_t shared_bytes, cudaStream_t stream, unsigned cluster_x,
                                       Args&&... args) {
    cudaLaunchAttribute attributes[2] = {};
    unsigned count = 0;
    if (overlapped_launches_enabled()) {
        attributes[count].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attributes[count].val.programmaticStreamSerializationAllowed = 1;
        ++count;
    }
    if (cluster_x > 0) {
        attributes[count].id = cudaLaunchAttributeClusterDimension;
        attributes[count].val.clusterDim.x = cluster_x;
        attributes[count].val.clusterDim.y = 1;
        attributes[count].val.clusterDim.z = 1;
        ++count;
    }
    cudaLaunchConfig_t config{};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = shared_bytes;
    config.stream = stream;
    config.attrs = attributes;
    config.numAttrs = count;
    return cudaLaunchKernelEx(&config, kernel, static_cast<Params>(std::forward<Args>(args))...);
}

// How many clusters of cluster_x blocks of `threads` threads and `shared_bytes` of dynamic shared
// memory the GPU holds at once for `kernel` (cudaOccupancyMaxActiveClusters; it also raises the
// kernel's dynamic shared memory limit to shared_bytes). 0 where the GPU or the driver refuses:
// a refusal is an answer here, so no error is left sticky.
template <class... Params>
int max_active_clusters(void (*kernel)(Params...), unsigned cluster_x, unsigned threads,
                        size_t shared_bytes) {
    cudaLaunchAttribute attribute{};
    attribute.id = cudaLaunchAttributeClusterDimension;
    attribute.val.clusterDim.x = cluster_x;
    attribute.val.clusterDim.y = 1;
    attribute.val.clusterDim.z = 1;
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(cluster_x);
    config.blockDim = dim3(threads);
    config.dynamicSmemBytes = shared_bytes;
    config.attrs = &attribute;
    config.numAttrs = 1;
    int clusters = 0;
    const bool ok = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(shared_bytes)) == cudaSuccess &&
                    cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) == cudaSuccess;
    (void)cudaGetLastError();
    return ok ? clusters : 0;
}

template <class... Params, class... Args>
cudaError_t launch_overlapped(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                              cudaStream_t stream, Args&&... args) {
    return launch_overlapped_clusters(kernel, grid, block, shared_bytes, stream, 0u,
                                      std::forward<Args>(args)...);
}

}  // namespace kestrel::cuda
