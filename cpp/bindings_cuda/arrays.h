// What the _cuda binding files share: NumPy float32 arrays in and out, CUDA errors as exceptions.
#pragma once
#include <cuda_runtime.h>
#include <nanobind/ndarray.h>

#include <stdexcept>
#include <string>

namespace cserve::cuda_bindings {

using Array = nanobind::ndarray<float, nanobind::numpy, nanobind::c_contig, nanobind::device::cpu>;
using ArrayIn = nanobind::ndarray<const float, nanobind::c_contig, nanobind::device::cpu>;

inline void ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

}  // namespace cserve::cuda_bindings
