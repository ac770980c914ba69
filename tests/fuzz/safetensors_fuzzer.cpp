// libFuzzer target: arbitrary bytes as a safetensors file and as a config.json. Any crash,
// sanitizer report, hang or multi-line error message is a bug.
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string_view>

#include "io/hf_config.h"
#include "io/safetensors.h"
#include "models/model_config.h"

namespace {

void require_one_line(const kestrel::Status& status) {
    if (!status.ok() && status.message().find('\n') != std::string::npos) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    kestrel::Result<kestrel::SafetensorsFile> file =
        kestrel::SafetensorsFile::parse(std::span<const uint8_t>(data, size), "fuzz.safetensors");
    if (file.ok()) {
        for (const kestrel::SafetensorsTensor& tensor : file->tensors()) {
            std::span<const uint8_t> bytes = file->tensor_data(tensor);
            if (bytes.size() != static_cast<size_t>(tensor.n_bytes)) std::abort();
        }
    } else {
        require_one_line(file.status());
    }
    kestrel::Result<kestrel::HfConfig> config =
        kestrel::HfConfig::parse(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz/config.json");
    if (!config.ok()) {
        require_one_line(config.status());
        return 0;
    }
    kestrel::Result<kestrel::ModelConfig> model = kestrel::model_config_from_hf(*config);
    if (!model.ok()) require_one_line(model.status());
    return 0;
}
