// IEEE binary16 and bfloat16 conversions on the host, bit-exact with numpy's float16 and
// with the bfloat16 = upper 16 bits of float32 convention (round to nearest even on the way in).
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>

namespace kestrel {

inline float fp16_to_fp32(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0x1f) {  // inf or NaN: keep the payload
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent != 0) {  // normal
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {  // signed zero
        bits = sign;
    } else {  // subnormal: normalise
        int shift = 0;
        while ((mantissa & 0x400u) == 0) {
            mantissa <<= 1;
            ++shift;
        }
        mantissa &= 0x3ffu;
        bits = sign | (static_cast<uint32_t>(113 - shift) << 23) | (mantissa << 13);
    }
    return std::bit_cast<float>(bits);
}

// Round to nearest even, overflow to inf, NaN stays NaN (as numpy's astype(float16)).
inline uint16_t fp32_to_fp16(float value) {
    const uint32_t bits = std::bit_cast<uint32_t>(value);
    const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
    const uint32_t exponent = (bits >> 23) & 0xffu;
    const uint32_t mantissa = bits & 0x7fffffu;
    if (exponent == 0xff) return sign | 0x7c00u | (mantissa ? 0x200u : 0u);
    const int32_t half_exponent = static_cast<int32_t>(exponent) - 127 + 15;
    if (half_exponent >= 0x1f) return sign | 0x7c00u;
    if (half_exponent <= 0) {
        if (half_exponent < -10) return sign;  // rounds to zero
        const uint32_t full = mantissa | 0x800000u;
        const int shift = 14 - half_exponent;
        uint32_t half_mantissa = full >> shift;
        const uint32_t remainder = full & ((1u << shift) - 1);
        const uint32_t halfway = 1u << (shift - 1);
        if (remainder > halfway || (remainder == halfway && (half_mantissa & 1u))) ++half_mantissa;
        return sign | static_cast<uint16_t>(half_mantissa);
    }
    uint32_t result = (static_cast<uint32_t>(half_exponent) << 10) | (mantissa >> 13);
    const uint32_t remainder = mantissa & 0x1fffu;
    if (remainder > 0x1000u || (remainder == 0x1000u && (result & 1u))) ++result;  // may carry to inf
    return sign | static_cast<uint16_t>(result);
}

// The smallest fp16 not below `value` (value >= 0, finite): a scale rounded up, so that
// scale * q_max still reaches the largest value it must cover.
inline uint16_t fp16_at_least(float value) {
    uint16_t bits = fp32_to_fp16(value);
    if (fp16_to_fp32(bits) < value) ++bits;  // non-negative fp16 order as their bit patterns
    return bits;
}

// The largest fp16 not above `value`: a minimum rounded down, so it stays below every element.
inline uint16_t fp16_at_most(float value) {
    uint16_t bits = fp32_to_fp16(value);
    if (fp16_to_fp32(bits) > value) {
        if (bits & 0x8000u) {
            ++bits;  // negative: one step further from zero
        } else if (bits == 0) {
            bits = 0x8001u;  // the smallest negative subnormal
        } else {
            --bits;
        }
    }
    return bits;
}

inline float bf16_to_fp32(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

inline uint16_t fp32_to_bf16(float value) {
    uint32_t bits = std::bit_cast<uint32_t>(value);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return static_cast<uint16_t>(bits >> 16);
}

// Little-endian loads from unaligned file bytes (GGUF and safetensors are little-endian).
template <class T>
inline T load_le(const uint8_t* p) {
    static_assert(std::endian::native == std::endian::little, "Kestrel assumes a little-endian host");
    T value;
    std::memcpy(&value, p, sizeof(T));
    return value;
}

}  // namespace kestrel
