#include "io/strict_json.h"

#include <fmt/format.h>

#include <new>
#include <string>
#include <unordered_set>
#include <vector>

#include "core/printable.h"

namespace kestrel {

using nlohmann::json;

namespace {

// Checks depth and repeated keys while nlohmann reads the text, building nothing, so that a
// hostile header cannot make the DOM parse below build something deep or ambiguous.
class StrictJsonChecker {
public:
    StrictJsonChecker(int max_depth, bool allow_duplicate_keys)
        : max_depth_(max_depth), allow_duplicate_keys_(allow_duplicate_keys) {}

    bool null() { return true; }
    bool boolean(bool) { return true; }
    bool number_integer(json::number_integer_t) { return true; }
    bool number_unsigned(json::number_unsigned_t) { return true; }
    bool number_float(json::number_float_t, const json::string_t&) { return true; }
    bool string(json::string_t&) { return true; }
    bool binary(json::binary_t&) { return true; }
    bool start_object(std::size_t) { return push(true); }
    bool end_object() { return pop(); }
    bool start_array(std::size_t) { return push(false); }
    bool end_array() { return pop(); }

    bool key(json::string_t& key) {
        Frame& frame = frames_.back();
        if (!allow_duplicate_keys_ && !frame.keys.insert(key).second) {
            error_ = fmt::format("duplicate key {} in {}", quote_name(key),
                                 frame.name.empty() ? std::string("the top-level object")
                                                    : "object " + quote_name(frame.name));
            return false;
        }
        frame.last_key = key;
        return true;
    }

    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& error) {
        // "[json.exception.parse_error.101] parse error at line 1, column 5: ..." -> drop the tag
        std::string_view what = error.what();
        if (const size_t tag_end = what.find("] "); !what.empty() && what[0] == '[' &&
                                                   tag_end != std::string_view::npos) {
            what.remove_prefix(tag_end + 2);
        }
        error_ = "invalid JSON: " + printable_full(what.substr(0, 300));
        return false;
    }

    const std::string& error() const { return error_; }

private:
    struct Frame {
        bool is_object;
        std::string name;      // the key this container sits under, for messages
        std::string last_key;  // objects: the key whose value comes next
        std::unordered_set<std::string> keys;
    };

    bool push(bool is_object) {
        if (static_cast<int>(frames_.size()) >= max_depth_) {
            error_ = fmt::format("JSON nested deeper than {} levels", max_depth_);
            return false;
        }
        std::string name;
        if (!frames_.empty()) name = frames_.back().is_object ? frames_.back().last_key : frames_.back().name;
        frames_.push_back({is_object, std::move(name), {}, {}});
        return true;
    }

    bool pop() {
        frames_.pop_back();
        return true;
    }

    int max_depth_;
    bool allow_duplicate_keys_;
    std::vector<Frame> frames_;
    std::string error_;
};

}  // namespace

Result<json> parse_json_strict(std::string_view text, int max_depth, bool allow_duplicate_keys) {
    try {
        StrictJsonChecker checker(max_depth, allow_duplicate_keys);
        if (!json::sax_parse(text, &checker)) {
            return Status(StatusCode::kCorruptFile,
                          checker.error().empty() ? std::string("invalid JSON") : checker.error());
        }
        return json::parse(text);
    } catch (const std::bad_alloc&) {
        return Status(StatusCode::kOutOfMemory, "out of memory while parsing JSON");
    } catch (const std::exception& error) {  // the checker accepted it, so this is not expected
        return Status(StatusCode::kCorruptFile,
                      "invalid JSON: " + printable_full(std::string_view(error.what()).substr(0, 300)));
    }
}

std::string_view json_kind(const json& value) {
    switch (value.type()) {
        case json::value_t::null: return "null";
        case json::value_t::object: return "an object";
        case json::value_t::array: return "an array";
        case json::value_t::string: return "a string";
        case json::value_t::boolean: return "a boolean";
        case json::value_t::number_integer:
        case json::value_t::number_unsigned: return "an integer";
        case json::value_t::number_float: return "a fractional number";
        case json::value_t::binary: return "binary";
        case json::value_t::discarded: return "invalid";
    }
    return "invalid";
}

}  // namespace kestrel
