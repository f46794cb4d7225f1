// The C entry points of the CUDA backend library (libcserve_cuda.so), shared by the
// loader in backend_factory.cpp and the library itself. Both sides are built from one
// tree; the ABI number guards against a library left over from another build.
#pragma once
#include <cstddef>

namespace cserve {

class Backend;
class Communicator;
struct DeviceCommunicatorOptions;

constexpr int kCudaBackendAbi = 2;
constexpr const char* kCudaLibraryName = "libcserve_cuda.so";
constexpr const char* kCudaEntrySymbol = "cserve_cuda_entry_points";

struct CudaEntryPoints {
  int abi_version = 0;
  // Number of usable CUDA devices; 0 with the reason in `error` (no driver, no GPU).
  int (*device_count)(char* error, size_t error_len) = nullptr;
  // A new backend on device `ordinal` (owned by the caller), or nullptr with `error` set.
  Backend* (*create_backend)(int ordinal, char* error, size_t error_len) = nullptr;
  // A device communicator (owned by the caller) on `backend`, one this library created; the
  // group meets through `host` first. nullptr with `error` set; `timed_out` tells a peer that
  // never arrived from any other failure.
  Communicator* (*create_communicator)(Backend* backend, Communicator* host, const DeviceCommunicatorOptions* options,
                                       bool* timed_out, char* error, size_t error_len) = nullptr;
};

using GetCudaEntryPoints = void (*)(CudaEntryPoints* out);

}  // namespace cserve
