#include "ops/cuda/cuda_ops.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string_view>

#include <fmt/format.h>

#include "core/log.h"
#include "ops/cuda/attention.h"
#include "ops/cuda/attention_inputs.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/fused_ffn.h"
#include "ops/cuda/gated_delta.h"
#include "ops/cuda/gemv_w4a8.h"
#include "ops/cuda/gemv_w8a8.h"
#include "ops/cuda/kv_cache_tq4.h"
#include "ops/cuda/moe_experts.h"
#include "ops/cuda/moe_prefill.h"
#include "ops/cuda/qwen35_ops.h"
#include "ops/cuda/sampling.h"
#include "ops/cuda/small_ops.h"
#include "ops/cuda/weights_extra.h"

namespace kestrel {

Result<std::unique_ptr<Ops>> make_cuda_ops() {
    KESTREL_ASSIGN_OR_RETURN(std::unique_ptr<cuda::CudaOps> ops, cuda::CudaOps::create());
    return std::unique_ptr<Ops>(std::move(ops));
}

namespace cuda {
namespace {

W4DeviceView w4_view(const Weight& w) {
    return W4DeviceView{static_cast<const uint8_t*>(w.data.data()),
                        static_cast<const uint16_t*>(w.scales.data()),
                        static_cast<const uint32_t*>(w.super_scales.data()), w.out, w.in};
}

W8DeviceView w8_view(const Weight& w) {
    return W8DeviceView{static_cast<const int8_t*>(w.data.data()), static_cast<const uint32_t*>(w.scales.data()),
                        w.out, w.in};
}

KvCacheBf16View bf16_cache(const KvLayerView& cache) {
    return KvCacheBf16View{static_cast<uint16_t*>(cache.k), static_cast<uint16_t*>(cache.v), cache.capacity,
                           cache.n_kv_heads, cache.head_dim, cache.v_head_dim};
}

KvCacheTq4View tq4_cache(const KvLayerView& cache) {
    return KvCacheTq4View{static_cast<uint8_t*>(cache.k),
                          static_cast<uint8_t*>(cache.v),
                          cache.k_norm,
                          cache.v_norm,
                          cache.rotation,
                          cache.capacity,
                          cache.n_kv_heads,
                          cache.head_dim,
                          cache.k_center};
}

Status unsupported_kv(KvDtype dtype) {
    return Status(StatusCode::kInternal,
                  fmt::format("the CUDA backend's KV cache must be bf16 or TQ4, not {}",
                              static_cast<int>(dtype)));
}

// GPU sampling (sampling.cu) on the backend's stream.
class CudaDeviceSampler final : public DeviceSampler {
public:
    CudaDeviceSampler(GpuSampler sampler, cudaStream_t stream) : sampler_(std::move(sampler)), stream_(stream) {}
    Status sample(const float* logits, int32_t* token) override { return sampler_.sample(logits, token, stream_); }
    Status accept(const int32_t* tokens, int64_t count) override { return sampler_.accept(tokens, count, stream_); }

private:
    GpuSampler sampler_;
    cudaStream_t stream_;
};

class CudaGraphStep final : public CapturedStep {
public:
    CudaGraphStep(cudaGraph_t graph, cudaGraphExec_t exec, cudaStream_t stream)
        : graph_(graph), exec_(exec), stream_(stream) {}
    ~CudaGraphStep() override {
        (void)cudaGraphExecDestroy(exec_);
        (void)cudaGraphDestroy(graph_);
    }
    Status replay() override {
        KESTREL_CUDA_CHECK(cudaGraphLaunch(exec_, stream_));
        return ok_status();
    }

private:
    cudaGraph_t graph_;
    cudaGraphExec_t exec_;
    cudaStream_t stream_;
};

}  // namespace

Result<std::unique_ptr<CudaOps>> CudaOps::create() {
    int count = 0;
    const cudaError_t error = cudaGetDeviceCount(&count);
    if (error != cudaSuccess || count == 0) {
        return Status(StatusCode::kUnsupported,
                      error != cudaSuccess ? fmt::format("no CUDA device ({})", cudaGetErrorString(error))
                                           : std::string("no CUDA device"));
    }
    std::unique_ptr<CudaOps> ops(new CudaOps());
    KESTREL_CUDA_CHECK(cudaSetDevice(0));
    KESTREL_CUDA_CHECK(cudaStreamCreateWithFlags(&ops->stream_, cudaStreamNonBlocking));
    KESTREL_ASSIGN_OR_RETURN(ops->gemm_, GemmContext::create());
    ops->gemm_->set_weight_slice_bytes(static_cast<size_t>(kPrefillWeightSliceBytes));
    cudaDeviceProp properties{};
    KESTREL_CUDA_CHECK(cudaGetDeviceProperties(&properties, 0));
    log_info("CUDA backend on {} (sm_{}{}, {:.1f} GiB)", properties.name, properties.major, properties.minor,
             static_cast<double>(properties.totalGlobalMem) / (1 << 30));
    return ops;
}

CudaOps::~CudaOps() {
    if (stream_ != nullptr) {
        (void)cudaStreamSynchronize(stream_);
        (void)cudaStreamDestroy(stream_);
    }
    for (HostCopy& copy : host_copies_) {
        if (copy.done != nullptr) (void)cudaEventDestroy(copy.done);
    }
    if (host_copy_pinned_ != nullptr) (void)cudaFreeHost(host_copy_pinned_);
}

void CudaOps::note(const Status& status) {
    if (!status.ok() && first_error_.ok()) first_error_ = status;
}

Status CudaOps::take_error() {
    Status error = first_error_;
    first_error_ = ok_status();
    return error;
}

size_t CudaOps::retired_bytes() const {
    size_t total = 0;
    for (const Buffer& buffer : retired_) total += buffer.bytes();
    return total;
}

Result<void*> CudaOps::ensure(Scratch& scratch, size_t bytes) {
    if (scratch.buffer.bytes() >= bytes) return scratch.buffer.data();
    if (capturing_) {
        return Status(StatusCode::kInternal,
                      fmt::format("CUDA scratch of {} bytes needed while capturing a graph (not sized by the "
                                  "eager step before it)",
                                  bytes));
    }
    log_debug("CUDA scratch: a buffer grows from {} to {} bytes", scratch.buffer.bytes(), bytes);
    if (!scratch.buffer.empty()) {
        if (scratch.graphs_before < graphs_captured_) {
            // A captured graph may still point at the old buffer: keep it.
            retired_.push_back(std::move(scratch.buffer));
        } else {
            // No graph has seen it: free it once the work queued on it is done, before the
            // larger one is made (the first prefill chunk grows the GEMM scratch from its
            // q | k | v weight to its gate | up weight; keeping both cost Gemma 4 31B 174 MiB).
            KESTREL_CUDA_CHECK(cudaStreamSynchronize(stream_));
            scratch.buffer = Buffer();
        }
    }
    KESTREL_ASSIGN_OR_RETURN(scratch.buffer, allocate(bytes));
    scratch.graphs_before = graphs_captured_;
    return scratch.buffer.data();
}

ProfileScope::ProfileScope(CudaOps& ops, const char* op) : ops_(ops), op_(op) {
    if (!ops_.profiling_ || ops_.capturing_) return;
    if (cudaEventCreate(&start_) != cudaSuccess || cudaEventRecord(start_, ops_.stream_) != cudaSuccess) {
        ops_.note(Status(StatusCode::kInternal, "profiling: cannot record a CUDA event"));
        start_ = nullptr;
    }
}

ProfileScope::~ProfileScope() {
    if (start_ == nullptr) return;
    cudaEvent_t stop = nullptr;
    if (cudaEventCreate(&stop) != cudaSuccess || cudaEventRecord(stop, ops_.stream_) != cudaSuccess) {
        ops_.note(Status(StatusCode::kInternal, "profiling: cannot record a CUDA event"));
        return;
    }
    ops_.timed_.push_back({op_, start_, stop});
}

std::vector<OpTiming> CudaOps::take_profile() {
    std::vector<OpTiming> table;
    note(cuda_status(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"));
    for (const TimedLaunch& launch : timed_) {
        float ms = 0.0f;
        (void)cudaEventElapsedTime(&ms, launch.start, launch.stop);
        (void)cudaEventDestroy(launch.start);
        (void)cudaEventDestroy(launch.stop);
        auto it = std::find_if(table.begin(), table.end(), [&](const OpTiming& t) { return t.op == launch.op; });
        if (it == table.end()) it = table.insert(table.end(), OpTiming{launch.op, 0, 0.0});
        it->calls += 1;
        it->microseconds += 1000.0 * ms;
    }
    timed_.clear();
    std::sort(table.begin(), table.end(), [](const OpTiming& a, const OpTiming& b) { return a.microseconds > b.microseconds; });
    return table;
}

// ---- memory --------------------------------------------------------------------------------------

Result<Buffer> CudaOps::allocate(size_t bytes) {
    void* data = nullptr;
    const cudaError_t error = cudaMalloc(&data, bytes == 0 ? 256 : bytes);
    if (error != cudaSuccess) {
        (void)cudaGetLastError();  // cudaMalloc's failure is not sticky; clear it
        size_t free_bytes = 0, total = 0;
        (void)cudaMemGetInfo(&free_bytes, &total);
        return Status(StatusCode::kOutOfMemory,
                      fmt::format("cannot allocate {:.2f} GiB on the GPU ({:.2f} of {:.2f} GiB free)",
                                  static_cast<double>(bytes) / (1 << 30), static_cast<double>(free_bytes) / (1 << 30),
                                  static_cast<double>(total) / (1 << 30)));
    }
    return Buffer(data, bytes, [](void* p) { (void)cudaFree(p); });
}

Status CudaOps::copy_to_backend(void* dst, const void* src, size_t bytes) {
    if (bytes == 0) return ok_status();
    KESTREL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
    return ok_status();
}

Status CudaOps::copy_to_host(void* dst, const void* src, size_t bytes) {
    if (bytes == 0) return ok_status();
    KESTREL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    KESTREL_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return ok_status();
}

Status CudaOps::fill_zero(void* dst, size_t bytes) {
    KESTREL_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, stream_));
    return ok_status();
}

Status CudaOps::copy_within(void* dst, const void* src, size_t bytes) {
    KESTREL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
    return ok_status();
}

Result<int64_t> CudaOps::copy_to_host_async(void* dst, const void* src, size_t bytes) {
    if (bytes > kAsyncHostCopyBytes || capturing_) {
        return Status(
            StatusCode::kInvalidArgument,
            fmt::format("copy_to_host_async: {} bytes{} (at most {}, outside capture)", bytes,
                        capturing_ ? " while capturing" : "", kAsyncHostCopyBytes));
    }
    if (host_copy_pinned_ == nullptr) {
        // Pinned, so that the copy is truly asynchronous (into pageable memory it would wait).
        KESTREL_CUDA_CHECK(
            cudaMallocHost(&host_copy_pinned_, kHostCopySlots * kAsyncHostCopyBytes));
        for (HostCopy& copy : host_copies_) {
            KESTREL_CUDA_CHECK(cudaEventCreateWithFlags(&copy.done, cudaEventDisableTiming));
        }
    }
    const int slot = static_cast<int>(next_host_copy_ % kHostCopySlots);
    KESTREL_RETURN_IF_ERROR(finish_host_copy(slot));  // the slot's previous copy, if never waited
    HostCopy& copy = host_copies_[slot];
    void* pinned = static_cast<unsigned char*>(host_copy_pinned_) + slot * kAsyncHostCopyBytes;
    KESTREL_CUDA_CHECK(cudaMemcpyAsync(pinned, src, bytes, cudaMemcpyDeviceToHost, stream_));
    KESTREL_CUDA_CHECK(cudaEventRecord(copy.done, stream_));
    copy.dst = dst;
    copy.bytes = bytes;
    copy.ticket = next_host_copy_;
    return next_host_copy_++;
}

Status CudaOps::finish_host_copy(int slot) {
    HostCopy& copy = host_copies_[slot];
    if (copy.ticket < 0) return ok_status();
    KESTREL_CUDA_CHECK(cudaEventSynchronize(copy.done));
    std::memcpy(copy.dst,
                static_cast<unsigned char*>(host_copy_pinned_) + slot * kAsyncHostCopyBytes,
                copy.bytes);
    copy.ticket = -1;
    return ok_status();
}

Status CudaOps::wait_host_copy(int64_t ticket) {
    if (ticket < 0) return ok_status();
    const int slot = static_cast<int>(ticket % kHostCopySlots);
    // A later copy that reused the slot has already landed this one.
    if (host_copies_[slot].ticket == ticket) return finish_host_copy(slot);
    return ok_status();
}

Status CudaOps::synchronize() {
    KESTREL_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return take_error();
}

Result<std::unique_ptr<CapturedStep>> CudaOps::capture(const std::function<Status()>& step) {
    KESTREL_RETURN_IF_ERROR(take_error());
    KESTREL_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    capturing_ = true;
    const Status stepped = step();
    capturing_ = false;
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(stream_, &graph);
    if (!stepped.ok()) {
        if (graph != nullptr) (void)cudaGraphDestroy(graph);
        return stepped;
    }
    KESTREL_RETURN_IF_ERROR(cuda_status(ended, "cudaStreamEndCapture"));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t instantiated = cudaGraphInstantiate(&exec, graph, 0);
    if (instantiated != cudaSuccess) {
        (void)cudaGraphDestroy(graph);
        return cuda_status(instantiated, "cudaGraphInstantiate");
    }
    ++graphs_captured_;
    auto captured = std::make_unique<CudaGraphStep>(graph, exec, stream_);
    // Capture records without running: run the step once now, as the caller expects.
    KESTREL_RETURN_IF_ERROR(captured->replay());
    return std::unique_ptr<CapturedStep>(std::move(captured));
}

Result<std::unique_ptr<DeviceSampler>> CudaOps::make_sampler(int64_t vocab, const SamplerSettings& settings) {
    const GpuSamplingParams params{settings.temperature,    settings.top_k,          settings.top_p,
                                   settings.min_p,          settings.repeat_penalty, settings.repeat_last_n,
                                   settings.presence_penalty, settings.frequency_penalty, settings.seed};
    KESTREL_ASSIGN_OR_RETURN(GpuSampler sampler, GpuSampler::create(vocab, params));
    return std::unique_ptr<DeviceSampler>(std::make_unique<CudaDeviceSampler>(std::move(sampler), stream_));
}

Result<Weight> CudaOps::random_weight(WeightFormat format, int64_t out, int64_t in, uint64_t seed) {
    Weight w;
    w.format = format;
    w.out = out;
    w.in = in;
    // Uniform in [-a, a] with a = sqrt(3 / in): unit variance in, unit variance out.
    const float a = std::sqrt(3.0f / static_cast<float>(in));
    switch (format) {
        case WeightFormat::kW4: {
            const int64_t groups = in / 32, supers = (groups + 7) / 8;
            KESTREL_ASSIGN_OR_RETURN(w.data, allocate(static_cast<size_t>(out * in / 2)));
            KESTREL_ASSIGN_OR_RETURN(w.scales, allocate(static_cast<size_t>(out * groups) * 2));
            KESTREL_ASSIGN_OR_RETURN(w.super_scales,
                                     allocate(static_cast<size_t>(out * supers) * 4));
            KESTREL_RETURN_IF_ERROR(fill_random_w4(
                static_cast<uint8_t*>(w.data.data()), static_cast<uint16_t*>(w.scales.data()),
                static_cast<uint32_t*>(w.super_scales.data()), out, in, a, seed, stream_));
            break;
        }
        case WeightFormat::kW8: {
            KESTREL_ASSIGN_OR_RETURN(w.data, allocate(static_cast<size_t>(out * in)));
            KESTREL_ASSIGN_OR_RETURN(w.scales, allocate(static_cast<size_t>(out * (in / 32)) * 4));
            KESTREL_RETURN_IF_ERROR(fill_random_w8(static_cast<int8_t*>(w.data.data()),
                                                   static_cast<uint32_t*>(w.scales.data()), out, in, a, seed, stream_));
            break;
        }
        case WeightFormat::kBF16: {
            KESTREL_ASSIGN_OR_RETURN(w.data, allocate(static_cast<size_t>(out * in) * 2));
            KESTREL_RETURN_IF_ERROR(fill_random_bf16(static_cast<uint16_t*>(w.data.data()), out * in, a, seed, stream_));
            break;
        }
        case WeightFormat::kF32:
            return Ops::random_weight(format, out, in, seed);
    }
    return w;
}

// ---- ops -----------------------------------------------------------------------------------------

void CudaOps::embed(std::span<const int32_t> ids, const Weight& table, float scale, float* out) {
    const ProfileScope scope(*this, "embed");
    const auto tokens = static_cast<int64_t>(ids.size());
    switch (table.format) {
        case WeightFormat::kW4: note(cuda::embed(ids.data(), tokens, w4_view(table), scale, out, stream_)); return;
        case WeightFormat::kW8: note(embed_w8(ids.data(), tokens, w8_view(table), scale, out, stream_)); return;
        case WeightFormat::kBF16:
            note(embed_bf16(ids.data(), tokens, static_cast<const uint16_t*>(table.data.data()), table.out, table.in,
                            scale, out, stream_));
            return;
        case WeightFormat::kF32:
            note(cuda::embed(ids.data(), tokens, table.f32(), table.out, table.in, scale, out, stream_));
            return;
    }
}

void CudaOps::rms_norm(const float* x, const float* weight, int64_t rows, int64_t dim, float eps, float* out) {
    const ProfileScope scope(*this, "rms_norm");
    note(cuda::rms_norm(x, weight, rows, dim, eps, out, stream_));
}

void CudaOps::linear(const float* x, int64_t rows, const Weight& w, float* y) {
    if (gemv_path(rows, w)) {
        // Decode: activations quantised once to Q8 blocks, then the dp4a GEMV.
        Result<Q8Block*> blocks = q8_blocks(w);
        if (!blocks.ok()) return note(blocks.status());
        Q8Block* q8 = *blocks;
        {
            const ProfileScope scope(*this, "quantize_q8");
            note(quantize_q8(x, rows, w.in, w.in, q8, stream_));
        }
        return gemv(q8, rows, w, y);
    }
    Result<void*> scratch = ensure(gemm_scratch_, gemm_scratch_bytes(*gemm_, rows, w.out, w.in));
    if (!scratch.ok()) return note(scratch.status());
    const ProfileScope scope(*this, w.format == WeightFormat::kW4   ? "gemm_w4"
                                    : w.format == WeightFormat::kW8 ? "gemm_w8"
                                                                    : "gemm_bf16");
    switch (w.format) {
        case WeightFormat::kW4: note(gemm_w4(*gemm_, x, rows, w4_view(w), *scratch, y, stream_)); return;
        case WeightFormat::kW8: note(gemm_w8(*gemm_, x, rows, w8_view(w), *scratch, y, stream_)); return;
        case WeightFormat::kBF16:
            note(gemm_bf16(*gemm_, x, rows, static_cast<const uint16_t*>(w.data.data()), w.out, w.in, *scratch, y,
                           stream_));
            return;
        case WeightFormat::kF32:
            note(Status(StatusCode::kInternal, "the CUDA backend got an fp32 matrix (the loader converts them)"));
            return;
    }
}

bool CudaOps::gemv_path(int64_t rows, const Weight& w) {
    return rows <= kGemvMaxRows && (w.format == WeightFormat::kW4 || w.format == WeightFormat::kW8);
}

Result<Q8Block*> CudaOps::q8_blocks(const Weight& w) {
    KESTREL_ASSIGN_OR_RETURN(
        void* blocks,
        ensure(q8_, static_cast<size_t>(kGemvMaxRows * (w.in / 32)) * sizeof(Q8Block)));
    return static_cast<Q8Block*>(blocks);
}

void CudaOps::gemv(const Q8Block* q8, int64_t rows, const Weight& w, float* y) {
    const ProfileScope scope(*this, w.format == WeightFormat::kW4 ? "gemv_w4a8" : "gemv_w8a8");
    note(w.format == WeightFormat::kW4 ? gemv_w4a8(w4_view(w), q8, rows, y, stream_)
                                       : gemv_w8a8(w8_view(w), q8, rows, y, stream_));
}

void CudaOps::rms_norm_linear_blocks(const float* x, const float* norm_weight, int64_t rows, int64_t dim, float eps,
                                     float* normed, bool keep_normed, const Weight& w,
                                     std::span<const int64_t> widths, float* out) {
    if (rows == 1 && !keep_normed && gemv_path(rows, w)) {
        // Decode: the norm's rows go straight into Q8 blocks (one kernel), then one GEMV over
        // the stacked weight.
        Result<Q8Block*> blocks = q8_blocks(w);
        if (!blocks.ok()) return note(blocks.status());
        Q8Block* q8 = *blocks;
        {
            const ProfileScope scope(*this, "rms_norm_quantize_q8");
            note(rms_norm_quantize_q8(x, norm_weight, rows, dim, eps, q8, stream_));
        }
        return gemv(q8, rows, w, out);
    }
    Ops::rms_norm_linear_blocks(x, norm_weight, rows, dim, eps, normed, keep_normed, w, widths, out);
}

namespace {

// ResidualRead::kBeforeWait unless KESTREL_SEAM_RESIDUAL_EARLY=0 in the environment (to measure).
ResidualRead seam_residual_read() {
    static const bool early = [] {
        const char* value = std::getenv("KESTREL_SEAM_RESIDUAL_EARLY");
        return value == nullptr || std::string_view(value) != "0";
    }();
    return early ? ResidualRead::kBeforeWait : ResidualRead::kAfterWait;
}

}  // namespace

void CudaOps::residual_norm_linear_blocks(const float* x, const float* post_norm_weight,
                                          float scale, float* residual,
                                          const float* pre_norm_weight, int64_t rows, int64_t dim,
                                          float eps, float* normed, bool keep_normed,
                                          const Weight& w, std::span<const int64_t> widths,
                                          float* out) {
    if (rows == 1 && !keep_normed && gemv_path(rows, w)) {
        // Decode: post-norm, residual update and the next pre-norm's Q8 blocks in one kernel, then
        // one GEMV over the stacked weight. x is the output of the block's last linear (ops.h),
        // a GEMV or GEMM launched right before, and the residual was written before that: so
        // the kernel may read the residual before its wait (ResidualRead, fused_ffn.h), taking
        // that round trip off the path between the two GEMVs.
        Result<Q8Block*> blocks = q8_blocks(w);
        if (!blocks.ok()) return note(blocks.status());
        {
            const ProfileScope scope(*this, "rms_norm_add_scale_norm_quantize_q8");
            note(rms_norm_add_scale_norm_quantize_q8(x, post_norm_weight, rows, dim, eps, scale,
                                                     residual, pre_norm_weight, *blocks,
                                                     seam_residual_read(), stream_));
        }
        return gemv(*blocks, rows, w, out);
    }
    Ops::residual_norm_linear_blocks(x, post_norm_weight, scale, residual, pre_norm_weight, rows,
                                     dim, eps, normed, keep_normed, w, widths, out);
}

void CudaOps::add_rms_norm_linear_blocks(const float* x, float* residual, const float* norm_weight,
                                         int64_t rows, int64_t dim, float eps, float* normed,
                                         bool keep_normed, const Weight& w,
                                         std::span<const int64_t> widths, float* out) {
    if (rows == 1 && gemv_path(rows, w)) {
        // Decode: the residual add, the norm (kept for the experts, which read fp32 rows) and its
        // Q8 blocks in one kernel, then one GEMV over the stacked weight.
        Result<Q8Block*> blocks = q8_blocks(w);
        if (!blocks.ok()) return note(blocks.status());
        {
            const ProfileScope scope(*this, "add_rms_norm_quantize_q8");
            note(add_rms_norm_quantize_q8(x, residual, norm_weight, rows, dim, eps,
                                          keep_normed ? normed : nullptr, *blocks, stream_));
        }
        return gemv(*blocks, rows, w, out);
    }
    Ops::add_rms_norm_linear_blocks(x, residual, norm_weight, rows, dim, eps, normed, keep_normed,
                                    w, widths, out);
}

void CudaOps::rms_norm_gated_linear(const float* x, const float* z, const float* weight,
                                    int64_t rows, int64_t heads, int64_t head_dim, float eps,
                                    float* gated, bool keep_gated, const Weight& w, float* out) {
    if (rows == 1 && !keep_gated && head_dim % 32 == 0 && gemv_path(rows, w)) {
        // Decode: the gated norm's values go straight into the GEMV's Q8 blocks.
        Result<Q8Block*> blocks = q8_blocks(w);
        if (!blocks.ok()) return note(blocks.status());
        {
            const ProfileScope scope(*this, "rms_norm_gated_quantize_q8");
            note(cuda::rms_norm_gated_quantize_q8(x, z, weight, rows * heads, head_dim, eps,
                                                  *blocks, stream_));
        }
        return gemv(*blocks, rows, w, out);
    }
    Ops::rms_norm_gated_linear(x, z, weight, rows, heads, head_dim, eps, gated, keep_gated, w, out);
}

namespace {

// KESTREL_DECODE_WARP_KEYS=0 in the environment keeps Gemma 4's sliding layers on the flash
// decode kernel (attention_decode_fused_inputs_quantize_q8), to measure the two against each other.
bool warp_keys_allowed() {
    static const bool allowed = [] {
        const char* value = std::getenv("KESTREL_DECODE_WARP_KEYS");
        return value == nullptr || std::string_view(value) != "0";
    }();
    return allowed;
}

// The launcher's description of one layer's attention inputs (attention_inputs.h).
AttentionInputs attention_inputs_of(float* q, float* k, float* v, const float* q_norm,
                                    const float* k_norm, const AttentionInputsParams& p) {
    AttentionInputs inputs;
    inputs.q = q;
    inputs.k = k;
    inputs.v = v;
    inputs.q_norm = q_norm;
    inputs.k_norm = k_norm;
    inputs.v_from_raw_k = p.v_from_raw_k;
    inputs.v_norm = p.v_norm;
    inputs.n_heads = p.n_heads;
    inputs.n_kv_heads = p.n_kv_heads;
    inputs.head_dim = p.head_dim;
    inputs.rotary_pairs = p.rotary_pairs;
    inputs.eps = p.eps;
    inputs.theta = p.theta;
    inputs.partial_rotary_dim = p.partial_rotary_dim;
    return inputs;
}

}  // namespace

Status CudaOps::attention_inputs(float* q, float* k, float* v, const float* q_norm,
                                 const float* k_norm, std::span<const int64_t> positions,
                                 const AttentionInputsParams& p, const KvLayerView& cache) {
    if (cache.dtype != KvDtype::kBF16 && cache.dtype != KvDtype::kTq4)
        return unsupported_kv(cache.dtype);
    const ProfileScope scope(*this, "attention_inputs");
    const AttentionInputs inputs = attention_inputs_of(q, k, v, q_norm, k_norm, p);
    if (cache.dtype == KvDtype::kTq4) {
        // The rows in place (no bf16 cache), then the TQ4 write encodes k and v.
        KESTREL_RETURN_IF_ERROR(cuda::attention_inputs(inputs, positions.data(),
                                                       static_cast<int64_t>(positions.size()),
                                                       KvCacheBf16View{}, stream_));
        kv_write(cache, positions, k, v);
        return ok_status();
    }
    return cuda::attention_inputs(inputs, positions.data(), static_cast<int64_t>(positions.size()), bf16_cache(cache),
                                  stream_);
}

void CudaOps::rms_norm_add_scale(const float* x, const float* weight, int64_t rows, int64_t dim, float eps,
                                 float scale, float* residual) {
    const ProfileScope scope(*this, "rms_norm_add_scale");
    note(cuda::rms_norm_add_scale(x, weight, rows, dim, eps, scale, residual, stream_));
}

void CudaOps::gelu_tanh_and_mul_linear(const float* gate, const float* up, int64_t rows, int64_t dim, float* act,
                                       bool keep_act, const Weight& w, float* out) {
    if (rows == 1 && !keep_act && gemv_path(rows, w)) {
        // Decode: gelu(gate) * up goes straight into the Q8 blocks of the down projection's GEMV.
        Result<Q8Block*> blocks = q8_blocks(w);
        if (!blocks.ok()) return note(blocks.status());
        Q8Block* q8 = *blocks;
        {
            const ProfileScope scope(*this, "gelu_tanh_and_mul_quantize_q8");
            note(gelu_tanh_and_mul_quantize_q8(gate, up, rows, dim, q8, stream_));
        }
        return gemv(q8, rows, w, out);
    }
    if (!keep_act && !gemv_path(rows, w) &&
        (w.format == WeightFormat::kW4 || w.format == WeightFormat::kW8) && w.in == dim &&
        (rows * dim) % 4 == 0) {
        // Prefill: gelu(gate) * up goes to the GEMM's bf16 input directly (fused_ffn.h
        // gelu_tanh_and_mul_bf16), not through an fp32 act that the GEMM would convert.
        Result<void*> scratch =
            ensure(gemm_scratch_, gemm_scratch_bytes(*gemm_, rows, w.out, w.in));
        if (!scratch.ok()) return note(scratch.status());
        {
            const ProfileScope scope(*this, "gelu_tanh_and_mul_bf16");
            note(gelu_tanh_and_mul_bf16(gate, up, rows * dim, gemm_scratch_x(*scratch), stream_));
        }
        const ProfileScope scope(*this, w.format == WeightFormat::kW4 ? "gemm_w4" : "gemm_w8");
        if (w.format == WeightFormat::kW4) {
            note(gemm_w4_bf16_x(*gemm_, rows, w4_view(w), *scratch, out, stream_));
        } else {
            note(gemm_w8_bf16_x(*gemm_, rows, w8_view(w), *scratch, out, stream_));
        }
        return;
    }
    Ops::gelu_tanh_and_mul_linear(gate, up, rows, dim, act, keep_act, w, out);
}

void CudaOps::rope_neox(float* x, std::span<const int64_t> positions, int64_t n_heads, int64_t head_dim,
                        double theta) {
    const ProfileScope scope(*this, "rope");
    note(cuda::rope_neox(x, positions.data(), static_cast<int64_t>(positions.size()), n_heads, head_dim, theta,
                         stream_));
}

void CudaOps::rope_proportional(float* x, std::span<const int64_t> positions, int64_t n_heads, int64_t head_dim,
                                int64_t rotary_pairs, double theta) {
    const ProfileScope scope(*this, "rope");
    note(cuda::rope_proportional(x, positions.data(), static_cast<int64_t>(positions.size()), n_heads, head_dim,
                                 rotary_pairs, theta, stream_));
}

void CudaOps::kv_write(const KvLayerView& cache, std::span<const int64_t> positions, const float* k,
                       const float* v) {
    const ProfileScope scope(*this, "kv_write");
    const auto tokens = static_cast<int64_t>(positions.size());
    if (cache.dtype == KvDtype::kTq4) {
        const KvCacheTq4View view = tq4_cache(cache);
        Result<void*> scratch = ensure(tq4_write_, kv_write_tq4_scratch_bytes(tokens, view));
        if (!scratch.ok()) return note(scratch.status());
        return note(kv_write_tq4(view, positions.data(), tokens, k, v, *scratch, stream_));
    }
    if (cache.dtype != KvDtype::kBF16) return note(unsupported_kv(cache.dtype));
    note(kv_write_bf16(bf16_cache(cache), positions.data(), static_cast<int64_t>(positions.size()), k, v, stream_));
}

Result<void*> CudaOps::attention_workspace(const KvCacheBf16View& cache,
                                           const AttentionShape& shape, int64_t tokens) {
    const size_t bytes = attention_workspace_bytes(tokens, cache, shape);
    if (bytes == 0) return static_cast<void*>(nullptr);
    return ensure(attention_, bytes);
}

Result<const float*> CudaOps::rope_inv_freq_table(int64_t n_pairs, int64_t frequency_dim,
                                                  double theta) {
    if (n_pairs <= 0) return static_cast<const float*>(nullptr);  // nothing rotates
    for (const RopeInvFreq& known : rope_inv_freq_) {
        if (known.n_pairs == n_pairs && known.frequency_dim == frequency_dim &&
            known.theta == theta) {
            return static_cast<const float*>(known.table.floats());
        }
    }
    if (capturing_) {
        return Status(StatusCode::kInternal,
                      "CUDA RoPE table needed while capturing a graph (not made by the eager step "
                      "before it)");
    }
    const std::vector<float> host = rope_inv_freq(n_pairs, frequency_dim, theta);
    KESTREL_ASSIGN_OR_RETURN(Buffer table, allocate(host.size() * sizeof(float)));
    KESTREL_RETURN_IF_ERROR(
        copy_to_backend(table.data(), host.data(), host.size() * sizeof(float)));
    // The host vector goes out of scope here: wait for the copy that reads it.
    KESTREL_CUDA_CHECK(cudaStreamSynchronize(stream_));
    rope_inv_freq_.push_back(RopeInvFreq{n_pairs, frequency_dim, theta, std::move(table)});
    return static_cast<const float*>(rope_inv_freq_.back().table.floats());
}

void CudaOps::note_cluster_refusal(const KvCacheBf16View& cache, const AttentionShape& shape,
                                   int64_t tokens) {
    static bool said = false;
    if (said || tokens > kAttentionDecodeMaxTokens ||
        !attention_decode_cluster_shape(tokens, cache, shape) ||
        attention_decode_combines_in_clusters(tokens, cache, shape)) {
        return;
    }
    said = true;
    log_info(
        "decode attention: this GPU cannot hold at once the thread block clusters that would "
        "combine the splits of {} kv heads x {}; a second kernel combines them",
        cache.n_kv_heads, cache.head_dim);
}

void CudaOps::attention(const float* q, std::span<const int64_t> positions, const KvLayerView& cache,
                        const AttentionParams& params, float* out) {
    if (cache.dtype == KvDtype::kTq4) return attention_tq4(q, positions, cache, params, out);
    if (cache.dtype != KvDtype::kBF16) return note(unsupported_kv(cache.dtype));
    const ProfileScope scope(*this, "attention");
    const KvCacheBf16View view = bf16_cache(cache);
    const AttentionShape shape{params.n_heads, params.scale, params.window, params.softcap};
    const auto tokens = static_cast<int64_t>(positions.size());
    Result<void*> workspace = attention_workspace(view, shape, tokens);
    if (!workspace.ok()) return note(workspace.status());
    note_cluster_refusal(view, shape, tokens);
    note(cuda::attention(q, positions.data(), tokens, view, shape, *workspace, out, stream_));
}

void CudaOps::attention_tq4(const float* q, std::span<const int64_t> positions,
                            const KvLayerView& cache, const AttentionParams& params, float* out) {
    const ProfileScope scope(*this, "attention_tq4");
    const KvCacheTq4View view = tq4_cache(cache);
    const AttentionShape shape{params.n_heads, params.scale, params.window, params.softcap};
    const auto tokens = static_cast<int64_t>(positions.size());
    const int64_t rows = tokens * params.n_heads;
    const int64_t d = view.head_dim;
    const size_t row_bytes = static_cast<size_t>(rows * d) * sizeof(float);
    Result<void*> scratch = ensure(tq4_rows_, row_bytes);
    if (!scratch.ok()) return note(scratch.status());
    auto* rotated = static_cast<float*>(*scratch);
    // q' = R q; out' = attention in the rotated space; out = R^T out' (techniques.md §4). out'
    // overwrites q' in place: each query row is read before its output row is written, by the
    // same block (prefill, single-pass decode) or by the reduce after every split (split-K).
    note(tq4_rotate_rows(q, rows, d, view.rotation, /*transpose=*/false, rotated, stream_));
    if (tokens <= kAttentionDecodeMaxTokens) {
        Result<void*> workspace =
            ensure(attention_, attention_decode_tq4_workspace_bytes(tokens, view, shape));
        if (!workspace.ok()) return note(workspace.status());
        note(attention_decode_tq4(rotated, positions.data(), tokens, view, shape, *workspace,
                                  rotated, stream_));
    } else {
        note(attention_prefill_tq4(rotated, positions.data(), tokens, view, shape, rotated,
                                   stream_));
    }
    note(tq4_rotate_rows(rotated, rows, d, view.rotation, /*transpose=*/true, out, stream_));
}

void CudaOps::attention_linear(const float* q, std::span<const int64_t> positions,
                               const KvLayerView& cache, const AttentionParams& params,
                               float* attn_out, bool keep_attn_out, const Weight& w, float* out) {
    if (cache.dtype != KvDtype::kBF16) {
        // TQ4: attention (its output turned back to the model's space), then the projection.
        return Ops::attention_linear(q, positions, cache, params, attn_out, keep_attn_out, w, out);
    }
    const auto tokens = static_cast<int64_t>(positions.size());
    const KvCacheBf16View view = bf16_cache(cache);
    if (tokens <= kAttentionDecodeMaxTokens && gemv_path(tokens, w) && view.v_head_dim % 32 == 0 &&
        w.in == params.n_heads * view.v_head_dim) {
        // Decode: the split-K reduce writes the o-projection's Q8 blocks itself.
        const AttentionShape shape{params.n_heads, params.scale, params.window, params.softcap};
        Result<void*> workspace = attention_workspace(view, shape, tokens);
        if (!workspace.ok()) return note(workspace.status());
        Result<Q8Block*> blocks = q8_blocks(w);
        if (!blocks.ok()) return note(blocks.status());
        note_cluster_refusal(view, shape, tokens);
        {
            const ProfileScope scope(*this, "attention_quantize_q8");
            note(attention_decode_quantize_q8(q, positions.data(), tokens, view, shape, *workspace,
                                              keep_attn_out ? attn_out : nullptr, *blocks,
                                              stream_));
        }
        return gemv(*blocks, tokens, w, out);
    }
    Ops::attention_linear(q, positions, cache, params, attn_out, keep_attn_out, w, out);
}

Status CudaOps::attention_inputs_linear(float* q, float* k, float* v, const float* q_norm,
                                        const float* k_norm, std::span<const int64_t> positions,
                                        const AttentionInputsParams& p, const KvLayerView& cache,
                                        const AttentionParams& params, float* attn_out,
                                        bool keep_attn_out, const Weight& w, float* out) {
    const auto tokens = static_cast<int64_t>(positions.size());
    if (cache.dtype == KvDtype::kBF16 && !keep_attn_out && gemv_path(tokens, w) &&
        w.in == params.n_heads * cache.v_head_dim) {
        const AttentionInputs inputs = attention_inputs_of(q, k, v, q_norm, k_norm, p);
        const KvCacheBf16View view = bf16_cache(cache);
        if (attention_decode_fuses_inputs(inputs, tokens, view)) {
            // Decode: the token's q, k and v rows are normalised, rotated and cached by the
            // attention kernel itself, which writes the o-projection's Q8 blocks.
            const AttentionShape shape{params.n_heads, params.scale, params.window, params.softcap};
            Result<void*> workspace = attention_workspace(view, shape, tokens);
            if (!workspace.ok()) return workspace.status();
            Result<Q8Block*> blocks = q8_blocks(w);
            if (!blocks.ok()) return blocks.status();
            KESTREL_ASSIGN_OR_RETURN(const float* inv_freq,
                                     rope_inv_freq_table(p.rotary_pairs, p.head_dim, p.theta));
            const bool warp_keys =
                warp_keys_allowed() && attention_decode_warp_keys_shape(inputs, view, shape);
            if (warp_keys && !attention_decode_warp_keys_applies(inputs, view, shape)) {
                static bool said = false;
                if (!said) {
                    said = true;
                    log_info(
                        "decode attention: this GPU cannot hold at once a cluster of 4 to 8 "
                        "blocks for each of {} kv heads for the warp-keys kernel of the sliding "
                        "layers; the flash decode kernel runs them",
                        view.n_kv_heads);
                }
            } else if (warp_keys) {
                const ProfileScope scope(*this, "attention_warp_keys_quantize_q8");
                KESTREL_RETURN_IF_ERROR(attention_decode_warp_keys_quantize_q8(
                    inputs, inv_freq, positions.data(), view, shape, nullptr, *blocks, stream_));
                gemv(*blocks, tokens, w, out);
                return ok_status();
            }
            note_cluster_refusal(view, shape, tokens);
            {
                const ProfileScope scope(*this, "attention_inputs_quantize_q8");
                KESTREL_RETURN_IF_ERROR(attention_decode_fused_inputs_quantize_q8(
                    inputs, inv_freq, positions.data(), view, shape, *workspace, nullptr, *blocks,
                    stream_));
            }
            gemv(*blocks, tokens, w, out);
            return ok_status();
        }
    }
    return Ops::attention_inputs_linear(q, k, v, q_norm, k_norm, positions, p, cache, params,
                                        attn_out, keep_attn_out, w, out);
}

void CudaOps::gelu_tanh_and_mul(const float* gate, const float* up, int64_t n, float* out) {
    const ProfileScope scope(*this, "gelu_tanh_and_mul");
    note(cuda::gelu_tanh_and_mul(gate, up, n, out, stream_));
}

void CudaOps::add(const float* a, const float* b, int64_t n, float* out) {
    const ProfileScope scope(*this, "add");
    note(cuda::add(a, b, n, out, stream_));
}

void CudaOps::scale(float* x, int64_t n, float s) {
    const ProfileScope scope(*this, "scale");
    note(cuda::scale(x, n, s, stream_));
}

void CudaOps::logits(const float* x, int64_t rows, const Weight& lm_head, float cap, float* out) {
    linear(x, rows, lm_head, out);
    const ProfileScope scope(*this, "softcap");
    if (cap > 0.0f) note(softcap(out, rows * lm_head.out, cap, stream_));
}

void CudaOps::rms_norm_add(const float* x, const float* weight, int64_t rows, int64_t dim, float eps,
                           float* residual) {
    const ProfileScope scope(*this, "rms_norm_add");
    note(cuda::rms_norm_add(x, weight, rows, dim, eps, residual, stream_));
}

void CudaOps::head_norm_rope(float* x, const float* weight, std::span<const int64_t> positions, int64_t n_heads,
                             int64_t head_dim, int64_t rotary_pairs, float eps, double theta) {
    const ProfileScope scope(*this, "head_norm_rope");
    note(cuda::head_norm_rope(x, weight, positions.data(), static_cast<int64_t>(positions.size()), n_heads, head_dim,
                              rotary_pairs, eps, theta, stream_));
}

void CudaOps::linear_blocks(const float* x, int64_t rows, const Weight& w, std::span<const int64_t> widths,
                            float* out) {
    // One row: the stacked output [1, sum(widths)] is already the blocks one after another, so a
    // single GEMV (one activation quantisation, one launch) serves every block.
    if (rows == 1) return linear(x, rows, w, out);
    Ops::linear_blocks(x, rows, w, widths, out);
}

// ---- Qwen3.5 (issue 7) -----------------------------------------------------------------------

void CudaOps::silu_and_mul(const float* gate, const float* up, int64_t n, float* out) {
    const ProfileScope scope(*this, "silu_and_mul");
    note(cuda::silu_and_mul(gate, up, n, out, stream_));
}
void CudaOps::sigmoid_mul(const float* x, const float* gate, int64_t n, float* out) {
    const ProfileScope scope(*this, "sigmoid_mul");
    note(cuda::sigmoid_mul(x, gate, n, out, stream_));
}
void CudaOps::add_sigmoid_scaled(const float* x, const float* gate, int64_t rows, int64_t dim,
                                 float* out) {
    const ProfileScope scope(*this, "add_sigmoid_scaled");
    note(cuda::add_sigmoid_scaled(x, gate, rows, dim, out, stream_));
}
void CudaOps::rope_neox_partial(float* x, std::span<const int64_t> positions, int64_t n_heads, int64_t head_dim,
                                int64_t rotary_dim, double theta) {
    note(cuda::rope_neox_partial(x, positions.data(), static_cast<int64_t>(positions.size()), n_heads, head_dim,
                                 rotary_dim, theta, stream_));
}
void CudaOps::rms_norm_gated(const float* x, const float* z, const float* weight, int64_t rows,
                             int64_t dim, float eps, float* out) {
    const ProfileScope scope(*this, "rms_norm_gated");
    note(cuda::rms_norm_gated(x, z, weight, rows, dim, eps, out, stream_));
}
void CudaOps::conv1d_causal(const float* x, int64_t rows, const float* weight,
                            const RecurrentLayerView& state, bool silu, float* out) {
    const ProfileScope scope(*this, "conv1d_causal");
    note(cuda::conv1d_causal(x, rows, weight, state.conv, state.conv_kernel, state.conv_channels,
                             silu, out, stream_));
}
void CudaOps::gated_delta_rule(const float* qkv, const float* a, const float* b, const float* a_neg,
                               const float* dt_bias, int64_t rows, const GatedDeltaParams& params,
                               const RecurrentLayerView& state, float* out) {
    const ProfileScope scope(*this, "gated_delta_rule");
    // Prefill takes the chunked form with scratch; decode needs none (0 bytes: nothing grows).
    const size_t scratch_bytes = cuda::gated_delta_scratch_bytes(rows, params);
    Result<void*> scratch = ensure(gated_delta_, scratch_bytes);
    if (!scratch.ok()) return note(scratch.status());
    note(cuda::gated_delta_rule(qkv, a, b, a_neg, dt_bias, rows, params, state.state, out, stream_,
                                *scratch, scratch_bytes));
}

namespace {

// The Gated DeltaNet's conv as the in-projection GEMV's epilogue (gemv_w4a8_conv1d) is opt-in:
// KESTREL_GDN_FUSION=1. Measured on the H100 (Qwen3.5-35B-A3B, decode at depth 512, graph replay
// with PDL, same machine, alternating): 422.7 and 422.6 tok/s fused against 432.4 and 434.1 with
// the conv as a kernel of its own (bench/results/2026-11-23-qwen35-gdn-fusion-h100.md). With PDL
// the conv kernel's launch is hidden and the fused GEMV is the slower one; without PDL (older GPUs)
// the launch it saves may matter.
bool gdn_fusion_enabled() {
    static const bool enabled = [] {
        const char* value = std::getenv("KESTREL_GDN_FUSION");
        return value != nullptr && std::string_view(value) == "1";
    }();
    return enabled;
}

}  // namespace

void CudaOps::rms_norm_linear_conv1d(const float* x, const float* norm_weight, int64_t rows,
                                     int64_t dim, float eps, float* normed, bool keep_normed,
                                     const Weight& w, std::span<const int64_t> widths, float* out,
                                     const float* conv_weight, const RecurrentLayerView& state,
                                     bool silu, float* conv_out) {
    if (rows == 1 && !keep_normed && w.format == WeightFormat::kW4 && !widths.empty() &&
        widths[0] == state.conv_channels && gdn_fusion_enabled()) {
        // Decode: the norm's Q8 blocks, then one GEMV whose epilogue runs the conv on the rows of
        // its first block.
        Result<Q8Block*> blocks = q8_blocks(w);
        if (!blocks.ok()) return note(blocks.status());
        {
            const ProfileScope scope(*this, "rms_norm_quantize_q8");
            note(rms_norm_quantize_q8(x, norm_weight, rows, dim, eps, *blocks, stream_));
        }
        const ProfileScope scope(*this, "gemv_w4a8_conv1d");
        const GemvConv1d conv{conv_weight,         state.conv, state.conv_kernel,
                              state.conv_channels, silu,       conv_out};
        return note(gemv_w4a8_conv1d(w4_view(w), *blocks, out, conv, stream_));
    }
    Ops::rms_norm_linear_conv1d(x, norm_weight, rows, dim, eps, normed, keep_normed, w, widths, out,
                                conv_weight, state, silu, conv_out);
}

void CudaOps::moe_route(const float* logits, int64_t rows, int64_t n_experts, int64_t k,
                        const float* shared_gate, int32_t* ids, float* weights) {
    const ProfileScope scope(*this, "moe_route");
    note(cuda::moe_route(logits, rows, n_experts, k, shared_gate, ids, weights, stream_));
}
void CudaOps::moe_experts(const float* x, int64_t rows, const int32_t* ids, const float* weights,
                          int64_t k, const MoeExpertWeights& experts, float* out) {
    const ProfileScope scope(*this, "moe_experts");
    auto stack = [](const Weight& w) {
        ExpertStackView view;
        view.is_w4 = w.format == WeightFormat::kW4;
        if (view.is_w4) {
            view.w4 = w4_view(w);
        } else {
            view.w8 = w8_view(w);
        }
        return view;
    };
    const Weight& gate_up = *experts.gate_up;
    const Weight& down = *experts.down;
    for (const Weight* w : {&gate_up, &down}) {
        if (w->format != WeightFormat::kW4 && w->format != WeightFormat::kW8) {
            return note(Status(
                StatusCode::kInternal,
                fmt::format("moe_experts: the CUDA expert kernels read W4 and W8 stacks, not {}",
                            weight_format_name(w->format))));
        }
    }
    if (rows > kGemvMaxRows) {
        // Prefill: slots grouped by expert, tensor-core GEMMs (moe_prefill.h).
        Result<void*> scratch =
            ensure(moe_prefill_,
                   moe_prefill_scratch_bytes(rows, k, experts.dim, experts.ffn, experts.n_experts));
        if (!scratch.ok()) return note(scratch.status());
        return note(cuda::moe_experts_prefill(x, rows, ids, weights, k, stack(gate_up), stack(down),
                                              experts.n_experts, experts.ffn, experts.dim, *scratch,
                                              /*accumulate=*/true, out, stream_));
    }
    Result<void*> scratch =
        ensure(moe_, moe_experts_scratch_bytes(rows, k, experts.dim, experts.ffn));
    if (!scratch.ok()) return note(scratch.status());
    note(cuda::moe_experts(x, rows, ids, weights, k, stack(gate_up), stack(down), experts.n_experts,
                           experts.ffn, experts.dim, *scratch, /*accumulate=*/true, out, stream_));
}

}  // namespace cuda
}  // namespace kestrel
