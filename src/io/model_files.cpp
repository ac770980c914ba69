#include "io/model_files.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdlib>
#include <vector>

#include "io/gguf_source.h"
#include "io/hf_folder_source.h"

namespace kestrel {

Result<ModelFiles> open_model_files(const std::filesystem::path& path) {
    std::error_code error;
    const std::filesystem::file_status status = std::filesystem::status(path, error);
    if (error || !std::filesystem::exists(status)) {
        return Status(StatusCode::kNotFound, fmt::format("{}: no such file or folder", path.string()));
    }
    ModelFiles files;
    files.path = path;
    if (std::filesystem::is_directory(status)) {
        files.format = ModelFormat::kHfFolder;
        KESTREL_ASSIGN_OR_RETURN(HfConfig config, load_hf_config(path));
        files.hf_config = std::move(config);
        KESTREL_ASSIGN_OR_RETURN(files.weights, HfFolderSource::open(path));
        return files;
    }
    files.format = ModelFormat::kGguf;
    KESTREL_ASSIGN_OR_RETURN(GgufFile gguf, GgufFile::open(path));
    files.gguf = std::make_shared<const GgufFile>(std::move(gguf));
    files.weights = std::make_unique<GgufSource>(files.gguf);
    return files;
}

namespace {

std::filesystem::path executable_dir() {
    std::error_code error;
    const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", error);
    return error ? std::filesystem::path() : self.parent_path();
}

}  // namespace

Result<std::filesystem::path> default_model_path() {
    if (const char* env = std::getenv("KESTREL_MODEL"); env && *env) return std::filesystem::path(env);
    std::vector<std::filesystem::path> candidates = {std::filesystem::current_path() / "models" / "default.gguf"};
    // build/kestrel -> ../models, build/tests/x -> ../../models
    for (std::filesystem::path dir = executable_dir(); !dir.empty() && dir != dir.parent_path();
         dir = dir.parent_path()) {
        candidates.push_back(dir / "models" / "default.gguf");
    }
    for (const std::filesystem::path& candidate : candidates) {
        std::error_code error;
        if (std::filesystem::exists(candidate, error)) return candidate;
    }
    return Status(StatusCode::kNotFound,
                  fmt::format("no model given (-m) and no default model found (looked for $KESTREL_MODEL and "
                              "models/default.gguf in {} and above the kestrel executable); run "
                              "scripts/setup.sh to install the default model",
                              std::filesystem::current_path().string()));
}

}  // namespace kestrel
