// Elementwise kernels (host API: small_ops.h; CPU twins: ops/cpu/elementwise.cpp).
//
// One grid-stride kernel over a functor f(a[i], b[i]) -> out[i]: float4 loads and stores when
// every pointer is 16-byte aligned (then a scalar tail), scalar otherwise. Each functor performs
// its CPU twin's operations in the same order (explicit _rn intrinsics: no FMA contraction), so
// add, scale and residual_scale are exact and gelu/softcap differ only by tanhf's last bits.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "ops/cuda/cuda_check.h"
#include "ops/cuda/launch.cuh"
#include "ops/cuda/small_ops.h"

namespace kestrel::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 8192;  // grid-stride beyond: enough to fill any GPU

// ops/cpu/elementwise.cpp gelu_tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), times up.
struct GeluTanhMul {
    __device__ float operator()(float gate, float up) const {
        constexpr float kSqrt2OverPi = 0.7978845608028654f;
        constexpr float kCoeff = 0.044715f;
        const float cube = __fmul_rn(__fmul_rn(__fmul_rn(kCoeff, gate), gate), gate);
        const float t = tanhf(__fmul_rn(kSqrt2OverPi, __fadd_rn(gate, cube)));
        return __fmul_rn(__fmul_rn(__fmul_rn(0.5f, gate), __fadd_rn(1.0f, t)), up);
    }
};

struct Add {
    __device__ float operator()(float a, float b) const { return __fadd_rn(a, b); }
};

struct Scale {
    float s;
    __device__ float operator()(float x, float) const { return __fmul_rn(x, s); }
};

// Gemma 4 layer_scalar: a device value, read on the device so a captured graph stays valid.
struct ScaleByDeviceScalar {
    const float* s;
    __device__ float operator()(float x, float) const { return __fmul_rn(x, __ldg(s)); }
};

// cap * tanh(x / cap)
struct Softcap {
    float cap;
    __device__ float operator()(float x, float) const { return __fmul_rn(cap, tanhf(__fdiv_rn(x, cap))); }
};

// b null: f(a[i], a[i]) (unary functors ignore their second argument).
template <class F>
__global__ void __launch_bounds__(kThreads)
    elementwise_kernel(const float* a, const float* b, float* out, int64_t n, bool vec4, F f) {
    wait_for_upstream();
    allow_downstream();
    const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
    const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
    int64_t scalar_from = 0;
    if (vec4) {
        const int64_t n4 = n / 4;
        const float4* a4 = reinterpret_cast<const float4*>(a);
        const float4* b4 = reinterpret_cast<const float4*>(b != nullptr ? b : a);
        float4* out4 = reinterpret_cast<float4*>(out);
        for (int64_t c = first; c < n4; c += stride) {
            const float4 x = a4[c];
            const float4 y = b4[c];
            out4[c] = make_float4(f(x.x, y.x), f(x.y, y.y), f(x.z, y.z), f(x.w, y.w));
        }
        scalar_from = n4 * 4;
    }
    for (int64_t i = scalar_from + first; i < n; i += stride) out[i] = f(a[i], b != nullptr ? b[i] : a[i]);
}

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <class F>
Status launch(const char* what, const float* a, const float* b, float* out, int64_t n, F f, cudaStream_t stream) {
    if (n < 0) return Status(StatusCode::kInvalidArgument, std::string(what) + ": negative size " + std::to_string(n));
    if (n == 0) return ok_status();
    if (a == nullptr || out == nullptr) return Status(StatusCode::kInvalidArgument, std::string(what) + ": null pointer");
    const bool vec4 = aligned16(a) && aligned16(b) && aligned16(out);
    const int64_t work = vec4 ? (n + 3) / 4 : n;
    const int64_t blocks = std::min(kMaxBlocks, (work + kThreads - 1) / kThreads);
    KESTREL_CUDA_CHECK(launch_overlapped(elementwise_kernel<F>, dim3(static_cast<unsigned>(blocks)),
                                         dim3(kThreads), 0, stream, a, b, out, n, vec4, f));
    KESTREL_CUDA_CHECK(cudaGetLastError());
    return ok_status();
}

}  // namespace

Status gelu_tanh_and_mul(const float* gate, const float* up, int64_t n, float* out, cudaStream_t stream) {
    if (n > 0 && up == nullptr) return Status(StatusCode::kInvalidArgument, "gelu_tanh_and_mul: null up");
    return launch("gelu_tanh_and_mul", gate, up, out, n, GeluTanhMul{}, stream);
}

Status add(const float* a, const float* b, int64_t n, float* out, cudaStream_t stream) {
    if (n > 0 && b == nullptr) return Status(StatusCode::kInvalidArgument, "add: null b");
    return launch("add", a, b, out, n, Add{}, stream);
}

Status scale(float* x, int64_t n, float s, cudaStream_t stream) {
    return launch("scale", x, nullptr, x, n, Scale{s}, stream);
}

Status residual_scale(float* x, int64_t n, const float* layer_scalar, cudaStream_t stream) {
    if (n > 0 && layer_scalar == nullptr) {
        return Status(StatusCode::kInvalidArgument, "residual_scale: null layer_scalar");
    }
    return launch("residual_scale", x, nullptr, x, n, ScaleByDeviceScalar{layer_scalar}, stream);
}

Status softcap(float* x, int64_t n, float cap, cudaStream_t stream) {
    if (!(cap > 0.0f)) {
        return Status(StatusCode::kInvalidArgument, "softcap: cap " + std::to_string(cap) + " must be positive");
    }
    return launch("softcap", x, nullptr, x, n, Softcap{cap}, stream);
}

}  // namespace kestrel::cuda
