#include "test_support.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

namespace kestrel::testing {

std::string read_text_file(const std::filesystem::path& path) {
    std::ifstream in(path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

CommandResult run_kestrel(const std::string& arguments) {
    // Unique per process: ctest runs tests in parallel.
    const std::string stem =
        (std::filesystem::temp_directory_path() / "kestrel_cli_").string() + std::to_string(::getpid());
    const std::filesystem::path out = stem + ".out";
    const std::filesystem::path err = stem + ".err";
    const std::string command =
        std::string("'") + KESTREL_BINARY + "' " + arguments + " >'" + out.string() + "' 2>'" + err.string() + "'";
    const int status = std::system(command.c_str());
    CommandResult result;
    result.exited = WIFEXITED(status);
    result.exit_code = result.exited ? WEXITSTATUS(status) : -1;
    result.out = read_text_file(out);
    result.err = read_text_file(err);
    std::filesystem::remove(out);
    std::filesystem::remove(err);
    return result;
}

std::filesystem::path write_temp_file(const std::string& name, const std::vector<uint8_t>& bytes) {
    const std::filesystem::path path =
        std::filesystem::temp_directory_path() / ("kestrel_" + std::to_string(::getpid()) + "_" + name);
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    return path;
}

}  // namespace kestrel::testing
