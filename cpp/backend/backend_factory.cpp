// make_backend: the CPU backend is linked in; the CUDA backend is a shared library
// (libcserve_cuda.so, built when nvcc is found) loaded here at run time, so that nothing
// that loads cserve ever needs a GPU driver or the CUDA runtime.
#include <dlfcn.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "backend/backend.h"
#include "backend/cuda_entry.h"
#include "backend/device_communicator.h"
#include "cserve/error.h"

namespace cserve {

namespace {

struct CudaLibrary {
  void* handle = nullptr;
  std::string error;  // why it could not be loaded
  CudaEntryPoints entry{};
};

std::string directory_of_this_module() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&directory_of_this_module), &info) == 0 || info.dli_fname == nullptr) return "";
  std::string path = info.dli_fname;
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "" : path.substr(0, slash);
}

// Loaded once; never unloaded (buffers it allocated free through its code).
const CudaLibrary& cuda_library() {
  static const CudaLibrary lib = [] {
    CudaLibrary l;
    std::string tried;
    std::string candidates[3];
    int n = 0;
    if (const char* env = std::getenv("CSERVE_CUDA_LIBRARY"); env && *env) {
      candidates[n++] = env;
    } else {
      const std::string dir = directory_of_this_module();
      if (!dir.empty()) candidates[n++] = dir + "/" + kCudaLibraryName;
      candidates[n++] = kCudaLibraryName;  // the loader path
    }
    for (int i = 0; i < n && !l.handle; ++i) {
      l.handle = dlopen(candidates[i].c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!l.handle) tried += (tried.empty() ? "" : "; ") + std::string(dlerror());
    }
    if (!l.handle) {
      l.error = "the CUDA backend library could not be loaded (" + tried +
                "); cserve was built without nvcc, or set CSERVE_CUDA_LIBRARY to " + kCudaLibraryName;
      return l;
    }
    auto get = reinterpret_cast<GetCudaEntryPoints>(dlsym(l.handle, kCudaEntrySymbol));
    if (!get) {
      l.error = std::string(kCudaLibraryName) + " has no " + kCudaEntrySymbol;
      l.handle = nullptr;
      return l;
    }
    get(&l.entry);
    if (l.entry.abi_version != kCudaBackendAbi) {
      l.error = std::string(kCudaLibraryName) + " was built for another cserve (ABI " +
                std::to_string(l.entry.abi_version) + ", expected " + std::to_string(kCudaBackendAbi) + ")";
      l.handle = nullptr;
    }
    return l;
  }();
  return lib;
}

// "cuda" -> 0, "cuda:3" -> 3; -1 when `device` is not a CUDA device name.
int cuda_ordinal(const std::string& device) {
  if (device == "cuda") return 0;
  if (device.rfind("cuda:", 0) != 0 || device.size() == 5) return -1;
  int n = 0;
  for (size_t i = 5; i < device.size(); ++i) {
    if (device[i] < '0' || device[i] > '9') return -1;
    n = n * 10 + (device[i] - '0');
  }
  return n;
}

int cuda_devices(std::string& why) {
  const CudaLibrary& lib = cuda_library();
  if (!lib.handle) {
    why = lib.error;
    return 0;
  }
  char error[512] = {0};
  const int n = lib.entry.device_count(error, sizeof(error));
  if (n <= 0) why = error[0] ? error : "no CUDA device is visible";
  return n;
}

}  // namespace

std::string resolve_device(const std::string& device, std::string* reason) {
  std::string why;
  if (device == "cpu") return "cpu";
  if (device == "auto") {
    if (cuda_devices(why) > 0) return "cuda";
    if (reason) *reason = why;
    return "cpu";
  }
  const int ordinal = cuda_ordinal(device);
  if (ordinal < 0) throw InvalidArgument("device " + device + " is not one of auto, cpu, cuda, cuda:N");
  const int n = cuda_devices(why);
  if (n == 0) throw NotSupported("device " + device + " is not available: " + why);
  if (ordinal >= n)
    throw InvalidArgument("device " + device + " does not exist (" + std::to_string(n) + " CUDA devices visible)");
  return device;
}

std::string rank_device(const std::string& device, int rank) {
  if (resolve_device(device) == "cpu") return "cpu";
  if (device != "cuda" && device != "auto")
    throw InvalidArgument("with tensor or pipeline parallelism each rank takes its own GPU (rank r: cuda:r); pass "
                          "--device cuda rather than " + device + " (CUDA_VISIBLE_DEVICES chooses the GPUs)");
  std::string why;
  const int n = cuda_devices(why);
  return "cuda:" + std::to_string(rank % n);
}

std::unique_ptr<Backend> make_backend(const std::string& device, int num_threads) {
  const std::string resolved = resolve_device(device);
  if (resolved == "cpu") return make_cpu_backend(num_threads);
  char error[1024] = {0};
  Backend* b = cuda_library().entry.create_backend(cuda_ordinal(resolved), error, sizeof(error));
  if (!b) throw Error("CUDA backend on " + resolved + ": " + error);
  return std::unique_ptr<Backend>(b);
}

std::unique_ptr<Communicator> make_device_communicator(Backend& backend, Communicator& host,
                                                       const DeviceCommunicatorOptions& options) {
  if (backend.host_memory())
    throw NotSupported("make_device_communicator: backend " + backend.name() +
                       " computes in host memory (use the shared-memory or gloo communicator)");
  const CudaLibrary& lib = cuda_library();
  if (!lib.handle) throw NotSupported(lib.error);
  char error[1024] = {0};
  bool timed_out = false;
  Communicator* c = lib.entry.create_communicator(&backend, &host, &options, &timed_out, error, sizeof(error));
  if (!c) {
    if (timed_out) throw CommTimeout(error);
    throw Error(std::string("device communicator on ") + backend.name() + ": " + error);
  }
  return std::unique_ptr<Communicator>(c);
}

}  // namespace cserve
