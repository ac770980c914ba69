// Tables for nfc_normalize() (unicode.cpp), generated into unicode_nfc_data.cpp, sorted by code point
// (compositions by pair) for binary search. Hangul syllables are left to the algorithm (UAX #15).
#pragma once

#include <cstdint>

namespace kestrel {

struct CombiningClass {
    char32_t code_point;
    uint8_t ccc;  // canonical combining class, non-zero
};
struct Decomposition {
    char32_t code_point;
    uint32_t offset;  // into kDecompositionPool: the full canonical decomposition
    uint32_t length;
};
struct Composition {
    char32_t first;
    char32_t second;
    char32_t composite;  // a primary composite: not excluded from composition
};

extern const CombiningClass kCombiningClasses[912];
extern const char32_t kDecompositionPool[3406];
extern const Decomposition kDecompositions[2061];
extern const Composition kCompositions[941];

}  // namespace kestrel
