// NCCL, loaded at run time with dlopen (as cuBLASLt is), so that neither the build nor a
// CPU-only install ever needs it. It comes from NVIDIA's wheel nvidia-nccl-cu13
// (`pip install nvidia-nccl-cu13`, or cserve[cuda]). The few types declared here are NCCL's
// stable ABI (nccl.h of NCCL 2.x), so no nccl.h is needed at build time.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <string>

namespace cserve::cuda {

struct NcclComm;  // opaque: ncclComm_t is a pointer to NCCL's own struct
using ncclComm_t = NcclComm*;
constexpr size_t kNcclUniqueIdBytes = 128;
struct ncclUniqueId {
  char internal[kNcclUniqueIdBytes];
};
enum ncclResult_t : int { ncclSuccess = 0, ncclInProgress = 7 };
enum ncclDataType_t : int { ncclUint8 = 1, ncclFloat16 = 6, ncclFloat32 = 7, ncclBfloat16 = 9 };
enum ncclRedOp_t : int { ncclSum = 0 };

struct NcclApi {
  ncclResult_t (*get_version)(int*) = nullptr;
  ncclResult_t (*get_unique_id)(ncclUniqueId*) = nullptr;
  ncclResult_t (*comm_init_rank)(ncclComm_t*, int, ncclUniqueId, int) = nullptr;
  ncclResult_t (*comm_destroy)(ncclComm_t) = nullptr;
  ncclResult_t (*comm_abort)(ncclComm_t) = nullptr;
  ncclResult_t (*comm_get_async_error)(ncclComm_t, ncclResult_t*) = nullptr;
  const char* (*get_error_string)(ncclResult_t) = nullptr;
  ncclResult_t (*all_reduce)(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t,
                             cudaStream_t) = nullptr;
  ncclResult_t (*all_gather)(const void*, void*, size_t, ncclDataType_t, ncclComm_t, cudaStream_t) = nullptr;
  ncclResult_t (*broadcast)(const void*, void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t) = nullptr;

  // Throws std::runtime_error naming the call and NCCL's reason unless `r` is ncclSuccess.
  void check(ncclResult_t r, const char* what) const;
};

// The process's NCCL, loaded on first use and then kept: $CSERVE_NCCL_LIBRARY when set, else
// the wheel's copy in the site-packages this library was installed into (nvidia/nccl/lib), else
// libnccl.so.2 on the loader's path. Throws std::runtime_error saying what was tried and which
// package to install (a failure is not remembered: a later call tries again).
const NcclApi& nccl_api();
// The path nccl_api() loaded, and NCCL's version code (e.g. 23007 for 2.30.7).
std::string nccl_library_path();
int nccl_version();

}  // namespace cserve::cuda
