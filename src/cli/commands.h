// The verbs of the `kestrel` binary. Each registers its flags on the CLI11 app and returns the
// process exit code when run: 0 success, 1 a failure explained on stderr.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

namespace kestrel::cli {

using Command = std::function<int()>;

Command add_info_command(CLI::App& app);
Command add_run_command(CLI::App& app);
Command add_chat_command(CLI::App& app);
Command add_tokenize_command(CLI::App& app);
Command add_perplexity_command(CLI::App& app);
Command add_bench_command(CLI::App& app);
Command add_make_gguf_command(CLI::App& app);

// Prints "error: <message>" on stderr and returns 1.
int fail(const std::string& message);

}  // namespace kestrel::cli
