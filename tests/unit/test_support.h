// Helpers shared by the unit tests: the error contract and running the kestrel binary.
#pragma once

#include "runtime/engine.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <initializer_list>
#include <string>
#include <vector>

#include "kestrel/status.h"

namespace kestrel::testing {

// The error contract: not ok, the expected code, one line, and every `mentions` in the message.
template <class T>
void expect_error(const Result<T>& result, StatusCode code, std::initializer_list<std::string> mentions) {
    ASSERT_FALSE(result.ok());
    const std::string& message = result.status().message();
    EXPECT_EQ(result.status().code(), code) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    for (const std::string& text : mentions) EXPECT_NE(message.find(text), std::string::npos) << message;
}

// The same without a status code: for errors whose code is not the point.
template <class T>
void expect_error(const Result<T>& result, std::initializer_list<std::string> mentions) {
    ASSERT_FALSE(result.ok()) << "expected an error mentioning " << *mentions.begin();
    const std::string& message = result.status().message();
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    for (const std::string& text : mentions) EXPECT_NE(message.find(text), std::string::npos) << message;
}

std::string read_text_file(const std::filesystem::path& path);

struct CommandResult {
    bool exited = false;  // false: killed by a signal
    int exit_code = -1;
    std::string out;
    std::string err;
};

// Runs `kestrel <arguments>` (arguments are shell words: quote paths), capturing both streams.
CommandResult run_kestrel(const std::string& arguments);

// Writes `bytes` to a temporary file whose name is unique to this process and `name`.
std::filesystem::path write_temp_file(const std::string& name, const std::vector<uint8_t>& bytes);

// Engine options that load `model` on the CPU reference backend (tests that hold numbers to
// transformers' fp32 run there on every machine, GPU or not).
inline EngineOptions cpu_engine_options(const std::filesystem::path& model, int threads = 0) {
    EngineOptions options;
    options.model = model;
    options.threads = threads;
    options.device = Device::kCpu;
    return options;
}

}  // namespace kestrel::testing
