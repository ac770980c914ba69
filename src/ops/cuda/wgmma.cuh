// Hopper warpgroup MMA (wgmma) and what goes with it, as PTX (ISA 8.x, "Asynchronous
// Warpgroup Level Matrix Multiply-Accumulate Instructions"): shared-memory matrix descriptors
// for 128-byte-swizzled tiles, the fence / commit / wait of the asynchronous MMAs, the proxy
// fence that makes ordinary shared-memory stores visible to them, and register reallocation
// between warpgroups. Those are defined only where KESTREL_HAS_WGMMA (an sm_90a compile).
//
// The 128-byte swizzle (the layout every operand here uses): a tile is made of 1024-byte atoms of
// 8 rows x 128 bytes; the 16-byte chunk c of row r of an atom lives at chunk c ^ (r % 8). Atoms
// start on 1024-byte boundaries (descriptor base offset 0). swizzled_offset() gives the byte.
#pragma once

#include <cstdint>

namespace kestrel::cuda {

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define KESTREL_HAS_WGMMA 1
#else
#define KESTREL_HAS_WGMMA 0
#endif

// Byte offset of 16-byte chunk `chunk` (0..7) of row `row` in a 128-byte-swizzled tile whose
// rows are 128 bytes apart.
__host__ __device__ constexpr uint32_t swizzled_offset(int row, int chunk) {
    return static_cast<uint32_t>(row * 128 + ((chunk ^ (row & 7)) << 4));
}

// Matrix descriptor (PTX "Matrix Descriptor Format"): start address, leading and stride byte
// offsets (each >> 4, 14 bits), 128-byte swizzle (mode 1 in bits 62-63). For a K-major operand
// the leading offset is unused (1) and the stride is from one 8-row group to the next; for an
// MN-major one, leading is from one 64-element block of M / N to the next and stride from one
// 8-row group of K to the next.
__device__ __forceinline__ uint64_t wgmma_descriptor(uint32_t shared_address,
                                                     uint32_t leading_bytes,
                                                     uint32_t stride_bytes) {
    return static_cast<uint64_t>((shared_address & 0x3FFFFu) >> 4) |
           static_cast<uint64_t>((leading_bytes & 0x3FFFFu) >> 4) << 16 |
           static_cast<uint64_t>((stride_bytes & 0x3FFFFu) >> 4) << 32 | uint64_t{1} << 62;
}

#if KESTREL_HAS_WGMMA

// Before the first wgmma of a batch whose accumulators other instructions have touched.
__device__ __forceinline__ void wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// Keeps the compiler from moving reads of an accumulator above the wait that completes it (the
// asm that issued the MMA already "wrote" it as far as the compiler knows).
template <int kCount>
__device__ __forceinline__ void wgmma_pin(float (&d)[kCount]) {
#pragma unroll
    for (int i = 0; i < kCount; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// Ordinary shared-memory stores of this thread made visible to later wgmma reads (async proxy);
// a barrier then publishes them to the warpgroups that issue the MMAs.
__device__ __forceinline__ void fence_shared_to_async_proxy() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Register reallocation: every warp of a warpgroup executes it with the same count.
template <int kRegisters>
__device__ __forceinline__ void warpgroup_registers_decrease() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}
template <int kRegisters>
__device__ __forceinline__ void warpgroup_registers_increase() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
}

// D[64 x 32] (+)= A B, A [64 x 16] and B [16 x 32] both K-major in shared memory (descriptors).
__device__ __forceinline__ void wgmma_m64n32k16(float (&d)[16], uint64_t a_descriptor,
                                                uint64_t b_descriptor, int accumulate) {
    asm volatile(
        "{\n"
        ".reg .pred acc_pred;\n"
        "setp.ne.b32 acc_pred, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
        "}, %16, %17, acc_pred, 1, 1, 0, 0;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
          "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
          "+f"(d[14]), "+f"(d[15])
        : "l"(a_descriptor), "l"(b_descriptor), "r"(accumulate));
}

// D[64 x 256] (+)= A B, A [64 x 16] K-major, B [16 x 256] MN-major (imm-trans-b = 1).
__device__ __forceinline__ void wgmma_m64n256k16_b_mn_major(float (&d)[128], uint64_t a_descriptor,
                                                            uint64_t b_descriptor, int accumulate) {
    asm volatile(
        "{\n"
        ".reg .pred acc_pred;\n"
        "setp.ne.b32 acc_pred, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, "
        "%111, "
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, "
        "%127"
        "}, %128, %129, acc_pred, 1, 1, 0, 1;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
          "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
          "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
          "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
          "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
          "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
          "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
          "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
          "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]),
          "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]),
          "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]),
          "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]),
          "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]),
          "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
          "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]),
          "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]),
          "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]),
          "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "l"(a_descriptor), "l"(b_descriptor), "r"(accumulate));
}

#endif  // KESTREL_HAS_WGMMA

}  // namespace kestrel::cuda
