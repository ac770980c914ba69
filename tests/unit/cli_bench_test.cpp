// `kestrel bench` and `kestrel make-gguf` as a user runs them, on the CPU: the JSON object and the
// markdown table on the tiny Gemma 4 fixture, the bench runner's pieces, the error contract (exit
// code 1, one line on stderr), and a synthetic Gemma 3 270M file that `info` describes and `run`
// generates from.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "runtime/bench_runner.h"
#include "test_support.h"

namespace kestrel {
namespace {

using testing::CommandResult;
using testing::run_kestrel;

const std::string kTinyModel = std::string("'") + KESTREL_SOURCE_DIR + "/tests/fixtures/gemma4_tiny/model.gguf'";

int count_lines(const std::string& text) { return static_cast<int>(std::count(text.begin(), text.end(), '\n')); }

TEST(CliBench, JsonOnTheTinyModel) {
    const CommandResult result = run_kestrel("bench -m " + kTinyModel + " -p 16 -n 4 -d 0,8 -r 2 --json --device cpu");
    ASSERT_TRUE(result.exited);
    ASSERT_EQ(result.exit_code, 0) << result.err;
    const nlohmann::json json = nlohmann::json::parse(result.out, nullptr, /*allow_exceptions=*/false);
    ASSERT_TRUE(json.is_object()) << result.out;
    EXPECT_EQ(json["backend"], "cpu");
    EXPECT_TRUE(json["commit"].is_string());
    EXPECT_FALSE(json["commit"].get<std::string>().empty());
    EXPECT_TRUE(json.contains("gpu"));  // null without a GPU
    EXPECT_EQ(json["peak_device_bytes"], -1);
    EXPECT_EQ(json["context"], 16);  // max(16, 8 + 4)
    EXPECT_EQ(json["model"]["architecture"], "gemma4");
    EXPECT_EQ(json["model"]["type"], "F32");
    EXPECT_GT(json["model"]["parameters"].get<int64_t>(), 200'000);
    EXPECT_GT(json["model"]["size_bytes"].get<int64_t>(), 800'000);
    EXPECT_EQ(json["flags"]["n_prompt"], nlohmann::json::array({16}));
    EXPECT_EQ(json["flags"]["n_gen"], 4);
    EXPECT_EQ(json["flags"]["n_depth"], nlohmann::json::array({0, 8}));
    EXPECT_EQ(json["flags"]["repetitions"], 2);
    EXPECT_EQ(json["flags"]["device"], "cpu");

    const nlohmann::json& results = json["results"];
    ASSERT_EQ(results.size(), 3u);
    const std::vector<std::string> tests = {"pp16", "tg4", "tg4 @ d8"};
    for (size_t i = 0; i < results.size(); ++i) {
        SCOPED_TRACE(tests[i]);
        const nlohmann::json& entry = results[i];
        EXPECT_EQ(entry["test"], tests[i]);
        ASSERT_EQ(entry["seconds"].size(), 2u);
        for (const nlohmann::json& seconds : entry["seconds"]) EXPECT_GT(seconds.get<double>(), 0.0);
        EXPECT_GT(entry["tokens_per_second"]["mean"].get<double>(), 0.0);
        EXPECT_GE(entry["tokens_per_second"]["stddev"].get<double>(), 0.0);
        EXPECT_EQ(entry.contains("time_to_first_token_ms"), i == 0);
    }
    EXPECT_EQ(results[0]["n_prompt"], 16);
    EXPECT_EQ(results[2]["n_gen"], 4);
    EXPECT_EQ(results[2]["n_depth"], 8);
    // The time to first token is the prefill and a greedy pick: at least the prefill's time.
    const double prefill_ms = 1000.0 * 16.0 / results[0]["tokens_per_second"]["mean"].get<double>();
    EXPECT_GT(results[0]["time_to_first_token_ms"]["mean"].get<double>(), 0.5 * prefill_ms);
}

TEST(CliBench, TableOnTheTinyModel) {
    const CommandResult result = run_kestrel("bench -m " + kTinyModel + " -p 16 -n 4 -d 0,8 -r 2 --device cpu");
    ASSERT_TRUE(result.exited);
    ASSERT_EQ(result.exit_code, 0) << result.err;
    const std::string& out = result.out;
    EXPECT_NE(out.find("| model"), std::string::npos) << out;
    for (const char* column : {"size", "params", "backend", "test", "t/s"}) EXPECT_NE(out.find(column), std::string::npos) << column;
    EXPECT_NE(out.find("---:"), std::string::npos);  // right-aligned numeric columns
    for (const char* test : {"pp16 |", "tg4 |", "tg4 @ d8 |"}) EXPECT_NE(out.find(test), std::string::npos) << out;
    EXPECT_NE(out.find("gemma4"), std::string::npos);
    EXPECT_NE(out.find("| CPU"), std::string::npos);
    EXPECT_NE(out.find(" ± "), std::string::npos);
    EXPECT_NE(out.find("time to first token, pp16:"), std::string::npos);
    EXPECT_NE(out.find("peak device memory: none (cpu backend)"), std::string::npos);
    EXPECT_NE(out.find("build: "), std::string::npos);
    // Header, separator and three rows.
    EXPECT_EQ(std::count(out.begin(), out.end(), '|') / 7, 5);
}

// --profile: per-op timers where the backend has them; the CPU reference has none and says so.
TEST(CliBench, ProfileOnTheCpu) {
    const CommandResult table = run_kestrel("bench -m " + kTinyModel + " -p 16 -n 4 -d 8 -r 1 --profile --device cpu");
    ASSERT_EQ(table.exit_code, 0) << table.err;
    EXPECT_NE(table.out.find("per-op time, pp16: none (the cpu backend has no per-op timers)"), std::string::npos)
        << table.out;
    EXPECT_NE(table.out.find("per-op time, tg4 @ d8: none"), std::string::npos) << table.out;
    const CommandResult json = run_kestrel("bench -m " + kTinyModel + " -p 16 -n 4 -d 8 -r 1 --profile --json --device cpu");
    ASSERT_EQ(json.exit_code, 0) << json.err;
    const nlohmann::json parsed = nlohmann::json::parse(json.out, nullptr, /*allow_exceptions=*/false);
    ASSERT_TRUE(parsed.is_object()) << json.out;
    ASSERT_EQ(parsed["profile"].size(), 2u);
    EXPECT_EQ(parsed["profile"][0]["test"], "pp16");
    EXPECT_EQ(parsed["profile"][1]["test"], "tg4 @ d8");
    EXPECT_TRUE(parsed["profile"][1]["ops"].empty());
}

TEST(CliBench, ErrorsExitWithOneLine) {
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"bench -m " + kTinyModel + " -p 16 -n 4 -d 0 -c 8 --device cpu", "-c 8"},
        {"bench -m " + kTinyModel + " -p 0 -n 0 --device cpu", "nothing to measure"},
        {"bench -m " + kTinyModel + " -p 16 -r 0 --device cpu", "-r 0"},
        {"bench -m " + kTinyModel + " -p 1024 -n 0 --device cpu", "512"},  // past the trained context
        {"bench --dummy no-such-model --device cpu", "no-such-model"},
        {"bench -m /nonexistent/model.gguf --device cpu", "/nonexistent/model.gguf"},
    };
    for (const auto& [arguments, mention] : cases) {
        SCOPED_TRACE(arguments);
        const CommandResult result = run_kestrel(arguments);
        ASSERT_TRUE(result.exited);
        EXPECT_EQ(result.exit_code, 1) << result.err;
        // Engine logs may precede it; the failure is the one "error:" line, naming what is wrong.
        const size_t error = result.err.find("error: ");
        ASSERT_NE(error, std::string::npos) << result.err;
        EXPECT_EQ(count_lines(result.err.substr(error)), 1) << result.err;
        EXPECT_NE(result.err.find(mention, error), std::string::npos) << result.err;
    }
}

TEST(CliBench, RunnerPieces) {
    EXPECT_EQ(bench_context_needed({.prompt_lengths = {512, 2048}, .decode_tokens = 128, .depths = {0, 8192}}), 8320);
    EXPECT_EQ(bench_context_needed({.prompt_lengths = {4096}, .decode_tokens = 0, .depths = {8192}}), 4096);
    const std::vector<double> samples = {2.0, 4.0, 6.0};
    const BenchStat stat = mean_and_stddev(samples);
    EXPECT_DOUBLE_EQ(stat.mean, 4.0);
    EXPECT_DOUBLE_EQ(stat.stddev, 2.0);  // sample standard deviation, as llama-bench
    EXPECT_DOUBLE_EQ(mean_and_stddev(std::vector<double>{3.0}).stddev, 0.0);
    BenchResult result;
    result.n_prompt = 512;
    EXPECT_EQ(bench_test_name(result), "pp512");
    result.n_prompt = 0;
    result.n_decode = 128;
    EXPECT_EQ(bench_test_name(result), "tg128");
    result.depth = 8192;
    EXPECT_EQ(bench_test_name(result), "tg128 @ d8192");
    EXPECT_TRUE(validate_bench_options({}).ok());
    EXPECT_FALSE(validate_bench_options({.prompt_lengths = {-1}}).ok());
    EXPECT_FALSE(validate_bench_options({.prompt_lengths = {2048}, .context = 1024}).ok());
    DeviceMemoryPeak cpu(/*on_device=*/false);
    cpu.sample();
    EXPECT_EQ(cpu.peak_device_bytes(), -1);
}

// make-gguf's file of the Gemma 3 270M shapes: `info` reads it as llama.cpp's file would be read,
// and `run` on the CPU generates from it (garbage text, real tokens).
TEST(CliMakeGguf, Gemma3_270MForInfoAndRun) {
    const std::string path =
        (std::filesystem::temp_directory_path() / ("kestrel_cli_make_gguf_" + std::to_string(::getpid()) + ".gguf")).string();
    const CommandResult made = run_kestrel("make-gguf --dummy gemma3-270m --type q4_k_m --seed 7 -o '" + path + "'");
    ASSERT_TRUE(made.exited);
    ASSERT_EQ(made.exit_code, 0) << made.err;
    EXPECT_NE(made.err.find("236/236 tensors"), std::string::npos) << made.err;

    const CommandResult info = run_kestrel("info --json -m '" + path + "'");
    ASSERT_EQ(info.exit_code, 0) << info.err;
    const nlohmann::json described = nlohmann::json::parse(info.out, nullptr, /*allow_exceptions=*/false);
    ASSERT_TRUE(described.is_object()) << info.out;
    EXPECT_EQ(described["architecture"], "gemma3");
    EXPECT_EQ(described["name"], "gemma3-270m");
    EXPECT_EQ(described["tensors"]["count"], 236);
    EXPECT_EQ(described["tensors"]["by_type"]["Q4_K"]["count"], 27);  // as llama-quantize's file
    EXPECT_EQ(described["tokenizer"]["model"], "llama");
    EXPECT_EQ(described["tokenizer"]["tokens"], 262144);
    EXPECT_EQ(described["layers"]["pattern"], "SSSSSF SSSSSF SSSSSF");

    const CommandResult run = run_kestrel("run -m '" + path + "' -p 'hello world' -n 4 --temp 0 -c 64 --device cpu");
    ASSERT_EQ(run.exit_code, 0) << run.err;
    EXPECT_NE(run.err.find("generation: 4 tokens"), std::string::npos) << run.err;

    const CommandResult bad = run_kestrel("make-gguf --dummy gemma3-270m --type q4_0 -o '" + path + "'");
    EXPECT_EQ(bad.exit_code, 1);
    EXPECT_NE(bad.err.find("q4_0"), std::string::npos) << bad.err;
    std::filesystem::remove(path);
}

}  // namespace
}  // namespace kestrel
