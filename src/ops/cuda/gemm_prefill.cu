// The prefill GEMM (API: gemm_prefill.h): convert x to bf16, dequantise W to bf16 (whole, or in
// slices of output rows: GemmContext::set_weight_slice_bytes), then one cuBLASLt bf16 x bf16 ->
// fp32 GEMM per slice, fp32 accumulation. Operand kernels: dequantize_bf16.cu.
//
// cuBLASLt is column-major. y row-major [m, n] is y^T column-major [n, m] = W · x^T with
// W row-major [n, k] = column-major [k, n] taken transposed and x row-major [m, k] = column-major
// [k, m]: the "TN" problem (A = W, op T; B = x, op N), the one Hopper's tensor-core kernels take
// with both operands K-major. A slice of output rows [r, r + s) is the column-major block at
// y + r with the same leading dimension n.
#include "ops/cuda/gemm_prefill.h"

#include <algorithm>
#include <string>

#include "ops/cuda/cuda_check.h"
#include "ops/ops.h"  // prefill_weight_slice_rows

namespace kestrel::cuda {

namespace {

Status cublas_status(cublasStatus_t status, const char* what) {
    if (status == CUBLAS_STATUS_SUCCESS) return ok_status();
    return Status(StatusCode::kInternal, std::string(what) + ": " + cublasLtGetStatusName(status) + " (" +
                                             cublasLtGetStatusString(status) + ")");
}

#define KESTREL_CUBLAS_CHECK(expr) KESTREL_RETURN_IF_ERROR(cublas_status((expr), #expr))

// Every operand is at least 16-byte aligned (the callers check): algorithms that need 256 bytes,
// cuBLASLt's default assumption, are excluded rather than risked.
constexpr uint32_t kOperandAlignment = 16;

bool aligned(const void* p, uintptr_t to) { return (reinterpret_cast<uintptr_t>(p) % to) == 0; }

int64_t round_up(int64_t value, int64_t to) { return (value + to - 1) / to * to; }

int64_t x_scratch_bytes(int64_t m, int64_t k) { return round_up(m * k * 2, 256); }

// Output rows per dequantise + GEMM step.
int64_t slice_rows(const GemmContext& context, int64_t n, int64_t k) {
    return prefill_weight_slice_rows(n, k, static_cast<int64_t>(context.weight_slice_bytes()));
}

std::string shape_text(int64_t m, int64_t n, int64_t k) {
    return "m " + std::to_string(m) + ", n " + std::to_string(n) + ", k " + std::to_string(k);
}

Status check_gemm(const char* what, const float* x, int64_t m, int64_t n, int64_t k, int64_t k_multiple,
                  const void* scratch, const float* y) {
    if (m <= 0 || n <= 0 || k <= 0 || k % k_multiple != 0) {
        return Status(StatusCode::kInvalidArgument, std::string(what) + ": " + shape_text(m, n, k) +
                                                        " needs positive sizes and k % " +
                                                        std::to_string(k_multiple) + " == 0");
    }
    if (x == nullptr || scratch == nullptr || y == nullptr || !aligned(x, 16) || !aligned(scratch, 16) ||
        !aligned(y, 16)) {
        return Status(StatusCode::kInvalidArgument,
                      std::string(what) + ": x, scratch and y must be non-null and 16-byte aligned");
    }
    return ok_status();
}

template <class View, class Dequantize>
Status gemm_quantized(GemmContext& context, const float* x, int64_t m, const View& w, void* scratch, float* y,
                      cudaStream_t stream, Dequantize dequantize) {
    uint16_t* x_bf16 = gemm_scratch_x(scratch);
    uint16_t* w_bf16 = reinterpret_cast<uint16_t*>(static_cast<char*>(scratch) + x_scratch_bytes(m, w.k));
    // x null: the caller has written x in bf16 at the scratch's start (gemm_scratch_x).
    if (x != nullptr) KESTREL_RETURN_IF_ERROR(convert_f32_to_bf16(x, m * w.k, x_bf16, stream));
    const int64_t step = slice_rows(context, w.n, w.k);
    for (int64_t row = 0; row < w.n; row += step) {
        const int64_t rows = std::min(step, w.n - row);
        KESTREL_RETURN_IF_ERROR(dequantize(w, row, rows, w_bf16, stream));
        KESTREL_RETURN_IF_ERROR(matmul_bf16(context, x_bf16, m, w_bf16, rows, w.k, y + row, w.n, stream));
    }
    return ok_status();
}

}  // namespace

struct GemmPlan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t w_layout = nullptr;  // [k, n] column-major, used transposed
    cublasLtMatrixLayout_t x_layout = nullptr;  // [k, m] column-major
    cublasLtMatrixLayout_t y_layout = nullptr;  // [n, m] column-major, leading dimension ldy
    cublasLtMatmulAlgo_t algo{};

    GemmPlan() = default;
    GemmPlan(const GemmPlan&) = delete;
    GemmPlan& operator=(const GemmPlan&) = delete;
    ~GemmPlan() {
        if (y_layout != nullptr) (void)cublasLtMatrixLayoutDestroy(y_layout);
        if (x_layout != nullptr) (void)cublasLtMatrixLayoutDestroy(x_layout);
        if (w_layout != nullptr) (void)cublasLtMatrixLayoutDestroy(w_layout);
        if (desc != nullptr) (void)cublasLtMatmulDescDestroy(desc);
    }
};

Result<std::unique_ptr<GemmContext>> GemmContext::create(size_t workspace_bytes) {
    std::unique_ptr<GemmContext> context(new GemmContext());
    KESTREL_CUBLAS_CHECK(cublasLtCreate(&context->handle_));
    if (workspace_bytes > 0) KESTREL_CUDA_CHECK(cudaMalloc(&context->workspace_, workspace_bytes));
    context->workspace_bytes_ = workspace_bytes;
    return Result<std::unique_ptr<GemmContext>>(std::move(context));
}

GemmContext::~GemmContext() {
    plans_.clear();
    if (workspace_ != nullptr) (void)cudaFree(workspace_);
    if (handle_ != nullptr) (void)cublasLtDestroy(handle_);
}

Result<const GemmPlan*> GemmContext::plan(int64_t m, int64_t n, int64_t k, int64_t ldy) {
    const std::lock_guard<std::mutex> lock(plans_mutex_);
    const std::array<int64_t, 4> key{m, n, k, ldy};
    if (const auto found = plans_.find(key); found != plans_.end()) return static_cast<const GemmPlan*>(found->second.get());

    auto plan = std::make_unique<GemmPlan>();
    KESTREL_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t transpose = CUBLAS_OP_T, no_transpose = CUBLAS_OP_N;
    KESTREL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &transpose,
                                                        sizeof transpose));
    KESTREL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &no_transpose,
                                                        sizeof no_transpose));
    const auto u = [](int64_t v) { return static_cast<uint64_t>(v); };
    KESTREL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->w_layout, CUDA_R_16BF, u(k), u(n), k));
    KESTREL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->x_layout, CUDA_R_16BF, u(k), u(m), k));
    KESTREL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->y_layout, CUDA_R_32F, u(n), u(m), ldy));

    cublasLtMatmulPreference_t preference = nullptr;
    KESTREL_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
    const std::unique_ptr<cublasLtMatmulPreferenceOpaque_t, decltype(&cublasLtMatmulPreferenceDestroy)> owned(
        preference, &cublasLtMatmulPreferenceDestroy);
    const uint64_t workspace = workspace_bytes_;
    KESTREL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                              &workspace, sizeof workspace));
    for (const cublasLtMatmulPreferenceAttributes_t attribute :
         {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
          CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
        KESTREL_CUBLAS_CHECK(
            cublasLtMatmulPreferenceSetAttribute(preference, attribute, &kOperandAlignment, sizeof kOperandAlignment));
    }
    cublasLtMatmulHeuristicResult_t best{};
    int found = 0;
    KESTREL_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(handle_, plan->desc, plan->w_layout, plan->x_layout,
                                                        plan->y_layout, plan->y_layout, preference, 1, &best,
                                                        &found));
    if (found == 0) {
        return Status(StatusCode::kUnsupported,
                      "cuBLASLt has no bf16 -> fp32 algorithm for " + shape_text(m, n, k) + ", ldy " + std::to_string(ldy));
    }
    plan->algo = best.algo;
    const GemmPlan* chosen = plan.get();
    plans_.emplace(key, std::move(plan));
    return chosen;
}

Status GemmContext::prepare(int64_t m, int64_t n, int64_t k) {
    if (m <= 0 || n <= 0 || k <= 0) {
        return Status(StatusCode::kInvalidArgument, "GemmContext::prepare: " + shape_text(m, n, k));
    }
    KESTREL_RETURN_IF_ERROR(plan(m, n, k, n).status());  // gemm_bf16, and unsliced W4 / W8
    const int64_t step = slice_rows(*this, n, k);
    KESTREL_RETURN_IF_ERROR(plan(m, step, k, n).status());
    if (n % step != 0) KESTREL_RETURN_IF_ERROR(plan(m, n % step, k, n).status());
    return ok_status();
}

size_t gemm_scratch_bytes(int64_t m_max, int64_t n, int64_t k) {
    return static_cast<size_t>(x_scratch_bytes(m_max, k) + n * k * 2);
}

size_t gemm_scratch_bytes(const GemmContext& context, int64_t m_max, int64_t n, int64_t k) {
    return static_cast<size_t>(x_scratch_bytes(m_max, k) + slice_rows(context, n, k) * k * 2);
}

Status matmul_bf16(GemmContext& context, const uint16_t* x, int64_t m, const uint16_t* w, int64_t n, int64_t k,
                   float* y, int64_t ldy, cudaStream_t stream) {
    if (m <= 0 || n <= 0 || k <= 0 || ldy < n) {
        return Status(StatusCode::kInvalidArgument,
                      "matmul_bf16: " + shape_text(m, n, k) + ", ldy " + std::to_string(ldy) + " (>= n needed)");
    }
    if (x == nullptr || w == nullptr || y == nullptr || !aligned(x, kOperandAlignment) ||
        !aligned(w, kOperandAlignment) || !aligned(y, kOperandAlignment)) {
        return Status(StatusCode::kInvalidArgument, "matmul_bf16: x, w and y must be non-null and 16-byte aligned");
    }
    KESTREL_ASSIGN_OR_RETURN(const GemmPlan* plan, context.plan(m, n, k, ldy));
    const float one = 1.0f, zero = 0.0f;  // beta = 0: y is only written
    KESTREL_CUBLAS_CHECK(cublasLtMatmul(context.handle(), plan->desc, &one, w, plan->w_layout, x, plan->x_layout, &zero,
                                        y, plan->y_layout, y, plan->y_layout, &plan->algo, context.workspace(),
                                        context.workspace_bytes(), stream));
    return ok_status();
}

Status gemm_w4(GemmContext& context, const float* x, int64_t m, const W4DeviceView& w, void* scratch, float* y,
               cudaStream_t stream) {
    KESTREL_RETURN_IF_ERROR(check_gemm("gemm_w4", x, m, w.n, w.k, 32, scratch, y));
    return gemm_quantized(context, x, m, w, scratch, y, stream, dequantize_w4_to_bf16);
}

Status gemm_w4_bf16_x(GemmContext& context, int64_t m, const W4DeviceView& w, void* scratch,
                      float* y, cudaStream_t stream) {
    KESTREL_RETURN_IF_ERROR(check_gemm("gemm_w4_bf16_x", static_cast<const float*>(scratch), m, w.n,
                                       w.k, 32, scratch, y));
    return gemm_quantized(context, nullptr, m, w, scratch, y, stream, dequantize_w4_to_bf16);
}

Status gemm_w8_bf16_x(GemmContext& context, int64_t m, const W8DeviceView& w, void* scratch,
                      float* y, cudaStream_t stream) {
    KESTREL_RETURN_IF_ERROR(check_gemm("gemm_w8_bf16_x", static_cast<const float*>(scratch), m, w.n,
                                       w.k, 32, scratch, y));
    return gemm_quantized(context, nullptr, m, w, scratch, y, stream, dequantize_w8_to_bf16);
}

Status gemm_w8(GemmContext& context, const float* x, int64_t m, const W8DeviceView& w, void* scratch, float* y,
               cudaStream_t stream) {
    KESTREL_RETURN_IF_ERROR(check_gemm("gemm_w8", x, m, w.n, w.k, 32, scratch, y));
    return gemm_quantized(context, x, m, w, scratch, y, stream, dequantize_w8_to_bf16);
}

Status gemm_bf16(GemmContext& context, const float* x, int64_t m, const uint16_t* w, int64_t n, int64_t k,
                 void* scratch, float* y, cudaStream_t stream) {
    KESTREL_RETURN_IF_ERROR(check_gemm("gemm_bf16", x, m, n, k, 8, scratch, y));
    uint16_t* x_bf16 = gemm_scratch_x(scratch);
    KESTREL_RETURN_IF_ERROR(convert_f32_to_bf16(x, m * k, x_bf16, stream));
    return matmul_bf16(context, x_bf16, m, w, n, k, y, n, stream);
}

}  // namespace kestrel::cuda
