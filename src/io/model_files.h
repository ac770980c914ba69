// Opens what a user points -m at: a GGUF file or a Hugging Face folder (config.json +
// safetensors + tokenizer files), and says which it is.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>

#include "io/gguf.h"
#include "io/hf_config.h"
#include "io/weight_source.h"
#include "kestrel/status.h"

namespace kestrel {

enum class ModelFormat { kGguf, kHfFolder };

struct ModelFiles {
    ModelFormat format;
    std::filesystem::path path;
    std::shared_ptr<const GgufFile> gguf;  // kGguf
    std::optional<HfConfig> hf_config;     // kHfFolder
    std::unique_ptr<WeightSource> weights;
};

// A directory is a Hugging Face folder; anything else must be a GGUF file.
Result<ModelFiles> open_model_files(const std::filesystem::path& path);

// Where -m points when it is not given: $KESTREL_MODEL, else models/default.gguf in the
// current directory or next to (or above) the kestrel executable, as scripts/setup.sh places it.
Result<std::filesystem::path> default_model_path();

}  // namespace kestrel
