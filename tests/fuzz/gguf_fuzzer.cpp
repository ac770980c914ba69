// libFuzzer target: arbitrary bytes through the GGUF parser and everything that reads a parsed
// file's metadata (typed getters, ModelConfig, the WeightSource view, dequantisation of small
// tensors). Any crash, sanitizer report, hang or multi-line error message is a bug.
#include <cstdint>
#include <cstdlib>
#include <span>

#include "io/gguf.h"
#include "io/gguf_source.h"
#include "models/model_config.h"

namespace {

void require_one_line(const kestrel::Status& status) {
    if (!status.ok() && status.message().find('\n') != std::string::npos) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    kestrel::Result<kestrel::GgufFile> file = kestrel::GgufFile::parse(std::span<const uint8_t>(data, size), "fuzz.gguf");
    if (!file.ok()) {
        require_one_line(file.status());
        return 0;
    }
    for (const kestrel::GgufKeyValue& entry : file->metadata()) {
        require_one_line(file->get_int(entry.key).status());
        require_one_line(file->get_string_array(entry.key).status());
        require_one_line(file->get_float_array(entry.key).status());
    }
    kestrel::Result<kestrel::ModelConfig> config = kestrel::model_config_from_gguf(*file);
    if (!config.ok()) require_one_line(config.status());
    auto shared = std::make_shared<const kestrel::GgufFile>(std::move(file).value());
    kestrel::GgufSource source(shared);
    for (const kestrel::WeightInfo& tensor : source.tensors()) {
        if (tensor.n_elements > (1 << 16)) continue;  // keep each input fast
        kestrel::Result<std::vector<float>> values = kestrel::read_tensor_f32(source, tensor);
        if (!values.ok()) require_one_line(values.status());
    }
    return 0;
}
