// Synthetic GGUF files: block encoders, llama-quant's Q4_K_M mix, seeded values, metadata and a
// synthetic tokenizer, streamed through GgufWriter. See dummy_gguf.h.
#include "models/dummy_gguf.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstring>
#include <mutex>
#include <thread>

#include "core/half.h"
#include "core/printable.h"
#include "io/gguf_writer.h"
#include "models/dummy_configs.h"
#include "models/model_shapes.h"

namespace kestrel {

// ---- block encoders -------------------------------------------------------------------------

namespace {

void store_fp16(uint8_t* at, uint16_t bits) {
    at[0] = static_cast<uint8_t>(bits & 0xFF);
    at[1] = static_cast<uint8_t>(bits >> 8);
}

int round_clamped(float value, int lo, int hi) {
    return std::clamp(static_cast<int>(std::lrintf(value)), lo, hi);
}

// block_q8_0: d fp16 | qs[32] int8; x = d · q. d = amax / 127.
void encode_q8_0(const float* x, uint8_t* block) {
    float amax = 0.0f;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[i]));
    const uint16_t d_bits = fp16_at_least(amax / 127.0f);
    const float d = fp16_to_fp32(d_bits);
    store_fp16(block, d_bits);
    for (int i = 0; i < 32; ++i) {
        const int q = d > 0.0f ? round_clamped(x[i] / d, -127, 127) : 0;
        block[2 + i] = static_cast<uint8_t>(static_cast<int8_t>(q));
    }
}

// Q5_0 and Q5_1 keep bit 4 of element j in bit j of a little-endian uint32 and the low
// nibbles as Q4_0: byte j holds element j (low) and j + 16 (high).
void pack_5bit(const int* levels, uint8_t* qh_at, uint8_t* qs) {
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
        qs[j] = static_cast<uint8_t>((levels[j] & 0x0F) | ((levels[j + 16] & 0x0F) << 4));
        qh |= static_cast<uint32_t>((levels[j] >> 4) & 1) << j;
        qh |= static_cast<uint32_t>((levels[j + 16] >> 4) & 1) << (j + 16);
    }
    for (int b = 0; b < 4; ++b) qh_at[b] = static_cast<uint8_t>(qh >> (8 * b));
}

// block_q5_0: d fp16 | qh u32 | qs[16]; x = d · (q - 16). Symmetric: d = amax / 15, q - 16 in [-15, 15].
void encode_q5_0(const float* x, uint8_t* block) {
    float amax = 0.0f;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[i]));
    const uint16_t d_bits = fp16_at_least(amax / 15.0f);
    const float d = fp16_to_fp32(d_bits);
    store_fp16(block, d_bits);
    int levels[32];
    for (int i = 0; i < 32; ++i) levels[i] = 16 + (d > 0.0f ? round_clamped(x[i] / d, -15, 15) : 0);
    pack_5bit(levels, block + 2, block + 6);
}

// block_q5_1: d fp16 | m fp16 | qh u32 | qs[16]; x = d · q + m, q in [0, 31].
void encode_q5_1(const float* x, uint8_t* block) {
    float lo = x[0], hi = x[0];
    for (int i = 1; i < 32; ++i) {
        lo = std::min(lo, x[i]);
        hi = std::max(hi, x[i]);
    }
    const uint16_t m_bits = fp16_at_most(lo);
    const float m = fp16_to_fp32(m_bits);
    const uint16_t d_bits = fp16_at_least((hi - m) / 31.0f);
    const float d = fp16_to_fp32(d_bits);
    store_fp16(block, d_bits);
    store_fp16(block + 2, m_bits);
    int levels[32];
    for (int i = 0; i < 32; ++i) levels[i] = d > 0.0f ? round_clamped((x[i] - m) / d, 0, 31) : 0;
    pack_5bit(levels, block + 4, block + 8);
}

// Q4_K and Q5_K super-blocks: d fp16 | dmin fp16 | scales[12] | (Q5_K: qh[32]) | qs[128].
// Sub-block j (32 elements) dequantises as d·sc[j]·q - dmin·m[j], sc and m 6-bit, q in
// [0, q_max]. The minimum m_eff = dmin·m[j] is rounded up to cover the sub-block's lowest
// element (at most 0, as llama.cpp), then sc[j] up so that sc·q_max reaches its highest.
void encode_k_scale_min(const float* x, int q_max, uint8_t* block, int* levels) {
    float lows[8], highs[8];
    float max_low = 0.0f;
    for (int j = 0; j < 8; ++j) {
        float lo = 0.0f, hi = x[32 * j];
        for (int l = 0; l < 32; ++l) {
            lo = std::min(lo, x[32 * j + l]);
            hi = std::max(hi, x[32 * j + l]);
        }
        lows[j] = -lo;
        highs[j] = hi;
        max_low = std::max(max_low, -lo);
    }
    const uint16_t dmin_bits = fp16_at_least(max_low / 63.0f);
    const float dmin = fp16_to_fp32(dmin_bits);
    int mins[8];
    float min_eff[8], scale_needed[8];
    float max_scale = 0.0f;
    for (int j = 0; j < 8; ++j) {
        mins[j] = dmin > 0.0f ? std::min(63, static_cast<int>(std::ceil(lows[j] / dmin))) : 0;
        min_eff[j] = dmin * static_cast<float>(mins[j]);  // the dequantiser's product
        scale_needed[j] = std::max(0.0f, highs[j] + min_eff[j]) / static_cast<float>(q_max);
        max_scale = std::max(max_scale, scale_needed[j]);
    }
    const uint16_t d_bits = fp16_at_least(max_scale / 63.0f);
    const float d = fp16_to_fp32(d_bits);
    store_fp16(block, d_bits);
    store_fp16(block + 2, dmin_bits);
    uint8_t* scales = block + 4;
    std::memset(scales, 0, 12);
    for (int j = 0; j < 8; ++j) {
        const int sc = d > 0.0f ? std::min(63, static_cast<int>(std::ceil(scale_needed[j] / d))) : 0;
        const float step = d * static_cast<float>(sc);
        for (int l = 0; l < 32; ++l) {
            levels[32 * j + l] = step > 0.0f ? round_clamped((x[32 * j + l] + min_eff[j]) / step, 0, q_max) : 0;
        }
        // ggml-quants.c quantize_row_q4_K_ref's packing (dequantize_blocks.h k4_scale_min reads it).
        if (j < 4) {
            scales[j] = static_cast<uint8_t>(sc);
            scales[j + 4] = static_cast<uint8_t>(mins[j]);
        } else {
            scales[j + 4] = static_cast<uint8_t>((sc & 0x0F) | ((mins[j] & 0x0F) << 4));
            scales[j - 4] |= static_cast<uint8_t>((sc >> 4) << 6);
            scales[j] |= static_cast<uint8_t>((mins[j] >> 4) << 6);
        }
    }
}

// Element 32j + l's low nibble sits in qs[32·(j/2) + l], low half for even j, high for odd.
void pack_k_nibbles(const int* levels, uint8_t* qs) {
    for (int pair = 0; pair < 4; ++pair) {
        for (int l = 0; l < 32; ++l) {
            qs[32 * pair + l] = static_cast<uint8_t>((levels[64 * pair + l] & 0x0F) |
                                                     ((levels[64 * pair + 32 + l] & 0x0F) << 4));
        }
    }
}

void encode_q4_k(const float* x, uint8_t* block) {
    int levels[256];
    encode_k_scale_min(x, 15, block, levels);
    pack_k_nibbles(levels, block + 16);
}

// Q5_K: bit 4 of element 32j + l is bit j of qh[l].
void encode_q5_k(const float* x, uint8_t* block) {
    int levels[256];
    encode_k_scale_min(x, 31, block, levels);
    uint8_t* qh = block + 16;
    std::memset(qh, 0, 32);
    for (int j = 0; j < 8; ++j) {
        for (int l = 0; l < 32; ++l) qh[l] |= static_cast<uint8_t>(((levels[32 * j + l] >> 4) & 1) << j);
    }
    pack_k_nibbles(levels, block + 48);
}

// block_q6_k: ql[128] | qh[64] | scales[16] int8 | d fp16; element i = d · sc[i/16] · (q - 32).
// Symmetric per 16 elements: sc · 31 covers the group's largest |x|, sc up to 127.
void encode_q6_k(const float* x, uint8_t* block) {
    float needed[16];
    float max_needed = 0.0f;
    for (int g = 0; g < 16; ++g) {
        float amax = 0.0f;
        for (int l = 0; l < 16; ++l) amax = std::max(amax, std::fabs(x[16 * g + l]));
        needed[g] = amax / 31.0f;
        max_needed = std::max(max_needed, needed[g]);
    }
    const uint16_t d_bits = fp16_at_least(max_needed / 127.0f);
    const float d = fp16_to_fp32(d_bits);
    uint8_t* ql = block;
    uint8_t* qh = block + 128;
    uint8_t* scales = block + 192;
    std::memset(block, 0, 192);
    for (int g = 0; g < 16; ++g) {
        const int sc = d > 0.0f ? std::min(127, static_cast<int>(std::ceil(needed[g] / d))) : 0;
        scales[g] = static_cast<uint8_t>(static_cast<int8_t>(sc));
        const float step = d * static_cast<float>(sc);
        for (int l = 0; l < 16; ++l) {
            const int i = 16 * g + l;
            const int level = 32 + (step > 0.0f ? round_clamped(x[i] / step, -31, 31) : 0);
            // Element i = 128h + r: low nibble in ql[64h + r % 64] (half r / 64), bits 4-5 in
            // qh[32h + r % 32] (pair r / 32); dequantize_kquants.cpp block_q6_k reads it back.
            const int h = i / 128, r = i % 128;
            ql[64 * h + r % 64] |= static_cast<uint8_t>((level & 0x0F) << (4 * (r / 64)));
            qh[32 * h + r % 32] |= static_cast<uint8_t>((level >> 4) << (2 * (r / 32)));
        }
    }
    store_fp16(block + 208, d_bits);
}

template <void (*encode)(const float*, uint8_t*)>
void encode_blocks(std::span<const float> src, std::span<uint8_t> dst, int64_t block_elements, int64_t block_bytes) {
    const int64_t n_blocks = static_cast<int64_t>(src.size()) / block_elements;
    for (int64_t b = 0; b < n_blocks; ++b) encode(src.data() + b * block_elements, dst.data() + b * block_bytes);
}

}  // namespace

bool quantize_supported(DType type) {
    switch (type) {
        case DType::kF32:
        case DType::kF16:
        case DType::kQ8_0:
        case DType::kQ5_0:
        case DType::kQ5_1:
        case DType::kQ4_K:
        case DType::kQ5_K:
        case DType::kQ6_K:
            return true;
        default:
            return false;
    }
}

Status quantize_blocks(DType type, std::span<const float> src, std::span<uint8_t> dst) {
    const DTypeInfo& info = dtype_info(type);
    if (!quantize_supported(type)) {
        return Status(StatusCode::kUnsupported, fmt::format("no block encoder for {}", info.name));
    }
    const std::optional<int64_t> bytes = dtype_bytes(type, static_cast<int64_t>(src.size()));
    if (!bytes || *bytes != static_cast<int64_t>(dst.size())) {
        return Status(StatusCode::kInvalidArgument,
                      fmt::format("{} elements do not fill {} bytes of {} blocks ({} elements, {} bytes each)",
                                  src.size(), dst.size(), info.name, info.block_elements, info.block_bytes));
    }
    switch (type) {
        case DType::kF32:
            std::memcpy(dst.data(), src.data(), dst.size());
            break;
        case DType::kF16:
            for (size_t i = 0; i < src.size(); ++i) store_fp16(dst.data() + 2 * i, fp32_to_fp16(src[i]));
            break;
        case DType::kQ8_0: encode_blocks<encode_q8_0>(src, dst, info.block_elements, info.block_bytes); break;
        case DType::kQ5_0: encode_blocks<encode_q5_0>(src, dst, info.block_elements, info.block_bytes); break;
        case DType::kQ5_1: encode_blocks<encode_q5_1>(src, dst, info.block_elements, info.block_bytes); break;
        case DType::kQ4_K: encode_blocks<encode_q4_k>(src, dst, info.block_elements, info.block_bytes); break;
        case DType::kQ5_K: encode_blocks<encode_q5_k>(src, dst, info.block_elements, info.block_bytes); break;
        case DType::kQ6_K: encode_blocks<encode_q6_k>(src, dst, info.block_elements, info.block_bytes); break;
        default: break;
    }
    return ok_status();
}

// ---- the tensor-type mix --------------------------------------------------------------------

Result<DummyQuant> parse_dummy_quant(std::string_view name) {
    std::string lower(name);
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (lower == "q4_k_m") return DummyQuant::kQ4_K_M;
    if (lower == "q8_0") return DummyQuant::kQ8_0;
    if (lower == "f16") return DummyQuant::kF16;
    return Status(StatusCode::kInvalidArgument,
                  fmt::format("unknown type '{}' (known: q4_k_m, q8_0, f16)", printable(name)));
}

std::string_view dummy_quant_name(DummyQuant quant) {
    switch (quant) {
        case DummyQuant::kQ4_K_M: return "Q4_K_M";
        case DummyQuant::kQ8_0: return "Q8_0";
        case DummyQuant::kF16: return "F16";
    }
    return "?";
}

uint32_t gguf_file_type(DummyQuant quant) {
    switch (quant) {
        case DummyQuant::kQ4_K_M: return 15;
        case DummyQuant::kQ8_0: return 7;
        case DummyQuant::kF16: return 1;
    }
    return 0;
}

namespace {

// llama-quant.cpp use_more_bits: the first and last eighth of the layers, and every third between.
bool use_more_bits(int64_t i_layer, int64_t n_layers) {
    return i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2;
}

bool contains(std::string_view name, std::string_view part) { return name.find(part) != std::string_view::npos; }

// "blk.N." -> N, or -1 for the global tensors.
int64_t layer_of(std::string_view name) {
    constexpr std::string_view kPrefix = "blk.";
    int64_t layer = -1;
    if (name.substr(0, kPrefix.size()) != kPrefix) return -1;
    const char* digits = name.data() + kPrefix.size();
    const auto [end, error] = std::from_chars(digits, name.data() + name.size(), layer);
    return error == std::errc() && end != digits ? layer : -1;
}

// llama-quant.cpp tensor_type_fallback: the type for rows `row` elements long.
DType fallback(DType type, int64_t row) {
    if (row % dtype_info(type).block_elements == 0) return type;
    switch (type) {
        case DType::kQ4_K: type = DType::kQ5_0; break;
        case DType::kQ5_K: type = DType::kQ5_1; break;
        case DType::kQ6_K: type = DType::kQ8_0; break;
        default: return DType::kF16;  // Q8_0: llama-quant has no fallback (it throws); F16 still writes the file
    }
    return row % dtype_info(type).block_elements == 0 ? type : DType::kF16;
}

// llama_tensor_get_type_impl's branches for LLAMA_FTYPE_MOSTLY_Q4_K_M. Not reproduced: Falcon's
// rules and LLM_TYPE_70B's attn_v (neither is an architecture here).
DType q4_k_m_type(const ModelConfig& config, const WeightInfo& tensor, bool tied_embeddings,
                  int64_t& i_attention_v, int64_t n_attention_v) {
    const std::string& name = tensor.name;
    const int64_t row = tensor.shape.back();
    const bool eight_experts = config.n_experts == 8;
    if (name == "output.weight" || (tied_embeddings && name == "token_embd.weight")) {
        return row % dtype_info(DType::kQ6_K).block_elements != 0 ? DType::kQ8_0 : DType::kQ6_K;
    }
    if (name == "token_embd.weight") return DType::kQ4_K;
    // tensor_get_category tests attn_qkv before attn_v, attn_k, attn_q, attn_output, ffn_*.
    if (contains(name, "attn_qkv.weight") || contains(name, "attn_v.weight")) {
        // The counter runs over llama.cpp's tensor order (by layer, then name), which is layer
        // order here: a layer has at most one of them.
        DType type = use_more_bits(i_attention_v, n_attention_v) ? DType::kQ6_K : DType::kQ4_K;
        if (eight_experts) type = DType::kQ8_0;
        ++i_attention_v;
        return type;
    }
    if (contains(name, "attn_k.weight")) return eight_experts ? DType::kQ8_0 : DType::kQ4_K;
    if (contains(name, "attn_output.weight")) return eight_experts ? DType::kQ5_K : DType::kQ4_K;
    if (contains(name, "ffn_down")) {
        // llama.cpp counts ffn_down tensors (dense: one per layer) or, with experts, reads the
        // layer from the name; both are the layer index for these architectures.
        return use_more_bits(layer_of(name), config.n_layers) ? DType::kQ6_K : DType::kQ4_K;
    }
    return DType::kQ4_K;  // attn_q, ffn_gate, ffn_up and the rest: the Q4_K_M default
}

}  // namespace

std::vector<DType> dummy_tensor_types(const ModelConfig& config, std::span<const WeightInfo> tensors,
                                      DummyQuant quant) {
    bool tied_embeddings = true;
    int64_t n_attention_v = 0;
    for (const WeightInfo& tensor : tensors) {
        if (tensor.name == "output.weight") tied_embeddings = false;
        if (tensor.dtype != DType::kF32 &&
            (contains(tensor.name, "attn_qkv.weight") || contains(tensor.name, "attn_v.weight"))) {
            ++n_attention_v;
        }
    }
    std::vector<DType> types;
    types.reserve(tensors.size());
    int64_t i_attention_v = 0;
    for (const WeightInfo& tensor : tensors) {
        if (tensor.dtype == DType::kF32) {
            types.push_back(DType::kF32);
            continue;
        }
        DType type = DType::kF16;
        if (quant == DummyQuant::kQ4_K_M) type = q4_k_m_type(config, tensor, tied_embeddings, i_attention_v, n_attention_v);
        if (quant == DummyQuant::kQ8_0) type = DType::kQ8_0;
        types.push_back(fallback(type, tensor.shape.back()));
    }
    return types;
}

// ---- the weights' values --------------------------------------------------------------------

namespace {

// SplitMix64's output function (Steele, Lea, Flood 2014): a bijective 64-bit mix.
uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

uint64_t hash_at(uint64_t stream, int64_t index) { return mix64(stream + (static_cast<uint64_t>(index) + 1) * kGolden); }

// Irwin-Hall: the sum of four uniforms (b + 1/2) / 2^16 has mean 2 and variance 1/3.
float standard_value(uint64_t stream, int64_t index) {
    const uint64_t bits = hash_at(stream, index);
    const float sum = static_cast<float>((bits & 0xFFFF) + ((bits >> 16) & 0xFFFF) + ((bits >> 32) & 0xFFFF) + (bits >> 48));
    constexpr float kScale = 1.7320508075688772f / 65536.0f;  // sqrt(3) / 2^16
    return (sum + 2.0f - 131072.0f) * kScale;
}

float uniform_value(uint64_t stream, int64_t index) {
    return static_cast<float>(hash_at(stream, index) >> 40) * (1.0f / 16777216.0f);
}

uint64_t tensor_stream(uint64_t seed, std::string_view name) {
    uint64_t hash = 0xCBF29CE484222325ull;  // FNV-1a
    for (char c : name) hash = (hash ^ static_cast<uint8_t>(c)) * 0x100000001B3ull;
    return mix64(seed ^ mix64(hash));
}

bool ends_with(std::string_view name, std::string_view suffix) {
    return name.size() >= suffix.size() && name.substr(name.size() - suffix.size()) == suffix;
}

}  // namespace

void dummy_values(const DummyTensor& tensor, int64_t first, int64_t count, float* out) {
    for (int64_t i = 0; i < count; ++i) {
        const int64_t index = first + i;
        switch (tensor.init) {
            case DummyInit::kMatrix: out[i] = tensor.scale * standard_value(tensor.stream, index); break;
            case DummyInit::kNorm: out[i] = 1.0f + 0.05f * standard_value(tensor.stream, index); break;
            case DummyInit::kVector: out[i] = standard_value(tensor.stream, index); break;
            case DummyInit::kRopeFreqs: out[i] = index < tensor.rotary_pairs ? 1.0f : 1e30f; break;
            case DummyInit::kDecay: out[i] = -(1.0f + 15.0f * uniform_value(tensor.stream, index)); break;
        }
    }
}

// ---- the synthetic vocabulary ---------------------------------------------------------------

SyntheticVocabulary synthetic_vocabulary(int64_t vocab_size) {
    SyntheticVocabulary vocabulary;
    const auto add = [&](std::string piece, int32_t type) {
        if (static_cast<int64_t>(vocabulary.pieces.size()) >= vocab_size) return;
        // SentencePiece orders pieces by frequency: a lower id scores higher, so merges prefer it.
        vocabulary.scores.push_back(type == 1 ? -static_cast<float>(vocabulary.pieces.size()) : 0.0f);
        vocabulary.pieces.push_back(std::move(piece));
        vocabulary.token_types.push_back(type);
    };
    add("<pad>", 3);
    add("<eos>", 3);
    add("<bos>", 3);
    add("<unk>", 2);
    for (int byte = 0; byte < 256; ++byte) add(fmt::format("<0x{:02X}>", byte), 6);
    const std::string space = "\xE2\x96\x81";  // U+2581, SentencePiece's space
    add(space, 1);
    for (char c = '!'; c <= '~'; ++c) add(std::string(1, c), 1);
    for (char c = '!'; c <= '~'; ++c) add(space + c, 1);
    // Then lowercase words of 2, 3, ... letters, bare and after a space, until the vocabulary is full.
    constexpr std::string_view kLetters = "etaoinshrdlucmfwypvbgkjqxz";
    for (int length = 2; static_cast<int64_t>(vocabulary.pieces.size()) < vocab_size; ++length) {
        std::vector<int> digits(static_cast<size_t>(length), 0);
        while (static_cast<int64_t>(vocabulary.pieces.size()) < vocab_size) {
            std::string word;
            for (int digit : digits) word += kLetters[static_cast<size_t>(digit)];
            add(word, 1);
            add(space + word, 1);
            size_t position = digits.size();
            while (position > 0 && ++digits[position - 1] == static_cast<int>(kLetters.size())) digits[--position] = 0;
            if (position == 0) break;  // every word of this length is in
        }
    }
    return vocabulary;
}

// ---- the plan ---------------------------------------------------------------------------------

namespace {

constexpr int64_t kFixedTokens = 260;  // 4 specials + 256 bytes

class MetadataBuilder {
public:
    void set(std::string key, GgufValue value) { metadata_.push_back({std::move(key), std::move(value)}); }
    void arch(const std::string& architecture, std::string_view key, GgufValue value) {
        set(fmt::format("{}.{}", architecture, key), std::move(value));
    }
    std::vector<GgufKeyValue> take() { return std::move(metadata_); }

private:
    std::vector<GgufKeyValue> metadata_;
};

uint32_t u32(int64_t value) { return static_cast<uint32_t>(value); }

// The layer config of the first layer of `kind`, or the first layer.
const LayerConfig& first_layer(const ModelConfig& config, LayerKind kind) {
    for (const LayerConfig& layer : config.layers) {
        if (layer.kind == kind) return layer;
    }
    return config.layers.front();
}

// How many frequency pairs of a Gemma 4 full layer rotate (gemma4.cpp full_rotary_pairs, from
// config.json): int(partial_rotary_factor · head_dim / 2) for "proportional" RoPE, else all.
Result<int64_t> gemma4_rotary_pairs(const HfConfig& hf, const ModelConfig& config) {
    const int64_t half = first_layer(config, LayerKind::kFull).head_dim / 2;
    KESTREL_ASSIGN_OR_RETURN(std::string rope_type,
                             hf.get_string_or("rope_parameters.full_attention.rope_type", "default"));
    if (rope_type != "proportional") return half;
    KESTREL_ASSIGN_OR_RETURN(double factor, hf.get_float_or("rope_parameters.full_attention.partial_rotary_factor", 1.0));
    const double pairs = std::floor(factor * static_cast<double>(2 * half) / 2.0);
    return std::min(half, static_cast<int64_t>(pairs));
}

// Gemma 3 and 4 keys as conversion/gemma.py writes them (gguf-layouts.md; the real Gemma 3
// 270M file's keys for gemma3).
void gemma_metadata(const ModelConfig& config, MetadataBuilder& m) {
    const std::string& a = config.architecture;
    const bool gemma4 = a == "gemma4";
    const LayerConfig& full = first_layer(config, LayerKind::kFull);
    const LayerConfig& sliding = first_layer(config, LayerKind::kSliding);
    m.arch(a, "context_length", gguf_u32(u32(config.context_length)));
    m.arch(a, "embedding_length", gguf_u32(u32(config.hidden_size)));
    m.arch(a, "block_count", gguf_u32(u32(config.n_layers)));
    m.arch(a, "feed_forward_length", gguf_u32(u32(config.ffn_size)));
    m.arch(a, "attention.head_count", gguf_u32(u32(config.n_heads)));
    std::vector<int32_t> kv_heads;
    for (const LayerConfig& layer : config.layers) kv_heads.push_back(static_cast<int32_t>(layer.n_kv_heads));
    const bool uniform_kv = std::all_of(kv_heads.begin(), kv_heads.end(), [&](int32_t n) { return n == kv_heads[0]; });
    m.arch(a, "attention.head_count_kv", gemma4 || !uniform_kv ? gguf_i32_array(kv_heads) : gguf_u32(u32(kv_heads[0])));
    m.arch(a, "attention.layer_norm_rms_epsilon", gguf_f32(static_cast<float>(config.rms_norm_eps)));
    // key_length is the full layers' head dim; Gemma 4 gives the sliding layers' as *_swa.
    m.arch(a, "attention.key_length", gguf_u32(u32(full.head_dim)));
    m.arch(a, "attention.value_length", gguf_u32(u32(full.v_head_dim)));
    m.arch(a, "rope.freq_base", gguf_f32(static_cast<float>(config.rope_theta)));
    // llama.cpp hard-codes 10000 for Gemma 3's sliding layers; our reader takes the key if present.
    if (gemma4 || config.rope_theta_sliding != 10000.0) {
        m.arch(a, "rope.freq_base_swa", gguf_f32(static_cast<float>(config.rope_theta_sliding)));
    }
    if (config.sliding_window > 0) m.arch(a, "attention.sliding_window", gguf_u32(u32(config.sliding_window)));
    if (config.final_logit_softcap > 0.0) {
        m.arch(a, "final_logit_softcapping", gguf_f32(static_cast<float>(config.final_logit_softcap)));
    }
    if (!gemma4) return;
    std::vector<bool> pattern;
    for (const LayerConfig& layer : config.layers) pattern.push_back(layer.kind == LayerKind::kSliding);
    m.arch(a, "attention.sliding_window_pattern", gguf_bool_array(pattern));
    m.arch(a, "attention.key_length_swa", gguf_u32(u32(sliding.head_dim)));
    m.arch(a, "attention.value_length_swa", gguf_u32(u32(sliding.v_head_dim)));
    m.arch(a, "rope.dimension_count", gguf_u32(u32(full.head_dim)));
    m.arch(a, "rope.dimension_count_swa", gguf_u32(u32(sliding.head_dim)));
    m.arch(a, "attention.shared_kv_layers", gguf_u32(0));
    m.arch(a, "embedding_length_per_layer_input", gguf_u32(0));
}

// Qwen3.5-MoE keys as conversion/qwen.py writes them (gguf-layouts.md, the qwen35_tiny fixture),
// without the multi-token-prediction block (not written, so no nextn_predict_layers).
Status qwen35moe_metadata(const HfConfig& hf, const ModelConfig& config, MetadataBuilder& m) {
    const std::string& a = config.architecture;
    const LayerConfig& full = first_layer(config, LayerKind::kFull);
    int64_t interval = 0;
    for (size_t i = 0; i < config.layers.size() && interval == 0; ++i) {
        if (config.layers[i].kind == LayerKind::kFull) interval = static_cast<int64_t>(i) + 1;
    }
    m.arch(a, "context_length", gguf_u32(u32(config.context_length)));
    m.arch(a, "embedding_length", gguf_u32(u32(config.hidden_size)));
    m.arch(a, "block_count", gguf_u32(u32(config.n_layers)));
    m.arch(a, "attention.head_count", gguf_u32(u32(config.n_heads)));
    m.arch(a, "attention.head_count_kv", gguf_u32(u32(full.n_kv_heads)));
    if (hf.has("rope_parameters.mrope_section")) {
        KESTREL_ASSIGN_OR_RETURN(std::vector<int64_t> sections, hf.get_int_array("rope_parameters.mrope_section"));
        std::vector<int32_t> sections4(4, 0);  // llama.cpp pads the M-RoPE sections to 4
        for (size_t i = 0; i < sections.size() && i < 4; ++i) sections4[i] = static_cast<int32_t>(sections[i]);
        m.arch(a, "rope.dimension_sections", gguf_i32_array(sections4));
    }
    m.arch(a, "rope.freq_base", gguf_f32(static_cast<float>(config.rope_theta)));
    m.arch(a, "attention.layer_norm_rms_epsilon", gguf_f32(static_cast<float>(config.rms_norm_eps)));
    m.arch(a, "expert_count", gguf_u32(u32(config.n_experts)));
    m.arch(a, "expert_used_count", gguf_u32(u32(config.n_experts_used)));
    m.arch(a, "attention.key_length", gguf_u32(u32(full.head_dim)));
    m.arch(a, "attention.value_length", gguf_u32(u32(full.v_head_dim)));
    m.arch(a, "expert_feed_forward_length", gguf_u32(u32(config.expert_ffn_size)));
    m.arch(a, "expert_shared_feed_forward_length", gguf_u32(u32(config.shared_expert_ffn_size)));
    m.arch(a, "ssm.conv_kernel", gguf_u32(u32(config.linear_conv_kernel)));
    m.arch(a, "ssm.state_size", gguf_u32(u32(config.linear_k_head_dim)));
    m.arch(a, "ssm.group_count", gguf_u32(u32(config.linear_k_heads)));
    m.arch(a, "ssm.time_step_rank", gguf_u32(u32(config.linear_v_heads)));
    m.arch(a, "ssm.inner_size", gguf_u32(u32(config.linear_v_heads * config.linear_v_head_dim)));
    std::vector<bool> recurrent;
    for (const LayerConfig& layer : config.layers) recurrent.push_back(layer.kind == LayerKind::kLinear);
    m.arch(a, "attention.recurrent_layers", gguf_bool_array(recurrent));
    m.arch(a, "full_attention_interval", gguf_u32(u32(interval)));
    m.arch(a, "rope.dimension_count", gguf_u32(u32(config.rope_dim)));
    return ok_status();
}

void tokenizer_metadata(int64_t vocab_size, MetadataBuilder& m) {
    SyntheticVocabulary vocabulary = synthetic_vocabulary(vocab_size);
    m.set("tokenizer.ggml.model", gguf_string("llama"));
    m.set("tokenizer.ggml.pre", gguf_string("default"));
    m.set("tokenizer.ggml.tokens", gguf_string_array(vocabulary.pieces));
    m.set("tokenizer.ggml.scores", gguf_f32_array(vocabulary.scores));
    m.set("tokenizer.ggml.token_type", gguf_i32_array(vocabulary.token_types));
    m.set("tokenizer.ggml.bos_token_id", gguf_u32(2));
    m.set("tokenizer.ggml.eos_token_id", gguf_u32(1));
    m.set("tokenizer.ggml.unknown_token_id", gguf_u32(3));
    m.set("tokenizer.ggml.padding_token_id", gguf_u32(0));
    m.set("tokenizer.ggml.add_bos_token", gguf_bool(true));
    m.set("tokenizer.ggml.add_eos_token", gguf_bool(false));
    m.set("tokenizer.ggml.add_space_prefix", gguf_bool(false));
}

DummyTensor dummy_tensor(WeightInfo info, uint64_t seed, int64_t rotary_pairs) {
    DummyTensor tensor;
    tensor.stream = tensor_stream(seed, info.name);
    if (info.name == "rope_freqs.weight") {
        tensor.init = DummyInit::kRopeFreqs;
        tensor.rotary_pairs = rotary_pairs;
    } else if (ends_with(info.name, ".ssm_a")) {
        tensor.init = DummyInit::kDecay;
    } else if (info.shape.size() == 1) {
        tensor.init = contains(info.name, "norm") || contains(info.name, "layer_output_scale") ? DummyInit::kNorm
                                                                                              : DummyInit::kVector;
    } else {
        tensor.init = DummyInit::kMatrix;
        tensor.scale = 1.0f / std::sqrt(static_cast<float>(info.shape.back()));
    }
    tensor.info = std::move(info);
    return tensor;
}

}  // namespace

Result<DummyModel> plan_dummy_model(const HfConfig& hf, std::string name, DummyQuant quant, uint64_t seed) {
    DummyModel model;
    KESTREL_ASSIGN_OR_RETURN(model.config, model_config_from_hf(hf));
    ModelConfig& config = model.config;
    config.name = std::move(name);
    const std::vector<WeightInfo> shapes = model_tensor_shapes(config, DType::kQ4_K);
    if (shapes.empty()) {
        return Status(StatusCode::kUnsupported,
                      fmt::format("{}: no tensor table for architecture '{}'", hf.display_name, config.architecture));
    }
    if (config.vocab_size < kFixedTokens) {
        return Status(StatusCode::kUnsupported,
                      fmt::format("{}: vocab_size {} is smaller than the synthetic tokenizer's {} fixed tokens",
                                  hf.display_name, config.vocab_size, kFixedTokens));
    }
    int64_t rotary_pairs = 0;
    if (config.architecture == "gemma4") {
        KESTREL_ASSIGN_OR_RETURN(rotary_pairs, gemma4_rotary_pairs(hf, config));
    }
    const std::vector<DType> types = dummy_tensor_types(config, shapes, quant);
    for (size_t i = 0; i < shapes.size(); ++i) {
        if (!quantize_supported(types[i])) {
            return Status(StatusCode::kUnsupported, fmt::format("{}: tensor '{}' would be {}, which has no encoder",
                                                                hf.display_name, shapes[i].name, dtype_name(types[i])));
        }
        WeightInfo info = make_weight_info(shapes[i].name, types[i], shapes[i].shape);
        model.tensor_bytes += info.n_bytes;
        model.tensors.push_back(dummy_tensor(std::move(info), seed, rotary_pairs));
    }

    MetadataBuilder m;
    m.set("general.architecture", gguf_string(config.architecture));
    m.set("general.type", gguf_string("model"));
    m.set("general.name", gguf_string(config.name));
    m.set("general.description",
          gguf_string(fmt::format("synthetic weights (seed {}) written by kestrel make-gguf", seed)));
    if (config.architecture == "qwen35moe") {
        KESTREL_RETURN_IF_ERROR(qwen35moe_metadata(hf, config, m));
    } else {
        gemma_metadata(config, m);
    }
    m.set("general.quantization_version", gguf_u32(2));
    m.set("general.file_type", gguf_u32(gguf_file_type(quant)));
    tokenizer_metadata(config.vocab_size, m);
    model.metadata = m.take();
    return model;
}

Result<DummyModel> plan_dummy_model(std::string_view dummy_name, DummyQuant quant, uint64_t seed) {
    KESTREL_ASSIGN_OR_RETURN(std::string text, dummy_config_json(dummy_name));
    KESTREL_ASSIGN_OR_RETURN(HfConfig hf, HfConfig::parse(text, fmt::format("built-in {} config.json", dummy_name)));
    return plan_dummy_model(hf, std::string(dummy_name), quant, seed);
}

// ---- writing ----------------------------------------------------------------------------------

namespace {

// Generates and encodes one tensor into `out`, rows spread over `threads` threads.
void fill_tensor(const DummyTensor& tensor, std::span<uint8_t> out, int threads) {
    const WeightInfo& info = tensor.info;
    const int64_t row = info.shape.back();
    const int64_t rows = info.n_elements / row;
    const int64_t row_bytes = info.n_bytes / rows;
    const auto encode_rows = [&](int64_t first, int64_t last) {
        std::vector<float> values(static_cast<size_t>(row));
        for (int64_t r = first; r < last; ++r) {
            dummy_values(tensor, r * row, row, values.data());
            // Types and sizes were checked when the model was planned.
            (void)quantize_blocks(info.dtype, values, out.subspan(static_cast<size_t>(r * row_bytes), row_bytes));
        }
    };
    constexpr int64_t kSerialElements = int64_t{1} << 16;
    if (threads <= 1 || rows == 1 || info.n_elements < kSerialElements) {
        encode_rows(0, rows);
        return;
    }
    // Chunks of rows taken from a shared counter, so fast and slow threads finish together.
    const int64_t chunk = std::max<int64_t>(1, rows / (8 * threads));
    std::atomic<int64_t> next{0};
    const auto work = [&] {
        for (int64_t first = next.fetch_add(chunk); first < rows; first = next.fetch_add(chunk)) {
            encode_rows(first, std::min(rows, first + chunk));
        }
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) pool.emplace_back(work);
    work();
    for (std::thread& thread : pool) thread.join();
}

}  // namespace

Status write_dummy_gguf(const DummyModel& model, const std::filesystem::path& path, const DummyWriteOptions& options) {
    const int threads = options.threads > 0 ? options.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    GgufWriter writer;
    for (const GgufKeyValue& entry : model.metadata) writer.set(entry.key, entry.value);
    DummyWriteProgress progress{0, static_cast<int64_t>(model.tensors.size()), 0, model.tensor_bytes};
    for (const DummyTensor& tensor : model.tensors) {
        std::vector<int64_t> ne(tensor.info.shape.rbegin(), tensor.info.shape.rend());  // ggml order
        KESTREL_RETURN_IF_ERROR(writer.add_tensor(tensor.info.name, tensor.info.dtype, std::move(ne),
                                                  [&tensor, &progress, &options, threads](std::span<uint8_t> out) {
                                                      fill_tensor(tensor, out, threads);
                                                      ++progress.tensors_done;
                                                      progress.bytes_done += tensor.info.n_bytes;
                                                      if (options.on_progress) options.on_progress(progress);
                                                      return ok_status();
                                                  }));
    }
    return writer.write(path);
}

}  // namespace kestrel
