#include "ops/cpu/parallel.h"

#include <algorithm>
#include <thread>
#include <vector>

namespace kestrel::cpu {

namespace {
// Below this many multiply-adds a thread costs more than it saves (starting one is ~20 us).
constexpr int64_t kMinWorkPerThread = 1 << 16;
}  // namespace

int resolve_threads(int threads) {
    if (threads > 0) return threads;
    return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

void parallel_for(int64_t n, int threads, int64_t cost_per_item,
                  const std::function<void(int64_t, int64_t)>& body) {
    if (n <= 0) return;
    const int64_t by_work = std::max<int64_t>(1, n * std::max<int64_t>(1, cost_per_item) / kMinWorkPerThread);
    const int64_t n_threads = std::min<int64_t>({static_cast<int64_t>(std::max(1, threads)), n, by_work});
    if (n_threads <= 1) {
        body(0, n);
        return;
    }
    std::vector<std::thread> workers;
    workers.reserve(static_cast<size_t>(n_threads - 1));
    const int64_t step = (n + n_threads - 1) / n_threads;
    for (int64_t i = 1; i < n_threads; ++i) {
        const int64_t begin = i * step;
        const int64_t end = std::min(n, begin + step);
        if (begin >= end) break;
        workers.emplace_back([&body, begin, end] { body(begin, end); });
    }
    body(0, std::min(n, step));
    for (auto& worker : workers) worker.join();
}

}  // namespace kestrel::cpu
