// cserve._cuda.nccl_version / nccl_library_path: NCCL as the CUDA library loads it (cuda/comm),
// to check where it comes from, and what a missing NCCL says, without a GPU.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include "comm/nccl_library.h"

namespace nb = nanobind;

void bind_nccl(nb::module_& m) {
  m.def("nccl_version", &cserve::cuda::nccl_version,
        "NCCL's version code (e.g. 23007 for 2.30.7), loading it first; raises RuntimeError naming the package "
        "to install when it cannot be loaded.");
  m.def("nccl_library_path", &cserve::cuda::nccl_library_path, "The path NCCL was loaded from.");
}
