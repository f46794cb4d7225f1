// Small helpers of the CUDA backend's host code: errors, dtype ids, device buffers.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "core/buffer.h"
#include "core/dtype.h"
#include "cserve/error.h"
#include "util/parallel_rows.h"

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


inline void write_error(char* out, size_t len, const std::string& msg) {
  if (!out || len == 0) return;
  const size_t n = std::min(len - 1, msg.size());
  std::memcpy(out, msg.data(), n);
  out[n] = '\0';
}

}  // namespace cserve::cuda_util
