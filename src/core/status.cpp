#include "kestrel/status.h"

namespace kestrel {

const char* status_code_name(StatusCode code) {
    switch (code) {
        case StatusCode::kOk: return "ok";
        case StatusCode::kInvalidArgument: return "invalid argument";
        case StatusCode::kNotFound: return "not found";
        case StatusCode::kIoError: return "I/O error";
        case StatusCode::kCorruptFile: return "corrupt file";
        case StatusCode::kUnsupported: return "unsupported";
        case StatusCode::kOutOfMemory: return "out of memory";
        case StatusCode::kInternal: return "internal error";
    }
    return "unknown";
}

}  // namespace kestrel
