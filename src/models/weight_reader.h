// Reads a model's tensors by name from either layout Kestrel loads: llama.cpp's GGUF names or
// transformers' names under the text model's prefix. One place checks shapes, dequantises to
// fp32 and undoes what HF stores differently from GGUF (norm offsets, A_log).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "io/model_files.h"
#include "kestrel/status.h"
#include "models/weight_load_options.h"
#include "ops/weight_format_w8.h"
#include "ops/ops.h"

namespace kestrel {

// How an HF tensor differs from its GGUF twin (llama.cpp's converters apply these on export).
enum class HfConvert {
    kNone,
    kAddOne,       // (1 + w) RMSNorms store w in HF, 1 + w in GGUF (Gemma 3, Qwen3.5)
    kNegativeExp,  // Gated DeltaNet A_log in HF, -exp(A_log) in GGUF (ssm_a)
};

struct TensorName {
    std::string_view gguf;  // llama.cpp; "{}" is the layer index
    std::string_view hf;    // transformers, under the text model's prefix; "{}" is the layer index
    HfConvert hf_convert = HfConvert::kNone;
};

// How float (F32/F16/BF16) sources of one matrix convert on a quantising backend.
enum class MatrixPrecision {
    kAsOptions,  // as --weights says (WeightLoadOptions::float_weights)
    kAtLeastW8,  // W8 under --weights w4: a router's logits pick the experts, and 4-bit rounding
                 // would change which ones run (llama.cpp's quantiser keeps routers in F32)
    kQuantised,  // W4 or W8 only, W8 under --weights bf16: the stacks the CUDA MoE kernels read
};

// One source matrix of a stacked weight: tensor `full` of exactly `shape` (leading dimensions
// flatten into rows: a GGUF expert stack [E, f, d] is E * f rows of d).
struct MatrixPart {
    std::string full;
    std::vector<int64_t> shape;
};

// Rows [begin, begin + count) of parts[part], in flattened rows.
struct RowBlock {
    size_t part = 0;
    int64_t begin = 0;
    int64_t count = 0;
};

// lm_head sits outside the text model in every HF layout.
inline constexpr std::string_view kHfLmHead = "lm_head.weight";

class WeightReader {
public:
    // Reads fp32 host tensors only (no backend): the CPU-side callers and tests.
    explicit WeightReader(const ModelFiles& files);
    // Also reads matrices and vectors into `ops`'s memory and formats.
    WeightReader(const ModelFiles& files, Ops& ops, const WeightLoadOptions& options);

    bool gguf() const { return files_.format == ModelFormat::kGguf; }
    // "model." (text-only checkpoints) or "model.language_model." (multimodal ones).
    const std::string& hf_prefix() const { return hf_prefix_; }
    bool dummy() const { return options_.dummy; }

    std::string name_of(const TensorName& name, int64_t layer) const;
    // nullptr when absent (always, for a synthetic model: optional tensors take their defaults).
    const WeightInfo* find(const std::string& full) const {
        return files_.weights == nullptr ? nullptr : files_.weights->find(full);
    }
    const WeightInfo* find(const TensorName& name, int64_t layer) const { return find(name_of(name, layer)); }
    // HF tensors outside the text model (vision and audio towers, projectors): 0 for GGUF.
    int64_t count_outside_text_model() const;

    // Reads `full` as fp32, requiring `shape` (size-1 dimensions HF adds, e.g. a depthwise conv's
    // [C, 1, K], are dropped before comparing). No conversion.
    Result<std::vector<float>> read(const std::string& full, const std::vector<int64_t>& shape) const;
    // Reads a named tensor and applies its HfConvert when it comes from an HF folder.
    Result<std::vector<float>> read(const TensorName& name, int64_t layer, const std::vector<int64_t>& shape) const;

    // A vector (a norm's weight, a bias) as fp32 in backend memory: shape [n] (or any shape of
    // n elements), HfConvert applied.
    Result<Weight> read_vector(const TensorName& name, int64_t layer, const std::vector<int64_t>& shape);
    // A matrix [out, in] in the backend's engine format: fp32 on the CPU, W4/W8/BF16 converted
    // from the file's type on CUDA (ops/weight_format_w8.h: convert_for_engine). Logs progress.
    Result<Weight> read_matrix(const TensorName& name, int64_t layer, int64_t out, int64_t in);
    // Matrices [outs[i], in] stacked by rows into one weight for Ops::linear_blocks (q | k | v,
    // gate | up), in one engine format: parts converted to different formats are widened exactly
    // (W4 -> W8: the same codes and (scale, min)), or all rounded to bf16 when one part is bf16.
    Result<Weight> read_matrix_stack(std::span<const TensorName> names, int64_t layer,
                                     std::span<const int64_t> outs, int64_t in,
                                     MatrixPrecision precision = MatrixPrecision::kAsOptions);
    // The general form: the row blocks of `parts` (all with `in` columns) one after another, in
    // the order `blocks` lists them, as one weight in one engine format (parts widened as
    // read_matrix_stack does). Splits interleaved rows (a q_proj holding q and gate per head) and
    // interleaves stacks (expert e's gate rows, then its up rows).
    Result<Weight> read_rows(std::span<const MatrixPart> parts, std::span<const RowBlock> blocks,
                             int64_t in, MatrixPrecision precision = MatrixPrecision::kAsOptions);

private:
    // A matrix converted into the backend's engine format on the host (CUDA load path).
    Result<EngineWeights> convert(const MatrixPart& part, MatrixPrecision precision);
    Result<Weight> upload_f32(const std::vector<float>& data, int64_t out, int64_t in);
    uint64_t seed_of(const std::string& full) const;
    void note_progress(int64_t bytes);

    const ModelFiles& files_;
    Ops* ops_ = nullptr;
    WeightLoadOptions options_;
    std::string hf_prefix_ = "model.";
    int64_t total_bytes_ = 0;  // of the source, for progress
    int64_t done_bytes_ = 0;
    int next_percent_ = 10;
    bool noted_bf16_columns_ = false;
    bool noted_w8_experts_ = false;
};

}  // namespace kestrel
