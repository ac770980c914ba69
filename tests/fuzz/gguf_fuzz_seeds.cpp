// Writes the GGUF fuzzer's seed corpus into a folder: the valid test file, every corruption
// case, and GgufWriter files shaped like the real models' metadata.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "gguf_cases.h"
#include "io/gguf_writer.h"

namespace {

void save(const std::filesystem::path& dir, const std::string& name, const std::vector<uint8_t>& bytes) {
    std::ofstream out(dir / (name + ".gguf"), std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

std::vector<uint8_t> model_like(const std::string& architecture) {
    using namespace kestrel;
    GgufWriter writer;
    writer.set("general.architecture", gguf_string(architecture));
    writer.set(architecture + ".block_count", gguf_u32(4));
    writer.set(architecture + ".context_length", gguf_u32(128));
    writer.set(architecture + ".embedding_length", gguf_u32(32));
    writer.set(architecture + ".feed_forward_length", gguf_u32(64));
    writer.set(architecture + ".attention.head_count", gguf_u32(2));
    writer.set(architecture + ".attention.head_count_kv", gguf_u32_array({1, 1, 1, 1}));
    writer.set(architecture + ".attention.key_length", gguf_u32(16));
    writer.set(architecture + ".attention.sliding_window", gguf_u32(8));
    writer.set(architecture + ".attention.sliding_window_pattern", gguf_bool_array({true, true, true, false}));
    writer.set(architecture + ".full_attention_interval", gguf_u32(4));
    writer.set(architecture + ".ssm.conv_kernel", gguf_u32(4));
    writer.set("tokenizer.ggml.tokens", gguf_string_array({"<pad>", "<eos>", "<bos>", "a", "b"}));
    writer.set("tokenizer.ggml.scores", gguf_f32_array({0, 0, 0, -1, -2}));
    (void)writer.add_tensor("token_embd.weight", DType::kQ8_0, {32, 5}, std::vector<uint8_t>(5 * 34, 0x11));
    (void)writer.add_tensor("blk.0.attn_norm.weight", DType::kF32, {32}, std::vector<uint8_t>(128, 0));
    return *writer.to_bytes();
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: gguf_fuzz_seeds OUTPUT_DIR\n");
        return 2;
    }
    const std::filesystem::path dir = argv[1];
    std::filesystem::create_directories(dir);
    save(dir, "valid", kestrel::testing::valid_gguf_bytes());
    for (const kestrel::testing::CorruptCase& c : kestrel::testing::corrupt_gguf_cases()) save(dir, c.name, c.bytes);
    for (const char* architecture : {"gemma3", "gemma4", "qwen35moe"}) save(dir, architecture, model_like(architecture));
    return 0;
}
