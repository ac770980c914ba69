// `kestrel info` as a user runs it: on the default model, as JSON, and on every corrupt file
// (exit code 1, exactly one line on stderr, never a signal).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "gguf_cases.h"
#include "test_support.h"
#include "io/gguf_writer.h"

namespace kestrel {
namespace {

using testing::CommandResult;
using testing::run_kestrel;

int count_lines(const std::string& text) { return static_cast<int>(std::count(text.begin(), text.end(), '\n')); }

TEST(CliInfo, DescribesTheDefaultModel) {
    CommandResult result = run_kestrel("info");
    ASSERT_TRUE(result.exited);
    ASSERT_EQ(result.exit_code, 0) << result.err;
    EXPECT_NE(result.out.find("gemma3 (Gemma 3 270m)"), std::string::npos) << result.out;
    EXPECT_NE(result.out.find("18: 15 sliding, 3 full; sliding window 512"), std::string::npos) << result.out;
    EXPECT_NE(result.out.find("SSSSSF SSSSSF SSSSSF"), std::string::npos);
    EXPECT_NE(result.out.find("llama, 262144 tokens"), std::string::npos);
    EXPECT_NE(result.out.find("chat template   no"), std::string::npos);
    EXPECT_NE(result.out.find("Q5_0"), std::string::npos);
    EXPECT_NE(result.out.find("at context 32768"), std::string::npos);
}

TEST(CliInfo, JsonAtAGivenContext) {
    CommandResult result = run_kestrel("info --json -c 4096");
    ASSERT_TRUE(result.exited);
    ASSERT_EQ(result.exit_code, 0) << result.err;
    const nlohmann::json info = nlohmann::json::parse(result.out);
    EXPECT_EQ(info["architecture"], "gemma3");
    EXPECT_EQ(info["format"], "gguf");
    EXPECT_EQ(info["layers"]["count"], 18);
    EXPECT_EQ(info["layers"]["full"], 3);
    EXPECT_EQ(info["layers"]["sliding"], 15);
    EXPECT_EQ(info["tensors"]["count"], 236);
    EXPECT_EQ(info["tensors"]["by_type"]["Q4_K"]["count"], 27);
    EXPECT_EQ(info["tokenizer"]["tokens"], 262144);
    EXPECT_EQ(info["chat_template"], false);
    EXPECT_EQ(info["memory"]["context"], 4096);
    // bf16 K and V, 1 kv head of 256: full layers hold 4096 entries, sliding rings 512 + 512 - 1
    // (the CUDA backend's 2048-token prefill chunks attend in sliding steps of 512).
    EXPECT_EQ(info["memory"]["kv_cache"], (3 * 4096 + 15 * 1023) * 1024);
    // Parameters: every element of every tensor (Gemma 3 270M has ~268 M).
    EXPECT_GT(info["parameters"].get<int64_t>(), 260'000'000);
    EXPECT_LT(info["parameters"].get<int64_t>(), 275'000'000);
}

TEST(CliInfo, EveryCorruptFileExitsWithOneLine) {
    for (const testing::CorruptCase& c : testing::corrupt_gguf_cases()) {
        SCOPED_TRACE(c.name);
        const std::filesystem::path path = testing::write_temp_file(c.name + ".gguf", c.bytes);
        CommandResult result = run_kestrel("info -m '" + path.string() + "'");
        ASSERT_TRUE(result.exited) << "killed by a signal";
        EXPECT_EQ(result.exit_code, 1);
        EXPECT_EQ(count_lines(result.err), 1) << result.err;
        EXPECT_TRUE(result.err.starts_with("error: ")) << result.err;
        EXPECT_NE(result.err.find(path.string()), std::string::npos) << result.err;
        EXPECT_NE(result.err.find(c.message_part), std::string::npos) << result.err;
        std::filesystem::remove(path);
    }
}

TEST(CliInfo, UnsupportedArchitectureIsNamed) {
    GgufWriter writer;
    writer.set("general.architecture", gguf_string("llama"));
    writer.set("llama.block_count", gguf_u32(2));
    const std::filesystem::path path = testing::write_temp_file("llama.gguf", *writer.to_bytes());
    CommandResult result = run_kestrel("info -m '" + path.string() + "'");
    ASSERT_TRUE(result.exited);
    EXPECT_EQ(result.exit_code, 1);
    EXPECT_NE(result.err.find("unsupported architecture 'llama'"), std::string::npos) << result.err;
    EXPECT_NE(result.out.find("architecture    llama"), std::string::npos) << result.out;
    std::filesystem::remove(path);
}

TEST(CliInfo, BadArgumentsAreRefused) {
    CommandResult missing = run_kestrel("info -m /nonexistent/model.gguf");
    ASSERT_TRUE(missing.exited);
    EXPECT_EQ(missing.exit_code, 1);
    EXPECT_NE(missing.err.find("/nonexistent/model.gguf: no such file or folder"), std::string::npos) << missing.err;

    CommandResult negative = run_kestrel("info -c -5");
    ASSERT_TRUE(negative.exited);
    EXPECT_NE(negative.exit_code, 0);

    CommandResult unknown = run_kestrel("frobnicate");
    ASSERT_TRUE(unknown.exited);
    EXPECT_NE(unknown.exit_code, 0);
}

}  // namespace
}  // namespace kestrel
