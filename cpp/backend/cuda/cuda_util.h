// Small helpers of the CUDA backend's host code: errors, dtype ids, device buffers.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "core/buffer.h"
#include "core/dtype.h"
#include "cserve/error.h"

namespace cserve::cuda_util {

inline void check(cudaError_t e, const char* what) {
  if (e == cudaErrorMemoryAllocation) throw OutOfMemory(std::string("CUDA out of memory in ") + what);
  if (e != cudaSuccess) throw Error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(e));
}

// The kernels' DTypeId values are cserve::DType's.
inline int dtype_id(DType t) { return static_cast<int>(t); }

inline void free_device(void* data, void*) { cudaFree(data); }

// `bytes` of zeroed device memory owned by a Buffer (zeroed on `stream`, as Buffer(bytes) is).
inline Buffer device_buffer(size_t bytes, cudaStream_t stream) {
  if (bytes == 0) return Buffer();
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error state of a failed allocation
    throw OutOfMemory("CUDA out of memory: cannot allocate " + std::to_string(bytes) + " bytes (" +
                      cudaGetErrorString(e) + ")");
  }
  Buffer b = Buffer::adopt(p, bytes, &free_device);
  check(cudaMemsetAsync(p, 0, bytes, stream), "cudaMemset");
  return b;
}

// fn(begin, end) over [0, n) split across the host's cores (up to 16): weight conversion at
// load time is host work, and an 8B model has 8 billion values to convert.
template <class F>
void parallel_rows(int64_t n, F fn) {
  const int64_t threads = std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, 16);
  if (n < 64 || threads == 1) {
    fn(int64_t{0}, n);
    return;
  }
  std::vector<std::thread> pool;
  for (int64_t t = 0; t < threads; ++t) pool.emplace_back([&fn, n, t, threads] { fn(n * t / threads, n * (t + 1) / threads); });
  for (auto& th : pool) th.join();
}

inline void write_error(char* out, size_t len, const std::string& msg) {
  if (!out || len == 0) return;
  const size_t n = std::min(len - 1, msg.size());
  std::memcpy(out, msg.data(), n);
  out[n] = '\0';
}

}  // namespace cserve::cuda_util
