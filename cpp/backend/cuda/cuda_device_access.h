// What the CUDA library's communicators need of the CUDA backend beyond the Backend interface:
// its GPU, its stream, and whether its ops launch work now (eager or while a graph is captured)
// or only refresh a graph's host inputs (sizing and replay passes launch nothing).
#pragma once
#include <cuda_runtime.h>

namespace cserve {

class CudaDeviceAccess {
 public:
  virtual ~CudaDeviceAccess() = default;
  virtual int ordinal() const = 0;
  virtual cudaStream_t stream() const = 0;
  virtual bool launches() const = 0;
  virtual bool capturing() const = 0;
};

}  // namespace cserve
