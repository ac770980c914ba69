// A kernel timeline of any CUDA program, CUDA-graph replays included: every kernel's start and end
// on the GPU's clock, from CUPTI's activity records. Why: a decode step is a graph of ~500 kernels
// launched with programmatic dependent launch, so a kernel may start before its predecessor ends
// and wait inside; ncu times each kernel alone and nsys is not on our GPU machines, so neither
// shows what a kernel adds to a replayed step. scripts/kernel_timeline.py turns the file this
// writes into that.
//
// Use: CUDA_INJECTION64_PATH=build/libkestrel_kernel_trace.so KESTREL_KERNEL_TRACE=trace.csv <cmd>
// The CUDA driver loads the library and calls InitializeInjection before the program's first CUDA
// call. One line per kernel: start_ns,end_ns,graph_id,graph_node_id,grid,block,name (the name
// demangled, commas replaced). Records arrive in buffers that CUPTI fills asynchronously; they are
// flushed at exit.
#include <cupti.h>
#include <cxxabi.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

namespace {

constexpr size_t kBufferBytes = size_t{16} << 20;

std::mutex g_mutex;
FILE* g_out = nullptr;

void report(CUptiResult result, const char* what) {
    if (result == CUPTI_SUCCESS) return;
    const char* message = nullptr;
    cuptiGetResultString(result, &message);
    std::fprintf(stderr, "kernel_trace: %s failed: %s\n", what, message != nullptr ? message : "?");
}

std::string demangled(const char* name) {
    if (name == nullptr) return "?";
    int status = 0;
    char* plain = abi::__cxa_demangle(name, nullptr, nullptr, &status);
    std::string text = status == 0 && plain != nullptr ? plain : name;
    std::free(plain);
    for (char& c : text) {
        if (c == ',' || c == '\n') c = ';';
    }
    return text;
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
    *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
    *size = *buffer != nullptr ? kBufferBytes : 0;
    *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
    {
        const std::lock_guard<std::mutex> lock(g_mutex);
        CUpti_Activity* record = nullptr;
        while (g_out != nullptr &&
               cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
            if (record->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) continue;
            const auto* kernel = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
            std::fprintf(g_out, "%llu,%llu,%u,%llu,%dx%dx%d,%dx%dx%d,%s\n",
                         static_cast<unsigned long long>(kernel->start),
                         static_cast<unsigned long long>(kernel->end), kernel->graphId,
                         static_cast<unsigned long long>(kernel->graphNodeId), kernel->gridX,
                         kernel->gridY, kernel->gridZ, kernel->blockX, kernel->blockY,
                         kernel->blockZ, demangled(kernel->name).c_str());
        }
    }
    std::free(buffer);
}

void flush_at_exit() {
    report(cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED), "cuptiActivityFlushAll");
    const std::lock_guard<std::mutex> lock(g_mutex);
    if (g_out != nullptr) std::fclose(g_out);
    g_out = nullptr;
}

}  // namespace

extern "C" int InitializeInjection() {
    const char* path = std::getenv("KESTREL_KERNEL_TRACE");
    g_out = std::fopen(path != nullptr ? path : "kernel_trace.csv", "w");
    if (g_out == nullptr) {
        std::fprintf(stderr, "kernel_trace: cannot write %s\n", path != nullptr ? path : "kernel_trace.csv");
        return 0;
    }
    std::fprintf(g_out, "start_ns,end_ns,graph_id,graph_node_id,grid,block,name\n");
    report(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed),
           "cuptiActivityRegisterCallbacks");
    // CONCURRENT_KERNEL, not KERNEL: the latter serialises kernels, which would hide the overlap
    // this is for.
    report(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "cuptiActivityEnable");
    std::atexit(flush_at_exit);
    return 1;
}
