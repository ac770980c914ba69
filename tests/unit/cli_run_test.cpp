// The verbs that run the real default model, as a user runs them: `run` continues a prompt
// exactly as transformers does (greedy tokens from tests/fixtures/gemma3/reference.json),
// `chat`, `tokenize` and `perplexity` work, and bad input gets one clear line and exit code 1.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "io/gguf.h"
#include "io/gguf_writer.h"
#include "io/model_files.h"
#include "test_support.h"
#include "tokenizer/tokenizer.h"

namespace kestrel {
namespace {

using testing::CommandResult;
using testing::run_kestrel;

const std::string kFixtures = std::string(KESTREL_SOURCE_DIR) + "/tests/fixtures";

nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(testing::read_text_file(path)); }

void expect_one_line_error(const CommandResult& result, const std::string& part) {
    ASSERT_TRUE(result.exited) << "killed by a signal";
    EXPECT_EQ(result.exit_code, 1);
    EXPECT_TRUE(result.err.ends_with("\n"));
    const std::string last_line = result.err.substr(result.err.rfind('\n', result.err.size() - 2) + 1);
    EXPECT_TRUE(last_line.starts_with("error: ")) << result.err;
    EXPECT_NE(last_line.find(part), std::string::npos) << result.err;
    EXPECT_EQ(result.out, "");
}

TEST(CliRun, GreedyContinuationEqualsTransformers) {
    // reference.json: transformers' greedy continuation of prompt 0, "The capital of France is".
    const nlohmann::json reference = read_json(kFixtures + "/gemma3/reference.json");
    ASSERT_EQ(reference["prompts"][0]["text"], "The capital of France is");
    const std::vector<int32_t> greedy = reference["greedy"]["ids"].get<std::vector<int32_t>>();
    ASSERT_GE(greedy.size(), 8u);
    Result<std::filesystem::path> model = default_model_path();
    ASSERT_TRUE(model.ok()) << model.status().message();
    Result<GgufFile> file = GgufFile::open(*model);
    ASSERT_TRUE(file.ok());
    Result<Tokenizer> tokenizer = Tokenizer::from_gguf(*file);
    ASSERT_TRUE(tokenizer.ok());
    const std::string expected = tokenizer->decode(std::vector<int32_t>(greedy.begin(), greedy.begin() + 8));

    CommandResult result = run_kestrel("run -p 'The capital of France is' -n 8 --temp 0");
    ASSERT_TRUE(result.exited);
    ASSERT_EQ(result.exit_code, 0) << result.err;
    EXPECT_EQ(result.out, expected + "\n");
    EXPECT_NE(result.err.find("prompt: 6 tokens"), std::string::npos) << result.err;
    EXPECT_NE(result.err.find("generation: 8 tokens"), std::string::npos) << result.err;
}

TEST(CliRun, AnswersParis) {
    // The 270M model continues "The capital of France is" with " the capital of the country of
    // France." (so does transformers, above); asked as a question it names the city.
    CommandResult result = run_kestrel("run -p 'Q: What is the capital of France?\nA:' -n 8 --temp 0");
    ASSERT_TRUE(result.exited);
    ASSERT_EQ(result.exit_code, 0) << result.err;
    EXPECT_NE(result.out.find("Paris"), std::string::npos) << result.out;
}

TEST(CliRun, SameSeedSameText) {
    const std::string command = "run -p 'Once upon a time' -n 12 --temp 1.0 -s 42";
    CommandResult first = run_kestrel(command);
    CommandResult second = run_kestrel(command);
    ASSERT_EQ(first.exit_code, 0) << first.err;
    EXPECT_EQ(first.out, second.out);
    EXPECT_GT(first.out.size(), 1u);
}

TEST(CliRun, StopStringEndsGeneration) {
    CommandResult result = run_kestrel("run -p 'The capital of France is' -n 16 --temp 0 --stop country");
    ASSERT_EQ(result.exit_code, 0) << result.err;
    EXPECT_EQ(result.out, " the capital of the \n");
    EXPECT_NE(result.err.find("(stop string)"), std::string::npos) << result.err;
}

TEST(CliRun, BadInputGetsOneClearLine) {
    expect_one_line_error(run_kestrel("run -p ''"), "the prompt is empty");
    expect_one_line_error(run_kestrel("run -p 'one two three four five six' -c 4"),
                          "the prompt is 7 tokens, longer than the context of 4 tokens");
    expect_one_line_error(run_kestrel("run -p hello -n 0"), "-n 0");
    expect_one_line_error(run_kestrel("run -p hello --temp -1"), "--temp -1");
    expect_one_line_error(run_kestrel("run -p hello -m /nonexistent.gguf"), "/nonexistent.gguf");

    GgufWriter writer;
    writer.set("general.architecture", gguf_string("llama"));
    writer.set("llama.block_count", gguf_u32(2));
    const std::filesystem::path llama = testing::write_temp_file("llama_run.gguf", *writer.to_bytes());
    expect_one_line_error(run_kestrel("run -p hello -m '" + llama.string() + "'"), "unsupported architecture 'llama'");
    std::filesystem::remove(llama);
}

TEST(CliChat, AnswersEachTurnUntilExit) {
    const std::filesystem::path input = testing::write_temp_file(
        "chat_input.txt", [] {
            const std::string text = "Hello!\nWhat is 2 + 2?\n/exit\nnever read\n";
            return std::vector<uint8_t>(text.begin(), text.end());
        }());
    CommandResult result = run_kestrel("chat -n 6 --temp 0 < '" + input.string() + "'");
    std::filesystem::remove(input);
    ASSERT_TRUE(result.exited);
    ASSERT_EQ(result.exit_code, 0) << result.err;
    // Two replies, one line each at least: the loop answered both turns and stopped at /exit.
    EXPECT_GE(std::count(result.out.begin(), result.out.end(), '\n'), 2) << result.out;
}

TEST(CliTokenize, PrintsIds) {
    CommandResult result = run_kestrel("tokenize -p 'Hello world' --ids");
    ASSERT_EQ(result.exit_code, 0) << result.err;
    EXPECT_EQ(result.out, "[2, 9259, 1902]\n");
    CommandResult special = run_kestrel("tokenize -p '<start_of_turn>' --ids --no-bos --parse-special");
    EXPECT_EQ(special.out, "[105]\n");
}

TEST(CliPerplexity, MatchesTransformersWithinOnePercent) {
    const nlohmann::json expected = read_json(kFixtures + "/perplexity/pride_and_prejudice_ch1.json");
    // The reference scored the text's first 3 chunks of 128 tokens.
    CommandResult result = run_kestrel("perplexity -c 128 --chunks 3 -f '" + kFixtures +
                                       "/perplexity/pride_and_prejudice_ch1.txt'");
    ASSERT_TRUE(result.exited);
    ASSERT_EQ(result.exit_code, 0) << result.err;
    ASSERT_TRUE(result.out.starts_with("perplexity ")) << result.out;
    const double ours = std::stod(result.out.substr(11));
    const double theirs = expected["perplexity"].get<double>();
    ASSERT_EQ(expected["n_chunks"], 3);
    ASSERT_EQ(expected["ctx"], 128);
    EXPECT_NEAR(ours, theirs, 0.01 * theirs) << result.out;
}

}  // namespace
}  // namespace kestrel
