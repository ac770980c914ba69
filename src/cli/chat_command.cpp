// `kestrel chat [-m FILE] [--system TEXT] [--think]`: an interactive conversation in the model's
// chat template, streaming each reply. /exit (or end of input) leaves, /reset starts over.
// Each turn feeds only the tokens the session has not seen; when the rendered conversation
// changes earlier text (Qwen drops old thinking), the session restarts from the top.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "cli/model_options.h"
#include "core/log.h"
#include "runtime/generate.h"

namespace kestrel::cli {
namespace {

struct ChatCommandOptions {
    ModelOptions model;
    SamplingOptions sampling;
    std::string system;
    bool think = false;
    int64_t max_tokens = -1;
};

int run_chat(const ChatCommandOptions& options) {
    if (options.max_tokens == 0 || options.max_tokens < -1) {
        return fail("-n must be positive, or -1 to let the model finish its reply");
    }
    Result<SamplingParams> sampling = resolve_sampling(options.sampling);
    if (!sampling.ok()) return fail(sampling.status().message());
    Result<std::unique_ptr<Engine>> loaded = load_engine(options.model);
    if (!loaded.ok()) return fail(loaded.status().message());
    const Engine& engine = **loaded;
    const Tokenizer& tokenizer = engine.tokenizer();
    Result<ChatFormat> format = chat_format_of(engine.files(), engine.config());
    if (!format.ok()) return fail(format.status().message());
    Result<std::unique_ptr<Session>> session_result =
        open_session(engine, options.model, session_context(options.model, engine.config()));
    if (!session_result.ok()) return fail(session_result.status().message());
    Session& session = **session_result;

    const bool interactive = ::isatty(STDIN_FILENO) != 0;
    if (interactive) std::fprintf(stderr, "chatting with %s: /exit to leave, /reset to start over\n", engine.config().name.c_str());
    std::vector<ChatMessage> messages;
    if (!options.system.empty()) messages.push_back({"system", options.system});
    std::vector<int32_t> in_session;  // the tokens the session holds, in order
    std::string line;
    for (uint64_t turn = 0;; ++turn) {
        if (interactive) std::fputs("> ", stdout), std::fflush(stdout);
        if (!std::getline(std::cin, line) || line == "/exit") break;
        if (line == "/reset") {
            messages.resize(options.system.empty() ? 0 : 1);
            if (Status reset = session.reset(); !reset.ok()) return fail(reset.message());
            in_session.clear();
            continue;
        }
        if (line.empty()) continue;
        messages.push_back({"user", line});
        Result<std::string> rendered =
            render_chat(*format, messages, {.add_generation_prompt = true, .enable_thinking = options.think});
        if (!rendered.ok()) return fail(rendered.status().message());
        const std::vector<int32_t> tokens = tokenizer.encode(*rendered, /*parse_special=*/true, /*add_bos=*/false);

        const size_t shared = std::mismatch(in_session.begin(), in_session.end(), tokens.begin(), tokens.end()).first -
                              in_session.begin();
        if (shared < in_session.size() || shared == tokens.size()) {
            if (Status reset = session.reset(); !reset.ok()) return fail(reset.message());
            in_session.clear();
        }
        const std::span<const int32_t> fresh = std::span(tokens).subspan(in_session.size());
        SamplingParams turn_sampling = *sampling;
        turn_sampling.seed += turn;  // a different draw each turn, still reproducible with -s
        Sampler sampler(turn_sampling);
        Result<GenerateResult> reply = generate(session, tokenizer, sampler, fresh, {.max_tokens = options.max_tokens, .stop_strings = {}},
                                                print_to_stdout);
        std::fputc('\n', stdout);
        if (!reply.ok()) {
            // Most often the conversation outgrew the context: say so and let the user go on.
            log_message(LogLevel::kError, reply.status().message() + " (/reset starts over)");
            messages.pop_back();
            if (Status reset = session.reset(); !reset.ok()) return fail(reset.message());
            in_session.clear();
            continue;
        }
        in_session = tokens;
        in_session.insert(in_session.end(), reply->tokens.begin(), reply->tokens.begin() + reply->generated_tokens);
        messages.push_back({"assistant", reply->text});
        log_debug("turn {}: {} prompt tokens ({} new), {} generated ({})", turn, tokens.size(), fresh.size(),
                  reply->tokens.size(), stop_reason_name(reply->stop_reason));
    }
    return 0;
}

}  // namespace

Command add_chat_command(CLI::App& app) {
    auto options = std::make_shared<ChatCommandOptions>();
    CLI::App* command = app.add_subcommand("chat", "Talk with the model in its chat template");
    add_model_options(*command, options->model);
    add_sampling_options(*command, options->sampling);
    command->add_option("--system", options->system, "System prompt");
    command->add_flag("--think", options->think, "Let the model think before answering (where it can)");
    command->add_option("-n,--n-predict", options->max_tokens, "Tokens per reply at most (-1: until the model stops)")
        ->capture_default_str();
    return [options] { return run_chat(*options); };
}

}  // namespace kestrel::cli
