// What the _cuda binding files share: NumPy float32 arrays in and out, CUDA errors as exceptions.
#pragma once
#include <cuda_runtime.h>
#include <nanobind/ndarray.h>

#include "quant/quant_linear.h"

#include <stdexcept>
#include <string>

namespace cserve::cuda_bindings {

using Array = nanobind::ndarray<float, nanobind::numpy, nanobind::c_contig, nanobind::device::cpu>;
using ArrayIn = nanobind::ndarray<const float, nanobind::c_contig, nanobind::device::cpu>;

inline void ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

// `bytes` of zeroed device memory (at least 1), optionally filled from the host.
struct DeviceBytes {
  void* p = nullptr;
  explicit DeviceBytes(size_t bytes, const void* host = nullptr) {
    ok(cudaMalloc(&p, bytes ? bytes : 1), "cudaMalloc");
    ok(cudaMemset(p, 0, bytes ? bytes : 1), "cudaMemset");
    if (host && bytes) ok(cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  }
  ~DeviceBytes() { cudaFree(p); }
  DeviceBytes(const DeviceBytes&) = delete;
  DeviceBytes& operator=(const DeviceBytes&) = delete;
};

// "auto" (the backend's choice by row count), "gemv" or "tiles".
inline cserve::cuda::QuantGemmPath quant_gemm_path(const std::string& name) {
  if (name == "auto") return cserve::cuda::QuantGemmPath::Auto;
  if (name == "gemv") return cserve::cuda::QuantGemmPath::Gemv;
  if (name == "tiles") return cserve::cuda::QuantGemmPath::Tiles;
  throw std::invalid_argument("quantized GEMM path must be auto, gemv or tiles, not " + name);
}

}  // namespace cserve::cuda_bindings
