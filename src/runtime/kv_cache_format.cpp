#include "runtime/kv_cache_format.h"

#include <fmt/format.h>

namespace kestrel {

Result<KvCacheFormat> parse_kv_cache_format(std::string_view name) {
    if (name == "bf16") return KvCacheFormat::kNative;
    if (name == "tq4") return KvCacheFormat::kTq4;
    return Status(StatusCode::kInvalidArgument,
                  fmt::format("unknown KV cache format '{}' (bf16 or tq4)", name));
}

const char* kv_cache_format_name(KvCacheFormat format) {
    return format == KvCacheFormat::kTq4 ? "tq4" : "bf16";
}

}  // namespace kestrel
