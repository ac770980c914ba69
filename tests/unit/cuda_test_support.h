// Helpers shared by the CUDA kernel tests (tests/unit/cuda_*_test.cpp): device memory that frees
// itself when an assertion returns early, and the skip condition for machines without a GPU.
// Include it only where KESTREL_HAS_CUDA is set: the non-CUDA build has no <cuda_runtime.h>.
#pragma once

#if !KESTREL_HAS_CUDA
#error "cuda_test_support.h needs the CUDA build (KESTREL_HAS_CUDA=1)"
#endif

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "kestrel/status.h"

// A fatal assertion, so a failed allocation or copy stops the test before a kernel reads garbage.
// Only usable in functions returning void (gtest's ASSERT_* rule).
#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

// The same for a kestrel Status (a launcher's argument checks and CUDA errors), with its message.
#define STATUS_OK(expr)                                 \
    do {                                                \
        const ::kestrel::Status status_ = (expr);       \
        ASSERT_TRUE(status_.ok()) << status_.message(); \
    } while (0)

namespace kestrel::testing {

// Owns one device allocation, so an ASSERT that returns early does not leak it. Not copyable (two
// owners would free twice) and, as no test hands one on, not movable either.
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    ~DeviceBuffer() { release(); }

    // At least 16 bytes: an empty upload must still give a non-null pointer, which the ops'
    // argument checks require. A second call replaces the first allocation rather than leaking it.
    cudaError_t alloc(size_t bytes) {
        release();
        return cudaMalloc(&ptr_, std::max<size_t>(bytes, 16));
    }

    template <class T>
    T* as() const {
        return static_cast<T*>(ptr_);
    }

private:
    void release() {
        if (ptr_ != nullptr) (void)cudaFree(ptr_);
        ptr_ = nullptr;
    }

    void* ptr_ = nullptr;
};

// cudaMemcpy from pageable host memory may return before its DMA into device memory is done
// (CUDA runtime API, "API synchronization behavior"), and cudaMemset is asynchronous: both are
// ordered only on the legacy default stream, with which the ops' non-blocking stream does not
// synchronise. A kernel launched next could read the old contents (seen: CudaKvTq4's centre test
// failed 2 times in 24 with six test processes sharing the GPU). So wait for the device.
inline void wait_for_host_copies() {
    CUDA_OK(cudaDeviceSynchronize());
}

// Allocates `device` to hold `host` and copies it there.
template <class T>
void upload(DeviceBuffer& device, const std::vector<T>& host) {
    CUDA_OK(device.alloc(host.size() * sizeof(T)));
    CUDA_OK(cudaMemcpy(device.as<void>(), host.data(), host.size() * sizeof(T),
                       cudaMemcpyHostToDevice));
    wait_for_host_copies();
}

// Overwrites memory that is already allocated (e.g. between replays of a captured graph, whose
// pointers must not change).
template <class T>
void copy_to_device(T* device, const std::vector<T>& host) {
    CUDA_OK(cudaMemcpy(device, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
    wait_for_host_copies();
}

// EXPECT, not ASSERT: gtest's fatal assertions need a void function. A failed copy still fails
// the test; the caller just goes on comparing zeros.
template <class T>
std::vector<T> download(const T* device, size_t n) {
    std::vector<T> host(n);
    EXPECT_EQ(cudaMemcpy(host.data(), device, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return host;
}

template <class T>
std::vector<T> download(const DeviceBuffer& device, size_t n) {
    return download(device.as<const T>(), n);
}

// Activations: normal(0, sigma) from `seed`, with every 701st element from the 13th 25 times
// larger (the occasional outlier, as real activations have).
inline std::vector<float> random_vector(size_t n, uint32_t seed, float sigma = 1.0f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, sigma);
    std::vector<float> x(n);
    for (float& v : x) v = normal(rng);
    for (size_t i = 13; i < n; i += 701) x[i] *= 25.0f;
    return x;
}

// For the fixtures' SetUp: false (skip) when the driver is missing as well as when no device is.
inline bool cuda_device_present() {
    int count = 0;
    return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

}  // namespace kestrel::testing
