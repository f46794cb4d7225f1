// The CUDA library's device communicator (see backend/device_communicator.h): NCCL, plus the
// custom all-reduce of cuda/comm for small all-reduces where the GPUs reach each other's memory.
#pragma once
#include <memory>

#include "backend/cuda/cuda_device_access.h"
#include "backend/device_communicator.h"
#include "comm/communicator.h"

namespace cserve {

std::unique_ptr<Communicator> new_cuda_communicator(CudaDeviceAccess& device, Communicator& host,
                                                    const DeviceCommunicatorOptions& options);

}  // namespace cserve
