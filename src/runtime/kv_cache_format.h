// `--kv-cache bf16|tq4`: how a session stores its keys and values (issue 8; techniques.md §4).
#pragma once

#include <string_view>

#include "kestrel/status.h"

namespace kestrel {

enum class KvCacheFormat {
    kNative,  // "bf16": the backend's own KV dtype in every layer (fp32 on the CPU reference, bf16
              // on CUDA)
    kTq4,     // "tq4": full-attention layers (window 0) in TQ4 (ops/kv_tq4.h); sliding rings stay
              // native
};

// "bf16" -> kNative, "tq4" -> kTq4; kInvalidArgument for anything else.
Result<KvCacheFormat> parse_kv_cache_format(std::string_view name);
// The flag's spelling: "bf16" or "tq4".
const char* kv_cache_format_name(KvCacheFormat format);

}  // namespace kestrel
