// `kestrel run [-m FILE] -p PROMPT [-n N] [--temp T] [-s SEED] ...`: completes a prompt,
// streaming the text to stdout, then prints prompt and generation speed on stderr.
#include <fmt/format.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "cli/commands.h"
#include "cli/model_options.h"
#include "runtime/generate.h"

namespace kestrel::cli {
namespace {

struct RunOptions {
    ModelOptions model;
    SamplingOptions sampling;
    std::string prompt;
    std::string prompt_file;
    int64_t max_tokens = 256;
    std::vector<std::string> stop;
    bool chat = false;
    std::string system;
    bool think = false;
};

Result<std::string> read_prompt(const RunOptions& options) {
    if (!options.prompt_file.empty()) {
        std::ifstream in(options.prompt_file, std::ios::binary);
        if (!in) return Status(StatusCode::kNotFound, options.prompt_file + ": cannot read the prompt file");
        std::stringstream text;
        text << in.rdbuf();
        return text.str();
    }
    return options.prompt;
}

int run(const RunOptions& options) {
    Result<std::string> prompt = read_prompt(options);
    if (!prompt.ok()) return fail(prompt.status().message());
    if (prompt->empty()) return fail("the prompt is empty: give one with -p TEXT or -f FILE");
    if (options.max_tokens == 0 || options.max_tokens < -1) {
        return fail(fmt::format("-n {}: give a positive number of tokens to generate (-1: until the model stops)",
                                options.max_tokens));
    }
    Result<SamplingParams> sampling = resolve_sampling(options.sampling);
    if (!sampling.ok()) return fail(sampling.status().message());

    Result<std::unique_ptr<Engine>> loaded = load_engine(options.model);
    if (!loaded.ok()) return fail(loaded.status().message());
    const Engine& engine = **loaded;
    const Tokenizer& tokenizer = engine.tokenizer();

    std::string text = *prompt;
    bool parse_special = false;
    if (options.chat) {
        Result<ChatFormat> format = chat_format_of(engine.files(), engine.config());
        if (!format.ok()) return fail(format.status().message());
        std::vector<ChatMessage> messages;
        if (!options.system.empty()) messages.push_back({"system", options.system});
        messages.push_back({"user", *prompt});
        Result<std::string> rendered = render_chat(*format, messages, {.add_generation_prompt = true, .enable_thinking = options.think});
        if (!rendered.ok()) return fail(rendered.status().message());
        text = *rendered;
        // The template's turn markers must become control tokens. As in llama.cpp, marker text
        // typed by the user inside the prompt becomes one too: the user is the prompt's author.
        parse_special = true;
    }
    // A rendered chat carries <bos> and turn markers as text; a raw prompt gets BOS from the model.
    const std::vector<int32_t> tokens = tokenizer.encode(text, parse_special, /*add_bos=*/!options.chat);
    Result<std::unique_ptr<Session>> session =
        open_session(engine, options.model, session_context(options.model, engine.config()));
    if (!session.ok()) return fail(session.status().message());

    Sampler sampler(*sampling);
    Result<GenerateResult> result = generate(
        **session, tokenizer, sampler, tokens,
        {.max_tokens = options.max_tokens, .stop_strings = options.stop, .session_ends = true},
        print_to_stdout);
    if (!result.ok()) return fail(result.status().message());
    std::fputc('\n', stdout);
    std::fprintf(stderr, "prompt: %lld tokens, %.1f tok/s; generation: %lld tokens, %.1f tok/s (%s)\n",
                 static_cast<long long>(result->prompt_tokens),
                 result->prompt_seconds > 0 ? result->prompt_tokens / result->prompt_seconds : 0.0,
                 static_cast<long long>(result->tokens.size()),
                 result->generate_seconds > 0 ? result->generated_tokens / result->generate_seconds : 0.0,
                 stop_reason_name(result->stop_reason));
    return 0;
}

}  // namespace

Command add_run_command(CLI::App& app) {
    auto options = std::make_shared<RunOptions>();
    CLI::App* run_app = app.add_subcommand("run", "Complete a prompt");
    add_model_options(*run_app, options->model);
    add_sampling_options(*run_app, options->sampling);
    auto* prompt = run_app->add_option("-p,--prompt", options->prompt, "The prompt");
    run_app->add_option("-f,--file", options->prompt_file, "Read the prompt from a file")->excludes(prompt);
    run_app->add_option("-n,--n-predict", options->max_tokens, "Tokens to generate (-1: until the model stops)")
        ->capture_default_str();
    run_app->add_option("--stop", options->stop, "Stop when the text contains this (repeatable)");
    run_app->add_flag("--chat", options->chat, "Wrap the prompt in the model's chat template");
    run_app->add_option("--system", options->system, "System prompt (with --chat)");
    run_app->add_flag("--think", options->think, "Let the model think first (with --chat, where it can)");
    return [options] { return run(*options); };
}

}  // namespace kestrel::cli
