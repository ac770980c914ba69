// `--kv-cache bf16|tq4` as a user passes it: `info` plans the TQ4 cache (Gemma 4 31B at 128k, the
// issue's target), `bench` and `run` take it on the CPU backend and say which layers went to TQ4,
// and a bad value is refused naming the flag.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "test_support.h"

namespace kestrel {
namespace {

using testing::CommandResult;
using testing::run_kestrel;

const std::string kTinyModel =
    std::string("'") + KESTREL_SOURCE_DIR + "/tests/fixtures/gemma4_tiny/model.gguf'";

nlohmann::json json_of(const CommandResult& result) {
    EXPECT_TRUE(result.exited);
    EXPECT_EQ(result.exit_code, 0) << result.err;
    return nlohmann::json::parse(result.out, nullptr, /*allow_exceptions=*/false);
}

TEST(CliKvCache, InfoPlansTq4ForGemma4At128K) {
    const nlohmann::json bf16 = json_of(run_kestrel("info --dummy gemma4-31b -c 131072 --json"));
    const nlohmann::json tq4 =
        json_of(run_kestrel("info --dummy gemma4-31b -c 131072 --kv-cache tq4 --json"));
    ASSERT_TRUE(tq4.is_object());
    EXPECT_EQ(bf16["memory"]["kv_cache_format"], "bf16");
    EXPECT_EQ(tq4["memory"]["kv_cache_format"], "tq4");
    // 10 global layers x 4 kv heads x (512 / 2 + 2) bytes x K and V.
    EXPECT_EQ(tq4["memory"]["kv_bytes_per_token"], 10 * 4 * 258 * 2);
    // Plus the 50 bf16 sliding rings (1535 entries x 16 KiB), one 512 x 512 fp32 rotation and the
    // global layers' fp32 key centres (4 kv heads x 512 each).
    const int64_t rings = int64_t{1535} * 16 * 1024 * 50;
    EXPECT_EQ(tq4["memory"]["kv_cache"],
              int64_t{131072} * 10 * 4 * 258 * 2 + rings + 512 * 512 * 4 + 10 * 4 * 512 * 4);
    EXPECT_EQ(tq4["memory"]["weights"], bf16["memory"]["weights"]);
    // The totals differ by the KV caches less the TQ4 layers' scratch (a 2048-token chunk's
    // rotated q, centred K and rotated K and V: 2048 x (32 + 3 x 4) x 512 fp32).
    EXPECT_EQ(bf16["memory"]["total"].get<int64_t>() - tq4["memory"]["total"].get<int64_t>(),
              bf16["memory"]["kv_cache"].get<int64_t>() - tq4["memory"]["kv_cache"].get<int64_t>() -
                  int64_t{2048} * (32 + 3 * 4) * 512 * 4);

    const CommandResult text = run_kestrel("info --dummy gemma4-31b -c 131072 --kv-cache tq4");
    EXPECT_EQ(text.exit_code, 0) << text.err;
    EXPECT_NE(text.out.find("TQ4 KV cache"), std::string::npos) << text.out;
}

TEST(CliKvCache, BenchAndRunTakeTq4OnTheCpu) {
    const CommandResult bench = run_kestrel(
        "bench -m " + kTinyModel + " -p 16 -n 4 -d 8 -r 1 --json --device cpu --kv-cache tq4");
    const nlohmann::json json = json_of(bench);
    ASSERT_TRUE(json.is_object()) << bench.out;
    EXPECT_EQ(json["flags"]["kv_cache"], "tq4");
    EXPECT_EQ(json["results"].size(), 2u);
    EXPECT_NE(bench.err.find("2 full-attention layers in TQ4"), std::string::npos) << bench.err;

    const CommandResult run = run_kestrel(
        "run -m " + kTinyModel + " -p 'hello' -n 4 --temp 0 -c 64 --device cpu --kv-cache tq4");
    EXPECT_EQ(run.exit_code, 0) << run.err;
    EXPECT_NE(run.err.find("in TQ4"), std::string::npos) << run.err;
}

TEST(CliKvCache, UnknownFormatIsRefused) {
    for (const char* verb : {"run -p hi", "info", "bench -p 8"}) {
        const CommandResult result = run_kestrel(std::string(verb) + " --kv-cache q8 --device cpu");
        ASSERT_TRUE(result.exited);
        EXPECT_NE(result.exit_code, 0) << verb;  // CLI11's usage error
        EXPECT_NE(result.err.find("--kv-cache"), std::string::npos) << verb << ": " << result.err;
    }
}

}  // namespace
}  // namespace kestrel
