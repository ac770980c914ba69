// kestrel: run large language models from GGUF files and Hugging Face folders.
#include <cstdio>
#include <map>
#include <string>

#include "cli/commands.h"
#include "core/log.h"

namespace kestrel::cli {

int fail(const std::string& message) {
    std::fprintf(stderr, "error: %s\n", message.c_str());
    return 1;
}

}  // namespace kestrel::cli

int main(int argc, char** argv) {
    CLI::App app{"Kestrel: fast LLM inference on one NVIDIA GPU, with a CPU reference path", "kestrel"};
    app.set_version_flag("--version", "kestrel " KESTREL_VERSION);
    app.require_subcommand(1);
    bool verbose = false;
    bool quiet = false;
    app.add_flag("-v,--verbose", verbose, "Log debug detail");
    app.add_flag("-q,--quiet", quiet, "Log errors only");

    std::map<std::string, kestrel::cli::Command> commands;
    commands["run"] = kestrel::cli::add_run_command(app);
    commands["chat"] = kestrel::cli::add_chat_command(app);
    commands["info"] = kestrel::cli::add_info_command(app);
    commands["tokenize"] = kestrel::cli::add_tokenize_command(app);
    commands["perplexity"] = kestrel::cli::add_perplexity_command(app);
    commands["bench"] = kestrel::cli::add_bench_command(app);
    commands["make-gguf"] = kestrel::cli::add_make_gguf_command(app);

    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        app.exit(e);
        return 2;
    }
    if (verbose) kestrel::set_log_level(kestrel::LogLevel::kDebug);
    if (quiet) kestrel::set_log_level(kestrel::LogLevel::kError);
    return commands.at(app.get_subcommands().front()->get_name())();
}
