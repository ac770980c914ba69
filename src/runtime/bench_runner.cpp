#include "runtime/bench_runner.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>
#include <string_view>

#include "ops/gpu_info.h"
#include "runtime/session.h"

namespace kestrel {

int64_t bench_context_needed(const BenchOptions& options) {
    int64_t needed = 0;
    for (int64_t p : options.prompt_lengths) needed = std::max(needed, p);
    if (options.decode_tokens > 0) {
        for (int64_t d : options.depths) needed = std::max(needed, d + options.decode_tokens);
    }
    return needed;
}

Status validate_bench_options(const BenchOptions& options) {
    const auto invalid = [](std::string message) { return Status(StatusCode::kInvalidArgument, std::move(message)); };
    for (int64_t p : options.prompt_lengths) {
        if (p < 0) return invalid(fmt::format("-p {}: prompt lengths must be >= 0 (0 skips prompt tests)", p));
    }
    for (int64_t d : options.depths) {
        if (d < 0) return invalid(fmt::format("-d {}: depths must be >= 0", d));
    }
    if (options.decode_tokens < 0) {
        return invalid(fmt::format("-n {}: the tokens to generate must be >= 0 (0 skips generation tests)",
                                   options.decode_tokens));
    }
    if (options.repetitions < 1) return invalid(fmt::format("-r {}: repetitions must be >= 1", options.repetitions));
    if (options.prefill_chunk < 0) return invalid(fmt::format("-b {}: the prefill chunk must be >= 0", options.prefill_chunk));
    const bool any_prompt = std::any_of(options.prompt_lengths.begin(), options.prompt_lengths.end(),
                                        [](int64_t p) { return p > 0; });
    const bool any_decode = options.decode_tokens > 0 && !options.depths.empty();
    if (!any_prompt && !any_decode) return invalid("nothing to measure: give -p with a length > 0 or -n > 0 with -d");
    const int64_t needed = bench_context_needed(options);
    if (options.context < 0) return invalid(fmt::format("-c {}: the context must be >= 0", options.context));
    if (options.context > 0 && options.context < needed) {
        return invalid(fmt::format("-c {} is too short: the tests need {} tokens (the longest -p, or the deepest -d plus -n)",
                                   options.context, needed));
    }
    return ok_status();
}

BenchStat mean_and_stddev(std::span<const double> samples) {
    BenchStat stat;
    if (samples.empty()) return stat;
    double sum = 0.0;
    for (double x : samples) sum += x;
    stat.mean = sum / static_cast<double>(samples.size());
    if (samples.size() < 2) return stat;
    double squares = 0.0;
    for (double x : samples) squares += (x - stat.mean) * (x - stat.mean);
    stat.stddev = std::sqrt(squares / static_cast<double>(samples.size() - 1));
    return stat;
}

std::string bench_test_name(const BenchResult& result) {
    if (result.n_prompt > 0) return fmt::format("pp{}", result.n_prompt);
    if (result.depth > 0) return fmt::format("tg{} @ d{}", result.n_decode, result.depth);
    return fmt::format("tg{}", result.n_decode);
}

void DeviceMemoryPeak::sample() {
    if (!on_device_) return;
    const Result<GpuInfo> gpu = gpu_info();
    if (!gpu.ok()) return;
    peak_ = std::max(peak_, static_cast<int64_t>(gpu->total_bytes - gpu->free_bytes));
}

bool runs_on_device(const Engine& engine) { return std::string_view(engine.ops().name()) != "cpu"; }

namespace {

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point start, Clock::time_point end) {
    return std::chrono::duration<double>(end - start).count();
}

int32_t greedy_token(std::span<const float> logits) {
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

class RandomTokens {
public:
    RandomTokens(uint64_t seed, int64_t vocab_size)
        : generator_(seed), distribution_(0, static_cast<int32_t>(vocab_size - 1)) {}

    std::vector<int32_t> take(int64_t n) {
        std::vector<int32_t> tokens(static_cast<size_t>(n));
        for (int32_t& token : tokens) token = distribution_(generator_);
        return tokens;
    }

private:
    std::mt19937_64 generator_;
    std::uniform_int_distribution<int32_t> distribution_;
};

void summarise(BenchResult& result, std::span<const double> first_token_ms) {
    const int64_t n = result.n_prompt > 0 ? result.n_prompt : result.n_decode;
    std::vector<double> speeds;
    for (double seconds : result.seconds) speeds.push_back(seconds > 0.0 ? static_cast<double>(n) / seconds : 0.0);
    result.tokens_per_second = mean_and_stddev(speeds);
    result.time_to_first_token_ms = mean_and_stddev(first_token_ms);
    result.test = bench_test_name(result);
}

// pp<p>: the timed part is the prefill; the first token is the prefill's greedy pick.
Result<BenchResult> prompt_test(Session& session, std::span<const int32_t> prompt, const BenchOptions& options,
                                DeviceMemoryPeak& memory) {
    BenchResult result;
    result.n_prompt = static_cast<int64_t>(prompt.size());
    if (options.warmup) {
        KESTREL_RETURN_IF_ERROR(session.reset());
        KESTREL_RETURN_IF_ERROR(session.prefill(prompt).status());
    }
    std::vector<double> first_token_ms;
    for (int r = 0; r < options.repetitions; ++r) {
        KESTREL_RETURN_IF_ERROR(session.reset());
        const Clock::time_point start = Clock::now();
        KESTREL_ASSIGN_OR_RETURN(std::span<const float> logits, session.prefill(prompt));
        const Clock::time_point prefilled = Clock::now();
        (void)greedy_token(logits);
        const Clock::time_point first_token = Clock::now();
        result.seconds.push_back(seconds_between(start, prefilled));
        first_token_ms.push_back(1000.0 * seconds_between(start, first_token));
        memory.sample();
    }
    summarise(result, first_token_ms);
    return result;
}

// Decodes of a warm-up: a backend with graphs captures the second and replays from the third.
constexpr int64_t kWarmupDecodes = 3;

// tg<n> @ d<d>: prefill d tokens (not timed), then decode n tokens, each the greedy pick of the last.
Result<BenchResult> decode_test(Session& session, int64_t depth, RandomTokens& random, const BenchOptions& options,
                                DeviceMemoryPeak& memory) {
    BenchResult result;
    result.n_decode = options.decode_tokens;
    result.depth = depth;
    const int64_t warmup_decodes = std::min(kWarmupDecodes, session.context());
    const std::vector<int32_t> prefix = random.take(std::max<int64_t>(depth, kWarmupDecodes));
    if (options.warmup) {
        KESTREL_RETURN_IF_ERROR(session.reset());
        for (int64_t i = 0; i < warmup_decodes; ++i) KESTREL_RETURN_IF_ERROR(session.decode(prefix[i]).status());
    }
    for (int r = 0; r < options.repetitions; ++r) {
        KESTREL_RETURN_IF_ERROR(session.reset());
        int32_t token = prefix.front();
        if (depth > 0) {
            KESTREL_ASSIGN_OR_RETURN(std::span<const float> logits,
                                     session.prefill(std::span(prefix).first(static_cast<size_t>(depth))));
            token = greedy_token(logits);
        }
        // Greedy on the backend where it samples (only the id comes back), pipelined as `kestrel
        // run` decodes: step i + 1 is queued before token i is read. Else greedy on the host's
        // copy of the logits.
        SamplerSettings greedy;
        greedy.temperature = 0.0f;
        KESTREL_ASSIGN_OR_RETURN(std::unique_ptr<DeviceSampler> device,
                                 session.engine().ops().make_sampler(session.engine().config().vocab_size, greedy));
        const Clock::time_point start = Clock::now();
        if (device != nullptr && options.decode_tokens > 0) {
            KESTREL_RETURN_IF_ERROR(session.decode_on_device(token));
            KESTREL_RETURN_IF_ERROR(session.sample_on_device(*device));
            for (int64_t i = 1; i < options.decode_tokens; ++i) {
                KESTREL_RETURN_IF_ERROR(session.decode_sampled_on_device());
                KESTREL_RETURN_IF_ERROR(session.sample_on_device(*device));
                KESTREL_ASSIGN_OR_RETURN(token, session.take_sampled());  // while step i runs
            }
            KESTREL_ASSIGN_OR_RETURN(token, session.take_sampled());
        }
        for (int64_t i = 0; device == nullptr && i < options.decode_tokens; ++i) {
            KESTREL_ASSIGN_OR_RETURN(std::span<const float> logits, session.decode(token));
            token = greedy_token(logits);
        }
        result.seconds.push_back(seconds_between(start, Clock::now()));
        memory.sample();
    }
    summarise(result, {});
    return result;
}

}  // namespace

Result<BenchReport> run_bench(const Engine& engine, const BenchOptions& options,
                              const std::function<void(const BenchResult&)>& on_result) {
    KESTREL_RETURN_IF_ERROR(validate_bench_options(options));
    BenchReport report;
    report.context = options.context > 0 ? options.context : bench_context_needed(options);
    KESTREL_ASSIGN_OR_RETURN(
        std::unique_ptr<Session> session,
        engine.new_session(report.context, options.prefill_chunk, options.kv_cache));
    DeviceMemoryPeak memory(runs_on_device(engine));
    memory.sample();  // weights and the session's cache are allocated by now
    RandomTokens random(options.seed, engine.config().vocab_size);
    const auto finish = [&](BenchResult result) {
        if (on_result) on_result(result);
        report.results.push_back(std::move(result));
    };
    for (int64_t p : options.prompt_lengths) {
        if (p == 0) continue;
        const std::vector<int32_t> prompt = random.take(p);
        KESTREL_ASSIGN_OR_RETURN(BenchResult result, prompt_test(*session, prompt, options, memory));
        finish(std::move(result));
    }
    if (options.decode_tokens > 0) {
        for (int64_t depth : options.depths) {
            KESTREL_ASSIGN_OR_RETURN(BenchResult result, decode_test(*session, depth, random, options, memory));
            finish(std::move(result));
        }
    }
    report.peak_device_bytes = memory.peak_device_bytes();
    return report;
}

Result<std::vector<OpProfile>> profile_ops(const Engine& engine, const BenchOptions& options) {
    KESTREL_RETURN_IF_ERROR(validate_bench_options(options));
    const int64_t context = options.context > 0 ? options.context : bench_context_needed(options);
    KESTREL_ASSIGN_OR_RETURN(std::unique_ptr<Session> session,
                             engine.new_session(context, options.prefill_chunk, options.kv_cache));
    session->set_decode_graphs(false);
    Ops& ops = engine.ops();
    RandomTokens random(options.seed, engine.config().vocab_size);
    std::vector<OpProfile> profiles;
    // Runs `work` with the per-op timers on, and keeps what they saw under `test`.
    const auto profiled = [&](BenchResult named, const std::function<Status()>& work) -> Status {
        (void)ops.take_profile();
        ops.set_profiling(true);
        const Status status = work();
        ops.set_profiling(false);
        std::vector<OpTiming> timing = ops.take_profile();
        KESTREL_RETURN_IF_ERROR(status);
        profiles.push_back({bench_test_name(named), std::move(timing)});
        return ok_status();
    };
    const auto prompt = std::find_if(options.prompt_lengths.begin(), options.prompt_lengths.end(),
                                     [](int64_t p) { return p > 0; });
    if (prompt != options.prompt_lengths.end()) {
        const std::vector<int32_t> tokens = random.take(*prompt);
        KESTREL_RETURN_IF_ERROR(session->reset());
        BenchResult named;
        named.n_prompt = *prompt;
        KESTREL_RETURN_IF_ERROR(profiled(named, [&] { return session->prefill(tokens).status(); }));
    }
    if (options.decode_tokens > 0 && !options.depths.empty()) {
        const int64_t depth = options.depths.front();
        const std::vector<int32_t> prefix = random.take(std::max<int64_t>(depth, 1));
        KESTREL_RETURN_IF_ERROR(session->reset());
        int32_t token = prefix.front();
        if (depth > 0) {
            KESTREL_ASSIGN_OR_RETURN(std::span<const float> logits, session->prefill(prefix));
            token = greedy_token(logits);
        }
        BenchResult named;
        named.n_decode = options.decode_tokens;
        named.depth = depth;
        KESTREL_RETURN_IF_ERROR(profiled(named, [&]() -> Status {
            for (int64_t i = 0; i < options.decode_tokens; ++i) {
                KESTREL_ASSIGN_OR_RETURN(std::span<const float> logits, session->decode(token));
                token = greedy_token(logits);
            }
            return ok_status();
        }));
    }
    return profiles;
}

}  // namespace kestrel
