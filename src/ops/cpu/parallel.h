// Splitting a loop over rows across threads. The split never changes what a row computes, so
// results are identical for every thread count.
#pragma once

#include <cstdint>
#include <functional>

namespace kestrel::cpu {

// Calls body(begin, end) on disjoint ranges covering [0, n), on up to `threads` threads (the
// caller's included). Runs inline when n * cost_per_item is too small to pay for a thread.
void parallel_for(int64_t n, int threads, int64_t cost_per_item,
                  const std::function<void(int64_t begin, int64_t end)>& body);

// threads <= 0 -> std::thread::hardware_concurrency() (at least 1).
int resolve_threads(int threads);

}  // namespace kestrel::cpu
