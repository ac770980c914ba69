#include "io/hf_folder_source.h"

#include <fmt/format.h>

#include <functional>
#include <set>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>

#include "core/log.h"
#include "core/mapped_file.h"
#include "core/printable.h"
#include "io/strict_json.h"

namespace kestrel {

using nlohmann::json;

namespace {

// An index is {"metadata": {...}, "weight_map": {...}}: shallow. Large MoE indices are a few MB.
constexpr int kMaxIndexDepth = 16;
constexpr size_t kMaxIndexBytes = 100'000'000;

// Whether an index may name this shard: a plain file name inside the folder.
bool is_plain_file_name(std::string_view name) {
    if (name.empty() || name == "." || name == "..") return false;
    return name.find_first_of(std::string_view("/\\\0", 3)) == std::string_view::npos;
}

}  // namespace

Result<std::unique_ptr<HfFolderSource>> HfFolderSource::open(const std::filesystem::path& folder) {
    std::error_code error;
    if (!std::filesystem::is_directory(folder, error)) {
        return Status(StatusCode::kNotFound,
                      fmt::format("{}: no such folder (expected a Hugging Face checkpoint folder with {} "
                                  "or {})",
                                  printable_full(folder.string()), kSingleFileName, kIndexFileName));
    }
    std::unique_ptr<HfFolderSource> source(new HfFolderSource());
    source->folder_ = folder;
    const std::filesystem::path index_path = folder / kIndexFileName;
    if (std::filesystem::exists(folder / kSingleFileName, error)) {
        KESTREL_RETURN_IF_ERROR(source->open_single());
    } else if (std::filesystem::exists(index_path, error)) {
        KESTREL_RETURN_IF_ERROR(source->open_sharded(index_path));
    } else {
        return Status(StatusCode::kNotFound,
                      fmt::format("{}: found neither {} nor {}", source->description(), kSingleFileName,
                                  kIndexFileName));
    }
    return source;
}

std::string HfFolderSource::description() const {
    return "Hugging Face folder " + printable_full(folder_.string());
}

Status HfFolderSource::open_single() {
    KESTREL_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::open(folder_ / kSingleFileName));
    shards_.push_back(std::move(file));
    for (const SafetensorsTensor& tensor : shards_[0].tensors()) add_tensor(0, tensor);
    return ok_status();
}

Status HfFolderSource::open_sharded(const std::filesystem::path& index_path) {
    sharded_ = true;
    const std::string where = printable_full(index_path.string());

    KESTREL_ASSIGN_OR_RETURN(MappedFile index_file, MappedFile::open(index_path));
    if (index_file.size() > kMaxIndexBytes) {
        return Status(StatusCode::kCorruptFile, fmt::format("{}: {} bytes is too large for an index (limit {})",
                                                            where, index_file.size(), kMaxIndexBytes));
    }
    const std::span<const uint8_t> index_bytes = index_file.bytes();
    Result<json> parsed = parse_json_strict(
        std::string_view(reinterpret_cast<const char*>(index_bytes.data()), index_bytes.size()), kMaxIndexDepth);
    if (!parsed.ok()) {
        return Status(parsed.status().code(), fmt::format("{}: {}", where, parsed.status().message()));
    }
    const json& index = *parsed;
    if (!index.is_object()) {
        return Status(StatusCode::kCorruptFile,
                      fmt::format("{}: expected a JSON object with a \"weight_map\"", where));
    }
    if (const auto metadata = index.find("metadata"); metadata != index.end() && !metadata->is_null() &&
                                                      !metadata->is_object()) {
        return Status(StatusCode::kCorruptFile, fmt::format("{}: \"metadata\" is not an object", where));
    }
    const auto weight_map = index.find("weight_map");
    if (weight_map == index.end() || !weight_map->is_object()) {
        return Status(StatusCode::kCorruptFile,
                      fmt::format("{}: \"weight_map\" is {}, expected an object of tensor name -> shard "
                                  "file name",
                                  where, weight_map == index.end() ? "missing" : "not an object"));
    }

    // shard file name -> the tensors the index puts there, shards in file-name order
    std::map<std::string, std::vector<std::string>> wanted;
    for (const auto& [name, shard] : weight_map->items()) {
        if (!shard.is_string()) {
            return Status(StatusCode::kCorruptFile,
                          fmt::format("{}: weight_map entry {} is not a string (expected a shard file name)",
                                      where, quote_name(name)));
        }
        const std::string& shard_name = shard.get_ref<const std::string&>();
        if (!is_plain_file_name(shard_name)) {
            return Status(StatusCode::kCorruptFile,
                          fmt::format("{}: weight_map entry {} names shard {}, which is not a plain file "
                                      "name in the folder (no '/', '\\', '.' or '..')",
                                      where, quote_name(name), quote_name(shard_name)));
        }
        wanted[shard_name].push_back(name);
    }

    shards_.reserve(wanted.size());
    for (const auto& [shard_name, names] : wanted) {
        const std::filesystem::path shard_path = folder_ / shard_name;
        Result<SafetensorsFile> shard = SafetensorsFile::open(shard_path);
        if (!shard.ok()) {
            if (shard.status().code() != StatusCode::kNotFound) return shard.status();
            return Status(StatusCode::kNotFound,
                          fmt::format("{}: shard {} (holding {} tensors, e.g. {}) does not exist in the folder",
                                      where, quote_name(shard_name), names.size(),
                                      quote_name(names.front())));
        }
        const size_t shard_index = shards_.size();
        shards_.push_back(std::move(shard).value());
        const SafetensorsFile& file = shards_.back();

        for (const std::string& name : names) {
            if (!file.find_tensor(name)) {
                return Status(StatusCode::kCorruptFile,
                              fmt::format("{}: maps tensor {} to shard {}, which has no such tensor", where,
                                          quote_name(name), quote_name(shard_name)));
            }
        }
        // In the shard's data order: `names` came sorted by name.
        const std::set<std::string_view> listed(names.begin(), names.end());
        size_t unlisted = 0;
        for (const SafetensorsTensor& tensor : file.tensors()) {
            if (listed.count(tensor.name)) {
                add_tensor(shard_index, tensor);
            } else {
                ++unlisted;
            }
        }
        if (unlisted > 0) {
            log_warning("{}: shard {} holds {} tensors the index does not list; leaving them out", where,
                        quote_name(shard_name), unlisted);
        }
    }
    return ok_status();
}

void HfFolderSource::add_tensor(size_t shard, const SafetensorsTensor& tensor) {
    const std::vector<SafetensorsTensor>& in_shard = shards_[shard].tensors();
    by_name_.emplace(tensor.name, tensors_.size());
    tensors_.push_back({tensor.name, tensor.dtype, tensor.shape, tensor.n_elements, tensor.n_bytes});
    locations_.push_back({shard, static_cast<size_t>(&tensor - in_shard.data())});
}

std::span<const uint8_t> HfFolderSource::bytes(const WeightInfo& tensor) const {
    size_t index;
    const std::less<const WeightInfo*> before;  // a total order, also for unrelated pointers
    if (!before(&tensor, tensors_.data()) && before(&tensor, tensors_.data() + tensors_.size())) {
        index = static_cast<size_t>(&tensor - tensors_.data());
    } else {  // a copy, or a WeightInfo from elsewhere: go by name
        const auto it = by_name_.find(tensor.name);
        if (it == by_name_.end()) return {};
        index = it->second;
    }
    const Location& location = locations_[index];
    const SafetensorsFile& shard = shards_[location.shard];
    return shard.tensor_data(shard.tensors()[location.tensor]);
}

}  // namespace kestrel
