// The WeightSource over a Hugging Face checkpoint folder: `model.safetensors`, or the shards
// that `model.safetensors.index.json` names ({"metadata": {...}, "weight_map": {tensor ->
// shard file}}). Like transformers, a folder with both uses model.safetensors.
//
// With an index, the index is authoritative:
//   - tensors() lists exactly the tensors of its weight_map, each read from the shard the map
//     names; a tensor the map names but its shard lacks is kCorruptFile, a shard that does not
//     exist is kNotFound;
//   - a tensor a shard holds but the map does not name is left out (with a warning): the index
//     and the shards disagree, and taking the index's word keeps one answer per name;
//   - shard names must be plain file names in the folder (no '/', '\', "." or ".."), so an
//     index cannot make us open files elsewhere. Symlinked shards (the Hugging Face cache's
//     snapshot folders) are fine: only the name is checked.
// Each shard is mapped once; tensors are listed shard by shard (shards in file-name order),
// in data order within a shard, which is the order that reads the files sequentially.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "io/weight_source.h"

namespace kestrel {

class HfFolderSource : public WeightSource {
public:
    static constexpr const char* kSingleFileName = "model.safetensors";
    static constexpr const char* kIndexFileName = "model.safetensors.index.json";

    static Result<std::unique_ptr<HfFolderSource>> open(const std::filesystem::path& folder);

    std::string description() const override;  // "Hugging Face folder <path>"
    std::span<const WeightInfo> tensors() const override { return tensors_; }
    // The bytes of a tensor from tensors() (or a WeightInfo with the same name); empty for a
    // tensor this folder does not hold.
    std::span<const uint8_t> bytes(const WeightInfo& tensor) const override;

    const std::filesystem::path& folder() const { return folder_; }
    bool sharded() const { return sharded_; }
    // The shard files, in file-name order (one entry for a single model.safetensors).
    const std::vector<SafetensorsFile>& shards() const { return shards_; }

private:
    HfFolderSource() = default;
    Status open_single();
    Status open_sharded(const std::filesystem::path& index_path);
    void add_tensor(size_t shard, const SafetensorsTensor& tensor);

    struct Location {
        size_t shard;   // index into shards_
        size_t tensor;  // index into shards_[shard].tensors()
    };

    std::filesystem::path folder_;
    bool sharded_ = false;
    std::vector<SafetensorsFile> shards_;
    std::vector<WeightInfo> tensors_;
    std::vector<Location> locations_;                      // parallel to tensors_
    std::map<std::string, size_t, std::less<>> by_name_;  // name -> index into tensors_
};

}  // namespace kestrel
