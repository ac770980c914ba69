// Errors as values: every API and I/O boundary returns a Status or a Result<T>.
// A message names the file, tensor or field and what was expected, on one line,
// so a user can act on it without a debugger.
#pragma once

#include <optional>
#include <string>
#include <utility>

namespace kestrel {

enum class StatusCode {
    kOk,
    kInvalidArgument,  // the caller asked for something impossible (bad flag, empty prompt)
    kNotFound,         // a file, key or tensor that should exist does not
    kIoError,          // the operating system refused (open, mmap, write)
    kCorruptFile,      // a file's bytes contradict its own format
    kUnsupported,      // well-formed, but a feature we do not implement (a quant type, a version)
    kOutOfMemory,      // the memory plan does not fit
    kInternal,         // a bug in Kestrel
};

const char* status_code_name(StatusCode code);

class [[nodiscard]] Status {
public:
    Status() = default;
    Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

    bool ok() const { return code_ == StatusCode::kOk; }
    StatusCode code() const { return code_; }
    const std::string& message() const { return message_; }

private:
    StatusCode code_ = StatusCode::kOk;
    std::string message_;
};

inline Status ok_status() { return Status(); }

// A value or the Status that explains why there is none.
template <class T>
class [[nodiscard]] Result {
public:
    Result(T value) : value_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
    Result(Status status)  // NOLINT(google-explicit-constructor)
        : status_(status.ok() ? Status(StatusCode::kInternal, "Result built from an ok Status") : std::move(status)) {}

    bool ok() const { return value_.has_value(); }
    const Status& status() const { return status_; }

    T& value() & { return *value_; }
    const T& value() const& { return *value_; }
    T&& value() && { return std::move(*value_); }
    T* operator->() { return &*value_; }
    const T* operator->() const { return &*value_; }
    T& operator*() & { return *value_; }
    const T& operator*() const& { return *value_; }

private:
    std::optional<T> value_;
    Status status_;
};

}  // namespace kestrel

#define KESTREL_CONCAT_INNER(a, b) a##b
#define KESTREL_CONCAT(a, b) KESTREL_CONCAT_INNER(a, b)

// Returns the Status of `expr` from the enclosing function when it is not ok.
#define KESTREL_RETURN_IF_ERROR(expr)                  \
    do {                                               \
        ::kestrel::Status kestrel_status_ = (expr);    \
        if (!kestrel_status_.ok()) return kestrel_status_; \
    } while (0)

// `KESTREL_ASSIGN_OR_RETURN(auto x, f());` declares x from f()'s value, or returns its Status.
#define KESTREL_ASSIGN_OR_RETURN(lhs, expr) \
    KESTREL_ASSIGN_OR_RETURN_IMPL(KESTREL_CONCAT(kestrel_result_, __LINE__), lhs, expr)
#define KESTREL_ASSIGN_OR_RETURN_IMPL(result, lhs, expr) \
    auto result = (expr);                                \
    if (!result.ok()) return result.status();            \
    lhs = std::move(result).value()
