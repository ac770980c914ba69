// The long-prefill progress line (runtime/prefill_progress.h): silent for prompts of at most 8
// chunks, a line per interval for longer ones, and a closing line with the total.
#include "runtime/prefill_progress.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace kestrel {
namespace {

TEST(PrefillProgress, ShortPromptsSayNothing) {
    std::vector<std::string> lines;
    PrefillProgress progress(
        8 * 512, 512, [&](std::string_view line) { lines.emplace_back(line); }, 0.0);
    for (int64_t done = 512; done <= 8 * 512; done += 512) progress.report(done);
    EXPECT_TRUE(lines.empty());
}

TEST(PrefillProgress, LongPromptsReportEachIntervalAndTheTotal) {
    std::vector<std::string> lines;
    PrefillProgress progress(
        10 * 100, 100, [&](std::string_view line) { lines.emplace_back(line); }, 0.0);
    for (int64_t done = 100; done <= 1000; done += 100) progress.report(done);
    ASSERT_EQ(lines.size(), 10u);
    EXPECT_TRUE(lines[0].starts_with("prefill: 100 of 1000 tokens (10%), ")) << lines[0];
    EXPECT_TRUE(lines[0].ends_with(" tok/s")) << lines[0];
    EXPECT_TRUE(lines.back().starts_with("prefill: 1000 tokens in ")) << lines.back();
}

TEST(PrefillProgress, AtMostOneLinePerInterval) {
    std::vector<std::string> lines;
    PrefillProgress progress(
        100 * 10, 10, [&](std::string_view line) { lines.emplace_back(line); }, 3600.0);
    for (int64_t done = 10; done <= 1000; done += 10) progress.report(done);
    // An hour never passes here: nothing before the end, so no closing line either.
    EXPECT_TRUE(lines.empty());
}

}  // namespace
}  // namespace kestrel
