// Built-in config.json texts of the models Kestrel targets, so a model can be described and
// planned (`kestrel info --dummy NAME`) and benchmarked with synthetic weights without its
// gigabytes. The values are the real checkpoints' (../shared/specs/gemma4-and-gemma3.md §1 and
// §8.1, qwen35-moe.md §1.1), in the layout of their config.json: multimodal checkpoints nest the
// language model under "text_config".
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "kestrel/status.h"

namespace kestrel {

// "gemma4-31b", "qwen3.5-35b-a3b", "gemma3-270m".
std::vector<std::string_view> dummy_model_names();

// The config.json text of a dummy model; kNotFound listing the known names for any other name.
Result<std::string> dummy_config_json(std::string_view name);

}  // namespace kestrel
