// A read-only memory map of a whole file. Model files are tens of GB: mapping them lets the
// OS page in only what is read, and lets tensor views point straight into the file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>

#include "kestrel/status.h"

namespace kestrel {

class MappedFile {
public:
    static Result<MappedFile> open(const std::filesystem::path& path);

    MappedFile() = default;
    MappedFile(MappedFile&& other) noexcept;
    MappedFile& operator=(MappedFile&& other) noexcept;
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;
    ~MappedFile();

    std::span<const uint8_t> bytes() const { return {data_, size_}; }
    size_t size() const { return size_; }
    const std::filesystem::path& path() const { return path_; }

private:
    const uint8_t* data_ = nullptr;
    size_t size_ = 0;
    std::filesystem::path path_;
};

}  // namespace kestrel
