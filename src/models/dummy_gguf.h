// Synthetic GGUF files of the built-in models (dummy_configs.h): the real tensor names and
// shapes (model_shapes.h), the metadata llama.cpp and our reader expect, a synthetic tokenizer
// and seeded random weights encoded into real GGUF blocks, so a full-size model can be loaded
// and benchmarked without downloading it (`kestrel make-gguf --dummy NAME`).
//
// The file is streamed: one tensor at a time is generated, encoded (on every thread) and
// written, so a 31B model never sits in memory whole.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "io/gguf.h"
#include "io/hf_config.h"
#include "io/weight_source.h"
#include "kestrel/status.h"
#include "models/model_config.h"

namespace kestrel {

// ---- block encoders -------------------------------------------------------------------------
//
// Encoders for the types a Q4_K_M, Q8_0 or F16 file holds: F32, F16, Q8_0, Q5_0, Q5_1, Q4_K,
// Q5_K, Q6_K (ggml-common.h block layouts, as src/io/dequantize_*.cpp read them). Each block's
// scales are rounded *up* to fp16 (and a minimum down) so the quantised grid covers the block:
// nothing clips, and every element dequantises to within half a step of its input, where the
// step is the block's (or sub-block's) scale: d for Q8_0/Q5_0/Q5_1, d·sc for Q4_K/Q5_K/Q6_K.
// The scales come from each (sub-)block's min and max, not llama.cpp's iterative search:
// coarser on real weights, irrelevant for random ones, and many times faster.
bool quantize_supported(DType type);

// Encodes `src` (a whole number of `type` blocks) into exactly dtype_bytes(type, src.size())
// bytes. kUnsupported for other types, kInvalidArgument when the sizes disagree.
Status quantize_blocks(DType type, std::span<const float> src, std::span<uint8_t> dst);

// ---- the tensor-type mix --------------------------------------------------------------------

// What `kestrel make-gguf --type` writes, as llama-quantize names the file types.
enum class DummyQuant { kQ4_K_M, kQ8_0, kF16 };

// "q4_k_m", "q8_0", "f16" (any case); kInvalidArgument listing them for anything else.
Result<DummyQuant> parse_dummy_quant(std::string_view name);
std::string_view dummy_quant_name(DummyQuant quant);  // "Q4_K_M", "Q8_0", "F16"
// general.file_type: llama.cpp's llama_ftype (15 MOSTLY_Q4_K_M, 7 MOSTLY_Q8_0, 1 MOSTLY_F16).
uint32_t gguf_file_type(DummyQuant quant);

// The type llama-quantize gives each tensor of `tensors`, listed as model_tensor_shapes(config,
// DType::kQ4_K) lists them: its F32 entries are the tensors llama.cpp never quantises (norms,
// scalars, router, conv1d) and stay F32. For Q4_K_M this is llama.cpp's llama-quant.cpp
// (llama_tensor_get_type_impl, upstream 2026): Q4_K by default; the output tensor, or the
// token embedding when tied, Q6_K; attn_v and attn_qkv Q6_K on the layers use_more_bits picks
// (the first and last eighth and every third between), counted over the tensors that have one;
// ffn_down (dense and expert) Q6_K on the layers use_more_bits picks of all layers; with exactly
// 8 experts attn_v and attn_k Q8_0 and attn_output Q5_K. Then llama-quant's fallback for rows a
// block does not divide: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, and F16 when that does not
// divide either. Q8_0 and F16 files hold every quantised tensor in that type (Q8_0 falls back to F16).
std::vector<DType> dummy_tensor_types(const ModelConfig& config, std::span<const WeightInfo> tensors,
                                      DummyQuant quant);

// ---- the weights' values --------------------------------------------------------------------

enum class DummyInit {
    kMatrix,     // scale · z, z ~ N(0, 1): scale = 1/sqrt(row length), so y = W x keeps x's size
    kNorm,       // 1 + 0.05 z: GGUF norm weights multiply (Gemma 4 by w; Gemma 3, Qwen3.5 store 1 + w)
    kVector,     // z (Qwen3.5's ssm_dt.bias)
    kRopeFreqs,  // Gemma 4 rope_freqs: 1 for the rotated pairs, 1e30 for the rest (gemma4.cpp)
    kDecay,      // Qwen3.5's ssm_a = -exp(A_log): -(1 + 15 u), u ~ U(0, 1), as Mamba's A in [1, 16]
};

struct DummyTensor {
    WeightInfo info;           // name, the type written, shape (outermost first), sizes
    DummyInit init = DummyInit::kMatrix;
    float scale = 1.0f;        // kMatrix
    int64_t rotary_pairs = 0;  // kRopeFreqs
    uint64_t stream = 0;       // the generator's key: the seed and the tensor's name, hashed
};

// Elements [first, first + count) of the tensor in row-major order, before encoding. Every
// element is a pure function of (stream, index), so any part of any tensor can be regenerated
// (the tests compare the file with it) and generated on any thread. z is the Irwin-Hall sum of
// four 16-bit uniforms of one SplitMix64 hash, scaled to unit variance: normal to within
// ~1% in the body, bounded by ±3.46 (no outliers to stretch a block's scale).
void dummy_values(const DummyTensor& tensor, int64_t first, int64_t count, float* out);

// ---- the file --------------------------------------------------------------------------------

struct DummyModel {
    ModelConfig config;
    std::vector<DummyTensor> tensors;   // model_tensor_shapes' order
    std::vector<GgufKeyValue> metadata; // general.*, <arch>.*, tokenizer.ggml.*
    int64_t tensor_bytes = 0;           // the data section without padding
};

// The plan of a synthetic file for a config.json: kUnsupported for an architecture
// model_shapes has no table for, or a vocabulary too small for the synthetic tokenizer's 260
// fixed tokens; kUnsupported naming the tensor when the mix needs a type without an encoder.
Result<DummyModel> plan_dummy_model(const HfConfig& hf, std::string name, DummyQuant quant, uint64_t seed);
// The same for a built-in model ("gemma4-31b", ...); kNotFound listing them for another name.
Result<DummyModel> plan_dummy_model(std::string_view dummy_name, DummyQuant quant, uint64_t seed);

// The synthetic vocabulary: <pad> <eos> <bos> <unk> (ids 0-3, Gemma's), the byte tokens
// <0x00>..<0xFF>, then placeholder pieces ("a", "▁a", "ab", "▁ab", ...) up to `vocab_size`,
// as a "llama" (SentencePiece) tokenizer with scores and token types.
struct SyntheticVocabulary {
    std::vector<std::string> pieces;
    std::vector<float> scores;
    std::vector<int32_t> token_types;  // llama.cpp's: 1 normal, 2 unknown, 3 control, 6 byte
};
SyntheticVocabulary synthetic_vocabulary(int64_t vocab_size);

struct DummyWriteProgress {
    int64_t tensors_done = 0;
    int64_t tensors_total = 0;
    int64_t bytes_done = 0;
    int64_t bytes_total = 0;
};

struct DummyWriteOptions {
    int threads = 0;  // encoding threads; 0: every hardware thread
    std::function<void(const DummyWriteProgress&)> on_progress;  // after each tensor
};

// Writes the file (through a temporary renamed into place, as GgufWriter does).
Status write_dummy_gguf(const DummyModel& model, const std::filesystem::path& path, const DummyWriteOptions& options);

}  // namespace kestrel
