#include <queue>

#include "tokenizer/tokenizer_data.h"

namespace kestrel {

void bpe_merge_by_rank(const std::unordered_map<uint64_t, MergeInfo>& merges, std::vector<int32_t>& symbols) {
    const int n = static_cast<int>(symbols.size());
    if (n < 2 || merges.empty()) return;
    // A doubly linked list over `symbols`; a merged-away symbol gets id -1. Candidates sit in a
    // min-heap by (rank, position) and are checked when popped, so a stale one (a neighbour
    // changed since) is dropped: O(n log n) instead of rescanning all pairs after each merge.
    std::vector<int> prev(n), next(n);
    for (int i = 0; i < n; ++i) {
        prev[i] = i - 1;
        next[i] = i + 1 < n ? i + 1 : -1;
    }
    struct Candidate {
        int32_t rank;
        int left;
        int32_t left_id;
        int32_t right_id;
        bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
    const auto consider = [&](int left) {
        if (left < 0 || next[left] < 0) return;
        const int32_t a = symbols[left];
        const int32_t b = symbols[next[left]];
        const auto it = merges.find(pair_key(a, b));
        if (it != merges.end()) heap.push({it->second.rank, left, a, b});
    };
    for (int i = 0; i + 1 < n; ++i) consider(i);
    while (!heap.empty()) {
        const Candidate c = heap.top();
        heap.pop();
        const int right = next[c.left];
        if (symbols[c.left] != c.left_id || right < 0 || symbols[right] != c.right_id) continue;
        symbols[c.left] = merges.at(pair_key(c.left_id, c.right_id)).result;
        symbols[right] = -1;
        next[c.left] = next[right];
        if (next[right] >= 0) prev[next[right]] = c.left;
        consider(prev[c.left]);
        consider(c.left);
    }
    std::erase(symbols, -1);
}

}  // namespace kestrel
