#include "comm/nccl_library.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <vector>

namespace cserve::cuda {

namespace {

struct Loaded {
  std::mutex mu;
  void* handle = nullptr;
  std::string path;
  NcclApi api;
};

Loaded& loaded() {
  static Loaded l;
  return l;
}

// site-packages/cserve/<this library> -> site-packages/nvidia/nccl/lib/libnccl.so.2 (pip puts
// NVIDIA's wheels beside the packages that need them).
std::string wheel_candidate() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&wheel_candidate), &info) == 0 || !info.dli_fname) return "";
  std::string dir = info.dli_fname;
  for (int up = 0; up < 2; ++up) {
    const size_t slash = dir.rfind('/');
    if (slash == std::string::npos) return "";
    dir.resize(slash);
  }
  return dir + "/nvidia/nccl/lib/libnccl.so.2";
}

template <class F>
void bind(void* handle, F& fn, const char* name) {
  fn = reinterpret_cast<F>(dlsym(handle, name));
  if (!fn) throw std::runtime_error(std::string("the NCCL library has no ") + name + " (NCCL 2.x is needed)");
}

}  // namespace

void NcclApi::check(ncclResult_t r, const char* what) const {
  if (r == ncclSuccess) return;
  throw std::runtime_error(std::string("NCCL error in ") + what + ": " +
                           (get_error_string ? get_error_string(r) : "code " + std::to_string(r)));
}

const NcclApi& nccl_api() {
  Loaded& l = loaded();
  std::lock_guard<std::mutex> lock(l.mu);
  if (l.handle) return l.api;
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("CSERVE_NCCL_LIBRARY"); env && *env) {
    candidates.push_back(env);
  } else {
    if (std::string w = wheel_candidate(); !w.empty()) candidates.push_back(w);
    candidates.push_back("libnccl.so.2");
  }
  std::string tried;
  void* handle = nullptr;
  for (const auto& c : candidates) {
    handle = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle) {
      l.path = c;
      break;
    }
    const char* why = dlerror();
    tried += (tried.empty() ? "" : "; ") + c + " (" + (why ? why : "not found") + ")";
  }
  if (!handle)
    throw std::runtime_error("cannot load NCCL, which tensor parallelism on GPUs needs; tried: " + tried +
                             ". Install it with `pip install nvidia-nccl-cu13` (or cserve[cuda]), or set "
                             "CSERVE_NCCL_LIBRARY to a libnccl.so.2");
  NcclApi a;
  try {
    bind(handle, a.get_version, "ncclGetVersion");
    bind(handle, a.get_unique_id, "ncclGetUniqueId");
    bind(handle, a.comm_init_rank, "ncclCommInitRank");
    bind(handle, a.comm_destroy, "ncclCommDestroy");
    bind(handle, a.comm_abort, "ncclCommAbort");
    bind(handle, a.comm_get_async_error, "ncclCommGetAsyncError");
    bind(handle, a.get_error_string, "ncclGetErrorString");
    bind(handle, a.all_reduce, "ncclAllReduce");
    bind(handle, a.all_gather, "ncclAllGather");
    bind(handle, a.broadcast, "ncclBroadcast");
  } catch (...) {
    dlclose(handle);
    throw;
  }
  l.api = a;
  l.handle = handle;  // kept: communicators and kernels it launched may outlive any caller
  return l.api;
}

std::string nccl_library_path() {
  nccl_api();
  std::lock_guard<std::mutex> lock(loaded().mu);
  return loaded().path;
}

int nccl_version() {
  int v = 0;
  const NcclApi& a = nccl_api();
  a.check(a.get_version(&v), "ncclGetVersion");
  return v;
}

}  // namespace cserve::cuda
